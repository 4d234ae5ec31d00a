"""An HTTP/2 client over real TLS for tests, and an insecure TLS client
context that still sends SNI and ALPN.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
)
from zope.interface import implementer


class H2Response:
    """What :func:`h2_request` received on one stream."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.reset = False

    @property
    def status(self) -> int:
        return int(self.headers.get(b":status", b"0"))


def h2_request(
    port: int,
    method: bytes,
    path: bytes,
    *,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    server_name: str = "localhost",
) -> Deferred[tuple[H2Response, bytes | None]]:
    """One HTTP/2 request over TLS (ALPN ``h2``) with the ``h2`` library:
    a client at the wire, since treq speaks HTTP/1.1 only.

    :returns: the response and the ALPN protocol the server chose.
    """
    import h2.config
    import h2.connection
    import h2.events
    from twisted.internet import reactor
    from twisted.internet.protocol import Protocol

    done: Deferred[tuple[H2Response, bytes | None]] = Deferred()
    response = H2Response()

    class Client(Protocol):
        transport: Any
        pending = b""
        sid = 0
        alpn: bytes | None = None
        ended = False

        def connectionMade(self) -> None:
            self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            self.conn.initiate_connection()
            sid = self.conn.get_next_available_stream_id()
            request_headers = [
                (b":method", method),
                (b":path", path),
                (b":scheme", b"https"),
                (b":authority", server_name.encode()),
            ] + list(headers or [])
            self.conn.send_headers(sid, request_headers, end_stream=not body)
            if body:
                # Respect the server's window: send what fits, the rest on WindowUpdated.
                self.pending = body
                self.sid = sid
                self._send_body()
            self.transport.write(self.conn.data_to_send())

        def _send_body(self) -> None:
            while self.pending:
                window = min(self.conn.local_flow_control_window(self.sid), self.conn.max_outbound_frame_size)
                if window <= 0:
                    return
                chunk, self.pending = self.pending[:window], self.pending[window:]
                self.conn.send_data(self.sid, chunk, end_stream=not self.pending)

        def dataReceived(self, data: bytes) -> None:
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    response.headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    response.body += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.WindowUpdated) and self.pending:
                    self._send_body()
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    response.reset = isinstance(event, h2.events.StreamReset)
                    self.transport.write(self.conn.data_to_send())
                    self.alpn = self.transport.negotiatedProtocol
                    self.ended = True
                    # Fire once the connection is gone: tests leave nothing open.
                    self.transport.loseConnection()
                    return
            self.transport.write(self.conn.data_to_send())

        def connectionLost(self, reason: Any = None) -> None:
            if done.called:
                return
            if self.ended:
                done.callback((response, self.alpn))
            else:
                done.errback(reason)

    from twisted.internet.endpoints import SSL4ClientEndpoint
    from twisted.internet.protocol import Factory

    options = insecure_tls(server_name, [b"h2", b"http/1.1"])
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
    d = endpoint.connect(Factory.forProtocol(Client))
    d.addErrback(done.errback)
    return done


@implementer(IOpenSSLClientConnectionCreator)
class _InsecureSni:
    """Client TLS options for tests: send SNI and ALPN, accept any
    certificate, and remember the one the server presented."""

    def __init__(self, server_name: str, alpn: list[bytes], max_version: Any = None) -> None:
        self.server_name = server_name
        self.alpn = alpn
        self.max_version = max_version

    def _context(self) -> Any:
        from OpenSSL import SSL

        ctx = SSL.Context(SSL.TLS_METHOD)
        if self.max_version is not None:
            # An old client for real: OpenSSL 3 refuses to even offer TLS 1.1
            # at its default security level.
            ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
            ctx.set_min_proto_version(self.max_version)
            ctx.set_max_proto_version(self.max_version)
        ctx.set_verify(SSL.VERIFY_NONE)
        if self.alpn:
            ctx.set_alpn_protos(self.alpn)
        return ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        from OpenSSL import SSL

        conn = SSL.Connection(self._context(), None)
        conn.set_tlsext_host_name(self.server_name.encode())
        conn.set_connect_state()
        return conn


def insecure_tls(server_name: str = "localhost", alpn: list[bytes] | None = None, max_version: Any = None) -> Any:
    """Client TLS options for tests (see :class:`_InsecureSni`)."""
    return _InsecureSni(server_name, alpn if alpn is not None else [b"http/1.1"], max_version)
