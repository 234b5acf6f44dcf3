/* test_spare.c - the client library's spare payload buffers (tq_spare.h):
   kept only while a client lives, given back when one fits, never one far
   too large, small ones never kept, a received value moved into a spare
   byte for byte, old ones and all at the last client's end freed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq_spare.h"

#define S_SIZE 65536

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
s_setup(void **state)
{
    (void)state;
    tq_spare_users(1);
    return 0;
}

static int
s_teardown(void **state)
{
    (void)state;
    tq_spare_users(-1);
    return 0;
}

/* Without a client alive nothing is kept. */
static void
test_no_user_keeps_nothing(void **state)
{
    (void)state;
    tq_spare_put(malloc(S_SIZE));
    assert_int_equal(tq_spare_bytes(), 0);
    assert_null(tq_spare_take(S_SIZE));
}

/* A buffer given back is the one a same-sized take gets. */
static void
test_put_then_take(void **state)
{
    (void)state;
    void *a = malloc(S_SIZE);
    assert_non_null(a);
    size_t cap = malloc_usable_size(a);
    tq_spare_put(a);
    assert_int_equal(tq_spare_bytes(), cap);
    void *b = tq_spare_take(S_SIZE);
    assert_ptr_equal(a, b);
    assert_int_equal(tq_spare_bytes(), 0);
    assert_null(tq_spare_take(S_SIZE));
    free(b);
}

/* Too small, or so large that half of it would be idle: not taken. Small
   buffers are not kept at all. */
static void
test_fit(void **state)
{
    (void)state;
    void *a = malloc(S_SIZE);
    assert_non_null(a);
    tq_spare_put(a);
    assert_null(tq_spare_take(S_SIZE + 4096)); /* too small */
    assert_null(tq_spare_take(S_SIZE / 2 - 1024)); /* far too large */
    assert_null(tq_spare_take(100)); /* below TQ_SPARE_MIN */
    void *b = tq_spare_take(S_SIZE - 100);
    assert_ptr_equal(a, b);
    free(b);
    tq_spare_put(malloc(1024));
    assert_int_equal(tq_spare_bytes(), 0);
    tq_spare_put(NULL);
    assert_int_equal(tq_spare_bytes(), 0);
}

/* A received message moves into a spare, bytes unchanged; without a spare
   it stays as it was. */
static void
test_adopt(void **state)
{
    (void)state;
    zmq_msg_t msg;
    assert_int_equal(zmq_msg_init_size(&msg, S_SIZE), 0);
    uint8_t *data = zmq_msg_data(&msg);
    for (size_t i = 0; i < S_SIZE; i++)
        data[i] = (uint8_t)(i * 13 + 5);
    tq_spare_adopt(&msg); /* no spare: untouched */
    assert_ptr_equal(zmq_msg_data(&msg), data);

    void *spare = malloc(S_SIZE);
    assert_non_null(spare);
    tq_spare_put(spare);
    tq_spare_adopt(&msg);
    assert_ptr_equal(zmq_msg_data(&msg), spare);
    assert_int_equal(zmq_msg_size(&msg), S_SIZE);
    const uint8_t *moved = zmq_msg_data(&msg);
    for (size_t i = 0; i < S_SIZE; i++)
        if (moved[i] != (uint8_t)(i * 13 + 5))
            fail_msg("byte %zu differs", i);
    assert_int_equal(tq_spare_bytes(), 0);
    /* closing the message gives the buffer back as a spare */
    zmq_msg_close(&msg);
    assert_int_equal(tq_spare_bytes(), malloc_usable_size(spare));
    tq_spare_trim(INT64_MAX);
    assert_int_equal(tq_spare_bytes(), 0);
}

/* Spares older than TQ_SPARE_AGE_MS are freed by a trim; a young one is
   kept; the last client's end frees all. */
static void
test_trim(void **state)
{
    (void)state;
    tq_spare_put(malloc(S_SIZE));
    size_t one = tq_spare_bytes();
    assert_true(one >= S_SIZE);
    tq_spare_trim(s_now_ms());
    assert_int_equal(tq_spare_bytes(), one);
    tq_spare_trim(s_now_ms() + TQ_SPARE_AGE_MS + 1);
    assert_int_equal(tq_spare_bytes(), 0);

    tq_spare_put(malloc(S_SIZE));
    assert_int_equal(tq_spare_bytes(), one);
    tq_spare_users(-1); /* the last one */
    assert_int_equal(tq_spare_bytes(), 0);
    tq_spare_users(1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_user_keeps_nothing),
        cmocka_unit_test_setup_teardown(test_put_then_take, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_fit, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_adopt, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_trim, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
