"""The member digest heartbeats carry is kept as members change, not
recomputed per exchange, and always equals a computation from scratch."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from fastedge.mesh.membership import Membership, Timing, member_digest
from fastedge.mesh.messages import Announcement
from fastedge.mesh.metrics import MeshMetrics
from fastedge.mesh.nodemap import NodeMap
from fastedge.metrics.registry import new_registry


class _Link:
    """A link that never comes up (the digest needs no network)."""

    up = False

    def call(self, method: str, *args: Any) -> Deferred[Any]:
        return fail(RuntimeError("not up"))

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def adopt(self, peer_id: str) -> None:
        pass

    def abort(self, reason: str, detail: str) -> None:
        pass


def announcement(node_id: str, incarnation: int, load: int = 0) -> Announcement:
    return Announcement(
        node_id=node_id,
        deployment="global",
        region="r",
        addresses=("192.0.2.1",),
        version="test",
        incarnation=incarnation,
        load=load,
        mesh_host="127.0.0.1",
        mesh_port=7000 + len(node_id),
    )


def apply_step(m: Membership, step: tuple[Any, ...]) -> None:
    """Apply one of :data:`STEPS`' changes (a join, a restart, a
    refutation, a goodbye, a load change) to ``m``."""
    kind = step[0]
    if kind == "merge":
        m.merge([(announcement(step[1], step[2]), step[3])])
    elif kind == "announced" and step[1] != "me":
        m.announced(step[1], announcement(step[1], step[2], load=step[3]))
    elif kind == "superseded":
        m.superseded(step[1])
    elif kind == "left":
        m.left(step[1], step[2])
    elif kind == "load":
        m.set_load(step[1])


def membership() -> Membership:
    m = Membership(
        me=announcement("me", 5),
        node_map=NodeMap(),
        timing=Timing(),
        monotonic=lambda: 100.0,
        metrics=MeshMetrics(new_registry()),
        connect=lambda peer_id, host, port: _Link(),
    )
    m.start()
    return m


def from_scratch(m: Membership) -> str:
    pairs = [(p.node_id, p.announcement.incarnation) for p in m.peers.values()]
    return member_digest(pairs + [(m.me.node_id, m.me.incarnation)])


NODES = st.sampled_from(["me", "n1", "n2", "n3", "n4"])
INCARNATIONS = st.integers(min_value=1, max_value=9)
STEPS = st.one_of(
    st.tuples(st.just("merge"), NODES, INCARNATIONS, st.sampled_from(["alive", "suspect", "dead", "leaving"])),
    st.tuples(st.just("announced"), NODES, INCARNATIONS, st.integers(min_value=0, max_value=3)),
    st.tuples(st.just("superseded"), INCARNATIONS),
    st.tuples(st.just("left"), NODES, INCARNATIONS),
    st.tuples(st.just("load"), st.integers(min_value=0, max_value=3)),
)


class DigestTests(SynchronousTestCase):
    def test_old_encoding(self) -> None:
        """The wire format is unchanged: nodes of earlier versions agree."""
        m = membership()
        m.merge([(announcement("n1", 2), "alive")])
        self.assertEqual(m.digest(), member_digest([("me", 5), ("n1", 2)]))
        self.assertEqual(member_digest([("n1", 2), ("me", 5)]), member_digest([("me", 5), ("n1", 2)]))

    def test_not_recomputed_per_exchange(self) -> None:
        """Asked again with no change, the digest is the kept one."""
        m = membership()
        m.merge([(announcement("n1", 2), "alive")])
        first = m.digest()
        m._members_changed = lambda: None  # type: ignore[method-assign]
        m.peers["n1"].announcement = announcement("n1", 3)
        self.assertIs(m.digest(), first)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(STEPS, max_size=40))
    def test_kept_digest_equals_from_scratch(self, steps: list[tuple[Any, ...]]) -> None:
        """After any sequence of joins, restarts, refutations, goodbyes and
        load changes, the kept digest equals one computed from scratch."""
        m = membership()
        for step in steps:
            apply_step(m, step)
            self.assertEqual(m.digest(), from_scratch(m))
