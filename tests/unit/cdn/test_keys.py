"""Media paths and keys: what is refused, and that accepted keys are safe."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.cdn.keys import BadKey, cache_id, check_key, split_media_path


class SplitTests(SynchronousTestCase):
    def test_tenant_and_key(self):
        """A media path splits into its tenant and its percent-decoded key."""
        self.assertEqual(
            split_media_path(b"/media/t1/a/b%20c/%C3%A9.png"),
            ("t1", "a/b c/\u00e9.png"),
        )

    def test_refused(self):
        """Traversal, encoded slashes, NUL, backslashes, bad UTF-8, empty
        segments and overlong keys are refused with their codes."""
        for path, code in (
            (b"/media/t1/../x", "bad_key"),
            (b"/media/t1/a/./x", "bad_key"),
            (b"/media/t1/%2E%2E/x", "bad_key"),
            (b"/media/t1/a%2Fb", "bad_key"),
            (b"/media/t1/a%00b", "bad_key"),
            (b"/media/t1/a%5Cb", "bad_key"),
            (b"/media/t1/%FF", "bad_key"),
            (b"/media/t1/a//b", "bad_key"),
            (b"/media/t1/a/", "bad_key"),
            (b"/media/t1/" + b"x" * 1025, "key_too_long"),
            (b"/media/t1", "bad_media_path"),
            (b"/media//x", "bad_media_path"),
        ):
            with self.assertRaises(BadKey, msg=path) as e:
                split_media_path(path)
            self.assertEqual(e.exception.code, code, path)

    def test_prefix_counts_in_length(self):
        """The tenant's origin prefix counts toward the S3 key limit."""
        check_key("x" * 10, prefix="p" * 1014)
        with self.assertRaises(BadKey):
            check_key("x" * 11, prefix="p" * 1014)

    @given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
    def test_accepted_keys_cannot_escape(self, segments):
        """Any key that is accepted has no empty, '.' or '..' segment and no
        control character, and it round-trips through its URL."""
        key = "/".join(segments)
        try:
            check_key(key)
        except BadKey:
            return
        for segment in key.split("/"):
            self.assertNotIn(segment, ("", ".", ".."))
        self.assertFalse(any(ord(c) < 0x20 for c in key))
        path = b"/media/t/" + quote(key, safe="/").encode("ascii")
        self.assertEqual(split_media_path(path), ("t", key))

    def test_cache_id_separates_tenants(self):
        """The same key of two tenants has two cache ids."""
        self.assertNotEqual(cache_id("a", "x.png"), cache_id("b", "x.png"))
        self.assertNotEqual(cache_id("a", "b\x00c"), cache_id("a\x00b", "c"))
