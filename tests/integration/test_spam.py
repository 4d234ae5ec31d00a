"""Spam checks on a whole node (``tap.makeService``) over real loopback
sockets: a comment judged spam is stored as spam for moderators, and never
reaches a live subscriber, the public page (JSON API and embed page) or a
cached page; a tenant's blocked words are that tenant's alone."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, urlencode

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import TestCase

from fastedge.api.keys import hash_api_key, new_api_key
from fastedge.store.model import ReadPreference
from tests.support.nodes import loopback_http_client, start_node

from .test_live import WaitingClient

PRIMARY = ReadPreference.PRIMARY
URL_ID = "https://news.test/casino-vote"
CONFIG = "\n".join(
    [
        "[http]",
        'endpoint = "tcp:0:interface=127.0.0.1"',
        "[tls]",
        'endpoint = "tcp:0:interface=127.0.0.1"',
        "[spam]",
        'checks = ["heuristic"]',
        "timeout_seconds = 2.0",
    ]
)
SPAM_TEXT = "Best CASINO bonus tonight, 200 free spins"


class SpamNodeTests(TestCase):
    """One node, two tenants: A blocks "casino", B blocks nothing."""

    timeout = 60

    async def test_spam_stays_off_live_pages_and_caches(self) -> None:
        """A's comment with a blocked word is answered as pending, stored as
        spam (A's spam queue lists it), not sent to A's WebSocket
        subscriber, and not on A's page (JSON or embed, cached or not),
        while the comments around it are; the same text on B is public."""
        data_dir = os.path.abspath(self.mktemp())
        node = await start_node(CONFIG, data_dir)
        self.addCleanup(node.stop)
        store = node.top.getServiceNamed("store").store
        a = (await store.create_tenant("A", "global", created_ms=1, read_preference=PRIMARY)).value
        b = (await store.create_tenant("B", "global", created_ms=1, read_preference=PRIMARY)).value
        key = new_api_key()
        await store.add_api_key(a.id, hash_api_key(key), created_ms=1, read_preference=PRIMARY)
        listener = node.top.getServiceNamed("http").getServiceNamed("http")
        http = loopback_http_client(self, listener.factory)
        base = node.http
        manage = {"authorization": "Bearer " + key}

        # A's site owner blocks a word through the tenant API.
        patched = await http.patch(base + "/api/v1/manage/settings", json={"blockedWords": ["casino"]}, headers=manage)
        self.assertEqual(patched.code, 200, await patched.text())
        self.assertEqual((await patched.json())["settings"]["blockedWords"], ["casino"])

        def page(tenant: str) -> str:
            return "{}/api/v1/{}/comments?{}".format(base, tenant, urlencode({"urlId": URL_ID}))

        async def post(tenant: str, text: str, name: str = "Reader", client: Any = http) -> dict[str, Any]:
            # Each client keeps its own cookie: one commenter's session.
            response = await client.post(page(tenant), json={"text": text, "displayName": name})
            self.assertEqual(response.code, 201, await response.text())
            return await response.json()  # type: ignore[no-any-return]

        async def public_texts(tenant: str) -> list[str]:
            response = await http.get(page(tenant))
            self.assertEqual(response.code, 200)
            return [c["html"] for c in (await response.json())["comments"]]

        first = await post(a.id, "First! The vote is long overdue.")
        self.assertEqual(first["comment"]["status"], "approved")

        ws_factory = WebSocketClientFactory("ws://127.0.0.1:{}/live".format(listener.port.getHost().port))
        ws_factory.protocol = WaitingClient
        ws: WaitingClient = await TCP4ClientEndpoint(reactor, "127.0.0.1", listener.port.getHost().port).connect(
            ws_factory
        )
        await ws.opened
        subscribed = ws.wait_for("subscribed")
        ws.send_json(type="subscribe", tenant=a.id, urlId=URL_ID)
        await subscribed
        # The page, read and cached before the spam arrives.
        self.assertEqual(len(await public_texts(a.id)), 1)

        spam = await post(a.id, SPAM_TEXT, name="Lucky")
        # The poster is told it awaits a moderator, not that it is spam.
        self.assertEqual(spam["comment"]["status"], "pending")
        # The embed page's plain form goes through the same checks.
        form = await http.post(
            "{}/embed/{}/?{}".format(base, a.id, urlencode({"urlId": URL_ID})),
            data=urlencode({"text": "CASINO night, join now", "displayName": "Form"}).encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
            allow_redirects=False,
        )
        self.assertEqual(form.code, 303, await form.text())

        event = ws.wait_for("event")
        # Another reader (the spammer's own next comment would be held:
        # earlier spam and their posting rate).
        ham = await post(a.id, "Looking forward to the debate.", client=loopback_http_client(self, listener.factory))
        received = await event
        # The first event after subscribing is the ham one: the spam was never sent.
        self.assertEqual(received["data"]["comment"]["id"], ham["comment"]["id"])
        self.assertEqual(
            [m["data"]["comment"]["id"] for m in ws.messages if m.get("type") == "event"], [ham["comment"]["id"]]
        )

        texts = await public_texts(a.id)
        self.assertEqual(len(texts), 2)
        self.assertFalse([t for t in texts if "casino" in t.lower()])
        embed = await http.get("{}/embed/{}/?urlId={}".format(base, a.id, quote(URL_ID, safe="")))
        self.assertEqual(embed.code, 200)
        body = (await embed.text()).lower()
        self.assertIn("looking forward to the debate", body)
        self.assertNotIn("casino", body.replace("casino-vote", ""))

        # Moderators find both in A's spam queue, with the real status.
        queue = await http.get(base + "/api/v1/manage/moderation/queue?queue=spam", headers=manage)
        spam_queue = (await queue.json())["comments"]
        self.assertEqual(sorted(c["text"] for c in spam_queue), sorted([SPAM_TEXT, "CASINO night, join now"]))
        self.assertEqual({c["status"] for c in spam_queue}, {"spam"})

        # B has no blocked words: the same text is public there.
        other = await post(b.id, SPAM_TEXT, client=loopback_http_client(self, listener.factory))
        self.assertEqual(other["comment"]["status"], "approved")
        self.assertEqual(await public_texts(b.id), ["<p>{}</p>".format(SPAM_TEXT)])

        # Counted by check and verdict.
        registry = node.top.registry
        self.assertEqual(
            registry.get_sample_value("fastedge_spam_check_verdicts_total", {"check": "heuristic", "verdict": "spam"}),
            2,
        )

        closed: Deferred[Any] = ws.closed
        ws.sendClose(1000)
        await closed
