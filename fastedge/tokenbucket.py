# -*- test-case-name: tests.unit.test_tokenbucket -*-
"""The node's one rate limiter: a token bucket, at most ``rate`` events per
second on average, in bursts of at most ``burst``, on a given clock (the
reactor, or a test's ``Clock``), and a bounded table of them by key.

Every limit is one of these: comment writes per session and per address
(API), DNS answers per source network, calls per mesh connection, frames per
live connection.

:class:`TokenBucket` is small on purpose (five slots): a live connection
holds two, and a node holds a hundred thousand connections.
"""

from __future__ import annotations

from collections.abc import Hashable

from twisted.internet.interfaces import IReactorTime

from .expiring import ExpiringMap


class TokenBucket:
    """A bucket of ``burst`` tokens, refilled at ``rate`` per second.

    :param rate: tokens added per second.
    :param burst: tokens the bucket holds at most (it starts full).
    """

    __slots__ = ("_clock", "_rate", "_burst", "_tokens", "_at")

    def __init__(self, rate: float, burst: float, clock: IReactorTime) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = clock.seconds()

    def take(self) -> bool:
        """Spend one token if there is one.

        :returns: whether the event is allowed.
        """
        return self.wait() == 0.0

    def wait(self) -> float:
        """Spend one token if there is one.

        :returns: 0 when the event is allowed, else the seconds until a
            token is free (nothing is spent).
        """
        now = self._clock.seconds()
        tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._rate)
        self._at = now
        if tokens < 1.0:
            self._tokens = tokens
            return (1.0 - tokens) / self._rate if self._rate > 0 else float("inf")
        self._tokens = tokens - 1.0
        return 0.0


class KeyedBuckets:
    """One :class:`TokenBucket` per key (a session, an address, a network),
    at most ``max_keys`` of them: past it the least recently used bucket is
    dropped, which only ever forgives a client, never wrongly refuses one.
    """

    def __init__(self, rate: float, burst: float, clock: IReactorTime, *, max_keys: int) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: ExpiringMap[Hashable, TokenBucket] = ExpiringMap(clock, max_entries=max_keys)

    def __len__(self) -> int:
        return len(self._buckets)

    def wait(self, key: Hashable) -> float:
        """Spend one of ``key``'s tokens: 0 when allowed, else the seconds
        until one is free."""
        bucket = self._buckets.get(key, touch=True)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst, self._clock)
            self._buckets.put(key, bucket)
        return bucket.wait()

    def take(self, key: Hashable) -> bool:
        """Spend one of ``key``'s tokens; whether the event is allowed."""
        return self.wait(key) == 0.0
