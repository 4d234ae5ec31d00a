"""The tenant directory across deployments, over a real (in-memory) mesh:
two deployments, each with its own store."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from fastedge.residency.peers import DirectoryPeers
from fastedge.store.model import ReadPreference
from fastedge.testing.mesh import MemoryMesh
from fastedge.testing.stores import sqlite_store


class DirectoryPeersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mesh = MemoryMesh(self)
        self.peers: dict[str, DirectoryPeers] = {}
        self.stores: dict[str, Any] = {}
        for node_id, deployment in (("g1", "global"), ("e1", "eu"), ("e2", "eu")):
            store = self.stores.get(deployment)
            if store is None:
                store = self.stores[deployment] = sqlite_store(
                    os.path.join(os.path.abspath(self.mktemp()) + ".sqlite3"), clock=self.mesh.clock
                )
                self.addCleanup(store.close)
            service = self.mesh.add(node_id, deployment=deployment, start=False)
            self.peers[node_id] = DirectoryPeers(store, deployment=deployment)
            service.register(self.peers[node_id])
            service.privilegedStartService()
            service.startService()
            self.mesh.network.flush()
        self.mesh.advance(3.0)
        primary = ReadPreference.PRIMARY
        eu = self.stores["eu"]
        self.eu_tenant = self.successResultOf(eu.create_tenant("EU", "eu", created_ms=0, read_preference=primary))
        # A shared store's tenant of a third deployment is not eu's to claim.
        self.other = self.successResultOf(eu.create_tenant("X", "apac", created_ms=0, read_preference=primary))

    def ask(self, node_id: str, tenant_id: str) -> Any:
        d = self.peers[node_id].deployment_of(tenant_id)
        self.mesh.advance(0.1)
        return self.successResultOf(d)

    def test_other_deployment_claims_its_tenant(self) -> None:
        self.assertEqual(self.ask("g1", self.eu_tenant.value.id), "eu")

    def test_nobody_claims(self) -> None:
        self.assertIsNone(self.ask("g1", "no-such-tenant"))
        self.assertIsNone(self.ask("g1", self.other.value.id))

    def test_own_deployment_is_not_asked(self) -> None:
        """e1 asks only other deployments (g1, whose store lacks it): its own
        tenants are its own store's business."""
        self.assertIsNone(self.ask("e1", self.eu_tenant.value.id))

    def test_other_handlers_stay_within_a_deployment(self) -> None:
        """Only this handler crosses: the relay-style deployment check still
        holds for every other handler (tests/unit/mesh/test_handler.py), and
        this one is the only one marked so."""
        self.assertTrue(DirectoryPeers.cross_deployment)
        from fastedge.mesh.handler import MeshHandler

        self.assertFalse(MeshHandler.cross_deployment)
