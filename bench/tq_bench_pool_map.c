/* tq_bench_pool_map.c - tq-bench-pool-map: map over N small ints (square)
   on an embedded tq_pool of 2 against Python's multiprocessing.Pool(2).map
   with its default chunking, and the start time of each pool (new pool to
   the first apply's result). tq's map is measured twice: tq_pool_map (a
   handle per item) and tq_pool_map_values (the values, as Python's map
   returns them); each reads every value. Runs interleave; prints medians.
   TQ_BENCH_NO_PYTHON=1 skips Python. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq/tq.h"

#define S_PROCESSES 2
#define S_MAX_RUNS 15

static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
s_square(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    int64_t x = (int64_t)args->via.array.ptr[0].via.i64;
    msgpack_pack_int64(out, x * x);
    return 0;
}

static int
s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double
s_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* One tq run: start, map (handles), map_values and map_items (s) of count
   items; -1 on failure. map_items includes building its items (as
   Python's map includes iterating its range); the others get theirs
   prebuilt. */
static int
s_run_tq(tq_registry_t *reg, int count, double *start, double *map,
         double *values_s, double *items_s)
{
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = reg;
    double t0 = s_now();
    tq_pool_t *pool = tq_pool_new(S_PROCESSES, &po);
    if (!pool)
        return -1;
    tq_result_t *r = tq_pool_apply_async(pool, "square", NULL, "i", 3);
    int rc = r ? tq_result_get(r, 30000) : TQ_EINVAL;
    *start = s_now() - t0;
    tq_result_destroy(&r);
    tq_buf_t *items = calloc((size_t)count, sizeof *items);
    tq_result_t **results = calloc((size_t)count, sizeof *results);
    for (int i = 0; i < count; i++)
        tq_pack(&items[i], "i", (int64_t)i);
    /* map_items and map_values first: the 100,000 handles of
       tq_pool_map, freed afterwards, would leave them page faults to pay */
    double t5 = s_now();
    tq_items_t *list = tq_items_new();
    for (int i = 0; i < count; i++)
        tq_items_add(list, "i", (int64_t)i);
    tq_values_t *ivalues = NULL;
    if (rc == TQ_OK)
        rc = tq_pool_map_items(pool, "square", NULL, list, &ivalues, 120000);
    int64_t sum3 = 0;
    for (int i = 0; rc == TQ_OK && i < count; i++)
        sum3 += tq_values_at(ivalues, (size_t)i)->via.i64;
    *items_s = s_now() - t5;
    tq_values_destroy(&ivalues);
    tq_items_destroy(&list);
    double t3 = s_now();
    tq_values_t *values = NULL;
    if (rc == TQ_OK)
        rc = tq_pool_map_values(pool, "square", NULL, items, (size_t)count,
                                &values, 120000);
    double t4 = s_now();
    int64_t sum2 = 0;
    for (int i = 0; rc == TQ_OK && i < count; i++)
        sum2 += tq_values_at(values, (size_t)i)->via.i64;
    *values_s = s_now() - t3;
    if (getenv("TQ_BENCH_VERBOSE"))
        fprintf(stderr, "map_values call %.1f ms, reading %.1f ms\n",
                (t4 - t3) * 1e3, (s_now() - t4) * 1e3);
    tq_values_destroy(&values);
    double t1 = s_now();
    if (rc == TQ_OK)
        rc = tq_pool_map(pool, "square", NULL, items, (size_t)count, results,
                         120000);
    double t2 = s_now();
    /* as Python's map returns a list of values: read each one */
    int64_t sum = 0;
    for (int i = 0; rc == TQ_OK && i < count; i++) {
        const msgpack_object *v = tq_result_value(results[i]);
        sum += v ? v->via.i64 : 0;
    }
    *map = s_now() - t1;
    if (getenv("TQ_BENCH_VERBOSE"))
        fprintf(stderr, "map call %.1f ms, reading the values %.1f ms\n",
                (t2 - t1) * 1e3, (s_now() - t2) * 1e3);
    for (int i = 0; i < count; i++)
        tq_result_destroy(&results[i]);
    if (sum2 != sum || sum3 != sum)
        rc = TQ_EPROTO;
    for (int i = 0; i < count; i++)
        tq_buf_free(&items[i]);
    free(items);
    free(results);
    tq_pool_close(pool);
    tq_pool_join(pool, 30000);
    tq_pool_destroy(&pool);
    return rc == TQ_OK && sum > 0 ? 0 : -1;
}

/* One Python run, same measures. */
static int
s_run_python(int count, double *start, double *map)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "python3 -c '\n"
             "import multiprocessing as mp, time\n"
             "def square(x): return x * x\n"
             "if __name__ == \"__main__\":\n"
             "    mp.set_start_method(\"fork\")\n"
             "    t0 = time.monotonic()\n"
             "    p = mp.Pool(%d)\n"
             "    p.apply(square, (3,))\n"
             "    t1 = time.monotonic()\n"
             "    r = p.map(square, range(%d))\n"
             "    t2 = time.monotonic()\n"
             "    p.close(); p.join()\n"
             "    print(t1 - t0, t2 - t1)\n"
             "' 2>/dev/null",
             S_PROCESSES, count);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    int n = fscanf(p, "%lf %lf", start, map);
    return pclose(p) == 0 && n == 2 ? 0 : -1;
}

int
main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 5;
    int count = argc > 2 ? atoi(argv[2]) : 100000;
    if (runs < 1 || runs > S_MAX_RUNS || count < 1) {
        fprintf(stderr, "usage: tq-bench-pool-map [RUNS (1-%d)] [ITEMS]\n",
                S_MAX_RUNS);
        return 2;
    }
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "square", s_square, NULL);
    double ts[S_MAX_RUNS], tm[S_MAX_RUNS], tv[S_MAX_RUNS], ti[S_MAX_RUNS],
        ps[S_MAX_RUNS], pm[S_MAX_RUNS];
    int py = 0;
    for (int i = 0; i < runs; i++) {
        if (s_run_tq(reg, count, &ts[i], &tm[i], &tv[i], &ti[i]) != 0) {
            fprintf(stderr, "tq-bench-pool-map: tq run failed\n");
            return 1;
        }
        if (!getenv("TQ_BENCH_NO_PYTHON") &&
            s_run_python(count, &ps[py], &pm[py]) == 0)
            py++;
        printf("run %d: tq start %.1f ms map %.1f ms map_values %.1f ms "
               "map_items %.1f ms",
               i + 1, ts[i] * 1e3, tm[i] * 1e3, tv[i] * 1e3, ti[i] * 1e3);
        if (py == i + 1)
            printf(" | python start %.1f ms map %.1f ms", ps[i] * 1e3,
                   pm[i] * 1e3);
        printf("\n");
    }
    printf("medians of %d runs, pool of %d, map over %d ints:\n", runs,
           S_PROCESSES, count);
    double mts = s_median(ts, runs), mtm = s_median(tm, runs);
    double mtv = s_median(tv, runs), mti = s_median(ti, runs);
    printf("  tq:     start %.1f ms, map %.1f ms, map_values %.1f ms, "
           "map_items (building the items included) %.1f ms\n",
           mts * 1e3, mtm * 1e3, mtv * 1e3, mti * 1e3);
    if (py) {
        double mps = s_median(ps, py), mpm = s_median(pm, py);
        printf("  python: start %.1f ms, map %.1f ms (Pool(%d).map, default "
               "chunksize)\n",
               mps * 1e3, mpm * 1e3, S_PROCESSES);
        printf("  map: tq_pool_map %.2fx, tq_pool_map_values %.2fx, "
               "tq_pool_map_items %.2fx Python's speed\n",
               mpm / mtm, mpm / mtv, mpm / mti);
    }
    tq_registry_destroy(&reg);
    return 0;
}
