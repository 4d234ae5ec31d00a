"""The node's metric registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def new_registry() -> CollectorRegistry:
    """A fresh registry for one node.

    Not prometheus_client's global ``REGISTRY``: several nodes run in one
    process in tests, and each must report only its own figures.
    """
    return CollectorRegistry(auto_describe=True)
