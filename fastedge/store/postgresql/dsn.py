# -*- test-case-name: tests.integration.test_postgresql_store -*-
"""Connection strings and engines of the PostgreSQL backend.

What a node needs from a libpq connection string: whether it parses (the
config check, which must never quote it), a form fit for logs (host, port,
database, user: never a password), the string completed with our
defaults, and a pool of connections over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..db import DatabaseError, translate
from ..pool import Pool

#: Connection parameters safe to show in logs (never a password).
_SHOWN_PARAMS = ("host", "hostaddr", "port", "dbname", "user", "application_name")


def redact_dsn(dsn: str) -> str:
    """A connection string fit for a log line: host, port, database, user.

    Passwords (and every other parameter) are left out.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable connection string>"
    shown = [f"{k}={params[k]}" for k in _SHOWN_PARAMS if params.get(k)]
    return " ".join(shown) or "<libpq defaults>"


def check_dsn(dsn: str) -> str | None:
    """``None`` if libpq can parse ``dsn``, else a reason that quotes none of it
    (a fragment of the string could be a password)."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error:
        return "not a libpq connection string or postgresql:// URI"
    return None


def conninfo(dsn: str, *, connect_timeout: int, application_name: str, statement_timeout_ms: int) -> str:
    """``dsn`` completed with our defaults; what the DSN sets itself wins.

    TCP keepalives make a vanished primary show up as a broken connection
    within seconds instead of a hung worker thread.
    """
    params: dict[str, Any] = conninfo_to_dict(dsn)
    defaults = {
        "connect_timeout": str(connect_timeout),
        "application_name": application_name,
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
    }
    for key, value in defaults.items():
        params.setdefault(key, value)
    if statement_timeout_ms > 0:
        options = str(params.get("options", ""))
        if "statement_timeout" not in options:
            params["options"] = (options + f" -c statement_timeout={statement_timeout_ms}").strip()
    return make_conninfo(**params)


def _reset(raw: Any) -> bool:
    """Back to the pool: whatever is open rolled back; a broken connection
    (a server that went away) is not kept."""
    if raw.broken or raw.closed:
        return False
    if raw.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        raw.rollback()
    raw.autocommit = False
    return True


def _connect(info: str) -> psycopg.Connection[Any]:
    """A connection to ``info``, in transaction mode.

    :raises DatabaseError: (ours, ``connection_invalidated``) the server
        could not be reached or refused us.
    """
    raw = None
    try:
        raw = psycopg.connect(info, autocommit=True)
        # A token is the WAL *write* position after COMMIT; with an
        # asynchronous commit that position could still be before our commit
        # record. One round trip per new pooled connection.
        raw.execute(
            "SELECT CASE WHEN current_setting('synchronous_commit') = 'off' "
            "THEN set_config('synchronous_commit', 'local', false) END"
        )
        raw.autocommit = False
    except psycopg.Error as e:
        if raw is not None:
            raw.close()
        raise (translate(psycopg, e, invalidated=True) or DatabaseError(e, connection_invalidated=True)) from e
    return raw


def postgres_pool(info: str, *, pool_size: int) -> Pool:
    """Pooled psycopg 3 connections for the complete connection string ``info``.

    Connections come out in transaction mode (psycopg begins a transaction
    with the first statement); a read sets ``autocommit`` for its block.
    """
    return Pool(lambda: _connect(info), _reset, size=pool_size, overflow=2)


@dataclass
class Target:
    """One server: its connection pool and a redacted name for logs."""

    pool: Pool
    info: str
    name: str

    @classmethod
    def make(cls, info: str, pool_size: int) -> Target:
        return cls(postgres_pool(info, pool_size=pool_size), info, redact_dsn(info))
