# -*- test-case-name: tests.unit.dns.test_server,tests.integration.test_geodns -*-
"""The ``dns`` child: the authoritative server on UDP and TCP."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application import internet
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString

from ..config import DnsConfig
from ..geo.interfaces import IGeoLocator
from ..mesh.interfaces import INodeMap
from .answers import AnswerTable, ClientLocator
from .authority import EdgeAuthority
from .fastpath import FastPath
from .interfaces import IAnswerPolicy
from .metrics import DnsStats, register
from .policy import load_policy
from .server import EdgeDatagramProtocol, EdgeServerFactory


class DnsService(MultiService):
    """The UDP and TCP listeners of one :class:`EdgeServerFactory`.

    :ivar factory: the server (tests query it in memory).
    """

    def __init__(self, factory: EdgeServerFactory, table: AnswerTable) -> None:
        super().__init__()
        self.factory = factory
        self._table = table

    def stopService(self) -> Deferred[None]:
        d: Deferred[None] = super().stopService()
        self._table.close()
        return d


def _tcp_endpoint(interface: str, port: int) -> str:
    return "tcp:{}:interface={}".format(port, interface.replace(":", "\\:"))


def build_server(
    cfg: DnsConfig,
    *,
    clock: Any,
    node_map: INodeMap,
    geo: IGeoLocator | None,
    policy: IAnswerPolicy,
    stats: DnsStats,
) -> tuple[EdgeServerFactory, AnswerTable]:
    """The server for ``cfg`` over ``node_map`` and ``geo`` (no listeners)."""
    table = AnswerTable(
        node_map,
        policy,
        count=cfg.answers,
        default_region=cfg.default_region,
        cell_degrees=cfg.cell_degrees,
    )
    locator = ClientLocator(geo, cell_degrees=cfg.cell_degrees, entries=cfg.location_cache_entries)
    authority = EdgeAuthority(
        cfg.zones,
        ttl=cfg.ttl,
        table=table,
        locator=locator,
        negative_ttl=cfg.negative_ttl,
        stale_ttl=cfg.stale_ttl,
    )
    fast = FastPath(
        authority,
        table,
        locator,
        stats,
        ttl=cfg.ttl,
        max_udp_payload=cfg.max_udp_payload,
        response_entries=cfg.location_cache_entries,
        stale_ttl=cfg.stale_ttl,
    )
    factory = EdgeServerFactory(
        authority,
        fast,
        stats,
        clock=clock,
        max_udp_payload=cfg.max_udp_payload,
        tcp_idle_seconds=cfg.tcp_idle_seconds,
        source_rate_limit=cfg.source_rate_limit,
    )
    return factory, table


def make_service(
    cfg: DnsConfig,
    *,
    reactor: Any,
    registry: CollectorRegistry,
    node_map: INodeMap,
    geo: IGeoLocator | None,
    policy: IAnswerPolicy | None = None,
) -> DnsService:
    """The ``dns`` child: listens on ``cfg.interface:cfg.port``, UDP and TCP.

    Both bind in ``privilegedStartService`` (port 53 works with ``--uid``).

    :param policy: the answer policy; default: the one ``cfg.policy`` names.
    """
    stats = DnsStats()
    factory, table = build_server(
        cfg,
        clock=reactor,
        node_map=node_map,
        geo=geo,
        policy=policy or load_policy(cfg.policy),
        stats=stats,
    )
    register(
        registry,
        stats,
        lambda: {
            "fastedge_dns_node_map_version": ("gauge", float(table.version)),
            "fastedge_dns_location_lookups": (
                "counter",
                float(factory.authority.locator.lookups),
            ),
        },
    )
    top = DnsService(factory, table)
    udp = internet.UDPServer(
        cfg.port,
        EdgeDatagramProtocol(factory, reactor=reactor),
        interface=cfg.interface,
        reactor=reactor,
    )
    udp.setName("udp")
    udp.setServiceParent(top)
    tcp = internet.StreamServerEndpointService(
        serverFromString(reactor, _tcp_endpoint(cfg.interface, cfg.port)), factory
    )
    tcp._raiseSynchronously = True  # a port in use fails `twistd` loudly
    tcp.setName("tcp")
    tcp.setServiceParent(top)
    return top
