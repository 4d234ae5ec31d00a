"""Metrics of webhook delivery (``fastedge_webhooks_*``). Never labelled by
tenant or endpoint: those are unbounded and would mix tenants in one place."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Every value of the ``outcome`` label (see :class:`~fastedge.webhooks.sender.Result`).
OUTCOMES = ("delivered", "http_error", "gone", "redirect", "timeout", "refused", "proxy_error", "connection_error")


class WebhookMetrics:
    """Counters, gauges and the latency histogram of the delivery worker."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "fastedge_webhooks_attempts_total",
            "Attempts to send a delivery, by outcome (delivered, http_error, gone, redirect, timeout,"
            " refused, proxy_error, connection_error).",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.attempts.labels(outcome)
        self.deliveries = Counter(
            "fastedge_webhooks_deliveries_total",
            "Deliveries settled, by result (delivered; failed: retries ran out or the endpoint was turned off;"
            " lost_lease: sent after this node's lease had expired).",
            ["result"],
            registry=registry,
        )
        for result in ("delivered", "failed", "lost_lease"):
            self.deliveries.labels(result)
        self.retries = Counter(
            "fastedge_webhooks_retries_scheduled_total",
            "Failed attempts that will be tried again later.",
            registry=registry,
        )
        self.disabled = Counter(
            "fastedge_webhooks_endpoints_disabled_total",
            "Endpoints this node turned off (410, or too many failures in a row).",
            registry=registry,
        )
        self.latency = Histogram(
            "fastedge_webhooks_latency_seconds",
            "Time from sending a request to the receiver's answer (or the failure), per attempt.",
            buckets=_LATENCY,
            registry=registry,
        )
        self.in_flight = Gauge(
            "fastedge_webhooks_in_flight",
            "Requests this node has open to receivers now (bounded by webhooks.max_in_flight).",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "fastedge_webhooks_queue_depth",
            "Undelivered deliveries in the outbox of the whole deployment, by state (pending, failed).",
            ["state"],
            registry=registry,
        )
        self.oldest_age = Gauge(
            "fastedge_webhooks_oldest_pending_age_seconds",
            "Age of the oldest pending delivery in the outbox (0: none).",
            registry=registry,
        )
        self.store_errors = Counter(
            "fastedge_webhooks_store_errors_total",
            "Store calls of the delivery worker that failed (claims, results, queue readings); logged.",
            ["operation"],
            registry=registry,
        )
