"""Media of a thread locked to user groups (keys ``threads/<threadId>/``,
docs/media.md), on a whole node in front of the real S3 origin (SeaweedFS):
outsiders get 403 ``thread_locked`` before any byte, from a cold cache or a
warm one; members, moderators and admins get the object, ``private``; keys
outside the prefix are untouched."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from fastedge.store.model import ReadPreference, SsoSecretChange
from tests.support.nodes import create_tenants, loopback_http_client, start_node
from tests.support.seaweed import shared_s3

from .test_cdn import PNG, _config

PRIMARY = ReadPreference.PRIMARY
SECRET = "5a" * 32


def sso_header(user: dict[str, Any]) -> str:
    """An ``X-FastEdge-SSO`` value signed with the hmac module (docs/sso.md)."""
    payload = base64.b64encode(json.dumps(user).encode()).decode()
    ts = int(reactor.seconds() * 1000)
    mac = hmac.new(SECRET.encode(), (str(ts) + payload).encode(), hashlib.sha256).hexdigest()
    return "{}.{}.{}".format(payload, ts, mac)


class LockedMediaTests(TestCase):
    """Tenant A has a thread locked to ``staff`` and an open one; tenant B
    has a thread of its own. A and B share one bucket under two prefixes."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.http = loopback_http_client(self)
        # Sign-ins through a client of their own: its cookie jar keeps
        # what they set, and each media request names its viewer itself.
        self.sign_in_http = loopback_http_client(self)
        self.s3 = shared_s3()
        self.bucket = "media"
        self.s3.create_bucket(self.bucket)
        run = os.urandom(4).hex()
        self.pa, self.pb = run + "/a/", run + "/b/"
        data_dir = os.path.abspath(self.mktemp())
        (self.a, self.a_key), (self.b, _) = create_tenants(os.path.join(data_dir, "fastedge.sqlite3"), ["A", "B"])
        config = _config(self.s3, [(self.a, self.bucket, self.pa), (self.b, self.bucket, self.pb)])
        self.node = yield start_node(config, data_dir)
        self.addCleanup(lambda: self.node.stop())
        store = self.node.top.getServiceNamed("store").store
        for tenant in (self.a, self.b):
            yield store.update_tenant_settings(
                tenant, {}, sso_secret=SsoSecretChange(SECRET, 0), read_preference=PRIMARY
            )
        locked = yield store.upsert_thread(
            self.a, "https://a.example/staff", created_ms=0, read_preference=PRIMARY, locked_groups=["staff"]
        )
        self.locked = locked.value.id
        open_ = yield store.upsert_thread(self.a, "https://a.example/open", created_ms=0, read_preference=PRIMARY)
        self.open = open_.value.id
        other = yield store.upsert_thread(
            self.b, "https://b.example/staff", created_ms=0, read_preference=PRIMARY, locked_groups=["staff"]
        )
        self.other = other.value.id

    @defer.inlineCallbacks
    def get(self, key: str, tenant: str | None = None, method: str = "GET", **headers: str) -> Any:
        url = "{}/media/{}/{}".format(self.node.http, tenant or self.a, key)
        response = yield self.http.request(method, url, headers=headers or None)
        body = yield response.content()
        return response, body

    @defer.inlineCallbacks
    def sign_in(self, user: dict[str, Any]) -> Any:
        """Sign in through the public API; the cookie issued for the media path."""
        self.sign_in_http._cookiejar.clear()
        response = yield self.sign_in_http.post(
            "{}/api/v1/{}/sso".format(self.node.http, self.a),
            json=_body(user),
        )
        body = yield response.content()
        self.assertEqual(response.code, 200, body)
        cookies = response.headers.getRawHeaders("set-cookie")
        (media,) = [c for c in cookies if "Path=/media/{}/".format(self.a) in c]
        return media.split(";")[0]

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    def assertRefused(self, response: Any, body: bytes, status: int, code: str) -> None:
        self.assertEqual(response.code, status, body[:200])
        self.assertEqual(json.loads(body)["error"]["code"], code)
        self.assertNotIn(PNG[:16], body)
        self.assertIsNone(self.header(response, "x-cache"))

    @defer.inlineCallbacks
    def test_outsiders_refused_cold_and_warm(self) -> Any:
        """A stranger and a signed-in user outside the group get 403
        ``thread_locked`` for an object not cached yet (no origin read is
        made for them) and for one in the cache; a member, a moderator and
        an admin get it, ``Cache-Control: private``."""
        cold = "threads/{}/cold.png".format(self.locked)
        self.s3.put(self.bucket, self.pa + cold, PNG, content_type="image/png")
        outsider = yield self.sign_in({"id": "o1", "displayName": "Olly", "groupIds": ["guests"]})
        member = yield self.sign_in({"id": "m1", "displayName": "Meg", "groupIds": ["staff"]})
        moderator = yield self.sign_in({"id": "mod", "displayName": "Mo", "isModerator": True})
        admin = yield self.sign_in({"id": "adm", "displayName": "Ada", "isAdmin": True})

        before = self.s3.get_requests(self.bucket)
        for headers in ({}, {"cookie": outsider}):
            for method in ("GET", "HEAD"):
                response, body = yield self.get(cold, method=method, **headers)
                self.assertEqual(response.code, 403, (method, headers))
                if method == "GET":
                    self.assertRefused(response, body, 403, "thread_locked")
        self.assertEqual(self.s3.get_requests(self.bucket), before)

        response, body = yield self.get(cold, cookie=member)
        self.assertEqual((response.code, body), (200, PNG))
        self.assertEqual(self.header(response, "cache-control"), "private, max-age=86400")
        # Warm now: still refused to outsiders, served to the privileged.
        for headers in ({}, {"cookie": outsider}):
            response, body = yield self.get(cold, **headers)
            self.assertRefused(response, body, 403, "thread_locked")
        for cookie in (member, moderator, admin):
            response, body = yield self.get(cold, cookie=cookie)
            self.assertEqual((response.code, body, self.header(response, "x-cache")), (200, PNG, "HIT"))
            self.assertEqual(self.header(response, "cache-control"), "private, max-age=86400")
        # The public API's other ways of naming the viewer work here too.
        response, body = yield self.get(
            cold, **{"x-fastedge-sso": sso_header({"id": "m2", "displayName": "Max", "groupIds": ["staff"]})}
        )
        self.assertEqual((response.code, body), (200, PNG))
        response, body = yield self.get(cold, **{"x-fastedge-session": member.split("=", 1)[1]})
        self.assertEqual((response.code, body), (200, PNG))

    @defer.inlineCallbacks
    def test_unknown_threads_and_other_keys(self) -> Any:
        """Under ``threads/`` an unknown, malformed or other tenant's thread
        id is a 404 (before any origin read); an open thread's media are for
        everyone but still private; keys outside the prefix keep the
        tenant's public Cache-Control."""
        self.s3.put(self.bucket, self.pa + "threads/{}/x.png".format(self.other), PNG, content_type="image/png")
        before = self.s3.get_requests(self.bucket)
        for thread in (self.other, "nosuchthread", "bad%20id", ""):
            response, body = yield self.get("threads/{}/x.png".format(thread))
            self.assertRefused(response, body, 404, "thread_not_found")
        self.assertEqual(self.s3.get_requests(self.bucket), before)

        key = "threads/{}/open.png".format(self.open)
        self.s3.put(self.bucket, self.pa + key, PNG, content_type="image/png")
        response, body = yield self.get(key)
        self.assertEqual((response.code, body), (200, PNG))
        self.assertEqual(self.header(response, "cache-control"), "private, max-age=86400")

        self.s3.put(self.bucket, self.pa + "site/logo.png", PNG, content_type="image/png")
        for _ in range(2):
            response, body = yield self.get("site/logo.png")
            self.assertEqual((response.code, body), (200, PNG))
            self.assertEqual(self.header(response, "cache-control"), "public, max-age=86400")
        # Tenant B's own thread, read at B: a stranger is refused there too.
        response, body = yield self.get("threads/{}/x.png".format(self.other), tenant=self.b)
        self.assertRefused(response, body, 403, "thread_locked")


def _body(user: dict[str, Any]) -> dict[str, Any]:
    payload, ts, mac = sso_header(user).split(".")
    return {"payload": payload, "timestamp": int(ts), "signature": mac}
