# -*- test-case-name: tests.unit.live.test_protocol -*-
"""The WebSocket front end of live threads (autobahn), mounted at ``/live``.

autobahn does the handshake, parses and checks incoming frames (UTF-8,
size limits, control frames, the closing handshake). Outgoing events do
not go through autobahn's per-connection send path: each event is framed
once (autobahn's ``prepareMessage``) and the same bytes are handed to every
subscriber's :class:`~fastedge.live.wire.Writer`, which sends them
straight to the socket.
"""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from typing import Any

import txaio
from autobahn.twisted.util import peer2str
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PERMESSAGE_COMPRESSION_EXTENSION, PerMessageCompressOffer
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol, _is_same_origin, _url_to_origin
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from ..http.jsonbody import raw_error_response
from ..tokenbucket import TokenBucket
from . import messages
from .frontend import Live, LiveConnection
from .hub import Joined, Prepared, Subscription
from .messages import (
    CLOSE_GOING_AWAY,
    CLOSE_IDLE,
    CLOSE_RATE_LIMITED,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    Ping,
    RequestError,
    Subscribe,
    Unsubscribe,
    Violation,
    channel_name,
    parse_client_message,
)
from .wire import Writer

#: An empty ping frame (FIN, opcode 9): the same two bytes for everyone.
PING_FRAME = b"\x89\x00"

#: What autobahn keeps from the opening handshake and never reads again.
_HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_response_data",
    "http_headers",
    "http_request_params",
    "http_status_line",
    "http_request_uri",
    "http_request_path",
    "http_request_host",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
    "_wskey",
)


class _PerConnection:
    """A connection's attribute made on its first use, not at connect.

    Most ``/live`` connections never send a frame after their subscribe
    (or none at all): what only a frame needs (the rate limiters, the
    UTF-8 validator) or only an observer asks for (autobahn's
    ``is_open``/``is_closed`` Deferreds) costs nothing until then. Each is
    one to four objects an idle connection would otherwise hold for the
    garbage collector to walk, made and walked again on every connect of a
    burst. A non-data descriptor: once made, the value sits in the
    instance's ``__dict__`` and is found there first; assigning replaces it.

    :param make: makes the value for a protocol.
    """

    def __init__(self, make: Any) -> None:
        self._make = make
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, protocol: Any, owner: type | None = None) -> Any:
        if protocol is None:
            return self
        value = self._make(protocol)
        protocol.__dict__[self._name] = value
        return value


def _is_open(protocol: LiveServerProtocol) -> Any:
    # Asked for after take_over opened the connection: already fired, as
    # autobahn's would be.
    future = txaio.create_future()  # type: ignore[attr-defined]
    if protocol._open_fired:
        txaio.resolve(future, None)  # type: ignore[attr-defined]
    return future


#: The JSON error code of an autobahn handshake refusal, by status.
_HANDSHAKE_REFUSALS = {503: "too_many_connections"}


class LiveServerProtocol(WebSocketServerProtocol):
    """One WebSocket client of ``/live``."""

    _log = Logger()
    transport_name = "websocket"
    factory: LiveWebSocketFactory

    _open = False
    _heard = True
    #: Closed for flooding frames: what the client sends is no longer read.
    _deaf = False
    _writer: Writer | None = None
    _conn: LiveConnection | None = None
    #: Frames of the client message being received.
    _fragments = 0
    #: This session's access log line (``None``: the log is off), counting
    #: the messages and bytes sent; written when the connection ends.
    access: Any = None
    _opened_once = False
    #: Set by ``LiveResource`` before it connects a protocol to the
    #: transport of an upgrade twisted.web parsed (:meth:`take_over`).
    handed_over = False
    #: The ``101`` of a handed-over upgrade, sent with the greeting.
    _switching: bytes | None = None

    # What autobahn's ``WebSocketProtocol.__init__`` gives every instance,
    # as class defaults or made on first use (:class:`_PerConnection`):
    # its event names (one tuple, never changed), the results of events
    # fired to listeners (made by :meth:`on`; nothing here listens), its
    # transport details (only its client side reads them), its open and
    # closed Deferreds (autobahn resolves is_closed by reading it when the
    # connection closes, which makes it then). A connection is born empty.
    _valid_events = ("message",)  # type: ignore[assignment]
    _results: dict[str, Any] | None = None  # type: ignore[assignment]
    _transport_details = None  # type: ignore[assignment]
    is_open = _PerConnection(_is_open)
    is_closed = _PerConnection(lambda protocol: txaio.create_future())  # type: ignore[attr-defined]
    #: :meth:`take_over` opened the connection before anyone asked for
    #: ``is_open``.
    _open_fired = False
    #: The client's address as autobahn names it (``tcp4:127.0.0.1:52914``),
    #: for log lines; most connections never log one.
    peer = _PerConnection(lambda protocol: peer2str(protocol.transport))
    #: autobahn's incoming UTF-8 check, made for the first text message.
    utf8validator = _PerConnection(lambda protocol: Utf8Validator())
    #: The rate limits of what the client sends, made for its first
    #: message and frame: a full bucket made later is the same as one
    #: made at connect and never used (it starts full and stays full).
    _messages = _PerConnection(
        lambda protocol: protocol._bucket(protocol.factory.live.cfg.client_messages_per_minute, 60.0)
    )
    _frames = _PerConnection(lambda protocol: protocol._bucket(protocol.factory.live.cfg.client_frames_per_second, 1.0))

    def __init__(self) -> None:
        # Not autobahn's WebSocketProtocol.__init__: see the class defaults above.
        pass

    def _onOpen(self) -> None:
        """autobahn's, less reading the TLS channel binding and peer
        certificate into transport details that :meth:`connectionMade`
        never makes (nothing here reads them)."""
        self.onOpen()

    def _bucket(self, events: float, per_seconds: float) -> TokenBucket:
        """A token bucket of ``events`` per ``per_seconds`` (bursts of ``events``)."""
        live = self.factory.live
        return TokenBucket(events / per_seconds, events, live.clock)

    def on(self, event: str, handler: Any) -> None:
        """autobahn's listeners (unused by the node), with the dict of their
        results that its ``__init__`` would have made."""
        if self._results is None:
            self._results = {}
        super().on(event, handler)

    def onMessageEnd(self) -> None:
        """autobahn's, less firing the ``message`` event when nothing listens
        (it makes a Deferred, a closure and a callback per message)."""
        if self._listeners is not None:
            super().onMessageEnd()
            return
        if not self.failedByMe:
            self._onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None  # type: ignore[assignment]

    # Handshake and lifecycle

    def connectionMade(self) -> None:
        """autobahn's ``connectionMade``, less what a ``/live`` connection
        never reads: its transport details (the peer, host and TLS channel
        binding, read from the socket) and a debug line whose arguments are
        formatted whether or not debug logging is on. ``peer`` stays, for
        the log lines that name the client, made when one first does
        (:attr:`peer`).

        A handed-over upgrade's connection already has ``TCP_NODELAY``
        (twisted.web's channel set it) and needs no opening-handshake
        timer: :meth:`take_over` finishes the handshake before this call's
        caller returns.
        """
        transport: Any = self.transport
        if self.handed_over:
            self.openHandshakeTimeout = 0
        else:
            try:
                transport.setTcpNoDelay(self.tcpNoDelay)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - as autobahn: not every transport is TCP
                pass
        self._connectionMade()

    # autobahn's ``WebSocketProtocol._connectionMade`` sets each of these on
    # every connection; here they are class defaults, and a connection holds
    # only what it changes (a smaller instance, and less work per connect).
    _perMessageCompress = None
    trackedTimings = None  # type: ignore[assignment]
    wasMaxFramePayloadSizeExceeded = False
    wasMaxMessagePayloadSizeExceeded = False
    closedByMe = False
    failedByMe = False
    droppedByMe = False
    wasClean = False
    wasNotCleanReason = None  # type: ignore[assignment]
    wasServerConnectionDropTimeout = False
    wasOpenHandshakeTimeout = False
    wasCloseHandshakeTimeout = False
    wasServingFlashSocketPolicyFile = False
    localCloseCode = None
    localCloseReason = None
    remoteCloseCode = None
    remoteCloseReason = None
    openHandshakeTimeoutCall = None
    closeHandshakeTimeoutCall = None
    autoPingTimeoutCall = None
    autoPingPending = None
    autoPingPendingCall = None
    autoPingPendingSeq = 0
    autoPingPendingSent = None

    def _connectionMade(self) -> None:
        """autobahn's server ``_connectionMade``: the state a connection
        starts in (the rest are the class defaults above), its opening
        handshake timer, the factory's count. Not autobahn's own, which
        copies the options (the class holds them, :func:`configured_protocol`),
        makes a traffic counter (all connections share the factory's) and
        formats two debug lines whether or not debug logging is on."""
        factory = self.factory
        for name in self.CONFIG_ATTRS:
            # Options that are functions, copied as autobahn copies them.
            if not hasattr(self, name):
                setattr(self, name, getattr(factory, name))
        self.trafficStats = factory.traffic
        self.state = WebSocketProtocol.STATE_CONNECTING
        self.send_state = WebSocketProtocol.SEND_STATE_GROUND
        self.data = b""
        self.send_queue = deque()
        self.triggered = False
        if self.openHandshakeTimeout > 0:
            self.openHandshakeTimeoutCall = factory._batched_timer.call_later(
                self.openHandshakeTimeout, self.onOpenHandshakeTimeout
            )
        factory.countConnections += 1

    def onConnect(self, request: ConnectionRequest) -> Any:
        """Refuse the handshake (503) past ``live.max_connections``; speak
        ``fastedge.live.1`` when the client offers it."""
        return self._admit(request.protocols)

    def _admit(self, offered: list[str]) -> str | None:
        if not self.factory.live.admit(self.transport_name):
            self.factory.live.closing(messages.CLOSE_TRY_AGAIN_LATER)
            raise ConnectionDeny(
                503,
                "this node is at its live connection limit; try another or retry later",
            )
        if messages.PROTOCOL in offered:
            return messages.PROTOCOL
        return None

    def take_over(self, request: Any) -> None:
        """Finish the opening handshake of ``request``, an upgrade twisted.web
        has parsed (and ``LiveResource`` checked: HTTP/1.1, GET, version 13,
        one Host, ``Connection: upgrade``, one well-formed key), on this
        protocol, already connected to the request's transport.

        autobahn would be handed the request rebuilt as bytes and parse it
        again; this makes the rest of autobahn's checks on the parsed
        headers, with the same refusals (through :meth:`failHandshake`),
        then answers 101 exactly as autobahn does and opens the connection.
        """
        raw = request.requestHeaders.getRawHeaders
        if b"#" in request.uri:
            return self.failHandshake("HTTP requested resource contains a fragment identifier")
        host = raw(b"host")[0].decode("latin-1").strip()
        if ":" in host and not host.endswith("]"):
            port = host.rsplit(":", 1)[1].strip()
            if not port.isdigit():
                return self.failHandshake('invalid port "{}" in HTTP Host header "{}"'.format(port, host))
        # Repeated headers are one comma-separated list, as autobahn joins them.
        offered = raw(b"sec-websocket-protocol")
        protocols = [p.strip() for p in b",".join(offered).decode("latin-1").split(",")] if offered else []
        if len(set(protocols)) != len(protocols):
            return self.failHandshake("duplicate protocol specified in HTTP Sec-WebSocket-Protocol header")
        self.websocket_protocols = protocols
        origins = raw(b"origin") or []
        if len(origins) > 1:
            return self.failHandshake("HTTP Origin header appears more than once in opening handshake request")
        self.websocket_origin = origins[0].decode("latin-1").strip() if origins else ""
        if origins:
            try:
                origin = _url_to_origin(self.websocket_origin)
            except ValueError as e:
                return self.failHandshake("HTTP Origin header invalid: {}".format(e))
            factory = self.factory
            allowed = (origin == "null" and factory.allowNullOrigin) or _is_same_origin(
                origin,
                "https" if factory.isSecure else "http",
                factory.externalPort or factory.port,
                self.allowedOriginsPatterns,  # type: ignore[attr-defined]
            )
            if not allowed:
                return self.failHandshake(
                    "WebSocket connection denied: origin '{}' not allowed".format(self.websocket_origin)
                )
        extensions = raw(b"sec-websocket-extensions") or []
        if len(extensions) > 1:
            return self.failHandshake(
                "HTTP Sec-WebSocket-Extensions header appears more than once in opening handshake request"
            )
        offers = []
        for extension, params in self._parseExtensionsHeader(extensions[0].decode("latin-1")) if extensions else ():
            pmce = PERMESSAGE_COMPRESSION_EXTENSION.get(extension)
            if pmce is not None:
                try:
                    offers.append(pmce["Offer"].parse(params))  # type: ignore[attr-defined]
                except Exception as e:
                    return self.failHandshake(str(e))
        key = raw(b"sec-websocket-key")[0].decode("ascii").strip()
        self._wskey = key
        self.websocket_version = 13
        self.websocket_extensions = []
        try:
            protocol = self._admit(protocols)
        except ConnectionDeny as deny:
            return self.failHandshake(deny.reason, deny.code)
        if offers:
            self.perMessageCompressionAccept(offers)
        self.websocket_protocol_in_use = protocol
        self.websocket_extensions_in_use = ()  # type: ignore[assignment]
        # Sent with the greeting, in one write straight to the socket
        # (:meth:`onOpen`): not through autobahn's sendData, which formats
        # debug log arguments whether or not debug logging is on, nor
        # through the transport's buffer, which would cost a write on the
        # reactor's next turn.
        self._switching = self.factory.switching(protocol, key)
        self.state = WebSocketProtocol.STATE_OPEN
        timer = self.openHandshakeTimeoutCall
        if timer is not None:
            timer.cancel()
            self.openHandshakeTimeoutCall = None
        self.inside_message = False
        self.current_frame = None  # type: ignore[assignment]
        self._onOpen()
        if "is_open" in self.__dict__:
            txaio.resolve(self.is_open, None)  # type: ignore[attr-defined]
        else:
            self._open_fired = True
        rest = request.content.read() if request.content is not None else b""
        if rest:
            self.data = rest
            self.consumeData()

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """autobahn's handshake refusals (its own and :meth:`onConnect`'s 503)
        as the node's JSON errors, instead of a bare status line whose
        reason phrase carries the message."""
        headers = tuple((str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in responseHeaders or ())
        if code == 503:
            headers += ((b"retry-after", b"1"),)
        api_code = _HANDSHAKE_REFUSALS.get(code, "bad_websocket_handshake")
        self.sendData(raw_error_response(code, RESPONSES.get(code, b"Error"), api_code, reason, headers))

    def perMessageCompressionAccept(self, offers: list[PerMessageCompressOffer]) -> None:
        """Decline every compression offer (browsers offer ``permessage-deflate``
        on every handshake): the answer names no extension.

        Each event is framed once and the same bytes go to every subscriber;
        compression would mean a deflate per event per connection and a zlib
        context (~tens of KB) per connection. Live messages are small JSON.

        :returns: ``None``, autobahn's "no offer accepted".
        """
        self.factory.live.compression_declined()
        return None

    def onOpen(self) -> None:
        """Set up the bounded writer, shed handshake state, greet."""
        live = self.factory.live
        transport: Any = self.transport
        # twisted.web's HTTPChannel registered itself as the producer of the
        # transport it no longer owns; our writer takes its place (and the
        # orphaned channel and request can be collected).
        # (A TLS transport has no ``producer`` attribute; unregistering is
        # harmless there when nothing is registered.)
        if getattr(transport, "producer", True) is not None:
            transport.unregisterProducer()
        self._writer = Writer(transport, live.cfg.max_buffered_bytes, self._overflowed)
        transport.registerProducer(self._writer, True)
        # An idle connection should cost as little memory as possible: drop
        # the handshake's leftovers, share one traffic counter per factory,
        # and replace autobahn's send queue (a 760-byte deque, used only by
        # sync/chopped sends, which we never make) with an empty tuple, so
        # an unexpected use fails loudly instead of sharing state.
        state = self.__dict__
        for name in _HANDSHAKE_LEFTOVERS:
            if name in state:
                state[name] = None
        self.trafficStats = self.factory.traffic
        if not self.send_queue:
            self.send_queue = ()  # type: ignore[assignment]
        self._conn = LiveConnection(live, self)
        self._open = True
        self._opened_once = True
        live.opened(self)
        head = self._switching
        if head is None:
            n = self._writer.write(self.factory.hello)
        else:
            self._switching = None
            n = max(0, self._writer.write(head + self.factory.hello) - len(head))
        if self.access is not None:
            self.access.sent(n)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Leave every channel; drop any partial message."""
        self._open = False
        self._drop_partial_message()
        if self._conn is not None:
            self._conn.close()
            self.factory.live.closed(self)
            self._conn = None
        access = self.access
        if access is not None:
            # 101 for a session that was opened; a refused handshake (503,
            # past live.max_connections) or one that never completed: 400.
            access.end(101 if self._opened_once else 400)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Cancel the closing-handshake timer: autobahn cancels its other
        timers when the connection is lost, not that one, which would keep
        a client that vanished mid-close in memory until it fires."""
        timer = self.closeHandshakeTimeoutCall
        if timer is not None:
            if timer.active():
                timer.cancel()
            self.closeHandshakeTimeoutCall = None
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        """Anything from the client (a pong too) proves it alive."""
        if self._deaf:
            return
        self._heard = True
        # What autobahn's dataReceived does, less its debug line, whose
        # arguments (a coloured function name) it formats on every read
        # whether or not debug logging is on.
        self._dataReceived(data)

    # Frames, through autobahn's frame-level hooks: every frame a client
    # sends is counted (client_frames_per_second), fragments per message
    # are bounded (max_fragments_per_message), and nothing of a message is
    # kept once the connection is closing. Empty frames cost no bytes, so
    # the message size limit alone never stops them.

    def onMessageBegin(self, isBinary: bool) -> None:
        """A client message starts: count its fragments from zero."""
        self._fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        """One data frame (the first of a message, or a continuation)."""
        super().onMessageFrameBegin(length)
        if not self._open:
            return
        self._fragments += 1
        limit = self.factory.live.cfg.max_fragments_per_message
        if self._fragments > limit:
            self._flooded(CLOSE_TOO_BIG, "a message in more than {} frames".format(limit))
        else:
            self._take_frame()

    def onMessageFrame(self, payload: list[bytes]) -> None:  # type: ignore[override]
        """Keep a frame's payload for its message, unless we are closing."""
        if self._open:
            super().onMessageFrame(payload)  # type: ignore[arg-type]

    def onPing(self, payload: bytes) -> None:
        """Answer a ping through the bounded writer, like everything we send:
        a client that pings and never reads its pongs fills its own queue
        and is closed with 4008 (slow consumer)."""
        if self._open and self._take_frame():
            self._writer.write(b"\x8a" + bytes((len(payload),)) + payload)  # type: ignore[union-attr]

    def onPong(self, payload: bytes) -> None:
        """A pong (asked for or not) is a frame like any other."""
        if self._open:
            self._take_frame()

    def _take_frame(self) -> bool:
        if self._frames.take():
            return True
        self._flooded(
            CLOSE_RATE_LIMITED,
            "more than {} frames per second; slow down".format(self.factory.live.cfg.client_frames_per_second),
        )
        return False

    def _flooded(self, code: int, reason: str) -> None:
        """Close a client that floods frames, and stop reading from it: the
        close frame goes out, and the closing handshake timeout drops it."""
        self.factory.live.frames_refused(code)
        self._close(code, reason)
        self._deaf = True
        self._drop_partial_message()
        # Not reading pushes back on the sender (its socket fills) instead
        # of reading and discarding what it sends until the timeout; what
        # was already read is discarded by dataReceived. (A TLS or counting
        # wrapper passes this on to the socket.)
        pause = getattr(self.transport, "pauseProducing", None)
        if pause is not None:
            pause()

    def _drop_partial_message(self) -> None:
        # What autobahn holds of a message still being received; reset to an
        # empty list (not None) in case its frame processing is mid-message.
        if self.__dict__.get("message_data"):
            self.message_data = []

    # Incoming messages

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """One client message: check, rate-limit, dispatch."""
        if not self._open or self._conn is None:
            return
        if isBinary:
            self._close(CLOSE_UNSUPPORTED_DATA, "binary frames are not accepted; send JSON text")
            return
        if not self._messages.take():
            self._close(CLOSE_RATE_LIMITED, "too many messages; slow down")
            return
        try:
            msg = parse_client_message(payload)
        except Violation as v:
            self._close(v.code, v.reason)
            return
        except RequestError as e:
            self.send(messages.error(e.code, e.message, e.ref))
            return
        if isinstance(msg, Subscribe):
            d = self._conn.subscribe(msg, self._answer)
            d.addErrback(self._failed)
        elif isinstance(msg, Unsubscribe):
            try:
                name = self._conn.unsubscribe(msg.channel, msg.ref)
            except RequestError as e:
                self.send(messages.error(e.code, e.message, e.ref))
            else:
                self.send(messages.unsubscribed(name, msg.ref))
        elif isinstance(msg, Ping):
            self.send(messages.pong(msg.ref))

    def _answer(self, joined: Joined, name: str, ref: Any) -> None:
        access = self.access
        if access is not None and self._conn is not None:
            # The tenants this session served, for its access log line.
            access.tenants.update(key[0] for key in self._conn.subs)
        self.send(messages.subscribed(name, joined.epoch, joined.seq, joined.reload, len(joined.replay), ref))
        sent = total = 0
        for prepared in joined.replay:
            n = self.push(prepared)
            if n:
                sent += 1
                total += n
        if sent:
            self.factory.live.hub.count_delivered(sent, total)

    def _failed(self, failure: Failure) -> None:
        if failure.check(RequestError) and self._open:
            e = failure.value
            self.send(messages.error(e.code, e.message, e.ref))
        elif not failure.check(RequestError):
            self._log.failure("live subscribe answer failed", failure)

    # Outgoing

    def push(self, prepared: Prepared) -> int:
        """Send one shared event frame (see :class:`~fastedge.live.hub.Outlet`)."""
        if not self._open:
            return 0
        frame = prepared.ws
        if frame is None:
            frame = prepared.ws = self.factory.frame(prepared.payload)
        n = self._writer.write(frame)  # type: ignore[union-attr]
        if self.access is not None:
            self.access.sent(n)
        return n

    def send(self, payload: bytes) -> None:
        """Send a message of this connection only."""
        if self._open:
            n = self._writer.write(self.factory.frame(payload))  # type: ignore[union-attr]
            if self.access is not None:
                self.access.sent(n)

    def keepalive(self) -> None:
        """Ping; drop a client that did not answer the previous ping."""
        if not self._open:
            return
        if not self._heard:
            self._close(CLOSE_IDLE, "no answer to keep-alive pings")
            return
        self._heard = False
        self._writer.write(PING_FRAME)  # type: ignore[union-attr]

    def shutdown(self) -> None:
        """The node is stopping."""
        if self._open:
            self._close(CLOSE_GOING_AWAY, "server shutting down; reconnect with since")

    def revoke(self, sub: Subscription, error: RequestError) -> bool:
        """End one subscription: an ``error`` naming its channel; the
        connection and its other subscriptions stay."""
        if self._conn is None or not self._conn.drop(sub):
            return False
        self.send(messages.revoked(channel_name(*sub.channel), error.code, error.message))
        return True

    def _overflowed(self) -> None:
        # Nothing more is queued; the close frame goes after what is queued,
        # and the closing handshake timeout drops a client that never reads.
        live = self.factory.live
        live.slow_consumer(self.transport_name)
        self._log.info(
            "live: slow consumer {peer} disconnected ({limit} bytes queued)",
            peer=self.peer,
            limit=live.cfg.max_buffered_bytes,
        )
        self._close(CLOSE_SLOW_CONSUMER, "slow consumer: too far behind; reconnect with since")

    def _close(self, code: int, reason: str) -> None:
        """Stop sending events and start the closing handshake with ``code``."""
        if not self._open:
            return
        self._open = False
        self.factory.live.closing(code)
        if code not in (CLOSE_SLOW_CONSUMER, CLOSE_GOING_AWAY):
            self._log.info(
                "live: closing {peer} with {code}: {reason}",
                peer=self.peer,
                code=code,
                reason=reason,
            )
        # sendClose() only takes 1000 and 3000-4999; the standard codes we
        # use (1001, 1003) are sent with the frame-level call.
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)


class _ClockTimer:
    """What autobahn wants of a timer (``call_later``), on a given clock."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def call_later(self, delay: float, fn: Any, *args: Any, **kwargs: Any) -> IDelayedCall:
        """Call ``fn`` after ``delay`` seconds on the clock."""
        return self._clock.callLater(delay, fn, *args, **kwargs)


class LiveWebSocketFactory(WebSocketServerFactory):
    """Builds :class:`LiveServerProtocol` instances sharing one :class:`Live`.

    autobahn copies ~20 options onto every protocol instance unless the
    class already has them; we give them to a per-factory subclass instead
    (:func:`configured_protocol`), so an idle connection does not carry its
    own copy and a connect does not spend time copying and logging them.
    """

    def __init__(self, live: Live) -> None:
        super().__init__()
        self.live = live
        cfg = live.cfg
        self.setProtocolOptions(
            maxFramePayloadSize=cfg.max_message_bytes,
            maxMessagePayloadSize=cfg.max_message_bytes,
            # Protocol errors get a close frame with a code, not a silent drop.
            failByDrop=False,
            openHandshakeTimeout=cfg.close_timeout_seconds,
            closeHandshakeTimeout=cfg.close_timeout_seconds,
            # Keep-alive is one sweep over all connections (Live.keepalive),
            # not a timer per connection.
            autoPingInterval=0,
            tcpNoDelay=True,
        )
        # autobahn's handshake timeouts go to the node's clock (the reactor,
        # or a test's Clock), not to txaio's global-reactor timer buckets.
        self._batched_timer = _ClockTimer(live.clock)
        self.protocol = configured_protocol(self, LiveServerProtocol)
        #: The greeting, the same frame for every connection.
        self.hello = self.frame(messages.hello(live.node_id, cfg.max_subscriptions))
        #: Traffic of all open connections together (autobahn counts per
        #: connection; one shared counter saves memory and is what we export).
        self.traffic = TrafficStats()
        #: The ``101`` up to the accept value, by subprotocol (the factory's
        #: options are set above, once).
        self._switching_heads: dict[str | None, bytes] = {}

    #: The access log session of the upgrade being handed to autobahn now
    #: (set by ``LiveResource`` around the synchronous handover).
    pending_access: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        """A protocol that carries the access log session of its upgrade."""
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            protocol.access, self.pending_access = self.pending_access, None  # type: ignore[attr-defined]
        return protocol

    def switching(self, protocol: str | None, key: str) -> bytes:
        """The ``101`` answer to a handshake with ``key``, byte for byte
        autobahn's (``succeedHandshake``), no extension accepted."""
        head = self._switching_heads.get(protocol)
        if head is None:
            lines = ["HTTP/1.1 101 Switching Protocols"]
            if self.server:
                lines.append("Server: {}".format(self.server))
            lines += ["Upgrade: WebSocket", "Connection: Upgrade"]
            for name, value in self.headers.items():
                values = [value] if isinstance(value, str) else list(value)
                lines += ["{}: {}".format(name, v) for v in values]
            if protocol is not None:
                lines.append("Sec-WebSocket-Protocol: {}".format(protocol))
            lines.append("Sec-WebSocket-Accept: ")
            head = self._switching_heads[protocol] = "\r\n".join(lines).encode("utf-8")
        accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + WebSocketProtocol._WS_MAGIC).digest())
        return head + accept + b"\r\n\r\n"

    def frame(self, payload: bytes) -> bytes:
        """One unmasked text frame carrying ``payload``."""
        return self.prepareMessage(payload, isBinary=False, doNotCompress=True).payloadHybi


def configured_protocol(factory: WebSocketServerFactory, base: type[WebSocketServerProtocol]) -> type[Any]:
    """A subclass of ``base`` carrying ``factory``'s protocol options as
    class attributes.

    autobahn copies each option (``CONFIG_ATTRS``) from the factory onto
    every protocol instance at connect, unless the protocol already has it,
    and pretty-prints them all into a debug log line (~0.5 ms per connect,
    the largest cost of a handshake in a burst). Options that are data
    (numbers, flags, lists) are shared on the class instead. Options that
    are functions are not: a function stored on a class is a method, called
    with the protocol as an extra first argument (the cause of every
    compression-offering handshake failing). Such an option is either a
    method ``base`` implements itself (its own hook, which wins over the
    factory's value), or is left to autobahn's per-connection copy.
    """
    options: dict[str, Any] = {}
    per_connection: list[str] = []
    for name in base.CONFIG_ATTRS:
        if callable(getattr(base, name, None)):
            continue  # a hook ``base`` implements
        value = getattr(factory, name)
        if callable(value):
            per_connection.append(name)
        else:
            options[name] = value
    options["CONFIG_ATTRS"] = per_connection
    return type("Configured" + base.__name__, (base,), options)
