/* tq_broker.c - the broker loop: clients submit and fetch, worker children
   pull with credit, supervisors heartbeat and report dead children. One
   thread, no locks; payloads are never decoded (small ones are copied
   into their task, large ones kept as the zmq_msg_t they came in). This
   file holds the loop, the table of commands and who may send them, the
   endpoints, and recovery from the store; the rest lives by name in
   tq_task.c (tasks and their states), tq_dispatch.c (peers, dispatch,
   liveness), tq_on_client.c, tq_on_worker.c, tq_dataq.c, tq_status.c,
   tq_reply.c and tq_journal.c. */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tq_broker_core.h"
#include "tq_curve.h"
#include "tq_log.h"

#define BATCH 512 /* messages drained per socket per pass */
#define CHECK_MS 100 /* host liveness checks */
#define HOUSEKEEPING_MS 1000 /* store purge and disk limit checks */
#define MAX_MESSAGE (64 << 20) /* ZMQ_MAXMSGSIZE on both endpoints */
#define LOG_BURST 20 /* log lines about bad input per second */
#define STALL_MS 500 /* a pass longer than this is a stall */
/* leadable: the broker's thread looks again this often while a caller
   leads the loop */
#define PARK_MS 1
#define S_CLIENT_RCVHWM 2048 /* messages of one client waiting for a pass */

/* ---- clocks, memory, logging ---- */

int64_t
tqb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
tqb_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Out of memory in the broker is fatal: one path, not a code per call. */
void *
tqb_alloc(size_t size)
{
    void *p = calloc(1, size);
    if (!p) {
        tq_log_error("out of memory");
        abort();
    }
    return p;
}

char *
tqb_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = tqb_alloc(n);
    memcpy(p, s, n);
    return p;
}

/* At most LOG_BURST lines a second, so a flood of garbage cannot flood
   the log too. */
void
tqb_warn(tq_broker_t *self, const char *format, ...)
{
    if (self->config.quiet)
        return;
    if (self->now_ms - self->log_window_ms >= 1000) {
        if (self->log_count > LOG_BURST)
            tq_log_warning("(%d more lines suppressed)",
                           self->log_count - LOG_BURST);
        self->log_window_ms = self->now_ms;
        self->log_count = 0;
    }
    if (++self->log_count > LOG_BURST)
        return;
    va_list ap;
    va_start(ap, format);
    tq_log_v(TQ_LOG_WARNING, format, ap);
    va_end(ap);
}

/* ---- the commands ---- */

/* A handler per command, and what it needs of its sender beyond what the
   protocol model says (tq_proto_command: endpoint and sender roles). */
enum {
    ANNOUNCES = 0x1, /* may come from a peer that never announced itself:
                        it announces it (READY: a child, HEARTBEAT: a
                        supervisor) */
    ANYONE = 0x2, /* from any peer, announced or not (PING, PONG) */
    ENVELOPE = 0x4 /* BATCH: no handler, s_drain opens it (s_on_batch);
                      its entry admits it on the workers endpoint */
};

typedef struct {
    tqb_handler_fn *fn;
    uint8_t flags;
} s_command_t;

static const s_command_t s_commands[256] = {
    [TQ_CMD_SUBMIT] = {tqb_on_submit, 0},
    [TQ_CMD_GET] = {tqb_on_get, 0},
    [TQ_CMD_STATUS] = {tqb_on_status, 0},
    [TQ_CMD_CANCEL] = {tqb_on_cancel, 0},
    [TQ_CMD_RETRY] = {tqb_on_retry, 0},
    [TQ_CMD_PURGE] = {tqb_on_purge, 0},
    [TQ_CMD_FAILED] = {tqb_on_failed, 0},
    [TQ_CMD_QPUT] = {tqb_on_qput, 0},
    [TQ_CMD_QGET] = {tqb_on_qget, 0},
    [TQ_CMD_QSIZE] = {tqb_on_qsize, 0},
    [TQ_CMD_TASKS] = {tqb_on_tasks, 0},
    [TQ_CMD_INSPECT] = {tqb_on_inspect, 0},
    [TQ_CMD_PING] = {tqb_on_ping, ANYONE},
    [TQ_CMD_PONG] = {tqb_on_ignore, ANYONE},
    [TQ_CMD_READY] = {tqb_on_ready, ANNOUNCES},
    [TQ_CMD_DONE] = {tqb_on_done, 0},
    [TQ_CMD_RETURNED] = {tqb_on_returned, 0},
    [TQ_CMD_DISCONNECT] = {tqb_on_disconnect, 0},
    [TQ_CMD_HEARTBEAT] = {tqb_on_heartbeat, ANNOUNCES},
    [TQ_CMD_LOST] = {tqb_on_lost, 0},
    [TQ_CMD_BATCH] = {NULL, ENVELOPE},
};

/* The protocol model by command, made once: tq_proto_command looks a
   command up in a list, and every message asks it twice (its payload
   rule, then who may send it). */
static const tq_proto_command_t *s_models[256];
static pthread_once_t s_models_once = PTHREAD_ONCE_INIT;

static void
s_models_init(void)
{
    size_t count;
    const tq_proto_command_t *all = tq_proto_commands(&count);
    for (size_t i = 0; i < count; i++)
        s_models[all[i].command] = &all[i];
}

/* Checks that the sender may send this command here: the endpoint, then
   (workers endpoint) the role it announced. Returns the handler, or NULL
   after answering ERROR: TQ_EPROTO for a command that does not belong on
   this endpoint, TQ_ESTATE for one its sender may not send (yet). */
static const s_command_t *
s_admit(tq_broker_t *self, void *socket, peer_t **peer_p)
{
    const tq_msg_t *msg = &self->in;
    const tq_proto_command_t *model = s_models[msg->command];
    const s_command_t *command = &s_commands[msg->command];
    bool workers = socket == self->workers;
    unsigned senders =
        workers ? (TQ_FROM_CHILD | TQ_FROM_SUPERVISOR) : TQ_FROM_CLIENT;
    char text[160];
    *peer_p = NULL;
    unsigned endpoint = workers ? TQ_ENDPOINT_WORKERS : TQ_ENDPOINT_CLIENTS;
    if (!model || !(command->fn || (command->flags & ENVELOPE)) ||
        !(model->from & senders) || !(model->endpoint & endpoint)) {
        snprintf(text, sizeof text, "%s is not valid on the %s endpoint",
                 tq_proto_command_name(msg->command),
                 workers ? "workers" : "clients");
        self->counters.errors++;
        tqb_warn(self, "%s", text);
        tqb_reply_error(self, socket, TQ_EPROTO, text, msg->id);
        return NULL;
    }
    if (!workers || (command->flags & ANYONE))
        return command;
    peer_t *peer = tqb_peer(self);
    unsigned role = !peer          ? 0
        : peer->role == PEER_CHILD ? TQ_FROM_CHILD
                                   : TQ_FROM_SUPERVISOR;
    if (peer ? (model->from & role) != 0 : (command->flags & ANNOUNCES) != 0) {
        *peer_p = peer;
        return command;
    }
    if (peer)
        snprintf(text, sizeof text, "%s from a %s",
                 tq_proto_command_name(msg->command),
                 peer->role == PEER_CHILD ? "worker child (it sent READY)"
                                          : "supervisor (it sent HEARTBEAT)");
    else
        snprintf(text, sizeof text,
                 "%s from a peer that never announced "
                 "itself (READY or HEARTBEAT first)",
                 tq_proto_command_name(msg->command));
    self->counters.errors++;
    tqb_warn(self, "%s", text);
    tqb_reply_error(self, socket, TQ_ESTATE, text, msg->id);
    return NULL;
}

/* Under CURVE, who sent the message: the ZAP handler's user id
   ("client:KEY", "admin:KEY", "worker:KEY") on every message of the
   connection (tq_auth.c). */
static void
s_identify(tq_broker_t *self)
{
    self->in_key = NULL;
    self->in_admin = false;
    if (!self->auth)
        return;
    const char *user = zmq_msg_gets(&self->frames.header, "User-Id");
    const char *colon = user ? strchr(user, ':') : NULL;
    if (!colon) {
        /* no ZAP handshake under CURVE: the in-process endpoint (the
           program embedding the broker, its HTTP server), trusted as an
           operator; every TCP connection went through ZAP */
        self->in_admin = true;
        return;
    }
    self->in_admin = strncmp(user, "admin:", 6) == 0;
    self->in_key = tqb_intern(self, tq_str(colon + 1));
}

/* Under CURVE a worker key acts for one host, and a host has one key: the
   name a key announced first (READY or HEARTBEAT) is bound to it both
   ways. Another name from that key, or that name from another key, is
   refused (TQ_EDENIED, counted). */
static bool
s_host_bound(tq_broker_t *self, void *socket)
{
    const tq_msg_t *msg = &self->in;
    if (socket != self->workers ||
        (msg->command != TQ_CMD_READY && msg->command != TQ_CMD_HEARTBEAT))
        return true;
    const char *host = tqb_intern(self, msg->host);
    const char *bound = zhashx_lookup(self->key_hosts, self->in_key);
    const char *owner = zhashx_lookup(self->host_keys, host);
    if (!bound && !owner) {
        zhashx_insert(self->key_hosts, self->in_key, (void *) host);
        zhashx_insert(self->host_keys, host, (void *) self->in_key);
        return true;
    }
    if (bound == host)
        return true;
    char text[TQ_PROTO_MAX_NAME * 2 + 64];
    if (bound)
        snprintf(text, sizeof text,
                 "this worker key acts for host %s, not %s", bound, host);
    else
        snprintf(text, sizeof text,
                 "host %s belongs to another worker key", host);
    self->counters.errors++;
    tqb_warn(self, "%s %s", tq_proto_command_name(msg->command), text);
    tqb_reply_error(self, socket, TQ_EDENIED, text, msg->id);
    return false;
}

/* Refuses the message in self->frames if its payload is over max-message
   (ERROR TQ_EINVAL): only over inproc, or from the local client, where
   libzmq does not apply ZMQ_MAXMSGSIZE: a child could never receive it.
   True if refused. */
static bool
s_too_big(tq_broker_t *self, void *socket)
{
    size_t payload = self->in_size;
    if (payload <= (size_t)self->config.max_message)
        return false;
    char text[160];
    snprintf(text, sizeof text,
             "%s payload of %zu bytes is over max-message (%lld)",
             tq_proto_command_name(self->in.command), payload,
             (long long)self->config.max_message);
    self->counters.malformed++;
    tqb_warn(self, "%s", text);
    tqb_reply_error(self, socket, TQ_EINVAL, text, self->in.id);
    return true;
}

/* Handles the message in self->in and self->frames, whose decoding
   returned rc (with reason): a lone message, or a sub-message of a
   BATCH. */
static void
s_handle(tq_broker_t *self, void *socket, const char *endpoint, int rc,
         const char *reason)
{
    if (rc != TQ_OK) {
        /* the id, when it decoded before the fault, names the request
           its sender waits on */
        self->counters.malformed++;
        tqb_warn(self, "malformed message on the %s endpoint: %s", endpoint,
                 reason ? reason : "?");
        tqb_reply_error(self, socket,
                        rc == TQ_EVERSION ? TQ_EVERSION : TQ_EPROTO,
                        reason ? reason : "malformed message", self->in.id);
        return;
    }
    if (s_too_big(self, socket))
        return;
    if (self->lease.enabled && !self->lease.active) {
        tqb_lease_refuse(self, socket); /* a standby */
        return;
    }
    peer_t *peer;
    const s_command_t *command = s_admit(self, socket, &peer);
    if (!command)
        return;
    self->in_socket = socket;
    s_identify(self);
    if (self->in_key && !s_host_bound(self, socket))
        return;
    if (self->in.command == TQ_CMD_SUBMIT) {
        /* whether its replies may travel in BATCHes (PROTOCOL.md 5.9) */
        tqb_batch_peer(self, &self->in_from,
                       (self->in.features & TQ_FEATURE_BATCH) != 0);
    }
    command->fn(self, &self->in, peer);
}

/* The payload of a BATCH's sub-message (data, size bytes inside the
   batch's frame): a SUBMIT reads its arguments where they are (its task
   copies them); a handler that keeps a payload as a message (QPUT's
   item) gets a message of its own. TQ_OK, or TQ_EPROTO with *reason when
   out of memory. */
static int
s_sub_payload(tq_broker_t *self, const void *data, size_t size, bool has,
              const char **reason)
{
    self->in_data = data;
    self->in_size = size;
    self->in_msg = NULL;
    if (!has || self->in.command == TQ_CMD_SUBMIT)
        return TQ_OK;
    zmq_msg_t *payload = &self->frames.payload;
    zmq_msg_close(payload);
    if (zmq_msg_init_size(payload, size) != 0) {
        zmq_msg_init(payload);
        self->in_size = 0;
        *reason = "out of memory";
        return TQ_EPROTO;
    }
    if (size)
        memcpy(zmq_msg_data(payload), data, size);
    self->in_data = zmq_msg_data(payload);
    self->in_msg = payload;
    return TQ_OK;
}

/* Whether the BATCH in self->in may be opened (PROTOCOL.md 5.9): from
   any client; on the workers endpoint only from a peer that announced
   itself as a child (s_admit answers the others, as for any command
   their sender may not send). A standby opens it: each sub-message is
   refused on its own, naming its id. */
static bool
s_batch_admitted(tq_broker_t *self, void *socket)
{
    if (socket != self->workers || (self->lease.enabled && !self->lease.active))
        return true;
    peer_t *peer;
    return s_admit(self, socket, &peer) != NULL;
}

/* Handles a BATCH from a client or a worker child (PROTOCOL.md 5.9):
   each sub-message as if it had come alone from the same sender, in
   order, its payload read in place (s_sub_payload); a sub-message its
   sender may not send is refused by s_handle as a lone one would be.
   Returns how many sub-messages it held (1 for a batch whose framing is
   broken: one ERROR). */
static int
s_on_batch(tq_broker_t *self, void *socket, const char *endpoint)
{
    zmq_msg_t frame; /* the sub-messages point into it */
    zmq_msg_init(&frame);
    zmq_msg_move(&frame, &self->frames.payload);
    tq_batch_reader_t r;
    tq_batch_reader_init(&r, &self->in, zmq_msg_data(&frame),
                         zmq_msg_size(&frame));
    self->counters.batches_in++;
    int count = 0;
    for (;;) {
        const char *reason = NULL;
        const void *data = NULL;
        size_t size = 0;
        bool has = false;
        int rc = tq_batch_next(&r, &self->in, &data, &size, &has, &reason);
        if (rc == TQ_BATCH_END)
            break;
        count++;
        if (rc == TQ_OK)
            rc = s_sub_payload(self, data, size, has, &reason);
        else
            s_sub_payload(self, NULL, 0, false, &reason);
        s_handle(self, socket, endpoint, rc, reason);
    }
    self->counters.batched_in += (uint64_t)count;
    if (socket == self->workers) {
        self->counters.child_batches_in++;
        self->counters.child_batched_in += (uint64_t)count;
    }
    zmq_msg_close(&frame);
    /* nothing may read the sub-messages' payloads past the frame */
    self->in_data = NULL;
    self->in_size = 0;
    self->in_msg = NULL;
    return count;
}

void
tqb_received(tq_broker_t *self)
{
    zmq_msg_t *identity = &self->frames.identity;
    size_t size = zmq_msg_size(identity);
    if (size > 255)
        size = 255;
    self->in_from = (ident_t){.size = (uint8_t)size};
    if (size > TQB_IDENT_INLINE)
        self->in_from.heap = (uint8_t *)zmq_msg_data(identity);
    else
        memcpy(self->in_from.bytes, zmq_msg_data(identity), size);
    self->in_msg = &self->frames.payload;
    self->in_data = zmq_msg_data(self->in_msg);
    self->in_size = zmq_msg_size(self->in_msg);
}

/* Decodes the received header into self->in, and checks that a payload
   frame came exactly when the command has one (tq_wire_decode, with the
   model table). TQ_OK, TQ_EVERSION or TQ_EPROTO with *reason. */
static int
s_decode(tq_broker_t *self, const char **reason)
{
    zmq_msg_t *header = &self->frames.header;
    int rc = tq_proto_decode(&self->in, zmq_msg_data(header),
                             zmq_msg_size(header), reason);
    if (rc != TQ_OK)
        return rc;
    /* decoded: its command is in the model */
    if (s_models[self->in.command]->payload != self->frames.has_payload) {
        *reason = self->frames.has_payload ? "unexpected payload frame"
                                           : "missing payload frame";
        return TQ_EPROTO;
    }
    return TQ_OK;
}

/* Receives and handles up to max messages from one socket (a BATCH
   counts its sub-messages). Returns how many were read. */
static int
s_drain(tq_broker_t *self, void *socket, const char *endpoint, int max)
{
    int count = 0;
    bool *quiet = &self->quiet[socket == self->clients];
    *quiet = false;
    while (count < max && !self->stopping) {
        int rc = tq_wire_recv(socket, &self->frames, true, ZMQ_DONTWAIT);
        if (rc == -1) {
            /* after whatever the messages handled here sent */
            *quiet = errno == EAGAIN;
            break;
        }
        count++;
        tqb_received(self);
        const char *reason = NULL;
        if (rc == TQ_OK)
            rc = s_decode(self, &reason);
        else {
            reason = "wrong number of frames";
            tqb_out(self, 0); /* nothing decoded: no id to echo */
            self->in.id = (tq_str_t){0};
        }
        if (self->in_from.size == 0)
            continue; /* nobody to answer or to blame */
        if (rc == TQ_OK && self->in.command == TQ_CMD_BATCH) {
            if (s_batch_admitted(self, socket))
                count += s_on_batch(self, socket, endpoint) - 1;
            continue;
        }
        s_handle(self, socket, endpoint, rc, reason);
    }
    self->received += (uint64_t)count;
    return count;
}

/* A pass that took longer than STALL_MS (SIGSTOP, a slow disk) kept the
   broker from hearing its hosts: that time is credited to every
   supervisor, so a stall of the broker's own never makes a host look
   silent. `slept` is the poll timeout, time the broker was waiting. */
static void
s_credit_stall(tq_broker_t *self, int64_t since, long slept)
{
    int64_t stalled = self->now_ms - since - slept;
    if (stalled < STALL_MS)
        return;
    for (peer_t *sup = self->supervisors; sup; sup = sup->next)
        if (sup->last_seen_ms < self->now_ms)
            sup->last_seen_ms += stalled;
    tqb_debug(self, "stalled %lld ms: credited to every host",
              (long long)stalled);
}

/* ---- recovery ---- */

/* Rebuilds one stored task: waiting and delayed ones wait again, running
   ones are queued again (their next dispatch is a new attempt), final ones
   keep their result until its TTL, dead letters stay dead. */
static void
s_recover(const tq_store_task_t *row, void *arg)
{
    tq_broker_t *self = arg;
    if (!tq_proto_valid_id(row->id, strlen(row->id)) ||
        !tq_proto_valid_name(row->task, strlen(row->task)) ||
        !tq_proto_valid_name(row->queue, strlen(row->queue)) ||
        row->priority >= TQB_PRIORITIES || row->state >= TQ_STATE_COUNT_) {
        tqb_warn(self, "store: skipping a damaged row (id %.64s)", row->id);
        return;
    }
    if (tqb_task_find(self, tq_str(row->id)))
        return;
    int64_t wall = tqb_wall_ms();
    if (TQ_STATE_IS_FINAL(row->state) && row->expires_ms &&
        row->expires_ms <= wall)
        return; /* expired while the broker was down; purged later */
    bool final = TQ_STATE_IS_FINAL(row->state);
    /* a final task keeps its value (a dead letter its arguments); the
       others their arguments */
    const void *keep = row->args;
    size_t size = row->args_size;
    if (final && row->state != TQ_STATE_FAILURE) {
        keep = row->state == TQ_STATE_SUCCESS ? row->result : NULL;
        size = row->state == TQ_STATE_SUCCESS ? row->result_size : 0;
    }
    zmq_msg_t payload;
    zmq_msg_init_size(&payload, keep ? size : 0);
    if (keep && size)
        memcpy(zmq_msg_data(&payload), keep, size);
    queue_t *queue = tqb_queue(self, tq_str(row->queue));
    task_t *task = tqb_task_new(
        self, row->id, tqb_lane(queue, tqb_intern(self, tq_str(row->task))),
        &payload);
    zmq_msg_close(&payload);
    task->rec.priority = (uint8_t)row->priority;
    task->rec.time_limit_ms = row->time_limit_ms;
    task->rec.attempt = row->attempt;
    task->rec.seq = row->seq;
    if (row->seq > self->seq)
        self->seq = row->seq;
    task->rec.retries = row->retries;
    task->rec.backoff_ms = row->backoff_ms ? row->backoff_ms : 1000;
    task->rec.failures = row->failures;
    /* the key that submitted it (tenants): interned, so that the check is
       the pointer comparison a live submission gets */
    tqb_task_set_owner(self, task,
                       row->owner && *row->owner
                           ? tqb_intern(self, tq_str(row->owner))
                           : NULL);
    self->recovered++;
    task_move_t how = {.restore = true};
    if (row->corrupt && !final) {
        /* its arguments failed their checksum: it must not run on them;
           it fails with the reason, a dead letter an operator sees */
        char text[TQ_PROTO_MAX_ERROR];
        snprintf(text, sizeof text, "stored task damaged: %s",
                 row->corrupt_reason ? row->corrupt_reason
                                     : "checksum mismatch");
        self->corrupt++;
        tqb_warn(self, "store: task %s not run: %s", row->id, text);
        tqb_task_final(self, task, TASK_FAILURE, TQ_ECORRUPT, text, NULL);
        return;
    }
    if (final) {
        task->rec.code = row->code;
        tqb_task_set_error(self, task, row->error);
        if (row->expires_ms)
            how.expires_ms = self->now_ms + (row->expires_ms - wall);
        tqb_task_move(self, task,
                      row->state == TQ_STATE_SUCCESS       ? TASK_SUCCESS
                          : row->state == TQ_STATE_FAILURE ? TASK_FAILURE
                                                           : TASK_CANCELLED,
                      &how);
        return;
    }
    /* a countdown, a retry backoff or a loss pause waits out what is
       left of it (wall-clock time: the monotonic clock starts again) */
    if (row->due_ms > wall) {
        /* the clock of now, not the pass's: recovery takes time */
        how.due_ms = tqb_now() + (row->due_ms - wall);
        tqb_task_move(self, task,
                      row->state == TQ_STATE_RETRY ? TASK_RETRY
                                                   : TASK_SCHEDULED,
                      &how);
        return;
    }
    tqb_task_move(self, task, TASK_WAITING, &how);
}

/* Rebuilds one stored data-queue item (rows come by queue, in order); a
   damaged one is left out, loudly. */
static void
s_recover_item(const tq_store_item_t *row, void *arg)
{
    tq_broker_t *self = arg;
    if (row->corrupt || !tq_proto_valid_name(row->queue, strlen(row->queue)) ||
        tq_proto_check_payload(row->data, row->size, false, NULL) != TQ_OK) {
        self->corrupt++;
        tqb_warn(self, "store: a damaged item of queue %.255s left out: %s",
                 row->queue,
                 row->corrupt_reason ? row->corrupt_reason : "malformed");
        return;
    }
    dq_t *dq = tqb_dq(self, tq_str(row->queue), true);
    dq->maxsize = row->maxsize;
    zmq_msg_t item;
    zmq_msg_init_size(&item, row->size);
    memcpy(zmq_msg_data(&item), row->data, row->size);
    dq->next_seq = row->seq;
    tqb_dq_append(self, dq, &item);
    zmq_msg_close(&item);
    self->recovered_items++;
}

/* Opens the store (a directory, or a PostgreSQL URL). */
int
tqb_store_open(tq_broker_t *self, char *error, size_t errlen)
{
    const char *where = self->config.store_url ? self->config.store_url
                                               : self->config.data_dir;
    bool url = tq_store_is_url(where);
    if (!url && mkdir(where, 0700) != 0 && errno != EEXIST) {
        snprintf(error, errlen, "cannot create the data directory %s: %s",
                 where, strerror(errno));
        return -1;
    }
    tq_store_options_t options = {.sync = (tq_sync_t) self->config.sync,
                                  .allow_new = self->config.new_store};
    /* a renewal or commit that the server's TCP does not acknowledge
       within the lease's length fails: the broker demotes itself instead
       of hanging on a cut link while another takes over */
    options.link_timeout_ms = self->config.lease_ttl_ms
        ? self->config.lease_ttl_ms
        : TQ_BROKER_LEASE_TTL_MS;
    self->store = tq_store_new(where, &options, error, errlen);
    if (!self->store)
        return -1;
    /* the store in messages, without a password */
    if (url)
        snprintf(self->store_name, sizeof self->store_name,
                 "the PostgreSQL store");
    else
        snprintf(self->store_name, sizeof self->store_name,
                 "the store in %.250s", where);
    return 0;
}

/* Loads what the store holds: at start, or when a standby took the
   lease. */
int
tqb_store_recover(tq_broker_t *self, char *error, size_t errlen)
{
    const char *where =
        self->config.store_url ? self->config.store_url : self->config.data_dir;
    bool url = tq_store_is_url(where);
    /* before the load: a damaged task found there is failed, a write */
    tqb_journal_new(self);
    int64_t started = tqb_now();
    if (tq_store_load(self->store, s_recover, self) != TQ_OK ||
        tq_store_load_item_rows(self->store, s_recover_item, self) !=
            TQ_OK) {
        snprintf(error, errlen, "cannot read %s: %s", self->store_name,
                 tq_store_error(self->store));
        return -1;
    }
    if (self->recovered || self->recovered_items)
        tq_log_info("recovered %llu tasks and %llu queue items from "
                    "%s in %lld ms",
                (unsigned long long) self->recovered,
                (unsigned long long) self->recovered_items,
                url ? "the PostgreSQL store" : where,
                (long long) (tqb_now() - started));
    if (self->corrupt)
        tq_log_error("%llu stored tasks or items failed their "
                     "checksum: failed TQ_ECORRUPT or left out (see above)",
                (unsigned long long) self->corrupt);
    self->disk_bytes = tq_store_disk_size(self->store);
    self->dispatch_due = true;
    return 0;
}

/* Purges a little of the expired results from disk and checks the disk
   limit; called once a second. */
static void
s_store_housekeeping(tq_broker_t *self)
{
    if (!self->store || (self->lease.enabled && !self->lease.active))
        return; /* a standby writes nothing */
    tqb_journal_purge(self, tqb_wall_ms(), 2000);
    /* measured only while no commit runs (the store is the commit
       thread's then); meanwhile the estimate grows with every write */
    if (self->config.max_disk && tqb_journal_idle(self)) {
        self->disk_bytes = tq_store_disk_size(self->store);
        bool full = self->disk_bytes >= self->config.max_disk;
        if (full && !self->disk_full)
            tqb_warn(self, "%s reached max-disk: refusing submissions",
                     self->store_name);
        self->disk_full = full;
    }
}

/* ---- endpoints and the object ---- */

/* True if a tcp:// endpoint's host is a loopback address or interface;
   other transports (ipc, inproc) never leave the machine. */
static bool
s_is_local(const char *endpoint)
{
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return strncmp(endpoint, "ipc://", 6) == 0 ||
            strncmp(endpoint, "inproc://", 9) == 0;
    const char *host = endpoint + 6;
    const char *colon = strrchr(host, ':');
    size_t len = colon ? (size_t)(colon - host) : strlen(host);
    return strncmp(host, "127.", 4) == 0 ||
        (len == 9 && strncmp(host, "localhost", 9) == 0) ||
        (len == 2 && strncmp(host, "lo", 2) == 0) ||
        (len == 5 && strncmp(host, "[::1]", 5) == 0);
}

/* Sets the socket options of one endpoint and binds it. cert: CURVE
   server with ZAP domain `domain`, NULL for plain TCP (loud when the
   endpoint is reachable from other hosts). */
static int
s_bind(tq_broker_t *self, void *socket, const char *endpoint,
       const char *domain, zcert_t *cert, char *resolved, size_t size,
       char *error, size_t errlen)
{
    int one = 1, linger = 0;
    int64_t max = self->config.max_message;
    zmq_setsockopt(socket, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    /* a client that does not read has a bounded backlog (PROTOCOL.md
       section 10); tasks to children are bounded by their credit */
    int hwm = socket == self->clients ? (int) self->config.max_client_backlog
                                       : 0;
    zmq_setsockopt(socket, ZMQ_SNDHWM, &hwm, sizeof hwm);
    /* what clients send waits in their own process, not here: a client
       submitting faster than the loop accepts would otherwise have the
       I/O thread take all of it in (ZeroMQ's receive buffers, memory the
       broker keeps after); a bounded pipe pushes back over TCP, loses
       nothing, and still lets the loop take a batch per pass */
    int rcvhwm = socket == self->clients ? S_CLIENT_RCVHWM : 0;
    zmq_setsockopt(socket, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max, sizeof max);
    if (cert && tq_curve_server_setup(socket, cert, domain, error, errlen))
        return -1;
    if (zmq_bind(socket, endpoint) != 0) {
        snprintf(error, errlen, "cannot bind %s: %s", endpoint,
                 zmq_strerror(errno));
        return -1;
    }
    size_t len = size;
    zmq_getsockopt(socket, ZMQ_LAST_ENDPOINT, resolved, &len);
    if (!cert && !s_is_local(endpoint))
        tq_log_warning("%s (%s) is reachable from other hosts "
                       "WITHOUT CURVE: anyone who can connect can %s. Use "
                       "--curve-secret with --client-keys and --worker-keys, "
                       "or bind 127.0.0.1.",
                resolved, domain,
                streq(domain, TQ_CURVE_DOMAIN_WORKERS)
                    ? "take tasks and forge their results"
                    : "submit tasks that workers will run");
    return 0;
}

tq_broker_t *
tq_broker_new(const tq_broker_config_t *config, char *error, size_t errlen)
{
    tq_broker_t *self = tqb_alloc(sizeof *self);
    pthread_once(&s_models_once, s_models_init);
    tq_frames_init(&self->frames);
    tq_heap_init(&self->delayed);
    msgpack_sbuffer_init(&self->sbuf);
    self->config = *config;
    if (!self->config.client_endpoint)
        self->config.client_endpoint = TQ_BROKER_CLIENTS;
    if (!self->config.worker_endpoint)
        self->config.worker_endpoint = TQ_BROKER_WORKERS;
    if (self->config.result_ttl_s < 0)
        self->config.result_ttl_s = TQ_BROKER_RESULT_TTL_S;
    if (self->config.max_lost <= 0)
        self->config.max_lost = TQ_BROKER_MAX_LOST;
    if (self->config.max_lost > UINT16_MAX) /* task_t.lost counts to it */
        self->config.max_lost = UINT16_MAX;
    if (self->config.max_client_backlog == 0)
        self->config.max_client_backlog = TQ_BROKER_CLIENT_BACKLOG;
    if (self->config.max_message <= 0)
        self->config.max_message = MAX_MESSAGE;
    self->wakeup = -1;
    pthread_mutex_init(&self->lead_lock, NULL);
    self->ctx = config->context ? config->context : zmq_ctx_new();
    self->clients = self->ctx ? zmq_socket(self->ctx, ZMQ_ROUTER) : NULL;
    self->workers = self->ctx ? zmq_socket(self->ctx, ZMQ_ROUTER) : NULL;
    if (!self->clients || !self->workers) {
        snprintf(error, errlen, "cannot create sockets: %s",
                 zmq_strerror(errno));
        tq_broker_destroy(&self);
        return NULL;
    }
    /* CURVE is all or nothing: a half-configured broker refuses to start
       rather than run with an endpoint open */
    zcert_t *cert = NULL;
    if (self->config.curve_secret || self->config.client_keys ||
        self->config.worker_keys) {
        if (!self->config.curve_secret || !self->config.client_keys ||
            !self->config.worker_keys) {
            snprintf(error, errlen,
                     "CURVE needs --curve-secret, "
                     "--client-keys and --worker-keys");
            tq_broker_destroy(&self);
            return NULL;
        }
        cert = tq_curve_load_secret(self->config.curve_secret, error, errlen);
        /* the handler is bound before the sockets: no handshake can
           happen without it */
        if (cert)
            self->auth = tq_auth_new(self->ctx, self->config.client_keys,
                                     self->config.worker_keys,
                                     self->config.admin_keys, error, errlen);
        if (!self->auth) {
            zcert_destroy(&cert);
            tq_broker_destroy(&self);
            return NULL;
        }
    }
    int rc = s_bind(self, self->clients, self->config.client_endpoint,
                    TQ_CURVE_DOMAIN_CLIENTS, cert, self->client_endpoint,
                    sizeof self->client_endpoint, error, errlen);
    if (rc == 0 && self->config.client_inproc &&
        zmq_bind(self->clients, self->config.client_inproc) != 0) {
        snprintf(error, errlen, "cannot bind %s: %s",
                 self->config.client_inproc, zmq_strerror(errno));
        rc = -1;
    }
    if (rc == 0)
        rc = s_bind(self, self->workers, self->config.worker_endpoint,
                    TQ_CURVE_DOMAIN_WORKERS, cert, self->worker_endpoint,
                    sizeof self->worker_endpoint, error, errlen);
    zcert_destroy(&cert);
    if (rc != 0) {
        tq_broker_destroy(&self);
        return NULL;
    }
    self->wakeup = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->wakeup < 0) {
        snprintf(error, errlen, "eventfd: %s", strerror(errno));
        tq_broker_destroy(&self);
        return NULL;
    }
    {
        /* polled instead of the sockets (s_wait) */
        void *sockets[] = {self->clients, self->workers};
        for (int i = 0; i < 2; i++) {
            size_t size = sizeof self->lead_fds[i];
            if (zmq_getsockopt(sockets[i], ZMQ_FD, &self->lead_fds[i], &size) !=
                0) {
                snprintf(error, errlen, "ZMQ_FD: %s", zmq_strerror(errno));
                tq_broker_destroy(&self);
                return NULL;
            }
        }
    }
    if (gethostname(self->hostname, sizeof self->hostname - 1) != 0 ||
        !tq_proto_valid_name(self->hostname, strlen(self->hostname)))
        snprintf(self->hostname, sizeof self->hostname, "broker");

    tqb_tasks_init(self);
    self->names = zhashx_new();
    zhashx_set_key_duplicator(self->names, NULL);
    zhashx_set_key_destructor(self->names, NULL);
    self->queue_index = zhashx_new();
    zhashx_set_key_duplicator(self->queue_index, NULL);
    zhashx_set_key_destructor(self->queue_index, NULL);
    self->peers = zhashx_new();
    zhashx_set_key_duplicator(self->peers, NULL);
    zhashx_set_key_destructor(self->peers, NULL);
    zhashx_set_key_hasher(self->peers, tqb_ident_hash);
    zhashx_set_key_comparator(self->peers, tqb_ident_cmp);
    self->in_flight = zhashx_new();
    zhashx_set_destructor(self->in_flight, NULL);
    self->client_drops = zhashx_new();
    zhashx_set_destructor(self->client_drops, NULL);
    self->key_hosts = zhashx_new();
    zhashx_set_key_duplicator(self->key_hosts, NULL); /* interned */
    zhashx_set_key_destructor(self->key_hosts, NULL);
    self->host_keys = zhashx_new();
    zhashx_set_key_duplicator(self->host_keys, NULL);
    zhashx_set_key_destructor(self->host_keys, NULL);
    self->dq_index = zhashx_new();
    zhashx_set_key_duplicator(self->dq_index, NULL);
    zhashx_set_key_destructor(self->dq_index, NULL);
    if (!self->id_table || !self->names || !self->queue_index || !self->peers ||
        !self->dq_index || !self->in_flight || !self->client_drops)
        abort();
    self->started_ms = self->now_ms = tqb_now();
    self->log_window_ms = self->now_ms;
    if (self->config.data_dir || self->config.store_url) {
        const char *where = self->config.store_url ? self->config.store_url
                                                   : self->config.data_dir;
        rc = tqb_store_open(self, error, errlen);
        if (tq_store_is_url(where)) {
            /* several brokers may share it: active under its lease, or
               standby; a standby made after a demotion waits for a store
               it cannot reach instead of refusing to start */
            if (rc != 0 && self->config.standby_start) {
                tq_log_warning("%s", error);
                rc = 0;
            }
            if (rc == 0)
                rc = tqb_lease_start(self, error, errlen);
            if (rc == TQB_LEASE_WON)
                rc = tqb_store_recover(self, error, errlen);
            else if (rc == TQB_LEASE_STANDBY)
                rc = 0;
        } else if (rc == 0)
            rc = tqb_store_recover(self, error, errlen);
        if (rc != 0) {
            tq_broker_destroy(&self);
            return NULL;
        }
    }
    return self;
}

const char *
tq_broker_client_endpoint(const tq_broker_t *self)
{
    return self->client_endpoint;
}

const char *
tq_broker_worker_endpoint(const tq_broker_t *self)
{
    return self->worker_endpoint;
}

void
tq_broker_stop(tq_broker_t *self)
{
    self->stopping = true;
    uint64_t one = 1;
    ssize_t rc = write(self->wakeup, &one, sizeof one);
    (void)rc;
}

/* A commit failed: nothing of its batch was acknowledged. On a shared
   store the broker gives up its role (the lease was taken, or the
   connection is gone and the lease will lapse) and becomes a standby;
   elsewhere it stops. */
static int
s_store_lost(tq_broker_t *self)
{
    if (!self->lease.enabled)
        return TQ_ESYS;
    tq_log_error("demoting: acknowledging and dispatching nothing more, "
                 "dropping the in-memory state: standby");
    self->lease.active = false;
    if (self->commit_rc == TQ_OK)
        self->commit_rc = TQ_EBUSY; /* tq_broker_destroy flushes nothing */
    return TQ_ESTANDBY;
}

/* The lease's step at the start of a pass: TQ_OK to go on (active, or a
   standby that only refuses), TQ_ESTANDBY when the lease was lost, and on
   taking it the recovery from the store. */
static int
s_lease_step(tq_broker_t *self)
{
    switch (tqb_lease_tick(self)) {
    case TQB_LEASE_HELD:
    case TQB_LEASE_STANDBY:
        return TQ_OK;
    case TQB_LEASE_LOST:
        return TQ_ESTANDBY;
    case TQB_LEASE_WON:
        break;
    }
    char error[1024];
    if (tqb_store_recover(self, error, sizeof error) != 0) {
        tq_log_error("%s", error);
        return s_store_lost(self);
    }
    /* the start of the broker's life as the active one */
    self->now_ms = tqb_now();
    self->next_check_ms = self->now_ms + CHECK_MS;
    return TQ_OK;
}

/* The time until the loop's next deadline (ms, >= 0): a host check, a
   delayed task, a result expiry, a QGET's wait, a fold, the lease. */
static long
s_timeout(tq_broker_t *self)
{
    self->now_ms = tqb_now();
    int64_t deadline = self->next_check_ms;
    if (self->expiry.head && self->expiry.head->expires_ms < deadline)
        deadline = self->expiry.head->expires_ms;
    int64_t due = tqb_next_due(self);
    if (due < deadline)
        deadline = due;
    int64_t getters = tqb_expire_getters(self);
    if (getters < deadline)
        deadline = getters;
    int64_t folds = tqb_release_folds(self, false);
    if (folds < deadline)
        deadline = folds;
    int64_t lease = tqb_lease_deadline(self);
    if (lease < deadline)
        deadline = lease;
    /* the SUBMITTEDs and ERRORs those timers sent go before the sleep */
    tqb_batch_flush(self);
    return deadline > self->now_ms ? deadline - self->now_ms : 0;
}

/* True if socket has a message to read (ZMQ_EVENTS, which also takes in
   the commands its I/O thread sent since the last look). -1 on error.
   Nothing is asked of a socket known quiet (self->quiet): 0. */
static int
s_readable(tq_broker_t *self, void *socket)
{
    bool *quiet = &self->quiet[socket == self->clients];
    if (*quiet)
        return 0;
    uint32_t events = 0;
    size_t size = sizeof events;
    if (zmq_getsockopt(socket, ZMQ_EVENTS, &events, &size) != 0)
        return -1;
    *quiet = !(events & ZMQ_POLLIN);
    return (events & ZMQ_POLLIN) != 0;
}

/* True if either socket has a message to read (or cannot be asked). */
static bool
s_input(tq_broker_t *self)
{
    return s_readable(self, self->clients) != 0 ||
        s_readable(self, self->workers) != 0;
}

/* True if s_wait's errno is worth another wait rather than the end of
   the broker: EINTR (a signal in poll or in a socket's ZMQ_EVENTS) or
   EAGAIN (poll could not allocate, POSIX: a later call may succeed). */
static bool
s_transient(int err)
{
    return err == EINTR || err == EAGAIN;
}

/* Monotonic microseconds (vDSO, no system call). */
static int64_t
s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Before the sleep: after a sparse pass (at most TQ_BROKER_SPIN_SPARSE
   messages since the last wait, as in a round trip), looks at fds (as
   s_wait's poll would, without sleeping) for up to config.spin_us,
   yielding the CPU between looks to whatever else may run. On a virtual
   machine the wakeup of a sleeping thread costs tens of microseconds, a
   good part of a round trip; the answer to the TASK just sent often
   comes within the look. A busy broker (many messages a pass) never
   looks: it does not sleep for long, and the CPU is its children's.
   Looks that find nothing TQ_BROKER_SPIN_MISSES times in a row stop it
   (sparse traffic, slower than the look: the CPU would be burnt for
   nothing) until a sleep ends within spin_us (s_wait). Returns poll's
   result: > 0 input, 0 none (sleep), < 0 an error. */
static int
s_spin(tq_broker_t *self, struct pollfd fds[3], long timeout_ms)
{
    uint64_t got = self->received - self->spin_mark;
    self->spin_mark = self->received;
    int64_t spin = self->config.spin_us;
    if (!spin || self->spin_off || got > TQ_BROKER_SPIN_SPARSE ||
        timeout_ms == 0)
        return 0;
    if (timeout_ms > 0 && spin > timeout_ms * 1000)
        spin = timeout_ms * 1000;
    self->spins++;
    int64_t until = s_now_us() + spin;
    int rc;
    while ((rc = poll(fds, 3, 0)) == 0 && s_now_us() < until)
        sched_yield();
    if (rc > 0 && (fds[0].revents || fds[1].revents)) {
        self->spins_caught++;
        self->spin_misses = 0;
    } else if (rc == 0 && ++self->spin_misses >= TQ_BROKER_SPIN_MISSES)
        self->spin_off = true;
    return rc;
}

/* Sleeps until a socket has input, the wakeup eventfd is written (a
   commit done, a stop, a lead's end) or timeout_ms passed. ZMQ_EVENTS on
   both sockets, then one poll on their ZMQ_FDs and the eventfd: the
   pattern libzmq documents for its descriptors (once ZMQ_EVENTS says a
   socket has nothing, anything that arrives later makes its descriptor
   readable). zmq_poll does the same with three more system calls per
   pass (a poll that finds nothing first, a second ZMQ_EVENTS per socket
   after). The descriptors, never the sockets, are polled: with unlock
   (a leadable broker), lead_lock is let go for the sleep and another
   thread may hold the sockets meanwhile (tq_broker_lead).
   drain[0] (workers) and drain[1] (clients) say which sockets may have
   input: one that ZMQ_EVENTS found empty and whose descriptor stayed
   quiet through the poll has none, and its drain (an empty receive, a
   system call) is skipped. Returns 0, or -1 with errno (EINTR: a
   signal; s_transient). */
static int
s_wait(tq_broker_t *self, long timeout_ms, bool unlock, bool drain[2])
{
    drain[0] = drain[1] = true;
    self->woken = false;
    /* a failed look returns at once, with its errno: a ZMQ_EVENTS that
       succeeds leaves errno at EAGAIN (libzmq's empty mailbox), so the
       second socket's look would turn the first's EINTR into EAGAIN */
    int a = s_readable(self, self->workers);
    if (a < 0)
        return -1;
    int b = a == 1 ? 1 : s_readable(self, self->clients);
    if (b < 0)
        return -1;
    if (a == 1 || b == 1) {
        drain[0] = a == 1;
        return 0; /* the eventfd is read at the next wait */
    }
    struct pollfd fds[3] = {{.fd = self->lead_fds[1], .events = POLLIN},
                            {.fd = self->lead_fds[0], .events = POLLIN},
                            {.fd = self->wakeup, .events = POLLIN}};
    if (unlock)
        pthread_mutex_unlock(&self->lead_lock);
    int rc = unlock ? 0 : s_spin(self, fds, timeout_ms);
    int64_t slept = rc == 0 ? s_now_us() : 0;
    if (rc == 0)
        rc = poll(fds, 3, (int)timeout_ms);
    int err = errno;
    /* a sleep that a message ended within spin_us: looking pays again */
    if (rc > 0 && slept && self->spin_off &&
        s_now_us() - slept < (int64_t)self->config.spin_us &&
        (fds[0].revents || fds[1].revents)) {
        self->spin_off = false;
        self->spin_misses = 0;
    }
    if (rc > 0 && (fds[2].revents & POLLIN)) {
        uint64_t count;
        ssize_t r = read(self->wakeup, &count, sizeof count);
        (void)r;
    }
    drain[0] = fds[0].revents != 0;
    drain[1] = fds[1].revents != 0;
    self->woken = rc > 0 && (drain[0] || drain[1]);
    while (unlock && pthread_mutex_trylock(&self->lead_lock) != 0) {
        /* a caller leads the loop, and reads what woke us: sleep without
           the sockets, woken by the lead's end if it leaves input, else
           back within PARK_MS (a caller leading again and again is not
           woken for per lead) */
        drain[0] = drain[1] = true;
        self->woken = false;
        struct pollfd wakeup = {.fd = self->wakeup, .events = POLLIN};
        if (poll(&wakeup, 1, PARK_MS) > 0) {
            uint64_t count;
            ssize_t r = read(self->wakeup, &count, sizeof count);
            (void)r;
        }
    }
    errno = err;
    return rc < 0 ? -1 : 0;
}

/* Dispatches what is due: draining took time, so nothing goes out on a
   lease that may have lapsed meanwhile. TQ_OK or TQ_ESTANDBY. */
static int
s_dispatch(tq_broker_t *self)
{
    if (self->lease.active && tqb_lease_tick(self) == TQB_LEASE_LOST)
        return TQ_ESTANDBY;
    tqb_dispatch(self);
    return TQ_OK;
}

/* The first message of a pass that an idle broker woke for (workers
   first, as the burst), handled and what it made sent. drain[i] is
   cleared if its socket had nothing after all. TQ_OK, or how the loop
   ends. */
static int
s_pass_first(tq_broker_t *self, bool drain[2])
{
    int i = drain[0] ? 0 : 1;
    void *socket = i == 0 ? self->workers : self->clients;
    if (s_drain(self, socket, i == 0 ? "workers" : "clients", 1) == 0) {
        drain[i] = !self->quiet[i]; /* an EINTR: look again */
        return TQ_OK;
    }
    int rc;
    if (self->dispatch_due && (rc = s_dispatch(self)) != TQ_OK)
        return rc;
    tqb_batch_flush_children(self);
    if (!self->journal) {
        if (!tqb_commit(self))
            return s_store_lost(self);
        tqb_batch_flush(self);
    }
    return TQ_OK;
}

/* One pass of the loop after a wait of `timeout` ms: timers, both sockets
   drained, dispatch, commit, host checks. TQ_OK, or how the loop ends. */
static int
s_pass(tq_broker_t *self, long timeout, bool drain[2])
{
    self->now_ms = tqb_now();
    /* the lease first: after a stall, nothing is handled before the
       database confirms this broker still holds it */
    int rc = s_lease_step(self);
    if (rc != TQ_OK)
        return rc;
    s_credit_stall(self, self->last_pass_ms, timeout);
    tqb_release_due(self);
    /* an idle broker woken by a message sends what it made at once: a
       lone SUBMIT's TASK, a lone DONE's RESULT (without a journal, whose
       commit would wait for the burst's), before the receive that finds
       the socket empty (a system call on the round trip's path) */
    if (self->woken && (rc = s_pass_first(self, drain)) != TQ_OK)
        return rc;
    /* drain both sockets in bursts until both are quiet */
    for (;;) {
        if (self->lease.active && tqb_lease_tick(self) == TQB_LEASE_LOST)
            return TQ_ESTANDBY;
        /* a commit may have taken a while, or the broker was stopped
           in the burst before: a stall, credited here, since the
           host check after the last burst may come before the
           HEARTBEATs read late do (an empty burst ends the pass) */
        int64_t burst_started = self->now_ms;
        self->now_ms = tqb_now();
        s_credit_stall(self, burst_started, 0);
        int from_workers =
            drain[0] ? s_drain(self, self->workers, "workers", BATCH) : 0;
        /* the credit those DONEs gave back is used before the clients'
           burst (up to a BATCH of SUBMITs to handle): the children would
           otherwise wait for it, idle, with their prefetch run dry */
        if (from_workers && self->dispatch_due) {
            if ((rc = s_dispatch(self)) != TQ_OK)
                return rc;
            tqb_batch_flush_children(self);
        }
        int from_clients =
            drain[1] ? s_drain(self, self->clients, "clients", BATCH) : 0;
        int got = from_workers + from_clients;
        bool full = from_workers >= BATCH || from_clients >= BATCH;
        if (self->dispatch_due && (rc = s_dispatch(self)) != TQ_OK)
            return rc;
        if (!tqb_commit(self))
            return s_store_lost(self);
        /* what the burst made for clients that take BATCH goes now */
        tqb_batch_flush(self);
        /* both drains ended on an empty socket (fewer than a BATCH
           each): what came since is for s_wait, which looks at the
           sockets before it sleeps; another round here would only pay
           two empty receives, a system call each */
        if (got == 0 || self->stopping || !full)
            break;
        drain[0] = drain[1] = true;
    }
    /* liveness is judged on what was received: after the drain, with
       the time it took credited to every host (s_credit_stall) */
    int64_t drain_started = self->now_ms;
    self->now_ms = tqb_now();
    s_credit_stall(self, drain_started, 0);
    if (self->lease.active && tqb_lease_tick(self) == TQB_LEASE_LOST)
        return TQ_ESTANDBY;
    if (self->now_ms >= self->next_check_ms) {
        tqb_check_hosts(self);
        if (self->now_ms >= self->next_housekeeping_ms) {
            s_store_housekeeping(self);
            self->next_housekeeping_ms = self->now_ms + HOUSEKEEPING_MS;
        }
        self->next_check_ms = self->now_ms + CHECK_MS;
        if (self->dispatch_due)
            tqb_dispatch(self);
    }
    tqb_expire_results(self);
    if (!tqb_commit(self))
        return s_store_lost(self);
    self->last_pass_ms = tqb_now();
    return TQ_OK;
}

int
tq_broker_run(tq_broker_t *self)
{
    bool leadable = self->config.leadable;
    if (leadable)
        pthread_mutex_lock(&self->lead_lock);
    self->next_check_ms = tqb_now() + CHECK_MS;
    self->last_pass_ms = tqb_now();
    int rc = TQ_OK;
    while (!self->stopping && rc == TQ_OK) {
        /* sleep until the next deadline */
        long timeout = s_timeout(self);
        bool drain[2];
        if (s_wait(self, timeout, leadable, drain) < 0) {
            if (s_transient(errno))
                continue;
            tq_log_error("poll: %s", zmq_strerror(errno));
            rc = TQ_ESYS;
            break;
        }
        /* a pass a leader ran may have ended the loop */
        rc = self->lead_rc != TQ_OK ? self->lead_rc
                                     : s_pass(self, timeout, drain);
        /* the pass's messages for clients that take BATCH, also when it
           ended the loop */
        tqb_batch_flush(self);
    }
    /* what was accepted before the stop is acknowledged once committed */
    if (rc == TQ_OK && !tqb_commit_flush(self))
        rc = TQ_ESYS;
    tqb_batch_flush(self);
    if (leadable)
        pthread_mutex_unlock(&self->lead_lock);
    return rc;
}

bool
tq_broker_lead_begin(tq_broker_t *self)
{
    return self->config.leadable && !self->stopping && self->lead_rc == TQ_OK &&
        pthread_mutex_trylock(&self->lead_lock) == 0;
}

int
tq_broker_lead(tq_broker_t *self, int timeout_ms)
{
    if (self->stopping || self->lead_rc != TQ_OK)
        return -1;
    long timeout = s_timeout(self);
    if (timeout > timeout_ms)
        timeout = timeout_ms;
    bool drain[2];
    if (s_wait(self, timeout, false, drain) < 0) {
        if (!s_transient(errno))
            return -1;
        drain[0] = drain[1] = true;
    }
    int rc = s_pass(self, timeout, drain);
    tqb_batch_flush(self);
    if (rc != TQ_OK) {
        self->lead_rc = rc; /* the broker's thread returns it */
        return -1;
    }
    return 0;
}

/* The routing id of the local client: six bytes starting with a zero,
   which libzmq never gives a peer (its own are five) and a peer may not
   choose (a zero first byte is libzmq's). */
static const uint8_t s_local_ident[] = {0, 't', 'q', 'l', 'c', 'l'};

void
tq_broker_set_local(tq_broker_t *self, tq_broker_local_fn *fn, void *arg)
{
    self->local_fn = fn;
    self->local_arg = arg;
    tqb_ident_set(&self->local_ident, s_local_ident, sizeof s_local_ident);
}

void
tq_broker_local_send(tq_broker_t *self, const tq_msg_t *msg, zmq_msg_t *payload)
{
    /* as s_drain would have it after a recv on the clients socket */
    zmq_msg_close(&self->frames.identity);
    zmq_msg_init_size(&self->frames.identity, sizeof s_local_ident);
    memcpy(zmq_msg_data(&self->frames.identity), s_local_ident,
           sizeof s_local_ident);
    zmq_msg_close(&self->frames.payload);
    zmq_msg_init(&self->frames.payload);
    if (payload)
        zmq_msg_move(&self->frames.payload, payload);
    self->frames.has_payload = payload != NULL;
    tqb_received(self);
    memset(&self->in, 0, offsetof(tq_msg_t, queues));
    memcpy(&self->in, msg, offsetof(tq_msg_t, queues));
    self->in.id_text_bin = false; /* not decoded: no bytes of its id */
    self->now_ms = tqb_now();
    peer_t *peer;
    const s_command_t *command = s_too_big(self, self->clients)
        ? NULL
        : s_admit(self, self->clients, &peer);
    if (command) {
        self->in_socket = self->clients;
        self->in_key = NULL;
        self->in_admin = false;
        command->fn(self, &self->in, peer);
    }
    if (self->dispatch_due)
        tqb_dispatch(self);
    if (!tqb_commit(self) && self->lead_rc == TQ_OK)
        self->lead_rc = s_store_lost(self);
    tqb_batch_flush(self);
}

bool
tqb_local_deliver(tq_broker_t *self, const ident_t *to, zmq_msg_t *payload)
{
    if (!self->local_fn || !tqb_ident_eq(to, &self->local_ident))
        return false;
    self->local_fn(self->local_arg, &self->out, payload);
    return true;
}

void
tq_broker_lead_end(tq_broker_t *self)
{
    /* input whose signal this thread took stays unseen by the broker's
       thread sleeping on the sockets' file descriptors: wake it */
    bool wake = self->stopping || self->lead_rc != TQ_OK || s_input(self);
    pthread_mutex_unlock(&self->lead_lock);
    if (wake) {
        uint64_t one = 1;
        ssize_t rc = write(self->wakeup, &one, sizeof one);
        (void)rc;
    }
}

void
tq_broker_destroy(tq_broker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_broker_t *self = *self_p;
    /* messages still in an open BATCH go out (a failure touches tasks) */
    if (self->clients)
        tqb_batch_flush(self);
    /* first: its batches share the tasks' payloads and names */
    tqb_journal_destroy(self);
    tqb_tasks_free(self);
    if (self->peers) {
        for (peer_t *w = zhashx_first(self->peers); w;
             w = zhashx_next(self->peers))
            tqb_peer_free(w);
        zhashx_destroy(&self->peers);
    }
    tqb_peers_index_free(self);
    for (queue_t *q = self->queues, *qn; q; q = qn) {
        qn = q->next;
        for (lane_t *l = q->lanes, *ln; l; l = ln) {
            ln = l->next;
            free(l);
        }
        free(q->servers);
        free(q->hungry);
        free(q);
    }
    zhashx_destroy(&self->queue_index);
    tqb_dq_free_all(self);
    zhashx_destroy(&self->dq_index);
    zhashx_destroy(&self->in_flight);
    zhashx_destroy(&self->key_hosts);
    zhashx_destroy(&self->client_drops);
    zhashx_destroy(&self->host_keys);
    if (self->names) {
        for (char *n = zhashx_first(self->names); n;
             n = zhashx_next(self->names))
            free(n);
        zhashx_destroy(&self->names);
    }
    if (self->store) {
        /* what was acknowledged is committed; a pending batch holds only
           unacknowledged work, committed now as a courtesy */
        tq_store_commit(self->store);
        tqb_lease_release(self);
        tq_store_destroy(&self->store);
    }
    tqb_acks_clear(self);
    free(self->folds);
    free(self->candidates);
    tq_heap_destroy(&self->delayed);
    tqb_batch_free(self);
    tq_frames_close(&self->frames);
    msgpack_sbuffer_destroy(&self->sbuf);
    if (self->clients)
        zmq_close(self->clients);
    if (self->workers)
        zmq_close(self->workers);
    /* after the CURVE sockets: its socket must close before the context
       terminates */
    tq_auth_destroy(&self->auth);
    if (self->ctx && !self->config.context)
        zmq_ctx_term(self->ctx);
    if (self->wakeup >= 0)
        close(self->wakeup);
    pthread_mutex_destroy(&self->lead_lock);
    tqb_ident_clear(&self->local_ident);
    free(self);
    *self_p = NULL;
}
