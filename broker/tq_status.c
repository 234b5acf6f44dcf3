/* tq_status.c - what the broker tells about itself: the STATUS body
   (PROTOCOL.md section 8) and the dead letters (FAILED). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tq_broker_core.h"

/* The STATUS body, PROTOCOL.md section 8. */
static void
s_pack_status(tq_broker_t *self, msgpack_packer *pk)
{
    msgpack_pack_map(pk,
                     10 + (self->auth ? 1 : 0) + (self->store ? 1 : 0) +
                         tqb_lease_status_entries(self));
    tqb_pack_str(pk, "version");
    tqb_pack_str(pk, "TQP/1");
    tqb_pack_uint_kv(pk, "pid", (uint64_t)getpid());
    tqb_pack_uint_kv(pk, "uptime_ms",
                     (uint64_t)(self->now_ms - self->started_ms));
    tqb_pack_uint_kv(pk, "memory", self->memory);
    tqb_lease_pack_status(self, pk);

    size_t count = 0;
    for (queue_t *q = self->queues; q; q = q->next)
        count++;
    tqb_pack_str(pk, "queues");
    msgpack_pack_array(pk, count);
    for (queue_t *q = self->queues; q; q = q->next) {
        int64_t oldest = self->now_ms;
        for (lane_t *lane = q->lanes; lane; lane = lane->next)
            for (int p = 0; p < TQB_PRIORITIES; p++)
                if (lane->fifo[p].head &&
                    lane->fifo[p].head->submitted_ms < oldest)
                    oldest = lane->fifo[p].head->submitted_ms;
        msgpack_pack_map(pk, 7);
        tqb_pack_str(pk, "name");
        tqb_pack_str(pk, q->name);
        tqb_pack_uint_kv(pk, "waiting", q->waiting);
        tqb_pack_uint_kv(pk, "running", q->running);
        tqb_pack_uint_kv(pk, "delayed", q->delayed);
        tqb_pack_uint_kv(pk, "done", q->done);
        tqb_pack_uint_kv(pk, "failed", q->failed);
        tqb_pack_uint_kv(pk, "oldest_ms", (uint64_t)(self->now_ms - oldest));
    }

    count = 0;
    for (peer_t *w = self->children; w; w = w->next)
        count++;
    tqb_pack_str(pk, "workers");
    msgpack_pack_array(pk, count);
    for (peer_t *w = self->children; w; w = w->next) {
        msgpack_pack_map(pk, 11);
        tqb_pack_str(pk, "host");
        tqb_pack_str(pk, w->host);
        tqb_pack_uint_kv(pk, "ppid", w->ppid);
        /* 0 until its supervisor's first HEARTBEAT came (section 10) */
        tqb_pack_uint_kv(pk, "session", w->session);
        tqb_pack_uint_kv(pk, "pid", w->pid);
        tqb_pack_uint_kv(pk, "credit", w->credit);
        tqb_pack_uint_kv(pk, "running", w->held);
        tqb_pack_uint_kv(pk, "done", w->done);
        tqb_pack_uint_kv(pk, "rss_kb", w->rss_kb);
        tqb_pack_str(pk, "busy");
        if (w->held + w->cancelled)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        tqb_pack_str(pk, "queues");
        msgpack_pack_array(pk, w->queue_count);
        for (uint32_t i = 0; i < w->queue_count; i++)
            tqb_pack_str(pk, w->queues[i]->name);
        tqb_pack_str(pk, "tasks");
        msgpack_pack_array(pk, w->task_count);
        for (uint32_t i = 0; i < w->task_count; i++)
            tqb_pack_str(pk, w->tasks[i]);
    }

    count = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            tqb_pack_str(pk, "unserved");
            msgpack_pack_array(pk, count);
        }
        for (queue_t *q = self->queues; q; q = q->next)
            for (lane_t *lane = q->lanes; lane; lane = lane->next) {
                if (!lane->waiting || tqb_lane_served(self, lane))
                    continue;
                if (pass == 0) {
                    count++;
                    continue;
                }
                msgpack_pack_map(pk, 3);
                tqb_pack_str(pk, "task");
                tqb_pack_str(pk, lane->task);
                tqb_pack_str(pk, "queue");
                tqb_pack_str(pk, q->name);
                tqb_pack_uint_kv(pk, "waiting", lane->waiting);
            }
    }

    count = 0;
    for (dq_t *dq = self->dqs; dq; dq = dq->next)
        count++;
    tqb_pack_str(pk, "data_queues");
    msgpack_pack_array(pk, count);
    for (dq_t *dq = self->dqs; dq; dq = dq->next) {
        uint64_t getters = 0;
        for (getter_t *g = dq->getters; g; g = g->next)
            getters++;
        msgpack_pack_map(pk, 4);
        tqb_pack_str(pk, "name");
        tqb_pack_str(pk, dq->name);
        tqb_pack_uint_kv(pk, "size", dq->size);
        tqb_pack_uint_kv(pk, "maxsize", dq->maxsize);
        tqb_pack_uint_kv(pk, "getters", getters);
    }

    if (self->auth) {
        /* CURVE handshakes, from the ZAP handler */
        tq_auth_stats_t auth;
        tq_auth_stats(&auth);
        tqb_pack_str(pk, "auth");
        msgpack_pack_map(pk, 5);
        tqb_pack_uint_kv(pk, "allowed", auth.allowed);
        tqb_pack_uint_kv(pk, "denied_clients", auth.denied_clients);
        tqb_pack_uint_kv(pk, "denied_workers", auth.denied_workers);
        tqb_pack_uint_kv(pk, "denied_other", auth.denied_other);
        tqb_pack_uint_kv(pk, "reloads", auth.reloads);
    }

    if (self->store) {
        /* the store's commits and their latency: a histogram whose
           buckets count the commits at most `le_us` long, each once */
        tqb_pack_str(pk, "store");
        msgpack_pack_map(pk, 5);
        tqb_pack_uint_kv(pk, "commits", self->commits);
        /* tasks whose arguments are only on disk now, and arguments
           read back from it so far */
        tqb_pack_uint_kv(pk, "paged_out", self->paged_out);
        tqb_pack_uint_kv(pk, "paged_in", self->paged_in);
        tqb_pack_uint_kv(pk, "commit_us_sum", self->commit_us_sum);
        tqb_pack_str(pk, "commit_us_buckets");
        msgpack_pack_array(pk, TQB_COMMIT_BUCKETS);
        for (int i = 0; i < TQB_COMMIT_BUCKETS; i++) {
            msgpack_pack_array(pk, 2);
            msgpack_pack_uint32(pk, tqb_commit_bounds[i]);
            msgpack_pack_uint64(pk, self->commit_buckets[i]);
        }
    }

    /* delivered results kept in memory (tq_results.c); always 0 with a
       store, which keeps every result for the TTL */
    tqb_pack_str(pk, "result_window");
    msgpack_pack_map(pk, 4);
    tqb_pack_uint_kv(pk, "results", self->window.count);
    tqb_pack_uint_kv(pk, "bytes", self->window.bytes);
    tqb_pack_uint_kv(pk, "limit", tqb_results_limit(self));
    tqb_pack_uint_kv(pk, "expired", self->window.expired);

    const counters_t *c = &self->counters;
    tqb_pack_str(pk, "counters");
    msgpack_pack_map(pk, 25);
    tqb_pack_uint_kv(pk, "submitted", c->submitted);
    tqb_pack_uint_kv(pk, "completed", c->completed);
    tqb_pack_uint_kv(pk, "failed", c->failed);
    tqb_pack_uint_kv(pk, "requeued", c->requeued);
    tqb_pack_uint_kv(pk, "lost", c->lost);
    tqb_pack_uint_kv(pk, "duplicates", c->duplicates);
    tqb_pack_uint_kv(pk, "malformed", c->malformed);
    tqb_pack_uint_kv(pk, "errors", c->errors);
    tqb_pack_uint_kv(pk, "dropped", c->dropped);
    tqb_pack_uint_kv(pk, "results_kept", self->results_kept);
    tqb_pack_uint_kv(pk, "retried", c->retried);
    tqb_pack_uint_kv(pk, "cancelled", c->cancelled);
    tqb_pack_uint_kv(pk, "refused", c->refused);
    tqb_pack_uint_kv(pk, "stolen", c->stolen);
    tqb_pack_uint_kv(pk, "dead_letters", self->dead_count);
    tqb_pack_uint_kv(pk, "batches_in", c->batches_in);
    tqb_pack_uint_kv(pk, "batched_in", c->batched_in);
    tqb_pack_uint_kv(pk, "batches_out", c->batches_out);
    tqb_pack_uint_kv(pk, "batched_out", c->batched_out);
    tqb_pack_uint_kv(pk, "child_batches_out", c->child_batches_out);
    tqb_pack_uint_kv(pk, "child_batched_out", c->child_batched_out);
    tqb_pack_uint_kv(pk, "child_batches_in", c->child_batches_in);
    tqb_pack_uint_kv(pk, "child_batched_in", c->child_batched_in);
    tqb_pack_uint_kv(pk, "spins", self->spins);
    tqb_pack_uint_kv(pk, "spins_caught", self->spins_caught);
}

void
tqb_on_status(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)peer;
    msgpack_sbuffer body;
    msgpack_packer pk;
    tqb_body_init(&body, &pk);
    if (self->auth && !self->in_admin) {
        /* under CURVE a client key is one tenant: the queues, hosts and
           counters of all of them are for operator keys */
        msgpack_pack_map(&pk, 4);
        tqb_pack_str(&pk, "version");
        tqb_pack_str(&pk, "TQP/1");
        tqb_pack_uint_kv(&pk, "pid", (uint64_t) getpid());
        tqb_pack_uint_kv(&pk, "uptime_ms",
                         (uint64_t) (self->now_ms - self->started_ms));
        tqb_pack_str(&pk, "details");
        tqb_pack_str(&pk, "for operator keys (--admin-keys)");
    } else
        s_pack_status(self, &pk);
    /* echo the request's id, when it gave one: the client matches the
       answer by it (PROTOCOL.md section 10, "dropped") */
    tqb_out(self, TQ_CMD_STATUS_REPLY)->id = msg->id;
    tqb_send_body(self, &body);
}

/* The dead letters, oldest first: {"failed": [{id, task, queue, attempts,
   code, error}]}. */
void
tqb_on_failed(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)msg;
    (void)peer;
    msgpack_sbuffer body;
    msgpack_packer pk;
    tqb_body_init(&body, &pk);
    msgpack_pack_map(&pk, 1);
    tqb_pack_str(&pk, "failed");
    uint32_t count = 0;
    for (const task_t *task = self->dead_head; task; task = task->dead_next)
        count += tqb_may_see(self, task);
    msgpack_pack_array(&pk, count);
    for (const task_t *task = self->dead_head; task; task = task->dead_next) {
        if (!tqb_may_see(self, task))
            continue; /* another tenant's */
        msgpack_pack_map(&pk, 6);
        tqb_pack_str(&pk, "id");
        tqb_pack_str(&pk, tqb_task_id(task));
        tqb_pack_str(&pk, "task");
        tqb_pack_str(&pk, task->lane->task);
        tqb_pack_str(&pk, "queue");
        tqb_pack_str(&pk, task->lane->queue->name);
        tqb_pack_uint_kv(&pk, "attempts", task->rec.attempt);
        tqb_pack_uint_kv(&pk, "code", task->rec.code);
        tqb_pack_str(&pk, "error");
        tqb_pack_str(
            &pk, tqb_task_error(self, task) ? tqb_task_error(self, task) : "");
    }
    tqb_reply_body(self, &body);
}
