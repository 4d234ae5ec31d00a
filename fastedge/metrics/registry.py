"""The node's metric registry."""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector

import twisted

from .. import __version__


def new_registry() -> CollectorRegistry:
    """A fresh registry for one node.

    Not prometheus_client's global ``REGISTRY``: several nodes run in one
    process in tests, and each must report only its own figures.
    """
    return CollectorRegistry(auto_describe=True)


def register_process_metrics(registry: CollectorRegistry) -> None:
    """Add what every exporter shows to a node's registry:
    ``fastedge_build_info{version,python,twisted}`` (always 1), the
    process's CPU time, memory, open and maximum descriptors and start time
    (``process_*``, from /proc; absent on systems without it), and
    ``python_info``.

    Only the node's own registry gets them (``fastedge.tap``): one process,
    one set, whatever number of registries tests make.
    """
    build = Gauge(
        "fastedge_build_info",
        "The running fastedge version, with Python's and Twisted's (always 1).",
        ["version", "python", "twisted"],
        registry=registry,
    )
    build.labels(__version__, platform.python_version(), twisted.__version__).set(1)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)


def label_children(metric: Any) -> Callable[..., Any]:
    """``child(*labels)``: a labelled metric's child for those label values,
    kept once made (``labels()`` looks the child up under a lock on every
    call, which a per-request or per-connection hot path pays for nothing).
    For metrics whose children are never removed."""
    children: dict[tuple[str, ...], Any] = {}

    def child(*labels: str) -> Any:
        found = children.get(labels)
        if found is None:
            found = children[labels] = metric.labels(*labels)
        return found

    return child


def label_counter(counter: Any) -> Callable[[str], None]:
    """``count(label)``: one more of a one-label counter (its children
    kept, :func:`label_children`)."""
    child = label_children(counter)

    def count(label: str) -> None:
        child(label).inc()

    return count
