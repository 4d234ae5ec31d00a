# -*- test-case-name: tests.unit.embed.test_policy -*-
"""The embed page's policy from the tenant's settings (docs/settings.md):
``allowedOrigins`` are the sites that may frame the page (CSP
``frame-ancestors``; none set: any site), ``theme`` colours it."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred

from ..api.tenants import TenantSettingsCache
from ..store.settings import TenantSettings
from .render import Theme
from .resource import EmbedPolicy


def policy_of(settings: TenantSettings | None) -> EmbedPolicy:
    """The embed policy a tenant's settings make (``None``: no such tenant,
    the defaults; the page is then the empty state anyway)."""
    if settings is None:
        return EmbedPolicy()
    # Re-checked for CSS by the embed's own Theme (settings were checked
    # when written, by rules that may change between versions).
    theme = Theme.from_settings({"theme": {"accent": settings.theme.accent, "font": settings.theme.font}})
    return EmbedPolicy(frame_ancestors=tuple(settings.allowed_origins), theme=theme)


#: Policies remembered per tenant (the settings object they were made from).
_POLICIES_KEPT = 10_000


def tenant_policy(tenants: TenantSettingsCache) -> Callable[[str], EmbedPolicy | Deferred[EmbedPolicy]]:
    """What :class:`~fastedge.embed.resource.EmbedResource` asks per page:
    the tenant's settings through the API's cache (so a change applies
    within ``api.page_cache_seconds`` on every node, as for the API).

    The hot path: while the settings are cached the policy comes back at
    once (no Deferred), and it is the same object as long as the cached
    settings object is, so what it derives (its CSP header) is made once
    per settings read, not per page.
    """
    made: dict[str, tuple[TenantSettings | None, EmbedPolicy]] = {}

    def of(tenant_id: str, settings: TenantSettings | None) -> EmbedPolicy:
        found = made.get(tenant_id)
        if found is not None and found[0] is settings:
            return found[1]
        policy = policy_of(settings)
        made[tenant_id] = (settings, policy)
        while len(made) > _POLICIES_KEPT:
            made.pop(next(iter(made)))
        return policy

    def policy(tenant_id: str) -> EmbedPolicy | Deferred[EmbedPolicy]:
        known, settings = tenants.cached_settings(tenant_id)
        if known:
            return of(tenant_id, settings)
        return tenants.settings(tenant_id).addCallback(lambda loaded: of(tenant_id, loaded))

    return policy


__all__ = ["policy_of", "tenant_policy"]
