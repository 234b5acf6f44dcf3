/* tq_done.h - private to tq-worker: a child's DONE header, encoded in one
   pass. The bytes are exactly tq_proto_encode's for the same message
   (test_worker_states compares them), without its walk of the field table
   per field, its buffer growth per field, or a text id parsed back to
   the bin it came as: a child sends a DONE per task. */
#ifndef TQ_DONE_H
#define TQ_DONE_H

#include <stddef.h>
#include <stdint.h>

#include "tq_proto.h"

/* Room for any DONE header tq_done_encode writes. */
#define TQ_DONE_MAX (64 + TQ_PROTO_MAX_ID + TQ_PROTO_MAX_ERROR)

/* Encodes msg, a DONE, into buf: its id (with id_binary, the 16 bytes at
   id_bytes, which must be set; else the text of id), attempt, state,
   code, error (nil when absent) and rss_kb. Returns the bytes written, or
   0 when msg is not a DONE whose fields keep the protocol's rules (let
   tq_proto_encode say why). */
size_t tq_done_encode(const tq_msg_t *msg, uint8_t buf[TQ_DONE_MAX]);

#endif
