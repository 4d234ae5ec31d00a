"""A peer that dies is retried for up to ``mesh.forget_dead_seconds``; the
log says so once, then in summaries at growing intervals, and once more
when it is back, while the metric counts every failed connect (in memory,
on one Clock)."""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fastedge.mesh.broker import RefusalLog
from fastedge.testing.mesh import MemoryMesh

from .common import metric


class UnreachablePeerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.mesh = MemoryMesh(self)
        self.mesh.add("a", seeds=[])
        self.mesh.add("b")
        self.mesh.advance(5.0, step=0.05)
        self.assertEqual(self.mesh.states("a"), {"a": "alive", "b": "alive"})
        self.mesh.crash("b")
        self.mark = len(self.events)

    def since_crash(self, text: str) -> list[dict[str, object]]:
        return [e for e in list(self.events)[self.mark :] if text in str(e.get("log_format", ""))]

    def test_an_hour_down_is_a_few_lines(self) -> None:
        """Over an hour of a dead peer, node a tries to reconnect hundreds of
        times: Twisted's per-retry line is never logged, the first failure
        is logged once, then a summary at 60 s, 120 s, 240 s ... (seven at
        most), and the metric counts every failure."""
        self.mesh.advance(3600.0, step=0.5)
        failures = metric(self.mesh, "a", "fastedge_mesh_connect_failures_total", reason="refused")
        self.assertGreater(failures, 500)
        self.assertEqual(self.since_crash("Scheduling retry"), [])
        first = self.since_crash("cannot connect")
        self.assertEqual(len(first), 1)
        self.assertEqual((first[0]["peer"], first[0]["reason"]), ("b", "refused"))
        summaries = [e for e in self.since_crash(RefusalLog.SUMMARY) if e.get("what") == "failed connections"]
        self.assertGreaterEqual(len(summaries), 4)
        self.assertLessEqual(len(summaries), 7)
        gaps = [float(e["seconds"]) for e in summaries]  # type: ignore[arg-type]
        self.assertEqual(gaps, sorted(gaps))
        self.assertGreater(gaps[-1], 4 * gaps[0])
        # The summaries account for every failure after the first.
        self.assertLessEqual(sum(int(e["count"]) for e in summaries), failures - 1)  # type: ignore[call-overload]

    def test_back_is_logged(self) -> None:
        """When the peer is back, one line says after how many failed
        connections and how long; the next outage starts over with a first
        failure logged in full."""
        self.mesh.advance(300.0, step=0.5)
        self.mesh.add("b", seeds=[self.mesh.address("a")])
        self.mesh.advance(10.0, step=0.05)
        self.assertEqual(self.mesh.states("a"), {"a": "alive", "b": "alive"})
        back = self.since_crash("is back after")
        self.assertEqual(len(back), 1)
        self.assertGreater(int(back[0]["failures"]), 30)  # type: ignore[call-overload]
        self.assertGreaterEqual(float(back[0]["seconds"]), 295.0)  # type: ignore[arg-type]
        self.mesh.crash("b")
        self.mesh.advance(30.0, step=0.5)
        self.assertEqual(len(self.since_crash("cannot connect")), 2)
