/* tq_pool.h - the embedded pool: multiprocessing.Pool for C, with a private
   broker and forked children inside the calling program. */
#ifndef TQ_POOL_H
#define TQ_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "tq_client.h"
#include "tq_error.h"
#include "tq_worker.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fork rule. tq_pool_new forks one small fork server (the worker
   supervisor) BEFORE it starts any thread of its own; the server forks and
   recycles the children, so no child is ever forked from a process running
   the broker or client threads. A program that already runs threads of its
   own should call tq_pool_new before starting them (locks your threads hold
   at fork time stay locked in the server), and from a thread that lives as
   long as the pool: the server dies with the thread that forked it
   (PR_SET_PDEATHSIG), and the children die with the server. */

typedef struct tq_pool_t tq_pool_t;
typedef struct tq_result_set_t tq_result_set_t;
typedef struct tq_pool_imap_t tq_pool_imap_t;

/* Runs once in each child before it runs its first task (Python's
   initializer/initargs). */
typedef void(tq_pool_init_fn)(void *arg);

/* Tasks a pool child holds by default. More than 1 hides the broker round
   trip between short tasks (about twice their throughput). It hides no
   work: a child with nothing to do asks a busy one for its unstarted tasks,
   and the holder gives back only what it has not started (work stealing,
   PROTOCOL 5.3.5), so every task still runs once, in the order one queue
   would start them. Set 1 for strict one-at-a-time dispatch. */
#define TQ_POOL_PREFETCH 8

/* Pool options; zero-initialise (TQ_POOL_OPTIONS_INIT). */
typedef struct {
    tq_registry_t *registry; /* tasks the children run (borrowed, must
                                be complete before tq_pool_new); NULL:
                                the built-ins only */
    tq_pool_init_fn *initializer; /* may be NULL */
    void *initargs; /* passed to initializer */
    int maxtasksperchild; /* tasks before a child is replaced, 0:
                             never */
    int prefetch; /* tasks each child may hold, 0: the
                     default, TQ_POOL_PREFETCH (see there) */
    bool quiet; /* silence the fork server's log lines
                   (and the children's stderr) */
} tq_pool_options_t;

#define TQ_POOL_OPTIONS_INIT                                                   \
    {                                                                          \
        0                                                                      \
    }

/* Starts a pool of processes children (<= 0: online CPUs): forks the fork
   server, starts a broker thread on ipc:// endpoints in a fresh temporary
   directory, and connects a client. The built-in tasks (tq.echo, tq.sleep,
   tq.fail) are added unless the registry has those names. options may be
   NULL. Returns NULL on failure. */
tq_pool_t *tq_pool_new(int processes, const tq_pool_options_t *options);

/* Ends the pool and frees it; NULL-safe, nulls *self_p. Without a
   successful join first it acts as tq_pool_terminate (as Python's `with`
   block does): children killed, pending tasks CANCELLED. The temporary
   directory is removed. A pool still alive when the program calls exit()
   (or returns from main) is destroyed then, as Python's finalizers
   terminate a pool; not from a forked child of the program. Call exit()
   only when no other thread is inside a call on the pool. */
void tq_pool_destroy(tq_pool_t **self_p);

/* The pool's client (borrowed, valid until destroy): every client call
   (tq_apply_async, tq_map, tq_client_status ...) works on it. Only tasks
   submitted through tq_pool_* calls are tracked by join and terminate. */
tq_client_t *tq_pool_client(tq_pool_t *self);

/* The pool's broker client endpoint (an ipc:// path, borrowed): a process
   the pool forked (a task in a child) may open its own tq_client_t on it,
   to use data queues (tq_queue.h) for instance. */
const char *tq_pool_endpoint(const tq_pool_t *self);

/* Number of children. */
int tq_pool_processes(const tq_pool_t *self);

/* Pid of the fork server (the children's parent). */
pid_t tq_pool_server_pid(const tq_pool_t *self);

/* Stores up to max pids of the live children in pids (read from /proc);
   returns how many there are. */
size_t tq_pool_pids(const tq_pool_t *self, pid_t *pids, size_t max);

/* Submits task, arguments packed from picture (see tq_pack). Returns the
   handle (the caller's), or NULL after close/terminate or on invalid
   arguments. The options' callbacks fire as with tq_apply_async. */
tq_result_t *tq_pool_apply_async(tq_pool_t *self, const char *task,
                                 const tq_options_t *options,
                                 const char *picture, ...);

/* Blocking apply: waits up to timeout_ms (-1: forever). Returns the handle
   (the caller's) whatever happened; NULL as tq_pool_apply_async. */
tq_result_t *tq_pool_apply(tq_pool_t *self, const char *task,
                           const tq_options_t *options, int timeout_ms,
                           const char *picture, ...);

/* Python's map: items[i] is the task's one argument, packed as a
   one-element array (tq_pack(&item, "i", x)); another shape: TQ_EINVAL.
   Handles go to results[i] (the caller's), in order. Waits up to
   timeout_ms; returns TQ_OK if all succeeded, else the first non-OK code
   in order; TQ_ECLOSED after close (nothing submitted). */
int tq_pool_map(tq_pool_t *self, const char *task, const tq_options_t *options,
                const tq_buf_t *items, size_t count, tq_result_t **results,
                int timeout_ms);

/* Python's starmap: args[i] is a packed argument ARRAY (as tq_map takes),
   the task is called with its elements. Otherwise as tq_pool_map. */
int tq_pool_starmap(tq_pool_t *self, const char *task,
                    const tq_options_t *options, const tq_buf_t *args,
                    size_t count, tq_result_t **results, int timeout_ms);

/* Python's map_async: submits as tq_pool_map and returns at once a set of
   handles in submission order (the caller's), NULL after close. */
tq_result_set_t *tq_pool_map_async(tq_pool_t *self, const char *task,
                                   const tq_options_t *options,
                                   const tq_buf_t *items, size_t count);

/* Number of handles in the set. */
size_t tq_result_set_size(const tq_result_set_t *self);

/* The index-th handle (borrowed, valid until the set is destroyed). */
tq_result_t *tq_result_set_at(const tq_result_set_t *self, size_t index);

/* True once every handle is ready. */
bool tq_result_set_ready(const tq_result_set_t *self);

/* Waits up to timeout_ms (-1: forever) for every handle. Returns TQ_OK if
   all succeeded, the first non-OK code in order, or TQ_ETIMEDOUT. */
int tq_result_set_get(tq_result_set_t *self, int timeout_ms);

/* Frees the set and its handles; NULL-safe, nulls *self_p. */
void tq_result_set_destroy(tq_result_set_t **self_p);

/* Python's imap: submits every item (one object each, as tq_pool_map) and
   returns an iterator that yields results in submission order. NULL after
   close. */
tq_pool_imap_t *tq_pool_imap(tq_pool_t *self, const char *task,
                             const tq_options_t *options, const tq_buf_t *items,
                             size_t count);

/* Next result in order: waits up to timeout_ms for it. Returns TQ_EEMPTY
   at the end (nothing stored), TQ_ETIMEDOUT if the next one is not ready
   (try again: the iterator stays on it), else the handle's code (TQ_OK,
   TQ_ETASK ...) with the handle in *result_p (the caller's). */
int tq_pool_imap_next(tq_pool_imap_t *self, int timeout_ms,
                      tq_result_t **result_p);

/* Frees the iterator and the handles it did not hand out; NULL-safe. */
void tq_pool_imap_destroy(tq_pool_imap_t **self_p);

/* Stops accepting work: tq_pool_* submissions fail from now on. TQ_OK, or
   TQ_ESTATE after terminate. */
int tq_pool_close(tq_pool_t *self);

/* Waits up to timeout_ms (-1: forever) for every submitted task to finish,
   then stops the children and reaps them. TQ_ESTATE unless close or
   terminate came first (as Python raises); TQ_ETIMEDOUT if the wait ended
   first; else TQ_OK. */
int tq_pool_join(tq_pool_t *self, int timeout_ms);

/* Kills the children now, running tasks included; every pending task
   submitted through tq_pool_* ends CANCELLED (TQ_ECANCELLED). TQ_OK. */
int tq_pool_terminate(tq_pool_t *self);

#ifdef __cplusplus
}
#endif
#endif
