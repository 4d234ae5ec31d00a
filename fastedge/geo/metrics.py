"""The ``geo`` child's metrics (``fastedge_geo_*``)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class GeoMetrics:
    """Build time, size and age of the index in use, and rebuild outcomes."""

    def __init__(self, registry: CollectorRegistry, age: Callable[[], float]) -> None:
        self.build_seconds = Gauge(
            "fastedge_geo_index_build_seconds",
            "How long building the index in use took.",
            registry=registry,
        )
        self.networks = Gauge(
            "fastedge_geo_index_networks",
            "Networks (with data) in the index in use.",
            registry=registry,
        )
        self.age = Gauge(
            "fastedge_geo_index_age_seconds",
            "Seconds since the index in use replaced the previous one (-1: no index).",
            registry=registry,
        )
        self.age.set_function(age)
        self.rebuilds = Counter(
            "fastedge_geo_index_rebuilds",
            "Index builds by trigger and outcome.",
            ["trigger", "outcome"],
            registry=registry,
        )
