# -*- test-case-name: tests.unit.http.test_site -*-
"""The Site and Request every public listener uses.

:class:`EdgeRequest` adds what every route needs: a bound on request
bodies (checked while the body arrives, so an oversized upload is never
buffered), per-route metrics, and JSON errors instead of Twisted's HTML
pages: the 500 (no traceback ever reaches a client) and the 405. The
connections it speaks over are in :mod:`fastedge.http.channel`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.error import UnsupportedMethod
from twisted.web.http import RESPONSES
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .accesslog import AccessLog, Session
from .channel import edge_channel
from .connections import ConnectionGate
from .jsonbody import encode, write_error, write_json
from .metrics import HttpMetrics
from .ops import OpsNetworks, is_ops_path

#: A whole response body with its headers (``content-type`` among them).
Page = tuple[list[tuple[bytes, bytes]], bytes]
#: Makes the page refusing a body over the limit it is given (bytes).
RefusalPage = Callable[[int], Page]


def _write_page(request: Request, status: int, page: Page) -> None:
    headers, body = page
    request.setResponseCode(status)
    for name, value in headers:
        request.setHeader(name, value)
    request.setHeader(b"content-length", b"%d" % len(body))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


class EdgeRequest(Request):
    """A request with a body limit, a route label and timing."""

    _log = Logger()

    #: Route template for metrics; resources set it once they match.
    route = "unmatched"
    #: The tenant this request was for, for the access log; resources set it
    #: once the tenant is known to exist (never from unchecked input).
    tenant_id: str | None = None
    #: Handed over to a live session, which writes its own access log line.
    _handed_over = False
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

    _limit: int | None = None

    def handed_over_whole(self) -> None:
        """This request is handed over from its parsed head, without being
        processed (:meth:`EdgeSite.upgrade_route`): start its clock, as
        :meth:`process` does, for the live session's access log line."""
        self._started = self.edge_site.reactor.seconds()

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """Set the status; a status Twisted has no reason phrase for (426,
        429, 431 ...) gets the standard one instead of ``Unknown Status``."""
        if message is None and code not in RESPONSES:
            try:
                message = HTTPStatus(code).phrase.encode("ascii")
            except ValueError:
                pass
        super().setResponseCode(code, message)

    @property
    def body_limit(self) -> int:
        """The body limit of this request's route (known from the request
        target, before the body arrives)."""
        if self._limit is None:
            channel = self.channel
            # HTTP/2 streams expose the target as ``path``; the HTTP/1.1
            # channel keeps it in ``_path`` until the request is complete.
            target = getattr(channel, "path", None) or getattr(channel, "_path", None) or b""
            self._limit = self.edge_site.body_limit(target)
        return self._limit

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.body_limit:
            self._too_large = True
            length = 0
        if self.content is not None and not self._too_large:
            # HTTP/2 announces each content-length header separately; a
            # second one must not reset the body buffer already made.
            return
        super().gotLength(length)

    @property
    def body_refused(self) -> bool:
        """Whether the body was refused for its size (the answer is a 413)."""
        return self._too_large

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._received += len(data)
        if self._received > self.body_limit:
            # A chunked body that outgrew the limit: drop what we have.
            self._too_large = True
            if self.content is not None:
                self.content.seek(0)
                self.content.truncate()
            # HTTP/1.1 answers now and closes rather than read the rest
            # (HTTP/2: EdgeH2Connection answers and resets the stream).
            refuse = getattr(self.channel, "refuse", None)
            if refuse is not None:
                refuse(413, "body_too_large", "request body is larger than {} bytes".format(self.body_limit))
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        site = self.edge_site
        self._started = site.reactor.seconds()
        self.notifyFinish().addBoth(self._finished)
        if self._too_large:
            self.site = site
            self.route = "body_too_large"
            page = site.refusal_page(self.path, self.body_limit)
            if page is not None:
                _write_page(self, 413, page)
                return
            write_error(
                self,
                413,
                "body_too_large",
                "request body is larger than {} bytes".format(self.body_limit),
            )
            return
        if is_ops_path(self.path) and not site.sees_ops(self):
            # Not for this client: as if the path did not exist.
            self.site = site
            self.route = "not_found"
            write_error(self, 404, "not_found", "no such resource")
            return
        if site.redirect_port is not None and not self.isSecure():
            port = site.redirect_port()
            if port is not None and not _stays_on_http(self.path):
                self.route = "https_redirect"
                _redirect_to_https(self, port)
                return
        if site.residency is not None:
            verdict = site.residency.check(self.path, self.args)
            if isinstance(verdict, Deferred):
                verdict.addCallback(self._resided)
                return
            if verdict is not None:
                self._misdirected(verdict)
                return
        super().process()

    def _resided(self, verdict: Any) -> None:
        """The residency check answered after a lookup."""
        if self._disconnected or self.finished:
            return
        if verdict is not None:
            self._misdirected(verdict)
            return
        super().process()

    def _misdirected(self, verdict: Any) -> None:
        """421: the tenant is another deployment's (:mod:`fastedge.residency`)."""
        self.site = self.edge_site
        self.route = "wrong_deployment"
        self.setHeader(b"cache-control", b"no-store")
        write_json(self, 421, encode({"error": verdict.error()}))

    def _finished(self, result: Any) -> None:
        site = self._fastedge_site
        if site is not None:
            elapsed = site.reactor.seconds() - self._started
            if site.metrics is not None:
                site.metrics.observe(self.route, self.method, self.code, elapsed)
            access_log = site.access_log
            if access_log is not None and not self._handed_over:
                if isinstance(result, Failure):
                    # The client went away before the answer was complete
                    # (nginx's 499, "client closed request").
                    self.code = 499
                access_log.request(self, elapsed, self._started)
        # A client that went away is not an error worth a traceback.
        return None

    def live_session(self, proto: str) -> Session | None:
        """Hand this request's access log line over to the live session it
        opens (``ws`` or ``sse``), written when the session ends with its
        duration and messages sent.

        :returns: the :class:`~fastedge.http.accesslog.Session` to
            count into, or ``None`` when the access log is off.
        """
        access_log = self.edge_site.access_log
        if access_log is None:
            return None
        self._handed_over = True
        return access_log.session(self, proto, self._started)

    def render(self, resrc: IResource) -> None:
        """Render ``resrc``; a method it does not offer is a JSON 405 (not
        Twisted's HTML 405 or 501 page)."""
        super().render(_JsonMethodErrors(resrc))

    def _handleStar(self) -> None:
        # The request target ``*``: OPTIONS gets Twisted's empty 200; any
        # other method a JSON 405 instead of Twisted's empty one.
        if self.method == b"OPTIONS":
            super()._handleStar()
            return
        self.route = "method_not_allowed"
        self.setHeader(b"allow", b"OPTIONS")
        write_error(self, 405, "method_not_allowed", "only OPTIONS applies to the target *")

    def processingFailed(self, reason: Failure) -> None:
        self._log.failure("unhandled error answering {method} {route}", reason, method=self.method, route=self.route)
        if self.finished or self.startedWriting:
            self.loseConnection()
            return
        write_error(self, 500, "internal_error", "the server failed to answer this request")


class _JsonMethodErrors:
    """Renders a resource, answering a method it does not offer with a JSON
    405 and an ``Allow`` header. HEAD on a resource without ``render_HEAD``
    is left to Twisted, which renders GET without the body."""

    def __init__(self, resource: IResource) -> None:
        self._resource = resource

    def render(self, request: Request) -> Any:
        try:
            return self._resource.render(request)
        except UnsupportedMethod as e:
            allowed = list(e.allowedMethods)
            if request.method == b"HEAD" and b"GET" in allowed:
                raise
            if b"GET" in allowed and b"HEAD" not in allowed:
                allowed.append(b"HEAD")
            request.route = "method_not_allowed"  # type: ignore[attr-defined]
            request.setHeader(b"allow", b", ".join(sorted(set(allowed))))
            write_error(request, 405, "method_not_allowed", "method not allowed here")
            return NOT_DONE_YET

    def __repr__(self) -> str:
        return repr(self._resource)


#: Paths that stay reachable over plain HTTP when redirecting to HTTPS:
#: load balancers, Prometheus and ACME HTTP-01 challenges use plain HTTP.
_HTTP_ONLY_PREFIXES = (b"/healthz", b"/metrics", b"/.well-known/acme-challenge/")
_HOST_RE = re.compile(rb"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


def _stays_on_http(path: bytes) -> bool:
    return any(path == p.rstrip(b"/") or path.startswith(p) for p in _HTTP_ONLY_PREFIXES)


def _redirect_to_https(request: EdgeRequest, port: int) -> None:
    """301 (GET, HEAD) or 308 (other methods keep their body) to the same
    host and target over HTTPS; a Host header that is not a host is a 400."""
    raw_host = request.getHeader(b"host") or b""
    match = _HOST_RE.match(raw_host.encode("latin-1") if isinstance(raw_host, str) else raw_host)
    if match is None:
        write_error(request, 400, "bad_host", "the Host header is missing or not a host name")
        return
    host = match.group(1)
    authority = host if port == 443 else host + b":%d" % (port,)
    location = b"https://" + authority + request.uri
    request.setResponseCode(301 if request.method in (b"GET", b"HEAD") else 308)
    request.setHeader(b"location", location)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"0")
    request.finish()


class EdgeSite(Site):
    """The public Site: :class:`EdgeRequest`, no tracebacks, and our own
    access log (:mod:`fastedge.http.accesslog`) instead of Twisted's."""

    requestFactory = EdgeRequest
    #: No "Starting factory <... at 0x...>" line (the start-up summary lists listeners).
    noisy = False
    protocol = edge_channel
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: Any,
        max_body_bytes: int,
        metrics: HttpMetrics | None,
        body_limits: Iterable[tuple[bytes, int]] = (),
        refusal_pages: Iterable[tuple[bytes, RefusalPage]] = (),
        redirect_port: Callable[[], int | None] | None = None,
        connections: ConnectionGate | None = None,
        header_timeout: float | None = None,
        body_timeout: float | None = None,
        access_log: AccessLog | None = None,
        ops_networks: OpsNetworks | None = None,
        residency: Any = None,
    ) -> None:
        """
        :param body_limits: ``(path, bytes)`` for routes that take
            larger (or smaller) bodies than ``max_body_bytes``, e.g. uploads;
            a path ending in ``*`` is a prefix (``/embed/*``: every page
            under ``/embed/``).
        :param refusal_pages: ``(path prefix, page)``: a body refused for
            its size on a path under the prefix is answered with
            ``page(limit)`` (an HTML page for browsers' plain forms) rather
            than the JSON 413.
        :param redirect_port: when given, plain-HTTP requests are redirected
            to HTTPS on the port it returns (``None``: not listening yet).
        :param connections: the count of open client connections and their
            limits, kept by the listeners that serve this Site (a fresh
            one, without limits, when not given).
        :param header_timeout: seconds for an HTTP/1.1 request's line and
            headers, from its first byte (``None``: no deadline).
        :param body_timeout: seconds an HTTP/1.1 request body may go without
            progress (``None``: no deadline).
        :param access_log: where each finished request is logged (``None``: off).
        :param ops_networks: who may see the operational endpoints
            (:mod:`fastedge.http.ops`; ``None``: everyone, for tests of a
            bare Site).
        :param residency: checks each request's tenant before its handler
            (:class:`fastedge.residency.gate.ResidencyGate`: ``check(path,
            args)`` gives ``None``, a refusal with ``error()``, or a Deferred
            of either); ``None``: no check.
        """
        # No form parsing: every route reads JSON or raw bytes, and Twisted
        # would mix urlencoded body fields into the query arguments and answer
        # a malformed multipart body with a bare 400.
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self._body_limits: dict[bytes, int] = {}
        self._body_prefixes: list[tuple[bytes, int]] = []
        for path, limit in body_limits:
            if path.endswith(b"*"):
                self._body_prefixes.append((path[:-1], limit))
            else:
                self._body_limits[path.rstrip(b"/")] = limit
        self._refusal_pages = tuple(refusal_pages)
        self.redirect_port = redirect_port
        self.connections = connections if connections is not None else ConnectionGate()
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.access_log = access_log
        self.ops_networks = ops_networks
        self.residency = residency

    def upgrade_route(self, target: bytes) -> Callable[[Request], bool] | None:
        """What takes a WebSocket upgrade of ``target`` whose head arrived
        whole straight from the parsed head
        (:class:`~fastedge.http.channel.EdgeHTTPChannel`), without routing
        and rendering it as a request: the ``take_upgrade`` of the root's
        child that ``target`` names (``/live``), which answers ``False``
        for anything it would not take as it is.

        Routing and rendering a request is ~15 % of a WebSocket connect's
        CPU. Nothing :meth:`EdgeRequest.process` checks before routing may
        apply (an HTTPS redirect, a residency check, an operational path):
        with any of those configured, ``None``, and the request is routed
        as any other.

        :returns: the hook, or ``None``.
        """
        if self.redirect_port is not None or self.residency is not None:
            return None
        path = target.split(b"?", 1)[0]
        if is_ops_path(path):
            return None
        children = getattr(self.resource, "children", None)
        child = children.get(path.strip(b"/")) if children else None
        take: Callable[[Request], bool] | None = getattr(child, "take_upgrade", None)
        return take

    def sees_ops(self, request: Request) -> bool:
        """Whether ``request``'s client may see operational detail."""
        if self.ops_networks is None:
            return True
        address = request.getClientAddress()
        return self.ops_networks.allows(getattr(address, "host", None))

    @property
    def open_connections(self) -> int:
        """Client connections open now (the node's load, for the mesh)."""
        return self.connections.open

    def when_idle(self) -> Deferred[None]:
        """Fires once no client connection is open (at once if none is)."""
        return self.connections.when_idle()

    def body_limit(self, target: bytes) -> int:
        """Largest body accepted for request target ``target``."""
        path = target.split(b"?", 1)[0]
        if self._body_limits:
            limit = self._body_limits.get(path.rstrip(b"/"))
            if limit is not None:
                return limit
        for prefix, limit in self._body_prefixes:
            if path.startswith(prefix):
                return limit
        return self.max_body_bytes

    def refusal_page(self, target: bytes, limit: int) -> Page | None:
        """The page answering a body over ``limit`` for ``target``, or
        ``None`` for the JSON 413 (see ``refusal_pages``)."""
        path = target.split(b"?", 1)[0]
        for prefix, page in self._refusal_pages:
            if path.startswith(prefix):
                return page(limit)
        return None

    def log(self, request: Request) -> None:  # type: ignore[override]
        """Twisted's per-request log line is off: :class:`EdgeRequest`
        writes ours (for aborted requests too) when the request finishes."""
