/* pool_work.c - seed "进程池POOL (多个进程)": Pool(5), 10 x work(msg) with
   apply_async; work sleeps 2 s and prints "process: <name>-<msg>" (not in
   submission order); close, join, "Sub-process all done.".
   tq: current_process().name is tq_worker_name() ("ForkServerPoolWorker-N",
   as Python's forkserver pool names its workers); arguments are read with
   tq_arg_str. */
#include <stdio.h>
#include <unistd.h>

#include "seed_tq.h"

/* work(msg) */
static int
s_work(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    char msg[128];
    int rc = tq_arg_str(args, 0, msg, sizeof msg);
    if (rc)
        return rc;
    seed_sleep(seed_secs(2));
    printf("process: %s-%s\n", tq_worker_name(), msg);
    return tq_pack_nil(out);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "work", s_work, NULL);
    tq_pool_t *pool = seed_pool_new(5, reg);
    if (!pool)
        return 1;
    tq_result_t *r[10];
    for (int i = 0; i < 10; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "process %d", i);
        r[i] = tq_pool_apply_async(pool, "work", NULL, "s", msg);
    }
    tq_pool_close(pool);
    int rc = tq_pool_join(pool, 60000);
    printf("Sub-process all done.\n");
    int failed = 0;
    for (int i = 0; i < 10; i++) {
        failed += !r[i] || tq_result_get(r[i], 0) != TQ_OK;
        tq_result_destroy(&r[i]);
    }
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    return rc == TQ_OK && !failed ? 0 : 1;
}
