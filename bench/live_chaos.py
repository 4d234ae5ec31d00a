"""Chaos run of live threads: three real nodes, kill -9 every few seconds.

Three ``twistd fastedge`` nodes on loopback (``bench/mesh_relay.py``'s
cluster: mutual TLS, one shared SQLite file as a deployment shares its
database), all on one CPU; this process on the other. It keeps

- steady posts (``--rate`` per second) through random live nodes to
  ``--threads`` threads (one poster thread, keep-alive connections);
- ``--subscribers`` raw-socket WebSocket subscribers spread over the nodes
  and threads (no compression offered), each one behaving as a browser
  does: when its node dies it reconnects to a live node and re-subscribes
  with ``since`` and ``epoch``; on ``reload: true`` or a ``reset`` it
  reloads the thread (here: reads the thread's comment ids from the shared
  database, which is what the API would give it);
- every ``--kill-every`` seconds, kill -9 of a random node, restarted
  ``--down`` seconds later (4 s: long enough to be declared dead, so its
  channels move to another node, and back after the restart),

for ``--duration`` seconds, then lets the cluster settle and reads every
thread from the store. A post is owed to a subscriber of its thread unless
a reload of that subscriber read it from the store; a *silent gap* is an
owed post the subscriber never received (or a jump in ``seq`` within an
epoch with no ``reset``). Prints one table and one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import select
import signal
import socket
import sqlite3
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from live_client import masked_text  # noqa: E402
from mesh_relay import NODES, PY, REPO, Cluster, Poster, pct  # noqa: E402


class SafePoster(Poster):
    """A :class:`Poster` that notices its node dying (a closed connection
    or no answer within 10 s) instead of waiting for ever."""

    def __init__(self, port: int, tenant: str) -> None:
        super().__init__(port, tenant)
        self.sock.settimeout(10.0)

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise OSError("the node closed the connection")
        self.buf += data

    def read_response(self) -> dict[str, Any]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(self.buf) < len(head) + 4 + length:
            self._more()
        return super().read_response()


@dataclass
class Sub:
    """One subscriber and what it saw."""

    index: int
    url_id: str
    thread: str
    node: str
    sock: socket.socket | None = None
    state: int = 0  # 0 connecting, 1 handshake sent, 2 open
    buf: bytes = b""
    epoch: str | None = None
    seq: int | None = None
    segment: set[str] = field(default_factory=set)
    received: dict[str, float] = field(default_factory=dict)
    covered: set[str] = field(default_factory=set)
    replays: int = 0
    replayed: int = 0
    reloads: int = 0
    resets: int = 0
    duplicates: int = 0
    seq_gaps: int = 0
    reconnects: int = 0
    retry_at: float = 0.0


class Chaos:
    def __init__(self, cluster: Cluster, tenant: str, args: argparse.Namespace) -> None:
        self.cluster = cluster
        self.tenant = tenant
        self.args = args
        self.ep = select.epoll()
        self.subs: dict[int, Sub] = {}
        self.idle: list[Sub] = []
        self.alive = set(NODES)
        self.lock = threading.Lock()
        self.posted: dict[str, tuple[str, float, float]] = {}  # comment id -> (thread, sent, acked)
        self.failed_posts = 0
        self.kills: list[tuple[float, float]] = []
        self.db = sqlite3.connect("file:{}?mode=ro".format(cluster.database), uri=True, check_same_thread=False)
        self.stop_posting = threading.Event()

    # The store, as a reloading client reads it

    def read_thread(self, thread: str) -> set[str]:
        rows = self.db.execute("SELECT id FROM comments WHERE thread_id = ?", (thread,)).fetchall()
        return {r[0] for r in rows}

    # Subscribers

    def live_node(self) -> str:
        with self.lock:
            return random.choice(sorted(self.alive))

    def connect(self, sub: Sub) -> None:
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect_ex(("127.0.0.1", self.cluster.http[sub.node]))
        sub.sock, sub.state, sub.buf = s, 0, b""
        self.subs[s.fileno()] = sub
        self.ep.register(s.fileno(), select.EPOLLOUT)

    def drop(self, sub: Sub) -> None:
        """The subscriber's connection died: reconnect to a live node."""
        assert sub.sock is not None
        fd = sub.sock.fileno()
        self.ep.unregister(fd)
        del self.subs[fd]
        sub.sock.close()
        sub.sock = None
        sub.reconnects += 1
        sub.node = self.live_node()
        sub.retry_at = time.monotonic() + 0.05
        self.idle.append(sub)

    def handshake(self, sub: Sub) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            "GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n".format(key)
        ).encode()

    def subscribe_message(self, sub: Sub) -> bytes:
        msg: dict[str, Any] = {"type": "subscribe", "tenant": self.tenant, "urlId": sub.url_id}
        if sub.seq is not None:
            msg["since"] = sub.seq
            msg["epoch"] = sub.epoch
        return masked_text(json.dumps(msg).encode())

    def reload(self, sub: Sub) -> None:
        sub.covered |= self.read_thread(sub.thread)
        sub.segment = set()

    def on_message(self, sub: Sub, m: dict[str, Any], now: float) -> None:
        kind = m.get("type")
        if kind == "subscribed":
            if m["reload"] or sub.seq is None:
                if sub.seq is not None:
                    sub.reloads += 1
                self.reload(sub)
                sub.epoch, sub.seq = m["epoch"], m["seq"]
            elif m["replayed"]:
                sub.replays += 1
                sub.replayed += m["replayed"]
        elif kind == "reset":
            sub.resets += 1
            self.reload(sub)
            sub.epoch, sub.seq = m["epoch"], m["seq"]
        elif kind == "event":
            m["epoch"] = m["id"].rpartition("-")[0]
            if m["epoch"] != sub.epoch or m["seq"] != (sub.seq or 0) + 1:
                if m["epoch"] == sub.epoch and m["seq"] <= (sub.seq or 0):
                    sub.duplicates += 1
                else:
                    sub.seq_gaps += 1
            comment = m["data"].get("comment", {}).get("id")
            if comment is not None:
                if comment in sub.segment:
                    sub.duplicates += 1
                sub.segment.add(comment)
                sub.received.setdefault(comment, now)
            sub.epoch, sub.seq = m["epoch"], m["seq"]
        elif kind == "error":
            print("  subscriber {} error: {}".format(sub.index, m), file=sys.stderr)

    def read(self, sub: Sub, data: bytes, now: float) -> None:
        buf = sub.buf + data
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1] & 0x7F
            hl = 2
            if b1 == 126:
                if len(buf) - pos < 4:
                    break
                (b1,) = struct.unpack_from("!H", buf, pos + 2)
                hl = 4
            elif b1 == 127:
                if len(buf) - pos < 10:
                    break
                (b1,) = struct.unpack_from("!Q", buf, pos + 2)
                hl = 10
            if len(buf) - pos < hl + b1:
                break
            payload = buf[pos + hl : pos + hl + b1]
            pos += hl + b1
            if b0 & 0x0F == 1:
                self.on_message(sub, json.loads(payload), now)
        sub.buf = buf[pos:]

    def pump(self, timeout: float) -> None:
        now = time.monotonic()
        for sub in [s for s in self.idle if s.retry_at <= now]:
            self.idle.remove(sub)
            self.connect(sub)
        for fd, ev in self.ep.poll(timeout):
            sub = self.subs.get(fd)
            if sub is None or sub.sock is None:
                continue
            now = time.monotonic()
            try:
                if sub.state == 0:
                    if ev & (select.EPOLLERR | select.EPOLLHUP):
                        raise OSError("refused")
                    sub.sock.send(self.handshake(sub))
                    sub.state = 1
                    self.ep.modify(fd, select.EPOLLIN)
                    continue
                data = sub.sock.recv(262144)
                if not data:
                    raise OSError("closed")
            except OSError:
                self.drop(sub)
                continue
            if sub.state == 1:
                sub.buf += data
                head, sep, rest = sub.buf.partition(b"\r\n\r\n")
                if not sep:
                    continue
                if not head.startswith(b"HTTP/1.1 101"):
                    self.drop(sub)
                    continue
                sub.state = 2
                sub.buf = b""
                sub.sock.send(self.subscribe_message(sub))
                data = rest
            self.read(sub, data, now)

    # Posts and kills (threads of their own)

    def poster(self, threads: list[tuple[str, str]]) -> None:
        posters: dict[str, SafePoster] = {}
        interval = 1.0 / self.args.rate
        next_at = time.monotonic()
        n = 0
        while not self.stop_posting.is_set():
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            node = self.live_node()
            url_id, thread = random.choice(threads)
            n += 1
            try:
                if node not in posters:
                    posters[node] = SafePoster(self.cluster.http[node], self.tenant)
                sent = time.monotonic()
                answer = posters[node].post(url_id, "chaos {}".format(n))
                acked = time.monotonic()
            except (OSError, SystemExit, ValueError):
                self.failed_posts += 1
                posters.pop(node, None)
                continue
            comment = answer.get("comment", answer)
            self.posted[comment["id"]] = (thread, sent, acked)

    def killer(self, until: float) -> None:
        next_kill = self.t0
        while True:
            # Every --kill-every seconds from the start (a slow restart does
            # not stretch the cadence).
            next_kill += self.args.kill_every
            time.sleep(max(0.0, next_kill - time.monotonic()))
            if time.monotonic() > until:
                return
            victim = random.choice(NODES)
            with self.lock:
                self.alive.discard(victim)
            killed = time.monotonic()
            self.cluster.signal(victim, signal.SIGKILL)
            # Down long enough to be declared dead: its channels move to
            # another node, then (after the restart) back.
            time.sleep(self.args.down)
            self.cluster.start(victim)
            with self.lock:
                self.alive.add(victim)
            print(
                "  killed {} at {:.1f} s, back after {:.1f} s".format(
                    victim, killed - self.t0, time.monotonic() - killed
                ),
                file=sys.stderr,
            )
            self.kills.append((killed, time.monotonic()))

    # The run

    def run(self, threads: list[tuple[str, str]]) -> dict[str, Any]:
        args = self.args
        for i in range(args.subscribers):
            url_id, thread = threads[i % len(threads)]
            sub = Sub(i, url_id, thread, NODES[i % len(NODES)])
            self.connect(sub)
        deadline = time.monotonic() + 60
        while sum(1 for s in self.subs.values() if s.seq is not None) < args.subscribers:
            if time.monotonic() > deadline:
                raise SystemExit("subscribers did not all subscribe")
            self.pump(0.01)
        self.t0 = time.monotonic()
        end = self.t0 + args.duration
        posting = threading.Thread(target=self.poster, args=(threads,), daemon=True)
        killing = threading.Thread(target=self.killer, args=(end,), daemon=True)
        posting.start()
        killing.start()
        while time.monotonic() < end:
            self.pump(0.01)
        self.stop_posting.set()
        posting.join(30)
        killing.join(60)
        # Settle: re-syncs, the forward timeout (5 s), reconnects.
        settle = time.monotonic() + args.settle
        while time.monotonic() < settle:
            self.pump(0.01)
        return self.report(threads)

    def report(self, threads: list[tuple[str, str]]) -> dict[str, Any]:
        everyone: list[Sub] = list(self.subs.values()) + self.idle
        by_thread: dict[str, list[Sub]] = {}
        for sub in everyone:
            by_thread.setdefault(sub.thread, []).append(sub)
        stored = {thread: self.read_thread(thread) for _, thread in threads}
        acked = {c: v for c, v in self.posted.items() if c in stored[v[0]]}
        delivered_all = 0
        silent = 0
        latencies: list[float] = []
        windows = [(k, back + self.args.window) for k, back in self.kills]
        for comment, (thread, sent, _acked) in acked.items():
            everybody = True
            for sub in by_thread[thread]:
                if comment in sub.received:
                    if not any(a <= sent <= b for a, b in windows):
                        latencies.append((sub.received[comment] - sent) * 1000.0)
                else:
                    everybody = False
                    if comment not in sub.covered:
                        silent += 1
            delivered_all += everybody
        return {
            "duration_s": self.args.duration,
            "kills": len(self.kills),
            "subscribers": len(everyone),
            "threads": len(threads),
            "acknowledged_posts": len(acked),
            "failed_posts": self.failed_posts,
            "delivered_to_every_subscriber": delivered_all,
            "gaps_recovered_by_replay": sum(s.replays for s in everyone),
            "events_replayed": sum(s.replayed for s in everyone),
            "reloads": sum(s.reloads + s.resets for s in everyone),
            "reloads_answer": sum(s.reloads for s in everyone),
            "resets": sum(s.resets for s in everyone),
            "reconnects": sum(s.reconnects for s in everyone),
            "silent_gaps": silent + sum(s.seq_gaps for s in everyone),
            "silent_missing_posts": silent,
            "seq_jumps": sum(s.seq_gaps for s in everyone),
            "duplicates": sum(s.duplicates for s in everyone),
            "p50_ms": pct(latencies, 50) if latencies else None,
            "p99_ms": pct(latencies, 99) if latencies else None,
            "deliveries_timed": len(latencies),
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--threads", type=int, default=20)
    ap.add_argument("--subscribers", type=int, default=300)
    ap.add_argument("--rate", type=float, default=20.0, help="posts per second")
    ap.add_argument("--kill-every", type=float, default=10.0)
    ap.add_argument("--down", type=float, default=4.0, help="seconds a killed node stays down (DEAD after 2.5 s)")
    ap.add_argument(
        "--window", type=float, default=2.0, help="seconds after a restart still counted as the kill window"
    )
    ap.add_argument("--settle", type=float, default=12.0)
    ap.add_argument("--node-cpu", default="0")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    random.seed(args.seed)
    import subprocess

    workdir = tempfile.mkdtemp(prefix="fastedge-live-chaos-")
    cluster = Cluster(workdir, args.node_cpu)
    try:
        for node in NODES:
            cluster.start(node)
        cluster.wait(cluster.converged, "convergence")
        created = subprocess.run(
            [PY, "-m", "fastedge.admin", "--config", cluster.config("a"), "tenant", "create", "Chaos", "--json"],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        tenant = json.loads(created.stdout)["tenantId"]
        poster = Poster(cluster.http["a"], tenant)
        threads = []
        db = sqlite3.connect("file:{}?mode=ro".format(cluster.database), uri=True)
        for i in range(args.threads):
            url_id = "https://chaos.example/t{}".format(i)
            poster.post(url_id, "first")
            (thread,) = db.execute("SELECT id FROM threads WHERE url_id = ?", (url_id,)).fetchone()
            threads.append((url_id, thread))
        db.close()
        chaos = Chaos(cluster, tenant, args)
        print(
            "live chaos: {} s, {} subscribers, {} threads, {} posts/s, kill -9 every {} s (logs in {})".format(
                args.duration, args.subscribers, args.threads, args.rate, args.kill_every, workdir
            ),
            file=sys.stderr,
        )
        result = chaos.run(threads)
    finally:
        cluster.stop_all()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
