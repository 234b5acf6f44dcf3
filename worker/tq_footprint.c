/* tq_footprint.c - a worker process's ZeroMQ context on small thread
   stacks, and one malloc arena (tq_footprint.h). */
#include "tq_footprint.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

void
tq_footprint_one_arena(void)
{
    const char *tunables = getenv("GLIBC_TUNABLES");
    if (getenv("MALLOC_ARENA_MAX") ||
        (tunables && strstr(tunables, "glibc.malloc.arena_max")))
        return;
    mallopt(M_ARENA_MAX, 1);
}

void *
tq_footprint_context_new(int max_sockets)
{
    /* libzmq takes no stack size: its threads get the process default,
       lowered while they start and put back at once */
    pthread_attr_t old, small;
    bool got = pthread_getattr_default_np(&old) == 0, lowered = false;
    if (got) {
        pthread_attr_init(&small);
        lowered =
            pthread_attr_setstacksize(&small, TQ_FOOTPRINT_ZMQ_STACK) == 0 &&
            pthread_setattr_default_np(&small) == 0;
        pthread_attr_destroy(&small);
    }
    void *ctx = zmq_ctx_new();
    if (ctx && max_sockets > 0)
        zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, max_sockets);
    /* the threads start with the context's first socket */
    void *sock = ctx ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    int saved = errno;
    if (sock)
        zmq_close(sock);
    if (lowered)
        pthread_setattr_default_np(&old);
    if (got)
        pthread_attr_destroy(&old);
    if (ctx && !sock) {
        zmq_ctx_term(ctx);
        ctx = NULL;
    }
    errno = saved;
    return ctx;
}
