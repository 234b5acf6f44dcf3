/* test_batch.c - unit tests of the BATCH envelope (proto/tq_batch.h):
   sub-messages round trip in order with their payloads, every malformed
   batch is refused as PROTOCOL.md 5.9 says (a bad sub-message alone, a
   bad framing whole), tq_wire_send_batch sends one message (or the plain
   message for a batch of one), and PONG carries its features. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tq_batch.h"
#include "tq_proto.h"
#include "tq_wire.h"

static tq_msg_t s_msg; /* large (READY's name arrays): not on the stack */

/* A SUBMITTED of id "t<i>". */
static void
s_submitted(tq_msg_t *msg, char *id, size_t size, int i)
{
    memset(msg, 0, sizeof *msg);
    snprintf(id, size, "t%d", i);
    msg->command = TQ_CMD_SUBMITTED;
    msg->id = tq_str(id);
}

/* A RESULT of id "r<i>" whose value is the msgpack uint i. */
static void
s_result(tq_msg_t *msg, char *id, size_t size, int i)
{
    memset(msg, 0, sizeof *msg);
    snprintf(id, size, "r%d", i);
    msg->command = TQ_CMD_RESULT;
    msg->id = tq_str(id);
    msg->state = TQ_STATE_SUCCESS;
    msg->attempt = 1;
}

/* The header a received BATCH of `count` would have. */
static void
s_batch_header(tq_msg_t *h, uint32_t count)
{
    memset(h, 0, sizeof *h);
    h->command = TQ_CMD_BATCH;
    h->count = count;
}

static void
test_header_round_trip(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in, out;
    s_batch_header(&in, 17);
    assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL), TQ_OK);
    assert_int_equal(out.command, TQ_CMD_BATCH);
    assert_int_equal(out.count, 17);
    assert_true(tq_proto_has_payload(TQ_CMD_BATCH));
    assert_string_equal(tq_proto_command_name(TQ_CMD_BATCH), "BATCH");
    /* a count out of 1..TQ_BATCH_MAX neither encodes nor decodes */
    in.count = 0;
    assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_EINVAL);
    in.count = TQ_BATCH_MAX + 1;
    assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_EINVAL);
    const uint8_t zero[] = {0x93, 0x01, 0x17, 0x00};
    const char *why = NULL;
    assert_int_equal(tq_proto_decode(&out, zero, sizeof zero, &why), TQ_EPROTO);
    assert_non_null(why);
    const uint8_t big[] = {0x93, 0x01, 0x17, 0xcd, 0x04, 0x01}; /* 1025 */
    assert_int_equal(tq_proto_decode(&out, big, sizeof big, NULL), TQ_EPROTO);
    msgpack_sbuffer_destroy(&buf);
}

static void
test_pong_features(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in, out;
    memset(&in, 0, sizeof in);
    in.command = TQ_CMD_PONG;
    in.dropped = 3;
    in.features = TQ_FEATURE_BATCH;
    assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL), TQ_OK);
    assert_int_equal(out.dropped, 3);
    assert_int_equal(out.features, TQ_FEATURE_BATCH);
    /* an older broker's PONG: [1, PONG, dropped] and [1, PONG] read as 0 */
    const uint8_t old[] = {0x93, 0x01, 0x0a, 0x05};
    assert_int_equal(tq_proto_decode(&out, old, sizeof old, NULL), TQ_OK);
    assert_int_equal(out.dropped, 5);
    assert_int_equal(out.features, 0);
    const uint8_t oldest[] = {0x92, 0x01, 0x0a};
    assert_int_equal(tq_proto_decode(&out, oldest, sizeof oldest, NULL), TQ_OK);
    assert_int_equal(out.features, 0);
    msgpack_sbuffer_destroy(&buf);
}

/* Sub-messages come back in order, each with its payload or none. */
static void
test_round_trip(void **state)
{
    (void)state;
    tq_batch_t b;
    tq_batch_init(&b);
    char id[16];
    msgpack_sbuffer value;
    msgpack_sbuffer_init(&value);
    for (int i = 0; i < 300; i++) {
        if (i % 3 == 0) {
            s_submitted(&s_msg, id, sizeof id, i);
            assert_int_equal(tq_batch_add(&b, &s_msg, NULL, 0, false), TQ_OK);
        } else {
            s_result(&s_msg, id, sizeof id, i);
            msgpack_sbuffer_clear(&value);
            msgpack_packer pk;
            msgpack_packer_init(&pk, &value, msgpack_sbuffer_write);
            msgpack_pack_uint32(&pk, (uint32_t)i);
            /* a RESULT of a failure carries zero payload bytes */
            size_t size = i % 3 == 2 ? 0 : value.size;
            assert_int_equal(tq_batch_add(&b, &s_msg, value.data, size, true),
                             TQ_OK);
        }
        assert_int_equal(tq_batch_count(&b), (uint32_t)i + 1);
    }
    assert_true(tq_batch_bytes(&b) > 300 * 4);

    tq_msg_t h;
    s_batch_header(&h, tq_batch_count(&b));
    tq_batch_reader_t r;
    tq_batch_reader_init(&r, &h, b.body.data, b.body.size);
    for (int i = 0; i < 300; i++) {
        const void *payload;
        size_t size;
        bool has;
        const char *why = NULL;
        assert_int_equal(tq_batch_next(&r, &s_msg, &payload, &size, &has, &why),
                         TQ_OK);
        snprintf(id, sizeof id, "%c%d", i % 3 == 0 ? 't' : 'r', i);
        assert_true(tq_str_eq(s_msg.id, id));
        if (i % 3 == 0) {
            assert_int_equal(s_msg.command, TQ_CMD_SUBMITTED);
            assert_false(has);
            assert_null(payload);
            assert_int_equal(size, 0);
            continue;
        }
        assert_int_equal(s_msg.command, TQ_CMD_RESULT);
        assert_true(has);
        if (i % 3 == 2) {
            assert_int_equal(size, 0);
            continue;
        }
        msgpack_sbuffer_clear(&value);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &value, msgpack_sbuffer_write);
        msgpack_pack_uint32(&pk, (uint32_t)i);
        assert_int_equal(size, value.size);
        assert_memory_equal(payload, value.data, size);
    }
    const void *payload;
    size_t size;
    bool has;
    assert_int_equal(tq_batch_next(&r, &s_msg, &payload, &size, &has, NULL),
                     TQ_BATCH_END);
    assert_int_equal(tq_batch_next(&r, &s_msg, &payload, &size, &has, NULL),
                     TQ_BATCH_END);

    tq_batch_reset(&b);
    assert_int_equal(tq_batch_count(&b), 0);
    assert_int_equal(tq_batch_bytes(&b), 0);
    tq_batch_destroy(&b);
    msgpack_sbuffer_destroy(&value);
}

static void
test_add_refuses(void **state)
{
    (void)state;
    tq_batch_t b;
    tq_batch_init(&b);
    char id[16];
    s_submitted(&s_msg, id, sizeof id, 1);
    /* a payload for a command without one, and the reverse */
    assert_int_equal(tq_batch_add(&b, &s_msg, "\x90", 1, true), TQ_EINVAL);
    s_result(&s_msg, id, sizeof id, 1);
    assert_int_equal(tq_batch_add(&b, &s_msg, NULL, 0, false), TQ_EINVAL);
    /* a header that does not encode */
    s_submitted(&s_msg, id, sizeof id, 1);
    s_msg.id = tq_str("not an id");
    assert_int_equal(tq_batch_add(&b, &s_msg, NULL, 0, false), TQ_EINVAL);
    /* a batch inside a batch */
    s_batch_header(&s_msg, 1);
    assert_int_equal(tq_batch_add(&b, &s_msg, "\xc0", 1, true), TQ_EINVAL);
    assert_int_equal(tq_batch_count(&b), 0);
    assert_int_equal(tq_batch_bytes(&b), 0);
    /* full at TQ_BATCH_MAX */
    for (int i = 0; i < TQ_BATCH_MAX; i++) {
        s_submitted(&s_msg, id, sizeof id, i);
        assert_int_equal(tq_batch_add(&b, &s_msg, NULL, 0, false), TQ_OK);
    }
    size_t bytes = tq_batch_bytes(&b);
    assert_int_equal(tq_batch_add(&b, &s_msg, NULL, 0, false), TQ_EINVAL);
    assert_int_equal(tq_batch_count(&b), TQ_BATCH_MAX);
    assert_int_equal(tq_batch_bytes(&b), bytes);
    tq_batch_destroy(&b);
}

/* Appends a bin of the given bytes to buf. */
static void
s_bin(msgpack_sbuffer *buf, const void *data, size_t size)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    msgpack_pack_bin(&pk, size);
    msgpack_pack_bin_body(&pk, data, size);
}

static void
s_nil(msgpack_sbuffer *buf)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    msgpack_pack_nil(&pk);
}

/* Appends a SUBMITTED of id "t<i>" as a well-formed sub-message. */
static void
s_good(msgpack_sbuffer *body, int i)
{
    char id[16];
    msgpack_sbuffer h;
    msgpack_sbuffer_init(&h);
    s_submitted(&s_msg, id, sizeof id, i);
    assert_int_equal(tq_proto_encode(&s_msg, &h, NULL), TQ_OK);
    s_bin(body, h.data, h.size);
    s_nil(body);
    msgpack_sbuffer_destroy(&h);
}

/* Reads a batch of count from body: the results of tq_batch_next up to
   its end into rcs (at most max), their ids' first byte into ids. */
static int
s_read_all(const msgpack_sbuffer *body, uint32_t count, int *rcs, char *ids,
           int max)
{
    tq_msg_t h;
    s_batch_header(&h, count);
    tq_batch_reader_t r;
    tq_batch_reader_init(&r, &h, body->data, body->size);
    int n = 0;
    for (;;) {
        const void *payload;
        size_t size;
        bool has;
        const char *why = NULL;
        int rc = tq_batch_next(&r, &s_msg, &payload, &size, &has, &why);
        if (rc == TQ_BATCH_END)
            break;
        assert_true(n < max);
        if (rc != TQ_OK)
            assert_non_null(why);
        rcs[n] = rc;
        ids[n] = s_msg.id.ptr ? s_msg.id.ptr[1] : '-';
        n++;
    }
    return n;
}

/* A malformed sub-message is refused alone, with its id when it decoded;
   the others are read. */
static void
test_bad_sub_message(void **state)
{
    (void)state;
    msgpack_sbuffer body, h;
    msgpack_sbuffer_init(&body);
    msgpack_sbuffer_init(&h);
    int rcs[16];
    char ids[16];
    char id[16];

    /* 1: a header that does not decode (an unknown command) */
    s_good(&body, 0);
    const uint8_t unknown[] = {0x93, 0x01, 0x7f, 0xa2, 't', '9'};
    s_bin(&body, unknown, sizeof unknown);
    s_nil(&body);
    s_good(&body, 2);
    assert_int_equal(s_read_all(&body, 3, rcs, ids, 16), 3);
    assert_int_equal(rcs[0], TQ_OK);
    assert_int_equal(rcs[1], TQ_EPROTO);
    assert_int_equal(rcs[2], TQ_OK);
    assert_int_equal(ids[0], '0');
    assert_int_equal(ids[2], '2');

    /* 2: a payload where the command has none (its id is kept) */
    msgpack_sbuffer_clear(&body);
    s_good(&body, 0);
    s_submitted(&s_msg, id, sizeof id, 1);
    assert_int_equal(tq_proto_encode(&s_msg, &h, NULL), TQ_OK);
    s_bin(&body, h.data, h.size);
    s_bin(&body, "\x90", 1);
    s_good(&body, 2);
    assert_int_equal(s_read_all(&body, 3, rcs, ids, 16), 3);
    assert_int_equal(rcs[1], TQ_EPROTO);
    assert_int_equal(ids[1], '1');
    assert_int_equal(rcs[0] | rcs[2], TQ_OK);

    /* 3: no payload where the command has one */
    msgpack_sbuffer_clear(&body);
    s_result(&s_msg, id, sizeof id, 1);
    assert_int_equal(tq_proto_encode(&s_msg, &h, NULL), TQ_OK);
    s_bin(&body, h.data, h.size);
    s_nil(&body);
    s_good(&body, 2);
    assert_int_equal(s_read_all(&body, 2, rcs, ids, 16), 2);
    assert_int_equal(rcs[0], TQ_EPROTO);
    assert_int_equal(ids[0], '1');
    assert_int_equal(rcs[1], TQ_OK);

    /* 4: a BATCH inside a BATCH */
    msgpack_sbuffer_clear(&body);
    s_batch_header(&s_msg, 1);
    assert_int_equal(tq_proto_encode(&s_msg, &h, NULL), TQ_OK);
    msgpack_sbuffer inner;
    msgpack_sbuffer_init(&inner);
    s_good(&inner, 5);
    s_bin(&body, h.data, h.size);
    s_bin(&body, inner.data, inner.size);
    s_good(&body, 2);
    assert_int_equal(s_read_all(&body, 2, rcs, ids, 16), 2);
    assert_int_equal(rcs[0], TQ_EPROTO);
    assert_int_equal(rcs[1], TQ_OK);
    msgpack_sbuffer_destroy(&inner);

    /* 5: another protocol version */
    msgpack_sbuffer_clear(&body);
    const uint8_t v2[] = {0x93, 0x02, 0x02, 0xa2, 't', '1'};
    s_bin(&body, v2, sizeof v2);
    s_nil(&body);
    s_good(&body, 2);
    assert_int_equal(s_read_all(&body, 2, rcs, ids, 16), 2);
    assert_int_equal(rcs[0], TQ_EVERSION);
    assert_int_equal(rcs[1], TQ_OK);

    msgpack_sbuffer_destroy(&body);
    msgpack_sbuffer_destroy(&h);
}

/* A framing that does not hold refuses the batch whole: one TQ_EPROTO,
   no sub-message read. */
static void
test_bad_framing(void **state)
{
    (void)state;
    msgpack_sbuffer body;
    msgpack_sbuffer_init(&body);
    int rcs[16];
    char ids[16];

    /* a count larger than the sub-messages */
    s_good(&body, 0);
    s_good(&body, 1);
    assert_int_equal(s_read_all(&body, 3, rcs, ids, 16), 1);
    assert_int_equal(rcs[0], TQ_EPROTO);
    /* a count smaller: trailing bytes */
    assert_int_equal(s_read_all(&body, 1, rcs, ids, 16), 1);
    assert_int_equal(rcs[0], TQ_EPROTO);
    /* the right count reads both */
    assert_int_equal(s_read_all(&body, 2, rcs, ids, 16), 2);
    assert_int_equal(rcs[0] | rcs[1], TQ_OK);

    /* trailing garbage after the last */
    msgpack_sbuffer_write(&body, "\x01", 1);
    assert_int_equal(s_read_all(&body, 2, rcs, ids, 16), 1);
    assert_int_equal(rcs[0], TQ_EPROTO);

    /* a header that is a str, not a bin */
    msgpack_sbuffer_clear(&body);
    s_good(&body, 0);
    msgpack_sbuffer_write(&body, "\xa1x\xc0", 3);
    assert_int_equal(s_read_all(&body, 2, rcs, ids, 16), 1);
    assert_int_equal(rcs[0], TQ_EPROTO);

    /* a payload that is neither bin nor nil */
    msgpack_sbuffer_clear(&body);
    s_good(&body, 0);
    s_bin(&body, "\x92\x01\x09", 3);
    msgpack_sbuffer_write(&body, "\x90", 1);
    assert_int_equal(s_read_all(&body, 2, rcs, ids, 16), 1);
    assert_int_equal(rcs[0], TQ_EPROTO);

    /* a bin longer than the frame, in each width */
    const char *cut[] = {"\xc4\x10", "\xc5\x00\x10", "\xc6\x00\x00\x00\x10",
                         "\xc6\xff\xff\xff\xff", "\xc5\x00"};
    const size_t cut_size[] = {2, 3, 5, 5, 2};
    for (size_t i = 0; i < 5; i++) {
        msgpack_sbuffer_clear(&body);
        s_good(&body, 0);
        msgpack_sbuffer_write(&body, cut[i], cut_size[i]);
        msgpack_sbuffer_write(&body, "\x91\x01", 2);
        assert_int_equal(s_read_all(&body, 2, rcs, ids, 16), 1);
        assert_int_equal(rcs[0], TQ_EPROTO);
    }

    /* a header alone, its payload slot cut off */
    msgpack_sbuffer_clear(&body);
    s_good(&body, 0);
    s_bin(&body, "\x92\x01\x09", 3);
    assert_int_equal(s_read_all(&body, 2, rcs, ids, 16), 1);
    assert_int_equal(rcs[0], TQ_EPROTO);

    /* an empty payload frame */
    msgpack_sbuffer_clear(&body);
    assert_int_equal(s_read_all(&body, 1, rcs, ids, 16), 1);
    assert_int_equal(rcs[0], TQ_EPROTO);

    /* a header that is not a BATCH's */
    tq_msg_t h;
    s_batch_header(&h, 1);
    h.command = TQ_CMD_SUBMITTED;
    tq_batch_reader_t r;
    s_good(&body, 0);
    tq_batch_reader_init(&r, &h, body.data, body.size);
    const void *payload;
    size_t size;
    bool has;
    assert_int_equal(tq_batch_next(&r, &s_msg, &payload, &size, &has, NULL),
                     TQ_EPROTO);
    assert_int_equal(tq_batch_next(&r, &s_msg, &payload, &size, &has, NULL),
                     TQ_BATCH_END);
    msgpack_sbuffer_destroy(&body);
}

/* tq_wire_send_batch: one ZeroMQ message [BATCH header, payload], or the
   plain message for a batch of one, and the batch emptied. */
static void
test_wire_send(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    void *tx = zmq_socket(ctx, ZMQ_PAIR);
    void *rx = zmq_socket(ctx, ZMQ_PAIR);
    assert_int_equal(zmq_bind(rx, "inproc://test_batch"), 0);
    assert_int_equal(zmq_connect(tx, "inproc://test_batch"), 0);
    tq_batch_t b;
    tq_batch_init(&b);
    char id[16];

    /* empty: nothing sent */
    assert_int_equal(tq_wire_send_batch(tx, NULL, &b, 0), TQ_OK);

    /* one: the plain message, payload included */
    s_result(&s_msg, id, sizeof id, 7);
    assert_int_equal(tq_batch_add(&b, &s_msg, "\x07", 1, true), TQ_OK);
    assert_int_equal(tq_wire_send_batch(tx, NULL, &b, 0), TQ_OK);
    assert_int_equal(tq_batch_count(&b), 0);
    tq_frames_t f;
    tq_frames_init(&f);
    assert_int_equal(tq_wire_recv(rx, &f, false, 0), TQ_OK);
    assert_int_equal(tq_wire_decode(&f, &s_msg, NULL), TQ_OK);
    assert_int_equal(s_msg.command, TQ_CMD_RESULT);
    assert_true(tq_str_eq(s_msg.id, "r7"));
    assert_int_equal(zmq_msg_size(&f.payload), 1);
    assert_memory_equal(zmq_msg_data(&f.payload), "\x07", 1);

    /* one without a payload */
    s_submitted(&s_msg, id, sizeof id, 8);
    assert_int_equal(tq_batch_add(&b, &s_msg, NULL, 0, false), TQ_OK);
    assert_int_equal(tq_wire_send_batch(tx, NULL, &b, 0), TQ_OK);
    assert_int_equal(tq_wire_recv(rx, &f, false, 0), TQ_OK);
    assert_int_equal(tq_wire_decode(&f, &s_msg, NULL), TQ_OK);
    assert_int_equal(s_msg.command, TQ_CMD_SUBMITTED);
    assert_false(f.has_payload);

    /* three: one BATCH */
    for (int i = 0; i < 3; i++) {
        s_submitted(&s_msg, id, sizeof id, i);
        assert_int_equal(tq_batch_add(&b, &s_msg, NULL, 0, false), TQ_OK);
    }
    assert_int_equal(tq_wire_send_batch(tx, NULL, &b, 0), TQ_OK);
    assert_int_equal(tq_batch_count(&b), 0);
    assert_int_equal(tq_wire_recv(rx, &f, false, 0), TQ_OK);
    static tq_msg_t header;
    assert_int_equal(tq_wire_decode(&f, &header, NULL), TQ_OK);
    assert_int_equal(header.command, TQ_CMD_BATCH);
    assert_int_equal(header.count, 3);
    tq_batch_reader_t r;
    tq_batch_reader_init(&r, &header, zmq_msg_data(&f.payload),
                         zmq_msg_size(&f.payload));
    for (int i = 0; i < 3; i++) {
        const void *payload;
        size_t size;
        bool has;
        assert_int_equal(tq_batch_next(&r, &s_msg, &payload, &size, &has, NULL),
                         TQ_OK);
        snprintf(id, sizeof id, "t%d", i);
        assert_true(tq_str_eq(s_msg.id, id));
    }
    tq_frames_close(&f);
    tq_batch_destroy(&b);
    zmq_close(tx);
    zmq_close(rx);
    zmq_ctx_term(ctx);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_round_trip),
        cmocka_unit_test(test_pong_features),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_add_refuses),
        cmocka_unit_test(test_bad_sub_message),
        cmocka_unit_test(test_bad_framing),
        cmocka_unit_test(test_wire_send),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
