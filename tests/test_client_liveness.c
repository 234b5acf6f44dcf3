/* test_client_liveness.c - no caller of the client library waits for ever
   (issue 12 item 2, PROTOCOL.md section 10): a SUBMIT the broker never
   acknowledged is sent again with its id after a reconnect, a request that
   cannot be sent again ends TQ_EUNREACHABLE when its connection breaks,
   and an unacknowledged SUBMIT with no broker at all ends TQ_EUNREACHABLE
   after the liveness. A fake broker (a raw ROUTER in this process) makes
   the broken connection deterministic; a real tq-broker is stopped,
   killed and restarted around a submission. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <zmq.h>

#include "tq_client_core.h"
#include "tq_client_internal.h"
#include "tq_fake_broker.h"
#include "tq_harness.h"
#include "tq_proto.h"
#include "tq_wire.h"

#define S_WAIT_MS 15000 /* bound on anything that must happen */

/* A fake broker (tests/support/tq_fake_broker.h) under this file's names. */
typedef tq_fake_broker_t s_fake_t;

static inline int
s_fake_bind(s_fake_t *self)
{
    return tq_fake_broker_bind(self, S_WAIT_MS);
}

static inline int
s_fake_setup(void **state)
{
    tq_harness_init();
    *state = tq_fake_broker_new();
    return 0;
}

static inline int
s_fake_teardown(void **state)
{
    s_fake_t *self = *state;
    tq_fake_broker_destroy(&self);
    return 0;
}

/* The broker dies: its socket closes, every connection to it breaks. */
static inline void
s_fake_close(s_fake_t *self)
{
    tq_fake_broker_close(self);
}

/* Sends msg (and payload bytes, may be NULL) to the last sender. */
static inline void
s_fake_send(s_fake_t *self, tq_msg_t *msg, const void *payload, size_t size)
{
    tq_fake_broker_send(self, msg, payload, size);
}

/* Waits up to timeout_ms for a message of command, answering PINGs with
   PONG. True if it came. */
static inline bool
s_fake_expect(s_fake_t *self, uint8_t command, int timeout_ms)
{
    return tq_fake_broker_expect(self, command, timeout_ms);
}

/* The fake broker received a SUBMIT and died before it acknowledged it; a
   new one comes up on the same endpoint and answers PINGs. The client
   sends the SUBMIT again with the same id (the old one answered nothing
   and PONGs would keep the handle alive for ever), asks for the result
   once acknowledged (the id may have been known), and gets it. The
   liveness is a minute, so TQ_EUNREACHABLE cannot end the handle. */
static void
test_submit_resent_after_restart(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    tq_result_t *r = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)7);
    assert_non_null(r);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    char id[TQ_PROTO_MAX_ID + 1];
    snprintf(id, sizeof id, "%s", fake->id);
    assert_string_equal(id, tq_result_id(r));

    s_fake_close(fake);
    assert_int_equal(s_fake_bind(fake), 0);
    int64_t t0 = tq_harness_now_ms();
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    printf("SUBMIT %s sent again %lld ms after the restart (%llu PINGs "
           "answered)\n",
           fake->id, (long long)(tq_harness_now_ms() - t0),
           (unsigned long long)fake->pings);
    assert_string_equal(fake->id, id);
    assert_false(tq_result_ready(r));

    tq_msg_t ack = {.command = TQ_CMD_SUBMITTED, .id = tq_str(id)};
    s_fake_send(fake, &ack, NULL, 0);
    assert_true(s_fake_expect(fake, TQ_CMD_GET, S_WAIT_MS));
    assert_string_equal(fake->id, id);
    assert_true(fake->msg.wait);
    const uint8_t value[] = {0x2a}; /* 42 */
    tq_msg_t result = {.command = TQ_CMD_RESULT,
                       .id = tq_str(id),
                       .state = TQ_STATE_SUCCESS,
                       .code = TQ_OK,
                       .attempt = 1};
    s_fake_send(fake, &result, value, sizeof value);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_OK);
    const msgpack_object *v = tq_result_value(r);
    assert_non_null(v);
    assert_int_equal(v->via.u64, 42);
    tq_result_destroy(&r);
    tq_client_destroy(&client);
}

/* The fake broker reads a SUBMIT and never answers it, but answers every
   PING on the same connection: the client sends the SUBMIT again after its
   liveness (1 s here) rather than wait for ever, and the handle ends with
   the result of the second. */
static void
test_submit_resent_when_unanswered(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 1000);
    tq_result_t *r = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)5);
    assert_non_null(r);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    char id[TQ_PROTO_MAX_ID + 1];
    snprintf(id, sizeof id, "%s", fake->id);
    uint64_t pings = fake->pings;
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    printf("SUBMIT sent again after %llu PINGs answered\n",
           (unsigned long long)(fake->pings - pings));
    assert_string_equal(fake->id, id);
    assert_true(fake->pings > pings);
    tq_msg_t ack = {.command = TQ_CMD_SUBMITTED, .id = tq_str(id)};
    s_fake_send(fake, &ack, NULL, 0);
    assert_true(s_fake_expect(fake, TQ_CMD_GET, S_WAIT_MS));
    const uint8_t value[] = {0x05};
    tq_msg_t result = {.command = TQ_CMD_RESULT,
                       .id = tq_str(id),
                       .state = TQ_STATE_SUCCESS,
                       .code = TQ_OK,
                       .attempt = 1};
    s_fake_send(fake, &result, value, sizeof value);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_OK);
    tq_result_destroy(&r);
    tq_client_destroy(&client);
}

/* The broker acknowledged three SUBMITs, then dropped the RESULTs of two
   (its queue for the client was full: --max-client-backlog) and says so
   in its PONGs (PROTOCOL.md section 10, `dropped`). The client asks again
   for both (GET wait=true) and their handles end with the results. Before,
   it ignored the count and waited for ever: `tq map` of 300,000 tasks
   hung with every task done. */
static void
test_results_asked_again_after_drops(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 1500);
    enum { N = 3 };
    tq_result_t *r[N];
    char ids[N][TQ_PROTO_MAX_ID + 1];
    for (int i = 0; i < N; i++) {
        r[i] = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)i);
        assert_non_null(r[i]);
        snprintf(ids[i], sizeof ids[i], "%s", tq_result_id(r[i]));
    }
    for (int i = 0; i < N; i++) {
        assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
        tq_msg_t ack = {.command = TQ_CMD_SUBMITTED, .id = tq_str(fake->id)};
        s_fake_send(fake, &ack, NULL, 0);
    }
    const uint8_t value[] = {0x07};
    tq_msg_t result = {.command = TQ_CMD_RESULT,
                       .id = tq_str(ids[0]),
                       .state = TQ_STATE_SUCCESS,
                       .code = TQ_OK,
                       .attempt = 1};
    s_fake_send(fake, &result, value, sizeof value);
    assert_int_equal(tq_result_get(r[0], S_WAIT_MS), TQ_OK);
    /* the RESULTs of the other two were "dropped" */
    fake->dropped = 2;
    uint64_t pings = fake->pings;
    bool asked[N] = {false};
    for (int n = 0; n < N - 1; n++) {
        assert_true(s_fake_expect(fake, TQ_CMD_GET, S_WAIT_MS));
        assert_true(fake->msg.wait);
        int k = -1;
        for (int i = 1; i < N; i++)
            if (strcmp(fake->id, ids[i]) == 0)
                k = i;
        assert_true(k > 0);
        asked[k] = true;
        result.id = tq_str(ids[k]);
        s_fake_send(fake, &result, value, sizeof value);
    }
    /* after a PONG that said so */
    assert_true(fake->pings > pings);
    assert_true(asked[1] && asked[2]);
    for (int i = 1; i < N; i++) {
        assert_int_equal(tq_result_get(r[i], S_WAIT_MS), TQ_OK);
        assert_int_equal(tq_result_value(r[i])->via.u64, 7);
    }
    for (int i = 0; i < N; i++)
        tq_result_destroy(&r[i]);
    tq_client_destroy(&client);
}

/* An operator request made on a thread of its own: STATUS (its body
   kept) or PURGE. */
typedef struct {
    tq_client_t *client;
    bool purge;
    int rc;
    tq_buf_t body;
    char error[256];
    atomic_bool done;
} s_op_call_t;

static void *
s_op_thread(void *arg)
{
    s_op_call_t *call = arg;
    uint64_t purged = 0;
    call->rc = call->purge
        ? tq_client_purge(call->client, "default", &purged, 2 * S_WAIT_MS)
        : tq_client_status(call->client, &call->body, 2 * S_WAIT_MS);
    const char *text = "";
    if (call->rc != TQ_OK)
        tq_client_last_error(&text);
    snprintf(call->error, sizeof call->error, "%s", text);
    atomic_store(&call->done, true);
    return NULL;
}

/* The body {"n": n}. */
static size_t
s_body_n(uint8_t *out, uint8_t n)
{
    out[0] = 0x81, out[1] = 0xa1, out[2] = 'n', out[3] = n;
    return 4;
}

/* The broker dropped the STATUS_REPLY of the first of two STATUS requests
   and says so in its PONG. Answers are matched by the request's id: the
   second caller gets its own body (never the first's, as when they were
   matched by order), the first is sent again and gets its own. Then a
   PURGE whose REPLY is dropped cannot be sent again (it would purge what
   came since): it ends TQ_EUNREACHABLE saying so, and the next request is
   answered correctly. Before, the first caller waited for ever and the
   second got the first's answer. */
static void
test_operator_answers_matched_after_drops(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 1500);
    s_op_call_t calls[2] = {{.client = client}, {.client = client}};
    pthread_t threads[2];
    char ids[2][TQ_PROTO_MAX_ID + 1];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(
            pthread_create(&threads[i], NULL, s_op_thread, &calls[i]), 0);
        assert_true(s_fake_expect(fake, TQ_CMD_STATUS, S_WAIT_MS));
        assert_true(fake->id[0] != 0); /* the request's id */
        snprintf(ids[i], sizeof ids[i], "%s", fake->id);
    }
    assert_string_not_equal(ids[0], ids[1]);
    uint8_t body[8];
    /* the first one's answer is "dropped": only the second's goes */
    tq_msg_t reply = {.command = TQ_CMD_STATUS_REPLY, .id = tq_str(ids[1])};
    s_fake_send(fake, &reply, body, s_body_n(body, 2));
    pthread_join(threads[1], NULL);
    assert_int_equal(calls[1].rc, TQ_OK);
    assert_int_equal(calls[1].body.size, 4);
    assert_int_equal(((uint8_t *)calls[1].body.data)[3], 2);
    assert_false(atomic_load(&calls[0].done));
    fake->dropped = 1;
    uint64_t pings = fake->pings;
    /* the first is asked again, with its id, after a PONG that said so */
    assert_true(s_fake_expect(fake, TQ_CMD_STATUS, S_WAIT_MS));
    assert_true(fake->pings > pings);
    assert_string_equal(fake->id, ids[0]);
    reply.id = tq_str(ids[0]);
    s_fake_send(fake, &reply, body, s_body_n(body, 1));
    pthread_join(threads[0], NULL);
    assert_int_equal(calls[0].rc, TQ_OK);
    assert_int_equal(((uint8_t *)calls[0].body.data)[3], 1);

    /* a PURGE whose REPLY is dropped */
    s_op_call_t purge = {.client = client, .purge = true};
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_op_thread, &purge), 0);
    assert_true(s_fake_expect(fake, TQ_CMD_PURGE, S_WAIT_MS));
    assert_true(fake->id[0] != 0);
    fake->dropped = 2;
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    size_t purges = 1;
    while (!atomic_load(&purge.done) && tq_harness_now_ms() < deadline)
        /* answering PINGs; the PURGE is never sent twice */
        purges += s_fake_expect(fake, TQ_CMD_PURGE, 100);
    pthread_join(thread, NULL);
    assert_int_equal(purges, 1);
    printf("dropped PURGE: %s: %s\n", tq_strerror(purge.rc), purge.error);
    assert_int_equal(purge.rc, TQ_EUNREACHABLE);
    assert_non_null(strstr(purge.error, "dropped its reply"));
    assert_non_null(strstr(purge.error, "may or may not"));

    /* the next request gets its own answer */
    s_op_call_t last = {.client = client};
    assert_int_equal(pthread_create(&thread, NULL, s_op_thread, &last), 0);
    assert_true(s_fake_expect(fake, TQ_CMD_STATUS, S_WAIT_MS));
    reply.id = tq_str(fake->id);
    s_fake_send(fake, &reply, body, s_body_n(body, 3));
    pthread_join(thread, NULL);
    assert_int_equal(last.rc, TQ_OK);
    assert_int_equal(((uint8_t *)last.body.data)[3], 3);
    for (int i = 0; i < 2; i++)
        free(calls[i].body.data);
    free(last.body.data);
    tq_client_destroy(&client);
}

/* Receives one message on a raw DEALER within timeout_ms into m
   (frames kept in frames). True if one came. */
static bool
s_raw_recv(void *dealer, tq_frames_t *frames, tq_msg_t *m, int timeout_ms)
{
    zmq_pollitem_t item = {dealer, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) <= 0)
        return false;
    const char *reason = NULL;
    return tq_wire_recv(dealer, frames, false, 0) == TQ_OK &&
        tq_wire_decode(frames, m, &reason) == TQ_OK;
}

/* A real broker echoes the id of STATUS, FAILED and PURGE in its answer
   (PROTOCOL.md section 10), also for a client that does not read: with
   --max-client-backlog 1, a raw client sends 20,000 STATUS and reads only
   then; the answers that were not dropped each carry the id of their own
   request, in order, and the PONG counts the rest. */
static void
test_real_broker_echoes_ids(void **state)
{
    tq_harness_env_t *env = *state;
    const char *extra[] = {"--max-client-backlog", "1", NULL};
    assert_int_equal(tq_harness_env_start(env, extra), 0);
    void *ctx = zmq_ctx_new();
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    int one = 1, zero = 0;
    zmq_setsockopt(dealer, ZMQ_RCVHWM, &one, sizeof one);
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(dealer, env->broker.clients), 0);
    tq_frames_t frames;
    tq_frames_init(&frames);
    tq_msg_t *m = calloc(1, sizeof *m);
    assert_non_null(m);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    const uint8_t asks[] = {TQ_CMD_STATUS, TQ_CMD_FAILED, TQ_CMD_PURGE};
    const uint8_t answers[] = {TQ_CMD_STATUS_REPLY, TQ_CMD_REPLY, TQ_CMD_REPLY};
    const char *ids[] = {"s1", "f1", "p1"};
    /* one at a time: at backlog 1 an answer may still be dropped (libzmq
       hands the broker's thread its pipe's room back by a command, which
       it may read only after the next request), so a request whose answer
       did not come is asked again, a bounded number of times; an answer
       to an earlier ask that comes late is passed over */
    for (int i = 0; i < 3; i++) {
        tq_msg_t out = {.command = asks[i], .id = tq_str(ids[i])};
        if (asks[i] == TQ_CMD_PURGE)
            out.queue = tq_str("default");
        bool got = false;
        for (int try = 0; try < 10 && !got; try++) {
            assert_int_equal(
                tq_wire_send_msg(dealer, NULL, &out, &buf, NULL, 0), TQ_OK);
            while (!got && s_raw_recv(dealer, &frames, m, S_WAIT_MS / 5)) {
                int k = -1;
                for (int j = 0; j <= i; j++)
                    if (m->id.ptr && m->id.len == strlen(ids[j]) &&
                        memcmp(m->id.ptr, ids[j], m->id.len) == 0)
                        k = j;
                assert_true(k >= 0); /* only answers to what was asked */
                assert_int_equal(m->command, answers[k]);
                got = k == i;
            }
        }
        assert_true(got);
    }
    enum { N = 20000 };
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "s%d", i);
        tq_msg_t out = {.command = TQ_CMD_STATUS, .id = tq_str(id)};
        assert_int_equal(tq_wire_send_msg(dealer, NULL, &out, &buf, NULL, 0),
                         TQ_OK);
    }
    int received = 0, last = -1, pings = 0;
    bool ponged = false;
    uint64_t dropped = 0;
    int64_t deadline = tq_harness_now_ms() + 4 * S_WAIT_MS;
    while (!ponged && tq_harness_now_ms() < deadline) {
        if (!s_raw_recv(dealer, &frames, m, 1000)) {
            /* all read that came: the PONG's count covers every STATUS
               (one connection keeps order); a PONG may be dropped too */
            tq_msg_t ping = {.command = TQ_CMD_PING};
            tq_wire_send_msg(dealer, NULL, &ping, &buf, NULL, 0);
            pings++;
            continue;
        }
        if (m->command == TQ_CMD_PONG) {
            ponged = true;
            dropped = m->dropped;
            continue;
        }
        assert_int_equal(m->command, TQ_CMD_STATUS_REPLY);
        int k = -1;
        assert_true(m->id.ptr && m->id.len < sizeof id);
        tq_str_copy(id, sizeof id, m->id);
        assert_int_equal(sscanf(id, "s%d", &k), 1);
        assert_true(k > last && k < N); /* its own, in order */
        last = k;
        received++;
    }
    printf("%d STATUS to a client that did not read (backlog 1): %d "
           "answered, %llu dropped, %d PING(s)\n",
           N, received, (unsigned long long)dropped, pings);
    assert_true(ponged);
    /* every STATUS answered or counted; a dropped PONG counts too */
    assert_true((uint64_t)received + dropped >= N);
    assert_true((uint64_t)received + dropped <= (uint64_t)N + pings);
    msgpack_sbuffer_destroy(&buf);
    tq_frames_close(&frames);
    free(m);
    zmq_close(dealer);
    zmq_ctx_term(ctx);
    tq_harness_env_stop(env);
}

/* A STATUS request made on a thread of its own. */
typedef struct {
    tq_client_t *client;
    int rc;
} s_status_call_t;

static void *
s_status_thread(void *arg)
{
    s_status_call_t *call = arg;
    tq_buf_t body = {0};
    /* bounded, well past the time the connection takes to break */
    call->rc = tq_client_status(call->client, &body, 2 * S_WAIT_MS);
    free(body.data);
    return NULL;
}

/* A request that is not sent again (STATUS: answered in order) ends
   TQ_EUNREACHABLE when its connection breaks, long before the liveness
   (a minute): its answer can no longer come. */
static void
test_status_fails_on_broken_connection(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 60000);
    tq_result_t *r = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)1);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    tq_msg_t ack = {.command = TQ_CMD_SUBMITTED, .id = tq_str(fake->id)};
    s_fake_send(fake, &ack, NULL, 0);
    assert_int_equal(tq_result_wait_answer(r, S_WAIT_MS), TQ_OK);

    /* the STATUS call blocks: it runs on a thread of its own while the
       fake receives it and dies without answering */
    s_status_call_t call = {.client = client};
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_status_thread, &call), 0);
    bool seen = s_fake_expect(fake, TQ_CMD_STATUS, S_WAIT_MS);
    int64_t t0 = tq_harness_now_ms();
    s_fake_close(fake);
    pthread_join(thread, NULL);
    assert_true(seen);
    int rc = call.rc;
    printf("STATUS over a broken connection: %s after %lld ms\n",
           tq_strerror(rc), (long long)(tq_harness_now_ms() - t0));
    assert_int_equal(rc, TQ_EUNREACHABLE);
    /* the acknowledged task still waits for its result (no broker yet) */
    assert_false(tq_result_ready(r));
    assert_int_equal(s_fake_bind(fake), 0);
    /* the new broker is asked for it again */
    assert_true(s_fake_expect(fake, TQ_CMD_GET, S_WAIT_MS));
    tq_result_destroy(&r);
    tq_client_destroy(&client);
}

/* No broker comes back: the SUBMIT it never acknowledged ends
   TQ_EUNREACHABLE after the liveness (1 s here), never hangs. */
static void
test_submit_unreachable_without_broker(void **state)
{
    s_fake_t *fake = *state;
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, 1000);
    tq_result_t *r = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)7);
    assert_true(s_fake_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    s_fake_close(fake);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_EUNREACHABLE);
    printf("%s\n", tq_result_error(r));
    tq_result_destroy(&r);
    tq_client_destroy(&client);
    assert_int_equal(s_fake_bind(fake), 0); /* for the teardown */
}

/* A real stored broker is stopped (SIGSTOP), 20 tasks submitted to it (it
   cannot acknowledge), then it is killed (SIGKILL) and started again on
   the same endpoints and store. Every submission ends with its result: the
   client sent them again to the new broker. Its liveness is a minute, so
   without the resend it would wait (PONGs from the new broker keep it
   alive). */
static void
test_submit_survives_broker_kill(void **state)
{
    tq_harness_env_t *env = *state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "liveness"), 0);
    const char *data[] = {"--data", dir, NULL};
    assert_int_equal(tq_harness_env_start(env, data), 0);
    assert_true(tq_harness_env_add_worker(env, 1, NULL, true) > 0);
    tq_client_set_liveness(env->client, 60000);
    tq_result_t *ok =
        tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)1);
    assert_int_equal(tq_result_get(ok, S_WAIT_MS), TQ_OK);
    tq_result_destroy(&ok);

    char clients[TQ_HARNESS_EP_MAX], workers[TQ_HARNESS_EP_MAX];
    snprintf(clients, sizeof clients, "%s", env->broker.clients);
    snprintf(workers, sizeof workers, "%s", env->broker.workers);
    assert_int_equal(kill(env->broker.pid, SIGSTOP), 0);
    enum { N = 20 };
    tq_result_t *r[N];
    for (int i = 0; i < N; i++) {
        r[i] = tq_apply_async(env->client, "tq.echo", NULL, "i",
                              (int64_t)(100 + i));
        assert_non_null(r[i]);
    }
    /* they cannot be answered by a stopped broker */
    assert_int_equal(tq_result_wait_answer(r[N - 1], 300), TQ_ETIMEDOUT);
    assert_int_equal(kill(env->broker.pid, SIGKILL), 0);
    tq_harness_broker_stop(&env->broker); /* reaps it */
    int64_t t0 = tq_harness_now_ms();
    assert_int_equal(
        tq_harness_broker_start_on(&env->broker, clients, workers, data, NULL),
        0);
    int good = 0;
    int64_t deadline = tq_harness_now_ms() + 3 * S_WAIT_MS;
    for (int i = 0; i < N; i++) {
        int64_t left = deadline - tq_harness_now_ms();
        int rc = tq_result_get(r[i], left > 0 ? (int)left : 0);
        const msgpack_object *v = tq_result_value(r[i]);
        if (rc == TQ_OK && v && v->type == MSGPACK_OBJECT_ARRAY &&
            v->via.array.ptr[0].via.u64 == (uint64_t)(100 + i))
            good++;
        else if (good == i)
            printf("task %d: %s\n", i, tq_strerror(rc));
        tq_result_destroy(&r[i]);
    }
    printf("submissions across the kill: %d of %d ended with their "
           "results, %lld ms after the restart\n",
           good, N, (long long)(tq_harness_now_ms() - t0));
    assert_int_equal(good, N);
    tq_harness_env_stop(env);
    tq_harness_rmtree(dir);
}

/* tq map over 3,000 lines (test.record INDEX PATH 2: 2 ms each on 2
   children) while its stored broker is killed (SIGKILL) and started again
   on the same endpoints: tq map finishes with every line, in order, each
   the task's own index. */
static void
s_map_disrupted(void **state, bool stall)
{
    tq_harness_env_t *env = *state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "mapkill"), 0);
    char data_dir[300], in[300], out[300], err[300], rec[300];
    snprintf(data_dir, sizeof data_dir, "%s/data", dir);
    snprintf(in, sizeof in, "%s/in", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(err, sizeof err, "%s/err", dir);
    snprintf(rec, sizeof rec, "%s/record", dir);
    assert_int_equal(mkdir(data_dir, 0700), 0);
    const char *data[] = {"--data", data_dir, NULL};
    assert_int_equal(tq_harness_env_start(env, data), 0);
    const char *module[] = {"--module", TQ_TESTTASKS_SO, NULL};
    assert_true(tq_harness_env_add_worker(env, 2, module, true) > 0);
    enum { LINES = 3000 };
    FILE *f = fopen(in, "w");
    assert_non_null(f);
    for (int i = 1; i <= LINES; i++)
        fprintf(f, "[%d, \"%s\", 2]\n", i, rec);
    fclose(f);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "exec %s --broker %s map test.record -j 16 --no-progress "
             "< %s > %s 2> %s",
             TQ_CLI_BIN, env->broker.clients, in, out, err);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    pid_t map = tq_harness_spawn(argv, NULL, NULL, NULL);
    assert_true(map > 0);

    /* kill the broker once the run is well under way */
    uint64_t done = 0;
    int64_t deadline = tq_harness_now_ms() + 4 * S_WAIT_MS;
    while (done < 300 && tq_harness_now_ms() < deadline) {
        tq_harness_status_t st;
        if (tq_harness_status(env->client, &st, 5000) == TQ_OK)
            done = tq_harness_counter(&st, "completed");
        tq_harness_status_free(&st);
        tq_harness_sleep_ms(20);
    }
    assert_true(done >= 300);
    if (stall) {
        /* the stall is the scenario: 4 s, past every liveness (3 s) */
        assert_int_equal(kill(env->broker.pid, SIGSTOP), 0);
        tq_harness_sleep_ms(4000);
        assert_int_equal(kill(env->broker.pid, SIGCONT), 0);
    } else {
        char clients[TQ_HARNESS_EP_MAX], workers[TQ_HARNESS_EP_MAX];
        snprintf(clients, sizeof clients, "%s", env->broker.clients);
        snprintf(workers, sizeof workers, "%s", env->broker.workers);
        assert_int_equal(kill(env->broker.pid, SIGKILL), 0);
        tq_harness_broker_stop(&env->broker);
        assert_int_equal(tq_harness_broker_start_on(&env->broker, clients,
                                                    workers, data, NULL),
                         0);
    }
    int status = -1;
    int rc = tq_harness_wait_exit(map, 8 * S_WAIT_MS, &status);
    if (rc != 0) {
        kill(map, SIGKILL);
        tq_harness_wait_exit(map, S_WAIT_MS, NULL);
    }
    f = fopen(out, "r");
    assert_non_null(f);
    char line[64];
    int n = 0, wrong = 0;
    while (fgets(line, sizeof line, f)) {
        n++;
        if (atoi(line) != n && wrong++ < 5)
            printf("line %d: %s", n, line);
    }
    fclose(f);
    printf("tq map across a broker %s: %d of %d lines, %d wrong, exit "
           "status %d\n",
           stall ? "stall" : "kill", n, LINES, wrong, status);
    assert_int_equal(rc, 0);
    assert_int_equal(n, LINES);
    assert_int_equal(wrong, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    tq_harness_env_stop(env);
    tq_harness_rmtree(dir);
}

static void
test_map_survives_broker_kill(void **state)
{
    s_map_disrupted(state, false);
}

/* tq map against a broker that keeps at most 2 replies queued for a
   client (--max-client-backlog 2) and drops the rest, as a loaded broker
   does with 100,000 for a client that reads slower than 1,000 children
   finish tasks: replies are dropped (SUBMITTED, RESULT), the broker's
   PONGs say so, and the client asks again. tq map finishes with every
   line, in order. Before, the lines whose RESULT was dropped waited for
   ever. */
static void
test_map_survives_dropped_replies(void **state)
{
    tq_harness_env_t *env = *state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "mapdrop"), 0);
    char in[300], out[300], err[300];
    snprintf(in, sizeof in, "%s/in", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(err, sizeof err, "%s/err", dir);
    const char *extra[] = {"--max-client-backlog", "2", NULL};
    assert_int_equal(tq_harness_env_start(env, extra), 0);
    assert_true(tq_harness_env_add_worker(env, 2, NULL, true) > 0);
    enum { LINES = 1000 };
    FILE *f = fopen(in, "w");
    assert_non_null(f);
    for (int i = 1; i <= LINES; i++)
        fprintf(f, "%d\n", i);
    fclose(f);
    char cmd[2048];
    /* without BATCH: batched, the replies for it fit in the backlog of 2
       messages, and the condition would not be there */
    snprintf(cmd, sizeof cmd,
             "TQ_NO_BATCH=1 exec %s --broker %s map tq.echo -j 64 "
             "--no-progress < %s > %s 2> %s",
             TQ_CLI_BIN, env->broker.clients, in, out, err);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    pid_t map = tq_harness_spawn(argv, NULL, NULL, NULL);
    assert_true(map > 0);
    int status = -1;
    int rc = tq_harness_wait_exit(map, 8 * S_WAIT_MS, &status);
    if (rc != 0) {
        kill(map, SIGKILL);
        tq_harness_wait_exit(map, S_WAIT_MS, NULL);
    }
    f = fopen(out, "r");
    assert_non_null(f);
    char line[64];
    int n = 0, wrong = 0, v = 0;
    while (fgets(line, sizeof line, f)) {
        n++;
        if ((sscanf(line, "[%d]", &v) != 1 || v != n) && wrong++ < 5)
            printf("line %d: %s", n, line);
    }
    fclose(f);
    tq_harness_status_t st;
    assert_int_equal(tq_harness_status(env->client, &st, 5000), TQ_OK);
    uint64_t dropped = tq_harness_counter(&st, "dropped");
    uint64_t completed = tq_harness_counter(&st, "completed");
    tq_harness_status_free(&st);
    printf("tq map with --max-client-backlog 2: %d of %d lines, %d wrong, "
           "exit status %d; the broker completed %llu tasks, dropped %llu "
           "replies\n",
           n, LINES, wrong, status, (unsigned long long)completed,
           (unsigned long long)dropped);
    /* the condition was there: replies were dropped */
    assert_true(dropped > 0);
    assert_int_equal(rc, 0);
    assert_int_equal(n, LINES);
    assert_int_equal(wrong, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    tq_harness_env_stop(env);
    tq_harness_rmtree(dir);
}

/* The same with the broker stopped (SIGSTOP) for 4 s instead: lines whose
   submission went unanswered for the liveness end TQ_EUNREACHABLE and tq
   map submits them again; every line comes out. The broker's own stall
   does not make it drop the worker host (its time is credited to every
   host session), and a host that reconnected during the stall starts a
   new session whose children announce themselves again. */
static void
test_map_survives_broker_stall(void **state)
{
    s_map_disrupted(state, true);
}

/* ---- several brokers (PROTOCOL.md section 12) ---------------------------- */

/* A fake broker on a thread of its own: a standby answers every message
   with ERROR TQ_ESTANDBY (with the request's id when it has one); a silent
   one reads everything and answers nothing. */
typedef struct {
    void *ctx;
    void *router;
    char endpoint[TQ_HARNESS_EP_MAX];
    bool answer; /* a standby, else silent */
    atomic_bool stop;
    atomic_uint submits; /* SUBMITs received */
    atomic_uint requests; /* messages received (PINGs too) */
    pthread_t thread;
} s_other_t;

static void *
s_other_run(void *arg)
{
    s_other_t *self = arg;
    tq_frames_t frames;
    tq_frames_init(&frames);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    tq_msg_t *msg = calloc(1, sizeof *msg);
    while (!atomic_load(&self->stop)) {
        zmq_pollitem_t item = {self->router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 20) <= 0)
            continue;
        if (tq_wire_recv(self->router, &frames, true, 0) != TQ_OK)
            continue;
        const char *reason = NULL;
        if (tq_wire_decode(&frames, msg, &reason) != TQ_OK)
            continue;
        atomic_fetch_add(&self->requests, 1);
        if (msg->command == TQ_CMD_SUBMIT)
            atomic_fetch_add(&self->submits, 1);
        if (!self->answer)
            continue;
        char id[TQ_PROTO_MAX_ID + 1];
        tq_str_copy(id, sizeof id, msg->id);
        tq_msg_t error = {.command = TQ_CMD_ERROR,
                          .id = tq_str(msg->id.ptr ? id : NULL),
                          .code = TQ_ESTANDBY,
                          .error = tq_str("this broker is a standby")};
        tq_wire_send_msg(self->router, &frames.identity, &error, &buf, NULL, 0);
    }
    free(msg);
    msgpack_sbuffer_destroy(&buf);
    tq_frames_close(&frames);
    return NULL;
}

static void
s_other_start(s_other_t *self, bool answer)
{
    memset(self, 0, sizeof *self);
    self->answer = answer;
    self->ctx = zmq_ctx_new();
    self->router =
        tq_harness_router(self->ctx, self->endpoint, sizeof self->endpoint, 0);
    assert_non_null(self->router);
    assert_int_equal(pthread_create(&self->thread, NULL, s_other_run, self), 0);
}

static void
s_other_stop(s_other_t *self)
{
    atomic_store(&self->stop, true);
    pthread_join(self->thread, NULL);
    zmq_close(self->router);
    zmq_ctx_term(self->ctx);
}

/* Submits N tasks through a client whose list starts with `first` and
   ends with the real broker of env: each ends with its own result, in
   submission order, and a STATUS (id-less, answered in order) is answered
   by the real broker too. Returns the client's moves to the next broker. */
static uint64_t
s_through_list(tq_harness_env_t *env, s_other_t *first, int liveness_ms)
{
    char list[2 * TQ_HARNESS_EP_MAX + 2];
    snprintf(list, sizeof list, "%s,%s", first->endpoint, env->broker.clients);
    tq_client_t *client = tq_client_new(list);
    assert_non_null(client);
    assert_string_equal(tq_client_endpoint(client), list);
    tq_client_set_liveness(client, liveness_ms);
    enum { N = 20 };
    tq_result_t *r[N];
    for (int i = 0; i < N; i++) {
        r[i] = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)(300 + i));
        assert_non_null(r[i]);
    }
    int good = 0;
    for (int i = 0; i < N; i++) {
        int rc = tq_result_get(r[i], 3 * S_WAIT_MS);
        const msgpack_object *v = tq_result_value(r[i]);
        if (rc == TQ_OK && v && v->type == MSGPACK_OBJECT_ARRAY &&
            v->via.array.ptr[0].via.u64 == (uint64_t)(300 + i))
            good++;
        else
            printf("task %d: %s %s\n", i, tq_strerror(rc),
                   tq_result_error(r[i]));
        tq_result_destroy(&r[i]);
    }
    assert_int_equal(good, N);
    tq_buf_t body = {0};
    assert_int_equal(tq_client_status(client, &body, 3 * S_WAIT_MS), TQ_OK);
    tq_buf_free(&body);
    if (first->answer) /* a standby: the client stays where it went */
        assert_string_equal(tq_client_current_endpoint(client),
                            env->broker.clients);
    /* each request kept one state: sent again after the move (SENT ->
       QUEUED), never failed, each submission acknowledged and done once
       (acknowledged by SUBMITTED, or by its RESULT when the broker folds
       SUBMITTED into it: then done straight from SENT or QUEUED; the
       STATUS is done so too) */
    uint64_t failed = 0;
    for (int from = 0; from < TQ_REQ_STATES_; from++)
        failed += tq_client_moves(client, from, TQ_REQ_FAILED);
    assert_int_equal(failed, 0);
    assert_true(tq_client_moves(client, TQ_REQ_SENT, TQ_REQ_QUEUED) >= 1);
    uint64_t acked = tq_client_moves(client, TQ_REQ_SENT, TQ_REQ_ACKED) +
        tq_client_moves(client, TQ_REQ_QUEUED, TQ_REQ_ACKED);
    uint64_t done_unacked = tq_client_moves(client, TQ_REQ_SENT, TQ_REQ_DONE) +
        tq_client_moves(client, TQ_REQ_QUEUED, TQ_REQ_DONE);
    assert_int_equal(acked + done_unacked, N + 1);
    assert_int_equal(tq_client_moves(client, TQ_REQ_ACKED, TQ_REQ_DONE), acked);
    uint64_t moves = tq_client_broker_moves(client);
    printf("%s first: %u SUBMIT(s) and %u message(s) to it, %llu move(s), "
           "%d of %d results\n",
           first->answer ? "a standby" : "a silent broker",
           atomic_load(&first->submits), atomic_load(&first->requests),
           (unsigned long long)moves, good, N);
    tq_client_destroy(&client);
    return moves;
}

/* The first broker of the list is a standby: it answers TQ_ESTANDBY, the
   client moves to the next (once: the real broker answers), sends its
   submissions there with their ids, and every task ends with its result.
   The standby saw at least one SUBMIT and carried out none. */
static void
test_list_standby_first(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    assert_true(tq_harness_env_add_worker(env, 2, NULL, true) > 0);
    s_other_t standby;
    s_other_start(&standby, true);
    uint64_t moves = s_through_list(env, &standby, 60000);
    assert_int_equal(moves, 1);
    assert_true(atomic_load(&standby.submits) >= 1);
    s_other_stop(&standby);
    tq_harness_env_stop(env);
}

/* The first broker of the list reads everything and never answers: after
   the liveness (5 s) the client moves to the next and every task ends
   with its result there (each unanswered request waits for an answer from
   each broker in turn before it could end unreachable). */
static void
test_list_silent_first(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    assert_true(tq_harness_env_add_worker(env, 2, NULL, true) > 0);
    s_other_t silent;
    s_other_start(&silent, false);
    uint64_t moves = s_through_list(env, &silent, 5000);
    /* once at least (a loaded machine may stall the real broker past the
       liveness too) */
    assert_true(moves >= 1);
    assert_true(atomic_load(&silent.submits) >= 1);
    s_other_stop(&silent);
    tq_harness_env_stop(env);
}

/* No broker of the list is active (two standbys): the client goes round
   the list, but a submission never hangs: it ends TQ_EUNREACHABLE after
   the liveness bound, saying the standbys answered TQ_ESTANDBY. Then a
   real broker at the end of a list of the tq CLI answers `tq status` and
   `tq tasks`. */
static void
test_list_no_active(void **state)
{
    tq_harness_env_t *env = *state;
    s_other_t a, b;
    s_other_start(&a, true);
    s_other_start(&b, true);
    char list[2 * TQ_HARNESS_EP_MAX + 2];
    snprintf(list, sizeof list, "%s,%s", a.endpoint, b.endpoint);
    tq_client_t *client = tq_client_new(list);
    assert_non_null(client);
    tq_client_set_liveness(client, 1000);
    tq_result_t *r = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)1);
    assert_int_equal(tq_result_get(r, 3 * S_WAIT_MS), TQ_EUNREACHABLE);
    printf("%s (%llu moves)\n", tq_result_error(r),
           (unsigned long long)tq_client_broker_moves(client));
    assert_non_null(strstr(tq_result_error(r), "TQ_ESTANDBY"));
    assert_true(tq_client_broker_moves(client) >= 2);
    assert_true(atomic_load(&a.submits) >= 1);
    assert_true(atomic_load(&b.submits) >= 1);
    tq_result_destroy(&r);
    tq_client_destroy(&client);

    /* the CLI takes the same list (TQ_BROKER) */
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    snprintf(list, sizeof list, "%s,%s", a.endpoint, env->broker.clients);
    char *argv[] = {TQ_CLI_BIN, "status", "--json", NULL};
    tq_harness_run_t run = {0};
    assert_int_equal(tq_harness_run(argv, list, 2 * S_WAIT_MS, &run), 0);
    if (run.exit_code != 0)
        printf("tq status: %s\n", run.err);
    assert_int_equal(run.exit_code, 0);
    assert_non_null(strstr(run.out, "\"queues\""));
    tq_harness_run_free(&run);
    /* tq tasks (its own socket, one request) passes the standby by too */
    unsigned before = atomic_load(&a.requests);
    char *tasks[] = {TQ_CLI_BIN, "tasks", "--json", NULL};
    assert_int_equal(tq_harness_run(tasks, list, 2 * S_WAIT_MS, &run), 0);
    if (run.exit_code != 0)
        printf("tq tasks: %s\n", run.err);
    assert_int_equal(run.exit_code, 0);
    assert_true(atomic_load(&a.requests) > before);
    tq_harness_run_free(&run);
    /* an invalid list is refused with its reason */
    snprintf(list, sizeof list, "%s,,%s", a.endpoint, env->broker.clients);
    assert_int_equal(tq_harness_run(argv, list, 2 * S_WAIT_MS, &run), 0);
    assert_int_equal(run.exit_code, 2);
    assert_non_null(strstr(run.err, "empty endpoint"));
    tq_harness_run_free(&run);
    s_other_stop(&a);
    s_other_stop(&b);
    tq_harness_env_stop(env);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_submit_resent_after_restart,
                                        s_fake_setup, s_fake_teardown),
        cmocka_unit_test_setup_teardown(
            test_operator_answers_matched_after_drops, s_fake_setup,
            s_fake_teardown),
        cmocka_unit_test_setup_teardown(test_submit_resent_when_unanswered,
                                        s_fake_setup, s_fake_teardown),
        cmocka_unit_test_setup_teardown(test_results_asked_again_after_drops,
                                        s_fake_setup, s_fake_teardown),
        cmocka_unit_test_setup_teardown(test_status_fails_on_broken_connection,
                                        s_fake_setup, s_fake_teardown),
        cmocka_unit_test_setup_teardown(test_submit_unreachable_without_broker,
                                        s_fake_setup, s_fake_teardown),
        cmocka_unit_test_setup_teardown(test_submit_survives_broker_kill,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_map_survives_broker_kill,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_map_survives_broker_stall,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_real_broker_echoes_ids,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_map_survives_dropped_replies,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_list_standby_first,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_list_silent_first,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(
            test_list_no_active, tq_harness_env_setup, tq_harness_env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
