/* tq_dispatch.c - peers on the workers endpoint and the work they get:
   children (READY) and supervisors (HEARTBEAT), credit dispatch, work
   stealing with the holder's consent, and host liveness. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_broker_core.h"

/* ---- peers ---- */

/* An id's hash: libzmq's own ids (5 bytes: a zero and a counter) by one
   multiply, whose high half mixes every bit of them; any other by FNV-1a
   over its bytes. */
static uint32_t
s_ident_hash(const uint8_t *data, size_t size)
{
    if (size == 5) {
        uint32_t word;
        memcpy(&word, data + 1, 4);
        uint64_t h = ((uint64_t)data[0] << 32 | word) * 0x9e3779b97f4a7c15ull;
        return (uint32_t)(h >> 32);
    }
    uint32_t h = 2166136261u ^ (uint32_t)size;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 16777619u;
    return h;
}

size_t
tqb_ident_hash(const void *key)
{
    const ident_t *ident = key;
    return s_ident_hash(tqb_ident_data(ident), ident->size);
}

int
tqb_ident_cmp(const void *a, const void *b)
{
    const ident_t *x = a, *y = b;
    if (x->size != y->size)
        return x->size < y->size ? -1 : 1;
    return memcmp(tqb_ident_data(x), tqb_ident_data(y), x->size);
}

/* The peers by their id's bytes, for tqb_peer (every message from the
   workers endpoint): open addressing, linear probing, at most half full,
   removal by backward shift (no tombstones). self->peers (zhashx, the
   same key) keeps them for insertion and teardown. */
static bool
s_peer_is(const peer_t *peer, uint32_t hash, const uint8_t *data, size_t size)
{
    return peer->ident_hash == hash && peer->ident.size == size &&
        tqb_ident_bytes_eq(tqb_ident_bytes(&peer->ident), data, size);
}

static void
s_index_put(peer_t **slots, uint32_t mask, peer_t *peer)
{
    uint32_t i = peer->ident_hash & mask;
    while (slots[i])
        i = (i + 1) & mask;
    slots[i] = peer;
}

static void
s_index_add(tq_broker_t *self, peer_t *peer)
{
    if (2 * (self->peer_used + 1) > self->peer_mask + 1 || !self->peer_slots) {
        uint32_t cap = self->peer_slots ? 2 * (self->peer_mask + 1) : 64;
        peer_t **slots = tqb_alloc(cap * sizeof *slots);
        for (uint32_t i = 0; self->peer_slots && i <= self->peer_mask; i++)
            if (self->peer_slots[i])
                s_index_put(slots, cap - 1, self->peer_slots[i]);
        free(self->peer_slots);
        self->peer_slots = slots;
        self->peer_mask = cap - 1;
    }
    s_index_put(self->peer_slots, self->peer_mask, peer);
    self->peer_used++;
}

static void
s_index_remove(tq_broker_t *self, peer_t *peer)
{
    uint32_t mask = self->peer_mask;
    peer_t **slots = self->peer_slots;
    if (!slots)
        return;
    uint32_t i = peer->ident_hash & mask;
    while (slots[i] && slots[i] != peer)
        i = (i + 1) & mask;
    if (!slots[i])
        return; /* never indexed */
    slots[i] = NULL;
    self->peer_used--;
    /* close the gap: a later entry moves back unless its home lies in
       (i, j] (cyclically), where it is still reachable */
    for (uint32_t j = (i + 1) & mask; slots[j]; j = (j + 1) & mask) {
        uint32_t home = slots[j]->ident_hash & mask;
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            slots[i] = slots[j];
            slots[j] = NULL;
            i = j;
        }
    }
}

void
tqb_peers_index_free(tq_broker_t *self)
{
    free(self->peer_slots);
    self->peer_slots = NULL;
    self->peer_mask = 0;
    self->peer_used = 0;
}

peer_t *
tqb_peer(tq_broker_t *self)
{
    /* by the sender's id bytes: no render to text, no zhashx */
    size_t size = self->in_from.size;
    const uint8_t *data = tqb_ident_bytes(&self->in_from);
    if (!self->peer_slots)
        return NULL;
    uint32_t hash = s_ident_hash(data, size);
    for (uint32_t i = hash & self->peer_mask; self->peer_slots[i];
         i = (i + 1) & self->peer_mask)
        if (s_peer_is(self->peer_slots[i], hash, data, size))
            return self->peer_slots[i];
    return NULL;
}

peer_t *
tqb_peer_new(tq_broker_t *self, peer_role_t role)
{
    peer_t *peer = tqb_alloc(sizeof *peer);
    peer->serial = ++self->peer_serial;
    peer->role = role;
    size_t size = self->in_from.size;
    tqb_ident_set(&peer->ident, tqb_ident_data(&self->in_from), size);
    peer->ident_hash = s_ident_hash(tqb_ident_data(&peer->ident), size);
    if (zhashx_insert(self->peers, &peer->ident, peer) == 0)
        s_index_add(self, peer);
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

/* The children holding 2 tasks or more (tq_broker_t.multi), in no
   order: stealing looks at them, not at every child. */
static void
s_multi_join(tq_broker_t *self, peer_t *child)
{
    child->multi_prev = NULL;
    child->multi_next = self->multi;
    if (self->multi)
        self->multi->multi_prev = child;
    self->multi = child;
}

static void
s_multi_leave(tq_broker_t *self, peer_t *child)
{
    if (!child->multi_prev && self->multi != child)
        return; /* not in it */
    if (child->multi_prev)
        child->multi_prev->multi_next = child->multi_next;
    else
        self->multi = child->multi_next;
    if (child->multi_next)
        child->multi_next->multi_prev = child->multi_prev;
    child->multi_prev = child->multi_next = NULL;
}

/* The children marked unreachable (tq_broker_t.unreachable), in the
   order they were marked: the first is the first whose liveness ends
   (tqb_check_hosts). */
static void
s_unreachable_join(tq_broker_t *self, peer_t *child)
{
    child->unreachable_next = NULL;
    child->unreachable_prev = self->unreachable_tail;
    if (self->unreachable_tail)
        self->unreachable_tail->unreachable_next = child;
    else
        self->unreachable = child;
    self->unreachable_tail = child;
}

static void
s_unreachable_leave(tq_broker_t *self, peer_t *child)
{
    if (!child->unreachable_prev && self->unreachable != child)
        return; /* not in it */
    if (child->unreachable_prev)
        child->unreachable_prev->unreachable_next = child->unreachable_next;
    else
        self->unreachable = child->unreachable_next;
    if (child->unreachable_next)
        child->unreachable_next->unreachable_prev = child->unreachable_prev;
    else
        self->unreachable_tail = child->unreachable_prev;
    child->unreachable_prev = child->unreachable_next = NULL;
}

void
tqb_peer_free(peer_t *peer)
{
    tqb_ident_clear(&peer->ident);
    free(peer->hungry_at);
    free(peer->queues);
    free(peer->tasks);
    free(peer);
}

/* Puts a child's tasks back: the one it was running is charged with the
   death when `lost`; past the limit it fails instead. That is the one its
   LOST named, else the first (children run in dispatch order; but the
   DONEs a child wrote just before it died may never have left it). */
static void
s_release(tq_broker_t *self, peer_t *child, bool lost, int code,
          const char *why)
{
    task_t *running =
        child->lost_named ? child->lost_task : child->held_tasks.head;
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
        /* its open batch never left: those TASKs go back with the rest */
        tqb_batch_drop(self, peer);
        s_release(self, peer, lost, code, why);
        tqb_peer_unserve(self, peer);
        s_multi_leave(self, peer);
        s_unreachable_leave(self, peer);
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
    if (zhashx_lookup(self->peers, &peer->ident) == peer)
        zhashx_delete(self->peers, &peer->ident);
    s_index_remove(self, peer);
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
    (void)self;
    const queue_t *queue = lane->queue;
    for (uint32_t i = 0; i < queue->server_count; i++)
        if (tqb_peer_serves(queue->servers[i], lane))
            return true;
    return false;
}

/* Puts a child in its queues' hungry arrays or takes it out, as
   tqb_peer_hungry says it now belongs. Out: the last one of each array
   takes its place (found in that child's lists by its position, so a
   queue listed twice stays right). */
static void
s_hungry_sync(peer_t *child)
{
    bool want = tqb_peer_hungry(child);
    if (want == child->hungry)
        return;
    child->hungry = want;
    for (uint32_t i = 0; i < child->queue_count; i++) {
        queue_t *q = child->queues[i];
        if (want) {
            if (q->hungry_count == q->hungry_cap) {
                q->hungry_cap = q->hungry_cap ? 2 * q->hungry_cap : 8;
                q->hungry =
                    realloc(q->hungry, q->hungry_cap * sizeof *q->hungry);
                if (!q->hungry)
                    abort();
            }
            child->hungry_at[i] = q->hungry_count;
            q->hungry[q->hungry_count++] = child;
            continue;
        }
        uint32_t at = child->hungry_at[i], last = --q->hungry_count;
        peer_t *moved = q->hungry[last];
        q->hungry[at] = moved;
        for (uint32_t j = 0; j < moved->queue_count; j++)
            if (moved->queues[j] == q && moved->hungry_at[j] == last) {
                moved->hungry_at[j] = at;
                break;
            }
    }
}

void
tqb_peer_serve(tq_broker_t *self, peer_t *child)
{
    (void)self;
    for (uint32_t i = 0; i < child->queue_count; i++) {
        queue_t *q = child->queues[i];
        if (q->server_count == q->server_cap) {
            q->server_cap = q->server_cap ? 2 * q->server_cap : 8;
            q->servers =
                realloc(q->servers, q->server_cap * sizeof *q->servers);
            if (!q->servers)
                abort();
        }
        q->servers[q->server_count++] = child;
    }
    free(child->hungry_at);
    child->hungry_at =
        tqb_alloc((child->queue_count + 1) * sizeof *child->hungry_at);
    child->serving = true;
    s_hungry_sync(child);
}

void
tqb_peer_unserve(tq_broker_t *self, peer_t *child)
{
    (void)self;
    child->serving = false;
    s_hungry_sync(child);
    for (uint32_t i = 0; i < child->queue_count; i++) {
        queue_t *q = child->queues[i];
        for (uint32_t j = 0; j < q->server_count; j++)
            if (q->servers[j] == child) {
                q->servers[j] = q->servers[--q->server_count];
                break;
            }
    }
}

void
tqb_peer_held_changed(tq_broker_t *self, peer_t *child, uint32_t before)
{
    bool is = child->held >= 2;
    if ((before >= 2) != is) {
        if (child->features & TQ_FEATURE_RETURNS) {
            if (is)
                self->multi_holders++;
            else
                self->multi_holders--;
        }
        if (is)
            s_multi_join(self, child);
        else
            s_multi_leave(self, child);
    }
    s_hungry_sync(child);
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
            if (!lane->busy || !tqb_peer_serves(child, lane))
                continue;
            /* its highest priority with tasks: the highest bit of busy */
            int p = 31 - __builtin_clz(lane->busy);
            task_t *head = lane->fifo[p].head;
            if (!best || p > best->rec.priority ||
                (p == best->rec.priority && head->rec.seq < best->rec.seq))
                best = head;
        }
    }
    return best;
}

/* A send to a child failed. EHOSTUNREACH: its connection is gone. Most
   often the child died, and its supervisor's LOST follows, which charges
   the task it was running (PROTOCOL.md 5.2 item 7); removing the child
   now, as a DISCONNECT, would put that task back uncharged and leave the
   LOST nobody to find, so that a task that kills its child could do it
   again and again (with prefetch above 1 the broker sends to children
   that are busy, so this race is common). The child is only marked: it
   gets nothing more, and its LOST, its READY on a new connection, or
   TQB_LIVENESS_MS of neither (then as a DISCONNECT: tqb_check_hosts)
   ends it. Any other error removes it at once. */
static void
s_unreachable(tq_broker_t *self, peer_t *child, int err)
{
    self->dispatch_due = true;
    if (err != EHOSTUNREACH) {
        tqb_peer_remove(self, child, false, 0, "unreachable");
        return;
    }
    if (!child->unreachable_ms) {
        child->unreachable_ms = self->now_ms > 0 ? self->now_ms : 1;
        s_unreachable_join(self, child);
        s_hungry_sync(child);
        tqb_debug(self,
                  "worker %s pid %llu unreachable: waiting for its "
                  "LOST",
                  child->host, (unsigned long long)child->pid);
    }
}

void
tqb_child_refused(tq_broker_t *self, peer_t *child, int err)
{
    s_unreachable(self, child, EHOSTUNREACH); /* it gets nothing more */
    if (err != EHOSTUNREACH) {
        child->refused = true;
        self->refused_due = true;
    }
}

void
tqb_remove_refused(tq_broker_t *self)
{
    self->refused_due = false;
    peer_t *next;
    for (peer_t *w = self->children; w; w = next) {
        next = w->next;
        if (w->refused)
            tqb_peer_remove(self, w, false, 0, "unreachable");
    }
}

/* Sends a task to a child. Returns false if the child cannot take it: it
   was removed, or marked unreachable (s_unreachable); the task, which it
   never got, went back to the front of its lane with its attempt. */
static bool
s_dispatch_one(tq_broker_t *self, peer_t *child, task_t *task)
{
    task->rec.attempt++;
    tqb_task_set_started(task, self->now_ms);
    tqb_task_move(self, task, TASK_HELD, &(task_move_t){.holder = child});
    /* its arguments: the task's own bytes when it holds them (copied
       once, into the batch or the message), else shared or read back */
    zmq_msg_t args;
    zmq_msg_init(&args);
    zmq_msg_t *held = NULL;
    const void *data;
    size_t size;
    if (!tqb_task_payload_bytes(task, &data, &size)) {
        const char *why = NULL;
        if (tqb_task_payload(self, task, &args, &why) != 0) {
            /* only the store had its arguments, and they cannot be read */
            tqb_task_final(self, task, TASK_FAILURE, TQ_ECORRUPT, why, NULL);
            return true;
        }
        held = &args;
        data = zmq_msg_data(&args);
        size = zmq_msg_size(&args);
    }
    tq_msg_t *out = tqb_out(self, TQ_CMD_TASK);
    tqb_out_id(out, task, (child->features & TQ_FEATURE_BINARY_IDS) != 0);
    out->task = (tq_str_t){task->lane->task, task->lane->task_len};
    out->attempt = task->rec.attempt;
    out->time_limit_ms = task->rec.time_limit_ms;
    int rc = tqb_send_child(self, child, held, data, size);
    int err = errno;
    if (held)
        zmq_msg_close(&args);
    if (rc != 0) {
        /* never delivered: nobody holds this attempt */
        tqb_task_move(self, task, TASK_WAITING, &(task_move_t){.front = true});
        task->rec.attempt--;
        s_unreachable(self, child, err);
        return false;
    }
    return true;
}

/* Whether a server of a queue that a holder of 2+ serves is idle: only
   then can stealing give anything. A holder's tasks are of the queues it
   serves, except those of a queue it dropped since (a READY with other
   lists): an idle child of such a queue gets one of them only at a pass
   that finds another taker. */
static bool
s_steal_has_taker(tq_broker_t *self)
{
    uint64_t stamp = ++self->stamp;
    for (peer_t *w = self->multi; w; w = w->multi_next) {
        self->visits++;
        for (uint32_t q = 0; q < w->queue_count; q++) {
            queue_t *queue = w->queues[q];
            if (queue->stamp == stamp)
                continue;
            queue->stamp = stamp;
            for (uint32_t s = 0; s < queue->hungry_count; s++) {
                peer_t *taker = queue->hungry[s];
                self->visits++;
                if (taker->held + taker->cancelled == 0 &&
                    !taker->unreachable_ms)
                    return true;
            }
        }
    }
    return false;
}

/* Work stealing. With prefetch above 1 a child may hold tasks it has not
   started while another child has nothing to do (the lanes ran dry). The
   broker asks the holder for the held task that should run next (REVOKE);
   the holder answers at once, even while it runs a task: RETURNED if it
   had not started it, nothing if it had (its DONE comes). Only a RETURNED
   task is queued again (tqb_on_returned), so a steal never runs a task
   twice. At most one REVOKE is outstanding per idle child; one for a task
   that has become the first its holder holds does not count: the holder
   ended the tasks before it, so it has most likely started it and stays
   silent, and the idle child must not wait for that task's end.

   Cost: nothing unless some child holds two tasks or more and answers
   REVOKE (multi_holders); then only those holders (self->multi) and the
   servers with credit left of their queues (queue_t.hungry) are looked
   at, never busy children nor those of other queues: first whether any
   of those servers is idle (under load none is, and that is all a pass
   pays), then the tasks that may be asked for and the idle children of
   their queues. */
static void
s_steal(tq_broker_t *self)
{
    if (!self->multi_holders)
        return;
    /* nobody idle where it could help, nothing to do: the common case
       under load, where this runs at the end of every dispatch pass */
    if (!s_steal_has_taker(self))
        return;
    /* what may be asked for (held, not first, holder answers REVOKE), and
       the idle children already waiting on a REVOKE; on the stack unless
       there are many */
    task_t *victims_here[64];
    uint64_t asked_here[64];
    uint32_t nvictims = 0, nasked = 0, cap = 64;
    task_t **victims = victims_here;
    uint64_t *asked = asked_here;
    for (peer_t *w = self->multi; w; w = w->multi_next) {
        self->visits++;
        if (w->unreachable_ms)
            continue;
        for (task_t *t = w->held_tasks.head->next; t; t = t->next) {
            if (nvictims == cap || nasked == cap) {
                task_t **v = tqb_alloc(2 * cap * sizeof *v);
                uint64_t *a = tqb_alloc(2 * cap * sizeof *a);
                memcpy(v, victims, nvictims * sizeof *v);
                memcpy(a, asked, nasked * sizeof *a);
                if (victims != victims_here) {
                    free(victims);
                    free(asked);
                }
                victims = v;
                asked = a;
                cap *= 2;
            }
            if (t->state == TASK_REVOKING)
                asked[nasked++] = t->revoke_for;
            else if (w->features & TQ_FEATURE_RETURNS)
                victims[nvictims++] = t;
        }
    }
    uint64_t stamp = ++self->stamp;
    for (uint32_t v = 0; v < nvictims; v++) {
        queue_t *queue = victims[v]->lane->queue;
        if (queue->stamp == stamp)
            continue; /* its servers were looked at */
        queue->stamp = stamp;
        /* a send below may take a holder out of this array (marked
           unreachable): one taker moved may be missed, for the next
           pass (dispatch_due) */
        for (uint32_t s = 0; s < queue->hungry_count; s++) {
            peer_t *taker = queue->hungry[s];
            self->visits++;
            if (taker->stamp == stamp)
                continue;
            taker->stamp = stamp;
            if (taker->held + taker->cancelled > 0 || taker->unreachable_ms)
                continue;
            bool waiting = false;
            for (uint32_t a = 0; a < nasked && !waiting; a++)
                waiting = asked[a] == taker->serial;
            if (waiting)
                continue;
            /* the unstarted task that should run next, by the order
               dispatch uses (priority, then submission), so that tasks
               still start in the order a single queue would start them */
            task_t *victim = NULL;
            for (uint32_t k = 0; k < nvictims; k++) {
                task_t *t = victims[k];
                if (t && t->state == TASK_HELD && t->holder != taker &&
                    !t->holder->unreachable_ms &&
                    tqb_peer_serves(taker, t->lane) &&
                    (!victim || t->rec.priority > victim->rec.priority ||
                     (t->rec.priority == victim->rec.priority &&
                      t->rec.seq < victim->rec.seq)))
                    victim = t;
            }
            if (!victim)
                continue; /* nothing this child could take */
            peer_t *holder = victim->holder;
            /* the holder's open batch goes first (it may hold the
               victim's TASK); refused, its tasks went back and it is
               marked: look again at the next pass */
            tqb_batch_send_child(self, holder);
            if (holder->unreachable_ms)
                continue;
            tq_msg_t *out = tqb_out(self, TQ_CMD_REVOKE);
            tqb_out_id(out, victim,
                       (holder->features & TQ_FEATURE_BINARY_IDS) != 0);
            out->attempt = victim->rec.attempt;
            if (tqb_send_to(self, self->workers, &holder->ident, NULL) != 0) {
                /* gone: marked (its tasks stay until its LOST) or
                   removed (they went back to their lanes: the lists are
                   stale); look again at the next pass */
                int err = errno;
                s_unreachable(self, holder, err);
                if (err != EHOSTUNREACH)
                    goto done;
                continue;
            }
            tqb_task_move(self, victim, TASK_REVOKING, NULL);
            victim->revoke_for = taker->serial;
        }
    }
done:
    if (victims != victims_here) {
        free(victims);
        free(asked);
    }
}

static int
s_by_serial(const void *a, const void *b)
{
    const peer_t *x = *(peer_t *const *)a, *y = *(peer_t *const *)b;
    return x->serial < y->serial ? -1 : x->serial > y->serial;
}

/* The children that could take a waiting task now: servers of queues
   with waiting tasks, with credit left, in the order they announced
   themselves. Idle children of other queues cost nothing, nor do
   children at their credit (queue_t.hungry holds the others). */
static uint32_t
s_candidates(tq_broker_t *self)
{
    uint64_t stamp = ++self->stamp;
    uint32_t count = 0;
    for (queue_t *q = self->queues; q; q = q->next) {
        if (!q->waiting)
            continue;
        for (uint32_t i = 0; i < q->hungry_count; i++) {
            peer_t *child = q->hungry[i];
            self->visits++;
            if (child->stamp == stamp || child->unreachable_ms ||
                child->held + child->cancelled >= child->credit)
                continue;
            child->stamp = stamp;
            if (count == self->candidate_cap) {
                self->candidate_cap =
                    self->candidate_cap ? 2 * self->candidate_cap : 64;
                self->candidates =
                    realloc(self->candidates,
                            self->candidate_cap * sizeof *self->candidates);
                if (!self->candidates)
                    abort();
            }
            self->candidates[count++] = child;
        }
    }
    /* candidates is NULL until the first one: qsort must not see it */
    if (count > 1)
        qsort(self->candidates, count, sizeof *self->candidates, s_by_serial);
    return count;
}

/* Offers one task to every candidate at the lowest load in each round, so
   every idle child is served before any child gets a second task (a burst
   spreads over all of them, and a task given back after REVOKE goes to
   the idle child that wanted it, not back to its holder). */
void
tqb_dispatch(tq_broker_t *self)
{
    self->dispatch_due = false;
    uint32_t count = s_candidates(self);
    peer_t **cand = self->candidates;
    uint32_t level = 0;
    for (;;) {
        bool progress = false;
        uint32_t next_level = UINT32_MAX;
        for (uint32_t i = 0; i < count; i++) {
            peer_t *child = cand[i];
            if (!child)
                continue;
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
                cand[i] = NULL; /* removed; its tasks went back */
            progress = true;
        }
        /* a round without a dispatch: every candidate at this load has
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
    /* a child whose connection went away, for which neither its LOST nor
       a new READY came: handled as a DISCONNECT (s_unreachable); they
       were marked in time order, so only the expired and the first one
       left are looked at, not every child */
    for (peer_t *w = self->unreachable; w; w = self->unreachable) {
        self->visits++;
        if (self->now_ms - w->unreachable_ms < TQB_LIVENESS_MS)
            break;
        tqb_peer_remove(self, w, false, 0, "unreachable");
    }
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
