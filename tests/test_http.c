/* test_http.c - tq-broker --http and the look inside the queue: /metrics
   on a synthetic STATUS map (the store histogram read when present,
   omitted when not) and against a live broker; retry through the HTTP API
   refused without the token and run again with it; headless Chromium
   loading the dashboard (DOM checked for the numbers the test made, a
   screenshot saved in the build directory); the TASKS/INSPECT codec; and
   tq tasks / tq inspect against a fake broker that answers them, and one
   that predates them (fallback to STATUS and GET). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <zmq.h>

#include "tq_curve.h"
#include "tq_harness.h"
#include "tq_http_json.h"
#include "tq_http_metrics.h"
#include "tq_proto.h"
#include "tq_wire.h"

#define S_CHROMIUM "/usr/bin/chromium"
#define S_RUN_MS 120000 /* bound on one CLI or browser run */
#define S_WAIT_MS 20000 /* bound on waiting for a broker's state */
#define S_TOKEN "test-token-8c1f"

/* ---- helpers ------------------------------------------------------------ */

static void
s_pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void
s_pack_kv(msgpack_packer *pk, const char *key, uint64_t v)
{
    s_pack_str(pk, key);
    msgpack_pack_uint64(pk, v);
}

/* A STATUS body as the broker writes it (PROTOCOL.md 8), with the "store"
   map the lead is to add when with_store. */
static void
s_synthetic_status(msgpack_sbuffer *buf, bool with_store)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, with_store ? 7 : 6);
    s_pack_str(&pk, "version");
    s_pack_str(&pk, "TQP/1");
    s_pack_kv(&pk, "uptime_ms", 61500);
    s_pack_kv(&pk, "memory", 2048);
    s_pack_str(&pk, "queues");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 7);
    s_pack_str(&pk, "name");
    s_pack_str(&pk, "default");
    s_pack_kv(&pk, "waiting", 2);
    s_pack_kv(&pk, "running", 1);
    s_pack_kv(&pk, "delayed", 4);
    s_pack_kv(&pk, "done", 7);
    s_pack_kv(&pk, "failed", 3);
    s_pack_kv(&pk, "oldest_ms", 1500);
    s_pack_str(&pk, "workers");
    const char *hosts[] = {"h1", "h\"2", "h1"};
    const bool busy[] = {true, false, false};
    msgpack_pack_array(&pk, 3);
    for (int i = 0; i < 3; i++) {
        msgpack_pack_map(&pk, 4);
        s_pack_str(&pk, "host");
        s_pack_str(&pk, hosts[i]);
        s_pack_kv(&pk, "done", 10u + (unsigned)i);
        s_pack_kv(&pk, "rss_kb", 1000u * (unsigned)(i + 1));
        s_pack_str(&pk, "busy");
        if (busy[i])
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
    }
    s_pack_str(&pk, "counters");
    msgpack_pack_map(&pk, 5);
    s_pack_kv(&pk, "completed", 7);
    s_pack_kv(&pk, "failed", 3);
    s_pack_kv(&pk, "dropped", 4);
    s_pack_kv(&pk, "malformed", 5);
    s_pack_kv(&pk, "Bad-Name", 6); /* not a metric name: left out */
    if (with_store) {
        s_pack_str(&pk, "store");
        msgpack_pack_map(&pk, 3);
        s_pack_kv(&pk, "commits", 10);
        s_pack_kv(&pk, "commit_us_sum", 12345);
        s_pack_str(&pk, "commit_us_buckets");
        const uint64_t b[][2] = {{100, 2}, {1000, 5}, {10000, 2}};
        msgpack_pack_array(&pk, 3);
        for (int i = 0; i < 3; i++) {
            msgpack_pack_array(&pk, 2);
            msgpack_pack_uint64(&pk, b[i][0]);
            msgpack_pack_uint64(&pk, b[i][1]);
        }
    }
}

static void
s_render(bool with_store, double rate, tq_http_text_t *out)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_synthetic_status(&buf, with_store);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, buf.data, buf.size, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(tq_http_metrics_render(&up.data, rate, out), 0);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&buf);
}

/* True if text has line as one whole line. */
static bool
s_has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)); p++)
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || !p[n]))
            return true;
    return false;
}

/* One HTTP/1.0 exchange with 127.0.0.1:port; returns the status code and
   the body in *body (malloc'd, may be NULL), or -1. */
static int
s_http(int port, const char *method, const char *path, const char *token,
       char **body)
{
    if (body)
        *body = NULL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {20, 0}; /* bounded: a hung server fails the test */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%s%s%s"
                     "Content-Length: 0\r\n\r\n",
                     method, path, token ? "Authorization: Bearer " : "",
                     token ? token : "", token ? "\r\n" : "");
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    size_t len = 0, cap = 4096;
    char *data = malloc(cap);
    assert_non_null(data);
    ssize_t got;
    while ((got = read(fd, data + len, cap - len - 1)) > 0) {
        len += (size_t)got;
        if (cap - len < 1024) {
            cap *= 2;
            data = realloc(data, cap);
            assert_non_null(data);
        }
    }
    close(fd);
    data[len] = '\0';
    int status = -1;
    if (sscanf(data, "HTTP/1.%*d %d", &status) != 1)
        status = -1;
    char *start = strstr(data, "\r\n\r\n");
    if (body && start)
        *body = strdup(start + 4);
    free(data);
    return status;
}

/* Starts a broker with --http on a free port (and token args), a worker
   host of two children; *port gets the HTTP port. */
static void
s_start(tq_harness_env_t *env, int *port, bool with_token)
{
    char ep[TQ_HARNESS_EP_MAX];
    assert_int_equal(tq_harness_free_endpoint(ep, sizeof ep), 0);
    const char *colon = strrchr(ep, ':');
    assert_non_null(colon);
    *port = atoi(colon + 1);
    static char address[64];
    snprintf(address, sizeof address, "127.0.0.1:%d", *port);
    const char *extra[] = {"--no-persist", "--http",
                           address,        with_token ? "--http-token" : NULL,
                           S_TOKEN,        NULL};
    assert_int_equal(tq_harness_env_start(env, extra), 0);
    assert_true(tq_harness_env_add_worker(env, 2, NULL, true) > 0);
    /* the server listens before the broker prints its endpoints */
    char *body = NULL;
    assert_int_equal(s_http(*port, "GET", "/api/status", NULL, &body), 200);
    free(body);
}

/* Submits ok tq.echo and bad tq.fail tasks and waits for every result;
   the id of the last failed one goes to failed_id. */
static void
s_make_tasks(tq_harness_env_t *env, int ok, int bad, char *failed_id,
             size_t size)
{
    for (int i = 0; i < ok + bad; i++) {
        tq_result_t *r = i < ok
            ? tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)i)
            : tq_apply_async(env->client, "tq.fail", NULL, "s",
                             "boom-from-test");
        assert_non_null(r);
        int code = tq_result_get(r, S_WAIT_MS);
        assert_int_equal(code, i < ok ? TQ_OK : TQ_ETASK);
        if (i >= ok && failed_id)
            snprintf(failed_id, size, "%s", tq_result_id(r));
        tq_result_destroy(&r);
    }
}

/* Tasks the worker children of st finished, summed. */
static uint64_t
s_workers_done(const tq_harness_status_t *st)
{
    uint32_t n = 0;
    const msgpack_object *w = tq_harness_workers(st, &n);
    uint64_t sum = 0;
    for (uint32_t i = 0; w && i < n; i++)
        sum += tq_harness_map_uint(&w->via.array.ptr[i], "done", 0);
    return sum;
}

/* ---- unit: metrics, rates, JSON, codec ---------------------------------- */

static void
test_metrics_synthetic_status(void **state)
{
    (void)state;
    tq_http_text_t out = {0};
    s_render(true, 2.5, &out);
    const char *expected[] = {
        "tq_broker_up 1",
        "tq_broker_uptime_seconds 61.500",
        "tq_broker_memory_bytes 2048",
        "tq_broker_tasks_per_second 2.500",
        "# TYPE tq_queue_done counter",
        "tq_queue_waiting{queue=\"default\"} 2",
        "tq_queue_running{queue=\"default\"} 1",
        "tq_queue_delayed{queue=\"default\"} 4",
        "tq_queue_done{queue=\"default\"} 7",
        "tq_queue_failed{queue=\"default\"} 3",
        "tq_queue_oldest_waiting_seconds{queue=\"default\"} 1.500",
        "tq_host_children{host=\"h1\"} 2",
        "tq_host_children{host=\"h\\\"2\"} 1",
        "tq_host_busy{host=\"h1\"} 1",
        "tq_host_busy{host=\"h\\\"2\"} 0",
        "tq_host_tasks_done{host=\"h1\"} 22",
        "tq_host_rss_bytes{host=\"h1\"} 4096000",
        "tq_broker_dropped_total 4",
        "tq_broker_malformed_total 5",
        "# TYPE tq_store_commit_seconds histogram",
        "tq_store_commit_seconds_bucket{le=\"0.0001\"} 2",
        "tq_store_commit_seconds_bucket{le=\"0.001\"} 7",
        "tq_store_commit_seconds_bucket{le=\"0.01\"} 9",
        "tq_store_commit_seconds_bucket{le=\"+Inf\"} 10",
        "tq_store_commit_seconds_sum 0.012345",
        "tq_store_commit_seconds_count 10",
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        if (!s_has_line(out.data, expected[i]))
            print_error("missing line: %s\n%s\n", expected[i], out.data);
        assert_true(s_has_line(out.data, expected[i]));
    }
    assert_null(strstr(out.data, "Bad-Name"));
    tq_http_text_free(&out);

    /* a broker without the store keys: no histogram, no rate yet */
    s_render(false, -1, &out);
    assert_true(s_has_line(out.data, "tq_queue_done{queue=\"default\"} 7"));
    assert_null(strstr(out.data, "tq_store_commit"));
    assert_null(strstr(out.data, "tq_broker_tasks_per_second"));
    tq_http_text_free(&out);

    msgpack_object nil = {.type = MSGPACK_OBJECT_NIL};
    assert_int_equal(tq_http_metrics_render(&nil, 0, &out), -1);
    tq_http_text_free(&out);
}

static void
test_sample_rate(void **state)
{
    (void)state;
    tq_http_sample_t a = {1000, 10, 2}, b = {3000, 30, 4};
    assert_true(tq_http_sample_rate(&a, &b) == 11.0); /* 22 in 2 s */
    tq_http_sample_t restarted = {4000, 1, 0};
    assert_true(tq_http_sample_rate(&b, &restarted) == 0.0);
    assert_true(tq_http_sample_rate(&b, &b) == 0.0);
}

static void
test_json_of_msgpack(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    s_pack_str(&pk, "text");
    const char bad[] = "q\"\\\n\x01\xff\xc3\xa9"; /* é valid, 0xff not */
    msgpack_pack_str(&pk, sizeof bad - 1);
    msgpack_pack_str_body(&pk, bad, sizeof bad - 1);
    s_pack_str(&pk, "list");
    msgpack_pack_array(&pk, 4);
    msgpack_pack_int64(&pk, -5);
    msgpack_pack_nil(&pk);
    msgpack_pack_true(&pk);
    msgpack_pack_bin(&pk, 2);
    msgpack_pack_bin_body(&pk, "\x01\xab", 2);
    msgpack_pack_uint64(&pk, 7); /* a key that is not a string */
    msgpack_pack_double(&pk, 0.5);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, buf.data, buf.size, &off),
                     MSGPACK_UNPACK_SUCCESS);
    tq_http_text_t out = {0};
    tq_http_json_write(&out, &up.data);
    assert_string_equal(out.data,
                        "{\"text\":\"q\\\"\\\\\\u000a\\u0001\\ufffd\xc3\xa9\","
                        "\"list\":[-5,null,true,\"01ab\"],\"7\":0.5}");
    tq_http_text_free(&out);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&buf);
}

static void
test_codec_tasks_and_inspect(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in, out;
    const char *why = NULL;

    memset(&in, 0, sizeof in);
    in.command = TQ_CMD_TASKS;
    in.id = tq_str("req-1");
    in.queue = tq_str("reports");
    in.states = TQ_STATE_BIT(TQ_STATE_RUNNING) | TQ_STATE_BIT(TQ_STATE_RETRY);
    in.limit = 25;
    assert_int_equal(tq_proto_encode(&in, &buf, &why), TQ_OK);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, &why), TQ_OK);
    assert_int_equal(out.command, TQ_CMD_TASKS);
    assert_string_equal(tq_proto_command_name(TQ_CMD_TASKS), "TASKS");
    assert_true(tq_str_eq(out.id, "req-1"));
    assert_true(tq_str_eq(out.queue, "reports"));
    assert_int_equal(out.states, in.states);
    assert_int_equal(out.limit, 25);
    assert_false(tq_proto_has_payload(TQ_CMD_TASKS));

    in.queue = tq_str(NULL); /* every queue: nil on the wire */
    in.states = 0;
    assert_int_equal(tq_proto_encode(&in, &buf, &why), TQ_OK);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, &why), TQ_OK);
    assert_null(out.queue.ptr);
    assert_int_equal(out.states, 0);

    in.limit = 0;
    assert_int_equal(tq_proto_encode(&in, &buf, &why), TQ_EINVAL);
    in.limit = TQ_PROTO_MAX_LIMIT + 1;
    assert_int_equal(tq_proto_encode(&in, &buf, &why), TQ_EINVAL);
    in.limit = 1;
    in.states = 1u << TQ_STATE_COUNT_;
    assert_int_equal(tq_proto_encode(&in, &buf, &why), TQ_EINVAL);

    /* a peer that sends a limit out of range is refused on decode */
    msgpack_packer pk;
    msgpack_sbuffer_clear(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 6);
    msgpack_pack_uint8(&pk, TQ_PROTO_VERSION);
    msgpack_pack_uint8(&pk, TQ_CMD_TASKS);
    s_pack_str(&pk, "req-2");
    msgpack_pack_nil(&pk);
    msgpack_pack_uint32(&pk, 0);
    msgpack_pack_uint32(&pk, TQ_PROTO_MAX_LIMIT + 1);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, &why),
                     TQ_EPROTO);
    assert_string_equal(why, "limit out of range");

    memset(&in, 0, sizeof in);
    in.command = TQ_CMD_INSPECT;
    in.id = tq_str("0123456789abcdef");
    assert_int_equal(tq_proto_encode(&in, &buf, &why), TQ_OK);
    assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, &why), TQ_OK);
    assert_int_equal(out.command, TQ_CMD_INSPECT);
    assert_true(tq_str_eq(out.id, "0123456789abcdef"));
    in.id = tq_str("not valid!");
    assert_int_equal(tq_proto_encode(&in, &buf, &why), TQ_EINVAL);
    msgpack_sbuffer_destroy(&buf);
}

/* ---- e2e: /metrics, writes, the browser --------------------------------- */

static void
test_metrics_live(void **state)
{
    tq_harness_env_t *env = *state;
    int port;
    s_start(env, &port, false);
    s_make_tasks(env, 5, 2, NULL, 0);
    char *body = NULL;
    assert_int_equal(s_http(port, "GET", "/metrics", NULL, &body), 200);
    assert_non_null(body);
    printf("%.1500s\n", body);
    assert_true(s_has_line(body, "tq_broker_up 1"));
    assert_true(s_has_line(body, "tq_queue_done{queue=\"default\"} 5"));
    assert_true(s_has_line(body, "tq_queue_failed{queue=\"default\"} 2"));
    assert_true(s_has_line(body, "tq_queue_waiting{queue=\"default\"} 0"));
    assert_true(s_has_line(body, "tq_broker_completed_total 5"));
    assert_true(s_has_line(body, "tq_broker_failed_total 2"));
    assert_true(s_has_line(body, "tq_broker_malformed_total 0"));
    assert_true(s_has_line(body, "tq_broker_dropped_total 0"));
    /* two children of one host, with the tasks they ran */
    char host[256];
    assert_int_equal(gethostname(host, sizeof host), 0);
    char line[512];
    snprintf(line, sizeof line, "tq_host_children{host=\"%s\"} 2", host);
    assert_true(s_has_line(body, line));
    snprintf(line, sizeof line, "tq_host_tasks_done{host=\"%s\"} 7", host);
    assert_true(s_has_line(body, line));
    free(body);

    /* the dashboard's JSON carries the same numbers */
    assert_int_equal(s_http(port, "GET", "/api/status", NULL, &body), 200);
    assert_non_null(strstr(body, "\"done\":5"));
    assert_non_null(strstr(body, "\"writes\":false"));
    free(body);
    /* without --http-token writes are off for everyone */
    assert_int_equal(s_http(port, "POST", "/api/purge/default", S_TOKEN, &body),
                     403);
    free(body);
    assert_int_equal(s_http(port, "GET", "/nope", NULL, &body), 404);
    free(body);
    assert_int_equal(s_http(port, "DELETE", "/metrics", NULL, &body), 405);
    free(body);
}

static void
test_retry_needs_token(void **state)
{
    tq_harness_env_t *env = *state;
    int port;
    s_start(env, &port, true);
    char id[TQ_PROTO_MAX_ID + 1];
    s_make_tasks(env, 1, 1, id, sizeof id);
    char path[128], *body = NULL;
    snprintf(path, sizeof path, "/api/retry/%s", id);

    assert_int_equal(s_http(port, "POST", path, NULL, &body), 401);
    free(body);
    assert_int_equal(s_http(port, "POST", path, "wrong-token", &body), 401);
    free(body);
    /* refused writes changed nothing: the dead letter is still there */
    tq_harness_status_t st = {0};
    assert_int_equal(tq_harness_status(env->client, &st, S_WAIT_MS), TQ_OK);
    assert_int_equal(tq_harness_counter(&st, "requeued"), 0);
    assert_int_equal(tq_harness_counter(&st, "failed"), 1);
    assert_int_equal(s_workers_done(&st), 2);
    tq_harness_status_free(&st);

    assert_int_equal(s_http(port, "POST", path, S_TOKEN, &body), 200);
    assert_non_null(strstr(body, "\"ok\":true"));
    free(body);
    /* the task ran again (a third task run by the children) and, being
       tq.fail, is a dead letter again */
    int64_t deadline = tq_harness_now_ms() + S_WAIT_MS;
    uint64_t done = 0, failed = 0, requeued = 0;
    while (tq_harness_now_ms() < deadline) {
        assert_int_equal(tq_harness_status(env->client, &st, S_WAIT_MS), TQ_OK);
        done = s_workers_done(&st);
        failed = tq_harness_counter(&st, "failed");
        requeued = tq_harness_counter(&st, "requeued");
        tq_harness_status_free(&st);
        if (done == 3 && failed == 1)
            break;
        tq_harness_sleep_ms(50);
    }
    assert_int_equal(requeued, 1);
    assert_int_equal(done, 3);
    assert_int_equal(failed, 1);
    /* the same id with the right token but not a dead letter: conflict */
    snprintf(path, sizeof path, "/api/retry/%s", "no-such-task");
    int code = s_http(port, "POST", path, S_TOKEN, &body);
    assert_true(code == 404 || code == 409);
    free(body);
    assert_int_equal(s_http(port, "POST", "/api/retry/bad!id", S_TOKEN, &body),
                     400);
    free(body);
}

/* Bad --http input: a clear error, and no broker left running. */
static void
test_http_bad_options(void **state)
{
    (void)state;
    static const struct {
        const char *flag, *value, *expect;
    } cases[] = {
        {"--http", "8080", "expected HOST:PORT"},
        {"--http", "example.org:80", "not an IPv4 address"},
        {"--http-token-file", "/nonexistent/token", "No such file"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *argv[] = {TQ_BROKER_BIN, "--no-persist",
                              "--clients",   "tcp://127.0.0.1:*",
                              "--workers",   "tcp://127.0.0.1:*",
                              "--http",      "127.0.0.1:0",
                              cases[i].flag, cases[i].value,
                              NULL};
        tq_harness_run_t run;
        assert_int_equal(
            tq_harness_run((char *const *)argv, NULL, S_RUN_MS, &run), 0);
        printf("%s %s: exit %d: %s", cases[i].flag, cases[i].value,
               run.exit_code, run.err);
        assert_int_equal(run.exit_code, 1);
        assert_non_null(strstr(run.err, cases[i].expect));
        tq_harness_run_free(&run);
    }
}

/* With CURVE on both endpoints the server still reaches the broker: its
   client is inside the broker's process, over inproc, needing no key. */
static void
test_http_with_curve(void **state)
{
    (void)state;
    char dir[256], cert[300], clients[300], workers[300], error[256];
    char key[TQ_CURVE_KEY_TEXT], secret[320];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "http-curve"), 0);
    snprintf(cert, sizeof cert, "%s/broker.cert", dir);
    snprintf(secret, sizeof secret, "%s_secret", cert);
    snprintf(clients, sizeof clients, "%s/clients", dir);
    snprintf(workers, sizeof workers, "%s/workers", dir);
    assert_int_equal(mkdir(clients, 0700), 0);
    assert_int_equal(mkdir(workers, 0700), 0);
    assert_int_equal(tq_curve_keygen(cert, "broker", key, error, sizeof error),
                     0);
    char ep[TQ_HARNESS_EP_MAX], address[64];
    assert_int_equal(tq_harness_free_endpoint(ep, sizeof ep), 0);
    int port = atoi(strrchr(ep, ':') + 1);
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    const char *extra[] = {
        "--no-persist",  "--curve-secret", secret,   "--client-keys", clients,
        "--worker-keys", workers,          "--http", address,         NULL};
    tq_harness_broker_t broker;
    assert_int_equal(tq_harness_broker_start(&broker, extra), 0);
    char *body = NULL;
    assert_int_equal(s_http(port, "GET", "/api/status", NULL, &body), 200);
    assert_non_null(strstr(body, "\"auth\":{"));
    free(body);
    assert_int_equal(s_http(port, "GET", "/metrics", NULL, &body), 200);
    assert_true(s_has_line(body, "tq_broker_up 1"));
    free(body);
    assert_int_equal(tq_harness_broker_stop(&broker), 0);
    tq_harness_rmtree(dir);
}

/* Runs headless Chromium on url with extra flags (NULL-terminated) and
   returns what it printed (the DOM with --dump-dom), malloc'd. */
static char *
s_chromium(const char *url, const char *const extra[])
{
    char profile[256];
    assert_int_equal(tq_harness_tempdir(profile, sizeof profile, "chromium"),
                     0);
    char dir_arg[300];
    snprintf(dir_arg, sizeof dir_arg, "--user-data-dir=%s", profile);
    const char *argv[32] = {S_CHROMIUM,
                            "--headless",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-quic",
                            "--no-first-run",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            dir_arg,
                            "--virtual-time-budget=5000"};
    size_t argc = 11;
    for (size_t i = 0; extra[i] && argc < 30; i++)
        argv[argc++] = extra[i];
    argv[argc++] = url;
    argv[argc] = NULL;
    tq_harness_run_t run;
    assert_int_equal(tq_harness_run((char *const *)argv, NULL, S_RUN_MS, &run),
                     0);
    if (run.exit_code != 0)
        print_error("chromium exited %d: %.2000s\n", run.exit_code, run.err);
    assert_int_equal(run.exit_code, 0);
    char *out = run.out;
    run.out = NULL;
    tq_harness_run_free(&run);
    tq_harness_rmtree(profile);
    return out;
}

static void
test_dashboard_in_chromium(void **state)
{
    tq_harness_env_t *env = *state;
    if (access(S_CHROMIUM, X_OK) != 0)
        fail_msg("%s missing: scripts/deps.sh installs it", S_CHROMIUM);
    int port;
    s_start(env, &port, true);
    char id[TQ_PROTO_MAX_ID + 1];
    s_make_tasks(env, 3, 1, id, sizeof id);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/#task=%s", port, id);

    /* the page polls: a loaded machine may need a second look before the
       first answer is in the DOM (each run is bounded) */
    char *dom = NULL;
    for (int i = 0; i < 3; i++) {
        free(dom);
        const char *dump[] = {"--dump-dom", NULL};
        dom = s_chromium(url, dump);
        if (strstr(dom, "data-ready=\"1\"") && strstr(dom, "id=\"task-state\""))
            break;
    }
    assert_non_null(strstr(dom, "data-ready=\"1\""));
    const char *expected[] = {
        "id=\"q-default-done\">3<",
        "id=\"q-default-failed\">1<",
        "id=\"t-done\">3<",
        "id=\"t-failed\">1<",
        "id=\"t-children\">2<",
        "boom-from-test", /* the failed task's error */
        "id=\"task-state\">FAILURE<", /* the task looked up by id */
        "class=\"retry\"", /* its retry button */
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        if (!strstr(dom, expected[i]))
            print_error("missing in the DOM: %s\n%.4000s\n", expected[i], dom);
        assert_non_null(strstr(dom, expected[i]));
    }
    char row[128];
    snprintf(row, sizeof row, "data-id=\"%s\"", id);
    assert_non_null(strstr(dom, row));
    free(dom);

    /* the screenshot, for people */
    char shot[600], shot_arg[640];
    snprintf(shot, sizeof shot, "%s/dashboard.png", TQ_BUILD_DIR);
    unlink(shot);
    snprintf(shot_arg, sizeof shot_arg, "--screenshot=%s", shot);
    const char *png[] = {shot_arg, "--window-size=1280,900", NULL};
    free(s_chromium(url, png));
    struct stat st;
    assert_int_equal(stat(shot, &st), 0);
    assert_true(st.st_size > 10000);
    FILE *f = fopen(shot, "rb");
    assert_non_null(f);
    unsigned char magic[8] = {0};
    assert_int_equal(fread(magic, 1, 8, f), 8);
    fclose(f);
    assert_memory_equal(magic, "\x89PNG\r\n\x1a\n", 8);
    printf("screenshot: %s (%lld bytes)\n", shot, (long long)st.st_size);
}

/* ---- tq tasks / tq inspect against a fake broker ------------------------ */

/* A broker in a thread that answers TASKS and INSPECT (modern) or ERROR
   without an id for them (an older broker), and GET and STATUS either
   way. It records the TASKS it was sent. */
typedef struct {
    void *ctx;
    void *router;
    char endpoint[TQ_HARNESS_EP_MAX];
    bool modern;
    volatile bool stop;
    pthread_t thread;
    int tasks_seen;
    char tasks_queue[64];
    uint32_t tasks_states;
    uint32_t tasks_limit;
} s_fake_t;

#define S_FAKE_ID "0123456789abcdef0123456789abcdef"

static void
s_fake_send(s_fake_t *self, zmq_msg_t *identity, tq_msg_t *m,
            msgpack_sbuffer *body)
{
    msgpack_sbuffer hdr;
    msgpack_sbuffer_init(&hdr);
    zmq_msg_t payload;
    if (body) {
        zmq_msg_init_size(&payload, body->size);
        memcpy(zmq_msg_data(&payload), body->data, body->size);
    }
    tq_wire_send_msg(self->router, identity, m, &hdr, body ? &payload : NULL,
                     0);
    if (body)
        zmq_msg_close(&payload);
    msgpack_sbuffer_destroy(&hdr);
}

static void
s_fake_answer(s_fake_t *self, tq_frames_t *f, const tq_msg_t *in)
{
    static tq_msg_t m;
    memset(&m, 0, sizeof m);
    msgpack_sbuffer body;
    msgpack_sbuffer_init(&body);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &body, msgpack_sbuffer_write);
    bool new_cmd = in->command == TQ_CMD_TASKS || in->command == TQ_CMD_INSPECT;
    if (new_cmd && !self->modern) {
        /* as a broker whose codec predates them: no id to echo */
        m.command = TQ_CMD_ERROR;
        m.code = TQ_EPROTO;
        m.error = tq_str("unknown command");
        s_fake_send(self, &f->identity, &m, NULL);
    } else if (in->command == TQ_CMD_TASKS) {
        self->tasks_seen++;
        tq_str_copy(self->tasks_queue, sizeof self->tasks_queue, in->queue);
        self->tasks_states = in->states;
        self->tasks_limit = in->limit;
        msgpack_pack_map(&pk, 2);
        s_pack_str(&pk, "tasks");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 10);
        s_pack_str(&pk, "id");
        s_pack_str(&pk, S_FAKE_ID);
        s_pack_str(&pk, "task");
        s_pack_str(&pk, "math.add");
        s_pack_str(&pk, "queue");
        s_pack_str(&pk, "default");
        s_pack_kv(&pk, "state", TQ_STATE_RUNNING);
        s_pack_kv(&pk, "attempt", 2);
        s_pack_kv(&pk, "age_ms", 65000);
        s_pack_str(&pk, "host");
        s_pack_str(&pk, "node-7");
        s_pack_kv(&pk, "pid", 4242);
        s_pack_str(&pk, "args");
        msgpack_pack_array(&pk, 2);
        s_pack_str(&pk, "a-long-argument-that-the-list-cuts-short-xyz");
        msgpack_pack_uint8(&pk, 99);
        s_pack_kv(&pk, "args_bytes", 49);
        s_pack_kv(&pk, "total", 3);
        m.command = TQ_CMD_REPLY;
        m.id = in->id;
        s_fake_send(self, &f->identity, &m, &body);
    } else if (in->command == TQ_CMD_INSPECT) {
        msgpack_pack_map(&pk, 11);
        s_pack_str(&pk, "id");
        s_pack_str(&pk, S_FAKE_ID);
        s_pack_str(&pk, "task");
        s_pack_str(&pk, "math.add");
        s_pack_str(&pk, "queue");
        s_pack_str(&pk, "default");
        s_pack_kv(&pk, "state", TQ_STATE_FAILURE);
        s_pack_kv(&pk, "attempt", 2);
        s_pack_kv(&pk, "code", TQ_ETASK);
        s_pack_str(&pk, "error");
        s_pack_str(&pk, "division by zero");
        s_pack_str(&pk, "args");
        msgpack_pack_array(&pk, 2);
        msgpack_pack_uint8(&pk, 1);
        msgpack_pack_uint8(&pk, 0);
        s_pack_str(&pk, "host");
        s_pack_str(&pk, "node-7");
        s_pack_kv(&pk, "pid", 4242);
        s_pack_kv(&pk, "submitted_ms", 1764600000000ull); /* 2025-12-01 */
        m.command = TQ_CMD_REPLY;
        m.id = in->id;
        s_fake_send(self, &f->identity, &m, &body);
    } else if (in->command == TQ_CMD_GET) {
        m.command = TQ_CMD_RESULT;
        m.id = in->id;
        m.state = TQ_STATE_FAILURE;
        m.code = TQ_ETASK;
        m.error = tq_str("division by zero");
        m.attempt = 2;
        zmq_msg_t payload;
        zmq_msg_init(&payload);
        msgpack_sbuffer hdr;
        msgpack_sbuffer_init(&hdr);
        tq_wire_send_msg(self->router, &f->identity, &m, &hdr, &payload, 0);
        msgpack_sbuffer_destroy(&hdr);
        zmq_msg_close(&payload);
    } else if (in->command == TQ_CMD_STATUS) {
        msgpack_pack_map(&pk, 1);
        s_pack_str(&pk, "queues");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 4);
        s_pack_str(&pk, "name");
        s_pack_str(&pk, "default");
        s_pack_kv(&pk, "waiting", 17);
        s_pack_kv(&pk, "running", 2);
        s_pack_kv(&pk, "delayed", 1);
        m.command = TQ_CMD_STATUS_REPLY;
        s_fake_send(self, &f->identity, &m, &body);
    } else if (in->command == TQ_CMD_PING) {
        m.command = TQ_CMD_PONG;
        s_fake_send(self, &f->identity, &m, NULL);
    }
    msgpack_sbuffer_destroy(&body);
}

static void *
s_fake_run(void *arg)
{
    s_fake_t *self = arg;
    tq_frames_t f;
    tq_frames_init(&f);
    static tq_msg_t in;
    while (!self->stop) {
        zmq_pollitem_t item = {self->router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 50) <= 0)
            continue;
        if (tq_wire_recv(self->router, &f, true, ZMQ_DONTWAIT) != TQ_OK)
            continue;
        if (tq_wire_decode(&f, &in, NULL) == TQ_OK)
            s_fake_answer(self, &f, &in);
        else if (!self->modern) {
            static tq_msg_t err;
            err.command = TQ_CMD_ERROR;
            err.code = TQ_EPROTO;
            err.error = tq_str("unknown command");
            s_fake_send(self, &f.identity, &err, NULL);
        }
    }
    tq_frames_close(&f);
    return NULL;
}

static void
s_fake_start(s_fake_t *self, bool modern)
{
    memset(self, 0, sizeof *self);
    self->modern = modern;
    self->ctx = zmq_ctx_new();
    self->router =
        tq_harness_router(self->ctx, self->endpoint, sizeof self->endpoint, 0);
    assert_non_null(self->router);
    assert_int_equal(pthread_create(&self->thread, NULL, s_fake_run, self), 0);
}

static void
s_fake_stop(s_fake_t *self)
{
    self->stop = true;
    pthread_join(self->thread, NULL);
    zmq_close(self->router);
    zmq_ctx_term(self->ctx);
}

static void
s_tq(tq_harness_run_t *run, const char *broker, const char *const args[])
{
    const char *argv[16] = {TQ_CLI_BIN};
    size_t argc = 1;
    for (size_t i = 0; args[i] && argc < 15; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    assert_int_equal(tq_harness_run((char *const *)argv, broker, S_RUN_MS, run),
                     0);
    printf("tq %s: exit %d\n%s%s", args[0], run->exit_code, run->out, run->err);
}

static void
test_cli_tasks_and_inspect(void **state)
{
    (void)state;
    s_fake_t fake;
    s_fake_start(&fake, true);
    tq_harness_run_t run;
    const char *tasks[] = {"tasks",         "--queue", "default", "--state",
                           "running,retry", "--limit", "2",       NULL};
    s_tq(&run, fake.endpoint, tasks);
    assert_int_equal(run.exit_code, 0);
    /* what the CLI asked for reached the broker */
    assert_int_equal(fake.tasks_seen, 1);
    assert_string_equal(fake.tasks_queue, "default");
    assert_int_equal(fake.tasks_states,
                     TQ_STATE_BIT(TQ_STATE_RUNNING) |
                         TQ_STATE_BIT(TQ_STATE_RETRY));
    assert_int_equal(fake.tasks_limit, 2);
    assert_non_null(strstr(run.out, S_FAKE_ID));
    assert_non_null(strstr(run.out, "RUNNING"));
    assert_non_null(strstr(run.out, "1m05s"));
    assert_non_null(strstr(run.out, "node-7:4242"));
    /* arguments cut to the column, the rest of the list announced */
    assert_non_null(
        strstr(run.out, "[\"a-long-argument-that-the-list-cuts-..."));
    assert_null(strstr(run.out, "xyz"));
    assert_non_null(strstr(run.out, "(1 of 3 shown"));
    tq_harness_run_free(&run);

    const char *bad[] = {"tasks", "--state", "sleeping", NULL};
    s_tq(&run, fake.endpoint, bad);
    assert_int_equal(run.exit_code, 2);
    tq_harness_run_free(&run);

    const char *inspect[] = {"inspect", S_FAKE_ID, NULL};
    s_tq(&run, fake.endpoint, inspect);
    assert_int_equal(run.exit_code, 0);
    assert_non_null(strstr(run.out, "FAILURE"));
    assert_non_null(strstr(run.out, "TQ_ETASK: division by zero"));
    assert_non_null(strstr(run.out, "[1,0]"));
    assert_non_null(strstr(run.out, "node-7:4242"));
    assert_non_null(strstr(run.out, "2025-12-01"));
    tq_harness_run_free(&run);

    const char *json[] = {"inspect", S_FAKE_ID, "--json", NULL};
    s_tq(&run, fake.endpoint, json);
    assert_int_equal(run.exit_code, 0);
    assert_non_null(strstr(run.out, "\"args\":[1,0]"));
    tq_harness_run_free(&run);
    s_fake_stop(&fake);
}

static void
test_cli_fallback_on_older_broker(void **state)
{
    (void)state;
    s_fake_t fake;
    s_fake_start(&fake, false);
    tq_harness_run_t run;
    const char *inspect[] = {"inspect", S_FAKE_ID, NULL};
    s_tq(&run, fake.endpoint, inspect);
    assert_int_equal(run.exit_code, 0);
    assert_non_null(strstr(run.err, "cannot inspect"));
    /* GET's answer: state and error, nothing GET does not carry */
    assert_non_null(strstr(run.out, "FAILURE"));
    assert_non_null(strstr(run.out, "division by zero"));
    assert_null(strstr(run.out, "node-7"));
    tq_harness_run_free(&run);

    const char *json[] = {"inspect", S_FAKE_ID, "--json", NULL};
    s_tq(&run, fake.endpoint, json);
    assert_int_equal(run.exit_code, 0);
    assert_non_null(strstr(run.out, "\"fallback\":\"GET\""));
    tq_harness_run_free(&run);

    const char *tasks[] = {"tasks", NULL};
    s_tq(&run, fake.endpoint, tasks);
    assert_int_equal(run.exit_code, 0);
    assert_non_null(strstr(run.err, "cannot list tasks"));
    assert_non_null(strstr(run.out, "default"));
    assert_non_null(strstr(run.out, "17"));
    tq_harness_run_free(&run);
    assert_int_equal(fake.tasks_seen, 0);
    s_fake_stop(&fake);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_synthetic_status),
        cmocka_unit_test(test_sample_rate),
        cmocka_unit_test(test_json_of_msgpack),
        cmocka_unit_test(test_codec_tasks_and_inspect),
        cmocka_unit_test(test_cli_tasks_and_inspect),
        cmocka_unit_test(test_cli_fallback_on_older_broker),
        cmocka_unit_test_setup_teardown(test_metrics_live, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_retry_needs_token,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test(test_http_with_curve),
        cmocka_unit_test(test_http_bad_options),
        cmocka_unit_test_setup_teardown(test_dashboard_in_chromium,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
    };
    tq_harness_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
