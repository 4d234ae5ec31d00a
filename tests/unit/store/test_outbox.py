"""The webhook outbox's event statements: the JSON objects built in SQL (the
one thing SQLite and PostgreSQL spell differently there), and what a real
SQLite makes of them. The contract suite runs the statements on both
backends (``test_webhook_*``)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store import outbox as ob
from fastedge.store.db import POSTGRESQL, SQLITE, Sql
from fastedge.store.model import WebhookEvent

# Text a store column can hold: no NUL (PostgreSQL text cannot hold one)
# and no lone surrogate (neither driver can encode one as UTF-8; a fresh
# clone's run drew "\ud800" and sqlite3 refused it before any SQL ran).
_text = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30)
_keys = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}", fullmatch=True)
_scalars = st.one_of(st.none(), st.integers(-(2**62), 2**62), _text)
_objects = st.recursive(
    st.dictionaries(_keys, _scalars, max_size=4),
    lambda inner: st.dictionaries(_keys, st.one_of(_scalars, inner), max_size=4),
    max_leaves=12,
)


def _sqlite_json(fields: dict[str, Any]) -> Any:
    """``fields`` built as JSON by a real SQLite, read back."""
    text, values = (Sql("SELECT") + ob.json_text(ob.sql_object(SQLITE, fields))).render(SQLITE)
    with sqlite3.connect(":memory:") as conn:
        return json.loads(conn.execute(text, values).fetchone()[0])


class SqlObjectTests(SynchronousTestCase):
    def test_function_per_backend(self) -> None:
        """PostgreSQL builds the object with ``json_build_object``, SQLite with
        ``json_object``; every Python value is a parameter cast to its type
        (PostgreSQL must know it), named after its key's path."""
        fields = {"comment": {"id": Sql("comments.id"), "text": "hi", "createdAt": 5, "parentId": None}}
        text, values = ob.sql_object(POSTGRESQL, fields).render(POSTGRESQL)
        self.assertEqual(
            text,
            "json_build_object( 'comment', json_build_object( 'id', comments.id , 'text',"
            " CAST(%(ob_json_comment_text)s AS TEXT) , 'createdAt', CAST(%(ob_json_comment_createdAt)s AS BIGINT) ,"
            " 'parentId', NULL ) )",
        )
        self.assertEqual(values, {"ob_json_comment_text": "hi", "ob_json_comment_createdAt": 5})
        text, _ = ob.sql_object(SQLITE, fields).render(SQLITE)
        self.assertTrue(text.startswith("json_object( 'comment', json_object( 'id', comments.id ,"), text)

    @given(_objects)
    def test_sqlite_builds_the_same_json(self, fields: dict[str, Any]) -> None:
        """Whatever the text, numbers and nesting, SQLite's JSON is the object
        given."""
        self.assertEqual(_sqlite_json(fields), fields)

    def test_no_booleans(self) -> None:
        """A boolean would be 0/1 in SQLite's JSON and ``true`` in
        PostgreSQL's: refused."""
        self.assertRaises(TypeError, ob.sql_object, SQLITE, {"closed": False})

    def test_keys_are_plain_words(self) -> None:
        """A key is written into the SQL text: anything but a plain word is
        refused."""
        self.assertRaises(ValueError, ob.sql_object, SQLITE, {"it's": 1})


class EmitTests(SynchronousTestCase):
    def test_condition_parameters_must_agree(self) -> None:
        """A caller's condition naming a parameter the statement uses with
        another value is refused, never silently given one of them."""
        which = Sql("comments.id = :ob_tenant_id", ob_tenant_id="c1")
        self.assertRaises(
            ValueError, ob.emit_for_comments, "t1", WebhookEvent.COMMENT_REMOVED, "p", which, 1, status="x", extra={}
        )
