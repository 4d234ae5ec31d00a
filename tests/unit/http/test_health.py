"""GET /healthz."""

from __future__ import annotations

import os

from treq.testing import StubTreq
from twisted.application.service import MultiService, Service
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from fastedge.http.health import HealthResource
from fastedge.store.sqlite import SQLiteStore
from fastedge.testing.fakes import run_inline


class HealthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.top = MultiService()
        for name in ("store", "transport"):
            child = Service()
            child.setName(name)
            child.setServiceParent(self.top)
        self.top.getServiceNamed("store").startService()
        self.ready = True

    def get(self, store: SQLiteStore) -> tuple[int, dict]:  # type: ignore[type-arg]
        root = Resource()
        root.putChild(
            b"healthz",
            HealthResource(
                node_id="n1",
                deployment="eu",
                version="9",
                store=store,
                store_ready=lambda: self.ready,
                children=lambda: list(self.top),
            ),
        )
        stub = StubTreq(root)
        d = stub.get("http://node.test/healthz")
        stub.flush()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.json())

    def open_store(self, path: str) -> SQLiteStore:
        store = SQLiteStore(path, run=run_inline, clock=Clock())
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        return store

    def test_healthy(self) -> None:
        """200 with the node's identity and each child's running state."""
        path = os.path.join(os.path.abspath(self.mktemp()))
        os.makedirs(path)
        code, doc = self.get(self.open_store(os.path.join(path, "s.db")))
        self.assertEqual(code, 200)
        self.assertEqual((doc["nodeId"], doc["deployment"], doc["status"]), ("n1", "eu", "ok"))
        self.assertEqual(doc["children"], {"store": {"running": True}, "transport": {"running": False}})

    def test_store_not_open(self) -> None:
        """503 while the store is not open (starting, or failed to open)."""
        path = os.path.join(os.path.abspath(self.mktemp()))
        os.makedirs(path)
        self.ready = False
        code, doc = self.get(self.open_store(os.path.join(path, "s.db")))
        self.assertEqual((code, doc["status"], doc["store"]["usable"]), (503, "unavailable", False))

    def test_store_unusable(self) -> None:
        """503 when the database does not answer (here: it cannot be opened)."""
        broken = SQLiteStore("/nonexistent-dir/s.db", run=run_inline, clock=Clock())
        code, doc = self.get(broken)
        self.assertEqual((code, doc["store"]["usable"]), (503, False))
        self.assertNotIn("nonexistent", doc["store"]["reason"])
