"""Answer policies: nearest-live, distances, and a policy from a plugin."""

from __future__ import annotations

import dataclasses
import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import tests.plugins
from fastedge.dns.interfaces import IAnswerPolicy
from fastedge.dns.policy import NearestLive, UnknownPolicy, load_policy
from fastedge.geo.lookup import Location
from fastedge.mesh.nodemap import NodeState
from fastedge.testing.dns import PLACES, DnsHarness, write_geo_db
from fastedge.testing.mesh import node_info


class NearestLiveTests(SynchronousTestCase):
    def test_provides_the_interface(self) -> None:
        """The built-in policy provides IAnswerPolicy."""
        verifyObject(IAnswerPolicy, NearestLive())

    def test_unknown_client(self) -> None:
        """An unknown client gets the default region's nodes, else all, in
        node-id order."""
        nodes = [
            node_info("b", "tokyo"),
            node_info("a", "london"),
            node_info("c", "tokyo"),
        ]
        policy = NearestLive()
        self.assertEqual([n.node_id for n in policy.choose(nodes, None, 2, "tokyo")], ["b", "c"])
        self.assertEqual([n.node_id for n in policy.choose(nodes, None, 2, "")], ["b", "a", "c"])
        here = Location(*PLACES["london"][:2])
        self.assertEqual([n.node_id for n in policy.choose(nodes, here, 2, "")][0], "a")


class PluginTests(SynchronousTestCase):
    def test_loads_plugin_by_name(self) -> None:
        """dns.policy names a plugin found with twisted.plugin.getPlugins."""
        policy = load_policy("least-loaded", tests.plugins)
        verifyObject(IAnswerPolicy, policy)
        self.assertEqual(policy.name, "least-loaded")

    def test_unknown_policy(self) -> None:
        """An unknown name is an error listing the policies that exist."""
        with self.assertRaises(UnknownPolicy) as cm:
            load_policy("fastest", tests.plugins)
        self.assertIn("dns.policy: no answer policy 'fastest'", str(cm.exception))
        self.assertIn("least-loaded", str(cm.exception))
        self.assertIn("nearest-live", str(cm.exception))

    def test_plugin_decides_answers(self) -> None:
        """With the plugin, answers follow load, not distance, and still
        only ever name live nodes; a change of load changes the answer."""
        db = write_geo_db(os.path.abspath(self.mktemp()), {"81.2.69.0/24": PLACES["london"]})
        nodes = [
            node_info("lon", "london", addresses=("192.0.2.1",), load=90),
            node_info("tyo", "tokyo", addresses=("192.0.2.2",), load=10),
            node_info("nyc", "new-york", addresses=("192.0.2.3",), load=50),
        ]
        h = DnsHarness(
            self,
            nodes=nodes,
            geo_db=db,
            policy=load_policy("least-loaded", tests.plugins),
        )
        self.assertEqual(
            h.addresses("edge.fastedge.test", ecs="81.2.69.0/24"),
            ["192.0.2.2", "192.0.2.3"],
        )
        h.node_map.set_state("tyo", NodeState.DEAD)
        self.assertEqual(
            h.addresses("edge.fastedge.test", ecs="81.2.69.0/24"),
            ["192.0.2.3", "192.0.2.1"],
        )
        h.node_map.upsert(dataclasses.replace(nodes[0], load=1, incarnation=2))
        self.assertEqual(
            h.addresses("edge.fastedge.test", ecs="81.2.69.0/24"),
            ["192.0.2.1", "192.0.2.3"],
        )
