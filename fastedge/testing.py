"""Test helpers we maintain and ship: fakes at the edges, factories, runners.

Kept in the package (not under ``tests/``) so every test module, and the
test suites of plugins, use one copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

_T = TypeVar("_T")


def run_inline(fn: Callable[[], _T]) -> Deferred[_T]:
    """A store runner that calls the blocking function right away.

    Unit tests use it with a real database so store calls resolve
    synchronously (``successResultOf``) without threads or a running reactor.
    """
    return maybeDeferred(fn)


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
    ) -> Response:
        all_headers = dict(self._headers)
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers.setdefault("content-type", "application/json")
        if self.cookie is not None:
            all_headers["cookie"] = self.cookie
        all_headers.update(headers or {})
        response = self._harness.request(method, path, data=data, headers=all_headers)
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
    """

    def __init__(self, testcase: SynchronousTestCase, **api_overrides: Any) -> None:
        from treq.testing import StubTreq

        from .api.resource import build_api
        from .config import ApiConfig, HttpConfig, NodeConfig
        from .metrics.registry import new_registry
        from .store.sqlite import SQLiteStore
        from .web import build_site

        self._tc = testcase
        self.clock = Clock()
        self.clock.advance(EPOCH)
        data_dir = os.path.abspath(testcase.mktemp())
        os.makedirs(data_dir)
        self.store = SQLiteStore(os.path.join(data_dir, "store.sqlite3"), run=run_inline, clock=self.clock)
        testcase.successResultOf(self.store.open())
        testcase.addCleanup(lambda: testcase.successResultOf(self.store.close()))
        api_overrides.setdefault("secret_file", os.path.join(data_dir, "session.key"))
        self.api_config = dataclasses.replace(ApiConfig(), **api_overrides)
        self.registry = new_registry()
        self.api = build_api(self.api_config, store=self.store, clock=self.clock, registry=self.registry)
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
        )

    def request(self, method: str, path: str, *, data: bytes | None, headers: Mapping[str, str]) -> Response:
        from treq.testing import StubTreq

        kwargs: dict[str, Any] = {"headers": {k: [v] for k, v in headers.items()}}
        if data is not None:
            kwargs["data"] = data
        # A fresh StubTreq per request: treq keeps a cookie jar, and each
        # ApiClient must carry only its own cookie.
        stub = StubTreq(self.site.resource)
        d = stub.request(method, "http://node.test" + path, **kwargs)
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
            self.store.add_api_key(tenant.id, hash_api_key(key), created_ms=now, read_preference=ReadPreference.PRIMARY)
        )
        return tenant.id, key

    def manager(self, api_key: str) -> ApiClient:
        """A tenant-API client authenticated with ``api_key``."""
        return ApiClient(self, {"authorization": "Bearer " + api_key})


def loopback_http_client(testcase: Any, site: Any) -> Any:
    """A treq client for integration tests against ``site`` on a real socket.

    It does not keep connections alive, and the test's cleanup waits until
    the server has seen every connection close (no dirty reactor, no sleeps).
    """
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    testcase.addCleanup(site.when_idle)
    testcase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))
