# -*- test-case-name: tests.unit.api.test_viewers -*-
"""Each reader's own state on the threads they read, kept in memory.

A reader with a session sees the shared page with their own likes and
blocked authors spliced in (:class:`~fastedge.api.pageview.PageView`). Read
from the store for every page view, that state made engaged readers several
times slower than strangers; it changes only when they write. So it is kept
here per viewer (tenant, author), per thread, with the consistency token the
viewer held when it was read:

- a viewer's write through this node drops their entry at once
  (:meth:`ViewerStates.forget`, called with every write's answer);
- every write, through any node, moves the viewer's token forward (their
  cookie carries it), and an entry read before the token the request
  carries is read again: a write made elsewhere is never hidden;
- a page showing comments the entry never looked at (new ones) is read
  again, in one query for the whole page.

Entries are bounded (``api.viewer_cache_entries`` viewers, 16 threads each)
and expire after ``api.viewer_cache_seconds``. Keys always hold the tenant
and the author: one viewer's state is never served to another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from ..expiring import ExpiringMap
from ..store.interfaces import IStore
from ..store.model import ReadPreference, ViewerState

#: Threads remembered per viewer (the most recently read kept).
THREADS_PER_VIEWER = 16


@dataclass(frozen=True)
class _Known:
    checked: frozenset[str]
    state: ViewerState
    token: str | None
    until: float


class ViewerStates:
    """Viewers' states by ``(tenant, author)``, then by thread.

    :param count: called with ``hit``, ``miss`` or ``stale`` per lookup.
    """

    def __init__(
        self,
        store: IStore,
        clock: IReactorTime,
        *,
        ttl_seconds: float,
        max_viewers: int,
        count: Callable[[str], None] = lambda result: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl_seconds
        self._count = count
        self._viewers: ExpiringMap[tuple[str, str], dict[str, _Known]] = ExpiringMap(
            clock, max_entries=max_viewers if ttl_seconds > 0 else 0
        )
        # Writes per viewer, so a read that began before a write is not kept.
        self._writes: ExpiringMap[tuple[str, str], int] = ExpiringMap(clock, max_entries=max(1, max_viewers))

    def state(
        self, tenant_id: str, author_id: str, thread_id: str, comment_ids: Sequence[str], token: str | None
    ) -> Deferred[ViewerState]:
        """The viewer's likes among ``comment_ids`` and the authors they
        block, at least as new as ``token``."""
        key = (tenant_id, author_id)
        threads = self._viewers.get(key)
        known = threads.get(thread_id) if threads is not None else None
        if known is not None:
            fresh = known.until > self._clock.seconds()
            if fresh and known.checked.issuperset(comment_ids) and self._store.token_covers(known.token, token):
                self._count("hit")
                return succeed(known.state)
            self._count("stale")
        else:
            self._count("miss")
        writes = self._writes.get(key, 0)
        d: Deferred[ViewerState] = self._store.viewer_state(
            tenant_id, author_id, comment_ids, read_preference=ReadPreference.NEAREST, token=token
        )

        def keep(state: ViewerState) -> ViewerState:
            if self._writes.get(key, 0) == writes:
                until = self._clock.seconds() + self._ttl
                self._put(key, thread_id, _Known(frozenset(comment_ids), state, token, until))
            return state

        return d.addCallback(keep)

    def forget(self, tenant_id: str, author_id: str) -> None:
        """The viewer wrote: what is kept of them is no longer true."""
        key = (tenant_id, author_id)
        self._viewers.pop(key)
        self._writes.put(key, self._writes.get(key, 0) + 1, self._ttl)

    def _put(self, key: tuple[str, str], thread_id: str, known: _Known) -> None:
        threads: dict[str, Any] = dict(self._viewers.get(key) or {})
        threads.pop(thread_id, None)
        threads[thread_id] = known
        while len(threads) > THREADS_PER_VIEWER:
            threads.pop(next(iter(threads)))
        self._viewers.put(key, threads, self._ttl)
