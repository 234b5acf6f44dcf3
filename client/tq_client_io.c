/* tq_client_io.c - the client's I/O thread: it alone touches the socket
   and the table of requests. It takes requests off the submission queue,
   sends SUBMIT / GET / STATUS / PING, completes handles from SUBMITTED,
   STATE, RESULT, UNKNOWN, STATUS_REPLY and ERROR, sends again what a
   broken connection may have lost, and fails what no broker answers
   (PROTOCOL.md section 10). Given several brokers, it talks to one at a
   time and moves to the next on TQ_ESTANDBY or silence (section 12).
   Every change of a request's state goes
   through s_io_move, which keeps the request in the container of its
   state (tq_request.h). */
#include <assert.h>
#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tq_client_core.h"
#include "tq_curve.h"
#include "tq_log.h"
#include "tq_proto.h"
#include "tq_wire.h"

#define S_RECV_BATCH 1024 /* messages drained per poll pass */

/* block_when_full: first and longest wait before a refused SUBMIT is sent
   again (ms). */
#define S_FULL_RETRY_MIN_MS 50
#define S_FULL_RETRY_MAX_MS 1000

/* A doubly linked list of requests (next, prev). */
typedef struct {
    tq_request_t *head;
    tq_request_t *tail;
} s_list_t;

/* The I/O thread's state. */
typedef struct {
    tq_client_t *client;
    zhashx_t *pending; /* id -> chain of requests (next_same) that are
                          neither NEW nor final */
    tq_request_t *fifo_head; /* id-less requests (STATUS, PURGE, FAILED)
                                in send order (next_same) */
    tq_request_t *fifo_tail;
    s_list_t out; /* QUEUED, in order */
    s_list_t deferred; /* DEFERRED */
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
    tq_frames_t frames;
    tq_msg_t msg; /* decode target; large, kept off the stack */
    tq_msg_t out_msg; /* encode source */
    msgpack_sbuffer buf; /* header encode buffer, reused */
    uint64_t malformed; /* messages dropped as malformed */
} s_io_t;

/* ---- containers --------------------------------------------------------- */

static void
s_list_append(s_list_t *list, tq_request_t *r)
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
s_list_remove(s_list_t *list, tq_request_t *r)
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

/* Adds r to the table: the chain of its id, or the FIFO. */
static void
s_index_add(s_io_t *io, tq_request_t *r)
{
    r->next_same = NULL;
    if (TQ_REQ_IS_FIFO(r->kind)) {
        if (io->fifo_tail)
            io->fifo_tail->next_same = r;
        else
            io->fifo_head = r;
        io->fifo_tail = r;
        return;
    }
    tq_request_t *head = zhashx_lookup(io->pending, r->id);
    if (!head) {
        zhashx_insert(io->pending, r->id, r);
        return;
    }
    while (head->next_same)
        head = head->next_same;
    head->next_same = r;
}

/* Removes r from the table (the map entry goes with the last of its id). */
static void
s_index_remove(s_io_t *io, tq_request_t *r)
{
    if (TQ_REQ_IS_FIFO(r->kind)) {
        tq_request_t **pp = &io->fifo_head, *last = NULL;
        while (*pp && *pp != r)
            last = *pp, pp = &(*pp)->next_same;
        if (!*pp)
            return;
        *pp = r->next_same;
        if (io->fifo_tail == r)
            io->fifo_tail = last;
        r->next_same = NULL;
        return;
    }
    tq_request_t *head = zhashx_lookup(io->pending, r->id);
    tq_request_t **pp = &head;
    while (*pp && *pp != r)
        pp = &(*pp)->next_same;
    if (!*pp)
        return;
    *pp = r->next_same;
    r->next_same = NULL;
    if (head)
        zhashx_update(io->pending, r->id, head);
    else
        zhashx_delete(io->pending, r->id);
}

/* Every request in the table, in a list of its own (borrowed entries):
   moves may change the table while the caller walks the list. */
static zlistx_t *
s_index_all(s_io_t *io)
{
    zlistx_t *all = zlistx_new();
    assert(all);
    for (tq_request_t *head = zhashx_first(io->pending); head;
         head = zhashx_next(io->pending))
        for (tq_request_t *r = head; r; r = r->next_same)
            zlistx_add_end(all, r);
    for (tq_request_t *r = io->fifo_head; r; r = r->next_same)
        zlistx_add_end(all, r);
    return all;
}

/* The chain of requests on id (borrowed), NULL if none. */
static tq_request_t *
s_io_chain(s_io_t *io, tq_str_t id)
{
    char key[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(key, sizeof key, id);
    return zhashx_lookup(io->pending, key);
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
static void
s_io_move(s_io_t *io, tq_request_t *r, tq_req_state_t to)
{
    tq_req_state_t from = r->state;
    tq_request_move(r, to); /* aborts on an illegal move */
    tq_client_count_move(io->client, from, to);
    int64_t now = zclock_mono();
    if (from == TQ_REQ_QUEUED)
        s_list_remove(&io->out, r);
    else if (from == TQ_REQ_DEFERRED)
        s_list_remove(&io->deferred, r);
    bool was = tq_request_unacked(from), is = tq_request_unacked(to);
    if (was && !is)
        io->unacked--;
    else if (!was && is && io->unacked++ == 0)
        io->unacked_since = now;
    if (from == TQ_REQ_NEW && !tq_request_final(to)) {
        s_index_add(io, r);
        if (io->waiting++ == 0)
            io->waiting_since = now;
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
        }
        s_io_end(r);
        break;
    default:
        break;
    }
}

/* Ends r with the broker's outcome (value moved when not NULL). */
static void
s_io_done(s_io_t *io, tq_request_t *r, int state, int code, tq_str_t error,
          zmq_msg_t *value)
{
    /* the request ends before its handle: a caller woken by the handle
       finds the request gone (and counted) */
    tq_result_t *result = r->result;
    if (result)
        tq_result_ref(result);
    s_io_move(io, r, TQ_REQ_DONE);
    if (result) {
        tq_result_finish(result, state, code, error.ptr, error.len, value);
        tq_result_unref(result);
    }
}

/* Ends r without an answer from the broker. */
static void
s_io_failed(s_io_t *io, tq_request_t *r, int code, const char *text)
{
    /* the request ends first: a SUBMIT's goes to its handle, where a
       caller woken by the failure finds it (tq_result_resubmit) */
    tq_result_t *result = r->result;
    if (result)
        tq_result_ref(result);
    s_io_move(io, r, TQ_REQ_FAILED);
    if (result) {
        tq_result_fail(result, code, text);
        tq_result_unref(result);
    }
}

/* The broker acknowledged r (SUBMITTED). */
static void
s_io_ack(s_io_t *io, tq_request_t *r)
{
    if (!tq_request_unacked(r->state))
        return;
    s_io_move(io, r, TQ_REQ_ACKED);
    if (r->kind == TQ_KIND_SUBMIT) {
        if (r->reget)
            /* the broker may have known the id before: its result then
               went to a connection that is gone, or went already */
            zlistx_add_end(io->regets, strdup(r->id));
        /* never sent again: the broker has it */
        free(r->task), r->task = NULL;
        free(r->queue), r->queue = NULL;
        zmq_msg_close(&r->payload), zmq_msg_init(&r->payload);
    }
    if (r->result)
        tq_result_answer(r->result, -1);
}

/* ---- sending ------------------------------------------------------------ */

/* Sends one QUEUED request: SENT, or FAILED when the socket refuses it
   for good (r is then gone). TQ_OK, or -1 with errno EAGAIN to retry
   later (r stays QUEUED). */
static int
s_io_send(s_io_t *io, tq_request_t *r)
{
    tq_msg_t *m = &io->out_msg;
    memset(m, 0, sizeof *m);
    zmq_msg_t copy, *payload = NULL;
    m->id = tq_str(r->id);
    switch (r->kind) {
    case TQ_KIND_SUBMIT:
        m->command = TQ_CMD_SUBMIT;
        m->task = tq_str(r->task);
        m->queue = tq_str(r->queue);
        m->priority = r->priority;
        m->time_limit_ms = r->time_limit_ms;
        m->retries = r->retries;
        m->backoff_ms = r->backoff_ms;
        m->delay_ms = r->delay_ms;
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
        m->queue = tq_str(r->queue);
        m->id = tq_str(NULL); /* id? is nil: answered in order (REPLY) */
        break;
    case TQ_KIND_FAILED:
        m->command = TQ_CMD_FAILED;
        m->id = tq_str(NULL);
        break;
    case TQ_KIND_QPUT:
        m->command = TQ_CMD_QPUT;
        m->queue = tq_str(r->queue);
        m->maxsize = r->maxsize;
        payload = &r->payload;
        break;
    case TQ_KIND_QGET:
        m->command = TQ_CMD_QGET;
        m->queue = tq_str(r->queue);
        m->time_limit_ms = r->time_limit_ms;
        break;
    case TQ_KIND_QSIZE:
        m->command = TQ_CMD_QSIZE;
        m->queue = tq_str(r->queue);
        break;
    case TQ_KIND_TERMINATE:
        assert(false); /* carried out when taken, never sent */
        break;
    }
    if (payload) {
        /* the request keeps its payload until answered: each send (the
           first, after TQ_EFULL, after a reconnect) sends a copy */
        zmq_msg_init(&copy);
        zmq_msg_copy(&copy, payload);
        payload = &copy;
    }
    int rc = tq_wire_send_msg(io->client->socket, NULL, m, &io->buf, payload,
                              ZMQ_DONTWAIT);
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
        s_io_failed(io, r, rc == TQ_EINVAL ? TQ_EINVAL : TQ_ECLOSED,
                    "cannot send the request to the broker");
        return TQ_OK;
    }
    r->epoch = io->epoch;
    r->sent_ms = zclock_mono();
    s_io_move(io, r, TQ_REQ_SENT);
    return TQ_OK;
}

/* Sends what libzmq will take now; the rest waits for POLLOUT. */
static void
s_io_flush(s_io_t *io)
{
    if (io->standby)
        return; /* it would answer TQ_ESTANDBY: wait for the move */
    while (io->out.head)
        if (s_io_send(io, io->out.head) != TQ_OK)
            return;
    /* after a broker came back: GET wait=true for results still awaited */
    while (zlistx_size(io->regets)) {
        const char *id = zlistx_first(io->regets);
        memset(&io->out_msg, 0, sizeof io->out_msg);
        io->out_msg.command = TQ_CMD_GET;
        io->out_msg.id = tq_str(id);
        io->out_msg.wait = true;
        int rc = tq_wire_send_msg(io->client->socket, NULL, &io->out_msg,
                                  &io->buf, NULL, ZMQ_DONTWAIT);
        if (rc == -1 && (errno == EAGAIN || errno == EINTR))
            return;
        zlistx_delete(io->regets, zlistx_cursor(io->regets));
    }
}

static void
s_io_send_simple(s_io_t *io, uint8_t command)
{
    memset(&io->out_msg, 0, sizeof io->out_msg);
    io->out_msg.command = command;
    /* best effort: a PING or PONG that cannot go out now is not queued, the
       liveness check covers it */
    tq_wire_send_msg(io->client->socket, NULL, &io->out_msg, &io->buf, NULL,
                     ZMQ_DONTWAIT);
}

/* ---- requests taken from callers ---------------------------------------- */

/* Cancels every task the client still waits on; the TERMINATE request r
   ends with count = the CANCEL requests made. */
static void s_io_accept(s_io_t *io, tq_request_t *r);

static void
s_io_terminate(s_io_t *io, tq_request_t *r)
{
    zlistx_t *ids = zlistx_new();
    assert(ids);
    zlistx_set_destructor(ids, (zlistx_destructor_fn *)zstr_free);
    for (tq_request_t *head = zhashx_first(io->pending); head;
         head = zhashx_next(io->pending))
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
    s_io_done(io, r, TQ_STATE_SUCCESS, TQ_OK, tq_str(NULL), NULL);
}

/* Takes a request made by a caller. */
static void
s_io_accept(s_io_t *io, tq_request_t *r)
{
    if (r->kind == TQ_KIND_TERMINATE)
        s_io_terminate(io, r);
    else
        s_io_move(io, r, TQ_REQ_QUEUED);
}

/* Takes every request that callers queued. */
static void
s_io_take_queue(s_io_t *io)
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
s_io_defer(s_io_t *io, tq_request_t *r)
{
    r->full_delay_ms =
        r->full_delay_ms == 0 ? S_FULL_RETRY_MIN_MS : r->full_delay_ms * 2;
    if (r->full_delay_ms > S_FULL_RETRY_MAX_MS)
        r->full_delay_ms = S_FULL_RETRY_MAX_MS;
    r->resend_at = zclock_mono() + r->full_delay_ms;
    s_io_move(io, r, TQ_REQ_DEFERRED);
}

/* Resends the deferred SUBMITs whose time has come; fails those whose
   caller let go. Returns the next resend time, or -1 for none. */
static int64_t
s_io_deferred(s_io_t *io, int64_t now)
{
    int64_t next = -1;
    tq_request_t *r = io->deferred.head;
    while (r) {
        tq_request_t *following = r->next;
        if (r->result && tq_result_orphan(r->result))
            s_io_failed(io, r, TQ_ECLOSED, "the handle was destroyed");
        else if (now >= r->resend_at)
            s_io_move(io, r, TQ_REQ_QUEUED);
        else if (next < 0 || r->resend_at < next)
            next = r->resend_at;
        r = following;
    }
    return next;
}

/* Why requests are looked at again (s_io_resend). */
typedef enum {
    S_BROKE, /* the connection broke: fail what cannot be sent again */
    S_CONNECTED, /* a new connection: send SUBMIT and GET again */
    S_MOVED, /* the client moved to another broker: both of the above */
    S_STALE, /* the broker talks but a SUBMIT went unanswered for the
                liveness: send it again */
} s_resend_t;

/* A request sent over a connection that broke may never have arrived, and
   its answer would go to a peer that is gone; one written while the old
   connection was being torn down is lost too. So: at the break, requests
   that are not idempotent or are answered in order (CANCEL, RETRY, PURGE,
   FAILED, STATUS, data queues) end TQ_EUNREACHABLE, as the broker may or
   may not have carried them out; once a new connection is up, SUBMIT (ids
   make it idempotent, PROTOCOL.md 5.1 item 3) and GET sent before it are
   sent again. S_STALE sends again a SUBMIT sent before `before` (ms) that
   is still unanswered. Only SENT requests are concerned: QUEUED and
   DEFERRED ones go out anyway, ACKED ones are asked for by GET
   (s_io_reattach). Returns how many were sent again. */
static size_t
s_io_resend(s_io_t *io, s_resend_t why, int64_t before)
{
    size_t resent = 0;
    const char *text = why == S_MOVED
        ? "the client moved to its next broker before this one "
          "answered (the request may have been carried out)"
        : "the connection to the broker broke before it answered (the "
          "request may have been carried out)";
    zlistx_t *all = s_index_all(io);
    for (tq_request_t *r = zlistx_first(all); r; r = zlistx_next(all)) {
        if (r->state != TQ_REQ_SENT)
            continue;
        if (why == S_STALE ? r->kind != TQ_KIND_SUBMIT || r->sent_ms > before
                           : r->epoch >= io->epoch)
            continue;
        bool idempotent = r->kind == TQ_KIND_SUBMIT || r->kind == TQ_KIND_GET;
        if (idempotent && why != S_BROKE) {
            r->reget |= r->kind == TQ_KIND_SUBMIT;
            s_io_move(io, r, TQ_REQ_QUEUED);
            resent++;
        } else if (!idempotent && (why == S_BROKE || why == S_MOVED))
            /* id-less ones too: answered in order, one whose answer the
               broken connection lost would take the answer of the next */
            s_io_failed(io, r, TQ_EUNREACHABLE, text);
    }
    zlistx_destroy(&all);
    io->resent += resent;
    return resent;
}

/* The broker answers again after a silence, or is a new one: ask again
   for every result we still wait on that was acknowledged (a restarted
   broker never heard of our GETs). */
static void
s_io_reattach(s_io_t *io)
{
    size_t n = 0;
    for (tq_request_t *head = zhashx_first(io->pending); head;
         head = zhashx_next(io->pending))
        for (tq_request_t *h = head; h; h = h->next_same)
            if (h->state == TQ_REQ_ACKED &&
                (h->kind == TQ_KIND_SUBMIT ||
                 (h->kind == TQ_KIND_GET && h->wait))) {
                zlistx_add_end(io->regets, strdup(h->id));
                n++;
                break;
            }
    zsys_info("tq client: broker at %s answers again, asking again for %zu "
              "result(s)",
              tq_client_current_endpoint(io->client), n);
}

/* Moves the client to the next broker of its list (wrapping around; the
   same one again when there is one): a new socket, so that nothing the
   old broker sends can reach us any more, and everything we wait on is
   asked again as after a reconnect: SUBMIT and GET sent to the old one
   go again with their ids, the other requests it may or may not have
   carried out end TQ_EUNREACHABLE, and acknowledged tasks are asked for
   by GET wait=true (PROTOCOL.md section 12). */
static void
s_io_switch(s_io_t *io, const char *why)
{
    tq_client_t *c = io->client;
    size_t from = atomic_load(&c->current);
    size_t to = (from + 1) % c->endpoint_count;
    tq_client_socket_close(c);
    if (tq_client_socket_open(c, c->endpoints[to]) != 0) {
        /* the list was checked when the client was made: this is a
           socket failure, as with the old endpoint */
        to = from;
        if (tq_client_socket_open(c, c->endpoints[to]) != 0) {
            tq_log_error("tq client: cannot open a socket to any broker");
            abort();
        }
    }
    atomic_store(&c->current, to);
    atomic_fetch_add(&c->broker_moves, 1);
    zsys_info("tq client: broker at %s %s: moving to %s", c->endpoints[from],
              why, c->endpoints[to]);
    io->epoch++;
    io->connected_once = false;
    io->standby = false;
    io->broker_lost = false;
    io->pong_for = 0;
    io->endpoint_since = zclock_mono();
    s_io_resend(io, S_MOVED, 0);
    /* GETs not yet sent are asked again below, with all the others */
    zlistx_purge(io->regets);
    s_io_reattach(io);
}

/* The broker is a standby (PROTOCOL.md section 12): what it answered
   TQ_ESTANDBY it did not carry out, so that goes to the next broker
   whatever its kind; nothing more is sent to this one. */
static void
s_on_standby(s_io_t *io, const tq_msg_t *m)
{
    io->standby = true;
    if (m->id.ptr) {
        for (tq_request_t *r = s_io_chain(io, m->id); r; r = r->next_same)
            if (r->state == TQ_REQ_SENT)
                s_io_move(io, r, TQ_REQ_QUEUED);
    } else if (io->fifo_head && io->fifo_head->state == TQ_REQ_SENT)
        /* an id-less answer is the oldest id-less request's (or a
           PING's) */
        s_io_move(io, io->fifo_head, TQ_REQ_QUEUED);
}

/* Moves on from a standby, at once, except after a whole round of the
   list answered TQ_ESTANDBY: then once per third of the liveness (the
   lease of a new active broker takes a moment). Returns the ms until the
   next move, or -1. */
static long
s_io_leave_standby(s_io_t *io, int64_t now)
{
    if (!io->standby)
        return -1;
    size_t n = io->client->endpoint_count;
    int64_t pause = atomic_load(&io->client->liveness_ms) / 3;
    if (io->standby_moves % n == 0) {
        if (io->standby_moves && now < io->round_at + pause)
            return (long)(io->round_at + pause - now);
        io->round_at = now;
    }
    io->standby_moves++;
    s_io_switch(io, "is a standby (TQ_ESTANDBY)");
    return -1;
}

/* Fails every request (only the unacknowledged ones when only_unacked)
   with code and text. */
static void
s_io_fail(s_io_t *io, bool only_unacked, int code, const char *text)
{
    zlistx_t *all = s_index_all(io);
    for (tq_request_t *r = zlistx_first(all); r; r = zlistx_next(all))
        if (!only_unacked || tq_request_unacked(r->state))
            s_io_failed(io, r, code, text);
    zlistx_destroy(&all);
}

/* ---- answers from the broker -------------------------------------------- */

/* Ends every request on id with the broker's outcome; value is moved to
   the last and copied (refcounted by libzmq) to the others. */
static void
s_io_done_chain(s_io_t *io, tq_str_t id, int state, int code, tq_str_t error,
                zmq_msg_t *value)
{
    tq_request_t *r = s_io_chain(io, id);
    while (r) {
        tq_request_t *next = r->next_same;
        zmq_msg_t copy, *v = NULL;
        if (value) {
            zmq_msg_init(&copy);
            if (next)
                zmq_msg_copy(&copy, value);
            else
                zmq_msg_move(&copy, value);
            v = &copy;
        }
        s_io_done(io, r, state, code, error, v);
        if (v)
            zmq_msg_close(v);
        r = next;
    }
}

static void
s_io_log_bad(s_io_t *io, const char *what, const char *reason)
{
    io->malformed++;
    zsys_warning("tq client: dropped %s from broker at %s: %s", what,
                 tq_client_current_endpoint(io->client), reason ? reason : "?");
}

static void
s_on_result(s_io_t *io, const tq_msg_t *m, zmq_msg_t *payload)
{
    for (tq_request_t *r = s_io_chain(io, m->id); r; r = r->next_same)
        if (r->result)
            tq_result_set_attempts(r->result, m->attempt);
    int code = m->code;
    if (m->state == TQ_STATE_SUCCESS)
        code = TQ_OK;
    else if (code == TQ_OK)
        /* a non-success without a reason still must not read as success */
        code = m->state == TQ_STATE_CANCELLED ? TQ_ECANCELLED : TQ_ETASK;
    if (m->state == TQ_STATE_SUCCESS &&
        tq_proto_check_payload(zmq_msg_data(payload), zmq_msg_size(payload),
                               false, NULL) != TQ_OK) {
        if (s_io_chain(io, m->id))
            s_io_log_bad(io, "RESULT", "the value is not one msgpack object");
        s_io_done_chain(io, m->id, TQ_STATE_FAILURE, TQ_EPROTO,
                        tq_str("broker sent a malformed result value"), NULL);
        return;
    }
    int state = TQ_STATE_IS_FINAL(m->state) ? (int)m->state : TQ_STATE_FAILURE;
    s_io_done_chain(io, m->id, state, code, m->error,
                    code == TQ_OK ? payload : NULL);
}

static void
s_on_submitted(s_io_t *io, const tq_msg_t *m)
{
    tq_request_t *r = s_io_chain(io, m->id);
    while (r) {
        tq_request_t *next = r->next_same;
        if (r->kind == TQ_KIND_SUBMIT) {
            s_io_ack(io, r);
            r->full_delay_ms = 0;
        } else if (r->kind == TQ_KIND_RETRY)
            /* RETRY is answered by SUBMITTED: the dead letter runs again */
            s_io_done(io, r, TQ_STATE_PENDING, TQ_OK, tq_str(NULL), NULL);
        r = next;
    }
}

static void
s_on_state(s_io_t *io, const tq_msg_t *m)
{
    tq_request_t *r = s_io_chain(io, m->id);
    while (r) {
        tq_request_t *next = r->next_same;
        tq_result_t *result = r->result;
        if (result)
            tq_result_ref(result);
        if (r->kind == TQ_KIND_GET && !r->wait)
            /* a GET without wait is answered: nothing more will come; the
               handle stays ANSWERED with the state */
            s_io_move(io, r, TQ_REQ_DONE);
        if (result) {
            tq_result_answer(result, m->state);
            tq_result_unref(result);
        }
        r = next;
    }
}

/* The oldest id-less request gets the answer (value moved, may be NULL). */
static void
s_on_fifo_answer(s_io_t *io, int state, int code, tq_str_t error,
                 zmq_msg_t *value)
{
    tq_request_t *r = io->fifo_head;
    if (r)
        s_io_done(io, r, state, code, error, value);
}

static void
s_on_error(s_io_t *io, const tq_msg_t *m)
{
    int code = m->code == TQ_OK ? TQ_EPROTO : (int)m->code;
    if (code == TQ_ESTANDBY) {
        s_on_standby(io, m);
        return;
    }
    if (m->id.ptr && s_io_chain(io, m->id)) {
        /* one id may have a SUBMIT, GETs and operator requests waiting:
           TQ_ESTATE answers a RETRY, TQ_EFULL a SUBMIT that may block */
        bool retry = false;
        for (tq_request_t *r = s_io_chain(io, m->id); r; r = r->next_same)
            retry |= r->kind == TQ_KIND_RETRY;
        tq_request_t *r = s_io_chain(io, m->id);
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
                s_io_done(io, r, TQ_STATE_FAILURE, code, m->error, NULL);
            r = next;
        }
        return;
    }
    if (!m->id.ptr && io->fifo_head) {
        /* STATUS, PURGE and FAILED are the requests without an id, so an
           ERROR without an id answers the oldest one */
        s_on_fifo_answer(io, TQ_STATE_FAILURE, code, m->error, NULL);
        return;
    }
    char text[TQ_PROTO_MAX_ERROR + 1];
    tq_str_copy(text, sizeof text, m->error);
    zsys_warning("tq client: broker at %s: error %d (%s): %s",
                 tq_client_current_endpoint(io->client), code,
                 tq_strerror(code), text);
}

/* Handles one message. False for TQ_ESTANDBY: a standby is no broker
   that answers. */
static bool
s_io_dispatch(s_io_t *io)
{
    const char *reason = NULL;
    int rc = tq_wire_decode(&io->frames, &io->msg, &reason);
    if (rc != TQ_OK) {
        s_io_log_bad(io, "message", reason);
        return true;
    }
    tq_msg_t *m = &io->msg;
    if (m->command == TQ_CMD_ERROR && m->code == TQ_ESTANDBY) {
        s_on_standby(io, m);
        return false;
    }
    switch (m->command) {
    case TQ_CMD_SUBMITTED:
        s_on_submitted(io, m);
        break;
    case TQ_CMD_RESULT:
        s_on_result(io, m, &io->frames.payload);
        break;
    case TQ_CMD_STATE:
        s_on_state(io, m);
        break;
    case TQ_CMD_UNKNOWN:
        s_io_done_chain(io, m->id, TQ_STATE_FAILURE, TQ_EUNKNOWN,
                        tq_str("the broker does not know this task id"), NULL);
        break;
    case TQ_CMD_REPLY:
    case TQ_CMD_QITEM:
        if (m->id.ptr) {
            /* the answer to a data-queue request, by its request id */
            s_io_done_chain(io, m->id, TQ_STATE_SUCCESS, TQ_OK, tq_str(NULL),
                            &io->frames.payload);
            break;
        }
        if (m->command == TQ_CMD_QITEM) {
            s_io_log_bad(io, "QITEM", "no request id");
            break;
        }
        s_on_fifo_answer(io, TQ_STATE_SUCCESS, TQ_OK, tq_str(NULL),
                         &io->frames.payload);
        break;
    case TQ_CMD_STATUS_REPLY:
        /* answers the oldest id-less request */
        s_on_fifo_answer(io, TQ_STATE_SUCCESS, TQ_OK, tq_str(NULL),
                         &io->frames.payload);
        break;
    case TQ_CMD_PING:
        s_io_send_simple(io, TQ_CMD_PONG);
        break;
    case TQ_CMD_PONG:
        io->pong_for = io->last_ping;
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

/* Reads and handles up to a batch of messages; returns how many. */
static int
s_io_recv(s_io_t *io)
{
    int i;
    for (i = 0; i < S_RECV_BATCH; i++) {
        int rc =
            tq_wire_recv(io->client->socket, &io->frames, false, ZMQ_DONTWAIT);
        if (rc == -1)
            break;
        bool alive = true;
        if (rc == TQ_OK)
            alive = s_io_dispatch(io);
        else
            s_io_log_bad(io, "message", "wrong number of frames");
        if (!alive)
            continue;
        /* any other message, even a bad one, shows the broker is alive */
        io->last_heard = zclock_mono();
        io->silent_moves = io->standby_moves = 0;
        if (io->broker_lost) {
            io->broker_lost = false;
            s_io_reattach(io);
        }
    }
    return i;
}

/* ---- liveness ----------------------------------------------------------- */

static bool
s_io_input_waiting(s_io_t *io)
{
    int events = 0;
    size_t size = sizeof events;
    return zmq_getsockopt(io->client->socket, ZMQ_EVENTS, &events, &size) ==
        0 &&
        (events & ZMQ_POLLIN);
}

/* Returns the poll timeout, after sending a PING or failing unacknowledged
   requests when their time has come (PROTOCOL.md section 10). */
static long
s_io_liveness(s_io_t *io)
{
    if (io->waiting == 0)
        return -1;
    int64_t live = atomic_load(&io->client->liveness_ms);
    size_t brokers = io->client->endpoint_count;
    int64_t now = zclock_mono();
    int64_t resend = s_io_deferred(io, now);
    int64_t heard_from =
        io->last_heard > io->waiting_since ? io->last_heard : io->waiting_since;
    if (io->endpoint_since > heard_from)
        heard_from = io->endpoint_since;
    if (!io->broker_lost && now - heard_from >= live) {
        char why[64];
        snprintf(why, sizeof why, "silent for %.1f s", (double)live / 1000.0);
        if (brokers > 1) {
            /* the next broker may be the active one */
            io->silent_moves++;
            s_io_switch(io, why);
            heard_from = now;
        } else {
            io->broker_lost = true;
            zsys_warning("tq client: broker at %s %s",
                         tq_client_current_endpoint(io->client), why);
        }
    }
    /* with several brokers, a request waits for an answer from each in
       turn before it ends unreachable */
    int64_t bound = live * (int64_t)brokers;
    int64_t silent_from = io->last_heard;
    if (io->unacked && io->unacked_since > silent_from)
        silent_from = io->unacked_since;
    if (io->unacked && now - silent_from >= bound && s_io_input_waiting(io)) {
        /* answers are queued but this thread was too busy to read them:
           the broker is not silent */
        io->last_heard = silent_from = now;
    }
    if (io->unacked && now - silent_from >= bound) {
        char text[768];
        /* a CURVE broker drops a handshake it cannot or will not take
           without a word: say what to check */
        int mechanism = ZMQ_NULL;
        size_t size = sizeof mechanism;
        zmq_getsockopt(io->client->socket, ZMQ_MECHANISM, &mechanism, &size);
        snprintf(text, sizeof text,
                 "broker unreachable at %s (no answer in %.1f s%s)%s",
                 io->client->endpoint, (double)bound / 1000.0,
                 io->standby_moves ? "; standby brokers answered TQ_ESTANDBY"
                                   : "",
                 mechanism == ZMQ_CURVE
                     ? "; with CURVE, check that the broker allows this "
                       "client's key and that TQ_CURVE_SERVER_KEY is its key"
                     : "; if the broker uses CURVE, set TQ_CURVE_SERVER_KEY "
                       "and TQ_CURVE_CERT");
        s_io_fail(io, true, TQ_EUNREACHABLE, text);
        if (io->waiting == 0)
            return -1;
    }
    if (io->unacked && io->pong_for && now - io->unacked_since >= live &&
        now - io->last_stale_check >= live / 3) {
        /* the broker answered a PING sent after a SUBMIT (so it read the
           SUBMIT: one connection keeps order), yet the SUBMIT has had no
           answer for the liveness: it was lost on the way, or its answer
           was. A busy broker is not asked twice: PINGs go out only when
           nothing is heard for a third of the liveness. */
        io->last_stale_check = now;
        int64_t before =
            now - live < io->pong_for - 1 ? now - live : io->pong_for - 1;
        size_t n = s_io_resend(io, S_STALE, before);
        if (n)
            zsys_info("tq client: broker at %s answers but not %zu "
                      "submission(s) for %.1f s: sending them again",
                      tq_client_current_endpoint(io->client), n,
                      (double)live / 1000.0);
    }
    int64_t quiet_from =
        io->last_heard > io->last_ping ? io->last_heard : io->last_ping;
    if (io->unacked_since > quiet_from && io->unacked)
        quiet_from = io->unacked_since;
    if (now - quiet_from >= live / 3) {
        s_io_send_simple(io, TQ_CMD_PING);
        io->last_ping = now;
        quiet_from = now;
    }
    int64_t next = quiet_from + live / 3;
    if (io->unacked && silent_from + bound < next)
        next = silent_from + bound;
    if (!io->broker_lost && heard_from + live < next)
        next = heard_from + live;
    if (resend >= 0 && resend < next)
        next = resend;
    return next > now ? (long)(next - now) : 0;
}

/* Reads one socket-monitor event: a connection made after the first one
   may lead to a new broker, which must hear our GETs again. */
static void
s_io_monitor(s_io_t *io)
{
    zmq_msg_t frame;
    zmq_msg_init(&frame);
    if (zmq_msg_recv(&frame, io->client->monitor_reader, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&frame);
        return;
    }
    uint16_t event = 0;
    if (zmq_msg_size(&frame) >= 2)
        memcpy(&event, zmq_msg_data(&frame), 2);
    while (zmq_msg_more(&frame) &&
           zmq_msg_recv(&frame, io->client->monitor_reader, ZMQ_DONTWAIT) >= 0)
        ; /* the endpoint frame */
    zmq_msg_close(&frame);
    if (event == ZMQ_EVENT_DISCONNECTED) {
        /* the first CONNECTED may predate our monitor: a disconnect proves
           there was a connection */
        io->connected_once = true;
        /* answers that came before the break count: read them first */
        while (s_io_recv(io) == S_RECV_BATCH)
            ;
        io->epoch++;
        s_io_resend(io, S_BROKE, 0);
        return;
    }
    if (event != ZMQ_EVENT_CONNECTED)
        return;
    if (io->connected_once) {
        io->broker_lost = false;
        io->last_heard = zclock_mono();
        /* everything sent before now may have gone to the old connection
           (some of it possibly after the break, into a pipe being torn
           down); what went to the new one is sent twice, which idempotent
           requests allow */
        io->epoch++;
        size_t n = s_io_resend(io, S_CONNECTED, 0);
        if (n)
            zsys_info("tq client: connected to %s again, sending %zu "
                      "unanswered request(s) again",
                      tq_client_current_endpoint(io->client), n);
        s_io_reattach(io);
    }
    io->connected_once = true;
}

void
tq_client_io_actor(zsock_t *pipe, void *args)
{
    s_io_t *io = calloc(1, sizeof *io);
    assert(io);
    io->client = args;
    io->pending = zhashx_new();
    assert(io->pending);
    io->regets = zlistx_new();
    assert(io->regets);
    zlistx_set_destructor(io->regets, (zlistx_destructor_fn *)zstr_free);
    tq_frames_init(&io->frames);
    msgpack_sbuffer_init(&io->buf);
    io->last_heard = io->last_ping = zclock_mono();
    zsock_signal(pipe, 0);

    bool running = true;
    while (running) {
        long timeout = s_io_liveness(io);
        long standby = s_io_leave_standby(io, zclock_mono());
        if (standby >= 0 && (timeout < 0 || standby < timeout))
            timeout = standby;
        /* a broker restarted faster than our liveness is only seen as a
           new connection: the socket monitor tells us */
        void *monitor = io->client->monitor_reader;
        zmq_pollitem_t items[4] = {
            {zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
            {io->client->socket, 0, ZMQ_POLLIN, 0},
            {NULL, io->client->wake_fd, ZMQ_POLLIN, 0},
            {monitor, 0, ZMQ_POLLIN, 0},
        };
        if (io->out.head || zlistx_size(io->regets))
            items[1].events |= ZMQ_POLLOUT;
        if (zmq_poll(items, monitor ? 4 : 3, timeout) < 0) {
            if (errno == EINTR)
                continue;
            break; /* ETERM: the context is going away */
        }
        if (items[0].revents & ZMQ_POLLIN) {
            char *command = zstr_recv(pipe);
            if (!command || streq(command, "$TERM"))
                running = false;
            zstr_free(&command);
        }
        if (items[2].revents & ZMQ_POLLIN)
            s_io_take_queue(io);
        if (monitor && (items[3].revents & ZMQ_POLLIN))
            s_io_monitor(io);
        if (items[1].revents & ZMQ_POLLIN)
            (void)s_io_recv(io);
        s_io_flush(io);
    }

    /* pending handles end now; requests queued after this are failed by
       tq_client_destroy */
    s_io_take_queue(io);
    s_io_fail(io, false, TQ_ECLOSED, "the client was closed");
    assert(!io->out.head && !io->deferred.head && io->waiting == 0);
    zlistx_destroy(&io->regets);
    /* Stop the monitor before its reader goes: libzmq sends monitor events
       with a blocking send, so an event (a disconnect, say) for a PAIR
       nobody reads would block libzmq's I/O thread, and with it the close
       of the DEALER, for ever. */
    tq_client_socket_close(io->client);
    zhashx_destroy(&io->pending);
    tq_frames_close(&io->frames);
    msgpack_sbuffer_destroy(&io->buf);
    free(io);
}
