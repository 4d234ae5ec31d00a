"""Tests for :mod:`fastedge.store.schema`: versioned migrations."""

from __future__ import annotations

import os
import re

from sqlalchemy import Connection, Engine, inspect, select, text
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store import schema
from fastedge.store.sqlite import sqlite_engine


class MigrateTests(SynchronousTestCase):
    """:func:`~fastedge.store.schema.migrate` on an SQLite database."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.engine: Engine = sqlite_engine(os.path.join(directory, "schema.sqlite"))
        self.addCleanup(self.engine.dispose)

    def recorded(self) -> list[tuple[int, int]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(schema.schema_version.c.version, schema.schema_version.c.applied_ms).order_by(
                    schema.schema_version.c.version
                )
            )
            return [(r.version, r.applied_ms) for r in rows]

    def test_empty_database_is_version_zero(self) -> None:
        """A database that was never migrated is at version 0."""
        with self.engine.begin() as conn:
            self.assertEqual(schema.current_version(conn), 0)

    def test_migrations_apply_in_order(self) -> None:
        """On an empty database every migration runs once, in order, and each is
        recorded with its version and the time given."""
        ran: list[int] = []

        def step(n: int) -> schema.Migration:
            def migration(conn: Connection) -> None:
                # Versions are recorded as they go, inside the one transaction.
                self.assertEqual(schema.current_version(conn), n - 1)
                conn.execute(text(f"CREATE TABLE step_{n} (x INTEGER)"))
                ran.append(n)

            return migration

        steps = [step(n) for n in (1, 2, 3)]
        with self.engine.begin() as conn:
            self.assertEqual(schema.migrate(conn, 500, steps), [1, 2, 3])
        self.assertEqual(ran, [1, 2, 3])
        self.assertEqual(self.recorded(), [(1, 500), (2, 500), (3, 500)])
        self.assertTrue({"step_1", "step_2", "step_3"} <= set(inspect(self.engine).get_table_names()))

    def test_only_new_migrations_apply(self) -> None:
        """A migrated database gets only the migrations added since; with none
        new, nothing runs."""
        ran: list[str] = []
        steps: list[schema.Migration] = [
            lambda conn: ran.append("one"),
            lambda conn: ran.append("two"),
            lambda conn: ran.append("three"),
        ]
        with self.engine.begin() as conn:
            self.assertEqual(schema.migrate(conn, 100, steps[:1]), [1])
        with self.engine.begin() as conn:
            self.assertEqual(schema.migrate(conn, 200, steps), [2, 3])
        with self.engine.begin() as conn:
            self.assertEqual(schema.migrate(conn, 300, steps), [])
        self.assertEqual(ran, ["one", "two", "three"])
        self.assertEqual(self.recorded(), [(1, 100), (2, 200), (3, 200)])

    def test_failed_migration_records_nothing(self) -> None:
        """When a migration fails, the transaction rolls back: neither it nor the
        migrations before it in the same run are recorded."""

        def broken(conn: Connection) -> None:
            raise ValueError("broken migration")

        steps: list[schema.Migration] = [lambda conn: None, broken]
        with self.assertRaises(ValueError):
            with self.engine.begin() as conn:
                schema.migrate(conn, 100, steps)
        with self.engine.begin() as conn:
            self.assertEqual(schema.current_version(conn), 0)

    def test_real_migrations(self) -> None:
        """The released migrations create every table of the schema and are
        recorded as versions 1 to N."""
        with self.engine.begin() as conn:
            applied = schema.migrate(conn, 42)
        self.assertEqual(applied, list(range(1, len(schema.MIGRATIONS) + 1)))
        self.assertEqual(self.recorded(), [(v, 42) for v in applied])
        self.assertEqual(set(inspect(self.engine).get_table_names()), set(schema.metadata.tables))

    def test_newer_database(self) -> None:
        """A database newer than the migrations given is refused with RuntimeError."""
        with self.engine.begin() as conn:
            schema.migrate(conn, 1, [lambda conn: None, lambda conn: None])
        with self.assertRaises(RuntimeError) as caught:
            with self.engine.begin() as conn:
                schema.migrate(conn, 2, [lambda conn: None])
        self.assertIn("newer", str(caught.exception))
        self.assertEqual(self.recorded(), [(1, 1), (2, 1)])

    def test_moderation_upgrade(self) -> None:
        """A database made by version 1 as released (without the moderation
        indexes) gains the moderation tables and indexes from version 2, the
        SSO and thread-access tables from version 3, and ends up like a fresh
        one."""
        with self.engine.begin() as conn:
            schema.migrate(conn, 1, schema.MIGRATIONS[:1])
            conn.execute(text("DROP INDEX comments_author"))
            conn.execute(text("DROP INDEX comments_flagged"))
        with self.engine.begin() as conn:
            self.assertEqual(schema.migrate(conn, 2), [2, 3, 4])
        found = inspect(self.engine)
        self.assertEqual(set(found.get_table_names()), set(schema.metadata.tables))
        self.assertEqual(
            {i["name"] for i in found.get_indexes("comments")},
            {i.name for i in schema.comments.indexes},
        )


class TenantTablesTests(SynchronousTestCase):
    """The tables :meth:`~fastedge.store.sql.SqlStore.delete_tenant` empties."""

    def test_every_tenant_table_is_deleted(self) -> None:
        """Every table with a ``tenant_id`` column is in the deletion list,
        so a table added later cannot keep a deleted tenant's rows."""
        from fastedge.store.sql import _TENANT_TABLES

        with_tenant = {t.name for t in schema.metadata.sorted_tables if "tenant_id" in t.c}
        self.assertEqual(set(_TENANT_TABLES), with_tenant)


class NewIdTests(SynchronousTestCase):
    def test_ids_never_start_with_a_dash(self) -> None:
        """Record ids are argv-safe (a leading ``-`` is an option to
        argparse): 5,000 draws, where 1 in 64 would start with ``-``
        without the rule; every id still matches the public id pattern."""
        from fastedge.store.shared import new_id

        ids = [new_id() for _ in range(5000)]
        self.assertEqual([i for i in ids if i.startswith("-")], [])
        self.assertTrue(all(re.fullmatch(r"[A-Za-z0-9_-]{16}", i) for i in ids))
