# -*- test-case-name: tests.unit.mesh.test_handler -*-
"""How features talk over the mesh: :class:`IMeshHandler` registrations.

The mesh is a transport. A feature that needs the other nodes of its
deployment (the live relay in :mod:`fastedge.live.relay`, the CDN's peer
fill and purges in :mod:`fastedge.cdn.peers`, and whatever comes next)
registers an :class:`~fastedge.mesh.interfaces.IMeshHandler` with the
mesh service before it starts (``make_service(..., handlers=[...])``). The
mesh then:

- routes the handler's calls (``remote_calls``: peers calling this node's
  session; ``callbacks``: peers calling back over this node's link) to it,
  with the same stale-session check as its own membership calls;
- refuses, for every handler alike, a call from a node of another
  deployment (``deployment``), calls beyond the handler's own rate
  (``rate``) and malformed ones (``bad_message``: the peer is disconnected,
  as for any bad mesh message), counting each in
  ``fastedge_mesh_handler_refused_total{handler,reason}``;
- admits the handler's ``message_types`` (and no others) in the jelly type
  allow-list of this node's connections;
- tells it when the mesh starts (:meth:`IMeshHandler.attach`, with an
  :class:`~fastedge.mesh.interfaces.IMesh` view), when a link comes up,
  when a peer's life ends, when a peer's session closes, and every tick.

``docs/mesh-handlers.md`` has a worked example.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ..tokenbucket import KeyedBuckets
from .interfaces import IMesh, IMeshHandler, IPeerSession
from .messages import BadMessage, MeshSecurity, Refused

__all__ = ["HandlerRegistry", "MeshHandler", "MeshView"]

#: Peer connections a handler's rate is kept for (the least recently used
#: is forgotten past it: a deployment has tens of nodes, two links each).
MAX_CONNECTIONS = 1024

#: Wire names the mesh's own sessions answer (``PeerAvatar.perspective_*``):
#: no handler may take them.
MEMBERSHIP_CALLS = frozenset({"ping", "members", "members_since", "members_chunk", "probe", "announce", "leave"})


@implementer(IMeshHandler)
class MeshHandler:
    """A base class for :class:`IMeshHandler`: every hook does nothing.

    Subclasses set :attr:`name`, fill :attr:`remote_calls` (and
    :attr:`callbacks`, :attr:`message_types`) and override the hooks they
    need.
    """

    name = "handler"
    max_calls_per_second: float | None = None
    #: Peers of every deployment may call it (the mesh still checks that the
    #: caller is a logged-in, current node). Only for a feature that tells
    #: other deployments no data of its own: the tenant directory
    #: (``docs/residency.md``) answers a deployment's name, nothing more.
    cross_deployment = False

    def __init__(self) -> None:
        self.remote_calls: Mapping[str, Callable[..., Any]] = {}
        self.callbacks: Mapping[str, Callable[..., Any]] = {}
        self.message_types: Sequence[type] = ()

    def attach(self, mesh: IMesh) -> None:
        """The mesh started."""

    def link_up(self, node_id: str, link: Any) -> None:
        """A link to a peer came (back) up."""

    def peer_gone(self, node_id: str) -> None:
        """A peer's life ended."""

    def session_closed(self, session: IPeerSession) -> None:
        """A peer's session here closed."""

    def tick(self) -> None:
        """Periodic work."""

    def refused(self, call: str, reason: str) -> None:
        """The mesh refused a call to this handler."""


@implementer(IMesh)
class MeshView:
    """What a handler sees of a started mesh service (see :class:`IMesh`)."""

    def __init__(self, service: Any) -> None:
        self._service = service

    @property
    def node_id(self) -> str:
        return str(self._service.node.id)

    @property
    def deployment(self) -> str:
        return str(self._service.node.deployment)

    @property
    def node_map(self) -> Any:
        return self._service.node_map

    @property
    def reactor(self) -> Any:
        return self._service.reactor

    @property
    def clock(self) -> Any:
        return self._service.clock

    @property
    def leaving(self) -> bool:
        membership = self._service.membership
        return membership is not None and bool(membership.leaving)

    def monotonic(self) -> float:
        return float(self._service.monotonic())

    def peers(self) -> list[str]:
        membership = self._service.membership
        if membership is None:
            return []
        deployment = self.deployment
        return [p.node_id for p in membership.peers.values() if p.announcement.deployment == deployment]

    def link_to(self, node_id: str, *, any_deployment: bool = False) -> Any:
        membership = self._service.membership
        peer = membership.peers.get(node_id) if membership is not None else None
        if peer is None:
            return None
        if peer.announcement.deployment != self.deployment and not any_deployment:
            return None
        if peer.link is None:
            # Past the full mesh a node links only to its view: open one on
            # demand (the handler hears ``link_up`` when it is ready).
            membership.view.on_demand(peer)
            return None
        if not peer.link.up:
            return None
        return peer.link

    def call(self, link: Any, method: str, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = self._service.membership._call(link, method, *args)
        return d

    def watch(self, d: Deferred[Any], call: str, peer: str | None) -> None:
        self._service.membership.failures.watch(d, call, peer)


class _Route:
    __slots__ = ("handler", "fn", "signature")

    def __init__(self, handler: IMeshHandler, fn: Callable[..., Any]) -> None:
        self.handler = handler
        self.fn = fn
        self.signature = inspect.signature(fn)


class HandlerRegistry:
    """The handlers of one mesh service, and the checks every call to them
    passes (see the module docstring).

    :param security: the jelly allow-list of this node's mesh connections;
        each handler's ``message_types`` are added to it.
    :param deployment_of: ``(node_id, incarnation) -> deployment`` of a
        current peer, ``None`` for one that is not current.
    :param deployment: this node's deployment.
    :param metrics: the mesh's metrics (``handler_refused``).
    :param clock: for the handlers' rate limits.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        security: MeshSecurity,
        deployment: str,
        deployment_of: Callable[[str | None, int], str | None],
        metrics: Any,
        clock: Any,
    ) -> None:
        self._security = security
        self._deployment = deployment
        self._deployment_of = deployment_of
        self._metrics = metrics
        self._clock = clock
        self.handlers: list[IMeshHandler] = []
        self._calls: dict[str, _Route] = {}
        self._callbacks: dict[str, _Route] = {}
        #: Per handler with a rate of its own: a bucket per peer connection.
        self._buckets: dict[str, KeyedBuckets] = {}

    def register(self, handler: IMeshHandler) -> None:
        """Carry ``handler``'s calls from now on.

        :raises ValueError: a wire name is taken (by the membership or by
            another handler), or its name is (names label its metrics).
        """
        if any(h.name == handler.name for h in self.handlers):
            raise ValueError("a mesh handler named {!r} is registered already".format(handler.name))
        for table, names in ((self._calls, handler.remote_calls), (self._callbacks, handler.callbacks)):
            for name in names:
                taken = table.get(name)
                if name in MEMBERSHIP_CALLS or taken is not None:
                    owner = "the membership" if taken is None else taken.handler.name
                    raise ValueError(
                        "mesh handler {!r}: the call {!r} is taken by {}".format(handler.name, name, owner)
                    )
        self.handlers.append(handler)
        for name, fn in handler.remote_calls.items():
            self._calls[name] = _Route(handler, fn)
        for name, fn in handler.callbacks.items():
            self._callbacks[name] = _Route(handler, fn)
        for cls in handler.message_types:
            self._security.allow_class(cls)
        rate = handler.max_calls_per_second
        if rate is not None:
            self._buckets[handler.name] = KeyedBuckets(rate, 2.0 * rate, self._clock, max_keys=MAX_CONNECTIONS)

    def has_call(self, name: str) -> bool:
        return name in self._calls

    def has_callback(self, name: str) -> bool:
        return name in self._callbacks

    def each(self, hook: str, *args: Any) -> None:
        """Call ``hook(*args)`` on every handler; one that raises is logged
        and does not stop the others."""
        for handler in self.handlers:
            try:
                getattr(handler, hook)(*args)
            except Exception:
                self._log.failure("mesh handler {handler}: {hook} failed", handler=handler.name, hook=hook)

    def _refuse(self, route: _Route, call: str, peer: str | None, reason: str) -> None:
        self._metrics.handler_refused.labels(route.handler.name, reason).inc()
        try:
            route.handler.refused(call, reason)
        except Exception:
            self._log.failure("mesh handler {handler}: refused hook failed", handler=route.handler.name)

    def _check(self, route: _Route, call: str, peer: str | None, incarnation: int, connection: object) -> None:
        deployment = self._deployment_of(peer, incarnation)
        crossing = getattr(route.handler, "cross_deployment", False) and deployment is not None
        if deployment != self._deployment and not crossing:
            self._refuse(route, call, peer, "deployment")
            self._log.warn(
                "mesh: refused {handler} call {call} from {peer} (another deployment than {deployment})",
                handler=route.handler.name,
                call=call,
                peer=peer,
                deployment=self._deployment,
            )
            raise Refused("deployment: {} calls are only between nodes of one deployment".format(route.handler.name))
        buckets = self._buckets.get(route.handler.name)
        if buckets is not None and not buckets.take((peer, id(connection))):
            self._refuse(route, call, peer, "rate")
            raise Refused(
                "rate: more than {} {} calls per second".format(route.handler.max_calls_per_second, route.handler.name)
            )

    def _run(self, route: _Route, call: str, peer: str | None, caller: Any, args: Sequence[Any]) -> Any:
        try:
            route.signature.bind(caller, *args)
        except TypeError as e:
            self._refuse(route, call, peer, "bad_message")
            caller.abort("bad_message", "{} {}: {}".format(route.handler.name, call, e))
            raise Refused("bad message") from None
        try:
            return route.fn(caller, *args)
        except BadMessage as e:
            self._refuse(route, call, peer, "bad_message")
            caller.abort("bad_message", "{} {}: {}".format(route.handler.name, call, e))
            raise Refused("bad message") from None

    def session_call(self, session: Any, call: str, args: Sequence[Any]) -> Any:
        """A peer's call ``call`` on its session here (``PeerAvatar``)."""
        route = self._calls.get(call)
        if route is None:
            raise Refused("no such call: {}".format(call))
        self._check(route, call, session.node_id, session.incarnation, session)
        return self._run(route, call, session.node_id, session, args)

    def link_callback(self, link: Any, call: str, args: Sequence[Any]) -> Any:
        """A peer's call ``call`` back over this node's link to it (``LinkMind``)."""
        route = self._callbacks.get(call)
        if route is None:
            raise Refused("no such call: {}".format(call))
        self._check(route, call, link.peer_id, link.peer_incarnation, link)
        return self._run(route, call, link.peer_id, link, args)
