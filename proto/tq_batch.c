/* tq_batch.c - the BATCH envelope: a builder over msgpack-c's buffer and a
   bounded reader over a received payload frame (no allocation). */
#include "tq_batch.h"

#include <string.h>

#include "tq_writer.h"

void
tq_batch_init(tq_batch_t *b)
{
    msgpack_sbuffer_init(&b->body);
    msgpack_sbuffer_init(&b->header);
    b->count = 0;
}

void
tq_batch_destroy(tq_batch_t *b)
{
    msgpack_sbuffer_destroy(&b->body);
    msgpack_sbuffer_destroy(&b->header);
    tq_batch_init(b);
}

/* Appends one entry, its bytes at once: the header as a bin, the payload
   as a bin or nil. TQ_OK, or TQ_ENOMEM (the batch unchanged). */
static int
s_append(tq_batch_t *b, const void *header, size_t header_size,
         const void *payload, size_t size, bool has_payload)
{
    size_t before = b->body.size;
    tq_writer_t w;
    tq_writer_start(&w, &b->body);
    if (tq_writer_room(&w, 5 + header_size + 5 + size)) {
        tq_writer_bin_head(&w, (uint32_t)header_size);
        tq_writer_bytes(&w, header, header_size);
        if (has_payload) {
            tq_writer_bin_head(&w, (uint32_t)size);
            tq_writer_bytes(&w, payload, size);
        } else
            tq_writer_byte(&w, 0xc0);
    }
    if (!tq_writer_finish(&w)) {
        b->body.size = before;
        return TQ_ENOMEM;
    }
    b->count++;
    return TQ_OK;
}

int
tq_batch_add(tq_batch_t *b, const tq_msg_t *msg, const void *payload,
             size_t size, bool has_payload)
{
    if (b->count >= TQ_BATCH_MAX || msg->command == TQ_CMD_BATCH ||
        has_payload != tq_proto_has_payload(msg->command) ||
        (has_payload && size > UINT32_MAX) || (size && !payload))
        return TQ_EINVAL;
    int rc = tq_proto_encode(msg, &b->header, NULL);
    if (rc != TQ_OK)
        return rc == TQ_ENOMEM ? rc : TQ_EINVAL;
    return s_append(b, b->header.data, b->header.size, payload, size,
                    has_payload);
}

uint32_t
tq_batch_count(const tq_batch_t *b)
{
    return b->count;
}

size_t
tq_batch_bytes(const tq_batch_t *b)
{
    return b->body.size;
}

void
tq_batch_reset(tq_batch_t *b)
{
    msgpack_sbuffer_clear(&b->body);
    b->count = 0;
}

/* ---- reading ---------------------------------------------------------- */

/* One msgpack bin at *p (before end): its bytes. False when *p is not a
   bin or it runs past end. */
static inline bool
s_bin(const uint8_t **p, const uint8_t *end, const uint8_t **data, size_t *size)
{
    const uint8_t *q = *p;
    size_t left = (size_t)(end - q), len = 0;
    if (left >= 2 && *q == 0xc4) {
        /* bin8: every header, most payloads */
        len = q[1];
        q += 2;
    } else {
        int n = left == 0 ? 0 : *q == 0xc5 ? 2 : *q == 0xc6 ? 4 : 0;
        if (!n || left < 1 + (size_t)n)
            return false;
        for (int i = 0; i < n; i++)
            len = (len << 8) | q[1 + i];
        q += 1 + n;
    }
    if ((size_t)(end - q) < len)
        return false;
    *data = q;
    *size = len;
    *p = q + len;
    return true;
}

/* One sub-message's frames at *p: header bin, then payload bin or nil. */
static bool
s_entry(const uint8_t **p, const uint8_t *end, const uint8_t **header,
        size_t *header_size, const uint8_t **payload, size_t *size,
        bool *has_payload)
{
    if (!s_bin(p, end, header, header_size) || *p >= end)
        return false;
    if (**p == 0xc0) {
        (*p)++;
        *payload = NULL;
        *size = 0;
        *has_payload = false;
        return true;
    }
    *has_payload = true;
    return s_bin(p, end, payload, size);
}

int
tq_batch_first(const tq_batch_t *b, const void **header, size_t *header_size,
               const void **payload, size_t *size, bool *has_payload)
{
    if (b->count == 0)
        return TQ_EINVAL;
    const uint8_t *p = (const uint8_t *)b->body.data;
    const uint8_t *h, *d;
    if (!s_entry(&p, p + b->body.size, &h, header_size, &d, size, has_payload))
        return TQ_EINVAL;
    *header = h;
    *payload = d;
    return TQ_OK;
}

void
tq_batch_reader_init(tq_batch_reader_t *r, const tq_msg_t *header,
                     const void *payload, size_t size)
{
    r->p = payload;
    r->end = r->p + (payload ? size : 0);
    r->count = header->command == TQ_CMD_BATCH ? header->count : 0;
    r->index = 0;
    r->broken = NULL;
    if (header->command != TQ_CMD_BATCH || r->count < 1 ||
        r->count > TQ_BATCH_MAX) {
        r->broken = "not a batch";
        return;
    }
    /* the framing first, so that a batch is handled whole or not at all
       when its envelope is bad */
    const uint8_t *p = r->p, *h, *d;
    size_t hs, ds;
    bool has;
    for (uint32_t i = 0; i < r->count; i++)
        if (!s_entry(&p, r->end, &h, &hs, &d, &ds, &has)) {
            r->broken = p >= r->end ? "batch holds fewer sub-messages than "
                                      "its count"
                                    : "batch sub-message framing is not "
                                      "bin, bin or nil";
            return;
        }
    if (p != r->end)
        r->broken = "trailing bytes after the batch's last sub-message";
}

int
tq_batch_next_raw(tq_batch_reader_t *r, const void **header,
                  size_t *header_size, const void **payload, size_t *size,
                  bool *has_payload, const char **reason)
{
    const char *dummy;
    if (!reason)
        reason = &dummy;
    *header = NULL;
    *header_size = 0;
    *payload = NULL;
    *size = 0;
    *has_payload = false;
    if (r->broken) {
        if (r->index > r->count)
            return TQ_BATCH_END;
        r->index = r->count + 1; /* said once */
        *reason = r->broken;
        return TQ_EPROTO;
    }
    if (r->index >= r->count)
        return TQ_BATCH_END;
    const uint8_t *h, *d;
    size_t hs, ds;
    bool has;
    /* checked at init: the framing holds */
    if (!s_entry(&r->p, r->end, &h, &hs, &d, &ds, &has)) {
        r->broken = "batch framing";
        return tq_batch_next_raw(r, header, header_size, payload, size,
                                 has_payload, reason);
    }
    r->index++;
    *header = h;
    *header_size = hs;
    *payload = d;
    *size = ds;
    *has_payload = has;
    return TQ_OK;
}

int
tq_batch_decode(tq_msg_t *msg, const void *header, size_t header_size,
                bool has_payload, const char **reason)
{
    const char *dummy;
    if (!reason)
        reason = &dummy;
    int rc = tq_proto_decode(msg, header, header_size, reason);
    if (rc != TQ_OK)
        return rc;
    if (msg->command == TQ_CMD_BATCH) {
        *reason = "a BATCH inside a BATCH";
        return TQ_EPROTO;
    }
    if (tq_proto_has_payload(msg->command) != has_payload) {
        *reason = has_payload ? "unexpected payload in a batch sub-message"
                              : "missing payload in a batch sub-message";
        return TQ_EPROTO;
    }
    return TQ_OK;
}

int
tq_batch_next(tq_batch_reader_t *r, tq_msg_t *msg, const void **payload,
              size_t *size, bool *has_payload, const char **reason)
{
    const void *h, *d;
    size_t hs, ds;
    bool has;
    int rc = tq_batch_next_raw(r, &h, &hs, &d, &ds, &has, reason);
    *payload = NULL;
    *size = 0;
    *has_payload = false;
    if (rc == TQ_BATCH_END)
        return rc;
    if (rc != TQ_OK) {
        memset(msg, 0, offsetof(tq_msg_t, queues));
        return rc;
    }
    rc = tq_batch_decode(msg, h, hs, has, reason);
    if (rc != TQ_OK)
        return rc;
    *payload = d;
    *size = ds;
    *has_payload = has;
    return TQ_OK;
}

int
tq_batch_add_encoded(tq_batch_t *b, const void *header, size_t header_size,
                     const void *payload, size_t size, bool has_payload)
{
    if (b->count >= TQ_BATCH_MAX || !header || !header_size ||
        header_size > UINT32_MAX || (has_payload && size > UINT32_MAX) ||
        (size && !payload))
        return TQ_EINVAL;
    return s_append(b, header, header_size, payload, size, has_payload);
}
