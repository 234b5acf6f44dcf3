/* tq_dataq.c - data queues: multiprocessing.Queue kept by the broker.
   Items are opaque msgpack objects, FIFO; a QGET that finds nothing waits
   until an item comes or its wait runs out (PROTOCOL.md 5.5). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_broker_core.h"

dq_t *
tqb_dq(tq_broker_t *self, tq_str_t name, bool create)
{
    char key[TQ_PROTO_MAX_NAME + 1];
    tq_str_copy(key, sizeof key, name);
    dq_t *dq = zhashx_lookup(self->dq_index, key);
    if (!dq && create) {
        dq = tqb_alloc(sizeof *dq);
        dq->name = tqb_intern(self, name);
        dq->next = self->dqs;
        self->dqs = dq;
        zhashx_insert(self->dq_index, dq->name, dq);
    }
    return dq;
}

/* Hands an item (moved) to the first waiting getter that is still there.
   Returns false if none took it. */
static bool
s_dq_hand(tq_broker_t *self, dq_t *dq, zmq_msg_t *item)
{
    while (dq->getters) {
        getter_t *g = dq->getters;
        dq->getters = g->next;
        if (!dq->getters)
            dq->getters_tail = NULL;
        tq_msg_t *out = tqb_out(self, TQ_CMD_QITEM);
        out->id = tq_str(g->id);
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        zmq_msg_copy(&copy, item);
        int rc = tqb_send_to(self, self->clients, &g->ident, &copy);
        zmq_msg_close(&copy);
        tqb_ident_clear(&g->ident);
        free(g);
        if (rc == 0) {
            zmq_msg_close(item);
            zmq_msg_init(item);
            return true;
        }
    }
    return false;
}

/* Appends an item (moved) to a data queue. */
item_t *
tqb_dq_append(tq_broker_t *self, dq_t *dq, zmq_msg_t *item)
{
    item_t *node = tqb_alloc(sizeof *node);
    zmq_msg_init(&node->msg);
    zmq_msg_move(&node->msg, item);
    node->seq = dq->next_seq++;
    self->memory += zmq_msg_size(&node->msg);
    if (dq->tail)
        dq->tail->next = node;
    else
        dq->head = node;
    dq->tail = node;
    dq->size++;
    return node;
}

void
tqb_on_qput(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)peer;
    const char *reason = NULL;
    zmq_msg_t *item = &self->frames.payload;
    if (tq_proto_check_payload(zmq_msg_data(item), zmq_msg_size(item), false,
                               &reason) != TQ_OK) {
        char text[256];
        snprintf(text, sizeof text, "item: %s", reason);
        self->counters.malformed++;
        tqb_reply_error(self, self->clients, TQ_EPROTO, text, msg->id);
        return;
    }
    dq_t *dq = tqb_dq(self, msg->queue, true);
    if (msg->maxsize)
        dq->maxsize = msg->maxsize;
    ident_t from = tqb_sender(self);
    if (s_dq_hand(self, dq, item)) {
        tqb_ack(self, msg->id, &from, TQ_CMD_REPLY, dq->size);
        return;
    }
    char text[TQ_PROTO_MAX_NAME + 64];
    if (dq->maxsize && dq->size >= dq->maxsize) {
        snprintf(text, sizeof text, "queue %s is full (maxsize %u)", dq->name,
                 dq->maxsize);
        tqb_reply_error(self, self->clients, TQ_EFULL, text, msg->id);
        return;
    }
    if (self->store && self->config.max_disk &&
        self->disk_bytes + zmq_msg_size(item) + TQB_ROW_BYTES >
            self->config.max_disk) {
        snprintf(text, sizeof text,
                 "broker disk limit reached (max-disk %llu MB)",
                 (unsigned long long) (self->config.max_disk >> 20));
        tqb_reply_error(self, self->clients, TQ_EFULL, text, msg->id);
        return;
    }
    if (self->config.max_memory &&
        self->memory + zmq_msg_size(item) > self->config.max_memory) {
        snprintf(text, sizeof text,
                 "broker memory limit reached (max-memory %llu MB)",
                 (unsigned long long)(self->config.max_memory >> 20));
        tqb_reply_error(self, self->clients, TQ_EFULL, text, msg->id);
        return;
    }
    item_t *node = tqb_dq_append(self, dq, item);
    /* accepted means stored, as for tasks: the REPLY waits for the commit */
    tqb_journal_item_add(self, dq, node);
    self->disk_bytes += zmq_msg_size(&node->msg) + TQB_ROW_BYTES;
    tqb_ack(self, msg->id, &from, TQ_CMD_REPLY, dq->size);
}

static void
s_reply_empty(tq_broker_t *self, const ident_t *to, const char *id,
              const dq_t *dq, const char *name)
{
    char text[TQ_PROTO_MAX_NAME + 32];
    snprintf(text, sizeof text, "queue %s is empty", dq ? dq->name : name);
    tq_msg_t *out = tqb_out(self, TQ_CMD_ERROR);
    out->code = TQ_EEMPTY;
    out->error = tq_str(text);
    out->id = tq_str(id);
    tqb_send_to(self, self->clients, to, NULL);
}

void
tqb_on_qget(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)peer;
    dq_t *dq = tqb_dq(self, msg->queue, msg->time_limit_ms > 0);
    ident_t from = tqb_sender(self);
    char id[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(id, sizeof id, msg->id);
    if (dq && dq->head) {
        item_t *node = dq->head;
        dq->head = node->next;
        if (!dq->head)
            dq->tail = NULL;
        dq->size--;
        self->memory -= zmq_msg_size(&node->msg);
        tq_msg_t *out = tqb_out(self, TQ_CMD_QITEM);
        out->id = msg->id;
        if (tqb_send_to(self, self->clients, &from, &node->msg) != 0) {
            /* the getter is gone: the item stays first in line */
            node->next = dq->head;
            dq->head = node;
            if (!dq->tail)
                dq->tail = node;
            dq->size++;
            self->memory += zmq_msg_size(&node->msg);
            return;
        }
        tqb_journal_item_remove(self, dq, node->seq);
        zmq_msg_close(&node->msg);
        free(node);
        return;
    }
    if (msg->time_limit_ms == 0) {
        char name[TQ_PROTO_MAX_NAME + 1];
        tq_str_copy(name, sizeof name, msg->queue);
        s_reply_empty(self, &from, id, dq, name);
        return;
    }
    getter_t *g = tqb_alloc(sizeof *g);
    tqb_ident_set(&g->ident, tqb_ident_data(&from), from.size);
    memcpy(g->id, id, sizeof id);
    g->deadline_ms = self->now_ms + msg->time_limit_ms;
    if (dq->getters_tail)
        dq->getters_tail->next = g;
    else
        dq->getters = g;
    dq->getters_tail = g;
}

void
tqb_on_qsize(tq_broker_t *self, const tq_msg_t *msg, peer_t *peer)
{
    (void)peer;
    dq_t *dq = tqb_dq(self, msg->queue, false);
    tqb_reply_counts(self, msg->id, "size", dq ? dq->size : 0, "maxsize",
                     dq ? dq->maxsize : 0);
}

/* Ends the waits that ran out; returns the earliest deadline left, or
   INT64_MAX. */
int64_t
tqb_expire_getters(tq_broker_t *self)
{
    int64_t next = INT64_MAX;
    for (dq_t *dq = self->dqs; dq; dq = dq->next) {
        getter_t **link = &dq->getters;
        dq->getters_tail = NULL;
        while (*link) {
            getter_t *g = *link;
            if (g->deadline_ms <= self->now_ms) {
                s_reply_empty(self, &g->ident, g->id, dq, NULL);
                *link = g->next;
                tqb_ident_clear(&g->ident);
                free(g);
                continue;
            }
            if (g->deadline_ms < next)
                next = g->deadline_ms;
            dq->getters_tail = g;
            link = &g->next;
        }
    }
    return next;
}

void
tqb_dq_free_all(tq_broker_t *self)
{
    for (dq_t *dq = self->dqs, *dn; dq; dq = dn) {
        dn = dq->next;
        for (item_t *it = dq->head, *in; it; it = in) {
            in = it->next;
            zmq_msg_close(&it->msg);
            free(it);
        }
        for (getter_t *g = dq->getters, *gn; g; g = gn) {
            gn = g->next;
            tqb_ident_clear(&g->ident);
            free(g);
        }
        free(dq);
    }
    self->dqs = NULL;
}
