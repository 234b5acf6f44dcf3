/* tq_dispatch.c - peers on the workers endpoint and the work they get:
   children (READY) and supervisors (HEARTBEAT), credit dispatch, work
   stealing with the holder's consent, and host liveness. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_broker_core.h"

/* ---- peers ---- */

peer_t *
tqb_peer(tq_broker_t *self)
{
    char key[2 * 255 + 1];
    size_t size = zmq_msg_size(&self->frames.identity);
    tqb_hex(key, zmq_msg_data(&self->frames.identity), size > 255 ? 255 : size);
    return zhashx_lookup(self->peers, key);
}

peer_t *
tqb_peer_new(tq_broker_t *self, peer_role_t role)
{
    peer_t *peer = tqb_alloc(sizeof *peer);
    peer->serial = ++self->peer_serial;
    peer->role = role;
    size_t size = zmq_msg_size(&self->frames.identity);
    if (size > 255)
        size = 255;
    tqb_ident_set(&peer->ident, zmq_msg_data(&self->frames.identity), size);
    tqb_hex(peer->key, tqb_ident_data(&peer->ident), size);
    zhashx_insert(self->peers, peer->key, peer);
    if (role == PEER_SUPERVISOR) {
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

void
tqb_peer_free(peer_t *peer)
{
    tqb_ident_clear(&peer->ident);
    free(peer->queues);
    free(peer->tasks);
    free(peer);
}

/* Puts a child's tasks back: the first one (the one it was running:
   children run in dispatch order) is charged with the death when `lost`;
   past the limit it fails instead. */
static void
s_release(tq_broker_t *self, peer_t *child, bool lost, int code,
          const char *why)
{
    task_t *running = child->held_tasks.head;
    /* a child killed because its task was cancelled, or that was running
       a cancelled task when it died, is not the fault of its other tasks */
    if (code == TQ_ECANCELLED || child->cancelled)
        lost = false;
    /* requeue from the back so that the tasks keep their order at the
       front of their lanes */
    while (child->held_tasks.tail) {
        task_t *task = child->held_tasks.tail;
        self->counters.requeued++;
        if (!lost || task != running) {
            tqb_task_move(self, task, TASK_WAITING,
                          &(task_move_t){.front = true});
            continue;
        }
        if (code == TQ_ETIMELIMIT) {
            self->counters.requeued--;
            tqb_task_final(self, task, TASK_FAILURE, TQ_ETIMELIMIT, why, NULL);
            continue;
        }
        task->lost++;
        if (task->lost >= (uint32_t)self->config.max_lost) {
            char text[TQ_PROTO_MAX_ERROR];
            snprintf(text, sizeof text, "worker lost: %s on host %s", why,
                     child->host);
            self->counters.requeued--;
            tqb_task_final(self, task, TASK_FAILURE, TQ_ELOST, text, NULL);
            continue;
        }
        /* a task that may have killed its worker waits before it runs
           again (LOST_PAUSE_MS, doubling, with jitter), so a poison task
           cannot crash-loop the workers while others wait; one whose
           whole host went silent (TQ_EUNREACHABLE) did not kill anything:
           it is charged, but goes back at once */
        if (code == TQ_EUNREACHABLE) {
            tqb_task_move(self, task, TASK_WAITING,
                          &(task_move_t){.front = true});
            continue;
        }
        uint32_t doublings = task->lost - 1 < 10 ? task->lost - 1 : 10;
        double pause = TQB_LOST_PAUSE_MS * (double)(1u << doublings);
        pause *= 0.5 + (double)(random() % 1000) / 1000.0;
        tqb_task_move(self, task, TASK_RETRY,
                      &(task_move_t){.due_ms = self->now_ms + (int64_t)pause});
    }
    self->dispatch_due = true;
}

void
tqb_peer_remove(tq_broker_t *self, peer_t *peer, bool lost, int code,
                const char *why)
{
    if (peer->role == PEER_CHILD) {
        s_release(self, peer, lost, code, why);
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
    tqb_debug(self, "%s %s pid %llu gone%s%s",
              peer->role == PEER_SUPERVISOR ? "supervisor" : "worker",
              peer->host, (unsigned long long)peer->pid, why ? ": " : "",
              why ? why : "");
    zhashx_delete(self->peers, peer->key);
    tqb_peer_free(peer);
}

bool
tqb_peer_serves(const peer_t *peer, const lane_t *lane)
{
    bool queue_ok = false;
    for (uint32_t i = 0; i < peer->queue_count && !queue_ok; i++)
        queue_ok = peer->queues[i] == lane->queue;
    if (!queue_ok)
        return false;
    for (uint32_t i = 0; i < peer->task_count; i++)
        if (peer->tasks[i] == lane->task)
            return true;
    return false;
}

bool
tqb_lane_served(tq_broker_t *self, const lane_t *lane)
{
    for (peer_t *w = self->children; w; w = w->next)
        if (tqb_peer_serves(w, lane))
            return true;
    return false;
}

/* The supervisor session a child is bound to (the one that was current
   when it announced itself), else the newest of its host. */
peer_t *
tqb_supervisor_of(tq_broker_t *self, const peer_t *child)
{
    peer_t *best = NULL;
    for (peer_t *sup = self->supervisors; sup; sup = sup->next) {
        if (sup->pid != child->ppid || strcmp(sup->host, child->host) != 0)
            continue;
        if (child->session && sup->session == child->session)
            return sup;
        if (!best || sup->session > best->session)
            best = sup;
    }
    return best;
}

/* ---- dispatch ---- */

/* The best task a child may take now: highest priority, then oldest,
   among the lanes it serves. */
static task_t *
s_next_task(peer_t *child)
{
    task_t *best = NULL;
    for (uint32_t q = 0; q < child->queue_count; q++) {
        for (lane_t *lane = child->queues[q]->lanes; lane; lane = lane->next) {
            if (!lane->waiting || !tqb_peer_serves(child, lane))
                continue;
            for (int p = TQB_PRIORITIES - 1; p >= 0; p--) {
                task_t *head = lane->fifo[p].head;
                if (!head)
                    continue;
                if (!best || p > best->rec.priority ||
                    (p == best->rec.priority && head->rec.seq < best->rec.seq))
                    best = head;
                break;
            }
        }
    }
    return best;
}

/* Sends a task to a child. Returns false if the child is gone (it was
   removed and its tasks, this one included, queued again). */
static bool
s_dispatch_one(tq_broker_t *self, peer_t *child, task_t *task)
{
    task->rec.attempt++;
    tqb_task_move(self, task, TASK_HELD, &(task_move_t){.holder = child});
    tq_msg_t *out = tqb_out(self, TQ_CMD_TASK);
    out->id = tq_str(task->rec.id);
    out->task = tq_str(task->lane->task);
    out->attempt = task->rec.attempt;
    out->time_limit_ms = task->rec.time_limit_ms;
    zmq_msg_t args;
    zmq_msg_init(&args);
    zmq_msg_copy(&args, &task->payload);
    int rc = tqb_send_to(self, self->workers, &child->ident, &args);
    zmq_msg_close(&args);
    if (rc != 0) {
        tqb_peer_remove(self, child, false, 0, "unreachable");
        return false;
    }
    return true;
}

/* True if a REVOKE asked for taker may still be answered RETURNED. One
   for a task that has become the first its holder holds does not count:
   the holder ended the tasks before it, so it has most likely started it
   and stays silent; the idle child must not wait for that task's end. */
static bool
s_asked_for(const tq_broker_t *self, const peer_t *taker)
{
    for (const peer_t *w = self->children; w; w = w->next) {
        if (!w->revoking || !w->held_tasks.head)
            continue;
        for (const task_t *t = w->held_tasks.head->next; t; t = t->next)
            if (t->state == TASK_REVOKING && t->revoke_for == taker->serial)
                return true;
    }
    return false;
}

/* Work stealing. With prefetch above 1 a child may hold tasks it has not
   started while another child has nothing to do (the lanes ran dry). The
   broker asks the holder for the held task that should run next (REVOKE);
   the holder answers at once, even while it runs a task: RETURNED if it
   had not started it, nothing if it had (its DONE comes). Only a RETURNED
   task is queued again (tqb_on_returned), so a steal never runs a task
   twice. At most one REVOKE is outstanding per idle child. */
static void
s_steal(tq_broker_t *self)
{
    for (peer_t *taker = self->children; taker; taker = taker->next) {
        if (taker->held + taker->cancelled > 0 || s_asked_for(self, taker))
            continue;
        /* the unstarted task that should run next, by the order dispatch
           uses (priority, then submission), so that tasks still start in
           the order a single queue would start them */
        task_t *victim = NULL;
        peer_t *holder = NULL;
        for (peer_t *w = self->children; w; w = w->next) {
            /* a child that cannot give a task back is never asked */
            if (w == taker || w->held < 2 ||
                !(w->features & TQ_FEATURE_RETURNS))
                continue;
            /* the first held task is (or soon is) running: never it */
            for (task_t *t = w->held_tasks.head->next; t; t = t->next)
                if (t->state == TASK_HELD && tqb_peer_serves(taker, t->lane) &&
                    (!victim || t->rec.priority > victim->rec.priority ||
                     (t->rec.priority == victim->rec.priority &&
                      t->rec.seq < victim->rec.seq))) {
                    victim = t;
                    holder = w;
                }
        }
        if (!victim)
            continue; /* nothing this child could take */
        tq_msg_t *out = tqb_out(self, TQ_CMD_REVOKE);
        out->id = tq_str(victim->rec.id);
        out->attempt = victim->rec.attempt;
        if (tqb_send_to(self, self->workers, &holder->ident, NULL) != 0) {
            /* gone: its tasks go back to their lanes; look again */
            tqb_peer_remove(self, holder, false, 0, "unreachable");
            self->dispatch_due = true;
            return;
        }
        tqb_task_move(self, victim, TASK_REVOKING, NULL);
        victim->revoke_for = taker->serial;
    }
}

/* Offers one task to every child at the lowest load in each round, so
   every idle child is served before any child gets a second task (a burst
   spreads over all of them, and a task given back after REVOKE goes to
   the idle child that wanted it, not back to its holder). */
void
tqb_dispatch(tq_broker_t *self)
{
    self->dispatch_due = false;
    uint32_t level = 0;
    for (;;) {
        bool progress = false;
        uint32_t next_level = UINT32_MAX;
        peer_t *next;
        for (peer_t *child = self->children; child; child = next) {
            next = child->next;
            uint32_t load = child->held + child->cancelled;
            if (load >= child->credit)
                continue;
            if (load > level) {
                if (load < next_level)
                    next_level = load;
                continue;
            }
            task_t *task = s_next_task(child);
            if (!task)
                continue;
            if (!s_dispatch_one(self, child, task))
                next = self->children; /* it was removed: start over */
            progress = true;
        }
        /* a round without a dispatch: every child at this load has
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

/* ---- host liveness ---- */

/* A supervisor session silent for the liveness has lost its host or its
   network (a session is bound to one connection: a HEARTBEAT from another
   one starts another session and cannot keep this one alive): the
   children bound to it are handled as if each had died
   (their first tasks charged, requeued at once: see s_release). The host
   learns it from the new session number its next HEARTBEAT gets, and its
   children announce themselves again. */
void
tqb_check_hosts(tq_broker_t *self)
{
    peer_t *next;
    for (peer_t *sup = self->supervisors; sup; sup = next) {
        next = sup->next;
        if (self->now_ms - sup->last_seen_ms < TQB_LIVENESS_MS)
            continue;
        char why[128];
        snprintf(why, sizeof why, "host silent for %.1f s",
                 (double)(self->now_ms - sup->last_seen_ms) / 1000.0);
        tqb_warn(self, "supervisor %s pid %llu: %s", sup->host,
                 (unsigned long long)sup->pid, why);
        peer_t *wnext;
        for (peer_t *w = self->children; w; w = wnext) {
            wnext = w->next;
            if (w->session == sup->session)
                tqb_peer_remove(self, w, true, TQ_EUNREACHABLE, why);
        }
        tqb_peer_remove(self, sup, false, 0, why);
    }
}
