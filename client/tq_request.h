/* tq_request.h - the client's record of one request to the broker (what
   was asked, under which id, with which payload) and its one state
   machine. The I/O thread owns a request from the moment it takes it off
   the submission queue until it ends, and moves it only through
   tq_request_move, whose table of legal moves aborts on a bug (as the
   broker's tqb_task_move does). The caller's handle (tq_result_t) is
   apart: it holds only what the caller sees. */
#ifndef TQ_REQUEST_H
#define TQ_REQUEST_H

#include <stdbool.h>
#include <stdint.h>
#include <zmq.h>

#include "tq_proto.h"

typedef struct tq_result_t tq_result_t;

/* What a request asks the broker. */
typedef enum {
    TQ_KIND_SUBMIT, /* SUBMIT; acknowledged by SUBMITTED */
    TQ_KIND_GET, /* GET; acknowledged by STATE, RESULT or UNKNOWN */
    TQ_KIND_STATUS, /* STATUS; answered by STATUS_REPLY */
    TQ_KIND_CANCEL, /* CANCEL id; answered by RESULT or UNKNOWN */
    TQ_KIND_RETRY, /* RETRY id; answered SUBMITTED, UNKNOWN or ERROR */
    TQ_KIND_PURGE, /* PURGE queue; answered by REPLY */
    TQ_KIND_FAILED, /* FAILED; answered by REPLY */
    TQ_KIND_TERMINATE, /* not sent: the I/O thread cancels all it waits on */
    TQ_KIND_QPUT, /* QPUT request-id; answered REPLY(id) or ERROR(id) */
    TQ_KIND_QGET, /* QGET request-id; answered QITEM(id) or ERROR(id) */
    TQ_KIND_QSIZE, /* QSIZE request-id; answered REPLY(id) */
} tq_req_kind_t;

/* Requests that carry an id of the client's own (TQ_KIND_STATUS, PURGE,
   FAILED: "o<prefix><n>") are matched by it; a broker of an earlier
   revision answers them without an id (STATUS_REPLY, REPLY or ERROR), in
   order, so they also share one FIFO for that. */
#define TQ_REQ_IS_FIFO(k)                                                      \
    ((k) == TQ_KIND_STATUS || (k) == TQ_KIND_PURGE || (k) == TQ_KIND_FAILED)

/* A request's state: which container of the I/O thread holds it. */
typedef enum {
    TQ_REQ_NEW = 0, /* made by a caller; on the client's submission queue */
    TQ_REQ_QUEUED, /* on the outbound list: to be handed to libzmq (the
                      first time, or again after a reconnect) */
    TQ_REQ_SENT, /* handed to libzmq, not answered yet */
    TQ_REQ_DEFERRED, /* refused as full (block_when_full): on the deferred
                        list until its resend time */
    TQ_REQ_ACKED, /* answered (SUBMITTED, STATE): its outcome is to
                     come; in the id table only */
    TQ_REQ_DONE, /* final: the broker's answer is in the handle */
    TQ_REQ_FAILED, /* final: ended without one (unreachable, closed, the
                      handle destroyed while it waited) */
    TQ_REQ_STATES_
} tq_req_state_t;

typedef struct tq_request_t tq_request_t;
struct tq_request_t {
    tq_req_kind_t kind;
    tq_req_state_t state; /* the one fact; moved by tq_request_move */
    char id[TQ_PROTO_MAX_ID + 1];
    tq_result_t *result; /* the caller's handle (one reference), NULL for a
                            CANCEL nobody waits on */
    /* what is sent */
    char *task; /* SUBMIT; freed once acknowledged */
    char *queue; /* SUBMIT, PURGE, data queues */
    uint32_t priority; /* SUBMIT, 0..9 */
    uint32_t time_limit_ms; /* SUBMIT: hard limit; QGET: wait */
    uint32_t retries; /* SUBMIT: reruns after a failure */
    uint32_t backoff_ms; /* SUBMIT: first retry delay */
    uint32_t delay_ms; /* SUBMIT: countdown */
    uint32_t maxsize; /* QPUT: the data queue's bound */
    bool block_when_full; /* SUBMIT: resend on TQ_EFULL */
    bool wait; /* GET: answer once final */
    zmq_msg_t payload; /* SUBMIT arguments until acknowledged, QPUT
                          item: each send sends a copy (refcounted by
                          libzmq) */
    /* the I/O thread's bookkeeping */
    bool reget; /* SUBMIT under an id the broker may know from
                   before: ask for the result by GET once
                   acknowledged */
    uint64_t epoch; /* the I/O thread's epoch when last sent */
    int64_t sent_ms; /* when last handed to libzmq */
    int full_delay_ms; /* next resend delay after TQ_EFULL */
    int64_t resend_at; /* ms, while DEFERRED */
    tq_request_t *next; /* submission queue, outbound or deferred list */
    tq_request_t *prev; /* outbound or deferred list */
    tq_request_t *next_same; /* chain of requests on one id */
    uint64_t hash; /* of id, while in the I/O thread's id table */
    bool folded; /* SUBMIT sent with TQ_FEATURE_FOLD: its SUBMITTED may be
                    held back by the broker (PROTOCOL.md 5.1) */
    bool held; /* folded, SENT, and the broker was heard after it went
                  when it fell silent: the broker holds it, as it holds
                  an acknowledged one (tq_io_hold_folded) */
    bool batched; /* last sent inside a BATCH (PROTOCOL.md 5.9) */
    uint64_t send_seq; /* the I/O thread's sends counted at its send */
    tq_request_t *next_fifo; /* the FIFO (TQ_REQ_IS_FIFO kinds) */
    int64_t dropped_ping; /* ms, the PING of the PONG that said replies
                             were dropped while this one was unanswered
                             (0: none): it ends at a later PONG unless it
                             is answered first (PROTOCOL.md section 10) */
    size_t id_len; /* strlen(id), set with hash as it enters the I/O
                      thread's id table */
    bool embedded; /* made by tq_request_init inside another allocation
                      (its handle's, tq_client.c), where its task and
                      queue names live too: freed with it, never apart */
    size_t task_len, queue_len; /* strlen of task and queue when known
                                   (set with them; 0: not known) */
};

/* A request of kind in TQ_REQ_NEW for handle result (may be NULL; the
   request takes no reference: the caller gives it one). NULL on ENOMEM. */
tq_request_t *tq_request_new(tq_req_kind_t kind, tq_result_t *result);

/* Frees a request's fields and itself (an embedded one: what it holds
   but neither itself nor its names); NULL-safe. */
void tq_request_free(tq_request_t *self);

/* Makes a SUBMIT in TQ_REQ_NEW with old's task, options and arguments
   (copied), for handle result. NULL on ENOMEM or if old no longer has
   them (it was acknowledged). */
tq_request_t *tq_request_clone(const tq_request_t *old, tq_result_t *result);

/* True if a request may move from `from` to `to`. */
bool tq_request_legal(tq_req_state_t from, tq_req_state_t to);

/* Moves self to `to`: logs and aborts on an illegal move (a bug in the
   I/O thread, never a condition of the wire). Containers are the
   caller's; this is the one place where state changes. */
void tq_request_move(tq_request_t *self, tq_req_state_t to);

/* True in TQ_REQ_DONE and TQ_REQ_FAILED (inline: asked at every move). */
static inline bool
tq_request_final(tq_req_state_t state)
{
    return state == TQ_REQ_DONE || state == TQ_REQ_FAILED;
}

/* True while the broker has not answered: QUEUED, SENT, DEFERRED (inline:
   asked at every move). */
static inline bool
tq_request_unacked(tq_req_state_t state)
{
    return state == TQ_REQ_QUEUED || state == TQ_REQ_SENT ||
        state == TQ_REQ_DEFERRED;
}

/* "NEW", "QUEUED"... ("?" out of range). */
const char *tq_request_state_name(tq_req_state_t state);

/* Makes self, zeroed memory, a request of kind in TQ_REQ_NEW for handle
   result, as tq_request_new does without allocating. The caller sets
   embedded when self lives inside another allocation. */
void tq_request_init(tq_request_t *self, tq_req_kind_t kind,
                     tq_result_t *result);

/* Lets go of what a request holds only to be sent (again): its task and
   queue (NULL after) and its payload (empty after). */
void tq_request_forget_args(tq_request_t *self);

/* Copies a SUBMIT's id, options and arguments (payload shared, refcounted
   by libzmq) from old into self, which has its own task and queue; asks
   for the result once acknowledged (reget). 0, or -1 on ENOMEM. */
int tq_request_copy_submit(tq_request_t *self, const tq_request_t *old);

/* The last name found valid by tq_name_memo_check: a stream of requests
   naming the same task and queue checks each name once, not per
   request. Zeroed: empty. */
typedef struct {
    size_t len; /* 0: none yet */
    char name[TQ_PROTO_MAX_NAME + 1];
} tq_name_memo_t;

/* strlen(name) if name is a valid task or queue name
   (tq_proto_valid_name), else 0. A name equal to the memo's is known
   valid without a check; one found valid by the check becomes the
   memo's. */
size_t tq_name_memo_check(tq_name_memo_t *memo, const char *name);

#endif
