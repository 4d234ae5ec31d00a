"""The HTTPS listener on real loopback sockets: SNI, rotation, HTTP/2,
WebSocket over HTTP/1.1, refused handshakes, redirects, metrics."""

from __future__ import annotations

import os

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from OpenSSL import SSL
from twisted.application.service import MultiService
from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from zope.interface import implementer

from fastedge.config import parse_config
from fastedge.http import service as transport_service
from fastedge.http.site import EdgeSite
from fastedge.metrics.registry import new_registry
from fastedge.testing.certs import write_certificate
from tests.support.http2 import h2_request, insecure_tls
from tests.support.nodes import loopback_http_client, start_node


@implementer(IHandshakeListener)
class _Peek(Protocol):
    """Completes a handshake and reports the server's certificate."""

    def __init__(self, done):
        self.done = done
        self.seen = None

    def handshakeCompleted(self):
        cert = self.transport.getPeerCertificate()
        self.seen = (cert.get_subject().CN, cert.get_serial_number())
        self.transport.loseConnection()

    def connectionLost(self, reason=None):
        # Report only once the connection is closed: nothing left behind.
        if self.seen is not None:
            self.done.callback(self.seen)
        else:
            self.done.errback(reason)


def _sample(text, name, **labels):
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


class TlsNodeTests(TestCase):
    """A node whose certificate directory holds a default, a host name and a
    wildcard certificate, rescanned on every handshake."""

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.http = loopback_http_client(self)
        self.data_dir = os.path.abspath(self.mktemp())
        self.certs = os.path.join(self.data_dir, "certs")
        write_certificate(self.certs, "default", "default.test")
        write_certificate(self.certs, "a.test")
        write_certificate(self.certs, "*.wild.test")
        config = "\n".join(
            [
                "[http]",
                'endpoint = "tcp:0:interface=127.0.0.1"',
                "[tls]",
                'endpoint = "tcp:0:interface=127.0.0.1"',
                f'cert_dir = "{self.certs}"',
                "reload_check_seconds = 0.0",
            ]
        )
        self.node = yield start_node(config, self.data_dir)
        self.addCleanup(self.node.stop)

    def peek(self, server_name, max_version=None):
        done = defer.Deferred()
        endpoint = SSL4ClientEndpoint(
            reactor,
            "127.0.0.1",
            self.node.https_port,
            insecure_tls(server_name, max_version=max_version),
        )
        endpoint.connect(Factory.forProtocol(lambda: _Peek(done))).addErrback(done.errback)
        return done

    @defer.inlineCallbacks
    def metrics(self):
        response = yield self.http.get(self.node.http + "/metrics")
        return (yield response.text())

    @defer.inlineCallbacks
    def test_sni_chooses_the_certificate(self):
        """The exact name, then a wildcard one level up, then the default."""
        for name, expected in (
            ("a.test", "a.test"),
            ("x.wild.test", "*.wild.test"),
            ("unknown.test", "default.test"),
            ("a.b.wild.test", "default.test"),
        ):
            cn, _ = yield self.peek(name)
            self.assertEqual(cn, expected, name)

    @defer.inlineCallbacks
    def test_replaced_certificate_is_used_without_restart(self):
        """A certificate file replaced on disk is served to the next
        connection; a broken replacement keeps the previous one in use."""
        _, first = yield self.peek("a.test")
        write_certificate(self.certs, "a.test")
        _, second = yield self.peek("a.test")
        self.assertNotEqual(first, second)
        with open(os.path.join(self.certs, "a.test.pem"), "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")
        cn, third = yield self.peek("a.test")
        self.assertEqual((cn, third), ("a.test", second))
        text = yield self.metrics()
        self.assertEqual(_sample(text, "fastedge_transport_tls_certificate_load_errors_total"), 1.0)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_old_protocol_versions_are_refused(self):
        """A TLS 1.1 client is refused, and the failure is counted by reason."""
        yield self.assertFailure(self.peek("a.test", max_version=SSL.TLS1_1_VERSION), Exception)
        text = yield self.metrics()
        self.assertEqual(
            _sample(
                text,
                "fastedge_transport_tls_handshake_failures_total",
                reason="protocol_version",
            ),
            1.0,
        )

    @defer.inlineCallbacks
    def test_plain_http_on_the_tls_port_is_counted(self):
        """Plain HTTP sent to the HTTPS port fails the handshake with reason http_on_https."""
        done = defer.Deferred()

        class Plain(Protocol):
            def connectionMade(self):
                self.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

            def connectionLost(self, reason=None):
                done.callback(None)

        yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.node.https_port).connect(Factory.forProtocol(Plain))
        yield done
        text = yield self.metrics()
        self.assertEqual(
            _sample(
                text,
                "fastedge_transport_tls_handshake_failures_total",
                reason="http_on_https",
            ),
            1.0,
        )

    @defer.inlineCallbacks
    def test_http2_api_and_metrics(self):
        """ALPN picks h2; the API answers over HTTP/2, is counted per route,
        and the connection is counted as h2."""
        response, alpn = yield h2_request(self.node.https_port, b"GET", b"/healthz")
        self.assertEqual((alpn, response.status), (b"h2", 200))
        self.assertIn(b'"status":"ok"', response.body)
        response, _ = yield h2_request(self.node.https_port, b"GET", b"/nope")
        self.assertEqual(response.status, 404)
        self.assertIn(b'"error"', response.body)
        text = yield self.metrics()
        self.assertEqual(
            _sample(text, "fastedge_http_requests_total", route="/healthz", code="200"),
            1.0,
        )
        self.assertEqual(
            _sample(
                text,
                "fastedge_transport_connections_total",
                listener="https",
                protocol="h2",
            ),
            2.0,
        )
        self.assertEqual(_sample(text, "fastedge_transport_tls_handshakes_total", alpn="h2"), 2.0)

    @defer.inlineCallbacks
    def test_http2_body_limit(self):
        """An HTTP/2 request body over the limit gets the JSON 413, like HTTP/1.1."""
        response, _ = yield h2_request(
            self.node.https_port,
            b"POST",
            b"/api/v1/manage/threads",
            body=b"x" * (100 * 1024),
            headers=[(b"content-type", b"application/json")],
        )
        self.assertEqual(response.status, 413)
        self.assertIn(b'"body_too_large"', response.body)

    @defer.inlineCallbacks
    def test_http2_body_limit_without_length(self):
        """Without a content-length the limit applies as the body arrives."""
        response, _ = yield h2_request(
            self.node.https_port,
            b"POST",
            b"/api/v1/manage/threads",
            body=b"{" + b" " * (100 * 1024),
            headers=[(b"content-type", b"application/json")],
        )
        self.assertEqual(response.status, 413)


class SelfSignedTests(TestCase):
    """A node started with an empty certificate directory."""

    @defer.inlineCallbacks
    def test_self_signed_default_is_generated(self):
        """The defaults run: a self-signed certificate appears in the data
        directory and HTTPS answers with it."""
        data_dir = os.path.abspath(self.mktemp())
        node = yield start_node(
            '[http]\nendpoint = "tcp:0:interface=127.0.0.1"\n[tls]\nendpoint = "tcp:0:interface=127.0.0.1"\n',
            data_dir,
        )
        self.addCleanup(node.stop)
        self.assertTrue(os.path.exists(os.path.join(data_dir, "selfsigned.pem")))
        response, alpn = yield h2_request(node.https_port, b"GET", b"/healthz")
        self.assertEqual(response.status, 200)


class RedirectTests(TestCase):
    """``tls.redirect_http = true``."""

    @defer.inlineCallbacks
    def test_plain_http_redirects_except_health_and_metrics(self):
        """GET is redirected with 301 (POST with 308) to the HTTPS port;
        /healthz and /metrics stay on HTTP; a bad Host is a 400."""
        data_dir = os.path.abspath(self.mktemp())
        node = yield start_node(
            '[http]\nendpoint = "tcp:0:interface=127.0.0.1"\n[tls]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
            "redirect_http = true\n",
            data_dir,
        )
        self.addCleanup(node.stop)
        http = loopback_http_client(self)
        response = yield http.get(node.http + "/api/v1/x?y=1", allow_redirects=False)
        self.assertEqual(response.code, 301)
        self.assertEqual(
            response.headers.getRawHeaders("location"),
            [f"https://127.0.0.1:{node.https_port}/api/v1/x?y=1"],
        )
        response = yield http.post(node.http + "/api/v1/x", data=b"{}", allow_redirects=False)
        self.assertEqual(response.code, 308)
        for path in ("/healthz", "/metrics"):
            response = yield http.get(node.http + path)
            self.assertEqual(response.code, 200)
            yield response.content()
        response = yield http.get(node.http + "/x", headers={"host": "bad host/evil"}, allow_redirects=False)
        self.assertEqual(response.code, 400)
        yield response.content()


class _Echo(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.sendMessage(payload, isBinary)


class WebSocketOverTlsTests(TestCase):
    """WebSocket on the HTTPS port (HTTP/1.1 upgrade), counted as ws."""

    @defer.inlineCallbacks
    def test_websocket_upgrade_over_tls(self):
        """An HTTP/1.1 upgrade to WebSocket works through TLS and the
        connection moves from h1 to ws in the metrics."""
        data_dir = os.path.abspath(self.mktemp())
        cfg = parse_config(
            '[http]\nendpoint = "tcp:0:interface=127.0.0.1"\n[tls]\nendpoint = "tcp:0:interface=127.0.0.1"\n',
            overrides={"node.data_dir": data_dir},
        )
        registry = new_registry()
        root = Resource()
        factory = WebSocketServerFactory()
        factory.protocol = _Echo
        root.putChild(b"ws", WebSocketResource(factory))
        site = EdgeSite(root, reactor=reactor, max_body_bytes=1024, metrics=None)
        top = transport_service.make_service(
            cfg.http,
            reactor=reactor,
            site=site,
            background=MultiService(),
            registry=registry,
            tls=cfg.tls,
            data_dir=data_dir,
        )
        top.privilegedStartService()
        top.startService()
        self.addCleanup(top.stopService)
        port = top.getServiceNamed("https").port.getHost().port

        got = defer.Deferred()
        closed = defer.Deferred()

        class Client(WebSocketClientProtocol):
            def onOpen(self):
                self.sendMessage(b"hello")

            def onMessage(self, payload, isBinary):
                got.callback(payload)
                self.sendClose()

            def onClose(self, wasClean, code, reason):
                closed.callback(None)

        client_factory = WebSocketClientFactory(f"wss://localhost:{port}/ws")
        client_factory.protocol = Client
        yield SSL4ClientEndpoint(reactor, "127.0.0.1", port, insecure_tls("localhost")).connect(client_factory)
        payload = yield got
        self.assertEqual(payload, b"hello")
        samples = {
            (s.labels["listener"], s.labels["protocol"]): s.value
            for family in registry.collect()
            if family.name == "fastedge_transport_connections"
            for s in family.samples
            if s.name.endswith("_total")
        }
        self.assertEqual(samples.get(("https", "ws")), 1.0)
        yield closed
