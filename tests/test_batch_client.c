/* test_batch_client.c - the client side of BATCH (PROTOCOL.md 5.9): a
   client sends requests made together in one BATCH to a broker whose PONG
   said it takes them, and only then; it takes BATCHes from the broker
   apart, each message handled as if it had come alone; a broker it
   connects to again is asked again. Against a fake broker in this process
   (a raw ROUTER), and end to end against tq-broker.

   Requests "made together" are made deterministic by a callback: it runs
   on the client's I/O thread, which holds the socket while it runs, so
   every request the callback makes waits on the submission queue and the
   I/O thread takes them all at once when it returns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "tq_batch.h"
#include "tq_client_core.h"
#include "tq_client_internal.h"
#include "tq_fake_broker.h"
#include "tq_harness.h"
#include "tq_proto.h"
#include "tq_wire.h"

#define S_WAIT_MS 15000 /* bound on anything that must happen */
#define S_MAX 16 /* requests a callback makes, at most */
#define S_BIG 5000 /* bytes of a payload too large for a BATCH */

/* ---- requests made together, by a callback ----------------------------- */

/* What the callback of the first request makes: `count` requests, the
   one at `big` (-1: none) with a payload larger than TQ_BATCH_MAX_PAYLOAD. */
typedef struct {
    tq_client_t *client;
    int count;
    int big;
    const char *task; /* of the small ones; NULL: "t.small" */
    tq_result_t *made[S_MAX];
    char ids[S_MAX][TQ_PROTO_MAX_ID + 1];
    atomic_bool done;
} s_burst_t;

static void
s_make_burst(tq_result_t *result, void *arg)
{
    (void)result;
    s_burst_t *b = arg;
    static uint8_t big[S_BIG + 4];
    for (int i = 0; i < b->count; i++) {
        if (i == b->big) {
            /* [bin of S_BIG bytes] */
            big[0] = 0x91;
            big[1] = 0xc5;
            big[2] = (uint8_t)(S_BIG >> 8);
            big[3] = (uint8_t)(S_BIG & 0xff);
            b->made[i] =
                tq_apply_async_raw(b->client, "t.big", NULL, big, sizeof big);
        } else
            b->made[i] =
                tq_apply_async(b->client, b->task ? b->task : "t.small", NULL,
                               "i", (int64_t)i);
        assert_non_null(b->made[i]);
        snprintf(b->ids[i], sizeof b->ids[i], "%s", tq_result_id(b->made[i]));
    }
    atomic_store(&b->done, true);
}

/* Submits a request whose callback makes the burst b, answers it from
   the fake broker and waits for it: the PONG to the PING the client sends
   ahead of its first request goes before that answer, so the client
   knows what the broker takes. */
static void
s_burst_after_round_trip(tq_fake_broker_t *fake, s_burst_t *b)
{
    tq_options_t options = TQ_OPTIONS_INIT;
    options.callback = s_make_burst;
    options.callback_arg = b;
    tq_result_t *first =
        tq_apply_async(b->client, "t.first", &options, "i", (int64_t)0);
    assert_non_null(first);
    assert_true(tq_fake_broker_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    char id[TQ_PROTO_MAX_ID + 1];
    snprintf(id, sizeof id, "%s", fake->id);
    assert_string_equal(id, tq_result_id(first));
    while (fake->pings == 0) /* answered by now, or next */
        assert_true(tq_fake_broker_expect(fake, TQ_CMD_PING, S_WAIT_MS));
    tq_fake_broker_result(fake, id, TQ_STATE_SUCCESS, TQ_OK, NULL, 0x01);
    assert_int_equal(tq_result_get(first, S_WAIT_MS), TQ_OK);
    /* the callback ran before the handle became final */
    assert_true(atomic_load(&b->done));
    tq_result_destroy(&first);
}

/* The sub-messages of the BATCH fake->msg: their commands and ids, in
   order, and whether each had a payload. Returns how many. */
static int
s_read_batch(tq_fake_broker_t *fake, uint8_t *commands,
             char ids[][TQ_PROTO_MAX_ID + 1], size_t *sizes, int max)
{
    static tq_msg_t sub; /* large: off the stack */
    tq_batch_reader_t reader;
    tq_batch_reader_init(&reader, &fake->msg,
                         zmq_msg_data(&fake->frames.payload),
                         zmq_msg_size(&fake->frames.payload));
    int n = 0;
    for (;;) {
        const void *data = NULL;
        size_t size = 0;
        bool has_payload = false;
        const char *reason = NULL;
        int rc =
            tq_batch_next(&reader, &sub, &data, &size, &has_payload, &reason);
        if (rc == TQ_BATCH_END)
            break;
        if (rc != TQ_OK)
            fail_msg("malformed sub-message from the client: %s",
                     reason ? reason : "?");
        assert_true(n < max);
        commands[n] = sub.command;
        tq_str_copy(ids[n], sizeof ids[n], sub.id);
        sizes[n] = has_payload ? size : 0;
        n++;
    }
    return n;
}

/* Reads the next message from the client that is not a PING (answered
   when answer_pings): fake->msg holds it. */
static void
s_next(tq_fake_broker_t *fake, bool answer_pings)
{
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    for (;;) {
        int64_t left = deadline - tq_harness_now_ms();
        assert_true(left > 0);
        if (!tq_fake_router_recv(fake->router, &fake->frames, &fake->msg,
                                 (int)left))
            continue;
        tq_str_copy(fake->id, sizeof fake->id, fake->msg.id);
        if (fake->msg.command != TQ_CMD_PING)
            return;
        fake->pings++;
        if (answer_pings) {
            tq_msg_t pong = {.command = TQ_CMD_PONG,
                             .dropped = fake->dropped,
                             .features = fake->features};
            tq_fake_broker_send(fake, &pong, NULL, 0);
        }
    }
}

/* Reads the burst b from the client as lone SUBMITs (batched false) or
   BATCHes (each with every request of it that fits, the large one alone):
   every SUBMIT once, in order. Returns the BATCHes read. */
static int
s_expect_burst(tq_fake_broker_t *fake, s_burst_t *b, bool batched,
               bool answer_pings)
{
    int next = 0, batches = 0;
    while (next < b->count) {
        s_next(fake, answer_pings);
        if (fake->msg.command == TQ_CMD_BATCH) {
            assert_true(batched);
            uint8_t commands[S_MAX];
            char ids[S_MAX][TQ_PROTO_MAX_ID + 1];
            size_t sizes[S_MAX];
            int n = s_read_batch(fake, commands, ids, sizes, S_MAX);
            assert_true(n >= 2);
            for (int i = 0; i < n; i++, next++) {
                assert_true(next < b->count);
                assert_int_equal(commands[i], TQ_CMD_SUBMIT);
                assert_string_equal(ids[i], b->ids[next]);
                assert_true(sizes[i] <= TQ_BATCH_MAX_PAYLOAD);
                assert_true(next != b->big);
            }
            batches++;
            continue;
        }
        assert_int_equal(fake->msg.command, TQ_CMD_SUBMIT);
        assert_string_equal(fake->id, b->ids[next]);
        /* alone, when batched, only what cannot go in a BATCH */
        assert_true(!batched || next == b->big);
        next++;
    }
    return batches;
}

static void
s_burst_free(s_burst_t *b)
{
    for (int i = 0; i < b->count; i++)
        tq_result_destroy(&b->made[i]);
}

/* ---- against a fake broker ----------------------------------------------- */

static int
s_setup(void **state)
{
    tq_harness_init();
    *state = tq_fake_broker_new();
    return 0;
}

static int
s_teardown(void **state)
{
    tq_fake_broker_t *self = *state;
    tq_fake_broker_destroy(&self);
    return 0;
}

/* A broker that takes BATCH: requests made together go out in one BATCH,
   every SUBMIT once and in order, a payload too large for a BATCH alone
   between two BATCHes; a BATCH of RESULTs completes every handle. */
static void
test_batched_to_broker_that_takes_them(void **state)
{
    tq_fake_broker_t *fake = *state;
    fake->features = TQ_FEATURE_BATCH;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    s_burst_t b = {.client = client, .count = 10, .big = -1};
    s_burst_after_round_trip(fake, &b);
    assert_int_equal(tq_client_peer_features(client), TQ_FEATURE_BATCH);
    assert_int_equal(s_expect_burst(fake, &b, true, true), 1);
    assert_int_equal(tq_client_batches_sent(client), 1);
    assert_int_equal(tq_client_batched_sent(client), 10);

    /* the results, in one BATCH (in reverse order: matched by id) */
    tq_batch_t batch;
    tq_batch_init(&batch);
    for (int i = b.count - 1; i >= 0; i--) {
        tq_msg_t m = {.command = TQ_CMD_RESULT,
                      .id = tq_str(b.ids[i]),
                      .state = TQ_STATE_SUCCESS,
                      .attempt = 1};
        uint8_t value = (uint8_t)i; /* a positive fixint */
        assert_int_equal(tq_batch_add(&batch, &m, &value, 1, true), TQ_OK);
    }
    assert_int_equal(
        tq_wire_send_batch(fake->router, &fake->frames.identity, &batch, 0),
        TQ_OK);
    tq_batch_destroy(&batch);
    for (int i = 0; i < b.count; i++) {
        assert_int_equal(tq_result_get(b.made[i], S_WAIT_MS), TQ_OK);
        assert_int_equal(tq_result_value(b.made[i])->via.u64, (uint64_t)i);
    }
    assert_int_equal(tq_client_batches_read(client), 1);
    assert_int_equal(tq_client_malformed(client), 0);
    s_burst_free(&b);

    /* a large payload goes alone, between the BATCHes of the others */
    s_burst_t big = {.client = client, .count = 7, .big = 3};
    s_burst_after_round_trip(fake, &big);
    assert_int_equal(s_expect_burst(fake, &big, true, true), 2);
    s_burst_free(&big);
    tq_client_destroy(&client);
}

/* Waits (bounded) until the I/O thread sleeps: io_lock is free. */
static void
s_wait_io_asleep(tq_client_t *client)
{
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (pthread_mutex_trylock(&client->io_lock) != 0) {
        assert_true(tq_harness_now_ms() < deadline);
        tq_harness_sleep_ms(1);
    }
    pthread_mutex_unlock(&client->io_lock);
}

/* A payload too large for a BATCH goes alone anyway: while other requests
   are awaited (a stream), its caller sends it itself when the I/O thread
   sleeps, rather than hand it over and wake that thread; whatever was
   queued for the I/O thread before it still goes first. */
static void
test_large_sent_by_caller(void **state)
{
    tq_fake_broker_t *fake = *state;
    fake->features = TQ_FEATURE_BATCH;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    s_burst_t none = {.client = client, .count = 0, .big = -1};
    s_burst_after_round_trip(fake, &none);
    static uint8_t big[S_BIG + 4] = {0x91, 0xc5, (uint8_t)(S_BIG >> 8),
                                     (uint8_t)(S_BIG & 0xff)};
    enum { TRIES = 20 };
    tq_result_t *made[TRIES + 3];
    int n = 0;
    /* one awaited: the stream */
    made[n] = tq_apply_async(client, "t.small", NULL, "i", (int64_t)0);
    assert_non_null(made[n]);
    s_next(fake, true);
    assert_int_equal(fake->msg.command, TQ_CMD_SUBMIT);
    assert_string_equal(fake->id, tq_result_id(made[n]));
    n++;
    /* the I/O thread may wake (its liveness work) between the look and
       the submit: a bounded number of tries */
    uint64_t before = tq_client_sent_by_caller(client);
    while (n <= TRIES && tq_client_sent_by_caller(client) == before) {
        s_wait_io_asleep(client);
        made[n] = tq_apply_async_raw(client, "t.big", NULL, big, sizeof big);
        assert_non_null(made[n]);
        s_next(fake, true);
        assert_int_equal(fake->msg.command, TQ_CMD_SUBMIT);
        assert_string_equal(fake->id, tq_result_id(made[n]));
        n++;
    }
    assert_true(tq_client_sent_by_caller(client) > before);

    /* a small one queued for the I/O thread (it held the socket), then a
       large one: the small one first on the wire */
    s_wait_io_asleep(client);
    pthread_mutex_lock(&client->io_lock);
    made[n] = tq_apply_async(client, "t.small", NULL, "i", (int64_t)1);
    pthread_mutex_unlock(&client->io_lock);
    assert_non_null(made[n]);
    made[n + 1] = tq_apply_async_raw(client, "t.big", NULL, big, sizeof big);
    assert_non_null(made[n + 1]);
    for (int i = n; i < n + 2; i++) {
        s_next(fake, true);
        assert_int_equal(fake->msg.command, TQ_CMD_SUBMIT);
        assert_string_equal(fake->id, tq_result_id(made[i]));
    }
    n += 2;

    /* every one answered, each handle its own value */
    for (int i = n - 1; i >= 0; i--)
        tq_fake_broker_result(fake, tq_result_id(made[i]), TQ_STATE_SUCCESS,
                              TQ_OK, NULL, (uint8_t)i);
    for (int i = 0; i < n; i++) {
        assert_int_equal(tq_result_get(made[i], S_WAIT_MS), TQ_OK);
        assert_int_equal(tq_result_value(made[i])->via.u64, (uint64_t)i);
        tq_result_destroy(&made[i]);
    }
    assert_int_equal(tq_client_moves(client, TQ_REQ_SENT, TQ_REQ_QUEUED), 0);
    tq_client_destroy(&client);
}

/* A broker whose PONG says nothing of BATCH (an older one) never gets
   one: the same requests go alone, in order. */
static void
test_older_broker_gets_no_batch(void **state)
{
    tq_fake_broker_t *fake = *state;
    fake->features = 0;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    s_burst_t b = {.client = client, .count = 10, .big = -1};
    s_burst_after_round_trip(fake, &b);
    assert_int_equal(tq_client_peer_features(client), 0);
    assert_int_equal(s_expect_burst(fake, &b, false, true), 0);
    assert_int_equal(tq_client_batches_sent(client), 0);
    s_burst_free(&b);
    tq_client_destroy(&client);
}

/* A client told not to batch sends nothing batched to a broker that
   takes BATCH, and says so in its SUBMITs' features. */
static void
test_batch_off(void **state)
{
    tq_fake_broker_t *fake = *state;
    fake->features = TQ_FEATURE_BATCH;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    tq_client_set_batch(client, false);
    s_burst_t b = {.client = client, .count = 5, .big = -1};
    s_burst_after_round_trip(fake, &b);
    assert_int_equal(s_expect_burst(fake, &b, false, true), 0);
    assert_int_equal(fake->msg.features & TQ_FEATURE_BATCH, 0);
    s_burst_free(&b);
    tq_client_destroy(&client);
}

/* Appends a sub-message as the codec would not: header bytes (size) and
   no payload (nil), whatever its command's rule. */
static void
s_batch_add_raw(tq_batch_t *batch, const void *header, size_t size)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, &batch->body, msgpack_sbuffer_write);
    msgpack_pack_bin(&pk, size);
    msgpack_pack_bin_body(&pk, header, size);
    msgpack_pack_nil(&pk);
    batch->count++;
}

/* A malformed message inside a BATCH is dropped and counted, and the
   others of that BATCH are handled; so is a RESULT inside without its
   payload. Each SUBMIT says the client takes BATCH. */
static void
test_malformed_sub_message(void **state)
{
    tq_fake_broker_t *fake = *state;
    fake->features = 0;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    enum { N = 3 };
    tq_result_t *r[N];
    char ids[N][TQ_PROTO_MAX_ID + 1];
    for (int i = 0; i < N; i++) {
        r[i] = tq_apply_async(client, "t", NULL, "i", (int64_t)i);
        assert_non_null(r[i]);
        assert_true(tq_fake_broker_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
        assert_int_equal(fake->msg.features & TQ_FEATURE_BATCH,
                         TQ_FEATURE_BATCH);
        snprintf(ids[i], sizeof ids[i], "%s", fake->id);
        assert_string_equal(ids[i], tq_result_id(r[i]));
    }
    uint64_t malformed = tq_client_malformed(client);
    tq_batch_t batch;
    tq_batch_init(&batch);
    tq_msg_t m = {.command = TQ_CMD_RESULT,
                  .id = tq_str(ids[0]),
                  .state = TQ_STATE_SUCCESS,
                  .attempt = 1};
    uint8_t value = 0x07;
    assert_int_equal(tq_batch_add(&batch, &m, &value, 1, true), TQ_OK);
    /* not a TQP/1 header */
    static const uint8_t garbage[] = {0xc1, 0x01, 0x02};
    s_batch_add_raw(&batch, garbage, sizeof garbage);
    /* a RESULT for ids[1] without its value */
    msgpack_sbuffer header;
    msgpack_sbuffer_init(&header);
    m.id = tq_str(ids[1]);
    assert_int_equal(tq_proto_encode(&m, &header, NULL), TQ_OK);
    s_batch_add_raw(&batch, header.data, header.size);
    msgpack_sbuffer_destroy(&header);
    m.id = tq_str(ids[2]);
    assert_int_equal(tq_batch_add(&batch, &m, &value, 1, true), TQ_OK);
    assert_int_equal(
        tq_wire_send_batch(fake->router, &fake->frames.identity, &batch, 0),
        TQ_OK);
    tq_batch_destroy(&batch);
    assert_int_equal(tq_result_get(r[0], S_WAIT_MS), TQ_OK);
    assert_int_equal(tq_result_get(r[2], S_WAIT_MS), TQ_OK);
    assert_int_equal(tq_client_malformed(client), malformed + 2);
    assert_false(tq_result_ready(r[1]));
    /* its RESULT in full, alone, ends its handle */
    tq_fake_broker_result(fake, ids[1], TQ_STATE_SUCCESS, TQ_OK, NULL, 0x07);
    assert_int_equal(tq_result_get(r[1], S_WAIT_MS), TQ_OK);
    assert_int_equal(tq_client_batches_read(client), 1);
    for (int i = 0; i < N; i++)
        tq_result_destroy(&r[i]);
    tq_client_destroy(&client);
}

/* A RESULT header of id (state SUCCESS, attempts 3) with `extra`
   trailing fields (fixints) or, with bin, its id as a 16-byte bin, into
   out; returns its size. */
static size_t
s_result_header(uint8_t *out, const char *id, int extra, bool bin)
{
    size_t n = 0;
    out[n++] = (uint8_t)(0x97 + extra);
    out[n++] = 0x01;
    out[n++] = TQ_CMD_RESULT;
    size_t len = strlen(id);
    if (bin) {
        assert_int_equal(len, 32);
        out[n++] = 0xc4;
        out[n++] = 16;
        assert_true(tq_proto_id_parse(id, len, out + n));
        n += 16;
    } else {
        out[n++] = 0xd9;
        out[n++] = (uint8_t)len;
        memcpy(out + n, id, len);
        n += len;
    }
    out[n++] = TQ_STATE_SUCCESS;
    out[n++] = TQ_OK;
    out[n++] = 0xc0;
    out[n++] = 3;
    for (int i = 0; i < extra; i++)
        out[n++] = (uint8_t)i;
    return n;
}

/* RESULTs in a BATCH and alone, as the client's one-pass reader takes
   them or leaves them to the decoder: one with trailing fields of a newer
   revision and one with a bin id end their handles, with their attempts;
   a truncated one, one of a state out of range and one of an id that
   breaks the id rules are dropped and counted, the others of the BATCH
   handled; alone, the same. */
static void
test_result_forms(void **state)
{
    tq_fake_broker_t *fake = *state;
    fake->features = 0;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    enum { N = 5 };
    tq_result_t *r[N];
    char ids[N][TQ_PROTO_MAX_ID + 1];
    for (int i = 0; i < N; i++) {
        r[i] = tq_apply_async(client, "t", NULL, "i", (int64_t)i);
        assert_non_null(r[i]);
        assert_true(tq_fake_broker_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
        snprintf(ids[i], sizeof ids[i], "%s", fake->id);
        assert_int_equal(strlen(ids[i]), 32);
    }
    uint64_t malformed = tq_client_malformed(client);
    uint8_t value = 0x07, h[128];
    size_t n;
    tq_batch_t batch;
    tq_batch_init(&batch);
    /* the bad ones first: read before the good ones end their handles */
    n = s_result_header(h, ids[2], 0, false);
    assert_int_equal(tq_batch_add_encoded(&batch, h, n - 1, &value, 1, true),
                     TQ_OK); /* truncated */
    n = s_result_header(h, ids[3], 0, false);
    h[n - 4] = 16; /* a state beyond TQ_PROTO_MAX_STATE */
    assert_int_equal(tq_batch_add_encoded(&batch, h, n, &value, 1, true),
                     TQ_OK);
    n = s_result_header(h, ids[4], 0, false);
    h[5] = '!'; /* not an id */
    assert_int_equal(tq_batch_add_encoded(&batch, h, n, &value, 1, true),
                     TQ_OK);
    n = s_result_header(h, ids[0], 3, false);
    assert_int_equal(tq_batch_add_encoded(&batch, h, n, &value, 1, true),
                     TQ_OK);
    n = s_result_header(h, ids[1], 0, true);
    assert_int_equal(tq_batch_add_encoded(&batch, h, n, &value, 1, true),
                     TQ_OK);
    assert_int_equal(
        tq_wire_send_batch(fake->router, &fake->frames.identity, &batch, 0),
        TQ_OK);
    tq_batch_destroy(&batch);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tq_result_get(r[i], S_WAIT_MS), TQ_OK);
        assert_int_equal(tq_result_attempts(r[i]), 3);
        size_t size = 0;
        const uint8_t *data = tq_result_data(r[i], &size);
        assert_int_equal(size, 1);
        assert_int_equal(data[0], value);
    }
    /* the three bad ones were read before (a BATCH is read in order) */
    assert_int_equal(tq_client_malformed(client), malformed + 3);
    for (int i = 2; i < N; i++)
        assert_false(tq_result_ready(r[i]));
    /* alone: bad ones dropped and counted, a good one with trailing
       fields ends its handle after them */
    for (int i = 2; i < N; i++) {
        n = s_result_header(h, ids[i], 0, false);
        if (i == 2)
            n--;
        else if (i == 3)
            h[n - 4] = 16;
        else
            h[5] = '!';
        zmq_msg_t payload;
        zmq_msg_init_size(&payload, 1);
        memcpy(zmq_msg_data(&payload), &value, 1);
        assert_int_equal(tq_wire_send(fake->router, &fake->frames.identity, h,
                                      n, &payload, 0),
                         TQ_OK);
        zmq_msg_close(&payload);
    }
    for (int i = 2; i < N; i++) {
        n = s_result_header(h, ids[i], 2, false);
        zmq_msg_t payload;
        zmq_msg_init_size(&payload, 1);
        memcpy(zmq_msg_data(&payload), &value, 1);
        assert_int_equal(tq_wire_send(fake->router, &fake->frames.identity, h,
                                      n, &payload, 0),
                         TQ_OK);
        zmq_msg_close(&payload);
    }
    for (int i = 2; i < N; i++) {
        assert_int_equal(tq_result_get(r[i], S_WAIT_MS), TQ_OK);
        assert_int_equal(tq_result_attempts(r[i]), 3);
    }
    assert_int_equal(tq_client_malformed(client), malformed + 6);
    for (int i = 0; i < N; i++)
        tq_result_destroy(&r[i]);
    tq_client_destroy(&client);
}

/* The broker that took BATCH dies and an older one comes up on the same
   port: the client forgot what the first one took when the connection
   broke and asks the new one (PING); while it has not answered, nothing
   batched goes to it. */
static void
test_reconnect_forgets(void **state)
{
    tq_fake_broker_t *fake = *state;
    fake->features = TQ_FEATURE_BATCH;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    s_burst_t b = {.client = client, .count = 4, .big = -1};
    s_burst_after_round_trip(fake, &b);
    assert_int_equal(s_expect_burst(fake, &b, true, true), 1);
    for (int i = 0; i < b.count; i++)
        tq_fake_broker_result(fake, b.ids[i], TQ_STATE_SUCCESS, TQ_OK, NULL,
                              0x01);
    for (int i = 0; i < b.count; i++)
        assert_int_equal(tq_result_get(b.made[i], S_WAIT_MS), TQ_OK);
    s_burst_free(&b);

    tq_fake_broker_close(fake);
    fake->features = 0;
    assert_int_equal(tq_fake_broker_bind(fake, S_WAIT_MS), 0);
    /* its PING to the new broker, ahead of the next request, is not
       answered: the client must not take the old broker's word for the
       new one */
    s_burst_t again = {.client = client, .count = 6, .big = -1};
    tq_options_t options = TQ_OPTIONS_INIT;
    options.callback = s_make_burst;
    options.callback_arg = &again;
    tq_result_t *first =
        tq_apply_async(client, "t.first", &options, "i", (int64_t)0);
    assert_non_null(first);
    s_next(fake, false);
    assert_int_equal(fake->msg.command, TQ_CMD_SUBMIT);
    assert_string_equal(fake->id, tq_result_id(first));
    tq_fake_broker_result(fake, fake->id, TQ_STATE_SUCCESS, TQ_OK, NULL, 0x01);
    assert_int_equal(tq_result_get(first, S_WAIT_MS), TQ_OK);
    assert_true(atomic_load(&again.done));
    assert_int_equal(s_expect_burst(fake, &again, false, false), 0);
    assert_int_equal(tq_client_batches_sent(client), 1);
    tq_result_destroy(&first);
    s_burst_free(&again);
    tq_client_destroy(&client);
}

/* A broker that said it takes BATCH and then answers one as a broker of
   an earlier revision does (ERROR TQ_EPROTO "unknown command", no id):
   the client sends every request of it again, alone and in order, and
   sends nothing batched after. */
static void
test_refused_batch_sent_again(void **state)
{
    tq_fake_broker_t *fake = *state;
    fake->features = TQ_FEATURE_BATCH;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    s_burst_t b = {.client = client, .count = 8, .big = -1};
    s_burst_after_round_trip(fake, &b);
    assert_int_equal(s_expect_burst(fake, &b, true, true), 1);
    tq_msg_t error = {.command = TQ_CMD_ERROR,
                      .code = TQ_EPROTO,
                      .error = tq_str("unknown command")};
    tq_fake_broker_send(fake, &error, NULL, 0);
    assert_int_equal(s_expect_burst(fake, &b, false, true), 0);
    assert_int_equal(tq_client_peer_features(client), 0);
    for (int i = 0; i < b.count; i++) {
        assert_false(tq_result_ready(b.made[i]));
        tq_fake_broker_result(fake, b.ids[i], TQ_STATE_SUCCESS, TQ_OK, NULL,
                              0x01);
    }
    for (int i = 0; i < b.count; i++)
        assert_int_equal(tq_result_get(b.made[i], S_WAIT_MS), TQ_OK);
    assert_int_equal(tq_client_batches_sent(client), 1);
    s_burst_free(&b);
    tq_client_destroy(&client);
}

/* ---- against tq-broker --------------------------------------------------- */

/* Requests made together go to tq-broker in one BATCH (its STATUS counts
   it, and every request in it), and every one of them gets its result. */
static void
test_broker_takes_batch(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    assert_true(tq_harness_env_add_worker(env, 2, NULL, true) > 0);
    tq_client_t *client = env->client;
    tq_harness_status_t status = {0};
    assert_int_equal(tq_harness_status(client, &status, S_WAIT_MS), TQ_OK);
    /* the clients' part: the children may send BATCHes of DONEs too */
    uint64_t batches = tq_harness_counter(&status, "batches_in") -
        tq_harness_counter(&status, "child_batches_in");
    uint64_t batched = tq_harness_counter(&status, "batched_in") -
        tq_harness_counter(&status, "child_batched_in");
    tq_harness_status_free(&status);
    assert_true(batches < UINT64_MAX / 2 && batched < UINT64_MAX / 2);
    /* the STATUS round trip went before: the client knows the broker */
    assert_int_equal(tq_client_peer_features(client) & TQ_FEATURE_BATCH,
                     TQ_FEATURE_BATCH);

    s_burst_t b = {
        .client = client, .count = S_MAX, .big = -1, .task = "tq.echo"};
    tq_options_t options = TQ_OPTIONS_INIT;
    options.callback = s_make_burst;
    options.callback_arg = &b;
    tq_result_t *first = tq_apply_async(client, "tq.echo", &options, "");
    assert_non_null(first);
    assert_int_equal(tq_result_get(first, S_WAIT_MS), TQ_OK);
    tq_result_destroy(&first);
    assert_true(atomic_load(&b.done));
    for (int i = 0; i < b.count; i++)
        assert_int_equal(tq_result_get(b.made[i], S_WAIT_MS), TQ_OK);
    s_burst_free(&b);
    assert_int_equal(tq_client_batches_sent(client), 1);
    assert_int_equal(tq_client_batched_sent(client), S_MAX);
    assert_int_equal(tq_harness_status(client, &status, S_WAIT_MS), TQ_OK);
    assert_int_equal(tq_harness_counter(&status, "batches_in") -
                         tq_harness_counter(&status, "child_batches_in"),
                     batches + 1);
    assert_int_equal(tq_harness_counter(&status, "batched_in") -
                         tq_harness_counter(&status, "child_batched_in"),
                     batched + S_MAX);
    tq_harness_status_free(&status);
    assert_int_equal(tq_client_malformed(client), 0);
}

/* A stream of many apply_async then collect, as tq-bench's W1: every
   task gets its result, whatever went batched each way. */
static void
test_stream_all_results(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    assert_true(tq_harness_env_add_worker(env, 2, NULL, true) > 0);
    tq_client_t *client = env->client;
    enum { N = 20000 };
    tq_result_t **r = calloc(N, sizeof *r);
    assert_non_null(r);
    for (int i = 0; i < N; i++) {
        r[i] = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)i);
        assert_non_null(r[i]);
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(tq_result_get(r[i], 60000), TQ_OK);
        const msgpack_object *v = tq_result_value(r[i]);
        assert_non_null(v);
        /* tq.echo answers its arguments */
        assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(v->via.array.size, 1);
        assert_int_equal(v->via.array.ptr[0].via.u64, (uint64_t)i);
        tq_result_destroy(&r[i]);
    }
    free(r);
    printf("client: %llu BATCHes sent (%llu requests), %llu read\n",
           (unsigned long long)tq_client_batches_sent(client),
           (unsigned long long)tq_client_batched_sent(client),
           (unsigned long long)tq_client_batches_read(client));
    assert_int_equal(tq_client_malformed(client), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_batched_to_broker_that_takes_them,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_large_sent_by_caller, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_older_broker_gets_no_batch,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_batch_off, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_result_forms, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_sub_message, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_forgets, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_refused_batch_sent_again, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_broker_takes_batch,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_stream_all_results,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
