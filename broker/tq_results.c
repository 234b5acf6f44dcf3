/* tq_results.c - the window of delivered results, without a store.

   A broker without a store keeps every final result for the result TTL
   (PROTOCOL.md 5.1, item 5). A result its clients have received already
   is kept only within a window: once its RESULT was handed to libzmq for
   the submitter and for every client waiting on it by GET, a SUCCESS
   joins the window, and the oldest results of the window leave early
   while the window holds more than config.result_window, forgotten as if
   their TTL had ended (tqb_task_forget: a later GET answers UNKNOWN).
   Each counts for TQB_RESULT_COST plus its value's bytes, so many small
   results are bounded as well as a few large ones.

   What is never delivered keeps the TTL: a result whose RESULT was
   dropped (the client fell behind) or whose client was gone, a task
   nobody was told of (no submitter known, no waiter), dead letters and
   cancelled tasks. With a store every result stays for the TTL (the
   store keeps it). The window is a list through window_prev and
   window_next (task_t's final members), oldest first. */
#include <assert.h>

#include "tq_broker_core.h"

static uint64_t
s_cost(const task_t *task)
{
    return TQB_RESULT_COST + task->payload_size;
}

static bool
s_in_window(const tq_broker_t *self, const task_t *task)
{
    return task->state == TASK_SUCCESS &&
        (task->window_prev || self->window.head == task);
}

uint64_t
tqb_results_limit(const tq_broker_t *self)
{
    if (self->store)
        return 0;
    return self->config.result_window ? self->config.result_window
                                      : TQ_BROKER_RESULT_WINDOW;
}

void
tqb_results_leave(tq_broker_t *self, task_t *task)
{
    if (!s_in_window(self, task))
        return;
    tqb_window_t *w = &self->window;
    if (task->window_prev)
        task->window_prev->window_next = task->window_next;
    else
        w->head = task->window_next;
    if (task->window_next)
        task->window_next->window_prev = task->window_prev;
    else
        w->tail = task->window_prev;
    task->window_prev = task->window_next = NULL;
    w->bytes -= s_cost(task);
    w->count--;
}

void
tqb_results_sent(tq_broker_t *self, task_t *task, uint32_t sent,
                 uint32_t failed)
{
    if (task->state != TASK_SUCCESS || !sent || failed)
        return;
    if (self->store) {
        /* the store keeps it for the TTL: its value may leave memory */
        tqb_task_page_out_result(self, task);
        return;
    }
    /* a result still in the expiry list only: one treated specially
       elsewhere (never expiring) is not for the window */
    if (!task->prev && self->expiry.head != task)
        return;
    tqb_window_t *w = &self->window;
    assert(!s_in_window(self, task));
    task->window_next = NULL;
    task->window_prev = w->tail;
    if (w->tail)
        w->tail->window_next = task;
    else
        w->head = task;
    w->tail = task;
    w->bytes += s_cost(task);
    w->count++;
    /* while a batch is open it may hold RESULTs that its send can still
       fail (tqb_batch_flush trims after it) */
    if (!tqb_batch_open(self))
        tqb_results_trim(self);
}

void
tqb_results_trim(tq_broker_t *self)
{
    tqb_window_t *w = &self->window;
    uint64_t limit = tqb_results_limit(self);
    /* the newest stays */
    while (w->bytes > limit && w->head != w->tail) {
        w->expired++;
        tqb_task_forget(self, w->head); /* leaves the window in s_leave */
    }
}
