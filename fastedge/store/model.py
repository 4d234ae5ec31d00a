# -*- test-case-name: tests.unit.store.test_sqlite -*-
"""Values that cross the store interface: plain, frozen, backend-neutral."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")


class ReadPreference(enum.Enum):
    """Where a read may be served from.

    ``PRIMARY`` sees every committed write (the primary may be far away);
    ``NEAREST`` reads the local copy, which may lag the primary.
    """

    PRIMARY = "primary"
    NEAREST = "nearest"


class CommentStatus(enum.Enum):
    """Moderation state of a comment. Only ``APPROVED`` comments are public."""

    APPROVED = "approved"
    PENDING = "pending"
    SPAM = "spam"
    REMOVED = "removed"


class Sort(enum.Enum):
    """Order of the top-level comments of a thread (replies are oldest-first)."""

    NEWEST = "newest"
    OLDEST = "oldest"
    TOP = "top"


class AuthorKind(enum.Enum):
    """Who wrote a comment: a signed-in (SSO) user or an anonymous session."""

    USER = "user"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Written(Generic[_T]):
    """The result of a write and its consistency token.

    :ivar token: opaque; a NEAREST read given this token sees the write. ``None``
        from backends with a single copy, where every read sees every write.
    """

    value: _T
    token: str | None = None


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    deployment: str
    created_ms: int
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant_id: str
    created_ms: int
    revoked_ms: int | None


@dataclass(frozen=True)
class Thread:
    id: str
    tenant_id: str
    url_id: str
    title: str
    closed: bool
    created_ms: int
    comment_count: int
    #: SSO groups the thread is locked to; ``None``: the tenant's default
    #: (``defaultGroups``), empty: public whatever the default.
    locked_groups: tuple[str, ...] | None = None
    #: Only SSO users may post; ``None``: the tenant's ``requireSignIn``.
    require_sign_in: bool | None = None


@dataclass(frozen=True)
class Author:
    id: str
    tenant_id: str
    kind: AuthorKind
    created_ms: int


@dataclass(frozen=True)
class AnonymousSession:
    """An anonymous commenter; ``id`` is secret (it goes in a signed cookie)."""

    id: str
    tenant_id: str
    author_id: str
    created_ms: int


@dataclass(frozen=True)
class User:
    """A commenter known to the tenant's SSO."""

    id: str
    tenant_id: str
    external_id: str
    author_id: str
    display_name: str
    created_ms: int
    #: The profile the tenant's SSO last sent (empty for users the tenant
    #: API created).
    profile: UserProfile | None = None


@dataclass(frozen=True)
class UserProfile:
    """What a signed-in user's SSO payload says beyond id and name."""

    email: str | None = None
    avatar: str | None = None
    group_ids: tuple[str, ...] = ()
    is_moderator: bool = False
    is_admin: bool = False


@dataclass(frozen=True)
class SsoSecretChange:
    """Rotate (or remove) a tenant's SSO secret.

    :ivar secret: the new secret; ``None`` removes SSO (every secret stops
        being accepted at ``now_ms``).
    :ivar overlap_ms: how long the replaced secret is still accepted.
    """

    secret: str | None
    now_ms: int
    overlap_ms: int = 0


@dataclass(frozen=True)
class SsoSecret:
    """A secret a tenant's SSO payloads may be signed with."""

    secret: str
    created_ms: int
    #: ``None`` for the current secret; else accepted until then.
    accepted_until_ms: int | None


@dataclass(frozen=True)
class NewComment:
    tenant_id: str
    thread_id: str
    author_id: str
    display_name: str
    body_source: str
    body_html: str
    status: CommentStatus
    created_ms: int
    parent_id: str | None = None


@dataclass(frozen=True)
class NewSession:
    """Post as a new anonymous session, created in the same write: this one
    (from ``IStore.new_anonymous_session``), or one the store makes up."""

    session: AnonymousSession | None = None


@dataclass(frozen=True)
class SessionPoster:
    """Post as an existing anonymous (or signed-in) session; the write fails
    with ``NotFound("session")`` if it no longer exists."""

    session_id: str


@dataclass(frozen=True)
class UserPoster:
    """Post as the tenant's user ``external_id`` (created when missing; its
    display name updated), as the tenant API does."""

    external_id: str
    display_name: str


Poster = NewSession | SessionPoster | UserPoster


@dataclass(frozen=True)
class Expect:
    """What a caller read from a replica and based its checks on, verified
    by the write itself on the primary at no extra round trip.

    A write given an ``Expect`` fails, applying nothing, with
    ``NotFound("session")`` when ``session_id`` no longer exists,
    ``NotFound("comment")`` when ``approved_comment`` is no longer approved,
    and :class:`~fastedge.store.errors.Stale` when the access rules of the
    thread of ``thread_url`` are no longer ``locked_groups`` and
    ``require_sign_in`` (``None`` for both: none set, or no thread yet).
    """

    session_id: str | None = None
    approved_comment: str | None = None
    thread_url: str | None = None
    locked_groups: tuple[str, ...] | None = None
    require_sign_in: bool | None = None


@dataclass(frozen=True)
class NewPost:
    """A comment posted to a thread named by its URL id, in one write with
    its poster's new session or user and the thread when it is new."""

    tenant_id: str
    url_id: str
    poster: Poster
    display_name: str
    body_source: str
    body_html: str
    status: CommentStatus
    created_ms: int
    parent_id: str | None = None
    #: The title of a thread this post creates.
    title: str | None = None
    #: Also set ``title`` (when given) on an existing thread (the tenant API).
    retitle: bool = False
    #: Refuse (``ThreadClosed``) a thread closed to new comments.
    open_only: bool = False
    expect: Expect | None = None
    #: The id a thread this post creates gets (from ``IStore.new_id``);
    #: ``None``: one the store makes up.
    new_thread_id: str | None = None


@dataclass(frozen=True)
class Change:
    """A comment before and after a write changed it."""

    before: Comment
    after: Comment


@dataclass(frozen=True)
class Posted:
    """What :meth:`IStore.post_comment` wrote."""

    comment: Comment
    thread: Thread
    #: The thread was created by this post.
    thread_created: bool
    #: The new session, when the poster was :class:`NewSession`.
    session: AnonymousSession | None


@dataclass(frozen=True)
class Comment:
    id: str
    tenant_id: str
    thread_id: str
    parent_id: str | None
    #: The top-level comment this one hangs under (its own id when top-level).
    root_id: str
    author_id: str
    display_name: str
    body_source: str
    body_html: str
    status: CommentStatus
    created_ms: int
    edited_ms: int | None
    like_count: int
    flag_count: int


@dataclass(frozen=True)
class Page(Generic[_T]):
    """One page of a listing; ``next_cursor`` is ``None`` on the last page."""

    items: Sequence[_T]
    next_cursor: str | None


@dataclass(frozen=True)
class ThreadPage:
    """A page of top-level comments with all the replies under them."""

    thread: Thread
    top_level: Sequence[Comment]
    replies: Sequence[Comment]
    next_cursor: str | None


@dataclass(frozen=True)
class ViewerState:
    """What one viewer did to a set of comments and authors."""

    liked: frozenset[str]
    blocked_authors: frozenset[str]


@dataclass(frozen=True)
class CreditUsage:
    operation: str
    calls: int
    credits: int


class ModerationQueue(enum.Enum):
    """What a moderator works through.

    ``FLAGGED`` holds every comment readers flagged that is still public or
    hidden for review (approved or pending); the others are by status.
    """

    PENDING = "pending"
    FLAGGED = "flagged"
    SPAM = "spam"
    REMOVED = "removed"


class QueueSort(enum.Enum):
    """Order of the moderation queue."""

    OLDEST = "oldest"
    MOST_FLAGGED = "flags"


@dataclass(frozen=True)
class QueueFilter:
    """Narrows the moderation queue; every field is optional.

    :ivar since_ms: comments created at or after this time.
    :ivar until_ms: comments created before this time.
    :ivar text: a case-insensitive substring of the comment's source text.
    """

    thread_id: str | None = None
    author_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    text: str | None = None


class ModerationAction(enum.Enum):
    """What a moderator does to a set of comments in one call.

    ``APPROVE`` makes them public and clears their flags; ``RESTORE``
    brings removed or spam comments back (others are left alone); ``BAN``
    bans the comments' authors and removes the comments.
    """

    APPROVE = "approve"
    REMOVE = "remove"
    RESTORE = "restore"
    SPAM = "spam"
    BAN = "ban"


class BanKind(enum.Enum):
    """What a ban names: an author (a signed-in user's or an anonymous
    session's) or a client address (by its hash, never the address)."""

    AUTHOR = "author"
    ADDRESS = "address"


#: Most comment ids one moderation call may name.
MAX_BULK_IDS = 500


@dataclass(frozen=True)
class Ban:
    id: str
    tenant_id: str
    kind: BanKind
    value: str
    reason: str
    actor: str
    created_ms: int
    #: ``None``: until lifted.
    expires_ms: int | None
    lifted_ms: int | None


@dataclass(frozen=True)
class AuditEntry:
    """One moderator action, written in the transaction that made it."""

    id: str
    tenant_id: str
    actor: str
    action: str
    comment_ids: Sequence[str]
    ban_ids: Sequence[str]
    reason: str
    created_ms: int


@dataclass(frozen=True)
class Moderated:
    """What one moderation call changed.

    :ivar changed: ``(before, after)`` of every comment whose status or
        flags changed, for the live events and page caches.
    """

    changed: Sequence[tuple[Comment, Comment]]
    bans: Sequence[Ban]
    entry: AuditEntry


class WebhookEvent(enum.Enum):
    """The changes a webhook endpoint can subscribe to (docs/webhooks.md)."""

    COMMENT_CREATED = "comment.created"
    COMMENT_EDITED = "comment.edited"
    COMMENT_REMOVED = "comment.removed"
    COMMENT_APPROVED = "comment.approved"
    COMMENT_FLAGGED = "comment.flagged"
    COMMENT_MARKED_SPAM = "comment.marked_spam"
    AUTHOR_BANNED = "author.banned"
    THREAD_CREATED = "thread.created"
    THREAD_CLOSED = "thread.closed"


class DeliveryState(enum.Enum):
    """Where an undelivered webhook delivery stands (delivered ones are gone)."""

    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True)
class WebhookEndpoint:
    """A tenant's webhook endpoint, as the tenant sees it: never its secret.

    :ivar disabled_reason: why the node turned it off (``None``: it did not).
    """

    id: str
    tenant_id: str
    url: str
    events: tuple[WebhookEvent, ...]
    active: bool
    description: str
    created_ms: int
    updated_ms: int
    secret_set_ms: int
    consecutive_failures: int
    disabled_reason: str | None
    disabled_ms: int | None


@dataclass(frozen=True)
class WebhookDelivery:
    """One event on its way to one endpoint.

    :ivar data: the event's ``data`` object as JSON text, fixed when the
        change was made.
    :ivar url: :ivar secret: the endpoint's, filled only for a claimed
        delivery (the sender's view); empty in the tenant's listings.
    """

    seq: int
    event_id: str
    event_type: WebhookEvent
    tenant_id: str
    endpoint_id: str
    created_ms: int
    data: str
    state: DeliveryState
    attempts: int
    next_attempt_ms: int
    window_start_ms: int
    last_attempt_ms: int | None
    last_status: int | None
    last_error: str | None
    url: str = ""
    secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class DeliveryDone:
    """A delivery the receiver accepted, to be removed from the outbox by
    the claimer that leased it (``owner``)."""

    seq: int
    endpoint_id: str
    owner: str


@dataclass(frozen=True)
class WebhookClaim:
    """What one claim did.

    :ivar deliveries: leased now, with their endpoints' URL and secret.
    :ivar finished: ``seq`` of the given :class:`DeliveryDone` whose lease
        was still theirs (the others' leases had expired: sent again).
    """

    deliveries: list[WebhookDelivery]
    finished: list[int]


@dataclass(frozen=True)
class AttemptOutcome:
    """What one failed attempt to send a claimed delivery decided.

    :ivar retry_at_ms: the next attempt, or ``None``: the delivery failed for good.
    :ivar disable_reason: turn the endpoint off now, with this reason (a 410).
    :ivar disable_after: turn it off, with ``failure_reason``, once this
        many attempts in a row failed.
    """

    now_ms: int
    status: int | None
    error: str
    retry_at_ms: int | None
    disable_reason: str | None
    disable_after: int


@dataclass(frozen=True)
class WebhookQueue:
    """The outbox at a glance (all tenants)."""

    pending: int
    failed: int
    oldest_pending_ms: int | None


@dataclass(frozen=True)
class RecentComment:
    """A recent comment as spam checks compare it (any status)."""

    author_id: str
    thread_id: str
    body_source: str
    status: CommentStatus
    created_ms: int


@dataclass(frozen=True)
class AuthorHistory:
    """What an author did before, for spam checks (docs/spam.md).

    :ivar created_ms: when the author was created (their first session or
        the SSO user's first sign-in).
    :ivar comments: every comment of the author, any status; the status
        counts below split it.
    :ivar recent: the author's comments created at or after ``since_ms``,
        newest first, at most ``limit``, in any thread.
    :ivar thread_recent: other authors' comments of the asked thread
        created at or after ``since_ms``, newest first, at most ``limit``.
    """

    author_id: str
    kind: AuthorKind
    created_ms: int
    comments: int
    approved: int
    pending: int
    spam: int
    removed: int
    recent: tuple[RecentComment, ...] = ()
    thread_recent: tuple[RecentComment, ...] = ()
