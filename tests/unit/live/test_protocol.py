"""WebSocket protocol tests for ``/live``, over autobahn's in-memory
transports (``create_memory_agent``/``create_pumper``) with a real SQLite
store behind the node."""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.testing import (
    MemoryReactorClockResolver,
    create_memory_agent,
    create_pumper,
)
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponseAccept
from twisted.trial.unittest import TestCase

from fastedge.live import messages
from fastedge.live.protocol import LiveServerProtocol
from fastedge.store.model import ReadPreference

from .common import Client, World, done

PRIMARY = ReadPreference.PRIMARY


class LiveProtocolTestCase(TestCase):
    live: dict[str, Any] = {}

    def setUp(self) -> Any:
        self.reactor = MemoryReactorClockResolver()
        self.pumper = create_pumper()
        self.world = World(self.reactor, **self.live)
        self.node = self.world.node
        factory = self.node.service.resource.factory
        self.agent = create_memory_agent(self.reactor, self.pumper, lambda: factory.buildProtocol(None))
        return self.pumper.start()

    def tearDown(self) -> Any:
        return self.pumper.stop()

    def flush(self) -> None:
        for _ in range(5):
            # The fan-out runs on the reactor's next turns.
            self.reactor.advance(0)
            self.pumper._flush()

    async def connect(self) -> Client:
        d = self.agent.open("ws://localhost:8080/live", {}, protocol_class=Client)
        self.flush()
        client: Client = await d
        self.flush()
        return client

    async def subscribed(self, **extra: Any) -> Client:
        """A client subscribed to tenant A's thread."""
        client = await self.connect()
        client.sendMessage(self.world.subscribe_msg(**extra))
        self.flush()
        return client

    def server(self) -> LiveServerProtocol:
        (proto,) = self.node.live.connections["websocket"]
        return proto  # type: ignore[no-any-return]


class SubscribeTests(LiveProtocolTestCase):
    async def test_hello(self) -> None:
        """A new connection is greeted with the protocol name and limits."""
        client = await self.connect()
        self.assertEqual(
            client.messages,
            [
                {
                    "type": "hello",
                    "protocol": "fastedge.live.1",
                    "node": "test-node",
                    "maxSubscriptions": 20,
                }
            ],
        )
        self.assertEqual(self.node.metric("fastedge_live_connections", {"transport": "websocket"}), 1)

    async def test_compression_offer_declined(self) -> None:
        """A client offering permessage-deflate (as every browser does) is
        answered without the extension, greeted, and counted."""

        class CompressingClient(Client):
            perMessageCompressionOffers = [PerMessageDeflateOffer(accept_max_window_bits=True)]

            def perMessageCompressionAccept(self, response: Any) -> Any:
                return PerMessageDeflateResponseAccept(response)

        d = self.agent.open("ws://localhost:8080/live", {}, protocol_class=CompressingClient)
        self.flush()
        client = await d
        self.flush()
        self.assertEqual(client.websocket_extensions_in_use, [])
        self.assertEqual([m["type"] for m in client.messages], ["hello"])
        self.assertEqual(self.node.metric("fastedge_live_compression_offers_declined_total"), 1)

    def test_factory_options_are_class_data(self) -> None:
        """The factory's data options live on the protocol class (nothing is
        copied per connection); a function option is never put on the class
        (it would become a method): the protocol's own hook declines
        compression."""
        factory = self.node.service.resource.factory
        protocol = factory.protocol
        self.assertEqual(protocol.CONFIG_ATTRS, [])
        self.assertEqual(protocol.maxMessagePayloadSize, factory.maxMessagePayloadSize)
        self.assertIs(
            protocol.__dict__.get("perMessageCompressionAccept"),
            None,
        )
        self.assertIsNone(factory.buildProtocol(None).perMessageCompressionAccept([PerMessageDeflateOffer()]))

    async def test_deeply_nested_json(self) -> None:
        """A text frame of 2,040 nested arrays (or objects, or nesting inside
        a field) closes with 4400, not a dropped connection and a
        RecursionError; 32 levels are parsed (and refused as an unknown or
        malformed field, the connection staying open)."""
        for payload in (
            b"[" * 2040,
            b"[" * 2040 + b"]" * 2040,
            b'{"a":' * 600 + b"1" + b"}" * 600,
            b'{"type":"ping","ref":' + b"[" * 33 + b"]" * 33 + b"}",
        ):
            client = await self.connect()
            client.sendMessage(payload)
            self.flush()
            await client.closed
            self.assertEqual(client.close_code, 4400)
        client = await self.connect()
        client.sendMessage(b'{"type":"ping","ref":' + b"[" * 31 + b"]" * 31 + b"}")
        self.flush()
        self.assertEqual([e["code"] for e in client.of_type("error")], ["bad_ref"])
        self.assertIsNone(client.close_code)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_subscribe_then_events(self) -> None:
        """Subscribing answers with the channel and its position; new comments
        then arrive as events with increasing sequence numbers."""
        client = await self.connect()
        client.send_json(
            type="subscribe",
            tenant=self.world.tenant_a.id,
            urlId=self.world.url,
            ref="r1",
        )
        self.flush()
        (answer,) = client.of_type("subscribed")
        channel = "{}/{}".format(self.world.tenant_a.id, self.world.thread_a.id)
        self.assertEqual(answer["channel"], channel)
        self.assertEqual(
            (answer["seq"], answer["reload"], answer["replayed"], answer["ref"]),
            (0, False, 0, "r1"),
        )
        author = self.world.author(self.world.tenant_a)
        c1 = self.world.comment(self.world.tenant_a, self.world.thread_a, author, "one")
        self.world.comment(self.world.tenant_a, self.world.thread_a, author, "two")
        self.flush()
        events = client.of_type("event")
        self.assertEqual([e["seq"] for e in events], [1, 2])
        self.assertEqual(events[0]["id"], "{}-1".format(answer["epoch"]))
        self.assertEqual(events[0]["event"], "comment.created")
        self.assertEqual(events[0]["channel"], channel)
        self.assertEqual(events[0]["data"]["comment"]["id"], c1.id)
        self.assertEqual(events[0]["data"]["comment"]["html"], "<p>one</p>")
        self.assertEqual(self.node.metric("fastedge_live_subscriptions"), 1)
        self.assertEqual(self.node.metric("fastedge_live_messages_delivered_total"), 2)

    async def test_unsubscribe(self) -> None:
        """After unsubscribing, no more events arrive; unsubscribing again is
        an error that leaves the connection open."""
        client = await self.subscribed()
        channel = client.of_type("subscribed")[0]["channel"]
        client.send_json(type="unsubscribe", channel=channel, ref=7)
        self.flush()
        self.assertEqual(
            client.of_type("unsubscribed"),
            [{"type": "unsubscribed", "channel": channel, "ref": 7}],
        )
        self.world.comment(
            self.world.tenant_a,
            self.world.thread_a,
            self.world.author(self.world.tenant_a),
        )
        client.send_json(type="unsubscribe", channel=channel)
        self.flush()
        self.assertEqual(client.of_type("event"), [])
        self.assertEqual(client.of_type("error")[0]["code"], "not_subscribed")
        self.assertIsNone(client.close_code)
        self.assertEqual(self.node.metric("fastedge_live_subscriptions"), 0)

    async def test_several_channels_one_connection(self) -> None:
        """One connection may follow several channels (of any tenant) and gets
        each channel's events, named by channel."""
        client = await self.connect()
        client.sendMessage(self.world.subscribe_msg(self.world.tenant_a))
        client.sendMessage(self.world.subscribe_msg(self.world.tenant_b))
        self.flush()
        self.assertEqual(len(client.of_type("subscribed")), 2)
        self.world.comment(
            self.world.tenant_b,
            self.world.thread_b,
            self.world.author(self.world.tenant_b),
        )
        self.flush()
        (event,) = client.of_type("event")
        self.assertEqual(
            event["channel"],
            "{}/{}".format(self.world.tenant_b.id, self.world.thread_b.id),
        )

    async def test_ping(self) -> None:
        """An application ping is answered with a pong carrying its ref."""
        client = await self.connect()
        client.send_json(type="ping", ref="p")
        self.flush()
        self.assertEqual(client.of_type("pong"), [{"type": "pong", "ref": "p"}])


class RecoveryTests(LiveProtocolTestCase):
    live = {"history_events": 3}

    async def test_recovery_without_gap(self) -> None:
        """Re-subscribing with since and epoch replays exactly the missed
        events, in order, right after the answer, then live events follow."""
        first = await self.subscribed()
        epoch = first.of_type("subscribed")[0]["epoch"]
        author = self.world.author(self.world.tenant_a)
        for text in ("a", "b", "c"):
            self.world.comment(self.world.tenant_a, self.world.thread_a, author, text)
        self.flush()
        second = await self.subscribed(since=1, epoch=epoch)
        answer = second.of_type("subscribed")[0]
        self.assertEqual((answer["seq"], answer["reload"], answer["replayed"]), (3, False, 2))
        self.world.comment(self.world.tenant_a, self.world.thread_a, author, "d")
        self.flush()
        types = [m["type"] for m in second.messages]
        self.assertEqual(types, ["hello", "subscribed", "event", "event", "event"])
        self.assertEqual([m["seq"] for m in second.of_type("event")], [2, 3, 4])
        self.assertEqual(
            [m["data"]["comment"]["html"] for m in second.of_type("event")],
            ["<p>b</p>", "<p>c</p>", "<p>d</p>"],
        )
        self.assertEqual(
            self.node.metric("fastedge_live_recoveries_total", {"result": "replayed"}),
            1,
        )

    async def test_recovery_with_gap(self) -> None:
        """When the missed events have left the bounded history, the answer
        says reload and nothing is replayed (never a silent gap)."""
        first = await self.subscribed()
        epoch = first.of_type("subscribed")[0]["epoch"]
        author = self.world.author(self.world.tenant_a)
        for text in "abcde":
            self.world.comment(self.world.tenant_a, self.world.thread_a, author, text)
        second = await self.subscribed(since=1, epoch=epoch)
        answer = second.of_type("subscribed")[0]
        self.assertEqual((answer["seq"], answer["reload"], answer["replayed"]), (5, True, 0))
        self.assertEqual(second.of_type("event"), [])
        self.assertEqual(self.node.metric("fastedge_live_recoveries_total", {"result": "reload"}), 1)

    async def test_recovery_from_another_epoch(self) -> None:
        """A since from another epoch (e.g. before a restart) means reload."""
        client = await self.subscribed(since=4, epoch="abcdefg")
        self.assertTrue(client.of_type("subscribed")[0]["reload"])


class BadInputTests(LiveProtocolTestCase):
    live = {
        "max_subscriptions": 2,
        "max_message_bytes": 512,
        "client_messages_per_minute": 8,
    }

    async def assertClosed(self, client: Client, code: int) -> None:
        self.flush()
        await client.closed
        self.assertEqual(client.close_code, code)

    async def assertError(self, payload: bytes, code: str) -> Client:
        client = await self.connect()
        client.sendMessage(payload)
        self.flush()
        errors = client.of_type("error")
        self.assertEqual([e["code"] for e in errors], [code], client.messages)
        self.assertIsNone(client.close_code)
        return client

    async def test_not_json(self) -> None:
        """A text frame that is not JSON closes the connection with 4400."""
        client = await self.connect()
        client.sendMessage(b"hello?")
        await self.assertClosed(client, 4400)
        self.assertEqual(self.node.metric("fastedge_live_closes_total", {"code": "4400"}), 1)

    async def test_not_an_object(self) -> None:
        """JSON that is not an object with a string type closes with 4400."""
        for payload in (b"[1, 2]", b'{"type": 5}', b"{}"):
            client = await self.connect()
            client.sendMessage(payload)
            await self.assertClosed(client, 4400)

    async def test_binary_frame(self) -> None:
        """A binary frame closes the connection with 1003 (unsupported data)."""
        client = await self.connect()
        client.sendMessage(b"\x00\x01", isBinary=True)
        await self.assertClosed(client, 1003)

    async def test_oversized_frame(self) -> None:
        """A message over live.max_message_bytes closes with 1009."""
        client = await self.connect()
        client.sendMessage(json.dumps({"type": "ping", "ref": "x" * 1000}).encode())
        await self.assertClosed(client, 1009)

    async def test_not_utf8(self) -> None:
        """A text frame that is not UTF-8 closes with 1007."""
        client = await self.connect()
        client.sendMessage(b'{"type": "\xff"}')
        await self.assertClosed(client, 1007)

    async def test_unknown_type(self) -> None:
        """An unknown message type is an error; the connection stays usable."""
        client = await self.assertError(b'{"type": "publish", "ref": 1}', "unknown_type")
        self.assertEqual(client.of_type("error")[0]["ref"], 1)
        client.send_json(type="ping")
        self.flush()
        self.assertEqual(len(client.of_type("pong")), 1)

    async def test_unknown_field(self) -> None:
        """Fields a message does not have are refused."""
        await self.assertError(self.world.subscribe_msg(channel="x"), "unknown_field")

    async def test_unknown_tenant(self) -> None:
        """Subscribing to a tenant that does not exist is an error."""
        await self.assertError(
            b'{"type":"subscribe","tenant":"nosuchtenant","urlId":"x"}',
            "tenant_not_found",
        )
        await self.assertError(b'{"type":"subscribe","tenant":"../../etc","urlId":"x"}', "tenant_not_found")

    async def test_unknown_thread(self) -> None:
        """Subscribing to a thread the public API would not show is an error."""
        payload = json.dumps(
            {
                "type": "subscribe",
                "tenant": self.world.tenant_a.id,
                "urlId": "https://nope",
            }
        ).encode()
        await self.assertError(payload, "thread_not_found")
        self.assertEqual(
            self.node.metric(
                "fastedge_live_subscribe_requests_total",
                {"outcome": "thread_not_found"},
            ),
            1,
        )

    async def test_missing_fields(self) -> None:
        """A subscribe without tenant or urlId is an error."""
        await self.assertError(b'{"type":"subscribe","urlId":"x"}', "missing_tenant")
        await self.assertError(b'{"type":"subscribe","tenant":"x"}', "missing_url_id")

    async def test_since_negative_or_not_integer(self) -> None:
        """since must be a non-negative integer."""
        await self.assertError(self.world.subscribe_msg(since=-1), "bad_since")
        await self.assertError(self.world.subscribe_msg(since="3"), "bad_since")
        await self.assertError(self.world.subscribe_msg(since=True), "bad_since")
        await self.assertError(self.world.subscribe_msg(since=1.5), "bad_since")

    async def test_since_in_future(self) -> None:
        """A since beyond the channel's sequence number is an error."""
        await self.assertError(self.world.subscribe_msg(since=10), "since_in_future")

    async def test_bad_epoch(self) -> None:
        """An epoch that cannot be one is refused."""
        await self.assertError(self.world.subscribe_msg(since=1, epoch="NOT AN EPOCH"), "bad_epoch")

    async def test_bad_ref(self) -> None:
        """A ref must be a short string or an integer."""
        await self.assertError(b'{"type":"ping","ref":{"a":1}}', "bad_ref")

    async def test_bad_channel(self) -> None:
        """Unsubscribing from something that is not a channel name is an error."""
        await self.assertError(b'{"type":"unsubscribe","channel":"no slash"}', "bad_channel")

    async def test_twice_the_same_channel(self) -> None:
        """Subscribing twice to one channel on one connection is an error."""
        client = await self.subscribed()
        client.sendMessage(self.world.subscribe_msg())
        self.flush()
        self.assertEqual([e["code"] for e in client.of_type("error")], ["already_subscribed"])

    async def test_too_many_subscriptions(self) -> None:
        """At most live.max_subscriptions channels per connection."""
        client = await self.connect()
        client.sendMessage(self.world.subscribe_msg(self.world.tenant_a))
        client.sendMessage(self.world.subscribe_msg(self.world.tenant_b))
        client.sendMessage(self.world.subscribe_msg(self.world.tenant_a))
        self.flush()
        self.assertEqual(len(client.of_type("subscribed")), 2)
        self.assertEqual([e["code"] for e in client.of_type("error")], ["too_many_subscriptions"])

    async def test_bad_viewer_token(self) -> None:
        """A forged viewer token is refused."""
        await self.assertError(self.world.subscribe_msg(viewer="lv1.x.y.1.zzz"), "bad_viewer_token")

    async def test_non_ascii_viewer_token(self) -> None:
        """A viewer token with non-ASCII characters is ``bad_viewer_token``
        (not ``internal_error``), and the connection stays open."""
        tenant = self.world.tenant_a.id
        for token in ("lv1.{}.\u00e9.123.abc", "lv1.{}.author.\u00b2.abc"):
            await self.assertError(self.world.subscribe_msg(viewer=token.format(tenant)), "bad_viewer_token")
        self.assertEqual(self.node.metric("fastedge_live_subscribe_requests_total", {"outcome": "internal_error"}), 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_rate_limit(self) -> None:
        """A client sending more than live.client_messages_per_minute is
        closed with 4429."""
        client = await self.connect()
        for _ in range(9):
            client.send_json(type="ping")
        await self.assertClosed(client, 4429)
        self.assertEqual(len(client.of_type("pong")), 8)

    async def test_bad_client_does_not_affect_others(self) -> None:
        """A client closed for bad input leaves other clients' subscriptions
        and events alone."""
        good = await self.subscribed()
        bad = await self.subscribed()
        bad.sendMessage(b"\xff\xfe", isBinary=True)
        await self.assertClosed(bad, 1003)
        self.world.comment(
            self.world.tenant_a,
            self.world.thread_a,
            self.world.author(self.world.tenant_a),
        )
        self.flush()
        self.assertEqual(len(good.of_type("event")), 1)
        self.assertEqual(self.node.metric("fastedge_live_subscriptions"), 1)


class SlowConsumerTests(LiveProtocolTestCase):
    live = {"max_buffered_bytes": 2000}

    async def test_slow_consumer_disconnected(self) -> None:
        """A client whose transport stops taking data is disconnected with
        4008 once more than live.max_buffered_bytes wait for it, after which
        nothing more is queued for it; other subscribers go on."""
        slow = await self.subscribed()
        protos = set(self.node.live.connections["websocket"])
        fast = await self.subscribed()
        (slow_proto,) = protos
        # What a TCP transport does when its send buffer is full.
        slow_proto.transport.producer.pauseProducing()
        author = self.world.author(self.world.tenant_a)
        for _ in range(20):
            self.world.comment(self.world.tenant_a, self.world.thread_a, author, "x" * 200)
        await self.assertClosed(slow, 4008)
        self.assertLess(len(slow.of_type("event")), 20)
        self.assertEqual(len(fast.of_type("event")), 20)
        self.assertEqual(
            self.node.metric(
                "fastedge_live_slow_consumer_disconnects_total",
                {"transport": "websocket"},
            ),
            1,
        )
        self.assertEqual(self.node.metric("fastedge_live_subscriptions"), 1)

    async def assertClosed(self, client: Client, code: int) -> None:
        self.flush()
        await client.closed
        self.assertEqual(client.close_code, code)


class FrameLimitTests(LiveProtocolTestCase):
    """Frames are counted before any message is built: a client may send at
    most live.client_frames_per_second frames (pings and pongs included)
    and split a message into at most live.max_fragments_per_message."""

    live = {"client_frames_per_second": 10, "max_fragments_per_message": 4, "close_timeout_seconds": 1.0}

    async def closed_and_dropped(self, client: Client, code: int) -> None:
        """``client`` was sent close ``code``; the server stopped reading it,
        and drops it when the closing handshake times out."""
        self.flush()
        self.assertEqual(self.node.metric("fastedge_live_closes_total", {"code": str(code)}), 1)
        self.assertEqual(self.node.metric("fastedge_live_frame_floods_total", {"code": str(code)}), 1)
        self.reactor.advance(1.0)
        self.flush()
        await client.closed
        self.assertEqual(client.close_code, code)
        self.assertEqual(self.node.metric("fastedge_live_connections", {"transport": "websocket"}), 0)

    async def test_pings_answered_within_the_rate(self) -> None:
        """Pings within the frame rate are answered with pongs carrying their
        payload, through the connection's writer."""
        client = await self.connect()
        pongs: list[bytes] = []
        client.onPong = pongs.append  # type: ignore[method-assign]
        for i in range(30):
            client.sendPing(b"%d" % i)
            self.flush()
            self.reactor.advance(0.1)
        self.assertEqual(pongs, [b"%d" % i for i in range(30)])
        self.assertIsNone(client.close_code)

    async def test_ping_flood_closed_with_4429(self) -> None:
        """More pings at once than the frame rate allows close with 4429; the
        pings past the limit get no pong."""
        client = await self.connect()
        pongs: list[bytes] = []
        client.onPong = pongs.append  # type: ignore[method-assign]
        for _ in range(50):
            client.sendPing(b"x" * 125)
        await self.closed_and_dropped(client, 4429)
        self.assertEqual(len(pongs), 10)

    async def test_unsolicited_pong_flood_closed_with_4429(self) -> None:
        """Pongs nobody asked for count as frames too."""
        client = await self.connect()
        for _ in range(11):
            client.sendPong(b"")
        await self.closed_and_dropped(client, 4429)

    async def test_fragmented_message_within_the_limit(self) -> None:
        """A message in max_fragments_per_message frames is read whole."""
        client = await self.connect()
        payload = self.world.subscribe_msg()
        quarter = len(payload) // 4 + 1
        parts = [payload[i : i + quarter] for i in range(0, len(payload), quarter)]
        self.assertEqual(len(parts), 4)
        for i, part in enumerate(parts):
            client.sendFrame(opcode=1 if i == 0 else 0, payload=part, fin=i == len(parts) - 1)
        self.flush()
        self.assertEqual(len(client.of_type("subscribed")), 1)

    async def test_empty_continuations_closed_with_1009(self) -> None:
        """A text frame without FIN followed by empty continuations is closed
        with 1009 at the fragment limit, and the partial message is freed."""
        client = await self.connect()
        (server,) = self.node.live.connections["websocket"]
        client.sendFrame(opcode=1, payload=b"{", fin=False)
        for _ in range(3):
            client.sendFrame(opcode=0, payload=b"", fin=False)
        self.flush()
        self.assertIsNone(client.close_code)
        self.assertEqual(server.message_data, [b"{", b"", b"", b""])
        for _ in range(1000):
            client.sendFrame(opcode=0, payload=b"", fin=False)
        self.flush()
        self.assertEqual(server.message_data, [])
        await self.closed_and_dropped(client, 1009)

    async def test_frame_rate_spreads_over_time(self) -> None:
        """The rate refills: a message every 0.1 s is never refused."""
        client = await self.connect()
        for _ in range(40):
            client.send_json(type="ping")
            self.flush()
            self.reactor.advance(0.1)
        self.assertEqual(len(client.of_type("pong")), 40)
        self.assertIsNone(client.close_code)


class IsolationTests(LiveProtocolTestCase):
    async def test_tenants_do_not_see_each_other(self) -> None:
        """A subscriber of tenant B's thread never receives tenant A's events,
        even for the same urlId."""
        a_reader = await self.subscribed()
        b_only = await self.connect()
        b_only.sendMessage(self.world.subscribe_msg(self.world.tenant_b))
        self.flush()
        self.world.comment(
            self.world.tenant_a,
            self.world.thread_a,
            self.world.author(self.world.tenant_a),
        )
        self.flush()
        self.assertEqual(len(a_reader.of_type("event")), 1)
        self.assertEqual(b_only.of_type("event"), [])

    async def test_thread_id_of_other_tenant(self) -> None:
        """A channel name of another tenant cannot be unsubscribed/used: the
        name only ever comes from a subscribe answer of this connection."""
        client = await self.connect()
        other = "{}/{}".format(self.world.tenant_a.id, self.world.thread_a.id)
        client.send_json(type="unsubscribe", channel=other)
        self.flush()
        self.assertEqual(client.of_type("error")[0]["code"], "not_subscribed")

    async def test_viewer_token_of_other_tenant(self) -> None:
        """A viewer token issued for tenant A is refused on tenant B."""
        token = self.world.viewer_token(self.world.tenant_a, self.world.author(self.world.tenant_a))
        client = await self.connect()
        client.sendMessage(self.world.subscribe_msg(self.world.tenant_b, viewer=token))
        self.flush()
        self.assertEqual(client.of_type("error")[0]["code"], "bad_viewer_token")


class BlockTests(LiveProtocolTestCase):
    async def test_blocked_author_not_delivered(self) -> None:
        """A viewer who blocked an author (stored block, read at subscribe)
        does not receive that author's comments; other viewers do."""
        tenant, thread = self.world.tenant_a, self.world.thread_a
        viewer = self.world.author(tenant)
        troll = self.world.author(tenant)
        friend = self.world.author(tenant)
        done(self.node.store.add_block(tenant.id, viewer, troll, created_ms=0, read_preference=PRIMARY))
        blocker = await self.subscribed(viewer=self.world.viewer_token(tenant, viewer))
        other = await self.subscribed()
        self.world.comment(tenant, thread, troll, "spam")
        self.world.comment(tenant, thread, friend, "nice")
        self.flush()
        self.assertEqual(
            [e["data"]["comment"]["authorId"] for e in blocker.of_type("event")],
            [friend],
        )
        self.assertEqual(len(other.of_type("event")), 2)


class LifecycleTests(LiveProtocolTestCase):
    live = {"max_connections": 1}

    async def test_connection_limit(self) -> None:
        """Past live.max_connections the handshake is refused (503) and the
        refusal is counted; the open connection is untouched."""
        first = await self.connect()
        d = self.agent.open("ws://localhost:8080/live", {}, protocol_class=Client)
        d.addErrback(lambda f: None)
        self.flush()
        self.assertEqual(self.node.metric("fastedge_live_closes_total", {"code": "1013"}), 1)
        self.assertEqual(self.node.metric("fastedge_live_connections", {"transport": "websocket"}), 1)
        first.send_json(type="ping")
        self.flush()
        self.assertEqual(len(first.of_type("pong")), 1)

    async def test_keepalive_drops_silent_client(self) -> None:
        """A client that does not answer a keep-alive ping by the next sweep
        is closed with 4408; one that answers stays."""
        client = await self.connect()
        self.node.live.keepalive()
        self.flush()  # the client's pong comes back
        self.node.live.keepalive()
        self.assertIsNone(client.close_code)
        self.node.live.keepalive()  # no flush: no pong this time
        self.flush()
        await client.closed
        self.assertEqual(client.close_code, 4408)

    async def test_shutdown_closes_with_going_away(self) -> None:
        """Stopping the live service closes connections with 1001 and its
        Deferred fires once they are gone."""
        client = await self.subscribed()
        self.node.service.startService()
        d = self.node.service.stopService()
        self.flush()
        await client.closed
        self.assertEqual(client.close_code, 1001)
        self.flush()
        await d
        self.assertEqual(self.node.metric("fastedge_live_connections", {"transport": "websocket"}), 0)

    async def test_drain_moves_then_closes(self) -> None:
        """A drain tells each client where to go next: a ``move`` naming
        another live node of the deployment (docs/live-protocol.md), then
        the close with 1001; counted per transport."""
        client = await self.subscribed()
        self.node.live.shutdown(messages.move("edge-2", ["192.0.2.2", "2001:db8::2"]))
        self.flush()
        await client.closed
        self.assertEqual(
            client.of_type("move"),
            [{"type": "move", "node": "edge-2", "addresses": ["192.0.2.2", "2001:db8::2"], "reason": "drain"}],
        )
        self.assertEqual(client.messages[-1]["type"], "move")
        self.assertEqual(client.close_code, 1001)
        self.assertEqual(self.node.metric("fastedge_live_moves_total", {"transport": "websocket"}), 1)


class ClosingHandshakeTimerTests(LiveProtocolTestCase):
    """autobahn arms a timer when the node starts a closing handshake and
    does not cancel it when the connection is lost first; the node cancels
    it, so a client that vanishes mid-close frees its connection at once
    instead of after live.close_timeout_seconds."""

    live = {"close_timeout_seconds": 5.0}

    async def test_connection_lost_during_close_cancels_the_timer(self) -> None:
        """The node closes (1001), the client drops the TCP connection
        without answering: no closing-handshake timer is left on the clock."""
        client = await self.connect()
        server = self.server()
        server.shutdown()
        timer = server.closeHandshakeTimeoutCall
        self.assertIsNotNone(timer)
        self.assertIn(timer, self.reactor.getDelayedCalls())
        client.transport.abortConnection()
        self.flush()
        self.assertNotIn(timer, self.reactor.getDelayedCalls())
        self.assertIsNone(server.closeHandshakeTimeoutCall)
        self.assertEqual(self.node.metric("fastedge_live_connections", {"transport": "websocket"}), 0)


class AutobahnEventsTests(LiveProtocolTestCase):
    """What autobahn's ``WebSocketProtocol.__init__`` made per connection is
    made on first use (``LiveServerProtocol``'s class defaults); autobahn's
    own handshake path still fires them."""

    async def test_is_open_fired_by_autobahns_handshake(self) -> None:
        """A handshake autobahn parses itself (not handed over by
        twisted.web) fires ``is_open``, asked for after the open."""
        await self.connect()
        self.assertIsNone(self.successResultOf(self.server().is_open))

    async def test_message_listeners_still_hear(self) -> None:
        """A listener registered with autobahn's ``on("message", ...)`` gets
        each message (the node itself registers none, and then no event is
        fired per message)."""
        client = await self.connect()
        heard: list[bytes] = []
        self.server().on("message", lambda payload, is_binary: heard.append(payload))
        client.sendMessage(b'{"type":"ping"}')
        self.flush()
        self.assertEqual(heard, [b'{"type":"ping"}'])
