"""HTTP/1.1 request deadlines (fastedge.http.deadlines), to the tick on
a Clock, at the wire with a StringTransport."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from fastedge.http.connections import ConnectionGate
from fastedge.http.metrics import LimitMetrics
from fastedge.http.site import EdgeSite
from fastedge.metrics.registry import new_registry


class _Ok(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"ok"

    def render_POST(self, request: Request) -> bytes:
        return b"%d" % len(request.content.read())


class DeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = new_registry()
        self.site = EdgeSite(
            _Ok(),
            reactor=self.clock,
            max_body_bytes=1000,
            metrics=None,
            connections=ConnectionGate(metrics=LimitMetrics(self.registry)),
            header_timeout=10.0,
            body_timeout=30.0,
        )
        self.protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.addCleanup(self.protocol.connectionLost, None)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def timeouts(self, phase: str) -> float | None:
        return self.registry.get_sample_value("fastedge_http_request_timeouts_total", {"phase": phase})

    def assert_timed_out(self, code: str) -> None:
        self.assertTrue(self.transport.disconnecting)
        written = self.transport.value()
        self.assertIn(b"HTTP/1.1 408 Request Timeout\r\n", written)
        head, _, body = written[written.rindex(b"HTTP/1.1 408 ") :].partition(b"\r\n\r\n")
        self.assertIn(b"content-type: application/json; charset=utf-8", head)
        self.assertEqual(json.loads(body)["error"]["code"], code)

    def test_dribbled_headers_close_at_the_header_deadline(self) -> None:
        """A client sending one header line every 3 seconds is answered 408
        ``header_timeout`` and closed exactly 10 seconds after its first
        byte, although each line restarts Twisted's idle timer."""
        self.send(b"GET / HTTP/1.1\r\n")
        for n in range(3):
            self.clock.advance(3)
            self.send(b"X-Pad-%d: slow\r\n" % n)
        self.clock.advance(0.999)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.001)
        self.assert_timed_out("header_timeout")
        self.assertEqual(self.timeouts("headers"), 1.0)

    def test_dribbled_request_line(self) -> None:
        """The deadline runs from the first byte, before a request line is
        even complete."""
        self.send(b"G")
        self.clock.advance(5)
        self.send(b"ET / HT")
        self.clock.advance(5)
        self.assert_timed_out("header_timeout")

    def test_headers_in_time_then_keep_alive(self) -> None:
        """Headers in time are answered; the idle keep-alive connection after
        them is left to the idle timeout, and the next request has a fresh
        header deadline from its own first byte."""
        self.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(9.9)
        self.send(b"\r\n")
        self.assertIn(b"200 OK", self.transport.value())
        self.transport.clear()
        self.clock.advance(50)
        self.assertFalse(self.transport.disconnecting)
        self.send(b"GET / HTTP/1.1\r\n")
        self.clock.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.send(b"Host: x\r\n\r\n")
        self.assertIn(b"200 OK", self.transport.value())
        self.assertIsNone(self.timeouts("headers"))

    def test_body_without_progress(self) -> None:
        """A body that keeps arriving is waited for; one that stops for 30
        seconds is answered 408 ``body_timeout`` and closed."""
        self.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        for _ in range(4):
            self.clock.advance(29)
            self.send(b"a")
        self.clock.advance(29.999)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.001)
        self.assert_timed_out("body_timeout")
        self.assertEqual(self.timeouts("body"), 1.0)

    def test_body_in_time(self) -> None:
        """A body that completes is answered, and no deadline is left armed
        beyond Twisted's own idle timeout."""
        self.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.clock.advance(20)
        self.send(b"3\r\nabc\r\n0\r\n\r\n")
        self.assertIn(b"\r\n\r\n3", self.transport.value())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(40)
        self.assertFalse(self.transport.disconnecting)

    def test_pipelined_request_gets_its_own_deadline(self) -> None:
        """A partial request pipelined behind a complete one is held to the
        header deadline once the first is answered."""
        self.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n")
        self.assertIn(b"200 OK", self.transport.value())
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)
        self.assertIn(b"header_timeout", self.transport.value())
