/* tq_raw_client.h - a raw TQP/1 client for tests that need exact control
   over what is sent (ids, resubmissions, windows): one DEALER socket with
   unbounded queues, its header buffer and the last message received.
   Failures to set it up are cmocka assertions. */
#ifndef TQ_RAW_CLIENT_H
#define TQ_RAW_CLIENT_H

#include <msgpack.h>

#include "tq_proto.h"
#include "tq_wire.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    void *ctx;
    void *sock;
    msgpack_sbuffer sbuf; /* header encoding, reused */
    tq_frames_t frames;
    tq_msg_t *out; /* large: on the heap */
    tq_msg_t *in;
} tq_raw_client_t;

/* A client connected to endpoint; reconnect_ivl_ms > 0 sets
   ZMQ_RECONNECT_IVL (0: libzmq's default). No bound on its queues: the
   test bounds what it sends, and what is queued while the broker is down
   goes to the next one. */
tq_raw_client_t *tq_raw_client_new(const char *endpoint, int reconnect_ivl_ms);

/* Closes and frees it; *self_p becomes NULL. */
void tq_raw_client_destroy(tq_raw_client_t **self_p);

/* Receives one message into self->in, waiting up to timeout_ms. Returns 1,
   or 0 if nothing came (a malformed message is skipped with a line). */
int tq_raw_client_recv(tq_raw_client_t *self, int timeout_ms);

#ifdef __cplusplus
}
#endif

#endif
