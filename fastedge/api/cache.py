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

from collections.abc import Hashable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from ..expiring import ExpiringMap


class PageCache:
    """Pages keyed by anything hashable, indexed by the threads they show."""

    def __init__(self, *, ttl_seconds: float, max_entries: int, clock: IReactorTime) -> None:
        self._ttl = ttl_seconds
        self._entries: ExpiringMap[Hashable, tuple[tuple[Hashable, ...], Any, str | None]] = ExpiringMap(
            clock, max_entries=max_entries if ttl_seconds > 0 else 0, on_drop=self._untag
        )
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
        return entry[1], entry[2]

    def put(self, key: Hashable, value: Any, tags: tuple[Hashable, ...], token: str | None = None) -> None:
        """Cache ``value`` read at consistency ``token``; :meth:`invalidate`
        with any of ``tags`` drops it."""
        self._entries.put(key, (tags, value, token), self._ttl)
        if self._entries.get(key) is None:
            return
        for tag in tags:
            self._by_tag.setdefault(tag, set()).add(key)

    def invalidate(self, tag: Hashable) -> None:
        """Drop every entry tagged ``tag``."""
        for key in list(self._by_tag.get(tag, ())):
            self._entries.pop(key)

    def _untag(self, key: Hashable, entry: tuple[tuple[Hashable, ...], Any, str | None]) -> None:
        for tag in entry[0]:
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]

    def __len__(self) -> int:
        return len(self._entries)
