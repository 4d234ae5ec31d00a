"""The media CDN end to end: a whole node on loopback in front of a real
S3 server (SeaweedFS) that checks SigV4 signatures."""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.trial.unittest import TestCase

from tests.support.nodes import create_tenants, loopback_http_client, start_node
from tests.support.seaweed import shared_s3

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 40


def _config(s3, tenants, *, secret=None, extra=""):
    lines = [
        "[http]",
        'endpoint = "tcp:0:interface=127.0.0.1"',
        "[tls]",
        "enabled = false",
        "[cdn]",
        "negative_seconds = 300.0",
        extra,
        "[cdn.origins.default]",
        f'endpoint = "{s3.endpoint}"',
        f'access_key_id = "{s3.access_key}"',
        f'secret_access_key = "{secret or s3.secret_key}"',
    ]
    for tenant_id, bucket, prefix in tenants:
        lines += [
            f"[cdn.tenants.{tenant_id}]",
            f'bucket = "{bucket}"',
            f'prefix = "{prefix}"',
        ]
    return "\n".join(lines) + "\n"


class CdnTests(TestCase):
    """Requests against one node whose tenants A and B share one bucket
    under different prefixes."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.http = loopback_http_client(self)
        self.s3 = shared_s3()
        # One bucket for every test: each SeaweedFS bucket takes volumes of
        # their own, and a few dozen would exhaust -volume.max.
        self.bucket = "media"
        self.s3.create_bucket(self.bucket)
        run = os.urandom(4).hex()
        self.pa, self.pb = run + "/a/", run + "/b/"
        self.data_dir = os.path.abspath(self.mktemp())
        (self.a, self.a_key), (self.b, self.b_key) = create_tenants(
            os.path.join(self.data_dir, "fastedge.sqlite3"), ["A", "B"]
        )
        self.config = _config(self.s3, [(self.a, self.bucket, self.pa), (self.b, self.bucket, self.pb)])
        self.node = yield start_node(self.config, self.data_dir)
        self.addCleanup(lambda: self.node.stop())

    def url(self, tenant, key):
        return f"{self.node.http}/media/{tenant}/{key}"

    @defer.inlineCallbacks
    def get(self, url, **headers):
        response = yield self.http.get(url, headers=headers or None)
        body = yield response.content()
        return response, body

    def header(self, response, name):
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    def origin_gets(self):
        return self.s3.get_requests(self.bucket)

    @defer.inlineCallbacks
    def test_miss_then_hit_with_origin_headers(self):
        """The first GET fetches from the origin (MISS) with its Content-Type
        and ETag; the second is a HIT that the origin never sees."""
        etag = self.s3.put(self.bucket, self.pa + "img/cat.png", PNG, "image/png")
        response, body = yield self.get(self.url(self.a, "img/cat.png"))
        self.assertEqual((response.code, body), (200, PNG))
        self.assertEqual(self.header(response, "x-cache"), "MISS")
        self.assertEqual(self.header(response, "content-type"), "image/png")
        self.assertEqual(self.header(response, "etag"), etag)
        self.assertEqual(self.header(response, "accept-ranges"), "bytes")
        self.assertEqual(self.header(response, "cache-control"), "public, max-age=86400")
        before = self.origin_gets()
        response, body = yield self.get(self.url(self.a, "img/cat.png"))
        self.assertEqual((response.code, body, self.header(response, "x-cache")), (200, PNG, "HIT"))
        self.assertEqual(self.origin_gets(), before)

    @defer.inlineCallbacks
    def test_metrics(self):
        """Hits by tier, misses, bytes by source, cache size and origin
        latency appear on /metrics."""
        self.s3.put(self.bucket, self.pa + "m.png", PNG, "image/png")
        for _ in range(2):
            yield self.get(self.url(self.a, "m.png"))
        response, text = yield self.get(self.node.http + "/metrics")
        lines = text.decode().splitlines()

        def value(prefix):
            return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))

        self.assertEqual(value('fastedge_cdn_hits_total{tier="memory"}'), 1)
        self.assertEqual(value('fastedge_cdn_misses_total{reason="not_cached"}'), 1)
        self.assertEqual(value('fastedge_cdn_served_bytes_total{source="origin"}'), len(PNG))
        self.assertEqual(value('fastedge_cdn_served_bytes_total{source="memory"}'), len(PNG))
        self.assertEqual(value('fastedge_cdn_cache_bytes{tier="disk"}'), len(PNG))
        self.assertEqual(value('fastedge_cdn_cache_objects{tier="memory"}'), 1)
        self.assertEqual(value("fastedge_cdn_origin_request_duration_seconds_count"), 1)
        self.assertEqual(
            value('fastedge_http_requests_total{code="200",method="GET",route="/media/{tenant}/{key}"}'), 2
        )

    @defer.inlineCallbacks
    def test_wrong_signature_is_an_origin_error(self):
        """With a wrong secret the origin refuses the signature, and the
        client gets a 502 JSON error (nothing cached)."""
        yield self.node.stop()
        data_dir = os.path.abspath(self.mktemp())
        ((tenant, _),) = create_tenants(os.path.join(data_dir, "fastedge.sqlite3"), ["C"])
        self.s3.put(self.bucket, self.pa + "c/x.png", PNG, "image/png")
        node = yield start_node(
            _config(self.s3, [(tenant, self.bucket, self.pa + "c/")], secret="wrong-secret"),
            data_dir,
        )
        self.addCleanup(node.stop)
        response = yield self.http.get(f"{node.http}/media/{tenant}/x.png")
        body = yield response.json()
        self.assertEqual((response.code, body["error"]["code"]), (502, "origin_error"))
        self.assertEqual(len(node.cdn.cache), 0)

    @defer.inlineCallbacks
    def test_concurrent_misses_fetch_once(self):
        """Twenty clients asking at once for an uncached object cause exactly
        one GET at the origin, and all receive the whole object."""
        payload = os.urandom(300_000)
        self.s3.put(self.bucket, self.pa + "big.png", payload, "image/png")
        before = self.origin_gets()
        results = yield defer.gatherResults([self.get(self.url(self.a, "big.png")) for _ in range(20)])
        self.assertEqual([(r.code, b == payload) for r, b in results], [(200, True)] * 20)
        self.assertEqual(self.origin_gets() - before, 1)

    @defer.inlineCallbacks
    def test_cache_survives_restart(self):
        """A restarted node serves what it had cached without asking the origin."""
        self.s3.put(self.bucket, self.pa + "keep.png", PNG, "image/png")
        yield self.get(self.url(self.a, "keep.png"))
        yield self.node.stop()
        self.node = yield start_node(self.config, self.data_dir)
        before = self.origin_gets()
        response, body = yield self.get(self.url(self.a, "keep.png"))
        self.assertEqual((response.code, body, self.header(response, "x-cache")), (200, PNG, "HIT"))
        self.assertEqual(self.origin_gets(), before)

    @defer.inlineCallbacks
    def test_ranges_and_validators(self):
        """Single ranges get 206 (or 416 when unsatisfiable or malformed),
        If-None-Match and If-Modified-Since get 304."""
        self.s3.put(self.bucket, self.pa + "r.png", PNG, "image/png")
        url = self.url(self.a, "r.png")
        response, body = yield self.get(url)
        etag, modified = self.header(response, "etag"), self.header(response, "last-modified")
        response, body = yield self.get(url, range="bytes=10-19")
        self.assertEqual((response.code, body), (206, PNG[10:20]))
        self.assertEqual(self.header(response, "content-range"), f"bytes 10-19/{len(PNG)}")
        response, body = yield self.get(url, range="bytes=-5")
        self.assertEqual((response.code, body), (206, PNG[-5:]))
        for bad in (
            "bytes=abc",
            f"bytes={len(PNG)}-",
            "bytes=5-1",
            "bytes=--1",
        ):
            response, body = yield self.get(url, range=bad)
            self.assertEqual(response.code, 416, bad)
            self.assertEqual(self.header(response, "content-range"), f"bytes */{len(PNG)}")
        response, body = yield self.get(url, range="items=0-1")
        self.assertEqual((response.code, body), (200, PNG))
        response, body = yield self.get(url, **{"if-none-match": etag})
        self.assertEqual((response.code, body), (304, b""))
        response, body = yield self.get(url, **{"if-modified-since": modified})
        self.assertEqual(response.code, 304)
        response, body = yield self.get(url, **{"if-none-match": '"other"'})
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_head(self):
        """HEAD answers the headers (with the length) and no body."""
        self.s3.put(self.bucket, self.pa + "h.png", PNG, "image/png")
        for _ in range(2):
            response = yield self.http.head(self.url(self.a, "h.png"))
            self.assertEqual(response.code, 200)
            self.assertEqual(self.header(response, "content-type"), "image/png")
            self.assertEqual((yield response.content()), b"")

    @defer.inlineCallbacks
    def test_origin_404_is_cached_briefly(self):
        """A missing object is 404, and asking again within negative_seconds
        does not reach the origin, even once the object exists there."""
        response, body = yield self.get(self.url(self.a, "nope.png"))
        self.assertEqual(response.code, 404)
        self.s3.put(self.bucket, self.pa + "nope.png", PNG, "image/png")
        before = self.origin_gets()
        response, body = yield self.get(self.url(self.a, "nope.png"))
        self.assertEqual(response.code, 404)
        self.assertEqual(self.origin_gets(), before)

    @defer.inlineCallbacks
    def test_tenants_are_isolated(self):
        """The same key of two tenants gives each its own object; no URL of
        tenant A reaches tenant B's prefix."""
        self.s3.put(self.bucket, self.pa + "same.png", PNG, "image/png")
        self.s3.put(self.bucket, self.pb + "same.png", PNG[::-1], "image/png")
        self.s3.put(self.bucket, self.pb + "secret.png", PNG, "image/png")
        _, body_a = yield self.get(self.url(self.a, "same.png"))
        _, body_b = yield self.get(self.url(self.b, "same.png"))
        self.assertEqual((body_a, body_b), (PNG, PNG[::-1]))
        for path in (
            "../b/secret.png",
            "..%2Fb%2Fsecret.png",
            "%2E%2E/b/secret.png",
            "x/../../b/secret.png",
        ):
            response, _ = yield self.get(self.url(self.a, path))
            self.assertEqual(response.code, 400, path)
        response, _ = yield self.get(self.url(self.a, "b/secret.png"))
        self.assertEqual(response.code, 404)

    @defer.inlineCallbacks
    def test_bad_paths(self):
        """NUL, encoded slashes, empty segments, overlong keys, unknown
        tenants and other methods each get their JSON error."""
        cases = [
            (self.url(self.a, "a%00b.png"), 400),
            (self.url(self.a, "a%2Fb.png"), 400),
            (self.url(self.a, "a//b.png"), 400),
            (self.url(self.a, "x" * 2000), 414),
            (self.url(self.a, "%FF.png"), 400),
            (self.url("nosuchtenant", "x.png"), 404),
            (self.node.http + "/media/" + self.a, 404),
        ]
        for url, status in cases:
            response, body = yield self.get(url)
            self.assertEqual(response.code, status, url)
            self.assertIn(b'"error"', body)
        response = yield self.http.post(self.url(self.a, "x.png"), data=b"x")
        self.assertEqual(response.code, 405)

    @defer.inlineCallbacks
    def upload(self, key, data, content_type="image/png", api_key=None):
        response = yield self.http.put(
            self.node.http + "/api/v1/manage/media",
            params={"key": key},
            data=data,
            headers={
                "authorization": "Bearer " + (api_key or self.a_key),
                "content-type": content_type,
            },
        )
        body = yield response.json()
        return response.code, body

    @defer.inlineCallbacks
    def test_upload_stores_at_origin_and_in_cache(self):
        """An upload with the tenant's key lands under its prefix at the
        origin and is then served from the cache."""
        code, body = yield self.upload("up/p.png", PNG)
        self.assertEqual(code, 201, body)
        self.assertEqual(body["url"], f"/media/{self.a}/up/p.png")
        self.assertEqual(self.s3.get(self.bucket, self.pa + "up/p.png"), PNG)
        before = self.origin_gets()
        response, data = yield self.get(self.url(self.a, "up/p.png"))
        self.assertEqual((response.code, data, self.header(response, "x-cache")), (200, PNG, "HIT"))
        self.assertEqual(self.origin_gets(), before)
        # Tenant B's key writes under B's prefix, never A's.
        code, _ = yield self.upload("up/p.png", PNG[:-1], api_key=self.b_key)
        self.assertEqual(code, 201)
        self.assertEqual(self.s3.get(self.bucket, self.pa + "up/p.png"), PNG)
        self.assertEqual(self.s3.get(self.bucket, self.pb + "up/p.png"), PNG[:-1])

    @defer.inlineCallbacks
    def test_bad_uploads(self):
        """Wrong types, content that is not what it claims, empty or
        oversized bodies, bad keys and bad keys of API are refused, and
        nothing reaches the origin."""
        cases = [
            (("x.png", PNG, "text/html"), 415, "unsupported_media_type"),
            (
                ("x.png", b"<html><script>alert(1)</script></html>", "image/png"),
                415,
                "content_mismatch",
            ),
            (("x.png", b"", "image/png"), 400, "empty_body"),
            (("../x.png", PNG, "image/png"), 400, "bad_key"),
            (("x" * 1100, PNG, "image/png"), 414, "key_too_long"),
        ]
        for args, status, code in cases:
            got_status, body = yield self.upload(*args)
            self.assertEqual((got_status, body["error"]["code"]), (status, code), args[0][:20])
        response = yield self.http.put(
            self.node.http + "/api/v1/manage/media",
            params={"key": "big.png"},
            data=PNG + b"\x00" * (10 * 1024 * 1024),
            headers={
                "authorization": "Bearer " + self.a_key,
                "content-type": "image/png",
            },
        )
        self.assertEqual(response.code, 413)
        yield response.content()
        response = yield self.http.put(
            self.node.http + "/api/v1/manage/media",
            params={"key": "x.png"},
            data=PNG,
            headers={"content-type": "image/png"},
        )
        self.assertEqual(response.code, 401)
        yield response.content()
        self.assertIsNone(self.s3.get(self.bucket, self.pa + "x.png"))

    @defer.inlineCallbacks
    def test_purge_key_and_prefix(self):
        """Purging a key or a prefix makes the next request go to the origin
        again; another tenant's purge of the same key changes nothing for A."""
        for key in ("p/1.png", "p/2.png", "q/3.png"):
            self.s3.put(self.bucket, self.pa + key, PNG, "image/png")
            yield self.get(self.url(self.a, key))

        @defer.inlineCallbacks
        def purge(body, api_key):
            response = yield self.http.post(
                self.node.http + "/api/v1/manage/media/purge",
                json=body,
                headers={"authorization": "Bearer " + api_key},
            )
            return response.code, (yield response.json())

        code, body = yield purge({"key": "p/1.png"}, self.b_key)
        self.assertEqual((code, body["purged"]), (200, 0))
        response, _ = yield self.get(self.url(self.a, "p/1.png"))
        self.assertEqual(self.header(response, "x-cache"), "HIT")
        code, body = yield purge({"key": "p/1.png"}, self.a_key)
        self.assertEqual((code, body["purged"]), (200, 1))
        response, _ = yield self.get(self.url(self.a, "p/1.png"))
        self.assertEqual(self.header(response, "x-cache"), "MISS")
        code, body = yield purge({"prefix": "p/"}, self.a_key)
        self.assertEqual(body["purged"], 2)
        response, _ = yield self.get(self.url(self.a, "q/3.png"))
        self.assertEqual(self.header(response, "x-cache"), "HIT")
        code, body = yield purge({"key": "x", "prefix": "y"}, self.a_key)
        self.assertEqual((code, body["error"]["code"]), (400, "bad_purge"))
        code, body = yield purge({}, self.a_key)
        self.assertEqual((code, body["error"]["code"]), (400, "bad_purge"))
        # null is not "left out": this must not purge everything under "".
        code, body = yield purge({"key": None, "prefix": ""}, self.a_key)
        self.assertEqual((code, body["error"]["code"], body["error"]["field"]), (400, "wrong_type", "key"))
        response, _ = yield self.get(self.url(self.a, "q/3.png"))
        self.assertEqual(self.header(response, "x-cache"), "HIT")

    @defer.inlineCallbacks
    def test_delete_from_origin(self):
        """Media delete removes a key, then every key under a prefix, from
        the tenant's origin and its cache; tenant B's objects with the same
        keys stay, and a prefix that would leave the tenant is refused."""
        keys = ("p/1.png", "p/2.png", "q/3.png")
        for key in keys:
            self.s3.put(self.bucket, self.pa + key, PNG, "image/png")
            self.s3.put(self.bucket, self.pb + key, PNG, "image/png")
            yield self.get(self.url(self.a, key))

        @defer.inlineCallbacks
        def delete(body, api_key):
            response = yield self.http.post(
                self.node.http + "/api/v1/manage/media/delete",
                json=body,
                headers={"authorization": "Bearer " + api_key},
            )
            return response.code, (yield response.json())

        for bad in ("../", "../b/", "./", "/", "p//", "p\\..", "a\x00"):
            code, body = yield delete({"prefix": bad}, self.a_key)
            self.assertEqual((code, body["error"]["code"]), (400, "bad_key"), bad)
        code, body = yield delete({"key": "p/1.png", "prefix": "p/"}, self.a_key)
        self.assertEqual((code, body["error"]["code"]), (400, "bad_purge"))
        code, body = yield delete({"key": "p/1.png"}, self.a_key)
        self.assertEqual((code, body), (200, {"deleted": 1, "purged": 1, "key": "p/1.png"}))
        self.assertIsNone(self.s3.get(self.bucket, self.pa + "p/1.png"))
        code, body = yield delete({"prefix": "p/"}, self.a_key)
        self.assertEqual((code, body), (200, {"deleted": 1, "purged": 1, "prefix": "p/"}))
        self.assertEqual(self.s3.get(self.bucket, self.pa + "q/3.png"), PNG)
        code, body = yield delete({"prefix": ""}, self.a_key)
        self.assertEqual((code, body), (200, {"deleted": 1, "purged": 1, "prefix": ""}))
        for key in keys:
            self.assertIsNone(self.s3.get(self.bucket, self.pa + key))
            self.assertEqual(self.s3.get(self.bucket, self.pb + key), PNG)
            response, _ = yield self.get(self.url(self.a, key))
            self.assertEqual(response.code, 404)
            response, _ = yield self.get(self.url(self.b, key))
            self.assertEqual(response.code, 200)
        deletes = {
            s.labels["outcome"]: s.value
            for family in self.node.cdn.metrics.origin_deletes.collect()
            for s in family.samples
            if s.name.endswith("_total")
        }
        self.assertEqual(deletes, {"deleted": 3.0})

    @defer.inlineCallbacks
    def test_client_disconnect_mid_download_still_fills(self):
        """A client that goes away after the first bytes of a miss leaves the
        download running: the object ends up whole in the cache."""
        payload = os.urandom(2_000_000)
        self.s3.put(self.bucket, self.pa + "large.bin", payload, "image/png")
        got_bytes = defer.Deferred()

        class Impatient(Protocol):
            def connectionMade(self):
                self.transport.write(f"GET /media/{tenant}/large.bin HTTP/1.1\r\nHost: x\r\n\r\n".encode())

            def dataReceived(self, data):
                self.transport.abortConnection()
                if not got_bytes.called:
                    got_bytes.callback(None)

        tenant = self.a
        factory = ClientFactory.forProtocol(Impatient)
        port = int(self.node.http.rsplit(":", 1)[1])
        reactor.connectTCP("127.0.0.1", port, factory)
        yield got_bytes
        fills = list(self.node.cdn.filler.in_flight.values())
        if fills:
            yield fills[0].when_finished()
        response, body = yield self.get(self.url(self.a, "large.bin"))
        self.assertEqual(
            (response.code, body == payload, self.header(response, "x-cache")),
            (200, True, "HIT"),
        )
        self.assertEqual(os.listdir(os.path.join(self.data_dir, "media-cache", "tmp")), [])


class MediaOverHttp2Tests(TestCase):
    """Media through the HTTPS listener with HTTP/2."""

    timeout = 60

    @defer.inlineCallbacks
    def test_media_over_http2(self):
        """A miss and a hit of a large object, a range and a HEAD all work on
        HTTP/2 streams, and errors are JSON there too."""
        from tests.support.http2 import h2_request

        s3 = shared_s3()
        s3.create_bucket("media")
        prefix = os.urandom(4).hex() + "/"
        data_dir = os.path.abspath(self.mktemp())
        ((tenant, _),) = create_tenants(os.path.join(data_dir, "fastedge.sqlite3"), ["H2"])
        config = _config(s3, [(tenant, "media", prefix)]).replace(
            "[tls]\nenabled = false", '[tls]\nendpoint = "tcp:0:interface=127.0.0.1"'
        )
        node = yield start_node(config, data_dir)
        self.addCleanup(node.stop)
        payload = os.urandom(1_500_000)
        s3.put("media", prefix + "v.png", payload, "image/png")
        path = f"/media/{tenant}/v.png".encode()
        for expected in (b"MISS", b"HIT"):
            response, alpn = yield h2_request(node.https_port, b"GET", path)
            self.assertEqual(
                (alpn, response.status, response.headers.get(b"x-cache")),
                (b"h2", 200, expected),
            )
            self.assertEqual(response.body, payload)
        response, _ = yield h2_request(node.https_port, b"GET", path, headers=[(b"range", b"bytes=100-199")])
        self.assertEqual((response.status, response.body), (206, payload[100:200]))
        response, _ = yield h2_request(node.https_port, b"HEAD", path)
        self.assertEqual((response.status, response.body), (200, b""))
        self.assertEqual(response.headers.get(b"content-length"), str(len(payload)).encode())
        response, _ = yield h2_request(node.https_port, b"GET", f"/media/{tenant}/..%2Fx".encode())
        self.assertEqual(response.status, 400)
        self.assertIn(b'"bad_key"', response.body)


class _ShortOrigin(Protocol):
    """A scripted S3 at the wire: announces more bytes than it sends, then closes."""

    def dataReceived(self, data):
        if b"\r\n\r\n" in data:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n"
                b'ETag: "0123456789abcdef0123456789abcdef"\r\n\r\n' + b"x" * 40000
            )
            self.transport.loseConnection()


class ShortOriginTests(TestCase):
    """An origin whose body ends early."""

    timeout = 30

    @defer.inlineCallbacks
    def test_fewer_bytes_than_announced(self):
        """The client sees an incomplete response (not a whole one), nothing
        is cached, no temporary file is left, and the failure is counted."""
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory

        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(_ShortOrigin))
        self.addCleanup(port.stopListening)
        data_dir = os.path.abspath(self.mktemp())
        ((tenant, _),) = create_tenants(os.path.join(data_dir, "fastedge.sqlite3"), ["S"])

        class _Fake:
            endpoint = f"http://127.0.0.1:{port.getHost().port}"
            access_key = "AK"
            secret_key = "SK"

        node = yield start_node(_config(_Fake, [(tenant, "media", "")]), data_dir)
        self.addCleanup(node.stop)
        http = loopback_http_client(self)
        try:
            response = yield http.get(f"{node.http}/media/{tenant}/short.png")
            body = yield response.content()
        except Exception:
            body = None  # the connection was aborted, before or after the headers
        self.assertIsNone(body)
        self.assertEqual(len(node.cdn.cache), 0)
        self.assertEqual(os.listdir(os.path.join(data_dir, "media-cache", "tmp")), [])
        failures = {
            s.labels["reason"]: s.value
            for family in node.cdn.metrics.fill_failures.collect()
            for s in family.samples
            if s.name.endswith("_total")
        }
        self.assertEqual(failures, {"short_body": 1.0})
        self.flushLoggedErrors()


class OriginListingTests(TestCase):
    """:class:`fastedge.cdn.origin.S3Origin` listing and deleting by prefix
    against the real SeaweedFS, with pages smaller than the listing."""

    timeout = 60

    def setUp(self):
        from prometheus_client import CollectorRegistry
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        from fastedge.cdn.metrics import CdnMetrics
        from fastedge.cdn.origin import S3Origin
        from fastedge.config import S3OriginConfig

        self.s3 = shared_s3()
        self.bucket = "media"
        self.s3.create_bucket(self.bucket)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.origin = S3Origin(
            S3OriginConfig(endpoint=self.s3.endpoint, access_key_id=self.s3.access_key),
            secret_access_key=self.s3.secret_key,
            client=HTTPClient(Agent(reactor, pool=pool)),
            clock=reactor,
            timeout=30.0,
            metrics=CdnMetrics(CollectorRegistry()),
        )
        run = os.urandom(4).hex()
        # "a/" and "a-b/" share the characters "a": a prefix is not a directory.
        self.pa, self.pab = run + "/a/", run + "/a-b/"

    @defer.inlineCallbacks
    def test_pages_and_isolation(self):
        """Seven keys listed two per page come back whole and in order
        (names that need encoding included); delete_prefix deletes exactly
        them and leaves the neighbouring prefix alone."""
        from types import SimpleNamespace

        names = ["k{}.png".format(i) for i in range(5)] + ["sp ace/+plus&é.png", "z/deep/x.png"]
        for name in names:
            self.s3.put(self.bucket, self.pa + name, PNG, "image/png")
        self.s3.put(self.bucket, self.pab + "k0.png", PNG, "image/png")
        listed = yield self.origin.list_keys(self.bucket, self.pa, max_keys=2)
        self.assertEqual(listed, sorted(self.pa + n for n in names))
        media = SimpleNamespace(bucket=self.bucket, prefix=self.pa)
        deleted = yield self.origin.delete_prefix(media, "", max_keys=2)
        self.assertEqual(deleted, len(names))
        self.assertEqual((yield self.origin.list_keys(self.bucket, self.pa, max_keys=2)), [])
        self.assertEqual(self.s3.get(self.bucket, self.pab + "k0.png"), PNG)
        self.assertEqual((yield self.origin.list_keys(self.bucket, self.pab)), [self.pab + "k0.png"])
