/* test_child_batch.c - worker children send their DONEs in BATCHes
   (PROTOCOL.md 5.9), end to end with a real tq-broker and tq-worker: tasks
   that wait together in a child leave in fewer messages than tasks; a
   sequential round trip is never held for a batch; a DONE is never held
   behind a task that may run long (one that has not run in the child, or
   one that usually runs short and now runs long: the keeper sends it);
   and a child that dies holding DONEs loses them as it would lose DONEs
   not yet sent: every task still ends with its final state.

   Whether a task counts as short is a time (--batch-short-us); these
   tests set it to 1000 s, so that every task that ran once counts as
   short and what is held depends on order only. Every wait is on a
   condition (a file, a result, a counter), bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tq_harness.h"

#define S_GET_MS 30000 /* bound on any get() expected to end */

/* A worker host of one child holding up to 16 tasks, with the test
   module, every task that ran once counted as short. */
static pid_t
s_worker(tq_harness_env_t *env)
{
    const char *extra[] = {
        "--prefetch",       "16",         "--module", TQ_TESTTASKS_SO,
        "--batch-short-us", "1000000000", NULL};
    pid_t pid = tq_harness_env_add_worker(env, 1, extra, true);
    assert_true(pid > 0);
    return pid;
}

/* Counters[name] in the broker's STATUS. */
static uint64_t
s_counter(tq_harness_env_t *env, const char *name)
{
    tq_harness_status_t status;
    assert_int_equal(tq_harness_status(env->client, &status, S_GET_MS), TQ_OK);
    uint64_t value = tq_harness_counter(&status, name);
    tq_harness_status_free(&status);
    assert_true(value != UINT64_MAX);
    return value;
}

/* Waits until path exists (bounded). */
static void
s_wait_file(const char *path)
{
    int64_t deadline = tq_harness_now_ms() + S_GET_MS;
    while (access(path, F_OK) != 0) {
        if (tq_harness_now_ms() > deadline)
            fail_msg("%s never came", path);
        tq_harness_sleep_ms(10);
    }
}

/* Creates path: the test.gate waiting on it ends. */
static void
s_open_gate(const char *path)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

/* Waits until the broker has sent every task of the default queue to a
   child (bounded). */
static void
s_wait_dispatched(tq_harness_env_t *env)
{
    int64_t deadline = tq_harness_now_ms() + S_GET_MS;
    while (tq_harness_queue_waiting(env->client, "default") != 0) {
        if (tq_harness_now_ms() > deadline)
            fail_msg("tasks still waiting in the broker");
        tq_harness_sleep_ms(10);
    }
}

/* Paths of a test's gate files: <dir>/<name>.started and <name>.gate. */
typedef struct {
    char started[4200];
    char gate[4200];
} s_gate_t;

static void
s_gate_paths(s_gate_t *g, const char *dir, const char *name)
{
    snprintf(g->started, sizeof g->started, "%s/%s.started", dir, name);
    snprintf(g->gate, sizeof g->gate, "%s/%s.gate", dir, name);
}

/* Runs tq.echo once (known short from then on), then S_QUEUED echoes
   that wait in the child behind a test.gate until all were sent to it;
   opens the gate and checks every result. *batches: the broker's
   child_batches_in after the warm-up (may be NULL). */
enum { S_QUEUED = 15 }; /* the child's credit less the gate */

static void
s_echoes_behind_gate(tq_harness_env_t *env, const char *dir, uint64_t *batches)
{
    s_gate_t g;
    s_gate_paths(&g, dir, "g0");
    tq_result_t *warm =
        tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)-1);
    assert_non_null(warm);
    assert_int_equal(tq_result_get(warm, S_GET_MS), TQ_OK);
    tq_result_destroy(&warm);
    if (batches)
        *batches = s_counter(env, "child_batches_in");

    tq_result_t *gate =
        tq_apply_async(env->client, "test.gate", NULL, "ss", g.started, g.gate);
    assert_non_null(gate);
    s_wait_file(g.started);
    tq_result_t *r[S_QUEUED];
    for (int i = 0; i < S_QUEUED; i++) {
        r[i] = tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)i);
        assert_non_null(r[i]);
    }
    s_wait_dispatched(env);
    s_open_gate(g.gate);
    assert_int_equal(tq_result_get(gate, S_GET_MS), TQ_OK);
    for (int i = 0; i < S_QUEUED; i++) {
        assert_int_equal(tq_result_get(r[i], S_GET_MS), TQ_OK);
        tq_result_destroy(&r[i]);
    }
    tq_result_destroy(&gate);
}

/* Tasks that wait together in a child (held behind a running task until
   all were sent to it) leave in BATCHes: fewer DONE messages than tasks,
   every result there, in order of submission. */
static void
test_dones_batched(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    s_worker(env);
    char dir[4096];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "cbatch"), 0);
    uint64_t batches;
    s_echoes_behind_gate(env, dir, &batches);
    uint64_t got = s_counter(env, "child_batches_in") - batches;
    uint64_t in = s_counter(env, "child_batched_in");
    printf("  %d DONEs, %llu BATCHes from the child (%llu DONEs in them)\n",
           S_QUEUED + 1, (unsigned long long)got, (unsigned long long)in);
    assert_true(got >= 1);
    /* fewer messages than DONEs: each BATCH holds two or more */
    assert_true(in >= 2 * got);
    assert_int_equal(s_counter(env, "duplicates"), 0);
    assert_int_equal(s_counter(env, "malformed"), 0);
    assert_int_equal(s_counter(env, "errors"), 0);
    tq_harness_rmtree(dir);
}

/* A sequential round trip (one task at a time, as W2) is never held for
   a batch: the child has nothing more to run when its DONE is ready. */
static void
test_round_trip_alone(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    s_worker(env);
    for (int i = 0; i < 50; i++) {
        tq_result_t *r =
            tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)i);
        assert_non_null(r);
        assert_int_equal(tq_result_get(r, S_GET_MS), TQ_OK);
        tq_result_destroy(&r);
    }
    assert_int_equal(s_counter(env, "completed"), 50);
    assert_int_equal(s_counter(env, "child_batches_in"), 0);
}

/* A DONE is not held behind a task that has not run in the child yet:
   tq.echo's result comes while the test.gate queued behind it runs (the
   gate opens only once the echo's result is here). Both wait in the
   child behind a test.record that sleeps 1 s (whether they came in time
   or not, the echo's result must come first). */
static void
test_not_held_behind_unknown(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    s_worker(env);
    char dir[4096], log[4200];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "cbatch"), 0);
    snprintf(log, sizeof log, "%s/record", dir);
    s_gate_t g;
    s_gate_paths(&g, dir, "g0");
    tq_result_t *warm =
        tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)0);
    assert_non_null(warm);
    assert_int_equal(tq_result_get(warm, S_GET_MS), TQ_OK);
    tq_result_destroy(&warm);

    tq_result_t *busy = tq_apply_async(env->client, "test.record", NULL, "isi",
                                       (int64_t)0, log, (int64_t)1000);
    assert_non_null(busy);
    s_wait_file(log);
    tq_result_t *echo =
        tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)1);
    tq_result_t *gate =
        tq_apply_async(env->client, "test.gate", NULL, "ss", g.started, g.gate);
    assert_non_null(echo);
    assert_non_null(gate);
    assert_int_equal(tq_result_get(busy, S_GET_MS), TQ_OK);
    assert_int_equal(tq_result_get(echo, S_GET_MS), TQ_OK);
    /* the echo's result came while the gate is closed */
    assert_false(tq_result_ready(gate));
    s_open_gate(g.gate);
    assert_int_equal(tq_result_get(gate, S_GET_MS), TQ_OK);
    tq_result_destroy(&busy);
    tq_result_destroy(&echo);
    tq_result_destroy(&gate);
    tq_harness_rmtree(dir);
}

/* A task that usually runs short and runs long this time does not hold
   the DONEs before it until it ends: the keeper, which takes the
   connection while it runs, sends them. g0 keeps the child busy while
   an echo and a second gate wait behind it; test.gate ran (g0), so g1
   counts as short and the echo's DONE is held when g1 starts. */
static void
test_keeper_sends_held(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    s_worker(env);
    char dir[4096];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "cbatch"), 0);
    s_gate_t g0, g1;
    s_gate_paths(&g0, dir, "g0");
    s_gate_paths(&g1, dir, "g1");
    /* tq.echo known short */
    tq_result_t *warm =
        tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)0);
    assert_non_null(warm);
    assert_int_equal(tq_result_get(warm, S_GET_MS), TQ_OK);
    tq_result_destroy(&warm);

    tq_result_t *first = tq_apply_async(env->client, "test.gate", NULL, "ss",
                                        g0.started, g0.gate);
    assert_non_null(first);
    s_wait_file(g0.started);
    tq_result_t *echo =
        tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)1);
    tq_result_t *second = tq_apply_async(env->client, "test.gate", NULL, "ss",
                                         g1.started, g1.gate);
    assert_non_null(echo);
    assert_non_null(second);
    s_wait_dispatched(env);
    s_open_gate(g0.gate);
    assert_int_equal(tq_result_get(first, S_GET_MS), TQ_OK);
    /* the echo's result comes while g1 runs, its gate closed */
    assert_int_equal(tq_result_get(echo, S_GET_MS), TQ_OK);
    assert_false(tq_result_ready(second));
    s_open_gate(g1.gate);
    assert_int_equal(tq_result_get(second, S_GET_MS), TQ_OK);
    tq_result_destroy(&first);
    tq_result_destroy(&echo);
    tq_result_destroy(&second);
    tq_harness_rmtree(dir);
}

/* A child killed holding DONEs (test.crash counts as short: it ran once,
   so the DONEs before it are held when it kills its child): their tasks
   go back to the broker's queue as the child's other unfinished tasks
   and run again on the new child; every task ends with its final state,
   the one that killed the child FAILURE TQ_ELOST (--max-lost 1). */
static void
test_death_loses_held(void **state)
{
    tq_harness_env_t *env = *state;
    const char *broker[] = {"--max-lost", "1", NULL};
    assert_int_equal(tq_harness_env_start(env, broker), 0);
    pid_t worker = s_worker(env);
    char dir[4096];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "cbatch"), 0);
    s_gate_t g;
    s_gate_paths(&g, dir, "g0");
    tq_result_t *gate =
        tq_apply_async(env->client, "test.gate", NULL, "ss", g.started, g.gate);
    assert_non_null(gate);
    s_wait_file(g.started);
    /* behind the gate: echoes, a harmless test.crash, an echo, then the
       one that kills the child, then one more echo */
    enum { N = 6 };
    tq_result_t *r[N];
    r[0] = tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)0);
    r[1] = tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)1);
    r[2] = tq_apply_async(env->client, "test.crash", NULL, "b", 0);
    r[3] = tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)3);
    r[4] = tq_apply_async(env->client, "test.crash", NULL, "b", 1);
    r[5] = tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)5);
    for (int i = 0; i < N; i++)
        assert_non_null(r[i]);
    s_wait_dispatched(env);
    s_open_gate(g.gate);
    assert_int_equal(tq_result_get(gate, S_GET_MS), TQ_OK);
    for (int i = 0; i < N; i++) {
        int rc = tq_result_get(r[i], S_GET_MS);
        if (i == 4) {
            assert_int_equal(rc, TQ_ELOST);
            assert_int_equal(tq_result_state(r[i]), TQ_STATE_FAILURE);
        } else if (rc != TQ_OK)
            fail_msg("task %d: %s (%s)", i, tq_strerror(rc),
                     tq_result_error(r[i]));
        tq_result_destroy(&r[i]);
    }
    tq_result_destroy(&gate);
    printf("  lost %llu, requeued %llu, duplicates %llu\n",
           (unsigned long long)s_counter(env, "lost"),
           (unsigned long long)s_counter(env, "requeued"),
           (unsigned long long)s_counter(env, "duplicates"));
    assert_true(s_counter(env, "lost") >= 1);
    /* the host replaced its child and still serves */
    assert_int_equal(tq_harness_wait_workers(env->client, 1, worker, S_GET_MS),
                     0);
    tq_result_t *after =
        tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)7);
    assert_non_null(after);
    assert_int_equal(tq_result_get(after, S_GET_MS), TQ_OK);
    tq_result_destroy(&after);
    tq_harness_rmtree(dir);
}

/* A child that ends (here: recycled by --max-tasks-per-child) while it
   holds DONEs sends them, then its DISCONNECT, each intact: the held
   DONEs' BATCH is encoded apart from the message being sent (it used to
   overwrite it: the broker got a second BATCH header without payload,
   malformed, and never the DISCONNECT; so were RETURNED and PONG). Every
   task ends, and the broker saw nothing malformed. */
static void
test_recycle_while_holding(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *extra[] = {"--prefetch",
                           "16",
                           "--module",
                           TQ_TESTTASKS_SO,
                           "--batch-short-us",
                           "1000000000",
                           "--max-tasks-per-child",
                           "5",
                           NULL};
    assert_true(tq_harness_env_add_worker(env, 1, extra, true) > 0);
    char dir[4096];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "cbatchr"), 0);
    /* the echoes' DONEs are held when the child reaches its fifth task
       and ends */
    s_echoes_behind_gate(env, dir, NULL);
    assert_int_equal(s_counter(env, "malformed"), 0);
    tq_harness_rmtree(dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_dones_batched, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_round_trip_alone,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_not_held_behind_unknown,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_keeper_sends_held,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_death_loses_held,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_recycle_while_holding,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
