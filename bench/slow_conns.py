"""Slow connections against one node: can a third client still get in?

Two attacker processes (sources 127.0.0.2 and 127.0.0.3) each try to hold
N connections that send a request line and then one header byte every few
seconds (slowloris), reconnecting whatever the node closes, while a probe
from 127.0.0.4 asks for ``/healthz`` on a fresh connection every 100 ms.
Reported per scenario: the probe's latency (p50, p99, max, failures), the
attackers' connections held and closed by the node, the node's RSS, and the
node's own counters (refused connections by reason, 408s, accept pauses).

Scenarios (each a fresh node, ``ulimit -n`` 20,000 like the issue's):

- ``limits``: the defaults (1,000 connections per address, 10 s header
  deadline), except the per-network limit, off here because every loopback
  source shares one /24;
- ``ceiling``: no per-address limits at all: the attackers (reconnecting
  at 2,000/s at least, to outpace the header deadline) reach the global
  ceiling (descriptors minus the reserve), the listeners pause accepting,
  and the header deadline alone frees slots.

The node runs on CPU 0, attackers and probe on CPU 1. Loopback only.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import LOAD_CPU, REPO, start_node, stop  # noqa: E402

PY = sys.executable
HERE = os.path.abspath(__file__)


def attack(args: argparse.Namespace) -> None:
    """One attacker: hold ``--connections`` slow connections from ``--source``."""
    sel = selectors.DefaultSelector()
    # fd -> [socket, when its next byte is due, request line sent]
    socks: dict[int, list] = {}
    due_queue: list[tuple[float, int, socket.socket]] = []  # a heap
    stats = {"opened": 0, "closed_by_node": 0, "answered_408": 0, "connect_errors": 0, "peak": 0}
    end = time.monotonic() + args.seconds
    next_refill = 0.0
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"

    def close(fd: int) -> None:
        s = socks.pop(fd)[0]
        sel.unregister(s)
        s.close()

    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_refill:
            # Reconnect what the node closed, at most --rate per second.
            budget = int(args.rate * 0.05)
            while len(socks) < args.connections and budget > 0:
                budget -= 1
                s = socket.socket()
                s.setblocking(False)
                # Close with a reset: no TIME_WAIT piling up on our side.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                try:
                    s.bind((args.source, 0))
                    s.connect_ex(("127.0.0.1", args.port))
                except OSError:
                    stats["connect_errors"] += 1
                    s.close()
                    break
                socks[s.fileno()] = [s, now, False]
                heapq.heappush(due_queue, (now, s.fileno(), s))
                sel.register(s, selectors.EVENT_READ)
                stats["opened"] += 1
            next_refill = now + 0.05
            stats["peak"] = max(stats["peak"], len(socks))
        for key, _ in sel.select(timeout=0.01):
            fd = key.fd
            s = socks[fd][0]
            try:
                data = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 408"):
                stats["answered_408"] += 1
            close(fd)
            stats["closed_by_node"] += 1
        # The request line first, then one header byte every --interval s:
        # a heap in due order, so a loop costs what is due, not a scan of
        # every socket.
        now = time.monotonic()
        while due_queue and due_queue[0][0] <= now:
            _, fd, s = heapq.heappop(due_queue)
            entry = socks.get(fd)
            if entry is None or entry[0] is not s:
                continue  # closed since
            try:
                s.send(b"X" if entry[2] else head)
            except (BlockingIOError, InterruptedError):
                heapq.heappush(due_queue, (now + 0.05, fd, s))
                continue
            except OSError as e:
                if e.errno == errno.ENOTCONN:  # still connecting
                    heapq.heappush(due_queue, (now + 0.05, fd, s))
                    continue
                close(fd)
                stats["connect_errors"] += 1
                continue
            entry[2] = True
            heapq.heappush(due_queue, (now + args.interval, fd, s))
    stats["held_at_end"] = len(socks)
    for fd in list(socks):
        close(fd)
    print(json.dumps(stats), flush=True)


def probe(port: int, seconds: float, started: float) -> dict[str, object]:
    """``/healthz`` from 127.0.0.4 on a fresh connection every 100 ms.

    :param started: when the attack started (``time.monotonic()``), to date
        the slowest probes.
    """
    latencies: list[float] = []
    dated: list[tuple[float, float]] = []
    failures = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            s = socket.socket()
            s.settimeout(5)
            s.bind(("127.0.0.4", 0))
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            if data.startswith(b"HTTP/1.1 200"):
                latencies.append((time.monotonic() - t0) * 1000)
                dated.append((round(latencies[-1], 1), round(t0 - started, 2)))
            else:
                failures += 1
        except OSError:
            failures += 1
        time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
    latencies.sort()
    return {
        "probes": float(len(latencies) + failures),
        "failures": float(failures),
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan"),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "slowest_ms_at_s": sorted(dated, reverse=True)[:5],
    }


def rss_mb(pid: int) -> float:
    with open("/proc/{}/status".format(pid)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metrics(port: int) -> dict[str, float]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.4", 0))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    wanted = (
        "fastedge_http_connections_refused_total",
        "fastedge_http_request_timeouts_total",
        "fastedge_http_accept_pauses_total",
        "fastedge_http_connection_ceiling",
    )
    out = {}
    for line in data.decode().splitlines():
        if line.startswith(wanted):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def scenario(name: str, extra_config: str, args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as work:
        from tests.support.ports import free_port

        port = free_port()
        config = (
            '[node]\ndata_dir = "{work}"\n'
            '[http]\nendpoint = "tcp:{port}:interface=127.0.0.1:backlog=1024"\n{extra}'
            '[tls]\nenabled = false\n[dns]\nport = 0\n[mesh]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
            '[store]\nsqlite_path = "{work}/db.sqlite"\n'
        ).format(work=work, port=port, extra=extra_config)
        node = start_node(work, config, port)
        try:
            rss_before = rss_mb(node.pid)
            started = time.monotonic()
            attackers = [
                subprocess.Popen(
                    ["taskset", "-c", LOAD_CPU, PY, HERE, "attack", "--source", source, "--port", str(port)]
                    + ["--connections", str(args.connections), "--seconds", str(args.seconds)]
                    + ["--interval", str(args.interval), "--rate", str(args.rate)],
                    stdout=subprocess.PIPE,
                )
                for source in ("127.0.0.2", "127.0.0.3")
            ]
            time.sleep(args.warmup)
            peak = rss_before
            result = probe(port, args.seconds - args.warmup - 1, started)
            peak = max(peak, rss_mb(node.pid))
            held = [json.loads(a.communicate()[0]) for a in attackers]
            counters = metrics(port)
            with open(os.path.join(work, "node-{}.log".format(port)), errors="replace") as f:
                emfile = sum(1 for line in f if "Too many open files" in line or "EMFILE" in line)
            return {
                "scenario": name,
                "per_attacker": {"connections": args.connections, "connects_per_s": args.rate},
                "probe": result,
                "attackers": held,
                "rss_mb_before": round(rss_before, 1),
                "rss_mb_end_of_attack": round(peak, 1),
                "node": counters,
                "node_log_emfile_lines": emfile,
            }
        finally:
            stop(node)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode")
    a = sub.add_parser("attack")
    a.add_argument("--source", required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--connections", type=int, default=10_000)
    a.add_argument("--seconds", type=float, default=30)
    a.add_argument("--interval", type=float, default=5)
    a.add_argument("--rate", type=int, default=500)
    r = sub.add_parser("run")
    r.add_argument("--connections", type=int, default=10_000, help="per attacker (two attackers)")
    r.add_argument("--seconds", type=float, default=30)
    r.add_argument("--warmup", type=float, default=8, help="seconds of attack before probing")
    r.add_argument("--interval", type=float, default=5, help="seconds between one connection's header bytes")
    r.add_argument("--rate", type=int, default=500, help="connects per second per attacker, at most")
    r.add_argument("--scenarios", default="limits,ceiling")
    args = ap.parse_args()
    if args.mode == "attack":
        attack(args)
        return
    configs = {
        "limits": "max_connections_per_prefix = 0\n",
        "ceiling": "max_connections_per_ip = 0\nmax_connections_per_prefix = 0\n",
    }
    os.chdir(REPO)
    for name in args.scenarios.split(","):
        run = argparse.Namespace(**vars(args))
        if name == "ceiling":
            # Connections live 10 s (the header deadline): reaching ~19,500
            # takes 2 x 1,000 connects per second at least.
            run.rate = max(args.rate, 2000)
        print(json.dumps(scenario(name, configs[name], run)), flush=True)


if __name__ == "__main__":
    main()
