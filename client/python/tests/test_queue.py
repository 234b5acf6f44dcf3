"""Data queues (PROTOCOL.md 5.5) from Python, as multiprocessing.Queue."""

import queue
import threading
import unittest

import harness
import tq
from harness import GET_WAIT


@harness.need_binaries
class TestDataQueue(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.broker = harness.Broker()
        try:
            cls.client = tq.Client(cls.broker.clients)
        except BaseException:
            cls.broker.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.broker.stop()

    def test_put_get_fifo(self):
        q = self.client.queue("fifo")
        self.assertTrue(q.empty())
        items = [1, "two", [3, 4], {"five": b"\x05"}, None, 6.5]
        for item in items:
            q.put(item)
        self.assertEqual(q.qsize(), len(items))
        self.assertFalse(q.full())  # unbounded
        self.assertEqual([q.get(timeout=GET_WAIT) for _ in items], items)
        self.assertTrue(q.empty())

    def test_full_and_empty(self):
        q = self.client.queue("bounded", maxsize=2)
        q.put("a")
        q.put_nowait("b")
        self.assertTrue(q.full())
        self.assertEqual(q.qsize(), 2)
        with self.assertRaises(queue.Full):
            q.put_nowait("c")
        with self.assertRaises(queue.Full):
            q.put("c", timeout=0.1)
        with self.assertRaises(queue.Full):
            q.put("c", block=False)
        self.assertEqual(q.get_nowait(), "a")
        self.assertFalse(q.full())
        self.assertEqual(q.get(), "b")
        # nothing refused was kept
        with self.assertRaises(queue.Empty):
            q.get_nowait()
        with self.assertRaises(queue.Empty):
            q.get(timeout=0.2)
        with self.assertRaises(queue.Empty):
            q.get(block=False)
        with self.assertRaises(ValueError):
            q.get(timeout=-1)

    def test_blocking_get_and_put(self):
        q = self.client.queue("blocking", maxsize=1)
        got = []
        getter = threading.Thread(
            target=lambda: got.append(q.get(timeout=GET_WAIT)))
        getter.start()
        # the getter waits at the broker: the put wakes it
        harness.wait_for(lambda: any(
            d.get("name") == "blocking" and d.get("getters") == 1
            for d in self.client.status(GET_WAIT).get("data_queues", ())),
            what="a waiting getter")
        q.put("wake")
        getter.join(GET_WAIT)
        self.assertEqual(got, ["wake"])
        # a put on a full queue waits for room
        q.put("first")
        putter = threading.Thread(target=lambda: q.put("second",
                                                       timeout=GET_WAIT))
        putter.start()
        self.assertEqual(q.get(timeout=GET_WAIT), "first")
        putter.join(GET_WAIT)
        self.assertEqual(q.get(timeout=GET_WAIT), "second")

    def test_two_clients(self):
        with tq.Client(self.broker.clients) as other:
            self.client.queue("shared").put({"from": "one"})
            self.assertEqual(other.queue("shared").get(timeout=GET_WAIT),
                             {"from": "one"})

    def test_bad_input(self):
        with self.assertRaises(ValueError):
            self.client.queue("bad name")
        with self.assertRaises(ValueError):
            self.client.queue("q", maxsize=-1)
        with self.assertRaises(TypeError):
            self.client.queue("q").put(object())


if __name__ == "__main__":
    unittest.main()
