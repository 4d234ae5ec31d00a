"""Odd input from clients answered with a 400 JSON error, never a 500: a
whole node on loopback, driven by a real HTTP client.

Numbers in query strings, event ids and headers are ASCII digits only
(``²`` and Arabic-Indic digits are refused, not crashed on or read as
numbers), and every route that reads a JSON body refuses nesting deeper
than 32 as ``malformed_json``. The JSON routes are found by asking the
node's own router, so a route added later is covered without touching
this test.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.support.nodes import create_tenants, loopback_http_client, start_node

URL_ID = "https://site.test/odd"
DEEP = b"[" * 20000 + b"]" * 20000

#: Query values that must each be a 400: superscript two, Arabic-Indic one
#: (which int() would read as 1), a sign, a space.
ODD_NUMBERS = ("%C2%B2", "%D9%A1", "%2B1", "%201")


def _config(tenant_id: str) -> str:
    # A media tenant whose origin is never contacted (nothing here fetches),
    # so the CDN's routes (uploads, purges) are mounted as in production.
    return "\n".join(
        [
            "[http]",
            'endpoint = "tcp:0:interface=127.0.0.1"',
            "[tls]",
            "enabled = false",
            "[cdn.origins.default]",
            'endpoint = "http://127.0.0.1:9"',
            'access_key_id = "unused"',
            'secret_access_key = "unused"',
            f"[cdn.tenants.{tenant_id}]",
            'bucket = "media"',
            'prefix = "odd/"',
            "",
        ]
    )


class OddInputTests(TestCase):
    """One node with one tenant; each test sends what a fuzzer sent."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.data_dir = os.path.abspath(self.mktemp())
        ((self.tenant, self.key),) = create_tenants(os.path.join(self.data_dir, "fastedge.sqlite3"), ["A"])
        self.node = yield start_node(_config(self.tenant), self.data_dir)
        self.addCleanup(self.node.stop)
        listener = self.node.top.getServiceNamed("http").getServiceNamed("http")
        self.site = listener.factory.wrappedFactory
        self.http = loopback_http_client(self, listener.factory)
        self.auth = {b"authorization": [b"Bearer " + self.key.encode()]}

    @defer.inlineCallbacks
    def request(self, method: str, path: str, body: bytes | None = None, **headers: list[bytes]) -> Any:
        """``(status, parsed JSON body or None)``."""
        response = yield self.http.request(
            method, self.node.http + path, data=body, headers={k.encode(): v for k, v in headers.items()}
        )
        raw = yield response.content()
        ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        parsed = json.loads(raw) if ctype.startswith(b"application/json") else None
        return response.code, parsed

    @defer.inlineCallbacks
    def assert_bad(self, path: str, code: str, **headers: list[bytes]) -> Any:
        status, body = yield self.request("GET", path, **headers)
        self.assertEqual((status, body and body["error"]["code"]), (400, code), path)

    @defer.inlineCallbacks
    def test_unicode_digits_in_limit(self) -> None:
        """``limit`` on the public and every tenant list route is ASCII
        digits: anything else is 400 ``bad_query``."""
        auth = {"authorization": self.auth[b"authorization"]}
        for odd in ODD_NUMBERS:
            yield self.assert_bad(f"/api/v1/{self.tenant}/comments?urlId=x&limit={odd}", "bad_query")
            for route in ("comments", "threads"):
                yield self.assert_bad(f"/api/v1/manage/{route}?limit={odd}", "bad_query", **auth)
        status, body = yield self.request("GET", f"/api/v1/{self.tenant}/comments?urlId=x&limit=1")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_unicode_digits_in_since(self) -> None:
        """``since`` on the credits route and on the SSE stream is ASCII
        digits: 400 ``bad_query`` / ``bad_since``."""
        auth = {"authorization": self.auth[b"authorization"]}
        sse = f"/live/events?tenant={self.tenant}&urlId=x"
        for odd in ODD_NUMBERS:
            yield self.assert_bad(f"/api/v1/manage/credits?since={odd}", "bad_query", **auth)
            yield self.assert_bad(f"{sse}&since={odd}", "bad_since")

    @defer.inlineCallbacks
    def test_unicode_digits_in_event_ids(self) -> None:
        """An SSE event id whose sequence number is not ASCII digits, in the
        query or in a ``Last-Event-ID`` header (raw byte 0xB2), is 400
        ``bad_last_event_id``."""
        sse = f"/live/events?tenant={self.tenant}&urlId=x"
        for odd in ODD_NUMBERS:
            yield self.assert_bad(f"{sse}&lastEventId=abcdefghijklm-{odd}", "bad_last_event_id")
        for raw in (b"abcdefghijklm-\xb2", b"abcdefghijklm-\xd9\xa1", b"\xb2"):
            yield self.assert_bad(sse, "bad_last_event_id", **{"last-event-id": [raw]})

    def router(self) -> Any:
        """The node's API router (the resource mounted at ``/api``)."""
        return self.site.resource.children[b"api"]

    def fill(self, template: str, ids: dict[str, str]) -> str:
        path = template
        for name, value in ids.items():
            path = path.replace("{" + name + "}", value)
        self.assertNotIn("{", path, "a route parameter this test does not know: add it to ids")
        return path + "?urlId=" + URL_ID

    @defer.inlineCallbacks
    def test_deep_json_on_every_json_route(self) -> None:
        """Every route that reads a JSON body (found by its 415 to a
        text/plain body) answers 20,000 nested arrays, and 33, with 400
        ``malformed_json``; 32 levels are valid JSON (a 400 of another
        kind: not an object). No route answers 5xx."""
        auth = {"authorization": self.auth[b"authorization"]}
        status, created = yield self.request(
            "POST",
            "/api/v1/manage/comments",
            json.dumps({"urlId": URL_ID, "text": "hi", "displayName": "A"}).encode(),
            **{"content-type": [b"application/json"]},
            **auth,
        )
        self.assertEqual(status, 201)
        comment = created["comment"]
        status, keys = yield self.request("GET", "/api/v1/manage/keys", **auth)
        ids = {
            "tenant": self.tenant,
            "comment_id": comment["id"],
            "thread_id": comment["threadId"],
            "author_id": comment["authorId"],
            "key_id": keys["keys"][0]["id"],
            # None exists: the body is refused before the store is asked.
            "webhook_id": "AAAAAAAAAAAAAAAA",
            "event_id": "AAAAAAAAAAAAAAAA",
        }
        json_routes = []
        for method, template in self.router().templates():
            if method in ("GET", "DELETE"):
                continue
            path = self.fill(template, ids)
            status, body = yield self.request(method, path, b"{}", **{"content-type": [b"text/plain"]}, **auth)
            self.assertLess(status, 500, (method, template, body))
            if status == 415 and "application/json" in body["error"]["message"]:
                json_routes.append((method, template, path))
        found = {(m, t) for m, t, _ in json_routes}
        # The probe works: the routes known to take JSON today are found.
        for known in (
            ("POST", "/api/v1/manage/threads"),
            ("PATCH", "/api/v1/manage/threads/{thread_id}"),
            ("POST", "/api/v1/manage/comments"),
            ("PATCH", "/api/v1/manage/comments/{comment_id}"),
            ("POST", "/api/v1/manage/media/purge"),
            ("POST", "/api/v1/{tenant}/comments"),
        ):
            self.assertIn(known, found)
        for method, template, path in json_routes:
            for body in (DEEP, b"[" * 33 + b"]" * 33, b'{"a":' * 33 + b"1" + b"}" * 33):
                status, answer = yield self.request(
                    method, path, body, **{"content-type": [b"application/json"]}, **auth
                )
                self.assertEqual((status, answer["error"]["code"]), (400, "malformed_json"), (method, template))
            status, answer = yield self.request(
                method, path, b"[" * 32 + b"]" * 32, **{"content-type": [b"application/json"]}, **auth
            )
            self.assertEqual((status, answer["error"]["message"]), (400, "the body must be a JSON object"))
