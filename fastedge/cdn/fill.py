# -*- test-case-name: tests.unit.cdn.test_resource,tests.integration.test_cdn -*-
"""Coalesced downloads: one fetch per object however many requests want it,
streamed to all of them while it is written to the cache.

A :class:`Fill` downloads one object from a source (a peer that has it, else
the origin) into a temporary file. Requests that arrive while it runs join
it (:meth:`Filler.fill` says whether they did). Each request reads the
temporary file through its own :class:`~fastedge.cdn.sender.BodySender`, as far as the download
has got, so the first bytes reach the first client while the rest is still
arriving, a slow client never slows the download, and a client that goes
away leaves the download running for the cache.

When the body is complete it is verified (the announced length, and the
checksums the source vouches for) and only then renamed into the cache. A
short or corrupt body is deleted and every client still reading it has its
connection aborted, so none mistakes a truncated body for the object.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .cache import DiskCache, Entry, MemoryTier, ObjectMeta
from .interfaces import IBodyReceiver, IObjectSource, IPeerLocator, ISourceResponse
from .keys import cache_id
from .metrics import CdnMetrics
from .negative import NegativeCache
from .origin import OriginError

if TYPE_CHECKING:
    from .sender import BodySender

__all__ = ["Fill", "Filler", "NoPeers"]


@implementer(IPeerLocator)
class NoPeers:
    """The locator used until the mesh exists: nobody else has anything."""

    def locate(self, tenant: str, key: str) -> Deferred[None]:
        return succeed(None)


class _Checker:
    """Running checksums of a body, compared with what the source vouched for."""

    def __init__(self, expected: dict[str, str]) -> None:
        self._expected = expected
        self._md5 = hashlib.md5(usedforsecurity=False) if "md5" in expected else None
        self._sha256 = hashlib.sha256() if "sha256" in expected else None
        self._sha1 = hashlib.sha1(usedforsecurity=False) if "sha1" in expected else None
        self._crc32 = 0 if "crc32" in expected else None

    def update(self, data: bytes) -> None:
        if self._md5 is not None:
            self._md5.update(data)
        if self._sha256 is not None:
            self._sha256.update(data)
        if self._sha1 is not None:
            self._sha1.update(data)
        if self._crc32 is not None:
            self._crc32 = zlib.crc32(data, self._crc32)

    def mismatch(self) -> str | None:
        """The name of the first checksum that does not match, or ``None``."""
        e = self._expected
        if self._md5 is not None and self._md5.hexdigest() != e["md5"]:
            return "md5"
        if self._sha256 is not None and base64.b64encode(self._sha256.digest()).decode() != e["sha256"]:
            return "sha256"
        if self._sha1 is not None and base64.b64encode(self._sha1.digest()).decode() != e["sha1"]:
            return "sha1"
        if self._crc32 is not None and base64.b64encode(self._crc32.to_bytes(4, "big")).decode() != e["crc32"]:
            return "crc32"
        return None


@implementer(IBodyReceiver)
class Fill:
    """One download of one object (see the module docstring).

    ``state`` goes ``pending`` -> one of ``streaming`` (a body is arriving),
    ``not_modified`` (the stale copy is current), ``not_found``, ``failed``;
    ``streaming`` -> ``done`` or ``failed``.
    """

    _log = Logger()

    def __init__(self, owner: Filler, media: Any, key: str, stale: Entry | None) -> None:
        self._owner = owner
        self.media = media
        self.key = key
        self.id = cache_id(media.tenant_id, key)
        self.stale = stale
        self.state = "pending"
        self.error_kind: str | None = None
        self.meta: ObjectMeta | None = None
        self.entry: Entry | None = None
        self.received = 0
        self.source_name = "origin"
        self.superseded = False
        self._waiting: list[Deferred[Fill]] = []
        self._finishing: list[Deferred[Fill]] = []
        self._senders: set[BodySender] = set()
        self._response: ISourceResponse | None = None
        self._temp: str | None = None
        self._write_fd = -1
        self.read_fd = -1
        self._readers = 0
        self._checker: _Checker | None = None
        self._memory: list[bytes] | None = None
        self._idle: IDelayedCall | None = None

    # For requests

    def when_started(self) -> Deferred[Fill]:
        """Fires (never fails) once ``state`` has left ``pending``."""
        if self.state != "pending":
            return succeed(self)
        d: Deferred[Fill] = Deferred()
        self._waiting.append(d)
        return d

    def when_finished(self) -> Deferred[Fill]:
        """Fires (never fails) once the fill is over, stored or not."""
        if self.finished:
            return succeed(self)
        d: Deferred[Fill] = Deferred()
        self._finishing.append(d)
        return d

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "not_modified", "not_found")

    def attach(self, sender: BodySender) -> None:
        """A request reads this download's file; keeps it open until it leaves."""
        self._senders.add(sender)
        self._readers += 1

    def detach(self, sender: BodySender) -> None:
        self._senders.discard(sender)
        self._readers -= 1
        self._maybe_close_reader()

    # Running

    def start(self) -> None:
        d = cast(Deferred[Any], self._owner.peers.locate(self.media.tenant_id, self.key))
        d.addCallback(self._fetch_from)
        d.addCallbacks(self._answered, self._fetch_failed)
        d.addErrback(self._crashed)

    def _fetch_from(self, peer: IObjectSource | None) -> Deferred[ISourceResponse]:
        source = peer if peer is not None else self.media.origin
        self.source_name = source.name
        stale = self.stale
        fetched = cast(
            Deferred[ISourceResponse],
            source.fetch(
                self.media,
                self.key,
                etag=stale.meta.etag if stale is not None else None,
                last_modified=stale.meta.last_modified if stale is not None else None,
            ),
        )
        if peer is not None:
            # A peer is only a shortcut: any failure before its first bytes
            # (it lost the copy, timed out, went away) means the origin.
            fetched.addErrback(self._peer_failed)
        return fetched

    def _peer_failed(self, f: Failure) -> Deferred[ISourceResponse]:
        self._owner.metrics.peer_fallbacks.inc()
        self._log.warn(
            "fetching {tenant} {key} from a peer failed ({detail}); asking the origin",
            tenant=self.media.tenant_id,
            key=self.key,
            detail=f.getErrorMessage(),
        )
        return self._fetch_from(None)

    def _answered(self, response: ISourceResponse) -> None:
        owner = self._owner
        now = owner.clock.seconds()
        if response.status == 304 and self.stale is not None:
            owner.metrics.revalidations.labels("not_modified").inc()
            owner.cache.mark_validated(self.stale, now)
            self.entry = self.stale
            self._settle("not_modified")
            return
        if response.status == 404:
            if self.stale is not None:
                owner.metrics.revalidations.labels("gone").inc()
                owner.remove(self.stale.id, "gone")
            owner.negative.add(self.id, self.media.tenant_id, self.key, owner.negative_seconds)
            self._settle("not_found")
            return
        if response.status != 200 or response.meta is None:
            self._fail(
                "error",
                f"unexpected answer {response.status} from the {self.source_name}",
            )
            return
        if self.stale is not None:
            owner.metrics.revalidations.labels("changed").inc()
        self._response = response
        self.meta = response.meta
        self._checker = _Checker(response.checksums)
        if 0 <= self.meta.size <= owner.memory.max_object_bytes:
            self._memory = []
        self._temp = owner.cache.temp_path()
        self._write_fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.read_fd = os.open(self._temp, os.O_RDONLY)
        self._settle("streaming")
        self._arm_idle()
        response.deliver(self)

    def _fetch_failed(self, f: Failure) -> None:
        kind = f.value.kind if f.check(OriginError) else "error"
        detail = f.value.detail if f.check(OriginError) else f.getErrorMessage()
        if self.stale is not None:
            self._owner.metrics.revalidations.labels("failed").inc()
        self._log.warn(
            "fetching {tenant} {key} from the {source} failed: {detail}",
            tenant=self.media.tenant_id,
            key=self.key,
            source=self.source_name,
            detail=detail,
        )
        self.error_kind = kind
        self._settle("failed")

    def _crashed(self, f: Failure) -> None:
        self._log.failure(
            "fill of {tenant} {key} crashed",
            f,
            tenant=self.media.tenant_id,
            key=self.key,
        )
        if not self.finished:
            self._fail("error", "internal error")

    def _settle(self, state: str) -> None:
        self.state = state
        if self.finished:
            self._owner.finished(self)
        waiting, self._waiting = self._waiting, []
        if self.finished:
            waiting, self._finishing = waiting + self._finishing, []
        for d in waiting:
            d.callback(self)

    # IBodyReceiver

    def data(self, chunk: bytes) -> None:
        if self.state != "streaming":
            return
        assert self.meta is not None and self._checker is not None
        if self.meta.size >= 0 and self.received + len(chunk) > self.meta.size:
            self._fail(
                "long_body",
                f"the {self.source_name} sent more bytes than announced",
            )
            return
        os.write(self._write_fd, chunk)
        self._checker.update(chunk)
        if self._memory is not None:
            self._memory.append(chunk)
        self.received += len(chunk)
        self._owner.metrics.fetched_bytes.labels(self.source_name).inc(len(chunk))
        self._arm_idle()
        for sender in list(self._senders):
            sender.more()

    def done(self) -> None:
        if self.state != "streaming":
            return
        assert self.meta is not None and self._checker is not None and self._temp is not None
        self._disarm_idle()
        os.close(self._write_fd)
        self._write_fd = -1
        owner = self._owner
        if self.meta.size >= 0 and self.received != self.meta.size:
            self._fail(
                "short_body",
                f"the {self.source_name} sent {self.received} of {self.meta.size} bytes",
            )
            return
        mismatch = self._checker.mismatch()
        if mismatch is not None:
            self._fail(
                "checksum",
                f"the {self.source_name} body does not match its {mismatch}",
            )
            return
        meta = (
            self.meta
            if self.meta.size >= 0
            else ObjectMeta(
                self.received,
                self.meta.content_type,
                self.meta.etag,
                self.meta.last_modified,
            )
        )
        self.meta = meta
        if self.superseded:
            owner.metrics.fill_failures.labels("superseded").inc()
            os.unlink(self._temp)
        elif meta.size > owner.max_object_bytes:
            owner.metrics.fill_failures.labels("too_large").inc()
            os.unlink(self._temp)
        else:
            self.entry = owner.commit(self._temp, self.media.tenant_id, self.key, meta)
            if self._memory is not None:
                owner.memory.put(self.entry, b"".join(self._memory))
        self._memory = None
        self._temp = None
        self._settle("done")
        for sender in list(self._senders):
            sender.more()
        self._maybe_close_reader()

    def failed(self, reason: object) -> None:
        if self.state != "streaming":
            return
        if self.error_kind == "timeout":
            kind = "timeout"
        elif self.meta is not None and 0 <= self.received < self.meta.size:
            kind = "short_body"  # the connection closed before the announced length
        else:
            kind = "error"
        self._fail(
            kind,
            f"the {self.source_name} body was cut off after {self.received} bytes",
        )

    def _fail(self, kind: str, detail: str) -> None:
        """Give up: delete the partial file and abort readers mid-body."""
        self._disarm_idle()
        self._owner.metrics.fill_failures.labels(kind).inc()
        self._log.warn(
            "download of {tenant} {key} from the {source} failed ({kind}): {detail}",
            tenant=self.media.tenant_id,
            key=self.key,
            source=self.source_name,
            kind=kind,
            detail=detail,
        )
        was_streaming = self.state == "streaming"
        if self._response is not None and was_streaming:
            self._response.abort()
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self._temp is not None:
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass
            self._temp = None
        self._memory = None
        self.error_kind = "timeout" if kind == "timeout" else "error"
        self._settle("failed")
        for sender in list(self._senders):
            sender.abort()
        self._maybe_close_reader()

    def _arm_idle(self) -> None:
        timeout = self._owner.timeout
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = self._owner.clock.callLater(timeout, self._stalled)

    def _disarm_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _stalled(self) -> None:
        self._idle = None
        self.error_kind = "timeout"
        self._fail(
            "timeout",
            f"no data from the {self.source_name} for {self._owner.timeout} s",
        )

    def _maybe_close_reader(self) -> None:
        if self.read_fd >= 0 and self._readers <= 0 and self.finished:
            os.close(self.read_fd)
            self.read_fd = -1

    def cancel(self) -> None:
        """Stop at node shutdown."""
        if self.state == "streaming":
            self._fail("error", "the node is stopping")


class Filler:
    """Runs fills and remembers the ones in flight (see the module docstring)."""

    def __init__(
        self,
        *,
        cache: DiskCache,
        memory: MemoryTier,
        negative: NegativeCache,
        clock: IReactorTime,
        metrics: CdnMetrics,
        peers: IPeerLocator,
        timeout: float,
        negative_seconds: float,
        max_object_bytes: int,
        commit: Callable[[str, str, str, ObjectMeta], Entry],
        remove: Callable[[str, str], None],
    ) -> None:
        self.cache = cache
        self.memory = memory
        self.negative = negative
        self.clock = clock
        self.metrics = metrics
        self.peers = peers
        self.timeout = timeout
        self.negative_seconds = negative_seconds
        self.max_object_bytes = max_object_bytes
        self.commit = commit
        self.remove = remove
        self.in_flight: dict[str, Fill] = {}

    def fill(self, media: Any, key: str, stale: Entry | None) -> tuple[Fill, bool]:
        """The fill for ``key``: the one in flight (joined=True) or a new one."""
        entry_id = cache_id(media.tenant_id, key)
        current = self.in_flight.get(entry_id)
        if current is not None and not current.superseded:
            return current, True
        fill = Fill(self, media, key, stale)
        self.in_flight[entry_id] = fill
        fill.start()
        return fill, False

    def finished(self, fill: Fill) -> None:
        if self.in_flight.get(fill.id) is fill:
            del self.in_flight[fill.id]

    def supersede(self, tenant: str, prefix: str, *, exact: bool) -> None:
        """Fills of these keys must not store what they download (a purge or
        an upload happened after they started); later requests start anew."""
        for entry_id, fill in list(self.in_flight.items()):
            if fill.media.tenant_id != tenant:
                continue
            if (exact and fill.key == prefix) or (not exact and fill.key.startswith(prefix)):
                fill.superseded = True
                if fill.finished:
                    del self.in_flight[entry_id]

    def stop(self) -> None:
        for fill in list(self.in_flight.values()):
            fill.cancel()
