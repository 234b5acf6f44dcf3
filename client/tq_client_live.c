/* tq_client_live.c - the client's brokers: which one the socket talks
   to, its liveness (PINGs, silence, TQ_EUNREACHABLE for what nobody
   answers, PROTOCOL.md section 10), what is sent again after a reconnect
   or a stale SUBMIT, and the move to the next broker of the list on
   TQ_ESTANDBY or silence (section 12). Part of the I/O thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_client_io.h"
#include "tq_log.h"

/* Why requests are looked at again (s_io_resend). */
typedef enum {
    S_BROKE, /* the connection broke: fail what cannot be sent again */
    S_CONNECTED, /* a new connection: send SUBMIT and GET again */
    S_MOVED, /* the client moved to another broker: both of the above */
    S_STALE, /* the broker talks but a SUBMIT went unanswered for the
                liveness: send it again */
    S_DROPPED, /* the broker dropped replies for us (PONG): send what
                  went before `before` (the PING) and may be repeated
                  again, mark the rest (s_io_end_dropped) */
} s_resend_t;

/* True if a request whose answer the broker may have dropped can be sent
   again (PROTOCOL.md section 10, "dropped"): SUBMIT and GET (their ids
   make them idempotent, 5.1 item 3), the read-only STATUS, FAILED and
   QSIZE, and CANCEL (a task already cancelled is answered with its
   RESULT again, 5.4). Not PURGE (it would purge tasks submitted since),
   RETRY (the dead letter may have failed again), QPUT (a second item)
   nor QGET (a second item taken). */
static bool
s_repeatable(const tq_request_t *r)
{
    switch (r->kind) {
    case TQ_KIND_SUBMIT:
    case TQ_KIND_GET:
    case TQ_KIND_STATUS:
    case TQ_KIND_FAILED:
    case TQ_KIND_QSIZE:
    case TQ_KIND_CANCEL:
        return true;
    default:
        return false;
    }
}

/* A request sent over a connection that broke may never have arrived, and
   its answer would go to a peer that is gone; one written while the old
   connection was being torn down is lost too. So: at the break, requests
   that are not SUBMIT or GET (CANCEL, RETRY, PURGE, FAILED, STATUS, data
   queues; an earlier broker answers some of them in order) end
   TQ_EUNREACHABLE, as the broker may or may not have carried them out;
   once a new connection is up, SUBMIT (ids make it idempotent,
   PROTOCOL.md 5.1 item 3) and GET sent before it are sent again. S_STALE
   sends again a SUBMIT sent before `before` (ms) that is still
   unanswered, S_DROPPED what s_repeatable allows. Only SENT requests are
   concerned: QUEUED and DEFERRED ones go out anyway, ACKED ones are asked
   for by GET (tq_io_reattach). Returns how many were sent again. */
static size_t
s_io_resend(tq_io_t *io, s_resend_t why, int64_t before)
{
    size_t resent = 0;
    const char *text = why == S_MOVED
        ? "the client moved to its next broker before this one "
          "answered (the request may have been carried out)"
        : "the connection to the broker broke before it answered (the "
          "request may have been carried out)";
    zlistx_t *all = tq_io_all(io);
    for (tq_request_t *r = zlistx_first(all); r; r = zlistx_next(all)) {
        if (r->state != TQ_REQ_SENT)
            continue;
        if (why == S_STALE ? r->kind != TQ_KIND_SUBMIT || r->sent_ms > before
                : why == S_DROPPED ? r->sent_ms > before
                                   : r->epoch >= io->epoch)
            continue;
        if (why == S_DROPPED && !s_repeatable(r)) {
            /* its answer may be on the way still (a QGET that waits, an
               answer after the store's commit): it ends at a later PONG
               if it has none by then */
            if (!r->dropped_ping)
                r->dropped_ping = before;
            continue;
        }
        bool idempotent = r->kind == TQ_KIND_SUBMIT || r->kind == TQ_KIND_GET ||
            why == S_DROPPED;
        if (idempotent && why != S_BROKE) {
            r->reget |= r->kind == TQ_KIND_SUBMIT;
            tq_io_move(io, r, TQ_REQ_QUEUED);
            resent++;
        } else if (!idempotent && (why == S_BROKE || why == S_MOVED))
            /* STATUS, PURGE, FAILED too: an earlier broker answers them
               in order, one whose answer the broken connection lost
               would take the answer of the next */
            tq_io_failed(io, r, TQ_EUNREACHABLE, text);
    }
    zlistx_destroy(&all);
    io->resent += resent;
    return resent;
}

/* The broker answers again after a silence, or is a new one: ask again
   for every result we still wait on that was acknowledged (a restarted
   broker never heard of our GETs). */
static size_t
s_io_reget_acked(tq_io_t *io)
{
    size_t n = 0;
    tq_io_iter_t it;
    for (tq_request_t *head = tq_io_first(io, &it); head;
         head = tq_io_next(io, &it))
        for (tq_request_t *h = head; h; h = h->next_same)
            if (h->state == TQ_REQ_ACKED &&
                (h->kind == TQ_KIND_SUBMIT ||
                 (h->kind == TQ_KIND_GET && h->wait))) {
                zlistx_add_end(io->regets, strdup(h->id));
                n++;
                break;
            }
    return n;
}

void
tq_io_reattach(tq_io_t *io)
{
    size_t n = s_io_reget_acked(io);
    zsys_info("tq client: broker at %s answers again, asking again for %zu "
              "result(s)",
              tq_client_current_endpoint(io->client), n);
}

/* The broker's PONG says how many replies it dropped for this connection
   so far (its queue for us was full, --max-client-backlog): replies in
   flight when the number grew may be among them, and nothing else would
   ever bring them. So, as after a reconnect, every SUBMIT and GET not yet
   answered goes again with its id (idempotent, PROTOCOL.md 5.1 item 3),
   and every acknowledged task is asked for by GET wait=true; so do the
   other requests that may be repeated (s_repeatable), matched by their
   ids, and the rest end at a later PONG (s_io_end_dropped). A number
   that fell is a new count (a restarted broker): it is only noted. */
/* Ends, TQ_EUNREACHABLE, every request not to be repeated that was
   unanswered at a PONG that said replies were dropped and is still
   unanswered at a later PONG: the broker answered it before that PONG's
   PING (a QGET once its time had run out), so its answer was dropped. It
   may or may not have been carried out. Returns how many ended. */
static size_t
s_io_end_dropped(tq_io_t *io)
{
    size_t n = 0;
    zlistx_t *all = tq_io_all(io);
    for (tq_request_t *r = zlistx_first(all); r; r = zlistx_next(all))
        if (r->state == TQ_REQ_SENT && r->dropped_ping &&
            io->pong_for > r->dropped_ping &&
            (r->kind != TQ_KIND_QGET ||
             r->sent_ms + (int64_t)r->time_limit_ms < io->pong_for)) {
            tq_io_failed(io, r, TQ_EUNREACHABLE,
                         "the broker dropped its reply (this client did not "
                         "read its replies in time: --max-client-backlog); "
                         "the request may or may not have been carried out");
            n++;
        }
    zlistx_destroy(&all);
    return n;
}

void
tq_io_on_pong(tq_io_t *io, uint64_t dropped)
{
    uint64_t seen = io->dropped;
    io->dropped = dropped;
    if (dropped && s_io_end_dropped(io))
        zsys_info("tq client: broker at %s dropped the reply of requests "
                  "that cannot be sent again: they end unreachable",
                  tq_client_current_endpoint(io->client));
    if (dropped <= seen)
        return;
    /* what went after the PING was read after it: not among them */
    size_t resent = s_io_resend(io, S_DROPPED, io->pong_for);
    size_t regets = s_io_reget_acked(io);
    zsys_info("tq client: broker at %s dropped %llu repl%s for this client "
              "(its backlog was full): sending %zu request(s) again, asking "
              "again for %zu result(s)",
              tq_client_current_endpoint(io->client),
              (unsigned long long)(dropped - seen),
              dropped - seen == 1 ? "y" : "ies", resent, regets);
}

/* Moves the client to the next broker of its list (wrapping around; the
   same one again when there is one): a new socket, so that nothing the
   old broker sends can reach us any more, and everything we wait on is
   asked again as after a reconnect: SUBMIT and GET sent to the old one
   go again with their ids, the other requests it may or may not have
   carried out end TQ_EUNREACHABLE, and acknowledged tasks are asked for
   by GET wait=true (PROTOCOL.md section 12). */
static void
s_io_switch(tq_io_t *io, const char *why)
{
    tq_client_t *c = io->client;
    size_t from = atomic_load(&c->current);
    size_t to = (from + 1) % c->endpoint_count;
    tq_client_socket_close(c);
    atomic_store(&c->current, to);
    if (tq_client_socket_open(c, c->endpoints[to]) != 0)
        /* the list was checked when the client was made: a socket failure
           (no file descriptor left, say); requests wait, and end
           unreachable if it lasts */
        io->reopen_at = zclock_mono() + atomic_load(&c->liveness_ms) / 3;
    atomic_fetch_add(&c->broker_moves, 1);
    zsys_info("tq client: broker at %s %s: moving to %s", c->endpoints[from],
              why, c->endpoints[to]);
    io->epoch++;
    io->connected_once = false;
    io->standby = false;
    io->broker_lost = false;
    io->pong_for = 0;
    io->dropped = 0; /* counted per connection */
    io->endpoint_since = zclock_mono();
    tq_io_peer_unknown(io); /* another broker: what does it take? */
    s_io_resend(io, S_MOVED, 0);
    /* GETs not yet sent are asked again below, with all the others */
    zlistx_purge(io->regets);
    tq_io_reattach(io);
}

long
tq_io_reopen(tq_io_t *io, int64_t now)
{
    tq_client_t *c = io->client;
    if (c->socket)
        return -1;
    if (now < io->reopen_at)
        return (long)(io->reopen_at - now);
    if (tq_client_socket_open(c, tq_client_current_endpoint(c)) == 0) {
        tq_io_peer_unknown(io);
        return -1;
    }
    io->reopen_at = now + atomic_load(&c->liveness_ms) / 3;
    return (long)(io->reopen_at - now);
}

/* The broker is a standby (PROTOCOL.md section 12): what it answered
   TQ_ESTANDBY it did not carry out, so that goes to the next broker
   whatever its kind; nothing more is sent to this one. */
void
tq_io_on_standby(tq_io_t *io, const tq_msg_t *m)
{
    io->standby = true;
    if (m->id.ptr) {
        for (tq_request_t *r = tq_io_chain(io, m->id); r; r = r->next_same)
            if (r->state == TQ_REQ_SENT)
                tq_io_move(io, r, TQ_REQ_QUEUED);
    } else if (io->fifo_head && io->fifo_head->state == TQ_REQ_SENT)
        /* an answer without an id is the oldest operator request's (an
           earlier broker's), or a PING's */
        tq_io_move(io, io->fifo_head, TQ_REQ_QUEUED);
}

/* Moves on from a standby, at once, except after a whole round of the
   list answered TQ_ESTANDBY: then once per third of the liveness (the
   lease of a new active broker takes a moment). Returns the ms until the
   next move, or -1. */
long
tq_io_leave_standby(tq_io_t *io, int64_t now)
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

/* ---- liveness ----------------------------------------------------------- */

static bool
s_io_input_waiting(tq_io_t *io)
{
    int events = 0;
    size_t size = sizeof events;
    return io->client->socket &&
        zmq_getsockopt(io->client->socket, ZMQ_EVENTS, &events, &size) == 0 &&
        (events & ZMQ_POLLIN);
}

/* Returns the poll timeout, after sending a PING or failing unacknowledged
   requests when their time has come (PROTOCOL.md section 10). */
long
tq_io_liveness(tq_io_t *io)
{
    if (io->waiting == 0)
        return -1;
    int64_t live = atomic_load(&io->client->liveness_ms);
    size_t brokers = io->client->endpoint_count;
    int64_t now = zclock_mono();
    int64_t resend = tq_io_deferred(io, now);
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
    if (io->unacked > io->held && now - silent_from >= bound)
        tq_io_hold_folded(io);
    if (io->unacked > io->held && now - silent_from >= bound) {
        char text[768];
        /* a CURVE broker drops a handshake it cannot or will not take
           without a word: say what to check */
        int mechanism = ZMQ_NULL;
        size_t size = sizeof mechanism;
        if (io->client->socket)
            zmq_getsockopt(io->client->socket, ZMQ_MECHANISM, &mechanism,
                           &size);
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
        tq_io_fail(io, true, TQ_EUNREACHABLE, text);
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
        tq_io_send_simple(io, TQ_CMD_PING);
        io->last_ping = now;
        quiet_from = now;
    }
    int64_t next = quiet_from + live / 3;
    if (io->unacked > io->held && silent_from + bound < next)
        next = silent_from + bound;
    if (!io->broker_lost && heard_from + live < next)
        next = heard_from + live;
    if (resend >= 0 && resend < next)
        next = resend;
    return next > now ? (long)(next - now) : 0;
}

/* Reads one socket-monitor event: a connection made after the first one
   may lead to a new broker, which must hear our GETs again. */
void
tq_io_monitor(tq_io_t *io)
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
        while (tq_io_recv(io) == TQ_IO_RECV_BATCH)
            ;
        /* the next connection may lead to another broker (an older one
           restarted on the same port): nothing batched until it says */
        tq_io_peer_unknown(io);
        io->epoch++;
        s_io_resend(io, S_BROKE, 0);
        return;
    }
    if (event != ZMQ_EVENT_CONNECTED)
        return;
    if (io->connected_once) {
        io->broker_lost = false;
        io->dropped = 0; /* the broker counts drops per connection */
        tq_io_peer_unknown(io); /* and its PONG says what it takes */
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
        tq_io_reattach(io);
    }
    io->connected_once = true;
}
