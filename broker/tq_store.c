/* tq_store.c - the store's front: picks the backend from the location and
   dispatches every call through its table of operations, each under the
   store's lock (the broker's loop and its commit thread share a store). */
#include "tq_store.h"

#include <pthread.h>
#include <string.h>

#include "tq/tq_error.h"
#include "tq_crc32c.h"
#include "tq_store_backend.h"

bool
tq_store_is_url(const char *location)
{
    return location &&
        (strncmp(location, "postgresql://", 13) == 0 ||
         strncmp(location, "postgres://", 11) == 0);
}

tq_store_t *
tq_store_new(const char *location, const tq_store_options_t *options,
             char *error, size_t errlen)
{
    tq_store_options_t defaults = {.sync = TQ_SYNC_BATCH};
    if (!options)
        options = &defaults;
    tq_store_t *self = tq_store_is_url(location)
        ? tq_store_pg_new(location, options, error, errlen)
        : tq_store_sqlite_new(location, options, error, errlen);
    if (self) {
        pthread_mutexattr_t attr;
        pthread_mutexattr_init(&attr);
        pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
        pthread_mutex_init(&self->lock, &attr);
        pthread_mutexattr_destroy(&attr);
        self->locking = true;
    }
    return self;
}

void
tq_store_lock(tq_store_t *self)
{
    if (self->locking)
        pthread_mutex_lock(&self->lock);
}

void
tq_store_unlock(tq_store_t *self)
{
    if (self->locking)
        pthread_mutex_unlock(&self->lock);
}

tq_store_t *
tq_store_open(const char *location, tq_sync_t sync, char *error, size_t errlen)
{
    tq_store_options_t options = {.sync = sync};
    return tq_store_new(location, &options, error, errlen);
}

void
tq_store_destroy(tq_store_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_store_t *self = *self_p;
    *self_p = NULL;
    if (self->locking)
        pthread_mutex_destroy(&self->lock);
    self->ops->destroy(self);
}

int
tq_store_add(tq_store_t *self, const tq_store_task_t *task)
{
    tq_store_lock(self);
    int rc = self->failed ? TQ_ESYS : self->ops->add(self, task);
    tq_store_unlock(self);
    return rc;
}

int
tq_store_set_state(tq_store_t *self, const char *id, uint32_t state,
                   uint32_t attempt)
{
    return tq_store_set_due(self, id, state, attempt, 0);
}

int
tq_store_set_due(tq_store_t *self, const char *id, uint32_t state,
                 uint32_t attempt, int64_t due_ms)
{
    tq_store_lock(self);
    int rc = self->failed
        ? TQ_ESYS
        : self->ops->set_due(self, id, state, attempt, due_ms);
    tq_store_unlock(self);
    return rc;
}

int
tq_store_set_retries(tq_store_t *self, const char *id, uint32_t retries,
                     uint32_t failures)
{
    tq_store_lock(self);
    int rc = self->failed ? TQ_ESYS
                          : self->ops->set_retries(self, id, retries, failures);
    tq_store_unlock(self);
    return rc;
}

int
tq_store_finish(tq_store_t *self, const tq_store_task_t *task)
{
    tq_store_lock(self);
    int rc = self->failed ? TQ_ESYS : self->ops->finish(self, task);
    tq_store_unlock(self);
    return rc;
}

int
tq_store_remove(tq_store_t *self, const char *id)
{
    tq_store_lock(self);
    int rc = self->failed ? TQ_ESYS : self->ops->remove(self, id);
    tq_store_unlock(self);
    return rc;
}

int
tq_store_commit(tq_store_t *self)
{
    tq_store_lock(self);
    int rc = self->failed ? TQ_ESYS : self->ops->commit(self);
    tq_store_unlock(self);
    return rc;
}

bool
tq_store_dirty(const tq_store_t *self)
{
    tq_store_lock((tq_store_t *)self);
    bool rc = self->ops->dirty(self);
    tq_store_unlock((tq_store_t *)self);
    return rc;
}

int
tq_store_purge(tq_store_t *self, int64_t now_ms, int limit)
{
    tq_store_lock(self);
    int rc = self->failed ? -1 : self->ops->purge(self, now_ms, limit);
    tq_store_unlock(self);
    return rc;
}

int
tq_store_load(tq_store_t *self,
              void (*fn)(const tq_store_task_t *task, void *arg), void *arg)
{
    tq_store_lock(self);
    int rc = self->ops->load(self, fn, arg);
    tq_store_unlock(self);
    return rc;
}

int
tq_store_item_add(tq_store_t *self, const char *queue, uint64_t seq,
                  uint32_t maxsize, const void *data, size_t size)
{
    tq_store_lock(self);
    int rc = self->failed
        ? TQ_ESYS
        : self->ops->item_add(self, queue, seq, maxsize, data, size);
    tq_store_unlock(self);
    return rc;
}

int
tq_store_item_remove(tq_store_t *self, const char *queue, uint64_t seq)
{
    tq_store_lock(self);
    int rc = self->failed ? TQ_ESYS : self->ops->item_remove(self, queue, seq);
    tq_store_unlock(self);
    return rc;
}

int
tq_store_load_item_rows(tq_store_t *self,
                        void (*fn)(const tq_store_item_t *item, void *arg),
                        void *arg)
{
    tq_store_lock(self);
    int rc = self->ops->load_items(self, fn, arg);
    tq_store_unlock(self);
    return rc;
}

typedef struct {
    void (*fn)(const char *queue, uint64_t seq, uint32_t maxsize,
               const void *data, size_t size, void *arg);
    void *arg;
} s_items_t;

static void
s_item_fields(const tq_store_item_t *item, void *arg)
{
    s_items_t *items = arg;
    /* no data: the broker's payload check refuses the item as damaged */
    items->fn(item->queue, item->seq, item->maxsize,
              item->corrupt ? NULL : item->data, item->corrupt ? 0 : item->size,
              items->arg);
}

int
tq_store_load_items(tq_store_t *self,
                    void (*fn)(const char *queue, uint64_t seq,
                               uint32_t maxsize, const void *data, size_t size,
                               void *arg),
                    void *arg)
{
    s_items_t items = {fn, arg};
    tq_store_lock(self);
    int rc = self->ops->load_items(self, s_item_fields, &items);
    tq_store_unlock(self);
    return rc;
}

uint64_t
tq_store_disk_size(const tq_store_t *self)
{
    tq_store_lock((tq_store_t *)self);
    uint64_t rc = self->ops->disk_size(self);
    tq_store_unlock((tq_store_t *)self);
    return rc;
}

int
tq_store_lease_acquire(tq_store_t *self, const char *owner, uint32_t ttl_ms,
                       uint64_t *epoch)
{
    tq_store_lock(self);
    int rc = self->failed
        ? TQ_ESYS
        : self->ops->lease_acquire(self, owner, ttl_ms, epoch);
    tq_store_unlock(self);
    return rc;
}

int
tq_store_lease_renew(tq_store_t *self, uint32_t ttl_ms)
{
    tq_store_lock(self);
    int rc = self->failed ? TQ_ESYS : self->ops->lease_renew(self, ttl_ms);
    tq_store_unlock(self);
    return rc;
}

const char *
tq_store_error(const tq_store_t *self)
{
    return self->error;
}

const char *
tq_store_check_payload(tq_store_payload_t what, const void *data, size_t size,
                       bool has_crc, uint32_t crc)
{
    static const char *const missing[] = {
        [TQ_STORE_ARGS] = "args stored without a checksum",
        [TQ_STORE_RESULT] = "result stored without a checksum",
        [TQ_STORE_ITEM] = "queue item stored without a checksum",
    };
    static const char *const mismatch[] = {
        [TQ_STORE_ARGS] = "args checksum mismatch",
        [TQ_STORE_RESULT] = "result checksum mismatch",
        [TQ_STORE_ITEM] = "queue item checksum mismatch",
    };
    if (!data)
        return NULL;
    if (!has_crc)
        return missing[what];
    return tq_crc32c(0, data, size) == crc ? NULL : mismatch[what];
}

int
tq_store_read_args(tq_store_t *self, const char *id,
                   void (*fn)(const void *data, size_t size, void *arg),
                   void *arg)
{
    if (!self->ops->read_args)
        return TQ_ESTATE;
    /* no lock: the backend reads on a connection of its own */
    return self->failed ? TQ_ESYS : self->ops->read_args(self, id, fn, arg);
}

bool
tq_store_reads_args(const tq_store_t *self)
{
    return self->ops->read_args != NULL;
}

int
tq_store_read_result(tq_store_t *self, const char *id,
                     void (*fn)(const void *data, size_t size, void *arg),
                     void *arg)
{
    if (!self->ops->read_result)
        return TQ_ESTATE;
    return self->failed ? TQ_ESYS : self->ops->read_result(self, id, fn, arg);
}

bool
tq_store_reads_results(const tq_store_t *self)
{
    return self->ops->read_result != NULL;
}
