# -*- test-case-name: tests.unit.live.test_service -*-
"""The ``live`` child: the hub, its housekeeping timers, and a clean stop.

The WebSocket and SSE endpoints are resources of the node's one Site
(``fastedge.web``); this service owns what outlives a request: the hub
(history expiry), the keep-alive sweep, and closing every live connection
with 1001 when the node stops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..config import LiveConfig, MeshConfig
from ..lifecycle import fired
from ..metrics.registry import label_counter
from ..residency.gate import ResidencyGate
from ..store.interfaces import IStore
from . import messages
from .access import ChannelResolver, GroupLocks
from .frontend import Live
from .hub import Hub, new_epoch
from .interfaces import IAccessPolicy
from .metrics import LiveMetrics
from .publish import LivePublisher
from .relay import Relay, RelayMetrics
from .resource import LiveResource
from .tokens import ViewerTokens


class _Sweep(TimerService):
    """A TimerService whose callback can never stop the loop by raising."""

    _log = Logger()

    def __init__(self, every: float, clock: IReactorTime, what: str, fn: Any) -> None:
        super().__init__(every, self._run)
        self.clock = clock
        self._what = what
        self._fn = fn

    def _run(self) -> None:
        try:
            self._fn()
        except Exception:
            self._log.failure("live {what} failed", what=self._what)


class LiveService(MultiService):
    """Live threads on this node.

    :param mesh: the ``[mesh]`` section when live events are relayed
        across the deployment: the service makes the relay (:attr:`relay`),
        to be registered with the mesh; ``None``, this node's hub sequences
        everything alone.
    :param access: the thread access rules (group locks, closed threads,
        sign-in), shared with the public API; default: its own.
    :param viewer_tokens: checks the viewer tokens the public API issues
        (``None`` refuses every token).
    :param sso: signs viewers in from a subscription's ``sso`` field (the
        public API's :class:`fastedge.api.signin.SsoSignIn`).

    :ivar hub: the broker (:meth:`~fastedge.live.hub.Hub.publish` is the
        entry point for relays).
    :ivar relay: the mesh handler that relays this node's live events
        (:class:`~fastedge.live.relay.Relay`), or ``None``.
    :ivar publisher: what the comment API calls after its writes.
    :ivar live: what the transports use.
    :ivar resource: ``/live`` (mounted by ``fastedge.web.build_site``).
    """

    _log = Logger()

    def __init__(
        self,
        cfg: LiveConfig,
        *,
        reactor: Any,
        registry: CollectorRegistry,
        store: IStore,
        node_id: str,
        policy: IAccessPolicy | None = None,
        residency: ResidencyGate | None = None,
        mesh: MeshConfig | None = None,
        access: GroupLocks | None = None,
        viewer_tokens: ViewerTokens | None = None,
        sso: Any = None,
        successor: Callable[[], tuple[str, Sequence[str]] | None] | None = None,
        new_epoch: Callable[[], str] = new_epoch,
    ) -> None:
        super().__init__()
        self._cfg = cfg
        self._successor = successor
        self._clock: IReactorTime = reactor
        self.hub = Hub(
            clock=reactor,
            history_events=cfg.history_events,
            history_seconds=cfg.history_seconds,
            fanout_slice_seconds=cfg.fanout_slice_ms / 1000.0,
            new_epoch=new_epoch,
        )
        metrics = LiveMetrics(registry, self.hub, lambda transport: self.live.count(transport))
        self.resolver = ChannelResolver(
            store,
            clock=reactor,
            ttl_seconds=cfg.resolve_cache_seconds,
            max_entries=cfg.resolve_cache_entries,
            count=label_counter(metrics.resolve_lookups),
            residency=residency,
        )
        #: The thread access rules (group locks, closed threads, sign-in).
        #: The public API is given this same object (``tap``), and live
        #: subscriptions are guarded by it unless a plugin policy is given.
        self.access = (
            access if access is not None else GroupLocks(store, clock=reactor, ttl_seconds=cfg.resolve_cache_seconds)
        )
        self.policy: IAccessPolicy = policy if policy is not None else self.access
        self.relay: Relay | None = None
        if mesh is not None:
            self.relay = Relay(
                self.hub,
                metrics=RelayMetrics(registry),
                prime_timeout=mesh.relay_prime_timeout_seconds,
                forward_timeout=mesh.relay_forward_timeout_seconds,
                max_queue=mesh.relay_queue_events,
                new_epoch=new_epoch,
            )
        self.live = Live(
            cfg,
            hub=self.hub,
            resolver=self.resolver,
            clock=reactor,
            metrics=metrics,
            node_id=node_id,
            policy=self.policy,
            tokens=viewer_tokens,
            sso=sso,
            prime=self.relay.prime if self.relay is not None else None,
        )
        self.publisher = LivePublisher(
            self.hub,
            resolver=self.resolver,
            node_id=node_id,
            sink=self.relay.publish if self.relay is not None else None,
            block_sink=self.relay.block if self.relay is not None else None,
            # A lock changed through the tenant API here: re-check at once.
            access_sink=self._access_changed,
        )
        self.resource = LiveResource(self.live)
        _Sweep(
            max(1.0, min(cfg.history_seconds, 60.0)),
            reactor,
            "history expiry",
            self.hub.expire,
        ).setServiceParent(self)
        if cfg.ping_seconds > 0:
            _Sweep(cfg.ping_seconds, reactor, "keep-alive", self.live.keepalive).setServiceParent(self)
        # A lock changed at another node reaches this one's resolver cache
        # within live.resolve_cache_seconds; this sweep applies it to the
        # open subscriptions (docs/live-protocol.md).
        _Sweep(max(1.0, cfg.resolve_cache_seconds), reactor, "access re-check", self.live.recheck).setServiceParent(
            self
        )

    def _access_changed(self, tenant_id: str, url_id: str | None) -> object:
        # Media of the tenant's threads (docs/media.md) are judged afresh too.
        self.access.forget_threads(tenant_id)
        return self.live.recheck(tenant_id, url_id, trigger="change")

    def going_away(self) -> None:
        """The node is going away (a drain, or any clean stop): tell every
        live client where to go (a ``move`` message naming another live node
        of the deployment, when there is one), then close it with 1001.

        The HTTP child calls this once its listeners stopped accepting, so a
        client that reconnects at once reaches another node.
        """
        target = None
        if self._successor is not None:
            try:
                target = self._successor()
            except Exception:
                self._log.failure("live: choosing the node clients move to failed")
        total = sum(len(c) for c in self.live.connections.values())
        if target is not None:
            self._log.info(
                "live: moving {count} connections to {node}", count=total, node=target[0], addresses=list(target[1])
            )
        elif total:
            self._log.info("live: closing {count} connections (no other live node to move them to)", count=total)
        self.live.shutdown(messages.move(*target) if target is not None else None)

    def stopService(self) -> Deferred[None]:
        """Close every live connection with 1001, then stop the timers.

        Fires once all live connections are gone, or after
        ``live.close_timeout_seconds`` (the closing handshake's bound).
        """
        stopped: Deferred[Any] = super().stopService()
        live = self.live
        # What was published reaches its subscribers before the goodbye.
        self.hub.flush()
        total = sum(len(c) for c in live.connections.values())
        if total:
            self._log.info("live: closing {count} connections", count=total)
        live.shutdown()
        if not sum(len(c) for c in live.connections.values()):
            return stopped.addCallback(fired)
        drained: Deferred[None] = Deferred()
        live.on_drained(drained)
        timeout = self._clock.callLater(self._cfg.close_timeout_seconds + 1.0, _fire, drained)

        def done(_: object) -> Deferred[Any]:
            if timeout.active():
                timeout.cancel()
            return stopped

        drained.addCallback(done)
        return drained.addCallback(fired)


def _fire(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


def make_service(
    cfg: LiveConfig,
    *,
    reactor: Any,
    registry: CollectorRegistry,
    store: IStore,
    node_id: str,
    policy: IAccessPolicy | None = None,
    residency: ResidencyGate | None = None,
    mesh: MeshConfig | None = None,
    access: GroupLocks | None = None,
    viewer_tokens: ViewerTokens | None = None,
    sso: Any = None,
    successor: Callable[[], tuple[str, Sequence[str]] | None] | None = None,
    new_epoch: Callable[[], str] = new_epoch,
) -> LiveService:
    """The ``live`` child for ``cfg`` (see :class:`LiveService` for the
    other arguments).

    :param residency: refuses subscriptions to another deployment's tenants
        (:class:`fastedge.residency.gate.ResidencyGate`).
    :param successor: the node this node's clients should move to when it
        goes away, as ``(node id, addresses)``, or ``None`` when there is
        none (then they are only closed with 1001).
    :param new_epoch: makes the epochs of channels this node starts
        sequencing (default: random ones; a test that replays an example
        passes a seeded one).
    """
    return LiveService(
        cfg,
        reactor=reactor,
        registry=registry,
        store=store,
        node_id=node_id,
        policy=policy,
        residency=residency,
        mesh=mesh,
        access=access,
        viewer_tokens=viewer_tokens,
        sso=sso,
        successor=successor,
        new_epoch=new_epoch,
    )
