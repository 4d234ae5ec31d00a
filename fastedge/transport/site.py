# -*- test-case-name: tests.unit.transport.test_site -*-
"""The Site and Request every public listener uses.

:class:`EdgeRequest` adds what every route needs: a bound on request
bodies (checked while the body arrives, so an oversized upload is never
buffered), per-route metrics, and a JSON 500 instead of Twisted's HTML
error page (no traceback ever reaches a client).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from ..jsonhttp import write_error
from .metrics import HttpMetrics


class EdgeRequest(Request):
    """A request with a body limit, a route label and timing."""

    _log = Logger()

    #: Route template for metrics; resources set it once they match.
    route = "unmatched"
    _too_large = False
    _received = 0
    _started = 0.0

    _fastedge_site: EdgeSite | None = None

    @property
    def edge_site(self) -> EdgeSite:
        # Remembered: Request.finish() drops the channel, timing needs the site after.
        if self._fastedge_site is None:
            self._fastedge_site = self.channel.site  # type: ignore[attr-defined]
        assert self._fastedge_site is not None
        return self._fastedge_site

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.edge_site.max_body_bytes:
            self._too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._received += len(data)
        if self._received > self.edge_site.max_body_bytes:
            # A chunked body that outgrew the limit: drop what we have.
            self._too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        site = self.edge_site
        self._started = site.reactor.seconds()
        self.notifyFinish().addBoth(self._finished)
        if self._too_large:
            self.site = site
            self.route = "body_too_large"
            write_error(
                self,
                413,
                "body_too_large",
                "request body is larger than {} bytes".format(site.max_body_bytes),
            )
            return
        super().process()

    def _finished(self, result: Any) -> None:
        site = self._fastedge_site
        if site is not None and site.metrics is not None:
            elapsed = site.reactor.seconds() - self._started
            site.metrics.observe(self.route, self.method, self.code, elapsed)
        # A client that went away is not an error worth a traceback.
        return None

    def processingFailed(self, reason: Failure) -> None:
        self._log.failure("unhandled error answering {method} {route}", reason, method=self.method, route=self.route)
        if self.finished or self.startedWriting:
            self.loseConnection()
            return
        write_error(self, 500, "internal_error", "the server failed to answer this request")


class EdgeSite(Site):
    """The public Site: :class:`EdgeRequest`, no tracebacks, no access log
    lines per request (metrics count them instead)."""

    requestFactory = EdgeRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: Any,
        max_body_bytes: int,
        metrics: HttpMetrics | None,
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.open_connections = 0
        self._idle_waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        """Count connections (a gauge, and :meth:`when_idle` for clean shutdowns)."""
        protocol = super().buildProtocol(addr)
        if protocol is None:
            return None
        self.open_connections += 1
        if self.metrics is not None:
            self.metrics.open_connections.inc()
        lost = protocol.connectionLost

        def connection_lost(reason: Failure) -> None:
            try:
                lost(reason)
            finally:
                self._closed_one()

        protocol.connectionLost = connection_lost  # type: ignore[method-assign]
        return protocol

    def _closed_one(self) -> None:
        self.open_connections -= 1
        if self.metrics is not None:
            self.metrics.open_connections.dec()
        if self.open_connections == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def when_idle(self) -> Deferred[None]:
        """Fires once no client connection is open (at once if none is)."""
        if self.open_connections == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def log(self, request: Request) -> None:
        """Per-request log lines are off: metrics count requests."""
