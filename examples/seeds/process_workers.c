/* process_workers.c - seed "other example" of Process: worker_1, worker_2
   and worker_3 (2, 3 and 4 s) started as three processes; the main process
   prints the CPU count, its active children and "END!!!!!!!!!!!!!!!!!",
   then waits for them at exit (non-daemon children).
   tq: three registered tasks in a pool of 3; active_children() is
   tq_pool_pids() (named Process-1..3 in pid order). */
#include <stdio.h>
#include <unistd.h>

#include "seed_tq.h"

/* worker_N(interval): prints its name, sleeps, prints "end <name>". The
   task's name is tq_task_name(). */
static int
s_worker(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    const char *name = tq_task_name(); /* current_process().name */
    int64_t secs;
    int rc = tq_arg_int(args, 0, &secs);
    if (rc)
        return rc;
    printf("%s\n", name);
    seed_sleep(seed_secs((double)secs));
    printf("end %s\n", name);
    msgpack_pack_nil(out);
    return 0;
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    static const char *names[3] = {"worker_1", "worker_2", "worker_3"};
    tq_registry_t *reg = tq_registry_new();
    for (int i = 0; i < 3; i++)
        tq_registry_add(reg, names[i], s_worker, NULL);
    tq_pool_t *pool = seed_pool_new(3, reg);
    if (!pool)
        return 1;
    tq_result_t *p[3];
    for (int i = 0; i < 3; i++) /* p1.start() ... with args 2, 3, 4 */
        p[i] = tq_pool_apply_async(pool, names[i], NULL, "i", (int64_t)(i + 2));
    printf("The number of CPU is:%ld\n", sysconf(_SC_NPROCESSORS_ONLN));
    pid_t pids[3];
    size_t n = seed_pool_children(pool, pids, 3);
    for (size_t i = 0; i < n; i++)
        printf("child   p.name:Process-%zu\tp.id%ld\n", i + 1, (long)pids[i]);
    printf("END!!!!!!!!!!!!!!!!!\n");
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
