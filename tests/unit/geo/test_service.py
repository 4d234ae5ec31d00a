"""The ``geo`` child: first build at start, rebuilds and atomic swaps."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import GeoConfig
from fastedge.geo.lookup import GeoIndex, GeoIndexError
from fastedge.geo.service import GeoService
from fastedge.metrics.registry import new_registry
from fastedge.testing.dns import PLACES, write_geo_db
from fastedge.testing.fakes import run_inline


class ThreadHandOffClock(Clock):
    """A Clock that also runs ``callFromThread`` calls (as the reactor does
    for the SIGHUP handler), right away."""

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)


class GeoServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "city.mmdb")
        write_geo_db(self.path, {"81.2.69.0/24": PLACES["london"]})
        self.clock = ThreadHandOffClock()
        self.registry = new_registry()
        self.cfg = GeoConfig(
            database=self.path,
            rebuild_seconds=3600.0,
            watch_seconds=5.0,
            request_file=os.path.join(self.dir, "rebuild"),
        )

    def service(self, run: Any = run_inline, **kw: Any) -> GeoService:
        geo = GeoService(self.cfg, reactor=self.clock, registry=self.registry, run=run, **kw)
        geo.privilegedStartService()
        geo.startService()
        self.addCleanup(lambda: self.successResultOf(geo.stopService()) if geo.running else None)
        return geo

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def country(self, geo: GeoService, address: str = "81.2.69.1") -> str | None:
        location, _ = geo.locate(address)
        return location.country if location else None

    def rewrite(self, place: str) -> None:
        """Replace the file the way geoipupdate does (write, then rename)."""
        tmp = self.path + ".tmp"
        write_geo_db(tmp, {"81.2.69.0/24": PLACES[place]})
        os.replace(tmp, self.path)

    def test_builds_at_start(self) -> None:
        """The index is built before the node runs, and its size, build time
        and age are metrics."""
        geo = self.service()
        self.assertEqual(self.country(geo), "GB")
        self.assertEqual(self.metric("fastedge_geo_index_networks"), 1.0)
        self.assertIsNotNone(self.metric("fastedge_geo_index_build_seconds"))
        self.clock.advance(42)
        self.assertEqual(self.metric("fastedge_geo_index_age_seconds"), 42.0)

    def test_missing_file_is_a_startup_error(self) -> None:
        """A configured file that is missing stops the start with an error
        naming the key and the path."""
        geo = GeoService(
            GeoConfig(database=os.path.join(self.dir, "nope.mmdb")),
            reactor=self.clock,
            registry=self.registry,
        )
        with self.assertRaises(GeoIndexError) as cm:
            geo.privilegedStartService()
        self.assertIn("geo.database: cannot read", str(cm.exception))
        self.assertIn("nope.mmdb", str(cm.exception))

    def test_corrupt_file_is_a_startup_error(self) -> None:
        """A corrupt file stops the start the same way."""
        with open(self.path, "wb") as f:
            f.write(b"garbage" * 100)
        geo = GeoService(self.cfg, reactor=self.clock, registry=self.registry, run=run_inline)
        with self.assertRaises(GeoIndexError) as cm:
            geo.privilegedStartService()
        self.assertTrue(str(cm.exception).startswith("geo.database: "))

    def test_no_database_configured(self) -> None:
        """Without a database every location is unknown (prefix 0) and no
        timer runs."""
        geo = GeoService(GeoConfig(), reactor=self.clock, registry=self.registry)
        geo.privilegedStartService()
        geo.startService()
        self.assertEqual(geo.locate("81.2.69.1"), (None, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.successResultOf(geo.rebuild()), False)
        self.successResultOf(geo.stopService())

    def test_weekly_rebuild(self) -> None:
        """The index is rebuilt every rebuild_seconds (not at start), and
        observers are told of each new index."""
        self.cfg = GeoConfig(
            database=self.path,
            rebuild_seconds=3600.0,
            watch_seconds=7200.0,
            request_file=self.cfg.request_file,
        )
        geo = self.service()
        swaps: list[None] = []
        geo.subscribe(lambda: swaps.append(None))
        self.clock.advance(3599)
        self.assertEqual(swaps, [])
        self.clock.advance(1)
        self.assertEqual(len(swaps), 1)
        self.assertEqual(
            self.metric("fastedge_geo_index_rebuilds_total", trigger="schedule", outcome="ok"),
            1.0,
        )
        self.assertEqual(self.metric("fastedge_geo_index_age_seconds"), 0.0)

    def test_file_change_rebuilds(self) -> None:
        """A replaced file is picked up at the next check."""
        geo = self.service()
        self.rewrite("tokyo")
        self.assertEqual(self.country(geo), "GB")
        self.clock.advance(5)
        self.assertEqual(self.country(geo), "JP")
        self.assertEqual(
            self.metric(
                "fastedge_geo_index_rebuilds_total",
                trigger="file-changed",
                outcome="ok",
            ),
            1.0,
        )

    def test_admin_request_rebuilds(self) -> None:
        """The file fastedge-admin creates triggers a rebuild and is consumed."""
        geo = self.service()
        open(self.cfg.request_file, "w").close()
        self.clock.advance(5)
        self.assertFalse(os.path.exists(self.cfg.request_file))
        self.assertEqual(
            self.metric("fastedge_geo_index_rebuilds_total", trigger="admin", outcome="ok"),
            1.0,
        )
        self.assertEqual(self.country(geo), "GB")

    def test_sighup_rebuilds(self) -> None:
        """SIGHUP triggers a rebuild while the service runs; the previous
        handler is back after it stops."""
        before = signal.getsignal(signal.SIGHUP)
        geo = self.service(handle_sighup=True)
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(
            self.metric("fastedge_geo_index_rebuilds_total", trigger="sighup", outcome="ok"),
            1.0,
        )
        self.successResultOf(geo.stopService())
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)

    def test_failed_rebuild_keeps_the_index(self) -> None:
        """A corrupt new file keeps the old index in use, is counted and
        logged, and is not retried until the file changes again."""
        geo = self.service()
        with open(self.path + ".tmp", "wb") as f:
            f.write(b"\0" * 64)
        os.replace(self.path + ".tmp", self.path)
        self.clock.advance(5)
        self.assertEqual(self.country(geo), "GB")
        self.assertEqual(
            self.metric(
                "fastedge_geo_index_rebuilds_total",
                trigger="file-changed",
                outcome="failed",
            ),
            1.0,
        )
        self.clock.advance(5)
        self.assertEqual(
            self.metric(
                "fastedge_geo_index_rebuilds_total",
                trigger="file-changed",
                outcome="failed",
            ),
            1.0,
        )
        self.rewrite("tokyo")
        self.clock.advance(5)
        self.assertEqual(self.country(geo), "JP")

    def test_lookups_use_the_old_index_during_a_build(self) -> None:
        """While a build runs (off the reactor thread), lookups answer from
        the old index; the new one replaces it whole when it is done. A
        request during the build runs once more afterwards."""
        pending: list[tuple[Deferred[GeoIndex], Callable[[], GeoIndex]]] = []

        def run(f: Callable[[], GeoIndex]) -> Deferred[GeoIndex]:
            d: Deferred[GeoIndex] = Deferred()
            pending.append((d, f))
            return d

        geo = self.service(run=run)
        self.rewrite("tokyo")
        done = geo.rebuild("admin")
        again = geo.rebuild("admin")
        self.assertEqual(self.country(geo), "GB")
        d, f = pending.pop()
        d.callback(f())
        self.assertEqual(self.country(geo), "JP")
        self.assertNoResult(done)
        d, f = pending.pop()
        d.callback(f())
        self.assertTrue(self.successResultOf(done))
        self.assertTrue(self.successResultOf(again))
