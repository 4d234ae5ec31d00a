# -*- test-case-name: tests.unit.test_singleflight -*-
"""Coalescing of concurrent identical work ("single flight").

When a popular cache entry expires, every request that arrives before it
is refilled would otherwise redo the same read. :class:`SingleFlight` runs
the work once per key and gives its result to everyone who asked meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

_T = TypeVar("_T")


class SingleFlight:
    """At most one run of the work per key at a time."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, list[Deferred[Any]]] = {}

    def in_flight(self, key: Hashable) -> bool:
        return key in self._waiting

    def run(self, key: Hashable, work: Callable[[], Deferred[_T] | _T]) -> Deferred[_T]:
        """``work()``'s result, shared with every caller of the same ``key``
        until it completes (a failure is shared the same way)."""
        if key in self._waiting:
            d: Deferred[_T] = Deferred()
            self._waiting[key].append(d)
            return d
        self._waiting[key] = []
        result: Deferred[_T] = maybeDeferred(work)  # type: ignore[call-overload]

        def share(outcome: Any) -> Any:
            for waiter in self._waiting.pop(key):
                if isinstance(outcome, Failure):
                    waiter.errback(outcome)
                else:
                    waiter.callback(outcome)
            return outcome

        result.addBoth(share)
        return result
