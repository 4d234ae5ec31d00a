"""Membership and failure detection, between nodes in memory (real TLS and
PB over iosim), with every timer on one Clock."""

from __future__ import annotations

import os

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fastedge.mesh.nodemap import NodeState
from fastedge.testing.mesh import MemoryMesh, mesh_pair

from .common import SilentAvatar, Watch, metric

# The defaults: heartbeat 0.5 s, suspect 1.5 s, dead 2.5 s; the detector
# looks every heartbeat / 5.
TICK = 0.1


def three(testcase: SynchronousTestCase, **overrides: object) -> MemoryMesh:
    mesh = MemoryMesh(testcase, **overrides)
    mesh.add("a")
    mesh.add("b")
    mesh.add("c")
    mesh.advance(1.0)
    return mesh


class JoinTests(SynchronousTestCase):
    def test_pair_converges(self) -> None:
        """Two nodes, one seeding from the other, each see both ALIVE with a
        link up to the other."""
        mesh, a, b = mesh_pair(self)
        for node in (a, b):
            self.assertEqual(
                {n: i.state for n, i in node.node_map.nodes().items()},
                {"a": NodeState.ALIVE, "b": NodeState.ALIVE},
            )
        self.assertTrue(a.membership.peers["b"].link.up)
        self.assertTrue(b.membership.peers["a"].link.up)

    def test_any_seed_tells_everyone(self) -> None:
        """Nodes that each know only the previous one as a seed end up in a
        full mesh: everyone ALIVE everywhere, a link up from each to each."""
        mesh = MemoryMesh(self)
        mesh.add("a", seeds=[])
        previous = "a"
        for node_id in ("b", "c", "d", "e"):
            mesh.add(node_id, seeds=[mesh.address(previous)])
            previous = node_id
        mesh.advance(2.0)
        everyone = {"a", "b", "c", "d", "e"}
        for node_id in everyone:
            self.assertEqual(mesh.states(node_id), {n: "alive" for n in everyone}, node_id)
            peers = mesh.nodes[node_id].membership.peers
            self.assertEqual(
                {n for n, p in peers.items() if p.link is not None and p.link.up},
                everyone - {node_id},
            )

    def test_announcement_reaches_the_map(self) -> None:
        """What a node announces (deployment, region, addresses, version,
        incarnation) is what the others' maps hold, and its load follows."""
        load = [7]
        mesh = MemoryMesh(self, load_report_seconds=1.0)
        mesh.add("a")
        mesh.add("b", deployment="eu", load=lambda: load[0])
        mesh.advance(1.5)
        info = mesh.nodes["a"].node_map.nodes()["b"]
        self.assertEqual(
            (
                info.deployment,
                info.addresses,
                info.incarnation,
                info.load,
                info.version,
            ),
            ("eu", (mesh.host("b"),), 1, 7, mesh.nodes["b"].version),
        )
        self.assertEqual([n.node_id for n in mesh.nodes["a"].node_map.live("eu")], ["b"])
        load[0] = 12
        mesh.advance(1.5)
        self.assertEqual(mesh.nodes["a"].node_map.nodes()["b"].load, 12)

    def test_seed_that_is_this_node(self) -> None:
        """A node listed in its own seeds (the same list on every node) does
        not link to itself."""
        mesh = MemoryMesh(self)
        a = mesh.add("a")
        mesh.add("b", seeds=[mesh.address("a"), "127.0.0.2:7002"])
        mesh.advance(2.0)
        self.assertEqual(mesh.states("b"), {"a": "alive", "b": "alive"})
        self.assertNotIn("b", mesh.nodes["b"].membership.peers)
        self.assertEqual(set(a.membership.peers), {"b"})

    def test_second_hand_news_is_suspect_until_contact(self) -> None:
        """A node heard of only through a peer is SUSPECT (not answered by
        DNS) until this node reaches it itself, and ALIVE once it does."""
        mesh = MemoryMesh(self)
        mesh.add("a")
        mesh.add("b")
        mesh.network.block(mesh.host("c"), mesh.host("b"))
        mesh.add("c", seeds=[mesh.address("a")])
        mesh.advance(5.0)
        self.assertEqual(mesh.states("c"), {"a": "alive", "b": "suspect", "c": "alive"})
        self.assertEqual(mesh.states("b")["c"], "suspect")
        mesh.network.unblock(mesh.host("c"), mesh.host("b"))
        mesh.advance(6.0)
        self.assertEqual(mesh.states("c")["b"], "alive")
        self.assertEqual(mesh.states("b")["c"], "alive")


class FailureDetectionTests(SynchronousTestCase):
    def test_clean_stop_is_withdrawn_at_once(self) -> None:
        """A node that stops cleanly is LEAVING on the others as soon as it
        has stopped (no timeout), and they stop connecting to it."""
        mesh = three(self)
        watches = [Watch(mesh, observer, "c") for observer in ("a", "b")]
        stopped_at = mesh.clock.seconds()
        mesh.stop("c")
        for watch in watches:
            self.assertEqual(watch.changes, [(stopped_at, "leaving", 1)])
        for observer in ("a", "b"):
            self.assertIsNone(mesh.nodes[observer].membership.peers["c"].link)
        mesh.advance(10.0)
        self.assertEqual(mesh.states("a")["c"], "leaving")
        self.assertEqual([w.states() for w in watches], [["leaving"], ["leaving"]])

    def test_crash_is_dead_within_the_dead_timeout(self) -> None:
        """A node whose connections drop without a goodbye is SUSPECT after
        the suspect timeout and DEAD by the dead timeout on both others (plus
        one detector tick), never earlier than the timeouts allow."""
        mesh = three(self)
        watches = [Watch(mesh, observer, "c") for observer in ("a", "b")]
        crashed = mesh.clock.seconds()
        mesh.crash("c")
        mesh.advance(1.0)
        self.assertEqual([w.states() for w in watches], [[], []])
        mesh.advance(3.0)
        for watch in watches:
            self.assertEqual(watch.states(), ["suspect", "dead"])
            # Last heard from at most a heartbeat before the crash.
            self.assertGreaterEqual(watch.when("suspect") - crashed, 1.5 - 0.5)
            self.assertLessEqual(watch.when("suspect") - crashed, 1.5 + TICK + 1e-6)
            self.assertGreaterEqual(watch.when("dead") - crashed, 2.5 - 0.5)
            self.assertLessEqual(watch.when("dead") - crashed, 2.5 + TICK + 1e-6)
        self.assertEqual(metric(mesh, "a", "fastedge_mesh_peers", state="dead"), 1.0)
        self.assertEqual(metric(mesh, "a", "fastedge_mesh_peers", state="alive"), 1.0)

    def test_configured_timeouts(self) -> None:
        """The timeouts come from the config."""
        mesh = three(self, heartbeat_seconds=0.2, suspect_seconds=0.6, dead_seconds=1.0)
        watch = Watch(mesh, "a", "c")
        crashed = mesh.clock.seconds()
        mesh.crash("c")
        mesh.advance(2.0)
        self.assertLessEqual(watch.when("dead") - crashed, 1.0 + 0.04 + 1e-6)
        self.assertGreaterEqual(watch.when("dead") - crashed, 1.0 - 0.2)

    def test_restart_rejoins_with_a_higher_incarnation(self) -> None:
        """A crashed node that starts again (on another port) supersedes its
        old self on every node: ALIVE, incarnation 2, new address."""
        mesh = three(self)
        mesh.crash("c")
        mesh.advance(3.0)
        self.assertEqual(mesh.states("a")["c"], "dead")
        mesh.add("c")
        mesh.advance(1.0)
        for observer in ("a", "b"):
            info = mesh.nodes[observer].node_map.nodes()["c"]
            self.assertEqual((info.state, info.incarnation), (NodeState.ALIVE, 2))
            peer = mesh.nodes[observer].membership.peers["c"]
            self.assertEqual(peer.link.address, (mesh.host("c"), mesh.nodes["c"].port.getHost().port))
            self.assertTrue(peer.link.up)
        self.assertEqual(mesh.states("c"), {"a": "alive", "b": "alive", "c": "alive"})

    def test_restart_after_a_clean_stop(self) -> None:
        """A node that left comes back as a new incarnation and is ALIVE again."""
        mesh = three(self)
        mesh.stop("c")
        mesh.add("c")
        mesh.advance(1.0)
        self.assertEqual(mesh.nodes["a"].node_map.nodes()["c"].incarnation, 2)
        self.assertEqual(mesh.states("a")["c"], "alive")

    def test_refutes_a_lost_incarnation(self) -> None:
        """A node that left and lost its data directory restarts at
        incarnation 1 again; peers refuse that departed life, and it moves
        above it (persisting the number) and joins as incarnation 2."""
        mesh = three(self)
        mesh.stop("c")
        os.unlink(os.path.join(mesh.data_dirs["c"], "mesh", "incarnation"))
        c = mesh.add("c")
        mesh.advance(2.0)
        self.assertEqual(c.membership.me.incarnation, 2)
        with open(os.path.join(mesh.data_dirs["c"], "mesh", "incarnation")) as f:
            self.assertEqual(f.read().strip(), "2")
        for observer in ("a", "b"):
            info = mesh.nodes[observer].node_map.nodes()["c"]
            self.assertEqual((info.state, info.incarnation), (NodeState.ALIVE, 2))
        self.assertEqual(mesh.states("c"), {"a": "alive", "b": "alive", "c": "alive"})

    def test_same_incarnation_elsewhere_is_an_update(self) -> None:
        """A crashed node that restarts with its incarnation file lost (same
        number, new address) is taken as itself: ALIVE at the new address."""
        mesh = three(self)
        mesh.crash("c")
        mesh.advance(3.0)
        os.unlink(os.path.join(mesh.data_dirs["c"], "mesh", "incarnation"))
        c = mesh.add("c")
        mesh.advance(1.0)
        port = c.port.getHost().port
        for observer in ("a", "b"):
            peer = mesh.nodes[observer].membership.peers["c"]
            self.assertEqual((peer.state, peer.announcement.mesh_port), (NodeState.ALIVE, port))
            self.assertEqual((peer.link.address[1], peer.link.up), (port, True))

    def test_flapping_link_is_not_dead(self) -> None:
        """Connections between two nodes that drop and come back within a
        heartbeat change nothing in either map; an outage within the suspect
        timeout, with no other node to vouch, may make the peer SUSPECT but
        never DEAD."""
        mesh = three(self)
        watch_ac, watch_ca = Watch(mesh, "a", "c"), Watch(mesh, "c", "a")
        for _ in range(3):
            mesh.network.block(mesh.host("a"), mesh.host("c"))
            mesh.network.cut(mesh.host("a"), mesh.host("c"))
            mesh.advance(0.5)
            mesh.network.unblock(mesh.host("a"), mesh.host("c"))
            mesh.advance(3.0)
            self.assertTrue(mesh.nodes["a"].membership.peers["c"].link.up)
        self.assertEqual((watch_ac.changes, watch_ca.changes), ([], []))

        pair, a, b = mesh_pair(self)
        watch = Watch(pair, "a", "b")
        for _ in range(3):
            pair.network.block(pair.host("a"), pair.host("b"))
            pair.network.cut(pair.host("a"), pair.host("b"))
            pair.advance(1.4)
            pair.network.unblock(pair.host("a"), pair.host("b"))
            pair.advance(3.0)
        self.assertNotIn("dead", watch.states())
        self.assertEqual(pair.states("a")["b"], "alive")

    def test_broken_link_is_suspect_not_dead(self) -> None:
        """When only the connections between a and c are broken, a finds c
        SUSPECT, but b (which still hears c) vouches for it, so it is never
        DEAD; once c really dies, a declares it DEAD in time."""
        mesh = three(self)
        watch = Watch(mesh, "a", "c")
        mesh.network.block(mesh.host("a"), mesh.host("c"))
        mesh.network.cut(mesh.host("a"), mesh.host("c"))
        mesh.advance(20.0)
        self.assertEqual(watch.states(), ["suspect"])
        self.assertEqual(mesh.states("b")["c"], "alive")
        self.assertGreater(
            metric(mesh, "a", "fastedge_mesh_indirect_probes_total", outcome="vouched"),
            10,
        )
        crashed = mesh.clock.seconds()
        mesh.crash("c")
        mesh.advance(4.0)
        self.assertEqual(watch.states(), ["suspect", "dead"])
        self.assertLessEqual(watch.when("dead") - crashed, 2.5 + TICK + 1e-6)

    def test_partition_heals(self) -> None:
        """Two nodes cut off from each other long enough to be DEAD to each
        other find each other again when the network heals."""
        mesh, a, b = mesh_pair(self)
        mesh.network.block(mesh.host("a"), mesh.host("b"))
        mesh.network.cut(mesh.host("a"), mesh.host("b"))
        mesh.advance(4.0)
        self.assertEqual((mesh.states("a")["b"], mesh.states("b")["a"]), ("dead", "dead"))
        mesh.network.unblock(mesh.host("a"), mesh.host("b"))
        mesh.advance(7.0)
        self.assertEqual((mesh.states("a")["b"], mesh.states("b")["a"]), ("alive", "alive"))

    def test_long_dead_nodes_are_not_retried(self) -> None:
        """After forget_dead_seconds a DEAD node's link is stopped (it stays
        in the map, DEAD; it rejoins by itself if it comes back)."""
        mesh = three(self, forget_dead_seconds=10.0)
        mesh.crash("c")
        mesh.advance(5.0)
        self.assertIsNotNone(mesh.nodes["a"].membership.peers["c"].link)
        mesh.advance(9.0)
        self.assertIsNone(mesh.nodes["a"].membership.peers["c"].link)
        self.assertEqual(mesh.states("a")["c"], "dead")
        mesh.add("c")
        mesh.advance(1.0)
        self.assertEqual(mesh.states("a")["c"], "alive")

    def test_clock_skew_is_harmless(self) -> None:
        """Nodes whose clocks read wildly differently (only durations and
        round trips are compared, never timestamps) agree and detect a crash
        on time."""
        mesh = MemoryMesh(self)
        mesh.add("a", monotonic_offset=0.0)
        mesh.add("b", monotonic_offset=86400.0 * 365)
        mesh.add("c", monotonic_offset=-12345.678)
        mesh.advance(5.0)
        for node_id in ("a", "b", "c"):
            self.assertEqual(set(mesh.states(node_id).values()), {"alive"})
        rtt = mesh.nodes["b"].membership.peers["a"].rtt
        self.assertIsNotNone(rtt)
        self.assertLess(rtt, 0.1)
        watch = Watch(mesh, "b", "c")
        crashed = mesh.clock.seconds()
        mesh.crash("c")
        mesh.advance(4.0)
        self.assertLessEqual(watch.when("dead") - crashed, 2.5 + TICK + 1e-6)

    def test_round_trips_measured(self) -> None:
        """Every heartbeat's round trip is recorded per peer (histogram)."""
        mesh, a, b = mesh_pair(self)
        mesh.advance(5.0)
        count = metric(mesh, "a", "fastedge_mesh_heartbeat_rtt_seconds_count", peer="b")
        self.assertGreaterEqual(count, 9)
        self.assertIsNotNone(a.membership.peers["b"].rtt)


class FaultTests(SynchronousTestCase):
    def test_peer_that_never_answers_is_disconnected(self) -> None:
        """A peer that takes heartbeats and never answers has its connection
        dropped (and retried) after the dead timeout; the others are not
        affected and it stays in the map while it keeps talking to us."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        mesh = MemoryMesh(self)
        mesh.add("a")
        mesh.add("b")
        mesh.add("mute", avatar_class=SilentAvatar)
        mesh.advance(10.0)
        self.assertGreaterEqual(
            metric(mesh, "a", "fastedge_mesh_peer_disconnects_total", reason="unanswered"),
            2,
        )
        self.assertEqual(
            metric(mesh, "a", "fastedge_mesh_peer_disconnects_total", reason="unanswered"),
            metric(mesh, "b", "fastedge_mesh_peer_disconnects_total", reason="unanswered"),
        )
        self.assertEqual(mesh.states("a")["b"], "alive")
        self.assertEqual(mesh.states("b")["a"], "alive")
        self.assertTrue(any(e.get("reason") == "unanswered" and e.get("peer") == "mute" for e in events))

    def test_stale_and_departed_incarnations_refused(self) -> None:
        """A login of an incarnation older than the known one, or of one that
        left, is refused."""
        mesh = three(self)
        c = mesh.nodes["c"]
        me = c.membership.me
        a = mesh.nodes["a"].membership
        from fastedge.mesh.messages import Refused

        with self.assertRaises(Refused):
            a.joined(me.replace(incarnation=0), object())
        mesh.stop("c")
        with self.assertRaises(Refused) as cm:
            a.joined(me, object())
        self.assertIn("left", str(cm.exception))
        self.assertEqual(metric(mesh, "a", "fastedge_mesh_refused_total", reason="leaving"), 1.0)
