/* tq_wire.h - sending and receiving TQP/1 messages on raw libzmq sockets:
   [identity] (ROUTER side only), header, optional payload. Payloads move as
   zmq_msg_t so they are never copied. */
#ifndef TQ_WIRE_H
#define TQ_WIRE_H

#include <msgpack.h>
#include <stdbool.h>
#include <zmq.h>

#include "tq_batch.h"
#include "tq_proto.h"

/* The frames of one received message. */
typedef struct {
    zmq_msg_t identity; /* ROUTER sockets only */
    zmq_msg_t header;
    zmq_msg_t payload;  /* empty (size 0) when the message had none */
    bool has_payload;
    int frames;         /* frames received, identity included */
} tq_frames_t;

/* Initialises the frames' messages; call once before the first recv. */
void tq_frames_init(tq_frames_t *f);

/* Closes the frames' messages (they stay usable for the next recv). */
void tq_frames_close(tq_frames_t *f);

/* Receives one whole message from socket (a raw libzmq handle). router: the
   socket prepends an identity frame. flags: 0 or ZMQ_DONTWAIT. Returns
   TQ_OK; TQ_EPROTO if it had too many or too few frames (all its frames
   are consumed); or -1 with errno (EAGAIN, EINTR, ETERM) when nothing was
   received. */
int tq_wire_recv(void *socket, tq_frames_t *f, bool router, int flags);

/* Sends a message: identity (copied, NULL for DEALER sockets), the header
   bytes, and payload (its content moved out and the message left empty;
   NULL for none). Returns TQ_OK or -1 with errno (EHOSTUNREACH when a
   ROUTER_MANDATORY peer is gone, EAGAIN at the high-water mark). */
int tq_wire_send(void *socket, zmq_msg_t *identity, const void *header,
                 size_t header_size, zmq_msg_t *payload, int flags);

/* Encodes msg into buf (see tq_proto_encode) and sends it with payload
   (moved, may be NULL). Returns TQ_OK, TQ_EINVAL, or -1 with errno. */
int tq_wire_send_msg(void *socket, zmq_msg_t *identity, const tq_msg_t *msg,
                     msgpack_sbuffer *buf, zmq_msg_t *payload, int flags);

/* Sends batch b as one message: identity (copied, NULL for DEALER
   sockets), the header [1, BATCH, count] and the batch's payload; a batch
   of one goes as its plain message, an empty one sends nothing. b is
   reset whatever the outcome (read tq_batch_count before, to account for
   a failure). Returns TQ_OK or -1 with errno, as tq_wire_send. */
int tq_wire_send_batch(void *socket, zmq_msg_t *identity, tq_batch_t *b,
                       int flags);

/* Decodes the header of received frames into msg and checks that a payload
   frame came exactly when the command has one. Returns TQ_OK, TQ_EVERSION
   or TQ_EPROTO with *reason (static text). */
int tq_wire_decode(const tq_frames_t *f, tq_msg_t *msg, const char **reason);

/* The next sub-message of a received BATCH (tq_batch_next) as a lone
   message's parts: its header decoded into msg, its payload into payload
   (an initialised message, closed first) as a message of its own holding
   a copy of the bytes, empty when it has none (*has false). Returns what
   tq_batch_next returns (TQ_OK, TQ_EPROTO with *reason for that
   sub-message, TQ_BATCH_END), or TQ_ENOMEM (*reason set). */
int tq_wire_batch_next(tq_batch_reader_t *r, tq_msg_t *msg, zmq_msg_t *payload,
                       bool *has, const char **reason);

/* As tq_wire_batch_next, the sub-message's header not decoded: its bytes
   in *header and *header_size (borrowed from the batch), its payload as
   tq_wire_batch_next makes it. Returns what tq_batch_next_raw returns, or
   TQ_ENOMEM. A receiver decodes the header itself or with
   tq_batch_decode. */
int tq_wire_batch_next_raw(tq_batch_reader_t *r, const void **header,
                           size_t *header_size, zmq_msg_t *payload, bool *has,
                           const char **reason);

#endif
