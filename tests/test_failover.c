/* test_failover.c - several tq-broker processes on one PostgreSQL store
   (PROTOCOL.md section 12), each test on a private cluster
   (tests/support/tq_pg.c): exactly one broker is active, the other answers
   every request ERROR TQ_ESTANDBY; when the active one is killed the
   standby takes the lease and recovers every acknowledged task; an active
   one frozen past its lease wakes up as a standby that acknowledges and
   dispatches nothing; one that loses its database becomes a standby and
   takes the lease again once the database is back. Requests go over raw DEALER
   sockets, so the test sees exactly what each broker answers. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <zmq.h>

#include "tq/tq_error.h"
#include "tq_harness.h"
#include "tq_pg.h"
#include "tq_proto.h"
#include "tq_wire.h"

#define S_TASKS 200 /* acknowledged tasks carried across a failover */
#define S_WAIT_MS 60000 /* the bound of every wait */
#define S_DUE_MS 8000 /* a countdown that ends while a broker is frozen */

static tq_pg_t *s_pg;
static void *s_ctx;

static int
s_setup(void **state)
{
    (void)state;
    tq_harness_init();
    s_pg = tq_pg_new();
    assert_non_null(s_pg);
    s_ctx = zmq_ctx_new();
    assert_non_null(s_ctx);
    return 0;
}

static int
s_teardown(void **state)
{
    (void)state;
    tq_harness_kill_all();
    zmq_ctx_term(s_ctx);
    s_ctx = NULL;
    tq_pg_destroy(&s_pg);
    return 0;
}

/* ---- brokers ---- */

/* Starts tq-broker on the shared store on fresh ports, its stderr into
   log (for the messages of a failing test). */
static void
s_broker_start(tq_harness_broker_t *broker, const char *log)
{
    const char *extra[] = {"--store", tq_pg_url(s_pg), NULL};
    if (tq_harness_broker_start_on(broker, "tcp://127.0.0.1:*",
                                   "tcp://127.0.0.1:*", extra, log) != 0)
        fail_msg("tq-broker --store did not start (see %s)", log);
}

/* ---- raw requests ---- */

typedef struct {
    uint8_t command;
    uint32_t code;
    uint32_t state;
    char id[TQ_PROTO_MAX_ID + 1];
    char error[256];
    int64_t value; /* RESULT of tq.echo [n]: n; else -1 */
} s_reply_t;

static void *
s_dealer(const char *endpoint)
{
    void *socket = zmq_socket(s_ctx, ZMQ_DEALER);
    assert_non_null(socket);
    int linger = 0;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(socket, endpoint), 0);
    return socket;
}

/* Sends msg, with a payload when its command has one (args: [n]). */
static void
s_send(void *socket, const tq_msg_t *msg, int64_t n)
{
    msgpack_sbuffer buf, args;
    msgpack_sbuffer_init(&buf);
    msgpack_sbuffer_init(&args);
    zmq_msg_t payload;
    bool has = tq_proto_has_payload(msg->command);
    if (has) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &args, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 1);
        msgpack_pack_int64(&pk, n);
        zmq_msg_init_size(&payload, args.size);
        memcpy(zmq_msg_data(&payload), args.data, args.size);
    }
    int rc = tq_wire_send_msg(socket, NULL, msg, &buf, has ? &payload : NULL,
                              ZMQ_DONTWAIT);
    if (has)
        zmq_msg_close(&payload);
    msgpack_sbuffer_destroy(&buf);
    msgpack_sbuffer_destroy(&args);
    assert_int_equal(rc, TQ_OK);
}

/* Receives one reply within timeout_ms. False if none came. */
static bool
s_recv(void *socket, int timeout_ms, s_reply_t *reply)
{
    zmq_pollitem_t item = {socket, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) <= 0)
        return false;
    tq_frames_t frames;
    tq_frames_init(&frames);
    int rc = tq_wire_recv(socket, &frames, false, ZMQ_DONTWAIT);
    tq_msg_t msg;
    const char *reason = NULL;
    if (rc == TQ_OK)
        rc = tq_wire_decode(&frames, &msg, &reason);
    if (rc != TQ_OK) {
        tq_frames_close(&frames);
        fail_msg("undecodable reply: %s", reason ? reason : "frames");
    }
    memset(reply, 0, sizeof *reply);
    reply->command = msg.command;
    reply->code = msg.code;
    reply->state = msg.state;
    reply->value = -1;
    tq_str_copy(reply->id, sizeof reply->id, msg.id);
    tq_str_copy(reply->error, sizeof reply->error, msg.error);
    if (msg.command == TQ_CMD_RESULT && msg.state == TQ_STATE_SUCCESS) {
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        if (msgpack_unpack_next(&up, zmq_msg_data(&frames.payload),
                                zmq_msg_size(&frames.payload),
                                NULL) == MSGPACK_UNPACK_SUCCESS &&
            up.data.type == MSGPACK_OBJECT_ARRAY && up.data.via.array.size == 1)
            reply->value = up.data.via.array.ptr[0].via.i64;
        msgpack_unpacked_destroy(&up);
    }
    tq_frames_close(&frames);
    return true;
}

static tq_msg_t
s_msg(uint8_t command)
{
    tq_msg_t msg;
    memset(&msg, 0, sizeof msg);
    msg.command = command;
    return msg;
}

static tq_msg_t
s_submit_msg(const char *id)
{
    tq_msg_t msg = s_msg(TQ_CMD_SUBMIT);
    msg.id = tq_str(id);
    msg.task = tq_str("tq.echo");
    msg.queue = tq_str(TQ_DEFAULT_QUEUE);
    return msg;
}

static tq_msg_t
s_ready_msg(const char *host, uint64_t pid, const char *task)
{
    static tq_str_t queues[1], tasks[1];
    tq_msg_t msg = s_msg(TQ_CMD_READY);
    msg.host = tq_str(host);
    msg.pid = pid;
    msg.ppid = pid;
    msg.credit = 16;
    queues[0] = tq_str(TQ_DEFAULT_QUEUE);
    tasks[0] = tq_str(task);
    msg.queue_count = 1;
    msg.task_count = 1;
    msg.queues[0] = queues[0];
    msg.tasks[0] = tasks[0];
    msg.features = TQ_FEATURE_RETURNS;
    return msg;
}

/* One request on a fresh connection and its reply (timeout_ms); false if
   none came. */
static bool
s_ask(const char *endpoint, const tq_msg_t *msg, int timeout_ms,
      s_reply_t *reply)
{
    void *socket = s_dealer(endpoint);
    s_send(socket, msg, 0);
    bool got = s_recv(socket, timeout_ms, reply);
    zmq_close(socket);
    return got;
}

/* PING until the broker answers PONG (it is active); the ms it took, or
   -1 when it did not within S_WAIT_MS. */
static int64_t
s_wait_active(const char *clients)
{
    int64_t start = tq_harness_now_ms();
    tq_msg_t ping = s_msg(TQ_CMD_PING);
    while (tq_harness_now_ms() - start < S_WAIT_MS) {
        s_reply_t reply;
        if (s_ask(clients, &ping, 500, &reply) && reply.command == TQ_CMD_PONG)
            return tq_harness_now_ms() - start;
        tq_harness_sleep_ms(50);
    }
    return -1;
}

/* PING until the broker answers ERROR TQ_ESTANDBY; true if it did. */
static bool
s_wait_standby(const char *clients)
{
    int64_t start = tq_harness_now_ms();
    tq_msg_t ping = s_msg(TQ_CMD_PING);
    while (tq_harness_now_ms() - start < S_WAIT_MS) {
        s_reply_t reply;
        if (s_ask(clients, &ping, 500, &reply) &&
            reply.command == TQ_CMD_ERROR && reply.code == TQ_ESTANDBY)
            return true;
        tq_harness_sleep_ms(50);
    }
    return false;
}

/* Submits S_TASKS tasks t-0.. (tq.echo [i]) and waits for every SUBMITTED:
   each is acknowledged, so stored. */
static void
s_submit_acknowledged(const char *clients)
{
    void *socket = s_dealer(clients);
    char id[32];
    for (int i = 0; i < S_TASKS; i++) {
        snprintf(id, sizeof id, "t-%d", i);
        tq_msg_t msg = s_submit_msg(id);
        s_send(socket, &msg, i);
    }
    int acked = 0;
    s_reply_t reply;
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (acked < S_TASKS && tq_harness_now_ms() < deadline &&
           s_recv(socket, 1000, &reply))
        if (reply.command == TQ_CMD_SUBMITTED)
            acked++;
    zmq_close(socket);
    assert_int_equal(acked, S_TASKS);
}

/* GET wait=true for every task on the broker; asserts each ends SUCCESS
   with its own value, once. */
static void
s_collect_all(const char *clients)
{
    void *socket = s_dealer(clients);
    char id[32];
    for (int i = 0; i < S_TASKS; i++) {
        snprintf(id, sizeof id, "t-%d", i);
        tq_msg_t msg = s_msg(TQ_CMD_GET);
        msg.id = tq_str(id);
        msg.wait = true;
        s_send(socket, &msg, 0);
    }
    static bool seen[S_TASKS];
    memset(seen, 0, sizeof seen);
    int done = 0;
    s_reply_t reply;
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (done < S_TASKS && tq_harness_now_ms() < deadline) {
        if (!s_recv(socket, 1000, &reply))
            continue;
        if (reply.command != TQ_CMD_RESULT)
            fail_msg("%s for %s (code %u: %s)",
                     tq_proto_command_name(reply.command), reply.id, reply.code,
                     reply.error);
        int i = atoi(reply.id + 2);
        assert_true(i >= 0 && i < S_TASKS);
        assert_int_equal(reply.state, TQ_STATE_SUCCESS);
        assert_int_equal(reply.value, i);
        assert_false(seen[i]);
        seen[i] = true;
        done++;
    }
    zmq_close(socket);
    assert_int_equal(done, S_TASKS);
}

/* Rows of the store's task table with this id. */
static int
s_stored(const char *id)
{
    PGconn *conn = PQconnectdb(tq_pg_url(s_pg));
    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    const char *values[] = {id};
    PGresult *res =
        PQexecParams(conn, "SELECT count(*) FROM tq_tasks WHERE id = $1", 1,
                     NULL, values, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    int count = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(conn);
    return count;
}

/* The owner of the live lease, "" when it lapsed. */
static void
s_lease_holder(char *out, size_t size)
{
    PGconn *conn = PQconnectdb(tq_pg_url(s_pg));
    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    PGresult *res = PQexec(conn,
                           "SELECT owner FROM tq_lease WHERE"
                           " expires_at > clock_timestamp()");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    snprintf(out, size, "%s", PQntuples(res) ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    PQfinish(conn);
}

static void
s_log_path(char *path, size_t size, const char *tag)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(path, size, "%s/tq-failover-%s-%ld.log",
             tmp && *tmp ? tmp : "/tmp", tag, (long)getpid());
    unlink(path);
}

/* ---- tests ---- */

/* Two brokers on one store: the first takes the lease and is active (its
   STATUS says so, and `tq status` prints it); the second is a standby
   that answers SUBMIT, PING, STATUS, READY and HEARTBEAT with ERROR
   TQ_ESTANDBY (echoing the request's id) and stores nothing. */
static void
test_one_active_one_standby(void **state)
{
    (void)state;
    char log_a[256], log_b[256];
    s_log_path(log_a, sizeof log_a, "a");
    s_log_path(log_b, sizeof log_b, "b");
    tq_harness_broker_t a, b;
    s_broker_start(&a, log_a);
    assert_true(s_wait_active(a.clients) >= 0);
    s_broker_start(&b, log_b);

    s_reply_t reply;
    tq_msg_t submit = s_submit_msg("on-standby");
    assert_true(s_ask(b.clients, &submit, S_WAIT_MS, &reply));
    assert_int_equal(reply.command, TQ_CMD_ERROR);
    assert_int_equal(reply.code, TQ_ESTANDBY);
    assert_string_equal(reply.id, "on-standby");
    print_message("standby: %s\n", reply.error);
    assert_non_null(strstr(reply.error, "standby"));
    static const uint8_t client_commands[] = {TQ_CMD_PING, TQ_CMD_STATUS};
    for (size_t i = 0; i < sizeof client_commands; i++) {
        tq_msg_t msg = s_msg(client_commands[i]);
        assert_true(s_ask(b.clients, &msg, S_WAIT_MS, &reply));
        assert_int_equal(reply.command, TQ_CMD_ERROR);
        assert_int_equal(reply.code, TQ_ESTANDBY);
    }
    tq_msg_t ready = s_ready_msg("fake-host", 4242, "tq.echo");
    assert_true(s_ask(b.workers, &ready, S_WAIT_MS, &reply));
    assert_int_equal(reply.command, TQ_CMD_ERROR);
    assert_int_equal(reply.code, TQ_ESTANDBY);
    tq_msg_t heartbeat = s_msg(TQ_CMD_HEARTBEAT);
    heartbeat.host = tq_str("fake-host");
    heartbeat.pid = 4242;
    assert_true(s_ask(b.workers, &heartbeat, S_WAIT_MS, &reply));
    assert_int_equal(reply.command, TQ_CMD_ERROR);
    assert_int_equal(reply.code, TQ_ESTANDBY);
    assert_int_equal(s_stored("on-standby"), 0);

    /* the active one takes the same SUBMIT */
    assert_true(s_ask(a.clients, &submit, S_WAIT_MS, &reply));
    assert_int_equal(reply.command, TQ_CMD_SUBMITTED);
    assert_int_equal(s_stored("on-standby"), 1);

    /* STATUS of the active one: role and lease */
    tq_client_t *client = tq_client_new(a.clients);
    assert_non_null(client);
    tq_harness_status_t st;
    assert_int_equal(tq_harness_status(client, &st, S_WAIT_MS), TQ_OK);
    assert_true(
        tq_harness_str_eq(tq_harness_map_get(st.root, "role"), "active"));
    const msgpack_object *lease = tq_harness_map_get(st.root, "lease");
    assert_non_null(lease);
    assert_true(tq_harness_map_uint(lease, "epoch", 0) >= 1);
    tq_harness_status_free(&st);
    tq_client_destroy(&client);

    /* tq status prints the role of each */
    char *argv[] = {TQ_CLI_BIN, "status", NULL};
    tq_harness_run_t run;
    int status;
    assert_int_equal(tq_harness_run(argv, a.clients, S_WAIT_MS, &run), 0);
    print_message("tq status (active): %s", run.out);
    assert_int_equal(run.exit_code, 0);
    assert_non_null(strstr(run.out, "role active, lease epoch"));
    tq_harness_run_free(&run);
    assert_int_equal(tq_harness_run(argv, b.clients, S_WAIT_MS, &run), 0);
    print_message("tq status (standby): %s", run.err);
    assert_true(run.exit_code != 0);
    assert_non_null(strstr(run.err, "standby"));
    tq_harness_run_free(&run);

    /* a clean stop lets the lease lapse at once: the standby takes it
       without waiting out the ttl (at once after the stop, the lease is
       lapsed or b's, never still a's) */
    assert_false(tq_pg_lease_lapsed(s_pg));
    char holder[256];
    s_lease_holder(holder, sizeof holder);
    status = tq_harness_broker_stop(&a);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char after[256];
    s_lease_holder(after, sizeof after);
    print_message("lease before the stop: %s; after: %s\n", holder,
                  after[0] ? after : "lapsed");
    assert_string_not_equal(after, holder);
    assert_true(s_wait_active(b.clients) >= 0);
    tq_harness_broker_stop(&b);
    unlink(log_a);
    unlink(log_b);
}

/* kill -9 of the active broker, two standbys: exactly one of them takes
   the lease once it lapses (the other stays a standby), recovers every
   acknowledged task, and a worker host given both standbys' endpoints
   finds it and runs each task once. */
static void
test_kill_active(void **state)
{
    (void)state;
    char log_a[256], log_b[256], log_c[256];
    s_log_path(log_a, sizeof log_a, "a");
    s_log_path(log_b, sizeof log_b, "b");
    s_log_path(log_c, sizeof log_c, "c");
    tq_harness_broker_t a, b, c;
    s_broker_start(&a, log_a);
    assert_true(s_wait_active(a.clients) >= 0);
    s_broker_start(&b, log_b);
    s_broker_start(&c, log_c);
    assert_true(s_wait_standby(b.clients));
    assert_true(s_wait_standby(c.clients));
    s_submit_acknowledged(a.clients);

    kill(a.pid, SIGKILL);
    int64_t killed = tq_harness_now_ms();
    int status = tq_harness_broker_stop(&a);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    tq_harness_broker_t *active = NULL, *standby = NULL;
    tq_msg_t ping = s_msg(TQ_CMD_PING);
    while (!active && tq_harness_now_ms() - killed < S_WAIT_MS) {
        s_reply_t reply;
        if (s_ask(b.clients, &ping, 300, &reply) &&
            reply.command == TQ_CMD_PONG)
            active = &b, standby = &c;
        else if (s_ask(c.clients, &ping, 300, &reply) &&
                 reply.command == TQ_CMD_PONG)
            active = &c, standby = &b;
    }
    assert_non_null(active);
    print_message("failover after kill -9: standby %s answered as active "
                  "%lld ms after the kill\n",
                  active == &b ? "b" : "c",
                  (long long)(tq_harness_now_ms() - killed));
    /* the other one stays a standby (the lease has one holder) */
    assert_true(s_wait_standby(standby->clients));
    assert_true(s_wait_active(active->clients) >= 0);

    char workers[2 * TQ_HARNESS_EP_MAX + 2];
    snprintf(workers, sizeof workers, "%s,%s", b.workers, c.workers);
    pid_t worker = tq_harness_worker_start(workers, 2, NULL);
    assert_true(worker > 0);
    s_collect_all(active->clients);
    tq_harness_stop(worker);
    tq_harness_broker_stop(&b);
    tq_harness_broker_stop(&c);
    unlink(log_a);
    unlink(log_b);
    unlink(log_c);
}

/* SIGSTOP of the active broker past its lease: the standby takes over.
   SIGCONT: the old one finds it lost the lease before it handles or
   dispatches anything: a task whose countdown ran out while it was frozen
   is not sent to the worker child that waits for it there, the SUBMIT
   sent to it meanwhile is neither acknowledged nor stored, and it answers
   TQ_ESTANDBY from then on. Every acknowledged task runs on the new
   active broker. */
static void
test_freeze_active(void **state)
{
    (void)state;
    char log_a[256], log_b[256];
    s_log_path(log_a, sizeof log_a, "a");
    s_log_path(log_b, sizeof log_b, "b");
    tq_harness_broker_t a, b;
    s_broker_start(&a, log_a);
    assert_true(s_wait_active(a.clients) >= 0);
    s_broker_start(&b, log_b);
    assert_true(s_wait_standby(b.clients));

    /* a worker child of the active broker that serves only fake.task */
    void *child = s_dealer(a.workers);
    tq_msg_t ready = s_ready_msg("frozen-host", 4243, "fake.task");
    s_send(child, &ready, 0);
    tq_client_t *probe = tq_client_new(a.clients);
    assert_non_null(probe);
    assert_int_equal(tq_harness_wait_workers(probe, 1, 0, S_WAIT_MS), 0);
    tq_client_destroy(&probe);
    s_submit_acknowledged(a.clients);
    /* a fake.task due S_DUE_MS from now: long after the freeze */
    void *client = s_dealer(a.clients);
    tq_msg_t due = s_submit_msg("due-later");
    due.task = tq_str("fake.task");
    due.delay_ms = S_DUE_MS;
    s_send(client, &due, 1);
    s_reply_t reply;
    assert_true(s_recv(client, S_WAIT_MS, &reply));
    assert_int_equal(reply.command, TQ_CMD_SUBMITTED);
    int64_t submitted = tq_harness_now_ms();

    assert_int_equal(kill(a.pid, SIGSTOP), 0);
    int64_t frozen = tq_harness_now_ms();
    int tasks = 0;
    while (s_recv(child, 0, &reply))
        tasks += reply.command == TQ_CMD_TASK;
    assert_int_equal(tasks, 0); /* not due yet */
    assert_true(s_wait_active(b.clients) >= 0);
    print_message("failover after SIGSTOP: the standby answered as active "
                  "%lld ms after the freeze\n",
                  (long long)(tq_harness_now_ms() - frozen));
    /* a SUBMIT waits for the frozen broker, and the countdown runs out */
    tq_msg_t late = s_submit_msg("late");
    s_send(client, &late, 7);
    while (tq_harness_now_ms() - submitted < S_DUE_MS + 500)
        tq_harness_sleep_ms(50);
    assert_int_equal(kill(a.pid, SIGCONT), 0);

    /* once it answers as a standby, it has handled its wake-up */
    assert_true(s_wait_standby(a.clients));
    int acks = 0;
    while (s_recv(child, 0, &reply))
        tasks += reply.command == TQ_CMD_TASK;
    while (s_recv(client, 0, &reply))
        acks += reply.command == TQ_CMD_SUBMITTED;
    print_message("the old active after waking: %d TASK, %d SUBMITTED\n", tasks,
                  acks);
    assert_int_equal(tasks, 0);
    assert_int_equal(acks, 0);
    assert_int_equal(s_stored("late"), 0);
    /* the same connection, asked again, gets TQ_ESTANDBY */
    s_send(client, &late, 7);
    bool refused = false;
    while (!refused && s_recv(client, S_WAIT_MS, &reply)) {
        assert_int_not_equal(reply.command, TQ_CMD_SUBMITTED);
        refused = reply.command == TQ_CMD_ERROR && reply.code == TQ_ESTANDBY;
    }
    assert_true(refused);
    zmq_close(client);
    zmq_close(child);

    pid_t worker = tq_harness_worker_start(b.workers, 2, NULL);
    assert_true(worker > 0);
    s_collect_all(b.clients);
    assert_int_equal(s_stored("late"), 0);
    assert_int_equal(s_stored("due-later"), 1);
    tq_harness_stop(worker);
    /* the demoted broker, a standby, stops cleanly */
    int status = tq_harness_broker_stop(&a);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    status = tq_harness_broker_stop(&b);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    unlink(log_a);
    unlink(log_b);
}

/* The database goes away under the active broker: its next renewal fails
   and it becomes a standby (it can no longer store anything, so it
   acknowledges nothing); it keeps trying, and once the database is back
   it takes the lease again (its own, or lapsed) and recovers every
   acknowledged task, which a worker then runs. */
static void
test_database_lost_and_back(void **state)
{
    (void)state;
    char log_a[256];
    s_log_path(log_a, sizeof log_a, "a");
    tq_harness_broker_t a;
    s_broker_start(&a, log_a);
    assert_true(s_wait_active(a.clients) >= 0);
    s_submit_acknowledged(a.clients);

    assert_int_equal(tq_pg_stop(s_pg), 0);
    assert_true(s_wait_standby(a.clients));
    s_reply_t reply;
    tq_msg_t submit = s_submit_msg("while-down");
    assert_true(s_ask(a.clients, &submit, S_WAIT_MS, &reply));
    assert_int_equal(reply.command, TQ_CMD_ERROR);
    assert_int_equal(reply.code, TQ_ESTANDBY);
    assert_int_equal(tq_pg_start(s_pg), 0);
    assert_true(s_wait_active(a.clients) >= 0);

    pid_t worker = tq_harness_worker_start(a.workers, 2, NULL);
    assert_true(worker > 0);
    s_collect_all(a.clients);
    assert_int_equal(s_stored("while-down"), 0);
    tq_harness_stop(worker);
    int status = tq_harness_broker_stop(&a);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    unlink(log_a);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_active_one_standby, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_kill_active, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_freeze_active, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_database_lost_and_back, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
