"""Metrics of the store child."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


class ReplicationMetrics:
    """What a node sees of a replicated database: the lag of its local
    replica, reads held for a consistency token, reads sent to the primary
    instead of the replica, and changes of primary.

    Updated from the store's threads and the reactor thread alike
    (prometheus_client metrics are thread-safe).
    """

    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        self._backend = backend
        self.lag_bytes = Gauge(
            "fastedge_store_replica_lag_bytes",
            "WAL bytes the local replica has yet to replay, as last measured by this node.",
            ["backend"],
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "fastedge_store_replica_lag_seconds",
            "Age of the newest transaction the local replica has replayed while it is behind "
            "(0 when caught up; NaN when unknown).",
            ["backend"],
            registry=registry,
        )
        self.token_reads = Counter(
            "fastedge_store_token_reads_total",
            "NEAREST reads given a consistency token, by outcome: ready (the replica had it), "
            "waited (it caught up within the bound), fallback (read from the primary).",
            ["backend", "outcome"],
            registry=registry,
        )
        self.token_wait_seconds = Histogram(
            "fastedge_store_token_wait_seconds",
            "Time a NEAREST read waited for the local replica to reach its token.",
            ["backend"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.token_waiting = Gauge(
            "fastedge_store_token_reads_waiting",
            "NEAREST reads waiting right now for the local replica to reach their token.",
            ["backend"],
            registry=registry,
        )
        self.nearest_fallbacks = Counter(
            "fastedge_store_nearest_fallbacks_total",
            "NEAREST reads served by the primary instead of the local replica, by reason "
            "(token_timeout: the replica stayed behind the token for the whole wait; replica_behind: "
            "it did so moments ago and still does, so the read did not wait again; replica_error: it failed).",
            ["backend", "reason"],
            registry=registry,
        )
        self.primary_switches = Counter(
            "fastedge_store_primary_switches_total",
            "Times this node found the primary at another candidate and moved its writes there.",
            ["backend"],
            registry=registry,
        )
        self.primary_searches = Counter(
            "fastedge_store_primary_searches_total",
            "Searches of the candidate list for the writable primary, by result (found, none).",
            ["backend", "result"],
            registry=registry,
        )
        self.primary_candidate = Gauge(
            "fastedge_store_primary_candidate",
            "Index, in the configured candidate list, of the server this node writes to.",
            ["backend"],
            registry=registry,
        )
        self.write_failures = Counter(
            "fastedge_store_write_failures_total",
            "Writes reported failed because the primary was unavailable, by kind "
            "(not_applied, or commit_unknown when it failed during COMMIT).",
            ["backend", "kind"],
            registry=registry,
        )

    def token_read(self, outcome: str, waited_seconds: float) -> None:
        """Count one token read and how long it waited."""
        self.token_reads.labels(self._backend, outcome).inc()
        self.token_wait_seconds.labels(self._backend).observe(waited_seconds)

    def fallback(self, reason: str) -> None:
        self.nearest_fallbacks.labels(self._backend, reason).inc()

    def searched(self, found: bool) -> None:
        self.primary_searches.labels(self._backend, "found" if found else "none").inc()

    def switched(self, index: int) -> None:
        self.primary_switches.labels(self._backend).inc()
        self.primary_candidate.labels(self._backend).set(index)

    def write_failed(self, kind: str) -> None:
        self.write_failures.labels(self._backend, kind).inc()

    def lag(self, lag_bytes: int, lag_seconds: float) -> None:
        self.lag_bytes.labels(self._backend).set(lag_bytes)
        self.lag_seconds.labels(self._backend).set(lag_seconds)
