/* test_fold_client.c - SUBMITTED folded into RESULT by tq-broker for a
   client that opts in (SUBMIT features TQ_FEATURE_FOLD, PROTOCOL.md 5.1
   item 2), end to end: raw clients on a real tq-broker (no store) and a
   worker host. Counts and order only: a window of 60 s stands for "the
   task ends within it", a task on a queue nobody serves for "it does
   not". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tq_harness.h"
#include "tq_raw_client.h"

#define S_WAIT_MS 20000 /* bound on any one message */

/* SUBMIT id of task on queue with [] as arguments; fold: with the
   opt-in. */
static void
s_submit(tq_raw_client_t *c, const char *id, const char *task,
         const char *queue, bool fold)
{
    memset(c->out, 0, sizeof *c->out);
    c->out->command = TQ_CMD_SUBMIT;
    c->out->id = tq_str(id);
    c->out->task = tq_str(task);
    c->out->queue = tq_str(queue);
    c->out->features = fold ? TQ_FEATURE_FOLD : 0;
    zmq_msg_t args;
    assert_int_equal(zmq_msg_init_size(&args, 1), 0);
    *(uint8_t *)zmq_msg_data(&args) = 0x90; /* [] */
    assert_int_equal(
        tq_wire_send_msg(c->sock, NULL, c->out, &c->sbuf, &args, 0), TQ_OK);
}

static void
s_send(tq_raw_client_t *c, uint8_t command, const char *id)
{
    memset(c->out, 0, sizeof *c->out);
    c->out->command = command;
    if (id)
        c->out->id = tq_str(id);
    assert_int_equal(tq_wire_send_msg(c->sock, NULL, c->out, &c->sbuf, NULL, 0),
                     TQ_OK);
}

static bool
s_is(tq_str_t s, const char *text)
{
    return s.ptr && s.len == strlen(text) && memcmp(s.ptr, text, s.len) == 0;
}

/* What one client heard about one id: SUBMITTEDs and RESULTs, and
   whether a SUBMITTED came after the RESULT. */
typedef struct {
    const char *id;
    int submitted, results;
    bool submitted_after_result;
    uint32_t state; /* the RESULT's */
} s_heard_t;

/* Notes the message c just read in the records of heard (count). */
static void
s_note(tq_raw_client_t *c, s_heard_t *heard, int count)
{
    for (int i = 0; i < count; i++) {
        if (!s_is(c->in->id, heard[i].id))
            continue;
        if (c->in->command == TQ_CMD_SUBMITTED) {
            heard[i].submitted++;
            heard[i].submitted_after_result |= heard[i].results > 0;
        } else if (c->in->command == TQ_CMD_RESULT) {
            heard[i].results++;
            heard[i].state = c->in->state;
        }
    }
}

/* Reads until `command` for id, noting everything on the way; fails if
   it does not come. */
static void
s_read_until(tq_raw_client_t *c, uint8_t command, const char *id,
             s_heard_t *heard, int count)
{
    for (;;) {
        assert_int_equal(tq_raw_client_recv(c, S_WAIT_MS), 1);
        s_note(c, heard, count);
        if (c->in->command == command &&
            (!id ? !c->in->id.ptr : s_is(c->in->id, id)))
            return;
    }
}

/* PING, then reads up to its PONG: whatever was sent before it. */
static void
s_drain(tq_raw_client_t *c, s_heard_t *heard, int count)
{
    s_send(c, TQ_CMD_PING, NULL);
    s_read_until(c, TQ_CMD_PONG, NULL, heard, count);
}

/* A window longer than the tasks: the opted-in client's task is
   acknowledged by its RESULT alone; a client that does not opt in hears
   SUBMITTED first, as before, from the same broker. */
static void
test_fast_task_folded(void **state)
{
    (void)state;
    tq_harness_env_t env;
    const char *extra[] = {"--ack-fold", "60000", NULL};
    assert_int_equal(tq_harness_env_start(&env, extra), 0);
    assert_true(tq_harness_env_add_worker(&env, 1, NULL, true) > 0);
    tq_raw_client_t *in = tq_raw_client_new(env.broker.clients, 0);
    tq_raw_client_t *out = tq_raw_client_new(env.broker.clients, 0);

    s_heard_t a[] = {{.id = "fold-1"}, {.id = "fold-2"}};
    s_submit(in, "fold-1", "tq.echo", "default", true);
    s_submit(in, "fold-2", "tq.echo", "default", true);
    s_read_until(in, TQ_CMD_RESULT, "fold-1", a, 2);
    s_read_until(in, TQ_CMD_RESULT, "fold-2", a, 2);
    s_drain(in, a, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(a[i].results, 1);
        assert_int_equal(a[i].state, TQ_STATE_SUCCESS);
        assert_int_equal(a[i].submitted, 0);
    }

    s_heard_t b[] = {{.id = "plain-1"}};
    s_submit(out, "plain-1", "tq.echo", "default", false);
    assert_int_equal(tq_raw_client_recv(out, S_WAIT_MS), 1);
    assert_int_equal(out->in->command, TQ_CMD_SUBMITTED);
    s_note(out, b, 1);
    s_read_until(out, TQ_CMD_RESULT, "plain-1", b, 1);
    s_drain(out, b, 1);
    assert_int_equal(b[0].submitted, 1);
    assert_int_equal(b[0].results, 1);

    /* a known id is answered at once, folded or not */
    s_submit(in, "fold-1", "tq.echo", "default", true);
    assert_int_equal(tq_raw_client_recv(in, S_WAIT_MS), 1);
    assert_int_equal(in->in->command, TQ_CMD_SUBMITTED);
    assert_true(s_is(in->in->id, "fold-1"));

    tq_raw_client_destroy(&in);
    tq_raw_client_destroy(&out);
    tq_harness_env_stop(&env);
}

/* A short window: a task nobody serves gets its SUBMITTED once the
   window ends, before its RESULT (cancelled here). A served task may end
   on either side of the window, but never hears SUBMITTED after its
   RESULT, and hears nothing more once later folds were released. */
static void
test_slow_task_acknowledged(void **state)
{
    (void)state;
    tq_harness_env_t env;
    const char *extra[] = {"--ack-fold", "20", NULL};
    assert_int_equal(tq_harness_env_start(&env, extra), 0);
    assert_true(tq_harness_env_add_worker(&env, 1, NULL, true) > 0);
    tq_raw_client_t *c = tq_raw_client_new(env.broker.clients, 0);

    s_heard_t h[] = {{.id = "fast"}, {.id = "slow"}};
    s_submit(c, "fast", "tq.echo", "default", true);
    s_read_until(c, TQ_CMD_RESULT, "fast", h, 2);
    /* the ring is in due order: once slow's SUBMITTED is out, fast's
       hold (due before it) was settled too */
    s_submit(c, "slow", "tq.echo", "nobody-serves-this", true);
    s_read_until(c, TQ_CMD_SUBMITTED, "slow", h, 2);
    assert_int_equal(h[1].results, 0);
    s_send(c, TQ_CMD_CANCEL, "slow");
    s_read_until(c, TQ_CMD_RESULT, "slow", h, 2);
    s_drain(c, h, 2);

    assert_int_equal(h[0].results, 1);
    assert_true(h[0].submitted <= 1);
    assert_false(h[0].submitted_after_result);
    assert_int_equal(h[1].submitted, 1);
    assert_int_equal(h[1].results, 1);
    assert_int_equal(h[1].state, TQ_STATE_CANCELLED);
    assert_false(h[1].submitted_after_result);

    tq_raw_client_destroy(&c);
    tq_harness_env_stop(&env);
}

/* --ack-fold 0: SUBMITTED at once even for a client that opts in. */
static void
test_no_fold_window(void **state)
{
    (void)state;
    tq_harness_env_t env;
    const char *extra[] = {"--ack-fold", "0", NULL};
    assert_int_equal(tq_harness_env_start(&env, extra), 0);
    tq_raw_client_t *c = tq_raw_client_new(env.broker.clients, 0);
    s_submit(c, "waits", "tq.echo", "nobody-serves-this", true);
    assert_int_equal(tq_raw_client_recv(c, S_WAIT_MS), 1);
    assert_int_equal(c->in->command, TQ_CMD_SUBMITTED);
    tq_raw_client_destroy(&c);
    tq_harness_env_stop(&env);
}

/* A burst larger than the ring the broker holds (FOLDS_MAX, 65,536 in
   tq_reply.c): the oldest held are acknowledged at once, in order, so
   that what a burst holds stays bounded; the others wait their window. */
static void
test_fold_ring_bounded(void **state)
{
    (void)state;
    enum { HELD = 65536, OVER = 8 };
    tq_harness_env_t env;
    const char *extra[] = {"--ack-fold", "60000", NULL};
    assert_int_equal(tq_harness_env_start(&env, extra), 0);
    tq_raw_client_t *c = tq_raw_client_new(env.broker.clients, 0);
    char id[32];
    for (int i = 0; i < HELD + OVER; i++) {
        snprintf(id, sizeof id, "r%d", i);
        s_submit(c, id, "tq.echo", "nobody-serves-this", true);
    }
    s_send(c, TQ_CMD_PING, NULL);
    int acked = 0;
    for (;;) {
        assert_int_equal(tq_raw_client_recv(c, S_WAIT_MS), 1);
        if (c->in->command == TQ_CMD_PONG)
            break;
        assert_int_equal(c->in->command, TQ_CMD_SUBMITTED);
        snprintf(id, sizeof id, "r%d", acked);
        assert_true(s_is(c->in->id, id)); /* the oldest, in order */
        acked++;
    }
    assert_int_equal(acked, OVER);
    tq_raw_client_destroy(&c);
    tq_harness_env_stop(&env);
}

int
main(void)
{
    tq_harness_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fast_task_folded),
        cmocka_unit_test(test_slow_task_acknowledged),
        cmocka_unit_test(test_no_fold_window),
        cmocka_unit_test(test_fold_ring_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
