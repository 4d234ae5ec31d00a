"""Stores for tests: a started SQLite store in a temporary directory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from .fakes import _T, run_inline


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
    from fastedge.store.sqlite import SQLiteStore

    store = SQLiteStore(path, run=run, clock=clock)  # type: ignore[arg-type]
    store.open()
    return store
