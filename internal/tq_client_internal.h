/* tq_client_internal.h - client library calls for the tq CLI and tests,
   not part of the public API. */
#ifndef TQ_CLIENT_INTERNAL_H
#define TQ_CLIENT_INTERNAL_H

#include <zmq.h>

#include "tq/tq_client.h"
#include "tq_proto.h"

/* Waits up to timeout_ms (-1: forever) until the broker has answered the
   handle's request at all: SUBMITTED for a submission, STATE or RESULT for
   a fetch, or the handle became final. TQ_OK or TQ_ETIMEDOUT. */
int tq_result_wait_answer(tq_result_t *self, int timeout_ms);

/* True once the broker answered (see tq_result_wait_answer). */
bool tq_result_answered(tq_result_t *self);

/* Submits again, under the same id, a task whose handle old (borrowed)
   ended TQ_EUNREACHABLE before the broker acknowledged it: same task,
   options and arguments, these callbacks (may be NULL). The broker knows
   an id it accepted before, so the task never runs twice for this; the
   new handle gets its result all the same. Returns the new handle (the
   caller's), or NULL if old is not such a handle. */
tq_result_t *tq_result_resubmit(tq_result_t *old, tq_callback_fn *callback,
                                tq_callback_fn *error_callback,
                                void *callback_arg);

/* A data-queue request (see tq_queue.h and PROTOCOL.md 5.5). */
typedef enum { TQ_QUEUE_PUT, TQ_QUEUE_GET, TQ_QUEUE_SIZE } tq_queue_op_t;

/* Sends a data-queue request: PUT item (size bytes of one msgpack object,
   copied) with the queue's bound; GET waiting up to wait_ms on the broker
   (0: answer at once); SIZE. Returns a handle (the caller's) that ends
   SUCCESS with the item (GET) or the REPLY map {size[, maxsize]} as its
   value, or with the broker's error (TQ_EFULL, TQ_EEMPTY...). NULL for an
   invalid name or item. */
tq_result_t *tq_client_queue_request(tq_client_t *self, tq_queue_op_t op,
                                     const char *queue, uint32_t maxsize,
                                     uint32_t wait_ms, const void *item,
                                     size_t size);

/* The ZeroMQ context every client of this process uses (czmq's), made on
   first use without czmq's signal handlers. A broker in the same process
   (the embedded pool) shares it to serve a client over inproc://. NULL on
   failure. */
void *tq_client_context(void);

/* Whether the client's SUBMITs let a broker fold SUBMITTED into the
   task's RESULT (SUBMIT features TQ_FEATURE_FOLD, PROTOCOL.md 5.1; true
   from tq_client_new). The CLI, which tells what was acknowledged (tq
   submit, tq map when interrupted), turns it off, or a broker without a
   store may hold acknowledgements back while long tasks run. */
void tq_client_set_fold(tq_client_t *self, bool fold);

/* Whether the client sends several requests in one BATCH message to a
   broker that takes them, and lets the broker send it several in one
   (SUBMIT features TQ_FEATURE_BATCH, PROTOCOL.md 5.9; true from
   tq_client_new). Nothing but the number of messages changes: each
   request is sent and answered as it would be alone. */
void tq_client_set_batch(tq_client_t *self, bool batch);

/* The endpoint the client connects to (borrowed). */
const char *tq_client_endpoint(tq_client_t *self);

/* A handle that is final at once, made without a broker (the pool's
   chunked map splits a chunk's answer into one per item, and refuses an
   unknown task this way): code TQ_OK with value (size bytes of one msgpack
   object, copied), or a failure with error (copied). The caller's. */
tq_result_t *tq_result_new_final(int code, const char *error, const void *value,
                                 size_t size);

/* Marks the handle's callbacks as the library's own bookkeeping that any
   thread may run (the embedded pool's tracking of a task submitted without
   callbacks of the program's): a caller waiting on the handle and reading
   the answer itself finishes it there, instead of handing it to the I/O
   thread (which runs the program's callbacks). */
void tq_result_callbacks_anywhere(tq_result_t *self);

/* A handle for a task the embedded pool handed to its broker by a
   function call (tq_broker_local_send), PENDING, with id (copied) and
   these callbacks (may be NULL). client (borrowed, may be NULL) takes its
   cancel (a CANCEL by id); its answers never come through the client's
   socket but by tq_result_local_answer, from whichever thread runs the
   broker: a wait on it never reads the socket. The caller's reference. */
tq_result_t *tq_result_new_local(tq_client_t *client, const char *id,
                                 tq_callback_fn *callback,
                                 tq_callback_fn *error_callback,
                                 void *callback_arg);

/* The broker's answer to a handle made by tq_result_new_local (msg and
   payload borrowed): SUBMITTED, RESULT or ERROR, read as the client's I/O
   thread reads them; a RESULT or ERROR makes it final (its callbacks run
   here). */
void tq_result_local_answer(tq_result_t *self, const tq_msg_t *msg,
                            zmq_msg_t *payload);

/* Takes and drops a reference on a handle (the last drop frees it). */
void tq_result_hold(tq_result_t *self);
void tq_result_release(tq_result_t *self);

/* Packs the arguments named by picture (tq_pack's characters) as one
   msgpack array with pk. TQ_OK, or TQ_EINVAL for a bad picture (nothing
   consumed from ap) or argument (the packer may hold part of it). */
int tq_vpack_into(msgpack_packer *pk, const char *picture, va_list ap);

/* A growing buffer for a msgpack_packer: msgpack_packer_init(&pk, &buf,
   tq_grow_write); the caller frees data. It grows by doubling from 64
   bytes, or to the exact size a large write needs. */
typedef struct {
    char *data;
    size_t size;
    size_t alloc;
} tq_grow_t;
int tq_grow_write(void *data, const char *bytes, size_t len);

/* As tq_vpack, but arguments that pack into at most small_size bytes go
   into small (the caller's): buf->data is then small, not to be freed;
   else into a buffer of malloc as tq_vpack's. No allocation for the
   usual few bytes of arguments. */
int tq_vpack_small(tq_buf_t *buf, void *small, size_t small_size,
                   const char *picture, va_list ap);

#endif
