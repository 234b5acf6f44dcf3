/* test_worker_host.c - end to end, the worker host's process hygiene and
   sessions: kill -9 of a supervisor leaves no process of its host behind,
   a cancelled tq.exec task takes every process it started, a broker that
   stopped answering for a while gets every child announced again, a
   child setup that keeps failing stops the host with a clear message,
   tasks do not wake the supervisor one by one, SIGHUP does not kill
   the supervisor, a child answers binary ids in kind, and it takes
   BATCHes of TASKs apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tq_batch.h"
#include "tq_fake_broker.h"
#include "tq_harness.h"
#include "tq_proto.h"
#include "tq_wire.h"

#define S_GET_MS 20000 /* bound on any get() expected to end */
#define S_GONE_MS 10000 /* bound on processes expected to die */
#define S_MAX_PROCS 512

/* One line of /proc/N/stat, the fields we use. */
typedef struct {
    pid_t pid;
    char state; /* R, S, Z ... */
    pid_t ppid;
    pid_t pgrp;
} s_proc_t;

/* Reads every process of the machine into procs (max); returns how many. */
static size_t
s_procs(s_proc_t *procs, size_t max)
{
    size_t n = 0;
    DIR *dir = opendir("/proc");
    assert_non_null(dir);
    struct dirent *e;
    while ((e = readdir(dir)) && n < max) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0)
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        ssize_t len = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (len <= 0)
            continue;
        buf[len] = '\0';
        char *paren = strrchr(buf, ')');
        long ppid, pgrp;
        char state;
        if (!paren ||
            sscanf(paren + 1, " %c %ld %ld", &state, &ppid, &pgrp) != 3)
            continue;
        procs[n++] = (s_proc_t){(pid_t)pid, state, (pid_t)ppid, (pid_t)pgrp};
    }
    closedir(dir);
    return n;
}

/* Live (not zombie) processes of process group pgrp, into pids (max). */
static size_t
s_group(pid_t pgrp, pid_t *pids, size_t max)
{
    static s_proc_t procs[4096];
    size_t n = s_procs(procs, 4096), k = 0;
    for (size_t i = 0; i < n; i++)
        if (procs[i].pgrp == pgrp && procs[i].state != 'Z' && k < max)
            pids[k++] = procs[i].pid;
    return k;
}

/* Adds the live descendants of root (not root) to pids; returns the new
   count. */
static size_t
s_descendants(pid_t root, pid_t *pids, size_t count, size_t max)
{
    static s_proc_t procs[4096];
    size_t n = s_procs(procs, 4096);
    size_t first = count;
    /* breadth first: parents are in pids[first..] as they are found */
    pid_t queue[S_MAX_PROCS];
    size_t head = 0, tail = 0;
    queue[tail++] = root;
    while (head < tail) {
        pid_t parent = queue[head++];
        for (size_t i = 0; i < n; i++)
            if (procs[i].ppid == parent && procs[i].state != 'Z' &&
                count < max && tail < S_MAX_PROCS) {
                pids[count++] = procs[i].pid;
                queue[tail++] = procs[i].pid;
            }
    }
    (void)first;
    return count;
}

/* Waits until none of pids is alive and no live process is in any of the
   groups; returns how many remain (0: all gone). */
static size_t
s_wait_gone(const pid_t *pids, size_t n, const pid_t *groups, size_t ngroups,
            int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    size_t left;
    for (;;) {
        left = 0;
        for (size_t i = 0; i < n; i++)
            left += tq_harness_alive(pids[i]);
        for (size_t g = 0; g < ngroups; g++) {
            pid_t member[8];
            left += s_group(groups[g], member, 8);
        }
        if (left == 0 || tq_harness_now_ms() >= deadline)
            return left;
        tq_harness_sleep_ms(20);
    }
}

/* Waits until process group pgrp has at least want live members. */
static size_t
s_wait_group(pid_t pgrp, size_t want, int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    size_t n;
    pid_t pids[64];
    while ((n = s_group(pgrp, pids, 64)) < want &&
           tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(20);
    return n;
}

/* Runs tq.echo i and checks the value is [i]. */
static void
s_echo_ok(tq_client_t *client, int64_t i)
{
    tq_result_t *r = tq_apply(client, "tq.echo", NULL, S_GET_MS, "i", i);
    assert_non_null(r);
    assert_int_equal(tq_result_code(r), TQ_OK);
    const msgpack_object *v = tq_result_value(r);
    assert_non_null(v);
    assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(v->via.array.ptr[0].via.i64, i);
    tq_result_destroy(&r);
}

/* Two subshells that ignore SIGTERM, each a `sleep 300`, and a shell in a
   session of its own (out of the child's process group) with its `sleep`,
   under a shell that waits for them: per child, its own process, the
   shell and two more in its group, two more out of it. */
#define S_STUBBORN                                                             \
    "(trap '' TERM; sleep 300) & (trap '' TERM; sleep 300) & "                 \
    "setsid sh -c \"trap '' TERM; sleep 300\" </dev/null >/dev/null 2>&1 & "   \
    "wait"

/* kill -9 of the supervisor while every child runs tq.exec S_STUBBORN:
   the supervisor, its children, their shells and every `sleep` are gone
   within a bounded wait, found by pid, process group and parentage. */
static void
test_kill9_leaves_nothing(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *extra[] = {"--allow-exec", NULL};
    pid_t worker = tq_harness_env_add_worker(env, 2, extra, true);
    assert_true(worker > 0);
    pid_t children[2];
    assert_int_equal(tq_harness_children(worker, children, 2), 2);

    tq_result_t *r[2];
    for (int i = 0; i < 2; i++) {
        r[i] = tq_apply_async(env->client, "tq.exec", NULL, "s", S_STUBBORN);
        assert_non_null(r[i]);
    }
    /* both run: each child's group holds the child, sh and two more, and
       two more left it */
    for (int i = 0; i < 2; i++)
        assert_true(s_wait_group(children[i], 4, S_GET_MS) >= 4);
    pid_t pids[S_MAX_PROCS];
    size_t n = 0;
    int64_t deadline = tq_harness_now_ms() + S_GET_MS;
    while ((n = s_descendants(worker, pids, 1, S_MAX_PROCS)) < 1 + 2 * 6 &&
           tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(20);
    pids[0] = worker;
    printf("host: supervisor %d and %zu descendant(s)\n", (int)worker, n - 1);
    assert_true(n >= 1 + 2 * 6);

    assert_int_equal(kill(worker, SIGKILL), 0);
    int status = 0;
    assert_int_equal(tq_harness_wait_exit(worker, S_GONE_MS, &status), 0);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    for (size_t i = 0; i < env->worker_count; i++)
        if (env->workers[i] == worker)
            env->workers[i--] = env->workers[--env->worker_count];
    size_t left = s_wait_gone(pids, n, children, 2, S_GONE_MS);
    if (left)
        printf("%zu process(es) of the host still alive\n", left);
    assert_int_equal(left, 0);
    for (int i = 0; i < 2; i++)
        tq_result_destroy(&r[i]);
}

/* Cancels the tq.exec task `command` running on the only child of a
   fresh worker host and checks that every process of the child's group
   is gone after the grace period, and that a new child serves. */
static void
s_cancel_exec(tq_harness_env_t *env, const char *command, size_t members,
              size_t descendants)
{
    const char *extra[] = {"--allow-exec", NULL};
    pid_t worker = tq_harness_env_add_worker(env, 1, extra, true);
    assert_true(worker > 0);
    pid_t child;
    assert_int_equal(tq_harness_children(worker, &child, 1), 1);
    tq_result_t *r = tq_apply_async(env->client, "tq.exec", NULL, "s", command);
    assert_non_null(r);
    assert_true(s_wait_group(child, members, S_GET_MS) >= members);
    pid_t pids[64];
    size_t n = 0;
    int64_t deadline = tq_harness_now_ms() + S_GET_MS;
    while ((n = s_descendants(child, pids, 0, 64)) < descendants &&
           tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(20);
    assert_true(n >= descendants);
    n = s_group(child, pids + n, 64 - n) + n; /* and the group's */

    assert_int_equal(tq_client_cancel(env->client, tq_result_id(r), 5000),
                     TQ_OK);
    assert_int_equal(tq_result_get(r, S_GET_MS), TQ_ECANCELLED);
    tq_result_destroy(&r);
    size_t left = s_wait_gone(pids, n, &child, 1, S_GONE_MS);
    if (left)
        printf("%zu process(es) of the cancelled task still alive\n", left);
    assert_int_equal(left, 0);
    /* the host goes on with a new child */
    assert_int_equal(tq_harness_wait_workers(env->client, 1, worker, 10000), 0);
    s_echo_ok(env->client, 5);
    assert_int_equal(tq_harness_env_stop_worker(env, worker), 0);
}

/* A cancelled command that ignores SIGTERM, with a subprocess that
   ignores it too: the SIGKILL after the grace takes them all. */
static void
test_cancel_stubborn_command(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    s_cancel_exec(env, "trap '' TERM; sleep 300 & wait", 3, 2);
}

/* A cancelled command that exits on SIGTERM, leaving a subprocess that
   ignores it and holds none of the output pipes: the task ends at once,
   and the subprocess must not outlive it. */
static void
test_cancel_leaves_no_subprocess(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    s_cancel_exec(env,
                  "(trap '' TERM; sleep 300) </dev/null >/dev/null 2>&1 & "
                  "wait",
                  3, 2);
}

/* A cancelled command that started a process in a session of its own
   (out of the child's process group, so no group kill reaches it): its
   parent dies, it comes to the supervisor (a subreaper), which kills it
   and its group when the child ends. */
static void
test_cancel_kills_escaped_process(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    /* tq.exec's sh, the setsid'd sh, its sleep */
    s_cancel_exec(env,
                  "setsid sh -c \"trap '' TERM; sleep 300\" </dev/null "
                  ">/dev/null 2>&1 & wait",
                  2, 3);
}

/* The broker is stopped for 10 s (SIGSTOP) while 400 short tasks run,
   three times the liveness, then goes on (SIGCONT): the host is listed
   again with both children, and every task ends with its result (issue
   12: before, 320 of 400 were stranded with no child listed for 75 s). */
static void
test_broker_pause_reannounce(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    pid_t worker = tq_harness_env_add_worker(env, 2, NULL, true);
    assert_true(worker > 0);
    s_echo_ok(env->client, 1);
    enum { RUNNING = 400 };
    tq_result_t *running[RUNNING];
    for (int i = 0; i < RUNNING; i++)
        running[i] = tq_apply_async(env->client, "tq.sleep", NULL, "d", 0.02);
    /* some are done: the stop lands mid-run */
    assert_int_equal(tq_result_get(running[10], S_GET_MS), TQ_OK);

    assert_int_equal(kill(env->broker.pid, SIGSTOP), 0);
    tq_harness_sleep_ms(10000); /* the stimulus: 10 s of silence */
    assert_int_equal(kill(env->broker.pid, SIGCONT), 0);

    int finished = 0;
    for (int i = 0; i < RUNNING; i++) {
        int rc = tq_result_get(running[i], 120000);
        if (rc == TQ_OK)
            finished++;
        else
            printf("task %d: %s: %s\n", i, tq_strerror(rc),
                   tq_result_error(running[i]));
        tq_result_destroy(&running[i]);
    }
    printf("broker stopped 10 s mid-run: %d of %d tasks done\n", finished,
           RUNNING);
    assert_int_equal(finished, RUNNING);

    assert_int_equal(tq_harness_wait_workers(env->client, 2, worker, 20000), 0);
    enum { N = 50 };
    tq_result_t *r[N];
    for (int i = 0; i < N; i++) {
        r[i] = tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)i);
        assert_non_null(r[i]);
    }
    int done = 0;
    for (int i = 0; i < N; i++) {
        done += tq_result_get(r[i], S_GET_MS) == TQ_OK;
        tq_result_destroy(&r[i]);
    }
    assert_int_equal(done, N);
    /* still listed, both */
    assert_int_equal(tq_harness_wait_workers(env->client, 2, worker, 5000), 0);
}

/* What a fake broker saw. */
typedef struct {
    void *router; /* bound ROUTER the worker host connects to */
    uint64_t session; /* what its HEARTBEAT replies carry */
    int readies; /* READY received */
    pid_t ready_pids[16]; /* their pids, readies of them (16 at most) */
    int heartbeats; /* HEARTBEAT received from the supervisor */
    uint64_t last_session; /* the session the last one carried */
} s_fake_t;

/* Serves the fake broker for one message (waits up to 1 s): answers a
   HEARTBEAT with its own (host "fake", pid 4242, self->session), counts
   READY. */
static void
s_fake_step(s_fake_t *self)
{
    tq_frames_t f;
    tq_frames_init(&f);
    static tq_msg_t in, out;
    if (tq_fake_router_recv(self->router, &f, &in, 1000)) {
        if (in.command == TQ_CMD_READY) {
            if (self->readies < 16)
                self->ready_pids[self->readies] = (pid_t)in.pid;
            self->readies++;
        } else if (in.command == TQ_CMD_HEARTBEAT) {
            self->heartbeats++;
            self->last_session = in.session;
            memset(&out, 0, sizeof out);
            out.command = TQ_CMD_HEARTBEAT;
            out.host = tq_str("fake");
            out.pid = 4242;
            out.session = self->session;
            msgpack_sbuffer buf;
            msgpack_sbuffer_init(&buf);
            assert_int_equal(tq_wire_send_msg(self->router, &f.identity, &out,
                                              &buf, NULL, 0),
                             TQ_OK);
            msgpack_sbuffer_destroy(&buf);
        }
    }
    tq_frames_close(&f);
}

/* Serves until `readies` READY came and a HEARTBEAT carried `session`
   back, for timeout_ms at most. */
static void
s_fake_until(s_fake_t *self, int readies, uint64_t session, int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    self->last_session = UINT64_MAX;
    while ((self->readies < readies || self->last_session != session) &&
           tq_harness_now_ms() < deadline)
        s_fake_step(self);
    assert_int_equal(self->readies, readies);
    assert_int_equal(self->last_session, session);
}

/* Serves until n more HEARTBEATs came, for timeout_ms at most. */
static void
s_fake_heartbeats(s_fake_t *self, int n, int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    int until = self->heartbeats + n;
    while (self->heartbeats < until && tq_harness_now_ms() < deadline)
        s_fake_step(self);
    assert_true(self->heartbeats >= until);
}

/* A broker (here a fake one, a ROUTER of this test) that answers with a
   new session number has forgotten the host: each child sends READY
   again, once; answers in the same session make none. The supervisor
   sends back the last session it got, 0 before any. */
static void
test_session_change_reannounces(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    s_fake_t fake;
    memset(&fake, 0, sizeof fake);
    fake.router = zmq_socket(ctx, ZMQ_ROUTER);
    assert_int_equal(zmq_bind(fake.router, "tcp://127.0.0.1:*"), 0);
    char ep[TQ_HARNESS_EP_MAX];
    size_t len = sizeof ep;
    assert_int_equal(zmq_getsockopt(fake.router, ZMQ_LAST_ENDPOINT, ep, &len),
                     0);
    const char *argv[] = {TQ_WORKER_BIN, "--broker", ep, "-c", "2", NULL};
    pid_t worker = tq_harness_spawn((char *const *)argv, NULL, NULL, NULL);
    assert_true(worker > 0);

    /* session 1: the first answer the host gets; no READY again for it */
    fake.session = 1;
    s_fake_until(&fake, 2, 1, S_GET_MS);
    s_fake_heartbeats(&fake, 2, S_GET_MS);
    assert_int_equal(fake.readies, 2);
    assert_int_equal(fake.last_session, 1);
    pid_t first[2] = {fake.ready_pids[0], fake.ready_pids[1]};
    assert_true(first[0] != first[1]);

    /* session 2: every child once more, the same children */
    fake.session = 2;
    s_fake_until(&fake, 4, 2, S_GET_MS);
    s_fake_heartbeats(&fake, 2, S_GET_MS);
    assert_int_equal(fake.readies, 4);
    for (int i = 2; i < 4; i++)
        assert_true(fake.ready_pids[i] == first[0] ||
                    fake.ready_pids[i] == first[1]);
    assert_true(fake.ready_pids[2] != fake.ready_pids[3]);

    int status = tq_harness_stop(worker);
    assert_true(WIFEXITED(status));
    int linger = 0;
    zmq_setsockopt(fake.router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(fake.router);
    zmq_ctx_term(ctx);
}

/* A fake broker's view of one worker child: the router, the child's
   identity once its READY came, a header buffer. */
typedef struct {
    void *router;
    zmq_msg_t child; /* the child's identity frame */
    msgpack_sbuffer buf;
    tq_frames_t frames; /* the last message's */
    tq_msg_t msg; /* the last message, decoded */
    uint64_t session; /* what its HEARTBEAT replies carry */
    void *ctx;
    uint32_t features; /* what its PONGs say: 0, a broker that takes no
                          BATCH from children (an earlier revision) */
    int pings; /* PINGs from the child, answered */
} s_binfake_t;

/* Binds a fake broker on a free loopback port and starts a worker host
   of one child at `prefetch` on it: the host's pid. */
static pid_t
s_binfake_start(s_binfake_t *self, const char *prefetch)
{
    memset(self, 0, sizeof *self);
    self->session = 1;
    msgpack_sbuffer_init(&self->buf);
    tq_frames_init(&self->frames);
    zmq_msg_init(&self->child);
    self->ctx = zmq_ctx_new();
    assert_non_null(self->ctx);
    self->router = zmq_socket(self->ctx, ZMQ_ROUTER);
    assert_int_equal(zmq_bind(self->router, "tcp://127.0.0.1:*"), 0);
    char ep[TQ_HARNESS_EP_MAX];
    size_t len = sizeof ep;
    assert_int_equal(zmq_getsockopt(self->router, ZMQ_LAST_ENDPOINT, ep, &len),
                     0);
    const char *argv[] = {TQ_WORKER_BIN, "--broker",   ep,       "-c",
                          "1",           "--prefetch", prefetch, NULL};
    pid_t worker = tq_harness_spawn((char *const *)argv, NULL, NULL, NULL);
    assert_true(worker > 0);
    return worker;
}

/* Stops the host (it must exit, not be killed) and the fake broker. */
static void
s_binfake_stop(s_binfake_t *self, pid_t worker)
{
    int status = tq_harness_stop(worker);
    assert_true(WIFEXITED(status));
    zmq_msg_close(&self->child);
    tq_frames_close(&self->frames);
    msgpack_sbuffer_destroy(&self->buf);
    int linger = 0;
    zmq_setsockopt(self->router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(self->router);
    zmq_ctx_term(self->ctx);
}

/* Receives the next message from the host within S_GET_MS, answering the
   supervisor's HEARTBEATs with self->session (the same one: nobody
   announces itself again) and the child's PINGs with PONG (features
   self->features); fails the test if none comes. */
static const tq_msg_t *
s_binfake_next(s_binfake_t *self)
{
    int64_t deadline = tq_harness_now_ms() + S_GET_MS;
    while (tq_harness_now_ms() < deadline) {
        if (!tq_fake_router_recv(self->router, &self->frames, &self->msg, 200))
            continue;
        if (self->msg.command == TQ_CMD_PING) {
            tq_msg_t pong = {.command = TQ_CMD_PONG,
                             .features = self->features};
            assert_int_equal(tq_wire_send_msg(self->router,
                                              &self->frames.identity, &pong,
                                              &self->buf, NULL, 0),
                             TQ_OK);
            self->pings++;
            continue;
        }
        if (self->msg.command != TQ_CMD_HEARTBEAT)
            return &self->msg;
        tq_msg_t out = {.command = TQ_CMD_HEARTBEAT,
                        .host = tq_str("fake"),
                        .pid = 4242,
                        .session = self->session};
        assert_int_equal(tq_wire_send_msg(self->router, &self->frames.identity,
                                          &out, &self->buf, NULL, 0),
                         TQ_OK);
    }
    fail_msg("nothing from the worker host in %d ms", S_GET_MS);
    return NULL;
}

/* Sends TASK (args: a msgpack array, payload bytes) or REVOKE of id to the
   child, the id as bin when binary. */
static void
s_binfake_send(s_binfake_t *self, uint8_t command, const char *id, bool binary,
               const char *task, const void *args, size_t size)
{
    tq_msg_t out = {.command = command,
                    .id = tq_str(id),
                    .id_binary = binary,
                    .task = tq_str(task),
                    .attempt = 1};
    zmq_msg_t payload;
    if (command == TQ_CMD_TASK) {
        assert_int_equal(zmq_msg_init_size(&payload, size), 0);
        memcpy(zmq_msg_data(&payload), args, size);
    }
    assert_int_equal(
        tq_wire_send_msg(self->router, &self->child, &out, &self->buf,
                         command == TQ_CMD_TASK ? &payload : NULL, 0),
        TQ_OK);
    if (command == TQ_CMD_TASK)
        zmq_msg_close(&payload);
}

/* Expects the child's DONE (SUCCESS, value args) or RETURNED for id, its
   id in the given form. */
static void
s_binfake_expect(s_binfake_t *self, uint8_t command, const char *id,
                 bool binary, const void *args, size_t size)
{
    const tq_msg_t *msg = s_binfake_next(self);
    if (msg->command != command || !tq_str_eq(msg->id, id))
        fail_msg("expected %s %s, got %s %.*s", tq_proto_command_name(command),
                 id, tq_proto_command_name(msg->command), (int)msg->id.len,
                 msg->id.ptr ? msg->id.ptr : "");
    if (msg->id_binary != binary)
        fail_msg("%s %s: id as %s, expected %s", tq_proto_command_name(command),
                 id, msg->id_binary ? "bin" : "str", binary ? "bin" : "str");
    assert_int_equal(msg->attempt, 1);
    if (command == TQ_CMD_DONE) {
        assert_int_equal(msg->state, TQ_STATE_SUCCESS);
        assert_int_equal(zmq_msg_size(&self->frames.payload), size);
        assert_memory_equal(zmq_msg_data(&self->frames.payload), args, size);
    }
}

/* The worker child (the real tq-worker, here before a fake broker) says it
   reads binary ids (READY feature 0x2) and answers DONE and RETURNED with
   the id in the form it got it: bin for bin, str for str (even a hex one),
   for tasks run and tasks given back. */
static void
test_child_binary_ids(void **state)
{
    (void)state;
    s_binfake_t fake;
    pid_t worker = s_binfake_start(&fake, "4");

    const tq_msg_t *ready = s_binfake_next(&fake);
    assert_int_equal(ready->command, TQ_CMD_READY);
    assert_true(ready->features & TQ_FEATURE_BINARY_IDS);
    assert_true(ready->features & TQ_FEATURE_RETURNS);
    assert_int_equal(zmq_msg_copy(&fake.child, &fake.frames.identity), 0);

    const uint8_t seven[] = {0x91, 0x07};
    const char *h1 = "00112233445566778899aabbccddeeff";
    const char *h2 = "ffeeddccbbaa99887766554433221100";
    s_binfake_send(&fake, TQ_CMD_TASK, h1, true, "tq.echo", seven,
                   sizeof seven);
    s_binfake_expect(&fake, TQ_CMD_DONE, h1, true, seven, sizeof seven);
    s_binfake_send(&fake, TQ_CMD_TASK, h2, false, "tq.echo", seven,
                   sizeof seven);
    s_binfake_expect(&fake, TQ_CMD_DONE, h2, false, seven, sizeof seven);
    s_binfake_send(&fake, TQ_CMD_TASK, "plain-1", false, "tq.echo", seven,
                   sizeof seven);
    s_binfake_expect(&fake, TQ_CMD_DONE, "plain-1", false, seven, sizeof seven);

    /* a task held behind a running one, asked back by a bin REVOKE: given
       back (RETURNED) if it had not started, else run (DONE); either way
       named as it came, and the running one's DONE too */
    const uint8_t one[] = {0x91, 0x01};
    const char *h3 = "0123456789abcdef0123456789abcdef";
    const char *h4 = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
    s_binfake_send(&fake, TQ_CMD_TASK, h3, true, "tq.sleep", one, sizeof one);
    s_binfake_send(&fake, TQ_CMD_TASK, h4, true, "tq.echo", seven,
                   sizeof seven);
    s_binfake_send(&fake, TQ_CMD_REVOKE, h4, true, NULL, NULL, 0);
    bool done3 = false, answered4 = false, returned4 = false;
    while (!done3 || !answered4) {
        const tq_msg_t *msg = s_binfake_next(&fake);
        assert_true(msg->id_binary);
        if (tq_str_eq(msg->id, h3)) {
            assert_false(done3);
            assert_int_equal(msg->command, TQ_CMD_DONE);
            done3 = true;
        } else {
            assert_true(tq_str_eq(msg->id, h4));
            assert_false(answered4);
            assert_true(msg->command == TQ_CMD_RETURNED ||
                        msg->command == TQ_CMD_DONE);
            answered4 = true;
            returned4 = msg->command == TQ_CMD_RETURNED;
        }
    }
    printf("  the held task was %s\n",
           returned4 ? "given back (RETURNED)" : "run (DONE)");

    /* the broker forgets the host (a new session) while a task with a bin
       id runs: the child announces itself again on a new connection,
       naming the task, and its DONE there names it as str (the new broker
       may not read bin); a DONE before the new READY still goes as bin */
    const char *h5 = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
    const uint8_t three[] = {0x91, 0x03};
    s_binfake_send(&fake, TQ_CMD_TASK, h5, true, "tq.sleep", three,
                   sizeof three);
    fake.session = 2;
    bool again = false;
    for (;;) {
        const tq_msg_t *msg = s_binfake_next(&fake);
        if (msg->command == TQ_CMD_READY) {
            assert_false(again);
            assert_true(msg->features & TQ_FEATURE_BINARY_IDS);
            assert_false(msg->id_binary);
            again = true;
            continue;
        }
        assert_int_equal(msg->command, TQ_CMD_DONE);
        assert_true(tq_str_eq(msg->id, h5));
        assert_int_equal(msg->id_binary, !again);
        printf("  DONE %s the READY on a new connection: id as %s\n",
               again ? "after" : "before", msg->id_binary ? "bin" : "str");
        break;
    }

    s_binfake_stop(&fake, worker);
}

/* Appends a TASK of id (tq.echo of args) to batch b. */
static void
s_batch_task(tq_batch_t *b, const char *id, const void *args, size_t size)
{
    tq_msg_t msg = {.command = TQ_CMD_TASK,
                    .id = tq_str(id),
                    .task = tq_str("tq.echo"),
                    .attempt = 1};
    assert_int_equal(tq_batch_add(b, &msg, args, size, true), TQ_OK);
}

/* Packs [a str of n bytes] into buf; returns its size. */
static size_t
s_args_of(uint8_t *buf, size_t cap, size_t n)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_str(&pk, n);
    for (size_t i = 0; i < n; i++) {
        char c = (char)('a' + i % 26);
        msgpack_pack_str_body(&pk, &c, 1);
    }
    assert_true(sb.size <= cap);
    memcpy(buf, sb.data, sb.size);
    size_t size = sb.size;
    msgpack_sbuffer_destroy(&sb);
    return size;
}

/* A child keeps small arguments in the job and large ones in a message:
   arguments of every size around the line (and past the 4096 bytes a
   value is handed off from), in a BATCH and alone, each come back whole
   in its DONE; a REVOKE in the BATCH takes one back and the others,
   moved up in the queue, keep theirs; more TASKs than the credit grow
   the queue without losing any. */
static void
test_child_args_sizes(void **state)
{
    (void)state;
    s_binfake_t fake;
    pid_t worker = s_binfake_start(&fake, "2");
    const tq_msg_t *ready = s_binfake_next(&fake);
    assert_int_equal(ready->command, TQ_CMD_READY);
    assert_int_equal(zmq_msg_copy(&fake.child, &fake.frames.identity), 0);

    /* str lengths giving arguments of 3, 63, 64, 65, 200 and 5000 bytes
       or so (a str header of 1 to 3 bytes and the array's) */
    static const size_t lens[] = {1, 61, 62, 63, 197, 4996};
    enum { N = sizeof lens / sizeof lens[0] };
    static uint8_t args[N][5100];
    size_t sizes[N];
    char ids[N][16];
    for (int i = 0; i < N; i++) {
        sizes[i] = s_args_of(args[i], sizeof args[i], lens[i]);
        snprintf(ids[i], sizeof ids[i], "sz-%d", i);
    }
    /* one BATCH of them all (three times the credit) and a REVOKE of the
       second: RETURNED at once, the others run in order */
    tq_batch_t b;
    tq_batch_init(&b);
    for (int i = 0; i < N; i++) {
        tq_msg_t msg = {.command = TQ_CMD_TASK,
                        .id = tq_str(ids[i]),
                        .task = tq_str("tq.echo"),
                        .attempt = 1};
        assert_int_equal(tq_batch_add(&b, &msg, args[i], sizes[i], true),
                         TQ_OK);
    }
    tq_msg_t revoke = {
        .command = TQ_CMD_REVOKE, .id = tq_str(ids[1]), .attempt = 1};
    assert_int_equal(tq_batch_add(&b, &revoke, NULL, 0, false), TQ_OK);
    assert_int_equal(tq_wire_send_batch(fake.router, &fake.child, &b, 0),
                     TQ_OK);
    tq_batch_destroy(&b);
    s_binfake_expect(&fake, TQ_CMD_RETURNED, ids[1], false, NULL, 0);
    for (int i = 0; i < N; i++)
        if (i != 1)
            s_binfake_expect(&fake, TQ_CMD_DONE, ids[i], false, args[i],
                             sizes[i]);
    /* the same alone */
    for (int i = 0; i < N; i++) {
        s_binfake_send(&fake, TQ_CMD_TASK, ids[i], false, "tq.echo", args[i],
                       sizes[i]);
        s_binfake_expect(&fake, TQ_CMD_DONE, ids[i], false, args[i], sizes[i]);
    }

    s_binfake_stop(&fake, worker);
}

/* Waits for the child's PONG. */
static void
s_binfake_pong(s_binfake_t *self)
{
    const tq_msg_t *msg = s_binfake_next(self);
    if (msg->command != TQ_CMD_PONG)
        fail_msg("expected PONG, got %s", tq_proto_command_name(msg->command));
}

/* A child runs a job where it stands in its queue: TASKs beyond the
   credit that arrive while a long task runs (the keeper holds the socket:
   it answers a PING) grow the queue twice under the running job, which
   still answers with its own id and value, and the queued jobs run after
   it, in order, each with its own arguments; a job without arguments
   gets the empty array. */
static void
test_child_queue_grows_under_running(void **state)
{
    (void)state;
    s_binfake_t fake;
    pid_t worker = s_binfake_start(&fake, "2");
    const tq_msg_t *ready = s_binfake_next(&fake);
    assert_int_equal(ready->command, TQ_CMD_READY);
    assert_int_equal(zmq_msg_copy(&fake.child, &fake.frames.identity), 0);

    /* tq.sleep [1]: its value is the double 1.0 */
    static const uint8_t sleep_args[] = {0x91, 0x01};
    static const uint8_t slept[] = {0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0};
    s_binfake_send(&fake, TQ_CMD_TASK, "long-1", false, "tq.sleep", sleep_args,
                   sizeof sleep_args);
    /* answered by the keeper: the task runs and the socket is lent */
    s_binfake_send(&fake, TQ_CMD_PING, "", false, NULL, NULL, 0);
    s_binfake_pong(&fake);
    /* nine more: the queue of 4 grows to 8, then to 16 */
    enum { N = 9 };
    static uint8_t args[N][16];
    size_t sizes[N];
    char ids[N][16];
    tq_batch_t b;
    tq_batch_init(&b);
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "q-%d", i);
        if (i == N - 1) {
            args[i][0] = 0x90; /* no arguments */
            sizes[i] = 1;
        } else {
            sizes[i] = s_args_of(args[i], sizeof args[i], 1 + (size_t)i);
        }
        tq_msg_t msg = {.command = TQ_CMD_TASK,
                        .id = tq_str(ids[i]),
                        .task = tq_str("tq.echo"),
                        .attempt = 1};
        assert_int_equal(tq_batch_add(&b, &msg, args[i], sizes[i], true),
                         TQ_OK);
    }
    assert_int_equal(tq_wire_send_batch(fake.router, &fake.child, &b, 0),
                     TQ_OK);
    tq_batch_destroy(&b);
    s_binfake_send(&fake, TQ_CMD_PING, "", false, NULL, NULL, 0);
    s_binfake_pong(&fake);
    s_binfake_expect(&fake, TQ_CMD_DONE, "long-1", false, slept, sizeof slept);
    for (int i = 0; i < N; i++)
        s_binfake_expect(&fake, TQ_CMD_DONE, ids[i], false, args[i], sizes[i]);

    s_binfake_stop(&fake, worker);
}

/* The worker child (the real tq-worker before a fake broker) says it
   takes BATCH (READY feature 0x4), and handles each TASK of a BATCH as if
   it had come alone: one DONE each, in order; a sub-message malformed on
   its own (a header that does not decode, a TASK without its payload) is
   dropped and the others are run. It asks the broker (one PING after
   READY) whether it takes BATCH from children; this one's PONG says no
   (a broker of an earlier revision), so every DONE comes alone although
   several are ready together. */
static void
test_child_batch(void **state)
{
    (void)state;
    s_binfake_t fake;
    pid_t worker = s_binfake_start(&fake, "8");

    const tq_msg_t *ready = s_binfake_next(&fake);
    assert_int_equal(ready->command, TQ_CMD_READY);
    assert_true(ready->features & TQ_FEATURE_BATCH);
    assert_int_equal(zmq_msg_copy(&fake.child, &fake.frames.identity), 0);

    /* TASKs with values of their own, so that each DONE shows whose it is */
    uint8_t args[6][2];
    for (int i = 0; i < 6; i++) {
        args[i][0] = 0x91;
        args[i][1] = (uint8_t)(i + 1);
    }
    tq_batch_t b;
    tq_batch_init(&b);
    s_batch_task(&b, "bt-1", args[0], 2);
    s_batch_task(&b, "bt-2", args[1], 2);
    /* a header that does not decode ([1]: no command), no payload */
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b.body, msgpack_sbuffer_write);
    const uint8_t bad[] = {0x91, 0x01};
    msgpack_pack_bin(&pk, sizeof bad);
    msgpack_pack_bin_body(&pk, bad, sizeof bad);
    msgpack_pack_nil(&pk);
    b.count++;
    /* a TASK whose payload is missing (nil) */
    tq_msg_t lone = {.command = TQ_CMD_TASK,
                     .id = tq_str("bt-bad"),
                     .task = tq_str("tq.echo"),
                     .attempt = 1};
    msgpack_sbuffer header;
    msgpack_sbuffer_init(&header);
    assert_int_equal(tq_proto_encode(&lone, &header, NULL), TQ_OK);
    msgpack_pack_bin(&pk, header.size);
    msgpack_pack_bin_body(&pk, header.data, header.size);
    msgpack_pack_nil(&pk);
    b.count++;
    msgpack_sbuffer_destroy(&header);
    s_batch_task(&b, "bt-3", args[2], 2);
    s_batch_task(&b, "bt-4", args[3], 2);
    assert_int_equal(tq_wire_send_batch(fake.router, &fake.child, &b, 0),
                     TQ_OK);
    const char *want[] = {"bt-1", "bt-2", "bt-3", "bt-4"};
    for (int i = 0; i < 4; i++)
        s_binfake_expect(&fake, TQ_CMD_DONE, want[i], false, args[i], 2);
    /* a lone TASK after it: the dropped ones never ran (their DONE would
       come before this one's) */
    s_binfake_send(&fake, TQ_CMD_TASK, "bt-5", false, "tq.echo", args[4], 2);
    s_binfake_expect(&fake, TQ_CMD_DONE, "bt-5", false, args[4], 2);
    /* a BATCH of a TASK and a REVOKE of a task the child does not hold:
       the TASK runs, the REVOKE changes nothing (no RETURNED) */
    s_batch_task(&b, "bt-6", args[5], 2);
    tq_msg_t revoke = {
        .command = TQ_CMD_REVOKE, .id = tq_str("bt-none"), .attempt = 1};
    assert_int_equal(tq_batch_add(&b, &revoke, NULL, 0, false), TQ_OK);
    assert_int_equal(tq_wire_send_batch(fake.router, &fake.child, &b, 0),
                     TQ_OK);
    s_binfake_expect(&fake, TQ_CMD_DONE, "bt-6", false, args[5], 2);
    tq_batch_destroy(&b);
    assert_int_equal(fake.pings, 1);

    s_binfake_stop(&fake, worker);
}

/* Counts the lines of text that hold needle and not unless. */
static int
s_count_lines(const char *text, const char *needle, const char *unless)
{
    int n = 0;
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char *copy = strndup(line, len);
        assert_non_null(copy);
        n += strstr(copy, needle) && !strstr(copy, unless);
        free(copy);
        line += len + (end != NULL);
    }
    return n;
}

/* A child that exits at start-up, again and again (a module whose fork
   handler exits 3): after 5 tries with backoff the supervisor stops with
   a message saying so and exit status 1, instead of respawning forever. */
static void
test_startup_failures_stop_host(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *argv[] = {TQ_WORKER_BIN, "--broker", env->broker.workers, "-c",
                          "1",           "--module", TQ_FORKFAIL_SO,      NULL};
    int err_fd = -1;
    pid_t worker = tq_harness_spawn((char *const *)argv, NULL, NULL, &err_fd);
    assert_true(worker > 0);
    /* EOF: the supervisor is gone */
    char *err = tq_harness_read_fd(err_fd, 30000);
    close(err_fd);
    int status = 0;
    fputs(err, stdout);
    assert_int_equal(tq_harness_wait_exit(worker, S_GONE_MS, &status), 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    assert_non_null(strstr(err, "children fail at start-up (5 in a row"));
    /* five children tried, no sixth */
    assert_int_equal(
        s_count_lines(err, "exited with status 3", "fail at start-up"), 5);
    free(err);
}

/* A worker host pointed at the broker's clients endpoint: the broker
   answers its HEARTBEAT with ERROR ("not valid on the clients endpoint"),
   and the host stops with that reason and a hint, exit 1, instead of
   staying silent forever. */
static void
test_clients_endpoint_refused(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *argv[] = {TQ_WORKER_BIN, "--broker", env->broker.clients,
                          "-c",          "1",        NULL};
    int err_fd = -1;
    pid_t worker = tq_harness_spawn((char *const *)argv, NULL, NULL, &err_fd);
    assert_true(worker > 0);
    /* EOF: the supervisor is gone */
    char *err = tq_harness_read_fd(err_fd, 30000);
    close(err_fd);
    fputs(err, stdout);
    int status = 0;
    assert_int_equal(tq_harness_wait_exit(worker, S_GONE_MS, &status), 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    assert_non_null(strstr(err, "not valid on the clients endpoint"));
    assert_non_null(strstr(err, "workers endpoint"));
    free(err);
}

/* The supervisor's main thread's voluntary context switches (its
   wakeups), from /proc; -1 if unknown. */
static long
s_wakeups(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long n = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "voluntary_ctxt_switches: %ld", &n) == 1)
            break;
    fclose(f);
    return n;
}

/* Children tell their supervisor nothing per task (they publish on
   shared memory; only a task with a time limit wakes it): 2,000 tasks
   wake the supervisor far fewer than 2,000 times. */
static void
test_no_wakeup_per_task(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    pid_t worker = tq_harness_env_add_worker(env, 2, NULL, true);
    assert_true(worker > 0);
    s_echo_ok(env->client, 0);
    enum { N = 2000 };
    long before = s_wakeups(worker);
    assert_true(before >= 0);
    tq_result_t **r = calloc(N, sizeof *r);
    assert_non_null(r);
    for (int i = 0; i < N; i++)
        assert_non_null(r[i] = tq_apply_async(env->client, "tq.echo", NULL, "i",
                                              (int64_t)i));
    int done = 0;
    for (int i = 0; i < N; i++) {
        done += tq_result_get(r[i], S_GET_MS) == TQ_OK;
        tq_result_destroy(&r[i]);
    }
    free(r);
    long wakeups = s_wakeups(worker) - before;
    printf("supervisor woke %ld times for %d tasks\n", wakeups, N);
    assert_int_equal(done, N);
    /* heartbeats and their answers wake it: a few per second */
    assert_true(wakeups < N / 10);
}

/* SIGHUP does not stop the supervisor: its children go on serving, and a
   later SIGTERM still drains it to exit status 0. */
static void
test_sighup_survived(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    pid_t worker = tq_harness_env_add_worker(env, 1, NULL, true);
    assert_true(worker > 0);
    assert_int_equal(kill(worker, SIGHUP), 0);
    s_echo_ok(env->client, 1);
    assert_int_equal(kill(worker, SIGHUP), 0);
    s_echo_ok(env->client, 2);
    int status = tq_harness_env_stop_worker(env, worker);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* A host started without --prefetch announces the default credit, 16 a
   child (chosen by tq-bench --prefetch, README Performance); --prefetch
   still sets it. */
static void
test_default_prefetch(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    pid_t host = tq_harness_env_add_worker(env, 2, NULL, true);
    assert_true(host > 0);
    const char *one[] = {"--prefetch", "1", NULL};
    pid_t other = tq_harness_env_add_worker(env, 1, one, true);
    assert_true(other > 0);
    assert_int_equal(tq_harness_wait_workers(env->client, 3, 0, S_GET_MS), 0);
    tq_harness_status_t status;
    assert_int_equal(tq_harness_status(env->client, &status, S_GET_MS), TQ_OK);
    uint32_t count = 0;
    const msgpack_object *workers = tq_harness_workers(&status, &count);
    assert_int_equal(count, 3);
    int defaults = 0, ones = 0;
    for (uint32_t i = 0; i < count; i++) {
        const msgpack_object *w = &workers->via.array.ptr[i];
        uint64_t ppid = tq_harness_map_uint(w, "ppid", 0);
        uint64_t credit = tq_harness_map_uint(w, "credit", 0);
        if (ppid == (uint64_t)host) {
            assert_int_equal(credit, 16);
            defaults++;
        } else {
            assert_int_equal(ppid, (uint64_t)other);
            assert_int_equal(credit, 1);
            ones++;
        }
    }
    assert_int_equal(defaults, 2);
    assert_int_equal(ones, 1);
    tq_harness_status_free(&status);
}

int
main(void)
{
    tq_harness_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kill9_leaves_nothing,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_stubborn_command,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_leaves_no_subprocess,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_kills_escaped_process,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_broker_pause_reannounce,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test(test_session_change_reannounces),
        cmocka_unit_test(test_child_binary_ids),
        cmocka_unit_test(test_child_batch),
        cmocka_unit_test(test_child_args_sizes),
        cmocka_unit_test(test_child_queue_grows_under_running),
        cmocka_unit_test_setup_teardown(test_startup_failures_stop_host,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_clients_endpoint_refused,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_no_wakeup_per_task,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_sighup_survived,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_default_prefetch,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
