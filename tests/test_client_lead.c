/* test_client_lead.c - a caller that reads its own answer (tq_apply, the
   round trip of W2) looks into the socket's mailbox no more than it must:
   no ZMQ_EVENTS after its send when it reads next itself, none when it
   lets go while the I/O thread sleeps without the socket, and its sleep
   is one poll(2), not a zmq_poll (whose first pass polls without a
   timeout). Each look is a poll and a getpid on the round trip's path.
   Against a fake broker in this process that answers each SUBMIT with
   its RESULT (folded: no SUBMITTED). Linked with
   -Wl,--wrap=zmq_getsockopt,--wrap=zmq_poll: the caller thread's calls
   are counted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <zmq.h>

#include "tq_client_core.h"
#include "tq_fake_broker.h"
#include "tq_harness.h"

#define S_WAIT_MS 15000 /* bound on anything that must happen */
#define S_ROUNDS 20

int __real_zmq_getsockopt(void *socket, int option, void *value, size_t *size);
int __wrap_zmq_getsockopt(void *socket, int option, void *value, size_t *size);
int __real_zmq_poll(zmq_pollitem_t *items, int count, long timeout);
int __wrap_zmq_poll(zmq_pollitem_t *items, int count, long timeout);

static struct {
    pthread_t caller; /* the thread whose calls are counted */
    atomic_bool counting;
    atomic_int looks; /* its ZMQ_EVENTS */
    atomic_int polls; /* its zmq_polls */
} s_count;

int
__wrap_zmq_getsockopt(void *socket, int option, void *value, size_t *size)
{
    if (option == ZMQ_EVENTS && atomic_load(&s_count.counting) &&
        pthread_equal(pthread_self(), s_count.caller))
        atomic_fetch_add(&s_count.looks, 1);
    return __real_zmq_getsockopt(socket, option, value, size);
}

int
__wrap_zmq_poll(zmq_pollitem_t *items, int count, long timeout)
{
    if (atomic_load(&s_count.counting) &&
        pthread_equal(pthread_self(), s_count.caller))
        atomic_fetch_add(&s_count.polls, 1);
    return __real_zmq_poll(items, count, timeout);
}

/* The fake broker's thread: a RESULT for each of `rounds` SUBMITs. */
typedef struct {
    tq_fake_broker_t *fake;
    int rounds;
    int answered;
} s_server_t;

static void *
s_serve(void *arg)
{
    s_server_t *server = arg;
    while (server->answered < server->rounds &&
           tq_fake_broker_expect(server->fake, TQ_CMD_SUBMIT, S_WAIT_MS)) {
        tq_fake_broker_result(server->fake, server->fake->id, TQ_STATE_SUCCESS,
                              0, NULL, 0xc0);
        server->answered++;
    }
    return NULL;
}

static void
test_round_trip_looks(void **state)
{
    (void)state;
    tq_harness_init();
    tq_fake_broker_t *fake = tq_fake_broker_new();
    s_server_t server = {fake, 3 + S_ROUNDS, 0};
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_serve, &server), 0);
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    s_count.caller = pthread_self();
    /* the first answers wake the I/O thread too, which then sleeps
       without the socket while this thread reads its own. A round trip
       counts when this thread both sent its SUBMIT and read its RESULT
       itself (on a loaded machine the I/O thread may be awake for some,
       and take them: those are not what is measured) */
    int own = 0, most = 0; /* own round trips, most looks in one */
    atomic_store(&s_count.counting, true);
    for (int i = 0; i < 3 + S_ROUNDS; i++) {
        uint64_t sent = tq_client_sent_by_caller(client);
        uint64_t led = tq_client_led(client);
        int looks = atomic_load(&s_count.looks);
        tq_result_t *r = tq_apply(client, "tq.echo", NULL, S_WAIT_MS, "");
        assert_non_null(r);
        assert_int_equal(tq_result_code(r), TQ_OK);
        tq_result_destroy(&r);
        if (i >= 3 && tq_client_sent_by_caller(client) == sent + 1 &&
            tq_client_led(client) == led + 1) {
            own++;
            int now = atomic_load(&s_count.looks) - looks;
            if (now > most)
                most = now;
        }
    }
    atomic_store(&s_count.counting, false);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(server.answered, 3 + S_ROUNDS);
    /* before: two looks (after the send, after the answer) and a
       zmq_poll in every round trip; now the caller's sleep is a poll(2),
       and an own round trip looks once at most (none after its send; one
       after the answer only if the I/O thread woke meanwhile) */
    assert_int_equal(atomic_load(&s_count.polls), 0);
    assert_true(own >= 1);
    assert_true(most <= 1);
    tq_client_destroy(&client);
    tq_fake_broker_destroy(&fake);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_looks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
