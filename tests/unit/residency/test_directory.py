"""Which deployment a tenant belongs to: the store's record, the mesh, memory."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.residency.directory import TenantDirectory
from fastedge.store.errors import StoreUnavailable
from fastedge.store.model import ReadPreference
from fastedge.testing.stores import sqlite_store


class CountingStore:
    """The real SQLite store, counting get_tenant calls (and failing on demand)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.reads = 0
        self.down = False

    def get_tenant(self, tenant_id: str, **kw: Any) -> Deferred[Any]:
        self.reads += 1
        if self.down:
            return fail(StoreUnavailable("the store is down"))
        d: Deferred[Any] = self._store.get_tenant(tenant_id, **kw)
        return d


class Remote:
    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def deployment_of(self, tenant_id: str) -> Deferred[str | None]:
        self.asked.append(tenant_id)
        return succeed(self.answers.get(tenant_id))


class TenantDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        store = sqlite_store(os.path.join(self.mktemp() + ".sqlite3"), clock=self.clock)
        self.addCleanup(store.close)
        primary = ReadPreference.PRIMARY
        self.ours = self.successResultOf(store.create_tenant("Ours", "global", created_ms=0, read_preference=primary))
        self.theirs = self.successResultOf(store.create_tenant("Theirs", "eu", created_ms=0, read_preference=primary))
        self.store = CountingStore(store)
        self.counts: list[str] = []
        self.directory = TenantDirectory(
            self.store, self.clock, deployment="global", count=self.counts.append, ttl=60.0, unknown_ttl=5.0  # type: ignore[arg-type]
        )

    def test_record_in_the_shared_store(self) -> None:
        """A store shared by deployments says which one each tenant is."""
        self.assertEqual(self.successResultOf(self.directory.deployment_of(self.ours.value.id)), "global")
        self.assertEqual(self.successResultOf(self.directory.deployment_of(self.theirs.value.id)), "eu")
        self.assertEqual(self.counts, ["local", "local"])

    def test_known_answers_stay_in_memory(self) -> None:
        tenant = self.theirs.value.id
        for _ in range(100):
            self.successResultOf(self.directory.deployment_of(tenant))
        self.assertEqual(self.store.reads, 1)
        self.assertEqual(self.directory.cached(tenant), (True, "eu"))
        self.clock.advance(60.0)
        self.assertEqual(self.directory.cached(tenant), (False, None))

    def test_unknown_tenant_flood(self) -> None:
        """Made-up ids cost one read (NEAREST, then PRIMARY) per id per
        ``unknown_ttl``, however many requests name them."""
        for _ in range(50):
            self.assertIsNone(self.successResultOf(self.directory.deployment_of("madeup")))
        self.assertEqual(self.store.reads, 2)
        self.clock.advance(5.0)
        self.successResultOf(self.directory.deployment_of("madeup"))
        self.assertEqual(self.store.reads, 4)

    def test_other_deployments_asked_for_what_the_store_lacks(self) -> None:
        remote = Remote({"abroad": "eu"})
        directory = TenantDirectory(
            self.store, self.clock, deployment="global", count=self.counts.append, remote=remote  # type: ignore[arg-type]
        )
        self.assertEqual(self.successResultOf(directory.deployment_of("abroad")), "eu")
        self.assertIsNone(self.successResultOf(directory.deployment_of("nowhere")))
        self.successResultOf(directory.deployment_of(self.ours.value.id))
        self.assertEqual(remote.asked, ["abroad", "nowhere"], "a tenant of the store is never asked abroad")
        self.assertIn("remote", self.counts)

    def test_store_failure_is_no_answer(self) -> None:
        """A failing store fails the lookup and nothing is remembered."""
        self.store.down = True
        self.failureResultOf(self.directory.deployment_of(self.theirs.value.id), StoreUnavailable)
        self.assertEqual(self.directory.cached(self.theirs.value.id), (False, None))
        self.store.down = False
        self.assertEqual(self.successResultOf(self.directory.deployment_of(self.theirs.value.id)), "eu")
        self.assertEqual(self.counts, ["error", "local"])

    def test_concurrent_lookups_coalesce(self) -> None:
        pending: list[Deferred[Any]] = []

        class Slow:
            reads = 0

            def get_tenant(self, tenant_id: str, **kw: Any) -> Deferred[Any]:
                Slow.reads += 1
                d: Deferred[Any] = Deferred()
                pending.append(d)
                return d

        directory = TenantDirectory(Slow(), self.clock, deployment="global")  # type: ignore[arg-type]
        waits = [directory.deployment_of("t1") for _ in range(10)]
        self.assertEqual(Slow.reads, 1)
        pending[0].callback(self.theirs.value)
        self.assertEqual([self.successResultOf(d) for d in waits], ["eu"] * 10)
