"""The body of ``bench/footprint``: a node's memory, idle and with 1,000 idle
WebSocket subscribers, before (``BASELINE``) and after (this tree), beside
Node ``ws`` from the same run.

Five servers, one after the other, each pinned to CPU 0 (the subscribers'
client runs on CPU 1):

- fastedge on its defaults (``twistd fastedge``, the shipped config with
  only its ports and data directory changed: embedded SQLite store, TLS on
  with its self-signed certificate, no CDN origin), from the baseline tree
  and from this one;
- fastedge on a full config: the PostgreSQL backend (a real primary,
  started by the test suite's harness), an S3 CDN origin for a tenant, TLS;
  from both trees;
- Node ``ws`` (``bench/ws_broadcast.js``), the peer of ``bench/live-fanout``.

``BASELINE`` is a git ref (default ``main``) checked out in a temporary
worktree; ``BASELINE=none`` skips it.

Bytecode: each tree's ``fastedge`` is compiled to ``.pyc`` first
(``compileall``, into its ``__pycache__``, which git ignores), as pip does
when it installs the package, so the node is measured as it runs when
installed. This development environment sets ``PYTHONDONTWRITEBYTECODE``,
and without ``.pyc`` files every start compiles fastedge's ~150 modules
from source, which leaves ~4.5 MB more in the process; ``BYTECODE=0``
measures that (it removes the trees' ``fastedge`` ``__pycache__`` first).

The node runs from ``.venv-node``, a virtualenv holding only fastedge's
runtime requirements (setup.cfg's ``install_requires``, at the versions of
``.venv``; ``bench/footprint`` makes it), as an installed node runs (a
baseline whose requirements differ runs from a venv made for its own:
:func:`node_venv`): the
development ``.venv`` also holds the test and lint tools, and a package one
of them brings is imported by a node when present (autobahn imports
``click``, which black and schemathesis install: ~0.9 MiB). ``NODE_VENV``
names another (``NODE_VENV=.venv`` measures the development one).

For each: RSS once started (after a second to settle), then after 1,000
WebSocket clients have connected and (fastedge) subscribed to one thread.
The clients connect from 127.0.0.2-5 so that the node's default limit of
connections per address (1,000) is not what is measured.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

import benchlib  # noqa: E402
from live_client import masked_text, rss_kib  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from fastedge.store.model import ReadPreference  # noqa: E402
from fastedge.testing.fakes import run_inline  # noqa: E402
from tests.support.ports import free_ports  # noqa: E402

SUBSCRIBERS = int(os.environ.get("SUBSCRIBERS", "1000"))
BASELINE = os.environ.get("BASELINE", "main")
BYTECODE = os.environ.get("BYTECODE", "1") != "0"
NODE_VENV = os.path.join(REPO, os.environ.get("NODE_VENV", ".venv-node"))
URL_ID = "https://bench.test/footprint"
PRIMARY = ReadPreference.PRIMARY


def _value(d):  # type: ignore[no-untyped-def]
    out: list = []
    d.addBoth(out.append)
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def seed(store) -> str:  # type: ignore[no-untyped-def]
    """A tenant with one thread in ``store`` (opened and closed here); its id."""
    store.open()
    try:
        tenant = _value(store.create_tenant("Bench", "global", created_ms=1, read_preference=PRIMARY)).value
        _value(store.upsert_thread(tenant.id, URL_ID, created_ms=1, read_preference=PRIMARY))
        return str(tenant.id)
    finally:
        store.close()


def node_config(workdir: str, extra: str = "") -> tuple[str, int]:
    """The shipped defaults with loopback ports of their own; (text, http port)."""
    http, https, mesh, dns = free_ports(4)
    text = (
        "[node]\ndata_dir = {data}\n"
        '[http]\nendpoint = "tcp:{http}:interface=127.0.0.1:backlog=1024"\n'
        '[tls]\nendpoint = "tcp:{https}:interface=127.0.0.1:backlog=1024"\n'
        '[mesh]\nendpoint = "tcp:{mesh}:interface=127.0.0.1"\n'
        "[dns]\nport = {dns}\n"
    ).format(data=json.dumps(os.path.join(workdir, "data")), http=http, https=https, mesh=mesh, dns=dns)
    return text + extra, http


def subscribe_all(port: int, subscribe: bytes | None, n: int) -> list[socket.socket]:
    """Open ``n`` WebSocket connections to ``/live`` (``/`` for Node), each
    sending ``subscribe`` once open and waiting for its answer."""
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    state: dict[int, int] = {}
    bufs: dict[int, bytes] = {}
    upgrade = (
        "GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % base64.b64encode(os.urandom(16)).decode()
    ).encode()
    frame = masked_text(subscribe) if subscribe else b""
    opened = ready = in_flight = 0
    deadline = time.monotonic() + 120
    while ready < n:
        if time.monotonic() > deadline:
            raise SystemExit("timed out connecting: {} of {}".format(ready, n))
        while opened < n and in_flight < 200:
            s = socket.socket()
            s.bind(("127.0.0.%d" % (2 + opened % 4), 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks[s.fileno()] = s
            state[s.fileno()] = 0
            bufs[s.fileno()] = b""
            ep.register(s.fileno(), select.EPOLLOUT)
            opened += 1
            in_flight += 1
        for fd, _ in ep.poll(0.01):
            s = socks[fd]
            if state[fd] == 0:
                s.send(upgrade)
                state[fd] = 1
                ep.modify(fd, select.EPOLLIN)
                continue
            data = s.recv(65536)
            if not data:
                raise SystemExit("the server closed a connection during setup")
            bufs[fd] += data
            if state[fd] == 1:
                head, sep, rest = bufs[fd].partition(b"\r\n\r\n")
                if not sep:
                    continue
                if not head.startswith(b"HTTP/1.1 101"):
                    raise SystemExit("handshake refused: %r" % head[:120])
                state[fd] = 2
                bufs[fd] = rest
                if frame:
                    s.send(frame)
            if state[fd] == 2 and (not frame or b'"subscribed"' in bufs[fd]):
                state[fd] = 3
                bufs[fd] = b""
                ep.unregister(fd)
                ready += 1
                in_flight -= 1
    ep.close()
    return list(socks.values())


def private_kib(pid: int) -> int:
    """The process's own pages (private clean and dirty), without the
    library code it shares with the page cache and with other processes
    (RSS counts both: cryptography's Rust library alone holds ~7 MB of
    shared code pages in a node)."""
    total = 0
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def measure(pid: int, port: int, subscribe: bytes | None) -> dict[str, float]:
    time.sleep(1.0)
    started, started_private = rss_kib(pid), private_kib(pid)
    socks = subscribe_all(port, subscribe, SUBSCRIBERS)
    time.sleep(1.5)
    loaded, loaded_private = rss_kib(pid), private_kib(pid)
    for s in socks:
        s.close()
    return {
        "start_mib": started / 1024,
        "subscribed_mib": loaded / 1024,
        "start_private_mib": started_private / 1024,
        "subscribed_private_mib": loaded_private / 1024,
    }


def prepare_bytecode(tree: str) -> None:
    """Compile ``tree``'s fastedge to ``.pyc`` (or, with ``BYTECODE=0``,
    remove what an earlier run compiled): see the module docstring."""
    sources = [os.path.join(tree, "fastedge"), os.path.join(tree, "twisted", "plugins")]
    if BYTECODE:
        subprocess.run([sys.executable, "-m", "compileall", "-q", *sources], check=True)
        return
    for source in sources:
        for root, dirs, _ in os.walk(source):
            if "__pycache__" in dirs:
                shutil.rmtree(os.path.join(root, "__pycache__"))
                dirs.remove("__pycache__")


def install_requires(tree: str) -> list[str]:
    """``tree``'s runtime requirements (setup.cfg's install_requires)."""
    parser = configparser.ConfigParser()
    parser.read(os.path.join(tree, "setup.cfg"))
    lines = (line.strip() for line in parser["options"]["install_requires"].splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def node_venv(tree: str) -> str:
    """The virtualenv ``tree``'s node runs from: :data:`NODE_VENV` when the
    tree needs what this one does; else (a baseline from before a
    requirement changed, e.g. one that still needs SQLAlchemy) one made for
    its own requirements, at the same pinned versions, kept as
    ``.venv-node-<hash>`` and made once."""
    wanted = install_requires(tree)
    if wanted == install_requires(REPO):
        return NODE_VENV
    venv = os.path.join(REPO, ".venv-node-" + hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:12])
    if not os.path.exists(os.path.join(venv, "bin", "twistd")):
        print(
            f"bench/footprint: making {os.path.basename(venv)} for the baseline's requirements (~30 s)", file=sys.stderr
        )
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv], check=True)
        with open(os.path.join(venv, "requirements.txt"), "w") as f:
            f.write("\n".join(wanted) + "\n")
        frozen = subprocess.run(
            [os.path.join(REPO, ".venv", "bin", "python"), "-m", "pip", "freeze", "--exclude-editable"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        with open(os.path.join(venv, "constraints.txt"), "w") as f:
            f.writelines(line + "\n" for line in frozen.splitlines() if not line.lower().startswith("fastedge"))
        subprocess.run(
            [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            + ["-r", os.path.join(venv, "requirements.txt"), "-c", os.path.join(venv, "constraints.txt")],
            check=True,
        )
    return venv


def run_fastedge(extra: str, store_factory, tree: str = REPO) -> dict[str, float]:  # type: ignore[no-untyped-def]
    workdir = tempfile.mkdtemp(prefix="fe-footprint-")
    text, port = node_config(workdir, extra)
    tenant = seed(store_factory(workdir))
    node = benchlib.start_node(workdir, text, port, tree=tree, venv=node_venv(tree))
    try:
        sub = json.dumps({"type": "subscribe", "tenant": tenant, "urlId": URL_ID}).encode()
        return measure(node.pid, port, sub)
    finally:
        benchlib.stop(node)


def run_node_ws() -> dict[str, float]:
    server = subprocess.Popen(
        ["taskset", "-c", benchlib.NODE_CPU, "node", os.path.join(REPO, "bench", "ws_broadcast.js"), "200"],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        return measure(server.pid, int(info["port"]), None)
    finally:
        benchlib.stop(server)  # type: ignore[arg-type]


def main() -> None:
    rows: dict[str, dict[str, float]] = {}
    workdir = tempfile.mkdtemp(prefix="fe-footprint-trees-")
    base = benchlib.baseline_tree(workdir, BASELINE)
    trees = ([(f"{BASELINE} (before)", base)] if base is not None else []) + [("this tree", REPO)]
    try:
        for _, tree in trees:
            prepare_bytecode(tree)

        def sqlite_store(workdir: str):  # type: ignore[no-untyped-def]
            from fastedge.store.sqlite import SQLiteStore

            path = os.path.join(workdir, "data", "fastedge.sqlite3")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return SQLiteStore(path, run=run_inline, clock=Clock(), busy_timeout_seconds=5.0, pool_size=1)

        for label, tree in trees:
            rows[f"defaults, {label}"] = run_fastedge("", sqlite_store, tree)

        from tests.support.postgres import PostgresCluster, PostgresUnavailable

        try:
            cluster = PostgresCluster()
        except PostgresUnavailable as e:
            print("PostgreSQL is not installed ({}); the full config is skipped".format(e), file=sys.stderr)
            cluster = None
        if cluster is not None:
            try:
                primary = cluster.start_primary()
                dsn = primary.dsn()

                def pg_store(workdir: str):  # type: ignore[no-untyped-def]
                    from fastedge.store.postgresql import PostgresStore

                    return PostgresStore([dsn], None, run=run_inline, clock=Clock())

                # The origin is never reached while idle; the config must only name one.
                full = (
                    '[store]\nbackend = "postgresql"\n'
                    "[store.postgresql]\nprimaries = [{}]\n"
                    '[cdn.origins.default]\nendpoint = "http://127.0.0.1:9"\nregion = "us-east-1"\n'
                    'access_key_id = "AKIDEXAMPLE"\nsecret_access_key = "bench-secret"\n'
                ).format(json.dumps(dsn))
                for label, tree in trees:
                    rows[f"full (PostgreSQL, S3 origin, TLS), {label}"] = run_fastedge(full, pg_store, tree)
            finally:
                cluster.destroy()
    finally:
        if base is not None:
            benchlib.drop_tree(base)
    rows["node ws"] = run_node_ws()

    print()
    print(
        "node memory (RSS), %d idle WebSocket subscribers; fastedge %s, in %s"
        % (
            SUBSCRIBERS,
            "from .pyc (as installed)" if BYTECODE else "compiling its sources at start (BYTECODE=0)",
            os.path.relpath(NODE_VENV, REPO),
        )
    )
    print("(RSS; in brackets the private part: RSS less the library code shared with other processes)")
    print("%-52s %16s %20s %14s" % ("", "started MiB", "+subscribers MiB", "KiB/subscriber"))
    for name, r in rows.items():
        per = (r["subscribed_mib"] - r["start_mib"]) * 1024 / SUBSCRIBERS
        print(
            "%-52s %7.1f (%6.1f) %11.1f (%6.1f) %14.2f"
            % (name, r["start_mib"], r["start_private_mib"], r["subscribed_mib"], r["subscribed_private_mib"], per)
        )
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
