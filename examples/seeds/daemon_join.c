/* daemon_join.c - seed "deamon" with join(): each daemonic MyProcess(i),
   i = 2, 3, 4, is started and joined in turn, so the loops run one after
   the other (2 + 3 + 4 s) and "Main process Ended!" comes last.
   tq: start + join of one process is tq_pool_apply (blocking) in a pool
   of 3. */
#include <stdio.h>
#include <unistd.h>

#include "seed_tq.h"

/* MyProcess.run(loop) */
static int
s_run(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    int64_t loop;
    int rc = tq_arg_int(args, 0, &loop);
    if (rc)
        return rc;
    for (int64_t count = 0; count < loop; count++) {
        seed_sleep(seed_secs(1));
        printf("Pid: %ld LoopCount: %lld\n", (long)getpid(), (long long)count);
    }
    msgpack_pack_nil(out);
    return 0;
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "MyProcess.run", s_run, NULL);
    tq_pool_t *pool = seed_pool_new(3, reg);
    if (!pool)
        return 1;
    int failed = 0;
    for (int i = 2; i < 5; i++) { /* p.start(); p.join() */
        tq_result_t *p =
            tq_pool_apply(pool, "MyProcess.run", NULL, "i", (int64_t)i);
        failed += !p || tq_result_code(p) != TQ_OK;
        tq_result_destroy(&p);
    }
    printf("Main process Ended!\n");
    tq_pool_close(pool);
    int rc = tq_pool_join(pool, 10000);
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    return rc == TQ_OK && !failed ? 0 : 1;
}
