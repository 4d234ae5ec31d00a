"""The /media resource and its fills, driven by a clock: coalescing,
verification, timeouts, stale copies and negative caching."""

from __future__ import annotations

import hashlib
import os

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from fastedge.cdn.cache import ObjectMeta
from fastedge.cdn.fill import NoPeers
from fastedge.cdn.interfaces import IObjectSource, ISourceResponse
from fastedge.cdn.metrics import CdnMetrics
from fastedge.cdn.origin import S3Origin
from fastedge.cdn.peers import PeerMetrics
from fastedge.cdn.resource import private_cache_control
from fastedge.cdn.service import CdnService, LocalOnly, TenantMedia
from fastedge.config import S3OriginConfig, parse_config
from fastedge.metrics.registry import new_registry
from fastedge.testing.fakes import FakeSource, FakeSourceResponse, run_inline

BODY = os.urandom(5000)
META = ObjectMeta(
    size=len(BODY),
    content_type="image/png",
    etag=f'"{hashlib.md5(BODY).hexdigest()}"',
    last_modified=None,
)


class _Harness:
    def __init__(self, test, source, fresh_seconds=100.0):
        self.reactor = MemoryReactorClock()
        cfg = parse_config(
            "[cdn]\nnegative_seconds = 30.0\norigin_timeout_seconds = 5.0\n",
            overrides={"node.data_dir": test.mktemp()},
        ).cdn
        self.media = TenantMedia("t1", source, "bucket", "p/", "public, max-age=60", fresh_seconds)
        registry = new_registry()
        self.metrics = CdnMetrics(registry)
        self.service = CdnService(
            cfg,
            reactor=self.reactor,
            metrics=self.metrics,
            tenants={"t1": self.media},
            origins={},
            pool=None,
            peer_metrics=PeerMetrics(registry),
            peers=NoPeers(),
            broadcast=LocalOnly(),
            run_blocking=lambda f, *a: run_inline(lambda: f(*a)),
        )
        self.service.startService()
        test.addCleanup(self.service.stopService)
        root = Resource()
        root.putChild(b"media", self.service.resource)
        self.http = StubTreq(root)

    def get(self, path="a.png", **headers):
        return self.http.get("http://node/media/t1/" + path, headers=headers or None)


class FillTests(SynchronousTestCase):
    def setUp(self):
        self.source = FakeSource()
        self.h = _Harness(self, self.source)

    def answer(self, index=0, status=200, meta=META, checksums=None):
        response = FakeSourceResponse(
            status,
            meta,
            checksums if checksums is not None else {"md5": META.etag.strip('"')},
        )
        self.source.fetches[index][2].callback(response)
        return response

    def test_fakes_provide_the_interfaces(self):
        """The fakes implement the real interfaces."""
        verifyObject(IObjectSource, self.source)
        verifyObject(ISourceResponse, FakeSourceResponse(200, META))

    def test_concurrent_requests_share_one_fetch(self):
        """Three requests before the source answers make one fetch; the
        bytes stream to all; the next request is a hit."""
        ds = [self.h.get() for _ in range(3)]
        self.h.http.flush()
        self.assertEqual(len(self.source.fetches), 1)
        response = self.answer()
        response.receiver.data(BODY[:1000])
        response.receiver.data(BODY[1000:])
        response.receiver.done()
        self.h.http.flush()
        for d in ds:
            r = self.successResultOf(d)
            self.assertEqual(self.successResultOf(r.content()), BODY)
        r = self.successResultOf(self.h.get())
        self.assertEqual(r.headers.getRawHeaders("x-cache"), ["HIT"])
        self.assertEqual(len(self.source.fetches), 1)
        self.assertEqual(self.h.metrics.coalesced._value.get(), 2)

    def test_first_bytes_before_the_download_ends(self):
        """The client has the headers and the first bytes while the rest of
        the object is still on its way from the source."""
        import treq

        d = self.h.get()
        self.h.http.flush()
        response = self.answer()
        response.receiver.data(BODY[:1000])
        self.h.http.flush()
        r = self.successResultOf(d)
        got = []
        done = treq.collect(r, got.append)
        self.h.http.flush()
        self.assertEqual(b"".join(got), BODY[:1000])
        self.assertNoResult(done)
        response.receiver.data(BODY[1000:])
        response.receiver.done()
        self.h.http.flush()
        self.successResultOf(done)
        self.assertEqual(b"".join(got), BODY)

    def test_short_body_is_not_cached(self):
        """A body shorter than announced is deleted and the next request
        fetches again."""
        d = self.h.get()
        self.h.http.flush()
        response = self.answer()
        response.receiver.data(BODY[:100])
        response.receiver.done()
        self.h.http.flush()
        self.assertEqual(len(self.h.service.cache), 0)
        self.assertEqual(os.listdir(os.path.join(self.h.service.cache.directory, "tmp")), [])
        self.h.get()
        self.h.http.flush()
        self.assertEqual(len(self.source.fetches), 2)
        del d

    def test_checksum_mismatch_is_not_cached(self):
        """A body whose MD5 is not the one the source vouched for is dropped."""
        self.h.get()
        self.h.http.flush()
        response = self.answer(checksums={"md5": "0" * 32})
        response.receiver.data(BODY)
        response.receiver.done()
        self.h.http.flush()
        self.assertEqual(len(self.h.service.cache), 0)

    def test_stalled_body_times_out(self):
        """No data for origin_timeout_seconds fails the fill and stops the source."""
        self.h.get()
        self.h.http.flush()
        response = self.answer()
        response.receiver.data(BODY[:10])
        self.h.reactor.advance(5.0)
        self.assertTrue(response.aborted)
        self.assertEqual(len(self.h.service.cache), 0)

    def test_not_found_is_remembered(self):
        """An origin 404 is answered locally until negative_seconds pass."""
        d = self.h.get()
        self.h.http.flush()
        self.answer(status=404, meta=None)
        self.h.http.flush()
        self.assertEqual(self.successResultOf(d).code, 404)
        r = self.successResultOf(self.h.get())
        self.assertEqual(r.code, 404)
        self.assertEqual(len(self.source.fetches), 1)
        self.h.reactor.advance(31)
        self.h.get()
        self.h.http.flush()
        self.assertEqual(len(self.source.fetches), 2)

    def test_stale_copy_is_revalidated(self):
        """Past fresh_seconds the copy is revalidated with its ETag; a 304
        serves it again without a body from the source."""
        self.h.get()
        self.h.http.flush()
        response = self.answer()
        response.receiver.data(BODY)
        response.receiver.done()
        self.h.reactor.advance(101)
        d = self.h.get()
        self.h.http.flush()
        self.assertEqual(self.source.fetches[1][1], META.etag)
        self.answer(1, status=304, meta=None)
        self.h.http.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.headers.getRawHeaders("x-cache"), ["REVALIDATED"])
        self.assertEqual(self.successResultOf(r.content()), BODY)


class _Origin(Resource):
    """A scripted S3 at the HTTP level: answers with ``self.mode``."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.mode = "ok"
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        if self.mode == "hang":
            return NOT_DONE_YET
        if self.mode == "error":
            request.setResponseCode(500)
            return b""
        request.setHeader(b"content-type", b"image/png")
        request.setHeader(b"etag", META.etag.encode())
        return BODY


class OriginFailureTests(SynchronousTestCase):
    """The real S3 origin client against a scripted origin."""

    def setUp(self):
        self.origin = _Origin()
        self.clock = Clock()
        harness_source = S3Origin(
            S3OriginConfig(endpoint="http://s3.test", access_key_id="AK"),
            secret_access_key="SK",
            client=StubTreq(self.origin),
            clock=self.clock,
            timeout=5.0,
            metrics=CdnMetrics(new_registry()),
        )
        self.h = _Harness(self, harness_source, fresh_seconds=10.0)
        # One clock for the node and the origin client.
        self.h.reactor = self.clock
        self.h.service._reactor = self.clock
        self.h.service.filler.clock = self.clock
        self.h.service.resource._clock = self.clock

    def test_signed_request(self):
        """Requests carry a SigV4 Authorization header for the configured key."""
        self.h.get()
        self.h.http.flush()
        auth = self.origin.requests[0].getHeader(b"authorization")
        self.assertTrue(auth.startswith(b"AWS4-HMAC-SHA256 Credential=AK/"), auth)
        self.assertEqual(self.origin.requests[0].path, b"/bucket/p/a.png")

    def test_timeout_is_504(self):
        """An origin that does not answer within the timeout gives 504."""
        self.origin.mode = "hang"
        d = self.h.get()
        self.h.http.flush()
        self.clock.advance(5.0)
        self.h.http.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.code, 504)
        self.assertEqual(self.successResultOf(r.json())["error"]["code"], "origin_timeout")

    def test_error_is_502_or_stale(self):
        """An origin 500 gives 502 when nothing is cached, and the stale copy
        (X-Cache: STALE) when one is."""
        self.origin.mode = "error"
        r = self.successResultOf(self.h.get())
        self.assertEqual(r.code, 502)
        self.origin.mode = "ok"
        r = self.successResultOf(self.h.get())
        self.assertEqual(self.successResultOf(r.content()), BODY)
        self.clock.advance(11)
        self.origin.mode = "error"
        r = self.successResultOf(self.h.get())
        self.assertEqual((r.code, r.headers.getRawHeaders("x-cache")), (200, ["STALE"]))
        self.assertEqual(self.successResultOf(r.content()), BODY)
        self.flushLoggedErrors()


class PrivateCacheControlTests(SynchronousTestCase):
    def test_public_becomes_private(self) -> None:
        """A thread's media keep the tenant's directives but for one viewer
        only: ``public`` and ``s-maxage`` give way to ``private``."""
        self.assertEqual(private_cache_control("public, max-age=86400"), "private, max-age=86400")
        self.assertEqual(
            private_cache_control("max-age=60, s-maxage=600, public, immutable"), "private, max-age=60, immutable"
        )
        self.assertEqual(private_cache_control("private, no-cache"), "private, no-cache")
        self.assertEqual(private_cache_control(""), "private")
