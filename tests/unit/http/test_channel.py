"""EdgeHTTPChannel under odd requests (Hypothesis): whatever a client sends,
every error the node answers is JSON with a code, and the channel never
raises."""

from __future__ import annotations

import json

import h2.config
import h2.connection
import h2.errors
import h2.events
from hyperframe.frame import DataFrame
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from fastedge.http.channel import _RefusingH2State
from fastedge.http.jsonbody import encode, write_json
from fastedge.http.metrics import HttpMetrics
from fastedge.http.site import EdgeSite
from fastedge.metrics.registry import new_registry
from fastedge.web import EdgeRoot


class _Echo(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> int:
        write_json(request, 200, encode({"ok": True}))
        return NOT_DONE_YET

    def render_POST(self, request: Request) -> int:
        write_json(request, 200, encode({"length": len(request.content.read())}))
        return NOT_DONE_YET


_methods = st.sampled_from([b"GET", b"POST", b"PUT", b"BREW", b"G\x00T", b"", b"GET /"])
_targets = st.sampled_from([b"/echo", b"/nothing", b"/", b"/echo?x=1", b"*", b"/e\x7fcho", b"/" + b"a" * 100])
_versions = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTX/1.1", b"HTTP/1.1 x", b""]
)
_header_lines = st.sampled_from(
    [
        b"Host: a",
        b"Host: b",
        b"Content-Length: 3",
        b"Content-Length: 0",
        b"Content-Length: 1x",
        b"Content-Length: \xc2\xb2",
        b"Content-Length: -1",
        b"Content-Length: 99999999999",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: gzip",
        b"Transfer-Encoding: identity",
        b"Expect: 100-continue",
        b"Connection: close",
        b"X-A: a\x00b",
        b"X-A: ok",
        b" folded",
        b"\tfolded",
        b"nocolon",
        b": empty name",
        b"Bad Name: v",
        b"Upgrade: websocket",
    ]
)
_bodies = st.sampled_from([b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"zz\r\n", b"0\r\n\r\n", b"a" * 200])


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    line = draw(_methods) + b" " + draw(_targets) + b" " + draw(_versions)
    headers = draw(st.lists(_header_lines, max_size=6))
    raw = b"\r\n".join([line, *headers]) + b"\r\n\r\n" + draw(_bodies)
    if draw(st.booleans()):
        # A stray byte anywhere: the framing must hold or be refused cleanly.
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\r", b"\n", b"\x00", b" ", b":", b"\xff"])) + raw[at:]
    return raw


def _responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split what the server wrote into responses (every one we send has a
    Content-Length; 100 Continue has no body)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1."), lines[0]
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


class ChannelPropertyTests(SynchronousTestCase):
    """Odd HTTP/1.1 requests through EdgeSite's channel, at the wire."""

    def setUp(self) -> None:
        root = EdgeRoot()
        root.putChild(b"echo", _Echo())
        self.site = EdgeSite(root, reactor=Clock(), max_body_bytes=100, metrics=HttpMetrics(new_registry(), 0.1))

    @settings(max_examples=300, deadline=None)
    @given(raw=_requests(), cut=st.integers(0, 400))
    def test_every_error_is_json(self, raw: bytes, cut: int) -> None:
        """Any request, in one piece or two: each answer is a complete HTTP/1.1
        response, every error among them is JSON with a code, and nothing is
        logged as an unhandled error."""
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(raw[:cut])
        protocol.dataReceived(raw[cut:])
        for status, headers, body in _responses(transport.value()):
            if status >= 400:
                self.assertEqual(headers.get("content-type"), "application/json; charset=utf-8", raw)
                self.assertIsInstance(json.loads(body)["error"]["code"], str)
        protocol.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.flushLoggedErrors(), [])


def _request_headers(path: bytes, tag: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":path", path),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b"x-tag", tag),
    ]


class RefusingH2StateTests(SynchronousTestCase):
    """The h2 state behind EdgeH2Connection, driven by a real h2 client."""

    def setUp(self) -> None:
        self.server = _RefusingH2State(config=h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.refused: list[int] = []
        self.server.on_refused = self.refused.append
        self.server.initiate_connection()
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.client.initiate_connection()

    def to_server(self) -> list[object]:
        events: list[object] = self.server.receive_data(self.client.data_to_send())
        return events

    def to_client(self) -> list[object]:
        events: list[object] = self.client.receive_data(self.server.data_to_send())
        return events

    def test_stream_over_limit_is_refused_alone(self) -> None:
        """The 101st stream is reset REFUSED_STREAM and yields no event; its
        header block still updates HPACK (a later stream's distinct headers
        decode right), DATA on it is answered without a connection error,
        and a stream opened once another closed is served."""
        for i in range(101):
            self.client.send_headers(1 + 2 * i, _request_headers(b"/s", b"tag-%d" % i))
        events = self.to_server()
        received = [e for e in events if isinstance(e, h2.events.RequestReceived)]
        self.assertEqual([e.stream_id for e in received], list(range(1, 201, 2)))
        self.assertEqual(self.refused, [201])
        resets = [e for e in self.to_client() if isinstance(e, h2.events.StreamReset)]
        self.assertEqual([(e.stream_id, e.error_code) for e in resets], [(201, h2.errors.ErrorCodes.REFUSED_STREAM)])

        # DATA the client had in flight on the refused stream (built by
        # hand: the client's own state no longer lets it send on 201).
        late = self.server.receive_data(DataFrame(201, data=b"x" * 100).serialize())
        self.assertEqual(late, [])
        self.server.data_to_send()  # RST_STREAM again and the window credited back

        self.client.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
        self.client.send_headers(203, _request_headers(b"/after", b"tag-after"))
        events = self.to_server()
        received = [e for e in events if isinstance(e, h2.events.RequestReceived)]
        self.assertEqual(len(received), 1)
        self.assertIn((b"x-tag", b"tag-after"), received[0].headers)
        self.assertIn((b":path", b"/after"), received[0].headers)
        self.assertFalse([e for e in events if isinstance(e, h2.events.ConnectionTerminated)])
