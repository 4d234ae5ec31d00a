"""Expected API failures and how store failures map onto HTTP."""

from __future__ import annotations

from typing import Any

from ..store import errors as store_errors


class ApiError(Exception):
    """An expected failure, answered as JSON with ``status``.

    :param code: stable, machine-readable (``thread_closed``).
    :param cookies: ``Set-Cookie`` values to send with the error.
    :param message: for people; never contains secrets or other tenants' data.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[bytes, bytes] | None = None,
        *,
        cookies: list[bytes] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        #: ``Set-Cookie`` values sent with the error (clearing a bad session).
        self.cookies = cookies or []
        self.extra = extra


def bad_request(message: str, code: str = "bad_request", **extra: Any) -> ApiError:
    return ApiError(400, code, message, **extra)


def not_found(what: str) -> ApiError:
    return ApiError(404, what.replace(" ", "_") + "_not_found", "{} not found".format(what))


def from_store_error(e: store_errors.StoreError) -> ApiError:
    """The HTTP answer for an expected store failure."""
    if isinstance(e, store_errors.NotFound):
        return not_found(e.what)
    if isinstance(e, store_errors.AlreadyExists):
        return ApiError(409, e.what.replace(" ", "_") + "_exists", "{} already exists".format(e.what))
    if isinstance(e, store_errors.LimitReached):
        return ApiError(409, "limit_reached", str(e))
    if isinstance(e, store_errors.InvalidReference):
        return ApiError(422, "invalid_reference", str(e))
    if isinstance(e, store_errors.BadCursor):
        return bad_request(str(e), code="bad_cursor")
    if isinstance(e, store_errors.BadToken):
        return bad_request(str(e), code="bad_consistency_token")
    if isinstance(e, store_errors.CommitUnknown):
        # Never reported as a success, never as "not applied": the caller
        # must look before writing again.
        return ApiError(
            503,
            "commit_unknown",
            "the database failed while saving this change; it may or may not have been saved: check before retrying",
        )
    if isinstance(e, store_errors.StoreUnavailable):
        return ApiError(
            503, "store_unavailable", "the database is not available; try again", headers={b"retry-after": b"1"}
        )
    return ApiError(500, "store_error", "the database failed to answer")
