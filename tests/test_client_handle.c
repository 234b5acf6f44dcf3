/* test_client_handle.c - the client handle and its request (issue 11):
   the request's state machine (client/tq_request.c: the table of legal
   moves, an illegal move aborts), the handle's lifecycle (PENDING ->
   ANSWERED -> FINAL -> READY), and that lifecycle seen through the public
   API against a fake broker in this process (a raw ROUTER): ready,
   successful, wait and get, callbacks fired exactly once, a request sent
   again after a reconnect or a TQ_EFULL keeps one state, and
   tq_apply_async that fails says why. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "tq_client_core.h"
#include "tq_client_internal.h"
#include "tq_fake_broker.h"
#include "tq_harness.h"
#include "tq_proto.h"
#include "tq_request.h"
#include "tq_result.h"
#include "tq_wire.h"

#define S_WAIT_MS 15000 /* bound on anything that must happen */

/* ---- the request's state machine ---------------------------------------- */

#define N TQ_REQ_STATES_
#define NEW TQ_REQ_NEW
#define QUEUED TQ_REQ_QUEUED
#define SENT TQ_REQ_SENT
#define DEFERRED TQ_REQ_DEFERRED
#define ACKED TQ_REQ_ACKED
#define DONE TQ_REQ_DONE
#define FAILED TQ_REQ_FAILED

/* Every legal move, written out apart from the table under test. */
static const int s_legal_moves[][2] = {
    {NEW, QUEUED},      {NEW, DONE},       {NEW, FAILED},    {QUEUED, SENT},
    {QUEUED, ACKED},    {QUEUED, DONE},    {QUEUED, FAILED}, {SENT, QUEUED},
    {SENT, DEFERRED},   {SENT, ACKED},     {SENT, DONE},     {SENT, FAILED},
    {DEFERRED, QUEUED}, {DEFERRED, ACKED}, {DEFERRED, DONE}, {DEFERRED, FAILED},
    {ACKED, DONE},      {ACKED, FAILED},
};

static bool
s_expected(int from, int to)
{
    for (size_t i = 0; i < sizeof s_legal_moves / sizeof *s_legal_moves; i++)
        if (s_legal_moves[i][0] == from && s_legal_moves[i][1] == to)
            return true;
    return false;
}

/* The table allows exactly the moves above: nothing leaves a final state,
   nothing goes back to NEW, nothing stays where it is. */
static void
test_request_table(void **state)
{
    (void)state;
    int legal = 0;
    for (int from = 0; from < N; from++)
        for (int to = 0; to < N; to++) {
            bool ok = tq_request_legal(from, to);
            if (ok != s_expected(from, to))
                fail_msg("%s -> %s: %s", tq_request_state_name(from),
                         tq_request_state_name(to), ok ? "allowed" : "refused");
            legal += ok;
        }
    assert_int_equal(legal, sizeof s_legal_moves / sizeof *s_legal_moves);
    assert_false(tq_request_legal(N, NEW));
    assert_false(tq_request_legal(NEW, N));
    assert_string_equal(tq_request_state_name(N), "?");
    for (int s = 0; s < N; s++) {
        assert_int_equal(tq_request_final(s), s == DONE || s == FAILED);
        assert_int_equal(tq_request_unacked(s),
                         s == QUEUED || s == SENT || s == DEFERRED);
    }
}

/* A request walks the longest legal path: sent, lost with its connection
   and queued again, refused as full, sent again, acknowledged, done. */
static void
test_request_walk(void **state)
{
    (void)state;
    tq_request_t *r = tq_request_new(TQ_KIND_SUBMIT, NULL);
    assert_non_null(r);
    assert_int_equal(r->state, NEW);
    const tq_req_state_t path[] = {QUEUED, SENT, QUEUED, SENT, DEFERRED,
                                   QUEUED, SENT, ACKED,  DONE};
    for (size_t i = 0; i < sizeof path / sizeof *path; i++) {
        tq_request_move(r, path[i]);
        assert_int_equal(r->state, path[i]);
    }
    tq_request_free(r);
}

/* A request's known name lengths go with its names: once its arguments
   are forgotten (acknowledged), no length is left over a NULL name that
   a send would read. */
static void
test_request_names_forgotten(void **state)
{
    (void)state;
    tq_request_t *r = tq_request_new(TQ_KIND_SUBMIT, NULL);
    assert_non_null(r);
    assert_int_equal(r->task_len, 0); /* not known: measured at the send */
    r->task = strdup("tq.echo");
    r->task_len = strlen(r->task);
    r->queue = strdup("default");
    r->queue_len = strlen(r->queue);
    tq_request_forget_args(r);
    assert_null(r->task);
    assert_null(r->queue);
    assert_int_equal(r->task_len, 0);
    assert_int_equal(r->queue_len, 0);
    tq_request_free(r);
}

/* Runs tq_request_move(from -> to) in a child: true if it aborted. */
static bool
s_move_aborts(tq_req_state_t from, tq_req_state_t to)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* the BUG line goes to stderr: expected here */
        tq_request_t *r = tq_request_new(TQ_KIND_GET, NULL);
        r->state = from;
        tq_request_move(r, to);
        tq_request_free(r);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

/* An illegal move is a bug of the I/O thread: it aborts (kept in release
   builds), a legal one does not. */
static void
test_request_illegal_aborts(void **state)
{
    (void)state;
    assert_true(s_move_aborts(DONE, QUEUED));
    assert_true(s_move_aborts(FAILED, SENT));
    assert_true(s_move_aborts(ACKED, QUEUED)); /* GET wait=true instead */
    assert_true(s_move_aborts(NEW, SENT)); /* never sent unqueued */
    assert_true(s_move_aborts(SENT, NEW));
    assert_true(s_move_aborts(SENT, SENT));
    assert_false(s_move_aborts(SENT, ACKED));
}

/* ---- the handle's lifecycle --------------------------------------------- */

static atomic_int s_ok_calls, s_err_calls;

static void
s_on_ok(tq_result_t *r, void *arg)
{
    (void)arg;
    /* inside its callback the handle reads final already */
    assert_true(tq_result_ready(r));
    atomic_fetch_add(&s_ok_calls, 1);
}

static void
s_on_err(tq_result_t *r, void *arg)
{
    (void)r;
    (void)arg;
    atomic_fetch_add(&s_err_calls, 1);
}

static void
test_handle_phases(void **state)
{
    (void)state;
    const int legal[][2] = {
        {TQ_RESULT_PENDING, TQ_RESULT_ANSWERED},
        {TQ_RESULT_PENDING, TQ_RESULT_FINAL},
        {TQ_RESULT_ANSWERED, TQ_RESULT_FINAL},
        {TQ_RESULT_FINAL, TQ_RESULT_READY},
    };
    int count = 0;
    for (int from = 0; from < TQ_RESULT_PHASES_; from++)
        for (int to = 0; to < TQ_RESULT_PHASES_; to++) {
            bool expected = false;
            for (size_t i = 0; i < 4; i++)
                expected |= legal[i][0] == from && legal[i][1] == to;
            assert_int_equal(tq_result_phase_legal(from, to), expected);
            count += expected;
        }
    assert_int_equal(count, 4);

    /* a handle driven as the I/O thread drives it */
    atomic_store(&s_ok_calls, 0);
    atomic_store(&s_err_calls, 0);
    tq_result_t *r = tq_result_make(TQ_KIND_SUBMIT, NULL);
    assert_non_null(r);
    r->callback = s_on_ok;
    r->error_callback = s_on_err;
    assert_int_equal(tq_result_phase(r), TQ_RESULT_PENDING);
    assert_false(tq_result_ready(r));
    assert_false(tq_result_answered(r));
    assert_int_equal(tq_result_code(r), TQ_ETIMEDOUT);
    assert_int_equal(tq_result_get(r, 0), TQ_ETIMEDOUT);
    tq_result_answer(r, TQ_STATE_RUNNING);
    assert_int_equal(tq_result_phase(r), TQ_RESULT_ANSWERED);
    assert_int_equal(tq_result_state(r), TQ_STATE_RUNNING);
    assert_true(tq_result_answered(r));
    assert_false(tq_result_ready(r));
    tq_result_answer(r, TQ_STATE_RUNNING); /* again: no move */
    zmq_msg_t value;
    zmq_msg_init_size(&value, 1);
    *(uint8_t *)zmq_msg_data(&value) = 0x07;
    tq_result_finish(r, TQ_STATE_SUCCESS, TQ_OK, NULL, 0, &value);
    zmq_msg_close(&value);
    assert_int_equal(tq_result_phase(r), TQ_RESULT_READY);
    assert_true(tq_result_ready(r));
    assert_true(tq_result_successful(r));
    assert_int_equal(tq_result_get(r, 0), TQ_OK);
    assert_int_equal(tq_result_value(r)->via.u64, 7);
    /* a final handle keeps its outcome, and its callback ran once */
    tq_result_fail(r, TQ_EUNREACHABLE, "too late");
    tq_result_answer(r, TQ_STATE_PENDING);
    assert_int_equal(tq_result_code(r), TQ_OK);
    assert_int_equal(tq_result_state(r), TQ_STATE_SUCCESS);
    assert_string_equal(tq_result_error(r), "");
    assert_int_equal(atomic_load(&s_ok_calls), 1);
    assert_int_equal(atomic_load(&s_err_calls), 0);
    tq_result_destroy(&r);
    assert_null(r);

    /* PENDING -> FINAL at once (a failure before any answer) */
    r = tq_result_make(TQ_KIND_SUBMIT, NULL);
    r->callback = s_on_ok;
    r->error_callback = s_on_err;
    tq_result_fail(r, TQ_EUNREACHABLE, "no broker");
    assert_int_equal(tq_result_phase(r), TQ_RESULT_READY);
    assert_false(tq_result_successful(r));
    assert_int_equal(tq_result_get(r, 0), TQ_EUNREACHABLE);
    assert_string_equal(tq_result_error(r), "no broker");
    assert_int_equal(atomic_load(&s_err_calls), 1);
    tq_result_destroy(&r);

    /* made final without a broker */
    r = tq_result_new_final(TQ_ETASK, "boom", NULL, 0);
    assert_int_equal(tq_result_phase(r), TQ_RESULT_READY);
    assert_int_equal(tq_result_get(r, 0), TQ_ETASK);
    tq_result_destroy(&r);
}

/* ---- through the public API, against a fake broker ---------------------- */

/* The fake broker of tests/support/tq_fake_broker.h. */
typedef tq_fake_broker_t s_fake_t;

static int
s_setup(void **state)
{
    tq_harness_init();
    *state = tq_fake_broker_new();
    atomic_store(&s_ok_calls, 0);
    atomic_store(&s_err_calls, 0);
    return 0;
}

static int
s_teardown(void **state)
{
    s_fake_t *self = *state;
    tq_fake_broker_destroy(&self);
    return 0;
}

static int
s_fake_bind(s_fake_t *self)
{
    return tq_fake_broker_bind(self, S_WAIT_MS);
}

static void
s_fake_send(s_fake_t *self, tq_msg_t *msg, const void *payload, size_t size)
{
    tq_fake_broker_send(self, msg, payload, size);
}

/* Waits for a message of command (answering PINGs). True if it came. */
static bool
s_fake_expect(s_fake_t *self, uint8_t command)
{
    return tq_fake_broker_expect(self, command, S_WAIT_MS);
}

static void
s_fake_result(s_fake_t *self, const char *id, int state, int code,
              const char *error, uint8_t value)
{
    tq_fake_broker_result(self, id, state, code, error, value);
}

static void
s_fake_ack(s_fake_t *self, const char *id)
{
    tq_fake_broker_ack(self, id);
}

/* A fetch whose answer comes after everything sent before it on the one
   connection: once it is ready, the client has handled all of that. */
static void
s_fence(s_fake_t *fake, tq_client_t *client)
{
    tq_result_t *f = tq_client_fetch(client, "fence", true);
    assert_true(s_fake_expect(fake, TQ_CMD_GET));
    assert_string_equal(fake->id, "fence");
    s_fake_result(fake, "fence", TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    assert_int_equal(tq_result_get(f, S_WAIT_MS), TQ_OK);
    tq_result_destroy(&f);
}

/* A client of the fake broker; its liveness (a minute) ends no handle
   here. */
static tq_client_t *
s_client(s_fake_t *fake)
{
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    return client;
}

/* Options whose callbacks count in s_ok_calls and s_err_calls. */
static tq_options_t
s_counted(void)
{
    tq_options_t o = TQ_OPTIONS_INIT;
    o.callback = s_on_ok;
    o.error_callback = s_on_err;
    return o;
}

#define MOVES(c, a, b) tq_client_moves((c), TQ_REQ_##a, TQ_REQ_##b)

/* ---- waiting on a handle (asleep on its phase word) --------------------- */

/* A caller waiting on a handle from a thread of its own: for the answer
   or the end, up to timeout_ms, holding its own reference or not. */
typedef struct {
    tq_result_t *h;
    bool answer; /* tq_result_wait_answer, else tq_result_wait */
    bool own_ref; /* holds a reference of its own while it waits */
    int timeout_ms;
    int rc;
    atomic_bool done;
} s_waiter_t;

static void *
s_waiter_run(void *arg)
{
    s_waiter_t *w = arg;
    w->rc = w->answer ? tq_result_wait_answer(w->h, w->timeout_ms)
                      : tq_result_wait(w->h, w->timeout_ms);
    if (w->own_ref)
        tq_result_release(w->h);
    atomic_store(&w->done, true);
    return NULL;
}

/* Waits (bounded) until n callers sleep on h. */
static void
s_until_sleepers(tq_result_t *h, int n)
{
    int64_t deadline = zclock_mono() + S_WAIT_MS;
    while (atomic_load(&h->sleepers) != n) {
        assert_true(zclock_mono() < deadline);
        zclock_sleep(1);
    }
}

/* Several callers asleep on one handle: the answer wakes the one waiting
   for it and no other; the end wakes every one, each with TQ_OK; one
   holding its own reference ends well after the caller let go of the
   handle while it slept; a bounded wait on a handle that does not move
   ends TQ_ETIMEDOUT and leaves no sleeper behind. */
static void
test_handle_waiters(void **state)
{
    (void)state;
    tq_result_t *h = tq_result_make(TQ_KIND_SUBMIT, NULL);
    assert_non_null(h);
    /* a bounded wait that ends first */
    assert_int_equal(tq_result_wait(h, 20), TQ_ETIMEDOUT);
    assert_int_equal(tq_result_wait_answer(h, 20), TQ_ETIMEDOUT);
    assert_int_equal(atomic_load(&h->sleepers), 0);
    assert_int_equal(atomic_load(&h->answer_waiters), 0);
    enum { W = 4 };
    s_waiter_t w[W];
    pthread_t t[W];
    for (int i = 0; i < W; i++) {
        w[i] = (s_waiter_t){.h = h,
                            .answer = i == 0,
                            .own_ref = i == W - 1,
                            .timeout_ms = i == 1 ? -1 : S_WAIT_MS,
                            .rc = -1};
        if (w[i].own_ref)
            tq_result_hold(h);
        assert_int_equal(pthread_create(&t[i], NULL, s_waiter_run, &w[i]), 0);
    }
    s_until_sleepers(h, W);
    tq_result_answer(h, TQ_STATE_RUNNING);
    assert_int_equal(pthread_join(t[0], NULL), 0);
    assert_int_equal(w[0].rc, TQ_OK);
    /* the others sleep on: the answer is not the end */
    s_until_sleepers(h, W - 1);
    for (int i = 1; i < W; i++)
        assert_false(atomic_load(&w[i].done));
    /* the caller lets go while the last one still waits on it */
    tq_result_t *last = h;
    tq_result_destroy(&last);
    uint8_t value = 0x2a;
    zmq_msg_t msg;
    zmq_msg_init_size(&msg, 1);
    memcpy(zmq_msg_data(&msg), &value, 1);
    /* the I/O thread's reference, which ends the handle */
    tq_result_hold(h);
    tq_result_finish(h, TQ_STATE_SUCCESS, TQ_OK, NULL, 0, &msg);
    zmq_msg_close(&msg);
    for (int i = 1; i < W; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(w[i].rc, TQ_OK);
    }
    assert_int_equal(atomic_load(&h->sleepers), 0);
    assert_int_equal(tq_result_code(h), TQ_OK);
    tq_result_release(h);
}

/* A wakeup held back (tq_result_hold_wakeups, the I/O thread reading a
   burst) still reaches the sleeper at the release; one whose handle ends
   while held does not wait for its timeout. */
static void
test_handle_held_wakeup(void **state)
{
    (void)state;
    tq_result_t *h = tq_result_make(TQ_KIND_SUBMIT, NULL);
    assert_non_null(h);
    s_waiter_t w = {.h = h, .timeout_ms = -1, .rc = -1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_waiter_run, &w), 0);
    s_until_sleepers(h, 1);
    tq_result_hold_wakeups();
    tq_result_fail(h, TQ_ECLOSED, "closed");
    tq_result_release_wakeups();
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(w.rc, TQ_OK);
    assert_int_equal(tq_result_code(h), TQ_ECLOSED);
    assert_string_equal(tq_result_error(h), "closed");
    tq_result_destroy(&h);
}

/* A submission through its whole life: not ready while pending, answered
   once SUBMITTED, ready and successful with its value once the RESULT
   comes; its callback fired once, a duplicate RESULT changes nothing. */
static void
test_lifecycle_success(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = s_client(fake);
    tq_options_t o = s_counted();
    tq_result_t *r = tq_apply_async(client, "tq.echo", &o, "i", (int64_t)3);
    assert_non_null(r);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    assert_string_equal(fake->id, tq_result_id(r));
    assert_false(tq_result_ready(r));
    assert_false(tq_result_successful(r));
    assert_int_equal(tq_result_code(r), TQ_ETIMEDOUT);
    assert_int_equal(tq_result_wait(r, 0), TQ_ETIMEDOUT);
    assert_int_equal(tq_result_state(r), TQ_STATE_PENDING);

    s_fake_ack(fake, tq_result_id(r));
    assert_int_equal(tq_result_wait_answer(r, S_WAIT_MS), TQ_OK);
    assert_false(tq_result_ready(r));
    tq_msg_t st = {.command = TQ_CMD_STATE,
                   .id = tq_str(tq_result_id(r)),
                   .state = TQ_STATE_RUNNING};
    s_fake_send(fake, &st, NULL, 0);
    s_fence(fake, client);
    assert_int_equal(tq_result_state(r), TQ_STATE_RUNNING);
    assert_false(tq_result_ready(r));

    s_fake_result(fake, tq_result_id(r), TQ_STATE_SUCCESS, TQ_OK, NULL, 9);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_OK);
    assert_true(tq_result_ready(r));
    assert_true(tq_result_successful(r));
    assert_int_equal(tq_result_wait(r, 0), TQ_OK);
    assert_int_equal(tq_result_value(r)->via.u64, 9);
    assert_int_equal(tq_result_attempts(r), 1);
    /* the same RESULT again: nobody waits on the id any more */
    s_fake_result(fake, tq_result_id(r), TQ_STATE_FAILURE, TQ_ETASK, "x", 0);
    s_fence(fake, client);
    assert_int_equal(tq_result_code(r), TQ_OK);
    assert_int_equal(atomic_load(&s_ok_calls), 1);
    assert_int_equal(atomic_load(&s_err_calls), 0);
    /* the submission and the two fences: each request once along its
       path, nothing failed */
    assert_int_equal(MOVES(client, NEW, QUEUED), 3);
    assert_int_equal(MOVES(client, QUEUED, SENT), 3);
    assert_int_equal(MOVES(client, SENT, ACKED), 1);
    assert_int_equal(MOVES(client, ACKED, DONE), 1);
    assert_int_equal(MOVES(client, SENT, DONE), 2);
    assert_int_equal(MOVES(client, SENT, QUEUED), 0);
    for (int s = 0; s < N; s++)
        assert_int_equal(tq_client_moves(client, s, FAILED), 0);
    tq_result_destroy(&r);
    tq_client_destroy(&client);
}

/* Waits (bounded) until the I/O thread sleeps: io_lock is free. */
static void
s_wait_io_asleep(tq_client_t *client)
{
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (pthread_mutex_trylock(&client->io_lock) != 0) {
        assert_true(tq_harness_now_ms() < deadline);
        tq_harness_sleep_ms(1);
    }
    pthread_mutex_unlock(&client->io_lock);
}

/* Takes io_lock once the I/O thread sleeps in its poll watching the
   socket, as the caller that holds the socket when an answer comes finds
   it. io_lock free is not enough: a caller that read its own answer may
   have left it asleep without the socket (io_socketless), and a wakeup
   may be pending for it (wake_fd; the request just sent wakes it from
   there), or come while this thread holds io_lock; on a loaded machine
   it runs late, finds io_lock held, and asks for it instead of leaving
   the socket to its holder. Gives it back as a caller would meanwhile. */
static void
s_lock_io_watching(tq_client_t *client)
{
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    for (;;) {
        if (pthread_mutex_trylock(&client->io_lock) == 0) {
            struct pollfd wake = {client->wake_fd, POLLIN, 0};
            if (!atomic_load(&client->io_socketless) &&
                !atomic_load(&client->io_handback) && poll(&wake, 1, 0) == 0)
                return;
            pthread_mutex_unlock(&client->io_lock);
            if (atomic_exchange(&client->io_handback, false) ||
                atomic_load(&client->io_socketless)) {
                uint64_t one = 1;
                assert_int_equal(write(client->wake_fd, &one, sizeof one),
                                 sizeof one);
            }
        }
        assert_true(tq_harness_now_ms() < deadline);
        tq_harness_sleep_ms(1);
    }
}

/* Waits, holding io_lock, for the I/O thread to find it held when the
   socket woke it (io_handback); lets go of io_lock whatever happens, so
   that a failure does not leave the I/O thread blocked. */
static void
s_wait_handback(tq_client_t *client)
{
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (!atomic_load(&client->io_handback) && tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(1);
    bool handback = atomic_load(&client->io_handback);
    pthread_mutex_unlock(&client->io_lock);
    assert_true(handback);
}

/* One round trip through the fake broker: SUBMIT, SUBMITTED, RESULT. */
static void
s_round_trip(s_fake_t *fake, tq_client_t *client)
{
    tq_result_t *r = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)1);
    assert_non_null(r);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    assert_string_equal(fake->id, tq_result_id(r));
    s_fake_ack(fake, tq_result_id(r));
    s_fake_result(fake, tq_result_id(r), TQ_STATE_SUCCESS, TQ_OK, NULL, 1);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_OK);
    tq_result_destroy(&r);
}

/* A caller whose client's I/O thread sleeps sends its request itself (no
   hop through the I/O thread), and the answer still reaches its handle;
   a request queued for the I/O thread (it held the socket then) goes out
   before one a caller sends itself after it. */
static void
test_caller_sends(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = s_client(fake);
    s_round_trip(fake, client); /* connected from here on */
    uint64_t before = tq_client_sent_by_caller(client);
    /* the I/O thread may wake (a tick) between the look and the submit:
       a bounded number of tries */
    for (int i = 0; i < 20 && tq_client_sent_by_caller(client) == before; i++) {
        s_wait_io_asleep(client);
        s_round_trip(fake, client);
    }
    assert_true(tq_client_sent_by_caller(client) > before);

    /* A finds io_lock held: it is queued for the I/O thread; B comes after
       and may be sent by its caller: A first on the wire all the same */
    s_wait_io_asleep(client);
    pthread_mutex_lock(&client->io_lock);
    tq_result_t *a = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)1);
    pthread_mutex_unlock(&client->io_lock);
    tq_result_t *b = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)2);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    assert_string_equal(fake->id, tq_result_id(a));
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    assert_string_equal(fake->id, tq_result_id(b));
    s_fake_result(fake, tq_result_id(b), TQ_STATE_SUCCESS, TQ_OK, NULL, 2);
    s_fake_result(fake, tq_result_id(a), TQ_STATE_SUCCESS, TQ_OK, NULL, 1);
    assert_int_equal(tq_result_get(a, S_WAIT_MS), TQ_OK);
    assert_int_equal(tq_result_get(b, S_WAIT_MS), TQ_OK);
    assert_int_equal(tq_result_value(a)->via.u64, 1);
    assert_int_equal(tq_result_value(b)->via.u64, 2);
    assert_int_equal(MOVES(client, SENT, QUEUED), 0);
    tq_result_destroy(&a);
    tq_result_destroy(&b);

    /* a request made while another is awaited (a burst) goes through the
       I/O thread, even while it sleeps */
    tq_result_t *c1 = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)3);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    s_wait_io_asleep(client);
    uint64_t sent = tq_client_sent_by_caller(client);
    tq_result_t *c2 = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)4);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    assert_string_equal(fake->id, tq_result_id(c2));
    assert_int_equal(tq_client_sent_by_caller(client), sent);
    s_fake_result(fake, tq_result_id(c1), TQ_STATE_SUCCESS, TQ_OK, NULL, 3);
    s_fake_result(fake, tq_result_id(c2), TQ_STATE_SUCCESS, TQ_OK, NULL, 4);
    assert_int_equal(tq_result_get(c1, S_WAIT_MS), TQ_OK);
    assert_int_equal(tq_result_get(c2, S_WAIT_MS), TQ_OK);
    tq_result_destroy(&c1);
    tq_result_destroy(&c2);
    tq_client_destroy(&client);
}

static pthread_t s_callback_thread;

static void
s_on_ok_where(tq_result_t *r, void *arg)
{
    (void)arg;
    assert_true(tq_result_ready(r));
    s_callback_thread = pthread_self();
    atomic_fetch_add(&s_ok_calls, 1);
}

/* A caller waiting on a handle while the I/O thread sleeps reads the
   answer off the socket itself; a handle with a callback is still
   finished on the I/O thread (the callback never runs on the caller),
   and before get returns. */
static void
test_caller_reads(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = s_client(fake);
    s_round_trip(fake, client);
    tq_options_t o = TQ_OPTIONS_INIT;
    o.callback = s_on_ok_where;
    tq_result_t *r = tq_apply_async(client, "tq.echo", &o, "i", (int64_t)5);
    assert_non_null(r);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    /* the answer comes while this thread holds the socket: the I/O thread
       wakes, finds it held and sleeps without the socket (io_handback) */
    s_lock_io_watching(client);
    s_fake_ack(fake, tq_result_id(r));
    s_fake_result(fake, tq_result_id(r), TQ_STATE_SUCCESS, TQ_OK, NULL, 5);
    s_wait_handback(client);
    uint64_t led = tq_client_led(client);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_OK);
    assert_true(tq_client_led(client) > led);
    assert_int_equal(atomic_load(&s_ok_calls), 1);
    assert_false(pthread_equal(s_callback_thread, pthread_self()));
    assert_int_equal(tq_result_value(r)->via.u64, 5);
    tq_result_destroy(&r);
    /* the I/O thread has the socket again: the next answers reach it */
    s_round_trip(fake, client);
    tq_client_destroy(&client);
}

/* A handle whose callbacks are the library's own bookkeeping
   (tq_result_callbacks_anywhere, the pool's tracking): a caller that reads
   the answer itself runs them and finishes the handle there, without a
   hop through the I/O thread. */
static void
test_caller_runs_own_callbacks(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = s_client(fake);
    s_round_trip(fake, client);
    tq_options_t o = TQ_OPTIONS_INIT;
    o.callback = s_on_ok_where;
    tq_result_t *r = tq_apply_async(client, "tq.echo", &o, "i", (int64_t)6);
    assert_non_null(r);
    tq_result_callbacks_anywhere(r);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    s_lock_io_watching(client);
    s_fake_ack(fake, tq_result_id(r));
    s_fake_result(fake, tq_result_id(r), TQ_STATE_SUCCESS, TQ_OK, NULL, 6);
    s_wait_handback(client);
    int calls = atomic_load(&s_ok_calls);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_OK);
    assert_int_equal(atomic_load(&s_ok_calls), calls + 1);
    assert_true(pthread_equal(s_callback_thread, pthread_self()));
    assert_int_equal(tq_result_value(r)->via.u64, 6);
    tq_result_destroy(&r);
    s_round_trip(fake, client);
    tq_client_destroy(&client);
}

/* A SUBMIT allows a folded acknowledgement (features TQ_FEATURE_FOLD,
   PROTOCOL.md 5.1) unless the client turned it off (tq submit); the
   task's RESULT alone, no SUBMITTED, ends its handle, counted as done
   straight from SENT; a SUBMITTED after it changes nothing. */
static void
test_folded_ack(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = s_client(fake);
    tq_result_t *r = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)7);
    assert_non_null(r);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    assert_int_equal(fake->msg.features & TQ_FEATURE_FOLD, TQ_FEATURE_FOLD);
    uint64_t acked = MOVES(client, SENT, ACKED);
    uint64_t done = MOVES(client, SENT, DONE);
    s_fake_result(fake, tq_result_id(r), TQ_STATE_SUCCESS, TQ_OK, NULL, 7);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_OK);
    assert_int_equal(tq_result_value(r)->via.u64, 7);
    assert_int_equal(MOVES(client, SENT, DONE), done + 1);
    s_fake_ack(fake, tq_result_id(r)); /* late: nobody waits for it */
    s_fence(fake, client);
    assert_int_equal(MOVES(client, SENT, ACKED), acked);
    assert_int_equal(tq_result_code(r), TQ_OK);
    tq_result_destroy(&r);

    tq_client_set_fold(client, false);
    r = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)8);
    assert_non_null(r);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    assert_int_equal(fake->msg.features & TQ_FEATURE_FOLD, 0);
    s_fake_ack(fake, tq_result_id(r));
    assert_int_equal(tq_result_wait_answer(r, S_WAIT_MS), TQ_OK);
    s_fake_result(fake, tq_result_id(r), TQ_STATE_SUCCESS, TQ_OK, NULL, 8);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_OK);
    tq_result_destroy(&r);
    tq_client_destroy(&client);
}

/* A task that fails: its error callback fires once, get says TQ_ETASK
   with the task's text; a handle the caller let go still gets its
   callback. */
static void
test_lifecycle_failure(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = s_client(fake);
    tq_options_t o = s_counted();
    tq_result_t *r = tq_apply_async(client, "tq.fail", &o, "s", "boom");
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    s_fake_ack(fake, fake->id);
    s_fake_result(fake, fake->id, TQ_STATE_FAILURE, TQ_ETASK, "boom", 0);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_ETASK);
    assert_false(tq_result_successful(r));
    assert_string_equal(tq_result_error(r), "boom");
    assert_null(tq_result_value(r));
    assert_int_equal(atomic_load(&s_err_calls), 1);
    tq_result_destroy(&r);

    /* let go before the result: the callback still fires, once */
    tq_result_t *gone = tq_apply_async(client, "tq.echo", &o, "i", (int64_t)1);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    char id[TQ_PROTO_MAX_ID + 1];
    snprintf(id, sizeof id, "%s", fake->id);
    tq_result_destroy(&gone);
    s_fake_ack(fake, id);
    s_fake_result(fake, id, TQ_STATE_SUCCESS, TQ_OK, NULL, 1);
    s_fence(fake, client);
    assert_int_equal(atomic_load(&s_ok_calls), 1);
    assert_int_equal(atomic_load(&s_err_calls), 1);

    /* a pending handle when the client is destroyed ends TQ_ECLOSED */
    tq_result_t *left = tq_apply_async(client, "tq.echo", &o, "i", (int64_t)2);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    tq_client_destroy(&client);
    assert_int_equal(tq_result_get(left, 0), TQ_ECLOSED);
    assert_int_equal(atomic_load(&s_err_calls), 2);
    tq_result_destroy(&left);
}

/* The broker dies after reading a SUBMIT and another comes up on the same
   endpoint: the request goes SENT -> QUEUED -> SENT once, under the same
   id, is acknowledged, and its handle ends once with the result (asked
   for by GET wait=true, the id may have been known). */
static void
test_resend_keeps_one_state(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = s_client(fake);
    tq_options_t o = s_counted();
    tq_result_t *r = tq_apply_async(client, "tq.echo", &o, "i", (int64_t)4);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    char id[TQ_PROTO_MAX_ID + 1];
    snprintf(id, sizeof id, "%s", fake->id);
    tq_fake_broker_close(fake);
    assert_int_equal(s_fake_bind(fake), 0);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
    assert_string_equal(fake->id, id);
    assert_false(tq_result_ready(r));
    assert_int_equal(tq_result_phase(r), TQ_RESULT_PENDING);
    s_fake_ack(fake, id);
    assert_true(s_fake_expect(fake, TQ_CMD_GET));
    assert_string_equal(fake->id, id);
    assert_true(fake->msg.wait);
    assert_int_equal(tq_result_phase(r), TQ_RESULT_ANSWERED);
    s_fake_result(fake, id, TQ_STATE_SUCCESS, TQ_OK, NULL, 4);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_OK);
    assert_int_equal(atomic_load(&s_ok_calls), 1);
    assert_int_equal(atomic_load(&s_err_calls), 0);
    assert_int_equal(MOVES(client, SENT, QUEUED), 1);
    assert_int_equal(MOVES(client, QUEUED, SENT), 2);
    assert_int_equal(MOVES(client, SENT, ACKED), 1);
    assert_int_equal(MOVES(client, ACKED, DONE), 1);
    tq_result_destroy(&r);
    tq_client_destroy(&client);
}

/* A SUBMIT refused as full with block_when_full waits (DEFERRED) and is
   sent again under its id; a second refusal defers it again; then it is
   accepted and ends once. */
static void
test_full_deferred(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = s_client(fake);
    tq_options_t o = s_counted();
    o.block_when_full = true;
    tq_result_t *r = tq_apply_async(client, "tq.echo", &o, "i", (int64_t)5);
    char id[TQ_PROTO_MAX_ID + 1];
    for (int i = 0; i < 3; i++) {
        assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT));
        if (i == 0)
            snprintf(id, sizeof id, "%s", fake->id);
        assert_string_equal(fake->id, id);
        if (i < 2) {
            tq_msg_t full = {.command = TQ_CMD_ERROR,
                             .id = tq_str(id),
                             .code = TQ_EFULL,
                             .error = tq_str("queue full")};
            s_fake_send(fake, &full, NULL, 0);
        }
    }
    assert_false(tq_result_ready(r));
    s_fake_ack(fake, id);
    s_fake_result(fake, id, TQ_STATE_SUCCESS, TQ_OK, NULL, 5);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_OK);
    assert_int_equal(atomic_load(&s_ok_calls), 1);
    assert_int_equal(MOVES(client, SENT, DEFERRED), 2);
    assert_int_equal(MOVES(client, DEFERRED, QUEUED), 2);
    assert_int_equal(MOVES(client, QUEUED, SENT), 3);
    assert_int_equal(MOVES(client, ACKED, DONE), 1);
    tq_result_destroy(&r);
    tq_client_destroy(&client);
}

/* tq_apply_async that returns NULL says why: a code and a text naming
   what is wrong; nothing reaches the broker and no request is made. */
static void
test_apply_async_says_why(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = tq_client_new(fake->endpoint);
    const char *text = NULL;
    assert_null(tq_apply_async(client, "bad name!", NULL, "i", (int64_t)1));
    assert_int_equal(tq_client_last_error(&text), TQ_EINVAL);
    assert_non_null(strstr(text, "invalid task name"));
    assert_null(tq_apply_async(client, "tq.echo", NULL, "?", 1));
    assert_int_equal(tq_client_last_error(&text), TQ_EINVAL);
    assert_non_null(strstr(text, "picture \"?\""));
    tq_options_t o = TQ_OPTIONS_INIT;
    o.priority = 10;
    assert_null(tq_apply_async(client, "tq.echo", &o, "i", (int64_t)1));
    assert_int_equal(tq_client_last_error(&text), TQ_EINVAL);
    assert_string_equal(text, "priority out of range (0..9)");
    o.priority = 0;
    o.id = "no spaces";
    assert_null(tq_apply_async(client, "tq.echo", &o, "i", (int64_t)1));
    assert_non_null(strstr(text, "invalid id"));
    assert_null(tq_apply_async_raw(client, "tq.echo", NULL, NULL, 0));
    assert_int_equal(tq_client_last_error(&text), TQ_EINVAL);
    assert_null(tq_apply(client, "tq.echo", NULL, 0, "?", 1));
    assert_non_null(strstr(text, "picture"));
    assert_null(tq_client_fetch(client, "bad id", true));
    assert_int_equal(tq_client_last_error(&text), TQ_EINVAL);
    assert_non_null(strstr(text, "invalid id"));
    for (int s = 0; s < N; s++)
        assert_int_equal(tq_client_moves(client, NEW, s), 0);
    tq_client_destroy(&client);
}

/* A list of brokers: split on commas (spaces around them ignored), the
   first one used first; an empty or invalid member refuses the list. */
static void
test_endpoint_list(void **state)
{
    (void)state;
    tq_client_t *client =
        tq_client_new("tcp://127.0.0.1:1 , tcp://127.0.0.1:2,ipc:///tmp/x");
    assert_non_null(client);
    assert_int_equal(client->endpoint_count, 3);
    assert_string_equal(client->endpoints[0], "tcp://127.0.0.1:1");
    assert_string_equal(client->endpoints[1], "tcp://127.0.0.1:2");
    assert_string_equal(client->endpoints[2], "ipc:///tmp/x");
    assert_string_equal(tq_client_current_endpoint(client),
                        "tcp://127.0.0.1:1");
    assert_int_equal(tq_client_broker_moves(client), 0);
    tq_client_destroy(&client);
    assert_null(tq_client_new("tcp://127.0.0.1:1,,tcp://127.0.0.1:2"));
    assert_null(tq_client_new("tcp://127.0.0.1:1,"));
    assert_null(tq_client_new("tcp://127.0.0.1:1,127.0.0.1:2"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_table),
        cmocka_unit_test(test_request_walk),
        cmocka_unit_test(test_request_names_forgotten),
        cmocka_unit_test(test_request_illegal_aborts),
        cmocka_unit_test(test_handle_phases),
        cmocka_unit_test(test_handle_waiters),
        cmocka_unit_test(test_handle_held_wakeup),
        cmocka_unit_test(test_endpoint_list),
        cmocka_unit_test_setup_teardown(test_lifecycle_success, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_caller_sends, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_caller_reads, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_caller_runs_own_callbacks, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_folded_ack, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_failure, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_resend_keeps_one_state, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_full_deferred, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_apply_async_says_why, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
