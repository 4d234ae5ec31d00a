# -*- test-case-name: tests.unit.store.test_sqlite -*-
"""The SQL backends' store: one set of statements for every SQL engine.

The embedded SQLite backend and the replicated PostgreSQL one pass one
contract suite with one set of statements: SQL text in the subset both
speak (:mod:`fastedge.store.db` renders each backend's parameter style),
run on DB-API connections from a pool per server
(:mod:`fastedge.store.pool`). Blocking calls run through a *runner* (a
thread pool in production, a synchronous call in unit tests), so the
reactor thread never waits on the database.

Subclasses choose the connections: :class:`SqlStore` takes the pool that
serves writes and PRIMARY reads and the one that serves NEAREST reads, and
a subclass says how a read and a write transaction begin and end
(:meth:`SqlStore._reading`, :meth:`SqlStore._writing`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, NamedTuple, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from . import db
from . import outbox as ob
from . import schema as s
from .db import Conn, DatabaseError, IntegrityError, OperationalError, Sql, join, rows_of_values
from .errors import (
    AlreadyExists,
    BadCursor,
    InvalidReference,
    LimitReached,
    NotFound,
    StoreUnavailable,
    WrongReadPreference,
)
from .interfaces import IStore, IWebhookStore
from .model import (
    MAX_BULK_IDS,
    AnonymousSession,
    ApiKey,
    AuditEntry,
    Author,
    AuthorHistory,
    AuthorKind,
    Ban,
    BanKind,
    Change,
    Comment,
    CommentStatus,
    CreditUsage,
    Expect,
    Moderated,
    ModerationAction,
    ModerationQueue,
    NewComment,
    NewPost,
    NewSession,
    Page,
    Posted,
    QueueFilter,
    QueueSort,
    ReadPreference,
    RecentComment,
    Sort,
    SsoSecret,
    SsoSecretChange,
    Tenant,
    Thread,
    ThreadPage,
    User,
    UserProfile,
    ViewerState,
    WebhookEvent,
    Written,
)
from .outbox import WebhookStoreMixin
from .plan import (
    NewIds,
    Plan,
    Require,
    Step,
    check_expected,
    comment_insert,
    new_session,
    post,
    require_tenant,
    rows_of,
)
from .pool import Pool, PoolExhausted
from .shared import decode_cursor, encode_cursor, new_id, page_of

_T = TypeVar("_T")


class AuthorHistoryRow(NamedTuple):
    """An author row as :meth:`SqlStore.author_history` reads it."""

    kind: str
    created_ms: int


#: Runs a blocking callable somewhere and returns its result as a Deferred.
Runner = Callable[[Callable[[], Any]], "Deferred[Any]"]

#: Statement-level observer: ``(operation, read_preference, seconds)``.
Observer = Callable[[str, ReadPreference, float], None]


def _require_primary(read_preference: ReadPreference) -> Deferred[Any] | None:
    """A failed Deferred for a write asked to read anywhere but the primary."""
    if read_preference is not ReadPreference.PRIMARY:
        return fail(WrongReadPreference("writes go to the primary; read_preference must be PRIMARY"))
    return None


def _comment(row: Any) -> Comment:
    return Comment(
        id=row.id,
        tenant_id=row.tenant_id,
        thread_id=row.thread_id,
        parent_id=row.parent_id,
        root_id=row.root_id,
        author_id=row.author_id,
        display_name=row.display_name,
        body_source=row.body_source,
        body_html=row.body_html,
        status=CommentStatus(row.status),
        created_ms=row.created_ms,
        edited_ms=row.edited_ms,
        like_count=row.like_count,
        flag_count=row.flag_count,
    )


def _thread(row: Any) -> Thread:
    groups = row.access_groups
    require = row.access_require_sign_in
    return Thread(
        id=row.id,
        tenant_id=row.tenant_id,
        url_id=row.url_id,
        title=row.title,
        closed=bool(row.closed),
        created_ms=row.created_ms,
        comment_count=row.comment_count,
        locked_groups=None if groups is None else tuple(json.loads(groups)),
        require_sign_in=None if require is None else bool(require),
    )


def _threads() -> Sql:
    """``SELECT`` of threads with their access settings (``_thread`` reads
    it), to add a ``WHERE`` to (on ``threads.`` columns: both tables have
    ``tenant_id``)."""
    return Sql(
        "SELECT threads.id, threads.tenant_id, threads.url_id, threads.title, threads.closed, threads.created_ms,"
        " threads.comment_count, thread_access.group_ids AS access_groups,"
        " thread_access.require_sign_in AS access_require_sign_in"
        " FROM threads LEFT OUTER JOIN thread_access ON thread_access.thread_id = threads.id"
    )


def _user(row: Any) -> User:
    """A user from a ``users`` row outer-joined with its profile."""
    profile = None
    if row.profile_author is not None:
        profile = UserProfile(
            email=row.email,
            avatar=row.avatar,
            group_ids=tuple(json.loads(row.group_ids)),
            is_moderator=bool(row.is_moderator),
            is_admin=bool(row.is_admin),
        )
    return User(
        id=row.id,
        tenant_id=row.tenant_id,
        external_id=row.external_id,
        author_id=row.author_id,
        display_name=row.display_name,
        created_ms=row.created_ms,
        profile=profile,
    )


def _users() -> Sql:
    """``SELECT`` of users with their profiles (``_user`` reads it), to add
    a ``WHERE`` to (on ``users.`` columns: both tables have ``tenant_id``
    and ``author_id``)."""
    return Sql(
        "SELECT users.id, users.tenant_id, users.external_id, users.author_id, users.display_name, users.created_ms,"
        " user_profiles.author_id AS profile_author, user_profiles.email, user_profiles.avatar,"
        " user_profiles.group_ids, user_profiles.is_moderator, user_profiles.is_admin"
        " FROM users LEFT OUTER JOIN user_profiles ON user_profiles.user_id = users.id"
    )


def _tenant(row: Any) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        deployment=row.deployment,
        created_ms=row.created_ms,
        settings=json.loads(row.settings),
    )


def _api_key(row: Any) -> ApiKey:
    return ApiKey(id=row.id, tenant_id=row.tenant_id, created_ms=row.created_ms, revoked_ms=row.revoked_ms)


def _ban(row: Any) -> Ban:
    return Ban(
        id=row.id,
        tenant_id=row.tenant_id,
        kind=BanKind(row.kind),
        value=row.value,
        reason=row.reason,
        actor=row.actor,
        created_ms=row.created_ms,
        expires_ms=row.expires_ms,
        lifted_ms=row.lifted_ms,
    )


def _audit_entry(row: Any) -> AuditEntry:
    targets = json.loads(row.targets)
    return AuditEntry(
        id=row.id,
        tenant_id=row.tenant_id,
        actor=row.actor,
        action=row.action,
        comment_ids=tuple(targets["commentIds"]),
        ban_ids=tuple(targets["banIds"]),
        reason=row.reason,
        created_ms=row.created_ms,
    )


_APPROVED = CommentStatus.APPROVED.value


def _require_comment_and_author(plan: Plan, tenant_id: str, comment_id: str, author_id: str) -> None:
    """The comment (``NotFound("comment")``) and the author acting on it
    (``NotFound("author")``) must be the tenant's: a like's and a flag's
    first checks."""
    plan.require(
        Sql(
            "EXISTS (SELECT 1 FROM comments WHERE tenant_id = :tenant_id AND id = :comment_id)",
            tenant_id=tenant_id,
            comment_id=comment_id,
        ),
        NotFound("comment"),
    )
    plan.require(
        Sql(
            "EXISTS (SELECT 1 FROM authors WHERE tenant_id = :tenant_id AND id = :author_id)",
            tenant_id=tenant_id,
            author_id=author_id,
        ),
        NotFound("author"),
    )


#: The tables holding a tenant's rows, children before parents: the order
#: :meth:`SqlStore.delete_tenant` deletes in.
_TENANT_TABLES = (
    "webhook_deliveries",
    "webhook_endpoints",
    "author_claims",
    "thread_access",
    "user_profiles",
    "tenant_sso_secrets",
    "vote_addresses",
    "moderation_log",
    "bans",
    "votes",
    "flags",
    "blocks",
    "comments",
    "threads",
    "users",
    "anonymous_sessions",
    "authors",
    "api_keys",
    "credit_ledger",
)

#: An API key row's columns.
_API_KEY_COLUMNS = "id, tenant_id, key_hash, created_ms, revoked_ms"

#: One API key of a tenant.
_API_KEY = "SELECT " + _API_KEY_COLUMNS + " FROM api_keys WHERE tenant_id = :tenant_id AND id = :id"

#: Deletes a tenant's SSO secrets whose overlap ended by ``:now``.
_SSO_SECRETS_EXPIRED = "DELETE FROM tenant_sso_secrets WHERE tenant_id = :tenant_id AND accepted_until_ms <= :now"

#: Sets the end of a tenant's SSO secrets' overlap to ``:until`` (the
#: current one's, and sooner for those accepted longer).
_SSO_SECRETS_RETIRE = (
    "UPDATE tenant_sso_secrets SET accepted_until_ms = :until"
    " WHERE tenant_id = :tenant_id AND (accepted_until_ms IS NULL OR accepted_until_ms > :until)"
)


#: The webhook event a moderation action's status change emits.
_ACTION_EVENTS = {
    ModerationAction.APPROVE: WebhookEvent.COMMENT_APPROVED,
    ModerationAction.RESTORE: WebhookEvent.COMMENT_APPROVED,
    ModerationAction.REMOVE: WebhookEvent.COMMENT_REMOVED,
    ModerationAction.SPAM: WebhookEvent.COMMENT_MARKED_SPAM,
}

#: The webhook event a comment's new status emits (``PENDING``: none).
_STATUS_EVENTS = {
    CommentStatus.APPROVED: WebhookEvent.COMMENT_APPROVED,
    CommentStatus.REMOVED: WebhookEvent.COMMENT_REMOVED,
    CommentStatus.SPAM: WebhookEvent.COMMENT_MARKED_SPAM,
}


@implementer(IStore, IWebhookStore)
class SqlStore(WebhookStoreMixin):
    """:class:`IStore` over pools of DB-API connections.

    :param primary: serves every write and PRIMARY read.
    :param nearest: serves NEAREST reads; ``None`` means the primary.
    :param run: where blocking calls run (see :data:`Runner`).
    :param clock: only stamps applied migrations.
    :param serialize_writes: take a process-wide lock around write
        transactions (SQLite allows one writer; queueing here is cheaper
        than SQLite's sleeping busy handler).
    """

    backend = "sql"
    _log = Logger()

    def __init__(
        self,
        primary: Pool,
        nearest: Pool | None,
        *,
        run: Runner,
        clock: IReactorTime,
        serialize_writes: bool = False,
        observe: Observer | None = None,
    ) -> None:
        self._primary = primary
        self._nearest = nearest if nearest is not None else primary
        self._run = run
        self._clock = clock
        self._write_lock = threading.Lock() if serialize_writes else None
        self._observe = observe

    # Plumbing

    def _call(
        self,
        operation: str,
        read_preference: ReadPreference,
        fn: Callable[[], _T],
        *,
        write: bool = False,
        token: str | None = None,
    ) -> Deferred[_T]:
        """Run ``fn`` through the runner, mapping driver failures to ours.

        Every error, including a write's wrong read preference, arrives
        through the returned Deferred: callers never see a synchronous raise.

        :param token: a read's consistency token. A single copy ignores it;
            replicated backends override this method to honour it.
        """
        if write:
            wrong = _require_primary(read_preference)
            if wrong is not None:
                return wrong
        observe = self._observe

        def timed() -> _T:
            # A duration for metrics, measured where the call runs; never a
            # wall-clock time that logic depends on.
            started = time.perf_counter()
            try:
                return fn()
            except OperationalError as e:
                raise StoreUnavailable(str(e.orig)) from e
            except PoolExhausted as e:
                raise StoreUnavailable(str(e)) from e
            except DatabaseError as e:
                # The bare class: the database itself is unusable (a corrupt
                # file); subclasses (IntegrityError, ...) are handled by callers.
                if type(e) is DatabaseError:
                    raise StoreUnavailable(str(e.orig)) from e
                raise
            finally:
                if observe is not None:
                    observe(operation, read_preference, time.perf_counter() - started)

        return self._run(timed)

    def _reading(self, read_preference: ReadPreference) -> AbstractContextManager[Conn]:
        """A connection for a read call's statements (``read_preference``
        says which server)."""
        raise NotImplementedError

    def _writing(self) -> AbstractContextManager[Conn]:
        """A connection in a write transaction on the primary, committed
        when the block ends (rolled back if it raises)."""
        raise NotImplementedError

    def _written(self, conn: Conn, value: _T) -> Written[_T]:
        """Wrap a write's result with its consistency token (none here)."""
        return Written(value, self._token(conn))

    def _batch(self, conn: Conn, statements: Sequence[Step], *, commit: bool) -> list[list[Any] | None]:
        """Run ``statements`` in order in the write transaction on ``conn``.

        No statement may depend on another's result (each is written to
        stand alone, e.g. guarded by a condition in SQL; checks are
        :class:`~fastedge.store.plan.Require` steps), so a backend whose
        primary is far away may send them all, and with ``commit`` the
        commit too, in one round trip: the PostgreSQL backend does (psycopg's
        pipeline mode). Here they run one by one, a failed check raises its
        error (so the transaction rolls back) and the transaction commits
        when it ends, as usual.

        :returns: per statement, its rows (attribute access by column name)
            or ``None`` for a statement that returns none (and a check).
        """
        out: list[list[Any] | None] = []
        for statement in statements:
            if isinstance(statement, Require):
                if not conn.run(Sql("SELECT") + statement.condition).scalar():
                    raise statement.error
                out.append(None)
                continue
            rows = conn.run(statement)
            out.append(rows.all() if rows.returns_rows else None)
        return out

    def _token(self, conn: Conn) -> str | None:
        """The consistency token of the write transaction on ``conn``.

        Called through :meth:`_written`, which every write calls as the last
        step of its transaction, so a backend may end (commit) the
        transaction here to learn the commit's position in the same round
        trip (the PostgreSQL backend does). A single copy needs no token.
        """
        return None

    # Lifecycle

    def open(self) -> Deferred[None]:
        applied_ms = int(self._clock.seconds() * 1000)

        def go() -> None:
            with self._writing() as conn:
                applied = s.migrate(conn, applied_ms)
            if applied:
                self._log.info("store schema migrated to {versions}", versions=applied)

        return self._call("open", ReadPreference.PRIMARY, go)

    def has_schema(self) -> Deferred[bool]:
        """Whether the primary already holds the store's tables (:meth:`open`
        creates them): tools that must not create a store ask first.

        :returns: ``Deferred[bool]``
        """

        def go() -> bool:
            with self._reading(ReadPreference.PRIMARY) as conn:
                return s.has_schema(conn)

        return self._call("has_schema", ReadPreference.PRIMARY, go)

    def close(self) -> Deferred[None]:
        def go() -> None:
            self._primary.dispose()
            if self._nearest is not self._primary:
                self._nearest.dispose()

        return self._call("close", ReadPreference.PRIMARY, go)

    def token_covers(self, have: str | None, want: str | None) -> bool:
        """Always true: with a single copy every read sees every write."""
        return True

    def ping(self, *, read_preference: ReadPreference) -> Deferred[None]:
        def go() -> None:
            with self._reading(read_preference) as conn:
                conn.run(Sql("SELECT 1"))

        return self._call("ping", read_preference, go)

    # Tenants and API keys

    def create_tenant(
        self, name: str, deployment: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[Tenant]]:
        tenant = Tenant(id=new_id(), name=name, deployment=deployment, created_ms=created_ms, settings={})

        def go() -> Written[Tenant]:
            with self._writing() as conn:
                conn.run(
                    Sql(
                        "INSERT INTO tenants (id, name, deployment, created_ms, settings)"
                        " VALUES (:id, :name, :deployment, :created_ms, '{}')",
                        id=tenant.id,
                        name=name,
                        deployment=deployment,
                        created_ms=created_ms,
                    )
                )
                return self._written(conn, tenant)

        return self._call("create_tenant", read_preference, go, write=True)

    def get_tenant(
        self, tenant_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Tenant]:
        def go() -> Tenant:
            with self._reading(read_preference) as conn:
                row = conn.run(Sql("SELECT * FROM tenants WHERE id = :id", id=tenant_id)).first()
            if row is None:
                raise NotFound("tenant")
            return _tenant(row)

        return self._call("get_tenant", read_preference, go, token=token)

    def list_tenants(self, *, read_preference: ReadPreference, token: str | None = None) -> Deferred[list[Tenant]]:
        def go() -> list[Tenant]:
            with self._reading(read_preference) as conn:
                rows = conn.run(Sql("SELECT * FROM tenants ORDER BY created_ms, id")).all()
            return [_tenant(r) for r in rows]

        return self._call("list_tenants", read_preference, go, token=token)

    def delete_tenant(self, tenant_id: str, *, read_preference: ReadPreference) -> Deferred[Written[Mapping[str, int]]]:
        def go() -> Written[Mapping[str, int]]:
            deleted: dict[str, int] = {}
            with self._writing() as conn:
                self._require_tenant(conn, tenant_id)
                # Children before parents (the foreign keys); every table
                # that holds tenant rows has a tenant_id column.
                for table in _TENANT_TABLES:
                    done = conn.run(Sql("DELETE FROM " + table + " WHERE tenant_id = :tenant_id", tenant_id=tenant_id))
                    deleted[table] = done.rowcount
                conn.run(Sql("DELETE FROM tenants WHERE id = :id", id=tenant_id))
                deleted["tenants"] = 1
                return self._written(conn, deleted)

        return self._call("delete_tenant", read_preference, go, write=True)

    def update_tenant_settings(
        self,
        tenant_id: str,
        settings: Mapping[str, Any],
        *,
        read_preference: ReadPreference,
        sso_secret: SsoSecretChange | None = None,
    ) -> Deferred[Written[Tenant]]:
        encoded = json.dumps(dict(settings), sort_keys=True)

        def go() -> Written[Tenant]:
            with self._writing() as conn:
                done = conn.run(
                    Sql("UPDATE tenants SET settings = :settings WHERE id = :id", settings=encoded, id=tenant_id)
                )
                if done.rowcount == 0:
                    raise NotFound("tenant")
                if sso_secret is not None:
                    self._rotate_sso_secret(conn, tenant_id, sso_secret)
                row = conn.run(Sql("SELECT * FROM tenants WHERE id = :id", id=tenant_id)).one()
                return self._written(conn, _tenant(row))

        return self._call("update_tenant_settings", read_preference, go, write=True)

    def _rotate_sso_secret(self, conn: Conn, tenant_id: str, change: SsoSecretChange) -> None:
        now = change.now_ms
        # Secrets past their overlap are of no use any more.
        expired = Sql(_SSO_SECRETS_EXPIRED, tenant_id=tenant_id, now=now)
        conn.run(expired)
        until = now if change.secret is None else now + max(0, change.overlap_ms)
        conn.run(Sql(_SSO_SECRETS_RETIRE, tenant_id=tenant_id, until=until))
        if change.secret is None:
            conn.run(expired)
            return
        conn.run(
            Sql(
                "INSERT INTO tenant_sso_secrets (id, tenant_id, secret, created_ms, accepted_until_ms)"
                " VALUES (:id, :tenant_id, :secret, :created_ms, NULL)",
                id=new_id(),
                tenant_id=tenant_id,
                secret=change.secret,
                created_ms=now,
            )
        )

    def get_sso_secrets(
        self, tenant_id: str, *, now_ms: int, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[list[SsoSecret]]:
        def go() -> list[SsoSecret]:
            with self._reading(read_preference) as conn:
                rows = conn.run(
                    Sql(
                        "SELECT secret, created_ms, accepted_until_ms FROM tenant_sso_secrets"
                        " WHERE tenant_id = :tenant_id AND (accepted_until_ms IS NULL OR accepted_until_ms > :now_ms)"
                        " ORDER BY created_ms DESC, id",
                        tenant_id=tenant_id,
                        now_ms=now_ms,
                    )
                ).all()
            current = [r for r in rows if r.accepted_until_ms is None]
            older = [r for r in rows if r.accepted_until_ms is not None]
            return [
                SsoSecret(secret=r.secret, created_ms=r.created_ms, accepted_until_ms=r.accepted_until_ms)
                for r in current + older
            ]

        return self._call("get_sso_secrets", read_preference, go, token=token)

    def add_api_key(
        self, tenant_id: str, key_hash: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[ApiKey]]:
        key = ApiKey(id=new_id(), tenant_id=tenant_id, created_ms=created_ms, revoked_ms=None)

        def go() -> Written[ApiKey]:
            with self._writing() as conn:
                self._require_tenant(conn, tenant_id)
                conn.run(
                    Sql(
                        "INSERT INTO api_keys (id, tenant_id, key_hash, created_ms, revoked_ms)"
                        " VALUES (:id, :tenant_id, :key_hash, :created_ms, NULL)",
                        id=key.id,
                        tenant_id=tenant_id,
                        key_hash=key_hash,
                        created_ms=created_ms,
                    )
                )
                return self._written(conn, key)

        return self._call("add_api_key", read_preference, go, write=True)

    def revoke_api_key(
        self, tenant_id: str, key_id: str, *, revoked_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[ApiKey]]:
        def go() -> Written[ApiKey]:
            key = Sql(_API_KEY, tenant_id=tenant_id, id=key_id)
            with self._writing() as conn:
                row = conn.run(key).first()
                if row is None:
                    raise NotFound("API key")
                if row.revoked_ms is None:
                    conn.run(
                        Sql(
                            "UPDATE api_keys SET revoked_ms = :revoked_ms WHERE tenant_id = :tenant_id AND id = :id",
                            revoked_ms=revoked_ms,
                            tenant_id=tenant_id,
                            id=key_id,
                        )
                    )
                    row = conn.run(key).one()
                return self._written(conn, _api_key(row))

        return self._call("revoke_api_key", read_preference, go, write=True)

    def list_api_keys(
        self, tenant_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[list[ApiKey]]:
        def go() -> list[ApiKey]:
            with self._reading(read_preference) as conn:
                rows = conn.run(
                    Sql(
                        "SELECT "
                        + _API_KEY_COLUMNS
                        + " FROM api_keys WHERE tenant_id = :tenant_id ORDER BY created_ms, id",
                        tenant_id=tenant_id,
                    )
                ).all()
            return [_api_key(r) for r in rows]

        return self._call("list_api_keys", read_preference, go, token=token)

    def tenant_for_api_key(
        self, key_hash: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Tenant]:
        def go() -> Tenant:
            with self._reading(read_preference) as conn:
                row = conn.run(
                    Sql(
                        "SELECT tenants.* FROM tenants JOIN api_keys ON api_keys.tenant_id = tenants.id"
                        " WHERE api_keys.key_hash = :key_hash AND api_keys.revoked_ms IS NULL",
                        key_hash=key_hash,
                    )
                ).first()
            if row is None:
                raise NotFound("API key")
            return _tenant(row)

        return self._call("tenant_for_api_key", read_preference, go, token=token)

    # Authors

    def _new_author(self, conn: Conn, tenant_id: str, kind: AuthorKind, created_ms: int) -> str:
        author_id = new_id()
        conn.run(
            Sql(
                "INSERT INTO authors (id, tenant_id, kind, created_ms) VALUES (:id, :tenant_id, :kind, :created_ms)",
                id=author_id,
                tenant_id=tenant_id,
                kind=kind.value,
                created_ms=created_ms,
            )
        )
        return author_id

    def _require_author(self, conn: Conn, tenant_id: str, author_id: str) -> None:
        found = conn.run(
            Sql("SELECT id FROM authors WHERE tenant_id = :tenant_id AND id = :id", tenant_id=tenant_id, id=author_id)
        )
        if found.first() is None:
            raise NotFound("author")

    def _require_tenant(self, conn: Conn, tenant_id: str) -> None:
        if conn.run(Sql("SELECT id FROM tenants WHERE id = :id", id=tenant_id)).first() is None:
            raise NotFound("tenant")

    def create_anonymous_session(
        self, tenant_id: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[AnonymousSession]]:
        def go() -> Written[AnonymousSession]:
            session = AnonymousSession(id=new_id(), tenant_id=tenant_id, author_id=new_id(), created_ms=created_ms)
            plan = Plan()
            require_tenant(plan, tenant_id)
            new_session(plan, tenant_id, session_id=session.id, author_id=session.author_id, created_ms=created_ms)
            with self._writing() as conn:
                self._batch(conn, plan.steps, commit=True)
                return self._written(conn, session)

        return self._call("create_anonymous_session", read_preference, go, write=True)

    def new_id(self) -> str:
        return new_id()

    def new_anonymous_session(self, tenant_id: str, *, created_ms: int) -> AnonymousSession:
        return AnonymousSession(id=new_id(), tenant_id=tenant_id, author_id=new_id(), created_ms=created_ms)

    def _session_first(self, plan: Plan, tenant_id: str, session: AnonymousSession | None) -> None:
        """The steps creating ``session`` ahead of a write made as it."""
        if session is not None:
            require_tenant(plan, tenant_id)
            new_session(
                plan, tenant_id, session_id=session.id, author_id=session.author_id, created_ms=session.created_ms
            )

    def get_anonymous_session(
        self, tenant_id: str, session_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[AnonymousSession]:
        def go() -> AnonymousSession:
            with self._reading(read_preference) as conn:
                row = conn.run(
                    Sql(
                        "SELECT id, tenant_id, author_id, created_ms FROM anonymous_sessions"
                        " WHERE tenant_id = :tenant_id AND id = :id",
                        tenant_id=tenant_id,
                        id=session_id,
                    )
                ).first()
            if row is None:
                raise NotFound("session")
            return AnonymousSession(
                id=row.id, tenant_id=row.tenant_id, author_id=row.author_id, created_ms=row.created_ms
            )

        return self._call("get_anonymous_session", read_preference, go, token=token)

    def upsert_user(
        self,
        tenant_id: str,
        external_id: str,
        display_name: str,
        *,
        created_ms: int,
        read_preference: ReadPreference,
        profile: UserProfile | None = None,
    ) -> Deferred[Written[User]]:
        def go() -> Written[User]:
            where = Sql(
                "WHERE users.tenant_id = :tenant_id AND users.external_id = :external_id",
                tenant_id=tenant_id,
                external_id=external_id,
            )
            with self._writing() as conn:
                self._require_tenant(conn, tenant_id)
                row = conn.run(Sql("SELECT users.display_name FROM users") + where).first()
                if row is None:
                    author_id = self._new_author(conn, tenant_id, AuthorKind.USER, created_ms)
                    conn.run(
                        Sql(
                            "INSERT INTO users (id, tenant_id, external_id, author_id, display_name, created_ms)"
                            " VALUES (:id, :tenant_id, :external_id, :author_id, :display_name, :created_ms)",
                            id=new_id(),
                            tenant_id=tenant_id,
                            external_id=external_id,
                            author_id=author_id,
                            display_name=display_name,
                            created_ms=created_ms,
                        )
                    )
                elif row.display_name != display_name:
                    conn.run(Sql("UPDATE users SET display_name = :display_name", display_name=display_name) + where)
                if profile is not None:
                    user = conn.run(Sql("SELECT users.id, users.tenant_id, users.author_id FROM users") + where).one()
                    self._put_profile(conn, user, profile, created_ms)
                return self._written(conn, _user(conn.run(_users() + where).one()))

        return self._call("upsert_user", read_preference, go, write=True)

    def _put_profile(self, conn: Conn, user: Any, profile: UserProfile, now_ms: int) -> None:
        values = dict(
            user_id=user.id,
            email=profile.email,
            avatar=profile.avatar,
            group_ids=json.dumps(list(profile.group_ids)),
            is_moderator=profile.is_moderator,
            is_admin=profile.is_admin,
            updated_ms=now_ms,
        )
        done = conn.run(
            Sql(
                "UPDATE user_profiles SET email = :email, avatar = :avatar, group_ids = :group_ids,"
                " is_moderator = :is_moderator, is_admin = :is_admin, updated_ms = :updated_ms"
                " WHERE user_id = :user_id",
                **values,
            )
        )
        if done.rowcount == 0:
            conn.run(
                Sql(
                    "INSERT INTO user_profiles"
                    " (user_id, tenant_id, author_id, email, avatar, group_ids, is_moderator, is_admin, updated_ms)"
                    " VALUES (:user_id, :tenant_id, :author_id, :email, :avatar, :group_ids, :is_moderator,"
                    " :is_admin, :updated_ms)",
                    tenant_id=user.tenant_id,
                    author_id=user.author_id,
                    **values,
                )
            )

    def get_user_by_author(
        self, tenant_id: str, author_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[User]:
        def go() -> User:
            where = Sql(
                "WHERE users.tenant_id = :tenant_id AND users.author_id = :author_id",
                tenant_id=tenant_id,
                author_id=author_id,
            )
            with self._reading(read_preference) as conn:
                row = conn.run(_users() + where).first()
            if row is None:
                raise NotFound("user")
            return _user(row)

        return self._call("get_user_by_author", read_preference, go, token=token)

    def create_user_session(
        self, tenant_id: str, author_id: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[AnonymousSession]]:
        def go() -> Written[AnonymousSession]:
            with self._writing() as conn:
                self._require_author(conn, tenant_id, author_id)
                session = AnonymousSession(id=new_id(), tenant_id=tenant_id, author_id=author_id, created_ms=created_ms)
                conn.run(
                    Sql(
                        "INSERT INTO anonymous_sessions (id, tenant_id, author_id, created_ms)"
                        " VALUES (:id, :tenant_id, :author_id, :created_ms)",
                        id=session.id,
                        tenant_id=tenant_id,
                        author_id=author_id,
                        created_ms=created_ms,
                    )
                )
                return self._written(conn, session)

        return self._call("create_user_session", read_preference, go, write=True)

    def claim_author(
        self,
        tenant_id: str,
        from_author_id: str,
        to_author_id: str,
        *,
        claimed_ms: int,
        read_preference: ReadPreference,
    ) -> Deferred[Written[int]]:
        def go() -> Written[int]:
            with self._writing() as conn:
                kinds = dict(
                    conn.run(
                        Sql(
                            "SELECT id, kind FROM authors WHERE tenant_id = :tenant_id AND id IN :ids",
                            tenant_id=tenant_id,
                            ids=[from_author_id, to_author_id],
                        )
                    ).all()
                )
                if from_author_id not in kinds or to_author_id not in kinds:
                    raise NotFound("author")
                if kinds[from_author_id] != AuthorKind.ANONYMOUS.value:
                    raise InvalidReference("only an anonymous author can be claimed")
                if kinds[to_author_id] != AuthorKind.USER.value:
                    raise InvalidReference("an anonymous author can only be claimed by a user")
                claimed = Sql("SELECT 1 FROM author_claims WHERE from_author_id = :id", id=from_author_id)
                if conn.run(claimed).first():
                    raise AlreadyExists("claim")
                moved = self._move_author(conn, tenant_id, from_author_id, to_author_id)
                conn.run(
                    Sql(
                        "INSERT INTO author_claims (from_author_id, tenant_id, to_author_id, claimed_ms)"
                        " VALUES (:from_author_id, :tenant_id, :to_author_id, :claimed_ms)",
                        from_author_id=from_author_id,
                        tenant_id=tenant_id,
                        to_author_id=to_author_id,
                        claimed_ms=claimed_ms,
                    )
                )
                return self._written(conn, moved)

        return self._call("claim_author", read_preference, go, write=True)

    def _move_author(self, conn: Conn, tenant_id: str, old: str, new: str) -> int:
        """Re-point everything of author ``old`` to ``new``: a fixed number of
        statements per table, however much there is."""
        ids = dict(tenant_id=tenant_id, old=old, new=new)
        moved = conn.run(
            Sql("UPDATE comments SET author_id = :new WHERE tenant_id = :tenant_id AND author_id = :old", **ids)
        ).rowcount
        # Table and column names are our constants, never input.
        for table, who, count in (("votes", "voter_id", "like_count"), ("flags", "flagger_id", "flag_count")):
            twice = (
                f"{table}.tenant_id = :tenant_id AND {table}.{who} = :old AND {table}.comment_id IN"
                f" (SELECT {table}.comment_id FROM {table}"
                f" WHERE {table}.tenant_id = :tenant_id AND {table}.{who} = :new)"
            )
            # A like (flag) both authors made counts once from now on.
            conn.run(
                Sql(
                    f"UPDATE comments SET {count} = {count} - 1 WHERE tenant_id = :tenant_id AND id IN"
                    f" (SELECT {table}.comment_id FROM {table} WHERE {twice})",
                    **ids,
                )
            )
            conn.run(Sql(f"DELETE FROM {table} WHERE {twice}", **ids))
            conn.run(Sql(f"UPDATE {table} SET {who} = :new WHERE tenant_id = :tenant_id AND {who} = :old", **ids))
        for mine, other in (("viewer_id", "author_id"), ("author_id", "viewer_id")):
            # What ``new`` already has (blocks both made) stays once.
            conn.run(
                Sql(
                    f"DELETE FROM blocks WHERE tenant_id = :tenant_id AND {mine} = :old"
                    f" AND ({other} = :new OR {other} IN"
                    f" (SELECT blocks.{other} FROM blocks WHERE blocks.tenant_id = :tenant_id AND blocks.{mine} = :new))",
                    **ids,
                )
            )
            conn.run(Sql(f"UPDATE blocks SET {mine} = :new WHERE tenant_id = :tenant_id AND {mine} = :old", **ids))
        conn.run(
            Sql(
                "DELETE FROM anonymous_sessions WHERE tenant_id = :tenant_id AND author_id = :old",
                tenant_id=tenant_id,
                old=old,
            )
        )
        return int(moved)

    def get_author(
        self, tenant_id: str, author_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Author]:
        def go() -> Author:
            with self._reading(read_preference) as conn:
                row = conn.run(
                    Sql(
                        "SELECT id, tenant_id, kind, created_ms FROM authors WHERE tenant_id = :tenant_id AND id = :id",
                        tenant_id=tenant_id,
                        id=author_id,
                    )
                ).first()
            if row is None:
                raise NotFound("author")
            return Author(id=row.id, tenant_id=row.tenant_id, kind=AuthorKind(row.kind), created_ms=row.created_ms)

        return self._call("get_author", read_preference, go, token=token)

    def author_history(
        self,
        tenant_id: str,
        author_id: str,
        *,
        thread_id: str | None,
        since_ms: int,
        limit: int,
        read_preference: ReadPreference,
        token: str | None = None,
        new_author_ms: int | None = None,
    ) -> Deferred[AuthorHistory]:
        recent_columns = "SELECT author_id, thread_id, body_source, status, created_ms FROM comments"
        newest = Sql("ORDER BY created_ms DESC, id DESC LIMIT :limit", limit=limit)

        def recent(rows: Sequence[Any]) -> tuple[RecentComment, ...]:
            return tuple(
                RecentComment(
                    author_id=r.author_id,
                    thread_id=r.thread_id,
                    body_source=r.body_source,
                    status=CommentStatus(r.status),
                    created_ms=r.created_ms,
                )
                for r in rows
            )

        def go() -> AuthorHistory:
            with self._reading(read_preference) as conn:
                author: Any = conn.run(
                    Sql(
                        "SELECT kind, created_ms FROM authors WHERE tenant_id = :tenant_id AND id = :author_id",
                        tenant_id=tenant_id,
                        author_id=author_id,
                    )
                ).first()
                if author is None:
                    if new_author_ms is None:
                        raise NotFound("author")
                    # Created by the write of the comment being judged.
                    author = AuthorHistoryRow(AuthorKind.ANONYMOUS.value, new_author_ms)
                # Served by the comments_author index (tenant, author, created).
                by_status: dict[str, int] = dict(
                    conn.run(
                        Sql(
                            "SELECT status, count(*) AS n FROM comments"
                            " WHERE tenant_id = :tenant_id AND author_id = :author_id GROUP BY status",
                            tenant_id=tenant_id,
                            author_id=author_id,
                        )
                    ).all()
                )
                mine = conn.run(
                    Sql(
                        recent_columns
                        + " WHERE tenant_id = :tenant_id AND author_id = :author_id AND created_ms >= :since_ms",
                        tenant_id=tenant_id,
                        author_id=author_id,
                        since_ms=since_ms,
                    )
                    + newest
                ).all()
                others: Sequence[Any] = ()
                if thread_id is not None:
                    # Every status, named: the (tenant, thread, status,
                    # created) index then reads only the window, not the
                    # whole thread.
                    others = conn.run(
                        Sql(
                            recent_columns + " WHERE tenant_id = :tenant_id AND thread_id = :thread_id"
                            " AND status IN :statuses AND author_id != :author_id AND created_ms >= :since_ms",
                            tenant_id=tenant_id,
                            thread_id=thread_id,
                            statuses=[status.value for status in CommentStatus],
                            author_id=author_id,
                            since_ms=since_ms,
                        )
                        + newest
                    ).all()
            counts = {status: int(by_status.get(status.value, 0)) for status in CommentStatus}
            return AuthorHistory(
                author_id=author_id,
                kind=AuthorKind(author.kind),
                created_ms=author.created_ms,
                comments=sum(counts.values()),
                approved=counts[CommentStatus.APPROVED],
                pending=counts[CommentStatus.PENDING],
                spam=counts[CommentStatus.SPAM],
                removed=counts[CommentStatus.REMOVED],
                recent=recent(mine),
                thread_recent=recent(others),
            )

        return self._call("author_history", read_preference, go, token=token)

    # Threads

    def upsert_thread(
        self,
        tenant_id: str,
        url_id: str,
        *,
        created_ms: int,
        read_preference: ReadPreference,
        title: str | None = None,
        closed: bool | None = None,
        locked_groups: Sequence[str] | None = None,
        require_sign_in: bool | None = None,
    ) -> Deferred[Written[Thread]]:
        access: dict[str, Any] = {}
        if locked_groups is not None:
            access["group_ids"] = json.dumps(list(locked_groups))
        if require_sign_in is not None:
            access["require_sign_in"] = require_sign_in

        def go() -> Written[Thread]:
            where = Sql(
                "WHERE threads.tenant_id = :tenant_id AND threads.url_id = :url_id", tenant_id=tenant_id, url_id=url_id
            )
            events = []
            with self._writing() as conn:
                row = conn.run(Sql("SELECT threads.id, threads.title, threads.closed FROM threads") + where).first()
                if row is None:
                    events.append(WebhookEvent.THREAD_CREATED)
                    self._require_tenant(conn, tenant_id)
                    thread_id = new_id()
                    conn.run(
                        Sql(
                            "INSERT INTO threads (id, tenant_id, url_id, title, closed, created_ms, comment_count)"
                            " VALUES (:id, :tenant_id, :url_id, :title, :closed, :created_ms, 0)",
                            id=thread_id,
                            tenant_id=tenant_id,
                            url_id=url_id,
                            title=title or "",
                            closed=bool(closed),
                            created_ms=created_ms,
                        )
                    )
                else:
                    thread_id = row.id
                    changes: list[Sql] = []
                    if title is not None and title != row.title:
                        changes.append(Sql("title = :title", title=title))
                    if closed is not None and closed != bool(row.closed):
                        changes.append(Sql("closed = :closed", closed=closed))
                        if closed:
                            events.append(WebhookEvent.THREAD_CLOSED)
                    if changes:
                        conn.run(Sql("UPDATE threads SET") + join(changes, ", ") + where)
                if access:
                    self._put_access(conn, tenant_id, thread_id, access)
                thread = _thread(conn.run(_threads() + where).one())
                for event in events:
                    conn.run(ob.emit(tenant_id, event, new_id(), created_ms, {"thread": ob.thread_data(thread)}))
                return self._written(conn, thread)

        return self._call("upsert_thread", read_preference, go, write=True)

    def _put_access(self, conn: Conn, tenant_id: str, thread_id: str, access: dict[str, Any]) -> None:
        """Set the thread's ``access`` columns (``group_ids``,
        ``require_sign_in``: our constants), keeping the others."""
        columns = sorted(access)
        sets = join([Sql(f"{column} = :{column}", **{column: access[column]}) for column in columns], ", ")
        done = conn.run(
            Sql("UPDATE thread_access SET") + sets + Sql("WHERE thread_id = :thread_id", thread_id=thread_id)
        )
        if done.rowcount == 0:
            conn.run(
                Sql(
                    f"INSERT INTO thread_access (thread_id, tenant_id, {', '.join(columns)})"
                    f" VALUES (:thread_id, :tenant_id, {', '.join(':' + column for column in columns)})",
                    thread_id=thread_id,
                    tenant_id=tenant_id,
                    **access,
                )
            )

    def get_thread(
        self, tenant_id: str, url_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Thread]:
        def go() -> Thread:
            where = Sql(
                "WHERE threads.tenant_id = :tenant_id AND threads.url_id = :url_id", tenant_id=tenant_id, url_id=url_id
            )
            with self._reading(read_preference) as conn:
                row = conn.run(_threads() + where).first()
            if row is None:
                raise NotFound("thread")
            return _thread(row)

        return self._call("get_thread", read_preference, go, token=token)

    def get_thread_by_id(
        self, tenant_id: str, thread_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Thread]:
        def go() -> Thread:
            with self._reading(read_preference) as conn:
                return self._thread_by_id(conn, tenant_id, thread_id)

        return self._call("get_thread_by_id", read_preference, go, token=token)

    def _thread_by_id(self, conn: Conn, tenant_id: str, thread_id: str) -> Thread:
        where = Sql("WHERE threads.tenant_id = :tenant_id AND threads.id = :id", tenant_id=tenant_id, id=thread_id)
        row = conn.run(_threads() + where).first()
        if row is None:
            raise NotFound("thread")
        return _thread(row)

    def list_threads(
        self,
        tenant_id: str,
        *,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[Page[Thread]]:
        def go() -> Page[Thread]:
            after = decode_cursor(cursor, "threads", (int, str)) if cursor else None
            query = _threads() + Sql("WHERE threads.tenant_id = :tenant_id", tenant_id=tenant_id)
            if after is not None:
                query += Sql(
                    "AND (threads.created_ms < :after_ms OR (threads.created_ms = :after_ms AND threads.id < :after_id))",
                    after_ms=after[0],
                    after_id=after[1],
                )
            query += Sql("ORDER BY threads.created_ms DESC, threads.id DESC LIMIT :limit", limit=limit + 1)
            with self._reading(read_preference) as conn:
                rows = conn.run(query).all()
            return page_of(rows, limit, _thread, lambda last: encode_cursor("threads", last.created_ms, last.id))

        return self._call("list_threads", read_preference, go, token=token)

    def delete_thread(
        self, tenant_id: str, thread_id: str, *, read_preference: ReadPreference
    ) -> Deferred[Written[None]]:
        def go() -> Written[None]:
            with self._writing() as conn:
                self._thread_by_id(conn, tenant_id, thread_id)
                ids = Sql(
                    "SELECT id FROM comments WHERE tenant_id = :tenant_id AND thread_id = :thread_id",
                    tenant_id=tenant_id,
                    thread_id=thread_id,
                )
                self._delete_comment_rows(conn, tenant_id, ids)
                conn.run(Sql("DELETE FROM thread_access WHERE thread_id = :id", id=thread_id))
                conn.run(
                    Sql(
                        "DELETE FROM threads WHERE tenant_id = :tenant_id AND id = :id",
                        tenant_id=tenant_id,
                        id=thread_id,
                    )
                )
                return self._written(conn, None)

        return self._call("delete_thread", read_preference, go, write=True)

    # Comments

    def create_comment(self, new: NewComment, *, read_preference: ReadPreference) -> Deferred[Written[Comment]]:
        def go() -> Written[Comment]:
            plan = Plan()
            plan.require(
                Sql(
                    "EXISTS (SELECT 1 FROM threads WHERE tenant_id = :tenant_id AND id = :thread_id)",
                    tenant_id=new.tenant_id,
                    thread_id=new.thread_id,
                ),
                NotFound("thread"),
            )
            plan.require(
                Sql(
                    "EXISTS (SELECT 1 FROM authors WHERE tenant_id = :tenant_id AND id = :author_id)",
                    tenant_id=new.tenant_id,
                    author_id=new.author_id,
                ),
                NotFound("author"),
            )
            comment_id = new_id()
            inserted = comment_insert(
                plan,
                comment_id=comment_id,
                tenant_id=new.tenant_id,
                thread_id=new.thread_id,
                author_id=new.author_id,
                parent_id=new.parent_id,
                display_name=new.display_name,
                body_source=new.body_source,
                body_html=new.body_html,
                status=new.status,
                created_ms=new.created_ms,
            )
            url_id = Sql(
                "(SELECT threads.url_id FROM threads"
                " WHERE threads.tenant_id = comments.tenant_id AND threads.id = comments.thread_id)"
            )
            with self._writing() as conn:
                self._emit_new_comment(
                    plan, conn.backend, new.tenant_id, comment_id, new.status, new.created_ms, url_id
                )
                rows = self._batch(conn, plan.steps, commit=True)
                return self._written(conn, _comment(rows_of(rows, inserted)[0]))

        return self._call("create_comment", read_preference, go, write=True)

    def post_comment(self, new: NewPost, *, read_preference: ReadPreference) -> Deferred[Written[Posted]]:
        def go() -> Written[Posted]:
            given = new.poster.session if isinstance(new.poster, NewSession) else None
            ids = NewIds(
                comment=new_id(),
                thread=new.new_thread_id or new_id(),
                session=given.id if given is not None else new_id(),
                author=given.author_id if given is not None else new_id(),
                user=new_id(),
            )
            plan = Plan()
            steps = post(plan, new, ids=ids)
            # Created by this write: the thread of the url has the id this
            # write would have given it (a fresh one).
            created = Sql(
                "EXISTS (SELECT 1 FROM threads WHERE tenant_id = :tenant_id AND url_id = :url_id AND id = :thread_id)",
                tenant_id=new.tenant_id,
                url_id=new.url_id,
                thread_id=ids.thread,
            )
            thread_data = {
                "thread": {
                    "id": ids.thread,
                    "urlId": new.url_id,
                    "title": new.title or "",
                    "closed": False,
                    "createdAt": new.created_ms,
                }
            }
            plan.add(
                ob.emit(new.tenant_id, WebhookEvent.THREAD_CREATED, new_id(), new.created_ms, thread_data, when=created)
            )
            thread = plan.add(
                _threads()
                + Sql(
                    "WHERE threads.tenant_id = :tenant_id AND threads.url_id = :url_id",
                    tenant_id=new.tenant_id,
                    url_id=new.url_id,
                )
            )
            with self._writing() as conn:
                self._emit_new_comment(
                    plan, conn.backend, new.tenant_id, ids.comment, new.status, new.created_ms, new.url_id
                )
                rows = self._batch(conn, plan.steps, commit=True)
                session = None
                if isinstance(new.poster, NewSession):
                    session = AnonymousSession(ids.session, new.tenant_id, ids.author, new.created_ms)
                posted = Posted(
                    comment=_comment(rows_of(rows, steps.comment)[0]),
                    thread=_thread(rows_of(rows, thread)[0]),
                    thread_created=not rows_of(rows, steps.existed)[0].existed,
                    session=session,
                )
                return self._written(conn, posted)

        return self._call("post_comment", read_preference, go, write=True)

    @staticmethod
    def _emit_new_comment(
        plan: Plan,
        backend: str,
        tenant_id: str,
        comment_id: str,
        status: CommentStatus,
        created_ms: int,
        url_id: Sql | str,
    ) -> None:
        """The event of a comment the plan inserts, from its row (its thread
        and author may be known only in SQL). Spam is never announced as a
        new comment, only as spam.

        :param backend: the connection's (the event's JSON is built in SQL).
        """
        event = WebhookEvent.COMMENT_CREATED
        if status is CommentStatus.SPAM:
            event = WebhookEvent.COMMENT_MARKED_SPAM
        data = {"comment": ob.comment_sql(urlId=url_id)}
        this = Sql("comments.id = :comment_id", comment_id=comment_id)
        plan.add(ob.emit_for_comment(backend, tenant_id, event, new_id(), this, created_ms, data))

    def _count_approved(self, conn: Conn, tenant_id: str, thread_id: str, delta: int) -> None:
        conn.run(
            Sql(
                "UPDATE threads SET comment_count = comment_count + CAST(:delta AS INTEGER)"
                " WHERE tenant_id = :tenant_id AND id = :thread_id",
                delta=delta,
                tenant_id=tenant_id,
                thread_id=thread_id,
            )
        )

    def get_comment(
        self, tenant_id: str, comment_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Comment]:
        def go() -> Comment:
            with self._reading(read_preference) as conn:
                return self._comment_row(conn, tenant_id, comment_id)

        return self._call("get_comment", read_preference, go, token=token)

    def _comment_row(self, conn: Conn, tenant_id: str, comment_id: str) -> Comment:
        row = conn.run(
            Sql("SELECT * FROM comments WHERE tenant_id = :tenant_id AND id = :id", tenant_id=tenant_id, id=comment_id)
        ).first()
        if row is None:
            raise NotFound("comment")
        return _comment(row)

    def list_thread(
        self,
        tenant_id: str,
        thread_id: str,
        *,
        sort: Sort,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[ThreadPage]:
        kind = "thread-" + sort.value
        try:
            after = decode_cursor(cursor, kind, (int, int, str) if sort is Sort.TOP else (int, str)) if cursor else None
        except BadCursor:
            return fail()
        query = Sql(
            "SELECT * FROM comments WHERE tenant_id = :tenant_id AND thread_id = :thread_id AND status = :status"
            " AND parent_id IS NULL",
            tenant_id=tenant_id,
            thread_id=thread_id,
            status=_APPROVED,
        )
        if sort is Sort.TOP:
            if after is not None:
                likes, created, cid = after
                query += Sql(
                    "AND (like_count < :likes OR (like_count = :likes AND created_ms < :created)"
                    " OR (like_count = :likes AND created_ms = :created AND id < :cid))",
                    likes=likes,
                    created=created,
                    cid=cid,
                )
            query += Sql("ORDER BY like_count DESC, created_ms DESC, id DESC")
        elif sort is Sort.NEWEST:
            if after is not None:
                created, cid = after
                query += Sql(
                    "AND (created_ms < :created OR (created_ms = :created AND id < :cid))", created=created, cid=cid
                )
            query += Sql("ORDER BY created_ms DESC, id DESC")
        else:
            if after is not None:
                created, cid = after
                query += Sql(
                    "AND (created_ms > :created OR (created_ms = :created AND id > :cid))", created=created, cid=cid
                )
            query += Sql("ORDER BY created_ms, id")
        query += Sql("LIMIT :limit", limit=limit + 1)

        def go() -> ThreadPage:
            with self._reading(read_preference) as conn:
                thread = self._thread_by_id(conn, tenant_id, thread_id)
                rows = conn.run(query).all()
                top = [_comment(r) for r in rows[:limit]]
                replies: list[Comment] = []
                if top:
                    replies = [
                        _comment(r)
                        for r in conn.run(
                            Sql(
                                "SELECT * FROM comments WHERE tenant_id = :tenant_id AND root_id IN :roots"
                                " AND parent_id IS NOT NULL AND status = :status ORDER BY created_ms, id",
                                tenant_id=tenant_id,
                                roots=[t.id for t in top],
                                status=_APPROVED,
                            )
                        )
                    ]
            next_cursor = None
            if len(rows) > limit:
                last = top[-1]
                if sort is Sort.TOP:
                    next_cursor = encode_cursor(kind, last.like_count, last.created_ms, last.id)
                else:
                    next_cursor = encode_cursor(kind, last.created_ms, last.id)
            return ThreadPage(thread=thread, top_level=top, replies=replies, next_cursor=next_cursor)

        return self._call("list_thread", read_preference, go, token=token)

    def list_comments(
        self,
        tenant_id: str,
        *,
        status: CommentStatus,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        thread_id: str | None = None,
        token: str | None = None,
    ) -> Deferred[Page[Comment]]:
        query = Sql(
            "SELECT * FROM comments WHERE tenant_id = :tenant_id AND status = :status",
            tenant_id=tenant_id,
            status=status.value,
        )
        if thread_id is not None:
            query += Sql("AND thread_id = :thread_id", thread_id=thread_id)
        if cursor:
            try:
                created, cid = decode_cursor(cursor, "comments", (int, str))
            except BadCursor:
                return fail()
            query += Sql(
                "AND (created_ms < :created OR (created_ms = :created AND id < :cid))", created=created, cid=cid
            )
        query += Sql("ORDER BY created_ms DESC, id DESC LIMIT :limit", limit=limit + 1)

        def go() -> Page[Comment]:
            with self._reading(read_preference) as conn:
                rows = conn.run(query).all()
            return page_of(rows, limit, _comment, lambda last: encode_cursor("comments", last.created_ms, last.id))

        return self._call("list_comments", read_preference, go, token=token)

    def update_comment(
        self,
        tenant_id: str,
        comment_id: str,
        *,
        edited_ms: int,
        read_preference: ReadPreference,
        body: tuple[str, str] | None = None,
        status: CommentStatus | None = None,
    ) -> Deferred[Written[Comment]]:
        d = self.change_comment(
            tenant_id, comment_id, edited_ms=edited_ms, read_preference=read_preference, body=body, status=status
        )
        return d.addCallback(lambda written: Written(written.value.after, written.token))

    def change_comment(
        self,
        tenant_id: str,
        comment_id: str,
        *,
        edited_ms: int,
        read_preference: ReadPreference,
        body: tuple[str, str] | None = None,
        status: CommentStatus | None = None,
    ) -> Deferred[Written[Change]]:
        def go() -> Written[Change]:
            # Qualified: the events' statements join webhook_endpoints.
            this = Sql(
                "comments.tenant_id = :tenant_id AND comments.id = :comment_id",
                tenant_id=tenant_id,
                comment_id=comment_id,
            )
            the_comment = Sql("SELECT * FROM comments WHERE") + this
            plan = Plan()
            plan.require(Sql("EXISTS (SELECT 1 FROM comments WHERE") + this + Sql(")"), NotFound("comment"))
            before = plan.add(the_comment)
            changes: dict[str, Any] = {}
            # The events first, from the row as it is before the change with
            # the changed values given: previousStatus is the row's status.
            after_values: dict[str, Any] = {"previousStatus": Sql("comments.status")}
            if body is not None:
                changes.update(body_source=body[0], body_html=body[1], edited_ms=edited_ms)
                after_values.update(text=body[0], html=body[1], editedAt=edited_ms)
            if status is not None:
                after_values["status"] = status.value
            data = {"comment": ob.comment_sql(**after_values)}
            with self._writing() as conn:
                if body is not None:
                    plan.add(
                        ob.emit_for_comment(
                            conn.backend, tenant_id, WebhookEvent.COMMENT_EDITED, new_id(), this, edited_ms, data
                        )
                    )
                if status is not None and status in _STATUS_EVENTS:
                    plan.add(
                        ob.emit_for_comment(
                            conn.backend,
                            tenant_id,
                            _STATUS_EVENTS[status],
                            new_id(),
                            this + Sql("AND comments.status != :new_status", new_status=status.value),
                            edited_ms,
                            data,
                        )
                    )
                if status is not None:
                    changes["status"] = status.value
                    # Before the comment changes: its thread counts approved comments.
                    plan.add(
                        Sql(
                            "UPDATE threads SET comment_count = comment_count + CAST(:now_approved AS INTEGER)"
                            " - CASE WHEN (SELECT comments.status FROM comments WHERE",
                            now_approved=int(status is CommentStatus.APPROVED),
                        )
                        + this
                        + Sql(
                            ") = :approved THEN 1 ELSE 0 END"
                            " WHERE threads.tenant_id = :tenant_id"
                            " AND threads.id = (SELECT comments.thread_id FROM comments WHERE",
                            approved=_APPROVED,
                            tenant_id=tenant_id,
                        )
                        + this
                        + Sql(")")
                    )
                if changes:
                    assignments = join([Sql(name + " = :" + name, **{name: v}) for name, v in changes.items()], ", ")
                    plan.add(Sql("UPDATE comments SET") + assignments + Sql("WHERE") + this)
                after = plan.add(the_comment)
                rows = self._batch(conn, plan.steps, commit=True)
                change = Change(_comment(rows_of(rows, before)[0]), _comment(rows_of(rows, after)[0]))
                return self._written(conn, change)

        return self._call("change_comment", read_preference, go, write=True)

    def delete_comment(
        self, tenant_id: str, comment_id: str, *, read_preference: ReadPreference, deleted_ms: int = 0
    ) -> Deferred[Written[int]]:
        def go() -> Written[int]:
            with self._writing() as conn:
                target = self._comment_row(conn, tenant_id, comment_id)
                doomed = self._subtree(conn, tenant_id, target)
                conn.run(
                    ob.emit_for_comments(
                        tenant_id,
                        WebhookEvent.COMMENT_REMOVED,
                        new_id(),
                        Sql("comments.id IN :ids", ids=doomed),
                        deleted_ms,
                        status=CommentStatus.REMOVED.value,
                        extra={"deleted": True},
                    )
                )
                counted = self._delete_comment_rows(conn, tenant_id, doomed)
                return self._written(conn, counted)

        return self._call("delete_comment", read_preference, go, write=True)

    def _subtree(self, conn: Conn, tenant_id: str, target: Comment) -> list[str]:
        """Ids of ``target`` and every reply beneath it."""
        rows = conn.run(
            Sql(
                "SELECT id, parent_id FROM comments WHERE tenant_id = :tenant_id AND root_id = :root_id",
                tenant_id=tenant_id,
                root_id=target.root_id,
            )
        ).all()
        children: dict[str | None, list[str]] = {}
        for row in rows:
            children.setdefault(row.parent_id, []).append(row.id)
        found, todo = [], [target.id]
        while todo:
            current = todo.pop()
            found.append(current)
            todo.extend(children.get(current, ()))
        return found

    def _delete_comment_rows(self, conn: Conn, tenant_id: str, ids: list[str] | Sql) -> int:
        """Delete comments (a list of ids, or a ``SELECT`` of them) with their
        votes and flags, keeping the threads' approved counts right."""
        if isinstance(ids, list):
            ids_where = Sql("id IN :ids", ids=ids)
        else:
            ids_where = Sql("id IN (") + ids + Sql(")")
        tenant_ids = Sql("tenant_id = :tenant_id AND", tenant_id=tenant_id) + ids_where
        approved = conn.run(
            Sql("SELECT thread_id, COUNT(*) AS approved FROM comments WHERE")
            + tenant_ids
            + Sql("AND status = :approved GROUP BY thread_id", approved=_APPROVED)
        ).all()
        id_list = conn.run(Sql("SELECT id FROM comments WHERE") + tenant_ids).scalars()
        for start in range(0, len(id_list), 500):
            chunk = id_list[start : start + 500]
            conn.run(Sql("DELETE FROM votes WHERE comment_id IN :ids", ids=chunk))
            conn.run(Sql("DELETE FROM vote_addresses WHERE comment_id IN :ids", ids=chunk))
            conn.run(Sql("DELETE FROM flags WHERE comment_id IN :ids", ids=chunk))
            conn.run(
                Sql("DELETE FROM comments WHERE tenant_id = :tenant_id AND id IN :ids", tenant_id=tenant_id, ids=chunk)
            )
        for row in approved:
            self._count_approved(conn, tenant_id, row.thread_id, -row.approved)
        return len(id_list)

    # Votes, flags, blocks

    def add_like(
        self,
        tenant_id: str,
        comment_id: str,
        voter_id: str,
        *,
        created_ms: int,
        read_preference: ReadPreference,
        address_hash: str | None = None,
        max_per_address: int | None = None,
        expect: Expect | None = None,
        new_session: AnonymousSession | None = None,
    ) -> Deferred[Written[int]]:
        def go() -> Written[int]:
            key = dict(tenant_id=tenant_id, comment_id=comment_id)
            plan = Plan()
            check_expected(plan, tenant_id, expect)
            self._session_first(plan, tenant_id, new_session)
            _require_comment_and_author(plan, tenant_id, comment_id, voter_id)
            plan.require(
                Sql(
                    "NOT EXISTS (SELECT 1 FROM votes WHERE comment_id = :comment_id AND voter_id = :voter_id)",
                    comment_id=comment_id,
                    voter_id=voter_id,
                ),
                AlreadyExists("like"),
            )
            if address_hash is not None and max_per_address is not None:
                plan.require(
                    Sql(
                        "(SELECT count(*) FROM vote_addresses"
                        " WHERE comment_id = :comment_id AND address_hash = :address_hash) < :max_per_address",
                        comment_id=comment_id,
                        address_hash=address_hash,
                        max_per_address=max_per_address,
                    ),
                    LimitReached("likes from one address"),
                )
            plan.add(
                Sql(
                    "INSERT INTO votes (comment_id, voter_id, tenant_id, created_ms)"
                    " VALUES (:comment_id, :voter_id, :tenant_id, :created_ms)",
                    voter_id=voter_id,
                    created_ms=created_ms,
                    **key,
                )
            )
            if address_hash is not None:
                plan.add(
                    Sql(
                        "INSERT INTO vote_addresses (comment_id, voter_id, tenant_id, address_hash)"
                        " VALUES (:comment_id, :voter_id, :tenant_id, :address_hash)",
                        voter_id=voter_id,
                        address_hash=address_hash,
                        **key,
                    )
                )
            counted = plan.add(
                Sql(
                    "UPDATE comments SET like_count = like_count + 1"
                    " WHERE tenant_id = :tenant_id AND id = :comment_id RETURNING like_count",
                    **key,
                )
            )
            try:
                with self._writing() as conn:
                    rows = self._batch(conn, plan.steps, commit=True)
                    return self._written(conn, int(rows_of(rows, counted)[0].like_count))
            except IntegrityError:
                # A concurrent like by the same voter won the race.
                raise AlreadyExists("like") from None

        return self._call("add_like", read_preference, go, write=True)

    def remove_like(
        self,
        tenant_id: str,
        comment_id: str,
        voter_id: str,
        *,
        read_preference: ReadPreference,
        expect: Expect | None = None,
    ) -> Deferred[Written[int]]:
        def go() -> Written[int]:
            key = dict(tenant_id=tenant_id, comment_id=comment_id)
            vote = dict(voter_id=voter_id, **key)
            plan = Plan()
            check_expected(plan, tenant_id, expect)
            plan.require(
                Sql("EXISTS (SELECT 1 FROM comments WHERE tenant_id = :tenant_id AND id = :comment_id)", **key),
                NotFound("comment"),
            )
            plan.require(
                Sql(
                    "EXISTS (SELECT 1 FROM votes"
                    " WHERE tenant_id = :tenant_id AND comment_id = :comment_id AND voter_id = :voter_id)",
                    **vote,
                ),
                NotFound("like"),
            )
            plan.add(
                Sql(
                    "DELETE FROM votes WHERE tenant_id = :tenant_id AND comment_id = :comment_id AND voter_id = :voter_id",
                    **vote,
                )
            )
            plan.add(
                Sql(
                    "DELETE FROM vote_addresses WHERE comment_id = :comment_id AND voter_id = :voter_id",
                    comment_id=comment_id,
                    voter_id=voter_id,
                )
            )
            counted = plan.add(
                Sql(
                    "UPDATE comments SET like_count = like_count - 1"
                    " WHERE tenant_id = :tenant_id AND id = :comment_id RETURNING like_count",
                    **key,
                )
            )
            with self._writing() as conn:
                rows = self._batch(conn, plan.steps, commit=True)
                return self._written(conn, int(rows_of(rows, counted)[0].like_count))

        return self._call("remove_like", read_preference, go, write=True)

    def add_flag(
        self,
        tenant_id: str,
        comment_id: str,
        flagger_id: str,
        *,
        created_ms: int,
        read_preference: ReadPreference,
        hide_at: int | None = None,
        expect: Expect | None = None,
        new_session: AnonymousSession | None = None,
    ) -> Deferred[Written[int]]:
        def go() -> Written[int]:
            key = dict(tenant_id=tenant_id, comment_id=comment_id)
            plan = Plan()
            check_expected(plan, tenant_id, expect)
            self._session_first(plan, tenant_id, new_session)
            _require_comment_and_author(plan, tenant_id, comment_id, flagger_id)
            plan.require(
                Sql(
                    "NOT EXISTS (SELECT 1 FROM flags WHERE comment_id = :comment_id AND flagger_id = :flagger_id)",
                    comment_id=comment_id,
                    flagger_id=flagger_id,
                ),
                AlreadyExists("flag"),
            )
            plan.add(
                Sql(
                    "INSERT INTO flags (comment_id, flagger_id, tenant_id, created_ms)"
                    " VALUES (:comment_id, :flagger_id, :tenant_id, :created_ms)",
                    flagger_id=flagger_id,
                    created_ms=created_ms,
                    **key,
                )
            )
            counted = plan.add(
                Sql(
                    "UPDATE comments SET flag_count = flag_count + 1"
                    " WHERE tenant_id = :tenant_id AND id = :comment_id RETURNING flag_count",
                    **key,
                )
            )
            if hide_at is not None:
                # Hidden for review: off public pages, still in the
                # moderators' pending and flagged queues. Each step is
                # guarded by the same condition, the status last.
                hide = Sql(
                    "EXISTS (SELECT 1 FROM comments WHERE tenant_id = :tenant_id AND id = :comment_id"
                    " AND status = :approved AND flag_count >= :hide_at)",
                    approved=_APPROVED,
                    hide_at=hide_at,
                    **key,
                )
                plan.add(
                    Sql(
                        "UPDATE threads SET comment_count = comment_count - 1"
                        " WHERE id = (SELECT thread_id FROM comments WHERE tenant_id = :tenant_id AND id = :comment_id)"
                        " AND",
                        **key,
                    )
                    + hide
                )
                plan.add(
                    Sql(
                        "INSERT INTO moderation_log (id, tenant_id, created_ms, actor, action, targets, reason)"
                        " SELECT CAST(:log_id AS TEXT), CAST(:tenant_id AS TEXT), CAST(:created_ms AS BIGINT),"
                        " 'auto', 'auto_hide', CAST(:targets AS TEXT), 'flags' WHERE",
                        log_id=new_id(),
                        tenant_id=tenant_id,
                        created_ms=created_ms,
                        targets=json.dumps({"commentIds": [comment_id], "banIds": []}),
                    )
                    + hide
                )
                plan.add(
                    Sql(
                        "UPDATE comments SET status = :pending WHERE tenant_id = :tenant_id AND id = :comment_id AND",
                        pending=CommentStatus.PENDING.value,
                        **key,
                    )
                    + hide
                )
            try:
                with self._writing() as conn:
                    # Last: the comment as the flag left it (counted, maybe hidden).
                    plan.add(
                        ob.emit_for_comment(
                            conn.backend,
                            tenant_id,
                            WebhookEvent.COMMENT_FLAGGED,
                            new_id(),
                            Sql(
                                "comments.tenant_id = :tenant_id AND comments.id = :comment_id",
                                tenant_id=tenant_id,
                                comment_id=comment_id,
                            ),
                            created_ms,
                            {"comment": ob.comment_sql(), "flaggerId": flagger_id},
                        )
                    )
                    rows = self._batch(conn, plan.steps, commit=True)
                    return self._written(conn, int(rows_of(rows, counted)[0].flag_count))
            except IntegrityError:
                raise AlreadyExists("flag") from None

        return self._call("add_flag", read_preference, go, write=True)

    def add_block(
        self,
        tenant_id: str,
        viewer_id: str,
        author_id: str,
        *,
        created_ms: int,
        read_preference: ReadPreference,
        expect: Expect | None = None,
        new_session: AnonymousSession | None = None,
    ) -> Deferred[Written[None]]:
        def go() -> Written[None]:
            if viewer_id == author_id:
                raise InvalidReference("an author cannot block themselves")
            block = dict(tenant_id=tenant_id, viewer_id=viewer_id, author_id=author_id)
            plan = Plan()
            check_expected(plan, tenant_id, expect)
            self._session_first(plan, tenant_id, new_session)
            for who in (author_id, viewer_id):
                plan.require(
                    Sql(
                        "EXISTS (SELECT 1 FROM authors WHERE tenant_id = :tenant_id AND id = :author_id)",
                        tenant_id=tenant_id,
                        author_id=who,
                    ),
                    NotFound("author"),
                )
            plan.require(
                Sql(
                    "NOT EXISTS (SELECT 1 FROM blocks"
                    " WHERE tenant_id = :tenant_id AND viewer_id = :viewer_id AND author_id = :author_id)",
                    **block,
                ),
                AlreadyExists("block"),
            )
            plan.add(
                Sql(
                    "INSERT INTO blocks (tenant_id, viewer_id, author_id, created_ms)"
                    " VALUES (:tenant_id, :viewer_id, :author_id, :created_ms)",
                    created_ms=created_ms,
                    **block,
                )
            )
            try:
                with self._writing() as conn:
                    self._batch(conn, plan.steps, commit=True)
                    return self._written(conn, None)
            except IntegrityError:
                raise AlreadyExists("block") from None

        return self._call("add_block", read_preference, go, write=True)

    def remove_block(
        self,
        tenant_id: str,
        viewer_id: str,
        author_id: str,
        *,
        read_preference: ReadPreference,
        expect: Expect | None = None,
    ) -> Deferred[Written[None]]:
        def go() -> Written[None]:
            block = dict(tenant_id=tenant_id, viewer_id=viewer_id, author_id=author_id)
            plan = Plan()
            check_expected(plan, tenant_id, expect)
            plan.require(
                Sql(
                    "EXISTS (SELECT 1 FROM blocks"
                    " WHERE tenant_id = :tenant_id AND viewer_id = :viewer_id AND author_id = :author_id)",
                    **block,
                ),
                NotFound("block"),
            )
            plan.add(
                Sql(
                    "DELETE FROM blocks WHERE tenant_id = :tenant_id AND viewer_id = :viewer_id AND author_id = :author_id",
                    **block,
                )
            )
            with self._writing() as conn:
                self._batch(conn, plan.steps, commit=True)
                return self._written(conn, None)

        return self._call("remove_block", read_preference, go, write=True)

    def viewer_state(
        self,
        tenant_id: str,
        viewer_id: str,
        comment_ids: Sequence[str],
        *,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[ViewerState]:
        ids = list(comment_ids)

        def go() -> ViewerState:
            liked: set[str] = set()
            with self._reading(read_preference) as conn:
                for start in range(0, len(ids), 500):
                    liked.update(
                        conn.run(
                            Sql(
                                "SELECT comment_id FROM votes"
                                " WHERE tenant_id = :tenant_id AND voter_id = :viewer_id AND comment_id IN :ids",
                                tenant_id=tenant_id,
                                viewer_id=viewer_id,
                                ids=ids[start : start + 500],
                            )
                        ).scalars()
                    )
                blocked = conn.run(
                    Sql(
                        "SELECT author_id FROM blocks WHERE tenant_id = :tenant_id AND viewer_id = :viewer_id",
                        tenant_id=tenant_id,
                        viewer_id=viewer_id,
                    )
                ).scalars()
                return ViewerState(liked=frozenset(liked), blocked_authors=frozenset(blocked))

        return self._call("viewer_state", read_preference, go, token=token)

    # Moderation

    def moderation_queue(
        self,
        tenant_id: str,
        *,
        queue: ModerationQueue,
        sort: QueueSort,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        filters: QueueFilter | None = None,
        token: str | None = None,
    ) -> Deferred[Page[Comment]]:
        kind = "queue-{}-{}".format(queue.value, sort.value)
        by_flags = sort is QueueSort.MOST_FLAGGED
        try:
            after = decode_cursor(cursor, kind, (int, int, str) if by_flags else (int, str)) if cursor else None
        except BadCursor:
            return fail()
        if filters is None:
            filters = QueueFilter()
        # Filters are added as "AND ..." fragments, in one text.
        query = Sql("SELECT * FROM comments WHERE tenant_id = :tenant_id", tenant_id=tenant_id)
        if queue is ModerationQueue.FLAGGED:
            query += Sql(
                "AND flag_count > 0 AND status IN :flaggable",
                flaggable=[_APPROVED, CommentStatus.PENDING.value],
            )
        else:
            query += Sql("AND status = :status", status=queue.value)
        if filters.thread_id is not None:
            query += Sql("AND thread_id = :thread_id", thread_id=filters.thread_id)
        if filters.author_id is not None:
            query += Sql("AND author_id = :author_id", author_id=filters.author_id)
        if filters.since_ms is not None:
            query += Sql("AND created_ms >= :since_ms", since_ms=filters.since_ms)
        if filters.until_ms is not None:
            query += Sql("AND created_ms < :until_ms", until_ms=filters.until_ms)
        if filters.text:
            # Case-insensitive substring: PostgreSQL's ILIKE on a UTF-8
            # database is lower() of both sides, then LIKE; SQLite's lower()
            # folds ASCII, as its LIKE does. The text's own wildcards match
            # themselves ('/' escapes them).
            escaped = filters.text.replace("/", "//").replace("%", "/%").replace("_", "/_")
            query += Sql(
                "AND lower(body_source) LIKE lower(CAST(:pattern AS TEXT)) ESCAPE '/'", pattern="%" + escaped + "%"
            )
        if by_flags:
            if after is not None:
                flags, created, cid = after
                query += Sql(
                    "AND (flag_count < :after_flags"
                    " OR (flag_count = :after_flags AND created_ms > :after_ms)"
                    " OR (flag_count = :after_flags AND created_ms = :after_ms AND id > :after_id))",
                    after_flags=flags,
                    after_ms=created,
                    after_id=cid,
                )
            order = "ORDER BY flag_count DESC, created_ms, id LIMIT :limit"
        else:
            if after is not None:
                created, cid = after
                query += Sql(
                    "AND (created_ms > :after_ms OR (created_ms = :after_ms AND id > :after_id))",
                    after_ms=created,
                    after_id=cid,
                )
            order = "ORDER BY created_ms, id LIMIT :limit"
        query += Sql(order, limit=limit + 1)

        def go() -> Page[Comment]:
            with self._reading(read_preference) as conn:
                rows = conn.run(query).all()
            if by_flags:
                return page_of(
                    rows, limit, _comment, lambda last: encode_cursor(kind, last.flag_count, last.created_ms, last.id)
                )
            return page_of(rows, limit, _comment, lambda last: encode_cursor(kind, last.created_ms, last.id))

        return self._call("moderation_queue", read_preference, go, token=token)

    def _set_status(
        self,
        conn: Conn,
        tenant_id: str,
        comments: Sequence[Comment],
        status: CommentStatus,
        *,
        clear_flags: bool = False,
        event: tuple[str, int, dict[str, Any]] | None = None,
    ) -> list[tuple[Comment, Comment]]:
        """Give ``comments`` (as read in this transaction) ``status``: one
        statement per table however many there are.

        :param event: ``(event id prefix, created_ms, extra)``: emit the
            status's webhook event for each comment that changes.

        :returns: ``(before, after)`` of the comments that changed.
        """
        changed = [
            (old, replace(old, status=status, flag_count=0 if clear_flags else old.flag_count))
            for old in comments
            if old.status is not status or (clear_flags and old.flag_count)
        ]
        if not changed:
            return []
        # ``comments`` were read in this transaction and are all the tenant's
        # (a comment never changes tenant): by primary key alone, for the
        # reason given in :meth:`moderate`.
        ids = [old.id for old, _ in changed]
        if event is not None and status in _STATUS_EVENTS:
            prefix, created_ms, extra = event
            conn.run(
                ob.emit_for_comments(
                    tenant_id,
                    _STATUS_EVENTS[status],
                    prefix,
                    Sql("comments.id IN :ids", ids=ids),
                    created_ms,
                    status=status.value,
                    extra=extra,
                )
            )
        if clear_flags:
            conn.run(Sql("DELETE FROM flags WHERE comment_id IN :ids", ids=ids))
            conn.run(
                Sql(
                    "UPDATE comments SET status = :status, flag_count = 0 WHERE id IN :ids",
                    status=status.value,
                    ids=ids,
                )
            )
        else:
            conn.run(Sql("UPDATE comments SET status = :status WHERE id IN :ids", status=status.value, ids=ids))
        deltas: dict[str, int] = {}
        for old, new in changed:
            delta = (new.status is CommentStatus.APPROVED) - (old.status is CommentStatus.APPROVED)
            if delta:
                deltas[old.thread_id] = deltas.get(old.thread_id, 0) + delta
        deltas = {thread: delta for thread, delta in deltas.items() if delta}
        if deltas:
            # ``CASE id WHEN <thread> THEN <delta> ...``: one statement for
            # every thread, each moved by its own delta.
            count = Sql("UPDATE threads SET comment_count = comment_count + CASE id")
            for i, (thread, delta) in enumerate(deltas.items()):
                count += Sql(
                    "WHEN :thread_{0} THEN CAST(:delta_{0} AS INTEGER)".format(i),
                    **{"thread_{}".format(i): thread, "delta_{}".format(i): delta},
                )
            conn.run(count + Sql("ELSE 0 END WHERE id IN :threads", threads=list(deltas)))
        return changed

    def _audit(
        self,
        conn: Conn,
        tenant_id: str,
        actor: str,
        action: str,
        comment_ids: Sequence[str],
        ban_ids: Sequence[str],
        reason: str,
        created_ms: int,
    ) -> AuditEntry:
        """Write one audit entry in the caller's transaction."""
        entry = AuditEntry(
            id=new_id(),
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            comment_ids=tuple(comment_ids),
            ban_ids=tuple(ban_ids),
            reason=reason,
            created_ms=created_ms,
        )
        conn.run(
            Sql(
                "INSERT INTO moderation_log (id, tenant_id, created_ms, actor, action, targets, reason)"
                " VALUES (:id, :tenant_id, :created_ms, :actor, :action, :targets, :reason)",
                id=entry.id,
                tenant_id=tenant_id,
                created_ms=created_ms,
                actor=actor,
                action=action,
                targets=json.dumps({"commentIds": list(comment_ids), "banIds": list(ban_ids)}),
                reason=reason,
            )
        )
        return entry

    def _insert_bans(
        self,
        conn: Conn,
        tenant_id: str,
        kind: BanKind,
        values: Sequence[str],
        *,
        actor: str,
        reason: str,
        created_ms: int,
        expires_ms: int | None,
    ) -> list[Ban]:
        bans = [
            Ban(
                id=new_id(),
                tenant_id=tenant_id,
                kind=kind,
                value=value,
                reason=reason,
                actor=actor,
                created_ms=created_ms,
                expires_ms=expires_ms,
                lifted_ms=None,
            )
            for value in values
        ]
        if bans:
            rows = [(b.id, tenant_id, kind.value, b.value, reason, actor, created_ms, expires_ms, None) for b in bans]
            columns = ("id", "tenant_id", "kind", "value", "reason", "actor", "created_ms", "expires_ms", "lifted_ms")
            conn.run(Sql("INSERT INTO bans") + rows_of_values(columns, rows))
        for ban in bans:
            if kind is BanKind.AUTHOR:
                data = {
                    "author": {"id": ban.value},
                    "ban": {"id": ban.id, "reason": reason, "expiresAt": expires_ms, "createdAt": created_ms},
                    "actor": actor,
                }
                conn.run(ob.emit(tenant_id, WebhookEvent.AUTHOR_BANNED, ban.id, created_ms, data))
        return bans

    def _comments_of(self, conn: Conn, tenant_id: str, author_ids: Sequence[str]) -> list[Comment]:
        """Every comment of these authors not yet removed."""
        rows = conn.run(
            Sql(
                "SELECT * FROM comments WHERE tenant_id = :tenant_id AND author_id IN :author_ids AND status != :removed",
                tenant_id=tenant_id,
                author_ids=list(author_ids),
                removed=CommentStatus.REMOVED.value,
            )
        )
        return [_comment(r) for r in rows]

    def moderate(
        self,
        tenant_id: str,
        action: ModerationAction,
        comment_ids: Sequence[str],
        *,
        actor: str,
        reason: str,
        created_ms: int,
        read_preference: ReadPreference,
        ban_expires_ms: int | None = None,
        remove_all: bool = False,
    ) -> Deferred[Written[Moderated]]:
        ids = list(comment_ids)
        if not ids or len(ids) > MAX_BULK_IDS or len(set(ids)) != len(ids):
            return fail(InvalidReference("name 1 to {} distinct comment ids".format(MAX_BULK_IDS)))
        if ban_expires_ms is not None and ban_expires_ms <= created_ms:
            return fail(InvalidReference("a ban must expire after it is made"))

        if action is ModerationAction.BAN:
            go = self._ban_from_comments(tenant_id, ids, actor, reason, created_ms, ban_expires_ms, remove_all)
        else:
            go = self._set_statuses(tenant_id, action, ids, actor, reason, created_ms)
        return self._call("moderate", read_preference, go, write=True)

    def _set_statuses(
        self, tenant_id: str, action: ModerationAction, ids: list[str], actor: str, reason: str, created_ms: int
    ) -> Callable[[], Written[Moderated]]:
        """Approve, remove, mark spam or restore ``ids``: one batch of
        statements that stand alone (see :meth:`_batch`), so a far primary
        costs one round trip.

        Every write is guarded in SQL by "all the ids are this tenant's":
        with a foreign or unknown id nothing is written, and the rows read
        first tell why. Thread counts are recounted for the touched threads,
        which needs nothing read before.
        """
        status = {
            ModerationAction.APPROVE: CommentStatus.APPROVED,
            ModerationAction.RESTORE: CommentStatus.APPROVED,
            ModerationAction.REMOVE: CommentStatus.REMOVED,
            ModerationAction.SPAM: CommentStatus.SPAM,
        }[action]
        clear_flags = action is ModerationAction.APPROVE
        gone = (CommentStatus.REMOVED, CommentStatus.SPAM)

        def changes(old: Comment) -> bool:
            if action is ModerationAction.RESTORE:
                return old.status in gone
            return old.status is not status or (clear_flags and old.flag_count > 0)

        # The rows the action changes. Columns are named ``comments.<column>``
        # so the event's condition (comments joined to webhook endpoints)
        # can say the same.
        which_sql: Sql
        if action is ModerationAction.RESTORE:
            which_sql = Sql("comments.status IN :gone", gone=[x.value for x in gone])
        elif clear_flags:
            which_sql = Sql("(comments.status != :status OR comments.flag_count > 0)", status=status.value)
        else:
            which_sql = Sql("comments.status != :status", status=status.value)
        # All the ids are this tenant's. By primary key alone: with the
        # tenant in the condition SQLite picks a tenant index and scans all of
        # the tenant's comments.
        guard_sql = Sql(
            "(SELECT COALESCE(SUM(CASE WHEN owned.tenant_id = :tenant_id THEN 1 ELSE 0 END), 0)"
            " FROM comments AS owned WHERE owned.id IN :ids) = :id_count",
            tenant_id=tenant_id,
            ids=ids,
            id_count=len(ids),
        )
        entry = AuditEntry(
            id=new_id(),
            tenant_id=tenant_id,
            actor=actor,
            action=action.value,
            comment_ids=tuple(ids),
            ban_ids=(),
            reason=reason,
            created_ms=created_ms,
        )
        set_status = "status = :status, flag_count = 0" if clear_flags else "status = :status"
        statements: list[Step] = [
            # Before the update: the rows it changes, with their old status.
            ob.emit_for_comments(
                tenant_id,
                _ACTION_EVENTS[action],
                entry.id,
                Sql("comments.id IN :ids AND", ids=ids) + which_sql + Sql("AND") + guard_sql,
                created_ms,
                status=status.value,
                extra={"action": action.value, "actor": actor, "reason": reason, "auditId": entry.id},
            ),
            Sql("UPDATE comments SET " + set_status + " WHERE comments.id IN :ids AND", status=status.value, ids=ids)
            + which_sql
            + Sql("AND")
            + guard_sql,
            # Recounted, not moved by deltas: that needs nothing read first.
            Sql(
                "UPDATE threads SET comment_count = (SELECT COUNT(*) FROM comments AS recount"
                " WHERE recount.tenant_id = threads.tenant_id AND recount.thread_id = threads.id"
                " AND recount.status = :approved)"
                " WHERE threads.id IN (SELECT touched.thread_id FROM comments AS touched WHERE touched.id IN :ids) AND",
                approved=_APPROVED,
                ids=ids,
            )
            + guard_sql,
        ]
        if clear_flags:
            statements.append(Sql("DELETE FROM flags WHERE comment_id IN :ids AND", ids=ids) + guard_sql)
        statements.append(
            # PostgreSQL must know the type of a value selected: each is cast.
            Sql(
                "INSERT INTO moderation_log (id, tenant_id, created_ms, actor, action, targets, reason)"
                " SELECT CAST(:audit_id AS TEXT), CAST(:tenant_id AS TEXT), CAST(:created_ms AS BIGINT),"
                " CAST(:actor AS TEXT), CAST(:action AS TEXT), CAST(:targets AS TEXT), CAST(:reason AS TEXT)"
                " WHERE",
                audit_id=entry.id,
                tenant_id=tenant_id,
                created_ms=created_ms,
                actor=actor,
                action=action.value,
                targets=json.dumps({"commentIds": ids, "banIds": []}),
                reason=reason,
            )
            + guard_sql
        )

        def go() -> Written[Moderated]:
            with self._writing() as conn:
                read = Sql("SELECT * FROM comments WHERE id IN :ids", ids=ids)
                if conn.backend == db.POSTGRESQL:
                    # SQLite has no row locks: its write transaction holds
                    # the whole database.
                    read += Sql("FOR UPDATE")
                rows = self._batch(conn, [read, *statements], commit=True)[0]
                assert rows is not None
                found = [_comment(r) for r in rows]
                if len(found) != len(ids) or any(x.tenant_id != tenant_id for x in found):
                    # Another tenant's ids are as unknown as made-up ones;
                    # the guard kept every write from applying.
                    raise NotFound("comment")
                order = {cid: i for i, cid in enumerate(ids)}
                found.sort(key=lambda x: order[x.id])
                changed = [
                    (old, replace(old, status=status, flag_count=0 if clear_flags else old.flag_count))
                    for old in found
                    if changes(old)
                ]
                return self._written(conn, Moderated(changed=changed, bans=[], entry=entry))

        return go

    def _ban_from_comments(
        self,
        tenant_id: str,
        ids: list[str],
        actor: str,
        reason: str,
        created_ms: int,
        ban_expires_ms: int | None,
        remove_all: bool,
    ) -> Callable[[], Written[Moderated]]:
        """Ban the authors of ``ids`` (the bans need the authors read first)."""

        def go() -> Written[Moderated]:
            with self._writing() as conn:
                # By primary key alone (see _set_statuses); the tenant is
                # checked on the rows.
                found = [_comment(r) for r in conn.run(Sql("SELECT * FROM comments WHERE id IN :ids", ids=ids))]
                if len(found) != len(ids) or any(x.tenant_id != tenant_id for x in found):
                    raise NotFound("comment")
                order = {cid: i for i, cid in enumerate(ids)}
                found.sort(key=lambda x: order[x.id])
                authors = sorted({x.author_id for x in found})
                bans = self._insert_bans(
                    conn,
                    tenant_id,
                    BanKind.AUTHOR,
                    authors,
                    actor=actor,
                    reason=reason,
                    created_ms=created_ms,
                    expires_ms=ban_expires_ms,
                )
                doomed = self._comments_of(conn, tenant_id, authors) if remove_all else found
                extra = {"action": "ban", "actor": actor, "reason": reason}
                changed = self._set_status(
                    conn, tenant_id, doomed, CommentStatus.REMOVED, event=(new_id(), created_ms, extra)
                )
                touched = [old.id for old, _ in changed]
                named = ids + [cid for cid in touched if cid not in order]
                entry = self._audit(
                    conn, tenant_id, actor, ModerationAction.BAN.value, named, [b.id for b in bans], reason, created_ms
                )
                return self._written(conn, Moderated(changed=changed, bans=bans, entry=entry))

        return go

    def add_ban(
        self,
        tenant_id: str,
        kind: BanKind,
        value: str,
        *,
        actor: str,
        reason: str,
        created_ms: int,
        read_preference: ReadPreference,
        expires_ms: int | None = None,
        remove_all: bool = False,
    ) -> Deferred[Written[Moderated]]:
        if expires_ms is not None and expires_ms <= created_ms:
            return fail(InvalidReference("a ban must expire after it is made"))
        if remove_all and kind is not BanKind.AUTHOR:
            return fail(InvalidReference("only an author's comments can be removed with a ban"))

        def go() -> Written[Moderated]:
            with self._writing() as conn:
                if kind is BanKind.AUTHOR:
                    self._require_author(conn, tenant_id, value)
                else:
                    self._require_tenant(conn, tenant_id)
                bans = self._insert_bans(
                    conn,
                    tenant_id,
                    kind,
                    [value],
                    actor=actor,
                    reason=reason,
                    created_ms=created_ms,
                    expires_ms=expires_ms,
                )
                changed = []
                if remove_all:
                    extra = {"action": "ban", "actor": actor, "reason": reason}
                    changed = self._set_status(
                        conn,
                        tenant_id,
                        self._comments_of(conn, tenant_id, [value]),
                        CommentStatus.REMOVED,
                        event=(new_id(), created_ms, extra),
                    )
                entry = self._audit(
                    conn, tenant_id, actor, "ban", [old.id for old, _ in changed], [bans[0].id], reason, created_ms
                )
                return self._written(conn, Moderated(changed=changed, bans=bans, entry=entry))

        return self._call("add_ban", read_preference, go, write=True)

    def lift_ban(
        self, tenant_id: str, ban_id: str, *, actor: str, reason: str, lifted_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[Ban]]:
        def go() -> Written[Ban]:
            with self._writing() as conn:
                row = conn.run(
                    Sql(
                        "SELECT * FROM bans WHERE tenant_id = :tenant_id AND id = :id AND lifted_ms IS NULL",
                        tenant_id=tenant_id,
                        id=ban_id,
                    )
                ).first()
                if row is None:
                    raise NotFound("ban")
                conn.run(
                    Sql(
                        "UPDATE bans SET lifted_ms = :lifted_ms"
                        " WHERE tenant_id = :tenant_id AND id = :id AND lifted_ms IS NULL",
                        lifted_ms=lifted_ms,
                        tenant_id=tenant_id,
                        id=ban_id,
                    )
                )
                self._audit(conn, tenant_id, actor, "lift_ban", [], [ban_id], reason, lifted_ms)
                return self._written(conn, replace(_ban(row), lifted_ms=lifted_ms))

        return self._call("lift_ban", read_preference, go, write=True)

    @staticmethod
    def _in_force(now_ms: int) -> Sql:
        """The condition of a ban in force at ``now_ms``."""
        return Sql("lifted_ms IS NULL AND (expires_ms IS NULL OR expires_ms > :now_ms)", now_ms=now_ms)

    def list_bans(
        self,
        tenant_id: str,
        *,
        active_at_ms: int | None,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[Page[Ban]]:
        try:
            after = decode_cursor(cursor, "bans", (int, str)) if cursor else None
        except BadCursor:
            return fail()
        query = Sql("SELECT * FROM bans WHERE tenant_id = :tenant_id", tenant_id=tenant_id)
        if active_at_ms is not None:
            query += Sql("AND") + self._in_force(active_at_ms)
        if after is not None:
            query += Sql(
                "AND (created_ms < :after_ms OR (created_ms = :after_ms AND id < :after_id))",
                after_ms=after[0],
                after_id=after[1],
            )
        query += Sql("ORDER BY created_ms DESC, id DESC LIMIT :limit", limit=limit + 1)

        def go() -> Page[Ban]:
            with self._reading(read_preference) as conn:
                rows = conn.run(query).all()
            return page_of(rows, limit, _ban, lambda last: encode_cursor("bans", last.created_ms, last.id))

        return self._call("list_bans", read_preference, go, token=token)

    def find_ban(
        self,
        tenant_id: str,
        *,
        author_id: str | None,
        address_hash: str | None,
        now_ms: int,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[Ban | None]:
        named = []
        if author_id is not None:
            named.append(
                Sql(
                    "(kind = :author_kind AND value = :author_id)",
                    author_kind=BanKind.AUTHOR.value,
                    author_id=author_id,
                )
            )
        if address_hash is not None:
            named.append(
                Sql(
                    "(kind = :address_kind AND value = :address_hash)",
                    address_kind=BanKind.ADDRESS.value,
                    address_hash=address_hash,
                )
            )

        def go() -> Ban | None:
            if not named:
                return None
            with self._reading(read_preference) as conn:
                row = conn.run(
                    Sql("SELECT * FROM bans WHERE tenant_id = :tenant_id AND (", tenant_id=tenant_id)
                    + db.join(named, " OR ")
                    + Sql(") AND")
                    + self._in_force(now_ms)
                    + Sql("ORDER BY created_ms, id LIMIT 1")
                ).first()
            return None if row is None else _ban(row)

        return self._call("find_ban", read_preference, go, token=token)

    def audit_log(
        self,
        tenant_id: str,
        *,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[Page[AuditEntry]]:
        try:
            after = decode_cursor(cursor, "audit", (int, int)) if cursor else None
        except BadCursor:
            return fail()
        query = Sql("SELECT * FROM moderation_log WHERE tenant_id = :tenant_id", tenant_id=tenant_id)
        if after is not None:
            query += Sql(
                "AND (created_ms < :after_ms OR (created_ms = :after_ms AND seq < :after_seq))",
                after_ms=after[0],
                after_seq=after[1],
            )
        query += Sql("ORDER BY created_ms DESC, seq DESC LIMIT :limit", limit=limit + 1)

        def go() -> Page[AuditEntry]:
            with self._reading(read_preference) as conn:
                rows = conn.run(query).all()
            return page_of(rows, limit, _audit_entry, lambda last: encode_cursor("audit", last.created_ms, last.seq))

        return self._call("audit_log", read_preference, go, token=token)

    # Credits

    def charge_credits(
        self,
        tenant_id: str,
        charges: Mapping[str, tuple[int, int]],
        *,
        created_ms: int,
        read_preference: ReadPreference,
    ) -> Deferred[Written[None]]:
        rows = [(tenant_id, op, calls, credits, created_ms) for op, (calls, credits) in sorted(charges.items())]

        def go() -> Written[None]:
            with self._writing() as conn:
                self._require_tenant(conn, tenant_id)
                if rows:
                    columns = ("tenant_id", "operation", "calls", "credits", "created_ms")
                    conn.run(Sql("INSERT INTO credit_ledger") + rows_of_values(columns, rows))
                return self._written(conn, None)

        return self._call("charge_credits", read_preference, go, write=True)

    def credit_usage(
        self, tenant_id: str, *, since_ms: int, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[list[CreditUsage]]:
        def go() -> list[CreditUsage]:
            with self._reading(read_preference) as conn:
                rows = conn.run(
                    Sql(
                        "SELECT operation, SUM(calls) AS calls, SUM(credits) AS credits FROM credit_ledger"
                        " WHERE tenant_id = :tenant_id AND created_ms >= :since_ms"
                        " GROUP BY operation ORDER BY operation",
                        tenant_id=tenant_id,
                        since_ms=since_ms,
                    )
                ).all()
            return [CreditUsage(operation=op, calls=int(calls), credits=int(credits)) for op, calls, credits in rows]

        return self._call("credit_usage", read_preference, go, token=token)
