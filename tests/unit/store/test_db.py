"""The SQL backends' statement text: placeholders, lists, composition, and
what a real SQLite makes of the rendered text."""

from __future__ import annotations

import sqlite3

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.db import POSTGRESQL, SQLITE, Rows, Sql, join, row_type

_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
# Text a driver can send: no lone surrogate (not encodable as UTF-8).
_storable = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
_values = st.one_of(st.none(), st.integers(-(2**62), 2**62), _storable, st.booleans())


class RenderTests(SynchronousTestCase):
    def test_placeholders_per_backend(self) -> None:
        statement = Sql("SELECT * FROM t WHERE a = :a AND b = :b", a=1, b="x")
        self.assertEqual(statement.render(SQLITE), ("SELECT * FROM t WHERE a = :a AND b = :b", {"a": 1, "b": "x"}))
        self.assertEqual(
            statement.render(POSTGRESQL), ("SELECT * FROM t WHERE a = %(a)s AND b = %(b)s", {"a": 1, "b": "x"})
        )

    def test_casts_quotes_and_percent_signs_are_text(self) -> None:
        statement = Sql("SELECT x::text, ':no', \"a:b\", 'it''s :no' FROM t WHERE y LIKE '%|a|%' AND z = :z", z=2)
        self.assertEqual(
            statement.render(POSTGRESQL)[0],
            "SELECT x::text, ':no', \"a:b\", 'it''s :no' FROM t WHERE y LIKE '%%|a|%%' AND z = %(z)s",
        )
        self.assertEqual(
            statement.render(SQLITE)[0],
            "SELECT x::text, ':no', \"a:b\", 'it''s :no' FROM t WHERE y LIKE '%|a|%' AND z = :z",
        )

    def test_lists(self) -> None:
        statement = Sql("DELETE FROM t WHERE id IN :ids", ids=["a", "b"])
        self.assertEqual(
            statement.render(SQLITE), ("DELETE FROM t WHERE id IN (:ids__0, :ids__1)", {"ids__0": "a", "ids__1": "b"})
        )
        self.assertEqual(Sql("SELECT 1 WHERE 1 IN :ids", ids=()).render(SQLITE), ("SELECT 1 WHERE 1 IN (NULL)", {}))

    def test_not_in_an_empty_list_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            Sql("SELECT 1 WHERE 1 NOT IN :ids", ids=[]).render(SQLITE)

    def test_a_missing_or_an_unused_value_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            Sql("SELECT :a").render(SQLITE)
        with self.assertRaises(ValueError):
            Sql("SELECT 1", a=1).render(POSTGRESQL)

    def test_composition(self) -> None:
        statement = Sql("SELECT * FROM t WHERE") + join([Sql("a = :a", a=1), Sql("b = :b", b=2)], " AND ")
        self.assertEqual(statement.render(SQLITE), ("SELECT * FROM t WHERE a = :a AND b = :b", {"a": 1, "b": 2}))
        self.assertEqual((Sql("x = :a", a=1) + Sql("OR y = :a", a=1)).params, {"a": 1})
        with self.assertRaises(ValueError):
            Sql("x = :a", a=1) + Sql("y = :a", a=2)

    def test_repr_never_shows_values(self) -> None:
        self.assertNotIn("secret", repr(Sql("SELECT :k", k="secret")))


class SqliteTests(SynchronousTestCase):
    """The rendered text on a real SQLite."""

    def setUp(self) -> None:
        self.db = sqlite3.connect(":memory:")
        self.addCleanup(self.db.close)

    def run_sql(self, statement: Sql) -> list[tuple[object, ...]]:
        text, values = statement.render(SQLITE)
        return self.db.execute(text, values).fetchall()

    @given(st.dictionaries(_names, _values, min_size=1, max_size=6))
    def test_values_come_back_as_given(self, values: dict[str, object]) -> None:
        names = sorted(values)
        statement = Sql("SELECT " + ", ".join(":" + n for n in names), **values)
        expected = tuple(int(v) if isinstance(v, bool) else v for v in (values[n] for n in names))
        self.assertEqual(self.run_sql(statement), [expected])

    @given(st.lists(st.integers(0, 20), max_size=8), st.lists(st.integers(0, 20), max_size=8))
    def test_in_a_list(self, table: list[int], wanted: list[int]) -> None:
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS t (x INTEGER)")
        self.db.execute("DELETE FROM t")
        self.db.executemany("INSERT INTO t VALUES (?)", [(x,) for x in table])
        got = self.run_sql(Sql("SELECT x FROM t WHERE x IN :wanted ORDER BY x", wanted=wanted))
        self.assertEqual([x for (x,) in got], sorted(x for x in table if x in wanted))


class RowsTests(SynchronousTestCase):
    def test_access(self) -> None:
        row = row_type(("id", "n"))
        rows = Rows([row("a", 1), row("b", 2)], 2, returns_rows=True)
        self.assertEqual((rows.first().id, rows.scalar(), rows.scalars(), len(rows)), ("a", "a", ["a", "b"], 2))
        with self.assertRaises(LookupError):
            rows.one()
        empty = Rows([], 0, returns_rows=True)
        self.assertEqual((empty.first(), empty.scalar()), (None, None))
