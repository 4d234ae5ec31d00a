# -*- test-case-name: tests.unit.store.test_sqlite -*-
"""The embedded backend: SQLite in the data directory, no server needed.

One file in WAL mode (readers never wait for the writer). Write
transactions start with ``BEGIN IMMEDIATE`` so a writer takes the lock
up front instead of failing half-way when another process (such as
``fastedge-admin``) writes at the same moment; ``busy_timeout`` makes it
wait for that lock rather than fail. Reads run in a deferred ``BEGIN``
(one snapshot for all of a call's statements) ended by ``ROLLBACK``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet.interfaces import IReactorTime

from .db import SQLITE, Conn, DatabaseError, translate
from .model import ReadPreference
from .pool import Pool
from .sql import Observer, Runner, SqlStore


def _connect(path: str, busy_timeout_seconds: float) -> sqlite3.Connection:
    """A connection set up as the module docstring says.

    :raises DatabaseError: (ours) the file cannot be opened or is no database.
    """
    raw = None
    try:
        # isolation_level=None: the store issues BEGIN and COMMIT itself.
        raw = sqlite3.connect(path, timeout=busy_timeout_seconds, check_same_thread=False, isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=NORMAL")
        raw.execute("PRAGMA foreign_keys=ON")
        raw.execute("PRAGMA busy_timeout={}".format(int(busy_timeout_seconds * 1000)))
    except sqlite3.Error as e:
        if raw is not None:
            raw.close()
        raise (translate(sqlite3, e) or DatabaseError(e)) from e
    return raw


def _reset(raw: Any) -> bool:
    if raw.in_transaction:
        raw.execute("ROLLBACK")
    return True


def sqlite_pool(path: str, *, busy_timeout_seconds: float = 5.0, pool_size: int = 4) -> Pool:
    """Connections to the SQLite file at ``path``, set up as described above."""
    absolute = os.path.abspath(path)
    return Pool(lambda: _connect(absolute, busy_timeout_seconds), _reset, size=pool_size)


class SQLiteStore(SqlStore):
    """:class:`~fastedge.store.interfaces.IStore` in one SQLite file."""

    backend = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        run: Runner,
        clock: IReactorTime,
        busy_timeout_seconds: float = 5.0,
        pool_size: int = 4,
        observe: Observer | None = None,
    ) -> None:
        pool = sqlite_pool(path, busy_timeout_seconds=busy_timeout_seconds, pool_size=pool_size)
        super().__init__(pool, None, run=run, clock=clock, serialize_writes=True, observe=observe)
        self.path = path

    @contextmanager
    def _reading(self, read_preference: ReadPreference) -> Iterator[Conn]:
        # One copy: PRIMARY and NEAREST read the same file. The pool's
        # reset ends the read's transaction (ROLLBACK) when it comes back.
        with self._primary.connection() as raw:
            conn = Conn(raw, SQLITE, sqlite3)
            conn.run_text("BEGIN")
            yield conn

    @contextmanager
    def _writing(self) -> Iterator[Conn]:
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self._primary.connection() as raw:
                conn = Conn(raw, SQLITE, sqlite3)
                conn.run_text("BEGIN IMMEDIATE")
                # A raise leaves the transaction to the pool's reset
                # (ROLLBACK), still under the write lock.
                yield conn
                conn.run_text("COMMIT")
        finally:
            if lock is not None:
                lock.release()
