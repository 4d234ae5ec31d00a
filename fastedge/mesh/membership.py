# -*- test-case-name: tests.unit.mesh.test_membership -*-
"""Membership: who is in the mesh, and which of them are alive.

The protocol (``docs/mesh.md`` has the whole design):

- **Joining.** A node logs in to every peer it knows over its own outgoing
  link (:class:`~fastedge.mesh.peer.Link`), starting from the configured
  seeds. The answer to a login is the peer's announcement and its member
  list, so one reachable seed is enough to learn everyone; the node then
  connects to every node it learned of (a full mesh).
- **News.** Every heartbeat carries a digest of the (node, incarnation)
  pairs the sender knows; a peer whose digest differs pulls the member list.
  A node learned of second-hand is SUSPECT until this node hears from it
  itself.
- **Failure detection.** Every ``heartbeat_seconds`` a node pings each peer
  over its link and records the round trip. Any message from a peer (a
  ping, an answer, any call) is "hearing from" it. A peer not heard from
  for ``suspect_seconds`` is SUSPECT, and every other live peer is asked
  when *it* last heard from it (an indirect probe); a peer that neither
  this node nor any other has heard from for ``dead_seconds`` is DEAD. A
  suspect that another peer still hears from stays SUSPECT (a broken link
  does not evict a healthy node). Only local durations are compared:
  answers say "seconds ago", never a timestamp, so clock skew between nodes
  does not matter, and local time is monotonic.
- **Incarnations.** A node's incarnation grows every time it starts; an
  announcement with a higher incarnation supersedes everything known of
  the node. A node that hears of itself with an incarnation at least its
  own (a previous life with a lost data directory) moves above it.
- **Leaving.** A node that stops cleanly tells every peer, which marks it
  LEAVING at once and stops connecting to it.

This module holds the decisions; it does no I/O and reads no clock of its
own (``monotonic`` is given). Links and sessions are the network side.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from automat import MethodicalMachine
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .interfaces import ILink
from .memberlist import MemberSync, MemberTable, PeerSync
from .messages import Announcement, BadMessage, Refused
from .metrics import MeshMetrics
from .nodemap import NodeInfo, NodeMap, NodeState
from .partialview import PartialView, lifeguard_dead_after
from .unanswered import CallFailures

__all__ = ["Membership", "Peer", "PeerDetector", "Timing", "member_digest"]

_STATES = {s.value: s for s in NodeState}


def member_digest(known: Iterable[tuple[str, int]]) -> str:
    """The digest of a member list: a short hash of its (node, incarnation)
    pairs in order. The wire format heartbeats carry (every version of the
    node computes it the same way, so a mixed cluster agrees)."""
    text = ";".join("{}:{}".format(n, i) for n, i in sorted(known))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Timing:
    """The failure detector's settings (``[mesh]`` in the config)."""

    heartbeat: float = 0.5
    suspect: float = 1.5
    dead: float = 2.5
    forget_dead: float = 3600.0
    #: Peers asked about a suspect per round (0: every peer).
    indirect_probes: int = 3
    #: Past this many live nodes, heartbeat a partial view (partialview.py).
    full_mesh_max_nodes: int = 64
    partial_view_size: int = 8


class PeerDetector:
    """What this node believes of one incarnation of one peer.

    A small state machine (automat): ``new`` until the first evidence, then
    ``alive``, ``suspect``, ``dead`` or ``leaving``. Inputs are evidence
    (``heard``), silence (``silent``: past the suspect timeout; and
    ``unconfirmed``: past the dead timeout with nobody vouching) and a
    goodbye; outputs write the node map and start indirect probes.
    """

    _machine = MethodicalMachine()

    def __init__(self, peer: Peer, membership: Membership) -> None:
        self._peer = peer
        self._membership = membership
        #: ``None`` until the first verdict.
        self.state: NodeState | None = None

    @_machine.state(initial=True)
    def new(self) -> None:
        "Just learned of; no verdict yet."

    @_machine.state()
    def alive(self) -> None:
        "Heard from recently."

    @_machine.state()
    def suspect(self) -> None:
        "Silent past the suspect timeout (or known only second-hand)."

    @_machine.state()
    def dead(self) -> None:
        "Nobody has heard from it for the dead timeout."

    @_machine.state()
    def leaving(self) -> None:
        "Said goodbye; final for this incarnation."

    @_machine.input()
    def contacted(self) -> None:
        "First evidence comes from the peer itself."

    @_machine.input()
    def reported(self) -> None:
        "First news comes from another node."

    @_machine.input()
    def heard(self) -> None:
        "A message from the peer itself."

    @_machine.input()
    def silent(self) -> None:
        "Not heard from directly for the suspect timeout (repeated while it lasts)."

    @_machine.input()
    def unconfirmed(self) -> None:
        "Nobody heard from it for the dead timeout."

    @_machine.input()
    def goodbye(self) -> None:
        "It is leaving cleanly."

    @_machine.input()
    def reported_alive(self) -> None:
        "Past the full mesh: another node says it is alive (it is not heartbeated here)."

    @_machine.input()
    def condemned(self) -> None:
        "Past the full mesh: a rumoured death, confirmed or not refuted in time."

    @_machine.output()
    def _now_alive(self) -> None:
        self._set(NodeState.ALIVE)

    @_machine.output()
    def _now_suspect(self) -> None:
        self._set(NodeState.SUSPECT)

    @_machine.output()
    def _now_dead(self) -> None:
        self._set(NodeState.DEAD)

    @_machine.output()
    def _now_leaving(self) -> None:
        self._set(NodeState.LEAVING)

    @_machine.output()
    def _probe(self) -> None:
        self._membership._probe(self._peer)

    def _set(self, state: NodeState) -> None:
        before = self.state
        self.state = state
        self._membership._state_changed(self._peer, before, state)

    new.upon(contacted, enter=alive, outputs=[_now_alive])
    new.upon(reported, enter=suspect, outputs=[_now_suspect])
    new.upon(heard, enter=alive, outputs=[_now_alive])
    new.upon(silent, enter=suspect, outputs=[_now_suspect, _probe])
    new.upon(unconfirmed, enter=dead, outputs=[_now_dead])
    new.upon(goodbye, enter=leaving, outputs=[_now_leaving])
    new.upon(reported_alive, enter=alive, outputs=[_now_alive])
    new.upon(condemned, enter=dead, outputs=[_now_dead])

    alive.upon(contacted, enter=alive, outputs=[])
    alive.upon(reported, enter=alive, outputs=[])
    alive.upon(heard, enter=alive, outputs=[])
    alive.upon(silent, enter=suspect, outputs=[_now_suspect, _probe])
    alive.upon(unconfirmed, enter=suspect, outputs=[_now_suspect, _probe])
    alive.upon(goodbye, enter=leaving, outputs=[_now_leaving])
    alive.upon(reported_alive, enter=alive, outputs=[])
    alive.upon(condemned, enter=dead, outputs=[_now_dead])

    suspect.upon(contacted, enter=alive, outputs=[_now_alive])
    suspect.upon(reported, enter=suspect, outputs=[])
    suspect.upon(heard, enter=alive, outputs=[_now_alive])
    suspect.upon(silent, enter=suspect, outputs=[_probe])
    suspect.upon(unconfirmed, enter=dead, outputs=[_now_dead])
    suspect.upon(goodbye, enter=leaving, outputs=[_now_leaving])
    suspect.upon(reported_alive, enter=alive, outputs=[_now_alive])
    suspect.upon(condemned, enter=dead, outputs=[_now_dead])

    dead.upon(contacted, enter=alive, outputs=[_now_alive])
    dead.upon(reported, enter=dead, outputs=[])
    dead.upon(heard, enter=alive, outputs=[_now_alive])
    dead.upon(silent, enter=dead, outputs=[])
    dead.upon(unconfirmed, enter=dead, outputs=[])
    dead.upon(goodbye, enter=leaving, outputs=[_now_leaving])
    dead.upon(reported_alive, enter=dead, outputs=[])
    dead.upon(condemned, enter=dead, outputs=[])

    for _input in (contacted, reported, heard, silent, unconfirmed, goodbye, reported_alive, condemned):
        leaving.upon(_input, enter=leaving, outputs=[])
    del _input


@dataclass(eq=False)
class Peer:
    """Everything this node keeps about another node.

    Times are this node's monotonic seconds.

    :ivar last_heard: the last message from the peer itself.
    :ivar vouched: the latest time another peer said it heard from it.
    """

    announcement: Announcement
    detector: PeerDetector = field(init=False)
    last_heard: float = 0.0
    vouched: float = float("-inf")
    last_probe: float = float("-inf")
    #: Peers asked about this one since it was last ALIVE (each round asks
    #: others first, so one peer cannot be the only one asked twice).
    asked: set[str] = field(default_factory=set)
    #: Peers that said they had not heard from it lately, since it was last
    #: ALIVE (a later vouch contradicts them: counted, logged once).
    denied: set[str] = field(default_factory=set)
    #: Peers asked that had not heard from it for the suspect timeout
    #: either, since it was last ALIVE (each shortens the wait: Lifeguard).
    confirmed: set[str] = field(default_factory=set)
    contradicted: bool = False
    rtt: float | None = None
    link: ILink | None = None
    sessions: set[Any] = field(default_factory=set)
    ping_nonce: int = 0
    ping_sent: float | None = None
    last_ping: float = float("-inf")
    last_pull: float = float("-inf")
    dead_since: float | None = None
    #: What this node holds of the peer's member table (``memberlist``).
    sync: PeerSync = field(default_factory=PeerSync)

    @property
    def node_id(self) -> str:
        """The peer's node id."""
        return self.announcement.node_id

    @property
    def state(self) -> NodeState:
        """What this node believes of it (SUSPECT before any verdict)."""
        return self.detector.state or NodeState.SUSPECT


def node_info(announcement: Announcement, state: NodeState) -> NodeInfo:
    """The node map's view of an announcement."""
    a = announcement
    return NodeInfo(
        node_id=a.node_id,
        deployment=a.deployment,
        region=a.region,
        latitude=a.latitude,
        longitude=a.longitude,
        addresses=tuple(a.addresses),
        version=a.version,
        incarnation=a.incarnation,
        load=a.load,
        state=state,
    )


Connect = Callable[["str | None", str, int], ILink]


class Membership:
    """The membership protocol of one node.

    :param me: this node's announcement (its incarnation already bumped for
        this start).
    :param connect: starts a link to ``(peer id or None, host, port)``.
    :param monotonic: this node's monotonic clock (seconds).
    :param save_incarnation: persists a new incarnation (after refuting).
    :param rng: chooses the peers asked about a suspect (seeded in tests).
    """

    _log = Logger()

    def __init__(
        self,
        *,
        me: Announcement,
        node_map: NodeMap,
        timing: Timing,
        monotonic: Callable[[], float],
        metrics: MeshMetrics,
        connect: Connect,
        seeds: Sequence[tuple[str, int]] = (),
        save_incarnation: Callable[[int], None] = lambda n: None,
        rng: random.Random | None = None,
    ) -> None:
        self.me = me
        self.node_map = node_map
        self.timing = timing
        self._now = monotonic
        self.metrics = metrics
        self._connect = connect
        self._seeds = [s for s in seeds if s != (me.mesh_host, me.mesh_port)]
        self._save_incarnation = save_incarnation
        #: Chooses the peers asked about a suspect (replace to seed it).
        self.rng = rng if rng is not None else random.Random()
        self.peers: dict[str, Peer] = {}
        #: :meth:`digest`, kept until the (node, incarnation) pairs change.
        self._digest: str | None = None
        self.seed_links: list[ILink] = []
        self.leaving = False
        self.started = False
        #: Called with every logged-in session or link going up/down, for
        #: the handlers registered with the mesh (``fastedge.mesh.handler``).
        self.on_link_up: list[Callable[[Peer, ILink], None]] = []
        self.on_peer_gone: list[Callable[[Peer], None]] = []
        self._pending = 0
        self._idle_waiters: list[Deferred[None]] = []
        #: Waiting for the goodbyes once :meth:`announce_leaving` said them.
        self._goodbyes: list[Deferred[Any]] | None = None
        #: Every peer answered (or timed out) the goodbyes.
        self.goodbyes_said = False
        #: Where the failures of calls nobody waits for go (logged, counted).
        self.failures = CallFailures(metrics, monotonic)
        #: Every member's record, versioned: what peers' pulls are answered
        #: from (deltas since a version, full lists in chunks).
        self.table = MemberTable()
        self.member_sync = MemberSync(
            table=self.table,
            metrics=metrics.memberlist,
            call=self._call,
            merge=self.merge,
            digest=self.digest,
            pairs=self._pairs,
            failures=self.failures,
            states_matter=lambda: self.view.active,
        )
        #: Past ``timing.full_mesh_max_nodes``: heartbeat a partial view.
        self.view = PartialView(
            self,
            size=timing.partial_view_size,
            full_mesh_max_nodes=timing.full_mesh_max_nodes,
            metrics=metrics.view,
            rng=self.rng,
        )

    # Life

    def start(self) -> None:
        """Put this node in its map and start connecting to the seeds."""
        self.started = True
        self.node_map.upsert(node_info(self.me, NodeState.ALIVE))
        self.table.put(self.me, NodeState.ALIVE.value)
        self._start_seed_links()

    def _start_seed_links(self) -> None:
        for host, port in self._seeds:
            self.seed_links.append(self._connect(None, host, port))

    def announce_leaving(self, timeout_call: Callable[[Deferred[Any]], Deferred[Any]]) -> Deferred[Any]:
        """Tell every peer this node leaves (they mark it LEAVING and DNS
        withdraws it at once), keeping the links up: a draining node still
        finishes its work (``docs/admin.md``, "Draining a node"). Only the
        first call says goodbye; later ones wait for the same answers.

        :param timeout_call: bounds each goodbye (the service adds a timeout).
        :returns: fires once every peer answered (or timed out).
        """
        if self._goodbyes is not None:
            if self.goodbyes_said:
                return succeed(None)
            waiting: Deferred[Any] = Deferred()
            self._goodbyes.append(waiting)
            return waiting
        self.leaving = True
        self.node_map.upsert(node_info(self.me, NodeState.LEAVING))
        self.table.put(self.me, NodeState.LEAVING.value)
        goodbyes = []
        for peer in self.peers.values():
            if peer.link is not None and peer.link.up and peer.state is not NodeState.LEAVING:
                goodbyes.append(
                    self.failures.watch(timeout_call(self._call(peer.link, "leave")), "leave", peer.node_id)
                )
        waiters: list[Deferred[Any]] = []
        self._goodbyes = waiters

        def said(_: object) -> None:
            self.goodbyes_said = True
            for d in waiters:
                d.callback(None)
            waiters.clear()

        DeferredList(goodbyes).addCallback(said)
        done: Deferred[Any] = Deferred()
        waiters.append(done)
        if not goodbyes:
            said(None)
        return done

    def leave(self, timeout_call: Callable[[Deferred[Any]], Deferred[Any]]) -> Deferred[Any]:
        """Tell every peer this node leaves (unless :meth:`announce_leaving`
        did), then stop every link.

        :param timeout_call: bounds each goodbye (the service adds a timeout).
        :returns: fires once every link is closed.
        """
        d = self.announce_leaving(timeout_call)

        def stop_links(_: object) -> Deferred[Any]:
            links = [p.link for p in self.peers.values() if p.link is not None] + self.seed_links
            self.seed_links = []
            for peer in self.peers.values():
                peer.link = None
            return DeferredList([link.stop() for link in links])

        d.addCallback(stop_links)
        return d

    # Counting work in flight (a quiet node is one with no call awaiting an
    # answer and no link logging in: integration tests wait for it)

    def busy(self, delta: int) -> None:
        """Count work starting (+1) or finishing (-1)."""
        self._pending += delta
        if self._pending == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def when_idle(self) -> Deferred[None]:
        """Fires once nothing is in flight (at once if nothing is)."""
        if self._pending == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def _call(self, link: ILink, method: str, *args: Any) -> Deferred[Any]:
        self.busy(1)
        d = link.call(method, *args)

        def done(result: object) -> object:
            self.busy(-1)
            return result

        d.addBoth(done)
        return d

    # What this node tells others

    def digest(self) -> str:
        """A short hash of every (node, incarnation) this node knows.

        Kept from one change of those pairs to the next (a peer added, a new
        incarnation of a peer or of this node: :meth:`_members_changed`), so
        heartbeats, which compare it several times per exchange, do not
        recompute it over the whole member list."""
        if self._digest is None:
            self._digest = member_digest(self._pairs())
        return self._digest

    def _pairs(self) -> list[tuple[str, int]]:
        """Every (node, incarnation) this node knows, itself included."""
        known = [(p.node_id, p.announcement.incarnation) for p in self.peers.values()]
        known.append((self.me.node_id, self.me.incarnation))
        return known

    def _members_changed(self) -> None:
        """The (node, incarnation) pairs changed: the digest is out of date."""
        self._digest = None
        self.view.members_changed()

    def ensure_link(self, peer: Peer) -> None:
        """Start a link to ``peer`` unless there is one (a partial view's new
        member, or a feature's ``link_to``: links open on demand)."""
        if peer.link is None and not self.leaving and peer.state not in (NodeState.DEAD, NodeState.LEAVING):
            a = peer.announcement
            peer.link = self._connect(a.node_id, a.mesh_host, a.mesh_port)

    def members(self) -> list[tuple[Announcement, str]]:
        """Every node this node knows, itself included, with its state here."""
        out = [(self.me, (NodeState.LEAVING if self.leaving else NodeState.ALIVE).value)]
        out.extend((p.announcement, p.state.value) for p in self.peers.values())
        return out

    def members_since(self, peer_id: str, incarnation: int, since: int, digest: str, have: Any) -> tuple[Any, ...]:
        """A peer's pull (``memberlist``): the changes since version
        ``since`` of this node's incarnation ``incarnation``, or what it
        lacks, or the first chunk of the full list.

        :raises BadMessage: ``have`` is malformed.
        """
        return self.member_sync.answer_since(
            peer_id,
            incarnation=self.me.incarnation,
            asked_incarnation=incarnation,
            since=since,
            digest=digest,
            have=have,
        )

    def members_chunk(self, incarnation: int, version: int, index: int) -> tuple[Any, ...] | None:
        """Chunk ``index`` of the full list at ``version`` (``None``: no
        longer kept, or of another incarnation of this node)."""
        if incarnation != self.me.incarnation:
            return None
        return self.member_sync.answer_chunk(incarnation, version, index)

    def probe_answer(self, node_id: str, incarnation: int) -> float | None:
        """How many seconds ago this node last heard from that incarnation of
        ``node_id`` itself (``None``: never, or it is gone)."""
        peer = self.peers.get(node_id)
        if peer is None or peer.announcement.incarnation != incarnation:
            return None
        if peer.state in (
            NodeState.LEAVING,
            NodeState.DEAD,
        ) or peer.last_heard == float("-inf"):
            return None
        return max(0.0, self._now() - peer.last_heard)

    def set_load(self, load: int) -> None:
        """This node's current load, announced in heartbeats."""
        if load != self.me.load:
            self.me = self.me.replace(load=load)
            if not self.leaving:
                self.node_map.upsert(node_info(self.me, NodeState.ALIVE))

    # Evidence and news

    def joined(self, announcement: Announcement, session: Any) -> tuple[Announcement, list[tuple[Announcement, str]]]:
        """A peer logged in to this node (its link to us).

        :returns: this node's announcement and member list.
        :raises Refused: the peer is this node, a superseded incarnation, or
            an incarnation that already left.
        """
        node_id = announcement.node_id
        if self.leaving:
            raise Refused("leaving: this node is stopping")
        if node_id == self.me.node_id:
            self.metrics.refused.labels("self").inc()
            raise Refused("self: {} is this node's own id".format(node_id))
        peer = self.peers.get(node_id)
        if peer is not None:
            if announcement.incarnation < peer.announcement.incarnation:
                self.metrics.refused.labels("stale").inc()
                raise Refused(
                    "stale: incarnation {} of {} is superseded [incarnation={}]".format(
                        announcement.incarnation, node_id, peer.announcement.incarnation
                    )
                )
            if announcement.incarnation == peer.announcement.incarnation and peer.state is NodeState.LEAVING:
                self.metrics.refused.labels("leaving").inc()
                raise Refused(
                    "left: incarnation {} of {} has left [incarnation={}]".format(
                        announcement.incarnation, node_id, announcement.incarnation
                    )
                )
        peer = self._observe(announcement, direct=True)
        assert peer is not None
        peer.sessions.add(session)
        # No member list: the newcomer asks for what it lacks right after
        # (members_since); a node of the previous version, which does not,
        # pulls the full list at its first heartbeat, its digest differing.
        return self.me, []

    def session_closed(self, session: Any) -> None:
        """A peer's session (its link to us) closed."""
        for peer in self.peers.values():
            peer.sessions.discard(session)

    def current(self, node_id: str, incarnation: int) -> Peer | None:
        """The peer, if ``incarnation`` is its current one."""
        peer = self.peers.get(node_id)
        if peer is None or peer.announcement.incarnation != incarnation:
            return None
        return peer

    def heard_from(self, node_id: str, incarnation: int) -> Peer | None:
        """A message came from the peer itself (for this incarnation).

        :returns: the peer, or ``None`` when the message is from a
            superseded incarnation and must be ignored (a peer that said it
            leaves is returned, and stays LEAVING).
        """
        peer = self.current(node_id, incarnation)
        if peer is None:
            return None
        if peer.state is NodeState.LEAVING:
            # A node that announced it leaves (a drain) still finishes its
            # work until it closes its links: its last writes must reach
            # their sequencer. It stays LEAVING (never alive again).
            return peer
        peer.last_heard = self._now()
        peer.dead_since = None
        peer.detector.heard()
        self.view.heard(peer)
        return peer

    def announced(self, node_id: str, announcement: Announcement) -> None:
        """A peer's new announcement of itself (e.g. a higher incarnation).

        :raises Refused: the announcement is of another node.
        """
        if announcement.node_id != node_id:
            raise Refused("a node may only announce itself")
        self._observe(announcement, direct=True)

    def link_up(self, link: ILink, announcement: Announcement, members: Sequence[Any]) -> None:
        """One of this node's links logged in to the peer ``announcement``
        describes (its certificate was checked already)."""
        node_id = announcement.node_id
        if link in self.seed_links:
            self.seed_links.remove(link)
            peer = self.peers.get(node_id)
            if node_id == self.me.node_id or (
                peer is not None and peer.link is not None and peer.announcement.incarnation >= announcement.incarnation
            ):
                # A seed that is this node, or a node we already have a link to.
                link.stop()
                self.merge(members)
                return
            link.adopt(node_id)
            self._observe(announcement, direct=True, via=link)
        else:
            self._observe(announcement, direct=True, via=link)
        self.merge(members)
        peer = self.current(node_id, announcement.incarnation)
        if peer is not None and peer.link is link:
            self._login_sync(peer, link, members)
            for callback in list(self.on_link_up):
                callback(peer, link)

    def _login_sync(self, peer: Peer, link: ILink, members: Sequence[Any]) -> None:
        """Just logged in to ``peer``: ask it for what this node lacks
        (``members_since``), unless it answered the login with its member
        list, as only nodes of the previous version do (they know no deltas)."""
        if members:
            peer.sync.legacy = True
        elif not self.leaving:
            peer.last_pull = self._now()
            self._pull(peer, link)

    def link_down(self, link: ILink) -> None:
        """A link lost its connection (it reconnects by itself)."""
        for peer in self.peers.values():
            if peer.link is link:
                peer.ping_sent = None

    def left(self, node_id: str, incarnation: int) -> None:
        """The peer says it is stopping: withdraw it at once."""
        peer = self.current(node_id, incarnation)
        if peer is None:
            return
        peer.detector.goodbye()
        self._drop_link(peer)

    def merge(self, members: Any) -> None:
        """Take in another node's member list.

        :raises BadMessage: the list is malformed (the caller disconnects).
        """
        if not isinstance(members, (list, tuple)) or len(members) > 10_000:
            raise BadMessage("a member list must be a list of at most 10000 entries")
        for item in members:
            if (
                not isinstance(item, (list, tuple))
                or len(item) != 2
                or not isinstance(item[0], Announcement)
                or item[1] not in _STATES
            ):
                raise BadMessage("a member must be (announcement, state)")
        for announcement, state in members:
            if announcement.node_id == self.me.node_id:
                self._refute(announcement)
                continue
            self._observe(announcement, direct=False, reported=_STATES[state])

    def superseded(self, incarnation: int) -> None:
        """A peer refused this node's login: it knows a life of this node at
        ``incarnation`` that is newer or has left. Move above it."""
        if incarnation >= self.me.incarnation:
            self._refute(self.me.replace(incarnation=incarnation, mesh_port=0))

    def retry_cap(self, peer_id: str | None) -> float | None:
        """The longest wait between reconnects to ``peer_id``: a heartbeat
        while it may be alive (a link that flaps comes back before the peer
        looks suspect), the configured backoff once it is DEAD."""
        peer = self.peers.get(peer_id) if peer_id is not None else None
        if peer is not None and peer.state in (NodeState.DEAD, NodeState.LEAVING):
            return None
        return self.timing.heartbeat

    def _refute(self, news: Announcement) -> None:
        """News of this node itself: a previous life at least as recent as
        this one must be superseded."""
        mine = self.me
        same_life = news.incarnation == mine.incarnation and news.replace(load=0) == mine.replace(load=0)
        if news.incarnation < mine.incarnation or same_life:
            return
        incarnation = news.incarnation + 1
        self._log.warn(
            "mesh: peers know this node as incarnation {theirs}; moving to {incarnation}",
            theirs=news.incarnation,
            incarnation=incarnation,
        )
        self.me = mine.replace(incarnation=incarnation)
        self._members_changed()
        self.table.put(self.me, (NodeState.LEAVING if self.leaving else NodeState.ALIVE).value)
        self._save_incarnation(incarnation)
        if not self.leaving:
            self.node_map.upsert(node_info(self.me, NodeState.ALIVE))
        for peer in self.peers.values():
            if peer.link is not None and peer.link.up:
                self.failures.watch(self._call(peer.link, "announce", self.me), "announce", peer.node_id)
        self.view.refuted()

    def _observe(
        self,
        announcement: Announcement,
        *,
        direct: bool,
        reported: NodeState | None = None,
        via: ILink | None = None,
    ) -> Peer | None:
        """Record an announcement (from the node itself when ``direct``)."""
        node_id = announcement.node_id
        peer = self.peers.get(node_id)
        now = self._now()
        if peer is None or announcement.incarnation > peer.announcement.incarnation:
            if not direct and reported in (NodeState.DEAD, NodeState.LEAVING):
                return peer
            old_link = None
            if peer is not None:
                old_link = peer.link
                self._log.info(
                    "mesh: {node} restarted (incarnation {old} -> {new})",
                    node=node_id,
                    old=peer.announcement.incarnation,
                    new=announcement.incarnation,
                )
                for callback in list(self.on_peer_gone):
                    callback(peer)
            else:
                self._log.info(
                    "mesh: learned of {node} ({deployment}, incarnation {incarnation}) {how}",
                    node=node_id,
                    deployment=announcement.deployment,
                    incarnation=announcement.incarnation,
                    how="from itself" if direct else "from a peer",
                )
            fresh = Peer(announcement)
            fresh.detector = PeerDetector(fresh, self)
            fresh.last_heard = now
            if peer is not None:
                fresh.sessions = peer.sessions
            self.peers[node_id] = fresh
            self._members_changed()
            if direct:
                fresh.detector.contacted()
            elif self.view.active and reported in (NodeState.ALIVE, NodeState.SUSPECT):
                # Past the full mesh most peers are never heartbeated here:
                # a live peer's word is what this node goes by.
                fresh.detector.reported_alive()
            else:
                fresh.detector.reported()
            # A restarted node may listen elsewhere: link to its new address
            # (the link it came in through, if it is ours, is the new one).
            if via is not None:
                fresh.link = via
                if old_link is not None and old_link is not via:
                    old_link.stop()
            else:
                if old_link is not None:
                    old_link.stop()
                if self.view.wants_link(node_id):
                    self.ensure_link(fresh)
            return fresh
        if announcement.incarnation < peer.announcement.incarnation:
            return peer
        if not direct and reported is NodeState.ALIVE and peer.state is NodeState.SUSPECT:
            if self.view.active and not self.view.watches(peer):
                peer.detector.reported_alive()
        if direct:
            if peer.state is NodeState.LEAVING:
                return peer
            if via is not None and peer.link is not via:
                if peer.link is not None:
                    peer.link.stop()
                peer.link = via
            if announcement != peer.announcement:
                before = peer.announcement
                peer.announcement = announcement
                self.node_map.upsert(node_info(announcement, peer.state))
                self.table.put(announcement, peer.state.value)
                moved = (before.mesh_host, before.mesh_port) != (announcement.mesh_host, announcement.mesh_port)
                if moved and via is None and peer.link is not None and not self.leaving:
                    # The same life at another address (its incarnation
                    # file was lost): link to where it is now.
                    peer.link.stop()
                    peer.link = self._connect(node_id, announcement.mesh_host, announcement.mesh_port)
            peer.last_heard = now
            peer.dead_since = None
            peer.detector.heard()
            if peer.link is None and self.view.wants_link(node_id):
                self.ensure_link(peer)
        return peer

    def _state_changed(self, peer: Peer, before: NodeState | None, after: NodeState) -> None:
        if self.peers.get(peer.node_id) is not peer:
            return
        self.node_map.upsert(node_info(peer.announcement, after))
        self.table.put(peer.announcement, after.value)
        if before is after:
            return
        self.view.state_changed(peer, before, after)
        if before is None:
            return
        self.metrics.state_changes.labels(after.value).inc()
        if after is NodeState.DEAD:
            peer.dead_since = self._now()
        elif after is NodeState.ALIVE:
            peer.asked.clear()
            peer.denied.clear()
            peer.confirmed.clear()
            peer.contradicted = False
        log = self._log.warn if after in (NodeState.SUSPECT, NodeState.DEAD) else self._log.info
        log(
            "mesh: {node} is {state} (was {before}; last heard {silence:.3f} s ago)",
            node=peer.node_id,
            state=after.value,
            before=before.value,
            silence=max(0.0, self._now() - peer.last_heard),
        )
        if after in (NodeState.DEAD, NodeState.LEAVING):
            for callback in list(self.on_peer_gone):
                callback(peer)

    def _drop_link(self, peer: Peer) -> None:
        if peer.link is not None:
            link, peer.link = peer.link, None
            link.stop()

    # Heartbeats and the failure detector

    def tick(self) -> None:
        """Run the detector and send what is due (called every fraction of a
        heartbeat by the service)."""
        if not self.started or self.leaving:
            return
        now = self._now()
        t = self.timing
        view = self.view
        view.tick(now)
        for peer in view.tick_peers():
            state = peer.state
            if state is NodeState.LEAVING:
                continue
            watched = view.watches(peer)
            link = peer.link
            if link is not None and link.up and watched:
                if peer.ping_sent is not None and now - peer.ping_sent >= t.dead:
                    peer.ping_sent = None
                    link.abort("unanswered", "no answer to a heartbeat for {} s".format(t.dead))
                elif peer.ping_sent is None and now - peer.last_ping >= t.heartbeat:
                    self._ping(peer, link, now)
            if watched and now - peer.last_heard >= t.suspect:
                if state is NodeState.ALIVE or (state is NodeState.SUSPECT and now - peer.last_probe >= t.heartbeat):
                    peer.detector.silent()
                if now - max(peer.last_heard, peer.vouched) >= self._dead_after(peer):
                    peer.detector.unconfirmed()
            if peer.state is NodeState.DEAD and peer.dead_since is not None and now - peer.dead_since >= t.forget_dead:
                if peer.link is not None:
                    self._log.info(
                        "mesh: {node} dead for {seconds} s: no more reconnects",
                        node=peer.node_id,
                        seconds=t.forget_dead,
                    )
                    self._drop_link(peer)
        if (
            self._seeds
            and not self.seed_links
            and not any(p.state in (NodeState.ALIVE, NodeState.SUSPECT) for p in self.peers.values())
        ):
            # Alone: look for the mesh through the seeds again.
            self._start_seed_links()

    def _dead_after(self, peer: Peer) -> float:
        """The silence after which ``peer`` is DEAD: ``timing.dead``,
        shortened by confirmations (:func:`lifeguard_dead_after`)."""
        t = self.timing
        if not peer.confirmed:
            return t.dead
        expected = t.indirect_probes if t.indirect_probes > 0 else 3
        return lifeguard_dead_after(len(peer.confirmed), t.suspect, t.dead, t.heartbeat, expected)

    def _ping(self, peer: Peer, link: ILink, now: float) -> None:
        peer.ping_nonce += 1
        nonce = peer.ping_nonce
        peer.ping_sent = now
        peer.last_ping = now
        incarnation = peer.announcement.incarnation
        d = self._call(link, "ping", nonce, self.me.load, self.digest())

        def answered(answer: Any) -> None:
            if self.peers.get(peer.node_id) is not peer or peer.announcement.incarnation != incarnation:
                return
            if (
                not isinstance(answer, (list, tuple))
                or len(answer) != 3
                or answer[0] != nonce
                or not isinstance(answer[1], int)
                or isinstance(answer[1], bool)
                or answer[1] < 0
                or not isinstance(answer[2], str)
            ):
                link.abort("bad_message", "a malformed heartbeat answer")
                return
            at = self._now()
            if peer.ping_sent == now:
                peer.ping_sent = None
            peer.rtt = at - now
            self.metrics.rtt.labels(peer.node_id).observe(peer.rtt)
            self._pinged(peer, answer[1], answer[2], link)

        def failed(f: Failure) -> None:
            if peer.ping_sent == now:
                peer.ping_sent = None

        d.addCallbacks(answered, failed)

    def pinged(self, peer: Peer, load: int, digest: str) -> tuple[int, str]:
        """A heartbeat from ``peer`` (already counted as heard).

        :returns: this node's load and digest.
        """
        self._pinged(peer, load, digest, peer.link)
        return self.me.load, self.digest()

    def _pinged(self, peer: Peer, load: int, digest: str, link: ILink | None) -> None:
        if load != peer.announcement.load:
            peer.announcement = peer.announcement.replace(load=load)
            self.node_map.upsert(node_info(peer.announcement, peer.state))
        now = self._now()
        if (
            digest != self.digest()
            and link is not None
            and link.up
            and now - peer.last_pull >= self.timing.heartbeat
            and self.view.may_pull(peer.node_id, now, digest)
        ):
            peer.last_pull = now
            self._pull(peer, link, digest)
        if self.peers.get(peer.node_id) is peer:
            peer.last_heard = now
            peer.detector.heard()

    def _pull(self, peer: Peer, link: ILink, digest: str | None = None) -> None:
        """Ask ``peer`` for what this node lacks (``memberlist``); when the
        pull is for a differing ``digest`` it said, its outcome paces the
        next ones (``PullBackoff``)."""
        done = None
        if digest is not None:

            def done() -> None:
                self.view.backoff.pulled(peer.node_id, self._now(), self.digest() == digest, digest)

        self.member_sync.pull(peer.node_id, peer.announcement.incarnation, peer.sync, link, done)

    def _probe_targets(self, suspect: Peer) -> list[Peer]:
        """The peers to ask about ``suspect`` this round: at most
        ``timing.indirect_probes`` (0: all), at random among the other ALIVE
        peers with a working link, those not asked since it was last ALIVE
        first (so successive rounds ask different peers, and a peer that
        lies cannot be the only voice twice while others are left)."""
        candidates = self.view.probe_candidates(
            suspect,
            [
                other
                for other in self.peers.values()
                if other is not suspect and other.state is NodeState.ALIVE and other.link is not None and other.link.up
            ],
        )
        k = self.timing.indirect_probes
        if k <= 0 or len(candidates) <= k:
            chosen = candidates
        else:
            fresh = [p for p in candidates if p.node_id not in suspect.asked]
            if len(fresh) >= k:
                chosen = self.rng.sample(fresh, k)
            else:
                rest = [p for p in candidates if p.node_id in suspect.asked]
                chosen = fresh + self.rng.sample(rest, k - len(fresh))
                suspect.asked.clear()
        suspect.asked.update(p.node_id for p in chosen)
        return chosen

    def _probe(self, suspect: Peer) -> None:
        """Ask a few other live peers when they last heard from ``suspect``."""
        now = self._now()
        suspect.last_probe = now
        incarnation = suspect.announcement.incarnation
        for other in self._probe_targets(suspect):
            link = other.link
            assert link is not None
            d = self._call(link, "probe", suspect.node_id, incarnation)

            def answered(age: Any, voucher: str = other.node_id) -> None:
                if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float)) or age < 0):
                    self.metrics.probes.labels("failed").inc()
                    return
                current = self.peers.get(suspect.node_id) is suspect
                if current and (age is None or age >= self.timing.suspect) and voucher not in suspect.confirmed:
                    # It has not heard from it lately either: Lifeguard's
                    # confirmation, the wait for DEAD shortens.
                    suspect.confirmed.add(voucher)
                    self.metrics.view.lifeguard.inc()
                if age is None or age >= self.timing.dead:
                    self.metrics.probes.labels("silent").inc()
                    if current:
                        suspect.denied.add(voucher)
                    return
                self.metrics.probes.labels("vouched").inc()
                if current:
                    suspect.vouched = max(suspect.vouched, self._now() - float(age))
                    if suspect.denied - {voucher}:
                        self._contradicted(suspect, voucher, float(age))
                    self._log.debug(
                        "mesh: {voucher} heard from {node} {age:.3f} s ago",
                        voucher=voucher,
                        node=suspect.node_id,
                        age=age,
                    )

            d.addCallbacks(answered, lambda f: self.metrics.probes.labels("failed").inc())

    def _contradicted(self, suspect: Peer, voucher: str, age: float) -> None:
        """Some peers said they had not heard from ``suspect`` lately and
        ``voucher`` heard from it ``age`` s ago: their word alone never made
        it DEAD (only the absence of any vouch does). Counted
        (``outcome="contradicted"``, one per such peer), logged once per
        suspicion; a peer that keeps being contradicted is lying or cannot
        reach the suspect either."""
        deniers = sorted(suspect.denied - {voucher})
        suspect.denied.clear()
        self.metrics.probes.labels("contradicted").inc(len(deniers))
        if not suspect.contradicted:
            suspect.contradicted = True
            self._log.warn(
                "mesh: {deniers} had not heard from {node} lately, but {voucher} heard from it {age:.3f} s ago",
                deniers=", ".join(deniers),
                node=suspect.node_id,
                voucher=voucher,
                age=age,
            )

    # Views

    def peer_views(self) -> Iterable[Peer]:
        """The peers, for status pages."""
        return list(self.peers.values())
