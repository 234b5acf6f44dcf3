/* test_dispatch.c - dispatch, stealing and the unreachable-child check of
   the broker (broker/tq_dispatch.c) with many children connected, white
   box: they still give tasks in priority and submission order and ask
   for the right task, an unreachable child still goes at its time, and
   the children they look at (tq_broker_t.visits) are the ones that could
   take something, never the 1,000 idle children of another queue. What
   a child receives is read on a real DEALER, in order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tq_broker_core.h"
#include "tq_harness.h"
#include "tq_wire.h"

#define S_WAIT_MS 10000 /* any one message, bounded */
#define S_IDLE 1000 /* idle children of another queue */
/* children one pass may look at in these tests: the few of the queue
   with tasks, and the holders; far below S_IDLE */
#define S_FEW 16

static tq_broker_t *
s_broker(void)
{
    tq_broker_t *broker = tq_harness_broker_new((tq_broker_config_t){0});
    assert_non_null(broker);
    return broker;
}

/* The broker handles READY from `ident` (a fake routing id: nothing sent
   to it arrives, unless a DEALER of that id connected): credit, one
   queue, the task "t". */
static peer_t *
s_ready(tq_broker_t *b, const char *ident, uint64_t pid, const char *queue,
        uint32_t credit, uint32_t features)
{
    zmq_msg_close(&b->frames.identity);
    zmq_msg_init_size(&b->frames.identity, strlen(ident));
    memcpy(zmq_msg_data(&b->frames.identity), ident, strlen(ident));
    tqb_received(b);
    tq_msg_t msg = {.command = TQ_CMD_READY,
                    .host = tq_str("h"),
                    .pid = pid,
                    .ppid = 1,
                    .credit = credit,
                    .features = features,
                    .queue_count = 1,
                    .task_count = 1};
    msg.queues[0] = tq_str(queue);
    msg.tasks[0] = tq_str("t");
    tqb_on_ready(b, &msg, tqb_peer(b));
    peer_t *child = tqb_peer(b);
    assert_non_null(child);
    return child;
}

/* The idle children of the benchmark: READY for queue "other", credit 1,
   never a task for them. */
static void
s_idle_children(tq_broker_t *b)
{
    char ident[32];
    for (int i = 0; i < S_IDLE; i++) {
        snprintf(ident, sizeof ident, "idle-%d", i);
        s_ready(b, ident, (uint64_t)(100000 + i), "other", 1,
                TQ_FEATURE_RETURNS);
    }
}

/* A DEALER with routing id `ident` on the broker's workers socket,
   connected once the broker's ROUTER read the PING it sent. */
static void *
s_dealer(tq_broker_t *b, void *ctx, const char *ident)
{
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(dealer);
    assert_int_equal(
        zmq_setsockopt(dealer, ZMQ_ROUTING_ID, ident, strlen(ident)), 0);
    int linger = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(dealer, tq_broker_worker_endpoint(b)), 0);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    tq_msg_t ping = {.command = TQ_CMD_PING};
    assert_int_equal(tq_wire_send_msg(dealer, NULL, &ping, &buf, NULL, 0),
                     TQ_OK);
    msgpack_sbuffer_destroy(&buf);
    zmq_pollitem_t item = {b->workers, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&item, 1, S_WAIT_MS), 1);
    tq_frames_t frames;
    tq_frames_init(&frames);
    assert_int_equal(tq_wire_recv(b->workers, &frames, true, 0), TQ_OK);
    tq_frames_close(&frames);
    return dealer;
}

/* A waiting task `id` of queue q, task "t", at priority. */
static task_t *
s_submit(tq_broker_t *b, const char *id, int priority)
{
    lane_t *lane =
        tqb_lane(tqb_queue(b, tq_str("q")), tqb_intern(b, tq_str("t")));
    zmq_msg_t args;
    zmq_msg_init_size(&args, 1);
    *(uint8_t *)zmq_msg_data(&args) = 0x90; /* [] */
    task_t *task = tqb_task_new(b, id, lane, &args);
    zmq_msg_close(&args);
    task->rec.seq = ++b->seq;
    task->rec.priority = (uint32_t)priority;
    tqb_task_move(b, task, TASK_WAITING, &(task_move_t){0});
    return task;
}

/* Reads the next message on dealer: command and id as expected. */
static void
s_expect(void *dealer, uint8_t command, const char *id)
{
    zmq_pollitem_t item = {dealer, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&item, 1, S_WAIT_MS), 1);
    tq_frames_t frames;
    tq_frames_init(&frames);
    assert_int_equal(tq_wire_recv(dealer, &frames, false, 0), TQ_OK);
    tq_msg_t msg;
    const char *reason = NULL;
    assert_int_equal(tq_wire_decode(&frames, &msg, &reason), TQ_OK);
    assert_string_equal(tq_proto_command_name(msg.command),
                        tq_proto_command_name(command));
    char got[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(got, sizeof got, msg.id);
    assert_string_equal(got, id);
    tq_frames_close(&frames);
}

/* Nothing more has come to dealer. */
static void
s_expect_none(void *dealer)
{
    zmq_pollitem_t item = {dealer, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&item, 1, 0), 0);
}

static uint32_t
s_children(const tq_broker_t *b)
{
    uint32_t count = 0;
    for (const peer_t *w = b->children; w; w = w->next)
        count++;
    return count;
}

/* Every server of q with credit left (and not marked) is in q's hungry
   array exactly once, at the position it records; no other child is. */
static void
s_check_hungry(tq_broker_t *b, const char *name)
{
    queue_t *q = tqb_queue(b, tq_str(name));
    uint32_t want = 0;
    for (uint32_t i = 0; i < q->server_count; i++) {
        peer_t *w = q->servers[i];
        assert_int_equal(w->hungry, tqb_peer_hungry(w));
        if (!w->hungry)
            continue;
        want++;
        uint32_t k = 0;
        while (k < w->queue_count && w->queues[k] != q)
            k++;
        assert_true(k < w->queue_count);
        assert_true(w->hungry_at[k] < q->hungry_count);
        assert_ptr_equal(q->hungry[w->hungry_at[k]], w);
    }
    assert_int_equal(q->hungry_count, want);
}

/* Beside 1,000 idle children of queue "other", a holder of queue q gets
   its tasks by priority, then submission; two idle children of q that
   come then each get the holder asked for the held task that should run
   next (the highest priority, then the oldest; never the first it
   holds), in the order they came. Each pass looks at a few children. */
static void
test_steal_beside_idle(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    tq_broker_t *b = s_broker();
    s_idle_children(b);
    void *h = s_dealer(b, ctx, "holder");
    s_ready(b, "holder", 1, "q", 8, TQ_FEATURE_RETURNS);
    s_submit(b, "a1", 0);
    s_submit(b, "a2", 0);
    b->visits = 0;
    tqb_dispatch(b);
    assert_true(b->visits <= S_FEW);
    s_expect(h, TQ_CMD_TASK, "a1");
    s_expect(h, TQ_CMD_TASK, "a2");
    /* a higher priority goes first */
    s_submit(b, "a3", 0);
    s_submit(b, "a4", 5);
    s_submit(b, "a5", 0);
    b->visits = 0;
    tqb_dispatch(b);
    assert_true(b->visits <= S_FEW);
    s_expect(h, TQ_CMD_TASK, "a4");
    s_expect(h, TQ_CMD_TASK, "a3");
    s_expect(h, TQ_CMD_TASK, "a5");
    assert_int_equal(b->multi_holders, 1);
    /* nothing waits, nobody of q is idle: a pass that looks at the
       holder and its queue's servers only */
    b->visits = 0;
    tqb_dispatch(b);
    assert_true(b->visits <= S_FEW);
    s_expect_none(h);
    /* two idle children of q: a4 (priority 5), then a2 (the oldest of
       the rest; a1 is the one the holder runs) */
    void *t1 = s_dealer(b, ctx, "taker-1");
    peer_t *taker = s_ready(b, "taker-1", 2, "q", 8, TQ_FEATURE_RETURNS);
    void *t2 = s_dealer(b, ctx, "taker-2");
    s_ready(b, "taker-2", 3, "q", 8, TQ_FEATURE_RETURNS);
    b->visits = 0;
    tqb_dispatch(b);
    assert_true(b->visits <= S_FEW);
    s_expect(h, TQ_CMD_REVOKE, "a4");
    s_expect(h, TQ_CMD_REVOKE, "a2");
    s_expect_none(h);
    assert_int_equal(tqb_task_find(b, tq_str("a4"))->revoke_for, taker->serial);
    /* their answers pending, a pass asks for nothing more */
    b->visits = 0;
    tqb_dispatch(b);
    assert_true(b->visits <= S_FEW);
    s_expect_none(h);
    s_expect_none(t1);
    s_expect_none(t2);
    zmq_close(h);
    zmq_close(t1);
    zmq_close(t2);
    tq_broker_destroy(&b);
    zmq_ctx_term(ctx);
}

/* Children marked unreachable (a send found their connection gone) go
   at the liveness after they were marked, each at its own time, among
   1,000 children that are not marked; a check looks at the marked ones
   it removes and the next one only. */
static void
test_unreachable_expiry(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker();
    s_idle_children(b);
    /* "gone-1" and "gone-2" never connected: a TASK to them finds no
       connection, and marks them, at 1000 and 2000 ms */
    s_ready(b, "gone-1", 1, "q", 1, 0);
    s_submit(b, "u1", 0);
    b->now_ms = 1000;
    tqb_dispatch(b);
    peer_t *gone1 = tqb_peer(b);
    assert_int_equal(gone1->unreachable_ms, 1000);
    s_ready(b, "gone-2", 2, "q", 1, 0);
    b->now_ms = 2000;
    tqb_dispatch(b);
    assert_int_equal(tqb_peer(b)->unreachable_ms, 2000);
    /* marked: no longer among the children with credit left */
    s_check_hungry(b, "q");
    assert_int_equal(tqb_queue(b, tq_str("q"))->hungry_count, 0);
    /* the task went back each time: it waits */
    assert_int_equal(tqb_task_find(b, tq_str("u1"))->state, TASK_WAITING);
    assert_int_equal(s_children(b), S_IDLE + 2);
    /* not before its time */
    b->now_ms = 1000 + TQB_LIVENESS_MS - 1;
    b->visits = 0;
    tqb_check_hosts(b);
    assert_int_equal(s_children(b), S_IDLE + 2);
    assert_true(b->visits <= 1);
    /* gone-1 at its time, gone-2 stays */
    b->now_ms = 1000 + TQB_LIVENESS_MS;
    b->visits = 0;
    tqb_check_hosts(b);
    assert_int_equal(s_children(b), S_IDLE + 1);
    assert_true(b->visits <= 2);
    const char *name = "gone-2";
    zmq_msg_close(&b->frames.identity);
    zmq_msg_init_size(&b->frames.identity, strlen(name));
    memcpy(zmq_msg_data(&b->frames.identity), name, strlen(name));
    tqb_received(b);
    assert_non_null(tqb_peer(b));
    name = "gone-1";
    zmq_msg_close(&b->frames.identity);
    zmq_msg_init_size(&b->frames.identity, strlen(name));
    memcpy(zmq_msg_data(&b->frames.identity), name, strlen(name));
    tqb_received(b);
    assert_null(tqb_peer(b));
    /* then gone-2 */
    b->now_ms = 2000 + TQB_LIVENESS_MS;
    b->visits = 0;
    tqb_check_hosts(b);
    assert_int_equal(s_children(b), S_IDLE);
    assert_true(b->visits <= 1);
    assert_null(b->unreachable);
    tq_broker_destroy(&b);
}

/* A child that leaves otherwise (its DISCONNECT) while it is marked
   leaves the list too: the next check neither touches it nor stops
   early at it. */
static void
test_unreachable_leaves(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker();
    s_submit(b, "v1", 0);
    b->now_ms = 1000;
    peer_t *first = s_ready(b, "gone-1", 1, "q", 1, 0);
    tqb_dispatch(b);
    b->now_ms = 1500;
    s_ready(b, "gone-2", 2, "q", 1, 0);
    tqb_dispatch(b);
    b->now_ms = 1600;
    s_ready(b, "gone-3", 3, "q", 1, 0);
    tqb_dispatch(b);
    assert_ptr_equal(b->unreachable, first);
    /* gone-2, in the middle, disconnects */
    peer_t *second = first->unreachable_next;
    assert_non_null(second);
    tqb_peer_remove(b, second, false, 0, "disconnected");
    assert_ptr_equal(first->unreachable_next, b->unreachable_tail);
    b->now_ms = 1600 + TQB_LIVENESS_MS;
    tqb_check_hosts(b);
    assert_null(b->unreachable);
    assert_null(b->unreachable_tail);
    assert_null(b->children);
    tq_broker_destroy(&b);
}

/* The list of holders of 2 tasks or more follows the held counts, also
   across a child's removal, and the count of those that answer REVOKE
   with it. */
static void
test_multi_holders(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker();
    s_idle_children(b);
    peer_t *x = s_ready(b, "x", 1, "q", 8, TQ_FEATURE_RETURNS);
    peer_t *y = s_ready(b, "y", 2, "q", 8, 0); /* no RETURNS */
    task_t *t[6];
    char id[8];
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "m%d", i);
        t[i] = s_submit(b, id, 0);
    }
    assert_null(b->multi);
    tqb_task_move(b, t[0], TASK_HELD, &(task_move_t){.holder = x});
    assert_null(b->multi);
    tqb_task_move(b, t[1], TASK_HELD, &(task_move_t){.holder = x});
    tqb_task_move(b, t[2], TASK_HELD, &(task_move_t){.holder = x});
    assert_ptr_equal(b->multi, x);
    assert_null(x->multi_next);
    assert_int_equal(b->multi_holders, 1);
    tqb_task_move(b, t[3], TASK_HELD, &(task_move_t){.holder = y});
    tqb_task_move(b, t[4], TASK_HELD, &(task_move_t){.holder = y});
    assert_ptr_equal(b->multi, y);
    assert_ptr_equal(y->multi_next, x);
    assert_int_equal(b->multi_holders, 1); /* y does not answer REVOKE */
    tqb_task_move(b, t[2], TASK_WAITING, &(task_move_t){.front = true});
    assert_ptr_equal(b->multi, y); /* x holds 2 still */
    tqb_task_move(b, t[1], TASK_WAITING, &(task_move_t){.front = true});
    assert_ptr_equal(b->multi, y);
    assert_null(y->multi_next);
    assert_int_equal(b->multi_holders, 0);
    tqb_peer_remove(b, y, false, 0, "disconnected");
    assert_null(b->multi);
    assert_int_equal(tqb_task_find(b, tq_str("m3"))->state, TASK_WAITING);
    tq_broker_destroy(&b);
}

/* STATUS's "no child serves it": the servers of its queue are asked,
   with the task name. */
static void
test_lane_served(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker();
    s_idle_children(b);
    lane_t *lane =
        tqb_lane(tqb_queue(b, tq_str("q")), tqb_intern(b, tq_str("t")));
    lane_t *other_task =
        tqb_lane(tqb_queue(b, tq_str("q")), tqb_intern(b, tq_str("u")));
    assert_false(tqb_lane_served(b, lane));
    peer_t *x = s_ready(b, "x", 1, "q", 1, 0);
    assert_true(tqb_lane_served(b, lane));
    assert_false(tqb_lane_served(b, other_task));
    tqb_peer_remove(b, x, false, 0, "disconnected");
    assert_false(tqb_lane_served(b, lane));
    /* the idle children's queue */
    lane_t *idle =
        tqb_lane(tqb_queue(b, tq_str("other")), tqb_intern(b, tq_str("t")));
    assert_true(tqb_lane_served(b, idle));
    tq_broker_destroy(&b);
}

/* Beside 1,000 children of q at their credit, a child of q with credit
   left gets the waiting tasks in order, and again when its credit comes
   back; a pass looks at the children with credit left only. */
static void
test_dispatch_beside_busy(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    tq_broker_t *b = s_broker();
    char name[32];
    peer_t *busy[S_IDLE];
    for (int i = 0; i < S_IDLE; i++) {
        snprintf(name, sizeof name, "busy-%d", i);
        busy[i] = s_ready(b, name, (uint64_t)(100000 + i), "q", 1, 0);
        snprintf(name, sizeof name, "b%d", i);
        tqb_task_move(b, s_submit(b, name, 0), TASK_HELD,
                      &(task_move_t){.holder = busy[i]});
    }
    s_check_hungry(b, "q");
    assert_int_equal(tqb_queue(b, tq_str("q"))->hungry_count, 0);
    void *r = s_dealer(b, ctx, "r");
    peer_t *child = s_ready(b, "r", 1, "q", 2, 0);
    s_check_hungry(b, "q");
    task_t *r1 = s_submit(b, "r1", 0);
    s_submit(b, "r2", 0);
    s_submit(b, "r3", 0);
    b->visits = 0;
    tqb_dispatch(b);
    assert_true(b->visits <= S_FEW);
    s_expect(r, TQ_CMD_TASK, "r1");
    s_expect(r, TQ_CMD_TASK, "r2");
    s_check_hungry(b, "q");
    /* at its credit: nobody to look at, r3 waits */
    b->visits = 0;
    tqb_dispatch(b);
    assert_true(b->visits <= S_FEW);
    s_expect_none(r);
    assert_int_equal(tqb_task_find(b, tq_str("r3"))->state, TASK_WAITING);
    /* r1 ends: its credit is back, r3 goes to it */
    tqb_task_final(b, r1, TASK_SUCCESS, TQ_OK, NULL, NULL);
    s_check_hungry(b, "q");
    b->visits = 0;
    tqb_dispatch(b);
    assert_true(b->visits <= S_FEW);
    s_expect(r, TQ_CMD_TASK, "r3");
    assert_ptr_equal(tqb_task_find(b, tq_str("r3"))->holder, child);
    /* busy children go and come back with credit, in any order: the
       array follows */
    for (int i = 0; i < S_IDLE; i += 7)
        tqb_peer_remove(b, busy[i], false, 0, "disconnected");
    s_check_hungry(b, "q");
    for (int i = 3; i < S_IDLE; i += 7) {
        snprintf(name, sizeof name, "busy-%d", i);
        /* announcing again with more credit: it has some left now */
        s_ready(b, name, (uint64_t)(100000 + i), "q", 2, 0);
    }
    s_check_hungry(b, "q");
    assert_int_equal(tqb_queue(b, tq_str("q"))->hungry_count,
                     (S_IDLE - 3 + 6) / 7);
    zmq_close(r);
    tq_broker_destroy(&b);
    zmq_ctx_term(ctx);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_steal_beside_idle),
        cmocka_unit_test(test_unreachable_expiry),
        cmocka_unit_test(test_unreachable_leaves),
        cmocka_unit_test(test_multi_holders),
        cmocka_unit_test(test_lane_served),
        cmocka_unit_test(test_dispatch_beside_busy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
