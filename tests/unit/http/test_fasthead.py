"""The one-pass parse of a WebSocket upgrade's head (:mod:`fastedge.http.fasthead`)
against Twisted's line parser, through a node's real Site and ``/live``."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers

from fastedge.http.fasthead import parse_upgrade_head, upgrade_head
from tests.support.handshakes import CHROMIUM as BROWSER_CHROMIUM
from tests.support.handshakes import handshake

from ..live.common import World

#: Chromium 131's ``new WebSocket(url)`` from a page of another origin.
CHROMIUM = handshake(BROWSER_CHROMIUM, b"127.0.0.1:8080")

_request_lines = st.sampled_from(
    [
        b"GET /live HTTP/1.1",
        b"GET /live HTTP/1.1",
        b"GET /live/ HTTP/1.1",
        b"GET /live?since=1 HTTP/1.1",
        b"GET /live#x HTTP/1.1",
        b"GET /live HTTP/1.0",
        b"GET /live HTTP/1.2",
        b"GET /livex HTTP/1.1",
        b"GET /live/events HTTP/1.1",
        b"GET /live  HTTP/1.1",
        b"GET /li\x7fve HTTP/1.1",
        b"GET /live",
    ]
)
_header_lines = st.sampled_from(
    [
        b"Host: 127.0.0.1:8080",
        b"Host: 127.0.0.1:8080",
        b"Host: x:port",
        b"Upgrade: websocket",
        b"Upgrade: websocket",
        b"upgrade: WebSocket",
        b"Connection: Upgrade",
        b"Connection: keep-alive, Upgrade",
        b"Connection: close",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Version: 8",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Key: short",
        b"Sec-WebSocket-Protocol: fastedge.live.1",
        b"Sec-WebSocket-Protocol: a, a",
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99",
        b"Origin: https://blog.example",
        b"Origin: not a url",
        b"Content-Length: 0",
        b"Content-Length: 3",
        b"Transfer-Encoding: chunked",
        b"X-A: a\x00b",
        b"X-A:   spaced   ",
        b"X-A:\t tabbed\t",
        b"Sec-WebSocket-Version:\t13 ",
        b"X-A:",
        b" folded",
        b"\tfolded",
        b"nocolon",
        b": empty name",
        b"Bad Name: v",
        b"X-Long: " + b"a" * 300,
    ]
)


@st.composite
def _heads(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(_header_lines, max_size=12))
    raw = b"\r\n".join([draw(_request_lines), *headers]) + b"\r\n\r\n"
    if draw(st.booleans()):
        # A stray byte anywhere, the end included (a byte after the head).
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\r", b"\n", b"\x00", b" ", b":", b"\xff", b"x"])) + raw[at:]
    return raw


#: What differs between two answers to the same bytes: the time.
_DATE = re.compile(rb"\r\nDate: [^\r]*")


class OneParseTests(SynchronousTestCase):
    """A node's Site (``/live`` on a real Live) on a Clock; each request on
    a new connection over a StringTransport."""

    def setUp(self) -> None:
        self.world = World(Clock())
        self.site = self.world.node.site

    def answer(self, *reads: bytes, lines: list[bytes] | None = None) -> bytes:
        """What the node writes to a connection that sends ``reads``; the
        lines its line parser saw go to ``lines``."""
        protocol: Any = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport: Any = StringTransport()
        # As a socket's transport: the protocol it delivers to, which an
        # upgrade replaces.
        transport.protocol = protocol
        protocol.makeConnection(transport)
        if lines is not None:
            channel = protocol._channel
            parse = channel.lineReceived

            def counted(line: bytes) -> None:
                lines.append(line)
                parse(line)

            channel.lineReceived = counted
        for data in reads:
            protocol.dataReceived(data)
        written = transport.value()
        # Whichever protocol holds the transport now sees it close.
        transport.protocol.connectionLost(connectionDone)
        return _DATE.sub(b"", written)

    def test_browser_upgrade_in_one_pass(self) -> None:
        """Chromium's upgrade, in one read, is answered 101 without a line
        going through the line parser."""
        lines: list[bytes] = []
        written = self.answer(CHROMIUM, lines=lines)
        self.assertTrue(written.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), written[:80])
        self.assertEqual(lines, [])

    def test_whole_upgrade_is_not_routed(self) -> None:
        """An upgrade that arrives whole is handed to ``/live`` from its
        parsed head, not processed as a request (routed through the
        resource tree and rendered: ~15 % of a connect's CPU); the same
        upgrade in pieces is, and so is a whole one when the Site redirects
        plain HTTP to HTTPS (which answers it 301)."""
        processed: list[bytes] = []
        base = self.site.requestFactory

        class Counted(base):  # type: ignore[misc, valid-type]
            def process(self) -> None:
                processed.append(self.uri)
                super().process()

        self.site.requestFactory = Counted
        self.assertTrue(self.answer(CHROMIUM).startswith(b"HTTP/1.1 101 "))
        self.assertEqual(processed, [])
        self.assertTrue(self.answer(CHROMIUM[:7], CHROMIUM[7:]).startswith(b"HTTP/1.1 101 "))
        self.assertEqual(processed, [b"/live"])
        self.site.redirect_port = lambda: 8443
        self.assertTrue(self.answer(CHROMIUM).startswith(b"HTTP/1.1 301 "))
        self.assertEqual(processed, [b"/live", b"/live"])

    def test_same_answer_as_the_line_parser(self) -> None:
        """The same upgrade read in two pieces (the line parser) gets the
        same bytes."""
        self.assertEqual(self.answer(CHROMIUM), self.answer(CHROMIUM[:7], CHROMIUM[7:]))

    def test_refusals_unchanged(self) -> None:
        """A malformed upgrade, one without its key, one of version 8: the
        same JSON refusal whole or in pieces."""
        for raw in (
            CHROMIUM.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Key: nope"),
            CHROMIUM.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
            CHROMIUM.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
            CHROMIUM.replace(b"Upgrade: websocket\r\n", b""),
        ):
            whole = self.answer(raw)
            self.assertRegex(whole, rb"^HTTP/1.1 4(00|26) ")
            self.assertEqual(whole, self.answer(raw[:5], raw[5:]))

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw=_heads(), cut=st.integers(1, 40))
    def test_whole_or_in_pieces(self, raw: bytes, cut: int) -> None:
        """Any head sent in one read (the one-pass parse, or the line parser
        where it declines) is answered byte for byte as the same head sent
        in two reads (the line parser), errors included."""
        cut = min(cut, len(raw) - 1)
        self.assertEqual(self.answer(raw), self.answer(raw[:cut], raw[cut:]), raw)
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=300, deadline=None)
    @given(raw=_heads())
    def test_parsed_as_twisted_does(self, raw: bytes) -> None:
        """What the one-pass parse takes, it stores as Twisted's line
        parser would: the same method, target, version and headers (names,
        values, order)."""
        head = upgrade_head(raw)
        if head is None:
            return
        parsed = parse_upgrade_head(head, max_line=16384, max_total=16384, max_headers=500)
        if parsed is None:
            return
        seen: list[Any] = []
        channel = HTTPChannel()
        channel.requestFactory = lambda channel, queued: _Recorder(seen)  # type: ignore[assignment]
        channel.makeConnection(StringTransport())
        # One byte at a time: the line parser, whatever the read.
        for i in range(len(raw)):
            channel.dataReceived(raw[i : i + 1])
        method, target, version, headers = parsed
        expected: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            expected.setdefault(name.lower(), []).append(value)
        self.assertEqual(seen, [(method, target, version, expected)])


class _Recorder:
    """A request that records what the line parser stored, and answers nothing."""

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen
        self.requestHeaders = Headers()
        self.responseHeaders = Headers()

    def parseCookies(self) -> None:
        pass

    def gotLength(self, length: int | None) -> None:
        pass

    def requestReceived(self, method: bytes, target: bytes, version: bytes) -> None:
        headers = {name.lower(): list(values) for name, values in self.requestHeaders.getAllRawHeaders()}
        self.seen.append((method, target, version, headers))
