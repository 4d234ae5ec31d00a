# -*- test-case-name: tests.unit.mesh.test_tls -*-
"""Mutual TLS between nodes: the cluster CA, node certificates, and the
OpenSSL context every mesh connection uses.

One cluster CA signs one certificate per node; the certificate names the
node id (subject alternative name ``DNS:<node id>``). Both ends of every
mesh connection present their certificate and verify the other's against
the CA: a certificate from another CA, an expired one or none at all fails
the handshake. Which node a verified certificate belongs to is checked
with ``service_identity`` when the peer says who it is (at login,
:mod:`fastedge.mesh.auth`), so a node cannot pass itself off as another.

Certificates and keys are created with ``cryptography`` (``fastedge-admin
certs ca`` and ``fastedge-admin certs node NODE_ID``); keys are EC P-256.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

__all__ = [
    "MeshCertificateError",
    "MeshIdentity",
    "MeshTLS",
    "certificate_names",
    "create_ca",
    "create_node_certificate",
    "load_identity",
    "name_mismatch",
    "peer_certificate",
]


class MeshCertificateError(Exception):
    """The node's own CA, certificate or key is missing or unusable; the
    message says which file and why."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(
    *,
    name: str = "fastedge mesh CA",
    days: int = 3650,
    now: datetime.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A new cluster CA.

    :returns: ``(certificate PEM, private key PEM)``.
    """
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def create_node_certificate(
    node_id: str,
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    days: int = 365,
    now: datetime.datetime | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    extra_names: Sequence[str] = (),
) -> tuple[bytes, bytes]:
    """A certificate for ``node_id``, signed by the cluster CA, usable as a
    TLS server and client.

    :param not_before, not_after: override the validity (tests make
        expired certificates with them).
    :param extra_names: more DNS names it is valid for (a local cluster's
        HTTPS certificates name the deployment's host names too).
    :returns: ``(certificate PEM, private key PEM)``.
    """
    now = now or _now()
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in (node_id, *extra_names)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def write_file(path: str, data: bytes, *, private: bool) -> None:
    """Write ``data`` to ``path`` atomically (a private file is mode 0600
    from the start, never readable by others even briefly)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for (for log lines)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)]


def name_mismatch(cert: x509.Certificate | None, node_id: str) -> str | None:
    """Why ``cert`` does not prove to be ``node_id`` (``None``: it does).

    The check is ``service_identity``'s (RFC 6125 DNS-ID matching).
    """
    if cert is None:
        return "no certificate"
    try:
        verify_certificate_hostname(cert, node_id)
    except VerificationError:
        return "the certificate is for {}, not {}".format(",".join(certificate_names(cert)) or "no node", node_id)
    return None


def peer_certificate(transport: Any) -> x509.Certificate | None:
    """The verified certificate the peer presented on a TLS transport, or
    ``None`` (no TLS, or no certificate)."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    cert = get()
    return None if cert is None else cert.to_cryptography()


@dataclass(frozen=True)
class MeshIdentity:
    """This node's credentials in the mesh."""

    node_id: str
    ca: x509.Certificate
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def not_after(self) -> datetime.datetime:
        """When the node's certificate expires."""
        return self.certificate.not_valid_after_utc


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise MeshCertificateError("{} {}: cannot read ({})".format(what, path, e.strerror)) from None


def identity_files_problem(node_id: str, *, seeds: bool, ca_file: str, cert_file: str, key_file: str) -> str | None:
    """Why this node's mesh files cannot make its identity, in one line
    naming the config key and how to make the file; ``None`` when they can
    (or when a lone node will make them: no seeds, none of the files).

    For option parsing, so the node is refused before anything starts.
    """
    files = (("mesh.ca_file", ca_file), ("mesh.cert_file", cert_file), ("mesh.key_file", key_file))
    if not seeds and not any(os.path.exists(path) for _, path in files):
        return None
    for key, path in files:
        if os.path.exists(path):
            continue
        if key == "mesh.ca_file":
            return (
                "mesh.ca_file: {} does not exist; a node that joins a cluster needs the cluster's CA "
                "certificate: copy it from the cluster, or create a new cluster CA with "
                "`fastedge-admin certs ca`".format(path)
            )
        return (
            "{}: {} does not exist; make this node's certificate and key with "
            "`fastedge-admin certs node {}` (where the cluster CA key is)".format(key, path, node_id)
        )
    try:
        load_identity(node_id, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    except MeshCertificateError as e:
        return str(e)
    return None


def load_identity(
    node_id: str,
    *,
    ca_file: str,
    cert_file: str,
    key_file: str,
    now: datetime.datetime | None = None,
) -> MeshIdentity:
    """Read and check this node's CA, certificate and key.

    :raises MeshCertificateError: a file is missing or unreadable, the
        certificate is not for ``node_id``, not signed by the CA, not valid
        now, or does not match the key.
    """
    now = now or _now()
    try:
        ca = x509.load_pem_x509_certificate(_read(ca_file, "mesh CA certificate"))
    except ValueError:
        raise MeshCertificateError("mesh CA certificate {}: not a PEM certificate".format(ca_file)) from None
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_file, "mesh node certificate"))
    except ValueError:
        raise MeshCertificateError("mesh node certificate {}: not a PEM certificate".format(cert_file)) from None
    try:
        key = serialization.load_pem_private_key(_read(key_file, "mesh node key"), None)
    except (ValueError, TypeError):
        raise MeshCertificateError("mesh node key {}: not an unencrypted PEM private key".format(key_file)) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise MeshCertificateError("mesh node key {}: does not match the certificate {}".format(key_file, cert_file))
    mismatch = name_mismatch(cert, node_id)
    if mismatch is not None:
        raise MeshCertificateError("mesh node certificate {}: {} (node.id)".format(cert_file, mismatch))
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise MeshCertificateError(
            "mesh node certificate {}: not signed by the CA in {}".format(cert_file, ca_file)
        ) from None
    for what, path, c in (
        ("CA certificate", ca_file, ca),
        ("node certificate", cert_file, cert),
    ):
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
            raise MeshCertificateError(
                "mesh {} {}: not valid now (valid from {} to {})".format(
                    what,
                    path,
                    c.not_valid_before_utc.isoformat(),
                    c.not_valid_after_utc.isoformat(),
                )
            )
    return MeshIdentity(node_id, ca, cert, key)


#: OpenSSL's certificate verification errors, named for log lines
#: (X509_V_ERR_* numbers, stable across OpenSSL versions).
_VERIFY_ERRORS = {
    2: "the certificate is not from the cluster CA (unknown issuer)",
    7: "the certificate's signature is invalid",
    9: "the certificate is not valid yet",
    10: "the certificate has expired",
    18: "the certificate is self-signed, not from the cluster CA",
    19: "the certificate chain ends in a CA that is not the cluster CA",
    20: "the certificate is not from the cluster CA",
    21: "the certificate is not from the cluster CA",
    24: "the issuer is not a CA",
    26: "the certificate may not be used for this purpose",
}


def _describe_verify_error(errno: int) -> str:
    return _VERIFY_ERRORS.get(errno, "the certificate failed verification (OpenSSL error {})".format(errno))


def _verify(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's verdict stands; a refusal is told to the mesh protocol on
    that connection, so it can log why (OpenSSL's own error only says
    "certificate verify failed")."""
    if not ok:
        tls = conn.get_app_data()
        wrapped = getattr(tls, "wrappedProtocol", None)
        refused: Callable[[str], None] | None = getattr(wrapped, "tls_refused", None)
        if refused is not None:
            refused(_describe_verify_error(errno))
        return False
    return True


def make_context(identity: MeshIdentity) -> SSL.Context:
    """The OpenSSL context of every mesh connection, server or client side:
    TLS 1.3 only, our certificate, the cluster CA as the only trust root,
    and a certificate required from the peer."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    # No session resumption: every connection proves its certificate again.
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.use_certificate(identity.certificate)
    ctx.use_privatekey(identity.key)
    ctx.check_privatekey()
    ctx.get_cert_store().add_cert(X509.from_cryptography(identity.ca))  # type: ignore[union-attr]
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify)
    ctx.set_verify_depth(2)
    ctx.set_session_id(b"fastedge-mesh")
    return ctx


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class MeshTLS:
    """Creates the OpenSSL connection of every mesh connection, on either
    side (for ``TLSMemoryBIOFactory`` and ``wrapClientTLS``).

    The context is built on first use (it reads no file: the identity is
    already loaded).
    """

    def __init__(self, identity: MeshIdentity) -> None:
        self.identity = identity
        self._ctx: SSL.Context | None = None

    def _context(self) -> SSL.Context:
        if self._ctx is None:
            self._ctx = make_context(self.identity)
        return self._ctx

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context(), None)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context(), None)
