"""``twistd fastedge`` as operators run it: a child process."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
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


def _listing(directory: str) -> list[tuple[str, int]]:
    """Every file under ``directory`` with its size."""
    found = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            found.append((os.path.relpath(path, directory), os.path.getsize(path)))
    return sorted(found)


def _versions() -> tuple[str, str, str]:
    import twisted
    from fastedge import __version__

    return __version__, twisted.__version__, platform.python_version()


def _node_id() -> str:
    from fastedge.config import load_config

    return load_config(None, {}).node.id


def _summary(output: bytes) -> list[str]:
    """The start-up block's lines (twistd's timestamp and namespace removed)."""
    lines = []
    for line in output.decode().splitlines():
        if "[fastedge.startup.StartupReport#info] " in line and "node ready" not in line:
            lines.append(line.split("#info] ", 1)[1])
    return lines


@inlineCallbacks
def _run_until_ready(  # type: ignore[no-untyped-def]
    data_dir: str,
    twistd_options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    watch: _Watch | None = None,
):
    """Run a node on free ports until it logs ``node ready``, stop it, and
    return its output.

    :param twistd_options: twistd's own options (before ``fastedge``).
    :param watch: watch the process with this (then it is returned, not the output).
    """
    returned = watch is not None
    if watch is None:
        watch = _Watch(b"node ready")
    args = list(twistd_on_free_ports(data_dir))
    at = args.index("fastedge")
    args[at:at] = twistd_options
    process = reactor.spawnProcess(watch, sys.executable, args, env=env or _env(), path=REPO)
    yield watch.started
    process.signalProcess(signal.SIGTERM)
    yield watch.ended
    return watch if returned else watch.output


class _Watch(protocol.ProcessProtocol):
    """Collects output; fires ``started`` on the first line that says the
    HTTP listener is up, ``ended`` with the exit code."""

    def __init__(self, marker: bytes = b"store ready") -> None:
        self.marker = marker
        self.output = b""
        self.stdout = b""
        self.started: Deferred[None] = Deferred()
        self.ended: Deferred[object] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self.errReceived(data)

    def errReceived(self, data: bytes) -> None:
        self.output += data
        if self.marker in self.output and not self.started.called:
            self.started.callback(None)

    def processEnded(self, reason) -> None:  # type: ignore[no-untyped-def]
        if not self.started.called:
            self.started.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(reason.value)


class TwistdTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_bad_config_fails_before_listening(self):  # type: ignore[no-untyped-def]
        """A bad config file makes twistd exit 2 with exactly one line on
        stderr, ``fastedge: <key>: <reason>``, nothing on stdout (no usage
        text), before it listens on anything or creates the data directory."""
        data_dir = os.path.abspath(self.mktemp())
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(
                f'[node]\ndata_dir = "{data_dir}"\n[http]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
                '[store]\nthreads = "many"\n'
            )
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, TWISTD + ("-n", "--pidfile=", "fastedge", "--config", path), env=_env(), path=REPO
        )
        self.assertEqual((out, err, code), (b"", b"fastedge: store.threads: must be an integer, not 'many'\n", 2))
        self.assertFalse(os.path.exists(data_dir))

    @inlineCallbacks
    def test_bad_option(self):  # type: ignore[no-untyped-def]
        """An unknown option or a bad override is one line on stderr and exit 2."""
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, TWISTD + ("-n", "--pidfile=", "fastedge", "--no-such-option"), env=_env(), path=REPO
        )
        self.assertEqual((out, err, code), (b"", b"fastedge: option --no-such-option not recognized\n", 2))
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, TWISTD + ("-n", "--pidfile=", "fastedge", "--dns-port", "x"), env=_env(), path=REPO
        )
        self.assertEqual((out, err, code), (b"", b"fastedge: --dns-port: must be a port number from 0 to 65535\n", 2))

    @inlineCallbacks
    def test_help_still_prints_usage(self):  # type: ignore[no-untyped-def]
        """``--help`` prints the options' usage on stdout and exits 0."""
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, TWISTD + ("fastedge", "--help"), env=_env(), path=REPO
        )
        self.assertEqual((err, code), (b"", 0))
        self.assertIn(b"--config=", out)
        self.assertIn(b"twistd [options] fastedge [options]", out)

    @inlineCallbacks
    def test_version(self):  # type: ignore[no-untyped-def]
        """``twistd fastedge --version`` prints fastedge's version (with
        Twisted's and Python's) and exits 0."""
        import platform

        import twisted
        from fastedge import __version__

        out, err, code = yield getProcessOutputAndValue(
            sys.executable, TWISTD + ("fastedge", "--version"), env=_env(), path=REPO
        )
        expected = "fastedge {} (Twisted {}, Python {})\n".format(
            __version__, twisted.__version__, platform.python_version()
        )
        self.assertEqual((out.decode(), err, code), (expected, b"", 0))

    @inlineCallbacks
    def test_seeds_without_certificates(self):  # type: ignore[no-untyped-def]
        """A node with seeds and no mesh certificate files exits 2 with one
        line on stderr naming mesh.ca_file and the command that makes it (it
        was a 30-line traceback from inside the mesh's start), and creates
        nothing."""
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
        self.assertEqual((out, code), (b"", 2))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(
            err.startswith(b"fastedge: mesh.ca_file: " + os.path.join(data_dir, "mesh", "ca.pem").encode()), err
        )
        self.assertIn(b"`fastedge-admin certs ca`", err)
        self.assertFalse(os.path.exists(os.path.join(data_dir, "mesh")))

    @inlineCallbacks
    def test_port_in_use(self):  # type: ignore[no-untyped-def]
        """A second node on a port in use (here the mesh port) exits 1 with
        one line on stderr naming the key and the endpoint, before anything
        is written to its data directory: no cluster CA, no database, no key
        (it used to end in a 40-line CannotListenError traceback with a
        fresh CA already on disk)."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "keep.txt"), "w") as f:
            f.write("an operator's file\n")
        before = _listing(data_dir)
        args = list(twistd_on_free_ports(data_dir))
        args[args.index("--mesh") + 1] = "tcp:{}:interface=127.0.0.1".format(port)
        out, err, code = yield getProcessOutputAndValue(args[0], args[1:], env=_env(), path=REPO)
        self.assertEqual(
            (out, err, code),
            (
                b"",
                "fastedge: mesh.endpoint tcp:{}:interface=127.0.0.1: address already in use\n".format(port).encode(),
                1,
            ),
        )
        self.assertEqual(_listing(data_dir), before)

    @inlineCallbacks
    def test_dns_port_in_use(self):  # type: ignore[no-untyped-def]
        """DNS binds UDP and TCP: a UDP port in use is named as such."""
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        data_dir = os.path.abspath(self.mktemp())
        args = list(twistd_on_free_ports(data_dir))
        args[args.index("--dns-port") + 1] = str(port)
        out, err, code = yield getProcessOutputAndValue(args[0], args[1:], env=_env(), path=REPO)
        self.assertEqual(
            (out, err, code),
            (b"", "fastedge: dns.port udp:{}:interface=127.0.0.1: address already in use\n".format(port).encode(), 1),
        )
        self.assertFalse(os.path.exists(data_dir))

    @inlineCallbacks
    def test_startup_summary(self):  # type: ignore[no-untyped-def]
        """At start the node logs one block (version, node, deployment, data
        directory, store, every listener at its real address, what it
        created) and then ``node ready``; no ``Starting factory`` lines. On a
        second start on the same data directory, the secrets are "loaded"."""
        data_dir = os.path.abspath(self.mktemp())
        first = yield _run_until_ready(data_dir)
        summary = _summary(first)
        self.assertEqual(
            summary[0],
            "fastedge {} (Twisted {}, Python {}): node {}, deployment global, region local".format(
                *_versions(), _node_id()
            ),
        )
        self.assertEqual(summary[1], "data directory " + data_dir)
        self.assertEqual(summary[2], "store sqlite: " + os.path.join(data_dir, "fastedge.sqlite3"))
        listening = [line.split(" on ")[0] for line in summary if line.startswith("listening ")]
        self.assertEqual(
            listening, ["listening http", "listening https", "listening dns udp", "listening dns tcp", "listening mesh"]
        )
        for line in summary:
            if line.startswith("listening "):
                address = line.split(" on ")[1].split(" ")[0]
                host, _, port = address.rpartition(":")
                self.assertEqual(host, "127.0.0.1")
                self.assertNotEqual(int(port), 0, line)
        self.assertIn("(certificates: default)", summary[4])
        self.assertEqual(
            summary[-3:],
            [
                "cluster CA created at " + os.path.join(data_dir, "mesh", "ca.pem"),
                "session key created at " + os.path.join(data_dir, "session.key"),
                "self-signed certificate created at " + os.path.join(data_dir, "selfsigned.pem"),
            ],
        )
        self.assertIn(b"node ready in ", first)
        self.assertNotIn(b"Starting factory", first)
        self.assertNotIn(b"Starting protocol", first)
        second = yield _run_until_ready(data_dir)
        self.assertEqual(
            _summary(second)[-3:],
            [
                "cluster CA loaded from " + os.path.join(data_dir, "mesh", "ca.pem"),
                "session key loaded from " + os.path.join(data_dir, "session.key"),
                "self-signed certificate loaded from " + os.path.join(data_dir, "selfsigned.pem"),
            ],
        )

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

    @inlineCallbacks
    def test_json_logs(self):  # type: ignore[no-untyped-def]
        """``--logger fastedge.logs.json_observer`` makes every line a JSON
        object with Twisted's fields, the event's named fields and ``text``;
        ``FASTEDGE_LOG_FILE`` sends them to a file instead of stdout."""
        data_dir = os.path.abspath(self.mktemp())
        output = yield _run_until_ready(data_dir, ("--logger", "fastedge.logs.json_observer"))
        events = [json.loads(line) for line in output.decode().splitlines() if line.strip()]
        for event in events:
            self.assertIn("log_level", event)
            self.assertIn("log_namespace", event)
            self.assertIn("log_time", event)
            self.assertIn("text", event)
        listeners = [e for e in events if e.get("listener")]
        self.assertEqual([e["listener"] for e in listeners], ["http", "https", "dns udp", "dns tcp", "mesh"])
        self.assertEqual(listeners[0]["log_namespace"], "fastedge.startup.StartupReport")
        self.assertEqual(listeners[0]["log_level"]["name"], "info")
        self.assertTrue(listeners[0]["text"].startswith("listening http on 127.0.0.1:"), listeners[0])
        self.assertTrue(any(e["text"].startswith("node ready in ") for e in events))

        # A file the test can watch without polling: the process's stderr.
        watch = yield _run_until_ready(
            data_dir,
            ("--logger", "fastedge.logs.json_observer"),
            env=dict(_env(), FASTEDGE_LOG_FILE="/dev/stderr"),
            watch=_Watch(b"node ready"),
        )
        self.assertEqual(watch.stdout, b"")
        written = [json.loads(line) for line in watch.output.decode().splitlines()]
        self.assertTrue(any(e["text"].startswith("node ready in ") for e in written))
