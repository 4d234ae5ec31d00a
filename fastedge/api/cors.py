# -*- test-case-name: tests.integration.test_cors -*-
"""CORS for the public API: each tenant's ``allowedOrigins``, nobody else.

A site owner who builds their own client calls ``/api/v1/{tenant}/...``
from pages on their own origins. Those origins are the tenant's
``allowedOrigins`` setting (default: none), the same list the embed widget
uses. For an allowed ``Origin`` the public API answers preflights
(``OPTIONS``, 204) and actual requests with
``Access-Control-Allow-Origin: <that origin>`` and
``Access-Control-Allow-Credentials: true`` (so the session cookie travels).
Any other origin gets no ``Access-Control-*`` header at all (a preflight
gets 403 ``cors_origin_not_allowed``), so browsers keep it out. Every
public answer carries ``Vary: Origin``, since it depends on it.

The tenant API (``/api/v1/manage``) has no CORS at all: its API keys
belong on servers, never in browsers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from ..http.errors import ApiError
from ..http.router import Call, Reply
from ..store.settings import SettingsError, normalize_origin
from .common import _ID_RE
from .metrics import ApiMetrics
from .tenants import TenantSettingsCache

#: Request headers a cross-origin client may send.
ALLOWED_HEADERS = b"content-type, x-fastedge-sso, x-consistency-token"
#: Response headers a cross-origin client may read.
EXPOSED_HEADERS = b"retry-after, x-consistency-token"
#: How long a browser may remember a preflight answer (seconds).
MAX_AGE = b"600"


class Cors:
    """Decides the CORS headers of public API answers."""

    def __init__(self, tenants: TenantSettingsCache, metrics: ApiMetrics) -> None:
        self._tenants = tenants
        self._metrics = metrics

    @inlineCallbacks
    def _allowed(self, call: Call) -> Any:
        """The request's origin if the tenant allows it, else ``None``."""
        raw = call.header(b"origin")
        tenant_id = call.params.get("tenant", "")
        if raw is None or not _ID_RE.match(tenant_id):
            return None
        try:
            origin = normalize_origin("Origin", raw)
        except SettingsError:
            # "null" (sandboxed frames, file: pages) and garbage.
            self._metrics.cors.labels("refused").inc()
            return None
        settings = yield self._tenants.settings(tenant_id)
        if settings is None or origin not in settings.allowed_origins:
            self._metrics.cors.labels("refused").inc()
            return None
        self._metrics.cors.labels("allowed").inc()
        # Echo what the browser sent: it compares byte for byte.
        return raw

    def headers(self, call: Call) -> dict[bytes, bytes] | Deferred[dict[bytes, bytes]]:
        """The CORS headers for an actual (non-preflight) request: at once
        for the common case, a request without ``Origin`` (same-origin
        reads, servers, the page cache's hot path)."""
        if call.header(b"origin") is None:
            return {b"vary": b"Origin"}
        return self._cross_origin(call)

    @inlineCallbacks
    def _cross_origin(self, call: Call) -> Any:
        out = {b"vary": b"Origin"}
        origin = yield self._allowed(call)
        if origin is not None:
            out[b"access-control-allow-origin"] = origin.encode("latin-1")
            out[b"access-control-allow-credentials"] = b"true"
            out[b"access-control-expose-headers"] = EXPOSED_HEADERS
        return out

    @inlineCallbacks
    def preflight(self, call: Call, methods: Sequence[bytes]) -> Any:
        """Answer ``OPTIONS`` on a public route whose methods are ``methods``."""
        allow = b", ".join(sorted(set(methods) | {b"OPTIONS"}))
        if call.header(b"origin") is None or call.header(b"access-control-request-method") is None:
            # Not a CORS preflight: an ordinary OPTIONS.
            return Reply(204, headers={b"allow": allow, b"vary": b"Origin"})
        origin = yield self._allowed(call)
        if origin is None:
            raise ApiError(
                403,
                "cors_origin_not_allowed",
                "this origin is not in the site's allowedOrigins",
                headers={b"vary": b"Origin"},
            )
        wanted = (call.header(b"access-control-request-method") or "").strip().encode("latin-1")
        headers = {
            b"vary": b"Origin",
            b"access-control-allow-origin": origin.encode("latin-1"),
            b"access-control-allow-credentials": b"true",
            b"access-control-allow-methods": allow,
            b"access-control-allow-headers": ALLOWED_HEADERS,
            b"access-control-max-age": MAX_AGE,
            b"allow": allow,
        }
        if wanted not in methods:
            raise ApiError(405, "method_not_allowed", "method not allowed here", headers=headers)
        return Reply(204, headers=headers)
