"""The Python client and the C CLI on one broker: a task submitted by one
is fetched by id from the other."""

import json
import unittest

import harness
import tq
from harness import GET_WAIT


@harness.need_binaries
class TestInterop(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.broker = harness.Broker()
        cls.worker = None
        cls.client = None
        try:
            cls.worker = harness.worker(cls.broker.workers, 2)
            cls.client = tq.Client(cls.broker.clients)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.client:
            cls.client.close()
        harness.stop(cls.worker)
        cls.broker.stop()

    def test_cli_submits_python_fetches(self):
        code, out, err = harness.cli("--broker", self.broker.clients,
                                     "submit", "tq.echo", "7", '"x"',
                                     '{"k":[1,2]}')
        self.assertEqual(code, 0, err)
        task_id = out.strip()
        self.assertEqual(len(task_id), 32)
        r = self.client.fetch(task_id)
        self.assertEqual(r.id, task_id)
        self.assertEqual(r.get(GET_WAIT), [7, "x", {"k": [1, 2]}])
        self.assertEqual(self.client.state(task_id, GET_WAIT), "SUCCESS")

    def test_python_submits_cli_fetches(self):
        r = self.client.apply_async("tq.echo", 5, "y", [1.5], id="py-to-cli")
        self.assertEqual(r.get(GET_WAIT), [5, "y", [1.5]])
        code, out, err = harness.cli("--broker", self.broker.clients, "get",
                                     "py-to-cli", "--wait", "--timeout", "60")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), [5, "y", [1.5]])
        # a failure reads the same on both sides
        f = self.client.apply_async("tq.fail", "from python", id="py-fail")
        with self.assertRaises(tq.TaskFailed):
            f.get(GET_WAIT)
        code, out, err = harness.cli("--broker", self.broker.clients, "get",
                                     "py-fail", "--wait", "--timeout", "60")
        self.assertEqual(code, 1)
        self.assertIn("from python", err)

    def test_python_waits_on_a_running_cli_task(self):
        code, out, err = harness.cli("--broker", self.broker.clients,
                                     "submit", "tq.sleep", "0.3")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.client.fetch(out.strip()).get(GET_WAIT), 0.3)


if __name__ == "__main__":
    unittest.main()
