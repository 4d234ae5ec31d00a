"""Past ``mesh.full_mesh_max_nodes``: partial-view heartbeats, rumours with
Lifeguard suspicion and refutation, Lifeguard confirmations of indirect
probes, and member-list pulls that back off from a flapping digest."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import ConfigError, MeshConfig, parse_config
from fastedge.mesh.handler import MeshView
from fastedge.mesh.messages import BadMessage
from fastedge.mesh.partialview import (
    MIN_VIEW,
    RING_AHEAD,
    RING_BEHIND,
    PullBackoff,
    Ring,
    ViewMetrics,
    check_rumours,
    lifeguard_dead_after,
    lifeguard_wait,
)
from fastedge.metrics.registry import new_registry
from fastedge.testing.mesh import MemoryMesh

from .common import Watch, metric
from .test_probes import isolate

#: A small threshold, so that a dozen in-memory nodes use partial views.
SMALL = {"full_mesh_max_nodes": 6, "partial_view_size": 6}
NAMES = ["n{:02d}".format(i) for i in range(12)]


def big_cluster(testcase: SynchronousTestCase, names: list[str] = NAMES, **overrides: Any) -> MemoryMesh:
    mesh = MemoryMesh(testcase, **dict(SMALL, **overrides))
    for name in names:
        mesh.add(name, seeds=[mesh.address(names[0])] if name != names[0] else [])
    mesh.advance(3.0)
    return mesh


def pings_sent(mesh: MemoryMesh, observer: str, seconds: float) -> set[str]:
    """The peers ``observer`` heartbeats over ``seconds``."""
    membership = mesh.nodes[observer].membership
    call = membership._call
    targets: set[str] = set()

    def calling(link: Any, method: str, *args: Any) -> Any:
        if method == "ping":
            targets.add(link.peer_id)
        return call(link, method, *args)

    membership._call = calling
    mesh.advance(seconds)
    membership._call = call
    return targets


class PureTests(SynchronousTestCase):
    def test_ring_neighbours(self) -> None:
        """A node heartbeats the ring neighbours after and before it, and
        ``watches`` agrees with ``neighbours`` for every pair."""
        ids = ["n{}".format(i) for i in range(20)]
        ring = Ring(ids)
        for a in ids:
            near = ring.neighbours(a)
            self.assertEqual(len(near), RING_AHEAD + RING_BEHIND)
            for b in ids:
                self.assertEqual(ring.watches(a, b), b in near)

    @given(st.sets(st.text(alphabet="abcdef0123", min_size=1, max_size=6), min_size=1, max_size=40))
    def test_everyone_is_watched_by_the_same_number(self, ids: set[str]) -> None:
        """Every node is heartbeated by as many ring neighbours as it
        heartbeats (or by all others in a small ring)."""
        ring = Ring(ids)
        for b in ids:
            watchers = [a for a in ids if ring.watches(a, b)]
            self.assertEqual(len(watchers), min(len(ids) - 1, RING_AHEAD + RING_BEHIND))

    def test_lifeguard_wait(self) -> None:
        """A rumoured verdict waits two heartbeats with one origin, less with
        each further origin, one heartbeat from three on."""
        waits = [lifeguard_wait(c, 0.5) for c in range(1, 6)]
        self.assertEqual(waits[0], 1.0)
        self.assertTrue(waits[0] > waits[1] > waits[2])
        self.assertEqual(waits[2:], [0.5, 0.5, 0.5])

    def test_lifeguard_dead_after(self) -> None:
        """Confirmations shorten the wait for DEAD from ``dead`` to halfway
        between the second probe round and ``dead`` (2.25 s at the
        defaults), never below it, and one confirmation alone never all
        the way."""
        self.assertEqual(lifeguard_dead_after(0, 1.5, 2.5, 0.5, 3), 2.5)
        afters = [lifeguard_dead_after(c, 1.5, 2.5, 0.5, 3) for c in range(1, 6)]
        self.assertTrue(2.5 > afters[0] > afters[1] > afters[2])
        self.assertEqual(afters[2:], [2.25, 2.25, 2.25])
        self.assertGreater(lifeguard_dead_after(1, 1.5, 2.5, 0.5, 1), 2.25)

    def test_bad_rumours(self) -> None:
        """Anything but a short list of (announcement, state, origin) is
        refused."""
        for bad in (None, "x", [("a", "dead", "b")], [[None, "dead", "b"]], list(range(65))):
            self.assertRaises(BadMessage, check_rumours, bad)

    def test_config(self) -> None:
        """The defaults: partial views past 64 nodes, eight peers each; a
        view smaller than the ring neighbours and one extra is refused,
        naming the key."""
        self.assertEqual((MeshConfig().full_mesh_max_nodes, MeshConfig().partial_view_size), (64, 8))
        with self.assertRaises(ConfigError) as e:
            parse_config("[mesh]\npartial_view_size = {}\n".format(MIN_VIEW - 1))
        self.assertIn("mesh.partial_view_size", str(e.exception))


class PullBackoffTests(SynchronousTestCase):
    def waits(self, b: PullBackoff, digests: list[str]) -> list[float]:
        """The wait after each pull that did not converge, the peer saying
        ``digests`` one after the other."""
        now, out = 0.0, []
        for digest, following in zip(digests, digests[1:], strict=False):
            self.assertTrue(b.may_pull("p", now, digest))
            b.pulled("p", now, False, digest)
            start = now
            while not b.may_pull("p", now, following):
                now += 0.25
            out.append(now - start)
        return out

    def test_same_digest_backs_off_and_resets(self) -> None:
        """Each pull that leaves the digests different while the peer says
        the same digest doubles the wait before the next, to 30 s (counted
        from the second, logged once); one that converges resets it."""
        registry = new_registry()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        b = PullBackoff(0.5, ViewMetrics(registry))
        self.assertEqual(self.waits(b, ["d"] * 10), [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])
        self.assertEqual(registry.get_sample_value("fastedge_mesh_digest_backoffs_total"), 8.0)
        self.assertEqual(len([e for e in logged if "still differs" in e.get("log_format", "")]), 1)
        b.pulled("p", 100.0, converged=True)
        self.assertTrue(b.may_pull("p", 100.0, "d"))

    def test_new_digests_wait_at_most_four_heartbeats(self) -> None:
        """A peer that says a new digest each time (news, or a flapping
        member) is pulled from at most every four heartbeats once backed
        off: news still spreads within seconds."""
        b = PullBackoff(0.5, ViewMetrics(new_registry()))
        self.assertEqual(self.waits(b, ["d{}".format(i) for i in range(7)]), [0.5, 1.0, 2.0, 2.0, 2.0, 2.0])


class PartialViewTests(SynchronousTestCase):
    def test_full_mesh_up_to_the_threshold(self) -> None:
        """Up to ``full_mesh_max_nodes`` nodes every node heartbeats every
        peer (the full mesh, as before)."""
        mesh = big_cluster(self, NAMES[:6])
        self.assertFalse(mesh.nodes["n00"].membership.view.active)
        self.assertEqual(pings_sent(mesh, "n00", 1.0), set(NAMES[1:6]))

    def test_past_the_threshold_heartbeats_the_view(self) -> None:
        """Past it, every node sees every other ALIVE, but heartbeats only
        its view (``partial_view_size`` peers: its ring neighbours and
        extras), which the gauge reports."""
        mesh = big_cluster(self)
        for name in NAMES:
            self.assertEqual(set(mesh.states(name).values()), {"alive"})
            view = mesh.nodes[name].membership.view
            self.assertTrue(view.active)
            self.assertEqual(len(view.view), 6)
            self.assertEqual(metric(mesh, name, "fastedge_mesh_view_peers"), 6.0)
        sent = pings_sent(mesh, "n05", 1.0)
        self.assertEqual(sent, mesh.nodes["n05"].membership.view.view)

    def test_crash_is_dead_everywhere_within_the_bound(self) -> None:
        """A crashed node is DEAD on every other node within 3 s: its ring
        neighbours decide, the others take their rumours."""
        mesh = big_cluster(self)
        victim = "n07"
        watches = {o: Watch(mesh, o, victim) for o in NAMES if o != victim}
        crashed = mesh.clock.seconds()
        mesh.crash(victim)
        mesh.advance(4.0)
        for observer, watch in watches.items():
            self.assertIn("dead", watch.states(), observer)
            self.assertLessEqual(watch.when("dead") - crashed, 3.0, observer)
        taken = sum(metric(mesh, o, "fastedge_mesh_suspicions_total", outcome="taken") for o in watches)
        self.assertGreater(taken, 0)

    def test_clean_stop_is_withdrawn_everywhere(self) -> None:
        """A node that stops cleanly says goodbye to its view; the others
        learn it by rumour: LEAVING everywhere within a second."""
        mesh = big_cluster(self)
        # One whose watchers are not all in its own view (those hear the
        # goodbye second-hand while they still hear the node itself).
        ring = mesh.nodes["n00"].membership.view.ring()
        leaver = next(
            n for n in NAMES if any(ring.watches(o, n) and o not in mesh.nodes[n].membership.view.view for o in NAMES)
        )
        watches = [Watch(mesh, o, leaver) for o in NAMES if o != leaver]
        stopped = mesh.clock.seconds()
        mesh.stop(leaver)
        mesh.advance(2.0)
        for watch in watches:
            self.assertEqual(watch.states()[-1:], ["leaving"])
            self.assertLessEqual(watch.when("leaving") - stopped, 1.1)

    def test_a_broken_link_does_not_evict(self) -> None:
        """Past the threshold too, a node that loses its link to a ring
        neighbour keeps it SUSPECT at most: its other watchers vouch, and
        no other node ever drops it."""
        mesh = big_cluster(self)
        a = "n04"
        ring = mesh.nodes[a].membership.view.ring()
        c = ring.neighbours(a)[0]
        watches = [Watch(mesh, o, c) for o in NAMES if o not in (a, c)]
        isolate(mesh, a, c)
        mesh.advance(15.0)
        self.assertNotEqual(mesh.states(a)[c], "dead")
        for watch in watches:
            self.assertNotIn("dead", watch.states())

    def test_a_lying_peer_cannot_get_a_healthy_node_declared_dead(self) -> None:
        """A peer gossips that a healthy node is DEAD, under three forged
        origins. The others wait (Lifeguard), the node hears the rumour,
        refutes it with a higher incarnation, and is DEAD nowhere;
        the refutation is counted and logged."""
        mesh = big_cluster(self)
        liar, victim = "n02", "n09"
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        before = mesh.nodes[victim].membership.me.incarnation
        watches = [Watch(mesh, o, victim) for o in NAMES if o != victim]
        told = mesh.nodes[liar].membership.peers[victim].announcement
        lie = [(told, "dead", origin) for origin in ("n05", "n06", "n10")]
        mesh.nodes[liar].membership.view.push(lie)
        mesh.advance(5.0)
        for watch in watches:
            self.assertNotIn("dead", watch.states())
        for o in NAMES:
            if o != victim:
                self.assertEqual(mesh.states(o)[victim], "alive", o)
        self.assertGreater(mesh.nodes[victim].membership.me.incarnation, before)
        self.assertGreaterEqual(metric(mesh, victim, "fastedge_mesh_refutations_total"), 1.0)
        self.assertTrue([e for e in logged if e.get("log_format", "").startswith("mesh: {origin} (via {sender})")])

    def test_malformed_gossip_disconnects_the_peer(self) -> None:
        """A gossip call that is not a list of rumours is refused, counted,
        and the peer disconnected (``bad_message``)."""
        mesh = big_cluster(self)
        sender = mesh.nodes["n01"].membership
        target = next(iter(sender.view.view))
        link = sender.peers[target].link
        d = sender._call(link, "gossip", [("x", "dead", "y")])
        mesh.advance(0.1)
        self.failureResultOf(d)
        self.assertEqual(metric(mesh, target, "fastedge_mesh_rumours_total", outcome="bad"), 1.0)
        self.assertEqual(metric(mesh, target, "fastedge_mesh_peer_disconnects_total", reason="bad_message"), 1.0)

    def test_link_to_opens_on_demand(self) -> None:
        """A feature that asks for a link to a peer outside the view gets
        None at first, and a working link once it is up."""
        mesh = big_cluster(self)
        service = mesh.nodes["n00"]
        membership = service.membership
        outside = next(n for n in NAMES[1:] if n not in membership.view.view)
        self.assertIsNone(membership.peers[outside].link)
        handle = MeshView(service)
        self.assertIsNone(handle.link_to(outside))
        mesh.advance(0.5)
        link = handle.link_to(outside)
        self.assertIsNotNone(link)
        self.assertTrue(link.up)

    def test_flapping_digest_backs_off(self) -> None:
        """A peer whose digest never matches what its member list gives (a
        flapping member) is pulled from less and less often, counted."""
        mesh = big_cluster(self)
        flapper = mesh.nodes["n03"].membership
        rng = random.Random(1)
        flapper.digest = lambda: "{:016x}".format(rng.getrandbits(64))  # type: ignore[method-assign]
        watchers = [o for o in NAMES if flapper.me.node_id in mesh.nodes[o].membership.view.view]
        pulls = []
        for o in watchers:
            membership = mesh.nodes[o].membership
            call = membership._call

            def calling(link: Any, method: str, *args: Any, _call: Any = call) -> Any:
                if method == "members" and link.peer_id == "n03":
                    pulls.append(mesh.clock.seconds())
                return _call(link, method, *args)

            membership._call = calling
        mesh.advance(20.0)
        # Without the backoff: one pull per heartbeat per watcher (40 each);
        # with it, one every four heartbeats at most (its digest is new
        # every time).
        self.assertLess(len(pulls), 12 * len(watchers))
        backoffs = sum(metric(mesh, o, "fastedge_mesh_digest_backoffs_total") for o in watchers)
        self.assertGreater(backoffs, 0)

    def test_extras_rotate_and_links_follow_the_view(self) -> None:
        """Every 60 heartbeats one extra is swapped (the one with the
        longest round trip); a link closes when its peer leaves the view, so
        a node's links do not grow with rotations. (Heartbeats of 0.1 s: a
        rotation every 6 s.)"""
        mesh = big_cluster(
            self, NAMES, partial_view_size=7, heartbeat_seconds=0.1, suspect_seconds=0.3, dead_seconds=0.5
        )
        membership = mesh.nodes["n05"].membership

        def links() -> int:
            return sum(1 for p in membership.peers.values() if p.link is not None)

        # (The links of the full mesh outside the view closed at the switch.)
        before = links()
        self.assertEqual(before, 7)
        mesh.advance(20.0)
        self.assertGreaterEqual(metric(mesh, "n05", "fastedge_mesh_view_changes_total", reason="rotation"), 3.0)
        self.assertLessEqual(links(), before)
        self.assertEqual(len(membership.view.view), 7)
        for node_id in membership.view.view:
            self.assertTrue(membership.peers[node_id].link.up)
