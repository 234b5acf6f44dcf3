/* tq_client_io.c - the client's I/O thread: it alone touches the socket
   and the table of requests. It takes requests off the submission queue,
   sends SUBMIT / GET / STATUS / PING, and completes handles from
   SUBMITTED, STATE, RESULT, UNKNOWN, STATUS_REPLY and ERROR. Every change
   of a request's state goes through tq_io_move, which keeps the request
   in the container of its state (tq_request.h). Which broker it talks
   to, liveness and reconnects are in tq_client_live.c. */
#include <assert.h>
#include <czmq.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tq_client_io.h"
#include "tq_curve.h"
#include "tq_log.h"
#include "tq_proto.h"
#include "tq_spare.h"
#include "tq_wire.h"

/* block_when_full: first and longest wait before a refused SUBMIT is sent
   again (ms). */
#define S_FULL_RETRY_MIN_MS 50
#define S_FULL_RETRY_MAX_MS 1000
/* answers read before the callers waiting on them are woken (at most) */
#define S_WAKE_EVERY 32
/* requests sent together in one BATCH: at most this many, and the next
   one only while the BATCH is smaller than S_BATCH_BYTES. The broker
   bounds a client's messages waiting for it in count (2,048), not in
   bytes: 8 KiB batches keep that at 16 MiB (64 KiB ones let a burst of
   a million 100-byte SUBMITs leave the broker 60 MiB larger), and fit
   libzmq's receive buffer (8 KiB), read without an allocation of its own */
#define S_BATCH_MAX 256
#define S_BATCH_BYTES 8192

/* ---- containers --------------------------------------------------------- */

static void
s_list_append(tq_io_list_t *list, tq_request_t *r)
{
    r->next = NULL;
    r->prev = list->tail;
    if (list->tail)
        list->tail->next = r;
    else
        list->head = r;
    list->tail = r;
}

static void
s_list_remove(tq_io_list_t *list, tq_request_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        list->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        list->tail = r->prev;
    r->next = r->prev = NULL;
}

/* ---- the id table --------------------------------------------------- */

#define S_TABLE_MIN 1024 /* slots at first */

/* A hash of an id, read 8 bytes at a time (the ids clients make are 32 hex
   digits: four words), its bits mixed so that the low ones, which pick
   the slot, depend on every byte. */
uint64_t
tq_io_hash(const char *id, size_t len)
{
    const uint64_t k = 0xff51afd7ed558ccdULL;
    uint64_t h = len * 0x9e3779b97f4a7c15ULL, w;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        memcpy(&w, id + i, 8);
        h = (h ^ w) * k;
        h ^= h >> 32;
    }
    if (i < len) {
        w = 0;
        memcpy(&w, id + i, len - i);
        h = (h ^ w) * k;
    }
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 33);
}

/* True if r's id is the len bytes at id (its length is known: id_len). */
static bool
s_id_is(const tq_request_t *r, const char *id, size_t len)
{
    return r->id_len == len && memcmp(r->id, id, len) == 0;
}

/* The slot of id (hash h): its head's, or the empty one where it would
   go. The table has an empty slot (it is at most half full). */
static tq_io_slot_t *
s_table_slot(tq_io_table_t *t, uint64_t h, const char *id, size_t len)
{
    size_t mask = t->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        tq_io_slot_t *slot = &t->slots[i];
        if (!slot->head || (slot->hash == h && s_id_is(slot->head, id, len)))
            return slot;
    }
}

void
tq_io_table_own(tq_io_table_t *t, const char prefix[16])
{
    memcpy(t->own, prefix, sizeof t->own);
}

/* The value of the 8 hex digits at hex (lowercase or uppercase; other
   bytes give some value, the same each time), by the 8 bytes at once. */
static uint32_t
s_hex8(const char *hex)
{
    uint64_t w;
    memcpy(&w, hex, sizeof w);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    w = __builtin_bswap64(w); /* the last digit in the lowest byte */
#endif
    /* each byte its digit's value: '0'..'9' are 0x30..0x39, 'a'..'f'
       0x61..0x66 and 'A'..'F' 0x41..0x46 (bit 6 set: 9 more) */
    const uint64_t ones = 0x0101010101010101ULL;
    w = (w & 0x0f * ones) + 9 * ((w >> 6) & ones);
    /* then the 8 nibbles side by side: pairs, fours, all eight */
    w = (w | w >> 4) & 0x00ff00ff00ff00ffULL;
    w = (w | w >> 8) & 0x0000ffff0000ffffULL;
    return (uint32_t)(w | w >> 16);
}

uint64_t
tq_io_table_hash(const tq_io_table_t *t, const char *id, size_t len)
{
    if (len == 32) {
        uint64_t prefix[2];
        memcpy(prefix, id, sizeof prefix);
        if (prefix[0] == t->own[0] && prefix[1] == t->own[1])
            return 2 * (uint64_t)s_hex8(id + 24);
    }
    return tq_io_hash(id, len);
}

tq_request_t *
tq_io_table_find(tq_io_table_t *t, const char *id, size_t len)
{
    if (!t->cap)
        return NULL;
    return s_table_slot(t, tq_io_table_hash(t, id, len), id, len)->head;
}

/* Doubles the slots (at least S_TABLE_MIN): the heads move to theirs. */
static void
s_table_grow(tq_io_table_t *t)
{
    tq_io_table_t bigger = {.cap = t->cap ? 2 * t->cap : S_TABLE_MIN,
                            .count = t->count,
                            .own = {t->own[0], t->own[1]}};
    bigger.slots = calloc(bigger.cap, sizeof *bigger.slots);
    assert(bigger.slots);
    for (size_t i = 0; i < t->cap; i++) {
        tq_request_t *h = t->slots[i].head;
        if (h)
            *s_table_slot(&bigger, h->hash, h->id, h->id_len) = t->slots[i];
    }
    free(t->slots);
    *t = bigger;
}

/* Puts by (NULL: nothing) in the place of head (in slot), which leaves.
   A slot emptied is filled again by the entries after it that probed
   past it (deletion without tombstones). */
static void
s_table_replace(tq_io_table_t *t, tq_io_slot_t *slot, tq_request_t *by)
{
    if (by) {
        slot->head = by;
        return;
    }
    size_t mask = t->cap - 1;
    size_t hole = (size_t)(slot - t->slots);
    t->slots[hole].head = NULL;
    t->count--;
    for (size_t i = (hole + 1) & mask; t->slots[i].head; i = (i + 1) & mask) {
        size_t home = t->slots[i].hash & mask;
        /* the entry may move to the hole if its home is not in
           (hole, i] going round */
        bool between =
            hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!between) {
            t->slots[hole] = t->slots[i];
            t->slots[i].head = NULL;
            hole = i;
        }
    }
}

tq_request_t *
tq_io_first(tq_io_t *io, tq_io_iter_t *it)
{
    it->slot = 0;
    return tq_io_next(io, it);
}

tq_request_t *
tq_io_next(tq_io_t *io, tq_io_iter_t *it)
{
    while (it->slot < io->pending.cap) {
        tq_request_t *h = io->pending.slots[it->slot++].head;
        if (h)
            return h;
    }
    return NULL;
}

/* Adds r to the table: the chain of its id, and the FIFO for an operator
   request (an older broker answers those in order, without the id). */
static void
s_index_add(tq_io_t *io, tq_request_t *r)
{
    if (TQ_REQ_IS_FIFO(r->kind)) {
        /* and by its id below: a broker that echoes it */
        r->next_fifo = NULL;
        if (io->fifo_tail)
            io->fifo_tail->next_fifo = r;
        else
            io->fifo_head = r;
        io->fifo_tail = r;
    }
    tq_io_table_add(&io->pending, r);
}

void
tq_io_table_add(tq_io_table_t *t, tq_request_t *r)
{
    r->next_same = NULL;
    /* its id's length and hash, once: every lookup compares them */
    r->id_len = strlen(r->id);
    r->hash = tq_io_table_hash(t, r->id, r->id_len);
    /* grown first (at most half full), so that one look finds the slot */
    if (2 * (t->count + 1) > t->cap)
        s_table_grow(t);
    tq_io_slot_t *slot = s_table_slot(t, r->hash, r->id, r->id_len);
    tq_request_t *head = slot->head;
    if (!head) {
        slot->hash = r->hash;
        slot->head = r;
        t->count++;
        return;
    }
    while (head->next_same)
        head = head->next_same;
    head->next_same = r;
}

/* The slot of the chain r is on (r in the table): found by r's hash, the
   one r heads recognised without reading a request. */
static tq_io_slot_t *
s_table_slot_of(tq_io_table_t *t, const tq_request_t *r)
{
    size_t mask = t->cap - 1;
    for (size_t i = r->hash & mask;; i = (i + 1) & mask) {
        tq_io_slot_t *slot = &t->slots[i];
        if (slot->head == r || !slot->head ||
            (slot->hash == r->hash && s_id_is(slot->head, r->id, r->id_len)))
            return slot;
    }
}

/* Removes r from the table (the map entry goes with the last of its id). */
static void
s_index_remove(tq_io_t *io, tq_request_t *r)
{
    if (TQ_REQ_IS_FIFO(r->kind)) {
        tq_request_t **pp = &io->fifo_head, *last = NULL;
        while (*pp && *pp != r)
            last = *pp, pp = &(*pp)->next_fifo;
        if (*pp) {
            *pp = r->next_fifo;
            if (io->fifo_tail == r)
                io->fifo_tail = last;
            r->next_fifo = NULL;
        }
    }
    tq_io_table_remove(&io->pending, r);
}

void
tq_io_table_remove(tq_io_table_t *t, tq_request_t *r)
{
    if (!t->cap)
        return;
    tq_io_slot_t *slot = s_table_slot_of(t, r);
    tq_request_t *head = slot->head;
    if (head == r) {
        /* the next on its id, if any, heads the chain in its place */
        s_table_replace(t, slot, r->next_same);
        r->next_same = NULL;
        return;
    }
    tq_request_t **pp = &head;
    while (*pp && *pp != r)
        pp = &(*pp)->next_same;
    if (!*pp)
        return;
    *pp = r->next_same;
    r->next_same = NULL;
}

/* Every request in the table, in a list of its own (borrowed entries):
   moves may change the table while the caller walks the list. */
zlistx_t *
tq_io_all(tq_io_t *io)
{
    zlistx_t *all = zlistx_new();
    assert(all);
    tq_io_iter_t it;
    for (tq_request_t *head = tq_io_first(io, &it); head;
         head = tq_io_next(io, &it))
        for (tq_request_t *r = head; r; r = r->next_same)
            zlistx_add_end(all, r);
    return all; /* the FIFO's are in the id table too */
}

/* The chain of requests on id (borrowed), NULL if none. */
tq_request_t *
tq_io_chain(tq_io_t *io, tq_str_t id)
{
    return id.ptr ? tq_io_table_find(&io->pending, id.ptr, id.len) : NULL;
}

/* ---- the state machine -------------------------------------------------- */

/* A request that ended: its handle loses the request's reference; a
   SUBMIT that ended without an answer goes to its handle, which may
   submit it again (tq_result_resubmit). */
static void
s_io_end(tq_request_t *r)
{
    tq_result_t *result = r->result;
    r->result = NULL;
    if (result && r->state == TQ_REQ_FAILED && r->kind == TQ_KIND_SUBMIT &&
        r->task)
        tq_result_keep(result, r);
    else
        tq_request_free(r);
    tq_result_unref(result);
}

/* The one place a request changes state: it leaves the container of its
   old state, enters that of the new one, and the counts follow. A final
   request is freed (or kept by its handle): r is gone on return. */
void
tq_io_move(tq_io_t *io, tq_request_t *r, tq_req_state_t to)
{
    tq_req_state_t from = r->state;
    tq_request_move(r, to); /* aborts on an illegal move */
    tq_client_count_move(io->client, from, to);
    if (from == TQ_REQ_QUEUED)
        s_list_remove(&io->out, r);
    else if (from == TQ_REQ_DEFERRED)
        s_list_remove(&io->deferred, r);
    if (r->held) {
        /* answered, sent again or ended: no longer held */
        r->held = false;
        io->held--;
    }
    bool was = tq_request_unacked(from), is = tq_request_unacked(to);
    if (was && !is)
        io->unacked--;
    else if (!was && is && io->unacked++ == 0)
        io->unacked_since = zclock_mono();
    if (from == TQ_REQ_NEW && !tq_request_final(to)) {
        s_index_add(io, r);
        if (io->waiting++ == 0)
            io->waiting_since = zclock_mono();
        atomic_store_explicit(&io->client->waiting_hint, io->waiting,
                              memory_order_relaxed);
    }
    switch (to) {
    case TQ_REQ_QUEUED:
        s_list_append(&io->out, r);
        break;
    case TQ_REQ_DEFERRED:
        s_list_append(&io->deferred, r);
        break;
    case TQ_REQ_DONE:
    case TQ_REQ_FAILED:
        if (from != TQ_REQ_NEW) {
            s_index_remove(io, r);
            io->waiting--;
            atomic_store_explicit(&io->client->waiting_hint, io->waiting,
                                  memory_order_relaxed);
        }
        s_io_end(r);
        break;
    default:
        break;
    }
}

/* This thread is the I/O thread; this thread is a caller reading the
   socket (tq_client_io_lead). */
static _Thread_local bool s_on_io_thread;
static _Thread_local bool s_leading;
/* The handle a leading caller waits for (tq_client_io_lead). */
static _Thread_local tq_result_t *s_lead_handle;

/* True if result must be finished by the I/O thread: a caller reads the
   socket, and the handle has callbacks (they run on the I/O thread) that
   are the program's (tq_result_callbacks_anywhere). */
static bool
s_io_finish_later(tq_result_t *result)
{
    return s_leading && (result->callback || result->error_callback) &&
        !atomic_load(&result->callbacks_anywhere);
}

/* Keeps a handle's outcome for the I/O thread (takes the reference on
   result; value moved when not NULL). */
static void
s_io_later(tq_io_t *io, tq_result_t *result, int state, int code,
           const char *error, size_t error_len, zmq_msg_t *value)
{
    tq_io_later_t *l = calloc(1, sizeof *l);
    assert(l);
    l->result = result;
    l->state = state;
    l->code = code;
    l->error = error && error_len ? strndup(error, error_len) : NULL;
    zmq_msg_init(&l->value);
    if (value)
        zmq_msg_move(&l->value, value);
    if (io->later_tail)
        io->later_tail->next = l;
    else
        io->later = l;
    io->later_tail = l;
}

/* Finishes the handles a caller read the outcome of (I/O thread). */
static void
s_io_run_later(tq_io_t *io)
{
    while (io->later) {
        tq_io_later_t *l = io->later;
        io->later = l->next;
        if (!io->later)
            io->later_tail = NULL;
        tq_result_finish(l->result, l->state, l->code, l->error,
                         l->error ? strlen(l->error) : 0, &l->value);
        tq_result_unref(l->result);
        zmq_msg_close(&l->value);
        free(l->error);
        free(l);
    }
}

/* Ends r with the broker's outcome (value moved when not NULL), and its
   count of attempts when not NULL (a RESULT's). */
static void
s_io_done(tq_io_t *io, tq_request_t *r, int state, int code, tq_str_t error,
          zmq_msg_t *value, const uint32_t *attempts)
{
    /* the request ends before its handle: a caller woken by the handle
       finds the request gone (and counted); its reference on the handle
       is the one dropped below (an embedded request lives in the
       handle's allocation: it stays until then) */
    tq_result_t *result = r->result;
    r->result = NULL;
    tq_io_move(io, r, TQ_REQ_DONE);
    if (result && s_io_finish_later(result)) {
        if (attempts)
            tq_result_set_attempts(result, *attempts);
        s_io_later(io, result, state, code, error.ptr, error.len, value);
    } else if (result && attempts) {
        tq_result_finish_attempts(result, *attempts, state, code, error.ptr,
                                  error.len, value);
        tq_result_unref(result);
    } else if (result) {
        tq_result_finish(result, state, code, error.ptr, error.len, value);
        tq_result_unref(result);
    }
}

/* Ends r without an answer from the broker. */
void
tq_io_failed(tq_io_t *io, tq_request_t *r, int code, const char *text)
{
    /* the request ends first: a SUBMIT's goes to its handle, where a
       caller woken by the failure finds it (tq_result_resubmit) */
    tq_result_t *result = r->result;
    if (result)
        tq_result_ref(result);
    tq_io_move(io, r, TQ_REQ_FAILED);
    if (result && s_io_finish_later(result))
        s_io_later(io, result, TQ_STATE_FAILURE, code, text,
                   text ? strlen(text) : 0, NULL);
    else if (result) {
        tq_result_fail(result, code, text);
        tq_result_unref(result);
    }
}

/* The broker acknowledged r (SUBMITTED). */
static void
s_io_ack(tq_io_t *io, tq_request_t *r)
{
    if (!tq_request_unacked(r->state))
        return;
    tq_io_move(io, r, TQ_REQ_ACKED);
    if (r->kind == TQ_KIND_SUBMIT) {
        if (r->reget)
            /* the broker may have known the id before: its result then
               went to a connection that is gone, or went already */
            zlistx_add_end(io->regets, strdup(r->id));
        /* never sent again: the broker has it */
        tq_request_forget_args(r);
    }
    if (r->result)
        tq_result_answer(r->result, -1);
}

/* ---- sending ------------------------------------------------------------ */

/* A request's name (its task or queue) and its length when known. */
static tq_str_t
s_name(const char *name, size_t len)
{
    return len ? (tq_str_t){name, (uint32_t)len} : tq_str(name);
}

/* Clears the fields of a message a client sends: all but the name arrays
   of READY (kilobytes, on the path of every request). */
static void
s_msg_clear(tq_msg_t *m)
{
    memset(m, 0, offsetof(tq_msg_t, queues));
}

/* Fills io->out_msg with what r asks; returns its payload (borrowed from
   r) or NULL when its command has none. */
static zmq_msg_t *
s_io_encode(tq_io_t *io, tq_request_t *r)
{
    tq_msg_t *m = &io->out_msg;
    s_msg_clear(m);
    zmq_msg_t *payload = NULL;
    /* its length is known since it entered the id table (s_index_add) */
    m->id = (tq_str_t){r->id, (uint32_t)r->id_len};
    switch (r->kind) {
    case TQ_KIND_SUBMIT:
        m->command = TQ_CMD_SUBMIT;
        m->task = s_name(r->task, r->task_len);
        m->queue = s_name(r->queue, r->queue_len);
        m->priority = r->priority;
        m->time_limit_ms = r->time_limit_ms;
        m->retries = r->retries;
        m->backoff_ms = r->backoff_ms;
        m->delay_ms = r->delay_ms;
        /* a RESULT acknowledges it as well (s_on_result): a broker may
           fold SUBMITTED into it (PROTOCOL.md 5.1) */
        m->features = atomic_load(&io->client->no_fold) ? 0 : TQ_FEATURE_FOLD;
        r->folded = m->features != 0;
        /* the broker may send this client several messages in one
           (PROTOCOL.md 5.9) */
        if (!atomic_load(&io->client->no_batch))
            m->features |= TQ_FEATURE_BATCH;
        payload = &r->payload;
        break;
    case TQ_KIND_GET:
        m->command = TQ_CMD_GET;
        m->wait = r->wait;
        break;
    case TQ_KIND_STATUS:
        m->command = TQ_CMD_STATUS;
        break;
    case TQ_KIND_CANCEL:
        m->command = TQ_CMD_CANCEL;
        break;
    case TQ_KIND_RETRY:
        m->command = TQ_CMD_RETRY;
        break;
    case TQ_KIND_PURGE:
        m->command = TQ_CMD_PURGE;
        m->queue = s_name(r->queue, r->queue_len);
        break;
    case TQ_KIND_FAILED:
        m->command = TQ_CMD_FAILED;
        break;
    case TQ_KIND_QPUT:
        m->command = TQ_CMD_QPUT;
        m->queue = s_name(r->queue, r->queue_len);
        m->maxsize = r->maxsize;
        payload = &r->payload;
        break;
    case TQ_KIND_QGET:
        m->command = TQ_CMD_QGET;
        m->queue = s_name(r->queue, r->queue_len);
        m->time_limit_ms = r->time_limit_ms;
        break;
    case TQ_KIND_QSIZE:
        m->command = TQ_CMD_QSIZE;
        m->queue = s_name(r->queue, r->queue_len);
        break;
    case TQ_KIND_TERMINATE:
        assert(false); /* carried out when taken, never sent */
        break;
    }
    return payload;
}

/* ---- the SUBMIT header memo --------------------------------------------- */

void
tq_io_memo_init(tq_io_memo_t *memo)
{
    memset(memo, 0, sizeof *memo);
    msgpack_sbuffer_init(&memo->bytes);
    msgpack_sbuffer_init(&memo->probe);
}

void
tq_io_memo_destroy(tq_io_memo_t *memo)
{
    msgpack_sbuffer_destroy(&memo->bytes);
    msgpack_sbuffer_destroy(&memo->probe);
    tq_io_memo_init(memo);
}

/* True if SUBMIT m has the shape the memo keeps. */
static bool
s_memo_same(const tq_io_memo_t *memo, const tq_msg_t *m)
{
    return memo->state != TQ_IO_MEMO_NONE && m->id.len == memo->id_len &&
        m->task.len == memo->task_len && m->queue.len == memo->queue_len &&
        m->priority == memo->priority &&
        m->time_limit_ms == memo->time_limit_ms &&
        m->retries == memo->retries && m->backoff_ms == memo->backoff_ms &&
        m->delay_ms == memo->delay_ms && m->features == memo->features &&
        memcmp(m->task.ptr, memo->task, m->task.len) == 0 &&
        memcmp(m->queue.ptr, memo->queue, m->queue.len) == 0;
}

/* Keeps the shape of m (SEEN), or none when m is no SUBMIT of a str id
   and names within their bounds. */
static void
s_memo_keep(tq_io_memo_t *memo, const tq_msg_t *m)
{
    memo->state = TQ_IO_MEMO_NONE;
    if (m->command != TQ_CMD_SUBMIT || m->id_binary || !m->id.ptr ||
        !m->id.len || m->id.len > TQ_PROTO_MAX_ID || !m->task.ptr ||
        !m->queue.ptr || m->task.len > sizeof memo->task ||
        m->queue.len > sizeof memo->queue)
        return;
    memcpy(memo->task, m->task.ptr, m->task.len);
    memcpy(memo->queue, m->queue.ptr, m->queue.len);
    memo->task_len = m->task.len;
    memo->queue_len = m->queue.len;
    memo->id_len = m->id.len;
    memo->priority = m->priority;
    memo->time_limit_ms = m->time_limit_ms;
    memo->retries = m->retries;
    memo->backoff_ms = m->backoff_ms;
    memo->delay_ms = m->delay_ms;
    memo->features = m->features;
    memo->state = TQ_IO_MEMO_SEEN;
}

/* Makes the header of the shape kept (SEEN), m one of it: the codec
   encodes m, and m with another id of the same length (every byte
   changed). When the two differ in that id's bytes only, each written as
   it is, the header is READY with its id's place known; otherwise NO.
   m is as it was on return. */
static void
s_memo_make(tq_io_memo_t *memo, tq_msg_t *m)
{
    memo->state = TQ_IO_MEMO_NO;
    char other[TQ_PROTO_MAX_ID];
    size_t len = m->id.len;
    for (size_t i = 0; i < len; i++)
        other[i] = m->id.ptr[i] == '0' ? '1' : '0';
    if (tq_proto_encode(m, &memo->bytes, NULL) != TQ_OK)
        return;
    tq_str_t id = m->id;
    m->id = (tq_str_t){other, (uint32_t)len};
    int rc = tq_proto_encode(m, &memo->probe, NULL);
    m->id = id;
    const char *a = memo->bytes.data, *b = memo->probe.data;
    size_t n = memo->bytes.size, at = 0;
    if (rc != TQ_OK || memo->probe.size != n)
        return;
    while (at < n && a[at] == b[at])
        at++;
    if (at + len > n || memcmp(a + at, id.ptr, len) != 0 ||
        memcmp(b + at, other, len) != 0 ||
        memcmp(a + at + len, b + at + len, n - at - len) != 0)
        return;
    memo->id_at = at;
    memo->state = TQ_IO_MEMO_READY;
}

bool
tq_io_memo_header(tq_io_memo_t *memo, tq_msg_t *m, const void **data,
                  size_t *size)
{
    if (!s_memo_same(memo, m)) {
        s_memo_keep(memo, m);
        return false;
    }
    if (memo->state == TQ_IO_MEMO_SEEN)
        s_memo_make(memo, m);
    if (memo->state != TQ_IO_MEMO_READY)
        return false;
    memcpy(memo->bytes.data + memo->id_at, m->id.ptr, m->id.len);
    *data = memo->bytes.data;
    *size = memo->bytes.size;
    return true;
}

/* r went out (alone or in a BATCH) as the send-th message to libzmq. */
static void
s_io_sent(tq_io_t *io, tq_request_t *r, int64_t now, uint64_t send,
          bool batched)
{
    r->batched = batched;
    r->send_seq = send;
    r->epoch = io->epoch;
    r->sent_ms = now;
    r->dropped_ping = 0; /* a new send, a new answer */
    tq_io_move(io, r, TQ_REQ_SENT);
}

/* Sends one QUEUED request: SENT, or FAILED when the socket refuses it
   for good (r is then gone). TQ_OK, or -1 with errno EAGAIN to retry
   later (r stays QUEUED). */
static int
s_io_send(tq_io_t *io, tq_request_t *r, int64_t now)
{
    zmq_msg_t copy, *payload = s_io_encode(io, r);
    if (payload) {
        /* the request keeps its payload until answered: each send (the
           first, after TQ_EFULL, after a reconnect) sends a copy */
        zmq_msg_init(&copy);
        zmq_msg_copy(&copy, payload);
        payload = &copy;
    }
    uint64_t send = ++io->sends;
    int rc = tq_wire_send_msg(io->client->socket, NULL, &io->out_msg, &io->buf,
                              payload, ZMQ_DONTWAIT);
    int err = errno;
    if (payload)
        zmq_msg_close(payload);
    if (rc == -1 && (err == EAGAIN || err == EINTR)) {
        errno = EAGAIN;
        return -1;
    }
    if (rc != TQ_OK) {
        /* invalid fields were refused before queueing; this is a socket
           failure (ETERM): the request cannot go out */
        tq_io_failed(io, r, rc == TQ_EINVAL ? TQ_EINVAL : TQ_ECLOSED,
                     "cannot send the request to the broker");
        return TQ_OK;
    }
    s_io_sent(io, r, now, send, false);
    return TQ_OK;
}

/* True if r may go inside a BATCH: a small payload or none (a large one
   goes alone, without a copy). */
static bool
s_batchable(tq_request_t *r)
{
    return (r->kind != TQ_KIND_SUBMIT && r->kind != TQ_KIND_QPUT) ||
        zmq_msg_size(&r->payload) <= TQ_BATCH_MAX_PAYLOAD;
}

static bool s_readable(void *socket);
static void s_io_drain_monitor(tq_io_t *io);

/* True if the requests at the head of io->out may go in one BATCH: two
   or more of them fit, and the broker said (PONG) that it takes BATCH on
   this connection. A connection lost or made since is read first from
   the monitor (libzmq tells it before a new connection takes messages):
   a broker connected again may be an older one. Only the I/O thread
   reads the monitor (what it reads may end requests, whose callbacks run
   there): a caller that finds an event waiting sends alone. */
static bool
s_io_batching(tq_io_t *io)
{
    tq_request_t *r = io->out.head;
    if (!(io->peer_features & TQ_FEATURE_BATCH) || !r || !r->next ||
        atomic_load(&io->client->no_batch) || !s_batchable(r) ||
        !s_batchable(r->next))
        return false;
    if (s_readable(io->client->monitor_reader)) {
        if (!s_on_io_thread)
            return false;
        s_io_drain_monitor(io);
    }
    return (io->peer_features & TQ_FEATURE_BATCH) && io->out.head &&
        io->out.head->next;
}

/* Sends the requests at the head of io->out that go together (s_batchable,
   up to S_BATCH_MAX and S_BATCH_BYTES) in one BATCH: each is SENT as it
   would be alone, or all are FAILED when the socket refuses the BATCH for
   good. TQ_OK, or -1 with errno EAGAIN to retry later (all stay
   QUEUED). */
static int
s_io_send_batch(tq_io_t *io, int64_t now)
{
    tq_batch_t *b = &io->batch;
    tq_batch_reset(b);
    uint32_t n = 0;
    for (tq_request_t *r = io->out.head;
         r && n < S_BATCH_MAX && tq_batch_bytes(b) < S_BATCH_BYTES;
         r = r->next) {
        zmq_msg_t *payload = s_io_encode(io, r);
        size_t size = payload ? zmq_msg_size(payload) : 0;
        if (size > TQ_BATCH_MAX_PAYLOAD)
            break; /* not s_batchable: it goes alone, without a copy */
        const void *data = payload ? zmq_msg_data(payload) : NULL;
        /* a SUBMIT of a burst: the header of the one before, its own id
           written in (its id and names were checked when it was made) */
        const void *header;
        size_t header_size;
        int rc = r->kind == TQ_KIND_SUBMIT &&
                tq_io_memo_header(&io->memo, &io->out_msg, &header,
                                  &header_size)
            ? tq_batch_add_encoded(b, header, header_size, data, size,
                                   payload != NULL)
            : tq_batch_add(b, &io->out_msg, data, size, payload != NULL);
        if (rc != TQ_OK)
            break; /* it goes alone, and fails there if it must */
        n++;
    }
    if (n < 2) {
        tq_batch_reset(b);
        return s_io_send(io, io->out.head, now);
    }
    /* each request counts as a send of its own, in order (send_seq) */
    uint64_t send = io->sends;
    io->sends += n;
    /* counted before the send, so that a peer that read the BATCH finds
       it counted (tests read these counters after their broker got it) */
    atomic_fetch_add(&io->client->batches_sent, 1);
    atomic_fetch_add(&io->client->batched_sent, n);
    int rc = tq_wire_send_batch(io->client->socket, NULL, b, ZMQ_DONTWAIT);
    int err = errno;
    if (rc != TQ_OK) {
        atomic_fetch_sub(&io->client->batches_sent, 1);
        atomic_fetch_sub(&io->client->batched_sent, n);
    }
    if (rc == -1 && (err == EAGAIN || err == EINTR)) {
        io->sends = send; /* nothing went: the next try numbers them */
        errno = EAGAIN;
        return -1;
    }
    for (uint32_t i = 0; i < n; i++)
        if (rc != TQ_OK)
            /* a socket failure (ETERM): none of them can go out */
            tq_io_failed(io, io->out.head, TQ_ECLOSED,
                         "cannot send the request to the broker");
        else
            s_io_sent(io, io->out.head, now, ++send, true);
    if (rc == TQ_OK)
        io->batches_out++;
    return TQ_OK;
}

/* Sends the PING due (tq_io_peer_unknown) once the socket takes it. TQ_OK,
   or -1 (EAGAIN) while it does not. */
static int
s_io_send_ping(tq_io_t *io)
{
    s_msg_clear(&io->out_msg);
    io->out_msg.command = TQ_CMD_PING;
    io->sends++;
    int rc = tq_wire_send_msg(io->client->socket, NULL, &io->out_msg, &io->buf,
                              NULL, ZMQ_DONTWAIT);
    if (rc == -1 && (errno == EAGAIN || errno == EINTR))
        return -1;
    io->ping_due = false;
    if (rc == TQ_OK)
        io->last_ping = zclock_mono();
    return TQ_OK;
}

void
tq_io_peer_unknown(tq_io_t *io)
{
    io->peer_features = 0;
    atomic_store(&io->client->peer_features, 0);
    io->ping_due = true;
    io->batches_out = io->refusals_due = 0;
}

static int
s_by_send_seq(const void *a, const void *b)
{
    uint64_t x = ((const tq_request_t *)a)->send_seq;
    uint64_t y = ((const tq_request_t *)b)->send_seq;
    return x < y ? -1 : x > y;
}

/* An ERROR TQ_EPROTO without an id came while BATCHes were sent on this
   connection: the broker did not take them (one of an earlier revision
   answers "unknown command"; PROTOCOL.md 5.9), so it handled none of
   their requests. They go again, alone, and nothing more goes batched
   until a PONG says otherwise; the ERRORs of the other BATCHes sent
   before are expected and dropped. True if the ERROR was that. */
static bool
s_io_unbatch(tq_io_t *io, const tq_msg_t *m)
{
    if (m->id.ptr || m->code != TQ_EPROTO)
        return false;
    if (io->refusals_due) {
        io->refusals_due--;
        return true;
    }
    if (!io->batches_out)
        return false;
    io->refusals_due = io->batches_out - 1;
    io->batches_out = 0;
    io->peer_features = 0;
    atomic_store(&io->client->peer_features, 0);
    /* in the order they went, ahead of what is queued behind them */
    size_t queued = 0;
    for (tq_request_t *r = io->out.head; r; r = r->next)
        queued++;
    zlistx_t *refused = zlistx_new();
    assert(refused);
    zlistx_set_comparator(refused, s_by_send_seq);
    zlistx_t *all = tq_io_all(io);
    for (tq_request_t *r = zlistx_first(all); r; r = zlistx_next(all))
        if (r->state == TQ_REQ_SENT && r->batched && r->epoch == io->epoch)
            zlistx_add_end(refused, r);
    zlistx_destroy(&all);
    zlistx_sort(refused);
    size_t n = zlistx_size(refused);
    for (tq_request_t *r = zlistx_first(refused); r; r = zlistx_next(refused))
        tq_io_move(io, r, TQ_REQ_QUEUED);
    zlistx_destroy(&refused);
    while (queued--) {
        tq_request_t *r = io->out.head;
        s_list_remove(&io->out, r);
        s_list_append(&io->out, r);
    }
    char text[TQ_PROTO_MAX_ERROR + 1];
    tq_str_copy(text, sizeof text, m->error);
    zsys_warning("tq client: broker at %s refused a BATCH (%s): sending its "
                 "%zu request(s) again, alone",
                 tq_client_current_endpoint(io->client), text, n);
    return true;
}

/* Sends what libzmq will take now; the rest waits for POLLOUT. */
static void
s_io_flush(tq_io_t *io)
{
    if (io->standby || !io->client->socket)
        return; /* a standby would answer TQ_ESTANDBY: wait for the move */
    /* the PING goes with the first requests to a broker, ahead of them:
       its PONG comes before their answers (an idle client sends none) */
    if (io->ping_due && io->out.head && s_io_send_ping(io) != TQ_OK)
        return;
    int64_t now = io->out.head ? zclock_mono() : 0;
    while (io->out.head)
        if ((s_io_batching(io) ? s_io_send_batch(io, now)
                               : s_io_send(io, io->out.head, now)) != TQ_OK)
            return;
    /* after a broker came back: GET wait=true for results still awaited */
    while (zlistx_size(io->regets)) {
        const char *id = zlistx_first(io->regets);
        s_msg_clear(&io->out_msg);
        io->out_msg.command = TQ_CMD_GET;
        io->out_msg.id = tq_str(id);
        io->out_msg.wait = true;
        io->sends++;
        int rc = tq_wire_send_msg(io->client->socket, NULL, &io->out_msg,
                                  &io->buf, NULL, ZMQ_DONTWAIT);
        if (rc == -1 && (errno == EAGAIN || errno == EINTR))
            return;
        zlistx_delete(io->regets, zlistx_cursor(io->regets));
    }
}

void
tq_io_send_simple(tq_io_t *io, uint8_t command)
{
    s_msg_clear(&io->out_msg);
    io->out_msg.command = command;
    /* best effort: a PING or PONG that cannot go out now is not queued, the
       liveness check covers it */
    io->sends++;
    if (io->client->socket)
        tq_wire_send_msg(io->client->socket, NULL, &io->out_msg, &io->buf, NULL,
                         ZMQ_DONTWAIT);
}

/* ---- requests taken from callers ---------------------------------------- */

/* Cancels every task the client still waits on; the TERMINATE request r
   ends with count = the CANCEL requests made. */
static void s_io_accept(tq_io_t *io, tq_request_t *r);

static void
s_io_terminate(tq_io_t *io, tq_request_t *r)
{
    zlistx_t *ids = zlistx_new();
    assert(ids);
    zlistx_set_destructor(ids, (zlistx_destructor_fn *)zstr_free);
    tq_io_iter_t it;
    for (tq_request_t *head = tq_io_first(io, &it); head;
         head = tq_io_next(io, &it))
        for (tq_request_t *h = head; h; h = h->next_same)
            if (h->kind == TQ_KIND_SUBMIT ||
                (h->kind == TQ_KIND_GET && h->wait)) {
                zlistx_add_end(ids, strdup(h->id));
                break;
            }
    int count = 0;
    for (char *id = zlistx_first(ids); id; id = zlistx_next(ids)) {
        /* nobody waits on these: no handle */
        tq_request_t *c = tq_request_new(TQ_KIND_CANCEL, NULL);
        if (!c)
            break;
        snprintf(c->id, sizeof c->id, "%s", id);
        s_io_accept(io, c);
        count++;
    }
    zlistx_destroy(&ids);
    if (r->result) {
        pthread_mutex_lock(&r->result->mutex);
        r->result->count = count;
        pthread_mutex_unlock(&r->result->mutex);
    }
    s_io_done(io, r, TQ_STATE_SUCCESS, TQ_OK, tq_str(NULL), NULL, NULL);
}

/* Takes a request made by a caller. */
static void
s_io_accept(tq_io_t *io, tq_request_t *r)
{
    if (r->kind == TQ_KIND_TERMINATE)
        s_io_terminate(io, r);
    else
        tq_io_move(io, r, TQ_REQ_QUEUED);
}

/* Takes every request that callers queued. */
static void
s_io_take_queue(tq_io_t *io)
{
    uint64_t n;
    if (read(io->client->wake_fd, &n, sizeof n) < 0 && errno != EAGAIN)
        zsys_warning("tq client: eventfd read: %s", strerror(errno));
    tq_client_t *c = io->client;
    pthread_mutex_lock(&c->lock);
    tq_request_t *r = c->queue_head;
    c->queue_head = c->queue_tail = NULL;
    pthread_mutex_unlock(&c->lock);
    while (r) {
        tq_request_t *next = r->next;
        r->next = NULL;
        s_io_accept(io, r);
        r = next;
    }
}

/* ---- resending ---------------------------------------------------------- */

/* A SUBMIT refused with TQ_EFULL that the caller wants to block: sent again
   after 50 ms, doubling up to 1 s. */
static void
s_io_defer(tq_io_t *io, tq_request_t *r)
{
    r->full_delay_ms =
        r->full_delay_ms == 0 ? S_FULL_RETRY_MIN_MS : r->full_delay_ms * 2;
    if (r->full_delay_ms > S_FULL_RETRY_MAX_MS)
        r->full_delay_ms = S_FULL_RETRY_MAX_MS;
    r->resend_at = zclock_mono() + r->full_delay_ms;
    tq_io_move(io, r, TQ_REQ_DEFERRED);
}

/* Resends the deferred SUBMITs whose time has come; fails those whose
   caller let go. Returns the next resend time, or -1 for none. */
int64_t
tq_io_deferred(tq_io_t *io, int64_t now)
{
    int64_t next = -1;
    tq_request_t *r = io->deferred.head;
    while (r) {
        tq_request_t *following = r->next;
        if (r->result && tq_result_orphan(r->result))
            tq_io_failed(io, r, TQ_ECLOSED, "the handle was destroyed");
        else if (now >= r->resend_at)
            tq_io_move(io, r, TQ_REQ_QUEUED);
        else if (next < 0 || r->resend_at < next)
            next = r->resend_at;
        r = following;
    }
    return next;
}

/* Fails every request (only the unacknowledged ones when only_unacked)
   with code and text. */
void
tq_io_fail(tq_io_t *io, bool only_unacked, int code, const char *text)
{
    zlistx_t *all = tq_io_all(io);
    for (tq_request_t *r = zlistx_first(all); r; r = zlistx_next(all))
        if (!only_unacked || (tq_request_unacked(r->state) && !r->held))
            tq_io_failed(io, r, code, text);
    zlistx_destroy(&all);
}

size_t
tq_io_hold_folded(tq_io_t *io)
{
    zlistx_t *all = tq_io_all(io);
    for (tq_request_t *r = zlistx_first(all); r; r = zlistx_next(all))
        if (!r->held && r->kind == TQ_KIND_SUBMIT && r->folded &&
            r->state == TQ_REQ_SENT && r->epoch == io->epoch &&
            r->send_seq <= io->heard_seq) {
            r->held = true;
            io->held++;
        }
    zlistx_destroy(&all);
    return io->held;
}

/* ---- answers from the broker -------------------------------------------- */

/* Ends every request of the chain r (tq_io_chain, may be NULL) with the
   broker's outcome (and attempts, as s_io_done); value is moved to the
   last and copied (refcounted by libzmq) to the others. */
static void
s_io_done_chain(tq_io_t *io, tq_request_t *r, int state, int code,
                tq_str_t error, zmq_msg_t *value, const uint32_t *attempts)
{
    while (r) {
        tq_request_t *next = r->next_same;
        zmq_msg_t copy, *v = value;
        if (value && next) {
            zmq_msg_init(&copy);
            zmq_msg_copy(&copy, value);
            v = &copy;
        }
        s_io_done(io, r, state, code, error, v, attempts);
        if (v == &copy)
            zmq_msg_close(&copy);
        r = next;
    }
}

static void
s_io_log_bad(tq_io_t *io, const char *what, const char *reason)
{
    io->malformed++;
    atomic_fetch_add(&io->client->malformed, 1);
    zsys_warning("tq client: dropped %s from broker at %s: %s", what,
                 tq_client_current_endpoint(io->client), reason ? reason : "?");
}

/* A RESULT's fields (read by tq_proto_read_result, or decoded: m) and
   its value (payload, may be moved out). */
static void
s_on_result(tq_io_t *io, const tq_proto_result_t *m, zmq_msg_t *payload)
{
    /* the chain, looked up once: nothing below changes the table before
       s_io_done_chain ends it */
    tq_request_t *chain = tq_io_chain(io, m->id);
    int code = m->code;
    if (m->state == TQ_STATE_SUCCESS)
        code = TQ_OK;
    else if (code == TQ_OK)
        /* a non-success without a reason still must not read as success */
        code = m->state == TQ_STATE_CANCELLED ? TQ_ECANCELLED : TQ_ETASK;
    size_t size = zmq_msg_size(payload);
    if (m->state == TQ_STATE_SUCCESS &&
        tq_proto_check_payload(zmq_msg_data(payload), size, false, NULL) !=
            TQ_OK) {
        if (chain)
            s_io_log_bad(io, "RESULT", "the value is not one msgpack object");
        s_io_done_chain(io, chain, TQ_STATE_FAILURE, TQ_EPROTO,
                        tq_str("broker sent a malformed result value"), NULL,
                        &m->attempts);
        return;
    }
    int state = TQ_STATE_IS_FINAL(m->state) ? (int)m->state : TQ_STATE_FAILURE;
    if (code == TQ_OK && chain && size >= TQ_SPARE_MIN)
        /* a large value moves into an argument's spare buffer (memory
           already faulted in) and the received one goes back to libzmq */
        tq_spare_adopt(payload);
    s_io_done_chain(io, chain, state, code, m->error,
                    code == TQ_OK ? payload : NULL, &m->attempts);
}

static void
s_on_submitted(tq_io_t *io, const tq_msg_t *m)
{
    tq_request_t *r = tq_io_chain(io, m->id);
    while (r) {
        tq_request_t *next = r->next_same;
        if (r->kind == TQ_KIND_SUBMIT) {
            s_io_ack(io, r);
            r->full_delay_ms = 0;
        } else if (r->kind == TQ_KIND_RETRY)
            /* RETRY is answered by SUBMITTED: the dead letter runs again */
            s_io_done(io, r, TQ_STATE_PENDING, TQ_OK, tq_str(NULL), NULL, NULL);
        r = next;
    }
}

static void
s_on_state(tq_io_t *io, const tq_msg_t *m)
{
    tq_request_t *r = tq_io_chain(io, m->id);
    while (r) {
        tq_request_t *next = r->next_same;
        tq_result_t *result = r->result;
        if (result)
            tq_result_ref(result);
        if (r->kind == TQ_KIND_GET && !r->wait)
            /* a GET without wait is answered: nothing more will come; the
               handle stays ANSWERED with the state */
            tq_io_move(io, r, TQ_REQ_DONE);
        if (result) {
            tq_result_answer(result, m->state);
            tq_result_unref(result);
        }
        r = next;
    }
}

/* An answer without an id (from a broker of an earlier revision, which
   answers operator requests in order) goes to the oldest operator request
   (value moved, may be NULL). */
static void
s_on_fifo_answer(tq_io_t *io, int state, int code, tq_str_t error,
                 zmq_msg_t *value)
{
    tq_request_t *r = io->fifo_head;
    if (r)
        s_io_done(io, r, state, code, error, value, NULL);
}

static void
s_on_error(tq_io_t *io, const tq_msg_t *m)
{
    if (s_io_unbatch(io, m))
        return;
    int code = m->code == TQ_OK ? TQ_EPROTO : (int)m->code;
    if (m->id.ptr && tq_io_chain(io, m->id)) {
        /* one id may have a SUBMIT, GETs and operator requests waiting:
           TQ_ESTATE answers a RETRY, TQ_EFULL a SUBMIT that may block */
        bool retry = false;
        for (tq_request_t *r = tq_io_chain(io, m->id); r; r = r->next_same)
            retry |= r->kind == TQ_KIND_RETRY;
        tq_request_t *r = tq_io_chain(io, m->id);
        while (r) {
            tq_request_t *next = r->next_same;
            bool full = code == TQ_EFULL && r->kind == TQ_KIND_SUBMIT &&
                r->block_when_full && tq_request_unacked(r->state);
            if (full && r->state == TQ_REQ_SENT)
                s_io_defer(io, r);
            else if (full ||
                     (retry && code == TQ_ESTATE && r->kind != TQ_KIND_RETRY))
                ; /* QUEUED or DEFERRED already: it goes again */
            else
                s_io_done(io, r, TQ_STATE_FAILURE, code, m->error, NULL, NULL);
            r = next;
        }
        return;
    }
    if (!m->id.ptr && io->fifo_head) {
        /* an earlier broker answers STATUS, PURGE and FAILED without
           their id: an ERROR without an id answers the oldest one */
        s_on_fifo_answer(io, TQ_STATE_FAILURE, code, m->error, NULL);
        return;
    }
    char text[TQ_PROTO_MAX_ERROR + 1];
    tq_str_copy(text, sizeof text, m->error);
    zsys_warning("tq client: broker at %s: error %d (%s): %s",
                 tq_client_current_endpoint(io->client), code,
                 tq_strerror(code), text);
}

/* Handles one decoded message m and its payload (empty when it has none;
   may be moved out). False for TQ_ESTANDBY: a standby is no broker that
   answers. */
static bool
s_io_handle(tq_io_t *io, const tq_msg_t *m, zmq_msg_t *payload)
{
    if (m->command == TQ_CMD_ERROR && m->code == TQ_ESTANDBY) {
        tq_io_on_standby(io, m);
        return false;
    }
    switch (m->command) {
    case TQ_CMD_SUBMITTED:
        s_on_submitted(io, m);
        break;
    case TQ_CMD_RESULT: {
        /* one the fast reader left to the generic decoder (a bin id...) */
        tq_proto_result_t result = {m->id, m->error, m->state, m->code,
                                    m->attempt};
        s_on_result(io, &result, payload);
        break;
    }
    case TQ_CMD_STATE:
        s_on_state(io, m);
        break;
    case TQ_CMD_UNKNOWN:
        s_io_done_chain(
            io, tq_io_chain(io, m->id), TQ_STATE_FAILURE, TQ_EUNKNOWN,
            tq_str("the broker does not know this task id"), NULL, NULL);
        break;
    case TQ_CMD_REPLY:
    case TQ_CMD_QITEM:
        if (m->id.ptr) {
            /* the answer to a data-queue or operator request, by its
               request id */
            s_io_done_chain(io, tq_io_chain(io, m->id), TQ_STATE_SUCCESS, TQ_OK,
                            tq_str(NULL), payload, NULL);
            break;
        }
        if (m->command == TQ_CMD_QITEM) {
            s_io_log_bad(io, "QITEM", "no request id");
            break;
        }
        s_on_fifo_answer(io, TQ_STATE_SUCCESS, TQ_OK, tq_str(NULL), payload);
        break;
    case TQ_CMD_STATUS_REPLY:
        if (m->id.ptr) {
            s_io_done_chain(io, tq_io_chain(io, m->id), TQ_STATE_SUCCESS, TQ_OK,
                            tq_str(NULL), payload, NULL);
            break;
        }
        /* an earlier broker: answers the oldest operator request */
        s_on_fifo_answer(io, TQ_STATE_SUCCESS, TQ_OK, tq_str(NULL), payload);
        break;
    case TQ_CMD_PING:
        tq_io_send_simple(io, TQ_CMD_PONG);
        break;
    case TQ_CMD_PONG:
        io->pong_for = io->last_ping;
        /* what this broker takes (an older one says nothing: 0) */
        io->peer_features = m->features;
        atomic_store(&io->client->peer_features, m->features);
        tq_io_on_pong(io, m->dropped);
        break;
    case TQ_CMD_ERROR:
        s_on_error(io, m);
        break;
    default:
        s_io_log_bad(io, tq_proto_command_name(m->command),
                     "not a broker-to-client command");
        break;
    }
    return true;
}

/* Handles the messages of a BATCH (io->msg its header, the frames its
   payload), each as if it had come alone, its payload in a message of
   its own; a malformed one is dropped as a lone one would be, and the
   rest are handled. False if one was TQ_ESTANDBY. */
static bool
s_io_batch(tq_io_t *io)
{
    atomic_fetch_add(&io->client->batches_read, 1);
    tq_batch_reader_t reader;
    tq_batch_reader_init(&reader, &io->msg, zmq_msg_data(&io->frames.payload),
                         zmq_msg_size(&io->frames.payload));
    bool alive = true;
    zmq_msg_t payload;
    zmq_msg_init(&payload);
    for (;;) {
        const void *header;
        size_t header_size;
        bool has_payload;
        const char *reason = NULL;
        int rc = tq_wire_batch_next_raw(&reader, &header, &header_size,
                                        &payload, &has_payload, &reason);
        if (rc == TQ_BATCH_END)
            break;
        /* a RESULT (most of what a BATCH brings) read in one pass; any
           other message, or a RESULT the fast reader leaves, decoded */
        tq_proto_result_t result;
        if (rc == TQ_OK && has_payload &&
            tq_proto_read_result(&result, header, header_size)) {
            s_on_result(io, &result, &payload);
            continue;
        }
        if (rc == TQ_OK)
            rc = tq_batch_decode(&io->msg, header, header_size, has_payload,
                                 &reason);
        if (rc != TQ_OK) {
            s_io_log_bad(io, "message in a BATCH", reason);
            continue;
        }
        alive &= s_io_handle(io, &io->msg, &payload);
    }
    zmq_msg_close(&payload);
    return alive;
}

/* Handles the message in io->frames. False for TQ_ESTANDBY. */
static bool
s_io_dispatch(tq_io_t *io)
{
    /* a RESULT read in one pass; the rest, or a RESULT the fast reader
       leaves, decoded */
    tq_proto_result_t result;
    if (io->frames.has_payload &&
        tq_proto_read_result(&result, zmq_msg_data(&io->frames.header),
                             zmq_msg_size(&io->frames.header))) {
        s_on_result(io, &result, &io->frames.payload);
        return true;
    }
    const char *reason = NULL;
    int rc = tq_wire_decode(&io->frames, &io->msg, &reason);
    if (rc != TQ_OK) {
        s_io_log_bad(io, "message", reason);
        return true;
    }
    if (io->msg.command == TQ_CMD_BATCH)
        return s_io_batch(io);
    return s_io_handle(io, &io->msg, &io->frames.payload);
}

/* Reads and handles up to a batch of messages; returns how many. */
int
tq_io_recv(tq_io_t *io)
{
    int i;
    int64_t heard_at = 0;
    io->drained = NULL;
    /* a caller collecting a burst is woken once per S_WAKE_EVERY
       answers at most, not per answer (tq_result_hold_wakeups) */
    tq_result_hold_wakeups();
    for (i = 0; io->client->socket && i < TQ_IO_RECV_BATCH; i++) {
        if (i > 0 && i % S_WAKE_EVERY == 0) {
            tq_result_release_wakeups();
            tq_result_hold_wakeups();
        }
        int rc =
            tq_wire_recv(io->client->socket, &io->frames, false, ZMQ_DONTWAIT);
        if (rc == -1) {
            io->drained = io->client->socket;
            break;
        }
        bool alive = true;
        if (rc == TQ_OK)
            alive = s_io_dispatch(io);
        else
            s_io_log_bad(io, "message", "wrong number of frames");
        /* a leading caller stops at its answer: what may follow is
           seen by s_io_release (ZMQ_EVENTS), which hands it to the I/O
           thread, without one more read that finds nothing */
        bool stop =
            s_lead_handle && (io->later || tq_result_final(s_lead_handle));
        if (!alive) {
            if (stop) {
                i++;
                break;
            }
            continue;
        }
        /* any other message, even a bad one, shows the broker is alive
           (the time read once per batch) */
        if (!heard_at)
            heard_at = zclock_mono();
        io->last_heard = heard_at;
        io->heard_seq = io->sends;
        io->silent_moves = io->standby_moves = 0;
        if (io->broker_lost) {
            io->broker_lost = false;
            tq_io_reattach(io);
        }
        if (stop) {
            i++;
            break;
        }
    }
    tq_result_release_wakeups();
    return i;
}

/* How s_io_release leaves an I/O thread that sleeps without the socket
   (c->io_socketless): */
typedef enum {
    S_GIVE_BACK, /* wake it to take the socket again */
    S_LEAD_DONE, /* a caller read its own answer: only if something else
                    is awaited (with nothing awaited nothing can come: a
                    broker never sends a client anything unasked; it takes
                    the socket again when it wakes by itself, at most a
                    third of the liveness, or for a request) */
    S_WILL_LEAD, /* a caller sent its request and reads the answer itself
                    next (tq_apply): not now (tq_client_io_lead gives the
                    socket back if it cannot lead after all) */
} s_release_t;

/* Releases io_lock taken by a caller, and wakes the I/O thread if it
   must look: it slept without the socket while the caller held it
   (io_handback, io_socketless; see s_release_t), handles wait for it
   (later), or wake. */
static void
s_io_release(tq_client_t *c, bool wake, s_release_t mode)
{
    wake |= c->io->later != NULL;
    bool give_back =
        mode == S_GIVE_BACK || (mode == S_LEAD_DONE && c->io->waiting > 0);
    /* input this thread's sends and reads hid from the I/O thread's poll:
       ZMQ_FD signals a change once, and this thread may have taken it.
       Not asked (a look into the socket's mailbox, two system calls on
       every round trip) when no poll of the I/O thread watches ZMQ_FD:
       it sleeps without the socket (io_socketless cannot turn false
       while io_lock is held here), and is woken below if it gets the
       socket back, else it looks itself when it takes it again; nor when
       this caller reads the socket next, its request the only one
       awaited (S_WILL_LEAD: the lead reads what came, and what follows
       its answer is looked at when it lets go) */
    bool look = !wake && c->socket && !atomic_load(&c->io_socketless) &&
        !(mode == S_WILL_LEAD && c->io->waiting <= 1);
    if (look) {
        int events = 0;
        size_t size = sizeof events;
        if (zmq_getsockopt(c->socket, ZMQ_EVENTS, &events, &size) != 0 ||
            (events & ZMQ_POLLIN))
            wake = true;
    }
    pthread_mutex_unlock(&c->io_lock);
    if (atomic_exchange(&c->io_handback, false) && give_back)
        wake = true;
    if (give_back && atomic_load(&c->io_socketless))
        wake = true;
    if (wake) {
        uint64_t one = 1;
        if (write(c->wake_fd, &one, sizeof one) < 0)
            zsys_warning("tq client: eventfd write: %s", strerror(errno));
    }
}

#define S_LOCK_WAIT_NS 1000000 /* tq_client_io_lock's bound: 1 ms */

bool
tq_client_io_lock(tq_client_t *c, size_t alone)
{
    if (pthread_mutex_trylock(&c->io_lock) == 0)
        return true;
    /* never on the I/O thread or a thread that reads for it (callbacks
       run there, holding it), and not while a stream is awaited */
    if (s_on_io_thread || s_leading || atomic_load(&c->waiting_hint) > alone)
        return false;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += S_LOCK_WAIT_NS;
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    return pthread_mutex_timedlock(&c->io_lock, &ts) == 0;
}

bool
tq_client_io_try_send(tq_client_t *c, bool held, bool alone)
{
    if (!held && pthread_mutex_trylock(&c->io_lock) != 0)
        return false;
    /* a request that goes in a message of its own gains nothing from the
       I/O thread's batches: it goes now, past nothing libzmq held back */
    if (c->io && (c->io->waiting == 0 || (alone && !c->io->out.head)))
        return true;
    if (c->io)
        /* wakes the I/O thread if it must look */
        s_io_release(c, false, S_GIVE_BACK);
    else
        pthread_mutex_unlock(&c->io_lock);
    return false;
}

/* Takes the requests queued (a chain on next), then r, from a caller
   thread holding io_lock (released here), and sends what libzmq takes: no
   wakeup of the I/O thread on the way out. The I/O thread is woken only
   when it has to look: input the sends may have hidden from its poll
   (ZMQ_FD signals edges), output libzmq would not take yet, or a sleep
   too long for the liveness of a request now waiting. */
void
tq_client_io_send_now(tq_client_t *c, tq_request_t *queued, tq_request_t *r,
                      bool will_lead)
{
    tq_io_t *io = c->io;
    atomic_fetch_add(&c->sent_by_caller, 1);
    while (queued) {
        tq_request_t *next = queued->next;
        queued->next = NULL;
        s_io_accept(io, queued);
        queued = next;
    }
    s_io_accept(io, r);
    s_io_flush(io);
    bool wake = io->out.head || zlistx_size(io->regets);
    if (!wake && io->waiting && io->wake_at != 0 &&
        io->wake_at > zclock_mono() + atomic_load(&c->liveness_ms) / 3)
        wake = true;
    s_io_release(c, wake, will_lead ? S_WILL_LEAD : S_GIVE_BACK);
}

/* The poll timeout: the liveness work's, or a tick of a third of the
   liveness while nothing waits, so that a request a caller sent itself
   is looked after in time without waking this thread (see
   tq_client_io_send_now). */
static long
s_io_timeout(tq_io_t *io)
{
    long timeout = tq_io_liveness(io);
    int64_t now = zclock_mono();
    long waits[2] = {tq_io_leave_standby(io, now), tq_io_reopen(io, now)};
    for (int i = 0; i < 2; i++)
        if (waits[i] >= 0 && (timeout < 0 || waits[i] < timeout))
            timeout = waits[i];
    tq_spare_trim(now);
    long tick = atomic_load(&io->client->liveness_ms) / 3;
    if (io->waiting == 0 && (timeout < 0 || timeout > tick))
        timeout = tick;
    return timeout;
}

void
tq_client_io_lead(tq_client_t *c, tq_result_t *h, int64_t deadline)
{
    if (s_on_io_thread)
        return;
    /* a stream of answers (a burst collected) is the I/O thread's: a
       caller leading there would wake it for nothing per answer; seen
       here, before this thread touches io_lock or the socket. Whoever
       holds io_lock gives the socket back when it lets go; an I/O thread
       left without it for this caller (S_WILL_LEAD) is woken. */
    if (atomic_load(&c->waiting_hint) > 1 || !tq_client_io_lock(c, 1)) {
        if (atomic_load(&c->io_socketless)) {
            uint64_t one = 1;
            if (write(c->wake_fd, &one, sizeof one) < 0)
                zsys_warning("tq client: eventfd write: %s", strerror(errno));
        }
        return;
    }
    pthread_mutex_lock(&c->lock);
    bool lead = c->io && !c->closed;
    pthread_mutex_unlock(&c->lock);
    if (!lead) {
        pthread_mutex_unlock(&c->io_lock); /* no I/O thread to wake */
        return;
    }
    tq_io_t *io = c->io;
    if (io->waiting > 1) {
        /* a stream of answers (a burst collected) is the I/O thread's:
           a caller leading there would wake it for nothing per answer */
        s_io_release(c, false, S_GIVE_BACK);
        return;
    }
    s_leading = true;
    s_lead_handle = h;
    for (;;) {
        uint64_t sends = io->sends;
        if (tq_io_recv(io) > 0)
            atomic_fetch_add(&c->led, 1);
        s_io_flush(io);
        if (io->later || tq_result_final(h))
            break;
        long timeout = s_io_timeout(io);
        int64_t now = zclock_mono();
        if (deadline >= 0) {
            if (deadline <= now)
                break;
            if (timeout < 0 || timeout > deadline - now)
                timeout = (long)(deadline - now);
        }
        void *socket = c->socket;
        int fd = -1, events = 0;
        size_t size = sizeof fd;
        /* output libzmq would not take is the I/O thread's to wait for */
        if (!socket || io->standby || io->out.head || zlistx_size(io->regets) ||
            zmq_getsockopt(socket, ZMQ_FD, &fd, &size) != 0)
            break;
        /* a read that found the socket empty, with nothing sent since
           (a send may take the command that would signal ZMQ_FD), left
           ZMQ_FD to signal the next message: no need to ask again */
        if (io->drained != socket || io->sends != sends) {
            size = sizeof events;
            if (zmq_getsockopt(socket, ZMQ_EVENTS, &events, &size) != 0)
                break;
            if (events & ZMQ_POLLIN)
                continue;
        }
        /* poll(2) itself: zmq_poll on descriptors alone first polls
           without a timeout, one more system call per round trip */
        struct pollfd items[2] = {{fd, POLLIN, 0}, {c->wake_fd, POLLIN, 0}};
        if (poll(items, 2, timeout > INT_MAX ? INT_MAX : (int)timeout) < 0 &&
            errno != EINTR)
            break;
        if (items[1].revents & POLLIN)
            break; /* the I/O thread, or a request, needs the socket */
    }
    s_leading = false;
    s_lead_handle = NULL;
    s_io_release(c, false, S_LEAD_DONE);
}

/* Takes io_lock after a poll (items, count, rc its result) found it held:
   by a caller that sends, or reads the socket while it waits. If only
   the socket woke us, that caller reads what came: sleep (until wake_at)
   without the socket until it hands it back (io_handback). Otherwise ask
   it to let go (wake_fd) and wait for the lock. */
static void
s_io_relock(tq_client_t *c, zmq_pollitem_t *items, int count, int on_socket,
            int64_t wake_at, int rc)
{
    bool socket_only = rc >= 0 && on_socket >= 0;
    for (int i = 0; i < count; i++)
        if (i != on_socket && items[i].revents)
            socket_only = false;
    if (socket_only) {
        atomic_store(&c->io_handback, true);
        if (pthread_mutex_trylock(&c->io_lock) == 0)
            return;
        int64_t now = zclock_mono();
        long timeout = wake_at == INT64_MAX ? -1
            : wake_at > now                 ? (long)(wake_at - now)
                                            : 0;
        items[on_socket].fd = -1; /* poll(2) skips it */
        for (int i = 0; i < count; i++)
            items[i].revents = 0;
        /* socketless until this thread holds io_lock again, so that
           nobody takes it for one that watches the socket meanwhile */
        atomic_store(&c->io_socketless, true);
        (void)zmq_poll(items, count, timeout);
        if (pthread_mutex_trylock(&c->io_lock) == 0) {
            atomic_store(&c->io_socketless, false);
            return;
        }
    }
    uint64_t one = 1;
    if (write(c->wake_fd, &one, sizeof one) < 0)
        zsys_warning("tq client: eventfd write: %s", strerror(errno));
    pthread_mutex_lock(&c->io_lock);
    atomic_store(&c->io_socketless, false);
}

/* True if a ZeroMQ socket has a message to read. */
static bool
s_readable(void *socket)
{
    int events = 0;
    size_t size = sizeof events;
    return socket && zmq_getsockopt(socket, ZMQ_EVENTS, &events, &size) == 0 &&
        (events & ZMQ_POLLIN);
}

/* The file descriptor that signals a ZeroMQ socket's changes, or -1. */
static int
s_signal_fd(void *socket)
{
    int fd = -1;
    size_t size = sizeof fd;
    if (!socket || zmq_getsockopt(socket, ZMQ_FD, &fd, &size) != 0)
        return -1;
    return fd;
}

/* Reads every event of the socket's monitor: its file descriptor signals
   changes, not levels, so nothing may be left behind. */
static void
s_io_drain_monitor(tq_io_t *io)
{
    while (s_readable(io->client->monitor_reader))
        tq_io_monitor(io);
    io->monitor_seen = io->client->monitor_reader;
}

void
tq_client_io_actor(zsock_t *pipe, void *args)
{
    tq_io_t *io = calloc(1, sizeof *io);
    assert(io);
    tq_client_t *c = io->client = args;
    tq_io_table_own(&io->pending, c->id_hex);
    io->regets = zlistx_new();
    assert(io->regets);
    zlistx_set_destructor(io->regets, (zlistx_destructor_fn *)zstr_free);
    tq_frames_init(&io->frames);
    msgpack_sbuffer_init(&io->buf);
    tq_batch_init(&io->batch);
    tq_io_memo_init(&io->memo);
    io->last_heard = io->last_ping = zclock_mono();
    /* the socket was opened by tq_client_new: learn what its broker takes */
    tq_io_peer_unknown(io);
    /* io_lock is held from here on, but while this thread sleeps */
    s_on_io_thread = true;
    pthread_mutex_lock(&c->io_lock);
    pthread_mutex_lock(&c->lock);
    c->io = io;
    pthread_mutex_unlock(&c->lock);
    zsock_signal(pipe, 0);

    /* a ZMQ_FD signals a pipe's change from empty to not empty once it
       was found empty: look at the pipe once before the first sleep */
    bool running = true;
    while (running && s_readable(zsock_resolve(pipe))) {
        char *command = zstr_recv(pipe);
        if (!command || streq(command, "$TERM"))
            running = false;
        zstr_free(&command);
    }
    while (running) {
        atomic_store(&c->io_handback, false);
        s_io_run_later(io);
        long timeout = s_io_timeout(io);
        /* a broker restarted faster than our liveness is only seen as a
           new connection: the socket monitor tells us */
        void *socket = c->socket;
        if (c->monitor_reader != io->monitor_seen)
            s_io_drain_monitor(io); /* a new socket, a new monitor */
        void *monitor = c->monitor_reader;
        /* every item a file descriptor (ZeroMQ sockets' ZMQ_FD): zmq_poll
           on a socket costs a look into its mailbox (two system calls) per
           socket and pass */
        zmq_pollitem_t items[4] = {
            {NULL, zsock_fd(pipe), ZMQ_POLLIN, 0},
            {NULL, c->wake_fd, ZMQ_POLLIN, 0},
        };
        int count = 2, on_socket = -1, on_monitor = -1;
        if (socket) {
            /* the socket's own file descriptor, polled without the
               socket: callers may send on it while this thread sleeps.
               It signals changes, not levels: ZMQ_EVENTS says what is
               there already. */
            int fd = -1, events = 0;
            size_t size = sizeof fd;
            if (zmq_getsockopt(socket, ZMQ_FD, &fd, &size) == 0) {
                on_socket = count;
                items[count++] = (zmq_pollitem_t){NULL, fd, ZMQ_POLLIN, 0};
            }
            size = sizeof events;
            zmq_getsockopt(socket, ZMQ_EVENTS, &events, &size);
            bool output =
                !io->standby && (io->out.head || zlistx_size(io->regets));
            if ((events & ZMQ_POLLIN) || ((events & ZMQ_POLLOUT) && output))
                timeout = 0;
        }
        int monitor_fd = s_signal_fd(monitor);
        if (monitor_fd >= 0) {
            on_monitor = count;
            items[count++] = (zmq_pollitem_t){NULL, monitor_fd, ZMQ_POLLIN, 0};
        }
        io->wake_at = timeout < 0 ? INT64_MAX : zclock_mono() + timeout;
        pthread_mutex_unlock(&c->io_lock);
        int64_t wake_at = io->wake_at;
        int rc = zmq_poll(items, count, timeout);
        if (pthread_mutex_trylock(&c->io_lock) != 0)
            s_io_relock(c, items, count, on_socket, wake_at, rc);
        io->wake_at = 0;
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            break; /* ETERM: the context is going away */
        }
        while ((items[0].revents & ZMQ_POLLIN) && running &&
               s_readable(zsock_resolve(pipe))) {
            char *command = zstr_recv(pipe);
            if (!command || streq(command, "$TERM"))
                running = false;
            zstr_free(&command);
        }
        if (items[1].revents & ZMQ_POLLIN)
            s_io_take_queue(io);
        if (on_monitor >= 0 && (items[on_monitor].revents & ZMQ_POLLIN))
            s_io_drain_monitor(io);
        (void)tq_io_recv(io);
        s_io_flush(io);
    }

    /* pending handles end now; requests queued after this are failed by
       tq_client_destroy */
    pthread_mutex_lock(&c->lock);
    c->io = NULL;
    pthread_mutex_unlock(&c->lock);
    s_io_run_later(io);
    s_io_take_queue(io);
    tq_io_fail(io, false, TQ_ECLOSED, "the client was closed");
    assert(!io->out.head && !io->deferred.head && io->waiting == 0);
    zlistx_destroy(&io->regets);
    /* Stop the monitor before its reader goes: libzmq sends monitor events
       with a blocking send, so an event (a disconnect, say) for a PAIR
       nobody reads would block libzmq's I/O thread, and with it the close
       of the DEALER, for ever. */
    tq_client_socket_close(c);
    pthread_mutex_unlock(&c->io_lock);
    free(io->pending.slots);
    tq_frames_close(&io->frames);
    msgpack_sbuffer_destroy(&io->buf);
    tq_batch_destroy(&io->batch);
    tq_io_memo_destroy(&io->memo);
    free(io);
}
