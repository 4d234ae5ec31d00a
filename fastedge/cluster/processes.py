# -*- test-case-name: tests.unit.cluster.test_plan -*-
"""Detached processes of a local cluster, and the sockets they need.

A process started here runs in a session of its own (it outlives the
command that started it and ignores the terminal's signals), writes its
output to a log file, and is known by its pid *and* a marker (a path on
its command line): a pid is only signalled while ``/proc/PID/cmdline``
still holds the marker, so a recycled pid is never hit.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Detached", "ListenCheck", "first_taken", "start_detached"]


@dataclass(frozen=True)
class Detached:
    """A process started by :func:`start_detached`."""

    pid: int
    marker: str

    def alive(self) -> bool:
        """Whether the process still runs (and is still ours).

        A process that has just been started may still be inside
        ``execve``: ``subprocess.Popen`` returns once the kernel has closed
        the child's close-on-exec descriptors, before the new program's
        arguments are in place, so ``/proc/PID/cmdline`` can read empty for
        a moment. That counts as ours and alive (it was ``Z``-free and the
        pid is the one we started); a cmdline naming something else does not.
        """
        seen = _proc_status(self.pid)
        if seen is None:
            return False
        cmdline, state = seen
        # A zombie (state Z) has exited; its parent has not reaped it yet.
        return state != b"Z" and (cmdline == b"" or self.marker.encode() in cmdline)

    def exit_status(self) -> str:
        """How the process ended, when this process is its parent and it has
        (``"exit status 1"``, ``"killed by signal 9"``); else ``"gone"``. It
        reaps the process, so ask once, after :meth:`alive` said False."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return "gone"
        if pid == 0:
            return "still running"
        if os.WIFSIGNALED(status):
            return "killed by signal {}".format(os.WTERMSIG(status))
        return "exit status {}".format(os.waitstatus_to_exitcode(status))

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if the process is still ours; whether it was sent.
        Only a command line that names the marker is ours for a signal: one
        still empty (the process is inside ``execve``) is waited for, up to
        a second."""
        deadline = time.monotonic() + 1.0
        while True:
            seen = _proc_status(self.pid)
            if seen is None or seen[1] == b"Z":
                return False
            if seen[0] != b"" or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        if self.marker.encode() not in seen[0]:
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; returns once it is gone."""
        if not self.signal(signal.SIGTERM):
            return
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.signal(signal.SIGKILL):
            deadline = time.monotonic() + 10
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)


def _proc_status(pid: int) -> tuple[bytes, bytes] | None:
    """``(command line, state letter)`` of ``pid`` from ``/proc``, or
    ``None`` when there is no such process."""
    try:
        with open("/proc/{}/cmdline".format(pid), "rb") as f:
            cmdline = f.read()
        with open("/proc/{}/stat".format(pid), "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return cmdline, state


def start_detached(argv: Sequence[str], *, log_path: str, marker: str, cwd: str | None = None) -> Detached:
    """Start ``argv`` in a new session, output appended to ``log_path``.

    :param marker: a string on ``argv`` that names this process (a config
        or data path), checked before every signal.
    """
    if not any(marker in a for a in argv):
        raise ValueError("the marker {!r} is not on the command line".format(marker))
    with open(log_path, "ab") as log:
        # A line of our own first: a log appended across restarts says
        # where each run begins (a run that dies before writing is visible).
        log.write("--- {} starting: {}\n".format(time.strftime("%Y-%m-%dT%H:%M:%S%z"), " ".join(argv)).encode())
        log.flush()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    return Detached(process.pid, marker)


@dataclass(frozen=True)
class ListenCheck:
    """One socket a cluster will listen on."""

    address: str
    port: int
    what: str
    udp: bool = False


def first_taken(checks: Iterable[ListenCheck]) -> tuple[ListenCheck, str] | None:
    """The first socket that cannot be bound now, with the reason (``None``
    when all can). Binding is the only honest test: it sees every other
    user of the address, ours or not."""
    for check in checks:
        kind = socket.SOCK_DGRAM if check.udp else socket.SOCK_STREAM
        s = socket.socket(socket.AF_INET, kind)
        try:
            if not check.udp:
                # As the servers do: a port in TIME_WAIT is not taken.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((check.address, check.port))
        except OSError as e:
            reason = "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            return check, reason
        finally:
            s.close()
    return None
