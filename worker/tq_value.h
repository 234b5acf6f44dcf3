/* tq_value.h - a task's value as its function packs it, without a copy of
   what it takes from its arguments. While every byte packed so far is a
   run of the argument frame (tq.echo's whole value; a task returning one
   of its bin or str arguments), that run is referenced, not copied, and
   the value leaves as a message that shares the frame's buffer: a 64 KiB
   echo costs no 64 KiB memcpy. Any other write copies the run into the
   value's own buffer first, so what is packed is always what is sent. */
#ifndef TQ_VALUE_H
#define TQ_VALUE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <zmq.h>

/* A write of at least this many bytes from the argument frame starts a
   reference; below it a copy costs less than the message that shares. */
#define TQ_VALUE_REF_MIN 4096

typedef struct {
    msgpack_sbuffer *own; /* borrowed: the bytes packed and copied */
    zmq_msg_t *frame; /* borrowed: the arguments' message, NULL: none */
    const char *ref; /* NULL, or the run of frame's bytes that follows
                        own's bytes in the value, ref_size bytes */
    size_t ref_size;
} tq_value_t;

/* Starts a value: own (borrowed, emptied) takes the copied bytes; frame
   (borrowed, may be NULL) holds the arguments, and must stay as it is
   until the value was made a message or tq_value_start is called again. */
void tq_value_start(tq_value_t *self, msgpack_sbuffer *own, zmq_msg_t *frame);

/* A msgpack_packer_write on a tq_value_t *: references len bytes at buf
   when they are in the frame and follow what was packed, else copies.
   Returns 0, or -1 without memory. */
int tq_value_write(void *self, const char *buf, size_t len);

/* The value's bytes, contiguous (borrowed; in own or in the frame). */
const void *tq_value_data(const tq_value_t *self);

/* The value's size in bytes. */
size_t tq_value_size(const tq_value_t *self);

/* True if the value is a run of the frame's bytes (nothing was copied). */
bool tq_value_is_ref(const tq_value_t *self);

/* If the value is a run of the frame (tq_value_is_ref): makes msg (not
   initialised) a message sharing the frame's buffer (the frame itself
   when the run is all of it) and returns 0; -1 (msg untouched) if it is
   not, or without memory. */
int tq_value_ref_msg(const tq_value_t *self, zmq_msg_t *msg);

#endif
