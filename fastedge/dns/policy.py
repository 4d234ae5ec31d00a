# -*- test-case-name: tests.unit.dns.test_policy -*-
"""The default answer policy (nearest live nodes) and loading a plugin one."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from ..geo.distance import great_circle_km
from ..geo.lookup import Location
from ..mesh.nodemap import NodeInfo
from .interfaces import IAnswerPolicy


@implementer(IAnswerPolicy)
class NearestLive:
    """The nodes nearest the client by great-circle distance (ties broken
    by node id). An unknown client gets the live nodes of the default
    region, else any live nodes, in node-id order."""

    name = "nearest-live"

    def choose(
        self,
        nodes: Sequence[NodeInfo],
        client: Location | None,
        count: int,
        default_region: str,
    ) -> Sequence[NodeInfo]:
        if client is None:
            regional = [n for n in nodes if default_region and n.region == default_region]
            return regional or list(nodes)
        return sorted(
            nodes,
            key=lambda n: (
                great_circle_km(client.latitude, client.longitude, n.latitude, n.longitude),
                n.node_id,
            ),
        )


class UnknownPolicy(ValueError):
    """``dns.policy`` names no built-in policy and no plugin."""


def load_policy(name: str, package: ModuleType | None = None) -> IAnswerPolicy:
    """The policy called ``name``: built in, or an ``IAnswerPolicy`` plugin.

    :param package: the plugin package searched (default ``twisted.plugins``).
    :raises UnknownPolicy: naming the policies that exist.
    """
    builtin = NearestLive()
    if name == builtin.name:
        return builtin
    found: dict[str, IAnswerPolicy] = {}
    for plugin in getPlugins(IAnswerPolicy, package):
        if IPlugin.providedBy(plugin):
            found[str(plugin.name)] = plugin
    if name in found:
        return found[name]
    raise UnknownPolicy(
        "dns.policy: no answer policy {!r} (known: {})".format(name, ", ".join(sorted([builtin.name, *found])))
    )
