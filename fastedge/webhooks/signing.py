# -*- test-case-name: tests.unit.webhooks.test_signing -*-
"""Signing webhook requests (docs/webhooks.md, "Verifying a request").

A request carries ``Fastedge-Timestamp`` (Unix seconds) and
``Fastedge-Signature: t=<timestamp>,v1=<hex>``, where ``v1`` is
HMAC-SHA256 keyed with the endpoint's secret over ``<timestamp>.<body>``
(the body's exact bytes). The timestamp is signed so a captured request
cannot be replayed later; the event id (``Fastedge-Event-Id``, also in the
body) is the receiver's idempotency key.
"""

from __future__ import annotations

import hashlib
import hmac

#: A verifier refuses a timestamp further than this from its clock.
DEFAULT_TOLERANCE_SECONDS = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``<timestamp>.<body>`` keyed with ``secret``."""
    signed = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Fastedge-Signature`` value."""
    return "t={},v1={}".format(timestamp, signature(secret, timestamp, body))


class BadSignature(ValueError):
    """The request was not signed with the secret, or is too old."""


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance: int = DEFAULT_TOLERANCE_SECONDS) -> int:
    """Check a ``Fastedge-Signature`` header as a receiver does (the
    reference for the verifiers in docs/webhooks.md).

    :returns: the signed timestamp.
    :raises BadSignature: a malformed header, a wrong signature, or a
        timestamp more than ``tolerance`` seconds from ``now``.
    """
    timestamp = None
    candidates = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise BadSignature("malformed signature header")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise BadSignature("signature does not match")
    if abs(now - timestamp) > tolerance:
        raise BadSignature("timestamp outside the tolerance")
    return timestamp
