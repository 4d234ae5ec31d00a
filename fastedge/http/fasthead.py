# -*- test-case-name: tests.unit.http.test_fasthead -*-
"""A WebSocket upgrade's request head, parsed in one pass.

A connect to ``/live`` is one small GET whose head arrives whole in the
connection's first read. Twisted's HTTP/1.1 parser takes it line by line,
each line through four layers of ``lineReceived``/``headerReceived``
(ours, the request deadlines', Twisted's), a fifth of the CPU of a burst
of connects. :func:`parse_upgrade_head` reads such a head in one pass, with
Twisted's own validators for the request line and header names and the
limits and refusals of :class:`~fastedge.http.channel.EdgeHTTPChannel`:
what it returns is what the line parser would have stored, and anything
it does not take as is (a limit reached, obs-fold, a body, a second Host,
a malformed line, a name or value Twisted refuses, another version or
target) makes it return ``None``, and the line parser answers as it
always has. ``tests.unit.http.test_fasthead`` checks both against the line
parser with Hypothesis.
"""

from __future__ import annotations

from twisted.web.http import _parseRequestLine
from twisted.web.http_headers import InvalidHeaderName, _nameEncoder

#: Request targets taken by the one-pass parse (the WebSocket endpoint).
UPGRADE_PATHS = (b"/live", b"/live/")

#: Headers that frame a body: a request carrying one takes the line parser.
_FRAMING = (b"Content-Length", b"Transfer-Encoding")

#: Head = request line, header lines, ended by a blank line.
_END = b"\r\n\r\n"


def upgrade_head(data: bytes) -> bytes | None:
    """The request head of ``data`` when ``data`` is exactly one complete
    head (no body, nothing after it) of a ``GET`` to ``/live``, else ``None``."""
    if not data.startswith(b"GET /live"):
        return None
    end = data.find(_END)
    if end < 0 or end + len(_END) != len(data):
        return None
    return data[:end]


def parse_upgrade_head(
    head: bytes, *, max_line: int, max_total: int, max_headers: int
) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """Parse ``head`` (without its final blank line).

    :param max_line: the longest line the line parser takes.
    :param max_total: the most bytes of request line and headers together.
    :param max_headers: the most header lines.
    :returns: ``(method, target, version, headers)`` with each header's
        name as Twisted canonicalizes it and its value stripped, in order;
        ``None`` for anything to be left to the line parser.
    """
    lines = head.split(b"\r\n")
    if len(lines) - 1 > max_headers:
        return None
    if max(map(len, lines)) > max_line or len(head) - 2 * (len(lines) - 1) > max_total:
        return None
    # A NUL, or a CR or LF that is not part of a line end, anywhere in the
    # head (three scans of a few hundred bytes, not three per header).
    ends = len(lines) - 1
    if b"\x00" in head or head.count(b"\r") != ends or head.count(b"\n") != ends:
        return None
    try:
        method, target, version = _parseRequestLine(lines[0])
    except ValueError:
        return None
    if method != b"GET" or version != b"HTTP/1.1" or target.split(b"?", 1)[0] not in UPGRADE_PATHS:
        return None
    headers = []
    hosts = 0
    encode = _nameEncoder.encode
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or line[:1] in (b" ", b"\t"):
            return None
        try:
            name = encode(name)
        except InvalidHeaderName:
            return None
        if name in _FRAMING:
            return None
        if name == b"Host":
            hosts += 1
            if hosts > 1:
                return None
        headers.append((name, value.strip(b" \t")))
    return method, target, version, headers
