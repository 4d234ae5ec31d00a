"""Example answer policy plugin: the least-loaded live nodes first.

What an operator would put in a ``twisted/plugins/`` directory of their own
package; ``dns.policy = "least-loaded"`` selects it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import provider

from fastedge.dns.interfaces import IAnswerPolicy


@provider(IPlugin, IAnswerPolicy)
class LeastLoaded:
    """Nodes with the fewest live connections first (ties by node id); the
    client's location is not used."""

    name = "least-loaded"

    @staticmethod
    def choose(nodes: Sequence[Any], client: Any, count: int, default_region: str) -> Sequence[Any]:
        return sorted(nodes, key=lambda n: (n.load, n.node_id))


least_loaded = LeastLoaded
