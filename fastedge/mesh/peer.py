# -*- test-case-name: tests.unit.mesh.test_membership,tests.unit.mesh.test_refusals,tests.unit.mesh.test_unreachable -*-
"""The two ends of a mesh link in PB terms.

Every node has one outgoing :class:`Link` to every other node, and
receives one from each. A link logs in to the peer's gate and gets a
session, the peer's :class:`PeerAvatar`; the calling node makes every
call (heartbeats, probes, member lists, goodbyes, and the calls of the
features registered with the mesh, ``fastedge.mesh.handler``) over its own
link, and the peer calls back over the same connection through the
:class:`LinkMind` the link handed over at login (handlers' callbacks, such
as the live events the relay pushes).

Neither end names a feature: the membership's calls are ``perspective_*``
methods here, and every other call is routed to the handler that
registered its name, after the mesh's checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    LogEvent,
    Logger,
    PredicateResult,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import implementer

from .broker import Limits, MeshBroker, MeshClientFactory
from .interfaces import ILink, IPeerSession
from .messages import Announcement, BadMessage, Refused, check_node_id
from .metrics import MeshMetrics
from .tls import name_mismatch, peer_certificate

__all__ = ["Link", "LinkDown", "LinkMind", "PeerAvatar"]


_KNOWN_INCARNATION = re.compile(r"\[incarnation=([0-9]{1,19})\]")


class LinkDown(Exception):
    """A call on a link that is not connected and logged in."""


def _close(broker: MeshBroker) -> None:
    """Close a connection gracefully (what was written goes out first)."""
    if broker.transport is not None:
        broker.transport.loseConnection()


def _is_int(value: Any, low: int = 0, high: int = 2**63 - 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@implementer(IPeerSession)
class PeerAvatar(pb.Avatar):
    """A logged-in peer, as this node serves it.

    Every call counts as hearing from the peer; calls from an incarnation
    that has since been superseded are refused and close the connection.

    :param node: the mesh service whose membership and registered handlers
        answer the calls.
    """

    _log = Logger()

    def __init__(self, node_id: str, mind: Any, node: Any) -> None:
        self.node_id = node_id
        self.mind = mind
        self.incarnation = -1
        self.broker: MeshBroker | None = None
        self._node = node

    def attach(self, broker: MeshBroker, incarnation: int) -> None:
        """Bind the session to its connection and the incarnation that logged in."""
        self.broker = broker
        self.incarnation = incarnation

    def logout(self) -> None:
        """The connection closed."""
        self._node.session_closed(self)

    def _bad(self, detail: str) -> Refused:
        self.abort("bad_message", detail)
        return Refused("bad message")

    def perspectiveMessageReceived(self, broker: Any, message: str, args: Any, kw: Any) -> Any:
        metrics: MeshMetrics = self._node.metrics
        handlers = self._node.handlers
        method = getattr(self, "perspective_" + message, None)
        handled = method is None and handlers.has_call(message)
        metrics.calls.labels(message if method is not None or handled else "unknown").inc()
        membership = self._node.membership
        peer = membership.heard_from(self.node_id, self.incarnation)
        if peer is None:
            # A superseded (or departed) incarnation: this connection is stale.
            transport = self.broker.transport if self.broker is not None else None
            if transport is not None:
                transport.loseConnection()
            raise Refused("stale session: incarnation {} of {} is not current".format(self.incarnation, self.node_id))
        if method is not None:
            return super().perspectiveMessageReceived(broker, message, args, kw)
        if not handled:
            raise Refused("no such call: {}".format(message))
        # A registered handler's call (fastedge.mesh.handler): the mesh
        # checks the caller's deployment, the handler's rate and the
        # arguments' shape; keywords are not part of the mesh's calls.
        args = broker.unserialize(args, self)
        if broker.unserialize(kw, self):
            raise self._bad("mesh calls take no keyword arguments")
        return broker.serialize(handlers.session_call(self, message, args), self)

    # IPeerSession (what a handler's remote call receives)

    def call_back(self, method: str, *args: Any) -> Deferred[Any]:
        """Call a handler's callback on the peer, over its connection here."""
        broker, mind = self.broker, self.mind
        if broker is None or broker.disconnected or mind is None:
            return fail(LinkDown(self.node_id))
        limit = broker.limits.max_pending_calls
        if broker.pending_calls() >= limit:
            broker.violation("unanswered", "{} calls back awaiting an answer".format(limit))
            return fail(LinkDown(self.node_id))
        d: Deferred[Any] = mind.callRemote(method, *args)
        return d

    def abort(self, reason: str, detail: str) -> None:
        """Drop the peer's connection, counted under ``reason``."""
        if self.broker is not None:
            self.broker.violation(reason, detail)

    # Membership

    def perspective_ping(self, nonce: Any, load: Any, digest: Any) -> tuple[int, int, str]:
        """A heartbeat: answers ``(nonce, this node's load, digest)``."""
        if not _is_int(nonce) or not _is_int(load) or not isinstance(digest, str) or len(digest) > 64:
            raise self._bad("a heartbeat must be (nonce, load, digest)")
        membership = self._node.membership
        peer = membership.current(self.node_id, self.incarnation)
        my_load, my_digest = membership.pinged(peer, load, digest)
        return nonce, my_load, my_digest

    def perspective_members(self) -> list[tuple[Announcement, str]]:
        """Every node this node knows, with its state here (what nodes of
        the previous version pull; this version pulls :meth:`perspective_members_since`)."""
        membership = self._node.membership
        membership.metrics.memberlist.sent.labels("full").inc()
        return membership.members()

    def perspective_members_since(self, incarnation: Any, since: Any, digest: Any, have: Any) -> tuple[Any, ...]:
        """The changes to this node's member table since version ``since``
        (of its incarnation ``incarnation``), what the peer lacks given its
        ``digest`` and ``have`` pairs, or the first chunk of the full list
        (``fastedge.mesh.memberlist``)."""
        if not _is_int(incarnation) or not _is_int(since) or not isinstance(digest, str) or len(digest) > 64:
            raise self._bad("members_since must be (incarnation, version, digest, have)")
        try:
            return self._node.membership.members_since(self.node_id, incarnation, since, digest, have)
        except BadMessage as e:
            raise self._bad(str(e)) from None

    def perspective_members_chunk(self, incarnation: Any, version: Any, index: Any) -> tuple[Any, ...]:
        """Chunk ``index`` of this node's full member list at ``version``."""
        if not _is_int(incarnation) or not _is_int(version) or not _is_int(index):
            raise self._bad("members_chunk must be (incarnation, version, index)")
        answer = self._node.membership.members_chunk(incarnation, version, index)
        if answer is None:
            raise Refused("gone: chunk {} of version {} of the member list is not kept".format(index, version))
        return answer

    def perspective_probe(self, node_id: Any, incarnation: Any) -> float | None:
        """Seconds since this node last heard from that node itself."""
        try:
            check_node_id(node_id)
        except BadMessage as e:
            raise self._bad(str(e)) from None
        if not _is_int(incarnation):
            raise self._bad("an incarnation must be an integer")
        return self._node.membership.probe_answer(node_id, incarnation)

    def perspective_gossip(self, rumours: Any) -> None:
        """Membership rumours from the peer (past the full mesh,
        ``fastedge.mesh.partialview``)."""
        try:
            self._node.membership.view.received(rumours, self.node_id)
        except BadMessage as e:
            self._node.metrics.view.rumours.labels("bad").inc()
            raise self._bad(str(e)) from None

    def perspective_announce(self, announcement: Any) -> None:
        """The peer's new announcement of itself."""
        if not isinstance(announcement, Announcement):
            raise self._bad("an announcement is expected")
        self._node.membership.announced(self.node_id, announcement)
        if announcement.incarnation > self.incarnation:
            self.incarnation = announcement.incarnation

    def perspective_leave(self) -> None:
        """The peer stops cleanly."""
        self._log.info("mesh: {node} is leaving", node=self.node_id)
        self._node.membership.left(self.node_id, self.incarnation)


class LinkMind(pb.Referenceable):
    """What a peer may call back on this node over this node's link to it."""

    def __init__(self, link: Link) -> None:
        self._link = link

    def remoteMessageReceived(self, broker: Any, message: str, args: Any, kw: Any) -> Any:
        link = self._link
        if broker is not link.broker or link.peer_id is None:
            raise Refused("not logged in")
        membership = link.node.membership
        if membership.heard_from(link.peer_id, link.peer_incarnation) is None:
            raise Refused("stale link")
        handlers = link.node.handlers
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        if not handlers.has_callback(message):
            link.node.metrics.calls.labels("unknown").inc()
            raise Refused("no such call")
        link.node.metrics.calls.labels("cb_" + message).inc()
        connection: MeshBroker = link.broker
        args = connection.unserialize(args)
        if connection.unserialize(kw):
            link.abort("bad_message", "mesh calls take no keyword arguments")
            raise Refused("bad message")
        # A registered handler's callback (fastedge.mesh.handler).
        return connection.serialize(handlers.link_callback(link, message, args))


#: ``ClientService`` logs this before every retry (two lines a peer every
#: few seconds while a peer is down); see :class:`_LinkService`.
_RETRY_LINE = "Scheduling retry "


@implementer(ILogFilterPredicate)
class _NotARetryLine:
    """Drops ``ClientService``'s per-retry line, passes the rest."""

    def __call__(self, event: LogEvent) -> PredicateResult:
        if str(event.get("log_format", "")).startswith(_RETRY_LINE):
            return PredicateResult.no
        return PredicateResult.maybe


class _LinkService(ClientService):
    """Twisted's reconnecting client without its per-retry log line.

    A dead peer is retried every ``mesh.reconnect_max_seconds`` for up to
    ``mesh.forget_dead_seconds``; :meth:`Link.connect_failed` logs the first
    failure and then summaries at growing intervals (``RefusalLog``), and
    ``fastedge_mesh_connect_failures_total`` counts every one. The machine
    takes its logger from ``self._log`` at construction, so this instance's
    logger drops that one line and passes everything else on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._log = Logger(
            namespace="fastedge.mesh.peer.Link",
            source=self,
            observer=FilteringLogObserver(globalLogPublisher, [_NotARetryLine()]),
        )
        super().__init__(*args, **kwargs)


def _connect_reason(failure: Failure) -> str:
    """The label of a failed connect: refused, timeout, dns or other."""
    if failure.check(ConnectionRefusedError):
        return "refused"
    if failure.check(TimeoutError):
        return "timeout"
    if failure.check(DNSLookupError):
        return "dns"
    return "other"


@implementer(ILink)
class Link:
    """This node's connection to one peer, reconnecting with backoff.

    One ``ClientService`` per peer (Twisted's reconnecting client); after
    every connection the link logs in, checks that the peer's certificate
    names the node it says it is (and the node this link is for), and
    reports to the membership. A refused login backs off like a failed
    connection.

    :param peer_id: the node this link is for; ``None`` for a seed.
    :param node: the mesh service (membership, metrics, handlers).
    :param endpoint: the TLS client endpoint to the peer.
    :param policy: the backoff policy (seconds to wait before attempt N).
    """

    _log = Logger()

    def __init__(
        self,
        *,
        peer_id: str | None,
        address: tuple[str, int],
        node: Any,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        limits: Limits,
        policy: Callable[[int], float],
    ) -> None:
        self.peer_id = peer_id
        self.address = address
        self.node = node
        self.peer_incarnation = -1
        self.broker: MeshBroker | None = None
        self.session: pb.RemoteReference | None = None
        self.up = False
        self._clock = clock
        self._limits = limits
        self._refusals = 0
        self._stopped = False
        self._mind = LinkMind(self)
        self._attempting = False
        self._factory = MeshClientFactory(
            limits=limits,
            clock=clock,
            metrics=node.metrics,
            on_ready=self._negotiated,
            on_closed=self._closed,
            refusals=getattr(node, "refusals", None),
        )
        self.service = _LinkService(
            _CountingEndpoint(endpoint, self),
            self._factory,
            retryPolicy=lambda attempt: self._retry_delay(policy, attempt),
            clock=clock,
        )

    def _retry_delay(self, policy: Callable[[int], float], attempt: int) -> float:
        delay = policy(attempt + self._refusals)
        cap = self.node.membership.retry_cap(self.peer_id)
        if cap is not None and not self._refusals:
            delay = min(delay, cap)
        return delay

    def __repr__(self) -> str:
        return "<Link to {} at {}:{}{}>".format(
            self.peer_id or "seed",
            self.address[0],
            self.address[1],
            " up" if self.up else "",
        )

    def start(self) -> None:
        """Start connecting."""
        self.node.metrics.links.labels("connecting").inc()
        self.service.startService()

    def adopt(self, peer_id: str) -> None:
        self.peer_id = peer_id

    # A connection attempt counts as work in flight (Membership.busy) from
    # the connect until the login is decided or the connection is lost.

    def attempt_started(self) -> None:
        """A connection attempt begins."""
        if not self._attempting:
            self._attempting = True
            self.node.membership.busy(1)

    def attempt_done(self) -> None:
        """The attempt ended (logged in, refused, or failed)."""
        if self._attempting:
            self._attempting = False
            self.node.membership.busy(-1)

    def _unreachable_key(self) -> tuple[str, str]:
        # By node id when known: a restarted node may come back elsewhere.
        return ("to", self.peer_id or "{}:{}".format(*self.address))

    def connect_failed(self, failure: Failure) -> None:
        """A connection attempt failed before a connection existed: counted
        always, logged the first time and then in summaries."""
        if self._stopped:
            return
        reason = _connect_reason(failure)
        self.node.metrics.connect_failures.labels(reason).inc()
        unreachable = getattr(self.node, "unreachable", None)
        peer = self.peer_id or "a seed"
        detail = failure.getErrorMessage()
        if unreachable is None or unreachable.refused(
            self._unreachable_key(), direction="to", peer=peer, detail=detail
        ):
            self._log.warn(
                "mesh link to {peer} at {host}:{port} cannot connect ({reason}): {detail}; retrying with backoff,"
                " further failures are summarised",
                peer=peer,
                host=self.address[0],
                port=self.address[1],
                reason=reason,
                detail=detail,
            )

    def _closed(self, broker: MeshBroker) -> None:
        if broker.logged_in_at is None:
            self.attempt_done()
            if getattr(broker, "currentDialect", None) is None and not self._stopped:
                # PB never came up: the TLS handshake was refused (either
                # way) or the connection died first. Back off as for a
                # refused login; the connection itself "succeeded", so the
                # reconnecting service alone would retry at its first delay.
                self._refusals += 1

    def _negotiated(self, broker: MeshBroker) -> None:
        """PB is negotiated on a new connection: log in."""
        if self._stopped:
            _close(broker)
            return
        root = broker.remoteForName("root")
        d = root.callRemote("join", self.node.membership.me, self._mind)
        d.addCallbacks(self._joined, self._refused, callbackArgs=(broker,), errbackArgs=(broker,))
        d.addBoth(lambda _: self.attempt_done())

    def _joined(self, answer: Any, broker: MeshBroker) -> None:
        if (
            not isinstance(answer, (list, tuple))
            or len(answer) != 3
            or not isinstance(answer[0], pb.RemoteReference)
            or not isinstance(answer[1], Announcement)
        ):
            broker.violation("bad_message", "a malformed login answer")
            return
        session, announcement, members = answer
        node_id = announcement.node_id
        reason = name_mismatch(peer_certificate(broker.transport), node_id)
        if reason is None and self.peer_id is not None and node_id != self.peer_id:
            reason = "expected {}, reached {}".format(self.peer_id, node_id)
        if reason is not None:
            self.node.metrics.refused.labels("name_mismatch").inc()
            if broker.note_refusal("to", reason):
                self._log.warn(
                    "mesh link to {host}:{port} refused the peer: {reason}",
                    host=self.address[0],
                    port=self.address[1],
                    reason=reason,
                )
            self._refusals += 1
            _close(broker)
            return
        if self._stopped or broker.disconnected:
            return
        self._refusals = 0
        broker.logged_in(node_id)
        self.broker = broker
        self.session = session
        self.peer_incarnation = announcement.incarnation
        self.up = True
        self.node.metrics.links.labels("connecting").dec()
        self.node.metrics.links.labels("up").inc()
        broker.notifyOnDisconnect(lambda: self._disconnected(broker))
        self._log.info("mesh link to {peer} is up", peer=node_id)
        unreachable = getattr(self.node, "unreachable", None)
        back = unreachable.recovered(self._unreachable_key()) if unreachable is not None else None
        if back is not None:
            self._log.info(
                "mesh link to {peer} at {host}:{port} is back after {failures} failed connections in {seconds:.0f} s",
                peer=node_id,
                host=self.address[0],
                port=self.address[1],
                failures=back[0],
                seconds=back[1],
            )
        try:
            self.node.membership.link_up(self, announcement, members)
        except BadMessage as e:
            broker.violation("bad_message", str(e))

    def _refused(self, failure: Failure, broker: MeshBroker) -> None:
        message = failure.getErrorMessage()
        if isinstance(failure.value, pb.PBConnectionLost) or broker.disconnected:
            # The connection failed during login (a TLS refusal is logged by
            # the broker); the ClientService reconnects.
            self._refusals += 1
            return
        self._refusals += 1
        if broker.note_refusal("to", message):
            self._log.warn(
                "mesh link to {peer} at {host}:{port}: login refused: {reason}",
                peer=self.peer_id or "a seed",
                host=self.address[0],
                port=self.address[1],
                reason=message,
            )
        if message.startswith("self:"):
            # A seed that is this node itself: nothing to join.
            self.stop()
            return
        known = _KNOWN_INCARNATION.search(message)
        if known is not None and message.startswith(("stale:", "left:")):
            # The peer knows a newer (or departed) life of this node.
            self.node.membership.superseded(int(known.group(1)))
            self._refusals = 0
        _close(broker)

    def _disconnected(self, broker: MeshBroker) -> None:
        if broker is not self.broker:
            return
        self.broker = None
        self.session = None
        if self.up:
            self.up = False
            self.node.metrics.links.labels("up").dec()
            if not self._stopped:
                self.node.metrics.links.labels("connecting").inc()
            self._log.info("mesh link to {peer} is down", peer=self.peer_id)
            self.node.membership.link_down(self)

    def call(self, method: str, *args: Any) -> Deferred[Any]:
        """Call ``method`` on the peer's session; see :class:`ILink`."""
        broker, session = self.broker, self.session
        if not self.up or broker is None or session is None:
            return fail(LinkDown(self.peer_id))
        if broker.pending_calls() >= self._limits.max_pending_calls:
            self.abort(
                "unanswered",
                "{} calls awaiting an answer".format(broker.pending_calls()),
            )
            return fail(LinkDown(self.peer_id))
        return session.callRemote(method, *args)

    def abort(self, reason: str, detail: str) -> None:
        if self.broker is not None:
            self.broker.violation(reason, detail)

    def stop(self) -> Deferred[None]:
        if self._stopped:
            return succeed(None)
        self._stopped = True
        was_up = self.up
        if not was_up:
            self.node.metrics.links.labels("connecting").dec()
        d: Deferred[None] = self.service.stopService()
        return d


@implementer(IStreamClientEndpoint)
class _CountingEndpoint:
    """Tells the link when a connection attempt starts, and when it fails
    before a connection exists."""

    def __init__(self, endpoint: IStreamClientEndpoint, link: Link) -> None:
        self._endpoint = endpoint
        self._link = link

    def __repr__(self) -> str:
        return repr(self._link)

    def connect(self, factory: Any) -> Deferred[Any]:
        self._link.attempt_started()
        d = self._endpoint.connect(factory)

        def failed(f: Failure) -> Failure:
            self._link.attempt_done()
            self._link.connect_failed(f)
            return f

        d.addErrback(failed)
        return d
