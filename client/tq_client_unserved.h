/* tq_client_unserved.h - whether any connected worker provides a task:
   the check behind "no connected worker provides tq.x" (tq submit --wait,
   and meant for tq_result_get's timeout text). Private for now. */
#ifndef TQ_CLIENT_UNSERVED_H
#define TQ_CLIENT_UNSERVED_H

#include <stdbool.h>
#include <stddef.h>

#include "tq/tq_client.h"

/* Asks the broker's STATUS (waiting up to timeout_ms) whether a connected
   worker lists task among its tasks and serves queue (NULL: "default";
   a worker that lists no queues serves all). Returns 1 yes, 0 no (a task
   submitted now waits for such a worker), -1 no usable answer. */
int tq_client_provided(tq_client_t *self, const char *task, const char *queue,
                       int timeout_ms);

/* Decides the same from a STATUS body already fetched (size bytes of
   msgpack): 1, 0, or -1 if the body is not a STATUS map. */
int tq_client_provided_in(const void *status, size_t size, const char *task,
                          const char *queue);

#endif
