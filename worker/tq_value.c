/* tq_value.c - a task's value packed by reference to its arguments where
   it can be (see tq_value.h). */
#include "tq_value.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void
tq_value_start(tq_value_t *self, msgpack_sbuffer *own, zmq_msg_t *frame)
{
    msgpack_sbuffer_clear(own);
    self->own = own;
    self->frame = frame;
    self->ref = NULL;
    self->ref_size = 0;
}

/* Copies the referenced run into own: the value is all its own again. */
static int
s_unref(tq_value_t *self)
{
    const char *ref = self->ref;
    self->ref = NULL;
    return msgpack_sbuffer_write(self->own, ref, self->ref_size);
}

/* True if len bytes at buf lie in the frame and the bytes packed so far
   are the ones just before them there. */
static bool
s_follows_in_frame(const tq_value_t *self, const char *buf, size_t len)
{
    if (!self->frame)
        return false;
    const char *start = zmq_msg_data(self->frame);
    size_t size = zmq_msg_size(self->frame);
    /* compared as addresses: buf may point anywhere */
    uintptr_t b = (uintptr_t)buf, s = (uintptr_t)start;
    if (b < s || b - s > size || len > size - (b - s))
        return false;
    size_t n = self->own->size;
    /* own->data is NULL while nothing was packed: no memcmp of it */
    return b - s >= n && (n == 0 || memcmp(buf - n, self->own->data, n) == 0);
}

int
tq_value_write(void *data, const char *buf, size_t len)
{
    tq_value_t *self = data;
    if (self->ref) {
        const char *end = self->ref + self->ref_size;
        const char *frame_end =
            (const char *)zmq_msg_data(self->frame) + zmq_msg_size(self->frame);
        if (buf == end && len <= (size_t)(frame_end - end)) {
            self->ref_size += len; /* the run goes on */
            return 0;
        }
        if (s_unref(self) != 0)
            return -1;
    } else if (len >= TQ_VALUE_REF_MIN && s_follows_in_frame(self, buf, len)) {
        self->ref = buf;
        self->ref_size = len;
        return 0;
    }
    return msgpack_sbuffer_write(self->own, buf, len);
}

const void *
tq_value_data(const tq_value_t *self)
{
    return self->ref ? self->ref - self->own->size : self->own->data;
}

size_t
tq_value_size(const tq_value_t *self)
{
    return self->own->size + (self->ref ? self->ref_size : 0);
}

bool
tq_value_is_ref(const tq_value_t *self)
{
    return self->ref != NULL;
}

/* zmq_free_fn of a message sharing part of a frame: lets the frame's
   copy (hint) go. */
static void
s_release(void *data, void *hint)
{
    (void)data;
    zmq_msg_close(hint);
    free(hint);
}

int
tq_value_ref_msg(const tq_value_t *self, zmq_msg_t *msg)
{
    if (!self->ref)
        return -1;
    const void *data = tq_value_data(self);
    size_t size = tq_value_size(self);
    if (data == zmq_msg_data(self->frame) &&
        size == zmq_msg_size(self->frame)) {
        /* all of it: the frame itself, its buffer shared (counted) */
        zmq_msg_init(msg);
        return zmq_msg_copy(msg, self->frame);
    }
    /* a part: a message on those bytes that holds a copy of the frame
       (sharing its buffer) until libzmq lets it go */
    zmq_msg_t *hold = malloc(sizeof *hold);
    if (!hold)
        return -1;
    zmq_msg_init(hold);
    if (zmq_msg_copy(hold, self->frame) != 0 ||
        zmq_msg_init_data(msg, (void *)data, size, s_release, hold) != 0) {
        zmq_msg_close(hold);
        free(hold);
        return -1;
    }
    return 0;
}
