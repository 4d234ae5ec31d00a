"""Tests for :mod:`fastedge.webhooks.backoff`."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.webhooks.backoff import FIRST_DELAY_SECONDS, MAX_DELAY_SECONDS, next_attempt_ms, retry_delay


class BackoffTests(SynchronousTestCase):
    @given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=2**32))
    def test_delay_bounds(self, attempts: int, seed: int) -> None:
        """The n-th wait lies in the upper half of min(max, first * 2^(n-1))."""
        base = min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2 ** (attempts - 1))
        delay = retry_delay(attempts, random.Random(seed))
        self.assertGreaterEqual(delay, base / 2)
        self.assertLessEqual(delay, base)

    def test_jitter_spreads(self) -> None:
        """Deliveries that failed together come back at different times."""
        rng = random.Random(1)
        self.assertGreater(len({round(retry_delay(5, rng), 3) for _ in range(50)}), 40)

    def test_window(self) -> None:
        """No retry is planned after the retry window's end."""
        rng = random.Random(2)
        self.assertIsNotNone(next_attempt_ms(1, 1_000, 0, 60_000, rng))
        self.assertIsNone(next_attempt_ms(1, 59_000, 0, 60_000, rng))
        self.assertIsNone(next_attempt_ms(30, 1_000, 0, 86_400_000 // 100, rng))
