"""tq: a Python client for the tq task queue (TQP/1, proto/PROTOCOL.md).

    import tq
    with tq.Client("tcp://127.0.0.1:5555") as client:
        r = client.apply_async("tq.echo", 1, "two")
        print(r.get(timeout=10))                    # [1, 'two']
        print(client.map("tq.echo", range(3)))      # [[0], [1], [2]]
"""

from ._errors import (
    BrokerFull, BrokerUnreachable, ClientClosed, InvalidState, NoSuchTask,
    ProtocolError, TaskCancelled, TaskError, TaskFailed, TimeLimitExceeded,
    TimeoutError, UnknownTaskId, WorkerLost, CODE_NAMES, STATE_NAMES,
    code_name, strerror)
from ._dataqueue import DataQueue
from .client import AsyncResult, Client, DEFAULT_ENDPOINT

__version__ = "1.0.0"

__all__ = [
    "AsyncResult", "BrokerFull", "BrokerUnreachable", "Client",
    "ClientClosed", "CODE_NAMES", "DataQueue", "DEFAULT_ENDPOINT",
    "InvalidState", "NoSuchTask", "ProtocolError", "STATE_NAMES",
    "TaskCancelled", "TaskError", "TaskFailed", "TimeLimitExceeded",
    "TimeoutError", "UnknownTaskId", "WorkerLost", "code_name", "strerror",
]
