"""Stopping in order and being asked to stop (fastedge.lifecycle), on a Clock."""

from __future__ import annotations

import json
import os

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.lifecycle import DRAIN_REQUEST, DRAIN_STATE, DrainRequests, OrderedMultiService, stop_in_order
from fastedge.tap import Node


class _Child(Service):
    """Records its stop; its stop fires when the test says."""

    def __init__(self, name: str, log: list[str], *, announce: bool = False, broken: bool = False) -> None:
        self.setName(name)
        self.log = log
        self.stopping: Deferred[None] | None = None
        self.broken = broken
        if announce:
            self.announced: Deferred[None] = Deferred()
            self.announce_leaving = self._announce  # type: ignore[method-assign]

    def _announce(self) -> Deferred[None]:
        self.log.append("announce " + self.name)
        return self.announced

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.log.append("stop " + self.name)
        if self.broken:
            return fail(RuntimeError("broken"))
        self.stopping = Deferred()
        return self.stopping


class StopInOrderTests(SynchronousTestCase):
    def test_waits_for_each(self) -> None:
        """Each service starts stopping only once the previous one stopped;
        a failed stop is logged and the next one still stops."""
        log: list[str] = []
        a, b, c = _Child("a", log), _Child("b", log, broken=True), _Child("c", log)
        for s in (a, b, c):
            s.startService()
        d = stop_in_order([a, b, c])
        self.assertEqual(log, ["stop a"])
        assert a.stopping is not None
        a.stopping.callback(None)
        self.assertEqual(log, ["stop a", "stop b", "stop c"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNoResult(d)
        assert c.stopping is not None
        c.stopping.callback(None)
        self.assertIsNone(self.successResultOf(d))


class OrderedMultiServiceTests(SynchronousTestCase):
    def test_announce_then_reverse_order(self) -> None:
        """The node's stop: the child that can announce the departure (the
        mesh) does so first and is waited for; then the children stop in
        reverse order, each waited for, so the store (first child) closes
        only after the HTTP child (last) drained. A second stop while the
        first runs is the same stop."""
        log: list[str] = []
        top = Node()
        self.assertIsInstance(top, OrderedMultiService)
        store, mesh, http = _Child("store", log), _Child("mesh", log, announce=True), _Child("http", log)
        for child in (store, mesh, http):
            child.setServiceParent(top)
        top.startService()
        d = top.stopService()
        again = top.stopService()
        self.assertEqual(log, ["announce mesh"])
        mesh.announced.callback(None)
        self.assertEqual(log, ["announce mesh", "stop http"])
        assert http.stopping is not None
        http.stopping.callback(None)
        self.assertEqual(log, ["announce mesh", "stop http", "stop mesh"])
        assert mesh.stopping is not None
        mesh.stopping.callback(None)
        self.assertEqual(log, ["announce mesh", "stop http", "stop mesh", "stop store"])
        self.assertNoResult(d)
        assert store.stopping is not None
        store.stopping.callback(None)
        self.successResultOf(d)
        self.successResultOf(again)
        self.assertFalse(top.running)


class DrainRequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.clock = Clock()
        self.stops: list[int] = []
        self.watcher = DrainRequests(self.data_dir, stop=lambda: self.stops.append(1), clock=self.clock)

    def request(self) -> None:
        with open(os.path.join(self.data_dir, DRAIN_REQUEST), "w") as f:
            f.write("drain\n")

    def test_request_stops_the_node_once(self) -> None:
        """A request file is taken (removed) within a second, the drain
        state is written, and the node is stopped; a second request while
        that drain runs is taken and changes nothing (idempotent)."""
        self.watcher.startService()
        self.clock.advance(1.0)
        self.assertEqual(self.stops, [])
        self.request()
        self.clock.advance(1.0)
        self.assertEqual(self.stops, [1])
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, DRAIN_REQUEST)))
        with open(os.path.join(self.data_dir, DRAIN_STATE)) as f:
            state = json.load(f)
        self.assertEqual(state["trigger"], "admin")
        self.assertEqual(state["pid"], os.getpid())
        self.request()
        self.clock.advance(1.0)
        self.assertEqual(self.stops, [1])
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, DRAIN_REQUEST)))
        self.successResultOf(self.watcher.stopService())
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, DRAIN_STATE)))

    def test_old_request_is_not_obeyed(self) -> None:
        """A request (or drain state) left from before this start -- the node
        was not running to take it -- is removed at start, never obeyed."""
        self.request()
        with open(os.path.join(self.data_dir, DRAIN_STATE), "w") as f:
            f.write("{}")
        self.watcher.startService()
        self.clock.advance(5.0)
        self.assertEqual(self.stops, [])
        self.assertEqual(os.listdir(self.data_dir), [])
        self.successResultOf(self.watcher.stopService())
