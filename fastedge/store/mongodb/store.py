# -*- test-case-name: tests.unit.store.test_mongodb_contract -*-
"""The store over MongoDB: the same contract as the SQL backends.

Each method writes its commands against a :class:`~.core.Reader` (reads) or
a :class:`~.core.Tx` (one transaction per write); :class:`~.core.MongoCore`
decides where they run. Listings use the SQL backends' opaque cursors
(:func:`fastedge.store.shared.encode_cursor`), so a cursor means the same on
every backend. Errors keep the contract's meaning: a record of another
tenant is ``NotFound`` exactly as a missing one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pymongo.errors import DuplicateKeyError
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import AlreadyExists, BadCursor, InvalidReference, LimitReached, NotFound, Stale, ThreadClosed
from ..interfaces import IStore
from ..model import (
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
    SessionPoster,
    Sort,
    SsoSecret,
    SsoSecretChange,
    Tenant,
    Thread,
    ThreadPage,
    User,
    UserPoster,
    UserProfile,
    ViewerState,
    Written,
)
from ..shared import decode_cursor, encode_cursor, new_id, page_of
from . import schema as s
from . import txmongo_gaps as gaps
from .core import MigrationBusy, MongoCore, Reader, Tx

Document = dict[str, Any]

_APPROVED = CommentStatus.APPROVED.value

#: How long a lock left by a node that died while migrating blocks the others.
MIGRATION_LOCK_MS = 120_000


def _comment(d: Mapping[str, Any]) -> Comment:
    return Comment(
        id=d["_id"],
        tenant_id=d["tenant_id"],
        thread_id=d["thread_id"],
        parent_id=d["parent_id"],
        root_id=d["root_id"],
        author_id=d["author_id"],
        display_name=d["display_name"],
        body_source=d["body_source"],
        body_html=d["body_html"],
        status=CommentStatus(d["status"]),
        created_ms=d["created_ms"],
        edited_ms=d["edited_ms"],
        like_count=d["like_count"],
        flag_count=d["flag_count"],
    )


def _comment_doc(c: Comment) -> Document:
    return {
        "_id": c.id,
        "tenant_id": c.tenant_id,
        "thread_id": c.thread_id,
        "parent_id": c.parent_id,
        "root_id": c.root_id,
        "author_id": c.author_id,
        "display_name": c.display_name,
        "body_source": c.body_source,
        "body_html": c.body_html,
        "status": c.status.value,
        "created_ms": c.created_ms,
        "edited_ms": c.edited_ms,
        "like_count": c.like_count,
        "flag_count": c.flag_count,
    }


def _thread(d: Mapping[str, Any]) -> Thread:
    groups = d.get("locked_groups")
    require = d.get("require_sign_in")
    return Thread(
        id=d["_id"],
        tenant_id=d["tenant_id"],
        url_id=d["url_id"],
        title=d["title"],
        closed=bool(d["closed"]),
        created_ms=d["created_ms"],
        comment_count=d["comment_count"],
        locked_groups=None if groups is None else tuple(groups),
        require_sign_in=None if require is None else bool(require),
    )


def _tenant(d: Mapping[str, Any]) -> Tenant:
    # Settings are kept as the JSON text the SQL backends keep: their keys
    # may hold "." or "$", which MongoDB field names may not.
    return Tenant(
        id=d["_id"],
        name=d["name"],
        deployment=d["deployment"],
        created_ms=d["created_ms"],
        settings=json.loads(d["settings"]),
    )


def _user(d: Mapping[str, Any]) -> User:
    p = d.get("profile")
    profile = None
    if p is not None:
        profile = UserProfile(
            email=p["email"],
            avatar=p["avatar"],
            group_ids=tuple(p["group_ids"]),
            is_moderator=bool(p["is_moderator"]),
            is_admin=bool(p["is_admin"]),
        )
    return User(
        id=d["_id"],
        tenant_id=d["tenant_id"],
        external_id=d["external_id"],
        author_id=d["author_id"],
        display_name=d["display_name"],
        created_ms=d["created_ms"],
        profile=profile,
    )


def _api_key(d: Mapping[str, Any]) -> ApiKey:
    return ApiKey(id=d["_id"], tenant_id=d["tenant_id"], created_ms=d["created_ms"], revoked_ms=d["revoked_ms"])


def _ban(d: Mapping[str, Any]) -> Ban:
    return Ban(
        id=d["_id"],
        tenant_id=d["tenant_id"],
        kind=BanKind(d["kind"]),
        value=d["value"],
        reason=d["reason"],
        actor=d["actor"],
        created_ms=d["created_ms"],
        expires_ms=d["expires_ms"],
        lifted_ms=d["lifted_ms"],
    )


def _ban_doc(b: Ban) -> Document:
    return {
        "_id": b.id,
        "tenant_id": b.tenant_id,
        "kind": b.kind.value,
        "value": b.value,
        "reason": b.reason,
        "actor": b.actor,
        "created_ms": b.created_ms,
        "expires_ms": b.expires_ms,
        "lifted_ms": b.lifted_ms,
    }


def _audit_entry(d: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        id=d["_id"],
        tenant_id=d["tenant_id"],
        actor=d["actor"],
        action=d["action"],
        comment_ids=tuple(d["comment_ids"]),
        ban_ids=tuple(d["ban_ids"]),
        reason=d["reason"],
        created_ms=d["created_ms"],
    )


def _after_desc(fields: Sequence[str], values: Sequence[Any]) -> Document:
    """Keyset filter "after ``values`` in descending order of ``fields``"."""
    return _after(fields, values, ["$lt"] * len(fields))


def _after(fields: Sequence[str], values: Sequence[Any], ops: Sequence[str]) -> Document:
    """Keyset filter: rows after ``values`` in the order where field ``i``
    compares with ``ops[i]`` (``$lt`` descending, ``$gt`` ascending)."""
    branches = []
    for i in range(len(fields)):
        branch: Document = {fields[j]: values[j] for j in range(i)}
        branch[fields[i]] = {ops[i]: values[i]}
        branches.append(branch)
    return {"$or": branches}


def _in_force(now_ms: int) -> Document:
    return {"lifted_ms": None, "$or": [{"expires_ms": None}, {"expires_ms": {"$gt": now_ms}}]}


@implementer(IStore)
class MongoStore(MongoCore):
    """:class:`IStore` over a MongoDB replica set (see :mod:`.core` for
    where each call runs)."""

    _log = Logger()

    # Lifecycle

    def open(self) -> Deferred[None]:
        """Connect, then apply pending migrations on the primary under the
        migration lock (one node at a time)."""
        try:
            self._connect()
        except Exception:
            return fail()
        # Every migration step is idempotent: retried through an election
        # like a read.
        d = self._on_primary("open", ReadPreference.PRIMARY, self._migrate)

        def report(applied: list[int]) -> None:
            if applied:
                self._log.info("store schema migrated to {versions}", versions=applied)
            self._log.info(
                "mongodb store open: replica set {primary}, local member {nearest}",
                primary=self.primary_name,
                nearest=self.nearest_name or "none (NEAREST reads the primary)",
            )

        return d.addCallback(report)

    async def _command(self, body: Document) -> Document:
        reply = await gaps.command(self._pool(True), self.database, body)
        return gaps.check_write(reply)

    async def _migrate(self) -> list[int]:
        now_ms = int(self._clock.seconds() * 1000)
        owner = new_id()
        wc = dict(self._write_concern)
        try:
            await self._command(
                {
                    "insert": s.LOCKS,
                    "documents": [{"_id": "migrations", "owner": owner, "expires_ms": now_ms + MIGRATION_LOCK_MS}],
                    "writeConcern": wc,
                }
            )
        except DuplicateKeyError:
            # Another node holds it; a lock past its expiry was left by a
            # node that died: taken over, else we fail and open() is retried.
            taken = await self._command(
                {
                    "update": s.LOCKS,
                    "updates": [
                        {
                            "q": {"_id": "migrations", "expires_ms": {"$lt": now_ms}},
                            "u": {"$set": {"owner": owner, "expires_ms": now_ms + MIGRATION_LOCK_MS}},
                        }
                    ],
                    "writeConcern": wc,
                }
            )
            if not taken.get("n"):
                raise MigrationBusy("another node is migrating the store") from None
        applied: list[int] = []
        try:
            for name in s.ALL_COLLECTIONS:
                try:
                    await self._command({"create": name, "writeConcern": wc})
                except Exception as e:
                    if getattr(e, "code", None) != 48:  # NamespaceExists
                        raise
            done = await gaps.read_all(
                self._pool(True),
                self.database,
                {"find": s.MIGRATIONS, "filter": {}},
                session=None,
                extra={"$readPreference": gaps.read_preference("primary")},
            )
            have = {d["_id"] for d in done}
            for version, indexes in s.MIGRATION_STEPS:
                if version in have:
                    continue
                for collection, specs in s.indexes_by_collection(indexes).items():
                    await self._command({"createIndexes": collection, "indexes": specs, "writeConcern": wc})
                await self._command(
                    {
                        "insert": s.MIGRATIONS,
                        "documents": [{"_id": version, "applied_ms": now_ms}],
                        "writeConcern": wc,
                    }
                )
                applied.append(version)
        finally:
            await self._command(
                {
                    "delete": s.LOCKS,
                    "deletes": [{"q": {"_id": "migrations", "owner": owner}, "limit": 1}],
                    "writeConcern": wc,
                }
            )
        return applied

    def has_schema(self) -> Deferred[bool]:
        """Whether the primary's database has been migrated (:meth:`open`
        records each step): tools that must not create a store ask first.

        :returns: ``Deferred[bool]``
        """

        async def go(r: Reader) -> bool:
            return await r.find_one(s.MIGRATIONS, {}) is not None

        return self._read("has_schema", ReadPreference.PRIMARY, None, go)

    def close(self) -> Deferred[None]:
        return self._disconnect()

    def ping(self, *, read_preference: ReadPreference) -> Deferred[None]:
        async def go(r: Reader) -> None:
            await r.find_one(s.MIGRATIONS, {})

        return self._read("ping", read_preference, None, go)

    # Tenants and API keys

    def create_tenant(
        self, name: str, deployment: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[Tenant]]:
        tenant = Tenant(id=new_id(), name=name, deployment=deployment, created_ms=created_ms, settings={})

        async def go(tx: Tx) -> Tenant:
            await tx.insert(
                s.TENANTS,
                [
                    {
                        "_id": tenant.id,
                        "name": name,
                        "deployment": deployment,
                        "created_ms": created_ms,
                        "settings": "{}",
                    }
                ],
            )
            return tenant

        return self._write("create_tenant", read_preference, go)

    def get_tenant(
        self, tenant_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Tenant]:
        async def go(r: Reader) -> Tenant:
            found = await r.find_one(s.TENANTS, {"_id": tenant_id})
            if found is None:
                raise NotFound("tenant")
            return _tenant(found)

        return self._read("get_tenant", read_preference, token, go)

    def list_tenants(self, *, read_preference: ReadPreference, token: str | None = None) -> Deferred[list[Tenant]]:
        async def go(r: Reader) -> list[Tenant]:
            return [_tenant(d) for d in await r.find(s.TENANTS, {}, sort=[("created_ms", 1), ("_id", 1)])]

        return self._read("list_tenants", read_preference, token, go)

    async def _require_tenant(self, tx: Reader, tenant_id: str) -> None:
        if await tx.find_one(s.TENANTS, {"_id": tenant_id}, projection={"_id": 1}) is None:
            raise NotFound("tenant")

    async def _require_author(self, tx: Reader, tenant_id: str, author_id: str) -> Document:
        found = await tx.find_one(s.AUTHORS, {"_id": author_id, "tenant_id": tenant_id})
        if found is None:
            raise NotFound("author")
        return found

    def delete_tenant(self, tenant_id: str, *, read_preference: ReadPreference) -> Deferred[Written[Mapping[str, int]]]:
        async def go(tx: Tx) -> Mapping[str, int]:
            await self._require_tenant(tx, tenant_id)
            mine = {"tenant_id": tenant_id}

            async def count(collection: str, extra: Document) -> int:
                rows = await tx.aggregate(collection, [{"$match": {**mine, **extra}}, {"$count": "n"}])
                return int(rows[0]["n"]) if rows else 0

            # Counted under the SQL backends' table names (the contract's
            # vocabulary): side tables folded into documents here count the
            # documents that carry them.
            deleted: dict[str, int] = {
                "author_claims": 0,
                "thread_access": await count(
                    s.THREADS, {"$or": [{"locked_groups": {"$ne": None}}, {"require_sign_in": {"$ne": None}}]}
                ),
                "user_profiles": await count(s.USERS, {"profile": {"$ne": None}}),
                "tenant_sso_secrets": 0,
                "vote_addresses": await count(s.VOTES, {"address_hash": {"$ne": None}}),
            }
            for collection in s.TENANT_COLLECTIONS:
                deleted[collection] = await tx.delete(collection, mine)
            await tx.delete(s.TENANTS, {"_id": tenant_id})
            deleted["tenants"] = 1
            return deleted

        return self._write("delete_tenant", read_preference, go)

    def update_tenant_settings(
        self,
        tenant_id: str,
        settings: Mapping[str, Any],
        *,
        read_preference: ReadPreference,
        sso_secret: SsoSecretChange | None = None,
    ) -> Deferred[Written[Tenant]]:
        encoded = json.dumps(dict(settings), sort_keys=True)

        async def go(tx: Tx) -> Tenant:
            found = await tx.find_and_modify(s.TENANTS, {"_id": tenant_id}, {"$set": {"settings": encoded}})
            if found is None:
                raise NotFound("tenant")
            if sso_secret is not None:
                await self._rotate_sso_secret(tx, tenant_id, sso_secret)
            return _tenant(found)

        return self._write("update_tenant_settings", read_preference, go)

    async def _rotate_sso_secret(self, tx: Tx, tenant_id: str, change: SsoSecretChange) -> None:
        now = change.now_ms
        mine = {"tenant_id": tenant_id}
        await tx.delete(s.SSO_SECRETS, {**mine, "accepted_until_ms": {"$ne": None, "$lte": now}})
        until = now if change.secret is None else now + max(0, change.overlap_ms)
        await tx.update(
            s.SSO_SECRETS,
            {**mine, "$or": [{"accepted_until_ms": None}, {"accepted_until_ms": {"$gt": until}}]},
            {"$set": {"accepted_until_ms": until}},
            multi=True,
        )
        if change.secret is None:
            await tx.delete(s.SSO_SECRETS, {**mine, "accepted_until_ms": {"$ne": None, "$lte": now}})
            return
        await tx.insert(
            s.SSO_SECRETS,
            [
                {
                    "_id": new_id(),
                    "tenant_id": tenant_id,
                    "secret": change.secret,
                    "created_ms": now,
                    "accepted_until_ms": None,
                }
            ],
        )

    def get_sso_secrets(
        self, tenant_id: str, *, now_ms: int, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[list[SsoSecret]]:
        async def go(r: Reader) -> list[SsoSecret]:
            rows = await r.find(
                s.SSO_SECRETS,
                {"tenant_id": tenant_id, "$or": [{"accepted_until_ms": None}, {"accepted_until_ms": {"$gt": now_ms}}]},
                sort=[("created_ms", -1), ("_id", 1)],
            )
            current = [d for d in rows if d["accepted_until_ms"] is None]
            older = [d for d in rows if d["accepted_until_ms"] is not None]
            return [
                SsoSecret(secret=d["secret"], created_ms=d["created_ms"], accepted_until_ms=d["accepted_until_ms"])
                for d in current + older
            ]

        return self._read("get_sso_secrets", read_preference, token, go)

    def add_api_key(
        self, tenant_id: str, key_hash: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[ApiKey]]:
        key = ApiKey(id=new_id(), tenant_id=tenant_id, created_ms=created_ms, revoked_ms=None)

        async def go(tx: Tx) -> ApiKey:
            await self._require_tenant(tx, tenant_id)
            await tx.insert(
                s.API_KEYS,
                [
                    {
                        "_id": key.id,
                        "tenant_id": tenant_id,
                        "key_hash": key_hash,
                        "created_ms": created_ms,
                        "revoked_ms": None,
                    }
                ],
            )
            return key

        return self._write("add_api_key", read_preference, go)

    def revoke_api_key(
        self, tenant_id: str, key_id: str, *, revoked_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[ApiKey]]:
        async def go(tx: Tx) -> ApiKey:
            where = {"_id": key_id, "tenant_id": tenant_id}
            found = await tx.find_one(s.API_KEYS, where)
            if found is None:
                raise NotFound("API key")
            if found["revoked_ms"] is None:
                await tx.update(s.API_KEYS, where, {"$set": {"revoked_ms": revoked_ms}})
                found["revoked_ms"] = revoked_ms
            return _api_key(found)

        return self._write("revoke_api_key", read_preference, go)

    def list_api_keys(
        self, tenant_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[list[ApiKey]]:
        async def go(r: Reader) -> list[ApiKey]:
            rows = await r.find(s.API_KEYS, {"tenant_id": tenant_id}, sort=[("created_ms", 1), ("_id", 1)])
            return [_api_key(d) for d in rows]

        return self._read("list_api_keys", read_preference, token, go)

    def tenant_for_api_key(
        self, key_hash: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Tenant]:
        async def go(r: Reader) -> Tenant:
            key = await r.find_one(s.API_KEYS, {"key_hash": key_hash, "revoked_ms": None})
            found = None if key is None else await r.find_one(s.TENANTS, {"_id": key["tenant_id"]})
            if found is None:
                raise NotFound("API key")
            return _tenant(found)

        return self._read("tenant_for_api_key", read_preference, token, go)

    # Authors

    async def _new_author(self, tx: Tx, tenant_id: str, kind: AuthorKind, created_ms: int) -> str:
        author_id = new_id()
        await tx.insert(
            s.AUTHORS, [{"_id": author_id, "tenant_id": tenant_id, "kind": kind.value, "created_ms": created_ms}]
        )
        return author_id

    def create_anonymous_session(
        self, tenant_id: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[AnonymousSession]]:
        session = self.new_anonymous_session(tenant_id, created_ms=created_ms)

        async def go(tx: Tx) -> AnonymousSession:
            await self._require_tenant(tx, tenant_id)
            await self._insert_session(tx, session)
            return session

        return self._write("create_anonymous_session", read_preference, go)

    def new_id(self) -> str:
        return new_id()

    def new_anonymous_session(self, tenant_id: str, *, created_ms: int) -> AnonymousSession:
        return AnonymousSession(id=new_id(), tenant_id=tenant_id, author_id=new_id(), created_ms=created_ms)

    async def _insert_session(self, tx: Tx, session: AnonymousSession) -> None:
        """Write a new anonymous author and its session; the caller checked
        the tenant (and everything else its write needs) before: a write
        checks first and writes last, so a refused one wrote nothing."""
        await tx.insert(
            s.AUTHORS,
            [
                {
                    "_id": session.author_id,
                    "tenant_id": session.tenant_id,
                    "kind": AuthorKind.ANONYMOUS.value,
                    "created_ms": session.created_ms,
                }
            ],
        )
        await tx.insert(
            s.SESSIONS,
            [
                {
                    "_id": session.id,
                    "tenant_id": session.tenant_id,
                    "author_id": session.author_id,
                    "created_ms": session.created_ms,
                }
            ],
        )

    async def _check_expected(
        self, tx: Reader, tenant_id: str, seen: Expect | None, new_session: AnonymousSession | None = None
    ) -> None:
        """Checks, inside the write's transaction and before it writes, that
        what the caller read from a replica still holds on the primary (see
        :class:`~fastedge.store.model.Expect`), and that the tenant of a
        session the write creates exists."""
        if seen is not None:
            await self._check_seen(tx, tenant_id, seen)
        if new_session is not None:
            await self._require_tenant(tx, tenant_id)

    async def _check_seen(self, tx: Reader, tenant_id: str, seen: Expect) -> None:
        if seen.approved_comment is not None:
            where = {"_id": seen.approved_comment, "tenant_id": tenant_id, "status": _APPROVED}
            if await tx.find_one(s.COMMENTS, where, projection={"_id": 1}) is None:
                raise NotFound("comment")
        if seen.thread_url is not None:
            thread = await tx.find_one(
                s.THREADS,
                {"tenant_id": tenant_id, "url_id": seen.thread_url},
                projection={"locked_groups": 1, "require_sign_in": 1},
            )
            # A thread missing now, or one without rules, passes (as the SQL
            # backends' missing access row does); rules that differ do not.
            groups = None if thread is None else thread.get("locked_groups")
            sign_in = None if thread is None else thread.get("require_sign_in")
            expected = None if seen.locked_groups is None else list(seen.locked_groups)
            if (groups, sign_in) != (None, None) and (groups != expected or sign_in != seen.require_sign_in):
                raise Stale("the thread's access rules changed")
        if seen.session_id is not None:
            where = {"_id": seen.session_id, "tenant_id": tenant_id}
            if await tx.find_one(s.SESSIONS, where, projection={"_id": 1}) is None:
                raise NotFound("session")

    async def _voter_exists(self, tx: Tx, tenant_id: str, author_id: str, new_session: AnonymousSession | None) -> None:
        """The author a like, flag or block is made as exists, or is the new
        session's (written by the caller last)."""
        if new_session is not None and new_session.author_id == author_id:
            return
        await self._require_author(tx, tenant_id, author_id)

    async def _new_session_last(self, tx: Tx, tenant_id: str, session: AnonymousSession | None) -> None:
        """Write the new session a like, flag or block is made as, once its
        checks passed (before that write's own documents)."""
        if session is not None:
            await self._insert_session(tx, replace(session, tenant_id=tenant_id))

    def get_anonymous_session(
        self, tenant_id: str, session_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[AnonymousSession]:
        async def go(r: Reader) -> AnonymousSession:
            d = await r.find_one(s.SESSIONS, {"_id": session_id, "tenant_id": tenant_id})
            if d is None:
                raise NotFound("session")
            return AnonymousSession(
                id=d["_id"], tenant_id=d["tenant_id"], author_id=d["author_id"], created_ms=d["created_ms"]
            )

        return self._read("get_anonymous_session", read_preference, token, go)

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
        async def go(tx: Tx) -> User:
            await self._require_tenant(tx, tenant_id)
            where = {"tenant_id": tenant_id, "external_id": external_id}
            found = await tx.find_one(s.USERS, where)
            if found is None:
                author_id = await self._new_author(tx, tenant_id, AuthorKind.USER, created_ms)
                found = {
                    "_id": new_id(),
                    "tenant_id": tenant_id,
                    "external_id": external_id,
                    "author_id": author_id,
                    "display_name": display_name,
                    "created_ms": created_ms,
                    "profile": None,
                }
                await tx.insert(s.USERS, [found])
            changes: Document = {}
            if found["display_name"] != display_name:
                changes["display_name"] = display_name
            if profile is not None:
                changes["profile"] = {
                    "email": profile.email,
                    "avatar": profile.avatar,
                    "group_ids": list(profile.group_ids),
                    "is_moderator": profile.is_moderator,
                    "is_admin": profile.is_admin,
                    "updated_ms": created_ms,
                }
            if changes:
                await tx.update(s.USERS, {"_id": found["_id"]}, {"$set": changes})
                found.update(changes)
            return _user(found)

        return self._write("upsert_user", read_preference, go)

    def get_user_by_author(
        self, tenant_id: str, author_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[User]:
        async def go(r: Reader) -> User:
            found = await r.find_one(s.USERS, {"tenant_id": tenant_id, "author_id": author_id})
            if found is None:
                raise NotFound("user")
            return _user(found)

        return self._read("get_user_by_author", read_preference, token, go)

    def create_user_session(
        self, tenant_id: str, author_id: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[AnonymousSession]]:
        async def go(tx: Tx) -> AnonymousSession:
            await self._require_author(tx, tenant_id, author_id)
            session = AnonymousSession(id=new_id(), tenant_id=tenant_id, author_id=author_id, created_ms=created_ms)
            await tx.insert(
                s.SESSIONS,
                [{"_id": session.id, "tenant_id": tenant_id, "author_id": author_id, "created_ms": created_ms}],
            )
            return session

        return self._write("create_user_session", read_preference, go)

    def claim_author(
        self,
        tenant_id: str,
        from_author_id: str,
        to_author_id: str,
        *,
        claimed_ms: int,
        read_preference: ReadPreference,
    ) -> Deferred[Written[int]]:
        async def go(tx: Tx) -> int:
            rows = await tx.find(s.AUTHORS, {"tenant_id": tenant_id, "_id": {"$in": [from_author_id, to_author_id]}})
            kinds = {d["_id"]: d["kind"] for d in rows}
            if from_author_id not in kinds or to_author_id not in kinds:
                raise NotFound("author")
            if kinds[from_author_id] != AuthorKind.ANONYMOUS.value:
                raise InvalidReference("only an anonymous author can be claimed")
            if kinds[to_author_id] != AuthorKind.USER.value:
                raise InvalidReference("an anonymous author can only be claimed by a user")
            if await tx.find_one(s.CLAIMS, {"_id": from_author_id}) is not None:
                raise AlreadyExists("claim")
            moved = await self._move_author(tx, tenant_id, from_author_id, to_author_id)
            await tx.insert(
                s.CLAIMS,
                [
                    {
                        "_id": from_author_id,
                        "tenant_id": tenant_id,
                        "to_author_id": to_author_id,
                        "claimed_ms": claimed_ms,
                    }
                ],
            )
            return moved

        return self._write("claim_author", read_preference, go)

    async def _move_author(self, tx: Tx, tenant_id: str, old: str, new: str) -> int:
        mine = {"tenant_id": tenant_id}
        moved = await tx.update(s.COMMENTS, {**mine, "author_id": old}, {"$set": {"author_id": new}}, multi=True)
        for collection, who, count in ((s.VOTES, "voter_id", "like_count"), (s.FLAGS, "flagger_id", "flag_count")):
            both = [
                d["comment_id"] for d in await tx.find(collection, {**mine, who: new}, projection={"comment_id": 1})
            ]
            twice = {**mine, who: old, "comment_id": {"$in": both}}
            doubled = [d["comment_id"] for d in await tx.find(collection, twice, projection={"comment_id": 1})]
            if doubled:
                # A like (flag) both authors made counts once from now on.
                await tx.update(s.COMMENTS, {**mine, "_id": {"$in": doubled}}, {"$inc": {count: -1}}, multi=True)
                await tx.delete(collection, twice)
            await tx.update(collection, {**mine, who: old}, {"$set": {who: new}}, multi=True)
        for mine_field, other in (("viewer_id", "author_id"), ("author_id", "viewer_id")):
            have = [d[other] for d in await tx.find(s.BLOCKS, {**mine, mine_field: new}, projection={other: 1})]
            await tx.delete(s.BLOCKS, {**mine, mine_field: old, other: {"$in": [new, *have]}})
            await tx.update(s.BLOCKS, {**mine, mine_field: old}, {"$set": {mine_field: new}}, multi=True)
        await tx.delete(s.SESSIONS, {**mine, "author_id": old})
        return moved

    def get_author(
        self, tenant_id: str, author_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Author]:
        async def go(r: Reader) -> Author:
            d = await r.find_one(s.AUTHORS, {"_id": author_id, "tenant_id": tenant_id})
            if d is None:
                raise NotFound("author")
            return Author(id=d["_id"], tenant_id=d["tenant_id"], kind=AuthorKind(d["kind"]), created_ms=d["created_ms"])

        return self._read("get_author", read_preference, token, go)

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
        fields = {"author_id": 1, "thread_id": 1, "body_source": 1, "status": 1, "created_ms": 1}
        newest = [("created_ms", -1), ("_id", -1)]

        def recent(rows: Sequence[Mapping[str, Any]]) -> tuple[RecentComment, ...]:
            return tuple(
                RecentComment(
                    author_id=d["author_id"],
                    thread_id=d["thread_id"],
                    body_source=d["body_source"],
                    status=CommentStatus(d["status"]),
                    created_ms=d["created_ms"],
                )
                for d in rows
            )

        async def go(r: Reader) -> AuthorHistory:
            author = await r.find_one(s.AUTHORS, {"_id": author_id, "tenant_id": tenant_id})
            if author is None:
                if new_author_ms is None:
                    raise NotFound("author")
                # Created by the write of the comment being judged.
                author = {"kind": AuthorKind.ANONYMOUS.value, "created_ms": new_author_ms}
            by_status = {
                d["_id"]: int(d["n"])
                for d in await r.aggregate(
                    s.COMMENTS,
                    [
                        {"$match": {"tenant_id": tenant_id, "author_id": author_id}},
                        {"$group": {"_id": "$status", "n": {"$sum": 1}}},
                    ],
                )
            }
            mine = await r.find(
                s.COMMENTS,
                {"tenant_id": tenant_id, "author_id": author_id, "created_ms": {"$gte": since_ms}},
                sort=newest,
                limit=limit,
                projection=fields,
            )
            others: list[Document] = []
            if thread_id is not None:
                others = await r.find(
                    s.COMMENTS,
                    {
                        "tenant_id": tenant_id,
                        "thread_id": thread_id,
                        "author_id": {"$ne": author_id},
                        "created_ms": {"$gte": since_ms},
                    },
                    sort=newest,
                    limit=limit,
                    projection=fields,
                )
            counts = {status: by_status.get(status.value, 0) for status in CommentStatus}
            return AuthorHistory(
                author_id=author_id,
                kind=AuthorKind(author["kind"]),
                created_ms=author["created_ms"],
                comments=sum(counts.values()),
                approved=counts[CommentStatus.APPROVED],
                pending=counts[CommentStatus.PENDING],
                spam=counts[CommentStatus.SPAM],
                removed=counts[CommentStatus.REMOVED],
                recent=recent(mine),
                thread_recent=recent(others),
            )

        return self._read("author_history", read_preference, token, go)

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
        async def go(tx: Tx) -> Thread:
            where = {"tenant_id": tenant_id, "url_id": url_id}
            found = await tx.find_one(s.THREADS, where)
            changes: Document = {}
            if found is None:
                await self._require_tenant(tx, tenant_id)
                found = {
                    "_id": new_id(),
                    "tenant_id": tenant_id,
                    "url_id": url_id,
                    "title": title or "",
                    "closed": bool(closed),
                    "created_ms": created_ms,
                    "comment_count": 0,
                    "locked_groups": None,
                    "require_sign_in": None,
                }
                if locked_groups is not None:
                    found["locked_groups"] = list(locked_groups)
                if require_sign_in is not None:
                    found["require_sign_in"] = require_sign_in
                await tx.insert(s.THREADS, [found])
                return _thread(found)
            if title is not None and title != found["title"]:
                changes["title"] = title
            if closed is not None and closed != bool(found["closed"]):
                changes["closed"] = closed
            if locked_groups is not None:
                changes["locked_groups"] = list(locked_groups)
            if require_sign_in is not None:
                changes["require_sign_in"] = require_sign_in
            if changes:
                await tx.update(s.THREADS, {"_id": found["_id"]}, {"$set": changes})
                found.update(changes)
            return _thread(found)

        return self._write("upsert_thread", read_preference, go)

    async def _thread_by_id(self, r: Reader, tenant_id: str, thread_id: str) -> Thread:
        found = await r.find_one(s.THREADS, {"_id": thread_id, "tenant_id": tenant_id})
        if found is None:
            raise NotFound("thread")
        return _thread(found)

    def get_thread(
        self, tenant_id: str, url_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Thread]:
        async def go(r: Reader) -> Thread:
            found = await r.find_one(s.THREADS, {"tenant_id": tenant_id, "url_id": url_id})
            if found is None:
                raise NotFound("thread")
            return _thread(found)

        return self._read("get_thread", read_preference, token, go)

    def get_thread_by_id(
        self, tenant_id: str, thread_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Thread]:
        async def go(r: Reader) -> Thread:
            return await self._thread_by_id(r, tenant_id, thread_id)

        return self._read("get_thread_by_id", read_preference, token, go)

    def list_threads(
        self,
        tenant_id: str,
        *,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[Page[Thread]]:
        try:
            after = decode_cursor(cursor, "threads", (int, str)) if cursor else None
        except BadCursor:
            return fail()
        query: Document = {"tenant_id": tenant_id}
        if after is not None:
            query.update(_after_desc(["created_ms", "_id"], after))

        async def go(r: Reader) -> Page[Thread]:
            rows = await r.find(s.THREADS, query, sort=[("created_ms", -1), ("_id", -1)], limit=limit + 1)
            return page_of(rows, limit, _thread, lambda last: encode_cursor("threads", last["created_ms"], last["_id"]))

        return self._read("list_threads", read_preference, token, go)

    def delete_thread(
        self, tenant_id: str, thread_id: str, *, read_preference: ReadPreference
    ) -> Deferred[Written[None]]:
        async def go(tx: Tx) -> None:
            await self._thread_by_id(tx, tenant_id, thread_id)
            ids = [
                d["_id"]
                for d in await tx.find(
                    s.COMMENTS, {"tenant_id": tenant_id, "thread_id": thread_id}, projection={"_id": 1}
                )
            ]
            await self._delete_comments(tx, tenant_id, ids)
            await tx.delete(s.THREADS, {"_id": thread_id, "tenant_id": tenant_id})

        return self._write("delete_thread", read_preference, go)

    # Comments

    def create_comment(self, new: NewComment, *, read_preference: ReadPreference) -> Deferred[Written[Comment]]:
        async def go(tx: Tx) -> Comment:
            await self._thread_by_id(tx, new.tenant_id, new.thread_id)
            await self._require_author(tx, new.tenant_id, new.author_id)
            comment_id = new_id()
            root_id = comment_id
            if new.parent_id is not None:
                parent = await tx.find_one(s.COMMENTS, {"_id": new.parent_id, "tenant_id": new.tenant_id})
                if parent is None:
                    raise NotFound("parent comment")
                if parent["thread_id"] != new.thread_id:
                    raise InvalidReference("the parent comment belongs to another thread")
                root_id = parent["root_id"]
            comment = Comment(
                id=comment_id,
                tenant_id=new.tenant_id,
                thread_id=new.thread_id,
                parent_id=new.parent_id,
                root_id=root_id,
                author_id=new.author_id,
                display_name=new.display_name,
                body_source=new.body_source,
                body_html=new.body_html,
                status=new.status,
                created_ms=new.created_ms,
                edited_ms=None,
                like_count=0,
                flag_count=0,
            )
            await tx.insert(s.COMMENTS, [_comment_doc(comment)])
            if new.status is CommentStatus.APPROVED:
                await self._count_approved(tx, new.tenant_id, new.thread_id, +1)
            return comment

        return self._write("create_comment", read_preference, go)

    def post_comment(self, new: NewPost, *, read_preference: ReadPreference) -> Deferred[Written[Posted]]:
        tenant_id = new.tenant_id
        poster = new.poster
        session: AnonymousSession | None = None
        if isinstance(poster, NewSession):
            session = poster.session or self.new_anonymous_session(tenant_id, created_ms=new.created_ms)
            session = replace(session, tenant_id=tenant_id)

        async def go(tx: Tx) -> Posted:
            # Every check first (reads in the transaction), every write last:
            # a refused post wrote nothing, as the contract asks.
            await self._require_tenant(tx, tenant_id)
            await self._check_expected(tx, tenant_id, new.expect)
            user: Document | None = None
            if session is not None:
                author_id = session.author_id
            elif isinstance(poster, SessionPoster):
                found = await tx.find_one(
                    s.SESSIONS, {"_id": poster.session_id, "tenant_id": tenant_id}, projection={"author_id": 1}
                )
                if found is None:
                    raise NotFound("session")
                author_id = found["author_id"]
            else:
                assert isinstance(poster, UserPoster)
                user = await tx.find_one(s.USERS, {"tenant_id": tenant_id, "external_id": poster.external_id})
                author_id = new_id() if user is None else user["author_id"]
            thread = await tx.find_one(s.THREADS, {"tenant_id": tenant_id, "url_id": new.url_id})
            if thread is not None and new.open_only and thread["closed"]:
                raise ThreadClosed()
            thread_id = (new.new_thread_id or new_id()) if thread is None else thread["_id"]
            comment_id = new_id()
            root_id = comment_id
            if new.parent_id is not None:
                parent = await tx.find_one(
                    s.COMMENTS,
                    {"_id": new.parent_id, "tenant_id": tenant_id},
                    projection={"thread_id": 1, "root_id": 1},
                )
                if parent is None:
                    raise NotFound("parent comment")
                if parent["thread_id"] != thread_id:
                    raise InvalidReference("the parent comment belongs to another thread")
                root_id = parent["root_id"]
            if session is not None:
                await self._insert_session(tx, session)
            elif isinstance(poster, UserPoster):
                await self._put_user(tx, tenant_id, poster.external_id, poster.display_name, user, author_id, new)
            created = thread is None
            if thread is None:
                thread = {
                    "_id": thread_id,
                    "tenant_id": tenant_id,
                    "url_id": new.url_id,
                    "title": new.title or "",
                    "closed": False,
                    "created_ms": new.created_ms,
                    "comment_count": 0,
                    "locked_groups": None,
                    "require_sign_in": None,
                }
                await tx.insert(s.THREADS, [thread])
            elif new.retitle and new.title and new.title != thread["title"]:
                await tx.update(s.THREADS, {"_id": thread_id}, {"$set": {"title": new.title}})
                thread["title"] = new.title
            comment = Comment(
                id=comment_id,
                tenant_id=tenant_id,
                thread_id=thread_id,
                parent_id=new.parent_id,
                root_id=root_id,
                author_id=author_id,
                display_name=new.display_name,
                body_source=new.body_source,
                body_html=new.body_html,
                status=new.status,
                created_ms=new.created_ms,
                edited_ms=None,
                like_count=0,
                flag_count=0,
            )
            await tx.insert(s.COMMENTS, [_comment_doc(comment)])
            if new.status is CommentStatus.APPROVED:
                # Inside the transaction the count read above is the one this
                # $inc moves (a concurrent post conflicts and is retried).
                await self._count_approved(tx, tenant_id, thread_id, +1)
                thread["comment_count"] += 1
            return Posted(comment=comment, thread=_thread(thread), thread_created=created, session=session)

        return self._write("post_comment", read_preference, go)

    async def _put_user(
        self,
        tx: Tx,
        tenant_id: str,
        external_id: str,
        display_name: str,
        found: Document | None,
        author_id: str,
        new: NewPost,
    ) -> None:
        """The poster's user: created with its author when ``found`` is
        ``None``, else renamed when its display name changed."""
        if found is None:
            await tx.insert(
                s.AUTHORS,
                [
                    {
                        "_id": author_id,
                        "tenant_id": tenant_id,
                        "kind": AuthorKind.USER.value,
                        "created_ms": new.created_ms,
                    }
                ],
            )
            await tx.insert(
                s.USERS,
                [
                    {
                        "_id": new_id(),
                        "tenant_id": tenant_id,
                        "external_id": external_id,
                        "author_id": author_id,
                        "display_name": display_name,
                        "created_ms": new.created_ms,
                        "profile": None,
                    }
                ],
            )
        elif found["display_name"] != display_name:
            await tx.update(s.USERS, {"_id": found["_id"]}, {"$set": {"display_name": display_name}})

    async def _count_approved(self, tx: Tx, tenant_id: str, thread_id: str, delta: int) -> None:
        await tx.update(s.THREADS, {"_id": thread_id, "tenant_id": tenant_id}, {"$inc": {"comment_count": delta}})

    async def _comment_row(self, r: Reader, tenant_id: str, comment_id: str) -> Comment:
        found = await r.find_one(s.COMMENTS, {"_id": comment_id, "tenant_id": tenant_id})
        if found is None:
            raise NotFound("comment")
        return _comment(found)

    def get_comment(
        self, tenant_id: str, comment_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Comment]:
        async def go(r: Reader) -> Comment:
            return await self._comment_row(r, tenant_id, comment_id)

        return self._read("get_comment", read_preference, token, go)

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
        query: Document = {"tenant_id": tenant_id, "thread_id": thread_id, "status": _APPROVED, "parent_id": None}
        order: list[tuple[str, int]]
        if sort is Sort.TOP:
            fields = ["like_count", "created_ms", "_id"]
            order = [(f, -1) for f in fields]
            if after is not None:
                query.update(_after_desc(fields, after))
        elif sort is Sort.NEWEST:
            order = [("created_ms", -1), ("_id", -1)]
            if after is not None:
                query.update(_after_desc(["created_ms", "_id"], after))
        else:
            order = [("created_ms", 1), ("_id", 1)]
            if after is not None:
                query.update(_after(["created_ms", "_id"], after, ["$gt", "$gt"]))

        async def go(r: Reader) -> ThreadPage:
            thread = await self._thread_by_id(r, tenant_id, thread_id)
            rows = await r.find(s.COMMENTS, query, sort=order, limit=limit + 1)
            top = [_comment(d) for d in rows[:limit]]
            replies: list[Comment] = []
            if top:
                replies = [
                    _comment(d)
                    for d in await r.find(
                        s.COMMENTS,
                        {
                            "tenant_id": tenant_id,
                            "root_id": {"$in": [t.id for t in top]},
                            "parent_id": {"$ne": None},
                            "status": _APPROVED,
                        },
                        sort=[("created_ms", 1), ("_id", 1)],
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

        return self._read("list_thread", read_preference, token, go)

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
        query: Document = {"tenant_id": tenant_id, "status": status.value}
        if thread_id is not None:
            query["thread_id"] = thread_id
        if cursor:
            try:
                after = decode_cursor(cursor, "comments", (int, str))
            except BadCursor:
                return fail()
            query.update(_after_desc(["created_ms", "_id"], after))

        async def go(r: Reader) -> Page[Comment]:
            rows = await r.find(s.COMMENTS, query, sort=[("created_ms", -1), ("_id", -1)], limit=limit + 1)
            return page_of(
                rows, limit, _comment, lambda last: encode_cursor("comments", last["created_ms"], last["_id"])
            )

        return self._read("list_comments", read_preference, token, go)

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
        async def go(tx: Tx) -> Comment:
            change = await self._change_comment(tx, tenant_id, comment_id, edited_ms, body, status)
            return change.after

        return self._write("update_comment", read_preference, go)

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
        async def go(tx: Tx) -> Change:
            return await self._change_comment(tx, tenant_id, comment_id, edited_ms, body, status)

        return self._write("change_comment", read_preference, go)

    async def _change_comment(
        self,
        tx: Tx,
        tenant_id: str,
        comment_id: str,
        edited_ms: int,
        body: tuple[str, str] | None,
        status: CommentStatus | None,
    ) -> Change:
        """The comment before and after the change (read in the transaction,
        so ``before`` is what the write replaced)."""
        old = await self._comment_row(tx, tenant_id, comment_id)
        new = old
        changes: Document = {}
        if body is not None:
            changes.update(body_source=body[0], body_html=body[1], edited_ms=edited_ms)
            new = replace(new, body_source=body[0], body_html=body[1], edited_ms=edited_ms)
        if status is not None and status is not old.status:
            changes["status"] = status.value
            new = replace(new, status=status)
            if old.status is CommentStatus.APPROVED:
                await self._count_approved(tx, tenant_id, old.thread_id, -1)
            elif status is CommentStatus.APPROVED:
                await self._count_approved(tx, tenant_id, old.thread_id, +1)
        if changes:
            await tx.update(s.COMMENTS, {"_id": comment_id, "tenant_id": tenant_id}, {"$set": changes})
        return Change(before=old, after=new)

    def delete_comment(
        self, tenant_id: str, comment_id: str, *, read_preference: ReadPreference, deleted_ms: int = 0
    ) -> Deferred[Written[int]]:
        # ``deleted_ms`` stamps the SQL backends' ``comment.removed`` webhook
        # events; this backend keeps no webhook outbox (docs/webhooks.md).
        async def go(tx: Tx) -> int:
            target = await self._comment_row(tx, tenant_id, comment_id)
            rows = await tx.find(
                s.COMMENTS, {"tenant_id": tenant_id, "root_id": target.root_id}, projection={"_id": 1, "parent_id": 1}
            )
            children: dict[str | None, list[str]] = {}
            for d in rows:
                children.setdefault(d["parent_id"], []).append(d["_id"])
            found, todo = [], [target.id]
            while todo:
                current = todo.pop()
                found.append(current)
                todo.extend(children.get(current, ()))
            return await self._delete_comments(tx, tenant_id, found)

        return self._write("delete_comment", read_preference, go)

    async def _delete_comments(self, tx: Tx, tenant_id: str, ids: list[str]) -> int:
        """Delete comments with their votes and flags, keeping the threads'
        approved counts right."""
        if not ids:
            return 0
        approved = await tx.aggregate(
            s.COMMENTS,
            [
                {"$match": {"tenant_id": tenant_id, "_id": {"$in": ids}, "status": _APPROVED}},
                {"$group": {"_id": "$thread_id", "n": {"$sum": 1}}},
            ],
        )
        await tx.delete(s.VOTES, {"comment_id": {"$in": ids}})
        await tx.delete(s.FLAGS, {"comment_id": {"$in": ids}})
        gone = await tx.delete(s.COMMENTS, {"tenant_id": tenant_id, "_id": {"$in": ids}})
        for row in approved:
            await self._count_approved(tx, tenant_id, row["_id"], -int(row["n"]))
        return gone

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
        async def go(tx: Tx) -> int:
            await self._check_expected(tx, tenant_id, expect, new_session)
            await self._comment_row(tx, tenant_id, comment_id)
            await self._voter_exists(tx, tenant_id, voter_id, new_session)
            if await tx.find_one(s.VOTES, {"comment_id": comment_id, "voter_id": voter_id}) is not None:
                raise AlreadyExists("like")
            if address_hash is not None and max_per_address is not None:
                rows = await tx.aggregate(
                    s.VOTES,
                    [{"$match": {"comment_id": comment_id, "address_hash": address_hash}}, {"$count": "n"}],
                )
                if (int(rows[0]["n"]) if rows else 0) >= max_per_address:
                    raise LimitReached("likes from one address")
            await self._new_session_last(tx, tenant_id, new_session)
            try:
                await tx.insert(
                    s.VOTES,
                    [
                        {
                            "comment_id": comment_id,
                            "voter_id": voter_id,
                            "tenant_id": tenant_id,
                            "created_ms": created_ms,
                            "address_hash": address_hash,
                        }
                    ],
                )
            except DuplicateKeyError:
                raise AlreadyExists("like") from None
            return await self._bump(tx, tenant_id, comment_id, "like_count", +1)

        return self._write("add_like", read_preference, go)

    async def _bump(self, tx: Tx, tenant_id: str, comment_id: str, field: str, delta: int) -> int:
        """``$inc`` a counter and return its new value, atomically."""
        found = await tx.find_and_modify(
            s.COMMENTS, {"_id": comment_id, "tenant_id": tenant_id}, {"$inc": {field: delta}}
        )
        if found is None:
            raise NotFound("comment")
        return int(found[field])

    def remove_like(
        self,
        tenant_id: str,
        comment_id: str,
        voter_id: str,
        *,
        read_preference: ReadPreference,
        expect: Expect | None = None,
    ) -> Deferred[Written[int]]:
        async def go(tx: Tx) -> int:
            await self._check_expected(tx, tenant_id, expect)
            await self._comment_row(tx, tenant_id, comment_id)
            gone = await tx.delete(
                s.VOTES, {"tenant_id": tenant_id, "comment_id": comment_id, "voter_id": voter_id}, multi=False
            )
            if gone == 0:
                raise NotFound("like")
            return await self._bump(tx, tenant_id, comment_id, "like_count", -1)

        return self._write("remove_like", read_preference, go)

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
        async def go(tx: Tx) -> int:
            await self._check_expected(tx, tenant_id, expect, new_session)
            comment = await self._comment_row(tx, tenant_id, comment_id)
            await self._voter_exists(tx, tenant_id, flagger_id, new_session)
            if await tx.find_one(s.FLAGS, {"comment_id": comment_id, "flagger_id": flagger_id}) is not None:
                raise AlreadyExists("flag")
            await self._new_session_last(tx, tenant_id, new_session)
            try:
                await tx.insert(
                    s.FLAGS,
                    [
                        {
                            "comment_id": comment_id,
                            "flagger_id": flagger_id,
                            "tenant_id": tenant_id,
                            "created_ms": created_ms,
                        }
                    ],
                )
            except DuplicateKeyError:
                raise AlreadyExists("flag") from None
            count = await self._bump(tx, tenant_id, comment_id, "flag_count", +1)
            if hide_at is not None and count >= hide_at and comment.status is CommentStatus.APPROVED:
                # Hidden for review: off public pages, still in the
                # moderators' pending and flagged queues.
                hidden = replace(comment, flag_count=count)
                await self._set_status(tx, tenant_id, [hidden], CommentStatus.PENDING)
                await self._audit(tx, tenant_id, "auto", "auto_hide", [comment_id], [], "flags", created_ms)
            return count

        return self._write("add_flag", read_preference, go)

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
        if viewer_id == author_id:
            return fail(InvalidReference("an author cannot block themselves"))

        async def go(tx: Tx) -> None:
            await self._check_expected(tx, tenant_id, expect, new_session)
            await self._require_author(tx, tenant_id, author_id)
            await self._voter_exists(tx, tenant_id, viewer_id, new_session)
            where = {"tenant_id": tenant_id, "viewer_id": viewer_id, "author_id": author_id}
            if await tx.find_one(s.BLOCKS, where) is not None:
                raise AlreadyExists("block")
            await self._new_session_last(tx, tenant_id, new_session)
            try:
                await tx.insert(s.BLOCKS, [{**where, "created_ms": created_ms}])
            except DuplicateKeyError:
                raise AlreadyExists("block") from None

        return self._write("add_block", read_preference, go)

    def remove_block(
        self,
        tenant_id: str,
        viewer_id: str,
        author_id: str,
        *,
        read_preference: ReadPreference,
        expect: Expect | None = None,
    ) -> Deferred[Written[None]]:
        async def go(tx: Tx) -> None:
            await self._check_expected(tx, tenant_id, expect)
            gone = await tx.delete(
                s.BLOCKS, {"tenant_id": tenant_id, "viewer_id": viewer_id, "author_id": author_id}, multi=False
            )
            if gone == 0:
                raise NotFound("block")

        return self._write("remove_block", read_preference, go)

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

        async def go(r: Reader) -> ViewerState:
            liked: set[str] = set()
            for start in range(0, len(ids), 500):
                rows = await r.find(
                    s.VOTES,
                    {"tenant_id": tenant_id, "voter_id": viewer_id, "comment_id": {"$in": ids[start : start + 500]}},
                    projection={"comment_id": 1},
                )
                liked.update(d["comment_id"] for d in rows)
            blocked = await r.find(
                s.BLOCKS, {"tenant_id": tenant_id, "viewer_id": viewer_id}, projection={"author_id": 1}
            )
            return ViewerState(liked=frozenset(liked), blocked_authors=frozenset(d["author_id"] for d in blocked))

        return self._read("viewer_state", read_preference, token, go)

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
        clauses: list[Document] = [{"tenant_id": tenant_id}]
        if queue is ModerationQueue.FLAGGED:
            clauses.append({"flag_count": {"$gt": 0}, "status": {"$in": [_APPROVED, CommentStatus.PENDING.value]}})
        else:
            clauses.append({"status": queue.value})
        if filters.thread_id is not None:
            clauses.append({"thread_id": filters.thread_id})
        if filters.author_id is not None:
            clauses.append({"author_id": filters.author_id})
        if filters.since_ms is not None:
            clauses.append({"created_ms": {"$gte": filters.since_ms}})
        if filters.until_ms is not None:
            clauses.append({"created_ms": {"$lt": filters.until_ms}})
        if filters.text:
            clauses.append({"body_source": {"$regex": re.escape(filters.text), "$options": "i"}})
        order: list[tuple[str, int]]
        if by_flags:
            order = [("flag_count", -1), ("created_ms", 1), ("_id", 1)]
            if after is not None:
                clauses.append(_after(["flag_count", "created_ms", "_id"], after, ["$lt", "$gt", "$gt"]))
        else:
            order = [("created_ms", 1), ("_id", 1)]
            if after is not None:
                clauses.append(_after(["created_ms", "_id"], after, ["$gt", "$gt"]))
        query = {"$and": clauses}

        async def go(r: Reader) -> Page[Comment]:
            rows = await r.find(s.COMMENTS, query, sort=order, limit=limit + 1)
            if by_flags:
                return page_of(
                    rows,
                    limit,
                    _comment,
                    lambda last: encode_cursor(kind, last["flag_count"], last["created_ms"], last["_id"]),
                )
            return page_of(rows, limit, _comment, lambda last: encode_cursor(kind, last["created_ms"], last["_id"]))

        return self._read("moderation_queue", read_preference, token, go)

    async def _set_status(
        self,
        tx: Tx,
        tenant_id: str,
        comments: Sequence[Comment],
        status: CommentStatus,
        *,
        clear_flags: bool = False,
    ) -> list[tuple[Comment, Comment]]:
        """Give ``comments`` (as read in this transaction) ``status``.

        :returns: ``(before, after)`` of the comments that changed.
        """
        changed = [
            (old, replace(old, status=status, flag_count=0 if clear_flags else old.flag_count))
            for old in comments
            if old.status is not status or (clear_flags and old.flag_count)
        ]
        if not changed:
            return []
        ids = [old.id for old, _ in changed]
        values: Document = {"status": status.value}
        if clear_flags:
            values["flag_count"] = 0
            await tx.delete(s.FLAGS, {"comment_id": {"$in": ids}})
        await tx.update(s.COMMENTS, {"tenant_id": tenant_id, "_id": {"$in": ids}}, {"$set": values}, multi=True)
        deltas: dict[str, int] = {}
        for old, new in changed:
            delta = (new.status is CommentStatus.APPROVED) - (old.status is CommentStatus.APPROVED)
            if delta:
                deltas[old.thread_id] = deltas.get(old.thread_id, 0) + delta
        for thread_id, delta in deltas.items():
            if delta:
                await self._count_approved(tx, tenant_id, thread_id, delta)
        return changed

    async def _audit(
        self,
        tx: Tx,
        tenant_id: str,
        actor: str,
        action: str,
        comment_ids: Sequence[str],
        ban_ids: Sequence[str],
        reason: str,
        created_ms: int,
    ) -> AuditEntry:
        """Write one audit entry in the caller's transaction; ``seq`` (from
        a counter document) orders entries of the same millisecond."""
        counter = await tx.find_and_modify(s.COUNTERS, {"_id": "moderation_log"}, {"$inc": {"seq": 1}}, upsert=True)
        assert counter is not None
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
        await tx.insert(
            s.AUDIT,
            [
                {
                    "_id": entry.id,
                    "tenant_id": tenant_id,
                    "created_ms": created_ms,
                    "seq": int(counter["seq"]),
                    "actor": actor,
                    "action": action,
                    "comment_ids": list(comment_ids),
                    "ban_ids": list(ban_ids),
                    "reason": reason,
                }
            ],
        )
        return entry

    async def _insert_bans(
        self,
        tx: Tx,
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
        await tx.insert(s.BANS, [_ban_doc(b) for b in bans])
        return bans

    async def _comments_of(self, tx: Tx, tenant_id: str, author_ids: Sequence[str]) -> list[Comment]:
        """Every comment of these authors not yet removed."""
        rows = await tx.find(
            s.COMMENTS,
            {
                "tenant_id": tenant_id,
                "author_id": {"$in": list(author_ids)},
                "status": {"$ne": CommentStatus.REMOVED.value},
            },
        )
        return [_comment(d) for d in rows]

    async def _owned(self, tx: Tx, tenant_id: str, ids: list[str]) -> list[Comment]:
        """The comments ``ids`` in the order given; ``NotFound`` if any is
        missing or another tenant's."""
        found = [_comment(d) for d in await tx.find(s.COMMENTS, {"_id": {"$in": ids}})]
        if len(found) != len(ids) or any(x.tenant_id != tenant_id for x in found):
            raise NotFound("comment")
        order = {cid: i for i, cid in enumerate(ids)}
        found.sort(key=lambda x: order[x.id])
        return found

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

        async def set_statuses(tx: Tx) -> Moderated:
            found = await self._owned(tx, tenant_id, ids)
            if action is ModerationAction.RESTORE:
                gone = (CommentStatus.REMOVED, CommentStatus.SPAM)
                changed = await self._set_status(
                    tx, tenant_id, [c for c in found if c.status in gone], CommentStatus.APPROVED
                )
            else:
                status = {
                    ModerationAction.APPROVE: CommentStatus.APPROVED,
                    ModerationAction.REMOVE: CommentStatus.REMOVED,
                    ModerationAction.SPAM: CommentStatus.SPAM,
                }[action]
                changed = await self._set_status(
                    tx, tenant_id, found, status, clear_flags=action is ModerationAction.APPROVE
                )
            entry = await self._audit(tx, tenant_id, actor, action.value, ids, [], reason, created_ms)
            return Moderated(changed=changed, bans=[], entry=entry)

        async def ban(tx: Tx) -> Moderated:
            found = await self._owned(tx, tenant_id, ids)
            authors = sorted({x.author_id for x in found})
            bans = await self._insert_bans(
                tx,
                tenant_id,
                BanKind.AUTHOR,
                authors,
                actor=actor,
                reason=reason,
                created_ms=created_ms,
                expires_ms=ban_expires_ms,
            )
            doomed = await self._comments_of(tx, tenant_id, authors) if remove_all else found
            changed = await self._set_status(tx, tenant_id, doomed, CommentStatus.REMOVED)
            order = set(ids)
            named = ids + [old.id for old, _ in changed if old.id not in order]
            entry = await self._audit(
                tx, tenant_id, actor, ModerationAction.BAN.value, named, [b.id for b in bans], reason, created_ms
            )
            return Moderated(changed=changed, bans=bans, entry=entry)

        return self._write("moderate", read_preference, ban if action is ModerationAction.BAN else set_statuses)

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

        async def go(tx: Tx) -> Moderated:
            if kind is BanKind.AUTHOR:
                await self._require_author(tx, tenant_id, value)
            else:
                await self._require_tenant(tx, tenant_id)
            bans = await self._insert_bans(
                tx, tenant_id, kind, [value], actor=actor, reason=reason, created_ms=created_ms, expires_ms=expires_ms
            )
            changed: list[tuple[Comment, Comment]] = []
            if remove_all:
                changed = await self._set_status(
                    tx, tenant_id, await self._comments_of(tx, tenant_id, [value]), CommentStatus.REMOVED
                )
            entry = await self._audit(
                tx, tenant_id, actor, "ban", [old.id for old, _ in changed], [bans[0].id], reason, created_ms
            )
            return Moderated(changed=changed, bans=bans, entry=entry)

        return self._write("add_ban", read_preference, go)

    def lift_ban(
        self, tenant_id: str, ban_id: str, *, actor: str, reason: str, lifted_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[Ban]]:
        async def go(tx: Tx) -> Ban:
            where = {"_id": ban_id, "tenant_id": tenant_id, "lifted_ms": None}
            found = await tx.find_one(s.BANS, where)
            if found is None:
                raise NotFound("ban")
            await tx.update(s.BANS, where, {"$set": {"lifted_ms": lifted_ms}})
            await self._audit(tx, tenant_id, actor, "lift_ban", [], [ban_id], reason, lifted_ms)
            return replace(_ban(found), lifted_ms=lifted_ms)

        return self._write("lift_ban", read_preference, go)

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
        clauses: list[Document] = [{"tenant_id": tenant_id}]
        if active_at_ms is not None:
            clauses.append(_in_force(active_at_ms))
        if after is not None:
            clauses.append(_after_desc(["created_ms", "_id"], after))

        async def go(r: Reader) -> Page[Ban]:
            rows = await r.find(s.BANS, {"$and": clauses}, sort=[("created_ms", -1), ("_id", -1)], limit=limit + 1)
            return page_of(rows, limit, _ban, lambda last: encode_cursor("bans", last["created_ms"], last["_id"]))

        return self._read("list_bans", read_preference, token, go)

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
        named: list[Document] = []
        if author_id is not None:
            named.append({"kind": BanKind.AUTHOR.value, "value": author_id})
        if address_hash is not None:
            named.append({"kind": BanKind.ADDRESS.value, "value": address_hash})

        async def go(r: Reader) -> Ban | None:
            if not named:
                return None
            found = await r.find(
                s.BANS,
                {"$and": [{"tenant_id": tenant_id}, {"$or": named}, _in_force(now_ms)]},
                sort=[("created_ms", 1), ("_id", 1)],
                limit=1,
            )
            return _ban(found[0]) if found else None

        return self._read("find_ban", read_preference, token, go)

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
        query: Document = {"tenant_id": tenant_id}
        if after is not None:
            query.update(_after_desc(["created_ms", "seq"], after))

        async def go(r: Reader) -> Page[AuditEntry]:
            rows = await r.find(s.AUDIT, query, sort=[("created_ms", -1), ("seq", -1)], limit=limit + 1)
            return page_of(
                rows, limit, _audit_entry, lambda last: encode_cursor("audit", last["created_ms"], last["seq"])
            )

        return self._read("audit_log", read_preference, token, go)

    # Credits

    def charge_credits(
        self,
        tenant_id: str,
        charges: Mapping[str, tuple[int, int]],
        *,
        created_ms: int,
        read_preference: ReadPreference,
    ) -> Deferred[Written[None]]:
        rows = [
            {
                "_id": new_id(),
                "tenant_id": tenant_id,
                "operation": op,
                "calls": calls,
                "credits": credits,
                "created_ms": created_ms,
            }
            for op, (calls, credits) in sorted(charges.items())
        ]

        async def go(tx: Tx) -> None:
            await self._require_tenant(tx, tenant_id)
            await tx.insert(s.CREDITS, rows)

        return self._write("charge_credits", read_preference, go)

    def credit_usage(
        self, tenant_id: str, *, since_ms: int, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[list[CreditUsage]]:
        async def go(r: Reader) -> list[CreditUsage]:
            rows = await r.aggregate(
                s.CREDITS,
                [
                    {"$match": {"tenant_id": tenant_id, "created_ms": {"$gte": since_ms}}},
                    {"$group": {"_id": "$operation", "calls": {"$sum": "$calls"}, "credits": {"$sum": "$credits"}}},
                    {"$sort": {"_id": 1}},
                ],
            )
            return [CreditUsage(operation=d["_id"], calls=int(d["calls"]), credits=int(d["credits"])) for d in rows]

        return self._read("credit_usage", read_preference, token, go)
