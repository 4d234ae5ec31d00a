# -*- test-case-name: tests.unit.live.test_hub -*-
"""The hub: channels, sequence numbers, history, interest, fan-out.

Pure logic: no reactor, no sockets, no transport. A channel is
``(tenant_id, thread_id)``. :meth:`Hub.publish` is the one entry point for
events, whether a local writer made them (they arrive unstamped and this hub
stamps them) or they come from elsewhere (a mesh relay hands over events
already stamped by the channel's sequencer). ``docs/live-protocol.md``
("Sequence numbers") states the rules and what a relay must guarantee.

Each stamped event becomes one :class:`Prepared`, whose wire forms (the JSON
message, the WebSocket frame, the SSE record) are built once, on first use,
and shared by every recipient and by the history.
"""

from __future__ import annotations

import base64
import secrets
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from . import messages
from .fanout import SlicedFanout

ChannelKey = tuple[str, str]
_log = Logger()


def new_epoch() -> str:
    """A random epoch: 13 lower-case base32 characters (65 bits)."""
    return base64.b32encode(secrets.token_bytes(8)).decode("ascii").rstrip("=").lower()


@dataclass(frozen=True)
class Stamp:
    """An event's place in its channel: ``seq`` counts up within ``epoch``."""

    epoch: str
    seq: int


@dataclass(frozen=True)
class Event:
    """Something that happened on a channel.

    :ivar kind: ``comment.created``, ``comment.edited``, ...
    :ivar data: the JSON value subscribers receive.
    :ivar author_id: the author the event comes from; viewers who blocked
        that author do not receive it. ``None`` for events of no author.
    :ivar stamp: ``None`` for a local write (this hub sequences it); set by
        the channel's sequencer for events relayed from elsewhere.
    :ivar origin: the node the event was published on (for relays and logs).
    """

    channel: ChannelKey
    kind: str
    data: Mapping[str, Any]
    author_id: str | None = None
    stamp: Stamp | None = None
    origin: str = ""


class Prepared:
    """A stamped event (or a channel reset) ready to send: serialized once.

    :ivar ws: the WebSocket frame, filled by the WebSocket transport on first
        use; ``sse``: likewise the SSE record.
    """

    __slots__ = ("event", "stamp", "at", "reset", "_payload", "ws", "sse", "sse_chunk")

    def __init__(self, event: Event, stamp: Stamp, at: float, *, reset: bool = False) -> None:
        self.event = event
        self.stamp = stamp
        self.at = at
        self.reset = reset
        self._payload: bytes | None = None
        self.ws: bytes | None = None
        self.sse: bytes | None = None
        self.sse_chunk: bytes | None = None

    @property
    def channel_name(self) -> str:
        """The channel's public name, ``tenant/thread``."""
        return messages.channel_name(*self.event.channel)

    @property
    def event_id(self) -> str:
        """``<epoch>-<seq>``."""
        return messages.event_id(self.stamp.epoch, self.stamp.seq)

    @property
    def payload(self) -> bytes:
        """The JSON message (built once)."""
        if self._payload is None:
            channel = self.channel_name
            if self.reset:
                self._payload = messages.reset(channel, self.stamp.epoch, self.stamp.seq)
            else:
                e = self.event
                self._payload = messages.event(channel, self.stamp.epoch, self.stamp.seq, e.kind, e.data)
        return self._payload


class Outlet(Protocol):
    """Where a subscription's events go: one connection (WebSocket or SSE)."""

    def push(self, prepared: Prepared) -> int:
        """Send one prepared event; returns the bytes queued (0 if dropped)."""


_NO_BLOCKS: frozenset[str] = frozenset()


@dataclass(eq=False, slots=True)
class Subscription:
    """One connection's interest in one channel.

    :ivar viewer: ``(tenant_id, author_id)`` of the viewer, when known.
    :ivar blocked: authors whose events this viewer does not receive.
    :ivar joined: the hub's count of subscriptions made, this one included:
        it grows along a channel's members in their order, so a sliced
        fan-out tells who joined after its publish without copying the
        members at the publish.
    """

    outlet: Outlet
    channel: ChannelKey
    viewer: tuple[str, str] | None = None
    blocked: frozenset[str] = _NO_BLOCKS
    joined: int = 0


Deliver = Callable[
    [Prepared, Collection[Subscription], "Collection[Subscription] | None"],
    tuple[int, int],
]


def deliver_each(
    prepared: Prepared,
    members: Collection[Subscription],
    skip: Collection[Subscription] | None,
) -> tuple[int, int]:
    """Push ``prepared`` to every member not in ``skip``.

    One outlet failing (a bug) is logged and does not keep the event from
    the others. (``try`` costs nothing in the loop until something raises.)

    :returns: ``(messages, bytes)`` queued.
    """
    sent = 0
    total = 0
    for sub in members:
        if skip and sub in skip:
            continue
        try:
            n = sub.outlet.push(prepared)
        except Exception:
            _log.failure("live: pushing an event to one subscriber failed")
            continue
        if n:
            sent += 1
            total += n
    return sent, total


class HubListener(Protocol):
    """What a relay (the mesh) learns from a hub."""

    def interest_changed(self, channel: ChannelKey, interested: bool) -> None:
        """The first local subscriber came, or the last one left."""

    def accepted(self, prepared: Prepared, local: bool) -> None:
        """An event entered the channel's history (``local``: stamped here)."""


@dataclass(frozen=True)
class Joined:
    """The answer to :meth:`Hub.subscribe`.

    :ivar epoch, seq: the channel's position now (after ``replay``).
    :ivar reload: the client's ``since`` cannot be served from history (or
        names another epoch): it must reload the thread; nothing is replayed.
    """

    subscription: Subscription
    epoch: str
    seq: int
    reload: bool
    replay: tuple[Prepared, ...]


class SinceInFuture(ValueError):
    """A ``since`` beyond the channel's sequence number, in the same epoch."""


@dataclass
class _Channel:
    epoch: str
    seq: int = 0
    history: deque[Prepared] = field(default_factory=deque)
    members: dict[Subscription, None] = field(default_factory=dict)
    #: author id -> the members that blocked that author.
    blockers: dict[str, set[Subscription]] = field(default_factory=dict)
    #: When the channel was last used (an event, a member leaving): an idle
    #: channel keeps its epoch for ``history_seconds``, so a reader who
    #: comes back meanwhile resumes instead of reloading.
    touched: float = 0.0
    #: This hub made the epoch (it sequences the channel). ``False`` when
    #: the numbering came from elsewhere (a relay): this hub may be behind
    #: it, so a ``since`` beyond its position means "reload", not an error.
    own: bool = True


@dataclass
class HubStats:
    """Counters a metrics layer reads (the hub itself exports nothing)."""

    published: int = 0
    relayed: int = 0
    duplicates: int = 0
    resets: int = 0
    delivered: int = 0
    bytes: int = 0


class Hub:
    """Channels of one node.

    :param history_events: events kept per channel.
    :param history_seconds: events older than this leave the history.
    :param deliver: the fan-out; transports may pass a faster one than
        :func:`deliver_each` (same contract).
    :param new_epoch: makes a channel's epoch when this hub starts sequencing it.
    :param fanout_slice_seconds: when positive, :meth:`publish` only stamps
        and records an event and queues its delivery, which runs on later
        turns of ``clock`` in slices of at most this long
        (:class:`~fastedge.live.fanout.SlicedFanout`); 0 delivers inside
        :meth:`publish`.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        history_events: int,
        history_seconds: float,
        deliver: Deliver = deliver_each,
        new_epoch: Callable[[], str] = new_epoch,
        fanout_slice_seconds: float = 0.0,
    ) -> None:
        self._clock = clock
        self._max_events = history_events
        self._max_age = history_seconds
        self._deliver = deliver
        self._new_epoch = new_epoch
        self._channels: dict[ChannelKey, _Channel] = {}
        self._viewers: dict[tuple[str, str], set[Subscription]] = {}
        self._listeners: list[HubListener] = []
        self.stats = HubStats()
        # Unsubscribes that happen while a fan-out walks the members (an
        # outlet closing itself on overflow) wait until it is done.
        self._fanning = False
        self._leaving: list[Subscription] = []
        #: Called with the seconds each fan-out took (for a histogram).
        self.on_fanout: Callable[[float, int], None] | None = None
        #: Called with the seconds from a publish to its last recipient
        #: when the fan-out is sliced (for a histogram).
        self.on_fanout_lag: Callable[[float], None] | None = None
        #: Subscriptions that left so far: a sliced fan-out checks who is
        #: still a member only when this has moved since the publish.
        self._departures = 0
        #: Subscriptions made so far (each one's :attr:`Subscription.joined`).
        self._joins = 0
        self._sliced: SlicedFanout | None = None
        if fanout_slice_seconds > 0:
            self._sliced = SlicedFanout(
                clock,
                slice_seconds=fanout_slice_seconds,
                deliver=deliver,
                departures=self._departure_count,
                joins=self._join_count,
                finished=self._fanned_out,
            )

    # Introspection

    def position(self, channel: ChannelKey) -> Stamp | None:
        """The channel's ``(epoch, seq)``, or ``None`` if this hub has no state for it."""
        state = self._channels.get(channel)
        return None if state is None else Stamp(state.epoch, state.seq)

    def interest(self) -> frozenset[ChannelKey]:
        """Channels with at least one local subscriber."""
        return frozenset(k for k, c in self._channels.items() if c.members)

    def subscribers(self, channel: ChannelKey) -> int:
        """How many local subscriptions ``channel`` has."""
        state = self._channels.get(channel)
        return 0 if state is None else len(state.members)

    def members(self, channel: ChannelKey) -> tuple[Subscription, ...]:
        """The local subscriptions of ``channel`` (a copy)."""
        state = self._channels.get(channel)
        return () if state is None else tuple(state.members)

    def subscription_count(self) -> int:
        """Local subscriptions over all channels."""
        return sum(len(c.members) for c in self._channels.values())

    def channel_count(self) -> int:
        """Channels this hub holds state for (subscribed or with history)."""
        return len(self._channels)

    @property
    def pending_fanouts(self) -> int:
        """Events published whose delivery has not finished (sliced fan-out)."""
        return 0 if self._sliced is None else self._sliced.pending

    @property
    def fanout_slices(self) -> int:
        """Slices the sliced fan-out has run."""
        return 0 if self._sliced is None else self._sliced.slices

    def flush(self) -> None:
        """Deliver every queued event now (before the node says goodbye)."""
        if self._sliced is not None:
            self._sliced.flush()

    def add_listener(self, listener: HubListener) -> None:
        """Tell ``listener`` about interest changes and accepted events."""
        self._listeners.append(listener)

    # The one entry point for events

    def publish(self, event: Event) -> Prepared | None:
        """Accept an event, record it, and fan it out to local subscribers.

        An unstamped event (a local write) gets the channel's next sequence
        number. A stamped one (from elsewhere) is taken as its sequencer
        numbered it: a repeat is dropped, a jump or a new epoch breaks the
        history and tells local subscribers to reload (a ``reset``).

        :returns: the prepared event, or ``None`` for a duplicate.
        """
        now = self._clock.seconds()
        channel = event.channel
        state = self._channels.get(channel)
        local = event.stamp is None
        if local:
            if state is None:
                state = self._channels[channel] = _Channel(self._new_epoch())
            state.seq += 1
            stamp = Stamp(state.epoch, state.seq)
            self.stats.published += 1
        else:
            stamp = event.stamp  # type: ignore[assignment]
            if state is None:
                state = self._channels[channel] = _Channel(stamp.epoch, stamp.seq - 1, own=False)
            if stamp.epoch == state.epoch and stamp.seq <= state.seq:
                self.stats.duplicates += 1
                return None
            if stamp.epoch != state.epoch or stamp.seq != state.seq + 1:
                self._reset(channel, state, stamp, now)
            state.seq = stamp.seq
            self.stats.relayed += 1
        prepared = Prepared(event, stamp, now)
        state.touched = now
        history = state.history
        history.append(prepared)
        self._trim(history, now)
        if state.members:
            skip = state.blockers.get(event.author_id) if event.author_id is not None else None
            self._fan_out(prepared, state.members, skip)
        for listener in self._listeners:
            listener.accepted(prepared, local)
        return prepared

    # Sequencing across nodes (fastedge.live.relay, docs/mesh.md)

    def ensure(self, channel: ChannelKey) -> Stamp:
        """The channel's position, making its state (a new epoch at 0) when
        this hub has none: a sequencer tells followers where numbering
        starts before the first event, so they never see an epoch change
        for it.
        """
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel(self._new_epoch())
            state.touched = self._clock.seconds()
        return Stamp(state.epoch, state.seq)

    def since(self, channel: ChannelKey, epoch: str, seq: int) -> tuple[Prepared, ...] | None:
        """The events after ``seq`` of ``epoch``, from history, in order
        (empty when ``seq`` is the current position).

        :returns: ``None`` when they cannot all be given: another epoch, a
            position beyond this hub's, or events aged out of history.
        """
        state = self._channels.get(channel)
        if state is None or state.epoch != epoch or seq > state.seq:
            return None
        if seq == state.seq:
            return ()
        self._trim(state.history, self._clock.seconds())
        history = state.history
        if not history or history[0].stamp.seq > seq + 1:
            return None
        return tuple(p for p in history if p.stamp.seq > seq)

    def history(self, channel: ChannelKey) -> tuple[Prepared, ...]:
        """The events of the channel's current epoch still in history."""
        state = self._channels.get(channel)
        if state is None:
            return ()
        self._trim(state.history, self._clock.seconds())
        return tuple(p for p in state.history if p.stamp.epoch == state.epoch and not p.reset)

    def resync(self, channel: ChannelKey, position: Stamp, events: Iterable[Event]) -> str:
        """Bring a followed channel to its sequencer's ``position``.

        ``events`` are the sequencer's stamped events this hub may have
        missed, in order (each goes through :meth:`publish`: repeats are
        dropped). If they do not close the gap, the history breaks and local
        subscribers are told to reload (a ``reset`` at ``position``); a
        channel with no state here simply takes the position.

        :returns: ``"replayed"`` (events filled the gap), ``"current"``
            (nothing was missing) or ``"reset"`` (subscribers must reload).
        """
        events = list(events)
        resets = self.stats.resets
        state = self._channels.get(channel)
        if state is None:
            ours = [e.stamp for e in events if e.stamp is not None and e.stamp.epoch == position.epoch]
            state = _Channel(position.epoch, ours[0].seq - 1 if ours else position.seq, own=False)
            state.touched = self._clock.seconds()
            self._channels[channel] = state
        replayed = 0
        for event in events:
            if self.publish(event) is not None:
                replayed += 1
        state = self._channels[channel]
        if state.epoch == position.epoch and state.seq >= position.seq:
            if self.stats.resets != resets:
                return "reset"
            return "replayed" if replayed else "current"
        # A gap the events did not fill (or another epoch): start over at
        # the sequencer's position; local subscribers reload.
        self._reset(
            channel,
            state,
            Stamp(position.epoch, position.seq + 1),
            self._clock.seconds(),
        )
        state.seq = position.seq
        return "reset"

    def _reset(self, channel: ChannelKey, state: _Channel, stamp: Stamp, now: float) -> None:
        """History cannot be continuous: drop it, move to ``stamp``, tell members."""
        self.stats.resets += 1
        self._log.info(
            "live channel {tenant}/{thread} reset from {old_epoch}:{old_seq} to {epoch}:{seq}",
            tenant=channel[0],
            thread=channel[1],
            old_epoch=state.epoch,
            old_seq=state.seq,
            epoch=stamp.epoch,
            seq=stamp.seq,
        )
        state.history.clear()
        state.epoch = stamp.epoch
        state.own = False
        if state.members:
            # Members go on from just before the stamped event, which follows.
            notice = Prepared(
                Event(channel, "reset", {}),
                Stamp(stamp.epoch, stamp.seq - 1),
                now,
                reset=True,
            )
            self._fan_out(notice, state.members, None)

    def _fan_out(
        self,
        prepared: Prepared,
        members: dict[Subscription, None],
        skip: Collection[Subscription] | None,
    ) -> None:
        if self._sliced is not None:
            # ``members`` is the channel's own map: the recipients are its
            # keys now, and a member that leaves before its turn is skipped.
            self._sliced.submit(prepared, members, skip)
            return
        started = self._clock.seconds() if self.on_fanout is not None else 0.0
        self._fanning = True
        try:
            sent, total = self._deliver(prepared, members, skip)
        finally:
            self._fanning = False
            if self._leaving:
                leaving, self._leaving = self._leaving, []
                for sub in leaving:
                    self.unsubscribe(sub)
        self.stats.delivered += sent
        self.stats.bytes += total
        if self.on_fanout is not None:
            self.on_fanout(self._clock.seconds() - started, sent)

    def _departure_count(self) -> int:
        return self._departures

    def _join_count(self) -> int:
        return self._joins

    def _fanned_out(self, prepared: Prepared, sent: int, nbytes: int, work: float, lag: float) -> None:
        """A sliced fan-out reached its last recipient."""
        self.stats.delivered += sent
        self.stats.bytes += nbytes
        if self.on_fanout is not None:
            self.on_fanout(work, sent)
        if self.on_fanout_lag is not None:
            self.on_fanout_lag(lag)

    def count_delivered(self, sent: int, nbytes: int) -> None:
        """Count messages a transport sent outside a fan-out (a replay)."""
        self.stats.delivered += sent
        self.stats.bytes += nbytes

    def _trim(self, history: deque[Prepared], now: float) -> None:
        while len(history) > self._max_events:
            history.popleft()
        oldest = now - self._max_age
        while history and history[0].at < oldest:
            history.popleft()

    # Subscribers

    def subscribe(
        self,
        channel: ChannelKey,
        outlet: Outlet,
        *,
        since: int | None = None,
        epoch: str | None = None,
        viewer: tuple[str, str] | None = None,
        blocked: Iterable[str] = _NO_BLOCKS,
    ) -> Joined:
        """Add a subscription and compute what it missed.

        :param since: the last sequence number the client has (``None``:
            it has nothing to recover).
        :param epoch: the epoch ``since`` belongs to; a different one means
            the client must reload.
        :raises SinceInFuture: ``since`` is beyond the channel's position in
            the client's epoch (or the client named no epoch), and this hub
            made that epoch (in a numbering it follows, the answer is
            ``reload``: this node is behind the one the client was on).
        """
        now = self._clock.seconds()
        state = self._channels.get(channel)
        if state is None:
            state = _Channel(self._new_epoch())
        self._trim(state.history, now)
        reload = False
        replay: tuple[Prepared, ...] = ()
        if since is not None:
            if epoch is not None and epoch != state.epoch:
                reload = True
            elif since > state.seq and not state.own:
                # A numbering this hub follows, and it is behind the node
                # the client was on: the client reloads (never an error,
                # never a silent gap).
                reload = True
            elif since > state.seq:
                raise SinceInFuture("since {} is beyond the channel's sequence number {}".format(since, state.seq))
            elif since < state.seq:
                history = state.history
                first = history[0].stamp.seq if history else state.seq + 1
                if since + 1 < first:
                    reload = True
                else:
                    replay = tuple(p for p in history if p.stamp.seq > since)
        blocked = frozenset(blocked) if blocked else _NO_BLOCKS
        self._joins += 1
        sub = Subscription(outlet, channel, viewer, blocked, self._joins)
        if sub.blocked:
            replay = tuple(p for p in replay if p.event.author_id not in sub.blocked)
        self._channels[channel] = state
        first_member = not state.members
        state.members[sub] = None
        for author in sub.blocked:
            state.blockers.setdefault(author, set()).add(sub)
        if viewer is not None:
            self._viewers.setdefault(viewer, set()).add(sub)
        if first_member:
            for listener in self._listeners:
                listener.interest_changed(channel, True)
        return Joined(sub, state.epoch, state.seq, reload, replay)

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a subscription (a no-op if it is gone already)."""
        if self._fanning:
            self._leaving.append(sub)
            return
        state = self._channels.get(sub.channel)
        if state is None or sub not in state.members:
            return
        del state.members[sub]
        self._departures += 1
        for author in sub.blocked:
            blockers = state.blockers.get(author)
            if blockers is not None:
                blockers.discard(sub)
                if not blockers:
                    del state.blockers[author]
        if sub.viewer is not None:
            subs = self._viewers.get(sub.viewer)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._viewers[sub.viewer]
        if not state.members:
            state.touched = self._clock.seconds()
            for listener in self._listeners:
                listener.interest_changed(sub.channel, False)

    def set_blocked(self, viewer: tuple[str, str], author_id: str, blocked: bool) -> int:
        """A viewer blocked (or unblocked) an author: apply it to the viewer's
        live subscriptions from the next event on.

        :returns: how many subscriptions changed.
        """
        changed = 0
        for sub in self._viewers.get(viewer, ()):
            if (author_id in sub.blocked) == blocked:
                continue
            state = self._channels[sub.channel]
            if blocked:
                sub.blocked = sub.blocked | {author_id}
                state.blockers.setdefault(author_id, set()).add(sub)
            else:
                sub.blocked = sub.blocked - {author_id}
                blockers = state.blockers.get(author_id)
                if blockers is not None:
                    blockers.discard(sub)
                    if not blockers:
                        del state.blockers[author_id]
            changed += 1
        return changed

    # Housekeeping

    def expire(self) -> int:
        """Age out history and forget channels that have had neither members
        nor events for ``history_seconds``.

        :returns: how many channels were forgotten.
        """
        now = self._clock.seconds()
        gone = []
        for key, state in self._channels.items():
            self._trim(state.history, now)
            if not state.history and not state.members and state.touched < now - self._max_age:
                gone.append(key)
        for key in gone:
            del self._channels[key]
        return len(gone)
