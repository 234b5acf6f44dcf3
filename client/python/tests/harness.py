"""Test helpers: a real tq-broker and tq-worker of the build tree on free
loopback ports, every wait bounded, every process stopped by its pid.

The binaries come from $TQ_BROKER_BIN, $TQ_WORKER_BIN and $TQ_CLI_BIN
(tests/CMakeLists.txt sets them); without them the tests are skipped."""

import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
import unittest

BROKER_BIN = os.environ.get("TQ_BROKER_BIN", "")
WORKER_BIN = os.environ.get("TQ_WORKER_BIN", "")
CLI_BIN = os.environ.get("TQ_CLI_BIN", "")

START_WAIT = 10.0   # s: a broker announces its endpoints within this
STOP_GRACE = 5.0    # s: SIGTERM, then SIGKILL
GET_WAIT = 60.0     # s: bound of every wait for a result

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl


def _die_with_parent():
    # runs in the child between fork and exec: a test killed by ctest's
    # timeout leaves no broker or worker behind
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def need_binaries(test):
    missing = [name for name, path in (("TQ_BROKER_BIN", BROKER_BIN),
                                       ("TQ_WORKER_BIN", WORKER_BIN),
                                       ("TQ_CLI_BIN", CLI_BIN))
               if not os.access(path, os.X_OK)]
    if missing:
        return unittest.skip("no %s (run through ctest)"
                             % ", ".join(missing))(test)
    return test


def spawn(argv, **kwargs):
    return subprocess.Popen(argv, preexec_fn=_die_with_parent, **kwargs)


def stop(proc):
    """SIGTERM, then SIGKILL after a grace period; returns the exit code."""
    if proc is None or proc.returncode is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        sys.stderr.write("harness: pid %d ignored SIGTERM; SIGKILL\n"
                         % proc.pid)
        proc.kill()
        return proc.wait(STOP_GRACE)


def _drain(stream):
    # the broker's later stdout goes to our stderr: never a full pipe
    for line in iter(stream.readline, b""):
        sys.stderr.write(line.decode("utf-8", "replace"))
    stream.close()


class Broker:
    """A tq-broker on free ports (or the given endpoints), in memory
    unless extra chooses a store."""

    def __init__(self, extra=(), clients="tcp://127.0.0.1:*",
                 workers="tcp://127.0.0.1:*"):
        argv = [BROKER_BIN, "--clients", clients, "--workers", workers]
        argv += list(extra)
        if "--data" not in extra and "--no-persist" not in extra:
            argv.append("--no-persist")
        self.proc = spawn(argv, stdout=subprocess.PIPE)
        try:
            line = self._first_line()
            words = line.split()
            if (len(words) != 5 or words[:2] != ["tq-broker:", "clients"]
                    or words[3] != "workers" or "*" in line):
                raise RuntimeError("broker pid %d did not announce its "
                                   "endpoints: %r" % (self.proc.pid, line))
        except BaseException:
            stop(self.proc)
            self.proc.stdout.close()
            raise
        self.clients, self.workers = words[2], words[4]
        self._drain = threading.Thread(target=_drain,
                                       args=(self.proc.stdout,), daemon=True)
        self._drain.start()

    def _first_line(self):
        fd = self.proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + START_WAIT
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError("broker pid %d said nothing in %.0f s"
                                   % (self.proc.pid, START_WAIT))
            byte = os.read(fd, 1)  # byte-wise: nothing after it is lost
            if not byte:
                raise RuntimeError("broker pid %d exited: %r"
                                   % (self.proc.pid, data))
            data += byte
        return data.decode("utf-8", "replace").strip()

    def kill(self):
        """SIGKILL, as a crash."""
        self.proc.kill()
        self.proc.wait(STOP_GRACE)
        self._drain.join(STOP_GRACE)

    def stop(self):
        code = stop(self.proc)
        self._drain.join(STOP_GRACE)
        return code


def worker(endpoint, children=2, extra=()):
    return spawn([WORKER_BIN, "--broker", endpoint, "-c", str(children)] +
                 list(extra))


def cli(*args, timeout=GET_WAIT):
    """Runs the tq CLI; returns (exit code, stdout, stderr)."""
    done = subprocess.run([CLI_BIN] + list(args), capture_output=True,
                          timeout=timeout, preexec_fn=_die_with_parent)
    return (done.returncode, done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"))


def wait_for(predicate, timeout=GET_WAIT, what="condition"):
    """Polls predicate until true; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.02)


def queue_counts(status, name):
    for q in status.get("queues", ()):
        if q.get("name") == name:
            return q
    return {}


def children(status):
    return len(status.get("workers", ()))


def free_port():
    """A loopback port nobody listens on now (bound, then released)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
