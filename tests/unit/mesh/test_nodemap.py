"""The live node map."""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from fastedge.mesh.interfaces import INodeMap
from fastedge.mesh.nodemap import NodeInfo, NodeMap, NodeMapChange, NodeState


def info(node_id: str = "a", deployment: str = "global", incarnation: int = 1, **kw: object) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        deployment=deployment,
        region="r",
        latitude=0.0,
        longitude=0.0,
        addresses=("127.0.0.1",),
        version="1",
        incarnation=incarnation,
        **kw,  # type: ignore[arg-type]
    )


class NodeMapTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.map = NodeMap()
        self.changes: list[NodeMapChange] = []
        self.map.subscribe(self.changes.append)

    def test_interface(self) -> None:
        """NodeMap provides INodeMap."""
        verifyObject(INodeMap, self.map)

    def test_observers_told_of_every_change(self) -> None:
        """New nodes and state changes reach observers at once, in order, each
        with a growing version."""
        self.map.upsert(info("a"))
        self.map.set_state("a", NodeState.SUSPECT)
        self.assertEqual(
            [(c.version, c.before is None, c.after.state) for c in self.changes],
            [(1, True, NodeState.ALIVE), (2, False, NodeState.SUSPECT)],
        )

    def test_live_by_deployment(self) -> None:
        """live() lists only ALIVE nodes of the deployment asked for."""
        self.map.upsert(info("b"))
        self.map.upsert(info("a"))
        self.map.upsert(info("e", deployment="eu"))
        self.map.upsert(info("c"))
        self.map.set_state("c", NodeState.DEAD)
        self.assertEqual([n.node_id for n in self.map.live("global")], ["a", "b"])
        self.assertEqual([n.node_id for n in self.map.live("eu")], ["e"])

    def test_incarnations(self) -> None:
        """A restarted node (higher incarnation) supersedes its old self; stale
        announcements and verdicts about an old incarnation change nothing."""
        self.map.upsert(info("a", incarnation=2))
        self.assertFalse(self.map.upsert(info("a", incarnation=1)))
        self.assertFalse(self.map.set_state("a", NodeState.DEAD, incarnation=1))
        self.assertTrue(self.map.set_state("a", NodeState.DEAD, incarnation=2))
        self.assertTrue(self.map.upsert(info("a", incarnation=3)))
        self.assertEqual(self.map.nodes()["a"].state, NodeState.ALIVE)

    def test_no_change_no_event(self) -> None:
        """Repeating what is known changes nothing and tells no one."""
        self.map.upsert(info("a"))
        self.assertFalse(self.map.upsert(info("a")))
        self.assertFalse(self.map.set_state("a", NodeState.ALIVE))
        self.assertEqual(len(self.changes), 1)

    def test_failing_observer(self) -> None:
        """An observer that raises is logged; the others still hear."""

        def bad(change: NodeMapChange) -> None:
            raise RuntimeError("observer bug")

        self.map.subscribe(bad)
        later: list[NodeMapChange] = []
        self.map.subscribe(later.append)
        self.map.upsert(info("a"))
        self.assertEqual(len(later), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unsubscribe(self) -> None:
        """An unsubscribed observer hears nothing more."""
        unsubscribe = self.map.subscribe(lambda c: self.fail("should not be called"))
        unsubscribe()
        self.map.upsert(replace(info("a"), load=3))
