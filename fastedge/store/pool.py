# -*- test-case-name: tests.unit.store.test_pool -*-
"""A small pool of DB-API connections for the store's worker threads.

Why ours: the SQL backends need the same few things from a pool for
``sqlite3`` and psycopg alike: connections made on first use (a
constructor does no I/O, and no background thread runs), at most ``size``
kept idle and ``size + overflow`` open, a connection reset on its way back
(an open transaction rolled back) and dropped if it broke, and
:meth:`Pool.dispose` after a failover so no connection to the old primary
is used again. psycopg's own pool covers only psycopg and runs maintenance
threads; this is ~100 lines.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.logger import Logger

_log = Logger()

#: How long a checkout waits for a connection when all are in use.
CHECKOUT_TIMEOUT_SECONDS = 30.0


class PoolExhausted(Exception):
    """Every connection stayed in use for the whole checkout timeout."""


class Pool:
    """Connections made by ``connect``.

    :param reset: called on a connection coming back; returns whether it
        can be used again (it rolls back what is open, or says the
        connection broke).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        reset: Callable[[Any], bool],
        *,
        size: int,
        overflow: int = 0,
        timeout: float = CHECKOUT_TIMEOUT_SECONDS,
    ) -> None:
        self._connect = connect
        self._reset = reset
        self._size = size
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(size + overflow)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        #: Bumped by dispose: a connection made before it is closed on return.
        self._generation = 0
        self._made: dict[int, int] = {}

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A connection for the duration of the block."""
        if not self._slots.acquire(timeout=self._timeout):
            raise PoolExhausted("no database connection free after {} s".format(self._timeout))
        try:
            raw = self._checkout()
        except BaseException:
            self._slots.release()
            raise
        try:
            yield raw
        finally:
            try:
                self._checkin(raw)
            finally:
                self._slots.release()

    def _checkout(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            generation = self._generation
        raw = self._connect()
        with self._lock:
            self._made[id(raw)] = generation
        return raw

    def _checkin(self, raw: Any) -> None:
        try:
            usable = self._reset(raw)
        except Exception as e:
            # Dropped, not reused: the next checkout makes a fresh one.
            _log.warn("a database connection failed its reset and was closed: {error}", error=type(e).__name__)
            usable = False
        with self._lock:
            keep = usable and self._made.get(id(raw)) == self._generation and len(self._idle) < self._size
            if keep:
                self._idle.append(raw)
                return
            self._made.pop(id(raw), None)
        _close(raw)

    def dispose(self) -> None:
        """Close the idle connections; those in use close when they come back."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
            for raw in idle:
                self._made.pop(id(raw), None)
        for raw in idle:
            _close(raw)


def _close(raw: Any) -> None:
    try:
        raw.close()
    except Exception as e:
        # A connection that already broke: nothing left to release.
        _log.debug("closing a database connection failed: {error}", error=type(e).__name__)
