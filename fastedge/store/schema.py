# -*- test-case-name: tests.unit.store.test_schema -*-
"""Tables of the SQL backends and their versioned migrations.

:data:`MIGRATIONS` lists every schema version in order; each entry is
applied once, in the transaction of :func:`migrate`, and recorded in
``schema_version``. A migration is frozen SQL text, per dialect where
SQLite and PostgreSQL differ, run through a :class:`~fastedge.store.db.Conn`.
A released migration is never edited: a change to the schema is a new entry.

The SQLAlchemy Core declarations of the tables below are what the
migrations' text was generated from; they remain only while statements
elsewhere in the store are still built from them. Nothing here uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from . import db
from .db import Conn, Sql

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


# The migrations' DDL, frozen: the statements SQLAlchemy's ``create_all``
# emitted for the declarations above when the store moved off it, token for
# token, per dialect where they differ (an autoincrement integer key is
# ``SERIAL`` or ``BIGSERIAL`` in PostgreSQL). Laid out for reading; a
# table's indexes in the order declared (create_all's order was a set's);
# version 2's comment indexes say IF NOT EXISTS where create_all checked
# first. A statement is one text for both dialects or
# a mapping from :attr:`~fastedge.store.db.Conn.backend` to its text. The
# ``--`` comments stay in SQLite's copy of the schema (``.schema`` shows
# them); PostgreSQL drops them. tests/data/store_schema.json describes the
# schema these build, as SQLAlchemy built it, in both dialects.

Statement = str | Mapping[str, str]

_SCHEMA_VERSION: Statement = {
    db.SQLITE: """CREATE TABLE schema_version (
    version INTEGER NOT NULL,
    applied_ms BIGINT NOT NULL,
    PRIMARY KEY (version)
)""",
    db.POSTGRESQL: """CREATE TABLE schema_version (
    version SERIAL NOT NULL,
    applied_ms BIGINT NOT NULL,
    PRIMARY KEY (version)
)""",
}

#: Whether the schema_version table exists (has_table, in each dialect:
#: PostgreSQL looks in the session's search_path).
_HAS_SCHEMA_VERSION = {
    db.SQLITE: "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')",
    db.POSTGRESQL: "SELECT to_regclass('schema_version') IS NOT NULL",
}

_LATEST_VERSION = "SELECT version FROM schema_version ORDER BY version DESC LIMIT 1"

_RECORD_VERSION = "INSERT INTO schema_version (version, applied_ms) VALUES (:version, :applied_ms)"

# Version 1 (identifiers are VARCHAR(32): random, URL-safe strings, never
# sequential, so they cannot be guessed or enumerated across tenants).
_V1: tuple[Statement, ...] = (
    """CREATE TABLE tenants (
    id VARCHAR(32) NOT NULL,
    name VARCHAR(200) NOT NULL,
    deployment VARCHAR(63) NOT NULL,
    created_ms BIGINT NOT NULL,
    settings TEXT NOT NULL,
    PRIMARY KEY (id)
)""",
    """CREATE TABLE blocks (
    tenant_id VARCHAR(32) NOT NULL,
    viewer_id VARCHAR(32) NOT NULL,
    author_id VARCHAR(32) NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, viewer_id, author_id)
)""",
    """CREATE TABLE api_keys (
    id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    key_hash VARCHAR(64) NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id),
    UNIQUE (key_hash)
)""",
    "CREATE INDEX api_keys_tenant ON api_keys (tenant_id)",
    """CREATE TABLE authors (
    id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
    "CREATE INDEX authors_tenant ON authors (tenant_id, id)",
    """CREATE TABLE threads (
    id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    url_id TEXT NOT NULL,
    title TEXT NOT NULL,
    closed BOOLEAN NOT NULL,
    created_ms BIGINT NOT NULL,
    -- Approved comments in the thread, kept by every write that changes it.
    comment_count INTEGER NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT threads_tenant_url UNIQUE (tenant_id, url_id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
    "CREATE INDEX threads_tenant_created ON threads (tenant_id, created_ms, id)",
    {
        db.SQLITE: """CREATE TABLE credit_ledger (
    id INTEGER NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    operation VARCHAR(64) NOT NULL,
    calls INTEGER NOT NULL,
    credits INTEGER NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
        db.POSTGRESQL: """CREATE TABLE credit_ledger (
    id SERIAL NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    operation VARCHAR(64) NOT NULL,
    calls INTEGER NOT NULL,
    credits INTEGER NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
    },
    "CREATE INDEX credit_ledger_tenant ON credit_ledger (tenant_id, created_ms)",
    """CREATE TABLE anonymous_sessions (
    id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    author_id VARCHAR(32) NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id),
    FOREIGN KEY(author_id) REFERENCES authors (id)
)""",
    """CREATE TABLE users (
    id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    external_id VARCHAR(256) NOT NULL,
    author_id VARCHAR(32) NOT NULL,
    display_name VARCHAR(200) NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT users_tenant_external UNIQUE (tenant_id, external_id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id),
    FOREIGN KEY(author_id) REFERENCES authors (id)
)""",
    """CREATE TABLE comments (
    id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    thread_id VARCHAR(32) NOT NULL,
    parent_id VARCHAR(32),
    root_id VARCHAR(32) NOT NULL,
    author_id VARCHAR(32) NOT NULL,
    display_name VARCHAR(200) NOT NULL,
    body_source TEXT NOT NULL,
    body_html TEXT NOT NULL,
    status VARCHAR(16) NOT NULL,
    created_ms BIGINT NOT NULL,
    edited_ms BIGINT,
    like_count INTEGER NOT NULL,
    flag_count INTEGER NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id),
    FOREIGN KEY(thread_id) REFERENCES threads (id),
    FOREIGN KEY(author_id) REFERENCES authors (id)
)""",
    "CREATE INDEX comments_thread_new ON comments (tenant_id, thread_id, status, created_ms, id)",
    "CREATE INDEX comments_thread_top ON comments (tenant_id, thread_id, status, like_count, created_ms, id)",
    "CREATE INDEX comments_root ON comments (tenant_id, root_id)",
    "CREATE INDEX comments_status ON comments (tenant_id, status, created_ms, id)",
    # Version 2's two comment indexes: version 1 as first released lacked
    # them, but since version 2 it makes them on an empty database.
    "CREATE INDEX comments_author ON comments (tenant_id, author_id, created_ms)",
    "CREATE INDEX comments_flagged ON comments (tenant_id, flag_count DESC, created_ms, id)",
    """CREATE TABLE votes (
    comment_id VARCHAR(32) NOT NULL,
    voter_id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (comment_id, voter_id),
    FOREIGN KEY(comment_id) REFERENCES comments (id)
)""",
    "CREATE INDEX votes_voter ON votes (tenant_id, voter_id)",
    """CREATE TABLE flags (
    comment_id VARCHAR(32) NOT NULL,
    flagger_id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (comment_id, flagger_id),
    FOREIGN KEY(comment_id) REFERENCES comments (id)
)""",
)

# Version 2: moderation: bans, the audit log, like addresses, queue indexes.
_V2: tuple[Statement, ...] = (
    """CREATE TABLE bans (
    id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    -- author (the author id of a user or an anonymous session)
    -- or address (the hash of a client address).
    kind VARCHAR(16) NOT NULL,
    value VARCHAR(64) NOT NULL,
    reason TEXT NOT NULL,
    actor VARCHAR(256) NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT,
    lifted_ms BIGINT,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
    "CREATE INDEX bans_lookup ON bans (tenant_id, kind, value)",
    "CREATE INDEX bans_tenant_created ON bans (tenant_id, created_ms, id)",
    {
        db.SQLITE: """CREATE TABLE moderation_log (
    -- Orders entries made in the same millisecond; never shown (id is).
    seq INTEGER NOT NULL,
    id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    created_ms BIGINT NOT NULL,
    actor VARCHAR(256) NOT NULL,
    action VARCHAR(32) NOT NULL,
    -- JSON, {"commentIds": [...], "banIds": [...]}.
    targets TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (seq),
    UNIQUE (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
        db.POSTGRESQL: """CREATE TABLE moderation_log (
    -- Orders entries made in the same millisecond; never shown (id is).
    seq SERIAL NOT NULL,
    id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    created_ms BIGINT NOT NULL,
    actor VARCHAR(256) NOT NULL,
    action VARCHAR(32) NOT NULL,
    -- JSON, {"commentIds": [...], "banIds": [...]}.
    targets TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (seq),
    UNIQUE (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
    },
    "CREATE INDEX moderation_log_tenant ON moderation_log (tenant_id, created_ms, seq)",
    # Which client address (hashed) each like came from: likes per address
    # and comment are bounded, whatever sessions the client makes up.
    """CREATE TABLE vote_addresses (
    comment_id VARCHAR(32) NOT NULL,
    voter_id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    address_hash VARCHAR(64) NOT NULL,
    PRIMARY KEY (comment_id, voter_id)
)""",
    "CREATE INDEX vote_addresses_comment ON vote_addresses (comment_id, address_hash)",
    # The moderation queue by author, and a ban's "remove all their
    # comments"; the flagged queue, most-flagged first (then oldest first).
    # Version 1 makes them too, since this version: only if absent.
    "CREATE INDEX IF NOT EXISTS comments_author ON comments (tenant_id, author_id, created_ms)",
    "CREATE INDEX IF NOT EXISTS comments_flagged ON comments (tenant_id, flag_count DESC, created_ms, id)",
)

# Version 3: tenant SSO secrets, SSO user profiles, per-thread access
# (group locks, sign-in to post), claims of anonymous authors by signed-in
# users.
_V3: tuple[Statement, ...] = (
    """CREATE TABLE tenant_sso_secrets (
    id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    -- The secret itself: HMAC needs it, so it cannot be stored hashed.
    secret VARCHAR(256) NOT NULL,
    created_ms BIGINT NOT NULL,
    -- NULL for the current secret; a replaced one is accepted until then.
    accepted_until_ms BIGINT,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
    "CREATE INDEX tenant_sso_secrets_tenant ON tenant_sso_secrets (tenant_id)",
    """CREATE TABLE user_profiles (
    user_id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    author_id VARCHAR(32) NOT NULL,
    email VARCHAR(320),
    avatar TEXT,
    -- JSON list of SSO group ids.
    group_ids TEXT NOT NULL,
    is_moderator BOOLEAN NOT NULL,
    is_admin BOOLEAN NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id),
    FOREIGN KEY(user_id) REFERENCES users (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id),
    UNIQUE (author_id),
    FOREIGN KEY(author_id) REFERENCES authors (id)
)""",
    """CREATE TABLE thread_access (
    thread_id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    -- JSON list of SSO group ids; NULL: the default lock of the tenant.
    group_ids TEXT,
    -- NULL: the requireSignIn of the tenant.
    require_sign_in BOOLEAN,
    PRIMARY KEY (thread_id),
    FOREIGN KEY(thread_id) REFERENCES threads (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
    """CREATE TABLE author_claims (
    -- An anonymous author is claimed at most once (claims are one way).
    from_author_id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    to_author_id VARCHAR(32) NOT NULL,
    claimed_ms BIGINT NOT NULL,
    PRIMARY KEY (from_author_id),
    FOREIGN KEY(from_author_id) REFERENCES authors (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id),
    FOREIGN KEY(to_author_id) REFERENCES authors (id)
)""",
)

# Version 4: outbound webhooks (docs/webhooks.md). An endpoint's events are
# kept as ``|type|type|`` so "is this endpoint subscribed" is one LIKE in
# every dialect; a delivery row is the outbox: written in the transaction of
# the change it describes, claimed with a lease, deleted once delivered.
_V4: tuple[Statement, ...] = (
    """CREATE TABLE webhook_endpoints (
    id VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    url TEXT NOT NULL,
    -- Write-only: HMAC needs it, so it cannot be stored hashed; never shown.
    secret VARCHAR(256) NOT NULL,
    events TEXT NOT NULL,
    active BOOLEAN NOT NULL,
    description VARCHAR(200) NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    secret_set_ms BIGINT NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    -- Why the node turned the endpoint off (NULL: it did not).
    disabled_reason TEXT,
    disabled_ms BIGINT,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
    "CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, created_ms, id)",
    {
        db.SQLITE: """CREATE TABLE webhook_deliveries (
    -- The order of the changes (per endpoint, deliveries go in this order).
    seq INTEGER NOT NULL,
    -- The id of the event, the idempotency key of the receiver (shared by
    -- the deliveries of one event to several endpoints).
    event_id VARCHAR(64) NOT NULL,
    event_type VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    endpoint_id VARCHAR(32) NOT NULL,
    created_ms BIGINT NOT NULL,
    -- The data object of the event, as JSON text, fixed when the change is made.
    data TEXT NOT NULL,
    -- pending or failed (delivered rows are deleted).
    state VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    -- Retries stop this long after it (the change, or a replay).
    window_start_ms BIGINT NOT NULL,
    lease_owner VARCHAR(32),
    lease_until_ms BIGINT,
    last_attempt_ms BIGINT,
    last_status INTEGER,
    last_error TEXT,
    PRIMARY KEY (seq),
    CONSTRAINT webhook_deliveries_event UNIQUE (event_id, endpoint_id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
        db.POSTGRESQL: """CREATE TABLE webhook_deliveries (
    -- The order of the changes (per endpoint, deliveries go in this order).
    seq BIGSERIAL NOT NULL,
    -- The id of the event, the idempotency key of the receiver (shared by
    -- the deliveries of one event to several endpoints).
    event_id VARCHAR(64) NOT NULL,
    event_type VARCHAR(32) NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    endpoint_id VARCHAR(32) NOT NULL,
    created_ms BIGINT NOT NULL,
    -- The data object of the event, as JSON text, fixed when the change is made.
    data TEXT NOT NULL,
    -- pending or failed (delivered rows are deleted).
    state VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    -- Retries stop this long after it (the change, or a replay).
    window_start_ms BIGINT NOT NULL,
    lease_owner VARCHAR(32),
    lease_until_ms BIGINT,
    last_attempt_ms BIGINT,
    last_status INTEGER,
    last_error TEXT,
    PRIMARY KEY (seq),
    CONSTRAINT webhook_deliveries_event UNIQUE (event_id, endpoint_id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
    },
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_ms)",
    "CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, state, seq)",
)


def _run(conn: Conn, statements: Sequence[Statement]) -> None:
    for statement in statements:
        conn.run(Sql(statement if isinstance(statement, str) else statement[conn.backend]))


def _v1(conn: Conn) -> None:
    """The first schema: tenants, API keys, authors, sessions, users,
    threads, comments, votes, flags, blocks, the credit ledger."""
    _run(conn, _V1)


def _v2(conn: Conn) -> None:
    """Moderation: bans, the audit log, like addresses, queue indexes."""
    _run(conn, _V2)


def _v3(conn: Conn) -> None:
    """Tenant SSO secrets, SSO user profiles, thread access, author claims."""
    _run(conn, _V3)


def _v4(conn: Conn) -> None:
    """Outbound webhooks: endpoints and the delivery outbox."""
    _run(conn, _V4)


Migration = Callable[[Conn], None]

#: Schema versions in order; version N is ``MIGRATIONS[N - 1]``.
MIGRATIONS: Sequence[Migration] = (_v1, _v2, _v3, _v4)


def has_schema(conn: Conn) -> bool:
    """Whether the database holds the store's tables (the version table is
    made first, in the transaction of the first migrations)."""
    return bool(conn.run(Sql(_HAS_SCHEMA_VERSION[conn.backend])).scalar())


def current_version(conn: Conn) -> int:
    """The newest applied schema version (0 for an empty database, whose
    version table this makes)."""
    if not has_schema(conn):
        _run(conn, [_SCHEMA_VERSION])
    newest = conn.run(Sql(_LATEST_VERSION)).scalar()
    return int(newest or 0)


def migrate(conn: Conn, applied_ms: int, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
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
        conn.run(Sql(_RECORD_VERSION, version=version, applied_ms=applied_ms))
        applied.append(version)
    return applied
