/* tq_reply.c - routing ids and everything the broker sends: the one send
   path (tqb_send_to), replies to the current sender, RESULTs, and msgpack
   bodies for REPLY and STATUS_REPLY. */
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

bool
tqb_ident_eq(const ident_t *a, const ident_t *b)
{
    return a->size == b->size &&
        memcmp(tqb_ident_data(a), tqb_ident_data(b), a->size) == 0;
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
    ident_t ident = {0};
    size_t size = zmq_msg_size(&self->frames.identity);
    if (size > 255)
        size = 255;
    ident.size = (uint8_t)size;
    if (size > TQB_IDENT_INLINE)
        ident.heap = (uint8_t *)zmq_msg_data(&self->frames.identity);
    else
        memcpy(ident.bytes, zmq_msg_data(&self->frames.identity), size);
    return ident; /* borrowed: never tqb_ident_clear it */
}

/* ---- sending ---- */

#define S_DROP_TABLE_MAX 10000 /* clients whose drops are remembered */

/* A reply to a client that does not read was dropped at its backlog
   (ZMQ_SNDHWM): counted for it, so its next PONG tells it. */
static void
s_client_dropped(tq_broker_t *self, const ident_t *ident)
{
    char key[2 * 255 + 1];
    tqb_hex(key, tqb_ident_data(ident), ident->size);
    uintptr_t count = (uintptr_t) zhashx_lookup(self->client_drops, key);
    if (!count && zhashx_size(self->client_drops) >= S_DROP_TABLE_MAX)
        zhashx_purge(self->client_drops); /* a bound, not a history */
    zhashx_update(self->client_drops, key, (void *) (count + 1));
    if (count == 0 || (count + 1) % 10000 == 0)
        tqb_warn(self,
                 "client %s does not read its replies: %llu dropped "
                 "(max-client-backlog %u); it asks again when it reads",
                 key, (unsigned long long) count + 1,
                 self->config.max_client_backlog);
}

uint64_t
tqb_client_dropped(tq_broker_t *self, const ident_t *ident)
{
    char key[2 * 255 + 1];
    tqb_hex(key, tqb_ident_data(ident), ident->size);
    return (uintptr_t) zhashx_lookup(self->client_drops, key);
}

int
tqb_send_to(tq_broker_t *self, void *socket, const ident_t *ident,
            zmq_msg_t *payload)
{
    if (socket == self->clients && tqb_local_deliver(self, ident, payload))
        return 0; /* the embedded pool's caller, in this process */
    zmq_msg_t id;
    zmq_msg_init_size(&id, ident->size);
    memcpy(zmq_msg_data(&id), tqb_ident_data(ident), ident->size);
    const char *reason = NULL;
    int rc = tq_wire_send_msg(socket, &id, &self->out, &self->sbuf, payload,
                              ZMQ_DONTWAIT);
    zmq_msg_close(&id);
    if (rc == TQ_EINVAL) {
        /* our own message broke the protocol's rules: a bug */
        tq_proto_encode(&self->out, &self->sbuf, &reason);
        tq_log_error("BUG: cannot encode %s: %s",
                tq_proto_command_name(self->out.command),
                reason ? reason : "?");
        abort();
    }
    if (rc != 0) {
        int err = errno;
        self->counters.dropped++;
        if (socket == self->clients && err == EAGAIN)
            s_client_dropped(self, ident);
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

int
tqb_send_result(tq_broker_t *self, task_t *task, const ident_t *to)
{
    tq_msg_t *out = tqb_out(self, TQ_CMD_RESULT);
    out->id = tq_str(tqb_task_id(task));
    out->attempt = task->rec.attempt;
    out->state = (uint32_t)tqb_task_wire_state(task);
    out->code = task->rec.code;
    out->error = tq_str(tqb_task_error(self, task));
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
    task_t *task = tqb_task_find(self, tq_str(fold->id));
    if (task && !tqb_task_is_final(task)) {
        tqb_out(self, TQ_CMD_SUBMITTED)->id = tq_str(fold->id);
        tqb_send_to(self, self->clients, &fold->to, NULL);
    }
    tqb_ident_clear(&fold->to);
    self->fold_head = (self->fold_head + 1) % self->fold_cap;
    self->fold_count--;
}

void
tqb_fold_ack(tq_broker_t *self, tq_str_t id, const ident_t *to)
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
    memset(fold, 0, sizeof *fold);
    tqb_ident_set(&fold->to, tqb_ident_data(to), to->size);
    tq_str_copy(fold->id, sizeof fold->id, id);
    fold->due_ms = self->now_ms + self->config.ack_fold_ms;
    self->fold_count++;
}

int64_t
tqb_release_folds(tq_broker_t *self, bool all)
{
    for (int sent = 0; self->fold_count; sent++) {
        fold_t *fold = &self->folds[self->fold_head];
        if (!all && fold->due_ms > self->now_ms)
            return fold->due_ms;
        if (!all && sent == FOLDS_PER_PASS)
            return self->now_ms;
        s_fold_release_head(self);
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
