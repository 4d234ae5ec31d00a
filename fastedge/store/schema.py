# -*- test-case-name: tests.unit.store.test_schema -*-
"""Tables of the SQL backends and their versioned migrations.

The tables are declared once with SQLAlchemy Core, so the embedded SQLite
backend and the replicated SQL engines share one schema and one set of
statements. :data:`MIGRATIONS` lists every schema version in order; each
entry is applied once, in its own transaction, and recorded in
``schema_version``. A released migration is never edited: a change to the
schema is a new entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
)

metadata = MetaData()

#: Identifiers are random, URL-safe strings (never sequential, so they cannot
#: be guessed or enumerated across tenants).
_ID = String(32)

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_ms", BigInteger, nullable=False),
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("deployment", String(63), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("settings", Text, nullable=False, default="{}"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),
    Index("api_keys_tenant", "tenant_id"),
)

authors = Table(
    "authors",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("authors_tenant", "tenant_id", "id"),
)

anonymous_sessions = Table(
    "anonymous_sessions",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("author_id", _ID, ForeignKey("authors.id"), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("external_id", String(256), nullable=False),
    Column("author_id", _ID, ForeignKey("authors.id"), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    UniqueConstraint("tenant_id", "external_id", name="users_tenant_external"),
)

threads = Table(
    "threads",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("url_id", Text, nullable=False),
    Column("title", Text, nullable=False, default=""),
    Column("closed", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    #: Approved comments in the thread, kept by every write that changes it.
    Column("comment_count", Integer, nullable=False, default=0),
    UniqueConstraint("tenant_id", "url_id", name="threads_tenant_url"),
    Index("threads_tenant_created", "tenant_id", "created_ms", "id"),
)

comments = Table(
    "comments",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("thread_id", _ID, ForeignKey("threads.id"), nullable=False),
    Column("parent_id", _ID, nullable=True),
    Column("root_id", _ID, nullable=False),
    Column("author_id", _ID, ForeignKey("authors.id"), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("body_source", Text, nullable=False),
    Column("body_html", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("edited_ms", BigInteger, nullable=True),
    Column("like_count", Integer, nullable=False, default=0),
    Column("flag_count", Integer, nullable=False, default=0),
    Index("comments_thread_new", "tenant_id", "thread_id", "status", "created_ms", "id"),
    Index("comments_thread_top", "tenant_id", "thread_id", "status", "like_count", "created_ms", "id"),
    Index("comments_root", "tenant_id", "root_id"),
    Index("comments_status", "tenant_id", "status", "created_ms", "id"),
)

votes = Table(
    "votes",
    metadata,
    Column("comment_id", _ID, ForeignKey("comments.id"), primary_key=True),
    Column("voter_id", _ID, primary_key=True),
    Column("tenant_id", _ID, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("votes_voter", "tenant_id", "voter_id"),
)

flags = Table(
    "flags",
    metadata,
    Column("comment_id", _ID, ForeignKey("comments.id"), primary_key=True),
    Column("flagger_id", _ID, primary_key=True),
    Column("tenant_id", _ID, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

blocks = Table(
    "blocks",
    metadata,
    Column("tenant_id", _ID, primary_key=True),
    Column("viewer_id", _ID, primary_key=True),
    Column("author_id", _ID, primary_key=True),
    Column("created_ms", BigInteger, nullable=False),
)

credit_ledger = Table(
    "credit_ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("operation", String(64), nullable=False),
    Column("calls", Integer, nullable=False),
    Column("credits", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("credit_ledger_tenant", "tenant_id", "created_ms"),
)

# Version 2: tenant settings' write-only SSO secrets, SSO users' profiles,
# per-thread access (group locks, sign-in to post), claims of anonymous
# authors by signed-in users. New tables only, so version 1 (which creates
# its tables from these same declarations) is unchanged.

tenant_sso_secrets = Table(
    "tenant_sso_secrets",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    #: The secret itself: HMAC needs it, so it cannot be stored hashed.
    Column("secret", String(256), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    #: ``NULL`` for the current secret; a replaced one is accepted until then.
    Column("accepted_until_ms", BigInteger, nullable=True),
    Index("tenant_sso_secrets_tenant", "tenant_id"),
)

user_profiles = Table(
    "user_profiles",
    metadata,
    Column("user_id", _ID, ForeignKey("users.id"), primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("author_id", _ID, ForeignKey("authors.id"), nullable=False, unique=True),
    Column("email", String(320), nullable=True),
    Column("avatar", Text, nullable=True),
    #: JSON list of SSO group ids.
    Column("group_ids", Text, nullable=False, default="[]"),
    Column("is_moderator", Boolean, nullable=False, default=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("updated_ms", BigInteger, nullable=False),
)

thread_access = Table(
    "thread_access",
    metadata,
    Column("thread_id", _ID, ForeignKey("threads.id"), primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    #: JSON list of SSO group ids; ``NULL``: the tenant's default lock.
    Column("group_ids", Text, nullable=True),
    #: ``NULL``: the tenant's ``requireSignIn``.
    Column("require_sign_in", Boolean, nullable=True),
)

author_claims = Table(
    "author_claims",
    metadata,
    #: An anonymous author is claimed at most once (claims are one way).
    Column("from_author_id", _ID, ForeignKey("authors.id"), primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("to_author_id", _ID, ForeignKey("authors.id"), nullable=False),
    Column("claimed_ms", BigInteger, nullable=False),
)

_V3_TABLES = (tenant_sso_secrets, user_profiles, thread_access, author_claims)

_V1_TABLES = (
    tenants,
    api_keys,
    authors,
    anonymous_sessions,
    users,
    threads,
    comments,
    votes,
    flags,
    blocks,
    credit_ledger,
)


#: Moderation (version 2): queue indexes on comments, bans, the audit log,
#: and the client address behind each like.

#: The moderation queue by author, and a ban's "remove all their comments".
comments_author = Index("comments_author", comments.c.tenant_id, comments.c.author_id, comments.c.created_ms)
#: The flagged queue, most-flagged first (then oldest first).
comments_flagged = Index(
    "comments_flagged", comments.c.tenant_id, comments.c.flag_count.desc(), comments.c.created_ms, comments.c.id
)

bans = Table(
    "bans",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    #: ``author`` (a user's or an anonymous session's author id) or
    #: ``address`` (the hash of a client address).
    Column("kind", String(16), nullable=False),
    Column("value", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=True),
    Column("lifted_ms", BigInteger, nullable=True),
    Index("bans_lookup", "tenant_id", "kind", "value"),
    Index("bans_tenant_created", "tenant_id", "created_ms", "id"),
)

moderation_log = Table(
    "moderation_log",
    metadata,
    #: Orders entries made in the same millisecond; never shown (``id`` is).
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", _ID, nullable=False, unique=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(32), nullable=False),
    #: JSON: ``{"commentIds": [...], "banIds": [...]}``.
    Column("targets", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Index("moderation_log_tenant", "tenant_id", "created_ms", "seq"),
)

#: Which client address (hashed) each like came from: likes per address
#: and comment are bounded, whatever sessions the client makes up.
vote_addresses = Table(
    "vote_addresses",
    metadata,
    Column("comment_id", _ID, primary_key=True),
    Column("voter_id", _ID, primary_key=True),
    Column("tenant_id", _ID, nullable=False),
    Column("address_hash", String(64), nullable=False),
    Index("vote_addresses_comment", "comment_id", "address_hash"),
)


# Version 4: outbound webhooks (docs/webhooks.md). An endpoint's events are
# kept as ``|type|type|`` so "is this endpoint subscribed" is one LIKE in
# every dialect; a delivery row is the outbox: written in the transaction of
# the change it describes, claimed with a lease, deleted once delivered.

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("url", Text, nullable=False),
    #: Write-only: HMAC needs it, so it cannot be stored hashed; never shown.
    Column("secret", String(256), nullable=False),
    Column("events", Text, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("description", String(200), nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("secret_set_ms", BigInteger, nullable=False),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    #: Why the node turned the endpoint off (``NULL``: it did not).
    Column("disabled_reason", Text, nullable=True),
    Column("disabled_ms", BigInteger, nullable=True),
    Index("webhook_endpoints_tenant", "tenant_id", "created_ms", "id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    #: The order of the changes (per endpoint, deliveries go in this order).
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    #: The event's id, the receiver's idempotency key (shared by the
    #: deliveries of one event to several endpoints).
    Column("event_id", String(64), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("tenant_id", _ID, ForeignKey("tenants.id"), nullable=False),
    Column("endpoint_id", _ID, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    #: The event's ``data`` object, as JSON text, fixed when the change is made.
    Column("data", Text, nullable=False),
    #: ``pending`` or ``failed`` (delivered rows are deleted).
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_ms", BigInteger, nullable=False),
    #: Retries stop this long after it (the change, or a replay).
    Column("window_start_ms", BigInteger, nullable=False),
    Column("lease_owner", String(32), nullable=True),
    Column("lease_until_ms", BigInteger, nullable=True),
    Column("last_attempt_ms", BigInteger, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("event_id", "endpoint_id", name="webhook_deliveries_event"),
    Index("webhook_deliveries_due", "state", "next_attempt_ms"),
    Index("webhook_deliveries_endpoint", "endpoint_id", "state", "seq"),
)

_V4_TABLES = (webhook_endpoints, webhook_deliveries)


def _v1(conn: Connection) -> None:
    """The first schema: every table above as first released."""
    metadata.create_all(conn, tables=list(_V1_TABLES))


def _v2(conn: Connection) -> None:
    """Moderation: bans, the audit log, like addresses, queue indexes.

    The new comment indexes are declared on ``comments``, so ``_v1`` on an
    empty database already makes them: created here only if absent.
    """
    metadata.create_all(conn, tables=[bans, moderation_log, vote_addresses])
    comments_author.create(conn, checkfirst=True)
    comments_flagged.create(conn, checkfirst=True)


def _v3(conn: Connection) -> None:
    """Tenant SSO secrets, SSO user profiles, thread access, author claims."""
    metadata.create_all(conn, tables=list(_V3_TABLES))


def _v4(conn: Connection) -> None:
    """Outbound webhooks: endpoints and the delivery outbox."""
    metadata.create_all(conn, tables=list(_V4_TABLES))


Migration = Callable[[Connection], None]

#: Schema versions in order; version N is ``MIGRATIONS[N - 1]``.
MIGRATIONS: Sequence[Migration] = (_v1, _v2, _v3, _v4)


def current_version(conn: Connection) -> int:
    """The newest applied schema version (0 for an empty database)."""
    schema_version.create(conn, checkfirst=True)
    newest = conn.execute(select(schema_version.c.version).order_by(schema_version.c.version.desc()).limit(1)).scalar()
    return int(newest or 0)


def migrate(conn: Connection, applied_ms: int, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply, in the caller's transaction, the migrations not yet applied.

    :returns: the versions applied now.
    :raises RuntimeError: when the database is newer than this software.
    """
    have = current_version(conn)
    if have > len(migrations):
        raise RuntimeError(
            "database schema version {} is newer than this software knows ({})".format(have, len(migrations))
        )
    applied = []
    for version in range(have + 1, len(migrations) + 1):
        migrations[version - 1](conn)
        conn.execute(schema_version.insert().values(version=version, applied_ms=applied_ms))
        applied.append(version)
    return applied
