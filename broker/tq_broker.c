/* tq_broker.c - the broker loop: clients submit and fetch, worker children
   pull with credit, supervisors heartbeat and report dead children. One
   thread, no locks; payloads are kept as zmq_msg_t and never decoded. */
#include "tq_broker.h"

#include <czmq.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "tq/tq_error.h"
#include "tq_proto.h"
#include "tq_wire.h"

#define PRIORITIES 10        /* 0..9, TQ_PRIORITY_MAX + 1 */
#define BATCH 512            /* messages drained per socket per pass */
#define IDENT_INLINE 24      /* routing ids up to this size stay inline */
#define HEARTBEAT_MS 1000    /* PROTOCOL.md section 10 */
#define LIVENESS_MS 3000
#define MAX_MESSAGE (64 << 20) /* ZMQ_MAXMSGSIZE on both endpoints */
#define LOG_BURST 20         /* log lines about bad input per second */

/* A ZeroMQ routing id, inline when short (the default ids are 5 bytes). */
typedef struct {
    uint8_t size;
    uint8_t bytes[IDENT_INLINE];
    uint8_t *heap; /* when size > IDENT_INLINE */
} ident_t;

typedef struct queue_s queue_t;
typedef struct lane_s lane_t;
typedef struct task_s task_t;
typedef struct worker_s worker_t;

/* A task. It sits on exactly one list through prev/next: its lane while
   waiting, its worker's held list while running, the expiry list once
   final. */
struct task_s {
    char id[TQ_PROTO_MAX_ID + 1];
    lane_t *lane;
    uint8_t priority;
    uint8_t state;         /* tq_state_t */
    uint32_t time_limit_ms;
    uint32_t attempt;      /* lease: incremented at every dispatch */
    uint32_t lost;         /* worker deaths while it ran */
    uint32_t code;         /* final: tq_err_t */
    uint64_t seq;          /* submission order */
    zmq_msg_t payload;     /* args until final, then the value */
    char *error;           /* final: error text, or NULL */
    ident_t client;        /* submitter; size 0 once answered */
    ident_t *waiters;      /* clients blocked in GET wait=true */
    uint32_t waiter_count;
    worker_t *worker;      /* holder while RUNNING */
    int64_t expires_ms;    /* final: monotonic ms when forgotten */
    task_t *prev, *next;
};

/* The tasks of one queue and one task name, a FIFO per priority: dispatch
   only has to look at lanes whose task name the worker provides. */
struct lane_s {
    queue_t *queue;
    const char *task;      /* interned */
    task_t *head[PRIORITIES], *tail[PRIORITIES];
    uint32_t waiting;
    lane_t *next;
};

struct queue_s {
    const char *name;      /* interned */
    lane_t *lanes;
    uint32_t waiting, running;
    queue_t *next;
};

/* A peer on the workers endpoint: a worker child (after READY) or a
   supervisor (after its first HEARTBEAT). */
struct worker_s {
    bool supervisor;
    ident_t ident;
    char key[2 * 255 + 1];    /* hex of ident, the peers table key */
    char host[TQ_PROTO_MAX_NAME + 1];
    uint64_t pid, ppid;
    uint32_t credit, held;
    uint64_t done;
    queue_t **queues;
    uint32_t queue_count;
    const char **tasks;       /* interned */
    uint32_t task_count;
    task_t *held_head, *held_tail;
    int64_t last_seen_ms;
    worker_t *prev, *next;    /* the children list, or the supervisors */
};

typedef struct {
    uint64_t submitted, completed, failed, requeued, lost, duplicates,
        malformed, errors, dropped;
} counters_t;

struct tq_broker_t {
    tq_broker_config_t config;
    void *ctx;
    void *clients;           /* ROUTER */
    void *workers;           /* ROUTER */
    int wakeup;              /* eventfd written by tq_broker_stop */
    char client_endpoint[256];
    char worker_endpoint[256];
    char hostname[TQ_PROTO_MAX_NAME + 1];
    zhashx_t *tasks;         /* id -> task_t */
    zhashx_t *names;         /* interned task and queue names */
    zhashx_t *queue_index;   /* name -> queue_t */
    queue_t *queues;
    zhashx_t *peers;         /* ident hex -> worker_t */
    worker_t *children, *children_tail;
    worker_t *supervisors;
    task_t *expiry_head, *expiry_tail;
    uint64_t seq;
    uint64_t results_kept;
    int64_t started_ms;
    int64_t now_ms;
    int64_t next_check_ms;
    int64_t log_window_ms;
    int log_count;
    bool dispatch_due;
    volatile bool stopping;
    counters_t counters;
    tq_frames_t frames;
    tq_msg_t in;             /* decoded input, reused */
    tq_msg_t out;            /* reply being built, reused */
    msgpack_sbuffer sbuf;    /* header encoding buffer, reused */
};

typedef void(s_handler_fn)(tq_broker_t *self, const tq_msg_t *msg);

static int64_t
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Out of memory in the broker is fatal: one path, not a code per call. */
static void *
s_alloc(size_t size)
{
    void *p = calloc(1, size);
    if (!p) {
        fprintf(stderr, "tq-broker: out of memory\n");
        abort();
    }
    return p;
}

static char *
s_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = s_alloc(n);
    memcpy(p, s, n);
    return p;
}

/* Logs a problem caused by a peer, at most LOG_BURST lines a second so a
   flood of garbage cannot flood the log too. */
static void
s_warn(tq_broker_t *self, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
static void
s_warn(tq_broker_t *self, const char *format, ...)
{
    if (self->now_ms - self->log_window_ms >= 1000) {
        if (self->log_count > LOG_BURST)
            fprintf(stderr, "tq-broker: (%d more lines suppressed)\n",
                    self->log_count - LOG_BURST);
        self->log_window_ms = self->now_ms;
        self->log_count = 0;
    }
    if (++self->log_count > LOG_BURST)
        return;
    va_list ap;
    va_start(ap, format);
    fputs("tq-broker: ", stderr);
    vfprintf(stderr, format, ap);
    fputc('\n', stderr);
    va_end(ap);
}

#define s_debug(self, ...)                                                     \
    do {                                                                       \
        if ((self)->config.verbose) {                                          \
            fputs("tq-broker: ", stderr);                                      \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

/* ---- routing ids ---- */

static void
s_ident_set(ident_t *ident, const void *data, size_t size)
{
    assert(size <= 255);
    free(ident->heap);
    ident->heap = NULL;
    ident->size = (uint8_t) size;
    if (size > IDENT_INLINE) {
        ident->heap = s_alloc(size);
        memcpy(ident->heap, data, size);
    } else
        memcpy(ident->bytes, data, size);
}

static const uint8_t *
s_ident_data(const ident_t *ident)
{
    return ident->heap ? ident->heap : ident->bytes;
}

static void
s_ident_clear(ident_t *ident)
{
    free(ident->heap);
    ident->heap = NULL;
    ident->size = 0;
}

static void
s_hex(char *dst, const uint8_t *data, size_t size)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < size; i++) {
        dst[2 * i] = digits[data[i] >> 4];
        dst[2 * i + 1] = digits[data[i] & 15];
    }
    dst[2 * size] = 0;
}

/* ---- sending ---- */

/* Sends self->out to ident on socket with an optional payload (moved).
   Returns 0, or -1 with errno when the peer is gone (counted as dropped). */
static int
s_send_to(tq_broker_t *self, void *socket, const ident_t *ident,
          zmq_msg_t *payload)
{
    zmq_msg_t id;
    zmq_msg_init_size(&id, ident->size);
    memcpy(zmq_msg_data(&id), s_ident_data(ident), ident->size);
    const char *reason = NULL;
    int rc = tq_wire_send_msg(socket, &id, &self->out, &self->sbuf, payload,
                              ZMQ_DONTWAIT);
    zmq_msg_close(&id);
    if (rc == TQ_EINVAL) {
        /* our own message broke the protocol's rules: a bug */
        tq_proto_encode(&self->out, &self->sbuf, &reason);
        fprintf(stderr, "tq-broker: cannot encode %s: %s\n",
                tq_proto_command_name(self->out.command),
                reason ? reason : "?");
        abort();
    }
    if (rc != 0) {
        int err = errno;
        self->counters.dropped++;
        s_debug(self, "send %s failed: %s",
                tq_proto_command_name(self->out.command), zmq_strerror(err));
        errno = err;
        return -1;
    }
    return 0;
}

/* Starts building a reply in self->out. */
static tq_msg_t *
s_out(tq_broker_t *self, uint8_t command)
{
    tq_msg_t *out = &self->out;
    out->command = command;
    out->id = (tq_str_t){0};
    out->task = (tq_str_t){0};
    out->queue = (tq_str_t){0};
    out->error = (tq_str_t){0};
    out->host = (tq_str_t){0};
    out->priority = out->time_limit_ms = out->attempt = 0;
    out->state = out->code = out->credit = 0;
    out->pid = out->ppid = 0;
    out->wait = false;
    out->queue_count = out->task_count = 0;
    return out;
}

/* The identity of the message being handled. */
static ident_t
s_sender(tq_broker_t *self)
{
    ident_t ident = {0};
    size_t size = zmq_msg_size(&self->frames.identity);
    if (size > 255)
        size = 255;
    ident.size = (uint8_t) size;
    if (size > IDENT_INLINE)
        ident.heap = (uint8_t *) zmq_msg_data(&self->frames.identity);
    else
        memcpy(ident.bytes, zmq_msg_data(&self->frames.identity), size);
    return ident; /* borrowed: never s_ident_clear it */
}

/* Answers the current sender with ERROR. */
static void
s_reply_error(tq_broker_t *self, void *socket, int code, const char *text,
              tq_str_t id)
{
    tq_msg_t *out = s_out(self, TQ_CMD_ERROR);
    out->code = (uint32_t) code;
    out->error = tq_str(text);
    if (id.ptr && tq_proto_valid_id(id.ptr, id.len))
        out->id = id;
    ident_t to = s_sender(self);
    s_send_to(self, socket, &to, NULL);
}

/* Answers the current sender with a payload-less command. */
static void
s_reply(tq_broker_t *self, void *socket)
{
    ident_t to = s_sender(self);
    s_send_to(self, socket, &to, NULL);
}

/* ---- names, queues, lanes ---- */

static const char *
s_intern(tq_broker_t *self, tq_str_t s)
{
    char name[TQ_PROTO_MAX_NAME + 1];
    tq_str_copy(name, sizeof name, s);
    char *found = zhashx_lookup(self->names, name);
    if (!found) {
        found = s_strdup(name);
        zhashx_insert(self->names, found, found);
    }
    return found;
}

static queue_t *
s_queue(tq_broker_t *self, tq_str_t name)
{
    const char *interned = s_intern(self, name);
    queue_t *queue = zhashx_lookup(self->queue_index, interned);
    if (!queue) {
        queue = s_alloc(sizeof *queue);
        queue->name = interned;
        queue->next = self->queues;
        self->queues = queue;
        zhashx_insert(self->queue_index, interned, queue);
    }
    return queue;
}

static lane_t *
s_lane(queue_t *queue, const char *task)
{
    for (lane_t *lane = queue->lanes; lane; lane = lane->next)
        if (lane->task == task)
            return lane;
    lane_t *lane = s_alloc(sizeof *lane);
    lane->queue = queue;
    lane->task = task;
    lane->next = queue->lanes;
    queue->lanes = lane;
    return lane;
}

/* Puts a waiting task at the back (new) or the front (requeued) of its
   priority in its lane. */
static void
s_lane_push(lane_t *lane, task_t *task, bool front)
{
    int p = task->priority;
    task->prev = task->next = NULL;
    if (!lane->head[p])
        lane->head[p] = lane->tail[p] = task;
    else if (front) {
        task->next = lane->head[p];
        lane->head[p]->prev = task;
        lane->head[p] = task;
    } else {
        task->prev = lane->tail[p];
        lane->tail[p]->next = task;
        lane->tail[p] = task;
    }
    lane->waiting++;
    lane->queue->waiting++;
}

static void
s_lane_remove(lane_t *lane, task_t *task)
{
    int p = task->priority;
    if (task->prev)
        task->prev->next = task->next;
    else
        lane->head[p] = task->next;
    if (task->next)
        task->next->prev = task->prev;
    else
        lane->tail[p] = task->prev;
    task->prev = task->next = NULL;
    lane->waiting--;
    lane->queue->waiting--;
}

/* ---- workers ---- */

static void
s_held_push(worker_t *worker, task_t *task)
{
    task->prev = worker->held_tail;
    task->next = NULL;
    if (worker->held_tail)
        worker->held_tail->next = task;
    else
        worker->held_head = task;
    worker->held_tail = task;
    worker->held++;
    task->worker = worker;
    task->lane->queue->running++;
}

static void
s_held_remove(worker_t *worker, task_t *task)
{
    if (task->prev)
        task->prev->next = task->next;
    else
        worker->held_head = task->next;
    if (task->next)
        task->next->prev = task->prev;
    else
        worker->held_tail = task->prev;
    task->prev = task->next = NULL;
    worker->held--;
    task->worker = NULL;
    task->lane->queue->running--;
}

static bool
s_worker_serves(const worker_t *worker, const lane_t *lane)
{
    bool queue_ok = false;
    for (uint32_t i = 0; i < worker->queue_count && !queue_ok; i++)
        queue_ok = worker->queues[i] == lane->queue;
    if (!queue_ok)
        return false;
    for (uint32_t i = 0; i < worker->task_count; i++)
        if (worker->tasks[i] == lane->task)
            return true;
    return false;
}

static worker_t *
s_peer(tq_broker_t *self)
{
    char key[2 * 255 + 1];
    size_t size = zmq_msg_size(&self->frames.identity);
    s_hex(key, zmq_msg_data(&self->frames.identity), size > 255 ? 255 : size);
    return zhashx_lookup(self->peers, key);
}

static worker_t *
s_peer_new(tq_broker_t *self, bool supervisor)
{
    worker_t *peer = s_alloc(sizeof *peer);
    peer->supervisor = supervisor;
    size_t size = zmq_msg_size(&self->frames.identity);
    if (size > 255)
        size = 255;
    s_ident_set(&peer->ident, zmq_msg_data(&self->frames.identity), size);
    s_hex(peer->key, s_ident_data(&peer->ident), size);
    zhashx_insert(self->peers, peer->key, peer);
    if (supervisor) {
        peer->next = self->supervisors;
        if (self->supervisors)
            self->supervisors->prev = peer;
        self->supervisors = peer;
    } else {
        peer->prev = self->children_tail;
        if (self->children_tail)
            self->children_tail->next = peer;
        else
            self->children = peer;
        self->children_tail = peer;
    }
    return peer;
}

static void
s_task_final(tq_broker_t *self, task_t *task, int state, int code,
             const char *error, zmq_msg_t *value);

/* Puts a worker's tasks back in their lanes: the first one (the one the
   child was running, children run in dispatch order) is charged with the
   death when `lost`; past the limit it fails instead. */
static void
s_worker_release(tq_broker_t *self, worker_t *worker, bool lost, int code,
                 const char *why)
{
    task_t *running = worker->held_head;
    /* requeue from the back so that the tasks keep their order at the
       front of their lanes */
    while (worker->held_tail) {
        task_t *task = worker->held_tail;
        s_held_remove(worker, task);
        if (lost && task == running) {
            char text[TQ_PROTO_MAX_ERROR];
            if (code == TQ_ETIMELIMIT) {
                s_task_final(self, task, TQ_STATE_FAILURE, TQ_ETIMELIMIT, why,
                             NULL);
                continue;
            }
            task->lost++;
            int max = self->config.max_lost;
            if (task->lost >= (uint32_t) max) {
                snprintf(text, sizeof text, "worker lost: %s on host %s",
                         why, worker->host);
                s_task_final(self, task, TQ_STATE_FAILURE, TQ_ELOST, text,
                             NULL);
                continue;
            }
        }
        task->state = TQ_STATE_PENDING;
        s_lane_push(task->lane, task, true);
        self->counters.requeued++;
    }
    self->dispatch_due = true;
}

/* Forgets a peer; a child's tasks are queued again first. */
static void
s_peer_remove(tq_broker_t *self, worker_t *peer, bool lost, int code,
              const char *why)
{
    if (!peer->supervisor) {
        s_worker_release(self, peer, lost, code, why);
        if (lost)
            self->counters.lost++;
        if (peer->prev)
            peer->prev->next = peer->next;
        else
            self->children = peer->next;
        if (peer->next)
            peer->next->prev = peer->prev;
        else
            self->children_tail = peer->prev;
    } else {
        if (peer->prev)
            peer->prev->next = peer->next;
        else
            self->supervisors = peer->next;
        if (peer->next)
            peer->next->prev = peer->prev;
    }
    s_debug(self, "%s %s pid %llu gone%s%s",
            peer->supervisor ? "supervisor" : "worker", peer->host,
            (unsigned long long) peer->pid, why ? ": " : "", why ? why : "");
    zhashx_delete(self->peers, peer->key);
    s_ident_clear(&peer->ident);
    free(peer->queues);
    free(peer->tasks);
    free(peer);
}

/* ---- tasks ---- */

static void
s_task_free(task_t *task)
{
    zmq_msg_close(&task->payload);
    free(task->error);
    s_ident_clear(&task->client);
    for (uint32_t i = 0; i < task->waiter_count; i++)
        s_ident_clear(&task->waiters[i]);
    free(task->waiters);
    free(task);
}

/* Sends a final task's RESULT to one client; the value is shared, not
   copied (zmq_msg_copy counts references). */
static void
s_send_result(tq_broker_t *self, task_t *task, const ident_t *to)
{
    tq_msg_t *out = s_out(self, TQ_CMD_RESULT);
    out->id = tq_str(task->id);
    out->state = task->state;
    out->code = task->code;
    out->error = tq_str(task->error);
    zmq_msg_t value;
    zmq_msg_init(&value);
    if (task->state == TQ_STATE_SUCCESS)
        zmq_msg_copy(&value, &task->payload);
    s_send_to(self, self->clients, to, &value);
    zmq_msg_close(&value);
}

/* Ends a task: keeps the value, answers the submitter and every waiter,
   and schedules its expiry. value (moved) may be NULL. */
static void
s_task_final(tq_broker_t *self, task_t *task, int state, int code,
             const char *error, zmq_msg_t *value)
{
    assert(!task->worker);
    task->state = (uint8_t) state;
    task->code = (uint32_t) code;
    free(task->error);
    task->error = error && *error ? s_strdup(error) : NULL;
    zmq_msg_close(&task->payload);
    zmq_msg_init(&task->payload);
    if (value && state == TQ_STATE_SUCCESS)
        zmq_msg_move(&task->payload, value);
    if (state == TQ_STATE_SUCCESS)
        self->counters.completed++;
    else
        self->counters.failed++;
    s_debug(self, "task %s %s%s%s", task->id, tq_state_name(state),
            task->error ? ": " : "", task->error ? task->error : "");

    if (task->client.size) {
        s_send_result(self, task, &task->client);
        s_ident_clear(&task->client);
    }
    for (uint32_t i = 0; i < task->waiter_count; i++) {
        s_send_result(self, task, &task->waiters[i]);
        s_ident_clear(&task->waiters[i]);
    }
    free(task->waiters);
    task->waiters = NULL;
    task->waiter_count = 0;

    task->expires_ms = self->now_ms + (int64_t) self->config.result_ttl_s * 1000;
    task->prev = self->expiry_tail;
    task->next = NULL;
    if (self->expiry_tail)
        self->expiry_tail->next = task;
    else
        self->expiry_head = task;
    self->expiry_tail = task;
    self->results_kept++;
}

/* Forgets results whose TTL ran out; the expiry list is in expiry order
   because the TTL is the same for every task. */
static void
s_expire_results(tq_broker_t *self)
{
    while (self->expiry_head && self->expiry_head->expires_ms <= self->now_ms) {
        task_t *task = self->expiry_head;
        self->expiry_head = task->next;
        if (self->expiry_head)
            self->expiry_head->prev = NULL;
        else
            self->expiry_tail = NULL;
        zhashx_delete(self->tasks, task->id);
        self->results_kept--;
        s_task_free(task);
    }
}

/* The best task a worker may take now: highest priority, then oldest,
   among the lanes it serves. */
static task_t *
s_next_task(tq_broker_t *self, worker_t *worker)
{
    (void) self;
    task_t *best = NULL;
    for (uint32_t q = 0; q < worker->queue_count; q++) {
        for (lane_t *lane = worker->queues[q]->lanes; lane;
             lane = lane->next) {
            if (!lane->waiting || !s_worker_serves(worker, lane))
                continue;
            for (int p = PRIORITIES - 1; p >= 0; p--) {
                task_t *head = lane->head[p];
                if (!head)
                    continue;
                if (!best || p > best->priority ||
                    (p == best->priority && head->seq < best->seq))
                    best = head;
                break;
            }
        }
    }
    return best;
}

/* Sends a task to a worker. Returns false if the worker is gone (it was
   removed and its tasks, this one included, queued again). */
static bool
s_dispatch_one(tq_broker_t *self, worker_t *worker, task_t *task)
{
    s_lane_remove(task->lane, task);
    s_held_push(worker, task);
    task->state = TQ_STATE_RUNNING;
    task->attempt++;
    tq_msg_t *out = s_out(self, TQ_CMD_TASK);
    out->id = tq_str(task->id);
    out->task = tq_str(task->lane->task);
    out->attempt = task->attempt;
    out->time_limit_ms = task->time_limit_ms;
    zmq_msg_t args;
    zmq_msg_init(&args);
    zmq_msg_copy(&args, &task->payload);
    int rc = s_send_to(self, self->workers, &worker->ident, &args);
    zmq_msg_close(&args);
    if (rc != 0) {
        s_peer_remove(self, worker, false, 0, "unreachable");
        return false;
    }
    return true;
}

/* Gives waiting tasks to workers with free credit, one task per worker per
   sweep so that a burst spreads over every idle child. */
static void
s_dispatch(tq_broker_t *self)
{
    self->dispatch_due = false;
    bool progress = true;
    while (progress) {
        progress = false;
        worker_t *next;
        for (worker_t *worker = self->children; worker; worker = next) {
            next = worker->next;
            if (worker->held >= worker->credit)
                continue;
            task_t *task = s_next_task(self, worker);
            if (!task)
                continue;
            if (s_dispatch_one(self, worker, task))
                progress = true;
            else
                progress = true, next = self->children; /* list changed */
        }
    }
}

/* ---- client handlers ---- */

static void
s_on_submit(tq_broker_t *self, const tq_msg_t *msg)
{
    char id[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(id, sizeof id, msg->id);
    const char *reason = NULL;
    if (tq_proto_check_payload(zmq_msg_data(&self->frames.payload),
                               zmq_msg_size(&self->frames.payload), true,
                               &reason) != TQ_OK) {
        char text[256];
        snprintf(text, sizeof text, "arguments: %s", reason);
        self->counters.malformed++;
        s_warn(self, "SUBMIT %s refused: %s", id, text);
        s_reply_error(self, self->clients, TQ_EPROTO, text, msg->id);
        return;
    }
    /* a known id is a resubmission after a lost acknowledgement */
    if (!zhashx_lookup(self->tasks, id)) {
        task_t *task = s_alloc(sizeof *task);
        memcpy(task->id, id, sizeof id);
        queue_t *queue = s_queue(self, msg->queue);
        task->lane = s_lane(queue, s_intern(self, msg->task));
        task->priority = (uint8_t) msg->priority;
        task->time_limit_ms = msg->time_limit_ms;
        task->seq = ++self->seq;
        task->state = TQ_STATE_PENDING;
        zmq_msg_init(&task->payload);
        zmq_msg_move(&task->payload, &self->frames.payload);
        ident_t from = s_sender(self);
        s_ident_set(&task->client, s_ident_data(&from), from.size);
        zhashx_insert(self->tasks, task->id, task);
        s_lane_push(task->lane, task, false);
        self->counters.submitted++;
        self->dispatch_due = true;
    }
    tq_msg_t *out = s_out(self, TQ_CMD_SUBMITTED);
    out->id = msg->id;
    s_reply(self, self->clients);
}

static void
s_on_get(tq_broker_t *self, const tq_msg_t *msg)
{
    char id[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(id, sizeof id, msg->id);
    task_t *task = zhashx_lookup(self->tasks, id);
    ident_t from = s_sender(self);
    if (!task) {
        tq_msg_t *out = s_out(self, TQ_CMD_UNKNOWN);
        out->id = msg->id;
        s_reply(self, self->clients);
    } else if (TQ_STATE_IS_FINAL(task->state)) {
        s_send_result(self, task, &from);
    } else if (msg->wait) {
        task->waiters = realloc(task->waiters, (task->waiter_count + 1) *
                                                   sizeof *task->waiters);
        if (!task->waiters)
            abort();
        ident_t *waiter = &task->waiters[task->waiter_count++];
        *waiter = (ident_t){0};
        s_ident_set(waiter, s_ident_data(&from), from.size);
    } else {
        tq_msg_t *out = s_out(self, TQ_CMD_STATE);
        out->id = msg->id;
        out->state = task->state;
        s_reply(self, self->clients);
    }
}

static void
s_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void
s_pack_uint_kv(msgpack_packer *pk, const char *key, uint64_t value)
{
    s_pack_str(pk, key);
    msgpack_pack_uint64(pk, value);
}

static bool
s_lane_served(tq_broker_t *self, const lane_t *lane)
{
    for (worker_t *w = self->children; w; w = w->next)
        if (s_worker_serves(w, lane))
            return true;
    return false;
}

/* The STATUS body, PROTOCOL.md section 8. */
static void
s_pack_status(tq_broker_t *self, msgpack_packer *pk)
{
    msgpack_pack_map(pk, 7);
    s_pack_str(pk, "version");
    s_pack_str(pk, "TQP/1");
    s_pack_uint_kv(pk, "pid", (uint64_t) getpid());
    s_pack_uint_kv(pk, "uptime_ms", (uint64_t) (self->now_ms - self->started_ms));

    size_t count = 0;
    for (queue_t *q = self->queues; q; q = q->next)
        count++;
    s_pack_str(pk, "queues");
    msgpack_pack_array(pk, count);
    for (queue_t *q = self->queues; q; q = q->next) {
        msgpack_pack_map(pk, 3);
        s_pack_str(pk, "name");
        s_pack_str(pk, q->name);
        s_pack_uint_kv(pk, "waiting", q->waiting);
        s_pack_uint_kv(pk, "running", q->running);
    }

    count = 0;
    for (worker_t *w = self->children; w; w = w->next)
        count++;
    s_pack_str(pk, "workers");
    msgpack_pack_array(pk, count);
    for (worker_t *w = self->children; w; w = w->next) {
        msgpack_pack_map(pk, 8);
        s_pack_str(pk, "host");
        s_pack_str(pk, w->host);
        s_pack_uint_kv(pk, "ppid", w->ppid);
        s_pack_uint_kv(pk, "pid", w->pid);
        s_pack_uint_kv(pk, "credit", w->credit);
        s_pack_uint_kv(pk, "running", w->held);
        s_pack_uint_kv(pk, "done", w->done);
        s_pack_str(pk, "queues");
        msgpack_pack_array(pk, w->queue_count);
        for (uint32_t i = 0; i < w->queue_count; i++)
            s_pack_str(pk, w->queues[i]->name);
        s_pack_str(pk, "tasks");
        msgpack_pack_array(pk, w->task_count);
        for (uint32_t i = 0; i < w->task_count; i++)
            s_pack_str(pk, w->tasks[i]);
    }

    count = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            s_pack_str(pk, "unserved");
            msgpack_pack_array(pk, count);
        }
        for (queue_t *q = self->queues; q; q = q->next)
            for (lane_t *lane = q->lanes; lane; lane = lane->next) {
                if (!lane->waiting || s_lane_served(self, lane))
                    continue;
                if (pass == 0) {
                    count++;
                    continue;
                }
                msgpack_pack_map(pk, 3);
                s_pack_str(pk, "task");
                s_pack_str(pk, lane->task);
                s_pack_str(pk, "queue");
                s_pack_str(pk, q->name);
                s_pack_uint_kv(pk, "waiting", lane->waiting);
            }
    }

    const counters_t *c = &self->counters;
    s_pack_str(pk, "counters");
    msgpack_pack_map(pk, 10);
    s_pack_uint_kv(pk, "submitted", c->submitted);
    s_pack_uint_kv(pk, "completed", c->completed);
    s_pack_uint_kv(pk, "failed", c->failed);
    s_pack_uint_kv(pk, "requeued", c->requeued);
    s_pack_uint_kv(pk, "lost", c->lost);
    s_pack_uint_kv(pk, "duplicates", c->duplicates);
    s_pack_uint_kv(pk, "malformed", c->malformed);
    s_pack_uint_kv(pk, "errors", c->errors);
    s_pack_uint_kv(pk, "dropped", c->dropped);
    s_pack_uint_kv(pk, "results_kept", self->results_kept);
}

static void
s_free_sbuffer(void *data, void *hint)
{
    (void) hint;
    free(data);
}

static void
s_on_status(tq_broker_t *self, const tq_msg_t *msg)
{
    (void) msg;
    msgpack_sbuffer body;
    msgpack_sbuffer_init(&body);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &body, msgpack_sbuffer_write);
    s_pack_status(self, &pk);
    zmq_msg_t payload;
    size_t size = body.size;
    zmq_msg_init_data(&payload, msgpack_sbuffer_release(&body), size,
                      s_free_sbuffer, NULL);
    s_out(self, TQ_CMD_STATUS_REPLY);
    ident_t to = s_sender(self);
    s_send_to(self, self->clients, &to, &payload);
    zmq_msg_close(&payload);
}

static void
s_on_ping(tq_broker_t *self, const tq_msg_t *msg)
{
    (void) msg;
    s_out(self, TQ_CMD_PONG);
    s_reply(self, self->clients);
}

static void
s_on_ignore(tq_broker_t *self, const tq_msg_t *msg)
{
    (void) self;
    (void) msg;
}

/* ---- worker handlers ---- */

static void
s_on_ready(tq_broker_t *self, const tq_msg_t *msg)
{
    worker_t *worker = s_peer(self);
    if (worker && worker->supervisor) {
        self->counters.errors++;
        s_reply_error(self, self->workers, TQ_ESTATE,
                      "READY from a supervisor socket", (tq_str_t){0});
        return;
    }
    if (worker) {
        /* announcing again: keep the tasks it holds, take the new lists */
        free(worker->queues);
        free(worker->tasks);
    } else
        worker = s_peer_new(self, false);
    tq_str_copy(worker->host, sizeof worker->host, msg->host);
    worker->pid = msg->pid;
    worker->ppid = msg->ppid;
    worker->credit = msg->credit;
    uint32_t queues = msg->queue_count ? msg->queue_count : 1;
    worker->queues = s_alloc(queues * sizeof *worker->queues);
    if (msg->queue_count == 0)
        worker->queues[0] = s_queue(self, tq_str("default"));
    for (uint32_t i = 0; i < msg->queue_count; i++)
        worker->queues[i] = s_queue(self, msg->queues[i]);
    worker->queue_count = queues;
    worker->tasks = s_alloc((msg->task_count + 1) * sizeof *worker->tasks);
    for (uint32_t i = 0; i < msg->task_count; i++)
        worker->tasks[i] = s_intern(self, msg->tasks[i]);
    worker->task_count = msg->task_count;
    worker->last_seen_ms = self->now_ms;
    self->dispatch_due = true;
    s_debug(self, "worker %s pid %llu ready: credit %u, %u queues, %u tasks",
            worker->host, (unsigned long long) worker->pid, worker->credit,
            worker->queue_count, worker->task_count);
}

static void
s_on_done(tq_broker_t *self, const tq_msg_t *msg)
{
    char id[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(id, sizeof id, msg->id);
    worker_t *worker = s_peer(self);
    task_t *task = zhashx_lookup(self->tasks, id);
    /* The attempt is the lease: only the current one may end the task. A
       DONE that raced a LOST (the task is back in its lane, not yet sent
       again) still holds the lease and is taken. */
    bool current = task && !TQ_STATE_IS_FINAL(task->state) &&
                   task->attempt == msg->attempt &&
                   (task->worker == NULL || task->worker == worker);
    if (!current) {
        if (!worker && !task) {
            self->counters.errors++;
            s_warn(self, "DONE %s from a peer that never sent READY", id);
            s_reply_error(self, self->workers, TQ_ESTATE,
                          "DONE from a peer that never sent READY", msg->id);
            return;
        }
        self->counters.duplicates++;
        s_debug(self, "duplicate DONE %s attempt %u", id, msg->attempt);
        return;
    }
    int state = (int) msg->state;
    int code = (int) msg->code;
    const char *reason = NULL;
    if (state == TQ_STATE_SUCCESS &&
        tq_proto_check_payload(zmq_msg_data(&self->frames.payload),
                               zmq_msg_size(&self->frames.payload), false,
                               &reason) != TQ_OK) {
        /* the worker's bug, but the caller deserves an answer */
        self->counters.malformed++;
        s_warn(self, "DONE %s: malformed value: %s", id, reason);
        state = TQ_STATE_FAILURE;
        code = TQ_EPROTO;
    } else if (state != TQ_STATE_SUCCESS && state != TQ_STATE_FAILURE) {
        self->counters.errors++;
        s_reply_error(self, self->workers, TQ_EPROTO,
                      "DONE state must be SUCCESS or FAILURE", msg->id);
        return;
    }
    if (task->worker) {
        s_held_remove(task->worker, task);
        if (worker)
            worker->done++;
    } else
        s_lane_remove(task->lane, task);
    char text[TQ_PROTO_MAX_ERROR + 1];
    tq_str_copy(text, sizeof text, msg->error);
    if (state == TQ_STATE_FAILURE && code == TQ_OK)
        code = TQ_ETASK;
    if (state == TQ_STATE_FAILURE && code == TQ_EPROTO && reason)
        snprintf(text, sizeof text, "worker sent a malformed value: %s",
                 reason);
    if (state == TQ_STATE_SUCCESS)
        code = TQ_OK;
    s_task_final(self, task, state, code, text, &self->frames.payload);
    self->dispatch_due = true;
}

static void
s_on_disconnect(tq_broker_t *self, const tq_msg_t *msg)
{
    (void) msg;
    worker_t *peer = s_peer(self);
    if (peer)
        s_peer_remove(self, peer, false, 0, "disconnected");
}

static void
s_on_heartbeat(tq_broker_t *self, const tq_msg_t *msg)
{
    worker_t *peer = s_peer(self);
    if (!peer) {
        peer = s_peer_new(self, true);
        tq_str_copy(peer->host, sizeof peer->host, msg->host);
        peer->pid = msg->pid;
        s_debug(self, "supervisor %s pid %llu", peer->host,
                (unsigned long long) peer->pid);
    }
    peer->last_seen_ms = self->now_ms;
    tq_msg_t *out = s_out(self, TQ_CMD_HEARTBEAT);
    out->host = tq_str(self->hostname);
    out->pid = (uint64_t) getpid();
    s_send_to(self, self->workers, &peer->ident, NULL);
}

static void
s_on_lost(tq_broker_t *self, const tq_msg_t *msg)
{
    worker_t *sup = s_peer(self);
    if (!sup || !sup->supervisor) {
        self->counters.errors++;
        s_reply_error(self, self->workers, TQ_ESTATE,
                      "LOST from a peer that never sent HEARTBEAT",
                      (tq_str_t){0});
        return;
    }
    sup->last_seen_ms = self->now_ms;
    char why[TQ_PROTO_MAX_ERROR + 1];
    tq_str_copy(why, sizeof why, msg->error);
    if (!*why)
        snprintf(why, sizeof why, "process %llu died",
                 (unsigned long long) msg->pid);
    for (worker_t *w = self->children; w; w = w->next)
        if (w->pid == msg->pid && strcmp(w->host, sup->host) == 0) {
            s_warn(self, "worker %s pid %llu lost: %s", w->host,
                   (unsigned long long) w->pid, why);
            s_peer_remove(self, w, true, (int) msg->code, why);
            return;
        }
    s_debug(self, "LOST of pid %llu, which held nothing",
            (unsigned long long) msg->pid);
}

static void
s_on_worker_ping(tq_broker_t *self, const tq_msg_t *msg)
{
    (void) msg;
    s_out(self, TQ_CMD_PONG);
    s_reply(self, self->workers);
}

/* A supervisor silent for the liveness has lost its host or its network:
   its children's tasks are queued again as if each child had died. */
static void
s_check_hosts(tq_broker_t *self)
{
    worker_t *next;
    for (worker_t *sup = self->supervisors; sup; sup = next) {
        next = sup->next;
        if (self->now_ms - sup->last_seen_ms < LIVENESS_MS)
            continue;
        char why[128];
        snprintf(why, sizeof why, "host silent for %.1f s",
                 (double) (self->now_ms - sup->last_seen_ms) / 1000.0);
        s_warn(self, "supervisor %s pid %llu: %s", sup->host,
               (unsigned long long) sup->pid, why);
        worker_t *wnext;
        for (worker_t *w = self->children; w; w = wnext) {
            wnext = w->next;
            if (w->ppid == sup->pid && strcmp(w->host, sup->host) == 0)
                s_peer_remove(self, w, true, TQ_ELOST, why);
        }
        s_peer_remove(self, sup, false, 0, why);
    }
}

/* ---- the loop ---- */

static s_handler_fn *const s_client_handlers[256] = {
    [TQ_CMD_SUBMIT] = s_on_submit, [TQ_CMD_GET] = s_on_get,
    [TQ_CMD_STATUS] = s_on_status, [TQ_CMD_PING] = s_on_ping,
    [TQ_CMD_PONG] = s_on_ignore,
};

static s_handler_fn *const s_worker_handlers[256] = {
    [TQ_CMD_READY] = s_on_ready,         [TQ_CMD_DONE] = s_on_done,
    [TQ_CMD_DISCONNECT] = s_on_disconnect, [TQ_CMD_HEARTBEAT] = s_on_heartbeat,
    [TQ_CMD_LOST] = s_on_lost,           [TQ_CMD_PING] = s_on_worker_ping,
    [TQ_CMD_PONG] = s_on_ignore,
};

/* Receives and handles up to BATCH messages from one socket. Returns how
   many were read. */
static int
s_drain(tq_broker_t *self, void *socket, s_handler_fn *const *handlers,
        const char *endpoint)
{
    int count = 0;
    while (count < BATCH && !self->stopping) {
        int rc = tq_wire_recv(socket, &self->frames, true, ZMQ_DONTWAIT);
        if (rc == -1)
            break;
        count++;
        const char *reason = NULL;
        if (rc == TQ_OK)
            rc = tq_wire_decode(&self->frames, &self->in, &reason);
        else
            reason = "wrong number of frames";
        if (zmq_msg_size(&self->frames.identity) == 0)
            continue; /* nobody to answer or to blame */
        if (rc != TQ_OK) {
            self->counters.malformed++;
            s_warn(self, "malformed message on the %s endpoint: %s", endpoint,
                   reason ? reason : "?");
            s_reply_error(self, socket, rc == TQ_EVERSION ? TQ_EVERSION
                                                          : TQ_EPROTO,
                          reason ? reason : "malformed message",
                          (tq_str_t){0});
            continue;
        }
        s_handler_fn *handler = handlers[self->in.command];
        if (!handler) {
            char text[128];
            snprintf(text, sizeof text, "%s is not valid on the %s endpoint",
                     tq_proto_command_name(self->in.command), endpoint);
            self->counters.errors++;
            s_warn(self, "%s", text);
            s_reply_error(self, socket, TQ_ESTATE, text, self->in.id);
            continue;
        }
        handler(self, &self->in);
    }
    return count;
}

static int
s_bind(void *socket, const char *endpoint, char *resolved, size_t size,
       char *error, size_t errlen)
{
    int one = 1, zero = 0, linger = 0;
    int64_t max = MAX_MESSAGE;
    zmq_setsockopt(socket, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(socket, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(socket, ZMQ_RCVHWM, &zero, sizeof zero);
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max, sizeof max);
    if (zmq_bind(socket, endpoint) != 0) {
        snprintf(error, errlen, "cannot bind %s: %s", endpoint,
                 zmq_strerror(errno));
        return -1;
    }
    size_t len = size;
    zmq_getsockopt(socket, ZMQ_LAST_ENDPOINT, resolved, &len);
    return 0;
}

tq_broker_t *
tq_broker_new(const tq_broker_config_t *config, char *error, size_t errlen)
{
    tq_broker_t *self = s_alloc(sizeof *self);
    tq_frames_init(&self->frames);
    msgpack_sbuffer_init(&self->sbuf);
    self->config = *config;
    if (!self->config.client_endpoint)
        self->config.client_endpoint = TQ_BROKER_CLIENTS;
    if (!self->config.worker_endpoint)
        self->config.worker_endpoint = TQ_BROKER_WORKERS;
    if (self->config.result_ttl_s < 0)
        self->config.result_ttl_s = TQ_BROKER_RESULT_TTL_S;
    if (self->config.max_lost <= 0)
        self->config.max_lost = TQ_BROKER_MAX_LOST;
    self->wakeup = -1;
    self->ctx = zmq_ctx_new();
    self->clients = self->ctx ? zmq_socket(self->ctx, ZMQ_ROUTER) : NULL;
    self->workers = self->ctx ? zmq_socket(self->ctx, ZMQ_ROUTER) : NULL;
    if (!self->clients || !self->workers) {
        snprintf(error, errlen, "cannot create sockets: %s",
                 zmq_strerror(errno));
        tq_broker_destroy(&self);
        return NULL;
    }
    if (s_bind(self->clients, self->config.client_endpoint,
               self->client_endpoint, sizeof self->client_endpoint, error,
               errlen) ||
        s_bind(self->workers, self->config.worker_endpoint,
               self->worker_endpoint, sizeof self->worker_endpoint, error,
               errlen)) {
        tq_broker_destroy(&self);
        return NULL;
    }
    self->wakeup = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->wakeup < 0) {
        snprintf(error, errlen, "eventfd: %s", strerror(errno));
        tq_broker_destroy(&self);
        return NULL;
    }
    if (gethostname(self->hostname, sizeof self->hostname - 1) != 0 ||
        !tq_proto_valid_name(self->hostname, strlen(self->hostname)))
        snprintf(self->hostname, sizeof self->hostname, "broker");

    self->tasks = zhashx_new();
    zhashx_set_key_duplicator(self->tasks, NULL); /* keys live in tasks */
    zhashx_set_key_destructor(self->tasks, NULL);
    self->names = zhashx_new();
    zhashx_set_key_duplicator(self->names, NULL);
    zhashx_set_key_destructor(self->names, NULL);
    self->queue_index = zhashx_new();
    zhashx_set_key_duplicator(self->queue_index, NULL);
    zhashx_set_key_destructor(self->queue_index, NULL);
    self->peers = zhashx_new();
    zhashx_set_key_duplicator(self->peers, NULL);
    zhashx_set_key_destructor(self->peers, NULL);
    if (!self->tasks || !self->names || !self->queue_index || !self->peers)
        abort();
    self->started_ms = self->now_ms = s_now();
    self->log_window_ms = self->now_ms;
    return self;
}

const char *
tq_broker_client_endpoint(const tq_broker_t *self)
{
    return self->client_endpoint;
}

const char *
tq_broker_worker_endpoint(const tq_broker_t *self)
{
    return self->worker_endpoint;
}

void
tq_broker_stop(tq_broker_t *self)
{
    self->stopping = true;
    uint64_t one = 1;
    ssize_t rc = write(self->wakeup, &one, sizeof one);
    (void) rc;
}

int
tq_broker_run(tq_broker_t *self)
{
    zmq_pollitem_t items[] = {
        {self->clients, 0, ZMQ_POLLIN, 0},
        {self->workers, 0, ZMQ_POLLIN, 0},
        {NULL, self->wakeup, ZMQ_POLLIN, 0},
    };
    self->next_check_ms = s_now() + HEARTBEAT_MS / 2;
    while (!self->stopping) {
        self->now_ms = s_now();
        /* sleep until the next deadline: a host check or a result expiry */
        int64_t deadline = self->next_check_ms;
        if (self->expiry_head && self->expiry_head->expires_ms < deadline)
            deadline = self->expiry_head->expires_ms;
        long timeout = deadline > self->now_ms ? deadline - self->now_ms : 0;
        if (zmq_poll(items, 3, timeout) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "tq-broker: poll: %s\n", zmq_strerror(errno));
            return TQ_ESYS;
        }
        self->now_ms = s_now();
        /* drain both sockets in bursts until both are quiet */
        for (;;) {
            int got = s_drain(self, self->workers, s_worker_handlers,
                              "workers");
            got += s_drain(self, self->clients, s_client_handlers, "clients");
            if (self->dispatch_due)
                s_dispatch(self);
            if (got == 0 || self->stopping)
                break;
        }
        if (self->now_ms >= self->next_check_ms) {
            s_check_hosts(self);
            self->next_check_ms = self->now_ms + HEARTBEAT_MS / 2;
            if (self->dispatch_due)
                s_dispatch(self);
        }
        s_expire_results(self);
    }
    return TQ_OK;
}

void
tq_broker_destroy(tq_broker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_broker_t *self = *self_p;
    if (self->tasks) {
        for (task_t *t = zhashx_first(self->tasks); t;
             t = zhashx_next(self->tasks))
            s_task_free(t);
        zhashx_destroy(&self->tasks);
    }
    if (self->peers) {
        for (worker_t *w = zhashx_first(self->peers); w;
             w = zhashx_next(self->peers)) {
            s_ident_clear(&w->ident);
            free(w->queues);
            free(w->tasks);
            free(w);
        }
        zhashx_destroy(&self->peers);
    }
    for (queue_t *q = self->queues, *qn; q; q = qn) {
        qn = q->next;
        for (lane_t *l = q->lanes, *ln; l; l = ln) {
            ln = l->next;
            free(l);
        }
        free(q);
    }
    zhashx_destroy(&self->queue_index);
    if (self->names) {
        for (char *n = zhashx_first(self->names); n;
             n = zhashx_next(self->names))
            free(n);
        zhashx_destroy(&self->names);
    }
    tq_frames_close(&self->frames);
    msgpack_sbuffer_destroy(&self->sbuf);
    if (self->clients)
        zmq_close(self->clients);
    if (self->workers)
        zmq_close(self->workers);
    if (self->ctx)
        zmq_ctx_term(self->ctx);
    if (self->wakeup >= 0)
        close(self->wakeup);
    free(self);
    *self_p = NULL;
}
