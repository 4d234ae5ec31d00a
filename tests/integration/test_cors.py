"""CORS for the public API on a real node over loopback HTTP: each tenant's
``allowedOrigins``, answered on preflights and actual requests, and never
for the tenant API."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from fastedge.api.keys import hash_api_key, new_api_key
from fastedge.store.model import ReadPreference
from fastedge.tap import Options, makeService
from tests.support.nodes import loopback_http_client

PRIMARY = ReadPreference.PRIMARY
SITE_A = "https://blog.a.example"
SITE_B = "http://localhost:9000"


class CorsTests(TestCase):
    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        data_dir = os.path.abspath(self.mktemp())
        options = Options()
        options.parseOptions(
            [
                "--data-dir",
                data_dir,
                "--http",
                "tcp:0:interface=127.0.0.1",
                "--mesh",
                "tcp:0:interface=127.0.0.1",
                "--node-id",
                "cors-1",
                "--dns-port",
                "0",
                "--https",
                "tcp:0:interface=127.0.0.1",
            ]
        )
        self.node = makeService(options)
        self.node.privilegedStartService()
        self.node.startService()
        self.addCleanup(self.node.stopService)
        self.store = yield self.node.getServiceNamed("store").when_ready()
        listener = self.node.getServiceNamed("http").getServiceNamed("http")
        port = yield listener.when_listening()
        self.base = "http://127.0.0.1:{}".format(port.getHost().port)
        self.http = loopback_http_client(self, listener.factory)
        self.a, self.a_key = yield self.tenant("A")
        self.b, self.b_key = yield self.tenant("B")
        yield self.settings(self.a_key, {"allowedOrigins": [SITE_A]})
        yield self.settings(self.b_key, {"allowedOrigins": [SITE_B]})

    @inlineCallbacks
    def tenant(self, name: str) -> Any:
        now = 1_700_000_000_000
        tenant = (yield self.store.create_tenant(name, "global", created_ms=now, read_preference=PRIMARY)).value
        key = new_api_key()
        yield self.store.add_api_key(tenant.id, hash_api_key(key), created_ms=now, read_preference=PRIMARY)
        return tenant.id, key

    @inlineCallbacks
    def settings(self, key: str, patch: dict[str, Any]) -> Any:
        r = yield self.http.patch(
            self.base + "/api/v1/manage/settings", json=patch, headers={"authorization": "Bearer " + key}
        )
        self.assertEqual(r.code, 200, (yield r.text()))

    def comments(self, tenant: str) -> str:
        return "{}/api/v1/{}/comments?urlId=https%3A%2F%2Fx.example%2Fp".format(self.base, tenant)

    def preflight(self, url: str, origin: str, method: str = "POST") -> Any:
        return self.http.request(
            "OPTIONS",
            url,
            headers={
                "origin": origin,
                "access-control-request-method": method,
                "access-control-request-headers": "content-type",
            },
        )

    @staticmethod
    def header(response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    @inlineCallbacks
    def test_allowed_origin_preflight_and_credentials(self):  # type: ignore[no-untyped-def]
        """A preflight from an allowed origin is 204 with that origin, the
        route's methods, content-type allowed and credentials; the actual
        POST and GET carry the origin and credentials, and the session
        cookie works cross-origin."""
        r = yield self.preflight(self.comments(self.a), SITE_A)
        self.assertEqual(r.code, 204)
        self.assertEqual(self.header(r, "access-control-allow-origin"), SITE_A)
        self.assertEqual(self.header(r, "access-control-allow-credentials"), "true")
        self.assertEqual(self.header(r, "access-control-allow-methods"), "GET, OPTIONS, POST")
        self.assertIn("content-type", self.header(r, "access-control-allow-headers") or "")
        self.assertEqual(self.header(r, "vary"), "Origin")
        posted = yield self.http.post(
            self.comments(self.a), json={"text": "hi", "displayName": "Ann"}, headers={"origin": SITE_A}
        )
        self.assertEqual(posted.code, 201)
        self.assertEqual(self.header(posted, "access-control-allow-origin"), SITE_A)
        self.assertEqual(self.header(posted, "access-control-allow-credentials"), "true")
        cookie = posted.headers.getRawHeaders("set-cookie")[0].split(";")[0]
        read = yield self.http.get(self.comments(self.a), headers={"origin": SITE_A, "cookie": cookie})
        self.assertEqual(self.header(read, "access-control-allow-origin"), SITE_A)
        self.assertEqual(self.header(read, "vary"), "Origin")
        self.assertTrue((yield read.json())["comments"][0]["isMine"])
        # Errors carry the headers too, so the caller's script can read them.
        bad = yield self.http.post(self.comments(self.a), json={"text": ""}, headers={"origin": SITE_A})
        self.assertEqual(bad.code, 400)
        self.assertEqual(self.header(bad, "access-control-allow-origin"), SITE_A)
        # The like route's preflight lists its own methods.
        comment_id = (yield posted.json())["comment"]["id"]
        like = "{}/api/v1/{}/comments/{}/like".format(self.base, self.a, comment_id)
        r = yield self.preflight(like, SITE_A, "DELETE")
        self.assertEqual((r.code, self.header(r, "access-control-allow-methods")), (204, "DELETE, OPTIONS, POST"))

    @inlineCallbacks
    def test_other_origins_refused(self):  # type: ignore[no-untyped-def]
        """Origins not on the list (another site, a look-alike, "null", the
        same host on another scheme) get a 403 preflight and no CORS
        headers on actual requests; errors still say Vary: Origin."""
        for origin in ("https://evil.example", "https://blog.a.example.evil.example", "null", "http://blog.a.example"):
            r = yield self.preflight(self.comments(self.a), origin)
            self.assertEqual(r.code, 403, origin)
            self.assertEqual((yield r.json())["error"]["code"], "cors_origin_not_allowed")
            self.assertIsNone(self.header(r, "access-control-allow-origin"))
            self.assertEqual(self.header(r, "vary"), "Origin")
            got = yield self.http.get(self.comments(self.a), headers={"origin": origin})
            self.assertEqual(got.code, 200)
            self.assertIsNone(self.header(got, "access-control-allow-origin"))
            self.assertIsNone(self.header(got, "access-control-allow-credentials"))
            self.assertEqual(self.header(got, "vary"), "Origin")

    @inlineCallbacks
    def test_tenant_isolation(self):  # type: ignore[no-untyped-def]
        """An origin allowed for tenant A is not allowed for tenant B (and
        the other way round), for preflights and for reads served from the
        page cache alike."""
        for tenant, allowed, other in ((self.a, SITE_A, SITE_B), (self.b, SITE_B, SITE_A)):
            yield self.http.get(self.comments(tenant), headers={"origin": allowed})
            ok = yield self.http.get(self.comments(tenant), headers={"origin": allowed})
            self.assertEqual(self.header(ok, "access-control-allow-origin"), allowed)
            refused = yield self.http.get(self.comments(tenant), headers={"origin": other})
            self.assertIsNone(self.header(refused, "access-control-allow-origin"))
            r = yield self.preflight(self.comments(tenant), other)
            self.assertEqual(r.code, 403)

    @inlineCallbacks
    def test_default_none_and_change_applies(self):  # type: ignore[no-untyped-def]
        """A tenant with no allowedOrigins allows no origin; adding one
        through the tenant API applies at once on this node; unknown
        tenants allow nothing."""
        c, c_key = yield self.tenant("C")
        r = yield self.preflight(self.comments(c), SITE_A)
        self.assertEqual(r.code, 403)
        yield self.settings(c_key, {"allowedOrigins": [SITE_A + ":443"]})
        r = yield self.preflight(self.comments(c), SITE_A)
        self.assertEqual((r.code, self.header(r, "access-control-allow-origin")), (204, SITE_A))
        r = yield self.preflight(self.comments("AAAAAAAAAAAAAAAA"), SITE_A)
        self.assertEqual(r.code, 403)

    @inlineCallbacks
    def test_tenant_api_has_no_cors(self):  # type: ignore[no-untyped-def]
        """The tenant API answers preflights 405 without CORS headers, even
        from an origin the tenant allows, and its answers carry none."""
        url = self.base + "/api/v1/manage/settings"
        r = yield self.preflight(url, SITE_A, "PATCH")
        self.assertEqual(r.code, 405)
        self.assertIsNone(self.header(r, "access-control-allow-origin"))
        # Also where a public template matches the path too ("manage" as a tenant).
        r = yield self.preflight(self.base + "/api/v1/manage/comments", SITE_A, "GET")
        self.assertEqual(r.code, 405)
        self.assertIsNone(self.header(r, "access-control-allow-origin"))
        got = yield self.http.get(url, headers={"origin": SITE_A, "authorization": "Bearer " + self.a_key})
        self.assertEqual(got.code, 200)
        self.assertIsNone(self.header(got, "access-control-allow-origin"))

    @inlineCallbacks
    def test_plain_options(self):  # type: ignore[no-untyped-def]
        """OPTIONS without CORS headers is an ordinary OPTIONS: 204 with Allow."""
        r = yield self.http.request("OPTIONS", self.comments(self.a))
        self.assertEqual((r.code, self.header(r, "allow")), (204, "GET, OPTIONS, POST"))
