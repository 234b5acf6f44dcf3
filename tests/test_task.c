/* test_task.c - the task state machine of the broker (broker/tq_task.c):
   the table of legal moves, the one container each state puts a task in,
   the counts that follow it, and what reaches the store. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "tq_broker_core.h"
#include "tq_harness.h"

static tq_broker_t *
s_broker(const char *data_dir)
{
    tq_broker_config_t config = {
        .data_dir = data_dir,
    };
    tq_broker_t *broker = tq_harness_broker_new(config);
    assert_non_null(broker);
    return broker;
}

/* A child peer, as if it had sent READY. */
static peer_t *
s_child(tq_broker_t *self, const char *ident)
{
    zmq_msg_close(&self->frames.identity);
    zmq_msg_init_size(&self->frames.identity, strlen(ident));
    memcpy(zmq_msg_data(&self->frames.identity), ident, strlen(ident));
    tqb_received(self);
    peer_t *child = tqb_peer_new(self, PEER_CHILD);
    child->credit = 4;
    return child;
}

static task_t *
s_task(tq_broker_t *self, const char *id)
{
    lane_t *lane =
        tqb_lane(tqb_queue(self, tq_str("q")), tqb_intern(self, tq_str("t")));
    zmq_msg_t args;
    zmq_msg_init_size(&args, 1);
    *(uint8_t *)zmq_msg_data(&args) = 0x90; /* [] */
    task_t *task = tqb_task_new(self, id, lane, &args);
    zmq_msg_close(&args);
    task->rec.seq = ++self->seq;
    task->rec.backoff_ms = 1000;
    return task;
}

static void
test_table(void **state)
{
    (void)state;
    /* what a task may do */
    assert_true(tqb_task_legal(TASK_NEW, TASK_WAITING));
    assert_true(tqb_task_legal(TASK_NEW, TASK_SCHEDULED));
    assert_true(tqb_task_legal(TASK_WAITING, TASK_HELD));
    assert_true(tqb_task_legal(TASK_HELD, TASK_REVOKING));
    assert_true(tqb_task_legal(TASK_REVOKING, TASK_WAITING));
    assert_true(tqb_task_legal(TASK_HELD, TASK_RETRY));
    assert_true(tqb_task_legal(TASK_RETRY, TASK_WAITING));
    assert_true(tqb_task_legal(TASK_SCHEDULED, TASK_WAITING));
    assert_true(tqb_task_legal(TASK_HELD, TASK_SUCCESS));
    assert_true(tqb_task_legal(TASK_FAILURE, TASK_WAITING));
    /* and what it never does */
    assert_false(tqb_task_legal(TASK_WAITING, TASK_SUCCESS)); /* no DONE
                                                                 unheld */
    assert_false(tqb_task_legal(TASK_SCHEDULED, TASK_HELD));
    assert_false(tqb_task_legal(TASK_RETRY, TASK_HELD));
    assert_false(tqb_task_legal(TASK_NEW, TASK_HELD));
    assert_false(tqb_task_legal(TASK_SUCCESS, TASK_WAITING));
    assert_false(tqb_task_legal(TASK_CANCELLED, TASK_WAITING));
    assert_false(tqb_task_legal(TASK_FAILURE, TASK_HELD));
    for (int s = 0; s < TASK_STATES_; s++)
        assert_false(tqb_task_legal((task_state_t)s, TASK_NEW));
    /* the wire sees fewer states */
    tq_broker_t *b = s_broker(NULL);
    task_t *t = s_task(b, "w1");
    assert_int_equal(tqb_task_wire_state(t), TQ_STATE_PENDING);
    tqb_task_move(b, t, TASK_SCHEDULED, &(task_move_t){.due_ms = 1});
    assert_int_equal(tqb_task_wire_state(t), TQ_STATE_SCHEDULED);
    tq_broker_destroy(&b);
}

/* Each state, one container, and the counts follow. */
static void
test_containers(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    b->now_ms = 1000;
    peer_t *child = s_child(b, "c1");
    task_t *a = s_task(b, "a"), *c = s_task(b, "c");
    queue_t *q = a->lane->queue;

    tqb_task_move(b, a, TASK_WAITING, NULL);
    tqb_task_move(b, c, TASK_WAITING, NULL);
    assert_int_equal(q->waiting, 2);
    assert_ptr_equal(a->lane->fifo[0].head, a);

    tqb_task_move(b, a, TASK_HELD, &(task_move_t){.holder = child});
    assert_int_equal(q->waiting, 1);
    assert_int_equal(q->running, 1);
    assert_int_equal(child->held, 1);
    assert_ptr_equal(child->held_tasks.head, a);
    assert_ptr_equal(a->holder, child);

    /* a REVOKE asked: only a count changes */
    tqb_task_move(b, a, TASK_REVOKING, NULL);
    assert_int_equal(child->revoking, 1);
    assert_int_equal(child->held, 1);
    /* given back: at the front of its priority */
    tqb_task_move(b, a, TASK_WAITING, &(task_move_t){.front = true});
    assert_int_equal(child->revoking, 0);
    assert_int_equal(child->held, 0);
    assert_null(a->holder);
    assert_ptr_equal(a->lane->fifo[0].head, a);
    assert_int_equal(q->waiting, 2);

    /* RETRY waits in the heap, then comes back at the front */
    tqb_task_move(b, c, TASK_HELD, &(task_move_t){.holder = child});
    tqb_task_move(b, c, TASK_RETRY, &(task_move_t){.due_ms = 1500});
    assert_int_equal(q->delayed, 1);
    assert_int_equal(q->running, 0);
    assert_int_equal(tqb_next_due(b), 1500);
    b->now_ms = 1499;
    tqb_release_due(b);
    assert_int_equal(c->state, TASK_RETRY);
    b->now_ms = 1500;
    tqb_release_due(b);
    assert_int_equal(c->state, TASK_WAITING);
    assert_ptr_equal(c->lane->fifo[0].head, c);
    assert_int_equal(q->delayed, 0);
    assert_int_equal(tqb_next_due(b), INT64_MAX);

    /* a countdown ends at the back */
    task_t *d = s_task(b, "d");
    tqb_task_move(b, d, TASK_SCHEDULED, &(task_move_t){.due_ms = 1600});
    b->now_ms = 1600;
    tqb_release_due(b);
    assert_ptr_equal(d->lane->fifo[0].tail, d);

    /* final: the expiry list; a dead letter of TQ_ELOST is kept */
    tqb_task_move(b, a, TASK_HELD, &(task_move_t){.holder = child});
    tqb_task_final(b, a, TASK_SUCCESS, TQ_OK, NULL, NULL);
    assert_int_equal(b->results_kept, 1);
    assert_ptr_equal(b->expiry.head, a);
    assert_int_equal(child->held, 0);
    tqb_task_move(b, c, TASK_HELD, &(task_move_t){.holder = child});
    tqb_task_final(b, c, TASK_FAILURE, TQ_ELOST, "lost", NULL);
    assert_int_equal(b->results_kept, 1);
    assert_int_equal(b->dead_count, 1);
    assert_ptr_equal(b->dead_head, c);
    /* the operator's retry takes it out of the dead letters */
    tqb_task_move(b, c, TASK_WAITING, NULL);
    assert_int_equal(b->dead_count, 0);
    assert_null(b->dead_head);

    /* expiry forgets */
    b->now_ms = a->expires_ms;
    tqb_expire_results(b);
    assert_null(tqb_task_find(b, tq_str("a")));
    assert_int_equal(b->results_kept, 0);
    tq_broker_destroy(&b);
}

static int s_rows;
static uint32_t s_state_of_x;

static void
s_count_row(const tq_store_task_t *row, void *arg)
{
    (void)arg;
    s_rows++;
    if (strcmp(row->id, "x") == 0)
        s_state_of_x = row->state;
}

/* The store keeps what the moves wrote: a retrying task is stored as
   RETRY, not left PENDING by one call site that forgot. */
static void
test_journal(void **state)
{
    (void)state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "task"), 0);
    tq_broker_t *b = s_broker(dir);
    peer_t *child = s_child(b, "c1");
    task_t *x = s_task(b, "x");
    tqb_task_move(b, x, TASK_WAITING, NULL);
    x->rec.attempt++;
    tqb_task_move(b, x, TASK_HELD, &(task_move_t){.holder = child});
    tqb_task_move(b, x, TASK_RETRY,
                  &(task_move_t){.due_ms = b->now_ms + 100000});
    assert_true(tqb_commit(b));
    tq_broker_destroy(&b);

    char error[256];
    tq_store_t *store = tq_store_open(dir, TQ_SYNC_OS, error, sizeof error);
    assert_non_null(store);
    s_rows = 0;
    assert_int_equal(tq_store_load(store, s_count_row, NULL), TQ_OK);
    assert_int_equal(s_rows, 1);
    assert_int_equal(s_state_of_x, TQ_STATE_RETRY);
    tq_store_destroy(&store);
    tq_harness_rmtree(dir);
}

/* The operator's RETRY (tqb_on_retry) of a dead letter of TQ_ELOST, which
   never waited for an expiry, leaves the results that do wait for theirs
   where they were. */
static void
test_retry_lost(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    b->now_ms = 1000;
    peer_t *child = s_child(b, "c1");
    task_t *a = s_task(b, "a"), *c = s_task(b, "c");
    tqb_task_move(b, a, TASK_WAITING, NULL);
    tqb_task_move(b, c, TASK_WAITING, NULL);
    tqb_task_move(b, a, TASK_HELD, &(task_move_t){.holder = child});
    tqb_task_move(b, c, TASK_HELD, &(task_move_t){.holder = child});
    tqb_task_final(b, a, TASK_SUCCESS, TQ_OK, NULL, NULL);
    tqb_task_final(b, c, TASK_FAILURE, TQ_ELOST, "lost", NULL);
    assert_int_equal(b->results_kept, 1);
    assert_int_equal(b->dead_count, 1);

    tq_msg_t msg = {.command = TQ_CMD_RETRY, .id = tq_str("c")};
    tqb_on_retry(b, &msg, NULL);
    assert_int_equal(c->state, TASK_WAITING);
    assert_int_equal(b->dead_count, 0);
    assert_int_equal(b->results_kept, 1);
    assert_ptr_equal(b->expiry.head, a);
    assert_ptr_equal(b->expiry.tail, a);

    /* and a's result still expires */
    b->now_ms = a->expires_ms;
    tqb_expire_results(b);
    assert_null(tqb_task_find(b, tq_str("a")));
    assert_int_equal(b->results_kept, 0);
    tq_broker_destroy(&b);
}

static int64_t s_expires_of_x;

static void
s_row_of_x(const tq_store_task_t *row, void *arg)
{
    (void)arg;
    s_rows++;
    if (strcmp(row->id, "x") == 0) {
        s_state_of_x = row->state;
        s_expires_of_x = row->expires_ms;
    }
}

/* A dead letter that an operator retries is work again: the store forgets
   the expiry its result had, or its row would be purged (lost on the next
   restart) once that result's TTL ran out, while it waits or runs. */
static void
test_retry_journal(void **state)
{
    (void)state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "task"), 0);
    tq_broker_t *b = s_broker(dir);
    peer_t *child = s_child(b, "c1");
    task_t *x = s_task(b, "x");
    tqb_task_move(b, x, TASK_WAITING, NULL);
    x->rec.attempt++;
    tqb_task_move(b, x, TASK_HELD, &(task_move_t){.holder = child});
    tqb_task_final(b, x, TASK_FAILURE, TQ_ETASK, "boom", NULL);
    assert_true(tqb_commit(b));
    tq_msg_t msg = {.command = TQ_CMD_RETRY, .id = tq_str("x")};
    tqb_on_retry(b, &msg, NULL);
    assert_int_equal(x->state, TASK_WAITING);
    assert_true(tqb_commit(b));
    tq_broker_destroy(&b);

    char error[256];
    tq_store_t *store = tq_store_open(dir, TQ_SYNC_OS, error, sizeof error);
    assert_non_null(store);
    /* long after the TTL of the failure's result */
    tq_store_purge(store, tqb_wall_ms() + 3600 * 1000, 100);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    s_rows = 0;
    s_expires_of_x = -1;
    assert_int_equal(tq_store_load(store, s_row_of_x, NULL), TQ_OK);
    assert_int_equal(s_rows, 1);
    assert_int_equal(s_state_of_x, TQ_STATE_PENDING);
    assert_int_equal(s_expires_of_x, 0);
    tq_store_destroy(&store);
    tq_harness_rmtree(dir);
}

/* What one task's row holds after a load (test_journal_fold). */
typedef struct {
    bool seen;
    uint32_t state, attempt, retries, failures;
    int64_t due_ms;
    size_t result_size;
    char result[8];
} s_fold_row_t;

static s_fold_row_t s_fold_rows[3]; /* x, y, z */

static void
s_fold_row(const tq_store_task_t *row, void *arg)
{
    (void)arg;
    const char *ids = "xyz";
    const char *at = strchr(ids, row->id[0]);
    if (!at || row->id[1])
        return;
    s_fold_row_t *r = &s_fold_rows[at - ids];
    *r = (s_fold_row_t){
        .seen = true,
        .state = row->state,
        .attempt = row->attempt,
        .retries = row->retries,
        .failures = row->failures,
        .due_ms = row->due_ms,
        .result_size = row->result ? row->result_size : 0,
    };
    if (row->result && row->result_size <= sizeof r->result)
        memcpy(r->result, row->result, row->result_size);
}

/* A task's changes of state within one batch: a new state replaces the
   SET_DUE before it (one statement where there were two or three), never
   an op of another kind, and the row ends as the last change left it --
   due time included, which the final state writes too. */
static void
test_journal_fold(void **state)
{
    (void)state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "task"), 0);
    tq_broker_t *b = s_broker(dir);
    peer_t *child = s_child(b, "c1");
    child->credit = 8;
    task_t *x = s_task(b, "x"), *y = s_task(b, "y"), *z = s_task(b, "z");
    x->rec.retries = y->rec.retries = z->rec.retries = 3;
    tqb_task_move(b, x, TASK_WAITING, NULL);
    tqb_task_move(b, y, TASK_WAITING, NULL);
    tqb_task_move(b, z, TASK_WAITING, NULL);
    assert_int_equal(tqb_journal_open_ops(b), 3); /* three ADDs */
    /* z waits out a retry backoff, committed with it */
    z->rec.attempt++;
    tqb_task_move(b, z, TASK_HELD, &(task_move_t){.holder = child});
    z->rec.retries--;
    z->rec.failures++;
    tqb_task_move(b, z, TASK_RETRY,
                  &(task_move_t){.due_ms = b->now_ms + 3600 * 1000});
    assert_true(tqb_commit_flush(b));
    assert_int_equal(tqb_journal_open_ops(b), 0);

    /* x: dispatched and finished in one batch: one op */
    x->rec.attempt++;
    tqb_task_move(b, x, TASK_HELD, &(task_move_t){.holder = child});
    assert_int_equal(tqb_journal_open_ops(b), 1);
    zmq_msg_t value;
    zmq_msg_init_size(&value, 3);
    memcpy(zmq_msg_data(&value), "\xa2ok", 3);
    tqb_task_final(b, x, TASK_SUCCESS, TQ_OK, NULL, &value);
    zmq_msg_close(&value);
    assert_int_equal(tqb_journal_open_ops(b), 1);

    /* y: into RETRY replaces its SET_DUE, but its budget is an op of its
       own, which the next state does not jump */
    y->rec.attempt++;
    tqb_task_move(b, y, TASK_HELD, &(task_move_t){.holder = child});
    y->rec.retries--;
    y->rec.failures++;
    tqb_task_move(b, y, TASK_RETRY,
                  &(task_move_t){.due_ms = b->now_ms + 3600 * 1000});
    assert_int_equal(tqb_journal_open_ops(b), 3);
    tqb_task_move(b, y, TASK_WAITING, NULL);
    assert_int_equal(tqb_journal_open_ops(b), 4);

    /* z: out of its backoff, run and failed in one batch: one op, and the
       backoff's due time does not outlive it in the row */
    tqb_task_move(b, z, TASK_WAITING, NULL);
    z->rec.attempt++;
    tqb_task_move(b, z, TASK_HELD, &(task_move_t){.holder = child});
    tqb_task_final(b, z, TASK_FAILURE, TQ_ETASK, "boom", NULL);
    assert_int_equal(tqb_journal_open_ops(b), 5);
    assert_true(tqb_commit_flush(b));
    tq_broker_destroy(&b);

    char error[256];
    tq_store_t *store = tq_store_open(dir, TQ_SYNC_OS, error, sizeof error);
    assert_non_null(store);
    memset(s_fold_rows, 0, sizeof s_fold_rows);
    assert_int_equal(tq_store_load(store, s_fold_row, NULL), TQ_OK);
    tq_store_destroy(&store);
    s_fold_row_t *rx = &s_fold_rows[0], *ry = &s_fold_rows[1],
                 *rz = &s_fold_rows[2];
    assert_true(rx->seen && ry->seen && rz->seen);
    assert_int_equal(rx->state, TQ_STATE_SUCCESS);
    assert_int_equal(rx->attempt, 1);
    assert_int_equal(rx->result_size, 3);
    assert_memory_equal(rx->result, "\xa2ok", 3);
    assert_int_equal(ry->state, TQ_STATE_PENDING);
    assert_int_equal(ry->attempt, 1);
    assert_int_equal(ry->retries, 2);
    assert_int_equal(ry->failures, 1);
    assert_int_equal(ry->due_ms, 0);
    assert_int_equal(rz->state, TQ_STATE_FAILURE);
    assert_int_equal(rz->attempt, 2);
    assert_int_equal(rz->due_ms, 0);
    tq_harness_rmtree(dir);
}

/* A dead letter recovered from the store was not counted in this run's
   failures: retrying it takes nothing off them (they never wrap). */
static void
test_retry_recovered(void **state)
{
    (void)state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "task"), 0);
    tq_broker_t *b = s_broker(dir);
    peer_t *child = s_child(b, "c1");
    task_t *x = s_task(b, "x");
    tqb_task_move(b, x, TASK_WAITING, NULL);
    x->rec.attempt++;
    tqb_task_move(b, x, TASK_HELD, &(task_move_t){.holder = child});
    tqb_task_final(b, x, TASK_FAILURE, TQ_ETASK, "boom", NULL);
    assert_true(tqb_commit(b));
    tq_broker_destroy(&b);

    b = s_broker(dir);
    s_child(b, "c2"); /* a sender for the answer */
    x = tqb_task_find(b, tq_str("x"));
    assert_non_null(x);
    assert_int_equal(x->state, TASK_FAILURE);
    queue_t *q = x->lane->queue;
    assert_int_equal(q->failed, 0);
    tq_msg_t msg = {.command = TQ_CMD_RETRY, .id = tq_str("x")};
    tqb_on_retry(b, &msg, NULL);
    assert_int_equal(x->state, TASK_WAITING);
    assert_int_equal(q->failed, 0);
    assert_int_equal(b->counters.failed, 0);
    tq_broker_destroy(&b);
    tq_harness_rmtree(dir);
}

/* The id table finds every task as it grows and as tasks leave it. */
static void
test_id_table(void **state)
{
    (void)state;
    enum { N = 40000 };
    tq_broker_t *b = s_broker(NULL);
    uint32_t buckets = b->id_mask + 1;
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        tqb_task_move(b, s_task(b, id), TASK_WAITING, NULL);
    }
    assert_int_equal(b->task_count, N);
    assert_true(b->id_mask + 1 > buckets); /* it grew */
    /* small, it keeps a bucket a task at most (short chains) */
    assert_true(b->task_count <= b->id_mask + 1);
    assert_in_range(tqb_tasks_longest_chain(b), 1, 12);
    for (int i = 0; i < N; i += 2) {
        snprintf(id, sizeof id, "id-%d", i);
        task_t *t = tqb_task_find(b, tq_str(id));
        assert_non_null(t);
        assert_string_equal(tqb_task_id(t), id);
        tqb_task_final(b, t, TASK_CANCELLED, TQ_ECANCELLED, "test", NULL);
        tqb_task_forget(b, t);
    }
    assert_int_equal(b->task_count, N / 2);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        task_t *t = tqb_task_find(b, tq_str(id));
        if (i % 2)
            assert_true(t && strcmp(tqb_task_id(t), id) == 0);
        else
            assert_null(t);
    }
    /* an id that is a prefix of others is found as itself, and a prefix
       of an id is not that id */
    assert_string_equal(tqb_task_id(tqb_task_find(b, tq_str("id-1"))), "id-1");
    assert_null(tqb_task_find(b, tq_str("id-")));
    tq_broker_destroy(&b);
}

/* A binary id without its text: tqb_out_id gives a binary-id peer the
   task's 16 bytes (a text id, or a text peer, the text), and what such a
   TASK decodes to finds its task by the bytes (tqb_task_is_msg,
   tqb_task_find_bin) among many, never a text twin. */
static void
test_id_bytes(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    enum { N = 2000 };
    char id[40];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "%016x%016x", i * 7919u, i);
        tqb_task_move(b, s_task(b, id), TASK_WAITING, NULL);
    }
    task_t *text = s_task(b, "0000000000000000000000000000000G");
    assert_false(text->id_bin);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t out, in;
    for (int i = 0; i < N; i += 7) {
        snprintf(id, sizeof id, "%016x%016x", i * 7919u, i);
        task_t *t = tqb_task_find(b, tq_str(id));
        assert_non_null(t);
        memset(&out, 0, sizeof out);
        out.command = TQ_CMD_TASK;
        out.task = tq_str("tq.echo");
        out.attempt = 1;
        tqb_out_id(&out, t, true);
        assert_ptr_equal(out.id_bytes, (const uint8_t *)t->rec.id);
        assert_null(out.id.ptr);
        assert_int_equal(tq_proto_encode(&out, &buf, NULL), TQ_OK);
        assert_int_equal(tq_proto_decode(&in, buf.data, buf.size, NULL), TQ_OK);
        assert_non_null(in.id_bytes);
        assert_true(tq_str_eq(in.id, id));
        assert_true(tqb_task_is_msg(t, &in));
        assert_false(tqb_task_is_msg(text, &in));
        assert_false(tqb_task_is_msg(NULL, &in));
        assert_ptr_equal(tqb_task_find_bin(b, in.id_bytes), t);
        /* a peer without binary ids gets the text */
        tqb_out_id(&out, t, false);
        assert_null(out.id_bytes);
        assert_true(tq_str_eq(out.id, id));
    }
    /* a text id goes as text even to a binary-id peer */
    tqb_out_id(&out, text, true);
    assert_null(out.id_bytes);
    assert_true(tq_str_eq(out.id, "0000000000000000000000000000000G"));
    /* a decoded str id is compared as text */
    memset(&in, 0, sizeof in);
    in.id = tq_str("0000000000000000000000000000000G");
    assert_true(tqb_task_is_msg(text, &in));
    const uint8_t absent[16] = {0xff, 0xee};
    assert_null(tqb_task_find_bin(b, absent));
    msgpack_sbuffer_destroy(&buf);
    tq_broker_destroy(&b);
}

/* Sets the sender's id (frames.identity) to size bytes of data. */
static void
s_sender(tq_broker_t *self, const uint8_t *data, size_t size)
{
    zmq_msg_close(&self->frames.identity);
    zmq_msg_init_size(&self->frames.identity, size);
    memcpy(zmq_msg_data(&self->frames.identity), data, size);
    tqb_received(self);
}

/* A distinct id for i: sizes 2..255, ids of one size differing in a
   byte or two, some ids prefixes of others. */
static size_t
s_peer_ident(int i, uint8_t *data)
{
    size_t size = 2 + (size_t)(i * 37) % 254;
    memset(data, 0x5a, size);
    data[0] = (uint8_t)(i >> 8);
    data[1] = (uint8_t)i;
    return size;
}

/* libzmq's own routing ids (5 bytes: a zero, then a counter): tqb_peer
   finds each of many in a row, and none one byte off in any position;
   tqb_ident_bytes_eq tells every such byte apart. */
static void
test_peer_index_zmq_ids(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    enum { N = 2000 };
    static peer_t *peers[N];
    uint8_t data[5];
    for (int i = 0; i < N; i++) {
        data[0] = 0;
        uint32_t counter = 0x6b8b4567u + (uint32_t)i;
        memcpy(data + 1, &counter, 4);
        s_sender(b, data, 5);
        assert_null(tqb_peer(b));
        peers[i] = tqb_peer_new(b, PEER_CHILD);
    }
    for (int i = 0; i < N; i++) {
        data[0] = 0;
        uint32_t counter = 0x6b8b4567u + (uint32_t)i;
        memcpy(data + 1, &counter, 4);
        s_sender(b, data, 5);
        assert_ptr_equal(tqb_peer(b), peers[i]);
        uint8_t other[5];
        for (int pos = 0; pos < 5; pos++) {
            memcpy(other, data, 5);
            other[pos] ^= 0x80;
            assert_true(tqb_ident_bytes_eq(data, data, 5));
            assert_false(tqb_ident_bytes_eq(data, other, 5));
            assert_false(tqb_ident_bytes_eq(other, data, 5));
            /* found only when it is another id of the row: that one */
            uint32_t c;
            memcpy(&c, other + 1, 4);
            c -= 0x6b8b4567u;
            s_sender(b, other, 5);
            if (other[0] == 0 && c < N)
                assert_ptr_equal(tqb_peer(b), peers[c]);
            else
                assert_null(tqb_peer(b));
        }
        s_sender(b, data, 4); /* a prefix */
        assert_null(tqb_peer(b));
    }
    tq_broker_destroy(&b);
}

/* tqb_peer finds the sender by its id's bytes among many peers, through
   the index's growth and removals (backward shift), and no id that is
   not a peer's: a prefix, one longer, one byte off. */
static void
test_peer_index(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    enum { N = 700 };
    static peer_t *peers[N];
    uint8_t data[256];
    for (int i = 0; i < N; i++) {
        size_t size = s_peer_ident(i, data);
        s_sender(b, data, size);
        assert_null(tqb_peer(b));
        peers[i] = tqb_peer_new(b, i % 5 ? PEER_CHILD : PEER_SUPERVISOR);
        assert_ptr_equal(tqb_peer(b), peers[i]);
    }
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            size_t size = s_peer_ident(i, data);
            s_sender(b, data, size);
            assert_ptr_equal(tqb_peer(b), peers[i]);
            if (size > 1) {
                s_sender(b, data, size - 1); /* a prefix */
                peer_t *p = tqb_peer(b);
                assert_true(p == NULL || p->ident.size == size - 1);
            }
            data[size / 2] ^= 0x80; /* one byte off */
            s_sender(b, data, size);
            assert_null(tqb_peer(b));
        }
        /* every third gone (removal moves others back in the index) */
        for (int i = round; i < N; i += 3) {
            if (!peers[i])
                continue;
            tqb_peer_remove(b, peers[i], false, 0, "test");
            peers[i] = NULL;
            size_t size = s_peer_ident(i, data);
            s_sender(b, data, size);
            assert_null(tqb_peer(b));
        }
        for (int i = 0; i < N; i++) {
            size_t size = s_peer_ident(i, data);
            s_sender(b, data, size);
            assert_ptr_equal(tqb_peer(b), peers[i]);
        }
    }
    /* the gone come back as new peers */
    for (int i = 0; i < N; i++) {
        if (peers[i])
            continue;
        size_t size = s_peer_ident(i, data);
        s_sender(b, data, size);
        peers[i] = tqb_peer_new(b, PEER_CHILD);
    }
    for (int i = 0; i < N; i++) {
        size_t size = s_peer_ident(i, data);
        s_sender(b, data, size);
        assert_ptr_equal(tqb_peer(b), peers[i]);
    }
    tq_broker_destroy(&b);
}

/* Client-made ids (32 lowercase hex digits) are kept as 16 bytes and read
   back as the same text; any other id stays text, and the two kinds never
   meet: an uppercase twin or a 31-digit prefix is another id. A small
   payload after a binary id is intact. */
static void
test_id_binary(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    const char *hex = "0123456789abcdef00ff10e0c0d0b0a9";
    const char *upper = "0123456789ABCDEF00FF10E0C0D0B0A9";
    task_t *t = s_task(b, hex);
    assert_true(t->id_bin);
    assert_string_equal(tqb_task_id(t), hex);
    assert_ptr_equal(tqb_task_find(b, tq_str(hex)), t);
    assert_null(tqb_task_find(b, tq_str(upper)));
    assert_null(tqb_task_find(b, (tq_str_t){hex, 31}));
    task_t *u = s_task(b, upper);
    assert_false(u->id_bin);
    assert_ptr_equal(tqb_task_find(b, tq_str(upper)), u);
    assert_ptr_equal(tqb_task_find(b, tq_str(hex)), t);
    zmq_msg_t msg;
    assert_int_equal(tqb_task_payload(b, t, &msg, NULL), 0);
    assert_int_equal(zmq_msg_size(&msg), 1);
    assert_int_equal(*(uint8_t *)zmq_msg_data(&msg), 0x90);
    zmq_msg_close(&msg);
    /* renderings stay valid while a few more are made */
    const char *first = tqb_task_id(t);
    for (int i = 0; i < 6; i++)
        tqb_task_id(t);
    assert_string_equal(first, hex);
    /* many of them, through the table's growth and removals */
    enum { N = 3000 };
    char id[40];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "%016x%016x", i * 7919u, i);
        tqb_task_move(b, s_task(b, id), TASK_WAITING, NULL);
    }
    for (int i = 0; i < N; i += 3) {
        snprintf(id, sizeof id, "%016x%016x", i * 7919u, i);
        task_t *f = tqb_task_find(b, tq_str(id));
        assert_non_null(f);
        assert_string_equal(tqb_task_id(f), id);
        tqb_task_final(b, f, TASK_CANCELLED, TQ_ECANCELLED, "test", NULL);
        tqb_task_forget(b, f);
    }
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "%016x%016x", i * 7919u, i);
        task_t *f = tqb_task_find(b, tq_str(id));
        if (i % 3)
            assert_true(f && strcmp(tqb_task_id(f), id) == 0);
        else
            assert_null(f);
    }
    tq_broker_destroy(&b);
}

/* The id of the i-th task of a form in test_id_spread. */
static void
s_spread_id(char id[64], int form, unsigned i)
{
    switch (form) {
    case 0: /* a counter first */
        snprintf(id, 64, "%08x000000000000000000000000", i);
        break;
    case 1: /* in the second half */
        snprintf(id, 64, "0000000000000000%08x00000000", i);
        break;
    case 2: /* last */
        snprintf(id, 64, "abcdefabcdefabcdefabcdef%08x", i);
        break;
    case 3: /* two bytes far apart */
        snprintf(id, 64, "%02x%030x", i & 0xff, i >> 8);
        break;
    default: /* a counter in steps of 2^14 (the smallest table's size) */
        snprintf(id, 64, "abcdefabcdefabcd%016" PRIx64, (uint64_t)i << 14);
        break;
    }
}

/* Binary ids spread over the table whatever part of them differs: ids
   alike but for a counter in their first, middle or last bytes keep the
   chains short (a hash of part of the id, or one whose low bits ignore
   some bytes, piles them into a few buckets), and each is found. */
static void
test_id_spread(void **state)
{
    (void)state;
    enum { N = 4096 };
    for (int form = 0; form < 5; form++) {
        tq_broker_t *b = s_broker(NULL);
        char id[64];
        for (unsigned i = 0; i < N; i++) {
            s_spread_id(id, form, i);
            task_t *t = s_task(b, id);
            assert_true(t->id_bin);
            tqb_task_move(b, t, TASK_WAITING, NULL);
        }
        /* about 2 a bucket on average: random spread keeps the longest
           chain within a dozen */
        assert_in_range(tqb_tasks_longest_chain(b), 1, 16);
        for (unsigned i = 0; i < N; i++) {
            s_spread_id(id, form, i);
            task_t *t = tqb_task_find(b, tq_str(id));
            assert_non_null(t);
            assert_string_equal(tqb_task_id(t), id);
        }
        tq_broker_destroy(&b);
    }
}

/* A client-made id: its prefix, then its counter (tq_client.c). */
static void
s_client_id(char id[64], uint64_t prefix, uint64_t counter)
{
    snprintf(id, 64, "%016" PRIx64 "%016" PRIx64, prefix, counter);
}

/* The prefix of the c-th of many clients (random-looking, fixed). */
static uint64_t
s_prefix(unsigned c)
{
    uint64_t x = (c + 1) * 0x9e3779b97f4a7c15ull;
    x = (x ^ x >> 30) * 0xbf58476d1ce4e5b9ull;
    return x ^ x >> 31;
}

/* Makes the tasks of ids [from, to) of a client, as waiting. */
static void
s_client_tasks(tq_broker_t *b, uint64_t prefix, uint64_t from, uint64_t to)
{
    char id[64];
    for (uint64_t n = from; n != to; n++) {
        s_client_id(id, prefix, n);
        task_t *t = s_task(b, id);
        assert_true(t->id_bin);
        tqb_task_move(b, t, TASK_WAITING, NULL);
    }
}

/* Whether every id of [from, to) of a client finds its own task. */
static void
s_client_found(tq_broker_t *b, uint64_t prefix, uint64_t from, uint64_t to)
{
    char id[64];
    for (uint64_t n = from; n != to; n++) {
        s_client_id(id, prefix, n);
        task_t *t = tqb_task_find(b, tq_str(id));
        assert_non_null(t);
        assert_string_equal(tqb_task_id(t), id);
    }
}

/* A client's consecutive ids take consecutive buckets: fewer of them
   than buckets never share one (a well-mixed hash puts several ids in
   some bucket: the longest chain of 16,000 random ids in 16Ki buckets is
   about 7), also across the counter's 32-bit and 64-bit wraps and
   through the table's growth; removed ones are gone, the others found. */
static void
test_id_client_runs(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    uint32_t buckets = b->id_mask + 1;
    uint64_t prefix = s_prefix(7);
    s_client_tasks(b, prefix, 1000, 1000 + buckets - 384);
    assert_int_equal(tqb_tasks_longest_chain(b), 1);
    assert_int_equal(b->id_mask + 1, buckets);
    s_client_found(b, prefix, 1000, 1000 + buckets - 384);
    tq_broker_destroy(&b);

    /* across the counter's wraps: a 32-bit one within a run of ids, a
       64-bit one (to 0) between runs */
    const uint64_t wraps[] = {0xffffffffull - 3000, UINT64_MAX - 3000};
    for (int w = 0; w < 2; w++) {
        b = s_broker(NULL);
        uint64_t from = wraps[w], to = wraps[w] + 6000;
        s_client_tasks(b, prefix, from, to);
        assert_in_range(tqb_tasks_longest_chain(b), 1, 2);
        s_client_found(b, prefix, from, to);
        char id[64];
        for (uint64_t n = from; n != to; n += 2) {
            s_client_id(id, prefix, n);
            task_t *t = tqb_task_find(b, tq_str(id));
            tqb_task_final(b, t, TASK_CANCELLED, TQ_ECANCELLED, "test", NULL);
            tqb_task_forget(b, t);
        }
        for (uint64_t n = from; n != to; n++) {
            s_client_id(id, prefix, n);
            task_t *t = tqb_task_find(b, tq_str(id));
            if ((n - from) % 2)
                assert_true(t && strcmp(tqb_task_id(t), id) == 0);
            else
                assert_null(t);
        }
        tq_broker_destroy(&b);
    }

    /* the table grows: the ids still take a bucket each but where two
       runs of 65,536 ids meet */
    b = s_broker(NULL);
    enum { N = 100000 };
    s_client_tasks(b, prefix, 5, 5 + N);
    assert_true(b->id_mask + 1 > buckets);
    assert_in_range(tqb_tasks_longest_chain(b), 1, 2);
    s_client_found(b, prefix, 5, 5 + N);
    tq_broker_destroy(&b);
}

/* Many clients with the same counters (each started at 0) spread over
   the table by their prefixes: a hash of the counter alone would chain
   every client's n-th ids together (64 long). Every id, and a text id
   beside them (a hex id of 31 or 33 digits, a user's), is found as
   itself. */
static void
test_id_clients(void **state)
{
    (void)state;
    enum { CLIENTS = 64, EACH = 256 };
    tq_broker_t *b = s_broker(NULL);
    for (unsigned c = 0; c < CLIENTS; c++)
        s_client_tasks(b, s_prefix(c), 0, EACH);
    assert_int_equal(b->task_count, CLIENTS * EACH);
    /* about one a bucket, runs at random offsets: a few at most */
    assert_in_range(tqb_tasks_longest_chain(b), 1, 8);
    for (unsigned c = 0; c < CLIENTS; c++)
        s_client_found(b, s_prefix(c), 0, EACH);
    char id[64];
    s_client_id(id, s_prefix(3), 17);
    const char *texts[] = {"0123456789abcdef0123456789abcde",
                           "0123456789abcdef0123456789abcdef0", id + 1,
                           "user-17"};
    for (int i = 0; i < 4; i++) {
        task_t *t = s_task(b, texts[i]);
        assert_false(t->id_bin);
        assert_ptr_equal(tqb_task_find(b, tq_str(texts[i])), t);
    }
    assert_true(tqb_task_find(b, tq_str(id))->id_bin);
    tq_broker_destroy(&b);
}

/* Names are interned once: asked again (from slices of other text, in
   any order, more names than tqb_intern remembers, names that are
   prefixes of others) each gives the same pointer, distinct names
   distinct ones; tqb_queue gives each name its own queue. */
static void
test_intern(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    static const char *const names[] = {
        "a", "ab", "abc", "b", "default", "default2", "q", "t", "x.y", "ab:c"};
    enum { K = sizeof names / sizeof *names };
    const char *first[K];
    queue_t *queues[K];
    for (int i = 0; i < K; i++) {
        first[i] = tqb_intern(b, tq_str(names[i]));
        assert_string_equal(first[i], names[i]);
        queues[i] = tqb_queue(b, tq_str(names[i]));
        for (int j = 0; j < i; j++) {
            assert_ptr_not_equal(first[i], first[j]);
            assert_ptr_not_equal(queues[i], queues[j]);
        }
    }
    char text[64];
    for (int round = 0; round < 200; round++) {
        int i = (round * 7 + round / 3) % K;
        /* a slice of a longer text, not NUL-ended where it stops */
        snprintf(text, sizeof text, "%sZZZ", names[i]);
        tq_str_t slice = {text, (uint32_t)strlen(names[i])};
        assert_ptr_equal(tqb_intern(b, slice), first[i]);
        assert_ptr_equal(tqb_queue(b, slice), queues[i]);
        assert_ptr_equal(queues[i]->name, first[i]);
        /* the same text one byte longer is another name */
        tq_str_t longer = {text, slice.len + 1};
        assert_string_not_equal(tqb_intern(b, longer), names[i]);
    }
    tq_broker_destroy(&b);
}

/* tqb_lane_of gives the lane tqb_lane gives for the same names, the one
   it remembers only when both names are the same: never the last lane
   for a name that differs in its queue, its task, a prefix of either, or
   the same text one byte longer (slices of other text, not NUL-ended). */
static void
test_lane_memo(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    static const char *const pairs[][2] = {
        {"q", "t"},  {"q", "t2"}, {"q2", "t"}, {"q", "t"},   {"qq", "t"},
        {"q", "tt"}, {"q", "t"},  {"t", "q"},  {"q2", "t2"}, {"q", "t"}};
    enum { K = sizeof pairs / sizeof *pairs };
    char queue[64], task[64];
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < K; i++) {
            snprintf(queue, sizeof queue, "%sZZZ", pairs[i][0]);
            snprintf(task, sizeof task, "%sZZZ", pairs[i][1]);
            tq_str_t q = {queue, (uint32_t)strlen(pairs[i][0])};
            tq_str_t t = {task, (uint32_t)strlen(pairs[i][1])};
            lane_t *lane = tqb_lane_of(b, q, t);
            assert_ptr_equal(lane, tqb_lane(tqb_queue(b, q), tqb_intern(b, t)));
            assert_string_equal(lane->queue->name, pairs[i][0]);
            assert_string_equal(lane->task, pairs[i][1]);
            /* asked again at once: the remembered one */
            assert_ptr_equal(tqb_lane_of(b, q, t), lane);
            /* one byte longer, either name: another lane */
            tq_str_t q1 = {queue, q.len + 1}, t1 = {task, t.len + 1};
            assert_ptr_not_equal(tqb_lane_of(b, q1, t), lane);
            assert_ptr_not_equal(tqb_lane_of(b, q, t1), lane);
            assert_int_equal(strlen(tqb_lane_of(b, q1, t)->queue->name),
                             q.len + 1);
            assert_int_equal(strlen(tqb_lane_of(b, q, t1)->task), t.len + 1);
        }
    tq_broker_destroy(&b);
}

/* lane->busy has bit p exactly while fifo[p] holds tasks, through moves
   in and out of every priority, at the front and the back. */
static void
s_check_busy(const lane_t *lane)
{
    for (int p = 0; p < TQB_PRIORITIES; p++)
        assert_int_equal((lane->busy >> p) & 1, lane->fifo[p].head != NULL);
    assert_int_equal(lane->busy >> TQB_PRIORITIES, 0);
}

static void
test_lane_busy(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    peer_t *child = s_child(b, "c1");
    child->credit = 100;
    enum { N = 40 };
    task_t *tasks[N];
    char id[16];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "b%d", i);
        tasks[i] = s_task(b, id);
        tasks[i]->rec.priority = (uint8_t)((i * 7) % TQB_PRIORITIES);
        tqb_task_move(b, tasks[i], TASK_WAITING,
                      &(task_move_t){.front = i % 3 == 0});
        s_check_busy(tasks[i]->lane);
    }
    for (int round = 0; round < 2; round++)
        for (int i = round; i < N; i += 2) {
            tqb_task_move(b, tasks[i], TASK_HELD,
                          &(task_move_t){.holder = child});
            s_check_busy(tasks[i]->lane);
        }
    assert_int_equal(tasks[0]->lane->busy, 0);
    tqb_task_move(b, tasks[5], TASK_WAITING, &(task_move_t){.front = true});
    assert_int_equal(tasks[0]->lane->busy, 1u << tasks[5]->rec.priority);
    tq_broker_destroy(&b);
}

/* A binary id renders as the same text tqb_hex gives: every byte value in
   every position. */
static void
test_id_render(void **state)
{
    (void)state;
    uint8_t bin[TQB_ID_BIN];
    char got[2 * TQB_ID_BIN + 1], want[2 * TQB_ID_BIN + 1];
    for (int pos = 0; pos < TQB_ID_BIN; pos++)
        for (int v = 0; v < 256; v++) {
            for (int i = 0; i < TQB_ID_BIN; i++)
                bin[i] = (uint8_t)(i * 37 + v * 11);
            bin[pos] = (uint8_t)v;
            memset(got, 'x', sizeof got);
            tqb_id_render(got, bin);
            tqb_hex(want, bin, TQB_ID_BIN);
            assert_string_equal(got, want);
            uint8_t back[TQB_ID_BIN];
            assert_true(tq_proto_id_parse(got, 2 * TQB_ID_BIN, back));
            assert_memory_equal(back, bin, TQB_ID_BIN);
        }
}

/* Task records come from slabs per size: records of many sizes, freed in
   an interleaved order and made again, keep their ids and payloads (no
   two share memory). */
static void
test_slabs(void **state)
{
    (void)state;
    enum { N = 4000 };
    tq_broker_t *b = s_broker(NULL);
    lane_t *lane =
        tqb_lane(tqb_queue(b, tq_str("q")), tqb_intern(b, tq_str("t")));
    static task_t *tasks[N];
    char id[40];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            if (round && i % 2)
                continue; /* kept from the first round */
            snprintf(id, sizeof id, "slab-%d-%d", round, i);
            zmq_msg_t args;
            zmq_msg_init_size(&args, (size_t)(i % 300));
            memset(zmq_msg_data(&args), i & 0xff, (size_t)(i % 300));
            tasks[i] = tqb_task_new(b, id, lane, &args);
            zmq_msg_close(&args);
        }
        for (int i = 0; i < N; i++) {
            snprintf(id, sizeof id, "slab-%d-%d", i % 2 ? 0 : round, i);
            assert_string_equal(tqb_task_id(tasks[i]), id);
            assert_int_equal(tqb_task_payload_size(tasks[i]), i % 300);
            const uint8_t *data = tqb_task_payload_data(tasks[i]);
            for (int k = 0; k < i % 300; k++)
                assert_int_equal(data[k], i & 0xff);
        }
        if (round == 0)
            for (int i = 0; i < N; i += 2) {
                tqb_task_move(b, tasks[i], TASK_WAITING, NULL);
                tqb_task_final(b, tasks[i], TASK_CANCELLED, TQ_ECANCELLED,
                               "test", NULL);
                tqb_task_forget(b, tasks[i]);
            }
    }
    assert_int_equal(b->task_count, N);
    tq_broker_destroy(&b);
}

/* A task's start is kept as an offset from its submission: exact to the
   millisecond for 24 days, to the second after. */
static void
test_started(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    b->now_ms = 5000;
    task_t *t = s_task(b, "s");
    assert_int_equal(tqb_task_started_ms(t), 0);
    tqb_task_set_started(t, 5000);
    assert_int_equal(tqb_task_started_ms(t), 5000);
    tqb_task_set_started(t, 5000 + 1234567);
    assert_int_equal(tqb_task_started_ms(t), 5000 + 1234567);
    int64_t later = 5000 + 40LL * 24 * 3600 * 1000 + 999; /* 40 days on */
    tqb_task_set_started(t, later);
    assert_true(tqb_task_started_ms(t) <= later &&
                tqb_task_started_ms(t) > later - 1000);
    tq_broker_destroy(&b);
}

/* The submitter is told once: a GET wait=true of the submitter itself adds
   no waiter, another client's does; with ZeroMQ's own routing ids (kept in
   4 bytes) and with any other (kept beside the task). */
static void
test_submitter(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    const uint8_t zmq_id[5] = {0, 1, 2, 3, 4};
    const uint8_t long_id[12] = "client-12345";
    ident_t a = {0}, other = {0};
    tqb_ident_set(&other, "someone", 7);
    for (int k = 0; k < 2; k++) {
        tqb_ident_set(&a, k ? long_id : zmq_id, k ? 12 : 5);
        task_t *t = s_task(b, k ? "long" : "zmq");
        tqb_task_set_client(b, t, &a);
        assert_int_equal(t->client_at, k ? CLIENT_OTHER : CLIENT_ZMQ);
        tqb_task_add_waiter(b, t, &a);
        assert_false(t->waited);
        tqb_task_add_waiter(b, t, &other);
        assert_true(t->waited);
        tqb_task_add_waiter(b, t, &other);
        tqb_ident_clear(&a);
    }
    tqb_ident_clear(&other);
    tq_broker_destroy(&b); /* frees the side tables: no leak */
}

/* Without a store a small payload lives in the task's own allocation and
   is counted in memory until it gives way to the value. */
static void
test_payload_inline(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(NULL);
    peer_t *child = s_child(b, "c1");
    task_t *t = s_task(b, "p");
    assert_int_equal(t->payload_at, PAYLOAD_INLINE);
    assert_int_equal(b->memory, 1);
    zmq_msg_t msg;
    assert_int_equal(tqb_task_payload(b, t, &msg, NULL), 0);
    assert_int_equal(zmq_msg_size(&msg), 1);
    assert_int_equal(*(uint8_t *)zmq_msg_data(&msg), 0x90);
    zmq_msg_close(&msg);
    tqb_task_move(b, t, TASK_WAITING, NULL);
    tqb_task_move(b, t, TASK_HELD, &(task_move_t){.holder = child});
    zmq_msg_t value;
    zmq_msg_init_size(&value, 2000); /* kept as the message, not copied */
    memset(zmq_msg_data(&value), 0xc0, 2000);
    tqb_task_final(b, t, TASK_SUCCESS, TQ_OK, NULL, &value);
    zmq_msg_close(&value);
    assert_int_equal(t->payload_at, PAYLOAD_MSG);
    assert_int_equal(b->memory, 2000);
    tqb_task_forget(b, t);
    assert_int_equal(b->memory, 0);
    tq_broker_destroy(&b);
}

/* A result no larger than the arguments it replaces (an echo's) takes
   their place in the task's own allocation, intact, the task's id and
   neighbours untouched; a larger one, or any with a store (a result may
   leave memory there), is kept apart. */
static void
test_result_inline(void **state)
{
    (void)state;
    for (int store = 0; store < 2; store++) {
        char dir[256] = "";
        if (store)
            assert_int_equal(
                tq_harness_tempdir(dir, sizeof dir, "result-inline"), 0);
        tq_broker_t *b = s_broker(store ? dir : NULL);
        peer_t *child = s_child(b, "c1");
        lane_t *lane =
            tqb_lane(tqb_queue(b, tq_str("q")), tqb_intern(b, tq_str("t")));
        enum { N = 40 };
        task_t *tasks[N];
        char id[40];
        for (int i = 0; i < N; i++) {
            /* binary ids and text ones; args of 20 bytes */
            snprintf(id, sizeof id, i % 2 ? "%032x" : "text-%d", i);
            zmq_msg_t args;
            zmq_msg_init_size(&args, 20);
            memset(zmq_msg_data(&args), 0xa0, 20);
            tasks[i] = tqb_task_new(b, id, lane, &args);
            zmq_msg_close(&args);
            tasks[i]->rec.seq = ++b->seq;
            tqb_task_move(b, tasks[i], TASK_WAITING, NULL);
            tqb_task_move(b, tasks[i], TASK_HELD,
                          &(task_move_t){.holder = child});
        }
        for (int i = 0; i < N; i++) {
            /* the same size, smaller, or larger than the arguments */
            size_t size = i % 3 == 0 ? 20 : i % 3 == 1 ? 5 : 300;
            zmq_msg_t value;
            zmq_msg_init_size(&value, size);
            memset(zmq_msg_data(&value), i, size);
            tqb_task_final(b, tasks[i], TASK_SUCCESS, TQ_OK, NULL, &value);
            zmq_msg_close(&value);
            if (store || size == 300)
                assert_int_not_equal(tasks[i]->payload_at, PAYLOAD_INLINE);
            else
                assert_int_equal(tasks[i]->payload_at, PAYLOAD_INLINE);
        }
        for (int i = 0; i < N; i++) {
            snprintf(id, sizeof id, i % 2 ? "%032x" : "text-%d", i);
            assert_ptr_equal(tqb_task_find(b, tq_str(id)), tasks[i]);
            assert_string_equal(tqb_task_id(tasks[i]), id);
            size_t size = i % 3 == 0 ? 20 : i % 3 == 1 ? 5 : 300;
            zmq_msg_t got;
            assert_int_equal(tqb_task_payload(b, tasks[i], &got, NULL), 0);
            assert_int_equal(zmq_msg_size(&got), size);
            for (size_t k = 0; k < size; k++)
                assert_int_equal(((uint8_t *)zmq_msg_data(&got))[k], i);
            zmq_msg_close(&got);
        }
        tq_broker_destroy(&b);
        if (store)
            tq_harness_rmtree(dir);
    }
}

/* With a store, arguments beyond 1 MiB held leave memory at the commit
   and are read back with their checksum checked: damaged on disk, the
   task's arguments are refused (TQ_ECORRUPT), never handed out. */
static void
test_payload_paged(void **state)
{
    (void)state;
    enum { N = 40, SIZE = 512 * 1024 };
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "task"), 0);
    tq_broker_t *b = s_broker(dir);
    lane_t *lane =
        tqb_lane(tqb_queue(b, tq_str("q")), tqb_intern(b, tq_str("t")));
    task_t *tasks[N];
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "big-%d", i);
        zmq_msg_t args;
        zmq_msg_init_size(&args, SIZE);
        memset(zmq_msg_data(&args), i, SIZE);
        tasks[i] = tqb_task_new(b, id, lane, &args);
        zmq_msg_close(&args);
        tasks[i]->rec.seq = ++b->seq;
        tqb_task_move(b, tasks[i], TASK_WAITING, NULL);
    }
    assert_int_equal(b->memory, (uint64_t)N * SIZE); /* until committed */
    /* the commit thread's batch done, as the loop would wait for it */
    assert_true(tqb_commit_flush(b));
    assert_true(b->memory <= (1u << 20) + SIZE);
    assert_int_equal(tasks[0]->payload_at, PAYLOAD_MSG);
    assert_int_equal(tasks[N - 1]->payload_at, PAYLOAD_STORED);
    for (int i = 0; i < N; i++) {
        zmq_msg_t msg;
        assert_int_equal(tqb_task_payload(b, tasks[i], &msg, NULL), 0);
        assert_int_equal(zmq_msg_size(&msg), SIZE);
        const uint8_t *p = zmq_msg_data(&msg);
        assert_true(p[0] == (uint8_t)i && p[SIZE - 1] == (uint8_t)i);
        zmq_msg_close(&msg);
    }
    assert_true(b->paged_in > 0);

    /* damage the last one on disk, as another process would */
    char path[512];
    snprintf(path, sizeof path, "%s/tq.db", dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE tasks SET args = X'00'"
                                  " WHERE id = 'big-39'",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    zmq_msg_t msg;
    const char *why = NULL;
    assert_int_equal(tqb_task_payload(b, tasks[N - 1], &msg, &why),
                     TQ_ECORRUPT);
    assert_non_null(why);
    assert_int_equal(zmq_msg_size(&msg), 0);
    zmq_msg_close(&msg);
    tq_broker_destroy(&b);
    tq_harness_rmtree(dir);
}

/* A burst (thousands of tasks and acknowledgements waiting for one
   commit) does not keep its bookkeeping: once committed, the list of
   tasks to page out and the queue of acknowledgements are given back,
   and every task's arguments are either held (status memory) or counted
   paged out (status store.paged_out). */
static void
test_page_out_burst(void **state)
{
    (void)state;
    enum { N = 8000, SIZE = 300 };
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "task"), 0);
    tq_broker_t *b = s_broker(dir);
    lane_t *lane =
        tqb_lane(tqb_queue(b, tq_str("q")), tqb_intern(b, tq_str("t")));
    ident_t to = {0};
    tqb_ident_set(&to, "\0abcd", 5); /* nobody: its sends are dropped */
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "b-%d", i);
        zmq_msg_t args;
        zmq_msg_init_size(&args, SIZE);
        memset(zmq_msg_data(&args), i, SIZE);
        task_t *t = tqb_task_new(b, id, lane, &args);
        zmq_msg_close(&args);
        t->rec.seq = ++b->seq;
        tqb_task_move(b, t, TASK_WAITING, NULL);
        tqb_ack(b, tq_str(id), &to, TQ_CMD_SUBMITTED, 0);
    }
    /* beyond 1 MiB held, listed to leave memory at the commit */
    assert_true(b->page_out_count > 4096);
    assert_int_equal(b->ack_count, N);
    assert_int_equal(b->paged_out, 0);
    assert_true(tqb_commit_flush(b));
    assert_int_equal(b->page_out_count, 0);
    assert_int_equal(b->page_out_cap, 0);
    assert_int_equal(b->ack_count, 0);
    assert_int_equal(b->ack_cap, 0);
    assert_true(b->paged_out > 4096);
    assert_int_equal(b->paged_out * SIZE + b->memory, (uint64_t)N * SIZE);
    /* a paged out task read back, then gone: no longer counted */
    task_t *t = tqb_task_find(b, tq_str("b-7999"));
    assert_non_null(t);
    assert_int_equal(t->payload_at, PAYLOAD_STORED);
    zmq_msg_t msg;
    assert_int_equal(tqb_task_payload(b, t, &msg, NULL), 0);
    assert_int_equal(zmq_msg_size(&msg), SIZE);
    zmq_msg_close(&msg);
    uint64_t paged_out = b->paged_out;
    tqb_task_forget(b, t);
    assert_int_equal(b->paged_out, paged_out - 1);
    tqb_ident_clear(&to);
    tq_broker_destroy(&b);
    tq_harness_rmtree(dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_id_table),
        cmocka_unit_test(test_id_binary),
        cmocka_unit_test(test_id_bytes),
        cmocka_unit_test(test_peer_index),
        cmocka_unit_test(test_peer_index_zmq_ids),
        cmocka_unit_test(test_id_spread),
        cmocka_unit_test(test_id_client_runs),
        cmocka_unit_test(test_id_clients),
        cmocka_unit_test(test_intern),
        cmocka_unit_test(test_lane_memo),
        cmocka_unit_test(test_lane_busy),
        cmocka_unit_test(test_id_render),
        cmocka_unit_test(test_slabs),
        cmocka_unit_test(test_started),
        cmocka_unit_test(test_submitter),
        cmocka_unit_test(test_payload_inline),
        cmocka_unit_test(test_result_inline),
        cmocka_unit_test(test_payload_paged),
        cmocka_unit_test(test_page_out_burst),
        cmocka_unit_test(test_containers),
        cmocka_unit_test(test_journal),
        cmocka_unit_test(test_retry_lost),
        cmocka_unit_test(test_retry_journal),
        cmocka_unit_test(test_journal_fold),
        cmocka_unit_test(test_retry_recovered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
