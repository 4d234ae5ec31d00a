# -*- test-case-name: tests.integration.test_cluster,tests.integration.test_chaos -*-
"""PostgreSQL servers of a local cluster, run with Debian's ``pg_ctl``.

The test harness keeps its servers as children of the test process (they
die with it); a cluster's servers must outlive ``fastedge-admin cluster
up``, so here ``pg_ctl`` starts each one detached, in a session of its own,
and ``pg_ctl stop`` (or the pid in ``postmaster.pid``) ends it.

Each server's data directory holds ``fastedge-server.conf``, included from
``postgresql.conf`` and written by us: its address and port, and on a
primary the synchronous standbys. A standby cloned with ``pg_basebackup``
gets its own file written over the copied one, so nothing of the primary's
identity leaks into it. PostgreSQL refuses to run as root: as root, every
command runs as Debian's ``postgres`` user (``setpriv``), which then owns
the ``postgres`` directory of the cluster.

Settings are a local demonstration's (``fsync = off``, trust
authentication on loopback): a real deployment runs its own replicated
PostgreSQL with passwords or certificates (README, "A cluster").
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Sequence

__all__ = ["PostgresError", "PostgresServers", "postgres_bindir"]

#: ``postgresql.conf`` settings of every server of the cluster.
COMMON_SETTINGS: dict[str, str] = {
    "unix_socket_directories": "''",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "100",
    "wal_level": "replica",
    "max_wal_senders": "12",
    "wal_keep_size": "128MB",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "lc_messages": "'C'",
    "log_line_prefix": "'%m [%p] '",
}


class PostgresError(RuntimeError):
    """A PostgreSQL command failed; the message ends with its output."""


#: ``initdb`` for a throwaway cluster: the ``postgres`` superuser trusted,
#: no fsync, UTF-8 with the C locale (the harness's servers too).
INITDB_OPTIONS = ("-U", "postgres", "--auth=trust", "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C")


def postgres_bindir() -> str:
    """The directory of ``initdb``/``pg_ctl``: ``$FASTEDGE_PG_BINDIR``, else
    the newest ``/usr/lib/postgresql/N/bin`` (Debian's layout), else ``$PATH``.

    :raises PostgresError: when there is none.
    """
    explicit = os.environ.get("FASTEDGE_PG_BINDIR")
    if explicit:
        return explicit
    found = []
    for path in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        version = os.path.basename(os.path.dirname(os.path.dirname(path)))
        if version.isdigit():
            found.append((int(version), os.path.dirname(path)))
    if found:
        return max(found)[1]
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise PostgresError("PostgreSQL's server programs are not installed (Debian: apt-get install postgresql)")
    return os.path.dirname(pg_ctl)


def server_user() -> pwd.struct_passwd | None:
    """Who runs the servers: ``None`` (ourselves) unless we are root; as
    root, Debian's ``postgres`` system user.

    :raises PostgresError: as root with no ``postgres`` user.
    """
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError("running as root needs the 'postgres' system user (Debian's postgresql package)") from None


class PostgresServers:
    """The PostgreSQL servers under one directory, by name.

    :param directory: holds ``<name>/`` (data) and ``<name>.log`` per server.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.bindir = postgres_bindir()
        self._user = server_user()

    def _as_user(self) -> list[str]:
        if self._user is None:
            return []
        return ["setpriv", "--reuid", str(self._user.pw_uid), "--regid", str(self._user.pw_gid), "--clear-groups"]

    def _run(self, program: str, *args: str, timeout: float = 120.0) -> str:
        argv = self._as_user() + [os.path.join(self.bindir, program), *args]
        try:
            done = subprocess.run(
                argv,
                cwd=self.directory,
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "TZ": "UTC"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                # The server pg_ctl starts must not share our session: it
                # outlives this command and the terminal it ran in.
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise PostgresError("{} did not finish within {:g} s".format(program, timeout)) from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise PostgresError("{} failed ({}): {}".format(program, done.returncode, output[-1500:]))
        return done.stdout.decode(errors="replace")

    def data_dir(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def log_path(self, name: str) -> str:
        return os.path.join(self.directory, name + ".log")

    def prepare(self) -> None:
        """Create the directory, owned by the server user."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        if self._user is not None:
            os.chown(self.directory, self._user.pw_uid, self._user.pw_gid)

    def _write_server_conf(self, name: str, address: str, port: int, extra: dict[str, str]) -> None:
        settings = dict(COMMON_SETTINGS, listen_addresses="'{}'".format(address), port=str(port), **extra)
        path = os.path.join(self.data_dir(name), "fastedge-server.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write("# Written by fastedge-admin cluster: this server's own settings.\n")
            for key, value in settings.items():
                f.write("{} = {}\n".format(key, value))
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def init_primary(self, name: str, address: str, port: int) -> None:
        """``initdb`` a primary that trusts loopback clients (replication
        included)."""
        data = self.data_dir(name)
        self._run("initdb", "-D", data, *INITDB_OPTIONS)
        with open(os.path.join(data, "pg_hba.conf"), "a", encoding="utf-8") as f:
            f.write("host all all 127.0.0.0/8 trust\nhost replication all 127.0.0.0/8 trust\n")
        with open(os.path.join(data, "postgresql.conf"), "a", encoding="utf-8") as f:
            f.write("include_if_exists = 'fastedge-server.conf'\n")
        self._write_server_conf(name, address, port, {})

    def require_sync_standbys(self, name: str, address: str, port: int, standbys: Sequence[str]) -> None:
        """Make primary ``name`` wait for one of ``standbys`` on every commit
        (``synchronous_standby_names = 'ANY 1 (...)'``), then reload it.

        Synchronous commit is what makes a promotion lose no acknowledged
        write: every commit a client saw succeed is on at least one standby,
        and the operator promotes the one that received the most WAL. Set
        once the standbys stream (before, every commit would wait).
        """
        names = ", ".join('"{}"'.format(s) for s in standbys)
        self._write_server_conf(name, address, port, {"synchronous_standby_names": "'ANY 1 ({})'".format(names)})
        self._run("pg_ctl", "reload", "-D", self.data_dir(name))

    def clone_standby(self, name: str, address: str, port: int, *, upstream: tuple[str, int]) -> None:
        """``pg_basebackup`` the server at ``upstream`` into a hot standby
        named ``name`` (its ``application_name`` on the primary)."""
        data = self.data_dir(name)
        host, upstream_port = upstream
        self._run(
            "pg_basebackup",
            "-h",
            host,
            "-p",
            str(upstream_port),
            "-U",
            "postgres",
            "-D",
            data,
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        )
        conninfo = "host={} port={} user=postgres application_name={}".format(host, upstream_port, name)
        self._write_server_conf(name, address, port, {"primary_conninfo": "'{}'".format(conninfo)})
        signal_file = os.path.join(data, "standby.signal")
        open(signal_file, "w").close()
        if self._user is not None:
            os.chown(signal_file, self._user.pw_uid, self._user.pw_gid)

    def follow(self, name: str, address: str, port: int, *, upstream: tuple[str, int]) -> None:
        """Point standby ``name`` at another primary (after a promotion) and
        reload it: it follows the new timeline (``recovery_target_timeline``
        is ``latest``)."""
        conninfo = "host={} port={} user=postgres application_name={}".format(upstream[0], upstream[1], name)
        self._write_server_conf(name, address, port, {"primary_conninfo": "'{}'".format(conninfo)})
        self._run("pg_ctl", "reload", "-D", self.data_dir(name))

    def start(self, name: str, timeout: float = 60.0) -> None:
        """Start server ``name`` and return once it accepts connections."""
        self._run(
            "pg_ctl",
            "start",
            "-D",
            self.data_dir(name),
            "-l",
            self.log_path(name),
            "-w",
            "-t",
            str(int(timeout)),
            timeout=timeout + 10,
        )

    def pid(self, name: str) -> int | None:
        """The postmaster's pid, from ``postmaster.pid`` (``None`` when absent)."""
        try:
            with open(os.path.join(self.data_dir(name), "postmaster.pid"), encoding="ascii") as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    def running(self, name: str) -> bool:
        pid = self.pid(name)
        if pid is None:
            return False
        try:
            with open("/proc/{}/cmdline".format(pid), "rb") as f:
                return self.data_dir(name).encode() in f.read()
        except OSError:
            return False

    def kill(self, name: str) -> None:
        """SIGKILL server ``name``'s postmaster (a machine failure); its
        backends notice and exit by themselves."""
        pid = self.pid(name)
        if pid is not None and self.running(name):
            os.kill(pid, signal.SIGKILL)

    def promote(self, name: str, timeout: float = 60.0) -> None:
        """``pg_ctl promote``: standby ``name`` becomes a primary; returns
        once it accepts writes."""
        self._run("pg_ctl", "promote", "-D", self.data_dir(name), "-w", "-t", str(int(timeout)), timeout=timeout + 10)

    def stop(self, name: str, timeout: float = 30.0, mode: str = "fast") -> None:
        """Shut server ``name`` down (nothing if it does not run): ``fast``,
        or ``immediate`` when its data is about to be deleted anyway; a
        server that does not stop in time is killed."""
        if not self.running(name):
            return
        try:
            self._run("pg_ctl", "stop", "-D", self.data_dir(name), "-m", mode, "-w", "-t", str(int(timeout)))
        except PostgresError:
            self.kill(name)
