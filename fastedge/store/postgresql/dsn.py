# -*- test-case-name: tests.integration.test_postgresql_store -*-
"""Connection strings and engines of the PostgreSQL backend.

What a node needs from a libpq connection string: whether it parses (the
config check, which must never quote it), a form fit for logs (host, port,
database, user: never a password), the string completed with our
defaults, and a pooled SQLAlchemy engine over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import QueuePool

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


def postgres_engine(info: str, *, pool_size: int) -> Engine:
    """A pooled engine over psycopg 3 for the complete connection string ``info``."""
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(info),
        poolclass=QueuePool,
        pool_size=pool_size,
        max_overflow=2,
        # Statement parameters are comment bodies and key hashes: keep them
        # out of error messages, which end up in logs.
        hide_parameters=True,
    )

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # A token is the WAL *write* position after COMMIT; with an
        # asynchronous commit that position could still be before our commit
        # record. One round trip per new pooled connection.
        dbapi_connection.autocommit = True
        try:
            dbapi_connection.execute(
                "SELECT CASE WHEN current_setting('synchronous_commit') = 'off' "
                "THEN set_config('synchronous_commit', 'local', false) END"
            )
        finally:
            dbapi_connection.autocommit = False

    return engine


@dataclass
class Target:
    """One server: its pooled engine, the same in autocommit mode for reads,
    and a redacted name for logs."""

    engine: Engine
    reads: Engine
    info: str
    name: str

    @classmethod
    def make(cls, info: str, pool_size: int) -> Target:
        engine = postgres_engine(info, pool_size=pool_size)
        return cls(
            engine,
            engine.execution_options(isolation_level="AUTOCOMMIT"),
            info,
            redact_dsn(info),
        )
