"""An in-memory mesh: real TLS, PB and membership code over ``iosim``
connections on one Clock, and node descriptions to put on its map.
"""

from __future__ import annotations

import dataclasses
import os
import random
import zlib
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from .certs import write_node_certs
from .dns import PLACES
from .fakes import EPOCH


def idle_mesh(clock: Any, data_dir: str, registry: Any, node_id: str = "test-node") -> Any:
    """A mesh service that is never started (its views show an empty map),
    for harnesses of a node's HTTP side."""
    from fastedge.config import MeshConfig, NodeConfig
    from fastedge.mesh.service import make_service as make_mesh

    network = MemoryNetwork(clock)
    return make_mesh(
        MeshConfig(),
        node=NodeConfig(id=node_id, data_dir=data_dir),
        reactor=clock,
        registry=registry,
        listen_endpoint=network.server_endpoint("127.0.0.1"),
        client_endpoint=network.client_endpoints("127.0.0.1"),
    )


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
        self.dropped: set[frozenset[str]] = set()
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
                if frozenset((pump.clientIO.getHost().host, pump.serverIO.getHost().host)) in self.dropped:
                    # A black hole: what either end writes is lost.
                    pump.clientIO.stream = []
                    pump.serverIO.stream = []
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

    def drop(self, a: str, b: str) -> None:
        """Lose every byte between ``a`` and ``b`` from now on (a partition
        as a network makes it: connections stay open, nothing arrives);
        :meth:`undrop` ends it."""
        self.dropped.add(frozenset((a, b)))

    def undrop(self, a: str, b: str) -> None:
        """Deliver bytes between ``a`` and ``b`` again."""
        self.dropped.discard(frozenset((a, b)))


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
        from fastedge.config import MeshConfig, NodeConfig
        from fastedge.mesh.service import make_service
        from fastedge.metrics.registry import new_registry

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
            # Deterministic: the same node makes the same random choices in every run.
            rng=random.Random(node_id),
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
    from fastedge.mesh.nodemap import NodeInfo

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
