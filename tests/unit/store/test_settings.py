"""Tests for :mod:`fastedge.store.settings`: the tenant settings object."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.settings import (
    DEFAULTS,
    MAX_BLOCKED_WORDS,
    MAX_GROUPS,
    SettingsError,
    TenantSettings,
    Theme,
    apply_patch,
    from_stored,
    groups_for,
    normalize_origin,
    to_json,
)


class ApplyPatchTests(SynchronousTestCase):
    """:func:`apply_patch` checks a change whole and names the bad key."""

    def refused(self, patch: dict[str, Any]) -> SettingsError:
        with self.assertRaises(SettingsError) as caught:
            apply_patch(DEFAULTS, patch)
        return caught.exception

    def test_defaults(self) -> None:
        """An empty tenant reads as the documented defaults."""
        self.assertEqual(from_stored({}), TenantSettings())
        self.assertEqual(
            to_json(DEFAULTS),
            {
                "moderation": "post",
                "flagsToHide": None,
                "requireSignIn": False,
                "defaultGroups": [],
                "allowedOrigins": [],
                "theme": {},
                "blockedWords": [],
            },
        )

    def test_every_key(self) -> None:
        """Every key can be set, and survives a store round trip through JSON."""
        patch = {
            "moderation": "pre",
            "flagsToHide": 3,
            "requireSignIn": True,
            "defaultGroups": ["staff", "staff", "vip"],
            "allowedOrigins": ["HTTPS://Example.COM:443", "http://localhost:8080", "https://[::1]:8443"],
            "theme": {"accent": "#1a73e8", "font": "'Source Sans', sans-serif"},
            "blockedWords": ["casino", "Casino", "replica watches"],
        }
        got = apply_patch(DEFAULTS, patch)
        self.assertEqual(
            got,
            TenantSettings(
                moderation="pre",
                flags_to_hide=3,
                require_sign_in=True,
                default_groups=("staff", "vip"),
                allowed_origins=("https://example.com", "http://localhost:8080", "https://[::1]:8443"),
                theme=Theme(accent="#1a73e8", font="'Source Sans', sans-serif"),
                blocked_words=("casino", "replica watches"),
            ),
        )
        self.assertTrue(got.premoderated)
        self.assertEqual(from_stored(to_json(got)), got)

    def test_patch_keeps_other_keys(self) -> None:
        """A patch changes only its keys; null puts a key back to its default;
        a theme patch changes only the theme keys it names."""
        current = apply_patch(DEFAULTS, {"moderation": "pre", "theme": {"accent": "#fff", "font": "serif"}})
        got = apply_patch(current, {"flagsToHide": 2, "theme": {"accent": None}})
        self.assertEqual((got.moderation, got.flags_to_hide, got.theme), ("pre", 2, Theme(font="serif")))
        self.assertEqual(apply_patch(got, {"moderation": None}).moderation, "post")

    def test_unknown_key(self) -> None:
        """An unknown key, also inside the theme, is refused by name."""
        self.assertEqual(self.refused({"moderation": "pre", "colour": "red"}).key, "colour")
        self.assertEqual(self.refused({"theme": {"background": "#fff"}}).key, "theme.background")

    def test_wrong_types(self) -> None:
        """A value of the wrong type is refused naming its key."""
        cases = {
            "moderation": 1,
            "flagsToHide": True,
            "requireSignIn": "yes",
            "defaultGroups": "staff",
            "allowedOrigins": "https://example.com",
            "theme": "dark",
            "blockedWords": "casino",
        }
        for key, value in cases.items():
            error = self.refused({key: value})
            self.assertEqual(error.key, key)
            self.assertIn("must be", error.message)
        self.assertEqual(self.refused({"theme": {"accent": 5}}).key, "theme.accent")
        self.assertEqual(self.refused({"defaultGroups": [1]}).key, "defaultGroups")

    def test_bad_values(self) -> None:
        """Values of the right type outside their range are refused by key."""
        cases = [
            ("moderation", "sometimes"),
            ("flagsToHide", -1),
            ("flagsToHide", 10_001),
            ("defaultGroups", ["x" * 65]),
            ("defaultGroups", [""]),
            ("defaultGroups", ["g{}".format(i) for i in range(MAX_GROUPS + 1)]),
            ("allowedOrigins", ["https://example.com"] * 51),
            ("blockedWords", ["x" * 65]),
            ("blockedWords", [""]),
            ("blockedWords", ["zero\u200bwidth"]),
            ("blockedWords", ["w{}".format(i) for i in range(MAX_BLOCKED_WORDS + 1)]),
        ]
        for key, value in cases:
            self.assertEqual(self.refused({key: value}).key, key)
        self.assertEqual(self.refused({"theme": {"accent": "red"}}).key, "theme.accent")
        self.assertEqual(self.refused({"theme": {"font": "serif; } body { x"}}).key, "theme.font")

    def test_not_origins(self) -> None:
        """Anything but ``scheme://host[:port]`` over http(s) is not an origin."""
        for value in [
            "example.com",
            "https://example.com/path",
            "https://example.com?q",
            "https://example.com#f",
            "https://user@example.com",
            "javascript:alert(1)",
            "ftp://example.com",
            "https://",
            "https://exa mple.com",
            "https://example.com:99999",
            "https://exa_mple.com",
            "null",
            "*",
            "https://ex\u00e4mple.com",
        ]:
            with self.assertRaises(SettingsError, msg=value) as caught:
                normalize_origin("allowedOrigins", value)
            self.assertEqual(caught.exception.key, "allowedOrigins")

    @given(st.text(max_size=40))
    def test_origin_is_idempotent(self, value: str) -> None:
        """Whatever passes as an origin normalises to a fixed point that has no
        path, query or user part."""
        try:
            origin = normalize_origin("allowedOrigins", value)
        except SettingsError:
            return
        self.assertEqual(normalize_origin("allowedOrigins", origin), origin)
        self.assertNotIn("@", origin)
        self.assertEqual(origin.count("/"), 2)

    def test_stored_garbage_reads_as_default(self) -> None:
        """A stored key this version does not know, or no longer accepts, is
        ignored instead of making the tenant unusable."""
        got = from_stored({"moderation": "pre", "futureKey": 1, "flagsToHide": "x"})
        self.assertEqual(got, TenantSettings(moderation="pre"))

    def test_groups_for(self) -> None:
        """A thread's own lock wins over the tenant default, even when empty."""
        settings = TenantSettings(default_groups=("staff",))
        self.assertEqual(groups_for(None, settings), ("staff",))
        self.assertEqual(groups_for(("vip",), settings), ("vip",))
        self.assertEqual(groups_for((), settings), ())
