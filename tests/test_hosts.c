/* test_hosts.c - tq across hosts (issue 14 item 1): the broker, worker hosts
   and this test's clients each in a network namespace of their own, joined
   by a bridge (tests/support/tq_netns.h). Work is shared by hosts, a host
   whose link is cut loses its tasks to the others and comes back, a
   client cut off from the broker gets results or TQ_EUNREACHABLE and works
   again, every task ends right over delayed and lossy links, and more
   hosts do more. Without CAP_NET_ADMIN it prints "skipped: needs root for
   network namespaces" and exits 77 (ctest: Skipped).

   `test_hosts --bench` prints the scaling table (1, 2, 3 hosts of 2
   children, tasks that sleep 20 ms): `make bench-hosts`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tq_client_internal.h"
#include "tq_harness.h"
#include "tq_netns.h"

#define S_BROKER 0 /* host of the broker */
#define S_CLIENT 4 /* host of this process and its clients */
#define S_HOSTS 5 /* h0 broker, h1..h3 workers, h4 clients */
#define S_WAIT_MS 30000 /* bound on anything that must happen */

static tq_netns_t *s_net;

/* One test's processes. */
typedef struct {
    tq_harness_broker_t broker;
    pid_t workers[S_HOSTS]; /* by host, 0: none */
    tq_client_t *client;
} s_env_t;

static int
s_setup(void **state)
{
    s_env_t *env = calloc(1, sizeof *env);
    if (!env)
        return -1;
    *state = env;
    return 0;
}

/* Stops what the test started and puts every link back as it was, even
   after a failed assertion. */
static int
s_teardown(void **state)
{
    s_env_t *env = *state;
    for (int h = 0; h < S_HOSTS; h++) {
        tq_netns_link(s_net, h, true);
        tq_netns_netem(s_net, h, 0, 0);
    }
    tq_client_destroy(&env->client);
    for (int h = 0; h < S_HOSTS; h++)
        if (env->workers[h] > 0)
            tq_netns_stop(s_net, env->workers[h]);
    if (env->broker.pid > 0)
        tq_harness_broker_stop(&env->broker);
    for (int h = 1; h < S_CLIENT; h++) {
        char path[512];
        snprintf(path, sizeof path, "%s/record", tq_netns_dir(s_net, h));
        unlink(path);
    }
    free(env);
    return 0;
}

/* Children STATUS lists on host h, or -1 if STATUS failed. */
static int
s_host_children(tq_client_t *client, int h)
{
    tq_harness_status_t st;
    if (tq_harness_status(client, &st, 5000) != TQ_OK) {
        tq_harness_status_free(&st);
        return -1;
    }
    uint32_t count = 0;
    const msgpack_object *workers = tq_harness_workers(&st, &count);
    int n = 0;
    for (uint32_t i = 0; workers && i < count; i++)
        if (tq_harness_str_eq(
                tq_harness_map_get(&workers->via.array.ptr[i], "host"),
                tq_netns_name(s_net, h)))
            n++;
    tq_harness_status_free(&st);
    return n;
}

/* Waits until host h has `want` children at the broker; 0 or -1. */
static int
s_wait_host(tq_client_t *client, int h, int want, int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    while (tq_harness_now_ms() < deadline) {
        if (s_host_children(client, h) == want)
            return 0;
        tq_harness_sleep_ms(50);
    }
    return -1;
}

/* Starts the broker on h0, a client on it from here, and worker hosts
   h1..h`hosts` of `children` each with the test task module. */
static void
s_start(s_env_t *env, int hosts, int children)
{
    assert_int_equal(tq_netns_broker_start(s_net, S_BROKER, &env->broker, NULL),
                     0);
    env->client = tq_client_new(env->broker.clients);
    assert_non_null(env->client);
    const char *module[] = {"--module", TQ_TESTTASKS_SO, NULL};
    for (int h = 1; h <= hosts; h++) {
        env->workers[h] = tq_netns_worker_start(s_net, h, env->broker.workers,
                                                children, module);
        assert_true(env->workers[h] > 0);
    }
    for (int h = 1; h <= hosts; h++)
        assert_int_equal(s_wait_host(env->client, h, children, S_WAIT_MS), 0);
}

/* Executions recorded by test.record on host h (lines of its file); with
   seen (may be NULL, n entries) counting each index. */
static int
s_recorded(int h, int *seen, int n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/record", tq_netns_dir(s_net, h));
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int lines = 0;
    long index;
    while (fscanf(f, "%ld", &index) == 1) {
        lines++;
        if (seen && index >= 0 && index < n)
            seen[index]++;
    }
    fclose(f);
    return lines;
}

/* Handles and how often each one's callback ran. */
typedef struct {
    tq_result_t **r;
    atomic_int *calls;
    int n;
} s_batch_t;

static void
s_on_final(tq_result_t *result, void *arg)
{
    (void)result;
    atomic_fetch_add((atomic_int *)arg, 1);
}

/* Submits test.record i "record" ms for i in [from, from + n). */
static void
s_submit(s_env_t *env, s_batch_t *b, int from, int n, int ms)
{
    b->n = n;
    b->r = calloc((size_t)n, sizeof *b->r);
    b->calls = calloc((size_t)n, sizeof *b->calls);
    assert_non_null(b->r);
    assert_non_null(b->calls);
    for (int i = 0; i < n; i++) {
        tq_options_t opts = TQ_OPTIONS_INIT;
        opts.callback = s_on_final;
        opts.error_callback = s_on_final;
        opts.callback_arg = &b->calls[i];
        b->r[i] = tq_apply_async(env->client, "test.record", &opts, "isi",
                                 (int64_t)(from + i), "record", (int64_t)ms);
        assert_non_null(b->r[i]);
    }
}

/* Waits for every handle of b (bounded): counts those that ended TQ_OK
   with their own index, TQ_EUNREACHABLE, other errors, none. */
typedef struct {
    int ok, unreachable, other, pending;
} s_tally_t;

static s_tally_t
s_wait_batch(s_batch_t *b, int from, int timeout_ms)
{
    s_tally_t t = {0};
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    for (int i = 0; i < b->n; i++) {
        int64_t left = deadline - tq_harness_now_ms();
        int rc = tq_result_get(b->r[i], left > 0 ? (int)left : 0);
        const msgpack_object *v = tq_result_value(b->r[i]);
        if (rc == TQ_OK && v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
            v->via.u64 == (uint64_t)(from + i))
            t.ok++;
        else if (rc == TQ_EUNREACHABLE)
            t.unreachable++;
        else if (rc == TQ_ETIMEDOUT)
            t.pending++;
        else {
            if (t.other++ < 5)
                printf("task %d: %s (%s)\n", from + i, tq_strerror(rc),
                       tq_result_error(b->r[i]));
        }
    }
    return t;
}

static void
s_batch_free(s_batch_t *b)
{
    for (int i = 0; i < b->n; i++)
        tq_result_destroy(&b->r[i]);
    free(b->r);
    free(b->calls);
    b->r = NULL;
    b->calls = NULL;
}

/* 3 worker hosts (2 children each) share 5,000 tasks: each host runs at
   least 20 % of them, and every task ends with its own result. */
static void
test_hosts_share_work(void **state)
{
    s_env_t *env = *state;
    s_start(env, 3, 2);
    enum { N = 5000 };
    s_batch_t b;
    s_submit(env, &b, 0, N, 1);
    s_tally_t t = s_wait_batch(&b, 0, 4 * S_WAIT_MS);
    assert_int_equal(t.ok, N);
    int *seen = calloc(N, sizeof *seen);
    assert_non_null(seen);
    int per[4] = {0};
    for (int h = 1; h <= 3; h++)
        per[h] = s_recorded(h, seen, N);
    int missing = 0;
    for (int i = 0; i < N; i++)
        missing += seen[i] == 0;
    printf("5,000 tasks on 3 hosts: %d / %d / %d (%.1f / %.1f / %.1f %%)\n",
           per[1], per[2], per[3], 100.0 * per[1] / N, 100.0 * per[2] / N,
           100.0 * per[3] / N);
    assert_int_equal(missing, 0);
    for (int h = 1; h <= 3; h++)
        assert_true(per[h] >= N / 5);
    free(seen);
    s_batch_free(&b);
}

/* Host 1's link is cut mid-run: the broker finds the host gone and its
   tasks run elsewhere (all 3,000 end right while the link is still cut,
   none lost); healed, the host announces itself again and runs new work;
   no handle's callback runs twice. */
static void
test_host_link_cut(void **state)
{
    s_env_t *env = *state;
    s_start(env, 3, 2);
    enum { N1 = 3000, N2 = 600 };
    s_batch_t b1, b2;
    s_submit(env, &b1, 0, N1, 10);
    /* cut once host 1 is busy */
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (s_recorded(1, NULL, 0) < 30 && tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(10);
    assert_true(s_recorded(1, NULL, 0) >= 30);
    assert_int_equal(tq_netns_link(s_net, 1, false), 0);
    int64_t cut = tq_harness_now_ms();
    int rc = s_wait_host(env->client, 1, 0, S_WAIT_MS);
    int64_t detected = tq_harness_now_ms() - cut;
    printf("host 1 cut: the broker dropped it after %lld ms (liveness "
           "3 s)\n",
           (long long)detected);
    assert_int_equal(rc, 0);

    /* every task ends right before the link comes back: host 1's ran
       elsewhere */
    s_tally_t t1 = s_wait_batch(&b1, 0, 4 * S_WAIT_MS);
    printf("while cut: %d ok, %d unreachable, %d other, %d pending\n", t1.ok,
           t1.unreachable, t1.other, t1.pending);
    assert_int_equal(t1.ok, N1);
    int on_host1 = s_recorded(1, NULL, 0);

    assert_int_equal(tq_netns_link(s_net, 1, true), 0);
    int64_t healed = tq_harness_now_ms();
    rc = s_wait_host(env->client, 1, 2, S_WAIT_MS);
    printf("host 1 healed: back at the broker after %lld ms\n",
           (long long)(tq_harness_now_ms() - healed));
    assert_int_equal(rc, 0);
    s_submit(env, &b2, N1, N2, 10);
    s_tally_t t2 = s_wait_batch(&b2, N1, 4 * S_WAIT_MS);
    assert_int_equal(t2.ok, N2);
    int after = s_recorded(1, NULL, 0) - on_host1;
    tq_harness_status_t st;
    assert_int_equal(tq_harness_status(env->client, &st, 5000), TQ_OK);
    printf("host 1 ran %d of %d new tasks; broker: lost %llu, requeued "
           "%llu, duplicates %llu\n",
           after, N2, (unsigned long long)tq_harness_counter(&st, "lost"),
           (unsigned long long)tq_harness_counter(&st, "requeued"),
           (unsigned long long)tq_harness_counter(&st, "duplicates"));
    tq_harness_status_free(&st);
    assert_true(after > 0);
    int twice = 0;
    for (int i = 0; i < N1; i++)
        twice += atomic_load(&b1.calls[i]) != 1;
    for (int i = 0; i < N2; i++)
        twice += atomic_load(&b2.calls[i]) != 1;
    assert_int_equal(twice, 0);
    s_batch_free(&b1);
    s_batch_free(&b2);
}

/* The broker cut off from this process's host for 10 s: submissions made
   during the cut end TQ_EUNREACHABLE before it heals; tasks acknowledged
   before it end with their results (or TQ_EUNREACHABLE), none hangs; after
   it heals the client runs new tasks. */
static void
test_client_cut_off(void **state)
{
    s_env_t *env = *state;
    s_start(env, 1, 2);
    enum { BEFORE = 40, DURING = 10, AFTER = 20 };
    s_batch_t a, b, c;
    s_submit(env, &a, 0, BEFORE, 100);
    for (int i = 0; i < BEFORE; i++)
        assert_int_equal(tq_result_wait_answer(a.r[i], S_WAIT_MS), TQ_OK);
    assert_int_equal(tq_netns_link(s_net, S_CLIENT, false), 0);
    int64_t cut = tq_harness_now_ms();
    s_submit(env, &b, BEFORE, DURING, 0);
    /* they must end while the link is still down */
    s_tally_t tb = s_wait_batch(&b, BEFORE, 9000);
    int64_t ended = tq_harness_now_ms() - cut;
    printf("submitted during the cut: %d unreachable, %d ok, %d pending "
           "after %lld ms\n",
           tb.unreachable, tb.ok, tb.pending, (long long)ended);
    assert_int_equal(tb.unreachable, DURING);
    int64_t left = cut + 10000 - tq_harness_now_ms();
    if (left > 0)
        tq_harness_sleep_ms((int)left); /* the cut lasts 10 s */
    assert_int_equal(tq_netns_link(s_net, S_CLIENT, true), 0);
    int64_t healed = tq_harness_now_ms();
    s_tally_t ta = s_wait_batch(&a, 0, 4 * S_WAIT_MS);
    printf("acknowledged before the cut: %d ok, %d unreachable, %d other, "
           "%d pending, %lld ms after healing\n",
           ta.ok, ta.unreachable, ta.other, ta.pending,
           (long long)(tq_harness_now_ms() - healed));
    assert_int_equal(ta.pending, 0);
    assert_int_equal(ta.other, 0);
    s_submit(env, &c, BEFORE + DURING, AFTER, 0);
    s_tally_t tc = s_wait_batch(&c, BEFORE + DURING, 4 * S_WAIT_MS);
    assert_int_equal(tc.ok, AFTER);
    s_batch_free(&a);
    s_batch_free(&b);
    s_batch_free(&c);
}

/* 20 ms delay and 1 % loss each way on every worker host's link: every
   one of 1,000 tasks ends with its own result. */
static void
test_lossy_links(void **state)
{
    s_env_t *env = *state;
    for (int h = 1; h <= 3; h++)
        assert_int_equal(tq_netns_netem(s_net, h, 20, 1.0), 0);
    s_start(env, 3, 2);
    enum { N = 1000 };
    s_batch_t b;
    int64_t t0 = tq_harness_now_ms();
    s_submit(env, &b, 0, N, 0);
    s_tally_t t = s_wait_batch(&b, 0, 4 * S_WAIT_MS);
    printf("1,000 tasks over 20 ms + 1 %% loss links: %d ok in %lld ms\n", t.ok,
           (long long)(tq_harness_now_ms() - t0));
    assert_int_equal(t.ok, N);
    /* the links really were slow and lossy (where the stand-in counts) */
    uint64_t delayed = 0, dropped = 0;
    for (int h = 1; h <= 3; h++) {
        uint64_t d = 0, x = 0;
        if (tq_netns_netem_counts(s_net, h, &d, &x) == 0)
            delayed += d, dropped += x;
    }
    printf("packets delayed %llu, dropped %llu%s\n",
           (unsigned long long)delayed, (unsigned long long)dropped,
           delayed ? "" : " (tc netem: not counted here)");
    if (delayed)
        assert_true(dropped > 0);
    s_batch_free(&b);
}

/* Runs n tasks that sleep 20 ms on `hosts` hosts of 2 children; returns
   tasks per second. */
static double
s_rate(int hosts, int n)
{
    s_env_t *env = NULL;
    assert_int_equal(s_setup((void **)&env), 0);
    s_start(env, hosts, 2);
    s_batch_t b;
    int64_t t0 = tq_harness_now_ms();
    s_submit(env, &b, 0, n, 20);
    s_tally_t t = s_wait_batch(&b, 0, 4 * S_WAIT_MS);
    int64_t took = tq_harness_now_ms() - t0;
    assert_int_equal(t.ok, n);
    s_batch_free(&b);
    s_teardown((void **)&env);
    return took > 0 ? n * 1000.0 / (double)took : 0;
}

/* More hosts, more done: 3 hosts finish tasks faster than 1 (the figures
   belong to `make bench-hosts`). */
static void
test_more_hosts_more_done(void **state)
{
    (void)state;
    double one = s_rate(1, 200);
    double three = s_rate(3, 200);
    printf("20 ms tasks: 1 host %.0f/s, 3 hosts %.0f/s (%.2fx)\n", one, three,
           three / one);
    assert_true(three > one);
}

static bool
s_ns_exists(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "/run/netns/%s", name);
    return access(path, F_OK) == 0;
}

/* A namespace left by a run that died (named tqt<its pid>h0) is deleted
   when a set is made; a destroyed set leaves none of its own behind, and
   its processes are gone. */
static void
test_namespaces_cleaned(void **state)
{
    (void)state;
    pid_t dead = fork();
    assert_true(dead >= 0);
    if (dead == 0)
        _exit(0);
    assert_int_equal(waitpid(dead, NULL, 0), dead);
    char stale[64];
    snprintf(stale, sizeof stale, "tqt%dh0", (int)dead);
    const char *ip =
        access("/usr/sbin/ip", X_OK) == 0 ? "/usr/sbin/ip" : "/sbin/ip";
    char *argv[] = {(char *)ip, "netns", "add", stale, NULL};
    tq_harness_run_t run;
    assert_int_equal(tq_harness_run(argv, NULL, 10000, &run), 0);
    tq_harness_run_free(&run);
    assert_int_equal(run.exit_code, 0);
    assert_true(s_ns_exists(stale));

    tq_netns_t *set = tq_netns_new(1);
    assert_non_null(set);
    assert_false(s_ns_exists(stale));
    char name[64];
    snprintf(name, sizeof name, "%s", tq_netns_name(set, 0));
    assert_true(s_ns_exists(name));
    pid_t worker = tq_netns_worker_start(set, 0, "tcp://127.0.0.1:1", 1, NULL);
    assert_true(worker > 0);
    tq_netns_destroy(&set);
    assert_false(s_ns_exists(name));
    assert_false(tq_harness_alive(worker));
}

static int
s_bench(void)
{
    enum { RUNS = 3, N = 600 };
    printf("tq across hosts: tasks that sleep 20 ms, hosts of 2 children, "
           "%d tasks, median of %d runs\n",
           N, RUNS);
    printf("%-6s %12s %10s\n", "hosts", "tasks/s", "speedup");
    double base = 0;
    for (int hosts = 1; hosts <= 3; hosts++) {
        double r[RUNS];
        for (int i = 0; i < RUNS; i++)
            r[i] = s_rate(hosts, N);
        for (int i = 0; i < RUNS; i++)
            for (int j = i + 1; j < RUNS; j++)
                if (r[j] < r[i]) {
                    double x = r[i];
                    r[i] = r[j];
                    r[j] = x;
                }
        double median = r[RUNS / 2];
        if (hosts == 1)
            base = median;
        printf("%-6d %12.0f %9.2fx\n", hosts, median, median / base);
    }
    return 0;
}

int
main(int argc, char **argv)
{
    bool bench = argc > 1 && strcmp(argv[1], "--bench") == 0;
    tq_harness_init();
    char why[256];
    if (!tq_netns_available(why, sizeof why)) {
        printf(TQ_NETNS_SKIP_TEXT " (%s)\n", why);
        return 77;
    }
    s_net = tq_netns_new(S_HOSTS);
    if (!s_net) {
        fprintf(stderr, "test_hosts: cannot make the namespaces\n");
        return 1;
    }
    /* this process's clients live on their own host: before any socket */
    if (tq_netns_enter(s_net, S_CLIENT) != 0) {
        fprintf(stderr, "test_hosts: cannot enter %s\n",
                tq_netns_name(s_net, S_CLIENT));
        tq_netns_destroy(&s_net);
        return 1;
    }
    int rc;
    if (bench)
        rc = s_bench();
    else {
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_hosts_share_work, s_setup,
                                            s_teardown),
            cmocka_unit_test_setup_teardown(test_host_link_cut, s_setup,
                                            s_teardown),
            cmocka_unit_test_setup_teardown(test_client_cut_off, s_setup,
                                            s_teardown),
            cmocka_unit_test_setup_teardown(test_lossy_links, s_setup,
                                            s_teardown),
            cmocka_unit_test(test_more_hosts_more_done),
            cmocka_unit_test(test_namespaces_cleaned),
        };
        /* e.g. TQ_TEST_FILTER='*lossy*' runs one test */
        if (getenv("TQ_TEST_FILTER"))
            cmocka_set_test_filter(getenv("TQ_TEST_FILTER"));
        rc = cmocka_run_group_tests(tests, NULL, NULL);
    }
    tq_netns_destroy(&s_net);
    return rc;
}
