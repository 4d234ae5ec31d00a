# -*- test-case-name: tests.integration.test_http_errors -*-
"""The HTTP/1.1 and HTTP/2 connections of :class:`~fastedge.http.site.EdgeSite`,
refusing bad requests early and in JSON.

Twisted's HTTP/1.1 parser answers what it cannot parse with a bare
``400 Bad Request`` (no body, no content type) and drops request lines or
header lines over its line limit without a word; its HTTP/2 connection
answers a client that opens more streams than ``SETTINGS_MAX_CONCURRENT_STREAMS``
with a GOAWAY that kills every stream of the connection. Here:

* every refusal before a request reaches a route is a JSON error with a
  code (the API's shape, :func:`fastedge.http.jsonbody.error_body`), and the
  connection closes after it (a request we could not parse leaves the
  connection's framing unknown);
* a request line over the limit is a 414, headers over it a 431, an HTTP
  version other than 1.0 and 1.1 a 505;
* a declared ``Content-Length`` over the route's body limit is answered 413
  at once, before any of the body is read, and the connection closes (on
  HTTP/2 the stream is reset with ``NO_ERROR`` after the 413); a body
  without a declared length is refused the same way once it outgrows it;
* obs-fold (a header continued on an indented line), a second ``Host`` and
  conflicting framing headers are refused (RFC 9112 sections 5.2, 3.2, 6.3);
* a stream opened over the HTTP/2 concurrency limit is reset with
  ``REFUSED_STREAM`` (RFC 9113 section 5.1.2), which clients retry; the
  connection and its other streams go on.

These classes lean on Twisted internals (``HTTPChannel`` parsing hooks,
``_GenericHTTPChannelProtocol``, ``twisted.web._http2``) and on
``h2.connection.H2Connection._receive_headers_frame``: setup.cfg caps
Twisted and h2 below their next major versions so an upgrade is checked
against ``tests.integration.test_http_errors`` first.
"""

from __future__ import annotations

import re
from typing import Any

import h2.connection
import h2.errors
import h2.events
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection
from twisted.web.http import RESPONSES, HTTPChannel, _GenericHTTPChannelProtocol, parse_qs
from twisted.web.iweb import INonQueuedRequestFactory

from .deadlines import RequestDeadlines
from .fasthead import parse_upgrade_head, upgrade_head
from .jsonbody import error_body, raw_error_response

#: Versions of the form ``HTTP/d.d`` that are not 1.0 or 1.1 are a 505;
#: anything else in the version field is a malformed request line.
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_SUPPORTED_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")


def _count(site: Any, code: str) -> None:
    metrics = getattr(site, "metrics", None)
    if metrics is not None:
        metrics.protocol_errors.labels(code).inc()


class EdgeHTTPChannel(RequestDeadlines, HTTPChannel):
    """Twisted's HTTP/1.1 channel, with JSON refusals that close the
    connection (see the module docstring) and the request deadlines of
    :class:`~fastedge.http.deadlines.RequestDeadlines`.

    Its checks run before Twisted's own on each line, with the same limits
    (``MAX_LENGTH`` per line, ``totalHeadersSize``, ``maxHeaders``), so
    Twisted's bare 400 is reached only for what is not checked here (a
    malformed header name or value, a malformed chunked body), and even
    that is answered in JSON (:meth:`_respondToBadRequestAndDisconnect`).
    """

    _log = Logger()

    #: Between a request line and the blank line that ends its headers.
    _in_head = False
    #: A refusal was sent: every byte after it is ignored.
    _refused = False
    _head_bytes = 0
    _header_count = 0
    _hosts = 0
    #: ``content-length`` or ``transfer-encoding`` once one framed the body.
    _framing: bytes | None = None
    #: Nothing was read on this connection yet.
    _fresh = True

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._fresh:
            self._fresh = False
            head = upgrade_head(data)
            if head is not None and self._whole_head(head):
                return
        super().dataReceived(data)

    def _whole_head(self, head: bytes) -> bool:
        """Take a WebSocket upgrade that came whole in the connection's
        first read in one pass (:mod:`fastedge.http.fasthead`), leaving the
        request and the channel as the line parser would, then handle it
        as it would.

        :returns: ``False`` (nothing done) when the line parser must take it.
        """
        parsed = parse_upgrade_head(
            head, max_line=self.MAX_LENGTH, max_total=self.totalHeadersSize, max_headers=self.maxHeaders
        )
        if parsed is None:
            return False
        method, target, version, headers = parsed
        factory: Any = self.requestFactory
        if INonQueuedRequestFactory.providedBy(factory):
            request = factory(self)
        else:
            request = factory(self, len(self.requests))
        self.requests.append(request)
        add = request.requestHeaders.addRawHeader
        for name, value in headers:
            add(name, value)
        self._command, self._path, self._version = method, target, version
        if self._handed_over(request, method, target, version):
            return True
        self.allHeadersReceived()
        # No header framed a body: there is none.
        self.allContentReceived()
        return True

    def _handed_over(self, request: Any, method: bytes, target: bytes, version: bytes) -> bool:
        """Hand a whole upgrade ``request`` to its route's hook, if the site
        has one for ``target`` (:meth:`~fastedge.http.site.EdgeSite.upgrade_route`),
        with what twisted.web's ``requestReceived`` would have set on it.

        :returns: whether the hook took it (else it is handled in full).
        """
        route = getattr(getattr(self, "site", None), "upgrade_route", None)
        take = route(target) if route is not None else None
        if take is None:
            return False
        path, _, query = target.partition(b"?")
        request.method, request.uri, request.path, request.clientproto = method, target, path, version
        request.args = parse_qs(query, 1) if query else {}
        request.handed_over_whole()
        if not take(request):
            return False
        # As allContentReceived does for any request: the connection is no
        # longer idle (and no longer this channel's).
        self.setTimeout(None)
        return True

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        # A refusal may come from inside the chunked decoder (a body over the
        # limit), which still reports the end of what it was given.
        if self._refused:
            return
        super().allContentReceived()

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if not self._in_head:
            self._request_line(line)
            return
        self._head_bytes += len(line)
        if self._head_bytes > self.totalHeadersSize:
            self.refuse(
                431, "headers_too_large", "the request headers are larger than {} bytes".format(self.totalHeadersSize)
            )
            return
        if line[:1] in (b" ", b"\t"):
            # RFC 9112 section 5.2: refuse obs-fold rather than unfold it, as
            # a proxy in front may have read the header differently.
            self.refuse(400, "obs_fold", "header values must not be continued on a new line (obs-fold)")
            return
        super().lineReceived(line)
        if line == b"":
            self._in_head = False

    def _request_line(self, line: bytes) -> None:
        if line:
            parts = line.split(b" ")
            if len(parts) == 3 and _VERSION.fullmatch(parts[2]) and parts[2] not in _SUPPORTED_VERSIONS:
                self.refuse(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are spoken here")
                return
        self._head_bytes = len(line)
        self._header_count = 0
        self._hosts = 0
        self._framing = None
        super().lineReceived(line)
        if line and not self._refused:
            self._in_head = True

    def headerReceived(self, line: bytes) -> bool:
        """Check one complete header line, then let Twisted store it."""
        if self._refused:
            return False
        name, colon, value = line.partition(b":")
        if colon:
            self._header_count += 1
            if self._header_count > self.maxHeaders:
                self.refuse(431, "too_many_headers", "a request may carry at most {} headers".format(self.maxHeaders))
                return False
            if not self._check_header(name.lower(), value.strip(b" \t")):
                return False
        ok: bool = super().headerReceived(line)
        return ok

    def _check_header(self, name: bytes, value: bytes) -> bool:
        if name == b"host":
            self._hosts += 1
            if self._hosts > 1:
                self.refuse(400, "duplicate_host", "a request must carry one Host header")
                return False
        elif name == b"content-length":
            # bytes.isdigit() is ASCII-only, unlike str.isdigit().
            if not value.isdigit() or self._framing is not None:
                self.refuse(
                    400,
                    "bad_content_length",
                    "Content-Length must be one decimal number, without Transfer-Encoding",
                )
                return False
            self._framing = name
        elif name == b"transfer-encoding":
            coding = value.lower()
            if coding == b"identity":
                return True
            if coding != b"chunked":
                self.refuse(501, "unsupported_transfer_encoding", "the only transfer coding accepted is chunked")
                return False
            if self._framing is not None:
                self.refuse(
                    400,
                    "bad_transfer_encoding",
                    "Transfer-Encoding must appear once, without Content-Length",
                )
                return False
            self._framing = name
        return True

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        limit = getattr(request, "body_limit", None)
        if self.length is None or limit is None or self.length <= limit:
            super().allHeadersReceived()
            return
        # A declared body over the limit: answer the request now as if it had
        # no body (EdgeRequest answers 413 for a length it refused) and close,
        # instead of reading and discarding the body first. No 100 Continue.
        request.parseCookies()
        request.gotLength(self.length)
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        self.persistent = False
        self.length = 0

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._in_head:
            self.refuse(
                431, "headers_too_large", "a request header line is longer than {} bytes".format(self.MAX_LENGTH)
            )
        else:
            self.refuse(414, "uri_too_long", "the request line is longer than {} bytes".format(self.MAX_LENGTH))

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own refusals, which do not say why: what we know is where
        # in the request the parser was.
        if self._in_head:
            self.refuse(400, "bad_header", "a request header is malformed")
        elif self.line_mode:
            self.refuse(400, "bad_request_line", "the request line is malformed")
        else:
            self.refuse(400, "bad_body", "the request body is malformed")

    def refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with a JSON error and close the connection
        (once; what the client sends afterwards is ignored)."""
        if self._refused:
            return
        self._refused = True
        _count(getattr(self, "site", None), code)
        transport = self.transport
        assert transport is not None
        self._log.debug(
            "refused a request from {peer}: {status} {code}", peer=transport.getPeer(), status=status, code=code
        )
        transport.write(raw_error_response(status, RESPONSES.get(status, b"Error"), code, message))
        self.loseConnection()


class _RefusingH2State(h2.connection.H2Connection):
    """h2's connection state machine, except that a HEADERS frame opening a
    stream over our ``SETTINGS_MAX_CONCURRENT_STREAMS`` resets that stream
    with ``REFUSED_STREAM`` instead of failing the whole connection.

    The frame is still processed in full (its header block keeps the HPACK
    state in step with the client, its stream ID is used up); only the new
    stream is reset and its events dropped. DATA the client sends on it
    afterwards is answered by h2's handling of reset streams (RST_STREAM,
    window credited back).
    """

    #: Called with the stream ID of each refused stream.
    on_refused: Any = None
    _admitting = False

    @property
    def open_inbound_streams(self) -> int:
        # h2 checks the limit with this count; it is zero while a stream we
        # are about to refuse is being set up.
        if self._admitting:
            return 0
        count: int = super().open_inbound_streams
        return count

    def _receive_headers_frame(self, frame: Any) -> Any:
        stream_id = frame.stream_id
        if stream_id in self.streams or self.open_inbound_streams < self.local_settings.max_concurrent_streams:
            return super()._receive_headers_frame(frame)
        self._admitting = True
        try:
            frames, events = super()._receive_headers_frame(frame)
        finally:
            self._admitting = False
        self.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        if self.on_refused is not None:
            self.on_refused(stream_id)
        return frames, [e for e in events if getattr(e, "stream_id", None) != stream_id]


class EdgeH2Connection(H2Connection):
    """Twisted's HTTP/2 connection over :class:`_RefusingH2State`, answering
    a declared ``content-length`` over the route's body limit at once.

    The concurrency limit is h2's default ``SETTINGS_MAX_CONCURRENT_STREAMS``
    of 100, announced in the server's first SETTINGS frame.
    """

    _log = Logger()

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor)
        state = _RefusingH2State(config=self.conn.config)
        state.on_refused = self._refused
        self.conn = state

    def _refused(self, stream_id: int) -> None:
        _count(getattr(self, "site", None), "refused_stream")
        self._log.debug(
            "refused HTTP/2 stream {stream} from {peer}: over the concurrency limit",
            stream=stream_id,
            peer=self.transport.getPeer() if self.transport is not None else None,
        )

    def _requestReceived(self, event: Any) -> None:
        limit = self._declared_too_large(event.headers)
        if limit is None:
            super()._requestReceived(event)
            return
        # Answered here, without a Twisted stream.
        self._answer_too_large(event.stream_id, limit, dict(event.headers).get(b":path", b""))

    def _answer_too_large(self, stream_id: int, limit: int, path: bytes) -> None:
        """The JSON 413 (or the site's refusal page for ``path``) on
        ``stream_id``, then RST_STREAM NO_ERROR, which tells the client to
        stop sending the body (RFC 9113 section 8.1); h2 answers any DATA
        still in flight on the stream."""
        site = getattr(self, "site", None)
        page = site.refusal_page(path, limit) if site is not None else None
        if page is not None:
            headers, body = page
        else:
            body = error_body("body_too_large", "request body is larger than {} bytes".format(limit))
            headers = [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"x-content-type-options", b"nosniff"),
            ]
        self.conn.send_headers(
            stream_id,
            [(b":status", b"413"), *headers, (b"content-length", b"%d" % (len(body),))],
        )
        self.conn.send_data(stream_id, body, end_stream=True)
        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        _count(getattr(self, "site", None), "body_too_large")

    def _declared_too_large(self, headers: list[tuple[bytes, bytes]]) -> int | None:
        """The body limit of the request's route when its declared
        ``content-length`` exceeds it, else ``None``."""
        path = b""
        length = b""
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b"content-length":
                length = value
        body_limit = getattr(getattr(self, "site", None), "body_limit", None)
        if body_limit is None or not length.isdigit():
            return None
        limit: int = body_limit(path)
        return limit if int(length) > limit else None

    # Events that arrive in the same read as a request answered at once
    # concern a stream Twisted never made: drop them (crediting the window).

    def _requestDataReceived(self, event: Any) -> None:
        stream_id = event.stream_id
        stream = self.streams.get(stream_id)
        if stream is None:
            self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            return
        super()._requestDataReceived(event)
        request = stream._request
        if getattr(request, "body_refused", False) and stream_id in self.streams:
            # A body without content-length that outgrew the limit: answer
            # now instead of crediting the window for the rest of it.
            stream.connectionLost(Failure(ConnectionLost("request body too large")))
            self._requestDone(stream_id)
            self._answer_too_large(stream_id, request.body_limit, getattr(stream, "path", b"") or b"")

    def _requestEnded(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestEnded(event)

    def _requestAborted(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestAborted(event)


class EdgeChannelProtocol(_GenericHTTPChannelProtocol):
    """What each connection of the Site speaks: :class:`EdgeHTTPChannel`,
    or :class:`EdgeH2Connection` once TLS negotiated ``h2``.

    Twisted's switch to HTTP/2 builds its own ``H2Connection``; this one
    makes the same switch with ours, before Twisted would.
    """

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None:
            negotiated = getattr(self._channel.transport, "negotiatedProtocol", None)
            if negotiated == b"h2":
                self._switch_to_h2()
        super().dataReceived(data)

    def _switch_to_h2(self) -> None:
        # As twisted.web.http._GenericHTTPChannelProtocol.dataReceived does.
        old = self._channel
        network_producer = old._networkProducer
        network_producer.unregisterProducer()
        old.setTimeout(None)
        transport = old.transport
        channel: Any = EdgeH2Connection(getattr(self._site, "reactor", None))
        channel.requestFactory = self._requestFactory
        channel.site = self._site
        channel.factory = self._factory
        channel.timeOut = self._timeOut
        channel.callLater = self._callLater
        self._channel = channel
        channel.makeConnection(transport)
        network_producer.registerProducer(channel, True)
        self._negotiatedProtocol = b"h2"  # type: ignore[assignment]


def edge_channel(factory: Any) -> EdgeChannelProtocol:
    """``Site.protocol`` for :class:`~fastedge.http.site.EdgeSite`."""
    return EdgeChannelProtocol(EdgeHTTPChannel())
