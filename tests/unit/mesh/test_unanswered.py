"""Failures of calls nobody waits for (fastedge.mesh.unanswered): counted
by call name and logged at most once a minute per call, never swallowed."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.spread.pb import PBConnectionLost
from twisted.trial.unittest import SynchronousTestCase

from fastedge.mesh.metrics import MeshMetrics
from fastedge.mesh.unanswered import CallFailures
from fastedge.metrics.registry import new_registry


class CallFailuresTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = new_registry()
        self.failures = CallFailures(MeshMetrics(self.registry), self.clock.seconds)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def count(self, call: str) -> float:
        return self.registry.get_sample_value("fastedge_mesh_call_failures_total", {"call": call}) or 0.0

    def logged(self) -> list[tuple[str, str, int]]:
        return [(e["call"], e["peer"], e["since"]) for e in self.events if "call" in e and "since" in e]

    def test_success_is_quiet(self) -> None:
        """A call that succeeds counts and logs nothing; the result is dropped."""
        d = self.failures.watch(succeed("answer"), "announce", "edge-b")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual((self.count("announce"), self.logged()), (0.0, []))

    def test_failures_counted_and_logged_once_a_minute(self) -> None:
        """Every failure is counted; the first of a call name is logged, the
        next ones within a minute only counted, and the next line says how
        many failed in between. Each call name has its own report."""
        for _ in range(3):
            d: Deferred[None] = self.failures.watch(fail(PBConnectionLost("gone")), "events", "edge-b")
            self.assertIsNone(self.successResultOf(d))
        self.failures.watch(fail(PBConnectionLost("gone")), "block", "edge-c")
        self.assertEqual((self.count("events"), self.count("block")), (3.0, 1.0))
        self.assertEqual(self.logged(), [("events", "edge-b", 0), ("block", "edge-c", 0)])
        self.clock.advance(60)
        self.failures.watch(fail(PBConnectionLost("gone")), "events", "edge-b")
        self.assertEqual(self.logged()[-1], ("events", "edge-b", 2))
        self.assertEqual(self.count("events"), 4.0)
