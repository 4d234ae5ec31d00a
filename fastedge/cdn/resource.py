# -*- test-case-name: tests.unit.cdn.test_resource -*-
"""``GET``/``HEAD /media/<tenant>/<key>``: the CDN as HTTP.

The hot path (a fresh object in the memory tier) is a dictionary lookup and
one ``write``: no Deferred, no producer. Everything else (disk, a fill in
progress, a revalidation) goes through :class:`~fastedge.cdn.sender.BodySender`.

Responses carry the origin's ``Content-Type``, ``ETag`` and
``Last-Modified``, the tenant's ``Cache-Control``, ``Accept-Ranges: bytes``,
``X-Cache`` (``HIT``, ``MISS``, ``REVALIDATED``, ``STALE``), and two headers
that keep tenant-uploaded content from acting as a page of this site:
``X-Content-Type-Options: nosniff`` and a sandboxing
``Content-Security-Policy``.

Media of a thread live under ``threads/<threadId>/`` (docs/media.md): for
those keys a guard (the public API's :meth:`~fastedge.api.public.PublicApi.media_access`,
wired in ``tap``) judges the caller before the cache is even looked at, and
the answers are ``Cache-Control: private``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..http.errors import ApiError, from_store_error
from ..http.jsonbody import write_error
from ..store.errors import StoreError
from .cache import DiskCache, Entry, MemoryTier, ObjectMeta
from .fill import Fill, Filler
from .keys import BadKey, cache_id, check_key, split_media_path
from .metrics import CdnMetrics
from .negative import NegativeCache
from .semantics import (
    RangeNotSatisfiable,
    not_modified,
    parse_http_date,
    parse_range,
    range_applies,
)
from .sender import BodySender, abort_response

ROUTE = "/media/{tenant}/{key}"
#: Keys of a thread's media: ``threads/<threadId>/...`` (docs/media.md).
THREAD_PREFIX = "threads/"
#: Judges a caller of a thread's media: ``(request, tenant, thread id)``;
#: fails with :class:`~fastedge.http.errors.ApiError` to refuse.
MediaGuard = Callable[[Request, str, str], "Deferred[None]"]


def private_cache_control(cache_control: str) -> str:
    """``cache_control`` for one viewer only: ``private`` instead of
    ``public`` (and without ``s-maxage``), so no shared cache keeps it."""
    kept = [
        d.strip()
        for d in cache_control.split(",")
        if d.strip() and d.strip().lower() not in ("public", "private") and not d.strip().lower().startswith("s-maxage")
    ]
    return ", ".join(["private"] + kept)


_CSP = b"default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"


def representation_headers(meta: ObjectMeta, cache_control: str) -> list[tuple[bytes, list[bytes]]]:
    """Headers every 200/206/304 of this object carries."""
    headers = [
        (b"content-type", [meta.content_type.encode("latin-1", "replace")]),
        (b"cache-control", [cache_control.encode("latin-1", "replace")]),
        (b"accept-ranges", [b"bytes"]),
        (b"x-content-type-options", [b"nosniff"]),
        (b"content-security-policy", [_CSP]),
    ]
    if meta.etag is not None:
        headers.append((b"etag", [meta.etag.encode("latin-1", "replace")]))
    if meta.last_modified is not None:
        headers.append((b"last-modified", [meta.last_modified.encode("latin-1", "replace")]))
    return headers


class _Representation:
    """An object's headers and validators, computed once per cache entry."""

    __slots__ = ("headers", "etag", "last_modified", "size")

    def __init__(self, meta: ObjectMeta, cache_control: str) -> None:
        self.headers = representation_headers(meta, cache_control)
        self.etag = meta.etag.encode("latin-1", "replace") if meta.etag is not None else None
        self.last_modified = parse_http_date(meta.last_modified)
        self.size = meta.size


def _representation(entry: Entry, cache_control: str) -> _Representation:
    rep = entry.header_cache
    if rep is None:
        rep = entry.header_cache = _Representation(entry.meta, cache_control)
    return rep


class MediaResource(Resource):
    """The ``/media`` subtree (see the module docstring).

    :param tenants: tenant id -> :class:`~fastedge.cdn.service.TenantMedia`.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        *,
        tenants: dict[str, Any],
        cache: DiskCache,
        memory: MemoryTier,
        filler: Filler,
        negative: NegativeCache,
        clock: IReactorTime,
        metrics: CdnMetrics,
        max_key_bytes: int,
        stale_if_error_seconds: float,
        ready: Callable[[], bool],
        guard: MediaGuard | None = None,
    ) -> None:
        super().__init__()
        self._tenants = tenants
        self._cache = cache
        self._memory = memory
        self._filler = filler
        self._negative = negative
        self._clock = clock
        self._metrics = metrics
        self._max_key_bytes = max_key_bytes
        self._stale_if_error = stale_if_error_seconds
        self._ready = ready
        #: Judges callers of keys under :data:`THREAD_PREFIX` (the public
        #: API's ``media_access``); none: they are public.
        self._guard = guard

    def render_GET(self, request: Request) -> int:
        return self._render(request, head=False)

    def render_HEAD(self, request: Request) -> int:
        return self._render(request, head=True)

    def render(self, request: Request) -> int:
        if request.method in (b"GET", b"HEAD"):
            return super().render(request)
        request.route = ROUTE  # type: ignore[attr-defined]
        request.setHeader(b"allow", b"GET, HEAD")
        write_error(
            request,
            405,
            "method_not_allowed",
            "media is read with GET or HEAD; upload through the tenant API",
        )
        return NOT_DONE_YET

    def _render(self, request: Request, head: bool) -> int:
        request.route = ROUTE  # type: ignore[attr-defined]
        try:
            tenant_id, key = split_media_path(
                request.path.split(b"?", 1)[0],
                max_bytes=self._max_key_bytes,
                validate=False,
            )
            media = self._tenants.get(tenant_id)
            if media is None:
                raise BadKey("no_such_tenant", "no media for this tenant", status=404)
            # For the access log: a tenant this node serves media for.
            request.tenant_id = tenant_id  # type: ignore[attr-defined]
        except BadKey as e:
            write_error(request, e.status, e.code, e.message)
            return NOT_DONE_YET
        if not self._ready():
            request.setHeader(b"retry-after", b"1")
            write_error(request, 503, "cache_starting", "the media cache is starting; try again")
            return NOT_DONE_YET
        if key.startswith(THREAD_PREFIX) and self._guard is not None:
            # Before the cache: a refused caller gets no byte, cached or not.
            thread_id = key[len(THREAD_PREFIX) :].split("/", 1)[0]
            d = maybeDeferred(self._guard, request, tenant_id, thread_id)
            d.addCallbacks(
                self._admitted,
                self._refused,
                callbackArgs=(request, tenant_id, key, media, head),
                errbackArgs=(request, tenant_id),
            )
            d.addErrback(self._log_failure, request)
            return NOT_DONE_YET
        return self._lookup(request, tenant_id, key, media, head, media.cache_control)

    def _admitted(self, _: object, request: Request, tenant_id: str, key: str, media: Any, head: bool) -> None:
        self._metrics.thread_media.labels("allowed").inc()
        if request.finished or getattr(request, "_disconnected", False):
            return
        self._lookup(request, tenant_id, key, media, head, private_cache_control(media.cache_control))

    def _refused(self, failure: Failure, request: Request, tenant_id: str) -> None:
        error = failure.value
        if isinstance(error, StoreError):
            error = from_store_error(error)
        if not isinstance(error, ApiError):
            self._metrics.thread_media.labels("error").inc()
            self._log.failure("judging a thread's media for {tenant} failed", failure, tenant=tenant_id)
            error = ApiError(500, "internal_error", "the thread's access rules could not be checked")
        elif error.status == 404:
            self._metrics.thread_media.labels("not_found").inc()
        elif error.status == 403:
            self._metrics.thread_media.labels("refused").inc()
        else:
            self._metrics.thread_media.labels("error").inc()
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setHeader(b"cache-control", b"private, no-store")
        write_error(request, error.status, error.code, error.message)

    def _log_failure(self, failure: Failure, request: Request) -> None:
        self._log.failure("answering {path} failed", failure, path=request.path)
        if not request.finished and not getattr(request, "_disconnected", False):
            abort_response(request)

    def _lookup(self, request: Request, tenant_id: str, key: str, media: Any, head: bool, cache_control: str) -> int:
        """Answer from the cache, or fill from a peer or the origin."""
        entry_id = cache_id(tenant_id, key)
        entry = self._cache.get(entry_id)
        now = self._clock.seconds()
        if entry is not None and now - entry.validated_at < media.fresh_seconds:
            # Only valid keys are ever cached: a hit needs no key check.
            self._serve_entry(request, entry, media, head, b"HIT", cache_control)
            return NOT_DONE_YET
        try:
            check_key(key, prefix=media.prefix, max_bytes=self._max_key_bytes)
        except BadKey as e:
            write_error(request, e.status, e.code, e.message)
            return NOT_DONE_YET
        if entry is None and self._negative.has(entry_id):
            self._metrics.negative_hits.inc()
            write_error(request, 404, "media_not_found", "no such media object")
            return NOT_DONE_YET
        fill, joined = self._filler.fill(media, key, entry)
        if joined:
            self._metrics.coalesced.inc()
        else:
            self._metrics.misses.labels("stale" if entry is not None else "not_cached").inc()
        fill.when_started().addCallback(self._from_fill, request, media, head, cache_control)
        return NOT_DONE_YET

    # Answers

    def _serve_entry(
        self, request: Request, entry: Entry, media: Any, head: bool, x_cache: bytes, cache_control: str
    ) -> None:
        rep = _representation(entry, cache_control)
        data = self._memory.get(entry)
        if data is not None:
            self._metrics.hit_memory.inc()
        else:
            self._metrics.hit_disk.inc()
        status, byte_range = self._decide(request, rep)
        if status is None:
            return
        self._start(request, status, rep, byte_range, x_cache)
        if head or status == 304:
            request.finish()
            return
        start, end = (byte_range.start, byte_range.end + 1) if byte_range is not None else (0, rep.size)
        if data is None and self._memory.admits(rep.size):
            try:
                with open(self._cache.path_for(entry.id), "rb") as f:
                    data = f.read()
            except OSError:
                data = None
            if data is not None and len(data) == rep.size:
                self._memory.put(entry, data)
            else:
                data = None
        if data is not None:
            body = data if byte_range is None else data[start:end]
            self._metrics.served_memory.inc(len(body))
            request.write(body)
            request.finish()
            return
        try:
            fd = os.open(self._cache.path_for(entry.id), os.O_RDONLY)
        except OSError:
            # Evicted or purged a moment ago: the headers are out, so abort.
            self._log.warn(
                "cached file of {tenant} {key} vanished",
                tenant=entry.tenant,
                key=entry.key,
            )
            abort_response(request)
            return
        BodySender(
            request,
            fd,
            start,
            end,
            fill=None,
            owns_fd=True,
            on_bytes=self._metrics.served_disk.inc,
        ).start()

    def _decide(self, request: Request, rep: _Representation) -> tuple[int | None, Any]:
        """The status to answer (200, 206 or 304) and the byte range, or
        ``(None, None)`` after answering 416 already."""
        if not_modified(
            etag=rep.etag,
            last_modified=rep.last_modified,
            if_none_match=request.getHeader(b"if-none-match"),
            if_modified_since=request.getHeader(b"if-modified-since"),
        ):
            return 304, None
        range_header = request.getHeader(b"range")
        if range_header is None or rep.size < 0:
            return 200, None
        if not range_applies(
            request.getHeader(b"if-range"),
            etag=rep.etag,
            last_modified=rep.last_modified,
        ):
            return 200, None
        try:
            byte_range = parse_range(range_header, rep.size)
        except RangeNotSatisfiable as e:
            request.setHeader(b"content-range", b"bytes */%d" % (rep.size,))
            write_error(request, 416, "range_not_satisfiable", str(e))
            return None, None
        return (200, None) if byte_range is None else (206, byte_range)

    def _start(
        self,
        request: Request,
        status: int,
        rep: _Representation,
        byte_range: Any,
        x_cache: bytes,
    ) -> None:
        request.setResponseCode(status)
        set_raw = request.responseHeaders.setRawHeaders
        for name, values in rep.headers:
            set_raw(name, values)
        set_raw(b"x-cache", [x_cache])
        if status == 304:
            return
        if byte_range is not None:
            set_raw(b"content-range", [byte_range.content_range(rep.size)])
            set_raw(b"content-length", [b"%d" % (byte_range.length,)])
        elif rep.size >= 0:
            set_raw(b"content-length", [b"%d" % (rep.size,)])

    def _from_fill(self, fill: Fill, request: Request, media: Any, head: bool, cache_control: str) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        state = fill.state
        if state == "not_modified":
            assert fill.entry is not None
            self._serve_entry(request, fill.entry, media, head, b"REVALIDATED", cache_control)
        elif state == "not_found":
            write_error(request, 404, "media_not_found", "no such media object")
        elif state == "failed":
            stale = fill.stale
            now = self._clock.seconds()
            if stale is not None and now - stale.validated_at - media.fresh_seconds <= self._stale_if_error:
                self._metrics.stale.labels(fill.error_kind or "error").inc()
                self._serve_entry(request, stale, media, head, b"STALE", cache_control)
            elif fill.error_kind == "timeout":
                write_error(request, 504, "origin_timeout", "the origin did not answer in time")
            else:
                write_error(
                    request,
                    502,
                    "origin_error",
                    "the origin failed to provide this object",
                )
        elif state == "done" and fill.entry is not None and fill.entry.id in self._cache:
            self._serve_entry(request, fill.entry, media, head, b"MISS", cache_control)
        else:
            self._stream(request, fill, media, head, cache_control)

    def _stream(self, request: Request, fill: Fill, media: Any, head: bool, cache_control: str) -> None:
        """Answer from a download still in progress (or one not kept)."""
        assert fill.meta is not None
        rep = _Representation(fill.meta, cache_control)
        status, byte_range = self._decide(request, rep)
        if status is None:
            return
        self._start(request, status, rep, byte_range, b"MISS")
        if head or status == 304:
            request.finish()
            return
        start, end = (
            (byte_range.start, byte_range.end + 1)
            if byte_range is not None
            else (0, rep.size if rep.size >= 0 else None)
        )
        counter = self._metrics.served_bytes.labels(fill.source_name)
        # The fill's read descriptor is shared; it stays open while we read.
        BodySender(
            request,
            fill.read_fd,
            start,
            end,
            fill=fill,
            owns_fd=False,
            on_bytes=counter.inc,
        ).start()
