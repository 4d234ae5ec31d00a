# -*- test-case-name: tests.unit.cdn.test_negative -*-
"""The negative cache: recent origin 404s, so a missing object costs the
origin one request per ``cdn.negative_seconds``, not one per reader.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from ..expiring import ExpiringMap


class NegativeCache:
    """Recent origin 404s by cache entry id, bounded, each expiring
    ``ttl`` seconds after it was added."""

    def __init__(self, clock: IReactorTime, *, max_entries: int) -> None:
        self._items: ExpiringMap[str, tuple[str, str]] = ExpiringMap(clock, max_entries=max_entries)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, entry_id: str, tenant: str, key: str, ttl: float) -> None:
        """Remember that the origin has no ``key`` of ``tenant`` for ``ttl`` seconds."""
        self._items.put(entry_id, (tenant, key), ttl)

    def has(self, entry_id: str) -> bool:
        return self._items.get(entry_id) is not None

    def discard(self, entry_id: str) -> None:
        self._items.pop(entry_id)

    def discard_prefix(self, tenant: str, prefix: str) -> None:
        """Forget a tenant's 404s under ``prefix`` (an upload or purge there)."""
        self._items.drop_where(lambda _, item: item[0] == tenant and item[1].startswith(prefix))
