/* tq_broker.h - the broker as an object: two ROUTER sockets, the queues,
   dispatch, results and their TTL, in one single-threaded loop. Private to
   tq (tq-broker's main and the embedded pool use it). */
#ifndef TQ_BROKER_H
#define TQ_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Defaults. */
#define TQ_BROKER_CLIENTS "tcp://127.0.0.1:5555" /* loopback: opening
                                                    it is a decision */
#define TQ_BROKER_WORKERS "tcp://127.0.0.1:5556"
#define TQ_BROKER_RESULT_TTL_S 3600
#define TQ_BROKER_MAX_LOST 3 /* worker deaths a task may cause */
#define TQ_BROKER_CLIENT_BACKLOG 100000 /* replies queued per client */
#define TQ_BROKER_DATA_DIR "./tq-data"
/* The lease of a broker on a PostgreSQL store (PROTOCOL.md section 12). */
#define TQ_BROKER_LEASE_TTL_MS 3000 /* a lease not renewed lapses */
#define TQ_BROKER_LEASE_RENEW_MS 1000 /* the active renews this often */
#define TQ_BROKER_LEASE_RETRY_MS 500 /* a standby tries to take it */

typedef struct {
    const char *client_endpoint; /* NULL: TQ_BROKER_CLIENTS */
    const char *worker_endpoint; /* NULL: TQ_BROKER_WORKERS */
    int result_ttl_s;            /* < 0: default; 0: forget once sent */
    int max_lost;                /* 0: TQ_BROKER_MAX_LOST */
    uint32_t max_queue;          /* waiting tasks per queue, 0: no limit */
    uint64_t max_memory;         /* bytes of arguments and results held,
                                    0: no limit */
        uint32_t max_client_tasks;   /* tasks one client may have unfinished,
                                    0: no limit */
    uint32_t max_client_backlog; /* replies queued for one client before
                                    more are dropped, 0: the default */
    const char *data_dir;        /* the store's directory; NULL: memory
                                    only (--no-persist) */
    const char *store_url;       /* postgresql:// URL of a shared store,
                                    used instead of data_dir; NULL: none */
    bool new_store;              /* --new-store: start an empty store
                                    where tq.db was lost or emptied */
    int sync;                    /* tq_sync_t: TQ_SYNC_BATCH or TQ_SYNC_OS */
    uint64_t max_disk;           /* store bytes on disk before submissions
                                    are refused, 0: no limit */
    bool verbose;                /* log every exchange to stderr */
    bool quiet;                  /* no warnings either (an embedded pool
                                    whose program asked for silence) */
    const char *curve_secret;    /* broker certificate file: CURVE on both
                                    endpoints; NULL: plain TCP */
    const char *client_keys;     /* dir of client public certs (CURVE) */
    const char *worker_keys;     /* dir of worker public certs (CURVE) */
    const char *admin_keys;      /* dir of operator public certs (CURVE,
                                    optional): PURGE and STATUS details,
                                    every tenant's tasks */
    int64_t max_message;         /* ZMQ_MAXMSGSIZE bytes, 0: 64 MiB */
    void *context;               /* ZeroMQ context (borrowed, outlives the
                                    broker); NULL: the broker's own. Not
                                    with CURVE: its ZAP handler binds
                                    inproc://zeromq.zap.01 in it */
    int ack_fold_ms;             /* > 0, without a store: SUBMITTED for a
                                    new task waits this long, and a task
                                    that ends first is acknowledged by its
                                    RESULT alone (PROTOCOL.md 5.1, item
                                    2); only for a SUBMIT that opts in
                                    (features TQ_FEATURE_FOLD: tq's
                                    client library). 0: at once */
    uint32_t lease_ttl_ms; /* PostgreSQL store: the lease's length,
                              0: TQ_BROKER_LEASE_TTL_MS */
    uint32_t lease_renew_ms; /* the active renews this often (less than
                                the ttl), 0: TQ_BROKER_LEASE_RENEW_MS */
    uint32_t lease_retry_ms; /* a standby tries to take the lease this
                                often, 0: TQ_BROKER_LEASE_RETRY_MS */
    bool standby_start; /* start as a standby that waits for the
                           store rather than refuse to start when
                           it cannot be reached (after a demotion) */
    const char *client_inproc;   /* inproc:// endpoint the clients socket
                                    also binds, for a client of the same
                                    context (no I/O thread on that path);
                                    NULL: none */
} tq_broker_config_t;

typedef struct tq_broker_t tq_broker_t;

/* Binds both endpoints. NULL on failure, with a message in error (errlen
   bytes) that names the endpoint. config is borrowed. */
tq_broker_t *tq_broker_new(const tq_broker_config_t *config, char *error,
                           size_t errlen);

/* The endpoints as bound (ports resolved), borrowed. */
const char *tq_broker_client_endpoint(const tq_broker_t *self);
const char *tq_broker_worker_endpoint(const tq_broker_t *self);

/* Runs the loop until tq_broker_stop. Returns TQ_OK or TQ_ESYS; on a
   PostgreSQL store also TQ_ESTANDBY: the broker lost its lease (or its
   store) and acknowledged nothing more; destroy it and make a new one (a
   standby, with standby_start) on the same endpoints. */
int tq_broker_run(tq_broker_t *self);

/* Asks the loop to return; async-signal-safe, callable from any thread. */
void tq_broker_stop(tq_broker_t *self);

/* Closes the sockets and frees everything; NULL-safe, nulls *self_p. */
void tq_broker_destroy(tq_broker_t **self_p);

#endif
