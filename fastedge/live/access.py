# -*- test-case-name: tests.unit.live.test_access -*-
"""Who may subscribe to what: resolving a thread, the viewer, the policy.

A subscription names a tenant and a thread's ``urlId``, exactly as the public
API does, and succeeds only for a thread that API would show: an unknown
tenant or thread is refused, so clients cannot create channels at will.
Lookups are coalesced and cached briefly (``live.resolve_cache_seconds``):
a thundering herd of ten thousand readers of one thread costs one database
read, not ten thousand.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..expiring import ExpiringMap
from ..residency.gate import ResidencyGate
from ..singleflight import SingleFlight
from ..store.errors import AccessRefused, NotFound, StoreError
from ..store.interfaces import IStore
from ..store.model import ReadPreference, Tenant, Thread
from ..store.settings import TenantSettings, from_stored, groups_for
from .interfaces import IAccessPolicy
from .messages import RequestError, is_record_id

NEAREST = ReadPreference.NEAREST
PRIMARY = ReadPreference.PRIMARY


class Refused(RequestError):
    """The policy does not let this viewer subscribe to this thread.

    Live connections answer every refusal as ``forbidden`` (the documented
    code); the HTTP API answers 403 with the finer ``reason``.

    :ivar reason: ``thread_locked``, ``sign_in_required``, ``thread_closed``
        or ``forbidden``.
    """

    def __init__(self, message: str = "you may not read this thread", reason: str = "forbidden") -> None:
        super().__init__("forbidden", message)
        self.reason = reason


@implementer(IAccessPolicy)
class PublicThreads:
    """Every thread of a tenant is public (as in the public read API)."""

    def check(self, tenant: Tenant, thread: Thread, viewer_author_id: str | None) -> None:
        """Allow: the public API shows every thread of a tenant."""
        return None


@dataclass(frozen=True)
class ViewerAccess:
    """What the access rules need to know about a viewer."""

    signed_in: bool = False
    groups: frozenset[str] = frozenset()
    #: SSO moderators and admins read and post on every thread.
    privileged: bool = False


_STRANGER = ViewerAccess()


@implementer(IAccessPolicy)
class GroupLocks:
    """Threads locked to SSO user groups, closed threads, sign-in to post.

    One object guards every path: live subscriptions (WebSocket and SSE,
    through :class:`IAccessPolicy`) and the public API's reads, posts,
    likes and flags (through :meth:`check_read` and :meth:`check_write`,
    which raise :class:`fastedge.store.errors.AccessRefused`: the API refers
    to this class only for types, so imports keep pointing from live down
    to api).
    A thread's lock is its own ``locked_groups`` or, when it has none, the
    tenant's ``defaultGroups``; a viewer in none of the groups (or not
    signed in) is refused, unless an SSO moderator or admin. Writes also
    need an open thread, and a signed-in viewer where the thread (or the
    tenant) requires sign-in.

    Viewers' groups come from their SSO profile, read NEAREST and kept
    ``ttl_seconds`` (a user's new groups apply within that time, or at
    once on the node where they signed in again).
    """

    def __init__(self, store: IStore, *, clock: IReactorTime, ttl_seconds: float, max_entries: int = 100_000) -> None:
        self._store = store
        self._viewers = _SingleFlight(clock, ttl_seconds, max_entries, lambda result: None)
        # Threads by id, for media under ``threads/<id>/`` (docs/media.md).
        self._threads = _SingleFlight(clock, ttl_seconds, max_entries, lambda result: None)

    def thread_by_id(self, tenant_id: str, thread_id: str) -> Deferred[Thread | None]:
        """A tenant's thread by id (``None``: no such thread), read NEAREST
        (then PRIMARY: it may be moments old), and kept ``ttl_seconds`` like
        the viewers, so a thread's media costs one read per node and TTL.

        Another tenant's thread id is ``None``: the store reads ids within
        the tenant.
        """

        async def fetch() -> Thread | None:
            for preference in (NEAREST, PRIMARY):
                try:
                    thread: Thread = await self._store.get_thread_by_id(
                        tenant_id, thread_id, read_preference=preference
                    )
                    return thread
                except NotFound:
                    continue
            return None

        return self._threads.get((tenant_id, thread_id), lambda: Deferred.fromCoroutine(fetch()))

    def forget_threads(self, tenant_id: str) -> None:
        """Drop a tenant's cached threads (a lock changed through this node)."""
        self._threads.forget_where(lambda key: isinstance(key, tuple) and key[0] == tenant_id)

    def forget_viewer(self, tenant_id: str, author_id: str) -> None:
        """Drop a cached viewer (they signed in again with a new profile)."""
        self._viewers.forget((tenant_id, author_id))

    def viewer(self, tenant_id: str, author_id: str | None) -> Deferred[ViewerAccess]:
        """The viewer's sign-in state and groups (a stranger for ``None``)."""
        if author_id is None:
            return succeed(_STRANGER)

        async def fetch() -> ViewerAccess:
            try:
                user = await self._store.get_user_by_author(tenant_id, author_id, read_preference=NEAREST)
            except NotFound:
                try:
                    user = await self._store.get_user_by_author(tenant_id, author_id, read_preference=PRIMARY)
                except NotFound:
                    return _STRANGER
            profile = user.profile
            if profile is None:
                return ViewerAccess(signed_in=True)
            return ViewerAccess(
                signed_in=True,
                groups=frozenset(profile.group_ids),
                privileged=profile.is_moderator or profile.is_admin,
            )

        return self._viewers.get((tenant_id, author_id), lambda: Deferred.fromCoroutine(fetch()))

    @staticmethod
    def locked_to(settings: TenantSettings, thread: Thread | None) -> tuple[str, ...]:
        """The groups a thread (``None``: one not created yet) is locked to."""
        return groups_for(thread.locked_groups if thread is not None else None, settings)

    async def check_read(
        self, settings: TenantSettings, tenant_id: str, thread: Thread | None, author: str | None
    ) -> None:
        """Refuse (:class:`AccessRefused`, ``thread_locked``) a viewer outside the lock."""
        groups = self.locked_to(settings, thread)
        if not groups:
            return
        viewer = await self.viewer(tenant_id, author)
        if viewer.privileged or viewer.groups.intersection(groups):
            return
        raise AccessRefused("thread_locked", "this thread is for members of certain groups only")

    async def check_write(
        self, settings: TenantSettings, tenant_id: str, thread: Thread | None, author: str | None
    ) -> None:
        """Refuse a post, like or flag: locked out, thread closed, or not
        signed in where sign-in is required."""
        await self.check_read(settings, tenant_id, thread, author)
        if thread is not None and thread.closed:
            raise AccessRefused("thread_closed", "this thread is closed")
        required = settings.require_sign_in
        if thread is not None and thread.require_sign_in is not None:
            required = thread.require_sign_in
        if required and not (await self.viewer(tenant_id, author)).signed_in:
            raise AccessRefused("sign_in_required", "sign in to take part in this thread")

    def check(self, tenant: Tenant, thread: Thread, viewer_author_id: str | None) -> Deferred[None] | None:
        """:class:`IAccessPolicy`: may this viewer follow the thread live?
        Refusals are :class:`Refused` (``forbidden``, the documented code).
        A public thread (most) is allowed at once (``None``)."""
        settings = from_stored(tenant.settings)
        if not self.locked_to(settings, thread):
            return None

        async def go() -> None:
            try:
                await self.check_read(settings, tenant.id, thread, viewer_author_id)
            except AccessRefused as e:
                raise Refused(e.message, reason=e.reason) from None

        return Deferred.fromCoroutine(go())


@dataclass(frozen=True)
class Resolved:
    """A subscribable thread."""

    tenant: Tenant
    thread: Thread


class _SingleFlight:
    """Coalesce concurrent lookups of one key (:class:`SingleFlight`) and
    keep answers ``ttl`` seconds (:class:`ExpiringMap`).

    Failures that are answers (``RequestError``: not found) are cached like
    successes; ``unavailable`` (the store is down) is not cached.
    """

    def __init__(
        self,
        clock: IReactorTime,
        ttl: float,
        max_entries: int,
        count: Callable[[str], None],
    ) -> None:
        self._ttl = ttl
        self._count = count
        self._cache: ExpiringMap[Hashable, tuple[bool, Any]] = ExpiringMap(
            clock, max_entries=max_entries if ttl > 0 else 0
        )
        self._flights = SingleFlight()

    def known(self, key: Hashable) -> Any:
        """The cached successful answer for ``key`` (counted as a hit), or
        ``None`` when there is none (nothing is counted or fetched then)."""
        entry = self._cache.get(key)
        if entry is None or not entry[0]:
            return None
        self._count("hit")
        return entry[1]

    def get(self, key: Hashable, fetch: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        """The answer for ``key``: cached, joined to a lookup in flight, or fetched."""
        entry = self._cache.get(key)
        if entry is not None:
            self._count("hit")
            ok, value = entry
            if ok:
                return succeed(value)
            return fail(value)
        self._count("coalesced" if self._flights.in_flight(key) else "miss")
        return self._flights.run(key, lambda: maybeDeferred(fetch).addBoth(self._keep, key))

    def _keep(self, result: Any, key: Hashable) -> Any:
        if isinstance(result, Failure):
            if result.check(RequestError) and result.value.code != "unavailable":
                self._cache.put(key, (False, result), self._ttl)
        else:
            self._cache.put(key, (True, result), self._ttl)
        return result

    def forget(self, key: Hashable) -> None:
        """Drop the cached answer for ``key``."""
        self._cache.pop(key)

    def forget_where(self, match: Callable[[Hashable], bool]) -> None:
        """Drop every cached answer whose key matches."""
        self._cache.drop_where(lambda key, _: match(key))


class ChannelResolver:
    """Finds the thread a subscription names, and the viewer's blocks.

    :param count: called with ``hit``, ``miss`` or ``coalesced`` per lookup
        (for metrics).
    """

    _log = Logger()

    def __init__(
        self,
        store: IStore,
        *,
        clock: IReactorTime,
        ttl_seconds: float,
        max_entries: int,
        count: Callable[[str], None] = lambda result: None,
        residency: ResidencyGate | None = None,
    ) -> None:
        """:param residency: refuses another deployment's tenants
        (:class:`fastedge.residency.gate.ResidencyGate`; ``None``: no check)."""
        self._store = store
        self._residency = residency
        self._threads = _SingleFlight(clock, ttl_seconds, max_entries, count)
        # Blocks change under a live subscription (set_blocked keeps those
        # right); only concurrent lookups are shared, never cached.
        self._blocks = _SingleFlight(clock, 0.0, 0, lambda result: None)

    def resolve(self, tenant_id: str, url_id: str) -> Deferred[Resolved]:
        """The tenant and thread, or a ``RequestError``
        (``tenant_not_found``, ``thread_not_found``, ``unavailable``)."""
        if not is_record_id(tenant_id):
            return _fail(RequestError("tenant_not_found", "tenant not found"))
        return self._threads.get((tenant_id, url_id), lambda: self._lookup(tenant_id, url_id))

    def known(self, tenant_id: str, url_id: str) -> Resolved | None:
        """The tenant and thread when resolved recently (what :meth:`resolve`
        would answer at once), else ``None``."""
        if not is_record_id(tenant_id):
            return None
        resolved: Resolved | None = self._threads.known((tenant_id, url_id))
        return resolved

    def forget(self, tenant_id: str, url_id: str) -> None:
        """Drop a cached answer (a thread was created or deleted here)."""
        self._threads.forget((tenant_id, url_id))

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop every cached answer of a tenant (its settings changed here)."""
        self._threads.forget_where(lambda key: isinstance(key, tuple) and key[0] == tenant_id)

    def blocked_authors(self, tenant_id: str, author_id: str) -> Deferred[frozenset[str]]:
        """The authors ``author_id`` blocks, read NEAREST."""

        def fetch() -> Deferred[frozenset[str]]:
            d = self._store.viewer_state(tenant_id, author_id, [], read_preference=NEAREST)
            blocks: Deferred[frozenset[str]] = d.addCallback(lambda state: frozenset(state.blocked_authors))
            blocks.addErrback(self._unavailable)
            return blocks

        return self._blocks.get((tenant_id, author_id), fetch)

    async def _get(self, method: Callable[..., Deferred[Any]], *args: Any) -> Any:
        # Nearest first; something created moments ago may only be on the primary.
        try:
            return await method(*args, read_preference=NEAREST)
        except NotFound:
            return await method(*args, read_preference=PRIMARY)

    def _lookup(self, tenant_id: str, url_id: str) -> Deferred[Resolved]:
        async def go() -> Resolved:
            try:
                tenant = await self._get(self._store.get_tenant, tenant_id)
            except NotFound:
                if self._residency is not None:
                    self._refuse_misdirected(tenant_id, await self._residency.directory.deployment_of(tenant_id))
                raise RequestError("tenant_not_found", "tenant not found") from None
            if self._residency is not None:
                # Nothing more of another deployment's tenant is read.
                self._refuse_misdirected(tenant_id, tenant.deployment)
            try:
                thread = await self._get(self._store.get_thread, tenant_id, url_id)
            except NotFound:
                raise RequestError("thread_not_found", "thread not found (no comments yet?)") from None
            return Resolved(tenant, thread)

        d = Deferred.fromCoroutine(go())
        d.addErrback(self._unavailable)
        return d

    def _refuse_misdirected(self, tenant_id: str, deployment: str | None) -> None:
        assert self._residency is not None
        refusal = self._residency.misdirected(tenant_id, deployment, "live")
        if refusal is not None:
            raise RequestError("wrong_deployment", refusal.message)

    def _unavailable(self, failure: Failure) -> Failure:
        if failure.check(RequestError):
            return failure
        if not failure.check(StoreError):
            self._log.failure("resolving a live subscription failed", failure)
        else:
            self._log.warn(
                "live subscription: store unavailable: {reason}",
                reason=failure.getErrorMessage(),
            )
        return Failure(RequestError("unavailable", "the database is not available; try again"))


def _fail(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d
