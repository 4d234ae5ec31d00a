# -*- test-case-name: tests.unit.http.test_deadlines -*-
"""Deadlines of an HTTP/1.1 request: its headers in total, its body by
progress.

Twisted's idle timeout (``Site.timeOut``) restarts at every byte, so a
client sending one header byte every few seconds holds its connection (and
a descriptor) for ever. :class:`RequestDeadlines` adds, per request:

- a header deadline, from the request's first byte to the end of its
  headers (nginx's ``client_header_timeout``): missed, the request is
  answered 408 ``header_timeout`` and the connection closed;
- a body progress deadline: a body that makes no progress for that long is
  answered 408 ``body_timeout`` and the connection closed.

Between requests of a keep-alive connection, and before its first byte,
Twisted's idle timeout still applies. HTTP/2 connections have their own
framing and never reach this channel's parser.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from .jsonbody import raw_error_response

_HEADER_TIMEOUT = raw_error_response(
    408, b"Request Timeout", "header_timeout", "the request headers did not arrive in time"
)
_BODY_TIMEOUT = raw_error_response(408, b"Request Timeout", "body_timeout", "the request body stopped arriving")

# Where the channel is in the current request.
_IDLE = "idle"  # between requests: Twisted's idle timeout applies
_HEADERS = "headers"  # request line and headers arriving: the header deadline
_BODY = "body"  # body arriving: the progress deadline
_HANDLING = "handling"  # the request is complete and being answered


class RequestDeadlines:
    """A mixin for :class:`twisted.web.http.HTTPChannel` (listed before it)
    that enforces the header and body deadlines of its Site
    (``site.header_timeout``, ``site.body_timeout``, seconds; ``None``:
    none) and counts what it closes in ``site.connections.metrics``."""

    site: Any
    transport: Any
    length: int | None
    callLater: Any

    _phase = _IDLE
    _deadline: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        # The first byte of a request (pipelined ones are replayed through
        # here by requestDone -> setLineMode)...
        self._request_started()
        super().dataReceived(data)  # type: ignore[misc]

    def lineReceived(self, line: bytes) -> None:
        # ... or the first line of one that arrived with the previous
        # request, answered while the same read was being parsed.
        self._request_started()
        super().lineReceived(line)  # type: ignore[misc]

    def _request_started(self) -> None:
        if self._phase == _IDLE:
            self._phase = _HEADERS
            self._arm(getattr(self.site, "header_timeout", None), self._headers_timed_out)

    def allHeadersReceived(self) -> None:
        self._disarm()
        if self.length == 0:
            self._phase = _HANDLING
        else:
            # A Content-Length body, or a chunked one (length None).
            self._phase = _BODY
            self._arm(getattr(self.site, "body_timeout", None), self._body_timed_out)
        super().allHeadersReceived()  # type: ignore[misc]

    def rawDataReceived(self, data: bytes) -> None:
        if self._phase == _BODY and self._deadline is not None:
            self._deadline.reset(self.site.body_timeout)
        super().rawDataReceived(data)  # type: ignore[misc]

    def allContentReceived(self) -> None:
        self._disarm()
        self._phase = _HANDLING
        super().allContentReceived()  # type: ignore[misc]

    def requestDone(self, request: Any) -> None:
        self._phase = _IDLE
        super().requestDone(request)  # type: ignore[misc]

    def loseConnection(self) -> None:
        self._disarm()
        super().loseConnection()  # type: ignore[misc]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        super().connectionLost(reason)  # type: ignore[misc]

    def _arm(self, seconds: float | None, expired: Any) -> None:
        if seconds is not None:
            self._deadline = self.callLater(seconds, expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _headers_timed_out(self) -> None:
        self._deadline = None
        self._timed_out(_HEADERS, _HEADER_TIMEOUT)

    def _body_timed_out(self) -> None:
        self._deadline = None
        self._timed_out(_BODY, _BODY_TIMEOUT)

    def _timed_out(self, phase: str, response: bytes) -> None:
        if getattr(self.transport, "disconnecting", False):
            # Already closing (e.g. after a 400): nothing more to say.
            return
        connections = getattr(self.site, "connections", None)
        if connections is not None and connections.metrics is not None:
            connections.metrics.timeouts.labels(phase).inc()
        # Counted, not logged: a slowloris would turn each into a log line.
        self._phase = _HANDLING  # nothing more is parsed
        self.transport.write(response)
        self.loseConnection()
