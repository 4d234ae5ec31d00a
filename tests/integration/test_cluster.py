"""``fastedge-admin cluster up|status|down`` on the command line: the
refusals that start nothing (``tests.integration.test_chaos`` runs a whole
cluster)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase


def _admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastedge.admin", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


class ClusterCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.prefix = "127.{}.{}".format(random.randint(100, 250), random.randint(0, 255))
        self.directory = os.path.abspath(self.mktemp())

    def test_address_taken(self) -> None:
        """When a port a node needs is taken, ``up`` says so in one line
        naming the address, port and what it was for, exits 1, and creates
        nothing (no directory, no process)."""
        s = socket.socket()
        s.bind((self.prefix + ".12", 8080))
        s.listen(1)
        self.addCleanup(s.close)
        done = _admin("up", "--dir", self.directory, "--prefix", self.prefix, "--no-origin")
        self.assertEqual(done.returncode, 1, done.stderr)
        lines = done.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, done.stderr)
        self.assertIn("cannot listen on {}.12:8080 (HTTP of global-singapore, in use)".format(self.prefix), lines[0])
        self.assertEqual(done.stdout, "")
        self.assertFalse(os.path.exists(self.directory))

    def test_no_cluster(self) -> None:
        """``status`` and ``down`` of a directory without a cluster refuse in
        one line."""
        for action in ("status", "down"):
            done = _admin(action, "--dir", self.directory)
            self.assertEqual(done.returncode, 1, done.stderr)
            self.assertEqual(
                done.stderr.strip(), "fastedge-admin cluster: no cluster in {} (no cluster.json)".format(self.directory)
            )

    def test_bad_layout(self) -> None:
        """A bad ``--deployment`` or ``--prefix`` is one line, exit 1."""
        for args, text in (
            (["--deployment", "eu"], "--deployment wants NAME=CITY"),
            (["--deployment", "eu=atlantis"], "unknown city 'atlantis'"),
            (["--prefix", "10.0.0"], "--prefix must be"),
        ):
            done = _admin("up", "--dir", self.directory, *args)
            self.assertEqual(done.returncode, 1, done.stderr)
            self.assertIn(text, done.stderr)
            self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
            self.assertFalse(os.path.exists(self.directory))
