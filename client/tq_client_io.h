/* tq_client_io.h - the client's I/O thread, shared by its two files:
   tq_client_io.c (the table of requests, its state machine, sending and
   the broker's answers) and tq_client_live.c (which broker, liveness,
   reconnects, the move to the next broker). Private to client/. */
#ifndef TQ_CLIENT_IO_H
#define TQ_CLIENT_IO_H

#include <czmq.h>

#include "tq_batch.h"
#include "tq_client_core.h"
#include "tq_wire.h"

#define TQ_IO_RECV_BATCH 1024 /* messages drained per poll pass */

/* A doubly linked list of requests (next, prev). */
typedef struct {
    tq_request_t *head;
    tq_request_t *tail;
} tq_io_list_t;

/* A handle's outcome read by a waiting caller (tq_client_io_lead) for a
   handle with callbacks: the I/O thread finishes the handle, so that
   callbacks run there only. */
typedef struct tq_io_later_s {
    struct tq_io_later_s *next;
    tq_result_t *result; /* a reference */
    int state;
    int code;
    char *error; /* malloc'd or NULL */
    zmq_msg_t value;
} tq_io_later_t;

/* A slot of the id table: the head of the requests on one id (chained
   on next_same) and the hash of that id. */
typedef struct {
    uint64_t hash;
    tq_request_t *head; /* NULL: empty */
} tq_io_slot_t;

/* The table of requests by id: open addressing (linear probing, at most
   half full) over the heads' own ids, their hashes in the slots, so a
   lookup reads the slots and the one request it finds: no copies, no
   allocation per entry. */
typedef struct {
    tq_io_slot_t *slots; /* cap of them, a power of 2 */
    size_t cap;
    size_t count; /* ids in it */
    /* the client's id prefix (its 16 hex digits, tq_io_table_own; zero
       bytes: none): an id of 32 bytes that starts with it is hashed by
       its counter (tq_io_table_hash) */
    uint64_t own[2];
} tq_io_table_t;

/* A walk over the table's chain heads (tq_io_first, tq_io_next); the
   table must not change during it. */
typedef struct {
    size_t slot;
} tq_io_iter_t;

/* The header of the SUBMITs of one task, queue and set of options,
   encoded once by the codec and kept: the next SUBMITs of that shape (a
   burst) are copies of it with their own id written over the id
   (tq_io_memo_header). */
typedef enum {
    TQ_IO_MEMO_NONE = 0, /* no shape kept */
    TQ_IO_MEMO_SEEN, /* the shape of the last SUBMIT, no header yet */
    TQ_IO_MEMO_READY, /* bytes: the shape's header, its id at id_at */
    TQ_IO_MEMO_NO, /* the shape does not encode to a header whose id can
                      be written over: SUBMITs of it are encoded each */
} tq_io_memo_state_t;

typedef struct {
    tq_io_memo_state_t state;
    /* the shape: what the header holds besides the id, and the id's
       length */
    char task[TQ_PROTO_MAX_NAME];
    char queue[TQ_PROTO_MAX_NAME];
    uint32_t task_len, queue_len, id_len;
    uint32_t priority, time_limit_ms, retries, backoff_ms, delay_ms;
    uint32_t features;
    msgpack_sbuffer bytes; /* READY: the header */
    size_t id_at; /* READY: where its id's bytes are */
    msgpack_sbuffer probe; /* scratch: the header of another id */
} tq_io_memo_t;

/* The I/O thread's state (under the client's io_lock). */
typedef struct tq_io_s {
    tq_client_t *client;
    tq_io_table_t pending; /* id -> chain of requests (next_same) that are
                              neither NEW nor final */
    tq_request_t *fifo_head; /* operator requests (STATUS, PURGE, FAILED)
                                in send order (next_fifo), for a broker
                                that answers them without their id */
    tq_request_t *fifo_tail;
    tq_io_list_t out; /* QUEUED, in order */
    tq_io_list_t deferred; /* DEFERRED */
    size_t unacked; /* requests QUEUED, SENT or DEFERRED */
    size_t waiting; /* requests in pending and the FIFO */
    int64_t unacked_since; /* when unacked last went 0 -> 1, ms */
    int64_t waiting_since; /* when waiting last went 0 -> 1, ms */
    int64_t last_heard; /* last message from the broker, ms */
    int64_t last_ping; /* last PING sent, ms */
    bool broker_lost; /* silent past the liveness while requests
                         waited: ask again once it answers */
    zlistx_t *regets; /* ids to send GET wait=true for (owned) */
    bool connected_once; /* a later connect is a reconnect */
    int64_t last_stale_check; /* ms, last look for stale SUBMITs */
    int64_t pong_for; /* ms, when the PING last answered went */
    uint64_t dropped; /* replies the broker said (PONG) it dropped for
                         us so far, on this connection's broker */
    uint64_t epoch; /* connections lost or made so far: a request
                       sent in an earlier epoch went over a
                       connection that is gone */
    uint64_t resent; /* requests sent again after a reconnect */
    bool standby; /* the current broker answered TQ_ESTANDBY: nothing
                     more goes to it, the client moves on */
    int64_t endpoint_since; /* ms, when the socket went to this broker */
    size_t silent_moves; /* moves on silence since a broker answered */
    size_t standby_moves; /* moves on TQ_ESTANDBY since one answered */
    int64_t round_at; /* ms, when the last round of moves on
                         TQ_ESTANDBY through the list began */
    int64_t reopen_at; /* ms, next try to open a socket that could not
                          be opened at a move */
    tq_frames_t frames;
    tq_msg_t msg; /* decode target; large, kept off the stack */
    tq_msg_t out_msg; /* encode source */
    msgpack_sbuffer buf; /* header encode buffer, reused */
    uint64_t malformed; /* messages dropped as malformed */
    void *monitor_seen; /* the monitor reader last drained */
    tq_io_later_t *later; /* handles to finish on the I/O thread */
    tq_io_later_t *later_tail;
    int64_t wake_at; /* ms, when the sleeping I/O thread wakes by itself
                        (INT64_MAX: not before an event); 0 awake */
    uint64_t sends; /* messages handed to libzmq so far */
    uint64_t heard_seq; /* sends counted when a message last came */
    size_t held; /* requests held (tq_request_t.held) */
    void *drained; /* the socket the last tq_io_recv found empty, or
                      NULL (it stopped before) */
    uint32_t peer_features; /* TQ_FEATURE_* of the broker's last PONG on
                               this connection; 0 until one came */
    bool ping_due; /* a PING to send ahead of the next requests: the
                      socket was opened or connected again, and the
                      broker's PONG tells what it takes */
    tq_batch_t batch; /* requests sent together, reused */
    uint64_t batches_out; /* BATCHes sent on this connection */
    uint64_t refusals_due; /* ERRORs still to come for BATCHes a broker
                              refused (s_io_unbatch) */
    tq_io_memo_t memo; /* the header of the last SUBMITs batched */
} tq_io_t;

/* Moves r to `to`, keeping it in the container of its state; a final
   request is freed (or kept by its handle): r is gone then. */
void tq_io_move(tq_io_t *io, tq_request_t *r, tq_req_state_t to);

/* Ends r without an answer from the broker (FAILED), its handle with
   code and text. */
void tq_io_failed(tq_io_t *io, tq_request_t *r, int code, const char *text);

/* Fails every request (only the unacknowledged ones not held when
   only_unacked). */
void tq_io_fail(tq_io_t *io, bool only_unacked, int code, const char *text);

/* The broker fell silent: a SUBMIT it may have folded (sent with
   TQ_FEATURE_FOLD, the broker heard from after it went) is one it holds,
   its SUBMITTED held back: it waits as an acknowledged one does rather
   than end unreachable (it is sent again if a new connection or a PONG
   says so). Returns how many are held now. */
size_t tq_io_hold_folded(tq_io_t *io);

/* Every request of the table in a list of its own (entries borrowed; the
   list is the caller's, zlistx_destroy it). */
zlistx_t *tq_io_all(tq_io_t *io);

/* The chain of requests on id (borrowed), NULL if none. */
tq_request_t *tq_io_chain(tq_io_t *io, tq_str_t id);

/* The first chain head of the table (it), or NULL; then the next. */
tq_request_t *tq_io_first(tq_io_t *io, tq_io_iter_t *it);
tq_request_t *tq_io_next(tq_io_t *io, tq_io_iter_t *it);

/* Reads and handles up to TQ_IO_RECV_BATCH messages; returns how many. */
int tq_io_recv(tq_io_t *io);

/* Resends the deferred SUBMITs whose time has come; returns the next
   resend time (ms), or -1. */
int64_t tq_io_deferred(tq_io_t *io, int64_t now);

/* Sends a PING or PONG, best effort. */
void tq_io_send_simple(tq_io_t *io, uint8_t command);

/* The socket goes to a broker whose features are not known yet (opened,
   connected again, moved): nothing batched goes until its PONG says it
   takes BATCH, and a PING sent ahead of the next requests asks for that
   PONG. */
void tq_io_peer_unknown(tq_io_t *io);

/* ERROR TQ_ESTANDBY came: the broker is a standby (tq_client_live.c). */
void tq_io_on_standby(tq_io_t *io, const tq_msg_t *m);

/* Asks again for every acknowledged result still awaited. */
void tq_io_reattach(tq_io_t *io);

/* A PONG came: when the count of replies the broker dropped for us grew,
   asks again for everything still awaited (PROTOCOL.md section 10). */
void tq_io_on_pong(tq_io_t *io, uint64_t dropped);

/* The poll timeout (ms, -1 none) after the liveness work: PINGs, moves
   to the next broker on silence, unreachable requests failed. */
long tq_io_liveness(tq_io_t *io);

/* Moves on from a standby when its time has come; the ms until then, or
   -1. */
long tq_io_leave_standby(tq_io_t *io, int64_t now);

/* Opens the socket again after it could not be (tq_client_socket_open
   failed at a move) once its time has come; the ms until the next try,
   or -1 (a socket is open). */
long tq_io_reopen(tq_io_t *io, int64_t now);

/* Reads one event of the socket's monitor (connects, disconnects). */
void tq_io_monitor(tq_io_t *io);

/* An empty memo; its buffers freed (it may be initialised again). */
void tq_io_memo_init(tq_io_memo_t *memo);
void tq_io_memo_destroy(tq_io_memo_t *memo);

/* The header of SUBMIT m (a str id and names the caller checked) from
   the memo: true with *data and *size (borrowed until the next call) when
   the memo holds m's shape, or makes it now with the codec from a second
   SUBMIT of the shape in a row; false when the caller must encode m
   itself (its shape is kept then). The header is the bytes the codec
   encodes for m (which may change during the call, and is as it was
   on return). */
bool tq_io_memo_header(tq_io_memo_t *memo, tq_msg_t *m, const void **data,
                       size_t *size);

/* The hash of an id (len bytes) in the table of requests by id. */
uint64_t tq_io_hash(const char *id, size_t len);

/* ---- the id table (tq_io_t's pending, on its own for tests) ---- */

/* The ids that start with prefix (16 hex digits, the client's id_hex)
   are the table's own. Set while the table is empty. */
void tq_io_table_own(tq_io_table_t *t, const char prefix[16]);

/* The hash of id (len bytes) in t: an id of t's own (its prefix and a
   counter in 16 hex digits, 32 bytes) hashes to twice its counter (its
   low 32 bits), so that ids made one after the other take every other
   slot in a row (answers come roughly in that order: the slots looked
   at next are in the cache lines just read), and the slots between stay
   free for other ids; any other id to tq_io_hash. */
uint64_t tq_io_table_hash(const tq_io_table_t *t, const char *id, size_t len);

/* Adds r (its id set) to t: r->id_len, r->hash set; r heads the chain of
   its id, or goes to its end (next_same). */
void tq_io_table_add(tq_io_table_t *t, tq_request_t *r);

/* The head of the chain on id, NULL if none. */
tq_request_t *tq_io_table_find(tq_io_table_t *t, const char *id, size_t len);

/* Removes r (tq_io_table_add'ed) from t; the next on its id, if any,
   heads the chain in its place. */
void tq_io_table_remove(tq_io_table_t *t, tq_request_t *r);

#endif
