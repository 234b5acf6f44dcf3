/* tq_bench_pool.c - tq-bench-pool: the embedded tq_pool of 2 against
   Python's multiprocessing.Pool(2) on the same machine. Each run measures,
   on a fresh pool per prefetch value (default 1 and TQ_POOL_PREFETCH), W1
   (N no-op apply_async, all awaited: tasks/s) and W2 (SEQ sequential apply:
   p50/p99 us), then the same on Python's Pool(2); the runs interleave
   them so that noise falls on all alike. Prints the machine and a table of
   medians, with each tq W1 median's ratio to Python's. Exit status 1 if any
   task failed. */
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq/tq.h"
#include "tq_bench_common.h"

#define S_PROCESSES 2
#define S_MAX_PREFETCHES 8

typedef struct {
    int tasks; /* W1 tasks per run */
    int seq; /* W2 sequential applies per run */
    int runs; /* runs, 1..TQ_BENCH_MAX_RUNS */
    int prefetch[S_MAX_PREFETCHES]; /* effective values, distinct */
    int prefetches; /* entries in prefetch */
    bool raw; /* --raw: tq only, one "w1 p50 p99" line per prefetch */
} s_config_t;

/* One configuration's measures, one entry per run. */
typedef struct {
    double w1[TQ_BENCH_MAX_RUNS]; /* tasks/s */
    double p50[TQ_BENCH_MAX_RUNS]; /* us */
    double p99[TQ_BENCH_MAX_RUNS]; /* us */
    int failed; /* tasks, all runs together */
} s_sample_t;

static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
s_noop(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    (void)args;
    msgpack_pack_nil(out);
    return 0;
}

/* Counts a task that did not succeed; tells the first of each pool. */
static void
s_failed(int *failed, const char *workload, tq_result_t *result)
{
    if ((*failed)++ == 0)
        fprintf(stderr, "tq-bench-pool: %s: %s (%s)\n", workload,
                result ? tq_strerror(tq_result_code(result)) : "invalid call",
                result ? tq_result_error(result) : "");
}

/* W1 then W2 on a fresh pool with the given prefetch; stores this run's
   measures at index run of sample. Returns -1 if the pool did not start. */
static int
s_measure_tq(const s_config_t *config, tq_registry_t *registry, int prefetch,
             s_sample_t *sample, int run)
{
    tq_pool_options_t options = TQ_POOL_OPTIONS_INIT;
    options.registry = registry;
    options.quiet = true;
    options.prefetch = prefetch;
    tq_pool_t *pool = tq_pool_new(S_PROCESSES, &options);
    if (!pool) {
        fprintf(stderr, "tq-bench-pool: pool (prefetch %d) did not start\n",
                prefetch);
        return -1;
    }
    int failed = 0;
    /* one round trip first, as Python's side does: the pool is up */
    tq_result_t *warm = tq_pool_apply_timeout(pool, "noop", NULL, 10000, "");
    if (!warm || tq_result_code(warm) != TQ_OK)
        s_failed(&failed, "warm-up", warm);
    tq_result_destroy(&warm);

    tq_result_t **results = calloc((size_t)config->tasks, sizeof *results);
    double *us = calloc((size_t)config->seq, sizeof *us);
    assert(results && us);
    double t0 = s_now();
    for (int i = 0; i < config->tasks; i++)
        results[i] = tq_pool_apply_async(pool, "noop", NULL, "");
    for (int i = 0; i < config->tasks; i++) {
        if (!results[i] || tq_result_get(results[i], 60000) != TQ_OK)
            s_failed(&failed, "W1", results[i]);
    }
    sample->w1[run] = config->tasks / (s_now() - t0);
    for (int i = 0; i < config->tasks; i++)
        tq_result_destroy(&results[i]);
    free(results);

    for (int i = 0; i < config->seq; i++) {
        double t = s_now();
        tq_result_t *result =
            tq_pool_apply_timeout(pool, "noop", NULL, 10000, "");
        us[i] = (s_now() - t) * 1e6;
        if (!result || tq_result_code(result) != TQ_OK)
            s_failed(&failed, "W2", result);
        tq_result_destroy(&result);
    }
    qsort(us, (size_t)config->seq, sizeof *us, tq_bench_cmp_double);
    sample->p50[run] = us[config->seq / 2];
    sample->p99[run] = us[config->seq * 99 / 100];
    free(us);

    tq_pool_close(pool);
    if (tq_pool_join(pool, 10000) != TQ_OK)
        fprintf(stderr, "tq-bench-pool: pool (prefetch %d) did not join\n",
                prefetch);
    tq_pool_destroy(&pool);
    sample->failed += failed;
    return 0;
}

/* The python3 version (version, size bytes), or -1 if python3 or its
   multiprocessing is missing. */
static int
s_python_version(char *version, size_t size)
{
    char command[256];
    snprintf(command, sizeof command,
             "%s -c 'import multiprocessing, platform; "
             "print(platform.python_version())' 2>/dev/null",
             tq_bench_python());
    FILE *p = popen(command, "r");
    if (!p)
        return -1;
    int found = fgets(version, (int)size, p) != NULL;
    if (pclose(p) != 0 || !found)
        return -1;
    version[strcspn(version, "\n")] = '\0';
    return 0;
}

/* Python's multiprocessing.Pool(2), like s_measure_tq: one apply, then W1
   (tasks no-op apply_async, all awaited) and W2 (seq sequential apply), run
   by ref_mp_pool.py (TQ_BENCH_MP_POOL, the script tq-bench runs too).
   Fills run `run` of sample; -1 if it did not run. */
static int
s_measure_python(const s_config_t *config, s_sample_t *sample, int run)
{
    char command[1024];
    snprintf(command, sizeof command, "%s '%s' %d %d 2>/dev/null",
             tq_bench_python(), TQ_BENCH_MP_POOL, config->tasks, config->seq);
    FILE *p = popen(command, "r");
    if (!p)
        return -1;
    int got = fscanf(p, "%lf %lf %lf", &sample->w1[run], &sample->p50[run],
                     &sample->p99[run]);
    if (pclose(p) != 0 || got != 3)
        return -1;
    return 0;
}

static void
s_usage(FILE *out)
{
    fprintf(out,
            "usage: tq-bench-pool [--runs R] [-n N] [--seq SEQ] "
            "[--prefetch P[,P...]]...\n"
            "  --runs R      runs, 1..%d (default 3)\n"
            "  -n N          W1 apply_async tasks per run (default 20000)\n"
            "  --seq SEQ     W2 sequential applies per run (default 2000)\n"
            "  --prefetch P  pool prefetch to measure, repeatable or a comma "
            "list;\n"
            "                0 is the default, %d (default: 1 and %d)\n"
            "  --raw         tq only, no table: \"W1 P50 P99\" per prefetch "
            "and run\n"
            "                (how tq-bench reads it)\n",
            TQ_BENCH_MAX_RUNS, TQ_POOL_PREFETCH, TQ_POOL_PREFETCH);
}

static int
s_parse_int(const char *text, long min, long max, int *value)
{
    char *end = NULL;
    errno = 0;
    long parsed = strtol(text, &end, 10);
    if (errno || end == text || *end || parsed < min || parsed > max)
        return -1;
    *value = (int)parsed;
    return 0;
}

/* Adds a comma list of prefetch values, 0 read as TQ_POOL_PREFETCH;
   duplicates are measured once. */
static int
s_add_prefetches(s_config_t *config, const char *list)
{
    char copy[256];
    if (snprintf(copy, sizeof copy, "%s", list) >= (int)sizeof copy)
        return -1;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        int prefetch;
        if (s_parse_int(item, 0, 65535, &prefetch) != 0)
            return -1;
        if (prefetch == 0)
            prefetch = TQ_POOL_PREFETCH;
        bool known = false;
        for (int i = 0; i < config->prefetches; i++)
            known |= config->prefetch[i] == prefetch;
        if (known)
            continue;
        if (config->prefetches == S_MAX_PREFETCHES)
            return -1;
        config->prefetch[config->prefetches++] = prefetch;
    }
    return 0;
}

static int
s_parse(int argc, char **argv, s_config_t *config)
{
    static const struct option longopts[] = {
        {"runs", required_argument, NULL, 'r'},
        {"seq", required_argument, NULL, 's'},
        {"prefetch", required_argument, NULL, 'p'},
        {"raw", no_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "n:h", longopts, NULL)) != -1) {
        int rc = 0;
        switch (opt) {
        case 'r':
            rc = s_parse_int(optarg, 1, TQ_BENCH_MAX_RUNS, &config->runs);
            break;
        case 'n':
            rc = s_parse_int(optarg, 1, 10000000, &config->tasks);
            break;
        case 's':
            rc = s_parse_int(optarg, 1, 10000000, &config->seq);
            break;
        case 'p':
            rc = s_add_prefetches(config, optarg);
            break;
        case 'R':
            config->raw = true;
            break;
        case 'h':
            s_usage(stdout);
            exit(0);
        default:
            return -1;
        }
        if (rc != 0) {
            fprintf(stderr, "tq-bench-pool: bad value: %s\n", optarg);
            return -1;
        }
    }
    if (optind < argc)
        return -1;
    if (config->prefetches == 0)
        s_add_prefetches(config, "1,0");
    return 0;
}

/* Minimum and maximum of the runs, as "(min-max)". */
static void
s_range(const double *values, int runs, char *text, size_t size)
{
    double min = values[0], max = values[0];
    for (int i = 1; i < runs; i++) {
        min = values[i] < min ? values[i] : min;
        max = values[i] > max ? values[i] : max;
    }
    snprintf(text, size, "(%.0f-%.0f)", min, max);
}

/* One table row; every cell is text so that "-" fits any column. */
static void
s_row(const char *name, const char *w1, const char *range, const char *p50,
      const char *p99, const char *ratio, const char *failed)
{
    printf("%-32s %10s  %-15s %9s %9s %6s %6s\n", name, w1, range, p50, p99,
           ratio, failed);
}

/* One configuration's row, from the medians of its runs. py: Python's W1
   median for the ratio, 0 for none; failed: NULL prints "-". */
static void
s_sample_row(const char *name, const s_sample_t *sample, int runs, double py,
             const int *failed)
{
    char w1[32], range[48], p50[32], p99[32], ratio[16] = "-", fails[16] = "-";
    double median = tq_bench_median(sample->w1, runs);
    snprintf(w1, sizeof w1, "%.0f", median);
    s_range(sample->w1, runs, range, sizeof range);
    snprintf(p50, sizeof p50, "%.0f", tq_bench_median(sample->p50, runs));
    snprintf(p99, sizeof p99, "%.0f", tq_bench_median(sample->p99, runs));
    if (py > 0)
        snprintf(ratio, sizeof ratio, "%.2f", median / py);
    if (failed)
        snprintf(fails, sizeof fails, "%d", *failed);
    s_row(name, w1, range, p50, p99, ratio, fails);
}

static void
s_print_table(const s_config_t *config, const s_sample_t *samples,
              const s_sample_t *python, bool python_ok)
{
    s_row("configuration", "W1 tasks/s", "(min-max)", "W2 p50 us", "W2 p99 us",
          "vs py", "failed");
    double py = python_ok ? tq_bench_median(python->w1, config->runs) : 0;
    char name[64];
    for (int i = 0; i < config->prefetches; i++) {
        snprintf(name, sizeof name, "tq_pool(%d) prefetch %d%s", S_PROCESSES,
                 config->prefetch[i],
                 config->prefetch[i] == TQ_POOL_PREFETCH ? " (default)" : "");
        s_sample_row(name, &samples[i], config->runs, py, &samples[i].failed);
    }
    snprintf(name, sizeof name, "python3 mp.Pool(%d)", S_PROCESSES);
    if (python_ok)
        s_sample_row(name, python, config->runs, py, NULL);
    else
        s_row(name, "-", "not measured", "-", "-", "-", "-");
    printf("\nmedians of %d runs, (min-max) over the runs; vs py: tq W1 "
           "median / python W1 median\n",
           config->runs);
}

static void
s_print_header(const s_config_t *config, bool python_ok, const char *version)
{
    tq_bench_print_machine();
    printf("setup:   tq_pool(%d) embedded, a fresh pool per run and prefetch\n"
           "         W1 %d no-op tq_pool_apply_async, all awaited; W2 %d "
           "sequential tq_pool_apply\n",
           S_PROCESSES, config->tasks, config->seq);
    if (python_ok)
        printf("python:  %s multiprocessing.Pool(%d), the same W1 "
               "(apply_async) and W2 (apply)\n",
               version, S_PROCESSES);
    else
        printf("python:  python3 not found (or without multiprocessing): not "
               "measured\n");
    printf("runs:    %d, each measures every configuration in turn\n\n",
           config->runs);
    fflush(stdout);
}

int
main(int argc, char **argv)
{
    s_config_t config = {.tasks = 20000, .seq = 2000, .runs = 3};
    if (s_parse(argc, argv, &config) != 0) {
        s_usage(stderr);
        return 2;
    }
    char version[64] = "";
    bool python_ok =
        !config.raw && s_python_version(version, sizeof version) == 0;
    if (!config.raw)
        s_print_header(&config, python_ok, version);

    tq_registry_t *registry = tq_registry_new();
    assert(registry);
    tq_registry_add(registry, "noop", s_noop, NULL);
    s_sample_t samples[S_MAX_PREFETCHES];
    memset(samples, 0, sizeof samples);
    s_sample_t python;
    memset(&python, 0, sizeof python);
    int rc = 0;
    for (int run = 0; run < config.runs && rc == 0; run++) {
        for (int i = 0; i < config.prefetches && rc == 0; i++)
            rc = s_measure_tq(&config, registry, config.prefetch[i],
                              &samples[i], run);
        if (rc == 0 && python_ok) {
            if (s_measure_python(&config, &python, run) != 0) {
                fprintf(stderr, "tq-bench-pool: python3 run %d failed\n",
                        run + 1);
                python_ok = false;
            }
        }
    }
    tq_registry_destroy(&registry);
    if (rc != 0)
        return 1;
    if (config.raw) {
        for (int i = 0; i < config.prefetches; i++)
            for (int run = 0; run < config.runs; run++)
                printf("%.0f %.1f %.1f\n", samples[i].w1[run],
                       samples[i].p50[run], samples[i].p99[run]);
    } else {
        s_print_table(&config, samples, &python, python_ok);
    }
    int failed = 0;
    for (int i = 0; i < config.prefetches; i++)
        failed += samples[i].failed;
    return failed ? 1 : 0;
}
