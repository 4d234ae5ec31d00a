"""The residency gate: which requests name a tenant, and the 421 it answers."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import ZoneConfig
from fastedge.residency.directory import TenantDirectory
from fastedge.residency.gate import Misdirected, ResidencyGate, deployment_hosts, tenant_in_path


class PathTests(SynchronousTestCase):
    def test_tenant_paths(self) -> None:
        cases = {
            b"/api/v1/t1/comments": "t1",
            b"/api/v1/t1": "t1",
            b"/embed/t-2/": "t-2",
            b"/media/T_3/avatars/a.png": "T_3",
            b"/api/v1/manage/comments": None,
            b"/api/v1/mesh": None,
            b"/embed/static/widget.js": None,
            b"/live": None,
            b"/healthz": None,
            b"/api/v1/": None,
        }
        for path, tenant in cases.items():
            self.assertEqual(tenant_in_path(path, {}), tenant, path)
        self.assertEqual(tenant_in_path(b"/live/events", {b"tenant": [b"t9"]}), "t9")
        self.assertIsNone(tenant_in_path(b"/live/events", {}))
        self.assertIsNone(tenant_in_path(b"/api/v1/\xff/comments", {}))

    @given(st.binary(max_size=60))
    def test_any_path(self, tail: bytes) -> None:
        """Nothing a client sends makes the parser fail."""
        for prefix in (b"/api/v1/", b"/embed/", b"/media/", b"/"):
            tenant_in_path(prefix + tail, {b"tenant": [tail]})

    def test_hosts_from_zones(self) -> None:
        zones = [
            ZoneConfig(name="edge.example.test", deployment="global", geo_names=("@",)),
            ZoneConfig(name="eu.example.test", deployment="eu", geo_names=("edge", "www")),
            ZoneConfig(name="eu2.example.test", deployment="eu", geo_names=("edge",)),
        ]
        self.assertEqual(deployment_hosts(zones), {"global": "edge.example.test", "eu": "edge.eu.example.test"})


class FixedDirectory(TenantDirectory):
    def __init__(self, answers: dict[str, str | None], deployment: str = "global") -> None:
        super().__init__(None, Clock(), deployment=deployment)  # type: ignore[arg-type]
        self.answers = answers
        self.pending: Deferred[Any] | None = None

    def deployment_of(self, tenant_id: str) -> Deferred[str | None]:
        self.pending = succeed(self.answers.get(tenant_id))
        return self.pending


class GateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.refused: list[str] = []
        self.gate = ResidencyGate(
            FixedDirectory({"ours": "global", "theirs": "eu"}),
            {"eu": "edge.eu.example.test"},
            count=self.refused.append,
        )

    def test_other_deployment(self) -> None:
        verdict = self.successResultOf(self.gate.check(b"/api/v1/theirs/comments", {}))  # type: ignore[arg-type]
        self.assertEqual(verdict, Misdirected("theirs", "eu", "edge.eu.example.test"))
        self.assertEqual(
            verdict.error(),
            {
                "code": "wrong_deployment",
                "message": "tenant theirs is served by deployment eu: use edge.eu.example.test",
                "deployment": "eu",
                "host": "edge.eu.example.test",
            },
        )
        self.assertEqual(self.refused, ["api"])

    def test_ours_unknown_and_no_tenant(self) -> None:
        self.assertIsNone(self.successResultOf(self.gate.check(b"/embed/ours/", {})))  # type: ignore[arg-type]
        self.assertIsNone(self.successResultOf(self.gate.check(b"/media/nobody/x.png", {})))  # type: ignore[arg-type]
        self.assertIsNone(self.gate.check(b"/healthz", {}))
        self.assertEqual(self.refused, [])

    def test_host_unknown(self) -> None:
        gate = ResidencyGate(FixedDirectory({"t": "apac"}), {})
        verdict = self.successResultOf(gate.check(b"/live/events", {b"tenant": [b"t"]}))  # type: ignore[arg-type]
        self.assertEqual(
            verdict.error(),
            {
                "code": "wrong_deployment",
                "message": "tenant t is served by deployment apac: ask that deployment's nodes",
                "deployment": "apac",
            },
        )
