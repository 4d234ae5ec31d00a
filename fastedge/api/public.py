# -*- test-case-name: tests.unit.api.test_public -*-
"""The public API the embed widget calls: read a thread, post, like, flag,
block. Reads go to the NEAREST copy; writes to the primary.

A commenter is an anonymous session created on their first write and
remembered in a signed cookie (:mod:`fastedge.identity.sessions`). The cookie
also carries the consistency token of the viewer's latest write, and the
viewer's reads pass it to the store, so a reader who just posted sees their
comment on the next page load from the nearest replica, even through
another node (docs/consistency.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime

from ..config import ApiConfig
from ..expiring import ExpiringMap
from ..http.errors import ApiError, bad_request, not_found
from ..http.router import Call, Reply, Route
from ..identity.sessions import COOKIE_NAME, SessionCookieError, SessionCookies
from ..identity.sessions import HEADER_NAME as SESSION_HEADER
from ..identity.sso import SsoError, SsoUser
from ..metrics.registry import label_counter
from ..singleflight import SingleFlight
from ..spam.model import Candidate, RequestFacts
from ..store.errors import (
    AccessRefused,
    AlreadyExists,
    BadToken,
    InvalidReference,
    LimitReached,
    NotFound,
    Stale,
    ThreadClosed,
)
from ..store.interfaces import IStore
from ..store.model import (
    AnonymousSession,
    AuthorKind,
    CommentStatus,
    Expect,
    NewPost,
    NewSession,
    Poster,
    ReadPreference,
    SessionPoster,
    Sort,
    Tenant,
    Thread,
    ViewerState,
    Written,
)
from ..store.settings import TenantSettings, from_stored, groups_for
from ..store.views import public_comment
from ..tokenbucket import KeyedBuckets
from . import common
from .cache import PageCache
from .cors import Cors
from .markup import render
from .metrics import ApiMetrics
from .moderation import auto_hide_threshold
from .pageview import PageView
from .signin import SsoSignIn
from .tenants import TenantSettingsCache
from .viewers import ViewerStates

if TYPE_CHECKING:
    from ..live.access import GroupLocks
    from ..live.publish import LivePublisher
    from ..live.tokens import ViewerTokens
    from ..spam.runner import SpamJudge

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST
#: The header that signs a call in with SSO (docs/sso.md).
SSO_HEADER = b"x-fastedge-sso"
#: Sessions remembered (their author never changes; a few MB at most).
_SESSION_AUTHORS_KEPT = 50_000


@dataclass
class PageRead:
    """A page of a thread as one reader sees it (see :meth:`PublicApi.read_page`)."""

    tenant_id: str
    #: The shared page (cached, the same object for every reader).
    view: PageView
    #: ``Set-Cookie`` values for the answer (a refused cookie is cleared).
    cookies: list[bytes]
    #: The reader's public author id, when they have a session we can see.
    author_id: str | None = None
    #: Their likes and blocks on the page's comments.
    state: ViewerState | None = None
    #: Who the reader is for a client (author id, live-thread token).
    viewer: dict[str, Any] | None = None


def _locked(settings: TenantSettings, thread: Thread | None) -> bool:
    """Whether a thread (``None``: not created yet) is locked to groups."""
    return bool(groups_for(thread.locked_groups if thread is not None else None, settings))


@dataclass(frozen=True)
class Viewer:
    """The session making a write, and what its cookie held."""

    session: AnonymousSession
    #: When the session's cookie was first issued (kept on every re-issue).
    issued_s: int
    #: The cookie's consistency token (of the viewer's latest write).
    token: str | None = None
    #: Whether this call created the session (a cookie must be set).
    new: bool = False
    #: Whether the call came without the cookie (a new session, or one the
    #: page carried in ``X-FastEdge-Session``): the answer hands the session
    #: back in that header too, for a browser that keeps no cookie.
    carried: bool = False


def _writes_per_minute(per_minute: int, clock: IReactorTime) -> KeyedBuckets:
    """Comment writes per key: ``per_minute`` on average, in bursts of that
    many, for the 100,000 most recent keys."""
    return KeyedBuckets(per_minute / 60.0, float(per_minute), clock, max_keys=100_000)


class PublicApi:
    """Handlers of ``/api/v1/{tenant}/...``."""

    def __init__(
        self,
        cfg: ApiConfig,
        *,
        store: IStore,
        clock: IReactorTime,
        cookies: SessionCookies,
        cache: PageCache,
        metrics: ApiMetrics,
        live: LivePublisher | None = None,
        viewer_tokens: ViewerTokens | None = None,
        tenants: TenantSettingsCache | None = None,
        cors: Cors | None = None,
        access: GroupLocks,
        sso: SsoSignIn | None = None,
        spam: SpamJudge | None = None,
    ) -> None:
        self._cfg = cfg
        self._spam = spam
        self._tenants = tenants if tenants is not None else TenantSettingsCache(store, cache)
        self._access = access
        self._sso = (
            sso
            if sso is not None
            else SsoSignIn(cfg, store=store, clock=clock, tenants=self._tenants, metrics=metrics, access=self._access)
        )
        #: SSO header sign-ins already made: signature -> (tenant, session, issued).
        self._sso_sessions: ExpiringMap[str, tuple[str, AnonymousSession, int]] = ExpiringMap(
            clock, max_entries=_SESSION_AUTHORS_KEPT
        )
        self._cors = cors
        self._live = live
        self._viewer_tokens = viewer_tokens
        self._store = store
        self._clock = clock
        self._cookies = cookies
        self._address_hash = common.AddressHasher(cookies)
        self._cache = cache
        self._metrics = metrics
        self._sessions: ExpiringMap[tuple[str, str], AnonymousSession] = ExpiringMap(
            clock, max_entries=_SESSION_AUTHORS_KEPT
        )
        #: Each reader's own likes and blocks, kept between their writes.
        self._viewers = ViewerStates(
            store,
            clock,
            ttl_seconds=cfg.viewer_cache_seconds,
            max_viewers=cfg.viewer_cache_entries,
            count=label_counter(metrics.viewer_cache),
        )
        self._loading = SingleFlight()
        self._per_session = _writes_per_minute(cfg.writes_per_minute_per_session, clock)
        self._per_ip = _writes_per_minute(cfg.writes_per_minute_per_ip, clock)

    def routes(self) -> list[Route]:
        base = "/api/v1/{tenant}"
        cors = self._cors
        return [
            Route(b"GET", base + "/comments", self.list_comments, cors),
            Route(b"POST", base + "/comments", self.post_comment, cors),
            Route(b"POST", base + "/comments/{comment_id}/like", self.like, cors),
            Route(b"DELETE", base + "/comments/{comment_id}/like", self.unlike, cors),
            Route(b"POST", base + "/comments/{comment_id}/flag", self.flag, cors),
            Route(b"POST", base + "/blocks/{author_id}", self.block, cors),
            Route(b"DELETE", base + "/blocks/{author_id}", self.unblock, cors),
            Route(b"POST", base + "/sso", self.sign_in, cors),
        ]

    # Helpers

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _usable_token(self, token: str | None) -> str | None:
        """The cookie's token if this store can use it (a cookie from before a
        change of backend may hold another kind): signed, so never forged."""
        if token is None:
            return None
        try:
            self._store.token_covers(None, token)
        except BadToken:
            return None
        return token

    @inlineCallbacks
    def _tenant(self, call: Call, read_preference: ReadPreference = NEAREST, token: str | None = None) -> Any:
        tenant_id = common.record_id(call.params["tenant"], "tenant")
        try:
            tenant: Tenant = yield self._store.get_tenant(tenant_id, read_preference=read_preference, token=token)
        except NotFound:
            if read_preference is NEAREST:
                # Maybe created moments ago and not replicated here yet.
                tenant = yield self._store.get_tenant(tenant_id, read_preference=PRIMARY)
            else:
                raise
        # For the access log: a tenant known to exist.
        call.request.tenant_id = tenant.id  # type: ignore[attr-defined]
        return tenant

    def _claim(self, call: Call, tenant_id: str) -> Any:
        """The session claim in the request's cookie, or ``None`` if none.

        :raises SessionCookieError: for a forged or expired cookie.
        """
        raw = call.cookie(COOKIE_NAME)
        if not raw:
            # A page whose browser keeps no third-party cookie carries the
            # same signed value itself; checked exactly as the cookie is.
            header = call.header(SESSION_HEADER)
            if not header:
                return None
            self._metrics.session_headers.inc()
            raw = header.encode("latin-1")
        return self._cookies.check(raw, tenant_id, int(self._clock.seconds()))

    def _limit(self, key: str, limiter: KeyedBuckets) -> None:
        wait = limiter.wait(key)
        if wait > 0:
            self._metrics.rate_limited.inc()
            raise ApiError(
                429,
                "rate_limited",
                "too many writes; try again in {} s".format(int(wait) + 1),
                headers={b"retry-after": str(int(wait) + 1).encode()},
            )

    def _session_invalid(self, tenant_id: str) -> ApiError:
        return ApiError(
            401,
            "session_invalid",
            "this session no longer exists",
            cookies=self._cookies.clear_all(tenant_id),
        )

    @inlineCallbacks
    def _known_writer(self, call: Call, tenant: Tenant, *, verified: bool) -> Any:
        """The session of the cookie (or SSO header) making a write, or
        ``None`` for a caller without one.

        Refuses forged/expired cookies with 401 (and clears them) rather than
        silently starting a new identity, so a client notices. With
        ``verified`` the session is read from the primary (401 if it is
        gone); without, it comes from the replica (the primary when the
        replica lacks it) and the write itself must check it still exists
        (``Expect(session_id=...)``, see :meth:`_expect`).

        Reads for a write's checks never wait for the replica (no token):
        whatever they relied on the write checks again on the primary.
        """
        if call.header(SSO_HEADER) is not None:
            viewer = yield self._sso_viewer(call, tenant.id)
            self._limit(tenant.id + "/" + viewer.session.id, self._per_session)
            return viewer
        try:
            claim = self._claim(call, tenant.id)
        except SessionCookieError as e:
            self._metrics.bad_sessions.labels(e.code).inc()
            raise ApiError(401, e.code, str(e), cookies=self._cookies.clear_all(tenant.id)) from None
        if claim is None:
            return None
        self._limit(tenant.id + "/" + claim.session_id, self._per_session)
        token = self._usable_token(claim.token)
        session = None
        if not verified:
            # Without the token: never wait for the replica; a session it
            # lacks is read from the primary below.
            session = yield self._session(tenant.id, claim.session_id, None)
        if session is None:
            # Not on the replica yet (or asked to verify): the primary knows.
            try:
                session = yield self._store.get_anonymous_session(tenant.id, claim.session_id, read_preference=PRIMARY)
            except NotFound:
                raise self._session_invalid(tenant.id) from None
        return Viewer(session, claim.issued_s, token, carried=not call.cookie(COOKIE_NAME))

    @inlineCallbacks
    def _writer(self, call: Call, tenant: Tenant, *, verified: bool = True) -> Any:
        """The session making a write: the cookie's (see
        :meth:`_known_writer`), or a new one."""
        viewer = yield self._known_writer(call, tenant, verified=verified)
        if viewer is not None:
            return viewer
        written = yield self._store.create_anonymous_session(
            tenant.id, created_ms=self._now_ms(), read_preference=PRIMARY
        )
        return self._new_viewer(tenant, written.value, written.token)

    def _new_viewer(self, tenant: Tenant, session: AnonymousSession, token: str | None) -> Viewer:
        self._metrics.sessions_created.inc()
        # The write that creates a session counts against it like any other.
        self._per_session.wait(tenant.id + "/" + session.id)
        return Viewer(session, int(self._clock.seconds()), token, new=True, carried=True)

    def _session_to_create(self, tenant: Tenant, known: Viewer | None) -> AnonymousSession | None:
        """For a caller without a session: the one their write creates with
        itself (the same round trip)."""
        if known is not None:
            return None
        return self._store.new_anonymous_session(tenant.id, created_ms=self._now_ms())

    @staticmethod
    def _author(known: Viewer | None, created: AnonymousSession | None) -> str:
        """The author a write is made as: the caller's session's, or the new one's."""
        if known is not None:
            return known.session.author_id
        assert created is not None, "a caller without a session gets one"
        return created.author_id

    def _made_as(
        self, tenant: Tenant, known: Viewer | None, created: AnonymousSession | None, written: Written[Any]
    ) -> Viewer:
        """The viewer a write was made as, once it succeeded."""
        if known is not None:
            return known
        assert created is not None, "a caller without a session gets one"
        return self._new_viewer(tenant, created, written.token)

    @staticmethod
    def _expect(
        viewer: Viewer | None, thread: Thread | None, url_id: str | None, comment_id: str | None = None
    ) -> Expect:
        """What a write must find still true on the primary: the session it
        is made as (not read from the primary), the access rules the
        caller's checks used, the comment approved."""
        return Expect(
            session_id=viewer.session.id if viewer is not None and not viewer.new else None,
            approved_comment=comment_id,
            thread_url=url_id,
            locked_groups=thread.locked_groups if thread is not None else None,
            require_sign_in=thread.require_sign_in if thread is not None else None,
        )

    def _reply(self, viewer: Viewer, status: int, body: Any, written: Written[Any] | None = None) -> Reply:
        """The reply to a write; (re-)issues the cookie when the session is new
        or the write moved the viewer's token forward."""
        reply = Reply(status, body)
        # What this node kept of the viewer's likes and blocks is now old.
        self._viewers.forget(viewer.session.tenant_id, viewer.session.author_id)
        token = viewer.token
        if written is not None and written.token is not None and self._store.token_covers(written.token, token):
            token = written.token
        if viewer.new or token != viewer.token:
            session = viewer.session
            now = int(self._clock.seconds())
            reply.cookies.extend(
                self._cookies.issue_all(session.tenant_id, session.id, now, token=token, issued_s=viewer.issued_s)
            )
            if viewer.carried:
                value = self._cookies.value(session.tenant_id, session.id, viewer.issued_s, token=token)
                reply.headers[SESSION_HEADER] = value.encode("ascii")
        return reply

    def _viewer_view(self, tenant_id: str, author_id: str) -> dict[str, Any]:
        """The caller as a viewer: their author id and a live-thread token
        (``/live`` cannot see the session cookie, which is scoped to the API)."""
        view: dict[str, Any] = {"authorId": author_id}
        if self._viewer_tokens is not None:
            view["liveToken"] = self._viewer_tokens.issue(tenant_id, author_id, int(self._clock.seconds()))
        return view

    # Access: group locks, closed threads, sign-in

    @inlineCallbacks
    def _author_of(self, call: Call, tenant_id: str, *, write: bool) -> Any:
        """The caller's author id: from the SSO header (which signs in on its
        first use) or the session cookie (``None`` for a stranger or a bad
        cookie; never creates an anonymous session)."""
        if call.header(SSO_HEADER) is not None:
            viewer = yield self._sso_viewer(call, tenant_id)
            return viewer.session.author_id
        try:
            claim = self._claim(call, tenant_id)
        except SessionCookieError:
            return None
        if claim is None:
            return None
        if write:
            # Without waiting for the replica (the write itself checks that
            # the session still exists, and a session's author never
            # changes); the primary when the replica has not got it yet.
            session = yield self._session(tenant_id, claim.session_id, None)
            if session is None:
                try:
                    session = yield self._store.get_anonymous_session(
                        tenant_id, claim.session_id, read_preference=PRIMARY
                    )
                except NotFound:
                    return None
            return session.author_id
        author = yield self._session_author(tenant_id, claim.session_id, self._usable_token(claim.token))
        return author

    @inlineCallbacks
    def _guard(
        self, call: Call, tenant_id: str, settings: TenantSettings, thread: Thread | None, *, write: bool
    ) -> Any:
        """Refuse (403, JSON reason) what the thread's access rules forbid."""
        required = settings.require_sign_in
        if thread is not None and thread.require_sign_in is not None:
            required = thread.require_sign_in
        author = None
        if _locked(settings, thread) or (write and required):
            author = yield self._author_of(call, tenant_id, write=write)
        elif not write:
            return None
        try:
            if write:
                yield Deferred.fromCoroutine(self._access.check_write(settings, tenant_id, thread, author))
            else:
                yield Deferred.fromCoroutine(self._access.check_read(settings, tenant_id, thread, author))
        except AccessRefused as e:
            self._metrics.access_refused.labels(e.reason).inc()
            raise ApiError(403, e.reason, e.message) from None
        return None

    @inlineCallbacks
    def media_access(self, request: Any, tenant_id: str, thread_id: str) -> Any:
        """May the caller read media of a thread (keys ``threads/<id>/...``,
        docs/media.md)? The same rules, viewer and answers as a page of it.

        The thread is read by id (NEAREST, cached by :class:`GroupLocks`);
        the caller is who the public API sees: the session cookie (issued
        for ``/media/<tenant>/`` too), ``X-FastEdge-Session`` or
        ``X-FastEdge-SSO``.

        :raises ApiError: 404 ``thread_not_found`` (a malformed id, another
            tenant's, or none), 403 ``thread_locked`` for an outsider.
        """
        common.record_id(tenant_id, "thread")
        common.record_id(thread_id, "thread")
        thread = yield self._access.thread_by_id(tenant_id, thread_id)
        if thread is None:
            raise not_found("thread")
        known, settings = self._tenants.cached_settings(tenant_id)
        if not known:
            settings = yield self._tenants.settings(tenant_id)
        if settings is None:
            raise not_found("thread")
        if _locked(settings, thread):
            call = Call(request, {"tenant": tenant_id}, "/media/{tenant}/{key}")
            yield self._guard(call, tenant_id, settings, thread, write=False)
        return None

    @inlineCallbacks
    def moderator(self, call: Call) -> Any:
        """The tenant of ``/api/v1/{tenant}/moderation/...``, for an SSO
        moderator of that tenant only (their profile's ``isModerator`` or
        ``isAdmin``, signed in by cookie or ``X-FastEdge-SSO``); sets
        ``call.actor`` to their SSO user id, which the audit log records.

        :raises ApiError: 401 ``sign_in_required`` for anyone not signed in
            to this tenant (another tenant's cookie or signature included);
            403 ``not_moderator`` for a signed-in user who is not one.
        """
        tenant = yield self._tenant(call)
        # The session's author from the nearest copy (the primary when the
        # replica lacks it): a moderator's signed-in session is never
        # deleted, and the profile below is read there too.
        author = yield self._author_of(call, tenant.id, write=False)
        user = None
        if author is not None:
            for preference in (NEAREST, PRIMARY):
                try:
                    user = yield self._store.get_user_by_author(tenant.id, author, read_preference=preference)
                    break
                except NotFound:
                    continue
        if user is None:
            self._metrics.access_refused.labels("moderator_sign_in").inc()
            raise ApiError(401, "sign_in_required", "sign in (SSO) as one of this site's moderators")
        profile = user.profile
        if profile is None or not (profile.is_moderator or profile.is_admin):
            self._metrics.access_refused.labels("not_moderator").inc()
            raise ApiError(403, "not_moderator", "only this site's moderators may do this")
        call.actor = user.external_id
        return tenant

    # SSO

    def _sso_error(self, e: SsoError) -> ApiError:
        if e.field is not None:
            return ApiError(e.status, e.code, e.message, field=e.field)
        return ApiError(e.status, e.code, e.message)

    @inlineCallbacks
    def _verify(self, tenant_id: str, payload: Any, timestamp: Any, signature: Any) -> Any:
        try:
            user = yield self._sso.verify(tenant_id, payload, timestamp, signature)
        except SsoError as e:
            raise self._sso_error(e) from None
        return user

    def _sign_in(self, tenant_id: str, user: SsoUser) -> Any:
        """Upsert the user and open a session for them: ``(user, written)``."""
        return self._sso.sign_in(tenant_id, user)

    @inlineCallbacks
    def _sso_viewer(self, call: Call, tenant_id: str) -> Any:
        """The viewer an ``X-FastEdge-SSO: payload.timestamp.signature``
        header names; the first use signs in (and sets the cookie), later
        uses of the same signed value reuse that session."""
        raw = call.header(SSO_HEADER) or ""
        parts = raw.strip().split(".")
        if len(parts) != 3:
            raise self._sso_error(SsoError("sso_malformed", "X-FastEdge-SSO is payload.timestamp.signature"))
        payload, timestamp, signature = parts
        user = yield self._verify(tenant_id, payload, timestamp, signature)
        known = self._sso_sessions.get(signature.lower())
        if known is not None and known[0] == tenant_id:
            return Viewer(known[1], known[2])
        _, written = yield self._sign_in(tenant_id, user)
        issued = int(self._clock.seconds())
        self._sso_sessions.put(signature.lower(), (tenant_id, written.value, issued))
        return Viewer(written.value, issued, written.token, new=True)

    @inlineCallbacks
    def sign_in(self, call: Call) -> Any:
        """``POST /sso``: check a signed SSO payload, upsert the user, and
        answer with a session cookie bound to them; with ``claim: true``,
        the caller's anonymous session's comments, likes and blocks become
        the user's (one way: the anonymous session ends)."""
        body = call.json(required={"payload": str, "timestamp": (int, str), "signature": str}, optional={"claim": bool})
        # A sign-in writes (user, session): limited like every other write.
        self._limit(call.client_ip, self._per_ip)
        tenant = yield self._tenant(call)
        user = yield self._verify(tenant.id, body["payload"], body["timestamp"], body["signature"])
        try:
            claim = self._claim(call, tenant.id) if body.get("claim") else None
        except SessionCookieError as e:
            self._metrics.bad_sessions.labels(e.code).inc()
            raise ApiError(401, e.code, str(e), headers={b"set-cookie": self._cookies.clear(tenant.id)}) from None
        previous = None
        if claim is not None:
            try:
                session = yield self._store.get_anonymous_session(tenant.id, claim.session_id, read_preference=PRIMARY)
                author = yield self._store.get_author(tenant.id, session.author_id, read_preference=PRIMARY)
            except NotFound:
                raise ApiError(401, "session_invalid", "this session no longer exists") from None
            if author.kind is AuthorKind.ANONYMOUS:
                previous = session
        signed, written = yield self._sign_in(tenant.id, user)
        claimed = 0
        if previous is not None:
            try:
                moved = yield self._store.claim_author(
                    tenant.id, previous.author_id, signed.author_id, claimed_ms=self._now_ms(), read_preference=PRIMARY
                )
            except (AlreadyExists, InvalidReference):
                moved = None
            if moved is not None:
                claimed = moved.value
                written = Written(written.value, moved.token or written.token)
                self._sessions.pop((tenant.id, previous.id))
                self._viewers.forget(tenant.id, previous.author_id)
        viewer = Viewer(written.value, int(self._clock.seconds()), written.token, new=True)
        profile = user.profile
        body_out = {
            "user": {
                "id": user.external_id,
                "displayName": signed.display_name,
                "authorId": signed.author_id,
                "groupIds": list(profile.group_ids),
                "isModerator": profile.is_moderator,
                "isAdmin": profile.is_admin,
            },
            "claimed": claimed,
            "viewer": self._viewer_view(tenant.id, signed.author_id),
        }
        return self._reply(viewer, 200, body_out, written)

    def _invalidate(self, tenant_id: str, thread_id: str) -> None:
        self._cache.invalidate((tenant_id, "thread", thread_id))

    # Reads

    @inlineCallbacks
    def list_comments(self, call: Call) -> Any:
        """A page of a thread, NEAREST, with the viewer's own state."""
        cfg = self._cfg
        url_id = common.url_id(call, cfg)
        sort = common.sort(call)
        limit = common.page_limit(call, cfg)
        cursor = call.query.get("cursor") or None
        read: PageRead = yield self.read_page(call, url_id=url_id, sort=sort, limit=limit, cursor=cursor)
        body = read.view.anonymous
        if read.author_id is not None:
            body = read.view.render(read.author_id, read.state, viewer=read.viewer)
        return Reply(200, body, cookies=read.cookies)

    @inlineCallbacks
    def read_page(self, call: Call, *, url_id: str, sort: Sort, limit: int, cursor: str | None) -> Any:
        """The read path every public reader shares (this JSON API and the
        embed page): the cached page (single flight on a miss) and, for a
        reader with a session, their own state on it.

        :returns: a :class:`PageRead`.
        """
        tenant_id = common.record_id(call.params["tenant"], "tenant")
        reply_cookies: list[bytes] = []
        try:
            claim = self._claim(call, tenant_id)
        except SessionCookieError as e:
            # Reading needs no identity: read as a stranger, drop the cookie.
            self._metrics.bad_sessions.labels(e.code).inc()
            claim = None
            reply_cookies.extend(self._cookies.clear_all(tenant_id))
        # The viewer's latest write: every read below sees at least that.
        token = self._usable_token(claim.token) if claim is not None else None
        key = (tenant_id, url_id, sort, cursor, limit)
        found = self._cache.lookup(key)
        cached = None
        if found is not None:
            if self._store.token_covers(found[1], token):
                cached = found[0]
                self._metrics.page_cache.labels("hit").inc()
            else:
                # Read before the viewer's own latest write: not good enough for them.
                self._metrics.page_cache.labels("too_old").inc()
        else:
            self._metrics.page_cache.labels("miss").inc()
        if cached is None:
            if self._loading.in_flight((key, token)):
                self._metrics.page_cache.labels("coalesced").inc()
            cached = yield self._loading.run((key, token), lambda: self._load_page(call, key, token))
        read = PageRead(tenant_id=tenant_id, view=cached, cookies=reply_cookies)
        # The thread's access rules (group locks), before anything personal.
        known, settings = self._tenants.cached_settings(tenant_id)
        if not known:
            settings = yield self._tenants.settings(tenant_id)
        thread = cached.page.thread if cached.page is not None else None
        if settings is not None and _locked(settings, thread):
            yield self._guard(call, tenant_id, settings, thread, write=False)
        author_id = None
        if call.header(SSO_HEADER) is not None and cached.page is not None:
            viewer = yield self._sso_viewer(call, tenant_id)
            author_id, token = viewer.session.author_id, viewer.token
        elif claim is not None and cached.page is not None:
            # None: not replicated here yet (or gone): the shared page is
            # right for a stranger.
            author_id = yield self._session_author(tenant_id, claim.session_id, token)
        if author_id is not None:
            read.author_id = author_id
            read.state = yield self._viewers.state(
                tenant_id, author_id, cached.page.thread.id, cached.comment_ids, token
            )
            read.viewer = self._viewer_view(tenant_id, author_id)
        return read

    @inlineCallbacks
    def _load_page(self, call: Call, key: tuple[Any, ...], token: str | None) -> Any:
        """Read a page (NEAREST), build its view and cache it.

        Runs once per key however many readers miss at the same moment.
        """
        tenant_id, url_id, sort, cursor, limit = key
        yield self._tenant(call, token=token)
        try:
            thread = yield self._store.get_thread(tenant_id, url_id, read_preference=NEAREST, token=token)
        except NotFound:
            # A page nobody has commented on yet: an empty thread, not an error.
            view = PageView(None)
            self._cache.put(key, view, ((tenant_id, "url", url_id),), token=token)
            return view
        # The live channel's position before the read: a client following the
        # channel from here misses nothing (an event racing the read may show
        # twice; clients apply events by comment id, so that is harmless).
        position = self._live.position(tenant_id, thread.id) if self._live is not None else None
        page = yield self._store.list_thread(
            tenant_id, thread.id, sort=sort, limit=limit, cursor=cursor, read_preference=NEAREST, token=token
        )
        view = PageView(page, position=position)
        self._cache.put(key, view, ((tenant_id, "url", url_id), (tenant_id, "thread", thread.id)), token=token)
        return view

    @inlineCallbacks
    def _session(self, tenant_id: str, session_id: str, token: str | None) -> Any:
        """A session as the nearest copy has it (cached: a session never
        changes), or ``None`` if it has none."""
        key = (tenant_id, session_id)
        session = self._sessions.get(key)
        if session is None:
            try:
                session = yield self._store.get_anonymous_session(
                    tenant_id, session_id, read_preference=NEAREST, token=token
                )
            except NotFound:
                return None
            self._sessions.put(key, session)
        return session

    @inlineCallbacks
    def _session_author(self, tenant_id: str, session_id: str, token: str | None) -> Any:
        """The public author id of a session (cached: it never changes)."""
        session = yield self._session(tenant_id, session_id, token)
        return session.author_id if session is not None else None

    # Writes

    def post_comment(self, call: Call) -> Any:
        """Post a comment or a reply as the caller's anonymous session."""
        url_id = common.url_id(call, self._cfg)
        body = call.json(required={"text": str, "displayName": str}, optional={"parentId": str, "pageTitle": str})
        return self.post(
            call,
            url_id=url_id,
            text=body["text"],
            name=body["displayName"],
            parent_id=body.get("parentId"),
            title=body.get("pageTitle"),
        )

    @inlineCallbacks
    def post(self, call: Call, *, url_id: str, text: str, name: str, parent_id: str | None, title: str | None) -> Any:
        """The write path every public poster shares (this JSON API and the
        embed page's plain form): the same checks, limits and errors.

        :returns: a :class:`Reply` (201, the comment and the viewer).
        """
        cfg = self._cfg
        text = common.comment_text(cfg, text)
        name = common.display_name(cfg, name)
        if parent_id is not None:
            parent_id = common.record_id(parent_id, "parent comment")
        title = title or ""
        if len(title) > cfg.title_max_chars:
            raise bad_request("pageTitle is longer than {} characters".format(cfg.title_max_chars), code="bad_title")
        self._limit(call.client_ip, self._per_ip)
        tenant = yield self._tenant(call)
        settings = from_stored(tenant.settings)
        known = yield self._known_writer(call, tenant, verified=False)
        # Ids of what this post may create, known before the write: the
        # spam checks judge the comment as it will be written.
        created = self._session_to_create(tenant, known)
        new_thread_id = self._store.new_id()

        # The checks read the nearest copy; the post (one round trip to the
        # primary) checks again what they relied on and applies nothing if
        # it changed: the parent, the session, a closed thread, the thread's
        # access rules (see _checked).
        @inlineCallbacks
        def attempt(fresh: bool) -> Any:
            try:
                existing = yield self._store.get_thread(
                    tenant.id, url_id, read_preference=PRIMARY if fresh else NEAREST
                )
            except NotFound:
                existing = None
            yield self._guard(call, tenant.id, settings, existing, write=True)
            if existing is not None and existing.closed:
                raise ApiError(403, "thread_closed", "this thread is closed to new comments")
            yield self._refuse_banned(call, tenant, known)
            poster: Poster = SessionPoster(known.session.id) if known is not None else NewSession(created)
            status = CommentStatus.PENDING if settings.premoderated else CommentStatus.APPROVED
            now = self._now_ms()
            if self._spam is not None:
                # Before the write: a comment judged spam or pending is written
                # with that status, so it never reaches a page, a page cache or
                # a live thread (docs/spam.md).
                decision = yield self._spam.judge(
                    Candidate(
                        tenant_id=tenant.id,
                        thread_id=existing.id if existing is not None else new_thread_id,
                        url_id=url_id,
                        author_id=self._author(known, created),
                        display_name=name,
                        text=text,
                        created_ms=now,
                        parent_id=parent_id,
                        new_author=known is None,
                    ),
                    RequestFacts(
                        tenant_id=tenant.id,
                        address_hash=self._address_hash(tenant.id, call.client_ip),
                        user_agent=call.header(b"user-agent") or "",
                        settings=settings,
                    ),
                    token=known.token if known is not None else None,
                )
                status = decision.verdict.status(status)
            try:
                written = yield self._store.post_comment(
                    NewPost(
                        tenant_id=tenant.id,
                        url_id=url_id,
                        poster=poster,
                        parent_id=parent_id,
                        display_name=name,
                        body_source=text,
                        body_html=render(text),
                        status=status,
                        created_ms=now,
                        title=title,
                        new_thread_id=new_thread_id,
                        open_only=True,
                        expect=self._expect(known, existing, url_id),
                    ),
                    read_preference=PRIMARY,
                )
            except ThreadClosed:
                raise ApiError(403, "thread_closed", "this thread is closed to new comments") from None
            return written

        written = yield self._checked(tenant, known, attempt)
        viewer = known
        posted = written.value
        if posted.session is not None:
            viewer = self._new_viewer(tenant, posted.session, written.token)
        assert viewer is not None, "a post is made as a known session or a new one"
        thread = posted.thread
        new_thread = posted.thread_created
        if new_thread and self._live is not None:
            self._live.thread_changed(tenant.id, url_id)
        comment = posted.comment
        self._metrics.comments_posted.labels(comment.status.value).inc()
        if new_thread or comment.status is CommentStatus.APPROVED:
            # A comment nobody else sees changes no cached page: a flood
            # of spam does not empty the page cache.
            self._cache.invalidate((tenant.id, "url", url_id))
            self._invalidate(tenant.id, thread.id)
        view = public_comment(comment)
        view.update(common.viewer_fields(comment, viewer.session.author_id, None))
        # The poster of spam is told it awaits a moderator, as for any
        # held comment, and not what a check thought of it.
        shown = CommentStatus.PENDING if comment.status is CommentStatus.SPAM else comment.status
        view.update(status=shown.value, replies=[])
        if self._live is not None:
            self._live.created(comment)
        return self._reply(
            viewer, 201, {"comment": view, "viewer": self._viewer_view(tenant.id, viewer.session.author_id)}, written
        )

    @inlineCallbacks
    def _refuse_banned(self, call: Call, tenant: Tenant, viewer: Viewer | None) -> Any:
        """403 for a poster whose author or address a moderator banned.

        Read NEAREST without the viewer's token: the check needs no write
        of the viewer's, only the ban, which reaches every node within the
        replica lag; waiting for a poster's own latest write would make
        every first post wait for the replica.
        """
        ban = yield self._store.find_ban(
            tenant.id,
            author_id=viewer.session.author_id if viewer is not None else None,
            address_hash=self._address_hash(tenant.id, call.client_ip),
            now_ms=self._now_ms(),
            read_preference=NEAREST,
        )
        if ban is not None:
            self._metrics.refused.labels("banned").inc()
            raise ApiError(
                403, "banned", "a moderator of this site has banned you from posting", expiresAt=ban.expires_ms
            )

    @inlineCallbacks
    def _comment_for_write(self, call: Call, tenant: Tenant, *, fresh: bool = True) -> Any:
        """The comment a like or flag names, and its thread, once the
        thread's access rules allow the caller to act on it (before any
        write): ``(comment, thread)``.

        Without ``fresh`` both come from the nearest copy (the primary when
        the replica has not got the comment yet), and the write must check
        what this relied on (:meth:`_expect`).
        """
        comment_id = common.record_id(call.params["comment_id"], "comment")
        preferences = (PRIMARY,) if fresh else (NEAREST, PRIMARY)
        for preference in preferences:
            # Missing or not public on the replica may be news it lacks yet.
            try:
                comment = yield self._store.get_comment(tenant.id, comment_id, read_preference=preference)
            except NotFound:
                if preference is PRIMARY:
                    raise
                continue
            if comment.status is CommentStatus.APPROVED:
                break
            if preference is PRIMARY:
                # Not public: behave exactly as for a comment that does not exist.
                raise not_found("comment")
        # From where the comment was found: a thread is never younger.
        thread = yield self._store.get_thread_by_id(tenant.id, comment.thread_id, read_preference=preference)
        yield self._guard(call, tenant.id, from_stored(tenant.settings), thread, write=True)
        return comment, thread

    @inlineCallbacks
    def _checked(self, tenant: Tenant, known: Viewer | None, attempt: Callable[[bool], Deferred[Any]]) -> Any:
        """Run a write whose checks read the nearest copy: ``attempt(False)``
        reads there and writes, and its write checks on the primary what the
        reads relied on; when that changed (``Stale``: nothing was applied)
        ``attempt(True)`` reads the primary and writes again. A session the
        primary no longer has is 401 ``session_invalid``."""
        try:
            try:
                result = yield attempt(False)
            except Stale:
                self._metrics.stale_checks.inc()
                result = yield attempt(True)
        except NotFound as e:
            if e.what != "session":
                raise
            if known is not None:
                self._sessions.pop((tenant.id, known.session.id))
            raise self._session_invalid(tenant.id) from None
        return result

    @inlineCallbacks
    def like(self, call: Call) -> Any:
        self._limit(call.client_ip, self._per_ip)
        tenant = yield self._tenant(call)
        known = yield self._known_writer(call, tenant, verified=False)
        created = self._session_to_create(tenant, known)

        @inlineCallbacks
        def attempt(fresh: bool) -> Any:
            # Check the comment before a first write creates a session for nothing.
            comment, thread = yield self._comment_for_write(call, tenant, fresh=fresh)
            try:
                # One address counts a bounded number of times, whatever sessions
                # it makes up by dropping its cookie (docs/moderation.md).
                written = yield self._store.add_like(
                    tenant.id,
                    comment.id,
                    self._author(known, created),
                    created_ms=self._now_ms(),
                    read_preference=PRIMARY,
                    address_hash=self._address_hash(tenant.id, call.client_ip),
                    max_per_address=self._cfg.likes_per_address,
                    expect=self._expect(known, thread, thread.url_id, comment.id),
                    new_session=created,
                )
            except LimitReached:
                self._metrics.refused.labels("like_limit").inc()
                raise ApiError(
                    409, "like_limit", "this comment already has all the likes your network address may give it"
                ) from None
            return comment, written

        comment, written = yield self._checked(tenant, known, attempt)
        viewer = self._made_as(tenant, known, created, written)
        self._invalidate(tenant.id, comment.thread_id)
        if self._live is not None:
            self._live.likes(comment, written.value)
        return self._reply(viewer, 200, {"likes": written.value, "likedByMe": True}, written)

    @inlineCallbacks
    def unlike(self, call: Call) -> Any:
        self._limit(call.client_ip, self._per_ip)
        tenant = yield self._tenant(call)
        known = yield self._known_writer(call, tenant, verified=False)

        @inlineCallbacks
        def attempt(fresh: bool) -> Any:
            # Check the comment before a first write creates a session for nothing.
            comment, thread = yield self._comment_for_write(call, tenant, fresh=fresh)
            viewer = known if known is not None else (yield self._writer(call, tenant))
            written = yield self._store.remove_like(
                tenant.id,
                comment.id,
                viewer.session.author_id,
                read_preference=PRIMARY,
                expect=self._expect(viewer, thread, thread.url_id, comment.id),
            )
            return comment, viewer, written

        comment, viewer, written = yield self._checked(tenant, known, attempt)
        self._invalidate(tenant.id, comment.thread_id)
        if self._live is not None:
            self._live.likes(comment, written.value)
        return self._reply(viewer, 200, {"likes": written.value, "likedByMe": False}, written)

    @inlineCallbacks
    def flag(self, call: Call) -> Any:
        self._limit(call.client_ip, self._per_ip)
        tenant = yield self._tenant(call)
        known = yield self._known_writer(call, tenant, verified=False)
        threshold = auto_hide_threshold(self._cfg, tenant)
        created = self._session_to_create(tenant, known)

        @inlineCallbacks
        def attempt(fresh: bool) -> Any:
            # Check the comment before a first write creates a session for nothing.
            comment, thread = yield self._comment_for_write(call, tenant, fresh=fresh)
            written = yield self._store.add_flag(
                tenant.id,
                comment.id,
                self._author(known, created),
                created_ms=self._now_ms(),
                read_preference=PRIMARY,
                hide_at=threshold,
                expect=self._expect(known, thread, thread.url_id, comment.id),
                new_session=created,
            )
            return comment, written

        comment, written = yield self._checked(tenant, known, attempt)
        viewer = self._made_as(tenant, known, created, written)
        self._metrics.flags.inc()
        if threshold is not None and written.value >= threshold:
            # The store hid it in the same write (it was approved when read
            # above): off public pages, and live readers drop it.
            self._metrics.auto_hidden.inc()
            self._invalidate(tenant.id, comment.thread_id)
            if self._live is not None:
                self._live.removed(comment, reason="flagged")
        return self._reply(viewer, 200, {"flagged": True}, written)

    @inlineCallbacks
    def block(self, call: Call) -> Any:
        self._limit(call.client_ip, self._per_ip)
        tenant = yield self._tenant(call)
        author_id = common.record_id(call.params["author_id"], "author")
        known = yield self._known_writer(call, tenant, verified=False)
        created = self._session_to_create(tenant, known)

        @inlineCallbacks
        def attempt(fresh: bool) -> Any:
            # The author must exist before a first write creates a session
            # for nothing; the block checks it (and the session) again.
            for preference in (PRIMARY,) if fresh else (NEAREST, PRIMARY):
                try:
                    yield self._store.get_author(tenant.id, author_id, read_preference=preference)
                    break
                except NotFound:
                    if preference is PRIMARY:
                        raise
            written = yield self._store.add_block(
                tenant.id,
                self._author(known, created),
                author_id,
                created_ms=self._now_ms(),
                read_preference=PRIMARY,
                expect=self._expect(known, None, None),
                new_session=created,
            )
            return written

        written = yield self._checked(tenant, known, attempt)
        viewer = self._made_as(tenant, known, created, written)
        if self._live is not None:
            self._live.block_changed(tenant.id, viewer.session.author_id, author_id, True)
        return self._reply(viewer, 200, {"authorId": author_id, "blocked": True}, written)

    @inlineCallbacks
    def unblock(self, call: Call) -> Any:
        self._limit(call.client_ip, self._per_ip)
        tenant = yield self._tenant(call)
        known = yield self._known_writer(call, tenant, verified=False)
        author_id = common.record_id(call.params["author_id"], "author")

        @inlineCallbacks
        def attempt(fresh: bool) -> Any:
            viewer = known if known is not None else (yield self._writer(call, tenant))
            written = yield self._store.remove_block(
                tenant.id,
                viewer.session.author_id,
                author_id,
                read_preference=PRIMARY,
                expect=self._expect(viewer, None, None),
            )
            return viewer, written

        viewer, written = yield self._checked(tenant, known, attempt)
        if self._live is not None:
            self._live.block_changed(tenant.id, viewer.session.author_id, author_id, False)
        return self._reply(viewer, 200, {"authorId": author_id, "blocked": False}, written)
