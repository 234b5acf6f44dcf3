/* tq_inspect.c - looking inside the queue (PROTOCOL.md 5.7): TASKS lists
   the tasks the broker holds, INSPECT shows one in full. Arguments go into
   the body as the msgpack objects they are, never decoded. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_broker_core.h"

#define S_ARGS_SHOWN 1024 /* TASKS: larger arguments are left out */

/* Writes a stored msgpack object into the body as it is. */
static void
s_pack_raw(msgpack_sbuffer *body, const zmq_msg_t *payload)
{
    msgpack_sbuffer_write(body, zmq_msg_data((zmq_msg_t *) payload),
                          zmq_msg_size((zmq_msg_t *) payload));
}

/* The wall clock of a monotonic time of this broker. */
static uint64_t
s_wall_of(const tq_broker_t *self, int64_t mono)
{
    int64_t wall = tqb_wall_ms() - (self->now_ms - mono);
    return wall > 0 ? (uint64_t) wall : 0;
}

static bool
s_delayed(const task_t *task)
{
    return task->state == TASK_SCHEDULED || task->state == TASK_RETRY;
}

static uint64_t
s_due_in(const tq_broker_t *self, const task_t *task)
{
    return task->node.key > self->now_ms
        ? (uint64_t)(task->node.key - self->now_ms)
        : 0;
}

static bool
s_running(const task_t *task)
{
    return task->state == TASK_HELD || task->state == TASK_REVOKING;
}

/* The payload as raw msgpack, or nil when there is none or it cannot be
   read back from the store. */
static void
s_pack_payload(tq_broker_t *self, msgpack_packer *pk, msgpack_sbuffer *body,
               const task_t *task)
{
    zmq_msg_t payload;
    if (tqb_task_payload(self, task, &payload, NULL) == 0 &&
        zmq_msg_size(&payload))
        s_pack_raw(body, &payload);
    else
        msgpack_pack_nil(pk);
    zmq_msg_close(&payload);
}

/* One TASKS entry. */
static void
s_pack_entry(tq_broker_t *self, msgpack_packer *pk, msgpack_sbuffer *body,
             const task_t *task)
{
    bool running = s_running(task);
    bool delayed = s_delayed(task);
    size_t args = tqb_task_payload_size(task);
    msgpack_pack_map(pk, 9 + (delayed ? 1 : 0) + (running ? 2 : 0));
    tqb_pack_str(pk, "id");
    tqb_pack_str(pk, tqb_task_id(task));
    tqb_pack_str(pk, "task");
    tqb_pack_str(pk, task->lane->task);
    tqb_pack_str(pk, "queue");
    tqb_pack_str(pk, task->lane->queue->name);
    tqb_pack_uint_kv(pk, "state", (uint64_t) tqb_task_wire_state(task));
    tqb_pack_uint_kv(pk, "priority", task->rec.priority);
    tqb_pack_uint_kv(pk, "attempt", task->rec.attempt);
    tqb_pack_uint_kv(pk, "age_ms",
                     (uint64_t) (self->now_ms - task->submitted_ms));
    if (delayed)
        tqb_pack_uint_kv(pk, "due_ms", s_due_in(self, task));
    if (running) {
        tqb_pack_str(pk, "host");
        tqb_pack_str(pk, task->holder->host);
        tqb_pack_uint_kv(pk, "pid", task->holder->pid);
    }
    tqb_pack_str(pk, "args");
    if (args && args <= S_ARGS_SHOWN)
        s_pack_payload(self, pk, body, task);
    else
        msgpack_pack_nil(pk);
    tqb_pack_uint_kv(pk, "args_bytes", args);
}

typedef struct {
    const queue_t *queue; /* NULL: every queue */
    uint32_t states;      /* TQ_STATE_BIT()s */
} s_filter_t;

static bool
s_match(const tq_broker_t *self, const s_filter_t *f, const task_t *task)
{
    return (!f->queue || task->lane->queue == f->queue) &&
           (f->states & TQ_STATE_BIT(tqb_task_wire_state(task))) &&
           tqb_may_see(self, task);
}

static int
s_by_due(const void *a, const void *b)
{
    const task_t *x = *(task_t *const *) a, *y = *(task_t *const *) b;
    return x->node.key < y->node.key ? -1
        : x->node.key > y->node.key  ? 1
        : x->rec.seq < y->rec.seq    ? -1
                                     : x->rec.seq > y->rec.seq;
}

/* The tasks to list, in the order of PROTOCOL.md 5.7, in a new array
   (the caller frees it); *count of them. */
static task_t **
s_collect(tq_broker_t *self, const s_filter_t *f, uint32_t *count)
{
    uint32_t cap = 256, n = 0;
    task_t **all = tqb_alloc(cap * sizeof *all);
#define S_ADD(t)                                                               \
    do {                                                                       \
        if (n == cap) {                                                        \
            cap *= 2;                                                          \
            all = realloc(all, cap * sizeof *all);                             \
            if (!all)                                                          \
                abort();                                                       \
        }                                                                      \
        all[n++] = (t);                                                        \
    } while (0)
    /* running: per child, in dispatch order */
    for (peer_t *w = self->children; w; w = w->next)
        for (task_t *t = w->held_tasks.head; t; t = t->next)
            if (s_match(self, f, t))
                S_ADD(t);
    /* waiting: by priority, then FIFO */
    for (queue_t *q = self->queues; q; q = q->next) {
        if (f->queue && q != f->queue)
            continue;
        for (int p = TQB_PRIORITIES - 1; p >= 0; p--)
            for (lane_t *lane = q->lanes; lane; lane = lane->next)
                for (task_t *t = lane->fifo[p].head; t; t = t->next)
                    if (s_match(self, f, t))
                        S_ADD(t);
    }
    /* retry and countdown: by due time */
    uint32_t first_delayed = n;
    for (uint32_t i = 1; i <= self->delayed.size; i++) {
        task_t *t = (task_t *) ((char *) self->delayed.items[i] -
                                offsetof(task_t, node));
        if (s_match(self, f, t))
            S_ADD(t);
    }
#undef S_ADD
    qsort(all + first_delayed, n - first_delayed, sizeof *all, s_by_due);
    *count = n;
    return all;
}

void
tqb_on_tasks(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void) peer;
    s_filter_t f = {.states = msg->states};
    if (!f.states)
        f.states = TQ_STATE_BIT(TQ_STATE_PENDING) |
                   TQ_STATE_BIT(TQ_STATE_RUNNING) |
                   TQ_STATE_BIT(TQ_STATE_RETRY) |
                   TQ_STATE_BIT(TQ_STATE_SCHEDULED);
    if (msg->queue.ptr) {
        char name[TQ_PROTO_MAX_NAME + 1];
        tq_str_copy(name, sizeof name, msg->queue);
        f.queue = zhashx_lookup(self->queue_index, name);
    }
    uint32_t count = 0;
    task_t **all = (!msg->queue.ptr || f.queue) ? s_collect(self, &f, &count)
                                                 : NULL;
    uint32_t shown = count < msg->limit ? count : msg->limit;
    msgpack_sbuffer body;
    msgpack_packer pk;
    tqb_body_init(&body, &pk);
    msgpack_pack_map(&pk, 2);
    tqb_pack_str(&pk, "tasks");
    msgpack_pack_array(&pk, shown);
    for (uint32_t i = 0; i < shown; i++)
        s_pack_entry(self, &pk, &body, all[i]);
    tqb_pack_uint_kv(&pk, "total", count);
    free(all);
    tqb_out(self, TQ_CMD_REPLY)->id = msg->id;
    tqb_send_body(self, &body);
}

void
tqb_on_inspect(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void) peer;
    task_t *task = tqb_task_find(self, msg->id);
    if (!task || !tqb_may_see(self, task)) {
        tqb_reply_unknown(self, msg->id);
        return;
    }
    bool final = tqb_task_is_final(task);
    bool success = task->state == TASK_SUCCESS;
    /* the child running it, or the one its last attempt ran on is not
       kept: only a running task names one */
    const peer_t *holder = s_running(task) ? task->holder : NULL;
    bool delayed = s_delayed(task);
    int64_t started_ms = tqb_task_started_ms(task);
    bool started = started_ms != 0;
    size_t bytes = tqb_task_payload_size(task);
    msgpack_sbuffer body;
    msgpack_packer pk;
    tqb_body_init(&body, &pk);
    msgpack_pack_map(&pk, 17 + (holder ? 2 : 0) + (started ? 1 : 0) +
                              (final ? 1 : 0) + (delayed ? 1 : 0));
    tqb_pack_str(&pk, "id");
    tqb_pack_str(&pk, tqb_task_id(task));
    tqb_pack_str(&pk, "task");
    tqb_pack_str(&pk, task->lane->task);
    tqb_pack_str(&pk, "queue");
    tqb_pack_str(&pk, task->lane->queue->name);
    tqb_pack_uint_kv(&pk, "state", (uint64_t) tqb_task_wire_state(task));
    tqb_pack_uint_kv(&pk, "priority", task->rec.priority);
    tqb_pack_uint_kv(&pk, "time_limit_ms", task->rec.time_limit_ms);
    tqb_pack_uint_kv(&pk, "retries", task->rec.retries);
    tqb_pack_uint_kv(&pk, "backoff_ms", task->rec.backoff_ms);
    tqb_pack_uint_kv(&pk, "attempt", task->rec.attempt);
    tqb_pack_uint_kv(&pk, "failures", task->rec.failures);
    tqb_pack_uint_kv(&pk, "lost", task->lost);
    tqb_pack_uint_kv(&pk, "code", task->rec.code);
    tqb_pack_str(&pk, "error");
    if (tqb_task_error(self, task))
        tqb_pack_str(&pk, tqb_task_error(self, task));
    else
        msgpack_pack_nil(&pk);
    tqb_pack_str(&pk, "args");
    if (!success && bytes)
        s_pack_payload(self, &pk, &body, task);
    else
        msgpack_pack_nil(&pk);
    tqb_pack_uint_kv(&pk, "args_bytes", success ? 0 : bytes);
    tqb_pack_uint_kv(&pk, "result_bytes", success ? bytes : 0);
    tqb_pack_uint_kv(&pk, "submitted_ms",
                     s_wall_of(self, task->submitted_ms));
    if (holder) {
        tqb_pack_str(&pk, "host");
        tqb_pack_str(&pk, holder->host);
        tqb_pack_uint_kv(&pk, "pid", holder->pid);
    }
    if (started)
        tqb_pack_uint_kv(&pk, "started_ms", s_wall_of(self, started_ms));
    if (final)
        tqb_pack_uint_kv(&pk, "finished_ms",
                         s_wall_of(self, TQB_FINISHED_MS(self, task)));
    if (delayed)
        tqb_pack_uint_kv(&pk, "due_ms", s_due_in(self, task));
    tqb_out(self, TQ_CMD_REPLY)->id = msg->id;
    tqb_send_body(self, &body);
}
