"""The tq client: Client (a connection to a broker) and AsyncResult (one
task's outcome), as multiprocessing.Pool and its AsyncResult.

Threads: one I/O thread owns the DEALER socket (and its monitor). Callers
build each request's frames, append the request to an inbox under a lock
and wake the I/O thread through a pipe; the I/O thread alone sends,
receives and keeps the table of requests waiting for an answer. Results
with a callback go to a result thread that runs the callback and only then
marks the result ready, as Pool's result handler does; the others are ready
as soon as the I/O thread has them.
"""

import collections
import itertools
import logging
import os
import queue as _queue
import secrets
import threading
import time

import zmq

from . import _curve
from . import _errors as E
from . import _protocol as P

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_QUEUE = "default"
DEFAULT_LIVENESS_MS = 3000  # PROTOCOL.md section 10
DEFAULT_BACKOFF_MS = 1000   # what a zero retry_backoff_ms means
_RECV_BATCH = 1024          # messages drained per poll pass
_SEND_BATCH = 1024          # messages sent per poll pass
_SEND_HWM = 10000
_MAX_MESSAGE = 64 << 20     # ZMQ_MAXMSGSIZE, as the C client

# what a request asks the broker
_SUBMIT, _GET, _STATUS, _CANCEL, _QPUT, _QGET, _QSIZE = range(7)

log = logging.getLogger("tq")

# the result whose callback this thread is running: waiting on it from
# inside its own callback must not wait for the end of that callback
_tls = threading.local()


def _now_ms():
    return time.monotonic_ns() // 1000000


def _uint(name, value, low=0, high=P.MAX_UINT32):
    if (not isinstance(value, int) or isinstance(value, bool) or
            not low <= value <= high):
        raise ValueError("%s must be an integer in %d..%d, not %r"
                         % (name, low, high, value))
    return value


class AsyncResult:
    """The outcome of one task (or request), filled in by the client.

    id: the task id; get(timeout), wait(timeout), ready(), successful() as
    in multiprocessing; state: "PENDING", "RUNNING", ... as last reported;
    attempts: how many times the broker ran it (once final).
    """

    def __init__(self, client, kind, id, message, callback=None,
                 error_callback=None, wait=True):
        self.id = id
        self._client = client
        self._kind = kind
        self._message = message  # frames to send; dropped once final
        self._callback = callback
        self._error_callback = error_callback
        self._wait = wait        # GET: wait for the result
        self._event = threading.Event()
        self._notify = None      # a queue told when ready (imap_unordered)
        self._final = False
        self._state = E.PENDING
        self._code = None
        self._error = ""
        self._value = None
        self.attempts = 0
        # the I/O thread's only
        self._acked = False
        self._queued = False     # on the outbound list

    def __repr__(self):
        return "<tq.AsyncResult %s %s>" % (self.id, self.state)

    @property
    def state(self):
        return E.STATE_NAMES[self._state] if 0 <= self._state < len(
            E.STATE_NAMES) else "?"

    def ready(self):
        return self._event.is_set() or (
            getattr(_tls, "current", None) is self and self._final)

    def wait(self, timeout=None):
        """Waits until ready or timeout seconds; returns ready()."""
        if getattr(_tls, "current", None) is self:
            return True
        if timeout is not None and timeout < 0:
            timeout = 0
        return self._event.wait(timeout)

    def successful(self):
        if not self.ready():
            raise ValueError("%r not ready" % self)
        return self._code == E.TQ_OK

    def get(self, timeout=None):
        """The task's value; raises tq.TimeoutError when timeout seconds
        pass first (the task goes on), or the task's TaskError."""
        if not self.wait(timeout):
            raise E.TimeoutError("task %s not ready after %s s"
                                 % (self.id, timeout))
        if self._code == E.TQ_OK:
            return self._value
        raise self.exception()

    def exception(self):
        """The TaskError of a failed result; None if it succeeded or is not
        final."""
        if not self._final or self._code == E.TQ_OK:
            return None
        return E.error_for(self._code, self._error, self.id)

    def cancel(self):
        """Asks the broker to cancel the task; it ends CANCELLED
        (TaskCancelled) unless it ended before. Does not wait."""
        if self._final or self._kind not in (_SUBMIT, _GET):
            return
        self._client._push(AsyncResult(
            self._client, _CANCEL, self.id, [P.header(P.CANCEL, self.id)]))

    # the client's side

    def _set_ready(self):
        self._event.set()
        notify = self._notify
        if notify is not None:
            notify.put(self)


class Client:
    """A connection to a tq broker.

    endpoint: the broker's client endpoint (default $TQ_BROKER or
    tcp://127.0.0.1:5555), or several brokers as a comma-separated list
    (one active, the others standby, PROTOCOL.md section 12): the client
    talks to one at a time and moves to the next when it answers
    TQ_ESTANDBY or stays silent for the liveness. CURVE: curve_server_key (the broker's public key,
    Z85 or its certificate file) with curve_cert (our certificate from `tq
    keygen`) or curve_public_key and curve_secret_key (Z85); without any,
    $TQ_CURVE_SERVER_KEY and $TQ_CURVE_CERT as the C client. liveness_ms:
    how long a silent broker fails unanswered requests (BrokerUnreachable).
    """

    def __init__(self, endpoint=None, *, curve_server_key=None,
                 curve_public_key=None, curve_secret_key=None,
                 curve_cert=None, liveness_ms=DEFAULT_LIVENESS_MS,
                 context=None):
        self.endpoint = (endpoint or os.environ.get("TQ_BROKER") or
                         DEFAULT_ENDPOINT)
        self.endpoints = [e.strip() for e in self.endpoint.split(",")]
        if not all(self.endpoints):
            raise ValueError("an empty endpoint in the list %r"
                             % self.endpoint)
        self._liveness_ms = _uint("liveness_ms", liveness_ms, 3)
        self._curve = _curve.client_keys(curve_server_key, curve_public_key,
                                         curve_secret_key, curve_cert)
        self._context = context or zmq.Context.instance()
        self._id_prefix = secrets.randbits(64)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._inbox = collections.deque()
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._callbacks = None       # queue of the result thread
        self._callback_thread = None
        self._io = _IO(self)
        self._started = threading.Event()
        self._start_error = None
        self._thread = threading.Thread(target=self._io.run,
                                        name="tq-client-io", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise self._start_error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<tq.Client %s%s>" % (self.endpoint,
                                     " closed" if self._closed else "")

    # ---- tasks ---------------------------------------------------------

    def _new_id(self, prefix=""):
        return "%s%016x%016x" % (prefix, self._id_prefix, next(self._ids))

    def _submission(self, task, args, queue=DEFAULT_QUEUE, priority=0,
                    time_limit_ms=0, retries=0, retry_backoff_ms=0,
                    countdown_ms=0, id=None, callback=None,
                    error_callback=None):
        if not P.valid_name(task):
            raise ValueError("task name %r: 1-255 characters of "
                             "[0-9A-Za-z_.:@/-]" % (task,))
        if not P.valid_name(queue):
            raise ValueError("queue name %r: 1-255 characters of "
                             "[0-9A-Za-z_.:@/-]" % (queue,))
        if id is None:
            id = self._new_id()
        elif not P.valid_id(id):
            raise ValueError("task id %r: 1-64 characters of "
                             "[0-9A-Za-z_.-]" % (id,))
        _uint("priority", priority, 0, P.MAX_PRIORITY)
        _uint("time_limit_ms", time_limit_ms)
        _uint("retries", retries, 0, P.MAX_RETRIES)
        _uint("retry_backoff_ms", retry_backoff_ms)
        _uint("countdown_ms", countdown_ms)
        for name, fn in (("callback", callback),
                         ("error_callback", error_callback)):
            if fn is not None and not callable(fn):
                raise TypeError("%s is not callable" % name)
        payload = P.pack(list(args))
        head = P.header(P.SUBMIT, id, task, queue, priority, time_limit_ms,
                        retries, retry_backoff_ms or DEFAULT_BACKOFF_MS,
                        countdown_ms)
        return AsyncResult(self, _SUBMIT, id, [head, payload], callback,
                           error_callback)

    def apply_async(self, task, *args, **options):
        """Submits task(*args); returns its AsyncResult at once.

        options: queue, priority (0-9, higher first), time_limit_ms,
        retries, retry_backoff_ms, countdown_ms, id, callback(value),
        error_callback(exception) (both run on the client's result thread
        before the result turns ready).
        """
        r = self._submission(task, args, **options)
        self._push(r)
        return r

    def apply(self, task, *args, **options):
        """Runs task(*args) and returns its value (raises its error)."""
        return self.apply_async(task, *args, **options).get()

    def _submit_all(self, task, iterable, star, options):
        results = [self._submission(task, tuple(a) if star else (a,),
                                    **options) for a in iterable]
        self._push_many(results)
        return results

    def map(self, task, iterable, timeout=None, **options):
        """[task(item) for item in iterable], run in parallel, in order.
        The first failure in that order is raised."""
        return self._collect(self._submit_all(task, iterable, False, options),
                             timeout)

    def starmap(self, task, iterable, timeout=None, **options):
        """[task(*args) for args in iterable], in order."""
        return self._collect(self._submit_all(task, iterable, True, options),
                             timeout)

    @staticmethod
    def _collect(results, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for r in results:
            left = None if deadline is None else deadline - time.monotonic()
            values.append(r.get(left))
        return values

    def imap(self, task, iterable, **options):
        """An iterator of task(item) in the iterable's order; all submitted
        now."""
        results = self._submit_all(task, iterable, False, options)
        return (r.get() for r in results)

    def imap_unordered(self, task, iterable, **options):
        """An iterator of task(item) in the order they finish; all
        submitted now. A failure is raised when its turn comes. Its
        `results` are the AsyncResults in submission order."""
        done = _queue.SimpleQueue()
        results = [self._submission(task, (a,), **options) for a in iterable]
        for r in results:
            r._notify = done
        self._push_many(results)
        return _Unordered(results, done)

    def fetch(self, id, callback=None, error_callback=None):
        """An AsyncResult for a task submitted by anyone (tq submit, another
        client), by id: the broker answers when the task is final."""
        if not P.valid_id(id):
            raise ValueError("task id %r: 1-64 characters of [0-9A-Za-z_.-]"
                             % (id,))
        r = AsyncResult(self, _GET, id, [P.header(P.GET, id, True)],
                        callback, error_callback)
        self._push(r)
        return r

    def state(self, id, timeout=None):
        """The task's state now: "PENDING", "RUNNING", "RETRY", or a final
        one. Raises UnknownTaskId for an id the broker does not know."""
        if not P.valid_id(id):
            raise ValueError("task id %r: 1-64 characters of [0-9A-Za-z_.-]"
                             % (id,))
        r = AsyncResult(self, _GET, id, [P.header(P.GET, id, False)],
                        wait=False)
        self._push(r)
        r.get(timeout)
        return r.state

    def cancel(self, id, timeout=None):
        """Cancels a task by id and waits for the answer: True if it ended
        CANCELLED (now or before), False if it had already ended otherwise.
        Raises UnknownTaskId for an id the broker does not know."""
        if not P.valid_id(id):
            raise ValueError("task id %r: 1-64 characters of [0-9A-Za-z_.-]"
                             % (id,))
        r = AsyncResult(self, _CANCEL, id, [P.header(P.CANCEL, id)])
        self._push(r)
        try:
            r.get(timeout)
        except E.TaskError as exc:
            if exc.code in (E.TQ_EUNKNOWN, E.TQ_EUNREACHABLE, E.TQ_ECLOSED):
                raise
        return r._state == E.CANCELLED

    def status(self, timeout=None):
        """The broker's STATUS map (PROTOCOL.md section 8), decoded."""
        # with an id of its own, which the broker echoes: answers are
        # matched by it, never by order (PROTOCOL.md section 10); a broker
        # of an earlier revision ignores it and answers in order
        id = self._new_id("o")
        r = AsyncResult(self, _STATUS, id, [P.header(P.STATUS, id)])
        self._push(r)
        return r.get(timeout)

    def queue(self, name, maxsize=0):
        """The broker's data queue `name`, as a multiprocessing.Queue."""
        from ._dataqueue import DataQueue
        return DataQueue(self, name, maxsize)

    def _queue_request(self, kind, message_fn, timeout=None):
        id = self._new_id("q")
        r = AsyncResult(self, kind, id, message_fn(id))
        self._push(r)
        return r.get(timeout)

    # ---- lifecycle -----------------------------------------------------

    def close(self):
        """Stops the client: waiting results end with ClientClosed, later
        calls raise it. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._inbox.append(None)  # the I/O thread's stop signal
        self._wake()
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._callbacks is not None:
            self._callbacks.put(None)
            if threading.current_thread() is not self._callback_thread:
                self._callback_thread.join()

    @property
    def closed(self):
        return self._closed

    def _wake(self):
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _push(self, r):
        self._push_many((r,))

    def _push_many(self, results):
        if not results:
            return
        with self._lock:
            if self._closed:
                raise E.ClientClosed(E.TQ_ECLOSED, "the client was closed")
            was_empty = not self._inbox
            self._inbox.extend(results)
        if was_empty:
            self._wake()

    def _run_callbacks(self):
        while True:
            r = self._callbacks.get()
            if r is None:
                return
            _tls.current = r
            try:
                if r._code == E.TQ_OK:
                    r._callback(r._value)
                else:
                    r._error_callback(r.exception())
            except Exception:
                log.exception("tq: callback of task %s raised", r.id)
            finally:
                _tls.current = None
                r._set_ready()

    def _deliver(self, r):
        """The I/O thread hands over a final result."""
        fn = r._callback if r._code == E.TQ_OK else r._error_callback
        if fn is None:
            r._set_ready()
            return
        if self._callbacks is None:
            self._callbacks = _queue.SimpleQueue()
            self._callback_thread = threading.Thread(
                target=self._run_callbacks, name="tq-client-results",
                daemon=True)
            self._callback_thread.start()
        self._callbacks.put(r)


class _Unordered:
    """imap_unordered's iterator: values as their results turn ready."""

    def __init__(self, results, done):
        self.results = results
        self._done = done
        self._left = len(results)

    def __iter__(self):
        return self

    def __next__(self):
        if self._left == 0:
            raise StopIteration
        self._left -= 1
        return self._done.get().get()


class _IO:
    """The I/O thread's state and loop (PROTOCOL.md sections 5 and 10)."""

    def __init__(self, client):
        self.client = client
        self.sock = None
        self.monitor = None
        self.pending = {}                 # id -> [AsyncResult]
        self.fifo = collections.deque()   # STATUS requests, in send order
        self.out = collections.deque()    # not yet accepted by libzmq
        self.regets = collections.deque()  # ids to ask GET wait=true for
        self.waiting = 0                  # requests in pending + fifo
        self.unacked = 0                  # ... without an answer
        self.waiting_since = self.unacked_since = 0
        self.last_heard = self.last_ping = _now_ms()
        self.broker_lost = False
        self.connected_once = False
        self.malformed = 0
        self.poller = None
        self.current = 0          # index in client.endpoints
        self.moves = 0            # moves to the next broker
        self.standby = False      # the current broker said TQ_ESTANDBY
        self.endpoint_since = 0   # when the socket went to this broker
        self.standby_moves = 0    # moves on TQ_ESTANDBY since an answer
        self.round_at = 0         # when the last round of those began

    # ---- the socket ----------------------------------------------------

    def _open(self):
        c = self.client
        sock = c._context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.SNDHWM, _SEND_HWM)
            sock.setsockopt(zmq.RCVHWM, 0)
            max_message = _MAX_MESSAGE
            try:
                max_message = int(os.environ.get("TQ_MAX_MESSAGE", ""))
            except ValueError:
                pass
            sock.setsockopt(zmq.MAXMSGSIZE, max_message)
            if c._curve:
                server, public, secret = c._curve
                sock.curve_serverkey = server.encode("ascii")
                sock.curve_publickey = public.encode("ascii")
                sock.curve_secretkey = secret.encode("ascii")
            # a broker restarted faster than the liveness is only seen as a
            # new connection
            try:
                self.monitor = sock.get_monitor_socket(
                    zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            except zmq.ZMQError as exc:
                log.warning("tq client: no socket monitor: %s", exc)
            endpoint = c.endpoints[self.current]
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:
                raise ValueError("cannot connect to %s: %s"
                                 % (endpoint, exc)) from None
        except BaseException:
            self._close(sock)
            raise
        self.sock = sock

    def _close(self, sock):
        if self.monitor is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(0)
            self.monitor = None
        sock.close(0)

    def run(self):
        c = self.client
        try:
            self._open()
        except BaseException as exc:
            c._start_error = exc
            c._started.set()
            return
        c._started.set()
        poller = self.poller = zmq.Poller()
        poller.register(c._wake_r, zmq.POLLIN)
        if self.monitor is not None:
            poller.register(self.monitor, zmq.POLLIN)
        running = True
        try:
            while running:
                timeout = self._liveness()
                wait = self._leave_standby(_now_ms())
                if wait is not None and (timeout is None or wait < timeout):
                    timeout = wait
                poller.register(self.sock, zmq.POLLIN | (
                    zmq.POLLOUT if self.out or self.regets else 0))
                events = dict(poller.poll(timeout))
                if c._wake_r in events:
                    running = self._take_inbox()
                if self.monitor is not None and self.monitor in events:
                    self._on_monitor()
                if events.get(self.sock, 0) & zmq.POLLIN:
                    self._recv()
                self._flush()
        except Exception:
            log.exception("tq client: I/O thread failed")
        finally:
            self._shutdown()

    # ---- several brokers (PROTOCOL.md section 12) ----------------------

    @property
    def endpoint(self):
        """The broker the socket talks to now."""
        return self.client.endpoints[self.current]

    def _move(self, why):
        """Moves to the next broker of the list (the same one again when
        there is one) on a new socket, and asks again for everything we
        wait on, as after a reconnect."""
        old = self.endpoint
        self.poller.unregister(self.sock)
        if self.monitor is not None:
            self.poller.unregister(self.monitor)
        self._close(self.sock)
        self.sock = None
        self.current = (self.current + 1) % len(self.client.endpoints)
        self._open()
        if self.monitor is not None:
            self.poller.register(self.monitor, zmq.POLLIN)
        self.moves += 1
        log.info("tq client: broker at %s %s: moving to %s", old, why,
                 self.endpoint)
        self.connected_once = False
        self.standby = False
        self.broker_lost = False
        self.endpoint_since = _now_ms()
        self.regets.clear()
        self._reattach(True)

    def _leave_standby(self, now):
        """Moves on from a standby at once, except after a whole round of
        the list answered TQ_ESTANDBY: then once per third of the
        liveness. Returns the ms until the next move, or None."""
        if not self.standby:
            return None
        n = len(self.client.endpoints)
        pause = self.client._liveness_ms // 3
        if self.standby_moves % n == 0:
            if self.standby_moves and now < self.round_at + pause:
                return self.round_at + pause - now
            self.round_at = now
        self.standby_moves += 1
        self._move("is a standby (TQ_ESTANDBY)")
        return None

    def _shutdown(self):
        c = self.client
        with c._lock:
            c._closed = True
            rest = list(c._inbox)
            c._inbox.clear()
        for r in rest:
            if r is not None:
                self._finish(r, E.FAILURE, E.TQ_ECLOSED,
                             "the client was closed")
        self._fail_all(False, E.TQ_ECLOSED, "the client was closed")
        self.out.clear()
        self._close(self.sock)

    def _take_inbox(self):
        c = self.client
        try:
            while os.read(c._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with c._lock:
            taken = list(c._inbox)
            c._inbox.clear()
        running = True
        for r in taken:
            if r is None:
                running = False
            else:
                self._accept(r)
        return running

    # ---- the table of waiting requests ---------------------------------

    def _accept(self, r):
        if r._kind == _STATUS:
            self.fifo.append(r)
        else:
            self.pending.setdefault(r.id, []).append(r)
        now = _now_ms()
        if self.waiting == 0:
            self.waiting_since = now
        self.waiting += 1
        if self.unacked == 0:
            self.unacked_since = now
        self.unacked += 1
        self._enqueue(r)

    def _enqueue(self, r):
        if not r._queued:
            r._queued = True
            self.out.append(r)

    def _ack(self, r):
        if not r._acked:
            r._acked = True
            self.unacked -= 1

    def _release(self, r):
        self._ack(r)
        self.waiting -= 1

    def _finish(self, r, state, code, error, value=None):
        if r._final:
            return
        r._state = state
        r._code = code
        r._error = error or ""
        r._value = value
        r._message = None
        r._final = True
        self.client._deliver(r)

    def _finish_chain(self, chain, state, code, error, value=None,
                      attempts=None):
        for r in chain:
            if attempts is not None:
                r.attempts = attempts
            self._finish(r, state, code, error, value)
            self._release(r)

    def _fail_all(self, only_unacked, code, text):
        for id in list(self.pending):
            keep = []
            for r in self.pending[id]:
                if only_unacked and r._acked:
                    keep.append(r)
                else:
                    self._finish(r, E.FAILURE, code, text)
                    self._release(r)
            if keep:
                self.pending[id] = keep
            else:
                del self.pending[id]
        while self.fifo:
            r = self.fifo.popleft()
            self._finish(r, E.FAILURE, code, text)
            self._release(r)

    def _reattach(self, reconnected):
        """The broker answers again after a silence, or we reconnected: a
        restarted broker never heard our GETs, so ask again for every task
        we wait on. After a reconnection the unanswered requests may be
        lost too: send them again (a SUBMIT of a known id is answered
        SUBMITTED and changes nothing, PROTOCOL.md 5.1), except a QPUT,
        which may have been kept: it fails. The GETs go out after the
        SUBMITs (_flush sends the outbound list first)."""
        count = 0
        for id, chain in list(self.pending.items()):
            reget = False
            for r in chain:
                if r._final:
                    continue
                if r._kind == _SUBMIT and r._acked:
                    reget = True
                elif r._kind == _GET and r._wait:
                    reget = True
                elif reconnected and not r._acked and r._kind == _QPUT:
                    continue
                elif reconnected and not r._acked:
                    self._enqueue(r)
                    # a SUBMIT the new broker knows (recovered from its
                    # store) is only acknowledged: the GET that follows
                    # makes us a waiter for its result
                    reget = reget or r._kind == _SUBMIT
            if reget:
                self.regets.append(id)
                count += 1
        if reconnected:
            for id, chain in list(self.pending.items()):
                lost = [r for r in chain if r._kind == _QPUT and not r._acked]
                if lost:
                    rest = [r for r in chain if r not in lost]
                    if rest:
                        self.pending[id] = rest
                    else:
                        del self.pending[id]
                    self._finish_chain(
                        lost, E.FAILURE, E.TQ_EUNREACHABLE,
                        "the connection to the broker at %s was lost before "
                        "it answered: the item may or may not have been put"
                        % self.client.endpoint)
            for r in self.fifo:
                self._enqueue(r)
        log.info("tq client: broker at %s answers again, asking again for "
                 "%d result(s)", self.endpoint, count)

    # ---- sending -------------------------------------------------------

    def _send(self, frames):
        # copied: zero-copy costs more than it saves on small frames
        self.sock.send_multipart(frames, zmq.DONTWAIT)

    def _flush(self):
        """Sends a batch of what libzmq takes now; the rest waits for the
        next pass (POLLOUT), so that answers are read in between."""
        if self.standby:
            return  # it would answer TQ_ESTANDBY: wait for the move
        budget = _SEND_BATCH
        while self.out and budget > 0:
            budget -= 1
            r = self.out[0]
            if not r._final:
                try:
                    self._send(r._message)
                except zmq.Again:
                    return
                except zmq.ZMQError as exc:
                    self._unlink(r)
                    self._finish(r, E.FAILURE, E.TQ_ECLOSED,
                                 "cannot send the request to the broker: %s"
                                 % exc)
                    self._release(r)
            self.out.popleft()
            r._queued = False
        while self.regets and not self.out and budget > 0:
            budget -= 1
            try:
                self._send([P.header(P.GET, self.regets[0], True)])
            except zmq.Again:
                return
            self.regets.popleft()

    def _unlink(self, r):
        if r._kind == _STATUS:
            try:
                self.fifo.remove(r)
            except ValueError:
                pass
            return
        chain = self.pending.get(r.id)
        if chain and r in chain:
            chain.remove(r)
            if not chain:
                del self.pending[r.id]

    def _send_simple(self, command):
        try:
            self._send([P.header(command)])
        except zmq.ZMQError:
            pass  # best effort: the liveness check covers a lost one

    # ---- receiving -----------------------------------------------------

    def _recv(self):
        for _ in range(_RECV_BATCH):
            try:
                frames = self.sock.recv_multipart(zmq.DONTWAIT)
            except zmq.Again:
                return
            bad = None
            try:
                command, fields, payload = P.decode(frames)
            except Exception as exc:
                bad = exc
            if (bad is None and command == P.ERROR and fields and
                    fields[0] == E.TQ_ESTANDBY):
                # a standby is no broker that answers: move on
                self.standby = True
                continue
            # any other message, even a bad one, shows the broker is alive
            self.last_heard = _now_ms()
            self.standby_moves = 0
            if self.broker_lost:
                self.broker_lost = False
                self._reattach(False)
            try:
                if bad is not None:
                    raise bad
                self._dispatch(command, fields, payload)
            except Exception as exc:  # a bad message, never a dead thread
                self.malformed += 1
                log.warning("tq client: dropped a message from the broker "
                            "at %s: %s", self.endpoint, exc)

    @staticmethod
    def _id(fields, i, optional=False):
        value = fields[i] if i < len(fields) else None
        if value is None and optional:
            return None
        if not P.valid_id(value):
            raise ValueError("bad id field %r" % (value,))
        return value

    @staticmethod
    def _int(fields, i, default=None):
        if i >= len(fields) and default is not None:
            return default
        value = fields[i]
        if not isinstance(value, int) or isinstance(value, bool) or \
                value < 0:
            raise ValueError("bad integer field %r" % (value,))
        return value

    @staticmethod
    def _text(fields, i):
        value = fields[i]
        if value is not None and not isinstance(value, str):
            raise ValueError("bad error field %r" % (value,))
        return value or ""

    def _dispatch(self, command, fields, payload):
        if command == P.SUBMITTED:
            for r in self.pending.get(self._id(fields, 0), ()):
                if r._kind == _SUBMIT:
                    self._ack(r)
        elif command == P.RESULT:
            self._on_result(fields, payload)
        elif command == P.STATE:
            self._on_state(self._id(fields, 0), self._int(fields, 1))
        elif command == P.UNKNOWN:
            chain = self.pending.pop(self._id(fields, 0), None)
            if chain:
                self._finish_chain(chain, E.FAILURE, E.TQ_EUNKNOWN,
                                   "the broker does not know this task id")
        elif command in (P.REPLY, P.QITEM):
            id = self._id(fields, 0, optional=True)
            if id is None and command == P.QITEM:
                raise ValueError("QITEM without a request id")
            value = P.unpack(payload)
            if id is None:
                self._on_fifo_reply(value)
            else:
                chain = self.pending.pop(id, None)
                if chain:
                    self._finish_chain(chain, E.SUCCESS, E.TQ_OK, "", value)
        elif command == P.STATUS_REPLY:
            self._on_fifo_reply(P.unpack(payload),
                                self._id(fields, 0, optional=True))
        elif command == P.PING:
            self._send_simple(P.PONG)
        elif command == P.PONG:
            pass
        elif command == P.ERROR:
            self._on_error(self._int(fields, 0), self._text(fields, 1),
                           self._id(fields, 2, optional=True))
        else:
            raise ValueError("command 0x%02x is not broker-to-client"
                             % command)

    def _on_result(self, fields, payload):
        id = self._id(fields, 0)
        state = self._int(fields, 1)
        code = self._int(fields, 2)
        error = self._text(fields, 3)
        attempts = self._int(fields, 4, 0)
        value = None
        if state == E.SUCCESS:
            try:
                value = P.unpack(payload)
            except Exception:
                state, code = E.FAILURE, E.TQ_EPROTO
                error = "broker sent a malformed result value"
        chain = self.pending.pop(id, None)
        if not chain:
            return  # nobody waits any more (failed as unreachable, say)
        if state == E.SUCCESS:
            code = E.TQ_OK
        elif code == E.TQ_OK:
            # a non-success without a reason must not read as success
            code = E.TQ_ECANCELLED if state == E.CANCELLED else E.TQ_ETASK
        if state not in E.FINAL_STATES:
            state = E.FAILURE
        self._finish_chain(chain, state, code, error, value, attempts)

    def _on_state(self, id, state):
        chain = self.pending.get(id)
        if not chain:
            return
        keep = []
        for r in chain:
            if not r._final:
                r._state = state
            if r._kind == _GET and not r._wait:
                # a GET without wait is answered: nothing more comes
                self._finish(r, state, E.TQ_OK, "")
                self._release(r)
            else:
                keep.append(r)
        if keep:
            self.pending[id] = keep
        else:
            del self.pending[id]

    def _fifo_take(self, id):
        """The STATUS request an answer is for: the one of its id, or the
        oldest for an answer without one (an earlier broker); None if
        nobody waits for it any more."""
        if id is None:
            return self.fifo.popleft() if self.fifo else None
        for r in self.fifo:
            if r.id == id:
                self.fifo.remove(r)
                return r
        return None

    def _on_fifo_reply(self, value, id=None):
        r = self._fifo_take(id)
        if r is not None:
            self._finish(r, E.SUCCESS, E.TQ_OK, "", value)
            self._release(r)

    def _on_error(self, code, text, id):
        code = code or E.TQ_EPROTO
        if id is not None:
            chain = self.pending.pop(id, None)
            if chain:
                self._finish_chain(chain, E.FAILURE, code, text)
                return
        # a STATUS's, by its id; an earlier broker's ERROR without an id
        # answers the oldest
        r = self._fifo_take(id)
        if r is not None:
            self._finish(r, E.FAILURE, code, text)
            self._release(r)
            return
        log.warning("tq client: broker at %s: %s: %s", self.endpoint,
                    E.code_name(code), text)

    def _on_monitor(self):
        while True:
            try:
                frames = self.monitor.recv_multipart(zmq.DONTWAIT)
            except zmq.Again:
                return
            if len(frames) < 1 or len(frames[0]) < 2:
                continue
            event = int.from_bytes(frames[0][:2], "little")
            if event == zmq.EVENT_DISCONNECTED:
                # the first CONNECTED may predate the monitor: a disconnect
                # proves there was a connection
                self.connected_once = True
            elif event == zmq.EVENT_CONNECTED:
                if self.connected_once:
                    self.broker_lost = False
                    self.last_heard = _now_ms()
                    self._reattach(True)
                self.connected_once = True

    # ---- liveness (PROTOCOL.md section 10) -----------------------------

    def _input_waiting(self):
        return bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def _liveness(self):
        """The poll timeout (ms, None: none), after sending a PING or
        failing unanswered requests when their time has come."""
        if self.waiting == 0:
            return None
        live = self.client._liveness_ms
        brokers = len(self.client.endpoints)
        now = _now_ms()
        heard_from = max(self.last_heard, self.waiting_since,
                         self.endpoint_since)
        if (not self.broker_lost and now - heard_from >= live and
                not self._input_waiting()):
            why = "silent for %.1f s" % (live / 1000.0)
            if brokers > 1:
                # the next broker may be the active one
                self._move(why)
            else:
                self.broker_lost = True
                log.warning("tq client: broker at %s %s", self.endpoint, why)
        # with several brokers, a request waits for an answer from each in
        # turn before it ends unreachable
        bound = live * brokers
        silent_from = self.last_heard
        if self.unacked and self.unacked_since > silent_from:
            silent_from = self.unacked_since
        if (self.unacked and now - silent_from >= bound and
                self._input_waiting()):
            # answers are queued, this thread was only too busy to read
            self.last_heard = silent_from = now
        if self.unacked and now - silent_from >= bound:
            text = ("broker unreachable at %s (no answer in %.1f s%s)"
                    % (self.client.endpoint, bound / 1000.0,
                       "; standby brokers answered TQ_ESTANDBY"
                       if self.standby_moves else ""))
            self._fail_all(True, E.TQ_EUNREACHABLE, text)
            if self.waiting == 0:
                return None
        quiet_from = max(self.last_heard, self.last_ping)
        if self.unacked and self.unacked_since > quiet_from:
            quiet_from = self.unacked_since
        if now - quiet_from >= live // 3:
            self._send_simple(P.PING)
            self.last_ping = quiet_from = now
        deadline = quiet_from + live // 3
        if self.unacked and silent_from + bound < deadline:
            deadline = silent_from + bound
        return max(0, deadline - now)
