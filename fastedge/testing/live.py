"""In-process live nodes on the in-memory mesh, with recording subscribers."""

from __future__ import annotations

import base64
import dataclasses
import os
import random
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from .fakes import RecordingConnection, run_inline
from .mesh import MemoryMesh, idle_mesh
from .stores import sqlite_store


def seeded_epochs(rng: random.Random) -> Callable[[], str]:
    """Epochs as :func:`fastedge.live.hub.new_epoch` makes them, from
    ``rng``: the same sequence in every run (and under every
    ``PYTHONHASHSEED``)."""

    def new_epoch() -> str:
        return base64.b32encode(rng.getrandbits(64).to_bytes(8, "big")).decode("ascii").rstrip("=").lower()

    return new_epoch


def seeded_ids(rng: random.Random) -> Callable[[], str]:
    """Record ids as :func:`fastedge.store.shared.new_id` makes them, from ``rng``."""

    def new_id() -> str:
        while True:
            value = base64.urlsafe_b64encode(rng.getrandbits(96).to_bytes(12, "big")).decode("ascii")
            if value[0] != "-":
                return value

    return new_id


class LiveNode:
    """The live subsystem of one node on a real SQLite store, for tests.

    :ivar service: a :class:`~fastedge.live.service.LiveService` (not started).
    :ivar api: the comment API wired to it (``build_api``).
    :ivar site: the node's Site (``/api``, ``/live``, ...).
    :ivar mesh: the node's mesh service (default: one that is not started).
    :param relay: the ``[mesh]`` section when the node's live events are
        relayed (``service.relay``, to register with the mesh); default: none.
    :param new_epoch: makes the node's epochs (default: random ones).
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
        relay: Any = None,
        successor: Any = None,
        new_epoch: Any = None,
    ) -> None:

        from fastedge.api.resource import build_api, build_sessions
        from fastedge.config import load_config
        from fastedge.embed.policy import tenant_policy
        from fastedge.embed.resource import EmbedResource, WidgetScript
        from fastedge.live.access import GroupLocks
        from fastedge.live.service import make_service
        from fastedge.mesh.resource import mesh_routes
        from fastedge.metrics.registry import new_registry
        from fastedge.web import build_site

        cfg = load_config(None, {"node.data_dir": path, "node.id": node_id})
        self.cfg = dataclasses.replace(cfg, live=dataclasses.replace(cfg.live, **(live_overrides or {})))
        self.clock = clock
        self.registry = registry if registry is not None else new_registry()
        self.store = (
            store if store is not None else sqlite_store(os.path.join(path, "test.sqlite3"), clock=clock, run=run)
        )
        access = GroupLocks(self.store, clock=clock, ttl_seconds=self.cfg.live.resolve_cache_seconds)
        sessions = build_sessions(
            self.cfg.api,
            store=self.store,
            clock=clock,
            registry=self.registry,
            access=access,
            viewer_token_max_age_seconds=self.cfg.live.viewer_token_max_age_seconds,
        )
        self.service = make_service(
            self.cfg.live,
            reactor=clock,
            registry=self.registry,
            store=self.store,
            node_id=node_id,
            mesh=relay,
            access=access,
            viewer_tokens=sessions.viewer_tokens,
            sso=sessions.sso,
            successor=successor,
            **({"new_epoch": new_epoch} if new_epoch is not None else {}),
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
            extra_routes=mesh_routes(mesh.status),
            sessions=sessions,
        )
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
        """The :class:`~fastedge.live.frontend.Live` the transports use."""
        return self.service.live

    @property
    def hub(self) -> Any:
        """The node's :class:`~fastedge.live.hub.Hub`."""
        return self.service.hub

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample from this node's registry (0 when absent)."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0


class LiveSubscriber:
    """A live client of one node, subscribing through the same code path as
    the WebSocket and SSE transports (authorization, priming, the hub)."""

    def __init__(self, node: LiveNode) -> None:
        from fastedge.live.frontend import LiveConnection

        self.conn = RecordingConnection()
        self.live = LiveConnection(node.live, self.conn)
        self.conn.owner = self.live
        # Counted in as the transports do (the node's goodbye reaches it).
        self._node_live = node.live
        node.live.opened(self.conn)

    def subscribe(self, tenant_id: str, url_id: str, **extra: Any) -> Deferred[Any]:
        """Subscribe; the ``subscribed`` answer and any replay are recorded
        in order, as a transport sends them."""
        from fastedge.live import messages
        from fastedge.live.messages import Subscribe

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
        self._node_live.closed(self.conn)


class LiveMesh(MemoryMesh):
    """:class:`MemoryMesh` nodes that also run live threads, relayed over
    the mesh. The nodes of a deployment share one database (one SQLite
    store), as a deployment's nodes share their replicated store.

    :ivar live: each node's :class:`LiveNode`.
    :param new_epoch: makes every node's epochs (default: random ones; a
        test that must replay an example the same way passes a seeded one,
        see :func:`seeded_epochs`).
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        live_overrides: dict[str, Any] | None = None,
        new_epoch: Callable[[], str] | None = None,
        **mesh_overrides: Any,
    ) -> None:
        super().__init__(testcase, **mesh_overrides)
        self._new_epoch = new_epoch
        self.live: dict[str, LiveNode] = {}
        self.stores: dict[str, Any] = {}
        self._live_overrides = live_overrides or {}

    def add(self, node_id: str, *, deployment: str = "global", start: bool = True, **kw: Any) -> Any:
        """Make (and start) a node with live threads relayed over the mesh
        (see :meth:`MemoryMesh.add` for the arguments)."""
        from fastedge.mesh.successor import successor_of

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
            relay=service.cfg,
            successor=successor_of(service.node_map, node_id, deployment, 0.0, 0.0),
            new_epoch=self._new_epoch,
        )
        self._tc.addCleanup(node.api.service.stopService)
        service.register(node.service.relay)
        self.live[node_id] = node
        if start:
            service.privilegedStartService()
            service.startService()
            self.network.flush()
        return service

    def subscriber(self, node_id: str) -> LiveSubscriber:
        """A new live client of node ``node_id``."""
        return LiveSubscriber(self.live[node_id])
