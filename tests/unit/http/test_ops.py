"""Who sees the operational endpoints."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.http.ops import OpsNetworks, is_ops_path


class OpsNetworksTests(SynchronousTestCase):
    def test_loopback_default(self) -> None:
        ops = OpsNetworks(["127.0.0.0/8", "::1/128"])
        self.assertTrue(ops.allows("127.0.0.1"))
        self.assertTrue(ops.allows("127.9.8.7"))
        self.assertTrue(ops.allows("::1"))
        self.assertTrue(ops.allows("::ffff:127.0.0.1"), "an IPv4 client on a dual-stack listener")
        self.assertFalse(ops.allows("10.1.2.3"))
        self.assertFalse(ops.allows("2001:db8::1"))
        self.assertFalse(ops.allows("::ffff:10.1.2.3"))

    def test_scoped_and_garbage(self) -> None:
        ops = OpsNetworks(["fe80::/10"])
        self.assertTrue(ops.allows("fe80::1%eth0"))
        self.assertFalse(ops.allows("not an address"))
        self.assertFalse(ops.allows(""))

    def test_nobody(self) -> None:
        self.assertFalse(OpsNetworks([]).allows("127.0.0.1"))

    def test_no_peer_address(self) -> None:
        """A connection without an IP peer (a UNIX socket) is the operator's own."""
        self.assertTrue(OpsNetworks([]).allows(None))

    @given(st.ip_addresses(v=4))
    def test_ipv4_mapped_same_answer(self, address) -> None:  # type: ignore[no-untyped-def]
        ops = OpsNetworks(["10.0.0.0/8", "192.168.0.0/16"])
        self.assertEqual(ops.allows(str(address)), ops.allows("::ffff:" + str(address)))


class OpsPathTests(SynchronousTestCase):
    def test_paths(self) -> None:
        for path in (b"/metrics", b"/api/v1/mesh", b"/status", b"/status/events", b"/api/v1/mesh/x"):
            self.assertTrue(is_ops_path(path), path)
        for path in (b"/", b"/healthz", b"/metricsx", b"/api/v1/meshy", b"/api/v1/t/comments", b"/statuses"):
            self.assertFalse(is_ops_path(path), path)
