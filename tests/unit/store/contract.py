"""The contract every :class:`~fastedge.store.interfaces.IStore` backend passes.

A backend's test module mixes :class:`StoreContractMixin` into
``SynchronousTestCase`` and implements :meth:`StoreContractMixin.make_store`.
The suite talks to the store only through the interface, so the same tests
run unchanged against the embedded SQLite file, PostgreSQL with a real
standby and MongoDB at the wire.

Reads are checked with every read preference. A backend may serve NEAREST
from a replica that lags the primary, so every read passes the consistency
token of the latest write the test made (tokens are positions in one
history, so the latest implies all the earlier ones).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from fastedge.store.errors import (
    AlreadyExists,
    BadCursor,
    InvalidReference,
    LimitReached,
    NotFound,
    WrongReadPreference,
)
from fastedge.store.interfaces import IStore, IWebhookStore
from fastedge.store.model import (
    AnonymousSession,
    ApiKey,
    AttemptOutcome,
    AuditEntry,
    AuthorHistory,
    AuthorKind,
    Ban,
    BanKind,
    Comment,
    CommentStatus,
    CreditUsage,
    DeliveryDone,
    DeliveryState,
    Moderated,
    ModerationAction,
    ModerationQueue,
    NewComment,
    NewPost,
    NewSession,
    Page,
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
    UserPoster,
    UserProfile,
    ViewerState,
    WebhookEndpoint,
    WebhookEvent,
    WebhookQueue,
    Written,
)
from fastedge.store.outbox import comment_data

_T = TypeVar("_T")

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST
APPROVED = CommentStatus.APPROVED
PENDING = CommentStatus.PENDING
SPAM = CommentStatus.SPAM
REMOVED = CommentStatus.REMOVED

#: An identifier no backend issues (ids are random; this one is well-formed).
UNKNOWN = "AAAAAAAAAAAAAAAA"

if TYPE_CHECKING:
    # Type checkers see the test case the mixin is always combined with;
    # at run time the mixin has no base class.
    _MixinBase = SynchronousTestCase
else:
    _MixinBase = object


def key_hash(key: str) -> str:
    """The hash the API layer stores for ``key`` (hex SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()


class StoreContractMixin(_MixinBase):
    """Behaviour shared by every store backend.

    Subclasses implement :meth:`make_store`; ``setUp`` opens the store and
    closes it again at cleanup.
    """

    store: IStore

    def make_store(self) -> IStore:
        """A fresh, empty store that has not been opened yet."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_store")

    def setUp(self) -> None:
        super().setUp()
        self._token: str | None = None
        self._now = 1_700_000_000_000
        store = self.make_store()
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        self.store = store

    # Helpers

    def read_preferences(self) -> Sequence[ReadPreference]:
        """Every read preference a read is checked with."""
        return (PRIMARY, NEAREST)

    def tick(self, ms: int = 1000) -> int:
        """A time (in ms) later than every earlier one in this test."""
        self._now += ms
        return self._now

    def write(self, d: Deferred[Written[_T]]) -> _T:
        """The value of a successful write; remembers its consistency token."""
        written = self.successResultOf(d)
        self.assertIsInstance(written, Written)
        if written.token is not None:
            self._token = written.token
        return written.value

    def read(self, method: Callable[..., Deferred[_T]], *args: Any, **kwargs: Any) -> _T:
        """Call a read with each read preference and the latest token.

        :returns: the result, which must be the same for every preference.
        """
        results = [
            self.successResultOf(method(*args, read_preference=rp, token=self._token, **kwargs))
            for rp in self.read_preferences()
        ]
        for other in results[1:]:
            self.assertEqual(other, results[0])
        return results[0]

    def read_fails(
        self, error: type[Exception], method: Callable[..., Deferred[Any]], *args: Any, **kwargs: Any
    ) -> None:
        """Check that a read fails with ``error`` for each read preference."""
        for rp in self.read_preferences():
            self.failureResultOf(method(*args, read_preference=rp, token=self._token, **kwargs), error)

    def make_tenant(self, name: str = "Acme News", deployment: str = "global") -> Tenant:
        return self.write(self.store.create_tenant(name, deployment, created_ms=self.tick(), read_preference=PRIMARY))

    def make_session(self, tenant_id: str) -> AnonymousSession:
        return self.write(
            self.store.create_anonymous_session(tenant_id, created_ms=self.tick(), read_preference=PRIMARY)
        )

    def make_author(self, tenant_id: str) -> str:
        """A new anonymous author of the tenant; returns its author id."""
        return self.make_session(tenant_id).author_id

    def make_thread(self, tenant_id: str, url_id: str = "https://example.com/a", **kwargs: Any) -> Thread:
        return self.write(
            self.store.upsert_thread(tenant_id, url_id, created_ms=self.tick(), read_preference=PRIMARY, **kwargs)
        )

    def new_comment(
        self,
        tenant_id: str,
        thread_id: str,
        author_id: str,
        *,
        parent_id: str | None = None,
        status: CommentStatus = APPROVED,
        created_ms: int | None = None,
        body: str = "Hello",
    ) -> NewComment:
        return NewComment(
            tenant_id=tenant_id,
            thread_id=thread_id,
            author_id=author_id,
            display_name="Ann",
            body_source=body,
            body_html=f"<p>{body}</p>",
            status=status,
            created_ms=self.tick() if created_ms is None else created_ms,
            parent_id=parent_id,
        )

    def post(self, tenant_id: str, thread_id: str, author_id: str, **kwargs: Any) -> Comment:
        """Create a comment (see :meth:`new_comment` for the options)."""
        new = self.new_comment(tenant_id, thread_id, author_id, **kwargs)
        return self.write(self.store.create_comment(new, read_preference=PRIMARY))

    def like(self, tenant_id: str, comment_id: str, voter_id: str) -> int:
        return self.write(
            self.store.add_like(tenant_id, comment_id, voter_id, created_ms=self.tick(), read_preference=PRIMARY)
        )

    def set_status(self, tenant_id: str, comment_id: str, status: CommentStatus) -> Comment:
        return self.write(
            self.store.update_comment(
                tenant_id, comment_id, edited_ms=self.tick(), read_preference=PRIMARY, status=status
            )
        )

    def comment_count(self, tenant_id: str, thread_id: str) -> int:
        return self.read(self.store.get_thread_by_id, tenant_id, thread_id).comment_count

    def all_pages(self, fetch: Callable[[str | None], Any], limit: int) -> list[Any]:
        """Follow ``next_cursor`` from the first page to the last.

        :param fetch: given a cursor, returns a ``Page`` or ``ThreadPage``.
        """
        pages = []
        cursor: str | None = None
        for _ in range(100):
            page = fetch(cursor)
            pages.append(page)
            items = page.top_level if isinstance(page, ThreadPage) else page.items
            self.assertLessEqual(len(items), limit)
            cursor = page.next_cursor
            if cursor is None:
                return pages
            # Only the last page may be short.
            self.assertEqual(len(items), limit)
        self.fail("listing did not end after 100 pages")

    def listed(
        self, tenant_id: str, status: CommentStatus, thread_id: str | None = None, limit: int = 50
    ) -> list[Comment]:
        """Every comment ``list_comments`` gives for ``status``, in order,
        following the cursors from page to page."""
        pages = self.all_pages(
            lambda cursor: self.read(
                self.store.list_comments, tenant_id, status=status, limit=limit, cursor=cursor, thread_id=thread_id
            ),
            limit,
        )
        return [c for page in pages for c in page.items]

    def thread_state(self, tenant_id: str, thread_id: str) -> tuple[Any, ...]:
        """Everything the store says about a thread and its comments."""
        return (
            self.read(self.store.get_thread_by_id, tenant_id, thread_id),
            self.read(self.store.list_thread, tenant_id, thread_id, sort=Sort.OLDEST, limit=1000, cursor=None),
            tuple(tuple(self.listed(tenant_id, status, thread_id)) for status in CommentStatus),
        )

    def make_webhook(self, tenant_id: str, events: Sequence[WebhookEvent], **kwargs: Any) -> WebhookEndpoint:
        """A webhook endpoint of the tenant (active unless told)."""
        store: Any = self.store
        fields: dict[str, Any] = dict(
            url="https://hooks.example/in", secret="s" * 32, active=True, description="", created_ms=self.tick()
        )
        fields.update(kwargs)
        return self.write(store.create_webhook(tenant_id, events=events, read_preference=PRIMARY, **fields))

    def settle(self, d: Deferred[_T]) -> _T | Failure:
        """The result of a Deferred that has fired, success or failure."""
        results: list[_T | Failure] = []
        d.addBoth(results.append)
        self.assertEqual(len(results), 1, "the Deferred has not fired")
        return results[0]

    # The interface itself

    def test_provides_interface(self) -> None:
        """The store provides every method and attribute of IStore, and names its backend."""
        self.assertTrue(verifyObject(IStore, self.store))
        self.assertIsInstance(self.store.backend, str)
        self.assertTrue(self.store.backend)

    def test_ping(self) -> None:
        """An open store answers a ping with either read preference."""
        for rp in self.read_preferences():
            self.assertIsNone(self.successResultOf(self.store.ping(read_preference=rp)))

    # Tenants

    def test_create_and_get_tenant(self) -> None:
        """A created tenant can be read back by id, with empty settings."""
        created_ms = self.tick()
        tenant = self.write(self.store.create_tenant("Acme", "eu", created_ms=created_ms, read_preference=PRIMARY))
        self.assertEqual(
            (tenant.name, tenant.deployment, tenant.created_ms, dict(tenant.settings)), ("Acme", "eu", created_ms, {})
        )
        self.assertEqual(self.read(self.store.get_tenant, tenant.id), tenant)

    def test_tenants_get_distinct_ids(self) -> None:
        """Two tenants, even with the same name, are two records."""
        first = self.make_tenant("Same")
        second = self.make_tenant("Same")
        self.assertNotEqual(first.id, second.id)
        self.assertEqual(self.read(self.store.get_tenant, second.id), second)

    def test_get_unknown_tenant(self) -> None:
        """Reading a tenant that does not exist fails with NotFound."""
        self.make_tenant()
        self.read_fails(NotFound, self.store.get_tenant, UNKNOWN)

    def test_update_tenant_settings(self) -> None:
        """Updating settings replaces the whole mapping, and reads see the new one."""
        tenant = self.make_tenant()
        settings = {"moderation": "pre", "sso": {"secret_id": "k1"}, "max_len": 2000}
        updated = self.write(self.store.update_tenant_settings(tenant.id, settings, read_preference=PRIMARY))
        self.assertEqual(dict(updated.settings), settings)
        self.assertEqual(dict(self.read(self.store.get_tenant, tenant.id).settings), settings)
        updated = self.write(
            self.store.update_tenant_settings(tenant.id, {"moderation": "post"}, read_preference=PRIMARY)
        )
        self.assertEqual(dict(updated.settings), {"moderation": "post"})
        got = self.read(self.store.get_tenant, tenant.id)
        self.assertEqual(dict(got.settings), {"moderation": "post"})
        self.assertEqual((got.name, got.created_ms), (tenant.name, tenant.created_ms))

    def test_update_unknown_tenant_settings(self) -> None:
        """Updating the settings of a tenant that does not exist fails with NotFound."""
        self.failureResultOf(self.store.update_tenant_settings(UNKNOWN, {"a": 1}, read_preference=PRIMARY), NotFound)

    def test_sso_secret_rotation(self) -> None:
        """A rotated SSO secret stays accepted until the overlap ends, the new
        one first; removing SSO ends every secret at once; secrets never
        appear in the tenant's settings."""
        tenant = self.make_tenant()
        self.assertEqual(self.read(self.store.get_sso_secrets, tenant.id, now_ms=self.tick()), [])
        t1 = self.tick()
        self.write(
            self.store.update_tenant_settings(
                tenant.id, {"moderation": "pre"}, sso_secret=SsoSecretChange("old" * 11, t1), read_preference=PRIMARY
            )
        )
        self.assertEqual(
            self.read(self.store.get_sso_secrets, tenant.id, now_ms=self.tick()), [SsoSecret("old" * 11, t1, None)]
        )
        t2 = self.tick()
        got = self.write(
            self.store.update_tenant_settings(
                tenant.id,
                {"moderation": "pre"},
                sso_secret=SsoSecretChange("new" * 11, t2, overlap_ms=60_000),
                read_preference=PRIMARY,
            )
        )
        self.assertNotIn("old" * 11, repr(got))
        self.assertEqual(
            self.read(self.store.get_sso_secrets, tenant.id, now_ms=t2 + 59_999),
            [SsoSecret("new" * 11, t2, None), SsoSecret("old" * 11, t1, t2 + 60_000)],
        )
        self.assertEqual(
            self.read(self.store.get_sso_secrets, tenant.id, now_ms=t2 + 60_000), [SsoSecret("new" * 11, t2, None)]
        )
        # Rotating again with no overlap drops both older secrets.
        t3 = t2 + 70_000
        self.write(
            self.store.update_tenant_settings(
                tenant.id, {}, sso_secret=SsoSecretChange("third" * 7, t3), read_preference=PRIMARY
            )
        )
        self.assertEqual([x.secret for x in self.read(self.store.get_sso_secrets, tenant.id, now_ms=t3)], ["third" * 7])
        self.write(
            self.store.update_tenant_settings(
                tenant.id, {}, sso_secret=SsoSecretChange(None, t3 + 1, overlap_ms=60_000), read_preference=PRIMARY
            )
        )
        self.assertEqual(self.read(self.store.get_sso_secrets, tenant.id, now_ms=t3 + 1), [])
        other = self.make_tenant("Other")
        self.assertEqual(self.read(self.store.get_sso_secrets, other.id, now_ms=t3), [])

    def test_sso_secret_unknown_tenant(self) -> None:
        """Setting the SSO secret of a tenant that does not exist fails with
        NotFound and stores no secret."""
        self.failureResultOf(
            self.store.update_tenant_settings(
                UNKNOWN, {}, sso_secret=SsoSecretChange("x" * 32, self.tick()), read_preference=PRIMARY
            ),
            NotFound,
        )
        self.assertEqual(self.read(self.store.get_sso_secrets, UNKNOWN, now_ms=self.tick()), [])

    # API keys

    def add_key(self, tenant_id: str, key: str) -> ApiKey:
        return self.write(
            self.store.add_api_key(tenant_id, key_hash(key), created_ms=self.tick(), read_preference=PRIMARY)
        )

    def test_api_key_finds_its_tenant(self) -> None:
        """The hash of an added key leads to the tenant that owns it."""
        tenant = self.make_tenant()
        self.make_tenant("Other")
        key = self.add_key(tenant.id, "secret-1")
        self.assertEqual((key.tenant_id, key.revoked_ms), (tenant.id, None))
        self.assertEqual(self.read(self.store.tenant_for_api_key, key_hash("secret-1")), tenant)

    def test_unknown_api_key(self) -> None:
        """A hash that no key has fails with NotFound."""
        tenant = self.make_tenant()
        self.add_key(tenant.id, "secret-1")
        self.read_fails(NotFound, self.store.tenant_for_api_key, key_hash("secret-2"))

    def test_add_api_key_unknown_tenant(self) -> None:
        """A key cannot be added to a tenant that does not exist."""
        self.failureResultOf(
            self.store.add_api_key(UNKNOWN, key_hash("k"), created_ms=self.tick(), read_preference=PRIMARY), NotFound
        )
        self.read_fails(NotFound, self.store.tenant_for_api_key, key_hash("k"))

    def test_revoked_api_key(self) -> None:
        """A revoked key no longer finds its tenant and is listed with its revocation
        time; the tenant's other keys keep working."""
        tenant = self.make_tenant()
        key = self.add_key(tenant.id, "old")
        other = self.add_key(tenant.id, "new")
        revoked_ms = self.tick()
        revoked = self.write(
            self.store.revoke_api_key(tenant.id, key.id, revoked_ms=revoked_ms, read_preference=PRIMARY)
        )
        self.assertEqual((revoked.id, revoked.revoked_ms), (key.id, revoked_ms))
        self.read_fails(NotFound, self.store.tenant_for_api_key, key_hash("old"))
        self.assertEqual(self.read(self.store.tenant_for_api_key, key_hash("new")), tenant)
        keys = {k.id: k for k in self.read(self.store.list_api_keys, tenant.id)}
        self.assertEqual(keys, {key.id: revoked, other.id: other})

    def test_list_api_keys(self) -> None:
        """Listing gives every key of the tenant and no key of another tenant."""
        tenant = self.make_tenant()
        other = self.make_tenant("Other")
        self.assertEqual(self.read(self.store.list_api_keys, tenant.id), [])
        mine = [self.add_key(tenant.id, f"k{i}") for i in range(3)]
        self.add_key(other.id, "theirs")
        listed = self.read(self.store.list_api_keys, tenant.id)
        self.assertEqual(sorted(listed, key=lambda k: k.id), sorted(mine, key=lambda k: k.id))

    def test_revoke_unknown_api_key(self) -> None:
        """Revoking a key that does not exist fails with NotFound."""
        tenant = self.make_tenant()
        self.failureResultOf(
            self.store.revoke_api_key(tenant.id, UNKNOWN, revoked_ms=self.tick(), read_preference=PRIMARY), NotFound
        )

    def test_revoke_other_tenants_api_key(self) -> None:
        """Revoking another tenant's key fails with NotFound and leaves the key working."""
        owner = self.make_tenant("Owner")
        intruder = self.make_tenant("Intruder")
        key = self.add_key(owner.id, "owner-key")
        self.failureResultOf(
            self.store.revoke_api_key(intruder.id, key.id, revoked_ms=self.tick(), read_preference=PRIMARY), NotFound
        )
        self.assertEqual(self.read(self.store.tenant_for_api_key, key_hash("owner-key")), owner)
        self.assertEqual(self.read(self.store.list_api_keys, owner.id), [key])

    # Authors

    def test_anonymous_session(self) -> None:
        """A new anonymous session can be read back, and speaks for a new
        anonymous author of the tenant."""
        tenant = self.make_tenant()
        created_ms = self.tick()
        session = self.write(
            self.store.create_anonymous_session(tenant.id, created_ms=created_ms, read_preference=PRIMARY)
        )
        self.assertEqual((session.tenant_id, session.created_ms), (tenant.id, created_ms))
        self.assertEqual(self.read(self.store.get_anonymous_session, tenant.id, session.id), session)
        author = self.read(self.store.get_author, tenant.id, session.author_id)
        self.assertEqual(
            (author.id, author.tenant_id, author.kind, author.created_ms),
            (session.author_id, tenant.id, AuthorKind.ANONYMOUS, created_ms),
        )

    def test_sessions_are_distinct(self) -> None:
        """Each anonymous session is its own session with its own author."""
        tenant = self.make_tenant()
        first, second = self.make_session(tenant.id), self.make_session(tenant.id)
        self.assertNotEqual(first.id, second.id)
        self.assertNotEqual(first.author_id, second.author_id)

    def test_anonymous_session_wrong_tenant(self) -> None:
        """A session read with another tenant's id fails with NotFound."""
        tenant = self.make_tenant()
        other = self.make_tenant("Other")
        session = self.make_session(tenant.id)
        self.read_fails(NotFound, self.store.get_anonymous_session, other.id, session.id)

    def test_unknown_anonymous_session(self) -> None:
        """A session id that was never issued fails with NotFound."""
        tenant = self.make_tenant()
        self.make_session(tenant.id)
        self.read_fails(NotFound, self.store.get_anonymous_session, tenant.id, UNKNOWN)

    def test_anonymous_session_unknown_tenant(self) -> None:
        """A session cannot be created for a tenant that does not exist."""
        self.failureResultOf(
            self.store.create_anonymous_session(UNKNOWN, created_ms=self.tick(), read_preference=PRIMARY), NotFound
        )

    def test_upsert_user_creates_then_renames(self) -> None:
        """The first upsert creates the user and its author; a later one with a new
        name renames it, keeping its ids and creation time."""
        tenant = self.make_tenant()
        created_ms = self.tick()
        user = self.write(
            self.store.upsert_user(tenant.id, "sso-42", "Ann", created_ms=created_ms, read_preference=PRIMARY)
        )
        self.assertEqual(
            (user.tenant_id, user.external_id, user.display_name, user.created_ms),
            (tenant.id, "sso-42", "Ann", created_ms),
        )
        author = self.read(self.store.get_author, tenant.id, user.author_id)
        self.assertEqual((author.kind, author.tenant_id), (AuthorKind.USER, tenant.id))
        renamed = self.write(
            self.store.upsert_user(tenant.id, "sso-42", "Ann B.", created_ms=self.tick(), read_preference=PRIMARY)
        )
        self.assertEqual(renamed.display_name, "Ann B.")
        self.assertEqual((renamed.id, renamed.author_id, renamed.created_ms), (user.id, user.author_id, created_ms))
        again = self.write(
            self.store.upsert_user(tenant.id, "sso-42", "Ann B.", created_ms=self.tick(), read_preference=PRIMARY)
        )
        self.assertEqual(again, renamed)

    def test_upsert_user_per_tenant(self) -> None:
        """The same external id in two tenants is two users with two authors."""
        first, second = self.make_tenant("One"), self.make_tenant("Two")
        one = self.write(
            self.store.upsert_user(first.id, "sso-1", "Ann", created_ms=self.tick(), read_preference=PRIMARY)
        )
        two = self.write(
            self.store.upsert_user(second.id, "sso-1", "Bob", created_ms=self.tick(), read_preference=PRIMARY)
        )
        self.assertNotEqual(one.id, two.id)
        self.assertNotEqual(one.author_id, two.author_id)
        self.assertEqual(two.tenant_id, second.id)
        self.read_fails(NotFound, self.store.get_author, first.id, two.author_id)

    def test_user_profile(self) -> None:
        """An upsert with a profile stores it; a later one replaces it; one
        without a profile leaves it; the user is found by its author id,
        and an anonymous author is not a user."""
        tenant = self.make_tenant()
        plain = self.write(
            self.store.upsert_user(tenant.id, "sso-1", "Ann", created_ms=self.tick(), read_preference=PRIMARY)
        )
        self.assertIsNone(plain.profile)
        profile = UserProfile(
            email="ann@example.com", avatar="https://x/a.png", group_ids=("staff", "vip"), is_moderator=True
        )
        user = self.write(
            self.store.upsert_user(
                tenant.id, "sso-1", "Ann", created_ms=self.tick(), read_preference=PRIMARY, profile=profile
            )
        )
        self.assertEqual((user.id, user.profile), (plain.id, profile))
        self.assertEqual(self.read(self.store.get_user_by_author, tenant.id, user.author_id), user)
        kept = self.write(
            self.store.upsert_user(tenant.id, "sso-1", "Ann B", created_ms=self.tick(), read_preference=PRIMARY)
        )
        self.assertEqual(kept.profile, profile)
        replaced = self.write(
            self.store.upsert_user(
                tenant.id, "sso-1", "Ann B", created_ms=self.tick(), read_preference=PRIMARY, profile=UserProfile()
            )
        )
        self.assertEqual(replaced.profile, UserProfile())
        self.read_fails(NotFound, self.store.get_user_by_author, tenant.id, self.make_author(tenant.id))
        self.read_fails(NotFound, self.store.get_user_by_author, self.make_tenant("B").id, user.author_id)

    def test_user_session(self) -> None:
        """A session made for a user's author speaks for that author; an
        unknown (or another tenant's) author gets none."""
        tenant = self.make_tenant()
        user = self.write(
            self.store.upsert_user(tenant.id, "sso-1", "Ann", created_ms=self.tick(), read_preference=PRIMARY)
        )
        session = self.write(
            self.store.create_user_session(tenant.id, user.author_id, created_ms=self.tick(), read_preference=PRIMARY)
        )
        self.assertEqual(session.author_id, user.author_id)
        self.assertEqual(self.read(self.store.get_anonymous_session, tenant.id, session.id), session)
        other = self.make_tenant("B")
        self.failureResultOf(
            self.store.create_user_session(other.id, user.author_id, created_ms=self.tick(), read_preference=PRIMARY),
            NotFound,
        )

    def test_claim_author(self) -> None:
        """Claiming moves an anonymous author's comments, likes, flags and
        blocks to the user's author (a like both made counts once, a block
        of oneself goes) and ends the anonymous sessions."""
        tenant = self.make_tenant()
        tid = tenant.id
        anon = self.make_session(tid)
        user = self.write(self.store.upsert_user(tid, "sso-1", "Ann", created_ms=self.tick(), read_preference=PRIMARY))
        other = self.make_author(tid)
        third = self.make_author(tid)
        thread = self.make_thread(tid, "u1")
        mine = self.post(tid, thread.id, anon.author_id)
        theirs = self.post(tid, thread.id, other)
        both = self.post(tid, thread.id, third)
        self.like(tid, theirs.id, anon.author_id)
        self.like(tid, both.id, anon.author_id)
        self.like(tid, both.id, user.author_id)
        self.write(self.store.add_flag(tid, both.id, anon.author_id, created_ms=self.tick(), read_preference=PRIMARY))
        self.write(self.store.add_flag(tid, both.id, user.author_id, created_ms=self.tick(), read_preference=PRIMARY))
        self.write(self.store.add_block(tid, anon.author_id, other, created_ms=self.tick(), read_preference=PRIMARY))
        self.write(
            self.store.add_block(tid, anon.author_id, user.author_id, created_ms=self.tick(), read_preference=PRIMARY)
        )
        self.write(self.store.add_block(tid, third, anon.author_id, created_ms=self.tick(), read_preference=PRIMARY))
        moved = self.write(
            self.store.claim_author(
                tid, anon.author_id, user.author_id, claimed_ms=self.tick(), read_preference=PRIMARY
            )
        )
        self.assertEqual(moved, 1)
        self.assertEqual(self.read(self.store.get_comment, tid, mine.id).author_id, user.author_id)
        got = self.read(self.store.get_comment, tid, both.id)
        self.assertEqual((got.like_count, got.flag_count), (1, 1))
        self.assertEqual(self.read(self.store.get_comment, tid, theirs.id).like_count, 1)
        self.assertEqual(
            self.read(self.store.viewer_state, tid, user.author_id, [mine.id, theirs.id, both.id]),
            ViewerState(liked=frozenset({theirs.id, both.id}), blocked_authors=frozenset({other})),
        )
        self.assertEqual(
            self.read(self.store.viewer_state, tid, third, []),
            ViewerState(liked=frozenset(), blocked_authors=frozenset({user.author_id})),
        )
        self.assertEqual(
            self.read(self.store.viewer_state, tid, anon.author_id, [mine.id, theirs.id, both.id]),
            ViewerState(liked=frozenset(), blocked_authors=frozenset()),
        )
        self.read_fails(NotFound, self.store.get_anonymous_session, tid, anon.id)

    def test_claim_author_refusals(self) -> None:
        """A claim is one way and once: a second claim, a claim of a user,
        a claim by an anonymous author, unknown or foreign authors are
        refused and move nothing."""
        tenant = self.make_tenant()
        tid = tenant.id
        anon = self.make_session(tid).author_id
        anon2 = self.make_author(tid)
        user = self.write(self.store.upsert_user(tid, "sso-1", "Ann", created_ms=self.tick(), read_preference=PRIMARY))
        thread = self.make_thread(tid, "u1")
        self.post(tid, thread.id, anon2)
        before = self.thread_state(tid, thread.id)
        other = self.make_tenant("B")
        other_user = self.write(
            self.store.upsert_user(other.id, "sso-1", "Ann", created_ms=self.tick(), read_preference=PRIMARY)
        )
        t = self.tick()
        s = self.store
        self.failureResultOf(
            s.claim_author(tid, user.author_id, anon, claimed_ms=t, read_preference=PRIMARY), InvalidReference
        )
        self.failureResultOf(s.claim_author(tid, anon2, anon, claimed_ms=t, read_preference=PRIMARY), InvalidReference)
        self.failureResultOf(
            s.claim_author(tid, UNKNOWN, user.author_id, claimed_ms=t, read_preference=PRIMARY), NotFound
        )
        self.failureResultOf(
            s.claim_author(tid, anon2, other_user.author_id, claimed_ms=t, read_preference=PRIMARY), NotFound
        )
        self.failureResultOf(
            s.claim_author(other.id, anon2, other_user.author_id, claimed_ms=t, read_preference=PRIMARY), NotFound
        )
        self.assertEqual(self.thread_state(tid, thread.id), before)
        self.write(s.claim_author(tid, anon, user.author_id, claimed_ms=t, read_preference=PRIMARY))
        self.failureResultOf(
            s.claim_author(tid, anon, user.author_id, claimed_ms=self.tick(), read_preference=PRIMARY), AlreadyExists
        )

    def test_upsert_user_unknown_tenant(self) -> None:
        """A user cannot be created for a tenant that does not exist."""
        self.failureResultOf(
            self.store.upsert_user(UNKNOWN, "sso-1", "Ann", created_ms=self.tick(), read_preference=PRIMARY), NotFound
        )

    def test_get_unknown_author(self) -> None:
        """An author id that was never issued fails with NotFound."""
        tenant = self.make_tenant()
        self.make_author(tenant.id)
        self.read_fails(NotFound, self.store.get_author, tenant.id, UNKNOWN)

    # Author history (spam checks)

    def test_author_history(self) -> None:
        """An author's history counts their comments by status and lists
        their recent comments (any thread) and other authors' recent
        comments of the asked thread, newest first, since the given time,
        at most ``limit`` of each."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        session_ms = self._now
        other = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        elsewhere = self.make_thread(tenant.id, "https://example.com/b")
        old = self.post(tenant.id, thread.id, author, body="old")
        since = self.tick()
        mine = [
            self.post(tenant.id, thread.id, author, body="one"),
            self.post(tenant.id, elsewhere.id, author, body="two", status=SPAM),
            self.post(tenant.id, thread.id, author, body="three", status=PENDING),
        ]
        self.set_status(tenant.id, old.id, REMOVED)
        theirs = [
            self.post(tenant.id, thread.id, other, body="a"),
            self.post(tenant.id, elsewhere.id, other, body="b"),
            self.post(tenant.id, thread.id, other, body="c"),
        ]

        def recent(c: Comment) -> RecentComment:
            return RecentComment(c.author_id, c.thread_id, c.body_source, c.status, c.created_ms)

        history = self.read(self.store.author_history, tenant.id, author, thread_id=thread.id, since_ms=since, limit=10)
        self.assertEqual(
            history,
            AuthorHistory(
                author_id=author,
                kind=AuthorKind.ANONYMOUS,
                created_ms=session_ms,
                comments=4,
                approved=1,
                pending=1,
                spam=1,
                removed=1,
                recent=tuple(recent(c) for c in mine[::-1]),
                thread_recent=(recent(theirs[2]), recent(theirs[0])),
            ),
        )
        short = self.read(self.store.author_history, tenant.id, author, thread_id=None, since_ms=since, limit=2)
        self.assertEqual((short.recent, short.thread_recent), ((recent(mine[2]), recent(mine[1])), ()))

    def test_author_history_new_author(self) -> None:
        """An author who never posted has an empty history, and an author
        of another tenant (or an unknown one) is not found."""
        tenant = self.make_tenant()
        other = self.make_tenant("Other")
        author = self.make_author(tenant.id)
        history = self.read(self.store.author_history, tenant.id, author, thread_id=None, since_ms=0, limit=5)
        self.assertEqual((history.comments, history.recent, history.thread_recent), (0, (), ()))
        self.read_fails(NotFound, self.store.author_history, other.id, author, thread_id=None, since_ms=0, limit=5)
        self.read_fails(NotFound, self.store.author_history, tenant.id, UNKNOWN, thread_id=None, since_ms=0, limit=5)

    # Threads

    def test_upsert_thread_creates(self) -> None:
        """The first upsert of a URL creates an open, empty thread that can be read
        back by URL and by id."""
        tenant = self.make_tenant()
        created_ms = self.tick()
        thread = self.write(
            self.store.upsert_thread(
                tenant.id, "https://example.com/a", created_ms=created_ms, read_preference=PRIMARY, title="A"
            )
        )
        self.assertEqual(
            (thread.tenant_id, thread.url_id, thread.title, thread.closed, thread.created_ms, thread.comment_count),
            (tenant.id, "https://example.com/a", "A", False, created_ms, 0),
        )
        self.assertEqual(self.read(self.store.get_thread, tenant.id, "https://example.com/a"), thread)
        self.assertEqual(self.read(self.store.get_thread_by_id, tenant.id, thread.id), thread)

    def test_upsert_thread_updates(self) -> None:
        """A later upsert of the same URL changes the title and closed flag it is
        given, leaves the others as they were, and keeps the thread's id."""
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id, "u1", title="Old")
        closed = self.write(
            self.store.upsert_thread(tenant.id, "u1", created_ms=self.tick(), read_preference=PRIMARY, closed=True)
        )
        self.assertEqual(
            (closed.id, closed.title, closed.closed, closed.created_ms), (thread.id, "Old", True, thread.created_ms)
        )
        renamed = self.write(
            self.store.upsert_thread(tenant.id, "u1", created_ms=self.tick(), read_preference=PRIMARY, title="New")
        )
        self.assertEqual((renamed.id, renamed.title, renamed.closed), (thread.id, "New", True))
        reopened = self.write(
            self.store.upsert_thread(tenant.id, "u1", created_ms=self.tick(), read_preference=PRIMARY, closed=False)
        )
        self.assertEqual((reopened.title, reopened.closed), ("New", False))
        self.assertEqual(self.read(self.store.get_thread, tenant.id, "u1"), reopened)
        self.assertEqual(self.read(self.store.list_threads, tenant.id, limit=10, cursor=None).items, [reopened])

    def test_thread_access(self) -> None:
        """A thread's group lock and sign-in rule default to the tenant's
        (``None``), are set by upsert and read back by every thread read;
        an empty lock is kept apart from no lock; a locked thread deletes."""
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id, "u1")
        self.assertEqual((thread.locked_groups, thread.require_sign_in), (None, None))
        locked = self.write(
            self.store.upsert_thread(
                tenant.id,
                "u1",
                created_ms=self.tick(),
                read_preference=PRIMARY,
                locked_groups=["staff", "vip"],
                require_sign_in=True,
            )
        )
        self.assertEqual((locked.locked_groups, locked.require_sign_in), (("staff", "vip"), True))
        self.assertEqual(self.read(self.store.get_thread, tenant.id, "u1"), locked)
        self.assertEqual(self.read(self.store.get_thread_by_id, tenant.id, thread.id), locked)
        self.assertEqual(list(self.read(self.store.list_threads, tenant.id, limit=5, cursor=None).items), [locked])
        titled = self.write(
            self.store.upsert_thread(tenant.id, "u1", created_ms=self.tick(), read_preference=PRIMARY, title="T")
        )
        self.assertEqual((titled.locked_groups, titled.require_sign_in), (("staff", "vip"), True))
        opened = self.write(
            self.store.upsert_thread(tenant.id, "u1", created_ms=self.tick(), read_preference=PRIMARY, locked_groups=[])
        )
        self.assertEqual((opened.locked_groups, opened.require_sign_in), ((), True))
        fresh = self.write(
            self.store.upsert_thread(
                tenant.id, "u2", created_ms=self.tick(), read_preference=PRIMARY, locked_groups=["g"]
            )
        )
        self.assertEqual(fresh.locked_groups, ("g",))
        self.write(self.store.delete_thread(tenant.id, fresh.id, read_preference=PRIMARY))
        self.read_fails(NotFound, self.store.get_thread, tenant.id, "u2")

    def test_upsert_thread_unknown_tenant(self) -> None:
        """A thread cannot be created for a tenant that does not exist."""
        self.failureResultOf(
            self.store.upsert_thread(UNKNOWN, "u1", created_ms=self.tick(), read_preference=PRIMARY), NotFound
        )

    def test_get_unknown_thread(self) -> None:
        """A URL or thread id with no thread fails with NotFound."""
        tenant = self.make_tenant()
        self.make_thread(tenant.id, "u1")
        self.read_fails(NotFound, self.store.get_thread, tenant.id, "u2")
        self.read_fails(NotFound, self.store.get_thread_by_id, tenant.id, UNKNOWN)

    def test_list_threads_empty(self) -> None:
        """A tenant without threads lists one empty, last page."""
        tenant = self.make_tenant()
        self.assertEqual(self.read(self.store.list_threads, tenant.id, limit=10, cursor=None), Page([], None))

    def test_list_threads_pages(self) -> None:
        """Threads are listed newest first, and following the cursors gives every
        thread of the tenant exactly once, even across equal creation times."""
        tenant = self.make_tenant()
        other = self.make_tenant("Other")
        self.make_thread(other.id, "theirs")
        base = self.tick()
        threads = [
            self.write(self.store.upsert_thread(tenant.id, f"u{i}", created_ms=base + offset, read_preference=PRIMARY))
            for i, offset in enumerate([0, 5, 5, 5, 9, 2, 5, 7])
        ]
        pages = self.all_pages(lambda cursor: self.read(self.store.list_threads, tenant.id, limit=3, cursor=cursor), 3)
        listed = [t for page in pages for t in page.items]
        self.assertEqual(sorted(t.id for t in listed), sorted(t.id for t in threads))
        times = [t.created_ms for t in listed]
        self.assertEqual(times, sorted(times, reverse=True))
        self.assertEqual({t.id: t for t in listed}, {t.id: t for t in threads})

    def test_list_threads_garbage_cursor(self) -> None:
        """A cursor the store did not issue fails with BadCursor."""
        tenant = self.make_tenant()
        self.make_thread(tenant.id)
        deep = base64.urlsafe_b64encode(b"[" * 20000 + b"]" * 20000).decode()
        for cursor in ["garbage", "!!!", "e30", "W10", "a" * 1000, deep, "\u00e9"]:
            self.read_fails(BadCursor, self.store.list_threads, tenant.id, limit=10, cursor=cursor)

    def foreign_cursors(self) -> tuple[str, dict[str, str]]:
        """A thread and a genuine cursor of each kind of listing.

        :returns: the tenant id and ``{listing: cursor}``.
        """
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id, "u0")
        self.make_thread(tenant.id, "u1")
        for _ in range(2):
            comment = self.post(tenant.id, thread.id, author)
            self.like(tenant.id, comment.id, author)
            self.post(tenant.id, thread.id, author, status=PENDING)
        cursors = {
            "threads": self.read(self.store.list_threads, tenant.id, limit=1, cursor=None).next_cursor,
            "comments": self.read(
                self.store.list_comments, tenant.id, status=PENDING, limit=1, cursor=None
            ).next_cursor,
        }
        for sort in Sort:
            cursors[sort.value] = self.read(
                self.store.list_thread, tenant.id, thread.id, sort=sort, limit=1, cursor=None
            ).next_cursor
        cursors["queue"] = self.read(
            self.store.moderation_queue,
            tenant.id,
            queue=ModerationQueue.PENDING,
            sort=QueueSort.OLDEST,
            limit=1,
            cursor=None,
        ).next_cursor
        for name, cursor in cursors.items():
            self.assertIsNotNone(cursor, name)
        return tenant.id, {name: cursor for name, cursor in cursors.items() if cursor is not None}

    def test_cursor_of_another_listing(self) -> None:
        """A genuine cursor given to another kind of listing (or another sort of
        the same thread) fails with BadCursor."""
        tenant_id, cursors = self.foreign_cursors()
        thread = self.read(self.store.get_thread, tenant_id, "u0")
        for name, cursor in cursors.items():
            if name != "threads":
                self.read_fails(BadCursor, self.store.list_threads, tenant_id, limit=1, cursor=cursor)
            if name != "comments":
                self.read_fails(BadCursor, self.store.list_comments, tenant_id, status=PENDING, limit=1, cursor=cursor)
            for sort in Sort:
                if name != sort.value:
                    self.read_fails(
                        BadCursor, self.store.list_thread, tenant_id, thread.id, sort=sort, limit=1, cursor=cursor
                    )

    def test_garbage_cursor_every_listing(self) -> None:
        """Every listing fails with BadCursor for a cursor the store did not issue."""
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id)
        self.read_fails(BadCursor, self.store.list_comments, tenant.id, status=APPROVED, limit=1, cursor="garbage")
        for queue in ModerationQueue:
            for queue_sort in QueueSort:
                self.read_fails(
                    BadCursor,
                    self.store.moderation_queue,
                    tenant.id,
                    queue=queue,
                    sort=queue_sort,
                    limit=1,
                    cursor="garbage",
                )
        self.read_fails(BadCursor, self.store.list_bans, tenant.id, active_at_ms=None, limit=1, cursor="garbage")
        self.read_fails(BadCursor, self.store.audit_log, tenant.id, limit=1, cursor="garbage")
        for sort in Sort:
            self.read_fails(
                BadCursor, self.store.list_thread, tenant.id, thread.id, sort=sort, limit=1, cursor="garbage"
            )

    @settings(max_examples=50, deadline=None)
    @given(data=st.data())
    def test_random_cursors(self, data: st.DataObject) -> None:
        """Any string given as a cursor, random or a damaged genuine cursor, either
        fails with BadCursor or gives a valid page; never another error."""
        if not hasattr(self, "_cursor_fixture"):
            # One store per test method: build the listings once, not per example.
            self._cursor_fixture = self.foreign_cursors()
        tenant_id, cursors = self._cursor_fixture
        thread = self.read(self.store.get_thread, tenant_id, "u0")
        genuine = data.draw(st.sampled_from(sorted(cursors.values())))
        cut = st.integers(min_value=0, max_value=len(genuine))
        cursor = data.draw(
            st.one_of(
                st.text(),
                st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="),
                st.builds(lambda i, j, s: genuine[:i] + s + genuine[j:], cut, cut, st.text(max_size=8)),
            ),
            label="cursor",
        )
        calls: list[tuple[Callable[..., Deferred[Any]], tuple[Any, ...], dict[str, Any]]] = [
            (self.store.list_threads, (tenant_id,), {}),
            (self.store.list_comments, (tenant_id,), {"status": PENDING}),
        ]
        calls += [(self.store.list_thread, (tenant_id, thread.id), {"sort": sort}) for sort in Sort]
        calls += [
            (self.store.moderation_queue, (tenant_id,), {"queue": ModerationQueue.PENDING, "sort": QueueSort.OLDEST}),
            (
                self.store.moderation_queue,
                (tenant_id,),
                {"queue": ModerationQueue.FLAGGED, "sort": QueueSort.MOST_FLAGGED},
            ),
            (self.store.list_bans, (tenant_id,), {"active_at_ms": None}),
            (self.store.audit_log, (tenant_id,), {}),
        ]
        for method, args, kwargs in calls:
            for rp in self.read_preferences():
                result = self.settle(
                    method(*args, limit=2, cursor=cursor, read_preference=rp, token=self._token, **kwargs)
                )
                if isinstance(result, Failure):
                    self.assertIsNotNone(result.check(BadCursor), result.getTraceback())
                else:
                    self.assertIsInstance(result, (Page, ThreadPage))

    def test_delete_thread(self) -> None:
        """Deleting a thread removes it with all its comments and their likes, and
        leaves the tenant's other threads alone."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id, "doomed")
        kept = self.make_thread(tenant.id, "kept")
        top = self.post(tenant.id, thread.id, author)
        reply = self.post(tenant.id, thread.id, author, parent_id=top.id)
        pending = self.post(tenant.id, thread.id, author, status=PENDING)
        self.like(tenant.id, top.id, author)
        survivor = self.post(tenant.id, kept.id, author)
        self.like(tenant.id, survivor.id, author)
        self.assertIsNone(self.write(self.store.delete_thread(tenant.id, thread.id, read_preference=PRIMARY)))
        self.read_fails(NotFound, self.store.get_thread_by_id, tenant.id, thread.id)
        self.read_fails(NotFound, self.store.get_thread, tenant.id, "doomed")
        for comment in (top, reply, pending):
            self.read_fails(NotFound, self.store.get_comment, tenant.id, comment.id)
        self.assertEqual(self.listed(tenant.id, PENDING), [])
        self.assertEqual([c.id for c in self.listed(tenant.id, APPROVED)], [survivor.id])
        self.assertEqual(
            [t.id for t in self.read(self.store.list_threads, tenant.id, limit=10, cursor=None).items], [kept.id]
        )
        state = self.read(self.store.viewer_state, tenant.id, author, [top.id, survivor.id])
        self.assertEqual(state.liked, frozenset([survivor.id]))
        self.assertEqual(self.read(self.store.get_comment, tenant.id, survivor.id).like_count, 1)

    def test_delete_thread_then_recreate(self) -> None:
        """After a thread is deleted its URL can get a new, empty thread."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id, "u1")
        self.post(tenant.id, thread.id, author)
        self.write(self.store.delete_thread(tenant.id, thread.id, read_preference=PRIMARY))
        again = self.make_thread(tenant.id, "u1")
        self.assertNotEqual(again.id, thread.id)
        self.assertEqual(again.comment_count, 0)
        self.assertEqual(
            self.read(self.store.list_thread, tenant.id, again.id, sort=Sort.NEWEST, limit=10, cursor=None).top_level,
            [],
        )

    def test_delete_unknown_thread(self) -> None:
        """Deleting a thread that does not exist fails with NotFound."""
        tenant = self.make_tenant()
        self.failureResultOf(self.store.delete_thread(tenant.id, UNKNOWN, read_preference=PRIMARY), NotFound)

    # Comments

    def test_create_top_level_comment(self) -> None:
        """A new top-level comment is its own root, has no likes, flags or edits,
        and can be read back."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        new = self.new_comment(tenant.id, thread.id, author, body="First!")
        comment = self.write(self.store.create_comment(new, read_preference=PRIMARY))
        self.assertEqual(
            (
                comment.tenant_id,
                comment.thread_id,
                comment.parent_id,
                comment.root_id,
                comment.author_id,
                comment.display_name,
                comment.body_source,
                comment.body_html,
                comment.status,
                comment.created_ms,
                comment.edited_ms,
                comment.like_count,
                comment.flag_count,
            ),
            (
                tenant.id,
                thread.id,
                None,
                comment.id,
                author,
                "Ann",
                "First!",
                "<p>First!</p>",
                APPROVED,
                new.created_ms,
                None,
                0,
                0,
            ),
        )
        self.assertEqual(self.read(self.store.get_comment, tenant.id, comment.id), comment)

    def test_replies_hang_under_their_root(self) -> None:
        """A reply names its parent, and its root is the top-level comment above
        it, however deep the reply."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        top = self.post(tenant.id, thread.id, author)
        parent = top
        for _ in range(4):
            reply = self.post(tenant.id, thread.id, author, parent_id=parent.id)
            self.assertEqual((reply.parent_id, reply.root_id), (parent.id, top.id))
            self.assertEqual(self.read(self.store.get_comment, tenant.id, reply.id), reply)
            parent = reply
        other_top = self.post(tenant.id, thread.id, author)
        self.assertEqual(self.post(tenant.id, thread.id, author, parent_id=other_top.id).root_id, other_top.id)

    def test_get_unknown_comment(self) -> None:
        """A comment id that was never issued fails with NotFound."""
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id)
        self.post(tenant.id, thread.id, self.make_author(tenant.id))
        self.read_fails(NotFound, self.store.get_comment, tenant.id, UNKNOWN)

    def check_create_fails(
        self, tenant_id: str, thread_ids: Sequence[str], new: NewComment, error: type[Exception]
    ) -> None:
        """Creating ``new`` fails with ``error`` and changes none of the threads."""
        before = [self.thread_state(tenant_id, thread_id) for thread_id in thread_ids]
        self.failureResultOf(self.store.create_comment(new, read_preference=PRIMARY), error)
        self.assertEqual([self.thread_state(tenant_id, thread_id) for thread_id in thread_ids], before)

    def test_parent_in_another_thread(self) -> None:
        """A reply to a comment of another thread fails with InvalidReference and
        writes nothing."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        here, there = self.make_thread(tenant.id, "here"), self.make_thread(tenant.id, "there")
        self.post(tenant.id, here.id, author)
        parent = self.post(tenant.id, there.id, author)
        new = self.new_comment(tenant.id, here.id, author, parent_id=parent.id)
        self.check_create_fails(tenant.id, [here.id, there.id], new, InvalidReference)

    def test_unknown_parent(self) -> None:
        """A reply to a comment that does not exist fails with NotFound and writes nothing."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        self.post(tenant.id, thread.id, author)
        new = self.new_comment(tenant.id, thread.id, author, parent_id=UNKNOWN)
        self.check_create_fails(tenant.id, [thread.id], new, NotFound)

    def test_unknown_thread(self) -> None:
        """A comment on a thread that does not exist fails with NotFound and writes nothing."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        self.check_create_fails(tenant.id, [thread.id], self.new_comment(tenant.id, UNKNOWN, author), NotFound)
        self.assertEqual(self.listed(tenant.id, APPROVED), [])

    def test_unknown_author(self) -> None:
        """A comment by an author that does not exist fails with NotFound and writes nothing."""
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id)
        self.post(tenant.id, thread.id, self.make_author(tenant.id))
        self.check_create_fails(tenant.id, [thread.id], self.new_comment(tenant.id, thread.id, UNKNOWN), NotFound)

    def populate_thread(self) -> tuple[str, Thread, list[Comment], dict[str, list[Comment]]]:
        """A thread with approved, hidden and liked comments, replies and ties.

        :returns: the tenant id, the thread, its approved top-level comments,
            and the approved replies under each of them (by root id).
        """
        tenant = self.make_tenant()
        other = self.make_thread(tenant.id, "other")
        thread = self.make_thread(tenant.id, "busy")
        voters = [self.make_author(tenant.id) for _ in range(2)]
        author = self.make_author(tenant.id)
        t = self.tick()
        # Equal times and equal like counts fall on page boundaries (limit 3)
        # for every sort, so ties must be broken consistently.
        shape = [(0, 0), (1, 1), (1, 1), (2, 0), (3, 2), (3, 2), (3, 2), (5, 2)]
        tops = []
        for offset, likes in shape:
            comment = self.post(tenant.id, thread.id, author, created_ms=t + offset)
            for voter in voters[:likes]:
                self.like(tenant.id, comment.id, voter)
            tops.append(self.read(self.store.get_comment, tenant.id, comment.id))
        # Hidden top-level comments, one with an approved reply, and a popular
        # comment that was approved and then removed.
        pending = self.post(tenant.id, thread.id, author, status=PENDING, created_ms=t + 1)
        self.post(tenant.id, thread.id, author, parent_id=pending.id, created_ms=t + 6)
        self.post(tenant.id, thread.id, author, status=SPAM, created_ms=t + 3)
        removed = self.post(tenant.id, thread.id, author, created_ms=t + 4)
        for voter in voters:
            self.like(tenant.id, removed.id, voter)
        self.set_status(tenant.id, removed.id, REMOVED)
        # Replies, created out of their roots' order.
        c0, c2, c4, c7 = tops[0], tops[2], tops[4], tops[7]
        r2 = self.post(tenant.id, thread.id, author, parent_id=c0.id, created_ms=t + 9)
        self.post(tenant.id, thread.id, author, parent_id=c0.id, status=SPAM, created_ms=t + 9)
        r1 = self.post(tenant.id, thread.id, author, parent_id=c4.id, created_ms=t + 10)
        r1a = self.post(tenant.id, thread.id, author, parent_id=r1.id, created_ms=t + 11)
        self.post(tenant.id, thread.id, author, parent_id=r1.id, status=PENDING, created_ms=t + 12)
        r1b = self.post(tenant.id, thread.id, author, parent_id=c4.id, created_ms=t + 10)
        r3 = self.post(tenant.id, thread.id, author, parent_id=c7.id, created_ms=t + 13)
        self.set_status(tenant.id, r3.id, REMOVED)
        r4 = self.post(tenant.id, thread.id, author, parent_id=c2.id, created_ms=t + 3)
        # Another thread's comments must not leak in.
        self.post(tenant.id, other.id, author, created_ms=t + 2)
        replies = {c0.id: [r2], c2.id: [r4], c4.id: [r1, r1b, r1a]}
        thread = self.read(self.store.get_thread_by_id, tenant.id, thread.id)
        return tenant.id, thread, tops, replies

    def check_thread_listing(self, sort: Sort) -> list[Comment]:
        """Page through the populated thread in ``sort`` order and check the pages.

        :returns: the top-level comments in listed order.
        """
        tenant_id, thread, tops, replies = self.populate_thread()
        pages = self.all_pages(
            lambda cursor: self.read(self.store.list_thread, tenant_id, thread.id, sort=sort, limit=3, cursor=cursor), 3
        )
        listed = []
        for page in pages:
            self.assertEqual(page.thread, thread)
            page_tops = {c.id for c in page.top_level}
            expected = {r.id for root in page_tops for r in replies.get(root, [])}
            self.assertEqual(sorted(r.id for r in page.replies), sorted(expected))
            times = [r.created_ms for r in page.replies]
            self.assertEqual(times, sorted(times))
            for reply in page.replies:
                self.assertIn(reply.root_id, page_tops)
                self.assertEqual(reply.status, APPROVED)
            listed.extend(page.top_level)
        self.assertEqual(sorted(c.id for c in listed), sorted(c.id for c in tops))
        self.assertEqual({c.id: c for c in listed}, {c.id: c for c in tops})
        for comment in listed:
            self.assertEqual((comment.parent_id, comment.status), (None, APPROVED))
        return listed

    def test_list_thread_newest(self) -> None:
        """NEWEST lists every approved top-level comment once, newest first, with
        the approved replies of each page's comments, oldest first."""
        listed = self.check_thread_listing(Sort.NEWEST)
        times = [c.created_ms for c in listed]
        self.assertEqual(times, sorted(times, reverse=True))

    def test_list_thread_oldest(self) -> None:
        """OLDEST lists every approved top-level comment once, oldest first, with
        the approved replies of each page's comments, oldest first."""
        listed = self.check_thread_listing(Sort.OLDEST)
        times = [c.created_ms for c in listed]
        self.assertEqual(times, sorted(times))

    def test_list_thread_top(self) -> None:
        """TOP lists every approved top-level comment once, most liked first, with
        the approved replies of each page's comments, oldest first."""
        listed = self.check_thread_listing(Sort.TOP)
        likes = [c.like_count for c in listed]
        self.assertEqual(likes, sorted(likes, reverse=True))

    def test_list_thread_counts_approved(self) -> None:
        """The thread's comment count is its approved comments, replies included,
        whatever their place in the tree."""
        tenant_id, thread, tops, replies = self.populate_thread()
        # The approved reply under the pending top-level comment counts too.
        self.assertEqual(thread.comment_count, len(tops) + sum(len(r) for r in replies.values()) + 1)

    def test_list_thread_empty(self) -> None:
        """A thread without approved comments lists one empty, last page."""
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id)
        self.post(tenant.id, thread.id, self.make_author(tenant.id), status=PENDING)
        for sort in Sort:
            page = self.read(self.store.list_thread, tenant.id, thread.id, sort=sort, limit=10, cursor=None)
            self.assertEqual(page, ThreadPage(thread=thread, top_level=[], replies=[], next_cursor=None))

    def test_list_unknown_thread(self) -> None:
        """Listing a thread that does not exist fails with NotFound."""
        tenant = self.make_tenant()
        self.make_thread(tenant.id)
        for sort in Sort:
            self.read_fails(NotFound, self.store.list_thread, tenant.id, UNKNOWN, sort=sort, limit=10, cursor=None)

    def test_comment_count_on_create(self) -> None:
        """Only approved comments count; pending, spam and removed ones do not."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        top = self.post(tenant.id, thread.id, author)
        self.post(tenant.id, thread.id, author, parent_id=top.id)
        for status in (PENDING, SPAM, REMOVED):
            self.post(tenant.id, thread.id, author, status=status)
            self.post(tenant.id, thread.id, author, status=status, parent_id=top.id)
        self.assertEqual(self.comment_count(tenant.id, thread.id), 2)
        self.assertEqual(self.read(self.store.get_thread, tenant.id, thread.url_id).comment_count, 2)

    def test_comment_count_follows_status(self) -> None:
        """Approving a comment adds it to the count, hiding it takes it away, and
        setting the status it already has changes nothing."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comment = self.post(tenant.id, thread.id, author, status=PENDING)
        self.post(tenant.id, thread.id, author)
        steps = [(APPROVED, 2), (APPROVED, 2), (SPAM, 1), (REMOVED, 1), (APPROVED, 2), (PENDING, 1), (PENDING, 1)]
        for status, count in steps:
            self.assertEqual(self.set_status(tenant.id, comment.id, status).status, status)
            self.assertEqual(self.comment_count(tenant.id, thread.id), count, status)

    def test_comment_count_follows_delete(self) -> None:
        """Deleting comments takes away from the count only the approved ones deleted."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        top = self.post(tenant.id, thread.id, author)
        self.post(tenant.id, thread.id, author, parent_id=top.id)
        self.post(tenant.id, thread.id, author, parent_id=top.id, status=PENDING)
        kept = self.post(tenant.id, thread.id, author)
        pending = self.post(tenant.id, thread.id, author, status=PENDING)
        self.assertEqual(self.comment_count(tenant.id, thread.id), 3)
        self.write(self.store.delete_comment(tenant.id, pending.id, read_preference=PRIMARY))
        self.assertEqual(self.comment_count(tenant.id, thread.id), 3)
        self.write(self.store.delete_comment(tenant.id, top.id, read_preference=PRIMARY))
        self.assertEqual(self.comment_count(tenant.id, thread.id), 1)
        self.write(self.store.delete_comment(tenant.id, kept.id, read_preference=PRIMARY))
        self.assertEqual(self.comment_count(tenant.id, thread.id), 0)

    def test_moderation_queue(self) -> None:
        """Listing by status gives exactly the comments of that status, from every
        thread, newest first, each once across pages."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        one, two = self.make_thread(tenant.id, "one"), self.make_thread(tenant.id, "two")
        t = self.tick()
        expected: dict[CommentStatus, list[Comment]] = {status: [] for status in CommentStatus}
        top = self.post(tenant.id, one.id, author, created_ms=t)
        expected[APPROVED].append(top)
        for i, offset in enumerate([1, 3, 3, 3, 2, 5, 3, 0]):
            thread = (one, two)[i % 2]
            status = PENDING if i % 3 else SPAM
            parent = top.id if (i == 4 and thread is one) else None
            expected[status].append(
                self.post(tenant.id, thread.id, author, status=status, created_ms=t + offset, parent_id=parent)
            )
        approved_then_hidden = self.post(tenant.id, two.id, author, created_ms=t + 4)
        expected[REMOVED].append(self.set_status(tenant.id, approved_then_hidden.id, REMOVED))
        for status in CommentStatus:
            listed = self.listed(tenant.id, status, limit=2)
            self.assertEqual(sorted(c.id for c in listed), sorted(c.id for c in expected[status]), status)
            self.assertEqual({c.id: c for c in listed}, {c.id: c for c in expected[status]})
            times = [c.created_ms for c in listed]
            self.assertEqual(times, sorted(times, reverse=True))

    def test_moderation_queue_by_thread(self) -> None:
        """Listing by status and thread gives only that thread's comments, newest first."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        one, two = self.make_thread(tenant.id, "one"), self.make_thread(tenant.id, "two")
        mine = [self.post(tenant.id, one.id, author, status=PENDING) for _ in range(5)]
        self.post(tenant.id, two.id, author, status=PENDING)
        self.post(tenant.id, one.id, author)
        listed = self.listed(tenant.id, PENDING, thread_id=one.id, limit=2)
        self.assertEqual([c.id for c in listed], [c.id for c in reversed(mine)])
        self.assertEqual(
            self.read(self.store.list_comments, tenant.id, status=PENDING, limit=10, cursor=None, thread_id=UNKNOWN),
            Page([], None),
        )

    def test_update_comment_body(self) -> None:
        """Editing the body replaces source and HTML and sets the edit time, and
        leaves everything else as it was."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comment = self.post(tenant.id, thread.id, author, status=PENDING)
        self.like(tenant.id, comment.id, author)
        comment = self.read(self.store.get_comment, tenant.id, comment.id)
        edited_ms = self.tick()
        edited = self.write(
            self.store.update_comment(
                tenant.id,
                comment.id,
                edited_ms=edited_ms,
                read_preference=PRIMARY,
                body=("*new*", "<p><em>new</em></p>"),
            )
        )
        self.assertEqual(
            edited, replace(comment, body_source="*new*", body_html="<p><em>new</em></p>", edited_ms=edited_ms)
        )
        self.assertEqual(self.read(self.store.get_comment, tenant.id, comment.id), edited)

    def test_update_comment_status(self) -> None:
        """Changing the status moves the comment between the moderation queues and
        into or out of the thread listing."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comment = self.post(tenant.id, thread.id, author, status=PENDING)
        approved = self.set_status(tenant.id, comment.id, APPROVED)
        self.assertEqual((approved.status, approved.body_source), (APPROVED, comment.body_source))
        self.assertEqual(self.read(self.store.get_comment, tenant.id, comment.id), approved)
        self.assertEqual(self.listed(tenant.id, PENDING), [])
        self.assertEqual(self.listed(tenant.id, APPROVED), [approved])
        page = self.read(self.store.list_thread, tenant.id, thread.id, sort=Sort.NEWEST, limit=10, cursor=None)
        self.assertEqual(page.top_level, [approved])
        spam = self.set_status(tenant.id, comment.id, SPAM)
        self.assertEqual(self.listed(tenant.id, SPAM), [spam])
        page = self.read(self.store.list_thread, tenant.id, thread.id, sort=Sort.NEWEST, limit=10, cursor=None)
        self.assertEqual(page.top_level, [])

    def test_update_unknown_comment(self) -> None:
        """Updating a comment that does not exist fails with NotFound."""
        tenant = self.make_tenant()
        self.failureResultOf(
            self.store.update_comment(tenant.id, UNKNOWN, edited_ms=self.tick(), read_preference=PRIMARY, status=SPAM),
            NotFound,
        )

    def test_delete_comment_subtree(self) -> None:
        """Deleting a comment deletes every reply beneath it, whatever its status,
        returns how many went, and keeps its siblings and their replies."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        top = self.post(tenant.id, thread.id, author)
        doomed = self.post(tenant.id, thread.id, author, parent_id=top.id)
        below = [
            self.post(tenant.id, thread.id, author, parent_id=doomed.id),
            self.post(tenant.id, thread.id, author, parent_id=doomed.id, status=PENDING),
        ]
        below.append(self.post(tenant.id, thread.id, author, parent_id=below[0].id))
        sibling = self.post(tenant.id, thread.id, author, parent_id=top.id)
        nephew = self.post(tenant.id, thread.id, author, parent_id=sibling.id)
        self.like(tenant.id, below[0].id, author)
        count = self.write(self.store.delete_comment(tenant.id, doomed.id, read_preference=PRIMARY))
        self.assertEqual(count, 4)
        for comment in [doomed, *below]:
            self.read_fails(NotFound, self.store.get_comment, tenant.id, comment.id)
        page = self.read(self.store.list_thread, tenant.id, thread.id, sort=Sort.NEWEST, limit=10, cursor=None)
        self.assertEqual([c.id for c in page.top_level], [top.id])
        self.assertEqual(sorted(c.id for c in page.replies), sorted([sibling.id, nephew.id]))
        self.assertEqual(self.listed(tenant.id, PENDING), [])
        self.assertEqual(self.read(self.store.viewer_state, tenant.id, author, [below[0].id]).liked, frozenset())
        self.assertEqual(self.write(self.store.delete_comment(tenant.id, top.id, read_preference=PRIMARY)), 3)
        self.assertEqual(self.listed(tenant.id, APPROVED), [])

    def test_delete_unknown_comment(self) -> None:
        """Deleting a comment that does not exist fails with NotFound."""
        tenant = self.make_tenant()
        self.failureResultOf(self.store.delete_comment(tenant.id, UNKNOWN, read_preference=PRIMARY), NotFound)

    # Likes, flags, blocks

    def liked_comment(self) -> tuple[str, str, str]:
        """A tenant, a comment and an author who may like it."""
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id)
        comment = self.post(tenant.id, thread.id, self.make_author(tenant.id))
        return tenant.id, comment.id, self.make_author(tenant.id)

    def test_likes(self) -> None:
        """Adding and removing likes returns the new count, which the comment shows."""
        tenant_id, comment_id, voter = self.liked_comment()
        other = self.make_author(tenant_id)
        self.assertEqual(self.like(tenant_id, comment_id, voter), 1)
        self.assertEqual(self.like(tenant_id, comment_id, other), 2)
        self.assertEqual(self.read(self.store.get_comment, tenant_id, comment_id).like_count, 2)
        self.assertEqual(self.write(self.store.remove_like(tenant_id, comment_id, voter, read_preference=PRIMARY)), 1)
        self.assertEqual(self.read(self.store.get_comment, tenant_id, comment_id).like_count, 1)
        self.assertEqual(self.like(tenant_id, comment_id, voter), 2)

    def test_repeated_like(self) -> None:
        """Liking a comment twice fails with AlreadyExists and leaves the count alone."""
        tenant_id, comment_id, voter = self.liked_comment()
        self.like(tenant_id, comment_id, voter)
        self.failureResultOf(
            self.store.add_like(tenant_id, comment_id, voter, created_ms=self.tick(), read_preference=PRIMARY),
            AlreadyExists,
        )
        self.assertEqual(self.read(self.store.get_comment, tenant_id, comment_id).like_count, 1)

    def test_remove_missing_like(self) -> None:
        """Removing a like the voter never gave fails with NotFound and leaves the count alone."""
        tenant_id, comment_id, voter = self.liked_comment()
        other = self.make_author(tenant_id)
        self.like(tenant_id, comment_id, other)
        self.failureResultOf(self.store.remove_like(tenant_id, comment_id, voter, read_preference=PRIMARY), NotFound)
        self.write(self.store.remove_like(tenant_id, comment_id, other, read_preference=PRIMARY))
        self.failureResultOf(self.store.remove_like(tenant_id, comment_id, other, read_preference=PRIMARY), NotFound)
        self.assertEqual(self.read(self.store.get_comment, tenant_id, comment_id).like_count, 0)

    def test_like_unknown_comment_or_voter(self) -> None:
        """Liking a comment that does not exist, or liking as an author that does
        not exist, fails with NotFound."""
        tenant_id, comment_id, voter = self.liked_comment()
        self.failureResultOf(
            self.store.add_like(tenant_id, UNKNOWN, voter, created_ms=self.tick(), read_preference=PRIMARY), NotFound
        )
        self.failureResultOf(
            self.store.add_like(tenant_id, comment_id, UNKNOWN, created_ms=self.tick(), read_preference=PRIMARY),
            NotFound,
        )
        self.failureResultOf(self.store.remove_like(tenant_id, UNKNOWN, voter, read_preference=PRIMARY), NotFound)
        self.assertEqual(self.read(self.store.get_comment, tenant_id, comment_id).like_count, 0)

    def test_flags(self) -> None:
        """Each author may flag a comment once; a second flag fails with
        AlreadyExists and leaves the count alone."""
        tenant_id, comment_id, flagger = self.liked_comment()
        other = self.make_author(tenant_id)
        add = self.store.add_flag
        self.assertEqual(
            self.write(add(tenant_id, comment_id, flagger, created_ms=self.tick(), read_preference=PRIMARY)), 1
        )
        self.assertEqual(
            self.write(add(tenant_id, comment_id, other, created_ms=self.tick(), read_preference=PRIMARY)), 2
        )
        self.failureResultOf(
            add(tenant_id, comment_id, flagger, created_ms=self.tick(), read_preference=PRIMARY), AlreadyExists
        )
        comment = self.read(self.store.get_comment, tenant_id, comment_id)
        self.assertEqual((comment.flag_count, comment.like_count), (2, 0))

    def test_flag_unknown_comment_or_flagger(self) -> None:
        """Flagging a comment that does not exist, or as an author that does not
        exist, fails with NotFound."""
        tenant_id, comment_id, flagger = self.liked_comment()
        add = self.store.add_flag
        self.failureResultOf(
            add(tenant_id, UNKNOWN, flagger, created_ms=self.tick(), read_preference=PRIMARY), NotFound
        )
        self.failureResultOf(
            add(tenant_id, comment_id, UNKNOWN, created_ms=self.tick(), read_preference=PRIMARY), NotFound
        )
        self.assertEqual(self.read(self.store.get_comment, tenant_id, comment_id).flag_count, 0)

    def test_blocks(self) -> None:
        """A block shows in the viewer's state until it is removed."""
        tenant = self.make_tenant()
        viewer, pest, other = (self.make_author(tenant.id) for _ in range(3))
        self.assertIsNone(
            self.write(self.store.add_block(tenant.id, viewer, pest, created_ms=self.tick(), read_preference=PRIMARY))
        )
        self.write(self.store.add_block(tenant.id, viewer, other, created_ms=self.tick(), read_preference=PRIMARY))
        state = self.read(self.store.viewer_state, tenant.id, viewer, [])
        self.assertEqual(state, ViewerState(liked=frozenset(), blocked_authors=frozenset([pest, other])))
        self.assertEqual(self.read(self.store.viewer_state, tenant.id, pest, []).blocked_authors, frozenset())
        self.assertIsNone(self.write(self.store.remove_block(tenant.id, viewer, pest, read_preference=PRIMARY)))
        self.assertEqual(self.read(self.store.viewer_state, tenant.id, viewer, []).blocked_authors, frozenset([other]))

    def test_repeated_block(self) -> None:
        """Blocking the same author twice fails with AlreadyExists."""
        tenant = self.make_tenant()
        viewer, pest = self.make_author(tenant.id), self.make_author(tenant.id)
        self.write(self.store.add_block(tenant.id, viewer, pest, created_ms=self.tick(), read_preference=PRIMARY))
        self.failureResultOf(
            self.store.add_block(tenant.id, viewer, pest, created_ms=self.tick(), read_preference=PRIMARY),
            AlreadyExists,
        )
        self.assertEqual(self.read(self.store.viewer_state, tenant.id, viewer, []).blocked_authors, frozenset([pest]))

    def test_remove_missing_block(self) -> None:
        """Removing a block that does not exist fails with NotFound."""
        tenant = self.make_tenant()
        viewer, pest = self.make_author(tenant.id), self.make_author(tenant.id)
        self.failureResultOf(self.store.remove_block(tenant.id, viewer, pest, read_preference=PRIMARY), NotFound)
        self.write(self.store.add_block(tenant.id, viewer, pest, created_ms=self.tick(), read_preference=PRIMARY))
        self.write(self.store.remove_block(tenant.id, viewer, pest, read_preference=PRIMARY))
        self.failureResultOf(self.store.remove_block(tenant.id, viewer, pest, read_preference=PRIMARY), NotFound)

    def test_block_unknown_author(self) -> None:
        """Blocking an author that does not exist, or as a viewer that does not
        exist, fails with NotFound."""
        tenant = self.make_tenant()
        viewer = self.make_author(tenant.id)
        self.failureResultOf(
            self.store.add_block(tenant.id, viewer, UNKNOWN, created_ms=self.tick(), read_preference=PRIMARY), NotFound
        )
        self.failureResultOf(
            self.store.add_block(tenant.id, UNKNOWN, viewer, created_ms=self.tick(), read_preference=PRIMARY), NotFound
        )
        self.assertEqual(self.read(self.store.viewer_state, tenant.id, viewer, []).blocked_authors, frozenset())

    def test_block_oneself(self) -> None:
        """An author cannot block themselves: InvalidReference."""
        tenant = self.make_tenant()
        viewer = self.make_author(tenant.id)
        self.failureResultOf(
            self.store.add_block(tenant.id, viewer, viewer, created_ms=self.tick(), read_preference=PRIMARY),
            InvalidReference,
        )
        self.assertEqual(self.read(self.store.viewer_state, tenant.id, viewer, []).blocked_authors, frozenset())

    def test_viewer_state_likes(self) -> None:
        """The viewer's state names which of the given comments the viewer likes,
        and nothing the viewer did not like or was not asked about."""
        tenant = self.make_tenant()
        viewer, other = self.make_author(tenant.id), self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comments = [self.post(tenant.id, thread.id, other).id for _ in range(4)]
        for comment_id in comments[:3]:
            self.like(tenant.id, comment_id, viewer)
        self.like(tenant.id, comments[3], other)
        state = self.read(self.store.viewer_state, tenant.id, viewer, [comments[1], comments[2], comments[3], UNKNOWN])
        self.assertEqual(state, ViewerState(liked=frozenset(comments[1:3]), blocked_authors=frozenset()))
        self.assertEqual(self.read(self.store.viewer_state, tenant.id, viewer, []).liked, frozenset())
        self.assertEqual(self.read(self.store.viewer_state, tenant.id, other, comments).liked, frozenset([comments[3]]))

    # Credits

    def test_credit_usage(self) -> None:
        """Usage sums calls and credits per operation over the charges made since
        the given time (inclusive), sorted by operation."""
        tenant = self.make_tenant()
        charge = self.store.charge_credits
        t = self.tick()
        self.write(charge(tenant.id, {"get_thread": (2, 2), "post": (1, 5)}, created_ms=t, read_preference=PRIMARY))
        self.write(charge(tenant.id, {"get_thread": (3, 3)}, created_ms=t + 10, read_preference=PRIMARY))
        self.write(charge(tenant.id, {"delete": (1, 1), "post": (2, 10)}, created_ms=t + 20, read_preference=PRIMARY))
        self.assertEqual(
            self.read(self.store.credit_usage, tenant.id, since_ms=t),
            [CreditUsage("delete", 1, 1), CreditUsage("get_thread", 5, 5), CreditUsage("post", 3, 15)],
        )
        self.assertEqual(
            self.read(self.store.credit_usage, tenant.id, since_ms=t + 10),
            [CreditUsage("delete", 1, 1), CreditUsage("get_thread", 3, 3), CreditUsage("post", 2, 10)],
        )
        self.assertEqual(self.read(self.store.credit_usage, tenant.id, since_ms=t + 21), [])

    def test_credit_usage_per_tenant(self) -> None:
        """A tenant's usage counts only its own charges."""
        mine, theirs = self.make_tenant("Mine"), self.make_tenant("Theirs")
        t = self.tick()
        self.write(self.store.charge_credits(mine.id, {"post": (1, 5)}, created_ms=t, read_preference=PRIMARY))
        self.write(self.store.charge_credits(theirs.id, {"post": (7, 35)}, created_ms=t, read_preference=PRIMARY))
        self.assertEqual(self.read(self.store.credit_usage, mine.id, since_ms=0), [CreditUsage("post", 1, 5)])
        self.write(self.store.charge_credits(mine.id, {}, created_ms=t, read_preference=PRIMARY))
        self.assertEqual(self.read(self.store.credit_usage, mine.id, since_ms=0), [CreditUsage("post", 1, 5)])

    def test_charge_unknown_tenant(self) -> None:
        """Credits cannot be charged to a tenant that does not exist."""
        self.failureResultOf(
            self.store.charge_credits(UNKNOWN, {"post": (1, 5)}, created_ms=self.tick(), read_preference=PRIMARY),
            NotFound,
        )
        self.assertEqual(self.read(self.store.credit_usage, UNKNOWN, since_ms=0), [])

    # Read preference of writes

    def test_writes_need_primary(self) -> None:
        """Every write given NEAREST fails with WrongReadPreference and writes nothing."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        viewer = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id, "u1")
        comment = self.post(tenant.id, thread.id, author)
        key = self.add_key(tenant.id, "k")
        before = (
            self.thread_state(tenant.id, thread.id),
            self.read(self.store.get_tenant, tenant.id),
            self.read(self.store.list_api_keys, tenant.id),
            self.read(self.store.viewer_state, tenant.id, viewer, [comment.id]),
            self.read(self.store.credit_usage, tenant.id, since_ms=0),
            self.read(self.store.list_threads, tenant.id, limit=10, cursor=None),
        )
        t = self.tick()
        s = self.store
        writes: list[Callable[[], Deferred[Any]]] = [
            lambda: s.create_tenant("T", "global", created_ms=t, read_preference=NEAREST),
            lambda: s.update_tenant_settings(tenant.id, {"a": 1}, read_preference=NEAREST),
            lambda: s.add_api_key(tenant.id, key_hash("k2"), created_ms=t, read_preference=NEAREST),
            lambda: s.revoke_api_key(tenant.id, key.id, revoked_ms=t, read_preference=NEAREST),
            lambda: s.create_anonymous_session(tenant.id, created_ms=t, read_preference=NEAREST),
            lambda: s.upsert_user(tenant.id, "sso-1", "Ann", created_ms=t, read_preference=NEAREST),
            lambda: s.upsert_thread(tenant.id, "u2", created_ms=t, read_preference=NEAREST),
            lambda: s.upsert_thread(tenant.id, "u1", created_ms=t, read_preference=NEAREST, title="x", closed=True),
            lambda: s.delete_thread(tenant.id, thread.id, read_preference=NEAREST),
            lambda: s.create_comment(self.new_comment(tenant.id, thread.id, author), read_preference=NEAREST),
            lambda: s.update_comment(tenant.id, comment.id, edited_ms=t, read_preference=NEAREST, status=SPAM),
            lambda: s.delete_comment(tenant.id, comment.id, read_preference=NEAREST),
            lambda: s.add_like(tenant.id, comment.id, viewer, created_ms=t, read_preference=NEAREST),
            lambda: s.add_flag(tenant.id, comment.id, viewer, created_ms=t, read_preference=NEAREST),
            lambda: s.add_block(tenant.id, viewer, author, created_ms=t, read_preference=NEAREST),
            lambda: s.charge_credits(tenant.id, {"post": (1, 1)}, created_ms=t, read_preference=NEAREST),
            lambda: s.update_tenant_settings(
                tenant.id, {}, sso_secret=SsoSecretChange("s" * 32, t), read_preference=NEAREST
            ),
            lambda: s.upsert_thread(tenant.id, "u1", created_ms=t, read_preference=NEAREST, locked_groups=["g"]),
            lambda: s.create_user_session(tenant.id, author, created_ms=t, read_preference=NEAREST),
            lambda: s.claim_author(tenant.id, viewer, author, claimed_ms=t, read_preference=NEAREST),
        ]
        for write in writes:
            self.failureResultOf(write(), WrongReadPreference)
        # remove_like and remove_block need something to remove.
        self.like(tenant.id, comment.id, viewer)
        self.write(self.store.add_block(tenant.id, viewer, author, created_ms=t, read_preference=PRIMARY))
        self.failureResultOf(s.remove_like(tenant.id, comment.id, viewer, read_preference=NEAREST), WrongReadPreference)
        self.failureResultOf(s.remove_block(tenant.id, viewer, author, read_preference=NEAREST), WrongReadPreference)
        self.write(self.store.remove_like(tenant.id, comment.id, viewer, read_preference=PRIMARY))
        self.write(self.store.remove_block(tenant.id, viewer, author, read_preference=PRIMARY))
        after = (
            self.thread_state(tenant.id, thread.id),
            self.read(self.store.get_tenant, tenant.id),
            self.read(self.store.list_api_keys, tenant.id),
            self.read(self.store.viewer_state, tenant.id, viewer, [comment.id]),
            self.read(self.store.credit_usage, tenant.id, since_ms=0),
            self.read(self.store.list_threads, tenant.id, limit=10, cursor=None),
        )
        self.assertEqual(after, before)
        self.read_fails(NotFound, self.store.tenant_for_api_key, key_hash("k2"))

    # Tenant isolation: another tenant's ids are as unknown as made-up ones

    def two_tenants(self) -> tuple[str, dict[str, Any]]:
        """Tenant A with a little data, and tenant B with some of everything.

        :returns: A's id and B's records by name.
        """
        a = self.make_tenant("A")
        a_author = self.make_author(a.id)
        a_thread = self.make_thread(a.id, "https://a.example/1")
        a_comment = self.post(a.id, a_thread.id, a_author)
        b = self.make_tenant("B")
        b_session = self.make_session(b.id)
        b_user = self.write(
            self.store.upsert_user(b.id, "sso-b", "Bea", created_ms=self.tick(), read_preference=PRIMARY)
        )
        b_thread = self.make_thread(b.id, "https://b.example/1", title="B's")
        b_top = self.post(b.id, b_thread.id, b_session.author_id)
        b_reply = self.post(b.id, b_thread.id, b_user.author_id, parent_id=b_top.id)
        b_pending = self.post(b.id, b_thread.id, b_user.author_id, status=PENDING)
        self.like(b.id, b_top.id, b_user.author_id)
        self.write(
            self.store.add_flag(b.id, b_top.id, b_user.author_id, created_ms=self.tick(), read_preference=PRIMARY)
        )
        self.write(
            self.store.add_block(
                b.id, b_user.author_id, b_session.author_id, created_ms=self.tick(), read_preference=PRIMARY
            )
        )
        b_key = self.add_key(b.id, "b-key")
        self.write(self.store.charge_credits(b.id, {"post": (3, 15)}, created_ms=self.tick(), read_preference=PRIMARY))
        return a.id, {
            "tenant": b,
            "a_author": a_author,
            "a_thread": a_thread,
            "a_comment": a_comment,
            "session": b_session,
            "user": b_user,
            "thread": b_thread,
            "top": b_top,
            "reply": b_reply,
            "pending": b_pending,
            "key": b_key,
        }

    def tenant_b_state(self, b: dict[str, Any]) -> tuple[Any, ...]:
        """Everything tenant B can read about its records."""
        tid = b["tenant"].id
        user = b["user"]
        return (
            self.read(self.store.get_tenant, tid),
            self.thread_state(tid, b["thread"].id),
            self.read(self.store.list_threads, tid, limit=10, cursor=None),
            self.read(self.store.get_anonymous_session, tid, b["session"].id),
            self.read(self.store.get_author, tid, b["session"].author_id),
            self.read(self.store.get_author, tid, user.author_id),
            self.read(self.store.viewer_state, tid, user.author_id, [b["top"].id, b["reply"].id]),
            self.read(self.store.list_api_keys, tid),
            self.read(self.store.tenant_for_api_key, key_hash("b-key")),
            self.read(self.store.credit_usage, tid, since_ms=0),
            [self.read(self.store.get_comment, tid, b[name].id) for name in ("top", "reply", "pending")],
        )

    def test_isolation_reads(self) -> None:
        """Reads in tenant A of tenant B's records find nothing."""
        a, b = self.two_tenants()
        self.read_fails(NotFound, self.store.get_anonymous_session, a, b["session"].id)
        for author_id in (b["session"].author_id, b["user"].author_id):
            self.read_fails(NotFound, self.store.get_author, a, author_id)
        self.read_fails(NotFound, self.store.get_thread, a, b["thread"].url_id)
        self.read_fails(NotFound, self.store.get_thread_by_id, a, b["thread"].id)
        for name in ("top", "reply", "pending"):
            self.read_fails(NotFound, self.store.get_comment, a, b[name].id)
        for sort in Sort:
            self.read_fails(NotFound, self.store.list_thread, a, b["thread"].id, sort=sort, limit=10, cursor=None)
        self.assertEqual(
            [t.id for t in self.read(self.store.list_threads, a, limit=10, cursor=None).items], [b["a_thread"].id]
        )
        self.assertEqual([c.id for c in self.listed(a, APPROVED)], [b["a_comment"].id])
        self.assertEqual(self.listed(a, PENDING), [])
        self.assertEqual(self.listed(a, APPROVED, thread_id=b["thread"].id), [])
        self.assertEqual(self.listed(a, PENDING, thread_id=b["thread"].id), [])
        state = self.read(self.store.viewer_state, a, b["user"].author_id, [b["top"].id])
        self.assertEqual(state, ViewerState(liked=frozenset(), blocked_authors=frozenset()))
        self.assertEqual(self.read(self.store.list_api_keys, a), [])
        self.assertEqual(self.read(self.store.credit_usage, a, since_ms=0), [])
        self.assertEqual(self.read(self.store.tenant_for_api_key, key_hash("b-key")).id, b["tenant"].id)

    def test_isolation_comment_writes(self) -> None:
        """Writes in tenant A that name tenant B's thread, comments or authors fail
        with NotFound and leave B's data as it was."""
        a, b = self.two_tenants()
        before = self.tenant_b_state(b)
        a_thread, a_author, a_comment = b["a_thread"], b["a_author"], b["a_comment"]
        a_before = self.thread_state(a, a_thread.id)
        t = self.tick()
        s = self.store
        for new in [
            self.new_comment(a, b["thread"].id, a_author),
            self.new_comment(a, a_thread.id, b["user"].author_id),
            self.new_comment(a, a_thread.id, a_author, parent_id=b["top"].id),
            self.new_comment(a, b["thread"].id, b["user"].author_id, parent_id=b["top"].id),
        ]:
            self.failureResultOf(s.create_comment(new, read_preference=PRIMARY), NotFound)
        for name in ("top", "reply", "pending"):
            comment_id = b[name].id
            self.failureResultOf(
                s.update_comment(a, comment_id, edited_ms=t, read_preference=PRIMARY, body=("x", "<p>x</p>")), NotFound
            )
            self.failureResultOf(
                s.update_comment(a, comment_id, edited_ms=t, read_preference=PRIMARY, status=REMOVED), NotFound
            )
            self.failureResultOf(s.delete_comment(a, comment_id, read_preference=PRIMARY), NotFound)
        self.failureResultOf(s.delete_thread(a, b["thread"].id, read_preference=PRIMARY), NotFound)
        self.assertEqual(self.tenant_b_state(b), before)
        self.assertEqual(self.thread_state(a, a_thread.id), a_before)
        self.assertEqual(self.read(self.store.get_comment, a, a_comment.id), a_comment)

    def test_isolation_votes_and_blocks(self) -> None:
        """Likes, flags and blocks in tenant A that name tenant B's comments or
        authors fail with NotFound and leave B's data as it was."""
        a, b = self.two_tenants()
        before = self.tenant_b_state(b)
        a_author, a_comment = b["a_author"], b["a_comment"]
        b_user, b_anon, top = b["user"].author_id, b["session"].author_id, b["top"].id
        t = self.tick()
        s = self.store
        failing: list[Deferred[Any]] = [
            s.add_like(a, top, a_author, created_ms=t, read_preference=PRIMARY),
            s.add_like(a, top, b_anon, created_ms=t, read_preference=PRIMARY),
            s.add_like(a, a_comment.id, b_user, created_ms=t, read_preference=PRIMARY),
            s.remove_like(a, top, b_user, read_preference=PRIMARY),
            s.add_flag(a, top, a_author, created_ms=t, read_preference=PRIMARY),
            s.add_flag(a, top, b_anon, created_ms=t, read_preference=PRIMARY),
            s.add_flag(a, a_comment.id, b_user, created_ms=t, read_preference=PRIMARY),
            s.add_block(a, a_author, b_anon, created_ms=t, read_preference=PRIMARY),
            s.add_block(a, b_user, a_author, created_ms=t, read_preference=PRIMARY),
            s.add_block(a, b_anon, b_user, created_ms=t, read_preference=PRIMARY),
            s.remove_block(a, b_user, b_anon, read_preference=PRIMARY),
        ]
        for d in failing:
            self.failureResultOf(d, NotFound)
        self.assertEqual(self.tenant_b_state(b), before)
        self.assertEqual(self.read(self.store.get_comment, a, a_comment.id), a_comment)
        for author in (a_author, b_user, b_anon):
            self.assertEqual(
                self.read(self.store.viewer_state, a, author, [a_comment.id, top]),
                ViewerState(liked=frozenset(), blocked_authors=frozenset()),
            )

    def test_list_tenants(self) -> None:
        """Every tenant is listed, oldest first, whatever its deployment."""
        self.assertEqual(self.read(self.store.list_tenants), [])
        first = self.make_tenant("First")
        second = self.make_tenant("Second", "eu")
        self.assertEqual(self.read(self.store.list_tenants), [first, second])

    def test_delete_tenant(self) -> None:
        """Deleting tenant B removes B and every row of it (keys, authors,
        sessions, users, threads, comments, votes, flags, blocks, credits,
        bans and the moderation log),
        counted per table; tenant A reads exactly as before."""
        a, b = self.two_tenants()
        a_before = (
            self.read(self.store.get_tenant, a),
            self.thread_state(a, b["a_thread"].id),
            self.read(self.store.get_author, a, b["a_author"]),
        )
        tid = b["tenant"].id
        # A ban writes a ban row and its audit entry.
        self.write(
            self.store.add_ban(
                tid,
                BanKind.ADDRESS,
                "0" * 64,
                actor="test",
                reason="spam",
                created_ms=self.tick(),
                read_preference=PRIMARY,
            )
        )
        webhooks = {}
        if IWebhookStore.providedBy(self.store):
            # An endpoint and the delivery of the thread closing.
            self.make_webhook(tid, [WebhookEvent.THREAD_CLOSED])
            self.make_thread(tid, b["thread"].url_id, closed=True)
            webhooks = {"webhook_deliveries": 1, "webhook_endpoints": 1}
        deleted = self.write(self.store.delete_tenant(tid, read_preference=PRIMARY))
        self.assertEqual(
            dict(deleted),
            webhooks
            | {
                # Tenant B has no SSO data (their deletion is checked by
                # tests.unit.store.test_schema.TenantTablesTests).
                "author_claims": 0,
                "thread_access": 0,
                "user_profiles": 0,
                "tenant_sso_secrets": 0,
                "vote_addresses": 0,
                "moderation_log": 1,
                "bans": 1,
                "votes": 1,
                "flags": 1,
                "blocks": 1,
                "comments": 3,
                "threads": 1,
                "users": 1,
                "anonymous_sessions": 1,
                "authors": 2,
                "api_keys": 1,
                "credit_ledger": 1,
                "tenants": 1,
            },
        )
        self.read_fails(NotFound, self.store.get_tenant, tid)
        self.read_fails(NotFound, self.store.tenant_for_api_key, key_hash("b-key"))
        self.read_fails(NotFound, self.store.get_thread_by_id, tid, b["thread"].id)
        self.read_fails(NotFound, self.store.get_anonymous_session, tid, b["session"].id)
        self.read_fails(NotFound, self.store.get_author, tid, b["user"].author_id)
        for name in ("top", "reply", "pending"):
            self.read_fails(NotFound, self.store.get_comment, tid, b[name].id)
        self.assertEqual(self.read(self.store.list_api_keys, tid), [])
        self.assertEqual(self.read(self.store.credit_usage, tid, since_ms=0), [])
        self.assertEqual([t.id for t in self.read(self.store.list_tenants)], [a])
        self.assertEqual(
            (
                self.read(self.store.get_tenant, a),
                self.thread_state(a, b["a_thread"].id),
                self.read(self.store.get_author, a, b["a_author"]),
            ),
            a_before,
        )
        # The tenant's id is free of leftovers: nothing is found under it.
        self.failureResultOf(self.store.delete_tenant(tid, read_preference=PRIMARY), NotFound)

    def test_delete_tenant_is_a_write(self) -> None:
        """Deleting a tenant goes to the primary: NEAREST is refused."""
        tenant = self.make_tenant()
        self.failureResultOf(self.store.delete_tenant(tenant.id, read_preference=NEAREST), WrongReadPreference)
        self.assertEqual(self.read(self.store.get_tenant, tenant.id), tenant)

    def test_isolation_tenant_records(self) -> None:
        """Writes in tenant A that reuse tenant B's API key, SSO user or thread URL
        act on A's own records only and leave B's data as it was."""
        a, b = self.two_tenants()
        before = self.tenant_b_state(b)
        t = self.tick()
        s = self.store
        self.failureResultOf(s.revoke_api_key(a, b["key"].id, revoked_ms=t, read_preference=PRIMARY), NotFound)
        user = self.write(s.upsert_user(a, "sso-b", "Mallory", created_ms=t, read_preference=PRIMARY))
        self.assertEqual(user.tenant_id, a)
        self.assertNotEqual((user.id, user.author_id), (b["user"].id, b["user"].author_id))
        thread = self.write(
            s.upsert_thread(a, b["thread"].url_id, created_ms=t, read_preference=PRIMARY, title="Hijack", closed=True)
        )
        self.assertEqual(thread.tenant_id, a)
        self.assertNotEqual(thread.id, b["thread"].id)
        self.write(s.update_tenant_settings(a, {"moderation": "pre"}, read_preference=PRIMARY))
        self.write(s.charge_credits(a, {"post": (1, 5)}, created_ms=t, read_preference=PRIMARY))
        self.add_key(a, "a-key")
        self.make_session(a)
        self.assertEqual(self.tenant_b_state(b), before)
        self.assertEqual(self.read(self.store.get_author, a, user.author_id).tenant_id, a)
        self.assertEqual(self.read(self.store.tenant_for_api_key, key_hash("a-key")).id, a)
        self.assertEqual(self.read(self.store.credit_usage, a, since_ms=0), [CreditUsage("post", 1, 5)])

    # Moderation: the queue, bulk actions, bans, the audit log

    def flag_times(self, tenant_id: str, comment_id: str, n: int, hide_at: int | None = None) -> int:
        """Flag a comment ``n`` times, by ``n`` new authors; returns the count."""
        count = 0
        for _ in range(n):
            flagger = self.make_author(tenant_id)
            count = self.write(
                self.store.add_flag(
                    tenant_id, comment_id, flagger, created_ms=self.tick(), read_preference=PRIMARY, hide_at=hide_at
                )
            )
        return count

    def queue(
        self,
        tenant_id: str,
        queue: ModerationQueue,
        sort: QueueSort = QueueSort.OLDEST,
        limit: int = 2,
        **filters: Any,
    ) -> list[Comment]:
        """Every comment of a moderation queue, following cursors."""
        pages = self.all_pages(
            lambda cursor: self.read(
                self.store.moderation_queue,
                tenant_id,
                queue=queue,
                sort=sort,
                limit=limit,
                cursor=cursor,
                filters=QueueFilter(**filters),
            ),
            limit,
        )
        return [c for page in pages for c in page.items]

    def moderate(self, tenant_id: str, action: ModerationAction, ids: Sequence[str], **kwargs: Any) -> Moderated:
        kwargs.setdefault("reason", "")
        return self.write(
            self.store.moderate(
                tenant_id, action, ids, actor="mod-1", created_ms=self.tick(), read_preference=PRIMARY, **kwargs
            )
        )

    def audit(self, tenant_id: str, limit: int = 2) -> list[AuditEntry]:
        pages = self.all_pages(
            lambda cursor: self.read(self.store.audit_log, tenant_id, limit=limit, cursor=cursor), limit
        )
        return [e for page in pages for e in page.items]

    def test_queue_oldest_first(self) -> None:
        """The pending, spam and removed queues hold exactly the comments of that
        status from every thread, oldest first, each once across pages."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        one, two = self.make_thread(tenant.id, "one"), self.make_thread(tenant.id, "two")
        t = self.tick()
        expected: dict[ModerationQueue, list[Comment]] = {q: [] for q in ModerationQueue}
        for i, offset in enumerate([5, 3, 3, 1, 4, 0, 3]):
            status = (PENDING, SPAM, PENDING)[i % 3]
            made = self.post(tenant.id, (one, two)[i % 2].id, author, status=status, created_ms=t + offset)
            expected[ModerationQueue(status.value)].append(made)
        self.post(tenant.id, one.id, author)
        gone = self.set_status(tenant.id, self.post(tenant.id, two.id, author).id, REMOVED)
        expected[ModerationQueue.REMOVED].append(gone)
        for q in (ModerationQueue.PENDING, ModerationQueue.SPAM, ModerationQueue.REMOVED):
            listed = self.queue(tenant.id, q)
            want = sorted(expected[q], key=lambda c: (c.created_ms, c.id))
            self.assertEqual(listed, want, q)
        self.assertEqual(self.queue(tenant.id, ModerationQueue.FLAGGED), [])

    def test_queue_most_flagged(self) -> None:
        """The flagged queue holds approved and pending comments with flags,
        most flagged first and then oldest first; spam and removed ones are
        in their own queues."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        made = [self.post(tenant.id, thread.id, author, status=(APPROVED, PENDING)[i % 2]) for i in range(6)]
        for comment, n in zip(made, [1, 3, 0, 3, 2, 1], strict=True):
            self.flag_times(tenant.id, comment.id, n)
        spam = self.post(tenant.id, thread.id, author, status=SPAM)
        self.flag_times(tenant.id, spam.id, 5)
        listed = self.queue(tenant.id, ModerationQueue.FLAGGED, QueueSort.MOST_FLAGGED)
        self.assertEqual([c.id for c in listed], [made[i].id for i in (1, 3, 4, 0, 5)])
        self.assertEqual([c.flag_count for c in listed], [3, 3, 2, 1, 1])
        oldest = self.queue(tenant.id, ModerationQueue.FLAGGED, QueueSort.OLDEST)
        self.assertEqual([c.id for c in oldest], [made[i].id for i in (0, 1, 3, 4, 5)])

    def test_queue_filters(self) -> None:
        """The queue narrows by thread, author, creation time and a
        case-insensitive text search in which % and _ are plain characters."""
        tenant = self.make_tenant()
        ann, bob = self.make_author(tenant.id), self.make_author(tenant.id)
        one, two = self.make_thread(tenant.id, "one"), self.make_thread(tenant.id, "two")
        a = self.post(tenant.id, one.id, ann, status=PENDING, body="Buy CHEAP pills")
        b = self.post(tenant.id, two.id, ann, status=PENDING, body="100% cheap_stuff")
        c = self.post(tenant.id, one.id, bob, status=PENDING, body="A fine remark")
        q = ModerationQueue.PENDING
        self.assertEqual(self.queue(tenant.id, q, thread_id=one.id), [a, c])
        self.assertEqual(self.queue(tenant.id, q, author_id=ann), [a, b])
        self.assertEqual(self.queue(tenant.id, q, author_id=ann, thread_id=two.id), [b])
        self.assertEqual(self.queue(tenant.id, q, since_ms=b.created_ms), [b, c])
        self.assertEqual(self.queue(tenant.id, q, until_ms=b.created_ms), [a])
        self.assertEqual(self.queue(tenant.id, q, since_ms=b.created_ms, until_ms=c.created_ms), [b])
        self.assertEqual(self.queue(tenant.id, q, text="cheap"), [a, b])
        self.assertEqual(self.queue(tenant.id, q, text="0% c"), [b])
        self.assertEqual(self.queue(tenant.id, q, text="p_s"), [b])
        self.assertEqual(self.queue(tenant.id, q, text="%"), [b])
        self.assertEqual(self.queue(tenant.id, q, text="nothing like it"), [])
        self.assertEqual(self.queue(tenant.id, q, thread_id=UNKNOWN), [])

    def test_queue_text_escape_character(self) -> None:
        """The search's own escape character ('/') is a plain character
        too: "/" finds the text holding one, and "/%" no text with just %."""
        tenant = self.make_tenant()
        ann = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id, "one")
        half = self.post(tenant.id, thread.id, ann, status=PENDING, body="Half/price today")
        cent = self.post(tenant.id, thread.id, ann, status=PENDING, body="100% off")
        q = ModerationQueue.PENDING
        self.assertEqual(self.queue(tenant.id, q, text="/"), [half])
        self.assertEqual(self.queue(tenant.id, q, text="F/P"), [half])
        self.assertEqual(self.queue(tenant.id, q, text="/%"), [])
        self.assertEqual(self.queue(tenant.id, q, text="0%"), [cent])

    def test_queue_cursor_of_another_queue(self) -> None:
        """A queue cursor is refused by another queue, another sort and the
        other listings, and theirs by the queue."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        for _ in range(3):
            self.flag_times(tenant.id, self.post(tenant.id, thread.id, author, status=PENDING).id, 1)
        page = self.read(
            self.store.moderation_queue,
            tenant.id,
            queue=ModerationQueue.PENDING,
            sort=QueueSort.OLDEST,
            limit=1,
            cursor=None,
        )
        assert page.next_cursor is not None
        for queue, sort in [
            (ModerationQueue.FLAGGED, QueueSort.OLDEST),
            (ModerationQueue.PENDING, QueueSort.MOST_FLAGGED),
        ]:
            self.read_fails(
                BadCursor,
                self.store.moderation_queue,
                tenant.id,
                queue=queue,
                sort=sort,
                limit=1,
                cursor=page.next_cursor,
            )
        self.read_fails(
            BadCursor, self.store.list_comments, tenant.id, status=PENDING, limit=1, cursor=page.next_cursor
        )
        other = self.read(self.store.list_comments, tenant.id, status=PENDING, limit=1, cursor=None).next_cursor
        self.read_fails(
            BadCursor,
            self.store.moderation_queue,
            tenant.id,
            queue=ModerationQueue.PENDING,
            sort=QueueSort.OLDEST,
            limit=1,
            cursor=other,
        )
        self.read_fails(BadCursor, self.store.audit_log, tenant.id, limit=1, cursor=other)
        self.read_fails(BadCursor, self.store.list_bans, tenant.id, active_at_ms=None, limit=1, cursor=other)

    def test_moderate_approve_remove_spam_restore(self) -> None:
        """Bulk actions change every named comment, keep the threads' counts
        right, say what changed (before and after), and leave the rest alone;
        approving clears flags; restoring touches only removed and spam ones."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        one, two = self.make_thread(tenant.id, "one"), self.make_thread(tenant.id, "two")
        pending = [self.post(tenant.id, (one, two)[i % 2].id, author, status=PENDING) for i in range(4)]
        flagged = self.post(tenant.id, one.id, author)
        self.flag_times(tenant.id, flagged.id, 2)
        flagged = self.read(self.store.get_comment, tenant.id, flagged.id)
        other = self.post(tenant.id, two.id, author, status=PENDING)
        done = self.moderate(tenant.id, ModerationAction.APPROVE, [p.id for p in pending] + [flagged.id])
        self.assertEqual([before.id for before, _ in done.changed], [p.id for p in pending] + [flagged.id])
        self.assertEqual([before for before, _ in done.changed], pending + [flagged])
        self.assertEqual({(after.status, after.flag_count) for _, after in done.changed}, {(APPROVED, 0)})
        for _, after in done.changed:
            self.assertEqual(self.read(self.store.get_comment, tenant.id, after.id), after)
        self.assertEqual((self.comment_count(tenant.id, one.id), self.comment_count(tenant.id, two.id)), (3, 2))
        self.assertEqual(self.queue(tenant.id, ModerationQueue.FLAGGED), [])
        self.assertEqual(self.queue(tenant.id, ModerationQueue.PENDING), [other])
        # Flags cleared: the same readers may flag it again.
        self.assertEqual(self.flag_times(tenant.id, flagged.id, 1), 1)
        self.moderate(tenant.id, ModerationAction.REMOVE, [pending[0].id, pending[1].id])
        self.moderate(tenant.id, ModerationAction.SPAM, [pending[2].id])
        self.assertEqual((self.comment_count(tenant.id, one.id), self.comment_count(tenant.id, two.id)), (1, 1))
        restored = self.moderate(tenant.id, ModerationAction.RESTORE, [pending[0].id, pending[2].id, other.id])
        self.assertEqual([before.id for before, _ in restored.changed], [pending[0].id, pending[2].id])
        self.assertEqual(self.read(self.store.get_comment, tenant.id, other.id), other)
        self.assertEqual((self.comment_count(tenant.id, one.id), self.comment_count(tenant.id, two.id)), (3, 1))
        self.assertEqual(self.queue(tenant.id, ModerationQueue.REMOVED), [replace(pending[1], status=REMOVED)])

    def test_moderate_refuses_another_tenants_ids(self) -> None:
        """A bulk call naming one comment of another tenant among its own is
        refused whole: nothing changes in either tenant, nothing is logged."""
        a, b = self.two_tenants()
        own = self.post(a, b["a_thread"].id, b["a_author"], status=PENDING)
        before = (self.tenant_b_state(b), self.thread_state(a, b["a_thread"].id))
        for action in ModerationAction:
            self.failureResultOf(
                self.store.moderate(
                    a,
                    action,
                    [own.id, b["pending"].id],
                    actor="mod",
                    reason="",
                    created_ms=self.tick(),
                    read_preference=PRIMARY,
                ),
                NotFound,
            )
        self.failureResultOf(
            self.store.add_ban(
                a,
                BanKind.AUTHOR,
                b["user"].author_id,
                actor="mod",
                reason="",
                created_ms=self.tick(),
                read_preference=PRIMARY,
            ),
            NotFound,
        )
        self.assertEqual((self.tenant_b_state(b), self.thread_state(a, b["a_thread"].id)), before)
        self.assertEqual(self.audit(a), [])
        self.assertEqual(self.audit(b["tenant"].id), [])
        self.assertEqual(self.read(self.store.list_bans, a, active_at_ms=None, limit=10, cursor=None).items, [])

    def test_moderate_refuses_bad_id_lists(self) -> None:
        """No ids, 501 ids and repeated ids are refused and change nothing."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comment = self.post(tenant.id, thread.id, author, status=PENDING)
        before = self.thread_state(tenant.id, thread.id)
        for ids in ([], [comment.id] * 2, [comment.id] + [UNKNOWN[:-3] + "%03d" % i for i in range(500)]):
            self.failureResultOf(
                self.store.moderate(
                    tenant.id,
                    ModerationAction.APPROVE,
                    ids,
                    actor="mod",
                    reason="",
                    created_ms=self.tick(),
                    read_preference=PRIMARY,
                ),
                InvalidReference,
            )
        self.assertEqual(self.thread_state(tenant.id, thread.id), before)
        self.assertEqual(self.audit(tenant.id), [])

    def test_moderate_five_hundred(self) -> None:
        """500 ids in one call are fine."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        t = self.tick()
        rows = [self.new_comment(tenant.id, thread.id, author, status=PENDING, created_ms=t + i) for i in range(500)]
        made = [self.write(self.store.create_comment(new, read_preference=PRIMARY)) for new in rows]
        done = self.moderate(tenant.id, ModerationAction.APPROVE, [c.id for c in made])
        self.assertEqual(len(done.changed), 500)
        self.assertEqual(self.comment_count(tenant.id, thread.id), 500)

    def test_ban_authors_from_comments(self) -> None:
        """Banning from comments bans each author once and removes the named
        comments, or all of the authors' comments when asked; a ban in force
        is found by author, listed, and ends when lifted or expired."""
        tenant = self.make_tenant()
        ann, bob, cid = self.make_author(tenant.id), self.make_author(tenant.id), self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        a1, a2 = self.post(tenant.id, thread.id, ann), self.post(tenant.id, thread.id, ann)
        b1, b2 = self.post(tenant.id, thread.id, bob), self.post(tenant.id, thread.id, bob, status=PENDING)
        keep = self.post(tenant.id, thread.id, cid)
        done = self.moderate(tenant.id, ModerationAction.BAN, [a1.id], reason="abuse")
        self.assertEqual([b.value for b in done.bans], [ann])
        self.assertEqual([after.status for _, after in done.changed], [REMOVED])
        self.assertEqual(self.read(self.store.get_comment, tenant.id, a2.id), a2)
        later = self.tick()
        expiring = self.moderate(
            tenant.id, ModerationAction.BAN, [b1.id], remove_all=True, ban_expires_ms=later + 60_000
        )
        self.assertEqual({before.id for before, _ in expiring.changed}, {b1.id, b2.id})
        self.assertEqual(self.comment_count(tenant.id, thread.id), 2)
        self.assertEqual(self.read(self.store.get_comment, tenant.id, keep.id), keep)

        def found(author: str, at: int) -> Ban | None:
            return self.read(self.store.find_ban, tenant.id, author_id=author, address_hash=None, now_ms=at)

        self.assertEqual(found(ann, later), done.bans[0])
        self.assertEqual(found(bob, later + 59_999), expiring.bans[0])
        self.assertIsNone(found(bob, later + 60_000))
        self.assertIsNone(found(cid, later))
        listed = self.read(self.store.list_bans, tenant.id, active_at_ms=later + 60_000, limit=10, cursor=None)
        self.assertEqual(listed.items, [done.bans[0]])
        lifted = self.write(
            self.store.lift_ban(
                tenant.id,
                done.bans[0].id,
                actor="mod-2",
                reason="appeal",
                lifted_ms=self.tick(),
                read_preference=PRIMARY,
            )
        )
        self.assertIsNotNone(lifted.lifted_ms)
        self.assertIsNone(found(ann, self.tick()))
        everything = self.read(self.store.list_bans, tenant.id, active_at_ms=None, limit=10, cursor=None)
        self.assertEqual(everything.items, [expiring.bans[0], lifted])
        self.failureResultOf(
            self.store.lift_ban(
                tenant.id, lifted.id, actor="mod", reason="", lifted_ms=self.tick(), read_preference=PRIMARY
            ),
            NotFound,
        )

    def test_ban_expiry_in_the_past(self) -> None:
        """A ban that would end before (or as) it begins is refused and
        leaves nothing behind."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comment = self.post(tenant.id, thread.id, author)
        t = self.tick()
        for expires in (t, t - 1):
            self.failureResultOf(
                self.store.add_ban(
                    tenant.id,
                    BanKind.AUTHOR,
                    author,
                    actor="mod",
                    reason="",
                    created_ms=t,
                    expires_ms=expires,
                    read_preference=PRIMARY,
                ),
                InvalidReference,
            )
            self.failureResultOf(
                self.store.moderate(
                    tenant.id,
                    ModerationAction.BAN,
                    [comment.id],
                    actor="mod",
                    reason="",
                    created_ms=t,
                    ban_expires_ms=expires,
                    read_preference=PRIMARY,
                ),
                InvalidReference,
            )
        self.assertEqual(self.read(self.store.list_bans, tenant.id, active_at_ms=None, limit=10, cursor=None).items, [])
        self.assertEqual(self.read(self.store.get_comment, tenant.id, comment.id), comment)
        self.assertEqual(self.audit(tenant.id), [])

    def test_address_ban(self) -> None:
        """An address ban is found by its hash, pages newest first with the
        others, and cannot remove comments (addresses are not kept on them)."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        bans = []
        for i in range(3):
            done = self.write(
                self.store.add_ban(
                    tenant.id,
                    BanKind.ADDRESS if i != 1 else BanKind.AUTHOR,
                    "h" * 64 if i != 1 else author,
                    actor="mod",
                    reason="r",
                    created_ms=self.tick(),
                    read_preference=PRIMARY,
                )
            )
            self.assertEqual(done.changed, [])
            bans.append(done.bans[0])
        got = self.read(self.store.find_ban, tenant.id, author_id=UNKNOWN, address_hash="h" * 64, now_ms=self.tick())
        self.assertEqual(got, bans[0])
        pages = self.all_pages(
            lambda cursor: self.read(self.store.list_bans, tenant.id, active_at_ms=None, limit=2, cursor=cursor), 2
        )
        self.assertEqual([b for p in pages for b in p.items], bans[::-1])
        self.failureResultOf(
            self.store.add_ban(
                tenant.id,
                BanKind.ADDRESS,
                "h" * 64,
                actor="mod",
                reason="",
                created_ms=self.tick(),
                remove_all=True,
                read_preference=PRIMARY,
            ),
            InvalidReference,
        )

    def test_audit_log(self) -> None:
        """Every moderator action is in the audit log with who, what, which
        ids, when and why, newest first across pages."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        one, two = self.post(tenant.id, thread.id, author, status=PENDING), self.post(tenant.id, thread.id, author)
        approved = self.moderate(tenant.id, ModerationAction.APPROVE, [one.id], reason="fine")
        removed = self.moderate(tenant.id, ModerationAction.REMOVE, [two.id, one.id], reason="off topic")
        banned = self.moderate(tenant.id, ModerationAction.BAN, [two.id], reason="troll", remove_all=True)
        lifted_ms = self.tick()
        self.write(
            self.store.lift_ban(
                tenant.id,
                banned.bans[0].id,
                actor="mod-2",
                reason="appeal",
                lifted_ms=lifted_ms,
                read_preference=PRIMARY,
            )
        )
        entries = self.audit(tenant.id)
        self.assertEqual(entries[1:], [banned.entry, removed.entry, approved.entry])
        self.assertEqual(
            [(e.actor, e.action, tuple(e.comment_ids), tuple(e.ban_ids), e.reason) for e in entries],
            [
                ("mod-2", "lift_ban", (), (banned.bans[0].id,), "appeal"),
                ("mod-1", "ban", (two.id,), (banned.bans[0].id,), "troll"),
                ("mod-1", "remove", (two.id, one.id), (), "off topic"),
                ("mod-1", "approve", (one.id,), (), "fine"),
            ],
        )
        self.assertEqual(entries[0].created_ms, lifted_ms)
        self.assertEqual(self.audit(self.make_tenant().id), [])

    def test_flags_auto_hide(self) -> None:
        """At the threshold a flagged approved comment is hidden for review in
        the same write: off the thread and its count, in the pending and
        flagged queues, with an audit entry; below it nothing happens."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comment = self.post(tenant.id, thread.id, author)
        self.assertEqual(self.flag_times(tenant.id, comment.id, 2, hide_at=3), 2)
        self.assertEqual(self.read(self.store.get_comment, tenant.id, comment.id).status, APPROVED)
        self.assertEqual(self.flag_times(tenant.id, comment.id, 1, hide_at=3), 3)
        hidden = self.read(self.store.get_comment, tenant.id, comment.id)
        self.assertEqual((hidden.status, hidden.flag_count), (PENDING, 3))
        self.assertEqual(self.comment_count(tenant.id, thread.id), 0)
        self.assertEqual(self.queue(tenant.id, ModerationQueue.PENDING), [hidden])
        self.assertEqual(self.queue(tenant.id, ModerationQueue.FLAGGED), [hidden])
        self.assertEqual(
            [(e.actor, e.action, tuple(e.comment_ids)) for e in self.audit(tenant.id)],
            [("auto", "auto_hide", (comment.id,))],
        )
        # Flagged further while hidden: no second entry.
        self.flag_times(tenant.id, comment.id, 1, hide_at=3)
        self.assertEqual(len(self.audit(tenant.id)), 1)
        # A moderator's approval clears the flags; it stays up until flagged again.
        self.moderate(tenant.id, ModerationAction.APPROVE, [comment.id])
        self.assertEqual(self.flag_times(tenant.id, comment.id, 2, hide_at=3), 2)
        self.assertEqual(self.comment_count(tenant.id, thread.id), 1)

    def test_likes_per_address(self) -> None:
        """Likes of one comment from one address stop at the bound, whatever
        the sessions; other addresses and other comments are unaffected; an
        unlike frees its place."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comment, other = self.post(tenant.id, thread.id, author), self.post(tenant.id, thread.id, author)
        s = self.store

        def like(comment_id: str, voter: str, address: str) -> Deferred[Written[int]]:
            return s.add_like(
                tenant.id,
                comment_id,
                voter,
                created_ms=self.tick(),
                read_preference=PRIMARY,
                address_hash=address,
                max_per_address=2,
            )

        voters = [self.make_author(tenant.id) for _ in range(4)]
        self.assertEqual(self.write(like(comment.id, voters[0], "a" * 64)), 1)
        self.assertEqual(self.write(like(comment.id, voters[1], "a" * 64)), 2)
        self.failureResultOf(like(comment.id, voters[2], "a" * 64), LimitReached)
        self.assertEqual(self.read(self.store.get_comment, tenant.id, comment.id).like_count, 2)
        self.assertEqual(self.write(like(comment.id, voters[2], "b" * 64)), 3)
        self.assertEqual(self.write(like(other.id, voters[3], "a" * 64)), 1)
        self.write(s.remove_like(tenant.id, comment.id, voters[0], read_preference=PRIMARY))
        self.assertEqual(self.write(like(comment.id, voters[3], "a" * 64)), 3)

    def test_moderation_writes_need_primary(self) -> None:
        """Moderation writes given NEAREST fail with WrongReadPreference and
        write nothing."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comment = self.post(tenant.id, thread.id, author, status=PENDING)
        ban = self.write(
            self.store.add_ban(
                tenant.id, BanKind.AUTHOR, author, actor="m", reason="", created_ms=self.tick(), read_preference=PRIMARY
            )
        ).bans[0]
        before = (self.thread_state(tenant.id, thread.id), self.audit(tenant.id))
        t = self.tick()
        s = self.store
        for d in [
            s.moderate(
                tenant.id,
                ModerationAction.APPROVE,
                [comment.id],
                actor="m",
                reason="",
                created_ms=t,
                read_preference=NEAREST,
            ),
            s.add_ban(tenant.id, BanKind.ADDRESS, "x", actor="m", reason="", created_ms=t, read_preference=NEAREST),
            s.lift_ban(tenant.id, ban.id, actor="m", reason="", lifted_ms=t, read_preference=NEAREST),
        ]:
            self.failureResultOf(d, WrongReadPreference)
        self.assertEqual((self.thread_state(tenant.id, thread.id), self.audit(tenant.id)), before)

    def test_audit_log_same_millisecond(self) -> None:
        """Entries made in the same millisecond still list newest first, each
        once across pages."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comments = [self.post(tenant.id, thread.id, author, status=PENDING) for _ in range(5)]
        t = self.tick()
        made = [
            self.write(
                self.store.moderate(
                    tenant.id,
                    ModerationAction.APPROVE,
                    [c.id],
                    actor="m",
                    reason="",
                    created_ms=t,
                    read_preference=PRIMARY,
                )
            ).entry
            for c in comments
        ]
        self.assertEqual(self.audit(tenant.id), made[::-1])


class WebhookContractMixin(StoreContractMixin):
    """The webhook endpoints and outbox (``IWebhookStore``), for the
    backends that keep one (SQLite and PostgreSQL; the MongoDB backend has
    no outbox: docs/webhooks.md). A backend's test class mixes this in
    instead of :class:`StoreContractMixin` (or beside
    ``WriteContractMixin``)."""

    def webhook_store(self) -> Any:
        """The store as an ``IWebhookStore`` (a backend mixing this suite
        in must provide it)."""
        verifyObject(IWebhookStore, self.store)
        return self.store

    def deliveries(self, tenant_id: str, webhook_id: str, state: DeliveryState = DeliveryState.PENDING) -> list[Any]:
        page = self.read(
            self.webhook_store().list_webhook_deliveries,
            tenant_id,
            webhook_id,
            state=state,
            limit=100,
            cursor=None,
        )
        return list(page.items)

    def claim(self, owner: str, now_ms: int, *, limit: int = 10, lease_ms: int = 10_000_000) -> list[Any]:
        claim = self.successResultOf(
            self.webhook_store().claim_webhook_deliveries(
                owner=owner, now_ms=now_ms, lease_ms=lease_ms, limit=limit, read_preference=PRIMARY
            )
        )
        self.assertEqual(claim.finished, [])
        return list(claim.deliveries)

    def finish(self, *done: DeliveryDone) -> list[int]:
        """Remove accepted deliveries (a claim of nothing more); the seqs removed."""
        claim = self.successResultOf(
            self.webhook_store().claim_webhook_deliveries(
                owner="finisher", now_ms=0, lease_ms=0, limit=0, read_preference=PRIMARY, finished=done
            )
        )
        self.assertEqual(claim.deliveries, [])
        return list(claim.finished)

    def test_webhook_endpoints(self) -> None:
        """Endpoints are created, read, listed, changed and deleted per
        tenant; the secret never comes back; another tenant's id is unknown."""
        store = self.webhook_store()
        tenant = self.make_tenant()
        other = self.make_tenant("Other")
        hook = self.make_webhook(tenant.id, [WebhookEvent.COMMENT_CREATED, WebhookEvent.AUTHOR_BANNED])
        self.assertEqual(hook.events, (WebhookEvent.AUTHOR_BANNED, WebhookEvent.COMMENT_CREATED))
        self.assertNotIn("secret", repr(hook).replace("secret_set_ms", ""))
        self.assertEqual(self.read(store.get_webhook, tenant.id, hook.id), hook)
        self.assertEqual(self.read(store.list_webhooks, tenant.id), [hook])
        self.assertEqual(self.read(store.list_webhooks, other.id), [])
        self.read_fails(NotFound, store.get_webhook, other.id, hook.id)
        later = self.tick()
        changed = self.write(
            store.update_webhook(
                tenant.id,
                hook.id,
                updated_ms=later,
                read_preference=PRIMARY,
                secret="t" * 32,
                events=[WebhookEvent.THREAD_CLOSED],
                active=False,
            )
        )
        self.assertEqual(
            changed,
            replace(hook, events=(WebhookEvent.THREAD_CLOSED,), active=False, updated_ms=later, secret_set_ms=later),
        )
        self.failureResultOf(
            store.update_webhook(other.id, hook.id, updated_ms=later, read_preference=PRIMARY, active=True), NotFound
        )
        self.failureResultOf(store.delete_webhook(other.id, hook.id, read_preference=PRIMARY), NotFound)
        self.write(store.delete_webhook(tenant.id, hook.id, read_preference=PRIMARY))
        self.read_fails(NotFound, store.get_webhook, tenant.id, hook.id)

    def test_webhook_outbox_in_the_change(self) -> None:
        """Each change writes one pending delivery per subscribed active
        endpoint of its tenant, carrying the change as it was: not for
        unsubscribed, inactive or other tenants' endpoints."""
        store = self.webhook_store()
        tenant = self.make_tenant()
        other = self.make_tenant("Other")
        everything = list(WebhookEvent)
        hook = self.make_webhook(tenant.id, everything)
        only_threads = self.make_webhook(tenant.id, [WebhookEvent.THREAD_CREATED])
        off = self.make_webhook(tenant.id, everything, active=False)
        foreign = self.make_webhook(other.id, everything)
        thread = self.make_thread(tenant.id)
        author = self.make_author(tenant.id)
        comment = self.post(tenant.id, thread.id, author, body="First!")
        self.write(
            store.update_comment(
                tenant.id, comment.id, edited_ms=self.tick(), read_preference=PRIMARY, body=("Fixed", "<p>Fixed</p>")
            )
        )
        self.make_thread(tenant.id, thread.url_id, closed=True)
        got = self.deliveries(tenant.id, hook.id)
        self.assertEqual(
            [d.event_type for d in got],
            [
                WebhookEvent.THREAD_CREATED,
                WebhookEvent.COMMENT_CREATED,
                WebhookEvent.COMMENT_EDITED,
                WebhookEvent.THREAD_CLOSED,
            ],
        )
        created = json.loads(got[1].data)
        self.assertEqual(
            created["comment"],
            {
                "id": comment.id,
                "threadId": thread.id,
                "urlId": thread.url_id,
                "parentId": None,
                "authorId": author,
                "displayName": "Ann",
                "text": "First!",
                "html": "<p>First!</p>",
                "status": "approved",
                "createdAt": comment.created_ms,
                "editedAt": None,
                "flags": 0,
            },
        )
        self.assertEqual(json.loads(got[2].data)["comment"]["text"], "Fixed")
        self.assertEqual(got[1].created_ms, comment.created_ms)
        self.assertEqual(len({d.event_id for d in got}), 4)
        self.assertEqual(
            [d.event_type for d in self.deliveries(tenant.id, only_threads.id)], [WebhookEvent.THREAD_CREATED]
        )
        self.assertEqual(self.deliveries(tenant.id, off.id), [])
        self.assertEqual(self.deliveries(other.id, foreign.id), [])

    def test_webhook_rolled_back_change_sends_nothing(self) -> None:
        """A change that fails writes no delivery (one transaction): a reply
        to an unknown parent, a moderation call naming a foreign comment."""
        self.webhook_store()
        tenant = self.make_tenant()
        other = self.make_tenant("Other")
        hook = self.make_webhook(tenant.id, list(WebhookEvent))
        thread = self.make_thread(tenant.id)
        author = self.make_author(tenant.id)
        mine = self.post(tenant.id, thread.id, author)
        theirs = self.post(other.id, self.make_thread(other.id).id, self.make_author(other.id))
        before = self.deliveries(tenant.id, hook.id)
        self.failureResultOf(
            self.store.create_comment(
                self.new_comment(tenant.id, thread.id, author, parent_id=UNKNOWN), read_preference=PRIMARY
            ),
            NotFound,
        )
        self.failureResultOf(
            self.store.moderate(
                tenant.id,
                ModerationAction.SPAM,
                [mine.id, theirs.id],
                actor="mod",
                reason="r",
                created_ms=self.tick(),
                read_preference=PRIMARY,
            ),
            NotFound,
        )
        self.assertEqual(self.deliveries(tenant.id, hook.id), before)

    def test_webhook_moderation_events(self) -> None:
        """Moderation emits per changed comment: spam as
        ``comment.marked_spam`` (with the previous status), a ban as
        ``author.banned`` and ``comment.removed``; a flag as
        ``comment.flagged``; a comment created as spam only as spam."""
        self.webhook_store()
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id)
        author = self.make_author(tenant.id)
        flagger = self.make_author(tenant.id)
        first = self.post(tenant.id, thread.id, author)
        second = self.post(tenant.id, thread.id, author, status=PENDING)
        hook = self.make_webhook(tenant.id, list(WebhookEvent))
        self.post(tenant.id, thread.id, author, status=SPAM)
        self.write(self.store.add_flag(tenant.id, first.id, flagger, created_ms=self.tick(), read_preference=PRIMARY))
        moderated = self.write(
            self.store.moderate(
                tenant.id,
                ModerationAction.SPAM,
                [first.id, second.id],
                actor="mod-1",
                reason="ads",
                created_ms=self.tick(),
                read_preference=PRIMARY,
            )
        )
        self.write(
            self.store.moderate(
                tenant.id,
                ModerationAction.RESTORE,
                [first.id],
                actor="mod-1",
                reason="oops",
                created_ms=self.tick(),
                read_preference=PRIMARY,
            )
        )
        banned = self.write(
            self.store.moderate(
                tenant.id,
                ModerationAction.BAN,
                [first.id],
                actor="mod-2",
                reason="again",
                created_ms=self.tick(),
                read_preference=PRIMARY,
            )
        )
        got = [(d.event_type, json.loads(d.data)) for d in self.deliveries(tenant.id, hook.id)]
        types = [t for t, _ in got]
        self.assertEqual(
            types,
            [
                WebhookEvent.COMMENT_MARKED_SPAM,
                WebhookEvent.COMMENT_FLAGGED,
                WebhookEvent.COMMENT_MARKED_SPAM,
                WebhookEvent.COMMENT_MARKED_SPAM,
                WebhookEvent.COMMENT_APPROVED,
                WebhookEvent.AUTHOR_BANNED,
                WebhookEvent.COMMENT_REMOVED,
            ],
        )
        spam = sorted((d for t, d in got[2:4]), key=lambda d: d["comment"]["id"] != first.id)
        self.assertEqual(
            spam[0],
            {
                "comment": {
                    "id": first.id,
                    "threadId": thread.id,
                    "authorId": author,
                    "status": "spam",
                    "previousStatus": "approved",
                },
                "action": "spam",
                "actor": "mod-1",
                "reason": "ads",
                "auditId": moderated.entry.id,
            },
        )
        self.assertEqual(spam[1]["comment"]["previousStatus"], "pending")
        self.assertEqual(got[1][1]["comment"]["flags"], 1)
        self.assertEqual(got[1][1]["flaggerId"], flagger)
        self.assertEqual(got[5][1]["author"], {"id": author})
        self.assertEqual(got[5][1]["ban"]["id"], banned.bans[0].id)
        self.assertEqual(got[6][1]["comment"]["status"], "removed")

    def test_webhook_post_comment_events(self) -> None:
        """``post_comment`` (one write, nothing read first) emits what
        ``upsert_thread`` and ``create_comment`` do: ``thread.created`` only
        when the post created the thread, then ``comment.created`` with the
        full comment (its thread and author found in SQL), or only
        ``comment.marked_spam`` for spam; a post that fails sends nothing."""
        self.webhook_store()
        tenant = self.make_tenant()
        hook = self.make_webhook(tenant.id, list(WebhookEvent))
        url = "https://example.com/webhook-posts"

        def post(poster: Any, **kwargs: Any) -> Any:
            fields: dict[str, Any] = dict(
                tenant_id=tenant.id,
                url_id=url,
                poster=poster,
                display_name='Ann "the" <b>',
                body_source='He said "hi"\n\\ \u00e9',
                body_html="<p>He said &quot;hi&quot;</p>",
                status=APPROVED,
                created_ms=self.tick(),
            )
            fields.update(kwargs)
            return self.write(self.store.post_comment(NewPost(**fields), read_preference=PRIMARY))

        first = post(NewSession(), title="Page")
        assert first.session is not None
        second = post(SessionPoster(first.session.id))
        third = post(UserPoster("u1", "Bo"), status=SPAM)
        self.failureResultOf(
            self.store.post_comment(
                NewPost(
                    tenant_id=tenant.id,
                    url_id="https://example.com/never",
                    poster=SessionPoster("UNKNOWNSESSION00"),
                    display_name="X",
                    body_source="x",
                    body_html="x",
                    status=APPROVED,
                    created_ms=self.tick(),
                ),
                read_preference=PRIMARY,
            ),
            NotFound,
        )
        got = [(d.event_type, json.loads(d.data), d) for d in self.deliveries(tenant.id, hook.id)]
        self.assertEqual(
            [t for t, _, _ in got],
            [
                WebhookEvent.THREAD_CREATED,
                WebhookEvent.COMMENT_CREATED,
                WebhookEvent.COMMENT_CREATED,
                WebhookEvent.COMMENT_MARKED_SPAM,
            ],
        )
        self.assertEqual(
            got[0][1],
            {
                "thread": {
                    "id": first.thread.id,
                    "urlId": url,
                    "title": "Page",
                    "closed": False,
                    "createdAt": first.thread.created_ms,
                }
            },
        )
        for (_, data, delivery), posted in zip(got[1:], [first, second, third], strict=True):
            c = posted.comment
            self.assertEqual(
                data,
                {
                    "comment": {
                        "id": c.id,
                        "threadId": first.thread.id,
                        "urlId": url,
                        "parentId": None,
                        "authorId": c.author_id,
                        "displayName": 'Ann "the" <b>',
                        "text": 'He said "hi"\n\\ \u00e9',
                        "html": "<p>He said &quot;hi&quot;</p>",
                        "status": c.status.value,
                        "createdAt": c.created_ms,
                        "editedAt": None,
                        "flags": 0,
                    }
                },
            )
            self.assertEqual(delivery.created_ms, c.created_ms)
        self.assertEqual(got[2][1]["comment"]["authorId"], first.session.author_id)
        self.assertEqual(got[3][1]["comment"]["status"], "spam")
        self.assertEqual(len({d.event_id for _, _, d in got}), 4)

    def test_webhook_change_comment_events(self) -> None:
        """``change_comment`` emits ``comment.edited`` for a new text and the
        status's event for a new status, each with the comment as changed and
        its ``previousStatus``; a status it already has sends nothing."""
        self.webhook_store()
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id)
        author = self.make_author(tenant.id)
        comment = self.post(tenant.id, thread.id, author, status=PENDING)
        hook = self.make_webhook(tenant.id, list(WebhookEvent))
        edited_ms = self.tick()
        change = self.write(
            self.store.change_comment(
                tenant.id,
                comment.id,
                edited_ms=edited_ms,
                read_preference=PRIMARY,
                body=('New "text"', "<p>New</p>"),
                status=APPROVED,
            )
        )
        self.write(
            self.store.change_comment(
                tenant.id, comment.id, edited_ms=self.tick(), read_preference=PRIMARY, status=APPROVED
            )
        )
        self.write(
            self.store.change_comment(
                tenant.id, comment.id, edited_ms=self.tick(), read_preference=PRIMARY, status=CommentStatus.REMOVED
            )
        )
        got = [(d.event_type, json.loads(d.data)) for d in self.deliveries(tenant.id, hook.id)]
        self.assertEqual(
            [t for t, _ in got],
            [WebhookEvent.COMMENT_EDITED, WebhookEvent.COMMENT_APPROVED, WebhookEvent.COMMENT_REMOVED],
        )
        after = change.after
        full = {
            "id": comment.id,
            "threadId": thread.id,
            "parentId": None,
            "authorId": author,
            "displayName": "Ann",
            "text": 'New "text"',
            "html": "<p>New</p>",
            "status": "approved",
            "createdAt": comment.created_ms,
            "editedAt": edited_ms,
            "flags": 0,
            "previousStatus": "pending",
        }
        self.assertEqual(after.edited_ms, edited_ms)
        self.assertEqual(got[0][1], {"comment": full})
        self.assertEqual(got[1][1], {"comment": full})
        self.assertEqual(got[2][1]["comment"]["status"], "removed")
        self.assertEqual(got[2][1]["comment"]["previousStatus"], "approved")

    def test_webhook_event_text_built_in_sql(self) -> None:
        """The comment an event carries, built as JSON in SQL from the row
        (``comment.created``) and from values given (``comment.edited``),
        keeps every character of its text: quotes, backslashes, control
        characters, non-ASCII and characters outside the BMP."""
        self.webhook_store()
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id)
        author = self.make_author(tenant.id)
        hook = self.make_webhook(tenant.id, list(WebhookEvent))
        awkward = "He said \"hi\" \\ 'o' \n\ttab \x01\x1f \u00e9\u2028 \U0001f389 </script>"
        comment = self.post(tenant.id, thread.id, author, body=awkward)
        edited = self.write(
            self.store.update_comment(
                tenant.id,
                comment.id,
                edited_ms=self.tick(),
                read_preference=PRIMARY,
                body=(awkward + " again", "<p>" + awkward + "</p>"),
            )
        )
        got = [json.loads(d.data)["comment"] for d in self.deliveries(tenant.id, hook.id)]
        self.assertEqual(got[0], comment_data(comment, thread))
        self.assertEqual(got[1], comment_data(edited, previousStatus="approved"))

    def test_webhook_flag_auto_hide_event(self) -> None:
        """``comment.flagged`` carries the comment as the flag left it: its
        count and, when the flag hid it for review, the pending status."""
        self.webhook_store()
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id)
        author = self.make_author(tenant.id)
        comment = self.post(tenant.id, thread.id, author)
        hook = self.make_webhook(tenant.id, list(WebhookEvent))
        flaggers = [self.make_author(tenant.id) for _ in range(2)]
        for flagger in flaggers:
            self.write(
                self.store.add_flag(
                    tenant.id, comment.id, flagger, created_ms=self.tick(), read_preference=PRIMARY, hide_at=2
                )
            )
        got = [(d.event_type, json.loads(d.data)) for d in self.deliveries(tenant.id, hook.id)]
        self.assertEqual([t for t, _ in got], [WebhookEvent.COMMENT_FLAGGED] * 2)
        self.assertEqual([d["flaggerId"] for _, d in got], flaggers)
        self.assertEqual([d["comment"]["flags"] for _, d in got], [1, 2])
        self.assertEqual([d["comment"]["status"] for _, d in got], ["approved", "pending"])
        self.assertEqual(
            got[1][1]["comment"],
            {
                "id": comment.id,
                "threadId": thread.id,
                "parentId": None,
                "authorId": author,
                "displayName": "Ann",
                "text": "Hello",
                "html": "<p>Hello</p>",
                "status": "pending",
                "createdAt": comment.created_ms,
                "editedAt": None,
                "flags": 2,
            },
        )

    def test_webhook_claims_are_leased(self) -> None:
        """A claimed delivery is leased to one claimer: a second claim gets
        nothing until the lease expires, then retakes it; finishing with
        an expired lease changes nothing; finishing removes it and the
        next claim of the endpoint takes the next delivery in the same
        transaction."""
        store = self.webhook_store()
        tenant = self.make_tenant()
        hook = self.make_webhook(tenant.id, [WebhookEvent.THREAD_CREATED])
        self.make_thread(tenant.id)
        self.make_thread(tenant.id, "https://example.com/2")
        now = self.tick()
        (first,) = self.claim("node-a", now, lease_ms=1000)
        self.assertEqual((first.url, first.secret, first.endpoint_id), (hook.url, "s" * 32, hook.id))
        self.assertEqual(self.claim("node-b", now + 999), [])
        (again,) = self.claim("node-b", now + 1000)
        self.assertEqual(again.seq, first.seq)
        self.assertEqual(self.finish(DeliveryDone(first.seq, hook.id, "node-a")), [])
        both = self.successResultOf(
            store.claim_webhook_deliveries(
                owner="node-b2",
                now_ms=now + 1001,
                lease_ms=1000,
                limit=5,
                read_preference=PRIMARY,
                finished=[DeliveryDone(again.seq, hook.id, "node-b")],
            )
        )
        self.assertEqual(both.finished, [again.seq])
        (second,) = both.deliveries
        self.assertGreater(second.seq, again.seq)
        self.assertEqual(self.finish(DeliveryDone(second.seq, hook.id, "node-b2")), [second.seq])
        self.assertEqual(self.deliveries(tenant.id, hook.id), [])
        self.assertEqual(self.claim("node-c", now + 10_000_000), [])

    def test_webhook_claims_keep_endpoint_order(self) -> None:
        """An endpoint's deliveries are claimed one at a time in the order
        of the changes; other endpoints go alongside; a delivery waiting for
        a retry lets the later ones pass; released ones are retaken at once."""
        store = self.webhook_store()
        tenant = self.make_tenant()
        one = self.make_webhook(tenant.id, [WebhookEvent.THREAD_CREATED])
        two = self.make_webhook(tenant.id, [WebhookEvent.THREAD_CREATED])
        for n in range(3):
            self.make_thread(tenant.id, "https://example.com/{}".format(n))
        now = self.tick()
        claimed = self.claim("a", now)
        self.assertEqual(sorted(d.endpoint_id for d in claimed), sorted([one.id, two.id]))
        self.assertEqual(self.claim("b", now), [])
        firsts = {d.endpoint_id: d for d in claimed}
        self.assertEqual(
            self.write(store.release_webhook_deliveries([firsts[two.id].seq], owner="a", read_preference=PRIMARY)), 1
        )
        (retaken,) = self.claim("b", now)
        self.assertEqual(retaken.seq, firsts[two.id].seq)
        outcome = AttemptOutcome(
            now_ms=now, status=500, error="HTTP 500", retry_at_ms=now + 60_000, disable_reason=None, disable_after=10
        )
        self.write(
            store.record_webhook_failure(firsts[one.id].seq, one.id, outcome, owner="a", read_preference=PRIMARY)
        )
        (passed,) = self.claim("c", now)
        self.assertEqual(passed.endpoint_id, one.id)
        self.assertGreater(passed.seq, firsts[one.id].seq)
        self.assertEqual(self.claim("d", now), [])
        # Once due, the retried delivery is claimable again (the later one
        # is still leased, which is the only way two of one endpoint fly).
        (retried,) = self.claim("e", now + 60_000)
        self.assertEqual((retried.seq, retried.attempts), (firsts[one.id].seq, 1))

    def test_webhook_failures(self) -> None:
        """A failed attempt is retried, or failed for good; the endpoint is
        turned off after ``disable_after`` failures in a row (or at once for
        a 410) with its reason, its pending deliveries failing with it; a
        failed delivery is replayed once the endpoint is on again."""
        store = self.webhook_store()
        tenant = self.make_tenant()
        hook = self.make_webhook(tenant.id, [WebhookEvent.THREAD_CREATED])
        for n in range(3):
            self.make_thread(tenant.id, "https://example.com/{}".format(n))
        now = self.tick()

        def fail(owner: str, at: int, retry: int | None, disable: str | None = None) -> Any:
            (d,) = self.claim(owner, at)
            outcome = AttemptOutcome(
                now_ms=at, status=503, error="HTTP 503", retry_at_ms=retry, disable_reason=disable, disable_after=3
            )
            return d, self.write(
                store.record_webhook_failure(d.seq, hook.id, outcome, owner=owner, read_preference=PRIMARY)
            )

        first, turned_off = fail("a", now, None)
        self.assertIsNone(turned_off)
        (failed,) = self.deliveries(tenant.id, hook.id, DeliveryState.FAILED)
        self.assertEqual((failed.seq, failed.attempts, failed.last_status), (first.seq, 1, 503))
        fail("b", now + 1, now + 100)
        second, turned_off = fail("c", now + 2, now + 100)
        self.assertIsNotNone(turned_off)
        self.assertFalse(turned_off.active)
        self.assertIn("3 attempts in a row failed", turned_off.disabled_reason)
        self.assertEqual(self.deliveries(tenant.id, hook.id), [])
        self.assertEqual(len(self.deliveries(tenant.id, hook.id, DeliveryState.FAILED)), 3)
        self.assertEqual(self.claim("d", now + 1000), [])
        self.failureResultOf(
            store.replay_webhook_delivery(tenant.id, hook.id, first.event_id, now_ms=now + 5, read_preference=PRIMARY),
            InvalidReference,
        )
        back_on = self.write(
            store.update_webhook(tenant.id, hook.id, updated_ms=now + 6, active=True, read_preference=PRIMARY)
        )
        self.assertEqual((back_on.active, back_on.disabled_reason, back_on.consecutive_failures), (True, None, 0))
        replayed = self.write(
            store.replay_webhook_delivery(tenant.id, hook.id, first.event_id, now_ms=now + 7, read_preference=PRIMARY)
        )
        self.assertEqual(
            (replayed.state, replayed.attempts, replayed.window_start_ms), (DeliveryState.PENDING, 0, now + 7)
        )
        self.failureResultOf(
            store.replay_webhook_delivery(tenant.id, hook.id, first.event_id, now_ms=now + 8, read_preference=PRIMARY),
            NotFound,
        )
        _, turned_off = fail("e", now + 9, now + 100, disable="the receiver answered 410 Gone")
        self.assertEqual(turned_off.disabled_reason, "the receiver answered 410 Gone")

    def test_webhook_queue(self) -> None:
        """The queue counts pending and failed deliveries and knows the
        oldest pending one's time."""
        store = self.webhook_store()
        self.assertEqual(self.read(store.webhook_queue), WebhookQueue(pending=0, failed=0, oldest_pending_ms=None))
        tenant = self.make_tenant()
        self.make_webhook(tenant.id, [WebhookEvent.THREAD_CREATED])
        thread = self.make_thread(tenant.id)
        self.make_thread(tenant.id, "https://example.com/2")
        self.assertEqual(
            self.read(store.webhook_queue), WebhookQueue(pending=2, failed=0, oldest_pending_ms=thread.created_ms)
        )
