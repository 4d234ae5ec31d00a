"""Hostile WebSocket clients of ``/live`` on real loopback sockets: one that
pings and never reads its pongs, and one that sends a message as endless
empty continuation frames. Neither may grow the node's memory."""

from __future__ import annotations

import gc
import socket
import struct
import tempfile
import weakref
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from fastedge.testing.live import LiveNode

from ..unit.live.common import RawWebSocket, masked_frame

HANDSHAKE = (
    b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)


def turn() -> Deferred[None]:
    """Let the reactor run once (the server is in this process)."""
    d: Deferred[None] = Deferred()
    reactor.callLater(0.001, d.callback, None)
    return d


def queued(transport: Any) -> int:
    """Bytes a TCP transport holds in user space (not yet taken by the socket)."""
    return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)


class AbuseTestCase(TestCase):
    timeout = 60
    live: dict[str, Any] = {}

    async def asyncSetUp(self) -> None:
        self.node = LiveNode(tempfile.mkdtemp(prefix="fe-abuse-"), clock=reactor, live_overrides=self.live)
        self.addCleanup(self.node.api.service.stopService)
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self.node.site)
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.asyncSetUp())

    def drained(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.node.live.on_drained(d)
        return d


class PingFloodTests(AbuseTestCase):
    # A frame rate high enough that the output bound is what stops it.
    live = {"max_buffered_bytes": 65536, "close_timeout_seconds": 0.2, "client_frames_per_second": 10**7}

    async def test_pings_never_read(self) -> None:
        """A client sending 125-byte pings and never reading its pongs: the
        pongs queue against live.max_buffered_bytes like events, so the
        connection is closed with 4008 (then dropped after the close
        timeout) and what the node holds for it stays bounded."""
        sleeper = socket.socket()
        self.addCleanup(sleeper.close)
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sleeper.connect(("127.0.0.1", self.port))
        sleeper.setblocking(False)
        sleeper.sendall(HANDSHAKE)
        head = b""
        while b"\r\n\r\n" not in head:
            await turn()
            try:
                head += sleeper.recv(4096)
            except BlockingIOError:
                pass
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        while not self.node.live.connections["websocket"]:
            await turn()
        (server,) = self.node.live.connections["websocket"]
        transport = server.transport
        # Small kernel buffers on both sides, so the node's own queue is
        # what fills (as with a slow client far away).
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        gone = server.is_closed

        ping = masked_frame(0x9, b"p" * 125)
        blob = ping * 200
        most = 0
        sent = 0
        while not gone.called and sent < 20_000:
            try:
                n = sleeper.send(blob)
            except BlockingIOError:
                n = 0
            sent += n // len(ping)
            blob = blob[n:] or ping * 200
            await turn()
            if transport.connected:
                most = max(most, queued(transport))
        await gone
        self.assertEqual(self.node.metric("fastedge_live_closes_total", {"code": "4008"}), 1)
        self.assertEqual(
            self.node.metric("fastedge_live_slow_consumer_disconnects_total", {"transport": "websocket"}), 1
        )
        # At most the bound, one pong past it, and the close frame.
        self.assertLessEqual(most, 65536 + len(ping) + 128)
        await self.drained()


class ContinuationFloodTests(AbuseTestCase):
    # Long enough for the client (same reactor) to read the close frame
    # before the node drops the connection: the drop is a reset, and a
    # reset arriving first discards what the client's kernel still held
    # (on a loaded machine the abort's timer could run before the read).
    live = {"close_timeout_seconds": 2.0}

    async def test_endless_empty_continuations(self) -> None:
        """A text frame without FIN followed by 50,000 empty continuation
        frames: closed with 1009 at live.max_fragments_per_message, the node
        stops reading it, it is dropped after the close timeout, and the
        server's protocol (with its partial message) is freed."""
        client = RawWebSocket(HANDSHAKE)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(Factory.forProtocol(lambda: client))
        head = await client.head
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        await client.wait_message("hello")
        (server,) = self.node.live.connections["websocket"]
        ref = weakref.ref(server)
        del server
        closed = client.wait_close()
        client.send(masked_frame(0x1, b'{"type":', fin=False))
        empty = masked_frame(0x0, b"", fin=False)
        for _ in range(10):
            client.send(empty * 5000)
        self.assertEqual(await closed, 1009)
        # The node stopped reading the flood (the sender's socket fills).
        self.assertFalse([r for r in reactor.getReaders() if getattr(r, "protocol", None) is ref()])
        await client.lost
        await self.drained()
        self.assertEqual(self.node.metric("fastedge_live_frame_floods_total", {"code": "1009"}), 1)
        gc.collect()
        self.assertIsNone(ref(), gc.get_referrers(ref()) if ref() is not None else None)

    async def test_control_frames_between_fragments(self) -> None:
        """Pings may come between the fragments of a message (RFC 6455 5.4):
        each is answered and the message is read whole."""
        client = RawWebSocket(HANDSHAKE)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(Factory.forProtocol(lambda: client))
        await client.head
        await client.wait_message("hello")
        pong = client.wait_for(lambda opcode, payload: opcode == 0xA)
        answer = client.wait_message("pong")
        client.send(
            masked_frame(0x1, b'{"type":', fin=False)
            + masked_frame(0x9, b"between")
            + masked_frame(0x0, b'"ping",', fin=False)
            + masked_frame(0x0, b'"ref":7}')
        )
        self.assertEqual(await pong, (0xA, b"between"))
        self.assertEqual((await answer)["ref"], 7)
        client.send(masked_frame(0x8, struct.pack("!H", 1000)))
        await client.lost
        await self.drained()
