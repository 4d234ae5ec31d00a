"""``GET /api/v1/mesh`` and the mesh in ``/healthz``."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fastedge.testing.mesh import mesh_pair
from tests.support.nodes import NodeHarness


class MeshRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mesh, self.a, self.b = mesh_pair(self)
        self.mesh.advance(1.0)
        self.node = NodeHarness(self, mesh=self.a)

    def test_node_map(self) -> None:
        """The route answers the node's map as JSON, not cached."""
        response = self.node.client().get("/api/v1/mesh")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("cache-control"), "no-store")
        body = response.json
        self.assertEqual(body, self.a.status())
        self.assertEqual(
            [(n["nodeId"], n["state"]) for n in body["nodes"]],
            [("a", "alive"), ("b", "alive")],
        )

    def test_follows_changes(self) -> None:
        """The answer is the map now: a node that left shows as leaving."""
        self.mesh.stop("b")
        body = self.node.client().get("/api/v1/mesh").json
        self.assertEqual(
            [(n["nodeId"], n["state"]) for n in body["nodes"]],
            [("a", "alive"), ("b", "leaving")],
        )

    def test_read_only(self) -> None:
        """Only GET (and HEAD) are served; query parameters are refused."""
        client = self.node.client()
        response = client.post("/api/v1/mesh", json_body={})
        self.assertEqual((response.code, response.json["error"]["code"]), (405, "method_not_allowed"))
        self.assertEqual(response.header("allow"), "GET")
        response = client.get("/api/v1/mesh?x=1")
        self.assertEqual((response.code, response.json["error"]["code"]), (400, "bad_query"))
        self.assertEqual(client.request("HEAD", "/api/v1/mesh").code, 200)

    def test_health_shows_the_mesh(self) -> None:
        """/healthz carries the mesh's peers by state; it does not decide the
        status (a node cut off from its peers still serves its clients)."""
        self.mesh.crash("b")
        self.mesh.advance(3.0)
        response = self.node.client().get("/healthz")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.json["mesh"],
            {
                "incarnation": 1,
                "peers": {"alive": 0, "suspect": 0, "dead": 1, "leaving": 0},
            },
        )
