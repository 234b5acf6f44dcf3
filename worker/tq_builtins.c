/* tq_builtins.c - the tasks every tq-worker has: tq.echo, tq.sleep,
   tq.fail. */
#include "tq_worker_host.h"

#include <errno.h>
#include <time.h>

/* Longest tq.sleep accepted, seconds (one day). */
#define S_SLEEP_MAX 86400.0

/* tq.echo ARGS... -> [ARGS...]: the argument array, unchanged. */
static int
s_echo(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    return msgpack_pack_object(out, *args);
}

/* Reads a msgpack number as a double; false if obj is not a number. */
static bool
s_number(const msgpack_object *obj, double *value)
{
    switch (obj->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *value = (double)obj->via.u64;
        return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *value = (double)obj->via.i64;
        return true;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *value = obj->via.f64;
        return true;
    default:
        return false;
    }
}

/* tq.sleep [SECONDS] -> SECONDS as a float: sleeps the whole duration,
   even when signals interrupt (a child's SIGTERM lets its task finish). */
static int
s_sleep(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    double secs = 0;
    if (args->via.array.size > 1)
        return tq_task_fail(task,
                            "tq.sleep takes at most 1 argument (%u "
                            "given)",
                            args->via.array.size);
    if (args->via.array.size == 1 && !s_number(&args->via.array.ptr[0], &secs))
        return tq_task_fail(task, "tq.sleep: seconds must be a number");
    if (!(secs >= 0 && secs <= S_SLEEP_MAX)) /* also catches NaN */
        return tq_task_fail(task, "tq.sleep: seconds must be 0..%.0f",
                            S_SLEEP_MAX);
    struct timespec left;
    left.tv_sec = (time_t)secs;
    left.tv_nsec = (long)((secs - (double)left.tv_sec) * 1e9);
    if (left.tv_nsec >= 1000000000L)
        left.tv_nsec = 999999999L;
    while (nanosleep(&left, &left) < 0 && errno == EINTR)
        ;
    return msgpack_pack_double(out, secs);
}

/* tq.fail [MESSAGE]: fails with MESSAGE (default "tq.fail called"). */
static int
s_fail(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)out;
    if (args->via.array.size > 1)
        return tq_task_fail(task,
                            "tq.fail takes at most 1 argument (%u "
                            "given)",
                            args->via.array.size);
    if (args->via.array.size == 0 ||
        args->via.array.ptr[0].type == MSGPACK_OBJECT_NIL)
        return tq_task_fail(task, "tq.fail called");
    const msgpack_object *msg = &args->via.array.ptr[0];
    if (msg->type != MSGPACK_OBJECT_STR)
        return tq_task_fail(task, "tq.fail: message must be a string");
    int len = msg->via.str.size > TQ_PROTO_MAX_ERROR ? TQ_PROTO_MAX_ERROR
                                                     : (int)msg->via.str.size;
    return tq_task_fail(task, "%.*s", len, msg->via.str.ptr);
}

int
tq_registry_add_builtins(tq_registry_t *self)
{
    int rc = tq_registry_add(self, "tq.echo", s_echo, NULL);
    if (rc == TQ_OK)
        rc = tq_registry_add(self, "tq.sleep", s_sleep, NULL);
    if (rc == TQ_OK)
        rc = tq_registry_add(self, "tq.fail", s_fail, NULL);
    return rc;
}
