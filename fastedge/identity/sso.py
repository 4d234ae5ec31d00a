# -*- test-case-name: tests.unit.identity.test_sso -*-
"""Secure SSO: the site owner's server vouches for a signed-in user.

The scheme (docs/sso.md) is the one FastComments and Disqus use: the site
owner's server serialises the user as JSON, encodes it in base64 (the
*payload*), and signs ``timestamp + payload`` with HMAC-SHA256 under the
tenant's SSO secret (hex digest); ``timestamp`` is the signing time in
milliseconds since the epoch, in decimal. The browser passes the three
values to the node, which checks them with :func:`verify_sso`: the
signature under every secret the tenant accepts now (the current one and,
during a rotation's overlap, the one before), compared in constant time;
the age (``api.sso_max_age_seconds``, default two days) and how far in the
future the timestamp may be (``api.sso_skew_seconds``).

The payload's fields: ``id`` (required: the user's id on the site),
``displayName`` (required), ``email``, ``avatar`` (an http(s) URL),
``groupIds`` (at most 100 ids of at most 64 characters), ``isModerator``,
``isAdmin``. Other fields are ignored, so a payload made for another
service still works.

:func:`verify_sso` is pure (no store, no clock) so every entry point uses
the same check: the public API's ``POST /api/v1/{tenant}/sso`` and
``X-FastEdge-SSO`` header, the live connection's ``sso`` message and the
embed page's query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..store.model import SsoSecret, UserProfile
from ..store.settings import SettingsError, check_group_ids

#: Longest payload accepted (base64 characters).
MAX_PAYLOAD_CHARS = 16_384
DEFAULT_MAX_AGE_MS = 2 * 24 * 3600 * 1000
DEFAULT_SKEW_MS = 5 * 60 * 1000
#: SSO secrets: 32 to 256 printable ASCII characters without spaces.
_SECRET = re.compile(r"^[\x21-\x7e]{32,256}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_MAX_ID_CHARS = 256
_MAX_NAME_CHARS = 64
_MAX_EMAIL_CHARS = 320
_MAX_AVATAR_CHARS = 2048


class SsoError(Exception):
    """An SSO payload that is not accepted.

    :ivar code: ``sso_malformed`` (400: not a payload at all),
        ``sso_disabled`` (403: the tenant has no SSO secret),
        ``sso_bad_signature``, ``sso_expired``, ``sso_from_future`` (401).
    :ivar field: the offending field of the payload, if one.
    """

    STATUS = {"sso_malformed": 400, "sso_disabled": 403}

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    @property
    def status(self) -> int:
        """The HTTP status this error is answered with."""
        return self.STATUS.get(self.code, 401)


@dataclass(frozen=True)
class SsoUser:
    """A user the tenant's server vouched for."""

    external_id: str
    display_name: str
    profile: UserProfile


def check_secret(key: str, value: Any) -> str | None:
    """A new SSO secret (``None`` removes SSO).

    :raises SettingsError: naming ``key``; the message never repeats the value.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not _SECRET.match(value):
        raise SettingsError(
            key, "must be 32 to 256 printable ASCII characters without spaces (or null to turn SSO off)"
        )
    return value


def sso_status(secrets: Sequence[SsoSecret]) -> dict[str, Any]:
    """What the tenant API shows of the SSO secrets: never the secrets."""
    current = [s for s in secrets if s.accepted_until_ms is None]
    older = [s.accepted_until_ms for s in secrets if s.accepted_until_ms is not None]
    return {
        "secretSet": bool(current),
        "secretSetAt": current[0].created_ms if current else None,
        "previousSecretAcceptedUntil": max(older) if older else None,
    }


def sign(secret: str, payload: str, timestamp: int) -> str:
    """The signature of ``payload`` at ``timestamp`` (what the tenant's server
    computes; used by the node's own tools and docs, never by the check's tests)."""
    return hmac.new(secret.encode("utf-8"), (str(timestamp) + payload).encode("ascii"), hashlib.sha256).hexdigest()


def verify_sso(
    secrets: Sequence[str],
    payload: Any,
    timestamp: Any,
    signature: Any,
    *,
    now_ms: int,
    max_age_ms: int = DEFAULT_MAX_AGE_MS,
    skew_ms: int = DEFAULT_SKEW_MS,
) -> SsoUser:
    """The user a signed SSO payload names.

    :param secrets: the secrets the tenant accepts now (any may have signed).
    :param timestamp: milliseconds, as an integer or a decimal string.
    :raises SsoError: see its codes; nothing is trusted before the
        signature has been checked.
    """
    if not isinstance(payload, str) or not payload or len(payload) > MAX_PAYLOAD_CHARS or not _B64.match(payload):
        raise SsoError(
            "sso_malformed", "the SSO payload must be base64 of at most {} characters".format(MAX_PAYLOAD_CHARS)
        )
    if isinstance(timestamp, str) and timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 16:
        ts = int(timestamp)
    elif isinstance(timestamp, int) and not isinstance(timestamp, bool) and 0 <= timestamp < 10**16:
        ts = timestamp
    else:
        raise SsoError("sso_malformed", "the SSO timestamp must be milliseconds since the epoch")
    if not isinstance(signature, str) or not _HEX64.match(signature):
        raise SsoError("sso_malformed", "the SSO signature must be 64 hex digits (HMAC-SHA256)")
    if not secrets:
        raise SsoError("sso_disabled", "this site has not set up SSO")
    wanted = signature.lower().encode("ascii")
    ok = False
    for secret in secrets:
        # Every secret is tried, so the time taken does not tell which matched.
        ok |= hmac.compare_digest(sign(secret, payload, ts).encode("ascii"), wanted)
    if not ok:
        raise SsoError("sso_bad_signature", "the SSO signature does not match")
    if ts > now_ms + skew_ms:
        raise SsoError("sso_from_future", "the SSO timestamp is in the future; check the signing server's clock")
    if now_ms - ts > max_age_ms:
        raise SsoError("sso_expired", "the SSO payload has expired; sign it again")
    try:
        data = json.loads(base64.b64decode(payload, validate=True).decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise SsoError("sso_malformed", "the SSO payload is not base64 of JSON") from None
    if not isinstance(data, dict):
        raise SsoError("sso_malformed", "the SSO payload must be a JSON object")
    return _user(data)


def _text(data: dict[str, Any], name: str, longest: int, *, required: bool) -> str | None:
    value = data.get(name)
    if value is None or (value == "" and not required):
        if required:
            raise SsoError("sso_malformed", "the SSO payload has no {!r}".format(name), field=name)
        return None
    if not isinstance(value, str) or not 0 < len(value) <= longest or not value.isprintable():
        raise SsoError("sso_malformed", "{!r} must be 1 to {} printable characters".format(name, longest), field=name)
    return value


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SsoError("sso_malformed", "{!r} must be true or false".format(name), field=name)
    return value


def _user(data: dict[str, Any]) -> SsoUser:
    raw_id = data.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        # Many sites number their users; the id is kept as text.
        data = dict(data, id=str(raw_id))
    external_id = _text(data, "id", _MAX_ID_CHARS, required=True)
    name = _text(data, "displayName", _MAX_NAME_CHARS, required=True)
    email = _text(data, "email", _MAX_EMAIL_CHARS, required=False)
    avatar = _text(data, "avatar", _MAX_AVATAR_CHARS, required=False)
    if avatar is not None and not avatar.lower().startswith(("https://", "http://")):
        raise SsoError("sso_malformed", "'avatar' must be an http(s) URL", field="avatar")
    groups = data.get("groupIds")
    try:
        group_ids = () if groups is None else check_group_ids("groupIds", groups)
    except SettingsError as e:
        raise SsoError("sso_malformed", str(e), field="groupIds") from None
    assert external_id is not None and name is not None
    name = " ".join(name.split())
    if not name:
        raise SsoError("sso_malformed", "'displayName' must not be blank", field="displayName")
    return SsoUser(
        external_id=external_id,
        display_name=name,
        profile=UserProfile(
            email=email,
            avatar=avatar,
            group_ids=group_ids,
            is_moderator=_flag(data, "isModerator"),
            is_admin=_flag(data, "isAdmin"),
        ),
    )
