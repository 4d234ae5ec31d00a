# -*- test-case-name: tests.unit.live.test_tokens -*-
"""Viewer tokens: who is watching, so their blocks apply to live events.

The session cookie is scoped to ``/api/v1/<tenant>/`` (and HttpOnly), so a
browser never sends it to ``/live``. The public API hands a signed viewer
token instead (``viewer.liveToken`` in its answers to a reader with a
session); the client passes it when it subscribes. The token names the
tenant and the viewer's public author id, never the secret session id:
``lv1.<tenant>.<author>.<issued>.<mac>``, signed with the session key.
"""

from __future__ import annotations

import hmac

from ..identity.sessions import SessionCookies
from ..inputs import InputError, parse_ascii_int

_VERSION = "lv1"
_SKEW_SECONDS = 300
#: Issue times are Unix seconds; no token names a time past this.
_MAX_SECONDS = 2**40


class ViewerTokenError(Exception):
    """The token is not one we issued for this tenant, or it expired."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ViewerTokens:
    """Issues and checks viewer tokens.

    :param cookies: holds the session key (loaded when the API starts).
    """

    def __init__(self, cookies: SessionCookies, *, max_age_seconds: int) -> None:
        self._cookies = cookies
        self._max_age = max_age_seconds

    def issue(self, tenant_id: str, author_id: str, now_s: int) -> str:
        """A token saying ``author_id`` of ``tenant_id`` is the viewer."""
        payload = ".".join((_VERSION, tenant_id, author_id, str(now_s)))
        return payload + "." + self._cookies.sign(payload)

    def check(self, token: str, tenant_id: str, now_s: int) -> str:
        """The viewer's author id.

        :raises ViewerTokenError: ``bad_viewer_token`` (forged, malformed,
            another tenant's) or ``viewer_token_expired``.
        """
        if not token.isascii():
            # We issue ASCII only, and the MAC is over ASCII bytes.
            raise ViewerTokenError("bad_viewer_token", "the viewer token is malformed")

        parts = token.split(".")
        if len(parts) != 5 or parts[0] != _VERSION:
            raise ViewerTokenError("bad_viewer_token", "the viewer token is malformed")
        try:
            issued = parse_ascii_int(parts[3], 0, _MAX_SECONDS)
        except InputError:
            raise ViewerTokenError("bad_viewer_token", "the viewer token is malformed") from None
        payload = ".".join(parts[:4])
        if not hmac.compare_digest(self._cookies.sign(payload).encode(), parts[4].encode()):
            raise ViewerTokenError("bad_viewer_token", "the viewer token's signature does not match")
        if parts[1] != tenant_id:
            raise ViewerTokenError("bad_viewer_token", "the viewer token belongs to another site")
        if issued > now_s + _SKEW_SECONDS or now_s - issued > self._max_age:
            raise ViewerTokenError(
                "viewer_token_expired",
                "the viewer token has expired; read the thread again",
            )
        return parts[2]
