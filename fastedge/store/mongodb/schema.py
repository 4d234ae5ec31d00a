# -*- test-case-name: tests.unit.store.test_mongodb_wire -*-
"""The MongoDB backend's collections, their indexes, and the migrations
that create them.

A collection per entity (the SQL backends' tables, with the one-to-one side
tables folded into their parent: a user's profile into ``users``, a
thread's access settings into ``threads``, a like's client address into
``votes``). Unique indexes stand where the SQL schema has unique
constraints, so a repeated like, flag or block fails at the server.

Migrations are versioned steps recorded in ``migrations`` (one document per
applied version); each step creates indexes (``createIndexes`` is
idempotent, so a step cut off halfway is simply run again). Steps run on the
primary under a lock document in ``locks``: one node migrates at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TENANTS = "tenants"
SSO_SECRETS = "tenant_sso_secrets"
API_KEYS = "api_keys"
AUTHORS = "authors"
SESSIONS = "anonymous_sessions"
USERS = "users"
CLAIMS = "author_claims"
THREADS = "threads"
COMMENTS = "comments"
VOTES = "votes"
FLAGS = "flags"
BLOCKS = "blocks"
BANS = "bans"
AUDIT = "moderation_log"
CREDITS = "credit_ledger"
COUNTERS = "counters"
MIGRATIONS = "migrations"
LOCKS = "locks"


@dataclass(frozen=True)
class Index:
    """One index: its collection, keys (in order) and whether unique."""

    collection: str
    keys: tuple[tuple[str, int], ...]
    unique: bool = False

    @property
    def name(self) -> str:
        return "_".join("{}_{}".format(k, v) for k, v in self.keys)

    def spec(self) -> dict[str, Any]:
        """The index as ``createIndexes`` takes it."""
        spec: dict[str, Any] = {"key": dict(self.keys), "name": self.name}
        if self.unique:
            spec["unique"] = True
        return spec


def _i(collection: str, *keys: tuple[str, int], unique: bool = False) -> Index:
    return Index(collection, tuple(keys), unique)


#: ``(version, indexes)`` in order; a new version only ever appends.
MIGRATION_STEPS: tuple[tuple[int, tuple[Index, ...]], ...] = (
    (
        1,
        (
            _i(TENANTS, ("created_ms", 1), ("_id", 1)),
            _i(SSO_SECRETS, ("tenant_id", 1), ("created_ms", -1)),
            _i(API_KEYS, ("key_hash", 1), unique=True),
            _i(API_KEYS, ("tenant_id", 1), ("created_ms", 1)),
            _i(AUTHORS, ("tenant_id", 1), ("_id", 1)),
            _i(SESSIONS, ("tenant_id", 1), ("author_id", 1)),
            _i(USERS, ("tenant_id", 1), ("external_id", 1), unique=True),
            _i(USERS, ("tenant_id", 1), ("author_id", 1)),
            _i(CLAIMS, ("tenant_id", 1)),
            _i(THREADS, ("tenant_id", 1), ("url_id", 1), unique=True),
            _i(THREADS, ("tenant_id", 1), ("created_ms", -1), ("_id", -1)),
            # A thread page: approved top-level comments in each sort order.
            _i(COMMENTS, ("tenant_id", 1), ("thread_id", 1), ("status", 1), ("parent_id", 1), ("created_ms", 1)),
            _i(COMMENTS, ("tenant_id", 1), ("thread_id", 1), ("status", 1), ("parent_id", 1), ("like_count", -1)),
            # Replies under the top-level comments of a page; subtrees.
            _i(COMMENTS, ("tenant_id", 1), ("root_id", 1)),
            # Moderation queues and listings by status.
            _i(COMMENTS, ("tenant_id", 1), ("status", 1), ("created_ms", 1)),
            _i(COMMENTS, ("tenant_id", 1), ("flag_count", -1), ("created_ms", 1)),
            # An author's comments, newest first (spam checks' history;
            # claims and bans by author).
            _i(COMMENTS, ("tenant_id", 1), ("author_id", 1), ("created_ms", -1)),
            # A thread's recent comments of any status (spam checks).
            _i(COMMENTS, ("tenant_id", 1), ("thread_id", 1), ("created_ms", -1)),
            _i(VOTES, ("comment_id", 1), ("voter_id", 1), unique=True),
            _i(VOTES, ("tenant_id", 1), ("voter_id", 1)),
            _i(VOTES, ("comment_id", 1), ("address_hash", 1)),
            _i(FLAGS, ("comment_id", 1), ("flagger_id", 1), unique=True),
            _i(FLAGS, ("tenant_id", 1), ("flagger_id", 1)),
            _i(BLOCKS, ("tenant_id", 1), ("viewer_id", 1), ("author_id", 1), unique=True),
            _i(BLOCKS, ("tenant_id", 1), ("author_id", 1)),
            _i(BANS, ("tenant_id", 1), ("created_ms", -1), ("_id", -1)),
            _i(BANS, ("tenant_id", 1), ("kind", 1), ("value", 1)),
            _i(AUDIT, ("tenant_id", 1), ("created_ms", -1), ("seq", -1)),
            _i(CREDITS, ("tenant_id", 1), ("created_ms", 1)),
        ),
    ),
)

#: Every collection holding a tenant's documents (``delete_tenant``).
TENANT_COLLECTIONS = (
    CLAIMS,
    SSO_SECRETS,
    AUDIT,
    BANS,
    VOTES,
    FLAGS,
    BLOCKS,
    COMMENTS,
    THREADS,
    USERS,
    SESSIONS,
    AUTHORS,
    API_KEYS,
    CREDITS,
)

#: Collections created before any transaction runs (a transaction may not
#: create one on a server before 4.4).
ALL_COLLECTIONS = (TENANTS, *TENANT_COLLECTIONS, COUNTERS)


def indexes_by_collection(indexes: tuple[Index, ...]) -> dict[str, list[dict[str, Any]]]:
    """``{collection: [index spec, ...]}`` in first-seen order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for index in indexes:
        out.setdefault(index.collection, []).append(index.spec())
    return out
