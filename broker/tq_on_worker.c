/* tq_on_worker.c - the handlers of the workers endpoint: children
   announce themselves (READY), end tasks (DONE), give back what they were
   asked for (RETURNED) and leave (DISCONNECT); supervisors keep their
   host's session alive (HEARTBEAT) and report dead children (LOST). Who
   may send what is checked before a handler runs (tq_broker.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_broker_core.h"

/* Binds a child to its host's current supervisor session, if any. */
static void
s_bind(tq_broker_t *self, peer_t *child)
{
    child->session = 0;
    peer_t *sup = tqb_supervisor_of(self, child);
    if (sup)
        child->session = sup->session;
}

void
tqb_on_ready(tq_broker_t *self, const tq_msg_t *msg, peer_t *child)
{
    if (child) {
        /* announcing again: keep the tasks it holds, take the new lists */
        tqb_peer_unserve(self, child);
        if (child->held >= 2 && (child->features & TQ_FEATURE_RETURNS))
            self->multi_holders--;
        free(child->queues);
        free(child->tasks);
    } else {
        /* the same process on a new socket (it reconnected): the old peer
           is gone, and the tasks it held were dropped by the child, except
           the one it names as still running, which it finishes and answers
           on the new socket: that one moves to the new peer (queued again
           it could run twice). The others go back to their queues, its
           first too when the READY names none: a DONE the child wrote to
           the old socket may be lost with it, and a task left held would
           wait for it forever (PROTOCOL.md section 10). */
        char host[TQ_PROTO_MAX_NAME + 1];
        tq_str_copy(host, sizeof host, msg->host);
        child = tqb_peer_new(self, PEER_CHILD);
        for (peer_t *old = self->children; old; old = old->next)
            if (old != child && old->pid == msg->pid &&
                strcmp(old->host, host) == 0) {
                task_t *running = old->held_tasks.head;
                if (running && msg->id.ptr &&
                    tq_str_eq(msg->id, tqb_task_id(running)))
                    tqb_task_move(self, running, TASK_HELD,
                                  &(task_move_t){.holder = child});
                tqb_peer_remove(self, old, false, 0, "announced again");
                break;
            }
    }
    tq_str_copy(child->host, sizeof child->host, msg->host);
    child->pid = msg->pid;
    child->ppid = msg->ppid;
    child->credit = msg->credit;
    child->features = msg->features;
    if (child->held >= 2 && (child->features & TQ_FEATURE_RETURNS))
        self->multi_holders++;
    uint32_t queues = msg->queue_count ? msg->queue_count : 1;
    child->queues = tqb_alloc(queues * sizeof *child->queues);
    if (msg->queue_count == 0)
        child->queues[0] = tqb_queue(self, tq_str(TQ_DEFAULT_QUEUE_NAME));
    for (uint32_t i = 0; i < msg->queue_count; i++)
        child->queues[i] = tqb_queue(self, msg->queues[i]);
    child->queue_count = queues;
    child->tasks = tqb_alloc((msg->task_count + 1) * sizeof *child->tasks);
    for (uint32_t i = 0; i < msg->task_count; i++)
        child->tasks[i] = tqb_intern(self, msg->tasks[i]);
    child->task_count = msg->task_count;
    tqb_peer_serve(self, child);
    child->last_seen_ms = self->now_ms;
    s_bind(self, child);
    self->dispatch_due = true;
    tqb_debug(self, "worker %s pid %llu ready: credit %u, %u queues, %u tasks",
              child->host, (unsigned long long)child->pid, child->credit,
              child->queue_count, child->task_count);
}

void
tqb_on_done(tq_broker_t *self, const tq_msg_t *msg, peer_t *child)
{
    /* children run their tasks in the order they got them: a DONE names
       the first one it holds, found without a lookup in the id table (a
       cache miss or two per task in a large one) */
    task_t *task = child->held_tasks.head;
    if (!tqb_task_is_msg(task, msg)) {
        const uint8_t *bin = tqb_msg_id_bin(msg);
        task =
            bin ? tqb_task_find_bin(self, bin) : tqb_task_find(self, msg->id);
    }
    child->rss_kb = msg->rss_kb;
    /* The attempt is the lease: only the holder's DONE with the current
       attempt may end the task. Anything else is refused and counted. */
    bool current = task &&
        (task->state == TASK_HELD || task->state == TASK_REVOKING) &&
        task->holder == child && task->rec.attempt == msg->attempt;
    if (!current) {
        if (child->cancelled && task && task->state == TASK_CANCELLED &&
            task->rec.attempt == msg->attempt) {
            /* it finished the task we cancelled before it was stopped:
               its credit comes back */
            child->cancelled--;
            self->dispatch_due = true;
        }
        self->counters.duplicates++;
        tqb_debug(self, "duplicate DONE %.*s attempt %u", (int)msg->id.len,
                  msg->id.ptr, msg->attempt);
        return;
    }
    int state = (int)msg->state;
    int code = (int)msg->code;
    const char *reason = NULL;
    if (state == TQ_STATE_SUCCESS &&
        tq_proto_check_payload(self->in_data, self->in_size, false, &reason) !=
            TQ_OK) {
        /* the worker's bug, but the caller deserves an answer */
        self->counters.malformed++;
        tqb_warn(self, "DONE %s: malformed value: %s", tqb_task_id(task),
                 reason);
        state = TQ_STATE_FAILURE;
        code = TQ_EPROTO;
    } else if (state != TQ_STATE_SUCCESS && state != TQ_STATE_FAILURE) {
        self->counters.errors++;
        tqb_reply_error(self, self->workers, TQ_EPROTO,
                        "DONE state must be SUCCESS or FAILURE", msg->id);
        return;
    }
    child->done++;
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
    if (state == TQ_STATE_FAILURE && code == TQ_ETASK && task->rec.retries) {
        /* retry after backoff_ms * 2^failures, with +-50% jitter so that
           tasks failing together do not come back together */
        task->rec.retries--;
        uint32_t f = task->rec.failures < 20 ? task->rec.failures : 20;
        double delay = (double)task->rec.backoff_ms * (double)(1ULL << f);
        delay *= 0.5 + (double)(random() % 1000) / 1000.0;
        if (delay > 3600e3)
            delay = 3600e3;
        task->rec.failures++;
        tqb_task_set_error(self, task, text);
        tqb_task_move(self, task, TASK_RETRY,
                      &(task_move_t){.due_ms = self->now_ms + (int64_t)delay});
        self->counters.retried++;
        tqb_debug(self, "task %s failed (%s), retry in %.0f ms",
                  tqb_task_id(task), text, delay);
        return;
    }
    tqb_task_final(self, task,
                   state == TQ_STATE_SUCCESS ? TASK_SUCCESS : TASK_FAILURE,
                   code, text, &self->frames.payload);
}

/* RETURNED: a holder gave back, unstarted, a task it was asked for. It
   goes to the front of its lane, where the idle child that wanted it finds
   it (dispatch serves the least loaded first). Anything else (an old
   attempt, a task that is no longer this child's) is stale: ignored, but
   for the credit a cancel kept taken. */
void
tqb_on_returned(tq_broker_t *self, const tq_msg_t *msg, peer_t *child)
{
    task_t *task = tqb_task_find(self, msg->id);
    if (!task || task->state != TASK_REVOKING || task->holder != child ||
        task->rec.attempt != msg->attempt) {
        if (child->cancelled && task && task->state == TASK_CANCELLED &&
            task->rec.attempt == msg->attempt) {
            /* it gave back unstarted a task cancelled meanwhile: no DONE
               will come for it, so its credit comes back now */
            child->cancelled--;
            self->dispatch_due = true;
        }
        tqb_debug(self, "stale RETURNED %.*s attempt %u", (int)msg->id.len,
                  msg->id.ptr, msg->attempt);
        return;
    }
    tqb_task_move(self, task, TASK_WAITING, &(task_move_t){.front = true});
    self->counters.stolen++;
}

void
tqb_on_disconnect(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)msg;
    tqb_peer_remove(self, peer, false, 0, "disconnected");
}

void
tqb_on_heartbeat(tq_broker_t *self, const tq_msg_t *msg, peer_t *sup)
{
    bool fresh = !sup;
    if (!sup) {
        /* a new session, bound to this connection: a host the broker had
           dropped (or that reconnected) learns it from the new number and
           its children announce themselves again */
        sup = tqb_peer_new(self, PEER_SUPERVISOR);
        tq_str_copy(sup->host, sizeof sup->host, msg->host);
        sup->pid = msg->pid;
        sup->session = ++self->session_serial;
        /* the same supervisor process on a new connection (it reconnected
           after a silence: its old connection's session will expire) takes
           over its children, also those that announced themselves again
           before this first HEARTBEAT came through */
        for (peer_t *w = self->children; w; w = w->next)
            if (w->ppid == sup->pid && strcmp(w->host, sup->host) == 0)
                w->session = sup->session;
        tqb_debug(self, "supervisor %s pid %llu: session %llu", sup->host,
                  (unsigned long long)sup->pid,
                  (unsigned long long)sup->session);
    }
    sup->last_seen_ms = self->now_ms;
    tq_msg_t *out = tqb_out(self, TQ_CMD_HEARTBEAT);
    out->host = tq_str(self->hostname);
    out->pid = (uint64_t)getpid();
    out->session = sup->session;
    tqb_send_to(self, self->workers, &sup->ident, NULL);
    /* tasks cancelled on its children before it came (tqb_cancel) */
    for (peer_t *w = self->children; fresh && w; w = w->next)
        if (w->session == sup->session && w->kill_id[0]) {
            out = tqb_out(self, TQ_CMD_KILL);
            out->pid = w->pid;
            out->id = tq_str(w->kill_id);
            tqb_send_to(self, self->workers, &sup->ident, NULL);
            w->kill_id[0] = '\0';
        }
}

void
tqb_on_lost(tq_broker_t *self, const tq_msg_t *msg, peer_t *sup)
{
    sup->last_seen_ms = self->now_ms;
    char why[TQ_PROTO_MAX_ERROR + 1];
    tq_str_copy(why, sizeof why, msg->error);
    if (!*why)
        snprintf(why, sizeof why, "process %llu died",
                 (unsigned long long)msg->pid);
    /* only a child of this supervisor process (any of its sessions) */
    for (peer_t *w = self->children; w; w = w->next)
        if (w->pid == msg->pid && w->ppid == sup->pid &&
            strcmp(w->host, sup->host) == 0) {
            tqb_warn(self, "worker %s pid %llu lost: %s", w->host,
                     (unsigned long long)w->pid, why);
            if (msg->id.ptr) {
                /* the task it ran, if it still holds that attempt (a
                   DONE that came first ended it: nobody is charged) */
                task_t *task = tqb_task_find(self, msg->id);
                w->lost_named = true;
                w->lost_task = task && task->holder == w &&
                        (task->state == TASK_HELD ||
                         task->state == TASK_REVOKING) &&
                        task->rec.attempt == msg->attempt
                    ? task
                    : NULL;
            }
            tqb_peer_remove(self, w, msg->code != TQ_ECANCELLED, (int)msg->code,
                            why);
            return;
        }
    tqb_debug(self, "LOST of pid %llu, which held nothing",
              (unsigned long long)msg->pid);
}
