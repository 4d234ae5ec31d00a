# -*- test-case-name: tests.unit.dns.test_wire -*-
"""DNS wire format pieces we own: checking a query, EDNS and Client Subnet.

:func:`parse_query` walks a whole query message (any bytes may arrive) and
either returns what the server needs to know of it or raises
:class:`Drop` (answer nothing: too short for a header, or not a query) or
:class:`Malformed` (answer with the rcode it carries, e.g. FORMERR, BADVERS).
Names, records and answers are then Twisted's (``twisted.names.dns``); only
the fast path (:mod:`fastedge.dns.fastpath`) writes answers itself, and this
module has the pieces it shares with the general path: the OPT record, the
ECS option (RFC 7871) and truncation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "BADVERS",
    "ClientSubnet",
    "Drop",
    "Edns",
    "Malformed",
    "ParsedQuery",
    "error_response",
    "opt_record",
    "parse_query",
    "response_flags",
    "truncated_response",
]

HEADER = struct.Struct(">HHHHHH")
_RR_FIXED = struct.Struct(">HHIH")
_HH = struct.Struct(">HH")

OK, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
#: Extended rcode 16 (RFC 6891): an EDNS version we do not speak.
BADVERS = 16
TYPE_OPT = 41
OPTION_ECS = 8
MAX_NAME = 255

QR, AA, TC, RD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0010


class Drop(Exception):
    """Send nothing back (too short to answer, or a response message)."""


class Malformed(Exception):
    """Answer with ``rcode`` and no records.

    :ivar header: ``(id, flags)`` of the query, to answer it.
    :ivar edns: the query's EDNS when it was read (the answer carries OPT).
    """

    def __init__(self, rcode: int, reason: str, header: tuple[int, int], edns: Edns | None = None) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.reason = reason
        self.header = header
        self.edns = edns


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """An EDNS Client Subnet option as the query sent it (RFC 7871 §6)."""

    family: int
    source_prefix: int
    scope_prefix: int
    #: The ADDRESS octets as received (echoed unchanged).
    address: bytes

    def ip(self) -> str:
        """The subnet's address, zero-padded, as a string."""
        if self.family == 1:
            return ".".join(str(b) for b in self.address.ljust(4, b"\0"))
        padded = self.address.ljust(16, b"\0")
        return ":".join("{:x}".format(int.from_bytes(padded[i : i + 2], "big")) for i in range(0, 16, 2))

    def option(self, scope: int) -> bytes:
        """The option echoed in a response, with SCOPE PREFIX-LENGTH ``scope``."""
        body = struct.pack(">HBB", self.family, self.source_prefix, scope) + self.address
        return struct.pack(">HH", OPTION_ECS, len(body)) + body


@dataclass(frozen=True, slots=True)
class Edns:
    """The query's OPT record."""

    udp_size: int
    version: int
    dnssec_ok: bool
    ecs: ClientSubnet | None


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """What the server needs of a well-formed query message."""

    id: int
    flags: int
    opcode: int
    #: ``(lower-case name, type, class)`` of each question.
    questions: tuple[tuple[str, int, int], ...]
    counts: tuple[int, int, int, int]
    edns: Edns | None


def _read_name(data: bytes, at: int, header: tuple[int, int]) -> tuple[str, int, bool]:
    """Read a possibly compressed name; returns it (lower case, no final
    dot, ``""`` for the root), the offset after it, and whether a label
    holds a ``.`` octet (legal on the wire, but such a name has no faithful
    text form: see :func:`parse_query`)."""
    labels: list[str] = []
    dotted = False
    length = 0
    end = -1
    hops = 0
    pos = at
    while True:
        if pos >= len(data):
            raise Malformed(FORMERR, "name runs past the end", header)
        n = data[pos]
        kind = n & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise Malformed(FORMERR, "truncated compression pointer", header)
            target = ((n & 0x3F) << 8) | data[pos + 1]
            # Pointers go strictly backwards: no loops.
            if target >= pos or hops > 127:
                raise Malformed(FORMERR, "bad compression pointer", header)
            if end < 0:
                end = pos + 2
            pos = target
            hops += 1
            continue
        if kind:
            raise Malformed(FORMERR, "unknown label type", header)
        if n == 0:
            if end < 0:
                end = pos + 1
            return ".".join(labels), end, dotted
        if pos + 1 + n > len(data):
            raise Malformed(FORMERR, "label runs past the end", header)
        length += n + 1
        if length + 1 > MAX_NAME:
            raise Malformed(FORMERR, "name longer than 255 octets", header)
        label = data[pos + 1 : pos + 1 + n]
        dotted = dotted or b"." in label
        labels.append(label.decode("latin-1").lower())
        pos += 1 + n


def _parse_ecs(body: bytes, header: tuple[int, int]) -> ClientSubnet:
    if len(body) < 4:
        raise Malformed(FORMERR, "ECS option too short", header)
    family, source, scope = struct.unpack_from(">HBB", body)
    address = body[4:]
    if family == 1:
        width = 32
    elif family == 2:
        width = 128
    else:
        raise Malformed(FORMERR, f"ECS family {family} unknown", header)
    if source > width:
        raise Malformed(FORMERR, "ECS source prefix longer than the address", header)
    if len(address) != (source + 7) // 8:
        raise Malformed(FORMERR, "ECS address length does not match its prefix", header)
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        raise Malformed(FORMERR, "ECS address has bits set past its prefix", header)
    return ClientSubnet(family, source, scope, bytes(address))


def _parse_opt(data: bytes, at: int, rdlen: int, udp_size: int, ttl: int, header: tuple[int, int]) -> Edns:
    version = (ttl >> 16) & 0xFF
    dnssec_ok = bool(ttl & 0x8000)
    ecs: ClientSubnet | None = None
    pos, end = at, at + rdlen
    partial = Edns(max(udp_size, 512), version, dnssec_ok, None)
    while pos < end:
        if pos + 4 > end:
            raise Malformed(FORMERR, "truncated EDNS option", header, partial)
        code, length = _HH.unpack_from(data, pos)
        pos += 4
        if pos + length > end:
            raise Malformed(FORMERR, "EDNS option runs past its record", header, partial)
        if code == OPTION_ECS:
            if ecs is not None:
                raise Malformed(FORMERR, "two ECS options", header, partial)
            try:
                ecs = _parse_ecs(data[pos : pos + length], header)
            except Malformed as e:
                e.edns = partial
                raise
        pos += length
    return Edns(max(udp_size, 512), version, dnssec_ok, ecs)


def parse_query(data: bytes) -> ParsedQuery:
    """Check a whole query message.

    :raises Drop: nothing should be sent back.
    :raises Malformed: answer with its rcode.
    """
    if len(data) < 12:
        raise Drop("shorter than a header")
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    header = (qid, flags)
    if flags & QR:
        raise Drop("a response, not a query")
    pos = 12
    questions = []
    dotted = False
    for _ in range(qd):
        name, pos, odd = _read_name(data, pos, header)
        dotted = dotted or odd
        if pos + 4 > len(data):
            raise Malformed(FORMERR, "truncated question", header)
        qtype, qclass = _HH.unpack_from(data, pos)
        pos += 4
        questions.append((name, qtype, qclass))
    edns: Edns | None = None
    for section, count in ((1, an), (2, ns), (3, ar)):
        for _ in range(count):
            owner, pos, _ = _read_name(data, pos, header)
            if pos + 10 > len(data):
                raise Malformed(FORMERR, "truncated record", header, edns)
            rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
            pos += 10
            if pos + rdlen > len(data):
                raise Malformed(FORMERR, "record data runs past the end", header, edns)
            if rtype == TYPE_OPT:
                if section != 3 or owner != "" or edns is not None:
                    raise Malformed(FORMERR, "misplaced or repeated OPT record", header, edns)
                edns = _parse_opt(data, pos, rdlen, rclass, ttl, header)
            pos += rdlen
    if pos != len(data):
        raise Malformed(FORMERR, "bytes after the last record", header, edns)
    opcode = (flags >> 11) & 0xF
    if edns is not None and edns.version != 0:
        raise Malformed(BADVERS, f"EDNS version {edns.version} unknown", header, edns)
    if opcode != 0:
        # We serve QUERY only. Answered here, header only (and OPT), however
        # many questions the message claims: the answer's counts must match
        # its body, and echoing an arbitrary question section could not.
        raise Malformed(NOTIMP, f"opcode {opcode}", header, edns)
    if qd != 1:
        # RFC 9619: a QUERY holds exactly one question.
        raise Malformed(FORMERR, f"{qd} questions", header, edns)
    if dotted:
        # twisted.names keeps a name as its labels joined with "." and
        # splits it again to encode it: a "." inside a label would be echoed
        # as other labels, or as a bogus length octet (a compression pointer
        # from 0xC0). No name of ours has such a label; the fast path never
        # matches one either. Refused, consistently on both paths.
        raise Malformed(FORMERR, "a label of the question holds a '.'", header, edns)
    return ParsedQuery(qid, flags, opcode, tuple(questions), (qd, an, ns, ar), edns)


def response_flags(query_flags: int, rcode: int, authoritative: bool = True) -> int:
    """Header flags of our answer to a query with ``query_flags``: QR, the
    query's opcode, AA, RD and CD copied, no recursion, the low rcode bits."""
    flags = QR | (query_flags & (0x7800 | RD | CD)) | (rcode & 0xF)
    if authoritative:
        flags |= AA
    return flags


def opt_record(udp_size: int, rcode: int = 0, dnssec_ok: bool = False, options: bytes = b"") -> bytes:
    """Our OPT record: version 0, our UDP size, the upper rcode bits."""
    ttl = ((rcode >> 4) & 0xFF) << 24 | (0x8000 if dnssec_ok else 0)
    return b"\x00" + struct.pack(">HHIH", TYPE_OPT, udp_size, ttl, len(options)) + options


def error_response(error: Malformed, our_udp_size: int) -> bytes:
    """The answer to a malformed query: header only, with OPT when the
    query's OPT was read (never the ECS option, which may be the problem)."""
    qid, qflags = error.header
    opt = b""
    if error.edns is not None:
        opt = opt_record(our_udp_size, error.rcode, error.edns.dnssec_ok)
    flags = response_flags(qflags, error.rcode, authoritative=False)
    return HEADER.pack(qid, flags, 0, 0, 0, 1 if opt else 0) + opt


def question_end(response: bytes) -> int:
    """Offset after the first question of one of our responses (written
    uncompressed: it is the message's first name), or after the header
    when there is none."""
    pos = 12
    if HEADER.unpack_from(response)[2] == 0:
        return pos
    while response[pos]:
        pos += 1 + response[pos]
    return pos + 5


def truncated_response(response: bytes, opt: bytes) -> bytes:
    """``response`` cut to header, question and OPT, with TC set: the client
    retries over TCP (RFC 7766)."""
    qid, flags, qd, _an, _ns, _ar = HEADER.unpack_from(response)
    end = question_end(response)
    # At most the first question is kept, and the header says so.
    return HEADER.pack(qid, flags | TC, min(qd, 1), 0, 0, 1 if opt else 0) + response[12:end] + opt
