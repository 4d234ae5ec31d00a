"""Fixtures shared by the live-thread tests: a node, tenants, comments."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from fastedge.store.model import (
    Comment,
    CommentStatus,
    NewComment,
    ReadPreference,
    Tenant,
    Thread,
)
from fastedge.testing.live import LiveNode

PRIMARY = ReadPreference.PRIMARY


def done(d: Deferred[Any]) -> Any:
    """The result of an already-fired Deferred (store calls run inline)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class World:
    """A node with two tenants, each with a thread at the same urlId."""

    def __init__(self, clock: Any, run: Any = None, **live: Any) -> None:
        kwargs = {} if run is None else {"run": run}
        self.node = LiveNode(
            tempfile.mkdtemp(prefix="fe-live-"),
            clock=clock,
            live_overrides=live,
            **kwargs,
        )
        store = self.node.store
        self.tenant_a: Tenant = done(store.create_tenant("A", "global", created_ms=0, read_preference=PRIMARY)).value
        self.tenant_b: Tenant = done(store.create_tenant("B", "global", created_ms=0, read_preference=PRIMARY)).value
        self.thread_a: Thread = done(
            store.upsert_thread(
                self.tenant_a.id,
                "https://a.example/post",
                created_ms=0,
                read_preference=PRIMARY,
            )
        ).value
        self.thread_b: Thread = done(
            store.upsert_thread(
                self.tenant_b.id,
                "https://a.example/post",
                created_ms=0,
                read_preference=PRIMARY,
            )
        ).value
        self.url = "https://a.example/post"

    def author(self, tenant: Tenant) -> str:
        """A new anonymous author of ``tenant``; returns its author id."""
        session = done(self.node.store.create_anonymous_session(tenant.id, created_ms=0, read_preference=PRIMARY))
        return str(session.value.author_id)

    def comment(self, tenant: Tenant, thread: Thread, author: str, text: str = "hello") -> Comment:
        """Store an approved comment and publish it, as the API does, and let
        the fan-out's reactor turns run (delivery follows the publish)."""
        written = done(
            self.node.store.create_comment(
                NewComment(
                    tenant_id=tenant.id,
                    thread_id=thread.id,
                    author_id=author,
                    display_name="Ann",
                    body_source=text,
                    body_html="<p>{}</p>".format(text),
                    status=CommentStatus.APPROVED,
                    created_ms=0,
                ),
                read_preference=PRIMARY,
            )
        )
        comment: Comment = written.value
        self.node.service.publisher.created(comment)
        self.node.clock.advance(0)
        return comment

    def subscribe_msg(self, tenant: Tenant | None = None, **extra: Any) -> bytes:
        body = {
            "type": "subscribe",
            "tenant": (tenant or self.tenant_a).id,
            "urlId": self.url,
        }
        body.update(extra)
        return json.dumps(body).encode()

    def viewer_token(self, tenant: Tenant, author: str) -> str:
        return str(self.node.api.viewer_tokens.issue(tenant.id, author, int(self.node.clock.seconds())))


class Client(WebSocketClientProtocol):
    """A WebSocket client that keeps every message and how it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed: Deferred[None] = Deferred()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code
        self.close_reason = reason
        if not self.closed.called:
            self.closed.callback(None)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    def send_json(self, **body: Any) -> None:
        self.sendMessage(json.dumps(body).encode())


def masked_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A client's (masked) WebSocket frame, as a raw socket sends it."""
    mask = os.urandom(4)
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def masked_text(payload: bytes) -> bytes:
    """A client's (masked) WebSocket text frame, as a raw socket sends it."""
    return masked_frame(0x1, payload)


def read_frame(data: bytes) -> tuple[int, bytes, bytes] | None:
    """The first whole server (unmasked) frame in ``data``:
    ``(opcode, payload, rest)``, or ``None`` while it is incomplete."""
    if len(data) < 2:
        return None
    opcode, n, i = data[0] & 0x0F, data[1] & 0x7F, 2
    if data[1] & 0x80:
        raise ValueError("a server frame must not be masked")
    if n == 126:
        if len(data) < 4:
            return None
        (n,) = struct.unpack("!H", data[2:4])
        i = 4
    elif n == 127:
        if len(data) < 10:
            return None
        (n,) = struct.unpack("!Q", data[2:10])
        i = 10
    if len(data) < i + n:
        return None
    return opcode, data[i : i + n], data[i + n :]


class RawWebSocket(Protocol):
    """A WebSocket client that sends an exact handshake (a browser's bytes)
    and reads the server's frames itself, over any transport (TCP, TLS).

    :ivar head: fires with the answer's status line and headers (bytes), or
        fails if the connection is lost before them.
    :ivar lost: fires when the connection is gone.
    """

    def __init__(self, handshake: bytes) -> None:
        self._handshake = handshake
        self._buffer = b""
        self.head: Deferred[bytes] = Deferred()
        self.frames: list[tuple[int, bytes]] = []
        self.lost: Deferred[None] = Deferred()
        self._waiting: list[tuple[Callable[[int, bytes], bool], Deferred[tuple[int, bytes]]]] = []

    def connectionMade(self) -> None:
        self.transport.write(self._handshake)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if not self.head.called:
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self._buffer = rest
            self.head.callback(head)
        while (frame := read_frame(self._buffer)) is not None:
            opcode, payload, self._buffer = frame
            self.frames.append((opcode, payload))
            for match, d in list(self._waiting):
                if match(opcode, payload):
                    self._waiting.remove((match, d))
                    d.callback((opcode, payload))

    def connectionLost(self, reason: Any = None) -> None:
        if not self.head.called:
            self.head.errback(ConnectionError("connection lost before the handshake answer"))
        for _, d in self._waiting:
            d.errback(ConnectionError("connection lost"))
        self._waiting = []
        self.lost.callback(None)

    def send(self, frame: bytes) -> None:
        """Write raw bytes (a frame made by :func:`masked_frame`)."""
        self.transport.write(frame)

    def wait_for(self, match: Callable[[int, bytes], bool]) -> Deferred[tuple[int, bytes]]:
        """The first frame (seen or to come) for which ``match(opcode, payload)``."""
        d: Deferred[tuple[int, bytes]] = Deferred()
        for opcode, payload in self.frames:
            if match(opcode, payload):
                d.callback((opcode, payload))
                return d
        self._waiting.append((match, d))
        return d

    def wait_message(self, kind: str) -> Deferred[dict[str, Any]]:
        """The first text message of JSON ``type`` ``kind``."""

        def match(opcode: int, payload: bytes) -> bool:
            return opcode == 0x1 and json.loads(payload).get("type") == kind

        d = self.wait_for(match)
        return d.addCallback(lambda frame: json.loads(frame[1]))  # type: ignore[no-any-return]

    def wait_close(self) -> Deferred[int]:
        """The code of the server's close frame."""
        d = self.wait_for(lambda opcode, payload: opcode == 0x8)
        return d.addCallback(lambda frame: struct.unpack("!H", frame[1][:2])[0])  # type: ignore[no-any-return]


def header_lines(head: bytes) -> dict[bytes, bytes]:
    """The headers of an HTTP answer head, lower-cased names (last one wins)."""
    out: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out[name.strip().lower()] = value.strip()
    return out
