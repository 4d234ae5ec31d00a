# -*- test-case-name: tests.unit.identity.test_sso -*-
"""Signing a user in with SSO: one object for every entry point.

The public API (``POST /sso``, ``X-FastEdge-SSO``), the live connection's
``sso`` field and the embed page all sign users in the same way: check the
payload against the tenant's accepted secrets (:func:`fastedge.identity.sso.verify_sso`),
upsert the user with their profile, and, where a cookie is wanted, open a
session bound to the user's author. The embed page (another package) gets
this object from :class:`fastedge.api.resource.Api` (``api.sso``) and issues
the cookie with ``api.cookies``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..config import ApiConfig
from ..identity.sso import SsoError, SsoUser, verify_sso
from ..store.interfaces import IStore
from ..store.model import AnonymousSession, ReadPreference, User, Written
from .metrics import ApiMetrics
from .tenants import TenantSettingsCache

if TYPE_CHECKING:
    from ..live.access import GroupLocks

PRIMARY = ReadPreference.PRIMARY


class SsoSignIn:
    """Verifies SSO payloads and signs their users in."""

    _log = Logger()

    def __init__(
        self,
        cfg: ApiConfig,
        *,
        store: IStore,
        clock: IReactorTime,
        tenants: TenantSettingsCache,
        metrics: ApiMetrics,
        access: GroupLocks | None = None,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._clock = clock
        self._tenants = tenants
        self._metrics = metrics
        self._access = access

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    @inlineCallbacks
    def verify(self, tenant_id: str, payload: Any, timestamp: Any, signature: Any) -> Any:
        """The user a signed payload names, checked against the secrets the
        tenant accepts now (cached like its settings).

        :returns: ``Deferred[SsoUser]``; fails with :class:`SsoError`.
        """
        now = self._now_ms()
        secrets = yield self._tenants.sso_secrets(tenant_id, now)
        try:
            user = verify_sso(
                [s.secret for s in secrets],
                payload,
                timestamp,
                signature,
                now_ms=now,
                max_age_ms=self._cfg.sso_max_age_seconds * 1000,
                skew_ms=self._cfg.sso_skew_seconds * 1000,
            )
        except SsoError as e:
            self._metrics.sso.labels(e.code).inc()
            raise
        self._metrics.sso.labels("ok").inc()
        return user

    @inlineCallbacks
    def upsert(self, tenant_id: str, user: SsoUser) -> Any:
        """Create or update the user and their profile.

        :returns: ``Deferred[User]``
        """
        upserted: Written[User] = yield self._store.upsert_user(
            tenant_id,
            user.external_id,
            user.display_name,
            profile=user.profile,
            created_ms=self._now_ms(),
            read_preference=PRIMARY,
        )
        if self._access is not None:
            # Their groups may have changed: the next check reads them again.
            self._access.forget_viewer(tenant_id, upserted.value.author_id)
        return upserted.value

    @inlineCallbacks
    def sign_in(self, tenant_id: str, user: SsoUser) -> Any:
        """Upsert the user and open a session bound to them.

        :returns: ``Deferred[tuple[User, Written[AnonymousSession]]]``; put
            ``written.value.id`` in a session cookie (``SessionCookies.issue``).
        """
        signed: User = yield self.upsert(tenant_id, user)
        written: Written[AnonymousSession] = yield self._store.create_user_session(
            tenant_id, signed.author_id, created_ms=self._now_ms(), read_preference=PRIMARY
        )
        self._metrics.sessions_created.inc()
        # The author id only: the user's id, name and email are the site's data.
        self._log.info("sso sign-in: tenant {tenant} author {author}", tenant=tenant_id, author=signed.author_id)
        return signed, written
