/* test_security.c - CURVE allow-lists (random keys, a client key used as a
   worker, removal without restart), fail-closed ZAP, no plaintext on the
   wire, and a hostile peer next to normal traffic. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "tq_auth.h"
#include "tq_broker.h"
#include "tq_curve.h"
#include "tq_harness.h"
#include "tq_proto.h"

#define S_RANDOM_KEYS 100
#define S_QUIET_MS 1500   /* how long "nothing answers" is watched */
#define S_GET_MS 20000    /* bound on a get that must end */

/* ---- keys on disk --------------------------------------------------- */

typedef struct {
    char dir[64];
    char clients[128], workers[128], admins[128];
    char broker[128], alice[128], w1[128], olga[128]; /* certificate paths */
    char broker_key[TQ_CURVE_KEY_TEXT];
} s_keys_t;

static s_keys_t s_keys;
static tq_harness_env_t *s_env; /* the hostile test's, for teardown */

static void
s_keygen(const char *path, const char *name, char *key)
{
    char error[256], tmp[TQ_CURVE_KEY_TEXT];
    assert_int_equal(tq_curve_keygen(path, name, key ? key : tmp, error,
                                     sizeof error), 0);
}

static void
s_copy(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
}

static int
s_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int
s_setup(void **state)
{
    (void)state;
    tq_harness_init();
    unsetenv(TQ_CURVE_ENV_SERVER_KEY);
    unsetenv(TQ_CURVE_ENV_CERT);
    s_keys_t *k = &s_keys;
    snprintf(k->dir, sizeof k->dir, "/tmp/tq-sec-XXXXXX");
    if (!mkdtemp(k->dir))
        return -1;
    snprintf(k->clients, sizeof k->clients, "%.60s/clients", k->dir);
    snprintf(k->workers, sizeof k->workers, "%.60s/workers", k->dir);
    snprintf(k->admins, sizeof k->admins, "%.60s/admins", k->dir);
    mkdir(k->clients, 0700);
    mkdir(k->workers, 0700);
    mkdir(k->admins, 0700);
    snprintf(k->broker, sizeof k->broker, "%.60s/broker.cert", k->dir);
    snprintf(k->alice, sizeof k->alice, "%.60s/alice.cert", k->dir);
    snprintf(k->w1, sizeof k->w1, "%.60s/w1.cert", k->dir);
    snprintf(k->olga, sizeof k->olga, "%.60s/olga.cert", k->dir);
    s_keygen(k->olga, "olga", NULL);
    s_keygen(k->broker, "broker", k->broker_key);
    s_keygen(k->alice, "alice", NULL);
    s_keygen(k->w1, "w1", NULL);
    char path[256];
    snprintf(path, sizeof path, "%.100s/alice.cert", k->clients);
    s_copy(k->alice, path);
    snprintf(path, sizeof path, "%.100s/w1.cert", k->workers);
    s_copy(k->w1, path);
    snprintf(path, sizeof path, "%.100s/olga.cert", k->admins);
    s_copy(k->olga, path);
    return 0;
}

static int
s_teardown(void **state)
{
    (void)state;
    if (s_env)
        tq_harness_env_stop(s_env);
    tq_harness_kill_all();
    nftw(s_keys.dir, s_rm, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* ---- an in-process broker (its ZAP counters are ours to read) -------- */

typedef struct {
    tq_broker_t *broker;
    pthread_t thread;
} s_broker_t;

static void *
s_broker_main(void *arg)
{
    tq_broker_run(arg);
    return NULL;
}

static void
s_broker_start(s_broker_t *self, bool curve)
{
    tq_broker_config_t config = {
        .client_endpoint = "tcp://127.0.0.1:*",
        .worker_endpoint = "tcp://127.0.0.1:*",
        .result_ttl_s = -1,
    };
    if (curve) {
        config.curve_secret = s_keys.broker;
        config.client_keys = s_keys.clients;
        config.worker_keys = s_keys.workers;
        config.admin_keys = s_keys.admins;
    }
    char error[512] = "";
    self->broker = tq_broker_new(&config, error, sizeof error);
    if (!self->broker)
        fail_msg("broker: %s", error);
    assert_int_equal(
        pthread_create(&self->thread, NULL, s_broker_main, self->broker), 0);
}

static void
s_broker_stop(s_broker_t *self)
{
    tq_broker_stop(self->broker);
    pthread_join(self->thread, NULL);
    tq_broker_destroy(&self->broker);
}

/* ---- raw peers ------------------------------------------------------ */

/* A DEALER on endpoint; CURVE client with the given keys when public_key
   is non-NULL. */
static void *
s_dealer(void *ctx, const char *endpoint, const char *public_key,
         const char *secret_key)
{
    void *socket = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(socket);
    int linger = 0, timeout = 3000;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(socket, ZMQ_SNDTIMEO, &timeout, sizeof timeout);
    if (public_key) {
        zmq_setsockopt(socket, ZMQ_CURVE_SERVERKEY, s_keys.broker_key, 40);
        zmq_setsockopt(socket, ZMQ_CURVE_PUBLICKEY, public_key, 40);
        zmq_setsockopt(socket, ZMQ_CURVE_SECRETKEY, secret_key, 40);
    }
    assert_int_equal(zmq_connect(socket, endpoint), 0);
    return socket;
}

/* A DEALER with the keys of a certificate file. */
static void *
s_cert_dealer(void *ctx, const char *endpoint, const char *cert_path)
{
    char error[256];
    zcert_t *cert = tq_curve_load_secret(cert_path, error, sizeof error);
    assert_non_null(cert);
    void *socket = s_dealer(ctx, endpoint, zcert_public_txt(cert),
                            zcert_secret_txt(cert));
    zcert_destroy(&cert);
    return socket;
}

/* Sends a header (and a payload when non-NULL) from msg. */
static void
s_send(void *socket, const tq_msg_t *msg, const void *payload, size_t size)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    const char *why = NULL;
    assert_int_equal(tq_proto_encode(msg, &buf, &why), TQ_OK);
    assert_true(zmq_send(socket, buf.data, buf.size,
                         payload ? ZMQ_SNDMORE : 0) >= 0);
    if (payload)
        assert_true(zmq_send(socket, payload, size, 0) >= 0);
    msgpack_sbuffer_destroy(&buf);
}

static void
s_send_submit(void *socket, const char *id)
{
    static const uint8_t args[] = {0x91, 0x01}; /* [1] */
    tq_msg_t *msg = calloc(1, sizeof *msg);
    msg->command = TQ_CMD_SUBMIT;
    msg->id = tq_str(id);
    msg->task = tq_str("tq.echo");
    msg->queue = tq_str("default");
    s_send(socket, msg, args, sizeof args);
    free(msg);
}

static void
s_send_ping(void *socket)
{
    tq_msg_t *msg = calloc(1, sizeof *msg);
    msg->command = TQ_CMD_PING;
    s_send(socket, msg, NULL, 0);
    free(msg);
}

/* Receives every message the sockets get for ms milliseconds; returns how
   many arrived (all frames of one message count once). */
static int
s_count_replies(void **sockets, int count, int ms)
{
    zmq_pollitem_t *items = calloc((size_t)count, sizeof *items);
    for (int i = 0; i < count; i++)
        items[i] = (zmq_pollitem_t){sockets[i], 0, ZMQ_POLLIN, 0};
    int replies = 0;
    int64_t deadline = tq_harness_now_ms() + ms;
    for (int64_t left = ms; left > 0;
         left = deadline - tq_harness_now_ms()) {
        if (zmq_poll(items, count, (long)left) <= 0)
            continue;
        for (int i = 0; i < count; i++) {
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            zmq_msg_t part;
            zmq_msg_init(&part);
            while (zmq_msg_recv(&part, sockets[i], ZMQ_DONTWAIT) >= 0)
                if (!zmq_msg_more(&part))
                    replies++;
            zmq_msg_close(&part);
        }
    }
    free(items);
    return replies;
}

/* Waits for one reply on socket within ms; true if one came. */
static bool
s_replied(void *socket, int ms)
{
    return s_count_replies(&socket, 1, ms) > 0;
}

/* ---- tests ---------------------------------------------------------- */

/* 100 random key pairs on both endpoints: nobody gets an answer; the
   allowed keys do; a client key is refused on the workers endpoint and a
   worker key on the clients endpoint. */
static void
test_random_keys_refused(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_start(&b, true);
    const char *cep = tq_broker_client_endpoint(b.broker);
    const char *wep = tq_broker_worker_endpoint(b.broker);
    void *ctx = zmq_ctx_new();
    tq_auth_stats_t before, after;
    tq_auth_stats(&before);

    void *intruders[2 * S_RANDOM_KEYS];
    for (int i = 0; i < S_RANDOM_KEYS; i++) {
        char pub[41], sec[41], id[40];
        assert_int_equal(zmq_curve_keypair(pub, sec), 0);
        intruders[2 * i] = s_dealer(ctx, cep, pub, sec);
        snprintf(id, sizeof id, "intruder%d", i);
        s_send_submit(intruders[2 * i], id);
        intruders[2 * i + 1] = s_dealer(ctx, wep, pub, sec);
        s_send_ping(intruders[2 * i + 1]);
    }
    /* the wrong list: alice is a client, w1 a worker */
    void *alice_as_worker = s_cert_dealer(ctx, wep, s_keys.alice);
    void *w1_as_client = s_cert_dealer(ctx, cep, s_keys.w1);
    s_send_ping(alice_as_worker);
    s_send_submit(w1_as_client, "w1-as-client");

    /* wait until every intruder was refused at least once, bounded */
    int64_t deadline = tq_harness_now_ms() + 10000;
    do {
        tq_harness_sleep_ms(50);
        tq_auth_stats(&after);
    } while ((after.denied_clients - before.denied_clients <
                  S_RANDOM_KEYS + 1 ||
              after.denied_workers - before.denied_workers <
                  S_RANDOM_KEYS + 1) &&
             tq_harness_now_ms() < deadline);
    int replies = s_count_replies(intruders, 2 * S_RANDOM_KEYS, S_QUIET_MS);
    bool wrong_list = s_replied(alice_as_worker, 200) ||
                      s_replied(w1_as_client, 200);
    tq_auth_stats(&after);
    printf("random keys: %d accepted of %d attempts; ZAP refused %llu on "
           "clients, %llu on workers, allowed %llu\n",
           replies, 2 * S_RANDOM_KEYS,
           (unsigned long long)(after.denied_clients - before.denied_clients),
           (unsigned long long)(after.denied_workers - before.denied_workers),
           (unsigned long long)(after.allowed - before.allowed));
    assert_int_equal(replies, 0);
    assert_false(wrong_list);
    assert_true(after.denied_clients - before.denied_clients >=
                S_RANDOM_KEYS + 1);
    assert_true(after.denied_workers - before.denied_workers >=
                S_RANDOM_KEYS + 1);
    assert_int_equal(after.allowed, before.allowed);

    /* the allowed keys work */
    void *alice = s_cert_dealer(ctx, cep, s_keys.alice);
    void *w1 = s_cert_dealer(ctx, wep, s_keys.w1);
    s_send_submit(alice, "alice-1");
    s_send_ping(w1);
    assert_true(s_replied(alice, 5000));
    assert_true(s_replied(w1, 5000));

    for (int i = 0; i < 2 * S_RANDOM_KEYS; i++)
        zmq_close(intruders[i]);
    zmq_close(alice_as_worker);
    zmq_close(w1_as_client);
    zmq_close(alice);
    zmq_close(w1);
    zmq_ctx_term(ctx);
    s_broker_stop(&b);
}

/* The real tq-worker and the client library with CURVE (options and
   environment); then alice's key is removed, and added back, without a
   restart. */
static void
test_allowed_and_removed(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_start(&b, true);
    const char *cep = tq_broker_client_endpoint(b.broker);
    const char *wep = tq_broker_worker_endpoint(b.broker);
    const char *extra[] = {"--curve-server-key", s_keys.broker,
                           "--curve-cert", s_keys.w1, NULL};
    pid_t worker = tq_harness_worker_start(wep, 1, extra);
    assert_true(worker > 0);

    setenv(TQ_CURVE_ENV_SERVER_KEY, s_keys.broker_key, 1);
    /* the hosts and the counters are for an operator key (5.7) */
    setenv(TQ_CURVE_ENV_CERT, s_keys.olga, 1);
    tq_client_t *operator = tq_client_new(cep);
    assert_non_null(operator);
    setenv(TQ_CURVE_ENV_CERT, s_keys.alice, 1);
    tq_client_t *client = tq_client_new(cep);
    assert_non_null(client);
    assert_int_equal(tq_harness_wait_workers(operator, 1, worker, 10000), 0);
    /* STATUS shows the ZAP handler's counters when CURVE is on */
    tq_harness_status_t st = {0};
    assert_int_equal(tq_harness_status(operator, &st, 5000), TQ_OK);
    const msgpack_object *auth = tq_harness_map_get(st.root, "auth");
    assert_non_null(auth);
    uint64_t allowed = tq_harness_map_uint(auth, "allowed", 0);
    printf("STATUS auth: allowed %llu, denied clients %llu, workers %llu\n",
           (unsigned long long)allowed,
           (unsigned long long)tq_harness_map_uint(auth, "denied_clients", 0),
           (unsigned long long)tq_harness_map_uint(auth, "denied_workers", 0));
    assert_true(allowed >= 2); /* this client, the worker's sockets */
    tq_harness_status_free(&st);
    tq_result_t *r = tq_apply(client, "tq.echo", NULL, S_GET_MS, "s",
                              "over curve");
    assert_non_null(r);
    assert_int_equal(tq_result_code(r), TQ_OK);
    tq_result_destroy(&r);

    /* removed: a new connection with alice's key gets nowhere */
    char path[256];
    snprintf(path, sizeof path, "%.100s/alice.cert", s_keys.clients);
    assert_int_equal(unlink(path), 0);
    void *ctx = zmq_ctx_new();
    void *late = s_cert_dealer(ctx, cep, s_keys.alice);
    s_send_submit(late, "after-removal");
    assert_false(s_replied(late, S_QUIET_MS));
    zmq_close(late);

    /* added back: works again, no restart */
    s_copy(s_keys.alice, path);
    void *again = s_cert_dealer(ctx, cep, s_keys.alice);
    s_send_submit(again, "after-readd");
    assert_true(s_replied(again, 5000));
    zmq_close(again);
    zmq_ctx_term(ctx);
    printf("removal and re-adding of a key took effect without restart\n");

    tq_client_destroy(&operator);
    tq_client_destroy(&client);
    unsetenv(TQ_CURVE_ENV_SERVER_KEY);
    unsetenv(TQ_CURVE_ENV_CERT);
    tq_harness_stop(worker);
    s_broker_stop(&b);
}

/* With the ZAP handler gone, even an allowed key does not get in. */
static void
test_fail_closed(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    char error[256];
    tq_auth_t *auth = tq_auth_new(ctx, s_keys.clients, s_keys.workers, NULL,
                                  error, sizeof error);
    assert_non_null(auth);
    zcert_t *cert = tq_curve_load_secret(s_keys.broker, error, sizeof error);
    assert_non_null(cert);
    void *server = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(server, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(tq_curve_server_setup(server, cert,
                                           TQ_CURVE_DOMAIN_CLIENTS, error,
                                           sizeof error),
                     0);
    zcert_destroy(&cert);
    assert_int_equal(zmq_bind(server, "tcp://127.0.0.1:*"), 0);
    char endpoint[256];
    size_t len = sizeof endpoint;
    zmq_getsockopt(server, ZMQ_LAST_ENDPOINT, endpoint, &len);

    void *peer_ctx = zmq_ctx_new();
    void *before = s_cert_dealer(peer_ctx, endpoint, s_keys.alice);
    zmq_send(before, "hello", 5, 0);
    assert_true(s_replied(server, 5000)); /* control: it does work */

    tq_auth_destroy(&auth);
    void *after = s_cert_dealer(peer_ctx, endpoint, s_keys.alice);
    zmq_send(after, "hello", 5, 0);
    bool got_in = s_replied(server, S_QUIET_MS);
    printf("ZAP handler gone: an allowed key %s\n",
           got_in ? "GOT IN" : "was refused");
    assert_false(got_in);

    zmq_close(before);
    zmq_close(after);
    zmq_ctx_term(peer_ctx);
    zmq_close(server);
    zmq_ctx_term(ctx);
}

/* ---- a recording TCP proxy ----------------------------------------- */

typedef struct {
    int listen_fd, stop_fd, target_port, port;
    pthread_t thread;
    pthread_mutex_t lock;
    char *bytes; /* everything that went through, both ways */
    size_t len, cap;
} s_proxy_t;

static void
s_proxy_record(s_proxy_t *self, const char *data, size_t n)
{
    pthread_mutex_lock(&self->lock);
    if (self->len + n > self->cap) {
        self->cap = (self->len + n) * 2;
        self->bytes = realloc(self->bytes, self->cap);
    }
    memcpy(self->bytes + self->len, data, n);
    self->len += n;
    pthread_mutex_unlock(&self->lock);
}

static void *
s_proxy_main(void *arg)
{
    s_proxy_t *self = arg;
    enum { PAIRS = 8 };
    int fds[2 * PAIRS];
    for (int i = 0; i < 2 * PAIRS; i++)
        fds[i] = -1;
    for (;;) {
        struct pollfd p[2 + 2 * PAIRS];
        p[0] = (struct pollfd){self->stop_fd, POLLIN, 0};
        p[1] = (struct pollfd){self->listen_fd, POLLIN, 0};
        for (int i = 0; i < 2 * PAIRS; i++)
            p[2 + i] = (struct pollfd){fds[i], POLLIN, 0};
        if (poll(p, 2 + 2 * PAIRS, 1000) < 0 && errno != EINTR)
            break;
        if (p[0].revents)
            break;
        if (p[1].revents & POLLIN) {
            int in = accept(self->listen_fd, NULL, NULL);
            int out = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in to = {.sin_family = AF_INET,
                                     .sin_port = htons(self->target_port),
                                     .sin_addr.s_addr =
                                         htonl(INADDR_LOOPBACK)};
            int slot = -1;
            for (int i = 0; i < PAIRS && slot < 0; i++)
                if (fds[2 * i] < 0)
                    slot = i;
            if (in >= 0 && slot >= 0 &&
                connect(out, (struct sockaddr *)&to, sizeof to) == 0) {
                fds[2 * slot] = in;
                fds[2 * slot + 1] = out;
            } else {
                if (in >= 0)
                    close(in);
                close(out);
            }
        }
        for (int i = 0; i < 2 * PAIRS; i++) {
            if (fds[i] < 0 || !p[2 + i].revents)
                continue;
            char buf[65536];
            ssize_t n = read(fds[i], buf, sizeof buf);
            int other = fds[i ^ 1];
            if (n <= 0) {
                close(fds[i]);
                close(other);
                fds[i] = fds[i ^ 1] = -1;
                continue;
            }
            s_proxy_record(self, buf, (size_t)n);
            for (ssize_t done = 0, w; done < n; done += w)
                if ((w = write(other, buf + done, (size_t)(n - done))) <= 0)
                    break;
        }
    }
    for (int i = 0; i < 2 * PAIRS; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return NULL;
}

static void
s_proxy_start(s_proxy_t *self, const char *target)
{
    memset(self, 0, sizeof *self);
    const char *colon = strrchr(target, ':');
    assert_non_null(colon);
    self->target_port = atoi(colon + 1);
    self->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(self->listen_fd, (struct sockaddr *)&addr,
                          sizeof addr), 0);
    assert_int_equal(listen(self->listen_fd, 8), 0);
    socklen_t len = sizeof addr;
    getsockname(self->listen_fd, (struct sockaddr *)&addr, &len);
    self->port = ntohs(addr.sin_port);
    self->stop_fd = eventfd(0, EFD_CLOEXEC);
    pthread_mutex_init(&self->lock, NULL);
    assert_int_equal(pthread_create(&self->thread, NULL, s_proxy_main, self),
                     0);
}

static bool
s_proxy_saw(s_proxy_t *self, const char *text)
{
    pthread_mutex_lock(&self->lock);
    bool seen = self->bytes &&
                memmem(self->bytes, self->len, text, strlen(text)) != NULL;
    pthread_mutex_unlock(&self->lock);
    return seen;
}

static void
s_proxy_stop(s_proxy_t *self)
{
    uint64_t one = 1;
    ssize_t rc = write(self->stop_fd, &one, sizeof one);
    (void)rc;
    pthread_join(self->thread, NULL);
    close(self->listen_fd);
    close(self->stop_fd);
    pthread_mutex_destroy(&self->lock);
    free(self->bytes);
}

/* Submits "SECRET-ARG-..." as tq.echo's argument through the proxy and
   waits for the result when worker is set; returns the bytes seen. */
static size_t
s_submit_through(s_proxy_t *proxy, const char *arg, bool wait)
{
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", proxy->port);
    tq_client_t *client = tq_client_new(endpoint);
    assert_non_null(client);
    tq_result_t *r = tq_apply_async(client, "tq.echo", NULL, "s", arg);
    assert_non_null(r);
    if (wait)
        assert_int_equal(tq_result_get(r, S_GET_MS), TQ_OK);
    else {
        /* no worker: wait until the SUBMIT went through, bounded */
        int64_t deadline = tq_harness_now_ms() + 5000;
        while (!s_proxy_saw(proxy, arg) && tq_harness_now_ms() < deadline)
            tq_harness_sleep_ms(20);
    }
    tq_result_destroy(&r);
    tq_client_destroy(&client);
    pthread_mutex_lock(&proxy->lock);
    size_t len = proxy->len;
    pthread_mutex_unlock(&proxy->lock);
    return len;
}

/* The bytes between an authenticated client and the broker hold neither
   the task name nor the argument; without CURVE (the control) they do. */
static void
test_no_plaintext(void **state)
{
    (void)state;
    static const char secret[] = "SECRET-ARG-7f3a9c";
    s_broker_t b;
    s_broker_start(&b, true);
    const char *extra[] = {"--curve-server-key", s_keys.broker,
                           "--curve-cert", s_keys.w1, NULL};
    pid_t worker =
        tq_harness_worker_start(tq_broker_worker_endpoint(b.broker), 1, extra);
    assert_true(worker > 0);
    s_proxy_t proxy;
    s_proxy_start(&proxy, tq_broker_client_endpoint(b.broker));
    setenv(TQ_CURVE_ENV_SERVER_KEY, s_keys.broker, 1);
    setenv(TQ_CURVE_ENV_CERT, s_keys.alice, 1);
    size_t seen = s_submit_through(&proxy, secret, true);
    unsetenv(TQ_CURVE_ENV_SERVER_KEY);
    unsetenv(TQ_CURVE_ENV_CERT);
    bool leaked = s_proxy_saw(&proxy, secret) ||
                  s_proxy_saw(&proxy, "tq.echo");
    printf("CURVE: %zu bytes recorded between client and broker, "
           "plaintext %s\n", seen, leaked ? "FOUND" : "absent");
    assert_true(seen > 0);
    assert_false(leaked);
    s_proxy_stop(&proxy);
    tq_harness_stop(worker);
    s_broker_stop(&b);

    /* control: the same capture of a plain broker shows both */
    s_broker_start(&b, false);
    s_proxy_start(&proxy, tq_broker_client_endpoint(b.broker));
    seen = s_submit_through(&proxy, secret, false);
    printf("plain control: %zu bytes, plaintext %s\n", seen,
           s_proxy_saw(&proxy, secret) ? "found" : "ABSENT");
    assert_true(s_proxy_saw(&proxy, secret));
    assert_true(s_proxy_saw(&proxy, "tq.echo"));
    s_proxy_stop(&proxy);
    s_broker_stop(&b);
}

/* ---- hostile peer --------------------------------------------------- */

static long
s_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

static void
s_random_bytes(uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)random();
}

#define S_NORMAL 300   /* tasks of normal traffic */
#define S_FLOOD 300    /* DEALERs of the connection flood */
#define S_MAX_MSG 1048576

/* While a client runs S_NORMAL echo tasks, a peer sends random frames,
   frames above --max-message, other versions, messages out of order,
   msgpack bombs, raw TCP garbage, and S_FLOOD connections. */
static void
test_hostile_peer(void **state)
{
    (void)state;
    static tq_harness_env_t env_local;
    memset(&env_local, 0, sizeof env_local);
    s_env = &env_local;
#define env (*s_env)
    const char *bextra[] = {"--max-message", "1048576", "--no-persist",
                            NULL};
    assert_int_equal(tq_harness_env_start(&env, bextra), 0);
    assert_true(tq_harness_env_add_worker(&env, 2, NULL, true) > 0);
    const char *cep = env.broker.clients, *wep = env.broker.workers;
    long rss_start = s_rss_kb(env.broker.pid);
    srandom(7);

    static tq_result_t *results[S_NORMAL];
    void *ctx = zmq_ctx_new();
    static void *flood[S_FLOOD];
    uint8_t junk[512];
    int sent = 0, flooded = 0, kept = 0;
    /* hostile peers stay open to the end: a DEALER closed with linger 0
       right after connect would never send */
    static void *peers[10 * 3];
    for (int round = 0; round < 10; round++) {
        /* normal traffic, a slice per round */
        for (; sent < (round + 1) * S_NORMAL / 10; sent++) {
            results[sent] =
                tq_apply_async(env.client, "tq.echo", NULL, "i", (int64_t)sent);
            assert_non_null(results[sent]);
        }
        /* a flood slice: new connections with random multipart junk */
        for (; flooded < (round + 1) * S_FLOOD / 10; flooded++) {
            flood[flooded] =
                s_dealer(ctx, flooded % 3 ? cep : wep, NULL, NULL);
            int frames = 1 + (int)(random() % 3);
            for (int f = 0; f < frames; f++) {
                size_t n = 1 + (size_t)(random() % sizeof junk);
                s_random_bytes(junk, n);
                zmq_send(flood[flooded], junk, n,
                         f + 1 < frames ? ZMQ_SNDMORE : 0);
            }
        }
        void *peer = s_dealer(ctx, round % 2 ? wep : cep, NULL, NULL);
        /* a frame above --max-message: libzmq drops the connection */
        size_t huge = S_MAX_MSG + 4096;
        uint8_t *big = calloc(1, huge);
        zmq_send(peer, big, huge, 0);
        free(big);
        peers[kept++] = peer;
        peer = s_dealer(ctx, cep, NULL, NULL);
        /* another version */
        tq_msg_t *msg = calloc(1, sizeof *msg);
        msgpack_sbuffer buf;
        msgpack_sbuffer_init(&buf);
        msg->command = TQ_CMD_STATUS;
        tq_proto_encode(msg, &buf, NULL);
        ((uint8_t *)buf.data)[1] = 2; /* [1, 7] -> [2, 7] */
        zmq_send(peer, buf.data, buf.size, 0);
        /* out of order: READY and DONE on the clients endpoint, a reply
           command sent to the broker */
        msg->command = TQ_CMD_SUBMITTED;
        msg->id = tq_str("not-yours");
        tq_proto_encode(msg, &buf, NULL);
        zmq_send(peer, buf.data, buf.size, 0);
        msg->command = TQ_CMD_READY;
        msg->host = tq_str("evil");
        msg->pid = msg->ppid = 1;
        msg->credit = 1;
        tq_proto_encode(msg, &buf, NULL);
        zmq_send(peer, buf.data, buf.size, 0);
        /* a msgpack bomb: an array claiming 2^32-1 elements; a payload
           nested 200 deep */
        static const uint8_t bomb[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
        uint8_t deep[201];
        memset(deep, 0x91, 200);
        deep[200] = 0x01;
        memset(msg, 0, sizeof *msg);
        msg->command = TQ_CMD_SUBMIT;
        msg->id = tq_str("bomb");
        msg->task = tq_str("tq.echo");
        msg->queue = tq_str("default");
        tq_proto_encode(msg, &buf, NULL);
        zmq_send(peer, buf.data, buf.size, ZMQ_SNDMORE);
        zmq_send(peer, bomb, sizeof bomb, 0);
        msg->id = tq_str("deep");
        tq_proto_encode(msg, &buf, NULL);
        zmq_send(peer, buf.data, buf.size, ZMQ_SNDMORE);
        zmq_send(peer, deep, sizeof deep, 0);
        peers[kept++] = peer;
        /* DONE from a worker that never said READY */
        peer = s_dealer(ctx, wep, NULL, NULL);
        memset(msg, 0, sizeof *msg);
        msg->command = TQ_CMD_DONE;
        msg->id = tq_str("forged");
        msg->attempt = 1;
        msg->state = TQ_STATE_SUCCESS;
        tq_proto_encode(msg, &buf, NULL);
        zmq_send(peer, buf.data, buf.size, ZMQ_SNDMORE);
        zmq_send(peer, "\xc0", 1, 0);
        peers[kept++] = peer;
        msgpack_sbuffer_destroy(&buf);
        free(msg);
        /* raw TCP garbage that is not ZMTP at all */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in to = {.sin_family = AF_INET,
                                 .sin_port = htons(
                                     atoi(strrchr(cep, ':') + 1)),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (connect(fd, (struct sockaddr *)&to, sizeof to) == 0) {
            s_random_bytes(junk, sizeof junk);
            ssize_t rc = write(fd, junk, sizeof junk);
            (void)rc;
        }
        close(fd);
    }
    long rss_peak = s_rss_kb(env.broker.pid);

    int ok = 0;
    for (int i = 0; i < S_NORMAL; i++) {
        if (tq_result_get(results[i], S_GET_MS) == TQ_OK) {
            const msgpack_object *v = tq_result_value(results[i]);
            if (v && v->type == MSGPACK_OBJECT_ARRAY &&
                v->via.array.size == 1 &&
                v->via.array.ptr[0].via.i64 == i)
                ok++;
        }
        tq_result_destroy(&results[i]);
    }
    /* the refusals came back to the peers that could be answered */
    int answers = s_count_replies(peers, kept, 500);
    for (int i = 0; i < kept; i++)
        zmq_close(peers[i]);
    for (int i = 0; i < S_FLOOD; i++)
        zmq_close(flood[i]);
    zmq_ctx_term(ctx);

    tq_harness_status_t st = {0};
    assert_int_equal(tq_harness_status(env.client, &st, 5000), TQ_OK);
    uint64_t malformed = tq_harness_counter(&st, "malformed");
    uint64_t errors = tq_harness_counter(&st, "errors");
    uint64_t completed = tq_harness_counter(&st, "completed");
    tq_harness_status_free(&st);
    long rss_end = s_rss_kb(env.broker.pid);
    printf("hostile peer: %d/%d normal tasks right, broker alive %s; "
           "%d ERROR answers to the hostile peers; counters malformed %llu errors %llu completed %llu; broker "
           "VmRSS start %ld kB, under attack %ld kB, after %ld kB\n",
           ok, S_NORMAL, tq_harness_alive(env.broker.pid) ? "yes" : "NO",
           answers,
           (unsigned long long)malformed, (unsigned long long)errors,
           (unsigned long long)completed, rss_start, rss_peak, rss_end);
    assert_int_equal(ok, S_NORMAL);
    assert_true(tq_harness_alive(env.broker.pid));
    assert_true(malformed >= 10);  /* the bombs, versions, junk */
    assert_true(errors >= 10);     /* out of order */
    assert_true(rss_end > 0 && rss_end < rss_start + 128 * 1024);
    tq_harness_env_stop(&env);
    s_env = NULL;
#undef env
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_keys_refused),
        cmocka_unit_test(test_allowed_and_removed),
        cmocka_unit_test(test_fail_closed),
        cmocka_unit_test(test_no_plaintext),
        cmocka_unit_test(test_hostile_peer),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
