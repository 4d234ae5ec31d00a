"""Tests for :mod:`fastedge.live.hub`: sequencing, history, recovery,
interest, blocks and the relay entry point."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.live.hub import (
    Event,
    Hub,
    Prepared,
    SinceInFuture,
    Stamp,
    deliver_each,
    new_epoch,
)
from fastedge.live.messages import is_epoch

A = ("tenantA", "thread1")
B = ("tenantB", "thread1")


class Inbox:
    """An outlet that keeps what it is pushed."""

    def __init__(self) -> None:
        self.got: list[Prepared] = []

    def push(self, prepared: Prepared) -> int:
        self.got.append(prepared)
        return len(prepared.payload)

    def kinds(self) -> list[str]:
        return [p.event.kind for p in self.got]

    def seqs(self) -> list[int]:
        return [p.stamp.seq for p in self.got]


def epochs() -> Any:
    counter = itertools.count(1)
    return lambda: "epoch" + "abcdefghij"[next(counter) % 10]


def make_hub(clock: Clock | None = None, events: int = 5, seconds: float = 60.0) -> Hub:
    return Hub(
        clock=clock or Clock(),
        history_events=events,
        history_seconds=seconds,
        new_epoch=epochs(),
    )


def ev(
    kind: str = "comment.created",
    channel: tuple[str, str] = A,
    author: str | None = None,
    **kw: Any,
) -> Event:
    return Event(channel, kind, {"n": kind}, author_id=author, **kw)


class PublishTests(SynchronousTestCase):
    def test_local_events_are_numbered_from_one(self) -> None:
        """Local events get 1, 2, 3... within the channel's epoch, and every
        subscriber receives them in that order."""
        hub = make_hub()
        inbox = Inbox()
        joined = hub.subscribe(A, inbox)
        self.assertEqual(joined.seq, 0)
        for _ in range(3):
            hub.publish(ev())
        self.assertEqual(inbox.seqs(), [1, 2, 3])
        self.assertEqual({p.stamp.epoch for p in inbox.got}, {joined.epoch})

    def test_channels_are_numbered_separately(self) -> None:
        """Sequence numbers are per channel."""
        hub = make_hub()
        a, b = Inbox(), Inbox()
        hub.subscribe(A, a)
        hub.subscribe(B, b)
        hub.publish(ev(channel=A))
        hub.publish(ev(channel=A))
        hub.publish(ev(channel=B))
        self.assertEqual(a.seqs(), [1, 2])
        self.assertEqual(b.seqs(), [1])

    def test_tenant_isolation(self) -> None:
        """A subscriber of tenant B's channel never receives tenant A's
        events, even for a thread id that is the same string."""
        hub = make_hub()
        a, b = Inbox(), Inbox()
        hub.subscribe(A, a)
        hub.subscribe(B, b)
        hub.publish(ev("comment.created", A))
        self.assertEqual(len(a.got), 1)
        self.assertEqual(b.got, [])

    def test_serialized_once(self) -> None:
        """All subscribers get the very same prepared object, whose JSON
        payload is built once and carries the envelope."""
        hub = make_hub()
        inboxes = [Inbox() for _ in range(3)]
        for inbox in inboxes:
            hub.subscribe(A, inbox)
        hub.publish(ev())
        first = inboxes[0].got[0]
        self.assertTrue(all(i.got[0] is first for i in inboxes))
        self.assertIs(first.payload, first.payload)
        body = json.loads(first.payload)
        self.assertEqual(body["type"], "event")
        self.assertEqual(body["channel"], "tenantA/thread1")
        self.assertEqual(body["seq"], 1)
        self.assertEqual(body["id"], first.stamp.epoch + "-1")
        self.assertEqual(body["event"], "comment.created")

    def test_stats_count_deliveries(self) -> None:
        """The hub counts events published, messages and bytes delivered."""
        hub = make_hub()
        for _ in range(2):
            hub.subscribe(A, Inbox())
        prepared = hub.publish(ev())
        assert prepared is not None
        self.assertEqual(hub.stats.published, 1)
        self.assertEqual(hub.stats.delivered, 2)
        self.assertEqual(hub.stats.bytes, 2 * len(prepared.payload))

    def test_fanout_observer(self) -> None:
        """``on_fanout`` is told each fan-out's duration and recipients."""
        clock = Clock()
        hub = make_hub(clock)
        seen: list[tuple[float, int]] = []
        hub.on_fanout = lambda seconds, n: seen.append((seconds, n))
        hub.subscribe(A, Inbox())
        hub.publish(ev())
        self.assertEqual(seen, [(0.0, 1)])

    def test_no_subscribers_still_recorded(self) -> None:
        """An event on a channel nobody watches is kept in history, so a
        reader who reconnects soon after still gets it."""
        hub = make_hub()
        inbox = Inbox()
        joined = hub.subscribe(A, inbox)
        hub.unsubscribe(joined.subscription)
        hub.publish(ev())
        again = hub.subscribe(A, Inbox(), since=0, epoch=joined.epoch)
        self.assertEqual([p.stamp.seq for p in again.replay], [1])


class RecoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = make_hub(self.clock, events=5, seconds=60)
        first = self.hub.subscribe(A, Inbox())
        self.epoch = first.epoch
        for _ in range(4):
            self.hub.publish(ev())

    def test_since_replays_exactly_what_was_missed(self) -> None:
        """since=N replays N+1.. in order, no duplicates, and the answer
        names the channel's current position."""
        joined = self.hub.subscribe(A, Inbox(), since=2, epoch=self.epoch)
        self.assertFalse(joined.reload)
        self.assertEqual([p.stamp.seq for p in joined.replay], [3, 4])
        self.assertEqual((joined.epoch, joined.seq), (self.epoch, 4))

    def test_since_current_replays_nothing(self) -> None:
        """A client that has everything gets nothing again."""
        joined = self.hub.subscribe(A, Inbox(), since=4, epoch=self.epoch)
        self.assertEqual(joined.replay, ())
        self.assertFalse(joined.reload)

    def test_since_without_epoch(self) -> None:
        """An epoch is optional; the seq is then taken in the current epoch."""
        joined = self.hub.subscribe(A, Inbox(), since=3)
        self.assertEqual([p.stamp.seq for p in joined.replay], [4])

    def test_gap_by_count_means_reload(self) -> None:
        """Events pushed out of the bounded history cannot be replayed: the
        client is told to reload and is given nothing (never a silent gap)."""
        for _ in range(3):
            self.hub.publish(ev())  # seq 5..7; history keeps 3..7
        joined = self.hub.subscribe(A, Inbox(), since=1, epoch=self.epoch)
        self.assertTrue(joined.reload)
        self.assertEqual(joined.replay, ())
        self.assertEqual(joined.seq, 7)
        ok = self.hub.subscribe(A, Inbox(), since=2, epoch=self.epoch)
        self.assertFalse(ok.reload)
        self.assertEqual([p.stamp.seq for p in ok.replay], [3, 4, 5, 6, 7])

    def test_gap_by_age_means_reload(self) -> None:
        """Events older than history_seconds leave the history."""
        self.clock.advance(61)
        self.hub.publish(ev())  # seq 5, the only one young enough
        joined = self.hub.subscribe(A, Inbox(), since=3, epoch=self.epoch)
        self.assertTrue(joined.reload)
        fresh = self.hub.subscribe(A, Inbox(), since=4, epoch=self.epoch)
        self.assertEqual([p.stamp.seq for p in fresh.replay], [5])

    def test_other_epoch_means_reload(self) -> None:
        """A since from another epoch (a restarted node, another node) is
        answered with reload, whatever its number."""
        joined = self.hub.subscribe(A, Inbox(), since=2, epoch="otherepoch")
        self.assertTrue(joined.reload)
        self.assertEqual(joined.replay, ())

    def test_since_in_future(self) -> None:
        """A since beyond the channel's position in its own epoch is an error."""
        self.assertRaises(SinceInFuture, self.hub.subscribe, A, Inbox(), since=5, epoch=self.epoch)
        self.assertRaises(SinceInFuture, self.hub.subscribe, A, Inbox(), since=99)

    def test_replay_respects_blocks(self) -> None:
        """Replayed events from a blocked author are left out."""
        self.hub.publish(ev(author="troll"))
        self.hub.publish(ev(author="friend"))
        joined = self.hub.subscribe(
            A,
            Inbox(),
            since=4,
            epoch=self.epoch,
            viewer=("tenantA", "me"),
            blocked={"troll"},
        )
        self.assertEqual([p.event.author_id for p in joined.replay], ["friend"])

    def test_expire_forgets_idle_channels(self) -> None:
        """expire() drops aged history and channels with no members and no
        history; a channel with members stays."""
        self.hub.subscribe(B, Inbox())
        self.hub.publish(ev(channel=B))
        hub = self.hub
        for sub in list(hub._channels[A].members):
            hub.unsubscribe(sub)
        self.clock.advance(61)
        self.assertEqual(hub.expire(), 1)
        self.assertIsNone(hub.position(A))
        self.assertIsNotNone(hub.position(B))

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.integers(min_value=0, max_value=12), st.integers(min_value=0, max_value=12))
    def test_recovery_property(self, published: int, since: int) -> None:
        """For any history and any since: either the replay is exactly the
        events after since, in order, or the client is told to reload (or,
        for a since ahead of the channel, refused)."""
        hub = make_hub(Clock(), events=5)
        epoch = hub.subscribe(A, Inbox()).epoch
        for _ in range(published):
            hub.publish(ev())
        try:
            joined = hub.subscribe(A, Inbox(), since=since, epoch=epoch)
        except SinceInFuture:
            self.assertGreater(since, published)
            return
        if joined.reload:
            self.assertLess(since, published - 5)
            self.assertEqual(joined.replay, ())
        else:
            self.assertEqual(
                [p.stamp.seq for p in joined.replay],
                list(range(since + 1, published + 1)),
            )


class InterestTests(SynchronousTestCase):
    def test_interest_tracks_local_subscribers(self) -> None:
        """A listener hears when a channel gains its first and loses its last
        local subscriber, and interest() lists subscribed channels."""
        hub = make_hub()
        heard: list[tuple[tuple[str, str], bool]] = []

        class Listener:
            def interest_changed(self, channel: tuple[str, str], interested: bool) -> None:
                heard.append((channel, interested))

            def accepted(self, prepared: Prepared, local: bool) -> None:
                pass

        hub.add_listener(Listener())
        one = hub.subscribe(A, Inbox())
        two = hub.subscribe(A, Inbox())
        self.assertEqual(hub.interest(), frozenset({A}))
        hub.unsubscribe(one.subscription)
        hub.unsubscribe(two.subscription)
        hub.unsubscribe(two.subscription)
        self.assertEqual(heard, [(A, True), (A, False)])
        self.assertEqual(hub.interest(), frozenset())
        self.assertEqual(hub.subscription_count(), 0)

    def test_listener_sees_accepted_events(self) -> None:
        """A relay listener is given every accepted event and whether it was
        stamped here."""
        hub = make_hub()
        accepted: list[tuple[int, bool]] = []

        class Listener:
            def interest_changed(self, channel: tuple[str, str], interested: bool) -> None:
                pass

            def accepted(self, prepared: Prepared, local: bool) -> None:
                accepted.append((prepared.stamp.seq, local))

        hub.add_listener(Listener())
        hub.publish(ev())
        epoch = hub.position(A).epoch  # type: ignore[union-attr]
        hub.publish(ev(stamp=Stamp(epoch, 2)))
        self.assertEqual(accepted, [(1, True), (2, False)])


class BlockTests(SynchronousTestCase):
    def test_blocked_author_not_delivered(self) -> None:
        """Events from an author the viewer blocked do not reach that viewer;
        others still get them; events of no author reach everyone."""
        hub = make_hub()
        blocker, other = Inbox(), Inbox()
        hub.subscribe(A, blocker, viewer=("tenantA", "me"), blocked={"troll"})
        hub.subscribe(A, other)
        hub.publish(ev("comment.created", author="troll"))
        hub.publish(ev("comment.likes"))
        self.assertEqual(blocker.kinds(), ["comment.likes"])
        self.assertEqual(other.kinds(), ["comment.created", "comment.likes"])

    def test_block_change_applies_to_open_subscriptions(self) -> None:
        """set_blocked changes what a viewer's live subscriptions receive
        from the next event on, in both directions."""
        hub = make_hub()
        inbox = Inbox()
        hub.subscribe(A, inbox, viewer=("tenantA", "me"))
        self.assertEqual(hub.set_blocked(("tenantA", "me"), "troll", True), 1)
        self.assertEqual(hub.set_blocked(("tenantA", "me"), "troll", True), 0)
        hub.publish(ev(author="troll"))
        self.assertEqual(inbox.got, [])
        hub.set_blocked(("tenantA", "me"), "troll", False)
        hub.publish(ev(author="troll"))
        self.assertEqual(len(inbox.got), 1)

    def test_block_change_of_another_tenant_viewer(self) -> None:
        """A block by the same author id in another tenant changes nothing here."""
        hub = make_hub()
        inbox = Inbox()
        hub.subscribe(A, inbox, viewer=("tenantA", "me"))
        self.assertEqual(hub.set_blocked(("tenantB", "me"), "troll", True), 0)
        hub.publish(ev(author="troll"))
        self.assertEqual(len(inbox.got), 1)


class RelayTests(SynchronousTestCase):
    """Events from elsewhere come through publish() already stamped."""

    def test_stamped_events_follow_their_sequencer(self) -> None:
        """A hub with no state adopts the relayed epoch and numbers."""
        hub = make_hub()
        inbox = Inbox()
        hub.publish(ev(stamp=Stamp("remote", 7)))
        joined = hub.subscribe(A, inbox, since=6, epoch="remote")
        self.assertEqual([p.stamp.seq for p in joined.replay], [7])
        hub.publish(ev(stamp=Stamp("remote", 8)))
        self.assertEqual(inbox.seqs(), [8])
        self.assertEqual(hub.stats.relayed, 2)

    def test_since_beyond_a_followed_numbering_reloads(self) -> None:
        """In a numbering this hub follows, a ``since`` beyond its position
        means the client was on a node further ahead: it is told to reload
        (never an error, never a silent gap). In its own numbering the same
        request stays an error."""
        hub = make_hub()
        hub.resync(A, Stamp("remote", 2), ())
        joined = hub.subscribe(A, Inbox(), since=8, epoch="remote")
        self.assertEqual((joined.reload, joined.seq, joined.replay), (True, 2, ()))
        hub.publish(ev(channel=B))
        own = hub.position(B).epoch  # type: ignore[union-attr]
        self.assertRaises(SinceInFuture, hub.subscribe, B, Inbox(), since=8, epoch=own)

    def test_duplicates_dropped(self) -> None:
        """A relayed event already seen (redelivery) is dropped."""
        hub = make_hub()
        inbox = Inbox()
        hub.subscribe(A, inbox)
        epoch = hub.position(A).epoch  # type: ignore[union-attr]
        hub.publish(ev())
        self.assertIsNone(hub.publish(ev(stamp=Stamp(epoch, 1))))
        self.assertEqual(inbox.seqs(), [1])
        self.assertEqual(hub.stats.duplicates, 1)

    def test_jump_resets_channel(self) -> None:
        """A relayed event that skips numbers breaks the history: subscribers
        get a reset (reload) positioned just before it, then the event, and
        a recovery from before the jump must reload."""
        hub = make_hub()
        inbox = Inbox()
        epoch = hub.subscribe(A, inbox).epoch
        hub.publish(ev())
        hub.publish(ev(stamp=Stamp(epoch, 5)))
        self.assertEqual(
            [(p.reset, p.stamp.seq) for p in inbox.got],
            [(False, 1), (True, 4), (False, 5)],
        )
        body = json.loads(inbox.got[1].payload)
        self.assertEqual(
            body,
            {
                "type": "reset",
                "channel": "tenantA/thread1",
                "epoch": epoch,
                "seq": 4,
                "reload": True,
            },
        )
        self.assertTrue(hub.subscribe(A, Inbox(), since=1, epoch=epoch).reload)
        self.assertEqual(hub.stats.resets, 1)

    def test_new_epoch_resets_channel(self) -> None:
        """A relayed event of another epoch moves the channel to it."""
        hub = make_hub()
        inbox = Inbox()
        hub.subscribe(A, inbox)
        hub.publish(ev(stamp=Stamp("newepoch", 1)))
        self.assertEqual(hub.position(A), Stamp("newepoch", 1))
        self.assertTrue(inbox.got[0].reset)


class MiscTests(SynchronousTestCase):
    def test_new_epoch_shape(self) -> None:
        """Epochs are random and shaped as the protocol accepts them."""
        a, b = new_epoch(), new_epoch()
        self.assertNotEqual(a, b)
        self.assertTrue(is_epoch(a))

    def test_deliver_each_skips(self) -> None:
        """deliver_each skips the given members and counts the rest."""
        hub = make_hub()
        one, two = Inbox(), Inbox()
        s1 = hub.subscribe(A, one).subscription
        s2 = hub.subscribe(A, two).subscription
        prepared = Prepared(ev(), Stamp("e", 1), 0.0)
        sent, total = deliver_each(prepared, [s1, s2], {s1})
        self.assertEqual((sent, total), (1, len(prepared.payload)))
        self.assertEqual(len(two.got), 1)
        self.assertEqual(one.got, [])


class ReentrancyTests(SynchronousTestCase):
    def test_outlet_leaving_during_fanout(self) -> None:
        """An outlet that unsubscribes itself while being pushed to (a slow
        consumer closing) does not disturb the fan-out: everyone else still
        gets the event, and the subscription is gone afterwards."""
        hub = make_hub()
        inboxes = [Inbox() for _ in range(3)]

        class Leaver(Inbox):
            def push(self, prepared: Prepared) -> int:
                hub.unsubscribe(self.sub)
                return 0

        leaver = Leaver()
        hub.subscribe(A, inboxes[0])
        leaver.sub = hub.subscribe(A, leaver).subscription  # type: ignore[attr-defined]
        for inbox in inboxes[1:]:
            hub.subscribe(A, inbox)
        hub.publish(ev())
        self.assertEqual([len(i.got) for i in inboxes], [1, 1, 1])
        self.assertEqual(hub.subscribers(A), 3)


class BrokenOutletTests(SynchronousTestCase):
    def test_one_broken_outlet(self) -> None:
        """An outlet that raises is logged and skipped; the others still get
        the event."""
        hub = make_hub()

        class Broken(Inbox):
            def push(self, prepared: Prepared) -> int:
                raise RuntimeError("bug")

        before, after = Inbox(), Inbox()
        hub.subscribe(A, before)
        hub.subscribe(A, Broken())
        hub.subscribe(A, after)
        hub.publish(ev())
        self.assertEqual((len(before.got), len(after.got)), (1, 1))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(hub.stats.delivered, 2)
