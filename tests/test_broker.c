/* test_broker.c - the broker at the protocol level, without the client
   library: raw DEALERs speak TQP/1 (tq_proto, tq_wire) to a real tq-broker
   as clients, worker children and supervisors, to check data queues,
   limits, cancel and KILL, leases and LOST, retries, countdowns, purge,
   host liveness, the STATUS body, binary ids and BATCH to children
   (PROTOCOL.md sections 3, 5 and 8). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
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

#define S_MAX_SOCKETS 24
#define S_MAX_SUPS 4
#define S_MAX_PAYLOAD 65536 /* largest payload a test receives, bytes */

/* Arguments of every submitted task: [1, "x"]. */
static const uint8_t s_args[] = {0x92, 0x01, 0xa1, 'x'};
/* A task's value: "ok". */
static const uint8_t s_value[] = {0xa2, 'o', 'k'};
/* A data-queue item: {"a": [1, 2, "x"], "b": true}. */
static const uint8_t s_item[] = {0x82, 0xa1, 'a',  0x93, 0x01, 0x02,
                                 0xa1, 'x',  0xa1, 'b',  0xc3};

/* One received message, copied out of its frames. */
typedef struct {
    uint8_t command;
    char id[TQ_PROTO_MAX_ID + 1];
    char task[TQ_PROTO_MAX_NAME + 1];
    char host[TQ_PROTO_MAX_NAME + 1];
    char error[TQ_PROTO_MAX_ERROR + 1];
    uint32_t state, code, attempt, time_limit_ms;
    uint64_t pid;
    uint64_t dropped; /* PONG */
    bool id_binary; /* the id came as a 16-byte bin */
    size_t header_size; /* bytes of the header frame */
    uint8_t payload[S_MAX_PAYLOAD];
    size_t payload_size;
    int64_t at_ms; /* monotonic ms when it was received */
} s_in_t;

/* A supervisor socket that the receive loop keeps alive with HEARTBEAT. */
typedef struct {
    void *socket;
    char host[64];
    uint64_t pid;
    int64_t last_ms; /* when it last sent HEARTBEAT */
} s_sup_t;

/* One test's world: its broker, its sockets. */
typedef struct {
    tq_harness_broker_t broker;
    void *ctx;
    void *sockets[S_MAX_SOCKETS];
    size_t socket_count;
    s_sup_t sups[S_MAX_SUPS];
    size_t sup_count;
    msgpack_sbuffer buf; /* header encoding, reused */
    int wait_ms; /* bound on an answer that must come */
    bool wrapped; /* the broker runs under TQ_TEST_BROKER_WRAPPER */
    char dir[256]; /* s_start_logged: a directory for the log, or "" */
    char log[320]; /* s_start_logged: the broker's stderr, or "" */
} s_world_t;

/* A decoded msgpack map (STATUS body, REPLY body); owns a copy of the
   bytes because unpacked strings point into them. */
typedef struct {
    msgpack_unpacked unpacked;
    const msgpack_object *root;
    uint8_t *data;
} s_map_t;

/* ---- the world ---- */

static int
s_setup(void **state)
{
    tq_harness_init();
    s_world_t *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    w->ctx = zmq_ctx_new();
    if (!w->ctx) {
        free(w);
        return -1;
    }
    msgpack_sbuffer_init(&w->buf);
    const char *wrapper = getenv("TQ_TEST_BROKER_WRAPPER");
    w->wrapped = wrapper && *wrapper;
    w->wait_ms = w->wrapped ? 20000 : 5000;
    *state = w;
    return 0;
}

static int
s_teardown(void **state)
{
    s_world_t *w = *state;
    for (size_t i = 0; i < w->socket_count; i++)
        zmq_close(w->sockets[i]);
    zmq_ctx_term(w->ctx);
    msgpack_sbuffer_destroy(&w->buf);
    int rc = 0;
    if (w->broker.pid > 0) {
        /* a clean exit on SIGTERM; under valgrind --error-exitcode=9 a
           leak or a bad access shows here */
        int status = tq_harness_broker_stop(&w->broker);
        if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(
                stderr, "broker did not exit cleanly: status %d%s\n", status,
                status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 9
                    ? " (valgrind found errors)"
                    : "");
            rc = -1;
        }
    }
    tq_harness_kill_all();
    if (w->dir[0])
        tq_harness_rmtree(w->dir);
    free(w);
    return rc;
}

/* Starts the test's broker in memory with extra options (may be NULL). */
static void
s_start(s_world_t *w, const char *const extra[])
{
    const char *argv[32] = {"--no-persist"};
    size_t argc = 1;
    for (size_t i = 0; extra && extra[i] && argc < 31; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    assert_int_equal(tq_harness_broker_start(&w->broker, argv), 0);
}

/* Starts the test's broker as s_start, its stderr also copied to w->log
   for s_log_line. */
static void
s_start_logged(s_world_t *w, const char *const extra[])
{
    assert_int_equal(tq_harness_tempdir(w->dir, sizeof w->dir, "broker"), 0);
    snprintf(w->log, sizeof w->log, "%s/broker.log", w->dir);
    const char *argv[32] = {"--no-persist"};
    size_t argc = 1;
    for (size_t i = 0; extra && extra[i] && argc < 31; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    assert_int_equal(tq_harness_broker_start_on(&w->broker, "tcp://127.0.0.1:*",
                                                "tcp://127.0.0.1:*", argv,
                                                w->log),
                     0);
}

/* Waits until the broker's log (s_start_logged) has n lines containing
   text (the broker writes it when it acts, so this waits for the event,
   bounded by w->wait_ms), and copies the n-th (1-based) into line. */
static void
s_log_line(s_world_t *w, const char *text, int n, char *line, size_t size)
{
    int64_t deadline = tq_harness_now_ms() + w->wait_ms;
    for (;;) {
        FILE *f = fopen(w->log, "r");
        char buf[1024];
        int seen = 0;
        while (f && fgets(buf, sizeof buf, f))
            if (strstr(buf, text) && ++seen == n) {
                buf[strcspn(buf, "\n")] = '\0';
                snprintf(line, size, "%s", buf);
                fclose(f);
                return;
            }
        if (f)
            fclose(f);
        if (tq_harness_now_ms() >= deadline)
            fail_msg("the broker's log has %d line(s) with \"%s\", expected "
                     "%d",
                     seen, text, n);
        tq_harness_sleep_ms(10);
    }
}

/* A DEALER connected to endpoint, closed by the teardown. */
static void *
s_dealer(s_world_t *w, const char *endpoint)
{
    assert_true(w->socket_count < S_MAX_SOCKETS);
    void *socket = zmq_socket(w->ctx, ZMQ_DEALER);
    assert_non_null(socket);
    int linger = 0, timeout = 3000;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(socket, ZMQ_SNDTIMEO, &timeout, sizeof timeout);
    assert_int_equal(zmq_connect(socket, endpoint), 0);
    w->sockets[w->socket_count++] = socket;
    return socket;
}

/* ---- sending ---- */

static tq_msg_t
s_msg(uint8_t command)
{
    tq_msg_t msg;
    memset(&msg, 0, sizeof msg);
    msg.command = command;
    return msg;
}

/* Sends msg with payload bytes (only for a command that has a payload
   frame; it is sent even when empty). */
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
    int rc =
        tq_wire_send_msg(socket, NULL, msg, &w->buf, has ? &frame : NULL, 0);
    if (has)
        zmq_msg_close(&frame);
    if (rc != TQ_OK)
        fail_msg("send %s: rc %d (%s)", tq_proto_command_name(msg->command), rc,
                 zmq_strerror(zmq_errno()));
}

static void
s_submit(s_world_t *w, void *socket, const char *id, const char *queue,
         uint32_t retries, uint32_t backoff_ms, uint32_t delay_ms)
{
    tq_msg_t msg = s_msg(TQ_CMD_SUBMIT);
    msg.id = tq_str(id);
    msg.task = tq_str("t");
    msg.queue = tq_str(queue);
    msg.retries = retries;
    msg.backoff_ms = backoff_ms;
    msg.delay_ms = delay_ms;
    s_send(w, socket, &msg, s_args, sizeof s_args);
}

/* A command whose only field is an id (CANCEL, RETRY, UNKNOWN...). */
static void
s_send_id(s_world_t *w, void *socket, uint8_t command, const char *id)
{
    tq_msg_t msg = s_msg(command);
    msg.id = tq_str(id);
    s_send(w, socket, &msg, NULL, 0);
}

static void
s_get(s_world_t *w, void *socket, const char *id, bool wait)
{
    tq_msg_t msg = s_msg(TQ_CMD_GET);
    msg.id = tq_str(id);
    msg.wait = wait;
    s_send(w, socket, &msg, NULL, 0);
}

/* READY from a raw worker child serving one queue and the task "t", with
   credit (prefetch). */
static void
s_ready_features(s_world_t *w, void *socket, const char *host, uint64_t pid,
                 uint64_t ppid, const char *queue, uint32_t credit,
                 uint32_t features)
{
    tq_msg_t *msg = calloc(1, sizeof *msg);
    assert_non_null(msg);
    msg->command = TQ_CMD_READY;
    msg->host = tq_str(host);
    msg->pid = pid;
    msg->ppid = ppid;
    msg->credit = credit;
    /* "q1+q2" serves both */
    const char *plus = strchr(queue, '+');
    char first[64];
    snprintf(first, sizeof first, "%.*s",
             plus ? (int)(plus - queue) : (int)strlen(queue), queue);
    msg->queue_count = plus ? 2 : 1;
    msg->queues[0] = tq_str(first);
    if (plus)
        msg->queues[1] = tq_str(plus + 1);
    msg->task_count = 1;
    msg->tasks[0] = tq_str("t");
    msg->features = features;
    s_send(w, socket, msg, NULL, 0);
    free(msg);
}

/* READY of a child of this version (it answers REVOKE). */
static void
s_ready_credit(s_world_t *w, void *socket, const char *host, uint64_t pid,
               uint64_t ppid, const char *queue, uint32_t credit)
{
    s_ready_features(w, socket, host, pid, ppid, queue, credit,
                     TQ_FEATURE_RETURNS);
}

/* READY with credit 1. */
static void
s_ready(s_world_t *w, void *socket, const char *host, uint64_t pid,
        uint64_t ppid, const char *queue)
{
    s_ready_credit(w, socket, host, pid, ppid, queue, 1);
}

static void
s_heartbeat(s_world_t *w, void *socket, const char *host, uint64_t pid)
{
    tq_msg_t msg = s_msg(TQ_CMD_HEARTBEAT);
    msg.host = tq_str(host);
    msg.pid = pid;
    s_send(w, socket, &msg, NULL, 0);
}

static void
s_done(s_world_t *w, void *socket, const char *id, uint32_t attempt,
       uint32_t state, uint32_t code, const char *error, uint64_t rss_kb)
{
    tq_msg_t msg = s_msg(TQ_CMD_DONE);
    msg.id = tq_str(id);
    msg.attempt = attempt;
    msg.state = state;
    msg.code = code;
    msg.error = tq_str(error);
    msg.rss_kb = rss_kb;
    bool ok = state == TQ_STATE_SUCCESS;
    s_send(w, socket, &msg, ok ? s_value : NULL, ok ? sizeof s_value : 0);
}

static void
s_lost(s_world_t *w, void *socket, uint64_t pid, uint32_t code,
       const char *error)
{
    tq_msg_t msg = s_msg(TQ_CMD_LOST);
    msg.pid = pid;
    msg.code = code;
    msg.error = tq_str(error);
    s_send(w, socket, &msg, NULL, 0);
}

/* LOST naming the task the child ran (attempt 0: none). */
static void
s_lost_task(s_world_t *w, void *socket, uint64_t pid, const char *id,
            uint32_t attempt)
{
    tq_msg_t msg = s_msg(TQ_CMD_LOST);
    msg.pid = pid;
    msg.code = TQ_ELOST;
    msg.error = tq_str("killed by SIGSEGV");
    msg.id = tq_str(id);
    msg.attempt = attempt;
    s_send(w, socket, &msg, NULL, 0);
}

static void
s_qput(s_world_t *w, void *socket, const char *id, const char *queue,
       uint32_t maxsize, const void *item, size_t size)
{
    tq_msg_t msg = s_msg(TQ_CMD_QPUT);
    msg.id = tq_str(id);
    msg.queue = tq_str(queue);
    msg.maxsize = maxsize;
    s_send(w, socket, &msg, item, size);
}

static void
s_qget(s_world_t *w, void *socket, const char *id, const char *queue,
       uint32_t wait_ms)
{
    tq_msg_t msg = s_msg(TQ_CMD_QGET);
    msg.id = tq_str(id);
    msg.queue = tq_str(queue);
    msg.time_limit_ms = wait_ms;
    s_send(w, socket, &msg, NULL, 0);
}

/* ---- receiving ---- */

/* Sends HEARTBEAT for every registered supervisor whose second is up, as
   a real supervisor does, so that no test outlives its hosts' liveness. */
static void
s_pump(s_world_t *w)
{
    int64_t now = tq_harness_now_ms();
    for (size_t i = 0; i < w->sup_count; i++)
        if (now - w->sups[i].last_ms >= 1000) {
            s_heartbeat(w, w->sups[i].socket, w->sups[i].host, w->sups[i].pid);
            w->sups[i].last_ms = now;
        }
}

static bool
s_is_sup(s_world_t *w, void *socket)
{
    for (size_t i = 0; i < w->sup_count; i++)
        if (w->sups[i].socket == socket)
            return true;
    return false;
}

/* Keeps socket's supervisor alive from now on (see s_pump). */
static void
s_sup_add(s_world_t *w, void *socket, const char *host, uint64_t pid)
{
    assert_true(w->sup_count < S_MAX_SUPS);
    s_sup_t *sup = &w->sups[w->sup_count++];
    sup->socket = socket;
    snprintf(sup->host, sizeof sup->host, "%s", host);
    sup->pid = pid;
    sup->last_ms = tq_harness_now_ms();
}

/* Receives one message on socket within timeout_ms (HEARTBEAT answers to
   a registered supervisor are skipped). Returns false if none came. */
static bool
s_recv(s_world_t *w, void *socket, int timeout_ms, s_in_t *in)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    for (;;) {
        s_pump(w);
        int64_t left = deadline - tq_harness_now_ms();
        if (left < 0)
            left = 0;
        zmq_pollitem_t item = {socket, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&item, 1, left < 100 ? (long)left : 100);
        if (rc > 0) {
            tq_frames_t frames;
            tq_frames_init(&frames);
            rc = tq_wire_recv(socket, &frames, false, ZMQ_DONTWAIT);
            if (rc == -1) {
                tq_frames_close(&frames);
                continue;
            }
            tq_msg_t *msg = calloc(1, sizeof *msg);
            assert_non_null(msg);
            const char *reason = NULL;
            if (rc == TQ_OK)
                rc = tq_wire_decode(&frames, msg, &reason);
            if (rc != TQ_OK)
                fail_msg("the broker sent an undecodable message: %s",
                         reason ? reason : "wrong frames");
            memset(in, 0, offsetof(s_in_t, payload));
            in->command = msg->command;
            tq_str_copy(in->id, sizeof in->id, msg->id);
            tq_str_copy(in->task, sizeof in->task, msg->task);
            tq_str_copy(in->host, sizeof in->host, msg->host);
            tq_str_copy(in->error, sizeof in->error, msg->error);
            in->state = msg->state;
            in->code = msg->code;
            in->attempt = msg->attempt;
            in->time_limit_ms = msg->time_limit_ms;
            in->pid = msg->pid;
            in->dropped = msg->dropped;
            in->id_binary = msg->id_binary;
            in->header_size = zmq_msg_size(&frames.header);
            in->payload_size = zmq_msg_size(&frames.payload);
            assert_true(in->payload_size <= S_MAX_PAYLOAD);
            memcpy(in->payload, zmq_msg_data(&frames.payload),
                   in->payload_size);
            in->at_ms = tq_harness_now_ms();
            free(msg);
            tq_frames_close(&frames);
            if (in->command == TQ_CMD_HEARTBEAT && s_is_sup(w, socket))
                continue;
            return true;
        }
        if (tq_harness_now_ms() >= deadline)
            return false;
    }
}

/* Receives the next message on socket; it must be `command` (and carry id
   when id is not NULL). */
static void
s_expect(s_world_t *w, void *socket, uint8_t command, const char *id,
         s_in_t *in)
{
    if (!s_recv(w, socket, w->wait_ms, in))
        fail_msg("expected %s %s: nothing in %d ms",
                 tq_proto_command_name(command), id ? id : "", w->wait_ms);
    if (in->command != command)
        fail_msg("expected %s %s, got %s %s (code %u: %s)",
                 tq_proto_command_name(command), id ? id : "",
                 tq_proto_command_name(in->command), in->id, in->code,
                 in->error);
    if (id && strcmp(in->id, id) != 0)
        fail_msg("expected %s %s, got it for id \"%s\"",
                 tq_proto_command_name(command), id, in->id);
}

/* Expects ERROR with code for id; returns nothing, the text is in in. */
static void
s_expect_error(s_world_t *w, void *socket, int code, const char *id, s_in_t *in)
{
    s_expect(w, socket, TQ_CMD_ERROR, id, in);
    printf("  ERROR %s: %s \"%s\"\n", id ? id : "-", tq_strerror((int)in->code),
           in->error);
    if ((int)in->code != code)
        fail_msg("expected ERROR %s for %s, got %s (\"%s\")", tq_strerror(code),
                 id ? id : "-", tq_strerror((int)in->code), in->error);
}

/* Expects RESULT id with state and code. */
static void
s_expect_result(s_world_t *w, void *socket, const char *id, int state, int code,
                s_in_t *in)
{
    s_expect(w, socket, TQ_CMD_RESULT, id, in);
    if ((int)in->state != state || (int)in->code != code)
        fail_msg("RESULT %s: expected %s/%s, got %s/%s (\"%s\")", id,
                 tq_state_name(state), tq_strerror(code),
                 tq_state_name((int)in->state), tq_strerror((int)in->code),
                 in->error);
}

/* Expects TASK id with the given attempt. */
static void
s_expect_task(s_world_t *w, void *socket, const char *id, uint32_t attempt,
              s_in_t *in)
{
    s_expect(w, socket, TQ_CMD_TASK, id, in);
    assert_string_equal(in->task, "t");
    if (in->attempt != attempt)
        fail_msg("TASK %s: attempt %u, expected %u", id, in->attempt, attempt);
    assert_int_equal(in->payload_size, sizeof s_args);
    assert_memory_equal(in->payload, s_args, sizeof s_args);
}

/* Submits and expects SUBMITTED. */
static void
s_submit_ok(s_world_t *w, void *socket, const char *id, const char *queue,
            s_in_t *in)
{
    s_submit(w, socket, id, queue, 0, 0, 0);
    s_expect(w, socket, TQ_CMD_SUBMITTED, id, in);
}

/* ---- maps ---- */

/* Decodes in's payload as one msgpack map into map. */
static void
s_map(const s_in_t *in, s_map_t *map)
{
    memset(map, 0, sizeof *map);
    map->data = malloc(in->payload_size + 1);
    assert_non_null(map->data);
    memcpy(map->data, in->payload, in->payload_size);
    msgpack_unpacked_init(&map->unpacked);
    size_t off = 0;
    int rc = msgpack_unpack_next(&map->unpacked, (const char *)map->data,
                                 in->payload_size, &off);
    assert_int_equal(rc, MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, in->payload_size);
    assert_int_equal(map->unpacked.data.type, MSGPACK_OBJECT_MAP);
    map->root = &map->unpacked.data;
}

static void
s_map_free(s_map_t *map)
{
    if (map->root)
        msgpack_unpacked_destroy(&map->unpacked);
    free(map->data);
    memset(map, 0, sizeof *map);
}

/* STATUS over socket, decoded into map. */
static void
s_status(s_world_t *w, void *socket, s_map_t *map)
{
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    tq_msg_t msg = s_msg(TQ_CMD_STATUS);
    s_send(w, socket, &msg, NULL, 0);
    s_expect(w, socket, TQ_CMD_STATUS_REPLY, NULL, in);
    s_map(in, map);
    free(in);
}

/* map[key], which must be an unsigned integer. */
static uint64_t
s_uint(const msgpack_object *map, const char *key)
{
    const msgpack_object *val = tq_harness_map_get(map, key);
    if (!val)
        fail_msg("key \"%s\" missing", key);
    if (val->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        fail_msg("key \"%s\" is not an unsigned integer (type %d)", key,
                 (int)val->type);
    return val->via.u64;
}

/* map[key], which must be an array. */
static const msgpack_object *
s_array(const msgpack_object *map, const char *key)
{
    const msgpack_object *val = tq_harness_map_get(map, key);
    if (!val || val->type != MSGPACK_OBJECT_ARRAY)
        fail_msg("key \"%s\" missing or not an array", key);
    return val;
}

/* The map in array `list` whose key is the string value, or NULL. */
static const msgpack_object *
s_find(const msgpack_object *list, const char *key, const char *value)
{
    for (uint32_t i = 0; i < list->via.array.size; i++)
        if (tq_harness_str_eq(tq_harness_map_get(&list->via.array.ptr[i], key),
                              value))
            return &list->via.array.ptr[i];
    return NULL;
}

/* The map in array `list` whose key is the uint value, or NULL. */
static const msgpack_object *
s_find_uint(const msgpack_object *list, const char *key, uint64_t value)
{
    for (uint32_t i = 0; i < list->via.array.size; i++)
        if (tq_harness_map_uint(&list->via.array.ptr[i], key, UINT64_MAX) ==
            value)
            return &list->via.array.ptr[i];
    return NULL;
}

/* STATUS counters[name]. */
static uint64_t
s_counter(s_world_t *w, void *socket, const char *name)
{
    s_map_t map;
    s_status(w, socket, &map);
    const msgpack_object *counters = tq_harness_map_get(map.root, "counters");
    assert_non_null(counters);
    uint64_t value = s_uint(counters, name);
    s_map_free(&map);
    return value;
}

/* Polls STATUS until counters[name] is value; fails after the wait. */
static void
s_wait_counter(s_world_t *w, void *socket, const char *name, uint64_t value)
{
    int64_t deadline = tq_harness_now_ms() + w->wait_ms;
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

/* status.queues[name][key]. */
static uint64_t
s_queue_uint(s_world_t *w, void *socket, const char *name, const char *key)
{
    s_map_t map;
    s_status(w, socket, &map);
    const msgpack_object *queue =
        s_find(s_array(map.root, "queues"), "name", name);
    if (!queue)
        fail_msg("STATUS lists no queue %s", name);
    uint64_t value = s_uint(queue, key);
    s_map_free(&map);
    return value;
}

/* Polls STATUS until data queue name has `getters` waiting getters, so
   that requests from different sockets reach the broker in a known
   order. */
static void
s_wait_getters(s_world_t *w, void *socket, const char *name, uint64_t getters)
{
    int64_t deadline = tq_harness_now_ms() + w->wait_ms;
    uint64_t last = 0;
    while (tq_harness_now_ms() < deadline) {
        s_map_t map;
        s_status(w, socket, &map);
        const msgpack_object *dq =
            s_find(s_array(map.root, "data_queues"), "name", name);
        last = dq ? s_uint(dq, "getters") : 0;
        s_map_free(&map);
        if (last == getters)
            return;
        tq_harness_sleep_ms(5);
    }
    fail_msg("data queue %s: %llu getters, expected %llu", name,
             (unsigned long long)last, (unsigned long long)getters);
}

/* A new supervisor DEALER: HEARTBEAT once, the broker's HEARTBEAT back
   (its own pid), then kept alive by s_pump when keep. */
static void *
s_supervisor(s_world_t *w, const char *host, uint64_t pid, bool keep,
             s_in_t *in)
{
    void *sup = s_dealer(w, w->broker.workers);
    s_heartbeat(w, sup, host, pid);
    s_expect(w, sup, TQ_CMD_HEARTBEAT, NULL, in);
    assert_int_equal(in->pid, (uint64_t)w->broker.pid);
    assert_true(in->host[0] != '\0');
    if (keep)
        s_sup_add(w, sup, host, pid);
    return sup;
}

/* ---- 1. data queues (5.5) ---- */

static void
test_data_queues(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_map_t map;
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *b = s_dealer(w, w->broker.clients);

    /* the item comes back byte for byte */
    s_qput(w, a, "p1", "dq", 0, s_item, sizeof s_item);
    s_expect(w, a, TQ_CMD_REPLY, "p1", in);
    s_map(in, &map);
    assert_int_equal(s_uint(map.root, "size"), 1);
    s_map_free(&map);
    s_qget(w, a, "g1", "dq", 0);
    s_expect(w, a, TQ_CMD_QITEM, "g1", in);
    assert_int_equal(in->payload_size, sizeof s_item);
    assert_memory_equal(in->payload, s_item, sizeof s_item);

    /* FIFO over 100 items [i, "item"], pipelined */
    char id[32];
    for (int i = 0; i < 100; i++) {
        uint8_t item[] = {0x92, (uint8_t)i, 0xa4, 'i', 't', 'e', 'm'};
        snprintf(id, sizeof id, "p-%d", i);
        s_qput(w, a, id, "dq", 0, item, sizeof item);
    }
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "p-%d", i);
        s_expect(w, a, TQ_CMD_REPLY, id, in);
        s_map(in, &map);
        assert_int_equal(s_uint(map.root, "size"), i + 1);
        s_map_free(&map);
    }
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "g-%d", i);
        s_qget(w, a, id, "dq", 0);
    }
    for (int i = 0; i < 100; i++) {
        uint8_t item[] = {0x92, (uint8_t)i, 0xa4, 'i', 't', 'e', 'm'};
        snprintf(id, sizeof id, "g-%d", i);
        s_expect(w, a, TQ_CMD_QITEM, id, in);
        assert_int_equal(in->payload_size, sizeof item);
        assert_memory_equal(in->payload, item, sizeof item);
    }

    /* empty, no wait: TQ_EEMPTY at once, with the request's id */
    s_qget(w, a, "e1", "dq", 0);
    s_expect_error(w, a, TQ_EEMPTY, "e1", in);

    /* a waiting getter is served by another client's put */
    s_qget(w, a, "w1", "dq", 2000);
    s_wait_getters(w, b, "dq", 1);
    int64_t put_ms = tq_harness_now_ms();
    s_qput(w, b, "p-w", "dq", 0, s_item, sizeof s_item);
    s_expect(w, b, TQ_CMD_REPLY, "p-w", in);
    s_map(in, &map);
    assert_int_equal(s_uint(map.root, "size"), 0); /* handed over */
    s_map_free(&map);
    s_expect(w, a, TQ_CMD_QITEM, "w1", in);
    assert_memory_equal(in->payload, s_item, sizeof s_item);
    /* a QITEM, not the ERROR TQ_EEMPTY its 2 s wait would end with */
    printf("  waiting QGET served %lld ms after the QPUT\n",
           (long long)(in->at_ms - put_ms));

    /* waiting getters are served first come, first served */
    void *c = s_dealer(w, w->broker.clients);
    s_qget(w, a, "wa", "fifo", 5000);
    s_wait_getters(w, c, "fifo", 1);
    s_qget(w, b, "wb", "fifo", 5000);
    s_wait_getters(w, c, "fifo", 2);
    static const uint8_t one[] = {0x01}, two[] = {0x02};
    s_qput(w, c, "pf1", "fifo", 0, one, 1);
    s_expect(w, c, TQ_CMD_REPLY, "pf1", in);
    s_qput(w, c, "pf2", "fifo", 0, two, 1);
    s_expect(w, c, TQ_CMD_REPLY, "pf2", in);
    s_expect(w, a, TQ_CMD_QITEM, "wa", in);
    assert_int_equal(in->payload_size, 1);
    assert_int_equal(in->payload[0], 0x01);
    s_expect(w, b, TQ_CMD_QITEM, "wb", in);
    assert_int_equal(in->payload_size, 1);
    assert_int_equal(in->payload[0], 0x02);

    /* a wait that runs out: TQ_EEMPTY after its 300 ms, not before, and
       its own: a getter of a minute on the same queue, there before it,
       still waits then (the next item is handed to it) */
    s_qget(w, b, "w3", "dq", 60000);
    s_wait_getters(w, c, "dq", 1);
    int64_t t0 = tq_harness_now_ms();
    s_qget(w, a, "w2", "dq", 300);
    s_expect_error(w, a, TQ_EEMPTY, "w2", in);
    int64_t waited = in->at_ms - t0;
    printf("  QGET 300 ms answered after %lld ms\n", (long long)waited);
    assert_true(waited >= 250);
    s_qput(w, c, "p-3", "dq", 0, s_item, sizeof s_item);
    s_expect(w, c, TQ_CMD_REPLY, "p-3", in);
    s_expect(w, b, TQ_CMD_QITEM, "w3", in);
    assert_memory_equal(in->payload, s_item, sizeof s_item);

    /* a bounded queue refuses the third item and keeps nothing */
    s_qput(w, a, "s1", "small", 2, s_item, sizeof s_item);
    s_expect(w, a, TQ_CMD_REPLY, "s1", in);
    s_qput(w, a, "s2", "small", 2, s_item, sizeof s_item);
    s_expect(w, a, TQ_CMD_REPLY, "s2", in);
    s_qput(w, a, "s3", "small", 2, s_item, sizeof s_item);
    s_expect_error(w, a, TQ_EFULL, "s3", in);
    assert_non_null(strstr(in->error, "small"));
    assert_non_null(strstr(in->error, "2"));
    tq_msg_t msg = s_msg(TQ_CMD_QSIZE);
    msg.id = tq_str("z1");
    msg.queue = tq_str("small");
    s_send(w, a, &msg, NULL, 0);
    s_expect(w, a, TQ_CMD_REPLY, "z1", in);
    s_map(in, &map);
    assert_int_equal(s_uint(map.root, "size"), 2);
    assert_int_equal(s_uint(map.root, "maxsize"), 2);
    s_map_free(&map);

    /* malformed items: refused with TQ_EPROTO and the id, nothing kept */
    static const struct {
        const char *id;
        const char *bytes;
        size_t size;
    } bad[] = {
        {"bad1", "\xc1", 1}, /* never valid msgpack */
        {"bad2", "\x92\x01", 2}, /* array of 2 with 1 element */
        {"bad3", "\x01\x02", 2}, /* two objects */
        {"bad4", "", 0}, /* no object */
        {"bad5",
         "\xa5"
         "ab",
         3}, /* string shorter than its length */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_qput(w, a, bad[i].id, "dq", 0, bad[i].bytes, bad[i].size);
        s_expect_error(w, a, TQ_EPROTO, bad[i].id, in);
    }
    msg.id = tq_str("z2");
    msg.queue = tq_str("dq");
    s_send(w, a, &msg, NULL, 0);
    s_expect(w, a, TQ_CMD_REPLY, "z2", in);
    s_map(in, &map);
    assert_int_equal(s_uint(map.root, "size"), 0);
    s_map_free(&map);
    free(in);
}

/* ---- 2. --max-queue (5.3.4) ---- */

static void
test_max_queue(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, (const char *[]){"--max-queue", "3", NULL});
    void *a = s_dealer(w, w->broker.clients);
    s_submit_ok(w, a, "mq-1", "qa", in);
    s_submit_ok(w, a, "mq-2", "qa", in);
    s_submit_ok(w, a, "mq-3", "qa", in);
    /* refused at once: the answer comes before the PONG to a PING sent
       after it (a connection keeps order), not once the queue has room */
    s_submit(w, a, "mq-4", "qa", 0, 0, 0);
    tq_msg_t ping = s_msg(TQ_CMD_PING);
    s_send(w, a, &ping, NULL, 0);
    s_expect_error(w, a, TQ_EFULL, "mq-4", in);
    assert_non_null(strstr(in->error, "qa"));
    assert_non_null(strstr(in->error, "max-queue 3"));
    s_expect(w, a, TQ_CMD_PONG, NULL, in);
    /* nothing was kept, and another queue still accepts */
    s_submit_ok(w, a, "mq-5", "qb", in);
    assert_int_equal(s_queue_uint(w, a, "qa", "waiting"), 3);
    assert_int_equal(s_queue_uint(w, a, "qb", "waiting"), 1);
    assert_int_equal(s_counter(w, a, "refused"), 1);
    assert_int_equal(s_counter(w, a, "submitted"), 4);
    /* GET of the refused id: the broker never kept it */
    s_get(w, a, "mq-4", false);
    s_expect(w, a, TQ_CMD_UNKNOWN, "mq-4", in);
    free(in);
}

/* ---- 3. --max-client-tasks (5.3.4) ---- */

static void
test_max_client_tasks(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, (const char *[]){"--max-client-tasks", "2", NULL});
    void *a = s_dealer(w, w->broker.clients);
    void *b = s_dealer(w, w->broker.clients);
    s_submit_ok(w, a, "ct-1", "qct", in);
    s_submit_ok(w, a, "ct-2", "qct", in);
    s_submit(w, a, "ct-3", "qct", 0, 0, 0);
    s_expect_error(w, a, TQ_EFULL, "ct-3", in);
    assert_non_null(strstr(in->error, "max-client-tasks"));
    s_submit_ok(w, b, "ct-4", "qct", in);
    /* once one of a's tasks ends, a may submit again */
    void *child = s_dealer(w, w->broker.workers);
    s_ready(w, child, "hostC", 301, 300, "qct");
    s_expect_task(w, child, "ct-1", 1, in);
    s_done(w, child, "ct-1", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "ct-1", TQ_STATE_SUCCESS, TQ_OK, in);
    s_submit_ok(w, a, "ct-5", "qct", in);
    free(in);
}

/* ---- 4. CANCEL (5.4) ---- */

static void
test_cancel(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *b = s_dealer(w, w->broker.clients);

    /* a waiting task: RESULT CANCELLED to the canceller and the submitter */
    s_submit_ok(w, a, "cw-1", "qc", in);
    s_send_id(w, b, TQ_CMD_CANCEL, "cw-1");
    s_expect_result(w, b, "cw-1", TQ_STATE_CANCELLED, TQ_ECANCELLED, in);
    s_expect_result(w, a, "cw-1", TQ_STATE_CANCELLED, TQ_ECANCELLED, in);
    /* an unknown id */
    s_send_id(w, b, TQ_CMD_CANCEL, "nope-1");
    s_expect(w, b, TQ_CMD_UNKNOWN, "nope-1", in);
    /* a final task: answered with its RESULT */
    s_send_id(w, b, TQ_CMD_CANCEL, "cw-1");
    s_expect_result(w, b, "cw-1", TQ_STATE_CANCELLED, TQ_ECANCELLED, in);

    /* a running task: KILL to the child's supervisor */
    void *sup = s_supervisor(w, "hostA", 900, true, in);
    void *child = s_dealer(w, w->broker.workers);
    s_ready(w, child, "hostA", 901, 900, "qc");
    s_submit_ok(w, a, "cr-1", "qc", in);
    s_expect_task(w, child, "cr-1", 1, in);
    uint64_t duplicates = s_counter(w, b, "duplicates");
    s_send_id(w, b, TQ_CMD_CANCEL, "cr-1");
    s_expect_result(w, b, "cr-1", TQ_STATE_CANCELLED, TQ_ECANCELLED, in);
    s_expect_result(w, a, "cr-1", TQ_STATE_CANCELLED, TQ_ECANCELLED, in);
    s_expect(w, sup, TQ_CMD_KILL, "cr-1", in);
    assert_int_equal(in->pid, 901);
    /* the child finished before it was stopped: its DONE is a duplicate */
    s_done(w, child, "cr-1", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_wait_counter(w, b, "duplicates", duplicates + 1);
    assert_int_equal(s_counter(w, b, "cancelled"), 2);
    /* the task stays cancelled */
    s_get(w, b, "cr-1", false);
    s_expect_result(w, b, "cr-1", TQ_STATE_CANCELLED, TQ_ECANCELLED, in);
    /* and that DONE gave the child its credit back */
    s_submit_ok(w, a, "cr-2", "qc", in);
    s_expect_task(w, child, "cr-2", 1, in);
    free(in);
}

/* A running task cancelled before its host's supervisor announced itself
   (a host's children connect first; under valgrind the supervisor came
   late and the cancelled command ran on): the KILL goes to the
   supervisor at its first HEARTBEAT instead of being lost. */
static void
test_cancel_before_supervisor(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *child = s_dealer(w, w->broker.workers);
    s_ready(w, child, "hostK", 921, 920, "qk");
    s_submit_ok(w, a, "ck-1", "qk", in);
    s_expect_task(w, child, "ck-1", 1, in);
    s_send_id(w, a, TQ_CMD_CANCEL, "ck-1");
    s_expect_result(w, a, "ck-1", TQ_STATE_CANCELLED, TQ_ECANCELLED, in);
    void *sup = s_supervisor(w, "hostK", 920, true, in);
    s_expect(w, sup, TQ_CMD_KILL, "ck-1", in);
    assert_int_equal(in->pid, 921);
    free(in);
}

/* ---- 5. leases, LOST, dead letters (5.2.6, 5.3.1-2, 5.4) ---- */

/* INSPECT id: its state and the deaths charged to it. */
static void
s_inspect_lost(s_world_t *w, void *socket, const char *id, uint64_t *state,
               uint64_t *lost)
{
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_map_t map;
    tq_msg_t inspect = s_msg(TQ_CMD_INSPECT);
    inspect.id = tq_str(id);
    s_send(w, socket, &inspect, NULL, 0);
    s_expect(w, socket, TQ_CMD_REPLY, id, in);
    s_map(in, &map);
    *state = s_uint(map.root, "state");
    *lost = s_uint(map.root, "lost");
    s_map_free(&map);
    free(in);
}

/* A LOST names the task its child ran (5.3 item 2), and that one is
   charged, not the first the child held: a child sends the DONE of a task
   and starts the next, which kills it, and that DONE may die with it (or
   come after the LOST, on another connection). A LOST that names a task
   whose DONE came first (the child died between tasks) charges nobody.
   (One that names none charges the first: test_leases.) */
static void
test_lost_names_task(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    uint64_t st, lost;
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *b = s_dealer(w, w->broker.clients);
    void *sup = s_supervisor(w, "hostN", 850, true, in);
    void *w1 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w1, "hostN", 851, 850, "qn", 2);
    s_submit_ok(w, a, "ln-1", "qn", in);
    s_expect_task(w, w1, "ln-1", 1, in);
    s_submit_ok(w, a, "ln-2", "qn", in);
    s_expect_task(w, w1, "ln-2", 1, in);

    /* w1 ends ln-1 and dies before it starts ln-2: nobody is charged */
    s_done(w, w1, "ln-1", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "ln-1", TQ_STATE_SUCCESS, TQ_OK, in);
    s_lost_task(w, sup, 851, "ln-1", 1);
    s_wait_counter(w, b, "lost", 1);
    s_inspect_lost(w, b, "ln-2", &st, &lost);
    assert_int_equal(lost, 0);
    assert_int_equal(st, TQ_STATE_PENDING);

    /* w2 takes ln-2, then ln-3; it runs ln-2 (its DONE never comes),
       then ln-3, which kills it: ln-3 is charged and waits in RETRY,
       ln-2 goes back unchanged */
    void *w2 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w2, "hostN", 852, 850, "qn", 2);
    s_expect_task(w, w2, "ln-2", 2, in);
    s_submit_ok(w, a, "ln-3", "qn", in);
    s_expect_task(w, w2, "ln-3", 1, in);
    s_lost_task(w, sup, 852, "ln-3", 1);
    s_wait_counter(w, b, "lost", 2);
    s_inspect_lost(w, b, "ln-3", &st, &lost);
    assert_int_equal(lost, 1);
    assert_int_equal(st, TQ_STATE_RETRY);
    s_inspect_lost(w, b, "ln-2", &st, &lost);
    assert_int_equal(lost, 0);
    assert_int_equal(st, TQ_STATE_PENDING);
    free(in);
}

static void
test_leases(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_map_t map;
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *b = s_dealer(w, w->broker.clients);
    void *sup = s_supervisor(w, "hostH", 800, true, in);
    void *w1 = s_dealer(w, w->broker.workers);
    s_ready(w, w1, "hostH", 801, 800, "ql");
    s_submit_ok(w, a, "ls-1", "ql", in);
    s_expect_task(w, w1, "ls-1", 1, in);

    /* a DONE with another attempt does not hold the lease */
    uint64_t duplicates = s_counter(w, b, "duplicates");
    s_done(w, w1, "ls-1", 7, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_wait_counter(w, b, "duplicates", duplicates + 1);
    s_get(w, b, "ls-1", false);
    s_expect(w, b, TQ_CMD_STATE, "ls-1", in);
    assert_int_equal(in->state, TQ_STATE_RUNNING);

    /* LOST: dispatched again to another child with attempt 2 */
    static const char why[] = "killed by SIGKILL (peak RSS 1 MB)";
    void *w2 = s_dealer(w, w->broker.workers);
    s_ready(w, w2, "hostH", 802, 800, "ql");
    s_lost(w, sup, 801, TQ_ELOST, why);
    s_expect_task(w, w2, "ls-1", 2, in);
    /* the old holder's late DONE: a peer the broker forgot at the LOST,
       refused with TQ_ESTATE and counted; the task goes on under its new
       lease */
    uint64_t errors = s_counter(w, b, "errors");
    s_done(w, w1, "ls-1", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_error(w, w1, TQ_ESTATE, "ls-1", in);
    assert_int_equal(s_counter(w, b, "errors"), errors + 1);
    s_get(w, b, "ls-1", false);
    s_expect(w, b, TQ_CMD_STATE, "ls-1", in);
    assert_int_equal(in->state, TQ_STATE_RUNNING);
    /* and from a child that does not hold it: a duplicate */
    void *other = s_dealer(w, w->broker.workers);
    s_ready(w, other, "hostH", 809, 800, "qother");
    s_done(w, other, "ls-1", 2, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_wait_counter(w, b, "duplicates", duplicates + 2);

    void *w3 = s_dealer(w, w->broker.workers);
    s_ready(w, w3, "hostH", 803, 800, "ql");
    s_lost(w, sup, 802, TQ_ELOST, why);
    s_expect_task(w, w3, "ls-1", 3, in);
    /* the third loss ends it */
    s_lost(w, sup, 803, TQ_ELOST, why);
    s_expect_result(w, a, "ls-1", TQ_STATE_FAILURE, TQ_ELOST, in);
    printf("  ls-1: \"%s\"\n", in->error);
    assert_string_equal(in->error,
                        "worker lost: killed by SIGKILL (peak RSS 1 MB) on "
                        "host hostH");
    assert_int_equal(s_counter(w, b, "lost"), 3);

    /* FAILED lists the dead letter */
    s_send_id(w, b, TQ_CMD_FAILED, "fl-1");
    s_expect(w, b, TQ_CMD_REPLY, "fl-1", in);
    s_map(in, &map);
    const msgpack_object *failed = s_array(map.root, "failed");
    assert_int_equal(failed->via.array.size, 1);
    const msgpack_object *dead = s_find(failed, "id", "ls-1");
    assert_non_null(dead);
    assert_true(tq_harness_str_eq(tq_harness_map_get(dead, "task"), "t"));
    assert_true(tq_harness_str_eq(tq_harness_map_get(dead, "queue"), "ql"));
    assert_int_equal(s_uint(dead, "code"), TQ_ELOST);
    assert_int_equal(s_uint(dead, "attempts"), 3);
    assert_true(tq_harness_str_eq(tq_harness_map_get(dead, "error"),
                                  "worker lost: killed by SIGKILL (peak RSS "
                                  "1 MB) on host hostH"));
    s_map_free(&map);
    assert_int_equal(s_counter(w, b, "dead_letters"), 1);

    /* RETRY: SUBMITTED, dispatched again (a new lease), ends normally */
    void *w4 = s_dealer(w, w->broker.workers);
    s_ready(w, w4, "hostH", 804, 800, "ql");
    s_send_id(w, b, TQ_CMD_RETRY, "ls-1");
    s_expect(w, b, TQ_CMD_SUBMITTED, "ls-1", in);
    s_expect(w, w4, TQ_CMD_TASK, "ls-1", in);
    printf("  ls-1 after RETRY: attempt %u\n", in->attempt);
    assert_int_equal(in->attempt, 4);
    assert_memory_equal(in->payload, s_args, sizeof s_args);
    assert_int_equal(s_counter(w, b, "dead_letters"), 0);
    s_get(w, b, "ls-1", true);
    s_done(w, w4, "ls-1", 4, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, b, "ls-1", TQ_STATE_SUCCESS, TQ_OK, in);
    assert_int_equal(in->payload_size, sizeof s_value);
    assert_memory_equal(in->payload, s_value, sizeof s_value);

    /* RETRY of a task that is not a dead letter */
    s_send_id(w, b, TQ_CMD_RETRY, "ls-1");
    s_expect_error(w, b, TQ_ESTATE, "ls-1", in);
    s_send_id(w, b, TQ_CMD_RETRY, "ls-unknown");
    s_expect(w, b, TQ_CMD_UNKNOWN, "ls-unknown", in);

    /* LOST with TQ_ETIMELIMIT: FAILURE with the LOST's own text */
    static const char limit[] = "time limit of 500 ms exceeded: killed";
    s_submit_ok(w, a, "lt-1", "ql", in);
    s_expect_task(w, w4, "lt-1", 1, in);
    s_lost(w, sup, 804, TQ_ETIMELIMIT, limit);
    s_expect_result(w, a, "lt-1", TQ_STATE_FAILURE, TQ_ETIMELIMIT, in);
    assert_string_equal(in->error, limit);
    /* every failed task is a dead letter (5.3.2), kept for the TTL */
    assert_int_equal(s_counter(w, b, "dead_letters"), 1);
    free(in);
}

/* ---- 5b. which task a LOST charges (5.3.2), with --max-lost 1 so that
   any charge fails a task at once ---- */

static void
test_lost_charges(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, (const char *[]){"--max-lost", "1", NULL});
    void *a = s_dealer(w, w->broker.clients);
    void *sup = s_supervisor(w, "hostL", 1000, true, in);
    void *w1 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w1, "hostL", 1001, 1000, "qlc", 2);
    s_submit_ok(w, a, "lc-1", "qlc", in);
    s_expect_task(w, w1, "lc-1", 1, in);
    s_submit_ok(w, a, "lc-2", "qlc", in);
    s_expect_task(w, w1, "lc-2", 1, in);
    /* the child died: the first task it held pays, the second goes back */
    void *w2 = s_dealer(w, w->broker.workers);
    s_ready(w, w2, "hostL", 1002, 1000, "qlc");
    s_lost(w, sup, 1001, TQ_ELOST, "killed by SIGSEGV");
    s_expect_result(w, a, "lc-1", TQ_STATE_FAILURE, TQ_ELOST, in);
    assert_string_equal(in->error,
                        "worker lost: killed by SIGSEGV on host hostL");
    s_expect_task(w, w2, "lc-2", 2, in);

    /* a child stopped because its task was cancelled charges nobody */
    void *w3 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w3, "hostL", 1003, 1000, "qlc", 2);
    s_submit_ok(w, a, "lc-3", "qlc", in);
    s_expect_task(w, w3, "lc-3", 1, in);
    s_submit_ok(w, a, "lc-4", "qlc", in);
    s_expect_task(w, w3, "lc-4", 1, in);
    s_send_id(w, a, TQ_CMD_CANCEL, "lc-3");
    s_expect_result(w, a, "lc-3", TQ_STATE_CANCELLED, TQ_ECANCELLED, in);
    s_expect(w, sup, TQ_CMD_KILL, "lc-3", in);
    assert_int_equal(in->pid, 1003);
    s_lost(w, sup, 1003, TQ_ECANCELLED, "stopped: task cancelled");
    /* lc-4 is queued again, not failed: w2 takes it once lc-2 is done */
    s_done(w, w2, "lc-2", 2, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "lc-2", TQ_STATE_SUCCESS, TQ_OK, in);
    s_expect_task(w, w2, "lc-4", 2, in);
    s_done(w, w2, "lc-4", 2, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "lc-4", TQ_STATE_SUCCESS, TQ_OK, in);
    assert_int_equal(s_counter(w, a, "dead_letters"), 1);
    free(in);
}

/* A child whose connection is gone before its supervisor's LOST arrives
   (it died while the broker, at prefetch above 1, kept sending it tasks:
   a send finds it unreachable first). The LOST still charges the task it
   was running (5.2 item 7): handled at once as a DISCONNECT, the task
   would go back uncharged and the LOST would find nobody, so a task that
   kills its child could do so forever. */
static void
test_lost_after_unreachable(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, (const char *[]){"--max-lost", "1", NULL});
    void *a = s_dealer(w, w->broker.clients);
    void *sup = s_supervisor(w, "hostU", 1100, true, in);
    /* the child's own socket (not the teardown's: it dies below) */
    void *child = zmq_socket(w->ctx, ZMQ_DEALER);
    assert_non_null(child);
    int linger = 0;
    zmq_setsockopt(child, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(child, w->broker.workers), 0);
    /* credit for every task below: each one is sent to it */
    s_ready_credit(w, child, "hostU", 1101, 1100, "qu", 1000);
    s_submit_ok(w, a, "un-1", "qu", in);
    s_expect_task(w, child, "un-1", 1, in);
    zmq_close(child); /* it died running un-1 */
    /* more tasks for it, until a send finds its connection gone */
    uint64_t dropped = s_counter(w, a, "dropped");
    enum { MAX = 500 };
    int n = 1;
    while (s_counter(w, a, "dropped") == dropped && n < MAX) {
        char id[32];
        snprintf(id, sizeof id, "un-%d", ++n);
        s_submit_ok(w, a, id, "qu", in);
        tq_harness_sleep_ms(10); /* bounded: 5 s in all */
    }
    assert_true(s_counter(w, a, "dropped") > dropped);
    /* its supervisor reports its death: the task it was running pays */
    s_lost(w, sup, 1101, TQ_ELOST, "killed by SIGSEGV");
    s_expect_result(w, a, "un-1", TQ_STATE_FAILURE, TQ_ELOST, in);
    assert_string_equal(in->error,
                        "worker lost: killed by SIGSEGV on host hostU");
    /* and the others, charged nothing, all run on the next child */
    void *w2 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w2, "hostU", 1102, 1100, "qu", MAX);
    bool seen[MAX + 1] = {false};
    for (int i = 2; i <= n; i++) {
        s_expect(w, w2, TQ_CMD_TASK, NULL, in);
        int k = 0;
        assert_int_equal(sscanf(in->id, "un-%d", &k), 1);
        assert_true(k >= 2 && k <= n && !seen[k]);
        seen[k] = true;
        s_done(w, w2, in->id, in->attempt, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    }
    for (int i = 2; i <= n; i++)
        s_expect(w, a, TQ_CMD_RESULT, NULL, in);
    printf("  %d task(s) sent after the child died; the first it ran "
           "charged\n",
           n - 1);
    assert_int_equal(s_counter(w, a, "dead_letters"), 1);
    free(in);
}

/* ---- 6. retries with backoff (5.3.3) ---- */

/* The backoff the broker chose for id's n-th retry, from its debug log
   line "task ID failed (...), retry in N ms". */
static double
s_log_backoff(s_world_t *w, const char *id, int n)
{
    char text[64], line[1024];
    snprintf(text, sizeof text, "task %s failed (", id);
    s_log_line(w, text, n, line, sizeof line);
    const char *at = strstr(line, "retry in ");
    double ms = -1;
    if (!at || sscanf(at, "retry in %lf ms", &ms) != 1)
        fail_msg("no backoff in the broker's line \"%s\"", line);
    return ms;
}

static void
test_retries(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    /* the debug log says which backoff the broker chose */
    s_start_logged(w, (const char *[]){"--log-level", "debug", NULL});
    void *a = s_dealer(w, w->broker.clients);
    void *child = s_dealer(w, w->broker.workers);
    s_ready(w, child, "hostR", 601, 600, "qr");

    s_submit(w, a, "rt-1", "qr", 2, 100, 0);
    s_expect(w, a, TQ_CMD_SUBMITTED, "rt-1", in);
    s_expect_task(w, child, "rt-1", 1, in);
    int64_t fail1 = tq_harness_now_ms();
    s_done(w, child, "rt-1", 1, TQ_STATE_FAILURE, TQ_ETASK, "boom 1", 0);
    s_expect_task(w, child, "rt-1", 2, in);
    int64_t gap1 = in->at_ms - fail1;
    s_get(w, a, "rt-1", false);
    s_expect(w, a, TQ_CMD_STATE, "rt-1", in);
    assert_int_equal(in->state, TQ_STATE_RUNNING);
    int64_t fail2 = tq_harness_now_ms();
    s_done(w, child, "rt-1", 2, TQ_STATE_FAILURE, TQ_ETASK, "boom 2", 0);
    s_expect_task(w, child, "rt-1", 3, in);
    int64_t gap2 = in->at_ms - fail2;
    double backoff1 = s_log_backoff(w, "rt-1", 1);
    double backoff2 = s_log_backoff(w, "rt-1", 2);
    printf("  backoff 100 ms: %.0f ms chosen, retried after %lld ms; then "
           "%.0f ms chosen, retried after %lld ms\n",
           backoff1, (long long)gap1, backoff2, (long long)gap2);
    /* 100 ms x 0.5..1.5, then 200 ms x 0.5..1.5, as the broker chose
       them; each one waited out before the next attempt (a loaded
       machine only makes the wait longer) */
    assert_true(backoff1 >= 50 && backoff1 < 150);
    assert_true(backoff2 >= 100 && backoff2 < 300);
    assert_true(gap1 >= 50);
    assert_true(gap2 >= 100);
    s_done(w, child, "rt-1", 3, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "rt-1", TQ_STATE_SUCCESS, TQ_OK, in);
    assert_memory_equal(in->payload, s_value, sizeof s_value);
    /* checked last, so that a wrong count does not hide what follows */
    uint32_t attempts1 = in->attempt;
    assert_int_equal(s_counter(w, a, "retried"), 2);

    /* retries used up: FAILURE with the last error */
    s_submit(w, a, "rt-2", "qr", 1, 50, 0);
    s_expect(w, a, TQ_CMD_SUBMITTED, "rt-2", in);
    s_expect_task(w, child, "rt-2", 1, in);
    s_done(w, child, "rt-2", 1, TQ_STATE_FAILURE, TQ_ETASK, "first", 0);
    s_expect_task(w, child, "rt-2", 2, in);
    s_done(w, child, "rt-2", 2, TQ_STATE_FAILURE, TQ_ETASK, "last", 0);
    s_expect_result(w, a, "rt-2", TQ_STATE_FAILURE, TQ_ETASK, in);
    assert_string_equal(in->error, "last");
    assert_int_equal(in->payload_size, 0);
    uint32_t attempts2 = in->attempt;

    /* in its backoff the task is in state RETRY: a backoff of a minute, so
       that no stall of this machine ends it before the GET, which is sent
       once the broker counted the retry (the DONE came from another
       connection) */
    s_submit(w, a, "rt-3", "qr", 1, 60000, 0);
    s_expect(w, a, TQ_CMD_SUBMITTED, "rt-3", in);
    s_expect_task(w, child, "rt-3", 1, in);
    s_done(w, child, "rt-3", 1, TQ_STATE_FAILURE, TQ_ETASK, "later", 0);
    s_wait_counter(w, a, "retried", 4);
    s_get(w, a, "rt-3", false);
    s_expect(w, a, TQ_CMD_STATE, "rt-3", in);
    assert_int_equal(in->state, TQ_STATE_RETRY);
    free(in);
    printf("  RESULT attempts: rt-1 %u (3 made), rt-2 %u (2 made)\n", attempts1,
           attempts2);
    assert_int_equal(attempts1, 3);
    assert_int_equal(attempts2, 2);
}

/* ---- 7. countdown (5.3.3) ---- */

static void
test_countdown(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *child = s_dealer(w, w->broker.workers);
    s_ready(w, child, "hostD", 401, 400, "qd");
    /* a countdown waits in "delayed", not "waiting", though a child is
       free: a minute's, so that no stall of this machine ends it before
       the STATUS */
    s_submit(w, a, "cd-2", "qd", 0, 0, 60000);
    s_expect(w, a, TQ_CMD_SUBMITTED, "cd-2", in);
    assert_int_equal(s_queue_uint(w, a, "qd", "delayed"), 1);
    assert_int_equal(s_queue_uint(w, a, "qd", "waiting"), 0);
    /* one of 500 ms is dispatched once it ran out, not before, and before
       the minute's */
    int64_t t0 = tq_harness_now_ms();
    s_submit(w, a, "cd-1", "qd", 0, 0, 500);
    s_expect(w, a, TQ_CMD_SUBMITTED, "cd-1", in);
    s_expect(w, child, TQ_CMD_TASK, "cd-1", in);
    printf("  delay 500 ms: dispatched after %lld ms\n",
           (long long)(in->at_ms - t0));
    assert_true(in->at_ms - t0 >= 450);
    assert_int_equal(s_queue_uint(w, a, "qd", "delayed"), 1);
    assert_int_equal(s_queue_uint(w, a, "qd", "running"), 1);
    free(in);
}

/* ---- 8. PURGE (5.4) ---- */

static void
test_purge(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_map_t map;
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *b = s_dealer(w, w->broker.clients);
    char id[32];
    for (int i = 1; i <= 5; i++) {
        snprintf(id, sizeof id, "pg-%d", i);
        s_submit_ok(w, a, id, "qp", in);
    }
    s_submit_ok(w, a, "po-1", "qother", in);

    tq_msg_t msg = s_msg(TQ_CMD_PURGE);
    msg.queue = tq_str("qp");
    msg.id = tq_str("pr-1");
    s_send(w, b, &msg, NULL, 0);
    s_expect(w, b, TQ_CMD_REPLY, "pr-1", in);
    s_map(in, &map);
    assert_true(tq_harness_str_eq(tq_harness_map_get(map.root, "queue"), "qp"));
    assert_int_equal(s_uint(map.root, "purged"), 5);
    s_map_free(&map);
    unsigned seen = 0;
    for (int i = 0; i < 5; i++) {
        s_expect(w, a, TQ_CMD_RESULT, NULL, in);
        assert_int_equal(in->state, TQ_STATE_CANCELLED);
        assert_int_equal(in->code, TQ_ECANCELLED);
        assert_string_equal(in->error, "purged");
        int n = 0;
        assert_int_equal(sscanf(in->id, "pg-%d", &n), 1);
        assert_true(n >= 1 && n <= 5 && !(seen & (1u << n)));
        seen |= 1u << n;
    }
    assert_int_equal(s_queue_uint(w, b, "qp", "waiting"), 0);
    assert_int_equal(s_queue_uint(w, b, "qother", "waiting"), 1);
    assert_int_equal(s_counter(w, b, "cancelled"), 5);

    /* delayed tasks are purged too; an unknown queue purges nothing */
    s_submit(w, a, "pd-1", "qdelay", 0, 0, 60000);
    s_expect(w, a, TQ_CMD_SUBMITTED, "pd-1", in);
    msg.queue = tq_str("qdelay");
    msg.id = tq_str("pr-2");
    s_send(w, b, &msg, NULL, 0);
    s_expect(w, b, TQ_CMD_REPLY, "pr-2", in);
    s_map(in, &map);
    assert_int_equal(s_uint(map.root, "purged"), 1);
    s_map_free(&map);
    s_expect_result(w, a, "pd-1", TQ_STATE_CANCELLED, TQ_ECANCELLED, in);
    assert_int_equal(s_queue_uint(w, b, "qdelay", "delayed"), 0);
    msg.queue = tq_str("nosuchqueue");
    msg.id = tq_str("pr-3");
    s_send(w, b, &msg, NULL, 0);
    s_expect(w, b, TQ_CMD_REPLY, "pr-3", in);
    s_map(in, &map);
    assert_int_equal(s_uint(map.root, "purged"), 0);
    s_map_free(&map);
    free(in);
}

/* ---- 9. host liveness (10) ---- */

static void
test_host_liveness(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start_logged(w, NULL); /* its warning says how long it waited */
    void *a = s_dealer(w, w->broker.clients);
    /* one HEARTBEAT, then silence */
    int64_t last_heartbeat = tq_harness_now_ms();
    s_supervisor(w, "hostS", 700, false, in);
    void *w1 = s_dealer(w, w->broker.workers);
    s_ready(w, w1, "hostS", 701, 700, "qh");
    s_submit_ok(w, a, "hl-1", "qh", in);
    s_expect_task(w, w1, "hl-1", 1, in);
    /* a child without a supervisor is never taken for dead */
    void *w2 = s_dealer(w, w->broker.workers);
    s_ready(w, w2, "hostT", 711, 710, "qh");
    /* a bound against a hang only: a loaded machine delays the broker,
       and the broker does not count its own stalls as the host's silence */
    if (!s_recv(w, w2, w->wrapped ? 60000 : 30000, in))
        fail_msg("hl-1 not queued again after its host went silent");
    assert_int_equal(in->command, TQ_CMD_TASK);
    assert_string_equal(in->id, "hl-1");
    assert_int_equal(in->attempt, 2);
    int64_t after = in->at_ms - last_heartbeat;
    /* how long the broker, by its own clock, had not heard the host */
    char line[1024];
    s_log_line(w, "supervisor hostS pid 700: host silent for ", 1, line,
               sizeof line);
    double silent = -1;
    sscanf(strstr(line, "silent for ") + strlen("silent for "), "%lf", &silent);
    printf("  silent host's task dispatched again %lld ms after its last "
           "HEARTBEAT; the broker found it silent for %.1f s\n",
           (long long)after, silent);
    /* not before the liveness of 3 s; and at its checks (every 100 ms,
       its passes of under 500 ms not counted as stalls) well before twice
       the liveness */
    assert_true(after >= 2900);
    assert_true(silent >= 3.0 && silent < 6.0);
    assert_int_equal(s_counter(w, a, "lost"), 1);
    s_map_t map;
    s_status(w, a, &map);
    const msgpack_object *workers = s_array(map.root, "workers");
    assert_null(s_find_uint(workers, "pid", 701));
    assert_non_null(s_find_uint(workers, "pid", 711));
    s_map_free(&map);
    free(in);
}

/* A pass of the loop that takes long (here the broker is stopped while it
   drains a backlog) is the broker's own stall: the HEARTBEATs it reads
   late, in that pass, must not make their host look silent, so nothing is
   charged and the child keeps its task. */
static void
test_stall_in_pass(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    /* the backlog's PONGs all queue up for the client while the broker is
       stopped: more than the default --max-client-backlog (100,000), at
       which they would be dropped (PROTOCOL.md section 10) */
    s_start(w, (const char *[]){"--max-client-backlog", "1000000", NULL});
    void *a = s_dealer(w, w->broker.clients);
    s_supervisor(w, "hostP", 980, true, in);
    void *c = s_dealer(w, w->broker.workers);
    s_ready(w, c, "hostP", 981, 980, "qp");
    s_submit_ok(w, a, "sp-1", "qp", in);
    s_expect_task(w, c, "sp-1", 1, in);

    /* a backlog of PINGs, queued while the broker is stopped */
    assert_true(w->socket_count < S_MAX_SOCKETS);
    void *f = zmq_socket(w->ctx, ZMQ_DEALER);
    assert_non_null(f);
    int zero = 0;
    zmq_setsockopt(f, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(f, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(f, ZMQ_RCVHWM, &zero, sizeof zero);
    assert_int_equal(zmq_connect(f, w->broker.clients), 0);
    w->sockets[w->socket_count++] = f;
    tq_msg_t ping = s_msg(TQ_CMD_PING);
    s_send(w, f, &ping, NULL, 0);
    s_expect(w, f, TQ_CMD_PONG, NULL, in);
    int pings = w->wrapped ? 20000 : 100000;
    assert_int_equal(kill(w->broker.pid, SIGSTOP), 0);
    for (int i = 0; i < pings; i++)
        s_send(w, f, &ping, NULL, 0);
    /* let it start on the backlog (its first PONG says it did), then stop
       it in the middle of that pass for longer than the liveness, its host
       heartbeating */
    assert_int_equal(kill(w->broker.pid, SIGCONT), 0);
    s_expect(w, f, TQ_CMD_PONG, NULL, in);
    assert_int_equal(kill(w->broker.pid, SIGSTOP), 0);
    bool got = s_recv(w, c, 4000, in);
    assert_int_equal(kill(w->broker.pid, SIGCONT), 0);
    assert_false(got);
    for (int i = 1; i < pings; i++)
        s_expect(w, f, TQ_CMD_PONG, NULL, in);
    /* the pass that drained the backlog ended, and its host check ran */
    assert_false(s_recv(w, c, 500, in));
    assert_int_equal(s_counter(w, a, "lost"), 0);
    s_map_t map;
    s_status(w, a, &map);
    assert_non_null(s_find_uint(s_array(map.root, "workers"), "pid", 981));
    s_map_free(&map);
    s_done(w, c, "sp-1", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "sp-1", TQ_STATE_SUCCESS, TQ_OK, in);
    free(in);
}

/* ---- 11. work stealing: REVOKE / RETURNED (5.3.5) ---- */

static void
test_work_stealing(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    /* one child with credit 4 takes all four tasks */
    void *w1 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w1, "hostW", 901, 900, "qs", 4);
    const char *ids[] = {"ws-1", "ws-2", "ws-3", "ws-4"};
    for (int i = 0; i < 4; i++)
        s_submit_ok(w, a, ids[i], "qs", in);
    for (int i = 0; i < 4; i++)
        s_expect_task(w, w1, ids[i], 1, in);
    /* an idle child arrives: the holder is asked for the held task that
       should run next (ws-2: never ws-1, which it runs), one at a time;
       nothing moves before the holder answers */
    void *w2 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w2, "hostW", 902, 900, "qs", 4);
    s_expect(w, w1, TQ_CMD_REVOKE, "ws-2", in);
    assert_int_equal(in->attempt, 1);
    /* one REVOKE per idle child, and not again for ws-2, even when
       something makes the broker dispatch meanwhile */
    s_submit_ok(w, a, "ws-other", "nobody", in);
    assert_false(s_recv(w, w1, 300, in));
    assert_false(s_recv(w, w2, 0, in));
    assert_int_equal(s_counter(w, a, "stolen"), 0);
    /* a RETURNED for another attempt, or from a peer that does not hold
       the task, is stale: ignored */
    tq_msg_t back = s_msg(TQ_CMD_RETURNED);
    back.id = tq_str("ws-2");
    back.attempt = 7;
    s_send(w, w1, &back, NULL, 0);
    back.attempt = 1;
    s_send(w, w2, &back, NULL, 0);
    assert_false(s_recv(w, w2, 300, in));
    /* given back unstarted: the idle child gets it with a new lease */
    s_send(w, w1, &back, NULL, 0);
    s_expect_task(w, w2, "ws-2", 2, in);
    assert_int_equal(s_counter(w, a, "stolen"), 1);
    s_done(w, w2, "ws-2", 2, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "ws-2", TQ_STATE_SUCCESS, TQ_OK, in);
    /* idle again: ws-3 is asked for; this holder had started it, so it
       does not answer RETURNED and its DONE ends the task: no second run
       anywhere, no duplicate */
    s_expect(w, w1, TQ_CMD_REVOKE, "ws-3", in);
    assert_false(s_recv(w, w2, 300, in));
    s_done(w, w1, "ws-3", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "ws-3", TQ_STATE_SUCCESS, TQ_OK, in);
    assert_int_equal(s_counter(w, a, "duplicates"), 0);
    /* a RETURNED after the task ended is stale too */
    back.id = tq_str("ws-3");
    s_send(w, w1, &back, NULL, 0);
    /* and ws-4; nothing is taken from a holder of one (ws-1 runs) */
    s_expect(w, w1, TQ_CMD_REVOKE, "ws-4", in);
    back.id = tq_str("ws-4");
    s_send(w, w1, &back, NULL, 0);
    s_expect_task(w, w2, "ws-4", 2, in);
    s_done(w, w2, "ws-4", 2, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "ws-4", TQ_STATE_SUCCESS, TQ_OK, in);
    assert_false(s_recv(w, w1, 300, in));
    s_done(w, w1, "ws-1", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "ws-1", TQ_STATE_SUCCESS, TQ_OK, in);
    assert_int_equal(s_counter(w, a, "stolen"), 2);
    assert_int_equal(s_counter(w, a, "duplicates"), 0);
    free(in);
}

/* A holder that had started the task asked for stays silent; once that
   task is the first it holds (it ended the ones before), the idle child
   does not wait for it: the next unstarted task is asked for. */
static void
test_work_stealing_started(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *w1 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w1, "hostW", 911, 910, "qt", 3);
    const char *ids[] = {"wt-1", "wt-2", "wt-3"};
    for (int i = 0; i < 3; i++)
        s_submit_ok(w, a, ids[i], "qt", in);
    for (int i = 0; i < 3; i++)
        s_expect_task(w, w1, ids[i], 1, in);
    void *w2 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w2, "hostW", 912, 910, "qt", 3);
    s_expect(w, w1, TQ_CMD_REVOKE, "wt-2", in);
    /* wt-1 ends and the holder starts wt-2 before the REVOKE comes: it
       keeps wt-2; the broker asks for wt-3 instead */
    s_done(w, w1, "wt-1", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "wt-1", TQ_STATE_SUCCESS, TQ_OK, in);
    s_expect(w, w1, TQ_CMD_REVOKE, "wt-3", in);
    tq_msg_t back = s_msg(TQ_CMD_RETURNED);
    back.id = tq_str("wt-3");
    back.attempt = 1;
    s_send(w, w1, &back, NULL, 0);
    s_expect_task(w, w2, "wt-3", 2, in);
    s_done(w, w2, "wt-3", 2, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "wt-3", TQ_STATE_SUCCESS, TQ_OK, in);
    s_done(w, w1, "wt-2", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "wt-2", TQ_STATE_SUCCESS, TQ_OK, in);
    assert_int_equal(s_counter(w, a, "stolen"), 1);
    assert_int_equal(s_counter(w, a, "duplicates"), 0);
    free(in);
}

/* A child that does not announce TQ_FEATURE_RETURNS (an older version,
   which would drop a revoked task without a word) is never asked. */
static void
test_work_stealing_old_child(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *w1 = s_dealer(w, w->broker.workers);
    s_ready_features(w, w1, "hostW", 921, 920, "qo", 3, 0);
    const char *ids[] = {"wo-1", "wo-2", "wo-3"};
    for (int i = 0; i < 3; i++)
        s_submit_ok(w, a, ids[i], "qo", in);
    for (int i = 0; i < 3; i++)
        s_expect_task(w, w1, ids[i], 1, in);
    void *w2 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w2, "hostW", 922, 920, "qo", 3);
    assert_false(s_recv(w, w1, 500, in));
    for (int i = 0; i < 3; i++) {
        s_done(w, w1, ids[i], 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
        s_expect_result(w, a, ids[i], TQ_STATE_SUCCESS, TQ_OK, in);
    }
    assert_int_equal(s_counter(w, a, "stolen"), 0);
    free(in);
}

/* One REVOKE outstanding per idle child, not one in all: two idle children
   serving different queues are both served while the first one's answer
   is pending. */
static void
test_work_stealing_two_takers(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *h = s_dealer(w, w->broker.workers);
    s_ready_credit(w, h, "hostW", 931, 930, "qa+qb", 4);
    s_submit_ok(w, a, "tt-1", "qa", in);
    s_submit_ok(w, a, "tt-2", "qa", in);
    s_submit_ok(w, a, "tt-3", "qb", in);
    s_submit_ok(w, a, "tt-4", "qa", in);
    for (int i = 0; i < 4; i++)
        s_expect(w, h, TQ_CMD_TASK, NULL, in);
    void *t1 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, t1, "hostW", 932, 930, "qa", 4);
    s_expect(w, h, TQ_CMD_REVOKE, "tt-2", in);
    /* t1's REVOKE is unanswered; t2 arrives and gets its own (t1 is not
       asked for a second task, tt-4, in its place) */
    void *t2 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, t2, "hostW", 933, 930, "qb", 4);
    s_expect(w, h, TQ_CMD_REVOKE, "tt-3", in);
    tq_msg_t back = s_msg(TQ_CMD_RETURNED);
    back.attempt = 1;
    back.id = tq_str("tt-2");
    s_send(w, h, &back, NULL, 0);
    back.id = tq_str("tt-3");
    s_send(w, h, &back, NULL, 0);
    s_expect_task(w, t1, "tt-2", 2, in);
    s_expect_task(w, t2, "tt-3", 2, in);
    assert_false(s_recv(w, h, 300, in));
    assert_int_equal(s_counter(w, a, "stolen"), 2);
    free(in);
}

/* A task cancelled while its REVOKE is outstanding: the holder gives it
   back unstarted (RETURNED crosses the cancel) and will never send its
   DONE, so the credit the cancel kept taken comes back with the RETURNED;
   nothing is queued again. */
static void
test_work_stealing_cancelled(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_map_t map;
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *w1 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w1, "hostW", 941, 940, "qx", 2);
    s_submit_ok(w, a, "wx-1", "qx", in);
    s_submit_ok(w, a, "wx-2", "qx", in);
    s_expect_task(w, w1, "wx-1", 1, in);
    s_expect_task(w, w1, "wx-2", 1, in);
    void *w2 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w2, "hostW", 942, 940, "qx", 2);
    s_expect(w, w1, TQ_CMD_REVOKE, "wx-2", in);
    s_send_id(w, a, TQ_CMD_CANCEL, "wx-2");
    s_expect_result(w, a, "wx-2", TQ_STATE_CANCELLED, TQ_ECANCELLED, in);
    tq_msg_t back = s_msg(TQ_CMD_RETURNED);
    back.id = tq_str("wx-2");
    back.attempt = 1;
    s_send(w, w1, &back, NULL, 0);
    s_done(w, w1, "wx-1", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "wx-1", TQ_STATE_SUCCESS, TQ_OK, in);
    /* after the RESULT, so after the RETURNED sent before the DONE */
    s_status(w, a, &map);
    const msgpack_object *me =
        s_find_uint(s_array(map.root, "workers"), "pid", 941);
    assert_non_null(me);
    const msgpack_object *busy = tq_harness_map_get(me, "busy");
    assert_non_null(busy);
    assert_int_equal(busy->type, MSGPACK_OBJECT_BOOLEAN);
    assert_false(busy->via.boolean);
    s_map_free(&map);
    assert_int_equal(s_counter(w, a, "stolen"), 0);
    assert_false(s_recv(w, w2, 300, in));
    free(in);
}

/* ---- 10. the STATUS body (8) ---- */

static void
s_check_keys(const msgpack_object *map, const char *const keys[])
{
    for (size_t i = 0; keys[i]; i++)
        s_uint(map, keys[i]);
}

static void
test_status_body(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_map_t map;
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *child = s_dealer(w, w->broker.workers);
    s_ready(w, child, "hostK", 501, 500, "qk");
    s_submit_ok(w, a, "sk-1", "qk", in);
    s_expect_task(w, child, "sk-1", 1, in);
    s_done(w, child, "sk-1", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 12345);
    s_expect_result(w, a, "sk-1", TQ_STATE_SUCCESS, TQ_OK, in);

    /* an idle child */
    s_status(w, a, &map);
    const msgpack_object *me =
        s_find_uint(s_array(map.root, "workers"), "pid", 501);
    assert_non_null(me);
    const msgpack_object *busy = tq_harness_map_get(me, "busy");
    assert_non_null(busy);
    assert_int_equal(busy->type, MSGPACK_OBJECT_BOOLEAN);
    assert_false(busy->via.boolean);
    s_map_free(&map);

    s_submit_ok(w, a, "sk-2", "qk", in);
    s_expect_task(w, child, "sk-2", 1, in);
    s_submit_ok(w, a, "sk-3", "qk2", in); /* nobody serves qk2 */
    s_qput(w, a, "dq-1", "dk", 7, s_item, sizeof s_item);
    s_expect(w, a, TQ_CMD_REPLY, "dq-1", in);
    tq_harness_sleep_ms(200); /* so that sk-3 has an age */

    s_status(w, a, &map);
    const msgpack_object *root = map.root;
    assert_true(
        tq_harness_str_eq(tq_harness_map_get(root, "version"), "TQP/1"));
    assert_int_equal(s_uint(root, "pid"), (uint64_t)w->broker.pid);
    s_uint(root, "uptime_ms");
    /* args of sk-2 and sk-3, sk-1's value, the item */
    uint64_t memory = s_uint(root, "memory");
    printf("  memory %llu bytes\n", (unsigned long long)memory);
    assert_true(memory >= 2 * sizeof s_args + sizeof s_value + sizeof s_item);

    static const char *const queue_keys[] = {
        "waiting", "running", "delayed", "done", "failed", "oldest_ms", NULL};
    const msgpack_object *queues = s_array(root, "queues");
    const msgpack_object *qk = s_find(queues, "name", "qk");
    const msgpack_object *qk2 = s_find(queues, "name", "qk2");
    assert_non_null(qk);
    assert_non_null(qk2);
    s_check_keys(qk, queue_keys);
    s_check_keys(qk2, queue_keys);
    assert_int_equal(s_uint(qk, "waiting"), 0);
    assert_int_equal(s_uint(qk, "running"), 1);
    assert_int_equal(s_uint(qk, "done"), 1);
    assert_int_equal(s_uint(qk, "failed"), 0);
    assert_int_equal(s_uint(qk, "delayed"), 0);
    assert_int_equal(s_uint(qk2, "waiting"), 1);
    printf("  qk2 oldest_ms %llu\n",
           (unsigned long long)s_uint(qk2, "oldest_ms"));
    assert_true(s_uint(qk2, "oldest_ms") >= 150);

    static const char *const worker_keys[] = {
        "ppid", "pid", "credit", "running", "done", "rss_kb", NULL};
    me = s_find_uint(s_array(root, "workers"), "pid", 501);
    assert_non_null(me);
    s_check_keys(me, worker_keys);
    assert_true(tq_harness_str_eq(tq_harness_map_get(me, "host"), "hostK"));
    assert_int_equal(s_uint(me, "ppid"), 500);
    assert_int_equal(s_uint(me, "credit"), 1);
    assert_int_equal(s_uint(me, "running"), 1);
    assert_int_equal(s_uint(me, "done"), 1);
    assert_int_equal(s_uint(me, "rss_kb"), 12345);
    busy = tq_harness_map_get(me, "busy");
    assert_non_null(busy);
    assert_int_equal(busy->type, MSGPACK_OBJECT_BOOLEAN);
    assert_true(busy->via.boolean);
    const msgpack_object *names = s_array(me, "queues");
    assert_int_equal(names->via.array.size, 1);
    assert_true(tq_harness_str_eq(&names->via.array.ptr[0], "qk"));
    names = s_array(me, "tasks");
    assert_int_equal(names->via.array.size, 1);
    assert_true(tq_harness_str_eq(&names->via.array.ptr[0], "t"));

    const msgpack_object *unserved =
        s_find(s_array(root, "unserved"), "queue", "qk2");
    assert_non_null(unserved);
    assert_true(tq_harness_str_eq(tq_harness_map_get(unserved, "task"), "t"));
    assert_int_equal(s_uint(unserved, "waiting"), 1);

    const msgpack_object *dk =
        s_find(s_array(root, "data_queues"), "name", "dk");
    assert_non_null(dk);
    assert_int_equal(s_uint(dk, "size"), 1);
    assert_int_equal(s_uint(dk, "maxsize"), 7);
    assert_int_equal(s_uint(dk, "getters"), 0);

    static const char *const counter_keys[] = {
        "submitted",  "completed", "failed",  "requeued",     "lost",
        "duplicates", "malformed", "errors",  "dropped",      "results_kept",
        "retried",    "cancelled", "refused", "dead_letters", NULL};
    const msgpack_object *counters = tq_harness_map_get(root, "counters");
    assert_non_null(counters);
    assert_int_equal(counters->type, MSGPACK_OBJECT_MAP);
    s_check_keys(counters, counter_keys);
    assert_int_equal(s_uint(counters, "submitted"), 3);
    assert_int_equal(s_uint(counters, "completed"), 1);
    assert_int_equal(s_uint(counters, "results_kept"), 1);
    s_map_free(&map);
    free(in);
}

/* ---- 8b. looking inside the queue (PROTOCOL.md 5.7) ---- */

/* TASKS lists what the broker holds, waiting ones in dispatch order and
   then the delayed ones; INSPECT shows one task in full, its arguments
   as submitted; an unknown id is UNKNOWN. */
static void
test_tasks_and_inspect(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_map_t map;
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    s_submit_ok(w, a, "in-1", "qi", in);
    s_submit_ok(w, a, "in-2", "qi", in);
    s_submit(w, a, "in-3", "qi", 0, 0, 600000); /* a countdown */
    s_expect(w, a, TQ_CMD_SUBMITTED, "in-3", in);
    s_submit_ok(w, a, "other-1", "qother", in);

    tq_msg_t tasks = s_msg(TQ_CMD_TASKS);
    tasks.id = tq_str("req-1");
    tasks.queue = tq_str("qi");
    tasks.limit = 10;
    s_send(w, a, &tasks, NULL, 0);
    s_expect(w, a, TQ_CMD_REPLY, "req-1", in);
    s_map(in, &map);
    assert_int_equal(s_uint(map.root, "total"), 3);
    const msgpack_object *list = tq_harness_map_get(map.root, "tasks");
    assert_non_null(list);
    assert_int_equal(list->via.array.size, 3);
    static const char *const order[] = {"in-1", "in-2", "in-3"};
    static const int states[] = {TQ_STATE_PENDING, TQ_STATE_PENDING,
                                 TQ_STATE_SCHEDULED};
    for (int i = 0; i < 3; i++) {
        const msgpack_object *e = &list->via.array.ptr[i];
        assert_true(tq_harness_str_eq(tq_harness_map_get(e, "id"), order[i]));
        assert_int_equal(s_uint(e, "state"), states[i]);
        assert_int_equal(s_uint(e, "args_bytes"), sizeof s_args);
        const msgpack_object *args = tq_harness_map_get(e, "args");
        assert_non_null(args);
        assert_int_equal(args->type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(args->via.array.size, 2);
    }
    assert_true(tq_harness_map_get(&list->via.array.ptr[2], "due_ms") != NULL);
    s_map_free(&map);

    /* a limit shows fewer but counts all */
    tasks.id = tq_str("req-2");
    tasks.queue = (tq_str_t){0}; /* every queue */
    tasks.limit = 1;
    s_send(w, a, &tasks, NULL, 0);
    s_expect(w, a, TQ_CMD_REPLY, "req-2", in);
    s_map(in, &map);
    assert_int_equal(s_uint(map.root, "total"), 4);
    assert_int_equal(tq_harness_map_get(map.root, "tasks")->via.array.size, 1);
    s_map_free(&map);

    tq_msg_t inspect = s_msg(TQ_CMD_INSPECT);
    inspect.id = tq_str("in-2");
    s_send(w, a, &inspect, NULL, 0);
    s_expect(w, a, TQ_CMD_REPLY, "in-2", in);
    s_map(in, &map);
    assert_true(tq_harness_str_eq(tq_harness_map_get(map.root, "task"), "t"));
    assert_true(tq_harness_str_eq(tq_harness_map_get(map.root, "queue"), "qi"));
    assert_int_equal(s_uint(map.root, "state"), TQ_STATE_PENDING);
    assert_int_equal(s_uint(map.root, "attempt"), 0);
    assert_int_equal(s_uint(map.root, "args_bytes"), sizeof s_args);
    assert_true(s_uint(map.root, "submitted_ms") > 0);
    s_map_free(&map);
    inspect.id = tq_str("in-none");
    s_send(w, a, &inspect, NULL, 0);
    s_expect(w, a, TQ_CMD_UNKNOWN, "in-none", in);
    free(in);
}

/* ---- 9. a client that does not read (PROTOCOL.md section 10) ---- */

/* A client that submits and never reads its replies: the broker keeps at
   most --max-client-backlog replies for it and drops the rest, counting
   them; its PONG says how many, and asking again (GET wait=true) gets
   every result. So its memory in the broker is bounded and nothing is
   lost. */
static void
test_client_backlog(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    const char *extra[] = {"--max-client-backlog", "20", NULL};
    s_start(w, extra);
    /* the client reads nothing and holds at most one message itself */
    void *a = zmq_socket(w->ctx, ZMQ_DEALER);
    int one = 1, linger = 0, small = 4096;
    zmq_setsockopt(a, ZMQ_RCVHWM, &one, sizeof one);
    zmq_setsockopt(a, ZMQ_RCVBUF, &small, sizeof small);
    zmq_setsockopt(a, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(a, w->broker.clients), 0);
    w->sockets[w->socket_count++] = a;
    void *b = s_dealer(w, w->broker.clients);
    void *child = s_dealer(w, w->broker.workers);
    s_ready(w, child, "hostB", 901, 900, "qb");
    /* each result is 60 kB: the client's TCP buffers fill fast */
    enum { N = 300, VALUE = 60000 };
    static uint8_t value[VALUE];
    value[0] = 0xc6; /* bin 32 */
    uint32_t body = VALUE - 5;
    value[1] = (uint8_t)(body >> 24), value[2] = (uint8_t)(body >> 16);
    value[3] = (uint8_t)(body >> 8), value[4] = (uint8_t)body;
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "bl-%d", i);
        s_submit(w, a, id, "qb", 0, 0, 0);
    }
    for (int i = 0; i < N; i++) {
        s_expect(w, child, TQ_CMD_TASK, NULL, in);
        tq_msg_t done = s_msg(TQ_CMD_DONE);
        done.id = tq_str(in->id);
        done.attempt = in->attempt;
        done.state = TQ_STATE_SUCCESS;
        s_send(w, child, &done, value, sizeof value);
    }
    /* every task ended; replies to the client were dropped, counted */
    s_wait_counter(w, b, "completed", N);
    uint64_t dropped = s_counter(w, b, "dropped");
    printf("  a client that does not read: %llu of its replies dropped\n",
           (unsigned long long)dropped);
    assert_true(dropped > 0);
    /* now it reads: what reached it, then its PONG says how many were
       dropped for it */
    bool got[N] = {false};
    int results = 0;
    /* a PONG may itself meet the full backlog and be dropped while the
       client catches up: it pings again, as a client does while it waits */
    tq_msg_t ping = s_msg(TQ_CMD_PING);
    bool pong = false;
    for (int tries = 0; !pong && tries < 30; tries++) {
        s_send(w, a, &ping, NULL, 0);
        while (!pong && s_recv(w, a, 1000, in)) {
            pong = in->command == TQ_CMD_PONG;
            if (in->command == TQ_CMD_RESULT) {
                int k = atoi(in->id + 3);
                assert_false(got[k]);
                got[k] = true;
                results++;
            }
        }
    }
    assert_true(pong);
    printf("  %d results reached it, PONG says %llu dropped for it\n", results,
           (unsigned long long)in->dropped);
    assert_true(in->dropped > 0);
    assert_true(results < N);
    /* asking again gets every missing result */
    for (int i = 0; i < N; i++)
        if (!got[i]) {
            snprintf(id, sizeof id, "bl-%d", i);
            s_get(w, a, id, true);
            s_expect_result(w, a, id, TQ_STATE_SUCCESS, TQ_OK, in);
            assert_int_equal(in->payload_size, VALUE);
            got[i] = true;
        }
    free(in);
}

/* ---- 12. binary ids (PROTOCOL.md 3) ---- */

/* DONE (SUCCESS, value "ok") or RETURNED of id, the id as a 16-byte bin
   when binary (and it is 32 lowercase hex digits). */
static void
s_answer(s_world_t *w, void *socket, uint8_t command, const char *id,
         uint32_t attempt, bool binary)
{
    tq_msg_t msg = s_msg(command);
    msg.id = tq_str(id);
    msg.id_binary = binary;
    msg.attempt = attempt;
    msg.state = TQ_STATE_SUCCESS;
    bool done = command == TQ_CMD_DONE;
    s_send(w, socket, &msg, done ? s_value : NULL, done ? sizeof s_value : 0);
}

/* Expects TASK id attempt, its id in the given form. */
static void
s_expect_task_form(s_world_t *w, void *socket, const char *id, uint32_t attempt,
                   bool binary, s_in_t *in)
{
    s_expect_task(w, socket, id, attempt, in);
    if (in->id_binary != binary)
        fail_msg("TASK %s: id as %s, expected %s", id,
                 in->id_binary ? "bin" : "str", binary ? "bin" : "str");
}

#define S_HEX1 "00112233445566778899aabbccddeeff"
#define S_HEX2 "ffeeddccbbaa99887766554433221100"
#define S_HEX3 "0123456789abcdef0123456789abcdef"
#define S_HEX4 "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
#define S_HEX5 "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
#define S_HEX6 "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
#define S_UPPER "0123456789ABCDEF0123456789ABCDEF"

/* A child that announces BINARY_IDS gets TASK and REVOKE ids of 32
   lowercase hex digits as bin (a TASK header within libzmq's 33-byte
   inline message), others as str; an older child gets str. Whatever form
   a DONE or RETURNED names its task in, it counts, and clients see ids as
   str. */
static void
test_binary_ids(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    void *nw = s_dealer(w, w->broker.workers);
    s_ready_features(w, nw, "hostB", 951, 950, "qb", 4,
                     TQ_FEATURE_RETURNS | TQ_FEATURE_BINARY_IDS);
    void *old = s_dealer(w, w->broker.workers);
    s_ready_features(w, old, "hostB", 952, 950, "qs", 4, TQ_FEATURE_RETURNS);

    /* bin only for 32 lowercase hex digits */
    s_submit_ok(w, a, S_HEX1, "qb", in);
    s_expect_task_form(w, nw, S_HEX1, 1, true, in);
    printf("  TASK header with a bin id: %zu bytes\n", in->header_size);
    assert_true(in->header_size <= 33);
    s_submit_ok(w, a, "bn-1", "qb", in);
    s_expect_task_form(w, nw, "bn-1", 1, false, in);
    s_submit_ok(w, a, S_UPPER, "qb", in);
    s_expect_task_form(w, nw, S_UPPER, 1, false, in);
    /* its DONEs, in the form it got them or not, end the tasks */
    s_answer(w, nw, TQ_CMD_DONE, S_HEX1, 1, true);
    s_expect_result(w, a, S_HEX1, TQ_STATE_SUCCESS, TQ_OK, in);
    assert_false(in->id_binary);
    assert_int_equal(in->payload_size, sizeof s_value);
    assert_memory_equal(in->payload, s_value, sizeof s_value);
    s_answer(w, nw, TQ_CMD_DONE, "bn-1", 1, true); /* goes as str */
    s_expect_result(w, a, "bn-1", TQ_STATE_SUCCESS, TQ_OK, in);
    s_answer(w, nw, TQ_CMD_DONE, S_UPPER, 1, false);
    s_expect_result(w, a, S_UPPER, TQ_STATE_SUCCESS, TQ_OK, in);
    s_submit_ok(w, a, S_HEX3, "qb", in);
    s_expect_task_form(w, nw, S_HEX3, 1, true, in);
    s_answer(w, nw, TQ_CMD_DONE, S_HEX3, 1, false);
    s_expect_result(w, a, S_HEX3, TQ_STATE_SUCCESS, TQ_OK, in);

    /* an older child: str; its DONE is read in either form */
    s_submit_ok(w, a, S_HEX2, "qs", in);
    s_expect_task_form(w, old, S_HEX2, 1, false, in);
    s_answer(w, old, TQ_CMD_DONE, S_HEX2, 1, true);
    s_expect_result(w, a, S_HEX2, TQ_STATE_SUCCESS, TQ_OK, in);

    /* REVOKE as bin, RETURNED as bin: the task moves with a new lease */
    s_submit_ok(w, a, S_HEX4, "qb", in);
    s_submit_ok(w, a, S_HEX5, "qb", in);
    s_expect_task_form(w, nw, S_HEX4, 1, true, in);
    s_expect_task_form(w, nw, S_HEX5, 1, true, in);
    void *nw2 = s_dealer(w, w->broker.workers);
    s_ready_features(w, nw2, "hostB", 953, 950, "qb", 4,
                     TQ_FEATURE_RETURNS | TQ_FEATURE_BINARY_IDS);
    s_expect(w, nw, TQ_CMD_REVOKE, S_HEX5, in);
    assert_true(in->id_binary);
    assert_int_equal(in->attempt, 1);
    s_answer(w, nw, TQ_CMD_RETURNED, S_HEX5, 1, true);
    s_expect_task_form(w, nw2, S_HEX5, 2, true, in);
    s_answer(w, nw2, TQ_CMD_DONE, S_HEX5, 2, true);
    s_expect_result(w, a, S_HEX5, TQ_STATE_SUCCESS, TQ_OK, in);
    s_answer(w, nw, TQ_CMD_DONE, S_HEX4, 1, true);
    s_expect_result(w, a, S_HEX4, TQ_STATE_SUCCESS, TQ_OK, in);

    /* a client may name a task by a bin id too; answers carry str */
    tq_msg_t msg = s_msg(TQ_CMD_SUBMIT);
    msg.id = tq_str(S_HEX6);
    msg.id_binary = true;
    msg.task = tq_str("t");
    msg.queue = tq_str("qs");
    s_send(w, a, &msg, s_args, sizeof s_args);
    s_expect(w, a, TQ_CMD_SUBMITTED, S_HEX6, in);
    assert_false(in->id_binary);
    s_expect_task_form(w, old, S_HEX6, 1, false, in);
    s_answer(w, old, TQ_CMD_DONE, S_HEX6, 1, false);
    s_expect_result(w, a, S_HEX6, TQ_STATE_SUCCESS, TQ_OK, in);

    assert_int_equal(s_counter(w, a, "completed"), 8);
    assert_int_equal(s_counter(w, a, "duplicates"), 0);
    assert_int_equal(s_counter(w, a, "stolen"), 1);
    assert_int_equal(s_counter(w, a, "malformed"), 0);
    free(in);
}

/* ---- 13. BATCH to children (PROTOCOL.md 5.9) ---- */

/* Receives the next message on a child's socket: it must be a BATCH of
   TASKs of the given ids, in that order, each attempt 1 with s_args. */
static void
s_expect_task_batch(s_world_t *w, void *socket, const char *const ids[],
                    uint32_t n)
{
    zmq_pollitem_t item = {socket, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, w->wait_ms) != 1)
        fail_msg("expected a BATCH of %u TASKs: nothing in %d ms", n,
                 w->wait_ms);
    tq_frames_t frames;
    tq_frames_init(&frames);
    assert_int_equal(tq_wire_recv(socket, &frames, false, 0), TQ_OK);
    tq_msg_t *msg = calloc(1, sizeof *msg);
    assert_non_null(msg);
    const char *reason = NULL;
    assert_int_equal(tq_wire_decode(&frames, msg, &reason), TQ_OK);
    if (msg->command != TQ_CMD_BATCH)
        fail_msg("expected a BATCH of %u TASKs, got %s", n,
                 tq_proto_command_name(msg->command));
    assert_int_equal(msg->count, n);
    tq_batch_reader_t r;
    tq_batch_reader_init(&r, msg, zmq_msg_data(&frames.payload),
                         zmq_msg_size(&frames.payload));
    for (uint32_t i = 0; i < n; i++) {
        const void *data;
        size_t size;
        bool has;
        assert_int_equal(tq_batch_next(&r, msg, &data, &size, &has, &reason),
                         TQ_OK);
        assert_int_equal(msg->command, TQ_CMD_TASK);
        if (!tq_str_eq(msg->id, ids[i]))
            fail_msg("sub-message %u: TASK %.*s, expected %s", i,
                     (int)msg->id.len, msg->id.ptr, ids[i]);
        assert_int_equal(msg->attempt, 1);
        assert_true(has);
        assert_int_equal(size, sizeof s_args);
        assert_memory_equal(data, s_args, sizeof s_args);
    }
    const void *data;
    size_t size;
    bool has;
    assert_int_equal(tq_batch_next(&r, msg, &data, &size, &has, &reason),
                     TQ_BATCH_END);
    free(msg);
    tq_frames_close(&frames);
}

/* A child that announces BATCH (READY 0x4) gets the TASKs of one dispatch
   pass in one BATCH, in dispatch order, each answered by its own DONE; a
   child that does not gets each TASK alone. STATUS counts the batches
   sent to children. */
static void
test_batch_to_child(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, NULL);
    void *a = s_dealer(w, w->broker.clients);
    /* queued before the child comes: its first dispatch is one pass */
    const char *const ids[] = {"bt-1", "bt-2", "bt-3", "bt-4"};
    for (int i = 0; i < 4; i++)
        s_submit_ok(w, a, ids[i], "qb", in);
    void *child = s_dealer(w, w->broker.workers);
    s_ready_features(w, child, "hostB", 1301, 1300, "qb", 4,
                     TQ_FEATURE_RETURNS | TQ_FEATURE_BATCH);
    s_expect_task_batch(w, child, ids, 4);
    for (int i = 0; i < 4; i++)
        s_done(w, child, ids[i], 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    for (int i = 0; i < 4; i++)
        s_expect_result(w, a, ids[i], TQ_STATE_SUCCESS, TQ_OK, in);
    assert_int_equal(s_counter(w, a, "child_batches_out"), 1);
    assert_int_equal(s_counter(w, a, "child_batched_out"), 4);

    /* the same for a child without the bit: lone TASKs */
    const char *const old_ids[] = {"bo-1", "bo-2", "bo-3"};
    for (int i = 0; i < 3; i++)
        s_submit_ok(w, a, old_ids[i], "qo", in);
    void *old = s_dealer(w, w->broker.workers);
    s_ready_features(w, old, "hostB", 1302, 1300, "qo", 3, TQ_FEATURE_RETURNS);
    for (int i = 0; i < 3; i++)
        s_expect_task(w, old, old_ids[i], 1, in);
    for (int i = 0; i < 3; i++)
        s_done(w, old, old_ids[i], 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    for (int i = 0; i < 3; i++)
        s_expect_result(w, a, old_ids[i], TQ_STATE_SUCCESS, TQ_OK, in);
    assert_int_equal(s_counter(w, a, "child_batches_out"), 1);
    assert_int_equal(s_counter(w, a, "child_batched_out"), 4);

    /* a single TASK to a child that takes BATCH goes as itself */
    s_submit_ok(w, a, "bt-5", "qb", in);
    s_expect_task(w, child, "bt-5", 1, in);
    s_done(w, child, "bt-5", 1, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    s_expect_result(w, a, "bt-5", TQ_STATE_SUCCESS, TQ_OK, in);
    assert_int_equal(s_counter(w, a, "child_batches_out"), 1);
    assert_int_equal(s_counter(w, a, "completed"), 8);
    assert_int_equal(s_counter(w, a, "duplicates"), 0);
    free(in);
}

/* A BATCH the broker cannot hand to a child whose connection is gone
   leaves every TASK in it as a refused lone TASK: back at the front of
   its lane with its attempt (nobody got it), uncharged; the child gets
   nothing more, and its LOST charges only the task it was running. */
static void
test_batch_to_gone_child(void **state)
{
    s_world_t *w = *state;
    s_in_t *in = malloc(sizeof *in);
    assert_non_null(in);
    s_start(w, (const char *[]){"--max-lost", "1", NULL});
    void *a = s_dealer(w, w->broker.clients);
    void *sup = s_supervisor(w, "hostG", 1400, true, in);
    void *child = zmq_socket(w->ctx, ZMQ_DEALER);
    assert_non_null(child);
    int linger = 0;
    zmq_setsockopt(child, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(child, w->broker.workers), 0);
    s_ready_features(w, child, "hostG", 1401, 1400, "qg", 1000,
                     TQ_FEATURE_RETURNS | TQ_FEATURE_BATCH);
    s_submit_ok(w, a, "ug-1", "qg", in);
    s_expect_task(w, child, "ug-1", 1, in);
    zmq_close(child); /* it died running ug-1 */
    /* tasks for it, three at a time (one burst: one BATCH, mostly),
       until a send finds its connection gone */
    uint64_t dropped = s_counter(w, a, "dropped");
    enum { MAX = 600 };
    int n = 1;
    while (s_counter(w, a, "dropped") == dropped && n + 3 <= MAX) {
        int first = n + 1;
        for (int k = 0; k < 3; k++) {
            char id[32];
            snprintf(id, sizeof id, "ug-%d", ++n);
            s_submit(w, a, id, "qg", 0, 0, 0);
        }
        for (int k = first; k <= n; k++)
            s_expect(w, a, TQ_CMD_SUBMITTED, NULL, in);
        tq_harness_sleep_ms(10); /* bounded: 2 s in all */
    }
    uint64_t refused = s_counter(w, a, "dropped") - dropped;
    assert_true(refused > 0);
    s_lost(w, sup, 1401, TQ_ELOST, "killed by SIGSEGV");
    s_expect_result(w, a, "ug-1", TQ_STATE_FAILURE, TQ_ELOST, in);
    /* every other task runs once on the next child: those in the refused
       batch (and any after it) with their first attempt, those the dead
       child got before with their second; none charged */
    void *w2 = s_dealer(w, w->broker.workers);
    s_ready_credit(w, w2, "hostG", 1402, 1400, "qg", MAX);
    bool seen[MAX + 1] = {false};
    uint64_t first_attempts = 0;
    int last_second = 0, first_first = MAX + 1;
    for (int i = 2; i <= n; i++) {
        s_expect(w, w2, TQ_CMD_TASK, NULL, in);
        int k = 0;
        assert_int_equal(sscanf(in->id, "ug-%d", &k), 1);
        assert_true(k >= 2 && k <= n && !seen[k]);
        seen[k] = true;
        assert_true(in->attempt == 1 || in->attempt == 2);
        if (in->attempt == 1) {
            first_attempts++;
            if (k < first_first)
                first_first = k;
        } else if (k > last_second)
            last_second = k;
        s_done(w, w2, in->id, in->attempt, TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    }
    for (int i = 2; i <= n; i++)
        s_expect(w, a, TQ_CMD_RESULT, NULL, in);
    printf("  %d task(s) sent after the child died, %llu in refused "
           "sends, %llu back with their first attempt\n",
           n - 1, (unsigned long long)refused,
           (unsigned long long)first_attempts);
    assert_true(first_attempts >= refused);
    /* the refused ones were the last dispatched to it */
    assert_true(last_second < first_first);
    assert_int_equal(s_counter(w, a, "dead_letters"), 1);
    assert_int_equal(s_counter(w, a, "completed"), (uint64_t)(n - 1));
    assert_int_equal(s_counter(w, a, "duplicates"), 0);
    free(in);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_data_queues, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_max_queue, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_max_client_tasks, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_cancel, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_before_supervisor, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_leases, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_lost_names_task, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_lost_charges, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_lost_after_unreachable, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_retries, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_countdown, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_purge, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_host_liveness, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_stall_in_pass, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_status_body, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_work_stealing, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_work_stealing_started, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_work_stealing_old_child, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_client_backlog, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_tasks_and_inspect, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_work_stealing_two_takers, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_work_stealing_cancelled, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_binary_ids, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_batch_to_child, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_batch_to_gone_child, s_setup,
                                        s_teardown),
    };
    tq_harness_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
