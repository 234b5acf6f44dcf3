/* tq_wire.c - whole TQP/1 messages on raw libzmq sockets. */
#include "tq_wire.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

void
tq_frames_init(tq_frames_t *f)
{
    zmq_msg_init(&f->identity);
    zmq_msg_init(&f->header);
    zmq_msg_init(&f->payload);
    f->has_payload = false;
    f->frames = 0;
}

void
tq_frames_close(tq_frames_t *f)
{
    zmq_msg_close(&f->identity);
    zmq_msg_close(&f->header);
    zmq_msg_close(&f->payload);
    tq_frames_init(f);
}

int
tq_wire_recv(void *socket, tq_frames_t *f, bool router, int flags)
{
    zmq_msg_t *slots[3];
    int nslots = 0;
    if (router)
        slots[nslots++] = &f->identity;
    slots[nslots++] = &f->header;
    slots[nslots++] = &f->payload;

    f->frames = 0;
    f->has_payload = false;
    /* zmq_msg_recv releases what a slot held before; the payload slot may
       have been moved out by the caller, which leaves it empty but valid */
    if (zmq_msg_recv(slots[0], socket, flags) < 0)
        return -1;
    f->frames = 1;
    bool too_many = false;
    /* whether more parts follow, asked of the part received (the socket
       option ZMQ_RCVMORE says the same at several times the cost) */
    bool more = zmq_msg_more(slots[0]);
    while (more) {
        if (f->frames < nslots) {
            /* the rest of a multipart message is already here */
            while (zmq_msg_recv(slots[f->frames], socket, 0) < 0)
                if (errno != EINTR)
                    return -1;
            more = zmq_msg_more(slots[f->frames]);
        } else {
            zmq_msg_t extra;
            zmq_msg_init(&extra);
            while (zmq_msg_recv(&extra, socket, 0) < 0)
                if (errno != EINTR) {
                    zmq_msg_close(&extra);
                    return -1;
                }
            more = zmq_msg_more(&extra);
            zmq_msg_close(&extra);
            too_many = true;
        }
        f->frames++;
    }
    if (f->frames < nslots - 1)
        zmq_msg_close(&f->header), zmq_msg_init(&f->header);
    if (f->frames < nslots)
        zmq_msg_close(&f->payload), zmq_msg_init(&f->payload);
    else
        f->has_payload = true;
    if (too_many || f->frames < nslots - 1)
        return TQ_EPROTO;
    return TQ_OK;
}

int
tq_wire_send(void *socket, zmq_msg_t *identity, const void *header,
             size_t header_size, zmq_msg_t *payload, int flags)
{
    if (identity) {
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        zmq_msg_copy(&copy, identity);
        if (zmq_msg_send(&copy, socket, flags | ZMQ_SNDMORE) < 0) {
            zmq_msg_close(&copy);
            return -1;
        }
    }
    /* once the first part is accepted the rest of the message is too:
       ZeroMQ delivers multipart messages whole or not at all */
    if (zmq_send(socket, header, header_size,
                 flags | (payload ? ZMQ_SNDMORE : 0)) < 0)
        return -1;
    if (payload && zmq_msg_send(payload, socket, flags) < 0)
        return -1;
    return TQ_OK;
}

int
tq_wire_send_msg(void *socket, zmq_msg_t *identity, const tq_msg_t *msg,
                 msgpack_sbuffer *buf, zmq_msg_t *payload, int flags)
{
    int rc = tq_proto_encode(msg, buf, NULL);
    if (rc != TQ_OK)
        return rc;
    return tq_wire_send(socket, identity, buf->data, buf->size, payload,
                        flags);
}

int
tq_wire_send_batch(void *socket, zmq_msg_t *identity, tq_batch_t *b, int flags)
{
    int rc = TQ_OK;
    if (b->count == 1) {
        const void *header, *data;
        size_t header_size, size;
        bool has_payload;
        rc = tq_batch_first(b, &header, &header_size, &data, &size,
                            &has_payload);
        assert(rc == TQ_OK);
        zmq_msg_t payload;
        if (has_payload) {
            zmq_msg_init_size(&payload, size);
            if (size)
                memcpy(zmq_msg_data(&payload), data, size);
        }
        rc = tq_wire_send(socket, identity, header, header_size,
                          has_payload ? &payload : NULL, flags);
        if (has_payload) {
            int saved = errno;
            zmq_msg_close(&payload);
            errno = saved;
        }
    } else if (b->count > 1) {
        tq_msg_t msg;
        memset(&msg, 0, offsetof(tq_msg_t, queues));
        msg.command = TQ_CMD_BATCH;
        msg.count = b->count;
        rc = tq_proto_encode(&msg, &b->header, NULL);
        assert(rc == TQ_OK);
        zmq_msg_t payload;
        zmq_msg_init_size(&payload, b->body.size);
        memcpy(zmq_msg_data(&payload), b->body.data, b->body.size);
        rc = tq_wire_send(socket, identity, b->header.data, b->header.size,
                          &payload, flags);
        int saved = errno;
        zmq_msg_close(&payload);
        errno = saved;
    }
    tq_batch_reset(b);
    return rc;
}

int
tq_wire_decode(const tq_frames_t *f, tq_msg_t *msg, const char **reason)
{
    const char *dummy;
    if (!reason)
        reason = &dummy;
    int rc = tq_proto_decode(msg, zmq_msg_data((zmq_msg_t *)&f->header),
                             zmq_msg_size((zmq_msg_t *)&f->header), reason);
    if (rc != TQ_OK)
        return rc;
    if (tq_proto_has_payload(msg->command) != f->has_payload) {
        *reason = f->has_payload ? "unexpected payload frame"
                                 : "missing payload frame";
        return TQ_EPROTO;
    }
    return TQ_OK;
}

int
tq_wire_batch_next_raw(tq_batch_reader_t *r, const void **header,
                       size_t *header_size, zmq_msg_t *payload, bool *has,
                       const char **reason)
{
    const void *data = NULL;
    size_t size = 0;
    *has = false;
    int rc =
        tq_batch_next_raw(r, header, header_size, &data, &size, has, reason);
    if (rc == TQ_BATCH_END)
        return rc;
    zmq_msg_close(payload);
    if (rc != TQ_OK) {
        zmq_msg_init(payload);
        *has = false;
        return rc;
    }
    if (zmq_msg_init_size(payload, *has ? size : 0) != 0) {
        zmq_msg_init(payload);
        *has = false;
        if (reason)
            *reason = "out of memory";
        return TQ_ENOMEM;
    }
    if (*has && size)
        memcpy(zmq_msg_data(payload), data, size);
    return TQ_OK;
}

int
tq_wire_batch_next(tq_batch_reader_t *r, tq_msg_t *msg, zmq_msg_t *payload,
                   bool *has, const char **reason)
{
    const void *header;
    size_t header_size;
    int rc =
        tq_wire_batch_next_raw(r, &header, &header_size, payload, has, reason);
    if (rc == TQ_OK)
        rc = tq_batch_decode(msg, header, header_size, *has, reason);
    else if (rc != TQ_BATCH_END)
        memset(msg, 0, offsetof(tq_msg_t, queues));
    if (rc != TQ_OK && rc != TQ_BATCH_END) {
        zmq_msg_close(payload);
        zmq_msg_init(payload);
        *has = false;
    }
    return rc;
}
