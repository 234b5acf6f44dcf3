/* tq_writer.c - the rare path of tq_writer.h: growing the buffer. */
#include "tq_writer.h"

#include <stdlib.h>

bool
tq_writer_grow(tq_writer_t *w, size_t n)
{
    if (w->oom)
        return false;
    size_t used = (size_t)(w->p - (uint8_t *)w->buf->data);
    size_t size = w->buf->alloc ? w->buf->alloc * 2 : MSGPACK_SBUFFER_INIT_SIZE;
    while (size < used + n && size * 2 > size)
        size *= 2;
    void *data = size >= used + n ? realloc(w->buf->data, size) : NULL;
    if (!data) {
        w->oom = true;
        w->end = w->p;
        return false;
    }
    w->buf->data = data;
    w->buf->alloc = size;
    w->p = (uint8_t *)data + used;
    w->end = (uint8_t *)data + size;
    return true;
}
