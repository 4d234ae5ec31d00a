"""GeoDNS answers from the mesh's live node map: a node that dies or leaves
stops being answered, without polling (nodes in memory, one Clock)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fastedge.dns.answers import AnswerTable
from fastedge.dns.policy import NearestLive
from fastedge.testing.mesh import MemoryMesh


class DnsFollowsTheMeshTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mesh = MemoryMesh(self)
        for node_id in ("a", "b", "c"):
            self.mesh.add(node_id)
        self.mesh.add("e", deployment="eu")
        self.mesh.advance(1.0)
        self.table = AnswerTable(
            self.mesh.nodes["a"].node_map, NearestLive(), count=3, default_region="local", cell_degrees=1.0
        )
        self.addCleanup(self.table.close)

    def answered(self, deployment: str = "global") -> list[str]:
        return sorted(address for address, _ in self.table.choose(deployment, 4, None).addresses)

    def test_every_live_node_of_the_deployment(self) -> None:
        """Node a answers with every ALIVE node of a deployment, its own
        included, and never with another deployment's."""
        hosts = self.mesh.hosts
        self.assertEqual(self.answered(), sorted([hosts["a"], hosts["b"], hosts["c"]]))
        self.assertEqual(self.answered("eu"), [hosts["e"]])

    def test_dead_and_leaving_nodes_are_withdrawn(self) -> None:
        """A crashed node leaves the answers once it is SUSPECT (within the
        suspect timeout); a cleanly stopped one at once."""
        hosts = self.mesh.hosts
        self.mesh.crash("c")
        self.mesh.advance(1.7)
        self.assertEqual(self.answered(), sorted([hosts["a"], hosts["b"]]))
        self.mesh.stop("b")
        self.assertEqual(self.answered(), [hosts["a"]])
