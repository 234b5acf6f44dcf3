"""The client on the wire, against a fake broker (a ROUTER in the test):
the frames it sends are TQP/1 as PROTOCOL.md writes them, it survives
malformed messages, and it keeps a long wait alive with PING."""

import threading
import unittest

import msgpack
import zmq

import harness
import tq
from harness import GET_WAIT

WAIT_MS = int(GET_WAIT * 1000)


class FakeBroker:
    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = "tcp://127.0.0.1:%d" % port

    def recv(self):
        """(identity, header list, payload or None); fails after GET_WAIT."""
        if not self.sock.poll(WAIT_MS):
            raise AssertionError("the client sent nothing")
        frames = self.sock.recv_multipart()
        head = msgpack.unpackb(frames[1], raw=False)
        return frames[0], head, frames[2] if len(frames) > 2 else None

    def recv_command(self, command):
        """The next message of this command, answering PINGs meanwhile."""
        while True:
            ident, head, payload = self.recv()
            if head[1] == 0x09:
                self.send(ident, [1, 0x0A])
                continue
            if head[1] == command:
                return ident, head, payload

    def send(self, ident, head, payload=None):
        frames = [ident, msgpack.packb(head)]
        if payload is not None:
            frames.append(payload)
        self.sock.send_multipart(frames)

    def close(self):
        self.sock.close()
        self.ctx.term()


class TestWire(unittest.TestCase):
    def setUp(self):
        self.broker = FakeBroker()
        self.client = tq.Client(self.broker.endpoint, liveness_ms=1000)

    def tearDown(self):
        self.client.close()
        self.broker.close()

    def test_submit_frames(self):
        r = self.client.apply_async("t.x", 1, "a", b"\x01", queue="q",
                                    priority=7, time_limit_ms=5000,
                                    retries=2, retry_backoff_ms=250,
                                    countdown_ms=100)
        ident, head, payload = self.broker.recv_command(0x01)
        # [version, SUBMIT, id, task, queue, priority, time_limit_ms |
        #  retries, backoff_ms, delay_ms], payload: the argument array
        self.assertEqual(head, [1, 0x01, r.id, "t.x", "q", 7, 5000, 2, 250,
                                100])
        self.assertEqual(msgpack.unpackb(payload, raw=False),
                         [1, "a", b"\x01"])
        # an id of 32 hex characters: 64 random bits and a counter
        int(r.id, 16)
        self.assertEqual(len(r.id), 32)
        # defaults: queue "default", backoff 0 sent as 1000
        r2 = self.client.apply_async("t.y")
        _, head, payload = self.broker.recv_command(0x01)
        self.assertEqual(head, [1, 0x01, r2.id, "t.y", "default", 0, 0, 0,
                                1000, 0])
        self.assertEqual(msgpack.unpackb(payload), [])
        self.assertEqual(r2.id[:16], r.id[:16])
        self.assertEqual(int(r2.id[16:], 16), int(r.id[16:], 16) + 1)

        # garbage first: dropped, the client goes on
        self.broker.sock.send_multipart([ident, b"\xc1"])
        self.broker.sock.send_multipart([ident, msgpack.packb([2, 0x02,
                                                               r.id])])
        self.broker.sock.send_multipart([ident, msgpack.packb([1, 0x04,
                                                               r.id])])
        self.broker.send(ident, [1, 0x02, r.id])
        self.broker.send(ident, [1, 0x04, r.id, 2, 0, None, 1, "future"],
                         msgpack.packb({"ok": True}))
        self.assertEqual(r.get(GET_WAIT), {"ok": True})
        self.assertEqual(r.attempts, 1)
        # a failure: the code and the text
        self.broker.send(ident, [1, 0x04, r2.id, 3, 13,
                                 "time limit exceeded (1.0 s)"], b"")
        with self.assertRaises(tq.TimeLimitExceeded) as cm:
            r2.get(GET_WAIT)
        self.assertEqual(cm.exception.text, "time limit exceeded (1.0 s)")

    def test_error_answers(self):
        r = self.client.apply_async("t.x")
        ident, head, _ = self.broker.recv_command(0x01)
        self.broker.send(ident, [1, 0x0B, 10, "queue default is full", r.id])
        with self.assertRaises(tq.BrokerFull) as cm:
            r.get(GET_WAIT)
        self.assertEqual(cm.exception.code_name, "TQ_EFULL")
        # STATUS, answered by an ERROR without id
        done = []
        t = threading.Thread(target=lambda: done.append(
            self._catch(self.client.status, GET_WAIT)))
        t.start()
        ident, head, _ = self.broker.recv_command(0x07)
        # its own id (PROTOCOL.md section 10); an earlier broker ignores it
        self.assertEqual(head[:2], [1, 0x07])
        self.assertEqual(len(head), 3)
        self.broker.send(ident, [1, 0x0B, 3, "no"])
        t.join(GET_WAIT)
        self.assertIsInstance(done[0], tq.ProtocolError)

    def test_status_matched_by_id(self):
        """Two STATUS requests answered out of order (as when the first
        answer was dropped and comes again later): each caller gets the
        answer carrying its own id, never the other's."""
        done = [None, None]

        def call(i):
            done[i] = self._catch(self.client.status, GET_WAIT)
        threads = []
        ids = []
        for i in range(2):
            threads.append(threading.Thread(target=call, args=(i,)))
            threads[i].start()
            ident, head, _ = self.broker.recv_command(0x07)
            ids.append(head[2])
        self.assertNotEqual(ids[0], ids[1])
        self.broker.send(ident, [1, 0x08, ids[1]], msgpack.packb({"n": 2}))
        threads[1].join(GET_WAIT)
        self.assertEqual(done[1], {"n": 2})
        self.assertIsNone(done[0])
        self.broker.send(ident, [1, 0x08, ids[0]], msgpack.packb({"n": 1}))
        threads[0].join(GET_WAIT)
        self.assertEqual(done[0], {"n": 1})

    @staticmethod
    def _catch(fn, *args):
        try:
            return fn(*args)
        except Exception as exc:
            return exc

    def test_fetch_kept_alive_by_ping(self):
        """A GET wait=true is unanswered until the task ends: the client
        PINGs, and a broker that answers PONG is alive however long the
        task runs (here 3 liveness periods)."""
        self.client.close()
        self.client = tq.Client(self.broker.endpoint, liveness_ms=2000)
        r = self.client.fetch("some-task")
        ident, head, _ = self.broker.recv_command(0x03)
        self.assertEqual(head, [1, 0x03, "some-task", True])
        pings = 0
        while pings < 9:  # a PING every third of the liveness
            _, head, _ = self.broker.recv()
            self.assertEqual(head, [1, 0x09])
            self.broker.send(ident, [1, 0x0A])
            pings += 1
        self.assertFalse(r.ready())
        self.broker.send(ident, [1, 0x04, "some-task", 2, 0, None, 1],
                         msgpack.packb(5))
        self.assertEqual(r.get(GET_WAIT), 5)

    def test_silent_broker(self):
        """A broker that stops answering: unanswered requests fail with
        BrokerUnreachable."""
        r = self.client.apply_async("t.x")
        self.broker.recv_command(0x01)
        with self.assertRaises(tq.BrokerUnreachable):
            r.get(GET_WAIT)

    def test_broker_ping(self):
        ident_seen = []
        r = self.client.apply_async("t.x")
        ident, _, _ = self.broker.recv_command(0x01)
        ident_seen.append(ident)
        self.broker.send(ident, [1, 0x09])
        # answered PONG (PINGs of its own may come first)
        while True:
            _, head, _ = self.broker.recv()
            if head[1] == 0x0A:
                break
            self.assertEqual(head[1], 0x09)
        self.broker.send(ident, [1, 0x06, r.id])
        with self.assertRaises(tq.UnknownTaskId):
            r.get(GET_WAIT)

    def test_reconnect(self):
        """The broker restarts (a new ROUTER on the same port): the client
        asks again for the result of an acknowledged SUBMIT, sends an
        unanswered SUBMIT again followed by a GET, and fails an unanswered
        QPUT, which the old broker may have kept."""
        acked = self.client.apply_async("t.acked")
        ident, head, _ = self.broker.recv_command(0x01)
        self.broker.send(ident, [1, 0x02, acked.id])
        harness.wait_for(lambda: acked._acked, what="the acknowledgement")
        unacked = self.client.apply_async("t.unacked")
        self.broker.recv_command(0x01)
        put = []
        t = threading.Thread(target=lambda: put.append(
            self._catch(self.client.queue("dq").put, 1)))
        t.start()
        self.broker.recv_command(0x11)

        endpoint = self.broker.endpoint
        self.broker.sock.close()
        self.broker.sock = self.broker.ctx.socket(zmq.ROUTER)
        self.broker.sock.linger = 0
        harness.wait_for(lambda: self._bind(endpoint), what="the port")

        seen = []
        while len(seen) < 3:
            ident, head, _ = self.broker.recv()
            if head[1] == 0x09:
                self.broker.send(ident, [1, 0x0A])
            else:
                seen.append(head)
        self.assertIn([1, 0x03, acked.id, True], seen)
        self.assertIn([1, 0x03, unacked.id, True], seen)
        submits = [h for h in seen if h[1] == 0x01]
        self.assertEqual([h[2] for h in submits], [unacked.id])
        self.assertLess(seen.index(submits[0]),
                        seen.index([1, 0x03, unacked.id, True]))
        t.join(GET_WAIT)
        self.assertIsInstance(put[0], tq.BrokerUnreachable)
        self.assertIn("may or may not", put[0].text)
        for r in (acked, unacked):
            self.broker.send(ident, [1, 0x04, r.id, 2, 0, None, 1],
                             msgpack.packb(r.id))
            self.assertEqual(r.get(GET_WAIT), r.id)

    def _bind(self, endpoint):
        try:
            self.broker.sock.bind(endpoint)
            return True
        except zmq.ZMQError:
            return False

    def test_queue_frames(self):
        q = self.client.queue("dq", maxsize=3)
        t = threading.Thread(target=q.put, args=({"a": 1},))
        t.start()
        ident, head, payload = self.broker.recv_command(0x11)
        self.assertEqual(head[:2], [1, 0x11])
        self.assertEqual(head[3:], ["dq", 3])
        self.assertTrue(head[2].startswith("q"))
        self.assertEqual(msgpack.unpackb(payload, raw=False), {"a": 1})
        self.broker.send(ident, [1, 0x10, head[2]], msgpack.packb({"size":
                                                                   1}))
        t.join(GET_WAIT)
        got = []
        t = threading.Thread(target=lambda: got.append(q.get(timeout=2.5)))
        t.start()
        ident, head, _ = self.broker.recv_command(0x12)
        self.assertEqual(head[3], "dq")
        self.assertTrue(0 < head[4] <= 2500, head)  # time left, in ms
        self.broker.send(ident, [1, 0x13, head[2]], msgpack.packb("item"))
        t.join(GET_WAIT)
        self.assertEqual(got, ["item"])


if __name__ == "__main__":
    unittest.main()
