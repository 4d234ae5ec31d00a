"""A write forwarded into a partition (the links stay open, nothing
arrives) is not lost for the owner's subscribers once the partition heals,
even when nothing else is written afterwards (nodes in memory with real TLS
and PB, time on one Clock)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from fastedge.live.relay import rendezvous

from .common import LiveWorld, metric


def _owned_by_a_with_b_next(testcase: SynchronousTestCase) -> tuple[LiveWorld, Any, Any, Any]:
    """A world, c's relay, a thread a owns whose next owner among b and c
    is b, and a's subscriber to it, which has one comment ("before")."""
    world = LiveWorld(testcase)
    relay_c = world.mesh.live["c"].service.relay
    for _ in range(200):
        thread, url = world.thread_owned_by("a")
        if relay_c.owner_of(world.channel(thread)) == "a" and rendezvous(world.channel(thread), "bc") == "b":
            break
    else:
        raise AssertionError("no channel a owns with b next")
    on_a = world.subscribe("a", url)
    world.post("a", thread, "before")
    return world, relay_c, thread, on_a


class BlackHoleTests(SynchronousTestCase):
    def test_write_lost_in_a_partition_reaches_the_owner(self) -> None:
        """a is partitioned from b (the owner) and c by a network that drops
        every byte; within the suspect time a forwards a write to b, into
        the partition. When the partition heals and no other write follows,
        b's subscriber still gets that write, or is told to reload: never a
        silent gap (found by ``tests.integration.test_chaos``)."""
        world = LiveWorld(self)
        for _ in range(100):
            thread, url = world.thread_owned_by("b")
            break
        on_b = world.subscribe("b", url)
        world.post("b", thread, "before")
        net = world.mesh.network
        a, b, c = (world.mesh.host(n) for n in "abc")
        for other in (b, c):
            net.drop(a, other)
            net.block(a, other)
        world.mesh.advance(0.5)
        world.post("a", thread, "into the partition")
        world.mesh.advance(5.0)
        self.assertEqual(world.mesh.states("a")["b"], "dead")
        for other in (b, c):
            net.cut(a, other)
            net.undrop(a, other)
            net.unblock(a, other)
        world.mesh.advance(15.0)
        self.assertEqual(world.mesh.states("a")["b"], "alive")
        texts = [m["data"]["comment"]["html"] for m in on_b.events()]
        kinds = [k for k, _ in world.seqs(on_b)]
        self.assertTrue("<p>into the partition</p>" in texts or "reset" in kinds, (texts, kinds))


class TakeoverResetTests(SynchronousTestCase):
    def test_reset_to_followers_is_a_valid_message(self) -> None:
        """A node that starts a new numbering of a channel other nodes follow
        (here: it owns the channel again after a partition) pushes them a
        reset at seq 0; they accept it (no peer is disconnected as
        misbehaving) and their subscribers reload. Found by bench/chaos:
        followers dropped the link with ``bad_message`` ("a stamped event's
        seq starts at 1")."""
        world = LiveWorld(self)
        thread, url = world.thread_owned_by("b")
        on_a, on_c = world.subscribe("a", url), world.subscribe("c", url)
        world.post("b", thread, "one")
        net = world.mesh.network
        a, b, c = (world.mesh.host(n) for n in "abc")
        for other in (a, c):
            net.block(b, other)
            net.cut(b, other)
        world.mesh.advance(5.0)
        world.post("a", thread, "while b is away")
        for other in (a, c):
            net.unblock(b, other)
        world.mesh.advance(10.0)
        world.post("c", thread, "after")
        for node in "abc":
            self.assertEqual(
                metric(world.mesh, node, "fastedge_mesh_peer_disconnects_total", reason="bad_message"), 0.0, node
            )
        self.assertEqual(on_a.events()[-1]["id"], on_c.events()[-1]["id"])


class HandOverInFluxTests(SynchronousTestCase):
    def test_marker_sent_to_a_passing_owner_reaches_the_real_one(self) -> None:
        """c, cut off from a and b, sequences a write to a channel a owns.
        The partition heals link by link: c sees b alive before a, and in
        that moment b is the owner c sees, so c's "start a new epoch"
        marker goes to b. b, which knows a owns the channel, passes it on;
        a's subscriber reloads (or gets the write): never a silent gap.
        Before, b applied the marker to a numbering of its own that nobody
        follows (found by ``tests.integration.test_chaos``: the cut node's
        posts never reached the owner's subscribers)."""
        world, relay_c, thread, on_a = _owned_by_a_with_b_next(self)
        net = world.mesh.network
        a, b, c = (world.mesh.host(n) for n in "abc")
        for other in (a, b):
            net.block(c, other)
            net.cut(c, other)
        world.mesh.advance(5.0)
        self.assertEqual(world.mesh.states("c"), {"a": "dead", "b": "dead", "c": "alive"})
        world.post("c", thread, "from the cut node")
        # b comes back first: for a moment c sees b, not a.
        net.unblock(c, b)
        for _ in range(40):
            world.mesh.advance(0.05)
            if world.mesh.states("c")["b"] == "alive":
                break
        self.assertEqual(world.mesh.states("c"), {"a": "dead", "b": "alive", "c": "alive"})
        self.assertEqual(relay_c.owner_of(world.channel(thread)), "b")
        world.mesh.advance(0.1)
        net.unblock(c, a)
        world.mesh.advance(10.0)
        self.assertEqual(world.mesh.states("c"), {"a": "alive", "b": "alive", "c": "alive"})
        texts = [m["data"]["comment"]["html"] for m in on_a.events()]
        kinds = [k for k, _ in world.seqs(on_a)]
        self.assertTrue("<p>from the cut node</p>" in texts or "reset" in kinds, (texts, kinds))

    def test_write_handed_to_a_passing_owner_still_reaches_the_real_one(self) -> None:
        """Every node is cut off from the others; c sequences a write to a
        channel a owns. b comes back first, and b sees no a either: in both
        views b owns the channel, c hands it over to b, and b starts a new
        epoch with nothing in it. When a is back, a's subscriber reloads (or
        gets the write): never a silent gap. Before, c forgot the channel
        once it had told b, and b, having stamped nothing, told a nothing
        (found by the relay property test)."""
        world, relay_c, thread, on_a = _owned_by_a_with_b_next(self)
        net = world.mesh.network
        a, b, c = (world.mesh.host(n) for n in "abc")
        for one, other in ((a, b), (a, c), (b, c)):
            net.block(one, other)
            net.cut(one, other)
        world.mesh.advance(5.0)
        self.assertEqual(world.mesh.states("c"), {"a": "dead", "b": "dead", "c": "alive"})
        world.post("c", thread, "from the cut node")
        net.unblock(c, b)
        world.mesh.advance(3.0)
        self.assertEqual(world.mesh.states("c"), {"a": "dead", "b": "alive", "c": "alive"})
        self.assertEqual(world.mesh.states("b"), {"a": "dead", "b": "alive", "c": "alive"})
        self.assertEqual(metric(world.mesh, "b", "fastedge_mesh_relay_takeovers_total"), 1.0)
        net.unblock(a, b)
        net.unblock(a, c)
        world.mesh.advance(10.0)
        self.assertEqual(world.mesh.states("c"), {"a": "alive", "b": "alive", "c": "alive"})
        texts = [m["data"]["comment"]["html"] for m in on_a.events()]
        kinds = [k for k, _ in world.seqs(on_a)]
        self.assertTrue("<p>from the cut node</p>" in texts or "reset" in kinds, (texts, kinds))
