# -*- test-case-name: tests.unit.mesh.test_memberlist -*-
"""Member lists by version: deltas since a version a peer names, full lists
in numbered chunks, and the exchange that asks for them.

Every node keeps a :class:`MemberTable`: the record (announcement, state)
of every member it knows, itself included, and a **version** that grows by
one at every change of a record (a member learned of, a new incarnation, a
new state; a change of load alone is not a change: load travels in
heartbeats). The table remembers at which version each member last
changed, so the changes since any version it had are known exactly (the
mesh never forgets a member, so no change is ever lost from it).

A peer asks ``members_since(incarnation, since, digest, have)``:

- ``since`` is the last version of this node's table the peer holds (0:
  none yet) and ``incarnation`` the life of this node it got it from (a
  restarted node numbers its versions anew);
- with ``since`` 0 the peer says what it already has: its digest (equal
  to ours: nothing to send) and ``have``, its (node, incarnation) pairs as
  ``node:incarnation;...``. The answer is then only the members it lacks
  or knows an older life of (what it would take from a full list).

The answer is a **delta** ``("delta", incarnation, from, to, records)``
when it fits in one chunk (:data:`CHUNK_MEMBERS` records); otherwise, and
when the peer names a version this table never had, the **full list**
in chunks ``("chunk", incarnation, version, index, total, records)``, of
which the answer carries the first; the peer fetches the others with
``members_chunk(incarnation, version, index)`` (a node keeps its last few
full lists for that). A chunk of :data:`CHUNK_MEMBERS` records stays far
below the mesh's message limit (``mesh.max_message_bytes``, 1 MiB), whatever
the size of the mesh.

The receiving side (:class:`PeerSync`, one per peer) applies a delta only
if it starts where it asked, and a full list only once every chunk of one
set (same incarnation, version and total) is in: chunks may come in any
order, a repeated chunk is ignored, a chunk out of range or of another set
is refused. Every refusal is logged and counted
(``fastedge_mesh_memberlist_refusals_total{reason}``); a malformed answer
is a bad message (the link is dropped, as for any other).

Nodes of the previous version answer logins with their whole member list
and know neither call: a login answered with a member list (this version
answers an empty one: the newcomer asks for what it lacks right after), or
a ``members_since`` refused as unknown, marks the peer as such, and it is
then asked ``members`` (the full list) as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from twisted.logger import Logger

from .messages import Announcement, BadMessage

__all__ = [
    "CHUNK_MEMBERS",
    "ChunkSet",
    "MemberListMetrics",
    "MemberTable",
    "PeerSync",
    "Record",
    "Refusal",
    "check_answer",
    "have_text",
    "parse_have",
]

#: Records per message: a delta with more changes is sent as a full list,
#: and a full list is cut into chunks of this many. An announcement takes
#: ~0.5 KB on the wire (at most ~2 KB with every field at its longest), so
#: a chunk stays under 0.5 MiB.
CHUNK_MEMBERS = 256

#: A member list holds at most this many members (as ``Membership.merge``).
MAX_MEMBERS = 10_000

#: Chunks in a full list at most.
MAX_CHUNKS = -(-MAX_MEMBERS // CHUNK_MEMBERS)

#: Full lists kept for ``members_chunk`` (one per table version).
KEPT_LISTS = 4

#: The states a record may carry (``NodeState`` values).
STATES = frozenset(("alive", "suspect", "dead", "leaving"))

#: One member: its announcement and its state as the sender sees it.
Record = tuple[Announcement, str]

_PAIR = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?):([0-9]{1,19})$")
_MAX_INT = 2**63 - 1


class Refusal(Exception):
    """An answer or request this node does not take (counted and logged
    under :attr:`reason`; the link stays up)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class MemberListMetrics:
    """``fastedge_mesh_memberlist_*``: what the member-list exchange sent,
    received and refused."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter(
            "fastedge_mesh_memberlist_sent_total",
            "Member-list answers this node sent, by kind (delta: changes since a version or what the peer "
            "lacks; chunk: one chunk of a full list; full: the whole list to a node of the previous version).",
            ["kind"],
            registry=registry,
        )
        self.received = Counter(
            "fastedge_mesh_memberlist_received_total",
            "Member-list answers this node received, by kind (delta, chunk, full).",
            ["kind"],
            registry=registry,
        )
        self.full_lists = Counter(
            "fastedge_mesh_memberlist_full_lists_total",
            "Full member lists, by direction (sent: a first chunk answered; received: a complete set applied).",
            ["direction"],
            registry=registry,
        )
        self.refusals = Counter(
            "fastedge_mesh_memberlist_refusals_total",
            "Member-list requests and answers refused, by reason (unknown_version: a version this node never "
            "had; mismatch: a delta not from the version asked or of another incarnation; chunk_range, "
            "chunk_mismatch, chunk_repeat: a chunk out of range, of another set, or again; incomplete: a "
            "chunk set that never completed; gone: a full list the peer no longer keeps).",
            ["reason"],
            registry=registry,
        )


def have_text(pairs: Iterable[tuple[str, int]]) -> str:
    """The (node, incarnation) pairs a node has, as ``members_since`` sends
    them: ``node:incarnation`` joined by ``;``."""
    return ";".join("{}:{}".format(n, i) for n, i in pairs)


def parse_have(text: Any) -> dict[str, int]:
    """The pairs of :func:`have_text`.

    :raises BadMessage: not such a string, or more than :data:`MAX_MEMBERS` pairs.
    """
    if not isinstance(text, str):
        raise BadMessage("have must be a string of node:incarnation pairs")
    if not text:
        return {}
    parts = text.split(";")
    if len(parts) > MAX_MEMBERS:
        raise BadMessage("have names more than {} members".format(MAX_MEMBERS))
    out: dict[str, int] = {}
    for part in parts:
        m = _PAIR.match(part)
        if m is None or int(m.group(3)) > _MAX_INT:
            raise BadMessage("have must be node:incarnation pairs")
        out[m.group(1)] = max(out.get(m.group(1), 0), int(m.group(3)))
    return out


def _same_record(a: Record, b: Record) -> bool:
    """Equal but for the load (which changes with every heartbeat)."""
    if a[1] != b[1]:
        return False
    x, y = a[0], b[0]
    return all(getattr(x, name) == getattr(y, name) for name in Announcement._FIELDS if name != "load")


class MemberTable:
    """This node's member records, versioned (see the module docstring).

    Pure data: no clock, no I/O.

    :param chunk_members: records per delta or chunk at most (smaller in tests).
    """

    def __init__(self, chunk_members: int = CHUNK_MEMBERS) -> None:
        if not 1 <= chunk_members <= CHUNK_MEMBERS:
            raise ValueError("chunk_members must be from 1 to {}".format(CHUNK_MEMBERS))
        self.chunk_members = chunk_members
        self.version = 0
        #: node id -> record, in the order of their last change (oldest first).
        self._records: dict[str, Record] = {}
        #: node id -> the version of its last change.
        self._changed: dict[str, int] = {}
        #: The last few full lists, by version.
        self._lists: dict[int, list[Record]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def put(self, announcement: Announcement, state: str) -> bool:
        """Record a member's announcement and state.

        :returns: whether that was a change (and the version grew).
        """
        node_id = announcement.node_id
        record = (announcement, state)
        old = self._records.get(node_id)
        if old is not None and _same_record(old, record):
            return False
        self.version += 1
        # Re-inserted at the end: the dict stays in order of change.
        self._records.pop(node_id, None)
        self._records[node_id] = record
        self._changed[node_id] = self.version
        return True

    def records(self) -> list[Record]:
        """Every record (the full list)."""
        return list(self._records.values())

    def since(self, version: int) -> list[Record] | None:
        """The records changed after ``version`` (oldest change first).

        :returns: ``None`` if this table never had ``version``.
        """
        if version < 0 or version > self.version:
            return None
        out: list[Record] = []
        changed = self._changed
        for node_id in reversed(self._records):
            if changed[node_id] <= version:
                break
            out.append(self._records[node_id])
        out.reverse()
        return out

    def lacking(self, have: dict[str, int]) -> list[Record]:
        """The records a node with the (node, incarnation) pairs ``have``
        would take from the full list: members it does not know, and newer
        lives of those it does."""
        return [r for r in self._records.values() if have.get(r[0].node_id, -1) < r[0].incarnation]

    def full(self, version: int | None = None) -> list[Record] | None:
        """The full list at ``version`` (default: now), if still kept."""
        if version is None:
            version = self.version
            kept = self._lists.get(version)
            if kept is None:
                kept = self._lists[version] = self.records()
                while len(self._lists) > KEPT_LISTS:
                    del self._lists[min(self._lists)]
            return kept
        return self._lists.get(version)

    def chunk(self, incarnation: int, version: int | None, index: int) -> tuple[Any, ...] | None:
        """Chunk ``index`` of the full list at ``version`` (default: now)
        as sent: ``("chunk", incarnation, version, index, total, records)``.

        :returns: ``None`` if that list is no longer kept or has no such chunk.
        """
        records = self.full(version)
        if records is None:
            return None
        at = self.version if version is None else version
        size = self.chunk_members
        total = max(1, -(-len(records) // size))
        if not 0 <= index < total:
            return None
        part = records[index * size : (index + 1) * size]
        return ("chunk", incarnation, at, index, total, [tuple(r) for r in part])

    def answer(
        self,
        *,
        incarnation: int,
        asked_incarnation: int,
        since: int,
        digest: str,
        my_digest: str,
        have: dict[str, int] | None,
    ) -> tuple[tuple[Any, ...], str | None]:
        """The answer to ``members_since``.

        :param incarnation: this node's incarnation.
        :param asked_incarnation: the incarnation the peer's ``since`` is of.
        :returns: the answer and, when the peer named a version this table
            never had, the refusal reason (``unknown_version``: answered
            with the full list).
        """
        refused = None
        if since > 0 and asked_incarnation == incarnation:
            changed = self.since(since)
            if changed is None:
                refused = "unknown_version"
            elif len(changed) <= self.chunk_members:
                return ("delta", incarnation, since, self.version, changed), None
        elif since == 0:
            if digest == my_digest:
                return ("delta", incarnation, 0, self.version, []), None
            if have is not None:
                lacking = self.lacking(have)
                if len(lacking) <= self.chunk_members:
                    return ("delta", incarnation, 0, self.version, lacking), None
        first = self.chunk(incarnation, None, 0)
        assert first is not None
        return first, refused


def _records(value: Any) -> list[Record]:
    if not isinstance(value, (list, tuple)) or len(value) > CHUNK_MEMBERS:
        raise BadMessage("member records must be a list of at most {}".format(CHUNK_MEMBERS))
    for item in value:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not isinstance(item[0], Announcement)
            or item[1] not in STATES
        ):
            raise BadMessage("a member must be (announcement, state)")
    return [(a, s) for a, s in value]


def _version(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_INT:
        raise BadMessage("{} must be an integer from 0".format(what))
    return value


@dataclass(frozen=True)
class Delta:
    """A delta answer: the records changed from version ``start`` to ``end``."""

    incarnation: int
    start: int
    end: int
    records: list[Record]


@dataclass(frozen=True)
class Chunk:
    """One chunk of a full list."""

    incarnation: int
    version: int
    index: int
    total: int
    records: list[Record]


def check_answer(answer: Any) -> Delta | Chunk:
    """The shape of a ``members_since`` or ``members_chunk`` answer.

    :raises BadMessage: malformed (the link is dropped).
    """
    if not isinstance(answer, (list, tuple)) or not answer:
        raise BadMessage("a member-list answer must be a tuple")
    kind = answer[0]
    if kind == "delta" and len(answer) == 5:
        return Delta(
            _version(answer[1], "an incarnation"),
            _version(answer[2], "a version"),
            _version(answer[3], "a version"),
            _records(answer[4]),
        )
    if kind == "chunk" and len(answer) == 6:
        return Chunk(
            _version(answer[1], "an incarnation"),
            _version(answer[2], "a version"),
            _version(answer[3], "a chunk index"),
            _version(answer[4], "a chunk total"),
            _records(answer[5]),
        )
    raise BadMessage("a member-list answer must be a delta or a chunk")


class ChunkSet:
    """The chunks of one full list (one incarnation, version and total), in
    any order; complete once every index is in."""

    def __init__(self, incarnation: int, version: int, total: int) -> None:
        if not 1 <= total <= MAX_CHUNKS:
            raise Refusal("chunk_range", "a full list of {} chunks (at most {})".format(total, MAX_CHUNKS))
        self.incarnation = incarnation
        self.version = version
        self.total = total
        self._parts: dict[int, list[Record]] = {}

    def add(self, chunk: Chunk) -> None:
        """Take one chunk.

        :raises Refusal: out of range (``chunk_range``), of another set
            (``chunk_mismatch``), or already in (``chunk_repeat``: ignored).
        """
        if not 0 <= chunk.index < self.total:
            raise Refusal("chunk_range", "chunk {} of a list of {}".format(chunk.index, self.total))
        if (chunk.incarnation, chunk.version, chunk.total) != (self.incarnation, self.version, self.total):
            raise Refusal(
                "chunk_mismatch",
                "a chunk of version {} ({} chunks, incarnation {}) in a set of version {} ({} chunks, "
                "incarnation {})".format(
                    chunk.version, chunk.total, chunk.incarnation, self.version, self.total, self.incarnation
                ),
            )
        if chunk.index in self._parts:
            raise Refusal("chunk_repeat", "chunk {} of version {} again".format(chunk.index, self.version))
        self._parts[chunk.index] = chunk.records

    @property
    def complete(self) -> bool:
        """Every chunk is in."""
        return len(self._parts) == self.total

    def records(self) -> list[Record]:
        """The full list, once complete."""
        assert self.complete
        out: list[Record] = []
        for i in range(self.total):
            out.extend(self._parts[i])
        return out

    def missing(self) -> list[int]:
        """The indexes not yet in."""
        return [i for i in range(self.total) if i not in self._parts]


@dataclass
class PeerSync:
    """What this node knows of one peer's member table (one incarnation of
    the peer: a restart makes a new one).

    :ivar baseline: the last version of the peer's table applied here (0: none).
    :ivar legacy: the peer is of the previous version (full lists only).
    :ivar busy: a pull is in flight.
    :ivar done: called when the pull in flight ends with an answer taken in
        (the membership paces pulls with it: ``partialview.PullBackoff``).
    """

    baseline: int = 0
    legacy: bool = False
    busy: bool = False
    chunks: ChunkSet | None = field(default=None, repr=False)
    done: Callable[[], None] | None = field(default=None, repr=False)

    def check_delta(self, delta: Delta, incarnation: int, asked: int) -> None:
        """A delta answer to a pull that named version ``asked``.

        :raises Refusal: of another incarnation of the peer, not starting
            at ``asked``, or ending before it (``mismatch``).
        """
        if delta.incarnation != incarnation:
            raise Refusal(
                "mismatch", "a delta of incarnation {} from incarnation {}".format(delta.incarnation, incarnation)
            )
        if delta.start != asked or delta.end < asked:
            raise Refusal(
                "mismatch",
                "a delta from version {} to {} for a pull since {}".format(delta.start, delta.end, asked),
            )

    def start_chunks(self, chunk: Chunk, incarnation: int) -> ChunkSet:
        """The first chunk of a full list: a new set.

        :raises Refusal: of another incarnation (``mismatch``) or out of range.
        """
        if chunk.incarnation != incarnation:
            raise Refusal(
                "mismatch", "a chunk of incarnation {} from incarnation {}".format(chunk.incarnation, incarnation)
            )
        chunks = ChunkSet(chunk.incarnation, chunk.version, chunk.total)
        chunks.add(chunk)
        self.chunks = chunks
        return chunks

    def pulled(self) -> None:
        """A pull ended with its answer taken in (or refused)."""
        self.busy = False
        self.chunks = None
        done, self.done = self.done, None
        if done is not None:
            done()


class MemberSync:
    """Pulls member lists from peers and answers their pulls, for one
    :class:`~fastedge.mesh.membership.Membership` (which does the calls and
    the merging: this class holds the decisions).

    :param call: ``(link, method, *args) -> Deferred`` (counted as work in flight).
    :param merge: applies records (raises ``BadMessage``).
    :param digest: this node's member digest now.
    :param pairs: this node's (node, incarnation) pairs, itself included.
    :param failures: counts and logs the failures of calls (``CallFailures``).
    """

    _log = Logger()

    def __init__(
        self,
        *,
        table: MemberTable,
        metrics: MemberListMetrics,
        call: Callable[..., Any],
        merge: Callable[[Sequence[Record]], None],
        digest: Callable[[], str],
        pairs: Callable[[], Iterable[tuple[str, int]]],
        failures: Any,
        states_matter: Callable[[], bool] = lambda: False,
    ) -> None:
        self.table = table
        self.metrics = metrics
        self._call = call
        self._merge = merge
        self._digest = digest
        self._pairs = pairs
        #: ``CallFailures``: where failed calls are counted and logged.
        self._failures = failures
        #: Whether peers go by the states a list reports, not only by the
        #: lives it names (past the full mesh, ``partialview``): then a
        #: first pull gets the whole list, states and all.
        self._states_matter = states_matter

    def refused(self, peer: str, reason: str, detail: str) -> None:
        """Count and log a refusal."""
        self.metrics.refusals.labels(reason).inc()
        self._log.warn(
            "mesh: member list from {peer} refused ({reason}): {detail}",
            peer=peer,
            reason=reason,
            detail=detail,
        )

    # Answering

    def answer_since(
        self, peer: str, *, incarnation: int, asked_incarnation: int, since: int, digest: str, have: Any
    ) -> tuple[Any, ...]:
        """Answer a peer's ``members_since`` (arguments already checked but
        ``have``).

        :raises BadMessage: ``have`` is malformed.
        """
        my_digest = self._digest()
        if since == 0 and self._states_matter():
            # What the peer has says nothing of the states it holds.
            digest, have = "", ""
        # ``have`` is read only when needed (an equal digest, the common
        # case once a cluster has converged, needs nothing).
        parsed = parse_have(have) if since == 0 and have and digest != my_digest else None
        answer, refused = self.table.answer(
            incarnation=incarnation,
            asked_incarnation=asked_incarnation,
            since=since,
            digest=digest,
            my_digest=my_digest,
            have=parsed,
        )
        if refused is not None:
            self.refused(
                peer,
                refused,
                "a delta since version {} asked; this table is at {} (sent the full list)".format(
                    since, self.table.version
                ),
            )
        if answer[0] == "delta":
            self.metrics.sent.labels("delta").inc()
        else:
            self.metrics.sent.labels("chunk").inc()
            self.metrics.full_lists.labels("sent").inc()
        return answer

    def answer_chunk(self, incarnation: int, version: int, index: int) -> tuple[Any, ...] | None:
        """Answer a peer's ``members_chunk`` (``None``: not kept)."""
        answer = self.table.chunk(incarnation, version, index)
        if answer is not None:
            self.metrics.sent.labels("chunk").inc()
        return answer

    # Pulling

    def pull(
        self, peer_id: str, incarnation: int, sync: PeerSync, link: Any, done: Callable[[], None] | None = None
    ) -> None:
        """Ask the peer (incarnation ``incarnation``, over ``link``) for what
        this node lacks: the changes since the version last applied, or,
        with none yet, what it lacks given this node's pairs.

        :param done: called once the answer is taken in (or refused).
        """
        if sync.busy:
            return
        sync.busy = True
        sync.done = done
        before = self._digest()
        if sync.legacy:
            self._pull_full(peer_id, sync, link, before)
            return
        since = sync.baseline
        have = have_text(self._pairs()) if since == 0 else ""
        d = self._call(link, "members_since", incarnation, since, before, have)
        d.addCallback(self._got, peer_id, incarnation, sync, link, since, before)
        d.addErrback(self._failed, peer_id, incarnation, sync, link, before)
        self._failures.watch(d, "members_since", peer_id)

    def _pull_full(self, peer_id: str, sync: PeerSync, link: Any, before: str) -> None:
        def got(members: Any) -> None:
            self.metrics.received.labels("full").inc()
            try:
                self._merge(members)
            except BadMessage as e:
                link.abort("bad_message", str(e))
            self._done(peer_id, sync, before)

        d = self._call(link, "members").addCallback(got).addErrback(self._broken, sync)
        self._failures.watch(d, "members", peer_id)

    def _failed(self, f: Any, peer_id: str, incarnation: int, sync: PeerSync, link: Any, before: str) -> Any:
        sync.chunks = None
        if "no such call" in f.getErrorMessage():
            # A node of the previous version (it refuses calls it does not
            # know): full lists, as it knows them.
            self._log.info(
                "mesh: {peer} does not know member-list deltas (a previous version): pulling full lists",
                peer=peer_id,
            )
            sync.legacy = True
            self._pull_full(peer_id, sync, link, before)
            return None
        sync.busy = False
        return f

    def _got(
        self, answer: Any, peer_id: str, incarnation: int, sync: PeerSync, link: Any, asked: int, before: str
    ) -> None:
        try:
            parsed = check_answer(answer)
        except BadMessage as e:
            sync.busy = False
            link.abort("bad_message", str(e))
            return
        try:
            if isinstance(parsed, Delta):
                self.metrics.received.labels("delta").inc()
                sync.check_delta(parsed, incarnation, asked)
                self._apply(peer_id, sync, link, parsed.records, parsed.end, before)
                return
            self.metrics.received.labels("chunk").inc()
            chunks = sync.start_chunks(parsed, incarnation)
        except Refusal as r:
            self.refused(peer_id, r.reason, r.detail)
            # Start over from nothing next time.
            sync.baseline = 0
            self._done(peer_id, sync, before)
            return
        if chunks.complete:
            self._complete(peer_id, sync, link, chunks, before)
            return
        waiting = {"n": len(chunks.missing())}
        for index in chunks.missing():
            d = self._call(link, "members_chunk", incarnation, chunks.version, index)
            d.addCallbacks(
                self._got_chunk,
                self._chunk_failed,
                callbackArgs=(peer_id, sync, chunks, link, before, waiting),
                errbackArgs=(peer_id, sync, chunks, link, before, waiting),
            )
            d.addErrback(self._broken, sync)
            self._failures.watch(d, "members_chunk", peer_id)

    def _broken(self, f: Any, sync: PeerSync) -> Any:
        """Something failed while taking an answer in: the pull is over
        (the next one starts afresh); the failure goes on to be logged."""
        sync.busy = False
        sync.chunks = None
        return f

    def _got_chunk(
        self,
        answer: Any,
        peer_id: str,
        sync: PeerSync,
        chunks: ChunkSet,
        link: Any,
        before: str,
        waiting: dict[str, int],
    ) -> None:
        waiting["n"] -= 1
        if sync.chunks is not chunks:
            return
        try:
            parsed = check_answer(answer)
            if not isinstance(parsed, Chunk):
                raise BadMessage("a chunk is expected")
        except BadMessage as e:
            sync.chunks = None
            sync.busy = False
            link.abort("bad_message", str(e))
            return
        self.metrics.received.labels("chunk").inc()
        try:
            chunks.add(parsed)
        except Refusal as r:
            self.refused(peer_id, r.reason, r.detail)
        self._chunk_settled(peer_id, sync, chunks, link, before, waiting)

    def _chunk_failed(
        self,
        f: Any,
        peer_id: str,
        sync: PeerSync,
        chunks: ChunkSet,
        link: Any,
        before: str,
        waiting: dict[str, int],
    ) -> None:
        waiting["n"] -= 1
        if sync.chunks is not chunks:
            return
        if "gone" in f.getErrorMessage():
            self.refused(peer_id, "gone", "version {} of the full list is no longer kept".format(chunks.version))
        else:
            self._failures.failed("members_chunk", peer_id, f)
        self._chunk_settled(peer_id, sync, chunks, link, before, waiting)

    def _chunk_settled(
        self, peer_id: str, sync: PeerSync, chunks: ChunkSet, link: Any, before: str, waiting: dict[str, int]
    ) -> None:
        if chunks.complete:
            self._complete(peer_id, sync, link, chunks, before)
        elif waiting["n"] <= 0:
            self.refused(
                peer_id,
                "incomplete",
                "chunks {} of version {} never came (nothing applied)".format(chunks.missing(), chunks.version),
            )
            self._done(peer_id, sync, before)

    def _complete(self, peer_id: str, sync: PeerSync, link: Any, chunks: ChunkSet, before: str) -> None:
        self.metrics.full_lists.labels("received").inc()
        self._apply(peer_id, sync, link, chunks.records(), chunks.version, before)

    def _apply(
        self, peer_id: str, sync: PeerSync, link: Any, records: Sequence[Record], version: int, before: str
    ) -> None:
        try:
            self._merge(records)
        except BadMessage as e:
            sync.busy = False
            sync.chunks = None
            link.abort("bad_message", str(e))
            return
        sync.baseline = version
        self._done(peer_id, sync, before)

    def _done(self, peer_id: str, sync: PeerSync, before: str) -> None:
        sync.pulled()
