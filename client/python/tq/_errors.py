"""The tq status codes (include/tq/tq_error.h) and the exceptions made of
them: every failure a task or a request can end with is a TaskError that
carries the code, its name and the broker's text."""

import builtins
import multiprocessing

# tq_err_t, in the order of include/tq/tq_error.h
CODE_NAMES = (
    "TQ_OK", "TQ_EINVAL", "TQ_ENOMEM", "TQ_EPROTO", "TQ_EVERSION",
    "TQ_ETIMEDOUT", "TQ_ETASK", "TQ_EUNKNOWN", "TQ_EUNREACHABLE",
    "TQ_ECANCELLED", "TQ_EFULL", "TQ_EEMPTY", "TQ_ELOST", "TQ_ETIMELIMIT",
    "TQ_ENOTASK", "TQ_ECLOSED", "TQ_ESTATE", "TQ_ESYS", "TQ_EBUSY",
    "TQ_ECORRUPT", "TQ_EDENIED", "TQ_ESTANDBY",
)
# tq_strerror(), proto/tq_error.c
DESCRIPTIONS = (
    "success", "invalid argument", "out of memory", "protocol error",
    "unsupported protocol version", "timed out", "task failed",
    "unknown task id", "broker unreachable", "task cancelled",
    "limit reached (queue, memory or disk)", "queue empty", "worker lost",
    "time limit exceeded", "no such task", "closed",
    "not valid in this state", "system error", "busy",
    "stored data corrupt (checksum mismatch)", "not allowed for this key",
    "broker is a standby (another broker is active)",
)
TQ_OK = 0
TQ_EINVAL = 1
TQ_ENOMEM = 2
TQ_EPROTO = 3
TQ_EVERSION = 4
TQ_ETIMEDOUT = 5
TQ_ETASK = 6
TQ_EUNKNOWN = 7
TQ_EUNREACHABLE = 8
TQ_ECANCELLED = 9
TQ_EFULL = 10
TQ_EEMPTY = 11
TQ_ELOST = 12
TQ_ETIMELIMIT = 13
TQ_ENOTASK = 14
TQ_ECLOSED = 15
TQ_ESTATE = 16
TQ_ESYS = 17
TQ_EBUSY = 18
TQ_ECORRUPT = 19
TQ_EDENIED = 20
TQ_ESTANDBY = 21

# task states (PROTOCOL.md section 6)
STATE_NAMES = ("PENDING", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED",
               "RETRY", "SCHEDULED")
PENDING, RUNNING, SUCCESS, FAILURE, CANCELLED, RETRY, SCHEDULED = range(7)
FINAL_STATES = (SUCCESS, FAILURE, CANCELLED)


def code_name(code):
    """"TQ_ETASK" for 6; "TQ_E<code>" for a code outside the table."""
    if isinstance(code, int) and 0 <= code < len(CODE_NAMES):
        return CODE_NAMES[code]
    return "TQ_E%s" % (code,)


def strerror(code):
    if isinstance(code, int) and 0 <= code < len(DESCRIPTIONS):
        return DESCRIPTIONS[code]
    return "unknown error"


class TaskError(Exception):
    """A task or request that ended without a value.

    code: the tq_err_t (int); code_name: "TQ_ETASK" and so on; text: what
    the broker or the task said (may be empty); id: the task id, if any.
    """

    def __init__(self, code, text="", id=None):
        super().__init__(code, text, id)
        self.code = code
        self.code_name = code_name(code)
        self.text = text or ""
        self.id = id

    def __str__(self):
        return "%s: %s" % (self.code_name, self.text or strerror(self.code))


class TaskFailed(TaskError):
    """TQ_ETASK: the task ran and failed; text is its message."""


class TaskCancelled(TaskError):
    """TQ_ECANCELLED: cancelled (or purged) before it finished."""


class WorkerLost(TaskError):
    """TQ_ELOST: the workers running the task died too often."""


class TimeLimitExceeded(TaskError):
    """TQ_ETIMELIMIT: the task ran past its hard time limit."""


class NoSuchTask(TaskError):
    """TQ_ENOTASK: the worker has no task of that name."""


class UnknownTaskId(TaskError):
    """TQ_EUNKNOWN: the broker never saw this id, or its result expired."""


class BrokerUnreachable(TaskError):
    """TQ_EUNREACHABLE: the broker did not answer within the liveness."""


class BrokerFull(TaskError):
    """TQ_EFULL: a queue or a limit of the broker is full."""


class ProtocolError(TaskError):
    """TQ_EPROTO / TQ_EVERSION: a message was refused as malformed."""


class ClientClosed(TaskError):
    """TQ_ECLOSED: the client was closed."""


class InvalidState(TaskError):
    """TQ_ESTATE: the request is not valid in the task's state."""


class TimeoutError(builtins.TimeoutError, multiprocessing.TimeoutError):
    """get(timeout) ended before the task did; the task goes on. Caught by
    `except TimeoutError` and by `except multiprocessing.TimeoutError`."""


_CLASSES = {
    TQ_ETASK: TaskFailed,
    TQ_ECANCELLED: TaskCancelled,
    TQ_ELOST: WorkerLost,
    TQ_ETIMELIMIT: TimeLimitExceeded,
    TQ_ENOTASK: NoSuchTask,
    TQ_EUNKNOWN: UnknownTaskId,
    TQ_EUNREACHABLE: BrokerUnreachable,
    TQ_EFULL: BrokerFull,
    TQ_EPROTO: ProtocolError,
    TQ_EVERSION: ProtocolError,
    TQ_ECLOSED: ClientClosed,
    TQ_ESTATE: InvalidState,
}


def error_for(code, text="", id=None):
    """The TaskError subclass instance for code."""
    return _CLASSES.get(code, TaskError)(code, text, id)
