"""Transport-level refusals of a whole node, at the wire: raw request bytes
over real loopback sockets (plain TCP, TLS, and HTTP/2 with the ``h2``
library), each answered with a JSON error carrying a code, and the
connection closed where the request left its framing unknown."""

from __future__ import annotations

import json
import os
import socket
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from fastedge.testing.certs import write_certificate
from tests.support.http2 import insecure_tls
from tests.support.nodes import start_node

_JSON = "application/json; charset=utf-8"


class _Reply:
    """One HTTP/1.1 response parsed from raw bytes."""

    def __init__(self, raw: bytes) -> None:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split(" ")[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        length = int(self.headers.get("content-length", "0"))
        self.body = rest[:length]
        self.rest = rest[length:]

    @property
    def code(self) -> str:
        return str(json.loads(self.body)["error"]["code"])


class _Raw(Protocol):
    """Sends raw bytes and keeps everything that comes back.

    ``closed`` fires with the bytes once the server closes the connection;
    with ``then`` given, ``then`` is sent once a whole first response came
    back, and the client closes after the second (the first left the
    connection open).
    """

    def __init__(self, payload: bytes, then: bytes | None) -> None:
        self.payload = payload
        self.then = then
        self.data = b""
        self.replies = 0
        self.closed: defer.Deferred[bytes] = defer.Deferred()
        self.client_closed = False

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.then is None:
            return
        reply = _complete(self.data)
        if reply is None:
            return
        if self.replies == 0:
            self.replies = 1
            self.transport.write(self.then)
        if _complete(reply.rest) is not None:
            self.client_closed = True
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.data)


def _refusals(site: Any, code: str) -> float:
    """``fastedge_http_protocol_errors_total{code=code}`` of ``site``."""
    for metric in site.metrics.protocol_errors.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels == {"code": code}:
                return float(sample.value)
    return 0.0


def _complete(data: bytes) -> _Reply | None:
    if b"\r\n\r\n" not in data:
        return None
    reply = _Reply(data)
    if len(reply.body) < int(reply.headers.get("content-length", "0")):
        return None
    return reply


class _NodeCase(TestCase):
    """A node with plain HTTP and HTTPS listeners (and ``extra_config``)."""

    timeout = 20
    extra_config: tuple[str, ...] = ()

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.data_dir = os.path.abspath(self.mktemp())
        certs = os.path.join(self.data_dir, "certs")
        write_certificate(certs, "default", "localhost")
        config = "\n".join(
            [
                "[http]",
                'endpoint = "tcp:0:interface=127.0.0.1"',
                "[tls]",
                'endpoint = "tcp:0:interface=127.0.0.1"',
                f'cert_dir = "{certs}"',
                *self.extra_config,
            ]
        )
        self.node = yield start_node(config, self.data_dir)
        self.addCleanup(self.node.stop)
        transport = self.node.top.getServiceNamed("http")
        self.site = transport.getServiceNamed("http").factory.wrappedFactory
        self.http_port = transport.getServiceNamed("http").port.getHost().port

    def send(self, payload: bytes, *, tls: bool = False, then: bytes | None = None) -> defer.Deferred[_Raw]:
        """Send ``payload``; fires with the client once the connection closed."""
        # Every connection closed on the server side too before the node stops.
        # (Not for HTTP/2: the Site's count misses HTTP/2 closes, issue 11 item 5.)
        self.addCleanup(self.site.when_idle)
        protocol = _Raw(payload, then)
        if tls:
            endpoint: Any = SSL4ClientEndpoint(
                reactor, "127.0.0.1", self.node.https_port, insecure_tls("localhost", [b"http/1.1"])
            )
        else:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.http_port)
        d = endpoint.connect(Factory.forProtocol(lambda: protocol))
        d.addCallback(lambda _: protocol.closed)
        d.addCallback(lambda _: protocol)
        return d

    @defer.inlineCallbacks
    def refused(self, payload: bytes, status: int, code: str, *, tls: bool = False) -> Any:
        """``payload`` is answered ``status`` with JSON error ``code``, and
        then the server closes the connection (the client never does)."""
        client = yield self.send(payload, tls=tls)
        self.assertFalse(client.client_closed)
        self.assertTrue(client.data, "the server closed without a word")
        reply = _Reply(client.data)
        self.assertEqual(reply.status, status, client.data[:300])
        self.assertEqual(reply.headers.get("content-type"), _JSON)
        self.assertEqual(reply.code, code)
        self.assertEqual(reply.headers.get("connection"), "close")
        self.assertEqual(reply.rest, b"", "one response only")
        return reply

    @defer.inlineCallbacks
    def answered_and_kept(self, payload: bytes, status: int, code: str) -> Any:
        """``payload`` is answered ``status`` with JSON error ``code`` and the
        connection stays usable: a second request on it is answered."""
        client = yield self.send(payload, then=b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(client.client_closed, "the server closed the connection")
        reply = _Reply(client.data)
        self.assertEqual(reply.status, status, client.data[:300])
        self.assertEqual(reply.headers.get("content-type"), _JSON)
        self.assertEqual(reply.code, code)
        self.assertEqual(_Reply(reply.rest).status, 200)
        return reply


class HttpErrorTests(_NodeCase):
    """Refusals of the transport and the WebSocket handshake."""

    # Framing and header errors Twisted answered with an empty 400.

    def test_bad_content_length(self) -> Any:
        """A Content-Length that is not a decimal number."""
        return self.refused(
            b"POST /api/v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n", 400, "bad_content_length"
        )

    def test_unicode_digit_content_length(self) -> Any:
        """A Content-Length in non-ASCII digits (UTF-8 superscript two)."""
        return self.refused(
            b"POST /api/v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: \xc2\xb2\r\n\r\n", 400, "bad_content_length"
        )

    def test_two_content_lengths(self) -> Any:
        """Two Content-Length headers, even equal ones."""
        return self.refused(
            b"POST /api/v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            400,
            "bad_content_length",
        )

    def test_content_length_with_chunked(self) -> Any:
        """Content-Length and Transfer-Encoding: chunked together (a smuggling shape)."""
        return self.refused(
            b"POST /api/v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad_transfer_encoding",
        )

    def test_unknown_transfer_coding(self) -> Any:
        """A transfer coding other than chunked is not implemented (501)."""
        return self.refused(
            b"POST /api/v1/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "unsupported_transfer_encoding",
        )

    def test_malformed_chunked_body(self) -> Any:
        """A chunk size that is not hexadecimal."""
        return self.refused(
            b"POST /api/v1/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad_body"
        )

    def test_too_many_headers(self) -> Any:
        """More than 500 header lines."""
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(501))
        return self.refused(b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n", 431, "too_many_headers")

    def test_nul_in_header_value(self) -> Any:
        """A NUL byte in a header value."""
        return self.refused(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400, "bad_header")

    def test_header_without_colon(self) -> Any:
        """A header line without a colon."""
        return self.refused(b"GET /healthz HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n", 400, "bad_header")

    def test_obs_fold(self) -> Any:
        """A header value continued on an indented line (obs-fold)."""
        return self.refused(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n", 400, "obs_fold")

    def test_obs_fold_first_header(self) -> Any:
        """An indented line right after the request line."""
        return self.refused(b"GET /healthz HTTP/1.1\r\n Host: a\r\n\r\n", 400, "obs_fold")

    @defer.inlineCallbacks
    def test_two_host_headers(self) -> Any:
        """Two Host headers; the refusal is counted by its code."""
        yield self.refused(b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "duplicate_host")
        self.assertEqual(_refusals(self.site, "duplicate_host"), 1.0)

    # Request lines.

    def test_unsupported_http_version(self) -> Any:
        """HTTP/1.2 (and HTTP/2.0 in a request line) is a 505."""
        return self.refused(b"GET /healthz HTTP/1.2\r\nHost: a\r\n\r\n", 505, "http_version_not_supported")

    def test_http2_request_line(self) -> Any:
        """An HTTP/2.0 request line on an HTTP/1.1 connection."""
        return self.refused(b"GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n", 505, "http_version_not_supported")

    def test_malformed_version(self) -> Any:
        """A version field that is not HTTP/d.d."""
        return self.refused(b"GET /healthz HTTX/1.1\r\nHost: a\r\n\r\n", 400, "bad_request_line")

    def test_malformed_request_line(self) -> Any:
        """A request line without a version."""
        return self.refused(b"GET /healthz\r\nHost: a\r\n\r\n", 400, "bad_request_line")

    # Sizes Twisted answered with nothing at all, or only at the end.

    def test_request_line_over_16k(self) -> Any:
        """A request line over 16 KiB is a 414."""
        return self.refused(b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "uri_too_long")

    def test_request_line_over_16k_unfinished(self) -> Any:
        """A request line still growing past 16 KiB (no line end yet) is a 414 at once."""
        return self.refused(b"GET /" + b"a" * 17000, 414, "uri_too_long")

    def test_header_line_over_16k(self) -> Any:
        """One header line over 16 KiB is a 431."""
        return self.refused(
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n", 431, "headers_too_large"
        )

    def test_headers_over_16k_in_total(self) -> Any:
        """Headers of 16 KiB together, each line short, are a 431."""
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(20))
        return self.refused(b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n", 431, "headers_too_large")

    @defer.inlineCallbacks
    def test_declared_body_over_limit(self) -> Any:
        """A declared 1 GB body is answered 413 at once, from its
        Content-Length, before any body arrives, without a 100 Continue,
        and the connection closes."""
        reply = yield self.refused(
            b"POST /api/v1/manage/threads HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 1000000000\r\n\r\n",
            413,
            "body_too_large",
        )
        self.assertEqual(reply.status_line, "HTTP/1.1 413 Request Entity Too Large")

    @defer.inlineCallbacks
    def test_chunked_body_over_limit(self) -> Any:
        """A chunked body is answered 413 as soon as it outgrows the limit
        (64 KiB for the API), without reading on to its end, and the
        connection closes."""
        chunk = b"%x\r\n%s\r\n" % (40000, b"x" * 40000)
        yield self.refused(
            b"POST /api/v1/manage/threads HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 2,
            413,
            "body_too_large",
        )
        self.assertEqual(_refusals(self.site, "body_too_large"), 1.0)

    # Twisted's HTML 405 and 501 pages.

    def test_healthz_unlisted_method(self) -> Any:
        """DELETE /healthz is a JSON 405 naming the methods it takes."""
        d = self.answered_and_kept(b"DELETE /healthz HTTP/1.1\r\nHost: a\r\n\r\n", 405, "method_not_allowed")
        d.addCallback(lambda reply: self.assertEqual(reply.headers["allow"], "GET, HEAD"))
        return d

    def test_healthz_unknown_method(self) -> Any:
        """A method Twisted does not know (BREW) is a JSON 405 too, not 501 "Huh?"."""
        return self.answered_and_kept(b"BREW /healthz HTTP/1.1\r\nHost: a\r\n\r\n", 405, "method_not_allowed")

    def test_metrics_unlisted_method(self) -> Any:
        """POST /metrics is a JSON 405."""
        return self.answered_and_kept(
            b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 405, "method_not_allowed"
        )

    def test_live_events_unlisted_method(self) -> Any:
        """PUT /live/events is a JSON 405."""
        return self.answered_and_kept(
            b"PUT /live/events HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 405, "method_not_allowed"
        )

    @defer.inlineCallbacks
    def test_star_target_with_get(self) -> Any:
        """GET * (the target only OPTIONS may use) is a JSON 405, not Twisted's empty one."""
        reply = yield self.answered_and_kept(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 405, "method_not_allowed")
        self.assertEqual(reply.headers["allow"], "OPTIONS")

    @defer.inlineCallbacks
    def test_live_without_upgrade_has_its_reason_phrase(self) -> Any:
        """A plain GET of /live is ``426 Upgrade Required`` on the status
        line (Twisted knows no phrase for 426 and wrote ``Unknown Status``)."""
        reply = yield self.answered_and_kept(b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n", 426, "upgrade_required")
        self.assertEqual(reply.status_line, "HTTP/1.1 426 Upgrade Required")
        self.assertEqual(reply.headers["upgrade"], "websocket")

    @defer.inlineCallbacks
    def test_landing_page(self) -> Any:
        """``GET /`` is a small HTML page (no script) linking to /healthz and
        /metrics and naming the docs; other unknown paths stay JSON 404s."""
        client = yield self.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", then=b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n")
        reply = _Reply(client.data)
        self.assertEqual(reply.status_line, "HTTP/1.1 200 OK")
        self.assertEqual(reply.headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(reply.headers["content-security-policy"], "default-src 'none'")
        page = reply.body.decode("utf-8")
        for text in ('href="/healthz"', 'href="/metrics"', "docs/openapi.yaml", "README.md"):
            self.assertIn(text, page)
        self.assertNotIn("<script", page)
        second = _Reply(reply.rest)
        self.assertEqual((second.status, second.code), (404, "not_found"))

    # WebSocket upgrades autobahn accepted or answered without a body.

    @defer.inlineCallbacks
    def test_websocket_version_8(self) -> Any:
        """An upgrade with Sec-WebSocket-Version 8 is a 426 naming version 13."""
        reply = yield self.answered_and_kept(
            b"GET /live HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            426,
            "unsupported_websocket_version",
        )
        self.assertEqual(reply.headers["sec-websocket-version"], "13")

    def test_websocket_over_http10(self) -> Any:
        """An upgrade over HTTP/1.0 is a 400, and the connection closes."""
        return self.refused(
            b"GET /live HTTP/1.0\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            400,
            "websocket_needs_http11",
        )

    def test_websocket_without_key(self) -> Any:
        """An upgrade without Sec-WebSocket-Key is a JSON 400 (autobahn's was empty)."""
        return self.answered_and_kept(
            b"GET /live HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            400,
            "bad_websocket_handshake",
        )

    def test_websocket_without_connection_upgrade(self) -> Any:
        """An upgrade whose Connection header lacks the upgrade token is a JSON 400."""
        return self.answered_and_kept(
            b"GET /live HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            400,
            "bad_websocket_handshake",
        )

    # What autobahn refused when it parsed the handshake a second time is
    # refused the same way now that the parsed headers are handed over.

    def _upgrade(self, *extra: bytes, host: bytes = b"a", path: bytes = b"/live") -> bytes:
        return (
            b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + b"".join(extra) + b"\r\n"
        )

    def test_websocket_duplicate_subprotocol(self) -> Any:
        """A subprotocol offered twice is a JSON 400, and the connection closes."""
        return self.refused(
            self._upgrade(b"Sec-WebSocket-Protocol: fastedge.live.1, fastedge.live.1\r\n"),
            400,
            "bad_websocket_handshake",
        )

    def test_websocket_two_origins(self) -> Any:
        """Two Origin headers are a JSON 400."""
        return self.refused(
            self._upgrade(b"Origin: https://a.example\r\n", b"Origin: https://b.example\r\n"),
            400,
            "bad_websocket_handshake",
        )

    def test_websocket_origin_without_host(self) -> Any:
        """An Origin with no host part is a JSON 400."""
        return self.refused(self._upgrade(b"Origin: https://\r\n"), 400, "bad_websocket_handshake")

    def test_websocket_host_with_a_bad_port(self) -> Any:
        """A Host whose port is not a number is a JSON 400."""
        return self.refused(self._upgrade(host=b"a:http"), 400, "bad_websocket_handshake")

    def test_websocket_two_extension_headers(self) -> Any:
        """Two Sec-WebSocket-Extensions headers are a JSON 400."""
        return self.refused(
            self._upgrade(
                b"Sec-WebSocket-Extensions: permessage-deflate\r\n",
                b"Sec-WebSocket-Extensions: permessage-deflate\r\n",
            ),
            400,
            "bad_websocket_handshake",
        )

    def test_websocket_bad_compression_offer(self) -> Any:
        """A compression offer with an impossible parameter is a JSON 400."""
        return self.refused(
            self._upgrade(b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99\r\n"),
            400,
            "bad_websocket_handshake",
        )

    # Over TLS, the same channel.

    def test_tls_bad_content_length(self) -> Any:
        """HTTP/1.1 over TLS refuses the same way."""
        return self.refused(
            b"POST /api/v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "bad_content_length", tls=True
        )

    # HTTP/2.

    async def upload_while_reading(self, *, tls: bool) -> bytes:
        """Declare a 50 MB body and keep sending it (as a client that does
        not wait for 100 Continue does) while reading; return everything
        read once the node ends the connection. A reset before the end of
        the answer fails the test."""
        raw = socket.create_connection(("127.0.0.1", self.node.https_port if tls else self.http_port))
        raw.setblocking(False)
        sock: Any = raw
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["http/1.1"])
            sock = context.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
            while True:
                try:
                    sock.do_handshake()
                    break
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    await deferLater(reactor, 0, lambda: None)
        self.addCleanup(sock.close)
        pending = memoryview(
            b"POST /api/v1/manage/threads HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        chunk = b"x" * 65536
        data = b""
        sent = 0
        while True:
            await deferLater(reactor, 0, lambda: None)
            if sent < 50_000_000:
                if not pending:
                    pending = memoryview(chunk)
                try:
                    n = sock.send(pending)
                    pending = pending[n:]
                    sent += n
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    sent = 50_000_000  # the node stopped reading: just read now
            try:
                got = sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            except ConnectionResetError:
                self.fail("reset after {} bytes of answer: {!r}".format(len(data), data[:200]))
            if not got:
                return data
            data += got

    async def test_upload_refused_while_sending(self) -> None:
        """A client still sending a refused body reads the whole 413 and a
        clean end of the connection, not a reset (the node half-closes and
        discards the rest for a while: a lingering close)."""
        reply = _Reply(await self.upload_while_reading(tls=False))
        self.assertEqual((reply.status, reply.code), (413, "body_too_large"))

    async def test_upload_refused_while_sending_tls(self) -> None:
        """The same over TLS (the close_notify and FIN come before the reset)."""
        reply = _Reply(await self.upload_while_reading(tls=True))
        self.assertEqual((reply.status, reply.code), (413, "body_too_large"))

    @defer.inlineCallbacks
    def test_h2_stream_over_concurrency_limit(self) -> Any:
        """The 101st concurrent stream (sent before the client could see the
        server's SETTINGS) is reset with REFUSED_STREAM; there is no GOAWAY,
        and once a stream is freed the connection serves a new one."""
        client = _H2Client()
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.node.https_port, insecure_tls("localhost", [b"h2"]))
        yield endpoint.connect(Factory.forProtocol(lambda: client))
        yield client.closed
        self.assertIsNone(client.goaway)
        self.assertEqual(client.resets, {201: h2.errors.ErrorCodes.REFUSED_STREAM})
        self.assertEqual(client.settings_limit, 100)
        self.assertEqual(client.answer.get(b":status"), b"200")
        self.assertEqual(_refusals(self.site, "refused_stream"), 1.0)

    @defer.inlineCallbacks
    def test_h2_declared_body_over_limit(self) -> Any:
        """An HTTP/2 stream declaring a 1 GB body is answered 413 in JSON at
        once, before any DATA, then reset with NO_ERROR so the client stops
        sending; the connection is not torn down."""
        client = _H2Upload(b"1000000000")
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.node.https_port, insecure_tls("localhost", [b"h2"]))
        yield endpoint.connect(Factory.forProtocol(lambda: client))
        yield client.closed
        self.assertEqual(client.headers.get(b":status"), b"413")
        self.assertEqual(client.headers.get(b"content-type"), _JSON.encode())
        self.assertEqual(json.loads(client.body)["error"]["code"], "body_too_large")
        self.assertEqual(client.reset, h2.errors.ErrorCodes.NO_ERROR)
        self.assertIsNone(client.goaway)

    @defer.inlineCallbacks
    def test_h2_undeclared_body_over_limit(self) -> Any:
        """An HTTP/2 body without content-length is answered 413 as soon as
        it outgrows the limit (64 KiB), though the stream never ends, then
        reset with NO_ERROR; the connection is not torn down."""
        client = _H2Upload(None, b"x" * 200_000)
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.node.https_port, insecure_tls("localhost", [b"h2"]))
        yield endpoint.connect(Factory.forProtocol(lambda: client))
        yield client.closed
        self.assertEqual(client.headers.get(b":status"), b"413")
        self.assertEqual(client.headers.get(b"content-type"), _JSON.encode())
        self.assertEqual(json.loads(client.body)["error"]["code"], "body_too_large")
        self.assertEqual(client.reset, h2.errors.ErrorCodes.NO_ERROR)
        self.assertIsNone(client.goaway)


class _H2Upload(Protocol):
    """POSTs on one stream, declaring ``declared`` as content-length (if
    given) and sending ``body`` as the server's window allows, never ending
    the stream; closes once the stream is reset (or the connection is told
    to go away)."""

    def __init__(self, declared: bytes | None, body: bytes = b"", path: bytes = b"/api/v1/manage/threads") -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.declared = declared
        self.path = path
        self.pending = body
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.reset: int | None = None
        self.goaway: Any = None

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        headers = [
            (b":method", b"POST"),
            (b":path", self.path),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b"content-type", b"application/json"),
        ]
        if self.declared is not None:
            headers.append((b"content-length", self.declared))
        self.conn.send_headers(1, headers)
        self._send_body()
        self.transport.write(self.conn.data_to_send())

    def _send_body(self) -> None:
        while self.pending and self.reset is None:
            window = min(self.conn.local_flow_control_window(1), self.conn.max_outbound_frame_size)
            if window <= 0:
                return
            chunk, self.pending = self.pending[:window], self.pending[window:]
            self.conn.send_data(1, chunk)

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.headers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.body += event.data
            elif isinstance(event, h2.events.WindowUpdated):
                self._send_body()
            elif isinstance(event, h2.events.StreamReset):
                self.reset = event.error_code
                self.transport.loseConnection()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event.error_code
                self.transport.loseConnection()
        data_out = self.conn.data_to_send()
        if data_out:
            self.transport.write(data_out)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class _H2Client(Protocol):
    """Opens 101 request streams at once (bodies never sent), then, once
    one is refused, cancels stream 1 and asks GET /healthz."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.resets: dict[int, int] = {}
        self.goaway: Any = None
        self.answer: dict[bytes, bytes] = {}
        self.settings_limit: int | None = None
        self.probe: int | None = None

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        for _ in range(101):
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(
                sid,
                [
                    (b":method", b"POST"),
                    (b":path", b"/api/v1/manage/threads"),
                    (b":scheme", b"https"),
                    (b":authority", b"localhost"),
                    (b"content-type", b"application/json"),
                ],
            )
        self.transport.write(self.conn.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                if changed is not None:
                    self.settings_limit = changed.new_value
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = event.error_code
                if self.probe is None:
                    self.conn.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
                    self.probe = self.conn.get_next_available_stream_id()
                    self.conn.send_headers(
                        self.probe,
                        [
                            (b":method", b"GET"),
                            (b":path", b"/healthz"),
                            (b":scheme", b"https"),
                            (b":authority", b"localhost"),
                        ],
                        end_stream=True,
                    )
            elif isinstance(event, h2.events.ResponseReceived) and event.stream_id == self.probe:
                self.answer = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == self.probe:
                self.transport.loseConnection()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event.error_code
                self.transport.loseConnection()
        data_out = self.conn.data_to_send()
        if data_out:
            self.transport.write(data_out)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class LiveConnectionLimitTests(_NodeCase):
    """A node that admits one live connection."""

    extra_config = ("[live]", "max_connections = 1")

    @defer.inlineCallbacks
    def test_websocket_over_the_limit(self) -> Any:
        """The second WebSocket is refused with a JSON 503 (code
        ``too_many_connections``, ``Retry-After``), not autobahn's bare
        status line; the first stays open."""
        upgrade = (
            b"GET /live HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        )
        first = _Raw(upgrade, None)
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.http_port).connect(Factory.forProtocol(lambda: first))
        while b"\r\n\r\n" not in first.data:
            yield deferLater(reactor, 0, lambda: None)
        self.assertTrue(first.data.startswith(b"HTTP/1.1 101 "), first.data[:200])
        reply = yield self.refused(upgrade, 503, "too_many_connections")
        self.assertEqual(reply.headers["retry-after"], "1")
        self.assertFalse(first.closed.called)
        first.transport.loseConnection()
        yield first.closed
