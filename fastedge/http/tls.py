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

Their protocols are the outermost of every client connection: whatever it
becomes (HTTP/1.1, HTTP/2, WebSocket, SSE), the reactor's transport calls
*their* ``connectionLost``. So they are where a connection is admitted to
and released from the node's one count
(:class:`~fastedge.http.connections.ConnectionGate`), and where a
connection the node closes is bounded: nothing the client sends after the
node closed it reaches the application (HTTP/2 after a GOAWAY for a
protocol error, in particular), and a client that does not read what was
left to send is aborted after ``close_timeout`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .certs import CertificateLoadError, CertificateStore
from .connections import CEILING, ConnectionGate, Ticket
from .jsonbody import raw_error_response
from .metrics import ConnectionMetrics, TlsMetrics
from .writenow import plain_tcp, send_now

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
        metrics = self.metrics
        if self.label is not None:
            metrics.open_by(self.listener, self.label).dec()
        self.label = label
        metrics.open_by(self.listener, label).inc()
        if label != "tls":
            metrics.opened_by(self.listener, label).inc()

    def close(self) -> None:
        if self.label is not None:
            self.metrics.open_by(self.listener, self.label).dec()
            self.label = None


#: A connection the node closed is read (and what it sends discarded) this
#: long at most, and this many bytes at most, before the socket is closed.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


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
        if self._original is not None and protocol is not self._original:
            # Taken over (a WebSocket): the protocol it replaced, and
            # twisted.web's channel and request under it, are not kept for
            # the life of the connection.
            self._original = None
            if self._label is not None and self._label.label == "h1":
                self._label.settle("ws")

    def makeConnection(self, transport: Any) -> None:
        self._label = _Label(self.factory.listener, self.factory.metrics)
        self._label.settle(self._first_label)
        super().makeConnection(transport)  # type: ignore[misc]

    # The one count of open connections, and the bound on closing.

    #: Set by the factory when the gate admitted the connection.
    ticket: Ticket | None = None
    _close_call: Any = None
    _gone = False

    def _bound_close(self) -> None:
        """The node closed the connection: abort it if what was left to
        send is not read within the factory's ``close_timeout``."""
        if self._close_call is None and not self._gone and self.factory.close_timeout is not None:
            self._close_call = self.factory.reactor.callLater(self.factory.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_call = None
        gate = self.factory.gate
        if gate.metrics is not None:
            gate.metrics.close_aborts.inc()
        self.transport.abortConnection()  # type: ignore[attr-defined]

    # Lingering close (nginx's ``lingering_close``): when the node closes a
    # connection whose client may still be sending (a request body refused
    # with 413, a request cut by a timeout, an HTTP/2 GOAWAY), closing the
    # socket with unread bytes in it makes the kernel send RST, which can
    # destroy the answer before the client reads it. So the node sends what
    # it wrote and its FIN (a half-close), then reads and discards what the
    # client still sends, for LINGER_SECONDS and LINGER_BYTES at most.
    # Nothing read while lingering reaches the application.

    _lingering = False
    _linger_call: Any = None
    _discarded = 0

    def _linger(self, transport: Any) -> bool:
        """Half-close ``transport`` (the socket) and start discarding what the
        client sends; ``False`` when it cannot half-close (then close it)."""
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None or self._gone or self._lingering:
            return False
        self._lingering = True
        half_close()
        self._linger_call = self.factory.reactor.callLater(LINGER_SECONDS, self._linger_over)
        return True

    def _discard(self, data: bytes) -> None:
        self._discarded += len(data)
        if self._discarded > LINGER_BYTES:
            self._linger_over()

    def _linger_over(self) -> None:
        if self._linger_call is not None:
            if self._linger_call.active():
                self._linger_call.cancel()
            self._linger_call = None
        if not self._gone:
            self.transport.loseConnection()  # type: ignore[attr-defined]

    def _connection_gone(self) -> None:
        self._gone = True
        for call in (self._close_call, self._linger_call):
            if call is not None and call.active():
                call.cancel()
        self._close_call = self._linger_call = None
        if self.ticket is not None:
            self.ticket.release()


class CountedConnection(_Labelled, ProtocolWrapper):
    """A plain-HTTP connection, counted as h1 until it becomes a WebSocket."""

    factory: CountingFactory

    # What the wrapper's __getattr__ would look for in the socket's
    # transport, on every connection, and not find (an AttributeError
    # raised and caught each time): no ALPN on plain TCP (the HTTP channel
    # asks on every read), no zope adapter hook (asked when the channel
    # adapts its transport to IPushProducer).
    negotiatedProtocol = None
    __conform__ = None

    def __init__(self, factory: CountingFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self._original = wrappedProtocol

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        self.disconnecting = 1
        transport = self.transport
        assert transport is not None
        if not self._linger(transport):
            transport.loseConnection()
        self._bound_close()

    def dataReceived(self, data: bytes) -> None:
        if self._lingering:
            self._discard(data)
            return
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connection_gone()
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

    #: The plain TCP transport below, written through
    #: (:func:`~fastedge.http.writenow.write_through`); ``None`` until a
    #: live stream asks for it.
    _below: Any = None

    def _flushSendBIO(self) -> None:
        # Write-through (fastedge.http.writenow) once a live stream owns the
        # connection: each frame's ciphertext goes on the socket now when
        # nothing waits before it, not on the reactor's next turn; what the
        # socket does not take is TCP's to queue, as before. Other traffic
        # keeps Twisted's buffering, which sends an HTTP answer's headers
        # and body (two TLS records) in one send. The only change to
        # Twisted's method is that last call.
        try:
            data = self._tlsConnection.bio_read(2**15)
        except SSL.WantReadError:
            return
        below = self._below
        if below is None:
            assert self.transport is not None
            self.transport.write(data)
        else:
            send_now(below, data)

    def write_through(self) -> bool:
        """From now on, write each record's ciphertext through to the
        socket when the TCP transport below is plain TCP; returns whether
        it is (see :func:`fastedge.http.writenow.write_through`)."""
        self._below = plain_tcp(self.transport)
        return self._below is not None

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

    def loseConnection(self) -> None:
        """Close like TCP does: stop reading, close once what was written is
        sent.

        TLS on its own would keep reading after sending its close_notify
        (waiting for the client's) and keep handing the application
        whatever the client sends: an HTTP/2 client that ignores the GOAWAY
        for a protocol error would be read, parsed and buffered for as long
        as it keeps sending. TLS allows the side that closes not to wait
        for the other's close_notify (RFC 8446, section 6.1).
        """
        if self.disconnecting or not self.connected:
            return
        handshake_done = self._handshakeDone
        super().loseConnection()
        if not self.connected:
            return
        if handshake_done:
            # Nothing more for the application, even from bytes already read.
            self._aborted = True
            # TCP sends what TLS wrote (the GOAWAY, the close_notify) and
            # half-closes; what the client still sends is discarded, not
            # decrypted, until the lingering close ends.
            assert self.transport is not None
            if not self._linger(self.transport):
                self.transport.loseConnection()
        self._bound_close()

    def dataReceived(self, data: bytes) -> None:
        if self._lingering:
            self._discard(data)
            return
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connection_gone()
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


class _Gated:
    """What both counting factories share: admission through the gate."""

    gate: ConnectionGate
    #: Plain HTTP answers a connection over the ceiling with a 503; HTTPS
    #: closes it (an answer would first cost a TLS handshake).
    _answer_overload = False

    def _gate_setup(self, gate: ConnectionGate | None, reactor: Any, close_timeout: float | None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.gate = gate if gate is not None else ConnectionGate()
        self.reactor = reactor
        self.close_timeout = close_timeout

    def buildProtocol(self, addr: Any) -> Any:
        admitted = self.gate.admit(addr)
        if isinstance(admitted, str):
            if admitted == CEILING and self._answer_overload:
                return _Overloaded()
            # The port closes the socket at once.
            return None
        protocol = super().buildProtocol(addr)  # type: ignore[misc]
        if protocol is None:
            admitted.release()
            return None
        protocol.ticket = admitted
        admitted.connection = protocol
        return protocol


_OVERLOADED = raw_error_response(
    503,
    b"Service Unavailable",
    "overloaded",
    "the node has as many connections as it accepts; retry shortly",
    ((b"retry-after", b"1"),),
)


class _Overloaded(Protocol):
    """Answers a connection over the ceiling with a 503 and closes it."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(_OVERLOADED)
        self.transport.loseConnection()


class CountingTLSFactory(_Gated, TLSMemoryBIOFactory):
    """Server-side TLS for the Site, counted (see :class:`CountingTLSProtocol`).

    :param gate: the node's connection count and limits (a fresh one when
        not given).
    :param close_timeout: seconds a closed connection may take to flush
        (``None``: no bound).
    """

    protocol = CountingTLSProtocol
    noisy = False

    def __init__(
        self,
        creator: Any,
        wrapped: Factory[Any],
        *,
        metrics: ConnectionMetrics,
        tls_metrics: TlsMetrics,
        listener: str = "https",
        gate: ConnectionGate | None = None,
        reactor: Any = None,
        close_timeout: float | None = 5.0,
    ) -> None:
        super().__init__(creator, False, wrapped)
        self.listener = listener
        self.metrics = metrics
        self.tls_metrics = tls_metrics
        self._gate_setup(gate, reactor, close_timeout)


class CountingFactory(_Gated, WrappingFactory):
    """Wraps the Site on the plain-HTTP listener so each connection is
    counted (h1, then ws after an upgrade).

    :param listener: the metrics label (``http``).
    :param gate: see :class:`CountingTLSFactory`.
    :param close_timeout: see :class:`CountingTLSFactory`.
    """

    protocol = CountedConnection
    _answer_overload = True
    noisy = False

    def __init__(
        self,
        wrapped: Factory[Any],
        *,
        listener: str,
        metrics: ConnectionMetrics,
        gate: ConnectionGate | None = None,
        reactor: Any = None,
        close_timeout: float | None = 5.0,
    ) -> None:
        super().__init__(wrapped)
        self.listener = listener
        self.metrics = metrics
        self._gate_setup(gate, reactor, close_timeout)

    def logPrefix(self) -> str:
        return self.listener
