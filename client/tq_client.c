/* tq_client.c - the client object and the requests callers make: each
   call makes a handle (tq_result.c) and a request record (tq_request.c)
   and pushes the request on a mutex-protected queue, waking the I/O
   thread (tq_client_io.c) through an eventfd. The handle is refcounted:
   one reference for the caller, one for its request until the request
   ends, so either side may let go first. */
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
#include <unistd.h>

#include "tq_batch.h"
#include "tq_client_core.h"
#include "tq_client_internal.h"
#include "tq_curve.h"
#include "tq_endpoint.h"
#include "tq_log.h"
#include "tq_proto.h"
#include "tq_spare.h"

#define S_DEFAULT_LIVENESS_MS 3000
#define S_SEND_HWM 10000 /* messages queued in libzmq before we hold them */
/* arguments up to this size live in the zmq_msg_t (libzmq's "very small
   message", 33 bytes) */
#define S_INLINE_ARGS 32

/* Why the last call of this thread that returned NULL failed before it
   reached the broker (tq_client_last_error). */
static _Thread_local int s_last_code;
/* This thread waits for the request it makes now (tq_apply). */
static _Thread_local bool s_will_wait;
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

void
tq_client_count_move(tq_client_t *self, tq_req_state_t from, tq_req_state_t to)
{
    atomic_fetch_add_explicit(&self->moves[from][to], 1, memory_order_relaxed);
}

uint64_t
tq_client_moves(tq_client_t *self, tq_req_state_t from, tq_req_state_t to)
{
    assert(self);
    assert(from < TQ_REQ_STATES_ && to < TQ_REQ_STATES_);
    return atomic_load(&self->moves[from][to]);
}

uint64_t
tq_client_broker_moves(tq_client_t *self)
{
    assert(self);
    return atomic_load(&self->broker_moves);
}

uint64_t
tq_client_led(tq_client_t *self)
{
    return atomic_load(&self->led);
}

uint64_t
tq_client_sent_by_caller(tq_client_t *self)
{
    return atomic_load(&self->sent_by_caller);
}

uint32_t
tq_client_peer_features(tq_client_t *self)
{
    return atomic_load(&self->peer_features);
}

uint64_t
tq_client_batches_sent(tq_client_t *self)
{
    return atomic_load(&self->batches_sent);
}

uint64_t
tq_client_batched_sent(tq_client_t *self)
{
    return atomic_load(&self->batched_sent);
}

uint64_t
tq_client_batches_read(tq_client_t *self)
{
    return atomic_load(&self->batches_read);
}

uint64_t
tq_client_malformed(tq_client_t *self)
{
    return atomic_load(&self->malformed);
}

const char *
tq_client_current_endpoint(tq_client_t *self)
{
    return self->endpoints[atomic_load(&self->current)];
}

/* ---- the socket --------------------------------------------------------- */

int
tq_client_socket_open(tq_client_t *self, const char *endpoint)
{
    void *ctx = tq_client_context();
    if (!ctx)
        return -1;
    self->socket = zmq_socket(ctx, ZMQ_DEALER);
    if (!self->socket)
        return -1;
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
        tq_client_socket_close(self);
        return -1;
    }
    /* unique per socket ever made: a closed socket's monitor endpoint may
       still be bound for a moment */
    static atomic_uint s_monitors;
    char monitor[64];
    snprintf(monitor, sizeof monitor, "inproc://tq-client-monitor-%ld-%u",
             (long)getpid(), atomic_fetch_add(&s_monitors, 1));
    if (zmq_socket_monitor(self->socket, monitor,
                           ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) != 0)
        zsys_warning("tq client: no socket monitor: %s", zmq_strerror(errno));
    else {
        self->monitor_reader = zmq_socket(ctx, ZMQ_PAIR);
        if (self->monitor_reader &&
            zmq_connect(self->monitor_reader, monitor) != 0) {
            zmq_close(self->monitor_reader);
            self->monitor_reader = NULL;
        }
        if (!self->monitor_reader)
            zmq_socket_monitor(self->socket, NULL, 0);
    }
    if (zmq_connect(self->socket, endpoint) != 0) {
        zsys_error("tq client: cannot connect to %s: %s", endpoint,
                   zmq_strerror(errno));
        tq_client_socket_close(self);
        return -1;
    }
    return 0;
}

void
tq_client_socket_close(tq_client_t *self)
{
    if (self->socket)
        zmq_socket_monitor(self->socket, NULL, 0);
    if (self->monitor_reader)
        zmq_close(self->monitor_reader);
    if (self->socket)
        zmq_close(self->socket);
    self->monitor_reader = self->socket = NULL;
}

/* Splits self->endpoint (one endpoint or a comma-separated list) into
   self->endpoints. TQ_OK, or TQ_EINVAL with the reason in why. */
static int
s_split_endpoints(tq_client_t *self, char *why, size_t size)
{
    const char *p = self->endpoint;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t'))
            p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len == 0) {
            snprintf(why, size, "an empty endpoint in the list \"%s\"",
                     self->endpoint);
            return TQ_EINVAL;
        }
        if (self->endpoint_count == TQ_CLIENT_MAX_ENDPOINTS) {
            snprintf(why, size, "more than %d endpoints in \"%s\"",
                     TQ_CLIENT_MAX_ENDPOINTS, self->endpoint);
            return TQ_EINVAL;
        }
        char *ep = strndup(p, len);
        if (!ep) {
            snprintf(why, size, "out of memory");
            return TQ_ENOMEM;
        }
        self->endpoints[self->endpoint_count++] = ep;
        p += len;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == ',') {
            p++;
            if (!*p) {
                snprintf(why, size, "an empty endpoint in the list \"%s\"",
                         self->endpoint);
                return TQ_EINVAL;
            }
        }
    }
    if (self->endpoint_count == 0) {
        snprintf(why, size, "no endpoint");
        return TQ_EINVAL;
    }
    /* a list is checked whole now: the client moves to each later */
    for (size_t i = 0; self->endpoint_count > 1 && i < self->endpoint_count;
         i++)
        if (!tq_endpoint_check(self->endpoints[i], false, why, size))
            return TQ_EINVAL;
    return TQ_OK;
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

/* The two lowercase hex digits of each byte value, "00" to "ff". */
static const char s_hex_pairs[] = "000102030405060708090a0b0c0d0e0f"
                                  "101112131415161718191a1b1c1d1e1f"
                                  "202122232425262728292a2b2c2d2e2f"
                                  "303132333435363738393a3b3c3d3e3f"
                                  "404142434445464748494a4b4c4d4e4f"
                                  "505152535455565758595a5b5c5d5e5f"
                                  "606162636465666768696a6b6c6d6e6f"
                                  "707172737475767778797a7b7c7d7e7f"
                                  "808182838485868788898a8b8c8d8e8f"
                                  "909192939495969798999a9b9c9d9e9f"
                                  "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
                                  "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
                                  "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
                                  "d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
                                  "e0e1e2e3e4e5e6e7e8e9eaebecedeeef"
                                  "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

/* Writes n as 16 lowercase hex digits (no NUL), a byte at a time. */
static void
s_hex64(char *dst, uint64_t n)
{
    for (int i = 7; i >= 0; i--, n >>= 8)
        memcpy(dst + 2 * i, s_hex_pairs + 2 * (n & 0xff), 2);
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
    pthread_mutex_init(&self->io_lock, NULL);
    atomic_init(&self->liveness_ms, S_DEFAULT_LIVENESS_MS);
    atomic_init(&self->id_counter, 0);
    atomic_init(&self->current, 0);
    /* TQ_NO_BATCH: every request alone, and none batched from the broker
       (to compare, or for a peer in between that does not pass BATCH) */
    const char *no_batch = getenv("TQ_NO_BATCH");
    atomic_init(&self->no_batch,
                no_batch &&
                    (!strcmp(no_batch, "1") || !strcmp(no_batch, "yes") ||
                     !strcmp(no_batch, "true") || !strcmp(no_batch, "on")));
    self->endpoint = strdup(endpoint);
    if (getrandom(&self->id_prefix, sizeof self->id_prefix, 0) !=
        sizeof self->id_prefix) {
        /* no entropy source: still unique enough per process and moment */
        self->id_prefix = (uint64_t)getpid() << 32 ^ (uint64_t)zclock_time();
    }
    s_hex64(self->id_hex, self->id_prefix);
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    void *ctx = tq_client_context();
    if (!self->endpoint || self->wake_fd < 0 || !ctx)
        goto fail;
    char why[256];
    if (s_split_endpoints(self, why, sizeof why) != TQ_OK) {
        zsys_error("tq client: %s", why);
        goto fail;
    }
    /* one socket talks to one broker at a time: the first of the list */
    if (tq_client_socket_open(self, self->endpoints[0]) != 0)
        goto fail;
    self->actor = zactor_new(tq_client_io_actor, self);
    if (!self->actor)
        goto fail;
    self->pid = getpid();
    pthread_mutex_lock(&s_live_lock);
    self->live_next = s_live;
    if (s_live)
        s_live->live_prev = self;
    s_live = self;
    pthread_mutex_unlock(&s_live_lock);
    tq_spare_users(1);
    return self;
fail:
    tq_client_socket_close(self);
    if (self->wake_fd >= 0)
        close(self->wake_fd);
    pthread_mutex_destroy(&self->lock);
    pthread_mutex_destroy(&self->io_lock);
    for (size_t i = 0; i < self->endpoint_count; i++)
        free(self->endpoints[i]);
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
    /* returns once the actor function has returned: it closed the socket
       and its monitor */
    zactor_destroy(&self->actor);
    tq_client_socket_close(self);
    close(self->wake_fd);
    pthread_mutex_destroy(&self->lock);
    pthread_mutex_destroy(&self->io_lock);
    for (size_t i = 0; i < self->endpoint_count; i++)
        free(self->endpoints[i]);
    free(self->endpoint);
    free(self);
    tq_spare_users(-1);
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

void
tq_client_set_fold(tq_client_t *self, bool fold)
{
    assert(self);
    atomic_store(&self->no_fold, !fold);
}

void
tq_client_set_batch(tq_client_t *self, bool batch)
{
    assert(self);
    atomic_store(&self->no_batch, !batch);
}

const char *
tq_client_endpoint(tq_client_t *self)
{
    assert(self);
    return self->endpoint;
}

/* ---- requests ----------------------------------------------------------- */

/* A caller's request, its handle and the names it carries, in one
   allocation: the handle is its start and frees it all with its last
   reference, which goes after the request ended (a request holds one on
   its handle until then). */
typedef struct {
    tq_result_t result;
    tq_request_t request;
    char names[]; /* the request's task and queue, each with its NUL */
} s_block_t;

/* A handle of kind (the caller's reference) and its request (holding the
   other), with the request's task (tlen bytes; NULL: none) and queue
   (qlen bytes; NULL: none) copied in, which a SUBMIT's handle knows too
   (names). NULL on ENOMEM. */
static tq_request_t *
s_request_make(tq_client_t *self, tq_req_kind_t kind, const char *task,
               size_t tlen, const char *queue, size_t qlen)
{
    size_t size =
        sizeof(s_block_t) + (task ? tlen + 1 : 0) + (queue ? qlen + 1 : 0);
    s_block_t *b = (s_block_t *)tq_result_make_sized(kind, self, size);
    if (!b)
        return NULL;
    tq_request_t *r = &b->request;
    tq_request_init(r, kind, &b->result);
    r->embedded = true;
    char *names = b->names;
    if (task) {
        memcpy(names, task, tlen);
        names[tlen] = 0;
        r->task = names;
        r->task_len = tlen;
        names += tlen + 1;
    }
    if (queue) {
        memcpy(names, queue, qlen);
        names[qlen] = 0;
        r->queue = names;
        r->queue_len = qlen;
    }
    if (kind == TQ_KIND_SUBMIT && task && queue) {
        b->result.names = b->names; /* "task\0queue" */
        b->result.names_inline = true;
    }
    tq_result_ref(&b->result); /* the request's */
    return r;
}

/* Frees a request made by s_request_make that was never pushed, with its
   handle. */
static void
s_request_drop(tq_request_t *r)
{
    tq_result_t *result = r->result;
    tq_request_free(r);
    tq_result_unref(result);
    tq_result_unref(result);
}

/* Sets the id of a request and of its handle. */
static void
s_request_id(tq_request_t *r, const char *id)
{
    size_t len = strnlen(id, sizeof r->id - 1);
    memcpy(r->id, id, len);
    r->id[len] = 0;
    if (r->result)
        memcpy(r->result->id, r->id, len + 1);
}

/* Gives an operator request (STATUS, PURGE, FAILED) an id of its own,
   which the broker echoes in its answer: answers are matched by it, so a
   dropped one cannot shift the others (PROTOCOL.md section 10). */
static void
s_request_own_id(tq_client_t *self, tq_request_t *r)
{
    char id[TQ_PROTO_MAX_ID + 1];
    uint64_t n = atomic_fetch_add(&self->id_counter, 1);
    snprintf(id, sizeof id, "o%016" PRIx64 "%016" PRIx64, self->id_prefix, n);
    s_request_id(r, id);
}

/* Hands a request (NEW) to the I/O thread, or fails it if the client is
   closed. Returns its handle (borrowed: the caller's reference). */
static tq_result_t *
s_client_push(tq_client_t *self, tq_request_t *r)
{
    tq_result_t *result = r->result;
    /* io_lock before lock, as the I/O thread takes them */
    bool held = r->kind != TQ_KIND_TERMINATE && tq_client_io_lock(self, 0);
    pthread_mutex_lock(&self->lock);
    if (self->closed) {
        if (held)
            pthread_mutex_unlock(&self->io_lock);
        pthread_mutex_unlock(&self->lock);
        if (result)
            tq_result_fail(result, TQ_ECLOSED, "the client was closed");
        tq_request_move(r, TQ_REQ_FAILED);
        tq_client_count_move(self, TQ_REQ_NEW, TQ_REQ_FAILED);
        r->result = NULL;
        tq_request_free(r);
        tq_result_unref(result);
        return result;
    }
    /* the I/O thread asleep and nothing else awaited: this thread sends
       it (after what was queued before it), without waking the I/O
       thread. A burst (requests awaited already) goes to the I/O thread,
       which sends it in batches while this thread makes more, but for a
       payload too large for a BATCH, which goes alone anyway. Not
       TERMINATE, which runs callbacks of handles; the trylock also keeps
       a callback (run by whoever holds io_lock) from waiting on itself. */
    bool alone = (r->kind == TQ_KIND_SUBMIT || r->kind == TQ_KIND_QPUT) &&
        zmq_msg_size(&r->payload) > TQ_BATCH_MAX_PAYLOAD;
    /* io_lock was just found taken (held false): the I/O thread, or
       another caller, has the socket and takes the queue next */
    if (held && tq_client_io_try_send(self, held, alone)) {
        tq_request_t *queued = self->queue_head;
        self->queue_head = self->queue_tail = NULL;
        pthread_mutex_unlock(&self->lock);
        r->next = NULL;
        tq_client_io_send_now(self, queued, r, s_will_wait);
        return result;
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
    return result;
}

static void
s_free_buffer(void *data, void *hint)
{
    (void)hint;
    /* kept a moment: a result arriving soon takes it (tq_spare.h) */
    tq_spare_put(data);
}

/* The last task and queue names this thread submitted, known valid. */
static _Thread_local tq_name_memo_t s_task_memo, s_queue_memo;

/* Makes a submission; args_owned (malloc'd, size bytes) is taken over when
   non-NULL, else args is copied. args_checked: the arguments are a
   well-formed array by construction (packed here), not checked again.
   NULL on invalid input or ENOMEM, with the reason for
   tq_client_last_error. */
static tq_result_t *
s_submit(tq_client_t *self, const char *task, const tq_options_t *options,
         void *args_owned, const void *args, size_t size, bool args_checked)
{
    assert(self);
    tq_options_t none = TQ_OPTIONS_INIT;
    if (!options)
        options = &none;
    const char *queue = options->queue ? options->queue : TQ_DEFAULT_QUEUE;
    const char *reason = NULL;
    size_t tlen = task ? tq_name_memo_check(&s_task_memo, task) : 0;
    size_t qlen = tlen ? tq_name_memo_check(&s_queue_memo, queue) : 0;
    const char *why = tlen == 0
        ? "invalid task name (1-255 of [0-9A-Za-z_.:@/-])"
        : qlen == 0 ? "invalid queue name (1-255 of [0-9A-Za-z_.:@/-])"
        : options->priority < 0 || options->priority > TQ_PRIORITY_MAX
        ? "priority out of range (0..9)"
        : options->time_limit_ms < 0 ? "negative time_limit_ms"
        : options->retries < 0 || options->retries > TQ_PROTO_MAX_RETRIES
        ? "retries out of range (0..1000)"
        : options->retry_backoff_ms < 0 ? "negative retry_backoff_ms"
        : options->countdown_ms < 0     ? "negative countdown_ms"
        : options->id && !tq_proto_valid_id(options->id, strlen(options->id))
        ? "invalid id (1-64 of [0-9A-Za-z_.-])"
        : !args_checked &&
            tq_proto_check_payload(args_owned ? args_owned : args, size, true,
                                   &reason) != TQ_OK
        ? "invalid arguments"
        : NULL;
    if (why) {
        s_set_last_error(TQ_EINVAL, "%s%s%s", why, reason ? ": " : "",
                         reason ? reason : "");
        free(args_owned);
        return NULL;
    }
    tq_request_t *r =
        s_request_make(self, TQ_KIND_SUBMIT, task, tlen, queue, qlen);
    if (!r) {
        s_set_last_error(TQ_ENOMEM, "out of memory making the request");
        free(args_owned);
        return NULL;
    }
    tq_result_t *result = r->result;
    if (options->id) {
        s_request_id(r, options->id);
        /* the caller's id may be a resubmission the broker knows */
        r->reget = true;
    } else {
        /* "%016x%016x" of prefix and counter, without printf */
        memcpy(r->id, self->id_hex, 16);
        s_hex64(r->id + 16, atomic_fetch_add(&self->id_counter, 1));
        r->id[32] = 0;
        memcpy(result->id, r->id, 33);
    }
    r->retries = (uint32_t)options->retries;
    /* the documented default; the broker doubles it and adds jitter */
    r->backoff_ms =
        options->retry_backoff_ms ? (uint32_t)options->retry_backoff_ms : 1000;
    r->delay_ms = (uint32_t)options->countdown_ms;
    r->block_when_full = options->block_when_full;
    r->priority = (uint32_t)options->priority;
    r->time_limit_ms = (uint32_t)options->time_limit_ms;
    result->callback = options->callback;
    result->error_callback = options->error_callback;
    result->callback_arg = options->callback_arg;
    int rc;
    if (args_owned && size <= S_INLINE_ARGS) {
        /* small: inside the message itself (no allocation, and each
           send's copy is a copy of a few bytes, not a shared buffer) */
        if ((rc = zmq_msg_init_size(&r->payload, size)) == 0)
            memcpy(zmq_msg_data(&r->payload), args_owned, size);
        free(args_owned);
        args_owned = NULL;
    } else if (args_owned)
        rc = zmq_msg_init_data(&r->payload, args_owned, size, s_free_buffer,
                               NULL);
    else if ((rc = zmq_msg_init_size(&r->payload, size)) == 0)
        memcpy(zmq_msg_data(&r->payload), args, size);
    if (rc != 0) {
        free(args_owned);
        s_request_drop(r);
        s_set_last_error(TQ_ENOMEM, "out of memory making the request");
        return NULL;
    }
    return s_client_push(self, r);
}

/* Packs picture's arguments from ap and submits them (s_submit). Small
   arguments are packed on the stack and copied into the request's
   message: no allocation for them. */
static tq_result_t *
s_vsubmit(tq_client_t *self, const char *task, const tq_options_t *options,
          const char *picture, va_list ap)
{
    char small[S_INLINE_ARGS];
    tq_buf_t buf;
    int rc = tq_vpack_small(&buf, small, sizeof small, picture, ap);
    if (rc != TQ_OK) {
        s_set_last_error(rc, "picture \"%s\": an unknown character",
                         picture ? picture : "(null)");
        return NULL;
    }
    /* packed from the picture, a well-formed array, but for a raw element
       ('m'), checked alone, whose depth counts in the array's */
    bool checked = !picture || !strchr(picture, 'm');
    if (buf.data == small)
        return s_submit(self, task, options, NULL, small, buf.size, checked);
    return s_submit(self, task, options, buf.data, NULL, buf.size, checked);
}

tq_result_t *
tq_apply_async(tq_client_t *self, const char *task, const tq_options_t *options,
               const char *picture, ...)
{
    va_list ap;
    va_start(ap, picture);
    tq_result_t *r = s_vsubmit(self, task, options, picture, ap);
    va_end(ap);
    return r;
}

tq_result_t *
tq_apply_async_raw(tq_client_t *self, const char *task,
                   const tq_options_t *options, const void *args, size_t size)
{
    if (!args) {
        s_set_last_error(TQ_EINVAL, "no arguments (NULL)");
        return NULL;
    }
    return s_submit(self, task, options, NULL, args, size, false);
}

tq_result_t *
tq_apply(tq_client_t *self, const char *task, const tq_options_t *options,
         int timeout_ms, const char *picture, ...)
{
    va_list ap;
    va_start(ap, picture);
    s_will_wait = true;
    tq_result_t *r = s_vsubmit(self, task, options, picture, ap);
    s_will_wait = false;
    va_end(ap);
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
    int64_t deadline = tq_result_deadline(timeout_ms);
    int first = TQ_OK;
    for (size_t i = 0; i < count; i++) {
        results[i] =
            tq_apply_async_raw(self, task, options, args[i].data, args[i].size);
        if (!results[i] && first == TQ_OK)
            first = TQ_EINVAL;
    }
    for (size_t i = 0; i < count; i++) {
        if (!results[i])
            continue;
        if (timeout_ms != 0)
            tq_result_wait_until(results[i], deadline);
        int rc = tq_result_code(results[i]);
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
    /* a SUBMIT that ended without an answer left its request to the
       handle (s_io_end): the same task, options and arguments */
    pthread_mutex_lock(&old->mutex);
    bool final = old->phase >= TQ_RESULT_FINAL;
    int code = old->code;
    const tq_request_t *spare = old->spare;
    tq_request_t *r = NULL;
    bool copied = false;
    if (final && code == TQ_EUNREACHABLE && spare && old->client &&
        spare->kind == TQ_KIND_SUBMIT && spare->task && spare->queue) {
        r = s_request_make(old->client, TQ_KIND_SUBMIT, spare->task,
                           strlen(spare->task), spare->queue,
                           strlen(spare->queue));
        copied = r && tq_request_copy_submit(r, spare) == 0;
    }
    pthread_mutex_unlock(&old->mutex);
    if (!copied) {
        if (r)
            s_request_drop(r);
        return NULL;
    }
    tq_result_t *result = r->result;
    memcpy(result->id, r->id, sizeof result->id);
    result->callback = callback;
    result->error_callback = error_callback;
    result->callback_arg = callback_arg;
    return s_client_push(result->client, r);
}

tq_result_t *
tq_client_fetch(tq_client_t *self, const char *id, bool wait)
{
    assert(self);
    if (!id || !tq_proto_valid_id(id, strlen(id))) {
        s_set_last_error(TQ_EINVAL, "invalid id (1-64 of [0-9A-Za-z_.-])");
        return NULL;
    }
    tq_request_t *r = s_request_make(self, TQ_KIND_GET, NULL, 0, NULL, 0);
    if (!r) {
        s_set_last_error(TQ_ENOMEM, "out of memory making the request");
        return NULL;
    }
    s_request_id(r, id);
    r->wait = wait;
    return s_client_push(self, r);
}

/* Copies a REPLY or STATUS_REPLY body out of r into body. */
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

/* Runs one synchronous request: pushes r and waits up to timeout_ms.
   Returns the handle's code (TQ_ETIMEDOUT if it did not end) and the
   handle (the caller's) in *result_p. */
static int
s_sync(tq_client_t *self, tq_request_t *r, int timeout_ms,
       tq_result_t **result_p)
{
    tq_result_t *result = s_client_push(self, r);
    *result_p = result;
    int rc = tq_result_get(result, timeout_ms);
    if (rc != TQ_OK && rc != TQ_ETIMEDOUT)
        s_set_last_error(rc, "%s",
                         tq_result_error(result) ? tq_result_error(result)
                                                 : tq_strerror(rc));
    return rc;
}

int
tq_client_status(tq_client_t *self, tq_buf_t *body, int timeout_ms)
{
    assert(self);
    assert(body);
    body->data = NULL;
    body->size = 0;
    tq_request_t *r = s_request_make(self, TQ_KIND_STATUS, NULL, 0, NULL, 0);
    if (!r)
        return TQ_ENOMEM;
    s_request_own_id(self, r);
    tq_result_t *result;
    int rc = s_sync(self, r, timeout_ms, &result);
    if (rc == TQ_OK)
        rc = s_copy_body(result, body);
    tq_result_destroy(&result);
    return rc;
}

/* ---- cancellation and operator requests --------------------------------- */

int
tq_result_cancel(tq_result_t *self)
{
    assert(self);
    bool final = tq_result_final(self);
    if (final || !self->client || self->kind == TQ_KIND_STATUS)
        return final ? TQ_OK : TQ_EINVAL; /* final: keeps its outcome */
    /* a CANCEL nobody waits on: the handle's request is in the chain of
       its id, so the broker's RESULT for the cancel makes it final */
    tq_request_t *r = tq_request_new(TQ_KIND_CANCEL, NULL);
    if (!r)
        return TQ_ENOMEM;
    snprintf(r->id, sizeof r->id, "%s", self->id);
    s_client_push(self->client, r);
    return TQ_OK;
}

int
tq_client_terminate(tq_client_t *self)
{
    assert(self);
    tq_request_t *r = s_request_make(self, TQ_KIND_TERMINATE, NULL, 0, NULL, 0);
    if (!r)
        return 0;
    tq_result_t *result = s_client_push(self, r);
    /* the I/O thread answers at once; bounded all the same */
    int count = 0;
    if (tq_result_wait(result, 10000) == TQ_OK) {
        pthread_mutex_lock(&result->mutex);
        count = result->count;
        pthread_mutex_unlock(&result->mutex);
    }
    tq_result_destroy(&result);
    return count;
}

tq_result_t *
tq_client_queue_request(tq_client_t *self, tq_queue_op_t op, const char *queue,
                        uint32_t maxsize, uint32_t wait_ms, const void *item,
                        size_t size)
{
    assert(self);
    if (!queue || !tq_proto_valid_name(queue, strlen(queue)))
        return NULL;
    if (op == TQ_QUEUE_PUT &&
        tq_proto_check_payload(item, size, false, NULL) != TQ_OK)
        return NULL;
    tq_req_kind_t kind = op == TQ_QUEUE_PUT ? TQ_KIND_QPUT
        : op == TQ_QUEUE_GET                ? TQ_KIND_QGET
                                            : TQ_KIND_QSIZE;
    tq_request_t *r = s_request_make(self, kind, NULL, 0, queue, strlen(queue));
    if (!r)
        return NULL;
    char id[TQ_PROTO_MAX_ID + 1];
    uint64_t n = atomic_fetch_add(&self->id_counter, 1);
    snprintf(id, sizeof id, "q%016" PRIx64 "%016" PRIx64, self->id_prefix, n);
    s_request_id(r, id);
    r->maxsize = maxsize;
    r->time_limit_ms = wait_ms;
    int rc = 0;
    if (op == TQ_QUEUE_PUT && (rc = zmq_msg_init_size(&r->payload, size)) == 0)
        memcpy(zmq_msg_data(&r->payload), item, size);
    if (rc != 0) {
        s_request_drop(r);
        return NULL;
    }
    return s_client_push(self, r);
}

/* Sends a request of `kind` about task id and waits for its answer.
   Returns its code and, when result_p is not NULL, the handle (the
   caller's). */
static int
s_sync_id(tq_client_t *self, tq_req_kind_t kind, const char *id, int timeout_ms,
          tq_result_t **result_p)
{
    assert(self);
    if (!id || !tq_proto_valid_id(id, strlen(id)))
        return TQ_EINVAL;
    tq_request_t *r = s_request_make(self, kind, NULL, 0, NULL, 0);
    if (!r)
        return TQ_ENOMEM;
    s_request_id(r, id);
    tq_result_t *result;
    int rc = s_sync(self, r, timeout_ms, &result);
    if (result_p)
        *result_p = result;
    else
        tq_result_destroy(&result);
    return rc;
}

int
tq_client_cancel(tq_client_t *self, const char *id, int timeout_ms)
{
    tq_result_t *r = NULL;
    int rc = s_sync_id(self, TQ_KIND_CANCEL, id, timeout_ms, &r);
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
    return s_sync_id(self, TQ_KIND_RETRY, id, timeout_ms, NULL);
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
    tq_request_t *r =
        s_request_make(self, TQ_KIND_PURGE, NULL, 0, queue, strlen(queue));
    if (!r)
        return TQ_ENOMEM;
    s_request_own_id(self, r);
    tq_result_t *result;
    int rc = s_sync(self, r, timeout_ms, &result);
    if (rc == TQ_OK && purged) {
        /* REPLY {"queue": str, "purged": uint} */
        const msgpack_object *map = tq_result_value(result);
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
    tq_result_destroy(&result);
    return rc;
}

int
tq_client_failed(tq_client_t *self, tq_buf_t *body, int timeout_ms)
{
    assert(self);
    assert(body);
    body->data = NULL;
    body->size = 0;
    tq_request_t *r = s_request_make(self, TQ_KIND_FAILED, NULL, 0, NULL, 0);
    if (!r)
        return TQ_ENOMEM;
    s_request_own_id(self, r);
    tq_result_t *result;
    int rc = s_sync(self, r, timeout_ms, &result);
    if (rc == TQ_OK)
        rc = s_copy_body(result, body);
    tq_result_destroy(&result);
    return rc;
}
