/* test_worker_failover.c - end to end, a worker host given several
   brokers (tq-worker --broker A,B; PROTOCOL.md 12): it moves past a
   standby (ERROR TQ_ESTANDBY) and past a silent endpoint to a real
   broker; when its broker is killed it moves to a fresh broker on the
   same store, which finishes the recovered tasks, and wraps around to
   the first again; a child that finishes its task while the host moves
   announces itself to the new broker with that task and sends its DONE
   there; a bad list is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tq_fake_broker.h"
#include "tq_harness.h"
#include "tq_proto.h"
#include "tq_wire.h"

#define S_GET_MS 60000 /* bound on any get() expected to end */
#define S_MOVE_MS 30000 /* bound on a host's move to another broker */

/* ---- a fake broker on a thread of its own ---------------------------- */

/* How a fake broker answers. */
typedef enum {
    S_STANDBY, /* every message: ERROR TQ_ESTANDBY */
    S_SILENT, /* nothing, ever */
} s_mode_t;

/* A fake broker: a ROUTER on a free loopback port, served by a thread. */
typedef struct {
    s_mode_t mode;
    void *ctx;
    void *router;
    char endpoint[TQ_HARNESS_EP_MAX];
    pthread_t thread;
    atomic_bool stop;
    atomic_int heartbeats; /* HEARTBEAT received */
    atomic_int readies; /* READY received */
    atomic_int standby_errors; /* ERROR TQ_ESTANDBY sent */
} s_fake_t;

static void *
s_fake_serve(void *arg)
{
    s_fake_t *self = arg;
    static _Thread_local tq_msg_t in, out;
    tq_frames_t f;
    tq_frames_init(&f);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    while (!atomic_load(&self->stop)) {
        if (!tq_fake_router_recv(self->router, &f, &in, 50))
            continue;
        if (in.command == TQ_CMD_HEARTBEAT)
            atomic_fetch_add(&self->heartbeats, 1);
        else if (in.command == TQ_CMD_READY)
            atomic_fetch_add(&self->readies, 1);
        if (self->mode != S_STANDBY)
            continue;
        memset(&out, 0, sizeof out);
        out.command = TQ_CMD_ERROR;
        out.code = TQ_ESTANDBY;
        out.error = tq_str("standby: another broker holds the lease");
        out.id = in.command == TQ_CMD_READY ? (tq_str_t){0} : in.id;
        msgpack_sbuffer_clear(&buf);
        if (tq_wire_send_msg(self->router, &f.identity, &out, &buf, NULL,
                             ZMQ_DONTWAIT) == TQ_OK)
            atomic_fetch_add(&self->standby_errors, 1);
    }
    msgpack_sbuffer_destroy(&buf);
    tq_frames_close(&f);
    return NULL;
}

static void
s_fake_start(s_fake_t *self, s_mode_t mode)
{
    memset(self, 0, sizeof *self);
    self->mode = mode;
    self->ctx = zmq_ctx_new();
    assert_non_null(self->ctx);
    self->router =
        tq_harness_router(self->ctx, self->endpoint, sizeof self->endpoint, 0);
    assert_non_null(self->router);
    assert_int_equal(pthread_create(&self->thread, NULL, s_fake_serve, self),
                     0);
}

static void
s_fake_stop(s_fake_t *self)
{
    atomic_store(&self->stop, true);
    pthread_join(self->thread, NULL);
    zmq_close(self->router);
    zmq_ctx_term(self->ctx);
}

/* ---- helpers ----------------------------------------------------------- */

/* Starts tq-worker --broker list -c children [extra...] with its stderr
   on a pipe (*err_fd). */
static pid_t
s_worker(const char *list, const char *children, const char *module,
         int *err_fd)
{
    const char *argv[] = {TQ_WORKER_BIN, "--broker", list,
                          "-c",          children,   module ? "--module" : NULL,
                          module,        NULL};
    pid_t pid = tq_harness_spawn((char *const *)argv, NULL, NULL, err_fd);
    assert_true(pid > 0);
    return pid;
}

/* Stops the worker host (SIGTERM: it drains), and returns what it logged
   (malloc'd); its exit status must be 0. */
static char *
s_worker_stop(pid_t worker, int err_fd)
{
    assert_int_equal(kill(worker, SIGTERM), 0);
    char *err = tq_harness_read_fd(err_fd, 30000); /* EOF: the host is gone */
    close(err_fd);
    int status = 0;
    assert_int_equal(tq_harness_wait_exit(worker, 10000, &status), 0);
    fputs(err, stdout);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    return err;
}

/* Runs n tq.echo tasks on client, all at once; returns how many came
   back with their own argument. */
static int
s_echo_many(tq_client_t *client, int n)
{
    tq_result_t **r = calloc((size_t)n, sizeof *r);
    assert_non_null(r);
    for (int i = 0; i < n; i++)
        assert_non_null(
            r[i] = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)i));
    int ok = 0;
    for (int i = 0; i < n; i++) {
        if (tq_result_get(r[i], S_GET_MS) == TQ_OK) {
            const msgpack_object *v = tq_result_value(r[i]);
            ok += v && v->type == MSGPACK_OBJECT_ARRAY &&
                v->via.array.size == 1 && v->via.array.ptr[0].via.i64 == i;
        }
        tq_result_destroy(&r[i]);
    }
    free(r);
    return ok;
}

/* Starts env's broker, a fake broker in mode and a host of 2 children on
   the list "fake,real"; returns the host's pid (its stderr on *err_fd)
   once both children are listed on the real broker. */
static pid_t
s_behind_fake(tq_harness_env_t *env, s_fake_t *fake, s_mode_t mode, int *err_fd)
{
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    s_fake_start(fake, mode);
    char list[2 * TQ_HARNESS_EP_MAX + 2];
    snprintf(list, sizeof list, "%s,%s", fake->endpoint, env->broker.workers);
    pid_t worker = s_worker(list, "2", NULL, err_fd);
    assert_int_equal(tq_harness_wait_workers(env->client, 2, worker, S_MOVE_MS),
                     0);
    return worker;
}

/* Stops the host and the fake broker; the host said it left the fake for
   the real broker because the fake "why". */
static void
s_moved(tq_harness_env_t *env, s_fake_t *fake, pid_t worker, int err_fd,
        const char *why)
{
    char *err = s_worker_stop(worker, err_fd);
    s_fake_stop(fake);
    char moved[1024];
    snprintf(moved, sizeof moved, "broker %s %s: moving to %s", fake->endpoint,
             why, env->broker.workers);
    assert_non_null(strstr(err, moved));
    free(err);
}

/* A host whose first broker is a standby (it answers every HEARTBEAT and
   READY with ERROR TQ_ESTANDBY) moves to the second, a real broker:
   both children are listed there and 100 tasks complete; the host says
   it moved because of the standby's answer. */
static void
test_standby_first(void **state)
{
    tq_harness_env_t *env = *state;
    s_fake_t fake;
    int err_fd = -1;
    pid_t worker = s_behind_fake(env, &fake, S_STANDBY, &err_fd);
    int ok = s_echo_many(env->client, 100);
    printf("standby first: %d of 100 tasks done on the second broker; the "
           "standby got %d HEARTBEAT(s), %d READY, sent %d ERROR(s)\n",
           ok, atomic_load(&fake.heartbeats), atomic_load(&fake.readies),
           atomic_load(&fake.standby_errors));
    assert_int_equal(ok, 100);
    /* it was asked first, and answered */
    assert_true(atomic_load(&fake.heartbeats) >= 1);
    assert_true(atomic_load(&fake.standby_errors) >= 1);

    s_moved(env, &fake, worker, err_fd, "is a standby");
}

/* A host whose first broker never answers (a ROUTER that reads and keeps
   quiet) moves to the second after its liveness: both children are
   listed there and 50 tasks complete. */
static void
test_silent_first(void **state)
{
    tq_harness_env_t *env = *state;
    s_fake_t fake;
    int err_fd = -1;
    pid_t worker = s_behind_fake(env, &fake, S_SILENT, &err_fd);
    int ok = s_echo_many(env->client, 50);
    printf("silent first: %d of 50 tasks done on the second broker; the "
           "silent one got %d HEARTBEAT(s)\n",
           ok, atomic_load(&fake.heartbeats));
    assert_int_equal(ok, 50);
    assert_true(atomic_load(&fake.heartbeats) >= 1);
    assert_int_equal(atomic_load(&fake.standby_errors), 0);

    s_moved(env, &fake, worker, err_fd, "silent for 3000 ms");
}

/* ---- a broker killed, a fresh one on the same store --------------------- */

/* STATUS: the default queue's waiting tasks, or -1. */
static int64_t
s_waiting(tq_client_t *client)
{
    return tq_harness_queue_waiting(client, TQ_DEFAULT_QUEUE);
}

/* Starts a broker with the store in dir on fixed endpoints (a few tries:
   the kernel may hold a port a moment after a kill). */
static void
s_broker_on(tq_harness_broker_t *broker, const char *clients,
            const char *workers, const char *dir)
{
    const char *extra[] = {"--data", dir, NULL};
    for (int attempt = 0; attempt < 10; attempt++) {
        if (tq_harness_broker_start_on(broker, clients, workers, extra, NULL) ==
            0)
            return;
        tq_harness_sleep_ms(200);
    }
    fail_msg("no broker on %s / %s", clients, workers);
}

static void
s_kill9(tq_harness_broker_t *broker)
{
    assert_int_equal(kill(broker->pid, SIGKILL), 0);
    int status = tq_harness_broker_stop(broker);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* Executions per index, from test.record's file: counts[i] for i < n;
   returns the lines read. */
static int
s_executions(const char *path, int *counts, int n)
{
    memset(counts, 0, (size_t)n * sizeof *counts);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int lines = 0, i;
    while (fscanf(f, "%d", &i) == 1) {
        lines++;
        if (i >= 0 && i < n)
            counts[i]++;
    }
    fclose(f);
    return lines;
}

/* Waits until test.record's file holds at least want lines. */
static int
s_wait_executions(const char *path, int want, int timeout_ms)
{
    static int counts[1];
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    int lines;
    while ((lines = s_executions(path, counts, 0)) < want &&
           tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(20);
    return lines;
}

/* Broker A (SQLite store in DIR) holds 40 acknowledged tasks of 100 ms,
   a host with --broker A,B runs them; A is killed with SIGKILL mid-run
   and B, a fresh broker on the same DIR, starts: the host moves to B, and
   every task, fetched by id from B, ends SUCCESS with its own index (each
   ran at least once: duplicates are counted and printed). Then B is
   killed and A's endpoints serve again (the same DIR): the host wraps
   around to A, where new tasks complete. */
static void
test_killed_broker_store_takeover(void **state)
{
    (void)state;
    enum { N = 40 };
    char dir[4096], record[4200];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "wfail"), 0);
    snprintf(record, sizeof record, "%s/record", dir);
    tq_harness_broker_t a, b;
    memset(&b, 0, sizeof b);
    const char *extra[] = {"--data", dir, NULL};
    assert_int_equal(tq_harness_broker_start(&a, extra), 0);
    char a_clients[TQ_HARNESS_EP_MAX], a_workers[TQ_HARNESS_EP_MAX];
    snprintf(a_clients, sizeof a_clients, "%s", a.clients);
    snprintf(a_workers, sizeof a_workers, "%s", a.workers);
    char b_clients[TQ_HARNESS_EP_MAX], b_workers[TQ_HARNESS_EP_MAX];
    assert_int_equal(tq_harness_free_endpoint(b_clients, sizeof b_clients), 0);
    assert_int_equal(tq_harness_free_endpoint(b_workers, sizeof b_workers), 0);

    /* N tasks acknowledged (so stored) before any worker runs them */
    tq_client_t *client = tq_client_new(a.clients);
    assert_non_null(client);
    tq_result_t *r[N];
    char ids[N][TQ_PROTO_MAX_ID + 1];
    for (int i = 0; i < N; i++) {
        r[i] = tq_apply_async(client, "test.record", NULL, "isi", (int64_t)i,
                              record, (int64_t)100);
        assert_non_null(r[i]);
        snprintf(ids[i], sizeof ids[i], "%s", tq_result_id(r[i]));
    }
    int64_t deadline = tq_harness_now_ms() + 10000;
    while (s_waiting(client) != N && tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(10);
    /* a later STATUS: handled in a pass after the commit of the SUBMITs */
    assert_int_equal(s_waiting(client), N);

    char list[2 * TQ_HARNESS_EP_MAX + 2];
    snprintf(list, sizeof list, "%s,%s", a_workers, b_workers);
    int err_fd = -1;
    pid_t worker = s_worker(list, "2", TQ_TESTTASKS_SO, &err_fd);
    /* the kill lands mid-run: some ran, most did not */
    assert_true(s_wait_executions(record, 4, S_GET_MS) >= 4);
    s_kill9(&a);
    for (int i = 0; i < N; i++)
        tq_result_destroy(&r[i]);
    tq_client_destroy(&client);

    s_broker_on(&b, b_clients, b_workers, dir);
    client = tq_client_new(b.clients);
    assert_non_null(client);
    assert_int_equal(tq_harness_wait_workers(client, 2, worker, S_MOVE_MS), 0);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        tq_result_t *f = tq_client_fetch(client, ids[i], true);
        assert_non_null(f);
        int rc = tq_result_get(f, S_GET_MS);
        const msgpack_object *v = rc == TQ_OK ? tq_result_value(f) : NULL;
        if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
            v->via.u64 == (uint64_t)i)
            ok++;
        else
            printf("task %d (%s): %s %s\n", i, ids[i], tq_strerror(rc),
                   tq_result_error(f) ? tq_result_error(f) : "");
        tq_result_destroy(&f);
    }
    int counts[N];
    int runs = s_executions(record, counts, N);
    int never = 0;
    for (int i = 0; i < N; i++)
        never += counts[i] == 0;
    printf("broker killed mid-run, a fresh one on its store: %d of %d tasks "
           "SUCCESS, %d executions (%d more than tasks), %d never ran\n",
           ok, N, runs, runs - N, never);
    assert_int_equal(ok, N);
    assert_int_equal(never, 0);
    assert_true(runs >= N);

    /* B goes too, A's endpoints serve again: the host wraps around */
    s_kill9(&b);
    tq_client_destroy(&client);
    s_broker_on(&a, a_clients, a_workers, dir);
    client = tq_client_new(a.clients);
    assert_non_null(client);
    assert_int_equal(tq_harness_wait_workers(client, 2, worker, S_MOVE_MS), 0);
    assert_int_equal(s_echo_many(client, 20), 20);
    tq_client_destroy(&client);

    char *err = s_worker_stop(worker, err_fd);
    char moved[1024];
    snprintf(moved, sizeof moved, "broker %s silent for 3000 ms: moving to %s",
             a_workers, b_workers);
    assert_non_null(strstr(err, moved));
    snprintf(moved, sizeof moved, "broker %s silent for 3000 ms: moving to %s",
             b_workers, a_workers);
    assert_non_null(strstr(err, moved));
    free(err);
    tq_harness_broker_stop(&a);
    tq_harness_kill_all();
    tq_harness_rmtree(dir);
}

/* ---- a task that ends while the host moves ----------------------------- */

/* A fake broker served step by step by the test itself. */
typedef struct {
    void *router;
    char endpoint[TQ_HARNESS_EP_MAX];
    bool standby; /* answer HEARTBEAT with ERROR TQ_ESTANDBY */
    uint64_t pid; /* what its HEARTBEAT replies carry */
    uint64_t session;
    uint64_t last_session; /* what the last HEARTBEAT carried */
    zmq_msg_t child; /* the identity of the last READY's sender */
    char ready_id[TQ_PROTO_MAX_ID + 1]; /* the task the last READY named */
    int readies;
    int standby_errors; /* ERROR TQ_ESTANDBY sent */
    int dones; /* DONE received */
    int pongs; /* PONG received */
    char done_id[TQ_PROTO_MAX_ID + 1]; /* the last DONE's */
    uint32_t done_attempt;
    uint32_t done_state;
    int order; /* counter shared by both fakes: when things came */
    int ready_at; /* order of the last READY */
    int done_at; /* order of the last DONE */
} s_step_t;

static int s_order;

/* Binds a fake on endpoint (a few tries: a port just closed may linger a
   moment). */
static void
s_step_bind_at(void *ctx, s_step_t *self, uint64_t pid, uint64_t session,
               const char *endpoint)
{
    memset(self, 0, sizeof *self);
    self->router = zmq_socket(ctx, ZMQ_ROUTER);
    assert_non_null(self->router);
    int zero = 0;
    zmq_setsockopt(self->router, ZMQ_LINGER, &zero, sizeof zero);
    int rc = -1;
    for (int attempt = 0; attempt < 50 && rc != 0; attempt++)
        if ((rc = zmq_bind(self->router, endpoint)) != 0)
            tq_harness_sleep_ms(100);
    assert_int_equal(rc, 0);
    size_t len = sizeof self->endpoint;
    assert_int_equal(
        zmq_getsockopt(self->router, ZMQ_LAST_ENDPOINT, self->endpoint, &len),
        0);
    zmq_msg_init(&self->child);
    self->pid = pid;
    self->session = session;
    self->last_session = UINT64_MAX;
}

static void
s_step_bind(void *ctx, s_step_t *self, uint64_t pid, uint64_t session)
{
    s_step_bind_at(ctx, self, pid, session, "tcp://127.0.0.1:*");
}

static void
s_step_close(s_step_t *self)
{
    zmq_msg_close(&self->child);
    zmq_close(self->router);
}

static void
s_step_send(s_step_t *self, zmq_msg_t *to, tq_msg_t *out, zmq_msg_t *payload)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    assert_int_equal(tq_wire_send_msg(self->router, to, out, &buf, payload, 0),
                     TQ_OK);
    msgpack_sbuffer_destroy(&buf);
}

/* Serves one message (waits 100 ms at most). */
static void
s_step(s_step_t *self)
{
    tq_frames_t f;
    tq_frames_init(&f);
    static tq_msg_t in, out;
    if (tq_fake_router_recv(self->router, &f, &in, 100)) {
        memset(&out, 0, sizeof out);
        if (in.command == TQ_CMD_HEARTBEAT && self->standby) {
            out.command = TQ_CMD_ERROR;
            out.code = TQ_ESTANDBY;
            out.error = tq_str("standby");
            s_step_send(self, &f.identity, &out, NULL);
            self->standby_errors++;
        } else if (in.command == TQ_CMD_HEARTBEAT) {
            self->last_session = in.session;
            out.command = TQ_CMD_HEARTBEAT;
            out.host = tq_str("fake");
            out.pid = self->pid;
            out.session = self->session;
            s_step_send(self, &f.identity, &out, NULL);
        } else if (in.command == TQ_CMD_READY) {
            self->readies++;
            self->ready_at = ++s_order;
            tq_str_copy(self->ready_id, sizeof self->ready_id, in.id);
            zmq_msg_copy(&self->child, &f.identity);
        } else if (in.command == TQ_CMD_DONE) {
            self->dones++;
            self->done_at = ++s_order;
            tq_str_copy(self->done_id, sizeof self->done_id, in.id);
            self->done_attempt = in.attempt;
            self->done_state = in.state;
        } else if (in.command == TQ_CMD_PONG)
            self->pongs++;
    }
    tq_frames_close(&f);
}

/* Serves a and b until done(arg) holds, for timeout_ms at most. */
static bool
s_steps_until(s_step_t *a, s_step_t *b, bool (*done)(void *), void *arg,
              int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    while (!done(arg) && tq_harness_now_ms() < deadline) {
        s_step(a);
        s_step(b);
    }
    return done(arg);
}

static bool
s_has_ready(void *arg)
{
    return ((s_step_t *)arg)->readies > 0;
}

static bool
s_file_exists(void *arg)
{
    return access((const char *)arg, F_OK) == 0;
}

/* The supervisor sent back the session of b: it took b's answer, and
   signalled its children before. */
static bool
s_back_session(void *arg)
{
    s_step_t *b = arg;
    return b->last_session == b->session;
}

static bool
s_has_done(void *arg)
{
    return ((s_step_t *)arg)->dones > 0;
}

/* Broker A (a fake) gives the host's only child a task that runs until
   the test lets it end; while it runs, A turns standby and the host
   moves to B (a fake too). Once the supervisor took B's answer (it sends
   B's session back), the task may end: the child announces itself to B
   naming the task it still runs, then sends B the task's DONE (SUCCESS,
   the attempt A gave); A gets no DONE. */
static void
test_done_goes_to_new_broker(void **state)
{
    (void)state;
    char dir[4096], started[4200], gate[4200];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "wgate"), 0);
    snprintf(started, sizeof started, "%s/started", dir);
    snprintf(gate, sizeof gate, "%s/gate", dir);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    s_step_t a, b;
    s_step_bind(ctx, &a, 4242, 1);
    s_step_bind(ctx, &b, 5353, 7);
    char list[2 * TQ_HARNESS_EP_MAX + 2];
    snprintf(list, sizeof list, "%s,%s", a.endpoint, b.endpoint);
    int err_fd = -1;
    pid_t worker = s_worker(list, "1", TQ_TESTTASKS_SO, &err_fd);

    /* A serves: the child announces itself there, and gets the task */
    assert_true(s_steps_until(&a, &b, s_has_ready, &a, S_MOVE_MS));
    assert_int_equal(b.readies, 0);
    static tq_msg_t out;
    memset(&out, 0, sizeof out);
    out.command = TQ_CMD_TASK;
    out.id = tq_str("gated-task-1");
    out.task = tq_str("test.gate");
    out.attempt = 3;
    tq_buf_t args = {0};
    assert_int_equal(tq_pack(&args, "ss", started, gate), TQ_OK);
    zmq_msg_t payload;
    zmq_msg_init_size(&payload, args.size);
    memcpy(zmq_msg_data(&payload), args.data, args.size);
    tq_buf_free(&args);
    s_step_send(&a, &a.child, &out, &payload);
    zmq_msg_close(&payload);
    assert_true(s_steps_until(&a, &b, s_file_exists, started, S_MOVE_MS));

    /* A turns standby: the host moves to B, the task still running */
    a.standby = true;
    assert_true(s_steps_until(&a, &b, s_back_session, &b, S_MOVE_MS));
    assert_int_equal(a.dones, 0);
    assert_int_equal(b.dones, 0);

    /* the task ends now: its DONE goes to B, after a READY naming it */
    int fd = open(gate, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_true(s_steps_until(&a, &b, s_has_done, &b, S_GET_MS));
    printf("task ended while the host moved: B got %d READY (last naming "
           "\"%s\") and DONE %s attempt %u state %u; A got %d DONE\n",
           b.readies, b.ready_id, b.done_id, b.done_attempt, b.done_state,
           a.dones);
    assert_true(b.readies >= 1);
    assert_string_equal(b.ready_id, "gated-task-1");
    assert_true(b.ready_at < b.done_at);
    assert_string_equal(b.done_id, "gated-task-1");
    assert_int_equal(b.done_attempt, 3);
    assert_int_equal(b.done_state, TQ_STATE_SUCCESS);
    assert_int_equal(a.dones, 0);

    char *err = s_worker_stop(worker, err_fd);
    char moved[1024];
    snprintf(moved, sizeof moved, "broker %s is a standby: moving to %s",
             a.endpoint, b.endpoint);
    assert_non_null(strstr(err, moved));
    free(err);
    s_step_close(&a);
    s_step_close(&b);
    zmq_ctx_term(ctx);
    tq_harness_rmtree(dir);
}

/* Sends the child that last sent READY to self a TASK: id, task name,
   attempt 1, its arguments packed from fmt. */
static void
s_step_task(s_step_t *self, const char *id, const char *name, const char *fmt,
            ...)
{
    static tq_msg_t out;
    memset(&out, 0, sizeof out);
    out.command = TQ_CMD_TASK;
    out.id = tq_str(id);
    out.task = tq_str(name);
    out.attempt = 1;
    tq_buf_t args = {0};
    va_list ap;
    va_start(ap, fmt);
    assert_int_equal(tq_vpack(&args, fmt, ap), TQ_OK);
    va_end(ap);
    zmq_msg_t payload;
    zmq_msg_init_size(&payload, args.size);
    memcpy(zmq_msg_data(&payload), args.data, args.size);
    tq_buf_free(&args);
    s_step_send(self, &self->child, &out, &payload);
    zmq_msg_close(&payload);
}

static bool
s_has_pong(void *arg)
{
    return ((s_step_t *)arg)->pongs > 0;
}

static bool
s_two_dones(void *arg)
{
    return ((s_step_t *)arg)->dones >= 2;
}

/* Broker A (a fake) gives the host's only child (prefetch 16) a task
   that runs until the test lets it end and two more tasks behind it,
   which the child holds unstarted (a PING after them is answered: it
   read them). A turns standby and the host moves to B: while the first
   task still runs, the child announces itself to B naming only that task
   (PROTOCOL 10: it holds at most the task it runs). The task ends: B gets
   its DONE. Then B's own task runs next and its DONE is B's second: the
   two tasks of A were dropped, never run (their record file never
   written) and never reported, to A or B. */
static void
test_prefetched_dropped_on_move(void **state)
{
    (void)state;
    char dir[4096], started[4200], gate[4200], record[4200];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "wdrop"), 0);
    snprintf(started, sizeof started, "%s/started", dir);
    snprintf(gate, sizeof gate, "%s/gate", dir);
    snprintf(record, sizeof record, "%s/record", dir);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    s_step_t a, b;
    s_step_bind(ctx, &a, 4242, 1);
    s_step_bind(ctx, &b, 5353, 7);
    char list[2 * TQ_HARNESS_EP_MAX + 2];
    snprintf(list, sizeof list, "%s,%s", a.endpoint, b.endpoint);
    int err_fd = -1;
    pid_t worker = s_worker(list, "1", TQ_TESTTASKS_SO, &err_fd);

    assert_true(s_steps_until(&a, &b, s_has_ready, &a, S_MOVE_MS));
    s_step_task(&a, "gated-task-1", "test.gate", "ss", started, gate);
    assert_true(s_steps_until(&a, &b, s_file_exists, started, S_MOVE_MS));
    s_step_task(&a, "prefetched-1", "test.record", "is", (int64_t)1, record);
    s_step_task(&a, "prefetched-2", "test.record", "is", (int64_t)2, record);
    static tq_msg_t ping;
    memset(&ping, 0, sizeof ping);
    ping.command = TQ_CMD_PING;
    s_step_send(&a, &a.child, &ping, NULL);
    assert_true(s_steps_until(&a, &b, s_has_pong, &a, S_MOVE_MS));

    /* A turns standby: the host moves, and the child announces itself to
       B with the running task only, before it ends */
    a.standby = true;
    assert_true(s_steps_until(&a, &b, s_has_ready, &b, S_MOVE_MS));
    assert_string_equal(b.ready_id, "gated-task-1");
    assert_int_equal(access(gate, F_OK), -1); /* still running */
    assert_int_equal(a.dones, 0);
    assert_int_equal(b.dones, 0);

    int fd = open(gate, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_true(s_steps_until(&a, &b, s_has_done, &b, S_GET_MS));
    assert_string_equal(b.done_id, "gated-task-1");
    assert_int_equal(b.done_state, TQ_STATE_SUCCESS);
    assert_true(b.ready_at < b.done_at);

    /* B's task runs next: nothing of A's was left before it */
    s_step_task(&b, "after-move-1", "tq.echo", "i", (int64_t)1);
    assert_true(s_steps_until(&a, &b, s_two_dones, &b, S_GET_MS));
    printf("host moved with 2 tasks prefetched behind a running one: B got "
           "%d READY (last naming \"%s\"), %d DONE (last %s); A got %d "
           "DONE; the prefetched tasks ran %s\n",
           b.readies, b.ready_id, b.dones, b.done_id, a.dones,
           access(record, F_OK) == 0 ? "(record written)" : "never");
    assert_string_equal(b.done_id, "after-move-1");
    assert_int_equal(b.dones, 2);
    assert_int_equal(a.dones, 0);
    assert_int_equal(access(record, F_OK), -1);

    char *err = s_worker_stop(worker, err_fd);
    free(err);
    assert_int_equal(a.dones, 0);
    s_step_close(&a);
    s_step_close(&b);
    zmq_ctx_term(ctx);
    tq_harness_rmtree(dir);
}

/* Broker A (a fake) gives the host's only child a task that runs until
   the test lets it end and two more behind it (read: a PING after them is
   answered). A's socket closes (as a killed broker's kernel closes it)
   and a new A listens on the same endpoint with the same pid and session,
   so the supervisor sees no change: the child sees its connection end
   and, while its task still runs, announces itself to the new A naming
   only that task. The task's DONE goes there; A's next task runs next:
   the two tasks held when the connection ended never ran and were never
   reported. */
static void
test_connection_end_drops_prefetched(void **state)
{
    (void)state;
    char dir[4096], started[4200], gate[4200], record[4200];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "wcut"), 0);
    snprintf(started, sizeof started, "%s/started", dir);
    snprintf(gate, sizeof gate, "%s/gate", dir);
    snprintf(record, sizeof record, "%s/record", dir);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    s_step_t a, none;
    s_step_bind(ctx, &a, 4242, 1);
    s_step_bind(ctx, &none, 1, 1); /* served, never connected to */
    int err_fd = -1;
    pid_t worker = s_worker(a.endpoint, "1", TQ_TESTTASKS_SO, &err_fd);

    assert_true(s_steps_until(&a, &none, s_has_ready, &a, S_MOVE_MS));
    s_step_task(&a, "gated-task-1", "test.gate", "ss", started, gate);
    assert_true(s_steps_until(&a, &none, s_file_exists, started, S_MOVE_MS));
    s_step_task(&a, "prefetched-1", "test.record", "is", (int64_t)1, record);
    s_step_task(&a, "prefetched-2", "test.record", "is", (int64_t)2, record);
    static tq_msg_t ping;
    memset(&ping, 0, sizeof ping);
    ping.command = TQ_CMD_PING;
    s_step_send(&a, &a.child, &ping, NULL);
    assert_true(s_steps_until(&a, &none, s_has_pong, &a, S_MOVE_MS));

    /* the connection ends; the same broker, as far as heartbeats tell */
    char endpoint[TQ_HARNESS_EP_MAX];
    snprintf(endpoint, sizeof endpoint, "%s", a.endpoint);
    s_step_close(&a);
    s_step_bind_at(ctx, &a, 4242, 1, endpoint);
    assert_true(s_steps_until(&a, &none, s_has_ready, &a, S_MOVE_MS));
    assert_string_equal(a.ready_id, "gated-task-1");
    assert_int_equal(access(gate, F_OK), -1); /* still running */
    assert_int_equal(a.dones, 0);

    int fd = open(gate, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_true(s_steps_until(&a, &none, s_has_done, &a, S_GET_MS));
    assert_string_equal(a.done_id, "gated-task-1");
    assert_int_equal(a.done_state, TQ_STATE_SUCCESS);
    s_step_task(&a, "after-cut-1", "tq.echo", "i", (int64_t)1);
    assert_true(s_steps_until(&a, &none, s_two_dones, &a, S_GET_MS));
    printf("connection ended with 2 tasks prefetched behind a running one: "
           "the new A got %d READY (last naming \"%s\"), %d DONE (last "
           "%s); the prefetched tasks ran %s\n",
           a.readies, a.ready_id, a.dones, a.done_id,
           access(record, F_OK) == 0 ? "(record written)" : "never");
    assert_string_equal(a.done_id, "after-cut-1");
    assert_int_equal(a.dones, 2);
    assert_int_equal(access(record, F_OK), -1);
    assert_int_equal(none.readies, 0);

    char *err = s_worker_stop(worker, err_fd);
    free(err);
    s_step_close(&a);
    s_step_close(&none);
    zmq_ctx_term(ctx);
    tq_harness_rmtree(dir);
}

static bool
s_has_standby_error(void *arg)
{
    return ((s_step_t *)arg)->standby_errors > 0;
}

static bool
s_two_readies(void *arg)
{
    return ((s_step_t *)arg)->readies >= 2;
}

/* A host with one broker whose broker turns standby (it lost the lease
   and forgot every child) and then serves again, with the same pid and
   the same session number as before (a broker that demoted itself and
   took the lease back in the same process): the child announces itself
   again, as after a restart; the host never leaves its only broker. */
static void
test_single_broker_standby_then_active(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    s_step_t a, none;
    s_step_bind(ctx, &a, 4242, 1);
    s_step_bind(ctx, &none, 1, 1); /* served, never connected to */
    int err_fd = -1;
    pid_t worker = s_worker(a.endpoint, "1", NULL, &err_fd);
    assert_true(s_steps_until(&a, &none, s_has_ready, &a, S_MOVE_MS));
    assert_true(s_steps_until(&a, &none, s_back_session, &a, S_MOVE_MS));
    assert_int_equal(a.readies, 1);

    a.standby = true;
    assert_true(s_steps_until(&a, &none, s_has_standby_error, &a, S_MOVE_MS));
    assert_int_equal(a.readies, 1);
    a.standby = false;
    a.last_session = UINT64_MAX;
    assert_true(s_steps_until(&a, &none, s_two_readies, &a, S_MOVE_MS));
    assert_true(s_steps_until(&a, &none, s_back_session, &a, S_MOVE_MS));
    printf("one broker, standby then serving again: %d READY, %d ERROR "
           "TQ_ESTANDBY sent\n",
           a.readies, a.standby_errors);
    assert_int_equal(a.readies, 2);
    assert_int_equal(none.readies, 0);

    char *err = s_worker_stop(worker, err_fd);
    assert_non_null(strstr(err, "is a standby: waiting for it to serve"));
    assert_null(strstr(err, "moving to"));
    free(err);
    s_step_close(&a);
    s_step_close(&none);
    zmq_ctx_term(ctx);
}

/* A list with an empty or a bad endpoint is refused at start, naming
   it, exit status 2; the same from TQ_WORKER_BROKER. */
static void
test_bad_list_refused(void **state)
{
    (void)state;
    static const struct {
        const char *list;
        const char *says;
    } cases[] = {
        {"tcp://127.0.0.1:5556,", "an empty endpoint in the list"},
        {"tcp://127.0.0.1:5556,,tcp://127.0.0.1:5557",
         "an empty endpoint in the list"},
        {"tcp://127.0.0.1:5556,127.0.0.1:5557", "no transport"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *argv[] = {TQ_WORKER_BIN, "--broker", cases[i].list, NULL};
        tq_harness_run_t run;
        assert_int_equal(tq_harness_run((char *const *)argv, NULL, 10000, &run),
                         0);
        printf("%s: %s", cases[i].list, run.err);
        assert_int_equal(run.exit_code, 2);
        assert_non_null(strstr(run.err, cases[i].says));
        tq_harness_run_free(&run);
    }
    setenv("TQ_WORKER_BROKER", "tcp://127.0.0.1:5556,", 1);
    const char *argv[] = {TQ_WORKER_BIN, NULL};
    tq_harness_run_t run;
    assert_int_equal(tq_harness_run((char *const *)argv, NULL, 10000, &run), 0);
    unsetenv("TQ_WORKER_BROKER");
    assert_int_equal(run.exit_code, 2);
    assert_non_null(strstr(run.err, "an empty endpoint in the list"));
    tq_harness_run_free(&run);
}

int
main(void)
{
    tq_harness_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_list_refused),
        cmocka_unit_test_setup_teardown(
            test_standby_first, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_silent_first, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test(test_done_goes_to_new_broker),
        cmocka_unit_test(test_prefetched_dropped_on_move),
        cmocka_unit_test(test_connection_end_drops_prefetched),
        cmocka_unit_test(test_single_broker_standby_then_active),
        cmocka_unit_test(test_killed_broker_store_takeover),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
