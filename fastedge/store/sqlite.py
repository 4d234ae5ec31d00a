# -*- test-case-name: tests.unit.store.test_sqlite -*-
"""The embedded backend: SQLite in the data directory, no server needed.

One file in WAL mode (readers never wait for the writer). Write
transactions start with ``BEGIN IMMEDIATE`` so a writer takes the lock
up front instead of failing half-way when another process (such as
``fastedge-admin``) writes at the same moment; ``busy_timeout`` makes it
wait for that lock rather than fail.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import QueuePool
from twisted.internet.interfaces import IReactorTime

from .sql import Observer, Runner, SqlStore


def sqlite_engine(path: str, *, busy_timeout_seconds: float = 5.0, pool_size: int = 4) -> Engine:
    """An engine for the SQLite file at ``path`` set up as described above."""
    engine = create_engine(
        "sqlite:///" + os.path.abspath(path),
        poolclass=QueuePool,
        pool_size=pool_size,
        max_overflow=0,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_seconds},
    )

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy's "begin" event, below, issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout={}".format(int(busy_timeout_seconds * 1000)))
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("fastedge_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


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
        engine = sqlite_engine(path, busy_timeout_seconds=busy_timeout_seconds, pool_size=pool_size)
        super().__init__(engine, None, run=run, clock=clock, serialize_writes=True, observe=observe)
        self.path = path
