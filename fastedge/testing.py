"""Test helpers we maintain and ship: fakes at the edges, factories, runners.

Kept in the package (not under ``tests/``) so every test module, and the
test suites of plugins, use one copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred, maybeDeferred

_T = TypeVar("_T")


def run_inline(fn: Callable[[], _T]) -> Deferred[_T]:
    """A store runner that calls the blocking function right away.

    Unit tests use it with a real database so store calls resolve
    synchronously (``successResultOf``) without threads or a running reactor.
    """
    return maybeDeferred(fn)
