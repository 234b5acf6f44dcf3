/* test_broker_spin.c - the broker's look for the next message before it
   sleeps (tq-broker --spin-us, tq_broker_config_t.spin_us), end to end
   with a real tq-broker and tq-worker, read through STATUS's "spins" and
   "spins_caught": --spin-us 0 never looks; after a round trip's sparse
   pass the broker looks, and a look long enough catches the child's
   answer; an idle broker whose looks find nothing stops looking.

   Every wait is on a condition (a result, a counter), bounded. The only
   times are the looks' own lengths and an idle stretch, chosen so that
   the outcome does not depend on the machine's speed: a 100 ms look
   catches an answer that comes in microseconds, and a slower machine
   only makes fewer timer passes in the idle stretch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_harness.h"

#define S_GET_MS 30000 /* bound on any get() expected to end */
#define S_TRIPS 20 /* sequential round trips */

/* Counters[name] in the broker's STATUS. */
static uint64_t
s_counter(tq_harness_env_t *env, const char *name)
{
    tq_harness_status_t status;
    assert_int_equal(tq_harness_status(env->client, &status, S_GET_MS), TQ_OK);
    uint64_t value = tq_harness_counter(&status, name);
    tq_harness_status_free(&status);
    assert_true(value != UINT64_MAX);
    return value;
}

/* S_TRIPS sequential round trips of tq.echo through a host of one child,
   each result the value sent. */
static void
s_round_trips(tq_harness_env_t *env)
{
    assert_true(tq_harness_env_add_worker(env, 1, NULL, true) > 0);
    for (int i = 0; i < S_TRIPS; i++) {
        tq_result_t *r =
            tq_apply(env->client, "tq.echo", NULL, S_GET_MS, "i", (int64_t)i);
        assert_non_null(r);
        assert_int_equal(tq_result_state(r), TQ_STATE_SUCCESS);
        /* tq.echo returns its arguments: [i] */
        const msgpack_object *value = tq_result_value(r);
        assert_non_null(value);
        assert_int_equal(value->type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(value->via.array.size, 1);
        assert_int_equal(value->via.array.ptr[0].type,
                         MSGPACK_OBJECT_POSITIVE_INTEGER);
        assert_int_equal(value->via.array.ptr[0].via.u64, (uint64_t)i);
        tq_result_destroy(&r);
    }
}

/* --spin-us 0: the broker sleeps at once after every pass, never looks. */
static void
test_spin_off(void **state)
{
    tq_harness_env_t *env = *state;
    const char *extra[] = {"--spin-us", "0", NULL};
    assert_int_equal(tq_harness_env_start(env, extra), 0);
    s_round_trips(env);
    assert_int_equal(s_counter(env, "spins"), 0);
    assert_int_equal(s_counter(env, "spins_caught"), 0);
}

/* Round trips are sparse passes (one SUBMIT, one DONE): the broker looks
   after them, and a 100 ms look catches the child's DONE for the TASK it
   just sent, with no sleep in between. */
static void
test_spin_catches_answer(void **state)
{
    tq_harness_env_t *env = *state;
    const char *extra[] = {"--spin-us", "100000", NULL};
    assert_int_equal(tq_harness_env_start(env, extra), 0);
    s_round_trips(env);
    /* both from one STATUS: the request is a sparse pass of its own */
    tq_harness_status_t status;
    assert_int_equal(tq_harness_status(env->client, &status, S_GET_MS), TQ_OK);
    uint64_t spins = tq_harness_counter(&status, "spins");
    uint64_t caught = tq_harness_counter(&status, "spins_caught");
    tq_harness_status_free(&status);
    assert_true(caught >= 1 && caught != UINT64_MAX);
    assert_true(spins >= caught);
}

/* An idle broker's looks find nothing: its timer passes (host checks,
   every 100 ms) are sparse too, and after TQ_BROKER_SPIN_MISSES looks in
   vain in a row it stops looking. Between two STATUS requests 1.5 s
   apart it looks at most that many times (each STATUS's counters are
   packed in its pass, before the look that follows it); without the
   rule it would look after every one of the ~15 timer passes. */
static void
test_spin_stops_when_idle(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0); /* default look */
    tq_harness_sleep_ms(300);
    uint64_t before = s_counter(env, "spins");
    tq_harness_sleep_ms(1500);
    uint64_t after = s_counter(env, "spins");
    assert_true(after >= before);
    assert_true(after - before <= TQ_BROKER_SPIN_MISSES);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_spin_off, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_spin_catches_answer,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_spin_stops_when_idle,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
