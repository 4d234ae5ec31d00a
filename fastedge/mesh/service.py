# -*- test-case-name: tests.unit.mesh.test_service -*-
"""The ``mesh`` child: the PB listener over mutual TLS, a link to every
other node, the membership protocol and the live node map.

``make_service`` is the only place the mesh touches the reactor: it makes
the listening endpoint (``mesh.endpoint``, never the public HTTP port),
the client endpoints to peers, and the timers.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import __version__
from ..config import MeshConfig, NodeConfig, parse_host_port
from ..inputs import InputError, parse_ascii_int
from ..lifecycle import fired
from .auth import MeshGate, make_portal
from .broker import Limits, MeshServerFactory, RefusalLog
from .handler import HandlerRegistry, MeshView
from .interfaces import ILink, IMeshHandler
from .membership import Membership, Peer, Timing
from .messages import Announcement, mesh_security
from .metrics import MeshMetrics
from .nodemap import NodeMap, NodeMapChange, NodeState
from .peer import Link, PeerAvatar
from .tls import (
    MeshCertificateError,
    MeshIdentity,
    MeshTLS,
    create_ca,
    create_node_certificate,
    load_identity,
    write_file,
)

__all__ = ["MeshService", "TLSClientEndpoint", "make_service"]


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """A client endpoint that runs mesh TLS over another endpoint.

    (Twisted's ``wrapClientTLS`` takes no clock for TLS's write batching;
    this one does, so in-memory tests can drive it.)
    """

    def __init__(self, endpoint: IStreamClientEndpoint, tls: MeshTLS, clock: IReactorTime) -> None:
        self._endpoint = endpoint
        self._tls = tls
        self._clock = clock

    def connect(self, factory: Any) -> Deferred[Any]:
        wrapper = TLSMemoryBIOFactory(self._tls, True, factory, clock=self._clock)
        d: Deferred[Any] = self._endpoint.connect(wrapper)
        return d.addCallback(_wrapped)


def _wrapped(protocol: Any) -> Any:
    return protocol.wrappedProtocol


def _read_incarnation(path: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise MeshCertificateError("mesh incarnation file {}: cannot read ({})".format(path, e.strerror)) from None
    try:
        return parse_ascii_int(text, 0, 2**63 - 1)
    except InputError:
        raise MeshCertificateError("mesh incarnation file {}: not a number".format(path)) from None


class MeshService(Service):
    """One node's mesh. See the module docstring and ``docs/mesh.md``.

    :ivar node_map: the live node map (observable from construction on;
        filled once the service starts).
    """

    _log = Logger()

    #: Makes the session of a logged-in peer (tests put scripted ones here).
    avatar_class: type[PeerAvatar] = PeerAvatar
    #: The membership protocol (tests put a previous version's in its place).
    membership_class: type[Membership] = Membership

    def __init__(
        self,
        cfg: MeshConfig,
        *,
        node: NodeConfig,
        reactor: Any,
        clock: IReactorTime,
        monotonic: Callable[[], float],
        registry: CollectorRegistry,
        load: Callable[[], int],
        listen_endpoint: IStreamServerEndpoint,
        client_endpoint: Callable[[str, int], IStreamClientEndpoint],
        version: str = __version__,
        jitter: Callable[[], float] | None = None,
        identity: MeshIdentity | None = None,
        handlers: Sequence[IMeshHandler | None] = (),
        rng: random.Random | None = None,
    ) -> None:
        """:param rng: the membership's random choices (probe targets, the
        partial view's extras); seeded by the in-memory test mesh."""
        self.cfg = cfg
        self._rng = rng
        self._given_identity = identity
        self.node = node
        self.reactor = reactor
        self.clock = clock
        self.monotonic = monotonic
        self.metrics = MeshMetrics(registry)
        #: Refused peers are logged once, then summarised (both directions).
        self.refusals = RefusalLog(clock)
        #: Peers that cannot be reached: the first failed connect is logged,
        #: then summaries every 60 s, 120 s, 240 s ... (at most hourly).
        self.unreachable = RefusalLog(clock, what="failed connections", summary_seconds=60.0, growth=2.0)
        self.node_map = NodeMap()
        self.node_map.subscribe(self._count_peers)
        self.version = version
        self._load = load
        self._listen_endpoint = listen_endpoint
        self._client_endpoint = client_endpoint
        self._jitter = jitter if jitter is not None else (lambda: random.uniform(0, cfg.reconnect_initial_seconds))
        #: The message types this node's connections admit: the mesh's own
        #: and those of its handlers (added as they register).
        self.security = mesh_security()
        self.limits = Limits(
            max_message_bytes=cfg.max_message_bytes,
            max_calls_per_second=cfg.max_calls_per_second,
            max_pending_calls=cfg.max_pending_calls,
            login_timeout_seconds=cfg.connect_timeout_seconds,
            security=self.security,
        )
        #: The features that talk to peers over this mesh (``register``).
        self.handlers = HandlerRegistry(
            security=self.security,
            deployment=node.deployment,
            deployment_of=self._deployment_of,
            metrics=self.metrics,
            clock=clock,
        )
        self.identity: MeshIdentity | None = None
        self.tls: MeshTLS | None = None
        self.port: IListeningPort | None = None
        self.server_factory: MeshServerFactory | None = None
        self.membership: Membership | None = None
        self.incarnation = 0
        self._ticker: LoopingCall | None = None
        self._last_load = float("-inf")
        self._ready: list[Deferred[None]] = []
        for handler in handlers:
            # None: a child whose feature is off has nothing to register.
            if handler is not None:
                self.register(handler)

    # Handlers (fastedge.mesh.handler, docs/mesh-handlers.md)

    def register(self, handler: IMeshHandler) -> None:
        """Carry ``handler``'s calls to and from the peers of this node's
        deployment (before the service starts).

        :raises ValueError: one of its call names is taken.
        :raises RuntimeError: the mesh has started already.
        """
        if self.membership is not None:
            raise RuntimeError("mesh handlers are registered before the mesh starts")
        self.handlers.register(handler)

    def _deployment_of(self, node_id: str | None, incarnation: int) -> str | None:
        if self.membership is None or node_id is None:
            return None
        peer = self.membership.current(node_id, incarnation)
        return None if peer is None else str(peer.announcement.deployment)

    def _link_up(self, peer: Peer, link: ILink) -> None:
        self.handlers.each("link_up", peer.node_id, link)

    def _peer_gone(self, peer: Peer) -> None:
        self.handlers.each("peer_gone", peer.node_id)

    # Start

    def _incarnation_path(self) -> str:
        return os.path.join(self.node.data_dir, "mesh", "incarnation")

    def _ensure_identity(self) -> MeshIdentity:
        if self._given_identity is not None:
            return self._given_identity
        cfg = self.cfg
        files = (cfg.ca_file, cfg.cert_file, cfg.key_file)
        if not cfg.seeds and not any(os.path.exists(f) for f in files):
            # A lone node on a fresh data directory: a cluster of its own.
            ca_pem, ca_key = create_ca()
            cert, key = create_node_certificate(self.node.id, ca_pem, ca_key)
            write_file(cfg.ca_file, ca_pem, private=False)
            write_file(
                os.path.join(os.path.dirname(cfg.ca_file), "ca.key"),
                ca_key,
                private=True,
            )
            write_file(cfg.cert_file, cert, private=False)
            write_file(cfg.key_file, key, private=True)
            self._log.warn(
                "mesh: created a new cluster CA in {ca} and this node's certificate; other nodes "
                "need certificates from this CA (fastedge-admin certs node NODE_ID) to join",
                ca=cfg.ca_file,
            )
        return load_identity(
            self.node.id,
            ca_file=cfg.ca_file,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
        )

    def privilegedStartService(self) -> None:
        """Read the certificates and bind the mesh port (before privileges
        are dropped: keys may be readable by root only). Errors stop the
        node with a message naming the file or the key."""
        super().privilegedStartService()
        if self.port is None:
            self._listen()

    def _listen(self) -> None:
        identity = self._ensure_identity()
        self.identity = identity
        self.tls = MeshTLS(identity)
        self.metrics.certificate_expiry.set(identity.not_after.timestamp())
        days_left = (identity.not_after - datetime.datetime.now(datetime.UTC)).days
        if days_left < 30:
            self._log.warn("mesh: this node's certificate expires in {days} days", days=days_left)
        path = self._incarnation_path()
        self.incarnation = _read_incarnation(path) + 1
        write_file(path, b"%d\n" % self.incarnation, private=False)
        portal = make_portal(lambda node_id, mind: self.avatar_class(node_id, mind, self))
        self.server_factory = MeshServerFactory(
            MeshGate(portal, self._joined),
            limits=self.limits,
            clock=self.clock,
            metrics=self.metrics,
            refusals=self.refusals,
        )
        wrapper = TLSMemoryBIOFactory(self.tls, False, self.server_factory, clock=self.reactor)
        results: list[Any] = []
        self._listen_endpoint.listen(wrapper).addBoth(results.append)
        if not results:
            raise RuntimeError("the mesh endpoint did not listen synchronously")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        self.port = results[0]

    def advertised(self) -> tuple[str, int]:
        """Where other nodes connect to this one."""
        if self.cfg.advertise:
            return parse_host_port(self.cfg.advertise)
        assert self.port is not None
        host: Any = self.port.getHost()
        if host.host in ("0.0.0.0", "::", ""):
            raise MeshCertificateError("mesh.advertise: must be set when mesh.endpoint listens on all interfaces")
        return host.host, host.port

    def startService(self) -> None:
        if self.port is None:
            self._listen()
        super().startService()
        host, port = self.advertised()
        node = self.node
        me = Announcement(
            node_id=node.id,
            deployment=node.deployment,
            region=node.region,
            latitude=node.latitude,
            longitude=node.longitude,
            addresses=node.addresses,
            version=self.version,
            incarnation=self.incarnation,
            load=0,
            mesh_host=host,
            mesh_port=port,
        )
        seeds = [parse_host_port(s) for s in self.cfg.seeds]
        self.membership = self.membership_class(
            me=me,
            node_map=self.node_map,
            timing=Timing(
                heartbeat=self.cfg.heartbeat_seconds,
                suspect=self.cfg.suspect_seconds,
                dead=self.cfg.dead_seconds,
                forget_dead=self.cfg.forget_dead_seconds,
                indirect_probes=self.cfg.indirect_probes,
                full_mesh_max_nodes=self.cfg.full_mesh_max_nodes,
                partial_view_size=self.cfg.partial_view_size,
            ),
            monotonic=self.monotonic,
            metrics=self.metrics,
            connect=self._connect,
            seeds=seeds,
            save_incarnation=self._save_incarnation,
            rng=self._rng,
        )
        self.membership.on_link_up.append(self._link_up)
        self.membership.on_peer_gone.append(self._peer_gone)
        self.handlers.each("attach", MeshView(self))
        self._log.info(
            "mesh: node {node} incarnation {incarnation} listening at {host}:{port}, seeds {seeds}",
            node=node.id,
            incarnation=self.incarnation,
            host=host,
            port=port,
            seeds=list(self.cfg.seeds),
        )
        self.membership.start()
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self.clock
        self._ticker.start(self.cfg.heartbeat_seconds / 5.0, now=True)
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(None)

    def when_ready(self) -> Deferred[None]:
        """Fires once the node listens and has started joining."""
        if self.running and self.membership is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready.append(d)
        return d

    def _save_incarnation(self, incarnation: int) -> None:
        self.incarnation = incarnation
        write_file(self._incarnation_path(), b"%d\n" % incarnation, private=False)

    def _tick(self) -> None:
        try:
            assert self.membership is not None
            now = self.monotonic()
            if now - self._last_load >= self.cfg.load_report_seconds:
                self._last_load = now
                self.membership.set_load(int(self._load()))
            self.membership.tick()
            self.handlers.each("tick")
        except Exception:
            # A raised exception would stop the loop for good.
            self._log.failure("mesh: heartbeat tick failed")

    def _connect(self, peer_id: str | None, host: str, port: int) -> ILink:
        assert self.tls is not None
        endpoint = TLSClientEndpoint(self._client_endpoint(host, port), self.tls, self.reactor)
        link = Link(
            peer_id=peer_id,
            address=(host, port),
            node=self,
            endpoint=endpoint,
            clock=self.clock,
            limits=self.limits,
            policy=backoffPolicy(
                initialDelay=self.cfg.reconnect_initial_seconds,
                maxDelay=self.cfg.reconnect_max_seconds,
                jitter=self._jitter,
            ),
        )
        link.start()
        return link

    def _joined(self, announcement: Announcement, avatar: PeerAvatar, broker: Any) -> Any:
        assert self.membership is not None
        avatar.attach(broker, announcement.incarnation)
        return self.membership.joined(announcement, avatar)

    def session_closed(self, avatar: PeerAvatar) -> None:
        """A peer's session closed (called by its avatar)."""
        if self.membership is not None:
            self.membership.session_closed(avatar)
        self.handlers.each("session_closed", avatar)

    # Stop

    def announce_leaving(self) -> Deferred[None]:
        """Tell the peers now that this node leaves (they withdraw it from
        DNS at once), before the node's other children stop; the links stay
        up until :meth:`stopService` (the first step of a drain)."""
        membership = self.membership
        if membership is None or not self.running:
            return succeed(None)
        self._log.info("mesh: node {node} announces it is leaving", node=self.node.id)
        d: Deferred[Any] = membership.announce_leaving(self._bounded)
        return d.addCallback(fired)

    def _bounded(self, d: Deferred[Any]) -> Deferred[Any]:
        return d.addTimeout(self.cfg.leave_timeout_seconds, self.clock)

    def stopService(self) -> Deferred[None]:
        """Leave (peers withdraw this node at once), then close every link
        and connection; fires once all are closed."""
        super().stopService()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._ticker = None
        membership = self.membership
        if membership is None:
            return self._close_listener()

        self._log.info("mesh: node {node} leaving", node=self.node.id)
        d = membership.leave(self._bounded)
        d.addCallback(lambda _: self._close_listener())
        return d

    def _close_listener(self) -> Deferred[None]:
        port, self.port = self.port, None
        waits: list[Deferred[Any]] = []
        if port is not None:
            stopped = port.stopListening()
            if isinstance(stopped, Deferred):
                waits.append(stopped)
        factory = self.server_factory
        if factory is not None:
            for broker in list(factory.brokers):
                closed: Deferred[None] = Deferred()
                broker.when_closed(_firer(closed))
                if broker.transport is not None:
                    broker.transport.loseConnection()
                waits.append(closed)
        d = DeferredList(waits)

        def all_closed(_: object) -> None:
            # Each wait only fires (never fails): the list of results says nothing.
            return None

        d.addCallback(all_closed)
        return d  # type: ignore[return-value]

    # Views

    def _count_peers(self, change: NodeMapChange) -> None:
        counts = {state: 0 for state in NodeState}
        for info in self.node_map.nodes().values():
            if info.node_id != self.node.id:
                counts[info.state] += 1
        for state, count in counts.items():
            self.metrics.peers.labels(state.value).set(count)

    def health(self) -> dict[str, Any]:
        """A summary for ``/healthz``."""
        counts = {state.value: 0 for state in NodeState}
        for info in self.node_map.nodes().values():
            if info.node_id != self.node.id:
                counts[info.state.value] += 1
        return {"incarnation": self.incarnation, "peers": counts}

    def status(self) -> dict[str, Any]:
        """The node map as this node sees it, for ``GET /api/v1/mesh``."""
        membership = self.membership
        peers = {p.node_id: p for p in membership.peer_views()} if membership is not None else {}
        now = self.monotonic()
        nodes = []
        for node_id, info in sorted(self.node_map.nodes().items()):
            entry: dict[str, Any] = {
                "nodeId": info.node_id,
                "deployment": info.deployment,
                "region": info.region,
                "latitude": info.latitude,
                "longitude": info.longitude,
                "addresses": list(info.addresses),
                "version": info.version,
                "incarnation": info.incarnation,
                "load": info.load,
                "state": info.state.value,
                "self": node_id == self.node.id,
            }
            peer = peers.get(node_id)
            if peer is not None:
                link = peer.link
                entry["link"] = "up" if link is not None and link.up else ("connecting" if link is not None else "none")
                entry["rttMs"] = None if peer.rtt is None else round(peer.rtt * 1000.0, 3)
                entry["lastHeardSecondsAgo"] = round(max(0.0, now - peer.last_heard), 3)
            nodes.append(entry)
        return {
            "nodeId": self.node.id,
            "incarnation": self.incarnation,
            "mapVersion": self.node_map.version,
            "nodes": nodes,
        }


def _firer(d: Deferred[None]) -> Callable[[], None]:
    return lambda: d.callback(None)


def make_service(
    cfg: MeshConfig,
    *,
    node: NodeConfig,
    reactor: Any,
    registry: CollectorRegistry,
    load: Callable[[], int] = lambda: 0,
    clock: IReactorTime | None = None,
    monotonic: Callable[[], float] | None = None,
    listen_endpoint: IStreamServerEndpoint | None = None,
    client_endpoint: Callable[[str, int], IStreamClientEndpoint] | None = None,
    jitter: Callable[[], float] | None = None,
    identity: MeshIdentity | None = None,
    handlers: Sequence[IMeshHandler | None] = (),
    rng: random.Random | None = None,
) -> MeshService:
    """The mesh child of node ``node``.

    :param load: the node's current load (live connections), sampled every
        ``mesh.load_report_seconds``.
    :param clock: the timers' clock (default: ``reactor``); tests pass a
        ``Clock`` while I/O runs on ``reactor``.
    :param monotonic: the failure detector's clock (default:
        ``time.monotonic`` with the real reactor, else ``clock.seconds``).
    :param listen_endpoint, client_endpoint: the plain (TCP) endpoints TLS
        runs over; default ``mesh.endpoint`` and ``HostnameEndpoint``.
    :param identity: the node's CA, certificate and key, already loaded
        (default: read from the ``[mesh]`` files at start).
    :param handlers: the features that talk to peers over the mesh
        (:class:`~fastedge.mesh.interfaces.IMeshHandler`; ``None`` entries,
        features that are off, are skipped; more can be registered with
        :meth:`MeshService.register` before the service starts).
    :param rng: the membership's random choices (default: a fresh one).
    """
    timers: IReactorTime = clock if clock is not None else reactor
    if monotonic is None:
        monotonic = time.monotonic if timers is reactor and clock is None else timers.seconds
    if listen_endpoint is None:
        listen_endpoint = serverFromString(reactor, cfg.endpoint)
    if client_endpoint is None:
        source = link_source(listen_endpoint)

        def client_endpoint(host: str, port: int) -> IStreamClientEndpoint:
            bind = source if source is not None and _same_family(source[0], host) else None
            return HostnameEndpoint(reactor, host, port, timeout=cfg.connect_timeout_seconds, bindAddress=bind)

    return MeshService(
        cfg,
        node=node,
        reactor=reactor,
        clock=timers,
        monotonic=monotonic,
        registry=registry,
        load=load,
        listen_endpoint=listen_endpoint,
        client_endpoint=client_endpoint,
        jitter=jitter,
        identity=identity,
        handlers=handlers,
        rng=rng,
    )


def link_source(listen_endpoint: Any) -> tuple[str, int] | None:
    """Where outgoing links leave from: the mesh listener's interface when
    it is one address (``tcp:7946:interface=10.0.0.5``), else ``None`` (the
    system's choice).

    On a host with several addresses (several nodes on one machine, or a
    dedicated mesh network) a peer then sees a link come from the address
    the node announces, so rules by source address (a firewall, a
    partitioning relay in ``bench/chaos``) apply to both directions.
    """
    interface = getattr(listen_endpoint, "_interface", "")
    if not isinstance(interface, str) or interface in ("", "0.0.0.0", "::"):
        return None
    return (interface, 0)


def _same_family(source: str, host: str) -> bool:
    """Whether ``host`` (an address literal, or a name) can be reached from
    ``source``: a name is assumed to resolve to the source's family."""
    try:
        return ipaddress.ip_address(host).version == ipaddress.ip_address(source).version
    except ValueError:
        return True
