"""fastedge's GeoDNS server alone, for bench/geodns: the node's ``dns`` and
``geo`` children over a node map of several PoPs (what the mesh will fill
in), on one port. Prints ``ready`` once it answers.

    python bench/geodns_server.py PORT DB_PATH POPS_JSON
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from fastedge.config import DnsConfig, GeoConfig, ZoneConfig, derive_zone
    from fastedge.dns import service as dns_service
    from fastedge.geo.service import GeoService
    from fastedge.mesh.nodemap import NodeInfo, NodeMap
    from fastedge.metrics.registry import new_registry

    port, db, pops = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    node_map = NodeMap()
    for pop in pops:
        node_map.upsert(
            NodeInfo(
                node_id=pop["id"],
                deployment="global",
                region=pop["id"],
                latitude=pop["lat"],
                longitude=pop["lon"],
                addresses=(pop["address"],),
                version="bench",
                incarnation=1,
            )
        )
    registry = new_registry()
    geo = GeoService(
        GeoConfig(database=db, request_file=db + ".request"),
        reactor=reactor,
        registry=registry,
    )
    # One client (dnsperf) sends everything: no per-source limit, as the
    # peers have none.
    cfg = DnsConfig(
        port=port,
        source_rate_limit=0,
        zones=(derive_zone(ZoneConfig(name="fastedge.test", deployment="global", geo_names=("edge",))),),
    )
    service = dns_service.make_service(cfg, reactor=reactor, registry=registry, node_map=node_map, geo=geo)
    geo.privilegedStartService()
    geo.startService()
    service.privilegedStartService()
    service.startService()
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
