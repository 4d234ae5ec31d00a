# -*- test-case-name: tests.integration.test_store_service -*-
"""The ``store`` child: owns the database connections and their threads."""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ..config import StoreConfig
from .errors import StoreClosed
from .interfaces import IStore
from .metrics import ReplicationMetrics, StoreMetrics

if TYPE_CHECKING:
    from .postgresql import PostgresStore


class _LagProbe(TimerService):
    """Measures the local replica's lag every ``every`` seconds (which also
    notices a failed primary while no request comes)."""

    _log = Logger()

    def __init__(self, store: PostgresStore, every: float, clock: IReactorTime) -> None:
        super().__init__(every, self._probe)
        self.clock = clock
        self._store = store

    def _probe(self) -> Deferred[object]:
        d: Deferred[object] = self._store.measure_lag()  # type: ignore[assignment]

        def failed(f: Failure) -> None:
            # Logged, never raised: an exception would stop the TimerService for good.
            self._log.warn("measuring the replica's lag failed: {reason}", reason=f.getErrorMessage())

        d.addErrback(failed)
        return d


class StoreService(Service):
    """Opens the store (applying migrations) at start, closes it at stop.

    :ivar store: usable by other children from construction on; calls made
        before :meth:`when_ready` fires may fail with ``StoreUnavailable``.
    """

    _log = Logger()

    def __init__(self, cfg: StoreConfig, *, reactor: object, registry: CollectorRegistry) -> None:
        self._cfg = cfg
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=cfg.threads, name="fastedge-store")
        self._to_pool = partial(deferToThreadPool, reactor, self._pool)  # type: ignore[arg-type]
        #: Set once the store is closing: every backend runs its database
        #: work through :meth:`_run`, which then fails at once.
        self._closed = False
        run = self._run
        metrics = StoreMetrics(registry, cfg.backend)
        self._lag_probe: TimerService | None = None
        if cfg.backend == "postgresql":
            # Imported only when configured: psycopg (and libpq) cost a node
            # on the embedded store ~10 MB of memory for nothing.
            from .postgresql import PostgresStore, redact_dsn

            pg = cfg.postgresql
            replication = ReplicationMetrics(registry, cfg.backend)
            store = PostgresStore(
                pg.primaries,
                pg.replica or None,
                run=run,
                clock=reactor,  # type: ignore[arg-type]
                token_wait_seconds=pg.token_wait_seconds,
                token_poll_seconds=pg.token_poll_seconds,
                failover_seconds=pg.failover_seconds,
                connect_timeout_seconds=pg.connect_timeout_seconds,
                statement_timeout_seconds=pg.statement_timeout_seconds,
                pool_size=cfg.threads,
                observe=metrics.observe,
                metrics=replication,
            )
            self._lag_probe = _LagProbe(store, pg.lag_probe_seconds, reactor)  # type: ignore[arg-type]
            self.store: IStore = store
            self._where = "primary candidates {} and replica {}".format(
                [redact_dsn(d) for d in pg.primaries], redact_dsn(pg.replica) if pg.replica else "none"
            )
        elif cfg.backend == "mongodb":
            # Imported only when configured, like psycopg above: txmongo and
            # pymongo's bson are not a node on the embedded store's business.
            from .mongodb.store import MongoStore
            from .mongodb.uri import redact_uri

            mongo = cfg.mongodb
            self.store = MongoStore(
                mongo.uri,
                mongo.nearest_uri or None,
                database=mongo.database,
                clock=reactor,  # type: ignore[arg-type]
                write_concern=mongo.write_concern,
                write_concern_timeout_seconds=mongo.write_concern_timeout_seconds,
                token_wait_seconds=mongo.token_wait_seconds,
                failover_seconds=mongo.failover_seconds,
                nearest_timeout_seconds=mongo.nearest_timeout_seconds,
                operation_timeout_seconds=mongo.operation_timeout_seconds,
                pool_size=mongo.pool_size,
                observe=metrics.observe,
                metrics=ReplicationMetrics(registry, cfg.backend),
            )
            self._where = "replica set {} and local member {}".format(
                redact_uri(mongo.uri), redact_uri(mongo.nearest_uri) if mongo.nearest_uri else "none"
            )
        else:
            # Imported here like the others: the SQL backends' modules are
            # not a MongoDB node's business.
            from .sqlite import SQLiteStore

            self.store = SQLiteStore(
                cfg.sqlite_path,
                run=run,
                clock=reactor,  # type: ignore[arg-type]
                busy_timeout_seconds=cfg.busy_timeout_seconds,
                pool_size=cfg.threads,
                observe=metrics.observe,
            )
            self._where = cfg.sqlite_path
        self.ready = False
        self._open_failure: Failure | None = None
        self._waiting: list[Deferred[IStore]] = []

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run database work on the store's threads; after :meth:`stopService`
        fail at once with :class:`StoreClosed` (a stopped pool would never run
        it, and the caller would wait forever)."""
        if self._closed:
            self._log.debug("store call after stop refused")
            return fail(StoreClosed("the store is closed: the node is stopping"))
        d: Deferred[Any] = self._to_pool(fn, *args, **kwargs)  # type: ignore[call-arg]
        return d

    def when_ready(self) -> Deferred[IStore]:
        """Fires with the store once it is open and migrated."""
        if self.ready:
            return succeed(self.store)
        if self._open_failure is not None:
            return fail(self._open_failure)
        d: Deferred[IStore] = Deferred()
        self._waiting.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        if self._cfg.backend == "sqlite":
            os.makedirs(os.path.dirname(self._cfg.sqlite_path), exist_ok=True)
        self._pool.start()
        self._log.info("opening {backend} store at {path}", backend=self._cfg.backend, path=self._where)
        self.store.open().addCallbacks(self._opened, self._failed)

    def _opened(self, _: None) -> None:
        self.ready = True
        if self._lag_probe is not None and self.running:
            self._lag_probe.startService()
        self._log.info("store ready")
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self.store)

    def _failed(self, failure: Failure) -> None:
        # The node keeps running so /healthz can say why; every store call fails.
        self._log.failure("store could not be opened", failure)
        self._open_failure = failure
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.ready = False
        self._closed = True
        d: Deferred[object] = succeed(None)
        if self._lag_probe is not None and self._lag_probe.running:
            d = self._lag_probe.stopService()
        d.addCallback(self._close)
        d.addErrback(lambda f: self._log.failure("closing the store failed", f))

        def stop_threads(_: object) -> None:
            self._pool.stop()

        d.addBoth(stop_threads)
        return d  # type: ignore[return-value]

    def _close(self, _: object) -> Deferred[None]:
        # The close itself is the one call let through after the stop.
        self._closed = False
        try:
            return self.store.close()
        finally:
            self._closed = True


def make_service(cfg: StoreConfig, *, reactor: object, registry: CollectorRegistry) -> StoreService:
    """The ``store`` child for ``cfg``."""
    return StoreService(cfg, reactor=reactor, registry=registry)
