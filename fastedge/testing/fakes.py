"""Fakes at the edges: inline thread runners, recording connections, a
capturing datagram transport and an in-memory media source.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred

_T = TypeVar("_T")


def run_inline(fn: Callable[[], _T]) -> Deferred[_T]:
    """A store runner that calls the blocking function right away.

    Unit tests use it with a real database so store calls resolve
    synchronously (``successResultOf``) without threads or a running reactor.
    """
    return maybeDeferred(fn)


class HeldRunner:
    """A store runner that, while :attr:`holding`, holds every call until
    :meth:`release` (otherwise it runs them at once, like :func:`run_inline`).

    With a real (SQLite) store it lets a test see what happens while
    database calls are in flight (coalescing, a connection closing meanwhile)
    without threads, sleeps or a running reactor.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[[], object], Deferred[object]]] = []
        self.holding = False

    def __call__(self, fn: Callable[[], _T]) -> Deferred[_T]:
        if not self.holding:
            return maybeDeferred(fn)
        d: Deferred[_T] = Deferred()
        self.calls.append((fn, d))  # type: ignore[arg-type]
        return d

    def release(self) -> int:
        """Run every held call (and any made meanwhile); returns how many ran."""
        ran = 0
        while self.calls:
            fn, d = self.calls.pop(0)
            maybeDeferred(fn).chainDeferred(d)
            ran += 1
        return ran


#: A fixed, realistic start time for test clocks (2026-01-01T00:00:00Z).
EPOCH = 1_767_225_600.0


class RecordingConnection:
    """A live connection (WebSocket or SSE, as ``fastedge.live.frontend``
    sees them) that keeps every message it is sent, decoded."""

    transport_name = "websocket"

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        #: The client's LiveConnection (set by :class:`LiveSubscriber`).
        self.owner: Any = None
        #: Closed by the node (:meth:`shutdown`).
        self.closed = False

    def push(self, prepared: Any) -> int:
        payload = prepared.payload
        self.messages.append(json.loads(payload))
        return len(payload)

    def send(self, payload: bytes) -> None:
        self.messages.append(json.loads(payload))

    def keepalive(self) -> None:
        """Nothing to keep alive in memory."""

    def shutdown(self) -> None:
        """The node goes away: recorded as a ``close`` 1001 (as SSE sends it)."""
        self.messages.append({"type": "close", "code": 1001, "reason": "server shutting down"})
        if self.owner is not None:
            self.owner.close()
        self.closed = True

    def revoke(self, sub: Any, error: Any) -> bool:
        """As the WebSocket transport: an ``error`` naming the channel."""
        from fastedge.live import messages

        if self.owner is None or not self.owner.drop(sub):
            return False
        self.send(messages.revoked(messages.channel_name(*sub.channel), error.code, error.message))
        return True

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The messages of one ``type``."""
        return [m for m in self.messages if m.get("type") == kind]


class CapturingDatagramTransport:
    """A UDP transport that keeps what is written (``(bytes, address)``)."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, address: Any = None) -> None:
        self.written.append((data, address))


class FakeSourceResponse:
    """A scripted :class:`~fastedge.cdn.interfaces.ISourceResponse`: the test
    pushes body bytes and ends (or cuts) the body when it wants."""

    def __init__(self, status: int, meta: Any = None, checksums: dict[str, str] | None = None) -> None:
        self.status = status
        self.meta = meta
        self.checksums = checksums or {}
        self.receiver: Any = None
        self.aborted = False

    def deliver(self, receiver: Any) -> None:
        self.receiver = receiver

    def abort(self) -> None:
        self.aborted = True


class FakeSource:
    """A scripted :class:`~fastedge.cdn.interfaces.IObjectSource` for unit
    tests of the fill and the resource: each fetch is recorded and answered
    when the test fires its Deferred."""

    name = "origin"

    def __init__(self) -> None:
        self.fetches: list[tuple[str, str | None, Deferred[Any]]] = []

    def fetch(self, media: Any, key: str, *, etag: str | None, last_modified: str | None) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.fetches.append((key, etag, d))
        return d


def _declare_fakes() -> None:
    from zope.interface import classImplements

    from fastedge.cdn.interfaces import IObjectSource, ISourceResponse

    classImplements(FakeSource, IObjectSource)
    classImplements(FakeSourceResponse, ISourceResponse)


_declare_fakes()
