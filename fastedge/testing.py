"""Test helpers we maintain and ship: fakes at the edges, factories, runners.

Kept in the package (not under ``tests/``) so every test module, and the
test suites of plugins, use one copy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred

_T = TypeVar("_T")


def run_inline(fn: Callable[[], _T]) -> Deferred[_T]:
    """A store runner that calls the blocking function right away.

    Unit tests use it with a real database so store calls resolve
    synchronously (``successResultOf``) without threads or a running reactor.
    """
    return maybeDeferred(fn)


class HeldRunner:
    """A store runner that, while :attr:`holding`, holds every call until
    :meth:`release` (otherwise it runs them at once, like :func:`run_inline`).

    With a real (SQLite) store it lets a test see what happens while
    database calls are in flight (coalescing, a connection closing meanwhile)
    without threads, sleeps or a running reactor.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[[], object], Deferred[object]]] = []
        self.holding = False

    def __call__(self, fn: Callable[[], _T]) -> Deferred[_T]:
        if not self.holding:
            return maybeDeferred(fn)
        d: Deferred[_T] = Deferred()
        self.calls.append((fn, d))  # type: ignore[arg-type]
        return d

    def release(self) -> int:
        """Run every held call (and any made meanwhile); returns how many ran."""
        ran = 0
        while self.calls:
            fn, d = self.calls.pop(0)
            maybeDeferred(fn).chainDeferred(d)
            ran += 1
        return ran


def sqlite_store(
    path: str,
    *,
    clock: object,
    run: Callable[[Callable[[], _T]], Deferred[_T]] = run_inline,
) -> Any:
    """A migrated :class:`~fastedge.store.sqlite.SQLiteStore` at ``path``.

    :param run: :func:`run_inline` (the default: calls finish at once) or a
        :class:`HeldRunner` (not holding while the store opens).
    """
    from .store.sqlite import SQLiteStore

    store = SQLiteStore(path, run=run, clock=clock)  # type: ignore[arg-type]
    store.open()
    return store


class LiveNode:
    """The live subsystem of one node on a real SQLite store, for tests.

    :ivar service: a :class:`~fastedge.pubsub.service.LiveService` (not started).
    :ivar api: the comment API wired to it (``build_api``).
    :ivar site: the node's Site (``/api``, ``/live``, ...).
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Any,
        run: Any = run_inline,
        live_overrides: dict[str, Any] | None = None,
    ) -> None:
        import dataclasses

        from .api.resource import build_api
        from .config import load_config
        from .metrics.registry import new_registry
        from .pubsub.service import make_service
        from .web import build_site

        cfg = load_config(None, {"node.data_dir": path, "node.id": "test-node"})
        self.cfg = dataclasses.replace(
            cfg, live=dataclasses.replace(cfg.live, **(live_overrides or {}))
        )
        self.clock = clock
        self.registry = new_registry()
        self.store = sqlite_store(
            os.path.join(path, "test.sqlite3"), clock=clock, run=run
        )
        self.service = make_service(
            self.cfg.live,
            reactor=clock,
            registry=self.registry,
            store=self.store,
            node_id="test-node",
        )
        self.api = build_api(
            self.cfg.api,
            store=self.store,
            clock=clock,
            registry=self.registry,
            live=self.service.publisher,
            viewer_token_max_age_seconds=self.cfg.live.viewer_token_max_age_seconds,
        )
        self.service.use_viewer_tokens(self.api.viewer_tokens)
        # Loads the session key (from the data directory) and starts the
        # credit flusher on ``clock``.
        self.api.service.startService()
        self.site = build_site(
            self.cfg.node,
            self.cfg.http,
            reactor=clock,
            registry=self.registry,
            store=self.store,
            store_ready=lambda: True,
            api=self.api.resource,
            children=lambda: [],
            live=self.service.resource,
        )

    @property
    def live(self) -> Any:
        """The :class:`~fastedge.pubsub.live.Live` the transports use."""
        return self.service.live

    @property
    def hub(self) -> Any:
        """The node's :class:`~fastedge.pubsub.hub.Hub`."""
        return self.service.hub

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample from this node's registry (0 when absent)."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0
