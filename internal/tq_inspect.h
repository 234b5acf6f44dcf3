/* tq_inspect.h - looking inside a broker's queue (PROTOCOL.md 5.7): TASKS
   and INSPECT, each on a DEALER of its own, for the tq CLI and the
   broker's HTTP server. Private to tq. */
#ifndef TQ_INSPECT_H
#define TQ_INSPECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tq/tq_client.h"

/* Entries TASKS asks for when the caller names no limit. */
#define TQ_INSPECT_LIMIT 100

/* What TASKS lists. */
typedef struct {
    const char *queue; /* NULL: every queue */
    uint32_t states; /* TQ_STATE_BIT()s; 0: PENDING, RUNNING and RETRY */
    uint32_t limit; /* 0: TQ_INSPECT_LIMIT */
} tq_inspect_filter_t;

/* Asks the broker at endpoint (NULL: $TQ_BROKER, else the default; CURVE
   from the environment as tq_client_new) for the tasks that filter selects
   and waits up to timeout_ms. On TQ_OK *body gets the REPLY map {tasks,
   total} (the caller's, free with tq_buf_free). Else the broker's ERROR
   code (see tq_inspect_unsupported), TQ_EINVAL for a bad filter, or
   TQ_EUNREACHABLE; detail (errlen bytes, may be NULL) says more. */
int tq_inspect_tasks(const char *endpoint, const tq_inspect_filter_t *filter,
                     tq_buf_t *body, int timeout_ms, char *detail,
                     size_t errlen);

/* As tq_inspect_tasks, INSPECT of the task id: *body gets the task's map.
   TQ_EUNKNOWN when the broker does not hold the task. */
int tq_inspect_task(const char *endpoint, const char *id, tq_buf_t *body,
                    int timeout_ms, char *detail, size_t errlen);

/* True if code says the broker does not know the request (it predates
   TASKS and INSPECT): the caller falls back to GET and STATUS. */
bool tq_inspect_unsupported(int code);

#endif
