"""Chaos on a real local cluster (``fastedge.cluster``): what clients see
when nodes die, the primary is lost, and mesh links are cut.

Used by ``tests.integration.test_chaos`` (short) and ``bench/chaos`` (long).
Everything is blocking and real: ``twistd`` nodes, PostgreSQL primary and
standbys, DNS over UDP, raw-socket WebSocket clients that behave as the
widget does (reconnect to a node DNS answers, re-subscribe with ``since``
and ``epoch``, reload the thread on ``reload``/``reset``), and posters whose
every answer is kept, so what was acknowledged can be counted in the
database afterwards.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastedge.cluster.plan import DNS_PORT, HTTP_PORT, MESH_PORT, MESH_RELAYED_PORT, NodePlan
from fastedge.cluster.runner import LocalCluster
from fastedge.live.relay import rendezvous

__all__ = ["Chaos", "MeshRelays", "pct"]


def pct(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``, ``None`` if empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0, every: float = 0.02) -> float:
    """Poll ``predicate`` until true; seconds it took.

    :raises AssertionError: naming ``what`` after ``timeout``.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(every)
    raise AssertionError("timed out after {:g} s waiting for {}".format(timeout, what))


# DNS ------------------------------------------------------------------------


def dns_addresses(server: str, name: str, timeout: float = 1.0) -> list[str] | None:
    """The A records a node's DNS server answers for ``name`` (``None`` when
    it does not answer)."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rdatatype

    query = dns.message.make_query(name, dns.rdatatype.A)
    try:
        answer = dns.query.udp(query, server, port=DNS_PORT, timeout=timeout)
    except (dns.exception.Timeout, OSError):
        return None
    return [r.address for rrset in answer.answer for r in rrset if r.rdtype == dns.rdatatype.A]


# Mesh relays ----------------------------------------------------------------


class _Relay:
    """A TCP relay in front of one node's mesh listener: forwards, or
    (cut) swallows every byte of the links it is told to drop."""

    def __init__(self, owner: MeshRelays, node: NodePlan) -> None:
        self.owner = owner
        self.node = node
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((node.address, MESH_PORT))
        self.listener.listen(64)
        self.links: list[tuple[socket.socket, socket.socket | None, str]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, name="relay-" + node.node_id, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, (source, _port) = self.listener.accept()
            except OSError:
                return
            upstream: socket.socket | None = None
            if not self.owner.cut_between(source, self.node.address):
                try:
                    upstream = socket.create_connection((self.node.address, MESH_RELAYED_PORT), timeout=2)
                except OSError:
                    client.close()
                    continue
            with self.lock:
                self.links.append((client, upstream, source))
            threading.Thread(target=self._pump, args=(client, upstream, source), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket | None, source: str) -> None:
        socks = [client] + ([upstream] if upstream is not None else [])
        try:
            while True:
                readable, _, _ = select.select(socks, [], [], 0.5)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    if upstream is None or self.owner.cut_between(source, self.node.address):
                        continue  # a partition drops what crosses it
                    (upstream if s is client else client).sendall(data)
        except OSError:
            return
        finally:
            for s in socks:
                s.close()

    def close_links(self, involving: str | None = None) -> None:
        """Close the links (of one source address, or all): a healed
        partition starts over with fresh TLS sessions."""
        with self.lock:
            keep = []
            for client, upstream, source in self.links:
                if involving is None or source == involving or self.node.address == involving:
                    for s in (client, upstream):
                        if s is not None:
                            try:
                                s.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass
                else:
                    keep.append((client, upstream, source))
            self.links = keep

    def stop(self) -> None:
        self.listener.close()
        self.close_links()


class MeshRelays:
    """One relay in front of every node's mesh port (the cluster started
    with ``mesh_relayed=True``; outgoing mesh links leave from the node's
    address, so the relays see who is calling). :meth:`cut` partitions a
    node: every byte of every link to or from it is dropped."""

    def __init__(self, nodes: Iterable[NodePlan]) -> None:
        self.cut_addresses: set[str] = set()
        self.relays = [_Relay(self, n) for n in nodes]

    def cut_between(self, source: str, target: str) -> bool:
        return source in self.cut_addresses or target in self.cut_addresses

    def cut(self, address: str) -> None:
        self.cut_addresses.add(address)

    def heal(self, address: str) -> None:
        self.cut_addresses.discard(address)
        for relay in self.relays:
            relay.close_links(address)

    def stop(self) -> None:
        for relay in self.relays:
            relay.stop()


# Posting --------------------------------------------------------------------


@dataclass
class PostLog:
    """Every post's fate."""

    acked: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # comment id -> (thread url, text, t)
    via: dict[str, str] = field(default_factory=dict)  # comment id -> the node that answered 201
    unknown: list[tuple[str, float]] = field(default_factory=list)  # (text, t): 503 commit_unknown
    unavailable: list[tuple[str, float]] = field(default_factory=list)  # 503 store_unavailable and the like
    refused: int = 0  # no connection (a dead node)
    other: list[tuple[int, str]] = field(default_factory=list)


# Subscribers ----------------------------------------------------------------


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@dataclass
class Subscriber:
    """One live client of one thread and everything it saw."""

    index: int
    url_id: str
    thread: str
    node: str = ""
    epoch: str | None = None
    seq: int | None = None
    first_subscribed: float | None = None
    segment: set[str] = field(default_factory=set)
    received: dict[str, float] = field(default_factory=dict)
    covered: set[str] = field(default_factory=set)
    duplicates: int = 0
    duplicate_log: list[str] = field(default_factory=list)
    seq_gaps: int = 0
    reloads: int = 0
    replayed: int = 0
    reconnects: int = 0
    recoveries: list[float] = field(default_factory=list)
    lost_at: float | None = None
    nodes: list[str] = field(default_factory=list)
    #: ``(t, node, message type, epoch, seq, comment id)`` of every message:
    #: what a failed run prints around a missing event.
    timeline: list[tuple[float, str, str, str | None, int | None, str | None]] = field(default_factory=list)


class Chaos:
    """A cluster under load: posters, live subscribers, and the operations
    that break it.

    :param cluster: a running :class:`LocalCluster`.
    :param deployment: whose nodes are exercised.
    """

    def __init__(self, cluster: LocalCluster, deployment: str) -> None:
        self.cluster = cluster
        self.deployment = cluster.plan.deployment(deployment)
        tenant = cluster.state["tenants"][deployment]
        self.tenant = str(tenant["tenantId"])
        self.api_key = str(tenant["apiKey"])
        self.nodes = {n.node_id: n for n in self.deployment.nodes}
        self.by_address = {n.address: n.node_id for n in self.deployment.nodes}
        self.alive = set(self.nodes)
        self.lock = threading.Lock()
        self.posts = PostLog()
        self.subscribers: list[Subscriber] = []
        self.stopping = threading.Event()
        self.posting_done = threading.Event()
        self.threads: list[threading.Thread] = []
        self.began = time.monotonic()
        #: ``(t, what)``: the breaking steps, for :meth:`explain`.
        self.marks: list[tuple[float, str]] = []
        self.post_count = 0
        self.poster: threading.Thread | None = None

    # Where clients go

    def live_nodes(self) -> list[str]:
        with self.lock:
            return sorted(self.alive)

    def resolve(self, avoid: str | None = None) -> str | None:
        """The node a client is sent to: the first answer of a live node's
        DNS server for the deployment's geo name (as a browser would)."""
        for server in random.sample(self.live_nodes(), k=len(self.live_nodes())):
            answer = dns_addresses(self.nodes[server].address, self.deployment.geo_name)
            if answer:
                choices = [self.by_address[a] for a in answer if a in self.by_address and self.by_address[a] != avoid]
                if choices:
                    return choices[0]
        return None

    def in_dns(self, node_id: str, observers: Iterable[str] | None = None) -> bool:
        """Whether any observer's DNS still answers ``node_id``'s address."""
        address = self.nodes[node_id].address
        for observer in observers if observers is not None else self.live_nodes():
            if observer == node_id:
                continue
            answer = dns_addresses(self.nodes[observer].address, self.deployment.geo_name, timeout=0.5)
            if answer is not None and address in answer:
                return True
        return False

    def mesh_state(self, observer: str, node_id: str) -> str | None:
        view = self.cluster.mesh_view(self.nodes[observer])
        if view is None or node_id not in view:
            return None
        return str(view[node_id].get("state"))

    def owner(self, thread: str, among: Iterable[str] | None = None) -> str:
        """The node that sequences ``thread``'s channel (rendezvous over the
        deployment's live nodes)."""
        return str(rendezvous((self.tenant, thread), among if among is not None else self.nodes))

    # Threads

    def create_thread(self, url_id: str) -> str:
        """Post a first comment to ``url_id``; the thread's id."""
        node = self.nodes[self.live_nodes()[0]]
        path = "/api/v1/{}/comments?urlId={}".format(self.tenant, quote(url_id, safe=""))
        conn = http.client.HTTPConnection(node.address, HTTP_PORT, timeout=30)
        try:
            body = json.dumps({"text": "first", "displayName": "Chaos"})
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            raw = response.read()
            if response.status != 201:
                raise AssertionError("creating a thread answered {}: {!r}".format(response.status, raw[:200]))
            # Read as the poster, as a browser would: the session cookie
            # carries the write's consistency token, so the node's standby
            # answers at least that new (a stranger's read may come before
            # the standby replayed the write: docs/consistency.md).
            cookie = "; ".join(c.split(";", 1)[0] for c in response.headers.get_all("Set-Cookie") or [])
            conn.request("GET", path, headers={"Cookie": cookie})
            thread = json.loads(conn.getresponse().read())["thread"]["id"]
        finally:
            conn.close()
        return str(thread)

    def _post(self, node: NodePlan, url_id: str, text: str) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection(node.address, HTTP_PORT, timeout=30)
        try:
            body = json.dumps({"text": text, "displayName": "Chaos"})
            path = "/api/v1/{}/comments?urlId={}".format(self.tenant, quote(url_id, safe=""))
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, {"raw": raw[:200].decode(errors="replace")}

    def start_posting(self, url_ids: list[str], rate: float) -> None:
        """Post ``rate`` comments a second, round-robin over ``url_ids``,
        each through a random live node."""
        self.poster = self._spawn(self._poster, url_ids, rate)

    def _poster(self, url_ids: list[str], rate: float) -> None:
        interval = 1.0 / rate
        next_at = time.monotonic()
        while not (self.stopping.is_set() or self.posting_done.is_set()):
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            live = self.live_nodes()
            if not live:
                continue
            node = self.nodes[random.choice(live)]
            self.post_count += 1
            url_id = url_ids[self.post_count % len(url_ids)]
            text = "chaos post {}".format(self.post_count)
            try:
                status, body = self._post(node, url_id, text)
            except (OSError, http.client.HTTPException):
                self.posts.refused += 1
                continue
            now = time.monotonic()
            if status == 201:
                self.posts.acked[body["comment"]["id"]] = (url_id, text, now)
                self.posts.via[body["comment"]["id"]] = node.node_id
            elif status == 503 and body.get("error", {}).get("code", body.get("code")) == "commit_unknown":
                self.posts.unknown.append((text, now))
            elif status == 503:
                self.posts.unavailable.append((text, now))
            else:
                self.posts.other.append((status, json.dumps(body)[:200]))

    def _spawn(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self.threads.append(t)
        return t

    # Live subscribers

    def subscribe(self, url_id: str, thread: str, node: str) -> Subscriber:
        """A subscriber of ``thread`` that starts on ``node``."""
        sub = Subscriber(len(self.subscribers), url_id, thread, node)
        self.subscribers.append(sub)
        self._spawn(self._subscriber, sub)
        return sub

    def _subscriber(self, sub: Subscriber) -> None:
        while not self.stopping.is_set():
            if not sub.node:
                sub.node = self.resolve(avoid=sub.nodes[-1] if sub.nodes else None) or ""
                if not sub.node:
                    time.sleep(0.05)
                    continue
            sub.nodes.append(sub.node)
            try:
                self._session(sub)
            except (OSError, ValueError):
                pass
            if self.stopping.is_set():
                return
            if sub.lost_at is None:
                sub.lost_at = time.monotonic()
                sub.reconnects += 1
            sub.node = ""
            time.sleep(0.05)

    def _session(self, sub: Subscriber) -> None:
        node = self.nodes[sub.node]
        s = socket.create_connection((node.address, HTTP_PORT), timeout=2)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall(
                (
                    "GET /live HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n".format(node.address, key)
                ).encode()
            )
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = s.recv(65536)
                if not data:
                    raise OSError("closed during the handshake")
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise OSError("no upgrade: {!r}".format(head[:40]))
            msg: dict[str, Any] = {"type": "subscribe", "tenant": self.tenant, "urlId": sub.url_id}
            if sub.seq is not None:
                msg["since"] = sub.seq
                msg["epoch"] = sub.epoch
            s.sendall(_masked_text(json.dumps(msg).encode()))
            s.settimeout(0.5)
            while not self.stopping.is_set():
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    raise OSError("closed")
                buf += data
                buf = self._frames(s, sub, buf)
        finally:
            s.close()

    def _frames(self, s: socket.socket, sub: Subscriber, buf: bytes) -> bytes:
        while len(buf) >= 2:
            opcode, n, hl = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                (n,) = struct.unpack_from("!H", buf, 2)
                hl = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                (n,) = struct.unpack_from("!Q", buf, 2)
                hl = 10
            if len(buf) < hl + n:
                break
            payload, buf = buf[hl : hl + n], buf[hl + n :]
            if opcode == 1:
                self._message(sub, json.loads(payload), time.monotonic())
            elif opcode == 9:
                s.sendall(_masked(10, payload))
            elif opcode == 8:
                raise OSError("closed by the node")
        return buf

    def read_thread(self, thread: str, timeout: float = 60.0) -> set[str]:
        """The thread's comment ids, as a reloading client gets them (from
        the deployment's primary; retried while there is none, as a client
        retries its reload)."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                return {row[0] for row in self.sql("SELECT id FROM comments WHERE thread_id = %s", (thread,))}
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One query on the deployment's current primary."""
        import psycopg

        primary = self.cluster.current_primary(self.deployment.name)
        address = self.cluster._servers(self.deployment.name)[primary]
        dsn = "host={} port=5432 user=postgres dbname=fastedge connect_timeout=5".format(address)
        with psycopg.connect(dsn, autocommit=True) as conn:
            return list(conn.execute(query.encode(), params).fetchall())

    def _message(self, sub: Subscriber, m: dict[str, Any], now: float) -> None:
        kind = m.get("type")
        comment = (m.get("data") or {}).get("comment", {}).get("id") if kind == "event" else None
        epoch = str(m["id"]).rpartition("-")[0] if kind == "event" else m.get("epoch")
        label = "subscribed reload" if kind == "subscribed" and m.get("reload") else str(kind)
        sub.timeline.append((now, sub.node, label, epoch, m.get("seq"), comment))
        if kind == "subscribed":
            if sub.first_subscribed is None:
                sub.first_subscribed = now
            if m.get("reload") or sub.seq is None:
                if sub.seq is not None:
                    sub.reloads += 1
                sub.covered |= self.read_thread(sub.thread)
                sub.segment = set()
                sub.epoch, sub.seq = m["epoch"], m["seq"]
            else:
                sub.replayed += int(m.get("replayed") or 0)
            if sub.lost_at is not None:
                sub.recoveries.append(now - sub.lost_at)
                sub.lost_at = None
        elif kind == "reset":
            sub.reloads += 1
            sub.covered |= self.read_thread(sub.thread)
            sub.segment = set()
            sub.epoch, sub.seq = m["epoch"], m["seq"]
        elif kind == "event":
            epoch = str(m["id"]).rpartition("-")[0]
            if epoch == sub.epoch and m["seq"] <= (sub.seq or 0):
                sub.duplicates += 1
                sub.duplicate_log.append("seq {} after {} in {}".format(m["seq"], sub.seq, epoch))
            elif epoch != sub.epoch or m["seq"] != (sub.seq or 0) + 1:
                sub.seq_gaps += 1
            comment = (m.get("data") or {}).get("comment", {}).get("id")
            if comment is not None:
                if comment in sub.segment:
                    sub.duplicates += 1
                    sub.duplicate_log.append("comment {} again at {}-{}".format(comment, epoch, m["seq"]))
                sub.segment.add(comment)
                sub.received.setdefault(comment, now)
            sub.epoch, sub.seq = epoch, m["seq"]

    def subscribed(self) -> bool:
        return all(s.first_subscribed is not None for s in self.subscribers)

    def recovered(self) -> bool:
        return all(s.lost_at is None for s in self.subscribers)

    # Breaking things

    def kill_node(self, node_id: str) -> float:
        """kill -9 ``node_id``; the monotonic time of the kill."""
        with self.lock:
            self.alive.discard(node_id)
        killed = time.monotonic()
        self.mark("kill -9 " + node_id)
        self.cluster.kill_node(node_id)
        return killed

    def restart_node(self, node_id: str, timeout: float = 60.0) -> None:
        self.mark("restart " + node_id)
        self.cluster.start_node(node_id)
        self.cluster.wait_healthy(node_id, timeout)
        with self.lock:
            self.alive.add(node_id)

    def withdrawal(self, node_id: str, since: float, timeout: float = 30.0) -> tuple[float, float | None]:
        """Poll the other nodes' DNS and mesh map until ``node_id`` is gone
        from every DNS answer; ``(seconds to withdraw, seconds until the
        first observer showed it dead or None)``, both from ``since``."""
        observers = [n for n in self.live_nodes() if n != node_id]
        withdrawn: float | None = None
        dead: float | None = None
        deadline = since + timeout
        while time.monotonic() < deadline and (withdrawn is None or dead is None):
            now = time.monotonic()
            if withdrawn is None and not self.in_dns(node_id, observers):
                withdrawn = now - since
            if dead is None and any(self.mesh_state(o, node_id) == "dead" for o in observers):
                dead = time.monotonic() - since
            time.sleep(0.02)
        if withdrawn is None:
            raise AssertionError("{} still answered by DNS {:g} s after it failed".format(node_id, timeout))
        return withdrawn, dead

    def stop_posting(self) -> None:
        """Stop posting (the posts in flight finish)."""
        self.posting_done.set()
        if self.poster is not None:
            self.poster.join(40)

    def delivered(self) -> bool:
        """Whether every subscriber holds every acknowledged post it is
        owed (see :meth:`report`)."""
        return self._events_lost() == 0

    def _events_lost(self) -> int:
        return len(self.missing())

    def missing(self) -> list[tuple[int, str, str, float]]:
        """``(subscriber, its nodes, comment id, acknowledged at)`` of every
        owed event a subscriber neither received nor reloaded."""
        lost = []
        acked = dict(self.posts.acked)
        by_url: dict[str, list[str]] = {}
        for comment, (url_id, _text, _t) in acked.items():
            by_url.setdefault(url_id, []).append(comment)
        for sub in self.subscribers:
            for comment in by_url.get(sub.url_id, []):
                if sub.first_subscribed is None or acked[comment][2] <= sub.first_subscribed:
                    continue
                if comment not in sub.received and comment not in sub.covered:
                    lost.append((sub.index, ",".join(sub.nodes), comment, acked[comment][2]))
        return lost

    def mark(self, what: str) -> None:
        """Note a step of the run (a kill, a cut) for :meth:`explain`."""
        self.marks.append((time.monotonic(), what))

    def explain(self, limit: int = 3, before: float = 3.0, after: float = 6.0) -> list[str]:
        """For the first ``limit`` missing events: where the post was
        answered, and what its subscriber saw around then (times in seconds
        since the run began): what to read beside the nodes' logs."""
        lines = ["steps: " + ", ".join("{:.3f} {}".format(t - self.began, what) for t, what in self.marks)]
        for index, nodes, comment, acked in self.missing()[:limit]:
            sub = self.subscribers[index]
            lines.append(
                "comment {} acked at {:.3f} via {}; subscriber {} ({}), timeline:".format(
                    comment, acked - self.began, self.posts.via.get(comment), index, nodes
                )
            )
            for t, node, kind, epoch, seq, seen in sub.timeline:
                if acked - before <= t <= acked + after:
                    lines.append("  {:.3f} {} {} {}:{} {}".format(t - self.began, node, kind, epoch, seq, seen or ""))
        return lines

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(40)

    # The verdict

    def report(self) -> dict[str, Any]:
        """Counts after the run (call after :meth:`stop`)."""
        acked = self.posts.acked
        stored = (
            {r[0] for r in self.sql("SELECT id FROM comments WHERE id = ANY(%s)", (list(acked),))} if acked else set()
        )
        lost_writes = sorted(set(acked) - stored)
        events_lost = self._events_lost()
        recoveries = [r for s in self.subscribers for r in s.recoveries]
        return {
            "acknowledged_posts": len(acked),
            "acknowledged_lost": len(lost_writes),
            "lost_ids": lost_writes[:10],
            "commit_unknown": len(self.posts.unknown),
            "unavailable": len(self.posts.unavailable),
            "refused": self.posts.refused,
            "other_answers": self.posts.other[:5],
            "live_events_lost": events_lost,
            "missing": self.missing()[:10],
            "explained": self.explain(),
            "duplicates": sum(s.duplicates for s in self.subscribers),
            "duplicate_log": [
                (s.index, ",".join(s.nodes), s.duplicate_log[:3]) for s in self.subscribers if s.duplicate_log
            ],
            "seq_gaps": sum(s.seq_gaps for s in self.subscribers),
            "reloads": sum(s.reloads for s in self.subscribers),
            "events_replayed": sum(s.replayed for s in self.subscribers),
            "reconnects": sum(s.reconnects for s in self.subscribers),
            "recoveries": recoveries,
        }


def origin_gets(cluster: LocalCluster) -> float:
    """S3 GET requests the cluster's origin has answered, from SeaweedFS's
    own metrics (counted at the origin, not by the node)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    port = cluster.state["origin"]["ports"]["metrics"]
    with urllib.request.urlopen("http://{}:{}/metrics".format(cluster.plan.origin_address, port), timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "SeaweedFS_s3_request":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("type") == "GET":
                total += sample.value
    return total


def fetch_media(node: NodePlan, tenant: str, key: str) -> tuple[int, str | None, bytes]:
    """``GET /media/<tenant>/<key>`` on ``node``: status, X-Cache, body."""
    conn = http.client.HTTPConnection(node.address, HTTP_PORT, timeout=10)
    try:
        conn.request("GET", "/media/{}/{}".format(tenant, key))
        response = conn.getresponse()
        return response.status, response.getheader("x-cache"), response.read()
    finally:
        conn.close()


def node_incarnation(chaos: Chaos, node_id: str) -> int | None:
    """``node_id``'s incarnation as another live node's mesh map tells it."""
    for observer in chaos.live_nodes():
        if observer == node_id:
            continue
        view = chaos.cluster.mesh_view(chaos.nodes[observer])
        if view and node_id in view and view[node_id].get("state") == "alive":
            return int(view[node_id]["incarnation"])
    return None
