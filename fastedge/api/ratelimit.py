# -*- test-case-name: tests.unit.api.test_pieces -*-
"""Token-bucket rate limits on comment writes, per session and per IP."""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime


class RateLimiter:
    """At most ``per_minute`` events per key, with bursts up to that size.

    Buckets live in memory, bounded to ``max_keys`` (the least recently used
    go first, which only ever forgives a client, never wrongly refuses one).
    """

    def __init__(self, per_minute: int, *, clock: IReactorTime, max_keys: int = 100_000) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Spend one token for ``key``.

        :returns: 0 when allowed, else the seconds until a token is free.
        """
        now = self._clock.seconds()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self._rate
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait
