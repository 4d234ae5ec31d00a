# -*- test-case-name: tests.unit.live.test_protocol -*-
"""What both live front ends share: admission, subscribing, keep-alive.

:class:`Live` is the node's live subsystem as the front ends see it (the
hub, the resolver, the policy, the metrics, the open connections).
:class:`LiveConnection` is one client's set of subscriptions; the
WebSocket protocol and the SSE stream each own one and differ only in how
bytes reach the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..config import LiveConfig
from ..identity.sso import SsoError
from ..metrics.registry import label_counter
from .access import ChannelResolver, PublicThreads, Resolved
from .hub import ChannelKey, Hub, Joined, Prepared, SinceInFuture, Subscription
from .interfaces import IAccessPolicy
from .messages import RequestError, Subscribe, channel_name, parse_channel
from .metrics import LiveMetrics
from .tokens import ViewerTokenError, ViewerTokens

#: An anonymous viewer blocks nobody.
_NOBODY_BLOCKED: frozenset[str] = frozenset()


class Connection(Protocol):
    """A live connection as :class:`Live` sees it (WebSocket or SSE)."""

    transport_name: str

    def push(self, prepared: Prepared) -> int:
        """Send one shared, pre-serialized event."""

    def send(self, payload: bytes) -> None:
        """Send one message of this connection only (an answer, an error)."""

    def keepalive(self) -> None:
        """Called every ``live.ping_seconds``: ping, or drop a dead peer."""

    def shutdown(self) -> None:
        """The node is stopping: close with 1001 (going away)."""

    def revoke(self, sub: Subscription, error: RequestError) -> bool:
        """End one subscription of this connection with ``error`` (the
        documented refusal); ``False`` if it had ended already."""


class Live:
    """The node's live subsystem, as its front ends use it.

    :param tokens: checks viewer tokens; ``None`` refuses every token (a node
        without the public API).
    """

    _log = Logger()

    def __init__(
        self,
        cfg: LiveConfig,
        *,
        hub: Hub,
        resolver: ChannelResolver,
        clock: IReactorTime,
        metrics: LiveMetrics | None,
        node_id: str,
        tokens: ViewerTokens | None = None,
        policy: IAccessPolicy | None = None,
        sso: Any = None,
        prime: Callable[[ChannelKey], Deferred[None]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.hub = hub
        self.resolver = resolver
        self.clock = clock
        self.metrics = metrics
        self.node_id = node_id
        self.tokens = tokens
        #: Signs viewers in from an ``sso`` field (:class:`fastedge.api.signin.SsoSignIn`).
        self.sso: Any = sso
        self.policy: IAccessPolicy = policy if policy is not None else PublicThreads()
        self.connections: dict[str, set[Connection]] = {
            "websocket": set(),
            "sse": set(),
        }
        self._drained: list[Deferred[None]] = []
        #: The ``urlId`` of each channel subscribed here, for re-checks
        #: (resolved as a subscribe is, through the resolver's cache).
        self.url_ids: dict[ChannelKey, str] = {}
        self._sweeping = False
        #: Called before a channel's subscriber is answered (the mesh relay
        #: brings the channel up to date with its sequencer there, so
        #: recovery with ``since`` works on any node); never fails.
        self.prime = prime
        #: ``count_opened(transport)``, ``count_subscribe(result)``: the
        #: per-connection counters, their children looked up once.
        self.count_opened: Callable[[str], None] | None = None
        self.count_subscribe: Callable[[str], None] | None = None
        if metrics is not None:
            self.count_opened = label_counter(metrics.opened)
            self.count_subscribe = label_counter(metrics.subscribes)
            hub.on_fanout = self._observe_fanout
            hub.on_fanout_lag = metrics.fanout_lag_seconds.observe

    def _observe_fanout(self, seconds: float, recipients: int) -> None:
        assert self.metrics is not None
        self.metrics.fanout_seconds.observe(seconds)

    def count(self, transport: str) -> int:
        """Open connections of one front end."""
        return len(self.connections[transport])

    def admit(self, transport: str) -> bool:
        """Whether another connection fits under ``live.max_connections``."""
        return sum(len(c) for c in self.connections.values()) < self.cfg.max_connections

    def opened(self, conn: Connection) -> None:
        """Count an accepted connection in."""
        self.connections[conn.transport_name].add(conn)
        if self.count_opened is not None:
            self.count_opened(conn.transport_name)

    def closed(self, conn: Connection) -> None:
        """Count a connection out."""
        self.connections[conn.transport_name].discard(conn)
        if self._drained and not any(self.connections.values()):
            waiting, self._drained = self._drained, []
            for d in waiting:
                if not d.called:
                    d.callback(None)

    def on_drained(self, d: Deferred[None]) -> None:
        """Fire ``d`` once no live connection is open."""
        if not any(self.connections.values()):
            d.callback(None)
        else:
            self._drained.append(d)

    def closing(self, code: int) -> None:
        """Count a close the server initiated."""
        if self.metrics is not None:
            self.metrics.closed.labels(str(code)).inc()

    def compression_declined(self) -> None:
        """Count a WebSocket handshake whose compression offer was declined."""
        if self.metrics is not None:
            self.metrics.compression_declined.inc()

    def frames_refused(self, code: int) -> None:
        """Count a WebSocket closed for flooding frames (``code``: 4429 for the
        frame rate, 1009 for fragments)."""
        if self.metrics is not None:
            self.metrics.frame_floods.labels(str(code)).inc()

    def slow_consumer(self, transport: str) -> None:
        """Count a slow-consumer disconnect."""
        if self.metrics is not None:
            self.metrics.slow_consumers.labels(transport).inc()

    def keepalive(self) -> None:
        """One keep-alive round over every connection (see ``live.ping_seconds``)."""
        for group in self.connections.values():
            for conn in list(group):
                conn.keepalive()

    def shutdown(self, move: bytes | None = None) -> None:
        """Tell every connection the node is going away (close 1001).

        :param move: a ``move`` message (:func:`fastedge.live.messages.move`)
            sent to each connection first: where its client goes next.
        """
        for group in self.connections.values():
            for conn in list(group):
                if move is not None:
                    conn.send(move)
                    if self.metrics is not None:
                        self.metrics.moves.labels(conn.transport_name).inc()
                conn.shutdown()

    def now_s(self) -> int:
        """The clock's time in whole seconds (for token ages)."""
        return int(self.clock.seconds())

    # Access rules that change under open subscriptions

    def recheck(self, tenant_id: str | None = None, url_id: str | None = None, *, trigger: str = "sweep") -> Any:
        """Check the open subscriptions of a tenant's channels (of one
        thread with ``url_id``; of every tenant with neither) against the
        threads' access rules now, and end those the rules refuse: WebSocket
        gets an ``error`` ``forbidden`` naming the channel (the connection
        stays), SSE a ``close`` 4403 (docs/live-protocol.md).

        Threads and tenants are resolved as subscribes are (the resolver's
        cache: a change made elsewhere shows within
        ``live.resolve_cache_seconds``); a channel a stranger may read is
        open to everyone and costs no per-viewer check.

        :returns: a Deferred of how many subscriptions ended; never fails.
        """
        if trigger == "sweep":
            if self._sweeping:
                # The previous sweep is still waiting on the store.
                return succeed(0)
            self._sweeping = True
        if self.metrics is not None:
            self.metrics.rechecks.labels(trigger).inc()

        async def go() -> int:
            revoked = 0
            for key, url in list(self.url_ids.items()):
                if (tenant_id is not None and key[0] != tenant_id) or (url_id is not None and url != url_id):
                    continue
                members = self.hub.members(key)
                if not members:
                    if self.url_ids.get(key) == url:
                        del self.url_ids[key]
                    continue
                revoked += await self._recheck_channel(key, url, members)
            return revoked

        def failed(failure: Failure) -> int:
            self._log.failure("live: re-checking open subscriptions failed", failure)
            return 0

        def done(revoked: int) -> int:
            if trigger == "sweep":
                self._sweeping = False
            return revoked

        return Deferred.fromCoroutine(go()).addErrback(failed).addCallback(done)

    async def _recheck_channel(self, key: ChannelKey, url: str, members: tuple[Subscription, ...]) -> int:
        try:
            resolved: Resolved = await self.resolver.resolve(key[0], url)
        except RequestError:
            # Gone (a deleted thread has its own path) or the store is down:
            # the next sweep tries again.
            return 0
        tenant, thread = resolved.tenant, resolved.thread
        if thread.id != key[1]:
            return 0
        try:
            await maybeDeferred(self.policy.check, tenant, thread, None)
            return 0
        except RequestError:
            pass
        revoked = 0
        for sub in members:
            author = sub.viewer[1] if sub.viewer is not None else None
            try:
                await maybeDeferred(self.policy.check, tenant, thread, author)
            except RequestError as e:
                if e.code == "unavailable":
                    continue
                conn: Connection = sub.outlet  # type: ignore[assignment]
                if conn.revoke(sub, e):
                    revoked += 1
                    if self.metrics is not None:
                        self.metrics.revoked.labels(conn.transport_name).inc()
                    self._log.info(
                        "live: subscription to {tenant}/{thread} ended: {reason}",
                        tenant=key[0],
                        thread=key[1],
                        reason=getattr(e, "reason", e.code),
                    )
            except Exception:
                # A store error reading the viewer: keep them, try next sweep.
                self._log.failure("live: re-checking a subscriber failed")
        return revoked


class LiveConnection:
    """One client's subscriptions.

    :param conn: where this client's messages go.
    """

    _log = Logger()

    def __init__(self, live: Live, conn: Connection) -> None:
        self._live = live
        self._conn = conn
        self.subs: dict[ChannelKey, Subscription] = {}
        self._pending = 0
        self.closed = False

    def subscribe(self, msg: Subscribe, answered: Callable[[Joined, str, Any], None]) -> Deferred[Joined | None]:
        """Authorize and join a channel.

        ``answered(joined, channel_name, ref)`` runs right after the hub took the
        subscription, before any other event can reach it: the transport
        sends its answer and the replay there, so the client sees them in
        order and ahead of live events.

        :returns: a Deferred firing with the :class:`Joined` (``None`` if the
            connection closed meanwhile), or failing with a ``RequestError``.
        """
        live = self._live
        if len(self.subs) + self._pending >= live.cfg.max_subscriptions:
            return self._refuse(
                RequestError(
                    "too_many_subscriptions",
                    "at most {} subscriptions per connection".format(live.cfg.max_subscriptions),
                    msg.ref,
                )
            )
        self._pending += 1
        at_once = self._authorized_at_once(msg)
        if isinstance(at_once, tuple):
            # Nothing to wait for: join now, without a coroutine and a chain
            # of callbacks (in a burst of connects, most of a subscribe's cost).
            self._pending -= 1
            try:
                joined = self._join(at_once, msg, answered)
            except Exception:
                return fail().addErrback(self._count_failure, msg)
            return succeed(joined)
        authorized = at_once if at_once is not None else Deferred.fromCoroutine(self._authorize(msg))
        d: Deferred[Any] = authorized.addCallback(self._join, msg, answered)

        def settled(result: Any) -> Any:
            self._pending -= 1
            return result

        d.addBoth(settled)
        d.addErrback(self._count_failure, msg)
        return d

    def _authorized_at_once(
        self, msg: Subscribe
    ) -> tuple[Resolved, None, frozenset[str]] | Deferred[tuple[Resolved, None, frozenset[str]]] | None:
        """What :meth:`_authorize` would answer, when it can be known now:
        an anonymous viewer (no token, no SSO), a thread resolved recently,
        no relay to prime. The policy's answer is taken as it comes (at
        once, or a Deferred to wait for).

        :returns: the authorization, a Deferred of it, or ``None`` for
            :meth:`_authorize` to find it.
        """
        live = self._live
        if msg.viewer is not None or msg.sso is not None or live.prime is not None:
            return None
        resolved = live.resolver.known(msg.tenant, msg.url_id)
        if resolved is None:
            return None
        authorized = (resolved, None, _NOBODY_BLOCKED)
        try:
            verdict = live.policy.check(resolved.tenant, resolved.thread, None)
        except Exception:
            return fail()
        if verdict is None:
            return authorized
        return verdict.addCallback(lambda _: authorized)

    async def _authorize(self, msg: Subscribe) -> tuple[Resolved, tuple[str, str] | None, frozenset[str]]:
        live = self._live
        resolved: Resolved = await live.resolver.resolve(msg.tenant, msg.url_id)
        tenant, thread = resolved.tenant, resolved.thread
        viewer = None
        blocked: frozenset[str] = frozenset()
        if msg.viewer is not None:
            if live.tokens is None:
                raise RequestError("bad_viewer_token", "this node does not accept viewer tokens")
            try:
                author = live.tokens.check(msg.viewer, tenant.id, live.now_s())
            except ViewerTokenError as e:
                raise RequestError(e.code, str(e)) from None
            viewer = (tenant.id, author)
            blocked = await live.resolver.blocked_authors(tenant.id, author)
        elif msg.sso is not None:
            author = await self._sso_author(tenant.id, msg.sso)
            viewer = (tenant.id, author)
            blocked = await live.resolver.blocked_authors(tenant.id, author)
        await maybeDeferred(live.policy.check, tenant, thread, viewer[1] if viewer else None)
        if live.prime is not None:
            await live.prime((tenant.id, thread.id))
        return resolved, viewer, blocked

    async def _sso_author(self, tenant_id: str, value: str) -> str:
        """The author of the user an ``sso`` field signs in (upserted)."""
        signin = self._live.sso
        if signin is None:
            raise RequestError("sso_disabled", "this node does not accept SSO on live connections")
        parts = value.split(".")
        if len(parts) != 3:
            raise RequestError("sso_malformed", "sso must be payload.timestamp.signature")
        try:
            user = await signin.verify(tenant_id, *parts)
        except SsoError as e:
            raise RequestError(e.code, e.message) from None
        signed = await signin.upsert(tenant_id, user)
        return str(signed.author_id)

    def _join(
        self,
        authorized: tuple[Resolved, tuple[str, str] | None, frozenset[str]],
        msg: Subscribe,
        answered: Callable[[Joined, str, Any], None],
    ) -> Joined | None:
        if self.closed:
            return None
        resolved, viewer, blocked = authorized
        key = (resolved.tenant.id, resolved.thread.id)
        name = channel_name(*key)
        if key in self.subs:
            raise RequestError("already_subscribed", "already subscribed to {}".format(name))
        try:
            joined = self._live.hub.subscribe(
                key,
                self._conn,
                since=msg.since,
                epoch=msg.epoch,
                viewer=viewer,
                blocked=blocked,
            )
        except SinceInFuture as e:
            raise RequestError("since_in_future", str(e)) from None
        self.subs[key] = joined.subscription
        self._live.url_ids[key] = resolved.thread.url_id
        metrics = self._live.metrics
        count = self._live.count_subscribe
        if metrics is not None and count is not None:
            count("ok")
            if msg.since is not None:
                metrics.recoveries.labels("reload" if joined.reload else "replayed").inc()
        answered(joined, name, msg.ref)
        return joined

    def _count_failure(self, failure: Failure, msg: Subscribe) -> Failure:
        if failure.check(RequestError):
            error = failure.value
            if error.ref is None:
                error.ref = msg.ref
            if self._live.metrics is not None:
                self._live.metrics.subscribes.labels(error.code).inc()
            return failure
        self._log.failure("live subscribe failed", failure)
        if self._live.metrics is not None:
            self._live.metrics.subscribes.labels("internal_error").inc()
        return Failure(RequestError("internal_error", "the server failed to subscribe you", msg.ref))

    def _refuse(self, error: RequestError) -> Deferred[Joined | None]:
        if self._live.metrics is not None:
            self._live.metrics.subscribes.labels(error.code).inc()
        d: Deferred[Joined | None] = Deferred()
        d.errback(error)
        return d

    def unsubscribe(self, name: str, ref: Any = None) -> str:
        """Leave a channel.

        :raises RequestError: ``not_subscribed``.
        """
        key = parse_channel(name)
        sub = self.subs.pop(key, None) if key is not None else None
        if sub is None:
            raise RequestError("not_subscribed", "not subscribed to {}".format(name[:80]), ref)
        self._live.hub.unsubscribe(sub)
        return name

    def drop(self, sub: Subscription) -> bool:
        """Leave one channel the server ended (``False``: already left)."""
        if self.subs.get(sub.channel) is not sub:
            return False
        del self.subs[sub.channel]
        self._live.hub.unsubscribe(sub)
        return True

    def close(self) -> None:
        """The connection is gone: leave every channel."""
        self.closed = True
        hub = self._live.hub
        for sub in self.subs.values():
            hub.unsubscribe(sub)
        self.subs.clear()
