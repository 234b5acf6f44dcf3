/* tq_error.h - the one error enum of tq, task states and tq_strerror(). */
#ifndef TQ_ERROR_H
#define TQ_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

/* Every tq call that can fail returns one of these; 0 is success. */
typedef enum {
    TQ_OK = 0,
    TQ_EINVAL = 1,       /* invalid argument (caller's mistake) */
    TQ_ENOMEM = 2,       /* out of memory */
    TQ_EPROTO = 3,       /* malformed or unexpected protocol message */
    TQ_EVERSION = 4,     /* peer speaks another protocol version */
    TQ_ETIMEDOUT = 5,    /* the wait ended before the task did */
    TQ_ETASK = 6,        /* the task ran and failed; see its error text */
    TQ_EUNKNOWN = 7,     /* the broker never saw this id, or it expired */
    TQ_EUNREACHABLE = 8, /* the broker did not answer in time */
    TQ_ECANCELLED = 9,   /* the task was cancelled */
    TQ_EFULL = 10,       /* a queue or limit is full */
    TQ_EEMPTY = 11,      /* nothing to take */
    TQ_ELOST = 12,       /* the worker running the task died */
    TQ_ETIMELIMIT = 13,  /* the task exceeded its hard time limit */
    TQ_ENOTASK = 14,     /* no such task name in this worker */
    TQ_ECLOSED = 15,     /* the object was closed or terminated */
    TQ_ESTATE = 16,      /* the call is not valid in this state */
    TQ_ESYS = 17,        /* a system call failed; see errno */
    TQ_EBUSY = 18,       /* a resource is in use */
    TQ_ECORRUPT = 19,    /* stored data failed its checksum */
    TQ_EDENIED = 20,     /* not allowed for this key (CURVE tenants) */
    TQ_ESTANDBY = 21,    /* this broker is a standby: ask the next one */
    TQ_ERROR_COUNT_ = 22
} tq_err_t;

/* Returns a static English description of err; never NULL. */
const char *tq_strerror(int err);

/* Returns the code's name ("TQ_EFULL"), "?" if out of range. */
const char *tq_error_name(int err);

/* Task life cycle: (SCHEDULED ->) PENDING -> RUNNING -> SUCCESS | FAILURE |
   CANCELLED, with RETRY back to PENDING. */
typedef enum {
    TQ_STATE_PENDING = 0,
    TQ_STATE_RUNNING = 1,
    TQ_STATE_SUCCESS = 2,
    TQ_STATE_FAILURE = 3,
    TQ_STATE_CANCELLED = 4,
    TQ_STATE_RETRY = 5,
    TQ_STATE_SCHEDULED = 6, /* waiting for its countdown or ETA */
    TQ_STATE_COUNT_ = 7
} tq_state_t;

/* Returns "PENDING", "RUNNING", ... for state; "?" if out of range. */
const char *tq_state_name(int state);

/* True for SUCCESS, FAILURE and CANCELLED. */
#define TQ_STATE_IS_FINAL(s)                                                  \
    ((s) == TQ_STATE_SUCCESS || (s) == TQ_STATE_FAILURE ||                    \
     (s) == TQ_STATE_CANCELLED)

#ifdef __cplusplus
}
#endif
#endif
