"""End to end on real loopback sockets: a comment posted through the public
API reaches a WebSocket subscriber and an SSE subscriber of its thread."""

from __future__ import annotations

import json
import tempfile
from typing import Any

import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from fastedge.store.model import ReadPreference
from fastedge.testing.live import LiveNode

from ..unit.live.common import Client

PRIMARY = ReadPreference.PRIMARY


class WaitingClient(Client):
    """A WebSocket client that can wait for a message type."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[None] = Deferred()
        self._waiting: list[tuple[str, Deferred[dict[str, Any]]]] = []

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        super().onMessage(payload, isBinary)
        message = self.messages[-1]
        for kind, d in list(self._waiting):
            if message.get("type") == kind:
                self._waiting.remove((kind, d))
                d.callback(message)

    def wait_for(self, kind: str) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiting.append((kind, d))
        return d


class SseReader(Protocol):
    """A raw HTTP/1.1 client of /live/events that waits for a byte string."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self.data = b""
        self._waiting: list[tuple[bytes, Deferred[bytes]]] = []
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for needle, d in list(self._waiting):
            if needle in self.data:
                self._waiting.remove((needle, d))
                d.callback(self.data)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)

    def wait_for(self, needle: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        if needle in self.data:
            d.callback(self.data)
            return d
        self._waiting.append((needle, d))
        return d


class EndToEndTests(TestCase):
    async def test_post_reaches_websocket_and_sse(self) -> None:
        """Post through the public API over HTTP; the same comment arrives as
        a comment.created event over a WebSocket and over SSE, both written
        through the direct-to-socket fast path."""
        node = LiveNode(tempfile.mkdtemp(prefix="fe-e2e-"), clock=reactor)
        self.addCleanup(node.api.service.stopService)
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(node.site)
        self.addCleanup(port.stopListening)
        host = port.getHost()
        base = "http://127.0.0.1:{}".format(host.port)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        tenant = (await node.store.create_tenant("E2E", "global", created_ms=0, read_preference=PRIMARY)).value
        url_id = "https://e2e.example/article"
        comments = "{}/api/v1/{}/comments".format(base, tenant.id)

        async def post(text: str) -> dict[str, Any]:
            response = await treq.post(
                comments,
                params={"urlId": url_id},
                json={"text": text, "displayName": "Eve"},
                pool=pool,
            )
            self.assertEqual(response.code, 201)
            return await response.json()  # type: ignore[no-any-return]

        await post("the first comment creates the thread")

        # WebSocket subscriber.
        factory = WebSocketClientFactory("ws://127.0.0.1:{}/live".format(host.port))
        factory.protocol = WaitingClient
        ws: WaitingClient = await TCP4ClientEndpoint(reactor, "127.0.0.1", host.port).connect(factory)
        await ws.opened
        subscribed = ws.wait_for("subscribed")
        ws.send_json(type="subscribe", tenant=tenant.id, urlId=url_id)
        answer = await subscribed
        self.assertEqual(answer["seq"], 1)

        # SSE subscriber.
        from urllib.parse import urlencode

        path = "/live/events?" + urlencode({"tenant": tenant.id, "urlId": url_id})
        request = "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".format(path).encode()
        sse = SseReader(request)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", host.port).connect(Factory.forProtocol(lambda: sse))
        await sse.wait_for(b'"subscribed"')

        ws_event = ws.wait_for("event")
        sse_event = sse.wait_for(b"comment.created")
        body = await post("hello, live world")
        event = await ws_event
        self.assertEqual(event["event"], "comment.created")
        self.assertEqual(event["seq"], 2)
        self.assertEqual(event["data"]["comment"]["id"], body["comment"]["id"])
        self.assertEqual(event["data"]["comment"]["html"], "<p>hello, live world</p>")
        raw = await sse_event
        records = [r for r in raw.split(b"\n") if r.startswith(b"data: ") and b"comment.created" in r]
        sse_message = json.loads(records[0][len(b"data: ") :])
        self.assertEqual(sse_message, event)
        self.assertIn(b"id: " + event["id"].encode() + b"\n", raw)

        # Both went through the fast path (plain TCP, straight to the socket).
        writers = [conn._writer for group in node.live.connections.values() for conn in group]
        self.assertEqual([w.direct for w in writers], [True, True])

        # Close both and wait until the server has seen them go.
        drained: Deferred[None] = Deferred()
        node.live.on_drained(drained)
        ws.sendClose(1000)
        sse.transport.loseConnection()
        await ws.closed
        await sse.lost
        await drained
        self.assertEqual(node.metric("fastedge_live_subscriptions"), 0)


class SlowConsumerTests(TestCase):
    async def test_client_that_never_reads(self) -> None:
        """A real client that subscribes and then never reads is cut off once
        its queue passes live.max_buffered_bytes (4008, then dropped after
        the close timeout); the node's memory for it stays bounded and a
        reading client on the same channel gets every event."""
        import socket

        from fastedge.live.hub import Event

        node = LiveNode(
            tempfile.mkdtemp(prefix="fe-slow-"),
            clock=reactor,
            live_overrides={"max_buffered_bytes": 65536, "close_timeout_seconds": 0.2},
        )
        self.addCleanup(node.api.service.stopService)
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(node.site)
        self.addCleanup(port.stopListening)
        host = port.getHost()
        tenant = (await node.store.create_tenant("S", "global", created_ms=0, read_preference=PRIMARY)).value
        thread = (await node.store.upsert_thread(tenant.id, "u", created_ms=0, read_preference=PRIMARY)).value
        subscribe = json.dumps({"type": "subscribe", "tenant": tenant.id, "urlId": "u"})

        factory = WebSocketClientFactory("ws://127.0.0.1:{}/live".format(host.port))
        factory.protocol = WaitingClient
        reader: WaitingClient = await TCP4ClientEndpoint(reactor, "127.0.0.1", host.port).connect(factory)
        await reader.opened
        ok = reader.wait_for("subscribed")
        reader.sendMessage(subscribe.encode())
        await ok
        (reader_server,) = node.live.connections["websocket"]

        # The sleeper: a raw socket with a tiny receive buffer that is never read.
        from ..unit.live.common import masked_text

        sleeper = socket.socket()
        self.addCleanup(sleeper.close)
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sleeper.connect(("127.0.0.1", host.port))
        sleeper.setblocking(False)
        sleeper.sendall(
            b"GET /live HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

        async def turn() -> None:
            d: Deferred[None] = Deferred()
            reactor.callLater(0.001, d.callback, None)
            await d

        head = b""
        while b"\r\n\r\n" not in head:
            await turn()
            try:
                head += sleeper.recv(4096)
            except BlockingIOError:
                pass
        self.assertTrue(head.startswith(b"HTTP/1.1 101"))
        sleeper.sendall(masked_text(subscribe.encode()))
        while node.hub.subscribers((tenant.id, thread.id)) < 2:
            await turn()
        (sleeper_server,) = node.live.connections["websocket"] - {reader_server}
        self.assertTrue(sleeper_server._writer.direct)

        drained: Deferred[None] = Deferred()
        pad = "z" * 16384
        events = 400  # ~6.5 MB: more than the kernel buffers hold
        last = reader.wait_for("event")
        for i in range(events):
            node.hub.publish(Event((tenant.id, thread.id), "bench", {"i": i, "pad": pad}))
            if i % 2:
                await turn()  # the reader (in this process) reads; the sleeper never does
        self.assertEqual(
            node.metric(
                "fastedge_live_slow_consumer_disconnects_total",
                {"transport": "websocket"},
            ),
            1,
        )
        self.assertTrue(sleeper_server._writer.overflowed)
        self.assertFalse(reader_server._writer.overflowed)
        gone = sleeper_server.is_closed
        await last
        while len([m for m in reader.messages if m.get("type") == "event"]) < events:
            await turn()
        await gone
        while node.hub.subscribers((tenant.id, thread.id)) > 1:
            await turn()
        node.live.on_drained(drained)
        reader.sendClose(1000)
        await reader.closed
        await drained


class TlsTests(TestCase):
    async def test_websocket_over_tls(self) -> None:
        """Behind TLS the same events arrive intact: frames are written
        through the TLS transport (encrypted per connection), not straight
        to the socket."""
        from twisted.internet import ssl
        from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint

        from fastedge.live.hub import Event

        node = LiveNode(tempfile.mkdtemp(prefix="fe-tls-"), clock=reactor)
        self.addCleanup(node.api.service.stopService)
        key = ssl.KeyPair.generate(size=2048)
        cert = key.selfSignedCert(1, CN="localhost")
        server_options = ssl.PrivateCertificate.fromCertificateAndKeyPair(cert, key).options()
        port = await SSL4ServerEndpoint(reactor, 0, server_options, interface="127.0.0.1").listen(node.site)
        self.addCleanup(port.stopListening)
        host = port.getHost()
        tenant = (await node.store.create_tenant("T", "global", created_ms=0, read_preference=PRIMARY)).value
        thread = (await node.store.upsert_thread(tenant.id, "u", created_ms=0, read_preference=PRIMARY)).value

        factory = WebSocketClientFactory("wss://localhost:{}/live".format(host.port))
        factory.protocol = WaitingClient
        client_options = ssl.CertificateOptions(verify=False)
        ws: WaitingClient = await SSL4ClientEndpoint(reactor, "127.0.0.1", host.port, client_options).connect(factory)
        await ws.opened
        ok = ws.wait_for("subscribed")
        ws.send_json(type="subscribe", tenant=tenant.id, urlId="u")
        await ok
        (server,) = node.live.connections["websocket"]
        self.assertFalse(server._writer.direct)
        got = ws.wait_for("event")
        node.hub.publish(Event((tenant.id, thread.id), "comment.likes", {"commentId": "c", "likes": 3}))
        event = await got
        self.assertEqual(event["data"], {"commentId": "c", "likes": 3})
        drained: Deferred[None] = Deferred()
        node.live.on_drained(drained)
        ws.sendClose(1000)
        await ws.closed
        await drained
