/* tq_keeper.h - private to tq-worker: a child's keeper, the thread that
   answers the broker while a long task runs. The child's socket belongs
   to one thread at a time; the lending protocol between the main thread
   and the keeper is one state variable (tq_keeper_state_t), moved only by
   a function that asserts the move is legal. */
#ifndef TQ_KEEPER_H
#define TQ_KEEPER_H

#include <stdbool.h>

/* Who holds the socket, and why.

   IDLE ──task_begin──► TIMING ──after_ms, same task──► LENT
   TIMING ──task_end──► IDLE          LENT ──task_end──► RECLAIM
   RECLAIM ──the keeper gives the socket back──► IDLE
   IDLE, TIMING ──destroy──► QUIT */
typedef enum {
    TQ_KEEPER_IDLE, /* no task runs; the main thread holds the socket and
                       the keeper sleeps (waking every after_ms until no
                       task began for a while, then untimed) */
    TQ_KEEPER_TIMING, /* a task runs; the keeper waits to see if it runs
                         long; the main thread holds the socket */
    TQ_KEEPER_LENT, /* the task runs long: the keeper holds the socket */
    TQ_KEEPER_RECLAIM, /* the task ended: the main thread woke the keeper
                          and waits for the socket */
    TQ_KEEPER_QUIT, /* the keeper ends */
    TQ_KEEPER_STATE_COUNT_
} tq_keeper_state_t;

/* Runs on the keeper's thread while it holds the socket: answers the
   broker until wake_fd (an eventfd) is readable, then returns. */
typedef void(tq_keeper_serve_fn)(void *arg, int wake_fd);

typedef struct tq_keeper_t tq_keeper_t;

/* Starts a keeper that takes the socket once a task has run after_ms and
   then calls serve(arg, wake_fd). The thread runs with every signal
   blocked, on a 256 KiB stack. Returns NULL if no thread or eventfd
   could be made (the child then answers the broker between tasks only). */
tq_keeper_t *tq_keeper_new(int after_ms, tq_keeper_serve_fn *serve, void *arg);

/* Stops and joins the keeper (it must not hold the socket: call after
   tq_keeper_task_end); NULL-safe, nulls *self_p. */
void tq_keeper_destroy(tq_keeper_t **self_p);

/* A task starts (IDLE -> TIMING): the keeper may take the socket if it
   runs long (after after_ms to 2 * after_ms: a keeper that is awake
   notices the task at its next look, and is not woken for it). */
void tq_keeper_task_begin(tq_keeper_t *self);

/* The task ended: returns once the socket is the caller's again (TIMING
   or LENT -> ... -> IDLE). A keeper in IDLE stays there. */
void tq_keeper_task_end(tq_keeper_t *self);

/* The current state (a snapshot, for tests and logs). */
tq_keeper_state_t tq_keeper_state(tq_keeper_t *self);

/* Tasks the keeper served the socket for (LENT entered), for tests. */
unsigned long tq_keeper_lends(tq_keeper_t *self);

/* Times tq_keeper_task_begin had to wake the keeper (it slept untimed:
   no task began for a while), for tests. */
unsigned long tq_keeper_signals(tq_keeper_t *self);

/* True if the keeper may move from `from` to `to`. */
bool tq_keeper_legal(tq_keeper_state_t from, tq_keeper_state_t to);

/* The state's name ("LENT"), "?" for none. */
const char *tq_keeper_state_name(tq_keeper_state_t state);

#endif
