"""Threads locked to SSO user groups, on a real node over loopback sockets:
every public route and both live transports refuse outsiders with the
documented answer, and let members in. One policy object guards them all."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import tempfile
from typing import Any
from urllib.parse import quote, urlencode

import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from fastedge.api.keys import hash_api_key, new_api_key
from fastedge.store.model import ReadPreference, SsoSecretChange
from fastedge.testing.live import LiveNode

from .test_live import SseReader, WaitingClient

PRIMARY = ReadPreference.PRIMARY
SECRET = "9e" * 32
URL = "https://members.example/only"
OPEN = "https://members.example/open"


def sso_body(user: dict[str, Any]) -> dict[str, Any]:
    """A sign-in body signed with the hmac module (docs/sso.md)."""
    payload = base64.b64encode(json.dumps(user).encode()).decode()
    ts = int(reactor.seconds() * 1000)
    mac = hmac.new(SECRET.encode(), (str(ts) + payload).encode(), hashlib.sha256).hexdigest()
    return {"payload": payload, "timestamp": ts, "signature": mac}


def answer(ws: WaitingClient) -> Deferred[dict[str, Any]]:
    """The next answer to a subscribe, whether refused or not (a test
    without the lock fails on the answer, not on a timeout)."""
    d: Deferred[dict[str, Any]] = Deferred()

    def first(message: dict[str, Any]) -> None:
        if not d.called:
            d.callback(message)

    ws.wait_for("error").addCallback(first)
    ws.wait_for("subscribed").addCallback(first)
    return d


class LockedNode(TestCase):
    """A node on a loopback port with a tenant whose thread ``URL`` is
    locked to the group ``staff``; helpers to call its public API."""

    async def asyncSetUp(self) -> None:
        node = LiveNode(tempfile.mkdtemp(prefix="fe-lock-"), clock=reactor)
        self.node = node
        self.addCleanup(node.api.service.stopService)
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(node.site)
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.base = "http://127.0.0.1:{}".format(self.port)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        store = node.store
        tenant = (await store.create_tenant("Club", "global", created_ms=0, read_preference=PRIMARY)).value
        self.tenant = tenant.id
        await store.update_tenant_settings(
            tenant.id, {}, sso_secret=SsoSecretChange(SECRET, 0), read_preference=PRIMARY
        )
        await store.upsert_thread(tenant.id, URL, created_ms=0, read_preference=PRIMARY, locked_groups=["staff"])
        self.api = "{}/api/v1/{}".format(self.base, tenant.id)

    async def call(self, method: str, path: str, cookie: str | None = None, **kw: Any) -> Any:
        headers = {"cookie": cookie} if cookie else {}
        response = await treq.request(method, self.api + path, headers=headers, pool=self.pool, **kw)
        body = await response.content()
        return response, (json.loads(body) if body else None)

    async def sign_in(self, user: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        response, body = await self.call("POST", "/sso", json=sso_body(user))
        self.assertEqual(response.code, 200, body)
        return response.headers.getRawHeaders("set-cookie")[0].split(";")[0], body

    def comments(self) -> str:
        return "/comments?urlId=" + quote(URL, safe="")


class LockedThreadTests(LockedNode):
    async def test_every_route_and_live_endpoint(self) -> None:
        """Reading, posting, replying, liking, unliking and flagging a locked
        thread are 403 ``thread_locked`` for strangers and for signed-in
        users outside its groups (no count leaks, no session or comment is
        created); live subscriptions over WebSocket and SSE are refused
        ``forbidden``. Members do all of it."""
        await self.asyncSetUp()
        member, member_body = await self.sign_in({"id": "m1", "displayName": "Meg", "groupIds": ["staff"]})
        outsider, outsider_body = await self.sign_in({"id": "o1", "displayName": "Olly", "groupIds": ["guests"]})
        response, body = await self.call(
            "POST", self.comments(), member, json={"text": "members only", "displayName": "x"}
        )
        self.assertEqual(response.code, 201, body)
        comment = body["comment"]["id"]

        routes = {
            ("GET", "/api/v1/{tenant}/comments"): ("GET", self.comments(), None),
            ("POST", "/api/v1/{tenant}/comments"): ("POST", self.comments(), {"text": "let me in", "displayName": "x"}),
            ("POST", "/api/v1/{tenant}/comments/{comment_id}/like"): (
                "POST",
                "/comments/{}/like".format(comment),
                None,
            ),
            ("DELETE", "/api/v1/{tenant}/comments/{comment_id}/like"): (
                "DELETE",
                "/comments/{}/like".format(comment),
                None,
            ),
            ("POST", "/api/v1/{tenant}/comments/{comment_id}/flag"): (
                "POST",
                "/comments/{}/flag".format(comment),
                None,
            ),
        }
        # Every public route is walked, or is not about one thread.
        not_thread_routes = {
            ("POST", "/api/v1/{tenant}/blocks/{author_id}"),
            ("DELETE", "/api/v1/{tenant}/blocks/{author_id}"),
            ("POST", "/api/v1/{tenant}/sso"),
            # SSO moderators only (tests/unit/api/test_moderation.py).
            ("GET", "/api/v1/{tenant}/moderation/queue"),
            ("POST", "/api/v1/{tenant}/moderation/actions"),
        }
        public = {(m, t) for m, t in self.node.api.resource.templates() if t.startswith("/api/v1/{tenant}")}
        self.assertEqual(public, set(routes) | not_thread_routes)
        reply = ("POST", self.comments(), {"text": "reply", "displayName": "x", "parentId": comment})
        sessions_before = self.node.metric("fastedge_api_sessions_created_total")
        for who in (None, outsider):
            for method, path, body_in in list(routes.values()) + [reply]:
                kw = {"json": body_in} if body_in is not None else {}
                response, body = await self.call(method, path, who, **kw)
                self.assertEqual(response.code, 403, (who, method, path, body))
                self.assertEqual(body["error"]["code"], "thread_locked")
                self.assertNotIn("commentCount", json.dumps(body))
                self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        self.assertEqual(self.node.metric("fastedge_api_sessions_created_total"), sessions_before)

        # Live: WebSocket and SSE, with and without a viewer token.
        factory = WebSocketClientFactory("ws://127.0.0.1:{}/live".format(self.port))
        factory.protocol = WaitingClient
        ws: WaitingClient = await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(factory)
        await ws.opened
        for token in (None, outsider_body["viewer"]["liveToken"]):
            error = answer(ws)
            extra = {"viewer": token} if token else {}
            ws.send_json(type="subscribe", tenant=self.tenant, urlId=URL, **extra)
            self.assertEqual((await error).get("code"), "forbidden")
        for token in (None, outsider_body["viewer"]["liveToken"]):
            query = {"tenant": self.tenant, "urlId": URL, **({"viewer": token} if token else {})}
            response = await treq.get(self.base + "/live/events?" + urlencode(query), pool=self.pool)
            self.assertEqual(response.code, 403)
            self.assertEqual((await response.json())["error"]["code"], "forbidden")

        # Members: everything works.
        subscribed = ws.wait_for("subscribed")
        ws.send_json(type="subscribe", tenant=self.tenant, urlId=URL, viewer=member_body["viewer"]["liveToken"])
        await subscribed
        path = "/live/events?" + urlencode(
            {"tenant": self.tenant, "urlId": URL, "viewer": member_body["viewer"]["liveToken"]}
        )
        request = "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".format(path).encode()
        sse = SseReader(request)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(Factory.forProtocol(lambda: sse))
        await sse.wait_for(b'"subscribed"')
        for method, path, body_in in list(routes.values()) + [reply]:
            kw = {"json": body_in} if body_in is not None else {}
            response, body = await self.call(method, path, member, **kw)
            self.assertIn(response.code, (200, 201), (method, path, body))
        ws.sendClose(1000)
        sse.transport.loseConnection()
        await ws.closed
        await sse.lost

    async def test_live_sso(self) -> None:
        """A live subscription may sign in with an ``sso`` field (WebSocket)
        or query parameter (SSE): a member's payload subscribes, an
        outsider's is refused ``forbidden``, a forged one ``sso_bad_signature``."""
        await self.asyncSetUp()

        def sso(user: dict[str, Any]) -> str:
            body = sso_body(user)
            return "{}.{}.{}".format(body["payload"], body["timestamp"], body["signature"])

        member = sso({"id": "m2", "displayName": "Max", "groupIds": ["staff"]})
        outsider = sso({"id": "o2", "displayName": "Oz", "groupIds": ["guests"]})
        factory = WebSocketClientFactory("ws://127.0.0.1:{}/live".format(self.port))
        factory.protocol = WaitingClient
        ws: WaitingClient = await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(factory)
        await ws.opened
        for value, code in (
            (outsider, "forbidden"),
            (member[:-1] + ("1" if member.endswith("0") else "0"), "sso_bad_signature"),
            ("x.y", "sso_malformed"),
        ):
            error = answer(ws)
            ws.send_json(type="subscribe", tenant=self.tenant, urlId=URL, sso=value)
            self.assertEqual((await error).get("code"), code)
        response = await treq.get(
            self.base + "/live/events?" + urlencode({"tenant": self.tenant, "urlId": URL, "sso": outsider}),
            pool=self.pool,
        )
        self.assertEqual((response.code, (await response.json())["error"]["code"]), (403, "forbidden"))
        subscribed = ws.wait_for("subscribed")
        ws.send_json(type="subscribe", tenant=self.tenant, urlId=URL, sso=member)
        await subscribed
        path = "/live/events?" + urlencode({"tenant": self.tenant, "urlId": URL, "sso": member})
        request = "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".format(path).encode()
        sse = SseReader(request)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(Factory.forProtocol(lambda: sse))
        await sse.wait_for(b'"subscribed"')
        ws.sendClose(1000)
        sse.transport.loseConnection()
        await ws.closed
        await sse.lost

    async def test_closed_and_sign_in_required(self) -> None:
        """A closed thread refuses posts, likes and flags (``thread_closed``)
        but is still read; a thread requiring sign-in refuses strangers
        (``sign_in_required``) and lets signed-in users post."""
        await self.asyncSetUp()
        store = self.node.store
        await store.upsert_thread(
            self.tenant, "open", created_ms=0, read_preference=PRIMARY, locked_groups=[], require_sign_in=True
        )
        path = "/comments?urlId=open"
        response, body = await self.call("POST", path, json={"text": "hi", "displayName": "x"})
        self.assertEqual((response.code, body["error"]["code"]), (403, "sign_in_required"))
        user, _ = await self.sign_in({"id": "u", "displayName": "Uma"})
        response, body = await self.call("POST", path, user, json={"text": "hi", "displayName": "x"})
        self.assertEqual(response.code, 201, body)
        comment = body["comment"]["id"]
        await store.upsert_thread(self.tenant, "open", created_ms=0, read_preference=PRIMARY, closed=True)
        for method, p in (
            ("POST", path),
            ("POST", "/comments/{}/like".format(comment)),
            ("POST", "/comments/{}/flag".format(comment)),
        ):
            kw = {"json": {"text": "late", "displayName": "x"}} if p == path else {}
            response, body = await self.call(method, p, user, **kw)
            self.assertEqual((response.code, body["error"]["code"]), (403, "thread_closed"), p)
        response, body = await self.call("GET", path)
        self.assertEqual((response.code, len(body["comments"])), (200, 1))


class LockChangeTests(LockedNode):
    """A lock set (or widened by ``defaultGroups``) through the tenant API
    ends the open subscriptions it refuses, on both transports, with the
    documented refusal; members stay subscribed and keep receiving events."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        key = new_api_key()
        await self.node.store.add_api_key(self.tenant, hash_api_key(key), created_ms=0, read_preference=PRIMARY)
        self.key = key
        # An open thread to lock later.
        thread = await self.node.store.upsert_thread(self.tenant, OPEN, created_ms=0, read_preference=PRIMARY)
        self.thread = thread.value.id

    async def manage(self, method: str, path: str, body: Any) -> Any:
        response = await treq.request(
            method,
            self.base + "/api/v1/manage" + path,
            json=body,
            headers={"authorization": "Bearer " + self.key},
            pool=self.pool,
        )
        got = await response.json()
        self.assertEqual(response.code, 200, got)
        return got

    async def subscribers(self) -> tuple[WaitingClient, SseReader, WaitingClient]:
        """Three open subscriptions to the open thread: an outsider over
        WebSocket and a stranger over SSE, and a member over WebSocket."""
        _, outsider = await self.sign_in({"id": "o3", "displayName": "Oda", "groupIds": ["guests"]})
        _, member = await self.sign_in({"id": "m3", "displayName": "Mia", "groupIds": ["staff"]})
        factory = WebSocketClientFactory("ws://127.0.0.1:{}/live".format(self.port))
        factory.protocol = WaitingClient
        clients = []
        for token in (outsider["viewer"]["liveToken"], member["viewer"]["liveToken"]):
            ws: WaitingClient = await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(factory)
            await ws.opened
            subscribed = ws.wait_for("subscribed")
            ws.send_json(type="subscribe", tenant=self.tenant, urlId=OPEN, viewer=token)
            await subscribed
            clients.append(ws)
        path = "/live/events?" + urlencode({"tenant": self.tenant, "urlId": OPEN})
        request = "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".format(path).encode()
        sse = SseReader(request)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(Factory.forProtocol(lambda: sse))
        await sse.wait_for(b'"subscribed"')
        return clients[0], sse, clients[1]

    async def refused_then_member_still_served(
        self, outsider: WaitingClient, sse: SseReader, member: WaitingClient, refused: Deferred[dict[str, Any]]
    ) -> None:
        error = await refused
        self.assertEqual(
            (error["code"], error["channel"]), ("forbidden", "{}/{}".format(self.tenant, self.thread)), error
        )
        await sse.wait_for(b'"code":4403')
        await sse.lost
        self.assertEqual(self.node.live.hub.subscribers((self.tenant, self.thread)), 1)
        self.assertEqual(self.node.metric("fastedge_live_subscriptions_revoked_total", {"transport": "websocket"}), 1)
        self.assertEqual(self.node.metric("fastedge_live_subscriptions_revoked_total", {"transport": "sse"}), 1)
        # The member still follows the thread; the outsider's connection is open.
        created = member.wait_for("event")
        cookie, _ = await self.sign_in({"id": "m4", "displayName": "Moe", "groupIds": ["staff"]})
        response, body = await self.call(
            "POST", "/comments?urlId=" + quote(OPEN, safe=""), cookie, json={"text": "still here", "displayName": "x"}
        )
        self.assertEqual(response.code, 201, body)
        self.assertEqual((await created)["event"], "comment.created")
        pong = outsider.wait_for("pong")
        outsider.send_json(type="ping")
        await pong
        for ws in (outsider, member):
            ws.sendClose(1000)
            await ws.closed

    async def test_thread_lock_ends_refused_subscriptions(self) -> None:
        """PATCH a thread's lockedGroups: the outsider's WebSocket gets an
        ``error`` ``forbidden`` naming the channel (its connection stays
        open), the stranger's SSE stream a ``close`` 4403 and its end."""
        await self.asyncSetUp()
        outsider, sse, member = await self.subscribers()
        refused = outsider.wait_for("error")
        await self.manage("PATCH", "/threads/" + self.thread, {"lockedGroups": ["staff"]})
        await self.refused_then_member_still_served(outsider, sse, member, refused)

    async def test_default_groups_end_refused_subscriptions(self) -> None:
        """PATCH the tenant's defaultGroups: threads without a lock of their
        own follow it, and their refused subscribers are ended likewise."""
        await self.asyncSetUp()
        outsider, sse, member = await self.subscribers()
        refused = outsider.wait_for("error")
        await self.manage("PATCH", "/settings", {"defaultGroups": ["staff"]})
        await self.refused_then_member_still_served(outsider, sse, member, refused)
