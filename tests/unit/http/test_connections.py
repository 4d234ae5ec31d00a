"""The one connection count and its limits (fastedge.http.connections),
alone and behind the listeners' counting factories."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from fastedge.http.connections import (
    CEILING,
    PER_IP,
    PER_PREFIX,
    ConnectionGate,
    Ticket,
    connection_ceiling,
)
from fastedge.http.metrics import ConnectionMetrics, LimitMetrics
from fastedge.http.site import EdgeSite
from fastedge.http.tls import CountingFactory
from fastedge.metrics.registry import new_registry


def v4(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 40000)


@implementer(IPushProducer)
class _Port:
    """A listening port as the gate sees it: something to pause and resume."""

    def __init__(self) -> None:
        self.accepting = True

    def pauseProducing(self) -> None:
        self.accepting = False

    def resumeProducing(self) -> None:
        self.accepting = True

    def stopProducing(self) -> None:
        self.accepting = False


class GateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = new_registry()
        self.metrics = LimitMetrics(self.registry)

    def refused(self, reason: str) -> float | None:
        return self.registry.get_sample_value("fastedge_http_connections_refused_total", {"reason": reason})

    def test_per_ip(self) -> None:
        """A third connection from one address is refused while another
        address is admitted; releasing one admits the address again."""
        gate = ConnectionGate(per_ip=2, metrics=self.metrics)
        first = gate.admit(v4("127.0.0.2"))
        self.assertIsInstance(first, Ticket)
        self.assertIsInstance(gate.admit(v4("127.0.0.2")), Ticket)
        self.assertEqual(gate.admit(v4("127.0.0.2")), PER_IP)
        self.assertIsInstance(gate.admit(v4("127.0.0.3")), Ticket)
        self.assertEqual((gate.open, gate.from_ip("127.0.0.2"), self.refused(PER_IP)), (3, 2, 1.0))
        assert isinstance(first, Ticket)
        first.release()
        first.release()  # twice: counted once
        self.assertEqual(gate.open, 2)
        self.assertIsInstance(gate.admit(v4("127.0.0.2")), Ticket)

    def test_per_prefix(self) -> None:
        """Addresses of one /24 (IPv4) or /64 (IPv6) share the network
        limit; an IPv4-mapped IPv6 peer counts as its IPv4 address."""
        gate = ConnectionGate(per_prefix=2, metrics=self.metrics)
        self.assertIsInstance(gate.admit(v4("10.1.2.3")), Ticket)
        self.assertIsInstance(gate.admit(IPv6Address("TCP", "::ffff:10.1.2.200", 1)), Ticket)
        self.assertEqual(gate.admit(v4("10.1.2.9")), PER_PREFIX)
        self.assertIsInstance(gate.admit(v4("10.1.3.9")), Ticket)
        self.assertIsInstance(gate.admit(IPv6Address("TCP", "2001:db8::1", 1)), Ticket)
        self.assertIsInstance(gate.admit(IPv6Address("TCP", "2001:db8::ffff:2", 1)), Ticket)
        self.assertEqual(gate.admit(IPv6Address("TCP", "2001:db8::3", 1)), PER_PREFIX)
        self.assertIsInstance(gate.admit(IPv6Address("TCP", "2001:db8:0:1::3", 1)), Ticket)
        self.assertEqual(self.refused(PER_PREFIX), 2.0)

    def test_ceiling_pauses_and_resumes_accepting(self) -> None:
        """Reaching the ceiling pauses every watched port (and one watched
        later); a connection accepted meanwhile is refused; the ports resume
        once a connection closes."""
        gate = ConnectionGate(max_connections=2, metrics=self.metrics)
        port = _Port()
        verifyObject(IPushProducer, port)
        gate.watch(port)
        tickets = [gate.admit(v4("127.0.0.2")), gate.admit(v4("127.0.0.3"))]
        self.assertFalse(port.accepting)
        late = _Port()
        gate.watch(late)
        self.assertFalse(late.accepting)
        self.assertEqual(gate.admit(v4("127.0.0.4")), CEILING)
        self.assertEqual(self.registry.get_sample_value("fastedge_http_accepting"), 0.0)
        ticket = tickets[0]
        assert isinstance(ticket, Ticket)
        ticket.release()
        self.assertTrue(port.accepting and late.accepting)
        self.assertEqual(self.registry.get_sample_value("fastedge_http_accepting"), 1.0)
        self.assertEqual(self.registry.get_sample_value("fastedge_http_accept_pauses_total"), 1.0)
        self.assertEqual(self.refused(CEILING), 1.0)

    def test_when_idle(self) -> None:
        """when_idle fires once the last connection is released."""
        gate = ConnectionGate()
        self.successResultOf(gate.when_idle())
        ticket = gate.admit(None)
        assert isinstance(ticket, Ticket)
        d = gate.when_idle()
        self.assertNoResult(d)
        ticket.release()
        self.successResultOf(d)

    def test_ceiling_from_the_descriptor_limit(self) -> None:
        """The ceiling keeps the reserve below the descriptor limit (half the
        descriptors at least), and an explicit one never exceeds that."""
        self.assertEqual(connection_ceiling(0, 512, 20_000), 19_488)
        self.assertEqual(connection_ceiling(0, 512, 1024), 512)
        self.assertEqual(connection_ceiling(0, 512, 600), 300)
        self.assertEqual(connection_ceiling(5000, 512, 20_000), 5000)
        self.assertEqual(connection_ceiling(50_000, 512, 20_000), 19_488)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("open"), st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.1.1", "2001:db8::1"])),
                st.tuples(st.just("close"), st.integers(min_value=0, max_value=50)),
            ),
            max_size=60,
        )
    )
    def test_counts_match_a_model(self, steps: list[tuple[str, object]]) -> None:
        """Any sequence of opens and closes keeps the counts equal to the
        admitted connections still open, never over a limit, and back to
        zero when all close."""
        gate = ConnectionGate(max_connections=6, per_ip=3, per_prefix=4, metrics=None)
        held: list[tuple[str, Ticket]] = []
        for op, arg in steps:
            if op == "open":
                host = str(arg)
                addr = IPv6Address("TCP", host, 1) if ":" in host else v4(host)
                got = gate.admit(addr)
                if isinstance(got, Ticket):
                    held.append((host, got))
            elif held:
                _, ticket = held.pop(int(str(arg)) % len(held))
                ticket.release()
            self.assertEqual(gate.open, len(held))
            self.assertLessEqual(gate.open, 6)
            for host in {h for h, _ in held}:
                self.assertEqual(gate.from_ip(host), sum(1 for h, _ in held if h == host))
                self.assertLessEqual(gate.from_ip(host), 3)
            self.assertEqual(gate.paused, gate.open >= 6)
        for _, ticket in held:
            ticket.release()
        self.assertEqual((gate.open, gate._by_ip, gate._by_prefix), (0, {}, {}))


class FactoryTests(SynchronousTestCase):
    """The plain-HTTP listener's factory admits through the gate."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = new_registry()
        self.gate = ConnectionGate(max_connections=1, per_ip=1, metrics=LimitMetrics(self.registry))
        site = EdgeSite(Resource(), reactor=self.clock, max_body_bytes=100, metrics=None, connections=self.gate)
        self.factory = CountingFactory(
            site,
            listener="http",
            metrics=ConnectionMetrics(self.registry),
            gate=self.gate,
            reactor=self.clock,
            close_timeout=5.0,
        )

    def connect(self, host: str) -> tuple[object, StringTransport]:
        protocol = self.factory.buildProtocol(v4(host))
        transport = StringTransport(peerAddress=v4(host))
        if protocol is not None:
            protocol.makeConnection(transport)
        return protocol, transport

    def test_over_the_ceiling_is_a_json_503(self) -> None:
        """A connection accepted over the ceiling is answered 503 JSON with
        Retry-After and closed; it is not counted."""
        first, _ = self.connect("127.0.0.2")
        self.assertEqual(self.gate.open, 1)
        _, transport = self.connect("127.0.0.3")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 503 "))
        self.assertIn(b"retry-after: 1", head)
        self.assertEqual(json.loads(body)["error"]["code"], "overloaded")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.gate.open, 1)
        first.connectionLost(None)  # type: ignore[attr-defined]
        self.assertEqual(self.gate.open, 0)

    def test_per_ip_is_closed_without_an_answer(self) -> None:
        """Over the per-address limit the factory builds nothing: the port
        closes the socket at once."""
        self.gate.max_connections = 0
        self.connect("127.0.0.2")
        protocol, _ = self.connect("127.0.0.2")
        self.assertIsNone(protocol)

    def test_close_is_bounded(self) -> None:
        """Once the node closes a connection, a client that does not read
        what is left is aborted after close_timeout seconds, and counted."""
        protocol, transport = self.connect("127.0.0.2")
        protocol.loseConnection()  # type: ignore[attr-defined]
        self.clock.advance(4.999)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.001)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.registry.get_sample_value("fastedge_http_close_aborts_total"), 1.0)
        protocol.connectionLost(None)  # type: ignore[attr-defined]
        self.assertEqual((self.gate.open, self.clock.getDelayedCalls()), (0, []))
