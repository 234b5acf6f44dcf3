/* seed_tq.h - what the seed ports share on top of tq: a quiet pool, the
   pool's children as Process objects, items on data queues, and Lock and
   Semaphore made of data queues holding tokens (get = acquire, put =
   release), since tq has no lock object of its own. */
#ifndef SEED_TQ_H
#define SEED_TQ_H

#include <msgpack.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seed_common.h"
#include "tq/tq.h"

/* Waits on every queue operation of the ports: a queue that stays silent
   this long means the broker or a peer is gone, so the port fails. */
#define SEED_WAIT_MS 30000

/* A pool of processes children running the tasks of reg (borrowed), with
   the fork server's log lines silenced; NULL on failure. Set stdout's
   buffering BEFORE this: the children inherit it at fork. */
static inline tq_pool_t *
seed_pool_new(int processes, tq_registry_t *reg)
{
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = reg;
    po.quiet = true;
    return tq_pool_new(processes, &po);
}

/* A client for a task running in a pool child, on the pool's endpoint.
   The first client of a process initialises czmq, which installs its own
   SIGINT/SIGTERM handlers; in a child those would swallow the stop signal
   of the pool's join (the child then lingers until it is SIGKILLed), so
   the child's handlers are put back. NULL on failure. */
static inline tq_client_t *
seed_task_client(const char *endpoint)
{
    struct sigaction intr, term;
    sigaction(SIGINT, NULL, &intr);
    sigaction(SIGTERM, NULL, &term);
    tq_client_t *client = tq_client_new(endpoint);
    sigaction(SIGINT, &intr, NULL);
    sigaction(SIGTERM, &term, NULL);
    return client;
}

static inline int
seed_pid_cmp(const void *a, const void *b)
{
    pid_t x = *(const pid_t *)a, y = *(const pid_t *)b;
    return (x > y) - (x < y);
}

/* Waits (bounded, 10 s) until the pool has want live children and stores
   their pids in pids, sorted (Process-1 is the lowest); returns how many
   there are. The children start asynchronously after tq_pool_new. */
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

/* Prints a msgpack string object (anything else as "?"). */
static inline void
seed_print_str(const char *prefix, const msgpack_object *o, const char *suffix)
{
    if (o->type == MSGPACK_OBJECT_STR)
        printf("%s%.*s%s", prefix, (int)o->via.str.size, o->via.str.ptr,
               suffix);
    else
        printf("%s?%s", prefix, suffix);
}

/* Copies the string argument index of args into out (size bytes); "" when
   it is missing or not a string. */
static inline const char *
seed_arg_str(const msgpack_object *args, uint32_t index, char *out, size_t size)
{
    out[0] = '\0';
    if (args->type == MSGPACK_OBJECT_ARRAY && index < args->via.array.size) {
        const msgpack_object *o = &args->via.array.ptr[index];
        if (o->type == MSGPACK_OBJECT_STR)
            snprintf(out, size, "%.*s", (int)o->via.str.size, o->via.str.ptr);
    }
    return out;
}

/* The integer argument index of args, or fallback. */
static inline int64_t
seed_arg_int(const msgpack_object *args, uint32_t index, int64_t fallback)
{
    if (args->type != MSGPACK_OBJECT_ARRAY || index >= args->via.array.size)
        return fallback;
    const msgpack_object *o = &args->via.array.ptr[index];
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
        o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return o->via.i64;
    return fallback;
}

/* The boolean argument index of args, or fallback. */
static inline bool
seed_arg_bool(const msgpack_object *args, uint32_t index, bool fallback)
{
    if (args->type != MSGPACK_OBJECT_ARRAY || index >= args->via.array.size ||
        args->via.array.ptr[index].type != MSGPACK_OBJECT_BOOLEAN)
        return fallback;
    return args->via.array.ptr[index].via.boolean;
}

/* Puts one item packed from picture (tq_pack's characters, ONE object:
   "s", "i", "n" ... or "a" followed by the elements of an array, e.g.
   "aii" for the tuple (i, num)). Returns tq_queue_put's code. */
static inline int
seed_put(tq_queue_t *q, int timeout_ms, const char *picture, ...)
{
    va_list ap;
    va_start(ap, picture);
    tq_buf_t buf = {0};
    bool tuple = picture[0] == 'a';
    int rc = tq_vpack(&buf, tuple ? picture + 1 : picture, ap);
    va_end(ap);
    if (rc != TQ_OK)
        return rc;
    /* tq_pack makes an argument array: a tuple is that array, a single
       object is its one element, after the 1-byte fixarray header */
    if (tuple)
        rc = tq_queue_put(q, buf.data, buf.size, timeout_ms);
    else
        rc = tq_queue_put(q, (const char *)buf.data + 1, buf.size - 1,
                          timeout_ms);
    tq_buf_free(&buf);
    return rc;
}

/* Takes one item into *item (the caller's: tq_buf_free it once done with
   *u, whose strings point into it) and unpacks it into *u (the caller's:
   init it first and destroy it after). Returns tq_queue_get's code, or
   TQ_EPROTO for bytes that do not unpack. */
static inline int
seed_get(tq_queue_t *q, msgpack_unpacked *u, tq_buf_t *item, int timeout_ms)
{
    *item = (tq_buf_t){0};
    int rc = tq_queue_get(q, item, timeout_ms);
    if (rc != TQ_OK)
        return rc;
    if (msgpack_unpack_next(u, item->data, item->size, NULL) !=
        MSGPACK_UNPACK_SUCCESS)
        rc = TQ_EPROTO;
    return rc;
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
        rc = seed_put(q, SEED_WAIT_MS, "n");
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
    return seed_put(sem, SEED_WAIT_MS, "n");
}

#endif
