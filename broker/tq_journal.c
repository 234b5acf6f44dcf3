/* tq_journal.c - the store journal: what the store keeps of each task,
   written into the open batch as the task moves (tqb_task_move calls
   tqb_journal_task, nothing else writes task rows), committed once per
   pass of the loop; and the acknowledgements that wait for that commit
   (SUBMITTED, REPLY to a QPUT): accepted means stored. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

/* The stored row of a task: its record, its names, and what it holds. */
static void
s_row(tq_broker_t *self, const task_t *task, tq_store_task_t *row)
{
    (void)self;
    *row = (tq_store_task_t){
        .id = tqb_task_id(task),
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

void
tqb_journal_task(tq_broker_t *self, task_t *task, task_state_t from)
{
    if (!self->store)
        return;
    tq_store_task_t row;
    s_row(self, task, &row);
    if (tqb_task_is_final(task)) {
        if (task->state == TASK_SUCCESS) {
            row.result = tqb_task_payload_data(task);
            row.result_size = tqb_task_payload_size(task);
        }
        /* dead letters of TQ_ELOST never expire; other results after the
           TTL (at least 1 ms: 0 means "never" in the store) */
        row.expires_ms = task->rec.code == TQ_ELOST
            ? 0
            : tqb_wall_ms() + (int64_t)self->config.result_ttl_s * 1000 + 1;
        tq_store_finish(self->store, &row);
        self->disk_bytes += row.result_size + TQB_ROW_BYTES;
        return;
    }
    if (from == TASK_NEW) {
        row.args = tqb_task_payload_data(task); /* in memory when new */
        row.args_size = tqb_task_payload_size(task);
        tq_store_add(self->store, &row);
        self->disk_bytes += row.args_size + TQB_ROW_BYTES;
        return;
    }
    if (from == TASK_FAILURE) {
        /* an operator's retry: work again, no longer a result, so the
           purge of expired results must not take its row */
        row.code = 0;
        row.error = NULL;
        row.expires_ms = 0;
        tq_store_finish(self->store, &row);
    } else
        tq_store_set_due(self->store, tqb_task_id(task), row.state,
                         task->rec.attempt, row.due_ms);
    /* the retry budget changes on the way into RETRY and when an
       operator retries a dead letter */
    if (task->state == TASK_RETRY || from == TASK_FAILURE)
        tq_store_set_retries(self->store, tqb_task_id(task), task->rec.retries,
                             task->rec.failures);
}

void
tqb_journal_forget(tq_broker_t *self, const task_t *task)
{
    if (self->store)
        tq_store_remove(self->store, tqb_task_id(task));
}

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

void
tqb_ack(tq_broker_t *self, tq_str_t id, const ident_t *to, uint8_t command,
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
    tqb_ident_set(&ack->to, tqb_ident_data(to), to->size);
    tq_str_copy(ack->id, sizeof ack->id, id);
}

const uint32_t tqb_commit_bounds[TQB_COMMIT_BUCKETS] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
    1000000};

/* Counts a commit's time into the histogram STATUS shows (section 8). */
static void
s_count_commit(tq_broker_t *self, int64_t us)
{
    self->commits++;
    self->commit_us_sum += (uint64_t) us;
    for (int i = 0; i < TQB_COMMIT_BUCKETS; i++)
        if (us <= (int64_t) tqb_commit_bounds[i]) {
            self->commit_buckets[i]++;
            break;
        }
}

static int64_t
s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

bool
tqb_commit(tq_broker_t *self)
{
    int64_t began = 0;
    bool dirty = self->store && tq_store_dirty(self->store);
    if (dirty)
        began = s_now_us();
    if (dirty && tq_store_commit(self->store) != TQ_OK) {
        tq_log_error("FATAL: cannot write %s: %s; "
                     "stopping without acknowledging %u requests",
                self->store_name, tq_store_error(self->store),
                self->ack_count);
        return false;
    }
    if (dirty)
        s_count_commit(self, s_now_us() - began);
    for (uint32_t i = 0; i < self->ack_count; i++) {
        ack_t *ack = &self->acks[i];
        s_send_ack(self, &ack->to, tq_str(ack->id), ack->command, ack->size);
        tqb_ident_clear(&ack->to);
    }
    self->ack_count = 0;
    tqb_task_committed(self); /* arguments now stored may leave memory */
    return true;
}

void
tqb_acks_clear(tq_broker_t *self)
{
    for (uint32_t i = 0; i < self->ack_count; i++)
        tqb_ident_clear(&self->acks[i].to);
    free(self->acks);
    self->acks = NULL;
    self->ack_count = self->ack_cap = 0;
}
