/* tq_bench.c - tq-bench: W1 throughput (apply_async of no-op tasks, all
   awaited, prefetch 1 and 16) and W2 round-trip latency (sequential
   tq_apply), each run several times against its own broker and a 2-child
   worker host; then W1 (prefetch 16) against the store: --no-persist,
   --sync os and --sync batch, with the ratio to memory; prints the machine
   and tables of medians. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tq_bench_common.h"
#include "tq_harness.h"

#define S_BUDGET_MS 170000 /* the whole bench stays under 3 minutes */
#define S_STORE_MODES 3

typedef struct {
    int tasks; /* W1 tasks per run */
    int rounds; /* W2 round trips per run */
    int runs; /* runs per workload */
    int children; /* worker children */
} s_config_t;

static int64_t s_deadline;

/* Milliseconds left of the budget, at least 1000 so a last get can end. */
static int
s_left_ms(void)
{
    int64_t left = s_deadline - tq_harness_now_ms();
    return left < 1000 ? 1000 : (int)left;
}

/* W1: submits `tasks` tq.echo with no arguments, then awaits them all.
   Returns tasks per second, or -1 if any failed. */
static double
s_throughput(tq_client_t *client, int tasks)
{
    tq_result_t **results = calloc((size_t)tasks, sizeof *results);
    if (!results)
        return -1;
    int failed = 0;
    int64_t t0 = tq_harness_now_ms();
    for (int i = 0; i < tasks; i++) {
        results[i] = tq_apply_async(client, "tq.echo", NULL, "");
        if (!results[i])
            failed++;
    }
    for (int i = 0; i < tasks; i++) {
        if (!results[i])
            continue;
        int rc = tq_result_get(results[i], s_left_ms());
        if (rc != TQ_OK) {
            if (failed++ == 0)
                fprintf(stderr, "tq-bench: task %d: %s (%s)\n", i,
                        tq_strerror(rc), tq_result_error(results[i]));
        }
    }
    int64_t elapsed = tq_harness_now_ms() - t0;
    for (int i = 0; i < tasks; i++)
        tq_result_destroy(&results[i]);
    free(results);
    if (failed) {
        fprintf(stderr, "tq-bench: %d of %d tasks failed\n", failed, tasks);
        return -1;
    }
    return elapsed > 0 ? tasks * 1000.0 / (double)elapsed : 0;
}

/* W2: `rounds` sequential tq_apply round trips; p50 and p99 in µs.
   Returns 0 or -1 if any failed. */
static int
s_latency(tq_client_t *client, int rounds, double *p50, double *p99)
{
    double *us = calloc((size_t)rounds, sizeof *us);
    if (!us)
        return -1;
    int rc = 0;
    for (int i = 0; i < rounds && rc == 0; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        tq_result_t *r = tq_apply(client, "tq.echo", NULL, 5000, "");
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (!r || tq_result_code(r) != TQ_OK) {
            fprintf(stderr, "tq-bench: round trip %d: %s\n", i,
                    r ? tq_strerror(tq_result_code(r)) : "invalid call");
            rc = -1;
        }
        tq_result_destroy(&r);
        us[i] = (double)(b.tv_sec - a.tv_sec) * 1e6 +
            (double)(b.tv_nsec - a.tv_nsec) / 1e3;
    }
    if (rc == 0) {
        qsort(us, (size_t)rounds, sizeof *us, tq_bench_cmp_double);
        *p50 = us[rounds / 2];
        *p99 = us[(size_t)rounds * 99 / 100 < (size_t)rounds
                      ? (size_t)rounds * 99 / 100
                      : (size_t)rounds - 1];
    }
    free(us);
    return rc;
}

static void
s_row(const char *name, const char *unit, const double *values, int runs)
{
    printf("%-28s %12.0f %-8s", name, tq_bench_median(values, runs), unit);
    for (int i = 0; i < runs; i++)
        printf(" %10.0f", values[i]);
    printf("\n");
}

/* Starts a worker host with the given prefetch and waits for its children. */
static pid_t
s_worker(tq_harness_env_t *env, const s_config_t *config, int prefetch)
{
    char value[16];
    snprintf(value, sizeof value, "%d", prefetch);
    const char *extra[] = {"--prefetch", value, NULL};
    pid_t pid = tq_harness_env_add_worker(env, config->children, extra, true);
    if (pid < 0)
        fprintf(stderr,
                "tq-bench: worker host (prefetch %d) did not come "
                "up\n",
                prefetch);
    return pid;
}

/* W1 (prefetch 16) against a broker in memory, and with the store synced
   by the OS and synced per batch: one broker and worker host per mode, all
   up at once, runs interleaved so that noise from other load on the
   machine falls on every mode alike. Fills w1[mode][run]; 0 or -1. */
static int
s_store_modes(const s_config_t *config, double w1[][TQ_BENCH_MAX_RUNS])
{
    char dirs[S_STORE_MODES][512];
    tq_harness_env_t env[S_STORE_MODES];
    memset(env, 0, sizeof env);
    int rc = 0, started = 0;
    for (int m = 0; m < S_STORE_MODES && rc == 0; m++) {
        if (tq_harness_tempdir(dirs[m], sizeof dirs[m], "bench") != 0) {
            fprintf(stderr, "tq-bench: mkdtemp %s: %s\n", dirs[m],
                    strerror(errno));
            rc = -1;
            break;
        }
        char data[sizeof dirs + 8]; /* gcc sizes dirs[m] as all of dirs */
        snprintf(data, sizeof data, "%s/data", dirs[m]);
        const char *memory[] = {"--no-persist", NULL};
        const char *os[] = {"--data", data, "--sync", "os", NULL};
        const char *batch[] = {"--data", data, "--sync", "batch", NULL};
        const char *const *extra = m == 0 ? memory : m == 1 ? os : batch;
        started = m + 1;
        if (tq_harness_env_start(&env[m], extra) != 0 ||
            s_worker(&env[m], config, 16) < 0) {
            fprintf(stderr, "tq-bench: store mode %d did not start\n", m);
            rc = -1;
        }
    }
    for (int m = 0; m < started && rc == 0; m++)
        if (s_throughput(env[m].client, config->tasks / 10 + 1) < 0)
            rc = -1; /* warm up */
    for (int run = 0; run < config->runs && rc == 0; run++)
        for (int m = 0; m < S_STORE_MODES && rc == 0; m++) {
            w1[m][run] = s_throughput(env[m].client, config->tasks);
            if (w1[m][run] < 0)
                rc = -1;
        }
    for (int m = 0; m < started; m++) {
        tq_harness_env_stop(&env[m]);
        tq_harness_rmtree(dirs[m]);
    }
    return rc;
}

static void
s_usage(FILE *out)
{
    fprintf(out,
            "usage: tq-bench [--tasks N] [--rounds N] [--runs R]\n"
            "  --tasks N   W1 tasks per run (default 20000)\n"
            "  --rounds N  W2 round trips per run (default 2000)\n"
            "  --runs R    runs per workload, 1..%d (default 3)\n",
            TQ_BENCH_MAX_RUNS);
}

static int
s_parse(int argc, char **argv, s_config_t *config)
{
    for (int i = 1; i < argc; i++) {
        int *target = NULL;
        if (strcmp(argv[i], "--tasks") == 0)
            target = &config->tasks;
        else if (strcmp(argv[i], "--rounds") == 0)
            target = &config->rounds;
        else if (strcmp(argv[i], "--runs") == 0)
            target = &config->runs;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            s_usage(stdout);
            exit(0);
        }
        if (!target || i + 1 >= argc)
            return -1;
        char *end = NULL;
        errno = 0;
        long value = strtol(argv[++i], &end, 10);
        if (errno || *end || value < 1 || value > 10000000)
            return -1;
        *target = (int)value;
    }
    return config->runs <= TQ_BENCH_MAX_RUNS ? 0 : -1;
}

int
main(int argc, char **argv)
{
    s_config_t config = {20000, 2000, 3, 2};
    if (s_parse(argc, argv, &config) != 0) {
        s_usage(stderr);
        return 2;
    }
    s_deadline = tq_harness_now_ms() + S_BUDGET_MS;
    tq_harness_init();
    tq_bench_print_machine();
    printf("setup:   tq-broker + tq-worker -c %d on 127.0.0.1, %d runs; "
           "W1 %d tq.echo (no args) apply_async, all awaited; W2 %d "
           "sequential tq_apply tq.echo\n\n",
           config.children, config.runs, config.tasks, config.rounds);
    fflush(stdout);

    tq_harness_env_t env;
    if (tq_harness_env_start(&env, NULL) != 0) {
        fprintf(stderr, "tq-bench: the broker did not start\n");
        return 1;
    }
    double w1[2][TQ_BENCH_MAX_RUNS], p50[TQ_BENCH_MAX_RUNS],
        p99[TQ_BENCH_MAX_RUNS];
    static const int prefetches[2] = {1, 16};
    int rc = 0;
    for (int p = 0; p < 2 && rc == 0; p++) {
        pid_t worker = s_worker(&env, &config, prefetches[p]);
        if (worker < 0) {
            rc = 1;
            break;
        }
        /* warm up: connections, page faults, the first allocations */
        if (s_throughput(env.client, config.tasks / 10 + 1) < 0)
            rc = 1;
        for (int run = 0; run < config.runs && rc == 0; run++) {
            w1[p][run] = s_throughput(env.client, config.tasks);
            if (w1[p][run] < 0)
                rc = 1;
        }
        if (rc == 0 && prefetches[p] == 1) {
            for (int run = 0; run < config.runs && rc == 0; run++)
                rc = s_latency(env.client, config.rounds, &p50[run], &p99[run])
                    ? 1
                    : 0;
        }
        tq_harness_env_stop_worker(&env, worker);
        /* the next host's children must be the only ones listed */
        if (rc == 0 && tq_harness_wait_workers(env.client, 0, 0, 10000) != 0) {
            fprintf(stderr,
                    "tq-bench: the broker still lists children of "
                    "a stopped host\n");
            rc = 1;
        }
    }
    tq_harness_env_stop(&env);
    double store[S_STORE_MODES][TQ_BENCH_MAX_RUNS];
    if (rc == 0 && s_store_modes(&config, store) != 0)
        rc = 1;
    if (rc != 0) {
        fprintf(stderr, "tq-bench: failed\n");
        return 1;
    }
    printf("%-28s %12s %-8s", "workload", "median", "unit");
    for (int i = 0; i < config.runs; i++)
        printf("      run %d", i + 1);
    printf("\n");
    s_row("W1 throughput, prefetch 1", "tasks/s", w1[0], config.runs);
    s_row("W1 throughput, prefetch 16", "tasks/s", w1[1], config.runs);
    s_row("W2 round trip p50", "us", p50, config.runs);
    s_row("W2 round trip p99", "us", p99, config.runs);

    /* the store's cost: ratio of the medians, the memory broker's run
       interleaved with the others' (see s_store_modes) */
    printf("\n%-28s %12s %-8s %8s", "W1 prefetch 16, store", "median", "unit",
           "ratio");
    for (int i = 0; i < config.runs; i++)
        printf("      run %d", i + 1);
    printf("\n");
    static const char *const names[S_STORE_MODES] = {
        "  --no-persist (memory)", "  --sync os", "  --sync batch"};
    double memory = tq_bench_median(store[0], config.runs);
    for (int m = 0; m < S_STORE_MODES; m++) {
        double median = tq_bench_median(store[m], config.runs);
        printf("%-28s %12.0f %-8s %8.2f", names[m], median, "tasks/s",
               memory > 0 ? median / memory : 0);
        for (int i = 0; i < config.runs; i++)
            printf(" %10.0f", store[m][i]);
        printf("\n");
    }
    return 0;
}
