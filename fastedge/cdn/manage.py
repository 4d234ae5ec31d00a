# -*- test-case-name: tests.integration.test_cdn -*-
"""Media in the tenant API: upload (``PUT /api/v1/manage/media?key=...``),
purge (``POST /api/v1/manage/media/purge``) and delete
(``POST /api/v1/manage/media/delete``: from the origin, then purged).

Both authenticate with the tenant's API key (the key decides the tenant, as
everywhere in the tenant API) and are charged like writes. An upload's body
is the object itself; its ``Content-Type`` must be one of
``cdn.upload_content_types`` and its first bytes must be what that type says
(checked with puremagic), so a script cannot be uploaded as an image.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from ..config import CdnConfig
from ..http.errors import ApiError, bad_request
from ..http.router import Call, Route
from .keys import BadKey, check_key
from .origin import OriginError
from .service import CdnService

log = Logger()

UPLOAD_PATH = "/api/v1/manage/media"
PURGE_PATH = "/api/v1/manage/media/purge"
DELETE_PATH = "/api/v1/manage/media/delete"

#: Other names puremagic gives for the types we accept.
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "audio/mp3": "audio/mpeg",
    "audio/x-mpeg": "audio/mpeg",
    "video/x-matroska": "video/webm",
    "application/ogg": "audio/ogg",
    "audio/x-ogg": "audio/ogg",
    "audio/vorbis": "audio/ogg",
}


def content_matches(head: bytes, declared: str) -> bool:
    """Whether the first bytes of a body look like ``declared``."""
    # Imported with the first upload, not when the node starts.
    import puremagic

    try:
        found = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        return False
    for match in found:
        mime = (match.mime_type or "").lower()
        if _ALIASES.get(mime, mime) == declared:
            return True
    return False


class MediaApi:
    """Handlers of the media routes of the tenant API."""

    def __init__(self, cfg: CdnConfig, cdn: CdnService) -> None:
        self._cfg = cfg
        self._cdn = cdn

    def routes(self, manage: Any) -> list[Route]:
        """The routes, wrapped by the tenant API (a ``ManageApi``)."""
        return [
            manage.tenant_route(b"PUT", UPLOAD_PATH, "media_upload", self.upload),
            manage.tenant_route(b"POST", PURGE_PATH, "media_purge", self.purge),
            manage.tenant_route(b"POST", DELETE_PATH, "media_delete", self.delete),
        ]

    def _media(self, tenant_id: str) -> Any:
        media = self._cdn.tenants.get(tenant_id)
        if media is None:
            raise ApiError(
                404,
                "media_not_configured",
                "this tenant has no media origin configured",
            )
        return media

    def _key(self, raw: str | None, media: Any) -> str:
        if raw is None:
            raise bad_request("give the object's key as ?key=...", code="missing_key")
        try:
            return check_key(raw, prefix=media.prefix, max_bytes=self._cfg.max_key_bytes)
        except BadKey as e:
            raise ApiError(e.status, e.code, e.message) from None

    @inlineCallbacks
    def upload(self, call: Call, tenant: Any) -> Any:
        media = self._media(tenant.id)
        key = self._key(call.query.get("key"), media)
        declared = (call.header(b"content-type") or "").split(";")[0].strip().lower()
        if declared not in self._cfg.upload_content_types:
            self._cdn.metrics.uploads.labels("refused").inc()
            raise ApiError(
                415,
                "unsupported_media_type",
                "uploads must be one of: {}".format(", ".join(self._cfg.upload_content_types)),
            )
        body: Any = call.request.content
        body.seek(0, 2)
        length = body.tell()
        body.seek(0)
        if length == 0:
            self._cdn.metrics.uploads.labels("refused").inc()
            raise bad_request("the upload is empty", code="empty_body")
        head = body.read(8192)
        body.seek(0)
        if not content_matches(head, declared):
            self._cdn.metrics.uploads.labels("refused").inc()
            raise ApiError(415, "content_mismatch", f"the content is not {declared}")
        try:
            entry = yield self._cdn.upload(media, key, declared, body, length)
        except OriginError as e:
            self._cdn.metrics.uploads.labels("origin_error").inc()
            status = 504 if e.kind == "timeout" else 502
            raise ApiError(status, "origin_" + e.kind, "the origin did not store the object") from None
        self._cdn.metrics.uploads.labels("stored").inc()
        body_out = {
            "key": key,
            "url": self._cdn.media_url(media, key),
            "size": entry.meta.size,
            "contentType": entry.meta.content_type,
            "etag": entry.meta.etag,
            "lastModified": entry.meta.last_modified,
        }
        return 201, body_out, None

    def _target(self, call: Call, media: Any) -> tuple[str, str]:
        """The body of a purge or delete: ``("key", key)`` or ``("prefix", prefix)``,
        both relative to the tenant's prefix and checked like keys."""
        body = call.json(optional={"key": str, "prefix": str})
        key, prefix = body.get("key"), body.get("prefix")
        if (key is None) == (prefix is None):
            raise bad_request("give exactly one of 'key' and 'prefix'", code="bad_purge")
        if key is not None:
            return "key", self._key(key, media)
        assert prefix is not None
        if prefix:
            # A prefix is a key cut anywhere: check it as a key, allowing
            # one trailing '/' (so "/" and "p//" are refused).
            self._key(prefix[:-1] if prefix.endswith("/") else prefix, media)
        return "prefix", prefix

    def purge(self, call: Call, tenant: Any) -> Any:
        media = self._media(tenant.id)
        kind, value = self._target(call, media)
        purged = self._cdn.apply_purge(tenant.id, kind, value)
        return 200, {"purged": purged, kind: value}, None

    @inlineCallbacks
    def delete(self, call: Call, tenant: Any) -> Any:
        """Delete a key, or every key under a prefix, from the tenant's
        origin, then purge the same from every node's cache."""
        media = self._media(tenant.id)
        kind, value = self._target(call, media)
        try:
            if kind == "key":
                yield media.origin.delete(media.bucket, media.prefix + value)
                deleted = 1
            else:
                deleted = yield media.origin.delete_prefix(media, value)
        except OriginError as e:
            status = 504 if e.kind == "timeout" else 502
            raise ApiError(status, "origin_" + e.kind, "the origin did not delete every object: " + e.detail) from None
        log.info(
            "deleted {count} media objects of {tenant} at the origin ({kind} {value!r})",
            count=deleted,
            tenant=tenant.id,
            kind=kind,
            value=value,
        )
        purged = self._cdn.apply_purge(tenant.id, kind, value)
        return 200, {"deleted": deleted, "purged": purged, kind: value}, None
