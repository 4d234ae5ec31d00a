"""A write forwarded into a partition (the links stay open, nothing
arrives) is not lost for the owner's subscribers once the partition heals,
even when nothing else is written afterwards (nodes in memory with real TLS
and PB, time on one Clock)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from .common import LiveWorld


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
