"""Whole nodes for tests: an in-process node on a Clock (:class:`NodeHarness`)
with an API client, and real ``twistd``-shaped nodes on loopback
(:func:`start_node`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.testing.fakes import EPOCH, run_inline
from fastedge.testing.mesh import idle_mesh


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

        from fastedge.api.resource import build_api
        from fastedge.config import ApiConfig, HttpConfig, NodeConfig
        from fastedge.embed.policy import tenant_policy
        from fastedge.embed.resource import EmbedResource, WidgetScript
        from fastedge.mesh.resource import mesh_routes
        from fastedge.metrics.registry import new_registry
        from fastedge.store.sqlite import SQLiteStore
        from fastedge.web import build_site

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
        from fastedge.api.keys import hash_api_key, new_api_key
        from fastedge.store.model import ReadPreference

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


def create_tenants(sqlite_path: str, names: list[str], deployment: str = "global") -> list[tuple[str, str]]:
    """Create tenants of ``deployment`` and one API key each in an SQLite
    store file, before a node opens it (the CDN config names tenants by id).

    :returns: ``(tenant id, API key)`` per name.
    """
    from twisted.internet.task import Clock

    from fastedge.api.keys import hash_api_key, new_api_key
    from fastedge.store.model import ReadPreference
    from fastedge.store.sqlite import SQLiteStore

    os.makedirs(os.path.dirname(sqlite_path), exist_ok=True)
    store = SQLiteStore(sqlite_path, run=run_inline, clock=Clock(), busy_timeout_seconds=5.0, pool_size=1)
    out = []
    store.open()
    try:
        for name in names:
            d = store.create_tenant(name, deployment, created_ms=1, read_preference=ReadPreference.PRIMARY)
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
        listener = self.top.getServiceNamed("http").getServiceNamed(name)
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

    from fastedge import tap

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
