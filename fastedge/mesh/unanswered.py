# -*- test-case-name: tests.unit.mesh.test_unanswered -*-
"""Calls to peers whose answer nobody waits for (announcements, goodbyes,
relayed event batches, block changes, unfollows, member pulls).

Their failures used to be dropped by an errback that did nothing: a follower
that refused a batch missed events with no log line and no metric. Every
such call now goes through :meth:`CallFailures.watch`: each failure is
counted by call name (``fastedge_mesh_call_failures_total{call}``) and
logged, at most once per call name per ``interval`` seconds with how many
failed since (a peer that died makes every call to it fail until the
membership notices; one line a minute says so without flooding the log).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .metrics import MeshMetrics


class CallFailures:
    """Counts and logs the failures of fire-and-forget calls to peers.

    :param now: the monotonic clock (seconds) the membership uses.
    :param interval: seconds between two log lines of one call name.
    """

    _log = Logger()

    def __init__(self, metrics: MeshMetrics, now: Callable[[], float], interval: float = 60.0) -> None:
        self._metrics = metrics
        self._now = now
        self._interval = interval
        #: call name -> (when it was last logged, failures since).
        self._reported: dict[str, tuple[float, int]] = {}

    def watch(self, d: Deferred[Any], call: str, peer: str | None) -> Deferred[None]:
        """Let ``d`` (a call's Deferred, or a chain ending in one) fail only
        into this count and log; the result is dropped.

        :returns: ``d``, which then fires with ``None`` either way.
        """

        def failed(f: Failure) -> None:
            self.failed(call, peer, f)

        def dropped(_: object) -> None:
            return None

        d.addCallbacks(dropped, failed)
        return d

    def failed(self, call: str, peer: str | None, f: Failure) -> None:
        """Count one failure of ``call`` to ``peer``; log it (rate-limited)."""
        self._metrics.call_failures.labels(call).inc()
        now = self._now()
        last = self._reported.get(call)
        if last is not None and now - last[0] < self._interval:
            self._reported[call] = (last[0], last[1] + 1)
            return
        since = last[1] if last is not None else 0
        self._reported[call] = (now, 0)
        self._log.info(
            "mesh: {call} to {peer} failed: {why} ({since} more {call} calls failed since the last report)",
            call=call,
            peer=peer or "a seed",
            why=f.getErrorMessage() or f.type.__name__,
            since=since,
        )


__all__ = ["CallFailures"]
