/* tq_queue.h - data queues on the broker: multiprocessing.Queue for
   programs that run their own producer and consumer loops, across
   processes and hosts. */
#ifndef TQ_QUEUE_H
#define TQ_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tq_client.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tq_queue_t tq_queue_t;

/* Opens the broker's data queue `name` (created on first use) through
   client (borrowed: it must outlive the queue). maxsize > 0 bounds the
   queue (as Queue(maxsize)); 0 leaves it unbounded or as another opener
   bounded it. NULL for an invalid name. */
tq_queue_t *tq_queue_new(tq_client_t *client, const char *name,
                         uint32_t maxsize);

/* Frees the handle (the queue and its items stay on the broker); NULL-safe,
   nulls *self_p. */
void tq_queue_destroy(tq_queue_t **self_p);

/* Puts one item: size bytes of one msgpack object (borrowed; pack one with
   tq_pack and pass its data). While the queue is full, keeps trying for up
   to timeout_ms (-1: forever, 0: not at all, as put_nowait). Returns TQ_OK,
   TQ_EFULL, TQ_EUNREACHABLE or TQ_EPROTO (not one msgpack object). */
int tq_queue_put(tq_queue_t *self, const void *item, size_t size,
                 int timeout_ms);

/* Takes the oldest item into *item (the caller's, free with tq_buf_free),
   waiting up to timeout_ms for one (-1: forever, 0: not at all, as
   get_nowait). Returns TQ_OK, TQ_EEMPTY, or TQ_EUNREACHABLE. */
int tq_queue_get(tq_queue_t *self, tq_buf_t *item, int timeout_ms);

/* As multiprocessing.Queue: put_nowait and get_nowait. */
int tq_queue_put_nowait(tq_queue_t *self, const void *item, size_t size);
int tq_queue_get_nowait(tq_queue_t *self, tq_buf_t *item);

/* The number of items (a snapshot, as qsize()) in *size; TQ_OK or the
   error of the request. */
int tq_queue_qsize(tq_queue_t *self, uint64_t *size);

/* empty() and full() from one qsize request; false when the broker does
   not answer. */
bool tq_queue_empty(tq_queue_t *self);
bool tq_queue_full(tq_queue_t *self);

/* Puts one item packed from picture (tq_pack's characters): one character
   is that object (tq_queue_putf(q, -1, "s", "A") puts "A"), several a tuple
   ("si": ["A", 1]). timeout_ms and the codes as tq_queue_put; TQ_EINVAL for
   a bad picture. */
int tq_queue_putf(tq_queue_t *self, int timeout_ms, const char *picture, ...);

/* An item taken from a queue, already unpacked. */
typedef struct tq_item_t tq_item_t;

/* Takes the oldest item as tq_queue_get does and returns it unpacked in
   *item_p (the caller's, free with tq_item_destroy). Returns TQ_OK,
   TQ_EEMPTY, TQ_EUNREACHABLE, or TQ_EPROTO for bytes that do not unpack. */
int tq_queue_get_item(tq_queue_t *self, tq_item_t **item_p, int timeout_ms);

/* The item's value (borrowed, valid until destroy). */
const msgpack_object *tq_item_value(const tq_item_t *self);

/* Typed reads: TQ_OK, or TQ_EINVAL when the item is of another type.
   tq_item_double takes ints too. tq_item_str returns the string with a
   NUL (borrowed, valid until destroy), NULL if the item is not one. */
int tq_item_int(const tq_item_t *self, int64_t *value);
int tq_item_double(const tq_item_t *self, double *value);
int tq_item_bool(const tq_item_t *self, bool *value);
const char *tq_item_str(tq_item_t *self);
bool tq_item_is_nil(const tq_item_t *self);

/* Frees the item; NULL-safe, nulls *self_p. */
void tq_item_destroy(tq_item_t **self_p);

#ifdef __cplusplus
}
#endif
#endif
