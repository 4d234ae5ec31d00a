"""WebSocket handshakes of real clients against a whole node (``tap.makeService``:
the node's own HTTP and HTTPS listeners) on real loopback sockets.

Every browser offers ``permessage-deflate`` when it opens a WebSocket, and so
do the ``websockets`` library and autobahn's client when asked; the node
declines compression (one pre-built frame serves every subscriber). Each
client must get ``101`` with no ``Sec-WebSocket-Extensions`` in the answer,
and then receive a live event posted through the public API.

The browser handshakes reproduce the header sets, in their order, that
Chromium 131, Firefox 133 and Safari 18 send for ``new WebSocket(url)``
from a page of another origin (no browser runs on the test machines, so
they are written out here rather than captured per run); only ``Host``
and the random ``Sec-WebSocket-Key`` differ from run to run. What matters
most is kept exact: each browser's ``Sec-WebSocket-Extensions`` offer and
Firefox's ``Connection: keep-alive, Upgrade``.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import os
import ssl
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from fastedge.http.channel import EdgeHTTPChannel
from fastedge.http.site import EdgeRequest
from fastedge.store.model import ReadPreference
from fastedge.testing.certs import write_certificate
from tests.support.handshakes import CHROMIUM, CURL, FIREFOX, SAFARI, SAMPLE_KEY, handshake
from tests.support.http2 import insecure_tls
from tests.support.nodes import loopback_http_client, start_node

from ..unit.live.common import RawWebSocket, header_lines, masked_text
from .test_live import WaitingClient

PRIMARY = ReadPreference.PRIMARY
URL_ID = "https://blog.example/2026/live-comments"


def _accept(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key`` (RFC 6455)."""
    digest = hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    return base64.b64encode(digest)


class HandshakeTests(TestCase):
    """One whole node, listening on HTTP and HTTPS; one thread with a comment."""

    timeout = 60

    async def asyncSetUp(self) -> None:
        data_dir = os.path.abspath(self.mktemp())
        certs = os.path.join(data_dir, "certs")
        write_certificate(certs, "default", "localhost")
        self.node = await start_node(
            "[http]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
            "[tls]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
            'cert_dir = "{}"\n'.format(certs),
            data_dir,
        )
        self.addCleanup(self.node.stop)
        self.http = loopback_http_client(self)
        store = self.node.top.getServiceNamed("store").store
        self.tenant = (await store.create_tenant("Blog", "global", created_ms=0, read_preference=PRIMARY)).value
        await self.post("the first comment creates the thread")
        self.live = self.node.top.getServiceNamed("live").live
        # Every test ends with every live connection closed on the server.
        self.addCleanup(self.drained)

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.asyncSetUp())

    def drained(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.live.on_drained(d)
        return d

    @property
    def http_port(self) -> int:
        return int(self.node.http.rsplit(":", 1)[1])

    async def post(self, text: str) -> dict[str, Any]:
        response = await self.http.post(
            "{}/api/v1/{}/comments".format(self.node.http, self.tenant.id),
            params={"urlId": URL_ID},
            json={"text": text, "displayName": "Eve"},
        )
        self.assertEqual(response.code, 201)
        return await response.json()  # type: ignore[no-any-return]

    def subscribe_message(self) -> bytes:
        return json.dumps({"type": "subscribe", "tenant": self.tenant.id, "urlId": URL_ID}).encode()

    def assert_declined(self) -> None:
        self.assertEqual(self.node_metric("fastedge_live_compression_offers_declined_total"), 1.0)

    def node_metric(self, name: str) -> float:
        value = self.node.top.registry.get_sample_value(name)
        return 0.0 if value is None else float(value)

    # Raw handshakes: exactly what the browser sends.

    async def chromium(self, key: bytes | None = None) -> RawWebSocket:
        """A raw client that has sent Chromium's handshake over plain HTTP,
        with ``key`` (default: a fresh one)."""
        host = b"127.0.0.1:%d" % self.http_port
        client = RawWebSocket(handshake(CHROMIUM, host, key or base64.b64encode(os.urandom(16))))
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.http_port).connect(Factory.forProtocol(lambda: client))
        return client

    async def raw_client(self, template: bytes, *, tls: bool) -> None:
        """Open ``/live`` with ``template``'s bytes, check the answer, subscribe,
        receive an event posted through the API, close."""
        key = base64.b64encode(os.urandom(16))
        if template is CURL:
            key = SAMPLE_KEY
        if tls:
            port = self.node.https_port
            endpoint: Any = SSL4ClientEndpoint(reactor, "127.0.0.1", port, insecure_tls("localhost"))
            host = b"localhost:%d" % port
        else:
            port = self.http_port
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
            host = b"127.0.0.1:%d" % port
        client = RawWebSocket(handshake(template, host, key))
        await endpoint.connect(Factory.forProtocol(lambda: client))
        head = await client.head
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        headers = header_lines(head)
        self.assertNotIn(b"sec-websocket-extensions", headers)
        self.assertEqual(headers[b"sec-websocket-accept"], _accept(key))
        hello = await client.wait_message("hello")
        self.assertEqual(hello["protocol"], "fastedge.live.1")
        subscribed = client.wait_message("subscribed")
        client.send(masked_text(self.subscribe_message()))
        await subscribed
        event = client.wait_message("event")
        posted = await self.post("hello from a browser")
        got = await event
        self.assertEqual(got["event"], "comment.created")
        self.assertEqual(got["data"]["comment"]["id"], posted["comment"]["id"])
        # An uncompressed text frame: RSV1 was not set (read_frame would
        # not have parsed a compressed payload as JSON).
        self.assert_declined()
        client.send(b"\x88\x82" + b"\x00\x00\x00\x00" + b"\x03\xe8")  # close 1000, zero mask
        await client.lost

    async def test_one_parse(self) -> None:
        """The upgrade is parsed once, by twisted.web: the WebSocket
        protocol finishes the handshake from the parsed headers (autobahn's
        own parser, which keeps the raw request, never runs), and the
        answer is autobahn's exact 101."""
        key = base64.b64encode(os.urandom(16))
        client = await self.chromium(key)
        head = await client.head
        self.assertEqual(
            head.split(b"\r\n\r\n")[0],
            b"HTTP/1.1 101 Switching Protocols\r\n" + b"Server: " + self.live_factory().server.encode() + b"\r\n"
            b"Upgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + _accept(key),
        )
        await client.wait_message("hello")
        (server,) = self.live.connections["websocket"]
        self.assertNotIn("http_request_data", vars(server))
        self.assertNotIn("http_headers", vars(server))
        # autobahn's per-connection flags stay class defaults until changed;
        # every connection counts into the factory's one traffic counter.
        self.assertNotIn("closedByMe", vars(server))
        self.assertNotIn("autoPingPendingSeq", vars(server))
        self.assertIs(server.trafficStats, self.live_factory().traffic)
        client.send(b"\x88\x82" + b"\x00\x00\x00\x00" + b"\x03\xe8")
        await client.lost

    async def test_upgrade_frees_http_state(self) -> None:
        """The twisted.web request and channel of an upgrade are freed when
        the WebSocket protocol takes the connection over: neither kept for
        the life of the connection (by the listener's connection counter)
        nor left in reference cycles for the garbage collector (in a burst
        of connects, its full collections walking them were a fifth of the
        node's CPU)."""
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        client = await self.chromium()
        await client.wait_message("hello")
        (server,) = self.live.connections["websocket"]
        # With the collector off, what is alive or in a cycle is listed here.
        left = [
            type(o).__name__
            for o in gc.get_objects()
            if (isinstance(o, EdgeRequest) and o.path == b"/live")
            or (isinstance(o, EdgeHTTPChannel) and getattr(o, "_networkProducer", None) is server.transport)
        ]
        self.assertEqual(left, [])
        client.send(b"\x88\x82" + b"\x00\x00\x00\x00" + b"\x03\xe8")
        await client.lost

    async def test_idle_connection_is_born_empty(self) -> None:
        """An open connection that has sent nothing holds none of what only
        a message, an observer or a log line needs (autobahn's open and
        closed Deferreds and its event results, the UTF-8 validator, the
        rate limiters, transport details, the client's address as a
        string): each is made on first use. Made late, they behave as if
        made at connect: ``peer`` names the client, ``is_open`` has fired,
        the first message is validated and rate-limited, and ``is_closed``
        fires when the connection closes."""
        client = await self.chromium()
        await client.wait_message("hello")
        (server,) = self.live.connections["websocket"]
        held = vars(server)
        for name in (
            "is_open",
            "is_closed",
            "_results",
            "_transport_details",
            "utf8validator",
            "_messages",
            "_frames",
            "peer",
        ):
            self.assertNotIn(name, held)
        self.assertEqual(server.peer, "tcp4:127.0.0.1:%d" % client.transport.getHost().port)
        self.assertIsNone(await server.is_open)
        subscribed = client.wait_message("subscribed")
        client.send(masked_text(self.subscribe_message()))
        await subscribed
        self.assertIn("utf8validator", vars(server))
        self.assertIn("_messages", vars(server))
        closed = server.is_closed
        client.send(b"\x88\x82" + b"\x00\x00\x00\x00" + b"\x03\xe8")
        self.assertIs(await closed, server)
        await client.lost

    def live_factory(self) -> Any:
        return self.node.top.getServiceNamed("live").resource.factory

    async def test_chromium_plain(self) -> None:
        """Chromium's handshake over ws:// gets 101, no extension, events."""
        await self.raw_client(CHROMIUM, tls=False)

    async def test_chromium_tls(self) -> None:
        """Chromium's handshake over wss:// (the HTTPS listener) likewise."""
        await self.raw_client(CHROMIUM, tls=True)

    async def test_firefox_plain(self) -> None:
        """Firefox's handshake (``Connection: keep-alive, Upgrade``) over ws://."""
        await self.raw_client(FIREFOX, tls=False)

    async def test_firefox_tls(self) -> None:
        """Firefox's handshake over wss://."""
        await self.raw_client(FIREFOX, tls=True)

    async def test_safari_plain(self) -> None:
        """Safari's handshake over ws://."""
        await self.raw_client(SAFARI, tls=False)

    async def test_safari_tls(self) -> None:
        """Safari's handshake over wss://."""
        await self.raw_client(SAFARI, tls=True)

    async def test_curl_from_the_report(self) -> None:
        """The curl command of the bug report (compression offered, no
        Origin) gets 101 at once instead of nothing for 5 s."""
        await self.raw_client(CURL, tls=False)

    # Real client libraries at their defaults.

    async def library_client(self, *, tls: bool) -> None:
        """The ``websockets`` library's client, as a user's script would use
        it (it offers ``permessage-deflate; client_max_window_bits``), run
        in a thread with its own blocking socket."""
        from websockets.sync.client import connect

        if tls:
            url = "wss://localhost:{}/live".format(self.node.https_port)
            context: ssl.SSLContext | None = ssl.create_default_context()
            assert context is not None
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            url = "ws://127.0.0.1:{}/live".format(self.http_port)
            context = None

        def open_and_subscribe() -> tuple[Any, dict[str, str], list[dict[str, Any]]]:
            ws = connect(url, ssl=context, open_timeout=20) if tls else connect(url, open_timeout=20)
            offered = ws.request.headers.get("Sec-WebSocket-Extensions")
            answered = dict(ws.response.headers.raw_items())
            got = [json.loads(ws.recv(timeout=20))]
            ws.send(self.subscribe_message().decode())
            got.append(json.loads(ws.recv(timeout=20)))
            answered["offered"] = offered or ""
            return ws, answered, got

        ws, answered, got = await threads.deferToThread(open_and_subscribe)
        self.addCleanup(ws.close)
        self.assertIn("permessage-deflate", answered.pop("offered"))
        self.assertNotIn("sec-websocket-extensions", {k.lower() for k in answered})
        self.assertEqual([m["type"] for m in got], ["hello", "subscribed"])
        self.assertEqual(ws.protocol.extensions, [])
        posted = await self.post("hello from websockets")
        event = json.loads(await threads.deferToThread(ws.recv, 20))
        self.assertEqual(event["data"]["comment"]["id"], posted["comment"]["id"])
        self.assert_declined()
        await threads.deferToThread(ws.close)

    async def test_websockets_library_plain(self) -> None:
        """``websockets`` at its defaults over ws://: 101, no extension, events."""
        await self.library_client(tls=False)

    async def test_websockets_library_tls(self) -> None:
        """``websockets`` at its defaults over wss://."""
        await self.library_client(tls=True)

    async def autobahn_client(self, *, tls: bool) -> None:
        """autobahn's client offering ``permessage-deflate`` (and ready to
        accept the server's answer) opens a session without compression."""
        scheme, port = ("wss", self.node.https_port) if tls else ("ws", self.http_port)
        factory = WebSocketClientFactory("{}://localhost:{}/live".format(scheme, port))
        factory.protocol = WaitingClient

        def accept(response: PerMessageDeflateResponse) -> PerMessageDeflateResponseAccept:
            return PerMessageDeflateResponseAccept(response)

        factory.setProtocolOptions(
            perMessageCompressionOffers=[PerMessageDeflateOffer()],
            perMessageCompressionAccept=accept,
        )
        endpoint: Any = (
            SSL4ClientEndpoint(reactor, "127.0.0.1", port, insecure_tls("localhost"))
            if tls
            else TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        )
        ws: WaitingClient = await endpoint.connect(factory)
        await ws.opened
        self.assertEqual(ws.websocket_extensions_in_use, [])
        subscribed = ws.wait_for("subscribed")
        ws.sendMessage(self.subscribe_message())
        await subscribed
        event = ws.wait_for("event")
        posted = await self.post("hello from autobahn")
        self.assertEqual((await event)["data"]["comment"]["id"], posted["comment"]["id"])
        self.assert_declined()
        ws.sendClose(1000)
        await ws.closed

    async def test_autobahn_client_plain(self) -> None:
        """autobahn's client offering compression, over ws://."""
        await self.autobahn_client(tls=False)

    async def test_autobahn_client_tls(self) -> None:
        """autobahn's client offering compression, over wss://."""
        await self.autobahn_client(tls=True)
