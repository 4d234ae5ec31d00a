# -*- test-case-name: tests.unit.cdn.test_resource,tests.integration.test_cdn -*-
"""Sending a cached or downloading file to one request, as far as it is
available, with the connection's back-pressure; and aborting a response
mid-body so the client sees it is incomplete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

if TYPE_CHECKING:
    from .fill import Fill

__all__ = ["BodySender", "abort_response"]

CHUNK = 64 * 1024


@implementer(IPushProducer)
class BodySender:
    """Sends bytes ``[start, end)`` of a file to one request, as far as they
    are available, honouring the connection's back-pressure.

    :param available: how many bytes of the file exist now (a fill's
        ``received``, or the size of a complete file).
    :param fill: the download being read, if any (for new-data callbacks
        and to know when it failed).
    :param owns_fd: close ``fd`` when done (a cached file opened for this
        request); a fill's read descriptor belongs to the fill.
    """

    def __init__(
        self,
        request: Any,
        fd: int,
        start: int,
        end: int | None,
        *,
        fill: Fill | None,
        owns_fd: bool,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._request = request
        self._fd = fd
        self._pos = start
        self._end = end
        self._fill = fill
        self._owns_fd = owns_fd
        self._on_bytes = on_bytes
        self._paused = False
        self._closed = False
        self._pumping = False

    def start(self) -> None:
        if self._fill is not None:
            self._fill.attach(self)
        self._request.registerProducer(self, True)
        self._pump()

    def _available(self) -> int:
        if self._fill is None:
            assert self._end is not None
            return self._end
        limit = self._fill.received
        return limit if self._end is None else min(limit, self._end)

    def _complete(self) -> bool:
        if self._end is not None:
            return self._pos >= self._end
        assert self._fill is not None
        return self._fill.state == "done" and self._pos >= self._fill.received

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._closed and not self._paused:
                if self._complete():
                    self._finish()
                    return
                if self._fill is not None and self._fill.state == "failed":
                    self.abort()
                    return
                n = min(CHUNK, self._available() - self._pos)
                if n <= 0:
                    return  # wait for more()
                data = os.pread(self._fd, n, self._pos)
                if not data:
                    self.abort()
                    return
                self._pos += len(data)
                self._on_bytes(len(data))
                self._request.write(data)
        finally:
            self._pumping = False

    def more(self) -> None:
        """The fill has more bytes (or finished)."""
        if self._fill is not None and self._fill.state == "failed":
            self.abort()
            return
        self._pump()

    def _finish(self) -> None:
        self._close()
        self._request.unregisterProducer()
        self._request.finish()

    def abort(self) -> None:
        """The bytes this response promised will never come: abort the
        connection (HTTP/1.1) or reset the stream (HTTP/2)."""
        if self._closed:
            return
        self._close()
        self._request.unregisterProducer()
        abort_response(self._request)

    def _close(self) -> None:
        self._closed = True
        if self._owns_fd:
            os.close(self._fd)
        if self._fill is not None:
            self._fill.detach(self)

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        # The client went away; the fill (if any) carries on for the cache.
        if not self._closed:
            self._close()


def abort_response(request: Any) -> None:
    """Drop a response mid-body so the client sees it is incomplete."""
    channel = request.channel
    if channel is None:
        return
    transport = getattr(channel, "transport", None)
    if transport is not None:
        transport.abortConnection()
    elif hasattr(channel, "abortConnection"):
        channel.abortConnection()  # an HTTP/2 stream: RST_STREAM
