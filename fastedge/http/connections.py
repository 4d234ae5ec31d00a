# -*- test-case-name: tests.unit.http.test_connections -*-
"""The one count of open client connections, and the limits on it.

Every client connection of the public listeners (HTTP and HTTPS) is counted
here exactly once: admitted when accepted (:meth:`ConnectionGate.admit`),
released when its outermost protocol -- the one the reactor's transport
calls ``connectionLost`` on, whatever it became: HTTP/1.1, HTTP/2, a
WebSocket, an SSE stream -- loses its connection (:meth:`Ticket.release`).
The mesh announces :attr:`ConnectionGate.open` as the node's load, and a
clean stop waits on :meth:`ConnectionGate.when_idle`.

The limits, decided at accept time so that a refused connection costs no
more than ``accept`` and ``close``:

- per source address and per source network (a /24 for IPv4, a /64 for
  IPv6 by default): over either, the connection is closed at once without
  an answer (an abusive client gets nothing for its connection; a real
  user behind a large NAT sees a closed connection and retries);
- a global ceiling below the descriptor limit: at the ceiling the
  listeners stop accepting (``pauseProducing`` on the listening port, i.e.
  ``stopReading``) so new clients wait in the kernel's backlog instead of
  the node failing ``accept`` with ``EMFILE``; they resume below it. The
  few connections a listener accepts in the same batch after pausing are
  answered 503 with ``Retry-After`` on plain HTTP, and closed on HTTPS
  (an answer would first cost a TLS handshake). Accepting resumes once 1%
  of the ceiling is free again.
"""

from __future__ import annotations

import resource
import socket
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger

from .metrics import LimitMetrics

#: Why a connection is refused (the ``reason`` label of
#: ``fastedge_http_connections_refused_total``).
PER_IP = "per_ip"
PER_PREFIX = "per_prefix"
CEILING = "ceiling"


def descriptor_limit() -> int:
    """The process's soft limit on open descriptors (``ulimit -n``)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_ceiling(max_connections: int, reserved: int, descriptors: int) -> int:
    """The number of client connections to accept at once.

    :param max_connections: configured ceiling; 0 derives it from the
        descriptor limit.
    :param reserved: descriptors kept for everything else (DNS over TCP, the
        mesh, the store, files).
    :param descriptors: the descriptor limit.
    :returns: the configured ceiling, but never more than the descriptor
        limit less the reserve (at least half the descriptors, for a tiny
        limit).
    """
    available = max(descriptors - reserved, descriptors // 2)
    if max_connections == 0:
        return available
    return min(max_connections, available)


class Ticket:
    """One admitted connection; :meth:`release` it once, when it closes.

    :ivar connection: its outermost protocol, once built (a clean stop asks
        each open connection to close: :mod:`fastedge.http.drain`).
    """

    __slots__ = ("_gate", "ip", "prefix", "connection")

    def __init__(self, gate: ConnectionGate, ip: Any, prefix: Any) -> None:
        self._gate: ConnectionGate | None = gate
        self.ip = ip
        self.prefix = prefix
        self.connection: Any = None

    def release(self) -> None:
        """Uncount the connection (later calls do nothing)."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._release(self)


_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def _source(addr: Any, v4_prefix: int, v6_prefix: int) -> tuple[Any, Any]:
    """``(address, network)`` keys of a peer address; ``(None, None)`` for
    a peer without an IP address (a UNIX socket, a test double).

    This runs for every connection accepted, refused ones included (a flood
    of them is what it is for): ``inet_pton``, not :mod:`ipaddress`, whose
    parsing cost ~80 us a connection in a profile of such a flood.
    """
    host = getattr(addr, "host", None)
    if not isinstance(host, str):
        return None, None
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except OSError:
        try:
            packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        except OSError:
            return None, None
        if packed[:12] == _V4_MAPPED:
            # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
            packed = packed[12:]
        else:
            return packed, (6, int.from_bytes(packed, "big") >> (128 - v6_prefix))
    return packed, (4, int.from_bytes(packed, "big") >> (32 - v4_prefix))


class ConnectionGate:
    """Counts open client connections and enforces the limits on them.

    :param max_connections: the global ceiling (0: none).
    :param per_ip: connections at once from one address (0: no limit).
    :param per_prefix: connections at once from one network (0: no limit).
    :param ipv4_prefix: prefix length of an IPv4 client's network.
    :param ipv6_prefix: prefix length of an IPv6 client's network.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        max_connections: int = 0,
        per_ip: int = 0,
        per_prefix: int = 0,
        ipv4_prefix: int = 24,
        ipv6_prefix: int = 64,
        metrics: LimitMetrics | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.per_ip = per_ip
        self.per_prefix = per_prefix
        self._v4_prefix = ipv4_prefix
        self._v6_prefix = ipv6_prefix
        self.metrics = metrics
        #: Client connections open now.
        self.open = 0
        self._by_ip: dict[Any, int] = {}
        self._by_prefix: dict[Any, int] = {}
        self._ports: list[IPushProducer] = []
        self.paused = False
        self._idle_waiters: list[Deferred[None]] = []
        self._tickets: set[Ticket] = set()
        if metrics is not None:
            metrics.ceiling.set(max_connections)

    def admit(self, addr: Any) -> Ticket | str:
        """Count a connection just accepted from ``addr``.

        :returns: its :class:`Ticket`, or why it is refused (:data:`PER_IP`,
            :data:`PER_PREFIX`, :data:`CEILING`); a refused connection is
            not counted, and is counted in the metrics.
        """
        if self.max_connections and self.open >= self.max_connections:
            return self._refuse(CEILING)
        ip, prefix = _source(addr, self._v4_prefix, self._v6_prefix)
        if ip is not None:
            if self.per_ip and self._by_ip.get(ip, 0) >= self.per_ip:
                return self._refuse(PER_IP)
            if self.per_prefix and self._by_prefix.get(prefix, 0) >= self.per_prefix:
                return self._refuse(PER_PREFIX)
            self._by_ip[ip] = self._by_ip.get(ip, 0) + 1
            self._by_prefix[prefix] = self._by_prefix.get(prefix, 0) + 1
        self.open += 1
        if self.max_connections and self.open >= self.max_connections and not self.paused:
            self._pause()
        ticket = Ticket(self, ip, prefix)
        self._tickets.add(ticket)
        return ticket

    def _refuse(self, reason: str) -> str:
        if self.metrics is not None:
            self.metrics.refused_by[reason].inc()
        return reason

    def _release(self, ticket: Ticket) -> None:
        self.open -= 1
        self._tickets.discard(ticket)
        if ticket.ip is not None:
            _decrement(self._by_ip, ticket.ip)
            _decrement(self._by_prefix, ticket.prefix)
        # Resume with 1% headroom: at the ceiling, every close would
        # otherwise flip accepting off and on again.
        if self.paused and self.open <= self.max_connections - max(1, self.max_connections // 100):
            self._resume()
        if self.open == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def connections(self) -> list[Any]:
        """The outermost protocol of every open connection (see :class:`Ticket`)."""
        return [t.connection for t in self._tickets if t.connection is not None]

    def from_ip(self, host: str) -> int:
        """Connections open now from address ``host``."""
        ip, _ = _source(_Host(host), self._v4_prefix, self._v6_prefix)
        return self._by_ip.get(ip, 0)

    def when_idle(self) -> Deferred[None]:
        """Fires once no client connection is open (at once if none is)."""
        if self.open == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    # Accept-side backpressure.

    def watch(self, port: Any) -> None:
        """Pause and resume accepting on listening ``port`` with the ceiling."""
        producer = IPushProducer(port, None)
        if producer is None:
            return
        self._ports.append(producer)
        if self.paused:
            producer.pauseProducing()

    def unwatch(self, port: Any) -> None:
        """Forget a port that stopped listening."""
        producer = IPushProducer(port, None)
        if producer in self._ports:
            self._ports.remove(producer)

    def _pause(self) -> None:
        self.paused = True
        self._log.warn(
            "{open} client connections open, the ceiling: not accepting more until some close",
            open=self.open,
        )
        if self.metrics is not None:
            self.metrics.accepting.set(0)
            self.metrics.accept_pauses.inc()
        for port in self._ports:
            port.pauseProducing()

    def _resume(self) -> None:
        self.paused = False
        self._log.info("{open} client connections open: accepting again", open=self.open)
        if self.metrics is not None:
            self.metrics.accepting.set(1)
        for port in self._ports:
            port.resumeProducing()


class _Host:
    def __init__(self, host: str) -> None:
        self.host = host


def _decrement(counts: dict[Any, int], key: Any) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
