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
