"""Metrics of the HTTP transport."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """Requests by route template (never by raw path: that would let clients
    create unbounded label values, and would mix tenants in one label)."""

    def __init__(self, registry: CollectorRegistry, slow_seconds: float) -> None:
        self._slow = slow_seconds
        self.requests = Counter(
            "fastedge_http_requests_total",
            "HTTP requests answered, by route, method and status code.",
            ["route", "method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "fastedge_http_request_duration_seconds",
            "Time from a request's arrival to its last byte, by route.",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.slow = Counter(
            "fastedge_http_slow_requests_total",
            "Requests slower than http.slow_request_seconds (100 ms by default).",
            ["route"],
            registry=registry,
        )

        self.open_connections = Gauge(
            "fastedge_http_open_connections",
            "Client connections open on the public listeners.",
            registry=registry,
        )

    def observe(self, route: str, method: bytes, code: int, seconds: float) -> None:
        """Record one finished request."""
        name = method.decode("ascii", "replace").upper()
        if name not in _METHODS:
            name = "other"
        self.requests.labels(route, name, str(code)).inc()
        self.duration.labels(route, name).observe(seconds)
        if seconds > self._slow:
            self.slow.labels(route).inc()
