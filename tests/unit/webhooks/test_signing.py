"""Tests for :mod:`fastedge.webhooks.signing`."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.webhooks.signing import BadSignature, signature, signature_header, verify

SECRET = "s" * 32


class SigningTests(SynchronousTestCase):
    def test_known_value(self) -> None:
        """The signature is HMAC-SHA256 of ``<timestamp>.<body>``, hex, as
        any HMAC library computes it (the docs' verifiers rely on it)."""
        expected = hmac.new(b"k" * 32, b"1700000000.{}", hashlib.sha256).hexdigest()
        self.assertEqual(signature("k" * 32, 1700000000, b"{}"), expected)
        self.assertEqual(signature_header("k" * 32, 1700000000, b"{}"), "t=1700000000,v1=" + expected)

    @given(st.binary(max_size=512), st.integers(min_value=0, max_value=2**40))
    def test_round_trip(self, body: bytes, timestamp: int) -> None:
        """Whatever the body, a receiver verifies what the node signed."""
        header = signature_header(SECRET, timestamp, body)
        self.assertEqual(verify(SECRET, header, body, now=timestamp), timestamp)

    @given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=63))
    def test_tampering_refused(self, body: bytes, flip: int) -> None:
        """A changed byte of the body, another secret or another timestamp
        fails verification."""
        header = signature_header(SECRET, 1000, body)
        changed = bytearray(body)
        changed[flip % len(body)] ^= 1
        self.assertRaises(BadSignature, verify, SECRET, header, bytes(changed), now=1000)
        self.assertRaises(BadSignature, verify, "t" * 32, header, body, now=1000)
        forged = header.replace("t=1000", "t=1001")
        self.assertRaises(BadSignature, verify, SECRET, forged, body, now=1001)

    def test_stale_and_malformed(self) -> None:
        """A timestamp outside the tolerance, or a header without ``t`` or
        ``v1``, is refused."""
        header = signature_header(SECRET, 1000, b"x")
        self.assertRaises(BadSignature, verify, SECRET, header, b"x", now=1301)
        self.assertEqual(verify(SECRET, header, b"x", now=1300), 1000)
        for bad in ("", "t=1000", "v1=abc", "t=x,v1=abc"):
            self.assertRaises(BadSignature, verify, SECRET, bad, b"x", now=1000)
