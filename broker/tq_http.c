/* tq_http.c - tq-broker's HTTP server: libmicrohttpd in its own thread,
   routing GET /metrics, the dashboard's files and its JSON endpoints, and
   the token-guarded writes, each through the client library (or the
   TASKS/INSPECT helper) to the broker over inproc. A sampler thread reads
   STATUS once a second for tasks/s and the throughput chart.

   The broker never sees a thread of ours: everything crosses one inproc
   socket pair, so its loop stays single-threaded and lock-free. */
#include "tq_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tq/tq_client.h"
#include "tq_client_internal.h"
#include "tq_http_json.h"
#include "tq_http_metrics.h"
#include "tq_inspect.h"
#include "tq_proto.h"

#ifdef TQ_HAVE_MHD
#include <microhttpd.h>

#include "tq_http_assets.h"
#endif

/* How long one request waits for the broker, ms. */
#define S_BROKER_MS 2000
/* Longest token accepted. */
#define S_TOKEN_MAX 256

static char s_inproc[64];

int
tq_http_prepare(tq_broker_config_t *config)
{
    void *ctx = tq_client_context();
    if (!ctx)
        return -1;
    /* unique per process and call: a closed socket's inproc name may
       linger a moment */
    static atomic_uint s_count;
    snprintf(s_inproc, sizeof s_inproc, "inproc://tq-http-%ld-%u",
             (long)getpid(), atomic_fetch_add(&s_count, 1));
    config->context = ctx;
    config->client_inproc = s_inproc;
    return 0;
}

#ifndef TQ_HAVE_MHD

bool
tq_http_available(void)
{
    return false;
}

tq_http_t *
tq_http_new(const tq_http_config_t *config, char *error, size_t errlen)
{
    (void)config;
    snprintf(error, errlen,
             "--http: this tq-broker was built without "
             "libmicrohttpd (install libmicrohttpd-dev and "
             "build again)");
    return NULL;
}

const char *
tq_http_url(const tq_http_t *self)
{
    (void)self;
    return "";
}

void
tq_http_destroy(tq_http_t **self_p)
{
    if (self_p)
        *self_p = NULL;
}

#else

struct tq_http_t {
    struct MHD_Daemon *daemon;
    tq_client_t *client;
    char *broker; /* endpoint for TASKS and INSPECT */
    char token[S_TOKEN_MAX]; /* "" : writes refused */
    char url[96];
    pthread_t sampler;
    bool sampler_running;
    pthread_mutex_t lock; /* guards what follows */
    pthread_cond_t wake;
    bool stopping;
    tq_http_sample_t samples[TQ_HTTP_SAMPLES]; /* ring, oldest at first */
    size_t first;
    size_t count;
};

bool
tq_http_available(void)
{
    return true;
}

static int64_t
s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- STATUS samples ---------------------------------------------------- */

/* The decoded STATUS body; TQ_OK or the client's error. */
static int
s_status(tq_http_t *self, tq_buf_t *buf, msgpack_unpacked *up)
{
    msgpack_unpacked_init(up);
    int rc = tq_client_status(self->client, buf, S_BROKER_MS);
    if (rc != TQ_OK)
        return rc;
    size_t off = 0;
    if (msgpack_unpack_next(up, buf->data, buf->size, &off) !=
            MSGPACK_UNPACK_SUCCESS ||
        up->data.type != MSGPACK_OBJECT_MAP) {
        tq_buf_free(buf);
        return TQ_EPROTO;
    }
    return TQ_OK;
}

static void
s_add_sample(tq_http_t *self, const msgpack_object *status)
{
    tq_http_sample_t sample;
    if (!tq_http_sample_read(status, s_wall_ms(), &sample))
        return;
    pthread_mutex_lock(&self->lock);
    if (self->count == TQ_HTTP_SAMPLES) {
        self->first = (self->first + 1) % TQ_HTTP_SAMPLES;
        self->count--;
    }
    self->samples[(self->first + self->count) % TQ_HTTP_SAMPLES] = sample;
    self->count++;
    pthread_mutex_unlock(&self->lock);
}

/* Tasks/s between the last two samples; -1 before there are two. */
static double
s_rate(tq_http_t *self)
{
    double rate = -1;
    pthread_mutex_lock(&self->lock);
    if (self->count >= 2)
        rate = tq_http_sample_rate(
            &self->samples[(self->first + self->count - 2) % TQ_HTTP_SAMPLES],
            &self->samples[(self->first + self->count - 1) % TQ_HTTP_SAMPLES]);
    pthread_mutex_unlock(&self->lock);
    return rate;
}

static void *
s_sampler(void *arg)
{
    tq_http_t *self = arg;
    pthread_mutex_lock(&self->lock);
    while (!self->stopping) {
        pthread_mutex_unlock(&self->lock);
        tq_buf_t buf = {0};
        msgpack_unpacked up;
        if (s_status(self, &buf, &up) == TQ_OK) {
            s_add_sample(self, &up.data);
            tq_buf_free(&buf);
        }
        msgpack_unpacked_destroy(&up);
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += TQ_HTTP_SAMPLE_MS / 1000;
        until.tv_nsec += (long)(TQ_HTTP_SAMPLE_MS % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_mutex_lock(&self->lock);
        while (!self->stopping &&
               pthread_cond_timedwait(&self->wake, &self->lock, &until) == 0)
            ;
    }
    pthread_mutex_unlock(&self->lock);
    return NULL;
}

/* ---- responses --------------------------------------------------------- */

static enum MHD_Result
s_send(struct MHD_Connection *conn, unsigned status, const char *type,
       tq_http_text_t *text)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        text->len, text->data ? text->data : (void *)"",
        text->data ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    memset(text, 0, sizeof *text); /* the response owns the bytes now */
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

/* {"error": text, "code": NAME} with an HTTP status. */
static enum MHD_Result
s_error(struct MHD_Connection *conn, unsigned status, int code,
        const char *text)
{
    tq_http_text_t out = {0};
    tq_http_text_append(&out, "{\"error\":", 9);
    tq_http_json_string(&out, text, strlen(text));
    tq_http_text_printf(&out, ",\"code\":%d}", code);
    return s_send(conn, status, "application/json", &out);
}

/* The HTTP status for a client library error. */
static unsigned
s_http_status(int code)
{
    switch (code) {
    case TQ_OK:
        return MHD_HTTP_OK;
    case TQ_EUNKNOWN:
        return MHD_HTTP_NOT_FOUND;
    case TQ_ESTATE:
        return MHD_HTTP_CONFLICT;
    case TQ_EINVAL:
        return MHD_HTTP_BAD_REQUEST;
    case TQ_ETIMEDOUT:
    case TQ_EUNREACHABLE:
        return MHD_HTTP_GATEWAY_TIMEOUT;
    default:
        return MHD_HTTP_BAD_GATEWAY;
    }
}

static enum MHD_Result
s_client_error(struct MHD_Connection *conn, int code, const char *detail)
{
    char text[TQ_PROTO_MAX_ERROR + 128];
    snprintf(text, sizeof text, "%s%s%s", tq_strerror(code),
             detail && *detail ? ": " : "", detail ? detail : "");
    return s_error(conn, s_http_status(code), code, text);
}

/* ---- GET handlers ------------------------------------------------------ */

static enum MHD_Result
s_get_metrics(tq_http_t *self, struct MHD_Connection *conn)
{
    tq_buf_t buf = {0};
    msgpack_unpacked up;
    int rc = s_status(self, &buf, &up);
    if (rc != TQ_OK) {
        msgpack_unpacked_destroy(&up);
        /* still a scrape Prometheus can read: the broker is down */
        tq_http_text_t out = {0};
        tq_http_text_printf(&out,
                            "# HELP tq_broker_up 1 while the broker "
                            "answers.\n# TYPE tq_broker_up gauge\n"
                            "tq_broker_up 0\n");
        return s_send(conn, MHD_HTTP_OK, "text/plain; version=0.0.4", &out);
    }
    tq_http_text_t out = {0};
    tq_http_metrics_render(&up.data, s_rate(self), &out);
    msgpack_unpacked_destroy(&up);
    tq_buf_free(&buf);
    return s_send(conn, MHD_HTTP_OK, "text/plain; version=0.0.4", &out);
}

/* {"status": STATUS, "rate": tasks/s or null, "writes": bool,
    "history": [[t_ms, tasks/s], ...]} */
static enum MHD_Result
s_get_status(tq_http_t *self, struct MHD_Connection *conn)
{
    tq_buf_t buf = {0};
    msgpack_unpacked up;
    int rc = s_status(self, &buf, &up);
    if (rc != TQ_OK) {
        msgpack_unpacked_destroy(&up);
        return s_client_error(conn, rc, "no STATUS from the broker");
    }
    tq_http_text_t out = {0};
    tq_http_text_append(&out, "{\"status\":", 10);
    tq_http_json_write(&out, &up.data);
    msgpack_unpacked_destroy(&up);
    tq_buf_free(&buf);
    double rate = s_rate(self);
    if (rate < 0)
        tq_http_text_printf(&out, ",\"rate\":null");
    else
        tq_http_text_printf(&out, ",\"rate\":%.3f", rate);
    tq_http_text_printf(&out, ",\"writes\":%s,\"sample_ms\":%d,\"history\":[",
                        self->token[0] ? "true" : "false", TQ_HTTP_SAMPLE_MS);
    pthread_mutex_lock(&self->lock);
    for (size_t i = 1; i < self->count; i++) {
        const tq_http_sample_t *a =
            &self->samples[(self->first + i - 1) % TQ_HTTP_SAMPLES];
        const tq_http_sample_t *b =
            &self->samples[(self->first + i) % TQ_HTTP_SAMPLES];
        tq_http_text_printf(&out, "%s[%lld,%.3f]", i > 1 ? "," : "",
                            (long long)b->t_ms, tq_http_sample_rate(a, b));
    }
    pthread_mutex_unlock(&self->lock);
    tq_http_text_append(&out, "]}", 2);
    return s_send(conn, MHD_HTTP_OK, "application/json", &out);
}

/* Sends a msgpack map body as JSON, wrapped as {"key": ..., extra}. */
static enum MHD_Result
s_send_body(struct MHD_Connection *conn, tq_buf_t *body, const char *key,
            const char *extra)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    enum MHD_Result rc;
    if (msgpack_unpack_next(&up, body->data, body->size, &off) !=
        MSGPACK_UNPACK_SUCCESS)
        rc = s_error(conn, MHD_HTTP_BAD_GATEWAY, TQ_EPROTO,
                     "the broker's reply is not msgpack");
    else {
        tq_http_text_t out = {0};
        if (key)
            tq_http_text_printf(&out, "{\"%s\":", key);
        tq_http_json_write(&out, &up.data);
        if (key)
            tq_http_text_printf(&out, "%s}", extra ? extra : "");
        rc = s_send(conn, MHD_HTTP_OK, "application/json", &out);
    }
    msgpack_unpacked_destroy(&up);
    tq_buf_free(body);
    return rc;
}

static enum MHD_Result
s_get_failed(tq_http_t *self, struct MHD_Connection *conn)
{
    tq_buf_t body;
    int rc = tq_client_failed(self->client, &body, S_BROKER_MS);
    if (rc != TQ_OK)
        return s_client_error(conn, rc, "no dead-letter list");
    return s_send_body(conn, &body, NULL, NULL);
}

/* A broker that cannot INSPECT: GET gives the state and the result. */
static enum MHD_Result
s_task_fallback(tq_http_t *self, struct MHD_Connection *conn, const char *id)
{
    tq_result_t *r = tq_client_fetch(self->client, id, false);
    if (!r)
        return s_error(conn, MHD_HTTP_BAD_REQUEST, TQ_EINVAL,
                       "not a valid task id");
    int code = TQ_ETIMEDOUT;
    if (tq_result_wait_answer(r, S_BROKER_MS) == TQ_OK)
        code = tq_result_ready(r) ? tq_result_code(r) : TQ_OK;
    if (code == TQ_ETIMEDOUT || code == TQ_EUNREACHABLE ||
        code == TQ_EUNKNOWN) {
        tq_result_destroy(&r);
        return s_client_error(conn, code, id);
    }
    tq_http_text_t out = {0};
    tq_http_text_append(&out, "{\"task\":{\"id\":", 14);
    tq_http_json_string(&out, id, strlen(id));
    tq_http_text_printf(&out, ",\"state\":%d,\"attempt\":%u",
                        tq_result_state(r), tq_result_attempts(r));
    if (tq_result_ready(r)) {
        tq_http_text_printf(&out, ",\"code\":%d", code);
        const char *error = tq_result_error(r);
        if (*error) {
            tq_http_text_append(&out, ",\"error\":", 9);
            tq_http_json_string(&out, error, strlen(error));
        }
        const msgpack_object *value = tq_result_value(r);
        if (value) {
            tq_http_text_append(&out, ",\"value\":", 9);
            tq_http_json_write(&out, value);
        }
    }
    tq_http_text_append(&out, "},\"source\":\"GET\"}", 17);
    tq_result_destroy(&r);
    return s_send(conn, MHD_HTTP_OK, "application/json", &out);
}

static enum MHD_Result
s_get_task(tq_http_t *self, struct MHD_Connection *conn, const char *id)
{
    if (!tq_proto_valid_id(id, strlen(id)))
        return s_error(conn, MHD_HTTP_BAD_REQUEST, TQ_EINVAL,
                       "not a valid task id");
    tq_buf_t body;
    char detail[TQ_PROTO_MAX_ERROR + 1];
    int rc = tq_inspect_task(self->broker, id, &body, S_BROKER_MS, detail,
                             sizeof detail);
    if (tq_inspect_unsupported(rc))
        return s_task_fallback(self, conn, id);
    if (rc != TQ_OK)
        return s_client_error(conn, rc, detail);
    return s_send_body(conn, &body, "task", ",\"source\":\"INSPECT\"");
}

static enum MHD_Result
s_get_tasks(tq_http_t *self, struct MHD_Connection *conn)
{
    tq_inspect_filter_t filter = {0};
    filter.queue =
        MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "queue");
    if (filter.queue && !*filter.queue)
        filter.queue = NULL;
    const char *limit =
        MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");
    if (limit) {
        char *end = NULL;
        long n = strtol(limit, &end, 10);
        if (!*limit || *end || n < 1 || n > TQ_PROTO_MAX_LIMIT)
            return s_error(conn, MHD_HTTP_BAD_REQUEST, TQ_EINVAL,
                           "limit: 1..10000");
        filter.limit = (uint32_t)n;
    }
    tq_buf_t body;
    char detail[TQ_PROTO_MAX_ERROR + 1];
    int rc = tq_inspect_tasks(self->broker, &filter, &body, S_BROKER_MS, detail,
                              sizeof detail);
    if (tq_inspect_unsupported(rc))
        return s_error(conn, MHD_HTTP_NOT_IMPLEMENTED, rc,
                       "this broker cannot list tasks (no TASKS)");
    if (rc != TQ_OK)
        return s_client_error(conn, rc, detail);
    return s_send_body(conn, &body, NULL, NULL);
}

static enum MHD_Result
s_get_asset(struct MHD_Connection *conn, const char *url)
{
    if (strcmp(url, "/") == 0)
        url = "/index.html";
    for (size_t i = 0; i < tq_http_asset_count; i++) {
        const tq_http_asset_t *a = &tq_http_assets[i];
        if (strcmp(url, a->path) != 0)
            continue;
        struct MHD_Response *r = MHD_create_response_from_buffer(
            a->size, (void *)a->data, MHD_RESPMEM_PERSISTENT);
        if (!r)
            return MHD_NO;
        MHD_add_response_header(r, "Content-Type", a->type);
        MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
        /* everything the page needs comes from here: no CDN, no inline */
        MHD_add_response_header(r, "Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:");
        enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return rc;
    }
    return s_error(conn, MHD_HTTP_NOT_FOUND, TQ_EINVAL, "no such page");
}

/* ---- writes ------------------------------------------------------------ */

/* Compares in time independent of where they differ. */
static bool
s_token_ok(const tq_http_t *self, const char *header)
{
    if (!header || strncmp(header, "Bearer ", 7) != 0)
        return false;
    const char *given = header + 7;
    size_t a = strlen(given), b = strlen(self->token);
    unsigned char diff = a != b;
    for (size_t i = 0; i < b; i++)
        diff |= (unsigned char)(given[i < a ? i : 0] ^ self->token[i]);
    return diff == 0;
}

static enum MHD_Result
s_post(tq_http_t *self, struct MHD_Connection *conn, const char *url)
{
    if (!self->token[0])
        return s_error(conn, MHD_HTTP_FORBIDDEN, TQ_ESTATE,
                       "writes are off: start tq-broker with --http-token");
    if (!s_token_ok(self,
                    MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                "Authorization")))
        return s_error(conn, MHD_HTTP_UNAUTHORIZED, TQ_EINVAL,
                       "a write needs 'Authorization: Bearer TOKEN'");
    int rc;
    tq_http_text_t out = {0};
    if (strncmp(url, "/api/retry/", 11) == 0 ||
        strncmp(url, "/api/cancel/", 12) == 0) {
        bool retry = url[5] == 'r';
        const char *id = url + (retry ? 11 : 12);
        if (!tq_proto_valid_id(id, strlen(id)))
            return s_error(conn, MHD_HTTP_BAD_REQUEST, TQ_EINVAL,
                           "not a valid task id");
        rc = retry ? tq_client_retry(self->client, id, S_BROKER_MS)
                   : tq_client_cancel(self->client, id, S_BROKER_MS);
        if (rc != TQ_OK)
            return s_client_error(conn, rc, id);
        tq_http_text_printf(&out, "{\"ok\":true,\"id\":");
        tq_http_json_string(&out, id, strlen(id));
        tq_http_text_append(&out, "}", 1);
    } else if (strncmp(url, "/api/purge/", 11) == 0) {
        const char *queue = url + 11;
        if (!tq_proto_valid_name(queue, strlen(queue)))
            return s_error(conn, MHD_HTTP_BAD_REQUEST, TQ_EINVAL,
                           "not a valid queue name");
        uint64_t purged = 0;
        rc = tq_client_purge(self->client, queue, &purged, S_BROKER_MS);
        if (rc != TQ_OK)
            return s_client_error(conn, rc, queue);
        tq_http_text_printf(&out, "{\"ok\":true,\"purged\":%llu}",
                            (unsigned long long)purged);
    } else
        return s_error(conn, MHD_HTTP_NOT_FOUND, TQ_EINVAL, "no such action");
    return s_send(conn, MHD_HTTP_OK, "application/json", &out);
}

/* ---- the access handler ------------------------------------------------ */

static enum MHD_Result
s_on_request(void *cls, struct MHD_Connection *conn, const char *url,
             const char *method, const char *version, const char *upload,
             size_t *upload_size, void **state)
{
    (void)version;
    (void)upload;
    tq_http_t *self = cls;
    bool post = strcmp(method, "POST") == 0;
    if (post) {
        /* first call: headers only; then the body in pieces (ignored: the
           URL says everything); then one call to answer */
        static int s_seen;
        if (!*state) {
            *state = &s_seen;
            return MHD_YES;
        }
        if (*upload_size) {
            *upload_size = 0;
            return MHD_YES;
        }
        return s_post(self, conn, url);
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return s_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, TQ_EINVAL,
                       "GET or POST");
    if (strcmp(url, "/metrics") == 0)
        return s_get_metrics(self, conn);
    if (strcmp(url, "/api/status") == 0)
        return s_get_status(self, conn);
    if (strcmp(url, "/api/failed") == 0)
        return s_get_failed(self, conn);
    if (strcmp(url, "/api/tasks") == 0)
        return s_get_tasks(self, conn);
    if (strncmp(url, "/api/task/", 10) == 0)
        return s_get_task(self, conn, url + 10);
    if (strncmp(url, "/api/", 5) == 0)
        return s_error(conn, MHD_HTTP_NOT_FOUND, TQ_EINVAL, "no such API");
    return s_get_asset(conn, url);
}

/* ---- lifecycle --------------------------------------------------------- */

/* "HOST:PORT" (IPv4 or a name that resolves to loopback: "localhost")
   into addr. */
static int
s_parse_address(const char *text, struct sockaddr_in *addr, char *error,
                size_t errlen)
{
    const char *colon = text ? strrchr(text, ':') : NULL;
    char host[64];
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || (size_t)(colon - text) >= sizeof host || !colon[1] || *end ||
        port < 0 || port > 65535) {
        snprintf(error, errlen,
                 "--http %s: expected HOST:PORT, e.g. "
                 "127.0.0.1:8080",
                 text ? text : "(none)");
        return -1;
    }
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &addr->sin_addr) != 1) {
        snprintf(error, errlen, "--http %s: %s is not an IPv4 address", text,
                 host);
        return -1;
    }
    return 0;
}

static int
s_read_token(const char *path, char *token, size_t size, char *error,
             size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(error, errlen, "--http-token-file %s: %s", path,
                 strerror(errno));
        return -1;
    }
    if (!fgets(token, (int)size, f))
        token[0] = '\0';
    fclose(f);
    token[strcspn(token, "\r\n")] = '\0';
    return 0;
}

tq_http_t *
tq_http_new(const tq_http_config_t *config, char *error, size_t errlen)
{
    struct sockaddr_in addr;
    if (s_parse_address(config->address, &addr, error, errlen) != 0)
        return NULL;
    tq_http_t *self = calloc(1, sizeof *self);
    if (!self)
        abort();
    pthread_mutex_init(&self->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&self->wake, &attr);
    pthread_condattr_destroy(&attr);
    if (config->token)
        snprintf(self->token, sizeof self->token, "%s", config->token);
    else if (config->token_file &&
             s_read_token(config->token_file, self->token, sizeof self->token,
                          error, errlen) != 0) {
        tq_http_destroy(&self);
        return NULL;
    }
    if ((config->token || config->token_file) && !self->token[0]) {
        snprintf(error, errlen, "--http-token: the token is empty");
        tq_http_destroy(&self);
        return NULL;
    }
    self->broker =
        strdup(config->broker ? config->broker : TQ_DEFAULT_CLIENT_ENDPOINT);
    self->client = tq_client_new(self->broker);
    if (!self->broker || !self->client) {
        snprintf(error, errlen, "--http: no client for %s", config->broker);
        tq_http_destroy(&self);
        return NULL;
    }
    /* our threads take no signals: they stay the main thread's */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    self->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        s_on_request, self, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    int err = errno;
    if (self->daemon &&
        pthread_create(&self->sampler, NULL, s_sampler, self) == 0)
        self->sampler_running = true;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!self->daemon || !self->sampler_running) {
        snprintf(error, errlen, "--http %s: cannot listen: %s", config->address,
                 self->daemon ? "no sampler thread" : strerror(err));
        tq_http_destroy(&self);
        return NULL;
    }
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(self->daemon, MHD_DAEMON_INFO_BIND_PORT);
    char host[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &addr.sin_addr, host, sizeof host);
    snprintf(self->url, sizeof self->url, "http://%s:%u/", host,
             info ? info->port : ntohs(addr.sin_port));
    return self;
}

const char *
tq_http_url(const tq_http_t *self)
{
    return self->url;
}

void
tq_http_destroy(tq_http_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_http_t *self = *self_p;
    if (self->daemon)
        MHD_stop_daemon(self->daemon);
    if (self->sampler_running) {
        pthread_mutex_lock(&self->lock);
        self->stopping = true;
        pthread_cond_signal(&self->wake);
        pthread_mutex_unlock(&self->lock);
        pthread_join(self->sampler, NULL);
    }
    tq_client_destroy(&self->client);
    free(self->broker);
    pthread_cond_destroy(&self->wake);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

#endif
