# -*- test-case-name: tests.unit.identity.test_sessions -*-
"""Anonymous-session cookies: signed, HttpOnly, SameSite, bound to a tenant.

The cookie value is ``v2.<tenant>.<session>.<issued>.<token>.<mac>``: the
MAC (HMAC-SHA256 under the node's session key) covers the tenant, so a
cookie issued for one tenant is refused by every other; ``issued`` (seconds)
bounds its age. The session id itself is secret (only its holder can act as
that commenter); comments show the session's separate, public author id.

``token`` (base64url, may be empty) is the consistency token of the
viewer's latest write: every write re-issues the cookie with it, keeping the
original ``issued`` (so writing does not extend a session's life), and a
page load that carries it reads at least that new from the nearest replica
(docs/consistency.md). Cookies of the first format, ``v1`` (no token), are
still accepted.

Every node of a deployment must share the key file (``api.secret_file``)
for a session to work at any of them; a lone node creates one on first
start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from ..inputs import InputError, parse_ascii_int

COOKIE_NAME = b"fe_session"
#: The same value, carried by the page itself when the browser keeps no
#: third-party cookie (docs/embedding.md, "When a browser blocks
#: third-party storage"): a request header, never a URL parameter, so it
#: is not written to access logs. Answers to a write made without the
#: cookie hand the (re-)issued value back in the same header.
HEADER_NAME = b"x-fastedge-session"
#: The paths the cookie is set for: the tenant's public API, its embed
#: page (``fastedge.embed``, whose first paint shows the viewer's state and
#: whose plain form posts as the viewer), and its media (the media of a
#: thread locked to groups are for its members only: docs/media.md). One
#: value, three cookies: a browser sends the one whose path matches.
API_PATH = "/api/v1/{}/"
EMBED_PATH = "/embed/{}/"
MEDIA_PATH = "/media/{}/"
PATHS = (API_PATH, EMBED_PATH, MEDIA_PATH)
_VERSION = "v2"
#: The first format, without a token; still accepted.
_V1 = "v1"
#: Longest token carried (a store's tokens are far shorter).
_MAX_TOKEN_CHARS = 128
#: Issued-at times this far in the future are refused (clock skew allowance).
_SKEW_SECONDS = 300
#: Issue times are Unix seconds; no cookie names a time past this.
_MAX_SECONDS = 2**40


class SessionCookieError(Exception):
    """The cookie is not one we issued, or no longer valid."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SessionClaim:
    """What a valid cookie says."""

    tenant_id: str
    session_id: str
    issued_s: int
    #: The consistency token of the viewer's latest write, if any.
    token: str | None = None


def _encode_token(token: str | None) -> str:
    if not token:
        return ""
    return base64.urlsafe_b64encode(token.encode("utf-8")).decode("ascii").rstrip("=")


def _decode_token(text: str) -> str | None:
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        token = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise SessionCookieError("session_invalid", "session cookie is malformed") from None
    return token or None


def load_or_create_key(path: str) -> bytes:
    """The session key at ``path``, creating a random one (mode 0600) if absent."""
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except FileNotFoundError:
        key = base64.urlsafe_b64encode(secrets.token_bytes(32))
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
    if len(key) < 32:
        raise ValueError("{}: the session key must be at least 32 bytes".format(path))
    return key


class SessionCookies:
    """Issues and checks session cookies.

    :param max_age_seconds: a cookie older than this is expired.
    :param secure: add the ``Secure`` attribute (when served over TLS).
    """

    def __init__(self, *, max_age_seconds: int, secure: bool) -> None:
        self._key: bytes | None = None
        self._max_age = max_age_seconds
        self._secure = secure

    def set_key(self, key: bytes) -> None:
        """Install the signing key (read at start, never in a constructor)."""
        self._key = key

    def sign(self, payload: str) -> str:
        """A MAC of ``payload`` under the session key.

        For other short-lived credentials bound to a session's author (the
        live viewer token); their payloads start with their own version tag,
        so no credential can pass for another.
        """
        return self._mac(payload)

    def derive_key(self, label: str) -> bytes:
        """A sub-key of the session key for another purpose, ``HMAC(key, label)``.

        The same on every node of a deployment (they share the key file),
        and unrelated to the cookie MACs: nothing signed with a sub-key can
        pass for a cookie, nor the other way round.
        """
        if self._key is None:
            raise RuntimeError("session key not loaded yet")
        return hmac.new(self._key, label.encode("ascii"), hashlib.sha256).digest()

    def _mac(self, payload: str) -> str:
        if self._key is None:
            raise RuntimeError("session key not loaded yet")
        digest = hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode("ascii")

    def issue(
        self, tenant_id: str, session_id: str, now_s: int, *, token: str | None = None, issued_s: int | None = None
    ) -> bytes:
        """A ``Set-Cookie`` header value for a session (the API's path).

        :param token: the consistency token of the viewer's latest write.
        :param issued_s: when the session's cookie was first issued (default
            now); a re-issued cookie keeps it, and expires when the first did.
        """
        return self.issue_all(tenant_id, session_id, now_s, token=token, issued_s=issued_s)[0]

    def issue_all(
        self, tenant_id: str, session_id: str, now_s: int, *, token: str | None = None, issued_s: int | None = None
    ) -> list[bytes]:
        """The ``Set-Cookie`` values for a session: the same cookie for the
        tenant's API, its embed page and its media (see :data:`PATHS`)."""
        issued = now_s if issued_s is None else issued_s
        value = self.value(tenant_id, session_id, issued, token=token)
        max_age = max(0, self._max_age - (now_s - issued))
        return [self._header(tenant_id, value, max_age, path) for path in PATHS]

    def value(self, tenant_id: str, session_id: str, issued_s: int, *, token: str | None = None) -> str:
        """The signed value a cookie (or the :data:`HEADER_NAME` header)
        carries; :meth:`check` accepts it from either."""
        if token is not None and len(token) > _MAX_TOKEN_CHARS:
            raise ValueError("consistency token too long for a cookie")
        payload = ".".join((_VERSION, tenant_id, session_id, str(issued_s), _encode_token(token)))
        return payload + "." + self._mac(payload)

    def clear(self, tenant_id: str) -> bytes:
        """A ``Set-Cookie`` header value that removes the cookie."""
        return self._header(tenant_id, "", 0)

    def clear_all(self, tenant_id: str) -> list[bytes]:
        """``Set-Cookie`` values removing the cookie from every path."""
        return [self._header(tenant_id, "", 0, p) for p in PATHS]

    def _header(self, tenant_id: str, value: str, max_age: int, path: str = API_PATH) -> bytes:
        parts = [
            "{}={}".format(COOKIE_NAME.decode(), value),
            # Sent only with this tenant's API calls (or embed page).
            "Path=" + path.format(tenant_id),
            "Max-Age={}".format(max_age),
            "HttpOnly",
            # The widget runs in an iframe on the tenant's site, so the cookie
            # travels in a third-party context: SameSite=None needs Secure;
            # without TLS (a laptop) Lax is the best a browser will accept.
            "SameSite=None" if self._secure else "SameSite=Lax",
        ]
        if self._secure:
            # CHIPS: the cookie is kept per top-level site, so browsers that
            # block third-party cookies still keep it (docs/embedding.md).
            parts.extend(("Secure", "Partitioned"))
        return "; ".join(parts).encode("ascii")

    def check(self, raw: bytes, tenant_id: str, now_s: int) -> SessionClaim:
        """The claim in a cookie value presented for ``tenant_id``.

        :raises SessionCookieError: ``session_invalid`` (forged, malformed,
            another tenant's) or ``session_expired``.
        """
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise SessionCookieError("session_invalid", "session cookie is malformed") from None
        parts = text.split(".")
        if parts[0] == _V1 and len(parts) == 5:
            parts.insert(4, "")
            payload = ".".join(parts[:4])
        elif parts[0] == _VERSION and len(parts) == 6:
            payload = ".".join(parts[:5])
        else:
            raise SessionCookieError("session_invalid", "session cookie is malformed")
        if len(parts[4]) > 2 * _MAX_TOKEN_CHARS:
            raise SessionCookieError("session_invalid", "session cookie is malformed")
        try:
            issued = parse_ascii_int(parts[3], 0, _MAX_SECONDS)
        except InputError:
            raise SessionCookieError("session_invalid", "session cookie is malformed") from None
        if not hmac.compare_digest(self._mac(payload), parts[5]):
            raise SessionCookieError("session_invalid", "session cookie signature does not match")
        if parts[1] != tenant_id:
            raise SessionCookieError("session_invalid", "session cookie belongs to another site")
        if issued > now_s + _SKEW_SECONDS:
            raise SessionCookieError("session_invalid", "session cookie was issued in the future")
        if now_s - issued > self._max_age:
            raise SessionCookieError("session_expired", "session cookie has expired")
        return SessionClaim(tenant_id=parts[1], session_id=parts[2], issued_s=issued, token=_decode_token(parts[4]))
