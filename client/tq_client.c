/* tq_client.c - the client library: an I/O thread (czmq actor) owning one
   DEALER to the broker, and AsyncResult handles that it completes.

   Threads: callers make tq_result_t requests and push them on a
   mutex-protected queue, waking the I/O thread through an eventfd. The I/O
   thread alone touches the socket and the id -> pending map; it sends
   SUBMIT / GET / STATUS / PING, and completes handles from SUBMITTED, STATE,
   RESULT, UNKNOWN, STATUS_REPLY and ERROR. A handle is refcounted: one
   reference for the caller, one for the I/O thread while it is pending, so
   either side may let go first. */
#include "tq/tq_client.h"

#include <assert.h>
#include <czmq.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "tq_client_internal.h"
#include "tq_client_unserved.h"
#include "tq_log.h"
#include "tq_proto.h"
#include "tq_curve.h"
#include "tq_wire.h"

#define S_DEFAULT_LIVENESS_MS 3000
#define S_RECV_BATCH 1024 /* messages drained per poll pass */
#define S_SEND_HWM 10000  /* messages queued in libzmq before we hold them */

/* What a handle asked the broker. */
typedef enum {
    S_KIND_SUBMIT, /* SUBMIT; acknowledged by SUBMITTED */
    S_KIND_GET,    /* GET; acknowledged by STATE, RESULT or UNKNOWN */
    S_KIND_STATUS, /* STATUS; answered by STATUS_REPLY */
    S_KIND_CANCEL, /* CANCEL id; answered by RESULT or UNKNOWN */
    S_KIND_RETRY,  /* RETRY id; answered SUBMITTED, UNKNOWN or ERROR */
    S_KIND_PURGE,  /* PURGE queue; answered by REPLY */
    S_KIND_FAILED, /* FAILED; answered by REPLY */
    S_KIND_TERMINATE, /* not sent: the I/O thread cancels all it waits on */
    S_KIND_QPUT,   /* QPUT request-id; answered REPLY(id) or ERROR(id) */
    S_KIND_QGET,   /* QGET request-id; answered QITEM(id) or ERROR(id) */
    S_KIND_QSIZE,  /* QSIZE request-id; answered REPLY(id) */
} s_kind_t;

/* Requests without a task id: answered in order (STATUS_REPLY, REPLY or an
   ERROR without id), so they share one FIFO. */
#define S_KIND_IS_FIFO(k)                                                     \
    ((k) == S_KIND_STATUS || (k) == S_KIND_PURGE || (k) == S_KIND_FAILED)

/* block_when_full: first and longest wait before a refused SUBMIT is sent
   again (ms). */
#define S_FULL_RETRY_MIN_MS 50
#define S_FULL_RETRY_MAX_MS 1000

struct tq_result_t {
    atomic_int refs;   /* caller + I/O thread (+ outbound list) */
    s_kind_t kind;
    char id[TQ_PROTO_MAX_ID + 1];
    /* request, read by the I/O thread only, freed once sent */
    char *task;
    char *queue;
    uint32_t priority;
    uint32_t time_limit_ms;
    uint32_t retries;       /* SUBMIT: reruns after a failure */
    uint32_t backoff_ms;    /* SUBMIT: first retry delay */
    uint32_t delay_ms;      /* SUBMIT: countdown */
    uint32_t maxsize;       /* QPUT: the data queue's bound */
    bool block_when_full;   /* SUBMIT: resend on TQ_EFULL */
    bool wait;       /* GET */
    zmq_msg_t args;  /* QPUT item, or the SUBMIT payload being sent:
                        moved out when sent */
    zmq_msg_t kept;  /* SUBMIT payload until acknowledged: each send
                        (first, after TQ_EFULL, after a reconnect) sends
                        a copy (refcounted by libzmq) */
    int full_delay_ms;      /* next resend delay after TQ_EFULL */
    int64_t resend_at;      /* ms, when deferred after TQ_EFULL */
    tq_callback_fn *callback;
    tq_callback_fn *error_callback;
    void *callback_arg;
    tq_client_t *client;    /* borrowed: where tq_result_cancel goes */
    /* I/O thread only */
    tq_result_t *next;      /* submission queue, then outbound list */
    tq_result_t *next_same; /* chain of handles waiting on the same id */
    tq_result_t *next_deferred; /* refused as full, waiting to resend */
    bool deferred;          /* on the deferred list */
    bool queued;            /* on the outbound list */
    bool resent;            /* SUBMIT: sent again under the same id, so
                               the broker may know it from before: ask
                               for the result by GET once acknowledged */
    uint64_t epoch;         /* io->epoch when last handed to libzmq */
    int64_t sent_ms;        /* when last handed to libzmq */
    bool acked;             /* the broker answered the request */
    bool in_map;            /* linked in the pending map or status list */
    /* shared with callers, under mutex */
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    bool answered; /* as acked, for callers (tq_result_wait_answer) */
    bool final;    /* state, code, error and value are set */
    bool ready;    /* final and its callback has returned */
    int state;     /* tq_state_t, last reported */
    int code;      /* tq_err_t once ready */
    uint32_t attempts; /* attempts the broker made, from RESULT */
    int count;     /* TERMINATE: cancel requests sent */
    char *error;   /* malloc'd, NULL for none */
    char *names;   /* SUBMIT: "task\0queue", kept for the caller's side
                      (the request's own copies go once sent) */
    bool unserved_checked; /* a timed-out get asked STATUS once */
    char *unserved; /* "no connected worker provides ...", or NULL */
    zmq_msg_t value; /* value bytes (RESULT or STATUS_REPLY payload) */
    bool unpacked_done;
    bool unpacked_ok;
    msgpack_unpacked unpacked; /* lazily made by tq_result_value */
};

struct tq_client_t {
    char *endpoint;
    zactor_t *actor;
    void *socket;  /* raw DEALER; the I/O thread's once started */
    int wake_fd;   /* eventfd: the submission queue became non-empty */
    pthread_mutex_t lock; /* guards queue_* and closed */
    tq_result_t *queue_head;
    tq_result_t *queue_tail;
    bool closed;
    atomic_int liveness_ms;
    char monitor[64];          /* inproc endpoint of the socket monitor */
    void *monitor_reader;      /* PAIR connected to it before the DEALER
                                  connects, so no event is ever sent to a
                                  PAIR without a peer (libzmq would block);
                                  the I/O thread's once started */
    uint64_t id_prefix;        /* 64 random bits */
    atomic_uint_fast64_t id_counter;
    pid_t pid;                 /* the process that made it */
    tq_client_t *live_prev, *live_next; /* s_live */
};

/* The I/O thread's state. */
typedef struct {
    tq_client_t *client;
    zhashx_t *pending;         /* id -> chain of tq_result_t (next_same) */
    tq_result_t *status_head;  /* id-less requests (STATUS, PURGE, FAILED)
                                  in send order */
    tq_result_t *status_tail;
    tq_result_t *out_head;     /* made, not yet accepted by libzmq */
    tq_result_t *out_tail;
    size_t unacked;            /* requests without an answer */
    size_t waiting;            /* handles in pending + status list */
    int64_t unacked_since;     /* when unacked last went 0 -> 1, ms */
    int64_t waiting_since;     /* when waiting last went 0 -> 1, ms */
    int64_t last_heard;        /* last message from the broker, ms */
    int64_t last_ping;         /* last PING sent, ms */
    bool broker_lost;          /* silent past the liveness while handles
                                  waited: ask again once it answers */
    tq_result_t *deferred;     /* SUBMITs refused as full, to resend */
    zlistx_t *regets;          /* ids to send GET wait=true for (owned) */
    void *monitor;             /* PAIR: the DEALER's connect events */
    bool connected_once;       /* a later connect is a reconnect */
    int64_t last_stale_check;  /* ms, last look for stale SUBMITs */
    int64_t pong_for;          /* ms, when the PING last answered went */
    uint64_t epoch;            /* connections lost or made so far: a
                                  request sent in an earlier epoch went
                                  over a connection that is gone */
    uint64_t resent;           /* requests sent again after a reconnect */
    tq_frames_t frames;
    tq_msg_t msg;              /* decode target; large, kept off the stack */
    tq_msg_t out;              /* encode source */
    msgpack_sbuffer buf;       /* header encode buffer, reused */
    uint64_t malformed;        /* messages dropped as malformed */
} s_io_t;

/* ---- results ------------------------------------------------------------ */

/* The handle whose callback this thread is running: a callback that waits
   on its own handle must not wait for the end of itself. */
static _Thread_local tq_result_t *s_in_callback;

static tq_result_t *
s_result_new(s_kind_t kind)
{
    tq_result_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    atomic_init(&self->refs, 2); /* the caller's and the I/O thread's */
    self->kind = kind;
    zmq_msg_init(&self->args);
    zmq_msg_init(&self->kept);
    zmq_msg_init(&self->value);
    pthread_mutex_init(&self->mutex, NULL);
    pthread_cond_init(&self->cond, NULL);
    self->state = TQ_STATE_PENDING;
    return self;
}

/* Why the last call of this thread that returned NULL failed before it
   reached the broker (tq_client_last_error). */
static _Thread_local int s_last_code;
static _Thread_local char s_last_text[256];

static void s_set_last_error(int code, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
static void
s_set_last_error(int code, const char *format, ...)
{
    s_last_code = code;
    va_list ap;
    va_start(ap, format);
    vsnprintf(s_last_text, sizeof s_last_text, format, ap);
    va_end(ap);
}

int
tq_client_last_error(const char **text)
{
    if (text)
        *text = s_last_text;
    return s_last_code;
}

static void
s_result_unref(tq_result_t *self)
{
    if (!self || atomic_fetch_sub(&self->refs, 1) != 1)
        return;
    free(self->task);
    free(self->queue);
    zmq_msg_close(&self->args);
    zmq_msg_close(&self->kept);
    zmq_msg_close(&self->value);
    free(self->error);
    free(self->names);
    free(self->unserved);
    if (self->unpacked_done)
        msgpack_unpacked_destroy(&self->unpacked);
    pthread_mutex_destroy(&self->mutex);
    pthread_cond_destroy(&self->cond);
    free(self);
}

/* Makes the handle final and runs its callback; the I/O thread's reference
   is released by the caller of s_finish. value (may be NULL) is moved. */
static void
s_finish(tq_result_t *r, int state, int code, const char *error,
         size_t error_len, zmq_msg_t *value)
{
    char *text = error && error_len ? strndup(error, error_len) : NULL;
    pthread_mutex_lock(&r->mutex);
    if (r->final) {
        pthread_mutex_unlock(&r->mutex);
        free(text);
        if (value)
            zmq_msg_close(value), zmq_msg_init(value);
        return;
    }
    r->state = state;
    r->code = code;
    free(r->error);
    r->error = text;
    if (value)
        zmq_msg_move(&r->value, value);
    r->final = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mutex);
    /* callbacks run without the lock so they may call tq_result_*, and
       before ready turns true, as in Python's Pool: once get() returns, the
       callback's side effects are visible */
    s_in_callback = r;
    if (code == TQ_OK && r->callback)
        r->callback(r, r->callback_arg);
    else if (code != TQ_OK && r->error_callback)
        r->error_callback(r, r->callback_arg);
    s_in_callback = NULL;
    pthread_mutex_lock(&r->mutex);
    r->ready = true;
    r->answered = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mutex);
}

static void
s_finish_text(tq_result_t *r, int code, const char *text)
{
    s_finish(r, TQ_STATE_FAILURE, code, text, text ? strlen(text) : 0, NULL);
}

static int64_t
s_deadline(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : zclock_mono() + timeout_ms;
}

/* Waits on r->cond until *flag or the deadline (-1: none); r->mutex held. */
static bool
s_wait_flag(tq_result_t *r, const bool *flag, int64_t deadline)
{
    while (!*flag) {
        if (deadline < 0) {
            pthread_cond_wait(&r->cond, &r->mutex);
            continue;
        }
        int64_t left = deadline - zclock_mono();
        if (left <= 0)
            return false;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += left / 1000;
        ts.tv_nsec += (left % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L)
            ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&r->cond, &r->mutex, &ts);
    }
    return true;
}

static int
s_result_wait_until(tq_result_t *self, int64_t deadline)
{
    pthread_mutex_lock(&self->mutex);
    const bool *flag = s_in_callback == self ? &self->final : &self->ready;
    bool ok = s_wait_flag(self, flag, deadline);
    pthread_mutex_unlock(&self->mutex);
    return ok ? TQ_OK : TQ_ETIMEDOUT;
}

int
tq_result_wait(tq_result_t *self, int timeout_ms)
{
    assert(self);
    return s_result_wait_until(self, s_deadline(timeout_ms));
}

/* A submission that a get waited on in vain: if no connected worker
   provides its task on its queue, the handle's error text says so (once:
   one STATUS per handle). Not from a callback: those run on the I/O
   thread, which the STATUS needs. */
static void
s_check_unserved(tq_result_t *self)
{
    if (self->kind != S_KIND_SUBMIT || !self->names || !self->client ||
        s_in_callback)
        return;
    pthread_mutex_lock(&self->mutex);
    bool check = !self->unserved_checked && self->state == TQ_STATE_PENDING;
    self->unserved_checked = true;
    pthread_mutex_unlock(&self->mutex);
    if (!check)
        return;
    const char *task = self->names;
    const char *queue = task + strlen(task) + 1;
    if (tq_client_provided(self->client, task, queue, 1000) != 0)
        return;
    char text[2 * TQ_PROTO_MAX_NAME + 64];
    snprintf(text, sizeof text, "no connected worker provides %s (queue %s)",
             task, queue);
    pthread_mutex_lock(&self->mutex);
    if (!self->unserved)
        self->unserved = strdup(text);
    pthread_mutex_unlock(&self->mutex);
}

int
tq_result_get(tq_result_t *self, int timeout_ms)
{
    assert(self);
    if (tq_result_wait(self, timeout_ms) != TQ_OK) {
        s_check_unserved(self);
        return TQ_ETIMEDOUT;
    }
    return tq_result_code(self);
}

int
tq_result_wait_answer(tq_result_t *self, int timeout_ms)
{
    assert(self);
    pthread_mutex_lock(&self->mutex);
    bool ok = s_wait_flag(self, &self->answered, s_deadline(timeout_ms));
    pthread_mutex_unlock(&self->mutex);
    return ok ? TQ_OK : TQ_ETIMEDOUT;
}

bool
tq_result_answered(tq_result_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->mutex);
    bool answered = self->answered;
    pthread_mutex_unlock(&self->mutex);
    return answered;
}

bool
tq_result_ready(tq_result_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->mutex);
    bool ready = self->ready || (s_in_callback == self && self->final);
    pthread_mutex_unlock(&self->mutex);
    return ready;
}

bool
tq_result_successful(tq_result_t *self)
{
    return tq_result_code(self) == TQ_OK;
}

int
tq_result_code(tq_result_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->mutex);
    int code = self->final ? self->code : TQ_ETIMEDOUT;
    pthread_mutex_unlock(&self->mutex);
    return code;
}

int
tq_result_state(tq_result_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->mutex);
    int state = self->state;
    pthread_mutex_unlock(&self->mutex);
    return state;
}

const msgpack_object *
tq_result_value(tq_result_t *self)
{
    assert(self);
    const msgpack_object *obj = NULL;
    pthread_mutex_lock(&self->mutex);
    if (self->final && self->code == TQ_OK) {
        if (!self->unpacked_done) {
            /* unpacked once, on first use: a caller that only forwards the
               raw bytes never pays for it */
            msgpack_unpacked_init(&self->unpacked);
            size_t off = 0;
            self->unpacked_ok =
                msgpack_unpack_next(&self->unpacked,
                                    zmq_msg_data(&self->value),
                                    zmq_msg_size(&self->value), &off) ==
                MSGPACK_UNPACK_SUCCESS;
            self->unpacked_done = true;
        }
        if (self->unpacked_ok)
            obj = &self->unpacked.data;
    }
    pthread_mutex_unlock(&self->mutex);
    return obj;
}

const void *
tq_result_data(tq_result_t *self, size_t *size)
{
    assert(self);
    const void *data = NULL;
    pthread_mutex_lock(&self->mutex);
    if (self->final && self->code == TQ_OK) {
        data = zmq_msg_data(&self->value);
        if (size)
            *size = zmq_msg_size(&self->value);
    } else if (size)
        *size = 0;
    pthread_mutex_unlock(&self->mutex);
    return data;
}

const char *
tq_result_error(tq_result_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->mutex);
    const char *error = self->final && self->error ? self->error
                        : !self->final && self->unserved ? self->unserved
                                                         : "";
    pthread_mutex_unlock(&self->mutex);
    return error;
}

const char *
tq_result_id(tq_result_t *self)
{
    assert(self);
    return self->id;
}

uint32_t
tq_result_attempts(tq_result_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->mutex);
    uint32_t attempts = self->attempts;
    pthread_mutex_unlock(&self->mutex);
    return attempts;
}

void
tq_result_destroy(tq_result_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    s_result_unref(*self_p);
    *self_p = NULL;
}

/* ---- the I/O thread ----------------------------------------------------- */

static void
s_io_wait_add(s_io_t *io, tq_result_t *r)
{
    r->in_map = true;
    if (io->waiting++ == 0)
        io->waiting_since = zclock_mono();
    if (io->unacked++ == 0)
        io->unacked_since = zclock_mono();
}

static void
s_io_ack(s_io_t *io, tq_result_t *r)
{
    if (r->acked)
        return;
    r->acked = true;
    io->unacked--;
    if (r->kind == S_KIND_SUBMIT) {
        if (r->resent)
            /* the broker may have known the id before: its result then
               went to a connection that is gone, or went already */
            zlistx_add_end(io->regets, strdup(r->id));
        if (!r->queued) {
            /* never sent again: the broker has it */
            free(r->task), r->task = NULL;
            free(r->queue), r->queue = NULL;
            zmq_msg_close(&r->kept), zmq_msg_init(&r->kept);
        }
    }
    pthread_mutex_lock(&r->mutex);
    r->answered = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mutex);
}

/* Forgets a handle the I/O thread no longer waits on: drops its ref. */
static void
s_io_release(s_io_t *io, tq_result_t *r)
{
    if (!r->acked)
        r->acked = true, io->unacked--;
    r->in_map = false;
    io->waiting--;
    s_result_unref(r);
}

static void
s_io_enqueue_out(s_io_t *io, tq_result_t *r)
{
    atomic_fetch_add(&r->refs, 1); /* the outbound list's own reference */
    r->queued = true;
    r->next = NULL;
    if (io->out_tail)
        io->out_tail->next = r;
    else
        io->out_head = r;
    io->out_tail = r;
}

/* Registers a request taken from the submission queue. */
static void s_io_terminate(s_io_t *io, tq_result_t *r);

static void
s_io_accept(s_io_t *io, tq_result_t *r)
{
    if (r->kind == S_KIND_TERMINATE) {
        s_io_terminate(io, r);
        return;
    }
    if (S_KIND_IS_FIFO(r->kind)) {
        r->next_same = NULL;
        if (io->status_tail)
            io->status_tail->next_same = r;
        else
            io->status_head = r;
        io->status_tail = r;
    } else {
        tq_result_t *head = zhashx_lookup(io->pending, r->id);
        if (head) {
            while (head->next_same)
                head = head->next_same;
            head->next_same = r;
        } else
            zhashx_insert(io->pending, r->id, r);
        r->next_same = NULL;
    }
    s_io_wait_add(io, r);
    s_io_enqueue_out(io, r);
}

/* Sends one request; TQ_OK, or -1 with errno EAGAIN to retry later. Any other
   failure completes the request with an error. */
static int
s_io_send(s_io_t *io, tq_result_t *r)
{
    tq_msg_t *m = &io->out;
    zmq_msg_t *payload = NULL;
    m->id = tq_str(r->id);
    switch (r->kind) {
    case S_KIND_SUBMIT:
        m->command = TQ_CMD_SUBMIT;
        m->task = tq_str(r->task);
        m->queue = tq_str(r->queue);
        m->priority = r->priority;
        m->time_limit_ms = r->time_limit_ms;
        m->retries = r->retries;
        m->backoff_ms = r->backoff_ms;
        m->delay_ms = r->delay_ms;
        /* kept stays until SUBMITTED: a resend (TQ_EFULL, reconnect)
           sends it again */
        zmq_msg_copy(&r->args, &r->kept);
        payload = &r->args;
        break;
    case S_KIND_GET:
        m->command = TQ_CMD_GET;
        m->wait = r->wait;
        break;
    case S_KIND_STATUS:
        m->command = TQ_CMD_STATUS;
        break;
    case S_KIND_CANCEL:
        m->command = TQ_CMD_CANCEL;
        break;
    case S_KIND_RETRY:
        m->command = TQ_CMD_RETRY;
        break;
    case S_KIND_PURGE:
        m->command = TQ_CMD_PURGE;
        m->queue = tq_str(r->queue);
        m->id = tq_str(NULL); /* id? is nil: answered in order (REPLY) */
        break;
    case S_KIND_FAILED:
        m->command = TQ_CMD_FAILED;
        m->id = tq_str(NULL);
        break;
    case S_KIND_QPUT:
        m->command = TQ_CMD_QPUT;
        m->queue = tq_str(r->queue);
        m->maxsize = r->maxsize;
        payload = &r->args;
        break;
    case S_KIND_QGET:
        m->command = TQ_CMD_QGET;
        m->queue = tq_str(r->queue);
        m->time_limit_ms = r->time_limit_ms;
        break;
    case S_KIND_QSIZE:
        m->command = TQ_CMD_QSIZE;
        m->queue = tq_str(r->queue);
        break;
    case S_KIND_TERMINATE:
        assert(false); /* handled when accepted, never sent */
        break;
    }
    int rc = tq_wire_send_msg(io->client->socket, NULL, m, &io->buf, payload,
                              ZMQ_DONTWAIT);
    if (rc == -1 && (errno == EAGAIN || errno == EINTR)) {
        errno = EAGAIN;
        return -1;
    }
    if (rc != TQ_OK) {
        /* invalid fields were refused before queueing; this is a socket
           failure (ETERM): the request cannot go out */
        s_finish_text(r, rc == TQ_EINVAL ? TQ_EINVAL : TQ_ECLOSED,
                      "cannot send the request to the broker");
        return TQ_OK;
    }
    if (r->kind != S_KIND_SUBMIT) {
        /* a SUBMIT may be sent again until acknowledged; others never */
        free(r->task), r->task = NULL;
        free(r->queue), r->queue = NULL;
    }
    r->epoch = io->epoch;
    r->sent_ms = zclock_mono();
    return TQ_OK;
}

/* Sends what libzmq will take now; the rest waits for POLLOUT. */
static void
s_io_flush(s_io_t *io)
{
    while (io->out_head) {
        tq_result_t *r = io->out_head;
        pthread_mutex_lock(&r->mutex);
        bool final = r->final; /* failed while it waited */
        pthread_mutex_unlock(&r->mutex);
        /* a SUBMIT queued to be sent again may have been acknowledged by
           the first send meanwhile */
        bool skip = final || (r->kind == S_KIND_SUBMIT && r->acked);
        if (!skip && s_io_send(io, r) != TQ_OK)
            return;
        io->out_head = r->next;
        if (!io->out_head)
            io->out_tail = NULL;
        r->next = NULL;
        r->queued = false;
        s_result_unref(r);
    }
    /* after a broker came back: GET wait=true for results still awaited */
    while (zlistx_size(io->regets)) {
        const char *id = zlistx_first(io->regets);
        memset(&io->out, 0, sizeof io->out);
        io->out.command = TQ_CMD_GET;
        io->out.id = tq_str(id);
        io->out.wait = true;
        int rc = tq_wire_send_msg(io->client->socket, NULL, &io->out,
                                  &io->buf, NULL, ZMQ_DONTWAIT);
        if (rc == -1 && (errno == EAGAIN || errno == EINTR))
            return;
        zlistx_delete(io->regets, zlistx_cursor(io->regets));
    }
}

/* Removes r from the chain of its id (the map entry goes with the last). */
static void
s_io_unlink(s_io_t *io, tq_result_t *r)
{
    tq_result_t *head = zhashx_lookup(io->pending, r->id);
    tq_result_t **pp = &head;
    while (*pp && *pp != r)
        pp = &(*pp)->next_same;
    if (!*pp)
        return;
    *pp = r->next_same;
    r->next_same = NULL;
    if (head)
        zhashx_update(io->pending, r->id, head);
    else
        zhashx_delete(io->pending, r->id);
}

/* Puts a chain (possibly NULL) back under key. */
static void
s_io_rechain(s_io_t *io, const char *key, tq_result_t *keep)
{
    if (keep)
        zhashx_insert(io->pending, key, keep);
}

/* A SUBMIT refused with TQ_EFULL that the caller wants to block: sent again
   after 50 ms, doubling up to 1 s. The list holds its own reference. */
static void
s_io_defer(s_io_t *io, tq_result_t *r)
{
    if (r->deferred)
        return;
    r->full_delay_ms = r->full_delay_ms == 0 ? S_FULL_RETRY_MIN_MS
                                             : r->full_delay_ms * 2;
    if (r->full_delay_ms > S_FULL_RETRY_MAX_MS)
        r->full_delay_ms = S_FULL_RETRY_MAX_MS;
    r->resend_at = zclock_mono() + r->full_delay_ms;
    atomic_fetch_add(&r->refs, 1);
    r->deferred = true;
    r->next_deferred = io->deferred;
    io->deferred = r;
}

/* Resends the deferred SUBMITs whose time has come; drops those the caller
   let go. Returns the next resend time, or -1 for none. */
static int64_t
s_io_deferred(s_io_t *io, int64_t now)
{
    int64_t next = -1;
    tq_result_t **pp = &io->deferred;
    while (*pp) {
        tq_result_t *r = *pp;
        pthread_mutex_lock(&r->mutex);
        bool final = r->final;
        pthread_mutex_unlock(&r->mutex);
        /* caller gone: only the I/O thread's and the list's references */
        bool orphan = !final && atomic_load(&r->refs) <= 2;
        if (final || orphan || now >= r->resend_at) {
            *pp = r->next_deferred;
            r->next_deferred = NULL;
            r->deferred = false;
            if (orphan) {
                s_io_unlink(io, r);
                s_finish_text(r, TQ_ECLOSED, "the handle was destroyed");
                s_io_release(io, r);
            } else if (!final)
                s_io_enqueue_out(io, r);
            s_result_unref(r);
            continue;
        }
        if (next < 0 || r->resend_at < next)
            next = r->resend_at;
        pp = &r->next_deferred;
    }
    return next;
}

/* Cancels every task the client still waits on; r (TERMINATE) ends with
   count = the CANCEL requests made. */
static void
s_io_terminate(s_io_t *io, tq_result_t *r)
{
    zlistx_t *ids = zlistx_new();
    assert(ids);
    zlistx_set_destructor(ids, (zlistx_destructor_fn *)zstr_free);
    for (tq_result_t *head = zhashx_first(io->pending); head;
         head = zhashx_next(io->pending))
        for (tq_result_t *h = head; h; h = h->next_same) {
            if (h->kind != S_KIND_SUBMIT &&
                !(h->kind == S_KIND_GET && h->wait))
                continue;
            pthread_mutex_lock(&h->mutex);
            bool final = h->final;
            pthread_mutex_unlock(&h->mutex);
            if (!final) {
                zlistx_add_end(ids, strdup(h->id));
                break;
            }
        }
    int count = 0;
    for (char *id = zlistx_first(ids); id; id = zlistx_next(ids)) {
        tq_result_t *c = s_result_new(S_KIND_CANCEL);
        if (!c)
            break;
        atomic_store(&c->refs, 1); /* nobody but the I/O thread holds it */
        snprintf(c->id, sizeof c->id, "%s", id);
        s_io_accept(io, c);
        count++;
    }
    zlistx_destroy(&ids);
    r->count = count;
    s_finish(r, TQ_STATE_SUCCESS, TQ_OK, NULL, 0, NULL);
    s_result_unref(r);
}

/* Why requests are looked at again (s_io_resend). */
typedef enum {
    S_BROKE,     /* the connection broke: fail what cannot be sent again */
    S_CONNECTED, /* a new connection: send SUBMIT and GET again */
    S_STALE,     /* the broker talks but a SUBMIT went unanswered for the
                    liveness: send it again */
} s_resend_t;

/* A request sent over a connection that broke may never have arrived, and
   its answer would go to a peer that is gone; one written while the old
   connection was being torn down is lost too. So: at the break, requests
   that are not idempotent or are answered in order (CANCEL, RETRY, PURGE,
   FAILED, STATUS, data queues) end TQ_EUNREACHABLE, as the broker may or
   may not have carried them out; once a new connection is up, SUBMIT (ids
   make it idempotent, PROTOCOL.md 5.1 item 3) and GET sent before it are
   sent again. S_STALE sends again a SUBMIT sent before `before` (ms) that
   is still unanswered. Returns how many were sent again. */
static size_t
s_io_resend(s_io_t *io, s_resend_t why, int64_t before)
{
    size_t resent = 0;
    zlistx_t *failed = zlistx_new();
    assert(failed);
    for (tq_result_t *head = zhashx_first(io->pending); head;
         head = zhashx_next(io->pending))
        for (tq_result_t *h = head; h; h = h->next_same) {
            if (h->acked || h->queued || h->deferred)
                continue;
            if (why == S_STALE ? h->kind != S_KIND_SUBMIT || h->sent_ms > before
                               : h->epoch >= io->epoch)
                continue;
            pthread_mutex_lock(&h->mutex);
            bool final = h->final;
            pthread_mutex_unlock(&h->mutex);
            if (final)
                continue;
            bool idempotent =
                h->kind == S_KIND_SUBMIT || h->kind == S_KIND_GET;
            if (idempotent && why != S_BROKE) {
                h->resent = h->kind == S_KIND_SUBMIT;
                s_io_enqueue_out(io, h);
                resent++;
            } else if (!idempotent && why == S_BROKE)
                zlistx_add_end(failed, h);
        }
    const char *text = "the connection to the broker broke before it "
                       "answered (the request may have been carried out)";
    for (tq_result_t *h = zlistx_first(failed); h; h = zlistx_next(failed)) {
        s_io_unlink(io, h);
        s_finish_text(h, TQ_EUNREACHABLE, text);
        s_io_release(io, h);
    }
    zlistx_destroy(&failed);
    /* id-less requests are answered in order: one whose answer the broken
       connection lost would take the answer of the next */
    tq_result_t **pp = &io->status_head;
    while (why == S_BROKE && *pp) {
        tq_result_t *r = *pp;
        if (r->queued || r->epoch >= io->epoch) {
            pp = &r->next_same;
            continue;
        }
        *pp = r->next_same;
        r->next_same = NULL;
        s_finish_text(r, TQ_EUNREACHABLE, text);
        s_io_release(io, r);
    }
    io->status_tail = NULL;
    for (tq_result_t *r = io->status_head; r; r = r->next_same)
        io->status_tail = r;
    io->resent += resent;
    return resent;
}

/* The broker answers again after a silence: ask again for every result we
   still wait on that it had acknowledged (it may be a restarted broker that
   never heard of our GETs). */
static void
s_io_reattach(s_io_t *io)
{
    size_t n = 0;
    for (tq_result_t *head = zhashx_first(io->pending); head;
         head = zhashx_next(io->pending))
        for (tq_result_t *h = head; h; h = h->next_same) {
            pthread_mutex_lock(&h->mutex);
            bool final = h->final;
            pthread_mutex_unlock(&h->mutex);
            if (!final && h->acked &&
                (h->kind == S_KIND_SUBMIT ||
                 (h->kind == S_KIND_GET && h->wait))) {
                zlistx_add_end(io->regets, strdup(h->id));
                n++;
                break;
            }
        }
    zsys_info("tq client: broker at %s answers again, asking again for %zu "
              "result(s)",
              io->client->endpoint, n);
}

/* Unlinks the chain of handles waiting on id; NULL if none. */
static tq_result_t *
s_io_take_chain(s_io_t *io, tq_str_t id)
{
    char key[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(key, sizeof key, id);
    tq_result_t *head = zhashx_lookup(io->pending, key);
    if (head)
        zhashx_delete(io->pending, key);
    return head;
}

static tq_result_t *
s_io_chain(s_io_t *io, tq_str_t id)
{
    char key[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(key, sizeof key, id);
    return zhashx_lookup(io->pending, key);
}

/* Completes every handle of a taken chain. value is moved to the first and
   copied (refcounted by libzmq) to the others. */
static void
s_io_finish_chain(s_io_t *io, tq_result_t *head, int state, int code,
                  tq_str_t error, zmq_msg_t *value)
{
    zmq_msg_t copy;
    while (head) {
        tq_result_t *next = head->next_same;
        head->next_same = NULL;
        zmq_msg_t *v = NULL;
        if (value) {
            zmq_msg_init(&copy);
            if (next)
                zmq_msg_copy(&copy, value);
            else
                zmq_msg_move(&copy, value);
            v = &copy;
        }
        s_finish(head, state, code, error.ptr, error.len, v);
        if (v)
            zmq_msg_close(v);
        s_io_release(io, head);
        head = next;
    }
}

static void
s_io_log_bad(s_io_t *io, const char *what, const char *reason)
{
    io->malformed++;
    zsys_warning("tq client: dropped %s from broker at %s: %s", what,
                 io->client->endpoint, reason ? reason : "?");
}

static void
s_on_result(s_io_t *io, const tq_msg_t *m, zmq_msg_t *payload)
{
    tq_result_t *head = s_io_take_chain(io, m->id);
    if (!head)
        return; /* nobody waits any more (failed as unreachable, say) */
    for (tq_result_t *h = head; h; h = h->next_same) {
        pthread_mutex_lock(&h->mutex);
        if (!h->final)
            h->attempts = m->attempt;
        pthread_mutex_unlock(&h->mutex);
    }
    int code = m->code;
    if (m->state == TQ_STATE_SUCCESS)
        code = TQ_OK;
    else if (code == TQ_OK)
        /* a non-success without a reason still must not read as success */
        code = m->state == TQ_STATE_CANCELLED ? TQ_ECANCELLED : TQ_ETASK;
    if (m->state == TQ_STATE_SUCCESS &&
        tq_proto_check_payload(zmq_msg_data(payload), zmq_msg_size(payload),
                               false, NULL) != TQ_OK) {
        s_io_log_bad(io, "RESULT", "the value is not one msgpack object");
        s_io_finish_chain(io, head, TQ_STATE_FAILURE, TQ_EPROTO,
                          tq_str("broker sent a malformed result value"),
                          NULL);
        return;
    }
    int state = TQ_STATE_IS_FINAL(m->state) ? (int)m->state
                                            : TQ_STATE_FAILURE;
    s_io_finish_chain(io, head, state, code, m->error,
                      code == TQ_OK ? payload : NULL);
}

static void
s_on_submitted(s_io_t *io, const tq_msg_t *m)
{
    bool retry = false;
    for (tq_result_t *r = s_io_chain(io, m->id); r; r = r->next_same) {
        if (r->kind == S_KIND_SUBMIT) {
            s_io_ack(io, r);
            r->full_delay_ms = 0;
        }
        retry |= r->kind == S_KIND_RETRY;
    }
    if (!retry)
        return;
    /* RETRY is answered by SUBMITTED: the dead letter runs again */
    char key[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(key, sizeof key, m->id);
    tq_result_t *head = s_io_take_chain(io, m->id), *keep = NULL;
    tq_result_t **tail = &keep;
    while (head) {
        tq_result_t *next = head->next_same;
        head->next_same = NULL;
        if (head->kind == S_KIND_RETRY) {
            s_finish(head, TQ_STATE_PENDING, TQ_OK, NULL, 0, NULL);
            s_io_release(io, head);
        } else {
            *tail = head;
            tail = &head->next_same;
        }
        head = next;
    }
    s_io_rechain(io, key, keep);
}

static void
s_on_state(s_io_t *io, const tq_msg_t *m)
{
    tq_result_t *head = s_io_take_chain(io, m->id);
    tq_result_t *keep = NULL, *keep_tail = NULL;
    while (head) {
        tq_result_t *next = head->next_same;
        head->next_same = NULL;
        pthread_mutex_lock(&head->mutex);
        if (!head->final)
            head->state = m->state;
        pthread_mutex_unlock(&head->mutex);
        if (head->kind == S_KIND_GET && !head->wait) {
            /* a GET without wait is answered: nothing more will come */
            s_io_ack(io, head);
            s_io_release(io, head);
        } else {
            if (keep_tail)
                keep_tail->next_same = head;
            else
                keep = head;
            keep_tail = head;
        }
        head = next;
    }
    if (keep) {
        char key[TQ_PROTO_MAX_ID + 1];
        tq_str_copy(key, sizeof key, m->id);
        zhashx_insert(io->pending, key, keep);
    }
}

static void
s_on_status_reply(s_io_t *io, zmq_msg_t *payload)
{
    tq_result_t *r = io->status_head;
    if (!r)
        return;
    io->status_head = r->next_same;
    if (!io->status_head)
        io->status_tail = NULL;
    r->next_same = NULL;
    s_finish(r, TQ_STATE_SUCCESS, TQ_OK, NULL, 0, payload);
    s_io_release(io, r);
}

static void
s_on_error(s_io_t *io, const tq_msg_t *m)
{
    int code = m->code == TQ_OK ? TQ_EPROTO : (int)m->code;
    if (m->id.ptr) {
        tq_result_t *head = s_io_take_chain(io, m->id);
        if (head) {
            /* one id may have a SUBMIT, GETs and operator requests waiting:
               TQ_ESTATE answers a RETRY, TQ_EFULL a SUBMIT that may block */
            bool retry = false;
            for (tq_result_t *h = head; h; h = h->next_same)
                retry |= h->kind == S_KIND_RETRY;
            char key[TQ_PROTO_MAX_ID + 1];
            tq_str_copy(key, sizeof key, m->id);
            tq_result_t *keep = NULL, **tail = &keep;
            while (head) {
                tq_result_t *next = head->next_same;
                head->next_same = NULL;
                bool hold = false;
                if (code == TQ_EFULL && head->kind == S_KIND_SUBMIT &&
                    head->block_when_full && !head->acked) {
                    s_io_defer(io, head);
                    hold = true;
                } else if (retry && code == TQ_ESTATE &&
                           head->kind != S_KIND_RETRY)
                    hold = true;
                if (hold) {
                    *tail = head;
                    tail = &head->next_same;
                } else {
                    s_finish(head, TQ_STATE_FAILURE, code, m->error.ptr,
                             m->error.len, NULL);
                    s_io_release(io, head);
                }
                head = next;
            }
            s_io_rechain(io, key, keep);
            return;
        }
    } else if (io->status_head) {
        /* STATUS is the only request without an id that expects an answer,
           so an ERROR without an id answers the oldest one */
        tq_result_t *r = io->status_head;
        io->status_head = r->next_same;
        if (!io->status_head)
            io->status_tail = NULL;
        r->next_same = NULL;
        s_finish(r, TQ_STATE_FAILURE, code, m->error.ptr, m->error.len,
                 NULL);
        s_io_release(io, r);
        return;
    }
    char text[TQ_PROTO_MAX_ERROR + 1];
    tq_str_copy(text, sizeof text, m->error);
    zsys_warning("tq client: broker at %s: error %d (%s): %s",
                 io->client->endpoint, code, tq_strerror(code), text);
}

static void
s_io_send_simple(s_io_t *io, uint8_t command)
{
    io->out.command = command;
    /* best effort: a PING or PONG that cannot go out now is not queued, the
       liveness check covers it */
    tq_wire_send_msg(io->client->socket, NULL, &io->out, &io->buf, NULL,
                     ZMQ_DONTWAIT);
}

static void
s_io_dispatch(s_io_t *io)
{
    const char *reason = NULL;
    int rc = tq_wire_decode(&io->frames, &io->msg, &reason);
    if (rc != TQ_OK) {
        s_io_log_bad(io, "message", reason);
        return;
    }
    tq_msg_t *m = &io->msg;
    switch (m->command) {
    case TQ_CMD_SUBMITTED:
        s_on_submitted(io, m);
        break;
    case TQ_CMD_RESULT:
        s_on_result(io, m, &io->frames.payload);
        break;
    case TQ_CMD_STATE:
        s_on_state(io, m);
        break;
    case TQ_CMD_UNKNOWN: {
        tq_result_t *head = s_io_take_chain(io, m->id);
        if (head)
            s_io_finish_chain(io, head, TQ_STATE_FAILURE, TQ_EUNKNOWN,
                              tq_str("the broker does not know this task id"),
                              NULL);
        break;
    }
    case TQ_CMD_REPLY:
    case TQ_CMD_QITEM:
        if (m->id.ptr) {
            /* the answer to a data-queue request, by its request id */
            tq_result_t *head = s_io_take_chain(io, m->id);
            if (head)
                s_io_finish_chain(io, head, TQ_STATE_SUCCESS, TQ_OK,
                                  tq_str(NULL), &io->frames.payload);
            break;
        }
        if (m->command == TQ_CMD_QITEM) {
            s_io_log_bad(io, "QITEM", "no request id");
            break;
        }
        s_on_status_reply(io, &io->frames.payload);
        break;
    case TQ_CMD_STATUS_REPLY:
        /* answers the oldest id-less request */
        s_on_status_reply(io, &io->frames.payload);
        break;
    case TQ_CMD_PING:
        s_io_send_simple(io, TQ_CMD_PONG);
        break;
    case TQ_CMD_PONG:
        io->pong_for = io->last_ping;
        break;
    case TQ_CMD_ERROR:
        s_on_error(io, m);
        break;
    default:
        s_io_log_bad(io, tq_proto_command_name(m->command),
                     "not a broker-to-client command");
        break;
    }
}

/* Reads and handles up to a batch of messages; returns how many. */
static int
s_io_recv(s_io_t *io)
{
    int i;
    for (i = 0; i < S_RECV_BATCH; i++) {
        int rc = tq_wire_recv(io->client->socket, &io->frames, false,
                              ZMQ_DONTWAIT);
        if (rc == -1)
            break;
        /* any message, even a bad one, shows the broker is alive */
        io->last_heard = zclock_mono();
        if (io->broker_lost) {
            io->broker_lost = false;
            s_io_reattach(io);
        }
        if (rc == TQ_OK)
            s_io_dispatch(io);
        else
            s_io_log_bad(io, "message", "wrong number of frames");
    }
    return i;
}

/* Takes every request that callers queued. */
static void
s_io_take_queue(s_io_t *io)
{
    uint64_t n;
    if (read(io->client->wake_fd, &n, sizeof n) < 0 && errno != EAGAIN)
        zsys_warning("tq client: eventfd read: %s", strerror(errno));
    tq_client_t *c = io->client;
    pthread_mutex_lock(&c->lock);
    tq_result_t *r = c->queue_head;
    c->queue_head = c->queue_tail = NULL;
    pthread_mutex_unlock(&c->lock);
    while (r) {
        tq_result_t *next = r->next;
        r->next = NULL;
        s_io_accept(io, r);
        r = next;
    }
}

/* Fails every handle for which pred holds, with code and text. */
static void
s_io_fail(s_io_t *io, bool only_unacked, int code, const char *text)
{
    zlistx_t *empty = zlistx_new();
    for (tq_result_t *head = zhashx_first(io->pending); head;
         head = zhashx_next(io->pending)) {
        tq_result_t *keep = NULL, **tail = &keep;
        tq_result_t *r = head;
        while (r) {
            tq_result_t *next = r->next_same;
            r->next_same = NULL;
            if (!only_unacked || !r->acked) {
                s_finish_text(r, code, text);
                s_io_release(io, r);
            } else {
                *tail = r;
                tail = &r->next_same;
            }
            r = next;
        }
        if (keep)
            zhashx_update(io->pending, zhashx_cursor(io->pending), keep);
        else
            zlistx_add_end(empty, (void *)zhashx_cursor(io->pending));
    }
    /* the keys belong to the hash: delete them only after the walk, and
       each delete frees the key we hold a pointer to, so copy first */
    char key[TQ_PROTO_MAX_ID + 1];
    for (const char *k = zlistx_first(empty); k; k = zlistx_next(empty)) {
        snprintf(key, sizeof key, "%s", k);
        zhashx_delete(io->pending, key);
    }
    zlistx_destroy(&empty);
    while (io->status_head) {
        tq_result_t *r = io->status_head;
        io->status_head = r->next_same;
        r->next_same = NULL;
        s_finish_text(r, code, text);
        s_io_release(io, r);
    }
    io->status_tail = NULL;
}

static bool
s_io_input_waiting(s_io_t *io)
{
    int events = 0;
    size_t size = sizeof events;
    return zmq_getsockopt(io->client->socket, ZMQ_EVENTS, &events, &size) ==
               0 &&
           (events & ZMQ_POLLIN);
}

/* Returns the poll timeout, after sending a PING or failing unacknowledged
   requests when their time has come (PROTOCOL.md section 10). */
static long
s_io_liveness(s_io_t *io)
{
    if (io->waiting == 0)
        return -1;
    int64_t live = atomic_load(&io->client->liveness_ms);
    int64_t now = zclock_mono();
    int64_t resend = s_io_deferred(io, now);
    int64_t heard_from =
        io->last_heard > io->waiting_since ? io->last_heard : io->waiting_since;
    if (!io->broker_lost && now - heard_from >= live) {
        io->broker_lost = true;
        zsys_warning("tq client: broker at %s silent for %.1f s",
                     io->client->endpoint, (double)live / 1000.0);
    }
    int64_t silent_from = io->last_heard;
    if (io->unacked && io->unacked_since > silent_from)
        silent_from = io->unacked_since;
    if (io->unacked && now - silent_from >= live && s_io_input_waiting(io)) {
        /* answers are queued but this thread was too busy to read them:
           the broker is not silent */
        io->last_heard = silent_from = now;
    }
    if (io->unacked && now - silent_from >= live) {
        char text[512];
        /* a CURVE broker drops a handshake it cannot or will not take
           without a word: say what to check */
        int mechanism = ZMQ_NULL;
        size_t size = sizeof mechanism;
        zmq_getsockopt(io->client->socket, ZMQ_MECHANISM, &mechanism, &size);
        snprintf(text, sizeof text,
                 "broker unreachable at %s (no answer in %.1f s)%s",
                 io->client->endpoint, (double)live / 1000.0,
                 mechanism == ZMQ_CURVE
                     ? "; with CURVE, check that the broker allows this "
                       "client's key and that TQ_CURVE_SERVER_KEY is its key"
                     : "; if the broker uses CURVE, set TQ_CURVE_SERVER_KEY "
                       "and TQ_CURVE_CERT");
        s_io_fail(io, true, TQ_EUNREACHABLE, text);
        if (io->waiting == 0)
            return -1;
    }
    if (io->unacked && io->pong_for && now - io->unacked_since >= live &&
        now - io->last_stale_check >= live / 3) {
        /* the broker answered a PING sent after a SUBMIT (so it read the
           SUBMIT: one connection keeps order), yet the SUBMIT has had no
           answer for the liveness: it was lost on the way, or its answer
           was. A busy broker is not asked twice: PINGs go out only when
           nothing is heard for a third of the liveness. */
        io->last_stale_check = now;
        int64_t before = now - live < io->pong_for - 1 ? now - live
                                                        : io->pong_for - 1;
        size_t n = s_io_resend(io, S_STALE, before);
        if (n)
            zsys_info("tq client: broker at %s answers but not %zu "
                      "submission(s) for %.1f s: sending them again",
                      io->client->endpoint, n, (double)live / 1000.0);
    }
    int64_t quiet_from =
        io->last_heard > io->last_ping ? io->last_heard : io->last_ping;
    if (io->unacked_since > quiet_from && io->unacked)
        quiet_from = io->unacked_since;
    if (now - quiet_from >= live / 3) {
        s_io_send_simple(io, TQ_CMD_PING);
        io->last_ping = now;
        quiet_from = now;
    }
    int64_t next = quiet_from + live / 3;
    if (io->unacked && silent_from + live < next)
        next = silent_from + live;
    if (resend >= 0 && resend < next)
        next = resend;
    return next > now ? (long)(next - now) : 0;
}

/* Reads one socket-monitor event: a connection made after the first one
   may lead to a new broker, which must hear our GETs again. */
static void
s_io_monitor(s_io_t *io)
{
    zmq_msg_t frame;
    zmq_msg_init(&frame);
    if (zmq_msg_recv(&frame, io->monitor, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&frame);
        return;
    }
    uint16_t event = 0;
    if (zmq_msg_size(&frame) >= 2)
        memcpy(&event, zmq_msg_data(&frame), 2);
    while (zmq_msg_more(&frame) &&
           zmq_msg_recv(&frame, io->monitor, ZMQ_DONTWAIT) >= 0)
        ; /* the endpoint frame */
    zmq_msg_close(&frame);
    if (event == ZMQ_EVENT_DISCONNECTED) {
        /* the first CONNECTED may predate our monitor: a disconnect proves
           there was a connection */
        io->connected_once = true;
        /* answers that came before the break count: read them first */
        while (s_io_recv(io) == S_RECV_BATCH)
            ;
        io->epoch++;
        s_io_resend(io, S_BROKE, 0);
        return;
    }
    if (event != ZMQ_EVENT_CONNECTED)
        return;
    if (io->connected_once) {
        io->broker_lost = false;
        io->last_heard = zclock_mono();
        /* everything sent before now may have gone to the old connection
           (some of it possibly after the break, into a pipe being torn
           down); what went to the new one is sent twice, which idempotent
           requests allow */
        io->epoch++;
        size_t n = s_io_resend(io, S_CONNECTED, 0);
        if (n)
            zsys_info("tq client: connected to %s again, sending %zu "
                      "unanswered request(s) again",
                      io->client->endpoint, n);
        s_io_reattach(io);
    }
    io->connected_once = true;
}

static void
s_actor(zsock_t *pipe, void *args)
{
    s_io_t *io = calloc(1, sizeof *io);
    assert(io);
    io->client = args;
    io->pending = zhashx_new();
    assert(io->pending);
    io->regets = zlistx_new();
    assert(io->regets);
    zlistx_set_destructor(io->regets, (zlistx_destructor_fn *)zstr_free);
    tq_frames_init(&io->frames);
    msgpack_sbuffer_init(&io->buf);
    io->last_heard = io->last_ping = zclock_mono();
    zsock_signal(pipe, 0);

    /* a broker restarted faster than our liveness is only seen as a new
       connection: the socket monitor tells us */
    io->monitor = io->client->monitor_reader;
    zmq_pollitem_t items[4] = {
        {zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
        {io->client->socket, 0, ZMQ_POLLIN, 0},
        {NULL, io->client->wake_fd, ZMQ_POLLIN, 0},
        {io->monitor, 0, ZMQ_POLLIN, 0},
    };
    bool running = true;
    while (running) {
        long timeout = s_io_liveness(io);
        items[1].events =
            ZMQ_POLLIN |
            (io->out_head || zlistx_size(io->regets) ? ZMQ_POLLOUT : 0);
        if (zmq_poll(items, io->monitor ? 4 : 3, timeout) < 0) {
            if (errno == EINTR)
                continue;
            break; /* ETERM: the context is going away */
        }
        if (items[0].revents & ZMQ_POLLIN) {
            char *command = zstr_recv(pipe);
            if (!command || streq(command, "$TERM"))
                running = false;
            zstr_free(&command);
        }
        if (items[2].revents & ZMQ_POLLIN)
            s_io_take_queue(io);
        if (io->monitor && (items[3].revents & ZMQ_POLLIN))
            s_io_monitor(io);
        if (items[1].revents & ZMQ_POLLIN)
            (void)s_io_recv(io);
        s_io_flush(io);
    }

    /* pending handles end now; requests queued after this are failed by
       tq_client_destroy */
    s_io_take_queue(io);
    s_io_fail(io, false, TQ_ECLOSED, "the client was closed");
    while (io->out_head) {
        tq_result_t *r = io->out_head;
        io->out_head = r->next;
        s_result_unref(r);
    }
    while (io->deferred) {
        tq_result_t *r = io->deferred;
        io->deferred = r->next_deferred;
        s_result_unref(r);
    }
    zlistx_destroy(&io->regets);
    /* Stop the monitor before its reader goes: libzmq sends monitor events
       with a blocking send, so an event (a disconnect, say) for a PAIR
       nobody reads would block libzmq's I/O thread, and with it the close
       of the DEALER, for ever. */
    zmq_socket_monitor(io->client->socket, NULL, 0);
    if (io->monitor)
        zmq_close(io->monitor);
    zhashx_destroy(&io->pending);
    tq_frames_close(&io->frames);
    msgpack_sbuffer_destroy(&io->buf);
    free(io);
}

/* ---- the client --------------------------------------------------------- */

static pthread_once_t s_signals_once = PTHREAD_ONCE_INIT;

static void
s_leave_signals_alone(void)
{
    /* ZSYS_SIGHANDLER=true in the environment restores czmq's default */
    const char *env = getenv("ZSYS_SIGHANDLER");
    if (!env || strcmp(env, "true") != 0)
        zsys_handler_set(NULL);
}

/* Every client not yet destroyed, so that exit() can stop them first. */
static pthread_mutex_t s_live_lock = PTHREAD_MUTEX_INITIALIZER;
static tq_client_t *s_live;
static pthread_once_t s_exit_once = PTHREAD_ONCE_INIT;

/* At exit, before czmq's own handler closes the context under them (it
   would abort in the I/O thread, or wait for ever): destroy the clients
   this process made and left. Those of a parent (we are a forked child
   calling exit) have no I/O thread here and are left alone. */
static void
s_at_exit(void)
{
    for (;;) {
        pthread_mutex_lock(&s_live_lock);
        tq_client_t *client = s_live;
        while (client && client->pid != getpid())
            client = client->live_next;
        pthread_mutex_unlock(&s_live_lock);
        if (!client)
            return;
        tq_client_destroy(&client);
    }
}

static void
s_register_at_exit(void)
{
    atexit(s_at_exit);
    /* czmq's log already goes through tq_log to stderr (tq_log_take_czmq
       in tq_client_context): stdout carries a program's results alone */
}

void *
tq_client_context(void)
{
    /* a library must not take the program's SIGINT and SIGTERM: czmq would
       install its own handlers at its first use (a pool child could then
       no longer be stopped, Ctrl-C would not end a blocked get) */
    pthread_once(&s_signals_once, s_leave_signals_alone);
    /* czmq logs to stdout by default: stdout carries results alone */
    tq_log_take_czmq();
    void *ctx = zsys_init();
    /* after zsys_init, which registers czmq's handler: ours runs first */
    if (ctx)
        pthread_once(&s_exit_once, s_register_at_exit);
    return ctx;
}

tq_client_t *
tq_client_new(const char *endpoint)
{
    if (!endpoint)
        endpoint = getenv("TQ_BROKER");
    if (!endpoint || !*endpoint)
        endpoint = TQ_DEFAULT_CLIENT_ENDPOINT;
    tq_client_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->wake_fd = -1;
    pthread_mutex_init(&self->lock, NULL);
    atomic_init(&self->liveness_ms, S_DEFAULT_LIVENESS_MS);
    atomic_init(&self->id_counter, 0);
    self->endpoint = strdup(endpoint);
    if (getrandom(&self->id_prefix, sizeof self->id_prefix, 0) !=
        sizeof self->id_prefix) {
        /* no entropy source: still unique enough per process and moment */
        self->id_prefix = (uint64_t)getpid() << 32 ^ (uint64_t)zclock_time();
    }
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    void *ctx = tq_client_context();
    if (!self->endpoint || self->wake_fd < 0 || !ctx)
        goto fail;
    self->socket = zmq_socket(ctx, ZMQ_DEALER);
    if (!self->socket)
        goto fail;
    int zero = 0, one = 1, hwm = S_SEND_HWM;
    /* linger 0: destroy never blocks on a dead broker; immediate: nothing
       is queued inside libzmq for a broker we are not connected to, so a
       request we failed as unreachable is never sent later behind our back;
       unlimited receive queue: results are never dropped on our side */
    zmq_setsockopt(self->socket, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(self->socket, ZMQ_IMMEDIATE, &one, sizeof one);
    zmq_setsockopt(self->socket, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(self->socket, ZMQ_RCVHWM, &zero, sizeof zero);
    char why[512];
    if (tq_curve_client_setup(self->socket, NULL, NULL, why, sizeof why)) {
        zsys_error("tq client: %s", why);
        goto fail;
    }
    /* unique per client ever made: a destroyed client's monitor endpoint
       may still be bound for a moment */
    static atomic_uint s_monitors;
    snprintf(self->monitor, sizeof self->monitor,
             "inproc://tq-client-monitor-%ld-%u", (long)getpid(),
             atomic_fetch_add(&s_monitors, 1));
    if (zmq_socket_monitor(self->socket, self->monitor,
                           ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) != 0)
        zsys_warning("tq client: no socket monitor: %s", zmq_strerror(errno));
    else {
        self->monitor_reader = zmq_socket(ctx, ZMQ_PAIR);
        if (self->monitor_reader &&
            zmq_connect(self->monitor_reader, self->monitor) != 0) {
            zmq_close(self->monitor_reader);
            self->monitor_reader = NULL;
        }
        if (!self->monitor_reader)
            zmq_socket_monitor(self->socket, NULL, 0);
    }
    if (zmq_connect(self->socket, self->endpoint) != 0) {
        zsys_error("tq client: cannot connect to %s: %s", self->endpoint,
                   zmq_strerror(errno));
        goto fail;
    }
    self->actor = zactor_new(s_actor, self);
    if (!self->actor)
        goto fail;
    self->pid = getpid();
    pthread_mutex_lock(&s_live_lock);
    self->live_next = s_live;
    if (s_live)
        s_live->live_prev = self;
    s_live = self;
    pthread_mutex_unlock(&s_live_lock);
    return self;
fail:
    if (self->socket)
        zmq_socket_monitor(self->socket, NULL, 0);
    if (self->monitor_reader)
        zmq_close(self->monitor_reader);
    if (self->socket)
        zmq_close(self->socket);
    if (self->wake_fd >= 0)
        close(self->wake_fd);
    pthread_mutex_destroy(&self->lock);
    free(self->endpoint);
    free(self);
    return NULL;
}

void
tq_client_destroy(tq_client_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_client_t *self = *self_p;
    *self_p = NULL;
    /* taking it off the list claims it: a second destroy (the exit
       handler's, racing the program's) finds nothing and returns without
       touching it */
    pthread_mutex_lock(&s_live_lock);
    tq_client_t *live = s_live;
    while (live && live != self)
        live = live->live_next;
    if (live) {
        if (self->live_prev)
            self->live_prev->live_next = self->live_next;
        else
            s_live = self->live_next;
        if (self->live_next)
            self->live_next->live_prev = self->live_prev;
    }
    pthread_mutex_unlock(&s_live_lock);
    if (!live)
        return;
    pthread_mutex_lock(&self->lock);
    self->closed = true;
    pthread_mutex_unlock(&self->lock);
    /* returns once the actor function has returned */
    zactor_destroy(&self->actor); /* it stopped the socket monitor */
    zmq_close(self->socket);
    close(self->wake_fd);
    pthread_mutex_destroy(&self->lock);
    free(self->endpoint);
    free(self);
}

void
tq_client_set_liveness(tq_client_t *self, int timeout_ms)
{
    assert(self);
    if (timeout_ms < 3)
        timeout_ms = 3;
    atomic_store(&self->liveness_ms, timeout_ms);
    /* wake the I/O thread so the new deadline counts at once */
    uint64_t one = 1;
    if (write(self->wake_fd, &one, sizeof one) < 0)
        zsys_warning("tq client: eventfd write: %s", strerror(errno));
}

const char *
tq_client_endpoint(tq_client_t *self)
{
    assert(self);
    return self->endpoint;
}

/* Hands a request to the I/O thread, or fails it if the client is closed.
   Consumes the I/O thread's reference in both cases. */
static void
s_client_push(tq_client_t *self, tq_result_t *r)
{
    pthread_mutex_lock(&self->lock);
    if (self->closed) {
        pthread_mutex_unlock(&self->lock);
        s_finish_text(r, TQ_ECLOSED, "the client was closed");
        s_result_unref(r);
        return;
    }
    bool was_empty = self->queue_head == NULL;
    r->next = NULL;
    if (self->queue_tail)
        self->queue_tail->next = r;
    else
        self->queue_head = r;
    self->queue_tail = r;
    pthread_mutex_unlock(&self->lock);
    /* one wakeup per batch: the I/O thread takes the whole queue at once */
    if (was_empty) {
        uint64_t one = 1;
        if (write(self->wake_fd, &one, sizeof one) < 0)
            zsys_warning("tq client: eventfd write: %s", strerror(errno));
    }
}

static void
s_free_buffer(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Makes a submission; args_owned (malloc'd, size bytes) is taken over when
   non-NULL, else args is copied. NULL on invalid input. */
static tq_result_t *
s_submit(tq_client_t *self, const char *task, const tq_options_t *options,
         void *args_owned, const void *args, size_t size)
{
    assert(self);
    tq_options_t none = TQ_OPTIONS_INIT;
    if (!options)
        options = &none;
    const char *queue = options->queue ? options->queue : TQ_DEFAULT_QUEUE;
    const char *reason = NULL;
    const char *why =
        !task || !tq_proto_valid_name(task, strlen(task))
            ? "invalid task name (1-255 of [0-9A-Za-z_.:@/-])"
        : !tq_proto_valid_name(queue, strlen(queue))
            ? "invalid queue name (1-255 of [0-9A-Za-z_.:@/-])"
        : options->priority < 0 || options->priority > TQ_PRIORITY_MAX
            ? "priority out of range (0..9)"
        : options->time_limit_ms < 0 ? "negative time_limit_ms"
        : options->retries < 0 || options->retries > TQ_PROTO_MAX_RETRIES
            ? "retries out of range (0..1000)"
        : options->retry_backoff_ms < 0 ? "negative retry_backoff_ms"
        : options->countdown_ms < 0     ? "negative countdown_ms"
        : options->id && !tq_proto_valid_id(options->id, strlen(options->id))
            ? "invalid id (1-64 of [0-9A-Za-z_.-])"
        : tq_proto_check_payload(args_owned ? args_owned : args, size, true,
                                 &reason) != TQ_OK
            ? "invalid arguments"
            : NULL;
    if (why) {
        s_set_last_error(TQ_EINVAL, "%s%s%s", why, reason ? ": " : "",
                         reason ? reason : "");
        free(args_owned);
        return NULL;
    }
    tq_result_t *r = s_result_new(S_KIND_SUBMIT);
    if (!r) {
        free(args_owned);
        return NULL;
    }
    if (options->id) {
        snprintf(r->id, sizeof r->id, "%s", options->id);
        /* the caller's id may be a resubmission the broker knows */
        r->resent = true;
    } else {
        uint64_t n = atomic_fetch_add(&self->id_counter, 1);
        snprintf(r->id, sizeof r->id, "%016" PRIx64 "%016" PRIx64,
                 self->id_prefix, n);
    }
    r->retries = (uint32_t)options->retries;
    /* the documented default; the broker doubles it and adds jitter */
    r->backoff_ms = options->retry_backoff_ms ? (uint32_t)options->retry_backoff_ms
                                              : 1000;
    r->delay_ms = (uint32_t)options->countdown_ms;
    r->block_when_full = options->block_when_full;
    r->client = self;
    r->task = strdup(task);
    r->queue = strdup(queue);
    size_t tlen = strlen(task), qlen = strlen(queue);
    r->names = malloc(tlen + qlen + 2);
    if (r->names) {
        memcpy(r->names, task, tlen + 1);
        memcpy(r->names + tlen + 1, queue, qlen + 1);
    }
    r->priority = (uint32_t)options->priority;
    r->time_limit_ms = (uint32_t)options->time_limit_ms;
    r->callback = options->callback;
    r->error_callback = options->error_callback;
    r->callback_arg = options->callback_arg;
    int rc;
    if (args_owned)
        rc = zmq_msg_init_data(&r->kept, args_owned, size, s_free_buffer,
                               NULL);
    else if ((rc = zmq_msg_init_size(&r->kept, size)) == 0)
        memcpy(zmq_msg_data(&r->kept), args, size);
    if (rc != 0 || !r->task || !r->queue) {
        if (rc != 0 && args_owned)
            free(args_owned);
        atomic_store(&r->refs, 1);
        s_result_unref(r);
        return NULL;
    }
    s_client_push(self, r);
    return r;
}

tq_result_t *
tq_apply_async(tq_client_t *self, const char *task,
               const tq_options_t *options, const char *picture, ...)
{
    tq_buf_t buf;
    va_list ap;
    va_start(ap, picture);
    int rc = tq_vpack(&buf, picture, ap);
    va_end(ap);
    if (rc != TQ_OK) {
        s_set_last_error(rc, "picture \"%s\": an unknown character",
                         picture ? picture : "(null)");
        return NULL;
    }
    return s_submit(self, task, options, buf.data, NULL, buf.size);
}

tq_result_t *
tq_apply_async_raw(tq_client_t *self, const char *task,
                   const tq_options_t *options, const void *args, size_t size)
{
    if (!args) {
        s_set_last_error(TQ_EINVAL, "no arguments (NULL)");
        return NULL;
    }
    return s_submit(self, task, options, NULL, args, size);
}

tq_result_t *
tq_apply(tq_client_t *self, const char *task, const tq_options_t *options,
         int timeout_ms, const char *picture, ...)
{
    tq_buf_t buf;
    va_list ap;
    va_start(ap, picture);
    int rc = tq_vpack(&buf, picture, ap);
    va_end(ap);
    if (rc != TQ_OK)
        return NULL;
    tq_result_t *r = s_submit(self, task, options, buf.data, NULL, buf.size);
    if (r)
        tq_result_get(r, timeout_ms);
    return r;
}

int
tq_map(tq_client_t *self, const char *task, const tq_options_t *options,
       const tq_buf_t *args, size_t count, tq_result_t **results,
       int timeout_ms)
{
    assert(self);
    assert(results);
    assert(args || count == 0);
    int64_t deadline = s_deadline(timeout_ms);
    int first = TQ_OK;
    for (size_t i = 0; i < count; i++) {
        results[i] = tq_apply_async_raw(self, task, options, args[i].data,
                                        args[i].size);
        if (!results[i] && first == TQ_OK)
            first = TQ_EINVAL;
    }
    for (size_t i = 0; i < count; i++) {
        if (!results[i])
            continue;
        int rc = timeout_ms == 0 ? tq_result_code(results[i])
                                 : (s_result_wait_until(results[i], deadline),
                                    tq_result_code(results[i]));
        if (rc != TQ_OK && first == TQ_OK)
            first = rc;
    }
    return first;
}

tq_result_t *
tq_result_resubmit(tq_result_t *old, tq_callback_fn *callback,
                   tq_callback_fn *error_callback, void *callback_arg)
{
    assert(old);
    pthread_mutex_lock(&old->mutex);
    bool final = old->final;
    int code = old->code;
    pthread_mutex_unlock(&old->mutex);
    /* a final handle is no longer touched by the I/O thread; one that
       ended unreachable was never acknowledged, so it kept its request */
    if (old->kind != S_KIND_SUBMIT || !final || code != TQ_EUNREACHABLE ||
        !old->client || !old->task || !old->queue)
        return NULL;
    tq_result_t *r = s_result_new(S_KIND_SUBMIT);
    if (!r)
        return NULL;
    memcpy(r->id, old->id, sizeof r->id);
    r->resent = true;
    r->client = old->client;
    r->task = strdup(old->task);
    r->queue = strdup(old->queue);
    r->priority = old->priority;
    r->time_limit_ms = old->time_limit_ms;
    r->retries = old->retries;
    r->backoff_ms = old->backoff_ms;
    r->delay_ms = old->delay_ms;
    r->block_when_full = old->block_when_full;
    r->callback = callback;
    r->error_callback = error_callback;
    r->callback_arg = callback_arg;
    if (!r->task || !r->queue || zmq_msg_copy(&r->kept, &old->kept) != 0) {
        atomic_store(&r->refs, 1);
        s_result_unref(r);
        return NULL;
    }
    s_client_push(r->client, r);
    return r;
}

tq_result_t *
tq_client_fetch(tq_client_t *self, const char *id, bool wait)
{
    assert(self);
    if (!id || !tq_proto_valid_id(id, strlen(id)))
        return NULL;
    tq_result_t *r = s_result_new(S_KIND_GET);
    if (!r)
        return NULL;
    snprintf(r->id, sizeof r->id, "%s", id);
    r->wait = wait;
    r->client = self;
    s_client_push(self, r);
    return r;
}

int
tq_client_status(tq_client_t *self, tq_buf_t *body, int timeout_ms)
{
    assert(self);
    assert(body);
    body->data = NULL;
    body->size = 0;
    tq_result_t *r = s_result_new(S_KIND_STATUS);
    if (!r)
        return TQ_ENOMEM;
    s_client_push(self, r);
    int rc = tq_result_get(r, timeout_ms);
    if (rc == TQ_OK) {
        size_t size = zmq_msg_size(&r->value);
        body->data = malloc(size ? size : 1);
        if (body->data) {
            memcpy(body->data, zmq_msg_data(&r->value), size);
            body->size = size;
        } else
            rc = TQ_ENOMEM;
    }
    tq_result_destroy(&r);
    return rc;
}

/* ---- cancellation and operator requests --------------------------------- */

/* Sends a CANCEL for id without a caller waiting on it; TQ_OK. */
static int
s_cancel_async(tq_client_t *self, const char *id)
{
    tq_result_t *r = s_result_new(S_KIND_CANCEL);
    if (!r)
        return TQ_ENOMEM;
    atomic_store(&r->refs, 1); /* the I/O thread's only */
    snprintf(r->id, sizeof r->id, "%s", id);
    r->client = self;
    s_client_push(self, r);
    return TQ_OK;
}

int
tq_result_cancel(tq_result_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->mutex);
    bool final = self->final;
    pthread_mutex_unlock(&self->mutex);
    if (final || !self->client || self->kind == S_KIND_STATUS)
        return final ? TQ_OK : TQ_EINVAL; /* final: keeps its outcome */
    /* the handle is in the chain of its id, so the broker's RESULT for the
       cancel makes it final */
    return s_cancel_async(self->client, self->id);
}

int
tq_client_terminate(tq_client_t *self)
{
    assert(self);
    tq_result_t *r = s_result_new(S_KIND_TERMINATE);
    if (!r)
        return 0;
    s_client_push(self, r);
    /* the I/O thread answers at once; bounded all the same */
    int count = tq_result_wait(r, 10000) == TQ_OK ? r->count : 0;
    tq_result_destroy(&r);
    return count;
}

/* Runs one synchronous request: pushes r and waits up to timeout_ms.
   Returns the handle's code; TQ_ETIMEDOUT if it did not end. */
static int
s_sync(tq_client_t *self, tq_result_t *r, int timeout_ms)
{
    r->client = self;
    s_client_push(self, r);
    return tq_result_get(r, timeout_ms);
}

tq_result_t *
tq_client_queue_request(tq_client_t *self, tq_queue_op_t op,
                        const char *queue, uint32_t maxsize, uint32_t wait_ms,
                        const void *item, size_t size)
{
    assert(self);
    if (!queue || !tq_proto_valid_name(queue, strlen(queue)))
        return NULL;
    if (op == TQ_QUEUE_PUT &&
        tq_proto_check_payload(item, size, false, NULL) != TQ_OK)
        return NULL;
    tq_result_t *r = s_result_new(op == TQ_QUEUE_PUT   ? S_KIND_QPUT
                                  : op == TQ_QUEUE_GET ? S_KIND_QGET
                                                       : S_KIND_QSIZE);
    if (!r)
        return NULL;
    uint64_t n = atomic_fetch_add(&self->id_counter, 1);
    snprintf(r->id, sizeof r->id, "q%016" PRIx64 "%016" PRIx64,
             self->id_prefix, n);
    r->client = self;
    r->queue = strdup(queue);
    r->maxsize = maxsize;
    r->time_limit_ms = wait_ms;
    int rc = 0;
    if (op == TQ_QUEUE_PUT && (rc = zmq_msg_init_size(&r->args, size)) == 0)
        memcpy(zmq_msg_data(&r->args), item, size);
    if (rc != 0 || !r->queue) {
        atomic_store(&r->refs, 1);
        s_result_unref(r);
        return NULL;
    }
    s_client_push(self, r);
    return r;
}

/* Sends a request of `kind` about task id and waits for its answer.
   Returns its code and, when r_p is not NULL, the handle (the caller's). */
static int
s_sync_id(tq_client_t *self, s_kind_t kind, const char *id, int timeout_ms,
          tq_result_t **r_p)
{
    assert(self);
    if (!id || !tq_proto_valid_id(id, strlen(id)))
        return TQ_EINVAL;
    tq_result_t *r = s_result_new(kind);
    if (!r)
        return TQ_ENOMEM;
    snprintf(r->id, sizeof r->id, "%s", id);
    int rc = s_sync(self, r, timeout_ms);
    if (r_p)
        *r_p = r;
    else
        tq_result_destroy(&r);
    return rc;
}

int
tq_client_cancel(tq_client_t *self, const char *id, int timeout_ms)
{
    tq_result_t *r = NULL;
    int rc = s_sync_id(self, S_KIND_CANCEL, id, timeout_ms, &r);
    if (!r)
        return rc;
    if (rc != TQ_ETIMEDOUT && rc != TQ_EUNKNOWN && rc != TQ_EUNREACHABLE &&
        rc != TQ_ECLOSED)
        /* cancelled (now or before) is done; a task that had already
           succeeded or failed cannot be cancelled any more */
        rc = tq_result_state(r) == TQ_STATE_CANCELLED ? TQ_OK : TQ_ESTATE;
    tq_result_destroy(&r);
    return rc;
}

int
tq_client_retry(tq_client_t *self, const char *id, int timeout_ms)
{
    return s_sync_id(self, S_KIND_RETRY, id, timeout_ms, NULL);
}

/* Copies a REPLY body out of r into body (may be NULL). */
static int
s_copy_body(tq_result_t *r, tq_buf_t *body)
{
    size_t size = zmq_msg_size(&r->value);
    body->data = malloc(size ? size : 1);
    if (!body->data)
        return TQ_ENOMEM;
    memcpy(body->data, zmq_msg_data(&r->value), size);
    body->size = size;
    return TQ_OK;
}

int
tq_client_purge(tq_client_t *self, const char *queue, uint64_t *purged,
                int timeout_ms)
{
    assert(self);
    if (purged)
        *purged = 0;
    if (!queue || !tq_proto_valid_name(queue, strlen(queue)))
        return TQ_EINVAL;
    tq_result_t *r = s_result_new(S_KIND_PURGE);
    if (!r)
        return TQ_ENOMEM;
    r->queue = strdup(queue);
    if (!r->queue) {
        atomic_store(&r->refs, 1);
        s_result_unref(r);
        return TQ_ENOMEM;
    }
    int rc = s_sync(self, r, timeout_ms);
    if (rc == TQ_OK && purged) {
        /* REPLY {"queue": str, "purged": uint} */
        const msgpack_object *map = tq_result_value(r);
        rc = TQ_EPROTO;
        if (map && map->type == MSGPACK_OBJECT_MAP)
            for (uint32_t i = 0; i < map->via.map.size; i++) {
                const msgpack_object_kv *kv = &map->via.map.ptr[i];
                if (kv->key.type == MSGPACK_OBJECT_STR &&
                    kv->key.via.str.size == 6 &&
                    !memcmp(kv->key.via.str.ptr, "purged", 6) &&
                    kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                    *purged = kv->val.via.u64;
                    rc = TQ_OK;
                }
            }
    }
    tq_result_destroy(&r);
    return rc;
}

int
tq_client_failed(tq_client_t *self, tq_buf_t *body, int timeout_ms)
{
    assert(self);
    assert(body);
    body->data = NULL;
    body->size = 0;
    tq_result_t *r = s_result_new(S_KIND_FAILED);
    if (!r)
        return TQ_ENOMEM;
    int rc = s_sync(self, r, timeout_ms);
    if (rc == TQ_OK)
        rc = s_copy_body(r, body);
    tq_result_destroy(&r);
    return rc;
}

tq_result_t *
tq_result_new_final(int code, const char *error, const void *value, size_t size)
{
    tq_result_t *self = s_result_new(S_KIND_SUBMIT);
    if (!self)
        return NULL;
    atomic_store(&self->refs, 1); /* no I/O thread holds it */
    self->state = code == TQ_OK ? TQ_STATE_SUCCESS : TQ_STATE_FAILURE;
    self->code = code;
    if (code != TQ_OK && error && *error)
        self->error = strdup(error);
    if (code == TQ_OK && value && size) {
        if (zmq_msg_init_size(&self->value, size) != 0) {
            s_result_unref(self);
            return NULL;
        }
        memcpy(zmq_msg_data(&self->value), value, size);
    }
    self->answered = self->final = self->ready = true;
    self->attempts = 1;
    return self;
}
