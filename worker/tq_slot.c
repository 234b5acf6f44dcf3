/* tq_slot.c - the supervisor's child slot as a state machine: the table of
   legal moves, the one function that moves a slot, and what a child's
   reports and its end mean for it. Pure: no processes, no clock. */
#include "tq_slot.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "tq/tq.h"

#define S_BIT(state) (1u << (state))

/* s_legal[from]: the states a slot may move to from `from`. */
static const unsigned s_legal[TQ_SLOT_STATE_COUNT_] = {
    [TQ_SLOT_EMPTY] = S_BIT(TQ_SLOT_STARTING),
    [TQ_SLOT_STARTING] =
        S_BIT(TQ_SLOT_IDLE) | S_BIT(TQ_SLOT_KILLING) | S_BIT(TQ_SLOT_EMPTY),
    [TQ_SLOT_IDLE] = S_BIT(TQ_SLOT_BUSY) | S_BIT(TQ_SLOT_RECYCLING) |
        S_BIT(TQ_SLOT_KILLING) | S_BIT(TQ_SLOT_EMPTY),
    [TQ_SLOT_BUSY] = S_BIT(TQ_SLOT_IDLE) | S_BIT(TQ_SLOT_BUSY) |
        S_BIT(TQ_SLOT_CANCELLING) | S_BIT(TQ_SLOT_KILLING) |
        S_BIT(TQ_SLOT_RECYCLING) | S_BIT(TQ_SLOT_EMPTY),
    [TQ_SLOT_CANCELLING] = S_BIT(TQ_SLOT_KILLING) | S_BIT(TQ_SLOT_EMPTY),
    [TQ_SLOT_KILLING] = S_BIT(TQ_SLOT_EMPTY),
    [TQ_SLOT_RECYCLING] = S_BIT(TQ_SLOT_KILLING) | S_BIT(TQ_SLOT_EMPTY),
};

static const char *const s_names[TQ_SLOT_STATE_COUNT_] = {
    [TQ_SLOT_EMPTY] = "EMPTY",
    [TQ_SLOT_STARTING] = "STARTING",
    [TQ_SLOT_IDLE] = "IDLE",
    [TQ_SLOT_BUSY] = "BUSY",
    [TQ_SLOT_CANCELLING] = "CANCELLING",
    [TQ_SLOT_KILLING] = "KILLING",
    [TQ_SLOT_RECYCLING] = "RECYCLING",
};

void
tq_slot_init(tq_slot_t *self)
{
    memset(self, 0, sizeof *self);
    self->state = TQ_SLOT_EMPTY;
    self->fd = -1;
    self->backoff_ms = -1;
}

bool
tq_slot_legal(tq_slot_state_t from, tq_slot_state_t to)
{
    if ((unsigned)from >= TQ_SLOT_STATE_COUNT_ ||
        (unsigned)to >= TQ_SLOT_STATE_COUNT_)
        return false;
    return (s_legal[from] & S_BIT(to)) != 0;
}

const char *
tq_slot_state_name(tq_slot_state_t state)
{
    return (unsigned)state < TQ_SLOT_STATE_COUNT_ ? s_names[state] : "?";
}

void
tq_slot_move(tq_slot_t *self, tq_slot_state_t to)
{
    assert(tq_slot_legal(self->state, to));
    if (self->state == TQ_SLOT_BUSY && to != TQ_SLOT_BUSY)
        self->deadline = self->soft_deadline = 0;
    if (self->state == TQ_SLOT_CANCELLING)
        self->kill_at = 0;
    switch (to) {
    case TQ_SLOT_EMPTY:
        self->pid = 0;
        self->why_killed = TQ_SLOT_KILL_NONE;
        break;
    case TQ_SLOT_STARTING:
        self->tasks = 0;
        self->id[0] = '\0';
        self->attempt = 0;
        self->limit_ms = 0;
        self->why_killed = TQ_SLOT_KILL_NONE;
        break;
    case TQ_SLOT_IDLE:
    case TQ_SLOT_RECYCLING:
        self->id[0] = '\0'; /* no task runs: a crash now is no task's */
        break;
    default:
        break;
    }
    self->state = to;
}

bool
tq_slot_live(const tq_slot_t *self)
{
    return self->state != TQ_SLOT_EMPTY;
}

bool
tq_slot_busy(const tq_slot_t *self)
{
    return self->state == TQ_SLOT_BUSY;
}

bool
tq_slot_on_report(tq_slot_t *self, uint32_t kind, const char *id,
                  uint32_t attempt, uint32_t time_limit_ms,
                  uint32_t default_limit_ms, uint32_t soft_ms, int64_t now)
{
    tq_slot_state_t from = self->state;
    bool leaving = from == TQ_SLOT_CANCELLING || from == TQ_SLOT_KILLING ||
        from == TQ_SLOT_RECYCLING;
    switch (kind) {
    case TQ_REPORT_UP:
        if (from == TQ_SLOT_STARTING)
            tq_slot_move(self, TQ_SLOT_IDLE);
        break;
    case TQ_REPORT_START:
        self->tasks++;
        /* the task is recorded even on the way out, so a LOST names it */
        snprintf(self->id, sizeof self->id, "%s", id ? id : "");
        self->attempt = attempt;
        if (leaving)
            break;
        /* a START before UP cannot come (UP is written first); taken as
           both */
        if (from == TQ_SLOT_STARTING)
            tq_slot_move(self, TQ_SLOT_IDLE);
        tq_slot_move(self, TQ_SLOT_BUSY);
        self->limit_ms = time_limit_ms ? time_limit_ms : default_limit_ms;
        self->deadline = self->limit_ms ? now + self->limit_ms : 0;
        /* a soft limit past the hard one would never be seen */
        self->soft_deadline =
            soft_ms && (!self->limit_ms || soft_ms < self->limit_ms)
            ? now + soft_ms
            : 0;
        break;
    case TQ_REPORT_IDLE:
        if (from == TQ_SLOT_BUSY)
            tq_slot_move(self, TQ_SLOT_IDLE);
        break;
    case TQ_REPORT_RECYCLE:
        if (from == TQ_SLOT_BUSY || from == TQ_SLOT_IDLE)
            tq_slot_move(self, TQ_SLOT_RECYCLING);
        break;
    default:
        break;
    }
    return self->state != from;
}

void
tq_slot_cancel(tq_slot_t *self, int64_t kill_at)
{
    tq_slot_move(self, TQ_SLOT_CANCELLING);
    self->why_killed = TQ_SLOT_KILL_CANCEL;
    self->kill_at = kill_at;
}

bool
tq_slot_kill(tq_slot_t *self, tq_slot_kill_t why)
{
    if (self->state == TQ_SLOT_KILLING)
        return false;
    if (self->why_killed == TQ_SLOT_KILL_NONE)
        self->why_killed = why;
    tq_slot_move(self, TQ_SLOT_KILLING);
    return true;
}

bool
tq_slot_exit_clean(const tq_slot_t *self, int wait_status, bool stopping)
{
    if (!WIFEXITED(wait_status) || WEXITSTATUS(wait_status) != 0)
        return false;
    if (self->state == TQ_SLOT_KILLING || self->state == TQ_SLOT_CANCELLING)
        return false;
    return stopping || self->state == TQ_SLOT_RECYCLING;
}

uint32_t
tq_slot_lost_code(const tq_slot_t *self)
{
    if (self->state == TQ_SLOT_CANCELLING ||
        self->why_killed == TQ_SLOT_KILL_CANCEL)
        return TQ_ECANCELLED;
    if (self->why_killed == TQ_SLOT_KILL_TIME_LIMIT)
        return TQ_ETIMELIMIT;
    return TQ_ELOST;
}
