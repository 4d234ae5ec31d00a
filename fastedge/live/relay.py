# -*- test-case-name: tests.unit.live.test_relay,tests.unit.live.test_relay_properties -*-
"""Live events across nodes: one sequencer per channel, followers that
follow it, and re-synchronisation by sequence numbers.

``docs/mesh.md`` ("Live events across nodes") has the design; in short:

- **One sequencer per channel.** The channel's *owner* is chosen by
  rendezvous hashing of the channel over the live (ALIVE or SUSPECT) nodes
  of this node's deployment. Only the owner stamps the channel's events, so
  a channel has one numbering on every node. A write on another node is
  forwarded, unstamped, to the owner over that node's link.
- **Followers.** A node with local subscribers for a channel *follows* it
  at the owner, over its own link, telling the position it has. The owner
  answers with its position and the events the follower missed (from its
  history), registers the follower, and from then on pushes every event it
  stamps back over that same connection, in order. Events go only to nodes
  that follow the channel, once each.
- **Priming.** Before the first local subscriber of a channel is answered,
  the node follows it and waits (up to ``mesh.relay_prime_timeout_seconds``)
  so the subscriber gets the channel's real position and history: a client
  whose node died recovers with ``since`` on any other node.
- **Re-sync.** When a link comes back, the follower follows its channels
  again with the positions it has; missed events are replayed in order
  (duplicates are dropped by the hub), and if the owner's history no longer
  covers the gap the channel is reset and its subscribers reload.
- **Ownership changes** (a node joins, dies or leaves) move some channels
  to a new owner, which starts a new epoch at once and pushes a reset:
  subscribers reload once rather than trust numbers from two sequencers
  (or miss the old owner's last events). Writes queued for the old owner
  are re-routed in the same pass; a write sequenced here because its owner
  was unreachable stays owed to the owner; an owner that sequenced a
  channel while partitioned tells the next owner to start a new epoch.
- **Isolation.** Only nodes of the same deployment follow, forward or
  receive anything; a relay call from a node of another deployment is
  refused and counted (by the mesh, as for every registered handler).

The relay is a mesh handler (:class:`~fastedge.mesh.interfaces.IMeshHandler`,
``docs/mesh-handlers.md``): the live service makes it, and the node's
wiring registers it with the mesh; the mesh knows nothing of live events.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..mesh.handler import MeshHandler
from ..mesh.interfaces import ILink, IMesh, IPeerSession
from ..mesh.messages import BadMessage, check_channel_id
from ..mesh.nodemap import NodeMapChange, NodeState
from .hub import ChannelKey, Event, Hub, Prepared, Stamp, new_epoch
from .relay_messages import RESET_KIND, RelayedEvent, check_position

__all__ = ["Relay", "RelayMetrics", "rendezvous"]

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

#: Channels per follow call, and event bytes per follow answer (a larger
#: answer gives positions only; the follower resets where it must).
FOLLOW_BATCH = 50
ANSWER_BUDGET = 256 * 1024
#: Events per ``events`` or ``publish`` call, at most (the receiver's limit).
EVENTS_BATCH = 1000
#: Owners remembered (recomputed after a map change, or when full).
OWNER_CACHE = 100_000
#: Seconds between sweeps of what is remembered of forgotten channels.
PRUNE_SECONDS = 60.0
#: Times a "start a new epoch" marker is passed on by nodes that see
#: another owner (views of the mesh differ for a moment after a change and
#: converge within its DEAD time); past this, the node holding it applies
#: it (its own subscribers and followers reload).
MARKER_PASSES = 4

_RELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class RelayMetrics:
    """The relay's metric families (``fastedge_mesh_relay_*``: their names
    say where the events travel, and stayed when the relay moved here)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.relay_events = Counter(
            "fastedge_mesh_relay_events_total",
            "Live events over the mesh, by direction (sent: pushed to a follower; "
            "received: from an owner; forwarded: a local write sent to its owner; "
            "sequenced: a write from another node stamped here; dropped: a write the full "
            "forward queue gave up on).",
            ["direction"],
            registry=registry,
        )
        self.relay_resyncs = Counter(
            "fastedge_mesh_relay_resyncs_total",
            "Channels re-synchronised with their owner after a (re)connect, by " "result (replayed, current, reset).",
            ["result"],
            registry=registry,
        )
        self.relay_refused = Counter(
            "fastedge_mesh_relay_refused_total",
            "Relay messages refused, by reason (deployment, not_upstream, bad_event).",
            ["reason"],
            registry=registry,
        )
        self.relay_channels = Gauge(
            "fastedge_mesh_relay_channels",
            "Channels by role: followed (this node follows another's numbering), "
            "owned_followers (channels owned here with followers elsewhere).",
            ["role"],
            registry=registry,
        )
        self.relay_takeovers = Counter(
            "fastedge_mesh_relay_takeovers_total",
            "Channels this node moved to a new epoch of its own at once (taken over "
            "from another sequencer, or told their numberings diverged): their "
            "subscribers and followers reload.",
            registry=registry,
        )
        self.relay_handovers = Counter(
            "fastedge_mesh_relay_handovers_total",
            "Channels sequenced here that moved to an owner which had not followed "
            "them here (told to start a new epoch: its subscribers reload).",
            registry=registry,
        )
        self.relay_markers = Counter(
            "fastedge_mesh_relay_markers_total",
            "New-epoch markers this node sent or handled other than as the channel's owner, by "
            "action (passed: on to the owner it sees; applied_here: passed too often, applied "
            "here; owed_write: sent because a write owed to the owner came here instead).",
            ["action"],
            registry=registry,
        )
        self.relay_queue = Gauge(
            "fastedge_mesh_relay_forward_queue",
            "Local writes waiting for their channel's owner to be reachable.",
            registry=registry,
        )
        self.relay_seconds = Histogram(
            "fastedge_mesh_relay_prime_seconds",
            "Time to learn a channel's position from its owner before the first " "local subscriber is answered.",
            buckets=_RELAY_BUCKETS,
            registry=registry,
        )


def to_wire(event: Event, stamp: Stamp | None) -> RelayedEvent:
    """The relayed form of a hub event."""
    tenant, thread = event.channel
    return RelayedEvent(
        tenant=tenant,
        thread=thread,
        kind=event.kind,
        data=_JSON.encode(event.data),
        author=event.author_id,
        epoch=stamp.epoch if stamp is not None else None,
        seq=stamp.seq if stamp is not None else None,
        origin=event.origin,
    )


def from_wire(wire: RelayedEvent) -> Event:
    """The hub event of a relayed one."""
    stamp = Stamp(wire.epoch, wire.seq) if wire.epoch is not None and wire.seq is not None else None
    return Event(
        (wire.tenant, wire.thread),
        wire.kind,
        json.loads(wire.data),
        author_id=wire.author,
        stamp=stamp,
        origin=wire.origin,
    )


def rendezvous(channel: ChannelKey, nodes: Iterable[str]) -> str | None:
    """The node with the highest hash of (channel, node): every node that
    sees the same node set picks the same owner, and a node joining or
    leaving moves only the channels it wins or held."""
    best: tuple[bytes, str] | None = None
    prefix = "{}\0{}\0".format(*channel).encode()
    for node in nodes:
        score = hashlib.sha256(prefix + node.encode()).digest()[:8]
        if best is None or score > best[0]:
            best = (score, node)
    return None if best is None else best[1]


@dataclass
class _Follow:
    """A channel this node follows at ``owner``."""

    owner: str
    since: float
    synced: bool = False
    pending: Deferred[None] | None = None


@dataclass
class _Forward:
    """A write waiting for its channel's owner to be reachable.

    :ivar owed: the write was already sequenced here (the owner stayed
        unreachable, or a view of the mesh lagged): it is still owed to the
        owner, whose followers would otherwise never see it. It goes out as
        a last hop (the owner sequences it wherever it lands) and is never
        sequenced here again.
    """

    event: Event
    hops: int
    queued: float
    owed: bool = False


class Relay(MeshHandler):
    """This node's side of cross-node live events (see the module docstring).

    A mesh handler: its remote calls are ``follow``, ``unfollow``,
    ``publish`` and ``block`` (made on the peer's session), its callback is
    ``events`` (pushed back over this node's link), and its calls carry
    :class:`~fastedge.live.relay_messages.RelayedEvent`. Until it is
    attached to a started mesh, this node sequences every channel.

    :param hub: the node's hub; the relay feeds it through
        :meth:`~fastedge.live.hub.Hub.publish` and
        :meth:`~fastedge.live.hub.Hub.resync` only.
    :param metrics: its metric families (``fastedge_mesh_relay_*``).
    :param prime_timeout: how long a first subscriber waits for the owner.
    :param forward_timeout: how long a write waits for an unreachable owner
        before it is sequenced here (local subscribers then reload; see
        ``docs/mesh.md``).
    :param max_queue: writes waiting for owners, at most.
    """

    _log = Logger()
    name = "relay"

    def __init__(
        self,
        hub: Hub,
        *,
        metrics: RelayMetrics,
        prime_timeout: float = 1.0,
        forward_timeout: float = 5.0,
        max_queue: int = 10_000,
        new_epoch: Callable[[], str] = new_epoch,
    ) -> None:
        super().__init__()
        self.remote_calls = {
            "follow": self._serve_follow,
            "unfollow": self._serve_unfollow,
            "publish": self._serve_publish,
            "block": self._serve_block,
        }
        self.callbacks = {"events": self._receive_events}
        self.message_types = (RelayedEvent,)
        self._metrics = metrics
        self.hub = hub
        self._prime_timeout = prime_timeout
        self._forward_timeout = forward_timeout
        self._max_queue = max_queue
        self._new_epoch = new_epoch
        self.mesh: IMesh | None = None
        #: Epochs this hub took from another sequencer (not to be continued here).
        self.followed_epoch: dict[ChannelKey, str] = {}
        self.following: dict[ChannelKey, _Follow] = {}
        self.followers: dict[ChannelKey, set[IPeerSession]] = {}
        self._sessions: dict[IPeerSession, set[ChannelKey]] = {}
        self._outbox: dict[str, list[_Forward]] = {}
        #: Channels stamped here as their owner (handed over when they move,
        #: and kept while this node's position is in its own numbering).
        self.sequenced: set[ChannelKey] = set()
        #: Of those, the position each was handed over at and the owners
        #: told (each starts a new epoch once per position).
        self._told: dict[ChannelKey, tuple[Stamp, set[str]]] = {}
        self._candidates: tuple[str, ...] | None = None
        self._owners: dict[ChannelKey, str | None] = {}
        self._rebalance_call: IDelayedCall | None = None
        self._pruned = float("-inf")
        # Pushes and forwards made in one reactor turn go out as one call
        # per peer (a busy channel costs calls per turn, not per event).
        self._pushes: dict[IPeerSession, list[RelayedEvent]] = {}
        self._push_call: IDelayedCall | None = None
        self._forward_call: IDelayedCall | None = None
        hub.add_listener(self)

    # IMeshHandler

    def attach(self, mesh: IMesh) -> None:
        """Start relaying over a started mesh."""
        self.mesh = mesh
        mesh.node_map.subscribe(self._map_changed)

    def refused(self, call: str, reason: str) -> None:
        """The mesh refused a relay call (another deployment's, ...)."""
        if reason == "deployment":
            self._metrics.relay_refused.labels("deployment").inc()

    @property
    def _me(self) -> str | None:
        return self.mesh.node_id if self.mesh is not None else None

    def _now(self) -> float:
        assert self.mesh is not None
        return self.mesh.monotonic()

    # Ownership

    def _owner_set(self) -> tuple[str, ...]:
        if self._candidates is None:
            mesh = self.mesh
            assert mesh is not None
            live = (NodeState.ALIVE, NodeState.SUSPECT)
            nodes = {
                info.node_id
                for info in mesh.node_map.nodes().values()
                if info.deployment == mesh.deployment and info.state in live
            }
            if not mesh.leaving:
                nodes.add(mesh.node_id)
            else:
                nodes.discard(mesh.node_id)
            self._candidates = tuple(sorted(nodes))
        return self._candidates

    def owner_of(self, channel: ChannelKey) -> str | None:
        """The node that sequences ``channel`` as this node sees the mesh
        (``None`` before the mesh runs: this node sequences everything)."""
        if self.mesh is None:
            return None
        if channel in self._owners:
            return self._owners[channel]
        owner = rendezvous(channel, self._owner_set())
        if len(self._owners) >= OWNER_CACHE:
            self._owners.clear()
        self._owners[channel] = owner
        return owner

    def _sequences_here(self, channel: ChannelKey) -> bool:
        owner = self.owner_of(channel)
        return owner is None or owner == self._me

    def _map_changed(self, change: NodeMapChange) -> None:
        before, after = change.before, change.after
        if before is not None and (before.state is after.state and before.deployment == after.deployment):
            return  # a load or attribute change: owners do not move
        self._candidates = None
        self._owners.clear()
        if self._rebalance_call is None and self.mesh is not None:
            self._rebalance_call = self.mesh.reactor.callLater(0, self._rebalance)

    def _rebalance(self) -> None:
        """Owners may have moved: follow channels at their new owners."""
        self._rebalance_call = None
        if self.mesh is None:
            return
        moved: dict[str, list[ChannelKey]] = {}
        for channel, follow in list(self.following.items()):
            owner = self.owner_of(channel)
            if owner == follow.owner:
                continue
            self._unfollow_at(follow.owner, [channel])
            del self.following[channel]
            if owner is not None and owner != self._me:
                moved.setdefault(owner, []).append(channel)
        for channel in self.hub.interest():
            if channel not in self.following:
                owner = self.owner_of(channel)
                if owner is not None and owner != self._me and channel not in moved.get(owner, ()):
                    moved.setdefault(owner, []).append(channel)
        for channel, epoch in list(self.followed_epoch.items()):
            if self._sequences_here(channel):
                self._take_over(channel, epoch)
        for channel in list(self.sequenced):
            self._hand_over(channel)
        for owner, channels in moved.items():
            self._follow(owner, channels)
        self._flush_all()

    def _hand_over(self, channel: ChannelKey) -> None:
        """A channel this node sequenced may have moved to another owner.

        If that owner was not following it here, the two numberings
        diverged (a partition: each side believed it owned the channel, or
        the new owner has subscribers that never saw these events): the new
        owner is told to start a new epoch, so its subscribers and
        followers reload (this node's own meet the new owner's epoch with a
        reset when they follow it). Owed like a write: it waits for the
        owner to be reachable.

        The channel stays sequenced here while this node's position is
        still in its own numbering, and every later owner is told once
        too: the owner of the moment may be a passing one (a partition
        healing link by link: the first node back), which started its new
        epoch with nothing stamped in it and so tells nobody when the
        channel moves on to its real owner. Before, this node forgot the
        channel once it had told the first one, and the real owner's
        subscribers never saw these writes, nor reloaded
        (``RecordedExampleTests.test_cut_off_write_handed_over_through_a_passing_owner``).
        """
        owner = self.owner_of(channel)
        if owner is None or owner == self._me:
            return
        position = self.hub.position(channel)
        if position is None or self.followed_epoch.get(channel) == position.epoch:
            # Forgotten, or this node follows another numbering now: nothing
            # of its own is left to tell of. A new epoch with nothing stamped
            # in it yet is told of too: it was started here for writes some
            # subscribers never saw (a takeover, or another node's marker),
            # and it is all that is left of them once the node that
            # sequenced them follows this one (before, a marker applied by
            # a passing owner ended there, and the real owner's subscribers
            # never reloaded: ``RecordedExampleTests``).
            self._forget_sequenced(channel)
            return
        if any(session.node_id == owner for session in self.followers.get(channel, set())):
            self._log.debug(
                "mesh relay: {tenant}/{thread} moved to {owner}, which followed it here (at {epoch}:{seq})",
                tenant=channel[0],
                thread=channel[1],
                owner=owner,
                epoch=position.epoch,
                seq=position.seq,
            )
            self._forget_sequenced(channel)
            return  # it followed every event stamped here
        told = self._told.get(channel)
        if told is None or told[0] != position:
            told = self._told[channel] = (position, set())
        if owner in told[1] or not self._owe_marker(channel, owner, 0):
            return  # told already for this position, or its marker waits
        self._metrics.relay_handovers.inc()
        self._log.info(
            "mesh relay: {tenant}/{thread} moved to {owner}, which did not follow it here; it starts a new epoch",
            tenant=channel[0],
            thread=channel[1],
            owner=owner,
        )

    def _forget_sequenced(self, channel: ChannelKey) -> None:
        """Nothing of this node's own numbering of ``channel`` is left to hand over."""
        self.sequenced.discard(channel)
        self._told.pop(channel, None)

    def _owe_marker(self, channel: ChannelKey, owner: str, passes: int) -> bool:
        """Tell ``owner`` to start a new epoch of ``channel`` (its
        subscribers and followers reload), as soon as it is reachable; on
        the way it is re-routed to whichever node owns the channel by then
        (:meth:`_flush_all`), or passed on by a node that does not own it
        (:meth:`_marker`).

        :returns: whether a marker was queued (not when one waits already).
        """
        for waiting in self._outbox.get(owner, ()):
            if waiting.event.kind == RESET_KIND and waiting.event.channel == channel:
                return False  # one new epoch covers them all: its subscribers reload once
        marker = Event(channel, RESET_KIND, {"passes": passes}, origin=self._me or "")
        self._forward(owner, marker, 2, owed=True)
        return True

    def _take_over(self, channel: ChannelKey, followed: str) -> None:
        """This node now owns a channel whose numbering it followed: start
        its own epoch at once, and say so to local subscribers and to
        followers (a ``reset``).

        Waiting for the next write would leave every subscriber that missed
        the old owner's last events (stamped, but not pushed before it
        died) silently behind for as long as the channel stays quiet; the
        new owner cannot know what it missed, so everyone reloads once.
        """
        position = self.hub.position(channel)
        del self.followed_epoch[channel]
        if position is None or position.epoch != followed:
            return
        self._new_numbering(channel)

    def _new_numbering(self, channel: ChannelKey) -> None:
        """Move a channel sequenced here to a new epoch at 0 now: local
        subscribers and followers get a ``reset`` and reload."""
        position = self.hub.position(channel)
        stamp = Stamp(self._new_epoch(), 0)
        self.hub.resync(channel, stamp, ())
        self.followed_epoch.pop(channel, None)
        self.sequenced.add(channel)
        self._metrics.relay_takeovers.inc()
        self._log.info(
            "mesh relay: {tenant}/{thread} starts epoch {new_epoch} here (was {epoch}:{seq})",
            tenant=channel[0],
            thread=channel[1],
            epoch=position.epoch if position else None,
            seq=position.seq if position else None,
            new_epoch=stamp.epoch,
        )
        followers = self.followers.get(channel)
        if followers:
            wire = RelayedEvent(
                tenant=channel[0],
                thread=channel[1],
                kind=RESET_KIND,
                epoch=stamp.epoch,
                seq=stamp.seq,
                origin=self._me or "",
            )
            for session in followers:
                self._pushes.setdefault(session, []).append(wire)
            if self._push_call is None:
                assert self.mesh is not None
                self._push_call = self.mesh.reactor.callLater(0, self._send_pushes)

    # Local writes (LivePublisher.sink)

    def publish(self, event: Event) -> None:
        """A local write: sequence it here, or send it to its owner."""
        owner = self.owner_of(event.channel)
        if owner is None or owner == self._me:
            self._sequence(event)
        else:
            self._forward(owner, event, 0)

    def _sequence(self, event: Event) -> Prepared | None:
        """Stamp ``event`` as the channel's sequencer and push it to followers."""
        channel = event.channel
        position = self.hub.position(channel)
        if position is not None and self.followed_epoch.get(channel) == position.epoch:
            # The numbering came from another sequencer (ownership moved
            # here): never continue it, start this node's own.
            del self.followed_epoch[channel]
            event = replace(event, stamp=Stamp(self._new_epoch(), 1))
        prepared = self.hub.publish(event)
        if prepared is not None:
            if self._sequences_here(channel):
                self.sequenced.add(channel)
            if self.mesh is not None and event.origin != self._me:
                self._metrics.relay_events.labels("sequenced").inc()
            self._push(prepared)
        return prepared

    def _push(self, prepared: Prepared) -> None:
        followers = self.followers.get(prepared.event.channel)
        if not followers:
            return
        wire = to_wire(prepared.event, prepared.stamp)
        for session in followers:
            self._pushes.setdefault(session, []).append(wire)
        if self._push_call is None:
            assert self.mesh is not None
            self._push_call = self.mesh.reactor.callLater(0, self._send_pushes)

    def _send_pushes(self) -> None:
        """Send what this turn stamped to each follower, in stamp order."""
        self._push_call = None
        pushes, self._pushes = self._pushes, {}
        mesh = self.mesh
        assert mesh is not None
        for session, wires in pushes.items():
            for start in range(0, len(wires), EVENTS_BATCH):
                batch = wires[start : start + EVENTS_BATCH]
                # A session that closed, or left too many batches
                # unacknowledged (it is disconnected and re-syncs when it is
                # back), fails the call: counted by the mesh.
                mesh.watch(session.call_back("events", batch), "events", session.node_id)
            self._metrics.relay_events.labels("sent").inc(len(wires))

    def _forward(self, owner: str, event: Event, hops: int, *, owed: bool = False) -> None:
        queue = self._outbox.setdefault(owner, [])
        queue.append(_Forward(event, hops, self._now(), owed))
        total = self._queued()
        if total > self._max_queue:
            longest = max(self._outbox, key=lambda o: len(self._outbox[o]))
            dropped = self._outbox[longest].pop(0)
            if not self._outbox[longest]:
                del self._outbox[longest]
            # The one loss the relay accepts: the owner's followers never
            # see this write live (they see it at their next reload).
            self._metrics.relay_events.labels("dropped").inc()
            self._log.warn(
                "mesh relay: {count} writes wait for their owners; one for {owner} is dropped",
                count=total,
                owner=longest,
            )
            if not dropped.owed:
                self._sequence(dropped.event)
        self._metrics.relay_queue.set(self._queued())
        if self._forward_call is None and self.mesh is not None:
            self._forward_call = self.mesh.reactor.callLater(0, self._flush_all)

    def _flush_all(self) -> None:
        """Send every waiting write whose owner is reachable, re-routing
        those whose channel changed hands.

        All queues are routed in one pass: a write moved from a dead
        owner's queue to its new owner's is sent in the same pass (routing
        queue by queue once left it waiting for the forward timeout, then
        sequenced on a node nobody follows: a silent gap).
        """
        self._forward_call = None
        queues, self._outbox = self._outbox, {}
        sending: dict[tuple[str, int], list[_Forward]] = {}
        links: dict[str, ILink | None] = {}
        for queue in queues.values():
            for item in queue:
                owner = self.owner_of(item.event.channel)
                if owner is None or owner == self._me:
                    if not item.owed:
                        self._sequence(item.event)
                    elif owner is not None:
                        # An owed write is in this node's numbering already
                        # (stamped here while its owner was unreachable), and
                        # the channel is this node's now: it is not sent. The
                        # channel counts as sequenced here, so that when it
                        # moves on (the old owner back) the next owner, which
                        # never saw the write, is told to start a new epoch
                        # and its subscribers reload (_hand_over). Before,
                        # only writes stamped as the owner counted, and the
                        # old owner's subscribers missed this one silently.
                        self.sequenced.add(item.event.channel)
                    continue
                if owner not in links:
                    links[owner] = self._link_to(owner)
                if links[owner] is None:
                    self._outbox.setdefault(owner, []).append(item)
                else:
                    sending.setdefault((owner, 2 if item.owed else item.hops), []).append(item)
        for (owner, hops), items in sending.items():
            link = links[owner]
            assert link is not None
            for start in range(0, len(items), EVENTS_BATCH):
                self._send_forwards(link, items[start : start + EVENTS_BATCH], hops)
        self._metrics.relay_queue.set(self._queued())

    def _queued(self) -> int:
        return sum(len(q) for q in self._outbox.values())

    def _link_to(self, node_id: str) -> ILink | None:
        assert self.mesh is not None
        link: ILink | None = self.mesh.link_to(node_id)
        return link

    def _send_forwards(self, link: ILink, items: list[_Forward], hops: int) -> None:
        wires = [to_wire(item.event, None) for item in items]
        assert self.mesh is not None
        d = self.mesh.call(link, "publish", wires, hops)
        self._metrics.relay_events.labels("forwarded").inc(len(items))

        def delivered(result: object) -> object:
            # A hand-over counts as told once its marker is delivered, to
            # the node it reached: one queued and then dropped (the channel
            # came back here) or re-routed told nobody else, and the next
            # owner must still be told (_hand_over).
            for item in items:
                told = self._told.get(item.event.channel)
                if told is not None and item.event.kind == RESET_KIND and item.event.origin == self._me:
                    told[1].add(link.peer_id)
            return result

        def failed(f: Failure) -> None:
            # Not delivered (the link dropped): wait for the owner again.
            self._outbox.setdefault(link.peer_id, []).extend(items)
            self._metrics.relay_queue.set(sum(len(q) for q in self._outbox.values()))

        d.addCallbacks(delivered, failed)

    # Block changes (LivePublisher.block_sink)

    def block(self, tenant_id: str, viewer_author_id: str, author_id: str, blocked: bool) -> None:
        """A viewer blocked or unblocked an author: apply it here and on the
        deployment's other nodes (the viewer may follow live elsewhere)."""
        self.hub.set_blocked((tenant_id, viewer_author_id), author_id, blocked)
        mesh = self.mesh
        if mesh is None:
            return
        for node_id in mesh.peers():
            link = mesh.link_to(node_id)
            if link is None:
                continue
            d = mesh.call(link, "block", tenant_id, viewer_author_id, author_id, bool(blocked))
            mesh.watch(d, "block", node_id)

    # Following (this node has subscribers of a channel another node owns)

    def interest_changed(self, channel: ChannelKey, interested: bool) -> None:
        """HubListener: the first local subscriber came, or the last left."""
        if self.mesh is None:
            return
        if interested:
            if channel not in self.following:
                owner = self.owner_of(channel)
                if owner is not None and owner != self._me:
                    self._follow(owner, [channel])
        else:
            follow = self.following.pop(channel, None)
            if follow is not None:
                self._unfollow_at(follow.owner, [channel])

    def accepted(self, prepared: Prepared, local: bool) -> None:
        """HubListener: events reach followers from :meth:`_sequence`."""

    def prime(self, channel: ChannelKey) -> Deferred[None]:
        """Make sure a channel about to get its first local subscriber is up
        to date with its owner (never fails; gives up after the prime
        timeout and the subscriber gets what this node has)."""
        if self.mesh is None or self.hub.subscribers(channel):
            return succeed(None)
        owner = self.owner_of(channel)
        if owner is None or owner == self._me:
            return succeed(None)
        follow = self.following.get(channel)
        if follow is not None and follow.owner == owner and follow.synced:
            return succeed(None)
        started = self._now()
        if follow is None or follow.owner != owner or follow.pending is None:
            self._follow(owner, [channel])
            follow = self.following[channel]
        waited: Deferred[None] = Deferred()
        pending = follow.pending
        if pending is None:
            # The link to the owner is down: the follow waits for it.
            return succeed(None)

        def done(_: object) -> None:
            if not waited.called:
                self._metrics.relay_seconds.observe(max(0.0, self._now() - started))
                waited.callback(None)

        def answered(result: object) -> object:
            done(None)
            return result

        def settled(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        pending.addBoth(answered)
        assert self.mesh is not None
        timer = self.mesh.clock.callLater(self._prime_timeout, done, None)
        waited.addBoth(settled)
        return waited

    def _follow(self, owner: str, channels: Sequence[ChannelKey]) -> None:
        """Follow ``channels`` at ``owner`` (now, or when the link is up)."""
        now = self._now()
        link = self._link_to(owner)
        for channel in channels:
            follow = self.following.get(channel)
            if follow is None or follow.owner != owner:
                follow = self.following[channel] = _Follow(owner, now)
            follow.synced = False
        if link is None:
            return
        for start in range(0, len(channels), FOLLOW_BATCH):
            self._follow_batch(link, owner, list(channels[start : start + FOLLOW_BATCH]))

    def _follow_batch(self, link: ILink, owner: str, channels: list[ChannelKey]) -> None:
        entries = []
        for channel in channels:
            position = self.hub.position(channel)
            entries.append(
                [
                    channel[0],
                    channel[1],
                    position.epoch if position else None,
                    position.seq if position else None,
                ]
            )
        assert self.mesh is not None
        d = self.mesh.call(link, "follow", entries)
        done: Deferred[None] = Deferred()
        for channel in channels:
            self.following[channel].pending = done

        def answered(answer: Any) -> None:
            try:
                self._followed(owner, channels, answer)
            except BadMessage as e:
                link.abort("bad_message", str(e))

        def finish(result: object) -> None:
            for channel in channels:
                follow = self.following.get(channel)
                if follow is not None and follow.pending is done:
                    follow.pending = None
            done.callback(None)

        d.addCallback(answered)
        self.mesh.watch(d, "follow", owner)
        d.addBoth(finish)

    def _followed(self, owner: str, channels: list[ChannelKey], answer: Any) -> None:
        if not isinstance(answer, (list, tuple)) or len(answer) != len(channels):
            raise BadMessage("a follow answer must have one entry per channel")
        for channel, entry in zip(channels, answer, strict=True):
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise BadMessage("a follow answer entry must be (epoch, seq, events)")
            epoch, seq = check_position(entry[0], entry[1])
            wires = entry[2]
            if not isinstance(wires, (list, tuple)) or not all(isinstance(w, RelayedEvent) for w in wires):
                raise BadMessage("a follow answer's events must be relayed events")
            follow = self.following.get(channel)
            if follow is None or follow.owner != owner:
                continue  # unfollowed (or moved) meanwhile
            follow.synced = True
            if epoch is None or seq is None:
                continue  # the owner has nothing yet and is not sequencing it
            events = []
            for wire in wires:
                if (wire.tenant, wire.thread) != channel or wire.epoch is None:
                    raise BadMessage("a follow answer carried an event of another channel")
                events.append(from_wire(wire))
            before = self.hub.position(channel)
            result = self.hub.resync(channel, Stamp(epoch, seq), events)
            self.followed_epoch[channel] = epoch
            if result != "current":
                self._log.debug(
                    "mesh relay: {tenant}/{thread} followed at {owner}: {result} from {before} to {epoch}:{seq} "
                    "({count} events)",
                    tenant=channel[0],
                    thread=channel[1],
                    owner=owner,
                    result=result,
                    before="{}:{}".format(before.epoch, before.seq) if before is not None else None,
                    epoch=epoch,
                    seq=seq,
                    count=len(events),
                )
            self._metrics.relay_resyncs.labels(result).inc()
        self._count_channels()

    def _unfollow_at(self, owner: str, channels: list[ChannelKey]) -> None:
        link = self._link_to(owner)
        if link is None:
            return
        names = [[c[0], c[1]] for c in channels]
        assert self.mesh is not None
        self.mesh.watch(self.mesh.call(link, "unfollow", names), "unfollow", owner)

    def link_up(self, node_id: str, link: ILink) -> None:
        """A link came (back) up: re-follow what this node follows there
        (with the positions it has, so missed events are replayed) and send
        the writes waiting for it."""
        channels = [c for c, f in self.following.items() if f.owner == node_id]
        if channels:
            self._follow(node_id, channels)
        self._flush_all()

    def peer_gone(self, node_id: str) -> None:
        """A peer's life ended: it follows nothing here any more."""
        for session in list(self._sessions):
            if session.node_id == node_id:
                self.session_closed(session)

    # Calls from peers (the mesh checked the caller's deployment; a
    # BadMessage disconnects it)

    def _serve_follow(self, session: IPeerSession, entries: Any) -> list[Any]:
        if not isinstance(entries, (list, tuple)) or len(entries) > FOLLOW_BATCH:
            raise BadMessage("follow takes a list of at most {} channels".format(FOLLOW_BATCH))
        budget = ANSWER_BUDGET
        answer: list[Any] = []
        for entry in entries:
            if not isinstance(entry, (list, tuple)) or len(entry) != 4:
                raise BadMessage("a followed channel is (tenant, thread, epoch, seq)")
            channel = (
                check_channel_id(entry[0], "tenant"),
                check_channel_id(entry[1], "thread"),
            )
            epoch, seq = check_position(entry[2], entry[3])
            self.followers.setdefault(channel, set()).add(session)
            self._sessions.setdefault(session, set()).add(channel)
            position = self.hub.position(channel)
            if position is None:
                if not self._sequences_here(channel):
                    answer.append([None, None, []])
                    continue
                position = self.hub.ensure(channel)
            missed = self.hub.since(channel, epoch, seq) if epoch == position.epoch and seq is not None else None
            if missed is None:
                # The follower has another epoch, nothing, or a gap: it gets
                # the whole history (its own recoveries need it) and resets.
                missed = self.hub.history(channel)
            wires: list[RelayedEvent] = []
            for prepared in missed:
                wire = to_wire(prepared.event, prepared.stamp)
                budget -= len(wire.data) + 200
                if budget < 0:
                    wires = []
                    break
                wires.append(wire)
            answer.append([position.epoch, position.seq, wires])
        self._count_channels()
        return answer

    def _serve_unfollow(self, session: IPeerSession, names: Any) -> None:
        if not isinstance(names, (list, tuple)) or len(names) > 10_000:
            raise BadMessage("unfollow takes a list of channels")
        for name in names:
            if not isinstance(name, (list, tuple)) or len(name) != 2:
                raise BadMessage("a channel is (tenant, thread)")
            channel = (
                check_channel_id(name[0], "tenant"),
                check_channel_id(name[1], "thread"),
            )
            members = self.followers.get(channel)
            if members is not None:
                members.discard(session)
                if not members:
                    del self.followers[channel]
            self._sessions.get(session, set()).discard(channel)
        self._count_channels()

    def _serve_publish(self, session: IPeerSession, wires: Any, hops: Any) -> None:
        if (
            not isinstance(wires, (list, tuple))
            or not 0 < len(wires) <= EVENTS_BATCH
            or not all(isinstance(w, RelayedEvent) and w.epoch is None for w in wires)
        ):
            raise BadMessage("publish takes a list of unstamped relayed events")
        if not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops <= 2:
            raise BadMessage("hops must be 0, 1 or 2")
        for wire in wires:
            event = from_wire(wire)
            owner = self.owner_of(event.channel)
            if wire.kind == RESET_KIND:
                self._marker(event, owner)
                continue
            if owner is None or owner == self._me:
                self._sequence(event)
            elif hops >= 1:
                # Views of the mesh may differ for a moment: a write is passed
                # on at most once, then sequenced wherever it is, and (after
                # one pass) still owed to the owner this node sees, whose
                # followers would otherwise never see it.
                self._sequence(event)
                if hops == 1:
                    self._forward(owner, event, 2, owed=True)
                else:
                    # An owed write that came to a node which does not own
                    # the channel (the sender's view of the owner was a
                    # passing one): the owner's subscribers would never get
                    # it, so the owner starts a new epoch and they reload.
                    self._metrics.relay_markers.labels("owed_write").inc()
                    self._log.info(
                        "mesh relay: a write owed to {owner} for {tenant}/{thread} came here; "
                        "{owner} is told to start a new epoch",
                        owner=owner,
                        tenant=event.channel[0],
                        thread=event.channel[1],
                    )
                    self._owe_marker(event.channel, owner, 1)
            else:
                self._forward(owner, event, hops + 1)

    def _marker(self, event: Event, owner: str | None) -> None:
        """A former sequencer's numbering diverged from the owner's: the
        owner starts a new epoch (its subscribers and followers reload).

        The sender chose the owner from its view of the mesh, which may be
        a passing one (a partition healing link by link: the node it saw
        first looked like the owner). A node that sees another owner passes
        the marker on rather than start a numbering nobody follows, which
        left the real owner's subscribers silently without the sender's
        writes.
        """
        passes = event.data.get("passes", 0) if isinstance(event.data, dict) else None
        if not isinstance(passes, int) or isinstance(passes, bool) or passes < 0:
            raise BadMessage("a reset marker's passes must be a count")
        channel = event.channel
        if owner is None or owner == self._me:
            self._new_numbering(channel)
            return
        if passes < MARKER_PASSES:
            self._metrics.relay_markers.labels("passed").inc()
            self._log.info(
                "mesh relay: a new-epoch marker for {tenant}/{thread} from {origin} passed on to {owner}",
                tenant=channel[0],
                thread=channel[1],
                origin=event.origin,
                owner=owner,
            )
            self._owe_marker(channel, owner, passes + 1)
            return
        # Views that kept disagreeing: reset here rather than lose it.
        self._metrics.relay_markers.labels("applied_here").inc()
        self._log.warn(
            "mesh relay: a new-epoch marker for {tenant}/{thread} passed {passes} times; applied here, not at {owner}",
            tenant=channel[0],
            thread=channel[1],
            passes=passes,
            owner=owner,
        )
        self._new_numbering(channel)

    def _serve_block(self, session: IPeerSession, tenant_id: Any, viewer: Any, author: Any, blocked: Any) -> None:
        check_channel_id(tenant_id, "tenant")
        check_channel_id(viewer, "viewer")
        check_channel_id(author, "author")
        if not isinstance(blocked, bool):
            raise BadMessage("blocked must be true or false")
        self.hub.set_blocked((tenant_id, viewer), author, blocked)

    def _receive_events(self, link: ILink, wires: Any) -> None:
        if not isinstance(wires, (list, tuple)) or not 0 < len(wires) <= EVENTS_BATCH:
            raise BadMessage("events must be a list of 1 to {} relayed events".format(EVENTS_BATCH))
        for wire in wires:
            if not isinstance(wire, RelayedEvent) or wire.epoch is None:
                raise BadMessage("events must be stamped relayed events")
            channel = (wire.tenant, wire.thread)
            follow = self.following.get(channel)
            if follow is None or follow.owner != link.peer_id:
                # Not (or no longer) following it there: a late event of a
                # former owner would only break the numbering.
                self._metrics.relay_refused.labels("not_upstream").inc()
                self._log.debug(
                    "mesh relay: {tenant}/{thread} {epoch}:{seq} from {peer} refused: followed at {owner}",
                    tenant=wire.tenant,
                    thread=wire.thread,
                    epoch=wire.epoch,
                    seq=wire.seq,
                    peer=link.peer_id,
                    owner=follow.owner if follow is not None else None,
                )
                continue
            self.followed_epoch[channel] = wire.epoch
            if wire.kind == RESET_KIND:
                # The owner took the channel over (a new epoch): reload.
                self.hub.resync(channel, Stamp(wire.epoch, wire.seq or 0), ())
                self._metrics.relay_resyncs.labels("reset").inc()
                continue
            self.hub.publish(from_wire(wire))
            self._metrics.relay_events.labels("received").inc()

    def session_closed(self, session: IPeerSession) -> None:
        """A peer's session closed: it follows nothing here any more."""
        for channel in self._sessions.pop(session, set()):
            members = self.followers.get(channel)
            if members is not None:
                members.discard(session)
                if not members:
                    del self.followers[channel]
        self._count_channels()

    # Housekeeping

    def tick(self) -> None:
        """Periodic work (every detector tick): writes that waited too long
        for an unreachable owner are sequenced here; channels primed for a
        subscriber that never came are unfollowed."""
        if self.mesh is None:
            return
        now = self._now()
        for owner, queue in self._outbox.items():
            for item in queue:
                if item.owed or now - item.queued < self._forward_timeout:
                    continue
                self._log.warn(
                    "mesh relay: {owner} unreachable for {seconds} s; sequencing a write to {tenant}/{thread} here",
                    owner=owner,
                    seconds=self._forward_timeout,
                    tenant=item.event.channel[0],
                    thread=item.event.channel[1],
                )
                # Its subscribers here see it now; it stays owed to the
                # owner, whose followers get it when it is reachable (this
                # node's own numbering meets the owner's with a reset).
                self._sequence(item.event)
                item.owed = True
        self._metrics.relay_queue.set(self._queued())
        grace = max(5.0, 5 * self._prime_timeout)
        for channel, follow in list(self.following.items()):
            if not self.hub.subscribers(channel) and follow.pending is None and now - follow.since >= grace:
                del self.following[channel]
                self._unfollow_at(follow.owner, [channel])
            elif not follow.synced and follow.pending is None and self._link_to(follow.owner) is not None:
                self._follow(follow.owner, [channel])
        if now - self._pruned >= PRUNE_SECONDS:
            self._pruned = now
            # The hub forgets idle channels; so does the relay.
            for channel, epoch in list(self.followed_epoch.items()):
                position = self.hub.position(channel)
                if position is None or position.epoch != epoch:
                    del self.followed_epoch[channel]
            for channel in list(self.sequenced):
                if self.hub.position(channel) is None:
                    self._forget_sequenced(channel)
        self._count_channels()

    def _count_channels(self) -> None:
        if self.mesh is None:
            return
        self._metrics.relay_channels.labels("followed").set(len(self.following))
        self._metrics.relay_channels.labels("owned_followers").set(len(self.followers))
