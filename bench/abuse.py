"""Abuse benchmark: the resource-exhaustion attacks of issue 11, replayed
against a real node, one after the other.

A ``twistd fastedge`` node (HTTP, TLS with h2, /live) on loopback, pinned
to one CPU; this process (the attackers) and a monitor process on another.
Each attack gets a fresh node (``--one-node``: all against the same one),
because CPython rarely gives memory back to the system: one attack's
high-water mark would hide the next one's growth. For each attack the
monitor samples, every 100 ms, the node's RSS (``VmRSS`` in
``/proc/<pid>/status``) and the latency of a ``GET /healthz`` made on a
fresh connection from a third address (127.0.9.9, in another /24 than the
attackers), so the figures say what one hostile client costs everyone
else. Each attack is bounded in time and in bytes; every socket is on
127.0.0.0/8.

Attacks (``--only 1,3`` runs a subset):

1. ``h2-after-error``: TLS + ALPN h2, a SETTINGS frame of the wrong length
   (or, with ``--h2-variant continuation``, a HEADERS frame followed by
   more than 64 CONTINUATION frames), then bytes at full speed.
2. ``slow-headers``: N connections (two worker processes, one per source
   address 127.0.0.2 and 127.0.0.3) each sending a request line, then one
   header line every few seconds, never finishing the headers.
3. ``ws-pings``: one WebSocket client sending 125-byte pings as fast as
   it can, never reading its pongs.
4. ``ws-empty-continuations``: a text frame with FIN=0, then empty
   continuation frames without end.
5. ``live-slow-consumer``: a subscriber with a 4 KB receive buffer that
   never reads while 5 KB comments are posted to its thread.
6. ``nested-json``: deeply nested JSON bodies on the comment route (must
   answer 400, not 500) and 2,040 nested ``[`` in one /live text frame (must
   close with 4400).

For each: RSS before / peak / after (after = once the attacker is gone and
the node had a moment to settle), the monitor's /healthz p50/p99/max, and
how the node ended the attacker's connection(s) (close code, GOAWAY, FIN,
RST, or still open when the attack's time was up). Targets are printed
beside the figures: RSS growth under 50 MB per attack, /healthz under
100 ms throughout. Ends with a markdown table and writes the raw figures to
``bench/out/abuse-*.json``.

The WebSocket handshakes offer no extension (no permessage-deflate).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import resource
import select
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

from benchlib import start_node, stop  # noqa: E402

from tests.support.ports import free_ports

PY = os.path.join(REPO, ".venv", "bin", "python")
HOST = "127.0.0.1"
#: The third client: another /24 than every attacker (127.0.0.x), so a
#: per-/24 connection limit does not count it with them.
PROBE_SOURCE = "127.0.9.9"
MB = 1024 * 1024

#: Targets from issue 11, printed beside the figures.
TARGET_RSS_MB = 50.0
TARGET_HEALTHZ_MS = 100.0


# -- the monitor process ---------------------------------------------------


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def healthz_once(port: int, timeout: float) -> tuple[float, str]:
    """One ``GET /healthz`` on a new connection from PROBE_SOURCE: (seconds, "" or the error)."""
    t0 = time.monotonic()
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.bind((PROBE_SOURCE, 0))
        s.connect((HOST, port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - t0
        if not data:
            return elapsed, "closed without an answer"
        if not data.startswith(b"HTTP/1.1 200"):
            return elapsed, "status " + data[9:12].decode("latin-1", "replace")
        return elapsed, ""
    except OSError as e:
        return time.monotonic() - t0, type(e).__name__
    finally:
        s.close()


def monitor_main(conn: multiprocessing.connection.Connection, pid: int, port: int, every: float) -> None:
    """Runs in its own process: waits for "start", samples RSS and /healthz
    every ``every`` seconds until "stop", sends the samples back."""
    while True:
        command = conn.recv()
        if command == "quit":
            return
        samples: list[tuple[float, int, float, str]] = []
        t_start = time.monotonic()
        while not conn.poll(0):
            t0 = time.monotonic()
            try:
                rss = rss_kib(pid)
            except (OSError, RuntimeError):
                rss = 0
            latency, error = healthz_once(port, timeout=1.0)
            samples.append((t0 - t_start, rss, latency, error))
            rest = every - (time.monotonic() - t0)
            if rest > 0:
                conn.poll(rest)
        conn.recv()  # "stop"
        conn.send(samples)


class Monitor:
    def __init__(self, pid: int, port: int, cpu: str | None) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=monitor_main, args=(child, pid, port, 0.1), daemon=True)
        self.process.start()
        if cpu is not None and self.process.pid is not None:
            os.sched_setaffinity(self.process.pid, {int(c) for c in cpu.split(",")})

    def start(self) -> None:
        self.conn.send("start")

    def stop(self) -> list[tuple[float, int, float, str]]:
        self.conn.send("stop")
        samples: list[tuple[float, int, float, str]] = self.conn.recv()
        return samples

    def close(self) -> None:
        self.conn.send("quit")
        self.process.join(5)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))] if s else float("nan")


# -- wire helpers -----------------------------------------------------------


def ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_parse(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete server frames in ``buf`` as (opcode, payload), and the rest."""
    out = []
    pos = 0
    while len(buf) - pos >= 2:
        n = buf[pos + 1] & 0x7F
        hl = 2
        if n == 126:
            if len(buf) - pos < 4:
                break
            n, hl = struct.unpack("!H", buf[pos + 2 : pos + 4])[0], 4
        elif n == 127:
            if len(buf) - pos < 10:
                break
            n, hl = struct.unpack("!Q", buf[pos + 2 : pos + 10])[0], 10
        if len(buf) - pos < hl + n:
            break
        out.append((buf[pos] & 0x0F, buf[pos + hl : pos + hl + n]))
        pos += hl + n
    return out, buf[pos:]


def ws_connect(port: int, source: str, rcvbuf: int = 0, timeout: float = 10.0) -> tuple[socket.socket, bytes]:
    """A blocking WebSocket client on /live (no extension offered): the
    socket and any bytes read past the handshake."""
    s = socket.socket()
    if rcvbuf:
        # Before connect, so the window the node sees is small from the start.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect((HOST, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            "GET /live HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, key)
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("the node closed a WebSocket handshake")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit("WebSocket handshake refused: %r" % head[:200])
    return s, rest


def close_code(payload: bytes) -> str:
    if len(payload) >= 2:
        code = struct.unpack("!H", payload[:2])[0]
        reason = payload[2:].decode("utf-8", "replace")
        return "close %d%s" % (code, " (%s)" % reason if reason else "")
    return "close (no code)"


def drain_ws(s: socket.socket, seconds: float, budget: int = 512 * MB) -> dict[str, Any]:
    """Read what the node sent (bounded by time and bytes): the close frame
    if one came, and whether the stream ended with FIN, RST or not at all."""
    s.setblocking(False)
    deadline = time.monotonic() + seconds
    buf = b""
    got = 0
    frames = 0
    close = ""
    end = ""
    while time.monotonic() < deadline and got < budget:
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            continue
        try:
            chunk = s.recv(1 << 20)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            end = "RST"
            break
        except OSError as e:
            end = errno.errorcode.get(e.errno or 0, str(e))
            break
        if not chunk:
            end = "FIN"
            break
        got += len(chunk)
        parsed, buf = ws_parse(buf + chunk)
        frames += len(parsed)
        for opcode, payload in parsed:
            if opcode == 8 and not close:
                close = close_code(payload)
    return {"close": close, "end": end or "open", "read_bytes": got, "frames_read": frames}


def describe_end(during: str, drained: dict[str, Any]) -> str:
    """One phrase: how the node ended a WebSocket attacker's connection."""
    parts = []
    if drained.get("close"):
        parts.append(drained["close"])
    if during:
        parts.append(during)
    elif drained["end"] != "open":
        parts.append(drained["end"])
    else:
        parts.append("not closed (open at the end)")
    if drained.get("read_bytes"):
        size = drained["read_bytes"]
        parts.append(
            "{} ({} frames) still to read after the attack".format(
                "{:.1f} MB".format(size / MB) if size >= MB else "{} bytes".format(size), drained["frames_read"]
            )
        )
    return ", ".join(parts)


# -- the node ---------------------------------------------------------------


def node_config(workdir: str, http: int, tls: int, mesh: int) -> str:
    return (
        '[node]\nid = "abuse"\ndata_dir = "{d}"\naddresses = ["127.0.0.1"]\n'
        '[http]\nendpoint = "tcp:{http}:interface=127.0.0.1:backlog=1024"\n'
        '[tls]\nendpoint = "tcp:{tls}:interface=127.0.0.1:backlog=1024"\n'
        "[api]\nwrites_per_minute_per_session = 1000000\nwrites_per_minute_per_ip = 1000000\n"
        "[dns]\nport = 0\n"
        '[mesh]\nendpoint = "tcp:{mesh}:interface=127.0.0.1"\n'
    ).format(d=os.path.join(workdir, "data"), http=http, tls=tls, mesh=mesh)


class Node:
    def __init__(self, workdir: str, cpu: str) -> None:
        os.makedirs(workdir, exist_ok=True)
        self.dir = workdir
        self.http, self.tls, mesh = free_ports(3)
        self.config = os.path.join(workdir, "node-{}.toml".format(self.http))
        self.log = os.path.join(workdir, "node-{}.log".format(self.http))
        self.process = start_node(workdir, node_config(workdir, self.http, self.tls, mesh), self.http, cpu=cpu)
        self.pid = self.process.pid
        created = subprocess.run(
            [PY, "-m", "fastedge.admin", "--config", self.config, "tenant", "create", "Abuse", "--json"],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        self.tenant: str = json.loads(created.stdout)["tenantId"]

    def tracebacks(self) -> int:
        with open(self.log, "rb") as f:
            text = f.read()
        return text.count(b"Traceback") + text.count(b"Unhandled Error")

    def metric(self, name: str) -> float:
        """The sum of every sample of ``name`` on /metrics."""
        s = socket.create_connection((HOST, self.http), timeout=10)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        total = 0.0
        for m in re.finditer(rb"^" + re.escape(name.encode()) + rb"(?:\{[^}]*\})? (\S+)$", data, re.M):
            total += float(m.group(1))
        return total

    def close(self) -> None:
        stop(self.process)


class Http:
    """A keep-alive HTTP/1.1 client (blocking) that keeps the session cookie."""

    def __init__(self, port: int, source: str = HOST) -> None:
        self.sock = socket.socket()
        self.sock.settimeout(30)
        self.sock.bind((source, 0))
        self.sock.connect((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.cookie = ""
        self.buf = b""

    def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        head = "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n".format(
            method, path, content_type, len(body), "Cookie: {}\r\n".format(self.cookie) if self.cookie else ""
        )
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the node")
            self.buf += chunk
        head_bytes, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head_bytes.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            if name.lower() == b"set-cookie" and value.strip().startswith(b"fe_session="):
                self.cookie = value.strip().split(b";")[0].decode()
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the node")
            rest += chunk
        self.buf = rest[length:]
        return int(head_bytes.split(b" ", 2)[1]), rest[:length]

    def close(self) -> None:
        self.sock.close()


def comments_path(tenant: str, url_id: str) -> str:
    from urllib.parse import quote

    return "/api/v1/{}/comments?urlId={}".format(tenant, quote(url_id, safe=""))


# -- the attacks ------------------------------------------------------------


class Limits:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.h2_seconds = 10.0 if quick else 20.0
        self.h2_bytes = 300 * MB
        # Opening 20,000 connections takes 5-30 s on a busy 2-core machine;
        # the hold starts once every connection was tried.
        self.slow_connect_seconds = 30.0
        self.slow_seconds = 10.0 if quick else 45.0
        self.slow_connections = 20_000
        self.slow_interval = 5.0
        self.ws_seconds = 10.0 if quick else 20.0
        self.ws_bytes = 1024 * MB
        self.consumer_comments = 2000
        self.consumer_seconds = 20.0 if quick else 45.0
        self.settle = 2.0 if quick else 3.0


def h2_frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack("!I", n)[1:] + bytes([kind, flags]) + struct.pack("!I", stream) + payload


H2_ERRORS = {
    0: "NO_ERROR",
    1: "PROTOCOL_ERROR",
    2: "INTERNAL_ERROR",
    3: "FLOW_CONTROL_ERROR",
    6: "FRAME_SIZE_ERROR",
    11: "ENHANCE_YOUR_CALM",
}


def write_error(e: BaseException) -> str:
    """How a write or read error says the node ended the connection."""
    if isinstance(e, ConnectionResetError):
        return "RST"
    if isinstance(e, BrokenPipeError):
        return "closed (EPIPE on write)"
    return type(e).__name__


def attack_h2(node: Node, limits: Limits, variant: str) -> dict[str, Any]:
    """TLS + h2, a connection error, then bytes at full speed."""

    async def run() -> dict[str, Any]:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection(
            HOST, node.tls, ssl=ctx, server_hostname="localhost", local_addr=("127.0.0.4", 0)
        )
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if alpn != "h2":
            raise SystemExit("the node did not negotiate h2 (ALPN {!r})".format(alpn))
        opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b"")
        if variant == "settings":
            # A SETTINGS frame's length must be a multiple of 6.
            opening += h2_frame(4, 0, 0, b"\x00" * 5)
        else:
            # A minimal HPACK block split over 100 CONTINUATION frames (the node allows 64).
            opening += h2_frame(1, 0, 1, b"\x82")  # HEADERS without END_HEADERS
            opening += b"".join(h2_frame(9, 0, 1, b"\x84") for _ in range(100))
        writer.write(opening)
        t0 = time.monotonic()
        state: dict[str, Any] = {"goaways": 0, "goaway_codes": set(), "end": "", "end_at": None, "first_goaway": None}

        async def read() -> None:
            buf = b""
            try:
                while True:
                    chunk = await reader.read(1 << 16)
                    if not chunk:
                        state["end"] = state["end"] or "FIN"
                        break
                    buf += chunk
                    while len(buf) >= 9:
                        n = int.from_bytes(buf[:3], "big")
                        if len(buf) < 9 + n:
                            break
                        if buf[3] == 7:
                            state["goaways"] += 1
                            if state["first_goaway"] is None:
                                state["first_goaway"] = time.monotonic() - t0
                            code = struct.unpack("!I", buf[13:17])[0] if n >= 8 else -1
                            state["goaway_codes"].add(H2_ERRORS.get(code, str(code)))
                        buf = buf[9 + n :]
            except (ConnectionResetError, ssl.SSLError, OSError) as e:
                state["end"] = state["end"] or write_error(e)
            if state["end_at"] is None:
                state["end_at"] = time.monotonic() - t0

        reading = asyncio.ensure_future(read())
        chunk = bytes(1 << 16)
        sent = 0
        deadline = t0 + limits.h2_seconds
        try:
            while sent < limits.h2_bytes and time.monotonic() < deadline and not reading.done():
                writer.write(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                sent += len(chunk)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError) as e:
            state["end"] = state["end"] or write_error(e)
            state["end_at"] = state["end_at"] or time.monotonic() - t0
        sent_for = time.monotonic() - t0
        if not reading.done():
            # Byte budget spent: hold the connection, reading, until the time
            # is up, to see whether the node closes it.
            try:
                await asyncio.wait_for(asyncio.shield(reading), max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                pass
        elapsed = time.monotonic() - t0
        reading.cancel()
        writer.transport.abort()
        goaway = "GOAWAY {} x{}".format("/".join(sorted(state["goaway_codes"])), state["goaways"])
        if state["goaways"] == 0:
            goaway = "no GOAWAY"
        if state["end"]:
            how = "{}, then {} at {:.1f} s".format(goaway, state["end"], state["end_at"])
        else:
            how = "{}, connection still open after {:.1f} s".format(goaway, elapsed)
        return {
            "sent_bytes": sent,
            "seconds": round(elapsed, 2),
            "sending_seconds": round(sent_for, 2),
            "closed": how,
            "goaways": state["goaways"],
            "first_goaway_s": state["first_goaway"],
        }

    return asyncio.run(run())


def slow_worker(
    port: int, source: str, n: int, connect_seconds: float, hold_seconds: float, interval: float, out: Any
) -> None:
    """One attacking process: ``n`` connections from ``source`` (opened
    within ``connect_seconds``), each sending a request line then one header
    line every ``interval`` seconds, held ``hold_seconds`` once every
    connection was tried."""
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1:] * 2)

    async def run() -> dict[str, Any]:
        counts = {"connected": 0, "connect_failed": 0, "open": 0, "fin": 0, "rst": 0, "response": 0}
        statuses: dict[str, int] = {}
        connect_errors: dict[str, int] = {}
        closed_at: list[float] = []
        t0 = time.monotonic()
        connect_deadline = t0 + connect_seconds
        # Set once every connection was tried: the hold phase ends then.
        hold: dict[str, float] = {"until": float("inf"), "connected_after": 0.0}
        tried = 0
        gate = asyncio.Semaphore(256)

        def attempted() -> None:
            nonlocal tried
            tried += 1
            if tried == n:
                hold["connected_after"] = time.monotonic() - t0
                hold["until"] = time.monotonic() + hold_seconds

        def failed(reason: str) -> None:
            counts["connect_failed"] += 1
            connect_errors[reason] = connect_errors.get(reason, 0) + 1
            attempted()

        async def one(i: int) -> None:
            try:
                async with gate:
                    left = connect_deadline - time.monotonic()
                    if left <= 0:
                        failed("not tried (connect phase over)")
                        return
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(HOST, port, local_addr=(source, 0)), min(10.0, left)
                    )
            except (TimeoutError, OSError) as e:
                failed(type(e).__name__)
                return
            counts["connected"] += 1
            attempted()
            got = b""
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\n")
                # Spread the header lines over the interval.
                wait = random.uniform(0, interval)
                n_header = 0
                while True:
                    left = hold["until"] - time.monotonic()
                    if left <= 0:
                        counts["open"] += 1
                        break
                    try:
                        data = await asyncio.wait_for(reader.read(4096), min(wait, left))
                    except TimeoutError:
                        if time.monotonic() < hold["until"]:
                            n_header += 1
                            writer.write(b"X-Slow-%d: %d\r\n" % (n_header, i))
                            wait = interval
                        continue
                    if data:
                        got += data
                        continue
                    counts["fin"] += 1
                    closed_at.append(time.monotonic() - t0)
                    break
            except (ConnectionResetError, BrokenPipeError):
                counts["rst"] += 1
                closed_at.append(time.monotonic() - t0)
            finally:
                if got:
                    counts["response"] += 1
                    status = got.split(b"\r\n", 1)[0].decode("latin-1", "replace")[:40]
                    statuses[status] = statuses.get(status, 0) + 1
                writer.transport.abort()

        await asyncio.gather(*(one(i) for i in range(n)))
        return {
            "counts": counts,
            "statuses": statuses,
            "connect_errors": connect_errors,
            "connect_phase_seconds": hold["connected_after"],
            "closed_at_p50": pct(closed_at, 50) if closed_at else None,
        }

    out.send(asyncio.run(run()))


def attack_slow_headers(node: Node, limits: Limits) -> dict[str, Any]:
    """N slow-header connections from two source addresses (one process each,
    each process holding half of them: one process cannot hold them all
    under the descriptor limit)."""
    ctx = multiprocessing.get_context("fork")
    sources = ("127.0.0.2", "127.0.0.3")
    per = limits.slow_connections // len(sources)
    pipes = []
    procs = []
    for source in sources:
        mine, theirs = ctx.Pipe()
        p = ctx.Process(
            target=slow_worker,
            args=(
                node.http,
                source,
                per,
                limits.slow_connect_seconds,
                limits.slow_seconds,
                limits.slow_interval,
                theirs,
            ),
        )
        p.start()
        pipes.append(mine)
        procs.append(p)
    results = [pipe.recv() for pipe in pipes]
    for p in procs:
        p.join(10)
    total: dict[str, int] = {}
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["counts"].items():
            total[k] = total.get(k, 0) + v
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in r["connect_errors"].items():
            errors[k] = errors.get(k, 0) + v
    parts = []
    if total.get("fin"):
        parts.append("{} FIN".format(total["fin"]))
    if total.get("rst"):
        parts.append("{} RST".format(total["rst"]))
    if statuses:
        parts.append("answers: " + ", ".join("{} x{}".format(k, v) for k, v in sorted(statuses.items())))
    connect_phase = max(r["connect_phase_seconds"] for r in results)
    parts.append(
        "{} still open {:.0f} s after the last connect ({:.0f} s to connect)".format(
            total.get("open", 0), limits.slow_seconds, connect_phase
        )
    )
    if total.get("connect_failed"):
        parts.append(
            "{} never connected ({})".format(
                total["connect_failed"], ", ".join("{} x{}".format(k, v) for k, v in sorted(errors.items()))
            )
        )
    return {
        "connections": limits.slow_connections,
        "sources": list(sources),
        "counts": total,
        "statuses": statuses,
        "connect_errors": errors,
        "connect_phase_seconds": connect_phase,
        "closed": "; ".join(parts),
        "sent_bytes": None,
    }


def ws_flood(node: Node, limits: Limits, source: str, first: bytes, unit: bytes, units: int) -> dict[str, Any]:
    """Send ``first`` then ``unit`` * ``units`` batches as fast as the socket
    takes them, never reading; bounded by limits.ws_seconds and ws_bytes."""
    s, _ = ws_connect(node.http, source)
    batch = unit * units
    sent = 0
    during = ""
    t0 = time.monotonic()
    deadline = t0 + limits.ws_seconds
    s.settimeout(0.5)
    try:
        s.sendall(first)
        sent += len(first)
        while sent < limits.ws_bytes and time.monotonic() < deadline:
            try:
                sent += s.send(batch)
            except TimeoutError:
                continue
    except ConnectionResetError:
        during = "RST at {:.1f} s".format(time.monotonic() - t0)
    except BrokenPipeError:
        during = "EPIPE at {:.1f} s".format(time.monotonic() - t0)
    elapsed = time.monotonic() - t0
    # Now read what the node sent (its pongs, and a close frame if any).
    drained = drain_ws(s, 3.0)
    s.close()
    return {
        "sent_bytes": sent,
        "frames_sent": (sent - len(first)) // len(unit),
        "seconds": round(elapsed, 2),
        "drained": drained,
        "closed": describe_end(during, drained),
    }


def attack_ws_pings(node: Node, limits: Limits) -> dict[str, Any]:
    ping = ws_frame(9, b"p" * 125)
    return ws_flood(node, limits, "127.0.0.5", b"", ping, 500)


def attack_ws_continuations(node: Node, limits: Limits) -> dict[str, Any]:
    first = ws_frame(1, b"[", fin=False)
    empty = ws_frame(0, b"", fin=False)
    return ws_flood(node, limits, "127.0.0.6", first, empty, 10_000)


def attack_slow_consumer(node: Node, limits: Limits) -> dict[str, Any]:
    metric = "fastedge_live_slow_consumer_disconnects_total"
    before = node.metric(metric)
    poster = Http(node.http, "127.0.0.7")
    url_id = "https://abuse.example/slow-consumer"
    status, body = poster.request(
        "POST", comments_path(node.tenant, url_id), json.dumps({"text": "first", "displayName": "Abuse"}).encode()
    )
    if status != 201:
        raise SystemExit("the first comment was refused: {} {!r}".format(status, body[:200]))
    s, rest = ws_connect(node.http, "127.0.0.8", rcvbuf=4096)
    s.sendall(ws_frame(1, json.dumps({"type": "subscribe", "tenant": node.tenant, "urlId": url_id}).encode()))
    buf = rest
    while b'"subscribed"' not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("the subscriber was closed before it was subscribed")
        buf += chunk
    # From here on the subscriber never reads.
    t0 = time.monotonic()
    deadline = t0 + limits.consumer_seconds
    posted = 0
    refused: dict[int, int] = {}
    pad = "x" * 4980
    while posted < limits.consumer_comments and time.monotonic() < deadline:
        status, _ = poster.request(
            "POST",
            comments_path(node.tenant, url_id),
            json.dumps({"text": "%05d %s" % (posted, pad), "displayName": "Abuse"}).encode(),
        )
        if status == 201:
            posted += 1
        else:
            refused[status] = refused.get(status, 0) + 1
            if sum(refused.values()) > 50:
                break
    elapsed = time.monotonic() - t0
    poster.close()
    time.sleep(0.5)
    after = node.metric(metric)
    drained = drain_ws(s, 3.0)
    s.close()
    return {
        "posted": posted,
        "refused": refused,
        "sent_bytes": posted * 5000,
        "seconds": round(elapsed, 2),
        "slow_consumer_disconnects": after - before,
        "drained": drained,
        "closed": describe_end("", drained) + "; {} +{:.0f}".format("slow_consumer_disconnects_total", after - before),
    }


def attack_nested_json(node: Node, limits: Limits) -> dict[str, Any]:
    client = Http(node.http, "127.0.0.10")
    path = comments_path(node.tenant, "https://abuse.example/nested")
    statuses = {}
    bodies = {
        "[x20000": b"[" * 20000 + b"]" * 20000,
        '{"a":x10000': b'{"a":' * 10000 + b"1" + b"}" * 10000,
    }
    for label, body in bodies.items():
        try:
            status, answer = client.request("POST", path, body)
            code = ""
            try:
                code = json.loads(answer).get("error", {}).get("code", "") if answer else ""
            except (ValueError, AttributeError):
                code = answer[:40].decode("latin-1", "replace")
            statuses[label] = "{} {}".format(status, code).strip()
        except (OSError, ConnectionError) as e:
            statuses[label] = "connection lost ({})".format(type(e).__name__)
            client.close()
            client = Http(node.http, "127.0.0.10")
    client.close()
    s, _ = ws_connect(node.http, "127.0.0.11")
    s.sendall(ws_frame(1, b"[" * 2040 + b"]" * 2040))
    drained = drain_ws(s, 3.0)
    s.close()
    live = describe_end("", drained)
    ok = all(v.startswith("400") for v in statuses.values()) and drained.get("close", "").startswith("close 4400")
    return {
        "http": statuses,
        "live": live,
        "sent_bytes": sum(len(b) for b in bodies.values()) + 4080,
        "expected_answers": ok,
        "closed": "POST " + ", ".join("{} -> {}".format(k, v) for k, v in statuses.items()) + "; /live -> " + live,
    }


ATTACKS: list[tuple[str, str]] = [
    ("1", "h2-after-error"),
    ("2", "slow-headers"),
    ("3", "ws-pings"),
    ("4", "ws-empty-continuations"),
    ("5", "live-slow-consumer"),
    ("6", "nested-json"),
]


def quiesce(node: Node, most: float = 20.0) -> float:
    """Wait (at most ``most`` seconds) until the node's RSS is steady and
    /healthz answers, so one attack's aftermath (e.g. buffers freed only
    once the node has worked through them) does not count as the next
    attack's "before". Returns the seconds waited."""
    t0 = time.monotonic()
    previous = rss_kib(node.pid)
    steady = 0
    while time.monotonic() - t0 < most:
        time.sleep(0.5)
        now = rss_kib(node.pid)
        _, error = healthz_once(node.http, timeout=1.0)
        steady = steady + 1 if abs(now - previous) < 2048 and not error else 0
        previous = now
        if steady >= 2:
            break
    return time.monotonic() - t0


def run_attack(
    node: Node, monitor: Monitor, label: str, attack: Callable[[Node], dict[str, Any]], settle: float
) -> dict[str, Any]:
    print("== {} ...".format(label), file=sys.stderr, flush=True)
    waited = quiesce(node)
    traces = node.tracebacks()
    rss_before = rss_kib(node.pid)
    monitor.start()
    t0 = time.monotonic()
    result = attack(node)
    attack_seconds = time.monotonic() - t0
    # The attacker is gone: let the node settle, then read "after".
    time.sleep(settle)
    samples = monitor.stop()
    rss_after = rss_kib(node.pid)
    # Latency figures are of the answered probes; failed ones are counted apart
    # (a reset comes back fast and would flatter the percentiles).
    latencies = [1000.0 * s[2] for s in samples if not s[3]]
    failures = [s[3] for s in samples if s[3]]
    peak = max([rss_before, rss_after] + [s[1] for s in samples])
    result.update(
        {
            "attack": label,
            "attack_seconds": round(attack_seconds, 2),
            "rss_before_mb": rss_before / 1024,
            "rss_peak_mb": peak / 1024,
            "rss_after_mb": rss_after / 1024,
            "rss_growth_mb": (peak - rss_before) / 1024,
            "healthz_samples": len(samples),
            "healthz_p50_ms": pct(latencies, 50),
            "healthz_p99_ms": pct(latencies, 99),
            "healthz_max_ms": max(latencies) if latencies else float("nan"),
            "healthz_failures": len(failures),
            "healthz_failure_kinds": sorted(set(failures)),
            "new_tracebacks": node.tracebacks() - traces,
            "quiesce_seconds": round(waited, 1),
        }
    )
    result["rss_ok"] = result["rss_growth_mb"] < TARGET_RSS_MB
    result["healthz_ok"] = result["healthz_max_ms"] < TARGET_HEALTHZ_MS and not failures
    print(
        "   RSS {:.0f} -> peak {:.0f} -> after {:.0f} MB (growth {:+.0f} MB, target < {:.0f}: {}); "
        "/healthz p50 {:.1f} p99 {:.1f} max {:.1f} ms, {} failed of {} {}(target < {:.0f} ms: {}); "
        "attacker: {}; new tracebacks in the node log: {}".format(
            result["rss_before_mb"],
            result["rss_peak_mb"],
            result["rss_after_mb"],
            result["rss_growth_mb"],
            TARGET_RSS_MB,
            "ok" if result["rss_ok"] else "MISSED",
            result["healthz_p50_ms"],
            result["healthz_p99_ms"],
            result["healthz_max_ms"],
            len(failures),
            len(samples),
            "({}) ".format(", ".join(result["healthz_failure_kinds"])) if failures else "",
            TARGET_HEALTHZ_MS,
            "ok" if result["healthz_ok"] else "MISSED",
            result["closed"],
            result["new_tracebacks"],
        ),
        file=sys.stderr,
        flush=True,
    )
    return result


def table(results: list[dict[str, Any]], quick: bool) -> str:
    lines = [
        "abuse run{}: targets RSS growth < {:.0f} MB per attack, /healthz (from {}) < {:.0f} ms throughout".format(
            " (--quick)" if quick else "", TARGET_RSS_MB, PROBE_SOURCE, TARGET_HEALTHZ_MS
        ),
        "",
        "| attack | s | sent MB | RSS before / peak / after MB | growth MB | /healthz p50 / p99 / max ms (failed/probes) "
        "| targets | how the node ended the attacker |",
        "|---|---:|---:|---|---:|---|---|---|",
    ]
    for r in results:
        sent = r.get("sent_bytes")
        verdict = "RSS {}, healthz {}".format(
            "ok" if r["rss_ok"] else "**MISSED**", "ok" if r["healthz_ok"] else "**MISSED**"
        )
        if "expected_answers" in r:
            verdict += ", answers {}".format("ok" if r["expected_answers"] else "**MISSED**")
        if r.get("new_tracebacks"):
            verdict += ", {} tracebacks".format(r["new_tracebacks"])
        lines.append(
            "| {} | {:.0f} | {} | {:.0f} / {:.0f} / {:.0f} | {:+.0f} | {:.1f} / {:.1f} / {:.1f} ({}/{}) | {} | {} |".format(
                r["attack"],
                r["attack_seconds"],
                "-" if sent is None else "{:.0f}".format(sent / MB),
                r["rss_before_mb"],
                r["rss_peak_mb"],
                r["rss_after_mb"],
                r["rss_growth_mb"],
                r["healthz_p50_ms"],
                r["healthz_p99_ms"],
                r["healthz_max_ms"],
                r["healthz_failures"],
                r["healthz_samples"],
                verdict,
                r["closed"].replace("|", "/"),
            )
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about 10 s per attack")
    ap.add_argument("--only", default="", help="comma-separated attack numbers or names, e.g. 1,3")
    ap.add_argument("--node-cpu", default="0")
    ap.add_argument("--client-cpu", default="1", help="CPU of the monitor (the wrapper pins this process)")
    ap.add_argument("--h2-variant", choices=("settings", "continuation"), default="settings")
    ap.add_argument("--slow-connections", type=int, default=20_000)
    ap.add_argument(
        "--slow-seconds", type=float, default=0.0, help="override how long the slow connections are held once open"
    )
    ap.add_argument("--comments", type=int, default=2000, help="comments posted in the slow-consumer attack")
    ap.add_argument(
        "--one-node",
        dest="fresh_node",
        action="store_false",
        help="run every attack against the same node (default: a fresh node per attack)",
    )
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "out"))
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limits = Limits(args.quick)
    limits.slow_connections = args.slow_connections
    limits.consumer_comments = args.comments
    if args.slow_seconds:
        limits.slow_seconds = args.slow_seconds
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    chosen = [(n, name) for n, name in ATTACKS if not wanted or n in wanted or name in wanted]

    workdir = tempfile.mkdtemp(prefix="fastedge-abuse-")
    print(
        "node on CPU {}, attackers on this process's CPUs {}, descriptor limit {} (node and each attacker); "
        "work dir {}".format(args.node_cpu, sorted(os.sched_getaffinity(0)), hard, workdir),
        file=sys.stderr,
        flush=True,
    )
    funcs: dict[str, Callable[[Node], dict[str, Any]]] = {
        "h2-after-error": lambda node: attack_h2(node, limits, args.h2_variant),
        "slow-headers": lambda node: attack_slow_headers(node, limits),
        "ws-pings": lambda node: attack_ws_pings(node, limits),
        "ws-empty-continuations": lambda node: attack_ws_continuations(node, limits),
        "live-slow-consumer": lambda node: attack_slow_consumer(node, limits),
        "nested-json": lambda node: attack_nested_json(node, limits),
    }
    results: list[dict[str, Any]] = []
    logs: list[str] = []
    node: Node | None = None
    monitor: Monitor | None = None

    def retire() -> None:
        nonlocal node, monitor
        if monitor is not None:
            monitor.close()
        if node is not None:
            node.close()
        node = monitor = None

    try:
        for n, name in chosen:
            if node is not None and (args.fresh_node or node.process.poll() is not None):
                retire()
            if node is None:
                # A fresh node per attack by default: CPython rarely gives
                # memory back, so one attack's high-water mark would hide the
                # next one's growth.
                node = Node(os.path.join(workdir, "node-for-{}".format(n)), args.node_cpu)
                monitor = Monitor(node.pid, node.http, args.client_cpu)
                logs.append(node.log)
            assert monitor is not None
            label = "{}. {}".format(n, name)
            try:
                results.append(run_attack(node, monitor, label, funcs[name], limits.settle))
            except (OSError, ConnectionError, SystemExit) as e:
                print("   {} failed to run: {!r}".format(label, e), file=sys.stderr, flush=True)
                results.append({"attack": label, "error": repr(e)})
            if node.process.poll() is not None:
                print("   the node exited ({}); see {}".format(node.process.returncode, node.log), file=sys.stderr)
    finally:
        retire()
    done = [r for r in results if "error" not in r]
    print()
    print(table(done, args.quick))
    for r in results:
        if "error" in r:
            print("\n{} did not run: {}".format(r["attack"], r["error"]))
    print("\nnode logs: {}".format(" ".join(logs)))
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "abuse-{}.json".format(time.strftime("%Y%m%d-%H%M%S")))
    with open(out, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print("raw figures: {}".format(out))


if __name__ == "__main__":
    main()
