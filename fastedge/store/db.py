# -*- test-case-name: tests.unit.store.test_db -*-
"""SQL text and the connections it runs on: the SQL backends' own layer
over the DB-API (the standard library's ``sqlite3`` and psycopg 3).

Why not a toolkit (SQLAlchemy Core, which the store used before): it was
~12.7 MiB of a default node's ~83 MiB resident memory (``bench/import_rss.py
--without sqlalchemy``), more than the whole of our own code, to build
statements that are the same few shapes in both dialects we run. The
store's statements are SQL text in the subset SQLite (3.35+) and PostgreSQL
share: ``RETURNING``, ``INSERT ... ON CONFLICT``, ``EXISTS``, scalar
subqueries, ``CASE``. What differed between dialects was only the parameter
style and lists of values, and this module renders both.

A statement is an :class:`Sql`: text with ``:name`` placeholders and the
values for them. Two of them compose with ``+`` (a WHERE clause added only
when a filter is given, a subquery inside a larger statement). A value that
is a list or tuple is a list of values: ``id IN :ids`` renders as
``id IN (:ids__0, :ids__1, ...)``; an empty one as ``IN (NULL)`` (true for
no row); ``NOT IN`` an empty list is refused (its SQL answer, NULL, is not
what anyone means), so callers say what they mean.

Text never holds a value: every value is a parameter, so nothing a client
sends is ever parsed as SQL. Identifiers and SQL fragments in the text are
our own constants.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

#: The backends' names, as :attr:`Conn.backend` says them.
SQLITE = "sqlite"
POSTGRESQL = "postgresql"

# A quoted string or identifier (left as it is), a placeholder, or a percent
# sign (doubled for psycopg, whose placeholders start with one). ``::`` (a
# PostgreSQL cast) is no placeholder.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(?<![:\w]):([A-Za-z_]\w*)|%")
_NOT_IN = re.compile(r"\bNOT\s+IN\s*$", re.IGNORECASE)


class Sql:
    """One statement or a fragment of one: ``text`` and its parameters."""

    __slots__ = ("text", "params")

    def __init__(self, text: str, /, **params: Any) -> None:
        self.text = text
        self.params: Mapping[str, Any] = params

    def __add__(self, other: Sql) -> Sql:
        """The two texts, a space apart, with the parameters of both.

        :raises ValueError: the two give one name different values.
        """
        params = dict(self.params)
        for name, value in other.params.items():
            if name in params and params[name] is not value and params[name] != value:
                raise ValueError("parameter :{} has two values".format(name))
            params[name] = value
        joined = Sql(self.text + " " + other.text)
        joined.params = params
        return joined

    def __repr__(self) -> str:
        # Never the values: they are comment bodies and key hashes.
        return "Sql({!r}, params={})".format(self.text, sorted(self.params))

    def render(self, backend: str) -> tuple[str, dict[str, Any]]:
        """The text in ``backend``'s parameter style and the values for it.

        :raises ValueError: a placeholder without a value, a value without a
            placeholder, or ``NOT IN`` an empty list.
        """
        pieces = _parse(self.text)
        named = backend == SQLITE
        out: list[str] = []
        values: dict[str, Any] = {}
        used: set[str] = set()
        for literal, name in pieces:
            out.append(literal)
            if name is None:
                continue
            if name not in self.params:
                raise ValueError("no value for :{}".format(name))
            used.add(name)
            value = self.params[name]
            if isinstance(value, (list, tuple)):
                if not value:
                    if _NOT_IN.search(literal):
                        raise ValueError("NOT IN an empty list (:{}): say what it means instead".format(name))
                    out.append("(NULL)")
                    continue
                keys = ["{}__{}".format(name, i) for i in range(len(value))]
                values.update(zip(keys, value, strict=True))
                out.append("(" + ", ".join(_placeholder(k, named) for k in keys) + ")")
            else:
                values[name] = value
                out.append(_placeholder(name, named))
        unused = set(self.params) - used
        if unused:
            raise ValueError("values without a placeholder: {}".format(", ".join(sorted(unused))))
        text = "".join(out)
        if named:
            # sqlite3 takes no percent escapes: undo _parse's.
            text = text.replace("%%", "%")
        return text, values


def _placeholder(name: str, named: bool) -> str:
    return ":" + name if named else "%(" + name + ")s"


@lru_cache(maxsize=4096)
def _parse(text: str) -> tuple[tuple[str, str | None], ...]:
    """``text`` cut at its placeholders: (the text before, the name), the
    last piece with no name. Percent signs come out doubled."""
    pieces: list[tuple[str, str | None]] = []
    literal: list[str] = []
    at = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[at : match.start()])
        at = match.end()
        token = match.group(0)
        if token == "%":
            literal.append("%%")
        elif match.group(1) is not None:
            pieces.append(("".join(literal), match.group(1)))
            literal = []
        else:
            literal.append(token.replace("%", "%%"))
    literal.append(text[at:])
    pieces.append(("".join(literal), None))
    return tuple(pieces)


def join(parts: Sequence[Sql], separator: str) -> Sql:
    """``parts`` with ``separator`` between them (``" AND "``, ``", "``)."""
    if not parts:
        raise ValueError("nothing to join")
    out = parts[0]
    for part in parts[1:]:
        out = out + Sql(separator.strip()) + part
    return out


def rows_of_values(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Sql:
    """``(columns) VALUES (...), (...)``: several rows in one ``INSERT``
    (one statement, not one per row), every value a parameter of its own.

    :param rows: non-empty; each row's values in the order of ``columns``.
    """
    if not rows:
        raise ValueError("no rows to insert")
    params: dict[str, Any] = {}
    tuples = []
    for i, row in enumerate(rows):
        names = ["{}_{}".format(column, i) for column in columns]
        params.update(zip(names, row, strict=True))
        tuples.append("(" + ", ".join(":" + name for name in names) + ")")
    return Sql("(" + ", ".join(columns) + ") VALUES " + ", ".join(tuples), **params)


class Rows:
    """What a statement returned: its rows (attribute access by column
    name) and how many rows it changed."""

    __slots__ = ("_rows", "rowcount", "returns_rows")

    def __init__(self, rows: list[Any], rowcount: int, *, returns_rows: bool) -> None:
        self._rows = rows
        self.rowcount = rowcount
        #: Whether the statement returns rows (a SELECT, ``RETURNING``),
        #: even none.
        self.returns_rows = returns_rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any | None:
        """The first row, or ``None``."""
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        """The only row.

        :raises LookupError: none or more than one.
        """
        if len(self._rows) != 1:
            raise LookupError("expected one row, got {}".format(len(self._rows)))
        return self._rows[0]

    def scalar(self) -> Any | None:
        """The first column of the first row, or ``None`` for no row."""
        return self._rows[0][0] if self._rows else None

    def scalars(self) -> list[Any]:
        """The first column of every row."""
        return [row[0] for row in self._rows]


@lru_cache(maxsize=512)
def row_type(names: tuple[str, ...]) -> Any:
    """The row class for a result with these column names (``rename``:
    a name that is no identifier becomes ``_N``, never an error)."""
    return namedtuple("Row", names, rename=True)


class DatabaseError(Exception):
    """The database refused or failed a statement (DB-API's class of the
    same name); ``orig`` is the driver's exception. The store maps these to
    its own errors; the bare class means the database itself is unusable."""

    def __init__(self, orig: BaseException, *, connection_invalidated: bool = False) -> None:
        super().__init__(str(orig))
        self.orig = orig
        #: The connection is gone with it (a broken socket, a server that
        #: shut down): nothing more runs on it.
        self.connection_invalidated = connection_invalidated


class IntegrityError(DatabaseError):
    """A constraint refused the statement (a duplicate key, a foreign key)."""


class OperationalError(DatabaseError):
    """The database could not run the statement now (locked, unreachable,
    a connection that broke)."""


class ProgrammingError(DatabaseError):
    """The statement is wrong for the schema (ours to fix)."""


class DataError(DatabaseError):
    """A value the column cannot hold."""


class InternalError(DatabaseError):
    """The server's own failure (e.g. a read-only transaction)."""


class NotSupportedError(DatabaseError):
    """A feature this database does not have."""


#: DB-API class names, most specific first, and ours for each.
_ERRORS = (
    ("IntegrityError", IntegrityError),
    ("OperationalError", OperationalError),
    ("ProgrammingError", ProgrammingError),
    ("DataError", DataError),
    ("InternalError", InternalError),
    ("NotSupportedError", NotSupportedError),
    ("DatabaseError", DatabaseError),
    # A client-side failure (e.g. a closed connection): unusable now.
    ("InterfaceError", OperationalError),
)


def translate(driver: Any, e: BaseException, *, invalidated: bool = False) -> DatabaseError | None:
    """Our exception for the driver module ``driver``'s exception ``e``
    (``None``: not one of the driver's)."""
    for name, ours in _ERRORS:
        if isinstance(e, getattr(driver, name)):
            return ours(e, connection_invalidated=invalidated)
    return None


class Conn:
    """A DB-API connection of one of the SQL backends, as the store uses it:
    statements in, rows out, the driver's errors as ours."""

    def __init__(self, raw: Any, backend: str, driver: Any) -> None:
        #: The driver's connection (``sqlite3.Connection``,
        #: ``psycopg.Connection``).
        self.raw = raw
        self.backend = backend
        self._driver = driver

    def run(self, statement: Sql) -> Rows:
        """Execute ``statement``; its rows are read at once.

        :raises DatabaseError: (a subclass of) what the database said.
        """
        text, values = statement.render(self.backend)
        return self.run_text(text, values)

    def run_text(self, text: str, values: Mapping[str, Any] | Sequence[Any] = ()) -> Rows:
        """Execute text already in the driver's parameter style."""
        cursor = self.raw.cursor()
        try:
            cursor.execute(text, values)
            description = cursor.description
            if description is None:
                return Rows([], cursor.rowcount, returns_rows=False)
            make = row_type(tuple(column[0] for column in description))._make
            return Rows([make(row) for row in cursor.fetchall()], cursor.rowcount, returns_rows=True)
        except self._driver.Error as e:
            raise self.error(e) from e
        finally:
            cursor.close()

    def error(self, e: BaseException) -> DatabaseError:
        """Our exception for the driver's ``e`` raised on this connection."""
        broken = bool(getattr(self.raw, "broken", False) or getattr(self.raw, "closed", False))
        ours = translate(self._driver, e, invalidated=broken)
        return ours if ours is not None else DatabaseError(e, connection_invalidated=broken)
