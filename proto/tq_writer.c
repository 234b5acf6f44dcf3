/* tq_writer.c - the rare path of tq_writer.h: growing the buffer. */
#include "tq_writer.h"

#include <stdlib.h>

bool
tq_writer_grow(tq_writer_t *w, size_t n)
{
    if (w->oom)
        return false;
    uint8_t *data = (uint8_t *)w->buf->data;
    size_t used = data ? (size_t)(w->p - data) : 0;
    size_t size = w->buf->alloc ? w->buf->alloc * 2 : MSGPACK_SBUFFER_INIT_SIZE;
    while (size < used + n && size * 2 > size)
        size *= 2;
    void *grown = size >= used + n ? realloc(data, size) : NULL;
    if (!grown) {
        w->oom = true;
        w->end = w->p;
        return false;
    }
    w->buf->data = grown;
    w->buf->alloc = size;
    w->p = (uint8_t *)grown + used;
    w->end = (uint8_t *)grown + size;
    return true;
}
