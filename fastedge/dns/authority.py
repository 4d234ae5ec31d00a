# -*- test-case-name: tests.unit.dns.test_server -*-
"""The zones and what each name in them answers (the general path).

:class:`EdgeAuthority` is a ``twisted.names`` resolver (``ResolverBase``,
as ``FileAuthority`` is) over the configured zones. The server calls
:meth:`EdgeAuthority.resolve` with the client, so geo-routed names answer
for where the client is; ``_lookup`` (the plain ``IResolver`` entry point,
which knows no client) answers as for a client of unknown location.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import common, dns
from twisted.names.error import AuthoritativeDomainError, DomainError

from ..config import ZoneConfig, derive_zone
from .answers import AnswerTable, Cell, ClientLocator
from .wire import NOTIMP, NXDOMAIN, OK, REFUSED, ClientSubnet


@dataclass(frozen=True, slots=True)
class Client:
    """Who asks: the source address, and the ECS subnet when one was sent."""

    source: str
    ecs: ClientSubnet | None = None


@dataclass(slots=True)
class Resolution:
    """An answer before it is written: rcode and sections (Twisted records).

    :ivar scope: the ECS scope prefix to echo (0: not tailored to the client).
    :ivar nodes: ids of the nodes answered (for metrics).
    """

    rcode: int
    answers: list[dns.RRHeader] = field(default_factory=list)
    authority: list[dns.RRHeader] = field(default_factory=list)
    additional: list[dns.RRHeader] = field(default_factory=list)
    scope: int = 0
    nodes: tuple[str, ...] = ()


class Zone:
    """One configured zone: its apex records and the names that exist."""

    def __init__(self, cfg: ZoneConfig, ttl: int) -> None:
        # Defaults (ns1.<zone>, hostmaster.<zone>) when built from a config
        # that did not go through load_config.
        cfg = derive_zone(cfg)
        self.name = cfg.name
        self.deployment = cfg.deployment
        self.ttl = ttl
        self.geo: set[str] = set()
        for relative in cfg.geo_names:
            self.geo.add(self.name if relative == "@" else relative + "." + self.name)
        suffix = "." + self.name
        self.nameservers = cfg.nameservers
        # Every node serves DNS: NS names inside the zone answer like geo names.
        self.geo.update(ns for ns in cfg.nameservers if ns == self.name or ns.endswith(suffix))
        # Names that exist: owners, and the empty non-terminals above them.
        self.names: set[str] = {self.name}
        for owner in self.geo:
            labels = owner[: -len(suffix)].split(".") if owner != self.name else []
            for i in range(len(labels)):
                self.names.add(".".join(labels[i:]) + suffix)
        self.soa = dns.Record_SOA(
            mname=cfg.nameservers[0],
            rname=cfg.hostmaster,
            serial=cfg.serial,
            refresh=3600,
            retry=600,
            expire=604800,
            minimum=ttl,
            ttl=ttl,
        )

    def soa_rr(self) -> dns.RRHeader:
        """The SOA record at the apex."""
        return dns.RRHeader(self.name, dns.SOA, dns.IN, self.ttl, self.soa, auth=True)

    def negative_soa_rr(self, ttl: int) -> dns.RRHeader:
        """The SOA of a negative answer cached for ``ttl`` seconds at most
        (RFC 2308: the lower of the SOA's TTL and its MINIMUM)."""
        ttl = min(ttl, self.ttl)
        soa = copy.copy(self.soa)
        soa.minimum = ttl
        soa.ttl = ttl
        return dns.RRHeader(self.name, dns.SOA, dns.IN, ttl, soa, auth=True)

    def ns_rrs(self, owner: bytes | str) -> list[dns.RRHeader]:
        """The apex NS records (owner as asked)."""
        return [
            dns.RRHeader(
                owner,
                dns.NS,
                dns.IN,
                self.ttl,
                dns.Record_NS(ns, ttl=self.ttl),
                auth=True,
            )
            for ns in self.nameservers
        ]


class EdgeAuthority(common.ResolverBase):
    """Authoritative answers for the configured zones.

    :param table: the precomputed nearest-live answers.
    :param locator: client -> location cell.
    """

    def __init__(
        self,
        zones: Sequence[ZoneConfig],
        *,
        ttl: int,
        table: AnswerTable,
        locator: ClientLocator,
        negative_ttl: int | None = None,
        stale_ttl: int | None = None,
    ) -> None:
        """
        :param negative_ttl: the negative-caching TTL of a geo-routed name
            with nothing to answer (default ``ttl``).
        :param stale_ttl: the TTL of a deployment's most recently live nodes,
            answered while it has none live (default ``ttl``).
        """
        super().__init__()
        self.zones = {z.name: Zone(z, ttl) for z in zones}
        self.table = table
        self.locator = locator
        self.ttl = ttl
        self.negative_ttl = ttl if negative_ttl is None else negative_ttl
        self.stale_ttl = ttl if stale_ttl is None else stale_ttl

    def zone_for(self, name: str) -> Zone | None:
        """The most specific zone ``name`` (lower case) is in."""
        while True:
            zone = self.zones.get(name)
            if zone is not None:
                return zone
            if "." not in name:
                return None
            name = name.split(".", 1)[1]

    def geo_zone(self, name: str) -> Zone | None:
        """The zone of ``name`` when it is geo-routed there, else ``None``."""
        zone = self.zone_for(name)
        if zone is not None and name in zone.geo:
            return zone
        return None

    def cell(self, client: Client) -> tuple[Cell, int]:
        """The client's location cell and the ECS scope of answers for it."""
        if client.ecs is not None:
            return self.locator.by_subnet(client.ecs, client.source)
        return self.locator.by_address(client.source), 0

    def geo_records(
        self, zone: Zone, owner: bytes | str, qtype: int, client: Client
    ) -> tuple[list[dns.RRHeader], int, tuple[str, ...]]:
        """A or AAAA records of a geo-routed name for ``client``.

        :returns: the records, the ECS scope, the node ids answered.
        """
        cell, scope = self.cell(client)
        choice = self.table.choose(zone.deployment, 4 if qtype == dns.A else 6, cell)
        record = dns.Record_A if qtype == dns.A else dns.Record_AAAA
        ttl = self.stale_ttl if choice.stale else self.ttl
        rrs = [
            dns.RRHeader(owner, qtype, dns.IN, ttl, record(address, ttl=ttl), auth=True)
            for address, _node in choice.addresses
        ]
        return rrs, scope, tuple(n.node_id for n in choice.nodes)

    def resolve(self, owner: bytes | str, qtype: int, qclass: int, client: Client) -> Resolution:
        """Answer one question.

        :param owner: the name as asked (its case is kept in the answer).
        """
        name = (owner.decode("latin-1") if isinstance(owner, bytes) else owner).lower().rstrip(".")
        zone = self.zone_for(name)
        if zone is None or qclass != dns.IN or qtype in (dns.AXFR, dns.IXFR):
            # Not ours (or a zone transfer, which we do not offer).
            return Resolution(REFUSED)
        if qtype in (dns.MAILA, dns.MAILB):
            return Resolution(NOTIMP)
        if name not in zone.names:
            return Resolution(NXDOMAIN, authority=[zone.soa_rr()])
        answers: list[dns.RRHeader] = []
        additional: list[dns.RRHeader] = []
        scope = 0
        nodes: tuple[str, ...] = ()
        if name in zone.geo and qtype in (dns.A, dns.AAAA, dns.ALL_RECORDS):
            if qtype == dns.ALL_RECORDS:
                # RFC 8482: one RRset answers ANY.
                answers, scope, nodes = self.geo_records(zone, owner, dns.A, client)
                if not answers:
                    answers, scope, nodes = self.geo_records(zone, owner, dns.AAAA, client)
            else:
                answers, scope, nodes = self.geo_records(zone, owner, qtype, client)
        elif name == zone.name and qtype in (dns.SOA, dns.ALL_RECORDS):
            answers = [dns.RRHeader(owner, dns.SOA, dns.IN, self.ttl, zone.soa, auth=True)]
        elif name == zone.name and qtype == dns.NS:
            answers = zone.ns_rrs(owner)
            for ns in zone.nameservers:
                if ns in zone.geo:
                    for glue_type in (dns.A, dns.AAAA):
                        glue, glue_scope, _ = self.geo_records(zone, ns, glue_type, client)
                        additional.extend(glue)
                        scope = max(scope, glue_scope)
        if not answers:
            # NODATA. At a geo-routed name that may change within seconds (a
            # node of the deployment coming back): cached briefly.
            soa = zone.negative_soa_rr(self.negative_ttl) if name in zone.geo else zone.soa_rr()
            return Resolution(OK, authority=[soa], scope=scope)
        return Resolution(OK, answers, [], additional, scope, nodes)

    def _lookup(
        self, name: bytes, cls: int, type: int, timeout: object = None
    ) -> Deferred[tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]]:
        """``IResolver``: answer as for a client of unknown location."""
        result = self.resolve(name, type, cls, Client("0.0.0.0"))
        if result.rcode == NXDOMAIN:
            return fail(AuthoritativeDomainError(name))
        if result.rcode != OK:
            return fail(DomainError(name))
        return succeed((result.answers, result.authority, result.additional))
