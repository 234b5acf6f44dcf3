/* tq_pack.c - packing task arguments from a picture into a msgpack array,
   and the one-call packers task functions use for their results. */
#include "tq/tq_client.h"
#include "tq/tq_worker.h"

#include <assert.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "tq_client_internal.h"
#include "tq_proto.h"
#include "tq_spare.h"

/* Small first buffer: an argument array is often a few bytes, and
   msgpack's sbuffer would start at 8 KiB. */
#define S_FIRST_SIZE 64

int
tq_grow_write(void *data, const char *bytes, size_t len)
{
    tq_grow_t *b = data;
    if (b->size + len > b->alloc) {
        size_t alloc = b->alloc ? b->alloc * 2 : S_FIRST_SIZE;
        if (alloc < b->size + len)
            /* a large argument: its size, not the next power of two (64
               KiB would take 128 KiB: above glibc's mmap threshold, so
               mapped and faulted in anew on every call) */
            alloc = b->size + len;
        char *p = realloc(b->data, alloc);
        if (!p)
            return -1;
        b->data = p;
        b->alloc = alloc;
    }
    memcpy(b->data + b->size, bytes, len);
    b->size += len;
    return 0;
}

static bool
s_valid_picture(const char *picture)
{
    for (const char *c = picture; *c; c++)
        if (!strchr("iudsbnpm", *c))
            return false;
    return true;
}

/* Packs one element of picture character c from *ap. */
static int
s_pack_one(msgpack_packer *pk, char c, va_list *ap)
{
    switch (c) {
    case 'i':
        return msgpack_pack_int64(pk, va_arg(*ap, int64_t));
    case 'u':
        return msgpack_pack_uint64(pk, va_arg(*ap, uint64_t));
    case 'd':
        return msgpack_pack_double(pk, va_arg(*ap, double));
    case 's':
        return tq_pack_str(pk, va_arg(*ap, const char *));
    case 'b':
        return va_arg(*ap, int) ? msgpack_pack_true(pk)
                                : msgpack_pack_false(pk);
    case 'n':
        return msgpack_pack_nil(pk);
    case 'p': {
        const void *p = va_arg(*ap, const void *);
        size_t size = va_arg(*ap, size_t);
        if (size > UINT32_MAX || (!p && size))
            return TQ_EINVAL;
        msgpack_pack_bin(pk, size);
        return msgpack_pack_bin_body(pk, p, size);
    }
    case 'm': {
        const void *p = va_arg(*ap, const void *);
        size_t size = va_arg(*ap, size_t);
        /* raw bytes become one element: they must be exactly one
           well-formed object or the whole array would be corrupt */
        if (!p || tq_proto_check_payload(p, size, false, NULL) != TQ_OK)
            return TQ_EINVAL;
        return pk->callback(pk->data, p, size) ? TQ_ENOMEM : TQ_OK;
    }
    }
    return TQ_EINVAL;
}

/* tq_vpack_into for a picture already checked. */
static int
s_pack_array(msgpack_packer *pk, const char *picture, va_list ap)
{
    va_list aq;
    va_copy(aq, ap);
    int rc = msgpack_pack_array(pk, strlen(picture)) ? TQ_ENOMEM : TQ_OK;
    for (const char *c = picture; *c && rc == TQ_OK; c++)
        rc = s_pack_one(pk, *c, &aq) ? TQ_EINVAL : TQ_OK;
    va_end(aq);
    return rc;
}

int
tq_vpack_into(msgpack_packer *pk, const char *picture, va_list ap)
{
    if (!picture)
        picture = "";
    if (!s_valid_picture(picture))
        return TQ_EINVAL;
    return s_pack_array(pk, picture, ap);
}

int
tq_pack(tq_buf_t *buf, const char *picture, ...)
{
    va_list ap;
    va_start(ap, picture);
    int rc = tq_vpack(buf, picture, ap);
    va_end(ap);
    return rc;
}

/* An upper bound of the bytes picture's arguments pack into (picture
   already checked), read from a copy of ap. */
static size_t
s_packed_bound(const char *picture, va_list ap)
{
    va_list aq;
    va_copy(aq, ap);
    size_t bound = 5; /* the array's header */
    for (const char *c = picture; *c; c++) {
        switch (*c) {
        case 'i':
            (void)va_arg(aq, int64_t);
            bound += 9;
            break;
        case 'u':
            (void)va_arg(aq, uint64_t);
            bound += 9;
            break;
        case 'd':
            (void)va_arg(aq, double);
            bound += 9;
            break;
        case 's': {
            const char *str = va_arg(aq, const char *);
            bound += 5 + (str ? strlen(str) : 0);
            break;
        }
        case 'b':
            (void)va_arg(aq, int);
            bound += 1;
            break;
        case 'n':
            bound += 1;
            break;
        case 'p':
        case 'm': {
            (void)va_arg(aq, const void *);
            size_t size = va_arg(aq, size_t);
            /* an invalid size fails the packing: no bound needed */
            bound += size <= UINT32_MAX ? 5 + size : 0;
            break;
        }
        }
    }
    va_end(aq);
    return bound;
}

int
tq_vpack(tq_buf_t *buf, const char *picture, va_list ap)
{
    assert(buf);
    buf->data = NULL;
    buf->size = 0;
    if (!picture)
        picture = "";
    /* check the picture before consuming any argument, so a bad character
       never makes va_arg read arguments of the wrong type */
    if (!s_valid_picture(picture))
        return TQ_EINVAL;
    tq_grow_t b = {0};
    size_t bound = s_packed_bound(picture, ap);
    if (bound >= TQ_SPARE_MIN) {
        /* large: one buffer of the whole size, a spare when one fits
           (memory already faulted in, tq_spare.h) */
        b.data = tq_spare_take(bound);
        if (!b.data)
            b.data = malloc(bound);
        if (!b.data)
            return TQ_ENOMEM;
        b.alloc = malloc_usable_size(b.data);
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, tq_grow_write);
    int rc = tq_vpack_into(&pk, picture, ap);
    if (rc != TQ_OK) {
        free(b.data);
        return rc;
    }
    buf->data = b.data;
    buf->size = b.size;
    return TQ_OK;
}

/* A tq_grow_t writer into a buffer that never grows (the caller's). */
static int
s_fixed_write(void *data, const char *bytes, size_t len)
{
    tq_grow_t *b = data;
    if (len > b->alloc - b->size)
        return -1;
    memcpy(b->data + b->size, bytes, len);
    b->size += len;
    return 0;
}

int
tq_vpack_small(tq_buf_t *buf, void *small, size_t small_size,
               const char *picture, va_list ap)
{
    assert(buf);
    if (!picture)
        picture = "";
    if (!s_valid_picture(picture)) {
        buf->data = NULL;
        buf->size = 0;
        return TQ_EINVAL;
    }
    if (s_packed_bound(picture, ap) > small_size)
        return tq_vpack(buf, picture, ap);
    tq_grow_t b = {.data = small, .alloc = small_size};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, s_fixed_write);
    int rc = s_pack_array(&pk, picture, ap);
    buf->data = rc == TQ_OK ? small : NULL;
    buf->size = rc == TQ_OK ? b.size : 0;
    return rc;
}

void
tq_buf_free(tq_buf_t *buf)
{
    if (!buf)
        return;
    free(buf->data);
    buf->data = NULL;
    buf->size = 0;
}

/* ---- result packers ---------------------------------------------------- */

int
tq_pack_str(msgpack_packer *out, const char *s)
{
    if (!s)
        return msgpack_pack_nil(out);
    size_t len = strlen(s);
    msgpack_pack_str(out, len);
    return msgpack_pack_str_body(out, s, len);
}

int
tq_pack_int(msgpack_packer *out, int64_t v)
{
    return msgpack_pack_int64(out, v);
}

int
tq_pack_double(msgpack_packer *out, double v)
{
    return msgpack_pack_double(out, v);
}

int
tq_pack_bool(msgpack_packer *out, bool v)
{
    return v ? msgpack_pack_true(out) : msgpack_pack_false(out);
}

int
tq_pack_nil(msgpack_packer *out)
{
    return msgpack_pack_nil(out);
}

int
tq_pack_value(msgpack_packer *out, const char *picture, ...)
{
    if (!picture || !*picture || !s_valid_picture(picture))
        return TQ_EINVAL;
    va_list ap;
    va_start(ap, picture);
    size_t n = strlen(picture);
    int rc = n > 1 ? msgpack_pack_array(out, n) : 0;
    for (const char *c = picture; *c && rc == 0; c++)
        rc = s_pack_one(out, *c, &ap);
    va_end(ap);
    return rc ? TQ_EINVAL : TQ_OK;
}
