# -*- test-case-name: tests.unit.mesh.test_nodemap -*-
"""The live node map: pure state and observers, no reactor.

The mesh's membership protocol calls :meth:`NodeMap.upsert` and
:meth:`NodeMap.set_state`; everything else reads and subscribes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from twisted.logger import Logger
from zope.interface import implementer

from .interfaces import INodeMap


class NodeState(enum.Enum):
    """What this node believes of another (or of itself)."""

    ALIVE = "alive"
    #: Silent past the suspect timeout; not answered by DNS.
    SUSPECT = "suspect"
    DEAD = "dead"
    #: Said goodbye; withdrawn at once.
    LEAVING = "leaving"


@dataclass(frozen=True)
class NodeInfo:
    """What a node announces of itself, and its state as seen here."""

    node_id: str
    deployment: str
    region: str
    latitude: float
    longitude: float
    #: Public IPv4 and IPv6 addresses, for DNS answers.
    addresses: tuple[str, ...]
    version: str
    #: A restarted node comes back with a higher incarnation and supersedes
    #: everything known of its former self.
    incarnation: int
    #: Current load (live connections).
    load: int = 0
    state: NodeState = NodeState.ALIVE


@dataclass(frozen=True)
class NodeMapChange:
    """One change: ``before`` is ``None`` for a new node."""

    version: int
    before: NodeInfo | None
    after: NodeInfo


@implementer(INodeMap)
class NodeMap:
    """:class:`INodeMap` as plain in-memory state."""

    _log = Logger()

    def __init__(self) -> None:
        self.version = 0
        self._nodes: dict[str, NodeInfo] = {}
        self._observers: list[Callable[[NodeMapChange], None]] = []

    def nodes(self) -> Mapping[str, NodeInfo]:
        return dict(self._nodes)

    def live(self, deployment: str) -> list[NodeInfo]:
        return sorted(
            (n for n in self._nodes.values() if n.deployment == deployment and n.state is NodeState.ALIVE),
            key=lambda n: n.node_id,
        )

    def subscribe(self, observer: Callable[[NodeMapChange], None]) -> Callable[[], None]:
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def upsert(self, info: NodeInfo) -> bool:
        """Record what a node announced. An announcement of an older
        incarnation than the one known is ignored.

        :returns: whether the map changed.
        """
        before = self._nodes.get(info.node_id)
        if before is not None and (info.incarnation < before.incarnation or info == before):
            return False
        self._change(before, info)
        return True

    def set_state(self, node_id: str, state: NodeState, incarnation: int | None = None) -> bool:
        """Change a known node's state (for ``incarnation``, if given: a
        verdict on an older incarnation does not touch a newer one).

        :returns: whether the map changed.
        """
        before = self._nodes.get(node_id)
        if before is None or before.state is state:
            return False
        if incarnation is not None and incarnation != before.incarnation:
            return False
        self._change(before, replace(before, state=state))
        return True

    def _change(self, before: NodeInfo | None, after: NodeInfo) -> None:
        self._nodes[after.node_id] = after
        self.version += 1
        change = NodeMapChange(self.version, before, after)
        for observer in list(self._observers):
            try:
                observer(change)
            except Exception:
                self._log.failure("node map observer {observer!r} failed", observer=observer)
