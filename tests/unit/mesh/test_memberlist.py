"""The versioned member table and its exchange, as pure logic: a delta
since any version a peer holds, or the chunks of a full list in any order
with repeats, rebuild the same table as the full list; what a peer lacks is
all it would take from the full list; chunks out of range, of another set
or repeated are refused; no chunk nears the message limit."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.spread import banana, jelly
from twisted.trial.unittest import SynchronousTestCase

from fastedge.mesh.memberlist import (
    CHUNK_MEMBERS,
    MAX_CHUNKS,
    Chunk,
    ChunkSet,
    Delta,
    MemberTable,
    PeerSync,
    Refusal,
    check_answer,
    have_text,
    parse_have,
)
from fastedge.mesh.messages import MESH_SECURITY, Announcement, BadMessage

from .test_digest import STEPS as DIGEST_STEPS
from .test_digest import apply_step
from .test_digest import membership as digest_membership


def announcement(node_id: str, incarnation: int, *, load: int = 0, port: int = 7000) -> Announcement:
    return Announcement(
        node_id=node_id,
        deployment="global",
        region="europe-west",
        latitude=50.1,
        longitude=8.7,
        addresses=("192.0.2.1", "2001:db8::1"),
        version="0.1.0",
        incarnation=incarnation,
        load=load,
        mesh_host="10.0.0.1",
        mesh_port=port,
    )


NODES = st.sampled_from(["n{}".format(i) for i in range(8)])
STATES = st.sampled_from(["alive", "suspect", "dead", "leaving"])
CHANGES = st.lists(st.tuples(NODES, st.integers(1, 4), STATES, st.integers(7000, 7002), st.integers(0, 3)), max_size=40)


def play(changes: list[tuple[str, int, str, int, int]], chunk_members: int = 3) -> tuple[MemberTable, list[dict]]:
    """A table after ``changes``, and its records (node -> record) at every version."""
    table = MemberTable(chunk_members=chunk_members)
    at = [{}]
    for node, incarnation, state, port, load in changes:
        if table.put(announcement(node, incarnation, port=port, load=load), state):
            at.append({r[0].node_id: r for r in table.records()})
            assert len(at) == table.version + 1
    return table, at


def keyed(records: Any) -> dict[str, tuple[Announcement, str]]:
    return {a.node_id: (a, s) for a, s in records}


def fetch_chunks(table: MemberTable, first: tuple[Any, ...], order: list[int], repeats: list[int]) -> ChunkSet:
    """Every chunk of the full list ``first`` starts, in ``order`` with
    ``repeats`` mixed in (refused as repeats, the set unchanged)."""
    chunk = check_answer(first)
    assert isinstance(chunk, Chunk)
    chunks = PeerSync().start_chunks(chunk, 1)
    for index in order + repeats:
        answer = table.chunk(1, chunk.version, index % chunk.total)
        assert answer is not None
        parsed = check_answer(answer)
        assert isinstance(parsed, Chunk)
        try:
            chunks.add(parsed)
        except Refusal as r:
            assert r.reason == "chunk_repeat", r.reason
    return chunks


class DeltaTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(CHANGES, st.data())
    def test_delta_or_chunks_rebuild_the_table(self, changes: Any, data: Any) -> None:
        """For any sequence of member changes and any version a peer holds,
        the answer to ``members_since`` -- a delta applied over the peer's
        copy, or the full list's chunks fetched in any order with repeats --
        gives exactly the table's records."""
        table, at = play(changes)
        since = data.draw(st.integers(0, table.version), label="since")
        answer, refused = table.answer(
            incarnation=1, asked_incarnation=1, since=since, digest="x", my_digest="y", have=None
        )
        self.assertIsNone(refused)
        parsed = check_answer(answer)
        if isinstance(parsed, Delta):
            self.assertEqual((parsed.start, parsed.end), (since, table.version))
            replica = dict(at[since])
            replica.update(keyed(parsed.records))
        else:
            total = parsed.total
            order = data.draw(st.permutations(list(range(1, total))), label="order")
            repeats = data.draw(st.lists(st.integers(0, total - 1), max_size=4), label="repeats")
            chunks = fetch_chunks(table, answer, list(order), repeats)
            self.assertTrue(chunks.complete)
            self.assertEqual(chunks.version, table.version)
            replica = keyed(chunks.records())
        self.assertEqual(replica, keyed(table.records()))

    @settings(max_examples=200, deadline=None)
    @given(CHANGES, st.dictionaries(NODES, st.integers(0, 5)))
    def test_lacking_is_what_a_full_list_would_teach(self, changes: Any, have: dict[str, int]) -> None:
        """What a peer with ``have`` lacks teaches it the same (node,
        incarnation) maxima as the whole list: a member list only ever adds
        members and newer lives."""

        def learn(records: Any) -> dict[str, int]:
            out = dict(have)
            for a, _ in records:
                out[a.node_id] = max(out.get(a.node_id, -1), a.incarnation)
            return out

        table, _ = play(changes)
        lacking = table.lacking(have)
        self.assertEqual(learn(lacking), learn(table.records()))
        self.assertTrue(all(have.get(a.node_id, -1) < a.incarnation for a, _ in lacking))

    @given(CHANGES)
    def test_load_is_not_a_change(self, changes: Any) -> None:
        """A record that differs only in its load (which heartbeats carry)
        leaves the version alone."""
        table, _ = play(changes)
        version = table.version
        for a, s in table.records():
            self.assertFalse(table.put(a.replace(load=a.load + 1), s))
        self.assertEqual(table.version, version)

    def test_equal_digest_is_an_empty_delta(self) -> None:
        """A peer whose digest equals this node's lacks nothing: an empty
        delta that gives it this table's version."""
        table, _ = play([("n1", 1, "alive", 7000, 0), ("n2", 1, "alive", 7000, 0)])
        answer, refused = table.answer(incarnation=1, asked_incarnation=1, since=0, digest="d", my_digest="d", have={})
        self.assertEqual(answer, ("delta", 1, 0, 2, []))
        self.assertIsNone(refused)

    def test_a_version_never_had(self) -> None:
        """A peer that names a version this table never had gets the full
        list, and the request is refused as ``unknown_version``."""
        table, _ = play([("n1", 1, "alive", 7000, 0)])
        self.assertIsNone(table.since(5))
        answer, refused = table.answer(
            incarnation=1, asked_incarnation=1, since=5, digest="a", my_digest="b", have=None
        )
        self.assertEqual(refused, "unknown_version")
        self.assertEqual(answer[:5], ("chunk", 1, 1, 0, 1))

    def test_another_incarnation_gets_the_full_list(self) -> None:
        """A version of a previous life of this node means nothing now: the
        full list, not a refusal."""
        table, _ = play([("n1", 1, "alive", 7000, 0), ("n2", 1, "alive", 7000, 0)])
        answer, refused = table.answer(
            incarnation=2, asked_incarnation=1, since=1, digest="a", my_digest="b", have=None
        )
        self.assertIsNone(refused)
        self.assertEqual(answer[0], "chunk")
        self.assertEqual(answer[1], 2)

    def test_a_delta_too_long_is_a_full_list(self) -> None:
        """More changes than fit in one message: the full list in chunks."""
        table, _ = play([("n{}".format(i), 1, "alive", 7000, 0) for i in range(7)], chunk_members=3)
        answer, _ = table.answer(incarnation=1, asked_incarnation=1, since=1, digest="a", my_digest="b", have=None)
        self.assertEqual(answer[:5], ("chunk", 1, 7, 0, 3))

    def test_old_lists_are_not_kept_forever(self) -> None:
        """Only the last few full lists are kept for ``members_chunk``."""
        table = MemberTable()
        versions = []
        for i in range(6):
            table.put(announcement("n{}".format(i), 1), "alive")
            table.full()
            versions.append(table.version)
        self.assertIsNone(table.chunk(1, versions[0], 0))
        self.assertIsNotNone(table.chunk(1, versions[-1], 0))
        self.assertIsNone(table.chunk(1, versions[-1], 1))


class ChunkSetTests(SynchronousTestCase):
    def chunk(self, index: int, total: int = 3, version: int = 9, incarnation: int = 1) -> Chunk:
        return Chunk(incarnation, version, index, total, [(announcement("n{}".format(index), 1), "alive")])

    def test_complete_only_with_every_chunk(self) -> None:
        """A set is complete once every index is in, whatever the order."""
        chunks = ChunkSet(1, 9, 3)
        chunks.add(self.chunk(2))
        chunks.add(self.chunk(0))
        self.assertFalse(chunks.complete)
        self.assertEqual(chunks.missing(), [1])
        chunks.add(self.chunk(1))
        self.assertTrue(chunks.complete)
        self.assertEqual([a.node_id for a, _ in chunks.records()], ["n0", "n1", "n2"])

    def test_repeat_ignored(self) -> None:
        """A chunk already in is refused as a repeat; the set keeps the first."""
        chunks = ChunkSet(1, 9, 2)
        chunks.add(self.chunk(0, 2))
        with self.assertRaises(Refusal) as e:
            chunks.add(Chunk(1, 9, 0, 2, []))
        self.assertEqual(e.exception.reason, "chunk_repeat")
        chunks.add(self.chunk(1, 2))
        self.assertEqual(len(chunks.records()), 2)

    def test_out_of_range(self) -> None:
        """An index past the total, or a total past what any list needs, is
        refused as out of range."""
        chunks = ChunkSet(1, 9, 3)
        with self.assertRaises(Refusal) as e:
            chunks.add(self.chunk(3))
        self.assertEqual(e.exception.reason, "chunk_range")
        for total in (0, MAX_CHUNKS + 1):
            with self.assertRaises(Refusal) as e:
                ChunkSet(1, 9, total)
            self.assertEqual(e.exception.reason, "chunk_range")

    def test_another_set(self) -> None:
        """A chunk of another version, total or incarnation is refused as a
        mismatch and not taken."""
        chunks = ChunkSet(1, 9, 3)
        for other in (self.chunk(1, version=10), self.chunk(1, total=4), self.chunk(1, incarnation=2)):
            with self.assertRaises(Refusal) as e:
                chunks.add(other)
            self.assertEqual(e.exception.reason, "chunk_mismatch")
        self.assertEqual(chunks.missing(), [0, 1, 2])


class PeerSyncTests(SynchronousTestCase):
    def test_delta_must_start_where_asked(self) -> None:
        """A delta not from the version asked, ending before it, or of
        another incarnation is refused as a mismatch."""
        sync = PeerSync()
        sync.check_delta(Delta(1, 4, 6, []), 1, 4)
        for delta in (Delta(1, 3, 6, []), Delta(1, 4, 3, []), Delta(2, 4, 6, [])):
            with self.assertRaises(Refusal) as e:
                sync.check_delta(delta, 1, 4)
            self.assertEqual(e.exception.reason, "mismatch")


class WireTests(SynchronousTestCase):
    def test_malformed_answers(self) -> None:
        """Answers of the wrong shape are bad messages."""
        good = announcement("n1", 1)
        for answer in (
            None,
            (),
            ("delta", 1, 0, 1),
            ("delta", 1, -1, 1, []),
            ("delta", True, 0, 1, []),
            ("delta", 1, 0, 1, [(good, "zombie")]),
            ("delta", 1, 0, 1, [("n1", "alive")]),
            ("delta", 1, 0, 1, [(good, "alive")] * (CHUNK_MEMBERS + 1)),
            ("chunk", 1, 1, 0, [(good, "alive")]),
            ("full", 1, 1, 0, 1, []),
        ):
            with self.assertRaises(BadMessage, msg=repr(answer)):
                check_answer(answer)

    @given(st.dictionaries(NODES, st.integers(0, 2**63 - 1)))
    def test_have_round_trip(self, have: dict[str, int]) -> None:
        """``have`` pairs travel as text and come back the same."""
        self.assertEqual(parse_have(have_text(have.items())), have)

    def test_bad_have(self) -> None:
        """``have`` that is not node:incarnation pairs is a bad message."""
        for text in (5, "n1", "n1:x", "N1:1", "n1:1;;n2:2", "n1:99999999999999999999"):
            with self.assertRaises(BadMessage, msg=repr(text)):
                parse_have(text)

    def test_no_chunk_near_the_message_limit(self) -> None:
        """A full list of 3,000 members with every field at its longest --
        past the ~2,170 at which one message passed the 1 MiB limit -- goes
        out in chunks that each stay under half of it."""
        table = MemberTable()
        for i in range(3000):
            a = Announcement(
                node_id="n{:04d}-".format(i) + "x" * 56,
                deployment="d" * 63,
                region="r" * 100,
                latitude=-89.123456789,
                longitude=179.123456789,
                addresses=tuple("2001:db8:{:x}::{:x}".format(i, k) for k in range(16)),
                version="v" * 64,
                incarnation=2**62,
                load=2**40,
                mesh_host="h" * 253,
                mesh_port=65535,
            )
            table.put(a, "suspect")
        first = table.chunk(7, None, 0)
        assert first is not None
        total = first[4]
        self.assertEqual(total, -(-3000 // CHUNK_MEMBERS))
        for index in range(total):
            answer = table.chunk(7, first[2], index)
            size = len(banana.encode(jelly.jelly(answer)))
            self.assertLess(size, 512 * 1024, "chunk {}: {} bytes".format(index, size))
            self.assertEqual(jelly.unjelly(jelly.jelly(answer), MESH_SECURITY)[4], total)


class KeptTableTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(DIGEST_STEPS, max_size=40))
    def test_table_follows_the_members(self, steps: list[tuple[Any, ...]]) -> None:
        """After any sequence of joins, restarts, refutations, goodbyes and
        load changes, the member table a node answers pulls from holds
        exactly its members' announcements (but for load) and states, and
        its version grew by one per change."""
        m = digest_membership()
        for step in steps:
            before = {a.node_id: (a.replace(load=0), s) for a, s in m.table.records()}
            version = m.table.version
            apply_step(m, step)
            expected = {p.node_id: (p.announcement.replace(load=0), p.state.value) for p in m.peers.values()}
            expected[m.me.node_id] = (m.me.replace(load=0), "leaving" if m.leaving else "alive")
            after = {a.node_id: (a.replace(load=0), s) for a, s in m.table.records()}
            self.assertEqual(after, expected)
            changed = [n for n in after if before.get(n) != after[n]]
            self.assertEqual(m.table.since(version), [r for r in m.table.records() if r[0].node_id in changed])
