/* test_result_window.c - without a store, delivered results leave memory
   beyond a window (broker/tq_results.c, tq-broker --result-window): the
   oldest delivered results are forgotten (GET: UNKNOWN), the newest
   stay; a result whose RESULT could not be sent, one nobody was told of,
   dead letters and cancelled tasks keep the TTL; a result's TTL still
   ends it inside the window; with a store nothing joins the window.
   In the broker's process (its functions called directly, a DEALER of
   the test as the client), then through tq-broker with raw clients and a
   worker host. Every check counts; nothing is timed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "tq_broker_core.h"
#include "tq_harness.h"
#include "tq_raw_client.h"

#define S_VALUE 1000 /* bytes of each result value */
#define S_COST (TQB_RESULT_COST + S_VALUE)
#define S_WAIT_MS 30000 /* bound on every wait */

/* ---- in the broker's process ---- */

static tq_broker_t *
s_broker(uint64_t window, const char *data_dir)
{
    tq_broker_config_t config = {
        .result_window = window,
        .data_dir = data_dir,
    };
    tq_broker_t *broker = tq_harness_broker_new(config);
    assert_non_null(broker);
    broker->now_ms = 1000;
    return broker;
}

/* A DEALER with routing id `name` connected to the broker's clients
   endpoint, known to its ROUTER (its first message was received there):
   a RESULT sent to it is handed to libzmq. */
static void *
s_client(tq_broker_t *b, void *ctx, const char *name)
{
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(dealer);
    int zero = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(dealer, ZMQ_ROUTING_ID, name, strlen(name));
    assert_int_equal(zmq_connect(dealer, tq_broker_client_endpoint(b)), 0);
    assert_int_equal(zmq_send(dealer, "hello", 5, 0), 5);
    zmq_pollitem_t item = {b->clients, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&item, 1, S_WAIT_MS), 1);
    char buf[64];
    int more = 1;
    size_t size = sizeof more;
    while (more) {
        assert_true(zmq_recv(b->clients, buf, sizeof buf, 0) >= 0);
        zmq_getsockopt(b->clients, ZMQ_RCVMORE, &more, &size);
    }
    return dealer;
}

static ident_t
s_ident(const char *name)
{
    ident_t ident = {0};
    tqb_ident_set(&ident, name, strlen(name));
    return ident;
}

/* A task id-N held by a child, its submitter `client` (NULL: none). */
static task_t *
s_held(tq_broker_t *b, peer_t *child, const char *id, const char *client)
{
    lane_t *lane =
        tqb_lane(tqb_queue(b, tq_str("q")), tqb_intern(b, tq_str("t")));
    zmq_msg_t args;
    zmq_msg_init_size(&args, 1);
    *(uint8_t *)zmq_msg_data(&args) = 0x90; /* [] */
    task_t *task = tqb_task_new(b, id, lane, &args);
    zmq_msg_close(&args);
    task->rec.seq = ++b->seq;
    tqb_task_move(b, task, TASK_WAITING, NULL);
    tqb_task_move(b, task, TASK_HELD, &(task_move_t){.holder = child});
    if (client) {
        ident_t ident = s_ident(client);
        tqb_task_set_client(b, task, &ident);
        tqb_ident_clear(&ident);
    }
    return task;
}

/* Ends a task with a value of size bytes, every one `fill`. */
static void
s_succeed_with(tq_broker_t *b, task_t *task, size_t size, uint8_t fill)
{
    zmq_msg_t value;
    zmq_msg_init_size(&value, size);
    memset(zmq_msg_data(&value), fill, size);
    tqb_task_final(b, task, TASK_SUCCESS, TQ_OK, NULL, &value);
    zmq_msg_close(&value);
}

/* Ends a task with a value of S_VALUE bytes. */
static void
s_succeed(tq_broker_t *b, task_t *task)
{
    s_succeed_with(b, task, S_VALUE, 0x5a);
}

static peer_t *
s_child(tq_broker_t *b)
{
    zmq_msg_close(&b->frames.identity);
    zmq_msg_init_size(&b->frames.identity, 5);
    memcpy(zmq_msg_data(&b->frames.identity), "child", 5);
    tqb_received(b);
    peer_t *child = tqb_peer_new(b, PEER_CHILD);
    child->credit = 1000;
    return child;
}

static bool
s_known(tq_broker_t *b, const char *id)
{
    return tqb_task_find(b, tq_str(id)) != NULL;
}

/* Ten delivered results in a window of three: the oldest seven are
   forgotten as they are pushed out, the newest three answer; the TTL
   still ends one inside the window. */
static void
test_window_keeps_newest(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    tq_broker_t *b = s_broker(3 * S_COST, NULL);
    void *c1 = s_client(b, ctx, "c1");
    peer_t *child = s_child(b);
    char id[32];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "w-%d", i);
        b->now_ms = 1000 + i; /* each expires after the one before */
        s_succeed(b, s_held(b, child, id, "c1"));
        assert_int_equal(b->window.count, i < 3 ? i + 1 : 3);
        assert_int_equal(b->window.bytes, (uint64_t)b->window.count * S_COST);
    }
    assert_int_equal(b->window.expired, 7);
    assert_int_equal(b->results_kept, 3);
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "w-%d", i);
        assert_int_equal(s_known(b, id), i >= 7);
    }
    assert_int_equal(b->counters.dropped, 0);
    /* the TTL ends a result inside the window as before */
    b->now_ms = tqb_task_find(b, tq_str("w-7"))->expires_ms;
    tqb_expire_results(b);
    assert_false(s_known(b, "w-7"));
    assert_int_equal(b->window.count, 2);
    assert_int_equal(b->window.bytes, 2 * S_COST);
    b->now_ms += 3600 * 1000;
    tqb_expire_results(b);
    assert_int_equal(b->window.count, 0);
    assert_int_equal(b->window.bytes, 0);
    assert_null(b->window.head);
    assert_null(b->window.tail);
    tq_broker_destroy(&b);
    zmq_close(c1);
    zmq_ctx_term(ctx);
}

/* What is not delivered keeps the TTL, however many results pass through
   the window after it: a RESULT that could not be sent (its submitter
   gone, or one waiter gone), a task nobody was told of, a dead letter, a
   cancelled task. A result larger than the window stays until the next
   one comes. */
static void
test_undelivered_stay(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    tq_broker_t *b = s_broker(2 * S_COST, NULL);
    void *c1 = s_client(b, ctx, "c1");
    void *c2 = s_client(b, ctx, "c2");
    peer_t *child = s_child(b);

    s_succeed(b, s_held(b, child, "gone", "ghost")); /* never connected */
    assert_int_equal(b->counters.dropped, 1);
    s_succeed(b, s_held(b, child, "untold", NULL));
    task_t *waited = s_held(b, child, "waiter-gone", "c1");
    ident_t ghost = s_ident("ghost"), two = s_ident("c2");
    tqb_task_add_waiter(b, waited, &ghost);
    s_succeed(b, waited);
    assert_int_equal(b->counters.dropped, 2);
    task_t *dead = s_held(b, child, "dead", "c1");
    tqb_task_final(b, dead, TASK_FAILURE, TQ_ETASK, "boom", NULL);
    task_t *cancelled = s_held(b, child, "cancelled", "c1");
    tqb_task_final(b, cancelled, TASK_CANCELLED, TQ_ECANCELLED, "no", NULL);
    assert_int_equal(b->window.count, 0);

    /* a waiter that is there: delivered to both, it joins the window */
    task_t *both = s_held(b, child, "both", "c1");
    tqb_task_add_waiter(b, both, &two);
    s_succeed(b, both);
    assert_int_equal(b->window.count, 1);
    char id[32];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "w-%d", i);
        s_succeed(b, s_held(b, child, id, "c2"));
    }
    assert_int_equal(b->window.count, 2);
    assert_false(s_known(b, "both"));
    assert_true(s_known(b, "w-9") && s_known(b, "w-8"));
    assert_false(s_known(b, "w-7"));
    const char *kept[] = {"gone", "untold", "waiter-gone", "dead", "cancelled"};
    for (size_t i = 0; i < sizeof kept / sizeof *kept; i++)
        assert_true(s_known(b, kept[i]));
    /* the window's two, and the five kept (a dead letter of TQ_ETASK
       expires after the TTL too) */
    assert_int_equal(b->results_kept, 2 + 5);
    tq_broker_destroy(&b);

    /* a window smaller than one result: it stays until the next */
    b = s_broker(100, NULL);
    zmq_close(c1);
    c1 = s_client(b, ctx, "c1");
    child = s_child(b);
    s_succeed(b, s_held(b, child, "big-0", "c1"));
    assert_int_equal(b->window.count, 1);
    assert_true(s_known(b, "big-0"));
    s_succeed(b, s_held(b, child, "big-1", "c1"));
    assert_int_equal(b->window.count, 1);
    assert_false(s_known(b, "big-0"));
    assert_true(s_known(b, "big-1"));
    tq_broker_destroy(&b);
    tqb_ident_clear(&ghost);
    tqb_ident_clear(&two);
    zmq_close(c1);
    zmq_close(c2);
    zmq_ctx_term(ctx);
}

/* With a store, a delivered result's value leaves memory once the batch
   that stores it commits (beyond the first MiB held) and is read back,
   checksum checked, when asked for; an undelivered one stays. */
static void
test_store_pages_out(void **state)
{
    (void)state;
    char dir[256], path[300];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "window"), 0);
    void *ctx = zmq_ctx_new();
    tq_broker_t *b = s_broker(0, dir);
    void *c1 = s_client(b, ctx, "c1");
    peer_t *child = s_child(b);
    const size_t big = 700 << 10; /* two pass the first MiB */
    task_t *first = s_held(b, child, "r-0", "c1");
    s_succeed_with(b, first, big, 0x10);
    task_t *second = s_held(b, child, "r-1", "c1");
    s_succeed_with(b, second, big, 0x11);
    task_t *gone = s_held(b, child, "r-2", "ghost");
    s_succeed_with(b, gone, big, 0x12);
    /* not before the commit that stores them */
    assert_int_equal(second->payload_at, PAYLOAD_MSG);
    uint64_t memory = b->memory;
    assert_true(tqb_commit_flush(b));
    assert_int_equal(first->payload_at, PAYLOAD_MSG); /* within the MiB */
    assert_int_equal(second->payload_at, PAYLOAD_STORED);
    assert_int_equal(gone->payload_at, PAYLOAD_MSG); /* never delivered */
    assert_int_equal(b->memory, memory - big);
    zmq_msg_t msg;
    const char *why = NULL;
    assert_int_equal(tqb_task_payload(b, second, &msg, &why), 0);
    assert_int_equal(zmq_msg_size(&msg), big);
    const uint8_t *data = zmq_msg_data(&msg);
    assert_true(data[0] == 0x11 && data[big - 1] == 0x11);
    zmq_msg_close(&msg);
    /* damaged on disk: read as such, never as a value */
    snprintf(path, sizeof path, "%s/tq.db", dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE tasks SET result = X'00' "
                                  "WHERE id = 'r-1'",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(tqb_task_payload(b, second, &msg, &why), TQ_ECORRUPT);
    assert_non_null(strstr(why, "result"));
    zmq_msg_close(&msg);
    tq_broker_destroy(&b);
    zmq_close(c1);
    zmq_ctx_term(ctx);
    tq_harness_rmtree(dir);
}

/* With a store every result stays for the TTL (the store keeps it). */
static void
test_store_keeps(void **state)
{
    (void)state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "window"), 0);
    void *ctx = zmq_ctx_new();
    tq_broker_t *b = s_broker(1, dir);
    void *c1 = s_client(b, ctx, "c1");
    peer_t *child = s_child(b);
    char id[32];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "w-%d", i);
        s_succeed(b, s_held(b, child, id, "c1"));
    }
    assert_int_equal(b->window.count, 0);
    assert_int_equal(b->results_kept, 5);
    assert_true(s_known(b, "w-0"));
    tq_broker_destroy(&b);
    zmq_close(c1);
    zmq_ctx_term(ctx);
    tq_harness_rmtree(dir);
}

/* ---- through tq-broker ---- */

static void
s_send(tq_raw_client_t *raw, uint8_t command, const char *id, const char *queue,
       zmq_msg_t *payload, bool wait)
{
    memset(raw->out, 0, sizeof *raw->out);
    raw->out->command = command;
    raw->out->id = tq_str(id);
    if (command == TQ_CMD_SUBMIT) {
        raw->out->task = tq_str("tq.echo");
        raw->out->queue = tq_str(queue);
    }
    raw->out->wait = wait;
    assert_int_equal(
        tq_wire_send_msg(raw->sock, NULL, raw->out, &raw->sbuf, payload, 0),
        TQ_OK);
}

/* Receives until a message of `command` for id (any id if NULL) comes. */
static void
s_expect(tq_raw_client_t *raw, uint8_t command, const char *id)
{
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (tq_harness_now_ms() < deadline) {
        if (!tq_raw_client_recv(raw, 100))
            continue;
        const tq_msg_t *m = raw->in;
        if (m->command == TQ_CMD_SUBMITTED || m->command == TQ_CMD_PONG ||
            m->command == TQ_CMD_STATE) {
            if (m->command != command)
                continue;
        }
        if (id && (m->id.len != strlen(id) || memcmp(m->id.ptr, id, m->id.len)))
            continue;
        assert_int_equal(m->command, command);
        if (command == TQ_CMD_RESULT)
            assert_int_equal(m->state, TQ_STATE_SUCCESS);
        return;
    }
    fail_msg("no %s for %s", tq_proto_command_name(command), id ? id : "-");
}

static void
s_echo_args(zmq_msg_t *msg)
{
    /* [bin of S_VALUE bytes] */
    assert_int_equal(zmq_msg_init_size(msg, S_VALUE + 4), 0);
    uint8_t *p = zmq_msg_data(msg);
    p[0] = 0x91;
    p[1] = 0xc5; /* bin 16 */
    p[2] = (uint8_t)(S_VALUE >> 8);
    p[3] = (uint8_t)S_VALUE;
    memset(p + 4, 0x11, S_VALUE);
}

static uint64_t
s_window(tq_harness_broker_t *broker, const char *key)
{
    tq_client_t *client = tq_client_new(broker->clients);
    assert_non_null(client);
    tq_harness_status_t st;
    assert_int_equal(tq_harness_status(client, &st, S_WAIT_MS), TQ_OK);
    uint64_t value = tq_harness_map_uint(
        tq_harness_map_get(st.root, "result_window"), key, UINT64_MAX);
    tq_harness_status_free(&st);
    tq_client_destroy(&client);
    return value;
}

/* tq-broker --result-window 4K: of ten echoes of 1000 bytes received
   in turn, the oldest answer UNKNOWN, the newest RESULT; a client that
   waited by GET got its RESULT; STATUS shows the window. */
static void
test_broker_window(void **state)
{
    (void)state;
    tq_harness_broker_t broker;
    const char *extra[] = {"--no-persist", "--result-window", "4K", NULL};
    assert_int_equal(tq_harness_broker_start(&broker, extra), 0);
    pid_t host = tq_harness_worker_start(broker.workers, 1, NULL);
    assert_true(host > 0);
    assert_int_equal(s_window(&broker, "limit"), 4096);
    tq_raw_client_t *a = tq_raw_client_new(broker.clients, 0);
    tq_raw_client_t *b = tq_raw_client_new(broker.clients, 0);
    char id[32];
    zmq_msg_t args;
    /* a task another client waits for: it is dispatched only once a
       worker serves queue "later", after that client's GET was taken */
    s_echo_args(&args);
    s_send(a, TQ_CMD_SUBMIT, "waited", "later", &args, false);
    s_expect(a, TQ_CMD_SUBMITTED, "waited");
    s_send(b, TQ_CMD_GET, "waited", NULL, NULL, true);
    s_send(b, TQ_CMD_PING, NULL, NULL, NULL, false);
    s_expect(b, TQ_CMD_PONG, NULL); /* its GET came first */
    const char *later[] = {"--queue", "later", NULL};
    pid_t host2 = tq_harness_worker_start(broker.workers, 1, later);
    assert_true(host2 > 0);
    s_expect(a, TQ_CMD_RESULT, "waited");
    s_expect(b, TQ_CMD_RESULT, "waited");
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "w-%d", i);
        s_echo_args(&args);
        s_send(a, TQ_CMD_SUBMIT, id, TQ_DEFAULT_QUEUE, &args, false);
        s_expect(a, TQ_CMD_RESULT, id);
    }
    /* 4096 bytes hold three results of about 1,140 */
    s_send(a, TQ_CMD_GET, "waited", NULL, NULL, false);
    s_expect(a, TQ_CMD_UNKNOWN, "waited");
    s_send(a, TQ_CMD_GET, "w-0", NULL, NULL, false);
    s_expect(a, TQ_CMD_UNKNOWN, "w-0");
    s_send(a, TQ_CMD_GET, "w-9", NULL, NULL, false);
    s_expect(a, TQ_CMD_RESULT, "w-9");
    s_send(b, TQ_CMD_GET, "w-8", NULL, NULL, true);
    s_expect(b, TQ_CMD_RESULT, "w-8");
    uint64_t count = s_window(&broker, "results");
    uint64_t expired = s_window(&broker, "expired");
    printf("window: %llu results, %llu expired\n", (unsigned long long)count,
           (unsigned long long)expired);
    assert_int_equal(count + expired, 11);
    assert_true(count >= 2 && count <= 3);
    assert_true(s_window(&broker, "bytes") <= 4096);
    tq_raw_client_destroy(&a);
    tq_raw_client_destroy(&b);
    tq_harness_stop(host2);
    tq_harness_stop(host);
    tq_harness_broker_stop(&broker);
}

/* [bin of size bytes, every one fill] */
static void
s_bin_args(zmq_msg_t *msg, size_t size, uint8_t fill)
{
    assert_int_equal(zmq_msg_init_size(msg, size + 6), 0);
    uint8_t *p = zmq_msg_data(msg);
    p[0] = 0x91;
    p[1] = 0xc6; /* bin 32 */
    p[2] = (uint8_t)(size >> 24);
    p[3] = (uint8_t)(size >> 16);
    p[4] = (uint8_t)(size >> 8);
    p[5] = (uint8_t)size;
    memset(p + 6, fill, size);
}

/* tq-broker --data: forty echoes of 64 KiB, delivered; once a later
   submission is acknowledged (its batch committed after theirs) their
   values are on disk only, past the first MiB, and every GET reads its
   own back intact. */
static void
test_broker_store_reads_back(void **state)
{
    (void)state;
    enum { N = 40, SIZE = 64 << 10 };
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "window"), 0);
    tq_harness_broker_t broker;
    const char *extra[] = {"--data", dir, NULL};
    assert_int_equal(tq_harness_broker_start(&broker, extra), 0);
    pid_t host = tq_harness_worker_start(broker.workers, 1, NULL);
    assert_true(host > 0);
    tq_raw_client_t *a = tq_raw_client_new(broker.clients, 0);
    char id[32];
    zmq_msg_t args;
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "s-%d", i);
        s_bin_args(&args, SIZE, (uint8_t)i);
        s_send(a, TQ_CMD_SUBMIT, id, TQ_DEFAULT_QUEUE, &args, false);
        s_expect(a, TQ_CMD_RESULT, id);
    }
    s_bin_args(&args, 1, 0);
    s_send(a, TQ_CMD_SUBMIT, "sync", "nobody", &args, false);
    s_expect(a, TQ_CMD_SUBMITTED, "sync");
    tq_client_t *client = tq_client_new(broker.clients);
    tq_harness_status_t st;
    assert_int_equal(tq_harness_status(client, &st, S_WAIT_MS), TQ_OK);
    uint64_t memory = tq_harness_map_uint(st.root, "memory", UINT64_MAX);
    tq_harness_status_free(&st);
    tq_client_destroy(&client);
    printf("memory with %d results of 64 KiB delivered: %llu bytes\n", N,
           (unsigned long long)memory);
    assert_true(memory <= (1u << 20) + SIZE + 64);
    for (int i = N - 1; i >= 0; i--) {
        snprintf(id, sizeof id, "s-%d", i);
        s_send(a, TQ_CMD_GET, id, NULL, NULL, false);
        s_expect(a, TQ_CMD_RESULT, id);
        const zmq_msg_t *value = &a->frames.payload;
        assert_int_equal(zmq_msg_size(value), SIZE + 6);
        const uint8_t *p = zmq_msg_data((zmq_msg_t *)value);
        assert_true(p[6] == (uint8_t)i && p[SIZE + 5] == (uint8_t)i);
    }
    tq_raw_client_destroy(&a);
    tq_harness_stop(host);
    tq_harness_broker_stop(&broker);
    tq_harness_rmtree(dir);
}

/* Bad sizes are refused with a clear error. */
static void
test_option(void **state)
{
    (void)state;
    const char *bad[] = {"", "x", "-1", "12Q", "2T"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *argv[] = {TQ_BROKER_BIN, "--no-persist", "--result-window",
                        (char *)bad[i], NULL};
        tq_harness_run_t run;
        assert_int_equal(tq_harness_run(argv, NULL, S_WAIT_MS, &run), 0);
        assert_int_equal(run.exit_code, 2);
        assert_non_null(strstr(run.err, "--result-window"));
        tq_harness_run_free(&run);
    }
}

int
main(void)
{
    tq_harness_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_keeps_newest),
        cmocka_unit_test(test_undelivered_stay),
        cmocka_unit_test(test_store_keeps),
        cmocka_unit_test(test_store_pages_out),
        cmocka_unit_test(test_broker_window),
        cmocka_unit_test(test_broker_store_reads_back),
        cmocka_unit_test(test_option),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
