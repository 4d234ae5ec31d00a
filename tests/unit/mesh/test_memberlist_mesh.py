"""Member lists over the mesh (real TLS and PB in memory, one Clock): a
login is answered without the list and the newcomer asks for what it
lacks; changes travel as deltas; a long list comes in chunks; nodes of the
previous version and of this one understand each other; a peer's bad
deltas and chunks, a version never had and a digest that never converges
are each refused or reported, logged and counted."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fastedge.mesh.interfaces import ILink
from fastedge.mesh.membership import Membership, Peer
from fastedge.mesh.messages import BadMessage
from fastedge.mesh.peer import PeerAvatar
from fastedge.testing.mesh import MemoryMesh

from .common import Rogue, metric


class PreviousMembership(Membership):
    """Membership as the previous version runs it on the wire: a login is
    answered with the whole member list, nothing is asked at login, and a
    digest mismatch pulls ``members`` (the full list)."""

    def joined(self, announcement: Any, session: Any) -> Any:
        me, _ = super().joined(announcement, session)
        return me, self.members()

    def _login_sync(self, peer: Peer, link: ILink, members: Any) -> None:
        pass

    def _pull(self, peer: Peer, link: ILink, digest: str | None = None) -> None:
        def got(members: Any) -> None:
            try:
                self.merge(members)
            except BadMessage as e:
                link.abort("bad_message", str(e))

        self.failures.watch(self._call(link, "members").addCallback(got), "members", peer.node_id)


class PreviousAvatar(PeerAvatar):
    """The previous version's sessions: they know neither member-list call
    (a call they do not know is refused as "no such call")."""

    perspective_members_since = None  # type: ignore[assignment]
    perspective_members_chunk = None  # type: ignore[assignment]


def add(mesh: MemoryMesh, node_id: str, *, previous: bool = False, chunk_members: int | None = None, **kw: Any) -> Any:
    """Add and start a node (of the previous version, or with small chunks)."""
    if previous:
        kw["avatar_class"] = PreviousAvatar
    service = mesh.add(node_id, start=False, **kw)
    if previous:
        service.membership_class = PreviousMembership
    service.privilegedStartService()
    service.startService()
    if chunk_members is not None:
        service.membership.table.chunk_members = chunk_members
    mesh.network.flush()
    return service


def all_alive(mesh: MemoryMesh) -> None:
    ids = set(mesh.nodes)
    for node_id in ids:
        states = mesh.states(node_id)
        assert set(states) == ids, (node_id, states)
        assert set(states.values()) == {"alive"}, (node_id, states)


def sent(mesh: MemoryMesh, node_id: str, kind: str) -> float:
    return metric(mesh, node_id, "fastedge_mesh_memberlist_sent_total", kind=kind)


def received(mesh: MemoryMesh, node_id: str, kind: str) -> float:
    return metric(mesh, node_id, "fastedge_mesh_memberlist_received_total", kind=kind)


def refusals(mesh: MemoryMesh, node_id: str, reason: str) -> float:
    return metric(mesh, node_id, "fastedge_mesh_memberlist_refusals_total", reason=reason)


def calls(mesh: MemoryMesh, method: str) -> float:
    return sum(metric(mesh, n, "fastedge_mesh_calls_received_total", method=method) for n in mesh.nodes)


class ExchangeTests(SynchronousTestCase):
    def test_login_then_what_it_lacks(self) -> None:
        """A login is answered without the member list; the newcomer asks
        ``members_since`` for what it lacks and sees every node ALIVE at
        once; nobody pulls a full list."""
        mesh = MemoryMesh(self)
        for node_id in "abc":
            add(mesh, node_id)
        mesh.advance(1.0)
        rogue = Rogue(mesh, cert_name="r", claim="r")
        rogue.login("a")
        self.assertEqual(rogue.answer[0][2], [])
        add(mesh, "d", seeds=[mesh.address("a")])
        states = mesh.states("d")
        self.assertEqual({n: states[n] for n in "abcd"}, dict.fromkeys("abcd", "alive"))
        self.assertGreaterEqual(sent(mesh, "a", "delta"), 1)
        self.assertEqual(calls(mesh, "members"), 0)
        self.assertEqual(sum(sent(mesh, n, "chunk") for n in mesh.nodes), 0)

    def test_changes_travel_as_deltas(self) -> None:
        """Once nodes hold each other's versions, a restart reaches every
        node as deltas: no full list after the start."""
        mesh = MemoryMesh(self)
        for node_id in "abcd":
            add(mesh, node_id)
        mesh.advance(1.0)
        all_alive(mesh)
        self.assertEqual(calls(mesh, "members"), 0)
        full_before = {n: received(mesh, n, "chunk") for n in "abc"}
        deltas_before = sum(received(mesh, n, "delta") for n in "abc")
        mesh.stop("d")
        mesh.advance(1.0)
        add(mesh, "d")
        mesh.advance(2.0)
        all_alive(mesh)
        self.assertEqual({n: received(mesh, n, "chunk") for n in "abc"}, full_before)
        self.assertGreater(sum(received(mesh, n, "delta") for n in "abc"), deltas_before)
        self.assertEqual(calls(mesh, "members"), 0)

    def test_full_list_in_chunks(self) -> None:
        """A newcomer that lacks more than one message holds gets the full
        list in chunks, and applies it once every chunk is in."""
        mesh = MemoryMesh(self)
        for node_id in "abcde":
            add(mesh, node_id, chunk_members=2)
        mesh.advance(1.0)
        before = metric(mesh, "a", "fastedge_mesh_memberlist_full_lists_total", direction="sent")
        add(mesh, "f", seeds=[mesh.address("a")], chunk_members=2)
        self.assertEqual(metric(mesh, "f", "fastedge_mesh_memberlist_full_lists_total", direction="received"), 1)
        self.assertEqual(received(mesh, "f", "chunk"), 3)
        self.assertEqual(metric(mesh, "a", "fastedge_mesh_memberlist_full_lists_total", direction="sent"), before + 1)
        mesh.advance(1.0)
        all_alive(mesh)

    def test_a_version_never_had(self) -> None:
        """A peer that asks for the changes since a version this node never
        had gets the full list; the request is counted and logged."""
        mesh = MemoryMesh(self)
        a = add(mesh, "a")
        rogue = Rogue(mesh, cert_name="r", claim="r")
        rogue.login("a")
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        [answer] = rogue.call("members_since", a.membership.me.incarnation, 999, "x", "")
        self.assertEqual(answer[0], "chunk")
        self.assertEqual(refusals(mesh, "a", "unknown_version"), 1)
        [event] = [e for e in logged if e.get("reason") == "unknown_version"]
        self.assertEqual(event["peer"], "r")

    def test_malformed_request(self) -> None:
        """A pull whose arguments do not validate is a bad message: the
        peer is disconnected."""
        mesh = MemoryMesh(self)
        a = add(mesh, "a")
        for args in (("x", 0, "d", ""), (a.membership.me.incarnation, 0, "d", "Not:pairs")):
            rogue = Rogue(mesh, cert_name="r", claim="r")
            rogue.login("a")
            before = metric(mesh, "a", "fastedge_mesh_peer_disconnects_total", reason="bad_message")
            rogue.call("members_since", *args)
            self.assertEqual(
                metric(mesh, "a", "fastedge_mesh_peer_disconnects_total", reason="bad_message"), before + 1
            )


class MixedVersionTests(SynchronousTestCase):
    def test_previous_and_current_versions_join_each_other(self) -> None:
        """Nodes of the previous version (full lists at login and on pulls,
        no member-list calls) and of this one, seeded from each other in
        turn, all see each other ALIVE; a restart reaches everyone; nobody
        is disconnected for a message it did not understand."""
        mesh = MemoryMesh(self)
        add(mesh, "a", previous=True)
        add(mesh, "b", seeds=[mesh.address("a")])
        add(mesh, "c", previous=True, seeds=[mesh.address("b")])
        add(mesh, "d", seeds=[mesh.address("c")])
        add(mesh, "e", seeds=[mesh.address("d")])
        mesh.advance(2.0)
        all_alive(mesh)
        for new in "bde":
            peers = mesh.nodes[new].membership.peers
            self.assertEqual({n for n, p in peers.items() if p.sync.legacy}, {"a", "c"})
        mesh.stop("e")
        mesh.advance(1.0)
        add(mesh, "e", seeds=[mesh.address("a")])
        mesh.advance(2.0)
        all_alive(mesh)
        incarnation = mesh.nodes["e"].membership.me.incarnation
        for node_id in "abcd":
            self.assertEqual(mesh.nodes[node_id].node_map.nodes()["e"].incarnation, incarnation)
        for node_id in mesh.nodes:
            for reason in ("bad_message", "protocol", "insecure_type"):
                self.assertEqual(metric(mesh, node_id, "fastedge_mesh_peer_disconnects_total", reason=reason), 0)
        # The previous version pulls full lists, and is never asked what it
        # does not know (its login answer said which version it is).
        self.assertGreater(sent(mesh, "b", "full"), 0)
        self.assertEqual(calls(mesh, "unknown"), 0)

    def test_members_since_unknown(self) -> None:
        """A peer that refuses ``members_since`` as a call it does not know
        is pulled full lists from then on."""
        mesh = MemoryMesh(self)
        add(mesh, "a", avatar_class=PreviousAvatar)
        add(mesh, "b")
        mesh.advance(1.0)
        all_alive(mesh)
        self.assertTrue(mesh.nodes["b"].membership.peers["a"].sync.legacy)
        self.assertEqual(metric(mesh, "a", "fastedge_mesh_calls_received_total", method="unknown"), 1)
        self.assertEqual(metric(mesh, "b", "fastedge_mesh_call_failures_total", call="members_since"), 0)


class LyingDelta(PeerAvatar):
    """Answers every pull with a delta from a version nobody asked for."""

    def perspective_members_since(self, incarnation: Any, since: Any, digest: Any, have: Any) -> Any:
        me = self._node.membership.me
        return ("delta", me.incarnation, since + 3, since + 5, [])


class Chunks(PeerAvatar):
    """Answers every pull with chunk 0 of 3 and ``members_chunk`` from a script."""

    script: list[Any] = []

    def perspective_members_since(self, incarnation: Any, since: Any, digest: Any, have: Any) -> Any:
        me = self._node.membership.me
        return ("chunk", me.incarnation, 40, 0, 3, [(me, "alive")])

    def perspective_members_chunk(self, incarnation: Any, version: Any, index: Any) -> Any:
        me = self._node.membership.me
        ghost = me.replace(node_id="ghost", mesh_port=1)
        step = self.script.pop(0) if self.script else ("chunk", 1)
        kind, value = step
        if kind == "range":
            return ("chunk", me.incarnation, 40, value, 3, [(ghost, "alive")])
        if kind == "version":
            return ("chunk", me.incarnation, value, index, 3, [(ghost, "alive")])
        return ("chunk", me.incarnation, 40, value, 3, [(ghost, "alive")])


class Unconverging(PeerAvatar):
    """Its digest never matches anyone's, and its deltas are empty."""

    def perspective_ping(self, nonce: Any, load: Any, digest: Any) -> Any:
        nonce, load, _ = super().perspective_ping(nonce, load, digest)
        return nonce, load, "never-the-same"


class BadPeerTests(SynchronousTestCase):
    def test_delta_from_a_version_not_asked(self) -> None:
        """A delta that does not start at the version asked is refused,
        logged and counted; the link stays up."""
        mesh = MemoryMesh(self)
        add(mesh, "a", avatar_class=LyingDelta)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        add(mesh, "b")
        self.assertEqual(refusals(mesh, "b", "mismatch"), 1)
        self.assertTrue([e for e in logged if e.get("reason") == "mismatch" and e.get("peer") == "a"])
        self.assertTrue(mesh.nodes["b"].membership.peers["a"].link.up)
        self.assertEqual(mesh.nodes["b"].membership.peers["a"].sync.baseline, 0)

    def test_chunks_out_of_range_repeated_or_of_another_set(self) -> None:
        """Chunks out of range, repeated or of another version are refused
        (logged, counted) and an incomplete set is never applied; chunks in
        any order that complete the set are."""
        for script, reason in (
            ([("range", 3), ("range", 7)], "chunk_range"),
            ([("chunk", 1), ("chunk", 1)], "chunk_repeat"),
            ([("version", 41), ("chunk", 2)], "chunk_mismatch"),
        ):
            mesh = MemoryMesh(self)
            Chunks.script = list(script)
            add(mesh, "a", avatar_class=Chunks)
            logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
            add(mesh, "b")
            self.assertEqual(refusals(mesh, "b", reason), 1 if reason != "chunk_range" else 2, reason)
            self.assertEqual(refusals(mesh, "b", "incomplete"), 1, reason)
            self.assertTrue([e for e in logged if e.get("reason") == reason], reason)
            self.assertNotIn("ghost", mesh.nodes["b"].membership.peers, reason)
            self.assertTrue(mesh.nodes["b"].membership.peers["a"].link.up, reason)
        # In any order, complete: applied.
        mesh = MemoryMesh(self)
        Chunks.script = [("chunk", 2), ("chunk", 1)]
        add(mesh, "a", avatar_class=Chunks)
        add(mesh, "b")
        self.assertIn("ghost", mesh.nodes["b"].membership.peers)
        self.assertEqual(metric(mesh, "b", "fastedge_mesh_memberlist_full_lists_total", direction="received"), 1)

    def test_a_digest_that_never_converges(self) -> None:
        """A peer whose digest stays different though its deltas teach
        nothing is pulled from less and less often (the membership's one
        pull backoff, ``PullBackoff``: logged, counted)."""
        mesh = MemoryMesh(self)
        add(mesh, "a", avatar_class=Unconverging)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        add(mesh, "b")
        mesh.advance(2.0)
        before = metric(mesh, "a", "fastedge_mesh_calls_received_total", method="members_since")
        mesh.advance(20.0)
        pulls = metric(mesh, "a", "fastedge_mesh_calls_received_total", method="members_since") - before
        self.assertLessEqual(pulls, 4)
        self.assertGreaterEqual(metric(mesh, "b", "fastedge_mesh_digest_backoffs_total"), 1)
        self.assertEqual(len([e for e in logged if "still differs" in e.get("log_format", "")]), 1)
        self.assertEqual(mesh.states("b"), {"a": "alive", "b": "alive"})
