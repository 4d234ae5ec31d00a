# -*- test-case-name: tests.unit.api.test_manage,tests.unit.api.test_public,tests.integration.test_odd_input -*-
"""A small JSON router: route templates to handlers, errors to JSON.

Handlers take a :class:`Call` and return a :class:`Reply` (or a Deferred of
one). Everything a client can get wrong (an unknown route, a wrong method,
bad query parameters, a body that is not the JSON object the route wants)
becomes a 4xx JSON error here, before a handler runs; anything unexpected
is logged once and answered with a JSON 500.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..inputs import InputError, loads_json
from ..store.errors import StoreError
from .errors import ApiError, bad_request, from_store_error
from .jsonbody import encode, error_body, write_json


@dataclass
class Reply:
    """A handler's answer: a JSON value (or pre-encoded JSON bytes)."""

    status: int = 200
    body: Any = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    cookies: list[bytes] = field(default_factory=list)


Handler = Callable[["Call"], "Reply | Deferred[Reply]"]


class Call:
    """One request as a handler sees it."""

    def __init__(self, request: Request, params: Mapping[str, str], route: str) -> None:
        self.request = request
        self.params = params
        self.route = route
        self._query: dict[str, str] | None = None
        #: Who the caller signed in as, where a route's authentication
        #: names a person (an SSO moderator's user id); ``None`` otherwise.
        self.actor: str | None = None

    @property
    def query(self) -> Mapping[str, str]:
        """Query parameters, decoded; a repeated parameter is a 400."""
        if self._query is None:
            out: dict[str, str] = {}
            args: dict[bytes, list[bytes]] = self.request.args or {}
            for raw_key, values in args.items():
                try:
                    key = raw_key.decode("utf-8")
                    decoded = [v.decode("utf-8") for v in values]
                except UnicodeDecodeError:
                    raise bad_request("query parameters must be UTF-8") from None
                if len(decoded) != 1:
                    raise bad_request("query parameter {!r} given more than once".format(key), code="bad_query")
                out[key] = decoded[0]
            self._query = out
        return self._query

    def header(self, name: bytes) -> str | None:
        value = self.request.getHeader(name)
        if value is None:
            return None
        return value.decode("latin-1") if isinstance(value, bytes) else value

    def cookie(self, name: bytes) -> bytes | None:
        return self.request.getCookie(name)

    @property
    def client_ip(self) -> str:
        """The peer's address (this node terminates client connections itself)."""
        host = self.request.getClientAddress()
        return getattr(host, "host", "unknown")

    def json(self, *, required: Mapping[str, Any] = {}, optional: Mapping[str, Any] = {}) -> dict[str, Any]:
        """The body as a JSON object with exactly these fields.

        :param required: field name -> expected type (or tuple of types).
        :param optional: likewise, for fields that may be left out. ``null``
            is a wrong type for either (docs/openapi.yaml declares no
            nullable field in a request): leave an optional field out instead.
        """
        body = self.json_object()
        for name in body:
            if name not in required and name not in optional:
                raise bad_request("unknown field {!r}".format(name), code="unknown_field", field=name)
        for name, tp in required.items():
            if name not in body:
                raise bad_request("missing field {!r}".format(name), code="missing_field", field=name)
            _check_type(name, body[name], tp)
        for name, tp in optional.items():
            if name in body:
                _check_type(name, body[name], tp)
        return body

    def json_object(self) -> dict[str, Any]:
        """The body as any JSON object (the handler checks its fields)."""
        ctype = (self.header(b"content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type", "send the body as application/json")
        raw = self.request.content.read() if self.request.content is not None else b""
        try:
            body = loads_json(raw)
        except InputError as e:
            raise bad_request("the body is not valid JSON: {}".format(e), code="malformed_json") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object", code="malformed_json")
        return body


def _check_type(name: str, value: Any, tp: Any) -> None:
    ok = isinstance(value, tp) and not (isinstance(value, bool) and tp in (int, (int, float)))
    if not ok:
        expected = {str: "a string", bool: "true or false", int: "an integer", dict: "an object", list: "a list"}.get(
            tp, "another type"
        )
        raise bad_request("field {!r} must be {}".format(name, expected), code="wrong_type", field=name)


_PARAM = re.compile(r"^\{([a-z_]+)\}$")


class ICors(Protocol):
    """Cross-origin rules for a route (see :mod:`fastedge.api.cors`)."""

    def headers(self, call: Call) -> dict[bytes, bytes] | Deferred[dict[bytes, bytes]]:
        """Headers every answer to an actual request carries (at once, or later)."""

    def preflight(self, call: Call, methods: Sequence[bytes]) -> Deferred[Reply]:
        """The answer to ``OPTIONS`` on a path whose routes have ``methods``."""


@dataclass(frozen=True)
class Route:
    method: bytes
    template: str
    handler: Handler
    #: Cross-origin rules; ``None``: no CORS (``OPTIONS`` is 405).
    cors: ICors | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.template.strip("/").split("/"))


class Router(Resource):
    """Dispatches on method and path; see the module docstring."""

    isLeaf = True
    _log = Logger()

    def __init__(self, routes: Sequence[Route]) -> None:
        super().__init__()
        self._routes = list(routes)
        self._compiled = [(r, r.parts) for r in self._routes]

    def templates(self) -> list[tuple[str, str]]:
        """``(method, template)`` of every route (for the OpenAPI check)."""
        return [(r.method.decode(), r.template) for r in self._routes]

    def render(self, request: Request) -> bytes | int:
        try:
            segments = _segments(request.path)
        except ApiError as e:
            return self._error_now(request, e)
        allowed: list[bytes] = []
        method = request.method
        cors: tuple[Route, dict[str, str]] | None = None
        # A path the tenant API serves never answers CORS, even where a
        # public template also matches it (a "tenant" called "manage").
        no_cors = False
        for route, parts in self._compiled:
            params = _match(parts, segments)
            if params is None:
                continue
            if route.method != method and not (method == b"HEAD" and route.method == b"GET"):
                allowed.append(route.method)
                if route.cors is None:
                    no_cors = True
                elif cors is None:
                    cors = (route, params)
                continue
            request.route = route.template  # type: ignore[attr-defined]
            self._dispatch(request, route, params)
            return NOT_DONE_YET
        if method == b"OPTIONS" and cors is not None and not no_cors:
            route, params = cors
            request.route = route.template  # type: ignore[attr-defined]
            methods = sorted(set(allowed))
            policy = route.cors
            assert policy is not None
            self._dispatch(
                request, Route(b"OPTIONS", route.template, lambda call: policy.preflight(call, methods)), params
            )
            return NOT_DONE_YET
        if allowed:
            request.route = "method_not_allowed"  # type: ignore[attr-defined]
            request.setHeader(b"allow", b", ".join(sorted(set(allowed))))
            return self._error_now(request, ApiError(405, "method_not_allowed", "method not allowed here"))
        request.route = "not_found"  # type: ignore[attr-defined]
        return self._error_now(request, ApiError(404, "no_such_route", "no such API route"))

    def _error_now(self, request: Request, e: ApiError) -> int:
        self._write_error(request, e)
        return NOT_DONE_YET

    def _dispatch(self, request: Request, route: Route, params: dict[str, str]) -> None:
        call = Call(request, params, route.template)
        policy = route.cors
        if policy is not None:
            # The CORS headers first, so errors carry them too (a browser
            # shows a cross-origin caller the error only then).
            headers = policy.headers(call)
            if isinstance(headers, dict):
                self._set_headers(headers, request)
                d: Deferred[Any] = maybeDeferred(route.handler, call)
            else:
                d = headers
                d.addCallback(self._set_headers, request)
                d.addCallback(lambda _: route.handler(call))
        else:
            d = maybeDeferred(route.handler, call)
        d.addCallbacks(self._write_reply, self._write_failure, callbackArgs=(request,), errbackArgs=(request,))
        d.addErrback(lambda f: self._log.failure("failed writing a response", f))

    @staticmethod
    def _set_headers(headers: dict[bytes, bytes], request: Request) -> None:
        for name, value in headers.items():
            request.setHeader(name, value)

    def _write_reply(self, reply: Reply, request: Request) -> None:
        if _gone(request):
            return
        for name, value in reply.headers.items():
            request.setHeader(name, value)
        for cookie in reply.cookies:
            request.responseHeaders.addRawHeader(b"set-cookie", cookie)
        request.setHeader(b"cache-control", reply.headers.get(b"cache-control", b"no-store"))
        if reply.status == 204:
            request.setResponseCode(204)
            request.finish()
            return
        body = reply.body if isinstance(reply.body, bytes) else encode(reply.body)
        write_json(request, reply.status, body)

    def _write_failure(self, failure: Failure, request: Request) -> None:
        if failure.check(ApiError):
            error = failure.value
        elif failure.check(StoreError):
            error = from_store_error(failure.value)
            if error.status >= 500:
                self._log.failure("store failed answering {route}", failure, route=_route(request))
        else:
            self._log.failure("unhandled error answering {route}", failure, route=_route(request))
            error = ApiError(500, "internal_error", "the server failed to answer this request")
        if _gone(request):
            return
        self._write_error(request, error)

    def _write_error(self, request: Request, e: ApiError) -> None:
        for name, value in e.headers.items():
            request.setHeader(name, value)
        for cookie in e.cookies:
            request.responseHeaders.addRawHeader(b"set-cookie", cookie)
        request.setHeader(b"cache-control", b"no-store")
        write_json(request, e.status, error_body(e.code, e.message, **e.extra))


def _gone(request: Request) -> bool:
    return bool(getattr(request, "_disconnected", False)) or bool(request.finished)


def _route(request: Request) -> str:
    return str(getattr(request, "route", "unmatched"))


def _segments(path: bytes) -> list[str]:
    """Split and percent-decode a path, refusing what no route accepts."""
    out = []
    for raw in path.split(b"?", 1)[0].strip(b"/").split(b"/"):
        decoded = unquote_to_bytes(raw)
        if b"/" in decoded or b"\x00" in decoded or decoded in (b".", b".."):
            raise bad_request("malformed path segment", code="bad_path")
        try:
            out.append(decoded.decode("utf-8"))
        except UnicodeDecodeError:
            raise bad_request("the path must be UTF-8", code="bad_path") from None
    return out


def _match(parts: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(parts) != len(segments):
        return None
    params: dict[str, str] = {}
    for part, segment in zip(parts, segments, strict=True):
        m = _PARAM.match(part)
        if m is not None:
            if not segment:
                return None
            params[m.group(1)] = segment
        elif part != segment:
            return None
    return params
