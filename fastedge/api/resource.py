# -*- test-case-name: tests.unit.api.test_public -*-
"""Assembles the comment API: one router for the public and tenant routes,
and the service that runs its background work."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..config import ApiConfig
from ..http.router import Route, Router
from ..identity.sessions import SessionCookies, load_or_create_key
from ..residency.gate import ResidencyGate
from ..store.interfaces import IStore
from .cache import PageCache
from .common import AddressHasher
from .cors import Cors
from .credits import CreditMeter
from .manage import ManageApi
from .metrics import ApiMetrics
from .moderation import ModerationApi
from .public import PublicApi
from .signin import SsoSignIn
from .tenants import TenantSettingsCache

if TYPE_CHECKING:
    from ..live.access import GroupLocks
    from ..live.publish import LivePublisher
    from ..live.tokens import ViewerTokens
    from ..spam.runner import SpamJudge


class _SessionKeyLoader(Service):
    """Reads (or creates) the session signing key at start, not at import."""

    _log = Logger()

    def __init__(self, cookies: SessionCookies, path: str) -> None:
        self._cookies = cookies
        self._path = path

    def startService(self) -> None:
        existed = os.path.exists(self._path)
        self._cookies.set_key(load_or_create_key(self._path))
        if existed:
            self._log.info("session key loaded from {path}", path=self._path)
        else:
            self._log.warn(
                "session key created at {path}; every node of the deployment must share it (api.secret_file)",
                path=self._path,
            )
        super().startService()


class _CreditFlusher(TimerService):
    """Flushes credit charges periodically and once more at stop."""

    _log = Logger()

    def __init__(self, meter: CreditMeter, every: float, clock: IReactorTime) -> None:
        super().__init__(every, self._flush)
        self.clock = clock
        self._meter = meter

    def _flush(self) -> Deferred[object]:
        # CreditMeter.flush never fails (it keeps failed charges), so the
        # TimerService loop is never stopped by an exception.
        return self._meter.flush()

    def stopService(self) -> Deferred[object]:
        d: Deferred[object] = super().stopService()
        d.addCallback(lambda _: self._meter.flush())
        return d


@dataclass(frozen=True)
class ApiSessions:
    """What the API shares with the live threads and is made before them:
    who a reader is (session cookies, viewer tokens, SSO sign-in) and the
    tenants' settings and page cache those read.

    Made by :func:`build_sessions`; given to :func:`build_api` and to the
    live service (``tap`` makes it first, so neither is patched later).
    """

    cookies: SessionCookies
    viewer_tokens: ViewerTokens
    cache: PageCache
    tenants: TenantSettingsCache
    metrics: ApiMetrics
    sso: SsoSignIn
    access: GroupLocks


def build_sessions(
    cfg: ApiConfig,
    *,
    store: IStore,
    clock: IReactorTime,
    registry: CollectorRegistry,
    access: GroupLocks | None = None,
    viewer_token_max_age_seconds: int = 24 * 3600,
) -> ApiSessions:
    """The API's sessions and sign-in (see :class:`ApiSessions`).

    :param access: the thread access rules, the same object the live
        threads use; default: its own.
    """
    from ..live.tokens import ViewerTokens

    metrics = ApiMetrics(registry)
    cookies = SessionCookies(max_age_seconds=cfg.session_max_age_seconds, secure=cfg.cookie_secure)
    tokens = ViewerTokens(cookies, max_age_seconds=viewer_token_max_age_seconds)
    cache = PageCache(ttl_seconds=cfg.page_cache_seconds, max_entries=cfg.page_cache_entries, clock=clock)
    tenants = TenantSettingsCache(store, cache)
    if access is None:
        from ..live.access import GroupLocks

        access = GroupLocks(store, clock=clock, ttl_seconds=cfg.page_cache_seconds)
    sso = SsoSignIn(cfg, store=store, clock=clock, tenants=tenants, metrics=metrics, access=access)
    return ApiSessions(
        cookies=cookies,
        viewer_tokens=tokens,
        cache=cache,
        tenants=tenants,
        metrics=metrics,
        sso=sso,
        access=access,
    )


@dataclass
class Api:
    """The API's resource and its service (a child of the transport)."""

    #: The router of the API's routes and the ``extra_*`` given to
    #: :func:`build_api` (:meth:`router` makes one with others).
    resource: Router
    service: MultiService
    cache: PageCache
    #: Signs the viewer tokens the public API hands to live-thread clients.
    viewer_tokens: ViewerTokens
    #: The public API's read and write paths (the embed page uses them).
    public: PublicApi
    #: Signs SSO users in (the live connection and the embed page use it too).
    sso: SsoSignIn
    #: Issues and checks session cookies (for the embed page's sign-in).
    cookies: SessionCookies
    #: Tenants' settings as requests see them (cached like pages).
    tenants: TenantSettingsCache
    #: The thread access rules every path to a thread asks (the embed page too).
    access: GroupLocks
    #: The tenant API (other children's tenant routes are wrapped by it).
    manage: ManageApi
    moderation: ModerationApi
    cors: Cors

    def router(
        self,
        *,
        extra_manage_routes: Callable[[ManageApi], list[Route]] | None = None,
        extra_routes: Sequence[Route] = (),
    ) -> Router:
        """A router of the API's routes and these: for routes of children
        made after the API (the CDN's uploads and purges need the public
        API's media guard first; ``tap``).

        :param extra_manage_routes: routes other subpackages add to the
            tenant API, built with the ``ManageApi`` so they authenticate
            and charge the same way.
        :param extra_routes: routes of other children (``GET
            /api/v1/mesh``), matched before the comment API's.
        """
        return _router(self.manage, self.moderation, self.public, self.cors, extra_manage_routes, extra_routes)


def _router(
    manage: ManageApi,
    moderation: ModerationApi,
    public: PublicApi,
    cors: Cors,
    extra_manage_routes: Callable[[ManageApi], list[Route]] | None,
    extra_routes: Sequence[Route],
) -> Router:
    # Manage routes first: "/api/v1/manage/..." must never be read as a tenant
    # called "manage" (tenant ids are random and 16 characters long anyway).
    extra = extra_manage_routes(manage) if extra_manage_routes is not None else []
    routes = list(extra_routes) + manage.routes() + moderation.routes() + extra + public.routes()
    routes += moderation.public_routes(public.moderator, cors)
    return Router(routes)


def build_api(
    cfg: ApiConfig,
    *,
    store: IStore,
    clock: IReactorTime,
    registry: CollectorRegistry,
    live: LivePublisher | None = None,
    viewer_token_max_age_seconds: int = 24 * 3600,
    extra_manage_routes: Callable[[ManageApi], list[Route]] | None = None,
    extra_routes: Sequence[Route] = (),
    access: GroupLocks | None = None,
    residency: ResidencyGate | None = None,
    sessions: ApiSessions | None = None,
    spam: SpamJudge | None = None,
) -> Api:
    """Build the API for ``cfg``; nothing runs until ``service`` starts.

    :param live: told about every comment change after the store has it
        (``None``: a node without live threads).
    :param extra_manage_routes: routes other subpackages add to the tenant
        API (the CDN's uploads and purges), built with the ``ManageApi`` so
        they authenticate and charge the same way.
    :param extra_routes: routes of other children (``GET /api/v1/mesh``),
        matched before the comment API's.
    :param residency: refuses API keys of another deployment's tenants
        (:class:`fastedge.residency.gate.ResidencyGate`).
    :param access: the thread access rules (group locks, closed threads,
        sign-in), the same object the live threads use; default: its own
        (ignored with ``sessions``, which has them).
    :param sessions: the sessions and sign-in made beforehand
        (:func:`build_sessions`, shared with the live threads); default:
        made here.
    :param spam: judges comments posted through the public API and the
        embed page before they are written (``None``: no spam checks).
    """
    if sessions is None:
        sessions = build_sessions(
            cfg,
            store=store,
            clock=clock,
            registry=registry,
            access=access,
            viewer_token_max_age_seconds=viewer_token_max_age_seconds,
        )
    metrics, cookies, tokens, cache = sessions.metrics, sessions.cookies, sessions.viewer_tokens, sessions.cache
    tenants, access, sso = sessions.tenants, sessions.access, sessions.sso
    meter = CreditMeter(cfg.credits, store=store, clock=clock)
    manage = ManageApi(
        cfg,
        store=store,
        clock=clock,
        credits=meter,
        cache=cache,
        metrics=metrics,
        live=live,
        tenants=tenants,
        residency=residency,
    )
    moderation = ModerationApi(
        cfg,
        store=store,
        clock=clock,
        manage=manage,
        cache=cache,
        metrics=metrics,
        live=live,
        address_hash=AddressHasher(cookies),
    )
    cors = Cors(tenants, metrics)
    public = PublicApi(
        cfg,
        store=store,
        clock=clock,
        cookies=cookies,
        cache=cache,
        metrics=metrics,
        live=live,
        viewer_tokens=tokens,
        tenants=tenants,
        cors=cors,
        access=access,
        sso=sso,
        spam=spam,
    )
    service = MultiService()
    _SessionKeyLoader(cookies, cfg.secret_file).setServiceParent(service)
    _CreditFlusher(meter, cfg.credits.flush_seconds, clock).setServiceParent(service)
    return Api(
        resource=_router(manage, moderation, public, cors, extra_manage_routes, extra_routes),
        service=service,
        cache=cache,
        viewer_tokens=tokens,
        sso=sso,
        cookies=cookies,
        tenants=tenants,
        access=access,
        public=public,
        manage=manage,
        moderation=moderation,
        cors=cors,
    )
