/* tq_reply.c - routing ids and everything the broker sends: the one send
   path (tqb_send_to), replies to the current sender, RESULTs, and msgpack
   bodies for REPLY and STATUS_REPLY. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_broker_core.h"
#include "tq_log.h"

/* ---- routing ids ---- */

void
tqb_ident_set(ident_t *ident, const void *data, size_t size)
{
    assert(size <= 255);
    free(ident->heap);
    ident->heap = NULL;
    ident->size = (uint8_t)size;
    if (size > TQB_IDENT_INLINE) {
        ident->heap = tqb_alloc(size);
        memcpy(ident->heap, data, size);
    } else
        memcpy(ident->bytes, data, size);
}

const uint8_t *
tqb_ident_data(const ident_t *ident)
{
    return ident->heap ? ident->heap : ident->bytes;
}

void
tqb_ident_clear(ident_t *ident)
{
    free(ident->heap);
    ident->heap = NULL;
    ident->size = 0;
}

/* tqb_ident_eq within this file, where every message sent asks it of
   the open batches and the clients that take them (inlined) */
static inline bool
s_ident_eq(const ident_t *a, const ident_t *b)
{
    return a->size == b->size &&
        tqb_ident_bytes_eq(a->heap ? a->heap : a->bytes,
                           b->heap ? b->heap : b->bytes, a->size);
}

bool
tqb_ident_eq(const ident_t *a, const ident_t *b)
{
    return s_ident_eq(a, b);
}

void
tqb_hex(char *dst, const uint8_t *data, size_t size)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < size; i++) {
        dst[2 * i] = digits[data[i] >> 4];
        dst[2 * i + 1] = digits[data[i] & 15];
    }
    dst[2 * size] = 0;
}

ident_t
tqb_sender(tq_broker_t *self)
{
    return self->in_from; /* borrowed: never tqb_ident_clear it */
}

/* ---- sending ---- */

#define S_DROP_TABLE_MAX 10000 /* clients whose drops are remembered */

/* Replies to a client that does not read were dropped at its backlog
   (ZMQ_SNDHWM), `n` of them (a BATCH counts its sub-messages): counted
   for it, so its next PONG tells it. */
static void
s_client_dropped(tq_broker_t *self, const ident_t *ident, uint32_t n)
{
    char key[2 * 255 + 1];
    tqb_hex(key, tqb_ident_data(ident), ident->size);
    uintptr_t count = (uintptr_t) zhashx_lookup(self->client_drops, key);
    if (!count && zhashx_size(self->client_drops) >= S_DROP_TABLE_MAX)
        zhashx_purge(self->client_drops); /* a bound, not a history */
    zhashx_update(self->client_drops, key, (void *) (count + n));
    if (count == 0 || (count + n) / 10000 != count / 10000)
        tqb_warn(self,
                 "client %s does not read its replies: %llu dropped "
                 "(max-client-backlog %u); it asks again when it reads",
                 key, (unsigned long long) count + n,
                 self->config.max_client_backlog);
}

uint64_t
tqb_client_dropped(tq_broker_t *self, const ident_t *ident)
{
    char key[2 * 255 + 1];
    tqb_hex(key, tqb_ident_data(ident), ident->size);
    return (uintptr_t) zhashx_lookup(self->client_drops, key);
}

/* What follows a header: nothing (has false), or size bytes at data,
   held by msg (moved out when sent) or, when msg is NULL, borrowed (a
   task's own bytes: copied into a batch, or into a message of their own
   to go alone). */
typedef struct {
    bool has;
    const void *data;
    size_t size;
    zmq_msg_t *msg;
} s_payload_t;

/* The payload of tqb_send_to's form: a message (moved), NULL for none. */
static s_payload_t
s_payload_msg(zmq_msg_t *payload)
{
    s_payload_t p = {payload != NULL, NULL, 0, payload};
    if (payload) {
        p.size = zmq_msg_size(payload);
        p.data = zmq_msg_data(payload);
    }
    return p;
}

/* ---- BATCH to clients (PROTOCOL.md 5.9) ---- */

static void
s_encode_bug(tq_broker_t *self)
{
    /* our own message broke the protocol's rules: a bug */
    const char *reason = NULL;
    tq_proto_encode(&self->out, &self->sbuf, &reason);
    tq_log_error("BUG: cannot encode %s: %s",
                 tq_proto_command_name(self->out.command),
                 reason ? reason : "?");
    abort();
}

void
tqb_batch_peer(tq_broker_t *self, const ident_t *ident, bool takes)
{
    uint32_t i = 0;
    while (i < self->batch_peer_count &&
           !s_ident_eq(&self->batch_peers[i], ident))
        i++;
    bool known = i < self->batch_peer_count;
    if (known == takes)
        return;
    if (!takes) {
        /* a reused routing id (a client's own) without the feature: its
           entry is empty (size 0) from now on */
        tqb_ident_clear(&self->batch_peers[i]);
        return;
    }
    for (i = 0; i < self->batch_peer_count; i++)
        if (!self->batch_peers[i].size)
            break;
    if (i < self->batch_peer_count)
        ; /* an empty entry */
    else if (self->batch_peer_count < TQB_BATCH_PEERS)
        i = self->batch_peer_count++;
    else {
        /* full: the oldest entry goes (that client gets its messages
           alone, as the protocol allows) */
        i = self->batch_peer_next;
        self->batch_peer_next = (i + 1) % TQB_BATCH_PEERS;
    }
    tqb_ident_set(&self->batch_peers[i], tqb_ident_data(ident), ident->size);
}

bool
tqb_batch_takes(const tq_broker_t *self, const ident_t *ident)
{
    for (uint32_t i = 0; i < self->batch_peer_count; i++)
        if (s_ident_eq(&self->batch_peers[i], ident))
            return ident->size > 0;
    return false;
}

/* The open batch to ident on socket, NULL if none. */
static out_batch_t *
s_batch_find(tq_broker_t *self, void *socket, const ident_t *ident)
{
    for (int i = 0; i < TQB_BATCH_SLOTS; i++)
        if (self->batches[i].batch.count && self->batches[i].socket == socket &&
            s_ident_eq(&self->batches[i].to, ident))
            return &self->batches[i];
    return NULL;
}

/* The open batch to child, NULL if none: by the peer its slot names (a
   child's batch opens only through tqb_send_child, and closes when the
   child goes: tqb_batch_drop), no compare of routing ids. */
static out_batch_t *
s_batch_of_child(tq_broker_t *self, const peer_t *child)
{
    for (int i = 0; i < TQB_BATCH_SLOTS; i++)
        if (self->batches[i].batch.count && self->batches[i].child == child)
            return &self->batches[i];
    return NULL;
}

/* The RESULTs of a batch that was not sent were not delivered: their
   results leave the window of delivered ones (tq_results.c) and keep
   their TTL, as after a lone RESULT that failed. */
static void
s_batch_undeliver(tq_broker_t *self, out_batch_t *b)
{
    tq_msg_t *msg = tqb_alloc(sizeof *msg);
    tq_msg_t header = {.command = TQ_CMD_BATCH, .count = b->batch.count};
    tq_batch_reader_t r;
    tq_batch_reader_init(&r, &header, b->batch.body.data, b->batch.body.size);
    const void *data;
    size_t size;
    bool has;
    int rc;
    while ((rc = tq_batch_next(&r, msg, &data, &size, &has, NULL)) !=
           TQ_BATCH_END) {
        if (rc != TQ_OK || msg->command != TQ_CMD_RESULT)
            continue;
        task_t *task = tqb_task_find(self, msg->id);
        if (task)
            tqb_results_leave(self, task);
    }
    free(msg);
}

/* A batch to a child was refused (err): every TASK in it goes back as a
   refused lone TASK does (tq_dispatch.c s_dispatch_one): to the front of
   its lane, its attempt taken back, if it is still held by that child
   for that attempt (nothing else moved it since). From the last to the
   first, so that they keep their order at the front of their lanes. Then
   the child is marked, as after a refused lone TASK. */
static void
s_batch_refused(tq_broker_t *self, out_batch_t *b, int err)
{
    peer_t *child = b->child;
    tq_msg_t *msg = tqb_alloc(sizeof *msg);
    task_t **tasks = tqb_alloc(b->batch.count * sizeof *tasks);
    uint32_t n = 0;
    tq_msg_t header = {.command = TQ_CMD_BATCH, .count = b->batch.count};
    tq_batch_reader_t r;
    tq_batch_reader_init(&r, &header, b->batch.body.data, b->batch.body.size);
    const void *data;
    size_t size;
    bool has;
    const char *why = NULL;
    int rc;
    while ((rc = tq_batch_next(&r, msg, &data, &size, &has, &why)) !=
           TQ_BATCH_END) {
        if (rc != TQ_OK || msg->command != TQ_CMD_TASK)
            continue;
        task_t *task = tqb_task_find(self, msg->id);
        if (task && task->state == TASK_HELD && task->holder == child &&
            task->rec.attempt == msg->attempt)
            tasks[n++] = task;
    }
    while (n > 0) {
        task_t *task = tasks[--n];
        tqb_task_move(self, task, TASK_WAITING, &(task_move_t){.front = true});
        task->rec.attempt--;
    }
    free(tasks);
    free(msg);
    tqb_child_refused(self, child, err);
}

/* Sends an open batch (one message alone as itself) and closes it. A
   failure counts every message in it as a lone failure would. */
static void
s_batch_send(tq_broker_t *self, out_batch_t *b)
{
    tq_batch_t *batch = &b->batch;
    uint32_t count = batch->count;
    if (!count)
        return;
    zmq_msg_t id, payload;
    zmq_msg_init_size(&id, b->to.size);
    memcpy(zmq_msg_data(&id), tqb_ident_data(&b->to), b->to.size);
    const void *header = NULL, *data = NULL;
    size_t header_size = 0, size = 0;
    bool has = true;
    if (count == 1) {
        int first =
            tq_batch_first(batch, &header, &header_size, &data, &size, &has);
        assert(first == TQ_OK);
    } else {
        /* self->out may hold the message being sent after this one: the
           envelope's header is a message of its own (its scalar part:
           BATCH has no names) */
        tq_msg_t out;
        memset(&out, 0, offsetof(tq_msg_t, queues));
        out.command = TQ_CMD_BATCH;
        out.count = count;
        int encoded = tq_proto_encode(&out, &self->sbuf, NULL);
        assert(encoded == TQ_OK);
        header = self->sbuf.data;
        header_size = self->sbuf.size;
        data = batch->body.data;
        size = batch->body.size;
    }
    if (has) {
        zmq_msg_init_size(&payload, size);
        if (size)
            memcpy(zmq_msg_data(&payload), data, size);
    }
    int rc = tq_wire_send(b->socket, &id, header, header_size,
                          has ? &payload : NULL, ZMQ_DONTWAIT);
    int err = errno;
    tqb_sent(self, b->socket);
    if (has)
        zmq_msg_close(&payload);
    zmq_msg_close(&id);
    if (rc == 0 && count > 1) {
        self->counters.batches_out++;
        self->counters.batched_out += count;
        if (b->child) {
            self->counters.child_batches_out++;
            self->counters.child_batched_out += count;
        }
    } else if (rc != 0) {
        self->counters.dropped += count;
        tqb_debug(self, "send of a batch of %u failed: %s", count,
                  zmq_strerror(err));
        if (b->child)
            s_batch_refused(self, b, err);
        else {
            if (err == EAGAIN)
                s_client_dropped(self, &b->to, count);
            s_batch_undeliver(self, b);
        }
    }
    tq_batch_reset(batch);
}

/* A batch full enough that the next message goes after it. */
static bool
s_batch_full(const out_batch_t *b, size_t size)
{
    return b->batch.count == TQ_BATCH_MAX ||
        tq_batch_bytes(&b->batch) + size + 512 > TQB_BATCH_BYTES;
}

/* Adds self->out and payload (copied; its message, if any, emptied as a
   send would move it) to ident's batch, opening one (the oldest open one
   sent first when every slot is taken) or sending a full one first. */
static void
s_batch_add(tq_broker_t *self, out_batch_t *b, void *socket, peer_t *child,
            const ident_t *ident, const s_payload_t *payload)
{
    size_t size = payload->size;
    if (b && s_batch_full(b, size))
        s_batch_send(self, b); /* the slot stays ident's */
    for (int i = 0; !b && i < TQB_BATCH_SLOTS; i++)
        if (!self->batches[i].batch.count)
            b = &self->batches[i];
    if (!b) {
        b = &self->batches[0];
        for (int i = 1; i < TQB_BATCH_SLOTS; i++)
            if (self->batches[i].opened < b->opened)
                b = &self->batches[i];
        s_batch_send(self, b);
    }
    if (!b->batch.count) {
        tqb_ident_set(&b->to, tqb_ident_data(ident), ident->size);
        b->socket = socket;
        b->child = child;
        b->opened = ++self->batch_seq;
    }
    if (tq_batch_add(&b->batch, &self->out, size ? payload->data : NULL, size,
                     payload->has) != TQ_OK)
        s_encode_bug(self);
    if (payload->msg) {
        zmq_msg_close(payload->msg);
        zmq_msg_init(payload->msg);
    }
}

bool
tqb_batch_open(const tq_broker_t *self)
{
    for (int i = 0; i < TQB_BATCH_SLOTS; i++)
        if (self->batches[i].batch.count)
            return true;
    return false;
}

void
tqb_batch_flush(tq_broker_t *self)
{
    bool sent = false;
    for (;;) {
        out_batch_t *oldest = NULL;
        for (int i = 0; i < TQB_BATCH_SLOTS; i++)
            if (self->batches[i].batch.count &&
                (!oldest || self->batches[i].opened < oldest->opened))
                oldest = &self->batches[i];
        if (!oldest)
            break;
        s_batch_send(self, oldest);
        sent = true;
    }
    /* the results whose RESULTs were in them are delivered now, or not
       (s_batch_undeliver): the window may forget its oldest */
    if (sent)
        tqb_results_trim(self);
    if (self->refused_due)
        tqb_remove_refused(self);
}

void
tqb_batch_flush_children(tq_broker_t *self)
{
    for (int i = 0; i < TQB_BATCH_SLOTS; i++)
        if (self->batches[i].child && self->batches[i].batch.count)
            s_batch_send(self, &self->batches[i]);
}

void
tqb_batch_free(tq_broker_t *self)
{
    for (int i = 0; i < TQB_BATCH_SLOTS; i++) {
        tq_batch_destroy(&self->batches[i].batch);
        tqb_ident_clear(&self->batches[i].to);
    }
    for (uint32_t i = 0; i < self->batch_peer_count; i++)
        tqb_ident_clear(&self->batch_peers[i]);
    self->batch_peer_count = 0;
}

void
tqb_batch_send_child(tq_broker_t *self, peer_t *child)
{
    out_batch_t *open = s_batch_of_child(self, child);
    if (open)
        s_batch_send(self, open);
}

void
tqb_batch_drop(tq_broker_t *self, const peer_t *child)
{
    for (int i = 0; i < TQB_BATCH_SLOTS; i++)
        if (self->batches[i].batch.count && self->batches[i].child == child)
            tq_batch_reset(&self->batches[i].batch);
}

static int s_send_to(tq_broker_t *self, void *socket, const ident_t *ident,
                     const s_payload_t *payload);

int
tqb_send_child(tq_broker_t *self, peer_t *child, zmq_msg_t *payload,
               const void *data, size_t size)
{
    s_payload_t p = {true, data, size, payload};
    if (!(child->features & TQ_FEATURE_BATCH) || size > TQ_BATCH_MAX_PAYLOAD)
        return s_send_to(self, self->workers, &child->ident, &p);
    out_batch_t *open = s_batch_of_child(self, child);
    if (open && s_batch_full(open, size)) {
        s_batch_send(self, open); /* the slot stays the child's */
        if (child->unreachable_ms) {
            /* that batch was refused: so is this message, as the next
               lone send would have been */
            errno = EHOSTUNREACH;
            return -1;
        }
    }
    s_batch_add(self, open, self->workers, child, &child->ident, &p);
    return 0;
}

int
tqb_send_to(tq_broker_t *self, void *socket, const ident_t *ident,
            zmq_msg_t *payload)
{
    s_payload_t p = s_payload_msg(payload);
    return s_send_to(self, socket, ident, &p);
}

/* A payload of borrowed bytes as a message of its own, in copy (an
   initialised message): for what goes alone. */
static void
s_payload_own(const s_payload_t *payload, zmq_msg_t *copy)
{
    zmq_msg_init_size(copy, payload->size);
    if (payload->size)
        memcpy(zmq_msg_data(copy), payload->data, payload->size);
}

/* tqb_send_to, its payload of either form. */
static int
s_send_to(tq_broker_t *self, void *socket, const ident_t *ident,
          const s_payload_t *payload)
{
    zmq_msg_t copy; /* borrowed bytes that go alone */
    zmq_msg_t *msg = payload->has ? payload->msg : NULL;
    if (socket == self->clients && self->local_fn &&
        s_ident_eq(ident, &self->local_ident)) {
        /* the embedded pool's caller, in this process */
        if (payload->has && !msg) {
            s_payload_own(payload, &copy);
            msg = &copy;
        }
        /* it reads the id as text: an id left to the encoder to render
           (s_out_id_text) is rendered here */
        char text[2 * TQB_ID_BIN + 1];
        tq_msg_t *out = &self->out;
        bool render = !out->id.ptr && out->id_bytes && !out->id_binary;
        if (render) {
            tqb_id_render(text, out->id_bytes);
            out->id = (tq_str_t){text, 2 * TQB_ID_BIN};
        }
        tqb_local_deliver(self, ident, msg);
        if (render)
            out->id = (tq_str_t){0};
        if (msg == &copy)
            zmq_msg_close(&copy);
        return 0;
    }
    if (socket == self->workers) {
        /* a child's open batch goes first (only TASKs join it) */
        out_batch_t *open = s_batch_find(self, socket, ident);
        if (open)
            s_batch_send(self, open);
    }
    if (socket == self->clients) {
        out_batch_t *open = s_batch_find(self, socket, ident);
        /* a QITEM goes alone: its item is handed over only when the
           transport takes it (tq_dataq.c keeps it otherwise) */
        if (self->out.command != TQ_CMD_QITEM &&
            payload->size <= TQ_BATCH_MAX_PAYLOAD &&
            (open || tqb_batch_takes(self, ident))) {
            s_batch_add(self, open, socket, NULL, ident, payload);
            return 0;
        }
        if (open)
            s_batch_send(self, open); /* what came before goes first */
    }
    if (payload->has && !msg) {
        s_payload_own(payload, &copy);
        msg = &copy;
    }
    zmq_msg_t id;
    zmq_msg_init_size(&id, ident->size);
    memcpy(zmq_msg_data(&id), tqb_ident_data(ident), ident->size);
    int rc = tq_wire_send_msg(socket, &id, &self->out, &self->sbuf, msg,
                              ZMQ_DONTWAIT);
    tqb_sent(self, socket);
    zmq_msg_close(&id);
    if (msg == &copy) {
        int err = errno;
        zmq_msg_close(&copy);
        errno = err;
    }
    if (rc == TQ_EINVAL)
        s_encode_bug(self);
    if (rc != 0) {
        int err = errno;
        self->counters.dropped++;
        if (socket == self->clients && err == EAGAIN)
            s_client_dropped(self, ident, 1);
        tqb_debug(self, "send %s failed: %s",
                  tq_proto_command_name(self->out.command), zmq_strerror(err));
        errno = err;
        return -1;
    }
    return 0;
}

tq_msg_t *
tqb_out(tq_broker_t *self, uint8_t command)
{
    tq_msg_t *out = &self->out;
    out->command = command;
    out->id = (tq_str_t){0};
    out->id_binary = false;
    out->id_bytes = NULL;
    out->task = (tq_str_t){0};
    out->queue = (tq_str_t){0};
    out->error = (tq_str_t){0};
    out->host = (tq_str_t){0};
    out->priority = out->time_limit_ms = out->attempt = 0;
    out->state = out->code = out->credit = 0;
    out->pid = out->ppid = 0;
    out->session = 0;
    out->dropped = 0;
    out->wait = false;
    out->queue_count = out->task_count = 0;
    return out;
}

void
tqb_reply(tq_broker_t *self, void *socket)
{
    ident_t to = tqb_sender(self);
    tqb_send_to(self, socket, &to, NULL);
}

void
tqb_reply_error(tq_broker_t *self, void *socket, int code, const char *text,
                tq_str_t id)
{
    tq_msg_t *out = tqb_out(self, TQ_CMD_ERROR);
    out->code = (uint32_t)code;
    out->error = tq_str(text);
    if (id.ptr && tq_proto_valid_id(id.ptr, id.len))
        out->id = id;
    tqb_reply(self, socket);
}

bool
tqb_may_see(const tq_broker_t *self, const task_t *task)
{
    /* the owner survives a restart (the store keeps it); a task with no
       recorded owner (submitted without CURVE, or stored before schema
       v5) stays visible to every key, as it was before */
    const char *owner = tqb_task_owner(self, task);
    return !self->auth || self->in_admin || !owner || owner == self->in_key;
}

void
tqb_reply_unknown(tq_broker_t *self, tq_str_t id)
{
    tqb_out(self, TQ_CMD_UNKNOWN)->id = id;
    tqb_reply(self, self->clients);
}

/* The task's id into out (fresh from tqb_out) for a client, as text: one
   the broker keeps as its 16 bytes goes as those bytes, which the encoder
   renders once, straight into the message, unchecked (the broker made
   that text); one kept as text is checked at encode as any. */
static void
s_out_id_text(tq_msg_t *out, const task_t *task)
{
    if (task->id_bin)
        out->id_bytes = (const uint8_t *)task->rec.id;
    else
        out->id = tq_str(task->rec.id);
}

int
tqb_send_result(tq_broker_t *self, task_t *task, const ident_t *to)
{
    tq_msg_t *out = tqb_out(self, TQ_CMD_RESULT);
    s_out_id_text(out, task);
    out->attempt = task->rec.attempt;
    out->state = (uint32_t)tqb_task_wire_state(task);
    out->code = task->rec.code;
    out->error = tq_str(tqb_task_error(self, task));
    /* the value: the task's own bytes when it holds them (copied once,
       into the batch or the message), else shared or read back */
    s_payload_t p = {true, NULL, 0, NULL};
    if (task->state == TASK_SUCCESS &&
        tqb_task_payload_bytes(task, &p.data, &p.size))
        return s_send_to(self, self->clients, to, &p);
    zmq_msg_t value;
    const char *why = NULL;
    if (task->state != TASK_SUCCESS)
        zmq_msg_init(&value);
    else if (tqb_task_payload(self, task, &value, &why) != 0) {
        /* a delivered result read back from the store, damaged */
        out->state = TQ_STATE_FAILURE;
        out->code = TQ_ECORRUPT;
        out->error = tq_str(why);
    }
    int rc = tqb_send_to(self, self->clients, to, &value);
    zmq_msg_close(&value);
    return rc;
}

/* ---- msgpack bodies ---- */

static void
s_free_sbuffer(void *data, void *hint)
{
    (void)hint;
    free(data);
}

void
tqb_body_init(msgpack_sbuffer *body, msgpack_packer *pk)
{
    msgpack_sbuffer_init(body);
    msgpack_packer_init(pk, body, msgpack_sbuffer_write);
}

void
tqb_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void
tqb_pack_uint_kv(msgpack_packer *pk, const char *key, uint64_t value)
{
    tqb_pack_str(pk, key);
    msgpack_pack_uint64(pk, value);
}

void
tqb_send_body(tq_broker_t *self, msgpack_sbuffer *body)
{
    zmq_msg_t payload;
    size_t size = body->size;
    zmq_msg_init_data(&payload, msgpack_sbuffer_release(body), size,
                      s_free_sbuffer, NULL);
    ident_t to = tqb_sender(self);
    tqb_send_to(self, self->clients, &to, &payload);
    zmq_msg_close(&payload);
}

void
tqb_reply_body(tq_broker_t *self, msgpack_sbuffer *body)
{
    /* echo the request's id, when it gave one */
    tqb_out(self, TQ_CMD_REPLY)->id = self->in.id;
    tqb_send_body(self, body);
}

void
tqb_reply_counts(tq_broker_t *self, tq_str_t id, const char *k1, uint64_t v1,
                 const char *k2, uint64_t v2)
{
    msgpack_sbuffer body;
    msgpack_packer pk;
    tqb_body_init(&body, &pk);
    msgpack_pack_map(&pk, k2 ? 2 : 1);
    tqb_pack_uint_kv(&pk, k1, v1);
    if (k2)
        tqb_pack_uint_kv(&pk, k2, v2);
    tqb_out(self, TQ_CMD_REPLY)->id = id;
    tqb_send_body(self, &body);
}

/* ---- SUBMITTED folded into RESULT ---- */

/* a drained ring larger than this is given back */
#define FOLDS_KEPT 4096
/* at most this many held at once: a burst beyond it has its oldest
   acknowledged at once (its ring ~100 bytes a task, its SUBMITTEDs all
   due together) */
#define FOLDS_MAX 65536
/* SUBMITTEDs sent per pass when many fall due together: the loop comes
   back at once for the rest, the I/O thread sending meanwhile */
#define FOLDS_PER_PASS 4096

/* Sends the oldest held SUBMITTED, unless its task ended (its RESULT
   acknowledged it; one forgotten since, result TTL 0, ended too). */
static void
s_fold_release_head(tq_broker_t *self)
{
    fold_t *fold = &self->folds[self->fold_head];
    /* by the id's bytes when it has them: no parse of its text */
    task_t *task = fold->id_bin
        ? tqb_task_find_bin(self, (const uint8_t *)fold->id)
        : tqb_task_find(self, tq_str(fold->id));
    if (task && !tqb_task_is_final(task)) {
        ident_t to = tqb_task_client(self, task);
        s_out_id_text(tqb_out(self, TQ_CMD_SUBMITTED), task);
        if (to.size)
            tqb_send_to(self, self->clients, &to, NULL);
    }
    self->fold_head = (self->fold_head + 1) % self->fold_cap;
    self->fold_count--;
}

void
tqb_fold_ack(tq_broker_t *self, const task_t *task)
{
    if (self->fold_count >= FOLDS_MAX)
        s_fold_release_head(self);
    if (self->fold_count == self->fold_cap) {
        uint32_t cap = self->fold_cap ? 2 * self->fold_cap : 256;
        fold_t *folds = tqb_alloc(cap * sizeof *folds);
        for (uint32_t i = 0; i < self->fold_count; i++)
            folds[i] = self->folds[(self->fold_head + i) % self->fold_cap];
        free(self->folds);
        self->folds = folds;
        self->fold_head = 0;
        self->fold_cap = cap;
    }
    /* one window for all: the ring stays in due order */
    fold_t *fold =
        &self->folds[(self->fold_head + self->fold_count) % self->fold_cap];
    /* the submitter is the task's: not copied here */
    fold->id_bin = task->id_bin;
    if (task->id_bin)
        memcpy(fold->id, task->rec.id, TQB_ID_BIN);
    else
        tq_str_copy(fold->id, sizeof fold->id, tq_str(task->rec.id));
    fold->due_ms = self->now_ms + self->config.ack_fold_ms;
    self->fold_count++;
}

/* True if the oldest held SUBMITTED's task ended (or was forgotten): its
   RESULT acknowledged it, and nothing is left to send. */
static bool
s_fold_head_done(tq_broker_t *self)
{
    const fold_t *fold = &self->folds[self->fold_head];
    task_t *task = fold->id_bin
        ? tqb_task_find_bin(self, (const uint8_t *)fold->id)
        : tqb_task_find(self, tq_str(fold->id));
    return !task || tqb_task_is_final(task);
}

int64_t
tqb_release_folds(tq_broker_t *self, bool all)
{
    int sent = 0;
    while (self->fold_count) {
        fold_t *fold = &self->folds[self->fold_head];
        /* one whose task ended has nothing to send: let go before it is
           due, so that its deadline wakes nobody (a round trip at a time
           would otherwise wake the broker a window after each) */
        if (!all && fold->due_ms > self->now_ms) {
            if (!s_fold_head_done(self))
                return fold->due_ms;
            self->fold_head = (self->fold_head + 1) % self->fold_cap;
            self->fold_count--;
            continue;
        }
        if (!all && sent == FOLDS_PER_PASS)
            return self->now_ms;
        s_fold_release_head(self);
        sent++;
    }
    if (self->fold_cap > FOLDS_KEPT) {
        /* a burst's ring (~100 bytes a task) goes back once drained,
           as the journal's acknowledgement queue does */
        free(self->folds);
        self->folds = NULL;
        self->fold_cap = 0;
        self->fold_head = 0;
        self->trims_owed = TQB_TRIMS_AFTER_BURST;
    }
    return INT64_MAX;
}
