/* tq_client_internal.h - client library calls for the tq CLI and tests,
   not part of the public API. */
#ifndef TQ_CLIENT_INTERNAL_H
#define TQ_CLIENT_INTERNAL_H

#include "tq/tq_client.h"

/* Waits up to timeout_ms (-1: forever) until the broker has answered the
   handle's request at all: SUBMITTED for a submission, STATE or RESULT for
   a fetch, or the handle became final. TQ_OK or TQ_ETIMEDOUT. */
int tq_result_wait_answer(tq_result_t *self, int timeout_ms);

/* True once the broker answered (see tq_result_wait_answer). */
bool tq_result_answered(tq_result_t *self);

/* The endpoint the client connects to (borrowed). */
const char *tq_client_endpoint(tq_client_t *self);

#endif
