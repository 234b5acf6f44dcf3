/* tq_broker.h - the broker as an object: two ROUTER sockets, the queues,
   dispatch, results and their TTL, in one single-threaded loop. Private to
   tq (tq-broker's main and the embedded pool use it). */
#ifndef TQ_BROKER_H
#define TQ_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "tq_proto.h"

/* Defaults. */
#define TQ_BROKER_CLIENTS "tcp://127.0.0.1:5555" /* loopback: opening
                                                    it is a decision */
#define TQ_BROKER_WORKERS "tcp://127.0.0.1:5556"
#define TQ_BROKER_RESULT_TTL_S 3600
/* Without a store, delivered results kept in memory (bytes). */
#define TQ_BROKER_RESULT_WINDOW (16ULL << 20)
#define TQ_BROKER_MAX_LOST 3 /* worker deaths a task may cause */
#define TQ_BROKER_CLIENT_BACKLOG 100000 /* replies queued per client */
#define TQ_BROKER_DATA_DIR "./tq-data"
/* The lease of a broker on a PostgreSQL store (PROTOCOL.md section 12). */
#define TQ_BROKER_LEASE_TTL_MS 3000 /* a lease not renewed lapses */
#define TQ_BROKER_LEASE_RENEW_MS 1000 /* the active renews this often */
#define TQ_BROKER_LEASE_RETRY_MS 500 /* a standby tries to take it */
/* The look for the next message before the loop sleeps (spin_us). */
#define TQ_BROKER_SPIN_US 100
#define TQ_BROKER_SPIN_MISSES 3 /* looks in vain before it stops looking */
#define TQ_BROKER_SPIN_SPARSE 4 /* at most this many messages: sparse */

typedef struct {
    const char *client_endpoint; /* NULL: TQ_BROKER_CLIENTS */
    const char *worker_endpoint; /* NULL: TQ_BROKER_WORKERS */
    int result_ttl_s;            /* < 0: default; 0: forget once sent */
    uint64_t result_window;      /* without a store: bytes of delivered
                                    results kept before the oldest are
                                    forgotten early (tq_results.c); 0:
                                    TQ_BROKER_RESULT_WINDOW */
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
                                    client library). 0: at once. With
                                    a store, > 0: no window; SUBMITTED
                                    at the commit, left out for a task
                                    that ended first */
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
    bool leadable; /* another thread of the process may run the loop's
                      passes while the broker's thread sleeps
                      (tq_broker_lead); the loop then polls its sockets'
                      file descriptors and holds a lock but while it
                      sleeps */
    uint32_t spin_us; /* after a pass that handled few messages (sparse
                         traffic: a round trip's request), the loop looks
                         for the next message this long, yielding the
                         CPU between looks, before it sleeps: an answer
                         that comes within it needs no wakeup (which
                         costs tens of microseconds on a virtual
                         machine). It stops after TQ_BROKER_SPIN_MISSES
                         looks in a row that found nothing, until a sleep
                         ends within spin_us again. 0: never (the
                         embedded pool's zeroed config); not with
                         leadable. tq-broker's default:
                         TQ_BROKER_SPIN_US */
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

/* A leadable broker's loop run for a moment by another thread (the
   embedded pool's caller waiting on its task): one owner of every fact,
   the broker's code, on the thread that waits for the answer anyway, so
   that the answer does not hop through the broker's thread and back.
   tq_broker_lead_begin takes the loop if the broker's thread sleeps
   (false: it is busy, or the broker stops or is not leadable; no lead).
   Between begin and end the broker's thread does nothing;
   tq_broker_lead runs one wait (up to timeout_ms, less if a deadline of
   the broker's comes first) and one pass of the loop, and returns 0, or
   -1 if the broker stops (end the lead).
   tq_broker_lead_end gives the loop back. Keep a lead short: a caller
   that waits longer leaves the loop to the broker's thread. */
bool tq_broker_lead_begin(tq_broker_t *self);
int tq_broker_lead(tq_broker_t *self, int timeout_ms);
void tq_broker_lead_end(tq_broker_t *self);

/* The local client: requests handed over by a function call instead of
   a socket, answers handed to fn, for a caller that leads the broker (the
   embedded pool's apply: its round trip then crosses no socket between
   the caller and the broker, and wakes neither the broker's thread nor a
   client's). fn(arg, msg, payload) runs on the thread running the loop
   (a leader's, or the broker's): msg and payload are borrowed for the
   call. Set once, before the loop runs. */
typedef void(tq_broker_local_fn)(void *arg, const tq_msg_t *msg,
                                 zmq_msg_t *payload);
void tq_broker_set_local(tq_broker_t *self, tq_broker_local_fn *fn, void *arg);

/* Between tq_broker_lead_begin and _end: handles msg (a client's request,
   SUBMIT or CANCEL...; its strings borrowed) with payload (moved, NULL:
   none) as if the local client had sent it on the clients socket, and
   dispatches. Its answers go to the local function. */
void tq_broker_local_send(tq_broker_t *self, const tq_msg_t *msg,
                          zmq_msg_t *payload);

/* Closes the sockets and frees everything; NULL-safe, nulls *self_p. */
void tq_broker_destroy(tq_broker_t **self_p);

#endif
