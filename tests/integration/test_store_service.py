"""The store child with its real thread pool and the real reactor."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from fastedge.config import MongoConfig, PostgresConfig, StoreConfig
from fastedge.metrics.registry import new_registry
from fastedge.store.errors import StoreClosed, StoreUnavailable
from fastedge.store.model import ReadPreference
from fastedge.store.mongodb.store import MongoStore
from fastedge.store.service import make_service
from tests.unit.store.mongo_fake import fresh_database, shared_fake


class StoreServiceTests(TestCase):
    @inlineCallbacks
    def test_open_use_close(self):  # type: ignore[no-untyped-def]
        """Starting opens and migrates the store off the reactor thread;
        calls then work and are timed by read preference; stopping closes
        it and its threads."""
        path = os.path.join(os.path.abspath(self.mktemp()), "db", "store.sqlite3")
        registry = new_registry()
        service = make_service(StoreConfig(sqlite_path=path, threads=2), reactor=reactor, registry=registry)
        self.assertFalse(os.path.exists(path), "the constructor must do no I/O")
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        store = yield service.when_ready()
        written = yield store.create_tenant("t", "global", created_ms=1, read_preference=ReadPreference.PRIMARY)
        tenant = yield store.get_tenant(written.value.id, read_preference=ReadPreference.NEAREST)
        self.assertEqual(tenant.name, "t")
        count = registry.get_sample_value(
            "fastedge_store_call_duration_seconds_count",
            {"backend": "sqlite", "read_preference": "nearest", "operation": "get_tenant"},
        )
        self.assertEqual(count, 1.0)
        yield service.stopService()
        self.assertFalse(service.ready)

    @inlineCallbacks
    def test_unopenable_store(self):  # type: ignore[no-untyped-def]
        """A store that cannot be opened is logged, not ready, and readiness
        waiters see the failure; the node keeps running to report it."""
        path = self.mktemp()
        os.makedirs(path)
        with open(os.path.join(path, "store.sqlite3"), "wb") as f:
            f.write(b"this is not a database" * 100)
        service = make_service(
            StoreConfig(sqlite_path=os.path.join(path, "store.sqlite3")), reactor=reactor, registry=new_registry()
        )
        service.startService()
        self.addCleanup(service.stopService)
        error = yield self.assertFailure(service.when_ready(), StoreUnavailable)
        self.assertFalse(service.ready)
        self.assertIn("not a database", str(error))
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        # Asking again after the failure answers at once, with the same failure.
        yield self.assertFailure(service.when_ready(), StoreUnavailable)

    @inlineCallbacks
    def test_call_after_stop_sqlite(self):  # type: ignore[no-untyped-def]
        """A call made after the store stopped fails at once, with
        ``StoreClosed`` (a ``StoreUnavailable``: the HTTP layer answers 503),
        instead of waiting forever on a thread pool that no longer runs."""
        path = os.path.join(os.path.abspath(self.mktemp()), "store.sqlite3")
        service = make_service(StoreConfig(sqlite_path=path, threads=1), reactor=reactor, registry=new_registry())
        service.startService()
        store = yield service.when_ready()
        yield service.stopService()
        error = self.failureResultOf(store.ping(read_preference=ReadPreference.NEAREST), StoreClosed)
        self.assertIn("the node is stopping", error.getErrorMessage())
        self.assertIsInstance(error.value, StoreUnavailable)

    @inlineCallbacks
    def test_call_after_stop_postgresql(self):  # type: ignore[no-untyped-def]
        """The same for the PostgreSQL backend, whose calls otherwise retry
        towards a primary for ``failover_seconds``: after the stop, a call
        fails at once (the primary here is unreachable, which does not
        matter: the call never leaves the node)."""
        cfg = StoreConfig(
            backend="postgresql",
            threads=1,
            postgresql=PostgresConfig(primaries=("host=127.0.0.1 port=1 dbname=none connect_timeout=2",)),
        )
        service = make_service(cfg, reactor=reactor, registry=new_registry())
        service.startService()
        yield self.assertFailure(service.when_ready(), StoreUnavailable)
        self.flushLoggedErrors(StoreUnavailable)
        yield service.stopService()
        for call in (
            service.store.ping(read_preference=ReadPreference.PRIMARY),
            service.store.get_tenant("t", read_preference=ReadPreference.NEAREST),
        ):
            self.failureResultOf(call, StoreClosed)


class MongoStoreServiceTests(TestCase):
    @inlineCallbacks
    def test_mongodb_backend(self):  # type: ignore[no-untyped-def]
        """``store.backend = "mongodb"`` runs the MongoDB store (here on the
        MockupDB replica set of the unit tests): the constructor connects
        nowhere, starting migrates, calls are timed under the ``mongodb``
        label, the logs name the servers without the credentials, and a
        call after the stop fails at once with ``StoreClosed``."""
        fake = shared_fake()
        fake.reset()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        uri = fake.uri.replace("mongodb://", "mongodb://fe:hunter2@")
        cfg = StoreConfig(
            backend="mongodb",
            mongodb=MongoConfig(uri=uri, nearest_uri=fake.nearest_uri, database=fresh_database("service")),
        )
        registry = new_registry()
        service = make_service(cfg, reactor=reactor, registry=registry)
        self.assertIsInstance(service.store, MongoStore)
        self.assertEqual(fake.log, [], "the constructor must do no I/O")
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        store = yield service.when_ready()
        written = yield store.create_tenant("t", "global", created_ms=1, read_preference=ReadPreference.PRIMARY)
        tenant = yield store.get_tenant(written.value.id, read_preference=ReadPreference.NEAREST, token=written.token)
        self.assertEqual(tenant.name, "t")
        count = registry.get_sample_value(
            "fastedge_store_call_duration_seconds_count",
            {"backend": "mongodb", "read_preference": "nearest", "operation": "get_tenant"},
        )
        self.assertEqual(count, 1.0)
        ready = registry.get_sample_value(
            "fastedge_store_token_reads_total", {"backend": "mongodb", "outcome": "ready"}
        )
        self.assertEqual(ready, 1.0)
        yield service.stopService()
        self.assertFalse(service.ready)
        # A call after the stop fails at once, as on the other backends.
        for call in (
            store.ping(read_preference=ReadPreference.PRIMARY),
            store.get_tenant("t", read_preference=ReadPreference.NEAREST),
            store.create_tenant("u", "global", created_ms=2, read_preference=ReadPreference.PRIMARY),
        ):
            self.failureResultOf(call, StoreClosed)
        texts = [formatEvent(e) for e in events]
        self.assertTrue([t for t in texts if "opening mongodb store" in t and fake.address(fake.primary) in t])
        self.assertEqual([t for t in texts if "hunter2" in t or "fe:" in t], [])
