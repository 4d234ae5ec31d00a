# -*- test-case-name: tests.unit.status.test_figures -*-
"""This node's figures for the status page, read from its own metrics
registry (the same numbers ``/metrics`` shows, summed over labels)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figures:
    """What the status page shows of this node (``None``: not measured yet)."""

    requests: int
    slow_requests: int
    #: Request latency from the HTTP histogram (upper bucket bounds, seconds).
    latency_p50: float | None
    latency_p99: float | None
    #: CDN hits over lookups.
    cache_hit_ratio: float | None
    #: The largest replica lag the store reports (seconds).
    replica_lag: float | None


def _samples(families: Iterable[Any], name: str) -> list[Any]:
    return [s for family in families for s in family.samples if s.name == name]


def _quantile(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` of cumulative
    ``buckets`` (``le`` -> count)."""
    if not buckets:
        return None
    total = buckets.get(math.inf, max(buckets.values()))
    if total <= 0:
        return None
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return bound
    return None


def read_figures(families: Iterable[Any]) -> Figures:
    """The figures, from ``registry.collect()``."""
    families = list(families)
    buckets: dict[float, float] = {}
    for s in _samples(families, "fastedge_http_request_duration_seconds_bucket"):
        bound = float(s.labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + s.value
    hits = sum(s.value for s in _samples(families, "fastedge_cdn_hits_total"))
    misses = sum(s.value for s in _samples(families, "fastedge_cdn_misses_total"))
    lags = [s.value for s in _samples(families, "fastedge_store_replica_lag_seconds") if s.value >= 0]
    return Figures(
        requests=int(sum(s.value for s in _samples(families, "fastedge_http_requests_total"))),
        slow_requests=int(sum(s.value for s in _samples(families, "fastedge_http_slow_requests_total"))),
        latency_p50=_quantile(buckets, 0.5),
        latency_p99=_quantile(buckets, 0.99),
        cache_hit_ratio=hits / (hits + misses) if hits + misses > 0 else None,
        replica_lag=max(lags) if lags else None,
    )
