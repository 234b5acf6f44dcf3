/* seed_tq.h - what the seed ports share on top of tq: a pool, the pool's
   children as Process objects, and Lock and Semaphore made of data queues
   holding tokens (get = acquire, put = release), since tq has no lock
   object of its own. Tasks read their arguments with tq_arg_*, pack
   results with tq_pack_*, reach the pool's data queues through
   tq_pool_task_client() and put and take items with tq_queue_putf and
   tq_queue_get_item. */
#ifndef SEED_TQ_H
#define SEED_TQ_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seed_common.h"
#include "tq/tq.h"

/* Waits on every queue operation of the ports: a queue that stays silent
   this long means the broker or a peer is gone, so the port fails. */
#define SEED_WAIT_MS 30000

/* A pool of processes children running the tasks of reg (borrowed); NULL
   on failure. Set stdout's buffering BEFORE this: the children take the
   program's line buffering. */
static inline tq_pool_t *
seed_pool_new(int processes, tq_registry_t *reg)
{
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = reg;
    return tq_pool_new(processes, &po);
}

static inline int
seed_pid_cmp(const void *a, const void *b)
{
    pid_t x = *(const pid_t *)a, y = *(const pid_t *)b;
    return (x > y) - (x < y);
}

/* Waits (bounded, 10 s) until the pool has want live children and stores
   their pids in pids, sorted (Process-1 is the lowest); returns how many
   there are (all of them at once: tq_pool_new returns with every child
   ready). */
static inline size_t
seed_pool_children(tq_pool_t *pool, pid_t *pids, size_t want)
{
    size_t n = 0;
    double until = seed_now() + 10;
    while ((n = tq_pool_pids(pool, pids, want)) < want && seed_now() < until)
        seed_sleep(0.005);
    qsort(pids, n, sizeof *pids, seed_pid_cmp);
    return n;
}

/* Semaphore(value) / Lock() on the broker: the data queue `name` holding
   value tokens. Call once, in the process that creates the objects, before
   anyone acquires. Returns TQ_OK or the first failing put's code. */
static inline int
seed_semaphore_init(tq_client_t *client, const char *name, int value)
{
    tq_queue_t *q = tq_queue_new(client, name, 0);
    if (!q)
        return TQ_EINVAL;
    int rc = TQ_OK;
    for (int i = 0; i < value && rc == TQ_OK; i++)
        rc = tq_queue_putf(q, SEED_WAIT_MS, "n");
    tq_queue_destroy(&q);
    return rc;
}

/* acquire(): takes a token, waiting up to SEED_WAIT_MS. TQ_OK or the
   queue's error (TQ_EEMPTY: nobody released in time). */
static inline int
seed_acquire(tq_queue_t *sem)
{
    tq_buf_t token;
    int rc = tq_queue_get(sem, &token, SEED_WAIT_MS);
    if (rc == TQ_OK)
        tq_buf_free(&token);
    return rc;
}

/* release(): gives a token back. */
static inline int
seed_release(tq_queue_t *sem)
{
    return tq_queue_putf(sem, SEED_WAIT_MS, "n");
}

#endif
