/* tq_store.h - the broker's durable store: tasks, results, dead letters
   and data-queue items, written in one transaction per pass of the broker
   loop (group commit). Two backends behind these functions: SQLite in a
   directory (tq_store_sqlite.c, the embedded default) and PostgreSQL at a
   postgresql:// URL (tq_store_pg.c, shared by several brokers under a
   lease). */
#ifndef TQ_STORE_H
#define TQ_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How a committed batch reaches the disk. */
typedef enum {
    TQ_SYNC_BATCH = 0, /* each batch fsynced before it is acknowledged */
    TQ_SYNC_OS = 1 /* written to the OS; the OS flushes when it likes */
} tq_sync_t;

/* One task as stored. Strings and blobs are borrowed: when passed in, for
   the duration of the call; when handed out by tq_store_load, until the
   callback returns. */
typedef struct {
    const char *id;
    const char *task;
    const char *queue;
    const char *owner; /* under CURVE: the submitting client key's text
                          (tenants, PROTOCOL.md 5.8); NULL: none recorded,
                          every key may see the task. Written by
                          tq_store_add only (a task's owner never
                          changes) */
    uint32_t priority;
    uint32_t time_limit_ms;
    uint32_t attempt; /* attempts started so far */
    uint32_t state; /* tq_state_t */
    uint64_t seq; /* submission order, for FIFO on reload */
    const void *args; /* msgpack array */
    size_t args_size;
    uint32_t code; /* final tasks: tq_err_t */
    const char *error; /* final tasks: error text or NULL */
    const void *result; /* SUCCESS: the value */
    size_t result_size;
    int64_t expires_ms; /* final tasks: wall-clock ms when purged, 0 none */
    uint32_t retries; /* reruns left after a task failure */
    uint32_t backoff_ms; /* first retry delay */
    uint32_t failures; /* task failures so far */
    int64_t due_ms; /* wall-clock ms before which the task may not
                       run (countdown, retry backoff, poison pause);
                       0: runnable now */
    bool corrupt; /* load only: a payload failed its checksum; the
                     broker fails the task TQ_ECORRUPT, never runs
                     it */
    const char *corrupt_reason; /* load only: which payload, or NULL */
} tq_store_task_t;

/* One data-queue item as handed out by tq_store_load_item_rows (borrowed
   until the callback returns). */
typedef struct {
    const char *queue;
    uint64_t seq; /* its order in the queue */
    uint32_t maxsize; /* the queue's bound, 0 none */
    const void *data; /* the item (msgpack) */
    size_t size;
    bool corrupt; /* the item failed its checksum */
    const char *corrupt_reason;
} tq_store_item_t;

typedef struct {
    tq_sync_t sync; /* SQLite: when a batch reaches the disk */
    bool allow_new; /* --new-store: start empty even where the directory
                       shows a store was (its tq.db missing or empty) */
    uint32_t link_timeout_ms; /* PostgreSQL: tcp_user_timeout, how long sent
                                 data may stay unacknowledged before the
                                 connection counts as lost; 0: 10000 */
} tq_store_options_t;

typedef struct tq_store_t tq_store_t;

/* Opens the store at location: a postgresql:// or postgres:// URL, or else
   a directory holding tq.db (created if needed, as is the directory). A
   store that is damaged, newer than this build, unreachable, or missing
   where the directory shows one was (unless options->allow_new) is refused:
   NULL, with a message naming the file or server in error (errlen bytes).
   options may be NULL (TQ_SYNC_BATCH, no allow_new). */
tq_store_t *tq_store_new(const char *location,
                         const tq_store_options_t *options, char *error,
                         size_t errlen);

/* tq_store_new with only the sync mode (no allow_new). */
tq_store_t *tq_store_open(const char *location, tq_sync_t sync, char *error,
                          size_t errlen);

/* True if location names a PostgreSQL database rather than a directory. */
bool tq_store_is_url(const char *location);

/* Closes the store; NULL-safe, nulls *self_p. An open batch is committed. */
void tq_store_destroy(tq_store_t **self_p);

/* Adds a new task to the open batch (starting one if needed); a task whose
   id is stored already is left as it is. */
int tq_store_add(tq_store_t *self, const tq_store_task_t *task);

/* Records a new state and attempt count for a stored task, runnable now
   (due_ms 0). */
int tq_store_set_state(tq_store_t *self, const char *id, uint32_t state,
                       uint32_t attempt);

/* Records a new state and attempt count and the wall-clock ms before which
   the task may not run (0: now). */
int tq_store_set_due(tq_store_t *self, const char *id, uint32_t state,
                     uint32_t attempt, int64_t due_ms);

/* Records what is left of a task's retry budget. */
int tq_store_set_retries(tq_store_t *self, const char *id, uint32_t retries,
                         uint32_t failures);

/* Records a task's final outcome and when its result expires, with its
   state, attempt and due time (due_ms), as tq_store_set_due does: it may
   stand for a set_due of the same task just before it (tq_journal.c
   folds them). */
int tq_store_finish(tq_store_t *self, const tq_store_task_t *task);

/* Forgets a task. */
int tq_store_remove(tq_store_t *self, const char *id);

/* Commits the open batch, if any; only then may its writes be
   acknowledged. Returns TQ_OK, or TQ_ESYS (TQ_EBUSY: the lease was taken
   by another broker) with the message in tq_store_error; after a failure
   the store refuses every later write (the broker must stop). */
int tq_store_commit(tq_store_t *self);

/* True if a batch is open (writes not yet committed). */
bool tq_store_dirty(const tq_store_t *self);

/* Deletes up to `limit` final tasks whose results expired before now_ms;
   returns how many, or -1 on error. SQLite: part of the open batch;
   PostgreSQL: a transaction of its own. */
int tq_store_purge(tq_store_t *self, int64_t now_ms, int limit);

/* Calls fn for every stored task, in submission order. Returns TQ_OK, or
   TQ_ESYS with the message in tq_store_error. A row whose payload fails its
   checksum comes with corrupt set. */
int tq_store_load(tq_store_t *self,
                  void (*fn)(const tq_store_task_t *task, void *arg),
                  void *arg);

/* Reads back a stored task's arguments: fn gets them (borrowed until it
   returns). TQ_OK; TQ_EUNKNOWN: no such task; TQ_ECORRUPT: they failed
   their checksum; TQ_ESTATE: this backend does not read arguments back
   (see tq_store_reads_args); TQ_ESYS. Reads what is committed, on a
   connection of its own and without the store's lock, so the broker's
   loop does not wait for a commit in flight; one thread at a time. */
int tq_store_read_args(tq_store_t *self, const char *id,
                       void (*fn)(const void *data, size_t size, void *arg),
                       void *arg);

/* The same for a final task's result (TQ_ECORRUPT: it failed its
   checksum); TQ_ESTATE when the backend does not read results back. */
int tq_store_read_result(tq_store_t *self, const char *id,
                         void (*fn)(const void *data, size_t size, void *arg),
                         void *arg);
bool tq_store_reads_results(const tq_store_t *self);

/* True if tq_store_read_args is cheap enough for the broker to keep
   waiting tasks' arguments on disk only (SQLite: a local read). */
bool tq_store_reads_args(const tq_store_t *self);

/* Data-queue items, in the open batch: an item put (data borrowed, seq
   its order in the queue) and an item taken. */
int tq_store_item_add(tq_store_t *self, const char *queue, uint64_t seq,
                      uint32_t maxsize, const void *data, size_t size);
int tq_store_item_remove(tq_store_t *self, const char *queue, uint64_t seq);

/* Calls fn for every stored item, by queue and then in put order. TQ_OK or
   TQ_ESYS. */
int tq_store_load_item_rows(tq_store_t *self,
                            void (*fn)(const tq_store_item_t *item, void *arg),
                            void *arg);

/* tq_store_load_item_rows with the fields as arguments (data borrowed
   until fn returns); an item that failed its checksum comes with data NULL
   and size 0. */
int tq_store_load_items(tq_store_t *self,
                        void (*fn)(const char *queue, uint64_t seq,
                                   uint32_t maxsize, const void *data,
                                   size_t size, void *arg),
                        void *arg);

/* Bytes the store takes on disk (SQLite: main file and WAL; PostgreSQL:
   the database's size as its server reports it, 0 if unknown). */
uint64_t tq_store_disk_size(const tq_store_t *self);

/* The active broker's lease (PostgreSQL only; several brokers share one
   database, one is active). Acquire takes the lease for owner for ttl_ms
   if it is free, expired or owner's own, and sets *epoch to its new
   fencing token; every later commit of this store checks, inside its
   transaction, that the lease still carries that epoch. TQ_OK; TQ_EBUSY
   if another owner holds a live lease; TQ_ESTATE on SQLite; TQ_ESYS. */
int tq_store_lease_acquire(tq_store_t *self, const char *owner, uint32_t ttl_ms,
                           uint64_t *epoch);

/* Extends the lease this store holds by ttl_ms from now. TQ_OK; TQ_EBUSY
   if it was taken by another (the store then refuses every later write);
   TQ_ESTATE if none is held; TQ_ESYS. */
int tq_store_lease_renew(tq_store_t *self, uint32_t ttl_ms);

/* The last error's message (borrowed). */
const char *tq_store_error(const tq_store_t *self);

/* Every call above but tq_store_read_args takes the store's lock
   (recursive), so one store may be used from two threads (the broker's
   loop and its commit thread) one at a time. tq_store_lock holds it
   across several calls, e.g. the writes and the commit of one batch;
   each lock is matched by an unlock. */
void tq_store_lock(tq_store_t *self);
void tq_store_unlock(tq_store_t *self);

#endif
