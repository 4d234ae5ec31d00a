"""Bounded indirect probes (``mesh.indirect_probes``): a node that stops
hearing a peer asks a few others, chosen at random, not all of them."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import MeshConfig
from fastedge.testing.mesh import MemoryMesh

from .common import Watch, metric

T = TypeVar("T")

# The defaults: heartbeat 0.5 s, suspect 1.5 s, dead 2.5 s; the detector
# looks every heartbeat / 5.
TICK = 0.1


def cluster(testcase: SynchronousTestCase, names: str, **overrides: Any) -> MemoryMesh:
    mesh = MemoryMesh(testcase, **overrides)
    for name in names:
        mesh.add(name)
    mesh.advance(1.0)
    return mesh


def record_probes(mesh: MemoryMesh, observer: str) -> list[list[str]]:
    """The peers ``observer`` asks about a suspect, one list per round."""
    membership = mesh.nodes[observer].membership
    rounds: list[list[str]] = []
    probe = membership._probe
    call = membership._call

    def probing(suspect: Any) -> None:
        rounds.append([])
        probe(suspect)

    def calling(link: Any, method: str, *args: Any) -> Any:
        if method == "probe":
            rounds[-1].append(link.peer_id)
        return call(link, method, *args)

    membership._probe = probing
    membership._call = calling
    return rounds


def isolate(mesh: MemoryMesh, a: str, b: str) -> None:
    """Break the links between ``a`` and ``b`` (and keep them broken)."""
    mesh.network.block(mesh.host(a), mesh.host(b))
    mesh.network.cut(mesh.host(a), mesh.host(b))


class FirstInOrder:
    """A random source that always picks the first peers by name: the worst
    case for a node whose first peer lies."""

    def __init__(self) -> None:
        self.populations: list[list[str]] = []

    def sample(self, population: Sequence[T], k: int) -> list[T]:
        self.populations.append(sorted(p.node_id for p in population))  # type: ignore[attr-defined]
        return sorted(population, key=lambda p: p.node_id)[:k]  # type: ignore[attr-defined]


class BoundedProbeTests(SynchronousTestCase):
    def test_default(self) -> None:
        """Three peers are asked by default."""
        self.assertEqual(MeshConfig().indirect_probes, 3)

    def test_at_most_k_per_round_and_others_first(self) -> None:
        """With ``indirect_probes = 2`` and four other live peers, a node
        that loses its link to f asks two of them per round, and the next
        round the other two: each is asked once in two rounds."""
        mesh = cluster(self, "abcdef", indirect_probes=2)
        mesh.nodes["a"].membership.rng = random.Random(20)
        rounds = record_probes(mesh, "a")
        watch = Watch(mesh, "a", "f")
        isolate(mesh, "a", "f")
        mesh.advance(2.0)
        self.assertEqual(watch.states(), ["suspect"])
        self.assertGreaterEqual(len(rounds), 2)
        for asked in rounds:
            self.assertEqual(len(asked), 2)
            self.assertEqual(len(set(asked)), 2)
            self.assertNotIn("f", asked)
        self.assertEqual(sorted(rounds[0] + rounds[1]), ["b", "c", "d", "e"])
        # Vouched for by the peers asked: never DEAD.
        mesh.advance(10.0)
        self.assertEqual(watch.states(), ["suspect"])

    def test_choice_comes_from_the_random_source(self) -> None:
        """The peers asked are those the node's random source picks, among
        the other ALIVE peers with a link (not the suspect itself)."""
        mesh = cluster(self, "abcdef", indirect_probes=2)
        chooser = FirstInOrder()
        mesh.nodes["a"].membership.rng = chooser
        rounds = record_probes(mesh, "a")
        isolate(mesh, "a", "f")
        mesh.advance(2.0)
        self.assertEqual(chooser.populations[0], ["b", "c", "d", "e"])
        self.assertEqual(rounds[0], ["b", "c"])
        self.assertEqual(chooser.populations[1], ["d", "e"])
        self.assertEqual(rounds[1], ["d", "e"])

    def test_seeded_choices_repeat(self) -> None:
        """The same seed makes the same choices (tests can rely on it)."""
        choices = []
        for _ in range(2):
            mesh = cluster(self, "abcdef", indirect_probes=1)
            mesh.nodes["a"].membership.rng = random.Random(5)
            rounds = record_probes(mesh, "a")
            isolate(mesh, "a", "f")
            mesh.advance(3.0)
            choices.append(rounds[:4])
        self.assertEqual(choices[0], choices[1])

    def test_crash_dead_within_the_bound_with_few_probes(self) -> None:
        """A crashed node among six is DEAD on every other node within the
        dead timeout (plus a tick), each observer having asked at most k
        peers per round."""
        mesh = cluster(self, "abcdef", indirect_probes=2)
        observers = "abcde"
        watches = [Watch(mesh, o, "f") for o in observers]
        rounds = {o: record_probes(mesh, o) for o in observers}
        crashed = mesh.clock.seconds()
        mesh.crash("f")
        mesh.advance(4.0)
        for watch in watches:
            self.assertEqual(watch.states(), ["suspect", "dead"])
            self.assertLessEqual(watch.when("dead") - crashed, 2.5 + TICK + 1e-6)
        for o in observers:
            self.assertTrue(rounds[o])
            self.assertTrue(all(len(asked) <= 2 for asked in rounds[o]))

    def test_a_lying_peer_cannot_evict_a_healthy_node(self) -> None:
        """b answers every probe "never heard from it". a, whose links to c
        are broken, asks one peer per round, and its random source always
        prefers b: the round after, a asks d (not b again), which vouches
        for c, so c stays SUSPECT at a and ALIVE everywhere else."""
        mesh = cluster(self, "abcd", indirect_probes=1)
        mesh.nodes["b"].membership.probe_answer = lambda node_id, incarnation: None
        mesh.nodes["a"].membership.rng = FirstInOrder()
        rounds = record_probes(mesh, "a")
        watch = Watch(mesh, "a", "c")
        isolate(mesh, "a", "c")
        mesh.advance(20.0)
        self.assertEqual(watch.states(), ["suspect"])
        self.assertEqual(rounds[0], ["b"])
        self.assertEqual(rounds[1], ["d"])
        for observer in "bd":
            self.assertEqual(mesh.states(observer)["c"], "alive")

    def test_contradicted_answers_counted_and_logged_once(self) -> None:
        """The lying peer's answers, contradicted by d's vouch, are counted
        (``outcome="contradicted"``) and logged once per suspicion."""
        mesh = cluster(self, "abcd", indirect_probes=1)
        mesh.nodes["b"].membership.probe_answer = lambda node_id, incarnation: None
        mesh.nodes["a"].membership.rng = FirstInOrder()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        isolate(mesh, "a", "c")
        mesh.advance(10.0)
        contradicted = metric(mesh, "a", "fastedge_mesh_indirect_probes_total", outcome="contradicted")
        self.assertGreaterEqual(contradicted, 2)
        # (c, which lost its links to a too, logs the same of a.)
        lines = [e for e in logged if "had not heard from" in e.get("log_format", "") and e["node"] == "c"]
        self.assertEqual([(e["deniers"], e["voucher"]) for e in lines], [("b", "d")])


class LifeguardTests(SynchronousTestCase):
    def test_confirmations_shorten_the_wait(self) -> None:
        """Peers asked about a crashed node that have not heard from it for
        the suspect timeout either are confirmations (counted): with three
        of them DEAD comes 2.25 s after anyone last heard from it, not
        2.5 s (Lifeguard)."""
        mesh = cluster(self, "abcdef")
        observers = "abcde"
        watches = [Watch(mesh, o, "f") for o in observers]
        mesh.crash("f")
        heard = max(mesh.nodes[o].membership.peers["f"].last_heard for o in observers)
        mesh.advance(4.0)
        for watch in watches:
            self.assertEqual(watch.states(), ["suspect", "dead"])
            self.assertLessEqual(watch.when("dead") - heard, 2.25 + TICK + 1e-6)
        confirmations = sum(metric(mesh, o, "fastedge_mesh_lifeguard_confirmations_total") for o in observers)
        self.assertGreaterEqual(confirmations, 3 * len(observers))
