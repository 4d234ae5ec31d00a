# -*- test-case-name: tests.unit.api.test_settings -*-
"""Tenants' settings and SSO secrets as every request sees them: read from
the nearest copy and kept in memory for the page cache's lifetime.

CORS answers, SSO checks and access checks need a tenant's settings on
every request, also on page reads served from the page cache, so the
settings are cached beside the pages (same :class:`PageCache`, same TTL,
``api.page_cache_seconds``) and lookups of one tenant are coalesced. A
change made through this node drops its entries at once; a change made
through another node shows here when they expire: within the page-cache
TTL on every node, like the pages themselves.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from ..singleflight import SingleFlight
from ..store.errors import NotFound
from ..store.interfaces import IStore
from ..store.model import ReadPreference, SsoSecret
from ..store.settings import TenantSettings, from_stored
from .cache import PageCache

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST


class TenantSettingsCache:
    """Settings and SSO secrets per tenant, cached in ``cache``."""

    def __init__(self, store: IStore, cache: PageCache) -> None:
        self._store = store
        self._cache = cache
        self._loading = SingleFlight()

    def settings(self, tenant_id: str) -> Deferred[TenantSettings | None]:
        """The tenant's settings, ``None`` for an unknown tenant (also cached)."""
        return self._get((tenant_id, "settings"), lambda: self._load_settings(tenant_id))

    def cached_settings(self, tenant_id: str) -> tuple[bool, TenantSettings | None]:
        """``(True, settings)`` when cached (no Deferred: the hot path),
        else ``(False, None)``: call :meth:`settings`."""
        found = self._cache.lookup((tenant_id, "settings"))
        if found is None:
            return False, None
        return True, found[0]

    def sso_secrets(self, tenant_id: str, now_ms: int) -> Deferred[list[SsoSecret]]:
        """The SSO secrets the tenant accepts now (cached entries are
        filtered by ``now_ms`` again, so an overlap ends on time)."""
        d: Deferred[list[SsoSecret]] = self._get(
            (tenant_id, "sso"), lambda: self._store.get_sso_secrets(tenant_id, now_ms=now_ms, read_preference=NEAREST)
        )
        return d.addCallback(
            lambda secrets: [s for s in secrets if s.accepted_until_ms is None or s.accepted_until_ms > now_ms]
        )

    def forget(self, tenant_id: str) -> None:
        """Drop what is cached for a tenant (its settings changed here)."""
        self._cache.invalidate((tenant_id, "tenant"))

    def _get(self, key: tuple[str, str], load: Any) -> Deferred[Any]:
        found = self._cache.lookup(key)
        if found is not None:
            d: Deferred[Any] = Deferred()
            d.callback(found[0])
            return d

        def fill() -> Deferred[Any]:
            loaded: Deferred[Any] = load()
            return loaded.addCallback(self._put, key)

        return self._loading.run(key, fill)

    def _put(self, value: Any, key: tuple[str, str]) -> Any:
        self._cache.put(key, value, ((key[0], "tenant"),))
        return value

    @inlineCallbacks
    def _load_settings(self, tenant_id: str) -> Any:
        try:
            tenant = yield self._store.get_tenant(tenant_id, read_preference=NEAREST)
        except NotFound:
            try:
                # Maybe created moments ago and not replicated here yet.
                tenant = yield self._store.get_tenant(tenant_id, read_preference=PRIMARY)
            except NotFound:
                return None
        return from_stored(tenant.settings)
