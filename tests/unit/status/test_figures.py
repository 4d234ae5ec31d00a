"""This node's figures, from a real metrics registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.trial.unittest import SynchronousTestCase

from fastedge.status.figures import read_figures


class FiguresTests(SynchronousTestCase):
    def test_from_registry(self) -> None:
        registry = CollectorRegistry()
        latency = Histogram(
            "fastedge_http_request_duration_seconds", "", ["route"], buckets=(0.005, 0.05, 0.5), registry=registry
        )
        for _ in range(98):
            latency.labels("/a").observe(0.001)
        latency.labels("/b").observe(0.04)
        latency.labels("/b").observe(0.4)
        Counter("fastedge_http_requests_total", "", ["code"], registry=registry).labels("200").inc(100)
        Counter("fastedge_http_slow_requests_total", "", ["route"], registry=registry).labels("/b").inc(2)
        Counter("fastedge_cdn_hits_total", "", registry=registry).inc(3)
        Counter("fastedge_cdn_misses_total", "", registry=registry).inc(1)
        lag = Gauge("fastedge_store_replica_lag_seconds", "", ["server"], registry=registry)
        lag.labels("a").set(0.5)
        lag.labels("b").set(-1)
        figures = read_figures(registry.collect())
        self.assertEqual(figures.requests, 100)
        self.assertEqual(figures.slow_requests, 2)
        self.assertEqual(figures.latency_p50, 0.005)
        self.assertEqual(figures.latency_p99, 0.05)
        self.assertEqual(figures.cache_hit_ratio, 0.75)
        self.assertEqual(figures.replica_lag, 0.5)

    def test_nothing_yet(self) -> None:
        figures = read_figures(CollectorRegistry().collect())
        self.assertEqual(
            (figures.requests, figures.latency_p50, figures.cache_hit_ratio, figures.replica_lag), (0, None, None, None)
        )
