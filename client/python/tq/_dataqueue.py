"""Data queues kept by the broker (PROTOCOL.md 5.5): multiprocessing.Queue
across machines. Items are any msgpack value."""

import queue as _queue
import time

from . import _errors as E
from . import _protocol as P
from . import client as _client

# the longest wait one QGET asks the broker for; longer waits are a loop
_MAX_WAIT_MS = 60000
# a blocking put on a full queue tries again after this, doubling up to max
_FULL_RETRY_MIN = 0.002
_FULL_RETRY_MAX = 0.1


def _check_timeout(block, timeout):
    if block and timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class DataQueue:
    """The broker's data queue `name`. maxsize > 0 bounds it (sent with
    every put; the broker keeps the bound). put/get/put_nowait/get_nowait,
    qsize/empty/full as multiprocessing.Queue, raising queue.Full and
    queue.Empty."""

    def __init__(self, client, name, maxsize=0):
        if not P.valid_name(name):
            raise ValueError("queue name %r: 1-255 characters of "
                             "[0-9A-Za-z_.:@/-]" % (name,))
        self._client = client
        self.name = name
        self.maxsize = _client._uint("maxsize", maxsize)

    def __repr__(self):
        return "<tq.DataQueue %s maxsize=%d>" % (self.name, self.maxsize)

    def put(self, obj, block=True, timeout=None):
        """Appends obj; when the queue is full, waits up to timeout seconds
        (None: as long as it takes) for room, then raises queue.Full."""
        _check_timeout(block, timeout)
        item = P.pack(obj)
        deadline = None
        if block and timeout is not None:
            deadline = time.monotonic() + timeout
        delay = _FULL_RETRY_MIN
        while True:
            try:
                self._client._queue_request(
                    _client._QPUT,
                    lambda id: [P.header(P.QPUT, id, self.name,
                                         self.maxsize), item])
                return
            except E.BrokerFull as exc:
                full = exc
            # full: a getter will make room; try again soon
            now = time.monotonic()
            if not block or (deadline is not None and now >= deadline):
                raise _queue.Full(str(full)) from None
            left = delay if deadline is None else min(delay, deadline - now)
            time.sleep(left)
            delay = min(delay * 2, _FULL_RETRY_MAX)

    def put_nowait(self, obj):
        return self.put(obj, False)

    def get(self, block=True, timeout=None):
        """Takes the oldest item; when the queue is empty, waits up to
        timeout seconds (None: as long as it takes), then raises
        queue.Empty."""
        _check_timeout(block, timeout)
        deadline = None
        if block and timeout is not None:
            deadline = time.monotonic() + timeout
        while True:
            if not block:
                wait_ms = 0
            elif deadline is None:
                wait_ms = _MAX_WAIT_MS
            else:
                left = max(0.0, deadline - time.monotonic())
                wait_ms = min(_MAX_WAIT_MS, int(left * 1000))
            try:
                return self._client._queue_request(
                    _client._QGET,
                    lambda id: [P.header(P.QGET, id, self.name, wait_ms)])
            except E.TaskError as exc:
                if exc.code != E.TQ_EEMPTY:
                    raise
                if not block or (deadline is not None and
                                 time.monotonic() >= deadline):
                    raise _queue.Empty(str(exc)) from None
                if wait_ms == 0:
                    time.sleep(0.001)  # less than a ms left: round up

    def get_nowait(self):
        return self.get(False)

    def _sizes(self):
        reply = self._client._queue_request(
            _client._QSIZE, lambda id: [P.header(P.QSIZE, id, self.name)])
        if not isinstance(reply, dict):
            raise E.ProtocolError(E.TQ_EPROTO, "QSIZE answered %r" % (reply,))
        return reply.get("size", 0), reply.get("maxsize", 0)

    def qsize(self):
        return self._sizes()[0]

    def empty(self):
        return self.qsize() == 0

    def full(self):
        size, maxsize = self._sizes()
        maxsize = maxsize or self.maxsize
        return maxsize > 0 and size >= maxsize
