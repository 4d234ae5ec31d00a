# -*- test-case-name: tests.unit.mesh.test_broker -*-
"""The PB broker of mesh connections, with the limits a faulty peer meets.

A peer that sends a type outside the node's allow-list (:func:`~fastedge.mesh.messages.mesh_security`)
or a message that does not validate, a message larger than
``mesh.max_message_bytes``, more than ``mesh.max_calls_per_second`` calls
(bursts of twice as many), anything PB cannot parse, or that does not log in
within ``mesh.connect_timeout_seconds``, is disconnected at once
(``abortConnection``: nothing more is read from it or written to it). Each
case is logged with the peer and the reason and counted in
``fastedge_mesh_peer_disconnects_total``; other peers are not affected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import jelly, pb

from ..tokenbucket import TokenBucket
from .messages import MESH_SECURITY, BadMessage, MeshSecurity, Refused
from .metrics import MeshMetrics

__all__ = [
    "Limits",
    "MeshBroker",
    "MeshClientFactory",
    "MeshServerFactory",
    "RefusalLog",
    "tls_error_text",
]


@dataclass(frozen=True)
class Limits:
    """What a peer may do on one connection."""

    max_message_bytes: int = 1024 * 1024
    max_calls_per_second: int = 5000
    max_pending_calls: int = 10_000
    #: TCP, TLS, PB negotiation and login must be done within this.
    login_timeout_seconds: float = 2.0
    #: The message types admitted (the mesh's own and its handlers').
    security: MeshSecurity = MESH_SECURITY


class _Refusals:
    __slots__ = ("last", "since", "first", "count", "total", "interval")

    def __init__(self, now: float, interval: float) -> None:
        self.last = now
        self.since = now
        self.first = now
        self.count = 0
        self.total = 1
        self.interval = interval


class RefusalLog:
    """A peer's repeated failures are logged once, then summarised.

    A misconfigured peer (a certificate of another CA, a name that does not
    match) is refused on every attempt, for as long as it is misconfigured;
    a dead peer fails to connect on every retry for up to
    ``mesh.forget_dead_seconds``. The first failure is logged in full by the
    caller; later ones are only counted, and a summary with the count is
    logged at most once every :attr:`summary_seconds` (on the next failure
    after that). With ``growth`` above 1 the period grows by that factor
    after each summary, up to ``max_summary_seconds``, so an outage of an
    hour costs a handful of lines. A peer without a failure for
    :attr:`forget_seconds` starts over: its next failure is a new problem
    and is logged in full. :meth:`recovered` ends a run early (the link came
    up) and says how long it lasted. The metrics stay exact.

    One instance per kind of failure (the mesh has one for refusals and one
    for unreachable peers): a key is only ever counted in one of them.

    :param clock: the node's clock.
    :param what: the failures, as the summary line names them.
    :param growth: factor by which the summary period grows (1: fixed).
    """

    _log = Logger()
    #: The summary's format (constant, for log observers).
    SUMMARY = "mesh: {count} more {what} {direction} {peer} in the last {seconds:.0f} s; the last: {detail}"
    summary_seconds = 60.0
    max_summary_seconds = 3600.0
    forget_seconds = 600.0
    #: Peers remembered at most (the oldest is forgotten first).
    max_peers = 1024

    def __init__(
        self,
        clock: IReactorTime,
        *,
        what: str = "refusals",
        summary_seconds: float | None = None,
        growth: float = 1.0,
    ) -> None:
        self._clock = clock
        self._what = what
        self._growth = growth
        if summary_seconds is not None:
            self.summary_seconds = summary_seconds
        self._peers: dict[tuple[str, str], _Refusals] = {}

    def refused(self, key: tuple[str, str], *, direction: str, peer: str, detail: str) -> bool:
        """Note one failure of the peer known by ``key``.

        :param key: what identifies the peer across attempts (its host for
            an incoming connection, whose port changes every time).
        :returns: whether the caller should log this failure in full (the
            first one); otherwise it is counted for the next summary.
        """
        now = self._clock.seconds()
        state = self._peers.get(key)
        if state is None or now - state.last > self.forget_seconds:
            self._peers.pop(key, None)
            if len(self._peers) >= self.max_peers:
                # Insertion order is first-failure order: forget the oldest.
                del self._peers[next(iter(self._peers))]
            self._peers[key] = _Refusals(now, self.summary_seconds)
            return True
        state.last = now
        state.count += 1
        state.total += 1
        if now - state.since >= state.interval:
            self._log.warn(
                self.SUMMARY,
                count=state.count,
                what=self._what,
                direction=direction,
                peer=peer,
                seconds=now - state.since,
                detail=detail,
            )
            state.count = 0
            state.since = now
            state.interval = min(state.interval * self._growth, max(self.max_summary_seconds, self.summary_seconds))
        return False

    def recovered(self, key: tuple[str, str]) -> tuple[int, float] | None:
        """The peer known by ``key`` is reachable again.

        :returns: ``(failures, seconds)`` of the run of failures it ends
            (for the caller's "back" line), or ``None`` when there was none.
        """
        state = self._peers.pop(key, None)
        if state is None:
            return None
        return state.total, self._clock.seconds() - state.first


def tls_error_text(reason: Failure) -> str | None:
    """OpenSSL's reasons from a TLS failure (``"tlsv1 alert unknown ca"``),
    or ``None`` when the failure is not a TLS error."""
    if not reason.check(SSL.Error):
        return None
    args = reason.value.args
    parts = []
    if args and isinstance(args[0], list):
        for item in args[0]:
            if isinstance(item, tuple) and item:
                parts.append(str(item[-1]))
    return "; ".join(parts) or str(reason.value)


def _no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on the TCP connection under TLS: mesh
    messages are small and latency-bound (a heartbeat answer or a relayed
    event held back for a delayed ACK costs 40 ms on Linux)."""
    for _ in range(4):
        if transport is None:
            return
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
            return
        transport = getattr(transport, "transport", None)


class MeshBroker(pb.Broker):
    """A PB broker that enforces :class:`Limits` and reports misbehaviour.

    :ivar peer_id: the peer's node id once it logged in (or, on the
        client side, once the server proved who it is).
    """

    _log = Logger()

    def __init__(
        self,
        isClient: bool,
        *,
        limits: Limits,
        clock: IReactorTime,
        metrics: MeshMetrics,
        address: IAddress | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        super().__init__(isClient, limits.security)
        self.limits = limits
        self.clock = clock
        self._metrics = metrics
        self._refusals = refusals
        self.address = address
        self.peer_id: str | None = None
        self.logged_in_at: float | None = None
        self._partial_bytes = 0
        self._completed = False
        rate = float(limits.max_calls_per_second)
        self._calls = TokenBucket(rate, 2.0 * rate, clock)
        self._login_timer: IDelayedCall | None = None
        self._tls_refusal: str | None = None
        self.violated: str | None = None
        self._closed_waiters: list[Callable[[], None]] = []

    # Identity and logging

    def describe(self) -> str:
        """The peer, for log lines: its id once known, else its address."""
        if self.peer_id is not None:
            return self.peer_id
        host = getattr(self.address, "host", None)
        port = getattr(self.address, "port", None)
        return "{}:{}".format(host, port) if host is not None else "an unidentified peer"

    def note_refusal(self, direction: str, detail: str) -> bool:
        """Count a refusal of this connection's peer in the node's
        :class:`RefusalLog`; whether to log it in full."""
        if self._refusals is None:
            return True
        peer = self.describe()
        # An incoming peer's port changes on every attempt: know it by host.
        host = getattr(self.address, "host", None)
        key = (direction, host if direction == "from" and host is not None else peer)
        return self._refusals.refused(key, direction=direction, peer=peer, detail=detail)

    def tls_refused(self, reason: str) -> None:
        """Called by the TLS verify callback when the peer's certificate is
        refused (the reason is logged when the connection closes)."""
        self._tls_refusal = reason

    def logged_in(self, peer_id: str) -> None:
        """The peer proved who it is: no more login deadline."""
        self.peer_id = peer_id
        self.logged_in_at = self.clock.seconds()
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    # Connection life

    def connectionMade(self) -> None:
        super().connectionMade()
        _no_delay(self.transport)
        self._tokens_at = self.clock.seconds()
        self._login_timer = self.clock.callLater(self.limits.login_timeout_seconds, self._login_timed_out)

    def _login_timed_out(self) -> None:
        self._login_timer = None
        self.violation(
            "login_timeout",
            "not logged in within {} s".format(self.limits.login_timeout_seconds),
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None
        if self.logged_in_at is None and self.violated is None:
            tls = tls_error_text(reason)
            if self._tls_refusal is not None or tls is not None:
                detail = self._tls_refusal or tls or ""
                self._metrics.refused.labels("tls").inc()
                direction = "to" if self.isClient else "from"
                if self.note_refusal(direction, detail):
                    self._log.warn(
                        "mesh connection {direction} {peer} refused in the TLS handshake: {detail}",
                        direction=direction,
                        peer=self.describe(),
                        detail=detail,
                    )
        super().connectionLost(reason)
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter()

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the connection is closed (at once if it is)."""
        if self.disconnected:
            callback()
        else:
            self._closed_waiters.append(callback)

    def violation(self, reason: str, detail: str) -> None:
        """The peer broke the rules: log, count and drop the connection."""
        if self.violated is not None:
            return
        self.violated = reason
        self._metrics.disconnects.labels(reason).inc()
        self._log.warn(
            "mesh peer {peer} disconnected ({reason}): {detail}",
            peer=self.describe(),
            reason=reason,
            detail=detail,
        )
        transport = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                transport.loseConnection()

    # Incoming data

    def dataReceived(self, chunk: bytes) -> None:
        if self.violated is not None:
            return
        self._completed = False
        try:
            super().dataReceived(chunk)
        except Exception as e:
            # Banana and PB raise out of dataReceived for input they cannot
            # parse (a bad prefix, an unknown answer id, a type jelly refuses
            # in an answer): the stream cannot be trusted any more.
            self.violation("protocol", "{}: {}".format(type(e).__name__, e))
            return
        if self.violated is not None:
            return
        if not self.listStack and not self.buffer:
            self._partial_bytes = 0
            return
        # Part of a message is buffered. Bound what one message may take:
        # its bytes are counted to within one read (a message that ended in
        # this read counts the whole read against the next one).
        if self._completed:
            self._partial_bytes = len(chunk)
        else:
            self._partial_bytes += len(chunk)
        if self._partial_bytes > self.limits.max_message_bytes:
            self.violation(
                "oversized",
                "a message larger than {} bytes".format(self.limits.max_message_bytes),
            )

    def callExpressionReceived(self, obj: Any) -> None:
        self._completed = True
        super().callExpressionReceived(obj)

    def unserialize(self, sexp: Any, perspective: Any = None) -> Any:
        try:
            return super().unserialize(sexp, perspective)
        except jelly.InsecureJelly as e:
            self.violation("insecure_type", "refused type: {}".format(e))
            raise Refused("type not accepted") from None
        except BadMessage as e:
            self.violation("bad_message", str(e))
            raise Refused("bad message") from None
        except Exception as e:
            self.violation("bad_message", "{}: {}".format(type(e).__name__, e))
            raise Refused("bad message") from None

    def _take_call_token(self) -> bool:
        if self._calls.take():
            return True
        self.violation("call_rate", "more than {} calls per second".format(self.limits.max_calls_per_second))
        return False

    def proto_message(self, *args: Any) -> None:
        if self.violated is None and self._take_call_token():
            super().proto_message(*args)

    def proto_cachemessage(self, *args: Any) -> None:
        # The mesh has no cacheables: a cached-object message is a protocol error.
        self.violation("protocol", "cachemessage is not used by the mesh")

    def proto_didNotUnderstand(self, command: Any) -> None:
        self.violation("protocol", "the peer did not understand {!r}".format(command))

    # Outgoing calls

    def pending_calls(self) -> int:
        """Calls sent on this connection still awaiting an answer."""
        return len(self.waitingForAnswers or ())


class MeshServerFactory(pb.PBServerFactory):
    """Builds a :class:`MeshBroker` per incoming connection, and keeps them
    so a stopping node can close them all and wait."""

    #: No "Starting factory <... at 0x...>" line (the start-up summary lists listeners).
    noisy = False

    def __init__(
        self,
        root: Any,
        *,
        limits: Limits,
        clock: IReactorTime,
        metrics: MeshMetrics,
        refusals: RefusalLog | None = None,
    ) -> None:
        super().__init__(root, unsafeTracebacks=False, security=limits.security)
        self.limits = limits
        self.clock = clock
        self.metrics = metrics
        self.refusals = refusals
        self.brokers: set[MeshBroker] = set()

    def buildProtocol(self, addr: IAddress | None) -> MeshBroker:
        proto = MeshBroker(
            False,
            limits=self.limits,
            clock=self.clock,
            metrics=self.metrics,
            address=addr,
            refusals=self.refusals,
        )
        proto.factory = self  # type: ignore[assignment]
        proto.setNameForLocal("root", self.root.rootObject(proto))
        self.brokers.add(proto)
        proto.when_closed(lambda: self.brokers.discard(proto))
        return proto


class MeshClientFactory(pb.PBClientFactory):
    """Builds the :class:`MeshBroker` of an outgoing link; ``on_ready`` is
    called with it once PB is negotiated (TLS is up by then), ``on_closed``
    once its connection is closed."""

    #: No "Starting factory" / "Stopping factory" pair on every reconnect.
    noisy = False

    def __init__(
        self,
        *,
        limits: Limits,
        clock: IReactorTime,
        metrics: MeshMetrics,
        on_ready: Callable[[MeshBroker], None],
        on_closed: Callable[[MeshBroker], None] = lambda broker: None,
        refusals: RefusalLog | None = None,
    ) -> None:
        super().__init__(unsafeTracebacks=False, security=limits.security)
        self.limits = limits
        self.clock = clock
        self.metrics = metrics
        self.refusals = refusals
        self._on_ready = on_ready
        self._on_closed = on_closed

    def buildProtocol(self, addr: IAddress | None) -> MeshBroker:
        proto = MeshBroker(
            True,
            limits=self.limits,
            clock=self.clock,
            metrics=self.metrics,
            address=addr,
            refusals=self.refusals,
        )
        proto.factory = self  # type: ignore[assignment]
        proto.when_closed(lambda: self._on_closed(proto))
        return proto

    def clientConnectionMade(self, broker: MeshBroker) -> None:
        super().clientConnectionMade(broker)
        self._on_ready(broker)
