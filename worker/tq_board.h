/* tq_board.h - private to tq-worker: what a child publishes about itself
   in memory shared with its supervisor. The child writes its board at
   each change (a task starts, it goes idle, it will recycle) without a
   system call and without waking anyone; the supervisor reads it when it
   needs to know (a deadline, a KILL from the broker, the child's end). */
#ifndef TQ_BOARD_H
#define TQ_BOARD_H

#include <stdbool.h>
#include <stdint.h>

#include "tq_proto.h"

/* Where a child is, as it last published. */
typedef enum {
    TQ_BOARD_STARTING, /* forked, its first READY not sent yet */
    TQ_BOARD_IDLE, /* announced, runs no task */
    TQ_BOARD_BUSY, /* runs the task of the last START */
    TQ_BOARD_RECYCLING, /* exits on purpose, to be replaced */
} tq_board_phase_t;

/* One child's board, in a MAP_SHARED mapping made before the fork. A
   sequence lock: seq is odd while the child writes, so a reader that
   sees it change reads again. */
typedef struct tq_board_s {
    uint32_t seq; /* bumped twice per write */
    uint32_t phase; /* tq_board_phase_t */
    uint64_t tasks; /* tasks started so far */
    int64_t started_ms; /* CLOCK_MONOTONIC ms, the last task's start */
    uint32_t attempt; /* the last task's attempt */
    uint32_t time_limit_ms; /* its own limit, 0: the default */
    char id[TQ_PROTO_MAX_ID + 1]; /* its id, NUL-terminated */
} tq_board_t;

/* What the supervisor publishes for all its children, in a MAP_SHARED
   mapping made before the first fork: the broker endpoint the host talks
   to, an index into the config's list (PROTOCOL.md 12). One writer, the
   supervisor; a child reads it each time it connects, which it does at
   start and when TQ_SIGNAL_REANNOUNCE tells it to, sent after the index
   was written. */
typedef struct tq_board_host_s {
    uint32_t broker; /* index of the endpoint in use */
} tq_board_host_t;

/* The supervisor publishes the endpoint index all children use. */
void tq_board_host_set_broker(tq_board_host_t *self, uint32_t broker);

/* The endpoint index the supervisor published last. */
uint32_t tq_board_host_broker(const tq_board_host_t *self);

/* Clears a board for a new child (phase STARTING, no task); the
   supervisor calls it before the fork, while nobody writes it. */
void tq_board_reset(tq_board_t *self);

/* The child publishes a phase. For TQ_BOARD_BUSY, id (its bytes, at
   most TQ_PROTO_MAX_ID of them kept), attempt, time_limit_ms and
   started_ms describe the task that starts and tasks is counted up; other
   phases keep the last task's fields. */
void tq_board_publish(tq_board_t *self, tq_board_phase_t phase, tq_str_t id,
                      uint32_t attempt, uint32_t time_limit_ms,
                      int64_t started_ms);

/* Copies a consistent snapshot of self into out. Returns false if none
   could be had (a writer died in mid-write): out is then unchanged. */
bool tq_board_read(const tq_board_t *self, tq_board_t *out);

#endif
