# -*- test-case-name: tests.unit.pubsub.test_wire -*-
"""Writing pre-framed bytes to a connection, fast and bounded.

A broadcast hands the same frame to thousands of connections. Going
through ``transport.write`` queues every frame in Twisted's buffers and
sends none of them until the reactor's next turn, so the first subscriber
waits for the last one to be queued. :class:`Writer` instead sends
straight to the socket when the connection has nothing queued (the usual
case), and queues only what the socket did not take.

The queue is bounded: once more than ``limit`` bytes wait for a slow
reader, the writer stops accepting data and calls ``on_overflow`` (the
connection is then closed with code 4008, see ``docs/live-protocol.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


def _plain_tcp(transport: Any) -> Any:
    """The transport if it is a plain (not TLS) TCP connection, else ``None``.

    Only then is a frame the bytes on the wire; TLS must encrypt per
    connection, so it goes through ``transport.write``.
    """
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        # The fast path reads FileDescriptor's buffer fields; refuse the
        # shortcut rather than guess if a Twisted release renames them.
        if hasattr(transport, "dataBuffer") and hasattr(transport, "_tempDataLen") and hasattr(transport, "offset"):
            return transport
    return None


@implementer(IPushProducer)
class Writer:
    """Bounded, direct writes to one transport; also its push producer.

    :param transport: where bytes go (``write`` is used when the fast path
        does not apply).
    :param limit: bytes that may wait in user space for a slow reader.
    :param on_overflow: called once, when that limit is passed.
    """

    __slots__ = (
        "_transport",
        "_tcp",
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
    ) -> None:
        self._transport = transport
        self._tcp = _plain_tcp(transport) if direct else None
        self._paused = False
        self._behind = 0
        self._limit = limit
        self.overflowed = False
        self._on_overflow = on_overflow

    @property
    def direct(self) -> bool:
        """Whether frames may go straight to the socket."""
        return self._tcp is not None

    def write(self, data: bytes) -> int:
        """Send or queue ``data``.

        :returns: ``len(data)``, or 0 if the writer has overflowed (nothing
            more is queued for a consumer that fell behind).
        """
        if self.overflowed:
            return 0
        t = self._tcp
        if t is not None:
            if not t.dataBuffer and not t._tempDataLen and t.connected and not t.disconnecting:
                try:
                    n = t.socket.send(data)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    # The peer is gone; the reactor notices and closes.
                    return 0
                if n == len(data):
                    return n
                t.write(data[n:] if n else data)
            else:
                t.write(data)
            if len(t.dataBuffer) - t.offset + t._tempDataLen > self._limit:
                self._overflow()
            return len(data)
        self._transport.write(data)
        if self._paused:
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
        """The transport's buffer is full: count what is queued from now."""
        self._paused = True
        self._behind = 0

    def resumeProducing(self) -> None:
        """The transport drained its buffer."""
        self._paused = False
        self._behind = 0

    def stopProducing(self) -> None:
        """The connection is going away."""
        self._paused = True
