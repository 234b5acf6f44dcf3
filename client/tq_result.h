/* tq_result.h - the caller's handle (AsyncResult), private side: its one
   lifecycle (PENDING -> ANSWERED -> FINAL -> READY), moved only by the
   functions here, and what the caller sees (state, code, error, value).
   The request behind it (tq_request.h) is the I/O thread's. */
#ifndef TQ_RESULT_H
#define TQ_RESULT_H

#include <pthread.h>
#include <stdatomic.h>

#include "tq/tq_client.h"
#include "tq_request.h"

/* A handle's lifecycle as the caller sees it. */
typedef enum {
    TQ_RESULT_PENDING = 0, /* no answer from the broker yet */
    TQ_RESULT_ANSWERED, /* the broker answered (SUBMITTED, STATE): the
                           outcome is to come */
    TQ_RESULT_FINAL, /* the outcome is set; its callback runs */
    TQ_RESULT_READY, /* the callback returned: ready() is true */
    TQ_RESULT_PHASES_
} tq_result_phase_t;

struct tq_result_t {
    atomic_int refs; /* the caller's, and its request's until it ends */
    tq_req_kind_t kind; /* what was asked */
    char id[TQ_PROTO_MAX_ID + 1];
    tq_client_t *client; /* borrowed: where cancel and resubmit go; NULL for
                            a handle made final without a broker */
    tq_callback_fn *callback; /* on success, may be NULL */
    tq_callback_fn *error_callback; /* on failure, may be NULL */
    void *callback_arg;
    atomic_bool callbacks_anywhere; /* the callbacks are the library's own
                                       bookkeeping (the pool's tracking):
                                       a caller reading the socket runs
                                       them, no hop to the I/O thread */
    bool local; /* tq_result_new_local: answered by a function call, never
                   through the client's socket */
    char *names; /* SUBMIT: "task\0queue" (the unserved check), or NULL */
    pthread_mutex_t mutex;
    /* moved under mutex; read without it too (tq_result_phase): what the
       handle's move to FINAL publishes (state, code, error, value,
       attempts) is set before it, and no longer changes. Callers wait on
       it without the mutex, asleep on its word (a futex) */
    _Atomic tq_result_phase_t phase; /* the one fact of its lifecycle */
    atomic_int answer_waiters; /* callers in tq_result_wait_answer */
    atomic_int sleepers; /* callers asleep on phase */
    /* under mutex */
    int state; /* tq_state_t, last reported */
    int code; /* tq_err_t once final */
    uint32_t attempts; /* attempts the broker made, from RESULT */
    int count; /* TERMINATE: cancel requests made */
    char *error; /* malloc'd, NULL for none */
    bool unserved_checked; /* a timed-out get asked STATUS once */
    char *unserved; /* "no connected worker provides ...", or NULL */
    zmq_msg_t value; /* RESULT, REPLY or STATUS_REPLY payload */
    bool unpacked_done;
    bool unpacked_ok;
    msgpack_unpacked unpacked; /* made on first tq_result_value */
    tq_request_t *spare; /* a SUBMIT that ended without an answer,
                            kept for tq_result_resubmit */
    bool names_inline; /* names lives in the handle's own allocation
                          (tq_result_make_sized): not freed apart */
};

/* A handle of kind in PENDING with one reference (the caller's). NULL on
   ENOMEM. */
tq_result_t *tq_result_make(tq_req_kind_t kind, tq_client_t *client);

/* Takes and drops a reference; the last drop frees the handle. */
void tq_result_ref(tq_result_t *self);
void tq_result_unref(tq_result_t *self);

/* True if a handle may move from `from` to `to`. */
bool tq_result_phase_legal(tq_result_phase_t from, tq_result_phase_t to);

/* "PENDING", "ANSWERED"... */
const char *tq_result_phase_name(tq_result_phase_t phase);

/* The handle's phase now. */
tq_result_phase_t tq_result_phase(tq_result_t *self);

/* The broker answered: PENDING -> ANSWERED, with the task's state when
   state >= 0 (nothing changes on a final handle). */
void tq_result_answer(tq_result_t *self, int state);

/* Records the broker's count of attempts (not on a final handle). */
void tq_result_set_attempts(tq_result_t *self, uint32_t attempts);

/* Makes the handle final (state, code, error of error_len bytes, value
   moved when not NULL), runs its callback once, then makes it READY. A
   final handle keeps its outcome: a second call changes nothing. */
void tq_result_finish(tq_result_t *self, int state, int code, const char *error,
                      size_t error_len, zmq_msg_t *value);

/* As tq_result_finish for a failure with a text (may be NULL). */
void tq_result_fail(tq_result_t *self, int code, const char *text);

/* True once FINAL or READY. */
bool tq_result_final(tq_result_t *self);

/* True when only the request still holds the handle (the caller let go). */
bool tq_result_orphan(tq_result_t *self);

/* Gives the handle its request that ended without an answer (taken). */
void tq_result_keep(tq_result_t *self, tq_request_t *request);

/* Waits until READY (FINAL from the handle's own callback) or the
   deadline (ms of zclock_mono, -1 none): TQ_OK or TQ_ETIMEDOUT. */
int tq_result_wait_until(tq_result_t *self, int64_t deadline);

/* A deadline timeout_ms from now, -1 for a negative timeout. */
int64_t tq_result_deadline(int timeout_ms);

/* From tq_result_hold_wakeups until tq_result_release_wakeups, the
   callers this thread's moves of handles would wake are woken at the
   release, all at once (the I/O thread reading a burst of answers: the
   caller collecting them wakes once per burst and finds the next handles
   ready, rather than once per answer while the I/O thread still works).
   Nested holds release at the outermost. */
void tq_result_hold_wakeups(void);
void tq_result_release_wakeups(void);

/* As tq_result_finish, the broker's count of attempts recorded with the
   outcome (as tq_result_set_attempts, under the same lock). */
void tq_result_finish_attempts(tq_result_t *self, uint32_t attempts, int state,
                               int code, const char *error, size_t error_len,
                               zmq_msg_t *value);
/* As tq_result_make, in a zeroed allocation of size bytes (at least
   sizeof (tq_result_t)) of which the handle is the start: the caller
   keeps what it will in the rest (its request, names), all freed with
   the handle. */
tq_result_t *tq_result_make_sized(tq_req_kind_t kind, tq_client_t *client,
                                  size_t size);

#endif
