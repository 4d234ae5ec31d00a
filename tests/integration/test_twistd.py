"""``twistd fastedge`` as operators run it: a child process."""

from __future__ import annotations

import os
import signal
import sys

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = ("-c", "from twisted.scripts.twistd import run; run()")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=REPO)


def twistd_on_free_ports(data_dir: str) -> tuple[str, ...]:
    """argv of ``twistd -n fastedge`` on its defaults, but every listener
    (HTTP, HTTPS, mesh, DNS) on a free loopback port: tests run in parallel."""
    free = "tcp:0:interface=127.0.0.1"
    return (
        sys.executable,
        *TWISTD,
        "-n",
        "--pidfile=",
        "fastedge",
        "--data-dir",
        data_dir,
        "--http",
        free,
        "--https",
        free,
        "--mesh",
        free,
        "--dns-port",
        "0",
    )


class _Watch(protocol.ProcessProtocol):
    """Collects output; fires ``started`` on the first line that says the
    HTTP listener is up, ``ended`` with the exit code."""

    def __init__(self) -> None:
        self.output = b""
        self.started: Deferred[None] = Deferred()
        self.ended: Deferred[object] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"store ready" in self.output and not self.started.called:
            self.started.callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:  # type: ignore[no-untyped-def]
        if not self.started.called:
            self.started.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(reason.value)


class TwistdTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_bad_config_fails_before_listening(self):  # type: ignore[no-untyped-def]
        """A bad config file makes twistd exit non-zero with one line naming
        the key, before it listens on anything."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[http]\nendpoint = "tcp:0:interface=127.0.0.1"\n[store]\nthreads = "many"\n')
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, TWISTD + ("-n", "--pidfile=", "fastedge", "--config", path), env=_env(), path=REPO
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"store.threads: must be an integer, not 'many'", out + err)
        self.assertNotIn(b"starting on", out + err)

    @inlineCallbacks
    def test_runs_and_stops(self):  # type: ignore[no-untyped-def]
        """The plugin is found, the node starts on its defaults (here on a
        free port) and stops cleanly on SIGTERM."""
        watch = _Watch()
        data_dir = os.path.abspath(self.mktemp())
        args = twistd_on_free_ports(data_dir)
        process = reactor.spawnProcess(watch, sys.executable, args, env=_env(), path=REPO)
        yield watch.started
        process.signalProcess(signal.SIGTERM)
        ended = yield watch.ended
        # twistd re-raises the signal it stopped on once shutdown is complete.
        self.assertIn(ended.signal, (None, signal.SIGTERM))
        self.assertIn(ended.exitCode, (None, 0))
        self.assertIn(b"Server Shut Down.", watch.output)
        self.assertNotIn(b"Traceback", watch.output)
        self.assertTrue(os.path.exists(os.path.join(data_dir, "fastedge.sqlite3")))
