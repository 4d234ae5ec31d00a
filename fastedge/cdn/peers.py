# -*- test-case-name: tests.unit.cdn.test_peers -*-
"""The CDN over the mesh: purges reach every node of the deployment, and a
miss is filled from the nearest peer that has the object.

:class:`MeshMedia` is both the CDN's :class:`~fastedge.cdn.interfaces.IPurgeBroadcast`
and its :class:`~fastedge.cdn.interfaces.IPeerLocator`, and a mesh handler
(:class:`~fastedge.mesh.interfaces.IMeshHandler`, ``docs/mesh-handlers.md``):
the CDN service makes it, the node's wiring registers it with the mesh.
Everything travels over the mesh's PB links (mutual TLS, certificates from
the deployment's CA), and only between nodes of one deployment: the mesh
refuses a media call from a node of another deployment, and it is counted,
as relay calls are. Until it is registered with a started mesh, it finds no
peers and tells nobody of purges.

- **Purge.** A local purge is sent (``media_purge``) to every known peer of
  the deployment; the peer applies it with ``apply_purge(remote=True)``,
  which never re-broadcasts. A peer whose link is down, or whose call
  fails, gets the purge later: it waits in a per-peer queue (bounded by
  :data:`PURGE_QUEUE`, entries older than :data:`PURGE_QUEUE_SECONDS`
  dropped) that is sent when the link comes up. A peer's disk cache
  survives its restart, so the queue is kept for peers that went away too.
- **Peer fetch.** On a miss the node asks the :data:`ASK_PEERS` nearest
  live peers of its deployment (great-circle distance from the node map's
  coordinates) at once whether they hold a *fresh* copy (``media_has``),
  and fetches from the nearest that says yes, in :data:`CHUNK`-byte reads
  (``media_read``, each checked against the ETag it announced). Any
  failure or a silence longer than the timeout before the first bytes
  makes the fill go to the origin instead.
- **Jelly.** Every message is made of strings, integers, bytes, lists and
  ``None``: the mesh's type allow-list is not extended.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..geo.distance import great_circle_km
from ..mesh.handler import MeshHandler
from ..mesh.interfaces import ILink, IMesh, IPeerSession
from ..mesh.messages import BadMessage, Refused, check_channel_id
from ..mesh.nodemap import NodeState
from .cache import ObjectMeta
from .interfaces import IObjectSource, IPeerLocator, IPurgeBroadcast, ISourceResponse
from .keys import BadKey, cache_id

__all__ = ["MeshMedia", "PeerMetrics", "PeerSource"]

#: Bytes per ``media_read`` answer (well under ``mesh.max_message_bytes``).
CHUNK = 256 * 1024
#: Peers asked at once whether they have an object.
ASK_PEERS = 3
#: Purges waiting for one peer, at most, and for how long.
PURGE_QUEUE = 10_000
PURGE_QUEUE_SECONDS = 3600.0
#: Longest purged key or prefix accepted from a peer.
MAX_VALUE = 4096


class PeerMetrics:
    """The metric families of the CDN's mesh calls (``fastedge_mesh_media_*``:
    their names stayed when the code moved here from the mesh package)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.media_purges = Counter(
            "fastedge_mesh_media_purges_total",
            "CDN purges between nodes, by outcome (sent, received, queued, dropped, failed).",
            ["outcome"],
            registry=registry,
        )
        self.media_purge_queue = Gauge(
            "fastedge_mesh_media_purge_queue",
            "Purges waiting for a peer's link to come up.",
            registry=registry,
        )
        self.media_locates = Counter(
            "fastedge_mesh_media_locates_total",
            "Peer lookups of a CDN miss, by result (found, none, no_peers).",
            ["result"],
            registry=registry,
        )
        self.media_served = Counter(
            "fastedge_mesh_media_served_bytes_total",
            "Object bytes this node sent to peers (media_read answers).",
            registry=registry,
        )
        self.media_refused = Counter(
            "fastedge_mesh_media_refused_total",
            "Media calls from peers refused, by reason (deployment, bad_message, no_cdn).",
            ["reason"],
            registry=registry,
        )


def _meta_to_wire(meta: ObjectMeta) -> list[Any]:
    return [meta.size, meta.content_type, meta.etag, meta.last_modified]


def _meta_from_wire(wire: Any) -> ObjectMeta:
    if not isinstance(wire, (list, tuple)) or len(wire) != 4:
        raise BadMessage("object metadata is (size, content_type, etag, last_modified)")
    size, content_type, etag, last_modified = wire
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadMessage("an object size is a non-negative integer")
    if not isinstance(content_type, str) or len(content_type) > 256:
        raise BadMessage("a content type is a short string")
    for value in (etag, last_modified):
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise BadMessage("an ETag or Last-Modified is a short string or None")
    return ObjectMeta(size=size, content_type=content_type, etag=etag, last_modified=last_modified)


@implementer(ISourceResponse)
class _PeerResponse:
    """A peer's answer: a 304, or a 200 whose body is read in chunks."""

    checksums: dict[str, str] = {}

    def __init__(self, source: PeerSource, status: int, meta: ObjectMeta, first: bytes = b"") -> None:
        self._source = source
        self.status = status
        self.meta = meta
        self._first = first
        self._aborted = False

    def deliver(self, receiver: Any) -> None:
        self._offset = 0
        self._receiver = receiver
        self._got(self._first)

    def _got(self, chunk: Any) -> None:
        if self._aborted:
            return
        if not isinstance(chunk, bytes) or len(chunk) > CHUNK:
            self._receiver.failed(Failure(BadMessage("a media chunk must be at most {} bytes".format(CHUNK))))
            return
        size = self.meta.size
        if chunk:
            self._offset += len(chunk)
            self._receiver.data(chunk)
            if self._aborted:
                return
        if self._offset >= size:
            self._receiver.done()
            return
        if not chunk and self._offset > 0:
            self._receiver.failed(Failure(BadMessage("the peer's copy ended early")))
            return
        d = self._source.read(self.meta.etag, self._offset)
        d.addCallbacks(self._got, self._failed)

    def _failed(self, f: Failure) -> None:
        if not self._aborted:
            self._receiver.failed(f)

    def abort(self) -> None:
        self._aborted = True


@implementer(IObjectSource)
class PeerSource:
    """One peer's fresh copy of one object, fetched over its mesh link."""

    name = "peer"

    def __init__(self, owner: MeshMedia, link: ILink, tenant: str, key: str, meta: ObjectMeta) -> None:
        self._owner = owner
        self.link = link
        self.tenant = tenant
        self.key = key
        self.meta = meta

    def read(self, etag: str | None, offset: int) -> Deferred[Any]:
        """The next chunk of the peer's copy (fails if the copy changed)."""
        mesh = self._owner.mesh
        assert mesh is not None
        return self._owner.with_timeout(mesh.call(self.link, "media_read", self.tenant, self.key, etag, offset))

    def fetch(self, media: object, key: str, *, etag: str | None, last_modified: str | None) -> Deferred[Any]:
        if etag is not None and etag == self.meta.etag:
            return succeed(_PeerResponse(self, 304, self.meta))
        # The first chunk is read before answering: a peer that fails here
        # costs only a fall-back to the origin, no half-written download.
        d = self.read(self.meta.etag, 0)
        d.addCallback(lambda first: _PeerResponse(self, 200, self.meta, first))
        return d


@implementer(IPeerLocator, IPurgeBroadcast)
class MeshMedia(MeshHandler):
    """This node's CDN side of the mesh (see the module docstring).

    A mesh handler: its remote calls are ``media_purge``, ``media_has`` and
    ``media_read``; its messages are plain values only.

    :param cdn: the CDN whose cache answers peers (a ``CdnService``: its
        ``tenants``, ``cache`` and ``apply_purge``).
    :param metrics: its metric families (``fastedge_mesh_media_*``).
    :param timeout: seconds a peer has to answer a lookup or a read.
    """

    _log = Logger()
    name = "media"

    def __init__(self, cdn: Any, *, metrics: PeerMetrics, timeout: float = 1.0) -> None:
        super().__init__()
        self.remote_calls = {
            "media_purge": self._serve_purge,
            "media_has": self._serve_has,
            "media_read": self._serve_read,
        }
        self.cdn = cdn
        self._metrics = metrics
        self._timeout = timeout
        self.mesh: IMesh | None = None
        self._queue: dict[str, list[tuple[float, str, str, str]]] = {}

    # IMeshHandler

    def attach(self, mesh: IMesh) -> None:
        """Start working over a started mesh."""
        self.mesh = mesh

    def refused(self, call: str, reason: str) -> None:
        """The mesh refused a media call (another deployment's, a bad one)."""
        self._metrics.media_refused.labels(reason).inc()

    def with_timeout(self, d: Deferred[Any]) -> Deferred[Any]:
        """``d``, cancelled after the peer timeout."""
        assert self.mesh is not None
        return d.addTimeout(self._timeout, self.mesh.clock)

    # IPurgeBroadcast

    def broadcast(self, tenant: str, kind: str, value: str) -> None:
        """Send a local purge to every peer of the deployment (queued for
        those that cannot be reached now)."""
        mesh = self.mesh
        if mesh is None:
            return
        peers = mesh.peers()
        for node_id in peers:
            self._send_purge(node_id, tenant, kind, value, mesh.monotonic())
        self._log.info(
            "mesh media: purge of {tenant} ({kind} {value!r}) sent to {count} peers",
            tenant=tenant,
            kind=kind,
            value=value,
            count=len(peers),
        )

    def _link_of(self, node_id: str) -> ILink | None:
        assert self.mesh is not None
        link: ILink | None = self.mesh.link_to(node_id)
        return link

    def _send_purge(self, node_id: str, tenant: str, kind: str, value: str, queued: float) -> None:
        link = self._link_of(node_id)
        if link is None:
            self._enqueue(node_id, (queued, tenant, kind, value))
            return
        metrics = self._metrics

        def sent(_: object) -> None:
            metrics.media_purges.labels("sent").inc()

        def failed(f: Failure) -> None:
            metrics.media_purges.labels("failed").inc()
            self._log.warn(
                "mesh media: purge of {tenant} to {peer} failed ({error}); queued",
                tenant=tenant,
                peer=node_id,
                error=f.getErrorMessage(),
            )
            if not f.check(Refused):
                self._enqueue(node_id, (queued, tenant, kind, value))

        assert self.mesh is not None
        self.mesh.call(link, "media_purge", tenant, kind, value).addCallbacks(sent, failed)

    def _enqueue(self, node_id: str, item: tuple[float, str, str, str]) -> None:
        queue = self._queue.setdefault(node_id, [])
        queue.append(item)
        self._metrics.media_purges.labels("queued").inc()
        if len(queue) > PURGE_QUEUE:
            del queue[0]
            self._metrics.media_purges.labels("dropped").inc()
        self._count_queue()

    def _count_queue(self) -> None:
        self._metrics.media_purge_queue.set(sum(len(q) for q in self._queue.values()))

    def link_up(self, node_id: str, link: ILink) -> None:
        """A link came (back) up: send the purges that waited for it."""
        queue = self._queue.pop(node_id, [])
        assert self.mesh is not None
        now = self.mesh.monotonic()
        for queued, tenant, kind, value in queue:
            if now - queued > PURGE_QUEUE_SECONDS:
                self._metrics.media_purges.labels("dropped").inc()
                continue
            self._send_purge(node_id, tenant, kind, value, queued)
        self._count_queue()

    # IPeerLocator

    def _nearest(self) -> list[Any]:
        """Links to the live peers of the deployment, nearest first."""
        mesh = self.mesh
        assert mesh is not None
        infos = mesh.node_map.nodes()
        me = infos.get(mesh.node_id)
        ranked = []
        for node_id in mesh.peers():
            info = infos.get(node_id)
            link = self._link_of(node_id)
            if me is None or info is None or info.state is not NodeState.ALIVE or link is None:
                continue
            distance = great_circle_km(me.latitude, me.longitude, info.latitude, info.longitude)
            ranked.append((distance, node_id, link))
        ranked.sort(key=lambda r: (r[0], r[1]))
        return [link for _, _, link in ranked[:ASK_PEERS]]

    def locate(self, tenant: str, key: str) -> Deferred[PeerSource | None]:
        """Ask the nearest live peers at once; the nearest with a fresh copy
        wins. Never fails: no answer in time means the origin."""
        mesh = self.mesh
        if mesh is None:
            return succeed(None)
        links = self._nearest()
        if not links:
            self._metrics.media_locates.labels("no_peers").inc()
            return succeed(None)
        asks = [self.with_timeout(mesh.call(link, "media_has", tenant, key)) for link in links]

        def chosen(results: list[tuple[bool, Any]]) -> PeerSource | None:
            for link, (ok, answer) in zip(links, results, strict=True):
                if not ok or answer is None:
                    continue
                try:
                    meta = _meta_from_wire(answer)
                except BadMessage as e:
                    link.abort("bad_message", str(e))
                    continue
                self._metrics.media_locates.labels("found").inc()
                self._log.debug("mesh media: {tenant} {key} found at {peer}", tenant=tenant, key=key, peer=link.peer_id)
                return PeerSource(self, link, tenant, key, meta)
            self._metrics.media_locates.labels("none").inc()
            return None

        return DeferredList(asks, consumeErrors=True).addCallback(chosen)

    # Calls from peers (the mesh checked the caller's deployment; a
    # BadMessage disconnects it)

    def _check(self, tenant: Any, key: Any) -> tuple[str, str]:
        check_channel_id(tenant, "tenant")
        if not isinstance(key, str) or len(key) > MAX_VALUE:
            raise BadMessage("a media key is a string of at most {} characters".format(MAX_VALUE))
        return tenant, key

    def _cache_id(self, tenant: str, key: str) -> str:
        try:
            return cache_id(tenant, key)
        except BadKey as e:
            raise BadMessage(str(e)) from None

    def _serve_purge(self, session: IPeerSession, tenant: Any, kind: Any, value: Any) -> int:
        tenant, value = self._check(tenant, value)
        if kind not in ("key", "prefix"):
            raise BadMessage("a purge is of a key or a prefix")
        self._metrics.media_purges.labels("received").inc()
        self._log.info(
            "mesh media: purge of {tenant} ({kind} {value!r}) from {peer}",
            tenant=tenant,
            kind=kind,
            value=value,
            peer=session.node_id,
        )
        return int(self.cdn.apply_purge(tenant, kind, value, remote=True))

    def _fresh_entry(self, tenant: str, key: str) -> Any:
        media = self.cdn.tenants.get(tenant)
        if media is None:
            return None
        entry = self.cdn.cache.get(self._cache_id(tenant, key))
        assert self.mesh is not None
        if entry is None or self.mesh.reactor.seconds() - entry.validated_at >= media.fresh_seconds:
            return None
        return entry

    def _serve_has(self, session: IPeerSession, tenant: Any, key: Any) -> list[Any] | None:
        tenant, key = self._check(tenant, key)
        entry = self._fresh_entry(tenant, key)
        return None if entry is None else _meta_to_wire(entry.meta)

    def _serve_read(self, session: IPeerSession, tenant: Any, key: Any, etag: Any, offset: Any) -> bytes:
        tenant, key = self._check(tenant, key)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise BadMessage("an offset is a non-negative integer")
        entry = self.cdn.cache.get(self._cache_id(tenant, key))
        if entry is None or entry.meta.etag != etag or offset > entry.meta.size:
            raise Refused("gone: this node no longer has that copy")
        # Cached files are local and a chunk is small: read in place, as
        # the /media resource does.
        try:
            with open(self.cdn.cache.path_for(entry.id), "rb") as f:
                os.lseek(f.fileno(), offset, os.SEEK_SET)
                chunk = f.read(CHUNK)
        except OSError as e:
            self._log.warn(
                "mesh media: reading {tenant} {key} for a peer failed: {error}", tenant=tenant, key=key, error=e
            )
            raise Refused("gone: this node cannot read that copy") from None
        self._metrics.media_served.inc(len(chunk))
        return chunk
