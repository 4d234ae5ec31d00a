"""Rate limiter, page cache and credit meter."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.api.cache import PageCache
from fastedge.api.credits import CreditMeter
from fastedge.config import CreditsConfig
from fastedge.store.errors import StoreUnavailable
from fastedge.store.model import ReadPreference
from fastedge.store.sqlite import SQLiteStore
from fastedge.testing.fakes import run_inline


class PageCacheTests(SynchronousTestCase):
    def test_expiry_and_tags(self) -> None:
        """Entries expire after the TTL and are dropped by any of their tags."""
        clock = Clock()
        cache = PageCache(ttl_seconds=2, max_entries=10, clock=clock)
        cache.put("a", 1, ("t1", "u1"))
        cache.put("b", 2, ("t1",))
        cache.put("c", 3, ("t2",))
        self.assertEqual(cache.get("a"), 1)
        cache.invalidate("t1")
        self.assertEqual((cache.get("a"), cache.get("b"), cache.get("c")), (None, None, 3))
        clock.advance(2)
        self.assertIsNone(cache.get("c"))
        self.assertEqual(len(cache), 0)

    def test_bounded(self) -> None:
        """The cache never holds more than max_entries."""
        cache = PageCache(ttl_seconds=10, max_entries=3, clock=Clock())
        for i in range(10):
            cache.put(i, i, ("t",))
        self.assertEqual(len(cache), 3)
        self.assertEqual(cache.get(9), 9)

    def test_disabled(self) -> None:
        """A TTL of 0 turns caching off."""
        cache = PageCache(ttl_seconds=0, max_entries=3, clock=Clock())
        cache.put("a", 1, ())
        self.assertIsNone(cache.get("a"))


class CreditMeterTests(SynchronousTestCase):
    def test_flush_writes_ledger(self) -> None:
        """Flushed charges land in the ledger and leave nothing pending."""
        clock = Clock()
        path = os.path.join(os.path.abspath(self.mktemp()))
        os.makedirs(path)
        store = SQLiteStore(os.path.join(path, "s.db"), run=run_inline, clock=clock)
        self.successResultOf(store.open())
        tenant = self.successResultOf(
            store.create_tenant("t", "global", created_ms=0, read_preference=ReadPreference.PRIMARY)
        ).value
        meter = CreditMeter(CreditsConfig(), store=store, clock=clock)
        meter.charge(tenant.id, "list", ReadPreference.PRIMARY)
        meter.charge(tenant.id, "list", ReadPreference.NEAREST)
        meter.charge(tenant.id, "post", None)
        self.successResultOf(meter.flush())
        self.assertEqual(meter.pending(tenant.id), [])
        usage = self.successResultOf(store.credit_usage(tenant.id, since_ms=0, read_preference=ReadPreference.PRIMARY))
        self.assertEqual([(u.operation, u.calls, u.credits) for u in usage], [("list", 2, 3), ("post", 1, 3)])
        self.successResultOf(store.close())

    def test_failed_flush_keeps_charges(self) -> None:
        """When the ledger cannot be written, charges are kept for the next
        flush (never lost, never doubled), and the failure is logged."""
        # A real store whose database cannot be opened, as when the primary is down.
        broken = SQLiteStore("/nonexistent-dir/fastedge.sqlite3", run=run_inline, clock=Clock())
        meter = CreditMeter(CreditsConfig(), store=broken, clock=Clock())
        meter.charge("t", "list", ReadPreference.PRIMARY)
        self.successResultOf(meter.flush())
        meter.charge("t", "list", ReadPreference.PRIMARY)
        self.assertEqual([(u.calls, u.credits) for u in meter.pending("t")], [(2, 4)])
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)

    def test_deleted_tenant_charges_dropped(self) -> None:
        """Charges of a tenant deleted before the flush (fastedge-admin
        tenant delete) are dropped, not kept and retried forever, and no
        error is logged."""
        clock = Clock()
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        store = SQLiteStore(os.path.join(path, "s.db"), run=run_inline, clock=clock)
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        tenant = self.successResultOf(
            store.create_tenant("t", "global", created_ms=0, read_preference=ReadPreference.PRIMARY)
        ).value
        meter = CreditMeter(CreditsConfig(), store=store, clock=clock)
        meter.charge(tenant.id, "media_purge", None)
        self.successResultOf(store.delete_tenant(tenant.id, read_preference=ReadPreference.PRIMARY))
        self.successResultOf(meter.flush())
        self.assertEqual(meter.pending(tenant.id), [])
        self.assertEqual(self.flushLoggedErrors(), [])
