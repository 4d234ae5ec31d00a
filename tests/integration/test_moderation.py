"""Moderation end to end: a whole node on loopback, real HTTP clients.

A bulk call naming another tenant's comment is refused whole; a bulk
approve's token reads back the change; a client that drops its cookie
before every like cannot inflate the count; a ban stops posting.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.support.nodes import create_tenants, loopback_http_client, start_node

CONFIG = '[http]\nendpoint = "tcp:0:interface=127.0.0.1"\n[tls]\nenabled = false\n'
URL = quote("https://site.test/post", safe="")


class ModerationNodeTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        data_dir = os.path.abspath(self.mktemp())
        (self.a, self.a_key), (self.b, self.b_key) = create_tenants(
            os.path.join(data_dir, "fastedge.sqlite3"), ["A", "B"]
        )
        self.node = yield start_node(CONFIG, data_dir)
        self.addCleanup(self.node.stop)

    @defer.inlineCallbacks
    def call(self, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        headers = {}
        data = None
        if key is not None:
            headers["authorization"] = "Bearer " + key
        if body is not None:
            headers["content-type"] = "application/json"
            data = json.dumps(body).encode()
        # A fresh client (treq keeps a cookie jar) for every call: each public
        # call is a browser that dropped its session cookie.
        http = loopback_http_client(self)
        response = yield http.request(method, self.node.http + path, data=data, headers=headers)
        raw = yield response.content()
        return response, json.loads(raw) if raw else None

    @defer.inlineCallbacks
    def imported(self, key: str, status: str = "pending") -> Any:
        response, body = yield self.call(
            "POST",
            "/api/v1/manage/comments",
            {"urlId": "https://site.test/post", "text": "hi", "displayName": "E", "status": status},
            key,
        )
        self.assertEqual(response.code, 201, body)
        return body["comment"]

    @defer.inlineCallbacks
    def test_bulk_refused_whole_then_applied(self) -> Any:
        """Naming B's comment in A's bulk approve is a 404 that changes
        nothing; without it the approve applies, is logged, and the
        moderator's next NEAREST page (with the token) no longer lists it."""
        mine = yield self.imported(self.a_key)
        theirs = yield self.imported(self.b_key)
        response, body = yield self.call(
            "POST",
            "/api/v1/manage/moderation/actions",
            {"action": "approve", "commentIds": [mine["id"], theirs["id"]]},
            self.a_key,
        )
        self.assertEqual((response.code, body["error"]["code"]), (404, "comment_not_found"))
        for key, comment in ((self.a_key, mine), (self.b_key, theirs)):
            _, got = yield self.call("GET", "/api/v1/manage/comments/" + comment["id"], key=key)
            self.assertEqual(got["comment"]["status"], "pending")
        response, body = yield self.call(
            "POST", "/api/v1/manage/moderation/actions", {"action": "approve", "commentIds": [mine["id"]]}, self.a_key
        )
        self.assertEqual(response.code, 200, body)
        _, queue = yield self.call("GET", "/api/v1/manage/moderation/queue", key=self.a_key)
        self.assertEqual(queue["comments"], [])
        _, log = yield self.call("GET", "/api/v1/manage/moderation/log", key=self.a_key)
        self.assertEqual([(e["action"], e["commentIds"]) for e in log["entries"]], [("approve", [mine["id"]])])
        _, page = yield self.call("GET", "/api/v1/{}/comments?urlId={}".format(self.a, URL))
        self.assertEqual([c["id"] for c in page["comments"]], [mine["id"]])

    @defer.inlineCallbacks
    def test_cookieless_likes_and_bans(self) -> Any:
        """Likes from one address without a cookie stop counting at the
        bound; an address ban then refuses posts from it."""
        comment = yield self.imported(self.a_key, status="approved")
        codes = []
        for _ in range(5):
            response, _ = yield self.call("POST", "/api/v1/{}/comments/{}/like".format(self.a, comment["id"]))
            codes.append(response.code)
        self.assertEqual(codes, [200, 200, 200, 409, 409])
        _, page = yield self.call("GET", "/api/v1/{}/comments?urlId={}".format(self.a, URL))
        self.assertEqual(page["comments"][0]["likes"], 3)
        response, body = yield self.call(
            "POST", "/api/v1/manage/moderation/bans", {"ip": "127.0.0.1", "reason": "flood"}, self.a_key
        )
        self.assertEqual(response.code, 201, body)
        response, body = yield self.call(
            "POST", "/api/v1/{}/comments?urlId={}".format(self.a, URL), {"text": "x", "displayName": "T"}
        )
        self.assertEqual((response.code, body["error"]["code"]), (403, "banned"))
        # Tenant B is not affected by A's ban.
        response, body = yield self.call(
            "POST", "/api/v1/{}/comments?urlId={}".format(self.b, URL), {"text": "x", "displayName": "T"}
        )
        self.assertEqual(response.code, 201, body)
