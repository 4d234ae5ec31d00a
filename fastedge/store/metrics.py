"""Metrics of the store child."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from .model import ReadPreference

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class StoreMetrics:
    """Store call latency by backend, read preference and operation."""

    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        self._backend = backend
        self.call_seconds = Histogram(
            "fastedge_store_call_duration_seconds",
            "Time a store call spends in the database, by read preference.",
            ["backend", "read_preference", "operation"],
            buckets=_BUCKETS,
            registry=registry,
        )

    def observe(self, operation: str, read_preference: ReadPreference, seconds: float) -> None:
        """Record one call (thread-safe; called from the store's threads)."""
        self.call_seconds.labels(self._backend, read_preference.value, operation).observe(seconds)
