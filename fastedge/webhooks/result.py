# -*- test-case-name: tests.integration.test_webhooks -*-
"""The outcome of one attempt, apart from the sender (which brings treq and
``twisted.web.client``, imported with the first delivery sent)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """How one attempt went.

    :ivar outcome: the metric label: ``delivered``, ``http_error`` (any
        other status), ``gone`` (410), ``redirect``, ``timeout``,
        ``refused`` (an address webhooks may not reach), ``proxy_error``,
        ``connection_error``.
    :ivar error: for the tenant (shown with failed deliveries): never a
        secret, at most a short excerpt of the receiver's answer.
    """

    outcome: str
    status: int | None
    error: str
    seconds: float
