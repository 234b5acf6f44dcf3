/* tq_pack.c - packing task arguments from a picture into a msgpack array. */
#include "tq/tq_client.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "tq_proto.h"

int
tq_pack(tq_buf_t *buf, const char *picture, ...)
{
    va_list ap;
    va_start(ap, picture);
    int rc = tq_vpack(buf, picture, ap);
    va_end(ap);
    return rc;
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
    for (const char *c = picture; *c; c++)
        if (!strchr("iudsbnpm", *c))
            return TQ_EINVAL;

    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, strlen(picture));
    int rc = TQ_OK;
    for (const char *c = picture; *c && rc == TQ_OK; c++) {
        switch (*c) {
        case 'i':
            msgpack_pack_int64(&pk, va_arg(ap, int64_t));
            break;
        case 'u':
            msgpack_pack_uint64(&pk, va_arg(ap, uint64_t));
            break;
        case 'd':
            msgpack_pack_double(&pk, va_arg(ap, double));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (s) {
                size_t len = strlen(s);
                msgpack_pack_str(&pk, len);
                msgpack_pack_str_body(&pk, s, len);
            } else
                msgpack_pack_nil(&pk);
            break;
        }
        case 'b':
            if (va_arg(ap, int))
                msgpack_pack_true(&pk);
            else
                msgpack_pack_false(&pk);
            break;
        case 'n':
            msgpack_pack_nil(&pk);
            break;
        case 'p': {
            const void *p = va_arg(ap, const void *);
            size_t size = va_arg(ap, size_t);
            if (size > UINT32_MAX || (!p && size)) {
                rc = TQ_EINVAL;
                break;
            }
            msgpack_pack_bin(&pk, size);
            msgpack_pack_bin_body(&pk, p, size);
            break;
        }
        case 'm': {
            const void *p = va_arg(ap, const void *);
            size_t size = va_arg(ap, size_t);
            /* raw bytes become one element: they must be exactly one
               well-formed object or the whole array would be corrupt */
            if (!p || tq_proto_check_payload(p, size, false, NULL) != TQ_OK) {
                rc = TQ_EINVAL;
                break;
            }
            msgpack_sbuffer_write(&sbuf, p, size);
            break;
        }
        }
    }
    if (rc != TQ_OK) {
        msgpack_sbuffer_destroy(&sbuf);
        return rc;
    }
    buf->data = sbuf.data;
    buf->size = sbuf.size;
    return TQ_OK;
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
