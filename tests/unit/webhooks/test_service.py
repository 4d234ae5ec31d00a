"""Tests for :mod:`fastedge.webhooks.service`: the child's shape, its timers and its stop."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import WebhooksConfig
from fastedge.store.model import ReadPreference, WebhookEvent
from fastedge.store.sqlite import SQLiteStore
from fastedge.testing.fakes import run_inline
from fastedge.webhooks.service import make_service


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.store = SQLiteStore(os.path.join(directory, "s.sqlite"), run=run_inline, clock=self.reactor)
        self.successResultOf(self.store.open())
        self.addCleanup(lambda: self.successResultOf(self.store.close()))

    def test_timers_poll_and_stop(self) -> None:
        """Started, the child polls the outbox and reads the queue gauges on
        the reactor's clock (a due delivery is sent: a connection is made);
        stopped, it aborts it, gives the lease back and fires."""
        registry = CollectorRegistry()
        service = make_service(
            WebhooksConfig(allow_private_targets=True),
            reactor=self.reactor,
            store=self.store,
            registry=registry,
            node_id="n1",
        )
        self.assertEqual([c.name for c in service], ["poll", "queue"])
        tenant = self.successResultOf(
            self.store.create_tenant("T", "global", created_ms=1, read_preference=ReadPreference.PRIMARY)
        ).value
        self.successResultOf(
            self.store.create_webhook(
                tenant.id,
                url="http://127.0.0.1:9/hook",
                secret="s" * 32,
                events=[WebhookEvent.THREAD_CREATED],
                active=True,
                description="",
                created_ms=1,
                read_preference=ReadPreference.PRIMARY,
            )
        )
        self.successResultOf(
            self.store.upsert_thread(tenant.id, "u", created_ms=1, read_preference=ReadPreference.PRIMARY)
        )
        # Due: created at 1 ms, now 10 s.
        self.reactor.advance(10)
        service.startService()
        self.assertEqual([(host, port) for host, port, *_ in self.reactor.tcpClients], [("127.0.0.1", 9)])
        self.assertEqual(registry.get_sample_value("fastedge_webhooks_queue_depth", {"state": "pending"}), 1)
        self.assertEqual(registry.get_sample_value("fastedge_webhooks_in_flight"), 1)
        self.successResultOf(service.stopService())
        self.assertEqual(registry.get_sample_value("fastedge_webhooks_in_flight"), 0)
        self.assertFalse(service.running)
        (delivery,) = self.successResultOf(
            self.store.claim_webhook_deliveries(
                owner="next", now_ms=2, lease_ms=1000, limit=5, read_preference=ReadPreference.PRIMARY
            )
        ).deliveries
        self.assertEqual(delivery.attempts, 0)

    def test_off(self) -> None:
        """``enabled = false``, or a store without an outbox: no worker, no timers."""
        service = make_service(
            WebhooksConfig(enabled=False),
            reactor=self.reactor,
            store=self.store,
            registry=CollectorRegistry(),
            node_id="n1",
        )
        self.assertIsNone(service.worker)
        self.assertEqual(list(service), [])
        service.startService()
        self.successResultOf(service.stopService())
        other = make_service(
            WebhooksConfig(), reactor=self.reactor, store=object(), registry=CollectorRegistry(), node_id="n1"
        )
        self.assertIsNone(other.worker)
