/* tq_slot.h - private to tq-worker: one child slot of the supervisor as a
   state machine. A slot is in exactly one state; tq_slot_move is the only
   way to change it and asserts that the move is legal. */
#ifndef TQ_SLOT_H
#define TQ_SLOT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "tq_proto.h"

/* What a slot's child is doing, as far as the supervisor knows.

   EMPTY ──spawn──► STARTING ──UP──► IDLE ◄──IDLE── BUSY ◄──START── IDLE
   BUSY ──KILL from the broker──► CANCELLING (SIGTERM to its group)
   BUSY, CANCELLING ──time limit, grace over──► KILLING (SIGKILL sent)
   BUSY, IDLE ──RECYCLE──► RECYCLING (it exits by itself, to be replaced)
   any live state ──shutdown timeout──► KILLING
   any live state ──reaped──► EMPTY (respawned at respawn_at) */
typedef enum {
    TQ_SLOT_EMPTY, /* no process; respawned at respawn_at */
    TQ_SLOT_STARTING, /* forked, its first READY not sent yet */
    TQ_SLOT_IDLE, /* announced, runs no task */
    TQ_SLOT_BUSY, /* runs task id (per its START report) */
    TQ_SLOT_CANCELLING, /* its task was cancelled: SIGTERM sent, SIGKILL
                           at kill_at */
    TQ_SLOT_KILLING, /* SIGKILL sent (why_killed says why); awaits reaping */
    TQ_SLOT_RECYCLING, /* it said it exits to be replaced */
    TQ_SLOT_STATE_COUNT_
} tq_slot_state_t;

/* Why a slot went to KILLING (or CANCELLING): decides what the broker is
   told when the child is reaped. */
typedef enum {
    TQ_SLOT_KILL_NONE,
    TQ_SLOT_KILL_TIME_LIMIT, /* its task passed its hard time limit */
    TQ_SLOT_KILL_CANCEL, /* its task was cancelled (KILL from the broker) */
    TQ_SLOT_KILL_SHUTDOWN, /* the shutdown timeout or a second signal */
} tq_slot_kill_t;

/* One child slot. Fields after state are meaningful in the states their
   comments name. */
typedef struct {
    tq_slot_state_t state; /* the one state */
    tq_slot_kill_t why_killed; /* CANCELLING, KILLING */
    pid_t pid; /* every state but EMPTY */
    int fd; /* read end of its report pipe, -1 once at EOF */
    int64_t born; /* ms, monotonic, when forked */
    int64_t respawn_at; /* EMPTY: ms, when to fork again */
    int backoff_ms; /* next respawn delay, -1: none yet */
    uint32_t tasks; /* STARTs reported by this child */
    char id[TQ_PROTO_MAX_ID + 1]; /* BUSY and after: its (last) task */
    uint32_t attempt; /* that task's attempt */
    uint32_t limit_ms; /* that task's effective hard limit, 0: none */
    int64_t deadline; /* BUSY: ms, hard limit, 0: none */
    int64_t soft_deadline; /* BUSY: ms, SIGUSR1 then, 0: none or sent */
    int64_t kill_at; /* CANCELLING: ms, SIGKILL then */
} tq_slot_t;

/* What the supervisor learns from a child's board (tq_board.h), as
   events for tq_slot_on_report. */
#define TQ_REPORT_IDLE 0 /* it runs no task any more */
#define TQ_REPORT_START 1 /* a task started */
#define TQ_REPORT_RECYCLE 2 /* it exits on purpose, to be replaced */
#define TQ_REPORT_UP 3 /* its first READY is sent: its start-up worked */

/* Sets up an EMPTY slot that may be spawned at once. */
void tq_slot_init(tq_slot_t *self);

/* True if a slot may move from `from` to `to`. */
bool tq_slot_legal(tq_slot_state_t from, tq_slot_state_t to);

/* Moves self to `to`; asserts that the move is legal. Entering a state
   clears what belongs to the state left (deadlines of BUSY, kill_at of
   CANCELLING; entering EMPTY forgets the pid, STARTING the child's
   history). */
void tq_slot_move(tq_slot_t *self, tq_slot_state_t to);

/* The state's name ("BUSY"), "?" for none. */
const char *tq_slot_state_name(tq_slot_state_t state);

/* True if the slot has a process (any state but EMPTY). */
bool tq_slot_live(const tq_slot_t *self);

/* True if the slot runs a task it may still be stopped for (BUSY). */
bool tq_slot_busy(const tq_slot_t *self);

/* Applies a child's report (TQ_REPORT_*): UP, START, IDLE and RECYCLE
   move it as the diagram says; START also records the task (id, attempt,
   time_limit_ms: 0 means default_limit_ms) and sets its deadlines from
   now (soft_ms: the soft limit, 0: none). In CANCELLING, KILLING and
   RECYCLING a report changes nothing: the child is on its way out.
   Returns true if the state changed. */
bool tq_slot_on_report(tq_slot_t *self, uint32_t kind, const char *id,
                       uint32_t attempt, uint32_t time_limit_ms,
                       uint32_t default_limit_ms, uint32_t soft_ms,
                       int64_t now);

/* BUSY -> CANCELLING: the broker cancelled its task; SIGKILL is due at
   kill_at (ms). Asserts that self is BUSY. */
void tq_slot_cancel(tq_slot_t *self, int64_t kill_at);

/* Moves a live slot to KILLING, keeping the first reason it was stopped
   for (a cancelled task stays cancelled). Returns false if it was
   KILLING already. */
bool tq_slot_kill(tq_slot_t *self, tq_slot_kill_t why);

/* How the reaped child of self ended for the broker: true if it was a
   clean stop (exit status 0 after a stop request or its RECYCLE, neither
   killed nor cancelled): no LOST then. */
bool tq_slot_exit_clean(const tq_slot_t *self, int wait_status, bool stopping);

/* The code of the LOST for self's child: TQ_ECANCELLED, TQ_ETIMELIMIT or
   TQ_ELOST. */
uint32_t tq_slot_lost_code(const tq_slot_t *self);

#endif
