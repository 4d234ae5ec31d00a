# -*- test-case-name: tests.integration.test_postgresql -*-
"""Finding the primary among the configured candidates.

The primary is the first writable server of the candidate list
(``pg_is_in_recovery()`` false); among several writable ones (a split
brain: an old primary came back unfenced), the one on the highest timeline,
and the split brain is logged at every search. The node never promotes
anything: it follows what the operator's tooling did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..metrics import ReplicationMetrics
from .dsn import Target

_T = TypeVar("_T")


@dataclass(frozen=True)
class Probe:
    """What one candidate answered on a fresh connection."""

    index: int
    writable: bool
    #: The timeline of its WAL (0 unless writable).
    timeline: int
    #: The driver's error class when it could not be asked, else "".
    error: str


def probe_candidates(candidates: Sequence[Target]) -> list[Probe]:
    """Ask every candidate, on a fresh connection, whether it takes writes
    (blocking: run it on a store thread)."""
    found = []
    for index, target in enumerate(candidates):
        try:
            with psycopg.connect(target.info, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL"
                    " ELSE pg_walfile_name(pg_current_wal_lsn()) END"
                ).fetchone()
        except psycopg.Error as e:
            found.append(Probe(index, False, 0, type(e).__name__))
            continue
        assert row is not None
        writable = not row[0]
        found.append(Probe(index, writable, int(row[1][:8], 16) if writable else 0, ""))
    return found


class Primaries:
    """The candidates and which of them takes the writes now.

    :param candidates: the servers that may be the primary, in order of
        preference; the first is assumed until a search says otherwise.
    :param run: where blocking calls run (the store's threads).
    :param backend: the metrics' backend label.
    """

    _log = Logger()

    def __init__(
        self,
        candidates: Sequence[Target],
        *,
        run: Callable[[Callable[[], Any]], Deferred[Any]],
        metrics: ReplicationMetrics | None,
        backend: str,
    ) -> None:
        if not candidates:
            raise ValueError("at least one primary candidate is needed")
        self.candidates = list(candidates)
        self.index = 0
        self._run = run
        self._metrics = metrics
        self._backend = backend
        self._searching: list[Deferred[int | None]] | None = None
        if metrics is not None:
            metrics.primary_candidate.labels(backend).set(0)

    @property
    def current(self) -> Target:
        """The server that takes the writes now."""
        return self.candidates[self.index]

    def find(self) -> Deferred[int | None]:
        """Search the candidates for the writable primary and move there.

        One search at a time: concurrent callers share its result, the index
        of the primary (``None`` if none was found). Never fails.
        """
        waiter: Deferred[int | None] = Deferred()
        if self._searching is not None:
            self._searching.append(waiter)
            return waiter
        self._searching = [waiter]
        d = self._run(lambda: probe_candidates(self.candidates))
        d.addCallback(self._choose)

        def broken(f: Failure) -> None:
            self._log.failure("searching for the primary failed", f)
            return None

        def done(index: int | None) -> None:
            waiting, self._searching = self._searching or [], None
            for w in waiting:
                w.callback(index)

        d.addErrback(broken)
        d.addCallback(done)
        return waiter

    def _choose(self, probed: list[Probe]) -> int | None:
        writable = [(p.timeline, -p.index) for p in probed if p.writable]
        if self._metrics is not None:
            self._metrics.searched(bool(writable))
        if not writable:
            self._log.warn(
                "no writable primary among {count} candidates: {states}",
                count=len(probed),
                states=[(self.candidates[p.index].name, p.error or "read-only") for p in probed],
            )
            return None
        timeline, negative = max(writable)
        index = -negative
        if len(writable) > 1:
            self._log.error(
                "{count} candidates accept writes (split brain?): {names}; using {name} on timeline {timeline}",
                count=len(writable),
                names=[self.candidates[-i].name for _, i in writable],
                name=self.candidates[index].name,
                timeline=timeline,
            )
        if index != self.index:
            old = self.current
            self.index = index
            if self._metrics is not None:
                self._metrics.switched(index)
            self._log.warn(
                "the primary moved from {old} to {new} (timeline {timeline})",
                old=old.name,
                new=self.current.name,
                timeline=timeline,
            )
            # Connections to the old primary are useless now.
            self._run(old.pool.dispose).addErrback(self._dispose_failed)
        return index

    def _dispose_failed(self, f: Failure) -> None:
        self._log.failure("closing the old primary's connections failed", f)
