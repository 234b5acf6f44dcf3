/* test_auth.c - the broker's ZAP handler (broker/tq_auth.c) on its own: a
   key is let in on the domain whose allow-list holds it and on no other;
   an unknown key nowhere; a key added to a list is let in after a reload;
   the counters say what happened. In process, on loopback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <czmq.h>

#include "tq_auth.h"
#include "tq_curve.h"
#include "tq_harness.h"

typedef struct {
    char dir[256], clients[300], workers[300], broker[300];
    char alice[300], worker[300], mallory[300];
    char broker_key[TQ_CURVE_KEY_TEXT];
} s_keys_t;

static void
s_keygen(const char *path, const char *name, char *key)
{
    char error[256], tmp[TQ_CURVE_KEY_TEXT];
    assert_int_equal(
        tq_curve_keygen(path, name, key ? key : tmp, error, sizeof error), 0);
}

static void
s_make_keys(s_keys_t *k)
{
    assert_int_equal(tq_harness_tempdir(k->dir, sizeof k->dir, "auth"), 0);
    snprintf(k->clients, sizeof k->clients, "%s/clients", k->dir);
    snprintf(k->workers, sizeof k->workers, "%s/workers", k->dir);
    assert_int_equal(zsys_dir_create("%s", k->clients), 0);
    assert_int_equal(zsys_dir_create("%s", k->workers), 0);
    snprintf(k->broker, sizeof k->broker, "%s/broker.cert", k->dir);
    s_keygen(k->broker, "broker", k->broker_key);
    snprintf(k->alice, sizeof k->alice, "%s/clients/alice.cert", k->dir);
    s_keygen(k->alice, "alice", NULL);
    snprintf(k->worker, sizeof k->worker, "%s/workers/w1.cert", k->dir);
    s_keygen(k->worker, "w1", NULL);
    /* not in any list yet */
    snprintf(k->mallory, sizeof k->mallory, "%s/mallory.cert", k->dir);
    s_keygen(k->mallory, "mallory", NULL);
}

/* A CURVE ROUTER in `domain` on loopback; its endpoint into endpoint. */
static void *
s_server(void *ctx, const s_keys_t *k, const char *domain, char *endpoint)
{
    char error[256];
    zcert_t *cert = tq_curve_load_secret(k->broker, error, sizeof error);
    assert_non_null(cert);
    void *server = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(server, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(
        tq_curve_server_setup(server, cert, domain, error, sizeof error), 0);
    zcert_destroy(&cert);
    assert_int_equal(zmq_bind(server, "tcp://127.0.0.1:*"), 0);
    size_t len = 256;
    zmq_getsockopt(server, ZMQ_LAST_ENDPOINT, endpoint, &len);
    return server;
}

/* Connects with the certificate at cert_path and says hello. */
static void *
s_hello(void *ctx, const s_keys_t *k, const char *endpoint,
        const char *cert_path)
{
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
    char secret[320], error[256];
    snprintf(secret, sizeof secret, "%s_secret", cert_path);
    assert_int_equal(tq_curve_client_setup(dealer, k->broker_key, secret,
                                           error, sizeof error),
                     0);
    assert_int_equal(zmq_connect(dealer, endpoint), 0);
    zmq_send(dealer, "hello", 5, 0);
    return dealer;
}

/* Waits (bounded) until the counters pass what they were. */
static tq_auth_stats_t
s_wait_stats(const tq_auth_stats_t *before, uint64_t allowed, uint64_t dc,
             uint64_t dw)
{
    tq_auth_stats_t now;
    int64_t deadline = tq_harness_now_ms() + 20000;
    do {
        tq_auth_stats(&now);
        if (now.allowed >= before->allowed + allowed &&
            now.denied_clients >= before->denied_clients + dc &&
            now.denied_workers >= before->denied_workers + dw)
            return now;
        tq_harness_sleep_ms(10);
    } while (tq_harness_now_ms() < deadline);
    fail_msg("auth counters: allowed %llu denied_clients %llu "
             "denied_workers %llu",
             (unsigned long long) (now.allowed - before->allowed),
             (unsigned long long) (now.denied_clients -
                                   before->denied_clients),
             (unsigned long long) (now.denied_workers -
                                   before->denied_workers));
    return now;
}

static bool
s_received(void *server, int ms)
{
    zmq_pollitem_t item = {server, 0, ZMQ_POLLIN, 0};
    return zmq_poll(&item, 1, ms) == 1;
}

static void
test_domains(void **state)
{
    (void) state;
    s_keys_t k;
    s_make_keys(&k);
    void *ctx = zmq_ctx_new();
    char error[256];
    tq_auth_t *auth = tq_auth_new(ctx, k.clients, k.workers, NULL, error,
                                  sizeof error);
    assert_non_null(auth);
    char clients_ep[256], workers_ep[256];
    void *clients = s_server(ctx, &k, TQ_CURVE_DOMAIN_CLIENTS, clients_ep);
    void *workers = s_server(ctx, &k, TQ_CURVE_DOMAIN_WORKERS, workers_ep);
    void *peers = zmq_ctx_new();

    tq_auth_stats_t before;
    tq_auth_stats(&before);
    /* each key on its own endpoint: let in, and the hello arrives */
    void *a = s_hello(peers, &k, clients_ep, k.alice);
    void *w = s_hello(peers, &k, workers_ep, k.worker);
    assert_true(s_received(clients, 20000));
    assert_true(s_received(workers, 20000));
    tq_auth_stats_t now = s_wait_stats(&before, 2, 0, 0);
    /* each key on the other endpoint, and an unknown key on both:
       refused, and counted per endpoint */
    before = now;
    void *a2 = s_hello(peers, &k, workers_ep, k.alice);
    void *w2 = s_hello(peers, &k, clients_ep, k.worker);
    void *m1 = s_hello(peers, &k, clients_ep, k.mallory);
    void *m2 = s_hello(peers, &k, workers_ep, k.mallory);
    now = s_wait_stats(&before, 0, 2, 2);
    assert_int_equal(now.allowed, before.allowed);
    printf("  refused: %llu on clients, %llu on workers\n",
           (unsigned long long) (now.denied_clients - before.denied_clients),
           (unsigned long long) (now.denied_workers - before.denied_workers));
    /* the refused hellos never reached a server (they were counted) */
    zmq_msg_t drop;
    zmq_msg_init(&drop);
    while (zmq_msg_recv(&drop, clients, ZMQ_DONTWAIT) >= 0)
        ;
    zmq_msg_close(&drop);

    /* mallory added to the clients list: let in after a reload */
    char added[320];
    snprintf(added, sizeof added, "%s/mallory.cert", k.clients);
    zcert_t *cert = zcert_load(k.mallory);
    assert_non_null(cert);
    assert_int_equal(zcert_save_public(cert, added), 0);
    zcert_destroy(&cert);
    tq_auth_reload();
    before = now;
    void *m3 = s_hello(peers, &k, clients_ep, k.mallory);
    now = s_wait_stats(&before, 1, 0, 0);
    assert_true(now.reloads > before.reloads);

    void *socks[] = {a, w, a2, w2, m1, m2, m3, clients, workers};
    for (size_t i = 0; i < sizeof socks / sizeof socks[0]; i++)
        zmq_close(socks[i]);
    zmq_ctx_term(peers);
    tq_auth_destroy(&auth);
    zmq_ctx_term(ctx);
    tq_harness_rmtree(k.dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_domains),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
