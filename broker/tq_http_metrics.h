/* tq_http_metrics.h - the broker's STATUS body as Prometheus text (the
   /metrics page of tq-broker --http), and the samples from which tasks/s
   is computed. Pure: a decoded STATUS map in, text out. */
#ifndef TQ_HTTP_METRICS_H
#define TQ_HTTP_METRICS_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "tq_http_json.h"

/* One reading of the broker's final-task counters. */
typedef struct {
    int64_t t_ms; /* wall clock, ms since 1970 */
    uint64_t completed; /* counters.completed: tasks that succeeded */
    uint64_t failed; /* counters.failed: tasks that failed for good */
} tq_http_sample_t;

/* Reads the counters of status (a STATUS map) into sample, stamped t_ms.
   False if status carries no counters. */
bool tq_http_sample_read(const msgpack_object *status, int64_t t_ms,
                         tq_http_sample_t *sample);

/* Tasks per second that became final between two samples (older first);
   0 when no time passed or the counters went back (a restarted broker). */
double tq_http_sample_rate(const tq_http_sample_t *older,
                           const tq_http_sample_t *newer);

/* Appends status as Prometheus text exposition (version 0.0.4) to out:
   per queue, per host, the broker's counters, and the store's commit
   latency histogram when status has "store". tasks_per_s < 0 leaves that
   gauge out. Returns 0, or -1 if status is not a map. */
int tq_http_metrics_render(const msgpack_object *status, double tasks_per_s,
                           tq_http_text_t *out);

#endif
