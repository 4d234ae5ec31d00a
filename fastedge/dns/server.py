# -*- test-case-name: tests.unit.dns.test_server -*-
"""The DNS server's Twisted adapters: the protocols and the server factory.

Every message goes first to the fast path (:mod:`fastedge.dns.fastpath`).
What it declines is checked by :func:`fastedge.dns.wire.parse_query`
(malformed queries get FORMERR/BADVERS, opcodes other than QUERY NOTIMP,
all header only; non-queries nothing), so what reaches ``twisted.names`` is
one QUERY with one question whose name Twisted can carry: its ``Message``
parses it, :class:`~fastedge.dns.authority.EdgeAuthority` answers and its
records encode. The factory adds what Twisted leaves out: the EDNS OPT
record with the ECS echo, correct response flags, and truncation to the
client's UDP size (Twisted either never truncates or cuts mid-record).
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.names import dns, server
from twisted.protocols.policies import TimeoutMixin

from ..tokenbucket import KeyedBuckets
from .authority import Client, EdgeAuthority, Resolution
from .fastpath import FastPath
from .metrics import DnsStats
from .wire import (
    FORMERR,
    HEADER,
    NOTIMP,
    NXDOMAIN,
    OK,
    TC,
    Drop,
    Edns,
    Malformed,
    ParsedQuery,
    error_response,
    opt_record,
    parse_query,
    response_flags,
    truncated_response,
)


class _Context:
    """What the general path keeps of a query while Twisted handles it."""

    __slots__ = ("parsed", "client", "udp", "started")

    def __init__(self, parsed: ParsedQuery, client: Client, udp: bool, started: float) -> None:
        self.parsed = parsed
        self.client = client
        self.udp = udp
        self.started = started


class SourceRateLimit:
    """Responses per second per source network (/24 for IPv4, /56 for IPv6),
    a token bucket each. Only UDP is limited: its source can be forged, and a
    flood from one network must not crowd out everyone else.

    :param rate: responses per second (burst: twice that); 0 means no limit.
    """

    #: Networks tracked at most; past it the least recently seen is forgotten.
    MAX_NETWORKS = 100_000

    def __init__(self, rate: int, clock: IReactorTime) -> None:
        self._rate = rate
        self._buckets = KeyedBuckets(float(rate), 2.0 * rate, clock, max_keys=self.MAX_NETWORKS)
        self._slip = False

    def _network(self, source: str) -> str:
        if ":" in source:
            return str(ipaddress.IPv6Network((source, 56), strict=False).network_address)
        return source.rsplit(".", 1)[0]

    def check(self, source: str) -> str:
        """``"pass"``, ``"drop"``, or ``"slip"`` (send an empty truncated
        answer instead: a real client behind a forged flood retries over TCP)."""
        if not self._rate:
            return "pass"
        if self._buckets.take(self._network(source)):
            return "pass"
        self._slip = not self._slip
        return "slip" if self._slip else "drop"


class EdgeDatagramProtocol(dns.DNSDatagramProtocol):
    """DNS over UDP, handing each datagram to the server factory."""

    #: No "Starting protocol <... at 0x...>" line: the start-up summary says where DNS listens.
    noisy = False

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.controller.handle_datagram(data, addr, self)

    def write_answer(self, data: bytes, address: Any) -> None:
        """Send an answer."""
        self.transport.write(data, address)


class EdgeStreamProtocol(dns.DNSProtocol, TimeoutMixin):
    """DNS over TCP (length-prefixed messages, RFC 7766), closed when idle."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.callLater = self.controller.clock.callLater  # type: ignore[method-assign]
        self.setTimeout(self.controller.tcp_idle_seconds)

    def stringReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.controller.handle_stream(data, self)

    def write_answer(self, data: bytes, address: Any = None) -> None:
        """Send an answer."""
        self.sendString(data)

    def timeoutConnection(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)


class EdgeServerFactory(server.DNSServerFactory):
    """The server: fast path first, else ``twisted.names`` with our authority.

    :param timer: a monotonic clock for the latency metric (real time: the
        histogram measures work, not the reactor's notion of time).
    """

    _log = Logger()
    #: No "Starting factory <... at 0x...>" line (the start-up summary lists listeners).
    noisy = False
    protocol = EdgeStreamProtocol

    def __init__(
        self,
        authority: EdgeAuthority,
        fast: FastPath,
        stats: DnsStats,
        *,
        clock: IReactorTime,
        max_udp_payload: int,
        tcp_idle_seconds: float,
        source_rate_limit: int,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__(authorities=[authority])
        self.authority = authority
        self.fast = fast
        self.stats = stats
        self.clock = clock
        self.max_udp_payload = max_udp_payload
        self.tcp_idle_seconds = tcp_idle_seconds
        self.rate_limit = SourceRateLimit(source_rate_limit, clock)
        self._timer = timer

    def buildProtocol(self, addr: Any) -> EdgeStreamProtocol:
        p = self.protocol(self, reactor=self.clock)
        p.factory = self
        return p

    # Entry points of the protocols

    def handle_datagram(self, data: bytes, addr: tuple[str, int], protocol: EdgeDatagramProtocol) -> None:
        """One UDP datagram from ``addr``."""
        started = self._timer()
        verdict = self.rate_limit.check(addr[0])
        if verdict != "pass":
            self.stats.dropped["rate-limited"] += 1
            if verdict == "slip" and len(data) >= 12:
                qid, flags = struct.unpack_from(">HH", data)
                if not flags & 0x8000:
                    protocol.write_answer(
                        HEADER.pack(qid, response_flags(flags, OK, False) | TC, 0, 0, 0, 0),
                        addr,
                    )
            return
        answer = self.fast.answer(data, addr[0], True)
        if answer is not None:
            protocol.write_answer(answer, addr)
            self.stats.observe(self._timer() - started)
            return
        self._general(data, addr[0], True, protocol, addr, started)

    def handle_stream(self, data: bytes, protocol: EdgeStreamProtocol) -> None:
        """One message received over TCP."""
        started = self._timer()
        assert protocol.transport is not None
        source = protocol.transport.getPeer().host  # type: ignore[attr-defined]
        answer = self.fast.answer(data, source, False)
        if answer is not None:
            protocol.write_answer(answer)
            self.stats.observe(self._timer() - started)
            return
        self._general(data, source, False, protocol, None, started)

    # The general path

    def _general(
        self,
        data: bytes,
        source: str,
        udp: bool,
        protocol: Any,
        addr: Any,
        started: float,
    ) -> None:
        transport = "udp" if udp else "tcp"
        try:
            parsed = parse_query(data)
        except Drop:
            self.stats.dropped["not-a-query"] += 1
            return
        except Malformed as e:
            self._log.debug(
                "query from {source} answered {rcode} at once: {reason}",
                source=source,
                rcode=e.rcode,
                reason=e.reason,
            )
            self.stats.queries[(0, e.rcode, "general", transport)] += 1
            protocol.write_answer(error_response(e, self.max_udp_payload), addr)
            self.stats.observe(self._timer() - started)
            return
        message = dns.Message()
        try:
            message.fromStr(data)
        except (EOFError, ValueError, IndexError, struct.error) as e:
            # Our checks passed but Twisted's parser refused it.
            self._log.debug(
                "query from {source} Twisted cannot parse: {error}",
                source=source,
                error=e,
            )
            error = Malformed(FORMERR, str(e), (parsed.id, parsed.flags), parsed.edns)
            self.stats.queries[(0, FORMERR, "general", transport)] += 1
            protocol.write_answer(error_response(error, self.max_udp_payload), addr)
            return
        if parsed.edns is not None and parsed.edns.ecs is not None:
            self.stats.ecs += 1
        message._edge = _Context(parsed, Client(source, parsed.edns.ecs if parsed.edns else None), udp, started)  # type: ignore[attr-defined]
        self.messageReceived(message, protocol, addr)

    def messageReceived(self, message: dns.Message, proto: Any, address: Any = None) -> None:
        # Twisted's dispatches by opcode (and stamps and logs each message):
        # parse_query has let through only QUERY with one question, the
        # other opcodes were answered NOTIMP there.
        self.handleQuery(message, proto, address)

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        ctx: _Context = message._edge  # type: ignore[attr-defined]
        query = message.queries[0]
        result: Resolution = self.authority.resolve(query.name.name, query.type, query.cls, ctx.client)
        response = dns.Message(
            id=message.id,
            answer=True,
            opCode=message.opCode,
            auth=True,
            rCode=result.rcode,
        )
        response.queries = message.queries
        response.answers = result.answers
        response.authority = result.authority
        response.additional = result.additional
        response._edge = ctx  # type: ignore[attr-defined]
        response._edge_scope = result.scope  # type: ignore[attr-defined]
        for node in result.nodes:
            self.stats.answers_by_node[node] += 1
        self.sendReply(protocol, response, address)

    def sendReply(self, protocol: Any, message: dns.Message, address: Any) -> None:
        """Encode with Twisted, then set the flags, add OPT, truncate."""
        ctx: _Context = message._edge  # type: ignore[attr-defined]
        parsed = ctx.parsed
        rcode = message.rCode
        message.maxSize = 0
        body = bytearray(message.toStr())
        qid, _flags, qd, an, ns, ar = HEADER.unpack_from(body)
        opt = b""
        edns: Edns | None = parsed.edns
        if edns is not None:
            echo = b""
            if edns.ecs is not None and rcode != FORMERR:
                echo = edns.ecs.option(getattr(message, "_edge_scope", 0))
            opt = opt_record(self.max_udp_payload, rcode, edns.dnssec_ok, echo)
        authoritative = rcode in (OK, NXDOMAIN) and message.opCode == dns.OP_QUERY
        HEADER.pack_into(
            body,
            0,
            qid,
            response_flags(parsed.flags, rcode, authoritative),
            qd,
            an,
            ns,
            ar + (1 if opt else 0),
        )
        wire = bytes(body) + opt
        transport = "udp" if ctx.udp else "tcp"
        if ctx.udp:
            limit = min(edns.udp_size, self.max_udp_payload) if edns is not None else 512
            if len(wire) > limit:
                wire = truncated_response(wire, opt)
                self.stats.truncated += 1
        qtype = message.queries[0].type if message.queries else 0
        self.stats.queries[(qtype, rcode, "general", transport)] += 1
        protocol.write_answer(wire, address)
        self.stats.observe(self._timer() - ctx.started)


__all__ = [
    "EdgeDatagramProtocol",
    "EdgeServerFactory",
    "EdgeStreamProtocol",
    "NOTIMP",
    "SourceRateLimit",
]
