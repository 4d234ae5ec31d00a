# -*- test-case-name: tests.unit.live.test_fanout -*-
"""Fan-out after the answer: delivery to local subscribers in time slices.

A write publishes its event from inside the request that made it. Handing
the event to ten thousand subscribers there would hold the writer's HTTP
answer (and every other request) for the whole fan-out. :class:`SlicedFanout`
instead queues the delivery and runs it on later reactor turns, at most
``slice_seconds`` of sends per turn; between slices the reactor serves
everything else.

Ordering: one FIFO for the whole hub, so events of a channel reach each
subscriber in sequence-number order. Nothing is lost: the hub stamps the
event and puts it in the channel's history when it is published (a
subscriber that joins before its delivery gets it by replay, and is not in
the recipients, which are the channel's members at publish time); a
recipient that leaves the channel before its turn is skipped, as it would
have been had it left before the publish.

The publish itself does no work per member: the recipients are read from
the channel's member map by the event's first slice. Copying ten thousand
members at the publish took ~150 us of the writer's answer (each member's
reference count is written, and after a fan-out they are out of the CPU's
caches). Members are kept in the order they joined, each numbered
(:attr:`~fastedge.live.hub.Subscription.joined`), so those that joined
after the publish are the map's tail.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

if TYPE_CHECKING:
    from .hub import Deliver, Prepared, Subscription


class _Job:
    """One event's delivery: its recipients and how far it has got."""

    __slots__ = (
        "prepared",
        "recipients",
        "total",
        "joins",
        "members",
        "skip",
        "done",
        "departures",
        "sent",
        "bytes",
        "work",
        "queued",
    )

    def __init__(
        self,
        prepared: Prepared,
        members: Mapping[Subscription, None],
        skip: Collection[Subscription] | None,
        departures: int,
        joins: int,
        queued: float,
    ) -> None:
        self.prepared = prepared
        #: The members at the publish, read by the first slice; the first
        #: ``total`` of them (those that joined later are cut off).
        self.recipients: tuple[Subscription, ...] | None = None
        self.total = 0
        #: Subscriptions made before the publish: a member numbered above
        #: this joined after it (and gets the event by replay).
        self.joins = joins
        #: The channel's live member map: who left since the publish is skipped.
        self.members = members
        self.skip = skip
        self.done = 0
        self.departures = departures
        self.sent = 0
        self.bytes = 0
        #: Seconds of slices spent on this event so far.
        self.work = 0.0
        self.queued = queued


class SlicedFanout:
    """A queue of fan-outs run on the reactor in bounded slices.

    :param clock: schedules the slices and measures them.
    :param slice_seconds: the time one reactor turn may spend sending.
    :param deliver: pushes one event to a batch of members (the hub's
        :data:`~fastedge.live.hub.Deliver`).
    :param departures: how many subscriptions have left any channel so far
        (a counter the hub keeps); while it has not moved, no recipient of a
        queued event can have left, and no membership check is made.
    :param joins: how many subscriptions have been made so far (the
        :attr:`~fastedge.live.hub.Subscription.joined` of the last one).
    :param finished: called per event once every recipient has it, with the
        event, the messages and bytes sent, the seconds of slices spent on
        it and the seconds since it was queued.
    :param batch: recipients sent to between two looks at the clock.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        slice_seconds: float,
        deliver: Deliver,
        departures: Callable[[], int],
        joins: Callable[[], int],
        finished: Callable[[Prepared, int, int, float, float], None],
        batch: int = 16,
    ) -> None:
        self._clock = clock
        self._slice = slice_seconds
        self._deliver = deliver
        self._departures = departures
        self._joins = joins
        self._finished = finished
        self._batch = max(1, batch)
        self._jobs: deque[_Job] = deque()
        self._call: IDelayedCall | None = None
        #: Slices run so far (for a counter).
        self.slices = 0

    @property
    def pending(self) -> int:
        """Events queued and not yet handed to all their recipients."""
        return len(self._jobs)

    def submit(
        self,
        prepared: Prepared,
        members: Mapping[Subscription, None],
        skip: Collection[Subscription] | None,
    ) -> None:
        """Queue ``prepared`` for ``members`` (the channel's member map, in
        the order they joined; its current keys are the recipients), except
        those in ``skip``. Nothing here is per member."""
        job = _Job(
            prepared,
            members,
            frozenset(skip) if skip else None,
            self._departures(),
            self._joins(),
            self._clock.seconds(),
        )
        self._jobs.append(job)
        if self._call is None:
            self._call = self._clock.callLater(0, self._hop)

    def _hop(self) -> None:
        # Every slice comes two hops after what scheduled it, so the
        # reactor turn before it has no slice. Twisted's transports send
        # only in the I/O phase of a turn, after its timed calls: an answer
        # written in one turn's I/O phase (a request read during a slice,
        # or the publish's own writer) goes out in the next turn's, and a
        # slice in that turn's timed calls would hold it for a whole slice.
        # (A publish made among the thread calls, a store result, gets its
        # hop in that same pass; its slice still waits for the next turn.)
        self._call = self._clock.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        self._guarded_slice()
        if self._jobs and self._call is None:
            self._call = self._clock.callLater(0, self._hop)

    def _guarded_slice(self) -> None:
        try:
            self._slice_once()
        except Exception:
            # A bug must not stop live delivery for good: drop the event
            # being sent (its subscribers recover by ``since``), go on.
            self._log.failure("live: a fan-out slice failed")
            if self._jobs:
                self._jobs.popleft()

    def _slice_once(self) -> None:
        clock = self._clock
        started = clock.seconds()
        deadline = started + self._slice
        self.slices += 1
        jobs = self._jobs
        batch = self._batch
        while jobs:
            job = jobs[0]
            mark = clock.seconds()
            recipients = job.recipients
            if recipients is None:
                recipients = job.recipients = tuple(job.members)
                job.total = _joined_by(recipients, job.joins)
            total = job.total
            while job.done < total:
                chunk = recipients[job.done : min(job.done + batch, total)]
                job.done += len(chunk)
                if self._departures() != job.departures:
                    members = job.members
                    chunk = tuple(sub for sub in chunk if sub in members)
                sent, nbytes = self._deliver(job.prepared, chunk, job.skip)
                job.sent += sent
                job.bytes += nbytes
                now = clock.seconds()
                if now >= deadline and job.done < total:
                    job.work += now - mark
                    return
            now = clock.seconds()
            job.work += now - mark
            jobs.popleft()
            self._finished(job.prepared, job.sent, job.bytes, job.work, now - job.queued)
            if now >= deadline:
                return

    def flush(self) -> None:
        """Deliver everything queued now (the node is stopping: what was
        published reaches its subscribers before they are told to go)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        slice_seconds, self._slice = self._slice, float("inf")
        try:
            while self._jobs:
                self._guarded_slice()
        finally:
            self._slice = slice_seconds


def _joined_by(members: tuple[Subscription, ...], joins: int) -> int:
    """How many of ``members`` (in the order they joined) had joined when
    ``joins`` subscriptions had been made: those that joined later are a
    tail, found by bisection."""
    lo, hi = 0, len(members)
    if not hi or members[-1].joined <= joins:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if members[mid].joined <= joins:
            lo = mid + 1
        else:
            hi = mid
    return lo
