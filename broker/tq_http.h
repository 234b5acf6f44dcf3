/* tq_http.h - tq-broker's opt-in HTTP server (--http ADDR:PORT): /metrics
   in Prometheus text, a one-page dashboard compiled into the binary, and
   the JSON endpoints it polls. It runs libmicrohttpd in its own thread and
   talks to the broker as an ordinary client over inproc, so the broker's
   loop stays single-threaded. */
#ifndef TQ_HTTP_H
#define TQ_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "tq_broker.h"

/* How often the server samples STATUS for tasks/s and the chart, ms. */
#define TQ_HTTP_SAMPLE_MS 1000
/* Samples kept for the throughput chart (5 minutes). */
#define TQ_HTTP_SAMPLES 300

typedef struct {
    const char *address; /* "127.0.0.1:8080"; port 0: any free one */
    const char *token; /* bearer token for retry, cancel and purge;
                          NULL: from token_file, else writes are
                          refused (403) */
    const char *token_file; /* a file whose first line is the token */
    const char *broker; /* the client endpoint to talk to, normally
                           the inproc one tq_http_prepare named */
} tq_http_config_t;

typedef struct tq_http_t tq_http_t;

/* True if this build has the server (libmicrohttpd was found). */
bool tq_http_available(void);

/* Makes the broker about to be created reachable from the server: shares
   the client library's ZeroMQ context and names an inproc client endpoint
   (config->context and config->client_inproc; the name is static). Call
   before tq_broker_new. Returns 0, or -1 without a context. */
int tq_http_prepare(tq_broker_config_t *config);

/* Starts the server on config->address. NULL on failure with a message
   in error (errlen bytes). config is borrowed. */
tq_http_t *tq_http_new(const tq_http_config_t *config, char *error,
                       size_t errlen);

/* The server's base URL as bound ("http://127.0.0.1:8080/"), borrowed. */
const char *tq_http_url(const tq_http_t *self);

/* Stops the server (in-flight requests finish, each bounded by its broker
   timeout) and frees it; NULL-safe, nulls *self_p. Call before the broker
   is destroyed. */
void tq_http_destroy(tq_http_t **self_p);

#endif
