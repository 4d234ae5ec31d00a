# -*- test-case-name: tests.unit.metrics.test_registry -*-
"""``GET /metrics``: the registry in the Prometheus text format (or
OpenMetrics, when the scraper asks for it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource
from twisted.web.server import Request


class MetricsResource(Resource):
    """Renders every metric of one registry (prometheus_client does the format)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.route = "/metrics"  # type: ignore[attr-defined]
        # The scraper's Accept header picks the text format or OpenMetrics.
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        body: bytes = encoder(self._registry)
        return body
