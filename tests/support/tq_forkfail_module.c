/* tq_forkfail_module.c - a task module whose children cannot start: it
   registers a fork handler that makes every process forked after it was
   loaded exit with status 3 at once. Loaded by tq-worker, it stands for a
   worker host whose children fail at start-up (test_worker_host). */
#include <pthread.h>
#include <unistd.h>

#include "tq/tq_worker.h"

int tq_module_init(tq_registry_t *registry);

static int
s_never(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    (void)args;
    (void)out;
    return 0;
}

static void
s_in_child(void)
{
    _exit(3);
}

int
tq_module_init(tq_registry_t *registry)
{
    if (pthread_atfork(NULL, NULL, s_in_child) != 0)
        return -1;
    return tq_registry_add(registry, "test.never", s_never, NULL);
}
