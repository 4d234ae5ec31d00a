"""Property tests of :mod:`fastedge.store.mongodb.tokens`."""

from __future__ import annotations

from bson import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.errors import BadToken
from fastedge.store.mongodb.tokens import covers, format_token, parse_token
from fastedge.store.postgresql import format_lsn, parse_lsn

_times = st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))


class TokenPropertyTests(SynchronousTestCase):
    @given(_times)
    def test_round_trip(self, at: Timestamp) -> None:
        """Every cluster time survives its token."""
        self.assertEqual(parse_token(format_token(at)), at)

    @given(_times, _times)
    def test_order(self, a: Timestamp, b: Timestamp) -> None:
        """Tokens cover each other exactly as their cluster times order."""
        self.assertEqual(covers(format_token(a), format_token(b)), a >= b)

    @given(st.text(max_size=40))
    def test_anything_else_is_bad(self, text: str) -> None:
        """Any string is a token this backend issued or ``BadToken``, never another error."""
        try:
            at = parse_token(text)
        except BadToken:
            return
        self.assertTrue(text.startswith("ct"))
        self.assertEqual(parse_token(format_token(at)), at)

    @given(st.integers(0, 2**64 - 1), _times)
    def test_backends_refuse_each_other(self, lsn: int, at: Timestamp) -> None:
        """A PostgreSQL token is never a MongoDB token, nor the reverse."""
        self.assertRaises(BadToken, parse_token, format_lsn(lsn))
        self.assertRaises(BadToken, parse_lsn, format_token(at))
