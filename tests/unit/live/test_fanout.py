"""Tests for :mod:`fastedge.live.fanout`: delivery after the publish, in
bounded slices, in order, with nothing lost or duplicated."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.live.fanout import SlicedFanout
from fastedge.live.hub import Event, Hub, Prepared, Stamp, Subscription, deliver_each

A = ("tenantA", "thread1")
B = ("tenantA", "thread2")


class Costly:
    """An outlet whose every push takes ``cost`` seconds of the clock, and
    which notes the hub's slice count at each push."""

    def __init__(self, clock: Clock, hub: Hub, cost: float = 0.0) -> None:
        self._clock = clock
        self._hub = hub
        self._cost = cost
        self.got: list[Prepared] = []
        self.slices: list[int] = []

    def push(self, prepared: Prepared) -> int:
        # Time passes while sending (advancing the Clock from inside one of
        # its own calls would run other calls re-entrantly).
        self._clock.rightNow += self._cost
        self.got.append(prepared)
        self.slices.append(self._hub.fanout_slices)
        return len(prepared.payload)

    def seqs(self) -> list[int]:
        return [p.stamp.seq for p in self.got]


class TurnClock(Clock):
    """A :class:`Clock` that also runs reactor turns the way Twisted's
    reactor does: :meth:`turn` runs the calls due when it starts, and calls
    they schedule wait for the next turn (``runUntilCurrent`` holds calls
    made during its timed calls in ``_newTimedCalls``). Between two turns
    lies the I/O phase, where transports send what was written."""

    def turn(self) -> None:
        """One reactor turn's timed calls."""
        due = [c for c in self.getDelayedCalls() if c.getTime() <= self.seconds()]
        due.sort(key=lambda c: c.getTime())
        for call in due:
            if call.active():
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


def sliced_hub(clock: Clock, slice_ms: float = 2.0) -> Hub:
    return Hub(
        clock=clock,
        history_events=100,
        history_seconds=600.0,
        new_epoch=lambda: "epocha",
        fanout_slice_seconds=slice_ms / 1000.0,
    )


def ev(channel: tuple[str, str] = A, n: int = 0, author: str | None = None) -> Event:
    return Event(channel, "comment.created", {"n": n}, author_id=author)


class AfterThePublishTests(SynchronousTestCase):
    def test_publish_returns_before_any_delivery(self) -> None:
        """``publish`` stamps and records the event and returns; no
        subscriber has it until the reactor has turned (twice: a publish
        made among the reactor's timed calls still lets the writer's answer
        reach the socket first)."""
        clock = Clock()
        hub = sliced_hub(clock)
        inbox = Costly(clock, hub)
        hub.subscribe(A, inbox)
        prepared = hub.publish(ev())
        assert prepared is not None
        self.assertEqual(prepared.stamp.seq, 1)
        self.assertEqual(inbox.got, [])
        self.assertEqual(hub.pending_fanouts, 1)
        self.assertEqual([p.stamp.seq for p in hub.history(A)], [1])
        # The first call only schedules the slice.
        first = clock.getDelayedCalls()
        self.assertEqual(len(first), 1)
        first[0].func()
        self.assertEqual(inbox.got, [])
        clock.advance(0)
        self.assertEqual(inbox.seqs(), [1])
        self.assertEqual(hub.pending_fanouts, 0)
        self.assertEqual(hub.stats.delivered, 1)

    def test_slices_are_bounded_in_time(self) -> None:
        """With sends costing 10 us each and 2 ms slices, each slice sends
        to one batch (16) past the budget at most: 208 of 1,000 subscribers
        per slice, the last 168 in the fifth."""
        clock = Clock()
        hub = sliced_hub(clock)
        inboxes = [Costly(clock, hub, cost=0.00001) for _ in range(1000)]
        for inbox in inboxes:
            hub.subscribe(A, inbox)
        hub.publish(ev())
        clock.advance(0)
        per_slice: dict[int, int] = {}
        for inbox in inboxes:
            (where,) = inbox.slices
            per_slice[where] = per_slice.get(where, 0) + 1
        self.assertEqual(per_slice, {1: 208, 2: 208, 3: 208, 4: 208, 5: 168})
        self.assertEqual(hub.fanout_slices, 5)

    def test_other_work_runs_between_slices(self) -> None:
        """Between two slices the reactor runs what else is due (here, a
        call scheduled before the publish)."""
        clock = Clock()
        hub = sliced_hub(clock)
        inboxes = [Costly(clock, hub, cost=0.001) for _ in range(200)]
        for inbox in inboxes:
            hub.subscribe(A, inbox)
        hub.publish(ev())
        seen: list[int] = []
        clock.callLater(0.0001, lambda: seen.append(sum(len(i.got) for i in inboxes)))
        clock.advance(0)
        # The first slice ran (one batch of 16: each send costs 1 ms, more
        # than the 2 ms budget after the batch); the other call ran next.
        self.assertEqual(seen, [16])
        self.assertEqual(sum(len(i.got) for i in inboxes), 200)

    def test_a_turn_without_a_slice_precedes_each_slice(self) -> None:
        """The reactor turn before every slice runs none: a request read in
        the I/O phase after a slice has its answer sent in the next I/O
        phase, with no slice between (Twisted sends written bytes only in
        the I/O phase, after the turn's timed calls)."""
        clock = TurnClock()
        hub = sliced_hub(clock)
        inboxes = [Costly(clock, hub, cost=0.00001) for _ in range(1000)]
        for inbox in inboxes:
            hub.subscribe(A, inbox)
        hub.publish(ev())
        slices = []
        for _ in range(12):
            before = hub.fanout_slices
            clock.turn()
            slices.append(hub.fanout_slices - before)
        self.assertEqual(slices, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0])
        self.assertEqual({tuple(i.seqs()) for i in inboxes}, {(1,)})

    def test_the_publish_reads_no_member(self) -> None:
        """Queuing an event does nothing per member (the writer's answer
        does not wait for ten thousand of them to be copied); its first
        slice reads the members, and those that joined after the publish
        (numbered past it) are not recipients."""
        clock = TurnClock()
        reads: list[int] = []

        class Members(dict[Subscription, None]):
            def __iter__(self) -> Any:
                reads.append(len(self))
                return super().__iter__()

        class Inbox:
            def __init__(self) -> None:
                self.got: list[int] = []

            def push(self, prepared: Prepared) -> int:
                self.got.append(prepared.stamp.seq)
                return 1

        members = Members()
        early = [Subscription(Inbox(), A, joined=n) for n in range(1, 41)]
        for sub in early:
            members[sub] = None
        fanout = SlicedFanout(
            clock,
            slice_seconds=0.002,
            deliver=deliver_each,
            departures=lambda: 0,
            joins=lambda: 40,
            finished=lambda *args: None,
        )
        fanout.submit(Prepared(ev(), Stamp("epocha", 1), 0.0), members, None)
        self.assertEqual(reads, [])
        late = Subscription(Inbox(), A, joined=41)
        members[late] = None
        clock.turn()
        clock.turn()
        self.assertEqual(reads, [41])
        self.assertEqual([sub.outlet.got for sub in early], [[1]] * 40)  # type: ignore[attr-defined]
        self.assertEqual(late.outlet.got, [])  # type: ignore[attr-defined]

    def test_order_per_channel_is_kept(self) -> None:
        """Events published while earlier ones are still being delivered
        reach every subscriber in sequence order."""
        clock = Clock()
        hub = sliced_hub(clock)
        inboxes = [Costly(clock, hub, cost=0.0001) for _ in range(300)]
        for inbox in inboxes:
            hub.subscribe(A, inbox)
        for n in range(5):
            hub.publish(ev(n=n))
        clock.advance(0)
        for inbox in inboxes:
            self.assertEqual(inbox.seqs(), [1, 2, 3, 4, 5])

    def test_joining_before_delivery_gets_it_once_by_replay(self) -> None:
        """A subscriber that joins after the publish but before its delivery
        is told the position after it and gets it by replay, never twice."""
        clock = Clock()
        hub = sliced_hub(clock)
        early = Costly(clock, hub)
        hub.subscribe(A, early)
        hub.publish(ev())
        late = Costly(clock, hub)
        joined = hub.subscribe(A, late, since=0, epoch="epocha")
        self.assertEqual((joined.seq, [p.stamp.seq for p in joined.replay]), (1, [1]))
        clock.advance(0)
        self.assertEqual(early.seqs(), [1])
        self.assertEqual(late.seqs(), [])

    def test_leaving_before_delivery_gets_nothing(self) -> None:
        """A subscriber that leaves the channel before its turn is not sent
        the event (as if it had left before the publish)."""
        clock = Clock()
        hub = sliced_hub(clock)
        stays, leaves = Costly(clock, hub), Costly(clock, hub)
        hub.subscribe(A, stays)
        gone = hub.subscribe(A, leaves).subscription
        hub.publish(ev())
        hub.unsubscribe(gone)
        clock.advance(0)
        self.assertEqual((stays.seqs(), leaves.seqs()), ([1], []))

    def test_blocked_authors_are_skipped(self) -> None:
        """A viewer who blocked the author is not sent the event."""
        clock = Clock()
        hub = sliced_hub(clock)
        blocker, other = Costly(clock, hub), Costly(clock, hub)
        hub.subscribe(A, blocker, blocked=["bad"])
        hub.subscribe(A, other)
        hub.publish(ev(author="bad"))
        clock.advance(0)
        self.assertEqual((blocker.seqs(), other.seqs()), ([], [1]))

    def test_flush_delivers_everything_now(self) -> None:
        """``flush`` (the node stopping) hands every queued event to its
        subscribers at once, whatever the slice budget."""
        clock = Clock()
        hub = sliced_hub(clock)
        inboxes = [Costly(clock, hub, cost=0.001) for _ in range(100)]
        for inbox in inboxes:
            hub.subscribe(A, inbox)
        hub.publish(ev())
        hub.publish(ev())
        hub.flush()
        self.assertEqual({tuple(i.seqs()) for i in inboxes}, {(1, 2)})
        self.assertEqual(hub.pending_fanouts, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_failing_fanout_is_logged_and_the_next_event_goes_out(self) -> None:
        """A bug in one delivery is logged once; later events still go out."""
        clock = Clock()
        hub = sliced_hub(clock)
        inbox = Costly(clock, hub)
        hub.subscribe(A, inbox)
        real = hub._sliced._deliver  # type: ignore[union-attr]
        calls: list[int] = []

        def broken_once(prepared: Prepared, members: Any, skip: Any) -> tuple[int, int]:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("broken")
            return real(prepared, members, skip)

        hub._sliced._deliver = broken_once  # type: ignore[union-attr]
        hub.publish(ev())
        hub.publish(ev())
        clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(inbox.seqs(), [2])

    def test_fanout_metrics(self) -> None:
        """A finished sliced fan-out reports its work and its lag (from
        publish to the last recipient)."""
        clock = Clock()
        hub = sliced_hub(clock)
        work: list[tuple[float, int]] = []
        lags: list[float] = []
        hub.on_fanout = lambda seconds, sent: work.append((seconds, sent))
        hub.on_fanout_lag = lags.append
        for _ in range(3):
            hub.subscribe(A, Costly(clock, hub, cost=0.001))
        hub.publish(ev())
        clock.advance(0)
        self.assertEqual(len(work), 1)
        self.assertAlmostEqual(work[0][0], 0.003)
        self.assertEqual(work[0][1], 3)
        self.assertAlmostEqual(lags[0], 0.003)

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("publish"), st.sampled_from([A, B])),
                st.tuples(st.just("turns"), st.integers(min_value=1, max_value=4)),
            ),
            max_size=30,
        ),
        st.integers(min_value=1, max_value=400),
    )
    def test_every_slice_is_bounded_and_follows_a_turn_without_one(
        self, steps: list[tuple[str, Any]], readers: int
    ) -> None:
        """Whatever the publishes between reactor turns, no turn spends
        more than the slice plus one batch of sends (16), no turn runs two
        slices, and the turn before each slice runs none, so the answer of
        a request read between two turns never waits for a slice."""
        clock = TurnClock()
        hub = sliced_hub(clock, slice_ms=0.5)
        cost = 0.00003
        inboxes = [Costly(clock, hub, cost=cost) for _ in range(readers)]
        for inbox in inboxes:
            hub.subscribe(A, inbox)
        hub.subscribe(B, Costly(clock, hub, cost=cost))
        sliced: list[int] = []

        def turn() -> None:
            before, started = hub.fanout_slices, clock.seconds()
            clock.turn()
            self.assertLessEqual(clock.seconds() - started, 0.0005 + 16 * cost + 1e-9)
            sliced.append(hub.fanout_slices - before)

        published = {A: 0, B: 0}
        for action, arg in steps:
            if action == "publish":
                hub.publish(ev(arg))
                published[arg] += 1
            else:
                for _ in range(arg):
                    turn()
        while clock.getDelayedCalls():
            turn()
        self.assertLessEqual(max(sliced, default=0), 1)
        self.assertNotIn((1, 1), list(zip(sliced, sliced[1:], strict=False)))
        self.assertEqual({tuple(i.seqs()) for i in inboxes}, {tuple(range(1, published[A] + 1))})

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["publish", "join", "leave", "turn"]),
                st.sampled_from([A, B]),
            ),
            max_size=40,
        )
    )
    def test_nothing_lost_nothing_twice(self, steps: list[tuple[str, tuple[str, str]]]) -> None:
        """Whatever the interleaving of publishes, joins (with ``since``),
        leaves and reactor turns, each subscriber ends up with exactly the
        channel's events, in order, by fan-out and replay together; one that
        left has a prefix of those published before it left (an event still
        being delivered when it left may not reach it, as if it had left
        first)."""
        clock = Clock()
        hub = sliced_hub(clock, slice_ms=0.5)
        # subscriber -> (channel, seqs received, subscription, joined at, left at)
        subs: list[dict[str, Any]] = []
        for action, channel in steps:
            if action == "publish":
                hub.publish(ev(channel))
            elif action == "join":
                inbox = Costly(clock, hub, cost=0.0002)
                joined = hub.subscribe(channel, inbox, since=0, epoch="epocha")
                subs.append(
                    {
                        "channel": channel,
                        "inbox": inbox,
                        "replay": [p.stamp.seq for p in joined.replay],
                        "sub": joined.subscription,
                        "left": None,
                    }
                )
            elif action == "leave":
                for s in subs:
                    if s["channel"] == channel and s["left"] is None:
                        hub.unsubscribe(s["sub"])
                        pos = hub.position(channel)
                        s["left"] = pos.seq if pos is not None else 0
                        break
            else:
                clock.advance(0)
        clock.advance(0)
        for s in subs:
            got = s["replay"] + s["inbox"].seqs()
            if s["left"] is not None:
                self.assertEqual(got, list(range(1, len(got) + 1)))
                self.assertLessEqual(len(got), s["left"])
            else:
                pos = hub.position(s["channel"])
                self.assertEqual(got, list(range(1, (pos.seq if pos is not None else 0) + 1)))
