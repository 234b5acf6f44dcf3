/* test_fold_client.c - SUBMITTED folded into RESULT by tq-broker for a
   client that opts in (SUBMIT features TQ_FEATURE_FOLD, PROTOCOL.md 5.1
   item 2), end to end: raw clients on a real tq-broker (no store) and a
   worker host. Counts and order only: a window of 60 s stands for "the
   task ends within it", a task on a queue nobody serves for "it does
   not". With a store (--data, no window): a SUBMITTED is left out only
   for a task whose RESULT went first; commits are held by the broker's
   test hook TQ_TEST_HOLD_COMMITS (they wait while its file exists) and a
   task held running by test.gate (it ends once its gate file exists), so
   that every check is causal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tq_harness.h"
#include "tq_raw_client.h"

#define S_WAIT_MS 20000 /* bound on any one message */

#ifndef TQ_TESTTASKS_SO
#error "TQ_TESTTASKS_SO must name the test task module"
#endif

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

/* ---- with a store ---- */

/* SUBMIT id of test.gate [started, gate] on "default"; fold as s_submit. */
static void
s_submit_gate(tq_raw_client_t *c, const char *id, const char *started,
              const char *gate, bool fold)
{
    memset(c->out, 0, sizeof *c->out);
    c->out->command = TQ_CMD_SUBMIT;
    c->out->id = tq_str(id);
    c->out->task = tq_str("test.gate");
    c->out->queue = tq_str("default");
    c->out->features = fold ? TQ_FEATURE_FOLD : 0;
    msgpack_sbuffer buf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    const char *paths[2] = {started, gate};
    for (int i = 0; i < 2; i++) {
        msgpack_pack_str(&pk, strlen(paths[i]));
        msgpack_pack_str_body(&pk, paths[i], strlen(paths[i]));
    }
    zmq_msg_t args;
    assert_int_equal(zmq_msg_init_size(&args, buf.size), 0);
    memcpy(zmq_msg_data(&args), buf.data, buf.size);
    msgpack_sbuffer_destroy(&buf);
    assert_int_equal(
        tq_wire_send_msg(c->sock, NULL, c->out, &c->sbuf, &args, 0), TQ_OK);
}

/* Creates path (a hold or a gate file). */
static void
s_touch(const char *path)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

/* A broker on a store in dir/data (commits held while dir/hold exists,
   made first when hold is true) and a worker host of two children with
   the test tasks. */
static void
s_store_env(tq_harness_env_t *env, const char *dir, bool hold)
{
    char data[4200], hold_path[4200];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(hold_path, sizeof hold_path, "%s/hold", dir);
    if (hold)
        s_touch(hold_path);
    const char *extra[] = {"--data", data, "--sync", "batch", NULL};
    setenv("TQ_TEST_HOLD_COMMITS", hold_path, 1);
    int started = tq_harness_env_start(env, extra);
    unsetenv("TQ_TEST_HOLD_COMMITS");
    assert_int_equal(started, 0);
    const char *worker[] = {"--module", TQ_TESTTASKS_SO, NULL};
    assert_true(tq_harness_env_add_worker(env, 2, worker, true) > 0);
}

/* Once commits go on: a SUBMIT without the opt-in of a task nobody serves,
   then everything read up to its SUBMITTED. That SUBMITTED waits for its
   own commit, which comes after every earlier one, and the
   acknowledgements leave in the order of their requests: whatever the
   earlier SUBMITs had to hear was heard before it. */
static void
s_settle(tq_raw_client_t *c, const char *marker, s_heard_t *heard, int count)
{
    s_submit(c, marker, "tq.echo", "nobody-serves-this", false);
    s_read_until(c, TQ_CMD_SUBMITTED, marker, heard, count);
}

enum { S_BURST = 64 };

/* N no-op tasks submitted at once by a client that opted in, each ended
   while the commit of its SUBMIT was held: every RESULT comes, and no
   SUBMITTED for any of them, before the commits or after. Then with
   commits free, another burst: every RESULT comes, no SUBMITTED after
   its task's RESULT, at most one each. */
static void
test_store_burst_folded(void **state)
{
    (void)state;
    char dir[4096], hold[4200];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "fold"), 0);
    snprintf(hold, sizeof hold, "%s/hold", dir);
    tq_harness_env_t env;
    s_store_env(&env, dir, true);
    tq_raw_client_t *c = tq_raw_client_new(env.broker.clients, 0);

    static char ids[2 * S_BURST][16];
    s_heard_t h[2 * S_BURST];
    memset(h, 0, sizeof h);
    for (int i = 0; i < 2 * S_BURST; i++) {
        snprintf(ids[i], sizeof ids[i], "burst-%d", i);
        h[i].id = ids[i];
    }
    for (int i = 0; i < S_BURST; i++)
        s_submit(c, ids[i], "tq.echo", "default", true);
    for (int i = 0; i < S_BURST; i++)
        if (h[i].results == 0)
            s_read_until(c, TQ_CMD_RESULT, ids[i], h, S_BURST);
    assert_int_equal(unlink(hold), 0); /* commits go on */
    s_settle(c, "marker-1", h, S_BURST);
    int submitted = 0;
    for (int i = 0; i < S_BURST; i++) {
        assert_int_equal(h[i].results, 1);
        assert_int_equal(h[i].state, TQ_STATE_SUCCESS);
        submitted += h[i].submitted;
    }
    assert_int_equal(submitted, 0);

    for (int i = S_BURST; i < 2 * S_BURST; i++)
        s_submit(c, ids[i], "tq.echo", "default", true);
    for (int i = S_BURST; i < 2 * S_BURST; i++)
        if (h[i].results == 0)
            s_read_until(c, TQ_CMD_RESULT, ids[i], h, 2 * S_BURST);
    s_settle(c, "marker-2", h, 2 * S_BURST);
    s_drain(c, h, 2 * S_BURST);
    for (int i = 0; i < 2 * S_BURST; i++) {
        assert_int_equal(h[i].results, 1);
        assert_true(h[i].submitted <= 1);
        assert_false(h[i].submitted_after_result);
    }

    tq_raw_client_destroy(&c);
    tq_harness_env_stop(&env);
    tq_harness_rmtree(dir);
}

/* A client that does not opt in hears one SUBMITTED per task, with a
   store as without: the tasks ended while their commits were held, and
   each SUBMITTED still comes once they are committed. */
static void
test_store_not_opted_in(void **state)
{
    (void)state;
    char dir[4096], hold[4200];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "fold"), 0);
    snprintf(hold, sizeof hold, "%s/hold", dir);
    tq_harness_env_t env;
    s_store_env(&env, dir, true);
    tq_raw_client_t *c = tq_raw_client_new(env.broker.clients, 0);

    enum { N = 16 };
    static char ids[N][16];
    s_heard_t h[N];
    memset(h, 0, sizeof h);
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "plain-%d", i);
        h[i].id = ids[i];
        s_submit(c, ids[i], "tq.echo", "default", false);
    }
    for (int i = 0; i < N; i++)
        if (h[i].results == 0)
            s_read_until(c, TQ_CMD_RESULT, ids[i], h, N);
    assert_int_equal(unlink(hold), 0);
    for (int i = 0; i < N; i++)
        if (h[i].submitted == 0)
            s_read_until(c, TQ_CMD_SUBMITTED, ids[i], h, N);
    s_drain(c, h, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(h[i].results, 1);
        assert_int_equal(h[i].submitted, 1);
    }

    tq_raw_client_destroy(&c);
    tq_harness_env_stop(&env);
    tq_harness_rmtree(dir);
}

/* A task still running at its commit is acknowledged then, opted in or
   not: each gate opens only once its task's SUBMITTED came (and the task
   had started), so its RESULT comes after it. */
static void
test_store_running_acknowledged(void **state)
{
    (void)state;
    char dir[4096];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "fold"), 0);
    tq_harness_env_t env;
    s_store_env(&env, dir, false);
    tq_raw_client_t *c = tq_raw_client_new(env.broker.clients, 0);

    s_heard_t h[] = {{.id = "gate-fold"}, {.id = "gate-plain"}};
    for (int i = 0; i < 2; i++) {
        char started[4200], gate[4200];
        snprintf(started, sizeof started, "%s/%s.started", dir, h[i].id);
        snprintf(gate, sizeof gate, "%s/%s.gate", dir, h[i].id);
        s_submit_gate(c, h[i].id, started, gate, i == 0);
        s_read_until(c, TQ_CMD_SUBMITTED, h[i].id, h, 2);
        assert_int_equal(h[i].results, 0);
        int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
        while (access(started, F_OK) != 0) {
            assert_true(tq_harness_now_ms() < deadline);
            tq_harness_sleep_ms(10);
        }
        s_touch(gate);
        s_read_until(c, TQ_CMD_RESULT, h[i].id, h, 2);
    }
    s_drain(c, h, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(h[i].submitted, 1);
        assert_int_equal(h[i].results, 1);
        assert_int_equal(h[i].state, TQ_STATE_SUCCESS);
        assert_false(h[i].submitted_after_result);
    }

    tq_raw_client_destroy(&c);
    tq_harness_env_stop(&env);
    tq_harness_rmtree(dir);
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
        cmocka_unit_test(test_store_burst_folded),
        cmocka_unit_test(test_store_not_opted_in),
        cmocka_unit_test(test_store_running_acknowledged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
