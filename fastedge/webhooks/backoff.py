# -*- test-case-name: tests.unit.webhooks.test_backoff -*-
"""When to try a failed delivery again: exponential backoff with jitter,
within a retry window, then failed (docs/webhooks.md, "Retries")."""

from __future__ import annotations

import random

#: The first retry waits about this long (seconds).
FIRST_DELAY_SECONDS = 10.0
#: No wait is longer than this (seconds).
MAX_DELAY_SECONDS = 3600.0


def retry_delay(attempts: int, rng: random.Random) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt.

    The base doubles per attempt up to :data:`MAX_DELAY_SECONDS`; the wait
    is drawn uniformly from its upper half ("equal jitter"), so deliveries
    that failed together (a receiver down) do not all come back together,
    and no wait is shorter than half the base.
    """
    base = min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2 ** max(0, attempts - 1))
    return base / 2 + rng.uniform(0, base / 2)


def next_attempt_ms(attempts: int, now_ms: int, window_start_ms: int, window_ms: int, rng: random.Random) -> int | None:
    """When to try again after ``attempts`` failures, or ``None`` when the
    retry window (from ``window_start_ms``, ``window_ms`` long) is over."""
    at = now_ms + int(retry_delay(attempts, rng) * 1000)
    if at > window_start_ms + window_ms:
        return None
    return at
