"""A coordinated drain on the in-memory mesh (one Clock): the draining node
announces LEAVING (the others, and so DNS, withdraw it at once), tells its
live clients to move to another live node of the deployment, and those
clients recover there with ``since`` and miss nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from fastedge.mesh.nodemap import NodeMap, NodeState
from fastedge.mesh.successor import successor_of
from fastedge.testing.dns import PLACES
from fastedge.testing.mesh import node_info

from .common import LiveWorld, metric


class DrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = LiveWorld(self, "abc")
        self.mesh = self.world.mesh

    def drain(self, node_id: str) -> Any:
        """What the node's stop does first: announce, then the live goodbye
        (the HTTP child calls it once its listeners stopped accepting)."""
        d = self.mesh.nodes[node_id].announce_leaving()
        self.mesh.network.flush()
        self.successResultOf(d)
        self.mesh.live[node_id].service.going_away()
        self.mesh.network.flush()

    def last_position(self, subscriber: Any) -> tuple[str, int]:
        answer = subscriber.conn.of_type("subscribed")[0]
        seqs = [m["seq"] for m in subscriber.conn.messages if m["type"] == "event"]
        return answer["epoch"], max(seqs, default=answer["seq"])

    def test_clients_move_and_miss_nothing(self) -> None:
        """A client of the drained node gets a ``move`` naming a live node of
        its deployment, then the close (1001). It resubscribes there with
        ``since``: the events it missed meanwhile (posted through another
        node, and the one its own node was still finishing) are replayed in
        order, with no gap, no duplicate and no reload."""
        w = self.world
        thread, url = w.thread_owned_by("b")
        client = w.subscribe("a", url)
        w.post("c", thread, "one")
        w.post("c", thread, "two")
        self.assertEqual([s for _, s in w.seqs(client)], [1, 2])

        self.drain("a")
        move, close = client.conn.messages[-2:]
        self.assertEqual(move["type"], "move")
        self.assertIn(move["node"], ("b", "c"))
        self.assertEqual(move["addresses"], [self.mesh.host(move["node"])])
        self.assertEqual(close, {"type": "close", "code": 1001, "reason": "server shutting down"})
        self.assertEqual(self.mesh.live["a"].metric("fastedge_live_moves_total", {"transport": "websocket"}), 1.0)
        # The others withdrew the drained node at once: DNS answers only
        # live nodes.
        for other in "bc":
            self.assertEqual(self.mesh.states(other)["a"], "leaving")
            self.assertEqual([n.node_id for n in self.mesh.nodes[other].node_map.live("global")], ["b", "c"])

        # While the client reconnects: a comment through another node, and
        # one the drained node was still finishing (an in-flight request).
        w.post("c", thread, "three")
        w.post("a", thread, "four")
        self.mesh.advance(0.1)
        epoch, since = self.last_position(client)
        again = w.subscribe(move["node"], url, since=since, epoch=epoch)
        answer = again.conn.of_type("subscribed")[0]
        self.assertFalse(answer["reload"])
        self.assertEqual(answer["epoch"], epoch)
        texts = [m["data"]["comment"]["html"] for m in again.events()]
        self.assertEqual(texts, ["<p>three</p>", "<p>four</p>"])
        self.assertEqual([m["seq"] for m in again.events()], [3, 4])

    def test_channel_sequenced_by_the_drained_node(self) -> None:
        """A channel the drained node sequenced moves to another owner in a
        new epoch: its clients, resubscribing with ``since``, are told to
        reload (read the thread again), never given a silent gap."""
        w = self.world
        thread, url = w.thread_owned_by("a")
        client = w.subscribe("a", url)
        w.post("a", thread, "one")
        self.drain("a")
        move = client.conn.of_type("move")[0]
        self.mesh.advance(0.1)
        w.post("c", thread, "two")
        epoch, since = self.last_position(client)
        again = w.subscribe(move["node"], url, since=since, epoch=epoch)
        answer = again.conn.of_type("subscribed")[0]
        self.assertTrue(answer["reload"])
        self.assertNotEqual(answer["epoch"], epoch)

    def test_announce_is_idempotent(self) -> None:
        """Announcing twice (a drain while a drain runs) says goodbye once:
        the second call waits for the same answers."""
        first = self.mesh.nodes["a"].announce_leaving()
        second = self.mesh.nodes["a"].announce_leaving()
        self.mesh.network.flush()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(metric(self.mesh, "b", "fastedge_mesh_calls_received_total", method="leave"), 1.0)
        self.assertEqual(self.mesh.states("b")["a"], "leaving")

    def test_no_other_live_node(self) -> None:
        """With no other live node of the deployment there is nowhere to move
        to: clients are only closed with 1001."""
        world = LiveWorld(self, "z")
        thread, url = world.thread_owned_by("z", observer="z")
        client = world.subscribe("z", url)
        world.mesh.nodes["z"].announce_leaving()
        world.mesh.live["z"].service.going_away()
        self.assertEqual(client.conn.of_type("move"), [])
        self.assertEqual(client.conn.messages[-1]["code"], 1001)


class SuccessorTests(SynchronousTestCase):
    def test_nearest_live_node_of_the_deployment(self) -> None:
        """Clients move to the nearest other live node of the same deployment;
        never to another deployment's node, a node that is not alive, or the
        draining node itself."""
        nodes = NodeMap()
        lat, lon = PLACES["london"][:2]
        choose = successor_of(nodes, "me", "eu", lat, lon)
        self.assertIsNone(choose())
        nodes.upsert(node_info("me", "london", deployment="eu"))
        nodes.upsert(node_info("us", "new-york", deployment="global"))
        self.assertIsNone(choose())
        tokyo = node_info("jp", "tokyo", deployment="eu")
        nodes.upsert(tokyo)
        nodes.upsert(dataclasses.replace(node_info("de", "frankfurt", deployment="eu"), state=NodeState.DEAD))
        self.assertEqual(choose(), ("jp", tokyo.addresses))
        nodes.set_state("de", NodeState.ALIVE)
        self.assertEqual(choose()[0], "de")
