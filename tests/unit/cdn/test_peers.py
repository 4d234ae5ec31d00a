"""Media calls between mesh nodes (``fastedge.cdn.peers``) over the
in-memory mesh: who may make them, and what bad ones get."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from fastedge.cdn.peers import MeshMedia, PeerMetrics
from fastedge.mesh.messages import Refused
from fastedge.testing.mesh import MemoryMesh


class _Purges:
    """A CDN that records the purges it is told to apply (the receiving end
    of ``media_purge``; a whole-node test covers the real cache)."""

    tenants: dict[str, Any] = {}

    def __init__(self) -> None:
        self.applied: list[tuple[str, str, str, bool]] = []

    def apply_purge(self, tenant: str, kind: str, value: str, *, remote: bool = False) -> int:
        self.applied.append((tenant, kind, value, remote))
        return 0


class MeshMediaTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mesh = MemoryMesh(self)
        self.cdns: dict[str, _Purges] = {}
        self.media: dict[str, MeshMedia] = {}
        for node_id, deployment in (("a", "global"), ("b", "global"), ("x", "other")):
            service = self.mesh.add(node_id, deployment=deployment, start=False)
            self.cdns[node_id] = _Purges()
            media = MeshMedia(self.cdns[node_id], metrics=PeerMetrics(self.mesh.registries[node_id]))
            service.register(media)
            self.media[node_id] = media
            service.privilegedStartService()
            service.startService()
            self.mesh.network.flush()
        self.mesh.advance(1.0)

    def call(self, source: str, target: str, method: str, *args: Any) -> Any:
        link = self.mesh.nodes[source].membership.peers[target].link
        d = link.call(method, *args)
        self.mesh.network.flush()
        return d

    def test_purge_goes_to_the_deployment_only(self) -> None:
        """A broadcast purge is applied (as remote) on the other node of the
        deployment and never reaches the node of another deployment."""
        self.media["a"].broadcast("t1", "prefix", "img/")
        self.mesh.network.flush()
        self.assertEqual(self.cdns["b"].applied, [("t1", "prefix", "img/", True)])
        self.assertEqual(self.cdns["x"].applied, [])

    def test_call_from_another_deployment_is_refused(self) -> None:
        """A node of another deployment cannot purge or read here: the call
        is refused and counted."""
        failure = self.failureResultOf(self.call("x", "a", "media_purge", "t1", "key", "k"), Refused)
        self.assertIn("deployment", failure.getErrorMessage())
        self.failureResultOf(self.call("x", "a", "media_has", "t1", "k"), Refused)
        self.assertEqual(self.cdns["a"].applied, [])
        registry = self.mesh.registries["a"]
        self.assertEqual(registry.get_sample_value("fastedge_mesh_media_refused_total", {"reason": "deployment"}), 2)

    def test_bad_purge_is_refused(self) -> None:
        """A malformed purge (an unknown kind) is a protocol violation, as
        any bad mesh message: the connection is dropped, the violation
        counted, and nothing is applied."""
        self.failureResultOf(self.call("b", "a", "media_purge", "t1", "everything", "k"))
        self.assertEqual(self.cdns["a"].applied, [])
        registry = self.mesh.registries["a"]
        self.assertEqual(registry.get_sample_value("fastedge_mesh_media_refused_total", {"reason": "bad_message"}), 1)

    def test_purge_waits_for_a_peer_that_is_down(self) -> None:
        """A purge made while the link to a peer is down is sent once the
        link is back up."""
        net = self.mesh.network
        hosts = self.mesh.host("a"), self.mesh.host("b")
        net.block(*hosts)
        net.cut(*hosts)
        self.media["a"].broadcast("t1", "key", "k")
        net.flush()
        self.assertEqual(self.cdns["b"].applied, [])
        self.assertEqual(self.mesh.registries["a"].get_sample_value("fastedge_mesh_media_purge_queue", {}), 1)
        net.unblock(*hosts)
        self.mesh.advance(5.0)
        self.assertEqual(self.cdns["b"].applied, [("t1", "key", "k", True)])
        self.assertEqual(self.mesh.registries["a"].get_sample_value("fastedge_mesh_media_purge_queue", {}), 0)
