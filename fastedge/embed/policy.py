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


def tenant_policy(tenants: TenantSettingsCache) -> Callable[[str], Deferred[EmbedPolicy]]:
    """What :class:`~fastedge.embed.resource.EmbedResource` asks per page:
    the tenant's settings through the API's cache (so a change applies
    within ``api.page_cache_seconds`` on every node, as for the API)."""

    def policy(tenant_id: str) -> Deferred[EmbedPolicy]:
        return tenants.settings(tenant_id).addCallback(policy_of)

    return policy


__all__ = ["policy_of", "tenant_policy"]
