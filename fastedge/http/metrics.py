"""Metrics of the HTTP transport."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..metrics.registry import label_children

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """Requests by route template (never by raw path: that would let clients
    create unbounded label values, and would mix tenants in one label)."""

    def __init__(self, registry: CollectorRegistry, slow_seconds: float) -> None:
        self._slow = slow_seconds
        self._children: dict[tuple[str, bytes, int], tuple[Any, Any]] = {}
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
        self.protocol_errors = Counter(
            "fastedge_http_protocol_errors_total",
            "Requests refused by the HTTP transport before reaching a route (malformed or "
            "oversized request line or headers, a second Host, ...) and "
            "HTTP/2 streams refused over the concurrency limit (refused_stream), by error code.",
            ["code"],
            registry=registry,
        )

    def observe(self, route: str, method: bytes, code: int, seconds: float) -> None:
        """Record one finished request."""
        # The labelled children are looked up once per (route, method, code):
        # labels() costs more than the increment, on every request.
        key = (route, method, code)
        children = self._children.get(key)
        if children is None:
            name = method.decode("ascii", "replace").upper()
            if name not in _METHODS:
                name = "other"
            children = (self.requests.labels(route, name, str(code)), self.duration.labels(route, name))
            if len(self._children) < 10_000:  # routes are templates: bounded
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if seconds > self._slow:
            self.slow.labels(route).inc()


class TlsMetrics:
    """TLS handshakes, their failures by reason, and the certificates in use."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handshakes = Counter(
            "fastedge_transport_tls_handshakes_total",
            "TLS handshakes completed, by protocol version and ALPN protocol.",
            ["version", "alpn"],
            registry=registry,
        )
        self.failures = Counter(
            "fastedge_transport_tls_handshake_failures_total",
            "TLS handshakes that failed, by reason (protocol_version, no_shared_cipher, "
            "http_on_https, peer_alert, closed, aborted, other).",
            ["reason"],
            registry=registry,
        )
        self.certificates = Gauge(
            "fastedge_transport_tls_certificates",
            "Certificates loaded from the certificate directory (the default included).",
            registry=registry,
        )
        self.cert_load_errors = Counter(
            "fastedge_transport_tls_certificate_load_errors_total",
            "Certificate files that could not be loaded (the previous certificate stays in use).",
            registry=registry,
        )
        self.cert_expiry = Gauge(
            "fastedge_transport_tls_certificate_expiry_timestamp_seconds",
            "When each loaded certificate expires (Unix time), by certificate name.",
            ["name"],
            registry=registry,
        )


class ConnectionMetrics:
    """Client connections by listener and protocol (h1, h2, ws)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.opened = Counter(
            "fastedge_transport_connections_total",
            "Connections by listener and protocol: h1 and h2 once known (after the TLS "
            "handshake on https), ws when an HTTP/1.1 connection upgrades to WebSocket.",
            ["listener", "protocol"],
            registry=registry,
        )
        self.open = Gauge(
            "fastedge_transport_open_connections",
            "Connections open now, by listener and protocol (tls = handshake not done yet).",
            ["listener", "protocol"],
            registry=registry,
        )
        #: ``opened_by(listener, protocol)``, ``open_by(listener, protocol)``:
        #: the children, looked up once (every connection moves between them).
        self.opened_by = label_children(self.opened)
        self.open_by = label_children(self.open)


class LimitMetrics:
    """What the connection limits and request deadlines did."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "fastedge_http_connections_refused_total",
            "Client connections closed as soon as accepted, by reason: per_ip, per_prefix "
            "(too many from one address or network) or ceiling (http.max_connections).",
            ["reason"],
            registry=registry,
        )
        # Looked up once: a flood of refusals would pay labels() each time.
        self.refused_by = {reason: self.refused.labels(reason) for reason in ("per_ip", "per_prefix", "ceiling")}
        self.ceiling = Gauge(
            "fastedge_http_connection_ceiling",
            "Client connections the listeners accept at once (0: no ceiling).",
            registry=registry,
        )
        self.accepting = Gauge(
            "fastedge_http_accepting",
            "1 while the listeners accept connections, 0 while paused at the ceiling.",
            registry=registry,
        )
        self.accept_pauses = Counter(
            "fastedge_http_accept_pauses_total",
            "Times the listeners stopped accepting because the ceiling was reached.",
            registry=registry,
        )
        self.timeouts = Counter(
            "fastedge_http_request_timeouts_total",
            "HTTP/1.1 requests answered 408 and closed, by phase: headers (not all "
            "received within http.header_timeout_seconds), body (no progress within "
            "http.body_timeout_seconds).",
            ["phase"],
            registry=registry,
        )
        self.close_aborts = Counter(
            "fastedge_http_close_aborts_total",
            "Connections aborted because the client did not read what was left to send "
            "within http.close_timeout_seconds of the node closing it.",
            registry=registry,
        )
        self.accepting.set(1)


class DrainMetrics:
    """A clean stop's drain of the client connections (:mod:`fastedge.http.drain`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Gauge(
            "fastedge_http_drain_seconds",
            "How long the last drain took, from the listeners closing to the last connection gone.",
            registry=registry,
        )
        self.closed = Counter(
            "fastedge_http_drain_connections_total",
            "Client connections a drain ended: idle (closed once nothing was in flight on them),"
            " aborted (still open at http.drain_seconds).",
            ["how"],
            registry=registry,
        )
