# -*- test-case-name: tests.unit.test_expiring -*-
"""The node's one bounded in-memory map: entries that may expire on a clock,
at most ``max_entries`` of them, the oldest dropped first.

Every short-lived cache is one of these: the API's page cache, the CDN's
negative cache of origin 404s, the live subscriptions' thread and viewer
lookups, and the rate limiters' buckets by key. "Oldest" is the order of
:meth:`ExpiringMap.put`, unless a reader asks for ``touch=True`` (then it
is least recently used first).

An entry without a TTL never expires (only eviction drops it); the clock is
not read for it, so a hot path (a DNS answer's rate limit) pays one dict
lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class ExpiringMap(Generic[_K, _V]):
    """A bounded map with optional per-entry expiry.

    :param clock: the reactor, or a test's ``Clock``.
    :param max_entries: entries kept at most; 0 keeps nothing.
    :param on_drop: called with ``(key, value)`` for every entry that leaves
        the map (expired, evicted, replaced, popped), so an index kept
        beside the map stays exact.
    """

    __slots__ = ("_clock", "_max", "_on_drop", "_items")

    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_entries: int,
        on_drop: Callable[[_K, _V], None] | None = None,
    ) -> None:
        self._clock = clock
        self._max = max_entries
        self._on_drop = on_drop
        self._items: OrderedDict[_K, tuple[float | None, _V]] = OrderedDict()

    def __len__(self) -> int:
        """Entries held, expired ones not yet noticed included."""
        return len(self._items)

    def get(self, key: _K, default: Any = None, *, touch: bool = False) -> Any:
        """The live value for ``key``, else ``default``. An expired entry is
        dropped. ``touch`` makes it the most recently used."""
        entry = self._items.get(key)
        if entry is None:
            return default
        expires = entry[0]
        if expires is not None and expires <= self._clock.seconds():
            self.pop(key)
            return default
        if touch:
            self._items.move_to_end(key)
        return entry[1]

    def put(self, key: _K, value: _V, ttl: float | None = None) -> None:
        """Keep ``value`` for ``ttl`` seconds (``None``: until evicted),
        replacing any entry of ``key``; then drop the oldest past the bound."""
        if self._max <= 0:
            return
        self.pop(key)
        expires = None if ttl is None else self._clock.seconds() + ttl
        self._items[key] = (expires, value)
        while len(self._items) > self._max:
            self.pop(next(iter(self._items)))

    def pop(self, key: _K) -> None:
        """Drop ``key``'s entry, if any."""
        entry = self._items.pop(key, None)
        if entry is not None and self._on_drop is not None:
            self._on_drop(key, entry[1])

    def drop_where(self, match: Callable[[_K, _V], bool]) -> None:
        """Drop every entry whose ``(key, value)`` matches."""
        for key in [k for k, (_, v) in self._items.items() if match(k, v)]:
            self.pop(key)

    def __iter__(self) -> Iterator[_K]:
        """Keys held, oldest first (expired ones not yet noticed included)."""
        return iter(list(self._items))
