"""Signed anonymous-session cookies."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from fastedge.identity.sessions import SessionCookieError, SessionCookies, load_or_create_key


class CookieTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cookies = SessionCookies(max_age_seconds=100, secure=True)
        self.cookies.set_key(b"k" * 44)

    def value(self, header: bytes) -> bytes:
        return header.split(b";", 1)[0].split(b"=", 1)[1]

    def test_round_trip(self) -> None:
        """A cookie issued for a tenant checks out for that tenant."""
        raw = self.value(self.cookies.issue("tenantA", "sess1", 1000))
        claim = self.cookies.check(raw, "tenantA", 1050)
        self.assertEqual((claim.tenant_id, claim.session_id, claim.issued_s), ("tenantA", "sess1", 1000))

    def test_secure_attributes(self) -> None:
        """Behind TLS the cookie is Secure and SameSite=None (it lives in a
        third-party iframe)."""
        header = self.cookies.issue("t", "s", 1).decode()
        self.assertIn("; Secure", header)
        self.assertIn("SameSite=None", header)

    def test_partitioned_for_every_path(self) -> None:
        """Behind TLS the three cookies (API, embed page, media) are
        ``Partitioned`` (CHIPS), so browsers that block third-party cookies
        keep them per embedding site; they carry the same value."""
        api, embed, media = (h.decode() for h in self.cookies.issue_all("t", "s", 1))
        for header in (api, embed, media):
            self.assertIn("; Secure; Partitioned", header)
        self.assertIn("Path=/api/v1/t/", api)
        self.assertIn("Path=/embed/t/", embed)
        self.assertIn("Path=/media/t/", media)
        self.assertEqual({api.split(";")[0], embed.split(";")[0]}, {media.split(";")[0]})

    def test_cleared_from_every_path(self) -> None:
        """Clearing a session removes its cookie from the API, the embed
        page and the media paths."""
        paths = [h.decode().split("Path=")[1].split(";")[0] for h in self.cookies.clear_all("t")]
        self.assertEqual(paths, ["/api/v1/t/", "/embed/t/", "/media/t/"])
        for header in self.cookies.clear_all("t"):
            self.assertIn("Max-Age=0", header.decode())

    def assertRefused(self, raw: bytes, code: str, tenant: str = "tenantA", now: int = 1050) -> None:
        with self.assertRaises(SessionCookieError) as cm:
            self.cookies.check(raw, tenant, now)
        self.assertEqual(cm.exception.code, code)

    def test_tampering(self) -> None:
        """Changing any part of the cookie breaks its signature."""
        raw = self.value(self.cookies.issue("tenantA", "sess1", 1000)).decode()
        parts = raw.split(".")
        for i, replacement in ((1, "tenantB"), (2, "sess2"), (3, "1001"), (4, parts[4][:-1] + "A")):
            forged = parts[:]
            forged[i] = replacement
            self.assertRefused(".".join(forged).encode(), "session_invalid")

    def test_other_tenant(self) -> None:
        """A genuine cookie of tenant A is refused at tenant B."""
        raw = self.value(self.cookies.issue("tenantA", "s", 1000))
        self.assertRefused(raw, "session_invalid", tenant="tenantB")

    def test_other_key(self) -> None:
        """A cookie signed with another key is refused."""
        other = SessionCookies(max_age_seconds=100, secure=False)
        other.set_key(b"z" * 44)
        self.assertRefused(self.value(other.issue("tenantA", "s", 1000)), "session_invalid")

    def test_expiry_and_future(self) -> None:
        """Cookies past their age are expired; far-future ones are invalid."""
        raw = self.value(self.cookies.issue("tenantA", "s", 1000))
        self.assertRefused(raw, "session_expired", now=1101)
        self.assertRefused(raw, "session_invalid", now=600)

    def test_garbage(self) -> None:
        """Malformed values are refused, never crash."""
        for raw in (b"", b"v1", b"v1.a.b.c.d.e", b"v2.a.b.1.x", b"v1.a.b.notanumber.x", b"\xff\xfe"):
            self.assertRefused(raw, "session_invalid")


class KeyFileTests(SynchronousTestCase):
    def test_created_once_private(self) -> None:
        """The key file is created with mode 0600 and reused afterwards."""
        path = os.path.join(self.mktemp(), "session.key")
        key = load_or_create_key(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(load_or_create_key(path), key)

    def test_short_key_refused(self) -> None:
        """A key file too short to be safe is refused."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"short")
        self.assertRaises(ValueError, load_or_create_key, path)
