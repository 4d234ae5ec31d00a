"""Fixtures shared by the live-thread tests: a node, tenants, comments."""

from __future__ import annotations

import json
import tempfile
from typing import Any

from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet.defer import Deferred

from fastedge.store.model import (
    Comment,
    CommentStatus,
    NewComment,
    ReadPreference,
    Tenant,
    Thread,
)
from fastedge.testing import LiveNode

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
        """Store an approved comment and publish it, as the API does."""
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


def masked_text(payload: bytes) -> bytes:
    """A client's (masked) WebSocket text frame, as a raw socket sends it."""
    import os
    import struct

    mask = os.urandom(4)
    n = len(payload)
    head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
