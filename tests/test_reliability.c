/* test_reliability.c - end to end, issue 3 on the worker and client sides:
   recycling children (max tasks, max memory), the soft time limit,
   cancellation (queued, running, terminate), retries, block_when_full, a
   broker killed and restarted on the same endpoints, chaos (children
   killed every 200 ms) and a poison task beside a busy queue. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tq_client_internal.h"
#include "tq_harness.h"
#include "tq_inspect.h"

#define S_GET_MS 20000 /* bound on any get() expected to end */


/* The one child of worker host ppid, waiting up to timeout_ms for one
   that is not `not` (0: any). 0 if none. */
static pid_t
s_child_of(pid_t ppid, pid_t not, int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    do {
        pid_t pids[8];
        size_t n = tq_harness_children(ppid, pids, 8);
        for (size_t i = 0; i < n && i < 8; i++)
            if (pids[i] != not)
                return pids[i];
        tq_harness_sleep_ms(20);
    } while (tq_harness_now_ms() < deadline);
    return 0;
}

/* The number under key in INSPECT's answer for task id, UINT64_MAX if
   none came. */
static uint64_t
s_inspect_uint(tq_client_t *client, const char *id, const char *key)
{
    tq_buf_t body = {0};
    char detail[256];
    uint64_t v = UINT64_MAX;
    if (tq_inspect_task(tq_client_endpoint(client), id, &body, 5000, detail,
                        sizeof detail) == TQ_OK) {
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        size_t off = 0;
        if (msgpack_unpack_next(&u, body.data, body.size, &off) ==
                MSGPACK_UNPACK_SUCCESS &&
            u.data.type == MSGPACK_OBJECT_MAP)
            v = tq_harness_map_uint(&u.data, key, UINT64_MAX);
        msgpack_unpacked_destroy(&u);
    }
    tq_buf_free(&body);
    return v;
}

static uint64_t
s_counter(tq_client_t *client, const char *name)
{
    tq_harness_status_t status;
    uint64_t v = UINT64_MAX;
    if (tq_harness_status(client, &status, 5000) == TQ_OK)
        v = tq_harness_counter(&status, name);
    tq_harness_status_free(&status);
    return v;
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

/* --max-tasks-per-child 2: after 6 tasks the child was replaced (no LOST,
   nothing requeued). */
static void
test_max_tasks(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *extra[] = {"--max-tasks-per-child", "2", NULL};
    pid_t worker = tq_harness_env_add_worker(env, 1, extra, true);
    assert_true(worker > 0);
    pid_t first = s_child_of(worker, 0, 5000);
    assert_true(first > 0);
    pid_t seen[4] = {first};
    size_t distinct = 1;
    for (int64_t i = 0; i < 6; i++) {
        s_echo_ok(env->client, i);
        pid_t now = s_child_of(worker, 0, 5000);
        bool known = false;
        for (size_t k = 0; k < distinct; k++)
            known |= seen[k] == now;
        if (!known && distinct < 4)
            seen[distinct++] = now;
    }
    pid_t last = s_child_of(worker, first, 5000);
    printf("max-tasks-per-child 2: %zu distinct child pids over 6 tasks\n",
           distinct);
    assert_true(last > 0 && last != first);
    assert_true(distinct >= 2);
    assert_int_equal(s_counter(env->client, "lost"), 0);
}

/* --max-memory-per-child 50: a task touching 100 MB recycles its child. */
static void
test_max_memory(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *extra[] = {"--max-memory-per-child", "50", "--module",
                           TQ_MYTASKS_SO, NULL};
    pid_t worker = tq_harness_env_add_worker(env, 1, extra, true);
    assert_true(worker > 0);
    pid_t first = s_child_of(worker, 0, 5000);
    s_echo_ok(env->client, 1);
    assert_int_equal(s_child_of(worker, 0, 100), first); /* small: kept */
    tq_result_t *r =
        tq_apply(env->client, "test.alloc", NULL, S_GET_MS, "i", (int64_t)100);
    assert_non_null(r);
    assert_int_equal(tq_result_code(r), TQ_OK);
    tq_result_destroy(&r);
    pid_t next = s_child_of(worker, first, 5000);
    printf("max-memory-per-child 50: child %d replaced by %d\n", (int)first,
           (int)next);
    assert_true(next > 0 && next != first);
    assert_int_equal(s_counter(env->client, "lost"), 0);
    s_echo_ok(env->client, 2);
}

/* --soft-time-limit 0.5: the task sees tq_task_soft_limit and returns. */
static void
test_soft_limit(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *extra[] = {"--soft-time-limit", "0.5", "--time-limit", "10",
                           "--module", TQ_MYTASKS_SO, NULL};
    assert_true(tq_harness_env_add_worker(env, 1, extra, true) > 0);
    int64_t t0 = tq_harness_now_ms();
    tq_result_t *r =
        tq_apply(env->client, "test.soft", NULL, S_GET_MS, "i", (int64_t)8);
    assert_non_null(r);
    int64_t took = tq_harness_now_ms() - t0;
    printf("soft limit: %s after %lld ms\n", tq_result_error(r),
           (long long)took);
    assert_int_equal(tq_result_code(r), TQ_OK);
    const msgpack_object *v = tq_result_value(r);
    assert_non_null(v);
    assert_int_equal(v->type, MSGPACK_OBJECT_STR);
    assert_memory_equal(v->via.str.ptr, "warned", 6);
    /* an 8 s task that returned "warned": the soft limit reached it */
    assert_true(took >= 400);
    tq_result_destroy(&r);
}

/* A queued task is cancelled at once; a running tq.sleep 30 within 3 s, and
   its child is replaced. */
static void
test_cancel(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    pid_t worker = tq_harness_env_add_worker(env, 1, NULL, true);
    assert_true(worker > 0);

    tq_options_t nobody = TQ_OPTIONS_INIT;
    nobody.queue = "nobody";
    tq_result_t *q =
        tq_apply_async(env->client, "tq.echo", &nobody, "i", (int64_t)1);
    assert_int_equal(tq_result_wait_answer(q, 5000), TQ_OK);
    int64_t t0 = tq_harness_now_ms();
    assert_int_equal(tq_result_cancel(q), TQ_OK);
    assert_int_equal(tq_result_get(q, 5000), TQ_ECANCELLED);
    printf("queued task cancelled in %lld ms\n",
           (long long)(tq_harness_now_ms() - t0));
    assert_int_equal(tq_result_state(q), TQ_STATE_CANCELLED);
    tq_result_destroy(&q);

    pid_t child = s_child_of(worker, 0, 5000);
    tq_result_t *r =
        tq_apply_async(env->client, "tq.sleep", NULL, "i", (int64_t)30);
    assert_non_null(r);
    /* running: the broker shows it on our child (sent to it: the child
       may not have started it yet, and the cancel must stop it anyway) */
    int64_t deadline = tq_harness_now_ms() + S_GET_MS;
    bool running = false;
    while (!running && tq_harness_now_ms() < deadline) {
        tq_result_t *f = tq_client_fetch(env->client, tq_result_id(r), false);
        tq_result_wait_answer(f, 2000);
        running = tq_result_state(f) == TQ_STATE_RUNNING;
        tq_result_destroy(&f);
        if (!running)
            tq_harness_sleep_ms(20);
    }
    assert_true(running);
    t0 = tq_harness_now_ms();
    assert_int_equal(tq_client_cancel(env->client, tq_result_id(r), 5000),
                     TQ_OK);
    assert_int_equal(tq_result_get(r, 5000), TQ_ECANCELLED);
    int64_t took = tq_harness_now_ms() - t0;
    /* replaced: long before tq.sleep's 30 s would end on its own */
    pid_t next = s_child_of(worker, child, S_GET_MS);
    printf("running task cancelled in %lld ms; child %d -> %d\n",
           (long long)took, (int)child, (int)next);
    tq_result_destroy(&r);
    assert_true(next > 0 && next != child);
    assert_int_equal(tq_harness_wait_workers(env->client, 1, worker, 10000), 0);
    s_echo_ok(env->client, 7);
    /* an unknown id */
    assert_int_equal(tq_client_cancel(env->client, "no-such-id", 5000),
                     TQ_EUNKNOWN);
}

/* Polls (bounded by S_GET_MS) until the file at path exists and, when
   text is not NULL, contains text. Returns true if it came. */
static bool
s_file_has(const char *path, const char *text)
{
    int64_t deadline = tq_harness_now_ms() + S_GET_MS;
    do {
        FILE *f = fopen(path, "r");
        char line[1024];
        bool found = f && !text;
        while (f && !found && fgets(line, sizeof line, f))
            found = strstr(line, text) != NULL;
        if (f)
            fclose(f);
        if (found)
            return true;
        tq_harness_sleep_ms(20);
    } while (tq_harness_now_ms() < deadline);
    return false;
}

/* A task cancelled after the broker sent it to a child, but before that
   child started it (its TASK on the way, or held behind another task with
   --prefetch 2, as here) is stopped when it starts: its child is replaced,
   it does not run its 30 s. */
static void
test_cancel_before_start(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    char dir[4096], started[4200], gate[4200], log[4200];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "cancel"), 0);
    snprintf(started, sizeof started, "%s/started", dir);
    snprintf(gate, sizeof gate, "%s/gate", dir);
    snprintf(log, sizeof log, "%s/worker.log", dir);
    /* the host's log goes to a file: it says when the KILL came */
    char redirect[4300];
    snprintf(redirect, sizeof redirect, "exec \"$0\" \"$@\" 2>>'%s'", log);
    char *argv[] = {"/bin/sh",     "-c",       redirect,
                    TQ_WORKER_BIN, "--broker", env->broker.workers,
                    "-c",          "1",        "--prefetch",
                    "2",           "--module", TQ_TESTTASKS_SO,
                    "--verbose",   NULL};
    pid_t worker = tq_harness_spawn(argv, NULL, NULL, NULL);
    assert_true(worker > 0);
    assert_int_equal(tq_harness_wait_workers(env->client, 1, worker, S_GET_MS),
                     0);
    pid_t child = s_child_of(worker, 0, S_GET_MS);
    assert_true(child > 0);

    /* the child runs the gate task and holds the sleep behind it */
    tq_result_t *g =
        tq_apply_async(env->client, "test.gate", NULL, "ss", started, gate);
    assert_non_null(g);
    assert_true(s_file_has(started, NULL));
    tq_result_t *r =
        tq_apply_async(env->client, "tq.sleep", NULL, "i", (int64_t)30);
    assert_non_null(r);
    int64_t deadline = tq_harness_now_ms() + S_GET_MS;
    bool held = false;
    while (!held && tq_harness_now_ms() < deadline) {
        tq_result_t *f = tq_client_fetch(env->client, tq_result_id(r), false);
        tq_result_wait_answer(f, 2000);
        held = tq_result_state(f) == TQ_STATE_RUNNING;
        tq_result_destroy(&f);
        if (!held)
            tq_harness_sleep_ms(20);
    }
    assert_true(held);

    /* cancelled while held: the supervisor's KILL comes before the start */
    assert_int_equal(tq_client_cancel(env->client, tq_result_id(r), 5000),
                     TQ_OK);
    assert_int_equal(tq_result_get(r, 5000), TQ_ECANCELLED);
    assert_true(s_file_has(log, "cancelled before it started"));
    /* the gate task ends; the sleep starts and is stopped: the child is
       replaced long before the sleep's 30 s */
    FILE *f = fopen(gate, "w");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(tq_result_get(g, S_GET_MS), TQ_OK);
    pid_t next = s_child_of(worker, child, S_GET_MS);
    printf("task cancelled before its start: child %d -> %d\n", (int)child,
           (int)next);
    assert_true(next > 0 && next != child);
    assert_true(s_file_has(log, "cancelled, stopping it"));
    assert_int_equal(tq_harness_wait_workers(env->client, 1, worker, S_GET_MS),
                     0);
    s_echo_ok(env->client, 8);
    tq_result_destroy(&g);
    tq_result_destroy(&r);
    /* a clean stop (under a sanitizer, no report either) */
    int status = tq_harness_stop(worker);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    tq_harness_rmtree(dir);
}

/* terminate cancels everything still pending. */
static void
test_terminate(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    tq_options_t nobody = TQ_OPTIONS_INIT;
    nobody.queue = "nobody";
    tq_result_t *r[3];
    for (int i = 0; i < 3; i++) {
        r[i] = tq_apply_async(env->client, "tq.echo", &nobody, "i",
                              (int64_t)i);
        assert_int_equal(tq_result_wait_answer(r[i], 5000), TQ_OK);
    }
    assert_int_equal(tq_client_terminate(env->client), 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tq_result_get(r[i], 5000), TQ_ECANCELLED);
        tq_result_destroy(&r[i]);
    }
}

/* test.flaky 2 with retries 3 succeeds on its third attempt. */
static void
test_retries(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *extra[] = {"--module", TQ_MYTASKS_SO, NULL};
    assert_true(tq_harness_env_add_worker(env, 1, extra, true) > 0);
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.retries = 3;
    opts.retry_backoff_ms = 50;
    tq_result_t *r =
        tq_apply(env->client, "test.flaky", &opts, S_GET_MS, "i", (int64_t)2);
    assert_non_null(r);
    printf("flaky: code %d attempts %u %s\n", tq_result_code(r),
           tq_result_attempts(r), tq_result_error(r));
    assert_int_equal(tq_result_code(r), TQ_OK);
    assert_int_equal(tq_result_attempts(r), 3);
    assert_int_equal(tq_result_value(r)->via.u64, 3);
    tq_result_destroy(&r);
    /* without retries it fails at once */
    r = tq_apply(env->client, "test.flaky", NULL, S_GET_MS, "i", (int64_t)1);
    assert_int_equal(tq_result_code(r), TQ_ETASK);
    assert_int_equal(tq_result_attempts(r), 1);
    tq_result_destroy(&r);
}

/* --max-queue 2: a third submit is refused quickly, naming the queue, or
   blocks until there is room (made here by a purge). */
static void
test_block_when_full(void **state)
{
    tq_harness_env_t *env = *state;
    const char *bextra[] = {"--max-queue", "2", NULL};
    assert_int_equal(tq_harness_env_start(env, bextra), 0);
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.queue = "q";
    tq_result_t *r[2];
    for (int i = 0; i < 2; i++) {
        r[i] = tq_apply_async(env->client, "tq.echo", &opts, "i", (int64_t)i);
        assert_int_equal(tq_result_wait_answer(r[i], 5000), TQ_OK);
    }
    int64_t t0 = tq_harness_now_ms();
    tq_result_t *full =
        tq_apply_async(env->client, "tq.echo", &opts, "i", (int64_t)9);
    assert_int_equal(tq_result_get(full, 5000), TQ_EFULL);
    printf("refused in %lld ms: %s\n", (long long)(tq_harness_now_ms() - t0),
           tq_result_error(full));
    assert_non_null(strstr(tq_result_error(full), "q"));
    tq_result_destroy(&full);

    opts.block_when_full = true;
    tq_result_t *blocked =
        tq_apply_async(env->client, "tq.echo", &opts, "i", (int64_t)3);
    assert_int_equal(tq_result_wait(blocked, 600), TQ_ETIMEDOUT);
    assert_false(tq_result_answered(blocked));
    uint64_t purged = 0;
    assert_int_equal(tq_client_purge(env->client, "q", &purged, 5000), TQ_OK);
    assert_int_equal(purged, 2);
    assert_int_equal(tq_result_wait_answer(blocked, 5000), TQ_OK);
    for (int i = 0; i < 2; i++)
        tq_result_destroy(&r[i]);
    const char *wextra[] = {"--queue", "q", NULL};
    assert_true(tq_harness_env_add_worker(env, 1, wextra, true) > 0);
    assert_int_equal(tq_result_get(blocked, S_GET_MS), TQ_OK);
    tq_result_destroy(&blocked);
}

/* Starts tq-broker on the given endpoints (a restart on the same ports).
   Returns its pid. */
static pid_t
s_broker_on(const char *clients, const char *workers)
{
    const char *argv[] = {TQ_BROKER_BIN, "--clients", clients, "--workers",
                          workers, "--no-persist", NULL};
    return tq_harness_spawn((char *const *)argv, NULL, NULL, NULL);
}

/* kill -9 of the broker and a restart on the same endpoints: the worker
   children announce themselves again and run new tasks; a handle
   acknowledged before ends TQ_EUNKNOWN (the memory broker forgot it). */
static void
test_broker_restart(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    pid_t worker = tq_harness_env_add_worker(env, 2, NULL, true);
    assert_true(worker > 0);
    s_echo_ok(env->client, 1);
    tq_options_t nobody = TQ_OPTIONS_INIT;
    nobody.queue = "nobody";
    tq_result_t *old =
        tq_apply_async(env->client, "tq.echo", &nobody, "i", (int64_t)1);
    assert_int_equal(tq_result_wait_answer(old, 5000), TQ_OK);

    pid_t b1 = env->broker.pid;
    assert_int_equal(kill(b1, SIGKILL), 0);
    assert_int_equal(tq_harness_wait_exit(b1, 5000, NULL), 0);
    int64_t t0 = tq_harness_now_ms();
    pid_t b2 = s_broker_on(env->broker.clients, env->broker.workers);
    assert_true(b2 > 0);
    env->broker.pid = b2; /* stopped by the teardown */

    tq_client_t *fresh = tq_client_new(env->broker.clients);
    assert_non_null(fresh);
    int rc = tq_harness_wait_workers(fresh, 2, worker, 15000);
    printf("children re-announced %lld ms after the restart\n",
           (long long)(tq_harness_now_ms() - t0));
    assert_int_equal(rc, 0);
    s_echo_ok(fresh, 2);
    s_echo_ok(env->client, 3);
    assert_int_equal(tq_result_get(old, S_GET_MS), TQ_EUNKNOWN);
    printf("handle from before the restart: %s\n", tq_result_error(old));
    tq_result_destroy(&old);
    tq_client_destroy(&fresh);
}

/* The same with a stored broker while a child's keeper holds its socket
   (prefetch 4, a 1.5 s task running, two short ones held behind it): the
   child finishes its task, announces itself to the new broker and answers
   there; every handle gets its result. */
static void
test_broker_restart_keeper(void **state)
{
    tq_harness_env_t *env = *state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "keeper"), 0);
    const char *data[] = {"--data", dir, NULL};
    assert_int_equal(tq_harness_env_start(env, data), 0);
    const char *extra[] = {"--prefetch", "4", NULL};
    pid_t worker = tq_harness_env_add_worker(env, 1, extra, true);
    assert_true(worker > 0);
    tq_result_t *r[3];
    r[0] = tq_apply_async(env->client, "tq.sleep", NULL, "d", 1.5);
    r[1] = tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)1);
    r[2] = tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)2);
    for (int i = 0; i < 3; i++)
        assert_int_equal(tq_result_wait_answer(r[i], 5000), TQ_OK);
    tq_harness_sleep_ms(300); /* the long task runs, the keeper answers */

    char clients[TQ_HARNESS_EP_MAX], workers[TQ_HARNESS_EP_MAX];
    snprintf(clients, sizeof clients, "%s", env->broker.clients);
    snprintf(workers, sizeof workers, "%s", env->broker.workers);
    assert_int_equal(kill(env->broker.pid, SIGKILL), 0);
    tq_harness_broker_stop(&env->broker); /* reaps it, ends its log */
    int64_t t0 = tq_harness_now_ms();
    assert_int_equal(tq_harness_broker_start_on(&env->broker, clients,
                                                workers, data, NULL),
                     0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tq_result_get(r[i], 15000), TQ_OK);
        tq_result_destroy(&r[i]);
    }
    printf("keeper: 3 results %lld ms after the restart; %llu duplicate "
           "DONE\n",
           (long long)(tq_harness_now_ms() - t0),
           (unsigned long long)s_counter(env->client, "duplicates"));
    /* the child serves the new broker */
    s_echo_ok(env->client, 3);
    tq_harness_env_stop(env);
    tq_harness_rmtree(dir);
}

/* Submits n tq.echo and waits for all; returns elapsed ms, checks every
   value. */
static int64_t
s_echo_batch(tq_client_t *client, int n, int timeout_ms)
{
    tq_result_t **r = calloc((size_t)n, sizeof *r);
    assert_non_null(r);
    int64_t t0 = tq_harness_now_ms();
    for (int i = 0; i < n; i++) {
        r[i] = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)i);
        assert_non_null(r[i]);
    }
    int bad = 0;
    for (int i = 0; i < n; i++) {
        int rc = tq_result_get(r[i], timeout_ms);
        const msgpack_object *v = tq_result_value(r[i]);
        if (rc != TQ_OK || !v || v->type != MSGPACK_OBJECT_ARRAY ||
            v->via.array.size != 1 || v->via.array.ptr[0].via.i64 != i) {
            if (bad++ < 5)
                printf("task %d: %s (%s)\n", i, tq_strerror(rc),
                       tq_result_error(r[i]));
        }
        tq_result_destroy(&r[i]);
    }
    int64_t took = tq_harness_now_ms() - t0;
    free(r);
    assert_int_equal(bad, 0);
    return took;
}

/* 10,000 tq.echo while a random child is SIGKILLed every 200 ms: all end
   SUCCESS with their value. A death charges the task its child held first
   (--max-lost, test_poison's subject); the killer here picks no task, but
   on a loaded machine a task is held longer and the same one can be
   charged three times by chance: the broker allows more deaths than the
   killer can cause to one task, so that every task must still succeed. */
static void
test_chaos(void **state)
{
    tq_harness_env_t *env = *state;
    const char *extra[] = {"--max-lost", "1000", NULL};
    assert_int_equal(tq_harness_env_start(env, extra), 0);
    pid_t worker = tq_harness_env_add_worker(env, 2, NULL, true);
    assert_true(worker > 0);
    pid_t killer = fork();
    assert_true(killer >= 0);
    if (killer == 0) {
        srand((unsigned)getpid());
        for (int k = 0; k < 300; k++) { /* 60 s at most */
            usleep(200 * 1000);
            pid_t pids[8];
            size_t n = tq_harness_children(worker, pids, 8);
            if (n)
                kill(pids[(size_t)rand() % (n < 8 ? n : 8)], SIGKILL);
        }
        _exit(0);
    }
    int64_t took = s_echo_batch(env->client, 10000, 60000);
    kill(killer, SIGKILL);
    waitpid(killer, NULL, 0);
    uint64_t requeued = s_counter(env->client, "requeued");
    uint64_t dups = s_counter(env->client, "duplicates");
    uint64_t lost = s_counter(env->client, "lost");
    printf("chaos: 10000 tasks in %lld ms, all SUCCESS; lost %llu, requeued "
           "%llu (executions beyond one per task <= %llu), duplicates %llu\n",
           (long long)took, (unsigned long long)lost,
           (unsigned long long)requeued, (unsigned long long)requeued,
           (unsigned long long)dups);
}

/* test.crash ends TQ_ELOST after 3 deaths charged to it while tq.echo
   tasks on the same host keep completing between its crashes (the
   throughput beside it is printed, a benchmark figure). */
static void
test_poison(void **state)
{
    tq_harness_env_t *env = *state;
    /* In a sanitizer build, ASan catches the task's SIGSEGV and spends a
       long time reporting it before the child dies; this test is about
       what tq does around a crash, so let the signal kill at once. */
    char asan[512];
    const char *old = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof asan, "handle_segv=0%s%s", old ? ":" : "",
             old ? old : "");
    setenv("ASAN_OPTIONS", asan, 1);
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *extra[] = {"--module", TQ_MYTASKS_SO, NULL};
    assert_true(tq_harness_env_add_worker(env, 2, extra, true) > 0);
    s_echo_batch(env->client, 500, 30000); /* warm up */
    /* The poison task crashes its child three times. What must hold is
       causal, not a speed (the throughput beside a poison task is a
       benchmark figure, printed here): echo tasks keep completing, all of
       them right, between the crashes; the poison task waits in RETRY
       between its runs (the pause that keeps it from crash-looping the
       workers) and ends TQ_ELOST after 3 deaths charged to it. */
    enum { BATCH = 200 };
    tq_result_t *crash =
        tq_apply_async(env->client, "test.crash", NULL, "");
    assert_non_null(crash);
    int64_t t0 = tq_harness_now_ms();
    uint64_t done = 0, batches_in_retry = 0, retry_seen = 0;
    while (!tq_result_ready(crash) && tq_harness_now_ms() - t0 < 120000) {
        s_echo_batch(env->client, BATCH, 60000);
        done += BATCH;
        tq_result_t *f = tq_client_fetch(env->client, tq_result_id(crash),
                                         false);
        if (tq_result_wait_answer(f, 5000) == TQ_OK &&
            tq_result_state(f) == TQ_STATE_RETRY) {
            retry_seen++;
            batches_in_retry++;
        }
        tq_result_destroy(&f);
    }
    int64_t took = tq_harness_now_ms() - t0;
    assert_int_equal(tq_result_get(crash, S_GET_MS), TQ_ELOST);
    /* The rule counts deaths, not dispatches: `attempt` is the lease,
       one more at every dispatch, and a steal (REVOKE, RETURNED, sent to
       another child) is a dispatch without a run. The three deaths are
       its own: each LOST names the task the child ran, so none is
       charged to an echo task whose DONE died with the child (which
       would give the poison task a fourth run, and a fourth child). */
    assert_int_equal(s_inspect_uint(env->client, tq_result_id(crash), "lost"),
                     3);
    assert_true(tq_result_attempts(crash) >= 3);
    assert_int_equal(s_counter(env->client, "lost"), 3);
    printf("poison: %s, attempts %u (stolen %llu); %llu echo tasks done "
           "meanwhile in %lld ms (%.0f/s), %llu batches saw it in RETRY\n",
           tq_result_error(crash), tq_result_attempts(crash),
           (unsigned long long)s_counter(env->client, "stolen"),
           (unsigned long long)done, (long long)took,
           took ? (double)done * 1000.0 / (double)took : 0.0,
           (unsigned long long)batches_in_retry);
    /* the workers went on serving while it crashed them, and it paused */
    assert_true(done >= 2 * BATCH);
    assert_true(retry_seen >= 1);
    tq_result_destroy(&crash);
}

/* Prefetch hides no work: a child holding a long task and three short
   ones it has not started gives the short ones back (REVOKE/RETURNED) when
   another child connects with nothing to do. */
static void
test_work_stealing(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *prefetch[] = {"--prefetch", "4", NULL};
    assert_true(tq_harness_env_add_worker(env, 1, prefetch, true) > 0);
    tq_result_t *r[4];
    r[0] = tq_apply_async(env->client, "tq.sleep", NULL, "d", 30.0);
    for (int i = 1; i < 4; i++)
        r[i] = tq_apply_async(env->client, "tq.sleep", NULL, "d", 0.2);
    /* all four on the one child */
    int64_t deadline = tq_harness_now_ms() + 5000;
    uint64_t running = 0;
    while (running != 4 && tq_harness_now_ms() < deadline) {
        tq_harness_status_t st = {0};
        if (tq_harness_status(env->client, &st, 2000) == TQ_OK) {
            const msgpack_object *q = tq_harness_queue(&st, "default");
            running = q ? tq_harness_map_uint(q, "running", 0) : 0;
        }
        tq_harness_status_free(&st);
        if (running != 4)
            tq_harness_sleep_ms(20);
    }
    assert_int_equal(running, 4);
    int64_t t0 = tq_harness_now_ms();
    assert_true(tq_harness_env_add_worker(env, 1, prefetch, false) > 0);
    for (int i = 1; i < 4; i++)
        assert_int_equal(tq_result_get(r[i], 10000), TQ_OK);
    int64_t shorts = tq_harness_now_ms() - t0;
    /* not behind the long task: that one still runs */
    assert_false(tq_result_ready(r[0]));
    uint64_t stolen = s_counter(env->client, "stolen");
    printf("work stealing: 3 short tasks queued behind a 30 s one done %lld "
           "ms after an idle child connected; %llu stolen\n",
           (long long)shorts, (unsigned long long)stolen);
    assert_true(stolen >= 1);
    assert_int_equal(tq_client_cancel(env->client, tq_result_id(r[0]), 10000),
                     TQ_OK);
    for (int i = 0; i < 4; i++)
        tq_result_destroy(&r[i]);
}

/* A steal never runs a task twice: three children at prefetch 4 take
   waves of tasks of mixed lengths (0 to 40 ms, around the time after which
   a child's keeper answers for it), so children go idle at all moments and
   ask for each other's queued tasks. Every task must run exactly once
   (test.record appends its index on each execution), with steals seen and
   no duplicate DONE. */
static void
test_steal_runs_once(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *extra[] = {"--prefetch", "4", "--module", TQ_TESTTASKS_SO,
                           NULL};
    assert_true(tq_harness_env_add_worker(env, 3, extra, true) > 0);
    char path[] = "/tmp/tq-steal-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    enum { WAVES = 25, WAVE = 16, N = WAVES * WAVE };
    static const uint64_t lengths[] = {0, 1, 4, 9, 12, 20, 40};
    tq_result_t *r[WAVE];
    uint32_t seed = 12345;
    for (int wave = 0; wave < WAVES; wave++) {
        for (int i = 0; i < WAVE; i++) {
            seed = seed * 1103515245u + 12345u;
            uint64_t ms = lengths[(seed >> 16) % 7];
            r[i] = tq_apply_async(env->client, "test.record", NULL, "usu",
                                  (uint64_t)(wave * WAVE + i), path, ms);
            assert_non_null(r[i]);
        }
        for (int i = 0; i < WAVE; i++) {
            assert_int_equal(tq_result_get(r[i], 20000), TQ_OK);
            tq_result_destroy(&r[i]);
        }
    }
    /* every index exactly once */
    static uint32_t runs[N];
    memset(runs, 0, sizeof runs);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    unsigned long index;
    int lines = 0;
    while (fscanf(f, "%lu", &index) == 1) {
        assert_true(index < N);
        runs[index]++;
        lines++;
    }
    fclose(f);
    unlink(path);
    int twice = 0, never = 0;
    for (int i = 0; i < N; i++) {
        twice += runs[i] > 1;
        never += runs[i] == 0;
    }
    uint64_t stolen = s_counter(env->client, "stolen");
    uint64_t duplicates = s_counter(env->client, "duplicates");
    printf("steal: %d tasks, %d executions, %d twice, %d never; %llu "
           "stolen, %llu duplicate DONE\n",
           N, lines, twice, never, (unsigned long long)stolen,
           (unsigned long long)duplicates);
    assert_int_equal(twice, 0);
    assert_int_equal(never, 0);
    assert_int_equal(lines, N);
    assert_int_equal(duplicates, 0);
    assert_true(stolen > 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_max_tasks, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_max_memory, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_soft_limit, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_before_start,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_terminate, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_retries, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_block_when_full, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_broker_restart, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_chaos, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_poison, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_work_stealing, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_broker_restart_keeper,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_steal_runs_once,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
    };
    tq_harness_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
