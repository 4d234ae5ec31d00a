# -*- test-case-name: tests.unit.mesh.test_drain -*-
"""Where a node's live clients go when it drains.

The live child of a node that goes away sends its clients a ``move``
message naming another node (``docs/live-protocol.md``): the nearest other
live node of the same deployment, as the mesh's node map sees it (the
clients of a node are near it; another deployment's nodes are never named,
for data residency). Ties go to the less loaded node, then the lower id.
"""

from __future__ import annotations

from collections.abc import Callable

from ..geo.distance import great_circle_km
from .interfaces import INodeMap
from .nodemap import NodeInfo

__all__ = ["successor_of"]


def successor_of(
    node_map: INodeMap, node_id: str, deployment: str, latitude: float, longitude: float
) -> Callable[[], tuple[str, tuple[str, ...]] | None]:
    """A function answering ``(node id, addresses)`` of the node the clients
    of node ``node_id`` should move to now, or ``None`` when no other node
    of ``deployment`` is alive."""

    def choose() -> tuple[str, tuple[str, ...]] | None:
        others = [n for n in node_map.live(deployment) if n.node_id != node_id]
        if not others:
            return None

        def rank(info: NodeInfo) -> tuple[float, int, str]:
            distance = great_circle_km(latitude, longitude, info.latitude, info.longitude)
            return (round(distance, 3), info.load, info.node_id)

        best = min(others, key=rank)
        return best.node_id, best.addresses

    return choose
