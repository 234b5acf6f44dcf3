/* tq_batch.h - the BATCH envelope of TQP/1 (PROTOCOL.md 5.9): several
   messages for one peer in one ZeroMQ message. The header is [1, BATCH,
   count]; the payload frame holds `count` sub-messages back to back, each
   a msgpack bin with the sub-message's header bytes, then a msgpack bin
   with its payload bytes, or nil when its command has no payload.

   The builder appends encoded messages to a growing buffer; the reader
   walks a received payload without allocating, its strings and payloads
   pointing into the frame. Pure, like the rest of the codec: sending is
   tq_wire_send_batch (tq_wire.h). */
#ifndef TQ_BATCH_H
#define TQ_BATCH_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tq_proto.h"

/* A sub-message whose payload is larger than this goes alone (senders
   batch small payloads only: a large one keeps its zero-copy path). */
#define TQ_BATCH_MAX_PAYLOAD 4096

/* tq_batch_next: no sub-message left. */
#define TQ_BATCH_END (-1)

/* A BATCH being built: its payload and its sub-message count. */
typedef struct {
    msgpack_sbuffer body; /* the payload frame so far */
    msgpack_sbuffer header; /* scratch: one sub-message's header */
    uint32_t count; /* sub-messages in body */
} tq_batch_t;

/* Initialises an empty batch. */
void tq_batch_init(tq_batch_t *b);

/* Frees the batch's buffers (it may be initialised again). */
void tq_batch_destroy(tq_batch_t *b);

/* Appends msg (its header encoded with tq_proto_encode) and its payload
   (size bytes, copied) when has_payload. Returns TQ_OK, or TQ_EINVAL if
   msg does not encode, is a BATCH, has_payload disagrees with
   tq_proto_has_payload, or the batch holds TQ_BATCH_MAX already, or
   TQ_ENOMEM if its buffers could not grow; the batch is then unchanged. */
int tq_batch_add(tq_batch_t *b, const tq_msg_t *msg, const void *payload,
                 size_t size, bool has_payload);

/* Sub-messages in the batch. */
uint32_t tq_batch_count(const tq_batch_t *b);

/* Bytes of the batch's payload frame so far. */
size_t tq_batch_bytes(const tq_batch_t *b);

/* Empties the batch, keeping its memory. */
void tq_batch_reset(tq_batch_t *b);

/* Reads the first sub-message of a batch built by tq_batch_add (count
   >= 1): its header bytes and payload (NULL, 0 when it has none), borrowed
   from the batch. TQ_OK, or TQ_EINVAL for an empty batch. For senders
   that send a batch of one as the plain message. */
int tq_batch_first(const tq_batch_t *b, const void **header,
                   size_t *header_size, const void **payload, size_t *size,
                   bool *has_payload);

/* Walks the payload of a received BATCH. */
typedef struct {
    const uint8_t *p; /* next sub-message */
    const uint8_t *end; /* end of the payload frame */
    uint32_t count; /* sub-messages the header announced */
    uint32_t index; /* sub-messages returned so far */
    const char *broken; /* the framing does not hold: why (static) */
} tq_batch_reader_t;

/* Starts reading a BATCH whose decoded header is `header` and whose
   payload frame is payload/size (borrowed for the reader's life). The
   framing is checked at once, without decoding the sub-messages: exactly
   header->count sub-messages, each a bin and a bin or nil, no bytes
   after them. A framing that does not hold makes the batch malformed as
   a whole: the first tq_batch_next says so and no sub-message is read. */
void tq_batch_reader_init(tq_batch_reader_t *r, const tq_msg_t *header,
                          const void *payload, size_t size);

/* Decodes the next sub-message into msg, its payload into *payload and *size
   (pointing into the frame; NULL, 0 when none) and *has_payload. Returns
   TQ_OK; TQ_EPROTO with *reason when that sub-message is malformed (its
   header does not decode, it is a BATCH, it has a payload against its
   command's rule or lacks one: msg keeps what decoded, its id if that was
   read) and the next call goes on with the one after it; TQ_EVERSION
   (another protocol version, as tq_proto_decode); TQ_EPROTO once when the
   batch's framing is broken (then TQ_BATCH_END); TQ_BATCH_END when all
   are read. */
int tq_batch_next(tq_batch_reader_t *r, tq_msg_t *msg, const void **payload,
                  size_t *size, bool *has_payload, const char **reason);

/* Appends a sub-message whose header is encoded already (header_size
   bytes, as tq_proto_encode wrote them; not checked again) and its
   payload (size bytes, copied) when has_payload: as tq_batch_add, for a
   sender that keeps the header it encoded. TQ_OK, or TQ_EINVAL (no
   header, or the batch holds TQ_BATCH_MAX already) or TQ_ENOMEM (its
   buffer could not grow); the batch is then unchanged. */
int tq_batch_add_encoded(tq_batch_t *b, const void *header, size_t header_size,
                         const void *payload, size_t size, bool has_payload);

/* The next sub-message of a received BATCH as tq_batch_next walks them,
   its header not decoded: its bytes in *header and *header_size, its
   payload as tq_batch_next gives it. Returns TQ_OK, TQ_EPROTO once with
   *reason when the batch's framing is broken (then TQ_BATCH_END), or
   TQ_BATCH_END. For a receiver that reads some headers itself (a
   client's RESULTs, tq_proto_read_result) and decodes the others with
   tq_batch_decode. */
int tq_batch_next_raw(tq_batch_reader_t *r, const void **header,
                      size_t *header_size, const void **payload, size_t *size,
                      bool *has_payload, const char **reason);

/* Decodes a sub-message's header (from tq_batch_next_raw) into msg with
   the checks of tq_batch_next: TQ_OK, or TQ_EPROTO (with *reason: it does
   not decode, it is a BATCH, has_payload breaks its command's rule) or
   TQ_EVERSION, as tq_batch_next returns them. */
int tq_batch_decode(tq_msg_t *msg, const void *header, size_t header_size,
                    bool has_payload, const char **reason);

#endif
