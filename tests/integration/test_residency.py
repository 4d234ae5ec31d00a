"""Data residency on a real node: another deployment's tenant is refused
with 421 on every path, over real loopback sockets, before anything of it is
read (docs/residency.md).

The node belongs to deployment ``global``; its store (shared, as an operator
might have it) also holds a tenant of ``eu``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from fastedge.api.keys import hash_api_key, new_api_key
from fastedge.store.model import ReadPreference
from fastedge.tap import Options, makeService
from tests.support.nodes import loopback_http_client

from ..unit.live.common import RawWebSocket, masked_text

CONFIG = """
[node]
deployment = "global"

[[dns.zones]]
name = "example.test"
deployment = "global"
geo_names = ["edge"]

[[dns.zones]]
name = "eu.example.test"
deployment = "eu"
geo_names = ["edge"]
"""

HANDSHAKE = (
    b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Origin: https://blog.example\r\n\r\n"
)

URL_ID = "https%3A%2F%2Fblog.example%2Fpost"


class ResidencyTests(TestCase):
    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(CONFIG)
        options = Options()
        options.parseOptions(
            [
                "--config",
                config,
                "--data-dir",
                os.path.abspath(self.mktemp()),
                "--http",
                "tcp:0:interface=127.0.0.1",
                "--mesh",
                "tcp:0:interface=127.0.0.1",
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
        store_service = self.node.getServiceNamed("store")
        yield store_service.when_ready()
        self.store = store_service.store
        listener = self.node.getServiceNamed("http").getServiceNamed("http")
        port = yield listener.when_listening()
        self.port = port.getHost().port
        self.base = "http://127.0.0.1:{}".format(self.port)
        self.http = loopback_http_client(self, listener.factory)
        primary = ReadPreference.PRIMARY
        self.ours = (yield self.store.create_tenant("Ours", "global", created_ms=0, read_preference=primary)).value.id
        self.theirs = (yield self.store.create_tenant("Theirs", "eu", created_ms=0, read_preference=primary)).value.id
        self.their_key = new_api_key()
        yield self.store.add_api_key(self.theirs, hash_api_key(self.their_key), created_ms=0, read_preference=primary)

    @inlineCallbacks
    def assertMisdirected(self, response: Any) -> Any:  # type: ignore[no-untyped-def]
        self.assertEqual(response.code, 421)
        body = yield response.json()
        self.assertEqual(
            body["error"],
            {
                "code": "wrong_deployment",
                "message": "tenant {} is served by deployment eu: use edge.eu.example.test".format(self.theirs),
                "deployment": "eu",
                "host": "edge.eu.example.test",
            },
        )

    @inlineCallbacks
    def test_every_http_path(self):  # type: ignore[no-untyped-def]
        """Public API (read and write), embed page and form, media, SSE and
        the tenant API all answer 421 naming the right host; nothing of the
        tenant is written or read."""
        t = self.theirs
        comments = "{}/api/v1/{}/comments?urlId={}".format(self.base, t, URL_ID)
        yield self.assertMisdirected((yield self.http.get(comments)))
        yield self.assertMisdirected((yield self.http.post(comments, json={"text": "hi", "displayName": "A"})))
        yield self.assertMisdirected((yield self.http.get("{}/embed/{}/?urlId={}".format(self.base, t, URL_ID))))
        yield self.assertMisdirected(
            (yield self.http.post("{}/embed/{}/?urlId={}".format(self.base, t, URL_ID), data=b"text=hi"))
        )
        yield self.assertMisdirected((yield self.http.get("{}/media/{}/avatars/a.png".format(self.base, t))))
        yield self.assertMisdirected(
            (yield self.http.get("{}/live/events?tenant={}&urlId={}".format(self.base, t, URL_ID)))
        )
        manage = yield self.http.get(
            self.base + "/api/v1/manage/comments", headers={"authorization": "Bearer " + self.their_key}
        )
        yield self.assertMisdirected(manage)
        threads = yield self.store.list_threads(t, limit=10, cursor=None, read_preference=ReadPreference.PRIMARY)
        self.assertEqual(threads.items, [], "the refused post wrote nothing")
        metrics = yield (yield self.http.get(self.base + "/metrics")).text()
        for kind in ("api", "embed", "media", "live", "manage"):
            self.assertIn('fastedge_residency_misdirected_total{{kind="{}"}}'.format(kind), metrics)

    @inlineCallbacks
    def test_own_tenant_served(self):  # type: ignore[no-untyped-def]
        comments = "{}/api/v1/{}/comments?urlId={}".format(self.base, self.ours, URL_ID)
        posted = yield self.http.post(comments, json={"text": "hi", "displayName": "A"})
        self.assertEqual(posted.code, 201)
        self.assertEqual((yield self.http.get(comments)).code, 200)
        unknown = yield self.http.get("{}/api/v1/{}/comments?urlId={}".format(self.base, "nosuchtenant", URL_ID))
        self.assertEqual(unknown.code, 404, "a tenant nobody claims is the handler's 404")

    def test_websocket_subscription(self) -> Deferred[None]:
        """A live subscription to the tenant is refused with
        ``wrong_deployment``; the connection stays open for others."""

        async def go() -> None:
            client = RawWebSocket(HANDSHAKE)
            await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(Factory.forProtocol(lambda: client))
            self.assertTrue((await client.head).startswith(b"HTTP/1.1 101 "))
            await client.wait_message("hello")
            client.send(
                masked_text(
                    json.dumps(
                        {"type": "subscribe", "tenant": self.theirs, "urlId": "https://blog.example/post", "ref": 1}
                    ).encode()
                )
            )
            error = await client.wait_message("error")
            self.assertEqual(error["code"], "wrong_deployment")
            self.assertIn("edge.eu.example.test", error["message"])
            client.transport.loseConnection()
            await client.lost

        return ensureDeferred(go())
