"""The Python client against a live tq-broker and a tq-worker -c 2: tasks,
map, callbacks, errors, countdown, cancel, status."""

import multiprocessing
import threading
import time
import unittest

import harness
import tq
from harness import GET_WAIT


@harness.need_binaries
class TestTasks(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.broker = harness.Broker()
        cls.worker = None
        cls.client = None
        try:
            cls.worker = harness.worker(cls.broker.workers, 2)
            cls.client = tq.Client(cls.broker.clients)
            harness.wait_for(lambda: harness.children(cls.client.status(
                GET_WAIT)) == 2, what="2 worker children")
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.client:
            cls.client.close()
        harness.stop(cls.worker)
        cls.broker.stop()

    def test_apply_async_echo(self):
        r = self.client.apply_async("tq.echo", 1, "two", [3], {"k": b"\x00"},
                                    None, True, 2.5)
        self.assertIsInstance(r, tq.AsyncResult)
        self.assertEqual(len(r.id), 32)
        self.assertEqual(r.get(GET_WAIT),
                         [1, "two", [3], {"k": b"\x00"}, None, True, 2.5])
        self.assertTrue(r.ready())
        self.assertTrue(r.successful())
        self.assertEqual(r.state, "SUCCESS")
        self.assertEqual(r.attempts, 1)
        self.assertTrue(r.wait(0))
        # apply blocks and returns the value
        self.assertEqual(self.client.apply("tq.echo", "x"), ["x"])

    def test_ids_are_unique_and_chosen(self):
        ids = {self.client.apply_async("tq.echo", i).id for i in range(50)}
        self.assertEqual(len(ids), 50)
        r = self.client.apply_async("tq.echo", 1, id="py-chosen-id")
        self.assertEqual(r.id, "py-chosen-id")
        self.assertEqual(r.get(GET_WAIT), [1])
        # the same id again is the same task (PROTOCOL.md 5.1): its result
        self.assertEqual(self.client.fetch("py-chosen-id").get(GET_WAIT), [1])
        self.assertEqual(self.client.state("py-chosen-id", GET_WAIT),
                         "SUCCESS")

    def test_get_timeout(self):
        r = self.client.apply_async("tq.sleep", 30)
        with self.assertRaises(tq.TimeoutError):
            r.get(0.2)
        # also what multiprocessing's users catch
        with self.assertRaises(multiprocessing.TimeoutError):
            r.get(0)
        self.assertFalse(r.ready())
        with self.assertRaises(ValueError):
            r.successful()
        # the task goes on until cancelled
        self.assertTrue(self.client.cancel(r.id, GET_WAIT))
        with self.assertRaises(tq.TaskCancelled) as cm:
            r.get(GET_WAIT)
        self.assertEqual(cm.exception.code_name, "TQ_ECANCELLED")
        self.assertEqual(r.state, "CANCELLED")
        self.assertFalse(r.successful())

    def test_task_error(self):
        r = self.client.apply_async("tq.fail", "disk on fire")
        with self.assertRaises(tq.TaskError) as cm:
            r.get(GET_WAIT)
        exc = cm.exception
        self.assertIsInstance(exc, tq.TaskFailed)
        self.assertEqual(exc.code, 6)
        self.assertEqual(exc.code_name, "TQ_ETASK")
        self.assertEqual(exc.text, "disk on fire")
        self.assertEqual(exc.id, r.id)
        self.assertIn("disk on fire", str(exc))
        self.assertTrue(r.ready())
        self.assertFalse(r.successful())
        self.assertEqual(r.state, "FAILURE")
        with self.assertRaises(tq.TaskFailed):
            self.client.apply("tq.fail", "again")

    def test_map_ordered(self):
        values = self.client.map("tq.echo", range(200))
        self.assertEqual(values, [[i] for i in range(200)])
        self.assertEqual(self.client.starmap("tq.echo", [(1, 2), (3,)]),
                         [[1, 2], [3]])
        self.assertEqual(list(self.client.imap("tq.echo", "abc")),
                         [["a"], ["b"], ["c"]])
        self.assertEqual(self.client.map("tq.echo", []), [])
        # the first failure in order is raised
        with self.assertRaises(tq.TaskFailed) as cm:
            self.client.starmap("tq.fail", [("first",), ("second",)])
        self.assertEqual(cm.exception.text, "first")

    def test_imap_unordered(self):
        # the first one cannot finish before it is cancelled: all the
        # others come before it
        it = self.client.imap_unordered("tq.sleep", [30] + [0] * 20)
        self.assertEqual([next(it) for _ in range(20)], [0.0] * 20)
        self.assertFalse(it.results[0].ready())
        it.results[0].cancel()
        with self.assertRaises(tq.TaskCancelled):
            next(it)
        with self.assertRaises(StopIteration):
            next(it)
        self.assertEqual(sorted(x[0] for x in self.client.imap_unordered(
            "tq.echo", range(100))), list(range(100)))

    def test_callbacks(self):
        calls = []
        fired = threading.Event()

        def on_value(value):
            calls.append(("value", value, threading.current_thread().name))

        def on_error(exc):
            calls.append(("error", exc, threading.current_thread().name))
            fired.set()

        r = self.client.apply_async("tq.echo", 42, callback=on_value,
                                    error_callback=on_error)
        self.assertEqual(r.get(GET_WAIT), [42])
        # the callback ran before the result turned ready, on another thread
        self.assertEqual(calls[0][:2], ("value", [42]))
        self.assertNotEqual(calls[0][2], threading.current_thread().name)
        f = self.client.apply_async("tq.fail", "cb", callback=on_value,
                                    error_callback=on_error)
        with self.assertRaises(tq.TaskFailed):
            f.get(GET_WAIT)
        self.assertTrue(fired.is_set())
        self.assertEqual(len(calls), 2)
        self.assertEqual(calls[1][0], "error")
        self.assertIsInstance(calls[1][1], tq.TaskFailed)
        self.assertEqual(calls[1][1].text, "cb")
        # a callback may wait on its own result; one that raises is logged
        # and the result still turns ready
        own = []
        handle = []
        assigned = threading.Event()

        def waits_on_itself(value):
            assigned.wait(GET_WAIT)
            own.append(handle[0].get(0))
            raise RuntimeError("callback bug")

        with self.assertLogs("tq", "ERROR"):
            handle.append(self.client.apply_async(
                "tq.echo", 7, callback=waits_on_itself))
            assigned.set()
            self.assertEqual(handle[0].get(GET_WAIT), [7])
        self.assertEqual(own, [[7]])
        # map's results each call back
        got = []
        self.client.map("tq.echo", range(10), callback=got.append)
        self.assertEqual(sorted(got), [[i] for i in range(10)])

    def test_countdown(self):
        started = time.monotonic()
        late = self.client.apply_async("tq.echo", "late", countdown_ms=1500)
        # submitted on the same connection before the STATUS: counted
        st = self.client.status(GET_WAIT)
        self.assertEqual(harness.queue_counts(st, "default").get("delayed"), 1)
        self.assertEqual(self.client.apply("tq.echo", "now"), ["now"])
        self.assertEqual(late.get(GET_WAIT), ["late"])
        # it cannot have run before its countdown, counted from before the
        # broker received it
        self.assertGreaterEqual(time.monotonic() - started, 1.5)

    def test_options_reach_the_broker(self):
        # a task with a time limit below its run time ends TQ_ETIMELIMIT
        r = self.client.apply_async("tq.sleep", 30, time_limit_ms=300)
        with self.assertRaises(tq.TimeLimitExceeded) as cm:
            r.get(GET_WAIT)
        self.assertEqual(cm.exception.code_name, "TQ_ETIMELIMIT")
        # retries: a failing task runs 1 + retries times
        r = self.client.apply_async("tq.fail", "x", retries=2,
                                    retry_backoff_ms=10)
        with self.assertRaises(tq.TaskFailed):
            r.get(GET_WAIT)
        self.assertEqual(r.attempts, 3)

    def test_bad_input(self):
        c = self.client
        for bad in ("", "has space", "x" * 256, None, 7):
            with self.assertRaises(ValueError):
                c.apply_async(bad)
        with self.assertRaises(ValueError):
            c.apply_async("tq.echo", queue="no spaces")
        with self.assertRaises(ValueError):
            c.apply_async("tq.echo", priority=10)
        with self.assertRaises(ValueError):
            c.apply_async("tq.echo", retries=-1)
        with self.assertRaises(ValueError):
            c.apply_async("tq.echo", id="not/valid")
        with self.assertRaises(TypeError):
            c.apply_async("tq.echo", no_such_option=1)
        with self.assertRaises(TypeError):
            c.apply_async("tq.echo", object())
        with self.assertRaises(ValueError):
            c.fetch("x" * 65)

    def test_unknown_id(self):
        with self.assertRaises(tq.UnknownTaskId) as cm:
            self.client.fetch("never-submitted").get(GET_WAIT)
        self.assertEqual(cm.exception.code_name, "TQ_EUNKNOWN")
        with self.assertRaises(tq.UnknownTaskId):
            self.client.state("never-submitted", GET_WAIT)

    def test_status(self):
        # children killed by earlier tests (cancel, time limit) come back
        st = harness.wait_for(
            lambda: (lambda s: harness.children(s) == 2 and s)(
                self.client.status(GET_WAIT)), what="2 worker children")
        self.assertEqual(st["version"], "TQP/1")
        self.assertEqual(st["pid"], self.broker.proc.pid)
        self.assertIn("tq.echo", st["workers"][0]["tasks"])
        self.assertIn("submitted", st["counters"])


@harness.need_binaries
class TestLifecycle(unittest.TestCase):
    def test_priority(self):
        """Tasks queued before any worker start highest priority first,
        FIFO within a priority."""
        broker = harness.Broker()
        worker = None
        try:
            with tq.Client(broker.clients) as client:
                order = []
                prios = [0, 5, 9, 5, 0, 9, 1]
                results = [client.apply_async(
                    "tq.echo", i, queue="prio", priority=p,
                    callback=order.append) for i, p in enumerate(prios)]
                harness.wait_for(lambda: harness.queue_counts(
                    client.status(GET_WAIT), "prio").get("waiting") == 7,
                    what="7 tasks waiting")
                worker = harness.worker(broker.workers, 1,
                                        ["--queue", "prio", "--prefetch", "1"])
                for r in results:
                    r.get(GET_WAIT)
                expected = sorted(range(7), key=lambda i: (-prios[i], i))
                self.assertEqual(order, [[i] for i in expected])
        finally:
            harness.stop(worker)
            broker.stop()

    def test_unreachable(self):
        """Nothing listens: requests fail with BrokerUnreachable after the
        liveness, never a hang."""
        port = harness.free_port()
        with tq.Client("tcp://127.0.0.1:%d" % port,
                       liveness_ms=1000) as client:
            r = client.apply_async("tq.echo", 1)
            with self.assertRaises(tq.BrokerUnreachable) as cm:
                r.get(GET_WAIT)
            self.assertEqual(cm.exception.code_name, "TQ_EUNREACHABLE")
            self.assertIn("127.0.0.1:%d" % port, cm.exception.text)
            with self.assertRaises(tq.BrokerUnreachable):
                client.status(GET_WAIT)
        # the default liveness too
        with tq.Client("tcp://127.0.0.1:%d" % port) as client:
            with self.assertRaises(tq.BrokerUnreachable):
                client.apply("tq.echo", 1)

    def test_close(self):
        broker = harness.Broker()
        try:
            client = tq.Client(broker.clients)
            # no worker: the task waits until the client closes
            r = client.apply_async("tq.echo", 1)
            client.close()
            client.close()
            with self.assertRaises(tq.ClientClosed):
                r.get(GET_WAIT)
            with self.assertRaises(tq.ClientClosed):
                client.apply_async("tq.echo", 2)
            self.assertTrue(client.closed)
        finally:
            broker.stop()

    def test_broker_restart(self):
        """An acknowledged task survives a kill -9 of a broker with a
        store, and the client asks the new broker for its result."""
        import tempfile
        with tempfile.TemporaryDirectory(prefix="tq-py-") as data:
            broker = harness.Broker(["--data", data])
            worker = None
            try:
                with tq.Client(broker.clients) as client:
                    r = client.apply_async("tq.echo", "survives")
                    # acknowledged: stored (SUBMITTED follows the commit)
                    harness.wait_for(lambda: r._acked,
                                     what="the task acknowledged")
                    clients, workers = broker.clients, broker.workers
                    broker.kill()
                    broker = harness.Broker(["--data", data],
                                            clients=clients, workers=workers)
                    worker = harness.worker(broker.workers, 1)
                    self.assertEqual(r.get(GET_WAIT), ["survives"])
            finally:
                harness.stop(worker)
                broker.stop()

    def _list_through(self, first, liveness_ms):
        """Ten tasks and a STATUS through a list that starts with `first`
        (a fake broker) and ends with a real one: each task ends with its
        own value; the client moved once."""
        broker = harness.Broker()
        worker = None
        try:
            worker = harness.worker(broker.workers, 2)
            endpoints = "%s,%s" % (first.endpoint, broker.clients)
            with tq.Client(endpoints, liveness_ms=liveness_ms) as client:
                results = [client.apply_async("tq.echo", i)
                           for i in range(10)]
                self.assertEqual([r.get(GET_WAIT) for r in results],
                                 [[i] for i in range(10)])
                self.assertIn("queues", client.status(GET_WAIT))
                # the standby: once; a silent first broker: at least once
                # (a loaded machine may stall the real one past the
                # liveness too)
                if first.standby:
                    self.assertEqual(client._io.moves, 1)
                    self.assertEqual(client._io.endpoint, broker.clients)
                else:
                    self.assertGreaterEqual(client._io.moves, 1)
            self.assertGreaterEqual(first.submits, 1)
        finally:
            first.stop()
            harness.stop(worker)
            broker.stop()

    def test_broker_list_standby_first(self):
        """PROTOCOL.md section 12: the first broker of the list is a
        standby (it answers every request ERROR TQ_ESTANDBY): the client
        moves to the next and its tasks end there."""
        self._list_through(_FakeBroker(standby=True), 60000)

    def test_broker_list_silent_first(self):
        """The first broker reads everything and answers nothing: after
        the liveness the client moves to the next."""
        self._list_through(_FakeBroker(standby=False), 5000)

    def test_broker_list_no_active(self):
        """Two standbys: a task never hangs, it ends BrokerUnreachable."""
        a, b = _FakeBroker(standby=True), _FakeBroker(standby=True)
        try:
            with tq.Client("%s, %s" % (a.endpoint, b.endpoint),
                           liveness_ms=1000) as client:
                r = client.apply_async("tq.echo", 1)
                with self.assertRaises(tq.BrokerUnreachable) as cm:
                    r.get(GET_WAIT)
                self.assertIn("TQ_ESTANDBY", cm.exception.text)
                self.assertGreaterEqual(client._io.moves, 2)
        finally:
            a.stop()
            b.stop()
        with self.assertRaises(ValueError):
            tq.Client("tcp://127.0.0.1:1,,tcp://127.0.0.1:2")


class _FakeBroker:
    """A ROUTER on a thread of its own: a standby answers every message
    ERROR TQ_ESTANDBY (with the request's id when it has one), a silent
    one reads and answers nothing. Counts the SUBMITs it read."""

    def __init__(self, standby):
        import zmq
        from tq import _protocol as P
        self._zmq, self._P = zmq, P
        self.standby = standby
        self.submits = 0
        self._stop = threading.Event()
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        from tq import _errors as E
        P = self._P
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            frames = self._sock.recv_multipart()
            try:
                head = P.unpack(frames[1])
            except Exception:
                continue
            command, fields = head[1], head[2:]
            if command == P.SUBMIT:
                self.submits += 1
            if not self.standby:
                continue
            id = fields[0] if command in (P.SUBMIT, P.GET) else None
            self._sock.send_multipart([frames[0], P.header(
                P.ERROR, E.TQ_ESTANDBY, "this broker is a standby", id)])

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._sock.close(0)


if __name__ == "__main__":
    unittest.main()
