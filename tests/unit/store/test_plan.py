"""Write plans as SQL text: what their steps render to, and the checks'
meaning on a real SQLite (the store contract runs whole plans on SQLite and
PostgreSQL)."""

from __future__ import annotations

import itertools
import json
import sqlite3

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.db import POSTGRESQL, SQLITE, Sql
from fastedge.store.errors import Stale
from fastedge.store.model import CommentStatus, Expect, NewPost, NewSession, SessionPoster, UserPoster
from fastedge.store.plan import NewIds, Plan, Require, check_expected, exists_where, post

_GROUPS = st.sampled_from([None, ("staff",), ("a", "b")])
_SIGN_IN = st.sampled_from([None, True, False])


class ExistsWhereTests(SynchronousTestCase):
    def test_table_name_and_condition(self) -> None:
        """With a table's name, ``exists_where`` is an ``EXISTS`` subquery
        around the one condition, keeping its parameters."""
        found = exists_where("comments", Sql("tenant_id = :tenant_id AND id = :id", tenant_id="t", id="c"))
        self.assertEqual(
            found.render(SQLITE),
            (
                "EXISTS (SELECT 1 FROM comments WHERE tenant_id = :tenant_id AND id = :id )",
                {"tenant_id": "t", "id": "c"},
            ),
        )


class PostPlanTests(SynchronousTestCase):
    def test_every_post_shape_renders(self) -> None:
        """Every kind of post (each poster, reply or not, with checks,
        retitle, open only) is a plan of Sql steps that render on both
        backends: no placeholder without its value, no name with two."""
        ids = NewIds(comment="C", thread="T", session="S", author="A", user="U")
        posters: list[NewSession | SessionPoster | UserPoster] = [
            NewSession(),
            SessionPoster("S0"),
            UserPoster("ext", "Ann"),
        ]
        expects = [None, Expect(approved_comment="P", thread_url="u", locked_groups=("g",), session_id="S0")]
        for poster, parent, expect, flag in itertools.product(posters, [None, "P"], expects, [False, True]):
            new = NewPost(
                tenant_id="t",
                url_id="u",
                poster=poster,
                display_name="Ann",
                body_source="hi",
                body_html="<p>hi</p>",
                status=CommentStatus.APPROVED,
                created_ms=1,
                parent_id=parent,
                title="Page",
                retitle=flag,
                open_only=flag,
                expect=expect,
            )
            plan = Plan()
            steps = post(plan, new, ids=ids)
            for step in plan.steps:
                statement = step.condition if isinstance(step, Require) else step
                assert isinstance(statement, Sql)
                for backend in (SQLITE, POSTGRESQL):
                    statement.render(backend)
            existed = plan.steps[steps.existed]
            assert isinstance(existed, Sql)
            self.assertIn("AS existed", existed.text)


class AccessCheckTests(SynchronousTestCase):
    """The check that a thread's access rules are still those the caller
    read, on SQLite (NULL is a value here: no rule)."""

    def setUp(self) -> None:
        self.db = sqlite3.connect(":memory:")
        self.addCleanup(self.db.close)
        self.db.execute("CREATE TABLE threads (id TEXT, tenant_id TEXT, url_id TEXT)")
        self.db.execute("CREATE TABLE thread_access (thread_id TEXT, group_ids TEXT, require_sign_in BOOLEAN)")
        self.db.execute("INSERT INTO threads VALUES ('T', 't', 'u')")

    def holds(self, expect: Expect) -> bool:
        plan = Plan()
        check_expected(plan, "t", expect)
        (step,) = plan.steps
        assert isinstance(step, Require) and isinstance(step.condition, Sql)
        self.assertIsInstance(step.error, Stale)
        text, values = (Sql("SELECT") + step.condition).render(SQLITE)
        return bool(self.db.execute(text, values).fetchone()[0])

    @given(_GROUPS, _SIGN_IN, _GROUPS, _SIGN_IN)
    def test_same_rules_or_stale(
        self,
        stored_groups: tuple[str, ...] | None,
        stored_sign_in: bool | None,
        groups: tuple[str, ...] | None,
        sign_in: bool | None,
    ) -> None:
        """The check holds exactly when the stored rules equal the expected
        ones, a missing rule (NULL) equal only to a missing one."""
        self.db.execute("DELETE FROM thread_access")
        stored = None if stored_groups is None else json.dumps(list(stored_groups))
        self.db.execute("INSERT INTO thread_access VALUES ('T', ?, ?)", (stored, stored_sign_in))
        expect = Expect(thread_url="u", locked_groups=groups, require_sign_in=sign_in)
        self.assertEqual(self.holds(expect), (stored_groups, stored_sign_in) == (groups, sign_in))

    def test_no_rules_row(self) -> None:
        """A thread without an access row (or no thread) has no rules to
        differ from: the check holds whatever the caller expected."""
        self.assertTrue(self.holds(Expect(thread_url="u", locked_groups=("staff",), require_sign_in=True)))
        self.assertTrue(self.holds(Expect(thread_url="elsewhere", locked_groups=None, require_sign_in=None)))
