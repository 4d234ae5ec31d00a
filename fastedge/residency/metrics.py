"""Metrics of data residency (``fastedge_residency_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class ResidencyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.misdirected = Counter(
            "fastedge_residency_misdirected_total",
            "Requests for another deployment's tenant, answered 421, by kind of path "
            "(api, embed, media, live, manage).",
            ["kind"],
            registry=registry,
        )
        self.lookups = Counter(
            "fastedge_residency_lookups_total",
            "Tenant-to-deployment lookups, by result (hit: from memory; local: this deployment's store; "
            "remote: another deployment claimed it; unknown: nobody; error: the store or the mesh failed).",
            ["result"],
            registry=registry,
        )
