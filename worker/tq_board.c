/* tq_board.c - a child's board: a sequence lock over a small record in
   shared memory, one writer (the child), one reader (its supervisor); and
   the host's board, the broker the supervisor chose for every child. */
#include "tq_board.h"

#include <string.h>

/* Readers retry this often at most: a child killed in mid-write leaves
   seq odd for good. */
#define S_READ_TRIES 1000

void
tq_board_reset(tq_board_t *self)
{
    memset(self, 0, sizeof *self);
    self->phase = TQ_BOARD_STARTING;
}

void
tq_board_publish(tq_board_t *self, tq_board_phase_t phase, tq_str_t id,
                 uint32_t attempt, uint32_t time_limit_ms, int64_t started_ms)
{
    uint32_t seq = __atomic_load_n(&self->seq, __ATOMIC_RELAXED);
    __atomic_store_n(&self->seq, seq + 1, __ATOMIC_RELAXED);
    /* the odd seq is visible before any field changes */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&self->phase, (uint32_t)phase, __ATOMIC_RELAXED);
    if (phase == TQ_BOARD_BUSY) {
        __atomic_store_n(&self->tasks, self->tasks + 1, __ATOMIC_RELAXED);
        __atomic_store_n(&self->started_ms, started_ms, __ATOMIC_RELAXED);
        __atomic_store_n(&self->attempt, attempt, __ATOMIC_RELAXED);
        __atomic_store_n(&self->time_limit_ms, time_limit_ms, __ATOMIC_RELAXED);
        /* a copy, not a store per byte: between the two seq writes a
           reader that overlaps it sees seq change and reads again, so
           the bytes need no atomicity of their own */
        size_t len = id.len < TQ_PROTO_MAX_ID ? id.len : TQ_PROTO_MAX_ID;
        if (len)
            memcpy(self->id, id.ptr, len);
        self->id[len] = '\0';
    }
    /* every field is visible before the even seq */
    __atomic_store_n(&self->seq, seq + 2, __ATOMIC_RELEASE);
}

bool
tq_board_read(const tq_board_t *self, tq_board_t *out)
{
    for (int tries = 0; tries < S_READ_TRIES; tries++) {
        uint32_t before = __atomic_load_n(&self->seq, __ATOMIC_ACQUIRE);
        if (before & 1)
            continue;
        tq_board_t copy;
        copy.seq = before;
        copy.phase = __atomic_load_n(&self->phase, __ATOMIC_RELAXED);
        copy.tasks = __atomic_load_n(&self->tasks, __ATOMIC_RELAXED);
        copy.started_ms = __atomic_load_n(&self->started_ms, __ATOMIC_RELAXED);
        copy.attempt = __atomic_load_n(&self->attempt, __ATOMIC_RELAXED);
        copy.time_limit_ms =
            __atomic_load_n(&self->time_limit_ms, __ATOMIC_RELAXED);
        for (size_t i = 0; i < sizeof copy.id; i++)
            copy.id[i] = __atomic_load_n(&self->id[i], __ATOMIC_RELAXED);
        /* the fields are read before seq is looked at again */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&self->seq, __ATOMIC_RELAXED) != before)
            continue;
        copy.id[TQ_PROTO_MAX_ID] = '\0';
        *out = copy;
        return true;
    }
    return false;
}

void
tq_board_host_set_broker(tq_board_host_t *self, uint32_t broker)
{
    /* released before the signal that makes children read it */
    __atomic_store_n(&self->broker, broker, __ATOMIC_RELEASE);
}

uint32_t
tq_board_host_broker(const tq_board_host_t *self)
{
    return __atomic_load_n(&self->broker, __ATOMIC_ACQUIRE);
}
