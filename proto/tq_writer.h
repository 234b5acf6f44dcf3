/* tq_writer.h - msgpack bytes written straight into a msgpack_sbuffer: the
   codec reserves room once per field and stores the bytes itself, where
   msgpack-c's packer calls the buffer's write callback once per element
   (a header and a string cost two calls, each checking the room). The
   bytes are those msgpack-c's packer makes for the same calls (the
   shortest form of each; test_proto checks them against it).

   Private to the codec (proto/). */
#ifndef TQ_WRITER_H
#define TQ_WRITER_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Bytes being appended to buf: p..end is reserved room not yet used. */
typedef struct {
    msgpack_sbuffer *buf;
    uint8_t *p; /* next byte */
    uint8_t *end; /* end of the buffer's memory */
    bool oom; /* a reservation failed: nothing more is written */
} tq_writer_t;

/* Starts appending to buf (after its current size). */
static inline void
tq_writer_start(tq_writer_t *w, msgpack_sbuffer *buf)
{
    w->buf = buf;
    w->oom = false;
    if (!buf->data) {
        /* nothing allocated yet: no room, the first reservation grows it
           (no pointer arithmetic on NULL) */
        static uint8_t none;
        w->p = w->end = &none;
        return;
    }
    w->p = (uint8_t *)buf->data + buf->size;
    w->end = (uint8_t *)buf->data + buf->alloc;
}

/* Grows the buffer as msgpack_sbuffer_write does (doubling from
   MSGPACK_SBUFFER_INIT_SIZE) to hold n more bytes; false (and w->oom,
   with no room left, so that nothing more is written) when memory ran
   out. Out of line: the rare path of tq_writer_room. */
bool tq_writer_grow(tq_writer_t *w, size_t n);

/* Makes room for n more bytes; false when memory ran out. */
static inline bool
tq_writer_room(tq_writer_t *w, size_t n)
{
    if ((size_t)(w->end - w->p) >= n)
        return true;
    return tq_writer_grow(w, n);
}

/* Sets the buffer's size to what was written; true unless memory ran
   out on the way. */
static inline bool
tq_writer_finish(tq_writer_t *w)
{
    if (w->oom)
        return false;
    if (w->buf->data) /* else nothing was written */
        w->buf->size = (size_t)(w->p - (uint8_t *)w->buf->data);
    return true;
}

/* The writes below need the room reserved first (tq_writer_room). */

static inline void
tq_writer_byte(tq_writer_t *w, uint8_t b)
{
    *w->p++ = b;
}

static inline void
tq_writer_be(tq_writer_t *w, uint8_t tag, uint64_t v, int n)
{
    *w->p++ = tag;
    for (int i = n - 1; i >= 0; i--)
        *w->p++ = (uint8_t)(v >> (8 * i));
}

/* Room: 9 bytes. An unsigned integer, as msgpack_pack_uint8/32/64. */
static inline void
tq_writer_uint(tq_writer_t *w, uint64_t v)
{
    if (v < 0x80)
        tq_writer_byte(w, (uint8_t)v);
    else if (v <= 0xff)
        tq_writer_be(w, 0xcc, v, 1);
    else if (v <= 0xffff)
        tq_writer_be(w, 0xcd, v, 2);
    else if (v <= 0xffffffffu)
        tq_writer_be(w, 0xce, v, 4);
    else
        tq_writer_be(w, 0xcf, v, 8);
}

/* Room: 5 bytes. A str header, as msgpack_pack_str. */
static inline void
tq_writer_str_head(tq_writer_t *w, uint32_t len)
{
    if (len < 32)
        tq_writer_byte(w, (uint8_t)(0xa0 | len));
    else if (len <= 0xff)
        tq_writer_be(w, 0xd9, len, 1);
    else if (len <= 0xffff)
        tq_writer_be(w, 0xda, len, 2);
    else
        tq_writer_be(w, 0xdb, len, 4);
}

/* Room: 5 bytes. A bin header, as msgpack_pack_bin. */
static inline void
tq_writer_bin_head(tq_writer_t *w, uint32_t len)
{
    if (len <= 0xff)
        tq_writer_be(w, 0xc4, len, 1);
    else if (len <= 0xffff)
        tq_writer_be(w, 0xc5, len, 2);
    else
        tq_writer_be(w, 0xc6, len, 4);
}

/* Room: 5 bytes. An array header, as msgpack_pack_array. */
static inline void
tq_writer_array_head(tq_writer_t *w, uint32_t n)
{
    if (n < 16)
        tq_writer_byte(w, (uint8_t)(0x90 | n));
    else if (n <= 0xffff)
        tq_writer_be(w, 0xdc, n, 2);
    else
        tq_writer_be(w, 0xdd, n, 4);
}

/* Room: n bytes. Raw bytes (a str's or bin's body). */
static inline void
tq_writer_bytes(tq_writer_t *w, const void *data, size_t n)
{
    if (n)
        memcpy(w->p, data, n);
    w->p += n;
}

#endif
