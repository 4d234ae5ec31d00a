# -*- test-case-name: tests.unit.store.test_schema -*-
"""Tables of the SQL backends and their versioned migrations.

:data:`MIGRATIONS` lists every schema version in order; each entry is
applied once, in the transaction of :func:`migrate`, and recorded in
``schema_version``. A migration is frozen SQL text, per dialect where
SQLite and PostgreSQL differ, run through a :class:`~fastedge.store.db.Conn`.
A released migration is never edited: a change to the schema is a new entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from . import db
from .db import Conn, Sql

# The migrations' DDL, frozen: the statements SQLAlchemy's ``create_all``
# emitted for the store's table declarations when the store moved off
# SQLAlchemy Core (issue 15), token for token, per dialect where they differ (an autoincrement integer key is
# ``SERIAL`` or ``BIGSERIAL`` in PostgreSQL). Laid out for reading; a
# table's indexes in the order declared (create_all's order was a set's);
# version 2's comment indexes say IF NOT EXISTS where create_all checked
# first. A statement is one text for both dialects or
# a mapping from :attr:`~fastedge.store.db.Conn.backend` to its text. The
# ``--`` comments stay in SQLite's copy of the schema (``.schema`` shows
# them); PostgreSQL drops them. tests/data/store_schema.json describes the
# schema these build, as SQLAlchemy built it, in both dialects.

Statement = str | Mapping[str, str]


def _numbered(text: str, serial: str) -> Statement:
    """A table whose integer key numbers itself: ``text`` says ``@KEY@``
    where the key's type goes: ``INTEGER`` in SQLite (the rowid's alias),
    ``serial`` (``SERIAL`` or ``BIGSERIAL``, as SQLAlchemy chose for the
    column's type) in PostgreSQL."""
    return {db.SQLITE: text.replace("@KEY@", "INTEGER"), db.POSTGRESQL: text.replace("@KEY@", serial)}


_SCHEMA_VERSION: Statement = _numbered(
    """CREATE TABLE schema_version (
    version @KEY@ NOT NULL,
    applied_ms BIGINT NOT NULL,
    PRIMARY KEY (version)
)""",
    "SERIAL",
)

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
    _numbered(
        """CREATE TABLE credit_ledger (
    id @KEY@ NOT NULL,
    tenant_id VARCHAR(32) NOT NULL,
    operation VARCHAR(64) NOT NULL,
    calls INTEGER NOT NULL,
    credits INTEGER NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
)""",
        "SERIAL",
    ),
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
    _numbered(
        """CREATE TABLE moderation_log (
    -- Orders entries made in the same millisecond; never shown (id is).
    seq @KEY@ NOT NULL,
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
        "SERIAL",
    ),
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
    _numbered(
        """CREATE TABLE webhook_deliveries (
    -- The order of the changes (per endpoint, deliveries go in this order).
    seq @KEY@ NOT NULL,
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
        "BIGSERIAL",
    ),
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
