"""What DNS answers for a deployment with no live node (its lone node died,
or is drained for an upgrade), and the short negative-caching TTL of geo
names (docs/geodns.md, "A deployment with no live node")."""

from __future__ import annotations

import os

import dns.rcode
import dns.rdatatype
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import ZoneConfig
from fastedge.dns.authority import Client
from fastedge.mesh.nodemap import NodeState
from fastedge.testing.dns import PLACES, DnsHarness, write_geo_db
from fastedge.testing.mesh import node_info

GEO = {"81.2.69.0/24": PLACES["london"]}
ZONES = (
    ZoneConfig(name="edge.example.test", deployment="global", geo_names=("@", "www")),
    ZoneConfig(name="eu.edge.example.test", deployment="eu", geo_names=("@", "live")),
)
LON = node_info("lon", "london", addresses=("192.0.2.10",))
EU = node_info("eu-1", "frankfurt", deployment="eu", addresses=("192.0.2.50", "2001:db8::50"))


class LoneDeploymentTests(SynchronousTestCase):
    def harness(self, nodes=(LON, EU)) -> DnsHarness:  # type: ignore[no-untyped-def]
        db = write_geo_db(os.path.abspath(self.mktemp()), GEO)
        return DnsHarness(self, nodes=nodes, geo_db=db, zones=ZONES)

    def general(self, h: DnsHarness, name: str, qtype: int = tdns.A) -> list[tdns.RRHeader]:
        """The general (twisted.names) path's answer records."""
        return h.factory.authority.resolve(name, qtype, tdns.IN, Client("81.2.69.7")).answers

    def test_lone_node_dead_keeps_its_address_briefly(self) -> None:
        """When the deployment's only node dies, its geo names keep answering
        that node's addresses (never another deployment's), with
        ``dns.stale_ttl`` instead of ``dns.ttl``: resolvers ask again soon,
        and the node is answered normally again as soon as it is back."""
        h = self.harness()
        self.assertEqual(h.config.stale_ttl, 5)
        live = h.ask("eu.edge.example.test", ecs="81.2.69.0/24")
        self.assertEqual(live.answer[0].ttl, h.config.ttl)
        h.node_map.set_state("eu-1", NodeState.DEAD)
        for name in ("eu.edge.example.test", "live.eu.edge.example.test"):
            response = h.ask(name, ecs="81.2.69.0/24")
            self.assertEqual(response.rcode(), dns.rcode.NOERROR)
            self.assertEqual([rr.address for rr in response.answer[0]], ["192.0.2.50"])
            self.assertEqual(response.answer[0].ttl, 5)
        six = h.ask("eu.edge.example.test", "AAAA")
        self.assertEqual(([rr.address for rr in six.answer[0]], six.answer[0].ttl), (["2001:db8::50"], 5))
        # The general path answers the same (ANY takes it).
        records = self.general(h, "eu.edge.example.test")
        self.assertEqual([(r.payload.dottedQuad(), r.ttl) for r in records], [("192.0.2.50", 5)])
        any_answer = h.ask("eu.edge.example.test", "ANY")
        self.assertEqual(any_answer.answer[0].ttl, 5)
        # Back (a restart: a new incarnation) -> the normal TTL at once.
        h.node_map.upsert(node_info("eu-1", "frankfurt", deployment="eu", addresses=("192.0.2.50",)))
        back = h.ask("eu.edge.example.test", ecs="81.2.69.0/24")
        self.assertEqual(back.answer[0].ttl, h.config.ttl)
        # The global deployment was never affected.
        self.assertEqual(h.ask("edge.example.test").answer[0].ttl, h.config.ttl)

    def test_drained_lone_node(self) -> None:
        """A lone node drained (LEAVING) for an upgrade is the same case: its
        address stays answered with the short TTL until it is back."""
        h = self.harness()
        h.node_map.set_state("eu-1", NodeState.LEAVING)
        response = h.ask("eu.edge.example.test")
        self.assertEqual(([rr.address for rr in response.answer[0]], response.answer[0].ttl), (["192.0.2.50"], 5))

    def test_most_recently_live_nodes(self) -> None:
        """With several nodes going down one by one, the stale answer is the
        set that was live last (the last survivor), not every node ever seen."""
        other = node_info("eu-2", "london", deployment="eu", addresses=("192.0.2.60",))
        h = self.harness(nodes=(LON, EU, other))
        h.node_map.set_state("eu-1", NodeState.DEAD)
        h.node_map.set_state("eu-2", NodeState.DEAD)
        self.assertEqual(h.addresses("eu.edge.example.test"), ["192.0.2.60"])

    def test_never_live_is_nodata_with_a_short_negative_ttl(self) -> None:
        """A deployment never seen live has nothing to answer: NODATA, whose
        SOA (TTL and MINIMUM, RFC 2308) says ``dns.negative_ttl`` (5 s), not
        ``dns.ttl``, at geo names; other negative answers keep ``dns.ttl``."""
        h = self.harness(nodes=(LON,))
        response = h.ask("eu.edge.example.test", ecs="81.2.69.0/24")
        self.assertEqual((response.rcode(), response.answer), (dns.rcode.NOERROR, []))
        (soa,) = response.authority
        self.assertEqual(soa.rdtype, dns.rdatatype.SOA)
        self.assertEqual((soa.ttl, soa[0].minimum), (5, 5))
        txt = h.ask("eu.edge.example.test", "TXT")
        self.assertEqual(txt.authority[0].ttl, 5)
        missing = h.ask("nope.eu.edge.example.test")
        self.assertEqual(missing.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(missing.authority[0].ttl, h.config.ttl)
        self.assertEqual(missing.authority[0][0].minimum, h.config.ttl)
