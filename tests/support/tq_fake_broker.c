/* tq_fake_broker.c - a fake broker for client tests (see the header). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "tq_fake_broker.h"

#define S_BIND_MS 15000 /* bound on the first bind */

bool
tq_fake_router_recv(void *router, tq_frames_t *frames, tq_msg_t *msg,
                    int timeout_ms)
{
    zmq_pollitem_t item = {router, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) <= 0)
        return false;
    const char *reason = NULL;
    return tq_wire_recv(router, frames, true, 0) == TQ_OK &&
        tq_wire_decode(frames, msg, &reason) == TQ_OK;
}

tq_fake_broker_t *
tq_fake_broker_new(void)
{
    tq_fake_broker_t *self = calloc(1, sizeof *self);
    assert_non_null(self);
    self->ctx = zmq_ctx_new();
    assert_non_null(self->ctx);
    tq_frames_init(&self->frames);
    msgpack_sbuffer_init(&self->buf);
    assert_int_equal(tq_fake_broker_bind(self, S_BIND_MS), 0);
    return self;
}

void
tq_fake_broker_destroy(tq_fake_broker_t **self_p)
{
    tq_fake_broker_t *self = *self_p;
    if (!self)
        return;
    if (self->router)
        zmq_close(self->router);
    tq_frames_close(&self->frames);
    zmq_ctx_term(self->ctx);
    msgpack_sbuffer_destroy(&self->buf);
    free(self);
    *self_p = NULL;
}

int
tq_fake_broker_bind(tq_fake_broker_t *self, int timeout_ms)
{
    self->router = tq_harness_router(self->ctx, self->endpoint,
                                     sizeof self->endpoint, timeout_ms);
    return self->router ? 0 : -1;
}

void
tq_fake_broker_close(tq_fake_broker_t *self)
{
    zmq_close(self->router);
    self->router = NULL;
}

void
tq_fake_broker_send(tq_fake_broker_t *self, tq_msg_t *msg, const void *payload,
                    size_t size)
{
    zmq_msg_t body;
    if (payload) {
        zmq_msg_init_size(&body, size);
        memcpy(zmq_msg_data(&body), payload, size);
    }
    assert_int_equal(tq_wire_send_msg(self->router, &self->frames.identity, msg,
                                      &self->buf, payload ? &body : NULL, 0),
                     TQ_OK);
    if (payload)
        zmq_msg_close(&body);
}

bool
tq_fake_broker_expect(tq_fake_broker_t *self, uint8_t command, int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - tq_harness_now_ms();
        if (left <= 0)
            return false;
        if (!tq_fake_router_recv(self->router, &self->frames, &self->msg,
                                 (int)left))
            continue;
        tq_str_copy(self->id, sizeof self->id, self->msg.id);
        if (self->msg.command == TQ_CMD_PING) {
            tq_msg_t pong = {.command = TQ_CMD_PONG,
                             .dropped = self->dropped,
                             .features = self->features};
            tq_fake_broker_send(self, &pong, NULL, 0);
            self->pings++;
        }
        if (self->msg.command == command)
            return true;
    }
}

void
tq_fake_broker_result(tq_fake_broker_t *self, const char *id, int state,
                      int code, const char *error, uint8_t value)
{
    tq_msg_t m = {.command = TQ_CMD_RESULT,
                  .id = tq_str(id),
                  .state = (uint32_t)state,
                  .code = (uint32_t)code,
                  .error = tq_str(error),
                  .attempt = 1};
    if (state != TQ_STATE_SUCCESS)
        value = 0xc0; /* nil: RESULT always has its payload frame */
    tq_fake_broker_send(self, &m, &value, 1);
}

void
tq_fake_broker_ack(tq_fake_broker_t *self, const char *id)
{
    tq_msg_t m = {.command = TQ_CMD_SUBMITTED, .id = tq_str(id)};
    tq_fake_broker_send(self, &m, NULL, 0);
}
