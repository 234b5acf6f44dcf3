/* tq_request.c - a client request's record and its state machine: the
   table of legal moves and the one function that changes a state. */
#include "tq_request.h"

#include <stdlib.h>
#include <string.h>

#include "tq_log.h"

#define B(state) (1u << (state))

/* s_legal[from]: the states a request may move to from `from`. */
static const uint32_t s_legal[TQ_REQ_STATES_] = {
    /* taken by the I/O thread; TERMINATE is carried out at once; a
       closed client fails what callers still hand it */
    [TQ_REQ_NEW] = B(TQ_REQ_QUEUED) | B(TQ_REQ_DONE) | B(TQ_REQ_FAILED),
    /* an answer to an earlier send may come while a resend waits */
    [TQ_REQ_QUEUED] =
        B(TQ_REQ_SENT) | B(TQ_REQ_ACKED) | B(TQ_REQ_DONE) | B(TQ_REQ_FAILED),
    /* SENT -> QUEUED: sent again (a new connection, the next broker, or
       the broker talks but never answered it) */
    [TQ_REQ_SENT] = B(TQ_REQ_QUEUED) | B(TQ_REQ_DEFERRED) | B(TQ_REQ_ACKED) |
        B(TQ_REQ_DONE) | B(TQ_REQ_FAILED),
    /* DEFERRED -> ACKED: a copy sent before (a reconnect) was accepted */
    [TQ_REQ_DEFERRED] =
        B(TQ_REQ_QUEUED) | B(TQ_REQ_ACKED) | B(TQ_REQ_DONE) | B(TQ_REQ_FAILED),
    [TQ_REQ_ACKED] = B(TQ_REQ_DONE) | B(TQ_REQ_FAILED),
    [TQ_REQ_DONE] = 0,
    [TQ_REQ_FAILED] = 0,
};

static const char *const s_names[TQ_REQ_STATES_] = {
    [TQ_REQ_NEW] = "NEW",       [TQ_REQ_QUEUED] = "QUEUED",
    [TQ_REQ_SENT] = "SENT",     [TQ_REQ_DEFERRED] = "DEFERRED",
    [TQ_REQ_ACKED] = "ACKED",   [TQ_REQ_DONE] = "DONE",
    [TQ_REQ_FAILED] = "FAILED",
};

bool
tq_request_legal(tq_req_state_t from, tq_req_state_t to)
{
    return from < TQ_REQ_STATES_ && to < TQ_REQ_STATES_ &&
        (s_legal[from] & B(to)) != 0;
}

const char *
tq_request_state_name(tq_req_state_t state)
{
    return state < TQ_REQ_STATES_ ? s_names[state] : "?";
}

void
tq_request_move(tq_request_t *self, tq_req_state_t to)
{
    if (!tq_request_legal(self->state, to)) {
        tq_log_error("BUG: client request %s cannot move %s -> %s", self->id,
                     tq_request_state_name(self->state),
                     tq_request_state_name(to));
        abort();
    }
    self->state = to;
}

void
tq_request_init(tq_request_t *self, tq_req_kind_t kind, tq_result_t *result)
{
    self->kind = kind;
    self->state = TQ_REQ_NEW;
    self->result = result;
    zmq_msg_init(&self->payload);
}

tq_request_t *
tq_request_new(tq_req_kind_t kind, tq_result_t *result)
{
    tq_request_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    tq_request_init(self, kind, result);
    return self;
}

void
tq_request_free(tq_request_t *self)
{
    if (!self)
        return;
    tq_request_forget_args(self);
    if (!self->embedded)
        free(self);
}

void
tq_request_forget_args(tq_request_t *self)
{
    if (!self->embedded) {
        free(self->task);
        free(self->queue);
    }
    self->task = self->queue = NULL;
    self->task_len = self->queue_len = 0;
    zmq_msg_close(&self->payload);
    zmq_msg_init(&self->payload);
}

int
tq_request_copy_submit(tq_request_t *self, const tq_request_t *old)
{
    memcpy(self->id, old->id, sizeof self->id);
    /* the broker may know the id: ask for its result once acknowledged */
    self->reget = true;
    self->priority = old->priority;
    self->time_limit_ms = old->time_limit_ms;
    self->retries = old->retries;
    self->backoff_ms = old->backoff_ms;
    self->delay_ms = old->delay_ms;
    self->block_when_full = old->block_when_full;
    return zmq_msg_copy(&self->payload, (zmq_msg_t *)&old->payload);
}

tq_request_t *
tq_request_clone(const tq_request_t *old, tq_result_t *result)
{
    if (old->kind != TQ_KIND_SUBMIT || !old->task || !old->queue)
        return NULL;
    tq_request_t *self = tq_request_new(TQ_KIND_SUBMIT, result);
    if (!self)
        return NULL;
    self->task = strdup(old->task);
    self->queue = strdup(old->queue);
    if (!self->task || !self->queue || tq_request_copy_submit(self, old) != 0) {
        tq_request_free(self);
        return NULL;
    }
    return self;
}

size_t
tq_name_memo_check(tq_name_memo_t *memo, const char *name)
{
    if (memo->len && strcmp(name, memo->name) == 0)
        return memo->len;
    /* one past the longest valid name is enough to refuse a longer one */
    size_t len = strnlen(name, TQ_PROTO_MAX_NAME + 1);
    if (!tq_proto_valid_name(name, len))
        return 0;
    memcpy(memo->name, name, len + 1);
    memo->len = len;
    return len;
}
