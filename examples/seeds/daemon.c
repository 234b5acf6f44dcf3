/* daemon.c - seed "deamon": MyProcess(2), (3), (4) with daemon = True and
   no join; the main process prints "Main process Ended!" and ends, which
   terminates its daemonic children before any of them prints.
   tq: the three objects are tasks in a pool of 3; ending without close
   and join, tq_pool_destroy acts as terminate (Python's exit handler
   terminates daemonic children the same way), and even without destroy
   the children would die with the program (PR_SET_PDEATHSIG). The child
   pids go to stderr so that a test can check /proc after the program. */
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
    for (int i = 2; i < 5; i++) /* p.daemon = True; p.start() */
        p[i - 2] =
            tq_pool_apply_async(pool, "MyProcess.run", NULL, "i", (int64_t)i);
    pid_t pids[3];
    size_t n = seed_pool_children(pool, pids, 3);
    fprintf(stderr, "daemon children:");
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, " %ld", (long)pids[i]);
    fprintf(stderr, " server %ld\n", (long)tq_pool_server_pid(pool));
    printf("Main process Ended!\n");
    /* the end of the main process: daemonic children are terminated */
    tq_pool_destroy(&pool);
    int cancelled = 0;
    for (int i = 0; i < 3; i++) {
        cancelled += p[i] && tq_result_get(p[i], 0) == TQ_ECANCELLED;
        tq_result_destroy(&p[i]);
    }
    fprintf(stderr, "daemon tasks cancelled: %d\n", cancelled);
    tq_registry_destroy(&reg);
    return 0;
}
