# -*- test-case-name: tests.integration.test_tls -*-
"""TLS termination for the public Site, and connection accounting.

:class:`SniServerCreator` hands every new TLS connection the default
certificate's context and switches to the one matching the client's SNI
name during the handshake. Every context is made the same way
(:func:`context_builder`): TLS 1.2 or later, ECDHE + AEAD ciphers for
TLS 1.2, ALPN ``h2`` then ``http/1.1``.

:class:`CountingTLSFactory` (HTTPS) and :class:`CountingFactory` (plain
HTTP) count connections by protocol (h1, h2, ws) and TLS handshake failures
by reason. Both see a WebSocket upgrade because autobahn replaces the
protocol they feed (their ``wrappedProtocol``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocol
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .certs import CertificateLoadError, CertificateStore
from .metrics import ConnectionMetrics, TlsMetrics

ALPN_PROTOCOLS = (b"h2", b"http/1.1")
_MIN_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}


def context_builder(
    min_version: str,
    ciphers: str,
    *,
    on_server_name: Callable[[SSL.Connection], None],
    alpn: Sequence[bytes] = ALPN_PROTOCOLS,
) -> Any:
    """A function making the server context for a key and chain.

    ``CertificateOptions`` does the hardening (no compression, server cipher
    preference, ECDH curve, session id context); we choose versions, ciphers
    and ALPN, and install the SNI callback (a context cannot be changed once
    a connection used it).
    """
    from OpenSSL import crypto

    acceptable = AcceptableCiphers.fromOpenSSLCipherString(ciphers)

    def build(key: Any, chain: list[Any]) -> SSL.Context:
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),
            certificate=crypto.X509.from_cryptography(chain[0]),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
            raiseMinimumTo=_MIN_VERSIONS[min_version],
            acceptableCiphers=acceptable,
            acceptableProtocols=list(alpn),
        )
        context = options.getContext()
        context.set_tlsext_servername_callback(on_server_name)
        return context

    return build


@implementer(IOpenSSLServerConnectionCreator)
class SniServerCreator:
    """Server TLS connections whose certificate follows the SNI name."""

    _log = Logger()

    #: Set once the store exists (its contexts call :meth:`on_server_name`).
    store: CertificateStore | None = None

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        assert self.store is not None
        return SSL.Connection(self.store.default_context(), None)

    def on_server_name(self, connection: SSL.Connection) -> None:
        """OpenSSL's SNI callback: switch to the name's certificate."""
        # Runs inside OpenSSL's handshake: never let an exception escape.
        try:
            assert self.store is not None
            context = self.store.context_for(connection.get_servername())
        except CertificateLoadError:
            return
        except Exception:
            self._log.failure("choosing a certificate by SNI failed")
            return
        if context is not connection.get_context():
            connection.set_context(context)


def classify_handshake_failure(reason: Failure) -> str:
    """A short, bounded label for why a TLS handshake did not complete."""
    if reason.check(SSL.Error):
        text = str(reason.value).lower()
        for needle, label in (
            ("http request", "http_on_https"),
            ("wrong version number", "protocol_version"),
            ("unsupported protocol", "protocol_version"),
            ("version too low", "protocol_version"),
            ("no protocols available", "protocol_version"),
            ("tlsv1 alert protocol version", "protocol_version"),
            ("no shared cipher", "no_shared_cipher"),
            ("no suitable signature algorithm", "no_shared_cipher"),
            ("no application protocol", "no_alpn"),
            ("alert", "peer_alert"),
        ):
            if needle in text:
                return label
        return "other"
    if reason.check(net_error.ConnectionAborted):
        return "aborted"
    if reason.check(net_error.ConnectionDone, net_error.ConnectionLost):
        return "closed"
    return "other"


class _Label:
    """The protocol one connection is counted under, kept consistent in the
    counter and the gauge."""

    __slots__ = ("listener", "metrics", "label")

    def __init__(self, listener: str, metrics: ConnectionMetrics) -> None:
        self.listener = listener
        self.metrics = metrics
        self.label: str | None = None

    def settle(self, label: str) -> None:
        if self.label is not None:
            self.metrics.open.labels(self.listener, self.label).dec()
        self.label = label
        self.metrics.open.labels(self.listener, label).inc()
        if label != "tls":
            self.metrics.opened.labels(self.listener, label).inc()

    def close(self) -> None:
        if self.label is not None:
            self.metrics.open.labels(self.listener, self.label).dec()
            self.label = None


class _Labelled:
    """What both counting protocols share: a connection label that starts
    as :attr:`_first_label` and becomes ``ws`` when autobahn takes the
    connection over (it replaces ``wrappedProtocol``). Mixed in before the
    Twisted protocol class, so these definitions win."""

    factory: Any
    _first_label = "h1"
    _original: IProtocol | None = None
    _label: _Label | None = None

    # ProtocolWrapper and TLSMemoryBIOProtocol keep the protocol they feed in
    # ``wrappedProtocol``; autobahn's WebSocketResource replaces it.
    @property
    def wrappedProtocol(self) -> IProtocol:
        return self._wrapped

    @wrappedProtocol.setter
    def wrappedProtocol(self, protocol: IProtocol) -> None:
        self._wrapped = protocol
        if self._label is not None and protocol is not self._original and self._label.label == "h1":
            self._label.settle("ws")

    def makeConnection(self, transport: Any) -> None:
        self._label = _Label(self.factory.listener, self.factory.metrics)
        self._label.settle(self._first_label)
        super().makeConnection(transport)  # type: ignore[misc]


class CountedConnection(_Labelled, ProtocolWrapper):
    """A plain-HTTP connection, counted as h1 until it becomes a WebSocket."""

    factory: CountingFactory

    def __init__(self, factory: CountingFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self._original = wrappedProtocol

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._label is not None:
            self._label.close()
        super().connectionLost(reason)


class CountingTLSProtocol(_Labelled, TLSMemoryBIOProtocol):
    """TLS that counts its handshake (or why it failed) and the protocol
    the connection then speaks: h2 or h1 by ALPN, ws after an upgrade.

    It must be the TLS protocol itself (not a wrapper around the HTTP
    channel): autobahn needs the transport it takes over to be a
    ``TLSMemoryBIOProtocol`` to read the TLS channel binding.
    """

    _log = Logger()
    factory: CountingTLSFactory
    _first_label = "tls"

    def __init__(
        self,
        factory: CountingTLSFactory,
        wrappedProtocol: IProtocol,
        _connectWrapped: bool = True,
    ) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self._original = wrappedProtocol

    def _checkHandshakeStatus(self) -> None:
        # The one place Twisted learns the handshake is done; it offers no
        # public hook that leaves the wrapped protocol alone.
        was_done = self._handshakeDone
        super()._checkHandshakeStatus()
        if not was_done and self._handshakeDone and self._label is not None:
            negotiated = self.negotiatedProtocol
            self._label.settle("h2" if negotiated == b"h2" else "h1")
            version = self._tlsConnection.get_protocol_version_name()
            alpn = negotiated.decode("ascii", "replace") if negotiated else "none"
            self.factory.tls_metrics.handshakes.labels(version, alpn).inc()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        label = self._label
        if label is not None:
            if label.label == "tls":
                # A TLS error is kept until the TCP connection closes; the
                # reason passed in is then only the close.
                why = classify_handshake_failure(self._reason or reason)
                self.factory.tls_metrics.failures.labels(why).inc()
                self._log.debug("TLS handshake failed: {reason}", reason=why)
            label.close()
            self._label = None
        super().connectionLost(reason)


class CountingTLSFactory(TLSMemoryBIOFactory):
    """Server-side TLS for the Site, counted (see :class:`CountingTLSProtocol`)."""

    protocol = CountingTLSProtocol

    def __init__(
        self,
        creator: Any,
        wrapped: Factory[Any],
        *,
        metrics: ConnectionMetrics,
        tls_metrics: TlsMetrics,
        listener: str = "https",
    ) -> None:
        super().__init__(creator, False, wrapped)
        self.listener = listener
        self.metrics = metrics
        self.tls_metrics = tls_metrics


class CountingFactory(WrappingFactory):
    """Wraps the Site on the plain-HTTP listener so each connection is
    counted (h1, then ws after an upgrade).

    :param listener: the metrics label (``http``).
    """

    protocol = CountedConnection

    def __init__(self, wrapped: Factory[Any], *, listener: str, metrics: ConnectionMetrics) -> None:
        super().__init__(wrapped)
        self.listener = listener
        self.metrics = metrics

    def logPrefix(self) -> str:
        return self.listener
