"""Tests for :mod:`fastedge.http.writenow`: write-through on real Twisted
TCP transports over socketpairs (on a MemoryReactor, so the test plays the
reactor's ``doWrite``), plain and under TLS."""

from __future__ import annotations

import datetime
import socket
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from fastedge.http.certs import self_signed_pem
from fastedge.http.connections import ConnectionGate
from fastedge.http.metrics import ConnectionMetrics, TlsMetrics
from fastedge.http.tls import CountingTLSFactory
from fastedge.http.writenow import plain_tcp, send_now, write_now, write_through
from fastedge.metrics.registry import new_registry


class _Scripted:
    """A socket whose ``send`` follows a script (for both our direct send
    and Twisted's ``doWrite``): each entry is ``None`` (EAGAIN) or the most
    the real socket may take in that call; past the script, sends are
    unlimited."""

    def __init__(self, real: socket.socket, script: list[int | None]) -> None:
        self._real = real
        self._script = list(script)

    def send(self, data: Any) -> int:
        if self._script:
            step = self._script.pop(0)
            if step is None:
                raise BlockingIOError(11, "EAGAIN")
            data = bytes(data[:step])
        return self._real.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _Recorder(Protocol):
    """Remembers why the connection was lost (each time it is told)."""

    def __init__(self) -> None:
        self.lost: list[Failure] = []

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


def tcp_pair(
    test: SynchronousTestCase, protocol: Protocol | None = None
) -> tuple[tcp.Server, socket.socket, MemoryReactor]:
    """A real Twisted TCP transport over one end of a socketpair with small
    buffers (partial sends happen), its peer socket and its reactor."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    test.addCleanup(ours.close)
    test.addCleanup(theirs.close)
    reactor = MemoryReactor()
    proto = protocol if protocol is not None else Protocol()
    transport = tcp.Server(ours, proto, ("127.0.0.1", 1), None, 1, reactor)  # type: ignore[arg-type]
    proto.makeConnection(transport)
    return transport, theirs, reactor


def read_all(peer: socket.socket) -> bytes:
    got = b""
    while True:
        try:
            chunk = peer.recv(1 << 16)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


def queued(t: tcp.Server) -> int:
    return len(t.dataBuffer) - t.offset + t._tempDataLen


#: What happens next: a write (of a chunk this long), the reactor finding
#: the socket writable (Twisted's doWrite), or the peer reading.
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 9000)),
        st.tuples(st.just("writable"), st.just(0)),
        st.tuples(st.just("read"), st.integers(1, 20000)),
    ),
    max_size=40,
)


class WriteNowTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(_steps, st.lists(st.one_of(st.none(), st.integers(0, 5000)), max_size=30))
    def test_bytes_arrive_complete_and_in_order(self, steps: list[tuple[str, int]], script: list[int | None]) -> None:
        """Whatever the mix of direct sends, partial sends, EAGAIN and
        Twisted's buffered writes, the peer receives every byte written,
        once, in the order written."""
        transport, peer, _ = tcp_pair(self)
        transport.socket = _Scripted(transport.socket, script)  # type: ignore[assignment]
        sent = bytearray()
        received = bytearray()
        counter = 0
        for what, n in steps:
            if what == "write":
                chunk = b"".join(struct.pack("!I", counter + i) for i in range(n // 4 + 1))[:n]
                counter += n // 4 + 1
                sent += chunk
                send_now(transport, chunk)
            elif what == "writable":
                if queued(transport):
                    self.assertIsNone(transport.doWrite())
            else:
                try:
                    received += peer.recv(n)
                except BlockingIOError:
                    pass
        for _ in range(10_000):
            if len(received) == len(sent):
                break
            if queued(transport):
                transport.doWrite()
            received += read_all(peer)
        self.assertEqual(bytes(received), bytes(sent))
        self.assertEqual(queued(transport), 0)

    def test_write_after_buffered_write_does_not_overtake(self) -> None:
        """Once Twisted holds bytes for the socket, a later write is queued
        behind them even when the socket has room again (before the
        reactor's next doWrite)."""
        transport, peer, reactor = tcp_pair(self)
        first = b"a" * 200_000
        send_now(transport, first)
        self.assertGreater(queued(transport), 0)
        self.assertTrue(transport in reactor.getWriters(), "not asked to write")
        early = read_all(peer)  # the socket has room again
        send_now(transport, b"LATER")
        received = early
        while queued(transport):
            transport.doWrite()
            received += read_all(peer)
        self.assertEqual(received, first + b"LATER")

    def test_direct_when_empty(self) -> None:
        """With nothing queued, the bytes are on the socket when the call
        returns: no buffer, no interest in writability."""
        transport, peer, reactor = tcp_pair(self)
        write_now(transport, b"now")
        self.assertEqual(peer.recv(10), b"now")
        self.assertEqual(queued(transport), 0)
        self.assertFalse(transport in reactor.getWriters(), "asked to write")

    def test_partial_send_pauses_a_producer_as_twisted_does(self) -> None:
        """What the socket did not take goes to ``transport.write``, which
        pauses a registered streaming producer past its buffer size."""
        transport, _, _ = tcp_pair(self)
        paused: list[bool] = []

        class Producer:
            def pauseProducing(self) -> None:
                paused.append(True)

            def resumeProducing(self) -> None:
                paused.append(False)

            def stopProducing(self) -> None:
                pass

        transport.registerProducer(Producer(), True)
        send_now(transport, b"x" * (transport.bufferSize + 100_000))
        self.assertEqual(paused, [True])

    def test_send_error_is_reported_once_by_twisted(self) -> None:
        """A send that fails (the peer reset the connection) hands the bytes
        to Twisted's path, so the reactor is asked to write, and its
        ``doWrite`` meets the error and reports the loss, even when the
        connection is not reading."""
        recorder = _Recorder()
        transport, peer, reactor = tcp_pair(self, recorder)
        transport.stopReading()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        write_now(transport, b"y" * 1000)
        self.assertTrue(transport in reactor.getWriters(), "not asked to write")
        result = transport.doWrite()
        self.assertIsInstance(result, ConnectionLost)
        # What the reactor does with that answer (_disconnectSelectable).
        transport.connectionLost(Failure(result))
        self.assertEqual(len(recorder.lost), 1)
        # Later writes are dropped, as Twisted drops them.
        before = queued(transport)
        write_now(transport, b"z")
        self.assertEqual(queued(transport), before)

    def test_half_close_and_close_keep_twisted_order(self) -> None:
        """Bytes written after ``loseWriteConnection`` or ``loseConnection``
        (before the reactor acted on it) still arrive, in order, before the
        end of the stream; after the half-close is done they are dropped,
        as Twisted drops them."""
        for close in ("loseWriteConnection", "loseConnection"):
            transport, peer, _ = tcp_pair(self)
            write_now(transport, b"first ")
            getattr(transport, close)()
            write_now(transport, b"second")
            result = transport.doWrite()
            if close == "loseWriteConnection":
                self.assertIsNone(result)
                write_now(transport, b"dropped")
            self.assertEqual(read_all(peer), b"first second")

    def test_not_a_socket_transport(self) -> None:
        """Other transports get ``transport.write``."""
        transport = StringTransport()
        self.assertIsNone(plain_tcp(transport))
        write_now(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")


_PEM = self_signed_pem("localhost", datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))


class TlsWriteThroughTests(SynchronousTestCase):
    def test_ciphertext_goes_to_the_socket_at_once(self) -> None:
        """Under TLS, once a live stream asks (:func:`write_through`), the
        TCP transport below is written through: what the application
        writes is encrypted and on the socket when ``write`` returns,
        nothing left in Twisted's buffer, and the client decrypts it in
        order with what came before. Until then, Twisted's buffering."""
        registry = new_registry()
        cert = PrivateCertificate.loadPEM(_PEM)
        options = CertificateOptions(privateKey=cert.privateKey.original, certificate=cert.original)
        factory = CountingTLSFactory(
            options,
            _AppFactory(),
            metrics=ConnectionMetrics(registry),
            tls_metrics=TlsMetrics(registry),
            gate=ConnectionGate(),
            reactor=Clock(),
        )
        server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        peer.setblocking(False)
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        transport = tcp.Server(ours, server, ("127.0.0.1", 1), None, 1, MemoryReactor())  # type: ignore[arg-type]
        server.makeConnection(transport)
        client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        client.set_connect_state()
        for _ in range(10):
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                out = client.bio_read(1 << 20)
            except SSL.WantReadError:
                out = b""
            if out:
                server.dataReceived(out)
            if queued(transport):
                transport.doWrite()  # the reactor's turn
            back = read_all(peer)
            if back:
                client.bio_write(back)
            if not out and not back:
                break
        app = server.wrappedProtocol
        # An HTTP answer: Twisted's buffering (both records in one send).
        app.transport.write(b"answer; ")
        self.assertGreater(queued(transport), 0)
        transport.doWrite()
        # A live stream asks for write-through.
        self.assertTrue(write_through(app.transport))
        app.transport.write(b"hello, ")
        app.transport.write(b"reader")
        self.assertEqual(queued(transport), 0)
        client.bio_write(read_all(peer))
        plaintext = b""
        while True:
            try:
                plaintext += client.recv(100)
            except SSL.WantReadError:
                break
        self.assertEqual(plaintext, b"answer; hello, reader")


class _App(Protocol):
    pass


class _AppFactory:
    """The wrapped factory: a protocol that only holds its transport."""

    def buildProtocol(self, addr: object) -> Protocol:
        return _App()

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass
