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
    def test_seeds_without_certificates(self):  # type: ignore[no-untyped-def]
        """A node with seeds and no mesh certificate files exits non-zero
        with one line naming mesh.ca_file and the command that makes it,
        after twistd's synopsis (it was a 30-line traceback from inside the
        mesh's start), and creates nothing."""
        data_dir = os.path.abspath(self.mktemp())
        path = os.path.abspath(self.mktemp())
        free = "tcp:0:interface=127.0.0.1"
        with open(path, "w") as f:
            f.write(
                f'[node]\ndata_dir = "{data_dir}"\n[http]\nendpoint = "{free}"\n[tls]\nendpoint = "{free}"\n'
                f'[mesh]\nendpoint = "{free}"\nseeds = ["127.0.0.1:7999"]\n[dns]\nport = 0\n'
            )
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, TWISTD + ("-n", "--pidfile=", "fastedge", "--config", path), env=_env(), path=REPO
        )
        lines = [line for line in (out + err).splitlines() if line.strip()]
        self.assertNotEqual(code, 0)
        # twistd's own synopsis line, then ours (the options' usage, 20
        # lines, is left out after a config error).
        self.assertEqual(lines[:-1], [b"Usage: twistd [options]"], (out + err).decode(errors="replace"))
        self.assertIn(b"mesh.ca_file: " + os.path.join(data_dir, "mesh", "ca.pem").encode(), lines[-1])
        self.assertIn(b"`fastedge-admin certs ca`", lines[-1])
        self.assertFalse(os.path.exists(os.path.join(data_dir, "mesh")))

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
