/* test_tenants.c - under CURVE a task belongs to the key that submitted
   it (PROTOCOL.md 5.8): another client key can neither read, cancel,
   retry nor list it, nor reuse its id; PURGE and the STATUS details need
   an operator key; a worker key acts for the one host it announced first;
   a task stays its owner's across kill -9 and a restart on the same store.
   A real tq-broker with three allow-lists, the client library with one
   key per client, and raw worker sockets. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <czmq.h>

#include "tq/tq_client.h"
#include "tq_client_internal.h"
#include "tq_curve.h"
#include "tq_harness.h"
#include "tq_inspect.h"
#include "tq_pg.h"
#include "tq_proto.h"

#define S_MS 20000 /* bound on every wait */

typedef struct {
    char dir[256], clients[300], workers[300], admins[300];
    char broker[300], alice[300], bob[300], olga[300], w1[300], w2[300];
    char broker_key[TQ_CURVE_KEY_TEXT];
    char secret[320], data[300];
    const char *extra[12]; /* the broker's arguments, for a restart */
    tq_pg_t *pg; /* the PostgreSQL store's cluster, or NULL */
    tq_harness_broker_t b;
} s_world_t;

/* Where the broker of a world keeps its tasks. */
typedef enum { S_MEMORY, S_SQLITE, S_POSTGRESQL } s_store_t;

static void
s_keygen(const char *path, const char *name, char *key)
{
    char error[256], tmp[TQ_CURVE_KEY_TEXT];
    assert_int_equal(
        tq_curve_keygen(path, name, key ? key : tmp, error, sizeof error), 0);
}

/* A certificate pair in dir, its public half also in list (may be NULL). */
static void
s_member(s_world_t *w, char *path, const char *name, const char *list)
{
    snprintf(path, 300, "%s/%s.cert", w->dir, name);
    s_keygen(path, name, NULL);
    if (list) {
        char copy[400];
        snprintf(copy, sizeof copy, "%s/%s.cert", list, name);
        zcert_t *cert = zcert_load(path);
        assert_non_null(cert);
        assert_int_equal(zcert_save_public(cert, copy), 0);
        zcert_destroy(&cert);
    }
}

/* A world of keys and a CURVE broker, in memory, on a SQLite store in the
   world's directory, or on a private PostgreSQL cluster. */
static int
s_world_start(void **state, s_store_t store)
{
    tq_harness_init();
    s_world_t *w = calloc(1, sizeof *w);
    assert_int_equal(tq_harness_tempdir(w->dir, sizeof w->dir, "tenants"),
                     0);
    snprintf(w->clients, sizeof w->clients, "%s/clients", w->dir);
    snprintf(w->workers, sizeof w->workers, "%s/workers", w->dir);
    snprintf(w->admins, sizeof w->admins, "%s/admins", w->dir);
    mkdir(w->clients, 0700);
    mkdir(w->workers, 0700);
    mkdir(w->admins, 0700);
    snprintf(w->broker, sizeof w->broker, "%s/broker.cert", w->dir);
    s_keygen(w->broker, "broker", w->broker_key);
    s_member(w, w->alice, "alice", w->clients);
    s_member(w, w->bob, "bob", w->clients);
    s_member(w, w->olga, "olga", w->admins);
    s_member(w, w->w1, "w1", w->workers);
    s_member(w, w->w2, "w2", w->workers);
    snprintf(w->secret, sizeof w->secret, "%s_secret", w->broker);
    snprintf(w->data, sizeof w->data, "%s/data", w->dir);
    const char *extra[] = {"--curve-secret",
                           w->secret,
                           "--client-keys",
                           w->clients,
                           "--worker-keys",
                           w->workers,
                           "--admin-keys",
                           w->admins,
                           "--data",
                           w->data,
                           NULL};
    if (store == S_MEMORY)
        extra[8] = NULL;
    if (store == S_POSTGRESQL) {
        w->pg = tq_pg_new();
        assert_non_null(w->pg);
        extra[8] = "--store";
        extra[9] = tq_pg_url(w->pg);
    }
    memcpy(w->extra, extra, sizeof extra);
    assert_int_equal(tq_harness_broker_start(&w->b, w->extra), 0);
    *state = w;
    return 0;
}

static int
s_setup(void **state)
{
    return s_world_start(state, S_MEMORY);
}

static int
s_setup_sqlite(void **state)
{
    return s_world_start(state, S_SQLITE);
}

static int
s_setup_pg(void **state)
{
    return s_world_start(state, S_POSTGRESQL);
}

static int
s_teardown(void **state)
{
    s_world_t *w = *state;
    tq_harness_broker_stop(&w->b);
    tq_pg_destroy(&w->pg);
    unsetenv(TQ_CURVE_ENV_SERVER_KEY);
    unsetenv(TQ_CURVE_ENV_CERT);
    tq_harness_rmtree(w->dir);
    free(w);
    return 0;
}

/* A client of the broker holding the certificate at cert. */
static tq_client_t *
s_client(s_world_t *w, const char *cert)
{
    char secret[320];
    snprintf(secret, sizeof secret, "%s_secret", cert);
    setenv(TQ_CURVE_ENV_SERVER_KEY, w->broker_key, 1);
    setenv(TQ_CURVE_ENV_CERT, secret, 1);
    tq_client_t *client = tq_client_new(w->b.clients);
    assert_non_null(client);
    return client;
}

/* The ids in a FAILED body. */
static bool
s_failed_has(tq_client_t *client, const char *id)
{
    tq_buf_t body = {0};
    assert_int_equal(tq_client_failed(client, &body, S_MS), TQ_OK);
    /* the ids are msgpack strings inside the body */
    bool found = body.size && memmem(body.data, body.size, id, strlen(id));
    tq_buf_free(&body);
    return found;
}

static void
test_clients(void **state)
{
    s_world_t *w = *state;
    tq_client_t *alice = s_client(w, w->alice);
    tq_client_t *bob = s_client(w, w->bob);
    tq_client_t *olga = s_client(w, w->olga);

    /* alice's task waits on a queue nobody serves */
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.queue = "nobody";
    opts.id = "alice-task-1";
    tq_result_t *mine = tq_apply_async(alice, "tq.echo", &opts, "i",
                                       (int64_t)1);
    assert_int_equal(tq_result_wait_answer(mine, S_MS), TQ_OK);

    /* alice sees it; bob does not: GET, CANCEL, RETRY say UNKNOWN */
    tq_result_t *f = tq_client_fetch(alice, "alice-task-1", false);
    assert_int_equal(tq_result_wait_answer(f, S_MS), TQ_OK);
    assert_int_equal(tq_result_state(f), TQ_STATE_PENDING);
    tq_result_destroy(&f);
    f = tq_client_fetch(bob, "alice-task-1", false);
    assert_int_equal(tq_result_get(f, S_MS), TQ_EUNKNOWN);
    tq_result_destroy(&f);
    assert_int_equal(tq_client_cancel(bob, "alice-task-1", S_MS),
                     TQ_EUNKNOWN);
    assert_int_equal(tq_client_retry(bob, "alice-task-1", S_MS),
                     TQ_EUNKNOWN);
    assert_false(tq_result_ready(mine)); /* bob's cancel did nothing */

    /* bob cannot take alice's id either */
    tq_options_t same = TQ_OPTIONS_INIT;
    same.queue = "nobody";
    same.id = "alice-task-1";
    tq_result_t *theirs = tq_apply_async(bob, "tq.echo", &same, "i",
                                         (int64_t)2);
    assert_int_equal(tq_result_get(theirs, S_MS), TQ_EDENIED);
    printf("  bob reusing alice's id: %s\n", tq_result_error(theirs));
    tq_result_destroy(&theirs);

    /* a dead letter of alice's is listed for alice and the operator */
    tq_options_t fail = TQ_OPTIONS_INIT;
    fail.id = "alice-dead-1";
    tq_result_t *dead = tq_apply_async(alice, "tq.fail", &fail, "s", "no");
    const char *extra[] = {"--curve-server-key", w->broker, "--curve-cert",
                           w->w1, NULL};
    char secret[320];
    snprintf(secret, sizeof secret, "%s_secret", w->w1);
    extra[3] = secret;
    pid_t host = tq_harness_worker_start(w->b.workers, 1, extra);
    assert_true(host > 0);
    assert_int_equal(tq_result_get(dead, S_MS), TQ_ETASK);
    tq_result_destroy(&dead);
    assert_true(s_failed_has(alice, "alice-dead-1"));
    assert_false(s_failed_has(bob, "alice-dead-1"));
    assert_true(s_failed_has(olga, "alice-dead-1"));

    /* PURGE and STATUS details: the operator only */
    uint64_t purged = 0;
    assert_int_equal(tq_client_purge(bob, "nobody", &purged, S_MS),
                     TQ_EDENIED);
    tq_harness_status_t st = {0};
    assert_int_equal(tq_harness_status(bob, &st, S_MS), TQ_OK);
    assert_null(tq_harness_map_get(st.root, "workers"));
    assert_null(tq_harness_map_get(st.root, "counters"));
    tq_harness_status_free(&st);
    assert_int_equal(tq_harness_wait_workers(olga, 1, host, S_MS), 0);
    assert_int_equal(tq_client_purge(olga, "nobody", &purged, S_MS), TQ_OK);
    assert_int_equal(purged, 1);
    assert_int_equal(tq_result_get(mine, S_MS), TQ_ECANCELLED);

    tq_result_destroy(&mine);
    tq_harness_stop(host);
    tq_client_destroy(&alice);
    tq_client_destroy(&bob);
    tq_client_destroy(&olga);
}

/* A raw worker socket with the certificate at cert. */
static void *
s_worker_socket(s_world_t *w, void *ctx, const char *cert)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    char secret[320], error[256];
    snprintf(secret, sizeof secret, "%s_secret", cert);
    assert_int_equal(tq_curve_client_setup(s, w->broker_key, secret, error,
                                           sizeof error),
                     0);
    assert_int_equal(zmq_connect(s, w->b.workers), 0);
    return s;
}

static void
s_send_header(void *socket, const tq_msg_t *msg)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    assert_int_equal(tq_proto_encode(msg, &buf, NULL), TQ_OK);
    zmq_send(socket, buf.data, buf.size, 0);
    msgpack_sbuffer_destroy(&buf);
}

/* Receives one header (bounded) and decodes its command and code. */
static int
s_recv_command(void *socket, uint32_t *code)
{
    zmq_pollitem_t item = {socket, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, S_MS) != 1)
        return -1;
    zmq_msg_t header;
    zmq_msg_init(&header);
    zmq_msg_recv(&header, socket, 0);
    static tq_msg_t msg;
    int command = -1;
    if (tq_proto_decode(&msg, zmq_msg_data(&header), zmq_msg_size(&header),
                        NULL) == TQ_OK) {
        command = msg.command;
        *code = msg.code;
    }
    zmq_msg_close(&header);
    return command;
}

static void
test_worker_keys(void **state)
{
    s_world_t *w = *state;
    void *ctx = zmq_ctx_new();
    void *one = s_worker_socket(w, ctx, w->w1);
    void *two = s_worker_socket(w, ctx, w->w2);
    tq_msg_t hb = {.command = TQ_CMD_HEARTBEAT};
    hb.host = tq_str("host1");
    hb.pid = 4242;
    uint32_t code = 0;
    /* w1 binds host1 with its first HEARTBEAT */
    s_send_header(one, &hb);
    assert_int_equal(s_recv_command(one, &code), TQ_CMD_HEARTBEAT);
    /* w2 cannot speak for host1: neither HEARTBEAT nor READY */
    s_send_header(two, &hb);
    assert_int_equal(s_recv_command(two, &code), TQ_CMD_ERROR);
    assert_int_equal(code, TQ_EDENIED);
    tq_msg_t ready = {.command = TQ_CMD_READY};
    ready.host = tq_str("host1");
    ready.pid = 4243;
    ready.ppid = 4242;
    ready.credit = 1;
    ready.task_count = 1;
    ready.tasks[0] = tq_str("tq.echo");
    s_send_header(two, &ready);
    assert_int_equal(s_recv_command(two, &code), TQ_CMD_ERROR);
    assert_int_equal(code, TQ_EDENIED);
    /* but for its own host it may */
    hb.host = tq_str("host2");
    s_send_header(two, &hb);
    assert_int_equal(s_recv_command(two, &code), TQ_CMD_HEARTBEAT);
    zmq_close(one);
    zmq_close(two);
    zmq_ctx_term(ctx);
}

/* Makes the CURVE environment that of the certificate at cert, for the
   requests that read it at each call (tq_inspect_*). */
static void
s_use_key(s_world_t *w, const char *cert)
{
    char secret[320];
    snprintf(secret, sizeof secret, "%s_secret", cert);
    setenv(TQ_CURVE_ENV_SERVER_KEY, w->broker_key, 1);
    setenv(TQ_CURVE_ENV_CERT, secret, 1);
}

/* True if the body of a TASKS or INSPECT reply names id. */
static bool
s_body_has(const tq_buf_t *body, const char *id)
{
    return body->size && memmem(body->data, body->size, id, strlen(id));
}

/* TASKS as the key at cert: true if it lists id (every state). */
static bool
s_tasks_has(s_world_t *w, const char *cert, const char *id)
{
    s_use_key(w, cert);
    tq_inspect_filter_t filter = {.states = TQ_STATES_ALL};
    tq_buf_t body = {0};
    char detail[256];
    int rc = tq_inspect_tasks(w->b.clients, &filter, &body, S_MS, detail,
                              sizeof detail);
    if (rc != TQ_OK)
        print_message("TASKS: %s (%s)\n", tq_strerror(rc), detail);
    assert_int_equal(rc, TQ_OK);
    bool found = s_body_has(&body, id);
    tq_buf_free(&body);
    return found;
}

/* INSPECT id as the key at cert: TQ_OK or the broker's answer. */
static int
s_inspect(s_world_t *w, const char *cert, const char *id)
{
    s_use_key(w, cert);
    tq_buf_t body = {0};
    char detail[256];
    int rc =
        tq_inspect_task(w->b.clients, id, &body, S_MS, detail, sizeof detail);
    if (rc == TQ_OK)
        assert_true(s_body_has(&body, id));
    tq_buf_free(&body);
    return rc;
}

/* The owner is stored with the task (PROTOCOL.md 5.8): after kill -9 and
   a restart on the same store (SQLite, PostgreSQL), another client key
   still gets UNKNOWN for the task (GET, CANCEL, RETRY, INSPECT), does not
   see it in TASKS nor its dead letter in FAILED, cannot take its id; the
   operator key sees it; its owner's handles, asking again after the
   restart, get their results once a worker runs them. */
static void
s_owner_survives_restart(void **state)
{
    s_world_t *w = *state;
    tq_client_t *alice = s_client(w, w->alice);
    tq_client_t *bob = s_client(w, w->bob);
    /* acknowledged means stored: no worker yet, so it waits */
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.id = "alice-kept-1";
    tq_result_t *mine =
        tq_apply_async(alice, "tq.echo", &opts, "i", (int64_t)7);
    assert_int_equal(tq_result_wait_answer(mine, S_MS), TQ_OK);
    tq_options_t fail = TQ_OPTIONS_INIT;
    fail.id = "alice-dead-2";
    tq_result_t *dead = tq_apply_async(alice, "tq.fail", &fail, "s", "no");
    assert_int_equal(tq_result_wait_answer(dead, S_MS), TQ_OK);
    assert_false(s_tasks_has(w, w->bob, "alice-kept-1"));

    /* kill -9, and a new broker on the same endpoints and store */
    char clients[TQ_HARNESS_EP_MAX], workers[TQ_HARNESS_EP_MAX];
    snprintf(clients, sizeof clients, "%s", w->b.clients);
    snprintf(workers, sizeof workers, "%s", w->b.workers);
    assert_int_equal(kill(w->b.pid, SIGKILL), 0);
    int status = tq_harness_broker_stop(&w->b);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* on PostgreSQL, the killed broker's lease lapses first: a broker
       started before is a standby (TQ_ESTANDBY) until then */
    if (w->pg)
        assert_int_equal(tq_pg_wait_lease_lapsed(w->pg, S_MS), 0);
    int started = -1;
    for (int attempt = 0; attempt < 5 && started != 0; attempt++) {
        started =
            tq_harness_broker_start_on(&w->b, clients, workers, w->extra, NULL);
        if (started != 0)
            tq_harness_sleep_ms(200); /* the port may be held a moment */
    }
    assert_int_equal(started, 0);

    /* bob: as if it had never been */
    tq_result_t *f = tq_client_fetch(bob, "alice-kept-1", false);
    assert_int_equal(tq_result_get(f, S_MS), TQ_EUNKNOWN);
    tq_result_destroy(&f);
    assert_int_equal(tq_client_cancel(bob, "alice-kept-1", S_MS), TQ_EUNKNOWN);
    assert_int_equal(tq_client_retry(bob, "alice-kept-1", S_MS), TQ_EUNKNOWN);
    assert_int_equal(s_inspect(w, w->bob, "alice-kept-1"), TQ_EUNKNOWN);
    assert_false(s_tasks_has(w, w->bob, "alice-kept-1"));
    tq_options_t same = TQ_OPTIONS_INIT;
    same.id = "alice-kept-1";
    tq_result_t *theirs =
        tq_apply_async(bob, "tq.echo", &same, "i", (int64_t)8);
    assert_int_equal(tq_result_get(theirs, S_MS), TQ_EDENIED);
    tq_result_destroy(&theirs);

    /* the operator sees it, still waiting: bob's cancel did nothing */
    assert_true(s_tasks_has(w, w->olga, "alice-kept-1"));
    assert_int_equal(s_inspect(w, w->olga, "alice-kept-1"), TQ_OK);
    /* and so does alice */
    assert_true(s_tasks_has(w, w->alice, "alice-kept-1"));
    f = tq_client_fetch(alice, "alice-kept-1", false);
    assert_int_equal(tq_result_wait_answer(f, S_MS), TQ_OK);
    assert_int_equal(tq_result_state(f), TQ_STATE_PENDING);
    tq_result_destroy(&f);
    assert_false(tq_result_ready(mine));

    /* a worker runs it: alice's handle from before the kill gets 7 */
    char secret[320];
    snprintf(secret, sizeof secret, "%s_secret", w->w1);
    const char *extra[] = {"--curve-server-key", w->broker, "--curve-cert",
                           secret, NULL};
    pid_t host = tq_harness_worker_start(w->b.workers, 1, extra);
    assert_true(host > 0);
    int rc = tq_result_get(mine, S_MS);
    if (rc != TQ_OK)
        print_message("get: %s (%s)\n", tq_strerror(rc), tq_result_error(mine));
    assert_int_equal(rc, TQ_OK);
    const msgpack_object *v = tq_result_value(mine);
    assert_non_null(v);
    assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(v->via.array.size, 1);
    assert_int_equal(v->via.array.ptr[0].via.u64, 7);
    /* its result is alice's too, and so is the dead letter of her
       failing task: FAILED lists it for her and the operator only */
    f = tq_client_fetch(bob, "alice-kept-1", false);
    assert_int_equal(tq_result_get(f, S_MS), TQ_EUNKNOWN);
    tq_result_destroy(&f);
    assert_int_equal(tq_result_get(dead, S_MS), TQ_ETASK);
    tq_result_destroy(&dead);
    assert_true(s_failed_has(alice, "alice-dead-2"));
    assert_false(s_failed_has(bob, "alice-dead-2"));
    tq_client_t *olga = s_client(w, w->olga);
    assert_true(s_failed_has(olga, "alice-dead-2"));
    tq_client_destroy(&olga);

    tq_result_destroy(&mine);
    tq_harness_stop(host);
    tq_client_destroy(&alice);
    tq_client_destroy(&bob);
}

static void
test_owner_survives_restart_sqlite(void **state)
{
    s_owner_survives_restart(state);
}

static void
test_owner_survives_restart_pg(void **state)
{
    s_owner_survives_restart(state);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_clients, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_worker_keys, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_owner_survives_restart_sqlite,
                                        s_setup_sqlite, s_teardown),
        cmocka_unit_test_setup_teardown(test_owner_survives_restart_pg,
                                        s_setup_pg, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
