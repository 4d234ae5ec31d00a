# -*- test-case-name: tests.unit.live.test_protocol,tests.integration.test_http_errors -*-
"""``/live``: the WebSocket endpoint, with the SSE stream at ``/live/events``."""

from __future__ import annotations

import re
from typing import Any

from twisted.protocols.policies import ProtocolWrapper
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..http.jsonbody import JsonNotFound, write_error
from .frontend import Live
from .protocol import LiveWebSocketFactory
from .sse import LiveEventsResource


class LiveResource(Resource):
    """``/live`` upgrades to WebSocket (the handshake parsed once, by
    twisted.web, then handed to autobahn's protocol for the frames);
    ``/live/events`` is the SSE stream. A plain GET of ``/live`` gets a JSON
    426 instead of autobahn's HTML page."""

    def __init__(self, live: Live) -> None:
        super().__init__()
        self.factory = LiveWebSocketFactory(live)
        self.putChild(b"events", LiveEventsResource(live))

    def getChild(self, path: bytes, request: Request) -> IResource:
        """``/live/`` is ``/live``; anything else but ``events`` is a JSON 404."""
        if path == b"":
            return self
        return JsonNotFound()

    def render(self, request: Request) -> int | bytes:
        """Take a WebSocket upgrade over; anything else gets 426."""
        request.route = "/live"  # type: ignore[attr-defined]
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if request.method != b"GET" or upgrade != b"websocket":
            request.setHeader(b"upgrade", b"websocket")
            write_error(
                request,
                426,
                "upgrade_required",
                "connect with WebSocket (or use /live/events for SSE)",
            )
            return NOT_DONE_YET
        if _refuse_upgrade(request):
            return NOT_DONE_YET
        self._hand_over(request)
        return NOT_DONE_YET

    def take_upgrade(self, request: Request) -> bool:
        """Take over an upgrade whose head arrived whole, as twisted.web's
        channel parsed it (:meth:`fastedge.http.site.EdgeSite.upgrade_route`),
        without routing and rendering it as a request: the same checks and
        handover as :meth:`render`.

        :returns: ``False`` (nothing done) for anything :meth:`render`
            answers otherwise (426, or a refusal in JSON): the channel then
            handles the request in full, as any other.
        """
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if request.method != b"GET" or upgrade != b"websocket" or _refusal(request) is not None:
            return False
        request.route = "/live"  # type: ignore[attr-defined]
        self._hand_over(request)
        return True

    def _hand_over(self, request: Request) -> None:
        # The session writes the access log line when it ends (with its
        # duration and messages); the factory hands it to the protocol it
        # builds now.
        live_session = getattr(request, "live_session", None)
        self.factory.pending_access = live_session("ws") if live_session is not None else None
        try:
            protocol = self.factory.buildProtocol(request.getClientAddress())
        finally:
            self.factory.pending_access = None
        protocol.handed_over = True
        _take_transport(request, protocol)
        protocol.take_over(request)
        _let_go(request)


def _let_go(request: Request) -> None:
    """Drop the references between a handed-over ``request`` and its
    channel, so both are freed as soon as this call returns.

    The request never finishes (the live session writes its access log
    line), so nothing would break their cycles (``channel.requests``,
    ``request.channel``, the ``notifyFinish`` Deferreds holding the
    request's own methods): each upgrade would leave ~30 objects for the
    cyclic collector, and in a burst of connects its full collections were
    a fifth of the node's CPU time.
    """
    channel: Any = request.channel
    if channel is not None:
        requests = getattr(channel, "requests", None)
        if requests is not None and request in requests:
            requests.remove(request)
    request.channel = None  # type: ignore[assignment]
    request.notifications = []


def _take_transport(request: Request, protocol: Any) -> None:
    """Move ``request``'s connection from twisted.web's channel to
    ``protocol`` (as autobahn's ``WebSocketResource`` does), and let it read."""
    transport: Any
    transport, request.channel.transport = request.channel.transport, None
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(transport.protocol, ProtocolWrapper):
        # TLS: the wrapper is the transport's protocol.
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)
    # The channel paused the transport while it served the request; no
    # other request follows this one.
    if isinstance(transport, ProtocolWrapper) and transport.transport is not None:
        # Plain TCP under the listener's counter: the socket's transport,
        # without a failed lookup through the wrapper's __getattr__.
        below: Any = transport.transport
        below.resumeProducing()
        return
    network = getattr(transport, "_networkProducer", None)
    if network is not None:
        network.resumeProducing()
    elif hasattr(transport, "resumeProducing"):
        transport.resumeProducing()


def _refuse_upgrade(request: Request) -> bool:
    """Refuse, in JSON, a WebSocket upgrade that autobahn would refuse with
    an empty response or accept against RFC 6455 (:func:`_refusal`).

    :returns: whether ``request`` was answered.
    """
    refusal = _refusal(request)
    if refusal is None:
        return False
    status, code, message, headers = refusal
    for name, value in headers:
        request.setHeader(name, value)
    write_error(request, status, code, message)
    return True


def _refusal(request: Request) -> tuple[int, str, str, tuple[tuple[bytes, bytes], ...]] | None:
    """Why a WebSocket upgrade is refused: one over anything but HTTP/1.1
    (400), of a version other than 13 (426, naming 13), or without the
    Host, ``Connection: upgrade`` and key RFC 6455 section 4.1 requires
    (400).

    :returns: ``(status, code, message, headers)``, or ``None`` to accept.
    """
    if request.clientproto != b"HTTP/1.1":
        return 400, "websocket_needs_http11", "a WebSocket upgrade needs HTTP/1.1", ((b"connection", b"close"),)
    versions = request.requestHeaders.getRawHeaders(b"sec-websocket-version") or []
    if versions != [b"13"]:
        return (
            426,
            "unsupported_websocket_version",
            "only WebSocket version 13 (RFC 6455) is spoken here",
            ((b"sec-websocket-version", b"13"),),
        )
    headers = request.requestHeaders
    connection = b",".join(headers.getRawHeaders(b"connection") or [])
    keys = headers.getRawHeaders(b"sec-websocket-key") or []
    if (
        len(headers.getRawHeaders(b"host") or []) != 1
        or b"upgrade" not in {token.strip().lower() for token in connection.split(b",")}
        or len(keys) != 1
        or _KEY.fullmatch(keys[0]) is None
    ):
        return (
            400,
            "bad_websocket_handshake",
            "a WebSocket upgrade needs Host, Connection: upgrade and one Sec-WebSocket-Key (16 bytes, base64)",
            (),
        )
    return None


#: A Sec-WebSocket-Key: 16 bytes in base64 (RFC 6455 section 4.1).
_KEY = re.compile(rb"[A-Za-z0-9+/]{22}==")
