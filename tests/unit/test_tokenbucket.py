"""The token bucket: bursts, refill, and a clock that goes backwards."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.tokenbucket import KeyedBuckets, TokenBucket


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_refused(self) -> None:
        """A full bucket allows ``burst`` events at once, then refuses."""
        bucket = TokenBucket(2.0, 5.0, Clock())
        self.assertEqual([bucket.take() for _ in range(6)], [True] * 5 + [False])

    def test_refills_at_rate(self) -> None:
        """Tokens come back at ``rate`` per second, never past ``burst``."""
        clock = Clock()
        bucket = TokenBucket(2.0, 3.0, clock)
        for _ in range(3):
            bucket.take()
        self.assertFalse(bucket.take())
        clock.advance(0.5)
        self.assertTrue(bucket.take())
        self.assertFalse(bucket.take())
        clock.advance(100.0)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])

    def test_clock_going_backwards_adds_nothing(self) -> None:
        """A clock stepped back (a wall clock reset) neither refills nor breaks the bucket."""
        clock = Clock()
        clock.advance(10.0)
        bucket = TokenBucket(1.0, 1.0, clock)
        self.assertTrue(bucket.take())
        clock.rightNow = 5.0
        self.assertFalse(bucket.take())
        clock.advance(1.0)
        self.assertTrue(bucket.take())

    @given(
        rate=st.integers(1, 1000),
        burst=st.integers(1, 1000),
        steps=st.lists(st.floats(0.0, 2.0, allow_nan=False), max_size=200),
    )
    def test_never_more_than_burst_plus_refill(self, rate: int, burst: int, steps: list[float]) -> None:
        """Over any run, the events allowed are at most ``burst`` plus
        ``rate`` times the time elapsed."""
        clock = Clock()
        bucket = TokenBucket(float(rate), float(burst), clock)
        allowed = 0
        for step in steps:
            clock.advance(step)
            allowed += bucket.take()
        self.assertLessEqual(allowed, burst + rate * clock.seconds() + 1e-6)


class KeyedBucketsTests(SynchronousTestCase):
    def test_burst_then_wait(self) -> None:
        """A key gets its burst, then waits 1/rate seconds per token; other
        keys are not affected."""
        clock = Clock()
        limiter = KeyedBuckets(6 / 60.0, 6.0, clock, max_keys=100)
        self.assertEqual([limiter.wait("k") for _ in range(6)], [0.0] * 6)
        self.assertAlmostEqual(limiter.wait("k"), 10.0)
        clock.advance(10)
        self.assertEqual(limiter.wait("k"), 0.0)
        self.assertTrue(limiter.take("other"))

    def test_least_recently_used_forgotten(self) -> None:
        """Only ``max_keys`` buckets are kept; the least recently used goes,
        so a busy key keeps its (empty) bucket while idle keys are dropped."""
        limiter = KeyedBuckets(1.0, 1.0, Clock(), max_keys=10)
        self.assertTrue(limiter.take("busy"))
        for i in range(100):
            limiter.take(str(i))
            self.assertFalse(limiter.take("busy"))
        self.assertEqual(len(limiter), 10)

    @given(keys=st.lists(st.integers(0, 50), max_size=300), bound=st.integers(1, 20))
    def test_bounded(self, keys: list[int], bound: int) -> None:
        limiter = KeyedBuckets(1.0, 2.0, Clock(), max_keys=bound)
        for key in keys:
            limiter.take(key)
            self.assertLessEqual(len(limiter), bound)
