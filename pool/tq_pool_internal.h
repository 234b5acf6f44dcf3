/* tq_pool_internal.h - private to the pool: what the map family
   (tq_pool_map.c) uses of the pool object (tq_pool.c). */
#ifndef TQ_POOL_INTERNAL_H
#define TQ_POOL_INTERNAL_H

#include "tq/tq_pool.h"

/* Submits task with packed args (borrowed) and tracks it for join and
   terminate. NULL when the pool no longer accepts work or the client
   refused the call; a final TQ_ENOTASK handle for an unknown name. */
tq_result_t *tq_pool_submit_raw(tq_pool_t *self, const char *task,
                                const tq_options_t *options, const void *args,
                                size_t size);

/* TQ_OK if the pool's children provide task; else TQ_ENOTASK with a text
   naming it in error. */
int tq_pool_check_task(const tq_pool_t *self, const char *task, char *error,
                       size_t errlen);

/* The chunksize option (0: Python's rule). */
size_t tq_pool_chunksize(const tq_pool_t *self);

#endif
