# -*- test-case-name: tests.unit.api.test_public -*-
"""Validation and JSON views shared by the public and tenant APIs."""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from ..config import ApiConfig
from ..http.errors import ApiError, bad_request, not_found
from ..http.router import Call
from ..identity.sessions import SessionCookies
from ..inputs import InputError, parse_ascii_int
from ..store.model import Comment, ReadPreference, Sort, Thread, ViewerState
from ..store.views import public_comment

#: Ids we issue are URL-safe base64; anything else cannot name a record.
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def record_id(value: str, what: str) -> str:
    """An id from a URL; malformed ids are reported as not found (no oracle)."""
    if not _ID_RE.match(value):
        raise not_found(what)
    return value


def now_ms(call_clock_seconds: float) -> int:
    return int(call_clock_seconds * 1000)


class AddressHasher:
    """The one hash a client address is kept as (likes per address, bans by
    address): HMAC-SHA256 under a sub-key of the deployment's session key
    (``HMAC(key, "address-hash")``), per tenant.

    Keyed, so a stored hash cannot be reversed by hashing every IPv4
    address (2**32 tries); the same on every node (they share
    ``api.secret_file``); per tenant, so one tenant's hashes say nothing
    about another's visitors. Changing the key file (or moving from the
    unkeyed hash of earlier releases) makes old hashes match nothing
    (docs/moderation.md).
    """

    LABEL = "address-hash"

    def __init__(self, cookies: SessionCookies) -> None:
        self._cookies = cookies
        self._key: bytes | None = None

    def __call__(self, tenant_id: str, address: str) -> str:
        if self._key is None:
            # The session key is loaded at start, after construction.
            self._key = self._cookies.derive_key(self.LABEL)
        message = "{}\0{}".format(tenant_id, address).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


def query_int(call: Call, name: str, default: int, low: int, high: int) -> int:
    raw = call.query.get(name)
    if raw is None:
        return default
    try:
        return parse_ascii_int(raw, low, high)
    except InputError:
        raise bad_request("{} must be an integer from {} to {}".format(name, low, high), code="bad_query") from None


def page_limit(call: Call, cfg: ApiConfig) -> int:
    """The ``limit`` query parameter of a listing: ``api.page_size`` when
    absent, 1 to ``api.max_page_size`` (else 400 ``bad_query``)."""
    return query_int(call, "limit", cfg.page_size, 1, cfg.max_page_size)


def url_id(call: Call, cfg: ApiConfig, value: str | None = None) -> str:
    """The thread's ``urlId`` (from the query string unless given)."""
    if value is None:
        value = call.query.get("urlId")
    if value is None:
        raise bad_request("urlId is required", code="missing_url_id")
    if not value or len(value) > cfg.url_id_max_chars:
        raise bad_request("urlId must be 1 to {} characters".format(cfg.url_id_max_chars), code="bad_url_id")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise bad_request("urlId must not contain control characters", code="bad_url_id")
    return value


def sort(call: Call) -> Sort:
    """``sort=newest|oldest|top`` from the query string (default newest)."""
    try:
        return Sort(call.query.get("sort", "newest"))
    except ValueError:
        raise bad_request("sort must be newest, oldest or top", code="bad_sort") from None


def read_preference(call: Call, default: ReadPreference) -> ReadPreference:
    """``readPreference=primary|nearest`` from the query string."""
    raw = call.query.get("readPreference")
    if raw is None:
        return default
    try:
        return ReadPreference(raw)
    except ValueError:
        raise bad_request("readPreference must be 'primary' or 'nearest'", code="bad_read_preference") from None


def comment_text(cfg: ApiConfig, text: str) -> str:
    stripped = text.strip()
    if not stripped:
        raise bad_request("text must not be empty", code="empty_text", field="text")
    if len(stripped) > cfg.comment_max_chars:
        raise ApiError(
            400,
            "text_too_long",
            "text is longer than {} characters".format(cfg.comment_max_chars),
            field="text",
        )
    if "\x00" in stripped:
        raise bad_request("text must not contain NUL", code="bad_text", field="text")
    return stripped


def display_name(cfg: ApiConfig, name: str) -> str:
    stripped = " ".join(name.split())
    if not stripped or len(stripped) > cfg.display_name_max_chars:
        raise bad_request(
            "displayName must be 1 to {} characters".format(cfg.display_name_max_chars),
            code="bad_display_name",
            field="displayName",
        )
    if any(_hidden(ch) for ch in stripped):
        raise bad_request(
            "displayName must not contain control characters", code="bad_display_name", field="displayName"
        )
    return stripped


def _hidden(ch: str) -> bool:
    """A control character, or a format character of the BMP (bidirectional
    overrides, zero-width characters) that could make one name look like
    another. Format characters beyond the BMP are allowed: they are mostly
    the tag characters of emoji flags (England, Scotland, Wales); and so
    docs/openapi.yaml can state the rule as a pattern."""
    category = unicodedata.category(ch)
    return category == "Cc" or (category == "Cf" and ord(ch) < 0x10000)


def thread_view(thread: Thread) -> dict[str, Any]:
    return {
        "id": thread.id,
        "urlId": thread.url_id,
        "title": thread.title,
        "closed": thread.closed,
        "commentCount": thread.comment_count,
        "createdAt": thread.created_ms,
    }


def manage_comment(c: Comment) -> dict[str, Any]:
    """What the tenant sees of any comment of theirs."""
    view = public_comment(c)
    view.update(
        threadId=c.thread_id,
        text=c.body_source,
        status=c.status.value,
        flags=c.flag_count,
    )
    return view


def viewer_fields(c: Comment, viewer_author: str | None, state: ViewerState | None) -> dict[str, Any]:
    """The viewer's own state on one comment (all false for no viewer)."""
    blocked = state is not None and c.author_id in state.blocked_authors
    return {
        "likedByMe": state is not None and c.id in state.liked,
        "isMine": viewer_author is not None and c.author_id == viewer_author,
        "authorBlockedByMe": blocked,
    }


def usage_view(usage: Iterable[Any]) -> list[Mapping[str, Any]]:
    return [{"operation": u.operation, "calls": u.calls, "credits": u.credits} for u in usage]
