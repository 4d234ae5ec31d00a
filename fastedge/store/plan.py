# -*- test-case-name: tests.unit.store.test_sqlite -*-
"""Write transactions written as a list of standalone steps.

A far primary makes every statement that waits for the one before it cost
a round trip. A :class:`Plan` is a write transaction whose statements do not
wait for each other: each names what it needs in SQL (a scalar subquery,
``INSERT ... SELECT ... WHERE NOT EXISTS``) instead of a value Python read a
moment before, and each check the transaction depends on is a
:class:`Require` step that abandons the whole transaction when it does not
hold. A backend may then send the whole plan, its COMMIT included, at once:
the PostgreSQL backend does (one round trip: psycopg's pipeline mode and a
small server-side function that raises for a failed check). The embedded
SQLite backend runs the steps one by one and raises the failed check's error
itself; the statements are the same.

Adding a step to a plan (an outbox row, an audit row) costs no round trip.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Only for the steps and checks of code not yet moved to Sql text (the
# store's move off SQLAlchemy, issue 15): the types below and exists_where's
# SQLAlchemy form. Both go when nothing passes SQLAlchemy expressions here.
from .db import Sql
from .errors import InvalidReference, NotFound, Stale, StoreError, ThreadClosed
from .model import AuthorKind, CommentStatus, Expect, NewPost, NewSession, SessionPoster, UserPoster


@dataclass(frozen=True)
class Require:
    """A check inside a write transaction: ``condition`` must be true when
    the step runs, else nothing of the transaction is applied and the call
    fails with ``error``."""

    condition: Sql
    error: StoreError


Step = Sql | Require


@dataclass
class Plan:
    """The steps of one write transaction, in order."""

    steps: list[Step] = field(default_factory=list)

    def add(self, statement: Sql) -> int:
        """Append a statement; returns its index in the batch's results."""
        self.steps.append(statement)
        return len(self.steps) - 1

    def require(self, condition: Sql, error: StoreError) -> None:
        """Append a check (see :class:`Require`)."""
        self.steps.append(Require(condition, error))


def exists_where(table: str, condition: Sql) -> Sql:
    """``EXISTS (SELECT 1 FROM table WHERE condition)`` (its negation:
    ``Sql("NOT") + exists_where(...)``)."""
    return Sql("EXISTS (SELECT 1 FROM " + table + " WHERE") + condition + Sql(")")


def _value(name: str, value: str | Sql) -> Sql:
    """``value`` as an operand: a parameter named ``name``, or the scalar
    subquery it is."""
    return value if isinstance(value, Sql) else Sql(":" + name, **{name: value})


def require_tenant(plan: Plan, tenant_id: str) -> None:
    """The tenant must exist (``NotFound("tenant")``)."""
    plan.require(Sql("EXISTS (SELECT 1 FROM tenants WHERE id = :tenant_id)", tenant_id=tenant_id), NotFound("tenant"))


def new_session(plan: Plan, tenant_id: str, *, session_id: str, author_id: str, created_ms: int) -> None:
    """A new anonymous author and its session (the tenant must exist)."""
    plan.add(
        Sql(
            "INSERT INTO authors (id, tenant_id, kind, created_ms) VALUES (:author_id, :tenant_id, :kind, :created_ms)",
            author_id=author_id,
            tenant_id=tenant_id,
            kind=AuthorKind.ANONYMOUS.value,
            created_ms=created_ms,
        )
    )
    plan.add(
        Sql(
            "INSERT INTO anonymous_sessions (id, tenant_id, author_id, created_ms)"
            " VALUES (:session_id, :tenant_id, :author_id, :created_ms)",
            session_id=session_id,
            tenant_id=tenant_id,
            author_id=author_id,
            created_ms=created_ms,
        )
    )


def _session_exists(tenant_id: str, session_id: str) -> Sql:
    return Sql(
        "EXISTS (SELECT 1 FROM anonymous_sessions WHERE tenant_id = :tenant_id AND id = :session_id)",
        tenant_id=tenant_id,
        session_id=session_id,
    )


#: Whether a thread's access rules differ from those a caller checked:
#: ``IS NOT DISTINCT FROM`` spelled for SQLite before 3.39 too (NULL the
#: same as NULL, never unknown). A thread missing then has no rules now.
_ACCESS_CHANGED = (
    "EXISTS (SELECT 1 FROM thread_access WHERE thread_id ="
    " (SELECT id FROM threads WHERE tenant_id = :tenant_id AND url_id = :thread_url)"
    " AND NOT (COALESCE(group_ids = :groups, group_ids IS NULL AND CAST(:groups AS TEXT) IS NULL)"
    " AND COALESCE(require_sign_in = :require_sign_in,"
    " require_sign_in IS NULL AND CAST(:require_sign_in AS BOOLEAN) IS NULL)))"
)


def check_expected(plan: Plan, tenant_id: str, seen: Expect | None) -> None:
    """Checks that what the caller read from a replica still holds on the
    primary (see :class:`~fastedge.store.model.Expect`)."""
    if seen is None:
        return
    if seen.approved_comment is not None:
        plan.require(
            Sql(
                "EXISTS (SELECT 1 FROM comments WHERE tenant_id = :tenant_id AND id = :comment_id AND status = :status)",
                tenant_id=tenant_id,
                comment_id=seen.approved_comment,
                status=CommentStatus.APPROVED.value,
            ),
            NotFound("comment"),
        )
    if seen.thread_url is not None:
        groups = None if seen.locked_groups is None else json.dumps(list(seen.locked_groups))
        # Access rules as they were when the caller's checks ran.
        changed = Sql(
            _ACCESS_CHANGED,
            tenant_id=tenant_id,
            thread_url=seen.thread_url,
            groups=groups,
            require_sign_in=seen.require_sign_in,
        )
        plan.require(Sql("NOT") + changed, Stale("the thread's access rules changed"))
    if seen.session_id is not None:
        plan.require(_session_exists(tenant_id, seen.session_id), NotFound("session"))


#: A comment row's columns, as the store reads them.
COMMENT_COLUMNS = (
    "id, tenant_id, thread_id, parent_id, root_id, author_id, display_name, body_source, body_html, status,"
    " created_ms, edited_ms, like_count, flag_count"
)


def comment_insert(
    plan: Plan,
    *,
    comment_id: str,
    tenant_id: str,
    thread_id: str | Sql,
    author_id: str | Sql,
    parent_id: str | None,
    display_name: str,
    body_source: str,
    body_html: str,
    status: CommentStatus,
    created_ms: int,
) -> int:
    """Checks the parent (when a reply), inserts the comment and counts it;
    ``thread_id`` and ``author_id`` may be values or scalar subqueries
    (parenthesized :class:`Sql`).

    :returns: the index of the step whose rows are the new comment's.
    """
    thread = _value("thread_id", thread_id)
    root = Sql(":comment_id", comment_id=comment_id)
    if parent_id is not None:
        parent = Sql(
            "comments WHERE tenant_id = :tenant_id AND id = :parent_id", tenant_id=tenant_id, parent_id=parent_id
        )
        plan.require(Sql("EXISTS (SELECT 1 FROM") + parent + Sql(")"), NotFound("parent comment"))
        plan.require(
            Sql("EXISTS (SELECT 1 FROM") + parent + Sql("AND thread_id =") + thread + Sql(")"),
            InvalidReference("the parent comment belongs to another thread"),
        )
        root = Sql("(SELECT root_id FROM") + parent + Sql(")")
    inserted = plan.add(
        Sql(
            "INSERT INTO comments (" + COMMENT_COLUMNS + ") VALUES (:comment_id, CAST(:tenant_id AS TEXT),",
            comment_id=comment_id,
            tenant_id=tenant_id,
        )
        + thread
        + Sql(", CAST(:parent_id AS TEXT),", parent_id=parent_id)
        + root
        + Sql(",")
        + _value("author_id", author_id)
        + Sql(
            ", :display_name, :body_source, :body_html, :status, :created_ms, NULL, 0, 0) RETURNING " + COMMENT_COLUMNS,
            display_name=display_name,
            body_source=body_source,
            body_html=body_html,
            status=status.value,
            created_ms=created_ms,
        )
    )
    if status is CommentStatus.APPROVED:
        plan.add(
            Sql(
                "UPDATE threads SET comment_count = comment_count + 1 WHERE tenant_id = :tenant_id AND id =",
                tenant_id=tenant_id,
            )
            + thread
        )
    return inserted


@dataclass(frozen=True)
class NewIds:
    """Fresh ids for the records a post may create."""

    comment: str
    thread: str
    session: str
    author: str
    user: str


@dataclass(frozen=True)
class PostSteps:
    """Where a post plan's results are (indexes into the batch's results)."""

    existed: int
    comment: int


#: The thread a post is to (by its URL id).
_THREAD = "tenant_id = :tenant_id AND url_id = :url_id"

#: Creates the thread of a post when missing (every column: the table has
#: no defaults).
_THREAD_INSERT = (
    "INSERT INTO threads (id, tenant_id, url_id, title, closed, created_ms, comment_count)"
    " SELECT CAST(:thread_id AS TEXT), CAST(:tenant_id AS TEXT), CAST(:url_id AS TEXT), CAST(:title AS TEXT),"
    " :closed, :created_ms, 0"
    " WHERE NOT EXISTS (SELECT 1 FROM threads WHERE " + _THREAD + ")"
)


def post(plan: Plan, new: NewPost, *, ids: NewIds) -> PostSteps:
    """The plan of :meth:`IStore.post_comment`: the poster's session (new or
    checked) or user, the thread (created when missing), the comment.

    :param ids: ids for what the plan may create.
    """
    tenant_id = new.tenant_id
    where_thread = Sql(_THREAD, tenant_id=tenant_id, url_id=new.url_id)
    require_tenant(plan, tenant_id)
    check_expected(plan, tenant_id, new.expect)
    poster = new.poster
    author: str | Sql
    if isinstance(poster, NewSession):
        new_session(plan, tenant_id, session_id=ids.session, author_id=ids.author, created_ms=new.created_ms)
        author = ids.author
    elif isinstance(poster, SessionPoster):
        plan.require(_session_exists(tenant_id, poster.session_id), NotFound("session"))
        author = Sql(
            "(SELECT author_id FROM anonymous_sessions WHERE tenant_id = :tenant_id AND id = :session_id)",
            tenant_id=tenant_id,
            session_id=poster.session_id,
        )
    else:
        assert isinstance(poster, UserPoster)
        author = user_upsert(
            plan,
            tenant_id,
            poster.external_id,
            poster.display_name,
            user_id=ids.user,
            author_id=ids.author,
            created_ms=new.created_ms,
        )
    existed = plan.add(Sql("SELECT EXISTS (SELECT 1 FROM threads WHERE") + where_thread + Sql(") AS existed"))
    plan.add(
        Sql(
            _THREAD_INSERT,
            thread_id=ids.thread,
            tenant_id=tenant_id,
            url_id=new.url_id,
            title=new.title or "",
            closed=False,
            created_ms=new.created_ms,
        )
    )
    if new.retitle and new.title:
        plan.add(
            Sql("UPDATE threads SET title = :title WHERE", title=new.title) + where_thread + Sql("AND title <> :title")
        )
    if new.open_only:
        plan.require(Sql("NOT EXISTS (SELECT 1 FROM threads WHERE") + where_thread + Sql("AND closed)"), ThreadClosed())
    inserted = comment_insert(
        plan,
        comment_id=ids.comment,
        tenant_id=tenant_id,
        thread_id=Sql("(SELECT id FROM threads WHERE") + where_thread + Sql(")"),
        author_id=author,
        parent_id=new.parent_id,
        display_name=new.display_name,
        body_source=new.body_source,
        body_html=new.body_html,
        status=new.status,
        created_ms=new.created_ms,
    )
    return PostSteps(existed=existed, comment=inserted)


#: The user of an external id.
_USER = "tenant_id = :tenant_id AND external_id = :external_id"


def user_upsert(
    plan: Plan,
    tenant_id: str,
    external_id: str,
    display_name: str,
    *,
    user_id: str,
    author_id: str,
    created_ms: int,
) -> Sql:
    """The user of ``external_id`` (created with a new author when
    missing; its display name updated): returns its author id as a scalar
    subquery."""
    missing = " WHERE NOT EXISTS (SELECT 1 FROM users WHERE " + _USER + ")"
    plan.add(
        Sql(
            "INSERT INTO authors (id, tenant_id, kind, created_ms)"
            " SELECT CAST(:author_id AS TEXT), CAST(:tenant_id AS TEXT), CAST(:kind AS TEXT), :created_ms" + missing,
            author_id=author_id,
            tenant_id=tenant_id,
            kind=AuthorKind.USER.value,
            created_ms=created_ms,
            external_id=external_id,
        )
    )
    plan.add(
        Sql(
            "INSERT INTO users (id, tenant_id, external_id, author_id, display_name, created_ms)"
            " SELECT CAST(:user_id AS TEXT), CAST(:tenant_id AS TEXT), CAST(:external_id AS TEXT),"
            " CAST(:author_id AS TEXT), CAST(:display_name AS TEXT), :created_ms" + missing,
            user_id=user_id,
            tenant_id=tenant_id,
            external_id=external_id,
            author_id=author_id,
            display_name=display_name,
            created_ms=created_ms,
        )
    )
    plan.add(
        Sql(
            "UPDATE users SET display_name = CAST(:display_name AS TEXT) WHERE "
            + _USER
            + " AND display_name <> :display_name",
            tenant_id=tenant_id,
            external_id=external_id,
            display_name=display_name,
        )
    )
    return Sql("(SELECT author_id FROM users WHERE " + _USER + ")", tenant_id=tenant_id, external_id=external_id)


def rows_of(results: Sequence[list[Any] | None], index: int) -> list[Any]:
    """The rows of the step at ``index`` of a batch's results."""
    rows = results[index]
    assert rows is not None, "a step that returns rows"
    return rows
