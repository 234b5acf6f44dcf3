/* test_fold.c - SUBMITTED folded into RESULT (broker/tq_reply.c,
   tq_broker_config_t.ack_fold_ms, PROTOCOL.md 5.1 item 2), white box: a
   new task's SUBMITTED waits for the window; a task that ends within it
   is acknowledged by its RESULT alone, one still unfinished at its end
   gets SUBMITTED then; a known id, a client that did not opt in and a
   broker without a window are answered at once. What the client receives
   is read on a real DEALER, in order, up to a PONG sent last as a marker. */
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

static tq_broker_t *
s_broker(int fold_ms)
{
    tq_broker_config_t config = {
        .ack_fold_ms = fold_ms,
    };
    tq_broker_t *broker = tq_harness_broker_new(config);
    assert_non_null(broker);
    return broker;
}

/* A DEALER "c1" on the broker's clients socket; connected once the
   broker's ROUTER read the PING it sent. */
static void *
s_client(tq_broker_t *b, void *ctx)
{
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(dealer);
    assert_int_equal(zmq_setsockopt(dealer, ZMQ_ROUTING_ID, "c1", 2), 0);
    int linger = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(dealer, tq_broker_client_endpoint(b)), 0);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    tq_msg_t ping = {.command = TQ_CMD_PING};
    assert_int_equal(tq_wire_send_msg(dealer, NULL, &ping, &buf, NULL, 0),
                     TQ_OK);
    msgpack_sbuffer_destroy(&buf);
    zmq_pollitem_t item = {b->clients, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&item, 1, S_WAIT_MS), 1);
    tq_frames_t frames;
    tq_frames_init(&frames);
    assert_int_equal(tq_wire_recv(b->clients, &frames, true, 0), TQ_OK);
    tq_frames_close(&frames);
    return dealer;
}

/* SUBMIT id from "c1", through the broker's handler; fold: with the
   client's opt-in (features TQ_FEATURE_FOLD). */
static void
s_submit_as(tq_broker_t *b, const char *id, bool fold)
{
    zmq_msg_close(&b->frames.identity);
    zmq_msg_init_size(&b->frames.identity, 2);
    memcpy(zmq_msg_data(&b->frames.identity), "c1", 2);
    zmq_msg_close(&b->frames.payload);
    zmq_msg_init_size(&b->frames.payload, 1);
    *(uint8_t *)zmq_msg_data(&b->frames.payload) = 0x90; /* [] */
    tqb_received(b);
    tq_msg_t msg = {.command = TQ_CMD_SUBMIT,
                    .id = tq_str(id),
                    .task = tq_str("t"),
                    .queue = tq_str("q"),
                    .backoff_ms = 1000,
                    .features = fold ? TQ_FEATURE_FOLD : 0};
    tqb_on_submit(b, &msg, NULL);
}

static void
s_submit(tq_broker_t *b, const char *id)
{
    s_submit_as(b, id, true);
}

/* Sends the PONG that ends what s_expect reads. */
static void
s_mark(tq_broker_t *b)
{
    ident_t to = {.size = 2, .bytes = {'c', '1'}};
    tqb_out(b, TQ_CMD_PONG);
    assert_int_equal(tqb_send_to(b, b->clients, &to, NULL), 0);
}

/* Reads up to the PONG marker and checks what came before it, in order:
   commands[i] for ids[i], count of them. */
static void
s_expect(void *dealer, const uint8_t *commands, const char *const *ids,
         int count)
{
    tq_frames_t frames;
    tq_frames_init(&frames);
    tq_msg_t msg;
    for (int i = 0;; i++) {
        zmq_pollitem_t item = {dealer, 0, ZMQ_POLLIN, 0};
        assert_int_equal(zmq_poll(&item, 1, S_WAIT_MS), 1);
        assert_int_equal(tq_wire_recv(dealer, &frames, false, 0), TQ_OK);
        const char *reason = NULL;
        assert_int_equal(tq_wire_decode(&frames, &msg, &reason), TQ_OK);
        if (msg.command == TQ_CMD_PONG) {
            assert_int_equal(i, count);
            break;
        }
        assert_true(i < count);
        assert_string_equal(tq_proto_command_name(msg.command),
                            tq_proto_command_name(commands[i]));
        char id[TQ_PROTO_MAX_ID + 1];
        tq_str_copy(id, sizeof id, msg.id);
        assert_string_equal(id, ids[i]);
    }
    tq_frames_close(&frames);
}

/* a ends (cancelled) within the window: its RESULT alone; b runs past
   the window: SUBMITTED when it ends; b submitted again meanwhile (a
   known id): SUBMITTED at once. */
static void
test_fold_window(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    tq_broker_t *b = s_broker(1000);
    void *dealer = s_client(b, ctx);
    b->now_ms = 5000;
    s_submit(b, "a");
    s_submit(b, "b");
    assert_int_equal(b->fold_count, 2);
    assert_int_equal(tqb_release_folds(b, false), 6000); /* none due */
    s_submit(b, "b"); /* known: answered now */
    tqb_cancel(b, tqb_task_find(b, tq_str("a")), "cancelled");
    b->now_ms = 6000;
    assert_int_equal(tqb_release_folds(b, false), INT64_MAX);
    assert_int_equal(b->fold_count, 0);
    s_mark(b);
    static const uint8_t commands[] = {TQ_CMD_SUBMITTED, TQ_CMD_RESULT,
                                       TQ_CMD_SUBMITTED};
    static const char *const ids[] = {"b", "a", "b"};
    s_expect(dealer, commands, ids, 3);
    zmq_close(dealer);
    tq_broker_destroy(&b);
    zmq_ctx_term(ctx);
}

/* A held SUBMITTED whose task ended before its window did has nothing to
   send: it is let go before it is due and sets no deadline (a client
   doing one round trip at a time would otherwise wake the broker a
   window after each); the first one still running sets it, and is sent
   when due. */
static void
test_fold_ended_no_deadline(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    tq_broker_t *b = s_broker(1000);
    void *dealer = s_client(b, ctx);
    b->now_ms = 5000;
    s_submit(b, "a");
    b->now_ms = 5100;
    s_submit(b, "b");
    tqb_cancel(b, tqb_task_find(b, tq_str("a")), "cancelled");
    /* a's ended: b's window is the deadline */
    assert_int_equal(tqb_release_folds(b, false), 6100);
    assert_int_equal(b->fold_count, 1);
    tqb_cancel(b, tqb_task_find(b, tq_str("b")), "cancelled");
    assert_int_equal(tqb_release_folds(b, false), INT64_MAX);
    assert_int_equal(b->fold_count, 0);
    b->now_ms = 5200;
    s_submit(b, "c");
    assert_int_equal(tqb_release_folds(b, false), 6200);
    b->now_ms = 6200;
    assert_int_equal(tqb_release_folds(b, false), INT64_MAX);
    s_mark(b);
    static const uint8_t commands[] = {TQ_CMD_RESULT, TQ_CMD_RESULT,
                                       TQ_CMD_SUBMITTED};
    static const char *const ids[] = {"a", "b", "c"};
    s_expect(dealer, commands, ids, 3);
    zmq_close(dealer);
    tq_broker_destroy(&b);
    zmq_ctx_term(ctx);
}

/* Client-made ids (kept as 16 bytes) are held and released by their
   bytes, text ids by their text, side by side: the ended one gets its
   RESULT alone, the others their SUBMITTED with their id as sent. */
static void
test_fold_binary_ids(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    tq_broker_t *b = s_broker(1000);
    void *dealer = s_client(b, ctx);
    b->now_ms = 5000;
    const char *a = "0123456789abcdef00ff10e0c0d0b0a9";
    const char *c = "0123456789abcdef00ff10e0c0d0b0aa";
    s_submit(b, a);
    s_submit(b, "text-id");
    s_submit(b, c);
    assert_true(tqb_task_find(b, tq_str(a))->id_bin);
    assert_false(tqb_task_find(b, tq_str("text-id"))->id_bin);
    assert_int_equal(b->fold_count, 3);
    tqb_cancel(b, tqb_task_find(b, tq_str(a)), "cancelled");
    b->now_ms = 6000;
    assert_int_equal(tqb_release_folds(b, false), INT64_MAX);
    assert_int_equal(b->fold_count, 0);
    s_mark(b);
    static const uint8_t commands[] = {TQ_CMD_RESULT, TQ_CMD_SUBMITTED,
                                       TQ_CMD_SUBMITTED};
    const char *const ids[] = {a, "text-id", c};
    s_expect(dealer, commands, ids, 3);
    zmq_close(dealer);
    tq_broker_destroy(&b);
    zmq_ctx_term(ctx);
}

/* Without a window (--ack-fold 0), SUBMITTED goes at once, as before. */
static void
test_no_window(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    tq_broker_t *b = s_broker(0);
    void *dealer = s_client(b, ctx);
    s_submit(b, "a");
    assert_int_equal(b->fold_count, 0);
    s_mark(b);
    static const uint8_t commands[] = {TQ_CMD_SUBMITTED};
    static const char *const ids[] = {"a"};
    s_expect(dealer, commands, ids, 1);
    zmq_close(dealer);
    tq_broker_destroy(&b);
    zmq_ctx_term(ctx);
}

/* A client that does not opt in hears SUBMITTED at once, window or
   not, as before folding. */
static void
test_not_opted_in(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    tq_broker_t *b = s_broker(1000);
    void *dealer = s_client(b, ctx);
    s_submit_as(b, "a", false);
    assert_int_equal(b->fold_count, 0);
    s_mark(b);
    static const uint8_t commands[] = {TQ_CMD_SUBMITTED};
    static const char *const ids[] = {"a"};
    s_expect(dealer, commands, ids, 1);
    zmq_close(dealer);
    tq_broker_destroy(&b);
    zmq_ctx_term(ctx);
}

/* Held SUBMITTEDs of a broker destroyed with them are freed (valgrind,
   ASan): 300 of them, past the ring's first growth. */
static void
test_destroy_held(void **state)
{
    (void)state;
    tq_broker_t *b = s_broker(1000);
    char id[32];
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof id, "t%d", i);
        s_submit(b, id);
    }
    assert_int_equal(b->fold_count, 300);
    tq_broker_destroy(&b);
}

/* A broker with a SQLite store in a fresh directory, a ZeroMQ context
   and a client DEALER on it (s_client): the setup of the store tests. */
typedef struct {
    char dir[4096];
    void *ctx;
    tq_broker_t *b;
    void *dealer;
} s_store_t;

static void
s_store_open(s_store_t *st, int fold_ms)
{
    assert_int_equal(tq_harness_tempdir(st->dir, sizeof st->dir, "fold-store"),
                     0);
    st->ctx = zmq_ctx_new();
    tq_broker_config_t config = {.ack_fold_ms = fold_ms, .data_dir = st->dir};
    st->b = tq_harness_broker_new(config);
    assert_non_null(st->b);
    assert_non_null(st->b->store);
    st->dealer = s_client(st->b, st->ctx);
}

static void
s_store_close(s_store_t *st)
{
    zmq_close(st->dealer);
    tq_broker_destroy(&st->b);
    zmq_ctx_term(st->ctx);
    tq_harness_rmtree(st->dir);
}

/* With a store (no window: SUBMITTED at its commit), a client that opted
   in is not sent the SUBMITTED of a task that ended before its commit
   (its RESULT went first): a, f and x (an id kept as bytes), ended while
   their batches were in flight or open. One still unfinished at its
   commit gets it then (b, d, y), before its RESULT. A client that did
   not opt in (c) hears SUBMITTED at the commit whatever happened before,
   as without folding. */
static void
test_store_fold(void **state)
{
    (void)state;
    s_store_t st;
    s_store_open(&st, 1000);
    tq_broker_t *b = st.b;
    void *dealer = st.dealer;
    s_submit(b, "a");
    s_submit(b, "b");
    s_submit_as(b, "c", false);
    s_submit(b, "d");
    assert_int_equal(b->fold_count, 0); /* no window with a store */
    assert_true(tqb_commit(b)); /* their batch goes to the commit thread */
    tqb_cancel(b, tqb_task_find(b, tq_str("a")), "cancelled");
    tqb_cancel(b, tqb_task_find(b, tq_str("c")), "cancelled");
    s_submit(b, "f"); /* in the open batch */
    tqb_cancel(b, tqb_task_find(b, tq_str("f")), "cancelled");
    /* client-made ids, kept as their 16 bytes */
    const char *x = "0123456789abcdef00ff10e0c0d0b0a9";
    const char *y = "0123456789abcdef00ff10e0c0d0b0aa";
    s_submit(b, x);
    s_submit(b, y);
    assert_true(tqb_task_find(b, tq_str(x))->id_bin);
    tqb_cancel(b, tqb_task_find(b, tq_str(x)), "cancelled");
    assert_true(tqb_commit_flush(b));
    tqb_cancel(b, tqb_task_find(b, tq_str("b")), "cancelled");
    s_mark(b);
    static const uint8_t commands[] = {
        TQ_CMD_RESULT,    TQ_CMD_RESULT,    TQ_CMD_RESULT,
        TQ_CMD_RESULT,    TQ_CMD_SUBMITTED, TQ_CMD_SUBMITTED,
        TQ_CMD_SUBMITTED, TQ_CMD_SUBMITTED, TQ_CMD_RESULT};
    const char *const ids[] = {"a", "c", "f", x, "b", "c", "d", y, "b"};
    s_expect(dealer, commands, ids, 9);
    s_store_close(&st);
}

/* With a store: a task that ended and was forgotten before its commit
   (its result's TTL over), its id then submitted again, is a new task;
   the first submission's SUBMITTED is left out (that task ended), and
   only the second's goes, at its own commit. */
static void
test_store_fold_resubmitted(void **state)
{
    (void)state;
    s_store_t st;
    s_store_open(&st, 1000);
    tq_broker_t *b = st.b;
    void *dealer = st.dealer;
    s_submit(b, "g");
    tqb_cancel(b, tqb_task_find(b, tq_str("g")), "cancelled");
    tqb_task_forget(b, tqb_task_find(b, tq_str("g")));
    s_submit(b, "g");
    assert_false(tqb_task_is_final(tqb_task_find(b, tq_str("g"))));
    assert_true(tqb_commit_flush(b));
    s_mark(b);
    static const uint8_t commands[] = {TQ_CMD_RESULT, TQ_CMD_SUBMITTED};
    static const char *const ids[] = {"g", "g"};
    s_expect(dealer, commands, ids, 2);
    s_store_close(&st);
}

/* With a store and --ack-fold 0, every SUBMITTED goes at its commit, a
   task that ended first included (as without folding). */
static void
test_store_no_fold(void **state)
{
    (void)state;
    s_store_t st;
    s_store_open(&st, 0);
    tq_broker_t *b = st.b;
    void *dealer = st.dealer;
    s_submit(b, "a");
    tqb_cancel(b, tqb_task_find(b, tq_str("a")), "cancelled");
    assert_true(tqb_commit_flush(b));
    s_mark(b);
    static const uint8_t commands[] = {TQ_CMD_RESULT, TQ_CMD_SUBMITTED};
    static const char *const ids[] = {"a", "a"};
    s_expect(dealer, commands, ids, 2);
    s_store_close(&st);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fold_window),
        cmocka_unit_test(test_fold_ended_no_deadline),
        cmocka_unit_test(test_fold_binary_ids),
        cmocka_unit_test(test_no_window),
        cmocka_unit_test(test_not_opted_in),
        cmocka_unit_test(test_destroy_held),
        cmocka_unit_test(test_store_fold),
        cmocka_unit_test(test_store_fold_resubmitted),
        cmocka_unit_test(test_store_no_fold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
