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
#include <string.h>

#include <cmocka.h>

#include "tq_broker_core.h"
#include "tq_harness.h"
#include "tq_wire.h"

int __real_zmq_getsockopt(void *socket, int option, void *value, size_t *size);
int __wrap_zmq_getsockopt(void *socket, int option, void *value, size_t *size);
int __real_zmq_msg_recv(zmq_msg_t *msg, void *socket, int flags);
int __wrap_zmq_msg_recv(zmq_msg_t *msg, void *socket, int flags);
int __real_zmq_msg_send(zmq_msg_t *msg, void *socket, int flags);
int __wrap_zmq_msg_send(zmq_msg_t *msg, void *socket, int flags);

static struct {
    tq_broker_t *broker;
    void *fail; /* the socket whose next ZMQ_EVENTS fails, NULL once done */
    int err; /* with this errno */
    int failed; /* looks failed */
    int after; /* the sockets' looks after the failure */
    tq_broker_t *counted; /* the broker whose looks are counted */
    int looks[2]; /* its ZMQ_EVENTS looks: workers, clients */
    char log[4096]; /* its clients socket: R a frame read, E a receive
                       that found nothing, S a frame sent; its workers
                       socket the same in lower case */
    size_t logged;
} s_inject;

static void
s_log(void *socket, char event)
{
    if (!s_inject.counted || s_inject.logged + 1 >= sizeof s_inject.log)
        return;
    if (socket == s_inject.counted->clients)
        s_inject.log[s_inject.logged++] = event;
    else if (socket == s_inject.counted->workers)
        s_inject.log[s_inject.logged++] = (char)(event - 'A' + 'a');
}

int
__wrap_zmq_msg_recv(zmq_msg_t *msg, void *socket, int flags)
{
    int rc = __real_zmq_msg_recv(msg, socket, flags);
    int err = errno;
    if (rc >= 0)
        s_log(socket, 'R');
    else if (err == EAGAIN)
        s_log(socket, 'E');
    errno = err;
    return rc;
}

int
__wrap_zmq_msg_send(zmq_msg_t *msg, void *socket, int flags)
{
    int rc = __real_zmq_msg_send(msg, socket, flags);
    int err = errno;
    s_log(socket, 'S');
    errno = err;
    return rc;
}

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

/* A DEALER connected to endpoint. */
static void *
s_dealer(void *ctx, const char *endpoint)
{
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(dealer);
    int linger = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(dealer, endpoint), 0);
    return dealer;
}

/* Leads passes of b until dealer has a message (bounded), and returns
   its command. */
static uint8_t
s_lead_until(tq_broker_t *b, void *dealer)
{
    zmq_pollitem_t item = {dealer, 0, ZMQ_POLLIN, 0};
    for (int passes = 0; zmq_poll(&item, 1, 0) == 0 && passes < 1000; passes++)
        assert_int_equal(tq_broker_lead(b, 10), 0);
    tq_frames_t frames;
    tq_frames_init(&frames);
    assert_int_equal(tq_wire_recv(dealer, &frames, false, 0), TQ_OK);
    tq_msg_t msg;
    const char *reason = NULL;
    assert_int_equal(tq_wire_decode(&frames, &msg, &reason), TQ_OK);
    tq_frames_close(&frames);
    return msg.command;
}

/* An idle broker woken by a lone SUBMIT sends its TASK to the child
   that waits for one before the receive that finds the clients socket
   empty (a system call on the round trip's path). Before, the drain's
   empty receive came first. */
static void
test_lone_message_answered_first(void **state)
{
    (void)state;
    tq_broker_config_t config = {0};
    tq_broker_t *b = tq_harness_broker_new(config);
    assert_non_null(b);
    void *ctx = zmq_ctx_new();
    void *client = s_dealer(ctx, tq_broker_client_endpoint(b));
    void *child = s_dealer(ctx, tq_broker_worker_endpoint(b));
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    tq_msg_t *ready = calloc(1, sizeof *ready);
    assert_non_null(ready);
    s_inject.counted = b;
    s_inject.logged = 0;
    ready->command = TQ_CMD_READY;
    ready->host = tq_str("h");
    ready->pid = 1234;
    ready->ppid = 1;
    ready->credit = 1;
    ready->queue_count = 1;
    ready->queues[0] = tq_str("q");
    ready->task_count = 1;
    ready->tasks[0] = tq_str("t");
    assert_int_equal(tq_wire_send_msg(child, NULL, ready, &buf, NULL, 0),
                     TQ_OK);
    free(ready);
    /* the READY read (and the workers socket found empty after it), and
       the broker idle: a PING answered */
    for (int passes = 0; passes < 1000; passes++) {
        s_inject.log[s_inject.logged] = 0;
        const char *r = strchr(s_inject.log, 'r');
        if (r && strchr(r, 'e'))
            break;
        assert_int_equal(tq_broker_lead(b, 10), 0);
    }
    tq_msg_t ping = {.command = TQ_CMD_PING};
    assert_int_equal(tq_wire_send_msg(client, NULL, &ping, &buf, NULL, 0),
                     TQ_OK);
    assert_int_equal(s_lead_until(b, client), TQ_CMD_PONG);
    for (int i = 0; i < 3; i++)
        assert_int_equal(tq_broker_lead(b, 0), 0);
    s_inject.logged = 0;
    tq_msg_t submit = {.command = TQ_CMD_SUBMIT,
                       .id = tq_str("lone-1"),
                       .task = tq_str("t"),
                       .queue = tq_str("q"),
                       .backoff_ms = 1000};
    zmq_msg_t args;
    zmq_msg_init_size(&args, 1);
    *(uint8_t *)zmq_msg_data(&args) = 0x90; /* [] */
    assert_int_equal(tq_wire_send_msg(client, NULL, &submit, &buf, &args, 0),
                     TQ_OK);
    zmq_msg_close(&args);
    msgpack_sbuffer_destroy(&buf);
    assert_int_equal(s_lead_until(b, child), TQ_CMD_TASK);
    s_inject.counted = NULL;
    s_inject.log[s_inject.logged] = 0;
    /* after the SUBMIT's frames were read: the TASK's frames sent on
       workers, then the clients socket's empty receive */
    const char *read = strchr(s_inject.log, 'R');
    assert_non_null(read);
    read += strspn(read, "R");
    const char *task = strchr(read, 's');
    const char *empty = strchr(read, 'E');
    assert_non_null(task);
    assert_non_null(empty);
    if (task > empty)
        fail_msg("the empty receive came before the TASK: %s", s_inject.log);
    zmq_close(client);
    zmq_close(child);
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
        cmocka_unit_test(test_lone_message_answered_first),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
