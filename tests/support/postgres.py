"""Real PostgreSQL servers for tests: a primary and hot standbys from
Debian's binaries (run as an unprivileged user when root), shared by the
suite, one schema per test.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

from fastedge.cluster.postgres import INITDB_OPTIONS, PostgresError
from fastedge.cluster.postgres import postgres_bindir as find_bindir

from .ports import free_port


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server binaries are missing, or a server failed to start."""


def postgres_bindir() -> str:
    """The directory of PostgreSQL's server programs (the product's own
    search, :func:`fastedge.cluster.postgres.postgres_bindir`)."""
    try:
        return find_bindir()
    except PostgresError as e:
        raise PostgresUnavailable(str(e)) from None


def _unprivileged_user() -> pwd.struct_passwd | None:
    """Who runs the servers: ``None`` (ourselves) unless we are root; as root,
    Debian's ``postgres`` system user, created here when missing."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "fastedge-pg"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "fastedge-pg",
        ],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam("fastedge-pg")


#: Settings of every test server: fast and quiet, loopback TCP only.
_COMMON_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "60",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "hot_standby": "on",
    # Background writes would move WAL positions under a test's feet.
    "autovacuum": "off",
    "lc_messages": "C",
    "log_line_prefix": "%m [%p] ",
}


@dataclass
class PostgresServer:
    """One running server of a :class:`PostgresCluster`."""

    name: str
    data_dir: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: str
    lines: list[str] = field(default_factory=list)
    _events: dict[str, threading.Event] = field(default_factory=dict)

    def dsn(self, dbname: str = "postgres", **params: str) -> str:
        """A libpq connection string for this server."""
        parts = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "user": "postgres",
            "dbname": dbname,
        }
        parts.update(params)
        return " ".join("{}={}".format(k, _conninfo_quote(v)) for k, v in parts.items())

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def saw(self, text: str, timeout: float = 60.0) -> bool:
        """Block until the server logs a line containing ``text`` (or exits)."""
        event = self._events.setdefault(text, threading.Event())
        for line in list(self.lines):
            if text in line:
                event.set()
        event.wait(timeout)
        return any(text in line for line in self.lines)


def _conninfo_quote(value: str) -> str:
    if value and all(c.isalnum() or c in "._-/:" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PostgresCluster:
    """A primary and any number of hot standbys in one temporary directory.

    :param settings: extra ``postgresql.conf`` settings for every server.
    """

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.bindir = postgres_bindir()
        self._user = _unprivileged_user()
        self._settings = dict(_COMMON_SETTINGS, **(settings or {}))
        self.base = tempfile.mkdtemp(prefix="fastedge-pg-")
        self._chown(self.base)
        os.chmod(self.base, 0o700)
        self.servers: dict[str, PostgresServer] = {}
        self.primary_name: str | None = None

    # Running commands as the server user

    def _chown(self, path: str) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _as_user(self) -> list[str]:
        if self._user is None:
            return []
        return [
            "setpriv",
            "--reuid",
            str(self._user.pw_uid),
            "--regid",
            str(self._user.pw_gid),
            "--clear-groups",
        ]

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            self._as_user() + list(argv),
            cwd=self.base,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        if done.returncode != 0:
            raise PostgresUnavailable(
                "{} failed ({}): {}".format(
                    os.path.basename(argv[0]),
                    done.returncode,
                    done.stderr.decode(errors="replace")[-2000:],
                )
            )

    # Servers

    def start_primary(self, name: str = "primary", settings: dict[str, str] | None = None) -> PostgresServer:
        """Create (``initdb``) and start the primary."""
        data = os.path.join(self.base, name)
        self._run(os.path.join(self.bindir, "initdb"), "-D", data, *INITDB_OPTIONS)
        server = self._start(name, data, settings or {}, "database system is ready to accept connections")
        self.primary_name = name
        return server

    def add_standby(
        self,
        name: str,
        *,
        source: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> PostgresServer:
        """Clone the primary (``pg_basebackup -R``) and start it as a hot
        standby streaming from it; returns once it streams.

        :param settings: e.g. ``{"recovery_min_apply_delay": "1h"}`` for a
            replica that receives WAL but does not replay it.
        """
        upstream = self.servers[source or self.primary_name or ""]
        data = os.path.join(self.base, name)
        self._run(
            os.path.join(self.bindir, "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(upstream.port),
            "-U",
            "postgres",
            "-D",
            data,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        )
        conninfo = "host=127.0.0.1 port={} user=postgres application_name={}".format(upstream.port, name)
        wanted = {"primary_conninfo": conninfo, **(settings or {})}
        server = self._start(
            name,
            data,
            wanted,
            "database system is ready to accept read-only connections",
        )
        if not server.saw("started streaming WAL"):
            raise PostgresUnavailable(
                "standby {} did not start streaming:\n{}".format(name, "".join(server.lines[-20:]))
            )
        return server

    def _start(self, name: str, data: str, settings: dict[str, str], ready: str) -> PostgresServer:
        # Settings go on the command line, not into the data directory, so a
        # standby cloned from this server does not inherit them.
        settings = dict(self._settings, **settings)
        last_error = ""
        for _ in range(5):
            port = free_port()
            argv = self._as_user() + ["--pdeathsig", "INT"] if self._user else ["setpriv", "--pdeathsig", "INT"]
            argv += [os.path.join(self.bindir, "postgres"), "-D", data, "-p", str(port)]
            for key, value in settings.items():
                argv += ["-c", "{}={}".format(key, value)]
            log_path = os.path.join(self.base, name + ".log")
            process = subprocess.Popen(
                argv,
                cwd=self.base,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            server = PostgresServer(name, data, port, process, log_path)
            threading.Thread(target=self._drain, args=(server,), name="pg-log-" + name, daemon=True).start()
            if server.saw(ready) and server.running:
                self.servers[name] = server
                return server
            process.wait(30)
            last_error = "".join(server.lines[-20:])
            if "Address already in use" not in last_error:
                break
        raise PostgresUnavailable("{} did not start:\n{}".format(name, last_error))

    @staticmethod
    def _drain(server: PostgresServer) -> None:
        """Copy the server's log to its file and wake whoever waits on a line."""
        assert server.process.stderr is not None
        with open(server.log_path, "a", encoding="utf-8", errors="replace") as log:
            for raw in server.process.stderr:
                line = raw.decode("utf-8", errors="replace")
                log.write(line)
                log.flush()
                server.lines.append(line)
                del server.lines[:-500]
                for text, event in list(server._events.items()):
                    if text in line:
                        event.set()
        for event in list(server._events.values()):
            event.set()

    # Operations tests perform

    def execute(self, name: str, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode on server ``name``."""
        import psycopg

        with psycopg.connect(self.servers[name].dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            return list(cur.fetchall()) if cur.description else []

    def pause_replay(self, testcase: Any, name: str) -> None:
        """Stop standby ``name`` replaying WAL (it still receives it) until
        the test ends. Takes effect before the next record: deterministic."""
        self.execute(name, "SELECT pg_wal_replay_pause()")
        testcase.addCleanup(self.resume_replay, name)

    def resume_replay(self, name: str) -> None:
        """Let standby ``name`` replay again."""
        self.execute(name, "SELECT pg_wal_replay_resume()")

    def promote(self, name: str) -> None:
        """Promote standby ``name`` and wait until it accepts writes."""
        self.execute(name, "SELECT pg_promote(true, 60)")
        self.primary_name = name

    def crash(self, name: str) -> None:
        """Kill server ``name`` without a shutdown (as a machine failure would)."""
        server = self.servers[name]
        server.process.kill()
        server.process.wait(30)

    def stop(self, name: str) -> None:
        """Fast shutdown of server ``name`` (a no-op if it is not running)."""
        server = self.servers[name]
        if server.running:
            server.process.send_signal(signal.SIGINT)
            try:
                server.process.wait(30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(30)

    def destroy(self) -> None:
        """Stop every server (standbys first) and delete the directory."""
        for name in sorted(self.servers, key=lambda n: n == self.primary_name):
            self.stop(name)
        shutil.rmtree(self.base, ignore_errors=True)


_shared: dict[str, PostgresCluster] = {}


def shared_postgres() -> PostgresCluster:
    """The test run's cluster, started on first use and stopped at exit.

    A primary and two standbys, ``sync`` and ``lagging``, both synchronous
    (``ANY 2``): a session with ``synchronous_commit=remote_apply`` returns
    from COMMIT only once its write is visible on both, so a test can set up
    data on the replicas deterministically, then :meth:`~PostgresCluster.pause_replay`
    ``lagging`` to make it fall behind at will (sessions that commit with
    ``synchronous_commit=local`` do not wait for it).

    Tests isolate themselves in a schema of their own (:func:`postgres_schema`).
    """
    cluster = _shared.get("cluster")
    if cluster is None:
        cluster = PostgresCluster()
        atexit.register(cluster.destroy)
        cluster.start_primary(settings={"synchronous_standby_names": "ANY 2 (sync, lagging)"})
        cluster.add_standby("sync")
        cluster.add_standby("lagging")
        _shared["cluster"] = cluster
    return cluster


def postgres_schema(testcase: Any, cluster: PostgresCluster) -> str:
    """A new, empty schema on ``cluster``'s primary, dropped after the test.

    Much cheaper than a database per test; a store given
    :func:`postgres_dsn` with this schema sees nothing else.
    """
    name = "t_" + os.urandom(6).hex()
    cluster.execute(cluster.primary_name or "primary", "CREATE SCHEMA " + name)
    testcase.addCleanup(
        cluster.execute,
        cluster.primary_name or "primary",
        "DROP SCHEMA {} CASCADE".format(name),
    )
    return name


def postgres_dsn(server: PostgresServer, schema: str, **settings: str) -> str:
    """A connection string for ``server`` whose sessions work in ``schema``,
    with any other session ``settings`` (``synchronous_commit=...``)."""
    options = " ".join("-c {}={}".format(k, v) for k, v in dict(search_path=schema, **settings).items())
    return server.dsn(options=options)
