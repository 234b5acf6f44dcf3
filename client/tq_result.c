/* tq_result.c - the caller's handle (AsyncResult): its lifecycle, waits
   and accessors. The I/O thread completes it through tq_result_answer and
   tq_result_finish; callers read it under its mutex, and wait for it on
   its phase word. */
#include "tq_result.h"

#include <assert.h>
#include <czmq.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "tq_client_core.h"
#include "tq_client_internal.h"
#include "tq_client_unserved.h"
#include "tq_log.h"

#define B(phase) (1u << (phase))

/* s_legal[from]: the phases a handle may move to from `from`. */
static const uint32_t s_legal[TQ_RESULT_PHASES_] = {
    [TQ_RESULT_PENDING] = B(TQ_RESULT_ANSWERED) | B(TQ_RESULT_FINAL),
    [TQ_RESULT_ANSWERED] = B(TQ_RESULT_FINAL),
    [TQ_RESULT_FINAL] = B(TQ_RESULT_READY),
    [TQ_RESULT_READY] = 0,
};

static const char *const s_names[TQ_RESULT_PHASES_] = {
    [TQ_RESULT_PENDING] = "PENDING",
    [TQ_RESULT_ANSWERED] = "ANSWERED",
    [TQ_RESULT_FINAL] = "FINAL",
    [TQ_RESULT_READY] = "READY",
};

static bool
s_phase_legal(tq_result_phase_t from, tq_result_phase_t to)
{
    return from < TQ_RESULT_PHASES_ && to < TQ_RESULT_PHASES_ &&
        (s_legal[from] & B(to)) != 0;
}

bool
tq_result_phase_legal(tq_result_phase_t from, tq_result_phase_t to)
{
    return s_phase_legal(from, to);
}

const char *
tq_result_phase_name(tq_result_phase_t phase)
{
    return phase < TQ_RESULT_PHASES_ ? s_names[phase] : "?";
}

/* A caller waits for a handle's phase on the phase's own word (a futex):
   a handle needs no condition variable of its own to make, and a caller
   none to take. */
_Static_assert(sizeof(_Atomic tq_result_phase_t) == sizeof(int),
               "a handle's phase is a futex word");

/* Sleeps while the phase is still `seen`, at most timeout (NULL: no
   bound); returns at once if it moved already. Any return may be early:
   the caller looks at the phase again. */
static void
s_futex_wait(tq_result_t *self, tq_result_phase_t seen,
             const struct timespec *timeout)
{
    syscall(SYS_futex, (int *)&self->phase, FUTEX_WAIT_PRIVATE, (int)seen,
            timeout, NULL, 0);
}

static void
s_futex_wake(tq_result_t *self)
{
    syscall(SYS_futex, (int *)&self->phase, FUTEX_WAKE_PRIVATE, INT_MAX, NULL,
            NULL, 0);
}

/* Wakeups held back by this thread (tq_result_hold_wakeups): handles
   with a reference each. */
#define S_HELD_MAX 64
static _Thread_local int s_hold_depth;
static _Thread_local int s_held_count;
static _Thread_local tq_result_t *s_held[S_HELD_MAX];

/* Wakes the callers asleep on a handle, now or at the release of a
   hold. Called after a move that a sleeper waits for: a caller counted
   among the sleepers before it read the phase either saw the move, or
   sleeps on the phase it read and the wake (or the moved word) ends its
   sleep. */
static void
s_wake(tq_result_t *self)
{
    if (s_hold_depth > 0 && s_held_count < S_HELD_MAX) {
        tq_result_ref(self);
        s_held[s_held_count++] = self;
        return;
    }
    s_futex_wake(self);
}

void
tq_result_hold_wakeups(void)
{
    s_hold_depth++;
}

void
tq_result_release_wakeups(void)
{
    if (s_hold_depth > 1) {
        s_hold_depth--;
        return;
    }
    while (s_held_count > 0) {
        tq_result_t *self = s_held[--s_held_count];
        s_futex_wake(self);
        tq_result_unref(self);
    }
    s_hold_depth = 0;
}

/* Moves the handle (mutex held); aborts on a bug. True if callers asleep
   on it must be woken (s_wake, once the mutex is released). */
static bool
s_move(tq_result_t *self, tq_result_phase_t to)
{
    if (!s_phase_legal(self->phase, to)) {
        tq_log_error("BUG: client handle %s cannot move %s -> %s", self->id,
                     tq_result_phase_name(self->phase),
                     tq_result_phase_name(to));
        abort();
    }
    atomic_store(&self->phase, to);
    /* wake only who can go on: a FINAL handle is nobody's but its
       callback's, and ANSWERED matters to tq_result_wait_answer alone (a
       get waiting on every round trip is not woken twice for nothing) */
    return atomic_load(&self->sleepers) > 0 &&
        (to == TQ_RESULT_READY ||
         (to == TQ_RESULT_ANSWERED && atomic_load(&self->answer_waiters)));
}

/* The handle whose callback this thread is running: a callback that waits
   on its own handle must not wait for the end of itself. */
static _Thread_local tq_result_t *s_in_callback;

tq_result_t *
tq_result_make(tq_req_kind_t kind, tq_client_t *client)
{
    return tq_result_make_sized(kind, client, sizeof(tq_result_t));
}

tq_result_t *
tq_result_make_sized(tq_req_kind_t kind, tq_client_t *client, size_t size)
{
    assert(size >= sizeof(tq_result_t));
    tq_result_t *self = calloc(1, size);
    if (!self)
        return NULL;
    atomic_init(&self->refs, 1);
    self->kind = kind;
    self->client = client;
    zmq_msg_init(&self->value);
    /* default attributes: the initializers, without the calls (one
       handle a task) */
    self->mutex = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    atomic_init(&self->phase, TQ_RESULT_PENDING);
    self->state = TQ_STATE_PENDING;
    return self;
}

void
tq_result_ref(tq_result_t *self)
{
    atomic_fetch_add(&self->refs, 1);
}

void
tq_result_unref(tq_result_t *self)
{
    if (!self || atomic_fetch_sub(&self->refs, 1) != 1)
        return;
    zmq_msg_close(&self->value);
    free(self->error);
    if (!self->names_inline)
        free(self->names);
    free(self->unserved);
    if (self->unpacked_done)
        msgpack_unpacked_destroy(&self->unpacked);
    tq_request_free(self->spare);
    pthread_mutex_destroy(&self->mutex);
    free(self);
}

tq_result_phase_t
tq_result_phase(tq_result_t *self)
{
    return atomic_load(&self->phase);
}

void
tq_result_answer(tq_result_t *self, int state)
{
    pthread_mutex_lock(&self->mutex);
    bool wake = false;
    if (self->phase == TQ_RESULT_PENDING)
        wake = s_move(self, TQ_RESULT_ANSWERED);
    if (state >= 0 && self->phase == TQ_RESULT_ANSWERED)
        self->state = state;
    pthread_mutex_unlock(&self->mutex);
    if (wake)
        s_wake(self);
}

void
tq_result_set_attempts(tq_result_t *self, uint32_t attempts)
{
    pthread_mutex_lock(&self->mutex);
    if (self->phase < TQ_RESULT_FINAL)
        self->attempts = attempts;
    pthread_mutex_unlock(&self->mutex);
}

/* tq_result_finish, with the broker's count of attempts when attempts is
   not NULL. */
static void
s_finish(tq_result_t *self, const uint32_t *attempts, int state, int code,
         const char *error, size_t error_len, zmq_msg_t *value)
{
    char *text = error && error_len ? strndup(error, error_len) : NULL;
    pthread_mutex_lock(&self->mutex);
    if (self->phase >= TQ_RESULT_FINAL) {
        pthread_mutex_unlock(&self->mutex);
        free(text);
        if (value)
            zmq_msg_close(value), zmq_msg_init(value);
        return;
    }
    if (attempts)
        self->attempts = *attempts;
    self->state = state;
    self->code = code;
    free(self->error);
    self->error = text;
    if (value)
        zmq_msg_move(&self->value, value);
    (void)s_move(self, TQ_RESULT_FINAL); /* wakes nobody */
    tq_callback_fn *callback =
        code == TQ_OK ? self->callback : self->error_callback;
    if (!callback) {
        /* no callback to run: READY at once, under the same lock */
        bool wake = s_move(self, TQ_RESULT_READY);
        pthread_mutex_unlock(&self->mutex);
        if (wake)
            s_wake(self);
        return;
    }
    pthread_mutex_unlock(&self->mutex);
    /* callbacks run without the lock so they may call tq_result_*, and
       before the handle is READY, as in Python's Pool: once get() returns,
       the callback's side effects are visible */
    s_in_callback = self;
    callback(self, self->callback_arg);
    s_in_callback = NULL;
    pthread_mutex_lock(&self->mutex);
    bool wake = s_move(self, TQ_RESULT_READY);
    pthread_mutex_unlock(&self->mutex);
    if (wake)
        s_wake(self);
}

void
tq_result_finish(tq_result_t *self, int state, int code, const char *error,
                 size_t error_len, zmq_msg_t *value)
{
    s_finish(self, NULL, state, code, error, error_len, value);
}

void
tq_result_finish_attempts(tq_result_t *self, uint32_t attempts, int state,
                          int code, const char *error, size_t error_len,
                          zmq_msg_t *value)
{
    s_finish(self, &attempts, state, code, error, error_len, value);
}

void
tq_result_fail(tq_result_t *self, int code, const char *text)
{
    tq_result_finish(self, TQ_STATE_FAILURE, code, text,
                     text ? strlen(text) : 0, NULL);
}

bool
tq_result_final(tq_result_t *self)
{
    return tq_result_phase(self) >= TQ_RESULT_FINAL;
}

bool
tq_result_orphan(tq_result_t *self)
{
    return atomic_load(&self->refs) <= 1;
}

void
tq_result_keep(tq_result_t *self, tq_request_t *request)
{
    pthread_mutex_lock(&self->mutex);
    tq_request_t *old = self->spare;
    self->spare = request;
    pthread_mutex_unlock(&self->mutex);
    tq_request_free(old);
}

int64_t
tq_result_deadline(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : zclock_mono() + timeout_ms;
}

/* True once the handle, in phase `now`, reached `phase`. A handle is
   FINAL only while its callback runs: to anyone but that callback it has
   not reached FINAL until it is READY, so that what a caller woken here
   reads (ready, code) is the end of it. */
static bool
s_reached_at(tq_result_t *self, tq_result_phase_t now, tq_result_phase_t phase)
{
    if (now == TQ_RESULT_FINAL && s_in_callback != self)
        return false;
    return now >= phase;
}

static bool
s_reached(tq_result_t *self, tq_result_phase_t phase)
{
    return s_reached_at(self, atomic_load(&self->phase), phase);
}

/* Sleeps on the phase until s_reached(phase) or the deadline (-1: none),
   without the mutex. Counted among the sleepers before it reads the
   phase it sleeps on: a move after that read wakes it (s_move sees the
   count), one before it makes the sleep return at once (the word moved). */
static bool
s_wait_phase(tq_result_t *self, tq_result_phase_t phase, int64_t deadline)
{
    bool reached;
    atomic_fetch_add(&self->sleepers, 1);
    for (;;) {
        tq_result_phase_t now = atomic_load(&self->phase);
        if ((reached = s_reached_at(self, now, phase)))
            break;
        if (deadline < 0) {
            s_futex_wait(self, now, NULL);
            continue;
        }
        int64_t left = deadline - zclock_mono();
        if (left <= 0)
            break;
        struct timespec timeout = {(time_t)(left / 1000),
                                   (long)(left % 1000) * 1000000L};
        s_futex_wait(self, now, &timeout);
    }
    atomic_fetch_sub(&self->sleepers, 1);
    return reached;
}

int
tq_result_wait_until(tq_result_t *self, int64_t deadline)
{
    /* ready already (the phase read alone: a handle stays READY) */
    if (s_reached(self, TQ_RESULT_FINAL))
        return TQ_OK;
    /* while the I/O thread sleeps, read the answer off the socket here:
       no hop through the I/O thread (not from a callback: it runs on the
       I/O thread, or a waiting caller's reading would wait on itself) */
    if (self->client && !self->local && !s_in_callback &&
        (deadline < 0 || deadline > zclock_mono()) && !tq_result_final(self))
        tq_client_io_lead(self->client, self, deadline);
    return s_wait_phase(self, TQ_RESULT_FINAL, deadline) ? TQ_OK : TQ_ETIMEDOUT;
}

int
tq_result_wait(tq_result_t *self, int timeout_ms)
{
    assert(self);
    if (s_reached(self, TQ_RESULT_FINAL))
        return TQ_OK; /* no deadline to read the clock for */
    return tq_result_wait_until(self, tq_result_deadline(timeout_ms));
}

/* A submission that a get waited on in vain: if no connected worker
   provides its task on its queue, the handle's error text says so (once:
   one STATUS per handle). Not from a callback: those run on the I/O
   thread, which the STATUS needs. */
static void
s_check_unserved(tq_result_t *self)
{
    if (self->kind != TQ_KIND_SUBMIT || !self->names || !self->client ||
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
    atomic_fetch_add(&self->answer_waiters, 1);
    bool ok =
        s_wait_phase(self, TQ_RESULT_ANSWERED, tq_result_deadline(timeout_ms));
    atomic_fetch_sub(&self->answer_waiters, 1);
    return ok ? TQ_OK : TQ_ETIMEDOUT;
}

bool
tq_result_answered(tq_result_t *self)
{
    assert(self);
    return s_reached(self, TQ_RESULT_ANSWERED);
}

bool
tq_result_ready(tq_result_t *self)
{
    assert(self);
    return s_reached(self, TQ_RESULT_FINAL);
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
    /* the code is set before the move to FINAL, and stays */
    return tq_result_phase(self) >= TQ_RESULT_FINAL ? self->code : TQ_ETIMEDOUT;
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
    if (self->phase >= TQ_RESULT_FINAL && self->code == TQ_OK) {
        if (!self->unpacked_done) {
            /* unpacked once, on first use: a caller that only forwards the
               raw bytes never pays for it */
            msgpack_unpacked_init(&self->unpacked);
            size_t off = 0;
            self->unpacked_ok =
                msgpack_unpack_next(&self->unpacked, zmq_msg_data(&self->value),
                                    zmq_msg_size(&self->value),
                                    &off) == MSGPACK_UNPACK_SUCCESS;
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
    if (self->phase >= TQ_RESULT_FINAL && self->code == TQ_OK) {
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
    bool final = self->phase >= TQ_RESULT_FINAL;
    const char *error = final && self->error ? self->error
        : !final && self->unserved           ? self->unserved
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
    tq_result_unref(*self_p);
    *self_p = NULL;
}

tq_result_t *
tq_result_new_final(int code, const char *error, const void *value, size_t size)
{
    tq_result_t *self = tq_result_make(TQ_KIND_SUBMIT, NULL);
    if (!self)
        return NULL;
    self->state = code == TQ_OK ? TQ_STATE_SUCCESS : TQ_STATE_FAILURE;
    self->code = code;
    if (code != TQ_OK && error && *error)
        self->error = strdup(error);
    if (code == TQ_OK && value && size) {
        if (zmq_msg_init_size(&self->value, size) != 0) {
            tq_result_unref(self);
            return NULL;
        }
        memcpy(zmq_msg_data(&self->value), value, size);
    }
    self->phase = TQ_RESULT_READY; /* made final: no request behind it */
    self->attempts = 1;
    return self;
}

void
tq_result_callbacks_anywhere(tq_result_t *self)
{
    atomic_store(&self->callbacks_anywhere, true);
}

tq_result_t *
tq_result_new_local(tq_client_t *client, const char *id,
                    tq_callback_fn *callback, tq_callback_fn *error_callback,
                    void *callback_arg)
{
    tq_result_t *self = tq_result_make(TQ_KIND_SUBMIT, client);
    if (!self)
        return NULL;
    self->local = true;
    snprintf(self->id, sizeof self->id, "%s", id);
    self->callback = callback;
    self->error_callback = error_callback;
    self->callback_arg = callback_arg;
    return self;
}

void
tq_result_local_answer(tq_result_t *self, const tq_msg_t *msg,
                       zmq_msg_t *payload)
{
    if (msg->command == TQ_CMD_SUBMITTED) {
        tq_result_answer(self, -1);
        return;
    }
    if (msg->command == TQ_CMD_ERROR) {
        tq_result_finish(self, TQ_STATE_FAILURE, (int)msg->code, msg->error.ptr,
                         msg->error.len, NULL);
        return;
    }
    if (msg->command != TQ_CMD_RESULT)
        return; /* nothing else answers a SUBMIT */
    /* as the I/O thread reads a RESULT (tq_client_io.c) */
    tq_result_set_attempts(self, msg->attempt);
    int code = (int)msg->code;
    if (msg->state == TQ_STATE_SUCCESS)
        code = TQ_OK;
    else if (code == TQ_OK)
        code = msg->state == TQ_STATE_CANCELLED ? TQ_ECANCELLED : TQ_ETASK;
    zmq_msg_t value;
    zmq_msg_init(&value);
    if (code == TQ_OK && payload) {
        zmq_msg_copy(&value, payload);
        if (tq_proto_check_payload(zmq_msg_data(&value), zmq_msg_size(&value),
                                   false, NULL) != TQ_OK) {
            zmq_msg_close(&value);
            tq_result_fail(self, TQ_EPROTO,
                           "broker sent a malformed result value");
            return;
        }
    }
    int state =
        TQ_STATE_IS_FINAL(msg->state) ? (int)msg->state : TQ_STATE_FAILURE;
    tq_result_finish(self, state, code, msg->error.ptr, msg->error.len,
                     code == TQ_OK ? &value : NULL);
    zmq_msg_close(&value);
}

void
tq_result_hold(tq_result_t *self)
{
    tq_result_ref(self);
}

void
tq_result_release(tq_result_t *self)
{
    tq_result_unref(self);
}
