# -*- test-case-name: tests.unit.cdn.test_resource,tests.integration.test_cdn -*-
"""The ``cdn`` child: opens the media cache at start, snapshots its index
periodically, and closes it (and its origin connections) at stop.

:func:`make_service` builds the cache, the tenants' origins, the fill
machinery and the ``/media`` resource; it is the only module of the
subpackage that touches the reactor.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from prometheus_client import CollectorRegistry
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from ..config import CdnConfig
from .cache import DiskCache, Entry, MemoryTier, ObjectMeta
from .fill import Filler
from .interfaces import IPeerLocator, IPurgeBroadcast
from .keys import cache_id
from .metrics import CdnMetrics
from .negative import NegativeCache
from .origin import OriginError, S3Origin
from .peers import MeshMedia, PeerMetrics
from .resource import MediaGuard, MediaResource

__all__ = ["CdnService", "LocalOnly", "TenantMedia", "make_service"]


@dataclass(frozen=True)
class TenantMedia:
    """One tenant's media: its origin, where in it, and how it is cached."""

    tenant_id: str
    origin: S3Origin
    bucket: str
    prefix: str
    cache_control: str
    fresh_seconds: float


@implementer(IPurgeBroadcast)
class LocalOnly:
    """The purge broadcast used until the mesh exists: nobody to tell."""

    def broadcast(self, tenant: str, kind: str, value: str) -> None:
        return None


class CdnService(MultiService):
    """The cache, its origins and the ``/media`` resource (see the module docstring).

    :ivar resource: mount at ``/media``.
    :ivar peers: the CDN's mesh handler (:class:`~fastedge.cdn.peers.MeshMedia`):
        register it with the mesh for peer fill and purges across the
        deployment (until then it finds no peers and tells nobody).
    """

    _log = Logger()

    def __init__(
        self,
        cfg: CdnConfig,
        *,
        reactor: Any,
        metrics: CdnMetrics,
        tenants: dict[str, TenantMedia],
        origins: dict[str, S3Origin],
        pool: Any,
        peer_metrics: PeerMetrics,
        run_blocking: Callable[..., Deferred[Any]],
        peers: IPeerLocator | None = None,
        broadcast: IPurgeBroadcast | None = None,
        peer_timeout: float = 1.0,
        guard: MediaGuard | None = None,
    ) -> None:
        super().__init__()
        self._cfg = cfg
        self._reactor = reactor
        self.metrics = metrics
        self.tenants = tenants
        self._origins = origins
        self._pool = pool
        self.peers = MeshMedia(self, metrics=peer_metrics, timeout=peer_timeout)
        self._broadcast: IPurgeBroadcast = broadcast if broadcast is not None else self.peers
        self._run_blocking = run_blocking
        self.ready = False
        self.cache = DiskCache(cfg.cache_dir, max_bytes=cfg.max_bytes)
        self.memory = MemoryTier(max_bytes=cfg.memory_max_bytes, max_object_bytes=cfg.memory_max_object_bytes)
        self.negative = NegativeCache(reactor, max_entries=cfg.negative_max_entries)
        self.filler = Filler(
            cache=self.cache,
            memory=self.memory,
            negative=self.negative,
            clock=reactor,
            metrics=metrics,
            peers=peers if peers is not None else self.peers,
            timeout=cfg.origin_timeout_seconds,
            negative_seconds=cfg.negative_seconds,
            max_object_bytes=cfg.max_object_bytes,
            commit=self.commit,
            remove=self.remove,
        )
        self.resource = MediaResource(
            tenants=tenants,
            cache=self.cache,
            memory=self.memory,
            filler=self.filler,
            negative=self.negative,
            clock=reactor,
            metrics=metrics,
            max_key_bytes=cfg.max_key_bytes,
            stale_if_error_seconds=cfg.stale_if_error_seconds,
            ready=lambda: self.ready,
            guard=guard,
        )
        # Read at scrape time, so they are never stale.
        for tier, holder in (("disk", self.cache), ("memory", self.memory)):
            metrics.cache_bytes.labels(tier).set_function(_reader(lambda h: h.size, holder))
            metrics.cache_objects.labels(tier).set_function(_reader(len, holder))
        snapshot = TimerService(cfg.index_snapshot_seconds, self._snapshot)
        snapshot.clock = reactor
        snapshot.setServiceParent(self)

    # Lifecycle

    def startService(self) -> None:
        for origin in self._origins.values():
            secret_file = origin.secret_file
            if secret_file:
                with open(secret_file, encoding="utf-8") as f:
                    origin.set_secret(f.read().strip())
        self.cache.open()
        self.ready = True
        super().startService()

    def stopService(self) -> Deferred[Any]:
        self.ready = False
        self.filler.stop()
        d: Deferred[Any] = super().stopService()

        def close(_: Any) -> Deferred[Any]:
            self.cache.close()
            return self._pool.closeCachedConnections() if self._pool is not None else succeed(None)

        d.addCallback(close)
        return d

    def _snapshot(self) -> None:
        # A TimerService stops for good if its callable raises.
        try:
            if self.ready:
                self.cache.snapshot()
        except Exception:
            self._log.failure("writing the media cache index failed")

    # Cache changes (all go through here, for metrics)

    def commit(self, temp_path: str, tenant: str, key: str, meta: ObjectMeta) -> Entry:
        """Store a verified download; evict to fit."""
        entry, evicted = self.cache.commit(temp_path, tenant, key, meta, self._reactor.seconds())
        self.memory.discard(entry.id)
        for old in evicted:
            self.memory.discard(old.id)
            self.metrics.evictions.labels("size").inc()
            self.metrics.evicted_bytes.labels("size").inc(old.meta.size)
        return entry

    def remove(self, entry_id: str, reason: str) -> None:
        entry = self.cache.remove(entry_id)
        self.memory.discard(entry_id)
        if entry is not None:
            self.metrics.evictions.labels(reason).inc()
            self.metrics.evicted_bytes.labels(reason).inc(entry.meta.size)

    def apply_purge(self, tenant: str, kind: str, value: str, *, remote: bool = False) -> int:
        """Remove a key (``kind="key"``) or every key under a prefix from this
        node: cache, memory, negative cache, and downloads in flight.

        The mesh calls this for purges from other nodes (``remote=True``);
        local ones are also broadcast.
        """
        if kind == "key":
            ids = [cache_id(tenant, value)]
            self.negative.discard(ids[0])
            self.filler.supersede(tenant, value, exact=True)
        else:
            ids = [e.id for e in self.cache.entries(tenant) if e.key.startswith(value)]
            self.negative.discard_prefix(tenant, value)
            self.filler.supersede(tenant, value, exact=False)
        purged = 0
        for entry_id in ids:
            if entry_id in self.cache:
                self.remove(entry_id, "purge")
                purged += 1
        self.metrics.purges.labels(kind, "remote" if remote else "local").inc()
        self.metrics.purged_objects.inc(purged)
        self._log.info(
            "purged {count} media objects of {tenant} ({kind} {value!r}, {where})",
            count=purged,
            tenant=tenant,
            kind=kind,
            value=value,
            where="remote" if remote else "local",
        )
        if not remote:
            self._broadcast.broadcast(tenant, kind, value)
        return purged

    @inlineCallbacks
    def upload(self, media: TenantMedia, key: str, content_type: str, body: Any, length: int) -> Any:
        """Store ``body`` at the origin, then in the local cache.

        The body is first copied into the cache's temporary directory (and
        hashed on the way, off the reactor thread); that copy is sent to the
        origin and, once the origin has it, renamed into the cache.

        :returns: the new cache entry.
        """
        temp = self.cache.temp_path()
        try:
            md5, sha256_hex = yield self._run_blocking(_copy_and_hash, body, temp)
            # Whatever is being downloaded for this key now is older than this.
            self.filler.supersede(media.tenant_id, key, exact=True)
            # treq closes the file it sends; the copy stays for the cache.
            yield media.origin.put(
                media,
                key,
                open(temp, "rb"),
                length=length,
                content_type=content_type,
                md5=md5,
                sha256_hex=sha256_hex,
            )
            meta = yield media.origin.head(media, key, size=length)
            if meta is None:
                raise OriginError("error", "the origin does not show the object just stored")
            etag = (meta.etag or "").strip('"').lower()
            if len(etag) == 32 and etag != md5.hex():
                # A single-part object's ETag is its MD5: someone else wrote
                # it in between. Do not cache bytes the origin does not have.
                raise OriginError("error", "the origin holds other bytes than those just stored")
            entry = self.commit(temp, media.tenant_id, key, meta)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        self.negative.discard(entry.id)
        self._log.info(
            "stored {size} bytes of {content_type} as {tenant} {key}",
            size=length,
            content_type=content_type,
            tenant=media.tenant_id,
            key=key,
        )
        return entry

    def media_url(self, media: TenantMedia, key: str) -> str:
        """The public path of an object."""
        return "/media/{}/{}".format(quote(media.tenant_id, safe=""), quote(key, safe="/~"))


def _copy_and_hash(body: Any, path: str) -> tuple[bytes, str]:
    """Copy a file to ``path``, computing MD5 (for Content-MD5) and SHA-256
    (for SigV4) on the way."""
    body.seek(0)
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    with open(path, "wb") as out:
        for chunk in iter(lambda: body.read(1024 * 1024), b""):
            md5.update(chunk)
            sha.update(chunk)
            out.write(chunk)
    return md5.digest(), sha.hexdigest()


def make_service(
    cfg: CdnConfig,
    *,
    reactor: Any,
    registry: CollectorRegistry,
    peers: IPeerLocator | None = None,
    broadcast: IPurgeBroadcast | None = None,
    client: Any = None,
    peer_timeout: float = 1.0,
    guard: MediaGuard | None = None,
) -> CdnService:
    """The ``cdn`` child for ``cfg``.

    :param peers: finds peer nodes that have an object; by default the
        service's own mesh handler (``service.peers``), which finds none
        until it is registered with a mesh.
    :param broadcast: sends purges to the other nodes; by default the same
        handler.
    :param peer_timeout: seconds a peer has to answer a lookup or a read.
    :param guard: judges callers of thread media (keys ``threads/<id>/...``:
        the public API's ``media_access``); none: they are public.
    :param client: a treq ``HTTPClient`` for the origins; by default one with
        its own persistent connection pool.
    """
    pool = None
    if client is None and cfg.origins:
        # treq and twisted.web.client only for a node with origins.
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = cfg.origin_connections_per_host
        pool.cachedConnectionTimeout = 60
        client = HTTPClient(Agent(reactor, pool=pool, connectTimeout=cfg.origin_timeout_seconds))
    metrics = CdnMetrics(registry)
    origins: dict[str, S3Origin] = {}
    for name, origin_cfg in cfg.origins.items():
        origin = S3Origin(
            origin_cfg,
            secret_access_key=origin_cfg.secret_access_key,
            client=client,
            clock=reactor,
            timeout=cfg.origin_timeout_seconds,
            metrics=metrics,
        )
        origins[name] = origin
    tenants = {
        tenant_id: TenantMedia(
            tenant_id=tenant_id,
            origin=origins[t.origin],
            bucket=t.bucket,
            prefix=t.prefix,
            cache_control=t.cache_control,
            fresh_seconds=t.fresh_seconds,
        )
        for tenant_id, t in cfg.tenants.items()
    }
    return CdnService(
        cfg,
        reactor=reactor,
        metrics=metrics,
        tenants=tenants,
        origins=origins,
        pool=pool,
        peer_metrics=PeerMetrics(registry),
        peers=peers,
        broadcast=broadcast,
        peer_timeout=peer_timeout,
        guard=guard,
        run_blocking=lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a),
    )


def _reader(read: Callable[[Any], float], holder: Any) -> Callable[[], float]:
    """A no-argument gauge reader of ``read(holder)``, evaluated at scrape time."""
    return lambda: read(holder)
