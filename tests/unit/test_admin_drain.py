"""``fastedge-admin node drain``: the request the node's ``drain`` child
takes, and a drain while a drain is running."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.admin import main
from fastedge.lifecycle import DRAIN_REQUEST, DRAIN_STATE, DrainRequests


class NodeDrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)

    def drain(self) -> str:
        out = io.StringIO()
        with redirect_stdout(out):
            main(["--data-dir", self.data_dir, "node", "drain"])
        return out.getvalue()

    def test_request_reaches_the_node(self) -> None:
        """The command leaves the request; the running node's ``drain`` child
        takes it within a second and stops the node."""
        printed = self.drain()
        self.assertIn("drain requested", printed)
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, DRAIN_REQUEST)))
        stops: list[int] = []
        clock = Clock()
        watcher = DrainRequests(self.data_dir, stop=lambda: stops.append(1), clock=clock)
        # One look of a node that was running before the request was left.
        watcher._check()
        self.assertEqual(stops, [1])

    def test_drain_while_draining(self) -> None:
        """A drain while a drain runs is idempotent: the command says so, exit
        status 0, and leaves no second request."""
        with open(os.path.join(self.data_dir, DRAIN_STATE), "w") as f:
            json.dump({"since": 0, "pid": os.getpid(), "trigger": "admin"}, f)
        printed = self.drain()
        self.assertIn("already draining (pid {})".format(os.getpid()), printed)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, DRAIN_REQUEST)))

    def test_request_not_taken_yet(self) -> None:
        """Asking twice before the node took the first request: said, once."""
        self.drain()
        self.assertIn("already requested", self.drain())

    def test_stale_state(self) -> None:
        """The state of a drained node that has exited (its pid is gone) does
        not stop a new drain."""
        with open(os.path.join(self.data_dir, DRAIN_STATE), "w") as f:
            json.dump({"since": 0, "pid": 2**22 + 12345, "trigger": "admin"}, f)
        self.assertIn("drain requested", self.drain())

    def test_no_data_directory(self) -> None:
        """A data directory that does not exist is no node's: exit status 1."""
        with self.assertRaises(SystemExit) as cm:
            main(["--data-dir", os.path.join(self.data_dir, "nope"), "node", "drain"])
        self.assertEqual(cm.exception.code, 1)
