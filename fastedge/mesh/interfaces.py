"""Interfaces of the mesh that other children depend on."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:  # nodemap imports this module
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
