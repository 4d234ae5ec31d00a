"""Mesh benchmark: relay latency and failure detection, three real nodes.

Three ``twistd fastedge`` processes (a, b, c) on loopback, joined over the
mesh (mutual TLS, certificates made with ``fastedge-admin certs``), sharing
one SQLite file as a deployment shares its database. All three run on one
CPU (``--node-cpu``); this process, the load client, on the other.

1. Relay latency. N raw-socket WebSocket subscribers on one node follow one
   thread; comments are POSTed one at a time through node a's public API;
   for each, the time from sending the POST to the first and to the last
   subscriber holding the ``comment.created`` event (this process's
   monotonic clock at both ends). Side by side in one run:

   - local: subscribers on a, a sequences the thread (no mesh hop; the
     baseline the relay is compared with);
   - the writer sequences: subscribers on c, a sequences and pushes to c;
   - the subscribers' node sequences: a forwards the write to c;
   - via a third node: a forwards to b, b pushes to c.

   "relay adds" is each line's p50/p99 minus the local line's. All four
   groups of subscribers are connected at once and the posts go
   round-robin over them, so drifting load on the machine hits all alike.

2. Failure detection. Ten times: SIGKILL node c and time until both a and
   b show it DEAD in ``GET /api/v1/mesh`` (polled every 10 ms), then start
   it again and wait until it is ALIVE everywhere. Side by side: ten clean
   stops (SIGTERM), timed until both show it LEAVING.

Prints one table per part and writes the raw figures to bench/out/.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

from live_client import Conn, frames, masked_text  # noqa: E402

from fastedge.live.relay import rendezvous  # noqa: E402
from tests.support.ports import free_port

PY = os.path.join(REPO, ".venv", "bin", "python")
TWISTD = os.path.join(REPO, ".venv", "bin", "twistd")
NODES = ("a", "b", "c")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


class Cluster:
    """The three node processes and their files."""

    def __init__(self, workdir: str, cpu: str) -> None:
        self.dir = workdir
        self.cpu = cpu
        self.http = {n: free_port() for n in NODES}
        self.mesh = {n: free_port() for n in NODES}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        shared = os.path.join(workdir, "shared")
        os.makedirs(shared)
        self.database = os.path.join(shared, "deployment.sqlite3")
        self.secret = os.path.join(shared, "session.key")
        self.ca_dir = os.path.join(workdir, "ca")
        admin = [PY, "-m", "fastedge.admin", "--data-dir", self.ca_dir]
        subprocess.run(admin + ["certs", "ca"], check=True, capture_output=True, cwd=REPO)
        for node in NODES:
            out = os.path.join(workdir, node)
            os.makedirs(out)
            subprocess.run(admin + ["certs", "node", node, "--out", out], check=True, capture_output=True, cwd=REPO)
            with open(self.config(node), "w") as f:
                f.write(self.config_text(node))

    def config(self, node: str) -> str:
        return os.path.join(self.dir, node, "node.toml")

    def config_text(self, node: str) -> str:
        d = os.path.join(self.dir, node)
        seeds = [] if node == "a" else ['"127.0.0.1:{}"'.format(self.mesh["a"])]
        return (
            '[node]\nid = "{node}"\ndata_dir = "{d}"\naddresses = ["127.0.0.1"]\n'
            '[http]\nendpoint = "tcp:{http}:interface=127.0.0.1:backlog=4096"\n'
            # Every subscriber connects from 127.0.0.1: no per-address limits.
            "max_connections_per_ip = 0\nmax_connections_per_prefix = 0\n"
            '[store]\nsqlite_path = "{db}"\n'
            '[api]\nsecret_file = "{secret}"\nwrites_per_minute_per_session = 1000000\n'
            "writes_per_minute_per_ip = 1000000\n"
            '[dns]\nport = 0\n[tls]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
            '[mesh]\nendpoint = "tcp:{mesh}:interface=127.0.0.1"\nseeds = [{seeds}]\n'
            'ca_file = "{ca}"\ncert_file = "{d}/{node}.pem"\nkey_file = "{d}/{node}.key"\n'
        ).format(
            node=node,
            d=d,
            http=self.http[node],
            db=self.database,
            secret=self.secret,
            mesh=self.mesh[node],
            seeds=", ".join(seeds),
            ca=os.path.join(self.ca_dir, "mesh", "ca.pem"),
        )

    def start(self, node: str) -> None:
        log = open(os.path.join(self.dir, node, "node.log"), "ab")
        self.procs[node] = subprocess.Popen(
            ["taskset", "-c", self.cpu, TWISTD, "--nodaemon", "--pidfile=", "fastedge", "--config", self.config(node)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if get(self.http[node], "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if self.procs[node].poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit("node {} did not start; see {}".format(node, log.name))

    def signal(self, node: str, sig: int) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(sig)
        proc.wait(30)

    def stop_all(self) -> None:
        for node in list(self.procs):
            try:
                self.signal(node, signal.SIGTERM)
            except subprocess.TimeoutExpired:
                pass

    def states(self, observer: str) -> dict[str, str]:
        status, body = get(self.http[observer], "/api/v1/mesh")
        return {n["nodeId"]: n["state"] for n in json.loads(body)["nodes"]} if status == 200 else {}

    def wait(self, predicate: Any, what: str, timeout: float = 30.0, every: float = 0.01) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(every)
        raise SystemExit("timed out waiting: " + what)

    def converged(self) -> bool:
        try:
            return all(self.states(o) == {n: "alive" for n in NODES} for o in NODES)
        except OSError:
            return False


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


class Poster:
    """Posts comments through one node's public API on a keep-alive
    connection, keeping the session cookie."""

    def __init__(self, port: int, tenant: str) -> None:
        self.port = port
        self.tenant = tenant
        self.cookie = ""
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, url_id: str, text: str) -> bytes:
        from urllib.parse import quote

        body = json.dumps({"text": text, "displayName": "Bench"}).encode()
        head = (
            "POST /api/v1/{}/comments?urlId={} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: {}\r\n{}\r\n".format(
                self.tenant,
                quote(url_id, safe=""),
                len(body),
                "Cookie: {}\r\n".format(self.cookie) if self.cookie else "",
            )
        ).encode()
        return head + body

    def read_response(self) -> dict[str, Any]:
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            if name.lower() == b"set-cookie" and value.strip().startswith(b"fe_session="):
                self.cookie = value.strip().split(b";")[0].decode()
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        status = int(head.split(b" ", 2)[1])
        if status != 201:
            raise SystemExit("POST answered {}: {!r}".format(status, rest[:200]))
        return json.loads(rest[:length])  # type: ignore[no-any-return]

    def post(self, url_id: str, text: str) -> dict[str, Any]:
        self.sock.sendall(self.request(url_id, text))
        return self.read_response()


def thread_owned_by(cluster: Cluster, poster: Poster, owner: str, taken: set[str]) -> tuple[str, str]:
    """Create threads (a first comment each) until one is sequenced by ``owner``."""
    for i in range(10_000):
        url_id = "https://bench.example/{}/{}".format(owner, i)
        if url_id in taken:
            continue
        poster.post(url_id, "first")
        _, body = get(
            cluster.http["a"],
            "/api/v1/{}/comments?urlId={}".format(poster.tenant, url_id.replace(":", "%3A").replace("/", "%2F")),
        )
        thread = json.loads(body)["thread"]["id"]
        if rendezvous((poster.tenant, thread), NODES) == owner:
            taken.add(url_id)
            return url_id, thread
    raise SystemExit("no thread for " + owner)


def subscribers(port: int, tenant: str, url_id: str, n: int) -> tuple[Any, dict[int, Conn]]:
    """Open n WebSocket connections to a node's /live and subscribe each."""
    import base64

    ep = select.epoll()
    conns: dict[int, Conn] = {}
    sub = masked_text(json.dumps({"type": "subscribe", "tenant": tenant, "urlId": url_id}).encode())
    upgrade = (
        "GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % base64.b64encode(os.urandom(16)).decode()
    ).encode()
    ready = opened = in_flight = 0
    deadline = time.monotonic() + 120
    while ready < n:
        if time.monotonic() > deadline:
            raise SystemExit("timed out subscribing: {} of {}".format(ready, n))
        while opened < n and in_flight < 200:
            s = socket.socket()
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.connect_ex(("127.0.0.1", port))
            c = Conn(s)
            conns[c.fd] = c
            ep.register(c.fd, select.EPOLLOUT)
            opened += 1
            in_flight += 1
        for fd, _ in ep.poll(0.01):
            c = conns[fd]
            if c.state == 0:
                c.sock.send(upgrade)
                c.state = 1
                ep.modify(fd, select.EPOLLIN)
                continue
            data = c.sock.recv(65536)
            if not data:
                raise SystemExit("a subscriber was closed during setup")
            c.buf += data
            if c.state == 1:
                head, sep, rest = c.buf.partition(b"\r\n\r\n")
                if not sep:
                    continue
                if not head.startswith(b"HTTP/1.1 101"):
                    raise SystemExit("handshake refused: %r" % head[:80])
                c.state = 2
                c.buf = rest
                c.sock.send(sub)
            if not c.ready and b'"subscribed"' in c.buf:
                c.ready = True
                c.buf = b""
                ready += 1
                in_flight -= 1
    time.sleep(0.3)
    for fd, _ in ep.poll(0.1):
        conns[fd].sock.recv(65536)
    for c in conns.values():
        c.buf = b""
        c.count = 0
    return ep, conns


def one_post(
    poster: Poster, url_id: str, ep: Any, conns: dict[int, Conn], target: int, text: str
) -> tuple[float, float]:
    """POST one comment; wait until every subscriber of the group holds
    ``target`` events. Returns (ms to the first, ms to the last)."""
    n = len(conns)
    done = 0
    first = 0.0
    t0 = time.monotonic()
    poster.sock.sendall(poster.request(url_id, text))
    deadline = t0 + 30
    while done < n:
        if time.monotonic() > deadline:
            raise SystemExit("timed out: {} of {} subscribers got {!r}".format(done, n, text))
        for fd, _ in ep.poll(1.0):
            c = conns[fd]
            data = c.sock.recv(262144)
            if not data:
                raise SystemExit("a subscriber was closed")
            got, _ = frames(c, data, False)
            if not got:
                continue
            if not first:
                first = time.monotonic()
            before = c.count
            c.count += got
            if before < target <= c.count:
                done += 1
    last = time.monotonic()
    poster.read_response()
    return (first - t0) * 1000.0, (last - t0) * 1000.0


def relay_part(cluster: Cluster, tenant: str, n: int, posts: int) -> list[tuple[str, dict[str, float]]]:
    """Every scenario's subscribers are connected at once and the posts go
    round-robin over the scenarios, so they all see the same conditions
    (other load on the machine drifts; this cancels it out)."""
    poster = Poster(cluster.http["a"], tenant)
    taken: set[str] = set()
    scenarios = [
        ("local: subscribers on a, a sequences", "a", "a"),
        ("relay: a sequences, pushes to c", "c", "a"),
        ("relay: a forwards, c sequences", "c", "c"),
        ("relay: a -> b sequences -> c", "c", "b"),
    ]
    groups = []
    for label, sub_node, owner in scenarios:
        url_id, _ = thread_owned_by(cluster, poster, owner, taken)
        ep, conns = subscribers(cluster.http[sub_node], tenant, url_id, n)
        groups.append((label, url_id, ep, conns, [], []))
    warmup = 3
    for i in range(warmup + posts):
        for _label, url_id, ep, conns, firsts, lasts in groups:
            first, last = one_post(poster, url_id, ep, conns, i + 1, "comment {}".format(i))
            if i >= warmup:
                firsts.append(first)
                lasts.append(last)
            time.sleep(0.01)
    results = []
    for label, _url_id, ep, conns, firsts, lasts in groups:
        for c in conns.values():
            c.sock.close()
        ep.close()
        figures = {
            "first_p50_ms": pct(firsts, 50),
            "first_p99_ms": pct(firsts, 99),
            "last_p50_ms": pct(lasts, 50),
            "last_p99_ms": pct(lasts, 99),
        }
        print("  {}: {}".format(label, figures), file=sys.stderr)
        results.append((label, figures))
    return results


def detection_part(cluster: Cluster, kills: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"kill_dead": [], "stop_leaving": []}
    for kind, sig, state in (("kill_dead", signal.SIGKILL, "dead"), ("stop_leaving", signal.SIGTERM, "leaving")):
        for _ in range(kills):
            cluster.wait(cluster.converged, "convergence")
            time.sleep(1.0)  # a few heartbeats of steady state
            cluster.procs["c"].send_signal(sig)
            took = cluster.wait(
                lambda state=state: all(cluster.states(o).get("c") == state for o in ("a", "b")),
                "c " + state,
                timeout=20,
            )
            cluster.procs.pop("c").wait(30)
            out[kind].append(took)
            print("  {}: {:.3f} s".format(kind, took), file=sys.stderr)
            cluster.start("c")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--posts", type=int, default=200)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--node-cpu", default="0")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="fastedge-mesh-bench-")
    cluster = Cluster(workdir, args.node_cpu)
    try:
        for node in NODES:
            cluster.start(node)
        cluster.wait(cluster.converged, "convergence")
        created = subprocess.run(
            [PY, "-m", "fastedge.admin", "--config", cluster.config("a"), "tenant", "create", "Bench", "--json"],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        tenant = json.loads(created.stdout)["tenantId"]
        print("relay latency ({} subscribers, {} posts each)...".format(args.subscribers, args.posts), file=sys.stderr)
        relay = relay_part(cluster, tenant, args.subscribers, args.posts)
        print("failure detection ({} kills, {} clean stops)...".format(args.kills, args.kills), file=sys.stderr)
        detection = detection_part(cluster, args.kills)
    finally:
        cluster.stop_all()
    print(json.dumps({"relay": relay, "detection": detection}))


if __name__ == "__main__":
    main()
