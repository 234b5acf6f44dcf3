/* tq_on_client.c - the handlers of the clients endpoint's task requests:
   SUBMIT (with its limits), GET, CANCEL, RETRY, PURGE and PING. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_broker_core.h"

/* A client's unfinished tasks (kept only with max_client_tasks). */
static uintptr_t
s_in_flight(tq_broker_t *self, const ident_t *client)
{
    char key[2 * 255 + 1];
    tqb_hex(key, tqb_ident_data(client), client->size);
    return (uintptr_t)zhashx_lookup(self->in_flight, key);
}

static void
s_in_flight_add(tq_broker_t *self, const ident_t *client)
{
    char key[2 * 255 + 1];
    tqb_hex(key, tqb_ident_data(client), client->size);
    uintptr_t count = (uintptr_t)zhashx_lookup(self->in_flight, key);
    zhashx_update(self->in_flight, key, (void *)(count + 1));
}

/* Refuses a submission that would pass a limit: the queue's length, the
   client's unfinished tasks, the disk or the memory the broker may hold.
   Returns true (and answers ERROR) if so. */
static bool
s_over_limit(tq_broker_t *self, const tq_msg_t *msg, queue_t *queue,
             size_t size)
{
    char text[TQ_PROTO_MAX_NAME + 128];
    ident_t from = tqb_sender(self);
    uint32_t max = self->config.max_queue;
    if (max && queue->waiting + queue->delayed >= max)
        snprintf(text, sizeof text, "queue %s is full (max-queue %u)",
                 queue->name, max);
    else if (self->config.max_client_tasks &&
             s_in_flight(self, &from) >= self->config.max_client_tasks)
        snprintf(text, sizeof text,
                 "this client has %u tasks unfinished (max-client-tasks %u)",
                 self->config.max_client_tasks, self->config.max_client_tasks);
    else if (self->store && self->config.max_disk &&
             self->disk_bytes + size + TQB_ROW_BYTES > self->config.max_disk)
        snprintf(text, sizeof text,
                 "broker disk limit reached (max-disk %llu MB)",
                 (unsigned long long)(self->config.max_disk >> 20));
    else if (self->config.max_memory &&
             self->memory + size > self->config.max_memory)
        snprintf(text, sizeof text,
                 "broker memory limit reached (max-memory %llu MB)",
                 (unsigned long long)(self->config.max_memory >> 20));
    else
        return false;
    self->counters.refused++;
    tqb_debug(self, "SUBMIT refused: %s", text);
    tqb_reply_error(self, self->clients, TQ_EFULL, text, msg->id);
    return true;
}

void
tqb_on_submit(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)peer;
    const char *reason = NULL;
    if (tq_proto_check_payload(self->in_data, self->in_size, true, &reason) !=
        TQ_OK) {
        char text[256];
        snprintf(text, sizeof text, "arguments: %s", reason);
        self->counters.malformed++;
        tqb_warn(self, "SUBMIT %.*s refused: %s", (int)msg->id.len, msg->id.ptr,
                 text);
        tqb_reply_error(self, self->clients, TQ_EPROTO, text, msg->id);
        return;
    }
    const ident_t *from = &self->in_from;
    /* a known id is a resubmission after a lost acknowledgement; under
       CURVE another tenant's id is refused, not acknowledged (an id that
       came as a bin or was parsed by the decoder by its bytes: no parse
       of its text here) */
    const uint8_t *id_bytes = tqb_msg_id_bin(msg);
    task_t *known = id_bytes ? tqb_task_find_bin(self, id_bytes)
                             : tqb_task_find(self, msg->id);
    if (known && !tqb_may_see(self, known)) {
        tqb_reply_error(self, self->clients, TQ_EDENIED,
                        "this id belongs to another client key", msg->id);
        return;
    }
    task_t *task = known;
    if (!known) {
        lane_t *lane = tqb_lane_of(self, msg->queue, msg->task);
        if (s_over_limit(self, msg, lane->queue, self->in_size))
            return;
        task = tqb_task_new_bytes(self, msg->id, id_bytes, lane, self->in_data,
                                  self->in_size, self->in_msg);
        task->rec.priority = (uint8_t)msg->priority;
        task->rec.time_limit_ms = msg->time_limit_ms;
        task->rec.retries = msg->retries;
        task->rec.backoff_ms = msg->backoff_ms ? msg->backoff_ms : 1000;
        task->rec.seq = ++self->seq;
        tqb_task_set_client(self, task, from);
        if (self->in_key) /* CURVE; a new task has none */
            tqb_task_set_owner(self, task, self->in_key);
        if (self->config.max_client_tasks)
            s_in_flight_add(self, from);
        if (msg->delay_ms)
            tqb_task_move(
                self, task, TASK_SCHEDULED,
                &(task_move_t){.due_ms = tqb_now() + msg->delay_ms});
        else
            tqb_task_move(self, task, TASK_WAITING, NULL);
        self->counters.submitted++;
    }
    if (!known && (msg->features & TQ_FEATURE_FOLD) &&
        self->config.ack_fold_ms > 0) {
        /* a client that opted in: a task that ends within the window is
           acknowledged by its RESULT alone (PROTOCOL.md 5.1, item 2).
           With a store there is no window, since SUBMITTED means
           committed: it goes at its commit, left out only if the task's
           RESULT went first (tq_journal.c s_ack_answered says why that
           is safe). */
        if (self->store)
            tqb_ack_folded(self, task, msg->id, from);
        else
            tqb_fold_ack(self, task);
        return;
    }
    tqb_ack(self, msg->id, from, TQ_CMD_SUBMITTED, 0);
}

/* The unfinished task a request names, for GET and CANCEL; or NULL once
   answered: UNKNOWN (never seen, expired, another tenant's) or its final
   RESULT. */
static task_t *
s_unfinished(tq_broker_t *self, const tq_msg_t *msg)
{
    task_t *task = tqb_task_find(self, msg->id);
    if (!task || !tqb_may_see(self, task)) {
        tqb_reply_unknown(self, msg->id);
        return NULL;
    }
    if (tqb_task_is_final(task)) {
        ident_t from = tqb_sender(self);
        tqb_send_result(self, task, &from);
        return NULL;
    }
    return task;
}

void
tqb_on_get(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)peer;
    task_t *task = s_unfinished(self, msg);
    if (!task)
        return;
    if (msg->wait) {
        ident_t from = tqb_sender(self);
        tqb_task_add_waiter(self, task, &from);
        return;
    }
    tq_msg_t *out = tqb_out(self, TQ_CMD_STATE);
    out->id = msg->id;
    out->state = (uint32_t)tqb_task_wire_state(task);
    tqb_reply(self, self->clients);
}

void
tqb_on_cancel(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)peer;
    task_t *task = s_unfinished(self, msg);
    if (!task)
        return;
    /* the canceller hears the outcome through the RESULT that ending the
       task sends to every waiter */
    ident_t from = tqb_sender(self);
    tqb_task_add_waiter(self, task, &from);
    tqb_cancel(self, task, "cancelled");
    self->dispatch_due = true;
}

void
tqb_on_retry(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)peer;
    task_t *task = tqb_task_find(self, msg->id);
    if (!task || !tqb_may_see(self, task)) {
        tqb_reply_unknown(self, msg->id);
        return;
    }
    if (task->state != TASK_FAILURE) {
        char text[128];
        snprintf(text, sizeof text, "task %s is %s, not a dead letter",
                 tqb_task_id(task), tq_state_name(tqb_task_wire_state(task)));
        tqb_reply_error(self, self->clients, TQ_ESTATE, text, msg->id);
        return;
    }
    if (task->rec.code == TQ_ECORRUPT) {
        tqb_reply_error(self, self->clients, TQ_ESTATE,
                        "its stored arguments were damaged: it cannot run "
                        "again",
                        msg->id);
        return;
    }
    /* a dead letter kept its arguments (tqb_task_final), so it runs again
       as it was submitted, with its losses and failures cleared */
    task->lost = 0;
    task->rec.failures = 0;
    tqb_task_set_error(self, task, NULL);
    task->rec.code = 0;
    /* its failure leaves the counts, if this run counted it */
    if (task->failure_counted) {
        task->lane->queue->failed--;
        self->counters.failed--;
        task->failure_counted = false;
    }
    tqb_task_move(self, task, TASK_WAITING, NULL);
    self->counters.requeued++;
    /* "queued again" is a promise too: answered once committed */
    ident_t from = tqb_sender(self);
    tqb_ack(self, msg->id, &from, TQ_CMD_SUBMITTED, 0);
}

void
tqb_on_purge(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)peer;
    char name[TQ_PROTO_MAX_NAME + 1];
    tq_str_copy(name, sizeof name, msg->queue);
    if (self->auth && !self->in_admin) {
        self->counters.errors++;
        tqb_reply_error(self, self->clients, TQ_EDENIED,
                        "PURGE needs an operator key (--admin-keys)", msg->id);
        return;
    }
    queue_t *queue = zhashx_lookup(self->queue_index, name);
    uint64_t purged = 0;
    if (queue) {
        for (lane_t *lane = queue->lanes; lane; lane = lane->next)
            for (int p = 0; p < TQB_PRIORITIES; p++)
                while (lane->fifo[p].head) {
                    tqb_cancel(self, lane->fifo[p].head, "purged");
                    purged++;
                }
        purged += tqb_cancel_delayed(self, queue, "purged");
    }
    msgpack_sbuffer body;
    msgpack_packer pk;
    tqb_body_init(&body, &pk);
    msgpack_pack_map(&pk, 2);
    tqb_pack_str(&pk, "queue");
    tqb_pack_str(&pk, name);
    tqb_pack_uint_kv(&pk, "purged", purged);
    tqb_reply_body(self, &body);
    tqb_warn(self, "queue %s purged: %llu tasks", name,
             (unsigned long long)purged);
}

void
tqb_on_ping(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)msg;
    (void)peer;
    tq_msg_t *out = tqb_out(self, TQ_CMD_PONG);
    out->features = 0;
    if (self->in_socket == self->clients) {
        ident_t from = tqb_sender(self);
        out->dropped = tqb_client_dropped(self, &from);
        /* this broker takes BATCH from clients (PROTOCOL.md 5.9); the
           embedded pool's local client has no envelope to save */
        if (!tqb_ident_eq(&from, &self->local_ident))
            out->features = TQ_FEATURE_BATCH;
    } else {
        /* workers endpoint: this broker takes BATCH from children */
        out->features = TQ_FEATURE_BATCH;
    }
    /* on the endpoint it came from */
    tqb_reply(self, self->in_socket);
}

void
tqb_on_ignore(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)self;
    (void)msg;
    (void)peer;
}
