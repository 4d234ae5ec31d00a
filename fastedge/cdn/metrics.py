"""Metrics of the media CDN (``fastedge_cdn_*``). Never labelled by tenant
or key: those are unbounded, and would mix tenants in one place."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class CdnMetrics:
    """Counters and gauges of the cache, its fills and the origin."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits = Counter(
            "fastedge_cdn_hits_total",
            "Requests answered from the cache, by tier (memory, disk).",
            ["tier"],
            registry=registry,
        )
        self.hit_memory = self.hits.labels("memory")
        self.hit_disk = self.hits.labels("disk")
        self.misses = Counter(
            "fastedge_cdn_misses_total",
            "Requests that needed the origin (not cached, or stale and revalidated).",
            ["reason"],
            registry=registry,
        )
        self.coalesced = Counter(
            "fastedge_cdn_coalesced_waits_total",
            "Requests that joined a fetch already in flight instead of starting one.",
            registry=registry,
        )
        self.negative_hits = Counter(
            "fastedge_cdn_negative_hits_total",
            "Requests answered 404 from the negative cache (a recent origin 404).",
            registry=registry,
        )
        self.stale = Counter(
            "fastedge_cdn_stale_served_total",
            "Stale copies served because the origin failed, by failure (error, timeout).",
            ["reason"],
            registry=registry,
        )
        self.revalidations = Counter(
            "fastedge_cdn_revalidations_total",
            "Conditional fetches of stale copies, by outcome (not_modified, changed, gone, failed).",
            ["outcome"],
            registry=registry,
        )
        self.served_bytes = Counter(
            "fastedge_cdn_served_bytes_total",
            "Body bytes sent to clients, by where they came from (memory, disk, origin, peer).",
            ["source"],
            registry=registry,
        )
        self.served_memory = self.served_bytes.labels("memory")
        self.served_disk = self.served_bytes.labels("disk")
        self.fetched_bytes = Counter(
            "fastedge_cdn_fetched_bytes_total",
            "Bytes received from sources (origin, peer).",
            ["source"],
            registry=registry,
        )
        self.peer_fallbacks = Counter(
            "fastedge_cdn_peer_fallbacks_total",
            "Fills that went to the origin because the peer that had the object failed.",
            registry=registry,
        )
        self.evictions = Counter(
            "fastedge_cdn_evictions_total",
            "Objects removed from the disk cache, by reason (size, purge, gone).",
            ["reason"],
            registry=registry,
        )
        self.evicted_bytes = Counter(
            "fastedge_cdn_evicted_bytes_total",
            "Bytes removed from the disk cache, by reason.",
            ["reason"],
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "fastedge_cdn_cache_bytes",
            "Bytes of object data held, by tier (disk, memory).",
            ["tier"],
            registry=registry,
        )
        self.cache_objects = Gauge(
            "fastedge_cdn_cache_objects",
            "Objects held, by tier (disk, memory).",
            ["tier"],
            registry=registry,
        )
        self.origin_latency = Histogram(
            "fastedge_cdn_origin_request_duration_seconds",
            "Time from sending a request to the origin to its response headers, by "
            "operation (get, put, head, list, delete) and outcome (status code, timeout, error).",
            ["operation", "outcome"],
            buckets=_LATENCY,
            registry=registry,
        )
        self.fill_failures = Counter(
            "fastedge_cdn_fill_failures_total",
            "Downloads not stored, by reason (short_body, checksum, timeout, error, too_large, superseded).",
            ["reason"],
            registry=registry,
        )
        self.uploads = Counter(
            "fastedge_cdn_uploads_total",
            "Uploads through the tenant API, by outcome (stored, refused, origin_error).",
            ["outcome"],
            registry=registry,
        )
        self.purges = Counter(
            "fastedge_cdn_purges_total",
            "Purges applied, by kind (key, prefix) and where they came from (local, remote).",
            ["kind", "origin"],
            registry=registry,
        )
        self.purged_objects = Counter(
            "fastedge_cdn_purged_objects_total",
            "Cached objects removed by purges.",
            registry=registry,
        )
        self.thread_media = Counter(
            "fastedge_cdn_thread_media_checks_total",
            "Access checks of media under threads/<id>/, by result (allowed, refused, not_found, error).",
            ["result"],
            registry=registry,
        )
        self.origin_deletes = Counter(
            "fastedge_cdn_origin_deletes_total",
            "Objects deleted at the origin (media delete, tenant delete), by outcome (deleted, error).",
            ["outcome"],
            registry=registry,
        )
