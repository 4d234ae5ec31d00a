"""A clean stop's drain of the client connections (fastedge.http.drain),
and the http child's stop order (fastedge.http.service.HttpService), on a
Clock."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from fastedge.config import HttpConfig
from fastedge.http.connections import ConnectionGate
from fastedge.http.drain import SWEEP_SECONDS, Drain
from fastedge.http.metrics import ConnectionMetrics, DrainMetrics
from fastedge.http.service import make_service
from fastedge.http.site import EdgeSite
from fastedge.http.tls import CountingFactory
from fastedge.metrics.registry import new_registry


class _Socket(StringTransport):
    """A TCP connection whose close reaches the protocol at once (the client
    read everything and closed its side too)."""

    protocol: Any = None
    closed = False
    aborted = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def loseConnection(self) -> None:
        self._gone(ConnectionDone("closed"))

    def abortConnection(self) -> None:
        self.aborted = True
        self._gone(ConnectionAborted("aborted"))

    def _gone(self, why: Exception) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(Failure(why))


class _Slow(Resource):
    """Answers only when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []

    def render_GET(self, request: Request) -> int:
        self.waiting.append(request)
        return NOT_DONE_YET


class DrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.gate = ConnectionGate()
        self.registry = new_registry()
        self.slow = _Slow()
        root = Resource()
        root.putChild(b"slow", self.slow)
        site = EdgeSite(root, reactor=self.clock, max_body_bytes=100, metrics=None, connections=self.gate)
        self.factory = CountingFactory(
            site,
            listener="http",
            metrics=ConnectionMetrics(self.registry),
            gate=self.gate,
            reactor=self.clock,
            close_timeout=5.0,
        )
        self.drain = Drain(self.gate, clock=self.clock, seconds=10.0, metrics=DrainMetrics(self.registry))

    def connect(self) -> _Socket:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        socket = _Socket()
        socket.protocol = protocol
        protocol.makeConnection(socket)
        return socket

    def closed(self, how: str) -> float:
        return self.registry.get_sample_value("fastedge_http_drain_connections_total", {"how": how}) or 0.0

    def test_idle_connections_close_at_once(self) -> None:
        """A keep-alive connection with nothing in flight (and one that has
        not sent a request yet) is closed at once: the drain does not wait
        for browsers' idle connections."""
        used = self.connect()
        used.protocol.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn(b"404", used.value())
        self.assertFalse(used.closed, "keep-alive: the connection stays open after its answer")
        fresh = self.connect()
        going: list[int] = []
        d = self.drain.run(lambda: going.append(1))
        self.successResultOf(d)
        self.assertEqual(going, [1])
        self.assertTrue(used.closed and fresh.closed)
        self.assertFalse(used.aborted or fresh.aborted)
        self.assertEqual(self.gate.open, 0)
        self.assertEqual(self.closed("idle"), 2.0)

    def test_in_flight_request_finishes_then_closes(self) -> None:
        """A request in flight is answered (with ``Connection: close``), and
        its connection closes right after; the drain fires then."""
        socket = self.connect()
        socket.protocol.dataReceived(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        d = self.drain.run()
        self.assertNoResult(d)
        self.clock.advance(3.0)
        self.assertNoResult(d)
        self.assertFalse(socket.closed)
        request = self.slow.waiting[0]
        request.write(b"done")
        request.finish()
        self.successResultOf(d)
        self.assertTrue(socket.closed)
        self.assertFalse(socket.aborted)
        head = socket.value().split(b"\r\n\r\n", 1)[0].lower()
        self.assertIn(b"connection: close", head)
        self.assertTrue(socket.value().endswith(b"done") or b"done" in socket.value())
        self.assertEqual(self.registry.get_sample_value("fastedge_http_drain_seconds"), 3.0)

    def test_bounded(self) -> None:
        """What is still in flight after ``http.drain_seconds`` is cut: the
        connection is aborted and the drain fires at the deadline."""
        socket = self.connect()
        socket.protocol.dataReceived(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        d = self.drain.run()
        self.clock.advance(10.0 - SWEEP_SECONDS)
        self.assertNoResult(d)
        self.clock.advance(SWEEP_SECONDS)
        self.successResultOf(d)
        self.assertTrue(socket.aborted)
        self.assertEqual(self.closed("aborted"), 1.0)
        self.assertEqual(self.gate.open, 0)

    def test_nothing_open(self) -> None:
        """With no connection open the drain is over at once."""
        self.successResultOf(self.drain.run())


class _Recorder(Service):
    def __init__(self, name: str, log: list[str], wait: Deferred[None] | None = None) -> None:
        self.setName(name)
        self._log = log
        self._wait = wait

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._log.append("stop " + self.name)
        return self._wait


class HttpServiceStopTests(SynchronousTestCase):
    def test_order(self) -> None:
        """The http child's stop: the listener stops accepting, the live
        goodbye runs, the connections drain (waited for, bounded by
        ``http.drain_seconds``), and only then the API's background work
        stops (it flushes credit charges) -- nothing in flight can charge
        credits after the flush."""
        reactor = MemoryReactorClock()
        log: list[str] = []
        gate = ConnectionGate()
        site = EdgeSite(Resource(), reactor=reactor, max_body_bytes=100, metrics=None, connections=gate)
        background = _Recorder("background", log)
        http = make_service(
            HttpConfig(endpoint="tcp:0:interface=127.0.0.1", drain_seconds=4.0),
            reactor=reactor,
            site=site,
            background=background,
            registry=new_registry(),
            going_away=lambda: log.append("going away"),
        )
        http.privilegedStartService()
        http.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        # A connection with work in flight keeps the drain waiting.
        gate.admit(IPv4Address("TCP", "127.0.0.1", 1))
        d = http.stopService()
        self.assertEqual(log, ["going away"])
        port = http.getServiceNamed("http").port
        self.assertIsNone(port, "the listener stopped accepting first")
        reactor.advance(3.9)
        self.assertNoResult(d)
        self.assertEqual(log, ["going away"])
        reactor.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(log, ["going away", "stop background"])
