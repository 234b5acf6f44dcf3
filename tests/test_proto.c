/* test_proto.c - unit tests of the TQP/1 codec: every message round trips,
   and truncated, garbled, oversized and wrong-version input is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tq_proto.h"

static const uint8_t s_commands[] = {
    TQ_CMD_SUBMIT, TQ_CMD_SUBMITTED,    TQ_CMD_GET,   TQ_CMD_RESULT,
    TQ_CMD_STATE,  TQ_CMD_UNKNOWN,      TQ_CMD_STATUS, TQ_CMD_STATUS_REPLY,
    TQ_CMD_PING,   TQ_CMD_PONG,         TQ_CMD_ERROR, TQ_CMD_READY,
    TQ_CMD_TASK,   TQ_CMD_DONE,         TQ_CMD_DISCONNECT,
    TQ_CMD_HEARTBEAT, TQ_CMD_LOST, TQ_CMD_CANCEL, TQ_CMD_RETRY,
    TQ_CMD_PURGE, TQ_CMD_FAILED, TQ_CMD_REPLY, TQ_CMD_KILL,
    TQ_CMD_REVOKE,
    TQ_CMD_RETURNED,
};
#define S_NCOMMANDS (sizeof s_commands / sizeof s_commands[0])

/* A message with every field set; the codec keeps those its command has. */
static void
s_fill(tq_msg_t *msg, uint8_t command)
{
    memset(msg, 0, sizeof *msg);
    msg->command = command;
    msg->id = tq_str("0123456789abcdef0123456789abcdef");
    msg->task = tq_str("math.add");
    msg->queue = tq_str("default");
    msg->error = tq_str("boom: a message with spaces");
    msg->host = tq_str("host-1.example");
    msg->priority = 7;
    msg->time_limit_ms = 2500;
    msg->attempt = 2;
    msg->state = TQ_STATE_FAILURE;
    msg->code = TQ_ETASK;
    msg->credit = 16;
    msg->pid = 4242;
    msg->ppid = 4200;
    msg->wait = true;
    msg->retries = 4;
    msg->backoff_ms = 250;
    msg->delay_ms = 1500;
    msg->rss_kb = 12345;
    msg->features = TQ_FEATURE_RETURNS;
    msg->queue_count = 2;
    msg->queues[0] = tq_str("default");
    msg->queues[1] = tq_str("high");
    msg->task_count = 3;
    msg->tasks[0] = tq_str("tq.echo");
    msg->tasks[1] = tq_str("tq.sleep");
    msg->tasks[2] = tq_str("tq.fail");
}

static bool
s_same(tq_str_t a, tq_str_t b)
{
    if (!a.ptr || !b.ptr)
        return !a.ptr && !b.ptr;
    return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

static void
test_round_trip_every_command(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in, out;
    for (size_t i = 0; i < S_NCOMMANDS; i++) {
        s_fill(&in, s_commands[i]);
        const char *why = NULL;
        assert_int_equal(tq_proto_encode(&in, &buf, &why), TQ_OK);
        assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, &why),
                         TQ_OK);
        assert_int_equal(out.command, in.command);
        const char *name = tq_proto_command_name(out.command);
        assert_string_not_equal(name, "?");
        switch (in.command) {
        case TQ_CMD_SUBMIT:
            assert_true(s_same(out.id, in.id));
            assert_true(s_same(out.task, in.task));
            assert_true(s_same(out.queue, in.queue));
            assert_int_equal(out.priority, 7);
            assert_int_equal(out.time_limit_ms, 2500);
            assert_int_equal(out.retries, 4);
            assert_int_equal(out.backoff_ms, 250);
            assert_int_equal(out.delay_ms, 1500);
            assert_true(tq_proto_has_payload(in.command));
            break;
        case TQ_CMD_KILL:
            assert_int_equal(out.pid, 4242);
            assert_true(s_same(out.id, in.id));
            break;
        case TQ_CMD_PURGE:
            assert_true(s_same(out.queue, in.queue));
            break;
        case TQ_CMD_GET:
            assert_true(s_same(out.id, in.id));
            assert_true(out.wait);
            break;
        case TQ_CMD_RESULT:
            assert_true(s_same(out.id, in.id));
            assert_int_equal(out.state, TQ_STATE_FAILURE);
            assert_int_equal(out.code, TQ_ETASK);
            assert_true(s_same(out.error, in.error));
            assert_int_equal(out.attempt, 2);
            break;
        case TQ_CMD_READY:
            assert_true(s_same(out.host, in.host));
            assert_int_equal(out.pid, 4242);
            assert_int_equal(out.ppid, 4200);
            assert_int_equal(out.credit, 16);
            assert_int_equal(out.queue_count, 2);
            assert_int_equal(out.task_count, 3);
            assert_true(s_same(out.queues[1], in.queues[1]));
            assert_true(s_same(out.tasks[2], in.tasks[2]));
            assert_int_equal(out.features, TQ_FEATURE_RETURNS);
            break;
        case TQ_CMD_TASK:
            assert_true(s_same(out.id, in.id));
            assert_true(s_same(out.task, in.task));
            assert_int_equal(out.attempt, 2);
            assert_int_equal(out.time_limit_ms, 2500);
            break;
        case TQ_CMD_DONE:
            assert_true(s_same(out.id, in.id));
            assert_int_equal(out.attempt, 2);
            assert_int_equal(out.state, TQ_STATE_FAILURE);
            assert_int_equal(out.code, TQ_ETASK);
            assert_true(s_same(out.error, in.error));
            break;
        case TQ_CMD_ERROR:
            assert_int_equal(out.code, TQ_ETASK);
            assert_true(s_same(out.error, in.error));
            assert_true(s_same(out.id, in.id));
            break;
        case TQ_CMD_HEARTBEAT:
            assert_true(s_same(out.host, in.host));
            assert_int_equal(out.pid, 4242);
            break;
        case TQ_CMD_LOST:
            assert_int_equal(out.pid, 4242);
            assert_int_equal(out.code, TQ_ETASK);
            assert_true(s_same(out.error, in.error));
            break;
        case TQ_CMD_STATUS:
        case TQ_CMD_STATUS_REPLY:
            /* the optional request id only (PROTOCOL.md section 10) */
            assert_true(s_same(out.id, in.id));
            assert_int_equal(out.priority, 0);
            break;
        case TQ_CMD_PING:
            /* no fields: nothing may leak through from the input */
            assert_null(out.id.ptr);
            assert_int_equal(out.priority, 0);
            break;
        default:
            break;
        }
    }
    msgpack_sbuffer_destroy(&buf);
}

static void
test_optional_fields(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in, out;
    memset(&in, 0, sizeof in);
    in.command = TQ_CMD_ERROR;
    in.code = TQ_EPROTO;
    assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL), TQ_OK);
    assert_null(out.id.ptr);
    assert_null(out.error.ptr);
    assert_int_equal(out.code, TQ_EPROTO);
    msgpack_sbuffer_destroy(&buf);
}

/* A SUBMIT from a peer that predates the optional fields (retries,
   backoff, delay) decodes with them zero; a RESULT with them too. */
static void
test_older_peer(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 7);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint8(&pk, TQ_CMD_SUBMIT);
    const char *fields[] = {"abc", "tq.echo", "default"};
    for (int i = 0; i < 3; i++) {
        msgpack_pack_str(&pk, strlen(fields[i]));
        msgpack_pack_str_body(&pk, fields[i], strlen(fields[i]));
    }
    msgpack_pack_uint8(&pk, 3);
    msgpack_pack_uint8(&pk, 0);
    static tq_msg_t out;
    out.retries = 9;
    const char *why = NULL;
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, &why), TQ_OK);
    assert_int_equal(out.priority, 3);
    assert_int_equal(out.retries, 0);
    assert_int_equal(out.delay_ms, 0);
    /* one field short of the required ones is still refused */
    msgpack_sbuffer_clear(&buf);
    msgpack_pack_array(&pk, 6);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint8(&pk, TQ_CMD_SUBMIT);
    for (int i = 0; i < 3; i++) {
        msgpack_pack_str(&pk, strlen(fields[i]));
        msgpack_pack_str_body(&pk, fields[i], strlen(fields[i]));
    }
    msgpack_pack_uint8(&pk, 3);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, &why),
                     TQ_EPROTO);
    msgpack_sbuffer_destroy(&buf);
}

/* HEARTBEAT carries the broker's session number after its `|`: it goes
   through the codec, and a HEARTBEAT of an older peer (host, pid only)
   decodes with session 0. */
static void
test_heartbeat_session(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in, out;
    memset(&in, 0, sizeof in);
    in.command = TQ_CMD_HEARTBEAT;
    in.host = tq_str("host-1");
    in.pid = 77;
    in.session = 5000000000ULL; /* past 32 bits */
    assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL), TQ_OK);
    assert_int_equal(out.pid, 77);
    assert_int_equal(out.session, 5000000000ULL);

    msgpack_sbuffer_clear(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint8(&pk, TQ_CMD_HEARTBEAT);
    msgpack_pack_str_with_body(&pk, "old", 3);
    msgpack_pack_uint32(&pk, 42);
    out.session = 9;
    const char *why = NULL;
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, &why), TQ_OK);
    assert_int_equal(out.pid, 42);
    assert_int_equal(out.session, 0);

    /* a session that is not an unsigned integer is refused */
    msgpack_sbuffer_clear(&buf);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint8(&pk, TQ_CMD_HEARTBEAT);
    msgpack_pack_str_with_body(&pk, "old", 3);
    msgpack_pack_uint32(&pk, 42);
    msgpack_pack_str_with_body(&pk, "x", 1);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, &why),
                     TQ_EPROTO);
    msgpack_sbuffer_destroy(&buf);
}

static void
test_encode_refuses_bad_fields(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t msg;
    const char *why = NULL;

    s_fill(&msg, TQ_CMD_SUBMIT);
    msg.id = tq_str("has space");
    assert_int_equal(tq_proto_encode(&msg, &buf, &why), TQ_EINVAL);
    assert_string_equal(why, "invalid task id");
    assert_int_equal(buf.size, 0);

    s_fill(&msg, TQ_CMD_SUBMIT);
    msg.priority = 10;
    assert_int_equal(tq_proto_encode(&msg, &buf, &why), TQ_EINVAL);

    s_fill(&msg, TQ_CMD_SUBMIT);
    msg.task = tq_str(NULL);
    assert_int_equal(tq_proto_encode(&msg, &buf, &why), TQ_EINVAL);

    s_fill(&msg, TQ_CMD_READY);
    msg.credit = 0;
    assert_int_equal(tq_proto_encode(&msg, &buf, &why), TQ_EINVAL);

    s_fill(&msg, TQ_CMD_READY);
    msg.task_count = TQ_PROTO_MAX_NAMES + 1;
    assert_int_equal(tq_proto_encode(&msg, &buf, &why), TQ_EINVAL);

    memset(&msg, 0, sizeof msg);
    msg.command = 0x7f;
    assert_int_equal(tq_proto_encode(&msg, &buf, &why), TQ_EINVAL);
    msgpack_sbuffer_destroy(&buf);
}

/* Every strict prefix of every message is refused. */
static void
test_truncated(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in, out;
    for (size_t i = 0; i < S_NCOMMANDS; i++) {
        s_fill(&in, s_commands[i]);
        assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
        for (size_t n = 0; n < buf.size; n++) {
            const char *why = NULL;
            /* copy so ASan sees reads past the prefix */
            char *prefix = malloc(n ? n : 1);
            memcpy(prefix, buf.data, n);
            assert_int_equal(tq_proto_decode(&out, prefix, n, &why),
                             TQ_EPROTO);
            assert_non_null(why);
            free(prefix);
        }
    }
    msgpack_sbuffer_destroy(&buf);
}

static void
test_wrong_version_and_command(void **state)
{
    (void)state;
    static tq_msg_t out;
    const char *why = NULL;
    /* [2, 9]: PING of version 2 */
    const uint8_t v2[] = {0x92, 0x02, 0x09};
    assert_int_equal(tq_proto_decode(&out, v2, sizeof v2, &why), TQ_EVERSION);
    /* [1, 0x55]: no such command */
    const uint8_t cmd[] = {0x92, 0x01, 0x55};
    assert_int_equal(tq_proto_decode(&out, cmd, sizeof cmd, &why), TQ_EPROTO);
    assert_string_equal(why, "unknown command");
    /* not an array at all */
    const uint8_t str[] = {0xa3, 'a', 'b', 'c'};
    assert_int_equal(tq_proto_decode(&out, str, sizeof str, &why), TQ_EPROTO);
    /* [1, 9, extra...] a newer revision's trailing field is skipped */
    const uint8_t newer[] = {0x93, 0x01, 0x09, 0xa1, 'x'};
    assert_int_equal(tq_proto_decode(&out, newer, sizeof newer, &why), TQ_OK);
    assert_int_equal(out.command, TQ_CMD_PING);
    /* trailing garbage after the array */
    const uint8_t tail[] = {0x92, 0x01, 0x09, 0x00};
    assert_int_equal(tq_proto_decode(&out, tail, sizeof tail, &why),
                     TQ_EPROTO);
    /* SUBMIT with a field of the wrong type (priority as a string) */
    const uint8_t bad[] = {0x97, 0x01, 0x01, 0xa1, 'a', 0xa1, 't', 0xa1, 'q',
                           0xa1, '1', 0x00};
    assert_int_equal(tq_proto_decode(&out, bad, sizeof bad, &why), TQ_EPROTO);
    assert_string_equal(why, "expected an unsigned integer");
    /* an array header claiming 4 billion elements in a 5-byte frame */
    const uint8_t lie[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(tq_proto_decode(&out, lie, sizeof lie, &why), TQ_EPROTO);
    assert_int_equal(tq_proto_decode(&out, NULL, 0, &why), TQ_EPROTO);
}

static void
test_oversized(void **state)
{
    (void)state;
    static tq_msg_t out;
    size_t size = TQ_PROTO_MAX_HEADER + 1;
    uint8_t *big = calloc(1, size);
    big[0] = 0x92;
    big[1] = 0x01;
    big[2] = 0x09;
    const char *why = NULL;
    assert_int_equal(tq_proto_decode(&out, big, size, &why), TQ_EPROTO);
    assert_string_equal(why, "header too large");
    free(big);

    /* an error text over the limit */
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint8(&pk, TQ_CMD_LOST);
    msgpack_pack_uint32(&pk, 10);
    msgpack_pack_uint32(&pk, TQ_ELOST);
    char *text = calloc(1, TQ_PROTO_MAX_ERROR + 1);
    memset(text, 'x', TQ_PROTO_MAX_ERROR + 1);
    msgpack_pack_str(&pk, TQ_PROTO_MAX_ERROR + 1);
    msgpack_pack_str_body(&pk, text, TQ_PROTO_MAX_ERROR + 1);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, &why),
                     TQ_EPROTO);
    assert_string_equal(why, "error text too long");
    free(text);
    msgpack_sbuffer_destroy(&buf);
}

static uint32_t s_seed = 12345;
static uint32_t
s_rand(void)
{
    s_seed = s_seed * 1103515245u + 12345u;
    return s_seed >> 8;
}

/* Random bytes and random mutations of valid messages: no crash, and a
   message that decodes can be encoded again. */
static void
test_garbled(void **state)
{
    (void)state;
    msgpack_sbuffer buf, again;
    msgpack_sbuffer_init(&buf);
    msgpack_sbuffer_init(&again);
    static tq_msg_t in, out;
    int accepted = 0, refused = 0;
    for (int round = 0; round < 20000; round++) {
        s_fill(&in, s_commands[s_rand() % S_NCOMMANDS]);
        assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
        uint8_t *bytes = malloc(buf.size);
        memcpy(bytes, buf.data, buf.size);
        int flips = 1 + (int)(s_rand() % 4);
        for (int k = 0; k < flips; k++)
            bytes[s_rand() % buf.size] = (uint8_t)s_rand();
        int rc = tq_proto_decode(&out, bytes, buf.size, NULL);
        if (rc == TQ_OK) {
            accepted++;
            assert_int_equal(tq_proto_encode(&out, &again, NULL), TQ_OK);
        } else {
            assert_true(rc == TQ_EPROTO || rc == TQ_EVERSION);
            refused++;
        }
        free(bytes);
    }
    for (int round = 0; round < 20000; round++) {
        size_t size = 1 + s_rand() % 64;
        uint8_t *bytes = malloc(size);
        for (size_t k = 0; k < size; k++)
            bytes[k] = (uint8_t)s_rand();
        (void)tq_proto_decode(&out, bytes, size, NULL);
        (void)tq_proto_check_payload(bytes, size, false, NULL);
        free(bytes);
    }
    assert_true(refused > 0);
    print_message("garbled: %d accepted, %d refused\n", accepted, refused);
    msgpack_sbuffer_destroy(&buf);
    msgpack_sbuffer_destroy(&again);
}

static void
test_payload_check(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_int64(&pk, -5);
    msgpack_pack_str_with_body(&pk, "hi", 2);
    msgpack_pack_double(&pk, 1.5);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "k", 1);
    msgpack_pack_bin_with_body(&pk, "\x01\x02", 2);
    const char *why = NULL;
    assert_int_equal(tq_proto_check_payload(buf.data, buf.size, true, &why),
                     TQ_OK);
    /* a prefix is refused */
    assert_int_equal(
        tq_proto_check_payload(buf.data, buf.size - 1, true, &why), TQ_EPROTO);
    /* a scalar is fine as a value, not as arguments */
    const uint8_t one[] = {0x01};
    assert_int_equal(tq_proto_check_payload(one, 1, false, &why), TQ_OK);
    assert_int_equal(tq_proto_check_payload(one, 1, true, &why), TQ_EPROTO);
    /* two objects where one is expected */
    const uint8_t two[] = {0x90, 0x90};
    assert_int_equal(tq_proto_check_payload(two, 2, true, &why), TQ_EPROTO);
    /* nesting beyond the limit */
    uint8_t deep[TQ_PROTO_MAX_DEPTH + 1];
    memset(deep, 0x91, sizeof deep);
    deep[sizeof deep - 1] = 0x90;
    assert_int_equal(tq_proto_check_payload(deep, sizeof deep, true, &why),
                     TQ_EPROTO);
    assert_string_equal(why, "nested too deep");
    /* a map that claims more entries than bytes */
    const uint8_t lie[] = {0x91, 0xdf, 0x7f, 0xff, 0xff, 0xff};
    assert_int_equal(tq_proto_check_payload(lie, sizeof lie, true, &why),
                     TQ_EPROTO);
    /* 0xc1 is never valid */
    const uint8_t never[] = {0x91, 0xc1};
    assert_int_equal(tq_proto_check_payload(never, sizeof never, true, &why),
                     TQ_EPROTO);
    msgpack_sbuffer_destroy(&buf);
}

static void
test_names(void **state)
{
    (void)state;
    assert_true(tq_proto_valid_id("abc-1_2.3", 9));
    assert_false(tq_proto_valid_id("", 0));
    assert_false(tq_proto_valid_id("a b", 3));
    assert_false(tq_proto_valid_id("a\0b", 3));
    char long_id[TQ_PROTO_MAX_ID + 1];
    memset(long_id, 'a', sizeof long_id);
    assert_true(tq_proto_valid_id(long_id, TQ_PROTO_MAX_ID));
    assert_false(tq_proto_valid_id(long_id, TQ_PROTO_MAX_ID + 1));
    assert_true(tq_proto_valid_name("tq.echo", 7));
    assert_true(tq_proto_valid_name("a:b@c/d-e_f", 11));
    assert_false(tq_proto_valid_name("a;b", 3));
    assert_false(tq_proto_valid_name(NULL, 0));

    char dst[4];
    tq_str_copy(dst, sizeof dst, tq_str("abcdef"));
    assert_string_equal(dst, "abc");
    assert_true(tq_str_eq(tq_str("x"), "x"));
    assert_false(tq_str_eq(tq_str("x"), "xy"));

    assert_string_equal(tq_strerror(TQ_ETASK), "task failed");
    assert_string_equal(tq_strerror(-1), "unknown error");
    assert_string_equal(tq_state_name(TQ_STATE_CANCELLED), "CANCELLED");
    assert_string_equal(tq_state_name(99), "?");
}

/* ---- binary ids (PROTOCOL.md 3) ---- */

#define S_HEX_ID "0123456789abcdef00ff10e0a5c3deaf"

/* Every command with an id: asked for, a 32-lowercase-hex id goes as a
   16-byte bin and comes back as the same text, flagged; not asked for, as
   str. */
static void
test_binary_id_round_trip(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in, out;
    const uint8_t bin[] = {0xc4, 0x10, 0x01, 0x23, 0x45, 0x67,
                           0x89, 0xab, 0xcd, 0xef, 0x00, 0xff,
                           0x10, 0xe0, 0xa5, 0xc3, 0xde, 0xaf};
    int with_id = 0;
    for (size_t i = 0; i < S_NCOMMANDS; i++) {
        const tq_proto_command_t *cmd = tq_proto_command(s_commands[i]);
        if (!strchr(cmd->fields, 'I') && !strchr(cmd->fields, 'i'))
            continue;
        with_id++;
        for (int binary = 0; binary < 2; binary++) {
            s_fill(&in, s_commands[i]);
            in.id = tq_str(S_HEX_ID);
            in.id_binary = binary;
            assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
            bool has_bin = memmem(buf.data, buf.size, bin, sizeof bin);
            bool has_str = memmem(buf.data, buf.size, S_HEX_ID, 32);
            assert_int_equal(has_bin, binary);
            assert_int_equal(has_str, !binary);
            const char *why = NULL;
            assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, &why),
                             TQ_OK);
            assert_int_equal(out.command, in.command);
            assert_int_equal(out.id.len, 32);
            assert_memory_equal(out.id.ptr, S_HEX_ID, 32);
            assert_int_equal(out.id_binary, binary);
            if (binary)
                assert_ptr_equal(out.id.ptr, out.id_hex);
            else
                assert_true(out.id.ptr >= buf.data &&
                            out.id.ptr < buf.data + buf.size);
        }
    }
    assert_true(with_id >= 10);
    msgpack_sbuffer_destroy(&buf);
}

/* A str id of 32 lowercase hex digits comes out of decode with its 16
   bytes (id_text_bytes, id_text_bin), for every command with an id; any
   other id, a bin id, or a message after one that had them, without. */
static void
test_id_text_bytes(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in, out;
    const uint8_t raw[16] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                             0x00, 0xff, 0x10, 0xe0, 0xa5, 0xc3, 0xde, 0xaf};
    /* 32 characters, each valid in an id, not all lowercase hex */
    const char *others[] = {"0123456789ABCDEF00ff10e0a5c3deaf",
                            "0123456789abcdef00ff10e0a5c3deag",
                            "0123456789abcdef00ff10e0a5c3dea_",
                            "0123456789abcdef00ff10e0a5c3dea", "job-1"};
    int with_id = 0;
    for (size_t i = 0; i < S_NCOMMANDS; i++) {
        const tq_proto_command_t *cmd = tq_proto_command(s_commands[i]);
        if (!strchr(cmd->fields, 'I') && !strchr(cmd->fields, 'i'))
            continue;
        with_id++;
        s_fill(&in, s_commands[i]);
        in.id = tq_str(S_HEX_ID);
        in.id_binary = false;
        assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
        assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL),
                         TQ_OK);
        assert_true(out.id_text_bin);
        assert_memory_equal(out.id_text_bytes, raw, sizeof raw);
        assert_null(out.id_bytes);
        assert_true(tq_str_eq(out.id, S_HEX_ID));
        /* the next message's other id: no bytes left from this one */
        for (size_t k = 0; k < sizeof others / sizeof *others; k++) {
            in.id = tq_str(others[k]);
            assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
            assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL),
                             TQ_OK);
            assert_false(out.id_text_bin);
            assert_true(tq_str_eq(out.id, others[k]));
            in.id = tq_str(S_HEX_ID);
            assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
            assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL),
                             TQ_OK);
            assert_true(out.id_text_bin);
        }
        /* sent as bin: its bytes are in id_bytes */
        in.id_binary = true;
        assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
        assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL),
                         TQ_OK);
        assert_false(out.id_text_bin);
        assert_non_null(out.id_bytes);
    }
    assert_true(with_id >= 10);
    /* a message that fails to decode leaves none either */
    s_fill(&in, TQ_CMD_SUBMIT);
    in.id = tq_str(S_HEX_ID);
    in.id_binary = false;
    assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL), TQ_OK);
    assert_true(out.id_text_bin);
    assert_int_not_equal(tq_proto_decode(&out, buf.data, 1, NULL), TQ_OK);
    assert_false(out.id_text_bin);
    msgpack_sbuffer_destroy(&buf);
}

/* An id given as its 16 bytes (id_bytes) encodes exactly as its text
   does, for every command with an id, without the text; decode hands the
   bytes back (borrowed from the buffer), and NULL for a str id. */
static void
test_binary_id_bytes(void **state)
{
    (void)state;
    msgpack_sbuffer text, bytes;
    msgpack_sbuffer_init(&text);
    msgpack_sbuffer_init(&bytes);
    static tq_msg_t in, out;
    const uint8_t raw[16] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                             0x00, 0xff, 0x10, 0xe0, 0xa5, 0xc3, 0xde, 0xaf};
    int with_id = 0;
    for (size_t i = 0; i < S_NCOMMANDS; i++) {
        const tq_proto_command_t *cmd = tq_proto_command(s_commands[i]);
        if (!strchr(cmd->fields, 'I') && !strchr(cmd->fields, 'i'))
            continue;
        with_id++;
        s_fill(&in, s_commands[i]);
        in.id = tq_str(S_HEX_ID);
        in.id_binary = true;
        in.id_bytes = NULL;
        assert_int_equal(tq_proto_encode(&in, &text, NULL), TQ_OK);
        in.id = tq_str(NULL); /* not read: the bytes are the id */
        in.id_bytes = raw;
        assert_int_equal(tq_proto_encode(&in, &bytes, NULL), TQ_OK);
        assert_int_equal(bytes.size, text.size);
        assert_memory_equal(bytes.data, text.data, text.size);
        assert_int_equal(tq_proto_decode(&out, bytes.data, bytes.size, NULL),
                         TQ_OK);
        assert_true(out.id_binary);
        assert_non_null(out.id_bytes);
        assert_memory_equal(out.id_bytes, raw, sizeof raw);
        assert_true(out.id_bytes >= (const uint8_t *)bytes.data &&
                    out.id_bytes + 16 <=
                        (const uint8_t *)bytes.data + bytes.size);
        assert_true(tq_str_eq(out.id, S_HEX_ID));
        /* bytes without id_binary are not read: the text goes as str */
        in.id = tq_str(S_HEX_ID);
        in.id_binary = false;
        assert_int_equal(tq_proto_encode(&in, &bytes, NULL), TQ_OK);
        assert_non_null(memmem(bytes.data, bytes.size, S_HEX_ID, 32));
        assert_int_equal(tq_proto_decode(&out, bytes.data, bytes.size, NULL),
                         TQ_OK);
        assert_false(out.id_binary);
        assert_null(out.id_bytes);
    }
    assert_true(with_id >= 10);
    msgpack_sbuffer_destroy(&text);
    msgpack_sbuffer_destroy(&bytes);
}

/* The point of the form: TASK and DONE of a short task name fit in
   libzmq's 33-byte inline message (no malloc per frame), which a str id
   cannot. */
static void
test_binary_id_small_headers(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t msg;
    memset(&msg, 0, sizeof msg);
    msg.command = TQ_CMD_TASK;
    msg.id = tq_str(S_HEX_ID);
    msg.task = tq_str("tq.echo");
    msg.attempt = 1;
    msg.time_limit_ms = 0;
    msg.id_binary = true;
    assert_int_equal(tq_proto_encode(&msg, &buf, NULL), TQ_OK);
    printf("  TASK header: %zu bytes with a bin id\n", buf.size);
    assert_true(buf.size <= 33);
    msg.id_binary = false;
    assert_int_equal(tq_proto_encode(&msg, &buf, NULL), TQ_OK);
    assert_true(buf.size > 33);

    memset(&msg, 0, sizeof msg);
    msg.command = TQ_CMD_DONE;
    msg.id = tq_str(S_HEX_ID);
    msg.attempt = 1;
    msg.state = TQ_STATE_SUCCESS;
    msg.rss_kb = 1u << 20; /* 1 GiB peak: a 5-byte uint */
    msg.id_binary = true;
    assert_int_equal(tq_proto_encode(&msg, &buf, NULL), TQ_OK);
    printf("  DONE header: %zu bytes with a bin id\n", buf.size);
    assert_true(buf.size <= 33);
    msgpack_sbuffer_destroy(&buf);
}

/* Asked for a bin id, an id that is not exactly 32 lowercase hex digits
   goes as str (its text unchanged); an invalid one is still refused. */
static void
test_binary_id_only_hex(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in, out;
    const char *ids[] = {
        "task-1",
        "0123456789ABCDEF0123456789ABCDEF", /* uppercase */
        "0123456789abcdef0123456789abcde", /* 31 */
        "0123456789abcdef0123456789abcdef0", /* 33 */
        "0123456789abcdef0123456789abcdeg", /* not hex */
        "0123456789abcdef-0123456789abcde",
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        s_fill(&in, TQ_CMD_TASK);
        in.id = tq_str(ids[i]);
        in.id_binary = true;
        assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
        assert_non_null(memmem(buf.data, buf.size, ids[i], strlen(ids[i])));
        assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL),
                         TQ_OK);
        assert_false(out.id_binary);
        assert_true(s_same(out.id, in.id));
    }
    const char *why = NULL;
    s_fill(&in, TQ_CMD_DONE);
    in.id = tq_str("has space");
    in.id_binary = true;
    assert_int_equal(tq_proto_encode(&in, &buf, &why), TQ_EINVAL);
    assert_string_equal(why, "invalid task id");
    /* an optional id left out is nil in either form */
    s_fill(&in, TQ_CMD_ERROR);
    in.id = tq_str(NULL);
    in.id_binary = true;
    assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL), TQ_OK);
    assert_null(out.id.ptr);
    assert_false(out.id_binary);
    msgpack_sbuffer_destroy(&buf);
}

/* Hand-made headers: a 16-byte bin reads as its lowercase hex, in any bin
   width; any other size, or a bin cut short, is malformed. */
static void
test_binary_id_decode(void **state)
{
    (void)state;
    static tq_msg_t out;
    const char *why = NULL;
    /* [1, REVOKE, bin, 3] */
    uint8_t frame[32] = {0x94, 0x01, 0x27, 0xc4, 0x10};
    for (int i = 0; i < 16; i++)
        frame[5 + i] = (uint8_t)(0xf0 - 0x11 * i);
    frame[21] = 0x03;
    assert_int_equal(tq_proto_decode(&out, frame, 22, &why), TQ_OK);
    assert_int_equal(out.command, TQ_CMD_REVOKE);
    assert_int_equal(out.attempt, 3);
    assert_true(out.id_binary);
    assert_true(tq_str_eq(out.id, "f0dfcebdac9b8a7968574635241302f1"));
    assert_true(tq_proto_valid_id(out.id.ptr, out.id.len));
    /* bin 16 and bin 32 tags carrying 16 bytes */
    uint8_t wide[40] = {0x94, 0x01, 0x27, 0xc5, 0x00, 0x10};
    memcpy(wide + 6, frame + 5, 16);
    wide[22] = 0x03;
    assert_int_equal(tq_proto_decode(&out, wide, 23, &why), TQ_OK);
    assert_true(tq_str_eq(out.id, "f0dfcebdac9b8a7968574635241302f1"));
    uint8_t wider[40] = {0x94, 0x01, 0x27, 0xc6, 0x00, 0x00, 0x00, 0x10};
    memcpy(wider + 8, frame + 5, 16);
    wider[24] = 0x03;
    assert_int_equal(tq_proto_decode(&out, wider, 25, &why), TQ_OK);
    assert_true(out.id_binary);
    /* other sizes: 0, 1, 15, 17, 32 */
    const uint8_t sizes[] = {0, 1, 15, 17, 32};
    for (size_t k = 0; k < sizeof sizes; k++) {
        uint8_t bad[64] = {0x94, 0x01, 0x27, 0xc4, sizes[k]};
        memset(bad + 5, 0xab, sizes[k]);
        bad[5 + sizes[k]] = 0x03;
        why = NULL;
        assert_int_equal(tq_proto_decode(&out, bad, 6 + sizes[k], &why),
                         TQ_EPROTO);
        assert_string_equal(why, "a binary task id must be 16 bytes");
    }
    /* every strict prefix of a bin-id TASK and DONE */
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in;
    const uint8_t commands[] = {TQ_CMD_TASK, TQ_CMD_DONE};
    for (size_t c = 0; c < sizeof commands; c++) {
        s_fill(&in, commands[c]);
        in.id_binary = true;
        assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
        for (size_t n = 0; n < buf.size; n++) {
            char *prefix = malloc(n ? n : 1);
            memcpy(prefix, buf.data, n);
            assert_int_equal(tq_proto_decode(&out, prefix, n, NULL), TQ_EPROTO);
            free(prefix);
        }
    }
    msgpack_sbuffer_destroy(&buf);
    /* a bin where an id is not read (a task name) stays malformed */
    uint8_t name[40] = {0x96, 0x01, 0x21, 0xa2, 'i', 'd', 0xc4, 0x10};
    memset(name + 8, 0x61, 16);
    name[24] = 0x01;
    name[25] = 0x00;
    assert_int_equal(tq_proto_decode(&out, name, 26, &why), TQ_EPROTO);
}

/* tq_proto_id_parse: exactly 32 lowercase hex digits, every byte value
   tried in every position class. */
static void
test_id_parse(void **state)
{
    (void)state;
    uint8_t bin[TQ_PROTO_ID_BIN];
    assert_true(tq_proto_id_parse(S_HEX_ID, 32, bin));
    const uint8_t want[] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                            0x00, 0xff, 0x10, 0xe0, 0xa5, 0xc3, 0xde, 0xaf};
    assert_memory_equal(bin, want, sizeof want);
    assert_false(tq_proto_id_parse(S_HEX_ID, 31, bin));
    assert_false(tq_proto_id_parse(S_HEX_ID "0", 33, bin));
    assert_false(tq_proto_id_parse(NULL, 32, bin));
    /* every position: the parser reads eight digits at once */
    for (int pos = 0; pos < 32; pos++)
        for (int c = 0; c < 256; c++) {
            char text[33];
            memcpy(text, S_HEX_ID, sizeof text);
            text[pos] = (char)c;
            bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
            assert_int_equal(tq_proto_id_parse(text, 32, bin), hex);
            /* a valid id either way when the byte is one an id may hold
               (tq_proto_valid_id checks 32 hex digits at once first) */
            bool id_byte = hex || (c >= 'g' && c <= 'z') ||
                (c >= 'A' && c <= 'Z') || c == '_' || c == '.' || c == '-';
            assert_int_equal(tq_proto_valid_id(text, 32), id_byte);
            if (hex) {
                int v = c <= '9' ? c - '0' : c - 'a' + 10;
                uint8_t byte = bin[pos / 2];
                assert_int_equal(pos % 2 ? byte & 0x0f : byte >> 4, v);
                /* the other digits are intact */
                uint8_t again[TQ_PROTO_ID_BIN];
                assert_true(tq_proto_id_parse(S_HEX_ID, 32, again));
                for (int i = 0; i < TQ_PROTO_ID_BIN; i++)
                    if (i != pos / 2)
                        assert_int_equal(bin[i], again[i]);
            }
        }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_every_command),
        cmocka_unit_test(test_optional_fields),
        cmocka_unit_test(test_older_peer),
        cmocka_unit_test(test_heartbeat_session),
        cmocka_unit_test(test_encode_refuses_bad_fields),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_wrong_version_and_command),
        cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_garbled),
        cmocka_unit_test(test_payload_check),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_binary_id_round_trip),
        cmocka_unit_test(test_binary_id_bytes),
        cmocka_unit_test(test_id_text_bytes),
        cmocka_unit_test(test_binary_id_small_headers),
        cmocka_unit_test(test_binary_id_only_hex),
        cmocka_unit_test(test_binary_id_decode),
        cmocka_unit_test(test_id_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
