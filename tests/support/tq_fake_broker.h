/* tq_fake_broker.h - a fake broker for client tests: one ROUTER socket in
   the test's own process, on a loopback endpoint it may close and bind
   again (a broker that died and came back on the same port). It decodes
   what the client sends, answers PINGs with PONG and sends whatever the
   test tells it to, so a broken connection or a missing answer is
   deterministic. Failures are cmocka assertions. */
#ifndef TQ_FAKE_BROKER_H
#define TQ_FAKE_BROKER_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tq_harness.h"
#include "tq_proto.h"
#include "tq_wire.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    void *ctx;
    void *router; /* NULL while closed */
    char endpoint[TQ_HARNESS_EP_MAX]; /* kept across a close */
    tq_frames_t frames;
    tq_msg_t msg; /* the last message received */
    char id[TQ_PROTO_MAX_ID + 1]; /* its id, copied */
    msgpack_sbuffer buf;
    uint64_t pings; /* PINGs answered */
    uint64_t dropped; /* replies "dropped" so far, said in each PONG */
    uint32_t features; /* said in each PONG (TQ_FEATURE_*): what this
                          broker takes; 0 an older broker's silence */
} tq_fake_broker_t;

/* Waits up to timeout_ms for one message on router (a ROUTER socket) and
   decodes it into msg; frames holds its frames, the sender's identity
   first. True if one came and decoded. No assertions: any thread. */
bool tq_fake_router_recv(void *router, tq_frames_t *frames, tq_msg_t *msg,
                         int timeout_ms);

/* A new fake broker bound to a free loopback port (asserts). */
tq_fake_broker_t *tq_fake_broker_new(void);

/* Closes its socket and frees it; *self_p becomes NULL. */
void tq_fake_broker_destroy(tq_fake_broker_t **self_p);

/* Binds a new ROUTER to self->endpoint (a free port if it is empty),
   waiting up to timeout_ms for a port just closed to come free. 0 or -1. */
int tq_fake_broker_bind(tq_fake_broker_t *self, int timeout_ms);

/* The broker dies: its socket closes, every connection to it breaks. */
void tq_fake_broker_close(tq_fake_broker_t *self);

/* Sends msg (and size bytes of payload, may be NULL) to the last sender. */
void tq_fake_broker_send(tq_fake_broker_t *self, tq_msg_t *msg,
                         const void *payload, size_t size);

/* Waits up to timeout_ms for a message of command, answering PINGs with
   PONG (which says self->dropped and self->features). True if it came;
   self->msg and self->id hold it. */
bool tq_fake_broker_expect(tq_fake_broker_t *self, uint8_t command,
                           int timeout_ms);

/* Sends RESULT id with state, code, error and a one-byte msgpack value
   (nil unless state is TQ_STATE_SUCCESS). */
void tq_fake_broker_result(tq_fake_broker_t *self, const char *id, int state,
                           int code, const char *error, uint8_t value);

/* Sends SUBMITTED id. */
void tq_fake_broker_ack(tq_fake_broker_t *self, const char *id);

#ifdef __cplusplus
}
#endif

#endif
