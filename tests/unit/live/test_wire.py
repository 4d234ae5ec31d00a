"""Tests for :class:`fastedge.live.wire.Writer`: the direct-to-socket
path on a real (socketpair) TCP transport, and the bounded fallback path."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import SynchronousTestCase

from fastedge.live.wire import Writer, backlog_meter


def tcp_transport(test: SynchronousTestCase) -> tuple[tcp.Server, socket.socket]:
    """A real Twisted TCP transport over one end of a socketpair (the other
    end is returned), on a MemoryReactor so nothing runs behind our back."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    test.addCleanup(ours.close)
    test.addCleanup(theirs.close)
    transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, MemoryReactor())  # type: ignore[arg-type]
    return transport, theirs


class DirectTests(SynchronousTestCase):
    def test_direct_write_reaches_the_socket_at_once(self) -> None:
        """On a plain TCP transport with nothing queued, a write is on the
        socket when write() returns (no reactor turn needed)."""
        transport, peer = tcp_transport(self)
        writer = Writer(transport, 1 << 20, lambda: None)
        self.assertTrue(writer.direct)
        self.assertEqual(writer.write(b"frame-1"), 7)
        self.assertEqual(peer.recv(100), b"frame-1")
        self.assertEqual((transport.dataBuffer, transport._tempDataLen), (b"", 0))

    def test_queue_keeps_order(self) -> None:
        """Once the socket is full, the rest is queued in the transport and
        later writes queue behind it (never overtaking)."""
        transport, peer = tcp_transport(self)
        writer = Writer(transport, 1 << 30, lambda: None)
        sent = b"".join(b"%06d" % i for i in range(200_000))
        for i in range(0, len(sent), 1000):
            writer.write(sent[i : i + 1000])
        self.assertGreater(len(transport.dataBuffer) - transport.offset + transport._tempDataLen, 0)
        received = b""
        peer.setblocking(False)
        while len(received) < len(sent):
            try:
                received += peer.recv(1 << 16)
            except BlockingIOError:
                transport.doWrite()  # what the reactor does when writable
        self.assertEqual(received, sent)

    def test_overflow(self) -> None:
        """Past the limit the writer overflows once, then takes nothing more."""
        transport, peer = tcp_transport(self)
        calls: list[None] = []
        writer = Writer(transport, 50_000, lambda: calls.append(None))
        chunk = b"x" * 10_000
        while not writer.overflowed:
            self.assertEqual(writer.write(chunk), len(chunk))
        self.assertEqual(len(calls), 1)
        self.assertEqual(writer.write(chunk), 0)
        queued = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        self.assertLessEqual(queued, 50_000 + len(chunk))

    def test_closed_peer(self) -> None:
        """A write to a connection whose peer is gone is dropped, not raised."""
        transport, peer = tcp_transport(self)
        writer = Writer(transport, 1 << 20, lambda: None)
        peer.close()
        for _ in range(3):
            writer.write(b"y" * 100_000)


class FallbackTests(SynchronousTestCase):
    def test_not_tcp(self) -> None:
        """Other transports (TLS, in-memory) get transport.write."""
        transport = StringTransport()
        writer = Writer(transport, 100, lambda: None)
        self.assertFalse(writer.direct)
        writer.write(b"abc")
        self.assertEqual(transport.value(), b"abc")

    def test_bound_counts_while_paused(self) -> None:
        """Bytes queued while the transport says it is full count towards the
        bound; resuming forgives them."""
        transport = StringTransport()
        calls: list[None] = []
        writer = Writer(transport, 100, lambda: calls.append(None))
        writer.write(b"a" * 500)  # not paused: the transport takes it
        writer.pauseProducing()
        writer.write(b"b" * 60)
        writer.resumeProducing()
        writer.pauseProducing()
        writer.write(b"c" * 60)
        self.assertEqual(calls, [])
        writer.write(b"d" * 60)
        self.assertEqual(len(calls), 1)
        self.assertTrue(writer.overflowed)
        writer.write_last(b"bye")
        self.assertTrue(transport.value().endswith(b"bye"))


def wrapped(transport: tcp.Server, wrapper: type[ProtocolWrapper] = ProtocolWrapper) -> ProtocolWrapper:
    """``transport`` seen through a connection wrapper, as the listeners'
    connection counters present it to the Site and to autobahn."""
    factory = WrappingFactory(Factory.forProtocol(Protocol))
    factory.protocol = wrapper
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, ProtocolWrapper)
    protocol.makeConnection(transport)
    return protocol


class WrappedTests(SynchronousTestCase):
    def test_wrapped_tcp_is_direct_and_bounded(self) -> None:
        """Under a pass-through wrapper (the listeners' counted connection)
        the writer still reaches the socket directly and overflows once what
        waits in the socket transport passes the limit; before, the wrapper
        hid the socket and nothing was ever bounded."""
        transport, peer = tcp_transport(self)
        calls: list[None] = []
        writer = Writer(wrapped(transport), 50_000, lambda: calls.append(None))
        self.assertTrue(writer.direct)
        self.assertTrue(writer.measured)
        chunk = b"x" * 10_000
        for _ in range(100):
            writer.write(chunk)
        self.assertEqual(len(calls), 1)
        queued = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        self.assertLessEqual(queued, 50_000 + len(chunk))
        self.assertEqual(writer.buffered, queued)

    def test_wrapper_that_changes_writes(self) -> None:
        """A wrapper with its own ``write`` is written through (never
        bypassed); what waits is still measured below it when it can be, else
        counted from the transport's pause calls."""

        class Counting(ProtocolWrapper):
            written = 0

            def write(self, data: bytes) -> None:
                self.written += len(data)
                super().write(data)

        transport, peer = tcp_transport(self)
        wrapper = wrapped(transport, Counting)
        writer = Writer(wrapper, 50_000, lambda: None)
        self.assertFalse(writer.direct)
        self.assertIsNone(backlog_meter(wrapper))
        writer.write(b"abc")
        self.assertEqual(wrapper.written, 3)  # type: ignore[attr-defined]

    def test_meter_of_a_socket_transport(self) -> None:
        """The meter of a socket transport is what Twisted holds for it."""
        transport, peer = tcp_transport(self)
        meter = backlog_meter(wrapped(wrapped(transport)))
        assert meter is not None
        self.assertEqual(meter(), 0)
        transport.write(b"q" * 1000)
        self.assertEqual(meter(), 1000)
        self.assertIsNone(backlog_meter(StringTransport()))


class PauseCountTests(SynchronousTestCase):
    def test_repeated_pause_keeps_counting(self) -> None:
        """A socket transport calls pauseProducing again on every write past
        its high-water mark; that must not restart the count (it did, so an
        unmeasured consumer was never bounded)."""
        transport = StringTransport()
        calls: list[None] = []
        writer = Writer(transport, 100, lambda: calls.append(None))
        self.assertFalse(writer.measured)
        for _ in range(3):
            writer.pauseProducing()
            writer.write(b"e" * 40)
        self.assertEqual(len(calls), 1)


class TlsWriteThroughTests(SynchronousTestCase):
    def test_writer_asks_tls_to_write_through(self) -> None:
        """A live writer on a TLS connection asks it to write its ciphertext
        through (fastedge.http.writenow.write_through); a writer told not
        to write directly does not."""
        asked: list[bool] = []

        class Tls(StringTransport):
            def write_through(self) -> bool:
                asked.append(True)
                return True

        Writer(Tls(), 100, lambda: None, direct=False)
        self.assertEqual(asked, [])
        writer = Writer(Tls(), 100, lambda: None)
        self.assertEqual(asked, [True])
        self.assertFalse(writer.direct)
