/* pool_demo.c - the embedded pool with no broker to start: a Pool of 3
   running apply_async with callbacks, apply, map (values and handles),
   imap, an unknown task and terminate. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "tq/tq.h"

/* square(x) -> [x * x, the name of the child that ran it] */
static int
s_square(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    int64_t x;
    int rc = tq_arg_int(args, 0, &x); /* "task square: argument 0 ..." */
    if (rc)
        return rc;
    return tq_pack_value(out, "is", x * x, tq_worker_name());
}

static void
s_on_result(tq_result_t *r, void *arg)
{
    (void)arg;
    const msgpack_object *v = tq_result_value(r);
    printf("  callback: square = %lld (%.*s)\n",
           (long long)v->via.array.ptr[0].via.i64,
           (int)v->via.array.ptr[1].via.str.size,
           v->via.array.ptr[1].via.str.ptr);
}

static double
s_secs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "square", s_square, NULL);
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = reg;
    po.verbose = getenv("TQ_POOL_VERBOSE") != NULL;
    double t0 = s_secs();
    tq_pool_t *pool = tq_pool_new(3, &po); /* any time, any thread */
    if (!pool) {
        fprintf(stderr, "pool_demo: cannot start the pool\n");
        return 1;
    }
    printf("== Pool(3): fork server %ld, no broker to start (%.0f ms)\n",
           (long)tq_pool_server_pid(pool), (s_secs() - t0) * 1000);

    printf("== apply_async with a callback, 4 tasks\n");
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.callback = s_on_result;
    tq_result_t *rs[4];
    for (int i = 0; i < 4; i++)
        rs[i] = tq_pool_apply_async(pool, "square", &opts, "i", (int64_t)i + 2);
    for (int i = 0; i < 4; i++) {
        tq_result_get(rs[i], 10000);
        tq_result_destroy(&rs[i]);
    }

    printf("== apply (blocking)\n");
    tq_result_t *r = tq_pool_apply(pool, "square", NULL, "i", (int64_t)12);
    printf("  square(12) = %lld\n",
           (long long)tq_result_value(r)->via.array.ptr[0].via.i64);
    tq_result_destroy(&r);

    printf("== map over 0..9, the values in order\n");
    tq_buf_t items[10];
    tq_result_t *out[10];
    for (int i = 0; i < 10; i++)
        tq_pack(&items[i], "i", (int64_t)i);
    tq_values_t *values = NULL;
    int rc =
        tq_pool_map_values(pool, "square", NULL, items, 10, &values, 10000);
    printf("  %s:", tq_strerror(rc));
    for (size_t i = 0; rc == TQ_OK && i < 10; i++)
        printf(" %lld",
               (long long)tq_values_at(values, i)->via.array.ptr[0].via.i64);
    tq_values_destroy(&values);
    printf("\n== map over 0..9, a handle per item\n");
    rc = tq_pool_map(pool, "square", NULL, items, 10, out, 10000);
    printf("  %s:", tq_strerror(rc));
    for (int i = 0; i < 10; i++) {
        if (tq_result_successful(out[i]))
            printf(
                " %lld",
                (long long)tq_result_value(out[i])->via.array.ptr[0].via.i64);
        else
            printf(" [%s]", tq_result_error(out[i]));
        tq_result_destroy(&out[i]);
    }
    printf("\n== imap, next with a timeout\n ");
    tq_pool_imap_t *it = tq_pool_imap(pool, "square", NULL, items, 5);
    while ((rc = tq_pool_imap_next(it, 5000, &r)) != TQ_EEMPTY) {
        if (rc == TQ_OK)
            printf(" %lld",
                   (long long)tq_result_value(r)->via.array.ptr[0].via.i64);
        else
            printf(" [%s]", tq_strerror(rc));
        tq_result_destroy(&r);
        if (rc == TQ_ETIMEDOUT)
            break;
    }
    tq_pool_imap_destroy(&it);
    for (int i = 0; i < 10; i++)
        tq_buf_free(&items[i]);

    printf("\n== an unregistered name fails at once\n");
    r = tq_pool_apply_async(pool, "no.such.task", NULL, "");
    printf("  %s: %s\n", tq_strerror(tq_result_code(r)), tq_result_error(r));
    tq_result_destroy(&r);
    printf("== a failing task\n");
    r = tq_pool_apply(pool, "tq.fail", NULL, "s", "something broke");
    printf("  %s: %s\n", tq_strerror(tq_result_code(r)), tq_result_error(r));
    tq_result_destroy(&r);

    printf("== join before close is refused: %s\n",
           tq_strerror(tq_pool_join(pool, 1000)));
    printf("== terminate with a task running\n");
    r = tq_pool_apply_async(pool, "tq.sleep", NULL, "d", 30.0);
    tq_result_wait(r, 300);
    tq_pool_terminate(pool);
    printf("  the 30 s sleep ended %s (%s)\n",
           tq_state_name(tq_result_state(r)),
           tq_strerror(tq_result_get(r, 5000)));
    tq_result_destroy(&r);
    printf("== join after terminate: %s\n",
           tq_strerror(tq_pool_join(pool, 5000)));
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    printf("done in %.2f s\n", s_secs() - t0);
    return 0;
}
