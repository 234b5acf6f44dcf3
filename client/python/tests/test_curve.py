"""CURVE: the Python client with the certificates `tq keygen` writes, or
Z85 keys, against a broker with allow-lists; a key not allowed gets
nowhere."""

import os
import shutil
import tempfile
import unittest

import zmq

import harness
import tq
from tq import _curve
from harness import GET_WAIT


@harness.need_binaries
class TestCurve(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="tq-py-curve-")
        cls.broker = cls.worker = None
        try:
            for sub in ("clients", "workers", "admins"):
                os.mkdir(os.path.join(cls.dir, sub), 0o700)
            for name in ("broker", "alice", "w1", "olga"):
                code, out, err = harness.cli("keygen", name, cls.dir)
                assert code == 0, err
            cls.cert = {n: os.path.join(cls.dir, n + ".cert")
                        for n in ("broker", "alice", "w1", "olga")}
            shutil.copy(cls.cert["alice"], os.path.join(cls.dir, "clients"))
            # an operator key: the STATUS details (PROTOCOL.md 5.8)
            shutil.copy(cls.cert["olga"], os.path.join(cls.dir, "admins"))
            shutil.copy(cls.cert["w1"], os.path.join(cls.dir, "workers"))
            cls.broker = harness.Broker([
                "--curve-secret", cls.cert["broker"],
                "--client-keys", os.path.join(cls.dir, "clients"),
                "--worker-keys", os.path.join(cls.dir, "workers"),
                "--admin-keys", os.path.join(cls.dir, "admins")])
            cls.worker = harness.worker(cls.broker.workers, 2, [
                "--curve-server-key", cls.cert["broker"],
                "--curve-cert", cls.cert["w1"]])
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        harness.stop(cls.worker)
        if cls.broker:
            cls.broker.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_round_trip_with_cert_files(self):
        with tq.Client(self.broker.clients,
                       curve_server_key=self.cert["broker"],
                       curve_cert=self.cert["alice"]) as client:
            self.assertEqual(client.apply("tq.echo", "over curve"),
                             ["over curve"])
            # a client key is one tenant: no details of the others
            self.assertNotIn("auth", client.status(GET_WAIT))
        with tq.Client(self.broker.clients,
                       curve_server_key=self.cert["broker"],
                       curve_cert=self.cert["olga"]) as operator:
            auth = operator.status(GET_WAIT)["auth"]
            self.assertGreaterEqual(auth["allowed"], 1)

    def test_round_trip_with_z85_keys(self):
        server = _curve.public_key(self.cert["broker"])
        public, secret = _curve.key_pair(self.cert["alice"])
        self.assertEqual(len(server), 40)
        with tq.Client(self.broker.clients, curve_server_key=server,
                       curve_public_key=public,
                       curve_secret_key=secret) as client:
            self.assertEqual(client.map("tq.echo", range(20)),
                             [[i] for i in range(20)])
        # the secret file works as well as the public one
        with tq.Client(self.broker.clients,
                       curve_server_key=self.cert["broker"] + "_secret",
                       curve_cert=self.cert["alice"] + "_secret") as client:
            self.assertEqual(client.apply("tq.echo", 1), [1])

    def test_environment(self):
        os.environ["TQ_CURVE_SERVER_KEY"] = self.cert["broker"]
        os.environ["TQ_CURVE_CERT"] = self.cert["alice"]
        try:
            with tq.Client(self.broker.clients) as client:
                self.assertEqual(client.apply("tq.echo", "env"), ["env"])
        finally:
            del os.environ["TQ_CURVE_SERVER_KEY"]
            del os.environ["TQ_CURVE_CERT"]

    def test_key_not_allowed(self):
        with tq.Client(self.broker.clients,
                       curve_server_key=self.cert["broker"],
                       curve_cert=self.cert["olga"]) as alice:
            before = alice.status(GET_WAIT)["auth"]["denied_clients"]
            public, secret = (k.decode() for k in zmq.curve_keypair())
            with tq.Client(self.broker.clients,
                           curve_server_key=self.cert["broker"],
                           curve_public_key=public, curve_secret_key=secret,
                           liveness_ms=1000) as mallory:
                with self.assertRaises(tq.BrokerUnreachable):
                    mallory.apply_async("tq.echo", "intruder").get(GET_WAIT)
            # a worker's key is not a client's
            with tq.Client(self.broker.clients,
                           curve_server_key=self.cert["broker"],
                           curve_cert=self.cert["w1"],
                           liveness_ms=1000) as worker_key:
                with self.assertRaises(tq.BrokerUnreachable):
                    worker_key.status(GET_WAIT)
            # plain text gets nowhere either
            with tq.Client(self.broker.clients, liveness_ms=1000) as plain:
                with self.assertRaises(tq.BrokerUnreachable):
                    plain.status(GET_WAIT)
            after = alice.status(GET_WAIT)["auth"]["denied_clients"]
            self.assertGreaterEqual(after, before + 2)

    def test_bad_keys(self):
        with self.assertRaises(ValueError):  # half a configuration
            tq.Client(self.broker.clients,
                      curve_server_key=self.cert["broker"])
        with self.assertRaises(ValueError):
            tq.Client(self.broker.clients, curve_server_key="short",
                      curve_cert=self.cert["alice"])
        with self.assertRaises(ValueError):  # a public file has no secret
            os.rename(self.cert["alice"] + "_secret",
                      self.cert["alice"] + "_moved")
            try:
                tq.Client(self.broker.clients,
                          curve_server_key=self.cert["broker"],
                          curve_cert=self.cert["alice"])
            finally:
                os.rename(self.cert["alice"] + "_moved",
                          self.cert["alice"] + "_secret")
        with self.assertRaises(ValueError):
            tq.Client(self.broker.clients,
                      curve_server_key=os.path.join(self.dir, "missing"),
                      curve_cert=self.cert["alice"])


if __name__ == "__main__":
    unittest.main()
