"""Tests for the ``live`` child service and its place in the node."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import ConfigError, LiveConfig, load_config, parse_config
from fastedge.tap import Options, makeService

from .common import World


class ServiceTests(SynchronousTestCase):
    def test_in_the_node(self) -> None:
        """makeService puts a 'live' child between the store and the
        transport (so it stops after the listener, before the store; the
        mesh, which relays its events, sits between it and the transport),
        and the Site serves /live."""
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp()])
        top = makeService(options, reactor=MemoryReactorClock())
        self.assertEqual(
            [c.name for c in top], ["drain", "store", "geo", "mesh", "dns", "live", "cdn", "webhooks", "http"]
        )

    def test_timers(self) -> None:
        """Starting runs history expiry and keep-alive on the clock; the
        keep-alive loop goes on after an error; stopping cancels both."""
        from fastedge.live.hub import Event

        clock = MemoryReactorClock()
        world = World(clock, ping_seconds=30.0, history_seconds=60.0)
        service = world.node.service
        world.node.hub.publish(Event((world.tenant_a.id, world.thread_a.id), "comment.created", {}))
        calls: list[int] = []

        class Grumpy:
            transport_name = "websocket"

            def keepalive(self) -> None:
                calls.append(1)
                raise RuntimeError("boom")

            def shutdown(self) -> None:
                world.node.live.closed(self)  # type: ignore[arg-type]

        world.node.live.connections["websocket"].add(Grumpy())  # type: ignore[arg-type]
        service.startService()
        self.assertEqual(world.node.hub.channel_count(), 1)
        for step in (30, 30, 30, 31):
            clock.advance(step)
        self.assertEqual(world.node.hub.channel_count(), 0)
        self.assertEqual(len(calls), 5)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 5)
        self.successResultOf(service.stopService())
        self.successResultOf(world.node.api.service.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_going_away_names_the_successor(self) -> None:
        """The node's goodbye (called by the HTTP child once its listeners
        stopped): every live client gets a ``move`` naming the node the
        successor function picks, then the close; without a successor (none
        live, or the function failed: logged) only the close."""
        from fastedge.live.service import make_service
        from fastedge.metrics.registry import new_registry
        from fastedge.testing.fakes import RecordingConnection

        def service(successor):  # type: ignore[no-untyped-def]
            world = World(MemoryReactorClock())
            return make_service(
                world.node.cfg.live,
                reactor=MemoryReactorClock(),
                registry=new_registry(),
                store=world.node.store,
                node_id="edge-1",
                successor=successor,
            )

        def broken() -> None:
            raise RuntimeError("no map")

        for successor, expected in (
            (lambda: ("edge-2", ("192.0.2.2",)), ["move", "close"]),
            (lambda: None, ["close"]),
            (broken, ["close"]),
        ):
            live = service(successor)
            conn = RecordingConnection()
            live.live.opened(conn)  # type: ignore[arg-type]
            live.going_away()
            self.assertEqual([m["type"] for m in conn.messages], expected)
            if expected[0] == "move":
                self.assertEqual((conn.messages[0]["node"], conn.messages[0]["addresses"]), ("edge-2", ["192.0.2.2"]))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_no_keepalive_when_off(self) -> None:
        """ping_seconds = 0 turns keep-alive off."""
        world = World(MemoryReactorClock(), ping_seconds=0.0)
        # History expiry and the access re-check (docs/live-protocol.md).
        self.assertEqual(len(list(world.node.service)), 2)


class ConfigTests(SynchronousTestCase):
    def test_documented_defaults(self) -> None:
        """etc/fastedge.toml's [live] section is exactly the defaults."""
        import os

        import fastedge

        path = os.path.join(os.path.dirname(fastedge.__file__), os.pardir, "etc", "fastedge.toml")
        self.assertEqual(load_config(path).live, LiveConfig())

    def test_bad_values_name_the_key(self) -> None:
        """A bad [live] value stops the node with the key named."""
        for text, key in (
            ("[live]\nhistory_events = 0", "live.history_events"),
            ("[live]\nmax_buffered_bytes = 'lots'", "live.max_buffered_bytes"),
            ("[live]\nping_seconds = -1", "live.ping_seconds"),
            ("[live]\nfanout = 1", "live.fanout"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse_config(text)
            self.assertTrue(str(caught.exception).startswith(key + ":"), str(caught.exception))
