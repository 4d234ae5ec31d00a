"""Tests for viewer tokens (:mod:`fastedge.live.tokens`)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fastedge.identity.sessions import SessionCookies
from fastedge.live.tokens import ViewerTokenError, ViewerTokens


def tokens(key: bytes = b"s" * 32, max_age: int = 100) -> ViewerTokens:
    cookies = SessionCookies(max_age_seconds=1000, secure=False)
    cookies.set_key(key)
    return ViewerTokens(cookies, max_age_seconds=max_age)


class TokenTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """A token names the author it was issued for, for its tenant only."""
        t = tokens()
        token = t.issue("tenantA", "author1", 1000)
        self.assertEqual(t.check(token, "tenantA", 1050), "author1")

    def assertRefused(self, t: ViewerTokens, token: str, tenant: str, now: int, code: str) -> None:
        with self.assertRaises(ViewerTokenError) as caught:
            t.check(token, tenant, now)
        self.assertEqual(caught.exception.code, code)

    def test_refused(self) -> None:
        """Forged, tampered, foreign-tenant, other-key, malformed and expired
        tokens are refused."""
        t = tokens()
        token = t.issue("tenantA", "author1", 1000)
        self.assertRefused(t, token, "tenantB", 1000, "bad_viewer_token")
        self.assertRefused(t, token.replace("author1", "author2"), "tenantA", 1000, "bad_viewer_token")
        self.assertRefused(tokens(b"o" * 32), token, "tenantA", 1000, "bad_viewer_token")
        self.assertRefused(t, "lv1.a.b", "a", 1000, "bad_viewer_token")
        self.assertRefused(t, "lv1.tenantA.author1.x.y", "tenantA", 1000, "bad_viewer_token")
        self.assertRefused(t, token + "\u00e9", "tenantA", 1000, "bad_viewer_token")
        # Non-ASCII where the MAC is computed: refused, not UnicodeEncodeError.
        self.assertRefused(t, "lv1.tenantA.\u00e9.123.abc", "tenantA", 1000, "bad_viewer_token")
        self.assertRefused(t, "lv1.tenant\u00c5.a.123.abc", "tenantA", 1000, "bad_viewer_token")
        self.assertRefused(t, "lv1.tenantA.author1.\u00b2.abc", "tenantA", 1000, "bad_viewer_token")
        self.assertRefused(t, token, "tenantA", 1101, "viewer_token_expired")
        self.assertRefused(
            t,
            t.issue("tenantA", "author1", 5000),
            "tenantA",
            1000,
            "viewer_token_expired",
        )

    def test_not_a_session_cookie(self) -> None:
        """A session cookie value cannot pass for a viewer token (the MAC
        covers a different version tag)."""
        cookies = SessionCookies(max_age_seconds=1000, secure=False)
        cookies.set_key(b"s" * 32)
        header = cookies.issue("tenantA", "sessionid", 1000).decode()
        value = header.split(";")[0].split("=", 1)[1]
        self.assertRefused(tokens(), "l" + value, "tenantA", 1000, "bad_viewer_token")
