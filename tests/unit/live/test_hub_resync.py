"""The hub's entry points for cross-node sequencing (used by the mesh relay)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.live.hub import Event, Hub, Stamp
from fastedge.testing.fakes import RecordingConnection

CH = ("tenant", "thread")


def hub(**kw: object) -> Hub:
    epochs = iter("e{}".format(i) for i in range(100))
    return Hub(clock=Clock(), history_events=kw.get("history_events", 10), history_seconds=60.0, new_epoch=lambda: next(epochs))  # type: ignore[arg-type]


def stamped(epoch: str, seq: int) -> Event:
    return Event(CH, "comment.likes", {"n": seq}, stamp=Stamp(epoch, seq))


class ResyncTests(SynchronousTestCase):
    def test_ensure(self) -> None:
        """ensure() makes a channel's numbering (a new epoch at 0) once, and
        then only reports it."""
        h = hub()
        self.assertEqual(h.ensure(CH), Stamp("e0", 0))
        h.publish(Event(CH, "comment.likes", {}))
        self.assertEqual(h.ensure(CH), Stamp("e0", 1))

    def test_since_and_history(self) -> None:
        """since() gives exactly the events after a position, or None when
        it cannot (another epoch, a future seq, aged-out events)."""
        h = hub(history_events=3)
        for _ in range(5):
            h.publish(Event(CH, "comment.likes", {}))
        self.assertEqual([p.stamp.seq for p in h.since(CH, "e0", 3)], [4, 5])
        self.assertEqual(h.since(CH, "e0", 5), ())
        self.assertIsNone(h.since(CH, "e0", 1))
        self.assertIsNone(h.since(CH, "other", 4))
        self.assertIsNone(h.since(CH, "e0", 6))
        self.assertEqual([p.stamp.seq for p in h.history(CH)], [3, 4, 5])

    def test_resync_fresh_channel(self) -> None:
        """A channel unknown here takes the sequencer's position and
        history, silently."""
        h = hub()
        self.assertEqual(h.resync(CH, Stamp("x", 7), [stamped("x", 6), stamped("x", 7)]), "replayed")
        self.assertEqual(h.position(CH), Stamp("x", 7))
        self.assertEqual([p.stamp.seq for p in h.history(CH)], [6, 7])
        self.assertEqual(h.resync(("t", "u"), Stamp("y", 3), []), "current")
        self.assertEqual(h.position(("t", "u")), Stamp("y", 3))

    def test_resync_replays_in_order_without_duplicates(self) -> None:
        """A follower behind by some events gets exactly those, once."""
        h = hub()
        conn = RecordingConnection()
        h.resync(CH, Stamp("x", 2), [stamped("x", 1), stamped("x", 2)])
        h.subscribe(CH, conn)
        result = h.resync(CH, Stamp("x", 4), [stamped("x", 2), stamped("x", 3), stamped("x", 4)])
        self.assertEqual(result, "replayed")
        self.assertEqual([(m["type"], m["seq"]) for m in conn.messages], [("event", 3), ("event", 4)])
        self.assertEqual(h.resync(CH, Stamp("x", 4), []), "current")

    def test_resync_gap_resets(self) -> None:
        """Missing events that were not given reset the channel at the
        sequencer's position: subscribers are told to reload."""
        h = hub()
        conn = RecordingConnection()
        h.resync(CH, Stamp("x", 1), [stamped("x", 1)])
        h.subscribe(CH, conn)
        self.assertEqual(h.resync(CH, Stamp("x", 9), []), "reset")
        self.assertEqual([(m["type"], m["seq"]) for m in conn.messages], [("reset", 9)])
        self.assertEqual(h.position(CH), Stamp("x", 9))
        h.publish(stamped("x", 10))
        self.assertEqual(conn.messages[-1]["seq"], 10)

    def test_resync_new_epoch_resets_then_replays(self) -> None:
        """Events of another epoch reset the subscribers once, then arrive."""
        h = hub()
        conn = RecordingConnection()
        h.subscribe(CH, conn)
        self.assertEqual(h.resync(CH, Stamp("x", 2), [stamped("x", 1), stamped("x", 2)]), "reset")
        self.assertEqual(
            [(m["type"], m["seq"]) for m in conn.messages],
            [("reset", 0), ("event", 1), ("event", 2)],
        )
