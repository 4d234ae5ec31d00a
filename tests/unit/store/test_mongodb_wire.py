"""What the MongoDB backend sends, to which member, and how it rides out
elections and dropped connections: the real txmongo client against
MockupDB servers on loopback (:mod:`.mongo_fake`), every command captured.

The store's clock is a ``Clock`` moved on while the reactor turns, so retry
pauses, token waits and time limits are the store's own, not wall time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bson import Int64, Timestamp
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fastedge.admin import _open_store
from fastedge.config import ApiConfig, load_config
from fastedge.http.errors import from_store_error
from fastedge.store.errors import (
    BadToken,
    CommitUnknown,
    InvalidReference,
    NotFound,
    Stale,
    StoreUnavailable,
    WrongReadPreference,
)
from fastedge.store.metrics import ReplicationMetrics
from fastedge.store.model import (
    AuthorKind,
    BanKind,
    CommentStatus,
    Expect,
    ModerationAction,
    ModerationQueue,
    NewComment,
    NewPost,
    NewSession,
    QueueFilter,
    QueueSort,
    ReadPreference,
    SessionPoster,
    Sort,
    SsoSecretChange,
    UserPoster,
    UserProfile,
    Written,
)
from fastedge.store.mongodb import schema
from fastedge.store.mongodb.store import MongoStore
from fastedge.store.mongodb.tokens import format_token, parse_token
from fastedge.store.postgresql import parse_lsn

from .mongo_fake import EPOCH, ReactorTurningMixin, fresh_database, shared_fake, test_pool

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST

#: Fields every command carries that the per-operation tables leave out.
_COMMON = {"$db", "lsid", "$clusterTime", "$readPreference", "readConcern", "maxTimeMS"}
_TXN = {"txnNumber", "autocommit", "startTransaction"}


def _shape(doc: dict[str, Any]) -> dict[str, Any]:
    """A command without the fields every command carries."""
    return {k: v for k, v in doc.items() if k not in _COMMON | _TXN}


def _sorted(doc: dict[str, Any]) -> list[tuple[str, int]]:
    return list(doc.get("sort", {}).items())


class MongoWireCase(ReactorTurningMixin, SynchronousTestCase):
    """A store on the shared fake replica set, with its own database."""

    store_kwargs: dict[str, Any] = {}

    def setUp(self) -> None:
        super().setUp()
        self.fake = shared_fake()
        self.fake.reset()
        self.addCleanup(self.fake.reset)
        self.clock = Clock()
        self.turning_clock = self.clock
        self.metrics = ReplicationMetrics(CollectorRegistry(), "mongodb")
        self.store = self.make_store()
        self.successResultOf(self.store.open())
        self.addCleanup(lambda: self.successResultOf(self.store.close()))
        self.now = 1_700_000_000_000

    def make_store(self, **kwargs: Any) -> MongoStore:
        options: dict[str, Any] = dict(
            database=fresh_database("wire"),
            clock=self.clock,
            pool_size=1,
            pool_factory=test_pool,
            metrics=self.metrics,
        )
        options.update(self.store_kwargs)
        options.update(kwargs)
        return MongoStore(self.fake.uri, self.fake.nearest_uri, **options)

    def tick(self) -> int:
        self.now += 1000
        return self.now

    def count(self, name: str, **labels: str) -> float:
        metric = getattr(self.metrics, name)
        return metric.labels(backend="mongodb", **labels)._value.get()  # type: ignore[no-any-return]

    def sent(self, since: int) -> list[tuple[str, dict[str, Any]]]:
        """Commands sent since log position ``since`` (no handshakes)."""
        return [(who, doc) for who, doc in self.fake.log[since:] if "ismaster" not in doc and "hello" not in doc]

    def seed(self) -> dict[str, Any]:
        """A tenant with a key, a user, a thread with a comment and a reply,
        a like, a block, a ban and a credit charge; the last token."""
        st = self.store
        w: dict[str, Any] = {}

        def write(d: Any) -> Any:
            written = self.successResultOf(d)
            self.assertIsInstance(written, Written)
            w["token"] = written.token
            return written.value

        w["tenant"] = write(st.create_tenant("Acme", "global", created_ms=self.tick(), read_preference=PRIMARY))
        t = w["tenant"].id
        w["key"] = write(st.add_api_key(t, "h" * 64, created_ms=self.tick(), read_preference=PRIMARY))
        w["session"] = write(st.create_anonymous_session(t, created_ms=self.tick(), read_preference=PRIMARY))
        w["user"] = write(st.upsert_user(t, "ext-1", "Ann", created_ms=self.tick(), read_preference=PRIMARY))
        w["thread"] = write(
            st.upsert_thread(t, "https://example.com/a", created_ms=self.tick(), read_preference=PRIMARY)
        )
        new = NewComment(
            tenant_id=t,
            thread_id=w["thread"].id,
            author_id=w["session"].author_id,
            display_name="Ann",
            body_source="Hello",
            body_html="<p>Hello</p>",
            status=CommentStatus.APPROVED,
            created_ms=self.tick(),
        )
        w["comment"] = write(st.create_comment(new, read_preference=PRIMARY))
        reply = NewComment(**{**new.__dict__, "parent_id": w["comment"].id, "created_ms": self.tick()})
        w["reply"] = write(st.create_comment(reply, read_preference=PRIMARY))
        write(st.add_like(t, w["comment"].id, w["user"].author_id, created_ms=self.tick(), read_preference=PRIMARY))
        write(
            st.add_block(
                t, w["user"].author_id, w["session"].author_id, created_ms=self.tick(), read_preference=PRIMARY
            )
        )
        w["ban"] = write(
            st.add_ban(
                t,
                BanKind.ADDRESS,
                "a" * 64,
                actor="mod",
                reason="spam",
                created_ms=self.tick(),
                read_preference=PRIMARY,
            )
        ).bans[0]
        write(st.charge_credits(t, {"read": (2, 4)}, created_ms=self.tick(), read_preference=PRIMARY))
        return w


class ReadShapeTests(MongoWireCase):
    maxDiff = None
    """Every read: its commands, filters, sorts and projections, and where
    they go with each read preference."""

    def reads(self, w: dict[str, Any]) -> list[tuple[str, Callable[..., Any], list[tuple[str, dict[str, Any]]]]]:
        """``(name, call, [(command, shape), ...])`` for every read."""
        t = w["tenant"].id
        th = w["thread"].id
        c = w["comment"].id
        viewer = w["user"].author_id
        approved = CommentStatus.APPROVED.value
        st = self.store
        now = self.now
        return [
            (
                "ping",
                lambda **kw: st.ping(read_preference=kw["read_preference"]),
                [
                    ("find", {"find": schema.MIGRATIONS, "filter": {}, "limit": 1}),
                ],
            ),
            (
                "get_tenant",
                lambda **kw: st.get_tenant(t, **kw),
                [
                    ("find", {"find": "tenants", "filter": {"_id": t}, "limit": 1}),
                ],
            ),
            (
                "list_tenants",
                lambda **kw: st.list_tenants(**kw),
                [
                    ("find", {"find": "tenants", "filter": {}, "sort": {"created_ms": 1, "_id": 1}}),
                ],
            ),
            (
                "get_sso_secrets",
                lambda **kw: st.get_sso_secrets(t, now_ms=now, **kw),
                [
                    (
                        "find",
                        {
                            "find": "tenant_sso_secrets",
                            "filter": {
                                "tenant_id": t,
                                "$or": [{"accepted_until_ms": None}, {"accepted_until_ms": {"$gt": now}}],
                            },
                            "sort": {"created_ms": -1, "_id": 1},
                        },
                    ),
                ],
            ),
            (
                "list_api_keys",
                lambda **kw: st.list_api_keys(t, **kw),
                [
                    ("find", {"find": "api_keys", "filter": {"tenant_id": t}, "sort": {"created_ms": 1, "_id": 1}}),
                ],
            ),
            (
                "tenant_for_api_key",
                lambda **kw: st.tenant_for_api_key("h" * 64, **kw),
                [
                    ("find", {"find": "api_keys", "filter": {"key_hash": "h" * 64, "revoked_ms": None}, "limit": 1}),
                    ("find", {"find": "tenants", "filter": {"_id": t}, "limit": 1}),
                ],
            ),
            (
                "get_anonymous_session",
                lambda **kw: st.get_anonymous_session(t, w["session"].id, **kw),
                [
                    (
                        "find",
                        {"find": "anonymous_sessions", "filter": {"_id": w["session"].id, "tenant_id": t}, "limit": 1},
                    ),
                ],
            ),
            (
                "get_user_by_author",
                lambda **kw: st.get_user_by_author(t, viewer, **kw),
                [
                    ("find", {"find": "users", "filter": {"tenant_id": t, "author_id": viewer}, "limit": 1}),
                ],
            ),
            (
                "get_author",
                lambda **kw: st.get_author(t, viewer, **kw),
                [
                    ("find", {"find": "authors", "filter": {"_id": viewer, "tenant_id": t}, "limit": 1}),
                ],
            ),
            (
                "author_history",
                lambda **kw: st.author_history(t, viewer, thread_id=th, since_ms=5, limit=3, **kw),
                [
                    ("find", {"find": "authors", "filter": {"_id": viewer, "tenant_id": t}, "limit": 1}),
                    (
                        "aggregate",
                        {
                            "aggregate": "comments",
                            "pipeline": [
                                {"$match": {"tenant_id": t, "author_id": viewer}},
                                {"$group": {"_id": "$status", "n": {"$sum": 1}}},
                            ],
                            "cursor": {},
                        },
                    ),
                    (
                        "find",
                        {
                            "find": "comments",
                            "filter": {"tenant_id": t, "author_id": viewer, "created_ms": {"$gte": 5}},
                            "sort": {"created_ms": -1, "_id": -1},
                            "limit": 3,
                            "projection": {
                                "author_id": 1,
                                "thread_id": 1,
                                "body_source": 1,
                                "status": 1,
                                "created_ms": 1,
                            },
                        },
                    ),
                    (
                        "find",
                        {
                            "find": "comments",
                            "filter": {
                                "tenant_id": t,
                                "thread_id": th,
                                "author_id": {"$ne": viewer},
                                "created_ms": {"$gte": 5},
                            },
                            "sort": {"created_ms": -1, "_id": -1},
                            "limit": 3,
                            "projection": {
                                "author_id": 1,
                                "thread_id": 1,
                                "body_source": 1,
                                "status": 1,
                                "created_ms": 1,
                            },
                        },
                    ),
                ],
            ),
            (
                "get_thread",
                lambda **kw: st.get_thread(t, "https://example.com/a", **kw),
                [
                    (
                        "find",
                        {"find": "threads", "filter": {"tenant_id": t, "url_id": "https://example.com/a"}, "limit": 1},
                    ),
                ],
            ),
            (
                "get_thread_by_id",
                lambda **kw: st.get_thread_by_id(t, th, **kw),
                [
                    ("find", {"find": "threads", "filter": {"_id": th, "tenant_id": t}, "limit": 1}),
                ],
            ),
            (
                "list_threads",
                lambda **kw: st.list_threads(t, limit=2, cursor=None, **kw),
                [
                    (
                        "find",
                        {
                            "find": "threads",
                            "filter": {"tenant_id": t},
                            "sort": {"created_ms": -1, "_id": -1},
                            "limit": 3,
                        },
                    ),
                ],
            ),
            (
                "get_comment",
                lambda **kw: st.get_comment(t, c, **kw),
                [
                    ("find", {"find": "comments", "filter": {"_id": c, "tenant_id": t}, "limit": 1}),
                ],
            ),
            (
                "list_thread",
                lambda **kw: st.list_thread(t, th, sort=Sort.TOP, limit=2, cursor=None, **kw),
                [
                    ("find", {"find": "threads", "filter": {"_id": th, "tenant_id": t}, "limit": 1}),
                    (
                        "find",
                        {
                            "find": "comments",
                            "filter": {"tenant_id": t, "thread_id": th, "status": approved, "parent_id": None},
                            "sort": {"like_count": -1, "created_ms": -1, "_id": -1},
                            "limit": 3,
                        },
                    ),
                    (
                        "find",
                        {
                            "find": "comments",
                            "filter": {
                                "tenant_id": t,
                                "root_id": {"$in": [c]},
                                "parent_id": {"$ne": None},
                                "status": approved,
                            },
                            "sort": {"created_ms": 1, "_id": 1},
                        },
                    ),
                ],
            ),
            (
                "list_comments",
                lambda **kw: st.list_comments(
                    t, status=CommentStatus.PENDING, limit=5, cursor=None, thread_id=th, **kw
                ),
                [
                    (
                        "find",
                        {
                            "find": "comments",
                            "filter": {"tenant_id": t, "status": "pending", "thread_id": th},
                            "sort": {"created_ms": -1, "_id": -1},
                            "limit": 6,
                        },
                    ),
                ],
            ),
            (
                "viewer_state",
                lambda **kw: st.viewer_state(t, viewer, [c], **kw),
                [
                    (
                        "find",
                        {
                            "find": "votes",
                            "filter": {"tenant_id": t, "voter_id": viewer, "comment_id": {"$in": [c]}},
                            "projection": {"comment_id": 1},
                        },
                    ),
                    (
                        "find",
                        {
                            "find": "blocks",
                            "filter": {"tenant_id": t, "viewer_id": viewer},
                            "projection": {"author_id": 1},
                        },
                    ),
                ],
            ),
            (
                "moderation_queue",
                lambda **kw: st.moderation_queue(
                    t,
                    queue=ModerationQueue.FLAGGED,
                    sort=QueueSort.MOST_FLAGGED,
                    limit=5,
                    cursor=None,
                    filters=QueueFilter(text="a.b"),
                    **kw,
                ),
                [
                    (
                        "find",
                        {
                            "find": "comments",
                            "filter": {
                                "$and": [
                                    {"tenant_id": t},
                                    {"flag_count": {"$gt": 0}, "status": {"$in": ["approved", "pending"]}},
                                    {"body_source": {"$regex": "a\\.b", "$options": "i"}},
                                ]
                            },
                            "sort": {"flag_count": -1, "created_ms": 1, "_id": 1},
                            "limit": 6,
                        },
                    ),
                ],
            ),
            (
                "list_bans",
                lambda **kw: st.list_bans(t, active_at_ms=now, limit=5, cursor=None, **kw),
                [
                    (
                        "find",
                        {
                            "find": "bans",
                            "filter": {
                                "$and": [
                                    {"tenant_id": t},
                                    {"lifted_ms": None, "$or": [{"expires_ms": None}, {"expires_ms": {"$gt": now}}]},
                                ]
                            },
                            "sort": {"created_ms": -1, "_id": -1},
                            "limit": 6,
                        },
                    ),
                ],
            ),
            (
                "find_ban",
                lambda **kw: st.find_ban(t, author_id=None, address_hash="a" * 64, now_ms=now, **kw),
                [
                    (
                        "find",
                        {
                            "find": "bans",
                            "filter": {
                                "$and": [
                                    {"tenant_id": t},
                                    {"$or": [{"kind": "address", "value": "a" * 64}]},
                                    {"lifted_ms": None, "$or": [{"expires_ms": None}, {"expires_ms": {"$gt": now}}]},
                                ]
                            },
                            "sort": {"created_ms": 1, "_id": 1},
                            "limit": 1,
                        },
                    ),
                ],
            ),
            (
                "audit_log",
                lambda **kw: st.audit_log(t, limit=5, cursor=None, **kw),
                [
                    (
                        "find",
                        {
                            "find": "moderation_log",
                            "filter": {"tenant_id": t},
                            "sort": {"created_ms": -1, "seq": -1},
                            "limit": 6,
                        },
                    ),
                ],
            ),
            (
                "credit_usage",
                lambda **kw: st.credit_usage(t, since_ms=0, **kw),
                [
                    (
                        "aggregate",
                        {
                            "aggregate": "credit_ledger",
                            "pipeline": [
                                {"$match": {"tenant_id": t, "created_ms": {"$gte": 0}}},
                                {
                                    "$group": {
                                        "_id": "$operation",
                                        "calls": {"$sum": "$calls"},
                                        "credits": {"$sum": "$credits"},
                                    }
                                },
                                {"$sort": {"_id": 1}},
                            ],
                            "cursor": {},
                        },
                    ),
                ],
            ),
        ]

    def check_reads(self, read_preference: ReadPreference, with_token: bool) -> None:
        w = self.seed()
        token = w["token"] if with_token else None
        for name, call, expected in self.reads(w):
            since = len(self.fake.log)
            kwargs: dict[str, Any] = {"read_preference": read_preference}
            if name != "ping":
                kwargs["token"] = token
            self.successResultOf(call(**kwargs))
            sent = self.sent(since)
            self.assertEqual(
                [(cmd, _shape(doc)) for (_, doc), (cmd, _) in zip(sent, expected, strict=False)], expected, name
            )
            self.assertEqual(len(sent), len(expected), name)
            for (_, doc), (_, shape) in zip(sent, expected, strict=True):
                # Key order is the sort order: compared as lists.
                self.assertEqual(_sorted(doc), list(shape.get("sort", {}).items()), name)
            self.check_routing(name, read_preference, token if name != "ping" else None, sent)

    def check_routing(
        self, name: str, read_preference: ReadPreference, token: str | None, sent: list[tuple[str, dict[str, Any]]]
    ) -> None:
        for who, doc in sent:
            self.assertIn("lsid", doc, name)
            self.assertNotIn("txnNumber", doc, name)
            self.assertNotIn("writeConcern", doc, name)
            if read_preference is NEAREST:
                self.assertEqual(who, "member", name)
                self.assertEqual(doc["$readPreference"], {"mode": "nearest"}, name)
            else:
                self.assertEqual(who, "primary", name)
                self.assertEqual(doc["$readPreference"], {"mode": "primary"}, name)
            if token is not None and read_preference is NEAREST:
                self.assertEqual(doc["readConcern"], {"level": "local", "afterClusterTime": parse_token(token)}, name)
                self.assertEqual(doc["maxTimeMS"], 500, name)
                # The member is told the cluster time the primary gossiped.
                self.assertGreaterEqual(doc["$clusterTime"]["clusterTime"], parse_token(token), name)
            else:
                self.assertNotIn("readConcern", doc, name)
                self.assertEqual(doc["maxTimeMS"], 30_000, name)

    def test_nearest_with_token(self) -> None:
        """A NEAREST read holding a token goes to the local member with
        ``$readPreference: nearest`` (OP_MSG's slave-ok), ``readConcern``
        ``afterClusterTime`` = the token, ``maxTimeMS`` = the token wait
        and the primary's ``$clusterTime``."""
        self.check_reads(NEAREST, True)

    def test_nearest_without_token(self) -> None:
        """A NEAREST read without a token goes to the local member with no
        read concern and the operation time limit."""
        self.check_reads(NEAREST, False)

    def test_primary(self) -> None:
        """A PRIMARY read goes to the primary, ``$readPreference: primary``,
        with no read concern even when it holds a token."""
        self.check_reads(PRIMARY, True)

    def test_history_of_a_new_author(self) -> None:
        """``author_history`` with ``new_author_ms`` for an author the judged
        write creates: an anonymous author of that time with no comments,
        the thread's recent comments read as usual, the same commands to the
        member as for a known author; without it, ``NotFound``."""
        w = self.seed()
        t = w["tenant"].id
        fresh = self.store.new_anonymous_session(t, created_ms=self.tick())
        self.failureResultOf(
            self.store.author_history(
                t, fresh.author_id, thread_id=w["thread"].id, since_ms=0, limit=5, read_preference=NEAREST
            ),
            NotFound,
        )
        since = len(self.fake.log)
        history = self.successResultOf(
            self.store.author_history(
                t,
                fresh.author_id,
                thread_id=w["thread"].id,
                since_ms=0,
                limit=5,
                read_preference=NEAREST,
                new_author_ms=123,
            )
        )
        self.assertEqual(
            (history.kind, history.created_ms, history.comments, history.recent), (AuthorKind.ANONYMOUS, 123, 0, ())
        )
        self.assertEqual([r.body_source for r in history.thread_recent], ["Hello", "Hello"])
        sent = self.sent(since)
        self.assertEqual(
            [(who, next(iter(doc))) for who, doc in sent],
            [("member", "find"), ("member", "aggregate"), ("member", "find"), ("member", "find")],
        )


class WriteShapeTests(MongoWireCase):
    """Every write: one transaction on the primary, committed with the
    configured write concern, its token the commit's ``operationTime``."""

    maxDiff = None

    def writes(self, w: dict[str, Any]) -> list[tuple[str, Callable[[], Any], list[tuple[str, str]] | None]]:
        """``(name, call, [(command, collection), ...] or None)`` for every
        write (``None``: only the transaction's shape is checked)."""
        st = self.store
        t = w["tenant"].id
        th = w["thread"].id
        c = w["comment"].id
        user = w["user"].author_id
        anon = w["session"].author_id
        kw: dict[str, Any] = {"read_preference": PRIMARY}
        commit = ("commitTransaction", "admin")
        new = NewComment(
            tenant_id=t,
            thread_id=th,
            author_id=anon,
            display_name="Bo",
            body_source="x",
            body_html="<p>x</p>",
            status=CommentStatus.APPROVED,
            created_ms=self.tick(),
        )
        other = self.successResultOf(st.create_anonymous_session(t, created_ms=self.tick(), **kw)).value.author_id
        return [
            (
                "create_tenant",
                lambda: st.create_tenant("B", "eu", created_ms=self.tick(), **kw),
                [
                    ("insert", "tenants"),
                    commit,
                ],
            ),
            (
                "update_tenant_settings",
                lambda: st.update_tenant_settings(
                    t, {"a.b": {"$c": "é"}}, sso_secret=SsoSecretChange("s" * 32, self.now, 1000), **kw
                ),
                [
                    ("findAndModify", "tenants"),
                    ("delete", "tenant_sso_secrets"),
                    ("update", "tenant_sso_secrets"),
                    ("insert", "tenant_sso_secrets"),
                    commit,
                ],
            ),
            (
                "add_api_key",
                lambda: st.add_api_key(t, "k" * 64, created_ms=self.tick(), **kw),
                [
                    ("find", "tenants"),
                    ("insert", "api_keys"),
                    commit,
                ],
            ),
            (
                "revoke_api_key",
                lambda: st.revoke_api_key(t, w["key"].id, revoked_ms=self.tick(), **kw),
                [
                    ("find", "api_keys"),
                    ("update", "api_keys"),
                    commit,
                ],
            ),
            (
                "create_anonymous_session",
                lambda: st.create_anonymous_session(t, created_ms=self.tick(), **kw),
                [
                    ("find", "tenants"),
                    ("insert", "authors"),
                    ("insert", "anonymous_sessions"),
                    commit,
                ],
            ),
            (
                "upsert_user",
                lambda: st.upsert_user(
                    t, "ext-1", "Ann B", created_ms=self.tick(), profile=UserProfile(email="a@example.com"), **kw
                ),
                [
                    ("find", "tenants"),
                    ("find", "users"),
                    ("update", "users"),
                    commit,
                ],
            ),
            (
                "create_user_session",
                lambda: st.create_user_session(t, user, created_ms=self.tick(), **kw),
                [
                    ("find", "authors"),
                    ("insert", "anonymous_sessions"),
                    commit,
                ],
            ),
            (
                "upsert_thread",
                lambda: st.upsert_thread(t, "https://example.com/b", created_ms=self.tick(), **kw),
                [
                    ("find", "threads"),
                    ("find", "tenants"),
                    ("insert", "threads"),
                    commit,
                ],
            ),
            (
                "create_comment",
                lambda: st.create_comment(new, **kw),
                [
                    ("find", "threads"),
                    ("find", "authors"),
                    ("insert", "comments"),
                    ("update", "threads"),
                    commit,
                ],
            ),
            (
                "add_like",
                lambda: st.add_like(t, c, anon, created_ms=self.tick(), address_hash="f" * 64, max_per_address=3, **kw),
                [
                    ("find", "comments"),
                    ("find", "authors"),
                    ("find", "votes"),
                    ("aggregate", "votes"),
                    ("insert", "votes"),
                    ("findAndModify", "comments"),
                    commit,
                ],
            ),
            (
                "remove_like",
                lambda: st.remove_like(t, c, anon, **kw),
                [
                    ("find", "comments"),
                    ("delete", "votes"),
                    ("findAndModify", "comments"),
                    commit,
                ],
            ),
            (
                "add_flag",
                lambda: st.add_flag(t, c, other, created_ms=self.tick(), hide_at=5, **kw),
                [
                    ("find", "comments"),
                    ("find", "authors"),
                    ("find", "flags"),
                    ("insert", "flags"),
                    ("findAndModify", "comments"),
                    commit,
                ],
            ),
            ("remove_block", lambda: st.remove_block(t, user, anon, **kw), [("delete", "blocks"), commit]),
            (
                "add_block",
                lambda: st.add_block(t, user, anon, created_ms=self.tick(), **kw),
                [
                    ("find", "authors"),
                    ("find", "authors"),
                    ("find", "blocks"),
                    ("insert", "blocks"),
                    commit,
                ],
            ),
            *self.one_writes(w, other),
            (
                "update_comment",
                lambda: st.update_comment(
                    t, c, edited_ms=self.tick(), body=("y", "<p>y</p>"), status=CommentStatus.PENDING, **kw
                ),
                [
                    ("find", "comments"),
                    ("update", "threads"),
                    ("update", "comments"),
                    commit,
                ],
            ),
            (
                "moderate",
                lambda: st.moderate(
                    t, ModerationAction.APPROVE, [c], actor="mod", reason="ok", created_ms=self.tick(), **kw
                ),
                [
                    ("find", "comments"),
                    ("delete", "flags"),
                    ("update", "comments"),
                    ("update", "threads"),
                    ("findAndModify", "counters"),
                    ("insert", "moderation_log"),
                    commit,
                ],
            ),
            (
                "add_ban",
                lambda: st.add_ban(t, BanKind.AUTHOR, other, actor="mod", reason="r", created_ms=self.tick(), **kw),
                [
                    ("find", "authors"),
                    ("insert", "bans"),
                    ("findAndModify", "counters"),
                    ("insert", "moderation_log"),
                    commit,
                ],
            ),
            (
                "lift_ban",
                lambda: st.lift_ban(t, w["ban"].id, actor="mod", reason="r", lifted_ms=self.tick(), **kw),
                [
                    ("find", "bans"),
                    ("update", "bans"),
                    ("findAndModify", "counters"),
                    ("insert", "moderation_log"),
                    commit,
                ],
            ),
            (
                "charge_credits",
                lambda: st.charge_credits(t, {"w": (1, 3)}, created_ms=self.tick(), **kw),
                [
                    ("find", "tenants"),
                    ("insert", "credit_ledger"),
                    commit,
                ],
            ),
            ("claim_author", lambda: st.claim_author(t, anon, user, claimed_ms=self.tick(), **kw), None),
            ("delete_comment", lambda: st.delete_comment(t, w["reply"].id, **kw), None),
            ("delete_thread", lambda: st.delete_thread(t, th, **kw), None),
            ("delete_tenant", lambda: st.delete_tenant(t, **kw), None),
        ]

    def one_writes(
        self, w: dict[str, Any], other: str
    ) -> list[tuple[str, Callable[[], Any], list[tuple[str, str]] | None]]:
        """The writes of one round trip's store operations (``post_comment``,
        ``change_comment``) and the existing writes given ``expect`` and
        ``new_session``: every check a read inside the transaction, every
        write after the last check (a refused write wrote nothing)."""
        st = self.store
        t = w["tenant"].id
        c = w["comment"].id
        user = w["user"].author_id
        anon = w["session"].author_id
        kw: dict[str, Any] = {"read_preference": PRIMARY}
        commit = ("commitTransaction", "admin")
        url = w["thread"].url_id
        liker = st.new_anonymous_session(t, created_ms=self.tick())
        flagger = st.new_anonymous_session(t, created_ms=self.tick())
        blocker = st.new_anonymous_session(t, created_ms=self.tick())

        def post(poster: Any, **fields: Any) -> NewPost:
            return NewPost(
                **{
                    "tenant_id": t,
                    "url_id": url,
                    "poster": poster,
                    "display_name": "Cy",
                    "body_source": "z",
                    "body_html": "<p>z</p>",
                    "status": CommentStatus.APPROVED,
                    "created_ms": self.tick(),
                    **fields,
                }
            )

        return [
            (
                "post_comment as a new session, a reply, with expect",
                lambda: st.post_comment(
                    post(NewSession(), parent_id=c, expect=Expect(session_id=w["session"].id, thread_url=url)), **kw
                ),
                [
                    ("find", "tenants"),
                    ("find", "threads"),
                    ("find", "anonymous_sessions"),
                    ("find", "threads"),
                    ("find", "comments"),
                    ("insert", "authors"),
                    ("insert", "anonymous_sessions"),
                    ("insert", "comments"),
                    ("update", "threads"),
                    commit,
                ],
            ),
            (
                "post_comment as a new user, to a new thread",
                lambda: st.post_comment(
                    post(UserPoster("ext-2", "Cy"), url_id="https://example.com/c", title="C"), **kw
                ),
                [
                    ("find", "tenants"),
                    ("find", "users"),
                    ("find", "threads"),
                    ("insert", "authors"),
                    ("insert", "users"),
                    ("insert", "threads"),
                    ("insert", "comments"),
                    ("update", "threads"),
                    commit,
                ],
            ),
            (
                "post_comment as a known user, renamed, retitling",
                lambda: st.post_comment(post(UserPoster("ext-1", "Ann C"), title="A2", retitle=True), **kw),
                [
                    ("find", "tenants"),
                    ("find", "users"),
                    ("find", "threads"),
                    ("update", "users"),
                    ("update", "threads"),
                    ("insert", "comments"),
                    ("update", "threads"),
                    commit,
                ],
            ),
            (
                "post_comment as a session, pending, open only",
                lambda: st.post_comment(
                    post(SessionPoster(w["session"].id), status=CommentStatus.PENDING, open_only=True), **kw
                ),
                [
                    ("find", "tenants"),
                    ("find", "anonymous_sessions"),
                    ("find", "threads"),
                    ("insert", "comments"),
                    commit,
                ],
            ),
            (
                "change_comment",
                lambda: st.change_comment(t, c, edited_ms=self.tick(), body=("v", "<p>v</p>"), **kw),
                [
                    ("find", "comments"),
                    ("update", "comments"),
                    commit,
                ],
            ),
            (
                "add_like with expect and a new session",
                lambda: st.add_like(
                    t,
                    c,
                    liker.author_id,
                    created_ms=self.tick(),
                    expect=Expect(session_id=w["session"].id, approved_comment=c),
                    new_session=liker,
                    **kw,
                ),
                [
                    ("find", "comments"),
                    ("find", "anonymous_sessions"),
                    ("find", "tenants"),
                    ("find", "comments"),
                    ("find", "votes"),
                    ("insert", "authors"),
                    ("insert", "anonymous_sessions"),
                    ("insert", "votes"),
                    ("findAndModify", "comments"),
                    commit,
                ],
            ),
            (
                "remove_like with expect",
                lambda: st.remove_like(t, c, liker.author_id, expect=Expect(approved_comment=c), **kw),
                [
                    ("find", "comments"),
                    ("find", "comments"),
                    ("delete", "votes"),
                    ("findAndModify", "comments"),
                    commit,
                ],
            ),
            (
                "add_flag with a new session",
                lambda: st.add_flag(t, c, flagger.author_id, created_ms=self.tick(), new_session=flagger, **kw),
                [
                    ("find", "tenants"),
                    ("find", "comments"),
                    ("find", "flags"),
                    ("insert", "authors"),
                    ("insert", "anonymous_sessions"),
                    ("insert", "flags"),
                    ("findAndModify", "comments"),
                    commit,
                ],
            ),
            (
                "add_block with expect and a new session",
                lambda: st.add_block(
                    t,
                    blocker.author_id,
                    other,
                    created_ms=self.tick(),
                    expect=Expect(thread_url=url),
                    new_session=blocker,
                    **kw,
                ),
                [
                    ("find", "threads"),
                    ("find", "tenants"),
                    ("find", "authors"),
                    ("find", "blocks"),
                    ("insert", "authors"),
                    ("insert", "anonymous_sessions"),
                    ("insert", "blocks"),
                    commit,
                ],
            ),
            (
                "remove_block with expect",
                lambda: st.remove_block(t, user, anon, expect=Expect(session_id=w["session"].id), **kw),
                [
                    ("find", "anonymous_sessions"),
                    ("delete", "blocks"),
                    commit,
                ],
            ),
        ]

    def test_expectations_are_reads_in_the_transaction(self) -> None:
        """``expect`` is checked by finds inside the write's transaction (on
        the primary, the transaction's first commands): the comment still
        approved, the thread's access rules (only they are fetched), the
        session still there."""
        w = self.seed()
        t = w["tenant"].id
        c = w["comment"].id
        expect = Expect(
            session_id=w["session"].id,
            approved_comment=c,
            thread_url=w["thread"].url_id,
            locked_groups=None,
            require_sign_in=None,
        )
        voter = self.successResultOf(
            self.store.create_anonymous_session(t, created_ms=self.tick(), read_preference=PRIMARY)
        ).value
        since = len(self.fake.log)
        self.successResultOf(
            self.store.add_like(t, c, voter.author_id, created_ms=self.tick(), read_preference=PRIMARY, expect=expect)
        )
        sent = self.sent(since)
        self.assertEqual({who for who, _ in sent}, {"primary"})
        self.assertIs(sent[0][1].get("startTransaction"), True)
        self.assertEqual(
            [_shape(doc) for _, doc in sent[:3]],
            [
                {
                    "find": "comments",
                    "filter": {"_id": c, "tenant_id": t, "status": CommentStatus.APPROVED.value},
                    "projection": {"_id": 1},
                    "limit": 1,
                },
                {
                    "find": "threads",
                    "filter": {"tenant_id": t, "url_id": w["thread"].url_id},
                    "projection": {"locked_groups": 1, "require_sign_in": 1},
                    "limit": 1,
                },
                {
                    "find": "anonymous_sessions",
                    "filter": {"_id": w["session"].id, "tenant_id": t},
                    "projection": {"_id": 1},
                    "limit": 1,
                },
            ],
        )

    def test_refused_writes_write_nothing(self) -> None:
        """A write whose check fails (a failed ``expect``, a missing parent,
        a thread in another place) sends only its reads, then aborts: no
        insert, update, delete or findAndModify, and no commit, so nothing
        depends on the server rolling back (nor does the session a refused
        write was to create exist)."""
        w = self.seed()
        st = self.store
        t = w["tenant"].id
        c = w["comment"].id
        kw: dict[str, Any] = {"read_preference": PRIMARY}
        self.successResultOf(
            st.upsert_thread(t, "https://example.com/locked", created_ms=self.tick(), locked_groups=["staff"], **kw)
        )
        elsewhere = self.successResultOf(
            st.upsert_thread(t, "https://example.com/elsewhere", created_ms=self.tick(), **kw)
        ).value
        fresh = st.new_anonymous_session(t, created_ms=self.tick())

        def post(**fields: Any) -> NewPost:
            return NewPost(
                **{
                    "tenant_id": t,
                    "url_id": elsewhere.url_id,
                    "poster": NewSession(fresh),
                    "display_name": "Cy",
                    "body_source": "z",
                    "body_html": "<p>z</p>",
                    "status": CommentStatus.APPROVED,
                    "created_ms": self.tick(),
                    **fields,
                }
            )

        refused: list[tuple[Callable[[], Any], type[Exception]]] = [
            (lambda: st.post_comment(post(expect=Expect(thread_url="https://example.com/locked")), **kw), Stale),
            (lambda: st.post_comment(post(parent_id="UNKNOWNPARENT000"), **kw), NotFound),
            (lambda: st.post_comment(post(parent_id=c), **kw), InvalidReference),
            (lambda: st.post_comment(post(poster=SessionPoster("UNKNOWNSESSION00")), **kw), NotFound),
            (
                lambda: st.add_like(
                    t,
                    c,
                    fresh.author_id,
                    created_ms=self.tick(),
                    expect=Expect(session_id="UNKNOWNSESSION00"),
                    new_session=fresh,
                    **kw,
                ),
                NotFound,
            ),
            (
                lambda: st.add_flag(
                    t, "UNKNOWNCOMMENT00", fresh.author_id, created_ms=self.tick(), new_session=fresh, **kw
                ),
                NotFound,
            ),
            (
                lambda: st.remove_block(t, w["user"].author_id, "x", expect=Expect(approved_comment="gone"), **kw),
                NotFound,
            ),
        ]
        writes = {"insert", "update", "delete", "findAndModify", "commitTransaction"}
        for i, (call, error) in enumerate(refused):
            since = len(self.fake.log)
            self.failureResultOf(call(), error)
            # The abort is sent without waiting for it: turn the reactor to see it.
            self.successResultOf(st.ping(read_preference=PRIMARY))
            sent = [next(iter(doc)) for _, doc in self.sent(since)]
            self.assertEqual([cmd for cmd in sent if cmd in writes], [], i)
            self.assertIn("abortTransaction", sent, i)
        self.failureResultOf(st.get_anonymous_session(t, fresh.id, **kw), NotFound)

    def test_every_write(self) -> None:
        """Each write sends its commands to the primary in one transaction
        (one session id and ``txnNumber``, ``startTransaction`` on the
        first, ``autocommit: false`` on all, no read preference or read
        concern), then ``commitTransaction`` with ``w: majority`` and the
        write-concern timeout; the token is the commit's cluster time."""
        w = self.seed()
        for name, call, expected in self.writes(w):
            since = len(self.fake.log)
            written = self.successResultOf(call())
            sent = self.sent(since)
            self.assertEqual({who for who, _ in sent}, {"primary"}, name)
            names = [(next(iter(doc)), doc[next(iter(doc))]) for _, doc in sent]
            names = [(cmd, "admin" if cmd == "commitTransaction" else coll) for cmd, coll in names]
            if expected is not None:
                self.assertEqual(names, expected, name)
            self.assertEqual(names[-1], ("commitTransaction", "admin"), name)
            self.assertEqual({doc["lsid"]["id"] for _, doc in sent}.__len__(), 1, name)
            self.assertEqual({doc["txnNumber"] for _, doc in sent}.__len__(), 1, name)
            self.assertIs(sent[0][1].get("startTransaction"), True, name)
            for _, doc in sent[1:]:
                self.assertNotIn("startTransaction", doc, name)
            for _, doc in sent:
                self.assertIs(doc["autocommit"], False, name)
                self.assertNotIn("$readPreference", doc, name)
                self.assertNotIn("readConcern", doc, name)
            for _, doc in sent[:-1]:
                self.assertNotIn("writeConcern", doc, name)
            self.assertEqual(sent[-1][1]["writeConcern"], {"w": "majority", "wtimeout": 5000}, name)
            # The fake's commit answered with the newest cluster time.
            self.assertEqual(written.token, format_token(Timestamp(EPOCH, self.fake._inc)), name)

    def test_counters_are_atomic_increments(self) -> None:
        """Likes and flags change their counters with ``$inc`` on the
        comment, read back in the same command (``findAndModify``, new)."""
        w = self.seed()
        st = self.store
        since = len(self.fake.log)
        other = self.successResultOf(
            st.create_anonymous_session(w["tenant"].id, created_ms=self.tick(), read_preference=PRIMARY)
        ).value.author_id
        count = self.successResultOf(
            st.add_like(w["tenant"].id, w["comment"].id, other, created_ms=self.tick(), read_preference=PRIMARY)
        )
        self.assertEqual(count.value, 2)
        self.successResultOf(
            st.add_flag(w["tenant"].id, w["comment"].id, other, created_ms=self.tick(), read_preference=PRIMARY)
        )
        changes = [_shape(doc) for _, doc in self.sent(since) if "findAndModify" in doc]
        self.assertEqual(
            changes,
            [
                {
                    "findAndModify": "comments",
                    "query": {"_id": w["comment"].id, "tenant_id": w["tenant"].id},
                    "update": {"$inc": {"like_count": 1}},
                    "new": True,
                    "upsert": False,
                },
                {
                    "findAndModify": "comments",
                    "query": {"_id": w["comment"].id, "tenant_id": w["tenant"].id},
                    "update": {"$inc": {"flag_count": 1}},
                    "new": True,
                    "upsert": False,
                },
            ],
        )

    def test_write_concern_is_configured(self) -> None:
        """``write_concern`` and its timeout reach every commit."""
        store = self.make_store(write_concern="2", write_concern_timeout_seconds=1.5)
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        since = len(self.fake.log)
        self.successResultOf(store.create_tenant("C", "eu", created_ms=1, read_preference=PRIMARY))
        commits = [doc for _, doc in self.sent(since) if "commitTransaction" in doc]
        self.assertEqual([doc["writeConcern"] for doc in commits], [{"w": 2, "wtimeout": 1500}])

    def test_writes_refuse_nearest(self) -> None:
        """A write asked to read NEAREST fails at once and sends nothing."""
        since = len(self.fake.log)
        self.failureResultOf(
            self.store.create_tenant("A", "g", created_ms=1, read_preference=NEAREST), WrongReadPreference
        )
        self.assertEqual(self.sent(since), [])


class MigrationTests(MongoWireCase):
    """Migrations: versioned index steps, recorded, under a lock."""

    def test_first_open_creates_indexes(self) -> None:
        """A fresh database gets every collection, every index of every
        step (unique where the SQL schema is), the applied versions
        recorded, and the lock released."""
        store = self.make_store()
        since = len(self.fake.log)
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        sent = [doc for _, doc in self.sent(since)]
        self.assertEqual(sent[0]["insert"], "locks")
        self.assertEqual(sent[0]["documents"][0]["_id"], "migrations")
        created = {doc["create"] for doc in sent if "create" in doc}
        self.assertEqual(created, set(schema.ALL_COLLECTIONS))
        indexes = [(doc["createIndexes"], spec) for doc in sent if "createIndexes" in doc for spec in doc["indexes"]]
        expected = [(i.collection, i.spec()) for _, step in schema.MIGRATION_STEPS for i in step]

        def flat(items: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
            return sorted((c, tuple(sp["key"].items()), sp.get("unique", False), sp["name"]) for c, sp in items)

        self.assertEqual(flat(indexes), flat(expected))
        unique = {(coll, tuple(spec["key"])) for coll, spec in indexes if spec.get("unique")}
        self.assertIn(("votes", ("comment_id", "voter_id")), unique)
        self.assertIn(("flags", ("comment_id", "flagger_id")), unique)
        self.assertIn(("blocks", ("tenant_id", "viewer_id", "author_id")), unique)
        self.assertIn(("threads", ("tenant_id", "url_id")), unique)
        recorded = [doc["documents"][0]["_id"] for doc in sent if doc.get("insert") == "migrations"]
        self.assertEqual(recorded, [v for v, _ in schema.MIGRATION_STEPS])
        self.assertEqual(sent[-1]["delete"], "locks")
        for doc in sent:
            if "writeConcern" in doc:
                self.assertEqual(doc["writeConcern"], {"w": "majority", "wtimeout": 5000})

    def test_second_open_applies_nothing(self) -> None:
        """A store already migrated creates no index again."""
        store = self.make_store(database=self.store.database)
        since = len(self.fake.log)
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        self.assertEqual([doc for _, doc in self.sent(since) if "createIndexes" in doc], [])

    def test_has_schema(self) -> None:
        """``has_schema`` (what ``fastedge-admin`` asks before touching a
        store) is false on an empty database and true once opened, and
        creates nothing."""
        fresh = self.make_store()
        self.assertIs(self.successResultOf(fresh.has_schema()), False)
        self.assertNotIn(fresh.database, self.fake._client.list_database_names())
        self.successResultOf(fresh.close())
        self.assertIs(self.successResultOf(self.store.has_schema()), True)

    def test_admin_opens_the_primary(self) -> None:
        """``fastedge-admin`` on a MongoDB node talks to the replica set's
        primary (no local member) and describes it without credentials."""
        cfg = load_config(
            None,
            {
                "store.backend": "mongodb",
                "store.mongodb.uri": self.fake.uri.replace("mongodb://", "mongodb://fe:hunter2@"),
                "store.mongodb.nearest_uri": self.fake.nearest_uri,
            },
        )
        store, pool, where = _open_store(reactor, cfg)
        self.addCleanup(pool.stop)
        self.assertIsInstance(store, MongoStore)
        self.assertEqual(store.nearest_name, None)
        self.assertEqual(where, "mongodb replica set {} database fastedge".format(self.fake.uri.replace("/?", "/?", 1)))
        self.assertNotIn("hunter2", where)

    def test_lock_held_by_another_node(self) -> None:
        """While another node holds an unexpired lock, open waits, then
        fails after ``failover_seconds``; an expired lock is taken over."""
        db = self.store.database
        held = self.make_store(database=db, failover_seconds=1.0)
        self.fake._client[db]["locks"].insert_one({"_id": "migrations", "owner": "x", "expires_ms": 10**15})
        failure = self.failureResultOf(held.open(), StoreUnavailable)
        self.assertIn("another node is migrating", failure.getErrorMessage())
        self.successResultOf(held.close())
        self.fake._client[db]["locks"].update_one({"_id": "migrations"}, {"$set": {"expires_ms": 0}})
        taker = self.make_store(database=db)
        self.successResultOf(taker.open())
        self.successResultOf(taker.close())
        self.assertIsNone(self.fake._client[db]["locks"].find_one({"_id": "migrations"}))


def _once(match: Callable[[str, str, dict[str, Any]], bool], act: Callable[[Any], None]) -> Any:
    """A fake script that acts on the first command ``match`` accepts."""
    done: list[bool] = []

    def script(who: str, name: str, doc: dict[str, Any], request: Any) -> bool:
        if done or not match(who, name, doc):
            return False
        done.append(True)
        act(request)
        return True

    return script


_NOT_PRIMARY = {"ok": 0, "code": 10107, "codeName": "NotWritablePrimary", "errmsg": "not primary"}
_MAX_TIME = {"ok": 0, "code": 50, "codeName": "MaxTimeMSExpired", "errmsg": "operation exceeded time limit"}


class TokenWaitTests(MongoWireCase):
    """Read-your-writes at the local member: the member waits (bounded by
    ``maxTimeMS``), else the primary serves the read, counted like the
    PostgreSQL backend counts it."""

    def behind(self) -> None:
        """From now on the member answers every token read as a member that
        had not reached the token within ``maxTimeMS``."""

        def script(who: str, name: str, doc: dict[str, Any], request: Any) -> bool:
            if who == "member" and "readConcern" in doc:
                request.replies(_MAX_TIME)
                return True
            return False

        self.fake.intercepts.append(script)

    def token_read(self, tenant_id: str, token: str) -> list[tuple[str, dict[str, Any]]]:
        since = len(self.fake.log)
        self.successResultOf(self.store.get_tenant(tenant_id, read_preference=NEAREST, token=token))
        return self.sent(since)

    def test_member_has_it(self) -> None:
        """A member that reached the token serves the read: ``ready``, no fallback."""
        written = self.successResultOf(self.store.create_tenant("A", "g", created_ms=1, read_preference=PRIMARY))
        sent = self.token_read(written.value.id, written.token)
        self.assertEqual([who for who, _ in sent], ["member"])
        self.assertEqual(self.count("token_reads", outcome="ready"), 1)
        self.assertEqual(self.count("nearest_fallbacks", reason="token_timeout"), 0)

    def test_member_told_the_cluster_time(self) -> None:
        """The first token read a member sees carries the primary's signed
        ``$clusterTime`` (the NEAREST pool has heard nothing yet), so the
        member does not refuse an ``afterClusterTime`` ahead of its clock."""
        written = self.successResultOf(self.store.create_tenant("A", "g", created_ms=1, read_preference=PRIMARY))
        [(who, doc)] = self.token_read(written.value.id, written.token)
        self.assertEqual(who, "member")
        self.assertGreaterEqual(doc["$clusterTime"]["clusterTime"], parse_token(written.token))
        self.assertIn("signature", doc["$clusterTime"])

    def test_member_behind_then_primary(self) -> None:
        """``MaxTimeMSExpired`` from the member sends the read to the
        primary (``token_timeout``); for the next ``token_wait_seconds`` reads
        needing that time ask the member once with ``maxTimeMS: 1``
        (``replica_behind``); after that they wait the full bound again."""
        written = self.successResultOf(self.store.create_tenant("A", "g", created_ms=1, read_preference=PRIMARY))
        self.behind()
        sent = self.token_read(written.value.id, written.token)
        self.assertEqual([(who, doc["maxTimeMS"]) for who, doc in sent], [("member", 500), ("primary", 30_000)])
        self.assertEqual(sent[1][1]["$readPreference"], {"mode": "primary"})
        self.assertEqual(self.count("token_reads", outcome="fallback"), 1)
        self.assertEqual(self.count("nearest_fallbacks", reason="token_timeout"), 1)
        sent = self.token_read(written.value.id, written.token)
        self.assertEqual([(who, doc["maxTimeMS"]) for who, doc in sent], [("member", 1), ("primary", 30_000)])
        self.assertEqual(self.count("nearest_fallbacks", reason="replica_behind"), 1)
        self.clock.advance(0.5)
        sent = self.token_read(written.value.id, written.token)
        self.assertEqual([(who, doc["maxTimeMS"]) for who, doc in sent], [("member", 500), ("primary", 30_000)])
        self.assertEqual(self.count("nearest_fallbacks", reason="token_timeout"), 2)
        self.assertEqual(self.count("token_reads", outcome="fallback"), 3)

    def test_no_wait(self) -> None:
        """``token_wait_seconds = 0`` asks the member with ``maxTimeMS: 1``
        (0 would mean no limit at all)."""
        store = self.make_store(token_wait_seconds=0)
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        written = self.successResultOf(store.create_tenant("A", "g", created_ms=1, read_preference=PRIMARY))
        since = len(self.fake.log)
        self.successResultOf(store.get_tenant(written.value.id, read_preference=NEAREST, token=written.token))
        self.assertEqual([doc["maxTimeMS"] for _, doc in self.sent(since)], [1])

    def test_member_fails(self) -> None:
        """A member that drops the connection sends the read to the primary
        (``replica_error``), logged with the member's address only."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        written = self.successResultOf(self.store.create_tenant("A", "g", created_ms=1, read_preference=PRIMARY))
        self.fake.intercepts.append(_once(lambda who, name, doc: who == "member", lambda r: r.hangup()))
        sent = self.token_read(written.value.id, written.token)
        self.assertEqual([who for who, _ in sent], ["member", "primary"])
        self.assertEqual(self.count("nearest_fallbacks", reason="replica_error"), 1)
        [event] = [e for e in events if e.get("operation") == "get_tenant" and "member" in e]
        self.assertEqual(event["member"], "mongodb://{}/".format(self.fake.address(self.fake.member)))

    def test_member_refuses(self) -> None:
        """A member that answers with an error other than "not yet" (here
        "not primary and secondaryOk=false") is a failed member too."""
        self.fake.intercepts.append(
            _once(lambda who, name, doc: who == "member", lambda r: r.replies({"ok": 0, "code": 13435, "errmsg": "x"}))
        )
        written = self.successResultOf(self.store.create_tenant("A", "g", created_ms=1, read_preference=PRIMARY))
        sent = self.token_read(written.value.id, written.token)
        self.assertEqual([who for who, _ in sent], ["member", "primary"])
        self.assertEqual(self.count("nearest_fallbacks", reason="replica_error"), 1)


class TokenTests(MongoWireCase):
    """Tokens are cluster times; each backend refuses the other's."""

    def test_order(self) -> None:
        """Later cluster times cover earlier ones; ``None`` covers only ``None``."""
        a = format_token(Timestamp(EPOCH, 1))
        b = format_token(Timestamp(EPOCH, 2))
        c = format_token(Timestamp(EPOCH + 1, 0))
        self.assertTrue(self.store.token_covers(b, a))
        self.assertTrue(self.store.token_covers(c, b))
        self.assertFalse(self.store.token_covers(a, b))
        self.assertFalse(self.store.token_covers(None, a))
        self.assertTrue(self.store.token_covers(None, None))
        self.assertEqual(parse_token(c), Timestamp(EPOCH + 1, 0))

    def test_postgresql_token_refused(self) -> None:
        """A PostgreSQL token (a WAL position) is ``BadToken`` here, without
        a command sent, and a MongoDB token is ``BadToken`` to the PostgreSQL
        backend: a node that changed backend ignores old cookies."""
        pg = "16/B374D848"
        self.assertRaises(BadToken, self.store.token_covers, None, pg)
        since = len(self.fake.log)
        self.failureResultOf(self.store.get_tenant("x", read_preference=NEAREST, token=pg), BadToken)
        self.assertEqual(self.sent(since), [])
        written = self.successResultOf(self.store.create_tenant("A", "g", created_ms=1, read_preference=PRIMARY))
        self.assertRaises(BadToken, parse_lsn, written.token)
        for bad in ("", "ct", "ct1.", "ct1.2.3", "ct99999999999.1", "ct1.99999999999", "CT1.2", " ct1.2"):
            self.assertRaises(BadToken, parse_token, bad)


class FailoverTests(MongoWireCase):
    """Elections and dropped connections, mid-read and mid-write."""

    store_kwargs = {"failover_seconds": 10.0}

    def without_aborts(self, sent: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        """``sent`` less the ``abortTransaction`` the store sends (without
        waiting for it) for a transaction it gave up: each must name that
        first transaction, never the one that was retried."""
        first = (sent[0][1]["lsid"]["id"], sent[0][1]["txnNumber"])
        for _, doc in sent:
            if "abortTransaction" in doc:
                self.assertEqual((doc["lsid"]["id"], doc["txnNumber"]), first)
        return [(who, doc) for who, doc in sent if "abortTransaction" not in doc]

    def tenants_named(self, name: str) -> int:
        return self.fake._client[self.store.database]["tenants"].count_documents({"name": name})

    def test_election_mid_write(self) -> None:
        """The primary steps down as a write arrives ("not primary"); the
        write is retried as a new transaction on the new primary and applied
        once."""

        def step_down(request: Any) -> None:
            self.fake.elect(self.fake.member)
            request.replies(_NOT_PRIMARY)

        self.fake.intercepts.append(_once(lambda who, name, doc: name == "insert", step_down))
        since = len(self.fake.log)
        written = self.successResultOf(self.store.create_tenant("E", "g", created_ms=1, read_preference=PRIMARY))
        sent = self.without_aborts(self.sent(since))
        self.assertEqual(
            [(who, next(iter(doc))) for who, doc in sent],
            [("primary", "insert"), ("member", "insert"), ("member", "commitTransaction")],
        )
        self.assertNotEqual(
            (sent[0][1]["lsid"]["id"], sent[0][1]["txnNumber"]), (sent[1][1]["lsid"]["id"], sent[1][1]["txnNumber"])
        )
        self.assertIsNotNone(written.token)
        self.assertEqual(self.tenants_named("E"), 1)
        self.assertEqual(self.count("write_failures", kind="commit_unknown"), 0)

    def test_election_mid_read(self) -> None:
        """A PRIMARY read refused as "not primary" is read again from the new primary."""
        tenant = self.successResultOf(self.store.create_tenant("R", "g", created_ms=1, read_preference=PRIMARY)).value

        def step_down(request: Any) -> None:
            self.fake.elect(self.fake.member)
            request.replies(_NOT_PRIMARY)

        self.fake.intercepts.append(_once(lambda who, name, doc: name == "find", step_down))
        since = len(self.fake.log)
        self.assertEqual(self.successResultOf(self.store.get_tenant(tenant.id, read_preference=PRIMARY)), tenant)
        self.assertEqual([who for who, _ in self.sent(since)], ["primary", "member"])

    def test_dropped_before_commit(self) -> None:
        """A connection dropped mid-transaction (the commit never sent) is
        retried as a new transaction: the write is applied once."""
        self.fake.intercepts.append(_once(lambda who, name, doc: name == "insert", lambda r: r.hangup()))
        since = len(self.fake.log)
        self.successResultOf(self.store.create_tenant("D", "g", created_ms=1, read_preference=PRIMARY))
        names = [next(iter(doc)) for _, doc in self.without_aborts(self.sent(since))]
        self.assertEqual(names, ["insert", "insert", "commitTransaction"])
        self.assertEqual(self.tenants_named("D"), 1)

    def test_transient_transaction_error(self) -> None:
        """A transaction the server aborts as transient (a write conflict)
        is run again."""
        conflict = {"ok": 0, "code": 112, "codeName": "WriteConflict", "errmsg": "write conflict"}
        conflict["errorLabels"] = ["TransientTransactionError"]
        self.fake.intercepts.append(_once(lambda who, name, doc: name == "insert", lambda r: r.replies(conflict)))
        self.successResultOf(self.store.create_tenant("T", "g", created_ms=1, read_preference=PRIMARY))
        self.assertEqual(self.tenants_named("T"), 1)

    def test_no_command_text_in_logs(self) -> None:
        """txmongo quotes whole commands in its error messages; what the
        store logs about a failed attempt names the error's type and code
        only, so an SSO secret being written never reaches the logs."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        tenant = self.successResultOf(self.store.create_tenant("S", "g", created_ms=1, read_preference=PRIMARY)).value
        conflict = {"ok": 0, "code": 112, "codeName": "WriteConflict", "errmsg": "write conflict"}
        conflict["errorLabels"] = ["TransientTransactionError"]
        self.fake.intercepts.append(
            _once(lambda who, name, doc: doc.get("insert") == "tenant_sso_secrets", lambda r: r.replies(conflict))
        )
        secret = "sso-secret-that-must-not-be-logged"
        self.successResultOf(
            self.store.update_tenant_settings(
                tenant.id, {}, sso_secret=SsoSecretChange(secret, 5, 0), read_preference=PRIMARY
            )
        )
        [retry] = [e for e in events if e.get("operation") == "update_tenant_settings"]
        self.assertIn("WriteConflict", formatEvent(retry))
        self.assertEqual([e for e in events if secret in formatEvent(e)], [])

    def test_dropped_during_commit_then_resent(self) -> None:
        """A connection dropped during the commit: the same commit (same
        session and ``txnNumber``) is sent again, and its answer counts."""
        self.fake.intercepts.append(_once(lambda who, name, doc: name == "commitTransaction", lambda r: r.hangup()))
        since = len(self.fake.log)
        written = self.successResultOf(self.store.create_tenant("C", "g", created_ms=1, read_preference=PRIMARY))
        commits = [doc for _, doc in self.sent(since) if "commitTransaction" in doc]
        self.assertEqual(len(commits), 2)
        self.assertEqual(commits[0]["lsid"], commits[1]["lsid"])
        self.assertEqual(commits[0]["txnNumber"], commits[1]["txnNumber"])
        self.assertIsNotNone(written.token)

    def test_commit_unknown(self) -> None:
        """A commit whose outcome stays unknown (the connection drops on
        both tries) fails as ``CommitUnknown`` (HTTP 503 commit_unknown),
        never as a success, counted and logged."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

        def hang_up(who: str, name: str, doc: dict[str, Any], request: Any) -> bool:
            if name == "commitTransaction":
                request.hangup()
                return True
            return False

        self.fake.intercepts.append(hang_up)
        failure = self.failureResultOf(
            self.store.create_tenant("U", "g", created_ms=1, read_preference=PRIMARY), CommitUnknown
        )
        self.assertEqual(from_store_error(failure.value).status, 503)
        self.assertEqual(from_store_error(failure.value).code, "commit_unknown")
        self.assertEqual(self.count("write_failures", kind="commit_unknown"), 1)
        self.assertTrue([e for e in events if e.get("operation") == "create_tenant" and e["log_level"].name == "error"])

    def test_commit_never_answered(self) -> None:
        """A commit sent and never answered is cut off at the attempt's time
        limit (on the store's clock) and reported as ``CommitUnknown``,
        never retried as if it had not been applied."""
        store = self.make_store(failover_seconds=1.0, write_concern_timeout_seconds=0.25, nearest_timeout_seconds=0.25)
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        self.fake.intercepts.append(lambda who, name, doc, request: name == "commitTransaction")
        since = len(self.fake.log)
        self.failureResultOf(store.create_tenant("Q", "g", created_ms=1, read_preference=PRIMARY), CommitUnknown)
        self.assertEqual([next(iter(doc)) for _, doc in self.sent(since)], ["insert", "commitTransaction"])
        self.assertEqual(self.count("write_failures", kind="commit_unknown"), 1)

    def test_no_primary_not_applied(self) -> None:
        """With no primary for ``failover_seconds`` a write fails as
        ``StoreUnavailable`` saying it was not applied, and no commit was sent."""
        store = self.make_store(failover_seconds=1.0, write_concern_timeout_seconds=0.25, nearest_timeout_seconds=0.25)
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        self.fake.elect(None)
        since = len(self.fake.log)
        failure = self.failureResultOf(
            store.create_tenant("N", "g", created_ms=1, read_preference=PRIMARY), StoreUnavailable
        )
        self.assertNotIsInstance(failure.value, CommitUnknown)
        self.assertIn("the write was not applied", failure.getErrorMessage())
        self.assertEqual(self.count("write_failures", kind="not_applied"), 1)
        self.assertEqual([doc for _, doc in self.sent(since) if "commitTransaction" in doc], [])


#: Text with every kind of character the API lets through: multi-byte,
#: astral (surrogate pairs in UTF-16), combining marks, RTL, NUL-free controls.
_UNICODE = "Zoë ☃ 𝄞 😀 e\u0301 שלום \t\n\\\"'<>&$."


def _long(text: str, size: int) -> str:
    """``text`` repeated to exactly ``size`` characters."""
    return (text * (size // len(text) + 1))[:size]


class DocumentShapeTests(MongoWireCase):
    """What the backend writes reads back identically, entity by entity:
    every field type, unicode, and the largest values the API accepts
    (``[api]`` limits), through BSON both ways (txmongo, the wire, MockupDB),
    from the member and from the primary alike."""

    #: A time far past 2**31 ms (64-bit on the wire), at the edge of the
    #: integers a double holds exactly.
    BIG = 2**53

    def setUp(self) -> None:
        super().setUp()
        self.limits = ApiConfig()
        self.tenant = self.successResultOf(
            self.store.create_tenant(_UNICODE, _long(_UNICODE, 64), created_ms=self.BIG, read_preference=PRIMARY)
        ).value

    def inserted(self, since: int, collection: str) -> list[dict[str, Any]]:
        """The documents the store inserted into ``collection`` since ``since``."""
        return [d for _, doc in self.sent(since) if doc.get("insert") == collection for d in doc["documents"]]

    def both(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The read's result, the same from the member and the primary."""
        results = [self.successResultOf(call(*args, read_preference=rp, **kwargs)) for rp in (NEAREST, PRIMARY)]
        self.assertEqual(results[0], results[1])
        return results[0]

    def write(self, d: Any) -> Any:
        return self.successResultOf(d).value

    def session(self) -> Any:
        return self.write(
            self.store.create_anonymous_session(self.tenant.id, created_ms=self.BIG, read_preference=PRIMARY)
        )

    def comment(self, author_id: str) -> Any:
        thread = self.write(self.store.upsert_thread(self.tenant.id, "u", created_ms=self.BIG, read_preference=PRIMARY))
        body = _long(_UNICODE, self.limits.comment_max_chars)
        new = NewComment(
            tenant_id=self.tenant.id,
            thread_id=thread.id,
            author_id=author_id,
            display_name=_long(_UNICODE, self.limits.display_name_max_chars),
            body_source=body,
            body_html="<p>" + body + "</p>",
            status=CommentStatus.APPROVED,
            created_ms=self.BIG,
        )
        return self.write(self.store.create_comment(new, read_preference=PRIMARY))

    def test_tenant(self) -> None:
        """A tenant and its settings: any JSON, keys with ``.`` and ``$``,
        64-bit integers, floats, nulls, unicode."""
        [doc] = [d for _, c in self.fake.log if c.get("insert") == "tenants" for d in c["documents"]]
        self.assertEqual(set(doc), {"_id", "name", "deployment", "created_ms", "settings"})
        self.assertEqual(type(doc["created_ms"]), Int64)
        self.assertEqual(self.both(self.store.get_tenant, self.tenant.id), self.tenant)
        settings = {
            "a.b": {"$c": [1, 2.5, None, True, False, _UNICODE]},
            "$set": "not an operator",
            _UNICODE: {"nested": {"deep": [{"x": -(2**63)}, {"y": 2**63 - 1}]}},
            "empty": {},
        }
        tenant = self.write(self.store.update_tenant_settings(self.tenant.id, settings, read_preference=PRIMARY))
        self.assertEqual(tenant.settings, settings)
        self.assertEqual(self.both(self.store.get_tenant, self.tenant.id), tenant)
        self.assertEqual(self.both(self.store.list_tenants), [tenant])

    def test_sso_secret(self) -> None:
        """An SSO secret of any text, current and overlapping."""
        for secret, at in ((_long(_UNICODE, 512), self.BIG), ("second", self.BIG + 1)):
            change = SsoSecretChange(secret, at, 10)
            self.write(
                self.store.update_tenant_settings(self.tenant.id, {}, sso_secret=change, read_preference=PRIMARY)
            )
        secrets = self.both(self.store.get_sso_secrets, self.tenant.id, now_ms=self.BIG + 2)
        self.assertEqual(
            [(x.secret, x.created_ms, x.accepted_until_ms) for x in secrets],
            [("second", self.BIG + 1, None), (_long(_UNICODE, 512), self.BIG, self.BIG + 11)],
        )

    def test_api_key(self) -> None:
        """An API key's hash, its times, revoked or not."""
        since = len(self.fake.log)
        key = self.write(self.store.add_api_key(self.tenant.id, "f" * 64, created_ms=self.BIG, read_preference=PRIMARY))
        [doc] = self.inserted(since, "api_keys")
        self.assertIsNone(doc["revoked_ms"])
        self.assertEqual(self.both(self.store.list_api_keys, self.tenant.id), [key])
        self.assertEqual(self.both(self.store.tenant_for_api_key, "f" * 64), self.tenant)
        revoked = self.write(
            self.store.revoke_api_key(self.tenant.id, key.id, revoked_ms=self.BIG + 1, read_preference=PRIMARY)
        )
        self.assertEqual(self.both(self.store.list_api_keys, self.tenant.id), [revoked])

    def test_session_and_author(self) -> None:
        """An anonymous session and its author."""
        session = self.session()
        self.assertEqual(self.both(self.store.get_anonymous_session, self.tenant.id, session.id), session)
        author = self.both(self.store.get_author, self.tenant.id, session.author_id)
        self.assertEqual((author.id, author.created_ms), (session.author_id, self.BIG))

    def test_user(self) -> None:
        """A user with a profile at its largest (e-mail, avatar URL, groups, roles)."""
        profile = UserProfile(
            email=_long(_UNICODE, 254), avatar=_long(_UNICODE, 2048), group_ids=(_UNICODE, "b"), is_moderator=True
        )
        user = self.write(
            self.store.upsert_user(
                self.tenant.id,
                _long(_UNICODE, 256),
                _long(_UNICODE, self.limits.display_name_max_chars),
                created_ms=self.BIG,
                profile=profile,
                read_preference=PRIMARY,
            )
        )
        self.assertEqual(user.profile, profile)
        self.assertEqual(self.both(self.store.get_user_by_author, self.tenant.id, user.author_id), user)

    def test_thread(self) -> None:
        """A thread at the URL and title limits, closed, with its group lock
        and sign-in setting (arrays and booleans, not JSON text)."""
        since = len(self.fake.log)
        thread = self.write(
            self.store.upsert_thread(
                self.tenant.id,
                _long(_UNICODE, self.limits.url_id_max_chars),
                created_ms=self.BIG,
                title=_long(_UNICODE, self.limits.title_max_chars),
                closed=True,
                locked_groups=[_UNICODE, ""],
                require_sign_in=False,
                read_preference=PRIMARY,
            )
        )
        [doc] = self.inserted(since, "threads")
        self.assertEqual(doc["locked_groups"], [_UNICODE, ""])
        self.assertIs(doc["require_sign_in"], False)
        self.assertEqual(self.both(self.store.get_thread_by_id, self.tenant.id, thread.id), thread)
        self.assertEqual(self.both(self.store.get_thread, self.tenant.id, thread.url_id), thread)
        self.assertEqual(self.both(self.store.list_threads, self.tenant.id, limit=5, cursor=None).items, [thread])

    def test_posted(self) -> None:
        """What ``post_comment`` writes in one transaction (session, user,
        thread, comment) has the fields the single-record writes give
        them, and reads back as the post answered it."""
        since = len(self.fake.log)
        body = _long(_UNICODE, self.limits.comment_max_chars)
        name = _long(_UNICODE, self.limits.display_name_max_chars)
        posted = []
        for poster in (NewSession(), UserPoster(_long(_UNICODE, 200), name)):
            new = NewPost(
                tenant_id=self.tenant.id,
                url_id=_long(_UNICODE, self.limits.url_id_max_chars),
                poster=poster,
                display_name=name,
                body_source=body,
                body_html="<p>" + body + "</p>",
                status=CommentStatus.APPROVED,
                created_ms=self.BIG,
                title=_long(_UNICODE, self.limits.title_max_chars),
            )
            posted.append(self.write(self.store.post_comment(new, read_preference=PRIMARY)))
        [thread_doc] = self.inserted(since, "threads")
        self.assertEqual(
            set(thread_doc),
            {
                "_id",
                "tenant_id",
                "url_id",
                "title",
                "closed",
                "created_ms",
                "comment_count",
                "locked_groups",
                "require_sign_in",
            },
        )
        [user_doc] = self.inserted(since, "users")
        self.assertEqual(
            set(user_doc), {"_id", "tenant_id", "external_id", "author_id", "display_name", "created_ms", "profile"}
        )
        self.assertEqual(
            [set(d) for d in self.inserted(since, "authors")], [{"_id", "tenant_id", "kind", "created_ms"}] * 2
        )
        first, second = posted
        self.assertEqual(self.both(self.store.get_anonymous_session, self.tenant.id, first.session.id), first.session)
        for p in posted:
            self.assertEqual(self.both(self.store.get_comment, self.tenant.id, p.comment.id), p.comment)
        self.assertEqual(second.thread.comment_count, 2)
        self.assertEqual(self.both(self.store.get_thread, self.tenant.id, second.thread.url_id), second.thread)
        user = self.both(self.store.get_user_by_author, self.tenant.id, second.comment.author_id)
        self.assertEqual(user.display_name, name)

    def test_comment(self) -> None:
        """A comment at the body and name limits; each field's BSON type."""
        author = self.session().author_id
        since = len(self.fake.log)
        comment = self.comment(author)
        [doc] = self.inserted(since, "comments")
        self.assertEqual(
            {k: type(v) for k, v in doc.items()},
            {
                "_id": str,
                "tenant_id": str,
                "thread_id": str,
                "parent_id": type(None),
                "root_id": str,
                "author_id": str,
                "display_name": str,
                "body_source": str,
                "body_html": str,
                "status": str,
                # Milliseconds since 1970 need 64 bits on the wire.
                "created_ms": Int64,
                "edited_ms": type(None),
                "like_count": int,
                "flag_count": int,
            },
        )
        self.assertEqual(self.both(self.store.get_comment, self.tenant.id, comment.id), comment)
        edited = self.write(
            self.store.update_comment(
                self.tenant.id, comment.id, edited_ms=self.BIG + 1, body=(_UNICODE, _UNICODE), read_preference=PRIMARY
            )
        )
        self.assertEqual(self.both(self.store.get_comment, self.tenant.id, comment.id), edited)

    def test_like_flag_block(self) -> None:
        """Likes, flags (counts on the comment) and blocks."""
        author = self.session().author_id
        viewer = self.session().author_id
        comment = self.comment(author)
        st = self.store
        t = self.tenant.id
        self.write(
            st.add_like(t, comment.id, viewer, created_ms=self.BIG, address_hash="a" * 64, read_preference=PRIMARY)
        )
        self.write(st.add_flag(t, comment.id, viewer, created_ms=self.BIG, read_preference=PRIMARY))
        self.write(st.add_block(t, viewer, author, created_ms=self.BIG, read_preference=PRIMARY))
        found = self.both(st.get_comment, t, comment.id)
        self.assertEqual((found.like_count, found.flag_count), (1, 1))
        state = self.both(st.viewer_state, t, viewer, [comment.id])
        self.assertEqual((state.liked, state.blocked_authors), (frozenset([comment.id]), frozenset([author])))

    def test_ban_and_audit(self) -> None:
        """A ban (expiry far in the future, any reason text) and its audit entry."""
        moderated = self.write(
            self.store.add_ban(
                self.tenant.id,
                BanKind.ADDRESS,
                "0" * 64,
                actor=_UNICODE,
                reason=_long(_UNICODE, 500),
                created_ms=self.BIG,
                expires_ms=2**62,
                read_preference=PRIMARY,
            )
        )
        [ban] = self.both(self.store.list_bans, self.tenant.id, active_at_ms=None, limit=5, cursor=None).items
        self.assertEqual(ban, moderated.bans[0])
        self.assertEqual(
            self.both(self.store.find_ban, self.tenant.id, author_id=None, address_hash="0" * 64, now_ms=self.BIG),
            ban,
        )
        [entry] = self.both(self.store.audit_log, self.tenant.id, limit=5, cursor=None).items
        self.assertEqual(entry, moderated.entry)

    def test_credits(self) -> None:
        """Credit charges summed past 32 bits, under any operation name."""
        charges = {_UNICODE: (2**40, 2**50)}
        self.write(self.store.charge_credits(self.tenant.id, charges, created_ms=self.BIG, read_preference=PRIMARY))
        self.write(self.store.charge_credits(self.tenant.id, charges, created_ms=self.BIG, read_preference=PRIMARY))
        [usage] = self.both(self.store.credit_usage, self.tenant.id, since_ms=0)
        self.assertEqual((usage.operation, usage.calls, usage.credits), (_UNICODE, 2**41, 2**51))


class CursorTests(MongoWireCase):
    """Results past the first batch come by ``getMore`` in the same session."""

    def test_get_more(self) -> None:
        """A listing longer than a batch is drained with ``getMore`` on the
        member that opened the cursor, in its session, without read
        preference, read concern or time limit (a server refuses
        ``maxTimeMS`` on ``getMore`` of an ordinary cursor)."""
        tokens = [
            self.successResultOf(self.store.create_tenant(str(i), "g", created_ms=i, read_preference=PRIMARY)).token
            for i in range(5)
        ]
        self.fake.batch_size = 2
        since = len(self.fake.log)
        found = self.successResultOf(self.store.list_tenants(read_preference=NEAREST, token=tokens[-1]))
        self.assertEqual([t.name for t in found], ["0", "1", "2", "3", "4"])
        sent = self.sent(since)
        self.assertEqual(
            [(who, next(iter(doc))) for who, doc in sent], [("member", "find")] + [("member", "getMore")] * 2
        )
        self.assertEqual({doc["lsid"]["id"] for _, doc in sent}.__len__(), 1)
        for _, doc in sent[1:]:
            self.assertEqual(_shape(doc), {"getMore": doc["getMore"], "collection": "tenants"})
            self.assertEqual(set(doc) & {"$readPreference", "readConcern", "maxTimeMS"}, set())
