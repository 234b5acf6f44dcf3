/* process_start.c - seed "Process 基本使用": five Process(target=process,
   args=(i,)) started, process(num) sleeps num seconds and prints
   "Process: num"; the main process prints cpu_count(), its
   active_children() and "Process Ended", then (as Python does at exit for
   non-daemon children) waits for them.
   tq: a Process is a task in a pool of 5, so each runs in its own child;
   active_children() is tq_pool_pids(), named Process-1..5 in pid order. A
   pool child lives on after its task, so the list always has 5 entries
   where Python may already miss Process-1 (it sleeps 0 s). */
#include <stdio.h>
#include <unistd.h>

#include "seed_tq.h"

/* process(num): time.sleep(num); print('Process:', num) */
static int
s_process(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    int64_t num;
    int rc = tq_arg_int(args, 0, &num);
    if (rc)
        return rc;
    seed_sleep(seed_secs((double)num));
    printf("Process: %lld\n", (long long)num);
    msgpack_pack_nil(out);
    return 0;
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "process", s_process, NULL);
    tq_pool_t *pool = seed_pool_new(5, reg);
    if (!pool)
        return 1;
    tq_result_t *p[5];
    for (int i = 0; i < 5; i++) /* p.start() */
        p[i] = tq_pool_apply_async(pool, "process", NULL, "i", (int64_t)i);
    printf("CPU number:%ld\n", sysconf(_SC_NPROCESSORS_ONLN));
    pid_t pids[5];
    size_t n = seed_pool_children(pool, pids, 5);
    for (size_t i = 0; i < n; i++)
        printf("Child process name:Process-%zu id: %ld\n", i + 1,
               (long)pids[i]);
    printf("Process Ended\n");
    /* the interpreter's exit joins every non-daemon child */
    tq_pool_close(pool);
    int rc = tq_pool_join(pool, 60000);
    int failed = 0;
    if (rc != TQ_OK)
        fprintf(stderr, "join: %s\n", tq_strerror(rc));
    for (int i = 0; i < 5; i++) {
        if (!p[i] || tq_result_get(p[i], 0) != TQ_OK) {
            failed++;
            fprintf(stderr, "process %d: %s\n", i,
                    p[i] ? tq_result_error(p[i]) : "refused");
        }
        tq_result_destroy(&p[i]);
    }
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    return rc == TQ_OK && !failed ? 0 : 1;
}
