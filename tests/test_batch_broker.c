/* test_batch_broker.c - BATCH at the broker (PROTOCOL.md 5.9), with a real
   tq-broker and raw DEALERs: its PONG says it takes BATCH; a BATCH of
   SUBMITs is answered for every one of them, alone to a client that did
   not set TQ_FEATURE_BATCH and in one BATCH to one that did (made in one
   pass); a malformed sub-message gets its ERROR and the others are
   handled; a batch whose framing is broken gets one ERROR; results reach
   the client in order, a large one alone; STATUS counts batches both
   ways. From worker children: its PONG there says it takes BATCH; a
   child's BATCH of DONEs is handled as the DONEs alone; bad ones are
   refused as the clients' are, and one from a peer that is not a child
   whole. Every check is on order and counts, never on time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <zmq.h>

#include "tq_batch.h"
#include "tq_harness.h"
#include "tq_proto.h"
#include "tq_wire.h"

#define S_MAX_SOCKETS 8
#define S_MAX_IN 4096 /* messages kept unread, per socket */

/* Arguments of every task: [1]. */
static const uint8_t s_args[] = {0x91, 0x01};

/* One received message; `batch` is the number of the BATCH it came in
   (1, 2, ... per socket), 0 when it came alone. */
typedef struct {
    uint8_t command;
    char id[TQ_PROTO_MAX_ID + 1];
    uint32_t code, features;
    uint64_t dropped;
    size_t payload_size;
    uint8_t *payload; /* STATUS_REPLY only, malloc'd */
    int batch;
} s_in_t;

typedef struct {
    tq_harness_broker_t broker;
    void *ctx;
    void *sockets[S_MAX_SOCKETS];
    size_t socket_count;
    msgpack_sbuffer buf;
    int wait_ms;
    /* what was received and not yet taken, per socket */
    s_in_t *in[S_MAX_SOCKETS]; /* S_MAX_IN each */
    int in_count[S_MAX_SOCKETS];
    int batches[S_MAX_SOCKETS];
} s_world_t;

/* A world whose broker runs with argv (beyond --no-persist). */
static int
s_setup_with(void **state, const char *const extra[])
{
    tq_harness_init();
    s_world_t *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    for (int i = 0; i < S_MAX_SOCKETS; i++) {
        w->in[i] = calloc(S_MAX_IN, sizeof *w->in[i]);
        if (!w->in[i])
            return -1;
    }
    w->ctx = zmq_ctx_new();
    msgpack_sbuffer_init(&w->buf);
    const char *wrapper = getenv("TQ_TEST_BROKER_WRAPPER");
    w->wait_ms = wrapper && *wrapper ? 20000 : 5000;
    const char *argv[16] = {"--no-persist"};
    for (int i = 0; extra && extra[i] && i < 14; i++)
        argv[i + 1] = extra[i];
    *state = w;
    return tq_harness_broker_start(&w->broker, argv) == 0 ? 0 : -1;
}

static int
s_setup(void **state)
{
    return s_setup_with(state, NULL);
}

static int
s_teardown(void **state)
{
    s_world_t *w = *state;
    for (size_t i = 0; i < w->socket_count; i++) {
        zmq_close(w->sockets[i]);
        for (int k = 0; k < w->in_count[i]; k++)
            free(w->in[i][k].payload);
    }
    for (int i = 0; i < S_MAX_SOCKETS; i++)
        free(w->in[i]);
    zmq_ctx_term(w->ctx);
    msgpack_sbuffer_destroy(&w->buf);
    int status = tq_harness_broker_stop(&w->broker);
    tq_harness_kill_all();
    free(w);
    /* a clean exit; under valgrind --error-exitcode=9 errors show here */
    return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0
                                                                         : -1;
}

/* A DEALER on endpoint; its index in w->sockets is *index. */
static void *
s_dealer(s_world_t *w, const char *endpoint)
{
    assert_true(w->socket_count < S_MAX_SOCKETS);
    void *socket = zmq_socket(w->ctx, ZMQ_DEALER);
    assert_non_null(socket);
    int linger = 0;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(socket, endpoint), 0);
    w->sockets[w->socket_count++] = socket;
    return socket;
}

static int
s_index(s_world_t *w, void *socket)
{
    for (size_t i = 0; i < w->socket_count; i++)
        if (w->sockets[i] == socket)
            return (int)i;
    fail_msg("unknown socket");
    return -1;
}

/* ---- sending ---- */

static void
s_send(s_world_t *w, void *socket, const tq_msg_t *msg, const void *payload,
       size_t size)
{
    bool has = tq_proto_has_payload(msg->command);
    zmq_msg_t frame;
    if (has) {
        assert_int_equal(zmq_msg_init_size(&frame, size), 0);
        if (size)
            memcpy(zmq_msg_data(&frame), payload, size);
    }
    assert_int_equal(
        tq_wire_send_msg(socket, NULL, msg, &w->buf, has ? &frame : NULL, 0),
        TQ_OK);
    if (has)
        zmq_msg_close(&frame);
}

static void
s_ping(s_world_t *w, void *socket)
{
    tq_msg_t msg = {.command = TQ_CMD_PING};
    s_send(w, socket, &msg, NULL, 0);
}

/* A SUBMIT of id to queue "q", task "t", with features. */
static tq_msg_t
s_submit_msg(const char *id, uint32_t features)
{
    tq_msg_t msg = {.command = TQ_CMD_SUBMIT,
                    .id = tq_str(id),
                    .task = tq_str("t"),
                    .queue = tq_str("q"),
                    .features = features};
    return msg;
}

/* Adds SUBMIT id to batch. */
static void
s_add_submit(tq_batch_t *batch, const char *id, uint32_t features)
{
    tq_msg_t msg = s_submit_msg(id, features);
    assert_int_equal(tq_batch_add(batch, &msg, s_args, sizeof s_args, true),
                     TQ_OK);
}

/* Sends batch as one BATCH (it must hold two or more). */
static void
s_send_batch(void *socket, tq_batch_t *batch)
{
    assert_true(tq_batch_count(batch) >= 2);
    assert_int_equal(tq_wire_send_batch(socket, NULL, batch, 0), TQ_OK);
}

/* ---- receiving ---- */

static void
s_keep(s_world_t *w, int i, const tq_msg_t *msg, const void *payload,
       size_t size, int batch)
{
    assert_true(w->in_count[i] < S_MAX_IN);
    s_in_t *in = &w->in[i][w->in_count[i]++];
    memset(in, 0, sizeof *in);
    in->command = msg->command;
    tq_str_copy(in->id, sizeof in->id, msg->id);
    in->code = msg->code;
    in->features = msg->features;
    in->dropped = msg->dropped;
    in->payload_size = size;
    in->batch = batch;
    if (msg->command == TQ_CMD_STATUS_REPLY) {
        in->payload = malloc(size + 1);
        assert_non_null(in->payload);
        memcpy(in->payload, payload, size);
    }
}

/* Receives one ZeroMQ message on socket within timeout_ms into the
   socket's list (a BATCH as its sub-messages). False if none came. */
static bool
s_pull_within(s_world_t *w, void *socket, int timeout_ms)
{
    int i = s_index(w, socket);
    zmq_pollitem_t item = {socket, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) != 1)
        return false;
    tq_frames_t f;
    tq_frames_init(&f);
    assert_int_equal(tq_wire_recv(socket, &f, false, 0), TQ_OK);
    static tq_msg_t msg, sub;
    const char *why = NULL;
    if (tq_wire_decode(&f, &msg, &why) != TQ_OK)
        fail_msg("the broker sent a malformed message: %s", why);
    if (msg.command != TQ_CMD_BATCH) {
        s_keep(w, i, &msg, zmq_msg_data(&f.payload), zmq_msg_size(&f.payload),
               0);
        tq_frames_close(&f);
        return true;
    }
    int batch = ++w->batches[i];
    tq_batch_reader_t r;
    tq_batch_reader_init(&r, &msg, zmq_msg_data(&f.payload),
                         zmq_msg_size(&f.payload));
    uint32_t n = 0;
    for (;;) {
        const void *payload;
        size_t size;
        bool has;
        int rc = tq_batch_next(&r, &sub, &payload, &size, &has, &why);
        if (rc == TQ_BATCH_END)
            break;
        if (rc != TQ_OK)
            fail_msg("the broker sent a malformed batch: %s", why);
        s_keep(w, i, &sub, payload, size, batch);
        n++;
    }
    assert_int_equal(n, msg.count);
    assert_true(n >= 2); /* a batch of one goes as the plain message */
    tq_frames_close(&f);
    return true;
}

static bool
s_pull(s_world_t *w, void *socket)
{
    return s_pull_within(w, socket, w->wait_ms);
}

/* Takes the next message received on socket into *in (waiting for it). */
static void
s_next(s_world_t *w, void *socket, s_in_t *in)
{
    int i = s_index(w, socket);
    if (!w->in_count[i] && !s_pull(w, socket))
        fail_msg("nothing received within %d ms", w->wait_ms);
    *in = w->in[i][0];
    memmove(&w->in[i][0], &w->in[i][1],
            (size_t)(w->in_count[i] - 1) * sizeof w->in[i][0]);
    w->in_count[i]--;
}

/* The next message must be command (with id when non-NULL). */
static void
s_expect(s_world_t *w, void *socket, uint8_t command, const char *id,
         s_in_t *in)
{
    s_next(w, socket, in);
    if (in->command != command || (id && strcmp(in->id, id) != 0))
        fail_msg("expected %s %s, got %s %s (code %u)",
                 tq_proto_command_name(command), id ? id : "",
                 tq_proto_command_name(in->command), in->id, in->code);
}

/* STATUS counters[name], asked on socket. A STATUS carries an id of its
   own and is asked again when its answer does not come within 1 s (under
   --max-client-backlog 2 a broker may drop it); answers to earlier ones
   are skipped. */
static uint64_t
s_counter(s_world_t *w, void *socket, const char *name)
{
    static int seq;
    char id[16];
    s_in_t in;
    int i = s_index(w, socket);
    for (int attempt = 0;; attempt++) {
        if (attempt == 30)
            fail_msg("no STATUS_REPLY in %d attempts", attempt);
        snprintf(id, sizeof id, "s%d", ++seq);
        tq_msg_t msg = {.command = TQ_CMD_STATUS, .id = tq_str(id)};
        s_send(w, socket, &msg, NULL, 0);
        bool answered = false;
        while (!answered) {
            if (!w->in_count[i] && !s_pull_within(w, socket, 1000))
                break;
            s_next(w, socket, &in);
            if (in.command != TQ_CMD_STATUS_REPLY)
                fail_msg("expected STATUS_REPLY, got %s %s",
                         tq_proto_command_name(in.command), in.id);
            answered = strcmp(in.id, id) == 0;
            if (!answered)
                free(in.payload);
        }
        if (answered)
            break;
    }
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, (const char *)in.payload,
                                         in.payload_size, &off),
                     MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *counters = tq_harness_map_get(&up.data, "counters");
    assert_non_null(counters);
    const msgpack_object *v = tq_harness_map_get(counters, name);
    if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        fail_msg("STATUS has no counter %s", name);
    uint64_t value = v->via.u64;
    msgpack_unpacked_destroy(&up);
    free(in.payload);
    return value;
}

/* ---- the tests ---- */

/* The broker's PONG on the clients endpoint says it takes BATCH; a lone
   message is answered alone. */
static void
test_pong_feature(void **state)
{
    s_world_t *w = *state;
    void *c = s_dealer(w, w->broker.clients);
    s_ping(w, c);
    s_in_t in;
    s_expect(w, c, TQ_CMD_PONG, NULL, &in);
    assert_int_equal(in.features & TQ_FEATURE_BATCH, TQ_FEATURE_BATCH);
    assert_int_equal(in.batch, 0);
}

/* A BATCH of SUBMITs from a client that did not set TQ_FEATURE_BATCH:
   each one is acknowledged, in order, each alone. */
static void
test_batch_to_old_client(void **state)
{
    s_world_t *w = *state;
    void *c = s_dealer(w, w->broker.clients);
    tq_batch_t batch;
    tq_batch_init(&batch);
    const char *ids[] = {"a1", "a2", "a3", "a4", "a5"};
    for (int i = 0; i < 5; i++)
        s_add_submit(&batch, ids[i], 0);
    s_send_batch(c, &batch);
    s_in_t in;
    for (int i = 0; i < 5; i++) {
        s_expect(w, c, TQ_CMD_SUBMITTED, ids[i], &in);
        assert_int_equal(in.batch, 0);
    }
    assert_int_equal(s_counter(w, c, "batches_in"), 1);
    assert_int_equal(s_counter(w, c, "batched_in"), 5);
    assert_int_equal(s_counter(w, c, "batches_out"), 0);
    assert_int_equal(s_counter(w, c, "submitted"), 5);
    tq_batch_destroy(&batch);
}

/* The same from a client that set it: the five SUBMITTEDs, made in one
   pass, come in one BATCH, in order; the STATUS after it alone. */
static void
test_batch_to_new_client(void **state)
{
    s_world_t *w = *state;
    void *c = s_dealer(w, w->broker.clients);
    tq_batch_t batch;
    tq_batch_init(&batch);
    const char *ids[] = {"b1", "b2", "b3", "b4", "b5"};
    for (int i = 0; i < 5; i++)
        s_add_submit(&batch, ids[i], TQ_FEATURE_BATCH);
    s_send_batch(c, &batch);
    s_in_t in;
    for (int i = 0; i < 5; i++) {
        s_expect(w, c, TQ_CMD_SUBMITTED, ids[i], &in);
        assert_int_equal(in.batch, 1);
    }
    assert_int_equal(s_counter(w, c, "batches_out"), 1);
    assert_int_equal(s_counter(w, c, "batched_out"), 5);
    /* lone SUBMITs of an opted-in client: one per pass at least, so
       whether they come together or alone is the broker's to choose; all
       are answered, in order */
    tq_msg_t msg = s_submit_msg("b6", TQ_FEATURE_BATCH);
    s_send(w, c, &msg, s_args, sizeof s_args);
    msg = s_submit_msg("b7", TQ_FEATURE_BATCH);
    s_send(w, c, &msg, s_args, sizeof s_args);
    s_expect(w, c, TQ_CMD_SUBMITTED, "b6", &in);
    s_expect(w, c, TQ_CMD_SUBMITTED, "b7", &in);
    assert_int_equal(s_counter(w, c, "submitted"), 7);
    tq_batch_destroy(&batch);
}

/* Appends to batch a raw sub-message: header bytes and payload bytes (or
   none: nil). */
static void
s_add_raw(tq_batch_t *batch, const void *header, size_t header_size,
          const void *payload, size_t size, bool has)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, &batch->body, msgpack_sbuffer_write);
    msgpack_pack_bin(&pk, header_size);
    msgpack_pack_bin_body(&pk, header, header_size);
    if (has) {
        msgpack_pack_bin(&pk, size);
        msgpack_pack_bin_body(&pk, payload, size);
    } else
        msgpack_pack_nil(&pk);
    batch->count++;
}

/* Malformed sub-messages get the ERROR a lone one would get, naming the
   id when it decoded; the others in the batch are handled. */
static void
test_bad_sub_messages(void **state)
{
    s_world_t *w = *state;
    void *c = s_dealer(w, w->broker.clients);
    uint64_t malformed = s_counter(w, c, "malformed");
    uint64_t errors = s_counter(w, c, "errors");
    tq_batch_t batch;
    tq_batch_init(&batch);
    s_add_submit(&batch, "m1", 0);
    /* priority out of range: refused naming its id */
    const uint8_t bad_priority[] = {0x97, 0x01, 0x01, 0xa2, 'm',  '2',
                                    0xa1, 't',  0xa1, 'q',  0x0a, 0x00};
    s_add_raw(&batch, bad_priority, sizeof bad_priority, s_args, sizeof s_args,
              true);
    s_add_submit(&batch, "m3", 0);
    /* a SUBMIT without its payload */
    msgpack_sbuffer h;
    msgpack_sbuffer_init(&h);
    tq_msg_t msg = s_submit_msg("m4", 0);
    assert_int_equal(tq_proto_encode(&msg, &h, NULL), TQ_OK);
    s_add_raw(&batch, h.data, h.size, NULL, 0, false);
    /* arguments that are not an array: the SUBMIT handler's refusal */
    s_add_raw(&batch, h.data, h.size, "\x01", 1, true);
    /* a command only the broker sends */
    msg = (tq_msg_t){.command = TQ_CMD_SUBMITTED, .id = tq_str("m6")};
    assert_int_equal(tq_proto_encode(&msg, &h, NULL), TQ_OK);
    s_add_raw(&batch, h.data, h.size, NULL, 0, false);
    /* a BATCH inside */
    msg = (tq_msg_t){.command = TQ_CMD_BATCH, .count = 1};
    assert_int_equal(tq_proto_encode(&msg, &h, NULL), TQ_OK);
    s_add_raw(&batch, h.data, h.size, "\xc0", 1, true);
    s_add_submit(&batch, "m8", 0);
    s_send_batch(c, &batch);

    s_in_t in;
    s_expect(w, c, TQ_CMD_SUBMITTED, "m1", &in);
    s_expect(w, c, TQ_CMD_ERROR, "m2", &in);
    assert_int_equal(in.code, TQ_EPROTO);
    s_expect(w, c, TQ_CMD_SUBMITTED, "m3", &in);
    s_expect(w, c, TQ_CMD_ERROR, "m4", &in);
    assert_int_equal(in.code, TQ_EPROTO);
    s_expect(w, c, TQ_CMD_ERROR, "m4", &in);
    assert_int_equal(in.code, TQ_EPROTO);
    s_expect(w, c, TQ_CMD_ERROR, "m6", &in);
    assert_int_equal(in.code, TQ_EPROTO);
    s_expect(w, c, TQ_CMD_ERROR, "", &in);
    assert_int_equal(in.code, TQ_EPROTO);
    s_expect(w, c, TQ_CMD_SUBMITTED, "m8", &in);
    /* as lone messages count: four malformed, one not for this endpoint */
    assert_int_equal(s_counter(w, c, "malformed"), malformed + 4);
    assert_int_equal(s_counter(w, c, "errors"), errors + 1);
    assert_int_equal(s_counter(w, c, "batched_in"), 8);
    msgpack_sbuffer_destroy(&h);
    tq_batch_destroy(&batch);
}

/* A batch whose framing is broken is refused whole: one ERROR without an
   id, none of its sub-messages handled. */
static void
test_bad_framing(void **state)
{
    s_world_t *w = *state;
    void *c = s_dealer(w, w->broker.clients);
    tq_batch_t batch;
    tq_batch_init(&batch);
    s_add_submit(&batch, "f1", 0);
    s_add_submit(&batch, "f2", 0);
    batch.count = 3; /* one more than it holds */
    assert_int_equal(tq_wire_send_batch(c, NULL, &batch, 0), TQ_OK);
    s_add_submit(&batch, "f3", 0);
    s_add_submit(&batch, "f4", 0);
    msgpack_sbuffer_write(&batch.body, "\x01", 1); /* trailing byte */
    assert_int_equal(tq_wire_send_batch(c, NULL, &batch, 0), TQ_OK);
    s_ping(w, c);
    s_in_t in;
    s_expect(w, c, TQ_CMD_ERROR, "", &in);
    assert_int_equal(in.code, TQ_EPROTO);
    s_expect(w, c, TQ_CMD_ERROR, "", &in);
    assert_int_equal(in.code, TQ_EPROTO);
    s_expect(w, c, TQ_CMD_PONG, NULL, &in);
    assert_int_equal(s_counter(w, c, "submitted"), 0);
    assert_int_equal(s_counter(w, c, "batches_in"), 2);
    tq_batch_destroy(&batch);
}

/* A worker child of the test: READY with credit on queue "q" and
   features. */
static void *
s_child_with(s_world_t *w, uint32_t credit, uint32_t features)
{
    void *child = s_dealer(w, w->broker.workers);
    tq_msg_t *msg = calloc(1, sizeof *msg);
    assert_non_null(msg);
    msg->command = TQ_CMD_READY;
    msg->features = features;
    msg->host = tq_str("h");
    msg->pid = 4242;
    msg->ppid = 4241;
    msg->credit = credit;
    msg->queue_count = 1;
    msg->queues[0] = tq_str("q");
    msg->task_count = 1;
    msg->tasks[0] = tq_str("t");
    s_send(w, child, msg, NULL, 0);
    free(msg);
    return child;
}

/* A worker child of the test that announces no feature. */
static void *
s_child(s_world_t *w, uint32_t credit)
{
    return s_child_with(w, credit, 0);
}

static void
s_done(s_world_t *w, void *child, const char *id, const void *value,
       size_t size)
{
    tq_msg_t msg = {.command = TQ_CMD_DONE,
                    .id = tq_str(id),
                    .attempt = 1,
                    .state = TQ_STATE_SUCCESS};
    s_send(w, child, &msg, value, size);
}

/* A DONE of id (attempt 1, SUCCESS, value) added to batch. */
static void
s_add_done(tq_batch_t *batch, const char *id, const void *value, size_t size)
{
    tq_msg_t msg = {.command = TQ_CMD_DONE,
                    .id = tq_str(id),
                    .attempt = 1,
                    .state = TQ_STATE_SUCCESS};
    assert_int_equal(tq_batch_add(batch, &msg, value, size, true), TQ_OK);
}

/* The broker's PONG on the workers endpoint says that it takes BATCH
   from children. A child's BATCH of DONEs (and a PING) is handled as
   the same messages alone: each task final in the BATCH's order (the
   client's RESULTs in that order), the PING answered in its place; the
   credit the DONEs gave back is used in one dispatch pass (the TASKs
   for it in one BATCH to a child that takes them); STATUS counts it as
   a child's batch. */
static void
test_child_batch_of_dones(void **state)
{
    s_world_t *w = *state;
    void *c = s_dealer(w, w->broker.clients);
    void *child = s_child_with(w, 4, TQ_FEATURE_BATCH);
    s_in_t in;
    s_ping(w, child);
    s_expect(w, child, TQ_CMD_PONG, NULL, &in);
    assert_int_equal(in.features & TQ_FEATURE_BATCH, TQ_FEATURE_BATCH);
    const char *ids[] = {"w1", "w2", "w3", "w4", "w5", "w6"};
    for (int i = 0; i < 6; i++) {
        tq_msg_t msg = s_submit_msg(ids[i], 0);
        s_send(w, c, &msg, s_args, sizeof s_args);
    }
    for (int i = 0; i < 6; i++)
        s_expect(w, c, TQ_CMD_SUBMITTED, ids[i], &in);
    for (int i = 0; i < 4; i++)
        s_expect(w, child, TQ_CMD_TASK, ids[i], &in);
    const uint8_t value[] = {0xa2, 'o', 'k'};
    tq_batch_t batch;
    tq_batch_init(&batch);
    s_add_done(&batch, "w2", value, sizeof value);
    s_add_done(&batch, "w1", value, sizeof value);
    tq_msg_t ping = {.command = TQ_CMD_PING};
    assert_int_equal(tq_batch_add(&batch, &ping, NULL, 0, false), TQ_OK);
    s_add_done(&batch, "w3", value, sizeof value);
    s_send_batch(child, &batch);
    /* the PONG in its place, then the TASKs for the three credits back */
    s_expect(w, child, TQ_CMD_PONG, NULL, &in);
    s_expect(w, child, TQ_CMD_TASK, "w5", &in);
    int first = in.batch;
    s_expect(w, child, TQ_CMD_TASK, "w6", &in);
    assert_true(first > 0);
    assert_int_equal(in.batch, first);
    const char *order[] = {"w2", "w1", "w3"};
    for (int k = 0; k < 3; k++) {
        s_expect(w, c, TQ_CMD_RESULT, order[k], &in);
        assert_int_equal(in.payload_size, sizeof value);
    }
    assert_int_equal(s_counter(w, c, "completed"), 3);
    assert_int_equal(s_counter(w, c, "batches_in"), 1);
    assert_int_equal(s_counter(w, c, "batched_in"), 4);
    assert_int_equal(s_counter(w, c, "child_batches_in"), 1);
    assert_int_equal(s_counter(w, c, "child_batched_in"), 4);
    assert_int_equal(s_counter(w, c, "duplicates"), 0);
    tq_batch_destroy(&batch);
}

/* Bad BATCHes from children: one whose framing is broken gets one ERROR
   and nothing of it is handled; a sub-message a child may not send (a
   SUBMIT, a HEARTBEAT) or a malformed one gets the ERROR it would get
   alone, the others are handled; a BATCH from a peer that never
   announced itself is refused whole (TQ_ESTATE), none of it handled. */
static void
test_child_bad_batches(void **state)
{
    s_world_t *w = *state;
    void *c = s_dealer(w, w->broker.clients);
    void *child = s_child_with(w, 8, TQ_FEATURE_BATCH);
    s_in_t in;
    const char *ids[] = {"x1", "x2", "x3"};
    for (int i = 0; i < 3; i++) {
        tq_msg_t msg = s_submit_msg(ids[i], 0);
        s_send(w, c, &msg, s_args, sizeof s_args);
    }
    for (int i = 0; i < 3; i++)
        s_expect(w, c, TQ_CMD_SUBMITTED, ids[i], &in);
    for (int i = 0; i < 3; i++)
        s_expect(w, child, TQ_CMD_TASK, ids[i], &in);
    uint64_t malformed = s_counter(w, c, "malformed");
    uint64_t errors = s_counter(w, c, "errors");
    const uint8_t value[] = {0xc3};
    tq_batch_t batch;
    tq_batch_init(&batch);

    /* broken framing: it says three, holds two */
    s_add_done(&batch, "x1", value, sizeof value);
    s_add_done(&batch, "x2", value, sizeof value);
    batch.count = 3;
    assert_int_equal(tq_wire_send_batch(child, NULL, &batch, 0), TQ_OK);
    s_expect(w, child, TQ_CMD_ERROR, "", &in);
    assert_int_equal(in.code, TQ_EPROTO);

    /* x1, a SUBMIT, a HEARTBEAT, x2 without its value, then x2 */
    s_add_done(&batch, "x1", value, sizeof value);
    tq_msg_t msg = s_submit_msg("s1", 0);
    assert_int_equal(tq_batch_add(&batch, &msg, s_args, sizeof s_args, true),
                     TQ_OK);
    msg = (tq_msg_t){
        .command = TQ_CMD_HEARTBEAT, .host = tq_str("h"), .pid = 4241};
    assert_int_equal(tq_batch_add(&batch, &msg, NULL, 0, false), TQ_OK);
    msgpack_sbuffer h;
    msgpack_sbuffer_init(&h);
    msg = (tq_msg_t){.command = TQ_CMD_DONE,
                     .id = tq_str("x2"),
                     .attempt = 1,
                     .state = TQ_STATE_SUCCESS};
    assert_int_equal(tq_proto_encode(&msg, &h, NULL), TQ_OK);
    s_add_raw(&batch, h.data, h.size, NULL, 0, false);
    s_add_done(&batch, "x2", value, sizeof value);
    s_send_batch(child, &batch);
    s_expect(w, child, TQ_CMD_ERROR, "s1", &in);
    assert_int_equal(in.code, TQ_EPROTO);
    s_expect(w, child, TQ_CMD_ERROR, "", &in);
    assert_int_equal(in.code, TQ_ESTATE);
    s_expect(w, child, TQ_CMD_ERROR, "x2", &in);
    assert_int_equal(in.code, TQ_EPROTO);
    s_expect(w, c, TQ_CMD_RESULT, "x1", &in);
    s_expect(w, c, TQ_CMD_RESULT, "x2", &in);

    /* from a peer that never sent READY: refused whole, x3 not done */
    void *stranger = s_dealer(w, w->broker.workers);
    s_add_done(&batch, "x3", value, sizeof value);
    tq_msg_t ping = {.command = TQ_CMD_PING};
    assert_int_equal(tq_batch_add(&batch, &ping, NULL, 0, false), TQ_OK);
    s_send_batch(stranger, &batch);
    s_expect(w, stranger, TQ_CMD_ERROR, "", &in);
    assert_int_equal(in.code, TQ_ESTATE);
    /* the PING in it was not answered: the next message is this PONG's */
    s_ping(w, stranger);
    s_expect(w, stranger, TQ_CMD_PONG, NULL, &in);
    /* x3 is still the child's to finish */
    s_done(w, child, "x3", value, sizeof value);
    s_expect(w, c, TQ_CMD_RESULT, "x3", &in);

    assert_int_equal(s_counter(w, c, "completed"), 3);
    assert_int_equal(s_counter(w, c, "duplicates"), 0);
    /* as lone messages count: the framing and x2's missing value
       malformed; the SUBMIT, the HEARTBEAT and the stranger's BATCH
       errors */
    assert_int_equal(s_counter(w, c, "malformed"), malformed + 2);
    assert_int_equal(s_counter(w, c, "errors"), errors + 3);
    assert_int_equal(s_counter(w, c, "child_batches_in"), 2);
    msgpack_sbuffer_destroy(&h);
    tq_batch_destroy(&batch);
}

/* Results reach an opted-in client in the order the child sent its
   DONEs, small ones batched or alone, one over 4096 bytes always alone. */
static void
test_results_in_order(void **state)
{
    s_world_t *w = *state;
    void *c = s_dealer(w, w->broker.clients);
    void *child = s_child(w, 8);
    tq_batch_t batch;
    tq_batch_init(&batch);
    const char *ids[] = {"r1", "r2", "r3", "r4", "r5", "r6"};
    for (int i = 0; i < 6; i++)
        s_add_submit(&batch, ids[i], TQ_FEATURE_BATCH);
    s_send_batch(c, &batch);
    s_in_t in;
    for (int i = 0; i < 6; i++)
        s_expect(w, c, TQ_CMD_SUBMITTED, ids[i], &in);
    /* the child gets the six tasks (its credit is 8), in order */
    for (int i = 0; i < 6; i++)
        s_expect(w, child, TQ_CMD_TASK, ids[i], &in);
    /* r3's value is over TQ_BATCH_MAX_PAYLOAD: a bin of 5000 bytes */
    static uint8_t big[5003];
    big[0] = 0xc5;
    big[1] = 5000 >> 8;
    big[2] = 5000 & 0xff;
    const uint8_t small[] = {0xa2, 'o', 'k'};
    const int order[] = {1, 0, 2, 5, 3, 4}; /* DONEs out of dispatch order */
    for (int k = 0; k < 6; k++) {
        int i = order[k];
        if (i == 2)
            s_done(w, child, ids[i], big, sizeof big);
        else
            s_done(w, child, ids[i], small, sizeof small);
    }
    for (int k = 0; k < 6; k++) {
        int i = order[k];
        s_expect(w, c, TQ_CMD_RESULT, ids[i], &in);
        if (i == 2) {
            assert_int_equal(in.payload_size, sizeof big);
            assert_int_equal(in.batch, 0);
        } else
            assert_int_equal(in.payload_size, sizeof small);
    }
    assert_int_equal(s_counter(w, c, "completed"), 6);
    assert_int_equal(s_counter(w, c, "dropped"), 0);
    tq_batch_destroy(&batch);
}

/* Backlog 2 (libzmq's pipe to the client holds two messages), delivered
   results kept in a 100 kB window. */
static int
s_setup_backlog(void **state)
{
    const char *extra[] = {"--max-client-backlog", "2", "--result-window",
                           "100000", NULL};
    return s_setup_with(state, extra);
}

/* Counters[name] on socket, polled until it is value (bounded). */
static void
s_wait_counter(s_world_t *w, void *socket, const char *name, uint64_t value)
{
    int64_t deadline = tq_harness_now_ms() + 6 * w->wait_ms;
    uint64_t last = 0;
    while (tq_harness_now_ms() < deadline) {
        last = s_counter(w, socket, name);
        if (last == value)
            return;
        tq_harness_sleep_ms(10);
    }
    fail_msg("counter %s stayed %llu, expected %llu", name,
             (unsigned long long)last, (unsigned long long)value);
}

/* A client that takes BATCH and does not read: BATCHes that libzmq
   refuses at its backlog count every message in them as dropped (the
   PONG's count with what did arrive makes up everything sent), and the
   results in them are not taken for delivered: asked again, every one is
   still there although the window of delivered results is small. */
static void
test_dropped_batches(void **state)
{
    s_world_t *w = *state;
    /* the client reads nothing for now and holds little itself */
    void *a = zmq_socket(w->ctx, ZMQ_DEALER);
    int one = 1, linger = 0, small = 4096;
    zmq_setsockopt(a, ZMQ_RCVHWM, &one, sizeof one);
    zmq_setsockopt(a, ZMQ_RCVBUF, &small, sizeof small);
    zmq_setsockopt(a, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(a, w->broker.clients), 0);
    w->sockets[w->socket_count++] = a;
    void *b = s_dealer(w, w->broker.clients);
    void *child = s_child(w, 1000);
    enum { N = 2000, VALUE = 3000, CHUNK = 100 };
    static uint8_t value[VALUE];
    value[0] = 0xc5; /* bin 16 */
    value[1] = (VALUE - 3) >> 8;
    value[2] = (VALUE - 3) & 0xff;
    char id[32];
    tq_batch_t batch;
    tq_batch_init(&batch);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "d%d", i);
        s_add_submit(&batch, id, TQ_FEATURE_BATCH);
        if (tq_batch_count(&batch) == CHUNK)
            s_send_batch(a, &batch);
    }
    s_in_t in;
    for (int i = 0; i < N; i++) {
        s_expect(w, child, TQ_CMD_TASK, NULL, &in);
        s_done(w, child, in.id, value, sizeof value);
    }
    s_wait_counter(w, b, "completed", N);
    uint64_t dropped = s_counter(w, b, "dropped");
    uint64_t batches = s_counter(w, b, "batches_out");
    printf("  %llu of %d messages dropped; %llu batches sent\n",
           (unsigned long long)dropped, 2 * N, (unsigned long long)batches);
    assert_true(dropped > 0);
    assert_true(batches > 0);

    /* now it reads, up to a PONG (pinging again while its PONGs are
       dropped): what arrived and what was dropped make up the N
       SUBMITTEDs, N RESULTs and the PONGs before it */
    static bool got[N];
    uint64_t received = 0;
    tq_msg_t ping = {.command = TQ_CMD_PING};
    int ai = s_index(w, a);
    s_send(w, a, &ping, NULL, 0);
    int pings = 1;
    for (;;) {
        if (!w->in_count[ai] && !s_pull_within(w, a, 1000)) {
            /* its PONG was dropped: it asks again, as a client does */
            assert_true(pings < 30);
            s_send(w, a, &ping, NULL, 0);
            pings++;
            continue;
        }
        s_next(w, a, &in);
        if (in.command == TQ_CMD_PONG)
            break;
        received++;
        if (in.command == TQ_CMD_RESULT) {
            int k = atoi(in.id + 1);
            assert_false(got[k]);
            got[k] = true;
        }
    }
    printf("  %llu received, %llu dropped for it, %d PINGs\n",
           (unsigned long long)received, (unsigned long long)in.dropped, pings);
    assert_true(received + in.dropped >= 2 * N);
    assert_true(received + in.dropped <= 2 * N + (uint64_t)pings - 1);

    /* asked again, every result is there: none was forgotten as
       delivered (a GET's answer may be dropped too: asked again) */
    for (int round = 0; round < 1000; round++) {
        int missing = 0;
        for (int i = 0; i < N && missing < 32; i++)
            if (!got[i]) {
                snprintf(id, sizeof id, "d%d", i);
                tq_msg_t get = {
                    .command = TQ_CMD_GET, .id = tq_str(id), .wait = true};
                s_send(w, a, &get, NULL, 0);
                missing++;
            }
        if (!missing)
            break;
        /* the PONG after them says they were answered or dropped */
        s_send(w, a, &ping, NULL, 0);
        for (;;) {
            if (!w->in_count[ai] && !s_pull_within(w, a, 1000))
                break; /* the PONG itself was dropped: the next round */
            s_next(w, a, &in);
            if (in.command == TQ_CMD_PONG)
                break;
            if (in.command == TQ_CMD_UNKNOWN)
                fail_msg("result %s was forgotten", in.id);
            assert_int_equal(in.command, TQ_CMD_RESULT);
            got[atoi(in.id + 1)] = true;
        }
    }
    for (int i = 0; i < N; i++)
        if (!got[i])
            fail_msg("result d%d never arrived", i);
    tq_batch_destroy(&batch);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pong_feature, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_batch_to_old_client, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_batch_to_new_client, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_bad_sub_messages, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_bad_framing, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_results_in_order, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_dropped_batches, s_setup_backlog,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_child_batch_of_dones, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_child_bad_batches, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
