# -*- test-case-name: tests.unit.api.test_pieces -*-
"""A short-lived, bounded cache of public thread pages.

Most readers of a thread carry no session, so they all get the same bytes:
the page is serialized once and served from memory for a few seconds
(``api.page_cache_seconds``). Writes made through this node drop the
thread's pages at once; writes made elsewhere reach the local replica and
show here when the entry expires.

An entry remembers the consistency token its read was made at (``None``
when unknown). A reader holding a newer token (their own recent write)
must not be served it: see :meth:`PageCache.lookup`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from twisted.internet.interfaces import IReactorTime


class PageCache:
    """Pages keyed by anything hashable, indexed by the threads they show."""

    def __init__(self, *, ttl_seconds: float, max_entries: int, clock: IReactorTime) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, tuple[Hashable, ...], Any, str | None]] = OrderedDict()
        self._by_tag: dict[Hashable, set[Hashable]] = {}

    def get(self, key: Hashable) -> Any | None:
        found = self.lookup(key)
        return None if found is None else found[0]

    def lookup(self, key: Hashable) -> tuple[Any, str | None] | None:
        """``(value, token)`` of a live entry: the token its read was made at.
        A caller holding a token the entry's does not cover must read afresh."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock.seconds():
            self._drop(key)
            return None
        return entry[2], entry[3]

    def put(self, key: Hashable, value: Any, tags: tuple[Hashable, ...], token: str | None = None) -> None:
        """Cache ``value`` read at consistency ``token``; :meth:`invalidate`
        with any of ``tags`` drops it."""
        if self._ttl <= 0 or self._max <= 0:
            return
        self._drop(key)
        self._entries[key] = (self._clock.seconds() + self._ttl, tags, value, token)
        for tag in tags:
            self._by_tag.setdefault(tag, set()).add(key)
        while len(self._entries) > self._max:
            self._drop(next(iter(self._entries)))

    def invalidate(self, tag: Hashable) -> None:
        """Drop every entry tagged ``tag``."""
        for key in list(self._by_tag.get(tag, ())):
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for tag in entry[1]:
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]

    def __len__(self) -> int:
        return len(self._entries)
