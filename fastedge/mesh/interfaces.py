"""Interfaces of the mesh that other children depend on."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:  # nodemap imports this module
    from twisted.internet.defer import Deferred

    from .nodemap import NodeInfo, NodeMapChange


class INodeMap(Interface):
    """The live map of the nodes this node knows, itself included.

    Observable: other children (DNS, ``/healthz``, status pages) subscribe
    and are told of every change synchronously, in the order of changes; no
    one polls it.
    """

    version = Attribute("An integer that grows by one with every change.")

    def nodes() -> Mapping[str, NodeInfo]:
        """Every known node by id, in any state.

        :returns: ``Mapping[str, NodeInfo]``
        """

    def live(deployment: str) -> list[NodeInfo]:
        """The ALIVE nodes of ``deployment``, sorted by node id.

        :returns: ``list[NodeInfo]``
        """

    def subscribe(observer: Callable[[NodeMapChange], None]) -> Callable[[], None]:
        """Call ``observer(change)`` for every change from now on.

        :param observer: takes a ``NodeMapChange``; it must not raise (an
            exception is logged and does not stop other observers).
        :returns: a no-argument callable that unsubscribes.
        """


class ILink(Interface):
    """This node's outgoing connection to one peer (``fastedge.mesh.peer.Link``).

    It reconnects by itself (with backoff) until stopped, logs in on every
    connection, and tells the membership when it is up or down.
    """

    peer_id = Attribute("The node id it connects to; ``None`` for a seed not yet reached.")
    address = Attribute("``(host, port)`` it connects to.")
    up = Attribute("Whether it is connected and logged in.")

    def call(method: str, *args: Any) -> Deferred[Any]:
        """Call ``method`` on the peer's session.

        :returns: a ``Deferred`` of the answer; it fails with
            ``fastedge.mesh.peer.LinkDown`` when the link is not up.
        """

    def adopt(peer_id: str) -> None:
        """A seed link now knows its peer: later logins must prove this id."""

    def abort(reason: str, detail: str) -> None:
        """Drop the current connection (it reconnects later)."""

    def stop() -> Deferred[None]:
        """Stop for good; the ``Deferred`` fires once the connection is closed."""


class IPeerSession(Interface):
    """A logged-in peer's session on this node (``fastedge.mesh.peer.PeerAvatar``):
    what a handler's remote call receives as its first argument.

    Sessions are hashable and live as long as the peer's connection to
    this node: a handler may key its state by them and forget it in
    :meth:`IMeshHandler.session_closed`.
    """

    node_id = Attribute("The calling node's id (proved by its certificate).")
    incarnation = Attribute("The life of the calling node that logged in.")

    def call_back(method: str, *args: Any) -> Deferred[Any]:
        """Call ``method`` (a handler's callback) on the peer, over the
        connection it opened to this node, in order with earlier calls.

        :returns: a ``Deferred`` of the answer; it fails with
            ``fastedge.mesh.peer.LinkDown`` when the connection is gone, or
            when ``mesh.max_pending_calls`` calls await an answer (the
            connection is then dropped: the peer re-syncs when it is back).
        """

    def abort(reason: str, detail: str) -> None:
        """Drop the peer's connection, counted under ``reason``."""


class IMesh(Interface):
    """What a registered :class:`IMeshHandler` sees of the mesh (given to
    :meth:`IMeshHandler.attach` when the mesh starts)."""

    node_id = Attribute("This node's id.")
    deployment = Attribute("This node's deployment: handlers talk only within it.")
    node_map = Attribute("The live node map (:class:`INodeMap`).")
    reactor = Attribute("The reactor (``callLater(0, ...)`` ends the turn).")
    clock = Attribute("The timers' clock (``IReactorTime``).")
    leaving = Attribute("Whether this node is stopping (it owns nothing any more).")

    def monotonic() -> float:
        """The mesh's monotonic clock, in seconds."""

    def peers() -> list[str]:
        """The ids of the known peers of this node's deployment, in any state."""

    def link_to(node_id: str) -> ILink | None:
        """This node's link to a peer of its deployment if it is up, else ``None``."""

    def call(link: ILink, method: str, *args: Any) -> Deferred[Any]:
        """Call a handler's remote call ``method`` on a peer over ``link``
        (counted as mesh work in flight until answered).

        :returns: the answer's ``Deferred``; see :meth:`ILink.call`.
        """

    def watch(d: Deferred[Any], call: str, peer: str | None) -> None:
        """A call whose answer nobody waits for: its failure is logged and
        counted by ``call`` (``fastedge_mesh_call_failures_total``)."""


class IMeshHandler(Interface):
    """A feature that talks to the peers of its deployment over the mesh
    (``docs/mesh-handlers.md``). The mesh carries its calls and applies to
    every one of them the checks it applies to its own: the caller is a
    logged-in, current node of this node's deployment, its arguments are
    made of plain values and the handler's ``message_types`` only, and it
    stays under the connection's call rate and the handler's own.

    ``fastedge.mesh.handler.MeshHandler`` is a base class with every hook
    empty.
    """

    name = Attribute("A short name for logs and metrics (``relay``, ``media``).")
    remote_calls = Attribute(
        "``Mapping[str, Callable[..., object]]``: the calls peers make on this node, by wire name. "
        "Each is called as ``fn(session, *args)`` with the caller's :class:`IPeerSession` and may return "
        "a value or a ``Deferred`` (the answer), or raise ``fastedge.mesh.messages.BadMessage`` (the peer "
        "is disconnected) or ``Refused`` (the peer gets the error)."
    )
    callbacks = Attribute(
        "``Mapping[str, Callable[..., object]]``: the calls peers make back over this node's link to them "
        "(answers to :meth:`IPeerSession.call_back`), called as ``fn(link, *args)``."
    )
    message_types = Attribute(
        "``Sequence[type]``: registered message classes (``fastedge.mesh.messages.register``) its calls "
        "carry, admitted by the mesh's type allow-list while the handler is registered."
    )
    max_calls_per_second = Attribute(
        "``float | None``: this handler's calls a peer may make per second (bursts of twice as many), "
        "over the connection's own limit; excess calls are refused and counted."
    )

    def attach(mesh: IMesh) -> None:
        """The mesh started (its membership exists): start working."""

    def link_up(node_id: str, link: ILink) -> None:
        """This node's link to a peer came (back) up."""

    def peer_gone(node_id: str) -> None:
        """A peer's life ended (it left, died, or restarted as a new incarnation)."""

    def session_closed(session: IPeerSession) -> None:
        """A peer's session here closed: forget what is kept for it."""

    def tick() -> None:
        """Periodic work, every detector tick (``mesh.heartbeat_seconds`` / 5)."""

    def refused(call: str, reason: str) -> None:
        """The mesh refused a peer's call to this handler (``deployment``,
        ``rate``, ``bad_message``): for the handler's own metrics."""
