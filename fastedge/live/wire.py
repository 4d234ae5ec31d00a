# -*- test-case-name: tests.unit.live.test_wire -*-
"""Writing pre-framed bytes to a connection, fast and bounded.

A broadcast hands the same frame to thousands of connections. Going
through ``transport.write`` queues every frame in Twisted's buffers and
sends none of them until the reactor's next turn, so the first subscriber
waits for the last one to be queued. :class:`Writer` instead writes
through (:mod:`fastedge.http.writenow`): straight to the socket when the
connection has nothing queued (the usual case), queueing only what the
socket did not take.

The queue is bounded: once more than ``limit`` bytes wait for a slow
reader, the writer stops accepting data and calls ``on_overflow`` (the
connection is then closed with code 4008, see ``docs/live-protocol.md``).

What waits is measured where it waits, whatever the connection is made
of (:func:`backlog_meter`): Twisted's socket buffer, under any number of
pass-through wrappers (the listeners' connection counters), under TLS (its
plaintext buffer, then the ciphertext in the socket buffer), and, for an
HTTP/2 stream, the stream's own send queue plus its connection's socket
buffer. A transport of another make falls back to counting what was
written since it last asked us to pause (:class:`Writer` is its push
producer), which bounds the queue at the transport's own high-water mark
plus ``limit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import abstract
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from ..http.writenow import has_buffer_fields, plain_tcp, send_now, unwrapped, write_through

#: How many bytes one connection holds in this process, right now.
Meter = Callable[[], int]


def backlog_meter(transport: Any) -> Meter | None:
    """A function telling how many bytes written to ``transport`` wait in
    this process (not yet taken by the kernel), or ``None`` when the
    transport is of a make this does not know.

    Known: Twisted's socket transports (``FileDescriptor``), pass-through
    :class:`ProtocolWrapper`\\s, :class:`TLSMemoryBIOProtocol`, and
    ``twisted.web``'s HTTP/2 streams (pass ``request.channel``).
    """
    transport = unwrapped(transport)
    if isinstance(transport, abstract.FileDescriptor):
        if not has_buffer_fields(transport):
            return None
        fd = transport

        def socket_backlog() -> int:
            return len(fd.dataBuffer) - fd.offset + fd._tempDataLen

        return socket_backlog
    if isinstance(transport, TLSMemoryBIOProtocol):
        tls = transport
        below = backlog_meter(tls.transport)
        if below is None or not isinstance(getattr(tls, "_appSendBuffer", None), list):
            return None
        below_backlog = below

        def tls_backlog() -> int:
            # Plaintext waits here only before the handshake completes;
            # after it, each write is encrypted and handed down at once.
            pending = tls._appSendBuffer
            return (sum(map(len, pending)) if pending else 0) + below_backlog()

        return tls_backlog
    return _h2_stream_meter(transport)


def _h2_stream_meter(stream: Any) -> Meter | None:
    """The backlog of a ``twisted.web`` HTTP/2 stream: its send queue (data
    the peer's flow-control window or the paused connection holds back)
    plus its connection's socket buffer, which the stream cannot get past."""
    try:
        from twisted.web._http2 import H2Stream
    except ImportError:  # pragma: no cover - h2 is a dependency
        return None
    if not isinstance(stream, H2Stream):
        return None
    connection = getattr(stream, "_conn", None)
    queues = getattr(connection, "_outboundStreamQueues", None)
    if not isinstance(queues, dict):
        return None
    below = backlog_meter(getattr(connection, "transport", None))
    stream_id = stream.streamID

    def stream_backlog() -> int:
        queue = queues.get(stream_id)
        # The queue also holds an end-of-stream marker (not bytes).
        queued = sum(len(c) for c in queue if isinstance(c, bytes)) if queue else 0
        return queued + (below() if below is not None else 0)

    return stream_backlog


@implementer(IPushProducer)
class Writer:
    """Bounded, direct writes to one transport; also its push producer.

    :param transport: where bytes go (``write`` is used when the fast path
        does not apply).
    :param limit: bytes that may wait in this process for a slow reader.
    :param on_overflow: called once, when that limit is passed.
    :param direct: whether frames may go straight to the socket (when the
        transport is plain TCP).
    :param backlog: how to measure what waits; by default
        :func:`backlog_meter` of ``transport`` (pass one when ``transport``
        is not the connection, e.g. a sink writing through a request).
    """

    __slots__ = (
        "_transport",
        "_tcp",
        "_meter",
        "_paused",
        "_behind",
        "_limit",
        "overflowed",
        "_on_overflow",
    )

    def __init__(
        self,
        transport: Any,
        limit: int,
        on_overflow: Callable[[], None],
        *,
        direct: bool = True,
        backlog: Meter | None = None,
    ) -> None:
        self._transport = transport
        self._tcp = plain_tcp(transport) if direct else None
        if direct and self._tcp is None:
            # TLS: each frame's record written through below the encryption.
            write_through(transport)
        self._meter = backlog if backlog is not None else backlog_meter(transport)
        self._paused = False
        self._behind = 0
        self._limit = limit
        self.overflowed = False
        self._on_overflow = on_overflow

    @property
    def direct(self) -> bool:
        """Whether frames may go straight to the socket."""
        return self._tcp is not None

    @property
    def measured(self) -> bool:
        """Whether the backlog is measured where it waits (else estimated
        from the transport's pause and resume calls)."""
        return self._meter is not None

    @property
    def buffered(self) -> int:
        """Bytes written that wait in this process for this connection (an
        estimate past the transport's high-water mark when not
        :attr:`measured`)."""
        if self._meter is not None:
            return self._meter()
        return self._behind

    def write(self, data: bytes) -> int:
        """Send or queue ``data``.

        :returns: ``len(data)``, or 0 if the writer has overflowed (nothing
            more is queued for a consumer that fell behind).
        """
        if self.overflowed:
            return 0
        t = self._tcp
        if t is not None:
            if send_now(t, data):
                return len(data)
            if len(t.dataBuffer) - t.offset + t._tempDataLen > self._limit:
                self._overflow()
            return len(data)
        self._transport.write(data)
        meter = self._meter
        if meter is not None:
            if meter() > self._limit:
                self._overflow()
        elif self._paused:
            self._behind += len(data)
            if self._behind > self._limit:
                self._overflow()
        return len(data)

    def write_last(self, data: bytes) -> None:
        """Queue a final message (a close notice) whatever the bound: it is
        small, and nothing follows it."""
        (self._tcp if self._tcp is not None else self._transport).write(data)

    def _overflow(self) -> None:
        self.overflowed = True
        self._on_overflow()

    # IPushProducer: the transport tells us when its buffer is full.

    def pauseProducing(self) -> None:
        """The transport's buffer is full: count what is queued from now.

        A socket transport says so again on every write past its
        high-water mark; only the first call starts the count.
        """
        if not self._paused:
            self._paused = True
            self._behind = 0

    def resumeProducing(self) -> None:
        """The transport drained its buffer."""
        self._paused = False
        self._behind = 0

    def stopProducing(self) -> None:
        """The connection is going away."""
        self._paused = True
