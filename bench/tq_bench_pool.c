/* tq_bench_pool.c - W1 (20,000 no-op apply_async) and W2 (sequential apply,
   p50/p99; usage: tq-bench-pool [N [SEQ [PREFETCH]]]) on an embedded tq_pool of
   2, next to Python's multiprocessing.Pool(2) apply_async measured on the same
   machine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq/tq.h"

static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
s_noop(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    (void)args;
    msgpack_pack_nil(out);
    return 0;
}

static int
s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Python's multiprocessing.Pool(2): n no-op apply_async, tasks/s (0 when
   python3 is missing). */
static double
s_python(int n)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "python3 -c '\n"
             "import multiprocessing as mp, time\n"
             "def noop(): return None\n"
             "if __name__ == \"__main__\":\n"
             "    with mp.Pool(2) as p:\n"
             "        p.apply(noop)\n"
             "        t = time.monotonic()\n"
             "        rs = [p.apply_async(noop) for _ in range(%d)]\n"
             "        for r in rs: r.get()\n"
             "        print(%d / (time.monotonic() - t))\n' 2>/dev/null",
             n, n);
    FILE *p = popen(cmd, "r");
    double rate = 0;
    if (p) {
        if (fscanf(p, "%lf", &rate) != 1)
            rate = 0;
        pclose(p);
    }
    return rate;
}

int
main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    int seq = argc > 2 ? atoi(argv[2]) : 2000;
    int prefetch = argc > 3 ? atoi(argv[3]) : TQ_POOL_PREFETCH;
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "noop", s_noop, NULL);
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = reg;
    po.quiet = true;
    po.prefetch = prefetch;
    tq_pool_t *pool = tq_pool_new(2, &po);
    if (!pool)
        return 1;
    /* warm: both children connected */
    tq_result_t *w = tq_pool_apply(pool, "noop", NULL, 10000, "");
    tq_result_destroy(&w);

    tq_result_t **rs = calloc((size_t)n, sizeof *rs);
    double t0 = s_now();
    for (int i = 0; i < n; i++)
        rs[i] = tq_pool_apply_async(pool, "noop", NULL, "");
    int failed = 0;
    for (int i = 0; i < n; i++) {
        failed += tq_result_get(rs[i], 60000) != TQ_OK;
        tq_result_destroy(&rs[i]);
    }
    double w1 = n / (s_now() - t0);
    free(rs);

    double *lat = calloc((size_t)seq, sizeof *lat);
    for (int i = 0; i < seq; i++) {
        double t = s_now();
        tq_result_t *r = tq_pool_apply(pool, "noop", NULL, 10000, "");
        failed += tq_result_code(r) != TQ_OK;
        tq_result_destroy(&r);
        lat[i] = (s_now() - t) * 1e6;
    }
    qsort(lat, (size_t)seq, sizeof *lat, s_cmp);
    tq_pool_close(pool);
    tq_pool_join(pool, 10000);
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);

    double py = s_python(n);
    printf("tq_pool(2)  W1: %d no-op apply_async, prefetch %d: %.0f tasks/s "
           "(%d failed)\n",
           n, prefetch, w1, failed);
    printf("tq_pool(2)  W2: %d sequential apply: p50 %.0f us, p99 %.0f us\n",
           seq, lat[seq / 2], lat[seq * 99 / 100]);
    if (py > 0)
        printf("python3 multiprocessing.Pool(2) apply_async: %.0f tasks/s "
               "(tq_pool is %.2fx)\n",
               py, w1 / py);
    else
        printf("python3 multiprocessing.Pool(2): not measured (no python3)\n");
    free(lat);
    return failed ? 1 : 0;
}
