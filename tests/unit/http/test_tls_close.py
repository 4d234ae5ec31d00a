"""A TLS connection the node closes (fastedge.http.tls): HTTP/2 after a
protocol error, at the wire with a StringTransport and an in-memory TLS
client."""

from __future__ import annotations

import datetime

import h2.config
import h2.connection
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from fastedge.http.certs import self_signed_pem
from fastedge.http.connections import ConnectionGate
from fastedge.http.metrics import ConnectionMetrics, TlsMetrics
from fastedge.http.site import EdgeSite
from fastedge.http.tls import CountingTLSFactory
from fastedge.metrics.registry import new_registry

_PEM = self_signed_pem("localhost", datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))


class _TcpTransport(StringTransport):
    """StringTransport declares ITCPTransport; HTTP sets TCP_NODELAY."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class _Client:
    """A TLS client (ALPN h2) on memory BIOs, pumped by hand."""

    def __init__(self, server: object, transport: StringTransport) -> None:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_alpn_protos([b"h2"])
        self.tls = SSL.Connection(ctx, None)
        self.tls.set_connect_state()
        self.server = server
        self.transport = transport
        self.plaintext = b""

    def pump(self) -> None:
        for _ in range(20):
            try:
                self.tls.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                out = self.tls.bio_read(1 << 20)
            except SSL.WantReadError:
                out = b""
            if out:
                self.server.dataReceived(out)  # type: ignore[attr-defined]
            back = self.transport.value()
            self.transport.clear()
            if back:
                self.tls.bio_write(back)
                while True:
                    try:
                        self.plaintext += self.tls.recv(1 << 20)
                    except (SSL.WantReadError, SSL.ZeroReturnError):
                        break
            if not out and not back:
                return

    def send(self, data: bytes) -> None:
        self.tls.sendall(data)
        self.pump()

    def goaways(self) -> int:
        count, data = 0, self.plaintext
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            count += isinstance(frame, GoAwayFrame)
            data = data[9 + length :]
        return count


class Http2AfterErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        registry = new_registry()
        self.gate = ConnectionGate()
        site = EdgeSite(Resource(), reactor=self.clock, max_body_bytes=100, metrics=None, connections=self.gate)
        cert = PrivateCertificate.loadPEM(_PEM)
        options = CertificateOptions(
            privateKey=cert.privateKey.original, certificate=cert.original, acceptableProtocols=[b"h2"]
        )
        factory = CountingTLSFactory(
            options,
            site,
            metrics=ConnectionMetrics(registry),
            tls_metrics=TlsMetrics(registry),
            gate=self.gate,
            reactor=self.clock,
            close_timeout=5.0,
        )
        self.server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.transport = _TcpTransport()
        self.server.makeConnection(self.transport)
        self.client = _Client(self.server, self.transport)
        self.client.pump()
        self.assertEqual(self.client.tls.get_alpn_proto_negotiated(), b"h2")

    def after_error(self, bad: bytes) -> None:
        """Send the preface then ``bad``: one GOAWAY, the TCP connection is
        asked to close (which stops its reading), and what the client still
        sends never reaches HTTP/2: no second GOAWAY, no bytes kept; the
        close is aborted if not flushed in time."""
        preface = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        preface.initiate_connection()
        self.client.send(preface.data_to_send() + bad)
        self.assertEqual(self.client.goaways(), 1)
        self.assertTrue(self.transport.disconnecting)
        # What still reaches hyper-h2 (which buffers what it cannot parse).
        h2_connection = self.server.wrappedProtocol._channel.conn
        fed: list[bytes] = []
        receive = h2_connection.receive_data

        def recording(data: bytes) -> object:
            fed.append(data)
            return receive(data)

        h2_connection.receive_data = recording
        pings = b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(1000))
        for _ in range(20):
            self.client.send(pings)
        self.assertEqual(self.client.goaways(), 1)
        self.assertEqual(fed, [])
        self.assertEqual(self.gate.open, 1)
        self.clock.advance(5)
        self.assertTrue(self.transport.disconnected)
        self.server.connectionLost(None)
        self.assertEqual(self.gate.open, 0)

    def test_settings_of_the_wrong_length(self) -> None:
        """A SETTINGS frame whose length is not a multiple of 6 (see
        :meth:`after_error`)."""
        self.after_error(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5)

    def test_continuation_flood(self) -> None:
        """A HEADERS frame followed by more CONTINUATION frames than hyper-h2
        accepts (see :meth:`after_error`)."""
        frames = [HeadersFrame(1, data=b"", flags=[])]
        frames += [ContinuationFrame(1, data=b"\x00" * 16) for _ in range(100)]
        self.after_error(b"".join(f.serialize() for f in frames))


class _Slow(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[object] = []

    def render_GET(self, request: object) -> int:
        from twisted.web.server import NOT_DONE_YET

        self.waiting.append(request)
        return NOT_DONE_YET


class Http2DrainTests(SynchronousTestCase):
    """A clean stop's drain (fastedge.http.drain) of an HTTP/2 connection
    with a stream in flight."""

    def test_goaway_then_close_once_done(self) -> None:
        """The connection gets a GOAWAY (no new streams) and stays open while
        its stream is in flight; once the answer is sent, the next sweep
        closes it and the drain is over, well before http.drain_seconds."""
        from fastedge.http.drain import SWEEP_SECONDS, Drain

        clock = Clock()
        registry = new_registry()
        gate = ConnectionGate()
        root = Resource()
        slow = _Slow()
        root.putChild(b"slow", slow)
        site = EdgeSite(root, reactor=clock, max_body_bytes=100, metrics=None, connections=gate)
        cert = PrivateCertificate.loadPEM(_PEM)
        options = CertificateOptions(
            privateKey=cert.privateKey.original, certificate=cert.original, acceptableProtocols=[b"h2"]
        )
        factory = CountingTLSFactory(
            options,
            site,
            metrics=ConnectionMetrics(registry),
            tls_metrics=TlsMetrics(registry),
            gate=gate,
            reactor=clock,
            close_timeout=5.0,
        )
        server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = _TcpTransport()
        server.makeConnection(transport)
        client = _Client(server, transport)
        client.pump()
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        h2c.initiate_connection()
        h2c.send_headers(
            1, [(":method", "GET"), (":path", "/slow"), (":scheme", "https"), (":authority", "a")], end_stream=True
        )
        client.send(h2c.data_to_send())
        self.assertEqual(len(slow.waiting), 1)

        d = Drain(gate, clock=clock, seconds=10.0).run()
        client.pump()
        self.assertEqual(client.goaways(), 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1.0)
        self.assertNoResult(d)
        request = slow.waiting[0]
        request.write(b"done")  # type: ignore[attr-defined]
        request.finish()  # type: ignore[attr-defined]
        clock.advance(0)  # Twisted's HTTP/2 sends queued DATA in a later turn
        client.pump()
        # The answer in flight got through after the GOAWAY (RFC 9113
        # section 6.8: streams up to its last stream id go on), whole.
        frames, data = [], client.plaintext
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            frame.parse_body(memoryview(data[9 : 9 + length]))
            frames.append(frame)
            data = data[9 + length :]
        kinds = [type(f).__name__ for f in frames]
        goaway = kinds.index("GoAwayFrame")
        self.assertEqual((frames[goaway].last_stream_id, frames[goaway].error_code), (1, 0))
        after = [f for f in frames[goaway:] if f.stream_id == 1]
        self.assertEqual(type(after[0]).__name__, "HeadersFrame")
        self.assertEqual(b"".join(getattr(f, "data", b"") for f in after[1:]), b"done")
        self.assertIn("END_STREAM", after[-1].flags)
        clock.advance(SWEEP_SECONDS)
        self.assertTrue(transport.disconnecting)
        server.connectionLost(None)
        self.successResultOf(d)
        self.assertEqual(gate.open, 0)
