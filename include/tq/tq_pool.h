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

/* Start. tq_pool_new starts the fork server with posix_spawn: a fresh
   exec of the program itself (/proc/self/exe) that stops in libtq's
   constructor before main (Python's "forkserver" start method). It never
   inherits a lock another thread of the program held, so a pool may be made
   at any time, from any thread, also one that exits before the pool. The
   server forks the children from its own single-threaded image.

   What the children can call: the functions of options->registry (and the
   initializer), found by address: each is written as (loaded file, offset)
   and looked up in the fresh image, which maps the same files (a library
   the program dlopened is opened there too). A user pointer (the arg of
   tq_registry_add, initargs) must be NULL or point to static storage (a
   global, a string literal): the server sees that variable as the
   program's file holds it, without what main wrote there since, as
   Python's spawned children re-import their module. Give initargs_size to
   have initargs' bytes copied instead (Python pickles initargs). A pointer
   to the heap or the stack is refused: tq_pool_new fails with a message
   that names the task.

   Life. The server ends when the program does, even on SIGKILL (a pipe
   tells it), killing the children and removing the pool's ipc directory
   (a process the program fork()ed without exec holds that pipe too: the
   server waits for it as well).
   If the server dies while the pool runs, the pool starts a new one (up to
   TQ_POOL_MAX_RESPAWNS times; then the pending tasks end TQ_ECANCELLED and
   submissions fail TQ_ELOST "the pool's fork server died"); tasks that were
   running in its children end TQ_ELOST once the broker has missed the dead
   server's heartbeats (3 s). */
#define TQ_POOL_MAX_RESPAWNS 5

typedef struct tq_pool_t tq_pool_t;
typedef struct tq_result_set_t tq_result_set_t;
typedef struct tq_pool_imap_t tq_pool_imap_t;

/* Runs once in each child before it runs its first task (Python's
   initializer/initargs). */
typedef void(tq_pool_init_fn)(void *arg);

/* Tasks a pool child holds by default. More than 1 hides the broker round
   trip between short tasks, and a deep credit lets the broker, the
   ZeroMQ I/O threads and the child move a burst in a few wakeups instead
   of one per task: a burst of no-op tasks costs about 60 % of the CPU it
   did at 8 (make bench-pool; 32 already gives most of it, more than 128
   nothing measurable). It hides no work: a child with nothing to do asks
   a busy one for its unstarted tasks, and the holder gives back only what
   it has not started (work stealing, PROTOCOL 5.3.5), so every task still
   runs once, in the order one queue would start them. Set 1 for strict
   one-at-a-time dispatch. */
#define TQ_POOL_PREFETCH 64

/* Pool options; zero-initialise (TQ_POOL_OPTIONS_INIT). */
typedef struct {
    tq_registry_t *registry; /* tasks the children run (borrowed, read
                                by tq_pool_new only); NULL: the built-ins
                                only */
    tq_pool_init_fn *initializer; /* may be NULL */
    void *initargs; /* passed to initializer: NULL, static storage,
                       or initargs_size bytes to copy */
    size_t initargs_size; /* > 0: initargs' bytes are copied to the
                             children; 0: the pointer is translated */
    int maxtasksperchild; /* tasks before a child is replaced, 0:
                             never */
    int prefetch; /* tasks each child may hold, 0: the
                     default, TQ_POOL_PREFETCH (see there) */
    int max_lost; /* child deaths a task may cause before it ends
                     TQ_ELOST ("worker lost: killed by SIGSEGV ..."); 0:
                     1, reported at once */
    size_t chunksize; /* items per task of map, starmap, map_async and
                         imap; 0: as Python (imap: 1; the others:
                         ceil(n / (4 * processes))) */
    bool verbose; /* the fork server's log lines on stderr (also
                     with $TQ_POOL_VERBOSE=1); by default it is
                     quiet: a crash shows in the handle's error only */
    bool quiet; /* older programs' flag: quiet is the default */
} tq_pool_options_t;

#define TQ_POOL_OPTIONS_INIT                                                   \
    {                                                                          \
        0                                                                      \
    }

/* Starts a pool of processes children (<= 0: online CPUs): a broker
   thread on ipc:// endpoints in a fresh temporary directory, the fork
   server (see Start above) and a client, and returns once every child is
   ready, so tasks start in submission order from the first one. The
   built-in tasks (tq.echo, tq.sleep, tq.fail) are added unless the
   registry has those names. options may be NULL. Returns NULL on failure,
   with the reason on stderr. */
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

/* The pool's broker client endpoint (an ipc:// path, borrowed). NULL
   self: the endpoint of the pool whose child runs this code (a task), NULL
   elsewhere. A task may open its own tq_client_t on it (or use
   tq_pool_task_client) to use data queues (tq_queue.h). */
const char *tq_pool_endpoint(const tq_pool_t *self);

/* In a task: a client on the pool's broker, made on first use and kept
   for the child's life (borrowed: do not destroy it); NULL outside a pool
   child or on failure. The program's SIGINT/SIGTERM handlers stay. */
tq_client_t *tq_pool_task_client(void);

/* Number of children. */
int tq_pool_processes(const tq_pool_t *self);

/* Pid of the fork server (the children's parent). */
pid_t tq_pool_server_pid(const tq_pool_t *self);

/* Stores up to max pids of the live children in pids (read from /proc);
   returns how many there are. */
size_t tq_pool_pids(const tq_pool_t *self, pid_t *pids, size_t max);

/* Submits task, arguments packed from picture (see tq_pack). Returns the
   handle (the caller's), or NULL after close/terminate or on invalid
   arguments. A task name the pool's registry does not have is refused at
   once: the handle is already final with TQ_ENOTASK and an error naming
   it. The options' callbacks fire as with tq_apply_async. */
tq_result_t *tq_pool_apply_async(tq_pool_t *self, const char *task,
                                 const tq_options_t *options,
                                 const char *picture, ...);

/* Blocking apply (Python's apply): waits for the result, without a time
   limit, as Python's does. Returns the handle (the caller's) final, or
   NULL as tq_pool_apply_async. */
tq_result_t *tq_pool_apply(tq_pool_t *self, const char *task,
                           const tq_options_t *options, const char *picture,
                           ...);

/* tq_pool_apply with a time limit on the wait: timeout_ms (-1: forever);
   the handle may not be ready when it returns. */
tq_result_t *tq_pool_apply_timeout(tq_pool_t *self, const char *task,
                                   const tq_options_t *options, int timeout_ms,
                                   const char *picture, ...);

/* Python's map: items[i] is the task's one argument, packed as a
   one-element array (tq_pack(&item, "i", x)); another shape: TQ_EINVAL.
   Handles go to results[i] (the caller's), in order. Items travel in
   chunks of options' chunksize (one task each in a child; a chunk whose
   child dies fails every item of it). Waits up to timeout_ms; returns
   TQ_OK if all succeeded, else the first non-OK code in order (on
   TQ_ETIMEDOUT the results[] of chunks not yet done are NULL);
   TQ_ECLOSED after close, TQ_ENOTASK for an unknown task (nothing
   submitted). */
int tq_pool_map(tq_pool_t *self, const char *task, const tq_options_t *options,
                const tq_buf_t *items, size_t count, tq_result_t **results,
                int timeout_ms);

/* Python's map as it is: the values, without a handle per item (the
   fastest way over many small items). Submits as tq_pool_map, waits up to
   timeout_ms for every chunk and returns in *values_p (the caller's, free
   with tq_values_destroy, also on error) the values in order. Returns
   TQ_OK if every item succeeded; else the first failure's code in order
   (its text in tq_values_error), TQ_ETIMEDOUT, TQ_EINVAL (an item is not a
   one-element array), TQ_ECLOSED after close (*values_p NULL). */
typedef struct tq_values_t tq_values_t;
int tq_pool_map_values(tq_pool_t *self, const char *task,
                       const tq_options_t *options, const tq_buf_t *items,
                       size_t count, tq_values_t **values_p, int timeout_ms);

/* Number of items. */
size_t tq_values_size(const tq_values_t *self);

/* The index-th value (borrowed, valid until destroy), NULL if that item
   failed or is not done. */
const msgpack_object *tq_values_at(const tq_values_t *self, size_t index);

/* The index-th item's code: TQ_OK, its failure, or TQ_ETIMEDOUT. */
int tq_values_code(const tq_values_t *self, size_t index);

/* "item N: text" of the first failure in order, "" if none (borrowed). */
const char *tq_values_error(const tq_values_t *self);

/* Frees the values; NULL-safe, nulls *self_p. */
void tq_values_destroy(tq_values_t **self_p);

/* Items for tq_pool_map_items, packed one after another in one buffer
   (no allocation per item): the fastest way to map over many small
   items. */
typedef struct tq_items_t tq_items_t;

/* An empty list; NULL on failure. */
tq_items_t *tq_items_new(void);

/* Appends one item: its arguments packed from picture (tq_pack's
   characters): "i" for map's f(x), "ii" for starmap's f(x, y). TQ_OK,
   TQ_EINVAL for a bad picture or argument (nothing appended), TQ_ENOMEM. */
int tq_items_add(tq_items_t *self, const char *picture, ...);

/* Number of items. */
size_t tq_items_size(const tq_items_t *self);

/* Frees the list; NULL-safe, nulls *self_p. */
void tq_items_destroy(tq_items_t **self_p);

/* Python's map (and starmap) over a tq_items_t (borrowed): as
   tq_pool_map_values. */
int tq_pool_map_items(tq_pool_t *self, const char *task,
                      const tq_options_t *options, const tq_items_t *items,
                      tq_values_t **values_p, int timeout_ms);

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

/* The index-th handle (borrowed, valid until the set is destroyed). With
   chunks of more than one item, NULL until that item's chunk is done
   (tq_result_set_get or _ready first). */
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
