# -*- test-case-name: tests.unit.mesh.test_partialview -*-
"""Heartbeats that do not grow with the cluster: the partial view
(``docs/mesh.md``, "Past full_mesh_max_nodes: partial views").

Up to ``mesh.full_mesh_max_nodes`` nodes a node heartbeats every peer over
its own link (the full mesh, :mod:`fastedge.mesh.membership`). Past it,
each node heartbeats only its **view**: its ring neighbours (the nodes
next to it in the order of a hash of their ids, :data:`RING_AHEAD` after it
and :data:`RING_BEHIND` before it: every node is watched by the same five
nodes, whoever looks) and a few **extras** (``partial_view_size`` in all;
every :data:`ROTATE_HEARTBEATS` heartbeats (30 s) the extra with the longest round
trip is swapped for a random node, so extras drift to near peers and the
graph stays random). It keeps links only to its view, and to the peers a
feature asked for (``link_to`` opens them on demand).

What a node learns of the rest comes as **rumours** pushed along the view's
links at once (and forwarded once by each node): ``(announcement, state,
origin)``, where *origin* is the node whose own detector decided. A verdict
(DEAD or LEAVING) heard only second-hand starts a **suspicion** here
(Lifeguard): the node stays in DNS until the suspicion ends, after
:func:`lifeguard_wait` -- ``2 x heartbeat`` with one origin, shortened by
independent origins to ``heartbeat`` -- unless the suspect refutes it
first: a node that hears a rumour of its own death moves to a higher
incarnation (SWIM), which supersedes every rumour of the old one. One
peer's gossip, whatever origins it claims, thus never gets a healthy
node declared DEAD: the node hears it and refutes within the wait.

This module holds that logic; it does no I/O of its own and reads no
clock (``membership`` supplies both).
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.logger import Logger

from .messages import Announcement, BadMessage
from .nodemap import NodeState

if TYPE_CHECKING:
    from .interfaces import ILink
    from .membership import Membership, Peer

__all__ = [
    "PartialView",
    "PullBackoff",
    "Ring",
    "ViewMetrics",
    "lifeguard_dead_after",
    "lifeguard_wait",
    "check_rumours",
]

#: Ring neighbours a node heartbeats after itself, and before itself.
RING_AHEAD = 3
RING_BEHIND = 2
#: The smallest ``partial_view_size``: the ring neighbours and one extra.
MIN_VIEW = RING_AHEAD + RING_BEHIND + 1
#: One extra is swapped every this many heartbeats (30 s at the defaults: a
#: new link's login costs a TLS handshake and a member list).
ROTATE_HEARTBEATS = 60
#: Distinct origins kept (and forwarded) per rumour: enough to confirm.
MAX_ORIGINS = 3
#: Rumours in one ``gossip`` call, at most.
MAX_RUMOURS = 64
#: A rumour is remembered (not forwarded again) this many heartbeats.
REMEMBER_HEARTBEATS = 120

_VERDICTS = {NodeState.DEAD.value: NodeState.DEAD, NodeState.LEAVING.value: NodeState.LEAVING}
_ALIVE = NodeState.ALIVE.value

Rumour = tuple[Announcement, str, str]


@functools.lru_cache(maxsize=4096)
def ring_position(node_id: str) -> int:
    """Where ``node_id`` sits on the ring (a hash: neighbours are random
    with respect to regions and names, and every node computes the same)."""
    return int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:8], "big")


def lifeguard_wait(origins: int, heartbeat: float, expected: int = MAX_ORIGINS) -> float:
    """How long a rumoured verdict waits before it is taken (Lifeguard's
    suspicion timeout): ``2 x heartbeat`` with one origin, falling
    logarithmically with independent origins to ``heartbeat`` at
    ``expected`` of them."""
    longest, shortest = 2.0 * heartbeat, heartbeat
    if origins <= 1:
        return longest
    frac = math.log(min(origins, expected) + 1) / math.log(expected + 1)
    return max(shortest, longest - (longest - shortest) * frac)


def lifeguard_dead_after(confirmations: int, suspect: float, dead: float, heartbeat: float, expected: int) -> float:
    """The silence after which a suspect is DEAD when ``confirmations``
    distinct peers asked said they had not heard from it for ``suspect`` s
    either: ``dead`` with none, shortened logarithmically (as Lifeguard
    shortens its suspicion) to halfway between the second round of probes
    (``suspect + heartbeat``) and ``dead`` at ``expected`` (at least two)
    confirmations: the answers of the second round still come in before
    the verdict, and one peer alone never takes the whole shortening. A
    peer that still hears the suspect vouches for it, whatever the others
    say."""
    expected = max(expected, 2)
    second_round = min(suspect + heartbeat, dead)
    shortest = second_round + (dead - second_round) / 2.0
    if confirmations <= 0:
        return dead
    frac = math.log(min(confirmations, expected) + 1) / math.log(expected + 1)
    return max(shortest, dead - (dead - shortest) * frac)


def check_rumours(rumours: Any) -> list[Rumour]:
    """Validate a ``gossip`` call's argument.

    :raises BadMessage: not a list of at most :data:`MAX_RUMOURS`
        ``(Announcement, state, origin)``.
    """
    if not isinstance(rumours, (list, tuple)) or len(rumours) > MAX_RUMOURS:
        raise BadMessage("gossip must be a list of at most {} rumours".format(MAX_RUMOURS))
    out: list[Rumour] = []
    for item in rumours:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 3
            or not isinstance(item[0], Announcement)
            or (item[1] not in _VERDICTS and item[1] != _ALIVE)
            or not isinstance(item[2], str)
            or not 0 < len(item[2]) <= 253
        ):
            raise BadMessage("a rumour must be (announcement, alive|dead|leaving, origin)")
        out.append((item[0], item[1], item[2]))
    return out


class Ring:
    """The live nodes in ring order."""

    def __init__(self, node_ids: Iterable[str]) -> None:
        self.order = sorted(node_ids, key=lambda n: (ring_position(n), n))
        self.index = {n: i for i, n in enumerate(self.order)}

    def neighbours(self, node_id: str) -> list[str]:
        """The ring neighbours ``node_id`` heartbeats (nearest first)."""
        i = self.index.get(node_id)
        n = len(self.order)
        if i is None or n <= 1:
            return []
        out: list[str] = []
        for d in range(1, max(RING_AHEAD, RING_BEHIND) + 1):
            for j in ((i + d) % n if d <= RING_AHEAD else None, (i - d) % n if d <= RING_BEHIND else None):
                if j is not None and j != i and self.order[j] not in out:
                    out.append(self.order[j])
        return out

    def watches(self, watcher: str, node_id: str) -> bool:
        """Whether ``node_id`` is a ring neighbour ``watcher`` heartbeats."""
        i, j = self.index.get(watcher), self.index.get(node_id)
        if i is None or j is None or i == j:
            return False
        n = len(self.order)
        d = (j - i) % n
        return d <= RING_AHEAD or n - d <= RING_BEHIND


class PullBackoff:
    """Member-list pulls from a peer whose digest never agrees with ours: a
    flapping member (a node restarting or refuting over and over), a peer
    that answers a list that does not match its digest, or one that knows a
    node this one ignores (learned DEAD second-hand).

    Each pull that leaves the digests different doubles the wait before the
    next pull from that peer, from one heartbeat to ``longest`` while the
    peer keeps saying the same digest (nothing new to learn from it), and to
    ``news_cap`` (4 heartbeats) when it says a new one (news, such as a join,
    still spreads within seconds; a digest that changes all the time is
    pulled at most that often). A pull that makes them agree resets it. The
    first backoff of a run is logged, every one is counted
    (``fastedge_mesh_digest_backoffs_total``)."""

    _log = Logger()

    def __init__(self, heartbeat: float, metrics: ViewMetrics, longest: float = 30.0) -> None:
        self.heartbeat = heartbeat
        self.longest = longest
        self.news_cap = 4.0 * heartbeat
        self.metrics = metrics
        #: peer -> (consecutive pulls that did not converge, when the last
        #: ended, the digest it was pulled for).
        self._runs: dict[str, tuple[int, float, str]] = {}

    def may_pull(self, peer: str, now: float, digest: str = "") -> bool:
        """Whether a pull from ``peer``, which says ``digest``, is due."""
        run = self._runs.get(peer)
        if run is None:
            return True
        count, at, before = run
        wait = self.heartbeat * 2.0 ** (count - 1)
        return now - at >= min(wait, self.longest if digest == before else self.news_cap)

    def pulled(self, peer: str, now: float, converged: bool, digest: str = "") -> None:
        """A pull from ``peer`` (for its ``digest``) finished; ``converged``:
        the digests agree now."""
        if converged:
            self._runs.pop(peer, None)
            return
        count = self._runs.get(peer, (0, 0.0, ""))[0] + 1
        self._runs[peer] = (count, now, digest)
        if count >= 2:
            self.metrics.digest_backoffs.inc()
            if count == 2:
                self._log.warn(
                    "mesh: member digest still differs from {peer}'s after {count} pulls"
                    " (flapping members?); pulling less often until it agrees",
                    peer=peer,
                    count=count,
                )

    def forget(self, peer: str) -> None:
        """``peer`` is gone."""
        self._runs.pop(peer, None)


class ViewMetrics:
    """Metrics of the partial view (``fastedge_mesh_*``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.view_peers = Gauge(
            "fastedge_mesh_view_peers",
            "Peers this node heartbeats (its partial view past full_mesh_max_nodes; 0 in full-mesh mode).",
            registry=registry,
        )
        self.view_changes = Counter(
            "fastedge_mesh_view_changes_total",
            "Peers entering or leaving this node's partial view, by reason (ring, rotation, mode).",
            ["reason"],
            registry=registry,
        )
        self.rumours = Counter(
            "fastedge_mesh_rumours_total",
            "Membership rumours (piggybacked membership changes) by outcome (sent, new, duplicate, "
            "stale, about_self, forwarded, bad).",
            ["outcome"],
            registry=registry,
        )
        self.suspicions = Counter(
            "fastedge_mesh_suspicions_total",
            "Rumoured verdicts about other nodes, by outcome (started, confirmed: another origin agreed, "
            "taken: the wait ran out, refuted: a newer incarnation came first, contradicted: this node "
            "hears the suspect itself).",
            ["outcome"],
            registry=registry,
        )
        self.refutations = Counter(
            "fastedge_mesh_refutations_total",
            "Rumours of this node's own death or departure it refuted by moving to a higher incarnation.",
            registry=registry,
        )
        self.digest_backoffs = Counter(
            "fastedge_mesh_digest_backoffs_total",
            "Member-list pulls from a peer deferred because earlier pulls left the digests different "
            "(flapping members).",
            registry=registry,
        )
        self.lifeguard = Counter(
            "fastedge_mesh_lifeguard_confirmations_total",
            "Peers asked about a suspect that had not heard from it either (each shortens the wait for DEAD).",
            registry=registry,
        )


@dataclass
class Suspicion:
    """A rumoured verdict about one incarnation of a node, not taken yet."""

    incarnation: int
    verdict: NodeState
    started: float
    origins: set[str] = field(default_factory=set)
    via: set[str] = field(default_factory=set)


class PartialView:
    """The partial-view mode of one node's membership.

    :param membership: the node's membership (its peers, links and clock).
    :param size: ``mesh.partial_view_size``.
    :param full_mesh_max_nodes: ``mesh.full_mesh_max_nodes``; past it (the
        node and its live peers), the partial view is active; it turns off
        again at or below 90 % of it (so a cluster at the threshold does not
        switch back and forth).
    """

    _log = Logger()

    def __init__(
        self,
        membership: Membership,
        *,
        size: int,
        full_mesh_max_nodes: int,
        metrics: ViewMetrics,
        rng: random.Random,
    ) -> None:
        self.m = membership
        self.size = max(size, MIN_VIEW)
        self.threshold = full_mesh_max_nodes
        self.metrics = metrics
        self.rng = rng
        self.active = False
        self.view: set[str] = set()
        self.extras: list[str] = []
        self._ring: Ring | None = None
        self._last_rotation = float("-inf")
        self._last_pull = float("-inf")
        #: Peers a feature asked for a link to (kept outside the view).
        self._asked: set[str] = set()
        #: Bumped at every membership change; the view was computed at
        #: ``_view_version``.
        self._version = 0
        self._view_version = -1
        #: (node, incarnation, state) -> origins seen, and when first seen.
        self._seen: dict[tuple[str, int, str], tuple[set[str], float]] = {}
        self.suspicions: dict[str, Suspicion] = {}
        self.backoff = PullBackoff(membership.timing.heartbeat, metrics)
        #: Set while a rumour is being applied (its verdict is not ours).
        self._applying = False

    # Mode and view

    def _live_ids(self) -> list[str]:
        ids = [p.node_id for p in self.m.peers.values() if p.state not in (NodeState.DEAD, NodeState.LEAVING)]
        ids.append(self.m.me.node_id)
        return ids

    def members_changed(self) -> None:
        """A peer came, went or changed state: the ring is out of date."""
        self._ring = None
        self._version += 1

    def ring(self) -> Ring:
        """The ring of live nodes (kept until membership changes)."""
        if self._ring is None:
            self._ring = Ring(self._live_ids())
        return self._ring

    def update(self, now: float) -> None:
        """Switch mode when the cluster crosses the threshold; recompute the
        view (ring neighbours, extras, a rotation when due) and open links
        to new view members."""
        fresh_ring = self._view_version != self._version
        self._view_version = self._version
        live = len(self.ring().order)
        switched = False
        if not self.active and live > self.threshold:
            self._switch(True, live)
            fresh_ring = switched = True
        elif self.active and live <= self.threshold * 0.9:
            self._switch(False, live)
        if not self.active:
            return
        rotate = now - self._last_rotation >= ROTATE_HEARTBEATS * self.m.timing.heartbeat
        if not (fresh_ring or rotate or len(self.extras) < self.size - RING_AHEAD - RING_BEHIND):
            return
        ring = self.ring()
        me = self.m.me.node_id
        neighbours = ring.neighbours(me)
        alive = [p.node_id for p in self.m.peers.values() if p.state is NodeState.ALIVE and p.node_id not in neighbours]
        alive_set = set(alive)
        self.extras = [e for e in self.extras if e in alive_set]
        want = max(0, self.size - len(neighbours))
        if rotate and self.extras and len(alive) > len(self.extras):
            self._last_rotation = now
            slowest = max(self.extras, key=lambda e: (self.m.peers[e].rtt or 0.0, self.rng.random()))
            self.extras.remove(slowest)
            self.metrics.view_changes.labels("rotation").inc()
        spare = [n for n in alive if n not in self.extras]
        while len(self.extras) < want and spare:
            pick = spare.pop(self.rng.randrange(len(spare)))
            self.extras.append(pick)
        view = set(neighbours) | set(self.extras)
        if view != self.view:
            gone, new = self.view - view, view - self.view
            self.metrics.view_changes.labels("ring").inc(len(gone) + len(new))
            self._log.debug(
                "mesh: heartbeat view now {size} peers (+{new}, -{gone})",
                size=len(view),
                new=", ".join(sorted(new)),
                gone=", ".join(sorted(gone)),
            )
            self.view = view
            for node_id in new:
                peer = self.m.peers.get(node_id)
                if peer is not None:
                    peer.last_heard = max(peer.last_heard, now)
                    self.m.ensure_link(peer)
            # Links cost too: one to a peer that left the view (or, at the
            # switch, to any peer outside it) closes, unless a feature asked
            # for it (``link_to`` opens it again on demand).
            for node_id in gone if not switched else [p for p in self.m.peers if p not in view]:
                peer = self.m.peers.get(node_id)
                if peer is not None and peer.link is not None and node_id not in self._asked:
                    self.m._drop_link(peer)
        self.metrics.view_peers.set(len(self.view))

    def _switch(self, active: bool, live: int) -> None:
        self.active = active
        self.metrics.view_changes.labels("mode").inc()
        self._log.info(
            "mesh: {live} live nodes: {mode} (mesh.full_mesh_max_nodes = {threshold})",
            live=live,
            mode="heartbeating a partial view" if active else "back to the full mesh",
            threshold=self.threshold,
        )
        if not active:
            now = self.m._now()
            self.view = set()
            self.extras = []
            self.metrics.view_peers.set(0)
            for peer in self.m.peers.values():
                # Not heartbeated until now: their silence is not evidence.
                peer.last_heard = max(peer.last_heard, now)
                if peer.state not in (NodeState.DEAD, NodeState.LEAVING):
                    self.m.ensure_link(peer)

    def may_pull(self, node_id: str, now: float, digest: str = "") -> bool:
        """Whether a member-list pull from ``node_id`` (whose digest differs)
        is due: not while its pulls back off (:class:`PullBackoff`); past
        the threshold, at most one pull per heartbeat in all (the view's
        peers mostly say the same; a full list is large there)."""
        if not self.backoff.may_pull(node_id, now, digest):
            return False
        if not self.active:
            return True
        if now - self._last_pull < self.m.timing.heartbeat:
            return False
        self._last_pull = now
        return True

    def on_demand(self, peer: Peer) -> None:
        """A feature asked for a link to ``peer`` (``IMesh.link_to``): open
        it, and keep it when ``peer`` leaves the view."""
        self._asked.add(peer.node_id)
        self.m.ensure_link(peer)

    def watches(self, peer: Peer) -> bool:
        """Whether this node heartbeats ``peer`` and judges its silence."""
        return not self.active or peer.node_id in self.view

    def wants_link(self, node_id: str) -> bool:
        """Whether this node links to ``node_id`` of its own accord (a list
        that takes it past the threshold switches mode at once, so a node
        joining a large cluster never links to all of it)."""
        if not self.active and len(self.m.peers) + 1 > self.threshold:
            self.update(self.m._now())
        return not self.active or node_id in self.view

    def probe_candidates(self, suspect: Peer, candidates: list[Peer]) -> list[Peer]:
        """Prefer, among the peers that could be asked about ``suspect``,
        those that heartbeat it too (its other ring neighbours)."""
        if not self.active:
            return candidates
        ring = self.ring()
        watching = [p for p in candidates if ring.watches(p.node_id, suspect.node_id)]
        return watching or candidates

    # Rumours: sending

    def state_changed(self, peer: Peer, before: NodeState | None, after: NodeState) -> None:
        """A peer's state changed here: the ring may move; a verdict of this
        node's own detector is told to the view."""
        if after in (NodeState.DEAD, NodeState.LEAVING) or before in (NodeState.DEAD, NodeState.LEAVING, None):
            self.members_changed()
        if not self.active:
            return
        if after in (NodeState.DEAD, NodeState.LEAVING) and not self._applying:
            rumour = (peer.announcement, after.value, self.m.me.node_id)
            self._seen_origin(rumour, self.m._now())
            self.push([rumour], exclude=peer.node_id)
        elif before is NodeState.DEAD and after is NodeState.ALIVE and peer.link is not None and peer.link.up:
            # It was DEAD here and speaks again (a partition healed): tell it,
            # so that it refutes and the rest of the cluster takes it back.
            self._send(peer.link, [(peer.announcement, NodeState.DEAD.value, self.m.me.node_id)], peer.node_id)

    def refuted(self) -> None:
        """This node moved to a higher incarnation: tell the view."""
        if self.active:
            rumour = (self.m.me, _ALIVE, self.m.me.node_id)
            self._seen_origin(rumour, self.m._now())
            self.push([rumour])

    def push(self, rumours: Sequence[Rumour], exclude: str | None = None) -> None:
        """Send ``rumours`` over every up link to the view."""
        for node_id in self.view:
            if node_id == exclude:
                continue
            peer = self.m.peers.get(node_id)
            if peer is not None and peer.link is not None and peer.link.up:
                self._send(peer.link, rumours, node_id)

    def _send(self, link: ILink, rumours: Sequence[Rumour], node_id: str) -> None:
        self.metrics.rumours.labels("sent").inc(len(rumours))
        self.m.failures.watch(self.m._call(link, "gossip", list(rumours)), "gossip", node_id)

    # Rumours: receiving

    def _seen_origin(self, rumour: Rumour, now: float) -> bool:
        """Record ``rumour``'s origin; whether it is new (and to forward)."""
        a, state, origin = rumour
        key = (a.node_id, a.incarnation, state)
        entry = self._seen.get(key)
        if entry is None:
            self._seen[key] = ({origin}, now)
            return True
        origins = entry[0]
        if origin in origins or (state == _ALIVE or len(origins) >= MAX_ORIGINS):
            return False
        origins.add(origin)
        return True

    def received(self, rumours: Any, sender: str) -> None:
        """A ``gossip`` call from ``sender``.

        :raises BadMessage: malformed (the caller disconnects the peer).
        """
        checked = check_rumours(rumours)
        now = self.m._now()
        forward: list[Rumour] = []
        for rumour in checked:
            if not self._seen_origin(rumour, now):
                self.metrics.rumours.labels("duplicate").inc()
                continue
            self.metrics.rumours.labels("new").inc()
            self._log.debug(
                "mesh: rumour from {sender}: {node} {state} at incarnation {incarnation} (origin {origin})",
                sender=sender,
                node=rumour[0].node_id,
                state=rumour[1],
                incarnation=rumour[0].incarnation,
                origin=rumour[2],
            )
            forward.append(rumour)
            self._apply(rumour, sender, now)
        if forward and self.active:
            self.metrics.rumours.labels("forwarded").inc(len(forward))
            self.push(forward, exclude=sender)

    def _apply(self, rumour: Rumour, sender: str, now: float) -> None:
        a, state, origin = rumour
        m = self.m
        if a.node_id == m.me.node_id:
            if state in _VERDICTS and a.incarnation >= m.me.incarnation and not m.leaving:
                self.metrics.rumours.labels("about_self").inc()
                self.metrics.refutations.inc()
                self._log.warn(
                    "mesh: {origin} (via {sender}) says this node is {state} at incarnation {incarnation};" " refuting",
                    origin=origin,
                    sender=sender,
                    state=state,
                    incarnation=a.incarnation,
                )
                m.superseded(a.incarnation)
            return
        peer = m.peers.get(a.node_id)
        if state == _ALIVE:
            if peer is None or a.incarnation > peer.announcement.incarnation:
                self._applying = True
                try:
                    m._observe(a, direct=False, reported=NodeState.ALIVE)
                finally:
                    self._applying = False
                if peer is not None:
                    self._end(a.node_id, "refuted")
            elif (
                a.incarnation == peer.announcement.incarnation
                and peer.state is NodeState.SUSPECT
                and not self.watches(peer)
            ):
                peer.detector.reported_alive()
            return
        if peer is None or a.incarnation != peer.announcement.incarnation:
            self.metrics.rumours.labels("stale").inc()
            return
        if peer.state in (NodeState.DEAD, NodeState.LEAVING):
            return
        verdict = _VERDICTS[state]
        if verdict is NodeState.DEAD and self.watches(peer) and now - peer.last_heard < m.timing.suspect:
            # This node hears it itself: the rumour goes on (the suspect
            # hears it and refutes), but it is not taken here. (A goodbye
            # is taken even so: the node still talks while it drains.)
            self.metrics.suspicions.labels("contradicted").inc()
            return
        s = self.suspicions.get(a.node_id)
        if s is None or s.incarnation != a.incarnation:
            s = Suspicion(a.incarnation, verdict, now)
            self.suspicions[a.node_id] = s
            self.metrics.suspicions.labels("started").inc()
        elif origin not in s.origins:
            self.metrics.suspicions.labels("confirmed").inc()
            self._log.debug(
                "mesh: {origin} confirms {node} {state} ({count} origins)",
                origin=origin,
                node=a.node_id,
                state=state,
                count=len(s.origins) + 1,
            )
        if verdict is NodeState.LEAVING:
            s.verdict = verdict
        s.origins.add(origin)
        s.via.add(sender)
        self._maybe_take(a.node_id, s, now)

    def _maybe_take(self, node_id: str, s: Suspicion, now: float) -> None:
        if now - s.started < lifeguard_wait(len(s.origins), self.m.timing.heartbeat):
            return
        peer = self.m.peers.get(node_id)
        del self.suspicions[node_id]
        if peer is None or peer.announcement.incarnation != s.incarnation:
            return
        self.metrics.suspicions.labels("taken").inc()
        self._log.info(
            "mesh: {node} is {state} by rumour ({origins} origin(s): {names}; via {via})",
            node=node_id,
            state=s.verdict.value,
            origins=len(s.origins),
            names=", ".join(sorted(s.origins)),
            via=", ".join(sorted(s.via)),
        )
        self._applying = True
        try:
            if s.verdict is NodeState.LEAVING:
                peer.detector.goodbye()
                self.m._drop_link(peer)
            else:
                peer.detector.condemned()
        finally:
            self._applying = False

    def _end(self, node_id: str, outcome: str) -> None:
        if self.suspicions.pop(node_id, None) is not None:
            self.metrics.suspicions.labels(outcome).inc()

    def heard(self, peer: Peer) -> None:
        """Direct evidence of ``peer`` (it spoke to this node)."""
        s = self.suspicions.get(peer.node_id)
        if s is not None and s.verdict is NodeState.DEAD and self.watches(peer):
            self._end(peer.node_id, "contradicted")

    def tick(self, now: float) -> None:
        """Take the suspicions whose wait ran out; forget old rumours; keep
        the view up to date."""
        for node_id, s in list(self.suspicions.items()):
            self._maybe_take(node_id, s, now)
        self.update(now)
        if len(self._seen) > 0 and self.rng.random() < 0.1:
            horizon = now - REMEMBER_HEARTBEATS * self.m.timing.heartbeat
            self._seen = {k: v for k, v in self._seen.items() if v[1] >= horizon}

    def tick_peers(self) -> Iterable[Peer]:
        """The peers the detector looks at this tick: all of them in the full
        mesh; past it, those heartbeated and those with a link."""
        if not self.active:
            return list(self.m.peers.values())
        return [p for p in self.m.peers.values() if p.node_id in self.view or p.link is not None]
