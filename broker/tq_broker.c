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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "tq/tq_error.h"
#include "tq_auth.h"
#include "tq_curve.h"
#include "tq_proto.h"
#include "tq_store.h"
#include "tq_wire.h"

#define PRIORITIES 10        /* 0..9, TQ_PRIORITY_MAX + 1 */
#define BATCH 512            /* messages drained per socket per pass */
#define IDENT_INLINE 24      /* routing ids up to this size stay inline */
#define HEARTBEAT_MS 1000    /* PROTOCOL.md section 10 */
#define LIVENESS_MS 3000
#define CHECK_MS 100         /* host liveness checks */
#define HOUSEKEEPING_MS 1000 /* store purge and disk limit checks */
#define MAX_MESSAGE (64 << 20) /* ZMQ_MAXMSGSIZE on both endpoints */
#define LOG_BURST 20         /* log lines about bad input per second */
#define LOST_PAUSE_MS 1000   /* first pause of a task whose worker died */

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

/* A list of tasks linked through their prev/next: a lane's priority, a
   worker's held tasks, the expiry list. A task is on one at a time. */
typedef struct {
    task_t *head, *tail;
} task_list_t;

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
    uint32_t retries;      /* reruns left after a task failure */
    uint32_t backoff_ms;   /* first retry delay */
    uint32_t failures;     /* task failures so far (for the backoff) */
    uint32_t heap_index;   /* position in the deadline heap, 0: not in */
    int64_t due_ms;        /* in the heap: when it may run (monotonic) */
    int64_t submitted_ms;  /* monotonic ms when accepted */
    bool dead;             /* in the dead-letter list */
    task_t *dead_prev, *dead_next;
    ident_t client;        /* submitter; size 0 once answered */
    ident_t *waiters;      /* clients blocked in GET wait=true */
    uint32_t waiter_count;
    worker_t *worker;      /* holder while RUNNING */
    bool revoking;         /* its holder was sent REVOKE, no answer yet */
    uint64_t revoke_for;   /* serial of the idle child it was asked for */
    int64_t expires_ms;    /* final: monotonic ms when forgotten */
    task_t *prev, *next;
};

/* The tasks of one queue and one task name, a FIFO per priority: dispatch
   only has to look at lanes whose task name the worker provides. */
struct lane_s {
    queue_t *queue;
    const char *task;      /* interned */
    task_list_t fifo[PRIORITIES];
    uint32_t waiting;
    lane_t *next;
};

struct queue_s {
    const char *name;      /* interned */
    lane_t *lanes;
    uint32_t waiting, running;
    uint32_t delayed;      /* in the deadline heap (countdown, retry) */
    uint64_t done, failed;
    queue_t *next;
};

/* A peer on the workers endpoint: a worker child (after READY) or a
   supervisor (after its first HEARTBEAT). */
struct worker_s {
    uint64_t serial;          /* unique per broker, never reused */
    bool supervisor;
    ident_t ident;
    char key[2 * 255 + 1];    /* hex of ident, the peers table key */
    char host[TQ_PROTO_MAX_NAME + 1];
    uint64_t pid, ppid;
    uint32_t credit, held;
    uint32_t cancelled;       /* cancelled tasks it may still be running */
    uint32_t revoking;        /* held tasks it was sent REVOKE for */
    uint32_t features;        /* TQ_FEATURE_* from its READY */
    uint64_t done;
    uint64_t rss_kb;          /* peak RSS from its last DONE */
    queue_t **queues;
    uint32_t queue_count;
    const char **tasks;       /* interned */
    uint32_t task_count;
    task_list_t held_tasks;    /* in dispatch order */
    int64_t last_seen_ms;
    worker_t *prev, *next;    /* the children list, or the supervisors */
};

/* ---- data queues: multiprocessing.Queue kept by the broker. Items are
   opaque msgpack objects, FIFO; a QGET that finds nothing waits until an
   item comes or its wait runs out. ---- */

typedef struct item_s {
    zmq_msg_t msg;
    uint64_t seq;         /* its order in the queue, its key in the store */
    struct item_s *next;
} item_t;

typedef struct getter_s {
    ident_t ident;
    char id[TQ_PROTO_MAX_ID + 1]; /* the QGET's request id */
    int64_t deadline_ms;
    struct getter_s *next;
} getter_t;

typedef struct dq_s {
    const char *name;     /* interned */
    uint32_t maxsize;     /* 0: no bound */
    uint32_t size;
    uint64_t next_seq;    /* for the next item put */
    item_t *head, *tail;
    getter_t *getters, *getters_tail;
    struct dq_s *next;
} dq_t;

/* An answer that must wait for the commit of what it acknowledges:
   SUBMITTED for a task, REPLY {size} for a data-queue item. */
typedef struct {
    ident_t to;
    char id[TQ_PROTO_MAX_ID + 1];
    uint8_t command;
    uint64_t size; /* REPLY: the queue's size */
} ack_t;

typedef struct {
    uint64_t submitted, completed, failed, requeued, lost, duplicates,
        malformed, errors, dropped, retried, cancelled, refused, stolen;
} counters_t;

struct tq_broker_t {
    tq_broker_config_t config;
    void *ctx;
    void *clients;           /* ROUTER */
    void *workers;           /* ROUTER */
    tq_auth_t *auth;         /* ZAP handler with CURVE, else NULL */
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
    task_list_t expiry;      /* final tasks, in expiry order */
    task_t **heap;           /* deadline heap of delayed tasks, 1-based */
    uint32_t heap_size, heap_cap;
    task_t *dead_head;       /* dead letters (failed tasks), oldest first */
    task_t *dead_tail;
    uint32_t dead_count;
    uint64_t memory;         /* payload bytes held */
    tq_store_t *store;       /* NULL: memory only */
    zhashx_t *dq_index;      /* name -> dq_t */
    zhashx_t *in_flight;     /* client ident hex -> unfinished tasks
                                (uintptr_t), with max_client_tasks only */
    dq_t *dqs;
    ack_t *acks;             /* answers waiting for the commit */
    uint32_t ack_count, ack_cap;
    bool disk_full;          /* the store passed max_disk */
    uint64_t recovered;      /* tasks loaded at start */
    uint64_t recovered_items; /* data-queue items loaded at start */
    uint64_t seq;
    uint64_t results_kept;
    int64_t started_ms;
    int64_t now_ms;
    int64_t next_check_ms;
    int64_t next_housekeeping_ms;
    int64_t log_window_ms;
    int log_count;
    bool dispatch_due;
    uint64_t worker_serial;   /* the last worker_t serial given */
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

/* Wall-clock ms, for result expiry times kept in the store. */
static int64_t
s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
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
    if (self->config.quiet)
        return;
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

/* ---- task lists ---- */

/* Links task into list after `after` (NULL: at the front). */
static void
s_list_insert(task_list_t *list, task_t *after, task_t *task)
{
    task->prev = after;
    task->next = after ? after->next : list->head;
    if (task->next)
        task->next->prev = task;
    else
        list->tail = task;
    if (after)
        after->next = task;
    else
        list->head = task;
}

static void
s_list_push(task_list_t *list, task_t *task, bool front)
{
    s_list_insert(list, front ? NULL : list->tail, task);
}

static void
s_list_remove(task_list_t *list, task_t *task)
{
    if (task->prev)
        task->prev->next = task->next;
    else
        list->head = task->next;
    if (task->next)
        task->next->prev = task->prev;
    else
        list->tail = task->prev;
    task->prev = task->next = NULL;
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
    s_list_push(&lane->fifo[task->priority], task, front);
    lane->waiting++;
    lane->queue->waiting++;
}

static void
s_lane_remove(lane_t *lane, task_t *task)
{
    s_list_remove(&lane->fifo[task->priority], task);
    lane->waiting--;
    lane->queue->waiting--;
}

/* Counts a client's unfinished tasks up (+1) or down (-1); returns the
   count before the change. Only kept when max_client_tasks is set. */
static uintptr_t
s_in_flight(tq_broker_t *self, const ident_t *client, int delta)
{
    char key[2 * 255 + 1];
    s_hex(key, s_ident_data(client), client->size);
    uintptr_t count = (uintptr_t) zhashx_lookup(self->in_flight, key);
    uintptr_t next = delta > 0 ? count + 1 : count ? count - 1 : 0;
    if (delta == 0)
        return count;
    if (next)
        zhashx_update(self->in_flight, key, (void *) next);
    else
        zhashx_delete(self->in_flight, key);
    return count;
}

/* ---- the store: every change of a task is written into the open batch,
   committed once per pass, before the pass's acknowledgements go out ---- */

static void
s_store_fill(const task_t *task, tq_store_task_t *row)
{
    *row = (tq_store_task_t){
        .id = task->id,
        .task = task->lane->task,
        .queue = task->lane->queue->name,
        .priority = task->priority,
        .time_limit_ms = task->time_limit_ms,
        .attempt = task->attempt,
        .state = task->state,
        .seq = task->seq,
        .code = task->code,
        .error = task->error,
        .retries = task->retries,
        .backoff_ms = task->backoff_ms,
        .failures = task->failures,
    };
}

static void
s_store_add(tq_broker_t *self, const task_t *task)
{
    if (!self->store)
        return;
    tq_store_task_t row;
    s_store_fill(task, &row);
    row.args = zmq_msg_data((zmq_msg_t *) &task->payload);
    row.args_size = zmq_msg_size((zmq_msg_t *) &task->payload);
    tq_store_add(self->store, &row);
}

static void
s_store_state(tq_broker_t *self, const task_t *task)
{
    if (self->store)
        tq_store_set_state(self->store, task->id, task->state, task->attempt);
}

static void
s_store_final(tq_broker_t *self, const task_t *task)
{
    if (!self->store)
        return;
    tq_store_task_t row;
    s_store_fill(task, &row);
    if (task->state == TQ_STATE_SUCCESS) {
        row.result = zmq_msg_data((zmq_msg_t *) &task->payload);
        row.result_size = zmq_msg_size((zmq_msg_t *) &task->payload);
    }
    /* dead letters never expire; other results after the TTL (at least
       1 ms, 0 means "never" in the store) */
    row.expires_ms = task->code == TQ_ELOST ? 0
                                : s_wall_ms() +
                                      (int64_t) self->config.result_ttl_s *
                                          1000 +
                                      1;
    tq_store_finish(self->store, &row);
}

static void
s_pack_str(msgpack_packer *pk, const char *s);
static void
s_pack_uint_kv(msgpack_packer *pk, const char *key, uint64_t value);
static void
s_free_sbuffer(void *data, void *hint);

/* Sends an acknowledgement: SUBMITTED id, or REPLY id {size}. */
static void
s_send_ack(tq_broker_t *self, const ident_t *to, tq_str_t id,
           uint8_t command, uint64_t size)
{
    if (command == TQ_CMD_SUBMITTED) {
        s_out(self, TQ_CMD_SUBMITTED)->id = id;
        s_send_to(self, self->clients, to, NULL);
        return;
    }
    msgpack_sbuffer body;
    msgpack_sbuffer_init(&body);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &body, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    s_pack_uint_kv(&pk, "size", size);
    zmq_msg_t payload;
    size_t bytes = body.size;
    zmq_msg_init_data(&payload, msgpack_sbuffer_release(&body), bytes,
                      s_free_sbuffer, NULL);
    s_out(self, TQ_CMD_REPLY)->id = id;
    s_send_to(self, self->clients, to, &payload);
    zmq_msg_close(&payload);
}

/* Acknowledges now, or after the commit that stores what is
   acknowledged. */
static void
s_ack(tq_broker_t *self, tq_str_t id, const ident_t *to, uint8_t command,
      uint64_t size)
{
    if (!self->store || !tq_store_dirty(self->store)) {
        s_send_ack(self, to, id, command, size);
        return;
    }
    if (self->ack_count == self->ack_cap) {
        self->ack_cap = self->ack_cap ? 2 * self->ack_cap : 256;
        self->acks = realloc(self->acks, self->ack_cap * sizeof *self->acks);
        if (!self->acks)
            abort();
    }
    ack_t *ack = &self->acks[self->ack_count++];
    *ack = (ack_t){.command = command, .size = size};
    s_ident_set(&ack->to, s_ident_data(to), to->size);
    tq_str_copy(ack->id, sizeof ack->id, id);
}

/* Commits the pass's batch, then sends the acknowledgements it held.
   Returns false if the store failed: nothing more may be acknowledged. */
static bool
s_commit(tq_broker_t *self)
{
    if (self->store && tq_store_dirty(self->store) &&
        tq_store_commit(self->store) != TQ_OK) {
        fprintf(stderr,
                "tq-broker: FATAL: cannot write the store in %s: %s; "
                "stopping without acknowledging %u requests\n",
                self->config.data_dir, tq_store_error(self->store),
                self->ack_count);
        return false;
    }
    for (uint32_t i = 0; i < self->ack_count; i++) {
        ack_t *ack = &self->acks[i];
        s_send_ack(self, &ack->to, tq_str(ack->id), ack->command, ack->size);
        s_ident_clear(&ack->to);
    }
    self->ack_count = 0;
    return true;
}

/* ---- workers ---- */

static void
s_held_push(worker_t *worker, task_t *task)
{
    s_list_push(&worker->held_tasks, task, false);
    worker->held++;
    task->worker = worker;
    task->lane->queue->running++;
}

static void
s_held_remove(worker_t *worker, task_t *task)
{
    s_list_remove(&worker->held_tasks, task);
    worker->held--;
    if (task->revoking) {
        /* answered by RETURNED, or by DONE, or the child is gone */
        task->revoking = false;
        worker->revoking--;
    }
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
    peer->serial = ++self->worker_serial;
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
static void s_heap_push(tq_broker_t *self, task_t *task, int64_t due_ms);

/* Puts a worker's tasks back in their lanes: the first one (the one the
   child was running, children run in dispatch order) is charged with the
   death when `lost`; past the limit it fails instead. */
static void
s_worker_release(tq_broker_t *self, worker_t *worker, bool lost, int code,
                 const char *why)
{
    task_t *running = worker->held_tasks.head;
    /* a child killed because its task was cancelled, or that was running a
       cancelled task when it died, is not the fault of its other tasks */
    if (code == TQ_ECANCELLED || worker->cancelled)
        lost = false;
    /* requeue from the back so that the tasks keep their order at the
       front of their lanes */
    while (worker->held_tasks.tail) {
        task_t *task = worker->held_tasks.tail;
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
            /* a task that may have killed its worker waits before it runs
               again (LOST_PAUSE_MS, doubling, with jitter), so a poison
               task cannot crash-loop the workers while others wait; one
               whose whole host went silent (TQ_EUNREACHABLE) did not kill
               anything and goes back at once */
            if (code == TQ_EUNREACHABLE)
                goto requeue;
            uint32_t doublings = task->lost - 1 < 10 ? task->lost - 1 : 10;
            double pause = LOST_PAUSE_MS * (double) (1u << doublings);
            pause *= 0.5 + (double) (random() % 1000) / 1000.0;
            task->state = TQ_STATE_RETRY;
            s_store_state(self, task);
            s_heap_push(self, task, self->now_ms + (int64_t) pause);
            self->counters.requeued++;
            continue;
        }
    requeue:
        task->state = TQ_STATE_PENDING;
        s_store_state(self, task);
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
    out->attempt = task->attempt;
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

/* Dead letters: every task that ended FAILURE, with its arguments, so that
   an operator can list it (tq failed) and run it again (tq retry). Those
   that killed their workers (TQ_ELOST) stay until retried; the others for
   the result TTL. */
static void
s_dead_add(tq_broker_t *self, task_t *task)
{
    task->dead = true;
    task->dead_next = NULL;
    task->dead_prev = self->dead_tail;
    if (self->dead_tail)
        self->dead_tail->dead_next = task;
    else
        self->dead_head = task;
    self->dead_tail = task;
    self->dead_count++;
}

static void
s_dead_remove(tq_broker_t *self, task_t *task)
{
    if (!task->dead)
        return;
    if (task->dead_prev)
        task->dead_prev->dead_next = task->dead_next;
    else
        self->dead_head = task->dead_next;
    if (task->dead_next)
        task->dead_next->dead_prev = task->dead_prev;
    else
        self->dead_tail = task->dead_prev;
    task->dead_prev = task->dead_next = NULL;
    task->dead = false;
    self->dead_count--;
}

/* Puts a final task on the expiry list, kept in expiry order (inserted
   from the back, where it nearly always belongs). */
static void
s_expiry_insert(tq_broker_t *self, task_t *task)
{
    task_t *after = self->expiry.tail;
    while (after && after->expires_ms > task->expires_ms)
        after = after->prev;
    s_list_insert(&self->expiry, after, task);
    self->results_kept++;
}

static void
s_expiry_remove(tq_broker_t *self, task_t *task)
{
    s_list_remove(&self->expiry, task);
    self->results_kept--;
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
    assert(!task->heap_index);
    free(task->error);
    task->error = error && *error ? s_strdup(error) : NULL;
    /* the arguments give way to the value, except for a failed task (a
       dead letter), which keeps them to run again if an operator retries
       it */
    if (state != TQ_STATE_FAILURE) {
        self->memory -= zmq_msg_size(&task->payload);
        zmq_msg_close(&task->payload);
        zmq_msg_init(&task->payload);
        if (value && state == TQ_STATE_SUCCESS)
            zmq_msg_move(&task->payload, value);
        self->memory += zmq_msg_size(&task->payload);
    }
    if (state == TQ_STATE_SUCCESS) {
        self->counters.completed++;
        task->lane->queue->done++;
    } else if (state == TQ_STATE_CANCELLED) {
        self->counters.cancelled++;
    } else {
        self->counters.failed++;
        task->lane->queue->failed++;
    }
    s_debug(self, "task %s %s%s%s", task->id, tq_state_name(state),
            task->error ? ": " : "", task->error ? task->error : "");

    if (task->client.size) {
        s_send_result(self, task, &task->client);
        if (self->config.max_client_tasks)
            s_in_flight(self, &task->client, -1);
        s_ident_clear(&task->client);
    }
    for (uint32_t i = 0; i < task->waiter_count; i++) {
        s_send_result(self, task, &task->waiters[i]);
        s_ident_clear(&task->waiters[i]);
    }
    free(task->waiters);
    task->waiters = NULL;
    task->waiter_count = 0;

    s_store_final(self, task);
    if (state == TQ_STATE_FAILURE)
        s_dead_add(self, task);
    task->prev = task->next = NULL;
    if (code == TQ_ELOST)
        return; /* a poison task: kept, outside the TTL, until retried */
    task->expires_ms = self->now_ms + (int64_t) self->config.result_ttl_s * 1000;
    s_expiry_insert(self, task);
}

/* ---- the deadline heap: tasks that may not run yet (countdown, retry
   backoff), ordered by due time; one heap instead of a timer per task ---- */

static void
s_heap_set(tq_broker_t *self, uint32_t i, task_t *task)
{
    self->heap[i] = task;
    task->heap_index = i;
}

static void
s_heap_up(tq_broker_t *self, uint32_t i)
{
    task_t *task = self->heap[i];
    while (i > 1 && self->heap[i / 2]->due_ms > task->due_ms) {
        s_heap_set(self, i, self->heap[i / 2]);
        i /= 2;
    }
    s_heap_set(self, i, task);
}

static void
s_heap_down(tq_broker_t *self, uint32_t i)
{
    task_t *task = self->heap[i];
    for (;;) {
        uint32_t child = 2 * i;
        if (child > self->heap_size)
            break;
        if (child < self->heap_size &&
            self->heap[child + 1]->due_ms < self->heap[child]->due_ms)
            child++;
        if (self->heap[child]->due_ms >= task->due_ms)
            break;
        s_heap_set(self, i, self->heap[child]);
        i = child;
    }
    s_heap_set(self, i, task);
}

static void
s_heap_push(tq_broker_t *self, task_t *task, int64_t due_ms)
{
    if (self->heap_size + 1 >= self->heap_cap) {
        self->heap_cap = self->heap_cap ? 2 * self->heap_cap : 256;
        self->heap = realloc(self->heap, self->heap_cap * sizeof *self->heap);
        if (!self->heap)
            abort();
    }
    task->due_ms = due_ms;
    task->prev = task->next = NULL;
    s_heap_set(self, ++self->heap_size, task);
    s_heap_up(self, self->heap_size);
    task->lane->queue->delayed++;
}

static void
s_heap_remove(tq_broker_t *self, task_t *task)
{
    uint32_t i = task->heap_index;
    assert(i >= 1 && i <= self->heap_size && self->heap[i] == task);
    task_t *last = self->heap[self->heap_size--];
    if (last != task) {
        s_heap_set(self, i, last);
        s_heap_up(self, i);
        s_heap_down(self, last->heap_index);
    }
    task->heap_index = 0;
    task->lane->queue->delayed--;
}

/* Moves tasks whose countdown or backoff ran out into their lanes. */
static void
s_release_due(tq_broker_t *self)
{
    while (self->heap_size && self->heap[1]->due_ms <= self->now_ms) {
        task_t *task = self->heap[1];
        s_heap_remove(self, task);
        task->state = TQ_STATE_PENDING;
        s_lane_push(task->lane, task, false);
        self->dispatch_due = true;
    }
}

/* Forgets results whose TTL ran out; the expiry list is in expiry order
   because the TTL is the same for every task. */
static void
s_expire_results(tq_broker_t *self)
{
    while (self->expiry.head && self->expiry.head->expires_ms <= self->now_ms) {
        task_t *task = self->expiry.head;
        s_expiry_remove(self, task);
        zhashx_delete(self->tasks, task->id);
        s_dead_remove(self, task);
        if (self->store)
            tq_store_remove(self->store, task->id);
        self->memory -= zmq_msg_size(&task->payload);
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
                task_t *head = lane->fifo[p].head;
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
    s_store_state(self, task);
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

/* Work stealing. With prefetch above 1 a child may hold tasks it has not
   started while another child has nothing to do (the lanes ran dry). The
   broker asks the holder for the held task that should run next (REVOKE);
   the holder answers at once, even while it runs a task: RETURNED if it had
   not started it, nothing if it had (its DONE comes). Only a RETURNED
   task is queued again (s_on_returned), so a steal never runs a task
   twice. At most one REVOKE is outstanding per idle child. Returns true
   if it asked for a task. */
/* True if a REVOKE asked for taker may still be answered RETURNED. One
   for a task that has become the first its holder holds does not count:
   the holder ended the tasks before it, so it has most likely started it
   and stays silent; the idle child must not wait for that task's end. */
static bool
s_asked_for(const tq_broker_t *self, const worker_t *taker)
{
    for (const worker_t *w = self->children; w; w = w->next) {
        if (!w->revoking || !w->held_tasks.head)
            continue;
        for (const task_t *t = w->held_tasks.head->next; t; t = t->next)
            if (t->revoking && t->revoke_for == taker->serial)
                return true;
    }
    return false;
}

static bool
s_steal(tq_broker_t *self)
{
    bool stole = false;
    for (worker_t *taker = self->children; taker; taker = taker->next) {
        if (taker->held + taker->cancelled > 0 || taker->credit == 0 ||
            s_asked_for(self, taker))
            continue;
        /* the unstarted task that should run next, by the order dispatch
           uses (priority, then submission), so that tasks still start in
           the order a single queue would start them */
        task_t *victim = NULL;
        worker_t *holder = NULL;
        for (worker_t *w = self->children; w; w = w->next) {
            /* a child that cannot give a task back is never asked */
            if (w == taker || w->held < 2 ||
                !(w->features & TQ_FEATURE_RETURNS))
                continue;
            /* the first held task is (or soon is) running: never it */
            for (task_t *t = w->held_tasks.head->next; t; t = t->next)
                if (!t->revoking && s_worker_serves(taker, t->lane) &&
                    (!victim || t->priority > victim->priority ||
                     (t->priority == victim->priority &&
                      t->seq < victim->seq))) {
                    victim = t;
                    holder = w;
                }
        }
        if (!victim)
            continue; /* nothing this child could take */
        tq_msg_t *out = s_out(self, TQ_CMD_REVOKE);
        out->id = tq_str(victim->id);
        out->attempt = victim->attempt;
        if (s_send_to(self, self->workers, &holder->ident, NULL) != 0) {
            /* gone: its tasks go back to their lanes; look again */
            s_peer_remove(self, holder, false, 0, "unreachable");
            self->dispatch_due = true;
            return true;
        }
        victim->revoking = true;
        victim->revoke_for = taker->serial;
        holder->revoking++;
        stole = true;
    }
    return stole;
}

/* Gives waiting tasks to workers with free credit, least loaded first:
   each round offers one task to every worker at the lowest load, so every
   idle child is served before any child gets a second task (a burst
   spreads over all of them, and a task given back after REVOKE goes to the
   idle child that wanted it, not back to its holder). */
static void
s_dispatch(tq_broker_t *self)
{
    self->dispatch_due = false;
    uint32_t level = 0;
    for (;;) {
        bool progress = false;
        uint32_t next_level = UINT32_MAX;
        worker_t *next;
        for (worker_t *worker = self->children; worker; worker = next) {
            next = worker->next;
            uint32_t load = worker->held + worker->cancelled;
            if (load >= worker->credit)
                continue;
            if (load > level) {
                if (load < next_level)
                    next_level = load;
                continue;
            }
            task_t *task = s_next_task(self, worker);
            if (!task)
                continue;
            if (!s_dispatch_one(self, worker, task))
                next = self->children; /* it was removed: start over */
            progress = true;
        }
        /* a round without a dispatch: every worker at this load has
           nothing it can take; try the next load up, and at the top, give
           idle children what others hold unstarted */
        if (!progress) {
            if (next_level != UINT32_MAX)
                level = next_level;
            else {
                s_steal(self); /* the tasks come back on RETURNED */
                break;
            }
        }
    }
}

/* ---- client handlers ---- */

static bool
s_ident_eq(const ident_t *a, const ident_t *b)
{
    return a->size == b->size &&
           memcmp(s_ident_data(a), s_ident_data(b), a->size) == 0;
}

/* Refuses a submission that would pass a limit: the queue's length or the
   memory the broker may hold. Returns true (and answers ERROR) if so. */
static bool
s_over_limit(tq_broker_t *self, const tq_msg_t *msg, queue_t *queue,
             size_t size)
{
    char text[TQ_PROTO_MAX_NAME + 128];
    ident_t from = s_sender(self);
    uint32_t max = self->config.max_queue;
    if (max && queue->waiting + queue->delayed >= max)
        snprintf(text, sizeof text, "queue %s is full (max-queue %u)",
                 queue->name, max);
    else if (self->config.max_client_tasks &&
             s_in_flight(self, &from, 0) >= self->config.max_client_tasks)
        snprintf(text, sizeof text,
                 "this client has %u tasks unfinished (max-client-tasks %u)",
                 self->config.max_client_tasks,
                 self->config.max_client_tasks);
    else if (self->disk_full)
        snprintf(text, sizeof text,
                 "broker disk limit reached (max-disk %llu MB)",
                 (unsigned long long) (self->config.max_disk >> 20));
    else if (self->config.max_memory &&
             self->memory + size > self->config.max_memory)
        snprintf(text, sizeof text,
                 "broker memory limit reached (max-memory %llu MB)",
                 (unsigned long long) (self->config.max_memory >> 20));
    else
        return false;
    self->counters.refused++;
    s_debug(self, "SUBMIT refused: %s", text);
    s_reply_error(self, self->clients, TQ_EFULL, text, msg->id);
    return true;
}

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
        queue_t *queue = s_queue(self, msg->queue);
        size_t size = zmq_msg_size(&self->frames.payload);
        if (s_over_limit(self, msg, queue, size))
            return;
        task_t *task = s_alloc(sizeof *task);
        memcpy(task->id, id, sizeof id);
        task->lane = s_lane(queue, s_intern(self, msg->task));
        task->priority = (uint8_t) msg->priority;
        task->time_limit_ms = msg->time_limit_ms;
        task->retries = msg->retries;
        task->backoff_ms = msg->backoff_ms ? msg->backoff_ms : 1000;
        task->seq = ++self->seq;
        task->submitted_ms = self->now_ms;
        task->state = TQ_STATE_PENDING;
        zmq_msg_init(&task->payload);
        zmq_msg_move(&task->payload, &self->frames.payload);
        self->memory += size;
        ident_t from = s_sender(self);
        s_ident_set(&task->client, s_ident_data(&from), from.size);
        if (self->config.max_client_tasks)
            s_in_flight(self, &from, +1);
        zhashx_insert(self->tasks, task->id, task);
        s_store_add(self, task);
        if (msg->delay_ms)
            s_heap_push(self, task, self->now_ms + msg->delay_ms);
        else {
            s_lane_push(task->lane, task, false);
            self->dispatch_due = true;
        }
        self->counters.submitted++;
    }
    ident_t from = s_sender(self);
    s_ack(self, msg->id, &from, TQ_CMD_SUBMITTED, 0);
}

/* Adds a client to those told when the task ends, once: a client that
   re-attaches after a broker restart asks again. */
static void
s_add_waiter(task_t *task, const ident_t *from)
{
    if (task->client.size && s_ident_eq(&task->client, from))
        return;
    for (uint32_t i = 0; i < task->waiter_count; i++)
        if (s_ident_eq(&task->waiters[i], from))
            return;
    task->waiters = realloc(task->waiters,
                            (task->waiter_count + 1) * sizeof *task->waiters);
    if (!task->waiters)
        abort();
    ident_t *waiter = &task->waiters[task->waiter_count++];
    *waiter = (ident_t){0};
    s_ident_set(waiter, s_ident_data(from), from->size);
}

static void
s_reply_unknown(tq_broker_t *self, tq_str_t id)
{
    tq_msg_t *out = s_out(self, TQ_CMD_UNKNOWN);
    out->id = id;
    s_reply(self, self->clients);
}

static void
s_on_get(tq_broker_t *self, const tq_msg_t *msg)
{
    char id[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(id, sizeof id, msg->id);
    task_t *task = zhashx_lookup(self->tasks, id);
    ident_t from = s_sender(self);
    if (!task)
        s_reply_unknown(self, msg->id);
    else if (TQ_STATE_IS_FINAL(task->state))
        s_send_result(self, task, &from);
    else if (msg->wait)
        s_add_waiter(task, &from);
    else {
        tq_msg_t *out = s_out(self, TQ_CMD_STATE);
        out->id = msg->id;
        out->state = task->state;
        s_reply(self, self->clients);
    }
}

/* The supervisor of a worker child, if it heartbeats. */
static worker_t *
s_supervisor_of(tq_broker_t *self, const worker_t *child)
{
    for (worker_t *sup = self->supervisors; sup; sup = sup->next)
        if (sup->pid == child->ppid && strcmp(sup->host, child->host) == 0)
            return sup;
    return NULL;
}

/* Cancels a task that is not final. A running one is taken from its
   worker at once (its credit stays taken until the child is gone or
   answers) and its supervisor is told to kill the child. */
static void
s_cancel(tq_broker_t *self, task_t *task, const char *why)
{
    if (task->heap_index)
        s_heap_remove(self, task);
    else if (task->worker) {
        worker_t *worker = task->worker;
        s_held_remove(worker, task);
        worker->cancelled++;
        worker_t *sup = s_supervisor_of(self, worker);
        if (sup) {
            tq_msg_t *out = s_out(self, TQ_CMD_KILL);
            out->pid = worker->pid;
            out->id = tq_str(task->id);
            s_send_to(self, self->workers, &sup->ident, NULL);
        } else
            s_warn(self, "task %s cancelled, but worker %s pid %llu has no "
                         "supervisor to stop it", task->id, worker->host,
                   (unsigned long long) worker->pid);
    } else
        s_lane_remove(task->lane, task);
    s_task_final(self, task, TQ_STATE_CANCELLED, TQ_ECANCELLED, why, NULL);
}

static void
s_on_cancel(tq_broker_t *self, const tq_msg_t *msg)
{
    char id[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(id, sizeof id, msg->id);
    task_t *task = zhashx_lookup(self->tasks, id);
    if (!task) {
        s_reply_unknown(self, msg->id);
        return;
    }
    if (!TQ_STATE_IS_FINAL(task->state)) {
        ident_t from = s_sender(self);
        /* the canceller hears the outcome through the RESULT that ending
           the task sends to every waiter */
        s_add_waiter(task, &from);
        s_cancel(self, task, "cancelled");
        self->dispatch_due = true;
    } else {
        ident_t from = s_sender(self);
        s_send_result(self, task, &from);
    }
}


static void
s_on_retry(tq_broker_t *self, const tq_msg_t *msg)
{
    char id[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(id, sizeof id, msg->id);
    task_t *task = zhashx_lookup(self->tasks, id);
    if (!task) {
        s_reply_unknown(self, msg->id);
        return;
    }
    if (!task->dead) {
        char text[128];
        snprintf(text, sizeof text, "task %s is %s, not a dead letter", id,
                 tq_state_name(task->state));
        s_reply_error(self, self->clients, TQ_ESTATE, text, msg->id);
        return;
    }
    /* the arguments were dropped when it failed: a dead letter keeps them
       (see s_task_final), so it can run again as it was submitted */
    s_dead_remove(self, task);
    if (task->code != TQ_ELOST)
        s_expiry_remove(self, task);
    task->lost = 0;
    task->failures = 0;
    free(task->error);
    task->error = NULL;
    task->code = 0;
    task->state = TQ_STATE_PENDING;
    s_store_state(self, task);
    if (self->store)
        tq_store_set_retries(self->store, task->id, task->retries, 0);
    task->lane->queue->failed--;
    self->counters.failed--;
    s_lane_push(task->lane, task, false);
    self->counters.requeued++;
    self->dispatch_due = true;
    tq_msg_t *out = s_out(self, TQ_CMD_SUBMITTED);
    out->id = msg->id;
    s_reply(self, self->clients);
}

static void
s_send_reply(tq_broker_t *self, msgpack_sbuffer *body);

static void
s_on_purge(tq_broker_t *self, const tq_msg_t *msg)
{
    char name[TQ_PROTO_MAX_NAME + 1];
    tq_str_copy(name, sizeof name, msg->queue);
    queue_t *queue = zhashx_lookup(self->queue_index, name);
    uint64_t purged = 0;
    if (queue) {
        for (lane_t *lane = queue->lanes; lane; lane = lane->next)
            for (int p = 0; p < PRIORITIES; p++)
                while (lane->fifo[p].head) {
                    s_cancel(self, lane->fifo[p].head, "purged");
                    purged++;
                }
        /* delayed tasks of the queue: collected first, because each
           removal reorders the heap */
        task_t **found = s_alloc((self->heap_size + 1) * sizeof *found);
        uint32_t count = 0;
        for (uint32_t i = 1; i <= self->heap_size; i++)
            if (self->heap[i]->lane->queue == queue)
                found[count++] = self->heap[i];
        for (uint32_t i = 0; i < count; i++)
            s_cancel(self, found[i], "purged");
        purged += count;
        free(found);
    }
    msgpack_sbuffer body;
    msgpack_sbuffer_init(&body);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &body, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str(&pk, 5);
    msgpack_pack_str_body(&pk, "queue", 5);
    msgpack_pack_str(&pk, strlen(name));
    msgpack_pack_str_body(&pk, name, strlen(name));
    msgpack_pack_str(&pk, 6);
    msgpack_pack_str_body(&pk, "purged", 6);
    msgpack_pack_uint64(&pk, purged);
    s_send_reply(self, &body);
    s_warn(self, "queue %s purged: %llu tasks", name,
           (unsigned long long) purged);
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
    msgpack_pack_map(pk, self->auth ? 10 : 9);
    s_pack_str(pk, "version");
    s_pack_str(pk, "TQP/1");
    s_pack_uint_kv(pk, "pid", (uint64_t) getpid());
    s_pack_uint_kv(pk, "uptime_ms", (uint64_t) (self->now_ms - self->started_ms));
    s_pack_uint_kv(pk, "memory", self->memory);

    size_t count = 0;
    for (queue_t *q = self->queues; q; q = q->next)
        count++;
    s_pack_str(pk, "queues");
    msgpack_pack_array(pk, count);
    for (queue_t *q = self->queues; q; q = q->next) {
        int64_t oldest = self->now_ms;
        for (lane_t *lane = q->lanes; lane; lane = lane->next)
            for (int p = 0; p < PRIORITIES; p++)
                if (lane->fifo[p].head &&
                    lane->fifo[p].head->submitted_ms < oldest)
                    oldest = lane->fifo[p].head->submitted_ms;
        msgpack_pack_map(pk, 7);
        s_pack_str(pk, "name");
        s_pack_str(pk, q->name);
        s_pack_uint_kv(pk, "waiting", q->waiting);
        s_pack_uint_kv(pk, "running", q->running);
        s_pack_uint_kv(pk, "delayed", q->delayed);
        s_pack_uint_kv(pk, "done", q->done);
        s_pack_uint_kv(pk, "failed", q->failed);
        s_pack_uint_kv(pk, "oldest_ms", (uint64_t) (self->now_ms - oldest));
    }

    count = 0;
    for (worker_t *w = self->children; w; w = w->next)
        count++;
    s_pack_str(pk, "workers");
    msgpack_pack_array(pk, count);
    for (worker_t *w = self->children; w; w = w->next) {
        msgpack_pack_map(pk, 10);
        s_pack_str(pk, "host");
        s_pack_str(pk, w->host);
        s_pack_uint_kv(pk, "ppid", w->ppid);
        s_pack_uint_kv(pk, "pid", w->pid);
        s_pack_uint_kv(pk, "credit", w->credit);
        s_pack_uint_kv(pk, "running", w->held);
        s_pack_uint_kv(pk, "done", w->done);
        s_pack_uint_kv(pk, "rss_kb", w->rss_kb);
        s_pack_str(pk, "busy");
        if (w->held + w->cancelled)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
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

    count = 0;
    for (dq_t *dq = self->dqs; dq; dq = dq->next)
        count++;
    s_pack_str(pk, "data_queues");
    msgpack_pack_array(pk, count);
    for (dq_t *dq = self->dqs; dq; dq = dq->next) {
        uint64_t getters = 0;
        for (getter_t *g = dq->getters; g; g = g->next)
            getters++;
        msgpack_pack_map(pk, 4);
        s_pack_str(pk, "name");
        s_pack_str(pk, dq->name);
        s_pack_uint_kv(pk, "size", dq->size);
        s_pack_uint_kv(pk, "maxsize", dq->maxsize);
        s_pack_uint_kv(pk, "getters", getters);
    }

    if (self->auth) {
        /* CURVE handshakes, from the ZAP handler */
        tq_auth_stats_t auth;
        tq_auth_stats(&auth);
        s_pack_str(pk, "auth");
        msgpack_pack_map(pk, 5);
        s_pack_uint_kv(pk, "allowed", auth.allowed);
        s_pack_uint_kv(pk, "denied_clients", auth.denied_clients);
        s_pack_uint_kv(pk, "denied_workers", auth.denied_workers);
        s_pack_uint_kv(pk, "denied_other", auth.denied_other);
        s_pack_uint_kv(pk, "reloads", auth.reloads);
    }

    const counters_t *c = &self->counters;
    s_pack_str(pk, "counters");
    msgpack_pack_map(pk, 15);
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
    s_pack_uint_kv(pk, "retried", c->retried);
    s_pack_uint_kv(pk, "cancelled", c->cancelled);
    s_pack_uint_kv(pk, "refused", c->refused);
    s_pack_uint_kv(pk, "stolen", c->stolen);
    s_pack_uint_kv(pk, "dead_letters", self->dead_count);
}

static void
s_free_sbuffer(void *data, void *hint)
{
    (void) hint;
    free(data);
}

/* Sends a msgpack map (its buffer is consumed) to the current sender, as
   the payload of the command already set in self->out. */
static void
s_send_body(tq_broker_t *self, msgpack_sbuffer *body)
{
    zmq_msg_t payload;
    size_t size = body->size;
    zmq_msg_init_data(&payload, msgpack_sbuffer_release(body), size,
                      s_free_sbuffer, NULL);
    ident_t to = s_sender(self);
    s_send_to(self, self->clients, &to, &payload);
    zmq_msg_close(&payload);
}

static void
s_send_reply(tq_broker_t *self, msgpack_sbuffer *body)
{
    /* echo the request's id, when it gave one */
    s_out(self, TQ_CMD_REPLY)->id = self->in.id;
    s_send_body(self, body);
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
    s_out(self, TQ_CMD_STATUS_REPLY);
    s_send_body(self, &body);
}

/* The dead letters, oldest first: {"failed": [{id, task, queue, attempts,
   code, error}]}. */
static void
s_on_failed(tq_broker_t *self, const tq_msg_t *msg)
{
    (void) msg;
    msgpack_sbuffer body;
    msgpack_sbuffer_init(&body);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &body, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    s_pack_str(&pk, "failed");
    msgpack_pack_array(&pk, self->dead_count);
    for (const task_t *task = self->dead_head; task; task = task->dead_next) {
        msgpack_pack_map(&pk, 6);
        s_pack_str(&pk, "id");
        s_pack_str(&pk, task->id);
        s_pack_str(&pk, "task");
        s_pack_str(&pk, task->lane->task);
        s_pack_str(&pk, "queue");
        s_pack_str(&pk, task->lane->queue->name);
        s_pack_uint_kv(&pk, "attempts", task->attempt);
        s_pack_uint_kv(&pk, "code", task->code);
        s_pack_str(&pk, "error");
        s_pack_str(&pk, task->error ? task->error : "");
    }
    s_send_reply(self, &body);
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

/* ---- data queue handlers ---- */

static dq_t *
s_dq(tq_broker_t *self, tq_str_t name, bool create)
{
    char key[TQ_PROTO_MAX_NAME + 1];
    tq_str_copy(key, sizeof key, name);
    dq_t *dq = zhashx_lookup(self->dq_index, key);
    if (!dq && create) {
        dq = s_alloc(sizeof *dq);
        dq->name = s_intern(self, name);
        dq->next = self->dqs;
        self->dqs = dq;
        zhashx_insert(self->dq_index, dq->name, dq);
    }
    return dq;
}

/* Answers the current sender REPLY {key: value, ...} for up to two uint
   pairs, echoing the request id. */
static void
s_reply_counts(tq_broker_t *self, tq_str_t id, const char *k1, uint64_t v1,
               const char *k2, uint64_t v2)
{
    msgpack_sbuffer body;
    msgpack_sbuffer_init(&body);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &body, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, k2 ? 2 : 1);
    s_pack_uint_kv(&pk, k1, v1);
    if (k2)
        s_pack_uint_kv(&pk, k2, v2);
    s_out(self, TQ_CMD_REPLY)->id = id;
    s_send_body(self, &body);
}

/* Hands an item (moved) to the first waiting getter that is still there.
   Returns false if none took it. */
static bool
s_dq_hand(tq_broker_t *self, dq_t *dq, zmq_msg_t *item)
{
    while (dq->getters) {
        getter_t *g = dq->getters;
        dq->getters = g->next;
        if (!dq->getters)
            dq->getters_tail = NULL;
        tq_msg_t *out = s_out(self, TQ_CMD_QITEM);
        out->id = tq_str(g->id);
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        zmq_msg_copy(&copy, item);
        int rc = s_send_to(self, self->clients, &g->ident, &copy);
        zmq_msg_close(&copy);
        s_ident_clear(&g->ident);
        free(g);
        if (rc == 0) {
            zmq_msg_close(item);
            zmq_msg_init(item);
            return true;
        }
    }
    return false;
}

/* Appends an item (moved) to a data queue. */
static item_t *
s_dq_append(tq_broker_t *self, dq_t *dq, zmq_msg_t *item)
{
    item_t *node = s_alloc(sizeof *node);
    zmq_msg_init(&node->msg);
    zmq_msg_move(&node->msg, item);
    node->seq = dq->next_seq++;
    self->memory += zmq_msg_size(&node->msg);
    if (dq->tail)
        dq->tail->next = node;
    else
        dq->head = node;
    dq->tail = node;
    dq->size++;
    return node;
}

static void
s_on_qput(tq_broker_t *self, const tq_msg_t *msg)
{
    const char *reason = NULL;
    zmq_msg_t *item = &self->frames.payload;
    if (tq_proto_check_payload(zmq_msg_data(item), zmq_msg_size(item), false,
                               &reason) != TQ_OK) {
        char text[256];
        snprintf(text, sizeof text, "item: %s", reason);
        self->counters.malformed++;
        s_reply_error(self, self->clients, TQ_EPROTO, text, msg->id);
        return;
    }
    dq_t *dq = s_dq(self, msg->queue, true);
    if (msg->maxsize)
        dq->maxsize = msg->maxsize;
    ident_t from = s_sender(self);
    if (s_dq_hand(self, dq, item)) {
        s_ack(self, msg->id, &from, TQ_CMD_REPLY, dq->size);
        return;
    }
    char text[TQ_PROTO_MAX_NAME + 64];
    if (dq->maxsize && dq->size >= dq->maxsize) {
        snprintf(text, sizeof text, "queue %s is full (maxsize %u)", dq->name,
                 dq->maxsize);
        s_reply_error(self, self->clients, TQ_EFULL, text, msg->id);
        return;
    }
    if (self->config.max_memory &&
        self->memory + zmq_msg_size(item) > self->config.max_memory) {
        snprintf(text, sizeof text,
                 "broker memory limit reached (max-memory %llu MB)",
                 (unsigned long long) (self->config.max_memory >> 20));
        s_reply_error(self, self->clients, TQ_EFULL, text, msg->id);
        return;
    }
    item_t *node = s_dq_append(self, dq, item);
    /* accepted means stored, as for tasks: the REPLY waits for the commit */
    if (self->store)
        tq_store_item_add(self->store, dq->name, node->seq, dq->maxsize,
                          zmq_msg_data(&node->msg), zmq_msg_size(&node->msg));
    s_ack(self, msg->id, &from, TQ_CMD_REPLY, dq->size);
}

static void
s_reply_empty(tq_broker_t *self, const ident_t *to, const char *id,
              const dq_t *dq, const char *name)
{
    char text[TQ_PROTO_MAX_NAME + 32];
    snprintf(text, sizeof text, "queue %s is empty", dq ? dq->name : name);
    tq_msg_t *out = s_out(self, TQ_CMD_ERROR);
    out->code = TQ_EEMPTY;
    out->error = tq_str(text);
    out->id = tq_str(id);
    s_send_to(self, self->clients, to, NULL);
}

static void
s_on_qget(tq_broker_t *self, const tq_msg_t *msg)
{
    dq_t *dq = s_dq(self, msg->queue, msg->time_limit_ms > 0);
    ident_t from = s_sender(self);
    char id[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(id, sizeof id, msg->id);
    if (dq && dq->head) {
        item_t *node = dq->head;
        dq->head = node->next;
        if (!dq->head)
            dq->tail = NULL;
        dq->size--;
        self->memory -= zmq_msg_size(&node->msg);
        tq_msg_t *out = s_out(self, TQ_CMD_QITEM);
        out->id = msg->id;
        if (s_send_to(self, self->clients, &from, &node->msg) != 0) {
            /* the getter is gone: the item stays first in line */
            node->next = dq->head;
            dq->head = node;
            if (!dq->tail)
                dq->tail = node;
            dq->size++;
            self->memory += zmq_msg_size(&node->msg);
            return;
        }
        if (self->store)
            tq_store_item_remove(self->store, dq->name, node->seq);
        zmq_msg_close(&node->msg);
        free(node);
        return;
    }
    if (msg->time_limit_ms == 0) {
        char name[TQ_PROTO_MAX_NAME + 1];
        tq_str_copy(name, sizeof name, msg->queue);
        s_reply_empty(self, &from, id, dq, name);
        return;
    }
    getter_t *g = s_alloc(sizeof *g);
    s_ident_set(&g->ident, s_ident_data(&from), from.size);
    memcpy(g->id, id, sizeof id);
    g->deadline_ms = self->now_ms + msg->time_limit_ms;
    if (dq->getters_tail)
        dq->getters_tail->next = g;
    else
        dq->getters = g;
    dq->getters_tail = g;
}

static void
s_on_qsize(tq_broker_t *self, const tq_msg_t *msg)
{
    dq_t *dq = s_dq(self, msg->queue, false);
    s_reply_counts(self, msg->id, "size", dq ? dq->size : 0, "maxsize",
                   dq ? dq->maxsize : 0);
}

/* Ends the waits that ran out; returns the earliest deadline left, or
   INT64_MAX. */
static int64_t
s_expire_getters(tq_broker_t *self)
{
    int64_t next = INT64_MAX;
    for (dq_t *dq = self->dqs; dq; dq = dq->next) {
        getter_t **link = &dq->getters;
        dq->getters_tail = NULL;
        while (*link) {
            getter_t *g = *link;
            if (g->deadline_ms <= self->now_ms) {
                s_reply_empty(self, &g->ident, g->id, dq, NULL);
                *link = g->next;
                s_ident_clear(&g->ident);
                free(g);
                continue;
            }
            if (g->deadline_ms < next)
                next = g->deadline_ms;
            dq->getters_tail = g;
            link = &g->next;
        }
    }
    return next;
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
    } else {
        /* the same process on a new socket (it reconnected): the old peer
           is gone, and the tasks it held were dropped by the child, except
           the one it was running, which it finishes and answers on the new
           socket; that one moves to the new peer (queued again it could
           run twice), the others are queued again */
        char host[TQ_PROTO_MAX_NAME + 1];
        tq_str_copy(host, sizeof host, msg->host);
        task_t *running = NULL;
        for (worker_t *old = self->children; old; old = old->next)
            if (old->pid == msg->pid && strcmp(old->host, host) == 0) {
                running = old->held_tasks.head;
                if (running)
                    s_held_remove(old, running);
                s_peer_remove(self, old, false, 0, "announced again");
                break;
            }
        worker = s_peer_new(self, false);
        if (running)
            s_held_push(worker, running);
    }
    tq_str_copy(worker->host, sizeof worker->host, msg->host);
    worker->pid = msg->pid;
    worker->ppid = msg->ppid;
    worker->credit = msg->credit;
    worker->features = msg->features;
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
                   !task->heap_index && task->attempt == msg->attempt &&
                   (task->worker == NULL || task->worker == worker);
    if (worker && !worker->supervisor)
        worker->rss_kb = msg->rss_kb;
    if (!current) {
        if (worker && worker->cancelled && task &&
            task->state == TQ_STATE_CANCELLED &&
            task->attempt == msg->attempt) {
            /* it finished the task we cancelled before it was stopped:
               its credit comes back */
            worker->cancelled--;
            self->dispatch_due = true;
        }
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
    self->dispatch_due = true;
    if (state == TQ_STATE_FAILURE && code == TQ_ETASK && task->retries) {
        /* retry after backoff_ms * 2^failures, with +-50% jitter so that
           tasks failing together do not come back together */
        task->retries--;
        double delay = (double) task->backoff_ms *
                       (double) (1ULL << (task->failures < 20 ? task->failures
                                                              : 20));
        delay *= 0.5 + (double) (random() % 1000) / 1000.0;
        if (delay > 3600e3)
            delay = 3600e3;
        task->failures++;
        task->state = TQ_STATE_RETRY;
        s_store_state(self, task);
        if (self->store)
            tq_store_set_retries(self->store, task->id, task->retries,
                                 task->failures);
        free(task->error);
        task->error = text[0] ? s_strdup(text) : NULL;
        s_heap_push(self, task, self->now_ms + (int64_t) delay);
        self->counters.retried++;
        s_debug(self, "task %s failed (%s), retry in %.0f ms", id, text,
                delay);
        return;
    }
    s_task_final(self, task, state, code, text, &self->frames.payload);
}

/* RETURNED: a holder gave back, unstarted, a task it was asked for. It
   goes to the front of its lane, where the idle child that wanted it finds
   it (dispatch serves the least loaded first). Anything else (an old
   attempt, a task that is no longer this peer's) is stale: ignored. */
static void
s_on_returned(tq_broker_t *self, const tq_msg_t *msg)
{
    char id[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(id, sizeof id, msg->id);
    worker_t *worker = s_peer(self);
    task_t *task = zhashx_lookup(self->tasks, id);
    if (!worker || worker->supervisor || !task || task->worker != worker ||
        task->attempt != msg->attempt || !task->revoking) {
        s_debug(self, "stale RETURNED %s attempt %u", id, msg->attempt);
        return;
    }
    s_held_remove(worker, task);
    task->state = TQ_STATE_PENDING;
    s_store_state(self, task);
    s_lane_push(task->lane, task, true);
    self->counters.stolen++;
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
            s_peer_remove(self, w, msg->code != TQ_ECANCELLED,
                          (int) msg->code, why);
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
                s_peer_remove(self, w, true, TQ_EUNREACHABLE, why);
        }
        s_peer_remove(self, sup, false, 0, why);
    }
}

/* ---- recovery ---- */

/* Rebuilds one stored task: waiting and delayed ones wait again, running
   ones are queued again (their next dispatch is a new attempt), final ones
   keep their result until its TTL, dead letters stay dead. */
static void
s_recover(const tq_store_task_t *row, void *arg)
{
    tq_broker_t *self = arg;
    if (!tq_proto_valid_id(row->id, strlen(row->id)) ||
        !tq_proto_valid_name(row->task, strlen(row->task)) ||
        !tq_proto_valid_name(row->queue, strlen(row->queue)) ||
        row->priority >= PRIORITIES || row->state >= TQ_STATE_COUNT_) {
        s_warn(self, "store: skipping a damaged row (id %.64s)", row->id);
        return;
    }
    if (zhashx_lookup(self->tasks, row->id))
        return;
    int64_t wall = s_wall_ms();
    if (TQ_STATE_IS_FINAL(row->state) && row->expires_ms &&
        row->expires_ms <= wall)
        return; /* expired while the broker was down; purged later */
    task_t *task = s_alloc(sizeof *task);
    snprintf(task->id, sizeof task->id, "%s", row->id);
    queue_t *queue = s_queue(self, tq_str(row->queue));
    task->lane = s_lane(queue, s_intern(self, tq_str(row->task)));
    task->priority = (uint8_t) row->priority;
    task->time_limit_ms = row->time_limit_ms;
    task->attempt = row->attempt;
    task->seq = row->seq;
    if (row->seq > self->seq)
        self->seq = row->seq;
    task->submitted_ms = self->now_ms;
    task->retries = row->retries;
    task->backoff_ms = row->backoff_ms ? row->backoff_ms : 1000;
    task->failures = row->failures;
    zmq_msg_init(&task->payload);
    zhashx_insert(self->tasks, task->id, task);
    self->recovered++;
    if (TQ_STATE_IS_FINAL(row->state)) {
        task->state = (uint8_t) row->state;
        task->code = row->code;
        task->error = row->error && *row->error ? s_strdup(row->error) : NULL;
        const void *keep = row->state == TQ_STATE_SUCCESS ? row->result : NULL;
        size_t size = row->state == TQ_STATE_SUCCESS ? row->result_size : 0;
        if (row->state == TQ_STATE_FAILURE) {
            keep = row->args; /* a dead letter runs again on retry */
            size = row->args_size;
        }
        if (keep && size) {
            zmq_msg_init_size(&task->payload, size);
            memcpy(zmq_msg_data(&task->payload), keep, size);
            self->memory += size;
        }
        if (row->state == TQ_STATE_FAILURE)
            s_dead_add(self, task);
        if (row->code == TQ_ELOST)
            return;
        /* rows come in submission order, not expiry order */
        task->expires_ms = self->now_ms + (row->expires_ms - wall);
        s_expiry_insert(self, task);
        return;
    }
    zmq_msg_init_size(&task->payload, row->args_size);
    memcpy(zmq_msg_data(&task->payload), row->args, row->args_size);
    self->memory += row->args_size;
    task->state = TQ_STATE_PENDING;
    s_lane_push(task->lane, task, false);
}

/* Rebuilds one stored data-queue item (rows come by queue, in order). */
static void
s_recover_item(const char *queue, uint64_t seq, uint32_t maxsize,
               const void *data, size_t size, void *arg)
{
    tq_broker_t *self = arg;
    if (!tq_proto_valid_name(queue, strlen(queue)) ||
        tq_proto_check_payload(data, size, false, NULL) != TQ_OK) {
        s_warn(self, "store: skipping a damaged queue item (%.255s)", queue);
        return;
    }
    dq_t *dq = s_dq(self, tq_str(queue), true);
    dq->maxsize = maxsize;
    zmq_msg_t item;
    zmq_msg_init_size(&item, size);
    memcpy(zmq_msg_data(&item), data, size);
    dq->next_seq = seq;
    s_dq_append(self, dq, &item);
    zmq_msg_close(&item);
    self->recovered_items++;
}

/* Opens the store and loads what it holds. */
static int
s_open_store(tq_broker_t *self, char *error, size_t errlen)
{
    const char *dir = self->config.data_dir;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(error, errlen, "cannot create the data directory %s: %s",
                 dir, strerror(errno));
        return -1;
    }
    self->store = tq_store_open(dir, (tq_sync_t) self->config.sync, error,
                                errlen);
    if (!self->store)
        return -1;
    int64_t started = s_now();
    if (tq_store_load(self->store, s_recover, self) != TQ_OK ||
        tq_store_load_items(self->store, s_recover_item, self) != TQ_OK) {
        snprintf(error, errlen, "cannot read the store in %s: %s", dir,
                 tq_store_error(self->store));
        return -1;
    }
    if (self->recovered || self->recovered_items)
        fprintf(stderr,
                "tq-broker: recovered %llu tasks and %llu queue items from "
                "%s in %lld ms\n",
                (unsigned long long) self->recovered,
                (unsigned long long) self->recovered_items, dir,
                (long long) (s_now() - started));
    self->dispatch_due = true;
    return 0;
}

/* Purges a little of the expired results from disk and checks the disk
   limit; called once a second. */
static void
s_store_housekeeping(tq_broker_t *self)
{
    if (!self->store)
        return;
    tq_store_purge(self->store, s_wall_ms(), 2000);
    if (self->config.max_disk) {
        bool full = tq_store_disk_size(self->store) >= self->config.max_disk;
        if (full && !self->disk_full)
            s_warn(self, "store in %s reached max-disk: refusing submissions",
                   self->config.data_dir);
        self->disk_full = full;
    }
}

/* ---- the loop ---- */

static s_handler_fn *const s_client_handlers[256] = {
    [TQ_CMD_SUBMIT] = s_on_submit, [TQ_CMD_GET] = s_on_get,
    [TQ_CMD_STATUS] = s_on_status, [TQ_CMD_PING] = s_on_ping,
    [TQ_CMD_PONG] = s_on_ignore,   [TQ_CMD_CANCEL] = s_on_cancel,
    [TQ_CMD_RETRY] = s_on_retry,   [TQ_CMD_PURGE] = s_on_purge,
    [TQ_CMD_FAILED] = s_on_failed, [TQ_CMD_QPUT] = s_on_qput,
    [TQ_CMD_QGET] = s_on_qget,     [TQ_CMD_QSIZE] = s_on_qsize,
};

static s_handler_fn *const s_worker_handlers[256] = {
    [TQ_CMD_READY] = s_on_ready,         [TQ_CMD_DONE] = s_on_done,
    [TQ_CMD_DISCONNECT] = s_on_disconnect, [TQ_CMD_HEARTBEAT] = s_on_heartbeat,
    [TQ_CMD_LOST] = s_on_lost,           [TQ_CMD_PING] = s_on_worker_ping,
    [TQ_CMD_PONG] = s_on_ignore,         [TQ_CMD_RETURNED] = s_on_returned,
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
        size_t payload = zmq_msg_size(&self->frames.payload);
        if (payload > (size_t) self->config.max_message) {
            /* only over inproc, where libzmq does not apply
               ZMQ_MAXMSGSIZE: a child could never receive it */
            char text[160];
            snprintf(text, sizeof text,
                     "%s payload of %zu bytes is over max-message (%lld)",
                     tq_proto_command_name(self->in.command), payload,
                     (long long) self->config.max_message);
            self->counters.malformed++;
            s_warn(self, "%s", text);
            s_reply_error(self, socket, TQ_EINVAL, text, self->in.id);
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

/* True if a tcp:// endpoint's host is a loopback address or interface;
   other transports (ipc, inproc) never leave the machine. */
static bool
s_is_local(const char *endpoint)
{
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return strncmp(endpoint, "ipc://", 6) == 0 ||
               strncmp(endpoint, "inproc://", 9) == 0;
    const char *host = endpoint + 6;
    const char *colon = strrchr(host, ':');
    size_t len = colon ? (size_t)(colon - host) : strlen(host);
    return strncmp(host, "127.", 4) == 0 ||
           (len == 9 && strncmp(host, "localhost", 9) == 0) ||
           (len == 2 && strncmp(host, "lo", 2) == 0) ||
           (len == 5 && strncmp(host, "[::1]", 5) == 0);
}

/* Sets the socket options of one endpoint and binds it. cert: CURVE
   server with ZAP domain `domain`, NULL for plain TCP (loud when the
   endpoint is reachable from other hosts). */
static int
s_bind(tq_broker_t *self, void *socket, const char *endpoint,
       const char *domain, zcert_t *cert, char *resolved, size_t size,
       char *error, size_t errlen)
{
    int one = 1, zero = 0, linger = 0;
    int64_t max = self->config.max_message;
    zmq_setsockopt(socket, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(socket, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(socket, ZMQ_RCVHWM, &zero, sizeof zero);
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max, sizeof max);
    if (cert && tq_curve_server_setup(socket, cert, domain, error, errlen))
        return -1;
    if (zmq_bind(socket, endpoint) != 0) {
        snprintf(error, errlen, "cannot bind %s: %s", endpoint,
                 zmq_strerror(errno));
        return -1;
    }
    size_t len = size;
    zmq_getsockopt(socket, ZMQ_LAST_ENDPOINT, resolved, &len);
    if (!cert && !s_is_local(endpoint))
        fprintf(stderr,
                "tq-broker: WARNING: %s (%s) is reachable from other hosts "
                "WITHOUT CURVE: anyone who can connect can %s. Use "
                "--curve-secret with --client-keys and --worker-keys, or "
                "bind 127.0.0.1.\n",
                resolved, domain,
                streq(domain, TQ_CURVE_DOMAIN_WORKERS)
                    ? "take tasks and forge their results"
                    : "submit tasks that workers will run");
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
    if (self->config.max_message <= 0)
        self->config.max_message = MAX_MESSAGE;
    self->wakeup = -1;
    self->ctx = config->context ? config->context : zmq_ctx_new();
    self->clients = self->ctx ? zmq_socket(self->ctx, ZMQ_ROUTER) : NULL;
    self->workers = self->ctx ? zmq_socket(self->ctx, ZMQ_ROUTER) : NULL;
    if (!self->clients || !self->workers) {
        snprintf(error, errlen, "cannot create sockets: %s",
                 zmq_strerror(errno));
        tq_broker_destroy(&self);
        return NULL;
    }
    /* CURVE is all or nothing: a half-configured broker refuses to start
       rather than run with an endpoint open */
    zcert_t *cert = NULL;
    if (self->config.curve_secret || self->config.client_keys ||
        self->config.worker_keys) {
        if (!self->config.curve_secret || !self->config.client_keys ||
            !self->config.worker_keys) {
            snprintf(error, errlen, "CURVE needs --curve-secret, "
                                    "--client-keys and --worker-keys");
            tq_broker_destroy(&self);
            return NULL;
        }
        cert = tq_curve_load_secret(self->config.curve_secret, error, errlen);
        /* the handler is bound before the sockets: no handshake can
           happen without it */
        if (cert)
            self->auth = tq_auth_new(self->ctx, self->config.client_keys,
                                     self->config.worker_keys, error, errlen);
        if (!self->auth) {
            zcert_destroy(&cert);
            tq_broker_destroy(&self);
            return NULL;
        }
    }
    int rc = s_bind(self, self->clients, self->config.client_endpoint,
                    TQ_CURVE_DOMAIN_CLIENTS, cert, self->client_endpoint,
                    sizeof self->client_endpoint, error, errlen);
    if (rc == 0 && self->config.client_inproc &&
        zmq_bind(self->clients, self->config.client_inproc) != 0) {
        snprintf(error, errlen, "cannot bind %s: %s",
                 self->config.client_inproc, zmq_strerror(errno));
        rc = -1;
    }
    if (rc == 0)
        rc = s_bind(self, self->workers, self->config.worker_endpoint,
                    TQ_CURVE_DOMAIN_WORKERS, cert, self->worker_endpoint,
                    sizeof self->worker_endpoint, error, errlen);
    zcert_destroy(&cert);
    if (rc != 0) {
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
    self->in_flight = zhashx_new();
    zhashx_set_destructor(self->in_flight, NULL);
    self->dq_index = zhashx_new();
    zhashx_set_key_duplicator(self->dq_index, NULL);
    zhashx_set_key_destructor(self->dq_index, NULL);
    if (!self->tasks || !self->names || !self->queue_index || !self->peers ||
        !self->dq_index || !self->in_flight)
        abort();
    self->started_ms = self->now_ms = s_now();
    self->log_window_ms = self->now_ms;
    if (self->config.data_dir && s_open_store(self, error, errlen) != 0) {
        tq_broker_destroy(&self);
        return NULL;
    }
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
    self->next_check_ms = s_now() + CHECK_MS;
    while (!self->stopping) {
        self->now_ms = s_now();
        /* sleep until the next deadline: a host check or a result expiry */
        int64_t deadline = self->next_check_ms;
        if (self->expiry.head && self->expiry.head->expires_ms < deadline)
            deadline = self->expiry.head->expires_ms;
        if (self->heap_size && self->heap[1]->due_ms < deadline)
            deadline = self->heap[1]->due_ms;
        int64_t getters = s_expire_getters(self);
        if (getters < deadline)
            deadline = getters;
        long timeout = deadline > self->now_ms ? deadline - self->now_ms : 0;
        if (zmq_poll(items, 3, timeout) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "tq-broker: poll: %s\n", zmq_strerror(errno));
            return TQ_ESYS;
        }
        self->now_ms = s_now();
        s_release_due(self);
        /* drain both sockets in bursts until both are quiet */
        for (;;) {
            int got = s_drain(self, self->workers, s_worker_handlers,
                              "workers");
            got += s_drain(self, self->clients, s_client_handlers, "clients");
            if (self->dispatch_due)
                s_dispatch(self);
            if (!s_commit(self))
                return TQ_ESYS;
            if (got == 0 || self->stopping)
                break;
        }
        if (self->now_ms >= self->next_check_ms) {
            s_check_hosts(self);
            if (self->now_ms >= self->next_housekeeping_ms) {
                s_store_housekeeping(self);
                self->next_housekeeping_ms = self->now_ms + HOUSEKEEPING_MS;
            }
            self->next_check_ms = self->now_ms + CHECK_MS;
            if (self->dispatch_due)
                s_dispatch(self);
        }
        s_expire_results(self);
        if (!s_commit(self))
            return TQ_ESYS;
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
    for (dq_t *dq = self->dqs, *dn; dq; dq = dn) {
        dn = dq->next;
        for (item_t *it = dq->head, *in; it; it = in) {
            in = it->next;
            zmq_msg_close(&it->msg);
            free(it);
        }
        for (getter_t *g = dq->getters, *gn; g; g = gn) {
            gn = g->next;
            s_ident_clear(&g->ident);
            free(g);
        }
        free(dq);
    }
    zhashx_destroy(&self->dq_index);
    zhashx_destroy(&self->in_flight);
    if (self->names) {
        for (char *n = zhashx_first(self->names); n;
             n = zhashx_next(self->names))
            free(n);
        zhashx_destroy(&self->names);
    }
    if (self->store) {
        /* what was acknowledged is committed; a pending batch holds only
           unacknowledged work, committed now as a courtesy */
        tq_store_commit(self->store);
        tq_store_destroy(&self->store);
    }
    for (uint32_t i = 0; i < self->ack_count; i++)
        s_ident_clear(&self->acks[i].to);
    free(self->acks);
    free(self->heap);
    tq_frames_close(&self->frames);
    msgpack_sbuffer_destroy(&self->sbuf);
    if (self->clients)
        zmq_close(self->clients);
    if (self->workers)
        zmq_close(self->workers);
    /* after the CURVE sockets: its socket must close before the context
       terminates */
    tq_auth_destroy(&self->auth);
    if (self->ctx && !self->config.context)
        zmq_ctx_term(self->ctx);
    if (self->wakeup >= 0)
        close(self->wakeup);
    free(self);
    *self_p = NULL;
}
