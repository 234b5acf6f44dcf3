/* test_broker_wait.c - the broker's wait for input (s_wait in
   broker/tq_broker.c) when a socket cannot be asked for its events: a
   signal (EINTR) is waited through, a real error ends the loop. The
   failures are injected: this test is linked with
   -Wl,--wrap=zmq_getsockopt, so the broker's ZMQ_EVENTS looks come here
   first. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

#include "tq_broker_core.h"
#include "tq_harness.h"
#include "tq_wire.h"

int __real_zmq_getsockopt(void *socket, int option, void *value, size_t *size);
int __wrap_zmq_getsockopt(void *socket, int option, void *value, size_t *size);

static struct {
    tq_broker_t *broker;
    void *fail; /* the socket whose next ZMQ_EVENTS fails, NULL once done */
    int err; /* with this errno */
    int failed; /* looks failed */
    int after; /* the sockets' looks after the failure */
    tq_broker_t *counted; /* the broker whose looks are counted */
    int looks[2]; /* its ZMQ_EVENTS looks: workers, clients */
} s_inject;

/* ZMQ_EVENTS on s_inject.fail fails once with s_inject.err; the next
   look at either socket after that stops the broker (its loop then ends
   at the top of the next pass; a socket the broker knows quiet is not
   looked at again). */
int
__wrap_zmq_getsockopt(void *socket, int option, void *value, size_t *size)
{
    if (option == ZMQ_EVENTS && s_inject.counted) {
        if (socket == s_inject.counted->workers)
            s_inject.looks[0]++;
        else if (socket == s_inject.counted->clients)
            s_inject.looks[1]++;
    }
    if (option == ZMQ_EVENTS && s_inject.broker) {
        if (s_inject.fail && socket == s_inject.fail) {
            s_inject.fail = NULL;
            s_inject.failed++;
            errno = s_inject.err;
            return -1;
        }
        if (!s_inject.fail &&
            (socket == s_inject.broker->workers ||
             socket == s_inject.broker->clients) &&
            s_inject.after++ == 0)
            tq_broker_stop(s_inject.broker);
    }
    return __real_zmq_getsockopt(socket, option, value, size);
}

/* tq_broker_run with the first ZMQ_EVENTS on one of its sockets failing
   with err. */
static int
s_run_failing(bool workers, int err)
{
    tq_broker_config_t config = {0};
    tq_broker_t *b = tq_harness_broker_new(config);
    assert_non_null(b);
    s_inject.broker = b;
    s_inject.fail = workers ? b->workers : b->clients;
    s_inject.err = err;
    s_inject.failed = s_inject.after = 0;
    int rc = tq_broker_run(b);
    assert_int_equal(s_inject.failed, 1);
    s_inject.broker = NULL;
    tq_broker_destroy(&b);
    return rc;
}

/* A signal in the workers socket's look: the broker waits again (and
   stops when told). The clients socket's look that followed it used to
   succeed and leave errno at EAGAIN, and the broker ended on "poll:
   Resource temporarily unavailable". */
static void
test_eintr_workers(void **state)
{
    (void)state;
    assert_int_equal(s_run_failing(true, EINTR), TQ_OK);
    assert_true(s_inject.after >= 1); /* it looked again */
}

static void
test_eintr_clients(void **state)
{
    (void)state;
    assert_int_equal(s_run_failing(false, EINTR), TQ_OK);
    assert_true(s_inject.after >= 1);
}

/* A real error (the context terminated) ends the loop with TQ_ESYS, on
   either socket: its errno is not lost to the other socket's look. */
static void
test_error_workers(void **state)
{
    (void)state;
    assert_int_equal(s_run_failing(true, ETERM), TQ_ESYS);
    assert_int_equal(s_inject.after, 0); /* no look after it */
}

static void
test_error_clients(void **state)
{
    (void)state;
    assert_int_equal(s_run_failing(false, ETERM), TQ_ESYS);
}

/* A socket the broker found empty is not looked into again (ZMQ_EVENTS,
   a system call pair) until something was sent on it: its descriptor
   signals what comes. Input on such a socket is still read, and the
   socket a reply went out on is looked at again. Passes are led
   (tq_broker_lead) so that each is counted. */
static void
test_quiet_socket_not_asked(void **state)
{
    (void)state;
    tq_broker_config_t config = {0};
    tq_broker_t *b = tq_harness_broker_new(config);
    assert_non_null(b);
    s_inject.counted = b;
    s_inject.looks[0] = s_inject.looks[1] = 0;
    for (int i = 0; i < 5; i++)
        assert_int_equal(tq_broker_lead(b, 0), 0);
    /* the first wait's look at each, none after (5 and 5 before) */
    assert_int_equal(s_inject.looks[0], 1);
    assert_int_equal(s_inject.looks[1], 1);

    /* a PING from a client on the quiet clients socket is answered */
    void *ctx = zmq_ctx_new();
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(dealer);
    int linger = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(dealer, tq_broker_client_endpoint(b)), 0);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    tq_msg_t ping = {.command = TQ_CMD_PING};
    assert_int_equal(tq_wire_send_msg(dealer, NULL, &ping, &buf, NULL, 0),
                     TQ_OK);
    msgpack_sbuffer_destroy(&buf);
    int clients = s_inject.looks[1];
    zmq_pollitem_t item = {dealer, 0, ZMQ_POLLIN, 0};
    int passes = 0;
    while (zmq_poll(&item, 1, 0) == 0 && passes < 1000) {
        assert_int_equal(tq_broker_lead(b, 10), 0);
        passes++;
    }
    assert_int_equal(zmq_poll(&item, 1, 0), 1); /* the PONG came */
    tq_frames_t frames;
    tq_frames_init(&frames);
    assert_int_equal(tq_wire_recv(dealer, &frames, false, 0), TQ_OK);
    tq_msg_t pong;
    const char *reason = NULL;
    assert_int_equal(tq_wire_decode(&frames, &pong, &reason), TQ_OK);
    assert_int_equal(pong.command, TQ_CMD_PONG);
    tq_frames_close(&frames);
    /* the PING was read without a look (its descriptor woke the wait),
       and the PONG sent while the drain read it went before the drain's
       empty receive: still no look */
    assert_int_equal(tq_broker_lead(b, 0), 0);
    assert_int_equal(s_inject.looks[1], clients);
    /* a send after the drain (a RESULT for a DONE read from a child):
       the wait after it looks, once */
    tqb_sent(b, b->clients);
    assert_int_equal(tq_broker_lead(b, 0), 0);
    assert_int_equal(s_inject.looks[1], clients + 1);
    assert_int_equal(tq_broker_lead(b, 0), 0);
    assert_int_equal(s_inject.looks[1], clients + 1);
    assert_int_equal(s_inject.looks[0], 1);
    s_inject.counted = NULL;
    zmq_close(dealer);
    zmq_ctx_term(ctx);
    tq_broker_destroy(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eintr_workers),
        cmocka_unit_test(test_eintr_clients),
        cmocka_unit_test(test_error_workers),
        cmocka_unit_test(test_error_clients),
        cmocka_unit_test(test_quiet_socket_not_asked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
