"""The mesh broker's limits, against a scripted peer at the wire."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.spread import banana, jelly, pb
from twisted.trial.unittest import SynchronousTestCase

from fastedge.mesh.broker import Limits, MeshBroker, MeshServerFactory
from fastedge.mesh.messages import Announcement
from fastedge.mesh.metrics import MeshMetrics
from fastedge.metrics.registry import new_registry

from .test_messages import ForeignCopy, announcement


class EchoRoot(pb.Root):  # type: ignore[misc]
    def remote_echo(self, value: Any) -> Any:
        return value


class ScriptedPeer:
    """Speaks PB's wire format to one server broker by hand: whatever a
    faulty or hostile peer could send."""

    def __init__(self, testcase: SynchronousTestCase, limits: Limits) -> None:
        self.clock = Clock()
        self.registry = new_registry()
        self.metrics = MeshMetrics(self.registry)
        factory = MeshServerFactory(EchoRoot(), limits=limits, clock=self.clock, metrics=self.metrics)
        self.transport = StringTransport()
        self.broker: MeshBroker = factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 5555))
        self.broker.makeConnection(self.transport)
        # The server offers its dialects; we pick the plain one.
        self.send_raw(banana.encode(b"none"))
        self.send_raw(banana.encode([b"version", pb.Broker.version]))
        self._request = 0

    def send_raw(self, data: bytes) -> None:
        self.broker.dataReceived(data)

    def call(self, method: bytes, *args: Any) -> None:
        self._request += 1
        net_args = jelly.jelly(args, jelly.DummySecurityOptions())
        net_kw = jelly.jelly({}, jelly.DummySecurityOptions())
        self.send_raw(banana.encode([b"message", self._request, b"root", method, 1, net_args, net_kw]))

    @property
    def dropped(self) -> bool:
        return bool(self.transport.disconnected)

    def disconnects(self, reason: str) -> float:
        return self.registry.get_sample_value("fastedge_mesh_peer_disconnects_total", {"reason": reason}) or 0.0

    def answers(self) -> list[Any]:
        """Every expression the broker sent, decoded."""
        data = self.transport.value()
        decoder = banana.Banana(isClient=True)
        decoder.setPrefixLimit(64)
        decoder._selectDialect(b"pb")
        out: list[Any] = []
        decoder.expressionReceived = out.append  # type: ignore[method-assign]
        decoder.callExpressionReceived = out.append  # type: ignore[method-assign]
        decoder.dataReceived(data)
        return out


class BrokerLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.limits = Limits(
            max_message_bytes=65536,
            max_calls_per_second=10,
            max_pending_calls=5,
            login_timeout_seconds=2.0,
        )

    def peer(self) -> ScriptedPeer:
        return ScriptedPeer(self, self.limits)

    def assertDisconnected(self, peer: ScriptedPeer, reason: str) -> None:
        self.assertTrue(peer.dropped)
        self.assertEqual(peer.disconnects(reason), 1.0)
        logged = [e for e in self.events if e.get("reason") == reason and "disconnected" in e.get("log_format", "")]
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["peer"], "127.0.0.9:5555")

    def test_good_call_answered(self) -> None:
        """A well-formed call with accepted types is answered and nothing is
        dropped (the control for the cases below)."""
        peer = self.peer()
        peer.call(b"echo", [announcement(), ["x", 1, {"k": (None, True)}]])
        self.assertFalse(peer.dropped)
        self.assertIn(b"answer", [a[0] for a in peer.answers() if isinstance(a, list) and a])

    def test_unregistered_type_disconnects(self) -> None:
        """A call carrying a type that is not a mesh message (though jelly
        knows it) is refused and the peer disconnected."""
        peer = self.peer()
        peer.call(b"echo", ForeignCopy())
        self.assertDisconnected(peer, "insecure_type")

    def test_invalid_announcement_disconnects(self) -> None:
        """A registered type whose state does not validate is a bad message."""
        peer = self.peer()
        state = announcement().getStateToCopy()
        state["mesh_port"] = 70000
        bad = [
            b"fastedge.mesh.messages.Announcement",
            jelly.jelly(state, jelly.DummySecurityOptions()),
        ]
        peer._request += 1
        peer.send_raw(banana.encode([b"message", 1, b"root", b"echo", 1, [b"tuple", bad], [b"dictionary"]]))
        self.assertDisconnected(peer, "bad_message")

    def test_oversized_message_disconnects(self) -> None:
        """A message that grows past mesh.max_message_bytes while it arrives is
        cut off before it is complete."""
        peer = self.peer()
        data = banana.encode(
            [
                b"message",
                1,
                b"root",
                b"echo",
                1,
                [b"tuple", [b"unicode", b"x" * 200_000]],
                [b"dictionary"],
            ]
        )
        for start in range(0, len(data), 16384):
            peer.send_raw(data[start : start + 16384])
            if peer.dropped:
                break
        self.assertLess(start, 100_000)
        self.assertDisconnected(peer, "oversized")

    def test_many_small_messages_are_fine(self) -> None:
        """Messages that each fit are not counted together, however many
        arrive back to back in odd-sized reads."""
        peer = self.peer()
        peer.broker.logged_in("edge-1")
        one = banana.encode(
            [
                b"message",
                1,
                b"root",
                b"echo",
                0,
                [b"tuple", [b"unicode", b"y" * 30_000]],
                [b"dictionary"],
            ]
        )
        stream = one * 8
        for start in range(0, len(stream), 20_000):
            peer.send_raw(stream[start : start + 20_000])
            peer.clock.advance(1)
        self.assertFalse(peer.dropped)

    def test_call_rate_disconnects(self) -> None:
        """Bursts up to twice the per-second rate pass; more disconnect."""
        peer = self.peer()
        for _ in range(20):
            peer.call(b"echo", 1)
        self.assertFalse(peer.dropped)
        peer.clock.advance(0.5)
        for _ in range(5):
            peer.call(b"echo", 1)
        self.assertFalse(peer.dropped)
        peer.call(b"echo", 1)
        self.assertDisconnected(peer, "call_rate")

    def test_garbage_disconnects(self) -> None:
        """Bytes that are not PB end the connection as a protocol error."""
        peer = self.peer()
        peer.send_raw(b"\x01\x02\x03\x89" + b"\x7f" * 80)
        self.assertDisconnected(peer, "protocol")

    def test_unknown_answer_disconnects(self) -> None:
        """An answer to a call never made is a protocol error."""
        peer = self.peer()
        peer.send_raw(banana.encode([b"answer", 99, [b"None"]]))
        self.assertDisconnected(peer, "protocol")

    def test_cachemessage_disconnects(self) -> None:
        """The mesh uses no cacheables: a cached-object message is refused."""
        peer = self.peer()
        peer.send_raw(banana.encode([b"cachemessage", 1, 1, b"x", 1, [b"tuple"], [b"dictionary"]]))
        self.assertDisconnected(peer, "protocol")

    def test_login_timeout(self) -> None:
        """A peer that connects and never logs in (or never finishes TLS) is
        dropped after the connect timeout."""
        peer = self.peer()
        peer.clock.advance(1.9)
        self.assertFalse(peer.dropped)
        peer.clock.advance(0.2)
        self.assertDisconnected(peer, "login_timeout")

    def test_logged_in_has_no_deadline(self) -> None:
        """Once logged in, the login deadline is gone."""
        peer = self.peer()
        peer.broker.logged_in("edge-1")
        peer.clock.advance(60)
        self.assertFalse(peer.dropped)
        self.assertEqual(peer.broker.describe(), "edge-1")

    def test_one_bad_peer_leaves_others_alone(self) -> None:
        """Dropping a misbehaving peer does not touch another connection."""
        bad, good = self.peer(), self.peer()
        bad.call(b"echo", ForeignCopy())
        good.call(b"echo", Announcement(**announcement().getStateToCopy()))
        self.assertTrue(bad.dropped)
        self.assertFalse(good.dropped)
