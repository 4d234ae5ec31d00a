"""Tests for :mod:`fastedge.store.sqlite`: the contract, and the file itself."""

from __future__ import annotations

import base64
import json
import os
import sqlite3

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.errors import BadCursor
from fastedge.store.interfaces import IStore
from fastedge.store.model import CommentStatus, ReadPreference, Sort
from fastedge.store.schema import MIGRATIONS
from fastedge.store.sqlite import SQLiteStore
from fastedge.testing.fakes import run_inline

from .contract_writes import WriteContractMixin

PRIMARY = ReadPreference.PRIMARY


class SQLiteStoreContractTests(WriteContractMixin, SynchronousTestCase):
    """The embedded store keeps the store contract."""

    def make_store(self) -> IStore:
        directory = self.mktemp()
        os.makedirs(directory)
        return SQLiteStore(os.path.join(directory, "fastedge.sqlite"), run=run_inline, clock=Clock())


def _cursor(*values: object) -> str:
    """A cursor in the SQL store's format, holding any JSON values."""
    raw = json.dumps(list(values)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class SQLiteFileTests(SynchronousTestCase):
    """The database file: its mode, its schema and what survives a reopen."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "fastedge.sqlite")
        self.clock = Clock()

    def open_store(self) -> SQLiteStore:
        store = SQLiteStore(self.path, run=run_inline, clock=self.clock)
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        return store

    def query(self, sql: str) -> list[tuple[object, ...]]:
        """Rows of ``sql`` read from the file by a connection of our own."""
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def test_constructor_does_no_io(self) -> None:
        """Making the store creates no file; opening it does."""
        SQLiteStore(self.path, run=run_inline, clock=self.clock)
        self.assertFalse(os.path.exists(self.path))
        self.open_store()
        self.assertTrue(os.path.exists(self.path))

    def test_wal_mode(self) -> None:
        """The file is in write-ahead-log mode, so readers never wait for the writer."""
        self.open_store()
        self.assertEqual(self.query("PRAGMA journal_mode"), [("wal",)])

    def test_reopen_keeps_data(self) -> None:
        """Reopening the file finds the data written before, and applies no
        migration a second time."""
        # Twisted annotates the test case as the async TestCase; any works.
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.clock.advance(1234.5)
        first = self.open_store()
        tenant = self.successResultOf(
            first.create_tenant("Acme", "global", created_ms=1, read_preference=PRIMARY)
        ).value
        self.successResultOf(first.close())
        migrated = [e for e in events if e.get("log_format") == "store schema migrated to {versions}"]
        self.assertEqual([e["versions"] for e in migrated], [list(range(1, len(MIGRATIONS) + 1))])

        self.clock.advance(60)
        second = self.open_store()
        self.assertEqual(self.successResultOf(second.get_tenant(tenant.id, read_preference=PRIMARY)), tenant)
        migrated = [e for e in events if e.get("log_format") == "store schema migrated to {versions}"]
        self.assertEqual(len(migrated), 1)
        self.assertEqual(
            self.query("SELECT version, applied_ms FROM schema_version ORDER BY version"),
            [(v, 1234500) for v in range(1, len(MIGRATIONS) + 1)],
        )

    def test_newer_schema_refuses_to_open(self) -> None:
        """A file whose schema is newer than this software fails ``open()`` with an
        error naming both versions, and is left as it was."""
        store = self.open_store()
        self.successResultOf(store.create_tenant("Acme", "global", created_ms=1, read_preference=PRIMARY))
        self.successResultOf(store.close())
        newer = len(MIGRATIONS) + 1
        conn = sqlite3.connect(self.path)
        with conn:
            conn.execute("INSERT INTO schema_version (version, applied_ms) VALUES (?, 0)", (newer,))
        conn.close()

        failure = self.failureResultOf(SQLiteStore(self.path, run=run_inline, clock=self.clock).open(), RuntimeError)
        self.assertIn("newer", str(failure.value))
        self.assertIn(str(newer), str(failure.value))
        self.assertIn(str(len(MIGRATIONS)), str(failure.value))
        self.assertEqual(self.query("SELECT max(version) FROM schema_version"), [(newer,)])
        self.assertEqual(self.query("SELECT name FROM tenants"), [("Acme",)])

    def test_crafted_cursors(self) -> None:
        """Cursors in the store's own format but with values it never issues
        (numbers too large for the database, unencodable text, deep nesting)
        fail with BadCursor, not with a database error."""
        store = self.open_store()
        tenant = self.successResultOf(
            store.create_tenant("Acme", "global", created_ms=1, read_preference=PRIMARY)
        ).value
        thread = self.successResultOf(store.upsert_thread(tenant.id, "u", created_ms=1, read_preference=PRIMARY)).value
        deep = base64.urlsafe_b64encode(b"[" * 100_000).decode()
        for kind, values in [
            ("threads", (2**63, "x")),
            ("threads", (-(2**63) - 1, "x")),
            ("threads", (1, "\ud800")),
            ("comments", (10**40, "x")),
            ("comments", (1, "\udfff")),
            ("thread-top", (2**64, 1, "x")),
            ("thread-newest", (1, "\ud800x")),
        ]:
            cursor = _cursor(kind, *values)
            self.failureResultOf(
                store.list_threads(tenant.id, limit=1, cursor=cursor, read_preference=PRIMARY), BadCursor
            )
            self.failureResultOf(
                store.list_comments(
                    tenant.id, status=CommentStatus.APPROVED, limit=1, cursor=cursor, read_preference=PRIMARY
                ),
                BadCursor,
            )
            for sort in Sort:
                self.failureResultOf(
                    store.list_thread(tenant.id, thread.id, sort=sort, limit=1, cursor=cursor, read_preference=PRIMARY),
                    BadCursor,
                )
        self.failureResultOf(store.list_threads(tenant.id, limit=1, cursor=deep, read_preference=PRIMARY), BadCursor)
