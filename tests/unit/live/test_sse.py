"""Tests for the SSE stream, ``GET /live/events``, through the node's real
Site with ``treq.testing.StubTreq``."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock
from urllib.parse import urlencode

import treq
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.live import messages
from fastedge.live.sse import chunk, record
from fastedge.store.model import ReadPreference

from .common import World

PRIMARY = ReadPreference.PRIMARY


def parse_records(raw: bytes) -> list[dict[str, Any]]:
    """SSE records as {"id": ..., "data": <parsed JSON>} (comments dropped)."""
    out = []
    for block in raw.decode().split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value
        if "data" in fields:
            out.append(fields)
    return out


class SseTests(SynchronousTestCase):
    live: dict[str, Any] = {}

    def setUp(self) -> None:
        self.clock = Clock()
        self.world = World(self.clock, **self.live)
        self.node = self.world.node
        self.stub = StubTreq(self.node.site.resource)

    def url(self, **query: Any) -> str:
        params = {"tenant": self.world.tenant_a.id, "urlId": self.world.url}
        params.update(query)
        return "http://node.test/live/events?" + urlencode({k: v for k, v in params.items() if v is not None})

    def open(self, headers: dict[bytes, list[bytes]] | None = None, **query: Any) -> tuple[Any, list[bytes]]:
        response = self.successResultOf(self.stub.get(self.url(**query), headers=headers))
        chunks: list[bytes] = []
        # A stream cut by the server or the test ends the body early: fine here.
        treq.collect(response, chunks.append).addErrback(lambda f: None)
        self.stub.flush()
        return response, chunks

    def error(self, url: str, headers: dict[bytes, list[bytes]] | None = None) -> tuple[int, dict[str, Any]]:
        response = self.successResultOf(self.stub.get(url, headers=headers))
        body = self.successResultOf(response.json())
        return response.code, body["error"]

    def test_stream(self) -> None:
        """The stream opens with a retry hint and the subscribed answer, then
        carries each event with its id (epoch-seq)."""
        response, chunks = self.open()
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/event-stream; charset=utf-8"],
        )
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        author = self.world.author(self.world.tenant_a)
        comment = self.world.comment(self.world.tenant_a, self.world.thread_a, author, "live")
        self.stub.flush()
        raw = b"".join(chunks)
        self.assertTrue(raw.startswith(b"retry: 2000\n\n"))
        records = parse_records(raw)
        answer, event = records
        self.assertEqual(answer["data"]["type"], "subscribed")
        self.assertEqual(event["id"], "{}-1".format(answer["data"]["epoch"]))
        self.assertEqual(event["data"]["event"], "comment.created")
        self.assertEqual(event["data"]["data"]["comment"]["id"], comment.id)
        self.assertEqual(self.node.metric("fastedge_live_connections", {"transport": "sse"}), 1)

    def test_last_event_id_recovery(self) -> None:
        """A reconnect with Last-Event-ID gets exactly the events after it."""
        _, first = self.open()
        author = self.world.author(self.world.tenant_a)
        for text in "abc":
            self.world.comment(self.world.tenant_a, self.world.thread_a, author, text)
        self.stub.flush()
        ids = [r["id"] for r in parse_records(b"".join(first)) if "id" in r]
        _, second = self.open(headers={b"last-event-id": [ids[0].encode()]})
        records = parse_records(b"".join(second))
        self.assertEqual(records[0]["data"]["replayed"], 2)
        self.assertEqual([r["id"] for r in records[1:]], ids[1:])
        # The query-string form, for clients that cannot set headers.
        _, third = self.open(lastEventId=ids[1])
        self.assertEqual([r["id"] for r in parse_records(b"".join(third))[1:]], ids[2:])

    def test_since_and_reload(self) -> None:
        """since/epoch in the query work as on the WebSocket; another epoch
        means reload."""
        _, chunks = self.open(since=3, epoch="abcdefg")
        answer = parse_records(b"".join(chunks))[0]["data"]
        self.assertTrue(answer["reload"])

    def test_viewer_blocks(self) -> None:
        """With a viewer token, the blocked author's events are left out."""
        tenant, thread = self.world.tenant_a, self.world.thread_a
        viewer, troll = self.world.author(tenant), self.world.author(tenant)
        self.successResultOf(self.node.store.add_block(tenant.id, viewer, troll, created_ms=0, read_preference=PRIMARY))
        _, chunks = self.open(viewer=self.world.viewer_token(tenant, viewer))
        self.world.comment(tenant, thread, troll, "spam")
        self.world.comment(tenant, thread, viewer, "mine")
        self.stub.flush()
        events = [r["data"] for r in parse_records(b"".join(chunks)) if r["data"]["type"] == "event"]
        self.assertEqual([e["data"]["comment"]["authorId"] for e in events], [viewer])

    def test_keepalive_and_shutdown(self) -> None:
        """Keep-alive writes a comment line; stopping the node sends a close
        message (1001) and ends the stream."""
        response, chunks = self.open()
        self.node.live.keepalive()
        self.node.service.startService()
        stopped = self.node.service.stopService()
        self.stub.flush()
        raw = b"".join(chunks)
        self.assertIn(b": ping\n\n", raw)
        last = parse_records(raw)[-1]["data"]
        self.assertEqual((last["type"], last["code"]), ("close", 1001))
        self.clock.advance(10)
        self.successResultOf(stopped)
        self.assertEqual(self.node.metric("fastedge_live_connections", {"transport": "sse"}), 0)

    def test_drain_moves_then_closes(self) -> None:
        """A drain sends the ``move`` message, then the ``close`` (1001), and
        ends the stream."""
        response, chunks = self.open()
        self.node.live.shutdown(messages.move("edge-2", ["192.0.2.2"]))
        self.stub.flush()
        tail = [r["data"] for r in parse_records(b"".join(chunks))][-2:]
        self.assertEqual(
            tail,
            [
                {"type": "move", "node": "edge-2", "addresses": ["192.0.2.2"], "reason": "drain"},
                {"type": "close", "code": 1001, "reason": "server shutting down; reconnect"},
            ],
        )
        self.assertEqual(self.node.metric("fastedge_live_moves_total", {"transport": "sse"}), 1)

    def test_client_going_away_unsubscribes(self) -> None:
        """When the client disconnects, its subscription goes."""
        response, _ = self.open()
        self.assertEqual(self.node.metric("fastedge_live_subscriptions"), 1)
        (stream,) = self.node.live.connections["sse"]
        stream._request.channel.transport.loseConnection()
        self.stub.flush()
        self.assertEqual(self.node.metric("fastedge_live_subscriptions"), 0)
        self.assertEqual(self.node.metric("fastedge_live_connections", {"transport": "sse"}), 0)

    # Bad input

    def test_missing_parameters(self) -> None:
        """tenant and urlId are required."""
        self.assertEqual(
            self.error("http://node.test/live/events?urlId=x"),
            (400, {"code": "missing_tenant", "message": "tenant is required"}),
        )
        self.assertEqual(
            self.error("http://node.test/live/events?tenant=x")[1]["code"],
            "missing_url_id",
        )

    def test_unknown_tenant_and_thread(self) -> None:
        """Unknown tenants and threads are 404 with a JSON error."""
        self.assertEqual(
            self.error(self.url(tenant="nosuchtenant")),
            (404, {"code": "tenant_not_found", "message": "tenant not found"}),
        )
        code, err = self.error(self.url(urlId="https://nope"))
        self.assertEqual((code, err["code"]), (404, "thread_not_found"))

    def test_other_tenants_thread(self) -> None:
        """Tenant B's id with a urlId only tenant A has is not found (isolation)."""
        store = self.node.store
        self.successResultOf(
            store.upsert_thread(
                self.world.tenant_a.id,
                "https://only-a",
                created_ms=0,
                read_preference=PRIMARY,
            )
        )
        self.assertEqual(self.open(urlId="https://only-a")[0].code, 200)
        code, err = self.error(self.url(tenant=self.world.tenant_b.id, urlId="https://only-a"))
        self.assertEqual((code, err["code"]), (404, "thread_not_found"))

    def test_bad_since(self) -> None:
        """since must be a non-negative integer, not beyond the channel."""
        self.assertEqual(self.error(self.url(since="-1"))[1]["code"], "bad_since")
        self.assertEqual(self.error(self.url(since="abc"))[1]["code"], "bad_since")
        code, err = self.error(self.url(since="5"))
        self.assertEqual((code, err["code"]), (400, "since_in_future"))

    def test_bad_last_event_id(self) -> None:
        """A Last-Event-ID that is no event id is refused."""
        code, err = self.error(self.url(), headers={b"last-event-id": [b"garbage"]})
        self.assertEqual((code, err["code"]), (400, "bad_last_event_id"))

    def test_malformed_but_unused_parameters(self) -> None:
        """A malformed epoch or lastEventId is refused even where it would be
        unused (an epoch without since, an empty lastEventId), as
        docs/openapi.yaml's patterns say: never silently ignored."""
        code, err = self.error(self.url(epoch="NOT-AN-EPOCH"))
        self.assertEqual((code, err["code"]), (400, "bad_epoch"))
        code, err = self.error(self.url(lastEventId=""))
        self.assertEqual((code, err["code"]), (400, "bad_last_event_id"))
        code, err = self.error(self.url(lastEventId="x"), headers={b"last-event-id": [b"abc-1"]})
        self.assertEqual((code, err["code"]), (400, "bad_last_event_id"))

    def test_bad_viewer_token(self) -> None:
        """A forged or foreign viewer token is 401."""
        code, err = self.error(self.url(viewer="lv1.a.b.1.c"))
        self.assertEqual((code, err["code"]), (401, "bad_viewer_token"))
        token = self.world.viewer_token(self.world.tenant_b, self.world.author(self.world.tenant_b))
        self.assertEqual(self.error(self.url(viewer=token))[0], 401)

    def test_non_ascii_viewer_token(self) -> None:
        """A viewer token with non-ASCII characters (``%C3%A9`` as the author,
        ``%C2%B2`` as the time) is 401 ``bad_viewer_token``, not a 500."""
        tenant = self.world.tenant_a.id
        for token in ("lv1.{}.%C3%A9.123.abc", "lv1.{}.author.%C2%B2.abc", "lv1.{}.a.1.%C3%A9"):
            url = self.url() + "&viewer=" + token.format(tenant)
            self.assertEqual(self.error(url), (401, {"code": "bad_viewer_token", "message": mock.ANY}), token)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_unknown_and_repeated_parameters(self) -> None:
        """Unknown or repeated query parameters are refused."""
        self.assertEqual(self.error(self.url(foo="1"))[1]["code"], "bad_query")
        self.assertEqual(self.error(self.url() + "&tenant=x")[1]["code"], "bad_query")


class SseLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.world = World(self.clock, max_connections=1, max_buffered_bytes=1500)
        self.node = self.world.node
        self.stub = StubTreq(self.node.site.resource)

    def test_connection_limit(self) -> None:
        """Past live.max_connections a stream is refused with 503."""
        query = urlencode({"tenant": self.world.tenant_a.id, "urlId": self.world.url})
        first = self.successResultOf(self.stub.get("http://node.test/live/events?" + query))
        self.assertEqual(first.code, 200)
        second = self.successResultOf(self.stub.get("http://node.test/live/events?" + query))
        self.assertEqual(second.code, 503)
        self.assertEqual(self.successResultOf(second.json())["error"]["code"], "too_many_connections")

    def test_slow_consumer(self) -> None:
        """A stream whose transport stopped taking data is ended (with a
        close message, 4008) once live.max_buffered_bytes are waiting."""
        query = urlencode({"tenant": self.world.tenant_a.id, "urlId": self.world.url})
        response = self.successResultOf(self.stub.get("http://node.test/live/events?" + query))
        chunks: list[bytes] = []
        treq.collect(response, chunks.append).addErrback(lambda f: None)
        self.stub.flush()
        (stream,) = self.node.live.connections["sse"]
        stream._writer.pauseProducing()  # what the transport does when its buffer is full
        author = self.world.author(self.world.tenant_a)
        for _ in range(20):
            self.world.comment(self.world.tenant_a, self.world.thread_a, author, "y" * 200)
        self.stub.flush()
        self.clock.advance(10)
        self.stub.flush()
        records = parse_records(b"".join(chunks))
        self.assertEqual((records[-1]["data"]["type"], records[-1]["data"]["code"]), ("close", 4008))
        self.assertLess(len(records), 20)
        self.assertEqual(
            self.node.metric("fastedge_live_slow_consumer_disconnects_total", {"transport": "sse"}),
            1,
        )
        self.assertEqual(self.node.metric("fastedge_live_subscriptions"), 0)


class FramingTests(SynchronousTestCase):
    def test_record_and_chunk(self) -> None:
        """SSE records and HTTP/1.1 chunks are framed as the specs say."""
        self.assertEqual(record(b'{"a":1}'), b'data: {"a":1}\n\n')
        self.assertEqual(record(b"{}", "e-1"), b"id: e-1\ndata: {}\n\n")
        self.assertEqual(chunk(b"x" * 17), b"11\r\n" + b"x" * 17 + b"\r\n")


class SseRaceTests(SynchronousTestCase):
    def test_client_leaves_while_resolving(self) -> None:
        """A client that goes away while its subscribe is still being looked
        up is never subscribed (no leaked subscription or connection)."""
        from fastedge.testing.fakes import HeldRunner

        runner = HeldRunner()
        world = World(Clock(), run=runner)
        node = world.node
        stub = StubTreq(node.site.resource)
        runner.holding = True
        query = urlencode({"tenant": world.tenant_a.id, "urlId": world.url})
        d = stub.get("http://node.test/live/events?" + query)
        stub.flush()
        self.assertNoResult(d)
        self.assertTrue(runner.calls)
        # The client hangs up: drop every connection the stub has open.
        for pump in list(stub._agent._pumps):
            pump.clientIO.loseConnection()
        stub.flush()
        d.addErrback(lambda f: None)
        while runner.calls:
            runner.release()
        stub.flush()
        self.assertEqual(node.metric("fastedge_live_subscriptions"), 0)
        self.assertEqual(node.metric("fastedge_live_connections", {"transport": "sse"}), 0)
