/* tq_store.h - the broker's durable store: tasks, results, dead letters
   and data-queue items
   in SQLite (WAL), written in one transaction per pass of the broker loop
   (group commit). */
#ifndef TQ_STORE_H
#define TQ_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How a committed batch reaches the disk. */
typedef enum {
    TQ_SYNC_BATCH = 0, /* each batch fsynced before it is acknowledged */
    TQ_SYNC_OS = 1     /* written to the OS; the OS flushes when it likes */
} tq_sync_t;

/* One task as stored. Strings and blobs are borrowed: when passed in, for
   the duration of the call; when handed out by tq_store_load, until the
   callback returns. */
typedef struct {
    const char *id;
    const char *task;
    const char *queue;
    uint32_t priority;
    uint32_t time_limit_ms;
    uint32_t attempt;       /* attempts started so far */
    uint32_t state;         /* tq_state_t */
    uint64_t seq;           /* submission order, for FIFO on reload */
    const void *args;       /* msgpack array */
    size_t args_size;
    uint32_t code;          /* final tasks: tq_err_t */
    const char *error;      /* final tasks: error text or NULL */
    const void *result;     /* SUCCESS: the value */
    size_t result_size;
    int64_t expires_ms;     /* final tasks: wall-clock ms when purged, 0 none */
    uint32_t retries;       /* reruns left after a task failure */
    uint32_t backoff_ms;    /* first retry delay */
    uint32_t failures;      /* task failures so far */
} tq_store_task_t;

typedef struct tq_store_t tq_store_t;

/* Opens (creating if needed) DIR/tq.db. On failure returns NULL and writes
   a message naming the file into error (errlen bytes). */
tq_store_t *tq_store_open(const char *dir, tq_sync_t sync, char *error,
                          size_t errlen);

/* Closes the store; NULL-safe, nulls *self_p. An open batch is committed. */
void tq_store_destroy(tq_store_t **self_p);

/* Adds a new task to the open batch (starting one if needed). */
int tq_store_add(tq_store_t *self, const tq_store_task_t *task);

/* Records a new state and attempt count for a stored task. */
int tq_store_set_state(tq_store_t *self, const char *id, uint32_t state,
                       uint32_t attempt);

/* Records what is left of a task's retry budget. */
int tq_store_set_retries(tq_store_t *self, const char *id, uint32_t retries,
                         uint32_t failures);

/* Records a task's final outcome and when its result expires. */
int tq_store_finish(tq_store_t *self, const tq_store_task_t *task);

/* Forgets a task. */
int tq_store_remove(tq_store_t *self, const char *id);

/* Commits the open batch, if any. Returns TQ_OK or TQ_ESYS; after a failure
   the store refuses every later write (the broker must stop). */
int tq_store_commit(tq_store_t *self);

/* True if a batch is open (writes not yet committed). */
bool tq_store_dirty(const tq_store_t *self);

/* Deletes up to `limit` final tasks whose results expired before now_ms;
   returns how many, or -1 on error. Part of the open batch. */
int tq_store_purge(tq_store_t *self, int64_t now_ms, int limit);

/* Calls fn for every stored task, in submission order. Returns TQ_OK, or
   TQ_ESYS with the message in tq_store_error. */
int tq_store_load(tq_store_t *self,
                  void (*fn)(const tq_store_task_t *task, void *arg),
                  void *arg);

/* Data-queue items, in the open batch: an item put (data borrowed, seq
   its order in the queue) and an item taken. */
int tq_store_item_add(tq_store_t *self, const char *queue, uint64_t seq,
                      uint32_t maxsize, const void *data, size_t size);
int tq_store_item_remove(tq_store_t *self, const char *queue, uint64_t seq);

/* Calls fn for every stored item, by queue and then in put order (data
   borrowed until fn returns). TQ_OK or TQ_ESYS. */
int tq_store_load_items(tq_store_t *self,
                        void (*fn)(const char *queue, uint64_t seq,
                                   uint32_t maxsize, const void *data,
                                   size_t size, void *arg),
                        void *arg);

/* Bytes the database files take on disk (main file and WAL). */
uint64_t tq_store_disk_size(const tq_store_t *self);

/* The last error's message (borrowed). */
const char *tq_store_error(const tq_store_t *self);

#endif
