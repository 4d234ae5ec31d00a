# -*- test-case-name: tests.unit.test_tokenbucket -*-
"""One token bucket: at most ``rate`` events per second on average, in
bursts of at most ``burst``, on a given clock (the reactor, or a test's
``Clock``).

Small on purpose (four slots and the clock): a live connection holds two,
and a node holds a hundred thousand connections.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


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
        now = self._clock.seconds()
        tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._rate)
        self._at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
