# -*- test-case-name: tests.integration.test_cdn -*-
"""S3-compatible origins: GET, HEAD, PUT, ListObjectsV2 and DELETE signed
with AWS SigV4 (:mod:`.sigv4`), sent with treq.

Keys are percent-encoded once, the way S3 canonicalises them (every byte but
``A-Z a-z 0-9 - _ . ~`` and ``/``), and the URL is sent exactly as signed.
Credentials never appear in logs or errors (only the access key id would be
harmless, and it is not logged either).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, urlsplit

from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from zope.interface import implementer

from ..config import S3OriginConfig
from . import sigv4
from .cache import ObjectMeta
from .interfaces import IBodyReceiver, IObjectSource, ISourceResponse
from .metrics import CdnMetrics

__all__ = ["OriginError", "S3Origin", "SourceResponse"]

#: The namespace of S3's XML answers.
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

_DONE = Failure(net_error.ConnectionDone())


class OriginError(Exception):
    """The origin failed: ``kind`` is ``timeout`` (answer 504) or ``error`` (502)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _content(response: IResponse) -> Deferred[bytes]:
    """The whole body (treq's reader; treq is imported with the first origin
    request, not by every node that imports this module)."""
    import treq

    return treq.content(response)


def _header(response: IResponse, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def meta_from_headers(response: IResponse, size: int | None = None) -> ObjectMeta:
    """The representation metadata of an S3 response."""
    length = size
    if length is None:
        # Twisted's client takes Content-Length out of the headers into ``length``.
        length = response.length if isinstance(response.length, int) else -1
    return ObjectMeta(
        size=length,
        content_type=_header(response, b"content-type") or "application/octet-stream",
        etag=_header(response, b"etag"),
        last_modified=_header(response, b"last-modified"),
    )


def checksums_from_headers(response: IResponse) -> dict[str, str]:
    """Checksums an S3 response vouches for.

    The ETag is the MD5 of the body only for a single-part upload without
    SSE-KMS or SSE-C; otherwise it is opaque and not used.
    """
    out: dict[str, str] = {}
    etag = _header(response, b"etag")
    sse = (_header(response, b"x-amz-server-side-encryption") or "").lower()
    sse_c = _header(response, b"x-amz-server-side-encryption-customer-algorithm")
    if etag is not None and sse != "aws:kms" and sse_c is None:
        tag = etag.strip('"')
        if len(tag) == 32 and all(c in "0123456789abcdef" for c in tag.lower()):
            out["md5"] = tag.lower()
    for name in ("crc32", "sha256", "sha1"):
        value = _header(response, b"x-amz-checksum-" + name.encode())
        if value:
            out[name] = value
    return out


@implementer(ISourceResponse)
class SourceResponse:
    """An origin response adapted for the fill (see :class:`ISourceResponse`)."""

    def __init__(
        self,
        response: IResponse,
        status: int,
        meta: ObjectMeta | None,
        checksums: dict[str, str],
    ) -> None:
        self._response = response
        self.status = status
        self.meta = meta
        self.checksums = checksums
        self._protocol: _BodyProtocol | None = None

    def deliver(self, receiver: IBodyReceiver) -> None:
        self._protocol = _BodyProtocol(receiver)
        self._response.deliverBody(self._protocol)

    def abort(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            cast(Any, self._protocol.transport).stopProducing()


class _BodyProtocol(Protocol):
    def __init__(self, receiver: IBodyReceiver) -> None:
        self._receiver = receiver

    def dataReceived(self, data: bytes) -> None:
        self._receiver.data(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        # Only a node with an origin gets here, and it has loaded the HTTP
        # client (fastedge.cdn.service imports it with the origins): a node
        # without one does not carry twisted.web's client for this name.
        from twisted.web.client import ResponseDone

        if reason.check(ResponseDone, PotentialDataLoss):
            # PotentialDataLoss: no Content-Length; the receiver checks the size it expected.
            self._receiver.done()
        else:
            self._receiver.failed(reason)


@dataclass(frozen=True)
class PutResult:
    """What the origin answered to a PUT."""

    etag: str | None


@implementer(IObjectSource)
class S3Origin:
    """One S3-compatible endpoint with one set of credentials.

    :param client: a ``treq.client.HTTPClient`` (with the node's connection pool).
    """

    name = "origin"

    def __init__(
        self,
        cfg: S3OriginConfig,
        *,
        secret_access_key: str,
        client: Any,
        clock: IReactorTime,
        timeout: float,
        metrics: CdnMetrics,
    ) -> None:
        self._cfg = cfg
        #: Read at start by the service, when the secret lives in a file.
        self.secret_file = cfg.secret_access_key_file
        self._credentials: sigv4.Credentials | None = None
        self.set_secret(secret_access_key)
        self._client = client
        self._clock = clock
        self._timeout = timeout
        self._metrics = metrics
        parts = urlsplit(cfg.endpoint)
        self._scheme = parts.scheme
        self._netloc = parts.netloc

    def set_secret(self, secret_access_key: str) -> None:
        """Use these credentials from now on (read from a file at start)."""
        cfg = self._cfg
        self._credentials = sigv4.credentials(cfg.access_key_id, secret_access_key) if cfg.access_key_id else None

    def url_for(self, bucket: str, object_key: str) -> str:
        """The object's URL, encoded exactly as SigV4 canonicalises S3 paths."""
        encoded = quote(object_key, safe="/~")
        if self._cfg.addressing == "virtual":
            return f"{self._scheme}://{bucket}.{self._netloc}/{encoded}"
        return f"{self._scheme}://{self._netloc}/{bucket}/{encoded}"

    def _sign(self, method: str, url: str, headers: dict[str, str], payload_hash: str) -> dict[bytes, list[bytes]]:
        if self._credentials is not None:
            headers = sigv4.sign(
                self._credentials, self._cfg.region, method, url, headers, payload_hash, now=self._clock.seconds()
            )
        return {k.encode("latin-1"): [v.encode("latin-1")] for k, v in headers.items()}

    def _send(
        self,
        method: str,
        operation: str,
        url: str,
        headers: dict[bytes, list[bytes]],
        data: Any = None,
    ) -> Deferred[IResponse]:
        started = self._clock.seconds()
        d = self._client.request(
            method,
            url,
            headers=headers,
            data=data,
            unbuffered=True,
            allow_redirects=False,
        )
        timer = self._clock.callLater(self._timeout, d.cancel)

        def answered(response: IResponse) -> IResponse:
            if timer.active():
                timer.cancel()
            self._metrics.origin_latency.labels(operation, str(response.code)).observe(self._clock.seconds() - started)
            return response

        def failed(f: Failure) -> Failure:
            timed_out = not timer.active()
            if not timed_out:
                timer.cancel()
            outcome = "timeout" if timed_out or f.check(net_error.TimeoutError) else "error"
            self._metrics.origin_latency.labels(operation, outcome).observe(self._clock.seconds() - started)
            if timed_out or f.check(CancelledError, net_error.TimeoutError):
                raise OriginError(
                    "timeout",
                    f"no answer from the origin within {self._timeout} s",
                )
            raise OriginError(
                "error",
                "origin unreachable ({})".format(f.type.__name__ if f.type else "error"),
            )

        d.addCallbacks(answered, failed)
        return d

    def fetch(self, media: Any, key: str, *, etag: str | None, last_modified: str | None) -> Deferred[SourceResponse]:
        """GET ``key`` of a tenant's media (conditionally if validators are given)."""
        url = self.url_for(media.bucket, media.prefix + key)
        headers: dict[str, str] = {}
        if etag is not None:
            headers["If-None-Match"] = etag
        elif last_modified is not None:
            headers["If-Modified-Since"] = last_modified
        d = self._send("GET", "get", url, self._sign("GET", url, headers, _EMPTY_SHA256))
        return d.addCallback(self._adapt)

    def _adapt(self, response: IResponse) -> SourceResponse:
        code = response.code
        if code in (200, 206):
            return SourceResponse(
                response,
                200,
                meta_from_headers(response),
                checksums_from_headers(response),
            )
        # No body wanted for anything else: release the connection.
        response.deliverBody(_Discard())
        if code == 304:
            return SourceResponse(response, 304, None, {})
        if code == 404:
            return SourceResponse(response, 404, None, {})
        if code in (401, 403):
            raise OriginError("error", f"the origin refused our credentials (HTTP {code})")
        if code in (408, 504):
            raise OriginError("timeout", f"the origin timed out (HTTP {code})")
        raise OriginError("error", f"the origin answered HTTP {code}")

    def head(self, media: Any, key: str, *, size: int) -> Deferred[ObjectMeta | None]:
        """The object's metadata, or ``None`` if it does not exist.

        :param size: the size we know it has (a HEAD response's own length
            says nothing about the object to Twisted's client).
        """
        url = self.url_for(media.bucket, media.prefix + key)
        d = self._send("HEAD", "head", url, self._sign("HEAD", url, {}, _EMPTY_SHA256))

        def got(response: IResponse) -> ObjectMeta | None:
            response.deliverBody(_Discard())
            if response.code == 404:
                return None
            if response.code != 200:
                raise OriginError("error", f"the origin answered HTTP {response.code} to HEAD")
            return meta_from_headers(response, size=size)

        return d.addCallback(got)

    def put(
        self,
        media: Any,
        key: str,
        body: Any,
        *,
        length: int,
        content_type: str,
        md5: bytes,
        sha256_hex: str,
        cache_control: str | None = None,
    ) -> Deferred[PutResult]:
        """PUT a body (a file object positioned at 0) as ``key``.

        ``Content-MD5`` makes the origin check what it received.
        """
        url = self.url_for(media.bucket, media.prefix + key)
        # Content-Length is not signed: the Agent sets it from the body.
        headers = {
            "Content-Type": content_type,
            "Content-MD5": base64.b64encode(md5).decode("ascii"),
        }
        if cache_control:
            headers["Cache-Control"] = cache_control
        signed = self._sign("PUT", url, headers, sha256_hex)
        d = self._send("PUT", "put", url, signed, data=body)

        def got(response: IResponse) -> PutResult:
            response.deliverBody(_Discard())
            if response.code not in (200, 201):
                raise OriginError("error", f"the origin answered HTTP {response.code} to PUT")
            return PutResult(etag=_header(response, b"etag"))

        return d.addCallback(got)

    def _bucket_url(self, bucket: str) -> str:
        if self._cfg.addressing == "virtual":
            return f"{self._scheme}://{bucket}.{self._netloc}/"
        return f"{self._scheme}://{self._netloc}/{bucket}"

    @inlineCallbacks
    def list_keys(self, bucket: str, prefix: str, *, max_keys: int = 1000) -> Any:
        """Every key of ``bucket`` that starts with ``prefix`` (ListObjectsV2,
        following continuation tokens); fires with a list of full keys.

        :param max_keys: keys asked for per page (S3 answers at most 1000).
        :raises OriginError: the origin refused, or answered something that
            is not a listing of ``prefix``.
        """
        keys: list[str] = []
        token: str | None = None
        while True:
            params = {"list-type": "2", "max-keys": str(max_keys), "prefix": prefix}
            if token is not None:
                params["continuation-token"] = token
            # Sorted and encoded exactly as SigV4 canonicalises a query, so
            # the URL sent is the URL signed.
            query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
            url = self._bucket_url(bucket) + "?" + query
            response = yield self._send("GET", "list", url, self._sign("GET", url, {}, _EMPTY_SHA256))
            body = yield _content(response)
            if response.code != 200:
                raise OriginError("error", f"the origin answered HTTP {response.code} to a listing")
            # Imported with the first listing (an S3 origin's purge of a
            # prefix), not when the node starts: 0.4 MB that a node without
            # an origin never needs.
            import xml.etree.ElementTree as ElementTree

            try:
                root = ElementTree.fromstring(body)
            except ElementTree.ParseError:
                raise OriginError("error", "the origin answered a listing that is not XML") from None
            for found in root.iter(_S3_NS + "Key"):
                key = found.text or ""
                # Never trust the listing with another tenant's keys.
                if not key.startswith(prefix):
                    raise OriginError("error", "the origin listed a key outside the prefix asked for")
                keys.append(key)
            truncated = (root.findtext(_S3_NS + "IsTruncated") or "").strip().lower() == "true"
            token = root.findtext(_S3_NS + "NextContinuationToken")
            if not truncated:
                return keys
            if not token:
                raise OriginError("error", "the origin cut a listing without a continuation token")

    def delete(self, bucket: str, object_key: str) -> Deferred[None]:
        """DELETE one object (S3 answers 204 whether or not it existed)."""
        url = self.url_for(bucket, object_key)
        d = self._send("DELETE", "delete", url, self._sign("DELETE", url, {}, _EMPTY_SHA256))

        def got(response: IResponse) -> None:
            response.deliverBody(_Discard())
            if response.code not in (200, 204, 404):
                raise OriginError("error", f"the origin answered HTTP {response.code} to DELETE")
            self._metrics.origin_deletes.labels("deleted").inc()

        def failed(f: Failure) -> Failure:
            self._metrics.origin_deletes.labels("error").inc()
            return f

        return d.addCallback(got).addErrback(failed)

    @inlineCallbacks
    def delete_prefix(self, media: Any, prefix: str, *, max_keys: int = 1000) -> Any:
        """Delete every object of a tenant's media under ``prefix`` (relative
        to the tenant's own prefix, so nothing outside it can be named);
        fires with how many were deleted.

        Every key is listed first, then deleted one DELETE at a time: a
        continuation token need not survive deletions. On an error, the
        objects deleted so far stay deleted; a second call finishes the job.
        """
        keys = yield self.list_keys(media.bucket, media.prefix + prefix, max_keys=max_keys)
        for key in keys:
            yield self.delete(media.bucket, key)
        return len(keys)


class _Discard(Protocol):
    def connectionLost(self, reason: Failure = _DONE) -> None:
        pass
