# -*- test-case-name: tests.unit.live.test_sse -*-
"""The SSE front end of live threads: ``GET /live/events`` (``text/event-stream``).

For clients where WebSocket is blocked. One stream follows one channel:
``?tenant=T&urlId=U`` (``&viewer=TOKEN`` for the viewer's blocks). Every
message is the same JSON as on the WebSocket, in a ``data:`` line; events
carry ``id: <epoch>-<seq>``, so a browser's ``EventSource`` resumes with
``Last-Event-ID`` by itself. Refusals before the stream starts are JSON
errors with a 4xx status.

Each event's SSE record (and, for HTTP/1.1, its chunk) is built once and
the same bytes go to every stream, written straight to the socket.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..http.jsonbody import write_error
from ..inputs import InputError, parse_ascii_int
from . import messages
from .frontend import Live, LiveConnection
from .hub import Joined, Prepared, Subscription
from .messages import CLOSE_FORBIDDEN, CLOSE_GOING_AWAY, CLOSE_SLOW_CONSUMER, RequestError, Subscribe
from .wire import Writer, backlog_meter

_STATUS = {
    "tenant_not_found": 404,
    "wrong_deployment": 421,
    "thread_not_found": 404,
    "forbidden": 403,
    "bad_viewer_token": 401,
    "viewer_token_expired": 401,
    "sso_malformed": 400,
    "sso_bad_signature": 401,
    "sso_expired": 401,
    "sso_from_future": 401,
    "sso_disabled": 403,
    "unavailable": 503,
    "internal_error": 500,
}
#: Milliseconds a browser waits before reconnecting.
RETRY_MS = 2000
HEARTBEAT = b": ping\n\n"


def record(payload: bytes, event_id: str | None = None) -> bytes:
    """One SSE record carrying a JSON message (which never contains a newline)."""
    if event_id is None:
        return b"data: " + payload + b"\n\n"
    return b"id: " + event_id.encode("ascii") + b"\ndata: " + payload + b"\n\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class _RequestSink:
    """Writes through the request (HTTP/2, or anything not HTTP/1.x)."""

    def __init__(self, request: Request) -> None:
        self.write = request.write


class SseStream:
    """One SSE client: a :class:`~fastedge.live.frontend.Connection`."""

    _log = Logger()
    transport_name = "sse"

    def __init__(self, live: Live, request: Request) -> None:
        self._live = live
        self._request = request
        self.conn = LiveConnection(live, self)
        self._open = False
        self._chunked = False
        self._writer: Writer | None = None
        self._abort: IDelayedCall | None = None
        #: The access log session (``None``: off, or not started).
        self.access: Any = None
        # From the start: a client that leaves while its subscribe is being
        # resolved must not be subscribed afterwards (conn.close() marks it).
        request.notifyFinish().addBoth(self._gone)

    def start(self, joined: Joined, name: str, ref: Any) -> None:
        """The subscription is in: send headers, the answer, the replay."""
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.setHeader(b"access-control-allow-origin", b"*")
        answer = messages.subscribed(name, joined.epoch, joined.seq, joined.reload, len(joined.replay), ref)
        # The first write goes through the request: it sends the headers.
        first = b"retry: %d\n\n" % RETRY_MS + record(answer)
        request.write(first)
        channel = request.channel
        if isinstance(channel, http.HTTPChannel) and channel.transport is not None:
            # HTTP/1.x: from now on write pre-built records (chunks) to the
            # connection ourselves, exactly as request.write would.
            self._chunked = bool(request.chunked)
            self._writer = Writer(channel.transport, self._live.cfg.max_buffered_bytes, self._overflowed)
        else:
            # HTTP/2: through the request (the connection frames it); what
            # waits is the stream's send queue (see wire.backlog_meter).
            self._writer = Writer(
                _RequestSink(request),
                self._live.cfg.max_buffered_bytes,
                self._overflowed,
                direct=False,
                backlog=backlog_meter(channel),
            )
        request.registerProducer(self._writer, True)
        live_session = getattr(request, "live_session", None)
        if live_session is not None:
            tenants = {key[0] for key in self.conn.subs}
            # A subscribed stream's tenant exists (the subscribe resolved it).
            request.tenant_id = ",".join(sorted(tenants)) or None  # type: ignore[attr-defined]
            self.access = live_session("sse")
            if self.access is not None:
                self.access.tenants.update(tenants)
                self.access.sent(len(first))
        self._open = True
        self._live.opened(self)
        sent = total = 0
        for prepared in joined.replay:
            n = self.push(prepared)
            if n:
                sent += 1
                total += n
        if sent:
            self._live.hub.count_delivered(sent, total)

    def _gone(self, result: Any) -> None:
        self._open = False
        if self.access is not None:
            self.access.end(200)
            self.access = None
        self.conn.close()
        self._live.closed(self)  # a no-op for a stream that never started
        if self._abort is not None and self._abort.active():
            self._abort.cancel()

    def push(self, prepared: Prepared) -> int:
        """Send one shared event record."""
        if not self._open:
            return 0
        if self._chunked:
            data = prepared.sse_chunk
            if data is None:
                data = prepared.sse_chunk = chunk(self._record(prepared))
        else:
            data = self._record(prepared)
        n = self._writer.write(data)  # type: ignore[union-attr]
        if self.access is not None:
            self.access.sent(n)
        return n

    @staticmethod
    def _record(prepared: Prepared) -> bytes:
        data = prepared.sse
        if data is None:
            data = prepared.sse = record(prepared.payload, prepared.event_id)
        return data

    def send(self, payload: bytes) -> None:
        """Send a message of this stream only."""
        data = record(payload)
        self._raw(data)
        if self.access is not None and self._open:
            self.access.sent(len(data))

    def _raw(self, data: bytes) -> None:
        if self._open and self._writer is not None:
            self._writer.write(chunk(data) if self._chunked else data)

    def keepalive(self) -> None:
        """A comment line keeps proxies from closing an idle stream."""
        self._raw(HEARTBEAT)

    def shutdown(self) -> None:
        """The node is stopping: say so, end the stream."""
        self._end(CLOSE_GOING_AWAY, "server shutting down; reconnect")

    def revoke(self, sub: Subscription, error: RequestError) -> bool:
        """End the stream (it follows one channel): a ``close`` 4403."""
        if not self.conn.drop(sub):
            return False
        self._end(CLOSE_FORBIDDEN, "{}: {}".format(error.code, error.message))
        return True

    def _overflowed(self) -> None:
        self._live.slow_consumer(self.transport_name)
        self._log.info(
            "live: slow SSE consumer disconnected ({limit} bytes queued)",
            limit=self._live.cfg.max_buffered_bytes,
        )
        self._end(CLOSE_SLOW_CONSUMER, "slow consumer: too far behind; reconnect")

    def _end(self, code: int, reason: str) -> None:
        if not self._open:
            return
        self._live.closing(code)
        closing = record(messages.closing(code, reason))
        assert self._writer is not None
        self._open = False
        self.conn.close()
        request = self._request
        transport = getattr(request.channel, "transport", None)
        if transport is None or request.finished:
            # HTTP/2: the stream ends; the connection and its other streams stay.
            self._writer.write_last(closing)
            self._writer.overflowed = True
            if not request.finished:
                request.unregisterProducer()
                request.finish()
            return
        # HTTP/1.x: past the buffer bound only the close record and the
        # body's last chunk are added, then the connection closes. The
        # request is left unfinished on purpose: the client leaving (or
        # the abort below) then fires its notifyFinish, which cancels the
        # abort, so nothing outlives the connection.
        self._writer.write_last(chunk(closing) + b"0\r\n\r\n" if self._chunked else closing)
        self._writer.overflowed = True
        request.unregisterProducer()
        # Through the channel: it also stops being the socket's producer,
        # without which a socket that was ever full would never close.
        request.loseConnection()
        # The client has until close_timeout to read what is queued.
        self._abort = self._live.clock.callLater(self._live.cfg.close_timeout_seconds, _abort, transport)


def _abort(transport: Any) -> None:
    if getattr(transport, "connected", False):
        transport.abortConnection()


class LiveEventsResource(Resource):
    """``GET /live/events?tenant=T&urlId=U[&since=N&epoch=E][&viewer=TOKEN]``."""

    isLeaf = True
    _log = Logger()

    def __init__(self, live: Live) -> None:
        super().__init__()
        self._live = live

    def render_GET(self, request: Request) -> int:
        """Check the query, admit, then subscribe (the stream starts on success)."""
        request.route = "/live/events"  # type: ignore[attr-defined]
        try:
            msg = self._subscription(request)
        except RequestError as e:
            write_error(request, 400, e.code, e.message)
            return NOT_DONE_YET
        live = self._live
        if not live.admit("sse"):
            live.closing(messages.CLOSE_TRY_AGAIN_LATER)
            request.setHeader(b"retry-after", b"5")
            write_error(
                request,
                503,
                "too_many_connections",
                "this node is at its live connection limit",
            )
            return NOT_DONE_YET
        stream = SseStream(live, request)
        d = stream.conn.subscribe(msg, stream.start)
        d.addErrback(self._refused, request, stream)
        return NOT_DONE_YET

    def _refused(self, failure: Failure, request: Request, stream: SseStream) -> None:
        stream.conn.close()
        if request.finished or getattr(request, "_disconnected", False):
            return
        if failure.check(RequestError):
            e = failure.value
            status = _STATUS.get(e.code, 400)
            if status == 503:
                request.setHeader(b"retry-after", b"1")
            write_error(request, status, e.code, e.message)
            return
        self._log.failure("live SSE subscribe failed", failure)
        write_error(request, 500, "internal_error", "the server failed to subscribe you")

    def _subscription(self, request: Request) -> Subscribe:
        query: dict[str, str] = {}
        args: dict[bytes, list[bytes]] = request.args or {}
        for raw_key, values in args.items():
            try:
                key = raw_key.decode("utf-8")
                value = values[-1].decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError("bad_query", "query parameters must be UTF-8") from None
            if len(values) != 1:
                raise RequestError(
                    "bad_query",
                    "query parameter {!r} given more than once".format(key[:40]),
                )
            if key not in (
                "tenant",
                "urlId",
                "since",
                "epoch",
                "viewer",
                "sso",
                "lastEventId",
            ):
                raise RequestError("bad_query", "unknown query parameter {!r}".format(key[:40]))
            query[key] = value
        tenant = query.get("tenant")
        if not tenant:
            raise RequestError("missing_tenant", "tenant is required")
        url_id = query.get("urlId")
        if not url_id:
            raise RequestError("missing_url_id", "urlId is required")
        # Checked even where unused (an event id wins, and an epoch means
        # nothing without since): a malformed parameter is never ignored.
        if "epoch" in query and not messages.is_epoch(query["epoch"]):
            raise RequestError("bad_epoch", "epoch must be an epoch from a subscribed answer or event id")
        if "lastEventId" in query and messages.parse_event_id(query["lastEventId"]) is None:
            raise RequestError("bad_last_event_id", "lastEventId must be an event id (<epoch>-<seq>)")
        since: int | None = None
        epoch: str | None = None
        header = request.getHeader(b"last-event-id")
        last = header if header is not None else query.get("lastEventId")
        if isinstance(last, bytes):
            last = last.decode("latin-1")
        if last:
            parsed = messages.parse_event_id(last)
            if parsed is None:
                raise RequestError(
                    "bad_last_event_id",
                    "Last-Event-ID must be an event id (<epoch>-<seq>)",
                )
            epoch, since = parsed
        elif "since" in query:
            raw = query["since"]
            if raw.startswith("-"):
                raise RequestError("bad_since", "since must not be negative")
            try:
                since = parse_ascii_int(raw, 0, messages.MAX_SEQ)
            except InputError:
                raise RequestError("bad_since", "since must be an integer") from None
            epoch = query.get("epoch")
            if epoch is not None and not messages.is_epoch(epoch):
                raise RequestError(
                    "bad_epoch",
                    "epoch must be an epoch from a subscribed answer or event id",
                )
        viewer = query.get("viewer")
        if viewer is not None and len(viewer) > 512:
            raise RequestError("bad_viewer_token", "viewer must be a viewer token")
        if len(url_id) > 4096:
            raise RequestError("bad_url_id", "urlId is longer than 4096 characters")
        sso = query.get("sso")
        if sso is not None and len(sso) > messages.MAX_SSO_CHARS:
            raise RequestError("sso_malformed", "sso must be payload.timestamp.signature")
        return Subscribe(tenant=tenant, url_id=url_id, since=since, epoch=epoch, viewer=viewer, sso=sso)
