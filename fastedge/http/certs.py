# -*- test-case-name: tests.unit.http.test_certs -*-
"""Certificates for the HTTPS listener: a directory, one file set per host
name, chosen by SNI and picked up again when the files change.

The directory holds ``NAME.pem`` (private key and certificate chain in one
file) or ``NAME.crt`` plus ``NAME.key``, where ``NAME`` is a host name
(``www.example.com``), a wildcard (``*.example.com``) or ``default``. The
directory is scanned at most every ``reload_check_seconds`` (lazily, when a
handshake needs a certificate), so replacing a file takes effect for new
connections without a restart and a flood of handshakes costs no extra
``stat`` calls. A file that fails to load (half-written, key and certificate
that do not match) is logged and counted, and the previous certificate for
that name stays in use.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .metrics import TlsMetrics

#: Host names as they may appear in SNI and in file names (lower case).
_HOST_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DEFAULT_NAME = "default"
_EXPIRY_WARNING = datetime.timedelta(days=14)


class CertificateLoadError(Exception):
    """A certificate file set is unusable; the message says why (no secrets)."""


def normalize_server_name(raw: bytes | None) -> str | None:
    """The SNI name a client sent, lower-cased, or ``None`` when it is absent
    or not a host name (such names never touch the file system)."""
    if not raw or len(raw) > 253:
        return None
    try:
        name = raw.decode("ascii").lower().rstrip(".")
    except UnicodeDecodeError:
        return None
    if name.startswith("*") or not _HOST_RE.match(name):
        return None
    return name


def candidates(name: str | None) -> list[str]:
    """Certificate names to try for SNI ``name``, best first: the exact
    name, the wildcard one level up, then ``default``."""
    out = []
    if name is not None:
        out.append(name)
        head, dot, parent = name.partition(".")
        if dot and "." in parent:
            out.append("*." + parent)
    out.append(DEFAULT_NAME)
    return out


@dataclass(frozen=True)
class LoadedCertificate:
    """One usable certificate: its context and what it was loaded from."""

    name: str
    signature: tuple[tuple[str, int, int, int], ...]
    not_after: datetime.datetime
    context: SSL.Context


def _signature(paths: tuple[str, ...]) -> tuple[tuple[str, int, int, int], ...] | None:
    """(path, inode, size, mtime) of each file: changes whenever a file is replaced."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        out.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def read_key_and_chain(paths: tuple[str, ...]) -> tuple[object, list[x509.Certificate]]:
    """Parse a private key and a certificate chain (leaf first) from PEM files.

    :raises CertificateLoadError: naming the file and the problem.
    """
    data = b""
    for path in paths:
        try:
            with open(path, "rb") as f:
                data += f.read() + b"\n"
        except OSError as e:
            raise CertificateLoadError(f"{path}: cannot read ({e.strerror})") from None
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateLoadError(f"{paths[0]}: no PEM certificate found") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CertificateLoadError(f"{paths[-1]}: no usable unencrypted PEM private key found") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CertificateLoadError(f"{paths[-1]}: the private key does not match the certificate")
    return key, chain


ContextBuilder = Callable[[object, list[x509.Certificate]], SSL.Context]


class CertificateStore:
    """Certificates of one directory by name, reloaded when files change.

    :param build_context: makes the TLS context for a key and chain (the
        listener's protocol versions, ciphers, ALPN and SNI callback).
    :param fallback: a file set used as ``default`` when the directory has
        none (the generated self-signed certificate), or ``None``.
    """

    _log = Logger()

    def __init__(
        self,
        directory: str,
        *,
        clock: IReactorTime,
        build_context: ContextBuilder,
        check_seconds: float,
        metrics: TlsMetrics,
        fallback: tuple[str, ...] | None = None,
    ) -> None:
        self._dir = directory
        self._clock = clock
        self._build = build_context
        self._check_seconds = check_seconds
        self._metrics = metrics
        self._fallback = fallback
        self._certs: dict[str, LoadedCertificate] = {}
        # Signatures of file sets that failed, so a bad file is reported once.
        self._failed: dict[str, tuple[tuple[str, int, int, int], ...]] = {}
        self._scanned_at: float | None = None

    def names(self) -> list[str]:
        """Names with a usable certificate (for status and tests)."""
        self.refresh()
        return sorted(self._certs)

    def context_for(self, server_name: bytes | None) -> SSL.Context:
        """The context for a client's SNI name (exact, wildcard, default).

        :raises CertificateLoadError: when not even a default is usable.
        """
        self.refresh()
        for name in candidates(normalize_server_name(server_name)):
            cert = self._certs.get(name)
            if cert is not None:
                return cert.context
        raise CertificateLoadError(f"no usable default certificate in {self._dir}")

    def default_context(self) -> SSL.Context:
        """The context a connection starts with, before its SNI is known."""
        return self.context_for(None)

    def refresh(self, force: bool = False) -> None:
        """Rescan the directory if ``reload_check_seconds`` have passed."""
        now = self._clock.seconds()
        if not force and self._scanned_at is not None and now - self._scanned_at < self._check_seconds:
            return
        self._scanned_at = now
        found = self._scan()
        for name in list(self._certs):
            if name not in found:
                self._log.info(
                    "certificate {name} removed from {directory}",
                    name=name,
                    directory=self._dir,
                )
                del self._certs[name]
        for name, paths in found.items():
            self._consider(name, paths)
        self._metrics.certificates.set(len(self._certs))

    def _scan(self) -> dict[str, tuple[str, ...]]:
        found: dict[str, tuple[str, ...]] = {}
        try:
            files = set(os.listdir(self._dir))
        except FileNotFoundError:
            files = set()
        except OSError as e:
            self._log.error(
                "cannot list certificate directory {directory}: {reason}",
                directory=self._dir,
                reason=e.strerror,
            )
            files = set()
        for filename in files:
            stem, ext = os.path.splitext(filename)
            if stem != DEFAULT_NAME and not _HOST_RE.match(stem):
                continue
            if ext == ".pem":
                found[stem] = (os.path.join(self._dir, filename),)
            elif ext == ".crt" and stem + ".key" in files and stem + ".pem" not in files:
                found[stem] = (
                    os.path.join(self._dir, filename),
                    os.path.join(self._dir, stem + ".key"),
                )
        if DEFAULT_NAME not in found and self._fallback is not None:
            found[DEFAULT_NAME] = self._fallback
        return found

    def _consider(self, name: str, paths: tuple[str, ...]) -> None:
        signature = _signature(paths)
        if signature is None:
            return  # removed between listing and stat: next scan sees it
        current = self._certs.get(name)
        if current is not None and current.signature == signature:
            return
        if self._failed.get(name) == signature:
            return
        try:
            key, chain = read_key_and_chain(paths)
            context = self._build(key, chain)
        except (CertificateLoadError, SSL.Error, ValueError) as e:
            self._failed[name] = signature
            self._metrics.cert_load_errors.inc()
            self._log.error(
                "certificate {name} not loaded, {keeping}: {reason}",
                name=name,
                keeping=("keeping the previous one" if current is not None else "no certificate for this name"),
                reason=str(e),
            )
            return
        self._failed.pop(name, None)
        not_after = chain[0].not_valid_after_utc
        self._certs[name] = LoadedCertificate(name, signature, not_after, context)
        self._metrics.cert_expiry.labels(name).set(not_after.timestamp())
        self._log.info(
            "certificate {name} loaded from {path}, valid until {not_after}",
            name=name,
            path=paths[0],
            not_after=not_after.isoformat(),
        )
        remaining = not_after - datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)
        if remaining < _EXPIRY_WARNING:
            self._log.warn(
                "certificate {name} expires on {not_after}",
                name=name,
                not_after=not_after.isoformat(),
            )


def self_signed_pem(common_name: str, now: datetime.datetime, days: int = 365) -> bytes:
    """A new self-signed certificate and its key, as one PEM document.

    For ``localhost``, ``127.0.0.1``, ``::1`` and ``common_name``: enough
    for a laptop and for tests, never trusted by browsers.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    dns = sorted({"localhost", common_name})
    san = x509.SubjectAlternativeName(
        [x509.DNSName(d) for d in dns]
        + [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)


def ensure_self_signed(path: str, common_name: str, now: datetime.datetime) -> bool:
    """Create ``path`` (mode 0600) unless it holds a certificate still valid
    for a day; returns whether a new one was written."""
    try:
        _, chain = read_key_and_chain((path,))
        if chain[0].not_valid_after_utc - now > datetime.timedelta(days=1):
            return False
    except CertificateLoadError:
        pass
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(self_signed_pem(common_name, now))
    os.replace(tmp, path)
    return True
