/* tq_broker.h - the broker as an object: two ROUTER sockets, the queues,
   dispatch, results and their TTL, in one single-threaded loop. Private to
   tq (tq-broker's main and the embedded pool use it). */
#ifndef TQ_BROKER_H
#define TQ_BROKER_H

#include <stdbool.h>
#include <stddef.h>

/* Defaults. */
#define TQ_BROKER_CLIENTS "tcp://*:5555"
#define TQ_BROKER_WORKERS "tcp://*:5556"
#define TQ_BROKER_RESULT_TTL_S 3600
#define TQ_BROKER_MAX_LOST 3 /* worker deaths a task may cause */

typedef struct {
    const char *client_endpoint; /* NULL: TQ_BROKER_CLIENTS */
    const char *worker_endpoint; /* NULL: TQ_BROKER_WORKERS */
    int result_ttl_s;            /* < 0: default; 0: forget once sent */
    int max_lost;                /* 0: TQ_BROKER_MAX_LOST */
    bool verbose;                /* log every exchange to stderr */
} tq_broker_config_t;

typedef struct tq_broker_t tq_broker_t;

/* Binds both endpoints. NULL on failure, with a message in error (errlen
   bytes) that names the endpoint. config is borrowed. */
tq_broker_t *tq_broker_new(const tq_broker_config_t *config, char *error,
                           size_t errlen);

/* The endpoints as bound (ports resolved), borrowed. */
const char *tq_broker_client_endpoint(const tq_broker_t *self);
const char *tq_broker_worker_endpoint(const tq_broker_t *self);

/* Runs the loop until tq_broker_stop. Returns TQ_OK or TQ_ESYS. */
int tq_broker_run(tq_broker_t *self);

/* Asks the loop to return; async-signal-safe, callable from any thread. */
void tq_broker_stop(tq_broker_t *self);

/* Closes the sockets and frees everything; NULL-safe, nulls *self_p. */
void tq_broker_destroy(tq_broker_t **self_p);

#endif
