"""GeoDNS for tests: a GeoIP database of known places, DNS queries shaped
like ``dig``'s, and a harness that answers them on a Clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from .fakes import EPOCH, CapturingDatagramTransport, run_inline

#: Points used across the GeoDNS tests: (latitude, longitude, country, continent).
PLACES: dict[str, tuple[float, float, str, str]] = {
    "london": (51.5072, -0.1276, "GB", "EU"),
    "frankfurt": (50.1109, 8.6821, "DE", "EU"),
    "new-york": (40.7128, -74.0060, "US", "NA"),
    "tokyo": (35.6762, 139.6503, "JP", "AS"),
    "sydney": (-33.8688, 151.2093, "AU", "OC"),
}


def write_geo_db(
    path: str,
    networks: Mapping[str, tuple[float, float, str, str]],
    *,
    ip_version: int = 6,
) -> str:
    """Write a small MaxMind DB of the GeoIP2-City shape with ``mmdb-writer``.

    :param networks: CIDR -> (latitude, longitude, country, continent).
    :returns: ``path``.
    """
    from ..cluster.geodb import write_geo_db as write_cities
    from ..cluster.plan import City

    cities = {cidr: City("", lat, lon, country, continent) for cidr, (lat, lon, country, continent) in networks.items()}
    return write_cities(path, cities, ip_version=ip_version)


def dns_query(
    name: str,
    rdtype: str = "A",
    *,
    ecs: str | None = None,
    edns: bool | int = False,
    qid: int = 4242,
    tcp: bool = False,
) -> bytes:
    """A query in wire format (built with dnspython).

    :param ecs: ``"81.2.69.0/24"``: an EDNS Client Subnet option (implies EDNS).
    :param edns: ``True`` or a UDP payload size: add an OPT record.
    """
    import dns.edns
    import dns.message

    options: list[dns.edns.Option] = []
    if ecs is not None:
        address, prefix = ecs.split("/")
        options.append(dns.edns.ECSOption(address, int(prefix)))
    use_edns = edns is not False or ecs is not None
    payload = edns if isinstance(edns, int) and not isinstance(edns, bool) else 1232
    if use_edns:
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=payload, options=options)
    else:
        q = dns.message.make_query(name, rdtype, use_edns=False)
    q.id = qid
    q.flags &= ~0x0100  # no RD: we are asked as an authority
    return bytes(q.to_wire())


def dns_response(data: bytes) -> Any:
    """Parse a response with dnspython (``dns.message.Message``)."""
    import dns.message

    return dns.message.from_wire(data)


class DnsHarness:
    """A GeoDNS server over a real NodeMap and (optionally) a real GeoIP
    index, queried in memory, synchronously.

    :ivar node_map: change it by hand (upsert, set_state) as the mesh will.
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        *,
        nodes: Any = (),
        geo_db: str | None = None,
        policy: Any = None,
        **dns_overrides: Any,
    ) -> None:
        from fastedge.config import DnsConfig, GeoConfig, derive_zone
        from fastedge.dns.metrics import DnsStats
        from fastedge.dns.policy import NearestLive
        from fastedge.dns.server import EdgeDatagramProtocol
        from fastedge.dns.service import build_server
        from fastedge.geo.service import GeoService
        from fastedge.mesh.nodemap import NodeMap
        from fastedge.metrics.registry import new_registry

        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.node_map = NodeMap()
        for node in nodes:
            self.node_map.upsert(node)
        self.geo = None
        registry = new_registry()
        if geo_db is not None:
            self.geo = GeoService(
                GeoConfig(database=geo_db, request_file=geo_db + ".request"),
                reactor=self.clock,
                registry=registry,
                run=run_inline,
            )
            self.geo.privilegedStartService()
        if "zones" in dns_overrides:
            dns_overrides["zones"] = tuple(derive_zone(z) for z in dns_overrides["zones"])
        else:
            dns_overrides["zones"] = tuple(derive_zone(z) for z in DnsConfig().zones)
        self.config = dataclasses.replace(DnsConfig(), **dns_overrides)
        self.stats = DnsStats()
        self.factory, self.table = build_server(
            self.config,
            clock=self.clock,
            node_map=self.node_map,
            geo=self.geo,
            policy=policy or NearestLive(),
            stats=self.stats,
        )
        self.transport = CapturingDatagramTransport()
        self.udp = EdgeDatagramProtocol(self.factory, reactor=self.clock)
        self.udp.transport = self.transport  # type: ignore[assignment]

    def send(self, data: bytes, source: str = "198.51.100.7") -> bytes | None:
        """Send one datagram; the answer (``None`` when none was sent)."""
        before = len(self.transport.written)
        self.udp.datagramReceived(data, (source, 53000))
        written = self.transport.written[before:]
        if not written:
            return None
        ((answer, address),) = written
        assert address == (source, 53000)
        return answer

    def ask(self, name: str, rdtype: str = "A", *, source: str = "198.51.100.7", **kw: Any) -> Any:
        """Query and parse the answer (dnspython ``Message``)."""
        answer = self.send(dns_query(name, rdtype, **kw), source)
        assert answer is not None, "no answer"
        return dns_response(answer)

    def addresses(self, name: str, rdtype: str = "A", **kw: Any) -> list[str]:
        """The addresses answered, in order."""
        response = self.ask(name, rdtype, **kw)
        return [rr.address for rrset in response.answer for rr in rrset]
