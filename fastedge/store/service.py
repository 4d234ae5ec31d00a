# -*- test-case-name: tests.unit.store.test_service -*-
"""The ``store`` child: owns the database connections and their threads."""

from __future__ import annotations

import os
from functools import partial

from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ..config import StoreConfig
from .interfaces import IStore
from .metrics import StoreMetrics
from .sqlite import SQLiteStore


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
        metrics = StoreMetrics(registry, "sqlite")
        self.store: IStore = SQLiteStore(
            cfg.sqlite_path,
            run=partial(deferToThreadPool, reactor, self._pool),
            clock=reactor,  # type: ignore[arg-type]
            busy_timeout_seconds=cfg.busy_timeout_seconds,
            pool_size=cfg.threads,
            observe=metrics.observe,
        )
        self.ready = False
        self._open_failure: Failure | None = None
        self._waiting: list[Deferred[IStore]] = []

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
        os.makedirs(os.path.dirname(self._cfg.sqlite_path), exist_ok=True)
        self._pool.start()
        self._log.info("opening {backend} store at {path}", backend="sqlite", path=self._cfg.sqlite_path)
        self.store.open().addCallbacks(self._opened, self._failed)

    def _opened(self, _: None) -> None:
        self.ready = True
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
        d = self.store.close()
        d.addErrback(lambda f: self._log.failure("closing the store failed", f))

        def stop_threads(_: object) -> None:
            self._pool.stop()

        d.addBoth(stop_threads)
        return d


def make_service(cfg: StoreConfig, *, reactor: object, registry: CollectorRegistry) -> StoreService:
    """The ``store`` child for ``cfg``."""
    return StoreService(cfg, reactor=reactor, registry=registry)
