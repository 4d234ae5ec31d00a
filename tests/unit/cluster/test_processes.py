"""Detached processes: known by pid and marker, never a recycled pid, and
not taken for dead while they are still inside ``execve``."""

from __future__ import annotations

import signal
import sys

from twisted.trial.unittest import SynchronousTestCase

from fastedge.cluster import processes
from fastedge.cluster.processes import Detached, start_detached


class DetachedTests(SynchronousTestCase):
    def seen(self, *answers):
        """Make ``/proc`` show these (cmdline, state) answers in turn."""
        answers = list(answers)
        self.patch(processes, "_proc_status", lambda pid: answers.pop(0) if len(answers) > 1 else answers[0])

    def test_mid_exec_is_alive(self):
        """Popen returns before the new program's arguments are in place:
        an empty command line is a process starting, not one that has
        exited (the chaos test's restart was reported "exited at start")."""
        self.seen((b"", b"R"))
        self.assertTrue(Detached(1234, "/c/node.toml").alive())

    def test_other_command_zombie_or_gone_is_not(self):
        for answer in [(b"sleep\x00100\x00", b"S"), (b"twistd\x00--config\x00/c/node.toml\x00", b"Z"), None]:
            self.seen(answer)
            self.assertFalse(Detached(1234, "/c/node.toml").alive(), answer)

    def test_signal_waits_for_the_command_line(self):
        """A signal is sent only once the command line names the marker."""
        sent = []
        self.patch(processes.os, "kill", lambda pid, sig: sent.append((pid, sig)))
        self.seen((b"", b"R"), (b"", b"R"), (b"python\x00twistd\x00--config\x00/c/node.toml\x00", b"S"))
        self.assertTrue(Detached(1234, "/c/node.toml").signal(signal.SIGTERM))
        self.assertEqual(sent, [(1234, signal.SIGTERM)])
        self.seen((b"python\x00other\x00", b"S"))
        self.assertFalse(Detached(1234, "/c/node.toml").signal(signal.SIGTERM))
        self.assertEqual(len(sent), 1)

    def test_real_process(self):
        """Start, see alive, stop, see gone and how it ended."""
        log = self.mktemp()
        marker = "fastedge-test-marker-" + log.replace("/", "-")
        process = start_detached(
            [sys.executable, "-c", "import signal; signal.pause()", marker], log_path=log, marker=marker
        )
        self.assertTrue(process.alive())
        process.stop(timeout=10)
        self.assertFalse(process.alive())
        self.assertEqual(process.exit_status(), "killed by signal {}".format(signal.SIGTERM))
        with open(log) as f:
            self.assertIn("starting:", f.readline())
