"""Lingering close (fastedge.http.tls): a connection the node closes
while its client may still be sending is half-closed, and what the client
sends afterwards is read and discarded, bounded in time and bytes, so the
kernel does not answer unread bytes with a RST that can destroy the answer
(a 413 for a body the client is still uploading)."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from fastedge.http.connections import ConnectionGate
from fastedge.http.metrics import ConnectionMetrics
from fastedge.http.site import EdgeSite
from fastedge.http.tls import LINGER_BYTES, LINGER_SECONDS, CountingFactory
from fastedge.metrics.registry import new_registry

_UPLOAD = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"


class _Socket(StringTransport):
    """A TCP transport that can half-close, as Twisted's sockets do."""

    write_closed = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class LingerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.gate = ConnectionGate()
        site = EdgeSite(Resource(), reactor=self.clock, max_body_bytes=100, metrics=None, connections=self.gate)
        factory = CountingFactory(
            site,
            listener="http",
            metrics=ConnectionMetrics(new_registry()),
            gate=self.gate,
            reactor=self.clock,
            close_timeout=5.0,
        )
        self.server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.socket = _Socket()
        self.server.makeConnection(self.socket)
        channel = self.server.wrappedProtocol
        self.fed: list[bytes] = []
        receive = channel.dataReceived

        def recording(data: bytes) -> None:
            self.fed.append(data)
            receive(data)

        channel.dataReceived = recording

    def refused_upload(self) -> None:
        """A declared 50 MB body over the 100-byte limit: the 413 goes out
        and the node half-closes instead of closing."""
        self.server.dataReceived(_UPLOAD)
        self.assertTrue(self.socket.value().startswith(b"HTTP/1.1 413 "), self.socket.value()[:100])
        self.assertTrue(self.socket.write_closed)
        self.assertFalse(self.socket.disconnecting)
        self.fed.clear()

    def test_body_after_the_413_is_discarded_until_the_linger_ends(self) -> None:
        """What the client still sends is read and dropped (the HTTP channel
        never sees it); LINGER_SECONDS later the socket is closed."""
        self.refused_upload()
        for _ in range(10):
            self.server.dataReceived(b"x" * 1000)
        self.assertEqual(self.fed, [])
        self.clock.advance(LINGER_SECONDS - 0.1)
        self.assertFalse(self.socket.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.socket.disconnecting)
        self.server.connectionLost(None)
        self.assertEqual(self.gate.open, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lingering_is_bounded_in_bytes(self) -> None:
        """A client that sends more than LINGER_BYTES after the close is cut
        at once, before the time is up."""
        self.refused_upload()
        chunk = b"x" * 65536
        for _ in range(LINGER_BYTES // len(chunk)):
            self.server.dataReceived(chunk)
        self.assertFalse(self.socket.disconnecting)
        self.server.dataReceived(b"x")
        self.assertTrue(self.socket.disconnecting)

    def test_client_closing_ends_the_linger(self) -> None:
        """The client closing its side frees the connection and its timers."""
        self.refused_upload()
        self.server.connectionLost(None)
        self.assertEqual(self.gate.open, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WrapperLookupTests(SynchronousTestCase):
    def test_plain_connection_answers_for_itself(self) -> None:
        """A plain-HTTP connection's counter answers the two questions asked
        of it on every connection (no ALPN protocol, no zope adapter hook)
        itself, instead of looking for them in the socket's transport
        through the wrapper's ``__getattr__``, which raised and caught an
        AttributeError for each (a few percent of a connect burst's CPU)."""
        gate = ConnectionGate()
        site = EdgeSite(Resource(), reactor=Clock(), max_body_bytes=100, metrics=None, connections=gate)
        factory = CountingFactory(site, listener="http", metrics=ConnectionMetrics(new_registry()), gate=gate)
        server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        server.makeConnection(_Socket())
        self.assertIsNone(server.negotiatedProtocol)
        self.assertIsNone(server.__conform__)
