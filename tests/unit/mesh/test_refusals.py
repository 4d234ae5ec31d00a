"""A peer that is refused (here: its certificate is from another CA) is
retried with the same capped exponential backoff as an unreachable one, and
its refusals are logged once, then summarised, on both sides (real TLS and
PB in memory, on one Clock)."""

from __future__ import annotations

import os

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import MeshConfig
from fastedge.mesh.broker import RefusalLog
from fastedge.testing.certs import test_ca, write_node_certs
from fastedge.testing.mesh import MemoryMesh

from .common import metric


class RefusedPeerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.mesh = MemoryMesh(self)
        self.mesh.add("a", seeds=[])
        self.mesh.advance(1.0)
        certs = write_node_certs(os.path.abspath(self.mktemp()), "evil", ca=test_ca("other"))
        self.mesh.add("evil", seeds=[self.mesh.address("a")], certs=certs)

    def attempts(self) -> float:
        """Connections from evil that a refused (each is one attempt)."""
        return metric(self.mesh, "a", "fastedge_mesh_refused_total", reason="tls")

    def tls_warnings(self, direction: str) -> list[dict[str, object]]:
        return [
            e
            for e in self.events
            if "TLS handshake" in str(e.get("log_format", "")) and e.get("direction") == direction
        ]

    def test_backs_off_like_an_unreachable_peer(self) -> None:
        """Over ten simulated minutes a refused seed is tried about as often
        as the capped backoff allows (one try per reconnect_max_seconds once
        grown), not five times a second."""
        cap = MeshConfig().reconnect_max_seconds
        self.mesh.advance(600.0, step=0.05)
        attempts = self.attempts()
        # Growing from 0.1 s by 1.5x reaches the cap in ~10 tries (~15 s);
        # then one try per cap (plus at most 0.1 s of jitter).
        self.assertGreaterEqual(attempts, 600.0 / (cap + 0.1))
        self.assertLessEqual(attempts, 10 + 600.0 / cap + 1)
        self.assertEqual(self.mesh.states("a"), {"a": "alive"})

    def test_refusals_logged_once_then_summarised(self) -> None:
        """Both sides log the first refusal as a warning, then only a summary
        with the count, at most once per summary period."""
        self.mesh.advance(600.0, step=0.05)
        attempts = int(self.attempts())
        self.assertGreater(attempts, 50)
        for direction in ("from", "to"):
            (first,) = self.tls_warnings(direction)
            summaries = [
                e for e in self.events if e.get("log_format") == RefusalLog.SUMMARY and e.get("direction") == direction
            ]
            self.assertLessEqual(len(summaries), 600.0 / RefusalLog.summary_seconds + 1)
            self.assertGreaterEqual(len(summaries), 600.0 / RefusalLog.summary_seconds - 1)
            # Every refusal is told of once: the first, then in the counts
            # (those since the last summary wait for the next one).
            told = 1 + sum(int(e["count"]) for e in summaries)  # type: ignore[call-overload]
            cap = MeshConfig().reconnect_max_seconds
            self.assertLessEqual(told, attempts, direction)
            self.assertGreaterEqual(told, attempts - RefusalLog.summary_seconds / cap - 1, direction)
            self.assertIn("detail", summaries[-1])

    def test_a_new_refusal_after_quiet_is_logged_again(self) -> None:
        """A peer that stopped being refused and is refused again later (a
        new problem) gets a warning of its own, not just a count."""
        log = RefusalLog(self.mesh.clock)
        self.assertTrue(log.refused(("from", "10.0.0.1"), direction="from", peer="10.0.0.1:1", detail="x"))
        self.assertFalse(log.refused(("from", "10.0.0.1"), direction="from", peer="10.0.0.1:2", detail="x"))
        self.mesh.clock.advance(RefusalLog.forget_seconds + 1)
        self.assertTrue(log.refused(("from", "10.0.0.1"), direction="from", peer="10.0.0.1:3", detail="x"))
