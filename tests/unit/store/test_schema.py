"""Tests for :mod:`fastedge.store.schema`: versioned migrations of frozen
SQL text, and the schema they build (the same SQLAlchemy built)."""

from __future__ import annotations

import os
import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store import schema
from fastedge.store.db import POSTGRESQL, SQLITE, Conn, Sql
from fastedge.store.model import ReadPreference
from fastedge.store.sqlite import SQLiteStore
from fastedge.testing.fakes import run_inline
from tests.support.sqlschema import describe_sqlite, expected


class MigrateTests(SynchronousTestCase):
    """:func:`~fastedge.store.schema.migrate` on an SQLite database."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "schema.sqlite")
        self.store = SQLiteStore(self.path, run=run_inline, clock=Clock())
        self.addCleanup(lambda: self.successResultOf(self.store.close()))

    def recorded(self) -> list[tuple[int, int]]:
        with self.store._reading(ReadPreference.PRIMARY) as conn:
            rows = conn.run(Sql("SELECT version, applied_ms FROM schema_version ORDER BY version"))
            return [(r.version, r.applied_ms) for r in rows]

    def tables(self) -> set[str]:
        with self.store._reading(ReadPreference.PRIMARY) as conn:
            return set(conn.run(Sql("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())

    def test_empty_database_is_version_zero(self) -> None:
        """A database that was never migrated is at version 0."""
        with self.store._writing() as conn:
            self.assertEqual(schema.current_version(conn), 0)

    def test_has_schema(self) -> None:
        """An empty database has no schema, and asking makes none; once
        migrated (even to no version), it has one."""
        self.assertIs(self.successResultOf(self.store.has_schema()), False)
        self.assertIs(self.successResultOf(self.store.has_schema()), False)
        self.assertEqual(self.tables(), set())
        with self.store._writing() as conn:
            schema.migrate(conn, 1, [])
        self.assertIs(self.successResultOf(self.store.has_schema()), True)

    def test_migrations_apply_in_order(self) -> None:
        """On an empty database every migration runs once, in order, and each is
        recorded with its version and the time given."""
        ran: list[int] = []

        def step(n: int) -> schema.Migration:
            def migration(conn: Conn) -> None:
                # Versions are recorded as they go, inside the one transaction.
                self.assertEqual(schema.current_version(conn), n - 1)
                conn.run(Sql("CREATE TABLE step_{} (x INTEGER)".format(n)))
                ran.append(n)

            return migration

        steps = [step(n) for n in (1, 2, 3)]
        with self.store._writing() as conn:
            self.assertEqual(schema.migrate(conn, 500, steps), [1, 2, 3])
        self.assertEqual(ran, [1, 2, 3])
        self.assertEqual(self.recorded(), [(1, 500), (2, 500), (3, 500)])
        self.assertEqual(self.tables(), {"schema_version", "step_1", "step_2", "step_3"})

    def test_only_new_migrations_apply(self) -> None:
        """A migrated database gets only the migrations added since; with none
        new, nothing runs."""
        ran: list[str] = []
        steps: list[schema.Migration] = [
            lambda conn: ran.append("one"),
            lambda conn: ran.append("two"),
            lambda conn: ran.append("three"),
        ]
        with self.store._writing() as conn:
            self.assertEqual(schema.migrate(conn, 100, steps[:1]), [1])
        with self.store._writing() as conn:
            self.assertEqual(schema.migrate(conn, 200, steps), [2, 3])
        with self.store._writing() as conn:
            self.assertEqual(schema.migrate(conn, 300, steps), [])
        self.assertEqual(ran, ["one", "two", "three"])
        self.assertEqual(self.recorded(), [(1, 100), (2, 200), (3, 200)])

    def test_failed_migration_records_nothing(self) -> None:
        """When a migration fails, the transaction rolls back: neither it nor the
        migrations before it in the same run are recorded, nor is what they
        made kept."""

        def made(conn: Conn) -> None:
            conn.run(Sql("CREATE TABLE made (x INTEGER)"))

        def broken(conn: Conn) -> None:
            raise ValueError("broken migration")

        steps: list[schema.Migration] = [made, broken]
        with self.assertRaises(ValueError):
            with self.store._writing() as conn:
                schema.migrate(conn, 100, steps)
        with self.store._writing() as conn:
            self.assertEqual(schema.current_version(conn), 0)
        self.assertEqual(self.tables(), {"schema_version"})

    def test_real_migrations(self) -> None:
        """The released migrations are recorded as versions 1 to N and build,
        object for object and token for token, the schema SQLAlchemy's
        ``create_all`` built (tests/data/store_schema.json)."""
        with self.store._writing() as conn:
            applied = schema.migrate(conn, 42)
        self.assertEqual(applied, list(range(1, len(schema.MIGRATIONS) + 1)))
        self.assertEqual(self.recorded(), [(v, 42) for v in applied])
        self.assertEqual(describe_sqlite(self.path), expected()["sqlite"])

    def test_open_migrates(self) -> None:
        """Opening the store migrates an empty database to the same schema,
        and a second open applies nothing."""
        self.successResultOf(self.store.open())
        self.successResultOf(self.store.open())
        self.assertEqual(self.recorded(), [(v, 0) for v in range(1, len(schema.MIGRATIONS) + 1)])
        self.assertEqual(describe_sqlite(self.path), expected()["sqlite"])

    def test_newer_database(self) -> None:
        """A database newer than the migrations given is refused with RuntimeError."""
        with self.store._writing() as conn:
            schema.migrate(conn, 1, [lambda conn: None, lambda conn: None])
        with self.assertRaises(RuntimeError) as caught:
            with self.store._writing() as conn:
                schema.migrate(conn, 2, [lambda conn: None])
        self.assertIn("newer", str(caught.exception))
        self.assertEqual(self.recorded(), [(1, 1), (2, 1)])

    def test_moderation_upgrade(self) -> None:
        """A database made by version 1 as released (without the moderation
        indexes) gains the moderation tables and indexes from version 2, the
        SSO and thread-access tables from version 3, the webhook tables from
        version 4, and ends up like a fresh one."""
        with self.store._writing() as conn:
            schema.migrate(conn, 1, schema.MIGRATIONS[:1])
            conn.run(Sql("DROP INDEX comments_author"))
            conn.run(Sql("DROP INDEX comments_flagged"))
        with self.store._writing() as conn:
            self.assertEqual(schema.migrate(conn, 2), [2, 3, 4])
        self.assertEqual(describe_sqlite(self.path), expected()["sqlite"])

    def test_upgrade_from_today_version_one(self) -> None:
        """A database made by version 1 as it is now (which makes version 2's
        comment indexes too) upgrades to the same schema."""
        with self.store._writing() as conn:
            schema.migrate(conn, 1, schema.MIGRATIONS[:1])
        with self.store._writing() as conn:
            self.assertEqual(schema.migrate(conn, 2), [2, 3, 4])
        self.assertEqual(describe_sqlite(self.path), expected()["sqlite"])


class FrozenTextTests(SynchronousTestCase):
    """The migrations' SQL text itself."""

    def test_text_is_sent_as_written(self) -> None:
        """Every statement of every migration exists in both dialects and
        renders unchanged: no placeholder or percent sign (in a comment, say)
        that a driver would read as one."""
        statements = [schema._SCHEMA_VERSION, *schema._V1, *schema._V2, *schema._V3, *schema._V4]
        for backend in (SQLITE, POSTGRESQL):
            for statement in statements:
                text = statement if isinstance(statement, str) else statement[backend]
                self.assertEqual(Sql(text).render(backend), (text, {}))
                self.assertNotIn("%", text)


class TenantTablesTests(SynchronousTestCase):
    """The tables :meth:`~fastedge.store.sql.SqlStore.delete_tenant` empties."""

    def test_every_tenant_table_is_deleted(self) -> None:
        """Every table with a ``tenant_id`` column is in the deletion list,
        so a table added later cannot keep a deleted tenant's rows."""
        from fastedge.store.sql import _TENANT_TABLES

        with_tenant = {table for table, column, *_ in expected()["postgresql"]["columns"] if column == "tenant_id"}
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
