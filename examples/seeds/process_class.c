/* process_class.c - seed "自定义类": MyProcess(loop) subclasses Process and
   its run() prints "Pid: <pid> LoopCount: <n>" once a second, loop times;
   MyProcess(2), (3) and (4) started, the main process waits at exit.
   tq: C has no classes; run() is a registered task taking loop, and the
   three objects are three tasks in a pool of 3 (getpid() in the task is
   the child's pid, as self.pid is). */
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
    tq_result_t *p[3];
    for (int i = 2; i < 5; i++) /* MyProcess(i).start() */
        p[i - 2] =
            tq_pool_apply_async(pool, "MyProcess.run", NULL, "i", (int64_t)i);
    tq_pool_close(pool); /* the interpreter's exit joins the children */
    int rc = tq_pool_join(pool, 60000);
    int failed = 0;
    for (int i = 0; i < 3; i++) {
        failed += !p[i] || tq_result_get(p[i], 0) != TQ_OK;
        tq_result_destroy(&p[i]);
    }
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    return rc == TQ_OK && !failed ? 0 : 1;
}
