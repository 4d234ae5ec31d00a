# -*- test-case-name: tests.unit.dns.test_server -*-
"""The fast path: the common query answered from precomputed wire bytes.

The common query is one question, A or AAAA, class IN, for a geo-routed
name, with at most an OPT record (EDNS 0, optionally carrying ECS). It is
answered here without building a single object: the answer records for each
(deployment, type, location cell) are kept as bytes, with owner names that
point back at the question (offset 12), so an answer is the header, the
question as asked, those bytes and the OPT record.

Anything else (other types, names, flags, errors, a deployment with no live
node) returns ``None`` and goes to the general path (``twisted.names``),
which gives the same answers; tests check both agree byte for byte.
A name is matched on its exact wire labels, so a label holding a ``.``
octet (the label ``.zzz`` before ``edge...``) never matches a geo name: it
goes to the general path, whose checker answers it FORMERR (twisted.names
cannot echo it).
"""

from __future__ import annotations

import socket
import struct

from .answers import AnswerTable, Cell, ClientLocator
from .authority import EdgeAuthority
from .metrics import DnsStats
from .wire import (
    AA,
    CD,
    HEADER,
    OPTION_ECS,
    QR,
    RD,
    ClientSubnet,
    Malformed,
    _parse_ecs,
    opt_record,
)

_HH = struct.Struct(">HH")
_RR_FIXED = struct.Struct(">HHIH")
_ANSWER = struct.Struct(">HHHIH")
_A, _AAAA = 1, 28


class FastPath:
    """Answers the common query shape, or declines with ``None``."""

    def __init__(
        self,
        authority: EdgeAuthority,
        table: AnswerTable,
        locator: ClientLocator,
        stats: DnsStats,
        *,
        ttl: int,
        max_udp_payload: int,
        response_entries: int = 100_000,
        stale_ttl: int | None = None,
    ) -> None:
        self._locator = locator
        self._table = table
        self._stats = stats
        self._ttl = ttl
        self._stale_ttl = ttl if stale_ttl is None else stale_ttl
        self._our_size = max_udp_payload
        self._last: tuple[bytes, int, tuple[str, ...], bool] = (b"", 0, (), False)
        #: wire-format lower-case name -> deployment.
        self._names: dict[bytes, str] = {}
        for zone in authority.zones.values():
            for name in zone.geo:
                if authority.zone_for(name) is zone:
                    self._names[_wire_name(name)] = zone.deployment
        self._answers: dict[tuple[str, int, Cell], tuple[bytes, int, tuple[str, ...]]] = {}
        #: (query after its id, source, udp) -> (answer after its id, qtype,
        #: nodes, ECS seen): a repeated query costs one lookup.
        self._responses: dict[tuple[bytes, str, bool], tuple[bytes, int, tuple[str, ...], bool]] = {}
        self._response_entries = response_entries
        table.listeners.append(self.forget)
        locator.listeners.append(self.forget)

    def forget(self) -> None:
        """Drop every precomputed answer (the node map or the GeoIP index
        changed)."""
        self._answers = {}
        self._responses = {}

    def answer(self, data: bytes, source: str, udp: bool) -> bytes | None:
        """The answer to ``data`` from ``source``, or ``None`` to decline."""
        key = (data[2:], source, udp)
        found = self._responses.get(key)
        if found is None:
            response = self._answer(data, source, udp)
            if response is None:
                return None
            found = self._last
            if len(self._responses) >= self._response_entries:
                self._responses = {}
            self._responses[key] = found
        body, qtype, nodes, ecs = found
        stats = self._stats
        by_node = stats.answers_by_node
        for node in nodes:
            by_node[node] += 1
        if ecs:
            stats.ecs += 1
        stats.queries[(qtype, 0, "fast", "udp" if udp else "tcp")] += 1
        return data[:2] + body

    def _records(self, deployment: str, qtype: int, cell: Cell) -> tuple[bytes, int, tuple[str, ...]]:
        key = (deployment, qtype, cell)
        found = self._answers.get(key)
        if found is None:
            choice = self._table.choose(deployment, 4 if qtype == _A else 6, cell)
            family = socket.AF_INET if qtype == _A else socket.AF_INET6
            ttl = self._stale_ttl if choice.stale else self._ttl
            rrs = b"".join(
                _ANSWER.pack(0xC00C, qtype, 1, ttl, 4 if qtype == _A else 16) + socket.inet_pton(family, address)
                for address, _node in choice.addresses
            )
            found = (rrs, len(choice.addresses), tuple(n.node_id for n in choice.nodes))
            self._answers[key] = found
        return found

    def _answer(self, data: bytes, source: str, udp: bool) -> bytes | None:
        n = len(data)
        if n < 17:
            return None
        qid, flags, qd, an, ns, ar = HEADER.unpack_from(data)
        if flags & 0xF800 or qd != 1 or an or ns or ar > 1:
            return None
        pos = 12
        length = data[pos]
        while length:
            if length > 63:
                return None
            pos += length + 1
            if pos >= n:
                return None
            length = data[pos]
        end = pos + 5
        if end > n or pos > 12 + 254:
            return None
        qtype, qclass = _HH.unpack_from(data, pos + 1)
        if qclass != 1 or (qtype != _A and qtype != _AAAA):
            return None
        deployment = self._names.get(data[12 : pos + 1].lower())
        if deployment is None:
            return None
        ecs: ClientSubnet | None = None
        opt = b""
        limit = 512
        if ar:
            if end + 11 > n or data[end] != 0:
                return None
            rtype, udp_size, ttl, rdlen = _RR_FIXED.unpack_from(data, end + 1)
            if rtype != 41 or ttl & 0xFFFF7FFF or end + 11 + rdlen != n:
                return None
            p = end + 11
            while p < n:
                if p + 4 > n:
                    return None
                code, size = _HH.unpack_from(data, p)
                p += 4
                if p + size > n:
                    return None
                if code == OPTION_ECS:
                    if ecs is not None:
                        return None
                    try:
                        ecs = _parse_ecs(data[p : p + size], (qid, flags))
                    except Malformed:
                        return None
                p += size
            limit = min(max(udp_size, 512), self._our_size)
        elif end != n:
            return None
        if ecs is not None:
            cell, scope = self._locator.by_subnet(ecs, source)
        else:
            cell = self._locator.by_address(source)
        rrs, count, nodes = self._records(deployment, qtype, cell)
        if not count:
            return None
        if ar:
            opt = opt_record(
                self._our_size,
                0,
                bool(ttl & 0x8000),
                ecs.option(scope) if ecs is not None else b"",
            )
        response = (
            HEADER.pack(qid, QR | AA | (flags & (RD | CD)), 1, count, 0, 1 if ar else 0) + data[12:end] + rrs + opt
        )
        if udp and len(response) > limit:
            # Rare (many addresses, a small buffer): the general path
            # truncates.
            return None
        self._last = (response[2:], qtype, nodes, ecs is not None)
        return response


def _wire_name(name: str) -> bytes:
    """``a.b`` as wire-format labels."""
    out = b""
    for label in name.split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"
