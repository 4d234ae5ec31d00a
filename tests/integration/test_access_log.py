"""The access log of a whole node on real loopback sockets: a line per
HTTP/1.1 and HTTP/2 (real TLS, the ``h2`` library) request and per WebSocket
and SSE session, in the combined and the JSON format, with the right tenant
on each line and none of the secrets the test used."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlencode

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from fastedge.api.keys import hash_api_key, new_api_key
from fastedge.store.model import ReadPreference
from tests.support.http2 import h2_request
from tests.support.nodes import loopback_http_client, start_node

from .test_live import SseReader, WaitingClient

PRIMARY = ReadPreference.PRIMARY
URL_ID = "https://news.test/article"
REFERER_SECRET = "ref-secret-4711"


def _config(fmt: str) -> str:
    return "\n".join(
        [
            "[http]",
            'endpoint = "tcp:0:interface=127.0.0.1"',
            "[tls]",
            'endpoint = "tcp:0:interface=127.0.0.1"',
            "[log]",
            'access = "{}"'.format(fmt),
        ]
    )


class AccessLogNodeTests(TestCase):
    """One node per test; its log is read once the node has stopped (the
    stop writes every line still waiting)."""

    timeout = 60

    @inlineCallbacks
    def run_traffic(self, fmt: str):  # type: ignore[no-untyped-def]
        """Traffic of two tenants over h1, h2, WebSocket and SSE.

        :returns: (the log's lines, the secrets used, tenant A's id, B's id)
        """
        data_dir = os.path.abspath(self.mktemp())
        node = yield start_node(_config(fmt), data_dir)
        self.addCleanup(node.stop)
        store = node.top.getServiceNamed("store").store
        a = (yield store.create_tenant("A", "global", created_ms=1, read_preference=PRIMARY)).value
        b = (yield store.create_tenant("B", "global", created_ms=1, read_preference=PRIMARY)).value
        key = new_api_key()
        yield store.add_api_key(b.id, hash_api_key(key), created_ms=1, read_preference=PRIMARY)
        listener = node.top.getServiceNamed("http").getServiceNamed("http")
        http = loopback_http_client(self, listener.factory)
        base = node.http
        page = "{}/api/v1/{}/comments?{}".format(base, a.id, urlencode({"urlId": URL_ID}))

        # h1: a post (sets the session cookie), then a read with the cookie
        # and a Referer carrying a token, which gives a live viewer token.
        posted = yield http.post(page, json={"text": "hi", "displayName": "Ann"})
        self.assertEqual(posted.code, 201)
        cookie = posted.headers.getRawHeaders("set-cookie")[0].split(";")[0]
        read = yield http.get(
            page,
            headers={"cookie": cookie, "referer": "https://news.test/a?token=" + REFERER_SECRET},
        )
        viewer = (yield read.json())["viewer"]["liveToken"]
        # The tenant API, with B's key.
        manage = yield http.get(base + "/api/v1/manage/threads", headers={"authorization": "Bearer " + key})
        self.assertEqual(manage.code, 200)
        yield manage.text()
        # An unknown tenant: no tenant on its line.
        missing = yield http.get(base + "/api/v1/NoSuchTenant0000/comments?" + urlencode({"urlId": URL_ID}))
        self.assertEqual(missing.code, 404)
        yield missing.text()

        # h2 over real TLS.
        response, alpn = yield h2_request(
            node.https_port, b"GET", "/api/v1/{}/comments?{}".format(b.id, urlencode({"urlId": URL_ID})).encode()
        )
        self.assertEqual((alpn, response.status), (b"h2", 200))

        # WebSocket: subscribe to A's thread, then close.
        port = listener.port.getHost().port
        factory = WebSocketClientFactory("ws://127.0.0.1:{}/live".format(port))
        factory.protocol = WaitingClient
        ws = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
        yield ws.opened
        subscribed = ws.wait_for("subscribed")
        ws.send_json(type="subscribe", tenant=a.id, urlId=URL_ID)
        yield subscribed
        ws.sendClose()
        yield ws.closed

        # SSE with the viewer token, until the client leaves.
        path = "/live/events?" + urlencode({"tenant": a.id, "urlId": URL_ID, "viewer": viewer})
        request = "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {}\r\n\r\n".format(path, cookie).encode()
        sse = SseReader(request)
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: sse))
        yield sse.wait_for(b'"subscribed"')
        sse.transport.loseConnection()
        yield sse.lost

        yield _until_idle(node)
        yield node.stop()
        with open(os.path.join(data_dir, "access.log"), encoding="ascii") as f:
            lines = f.read().splitlines()
        secrets = [cookie.split("=", 1)[1], key, viewer, REFERER_SECRET]
        return lines, secrets, a.id, b.id

    @inlineCallbacks
    def test_combined(self):  # type: ignore[no-untyped-def]
        """Combined format: one line per request and per live session, with
        protocol, route, status, tenant (only a tenant that exists) and, for
        sessions, the messages sent; no cookie, key, viewer or Referer token."""
        lines, secrets, a, b = yield self.run_traffic("combined")
        text = "\n".join(lines)
        for secret in secrets:
            self.assertNotIn(secret, text)

        def find(*needles: str) -> str:
            found = [line for line in lines if all(n in line for n in needles)]
            self.assertEqual(len(found), 1, (needles, lines))
            return found[0]

        post = find('"POST /api/v1/{}/comments?urlId='.format(a))
        self.assertRegex(
            post,
            r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "POST /api/v1/\S+ HTTP/1\.1" 201 \d+ '
            r'"-" "[^"]*" rt=\d+\.\d{6} proto=h1 route="/api/v1/\{tenant\}/comments" tenant=' + a + "$",
        )
        read = find('"GET /api/v1/{}/comments?urlId='.format(a), "proto=h1")
        self.assertIn('"https://news.test/a?token=REDACTED"', read)
        self.assertIn("tenant=" + a, read)
        self.assertIn("tenant=" + b, find('"GET /api/v1/manage/threads HTTP/1.1" 200'))
        self.assertIn("tenant=-", find("/api/v1/NoSuchTenant0000/comments", "404"))
        h2 = find("proto=h2")
        self.assertIn('"GET /api/v1/{}/comments?urlId='.format(b), h2)
        self.assertIn('HTTP/2" 200', h2)
        self.assertIn("tenant=" + b, h2)
        ws = find("proto=ws")
        self.assertIn('"GET /live HTTP/1.1" 101', ws)
        self.assertIn("tenant=" + a, ws)
        self.assertRegex(ws, r" msgs=[2-9]$")  # hello and subscribed, at least
        # The SSE request's own HTTP line is replaced by the session's.
        sse = find("/live/events?")
        self.assertIn("proto=sse", sse)
        self.assertIn("&viewer=REDACTED", sse)
        self.assertIn("tenant=" + a, sse)
        self.assertIn(" 200 ", sse)
        self.assertRegex(sse, r" msgs=[1-9]\d*$")

    @inlineCallbacks
    def test_json(self):  # type: ignore[no-untyped-def]
        """JSON lines: every line parses, fields as documented, the same
        tenants and protocols, and no secrets."""
        lines, secrets, a, b = yield self.run_traffic("json")
        text = "\n".join(lines)
        for secret in secrets:
            self.assertNotIn(secret, text)
        docs = [json.loads(line) for line in lines]
        self.assertEqual(
            set(docs[0]),
            {
                "time",
                "client",
                "method",
                "target",
                "httpVersion",
                "protocol",
                "status",
                "bytes",
                "referer",
                "userAgent",
                "durationSeconds",
                "route",
                "tenant",
            },
        )
        by_proto: dict[str, list[dict[str, Any]]] = {}
        for doc in docs:
            by_proto.setdefault(doc["protocol"], []).append(doc)
        self.assertEqual(sorted(by_proto), ["h1", "h2", "sse", "ws"])
        self.assertEqual([(d["tenant"], d["status"]) for d in by_proto["h2"]], [(b, 200)])
        (ws,) = by_proto["ws"]
        self.assertEqual((ws["tenant"], ws["status"], ws["route"]), (a, 101, "/live"))
        self.assertGreaterEqual(ws["messages"], 2)
        (sse,) = by_proto["sse"]
        self.assertEqual((sse["tenant"], sse["status"], sse["route"]), (a, 200, "/live/events"))
        self.assertIn("viewer=REDACTED", sse["target"])
        tenants = {d["target"].split("/")[3]: d["tenant"] for d in by_proto["h1"] if "/comments" in d["target"]}
        self.assertEqual(tenants, {a: a, "NoSuchTenant0000": None})
        self.assertEqual([d["tenant"] for d in by_proto["h1"] if "/manage/" in d["target"]], [b])


@inlineCallbacks
def _until_idle(node: Any):  # type: ignore[no-untyped-def]
    """Wait until the node has seen every client connection close."""
    site = node.top.getServiceNamed("http").getServiceNamed("http").factory
    site = getattr(site, "wrappedFactory", site)
    yield site.when_idle()
