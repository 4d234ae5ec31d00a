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

from sqlalchemy import ColumnElement, Executable, and_, exists, insert, literal, select, update

from . import schema as s
from .db import Sql
from .errors import InvalidReference, NotFound, Stale, StoreError, ThreadClosed
from .model import AuthorKind, CommentStatus, Expect, NewPost, NewSession, SessionPoster, UserPoster


@dataclass(frozen=True)
class Require:
    """A check inside a write transaction: ``condition`` must be true when
    the step runs, else nothing of the transaction is applied and the call
    fails with ``error``."""

    condition: ColumnElement[bool] | Sql
    error: StoreError


Step = Executable | Require | Sql


@dataclass
class Plan:
    """The steps of one write transaction, in order."""

    steps: list[Step] = field(default_factory=list)

    def add(self, statement: Executable | Sql) -> int:
        """Append a statement; returns its index in the batch's results."""
        self.steps.append(statement)
        return len(self.steps) - 1

    def require(self, condition: ColumnElement[bool] | Sql, error: StoreError) -> None:
        """Append a check (see :class:`Require`)."""
        self.steps.append(Require(condition, error))


def exists_where(table: Any, *where: Any) -> ColumnElement[bool]:
    """``EXISTS (SELECT 1 FROM table WHERE ...)``."""
    return exists(select(literal(1)).select_from(table).where(*where))


def require_tenant(plan: Plan, tenant_id: str) -> None:
    """The tenant must exist (``NotFound("tenant")``)."""
    plan.require(Sql("EXISTS (SELECT 1 FROM tenants WHERE id = :tenant_id)", tenant_id=tenant_id), NotFound("tenant"))


def new_session(plan: Plan, tenant_id: str, *, session_id: str, author_id: str, created_ms: int) -> None:
    """A new anonymous author and its session (the tenant must exist)."""
    plan.add(
        insert(s.authors).values(
            id=author_id, tenant_id=tenant_id, kind=AuthorKind.ANONYMOUS.value, created_ms=created_ms
        )
    )
    plan.add(
        insert(s.anonymous_sessions).values(
            id=session_id, tenant_id=tenant_id, author_id=author_id, created_ms=created_ms
        )
    )


def check_expected(plan: Plan, tenant_id: str, seen: Expect | None) -> None:
    """Checks that what the caller read from a replica still holds on the
    primary (see :class:`~fastedge.store.model.Expect`)."""
    if seen is None:
        return
    if seen.approved_comment is not None:
        c = s.comments.c
        plan.require(
            exists_where(
                s.comments,
                c.tenant_id == tenant_id,
                c.id == seen.approved_comment,
                c.status == CommentStatus.APPROVED.value,
            ),
            NotFound("comment"),
        )
    if seen.thread_url is not None:
        t = s.threads.c
        a = s.thread_access.c
        thread_id = select(t.id).where(t.tenant_id == tenant_id, t.url_id == seen.thread_url).scalar_subquery()
        groups = None if seen.locked_groups is None else json.dumps(list(seen.locked_groups))
        # Access rules as they were when the caller's checks ran: a thread
        # missing then has no rules now, or the caller checked the wrong ones.
        changed = exists_where(
            s.thread_access,
            a.thread_id == thread_id,
            ~and_(
                a.group_ids.is_not_distinct_from(groups),
                a.require_sign_in.is_not_distinct_from(seen.require_sign_in),
            ),
        )
        plan.require(~changed, Stale("the thread's access rules changed"))
    if seen.session_id is not None:
        sess = s.anonymous_sessions.c
        plan.require(
            exists_where(s.anonymous_sessions, sess.tenant_id == tenant_id, sess.id == seen.session_id),
            NotFound("session"),
        )


def comment_insert(
    plan: Plan,
    *,
    comment_id: str,
    tenant_id: str,
    thread_id: Any,
    author_id: Any,
    parent_id: str | None,
    display_name: str,
    body_source: str,
    body_html: str,
    status: CommentStatus,
    created_ms: int,
) -> int:
    """Checks the parent (when a reply), inserts the comment and counts it;
    ``thread_id`` and ``author_id`` may be values or scalar subqueries.

    :returns: the index of the step whose rows are the new comment's.
    """
    c = s.comments.c
    root: Any = comment_id
    if parent_id is not None:
        plan.require(exists_where(s.comments, c.tenant_id == tenant_id, c.id == parent_id), NotFound("parent comment"))
        plan.require(
            exists_where(s.comments, c.tenant_id == tenant_id, c.id == parent_id, c.thread_id == thread_id),
            InvalidReference("the parent comment belongs to another thread"),
        )
        root = select(c.root_id).where(c.tenant_id == tenant_id, c.id == parent_id).scalar_subquery()
    inserted = plan.add(
        insert(s.comments)
        .values(
            id=comment_id,
            tenant_id=tenant_id,
            thread_id=thread_id,
            parent_id=parent_id,
            root_id=root,
            author_id=author_id,
            display_name=display_name,
            body_source=body_source,
            body_html=body_html,
            status=status.value,
            created_ms=created_ms,
            edited_ms=None,
            like_count=0,
            flag_count=0,
        )
        .returning(*s.comments.c)
    )
    if status is CommentStatus.APPROVED:
        t = s.threads.c
        plan.add(
            update(s.threads)
            .where(t.tenant_id == tenant_id, t.id == thread_id)
            .values(comment_count=t.comment_count + 1)
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


def post(plan: Plan, new: NewPost, *, ids: NewIds) -> PostSteps:
    """The plan of :meth:`IStore.post_comment`: the poster's session (new or
    checked) or user, the thread (created when missing), the comment.

    :param ids: ids for what the plan may create.
    """
    t = s.threads.c
    tenant_id = new.tenant_id
    where_thread = and_(t.tenant_id == tenant_id, t.url_id == new.url_id)
    require_tenant(plan, tenant_id)
    check_expected(plan, tenant_id, new.expect)
    poster = new.poster
    author: Any
    if isinstance(poster, NewSession):
        new_session(plan, tenant_id, session_id=ids.session, author_id=ids.author, created_ms=new.created_ms)
        author = ids.author
    elif isinstance(poster, SessionPoster):
        sess = s.anonymous_sessions.c
        plan.require(
            exists_where(s.anonymous_sessions, sess.tenant_id == tenant_id, sess.id == poster.session_id),
            NotFound("session"),
        )
        author = (
            select(sess.author_id).where(sess.tenant_id == tenant_id, sess.id == poster.session_id).scalar_subquery()
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
    existed = plan.add(select(exists_where(s.threads, where_thread).label("existed")))
    plan.add(
        insert(s.threads).from_select(
            ["id", "tenant_id", "url_id", "title", "closed", "created_ms", "comment_count"],
            select(
                literal(ids.thread),
                literal(tenant_id),
                literal(new.url_id),
                literal(new.title or ""),
                literal(False),
                literal(new.created_ms),
                literal(0),
            ).where(~exists_where(s.threads, where_thread)),
        )
    )
    if new.retitle and new.title:
        plan.add(update(s.threads).where(where_thread, t.title != new.title).values(title=new.title))
    if new.open_only:
        plan.require(~exists_where(s.threads, where_thread, t.closed.is_(True)), ThreadClosed())
    thread = select(t.id).where(where_thread).scalar_subquery()
    inserted = comment_insert(
        plan,
        comment_id=ids.comment,
        tenant_id=tenant_id,
        thread_id=thread,
        author_id=author,
        parent_id=new.parent_id,
        display_name=new.display_name,
        body_source=new.body_source,
        body_html=new.body_html,
        status=new.status,
        created_ms=new.created_ms,
    )
    return PostSteps(existed=existed, comment=inserted)


def user_upsert(
    plan: Plan,
    tenant_id: str,
    external_id: str,
    display_name: str,
    *,
    user_id: str,
    author_id: str,
    created_ms: int,
) -> Any:
    """The user of ``external_id`` (created with a new author when
    missing; its display name updated): returns its author id as a scalar
    subquery."""
    u = s.users.c
    where = and_(u.tenant_id == tenant_id, u.external_id == external_id)
    missing = ~exists_where(s.users, where)
    plan.add(
        insert(s.authors).from_select(
            ["id", "tenant_id", "kind", "created_ms"],
            select(literal(author_id), literal(tenant_id), literal(AuthorKind.USER.value), literal(created_ms)).where(
                missing
            ),
        )
    )
    plan.add(
        insert(s.users).from_select(
            ["id", "tenant_id", "external_id", "author_id", "display_name", "created_ms"],
            select(
                literal(user_id),
                literal(tenant_id),
                literal(external_id),
                literal(author_id),
                literal(display_name),
                literal(created_ms),
            ).where(missing),
        )
    )
    plan.add(update(s.users).where(where, u.display_name != display_name).values(display_name=display_name))
    return select(u.author_id).where(where).scalar_subquery()


def rows_of(results: Sequence[list[Any] | None], index: int) -> list[Any]:
    """The rows of the step at ``index`` of a batch's results."""
    rows = results[index]
    assert rows is not None, "a step that returns rows"
    return rows
