"""Who may join: mutual TLS with the cluster CA, and a certificate that
names the node a peer claims to be (real TLS and PB, in memory)."""

from __future__ import annotations

import datetime

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.spread import pb
from twisted.trial.unittest import SynchronousTestCase

from fastedge.mesh.auth import CertificateChecker, PeerCertificate
from fastedge.testing.certs import test_ca
from fastedge.testing.mesh import MemoryMesh

from .common import Rogue, metric
from .test_messages import ForeignCopy

NOW = datetime.datetime.now(datetime.UTC)


class CheckerTests(SynchronousTestCase):
    def test_checker(self) -> None:
        """The checker accepts a claim only with a certificate for that node."""
        from cryptography import x509

        from fastedge.mesh.tls import create_node_certificate

        ca, key = test_ca()
        cert = x509.load_pem_x509_certificate(create_node_certificate("edge-1", ca, key)[0])
        checker = CertificateChecker()
        self.assertEqual(
            self.successResultOf(checker.requestAvatarId(PeerCertificate("edge-1", cert))),
            "edge-1",
        )
        self.failureResultOf(checker.requestAvatarId(PeerCertificate("edge-2", cert)), UnauthorizedLogin)
        self.failureResultOf(checker.requestAvatarId(PeerCertificate("edge-1", None)), UnauthorizedLogin)


class LoginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.mesh = MemoryMesh(self)
        self.mesh.add("a")
        self.mesh.add("b")
        self.mesh.advance(1.0)

    def logged(self, text: str) -> list[dict[str, object]]:
        return [e for e in self.events if text in str(e.get("log_format", ""))]

    def assertNothingChanged(self) -> None:
        """The good nodes still see only each other, ALIVE."""
        self.mesh.advance(3.0)
        self.assertEqual(self.mesh.states("a"), {"a": "alive", "b": "alive"})
        self.assertEqual(self.mesh.states("b"), {"a": "alive", "b": "alive"})

    def test_good_certificate_logs_in(self) -> None:
        """A peer whose certificate names the node it claims gets a session
        (the control for the refusals below)."""
        rogue = Rogue(self.mesh, cert_name="newcomer", claim="newcomer")
        rogue.login("a")
        (answer,) = rogue.answer
        self.assertIsInstance(answer[0], pb.RemoteReference)
        self.assertEqual(answer[1].node_id, "a")

    def test_mismatched_name_refused(self) -> None:
        """A certificate from the cluster CA for another node does not let a
        peer log in as b: refused, logged with the reason, counted."""
        rogue = Rogue(self.mesh, cert_name="x", claim="b")
        rogue.login("a")
        (answer,) = rogue.answer
        self.assertIsInstance(answer, Failure)
        self.assertIn("the certificate is for x, not b", answer.getErrorMessage())
        self.assertEqual(
            metric(self.mesh, "a", "fastedge_mesh_refused_total", reason="name_mismatch"),
            1.0,
        )
        (event,) = self.logged("refused")
        self.assertEqual((event["peer"], event["reason"]), ("b", "the certificate is for x, not b"))
        self.assertTrue(rogue.broker.disconnected)
        self.assertNothingChanged()

    def test_other_ca_refused(self) -> None:
        """A certificate from another CA fails the TLS handshake: nothing of
        PB is reached, and both the refusal and its reason are logged."""
        rogue = Rogue(self.mesh, cert_name="b", claim="b", ca=test_ca("other"))
        rogue.login("a")
        self.assertEqual(rogue.answer, [])
        self.assertIsNone(rogue.broker)
        self.assertEqual(metric(self.mesh, "a", "fastedge_mesh_refused_total", reason="tls"), 1.0)
        (event,) = [e for e in self.logged("TLS handshake") if e.get("direction") == "from"]
        self.assertIn("cluster CA", str(event["detail"]))
        self.assertNothingChanged()

    def test_expired_certificate_refused(self) -> None:
        """An expired certificate from the cluster CA fails the handshake,
        logged as expired."""
        rogue = Rogue(
            self.mesh,
            cert_name="b",
            claim="b",
            not_before=NOW - datetime.timedelta(days=30),
            not_after=NOW - datetime.timedelta(days=1),
        )
        rogue.login("a")
        self.assertEqual(rogue.answer, [])
        (event,) = [e for e in self.logged("TLS handshake") if e.get("direction") == "from"]
        self.assertEqual(event["detail"], "the certificate has expired")
        self.assertNothingChanged()

    def test_impostor_server_refused(self) -> None:
        """A node that reaches a server announcing itself as b, whose
        certificate is for x, refuses it and does not take it into its map."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from fastedge.mesh.tls import MeshIdentity, create_node_certificate

        ca, key = test_ca()
        cert, cert_key = create_node_certificate("x", ca, key)
        identity = MeshIdentity(
            "b",
            x509.load_pem_x509_certificate(ca),
            x509.load_pem_x509_certificate(cert),
            serialization.load_pem_private_key(cert_key, None),  # type: ignore[arg-type]
        )
        self.mesh.add("impostor-host", identity=identity, seeds=[])
        self.mesh.add("c", seeds=[self.mesh.address("impostor-host")])
        self.mesh.advance(1.0)
        self.assertEqual(self.mesh.states("c"), {"c": "alive"})
        self.assertGreaterEqual(
            metric(self.mesh, "c", "fastedge_mesh_refused_total", reason="name_mismatch"),
            1.0,
        )
        self.assertTrue(self.logged("refused the peer"))

    def test_unregistered_type_after_login(self) -> None:
        """A logged-in peer that sends a type outside the whitelist is
        disconnected; the other nodes are not affected."""
        rogue = Rogue(self.mesh, cert_name="newcomer", claim="newcomer")
        rogue.login("a")
        rogue.call("announce", ForeignCopy())
        self.assertTrue(rogue.broker.disconnected)
        self.assertEqual(
            metric(
                self.mesh,
                "a",
                "fastedge_mesh_peer_disconnects_total",
                reason="insecure_type",
            ),
            1.0,
        )
        self.mesh.advance(3.0)
        self.assertEqual(self.mesh.states("a")["b"], "alive")
        self.assertEqual(self.mesh.states("b")["a"], "alive")

    def test_announcing_another_node_refused(self) -> None:
        """A peer may announce only itself."""
        rogue = Rogue(self.mesh, cert_name="newcomer", claim="newcomer")
        rogue.login("a")
        (result,) = rogue.call("announce", self.mesh.nodes["b"].membership.me.replace(incarnation=9))
        self.assertIsInstance(result, Failure)
        self.assertEqual(self.mesh.nodes["a"].node_map.nodes()["b"].incarnation, 1)
