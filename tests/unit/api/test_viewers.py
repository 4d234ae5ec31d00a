"""Readers' own state kept between their writes (fastedge.api.viewers), on
its own and through the public API of a whole in-process node."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.api.viewers import THREADS_PER_VIEWER, ViewerStates
from fastedge.store.model import ViewerState
from tests.support.nodes import NodeHarness


class FakeStore:
    """Answers viewer_state when the test says; tokens are integers as text."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[str, ...], str | None]] = []
        self.pending: list[Deferred[ViewerState]] = []

    def viewer_state(self, tenant_id: str, author_id: str, ids: Any, *, read_preference: Any, token: Any) -> Any:
        self.calls.append((tenant_id, author_id, tuple(ids), token))
        d: Deferred[ViewerState] = Deferred()
        self.pending.append(d)
        return d

    def token_covers(self, have: str | None, want: str | None) -> bool:
        return want is None or (have is not None and int(have) >= int(want))


def state(*liked: str, blocked: tuple[str, ...] = ()) -> ViewerState:
    return ViewerState(liked=frozenset(liked), blocked_authors=frozenset(blocked))


class ViewerStatesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore()
        self.counts: list[str] = []
        self.states = ViewerStates(
            self.store, self.clock, ttl_seconds=60.0, max_viewers=100, count=self.counts.append  # type: ignore[arg-type]
        )

    def read(self, author: str = "a1", ids: tuple[str, ...] = ("c1", "c2"), token: str | None = "5") -> Any:
        return self.states.state("t1", author, "th1", ids, token)

    def test_kept_until_the_viewer_writes(self) -> None:
        d = self.read()
        self.store.pending[0].callback(state("c1"))
        self.assertEqual(self.successResultOf(d), state("c1"))
        self.assertEqual(self.successResultOf(self.read()), state("c1"))
        self.assertEqual(len(self.store.calls), 1)
        self.states.forget("t1", "a1")
        self.read()
        self.assertEqual(len(self.store.calls), 2)
        self.assertEqual(self.counts, ["miss", "hit", "miss"])

    def test_newer_token_reads_again(self) -> None:
        """A write elsewhere moved the viewer's token: the entry is too old."""
        self.read(token="5")
        self.store.pending[0].callback(state())
        self.read(token="7")
        self.assertEqual([c[3] for c in self.store.calls], ["5", "7"])
        self.assertEqual(self.counts[-1], "stale")

    def test_new_comments_read_again(self) -> None:
        self.read(ids=("c1",))
        self.store.pending[0].callback(state())
        self.read(ids=("c1", "c9"))
        self.assertEqual(self.store.calls[-1][2], ("c1", "c9"))

    def test_write_during_a_read_is_not_hidden(self) -> None:
        """A read that began before the viewer's write is answered but not kept."""
        d = self.read()
        self.states.forget("t1", "a1")
        self.store.pending[0].callback(state("c1"))
        self.successResultOf(d)
        self.read()
        self.assertEqual(len(self.store.calls), 2)

    def test_viewers_never_share(self) -> None:
        """Two viewers reading the same page at once, answered in reverse
        order, each get and keep only their own state."""
        da, db = self.read("alice"), self.read("bob")
        self.store.pending[1].callback(state("c2", blocked=("x",)))
        self.store.pending[0].callback(state("c1"))
        self.assertEqual(self.successResultOf(da), state("c1"))
        self.assertEqual(self.successResultOf(db), state("c2", blocked=("x",)))
        self.assertEqual(self.successResultOf(self.read("alice")), state("c1"))
        self.assertEqual(self.successResultOf(self.read("bob")), state("c2", blocked=("x",)))
        other_tenant = self.states.state("t2", "alice", "th1", ("c1", "c2"), "5")
        self.assertNoResult(other_tenant)
        self.assertEqual(self.store.calls[-1][:2], ("t2", "alice"))

    def test_expires_and_is_bounded(self) -> None:
        self.read()
        self.store.pending[0].callback(state())
        self.clock.advance(60.0)
        self.read()
        self.assertEqual(len(self.store.calls), 2)
        for i in range(THREADS_PER_VIEWER + 1):
            d = self.states.state("t1", "a2", "th{}".format(i), ("c1",), None)
            self.store.pending[-1].callback(state())
            self.successResultOf(d)
        self.states.state("t1", "a2", "th0", ("c1",), None)
        self.assertEqual(self.counts[-1], "miss", "the oldest thread went")


class ThroughTheApiTests(SynchronousTestCase):
    """On a whole node: a reader's likes show at once after their own
    writes, another reader never sees them, and pages read in between are
    served without asking the store."""

    def setUp(self) -> None:
        self.node = NodeHarness(self)
        self.tenant, _ = self.node.create_tenant("T")
        self.url = "/api/v1/{}/comments?urlId=page".format(self.tenant)
        self.ann = self.node.client()
        self.bob = self.node.client()
        first = self.ann.post(self.url, json_body={"text": "one", "displayName": "Ann"}).json["comment"]
        self.bob.post(self.url, json_body={"text": "two", "displayName": "Bob"})
        self.comment = first["id"]

    def liked(self, client: Any) -> dict[str, bool]:
        return {c["id"]: c["likedByMe"] for c in client.get(self.url).json["comments"]}

    def lookups(self, result: str) -> float:
        value = self.node.registry.get_sample_value("fastedge_api_viewer_cache_lookups_total", {"result": result})
        return value or 0.0

    def test_own_like_shows_and_stays_own(self) -> None:
        like = "/api/v1/{}/comments/{}/like".format(self.tenant, self.comment)
        self.assertEqual(self.bob.post(like).code, 200)
        self.assertTrue(self.liked(self.bob)[self.comment])
        self.assertFalse(self.liked(self.ann)[self.comment])
        hits = self.lookups("hit")
        self.assertTrue(self.liked(self.bob)[self.comment])
        self.assertEqual(self.lookups("hit"), hits + 1, "kept between the reader's writes")
        self.assertEqual(self.bob.request("DELETE", like).code, 200)
        self.assertFalse(self.liked(self.bob)[self.comment])
        self.assertFalse(self.liked(self.ann)[self.comment])
