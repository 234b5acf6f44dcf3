/* tq_raw_client.c - a raw TQP/1 client for tests (see the header). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <zmq.h>

#include "tq_raw_client.h"

tq_raw_client_t *
tq_raw_client_new(const char *endpoint, int reconnect_ivl_ms)
{
    tq_raw_client_t *self = calloc(1, sizeof *self);
    assert_non_null(self);
    self->out = calloc(1, sizeof *self->out);
    self->in = calloc(1, sizeof *self->in);
    assert_non_null(self->out);
    assert_non_null(self->in);
    self->ctx = zmq_ctx_new();
    self->sock = zmq_socket(self->ctx, ZMQ_DEALER);
    assert_non_null(self->sock);
    int zero = 0;
    zmq_setsockopt(self->sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(self->sock, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(self->sock, ZMQ_RCVHWM, &zero, sizeof zero);
    if (reconnect_ivl_ms > 0)
        zmq_setsockopt(self->sock, ZMQ_RECONNECT_IVL, &reconnect_ivl_ms,
                       sizeof reconnect_ivl_ms);
    assert_int_equal(zmq_connect(self->sock, endpoint), 0);
    msgpack_sbuffer_init(&self->sbuf);
    tq_frames_init(&self->frames);
    return self;
}

void
tq_raw_client_destroy(tq_raw_client_t **self_p)
{
    tq_raw_client_t *self = *self_p;
    if (!self)
        return;
    tq_frames_close(&self->frames);
    msgpack_sbuffer_destroy(&self->sbuf);
    zmq_close(self->sock);
    zmq_ctx_term(self->ctx);
    free(self->out);
    free(self->in);
    free(self);
    *self_p = NULL;
}

int
tq_raw_client_recv(tq_raw_client_t *self, int timeout_ms)
{
    zmq_pollitem_t item = {self->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) <= 0)
        return 0;
    if (tq_wire_recv(self->sock, &self->frames, false, ZMQ_DONTWAIT) != TQ_OK)
        return 0;
    const char *reason = NULL;
    if (tq_wire_decode(&self->frames, self->in, &reason) != TQ_OK) {
        fprintf(stderr, "raw client: malformed message: %s\n", reason);
        return 0;
    }
    return 1;
}
