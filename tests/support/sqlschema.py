"""What a SQL backend's database holds, read from its own catalog (no
SQLAlchemy): the tests compare the schema the store's migrations build
with :data:`EXPECTED`, the description of the schema SQLAlchemy's
``create_all`` built before the migrations became frozen SQL text.

When a new migration changes the schema, write the new description with
``python -m tests.support.sqlschema`` (it migrates a fresh SQLite file and
a schema on the test PostgreSQL server) and review the difference.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from typing import Any

#: The checked-in description: ``{"sqlite": [...], "postgresql": {...}}``.
EXPECTED_PATH = os.path.join(os.path.dirname(__file__), "..", "data", "store_schema.json")

Description = Any


def expected() -> dict[str, Description]:
    """The checked-in description of the store's schema in both dialects."""
    with open(EXPECTED_PATH, encoding="utf-8") as f:
        described: dict[str, Description] = json.load(f)
    return described


def normalize(sql: str) -> str:
    """``sql`` without ``--`` comments and with each run of whitespace made
    one space: the same tokens compare equal however they are laid out."""
    return re.sub(r"\s+", " ", re.sub(r"--[^\n]*", "", sql)).strip()


def describe_sqlite(path: str) -> Description:
    """Every object of the SQLite database at ``path``: [type, name, table,
    its normalized CREATE text (``None`` for an index SQLite made for a
    UNIQUE or PRIMARY KEY constraint)]. SQLite keeps its schema as exactly
    this text, so equal descriptions are equal schemas."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    finally:
        db.close()
    return [[kind, name, table, None if sql is None else normalize(sql)] for kind, name, table, sql in rows]


#: PostgreSQL's catalog of the session's schema (``current_schema()``), one
#: query per aspect; definitions come from the server's own deparsers.
_POSTGRESQL_QUERIES = {
    "columns": """
        SELECT table_name, column_name, ordinal_position, data_type, character_maximum_length,
            numeric_precision, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = current_schema()
        ORDER BY table_name, ordinal_position""",
    "constraints": """
        SELECT t.relname, c.conname, c.contype::text, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
        WHERE t.relnamespace = current_schema()::regnamespace
        ORDER BY t.relname, c.conname""",
    "indexes": """
        SELECT tablename, indexname, replace(indexdef, current_schema() || '.', '')
        FROM pg_indexes WHERE schemaname = current_schema()
        ORDER BY tablename, indexname""",
    "sequences": """
        SELECT s.sequence_name, s.data_type, s.start_value, s.minimum_value, s.maximum_value,
            s.increment, s.cycle_option, t.relname, a.attname
        FROM information_schema.sequences s
        JOIN pg_class q ON q.relname = s.sequence_name AND q.relnamespace = current_schema()::regnamespace
        LEFT JOIN pg_depend d ON d.objid = q.oid AND d.deptype = 'a'
            AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
        LEFT JOIN pg_class t ON t.oid = d.refobjid
        LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE s.sequence_schema = current_schema()
        ORDER BY s.sequence_name""",
}


def describe_postgresql(dsn: str) -> Description:
    """The tables of the schema a session on ``dsn`` works in (its
    ``search_path``): columns, constraints, indexes and sequences (with the
    column owning each), schema names left out so that two schemas
    compare."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return {
            aspect: [list(row) for row in conn.execute(query).fetchall()]
            for aspect, query in _POSTGRESQL_QUERIES.items()
        }


def dump(described: dict[str, Description]) -> str:
    """``described`` as JSON, one row a line (a change reads as a diff)."""

    def rows(items: list[Any], indent: str) -> str:
        return "[\n" + ",\n".join(indent + json.dumps(item) for item in items) + "\n" + indent[:-1] + "]"

    postgresql = ",\n".join(
        '  "{}": {}'.format(aspect, rows(items, "   ")) for aspect, items in described["postgresql"].items()
    )
    return '{{\n "sqlite": {},\n "postgresql": {{\n{}\n }}\n}}\n'.format(rows(described["sqlite"], "  "), postgresql)


def _main() -> None:  # pragma: no cover - run by hand after a migration
    import tempfile

    from twisted.internet.task import Clock

    from fastedge.store.postgresql import PostgresStore
    from fastedge.store.sqlite import SQLiteStore
    from fastedge.testing.fakes import run_inline

    from .postgres import postgres_dsn, shared_postgres

    def migrated(store: Any) -> None:
        # run_inline: the store's Deferreds have fired on return.
        for d in (store.open(), store.close()):
            failures: list[Any] = []
            d.addErrback(failures.append)
            if failures:
                failures[0].raiseException()

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "schema.sqlite")
        migrated(SQLiteStore(path, run=run_inline, clock=Clock()))
        sqlite = describe_sqlite(path)
    cluster = shared_postgres()
    cluster.execute("primary", "CREATE SCHEMA describe")
    try:
        dsn = postgres_dsn(cluster.servers["primary"], "describe")
        migrated(PostgresStore([dsn], None, run=run_inline, clock=Clock()))
        postgresql = describe_postgresql(dsn)
    finally:
        cluster.execute("primary", "DROP SCHEMA describe CASCADE")
    with open(EXPECTED_PATH, "w", encoding="utf-8") as f:
        f.write(dump({"sqlite": sqlite, "postgresql": postgresql}))


if __name__ == "__main__":
    _main()
