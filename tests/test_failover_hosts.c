/* test_failover_hosts.c - broker failover end to end (issue 14 item 4):
   two tq-broker processes in two network namespaces on one PostgreSQL
   store (a third namespace), two worker hosts and two clients (this
   process, a fourth) that know both brokers. 20,000 tasks are submitted in
   five waves while the active broker is killed (SIGKILL) or frozen
   (SIGSTOP) five times at random moments; a killed broker is started
   again and a frozen one woken, so that there is always a standby for the
   next event.

   Asserted: every task ends with its own result: 0 acknowledged tasks
   lost (a lost one would end TQ_EUNKNOWN; a submission that ended
   TQ_EUNREACHABLE was never acknowledged, as the client keeps asking for
   an acknowledged task's result, and is submitted again under its id);
   every task fetched by id afterwards has its one final result; every
   task ran at least once. Printed per event: the time until the other
   broker answered as active, the time until a task submitted at the
   event was done, and the executions beyond one per task that followed.
   Without CAP_NET_ADMIN it prints "skipped: needs root for network
   namespaces" and exits 77. TQ_TEST_SEED=N repeats a run's random
   moments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "tq_harness.h"
#include "tq_netns.h"
#include "tq_pg.h"
#include "tq_proto.h"
#include "tq_wire.h"

enum {
    S_HOST_A, /* broker a */
    S_HOST_B, /* broker b */
    S_HOST_W1, /* worker hosts */
    S_HOST_W2,
    S_HOST_CLIENT, /* this process: the clients and the probes */
    S_HOST_PG, /* PostgreSQL */
    S_HOSTS
};

#define S_TASKS 20000
#define S_CLIENTS 2
#define S_WAVES 5 /* waves of submissions, an event after each */
#define S_EVENTS 5
#define S_TASK_MS 5 /* each task sleeps this long */
#define S_WAIT_MS 60000 /* the bound of a failover, a start, a stop */
#define S_FINISH_MS 600000 /* the bound for every task to end */

static tq_netns_t *s_net;
static tq_pg_t *s_pg;
static void *s_ctx;

/* ---- brokers ---- */

static const char *
s_ip(void)
{
    static const char *const paths[] = {"/usr/sbin/ip", "/sbin/ip",
                                        "/usr/bin/ip", "/bin/ip"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++)
        if (access(paths[i], X_OK) == 0)
            return paths[i];
    return "ip";
}

/* Starts tq-broker in host h on the store, on the given endpoints (tcp://
   ADDR:* the first time); tried a few times, as a port may still be
   closing after a kill. */
static int
s_broker_start(int h, tq_harness_broker_t *broker, const char *clients,
               const char *workers)
{
    const char *prefix[] = {s_ip(), "netns", "exec", tq_netns_name(s_net, h),
                            NULL};
    const char *extra[] = {"--store", tq_pg_url(s_pg), NULL};
    char log[512];
    snprintf(log, sizeof log, "%s/broker.log", tq_netns_dir(s_net, h));
    int rc = -1;
    tq_harness_set_prefix(prefix);
    for (int attempt = 0; attempt < 10 && rc != 0; attempt++) {
        rc = tq_harness_broker_start_on(broker, clients, workers, extra, log);
        if (rc != 0)
            tq_harness_sleep_ms(200);
    }
    tq_harness_set_prefix(NULL);
    return rc;
}

/* ---- probes: one PING on a fresh connection ---- */

/* TQ_CMD_PONG, TQ_ESTANDBY (an ERROR with it), or 0 for no answer within
   timeout_ms. */
static int
s_ping(const char *endpoint, int timeout_ms)
{
    void *socket = zmq_socket(s_ctx, ZMQ_DEALER);
    assert_non_null(socket);
    int linger = 0;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(socket, endpoint), 0);
    tq_msg_t msg;
    memset(&msg, 0, sizeof msg);
    msg.command = TQ_CMD_PING;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    tq_wire_send_msg(socket, NULL, &msg, &buf, NULL, ZMQ_DONTWAIT);
    msgpack_sbuffer_destroy(&buf);
    int answer = 0;
    zmq_pollitem_t item = {socket, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) > 0) {
        tq_frames_t frames;
        tq_frames_init(&frames);
        tq_msg_t in;
        if (tq_wire_recv(socket, &frames, false, ZMQ_DONTWAIT) == TQ_OK &&
            tq_wire_decode(&frames, &in, NULL) == TQ_OK) {
            if (in.command == TQ_CMD_PONG)
                answer = TQ_CMD_PONG;
            else if (in.command == TQ_CMD_ERROR && in.code == TQ_ESTANDBY)
                answer = TQ_ESTANDBY;
        }
        tq_frames_close(&frames);
    }
    zmq_close(socket);
    return answer;
}

/* Probes until the broker answers `want` (TQ_CMD_PONG: active,
   TQ_ESTANDBY: standby); the ms it took, or -1 after S_WAIT_MS. */
static int64_t
s_wait_answer(const char *clients, int want)
{
    int64_t start = tq_harness_now_ms();
    while (tq_harness_now_ms() - start < S_WAIT_MS) {
        if (s_ping(clients, 300) == want)
            return tq_harness_now_ms() - start;
        tq_harness_sleep_ms(20);
    }
    return -1;
}

/* ---- tasks ---- */

/* A client that knows both brokers (the list "a,b": the client library
   talks to the active one and moves on TQ_ESTANDBY or silence). */
typedef struct {
    tq_client_t *client;
    tq_result_t *r[S_TASKS / S_CLIENTS];
    int resubmitted; /* submissions that ended TQ_EUNREACHABLE (no broker
                        answered within the liveness), sent again under
                        their id */
} s_client_t;

static void
s_task_id(char *id, size_t size, int c, int i)
{
    snprintf(id, size, "fo%d-%d", c, i);
}

/* The task index of client c's i-th task: its line in the record files. */
static int
s_index(int c, int i)
{
    return c * (S_TASKS / S_CLIENTS) + i;
}

static void
s_submit(s_client_t *client, int c, int i)
{
    char id[32];
    s_task_id(id, sizeof id, c, i);
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.id = id;
    client->r[i] =
        tq_apply_async(client->client, "test.record", &opts, "isi",
                       (int64_t)s_index(c, i), "record", (int64_t)S_TASK_MS);
    assert_non_null(client->r[i]);
}

/* A probe task for event e (tq.echo e, id probe-E, the highest
   priority): new work. */
static tq_result_t *
s_probe(tq_client_t *client, int e)
{
    char id[32];
    snprintf(id, sizeof id, "probe-%d", e);
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.id = id;
    opts.priority = TQ_PRIORITY_MAX; /* ahead of the wave's tasks */
    tq_result_t *r = tq_apply_async(client, "tq.echo", &opts, "i", (int64_t)e);
    assert_non_null(r);
    return r;
}

/* Waits (bounded) for the probe of event e to end with its value,
   submitting it again under its id when it ends TQ_EUNREACHABLE; the ms
   on the monotonic clock when it did. */
static int64_t
s_probe_wait(tq_client_t *client, tq_result_t **probe, int e)
{
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    for (;;) {
        int64_t left = deadline - tq_harness_now_ms();
        int rc = tq_result_get(*probe, left > 0 ? (int)left : 0);
        if (rc == TQ_OK)
            break;
        if (rc != TQ_EUNREACHABLE || left <= 0)
            fail_msg("probe %d: %s (%s)", e, tq_strerror(rc),
                     tq_result_error(*probe));
        tq_result_destroy(probe);
        *probe = s_probe(client, e);
    }
    int64_t done = tq_harness_now_ms();
    const msgpack_object *v = tq_result_value(*probe);
    assert_non_null(v);
    assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(v->via.array.ptr[0].via.u64, (uint64_t)e);
    tq_result_destroy(probe);
    return done;
}

/* Waits for every handle of every client (bounded): an end TQ_OK with
   the task's own index counts; TQ_EUNREACHABLE (never acknowledged, or
   no broker answered in time) is submitted again under the same id;
   anything else fails the test. */
static void
s_finish(s_client_t *clients)
{
    int64_t deadline = tq_harness_now_ms() + S_FINISH_MS;
    int n = S_TASKS / S_CLIENTS;
    static bool done[S_CLIENTS][S_TASKS / S_CLIENTS];
    memset(done, 0, sizeof done);
    int finished = 0;
    while (finished < S_TASKS && tq_harness_now_ms() < deadline) {
        for (int c = 0; c < S_CLIENTS; c++)
            for (int i = 0; i < n; i++) {
                if (done[c][i])
                    continue;
                int64_t left = deadline - tq_harness_now_ms();
                int rc =
                    tq_result_get(clients[c].r[i], left > 0 ? (int)left : 0);
                if (rc == TQ_ETIMEDOUT)
                    break;
                if (rc == TQ_EUNREACHABLE) {
                    tq_result_destroy(&clients[c].r[i]);
                    clients[c].resubmitted++;
                    s_submit(&clients[c], c, i);
                    continue;
                }
                const msgpack_object *v = tq_result_value(clients[c].r[i]);
                if (rc != TQ_OK || !v ||
                    v->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                    v->via.u64 != (uint64_t)s_index(c, i))
                    fail_msg("task fo%d-%d: %s (%s)", c, i, tq_strerror(rc),
                             tq_result_error(clients[c].r[i]));
                done[c][i] = true;
                finished++;
            }
    }
    assert_int_equal(finished, S_TASKS);
}

/* Every task fetched by id from whichever broker is active: its one
   final result is SUCCESS with its own index. */
static void
s_fetch_all(const char *brokers)
{
    tq_client_t *client = tq_client_new(brokers);
    assert_non_null(client);
    enum { WINDOW = 2000 };
    static tq_result_t *f[WINDOW];
    int ok = 0;
    for (int from = 0; from < S_TASKS; from += WINDOW) {
        for (int k = 0; k < WINDOW; k++) {
            int t = from + k;
            char id[32];
            s_task_id(id, sizeof id, t / (S_TASKS / S_CLIENTS),
                      t % (S_TASKS / S_CLIENTS));
            f[k] = tq_client_fetch(client, id, true);
            assert_non_null(f[k]);
        }
        for (int k = 0; k < WINDOW; k++) {
            int rc = tq_result_get(f[k], S_WAIT_MS);
            const msgpack_object *v = tq_result_value(f[k]);
            if (rc != TQ_OK || !v ||
                v->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                v->via.u64 != (uint64_t)(from + k))
                fail_msg("fetch of task %d: %s (%s)", from + k, tq_strerror(rc),
                         tq_result_error(f[k]));
            ok++;
            tq_result_destroy(&f[k]);
        }
    }
    tq_client_destroy(&client);
    assert_int_equal(ok, S_TASKS);
}

/* ---- executions, from the worker hosts' record files ---- */

/* Lines so far in host h's record file. */
static int
s_lines(int h)
{
    char path[512];
    snprintf(path, sizeof path, "%s/record", tq_netns_dir(s_net, h));
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int lines = 0;
    long index;
    while (fscanf(f, "%ld", &index) == 1)
        lines++;
    fclose(f);
    return lines;
}

/* Executions beyond one per task, by the window they ran in: window 0
   before the first event, window e + 1 after event e (marks[e][w]: the
   line count of worker host w when event e began). A task that ran more
   than once is charged to the windows of all its runs but the earliest.
   Asserts every task ran. Returns the total. */
static int
s_duplicates(int marks[S_EVENTS][2], int dups[S_EVENTS + 1])
{
    static int count[S_TASKS], first[S_TASKS];
    static bool charged[S_TASKS];
    memset(count, 0, sizeof count);
    memset(charged, 0, sizeof charged);
    for (int t = 0; t < S_TASKS; t++)
        first[t] = S_EVENTS + 1;
    memset(dups, 0, sizeof(int) * (S_EVENTS + 1));
    for (int pass = 0; pass < 2; pass++)
        for (int w = 0; w < 2; w++) {
            char path[512];
            snprintf(path, sizeof path, "%s/record",
                     tq_netns_dir(s_net, S_HOST_W1 + w));
            FILE *f = fopen(path, "r");
            if (!f)
                continue;
            long index;
            for (int line = 0; fscanf(f, "%ld", &index) == 1; line++) {
                if (index < 0 || index >= S_TASKS)
                    continue;
                int window = 0;
                while (window < S_EVENTS && marks[window][w] <= line)
                    window++;
                if (pass == 0) {
                    count[index]++;
                    if (window < first[index])
                        first[index] = window;
                } else if (window == first[index] && !charged[index])
                    charged[index] = true;
                else
                    dups[window]++;
            }
            fclose(f);
        }
    int missing = 0, total = 0;
    for (int t = 0; t < S_TASKS; t++) {
        missing += count[t] == 0;
        total += count[t] > 1 ? count[t] - 1 : 0;
    }
    assert_int_equal(missing, 0);
    return total;
}

/* ---- the test ---- */

static void
test_failover_under_load(void **state)
{
    (void)state;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    const char *env = getenv("TQ_TEST_SEED");
    if (env && *env)
        seed = (unsigned)strtoul(env, NULL, 10);
    srand(seed);
    printf("failover under load: seed %u (TQ_TEST_SEED repeats it)\n", seed);

    tq_harness_broker_t broker[2];
    memset(broker, 0, sizeof broker);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://%s:*", tq_netns_addr(s_net, S_HOST_A));
    assert_int_equal(s_broker_start(S_HOST_A, &broker[0], ep, ep), 0);
    assert_true(s_wait_answer(broker[0].clients, TQ_CMD_PONG) >= 0);
    snprintf(ep, sizeof ep, "tcp://%s:*", tq_netns_addr(s_net, S_HOST_B));
    assert_int_equal(s_broker_start(S_HOST_B, &broker[1], ep, ep), 0);
    assert_true(s_wait_answer(broker[1].clients, TQ_ESTANDBY) >= 0);
    int active = 0;

    /* everyone else knows both brokers */
    char client_list[2 * TQ_HARNESS_EP_MAX + 2],
        worker_list[2 * TQ_HARNESS_EP_MAX + 2];
    snprintf(client_list, sizeof client_list, "%s,%s", broker[0].clients,
             broker[1].clients);
    snprintf(worker_list, sizeof worker_list, "%s,%s", broker[0].workers,
             broker[1].workers);
    const char *wextra[] = {"--module", TQ_TESTTASKS_SO, NULL};
    pid_t workers[2];
    for (int w = 0; w < 2; w++) {
        workers[w] =
            tq_netns_worker_start(s_net, S_HOST_W1 + w, worker_list, 2, wextra);
        assert_true(workers[w] > 0);
    }
    static s_client_t clients[S_CLIENTS];
    for (int c = 0; c < S_CLIENTS; c++) {
        memset(&clients[c], 0, sizeof clients[c]);
        clients[c].client = tq_client_new(client_list);
        assert_non_null(clients[c].client);
    }

    /* the kinds of event: random, each at least once */
    int kinds[S_EVENTS];
    int kills = 0;
    for (int e = 0; e < S_EVENTS; e++) {
        kinds[e] = rand() % 2 ? SIGKILL : SIGSTOP;
        kills += kinds[e] == SIGKILL;
    }
    if (kills == 0)
        kinds[rand() % S_EVENTS] = SIGKILL;
    if (kills == S_EVENTS)
        kinds[rand() % S_EVENTS] = SIGSTOP;

    int64_t failover_ms[S_EVENTS], probe_ms[S_EVENTS];
    int marks[S_EVENTS][2];
    int per_wave = S_TASKS / S_CLIENTS / S_WAVES;
    for (int e = 0; e < S_EVENTS; e++) {
        for (int c = 0; c < S_CLIENTS; c++)
            for (int i = e * per_wave; i < (e + 1) * per_wave; i++)
                s_submit(&clients[c], c, i);
        /* a random moment while the wave is submitted and run */
        tq_harness_sleep_ms(200 + rand() % 3500);
        for (int w = 0; w < 2; w++)
            marks[e][w] = s_lines(S_HOST_W1 + w);
        tq_harness_broker_t *victim = &broker[active];
        tq_harness_broker_t *other = &broker[1 - active];
        int64_t t0 = tq_harness_now_ms();
        assert_int_equal(kill(victim->pid, kinds[e]), 0);
        /* a new task submitted at once: done once clients and worker
           hosts have found the new active broker */
        tq_result_t *probe = s_probe(clients[0].client, e);
        int64_t took = s_wait_answer(other->clients, TQ_CMD_PONG);
        assert_true(took >= 0);
        failover_ms[e] = tq_harness_now_ms() - t0;
        probe_ms[e] = s_probe_wait(clients[0].client, &probe, e) - t0;
        printf("event %d: %s of the active broker (%s): the other answered "
               "as active after %lld ms, a task submitted at the event was "
               "done after %lld ms\n",
               e + 1, kinds[e] == SIGKILL ? "SIGKILL" : "SIGSTOP",
               active ? "b" : "a", (long long)failover_ms[e],
               (long long)probe_ms[e]);
        fflush(stdout);
        if (kinds[e] == SIGKILL) {
            char clients_ep[TQ_HARNESS_EP_MAX], workers_ep[TQ_HARNESS_EP_MAX];
            snprintf(clients_ep, sizeof clients_ep, "%s", victim->clients);
            snprintf(workers_ep, sizeof workers_ep, "%s", victim->workers);
            tq_harness_broker_stop(victim); /* reaps it */
            assert_int_equal(s_broker_start(active ? S_HOST_B : S_HOST_A,
                                            victim, clients_ep, workers_ep),
                             0);
        } else
            assert_int_equal(kill(victim->pid, SIGCONT), 0);
        /* the victim is a standby now: it answers so on its endpoint */
        assert_true(s_wait_answer(victim->clients, TQ_ESTANDBY) >= 0);
        active = 1 - active;
    }

    s_finish(clients);
    s_fetch_all(client_list);
    int dups[S_EVENTS + 1];
    int total = s_duplicates(marks, dups);
    int resubmitted = 0;
    for (int c = 0; c < S_CLIENTS; c++)
        resubmitted += clients[c].resubmitted;

    printf("\n| event | kind | new active after | a new task done after "
           "| acknowledged tasks lost | executions beyond one, after it |\n"
           "|-------|------|------------------|-----------------------"
           "|-------------------------|---------------------------------|\n");
    for (int e = 0; e < S_EVENTS; e++)
        printf("| %d | %s | %lld ms | %lld ms | 0 | %d |\n", e + 1,
               kinds[e] == SIGKILL ? "SIGKILL" : "SIGSTOP",
               (long long)failover_ms[e], (long long)probe_ms[e], dups[e + 1]);
    printf("\n%d tasks, %d clients, 2 worker hosts of 2 children: every "
           "task ended with its own result and was fetched by id; "
           "executions beyond one per task: %d (before the first event: "
           "%d); submissions ended TQ_EUNREACHABLE and sent again under "
           "their id: %d\n",
           S_TASKS, S_CLIENTS, total, dups[0], resubmitted);
    fflush(stdout);

    for (int c = 0; c < S_CLIENTS; c++) {
        for (int i = 0; i < S_TASKS / S_CLIENTS; i++)
            tq_result_destroy(&clients[c].r[i]);
        tq_client_destroy(&clients[c].client);
    }
    for (int w = 0; w < 2; w++)
        tq_netns_stop(s_net, workers[w]);
    tq_harness_broker_stop(&broker[0]);
    tq_harness_broker_stop(&broker[1]);
}

int
main(void)
{
    tq_harness_init();
    char why[256];
    if (!tq_netns_available(why, sizeof why)) {
        printf(TQ_NETNS_SKIP_TEXT " (%s)\n", why);
        return 77;
    }
    s_net = tq_netns_new(S_HOSTS);
    if (!s_net) {
        fprintf(stderr, "test_failover_hosts: cannot make the namespaces\n");
        return 1;
    }
    /* PostgreSQL in a namespace of its own, then this process with the
       clients in another: before any ZeroMQ context exists */
    if (tq_netns_enter(s_net, S_HOST_PG) != 0 ||
        !(s_pg = tq_pg_new_on(tq_netns_addr(s_net, S_HOST_PG))) ||
        tq_netns_enter(s_net, S_HOST_CLIENT) != 0) {
        fprintf(stderr,
                "test_failover_hosts: cannot start PostgreSQL in "
                "its namespace\n");
        tq_pg_destroy(&s_pg);
        tq_netns_destroy(&s_net);
        return 1;
    }
    s_ctx = zmq_ctx_new();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failover_under_load),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tq_harness_kill_all();
    zmq_ctx_term(s_ctx);
    tq_pg_destroy(&s_pg);
    tq_netns_destroy(&s_net);
    return rc;
}
