/* test_queue.c - data queues through the client library
   (multiprocessing.Queue on the broker): put/get and their nowait forms,
   bounds, waits, qsize/empty/full, and 5 producers x 1,000 items with 5
   consumers, every item consumed exactly once. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tq/tq.h"
#include "tq_client_internal.h"
#include "tq_harness.h"

#define PRODUCERS 5
#define CONSUMERS 5
#define ITEMS 1000 /* per producer */
#define STOP (-1)  /* the item that tells a consumer to end */

static int
s_setup(void **state)
{
    assert_int_equal(tq_harness_env_setup(state), 0);
    assert_int_equal(tq_harness_env_start(*state, NULL), 0);
    return 0;
}


static int
s_put_int(tq_queue_t *q, int64_t value, int timeout_ms)
{
    tq_buf_t buf;
    assert_int_equal(tq_pack(&buf, "i", value), TQ_OK);
    /* an item is one msgpack object: the array's single element */
    int rc = tq_queue_put(q, (const char *)buf.data + 1, buf.size - 1,
                          timeout_ms);
    tq_buf_free(&buf);
    return rc;
}

static int
s_get_int(tq_queue_t *q, int64_t *value, int timeout_ms)
{
    tq_buf_t item;
    int rc = tq_queue_get(q, &item, timeout_ms);
    if (rc != TQ_OK)
        return rc;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, item.data, item.size, NULL),
                     MSGPACK_UNPACK_SUCCESS);
    assert_true(u.data.type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                u.data.type == MSGPACK_OBJECT_NEGATIVE_INTEGER);
    *value = u.data.via.i64;
    msgpack_unpacked_destroy(&u);
    tq_buf_free(&item);
    return TQ_OK;
}

static void
test_put_get_nowait(void **state)
{
    tq_harness_env_t *env = *state;
    tq_queue_t *q = tq_queue_new(env->client, "q.basic", 3);
    assert_non_null(q);
    assert_true(tq_queue_empty(q));
    int64_t v = 0;
    assert_int_equal(s_get_int(q, &v, 0), TQ_EEMPTY);
    for (int i = 1; i <= 3; i++)
        assert_int_equal(s_put_int(q, i, 0), TQ_OK);
    assert_true(tq_queue_full(q));
    /* put_nowait on a full queue: TQ_EFULL at once */
    int64_t t0 = tq_harness_now_ms();
    tq_buf_t buf;
    assert_int_equal(tq_pack(&buf, "i", (int64_t)4), TQ_OK);
    assert_int_equal(
        tq_queue_put_nowait(q, (const char *)buf.data + 1, buf.size - 1),
        TQ_EFULL);
    tq_buf_free(&buf);
    assert_true(tq_harness_now_ms() - t0 < 1000);
    uint64_t size = 0;
    assert_int_equal(tq_queue_qsize(q, &size), TQ_OK);
    assert_int_equal(size, 3);
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(s_get_int(q, &v, 0), TQ_OK);
        assert_int_equal(v, i); /* FIFO */
    }
    tq_buf_t item;
    assert_int_equal(tq_queue_get_nowait(q, &item), TQ_EEMPTY);
    tq_queue_destroy(&q);
    assert_null(q);
}

/* Polls STATUS (bounded) until data queue name has `getters` waiting
   getters. */
static void
s_wait_getters(tq_client_t *client, const char *name, uint64_t getters)
{
    int64_t deadline = tq_harness_now_ms() + 20000;
    uint64_t last = 0;
    while (tq_harness_now_ms() < deadline) {
        tq_harness_status_t st;
        last = 0;
        if (tq_harness_status(client, &st, 5000) == TQ_OK) {
            const msgpack_object *dqs =
                tq_harness_map_get(st.root, "data_queues");
            uint32_t n = dqs && dqs->type == MSGPACK_OBJECT_ARRAY
                ? dqs->via.array.size
                : 0;
            for (uint32_t i = 0; i < n; i++) {
                const msgpack_object *dq = &dqs->via.array.ptr[i];
                if (tq_harness_str_eq(tq_harness_map_get(dq, "name"), name))
                    last = tq_harness_map_uint(dq, "getters", 0);
            }
        }
        tq_harness_status_free(&st);
        if (last == getters)
            return;
        tq_harness_sleep_ms(10);
    }
    fail_msg("data queue %s: %llu getters, expected %llu", name,
             (unsigned long long)last, (unsigned long long)getters);
}

static void
test_get_waits(void **state)
{
    tq_harness_env_t *env = *state;
    tq_queue_t *q = tq_queue_new(env->client, "q.wait", 0);
    /* nothing comes: the wait ends after its timeout, not before, and it
       is its own: a getter of a minute, there before it, still waits then
       (the next item goes to it) */
    tq_result_t *minute = tq_client_queue_request(env->client, TQ_QUEUE_GET,
                                                  "q.wait", 0, 60000, NULL, 0);
    assert_non_null(minute);
    s_wait_getters(env->client, "q.wait", 1);
    int64_t t0 = tq_harness_now_ms();
    int64_t v;
    assert_int_equal(s_get_int(q, &v, 300), TQ_EEMPTY);
    int64_t took = tq_harness_now_ms() - t0;
    printf("get(300 ms) on an empty queue: TQ_EEMPTY after %lld ms\n",
           (long long)took);
    assert_true(took >= 250);
    assert_false(tq_result_ready(minute));
    assert_int_equal(s_put_int(q, 42, 0), TQ_OK);
    assert_int_equal(tq_result_get(minute, 20000), TQ_OK);
    size_t size = 0;
    const uint8_t *data = tq_result_data(minute, &size);
    assert_int_equal(size, 1);
    assert_int_equal(data[0], 42); /* msgpack positive fixint */
    tq_result_destroy(&minute);
    /* a put blocked on a full queue goes through once a get makes room */
    tq_queue_t *small = tq_queue_new(env->client, "q.small", 1);
    assert_int_equal(s_put_int(small, 1, 0), TQ_OK);
    assert_int_equal(s_put_int(small, 2, 200), TQ_EFULL);
    assert_int_equal(s_get_int(small, &v, 0), TQ_OK);
    assert_int_equal(s_put_int(small, 2, 1000), TQ_OK);
    assert_int_equal(s_get_int(small, &v, 0), TQ_OK);
    assert_int_equal(v, 2);
    tq_queue_destroy(&small);
    tq_queue_destroy(&q);
}

typedef struct {
    const char *endpoint;
    int index;
    int64_t consumed; /* consumers: items taken */
    int64_t *seen;    /* shared counts per item, under lock */
    pthread_mutex_t *lock;
    int failures;
} s_role_t;

static void *
s_producer(void *arg)
{
    s_role_t *role = arg;
    tq_client_t *client = tq_client_new(role->endpoint);
    tq_queue_t *q = tq_queue_new(client, "q.pc", 100);
    for (int i = 0; i < ITEMS; i++)
        if (s_put_int(q, (int64_t)role->index * ITEMS + i, 30000) != TQ_OK)
            role->failures++;
    tq_queue_destroy(&q);
    tq_client_destroy(&client);
    return NULL;
}

static void *
s_consumer(void *arg)
{
    s_role_t *role = arg;
    tq_client_t *client = tq_client_new(role->endpoint);
    tq_queue_t *q = tq_queue_new(client, "q.pc", 100);
    for (;;) {
        int64_t v;
        if (s_get_int(q, &v, 30000) != TQ_OK) {
            role->failures++;
            break;
        }
        if (v == STOP)
            break;
        if (v < 0 || v >= PRODUCERS * ITEMS) {
            role->failures++;
            continue;
        }
        pthread_mutex_lock(role->lock);
        role->seen[v]++;
        pthread_mutex_unlock(role->lock);
        role->consumed++;
    }
    tq_queue_destroy(&q);
    tq_client_destroy(&client);
    return NULL;
}

/* The seed texts' producer/consumer: 5 producers x 1,000 items, 5
   consumers on a bounded queue, every item consumed exactly once. */
static void
test_producer_consumer(void **state)
{
    tq_harness_env_t *env = *state;
    int64_t *seen = calloc(PRODUCERS * ITEMS, sizeof *seen);
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    s_role_t roles[PRODUCERS + CONSUMERS];
    pthread_t threads[PRODUCERS + CONSUMERS];
    int64_t t0 = tq_harness_now_ms();
    for (int i = 0; i < PRODUCERS + CONSUMERS; i++) {
        roles[i] = (s_role_t){.endpoint = env->broker.clients,
                              .index = i,
                              .seen = seen,
                              .lock = &lock};
        assert_int_equal(pthread_create(&threads[i], NULL,
                                        i < PRODUCERS ? s_producer
                                                      : s_consumer,
                                        &roles[i]),
                         0);
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(threads[i], NULL);
    tq_queue_t *q = tq_queue_new(env->client, "q.pc", 100);
    for (int i = 0; i < CONSUMERS; i++)
        assert_int_equal(s_put_int(q, STOP, 30000), TQ_OK);
    int64_t consumed = 0;
    for (int i = PRODUCERS; i < PRODUCERS + CONSUMERS; i++) {
        pthread_join(threads[i], NULL);
        consumed += roles[i].consumed;
        printf("consumer %d took %lld items\n", i - PRODUCERS,
               (long long)roles[i].consumed);
    }
    int failures = 0, missing = 0, doubled = 0;
    for (int i = 0; i < PRODUCERS + CONSUMERS; i++)
        failures += roles[i].failures;
    for (int i = 0; i < PRODUCERS * ITEMS; i++) {
        missing += seen[i] == 0;
        doubled += seen[i] > 1;
    }
    printf("%d x %d items: %lld consumed, %d missing, %d doubled, %lld ms\n",
           PRODUCERS, ITEMS, (long long)consumed, missing, doubled,
           (long long)(tq_harness_now_ms() - t0));
    assert_int_equal(failures, 0);
    assert_int_equal(consumed, PRODUCERS * ITEMS);
    assert_int_equal(missing, 0);
    assert_int_equal(doubled, 0);
    assert_true(tq_queue_empty(q));
    tq_queue_destroy(&q);
    free(seen);
}

static void
test_bad_input(void **state)
{
    tq_harness_env_t *env = *state;
    assert_null(tq_queue_new(env->client, "bad name", 0));
    assert_null(tq_queue_new(env->client, "", 0));
    tq_queue_t *q = tq_queue_new(env->client, "q.bad", 0);
    /* not one msgpack object: refused before it is sent */
    static const unsigned char two[] = {0x01, 0x02};
    assert_int_equal(tq_queue_put(q, two, sizeof two, 0), TQ_EPROTO);
    static const unsigned char cut[] = {0x92, 0x01};
    assert_int_equal(tq_queue_put(q, cut, sizeof cut, 0), TQ_EPROTO);
    tq_queue_destroy(&q);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_get_nowait, s_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_get_waits, s_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_producer_consumer, s_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, s_setup, tq_harness_env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
