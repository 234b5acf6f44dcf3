/* pool_apply_async.c - seed "使用进程池（非阻塞）": Pool(3), 4 x func(msg)
   with apply_async; the Mark line comes first, about two rounds of 3 s. */
#include <stdio.h>
#include <string.h>

#include "seed_common.h"
#include "tq/tq.h"

/* func(msg): print "msg: ...", sleep 3, print "end" */
static int
s_func(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    char msg[64];
    int rc = tq_arg_str(args, 0, msg, sizeof msg);
    if (rc)
        return rc;
    printf("msg: %s\n", msg);
    fflush(stdout);
    seed_sleep(seed_secs(3));
    printf("end\n");
    fflush(stdout);
    return tq_pack_nil(out);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "func", s_func, NULL);
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = reg;
    tq_pool_t *pool = tq_pool_new(3, &po);
    if (!pool)
        return 1;
    double t0 = seed_now();
    tq_result_t *r[4];
    for (int i = 0; i < 4; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "hello %d", i);
        /* keeps 3 tasks running; the 4th starts when one ends */
        r[i] = tq_pool_apply_async(pool, "func", NULL, "s", msg);
    }
    printf("Mark~ Mark~ Mark~~~~~~~~~~~~~~~~~~~~~~\n");
    tq_pool_close(pool);
    tq_pool_join(pool, -1); /* join after close, or it is refused */
    printf("Sub-process(es) done.\n");
    fprintf(stderr, "elapsed %.2f s\n", seed_now() - t0);
    for (int i = 0; i < 4; i++)
        tq_result_destroy(&r[i]);
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    return 0;
}
