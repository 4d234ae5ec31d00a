# -*- test-case-name: tests.unit.http.test_drain -*-
"""Draining the client connections when the node stops.

Once the listeners stop accepting, :class:`Drain` tells what runs on the
connections the node is going away (the live child closes its WebSockets
and SSE streams with 1001, after a ``move`` message naming another node:
``docs/live-protocol.md``), then asks every connection to close once what
it has in flight is answered:

- HTTP/1.x: an idle (keep-alive) connection closes now; one with a request
  in flight answers it with ``Connection: close`` and closes;
- HTTP/2: an idle connection closes now; one with streams open gets a
  GOAWAY (no new streams) and closes once its streams are done;
- a WebSocket is left to the live child's closing handshake.

It waits for the connection count (:meth:`~fastedge.http.connections.ConnectionGate.when_idle`)
to reach zero, looking again every :data:`SWEEP_SECONDS` for connections
that became idle, for ``http.drain_seconds`` at most; then the connections
still open are aborted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hyperframe.frame import GoAwayFrame
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web._http2 import H2Connection

from .connections import ConnectionGate
from .metrics import DrainMetrics

__all__ = ["Drain", "SWEEP_SECONDS", "quiesce"]

#: How often a drain looks for connections that have become idle.
SWEEP_SECONDS = 0.25

_log = Logger()


def quiesce(connection: Any) -> bool:
    """Ask one client connection (its outermost protocol) to close once what
    it has in flight is answered.

    :returns: whether it was idle and is closing now.
    """
    if getattr(connection, "disconnecting", False) or getattr(connection, "_gone", False):
        return False
    channel = getattr(getattr(connection, "wrappedProtocol", None), "_channel", None)
    if channel is None:
        # A WebSocket (autobahn took the connection over): the live child
        # closes it with 1001.
        return False
    if isinstance(channel, H2Connection):
        if not channel.streams:
            connection.loseConnection()
            return True
        if not getattr(channel, "_fastedge_goaway", False) and channel.transport is not None:
            channel._fastedge_goaway = True  # type: ignore[attr-defined]
            # h2's close_connection() would also close its state machine,
            # and the answers in flight could no longer be sent: the GOAWAY
            # frame is written beside it instead, after what h2 has queued.
            channel._tryToWriteControlData()
            last = channel.conn.highest_inbound_stream_id
            channel.transport.write(GoAwayFrame(0, last_stream_id=last, error_code=0).serialize())
        return False
    requests = getattr(channel, "requests", None)
    if not requests:
        connection.loseConnection()
        return True
    channel.persistent = False
    for request in requests:
        if not request.startedWriting:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
    return False


class Drain:
    """One drain of the connections ``gate`` counts.

    :param seconds: how long in-flight work may take (``http.drain_seconds``).
    """

    _log = Logger()

    def __init__(
        self, gate: ConnectionGate, *, clock: IReactorTime, seconds: float, metrics: DrainMetrics | None = None
    ) -> None:
        self._gate = gate
        self._clock = clock
        self._seconds = seconds
        self._metrics = metrics

    def run(self, going_away: Callable[[], object] | None = None) -> Deferred[None]:
        """Drain: call ``going_away`` (the live child's goodbye), ask every
        connection to close, wait (bounded), abort what is left.

        :returns: fires once no client connection is open, or at the bound
            (once what was left is aborted); never fails.
        """
        gate, clock = self._gate, self._clock
        started = clock.seconds()
        if going_away is not None:
            try:
                going_away()
            except Exception:
                self._log.failure("telling live clients the node goes away failed")
        in_flight = self._sweep()
        if gate.open == 0:
            self._done(started, 0)
            return gate.when_idle()
        self._log.info(
            "draining {open} client connections ({in_flight} with work in flight), for {seconds} s at most",
            open=gate.open,
            in_flight=in_flight,
            seconds=self._seconds,
        )
        finished: Deferred[None] = Deferred()
        calls: list[Any] = []

        def sweep() -> None:
            self._sweep()
            calls[0] = clock.callLater(SWEEP_SECONDS, sweep)

        def deadline() -> None:
            left = gate.connections()
            self._log.warn(
                "{count} client connections still open after {seconds} s (http.drain_seconds): closed",
                count=gate.open,
                seconds=self._seconds,
            )
            for connection in left:
                if self._metrics is not None:
                    self._metrics.closed.labels("aborted").inc()
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abortConnection()
            # The drain is over at its bound, whether or not the aborted
            # connections are gone yet.
            over(None)

        def over(_: object) -> None:
            for call in calls:
                if call.active():
                    call.cancel()
            if not finished.called:
                self._done(started, in_flight)
                finished.callback(None)

        calls.append(clock.callLater(SWEEP_SECONDS, sweep))
        calls.append(clock.callLater(self._seconds, deadline))
        gate.when_idle().addCallback(over)
        return finished

    def _sweep(self) -> int:
        """Ask every open connection to close; :returns: how many are still busy."""
        busy = 0
        for connection in self._gate.connections():
            if quiesce(connection):
                if self._metrics is not None:
                    self._metrics.closed.labels("idle").inc()
            else:
                busy += 1
        return busy

    def _done(self, started: float, in_flight: int) -> None:
        seconds = self._clock.seconds() - started
        if self._metrics is not None:
            self._metrics.seconds.set(seconds)
        self._log.info("drained the client connections in {seconds:.3f} s", seconds=seconds, in_flight=in_flight)
