# -*- test-case-name: tests.unit.geo.test_service -*-
"""The ``geo`` child: holds the GeoIP index and rebuilds it.

The first index is built in ``privilegedStartService``, before the reactor
runs, so a missing or corrupt database stops ``twistd`` with a message
naming ``geo.database``. Later builds (weekly, ``SIGHUP``, ``fastedge-admin
geo rebuild``, a changed file) run in a thread of their own; the new index
replaces the old one in one assignment on the reactor thread, so a lookup
sees the old index or the new one, never a half-built one. A failed rebuild
keeps the old index, logs why and counts the failure.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..config import GeoConfig
from .interfaces import IGeoLocator
from .lookup import GeoIndex, GeoIndexError, Location, build_index
from .metrics import GeoMetrics

#: Runs a blocking build and fires with its result (a thread in production,
#: inline in tests).
Runner = Callable[[Callable[[], GeoIndex]], "Deferred[GeoIndex]"]

_Signature = tuple[int, int, int]


def _signature(path: str) -> _Signature | None:
    """What changes when the file is replaced or rewritten."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@implementer(IGeoLocator)
class GeoService(Service):
    """Owns the index in use and every trigger that rebuilds it.

    :param run: runs the blocking build off the reactor thread; by default a
        one-thread pool owned by this service.
    :param handle_sighup: install a ``SIGHUP`` handler while running (the
        node does; tests running several nodes in one process do not).
    """

    _log = Logger()

    def __init__(
        self,
        cfg: GeoConfig,
        *,
        reactor: Any,
        registry: CollectorRegistry,
        run: Runner | None = None,
        build: Callable[[str], GeoIndex] = build_index,
        handle_sighup: bool = False,
    ) -> None:
        self._cfg = cfg
        self._reactor = reactor
        self._build = build
        self._pool: ThreadPool | None = None
        if run is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=1, name="fastedge-geo")
            pool = self._pool
            run = lambda f: deferToThreadPool(reactor, pool, f)  # noqa: E731
        self._run = run
        self._handle_sighup = handle_sighup
        self._previous_sighup: Any = None
        self.index: GeoIndex | None = None
        self._built_at: float | None = None
        self._signature: _Signature | None = None
        self._failed_signature: _Signature | None = None
        self._building = False
        self._waiters: list[Deferred[bool]] = []
        self._again: str | None = None
        self._observers: list[Callable[[], None]] = []
        self._loops: list[LoopingCall] = []
        self.metrics = GeoMetrics(registry, self._age)

    # IGeoLocator

    def locate(self, address: str) -> tuple[Location | None, int]:
        index = self.index
        if index is None:
            return None, 0
        return index.locate(address)

    def subscribe(self, observer: Callable[[], None]) -> Callable[[], None]:
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    # Life cycle

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if not self._cfg.database or self.index is not None:
            return
        try:
            index = self._build(self._cfg.database)
        except GeoIndexError as e:
            self.metrics.rebuilds.labels("start", "failed").inc()
            raise GeoIndexError(f"geo.database: {e}") from None
        self._signature = _signature(self._cfg.database)
        self._swap(index, "start")

    def startService(self) -> None:
        if self._cfg.database and self.index is None:
            # Not started through privilegedStartService (e.g. added to a
            # running parent): build now, failing the same way.
            self.privilegedStartService()
        super().startService()
        if not self._cfg.database:
            self._log.info("no GeoIP database configured (geo.database): client locations are unknown")
            return
        if self._pool is not None:
            self._pool.start()
        for every, work in (
            (self._cfg.rebuild_seconds, self._scheduled),
            (self._cfg.watch_seconds, self._watch),
        ):
            loop = LoopingCall(work)
            loop.clock = self._reactor
            loop.start(every, now=False).addErrback(lambda f: self._log.failure("geo timer stopped", f))
            self._loops.append(loop)
        if self._handle_sighup:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._handle_sighup and self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        d: Deferred[Any] = succeed(None)
        if self._building:
            # Wait for the build thread to finish before stopping its pool.
            d = Deferred()
            self._waiters.append(d)

        def stop_pool(_: object) -> None:
            if self._pool is not None and self._pool.started:
                self._pool.stop()

        d.addCallback(stop_pool)
        return d

    # Triggers

    def _on_sighup(self, signum: int, frame: object) -> None:
        # In the signal handler: hand over to the reactor thread.
        self._reactor.callFromThread(self.rebuild, "sighup")

    def _scheduled(self) -> None:
        self.rebuild("schedule")

    def _watch(self) -> None:
        """Rebuild when the file changed or the admin command asked."""
        try:
            if os.path.exists(self._cfg.request_file):
                os.remove(self._cfg.request_file)
                self.rebuild("admin")
                return
        except OSError as e:
            self._log.warn(
                "cannot take the rebuild request {path}: {error}",
                path=self._cfg.request_file,
                error=e,
            )
        current = _signature(self._cfg.database)
        if current is not None and current != self._signature and current != self._failed_signature:
            self.rebuild("file-changed")

    def rebuild(self, trigger: str = "admin") -> Deferred[bool]:
        """Build a new index from the file and swap it in.

        A request while a build runs is run once more after it (the file may
        have changed meanwhile). Never fails: a failed build keeps the index
        in use, is logged and counted.

        :param trigger: what asked, for the log and the metric.
        :returns: fires with whether the (last) build replaced the index.
        """
        if not self._cfg.database:
            return succeed(False)
        waiter: Deferred[bool] = Deferred()
        self._waiters.append(waiter)
        if self._building:
            self._again = trigger
            return waiter
        self._start_build(trigger)
        return waiter

    def _start_build(self, trigger: str) -> None:
        self._building = True
        signature = _signature(self._cfg.database)
        path = self._cfg.database
        self._log.info(
            "rebuilding the GeoIP index from {path} ({trigger})",
            path=path,
            trigger=trigger,
        )
        d = self._run(lambda: self._build(path))
        d.addCallbacks(
            self._built,
            self._build_failed,
            callbackArgs=(trigger, signature),
            errbackArgs=(trigger, signature),
        )
        d.addCallback(self._build_done)  # type: ignore[call-overload]

    def _build_done(self, ok: bool) -> None:
        self._building = False
        again, self._again = self._again, None
        if again is not None and self.running:
            self._start_build(again)
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(ok)

    def _built(self, index: GeoIndex, trigger: str, signature: _Signature | None) -> bool:
        self._signature = signature
        self._failed_signature = None
        self._swap(index, trigger)
        return True

    def _build_failed(self, f: Failure, trigger: str, signature: _Signature | None) -> bool:
        self.metrics.rebuilds.labels(trigger, "failed").inc()
        # The same broken file is not retried until it changes again.
        self._failed_signature = signature
        if f.check(GeoIndexError):
            self._log.error(
                "GeoIP rebuild ({trigger}) failed, keeping the index in use: {reason}",
                trigger=trigger,
                reason=f.getErrorMessage(),
            )
        else:
            self._log.failure(
                "GeoIP rebuild ({trigger}) failed, keeping the index in use",
                f,
                trigger=trigger,
            )
        return False

    def _swap(self, index: GeoIndex, trigger: str) -> None:
        old, self.index = self.index, index
        self._built_at = self._reactor.seconds()
        self.metrics.build_seconds.set(index.build_seconds)
        self.metrics.networks.set(index.networks)
        self.metrics.rebuilds.labels(trigger, "ok").inc()
        self._log.info(
            "GeoIP index in use: {networks} networks from {path} ({database_type}), built in {seconds:.3f}s",
            networks=index.networks,
            path=index.path,
            database_type=index.database_type,
            seconds=index.build_seconds,
        )
        for observer in list(self._observers):
            try:
                observer()
            except Exception:
                self._log.failure("GeoIP index observer {observer!r} failed", observer=observer)
        if old is not None:
            # Lookups run on the reactor thread, as this does: none is using
            # the old index now.
            old.close()

    def _age(self) -> float:
        if self._built_at is None:
            return -1.0
        return float(self._reactor.seconds() - self._built_at)


def make_service(
    cfg: GeoConfig,
    *,
    reactor: Any,
    registry: CollectorRegistry,
    handle_sighup: bool = True,
) -> GeoService:
    """The ``geo`` child for ``cfg``."""
    return GeoService(cfg, reactor=reactor, registry=registry, handle_sighup=handle_sighup)
