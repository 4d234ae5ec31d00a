"""The store's connection pool: reuse, bounds, reset, broken connections
and dispose, with real SQLite connections."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.db import SQLITE, Conn, IntegrityError, OperationalError, Sql
from fastedge.store.pool import Pool, PoolExhausted


class _Made:
    """Real in-memory SQLite connections, counted."""

    def __init__(self) -> None:
        self.made: list[sqlite3.Connection] = []

    def connect(self) -> sqlite3.Connection:
        raw = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self.made.append(raw)
        return raw


def _reset(raw: Any) -> bool:
    if raw.in_transaction:
        raw.execute("ROLLBACK")
    return True


def _closed(raw: sqlite3.Connection) -> bool:
    try:
        raw.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


class PoolTests(SynchronousTestCase):
    def test_connections_are_made_on_first_use_and_reused(self) -> None:
        made = _Made()
        pool = Pool(made.connect, _reset, size=2)
        self.assertEqual(made.made, [])
        with pool.connection() as first:
            pass
        with pool.connection() as again:
            self.assertIs(again, first)
        self.assertEqual(len(made.made), 1)

    def test_an_open_transaction_is_rolled_back_on_return(self) -> None:
        made = _Made()
        pool = Pool(made.connect, _reset, size=1)
        with pool.connection() as raw:
            raw.execute("CREATE TABLE t (x INTEGER)")
            raw.execute("BEGIN")
            raw.execute("INSERT INTO t VALUES (1)")
        with pool.connection() as raw:
            self.assertFalse(raw.in_transaction)
            self.assertEqual(raw.execute("SELECT count(*) FROM t").fetchone(), (0,))

    def test_a_connection_that_fails_its_reset_is_closed(self) -> None:
        made = _Made()
        pool = Pool(made.connect, lambda raw: False, size=1)
        with pool.connection() as first:
            pass
        self.assertTrue(_closed(first))
        with pool.connection() as second:
            self.assertIsNot(second, first)

    def test_dispose_closes_idle_ones_now_and_busy_ones_on_return(self) -> None:
        made = _Made()
        pool = Pool(made.connect, _reset, size=2)
        with pool.connection() as busy:
            with pool.connection() as idle:
                pass
            pool.dispose()
            self.assertTrue(_closed(idle))
            self.assertFalse(_closed(busy))
        self.assertTrue(_closed(busy))
        with pool.connection() as fresh:
            self.assertNotIn(fresh, (idle, busy))

    def test_a_full_pool_makes_a_checkout_wait_then_fail(self) -> None:
        pool = Pool(_Made().connect, _reset, size=1, timeout=0.0)
        with pool.connection():
            with self.assertRaises(PoolExhausted):
                with pool.connection():
                    pass
        with pool.connection():
            pass

    def test_a_failed_connect_gives_its_slot_back(self) -> None:
        def refuse() -> Any:
            raise sqlite3.OperationalError("unable to open database file")

        pool = Pool(refuse, _reset, size=1, timeout=0.0)
        for _ in range(3):
            with self.assertRaises(sqlite3.OperationalError):
                with pool.connection():
                    pass

    @given(st.lists(st.integers(1, 4), min_size=1, max_size=12), st.integers(1, 3), st.integers(0, 2))
    def test_never_more_open_than_allowed_nor_more_kept_than_size(
        self, bursts: list[int], size: int, overflow: int
    ) -> None:
        """Threads take connections in bursts: at most ``size + overflow``
        are ever open at once, at most ``size`` stay idle."""
        made = _Made()
        pool = Pool(made.connect, _reset, size=size, overflow=overflow, timeout=5.0)
        limit = size + overflow
        lock = threading.Lock()
        inside = [0, 0]

        def use(hold: threading.Event) -> None:
            with pool.connection():
                with lock:
                    inside[0] += 1
                    inside[1] = max(inside[1], inside[0])
                hold.wait(5)
                with lock:
                    inside[0] -= 1

        for burst in bursts:
            hold = threading.Event()
            threads = [threading.Thread(target=use, args=(hold,)) for _ in range(min(burst, limit))]
            for thread in threads:
                thread.start()
            hold.set()
            for thread in threads:
                thread.join(10)
        self.assertLessEqual(inside[1], limit)
        open_now = [raw for raw in made.made if not _closed(raw)]
        self.assertLessEqual(len(open_now), size)


class ConnTests(SynchronousTestCase):
    """:class:`Conn` on a real SQLite: rows by name, driver errors as ours."""

    def setUp(self) -> None:
        raw = sqlite3.connect(":memory:", isolation_level=None)
        self.addCleanup(raw.close)
        self.conn = Conn(raw, SQLITE, sqlite3)
        self.conn.run(Sql("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER NOT NULL)"))

    def test_rows_by_column_name(self) -> None:
        inserted = self.conn.run(
            Sql("INSERT INTO t (id, n) VALUES (:id, :n) RETURNING id, n * 2 AS twice", id="a", n=2)
        )
        self.assertEqual((inserted.returns_rows, inserted.one().id, inserted.one().twice), (True, "a", 4))
        changed = self.conn.run(Sql("UPDATE t SET n = n + 1 WHERE id IN :ids", ids=["a", "b"]))
        self.assertEqual((changed.returns_rows, changed.rowcount), (False, 1))

    def test_driver_errors_arrive_as_ours(self) -> None:
        self.conn.run(Sql("INSERT INTO t (id, n) VALUES ('a', 1)"))
        with self.assertRaises(IntegrityError) as caught:
            self.conn.run(Sql("INSERT INTO t (id, n) VALUES ('a', 1)"))
        self.assertIsInstance(caught.exception.orig, sqlite3.IntegrityError)
        with self.assertRaises(OperationalError):
            self.conn.run(Sql("SELECT * FROM missing"))
