/* tq_error.c - error and state names. */
#include "tq/tq_error.h"

static const char *const s_errors[TQ_ERROR_COUNT_] = {
    [TQ_OK] = "success",
    [TQ_EINVAL] = "invalid argument",
    [TQ_ENOMEM] = "out of memory",
    [TQ_EPROTO] = "protocol error",
    [TQ_EVERSION] = "unsupported protocol version",
    [TQ_ETIMEDOUT] = "timed out",
    [TQ_ETASK] = "task failed",
    [TQ_EUNKNOWN] = "unknown task id",
    [TQ_EUNREACHABLE] = "broker unreachable",
    [TQ_ECANCELLED] = "task cancelled",
    [TQ_EFULL] = "limit reached (queue, memory or disk)",
    [TQ_EEMPTY] = "queue empty",
    [TQ_ELOST] = "worker lost",
    [TQ_ETIMELIMIT] = "time limit exceeded",
    [TQ_ENOTASK] = "no such task",
    [TQ_ECLOSED] = "closed",
    [TQ_ESTATE] = "not valid in this state",
    [TQ_ESYS] = "system error",
    [TQ_EBUSY] = "busy",
    [TQ_ECORRUPT] = "stored data corrupt (checksum mismatch)",
    [TQ_EDENIED] = "not allowed for this key",
    [TQ_ESTANDBY] = "broker is a standby (another broker is active)",
};

static const char *const s_states[TQ_STATE_COUNT_] = {
    [TQ_STATE_PENDING] = "PENDING",     [TQ_STATE_RUNNING] = "RUNNING",
    [TQ_STATE_SUCCESS] = "SUCCESS",     [TQ_STATE_FAILURE] = "FAILURE",
    [TQ_STATE_CANCELLED] = "CANCELLED", [TQ_STATE_RETRY] = "RETRY",
    [TQ_STATE_SCHEDULED] = "SCHEDULED",
};

const char *
tq_strerror(int err)
{
    if (err < 0 || err >= TQ_ERROR_COUNT_)
        return "unknown error";
    return s_errors[err];
}

static const char *const s_names[TQ_ERROR_COUNT_] = {
    [TQ_OK] = "TQ_OK",
    [TQ_EINVAL] = "TQ_EINVAL",
    [TQ_ENOMEM] = "TQ_ENOMEM",
    [TQ_EPROTO] = "TQ_EPROTO",
    [TQ_EVERSION] = "TQ_EVERSION",
    [TQ_ETIMEDOUT] = "TQ_ETIMEDOUT",
    [TQ_ETASK] = "TQ_ETASK",
    [TQ_EUNKNOWN] = "TQ_EUNKNOWN",
    [TQ_EUNREACHABLE] = "TQ_EUNREACHABLE",
    [TQ_ECANCELLED] = "TQ_ECANCELLED",
    [TQ_EFULL] = "TQ_EFULL",
    [TQ_EEMPTY] = "TQ_EEMPTY",
    [TQ_ELOST] = "TQ_ELOST",
    [TQ_ETIMELIMIT] = "TQ_ETIMELIMIT",
    [TQ_ENOTASK] = "TQ_ENOTASK",
    [TQ_ECLOSED] = "TQ_ECLOSED",
    [TQ_ESTATE] = "TQ_ESTATE",
    [TQ_ESYS] = "TQ_ESYS",
    [TQ_EBUSY] = "TQ_EBUSY",
    [TQ_ECORRUPT] = "TQ_ECORRUPT",
    [TQ_EDENIED] = "TQ_EDENIED",
    [TQ_ESTANDBY] = "TQ_ESTANDBY",
};

const char *
tq_error_name(int err)
{
    if (err < 0 || err >= TQ_ERROR_COUNT_ || !s_names[err])
        return "?";
    return s_names[err];
}

const char *
tq_state_name(int state)
{
    if (state < 0 || state >= TQ_STATE_COUNT_)
        return "?";
    return s_states[state];
}
