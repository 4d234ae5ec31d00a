"""The negative cache of origin 404s."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.cdn.negative import NegativeCache


class NegativeCacheTests(SynchronousTestCase):
    def test_expires_and_is_bounded(self) -> None:
        clock = Clock()
        cache = NegativeCache(clock, max_entries=2)
        cache.add("e1", "t1", "a.png", 10.0)
        self.assertTrue(cache.has("e1"))
        clock.advance(10.0)
        self.assertFalse(cache.has("e1"))
        for i in range(5):
            cache.add("x{}".format(i), "t1", "k{}".format(i), 10.0)
        self.assertEqual(len(cache), 2)
        self.assertTrue(cache.has("x4"))
        self.assertFalse(cache.has("x0"))

    def test_prefix_of_one_tenant_only(self) -> None:
        """An upload under a prefix forgets that tenant's 404s there, never
        another tenant's with the same keys."""
        cache = NegativeCache(Clock(), max_entries=10)
        cache.add("a1", "t1", "threads/1/a.png", 60.0)
        cache.add("a2", "t1", "avatars/a.png", 60.0)
        cache.add("b1", "t2", "threads/1/a.png", 60.0)
        cache.discard_prefix("t1", "threads/")
        self.assertEqual([cache.has(e) for e in ("a1", "a2", "b1")], [False, True, True])
        cache.discard("a2")
        self.assertFalse(cache.has("a2"))
