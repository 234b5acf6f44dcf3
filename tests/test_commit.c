/* test_commit.c - the broker's store commit runs off its loop (issue 12,
   "bounded everywhere"): while a commit is in flight the loop keeps
   serving (PING, worker hosts, small tasks dispatched and their results
   delivered), nothing is acknowledged before the commit that stores it,
   acknowledgements go out in request order, and a 50 MiB argument
   committed that way survives kill -9; on the SQLite store and on
   PostgreSQL (a private cluster). Real tq-broker and tq-worker
   processes on 127.0.0.1:* ports. A commit is held in flight by the
   broker's test hook TQ_TEST_HOLD_COMMITS (commits wait while the file it
   names exists): the checks are causal, never timed. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "tq_harness.h"
#include "tq_pg.h"
#include "tq_proto.h"
#include "tq_raw_client.h"
#include "tq_wire.h"

#define S_BIG (50u << 20) /* the large argument, under max-message */
#define S_SMALL 20 /* small tasks sent behind it */
#define S_WAIT_MS 60000 /* bound on each wait */

/* ---- a raw TQP/1 client ---- */

typedef tq_raw_client_t s_raw_t; /* tests/support/tq_raw_client.h */

static s_raw_t *
s_raw_new(const char *endpoint)
{
    return tq_raw_client_new(endpoint, 0);
}

static void
s_raw_destroy(s_raw_t **self_p)
{
    tq_raw_client_destroy(self_p);
}

/* Sends self->out with payload (moved, may be NULL). */
static void
s_raw_send(s_raw_t *self, zmq_msg_t *payload)
{
    assert_int_equal(
        tq_wire_send_msg(self->sock, NULL, self->out, &self->sbuf, payload, 0),
        TQ_OK);
}

/* SUBMIT id tq.echo on queue with args (a msgpack array, size bytes). */
static void
s_raw_submit(s_raw_t *self, const char *id, const char *queue, zmq_msg_t *args)
{
    memset(self->out, 0, sizeof *self->out);
    self->out->command = TQ_CMD_SUBMIT;
    self->out->id = tq_str(id);
    self->out->task = tq_str("tq.echo");
    self->out->queue = tq_str(queue);
    s_raw_send(self, args);
}

static void
s_raw_simple(s_raw_t *self, uint8_t command, const char *id, bool wait)
{
    memset(self->out, 0, sizeof *self->out);
    self->out->command = command;
    self->out->id = tq_str(id);
    self->out->wait = wait;
    s_raw_send(self, NULL);
}

/* Receives one message into self->in within timeout_ms; 1, or 0. */
static int
s_raw_recv(s_raw_t *self, int timeout_ms)
{
    return tq_raw_client_recv(self, timeout_ms);
}

/* [bin of size bytes], every byte `fill`: one msgpack array. */
static void
s_big_args(zmq_msg_t *msg, size_t size, uint8_t fill)
{
    assert_int_equal(zmq_msg_init_size(msg, size + 6), 0);
    uint8_t *p = zmq_msg_data(msg);
    p[0] = 0x91; /* array of 1 */
    p[1] = 0xc6; /* bin 32 */
    p[2] = (uint8_t)(size >> 24);
    p[3] = (uint8_t)(size >> 16);
    p[4] = (uint8_t)(size >> 8);
    p[5] = (uint8_t)size;
    memset(p + 6, fill, size);
}

/* [i] */
static void
s_small_args(zmq_msg_t *msg, int i)
{
    assert_int_equal(zmq_msg_init_size(msg, 2), 0);
    uint8_t *p = zmq_msg_data(msg);
    p[0] = 0x91;
    p[1] = (uint8_t)i; /* positive fixint */
}

static bool
s_is(const tq_str_t s, const char *text)
{
    return s.len == strlen(text) && memcmp(s.ptr, text, s.len) == 0;
}

/* The index of small-N in s, or -1. */
static int
s_small_index(const tq_str_t s)
{
    char id[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(id, sizeof id, s);
    int i = -1;
    if (sscanf(id, "small-%d", &i) != 1 || i < 0 || i >= S_SMALL)
        return -1;
    return i;
}

/* A 50 MiB SUBMIT whose commit is held in flight: the loop meanwhile
   answers PING, dispatches the small tasks sent after it and delivers
   their results, and acknowledges nothing; once the commit may go, the
   acknowledgements come in request order; after kill -9 the large task
   is there with its whole argument. */
static void
s_serves_during_commit(const char *const extra[], const char *hold)
{
    FILE *f = fopen(hold, "w");
    assert_non_null(f);
    fclose(f);
    setenv("TQ_TEST_HOLD_COMMITS", hold, 1);
    tq_harness_broker_t broker;
    int started = tq_harness_broker_start(&broker, extra);
    unsetenv("TQ_TEST_HOLD_COMMITS");
    assert_int_equal(started, 0);
    pid_t host = tq_harness_worker_start(broker.workers, 2, NULL);
    assert_true(host > 0);

    s_raw_t *raw = s_raw_new(broker.clients);
    zmq_msg_t args;
    s_big_args(&args, S_BIG, 0x5a);
    s_raw_submit(raw, "big", "held", &args);
    for (int i = 0; i < S_SMALL; i++) {
        char id[32];
        snprintf(id, sizeof id, "small-%d", i);
        s_small_args(&args, i);
        s_raw_submit(raw, id, TQ_DEFAULT_QUEUE, &args);
    }
    s_raw_simple(raw, TQ_CMD_PING, NULL, false);

    /* the commit of the large task cannot end: the loop still serves */
    int results = 0, acks = 0, pongs = 0;
    bool done[S_SMALL] = {false};
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    while ((results < S_SMALL || pongs == 0) &&
           tq_harness_now_ms() < deadline) {
        if (!s_raw_recv(raw, 100))
            continue;
        tq_msg_t *m = raw->in;
        if (m->command == TQ_CMD_SUBMITTED)
            acks++;
        else if (m->command == TQ_CMD_PONG)
            pongs++;
        else if (m->command == TQ_CMD_RESULT) {
            int i = s_small_index(m->id);
            assert_true(i >= 0);
            assert_int_equal(m->state, TQ_STATE_SUCCESS);
            if (!done[i])
                results++;
            done[i] = true;
        }
    }
    printf("commit held: %d of %d small results, %d PONG, %d acknowledged\n",
           results, S_SMALL, pongs, acks);
    assert_int_equal(results, S_SMALL);
    assert_true(pongs > 0);
    /* nothing is acknowledged before the commit that stores it */
    assert_int_equal(acks, 0);

    /* the commits may go: every SUBMIT acknowledged, in request order */
    assert_int_equal(unlink(hold), 0);
    int order[S_SMALL + 1], seen = 0;
    deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (seen < S_SMALL + 1 && tq_harness_now_ms() < deadline) {
        if (!s_raw_recv(raw, 100) || raw->in->command != TQ_CMD_SUBMITTED)
            continue;
        order[seen++] =
            s_is(raw->in->id, "big") ? -1 : s_small_index(raw->in->id);
    }
    assert_int_equal(seen, S_SMALL + 1);
    assert_int_equal(order[0], -1);
    for (int i = 1; i <= S_SMALL; i++)
        assert_int_equal(order[i], i - 1);
    s_raw_destroy(&raw);

    /* acknowledged = committed: the large task survives kill -9 whole */
    char clients[TQ_HARNESS_EP_MAX], workers[TQ_HARNESS_EP_MAX];
    snprintf(clients, sizeof clients, "%s", broker.clients);
    snprintf(workers, sizeof workers, "%s", broker.workers);
    kill(broker.pid, SIGKILL);
    int status = tq_harness_broker_stop(&broker);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    tq_harness_stop(host);
    int restarted = -1;
    for (int attempt = 0; attempt < 5 && restarted != 0; attempt++) {
        restarted =
            tq_harness_broker_start_on(&broker, clients, workers, extra, NULL);
        if (restarted != 0)
            tq_harness_sleep_ms(200);
    }
    assert_int_equal(restarted, 0);
    const char *held_queue[] = {"--queue", "held", NULL};
    host = tq_harness_worker_start(broker.workers, 1, held_queue);
    assert_true(host > 0);
    raw = s_raw_new(broker.clients);
    s_raw_simple(raw, TQ_CMD_GET, "big", true);
    bool answered = false;
    deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (!answered && tq_harness_now_ms() < deadline) {
        if (!s_raw_recv(raw, 100) || !s_is(raw->in->id, "big"))
            continue;
        if (raw->in->command == TQ_CMD_ERROR &&
            raw->in->code == TQ_ESTANDBY) {
            /* PostgreSQL: a standby until the killed broker's lease
               lapses; ask again */
            tq_harness_sleep_ms(200);
            s_raw_simple(raw, TQ_CMD_GET, "big", true);
            continue;
        }
        answered = raw->in->command == TQ_CMD_RESULT ||
            raw->in->command == TQ_CMD_UNKNOWN;
    }
    assert_true(answered);
    assert_int_equal(raw->in->command, TQ_CMD_RESULT);
    assert_int_equal(raw->in->state, TQ_STATE_SUCCESS);
    /* tq.echo returns its argument array as it came */
    zmq_msg_t *value = &raw->frames.payload;
    printf("after kill -9: the large task ran on its stored argument, "
           "%zu bytes back\n",
           zmq_msg_size(value));
    assert_int_equal(zmq_msg_size(value), S_BIG + 6);
    const uint8_t *v = zmq_msg_data(value);
    assert_true(v[6] == 0x5a && v[S_BIG + 5] == 0x5a);
    s_raw_destroy(&raw);
    tq_harness_stop(host);
    tq_harness_broker_stop(&broker);
}

/* A private PostgreSQL cluster; the test is skipped without one. */
static tq_pg_t *
s_pg_or_skip(void)
{
    tq_pg_t *pg = tq_pg_new();
    if (!pg) {
        printf("skipped: no PostgreSQL cluster could be started "
               "(scripts/deps.sh installs postgresql)\n");
        skip();
    }
    return pg;
}

/* On the SQLite store (--data DIR). */
static void
test_sqlite_serves_during_commit(void **state)
{
    (void)state;
    char dir[512], data[600], hold[600];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "commit"), 0);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(hold, sizeof hold, "%s/hold", dir);
    const char *extra[] = {"--data", data, NULL};
    s_serves_during_commit(extra, hold);
    tq_harness_rmtree(dir);
}

/* On the PostgreSQL store (--store URL), a private cluster. */
static void
test_pg_serves_during_commit(void **state)
{
    (void)state;
    tq_pg_t *pg = s_pg_or_skip();
    char dir[512], hold[600], url[512];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "commit-pg"), 0);
    snprintf(hold, sizeof hold, "%s/hold", dir);
    snprintf(url, sizeof url, "%s", tq_pg_url(pg));
    const char *extra[] = {"--store", url, NULL};
    s_serves_during_commit(extra, hold);
    tq_pg_destroy(&pg);
    tq_harness_rmtree(dir);
}

/* RETRY of a dead letter is answered SUBMITTED only once its move back to
   the queue is committed: with commits held, the PING sent after it is
   answered first. */
static void
test_retry_acked_once_committed(void **state)
{
    (void)state;
    char dir[512], data[600], hold[600];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "commit-retry"), 0);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(hold, sizeof hold, "%s/hold", dir);
    const char *extra[] = {"--data", data, NULL};
    setenv("TQ_TEST_HOLD_COMMITS", hold, 1);
    tq_harness_broker_t broker;
    int started = tq_harness_broker_start(&broker, extra);
    unsetenv("TQ_TEST_HOLD_COMMITS");
    assert_int_equal(started, 0);
    pid_t host = tq_harness_worker_start(broker.workers, 1, NULL);
    assert_true(host > 0);
    s_raw_t *raw = s_raw_new(broker.clients);

    /* a dead letter: tq.fail ["no"] */
    memset(raw->out, 0, sizeof *raw->out);
    raw->out->command = TQ_CMD_SUBMIT;
    raw->out->id = tq_str("dead");
    raw->out->task = tq_str("tq.fail");
    raw->out->queue = tq_str(TQ_DEFAULT_QUEUE);
    zmq_msg_t args;
    assert_int_equal(zmq_msg_init_size(&args, 4), 0);
    memcpy(zmq_msg_data(&args), "\x91\xa2no", 4);
    s_raw_send(raw, &args);
    bool acked = false, failed = false;
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (!(acked && failed) && tq_harness_now_ms() < deadline) {
        if (!s_raw_recv(raw, 100))
            continue;
        acked |= raw->in->command == TQ_CMD_SUBMITTED;
        failed |= raw->in->command == TQ_CMD_RESULT &&
            raw->in->state == TQ_STATE_FAILURE;
    }
    assert_true(acked && failed);

    FILE *f = fopen(hold, "w");
    assert_non_null(f);
    fclose(f);
    s_raw_simple(raw, TQ_CMD_RETRY, "dead", false);
    s_raw_simple(raw, TQ_CMD_PING, NULL, false);
    int first = -1;
    deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (first < 0 && tq_harness_now_ms() < deadline)
        if (s_raw_recv(raw, 100) &&
            (raw->in->command == TQ_CMD_PONG ||
             raw->in->command == TQ_CMD_SUBMITTED))
            first = raw->in->command;
    assert_int_equal(first, TQ_CMD_PONG);
    assert_int_equal(unlink(hold), 0);
    acked = false;
    deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (!acked && tq_harness_now_ms() < deadline)
        acked = s_raw_recv(raw, 100) && raw->in->command == TQ_CMD_SUBMITTED &&
            s_is(raw->in->id, "dead");
    assert_true(acked);
    printf("RETRY: PONG first while the commit was held, SUBMITTED after\n");
    s_raw_destroy(&raw);
    tq_harness_stop(host);
    tq_harness_broker_stop(&broker);
    tq_harness_rmtree(dir);
}

/* The commit thread's failure reaches the loop: with the PostgreSQL server
   gone, the next commit fails, nothing of it is acknowledged, the broker
   logs the failure naming the store and demotes itself to a standby
   (PROTOCOL.md section 12): it answers TQ_ESTANDBY from then on. */
static void
test_pg_lost_stops_acks(void **state)
{
    (void)state;
    tq_pg_t *pg = s_pg_or_skip();
    char dir[512], log[600], url[512];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "commit-lost"), 0);
    snprintf(log, sizeof log, "%s/broker.log", dir);
    snprintf(url, sizeof url, "%s", tq_pg_url(pg));
    const char *extra[] = {"--store", url, NULL};
    tq_harness_broker_t broker;
    assert_int_equal(tq_harness_broker_start_on(&broker, "tcp://127.0.0.1:*",
                                                "tcp://127.0.0.1:*", extra,
                                                log),
                     0);
    s_raw_t *raw = s_raw_new(broker.clients);
    zmq_msg_t args;
    s_small_args(&args, 1);
    s_raw_submit(raw, "before", "held", &args);
    bool acked = false;
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (!acked && tq_harness_now_ms() < deadline)
        acked = s_raw_recv(raw, 100) && raw->in->command == TQ_CMD_SUBMITTED;
    assert_true(acked);

    assert_int_equal(tq_pg_stop(pg), 0);
    s_small_args(&args, 2);
    s_raw_submit(raw, "after", "held", &args);
    int acks = 0;
    bool standby = false;
    deadline = tq_harness_now_ms() + S_WAIT_MS;
    while (!standby && tq_harness_now_ms() < deadline) {
        s_raw_simple(raw, TQ_CMD_PING, NULL, false);
        int64_t until = tq_harness_now_ms() + 200;
        while (!standby && tq_harness_now_ms() < until &&
               s_raw_recv(raw, 50)) {
            acks += raw->in->command == TQ_CMD_SUBMITTED;
            standby = raw->in->command == TQ_CMD_ERROR &&
                raw->in->code == TQ_ESTANDBY;
        }
    }
    while (s_raw_recv(raw, 200))
        acks += raw->in->command == TQ_CMD_SUBMITTED;
    assert_true(standby);
    tq_harness_broker_stop(&broker);
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char line[1024];
    bool fatal = false, demoted = false;
    while (fgets(line, sizeof line, f)) {
        fatal |=
            strstr(line, "FATAL: cannot write the PostgreSQL store") != NULL;
        demoted |= strstr(line, "demoting:") != NULL;
    }
    fclose(f);
    printf("PostgreSQL gone: %d acknowledged after, failure logged: %s, "
           "demoted to standby: %s\n",
           acks, fatal ? "yes" : "no", demoted ? "yes" : "no");
    assert_int_equal(acks, 0);
    assert_true(fatal);
    assert_true(demoted);
    s_raw_destroy(&raw);
    tq_pg_destroy(&pg);
    tq_harness_rmtree(dir);
}

int
main(void)
{
    tq_harness_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sqlite_serves_during_commit),
        cmocka_unit_test(test_pg_serves_during_commit),
        cmocka_unit_test(test_retry_acked_once_committed),
        cmocka_unit_test(test_pg_lost_stops_acks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
