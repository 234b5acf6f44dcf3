/* pool_results.c - seed "多个子进程并返回值": Pool(4), 10 x func(msg)
   returning "<child>-<msg>" after 2 s; get() in submission order. */
#include <stdio.h>
#include <unistd.h>

#include "seed_common.h"
#include "tq/tq.h"

/* func(msg): sleep 2, return current_process().name + '-' + msg */
static int
s_func(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    char msg[64], text[160];
    int rc = tq_arg_str(args, 0, msg, sizeof msg);
    if (rc)
        return rc;
    seed_sleep(seed_secs(2));
    snprintf(text, sizeof text, "%s-%s", tq_worker_name(), msg);
    return tq_pack_str(out, text);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "func", s_func, NULL);
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = reg;
    tq_pool_t *pool = tq_pool_new(4, &po);
    if (!pool)
        return 1;
    tq_result_t *results[10];
    for (int i = 0; i < 10; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "process %d", i);
        results[i] = tq_pool_apply_async(pool, "func", NULL, "s", msg);
    }
    tq_pool_close(pool);
    tq_pool_join(pool, -1);
    printf("Sub-process(es) done.\n");
    for (int i = 0; i < 10; i++) {
        if (tq_result_get(results[i], 0) == TQ_OK) {
            const msgpack_object *v = tq_result_value(results[i]);
            printf("%.*s\n", (int)v->via.str.size, v->via.str.ptr);
        } else
            printf("error: %s\n", tq_result_error(results[i]));
        tq_result_destroy(&results[i]);
    }
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    return 0;
}
