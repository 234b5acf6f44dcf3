/* tq_journal.c - the store journal: what the store keeps of each task,
   written into the open batch as the task moves (tqb_task_move calls
   tqb_journal_task, nothing else writes task rows); the commit thread that
   commits each batch off the loop; and the acknowledgements that wait for
   that commit (SUBMITTED, REPLY to a QPUT): accepted means stored. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tq_broker_core.h"
#include "tq_log.h"

/* The wall-clock ms a SCHEDULED or RETRY task may run (the store keeps
   wall-clock time: the monotonic clock starts again with the broker), 0
   for the other states. */
static int64_t
s_due_wall(const task_t *task)
{
    if (task->state != TASK_SCHEDULED && task->state != TASK_RETRY)
        return 0;
    /* +1: both clocks are read in whole ms, and a countdown must never
       end early after a restart */
    int64_t due = tqb_wall_ms() + (task->node.key - tqb_now()) + 1;
    return due > 0 ? due : 1;
}

/* The stored row of a task: its record, its names, and what it holds;
   its id is left for s_task_op (a change that replaces an op has it). */
static void
s_row(tq_broker_t *self, const task_t *task, tq_store_task_t *row)
{
    (void)self;
    *row = (tq_store_task_t){
        .task = task->lane->task,
        .queue = task->lane->queue->name,
        .owner = tqb_task_owner(self, task),
        .priority = task->rec.priority,
        .time_limit_ms = task->rec.time_limit_ms,
        .attempt = task->rec.attempt,
        .state = (uint32_t)tqb_task_wire_state(task),
        .seq = task->rec.seq,
        .code = task->rec.code,
        .error = tqb_task_error(self, task),
        .retries = task->rec.retries,
        .backoff_ms = task->rec.backoff_ms,
        .failures = task->rec.failures,
        .due_ms = s_due_wall(task),
    };
}

/* ---- the batch: what the loop journals, applied by the commit thread ----

   The loop never calls the store while the commit thread runs: it writes
   each change as an op into the open batch (payloads shared with the
   broker's zmq_msg_t, never copied), and at the end of a pass hands the
   batch to the commit thread if that one is idle. The thread applies the
   batch to the store and commits it in one transaction, then wakes the
   loop (the broker's eventfd), which sends the acknowledgements that
   waited for that commit. While a batch commits, the loop goes on serving
   and fills the next batch: at most one batch in flight, and the next one
   grows as long as the commit takes (group commit). Batches commit in the
   order they were filled, so the writes to one task keep their order. */

typedef enum {
    OP_ADD,
    OP_FINISH,
    OP_SET_DUE,
    OP_SET_RETRIES,
    OP_REMOVE,
    OP_ITEM_ADD,
    OP_ITEM_REMOVE,
    OP_PURGE
} op_kind_t;

typedef struct {
    op_kind_t kind;
    tq_store_task_t row; /* names interned (live as long as the broker),
                            error a heap copy; id and payload pointers
                            are set when applied */
    char id[TQ_PROTO_MAX_ID + 1];
    char *error; /* heap copy, or NULL */
    zmq_msg_t payload; /* args, result or item, shared */
} op_t;

typedef struct {
    op_t *ops;
    uint32_t count, cap;
} batch_t;

/* A task's last op in the open batch, found by the task's address: a
   change that follows a state change in the same batch replaces it
   (s_task_op). A slot is live while its gen is the table's. */
typedef struct {
    const task_t *task;
    uint32_t op; /* index in the open batch */
    uint32_t gen;
} last_t;

/* The table of last ops goes back to the system at a hand-off when a
   burst made it larger than this many slots (16 bytes each). */
#define S_LAST_KEEP 131072u

struct tqb_journal_s {
    tq_store_t *store; /* borrowed from the broker */
    batch_t batch[2]; /* the open one and the other (in flight or idle) */
    batch_t *open;
    uint64_t open_seq; /* number of the open batch */
    uint64_t handed; /* last batch handed to the thread, 0: none */
    uint64_t done; /* last batch committed, as the loop knows it */
    bool busy; /* loop side: a batch is in flight */
    uint32_t page_out_mark; /* tasks of self->page_out listed before the
                               batch in flight was handed off */
    last_t *last; /* each task's last op in the open batch: open
                     addressing, a power of two of slots */
    uint32_t last_cap, last_used;
    uint32_t last_gen; /* the open batch's generation of slots, from 1 */
    uint64_t folded; /* changes that replaced an op (s_task_op) */
    uint64_t acks_left_out; /* folded SUBMITTEDs not sent (s_ack_answered) */
    int wakeup; /* the broker's eventfd: written when a batch is done */
    const char *hold; /* tests: TQ_TEST_HOLD_COMMITS */
    pthread_t thread;
    bool started;
    pthread_mutex_t lock; /* guards the fields below */
    pthread_cond_t cond;
    batch_t *pending; /* handed, not yet taken by the thread */
    bool finished; /* the batch in flight is done */
    int rc; /* its outcome */
    int64_t us; /* its commit time */
    bool stop;
};

static int64_t
s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A new op at the end of the open batch, payload empty. */
static op_t *
s_op(tq_broker_t *self, op_kind_t kind)
{
    batch_t *b = self->journal->open;
    if (b->count == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 1024;
        b->ops = realloc(b->ops, b->cap * sizeof *b->ops);
        if (!b->ops)
            abort();
    }
    op_t *op = &b->ops[b->count++];
    op->kind = kind;
    op->error = NULL;
    zmq_msg_init(&op->payload);
    return op;
}

/* An op for a task row (copied: the task may change or go meanwhile). */
static op_t *
s_row_op(tq_broker_t *self, op_kind_t kind, const tq_store_task_t *row,
         const zmq_msg_t *payload)
{
    op_t *op = s_op(self, kind);
    op->row = *row;
    /* row.id is set when applied: the ops may move as the batch grows */
    tq_str_copy(op->id, sizeof op->id, tq_str(row->id));
    if (row->error) {
        op->error = tqb_strdup(row->error);
        op->row.error = op->error;
    }
    if (payload)
        zmq_msg_copy(&op->payload, (zmq_msg_t *)payload);
    return op;
}

/* The op shares the task's payload: a large one by reference, a small
   one (a few hundred bytes at most) copied, since the task may drop it
   before the op is applied. */
static void
s_task_payload(op_t *op, const task_t *task)
{
    size_t size = tqb_task_payload_size(task);
    if (task->payload_at == PAYLOAD_MSG) {
        zmq_msg_copy(&op->payload, (zmq_msg_t *)task->payload);
        return;
    }
    const void *data = tqb_task_payload_data(task);
    if (!data || !size)
        return;
    zmq_msg_close(&op->payload);
    if (zmq_msg_init_size(&op->payload, size) != 0)
        abort();
    memcpy(zmq_msg_data(&op->payload), data, size);
}

/* The slot of task in the table of last ops: its own, or the empty one
   where it would go. */
static last_t *
s_last_slot(tqb_journal_t *j, const task_t *task)
{
    uint32_t mask = j->last_cap - 1;
    uint64_t h = ((uint64_t)(uintptr_t)task >> 4) * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = (uint32_t)(h >> 32) & mask;; i = (i + 1) & mask) {
        last_t *slot = &j->last[i];
        if (slot->gen != j->last_gen || slot->task == task)
            return slot;
    }
}

/* Doubles the table (or makes it), keeping the live slots. */
static void
s_last_grow(tqb_journal_t *j)
{
    last_t *old = j->last;
    uint32_t old_cap = j->last_cap;
    j->last_cap = old_cap ? 2 * old_cap : 1024;
    j->last = calloc(j->last_cap, sizeof *j->last);
    if (!j->last)
        abort();
    for (uint32_t i = 0; i < old_cap; i++)
        if (old[i].gen == j->last_gen)
            *s_last_slot(j, old[i].task) = old[i];
    free(old);
}

/* The op index task's last change in the open batch has, or UINT32_MAX. */
static uint32_t
s_last_get(tqb_journal_t *j, const task_t *task)
{
    if (!j->last_cap)
        return UINT32_MAX;
    last_t *slot = s_last_slot(j, task);
    return slot->gen == j->last_gen ? slot->op : UINT32_MAX;
}

static void
s_last_set(tqb_journal_t *j, const task_t *task, uint32_t op)
{
    if (2 * (j->last_used + 1) > j->last_cap)
        s_last_grow(j);
    last_t *slot = s_last_slot(j, task);
    if (slot->gen != j->last_gen)
        j->last_used++;
    *slot = (last_t){.task = task, .op = op, .gen = j->last_gen};
}

/* A new batch opens: every slot goes stale at once (a new generation;
   cleared when the count wraps, and given back after a burst). */
static void
s_last_reset(tqb_journal_t *j)
{
    j->last_used = 0;
    if (j->last_cap > S_LAST_KEEP) {
        free(j->last);
        j->last = NULL;
        j->last_cap = 0;
    }
    if (++j->last_gen == 0) {
        if (j->last)
            memset(j->last, 0, j->last_cap * sizeof *j->last);
        j->last_gen = 1;
    }
}

/* The op for a change of a stored task, made the task's last one in the
   open batch. A new state (SET_DUE or FINISH) that follows a SET_DUE of
   the same task in this batch replaces it, since both write the whole
   of what that one wrote (state, attempt, due time) and the batch
   commits whole: a task dispatched and finished while one commit runs
   costs one statement, not two. Any other op stays, and the new one goes
   after it. */
static op_t *
s_task_op(tq_broker_t *self, const task_t *task, op_kind_t kind,
          tq_store_task_t *row)
{
    tqb_journal_t *j = self->journal;
    uint32_t at = s_last_get(j, task);
    if (at != UINT32_MAX && j->open->ops[at].kind == OP_SET_DUE &&
        (kind == OP_SET_DUE || kind == OP_FINISH)) {
        op_t *op = &j->open->ops[at];
        /* a SET_DUE holds no payload; the id is the same */
        free(op->error);
        op->error = NULL;
        op->kind = kind;
        op->row = *row;
        if (row->error) {
            op->error = tqb_strdup(row->error);
            op->row.error = op->error;
        }
        j->folded++;
        return op;
    }
    row->id = tqb_task_id(task);
    op_t *op = s_row_op(self, kind, row, NULL);
    s_last_set(j, task, j->open->count - 1);
    return op;
}

/* Commit thread: writes one op into the store's open transaction. */
static int
s_apply(tq_store_t *store, op_t *op)
{
    tq_store_task_t *row = &op->row;
    row->id = op->id;
    const void *data = zmq_msg_data(&op->payload);
    size_t size = zmq_msg_size(&op->payload);
    switch (op->kind) {
    case OP_ADD:
        row->args = data;
        row->args_size = size;
        return tq_store_add(store, row);
    case OP_FINISH:
        if (row->result_size) {
            row->result = data;
            row->result_size = size;
        }
        return tq_store_finish(store, row);
    case OP_SET_DUE:
        return tq_store_set_due(store, row->id, row->state, row->attempt,
                                row->due_ms);
    case OP_SET_RETRIES:
        return tq_store_set_retries(store, row->id, row->retries,
                                    row->failures);
    case OP_REMOVE:
        return tq_store_remove(store, row->id);
    case OP_ITEM_ADD:
        return tq_store_item_add(store, row->queue, row->seq, row->priority,
                                 data, size);
    case OP_ITEM_REMOVE:
        return tq_store_item_remove(store, row->queue, row->seq);
    case OP_PURGE:
        return tq_store_purge(store, row->expires_ms, (int)row->seq) < 0
            ? TQ_ESYS
            : TQ_OK;
    }
    return TQ_ESYS;
}

/* Commit thread: applies and commits a batch, as one transaction, with
   the store held against the loop's own calls (lease, disk size). */
static int
s_commit_batch(tq_store_t *store, batch_t *b)
{
    tq_store_lock(store);
    int rc = TQ_OK;
    for (uint32_t i = 0; i < b->count && rc == TQ_OK; i++)
        rc = s_apply(store, &b->ops[i]);
    /* a failed write failed the store: the backend said why */
    if (rc == TQ_OK)
        rc = tq_store_commit(store);
    tq_store_unlock(store);
    return rc;
}

static void
s_batch_clear(batch_t *b)
{
    for (uint32_t i = 0; i < b->count; i++) {
        zmq_msg_close(&b->ops[i].payload);
        free(b->ops[i].error);
    }
    b->count = 0;
    /* a burst's batch (a million SUBMITs while a commit ran) does not
       keep its peak: above 64 Ki ops (~20 MB) the array goes back */
    if (b->cap > 65536) {
        free(b->ops);
        b->ops = NULL;
        b->cap = 0;
    }
}

/* Tests only: while the file TQ_TEST_HOLD_COMMITS names exists, commits
   wait, so a test can hold a commit in flight for as long as it checks
   what the loop does meanwhile (no clock involved). */
static void
s_hold(tqb_journal_t *j)
{
    while (j->hold && access(j->hold, F_OK) == 0) {
        pthread_mutex_lock(&j->lock);
        bool stop = j->stop;
        pthread_mutex_unlock(&j->lock);
        if (stop)
            break;
        usleep(2000);
    }
}

static void *
s_commit_thread(void *arg)
{
    tqb_journal_t *j = arg;
    pthread_mutex_lock(&j->lock);
    for (;;) {
        while (!j->pending && !j->stop)
            pthread_cond_wait(&j->cond, &j->lock);
        batch_t *b = j->pending;
        if (!b)
            break;
        j->pending = NULL;
        pthread_mutex_unlock(&j->lock);
        s_hold(j);
        int64_t began = s_now_us();
        int rc = s_commit_batch(j->store, b);
        int64_t us = s_now_us() - began;
        s_batch_clear(b); /* the payloads' last references go here */
        pthread_mutex_lock(&j->lock);
        j->rc = rc;
        j->us = us;
        j->finished = true;
        pthread_cond_broadcast(&j->cond);
        uint64_t one = 1;
        ssize_t w = write(j->wakeup, &one, sizeof one);
        (void)w;
    }
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

void
tqb_journal_new(tq_broker_t *self)
{
    tqb_journal_t *j = tqb_alloc(sizeof *j);
    j->store = self->store;
    j->open = &j->batch[0];
    j->open_seq = 1;
    j->last_gen = 1;
    j->wakeup = self->wakeup;
    j->hold = getenv("TQ_TEST_HOLD_COMMITS");
    if (j->hold && !*j->hold)
        j->hold = NULL;
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
    self->journal = j;
}

bool
tqb_journal_idle(const tq_broker_t *self)
{
    return !self->journal || !self->journal->busy;
}

void
tqb_journal_task(tq_broker_t *self, task_t *task, task_state_t from)
{
    if (!self->store)
        return;
    tq_store_task_t row;
    s_row(self, task, &row);
    if (tqb_task_is_final(task)) {
        bool value = task->state == TASK_SUCCESS;
        size_t size = value ? tqb_task_payload_size(task) : 0;
        /* result_size says "there is a result" (an empty one included) */
        row.result_size = value ? size + 1 : 0;
        /* dead letters of TQ_ELOST never expire; other results after the
           TTL (at least 1 ms: 0 means "never" in the store) */
        row.expires_ms = task->rec.code == TQ_ELOST
            ? 0
            : tqb_wall_ms() + (int64_t)self->config.result_ttl_s * 1000 + 1;
        op_t *op = s_task_op(self, task, OP_FINISH, &row);
        if (value)
            s_task_payload(op, task);
        self->disk_bytes += size + TQB_ROW_BYTES;
        return;
    }
    if (from == TASK_NEW) {
        /* in memory when new */
        s_task_payload(s_task_op(self, task, OP_ADD, &row), task);
        self->disk_bytes += tqb_task_payload_size(task) + TQB_ROW_BYTES;
        return;
    }
    if (from == TASK_FAILURE) {
        /* an operator's retry: work again, no longer a result, so the
           purge of expired results must not take its row */
        row.code = 0;
        row.error = NULL;
        row.expires_ms = 0;
        s_task_op(self, task, OP_FINISH, &row);
    } else
        s_task_op(self, task, OP_SET_DUE, &row);
    /* the retry budget changes on the way into RETRY and when an
       operator retries a dead letter */
    if (task->state == TASK_RETRY || from == TASK_FAILURE)
        s_task_op(self, task, OP_SET_RETRIES, &row);
}

void
tqb_journal_forget(tq_broker_t *self, const task_t *task)
{
    if (!self->store)
        return;
    tq_store_task_t row = {0};
    /* its last op: a task made later at the same address follows it */
    s_task_op(self, task, OP_REMOVE, &row);
}

void
tqb_journal_item_add(tq_broker_t *self, const dq_t *dq, const item_t *item)
{
    if (!self->store)
        return;
    /* priority carries the queue's bound */
    tq_store_task_t row = {
        .id = "", .queue = dq->name, .seq = item->seq, .priority = dq->maxsize};
    s_row_op(self, OP_ITEM_ADD, &row, &item->msg);
}

void
tqb_journal_item_remove(tq_broker_t *self, const dq_t *dq, uint64_t seq)
{
    if (!self->store)
        return;
    tq_store_task_t row = {.id = "", .queue = dq->name, .seq = seq};
    s_row_op(self, OP_ITEM_REMOVE, &row, NULL);
}

void
tqb_journal_purge(tq_broker_t *self, int64_t now_ms, int limit)
{
    if (!self->store)
        return;
    /* expires_ms carries the time, seq the limit */
    tq_store_task_t row = {
        .id = "", .expires_ms = now_ms, .seq = (uint64_t)limit};
    s_row_op(self, OP_PURGE, &row, NULL);
}

/* Acknowledgements waiting for their commit: the queue goes back to the
   system once empty when it held more than this many. */
#define S_ACKS_KEEP 4096u

/* Sends an acknowledgement: SUBMITTED id, or REPLY id {size}. */
static void
s_send_ack(tq_broker_t *self, const ident_t *to, tq_str_t id, uint8_t command,
           uint64_t size)
{
    if (command == TQ_CMD_SUBMITTED) {
        tqb_out(self, TQ_CMD_SUBMITTED)->id = id;
        tqb_send_to(self, self->clients, to, NULL);
        return;
    }
    /* REPLY {size} */
    msgpack_sbuffer body;
    msgpack_packer pk;
    tqb_body_init(&body, &pk);
    msgpack_pack_map(&pk, 1);
    tqb_pack_uint_kv(&pk, "size", size);
    zmq_msg_t payload;
    zmq_msg_init_size(&payload, body.size);
    memcpy(zmq_msg_data(&payload), body.data, body.size);
    msgpack_sbuffer_destroy(&body);
    tqb_out(self, TQ_CMD_REPLY)->id = id;
    tqb_send_to(self, self->clients, to, &payload);
    zmq_msg_close(&payload);
}

/* The batch an acknowledgement asked for now must wait for: the open one
   if it holds writes, else the one in flight (a resubmission's row may be
   there); 0 for none. */
static uint64_t
s_ack_need(const tq_broker_t *self)
{
    tqb_journal_t *j = self->journal;
    if (j && j->open->count)
        return j->open_seq;
    if (j && j->handed > j->done)
        return j->handed;
    return 0;
}

/* A new acknowledgement at the end of the queue, to wait for batch need. */
static ack_t *
s_ack_push(tq_broker_t *self, uint64_t need, tq_str_t id, const ident_t *to,
           uint8_t command, uint64_t size)
{
    /* in request order: never ahead of one queued before */
    if (self->ack_count > self->ack_head &&
        self->acks[self->ack_count - 1].need > need)
        need = self->acks[self->ack_count - 1].need;
    if (self->ack_count == self->ack_cap) {
        if (self->ack_head > 0) {
            memmove(self->acks, self->acks + self->ack_head,
                    (self->ack_count - self->ack_head) * sizeof *self->acks);
            self->ack_count -= self->ack_head;
            self->ack_head = 0;
        }
        if (self->ack_count == self->ack_cap) {
            self->ack_cap = self->ack_cap ? 2 * self->ack_cap : 256;
            self->acks =
                realloc(self->acks, self->ack_cap * sizeof *self->acks);
            if (!self->acks)
                abort();
        }
    }
    ack_t *ack = &self->acks[self->ack_count++];
    *ack = (ack_t){.command = command, .size = size, .need = need};
    tqb_ident_set(&ack->to, tqb_ident_data(to), to->size);
    tq_str_copy(ack->id, sizeof ack->id, id);
    return ack;
}

void
tqb_ack(tq_broker_t *self, tq_str_t id, const ident_t *to, uint8_t command,
        uint64_t size)
{
    uint64_t need = s_ack_need(self);
    if (need == 0 && self->ack_head == self->ack_count) {
        s_send_ack(self, to, id, command, size);
        return;
    }
    s_ack_push(self, need, id, to, command, size);
}

/* A folded SUBMITTED (tqb_ack_folded) has nothing to say once its task
   ended: the task of its submission (seq) is final, or gone (forgotten
   after its result's TTL: it ended; or replaced by a later submission of
   the same id, which has its own acknowledgement).

   Why leaving it out is safe. With a store, SUBMITTED means committed,
   but nothing else waits for a commit: the task is dispatched at once,
   and its RESULT goes to the client when it ends (tqb_task_final),
   before its final state's commit and possibly before its SUBMIT's. So
   a SUBMITTED left out here is one that would have reached the client
   after its RESULT: in a later pass, or behind it in the same BATCH (the
   loop handles the pass's DONEs before it sends the acknowledgements
   that a commit released). A client that opted in takes the RESULT as
   the acknowledgement (PROTOCOL.md 5.1 item 2): the task is done, and it
   waits for nothing more. What such a client knows when the broker dies
   is what it knew without the skip, since its RESULT came first either
   way: if the broker dies before the SUBMIT's commit, the task is
   unknown after the restart (a GET answers UNKNOWN) and does not run
   again; if it dies after that commit but before the final state's, the
   task runs again after the restart, as it did. A RESULT the transport
   dropped (a client that does not read) is asked for again, as the
   PONG's drop count tells the client; the store keeps the result. A
   task still unfinished at its commit is acknowledged then, at once. */
static bool
s_ack_answered(tq_broker_t *self, const ack_t *ack)
{
    /* by the id's bytes when it has them: no parse of its text */
    task_t *task = ack->id_bin ? tqb_task_find_bin(self, ack->id_bytes)
                               : tqb_task_find(self, tq_str(ack->id));
    if (!task || task->rec.seq != ack->seq || tqb_task_is_final(task)) {
        if (self->journal)
            self->journal->acks_left_out++;
        return true;
    }
    return false;
}

void
tqb_ack_folded(tq_broker_t *self, const task_t *task, tq_str_t id,
               const ident_t *to)
{
    uint64_t need = s_ack_need(self);
    if (need == 0 && self->ack_head == self->ack_count) {
        if (!tqb_task_is_final(task))
            s_send_ack(self, to, id, TQ_CMD_SUBMITTED, 0);
        return;
    }
    ack_t *ack = s_ack_push(self, need, id, to, TQ_CMD_SUBMITTED, 0);
    ack->fold = true;
    ack->seq = task->rec.seq;
    ack->id_bin = task->id_bin;
    if (task->id_bin)
        memcpy(ack->id_bytes, task->rec.id, TQB_ID_BIN);
}

const uint32_t tqb_commit_bounds[TQB_COMMIT_BUCKETS] = {
    100,   250,   500,   1000,   2500,   5000,
    10000, 25000, 50000, 100000, 250000, 1000000};

/* Counts a commit's time into the histogram STATUS shows (section 8). */
static void
s_count_commit(tq_broker_t *self, int64_t us)
{
    self->commits++;
    self->commit_us_sum += (uint64_t)us;
    for (int i = 0; i < TQB_COMMIT_BUCKETS; i++)
        if (us <= (int64_t)tqb_commit_bounds[i]) {
            self->commit_buckets[i]++;
            break;
        }
}

/* Sends the acknowledgements whose batch is committed, in order. */
static void
s_send_acks(tq_broker_t *self)
{
    uint64_t done = self->journal ? self->journal->done : UINT64_MAX;
    while (self->ack_head < self->ack_count &&
           self->acks[self->ack_head].need <= done) {
        ack_t *ack = &self->acks[self->ack_head++];
        if (!ack->fold || !s_ack_answered(self, ack))
            s_send_ack(self, &ack->to, tq_str(ack->id), ack->command,
                       ack->size);
        tqb_ident_clear(&ack->to);
    }
    if (self->ack_head == self->ack_count) {
        self->ack_head = self->ack_count = 0;
        /* a burst's queue (a million SUBMITs waiting for their commits,
           100 bytes each) does not keep its peak */
        if (self->ack_cap > S_ACKS_KEEP) {
            free(self->acks);
            self->acks = NULL;
            self->ack_cap = 0;
            self->trims_owed = TQB_TRIMS_AFTER_BURST;
        }
    }
}

/* Takes the outcome of the batch in flight if it is done (wait: until it
   is). False if its commit failed. */
static bool
s_reap(tq_broker_t *self, bool wait)
{
    tqb_journal_t *j = self->journal;
    if (!j->busy)
        return true;
    pthread_mutex_lock(&j->lock);
    while (wait && !j->finished)
        pthread_cond_wait(&j->cond, &j->lock);
    bool finished = j->finished;
    int rc = j->rc;
    int64_t us = j->us;
    if (finished) {
        uint64_t count;
        /* the wakeup was written under the lock: read it back, so that the
           loop's poll does not wake for it again */
        ssize_t r = read(j->wakeup, &count, sizeof count);
        (void)r;
        j->finished = false;
    }
    pthread_mutex_unlock(&j->lock);
    if (!finished)
        return true;
    j->busy = false;
    self->commit_rc = rc;
    if (rc != TQ_OK) {
        uint32_t waiting = self->ack_count - self->ack_head;
        tq_log_error("FATAL: cannot write %s: %s; "
                     "stopping without acknowledging %u requests",
                     self->store_name, tq_store_error(self->store), waiting);
        return false;
    }
    j->done = j->handed;
    s_count_commit(self, us);
    /* arguments now stored may leave memory: those of the tasks listed
       before this batch was handed off (later ones are not stored yet) */
    tqb_task_committed(self, j->page_out_mark);
    j->page_out_mark = 0;
    return true;
}

/* Hands the open batch to the commit thread (started at the first). */
static void
s_hand_off(tq_broker_t *self)
{
    tqb_journal_t *j = self->journal;
    if (j->busy || !j->open->count)
        return;
    if (!j->started) {
        if (pthread_create(&j->thread, NULL, s_commit_thread, j) != 0) {
            tq_log_error("cannot start the commit thread");
            abort();
        }
        j->started = true;
    }
    pthread_mutex_lock(&j->lock);
    j->pending = j->open;
    pthread_cond_signal(&j->cond);
    pthread_mutex_unlock(&j->lock);
    j->busy = true;
    j->handed = j->open_seq++;
    j->page_out_mark = self->page_out_count;
    j->open = j->open == &j->batch[0] ? &j->batch[1] : &j->batch[0];
    s_last_reset(j);
}

/* After a burst, once the loop is quiet (no batch open or in flight, no
   acknowledgement waiting) and S_TRIM_PAUSE_MS after the last trim:
   what the burst's messages held (the queues of the ZeroMQ pipes its
   acknowledgements went through, freed by the I/O thread as they are
   sent) goes back to the system, among records still in use. */
#define S_TRIM_PAUSE_MS 150

static void
s_trim_quiet(tq_broker_t *self)
{
    if (!self->trims_owed ||
        (self->journal &&
         (self->journal->busy || self->journal->open->count)) ||
        self->ack_count > self->ack_head || self->fold_count ||
        self->now_ms - self->trimmed_ms < S_TRIM_PAUSE_MS)
        return;
    self->trims_owed--;
    tqb_trim(self);
}

bool
tqb_commit(tq_broker_t *self)
{
    if (!self->journal) {
        s_send_acks(self);
        s_trim_quiet(self);
        return true;
    }
    if (self->commit_rc != TQ_OK || !s_reap(self, false))
        return false;
    s_send_acks(self);
    s_hand_off(self);
    s_trim_quiet(self);
    return true;
}

bool
tqb_commit_flush(tq_broker_t *self)
{
    if (!self->journal)
        return tqb_commit(self);
    if (self->commit_rc != TQ_OK)
        return false;
    while (self->journal->busy || self->journal->open->count) {
        if (!s_reap(self, true))
            return false;
        s_send_acks(self);
        s_hand_off(self);
    }
    return true;
}

void
tqb_journal_destroy(tq_broker_t *self)
{
    tqb_journal_t *j = self->journal;
    if (!j)
        return;
    tqb_debug(self, "store: %llu changes replaced the one before them",
              (unsigned long long)j->folded);
    tqb_debug(self, "store: %llu SUBMITTEDs left out, their RESULT first",
              (unsigned long long)j->acks_left_out);
    /* what was acknowledged is committed; what is left holds only
       unacknowledged work, committed now as a courtesy */
    if (self->commit_rc == TQ_OK)
        tqb_commit_flush(self);
    else if (j->busy)
        s_reap(self, true);
    if (j->started) {
        pthread_mutex_lock(&j->lock);
        j->stop = true;
        pthread_cond_signal(&j->cond);
        pthread_mutex_unlock(&j->lock);
        pthread_join(j->thread, NULL);
    }
    for (int i = 0; i < 2; i++) {
        s_batch_clear(&j->batch[i]);
        free(j->batch[i].ops);
    }
    free(j->last);
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->cond);
    free(j);
    self->journal = NULL;
}

void
tqb_acks_clear(tq_broker_t *self)
{
    for (uint32_t i = self->ack_head; i < self->ack_count; i++)
        tqb_ident_clear(&self->acks[i].to);
    free(self->acks);
    self->acks = NULL;
    self->ack_head = self->ack_count = self->ack_cap = 0;
}

uint32_t
tqb_journal_open_ops(const tq_broker_t *self)
{
    return self->journal ? self->journal->open->count : 0;
}
