/* tq_store_backend.h - what a store backend implements: the table of
   operations behind tq_store.h, and the checksum checks they share.
   Private to broker/tq_store*.c. */
#ifndef TQ_STORE_BACKEND_H
#define TQ_STORE_BACKEND_H

#include <pthread.h>

#include "tq_store.h"

typedef void(tq_store_task_fn)(const tq_store_task_t *task, void *arg);
typedef void(tq_store_item_fn)(const tq_store_item_t *item, void *arg);

/* One function per public operation, with the public semantics; the
   dispatcher (tq_store.c) checks nothing the backend must not see. */
typedef struct {
    const char *name;
    void (*destroy)(tq_store_t *self); /* frees self */
    int (*add)(tq_store_t *self, const tq_store_task_t *task);
    int (*set_due)(tq_store_t *self, const char *id, uint32_t state,
                   uint32_t attempt, int64_t due_ms);
    int (*set_retries)(tq_store_t *self, const char *id, uint32_t retries,
                       uint32_t failures);
    int (*finish)(tq_store_t *self, const tq_store_task_t *task);
    int (*remove)(tq_store_t *self, const char *id);
    int (*purge)(tq_store_t *self, int64_t now_ms, int limit);
    int (*commit)(tq_store_t *self);
    bool (*dirty)(const tq_store_t *self);
    int (*load)(tq_store_t *self, tq_store_task_fn *fn, void *arg);
    int (*item_add)(tq_store_t *self, const char *queue, uint64_t seq,
                    uint32_t maxsize, const void *data, size_t size);
    int (*item_remove)(tq_store_t *self, const char *queue, uint64_t seq);
    int (*load_items)(tq_store_t *self, tq_store_item_fn *fn, void *arg);
    uint64_t (*disk_size)(const tq_store_t *self);
    int (*lease_acquire)(tq_store_t *self, const char *owner, uint32_t ttl_ms,
                         uint64_t *epoch);
    int (*lease_renew)(tq_store_t *self, uint32_t ttl_ms);
    /* NULL: the backend does not read arguments back */
    int (*read_args)(tq_store_t *self, const char *id,
                     void (*fn)(const void *data, size_t size, void *arg),
                     void *arg);
    /* NULL: the backend does not read results back */
    int (*read_result)(tq_store_t *self, const char *id,
                       void (*fn)(const void *data, size_t size, void *arg),
                       void *arg);
} tq_store_ops_t;

/* The head of every backend's object (its first member). */
struct tq_store_t {
    const tq_store_ops_t *ops;
    bool failed; /* a write failed: every later write is refused */
    char error[8192]; /* the last failure, naming the file or server */
    pthread_mutex_t lock; /* recursive; see tq_store_lock */
    bool locking; /* lock made (tq_store_new, once the backend opened) */
};

tq_store_t *tq_store_sqlite_new(const char *dir,
                                const tq_store_options_t *options, char *error,
                                size_t errlen);
tq_store_t *tq_store_pg_new(const char *url, const tq_store_options_t *options,
                            char *error, size_t errlen);

/* The payloads that carry a checksum. */
typedef enum {
    TQ_STORE_ARGS,
    TQ_STORE_RESULT,
    TQ_STORE_ITEM
} tq_store_payload_t;

/* Checks a loaded payload against its stored checksum (has_crc false: none
   was stored). Returns NULL if it matches (or there is no payload), else
   the reason, a static string naming the payload. */
const char *tq_store_check_payload(tq_store_payload_t what, const void *data,
                                   size_t size, bool has_crc, uint32_t crc);

#endif
