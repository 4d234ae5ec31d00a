# -*- test-case-name: tests.unit.dns.test_server,tests.unit.mesh.test_dns_map -*-
"""Who a geo-routed name answers: precomputed per (deployment, address
family, location cell) for the node map's current version.

:class:`AnswerTable` observes the node map and forgets every answer the
moment the map changes (no polling), so the next query sees the new map.
:class:`ClientLocator` turns a client (source address or ECS subnet) into
its location cell, remembering each network it has located until the
GeoIP index is replaced. Together they make the hot path two dictionary
lookups.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from ..geo.interfaces import IGeoLocator
from ..geo.lookup import Location
from ..mesh.interfaces import INodeMap
from ..mesh.nodemap import NodeInfo, NodeMapChange
from .interfaces import IAnswerPolicy
from .wire import ClientSubnet

#: A location cell: ``(row, column)`` of the grid, or ``None`` (unknown).
Cell = tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class Choice:
    """The answer for one (deployment, family, cell)."""

    nodes: tuple[NodeInfo, ...]
    #: The addresses answered, in order, with the node each belongs to.
    addresses: tuple[tuple[str, str], ...]
    #: No node of the deployment is live: these are its most recently live
    #: nodes, answered with ``dns.stale_ttl`` (docs/geodns.md).
    stale: bool = False


def cell_of(location: Location | None, degrees: float) -> Cell:
    """The grid cell holding ``location``."""
    if location is None:
        return None
    return (
        math.floor(location.latitude / degrees),
        math.floor(location.longitude / degrees),
    )


def cell_centre(cell: Cell, degrees: float) -> Location | None:
    """The point every client of ``cell`` is answered for."""
    if cell is None:
        return None
    lat = max(-90.0, min(90.0, (cell[0] + 0.5) * degrees))
    lon = max(-180.0, min(180.0, (cell[1] + 0.5) * degrees))
    return Location(lat, lon)


def _family_of(address: str) -> int:
    return 6 if ":" in address else 4


class AnswerTable:
    """The nodes answered per (deployment, family, cell), for the current
    node map. ``listeners`` are told each time the table is emptied.

    A deployment with no live node (its only node died, or is drained for an
    upgrade) is answered with the nodes it had live most recently, marked
    :attr:`Choice.stale`, rather than with no address: a client then retries
    the node that is coming back, within the deployment's residency
    boundary, and sees it as soon as it is live again. Only a deployment
    never seen live here has nothing to answer.
    """

    _log = Logger()

    def __init__(
        self,
        node_map: INodeMap,
        policy: IAnswerPolicy,
        *,
        count: int,
        default_region: str,
        cell_degrees: float,
    ) -> None:
        self._map = node_map
        self._policy = policy
        self._count = count
        self._default_region = default_region
        self._degrees = cell_degrees
        self._choices: dict[tuple[str, int, Cell], Choice] = {}
        self.version = node_map.version
        self.listeners: list[Callable[[], None]] = []
        #: Per deployment, its live nodes the last time it had any.
        self._last_live: dict[str, tuple[NodeInfo, ...]] = {}
        for deployment in {n.deployment for n in node_map.nodes().values()}:
            self._remember_live(deployment)
        self._unsubscribe = node_map.subscribe(self._changed)

    def close(self) -> None:
        """Stop observing the node map."""
        self._unsubscribe()

    def _remember_live(self, deployment: str) -> None:
        live = self._map.live(deployment)
        if live:
            self._last_live[deployment] = tuple(live)

    def _changed(self, change: NodeMapChange) -> None:
        self._remember_live(change.after.deployment)
        if change.before is not None and change.before.deployment != change.after.deployment:
            self._remember_live(change.before.deployment)
        self._choices = {}
        self.version = change.version
        for listener in self.listeners:
            listener()

    def choose(self, deployment: str, family: int, cell: Cell) -> Choice:
        """The answer for clients of ``cell`` asking for ``family`` (4 or 6)
        addresses of ``deployment``'s nodes."""
        key = (deployment, family, cell)
        choice = self._choices.get(key)
        if choice is None:
            choice = self._compute(deployment, family, cell)
            self._choices[key] = choice
        return choice

    def _compute(self, deployment: str, family: int, cell: Cell) -> Choice:
        stale = False
        candidates = [n for n in self._map.live(deployment) if any(_family_of(a) == family for a in n.addresses)]
        if not candidates and not self._map.live(deployment):
            stale = True
            candidates = [
                n for n in self._last_live.get(deployment, ()) if any(_family_of(a) == family for a in n.addresses)
            ]
        if not candidates:
            return Choice((), ())
        try:
            ranked = list(
                self._policy.choose(
                    candidates,
                    cell_centre(cell, self._degrees),
                    self._count,
                    self._default_region,
                )
            )
        except Exception:
            # A broken plugin must not take DNS down: answer as the default
            # policy would without a location (any live nodes).
            self._log.failure(
                "answer policy {policy} failed",
                policy=getattr(self._policy, "name", self._policy),
            )
            ranked = candidates
        allowed = {n.node_id for n in candidates}
        chosen: list[NodeInfo] = []
        for node in ranked:
            # A policy may only pick among the live candidates.
            if node.node_id in allowed and node not in chosen:
                chosen.append(node)
            if len(chosen) == self._count:
                break
        addresses = tuple((a, n.node_id) for n in chosen for a in n.addresses if _family_of(a) == family)
        return Choice(tuple(chosen), addresses, stale)


class ClientLocator:
    """Client -> (cell, ECS scope prefix), remembered per network.

    :param geo: the GeoIP index (``None``: every location is unknown).
    :param entries: how many clients are remembered; past it the memory is
        emptied and refilled (cheap, and bounded under any traffic).
    """

    def __init__(self, geo: IGeoLocator | None, *, cell_degrees: float, entries: int) -> None:
        self._geo = geo
        self._degrees = cell_degrees
        self._entries = entries
        self._cache: dict[Any, tuple[Cell, int]] = {}
        self.lookups = 0
        #: Told each time the remembered locations are dropped.
        self.listeners: list[Callable[[], None]] = []
        if geo is not None:
            geo.subscribe(self.forget)

    def forget(self) -> None:
        """Drop every remembered location (a new GeoIP index is in use)."""
        self._cache = {}
        for listener in self.listeners:
            listener()

    def _locate(self, address: str) -> tuple[Cell, int]:
        self.lookups += 1
        if self._geo is None:
            return None, 0
        try:
            location, prefix = self._geo.locate(address)
        except ValueError:
            return None, 0
        return cell_of(location, self._degrees), prefix

    def _remember(self, key: Any, value: tuple[Cell, int]) -> tuple[Cell, int]:
        if len(self._cache) >= self._entries:
            self._cache = {}
        self._cache[key] = value
        return value

    def by_address(self, address: str) -> Cell:
        """The cell of a client known by its source address."""
        found = self._cache.get(address)
        if found is None:
            found = self._remember(address, self._locate(_unmapped(address)))
        return found[0]

    def by_subnet(self, ecs: ClientSubnet, source: str) -> tuple[Cell, int]:
        """The cell of an ECS subnet and the scope prefix to answer with.

        The scope is the prefix length of the GeoIP network that decided the
        answer (RFC 7871 §7.2.1: the answer holds for that whole network).
        A source prefix of 0 (the client opted out) is answered for the
        source address, with scope 0.
        """
        if ecs.source_prefix == 0:
            return self.by_address(source), 0
        key = (ecs.family, ecs.source_prefix, ecs.address)
        found = self._cache.get(key)
        if found is None:
            found = self._remember(key, self._locate(ecs.ip()))
        return found


def _unmapped(address: str) -> str:
    """``::ffff:a.b.c.d`` (an IPv4 client on a dual-stack socket) as IPv4."""
    if address.startswith("::ffff:") and "." in address:
        mapped = ipaddress.IPv6Address(address).ipv4_mapped
        if mapped is not None:
            return str(mapped)
    return address
