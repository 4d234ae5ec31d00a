"""The store interface every backend implements and the contract suite checks.

Conventions, for every method:

- ``read_preference`` is required and keyword-only. Reads honour it; writes
  go to the primary and fail with :class:`~fastedge.store.errors.WrongReadPreference`
  for anything but ``PRIMARY``, so a caller can never believe a write was
  served nearby.
- ``token`` (reads only) is a consistency token from an earlier
  :class:`~fastedge.store.model.Written`: a NEAREST read given one sees at
  least that write. Backends with a single copy ignore it.
- Every record belongs to a tenant and every method that names a record
  also names its tenant: a record of another tenant is reported exactly as
  a record that does not exist (:class:`~fastedge.store.errors.NotFound`).
- Times are integer milliseconds given by the caller; the store never reads
  a clock.
- Results are Deferreds, and every error (expected or not) arrives through
  the Deferred, never as a synchronous raise; blocking work happens off the
  reactor thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from .model import (
    AnonymousSession,
    ApiKey,
    AttemptOutcome,
    AuditEntry,
    Author,
    AuthorHistory,
    Ban,
    BanKind,
    Change,
    Comment,
    CommentStatus,
    CreditUsage,
    DeliveryDone,
    DeliveryState,
    Expect,
    Moderated,
    ModerationAction,
    ModerationQueue,
    NewComment,
    NewPost,
    Page,
    Posted,
    QueueFilter,
    QueueSort,
    ReadPreference,
    Sort,
    SsoSecret,
    SsoSecretChange,
    Tenant,
    Thread,
    ThreadPage,
    User,
    UserProfile,
    ViewerState,
    WebhookClaim,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookQueue,
    Written,
)


class IStore(Interface):
    """Comment data for all tenants of one deployment."""

    backend = Attribute("Short name of the backend, used as a metric label.")

    def open() -> Deferred[None]:
        """Connect and apply pending schema migrations (to the primary).

        :returns: ``Deferred[None]``
        """

    def close() -> Deferred[None]:
        """Release connections and threads.

        :returns: ``Deferred[None]``
        """

    def token_covers(have: str | None, want: str | None) -> bool:
        """Whether a read as new as token ``have`` is as new as token ``want``.

        Tokens are positions in one history, so callers keep the newest of
        several (a session cookie) and tell whether something read at one
        position may be served to a caller holding another (a page cache).
        ``None`` is the oldest position: it covers only ``None``, unless the
        backend has a single copy, where every read covers every write.
        Synchronous: no I/O.

        :returns: ``bool``; raises ``BadToken`` for a malformed token.
        """

    def ping(*, read_preference: ReadPreference) -> Deferred[None]:
        """Check that the database answers.

        :returns: ``Deferred[None]``; fails with ``StoreUnavailable``.
        """

    # Tenants and API keys

    def create_tenant(
        name: str, deployment: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[Tenant]]:
        """:returns: ``Deferred[Written[Tenant]]``"""

    def get_tenant(tenant_id: str, *, read_preference: ReadPreference, token: str | None = None) -> Deferred[Tenant]:
        """:returns: ``Deferred[Tenant]``; ``NotFound`` if absent."""

    def list_tenants(*, read_preference: ReadPreference, token: str | None = None) -> Deferred[list[Tenant]]:
        """Every tenant, oldest first (an operator's view: ``fastedge-admin tenant list``).

        :returns: ``Deferred[list[Tenant]]``
        """

    def delete_tenant(tenant_id: str, *, read_preference: ReadPreference) -> Deferred[Written[Mapping[str, int]]]:
        """Delete the tenant and every row that belongs to it (API keys,
        authors, sessions, users, threads, comments, votes, flags, blocks,
        credits), in one transaction.

        :returns: ``Deferred[Written[Mapping[str, int]]]``: rows deleted per
            table; ``NotFound`` if there is no such tenant.
        """

    def update_tenant_settings(
        tenant_id: str,
        settings: Mapping[str, Any],
        *,
        read_preference: ReadPreference,
        sso_secret: SsoSecretChange | None = None,
    ) -> Deferred[Written[Tenant]]:
        """Replace the tenant's settings mapping and, in the same
        transaction, rotate its SSO secret when ``sso_secret`` is given.

        Rotating makes the new secret current and keeps the replaced one
        accepted until ``now_ms + overlap_ms`` (secrets already past their
        overlap are dropped); ``secret=None`` ends every secret at ``now_ms``.

        :returns: ``Deferred[Written[Tenant]]``
        """

    def get_sso_secrets(
        tenant_id: str, *, now_ms: int, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[list[SsoSecret]]:
        """The SSO secrets accepted at ``now_ms``, the current one first.

        :returns: ``Deferred[list[SsoSecret]]`` (empty: SSO is off).
        """

    def add_api_key(
        tenant_id: str, key_hash: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[ApiKey]]:
        """Store the hash of a new API key (the key itself is never stored).

        :returns: ``Deferred[Written[ApiKey]]``
        """

    def revoke_api_key(
        tenant_id: str, key_id: str, *, revoked_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[ApiKey]]:
        """:returns: ``Deferred[Written[ApiKey]]``; ``NotFound`` if absent."""

    def list_api_keys(
        tenant_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[list[ApiKey]]:
        """:returns: ``Deferred[list[ApiKey]]``"""

    def tenant_for_api_key(
        key_hash: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Tenant]:
        """The tenant owning an unrevoked key with this hash.

        :returns: ``Deferred[Tenant]``; ``NotFound`` if unknown or revoked.
        """

    # Authors: anonymous sessions and SSO users

    def create_anonymous_session(
        tenant_id: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[AnonymousSession]]:
        """Create an anonymous author and the session that speaks for it.

        :returns: ``Deferred[Written[AnonymousSession]]``
        """

    def new_id() -> str:
        """A fresh record id, e.g. for a thread a write may create (no I/O)."""

    def new_anonymous_session(tenant_id: str, *, created_ms: int) -> AnonymousSession:
        """Ids for a session that a write will create with itself (passed
        as its ``new_session``); no I/O, nothing exists until that write."""

    def get_anonymous_session(
        tenant_id: str, session_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[AnonymousSession]:
        """:returns: ``Deferred[AnonymousSession]``; ``NotFound`` if absent."""

    def upsert_user(
        tenant_id: str,
        external_id: str,
        display_name: str,
        *,
        created_ms: int,
        read_preference: ReadPreference,
        profile: UserProfile | None = None,
    ) -> Deferred[Written[User]]:
        """Create or rename the user the tenant's SSO knows as ``external_id``;
        when ``profile`` is given, replace the user's profile with it.

        :returns: ``Deferred[Written[User]]``
        """

    def get_user_by_author(
        tenant_id: str, author_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[User]:
        """The user an author id speaks for, with its profile.

        :returns: ``Deferred[User]``; ``NotFound`` for an unknown author or
            an anonymous one.
        """

    def create_user_session(
        tenant_id: str, author_id: str, *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[AnonymousSession]]:
        """A new session speaking for an existing (signed-in user's) author:
        the session cookie then works for users exactly as for anonymous
        commenters.

        :returns: ``Deferred[Written[AnonymousSession]]``; ``NotFound`` for
            an unknown author.
        """

    def claim_author(
        tenant_id: str, from_author_id: str, to_author_id: str, *, claimed_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[int]]:
        """Give an anonymous author's comments, likes, flags and blocks to a
        user's author, and end the anonymous author's sessions.

        One way only: ``from`` must be anonymous and never claimed before,
        ``to`` a user. A like or flag both already made goes once (counts
        drop accordingly); a block that would become a self-block goes.

        :returns: ``Deferred[Written[int]]``: how many comments moved;
            ``NotFound`` for unknown authors, ``InvalidReference`` when
            ``from`` is not anonymous or ``to`` is not a user,
            ``AlreadyExists`` when ``from`` was claimed before.
        """

    def get_author(
        tenant_id: str, author_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Author]:
        """:returns: ``Deferred[Author]``; ``NotFound`` if absent."""

    def author_history(
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
        """The author's history summary for spam checks: age, comment
        counts by status, and the recent comments of the author and of the
        thread (``thread_id``; ``None``: none) since ``since_ms``, at most
        ``limit`` of each, newest first.

        :param new_author_ms: the author does not exist yet: the write of
            the comment judged creates it (a first post's new session). Its
            history is then an anonymous author's created at this time,
            with no comments; the thread's recent comments are read as usual.
        :returns: ``Deferred[AuthorHistory]``; ``NotFound`` for an unknown
            author (or another tenant's) unless ``new_author_ms`` is given.
        """

    # Threads

    def upsert_thread(
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
        """Create the thread for ``url_id`` if absent; set title, closed, the
        group lock and sign-in-to-post when given (``None``: unchanged).

        :returns: ``Deferred[Written[Thread]]``
        """

    def get_thread(
        tenant_id: str, url_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Thread]:
        """:returns: ``Deferred[Thread]``; ``NotFound`` if absent."""

    def get_thread_by_id(
        tenant_id: str, thread_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Thread]:
        """:returns: ``Deferred[Thread]``; ``NotFound`` if absent."""

    def list_threads(
        tenant_id: str, *, limit: int, cursor: str | None, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Page[Thread]]:
        """Threads, newest first.

        :returns: ``Deferred[Page[Thread]]``; ``BadCursor`` for a foreign cursor.
        """

    def delete_thread(tenant_id: str, thread_id: str, *, read_preference: ReadPreference) -> Deferred[Written[None]]:
        """Delete a thread with all its comments, votes and flags.

        :returns: ``Deferred[Written[None]]``; ``NotFound`` if absent.
        """

    # Comments

    def create_comment(new: NewComment, *, read_preference: ReadPreference) -> Deferred[Written[Comment]]:
        """Add a comment (``new`` is a ``NewComment``).

        :returns: ``Deferred[Written[Comment]]``; ``NotFound`` for an unknown
            thread or parent, ``InvalidReference`` for a parent in another thread.
        """

    def post_comment(new: NewPost, *, read_preference: ReadPreference) -> Deferred[Written[Posted]]:
        """Post a comment to the thread of ``new.url_id`` in one write: the
        poster's new session (or the check that theirs exists, or the
        tenant's user, created or renamed), the thread when it is new, the
        comment. A backend whose primary is far sends it in one round trip.

        :returns: ``Deferred[Written[Posted]]``; ``NotFound`` for an unknown
            tenant, session or parent, ``InvalidReference`` for a parent in
            another thread, ``ThreadClosed`` (with ``open_only``), and the
            failures of ``new.expect``; a failed post applies nothing.
        """

    def get_comment(
        tenant_id: str, comment_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Comment]:
        """:returns: ``Deferred[Comment]``; ``NotFound`` if absent."""

    def list_thread(
        tenant_id: str,
        thread_id: str,
        *,
        sort: Sort,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[ThreadPage]:
        """A page of the thread's approved top-level comments and, for each,
        every approved reply beneath it (oldest first).

        :returns: ``Deferred[ThreadPage]``
        """

    def list_comments(
        tenant_id: str,
        *,
        status: CommentStatus,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        thread_id: str | None = None,
        token: str | None = None,
    ) -> Deferred[Page[Comment]]:
        """Comments of one status (all threads, or one), newest first: the
        moderation queue.

        :returns: ``Deferred[Page[Comment]]``
        """

    def update_comment(
        tenant_id: str,
        comment_id: str,
        *,
        edited_ms: int,
        read_preference: ReadPreference,
        body: tuple[str, str] | None = None,
        status: CommentStatus | None = None,
    ) -> Deferred[Written[Comment]]:
        """Change a comment's body (``(source, html)``) and/or its status.

        :returns: ``Deferred[Written[Comment]]``; ``NotFound`` if absent.
        """

    def change_comment(
        tenant_id: str,
        comment_id: str,
        *,
        edited_ms: int,
        read_preference: ReadPreference,
        body: tuple[str, str] | None = None,
        status: CommentStatus | None = None,
    ) -> Deferred[Written[Change]]:
        """:meth:`update_comment`, answering the comment as it was before the
        write too (what live readers are told depends on both), from the
        same one write.

        :returns: ``Deferred[Written[Change]]``; ``NotFound`` if absent.
        """

    def delete_comment(
        tenant_id: str, comment_id: str, *, read_preference: ReadPreference, deleted_ms: int = 0
    ) -> Deferred[Written[int]]:
        """Delete a comment and every reply beneath it, emitting a
        ``comment.removed`` webhook event (stamped ``deleted_ms``) for each.

        :returns: ``Deferred[Written[int]]``: how many comments went.
        """

    # Votes, flags, blocks

    def add_like(
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
        """:param expect: what the caller read from a replica, checked in
            the same write (:class:`~fastedge.store.model.Expect`).
        :param new_session: create this session (from
            :meth:`new_anonymous_session`) in the same write; ``voter_id``
            is its author.
        :param address_hash: the hashed client address the like came
            from, remembered with it.
        :param max_per_address: refuse the like (``LimitReached``) when
            this many likes of the comment already came from ``address_hash``.
        :returns: ``Deferred[Written[int]]``, the new like count;
        ``AlreadyExists`` if this voter already likes it, ``NotFound`` for an
        unknown comment or voter (an author id)."""

    def remove_like(
        tenant_id: str,
        comment_id: str,
        voter_id: str,
        *,
        read_preference: ReadPreference,
        expect: Expect | None = None,
    ) -> Deferred[Written[int]]:
        """:param expect: what the caller read from a replica, checked in
            the same write (:class:`~fastedge.store.model.Expect`).
        :returns: ``Deferred[Written[int]]``, the new like count;
        ``NotFound`` if this voter did not like it."""

    def add_flag(
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
        """:param expect: what the caller read from a replica, checked in
            the same write (:class:`~fastedge.store.model.Expect`).
        :param new_session: create this session in the same write (see
            :meth:`add_like`).
        :param hide_at: when the flag count reaches this and the comment
            is approved, hide it (status ``PENDING``, back to review) in the
            same transaction and write an ``auto_hide`` audit entry.
        :returns: ``Deferred[Written[int]]``, the new flag count;
        ``AlreadyExists`` if already flagged by this author, ``NotFound`` for
        an unknown comment or flagger."""

    def add_block(
        tenant_id: str,
        viewer_id: str,
        author_id: str,
        *,
        created_ms: int,
        read_preference: ReadPreference,
        expect: Expect | None = None,
        new_session: AnonymousSession | None = None,
    ) -> Deferred[Written[None]]:
        """The viewer no longer sees the author's comments.

        :param expect: what the caller read from a replica, checked in the
            same write (:class:`~fastedge.store.model.Expect`).
        :param new_session: create this session in the same write (see
            :meth:`add_like`).

        :returns: ``Deferred[Written[None]]``; ``NotFound`` for an unknown
            author or viewer, ``AlreadyExists`` if already blocked,
            ``InvalidReference`` for blocking oneself.
        """

    def remove_block(
        tenant_id: str,
        viewer_id: str,
        author_id: str,
        *,
        read_preference: ReadPreference,
        expect: Expect | None = None,
    ) -> Deferred[Written[None]]:
        """:param expect: what the caller read from a replica, checked in
            the same write (:class:`~fastedge.store.model.Expect`).
        :returns: ``Deferred[Written[None]]``; ``NotFound`` if not blocked."""

    def viewer_state(
        tenant_id: str,
        viewer_id: str,
        comment_ids: Sequence[str],
        *,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[ViewerState]:
        """Which of ``comment_ids`` the viewer likes, and every author the
        viewer blocks.

        :returns: ``Deferred[ViewerState]``
        """

    # Moderation

    def moderation_queue(
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
        """A page of the moderation queue.

        :returns: ``Deferred[Page[Comment]]``; ``BadCursor`` for a cursor of
            another listing, queue or sort.
        """

    def moderate(
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
        """Apply ``action`` to up to ``MAX_BULK_IDS`` distinct comments, with
        its audit entry, in one transaction and one statement per table.

        :param ban_expires_ms: ``BAN`` only: when the bans end (``None``: never).
        :param remove_all: ``BAN`` only: remove every comment of the banned authors.
        :returns: ``Deferred[Written[Moderated]]``; ``NotFound`` if any id is
            not a comment of this tenant, ``InvalidReference`` for too many
            or repeated ids or an expiry not after ``created_ms``; nothing
            is applied then.
        """

    def add_ban(
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
        """Ban an author (by author id) or a hashed address, with its audit entry.

        :param remove_all: remove every comment of the author (``AUTHOR`` only).
        :returns: ``Deferred[Written[Moderated]]``; ``NotFound`` for an
            unknown author, ``InvalidReference`` for an expiry not after
            ``created_ms``.
        """

    def lift_ban(
        tenant_id: str, ban_id: str, *, actor: str, reason: str, lifted_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[Ban]]:
        """End a ban now, with its audit entry.

        :returns: ``Deferred[Written[Ban]]``; ``NotFound`` if absent or already lifted.
        """

    def list_bans(
        tenant_id: str,
        *,
        active_at_ms: int | None,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[Page[Ban]]:
        """Bans, newest first; only those in force at ``active_at_ms`` when given.

        :returns: ``Deferred[Page[Ban]]``
        """

    def find_ban(
        tenant_id: str,
        *,
        author_id: str | None,
        address_hash: str | None,
        now_ms: int,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[Ban | None]:
        """A ban in force at ``now_ms`` on the author or the address, if any.

        :returns: ``Deferred[Ban | None]``
        """

    def audit_log(
        tenant_id: str, *, limit: int, cursor: str | None, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[Page[AuditEntry]]:
        """The moderation audit log, newest first.

        :returns: ``Deferred[Page[AuditEntry]]``
        """

    # Credits

    def charge_credits(
        tenant_id: str, charges: Mapping[str, tuple[int, int]], *, created_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[None]]:
        """Append to the tenant's credit ledger.

        :param charges: ``{operation: (calls, credits)}``
        :returns: ``Deferred[Written[None]]``
        """

    def credit_usage(
        tenant_id: str, *, since_ms: int, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[list[CreditUsage]]:
        """Calls and credits per operation since ``since_ms``.

        :returns: ``Deferred[list[CreditUsage]]``, sorted by operation.
        """


class IWebhookStore(Interface):
    """Webhook endpoints and the delivery outbox (docs/webhooks.md).

    The outbox is written by :class:`IStore`'s own writes: each change that
    is a webhook event (a comment created, edited, removed, approved,
    flagged or marked spam, an author banned, a thread created or closed)
    adds, in the same transaction, one pending delivery per active endpoint
    of the tenant subscribed to it. A rolled-back change leaves none.
    """

    def create_webhook(
        tenant_id: str,
        *,
        url: str,
        secret: str,
        events: Sequence[WebhookEvent],
        active: bool,
        description: str,
        created_ms: int,
        read_preference: ReadPreference,
    ) -> Deferred[Written[WebhookEndpoint]]:
        """:returns: ``Deferred[Written[WebhookEndpoint]]``; ``NotFound`` for no such tenant."""

    def get_webhook(
        tenant_id: str, webhook_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[WebhookEndpoint]:
        """:returns: ``Deferred[WebhookEndpoint]``; ``NotFound`` if absent."""

    def list_webhooks(
        tenant_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[list[WebhookEndpoint]]:
        """The tenant's endpoints, oldest first.

        :returns: ``Deferred[list[WebhookEndpoint]]``
        """

    def update_webhook(
        tenant_id: str,
        webhook_id: str,
        *,
        updated_ms: int,
        read_preference: ReadPreference,
        url: str | None = None,
        secret: str | None = None,
        events: Sequence[WebhookEvent] | None = None,
        active: bool | None = None,
        description: str | None = None,
    ) -> Deferred[Written[WebhookEndpoint]]:
        """Change what is given (``None``: unchanged). A new secret signs
        from now on; turning on clears the failure count and the reason it
        was turned off; turning off fails its pending deliveries.

        :returns: ``Deferred[Written[WebhookEndpoint]]``; ``NotFound`` if absent.
        """

    def delete_webhook(tenant_id: str, webhook_id: str, *, read_preference: ReadPreference) -> Deferred[Written[None]]:
        """Delete an endpoint and its undelivered deliveries.

        :returns: ``Deferred[Written[None]]``; ``NotFound`` if absent.
        """

    def list_webhook_deliveries(
        tenant_id: str,
        webhook_id: str,
        *,
        state: DeliveryState,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[Page[WebhookDelivery]]:
        """An endpoint's pending or failed deliveries, oldest first.

        :returns: ``Deferred[Page[WebhookDelivery]]``; ``NotFound`` for no such endpoint.
        """

    def replay_webhook_delivery(
        tenant_id: str, webhook_id: str, event_id: str, *, now_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[WebhookDelivery]]:
        """Make a failed delivery pending again, due at ``now_ms``, its retry
        window starting then.

        :returns: ``Deferred[Written[WebhookDelivery]]``; ``NotFound`` for no
            such failed delivery, ``InvalidReference`` for an endpoint turned off.
        """

    def claim_webhook_deliveries(
        *,
        owner: str,
        now_ms: int,
        lease_ms: int,
        limit: int,
        read_preference: ReadPreference,
        finished: Sequence[DeliveryDone] = (),
    ) -> Deferred[WebhookClaim]:
        """In one transaction: remove the ``finished`` deliveries (those
        the receiver accepted) still leased to their claimers, resetting
        their endpoints' failure counts; then lease up to ``limit`` due
        deliveries to ``owner`` (unique per claim) until ``now_ms +
        lease_ms``, with their endpoints' URL and secret. Never two leases
        on one delivery at once, whatever the number of nodes; an
        endpoint's deliveries in the order of their changes, except that
        one waiting for a retry lets later ones pass.

        :returns: ``Deferred[WebhookClaim]``
        """

    def release_webhook_deliveries(
        seqs: Sequence[int], *, owner: str, read_preference: ReadPreference
    ) -> Deferred[Written[int]]:
        """End ``owner``'s leases on ``seqs`` unsent.

        :returns: ``Deferred[Written[int]]``: how many were still leased to ``owner``.
        """

    def record_webhook_failure(
        seq: int, endpoint_id: str, outcome: AttemptOutcome, *, owner: str, read_preference: ReadPreference
    ) -> Deferred[Written[WebhookEndpoint | None]]:
        """A failed attempt (see :class:`~fastedge.store.model.AttemptOutcome`).

        :returns: ``Deferred[Written[WebhookEndpoint | None]]``: the endpoint
            when this attempt turned it off.
        """

    def webhook_queue(*, read_preference: ReadPreference, token: str | None = None) -> Deferred[WebhookQueue]:
        """:returns: ``Deferred[WebhookQueue]``"""
