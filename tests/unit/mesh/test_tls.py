"""The mesh's certificates: creation, loading and the checks on them."""

from __future__ import annotations

import datetime
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from fastedge.mesh.tls import (
    MeshCertificateError,
    MeshTLS,
    certificate_names,
    create_ca,
    create_node_certificate,
    load_identity,
    name_mismatch,
    write_file,
)
from fastedge.testing.certs import test_ca, write_node_certs

NOW = datetime.datetime.now(datetime.UTC)


class CreateTests(SynchronousTestCase):
    def test_node_certificate_names_the_node(self) -> None:
        """A node certificate is for exactly its node id, signed by the CA,
        and usable both as a TLS server and client."""
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID

        ca_pem, ca_key = create_ca()
        cert_pem, _ = create_node_certificate("edge-1", ca_pem, ca_key)
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        self.assertEqual(certificate_names(cert), ["edge-1"])
        cert.verify_directly_issued_by(ca)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(
            set(usages),
            {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH},
        )
        self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)

    def test_name_mismatch(self) -> None:
        """service_identity decides whether a certificate is a node's: the
        right id passes, another id (or none) is explained."""
        from cryptography import x509

        ca_pem, ca_key = test_ca()
        cert = x509.load_pem_x509_certificate(create_node_certificate("edge-1", ca_pem, ca_key)[0])
        self.assertIsNone(name_mismatch(cert, "edge-1"))
        self.assertEqual(name_mismatch(cert, "edge-2"), "the certificate is for edge-1, not edge-2")
        self.assertEqual(name_mismatch(None, "edge-1"), "no certificate")

    def test_private_files(self) -> None:
        """Keys are written mode 0600 and certificates 0644, atomically."""
        directory = self.mktemp()
        write_file(os.path.join(directory, "k"), b"secret", private=True)
        write_file(os.path.join(directory, "c"), b"public", private=False)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(directory, "k")).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(directory, "c")).st_mode), 0o644)
        self.assertEqual(sorted(os.listdir(directory)), ["c", "k"])


class LoadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())

    def load(self, node_id: str = "edge-1", **paths: str):  # type: ignore[no-untyped-def]
        files = {
            "ca_file": os.path.join(self.dir, "ca.pem"),
            "cert_file": os.path.join(self.dir, "node.pem"),
            "key_file": os.path.join(self.dir, "node.key"),
        }
        files.update(paths)
        return load_identity(node_id, **files)

    def assertRefused(self, message: str, **kw: str) -> None:
        with self.assertRaises(MeshCertificateError) as cm:
            self.load(**kw)
        self.assertIn(message, str(cm.exception))

    def test_good_identity(self) -> None:
        """A certificate for this node from the CA, with its key, loads and
        makes a TLS context."""
        write_node_certs(self.dir, "edge-1")
        identity = self.load()
        self.assertEqual(identity.node_id, "edge-1")
        self.assertIsNotNone(MeshTLS(identity)._context())

    def test_missing_file(self) -> None:
        """A missing file is named."""
        write_node_certs(self.dir, "edge-1")
        os.unlink(os.path.join(self.dir, "node.key"))
        self.assertRefused("mesh node key {}: cannot read".format(os.path.join(self.dir, "node.key")))

    def test_not_pem(self) -> None:
        """A file that is not a PEM certificate is named."""
        write_node_certs(self.dir, "edge-1")
        with open(os.path.join(self.dir, "ca.pem"), "w") as f:
            f.write("nonsense")
        self.assertRefused("mesh CA certificate {}: not a PEM certificate".format(os.path.join(self.dir, "ca.pem")))

    def test_other_nodes_certificate(self) -> None:
        """A node refuses to start with a certificate for another node id."""
        write_node_certs(self.dir, "edge-2")
        self.assertRefused("the certificate is for edge-2, not edge-1 (node.id)")

    def test_key_of_another_certificate(self) -> None:
        """The key must be the certificate's."""
        write_node_certs(self.dir, "edge-1")
        other = os.path.abspath(self.mktemp())
        write_node_certs(other, "edge-1")
        self.assertRefused("does not match the certificate", key_file=os.path.join(other, "node.key"))

    def test_certificate_of_another_ca(self) -> None:
        """A certificate not signed by the configured CA is refused."""
        write_node_certs(self.dir, "edge-1", ca=test_ca("other"))
        with open(os.path.join(self.dir, "ca.pem"), "wb") as f:
            f.write(test_ca()[0])
        self.assertRefused("not signed by the CA")

    def test_expired(self) -> None:
        """An expired certificate (or one not valid yet) is refused at start,
        with its validity."""
        write_node_certs(
            self.dir,
            "edge-1",
            not_before=NOW - datetime.timedelta(days=30),
            not_after=NOW - datetime.timedelta(days=1),
        )
        self.assertRefused("not valid now")
        write_node_certs(self.dir, "edge-1", not_before=NOW + datetime.timedelta(days=1))
        self.assertRefused("not valid now")
