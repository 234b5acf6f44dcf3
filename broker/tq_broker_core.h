/* tq_broker_core.h - what the broker's files share: the task record and
   its state machine, lanes and queues, peers, data queues, the broker
   object, and the functions each file offers the others. Private to
   broker/: nothing outside this folder includes it.

   Where each fact lives:
   - a task's state is task->state alone (task_state_t); the state says
     which one container holds it (see the table in tq_task.c), and only
     tqb_task_move changes it, writing the stored record as it does;
   - what the store keeps of a task is task->rec (beanstalkd's Jobrec);
     the rest of task_t is bookkeeping that a restart rebuilds. */
#ifndef TQ_BROKER_CORE_H
#define TQ_BROKER_CORE_H

#include <czmq.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <zmq.h>

#include "tq/tq_error.h"
#include "tq_auth.h"
#include "tq_batch.h"
#include "tq_broker.h"
#include "tq_heap.h"
#include "tq_log.h"
#include "tq_proto.h"
#include "tq_store.h"
#include "tq_wire.h"

#define TQB_PRIORITIES 10 /* 0..9, TQ_PRIORITY_MAX + 1 */
#define TQB_IDENT_INLINE 24 /* routing ids up to this size stay inline */
#define TQB_ID_BIN 16 /* bytes of a task id kept in binary (task->id_bin) */
#define TQB_HEARTBEAT_MS 1000 /* PROTOCOL.md section 10 */
#define TQB_LIVENESS_MS 3000
#define TQB_LOST_PAUSE_MS 1000 /* first pause of a task whose worker died */
#define TQ_DEFAULT_QUEUE_NAME "default"
#define TQB_INTERN_MEMO 4 /* names remembered by tqb_intern */
#define TQB_COMMIT_BUCKETS 12 /* the store commit latency histogram */
#define TQB_ROW_BYTES 256 /* a stored row's own cost on disk, estimated */

/* A ZeroMQ routing id, inline when short (the default ids are 5 bytes). */
typedef struct {
    uint8_t size;
    uint8_t bytes[TQB_IDENT_INLINE];
    uint8_t *heap; /* when size > TQB_IDENT_INLINE */
} ident_t;

typedef struct queue_s queue_t;
typedef struct lane_s lane_t;
typedef struct task_s task_t;
typedef struct peer_s peer_t;

/* A list of tasks linked through their prev/next. */
typedef struct {
    task_t *head, *tail;
} task_list_t;

/* ---- the task ---- */

/* Where a task is. Each state has exactly one container; the wire state
   (PROTOCOL.md section 6) is a function of it (tqb_task_wire_state). */
typedef enum {
    TASK_NEW = 0, /* made, in no container yet */
    TASK_WAITING, /* PENDING: in its lane, FIFO per priority */
    TASK_SCHEDULED, /* SCHEDULED: the deadline heap (countdown) */
    TASK_RETRY, /* RETRY: the deadline heap (backoff, loss pause) */
    TASK_HELD, /* RUNNING: its holder's held list */
    TASK_REVOKING, /* RUNNING: held, a REVOKE outstanding */
    TASK_SUCCESS, /* final: the expiry list */
    TASK_FAILURE, /* final: the dead letters; also the expiry list
                     unless TQ_ELOST (kept until retried) */
    TASK_CANCELLED, /* final: the expiry list */
    TASK_STATES_
} task_state_t;

/* What the store keeps of a task: tq_store_task_t is made from it. The
   last member of task_t: its id runs on into the task's allocation. */
typedef struct {
    uint64_t seq; /* submission order */
    uint32_t time_limit_ms;
    uint32_t attempt; /* lease: incremented at every dispatch */
    uint32_t backoff_ms; /* first retry delay */
    /* small numbers in 32 bits; the error text (final or retrying) and
       the owner are the task's too: tqb_task_error, tqb_task_owner */
    uint32_t retries : 10; /* reruns left after a task failure (at most
                              TQ_PROTO_MAX_RETRIES) */
    uint32_t failures : 10; /* task failures so far (for the backoff; at
                               most the retries it had) */
    uint32_t code : 8; /* final: tq_err_t */
    uint32_t priority : 4; /* 0..TQB_PRIORITIES - 1 */
    char id[]; /* NUL-terminated text, or TQB_ID_BIN bytes when
                  task->id_bin (read it with tqb_task_id); a small
                  payload follows it */
} task_rec_t;

/* Where a task's payload is (task->payload_at). */
typedef enum {
    PAYLOAD_NONE = 0, /* empty */
    PAYLOAD_INLINE, /* in the task's own allocation, after its id */
    PAYLOAD_HEAP, /* task->payload points to a malloc'd copy */
    PAYLOAD_MSG, /* task->payload points to a zmq_msg_t (large ones: not
                    copied) */
    PAYLOAD_STORED /* only in the store (its arguments, committed):
                      read back when needed (tqb_task_payload) */
} payload_at_t;

/* Who submitted a task (task->client_at). */
typedef enum {
    CLIENT_NONE = 0, /* answered already, or recovered from the store */
    CLIENT_ZMQ, /* a routing id ZeroMQ made: a zero byte, then the 4 bytes
                   in task->client */
    CLIENT_OTHER /* any other: in tq_broker_t.clients under the task id */
} client_at_t;

/* One allocation per task: this, ending with its id, then its payload
   when PAYLOAD_INLINE, in a slab of its size (tq_task.c). Fields only
   one group of states needs share a union: the state says which member
   is live. A waiting task costs this record (112 bytes up to its id), its
   id (16 bytes when client-made), its payload and a share of the id
   table's buckets: a slot of 128 bytes with a client-made id and the
   payload paged out. */
struct task_s {
    task_t *prev, *next; /* lane, held list or expiry list */
    lane_t *lane; /* its queue and task name */
    void *payload; /* PAYLOAD_HEAP: the bytes; PAYLOAD_MSG: a zmq_msg_t;
                      else NULL. Args until final, then the value (a dead
                      letter keeps its args). Read with tqb_task_payload */
    int64_t submitted_ms; /* monotonic ms when accepted */
    union {
        struct { /* HELD, REVOKING */
            peer_t *holder;
            uint64_t revoke_for; /* REVOKING: serial of the idle child
                                    asking */
        };
        tq_heap_node_t node; /* SCHEDULED, RETRY: position in the heap;
                                node.key is the monotonic ms it may run */
        struct { /* final */
            union {
                struct { /* FAILURE: the dead letters */
                    task_t *dead_prev, *dead_next;
                };
                struct { /* SUCCESS: the window of delivered results
                            (tq_results.c) */
                    task_t *window_prev, *window_next;
                };
            };
            int64_t expires_ms; /* monotonic ms when forgotten (a TQ_ELOST
                                   dead letter is not); it became final
                                   the result TTL before */
        };
    };
    uint32_t client; /* CLIENT_ZMQ: the submitter's routing id */
    uint32_t payload_size; /* bytes */
    uint32_t started; /* its last dispatch: tqb_task_started_ms */
    uint32_t id_next; /* the id table's chain: a slab handle (tq_task.c) */
    uint32_t owner; /* CURVE: its submitter's key, an index into
                       tq_broker_t.owners (tqb_task_owner); 0: none */
    uint16_t lost; /* worker deaths charged to it (max-lost fits) */
    /* two bytes of state and flags: rec starts 8-aligned, no padding */
    uint8_t state : 4; /* task_state_t, the one fact: which container
                          holds it */
    uint8_t payload_at : 3; /* payload_at_t */
    uint8_t client_at : 2; /* client_at_t */
    bool failure_counted : 1; /* FAILURE: in this run's failed counts (not
                                 when recovered from the store) */
    bool page_out : 1; /* listed in tq_broker_t.page_out */
    bool waited : 1; /* has clients in tq_broker_t.waiters */
    bool id_bin : 1; /* rec.id holds the 16 bytes of a 32 hex digit id */
    bool has_error : 1; /* has an error text in tq_broker_t.errors */
    task_rec_t rec; /* last: its id runs on */
};

/* When a final task became final (monotonic ms): its expiry less the
   result TTL (kept so, not in a field of its own). */
#define TQB_FINISHED_MS(self, task)                                            \
    ((task)->expires_ms - (int64_t)(self)->config.result_ttl_s * 1000)

/* How tqb_task_move places a task. */
typedef struct {
    peer_t *holder; /* HELD: who gets it */
    int64_t due_ms; /* SCHEDULED, RETRY: monotonic ms */
    bool front; /* WAITING: at the front of its priority */
    int64_t expires_ms; /* final: monotonic ms it is forgotten, 0: after
                           the result TTL from now */
    bool restore; /* recovery: the store has it already, write nothing */
} task_move_t;

/* The tasks of one queue and one task name, a FIFO per priority: dispatch
   only has to look at lanes whose task name the worker provides. */
struct lane_s {
    queue_t *queue;
    const char *task; /* interned */
    task_list_t fifo[TQB_PRIORITIES];
    uint32_t waiting;
    lane_t *next;
    uint32_t busy; /* bit p: fifo[p] holds tasks (dispatch reads the
                      highest at once, not ten heads) */
    uint32_t task_len; /* strlen(task): every TASK names it */
};

struct queue_s {
    const char *name; /* interned */
    lane_t *lanes;
    peer_t **servers; /* children that serve it: dispatch looks only at
                         the servers of queues with waiting tasks */
    uint32_t server_count, server_cap;
    uint32_t waiting, running;
    uint32_t delayed; /* SCHEDULED and RETRY */
    uint64_t done, failed;
    queue_t *next;
    uint64_t stamp; /* stealing: the last pass that looked at its servers */
    /* the servers that have credit left and are not marked unreachable,
       in no order: what dispatch and stealing look at */
    peer_t **hungry;
    uint32_t hungry_count, hungry_cap;
};

/* ---- peers on the workers endpoint ---- */

typedef enum {
    PEER_CHILD = 1, /* announced itself with READY */
    PEER_SUPERVISOR = 2 /* announced itself with HEARTBEAT */
} peer_role_t;

struct peer_s {
    uint64_t serial; /* unique per broker, never reused */
    peer_role_t role;
    ident_t ident;
    uint32_t ident_hash; /* of ident's bytes: its peers index slot */
    char host[TQ_PROTO_MAX_NAME + 1];
    uint64_t pid, ppid;
    uint64_t session; /* supervisor: its session's number; child:
                         the session it is bound to, 0: none */
    uint32_t credit, held;
    uint32_t cancelled; /* cancelled tasks it may still be running */
    char kill_id[TQ_PROTO_MAX_ID + 1]; /* child: a task cancelled while its
                                          host had no supervisor known,
                                          KILLed at its first HEARTBEAT */
    uint32_t revoking; /* held tasks in TASK_REVOKING */
    uint64_t stamp;    /* dispatch: the last pass that listed it */
    uint32_t features; /* TQ_FEATURE_* from its READY */
    uint64_t done;
    uint64_t rss_kb; /* peak RSS from its last DONE */
    queue_t **queues;
    uint32_t queue_count;
    const char **tasks; /* interned */
    uint32_t task_count;
    task_list_t held_tasks; /* in dispatch order */
    /* child, its LOST named the task it ran (PROTOCOL.md 5.3 item 2):
       lost_task is charged with its death, none if NULL */
    bool lost_named;
    task_t *lost_task;
    int64_t last_seen_ms;
    int64_t unreachable_ms; /* child: when a send found its connection
                               gone (EHOSTUNREACH), 0: never */
    bool refused; /* child: a BATCH to it failed otherwise than
                     EHOSTUNREACH: removed at the next tqb_batch_flush */
    peer_t *prev, *next; /* the children list, or the supervisors */
    /* child: its links in tq_broker_t.multi (it holds 2 tasks or more)
       and tq_broker_t.unreachable (it is marked unreachable) */
    peer_t *multi_prev, *multi_next;
    peer_t *unreachable_prev, *unreachable_next;
    /* child: in its queues' hungry arrays (tqb_peer_hungry), at
       hungry_at[i] in that of queues[i]; serving: listed as a server */
    bool hungry, serving;
    uint32_t *hungry_at;
};

/* ---- data queues: multiprocessing.Queue kept by the broker ---- */

typedef struct item_s {
    zmq_msg_t msg;
    uint64_t seq; /* its order in the queue, its key in the store */
    struct item_s *next;
} item_t;

typedef struct getter_s {
    ident_t ident;
    char id[TQ_PROTO_MAX_ID + 1]; /* the QGET's request id */
    int64_t deadline_ms;
    struct getter_s *next;
} getter_t;

typedef struct dq_s {
    const char *name; /* interned */
    uint32_t maxsize; /* 0: no bound */
    uint32_t size;
    uint64_t next_seq; /* for the next item put */
    item_t *head, *tail;
    getter_t *getters, *getters_tail;
    struct dq_s *next;
} dq_t;

/* An answer that must wait for the commit of what it acknowledges:
   SUBMITTED for a task, REPLY {size} for a data-queue item. */
typedef struct {
    ident_t to;
    char id[TQ_PROTO_MAX_ID + 1];
    uint8_t command;
    uint64_t size; /* REPLY: the queue's size */
    uint64_t need; /* the batch whose commit it waits for */
    bool fold; /* a SUBMITTED for a client that takes the RESULT as its
                  acknowledgement (tqb_ack_folded): not sent once the
                  task of submission seq ended */
    uint64_t seq; /* fold: the task's rec.seq (its submission) */
    bool id_bin; /* fold: the task is kept by its id's bytes, id_bytes */
    uint8_t id_bytes[TQB_ID_BIN];
} ack_t;

/* A SUBMITTED held back (config.ack_fold_ms): sent at due_ms to the
   task's submitter unless the task ended first, its RESULT then
   acknowledging it (the submitter is the task's until it ends:
   tqb_task_client). */
typedef struct {
    char id[TQ_PROTO_MAX_ID + 1]; /* the task's id: text, or its
                                     TQB_ID_BIN bytes when id_bin */
    bool id_bin;
    int64_t due_ms;
} fold_t;
/* Without a store, the results delivered already (tq_results.c): SUCCESS
   tasks whose RESULT went to everyone waiting on it, oldest first. */
typedef struct {
    task_t *head, *tail;
    uint64_t bytes; /* what they count for: TQB_RESULT_COST each plus
                       their value */
    uint32_t count;
    uint64_t expired; /* forgotten early to keep within the window */
} tqb_window_t;

/* The store journal and its commit thread (tq_journal.c). */
typedef struct tqb_journal_s tqb_journal_t;

typedef struct {
    uint64_t submitted, completed, failed, requeued, lost, duplicates,
        malformed, errors, dropped, retried, cancelled, refused, stolen;
    /* BATCH (PROTOCOL.md 5.9): received and sent, and the sub-messages
       in them */
    uint64_t batches_in, batched_in, batches_out, batched_out;
    /* the part of batches_out and batched_out sent to worker children */
    uint64_t child_batches_out, child_batched_out;
    /* the part of batches_in and batched_in received from worker
       children */
    uint64_t child_batches_in, child_batched_in;
} counters_t;

/* BATCH to the clients and children that take it (PROTOCOL.md 5.9,
   tq_reply.c): what the loop sends such a client, and the TASKs it sends
   such a child, are gathered in a batch per peer, sent at the end of the
   burst or pass that made them (tqb_batch_flush). */
#define TQB_BATCH_SLOTS 8 /* peers with a batch open at once */
#define TQB_BATCH_PEERS 64 /* clients remembered as taking BATCH */
#define TQB_BATCH_BYTES (128 << 10) /* a batch this large goes at once */
typedef struct {
    ident_t to;
    void *socket; /* the clients or the workers socket */
    peer_t *child; /* on the workers socket: the child it goes to (its
                      removal drops the batch: tqb_batch_drop) */
    tq_batch_t batch; /* open while it holds a message */
    uint64_t opened; /* when it opened (a sequence): the oldest goes first
                        when every slot is taken */
} out_batch_t;

/* The broker's lease on a PostgreSQL store (tq_lease.c): one state,
   active or standby, with the times of its next step. */
typedef struct {
    bool enabled; /* a PostgreSQL store: the broker runs under a lease */
    bool active; /* it holds the lease; else it is a standby */
    uint64_t epoch; /* the lease's epoch while active: the fencing token */
    int64_t renewed_ms; /* monotonic ms when the last renewal that succeeded
                           (or the acquisition) was sent */
    int64_t next_ms; /* the next renewal (active) or attempt (standby) */
    int64_t warned_ms; /* standby: when it last logged why it waits */
    char holder[200]; /* standby: who held the lease when last asked */
} lease_t;

struct tq_broker_t {
    tq_broker_config_t config;
    void *ctx;
    void *clients; /* ROUTER */
    void *workers; /* ROUTER */
    tq_auth_t *auth; /* ZAP handler with CURVE, else NULL */
    int wakeup; /* eventfd written by tq_broker_stop */
    char client_endpoint[256];
    char worker_endpoint[256];
    char hostname[TQ_PROTO_MAX_NAME + 1];
    uint32_t *id_table; /* id -> task slab handle, chained through
                           id_next */
    zhashx_t *errors; /* task_t * -> its error text (final or retrying;
                         rare, so beside the task) */
    const char **owners; /* CURVE: the submitters' keys (interned) tasks
                            name by index (task->owner), 1-based */
    zhashx_t *owner_index; /* key -> its index in owners */
    uint32_t owner_count, owner_cap;
    struct tqb_slabs_s *slabs; /* where task records are allocated
                                  (tq_task.c) */
    zhashx_t *waiters; /* task id -> clients blocked in GET wait=true
                          (ident_t array, count first), made on demand */
    zhashx_t *submitters; /* task id -> its submitter's ident_t when not one
                          ZeroMQ made (CLIENT_OTHER) */
    uint32_t id_mask; /* buckets - 1, a power of two minus one */
    uint32_t task_count;
    task_t **page_out; /* tasks whose payload leaves memory once the
                          batch that stores it commits */
    uint32_t page_out_count, page_out_cap;
    uint64_t paged_in; /* payloads read back from the store */
    uint64_t paged_out; /* tasks whose arguments are only in the store */
    uint64_t paged_out_bytes; /* arguments paged out, ever */
    uint64_t trimmed_at; /* paged_out_bytes at the last malloc_trim */
    int64_t trimmed_ms; /* when it ran */
    uint32_t trims_owed; /* quiet passes that still trim after a burst */
    zhashx_t *names; /* interned task and queue names */
    zhashx_t *queue_index; /* name -> queue_t */
    /* the names interned last, and the queue found last: a run of
       SUBMITs names the same few (tqb_intern, tqb_queue) */
    struct {
        const char *name;
        uint32_t len;
    } intern_memo[TQB_INTERN_MEMO];
    uint32_t intern_next;
    queue_t *queue_memo;
    struct { /* the binary id parsed last, and its text (tq_task.c) */
        char text[2 * TQB_ID_BIN];
        uint8_t bin[TQB_ID_BIN];
        bool valid;
    } id_memo;
    queue_t *queues;
    zhashx_t *peers; /* &peer->ident (its bytes) -> peer_t */
    peer_t **peer_slots; /* the same peers by their id's bytes, for
                            tqb_peer (tq_dispatch.c) */
    uint32_t peer_mask, peer_used;
    peer_t *children, *children_tail;
    peer_t *supervisors;
    task_list_t expiry; /* final tasks, in expiry order */
    tqb_window_t window; /* delivered results (no store): tq_results.c */
    tq_heap_t delayed; /* SCHEDULED and RETRY tasks by due time */
    task_t *dead_head; /* dead letters (failed tasks), oldest first */
    task_t *dead_tail;
    uint32_t dead_count;
    uint64_t memory; /* payload bytes held */
    tq_store_t *store; /* NULL: memory only */
    lease_t lease; /* PostgreSQL store: active or standby */
    zhashx_t *dq_index; /* name -> dq_t */
        zhashx_t *in_flight; /* client ident hex -> unfinished tasks
                            (uintptr_t), with max_client_tasks only */
    zhashx_t *client_drops; /* client ident hex -> replies dropped for it
                               (uintptr_t), made at its first drop */
    dq_t *dqs;
    ack_t *acks; /* answers waiting for the commit, from ack_head */
    uint32_t ack_head, ack_count, ack_cap;
    fold_t *folds; /* held SUBMITTEDs, a ring in due order */
    uint32_t fold_head, fold_count, fold_cap;
    tqb_journal_t *journal; /* with a store: batches and commit thread */
    int commit_rc; /* TQ_OK, or how the last commit failed (TQ_EBUSY:
                      the lease was taken); then nothing more is
                      acknowledged */
    bool disk_full;      /* the store passed max_disk */
    uint64_t disk_bytes; /* the store's size: measured once a second, plus
                            what each write since adds (an estimate), so
                            max-disk refuses before the disk fills */
    uint64_t recovered; /* tasks loaded at start */
            uint64_t recovered_items; /* data-queue items loaded at start */
    uint64_t commits;         /* store commits, and their time: */
    uint64_t commit_us_sum;
    uint64_t commit_buckets[TQB_COMMIT_BUCKETS]; /* by tqb_commit_bounds */
    uint64_t corrupt;        /* stored tasks and items that failed their
                                checksum at start */
    char store_name[300];    /* the store, for messages (no password) */
    uint64_t seq;
    uint64_t results_kept;
    int64_t started_ms;
    int64_t now_ms;
    int64_t next_check_ms;
    int64_t next_housekeeping_ms;
    int64_t log_window_ms;
    int log_count;
    bool dispatch_due;
    bool refused_due; /* a child waits for removal (tqb_remove_refused) */
    uint64_t peer_serial; /* the last peer_t serial given */
    uint64_t session_serial; /* the last supervisor session given */
    uint64_t stamp;          /* dispatch passes, for peer_t.stamp */
    uint32_t multi_holders;  /* children that hold 2+ tasks and answer
                                REVOKE: only then can stealing help */
    peer_t **candidates;     /* dispatch scratch: children to serve */
    uint32_t candidate_cap;
    volatile bool stopping;
    counters_t counters;
    tq_frames_t frames;
    tq_msg_t in; /* decoded input, reused */    void *in_socket; /* the socket `in` came from */
    const char *in_key; /* CURVE: its sender's key (interned), else NULL */
    bool in_admin;      /* CURVE: its sender holds an operator key */
    zhashx_t *key_hosts; /* CURVE: worker key -> the host name it bound at
                            its first READY or HEARTBEAT (interned) */
    zhashx_t *host_keys; /* CURVE: host name -> the worker key bound to it */
    tq_msg_t out; /* reply being built, reused */
    msgpack_sbuffer sbuf; /* header encoding buffer, reused */
    /* config.leadable (tq_broker_lead): whoever runs a pass holds
       lead_lock, the broker's thread all the time but its sleep */
    pthread_mutex_t lead_lock;
    int lead_fds[2]; /* ZMQ_FD of clients and workers, polled instead */
    int lead_rc; /* a leader's pass that ended the loop: its code */
    int64_t last_pass_ms; /* the end of the last pass, whoever ran it */
    tq_broker_local_fn *local_fn; /* the local client (tq_broker_set_local) */
    void *local_arg;
    ident_t local_ident;
    out_batch_t batches[TQB_BATCH_SLOTS];
    uint64_t batch_seq;
    /* clients whose last SUBMIT set TQ_FEATURE_BATCH, the oldest
       replaced first when full (batch_peer_next) */
    ident_t batch_peers[TQB_BATCH_PEERS];
    uint32_t batch_peer_count, batch_peer_next;
    /* the message being handled, read once when it is received (s_drain,
       a BATCH's sub-message, the local client) rather than asked of its
       frames by every handler and helper: its sender's routing id
       (borrowed from frames.identity: never tqb_ident_clear it) and its
       payload's bytes, held by in_msg (frames.payload), or by the frame
       of the BATCH it came in when in_msg is NULL */
    ident_t in_from;
    const void *in_data;
    size_t in_size;
    zmq_msg_t *in_msg;
    /* the lane tqb_lane_of found last, and its names' lengths: a run of
       SUBMITs names the same queue and task (lanes live as long as the
       broker) */
    struct {
        lane_t *lane;
        uint32_t queue_len, task_len;
    } lane_memo;
    /* the children that dispatch and the host checks look at instead of
       every child: those holding 2 tasks or more (stealing's holders:
       peer_t.multi_*), and those marked unreachable, in the order they
       were marked, so the first is the first to expire
       (peer_t.unreachable_*) */
    peer_t *multi;
    peer_t *unreachable, *unreachable_tail;
    uint64_t visits; /* children those passes looked at, for tests: it
                        grows with the eligible, not with the connected */
    /* workers [0] and clients [1]: true while the socket is known to have
       nothing to read and its ZMQ_FD to signal the next message (a drain
       ended on an empty receive, or ZMQ_EVENTS said so, and nothing was
       sent on it since: a send may take in the command that would have
       signalled), so that s_wait need not look (tqb_sent) */
    bool quiet[2];
    /* the last s_wait slept until a socket's descriptor woke it: the
       broker was idle, and the first message goes through alone */
    bool woken;
    /* the look before the sleep (config.spin_us, s_spin): messages
       received so far (s_drain; a BATCH's sub-messages count) and at the
       last wait; looks in vain in a row; whether it looks at all now
       (not after TQ_BROKER_SPIN_MISSES in vain, again once a sleep ends
       within spin_us); the looks made and those that found a message
       (STATUS "spins", "spins_caught") */
    uint64_t received, spin_mark;
    uint32_t spin_misses;
    bool spin_off;
    uint64_t spins, spins_caught;
};

/* Notes a message sent on socket (self->workers or self->clients). */
static inline void
tqb_sent(struct tq_broker_t *self, const void *socket)
{
    self->quiet[socket == self->clients] = false;
}

/* ---- tq_broker.c: clocks, allocation, logging ---- */

int64_t tqb_now(void); /* monotonic ms */
int64_t tqb_wall_ms(void); /* wall-clock ms, for what the store keeps */
void *tqb_alloc(size_t size); /* zeroed; out of memory aborts */
char *tqb_strdup(const char *s);
/* Logs a problem caused by a peer, rate-limited. */
void tqb_warn(tq_broker_t *self, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
#define tqb_debug(self, ...)                                                   \
    do {                                                                       \
        if ((self)->config.verbose || tq_log_enabled(TQ_LOG_DEBUG))            \
            tq_log(TQ_LOG_DEBUG, __VA_ARGS__);                                 \
    } while (0)

/* Reads what every handler asks of the message just received in
   self->frames once: its sender's routing id and its payload's bytes
   (self->in_from, in_data, in_size, in_msg). */
void tqb_received(tq_broker_t *self);

/* A message for the local client (tq_broker_set_local): handed to its
   function, true; false for anyone else. self->out is the message. */
bool tqb_local_deliver(tq_broker_t *self, const ident_t *to,
                       zmq_msg_t *payload);

/* ---- tq_reply.c: routing ids and everything the broker sends ---- */

void tqb_ident_set(ident_t *ident, const void *data, size_t size);
const uint8_t *tqb_ident_data(const ident_t *ident);
void tqb_ident_clear(ident_t *ident);
bool tqb_ident_eq(const ident_t *a, const ident_t *b);
void tqb_hex(char *dst, const uint8_t *data, size_t size);
/* The identity of the message being handled (borrowed: never clear it). */
ident_t tqb_sender(tq_broker_t *self);
/* Starts building a message in self->out. */
tq_msg_t *tqb_out(tq_broker_t *self, uint8_t command);
/* Sends self->out to ident with an optional payload (moved). 0, or -1
   with errno when the peer is gone (counted as dropped). To a client
   that takes BATCH, a message with a small payload joins the client's
   open batch and 0 is returned; a failure to send the batch later is
   counted as these are (tqb_batch_flush). */
int tqb_send_to(tq_broker_t *self, void *socket, const ident_t *ident,
                zmq_msg_t *payload);
/* Remembers whether the client ident takes BATCH (its SUBMIT's
   features). */
void tqb_batch_peer(tq_broker_t *self, const ident_t *ident, bool takes);
/* True if the client ident takes BATCH. */
bool tqb_batch_takes(const tq_broker_t *self, const ident_t *ident);
/* Sends every open batch, oldest first: at the end of every burst and
   pass of the loop, and after anything else that sends. Then trims the
   window of delivered results (tqb_results_trim). */
void tqb_batch_flush(tq_broker_t *self);
/* Sends the open batches of TASKs to children now, the clients' batches
   staying open (they go after the burst's commit, tqb_batch_flush). */
void tqb_batch_flush_children(tq_broker_t *self);
/* True while a batch is open. */
bool tqb_batch_open(const tq_broker_t *self);
/* Frees the batches, sending nothing (tq_broker_destroy flushes them
   first, while the tasks their failure would touch exist). */
void tqb_batch_free(tq_broker_t *self);
/* Sends self->out (a TASK) to child with its payload: size bytes at data,
   held by the message payload (moved), or borrowed when payload is NULL
   (copied). To a child
   that takes BATCH (READY feature TQ_FEATURE_BATCH) a small one joins the
   child's open batch; its failure later is handled as a refused lone TASK
   would be, for every TASK in it (tqb_child_refused). 0, or -1 with errno
   when the child cannot take it now (as tqb_send_to). */
int tqb_send_child(tq_broker_t *self, peer_t *child, zmq_msg_t *payload,
                   const void *data, size_t size);
/* Sends child's open batch now, if it has one (before a message that
   must follow it and whose sending depends on the state it leaves). */
void tqb_batch_send_child(tq_broker_t *self, peer_t *child);
/* Forgets child's open batch unsent: it is being removed, and the tasks
   in the batch go back with the ones it holds. */
void tqb_batch_drop(tq_broker_t *self, const peer_t *child);
/* Sends self->out to the current sender. */
void tqb_reply(tq_broker_t *self, void *socket);
/* Answers the current sender ERROR code text, naming id when valid. */
void tqb_reply_error(tq_broker_t *self, void *socket, int code,
                     const char *text, tq_str_t id);
void tqb_reply_unknown(tq_broker_t *self, tq_str_t id);
/* Replies dropped for a client at its backlog, so far. */
uint64_t tqb_client_dropped(tq_broker_t *self, const ident_t *ident);
/* Tenants: true if the current sender may see and act on task (always
   without CURVE; under CURVE, its submitter's key or an operator key). */
bool tqb_may_see(const tq_broker_t *self, const task_t *task);
/* Sends a final task's RESULT to one client (the value shared). 0 once
   handed to libzmq, -1 if dropped or the client is gone. */
int tqb_send_result(tq_broker_t *self, task_t *task, const ident_t *to);
/* Sends self->out with a msgpack body (consumed) to the current sender on
   the clients endpoint; tqb_reply_body makes it a REPLY echoing the
   request's id. */
void tqb_send_body(tq_broker_t *self, msgpack_sbuffer *body);
void tqb_reply_body(tq_broker_t *self, msgpack_sbuffer *body);
/* REPLY {k1: v1[, k2: v2]} to the current sender, echoing id. */
void tqb_reply_counts(tq_broker_t *self, tq_str_t id, const char *k1,
                      uint64_t v1, const char *k2, uint64_t v2);
void tqb_pack_str(msgpack_packer *pk, const char *s);
void tqb_pack_uint_kv(msgpack_packer *pk, const char *key, uint64_t value);
/* A fresh msgpack buffer and packer. */
void tqb_body_init(msgpack_sbuffer *body, msgpack_packer *pk);

/* ---- tq_journal.c: the store journal, its commit thread, and the
   acknowledgements that wait for its commit ----

   The rule: an acknowledgement (SUBMITTED, REPLY to a QPUT) goes out only
   after the batch holding its writes is committed. A task may be
   dispatched, and its RESULT sent, before its SUBMIT is committed (as
   before, within one pass): if the broker dies before that commit, the
   client was never told "accepted" and submits again (at least once),
   and a DONE for a task the restarted broker never stored is a duplicate.
   The loop calls the store itself only under tq_store_lock (the commit
   thread holds it while it commits). */

/* Makes the journal of the broker's store (after the store is loaded). */
void tqb_journal_new(tq_broker_t *self);
/* Commits what is left and stops the commit thread; NULL-safe. */
void tqb_journal_destroy(tq_broker_t *self);
/* True if no batch is being committed: the loop may then call the store
   without waiting for the commit thread (it hands batches off itself). */
bool tqb_journal_idle(const tq_broker_t *self);

/* Writes what the store keeps of task after a move (from -> task->state).
   Called by tqb_task_move only. */
void tqb_journal_task(tq_broker_t *self, task_t *task, task_state_t from);
/* Forgets a task in the store. */
void tqb_journal_forget(tq_broker_t *self, const task_t *task);
/* A data-queue item put (its payload shared) or taken. */
void tqb_journal_item_add(tq_broker_t *self, const dq_t *dq,
                          const item_t *item);
void tqb_journal_item_remove(tq_broker_t *self, const dq_t *dq, uint64_t seq);
/* Deletes up to limit results that expired before now_ms (wall clock). */
void tqb_journal_purge(tq_broker_t *self, int64_t now_ms, int limit);
/* Acknowledges now, or after the commit that stores what is
   acknowledged. */
void tqb_ack(tq_broker_t *self, tq_str_t id, const ident_t *to, uint8_t command,
             uint64_t size);
/* Upper bounds (µs) of the commit latency buckets, TQB_COMMIT_BUCKETS. */
extern const uint32_t tqb_commit_bounds[TQB_COMMIT_BUCKETS];
/* Sends the acknowledgements whose batch is committed and hands the open
   batch to the commit thread if it is idle; never waits. False if a
   commit failed (self->commit_rc says how): nothing more may be
   acknowledged. */
bool tqb_commit(tq_broker_t *self);
/* tqb_commit, waiting until every batch is committed and acknowledged. */
bool tqb_commit_flush(tq_broker_t *self);
void tqb_acks_clear(tq_broker_t *self);
/* The ops in the open batch (a task's change of state in the same batch
   replaces its last one; see tq_journal.c s_task_op); 0 without a store. */
uint32_t tqb_journal_open_ops(const tq_broker_t *self);
/* tqb_ack's SUBMITTED of a new task for a client that opted in to folding
   (TQ_FEATURE_FOLD), with a store: sent at its commit as any, unless the
   task ended by then (its RESULT went to the client first, or goes in
   the same send). Never later than its commit. */
void tqb_ack_folded(tq_broker_t *self, const task_t *task, tq_str_t id,
                    const ident_t *to);

/* ---- tq_reply.c: SUBMITTED folded into RESULT (config.ack_fold_ms) ---- */

/* Holds the SUBMITTED of a new task for its submitter until the fold
   window ends. */
void tqb_fold_ack(tq_broker_t *self, const task_t *task);
/* Sends the held SUBMITTEDs that are due (all of them if all) for tasks
   not final yet, drops those whose task ended (its RESULT went to the
   submitter). Returns the next due time, INT64_MAX for none. */
int64_t tqb_release_folds(tq_broker_t *self, bool all);
/* ---- tq_lease.c: active or standby on a PostgreSQL store ---- */
typedef enum {
    TQB_LEASE_HELD, /* active, renewed within the renewal period */
    TQB_LEASE_STANDBY, /* standby: nothing may be handled */
    TQB_LEASE_WON, /* a standby just took the lease: recover, then it
                      is active */
    TQB_LEASE_LOST /* the lease (or the store) is lost: acknowledge and
                      dispatch nothing more; the loop returns */
} tqb_lease_t;
/* After the store opened (or failed to, with standby_start): takes the
   lease if it can. TQB_LEASE_WON (recover from the store) or
   TQB_LEASE_STANDBY; -1 with error set if the store failed. */
int tqb_lease_start(tq_broker_t *self, char *error, size_t errlen);
/* Renews the lease when due (an active broker), or tries to take it (a
   standby): called before anything is handled or dispatched, so that
   after a stall longer than the renewal period the lease is renewed
   before anything goes out. */
tqb_lease_t tqb_lease_tick(tq_broker_t *self);
/* Lets the lease lapse at once (a broker that stops cleanly, after its
   last commit), so a standby need not wait out the ttl. */
void tqb_lease_release(tq_broker_t *self);
/* The monotonic ms of the lease's next step (INT64_MAX without a lease). */
int64_t tqb_lease_deadline(const tq_broker_t *self);
/* A standby's answer to a decoded request: ERROR TQ_ESTANDBY. */
void tqb_lease_refuse(tq_broker_t *self, void *socket);
/* The role and the lease in the STATUS body: "role" and "lease". Returns
   the number of map entries packed (0 without a lease). */
int tqb_lease_status_entries(const tq_broker_t *self);
void tqb_lease_pack_status(const tq_broker_t *self, msgpack_packer *pk);
/* tq_broker.c: opens the store, and loads what it holds (at start, and
   when a standby takes the lease). 0, or -1 with error set. */
int tqb_store_open(tq_broker_t *self, char *error, size_t errlen);
int tqb_store_recover(tq_broker_t *self, char *error, size_t errlen);

/* ---- tq_task.c: the task table, lanes and the state machine ---- */

const char *tqb_intern(tq_broker_t *self, tq_str_t s);
queue_t *tqb_queue(tq_broker_t *self, tq_str_t name);
lane_t *tqb_lane(queue_t *queue, const char *task);
/* The lane of a queue and a task name (made if new): tqb_lane of
   tqb_queue and tqb_intern, the last one found remembered. */
lane_t *tqb_lane_of(tq_broker_t *self, tq_str_t queue, tq_str_t task);
void tqb_list_push(task_list_t *list, task_t *task, bool front);
void tqb_list_remove(task_list_t *list, task_t *task);
/* The id table: empty at start; tqb_tasks_free frees every task. */
void tqb_tasks_init(tq_broker_t *self);
void tqb_tasks_free(tq_broker_t *self);
/* The id table's longest chain (tests: how well ids spread). */
uint32_t tqb_tasks_longest_chain(const tq_broker_t *self);
/* A new task in TASK_NEW, in the table; payload moved in (a small one is
   copied into the task's own allocation, a large one kept as it is). */
task_t *tqb_task_new(tq_broker_t *self, const char *id, lane_t *lane,
                     zmq_msg_t *payload);
/* tqb_task_new for a SUBMIT read in place. id: its text; id_bytes: its
   TQB_ID_BIN bytes when the id came so (its text is then not parsed),
   else NULL. Its payload: size bytes at data, held by the message
   payload (moved in when kept as it is: a large one) or, when payload is
   NULL, borrowed (copied). */
task_t *tqb_task_new_bytes(tq_broker_t *self, tq_str_t id,
                           const uint8_t *id_bytes, lane_t *lane,
                           const void *data, size_t size, zmq_msg_t *payload);
task_t *tqb_task_find(tq_broker_t *self, tq_str_t id);
/* True if task (may be NULL) has this id: tqb_task_find's comparison
   without the table (a DONE names its child's first task). */
bool tqb_task_is(const task_t *task, tq_str_t id);
/* CURVE: the key of the task's submitter (interned), or NULL; and
   recording it (key interned, or NULL). */
const char *tqb_task_owner(const tq_broker_t *self, const task_t *task);
/* The task's error text (final or retrying), or NULL (borrowed: valid
   until it is set again); and setting it (copied; NULL or "": none). */
const char *tqb_task_error(const tq_broker_t *self, const task_t *task);
void tqb_task_set_error(tq_broker_t *self, task_t *task, const char *text);
void tqb_task_set_owner(tq_broker_t *self, task_t *task, const char *key);
/* The task's id as text: its own, or a rendering of a binary id valid
   until 8 more renderings on this thread (borrowed: use it at once). */
const char *tqb_task_id(const task_t *task);
/* tqb_task_id as a tq_str_t (no strlen of a rendered binary id). */
tq_str_t tqb_task_id_str(const task_t *task);
/* Puts the task's id into out: as its 16 bytes when `binary` and the id
   is binary (no render to text), else as text (sent as bin when `binary`
   and it has that form, PROTOCOL.md 3). */
void tqb_out_id(tq_msg_t *out, const task_t *task, bool binary);
/* The task with this binary id, or NULL (tqb_task_find without a parse). */
task_t *tqb_task_find_bin(tq_broker_t *self, const uint8_t bin[TQB_ID_BIN]);
/* tqb_task_is for a decoded message's id: by its bytes when it came as a
   bin (no parse of the text decode made of them). */
bool tqb_task_is_msg(const task_t *task, const tq_msg_t *msg);
/* The text of a binary id: its 32 lowercase hex digits, NUL-ended. */
void tqb_id_render(char text[2 * TQB_ID_BIN + 1],
                   const uint8_t bin[TQB_ID_BIN]);
/* The task's payload in msg (initialised here; the caller closes it):
   shared or copied when in memory, read back when only the store has it.
   0, or a tq_err_t (TQ_ECORRUPT: the stored copy failed its checksum or
   is missing) with msg empty and *why saying what (static text). */
int tqb_task_payload(tq_broker_t *self, const task_t *task, zmq_msg_t *msg,
                     const char **why);
/* The payload's bytes when the task holds them itself (inline or
   copied; none counts, as 0 bytes): true with *data and *size (borrowed,
   until the task changes); false when they are a message's or only the
   store's (tqb_task_payload). */
bool tqb_task_payload_bytes(const task_t *task, const void **data,
                            size_t *size);
/* The payload's bytes when in memory, else NULL; its size either way. */
const void *tqb_task_payload_data(const task_t *task);
size_t tqb_task_payload_size(const task_t *task);
/* Records the submitter, answered when the task ends. */
void tqb_task_set_client(tq_broker_t *self, task_t *task, const ident_t *from);
/* The submitter of a task not answered yet (borrowed: never
   tqb_ident_clear it; valid until the task changes); size 0: none. */
ident_t tqb_task_client(tq_broker_t *self, const task_t *task);
/* Its last dispatch (monotonic ms), 0: never; and recording it. */
int64_t tqb_task_started_ms(const task_t *task);
void tqb_task_set_started(task_t *task, int64_t now_ms);
/* Gives the free pages of malloc's heaps back to the system
   (malloc_trim): after paging out, and a few times once the loop is quiet
   after a burst (tqb_commit), when the messages it queued are sent. */
#define TQB_TRIMS_AFTER_BURST 3
void tqb_trim(tq_broker_t *self);
/* A batch committed that stored the first count tasks of page_out: their
   arguments may leave memory (the store keeps them); the others stay
   listed for a later batch. */
void tqb_task_committed(tq_broker_t *self, uint32_t count);
/* With a store that reads results back: lists a SUCCESS task whose
   result was delivered, so that its value leaves memory once the batch
   that stores it commits (read back when asked for). */
void tqb_task_page_out_result(tq_broker_t *self, task_t *task);
/* The only way a task changes state: checks the move against the table
   of legal moves (a programmer error aborts), takes it out of its
   container, puts it into the new one, keeps the counts and journals what
   the store keeps. */
void tqb_task_move(tq_broker_t *self, task_t *task, task_state_t to,
                   const task_move_t *how);
bool tqb_task_legal(task_state_t from, task_state_t to);
const char *tqb_task_state_name(task_state_t state);
/* The state a task has on the wire (tq_state_t). */
int tqb_task_wire_state(const task_t *task);
bool tqb_task_is_final(const task_t *task);
/* Ends a task: records the outcome, keeps the value (moved, may be NULL),
   moves it to its final state and answers the submitter and waiters. */
void tqb_task_final(tq_broker_t *self, task_t *task, task_state_t state,
                    int code, const char *error, zmq_msg_t *value);
/* Forgets a final task: its container, the table, the store. */
void tqb_task_forget(tq_broker_t *self, task_t *task);
void tqb_task_free(tq_broker_t *self, task_t *task);
/* Adds a client to those told when the task ends, once. */
void tqb_task_add_waiter(tq_broker_t *self, task_t *task, const ident_t *from);
/* Moves SCHEDULED and RETRY tasks whose time came into their lanes. */
void tqb_release_due(tq_broker_t *self);
/* Forgets results whose TTL ran out. */
void tqb_expire_results(tq_broker_t *self);
/* Cancels a task that is not final (a running one's child is killed). */
void tqb_cancel(tq_broker_t *self, task_t *task, const char *why);
/* Cancels the SCHEDULED and RETRY tasks of a queue; returns how many. */
uint32_t tqb_cancel_delayed(tq_broker_t *self, queue_t *queue, const char *why);
/* The earliest deadline of the delayed tasks, or INT64_MAX. */
int64_t tqb_next_due(const tq_broker_t *self);

/* ---- tq_results.c: the window of delivered results (no store) ----

   A result counts for TQB_RESULT_COST (its record and id, estimated) plus
   its value's bytes, so that many small results are bounded too. */
#define TQB_RESULT_COST 128

/* After a final task's RESULT went out (tqb_task_final): sent to that
   many clients, failed (dropped, or gone) for that many. A SUCCESS sent
   to at least one client and failed for none, without a store, joins
   the window; the oldest results beyond config.result_window are then
   forgotten as if their TTL had ended (never task itself), at once, or
   once the open batches are sent (a RESULT in one of them may still
   fail). */
void tqb_results_sent(tq_broker_t *self, task_t *task, uint32_t sent,
                      uint32_t failed);
/* The window's size in bytes; 0 with a store (no window). */
uint64_t tqb_results_limit(const tq_broker_t *self);
/* Takes a task out of the window, if in it (leaving its final state). */
void tqb_results_leave(tq_broker_t *self, task_t *task);
/* Forgets the oldest results while the window is over its size (the
   newest stays). */
void tqb_results_trim(tq_broker_t *self);

/* ---- tq_dispatch.c: peers, dispatch, credit, stealing, host liveness ---- */

peer_t *tqb_peer(tq_broker_t *self); /* the current sender */
/* The peers table's key functions: an ident_t's bytes (self->peers is
   keyed by &peer->ident, looked up with a view of the sender's id). */
size_t tqb_ident_hash(const void *ident);
int tqb_ident_cmp(const void *a, const void *b);
void tqb_peers_index_free(tq_broker_t *self);
peer_t *tqb_peer_new(tq_broker_t *self, peer_role_t role);
/* Forgets a peer; a child's tasks are queued again first (the first one
   charged with the death when lost). */
void tqb_peer_remove(tq_broker_t *self, peer_t *peer, bool lost, int code,
                     const char *why);
void tqb_peer_free(peer_t *peer);
/* A BATCH to child was refused with err, after its TASKs went back as
   refused lone TASKs do: the child is marked as a refused lone send
   marks it (EHOSTUNREACH), or removed at the next tqb_batch_flush
   (another error; never at once: the dispatch in progress holds it). */
void tqb_child_refused(tq_broker_t *self, peer_t *child, int err);
/* Removes the children tqb_child_refused left for removal. */
void tqb_remove_refused(tq_broker_t *self);
bool tqb_peer_serves(const peer_t *peer, const lane_t *lane);
/* Lists a child among its queues' servers (after READY), or takes it
   off (before its lists change or it goes). */
void tqb_peer_serve(tq_broker_t *self, peer_t *child);
void tqb_peer_unserve(tq_broker_t *self, peer_t *child);
/* Keeps multi_holders, the list of holders of 2+ and the queues' hungry
   arrays right as a child's held count changes (from `before`). */
void tqb_peer_held_changed(tq_broker_t *self, peer_t *child,
                           uint32_t before);
bool tqb_lane_served(tq_broker_t *self, const lane_t *lane);
peer_t *tqb_supervisor_of(tq_broker_t *self, const peer_t *child);
/* Gives waiting tasks to children with free credit, then asks holders to
   give back unstarted tasks for idle children. */
void tqb_dispatch(tq_broker_t *self);
/* Drops hosts whose supervisor was silent for the liveness. */
void tqb_check_hosts(tq_broker_t *self);

/* ---- handlers: tq_on_client.c, tq_on_worker.c, tq_dataq.c,
   tq_status.c. One signature; peer is the sender on the workers
   endpoint once it announced itself, else NULL. ---- */

typedef void(tqb_handler_fn)(tq_broker_t *self, const tq_msg_t *msg,
                             peer_t *peer);

tqb_handler_fn tqb_on_submit, tqb_on_get, tqb_on_cancel, tqb_on_retry,
    tqb_on_purge, tqb_on_ping, tqb_on_ignore;
tqb_handler_fn tqb_on_status, tqb_on_failed;
tqb_handler_fn tqb_on_tasks, tqb_on_inspect;
tqb_handler_fn tqb_on_qput, tqb_on_qget, tqb_on_qsize;
tqb_handler_fn tqb_on_ready, tqb_on_done, tqb_on_returned, tqb_on_disconnect,
    tqb_on_heartbeat, tqb_on_lost;

/* Data queues. */
dq_t *tqb_dq(tq_broker_t *self, tq_str_t name, bool create);
item_t *tqb_dq_append(tq_broker_t *self, dq_t *dq, zmq_msg_t *item);
/* Ends the QGET waits that ran out; the earliest deadline left. */
int64_t tqb_expire_getters(tq_broker_t *self);
void tqb_dq_free_all(tq_broker_t *self);

/* A decoded message's id as its TQB_ID_BIN bytes when it has them (it
   came as a bin, or as 32 lowercase hex digits the decoder parsed), NULL
   for any other id: what tqb_task_find_bin looks up without a parse. */
static inline const uint8_t *
tqb_msg_id_bin(const tq_msg_t *msg)
{
    if (msg->id_bytes)
        return msg->id_bytes;
    return msg->id_text_bin ? msg->id_text_bytes : NULL;
}

/* Two routing ids' bytes, size each, are equal: libzmq's own ids (5
   bytes) by two compares, without a call of memcmp (every message asks
   it of its sender, every reply of the open batches). */
static inline bool
tqb_ident_bytes_eq(const uint8_t *a, const uint8_t *b, size_t size)
{
    if (size == 5) {
        uint32_t x, y;
        memcpy(&x, a + 1, 4);
        memcpy(&y, b + 1, 4);
        return a[0] == b[0] && x == y;
    }
    return memcmp(a, b, size) == 0;
}

/* tqb_ident_data, inline where every message asks it */
static inline const uint8_t *
tqb_ident_bytes(const ident_t *ident)
{
    return ident->heap ? ident->heap : ident->bytes;
}

/* A child belongs in its queues' hungry arrays: it serves them, has
   credit left (tasks it may still run after a cancel are not counted:
   dispatch checks them) and is not marked unreachable. */
static inline bool
tqb_peer_hungry(const peer_t *child)
{
    return child->serving && !child->unreachable_ms &&
        child->held < child->credit;
}

/* tqb_peer_held_changed, inline where every move of a task to or from a
   child asks it */

static inline void
tqb_peer_held_note(tq_broker_t *self, peer_t *child, uint32_t before)
{
    if ((before >= 2) != (child->held >= 2) ||
        child->hungry != tqb_peer_hungry(child))
        tqb_peer_held_changed(self, child, before);
}

#endif
