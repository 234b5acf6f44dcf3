/* test_e2e_basic.c - end to end through real tq-broker and tq-worker
   processes: apply_async/get, large arguments and values (values sharing
   their arguments' buffer), task errors, get timeouts, unserved tasks,
   fetch by id, callbacks, map order, priorities, an unreachable broker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "tq_harness.h"

#define S_GET_MS 20000 /* bound on any get() expected to succeed */

/* Records callback invocations; callbacks run on the client's I/O thread. */
typedef struct {
    pthread_mutex_t lock;
    int ok_calls; /* callback (success) invocations */
    int err_calls; /* error_callback invocations */
    void *ok_arg, *err_arg; /* arg each one received */
    int ok_code, err_code; /* tq_result_code in the callback */
    bool ok_successful; /* tq_result_successful in the callback */
    char ok_id[65], err_id[65]; /* tq_result_id in the callback */
    char err_text[256]; /* tq_result_error in the callback */
    int order[64]; /* slot indices in completion order */
    size_t order_count;
    char order_ids[64][65]; /* ids in completion order */
} s_recorder_t;

/* callback_arg of one task when a test needs to know which task finished. */
typedef struct {
    s_recorder_t *recorder;
    int index;
} s_slot_t;

/* One recorder for the whole run, not on a test's stack: a failed assert
   leaves the test early, and a callback still pending must not write into
   a dead frame. The teardown destroys the client (its I/O thread) before
   the next test resets it. */
static s_recorder_t s_rec = {.lock = PTHREAD_MUTEX_INITIALIZER};
static s_slot_t s_slots[64];

static s_recorder_t *
s_recorder_reset(void)
{
    pthread_mutex_lock(&s_rec.lock);
    s_rec.ok_calls = s_rec.err_calls = 0;
    s_rec.ok_arg = s_rec.err_arg = NULL;
    s_rec.ok_code = s_rec.err_code = -1;
    s_rec.ok_successful = false;
    s_rec.ok_id[0] = s_rec.err_id[0] = s_rec.err_text[0] = '\0';
    s_rec.order_count = 0;
    pthread_mutex_unlock(&s_rec.lock);
    for (size_t i = 0; i < 64; i++) {
        s_slots[i].recorder = &s_rec;
        s_slots[i].index = (int)i;
    }
    return &s_rec;
}

/* A copy of the recorder taken under its lock, so asserts (which may leave
   the test) never run with the lock held. */
static void
s_recorder_snapshot(s_recorder_t *self, s_recorder_t *copy)
{
    pthread_mutex_lock(&self->lock);
    /* field by field: a mutex is not copied */
    copy->ok_calls = self->ok_calls;
    copy->err_calls = self->err_calls;
    copy->ok_arg = self->ok_arg;
    copy->err_arg = self->err_arg;
    copy->ok_code = self->ok_code;
    copy->err_code = self->err_code;
    copy->ok_successful = self->ok_successful;
    memcpy(copy->ok_id, self->ok_id, sizeof copy->ok_id);
    memcpy(copy->err_id, self->err_id, sizeof copy->err_id);
    memcpy(copy->err_text, self->err_text, sizeof copy->err_text);
    memcpy(copy->order, self->order, sizeof copy->order);
    copy->order_count = self->order_count;
    memcpy(copy->order_ids, self->order_ids, sizeof copy->order_ids);
    pthread_mutex_unlock(&self->lock);
}

static void
s_on_ok(tq_result_t *result, void *arg)
{
    s_recorder_t *self = arg;
    pthread_mutex_lock(&self->lock);
    self->ok_calls++;
    self->ok_arg = arg;
    self->ok_code = tq_result_code(result);
    self->ok_successful = tq_result_successful(result);
    snprintf(self->ok_id, sizeof self->ok_id, "%s", tq_result_id(result));
    pthread_mutex_unlock(&self->lock);
}

static void
s_on_err(tq_result_t *result, void *arg)
{
    s_recorder_t *self = arg;
    pthread_mutex_lock(&self->lock);
    self->err_calls++;
    self->err_arg = arg;
    self->err_code = tq_result_code(result);
    snprintf(self->err_id, sizeof self->err_id, "%s", tq_result_id(result));
    snprintf(self->err_text, sizeof self->err_text, "%s",
             tq_result_error(result));
    pthread_mutex_unlock(&self->lock);
}

/* Appends the slot's index (and the result's id) to the completion order. */
static void
s_on_slot(tq_result_t *result, void *arg)
{
    s_slot_t *slot = arg;
    s_recorder_t *self = slot->recorder;
    pthread_mutex_lock(&self->lock);
    if (self->order_count < 64) {
        snprintf(self->order_ids[self->order_count], 65, "%s",
                 tq_result_id(result));
        self->order[self->order_count++] = slot->index;
    }
    pthread_mutex_unlock(&self->lock);
}

/* Waits (bounded) until ok+err calls or order entries reach `count`. */
static bool
s_recorder_wait(s_recorder_t *self, int calls, size_t order, int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    for (;;) {
        pthread_mutex_lock(&self->lock);
        bool done = self->ok_calls + self->err_calls >= calls &&
            self->order_count >= order;
        pthread_mutex_unlock(&self->lock);
        if (done)
            return true;
        if (tq_harness_now_ms() >= deadline)
            return false;
        tq_harness_sleep_ms(5);
    }
}


/* Broker, client and one worker host with `children` children. */
static void
s_start(tq_harness_env_t *env, int children, const char *const extra[])
{
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    assert_true(tq_harness_env_add_worker(env, children, extra, true) > 0);
}

/* Asserts value is the array [i, s] (tq.echo returns its arguments). */
static void
s_assert_echo_is(const msgpack_object *value, int64_t i, const char *s)
{
    assert_non_null(value);
    assert_int_equal(value->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(value->via.array.size, 2);
    const msgpack_object *a = value->via.array.ptr;
    assert_int_equal(a[0].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(a[0].via.u64, (uint64_t)i);
    assert_true(tq_harness_str_eq(&a[1], s));
}

static double
s_number(const msgpack_object *obj)
{
    switch (obj->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return (double)obj->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return (double)obj->via.i64;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return obj->via.f64;
    default:
        fail_msg("not a number: msgpack type %d", (int)obj->type);
        return 0;
    }
}

/* Fills size bytes with a pattern of seed. */
static void
s_fill(uint8_t *bytes, size_t size, unsigned seed)
{
    for (size_t i = 0; i < size; i++)
        bytes[i] = (uint8_t)(i * 31 + seed * 7 + (i >> 12));
}

/* Asserts value is [bin] with the pattern of seed over size bytes. */
static void
s_assert_bin_echo(const msgpack_object *value, size_t size, unsigned seed)
{
    assert_non_null(value);
    assert_int_equal(value->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(value->via.array.size, 1);
    const msgpack_object *b = &value->via.array.ptr[0];
    assert_int_equal(b->type, MSGPACK_OBJECT_BIN);
    assert_int_equal(b->via.bin.size, size);
    uint8_t *want = malloc(size);
    assert_non_null(want);
    s_fill(want, size, seed);
    assert_memory_equal(b->via.bin.ptr, want, size);
    free(want);
}

/* Large arguments and values, every byte right whatever buffer carried
   them: rounds of 64 KiB echoes (the child hands a large value's buffer to
   libzmq and packs the next one into a new buffer; the client moves a
   value into a spare argument buffer), a larger one after them (the
   child's buffer grows) and a small one (copied). */
static void
test_echo_large(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, 2, NULL);
    enum { ROUNDS = 3, N = 40, SIZE = 65536, BIG = 300000 };
    uint8_t *bytes = malloc(BIG);
    assert_non_null(bytes);
    tq_result_t *results[N];
    for (unsigned round = 0; round < ROUNDS; round++) {
        for (unsigned i = 0; i < N; i++) {
            s_fill(bytes, SIZE, round * N + i);
            results[i] = tq_apply_async(env->client, "tq.echo", NULL, "p",
                                        bytes, (size_t)SIZE);
            assert_non_null(results[i]);
        }
        for (unsigned i = 0; i < N; i++) {
            assert_int_equal(tq_result_get(results[i], S_GET_MS), TQ_OK);
            s_assert_bin_echo(tq_result_value(results[i]), SIZE, round * N + i);
        }
        for (unsigned i = 0; i < N; i++)
            tq_result_destroy(&results[i]);
    }
    s_fill(bytes, BIG, 1000);
    tq_result_t *big = tq_apply(env->client, "tq.echo", NULL, S_GET_MS, "p",
                                bytes, (size_t)BIG);
    assert_non_null(big);
    assert_int_equal(tq_result_code(big), TQ_OK);
    s_assert_bin_echo(tq_result_value(big), BIG, 1000);
    tq_result_destroy(&big);
    s_fill(bytes, 100, 1001);
    tq_result_t *small = tq_apply(env->client, "tq.echo", NULL, S_GET_MS, "p",
                                  bytes, (size_t)100);
    assert_non_null(small);
    assert_int_equal(tq_result_code(small), TQ_OK);
    s_assert_bin_echo(tq_result_value(small), 100, 1001);
    tq_result_destroy(&small);
    free(bytes);
}

/* Asserts value is a bin with the pattern of seed over size bytes. */
static void
s_assert_bin_is(const msgpack_object *value, size_t size, unsigned seed)
{
    assert_non_null(value);
    assert_int_equal(value->type, MSGPACK_OBJECT_BIN);
    assert_int_equal(value->via.bin.size, size);
    uint8_t *want = malloc(size);
    assert_non_null(want);
    s_fill(want, size, seed);
    assert_memory_equal(value->via.bin.ptr, want, size);
    free(want);
}

/* Values that are runs of their arguments leave the child sharing the
   argument frame's buffer (worker/tq_value.h): every byte still right,
   for the whole frame (tq.echo), a part of it (test.first: one argument
   returned alone, more arguments after it), a task rerun after its child
   died mid-task (test.die_once: the broker kept the arguments), and a
   handle released before or after the next one's value arrives. */
static void
test_value_shares_args(void **state)
{
    tq_harness_env_t *env = *state;
    const char *extra[] = {"--module", TQ_MYTASKS_SO, NULL};
    s_start(env, 2, extra);
    enum { SIZE = 65537, N = 8 };
    uint8_t *bytes = malloc(SIZE);
    assert_non_null(bytes);
    tq_result_t *results[N];
    for (unsigned i = 0; i < N; i++) {
        s_fill(bytes, SIZE, 2000 + i);
        results[i] = i % 2 ? tq_apply_async(env->client, "test.first", NULL,
                                            "ps", bytes, (size_t)SIZE, "after")
                           : tq_apply_async(env->client, "tq.echo", NULL, "p",
                                            bytes, (size_t)SIZE);
        assert_non_null(results[i]);
    }
    /* the last first: the others' values stay right while it goes */
    assert_int_equal(tq_result_get(results[N - 1], S_GET_MS), TQ_OK);
    s_assert_bin_is(tq_result_value(results[N - 1]), SIZE, 2000 + N - 1);
    tq_result_destroy(&results[N - 1]);
    for (unsigned i = 0; i + 1 < N; i++) {
        assert_int_equal(tq_result_get(results[i], S_GET_MS), TQ_OK);
        if (i % 2)
            s_assert_bin_is(tq_result_value(results[i]), SIZE, 2000 + i);
        else
            s_assert_bin_echo(tq_result_value(results[i]), SIZE, 2000 + i);
        tq_result_destroy(&results[i]);
    }
    /* the child dies mid-task on the first attempt; a rerun echoes */
    s_fill(bytes, SIZE, 3000);
    tq_result_t *r = tq_apply(env->client, "test.die_once", NULL, S_GET_MS, "p",
                              bytes, (size_t)SIZE);
    assert_non_null(r);
    assert_int_equal(tq_result_code(r), TQ_OK);
    assert_true(tq_result_attempts(r) >= 2);
    s_assert_bin_echo(tq_result_value(r), SIZE, 3000);
    tq_result_destroy(&r);
    free(bytes);
}

/* libzmq 4.3.3 fixed the ROUTER/CURVE issues tq relies on being absent. */
/* 1,000 echoes over two children: every value right, both children used. */
static void
test_echo_thousand(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, 2, NULL);
    enum { N = 1000 };
    tq_result_t **results = calloc(N, sizeof *results);
    assert_non_null(results);
    for (int i = 0; i < N; i++) {
        results[i] =
            tq_apply_async(env->client, "tq.echo", NULL, "is", (int64_t)i, "x");
        assert_non_null(results[i]);
    }
    for (int i = 0; i < N; i++) {
        int rc = tq_result_get(results[i], S_GET_MS);
        if (rc != TQ_OK)
            fail_msg("task %d: %s (%s)", i, tq_strerror(rc),
                     tq_result_error(results[i]));
        assert_true(tq_result_ready(results[i]));
        assert_true(tq_result_successful(results[i]));
        assert_int_equal(tq_result_state(results[i]), TQ_STATE_SUCCESS);
        s_assert_echo_is(tq_result_value(results[i]), i, "x");
        size_t size = 0;
        assert_non_null(tq_result_data(results[i], &size));
        assert_true(size > 0);
        assert_int_equal(strlen(tq_result_id(results[i])), 32);
    }
    for (int i = 0; i < N; i++)
        tq_result_destroy(&results[i]);
    free(results);

    tq_harness_status_t status;
    assert_int_equal(tq_harness_status(env->client, &status, 5000), TQ_OK);
    uint32_t count = 0;
    const msgpack_object *workers = tq_harness_workers(&status, &count);
    assert_int_equal(count, 2);
    uint64_t total = 0;
    for (uint32_t i = 0; i < count; i++) {
        const msgpack_object *w = &workers->via.array.ptr[i];
        uint64_t done = tq_harness_map_uint(w, "done", 0);
        printf("child pid %llu done %llu\n",
               (unsigned long long)tq_harness_map_uint(w, "pid", 0),
               (unsigned long long)done);
        assert_true(done > 0);
        assert_int_equal(tq_harness_map_uint(w, "ppid", 0),
                         (uint64_t)env->workers[0]);
        total += done;
    }
    assert_int_equal(total, N);
    assert_true(tq_harness_counter(&status, "completed") >= N);
    assert_int_equal(tq_harness_counter(&status, "submitted"), N);
    tq_harness_status_free(&status);
}

/* A W1-like stream at prefetch 16 (children that take BATCH, PROTOCOL.md
   5.9): 5,000 echoes submitted at once over two children, every one
   answered once with its own value. */
static void
test_stream_prefetch16(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, 2, (const char *const[]){"--prefetch", "16", NULL});
    enum { N = 5000 };
    tq_result_t **results = calloc(N, sizeof *results);
    assert_non_null(results);
    for (int i = 0; i < N; i++) {
        results[i] =
            tq_apply_async(env->client, "tq.echo", NULL, "is", (int64_t)i, "s");
        assert_non_null(results[i]);
    }
    for (int i = 0; i < N; i++) {
        int rc = tq_result_get(results[i], S_GET_MS);
        if (rc != TQ_OK)
            fail_msg("task %d: %s (%s)", i, tq_strerror(rc),
                     tq_result_error(results[i]));
        assert_true(tq_result_successful(results[i]));
        s_assert_echo_is(tq_result_value(results[i]), i, "s");
        tq_result_destroy(&results[i]);
    }
    free(results);
    tq_harness_status_t status;
    assert_int_equal(tq_harness_status(env->client, &status, 5000), TQ_OK);
    uint64_t batches = tq_harness_counter(&status, "child_batches_out");
    uint64_t batched = tq_harness_counter(&status, "child_batched_out");
    printf("  %llu TASKs in %llu BATCHes to children\n",
           (unsigned long long)batched, (unsigned long long)batches);
    assert_true(batched <= N);
    assert_int_equal(tq_harness_counter(&status, "completed"), N);
    assert_int_equal(tq_harness_counter(&status, "duplicates"), 0);
    assert_int_equal(tq_harness_counter(&status, "requeued"), 0);
    tq_harness_status_free(&status);
}

/* tq.fail's message reaches get() as TQ_ETASK with its text. */
static void
test_task_error(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, 1, NULL);
    tq_result_t *r = tq_apply_async(env->client, "tq.fail", NULL, "s",
                                    "it broke on purpose");
    assert_non_null(r);
    assert_int_equal(tq_result_get(r, S_GET_MS), TQ_ETASK);
    assert_true(tq_result_ready(r));
    assert_false(tq_result_successful(r));
    assert_int_equal(tq_result_code(r), TQ_ETASK);
    assert_int_equal(tq_result_state(r), TQ_STATE_FAILURE);
    assert_non_null(strstr(tq_result_error(r), "it broke on purpose"));
    assert_null(tq_result_value(r));
    tq_result_destroy(&r);
    assert_null(r);
}

/* get(100 ms) on a 1 s task times out; the task goes on and a later get
   returns its result. */
static void
test_get_timeout(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, 1, NULL);
    tq_result_t *r =
        tq_apply_async(env->client, "tq.sleep", NULL, "i", (int64_t)1);
    assert_non_null(r);
    int64_t t0 = tq_harness_now_ms();
    assert_int_equal(tq_result_get(r, 100), TQ_ETIMEDOUT);
    int64_t waited = tq_harness_now_ms() - t0;
    assert_true(waited >= 90);
    assert_false(tq_result_ready(r));
    assert_int_equal(tq_result_code(r), TQ_ETIMEDOUT);
    assert_int_equal(tq_result_get(r, S_GET_MS), TQ_OK);
    int64_t total = tq_harness_now_ms() - t0;
    assert_true(total >= 900);
    assert_true(tq_result_successful(r));
    tq_result_destroy(&r);
}

/* A submission refused before it reaches the broker says why (issue 11):
   the code and a text that names what is wrong. */
static void
test_apply_async_says_why(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, 1, NULL);
    const char *text = NULL;
    assert_null(tq_apply_async(env->client, "bad name!", NULL, "i",
                               (int64_t)1));
    assert_int_equal(tq_client_last_error(&text), TQ_EINVAL);
    assert_non_null(strstr(text, "invalid task name"));
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.priority = 12;
    assert_null(tq_apply_async(env->client, "tq.echo", &opts, "i",
                               (int64_t)1));
    assert_int_equal(tq_client_last_error(&text), TQ_EINVAL);
    assert_string_equal(text, "priority out of range (0..9)");
    assert_null(tq_apply_async(env->client, "tq.echo", NULL, "z", 1));
    assert_int_equal(tq_client_last_error(&text), TQ_EINVAL);
    assert_non_null(strstr(text, "picture"));
    printf("refused: %s\n", text);
}

/* A get that times out on a task no connected worker provides says so in
   the handle's error text (issue 15); on a task that is provided but slow
   it says nothing. */
static void
test_get_timeout_unserved(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, 1, NULL);
    tq_result_t *none =
        tq_apply_async(env->client, "no.such.task", NULL, "i", (int64_t)1);
    assert_int_equal(tq_result_get(none, 200), TQ_ETIMEDOUT);
    printf("get timed out: %s\n", tq_result_error(none));
    assert_string_equal(tq_result_error(none),
                        "no connected worker provides no.such.task (queue "
                        "default)");
    assert_false(tq_result_ready(none));
    tq_result_destroy(&none);
    tq_result_t *slow =
        tq_apply_async(env->client, "tq.sleep", NULL, "d", 1.0);
    assert_int_equal(tq_result_get(slow, 100), TQ_ETIMEDOUT);
    assert_string_equal(tq_result_error(slow), "");
    assert_int_equal(tq_result_get(slow, S_GET_MS), TQ_OK);
    tq_result_destroy(&slow);
}

/* A task nobody provides waits, is listed as unserved, and runs once a
   worker providing it connects. */
static void
test_unserved(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, 1, NULL); /* built-ins only: no math.add */
    tq_result_t *r = tq_apply_async(env->client, "math.add", NULL, "ii",
                                    (int64_t)1, (int64_t)2);
    assert_non_null(r);
    int64_t deadline = tq_harness_now_ms() + 5000;
    bool listed = false;
    while (!listed && tq_harness_now_ms() < deadline) {
        tq_harness_status_t status;
        if (tq_harness_status(env->client, &status, 2000) == TQ_OK) {
            const msgpack_object *u = tq_harness_unserved(&status, "math.add");
            listed = u && tq_harness_map_uint(u, "waiting", 0) == 1 &&
                tq_harness_str_eq(tq_harness_map_get(u, "queue"),
                                  TQ_DEFAULT_QUEUE);
            tq_harness_status_free(&status);
        }
        if (!listed)
            tq_harness_sleep_ms(20);
    }
    assert_true(listed);
    assert_int_equal(tq_result_get(r, 300), TQ_ETIMEDOUT);
    assert_int_equal(tq_result_state(r), TQ_STATE_PENDING);

    const char *extra[] = {"--module", TQ_MYTASKS_SO, NULL};
    assert_true(tq_harness_env_add_worker(env, 1, extra, false) > 0);
    assert_int_equal(tq_result_get(r, S_GET_MS), TQ_OK);
    const msgpack_object *value = tq_result_value(r);
    assert_non_null(value);
    assert_true(s_number(value) == 3.0);
    tq_result_destroy(&r);

    tq_harness_status_t status;
    assert_int_equal(tq_harness_status(env->client, &status, 5000), TQ_OK);
    const msgpack_object *u = tq_harness_unserved(&status, "math.add");
    assert_true(!u || tq_harness_map_uint(u, "waiting", 0) == 0);
    tq_harness_status_free(&status);
}

/* Fetch by id: unknown ids end TQ_EUNKNOWN; a second client gets a
   finished task's value. */
static void
test_fetch(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, 1, NULL);
    tq_result_t *r = tq_apply_async(env->client, "tq.echo", NULL, "is",
                                    (int64_t)7, "fetch-me");
    assert_non_null(r);
    assert_int_equal(tq_result_get(r, S_GET_MS), TQ_OK);
    char id[65];
    snprintf(id, sizeof id, "%s", tq_result_id(r));

    tq_client_t *other = tq_client_new(env->broker.clients);
    assert_non_null(other);
    tq_result_t *f = tq_client_fetch(other, id, true);
    assert_non_null(f);
    assert_int_equal(tq_result_get(f, S_GET_MS), TQ_OK);
    assert_string_equal(tq_result_id(f), id);
    s_assert_echo_is(tq_result_value(f), 7, "fetch-me");
    size_t a_size = 0, b_size = 0;
    const void *a = tq_result_data(r, &a_size);
    const void *b = tq_result_data(f, &b_size);
    assert_int_equal(a_size, b_size);
    assert_memory_equal(a, b, a_size);
    tq_result_destroy(&f);

    /* the same with wait=false: the task is final, so RESULT comes back */
    f = tq_client_fetch(other, id, false);
    assert_non_null(f);
    assert_int_equal(tq_result_get(f, S_GET_MS), TQ_OK);
    s_assert_echo_is(tq_result_value(f), 7, "fetch-me");
    tq_result_destroy(&f);

    f = tq_client_fetch(other, "0123456789abcdef0123456789abcdef", false);
    assert_non_null(f);
    assert_int_equal(tq_result_get(f, S_GET_MS), TQ_EUNKNOWN);
    assert_true(tq_result_ready(f));
    assert_false(tq_result_successful(f));
    tq_result_destroy(&f);
    f = tq_client_fetch(env->client, "no-such-task", true);
    assert_non_null(f);
    assert_int_equal(tq_result_get(f, S_GET_MS), TQ_EUNKNOWN);
    tq_result_destroy(&f);

    tq_client_destroy(&other);
    assert_null(other);
    tq_result_destroy(&r);
}

/* callback fires on success, error_callback on failure, once each, with the
   caller's arg and the right result. */
static void
test_callbacks(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, 1, NULL);
    s_recorder_t *live = s_recorder_reset();
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.callback = s_on_ok;
    opts.error_callback = s_on_err;
    opts.callback_arg = live;
    tq_result_t *ok =
        tq_apply_async(env->client, "tq.echo", &opts, "is", (int64_t)1, "cb");
    tq_result_t *bad =
        tq_apply_async(env->client, "tq.fail", &opts, "s", "callback boom");
    assert_non_null(ok);
    assert_non_null(bad);
    assert_true(s_recorder_wait(live, 2, 0, S_GET_MS));
    assert_int_equal(tq_result_get(ok, S_GET_MS), TQ_OK);
    assert_int_equal(tq_result_get(bad, S_GET_MS), TQ_ETASK);
    tq_harness_sleep_ms(100); /* a second, wrong call would show by now */
    static s_recorder_t rec;
    s_recorder_snapshot(live, &rec);
    assert_int_equal(rec.ok_calls, 1);
    assert_int_equal(rec.err_calls, 1);
    assert_ptr_equal(rec.ok_arg, live);
    assert_ptr_equal(rec.err_arg, live);
    assert_int_equal(rec.ok_code, TQ_OK);
    assert_true(rec.ok_successful);
    assert_string_equal(rec.ok_id, tq_result_id(ok));
    assert_int_equal(rec.err_code, TQ_ETASK);
    assert_string_equal(rec.err_id, tq_result_id(bad));
    assert_non_null(strstr(rec.err_text, "callback boom"));
    tq_result_destroy(&ok);
    tq_result_destroy(&bad);
}

/* tq_map returns results in submission order, even when tasks finish in
   another order. */
static void
test_map_order(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, 2, NULL);

    enum { N = 200 };
    tq_buf_t args[N];
    tq_result_t *results[N];
    for (int i = 0; i < N; i++)
        assert_int_equal(tq_pack(&args[i], "is", (int64_t)i, "m"), TQ_OK);
    assert_int_equal(
        tq_map(env->client, "tq.echo", NULL, args, N, results, S_GET_MS),
        TQ_OK);
    for (int i = 0; i < N; i++) {
        assert_true(tq_result_successful(results[i]));
        s_assert_echo_is(tq_result_value(results[i]), i, "m");
        tq_result_destroy(&results[i]);
        tq_buf_free(&args[i]);
    }

    /* decreasing durations: the first finishes after the second */
    static const double durations[] = {0.6, 0.45, 0.3, 0.15, 0.0};
    enum { M = 5 };
    s_recorder_t *live = s_recorder_reset();
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.callback = s_on_slot;
    opts.callback_arg = &s_slots[0];
    for (int i = 0; i < M; i++)
        assert_int_equal(tq_pack(&args[i], "d", durations[i]), TQ_OK);
    assert_int_equal(
        tq_map(env->client, "tq.sleep", &opts, args, M, results, S_GET_MS),
        TQ_OK);
    assert_true(s_recorder_wait(live, 0, M, S_GET_MS));
    for (int i = 0; i < M; i++) {
        assert_true(tq_result_successful(results[i]));
        const msgpack_object *v = tq_result_value(results[i]);
        assert_non_null(v);
        /* tq.sleep returns the seconds it slept (README: 5.0), if a number */
        if (v->type != MSGPACK_OBJECT_NIL)
            assert_true(s_number(v) == durations[i]);
    }
    static s_recorder_t rec;
    s_recorder_snapshot(live, &rec);
    assert_int_equal(rec.order_count, M);
    /* completion order differs from submission order ... */
    assert_string_not_equal(rec.order_ids[0], tq_result_id(results[0]));
    /* ... and every handle is still at its submission index */
    for (int i = 0; i < M; i++) {
        bool seen = false;
        for (int j = 0; j < M; j++)
            seen =
                seen || strcmp(rec.order_ids[j], tq_result_id(results[i])) == 0;
        assert_true(seen);
    }
    for (int i = 0; i < M; i++) {
        tq_result_destroy(&results[i]);
        tq_buf_free(&args[i]);
    }
}

/* Five low then five high priority tasks queued before any worker: one
   child with prefetch 1 runs the highs first, FIFO within a priority. */
static void
test_priorities(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    enum { N = 10 };
    s_recorder_t *live = s_recorder_reset();
    tq_result_t *results[N];
    for (int i = 0; i < N; i++) {
        tq_options_t opts = TQ_OPTIONS_INIT;
        opts.queue = "prio";
        opts.priority = i < 5 ? 0 : TQ_PRIORITY_MAX;
        opts.callback = s_on_slot;
        opts.callback_arg = &s_slots[i];
        results[i] = tq_apply_async(env->client, "tq.echo", &opts, "is",
                                    (int64_t)i, "p");
        assert_non_null(results[i]);
    }
    /* all ten accepted and waiting before the worker exists */
    int64_t deadline = tq_harness_now_ms() + 5000;
    uint64_t waiting = 0;
    while (waiting != N && tq_harness_now_ms() < deadline) {
        tq_harness_status_t status;
        if (tq_harness_status(env->client, &status, 2000) == TQ_OK) {
            waiting = tq_harness_map_uint(tq_harness_queue(&status, "prio"),
                                          "waiting", 0);
            tq_harness_status_free(&status);
        }
        if (waiting != N)
            tq_harness_sleep_ms(20);
    }
    assert_int_equal(waiting, N);

    const char *extra[] = {"--queue", "prio", "--prefetch", "1", NULL};
    assert_true(tq_harness_env_add_worker(env, 1, extra, false) > 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(tq_result_get(results[i], S_GET_MS), TQ_OK);
        s_assert_echo_is(tq_result_value(results[i]), i, "p");
    }
    assert_true(s_recorder_wait(live, 0, N, S_GET_MS));
    static s_recorder_t rec;
    s_recorder_snapshot(live, &rec);
    printf("completion order:");
    for (size_t i = 0; i < rec.order_count; i++)
        printf(" %d", rec.order[i]);
    printf("\n");
    for (int i = 0; i < N; i++)
        assert_int_equal(rec.order[i], i < 5 ? i + 5 : i - 5);
    for (int i = 0; i < N; i++)
        tq_result_destroy(&results[i]);
}

/* Nothing listens: the result ends TQ_EUNREACHABLE within 5 s. */
static void
test_unreachable(void **state)
{
    (void)state;
    char endpoint[TQ_HARNESS_EP_MAX];
    assert_int_equal(tq_harness_free_endpoint(endpoint, sizeof endpoint), 0);
    tq_client_t *client = tq_client_new(endpoint);
    assert_non_null(client);
    int64_t t0 = tq_harness_now_ms();
    tq_result_t *r = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)1);
    assert_non_null(r);
    int rc = tq_result_get(r, 60000);
    int64_t waited = tq_harness_now_ms() - t0;
    printf("unreachable after %lld ms: %s\n", (long long)waited,
           tq_strerror(rc));
    /* TQ_EUNREACHABLE from the client's liveness, not the get's own
       TQ_ETIMEDOUT */
    assert_int_equal(rc, TQ_EUNREACHABLE);
    assert_true(tq_result_ready(r));
    tq_result_destroy(&r);
    tq_client_destroy(&client);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_echo_thousand, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_stream_prefetch16,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_echo_large, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_value_shares_args,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_task_error, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_apply_async_says_why,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_get_timeout_unserved,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_get_timeout, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_unserved, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_fetch, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_callbacks, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_map_order, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_priorities, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_unreachable, tq_harness_env_setup, tq_harness_env_teardown),
    };
    tq_harness_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
