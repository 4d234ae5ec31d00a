"""Expected store failures; the HTTP layer maps each to a status code."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the store's expected errors."""


class NotFound(StoreError):
    """The named record does not exist (in this tenant)."""

    def __init__(self, what: str) -> None:
        super().__init__("{} not found".format(what))
        self.what = what


class AlreadyExists(StoreError):
    """The write would repeat something that may happen once (a like, a flag)."""

    def __init__(self, what: str) -> None:
        super().__init__("{} already exists".format(what))
        self.what = what


class InvalidReference(StoreError):
    """A reference points at a record that may not be used here."""


class BadCursor(StoreError):
    """A listing cursor that this store did not issue."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or used right now."""


class StoreClosed(StoreUnavailable):
    """The store was closed (its node is stopping): every call made after
    ``stopService`` fails at once with this, on every backend, instead of
    waiting on a thread pool that no longer runs."""


class WrongReadPreference(StoreError, ValueError):
    """A write was asked to read anywhere but the primary."""


class BadToken(StoreError, ValueError):
    """A consistency token that this store did not issue (malformed)."""


class CommitUnknown(StoreUnavailable):
    """The primary went away while committing a write: the write may or may
    not have been applied. Never reported as a success; read before retrying."""


class LimitReached(StoreError):
    """The write would pass a bound (likes of one comment from one address)."""

    def __init__(self, what: str) -> None:
        super().__init__("{} limit reached".format(what))
        self.what = what


class ThreadClosed(StoreError):
    """The thread is closed to new comments."""

    def __init__(self) -> None:
        super().__init__("the thread is closed to new comments")


class Stale(StoreError):
    """What the caller read from a replica and checked no longer holds on the
    primary (see :class:`~fastedge.store.model.Expect`): nothing was applied;
    check again on the primary and retry."""


class AccessRefused(Exception):
    """A thread's access rules refuse the caller (group lock, closed thread,
    sign-in required): 403 with ``reason`` as the code on the HTTP API,
    ``forbidden`` on live connections.

    :ivar reason: ``thread_locked``, ``thread_closed`` or ``sign_in_required``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
