# -*- test-case-name: tests.integration.test_tls -*-
"""TLS termination for the public Site, and connection accounting.

:class:`SniServerCreator` hands every new TLS connection the default
certificate's context and switches to the one matching the client's SNI
name during the handshake. Every context is made the same way
(:func:`context_builder`): TLS 1.2 or later, ECDHE + AEAD ciphers for
TLS 1.2, ALPN ``h2`` then ``http/1.1``.

:class:`CountingFactory` wraps the Site on both listeners. Its protocol sits
between the transport (TCP or TLS) and the HTTP channel, which is where the
negotiated protocol, the handshake outcome and a WebSocket upgrade (autobahn
replaces the wrapped protocol) can all be seen, so connections are counted by
protocol (h1, h2, ws) and handshake failures by reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLServerConnectionCreator, IProtocol
from twisted.internet.protocol import Factory
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
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


@implementer(IHandshakeListener)
class CountedConnection(ProtocolWrapper):
    """Counts one connection under the protocol it turns out to speak."""

    _log = Logger()
    factory: CountingFactory
    _label: str | None = None
    _original: IProtocol | None = None

    def __init__(self, factory: CountingFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)
        self._original = wrappedProtocol

    # ProtocolWrapper keeps the protocol it feeds in ``wrappedProtocol``;
    # autobahn's WebSocketResource replaces it to take the connection over.
    @property  # type: ignore[override]
    def wrappedProtocol(self) -> IProtocol:
        return self._wrapped

    @wrappedProtocol.setter
    def wrappedProtocol(self, protocol: IProtocol) -> None:
        self._wrapped = protocol
        if self._original is not None and protocol is not self._original and self._label == "h1":
            self._settle("ws")

    def makeConnection(self, transport: Any) -> None:
        self._settle("tls" if self.factory.tls else "h1")
        super().makeConnection(transport)

    def _settle(self, label: str) -> None:
        metrics = self.factory.metrics
        listener = self.factory.listener
        if self._label is not None:
            metrics.open.labels(listener, self._label).dec()
        self._label = label
        metrics.open.labels(listener, label).inc()
        if label != "tls":
            metrics.opened.labels(listener, label).inc()

    def handshakeCompleted(self) -> None:
        transport = self.transport
        negotiated = getattr(transport, "negotiatedProtocol", None)
        self._settle("h2" if negotiated == b"h2" else "h1")
        tls = self.factory.tls_metrics
        if tls is not None:
            version = "unknown"
            try:
                version = transport.getHandle().get_protocol_version_name()  # type: ignore[union-attr]
            except Exception:  # pragma: no cover - a transport without a handle
                pass
            alpn = negotiated.decode("ascii", "replace") if negotiated else "none"
            tls.handshakes.labels(version, alpn).inc()
        if IHandshakeListener.providedBy(self._wrapped):
            self._wrapped.handshakeCompleted()

    def connectionLost(self, reason: Failure) -> None:
        if self._label == "tls" and self.factory.tls_metrics is not None:
            label = classify_handshake_failure(reason)
            self.factory.tls_metrics.failures.labels(label).inc()
            self._log.debug("TLS handshake with {peer} failed: {reason}", peer=self._peer(), reason=label)
        if self._label is not None:
            self.factory.metrics.open.labels(self.factory.listener, self._label).dec()
            self._label = None
        super().connectionLost(reason)

    def _peer(self) -> str:
        try:
            return str(self.getPeer())
        except Exception:  # pragma: no cover
            return "unknown"


class CountingFactory(WrappingFactory):
    """Wraps the Site so each connection is counted (see the module docstring).

    :param listener: ``http`` or ``https``, the metrics label.
    :param tls: whether the transport below is TLS (the protocol is then
        known only after the handshake).
    """

    protocol = CountedConnection  # type: ignore[assignment]

    def __init__(
        self,
        wrapped: Factory[Any],
        *,
        listener: str,
        tls: bool,
        metrics: ConnectionMetrics,
        tls_metrics: TlsMetrics | None = None,
    ) -> None:
        super().__init__(wrapped)
        self.listener = listener
        self.tls = tls
        self.metrics = metrics
        self.tls_metrics = tls_metrics

    def logPrefix(self) -> str:
        return self.listener
