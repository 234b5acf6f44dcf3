/* tq_pool_server.h - private to the pool: the fork server's entry point,
   run in the process forked by tq_pool_new. */
#ifndef TQ_POOL_SERVER_H
#define TQ_POOL_SERVER_H

#include <sys/types.h>

#include "tq/tq_pool.h"

/* Runs the worker supervisor for a pool: dies with parent (the pool's
   process), forks processes children on worker_endpoint that run
   options->registry's tasks (wrapped for the initializer and
   maxtasksperchild) plus the built-ins. Never returns. options is read
   after fork, so borrowed from the parent's copy of memory. */
void tq_pool_server_run(pid_t parent, const char *worker_endpoint,
                        int processes, const tq_pool_options_t *options)
    __attribute__((noreturn));

#endif
