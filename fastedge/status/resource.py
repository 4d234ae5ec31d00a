# -*- test-case-name: tests.unit.status.test_resource,tests.integration.test_status_browser -*-
"""``GET /status`` (the page), ``GET /status/events`` (its refreshes, SSE)
and ``GET /status/refresh.js`` (the few lines that apply them)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..http.jsonbody import JsonNotFound, write_error
from .figures import Figures
from .render import REFRESH_JS, render_fragment, render_page

_CSP = b"default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'"

Snapshot = Callable[[], tuple[Mapping[str, Any], Figures]]


class StatusResource(Resource):
    """The status page.

    :param snapshot: the mesh map (``GET /api/v1/mesh``'s) and this node's
        figures, now.
    :param interval: seconds between refreshes on ``/status/events``.
    :param max_streams: refresh streams open at once, at most (more get 503).
    """

    _log = Logger()

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        clock: IReactorTime,
        version: str,
        interval: float = 2.0,
        max_streams: int = 32,
    ) -> None:
        super().__init__()
        self._snapshot = snapshot
        self._version = version
        self.putChild(b"events", _Events(snapshot, clock, interval, max_streams))
        self.putChild(b"refresh.js", _Script())

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return JsonNotFound()

    def render_GET(self, request: Request) -> bytes:
        request.route = "/status"  # type: ignore[attr-defined]
        mesh, figures = self._snapshot()
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-security-policy", _CSP)
        return render_page(mesh, figures, version=self._version)


class _Script(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.route = "/status/refresh.js"  # type: ignore[attr-defined]
        request.setHeader(b"content-type", b"text/javascript; charset=utf-8")
        request.setHeader(b"cache-control", b"max-age=300")
        return REFRESH_JS


class _Events(Resource):
    isLeaf = True
    _log = Logger()

    def __init__(self, snapshot: Snapshot, clock: IReactorTime, interval: float, max_streams: int) -> None:
        super().__init__()
        self._snapshot = snapshot
        self._clock = clock
        self._interval = interval
        self._max = max_streams
        self.open = 0

    def render_GET(self, request: Request) -> int:
        request.route = "/status/events"  # type: ignore[attr-defined]
        if self.open >= self._max:
            write_error(request, 503, "too_many_streams", "too many status streams are open; reload later")
            return NOT_DONE_YET
        self.open += 1
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        timer: list[IDelayedCall] = []

        def send() -> None:
            timer.clear()
            try:
                mesh, figures = self._snapshot()
                fragment = render_fragment(mesh, figures)
            except Exception:
                # Logged, and the next refresh tries again: one bad snapshot
                # must not end the stream without a word.
                self._log.failure("status page: taking a snapshot failed")
            else:
                request.write(b"data: " + fragment.replace("\n", "\ndata: ").encode("utf-8") + b"\n\n")
            timer.append(self._clock.callLater(self._interval, send))

        def gone(_: Any) -> None:
            self.open -= 1
            for call in timer:
                call.cancel()
            timer.clear()

        request.notifyFinish().addBoth(gone)
        send()
        return NOT_DONE_YET
