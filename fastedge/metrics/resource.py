# -*- test-case-name: tests.unit.metrics.test_resource -*-
"""``GET /metrics``: the registry in Prometheus text exposition format."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
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
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._registry)
