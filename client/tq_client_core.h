/* tq_client_core.h - the client object shared by the caller side
   (tq_client.c: requests made by callers) and the I/O thread
   (tq_client_io.c: the socket, the table of requests, liveness). */
#ifndef TQ_CLIENT_CORE_H
#define TQ_CLIENT_CORE_H

#include <czmq.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "tq/tq_client.h"
#include "tq_request.h"
#include "tq_result.h"

#define TQ_CLIENT_MAX_ENDPOINTS 16 /* brokers in one list */

struct tq_client_t {
    char *endpoint; /* as given: one endpoint or a comma-separated list */
    char *endpoints[TQ_CLIENT_MAX_ENDPOINTS]; /* the list, split */
    size_t endpoint_count; /* >= 1 */
    atomic_size_t current; /* index of the endpoint the socket talks to */
    zactor_t *actor;
    void *socket; /* raw DEALER; the I/O thread's once started */
    void *monitor_reader; /* PAIR on the socket's monitor, connected
                             before the DEALER connects, so no event is
                             ever sent to a PAIR without a peer (libzmq
                             would block); the I/O thread's */
    int wake_fd; /* eventfd: the submission queue became
                    non-empty, or the I/O thread must look again */
    pthread_mutex_t lock; /* guards queue_*, closed and io */
    /* guards the socket and the I/O thread's state (io): held by the I/O
       thread except while it sleeps in poll, and taken (trylock) by a
       caller that sends its request itself (tq_client_io_send_now) */
    pthread_mutex_t io_lock;
    struct tq_io_s *io; /* the I/O thread's state while it runs */
    atomic_size_t waiting_hint; /* io->waiting as last set: read without
                                   io_lock, only to choose how to wait
                                   for it (tq_client_io_lock) */
    /* the I/O thread found io_lock held when the socket woke it, and
       sleeps without the socket: whoever releases io_lock next wakes it
       (wake_fd) */
    atomic_bool io_handback;
    /* the I/O thread sleeps without the socket (see io_handback), until
       it holds io_lock again */
    atomic_bool io_socketless;
    tq_request_t *queue_head; /* requests in TQ_REQ_NEW, in order */
    tq_request_t *queue_tail;
    bool closed;
    atomic_int liveness_ms;
    atomic_bool no_fold; /* SUBMITs without TQ_FEATURE_FOLD */
    atomic_bool no_batch; /* SUBMITs without TQ_FEATURE_BATCH, and no
                             BATCH sent (tq_client_set_batch) */
    uint64_t id_prefix; /* 64 random bits */
    atomic_uint_fast64_t id_counter;
    pid_t pid; /* the process that made it */
    tq_client_t *live_prev, *live_next; /* every client not destroyed */
    atomic_uint_fast64_t broker_moves; /* moves to the next broker */
    atomic_uint_fast64_t sent_by_caller; /* tq_client_io_send_now calls */
    atomic_uint_fast64_t led; /* answers a waiting caller read itself */
    /* BATCH (PROTOCOL.md 5.9): what the broker said it takes in its last
       PONG on this connection (0 until then, again after a reconnect or
       a move); BATCHes sent and the requests in them; BATCHes read;
       messages dropped as malformed (lone ones and those in a BATCH) */
    atomic_uint peer_features;
    atomic_uint_fast64_t batches_sent;
    atomic_uint_fast64_t batched_sent;
    atomic_uint_fast64_t batches_read;
    atomic_uint_fast64_t malformed;
    /* request moves made so far, [from][to] (tq_client_moves) */
    atomic_uint_fast64_t moves[TQ_REQ_STATES_][TQ_REQ_STATES_];
    char id_hex[16]; /* id_prefix in hex, the first half of the ids of
                        submissions (made once) */
};

/* The I/O thread (a czmq actor; args is the client). */
void tq_client_io_actor(zsock_t *pipe, void *args);

/* Takes io_lock for a caller that would send its request or read its
   answer itself (not the I/O thread, not from a callback): at once if it
   is free; else, when at most `alone` requests are awaited, waits for it
   up to a short bound (the I/O thread lets go of it before it sleeps: a
   round trip's caller waits for that rather than hand its request over
   and be woken for the answer). True if taken. Called without
   self->lock. */
bool tq_client_io_lock(tq_client_t *self, size_t alone);

/* With io_lock taken by tq_client_io_lock (held) or not: true, keeping
   io_lock, if a caller may send its request itself
   (tq_client_io_send_now): the I/O thread sleeps (self->io set) and no
   request is awaited, or the request goes alone (alone: a payload too
   large for a BATCH) and nothing waits for libzmq to take it; else false
   with io_lock released. Called with self->lock held. */
bool tq_client_io_try_send(tq_client_t *self, bool held, bool alone);

/* Sends requests (NEW) from the calling thread, which took io_lock while
   the I/O thread slept (self->io set): the chain `queued` (on next, taken
   off the submission queue) first, then r. Releases io_lock. will_lead:
   the caller waits for r's answer next (tq_client_io_lead), so an I/O
   thread asleep without the socket is left so. */
void tq_client_io_send_now(tq_client_t *self, tq_request_t *queued,
                           tq_request_t *r, bool will_lead);

/* Opens the client's DEALER (and its monitor) and connects it to
   endpoint; 0, or -1 with the reason logged (nothing left open). */
int tq_client_socket_open(tq_client_t *self, const char *endpoint);

/* Closes the DEALER and its monitor; NULL-safe on each. */
void tq_client_socket_close(tq_client_t *self);

/* Counts a request's move from `from` to `to`. */
void tq_client_count_move(tq_client_t *self, tq_req_state_t from,
                          tq_req_state_t to);

/* Request moves from `from` to `to` made so far by this client (tests). */
uint64_t tq_client_moves(tq_client_t *self, tq_req_state_t from,
                         tq_req_state_t to);

/* A caller waits for handle h to be final (deadline: ms of zclock_mono,
   -1 none): while the I/O thread sleeps and h's request is the only one
   awaited, the caller reads the socket itself (no hop through the I/O
   thread on the way back). Returns at
   once if the I/O thread is awake, or as soon as it needs the socket
   (wake_fd), or when h is final; the caller then waits on h as usual.
   Callbacks still run on the I/O thread only. */
void tq_client_io_lead(tq_client_t *self, tq_result_t *h, int64_t deadline);

/* How many answers a waiting caller read itself (tests). */
uint64_t tq_client_led(tq_client_t *self);

/* How many times a caller thread sent its request itself (tests). */
uint64_t tq_client_sent_by_caller(tq_client_t *self);

/* The features of the broker's last PONG on this connection (0: none
   heard since the socket connected or moved), TQ_FEATURE_* (tests). */
uint32_t tq_client_peer_features(tq_client_t *self);

/* BATCH messages this client sent, and the requests sent inside them. */
uint64_t tq_client_batches_sent(tq_client_t *self);
uint64_t tq_client_batched_sent(tq_client_t *self);

/* BATCH messages this client read from the broker. */
uint64_t tq_client_batches_read(tq_client_t *self);

/* Messages from the broker dropped as malformed, lone ones and those in a
   BATCH alike (tests). */
uint64_t tq_client_malformed(tq_client_t *self);

/* How many times the client moved to the next broker of its list. */
uint64_t tq_client_broker_moves(tq_client_t *self);

/* The endpoint the client talks to now (borrowed from the list). */
const char *tq_client_current_endpoint(tq_client_t *self);

#endif
