"""Client connections of a whole node on real loopback sockets: the one
count (back to its baseline whatever a connection became), the limits per
address and overall, and HTTP/2 closed after a protocol error."""

from __future__ import annotations

import os
from typing import Any

import h2.config
import h2.connection
from hyperframe.frame import Frame, GoAwayFrame, PingFrame
from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.support.http2 import h2_request, insecure_tls
from tests.support.nodes import start_node

_WS_HANDSHAKE = (
    # As a client without permessage-deflate sends it.
    b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class _Raw(Protocol):
    """Sends ``request`` once connected; ``answered`` fires with the first
    complete response head, ``closed`` when the connection is gone."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.answered: defer.Deferred[bytes] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and not self.answered.called:
            self.answered.callback(self.received.split(b"\r\n", 1)[0])

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answered.called:
            self.answered.callback(b"")
        self.closed.callback(None)


class _NodeCase(TestCase):
    timeout = 60
    http_config = ""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        data_dir = os.path.abspath(self.mktemp())
        self.node = yield start_node(
            '[http]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
            + self.http_config
            + '[tls]\nendpoint = "tcp:0:interface=127.0.0.1"\n',
            data_dir,
        )
        self.addCleanup(self.node.stop)
        transport = self.node.top.getServiceNamed("http")
        self.http_listener = transport.getServiceNamed("http")
        self.site = self.http_listener.factory.wrappedFactory
        self.http_port = self.http_listener.port.getHost().port
        self.addCleanup(self.site.when_idle)

    def connect(self, request: bytes, source: str = "127.0.0.1", tls: bool = False) -> defer.Deferred[_Raw]:
        client = _Raw(request)
        if tls:
            endpoint: Any = SSL4ClientEndpoint(
                reactor, "127.0.0.1", self.node.https_port, insecure_tls(), bindAddress=(source, 0)
            )
        else:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.http_port, bindAddress=(source, 0))
        return endpoint.connect(Factory.forProtocol(lambda: client))

    def metric(self, name: str, **labels: str) -> float | None:
        return self.node.top.registry.get_sample_value(name, labels)

    @defer.inlineCallbacks
    def close_all(self, clients: list[_Raw]) -> Any:
        for client in clients:
            assert client.transport is not None
            client.transport.loseConnection()
        yield defer.gatherResults([c.closed for c in clients])


class CountTests(_NodeCase):
    """The load the mesh announces (``EdgeSite.open_connections``) goes back
    to its baseline once connections close, whatever they became."""

    @defer.inlineCallbacks
    def assert_back_to(self, baseline: int) -> Any:
        idle = self.site.when_idle()
        idle.addTimeout(10, reactor)
        try:
            yield idle
        except defer.TimeoutError:
            pass
        self.assertEqual(self.site.open_connections, baseline)

    @defer.inlineCallbacks
    def test_websocket(self) -> Any:
        """50 WebSocket connections (plain and over TLS) count 50 while open
        and nothing once closed."""
        for tls in (False, True):
            clients = []
            for _ in range(50):
                client = yield self.connect(_WS_HANDSHAKE, tls=tls)
                head = yield client.answered
                self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
                clients.append(client)
            self.assertEqual(self.site.open_connections, 50)
            yield self.close_all(clients)
            yield self.assert_back_to(0)

    @defer.inlineCallbacks
    def test_http2(self) -> Any:
        """50 HTTP/2 connections leave nothing counted."""
        for _ in range(50):
            response, alpn = yield h2_request(self.node.https_port, b"GET", b"/healthz")
            self.assertEqual((alpn, response.status), (b"h2", 200))
        yield self.assert_back_to(0)

    @defer.inlineCallbacks
    def test_plain_http(self) -> Any:
        """50 keep-alive HTTP/1.1 connections count while open, not after."""
        clients = []
        for _ in range(50):
            client = yield self.connect(_HEALTHZ)
            head = yield client.answered
            self.assertEqual(head, b"HTTP/1.1 200 OK")
            clients.append(client)
        self.assertEqual(self.site.open_connections, 50)
        yield self.close_all(clients)
        yield self.assert_back_to(0)


class PerAddressLimitTests(_NodeCase):
    """``http.max_connections_per_ip``, from real source addresses."""

    http_config = "max_connections_per_ip = 3\nmax_connections_per_prefix = 5\n"

    @defer.inlineCallbacks
    def test_per_ip_and_per_prefix(self) -> Any:
        """A fourth connection from 127.0.0.2 is closed unanswered while
        127.0.0.3 is served; 127.0.0.4 then finds the /24 full; once they
        close, 127.0.0.2 is served again."""
        clients = []
        for _ in range(3):
            client = yield self.connect(_HEALTHZ, "127.0.0.2")
            self.assertEqual((yield client.answered), b"HTTP/1.1 200 OK")
            clients.append(client)
        refused = yield self.connect(_HEALTHZ, "127.0.0.2")
        self.assertEqual((yield refused.answered), b"")
        yield refused.closed
        for _ in range(2):
            client = yield self.connect(_HEALTHZ, "127.0.0.3")
            self.assertEqual((yield client.answered), b"HTTP/1.1 200 OK")
            clients.append(client)
        refused = yield self.connect(_HEALTHZ, "127.0.0.4", tls=True)
        yield refused.closed
        self.assertEqual(refused.received, b"")
        self.assertEqual(self.metric("fastedge_http_connections_refused_total", reason="per_ip"), 1.0)
        self.assertEqual(self.metric("fastedge_http_connections_refused_total", reason="per_prefix"), 1.0)
        yield self.close_all(clients)
        yield self.site.when_idle()
        client = yield self.connect(_HEALTHZ, "127.0.0.2")
        self.assertEqual((yield client.answered), b"HTTP/1.1 200 OK")
        yield self.close_all([client])


class CeilingTests(_NodeCase):
    """``http.max_connections``: the listeners stop accepting at the ceiling."""

    http_config = "max_connections = 3\n"

    @defer.inlineCallbacks
    def test_pause_accepting(self) -> Any:
        """At the ceiling both listening ports stop reading (the kernel holds
        new connections in the backlog: no EMFILE, no refusal); a client
        waiting there is served once a connection closes."""
        clients = []
        for _ in range(3):
            client = yield self.connect(_HEALTHZ)
            self.assertEqual((yield client.answered), b"HTTP/1.1 200 OK")
            clients.append(client)
        readers = reactor.getReaders()  # type: ignore[attr-defined]
        self.assertNotIn(self.http_listener.port, readers)
        https = self.node.top.getServiceNamed("http").getServiceNamed("https")
        self.assertNotIn(https.port, readers)
        self.assertEqual(self.metric("fastedge_http_accepting"), 0.0)
        waiting = yield self.connect(_HEALTHZ)
        self.assertEqual(waiting.received, b"")
        yield self.close_all(clients[:1])
        self.assertEqual((yield waiting.answered), b"HTTP/1.1 200 OK")
        yield self.close_all(clients[1:] + [waiting])


class _H2Abuser(Protocol):
    """An HTTP/2 client that sends a SETTINGS frame of the wrong length,
    then keeps sending PING frames, and counts the GOAWAY frames it gets."""

    cap = 8 * 1024 * 1024

    def __init__(self) -> None:
        self.received = b""
        self.sent = 0
        self.goaways: list[GoAwayFrame] = []
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.gone = False
        self.pings = b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(4000))

    def connectionMade(self) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        assert self.transport is not None
        self.transport.write(conn.data_to_send())
        # SETTINGS must be a multiple of 6 bytes long: FRAME_SIZE_ERROR.
        self.transport.write(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5)
        self.keep_sending()

    def keep_sending(self) -> None:
        if self.gone:
            return
        if self.sent >= self.cap:
            # The server still reads: give up (the test fails on it).
            assert self.transport is not None
            self.transport.abortConnection()
            return
        assert self.transport is not None
        self.transport.write(self.pings)
        self.sent += len(self.pings)
        reactor.callLater(0, self.keep_sending)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        while len(self.received) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.received[:9]))
            if len(self.received) < 9 + length:
                return
            frame.parse_body(memoryview(self.received[9 : 9 + length]))
            self.received = self.received[9 + length :]
            if isinstance(frame, GoAwayFrame):
                self.goaways.append(frame)

    def connectionLost(self, reason: Any = None) -> None:
        self.gone = True
        self.closed.callback(None)


class Http2AfterErrorTests(_NodeCase):
    """HTTP/2 after a connection error: one GOAWAY, then the connection closes."""

    @defer.inlineCallbacks
    def test_goaway_once_then_closed(self) -> Any:
        """A client that keeps sending after its SETTINGS frame of the wrong
        length gets exactly one GOAWAY (FRAME_SIZE_ERROR) and the server
        closes the connection instead of reading (and buffering) on."""
        client = _H2Abuser()
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.node.https_port, insecure_tls("localhost", [b"h2"]))
        yield endpoint.connect(Factory.forProtocol(lambda: client))
        yield client.closed
        self.assertLess(client.sent, client.cap, "the server kept the connection open")
        self.assertEqual([f.error_code for f in client.goaways], [6])
        yield self.site.when_idle()
