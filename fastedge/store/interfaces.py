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

from zope.interface import Attribute, Interface


class IStore(Interface):
    """Comment data for all tenants of one deployment."""

    backend = Attribute("Short name of the backend, used as a metric label.")

    def open():  # type: ignore[misc]
        """Connect and apply pending schema migrations (to the primary).

        :returns: ``Deferred[None]``
        """

    def close():  # type: ignore[misc]
        """Release connections and threads.

        :returns: ``Deferred[None]``
        """

    def token_covers(have, want):  # type: ignore[misc]
        """Whether a read as new as token ``have`` is as new as token ``want``.

        Tokens are positions in one history, so callers keep the newest of
        several (a session cookie) and tell whether something read at one
        position may be served to a caller holding another (a page cache).
        ``None`` is the oldest position: it covers only ``None``, unless the
        backend has a single copy, where every read covers every write.
        Synchronous: no I/O.

        :returns: ``bool``; raises ``BadToken`` for a malformed token.
        """

    def ping(*, read_preference):  # type: ignore[misc]
        """Check that the database answers.

        :returns: ``Deferred[None]``; fails with ``StoreUnavailable``.
        """

    # Tenants and API keys

    def create_tenant(name, deployment, *, created_ms, read_preference):  # type: ignore[misc]
        """:returns: ``Deferred[Written[Tenant]]``"""

    def get_tenant(tenant_id, *, read_preference, token=None):  # type: ignore[misc]
        """:returns: ``Deferred[Tenant]``; ``NotFound`` if absent."""

    def update_tenant_settings(tenant_id, settings, *, read_preference):  # type: ignore[misc]
        """Replace the tenant's settings mapping.

        :returns: ``Deferred[Written[Tenant]]``
        """

    def add_api_key(tenant_id, key_hash, *, created_ms, read_preference):  # type: ignore[misc]
        """Store the hash of a new API key (the key itself is never stored).

        :returns: ``Deferred[Written[ApiKey]]``
        """

    def revoke_api_key(tenant_id, key_id, *, revoked_ms, read_preference):  # type: ignore[misc]
        """:returns: ``Deferred[Written[ApiKey]]``; ``NotFound`` if absent."""

    def list_api_keys(tenant_id, *, read_preference, token=None):  # type: ignore[misc]
        """:returns: ``Deferred[list[ApiKey]]``"""

    def tenant_for_api_key(key_hash, *, read_preference, token=None):  # type: ignore[misc]
        """The tenant owning an unrevoked key with this hash.

        :returns: ``Deferred[Tenant]``; ``NotFound`` if unknown or revoked.
        """

    # Authors: anonymous sessions and SSO users

    def create_anonymous_session(tenant_id, *, created_ms, read_preference):  # type: ignore[misc]
        """Create an anonymous author and the session that speaks for it.

        :returns: ``Deferred[Written[AnonymousSession]]``
        """

    def get_anonymous_session(tenant_id, session_id, *, read_preference, token=None):  # type: ignore[misc]
        """:returns: ``Deferred[AnonymousSession]``; ``NotFound`` if absent."""

    def upsert_user(tenant_id, external_id, display_name, *, created_ms, read_preference):  # type: ignore[misc]
        """Create or rename the user the tenant's SSO knows as ``external_id``.

        :returns: ``Deferred[Written[User]]``
        """

    def get_author(tenant_id, author_id, *, read_preference, token=None):  # type: ignore[misc]
        """:returns: ``Deferred[Author]``; ``NotFound`` if absent."""

    # Threads

    def upsert_thread(tenant_id, url_id, *, created_ms, read_preference, title=None, closed=None):  # type: ignore[misc]
        """Create the thread for ``url_id`` if absent; set title/closed when given.

        :returns: ``Deferred[Written[Thread]]``
        """

    def get_thread(tenant_id, url_id, *, read_preference, token=None):  # type: ignore[misc]
        """:returns: ``Deferred[Thread]``; ``NotFound`` if absent."""

    def get_thread_by_id(tenant_id, thread_id, *, read_preference, token=None):  # type: ignore[misc]
        """:returns: ``Deferred[Thread]``; ``NotFound`` if absent."""

    def list_threads(tenant_id, *, limit, cursor, read_preference, token=None):  # type: ignore[misc]
        """Threads, newest first.

        :returns: ``Deferred[Page[Thread]]``; ``BadCursor`` for a foreign cursor.
        """

    def delete_thread(tenant_id, thread_id, *, read_preference):  # type: ignore[misc]
        """Delete a thread with all its comments, votes and flags.

        :returns: ``Deferred[Written[None]]``; ``NotFound`` if absent.
        """

    # Comments

    def create_comment(new, *, read_preference):  # type: ignore[misc]
        """Add a comment (``new`` is a ``NewComment``).

        :returns: ``Deferred[Written[Comment]]``; ``NotFound`` for an unknown
            thread or parent, ``InvalidReference`` for a parent in another thread.
        """

    def get_comment(tenant_id, comment_id, *, read_preference, token=None):  # type: ignore[misc]
        """:returns: ``Deferred[Comment]``; ``NotFound`` if absent."""

    def list_thread(tenant_id, thread_id, *, sort, limit, cursor, read_preference, token=None):  # type: ignore[misc]
        """A page of the thread's approved top-level comments and, for each,
        every approved reply beneath it (oldest first).

        :returns: ``Deferred[ThreadPage]``
        """

    def list_comments(tenant_id, *, status, limit, cursor, read_preference, thread_id=None, token=None):  # type: ignore[misc]
        """Comments of one status (all threads, or one), newest first: the
        moderation queue.

        :returns: ``Deferred[Page[Comment]]``
        """

    def update_comment(tenant_id, comment_id, *, edited_ms, read_preference, body=None, status=None):  # type: ignore[misc]
        """Change a comment's body (``(source, html)``) and/or its status.

        :returns: ``Deferred[Written[Comment]]``; ``NotFound`` if absent.
        """

    def delete_comment(tenant_id, comment_id, *, read_preference):  # type: ignore[misc]
        """Delete a comment and every reply beneath it.

        :returns: ``Deferred[Written[int]]``: how many comments went.
        """

    # Votes, flags, blocks

    def add_like(tenant_id, comment_id, voter_id, *, created_ms, read_preference):  # type: ignore[misc]
        """:returns: ``Deferred[Written[int]]``, the new like count;
        ``AlreadyExists`` if this voter already likes it, ``NotFound`` for an
        unknown comment or voter (an author id)."""

    def remove_like(tenant_id, comment_id, voter_id, *, read_preference):  # type: ignore[misc]
        """:returns: ``Deferred[Written[int]]``, the new like count;
        ``NotFound`` if this voter did not like it."""

    def add_flag(tenant_id, comment_id, flagger_id, *, created_ms, read_preference):  # type: ignore[misc]
        """:returns: ``Deferred[Written[int]]``, the new flag count;
        ``AlreadyExists`` if already flagged by this author, ``NotFound`` for
        an unknown comment or flagger."""

    def add_block(tenant_id, viewer_id, author_id, *, created_ms, read_preference):  # type: ignore[misc]
        """The viewer no longer sees the author's comments.

        :returns: ``Deferred[Written[None]]``; ``NotFound`` for an unknown
            author or viewer, ``AlreadyExists`` if already blocked,
            ``InvalidReference`` for blocking oneself.
        """

    def remove_block(tenant_id, viewer_id, author_id, *, read_preference):  # type: ignore[misc]
        """:returns: ``Deferred[Written[None]]``; ``NotFound`` if not blocked."""

    def viewer_state(tenant_id, viewer_id, comment_ids, *, read_preference, token=None):  # type: ignore[misc]
        """Which of ``comment_ids`` the viewer likes, and every author the
        viewer blocks.

        :returns: ``Deferred[ViewerState]``
        """

    # Credits

    def charge_credits(tenant_id, charges, *, created_ms, read_preference):  # type: ignore[misc]
        """Append to the tenant's credit ledger.

        :param charges: ``{operation: (calls, credits)}``
        :returns: ``Deferred[Written[None]]``
        """

    def credit_usage(tenant_id, *, since_ms, read_preference, token=None):  # type: ignore[misc]
        """Calls and credits per operation since ``since_ms``.

        :returns: ``Deferred[list[CreditUsage]]``, sorted by operation.
        """
