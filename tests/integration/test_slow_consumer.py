"""The slow-consumer bound (``live.max_buffered_bytes``) on a whole node, over
every shape a live connection takes: WebSocket and SSE, plain HTTP (the
counted, wrapped connection) and TLS, SSE over HTTP/2.

Each test opens a real client socket with a tiny receive buffer, subscribes,
and never reads while many events are published. The node must close it
(4008; SSE: a ``close`` message, then the end of the stream), count it, and
never hold more than the bound plus one event for it in its own buffers,
measured here from Twisted's socket transport, not through the code under
test.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
from typing import Any
from urllib.parse import urlencode

from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import TestCase

from fastedge.live.hub import Event
from fastedge.store.model import ReadPreference
from fastedge.testing.certs import write_certificate
from tests.support.nodes import RunningNode, start_node

from ..unit.live.common import masked_frame, masked_text

PRIMARY = ReadPreference.PRIMARY
#: The shipped bound (etc/fastedge.toml).
LIMIT = 256 * 1024
PAD = "z" * 5000
#: One event as sent (JSON envelope and framing around the 5,000-byte pad),
#: with room for what follows the last one: the close frame or record.
ONE_EVENT = 6000
EVENTS = 2000


async def turn() -> None:
    """Let the reactor run once (the node writes what the kernel takes)."""
    d: Deferred[None] = Deferred()
    reactor.callLater(0, d.callback, None)
    await d


def server_end(client_port: int) -> tcp.Connection | None:
    """The node's socket transport for the client whose port is ``client_port``."""
    for fd in set(reactor.getReaders()) | set(reactor.getWriters()):  # type: ignore[attr-defined]
        if isinstance(fd, tcp.Connection) and fd.getPeer().port == client_port:  # type: ignore[attr-defined]
            return fd
    return None


def node_side_buffered(client_port: int) -> int:
    """Bytes the node holds in user space for the connection of the client
    on ``client_port``: Twisted's socket write buffer, plus TLS plaintext
    not yet encrypted (HTTP/2 stream queues are added by the caller)."""
    fd = server_end(client_port)
    if fd is None:
        return 0
    total = len(fd.dataBuffer) - fd.offset + fd._tempDataLen
    protocol = fd.protocol
    if isinstance(protocol, TLSMemoryBIOProtocol):
        total += sum(len(b) for b in protocol._appSendBuffer)
    return total


def small_send_buffer(client_port: int) -> None:
    """Keep the node's kernel send buffer for this client small.

    The node writes through to the socket (fastedge.http.writenow), so a
    burst first fills the kernel's send buffer, which Linux grows to
    megabytes on loopback, before anything waits in the node. That memory
    is the kernel's, not the node's bound; but a client with a 4 KB window
    then takes longer to read it than the listener gives a closed
    connection. A small buffer keeps these tests about the node's bound.
    """
    fd = server_end(client_port)
    assert fd is not None
    fd.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)


class RawClient:
    """A client socket that reads only when told to, optionally over TLS.

    :param rcvbuf: the socket's receive buffer (set before connecting, so
        the window the node sees stays small).
    """

    def __init__(self, port: int, *, tls: bool, rcvbuf: int = 4096, alpn: list[str] | None = None) -> None:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.connect(("127.0.0.1", port))
        raw.setblocking(False)
        self.port = raw.getsockname()[1]
        self.raw = raw
        self.sock: Any = raw
        self.tls = tls
        self.alpn = alpn
        self.data = b""
        self.eof = False

    async def handshake(self) -> None:
        """Complete the TLS handshake (a no-op for plain TCP)."""
        if not self.tls:
            return
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if self.alpn:
            context.set_alpn_protocols(self.alpn)
        self.sock = context.wrap_socket(self.raw, server_hostname="localhost", do_handshake_on_connect=False)
        while True:
            try:
                self.sock.do_handshake()
                return
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                await turn()

    async def close(self) -> None:
        """Close, and wait until the node has seen the connection go."""
        self.sock.close()
        while server_end(self.port) is not None:
            await turn()

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                await turn()
                continue
            view = view[n:]

    def wake_up(self) -> None:
        """Start reading for real: a larger receive buffer (a tiny one
        makes loopback crawl at one delayed ACK per few kilobytes)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    async def read_until(self, done: Any) -> bytes:
        """Read (letting the reactor run) until ``done(data)`` or the end."""
        while not done(self.data) and not self.eof:
            try:
                got = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                await turn()
                continue
            except ConnectionResetError:
                self.eof = True
                break
            if not got:
                self.eof = True
            self.data += got
        return self.data


def ws_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The complete (opcode, payload) server frames at the start of ``data``."""
    frames = []
    i = 0
    while i + 2 <= len(data):
        opcode = data[i] & 0x0F
        n = data[i + 1] & 0x7F
        head = 2
        if n == 126:
            if i + 4 > len(data):
                break
            (n,) = struct.unpack("!H", data[i + 2 : i + 4])
            head = 4
        elif n == 127:
            if i + 10 > len(data):
                break
            (n,) = struct.unpack("!Q", data[i + 2 : i + 10])
            head = 10
        if i + head + n > len(data):
            break
        frames.append((opcode, data[i + head : i + head + n]))
        i += head + n
    return frames


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """An HTTP/1.1 chunked body decoded, and whether its last chunk came."""
    out = b""
    while True:
        line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return out, False
        size = int(line, 16)
        if size == 0:
            return out, True
        if len(rest) < size + 2:
            return out, False
        out += rest[:size]
        body = rest[size + 2 :]


class SlowConsumerTests(TestCase):
    """A whole node (counted plain listener, TLS listener with ALPN), the
    shipped bound, and one client that never reads."""

    timeout = 120

    async def start(self, *live: str) -> None:
        data_dir = os.path.abspath(self.mktemp())
        certs = os.path.join(data_dir, "certs")
        write_certificate(certs, "default", "localhost")
        config = "\n".join(
            [
                "[http]",
                'endpoint = "tcp:0:interface=127.0.0.1"',
                "[tls]",
                'endpoint = "tcp:0:interface=127.0.0.1"',
                f'cert_dir = "{certs}"',
                "[live]",
                # The client starts reading as soon as it is cut; it must
                # not be dropped before it has read the close.
                "close_timeout_seconds = 60.0",
                *live,
            ]
        )
        self.node: RunningNode = await start_node(config, data_dir)
        self.addCleanup(self.node.stop)
        self.live_service = self.node.top.getServiceNamed("live")
        store = self.node.top.getServiceNamed("store").store
        tenant = (await store.create_tenant("S", "global", created_ms=0, read_preference=PRIMARY)).value
        thread = (await store.upsert_thread(tenant.id, "u", created_ms=0, read_preference=PRIMARY)).value
        self.tenant = tenant.id
        self.channel = (tenant.id, thread.id)
        self.registry = self.node.top.registry

    def slow_disconnects(self, transport: str) -> float:
        value = self.registry.get_sample_value(
            "fastedge_live_slow_consumer_disconnects_total", {"transport": transport}
        )
        return value or 0.0

    async def subscribed(self) -> None:
        while self.live_service.hub.subscribers(self.channel) < 1:
            await turn()

    def flood(self, transport: str, measure: Any) -> int:
        """Publish until the node gives up on the consumer (and 100 more
        events after that); return the most the node held for it.

        All in one reactor turn, as a burst arrives: whatever the kernel
        does not take at once stays in the node's buffers, which is the
        worst case for the bound. (The fan-out runs after the publish, on
        later turns; ``flush`` runs it now, so the socket never drains
        between two events.)
        """
        most = 0
        after = 0
        hub = self.live_service.hub
        for i in range(EVENTS):
            hub.publish(Event(self.channel, "bench", {"i": i, "pad": PAD}))
            hub.flush()
            most = max(most, measure())
            if self.slow_disconnects(transport):
                after += 1
                if after > 100:
                    break
        return most

    async def websocket(self, tls: bool) -> None:
        await self.start()
        port = self.node.https_port if tls else int(self.node.http.rsplit(":", 1)[1])
        client = RawClient(port, tls=tls)
        self.addCleanup(lambda: Deferred.fromCoroutine(client.close()))
        await client.handshake()
        await client.send(
            b"GET /live HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await client.read_until(lambda d: b"\r\n\r\n" in d)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head[:200])
        client.data = head.split(b"\r\n\r\n", 1)[1]
        subscribe = json.dumps({"type": "subscribe", "tenant": self.tenant, "urlId": "u"}).encode()
        await client.send(masked_text(subscribe))
        await self.subscribed()
        small_send_buffer(client.port)
        # Under the listener's connection counter, plain TCP still gets the
        # direct-to-socket path; TLS encrypts per connection.
        (server,) = self.live_service.live.connections["websocket"]
        self.assertEqual(server._writer.direct, not tls)

        most = self.flood("websocket", lambda: node_side_buffered(client.port))
        self.assertEqual(self.slow_disconnects("websocket"), 1)
        self.assertLessEqual(most, LIMIT + ONE_EVENT)

        client.wake_up()
        # Now it reads: what was queued, then the close frame with 4008.
        await client.read_until(lambda d: any(op == 8 for op, _ in ws_frames(d)))
        frames = ws_frames(client.data)
        self.assertEqual(frames[-1][0], 8, "the last frame is a close")
        self.assertEqual(struct.unpack("!H", frames[-1][1][:2])[0], 4008)
        self.assertTrue(all(op == 1 for op, _ in frames[:-1]))
        # Answer the close, as a browser does (masked, echoing the code).
        mask = os.urandom(4)
        payload = struct.pack("!H", 4008)
        await client.send(b"\x88\x82" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def test_websocket_plain(self) -> None:
        """A never-reading WebSocket client on the plain-HTTP listener is
        closed with 4008 once the bound is passed; the node never holds more
        than the bound plus one event for it."""
        await self.websocket(tls=False)

    async def test_websocket_tls(self) -> None:
        """The same over TLS (the frames are encrypted per connection)."""
        await self.websocket(tls=True)

    async def sse(self, tls: bool) -> None:
        await self.start()
        port = self.node.https_port if tls else int(self.node.http.rsplit(":", 1)[1])
        client = RawClient(port, tls=tls, alpn=["http/1.1"] if tls else None)
        self.addCleanup(lambda: Deferred.fromCoroutine(client.close()))
        await client.handshake()
        path = "/live/events?" + urlencode({"tenant": self.tenant, "urlId": "u"})
        await client.send(
            "GET {} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n".format(path).encode()
        )
        await client.read_until(lambda d: b'"subscribed"' in d)
        self.assertTrue(client.data.startswith(b"HTTP/1.1 200"), client.data[:200])
        await self.subscribed()
        small_send_buffer(client.port)

        most = self.flood("sse", lambda: node_side_buffered(client.port))
        self.assertEqual(self.slow_disconnects("sse"), 1)
        self.assertLessEqual(most, LIMIT + ONE_EVENT)

        client.wake_up()
        # Now it reads: the queued records, a close record with 4008, the
        # end of the chunked body, the end of the connection.
        await client.read_until(lambda d: dechunk(d.split(b"\r\n\r\n", 1)[1])[1] if b"\r\n\r\n" in d else False)
        body, ended = dechunk(client.data.split(b"\r\n\r\n", 1)[1])
        self.assertTrue(ended)
        records = [r for r in body.split(b"\n\n") if r.strip()]
        last = json.loads(records[-1].split(b"data: ", 1)[1])
        self.assertEqual((last["type"], last["code"]), ("close", 4008))

    async def test_sse_plain(self) -> None:
        """A never-reading SSE client on the plain-HTTP listener: its stream
        ends with a ``close`` message (4008) once the bound is passed; the
        node never holds more than the bound plus one event for it."""
        await self.sse(tls=False)

    async def test_sse_tls(self) -> None:
        """The same over TLS (HTTP/1.1 by ALPN)."""
        await self.sse(tls=True)

    async def test_sse_h2(self) -> None:
        """SSE over HTTP/2 from a client that opened its flow-control windows
        wide and then stopped reading: the stream is ended with a ``close``
        message (4008) rather than queued without bound inside the node."""
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings

        await self.start()
        client = RawClient(self.node.https_port, tls=True, alpn=["h2"])
        self.addCleanup(lambda: Deferred.fromCoroutine(client.close()))
        await client.handshake()
        self.assertEqual(client.sock.selected_alpn_protocol(), "h2")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        big = 2**31 - 1
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: big})
        conn.increment_flow_control_window(big - 65535)
        sid = conn.get_next_available_stream_id()
        path = "/live/events?" + urlencode({"tenant": self.tenant, "urlId": "u"})
        conn.send_headers(
            sid,
            [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"https"), (b":authority", b"localhost")],
            end_stream=True,
        )
        await client.send(conn.data_to_send())
        body = b""
        ended = False

        def feed(data: bytes) -> None:
            nonlocal body, ended
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True

        await client.read_until(lambda d: b"subscribed" in d)
        feed(client.data)
        client.data = b""
        await client.send(conn.data_to_send())
        await self.subscribed()

        (stream,) = self.live_service.live.connections["sse"]
        h2_conn = stream._request.channel._conn

        def measure() -> int:
            queued = sum(len(c) for c in h2_conn._outboundStreamQueues.get(sid, ()) if isinstance(c, bytes))
            return queued + node_side_buffered(client.port)

        most = self.flood("sse", measure)
        self.assertEqual(self.slow_disconnects("sse"), 1)
        self.assertLessEqual(most, LIMIT + ONE_EVENT)

        client.wake_up()

        def done(data: bytes) -> bool:
            feed(data)
            client.data = b""
            return ended

        await client.read_until(done)
        records = [r for r in body.split(b"\n\n") if r.strip()]
        last = json.loads(records[-1].split(b"data: ", 1)[1])
        self.assertEqual((last["type"], last["code"]), ("close", 4008))

    # Pongs are output like events: a client that pings and never reads its
    # pongs is held to the same bound, on the whole node's plain and TLS
    # listeners (the frame rate limit is raised so the bound is what acts).

    async def pings(self, tls: bool) -> None:
        await self.start("client_frames_per_second = 10000000")
        port = self.node.https_port if tls else int(self.node.http.rsplit(":", 1)[1])
        client = RawClient(port, tls=tls)
        self.addCleanup(lambda: Deferred.fromCoroutine(client.close()))
        await client.handshake()
        await client.send(
            b"GET /live HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        )
        head = await client.read_until(lambda d: b"\r\n\r\n" in d)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head[:200])
        fd = server_end(client.port)
        assert fd is not None
        # A small kernel buffer on the node's side too, so the node's own
        # queue is what fills (as with a slow client far away).
        fd.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ping = masked_frame(0x9, b"p" * 125)
        most = 0
        sent = 0
        while not self.slow_disconnects("websocket") and sent < 100_000:
            await client.send(ping * 50)
            sent += 50
            await turn()
            most = max(most, node_side_buffered(client.port))
        self.assertEqual(self.slow_disconnects("websocket"), 1)
        # The bound, one pong past it, and the close frame.
        self.assertLessEqual(most, LIMIT + 2 + 125 + 128)
        # The node's own queue did fill (the check above is not vacuous).
        self.assertGreater(most, LIMIT // 2)

    async def test_pings_plain(self) -> None:
        """A never-reading client flooding pings on the plain listener is
        closed as a slow consumer once its pongs pass the bound."""
        await self.pings(tls=False)

    async def test_pings_tls(self) -> None:
        """The same over TLS, where pongs are encrypted per connection."""
        await self.pings(tls=True)
