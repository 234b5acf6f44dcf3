/* lock.c - seed "Lock": MyProcess(loop, lock) for loop = 10..14, each
   printing "Pid: <pid> LoopCount: <n>" every 0.1 s between
   lock.acquire() and lock.release(), so no two prints mix.
   tq has no Lock object: the lock is a data queue holding one token on the
   pool's broker (acquire = get, release = put), which works across
   processes and hosts. The print is written in two halves with a pause
   between them, so a missing lock shows as mixed lines; run with
   --no-lock to see that. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "seed_tq.h"

#define LOCK "seed.lock"

/* MyProcess.run(loop, use_lock) */
static int
s_run(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    int64_t loop;
    bool use_lock;
    int rc;
    if ((rc = tq_arg_int(args, 0, &loop)) ||
        (rc = tq_arg_bool(args, 1, &use_lock)))
        return rc;
    tq_client_t *client = tq_pool_task_client();
    tq_queue_t *lock = client ? tq_queue_new(client, LOCK, 0) : NULL;
    if (!lock)
        return tq_task_fail(task, "no lock queue");
    for (int64_t count = 0; count < loop && rc == TQ_OK; count++) {
        seed_sleep(seed_secs(0.1));
        if (use_lock && (rc = seed_acquire(lock)) != TQ_OK)
            break;
        printf("Pid: %ld ", (long)getpid());
        fflush(stdout);
        seed_sleep(seed_secs(0.05)); /* room for another process to cut in */
        printf("LoopCount: %lld\n", (long long)count);
        if (use_lock)
            rc = seed_release(lock);
    }
    tq_queue_destroy(&lock);
    if (rc != TQ_OK)
        return tq_task_fail(task, "lock: %s", tq_strerror(rc));
    return tq_pack_nil(out);
}

int
main(int argc, char **argv)
{
    bool use_lock = !(argc > 1 && strcmp(argv[1], "--no-lock") == 0);
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "MyProcess.run", s_run, NULL);
    tq_pool_t *pool = seed_pool_new(5, reg);
    if (!pool)
        return 1;
    /* lock = Lock() */
    if (seed_semaphore_init(tq_pool_client(pool), LOCK, 1) != TQ_OK) {
        tq_pool_destroy(&pool);
        return 1;
    }
    tq_result_t *p[5];
    for (int i = 10; i < 15; i++) /* MyProcess(i, lock).start() */
        p[i - 10] = tq_pool_apply_async(pool, "MyProcess.run", NULL, "ib",
                                        (int64_t)i, (int)use_lock);
    tq_pool_close(pool); /* the interpreter's exit joins the children */
    int rc = tq_pool_join(pool, 60000);
    int failed = 0;
    for (int i = 0; i < 5; i++) {
        if (!p[i] || tq_result_get(p[i], 0) != TQ_OK) {
            failed++;
            fprintf(stderr, "process %d: %s\n", i + 10,
                    p[i] ? tq_result_error(p[i]) : "refused");
        }
        tq_result_destroy(&p[i]);
    }
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    return rc == TQ_OK && !failed ? 0 : 1;
}
