/* tq_client.h - the client library: submit tasks, get AsyncResult handles. */
#ifndef TQ_CLIENT_H
#define TQ_CLIENT_H

#include <msgpack.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tq_error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Default client endpoint of the broker; TQ_BROKER overrides it. */
#define TQ_DEFAULT_CLIENT_ENDPOINT "tcp://127.0.0.1:5555"
/* Queue used when a call names none. */
#define TQ_DEFAULT_QUEUE "default"
/* Priorities run from 0 (lowest, the default) to 9 (highest). */
#define TQ_PRIORITY_MAX 9

typedef struct tq_client_t tq_client_t;
typedef struct tq_result_t tq_result_t;

/* Completion callback: runs on the client's I/O thread when result becomes
   final. result is borrowed for the duration of the call. */
typedef void(tq_callback_fn)(tq_result_t *result, void *arg);

/* Per-call options; zero-initialise (TQ_OPTIONS_INIT) and set what you need. */
typedef struct {
    const char *queue;              /* NULL: "default" */
    int priority;                   /* 0..9, higher runs first */
    int time_limit_ms;              /* hard limit; 0: the worker's default */
    tq_callback_fn *callback;       /* on SUCCESS, may be NULL */
    tq_callback_fn *error_callback; /* on FAILURE or CANCELLED, may be NULL */
    void *callback_arg;             /* passed to both callbacks */
    const char *id;                 /* NULL: a fresh id; else the caller's
                                       id (1-64 of [0-9A-Za-z_.-]): a
                                       resubmission with the same id is
                                       the same task, never a second one */
    int retries;                    /* reruns after the task fails, 0..1000 */
    int retry_backoff_ms;           /* first retry delay (default 1000),
                                       doubled each time, with jitter */
    int countdown_ms;               /* run no sooner than this from now */
    bool block_when_full;           /* queue full: keep trying (until the
                                       handle is destroyed) instead of
                                       ending with TQ_EFULL */
} tq_options_t;

#define TQ_OPTIONS_INIT {0}

/* A packed argument array (msgpack bytes). */
typedef struct {
    void *data;  /* malloc'd by tq_pack; the caller's */
    size_t size; /* bytes */
} tq_buf_t;

/* Packs the arguments named by picture into a msgpack array in *buf.
   Picture characters: i int64_t, u uint64_t, d double, s const char *
   (NULL packs nil), b bool (int), n nil (no argument), p binary (const void *,
   size_t), m raw msgpack object (const void *, size_t). Returns TQ_OK or
   TQ_EINVAL for an unknown character; free buf->data with tq_buf_free. */
int tq_pack(tq_buf_t *buf, const char *picture, ...);
int tq_vpack(tq_buf_t *buf, const char *picture, va_list ap);
/* Frees buf->data and zeroes buf; NULL-safe. */
void tq_buf_free(tq_buf_t *buf);

/* Connects to a broker's client endpoint (NULL: $TQ_BROKER, else the
   default), or to one of several brokers given as a comma-separated list
   (one active, the others standby): the client talks to one at a time and
   moves to the next on TQ_ESTANDBY or silence. Connection is
   asynchronous; an unreachable broker shows as TQ_EUNREACHABLE on results
   after a bounded time. NULL on failure (an invalid list too). It
   leaves SIGINT and SIGTERM to the program (czmq's own handlers are not
   installed unless ZSYS_SIGHANDLER=true). */
tq_client_t *tq_client_new(const char *endpoint);

/* Stops the I/O thread and frees the client; NULL-safe, nulls *self_p.
   Results still held by the caller stay valid; pending ones end with
   TQ_ECLOSED. A client still alive at exit() is destroyed then (not from
   a forked child, nor from a callback: do not call exit() in one). Call
   exit() only when no other thread is inside a call on the client. */
void tq_client_destroy(tq_client_t **self_p);

/* Sets how long the broker may stay silent before pending submissions fail
   with TQ_EUNREACHABLE (default 3000 ms); with several brokers, before the
   client moves to the next one (and submissions fail once every broker of
   the list had this long). */
void tq_client_set_liveness(tq_client_t *self, int timeout_ms);

/* Submits task with arguments packed from picture (see tq_pack). Returns a
   new handle (the caller's, free with tq_result_destroy), or NULL with an
   invalid task name, options or picture: tq_client_last_error says which.
   options may be NULL. */
tq_result_t *tq_apply_async(tq_client_t *self, const char *task,
                            const tq_options_t *options, const char *picture,
                            ...);

/* Why the last call of this thread that returned NULL (tq_apply_async,
   tq_apply_async_raw, tq_apply, tq_client_fetch) failed before reaching
   the broker: TQ_EINVAL (or TQ_ENOMEM) and a text such as "priority out
   of range (0..9)" in *text (borrowed, valid until this thread's next
   failing call); TQ_OK and "" before any. The synchronous requests
   (tq_client_status, _cancel, _retry, _purge, _failed) that fail set it
   too, with the text of their failure (the broker's, or why no answer
   came). */
int tq_client_last_error(const char **text);

/* As tq_apply_async, with args already packed as a msgpack array (borrowed,
   copied before return). */
tq_result_t *tq_apply_async_raw(tq_client_t *self, const char *task,
                                const tq_options_t *options, const void *args,
                                size_t size);

/* Blocking apply: submits and waits up to timeout_ms (-1: forever). Returns
   the handle (the caller's) whatever happened; check tq_result_get's code
   with tq_result_code. NULL only on invalid arguments. */
tq_result_t *tq_apply(tq_client_t *self, const char *task,
                      const tq_options_t *options, int timeout_ms,
                      const char *picture, ...);

/* Submits count tasks, args[i] the packed arguments of the i-th, and stores
   the handles in results[i] in submission order (the caller's). Waits up to
   timeout_ms for all (-1: forever, 0: do not wait). Returns TQ_OK if every
   task succeeded, else the first non-OK code in order. */
int tq_map(tq_client_t *self, const char *task, const tq_options_t *options,
           const tq_buf_t *args, size_t count, tq_result_t **results,
           int timeout_ms);

/* Asks the broker for a result by id (from any client). Returns a handle
   that becomes final when the broker answers; an id the broker does not know
   ends with TQ_EUNKNOWN. wait: if true the broker answers only once the task
   is final; if false, a task still running leaves the handle not ready after
   the broker's answer (see tq_result_state). */
tq_result_t *tq_client_fetch(tq_client_t *self, const char *id, bool wait);

/* Asks the broker for its status; on TQ_OK *body is a msgpack map (the
   caller's, free with tq_buf_free). */
int tq_client_status(tq_client_t *self, tq_buf_t *body, int timeout_ms);

/* Waits up to timeout_ms (-1: forever) for the task's final state. Returns
   TQ_OK (value available), TQ_ETASK (the task failed: tq_result_error),
   TQ_ELOST, TQ_ETIMELIMIT, TQ_ECANCELLED, TQ_EUNKNOWN, TQ_EUNREACHABLE,
   TQ_ECLOSED, or TQ_ETIMEDOUT if the wait ended first (the task goes on). */
int tq_result_get(tq_result_t *self, int timeout_ms);

/* Waits up to timeout_ms for the result to be ready; TQ_OK or TQ_ETIMEDOUT. */
int tq_result_wait(tq_result_t *self, int timeout_ms);

/* True once the result is final (or the call failed for good). */
bool tq_result_ready(tq_result_t *self);

/* True if ready and the task succeeded. */
bool tq_result_successful(tq_result_t *self);

/* The final code (as tq_result_get returns) or TQ_ETIMEDOUT if not ready. */
int tq_result_code(tq_result_t *self);

/* Last state the broker reported (tq_state_t). */
int tq_result_state(tq_result_t *self);

/* The task's return value, borrowed, valid until destroy; NULL unless
   successful. */
const msgpack_object *tq_result_value(tq_result_t *self);

/* The raw msgpack bytes of the value (borrowed); NULL unless successful. */
const void *tq_result_data(tq_result_t *self, size_t *size);

/* The error text of a failed result (borrowed), "" when there is none.
   A submission that is not final after a tq_result_get timed out says
   here "no connected worker provides TASK (queue Q)" when none does. */
const char *tq_result_error(tq_result_t *self);

/* The task id (borrowed), 32 hex characters for submitted tasks. */
const char *tq_result_id(tq_result_t *self);

/* Attempts the broker made (1 for a task that ran once), from its RESULT;
   0 before then. */
uint32_t tq_result_attempts(tq_result_t *self);

/* Asks the broker to cancel the task: a waiting one ends CANCELLED at
   once, a running one's child gets SIGTERM then SIGKILL, and it ends
   CANCELLED. The handle becomes final when the broker answers (a task that
   was already final keeps its outcome). Returns TQ_OK when the request was
   queued. */
int tq_result_cancel(tq_result_t *self);

/* Cancels every task this client still waits on (as Pool.terminate):
   returns how many cancel requests were sent. */
int tq_client_terminate(tq_client_t *self);

/* Operator requests, synchronous, each waiting up to timeout_ms:
   cancel any task by id (TQ_OK once it is cancelled, TQ_EUNKNOWN, or
   TQ_ESTATE if it had already succeeded or failed); requeue a dead letter (TQ_OK, TQ_EUNKNOWN, TQ_ESTATE if
   the task is not in the dead-letter list); drop the waiting tasks of a
   queue (*purged gets how many); list the dead letters (*body gets the
   REPLY map {"failed": [...]}, the caller's, free with tq_buf_free).
   TQ_ETIMEDOUT or TQ_EUNREACHABLE when the broker does not answer. */
int tq_client_cancel(tq_client_t *self, const char *id, int timeout_ms);
int tq_client_retry(tq_client_t *self, const char *id, int timeout_ms);
int tq_client_purge(tq_client_t *self, const char *queue, uint64_t *purged,
                    int timeout_ms);
int tq_client_failed(tq_client_t *self, tq_buf_t *body, int timeout_ms);

/* Releases the caller's handle; NULL-safe, nulls *self_p. A pending task
   goes on running; its callbacks still fire. */
void tq_result_destroy(tq_result_t **self_p);

#ifdef __cplusplus
}
#endif
#endif
