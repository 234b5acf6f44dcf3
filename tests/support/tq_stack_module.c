/* tq_stack_module.c - a task module for test_child_footprint: the task
   test.thread_stack starts a thread with the default attributes and
   returns the size of that thread's stack in bytes. A worker child starts
   its ZeroMQ threads on small stacks; a task's own threads must still get
   the process default (RLIMIT_STACK). */
#include <pthread.h>
#include <stdint.h>

#include "tq/tq_worker.h"

int tq_module_init(tq_registry_t *registry);

static void *
s_measure(void *arg)
{
    size_t *size = arg;
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstacksize(&attr, size);
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

static int
s_thread_stack(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)args;
    size_t size = 0;
    pthread_t thread;
    if (pthread_create(&thread, NULL, s_measure, &size) != 0)
        return tq_task_fail(task, "pthread_create failed");
    pthread_join(thread, NULL);
    if (!size)
        return tq_task_fail(task, "pthread_getattr_np failed");
    msgpack_pack_uint64(out, (uint64_t)size);
    return 0;
}

int
tq_module_init(tq_registry_t *registry)
{
    return tq_registry_add(registry, "test.thread_stack", s_thread_stack, NULL);
}
