/* tq_done.h - private to tq-worker: a child's DONE header, encoded in one
   pass. The bytes are exactly tq_proto_encode's for the same message
   (test_worker_states compares them), without its walk of the field table
   per field, its buffer growth per field, or a text id parsed back to
   the bin it came as: a child sends a DONE per task. And whether the
   DONEs a child holds for a BATCH may wait while a task runs. */
#ifndef TQ_DONE_H
#define TQ_DONE_H

#include <stdbool.h>
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

/* A task with a hard time limit under this runs with nothing held: the
   supervisor may kill it before the keeper sends what is held. */
#define TQ_DONE_HOLD_LIMIT_MS 1000

/* True if the DONEs a child holds for a BATCH (PROTOCOL.md 5.9) may wait
   while a task runs: its last run in this child took span_us (-1: it
   never ran here), less than short_us (--batch-short-us; 0: nothing is
   held), and its hard time limit (limit_ms, 0: none) does not let the
   supervisor kill it before the keeper sends them (keeper: the child has
   one, which sends them once a task has run its KEEPER_AFTER_MS). */
bool tq_done_may_hold(int64_t span_us, uint32_t short_us, uint32_t limit_ms,
                      bool keeper);

#endif
