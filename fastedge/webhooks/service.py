# -*- test-case-name: tests.unit.webhooks.test_service -*-
"""``make_service`` for the webhooks child: the delivery worker on timers,
its agent and connection pool (the only module here that touches the
reactor). The agent, the pool and the sender (treq, ``twisted.web.client``)
are made with the first delivery sent: a node whose tenants register no
webhook never imports them (``tests/unit/test_footprint.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS

from .. import __version__
from ..config import WebhooksConfig, parse_host_port
from ..lifecycle import fired
from ..store.interfaces import IWebhookStore
from ..store.model import WebhookDelivery
from .delivery import DeliveryWorker
from .metrics import WebhookMetrics
from .result import Result

if TYPE_CHECKING:
    from twisted.web.client import HTTPConnectionPool

    from .agent import Resolve
    from .sender import Sender

#: Idle connections kept per receiver (the pool's bound; open requests are
#: bounded by ``webhooks.max_in_flight``).
IDLE_PER_HOST = 2
IDLE_SECONDS = 30


class LazySender:
    """A :class:`~fastedge.webhooks.sender.Sender` made, with its agent and
    connection pool, when the first delivery is sent."""

    def __init__(
        self,
        cfg: WebhooksConfig,
        *,
        reactor: Any,
        clock: Any,
        node_id: str,
        resolve: Resolve | None,
        tls: IPolicyForHTTPS | None,
    ) -> None:
        self._cfg = cfg
        self._reactor = reactor
        self._clock = clock
        self._node_id = node_id
        self._resolve = resolve
        self._tls = tls
        self._sender: Sender | None = None
        #: The connection pool, once made.
        self.pool: HTTPConnectionPool | None = None

    def _make(self) -> Sender:
        from twisted.web.client import HTTPConnectionPool

        from .agent import WebhookAgent
        from .sender import Sender

        cfg = self._cfg
        pool = HTTPConnectionPool(self._reactor, persistent=True)
        pool.maxPersistentPerHost = IDLE_PER_HOST
        pool.cachedConnectionTimeout = IDLE_SECONDS
        pool.retryAutomatically = False
        agent = WebhookAgent(
            self._reactor,
            pool=pool,
            allow_private=cfg.allow_private_targets,
            connect_timeout=cfg.connect_timeout_seconds,
            proxy=parse_host_port(cfg.proxy.split("://", 1)[1].rstrip("/")) if cfg.proxy else None,
            resolve=self._resolve,
            tls=self._tls,
        )
        self.pool = pool
        return Sender(
            agent,
            clock=self._clock,
            timeout_seconds=cfg.timeout_seconds,
            max_response_bytes=cfg.max_response_bytes,
            user_agent="fastedge-webhooks/{} (node {})".format(__version__, self._node_id),
        )

    def send(self, delivery: WebhookDelivery) -> Deferred[Result]:
        if self._sender is None:
            self._sender = self._make()
        return self._sender.send(delivery)


class WebhookService(MultiService):
    """The worker's timers; at stop, open requests are aborted and their
    leases given back before the timers stop, then idle connections close.

    :ivar worker: ``None`` when the store keeps no outbox or webhooks are off.
    """

    _log = Logger()

    def __init__(self, worker: DeliveryWorker | None, sender: LazySender | None) -> None:
        super().__init__()
        self.worker = worker
        self._sender = sender

    def stopService(self) -> Deferred[None]:
        d: Deferred[Any] = self.worker.stop() if self.worker is not None else Deferred()
        if self.worker is None:
            d.callback(None)
        d.addCallback(lambda _: super(WebhookService, self).stopService())
        sender = self._sender
        # Read when the worker has stopped: a pool made meanwhile is closed too.
        d.addCallback(lambda _: sender.pool.closeCachedConnections() if sender and sender.pool else None)
        return d.addCallback(fired)


def make_service(
    cfg: WebhooksConfig,
    *,
    reactor: Any,
    store: Any,
    registry: CollectorRegistry,
    node_id: str,
    clock: Any = None,
    resolve: Resolve | None = None,
    tls: IPolicyForHTTPS | None = None,
    store_ready: Callable[[], bool] | None = None,
) -> WebhookService:
    """The webhooks child.

    :param reactor: makes connections (and keeps time unless ``clock``).
    :param clock: the worker's time (tests pass a ``Clock``).
    :param resolve: :data:`~fastedge.webhooks.agent.Resolve` (default: the reactor's).
    :param tls: trust for https endpoints (default: the system's roots).
    :param store_ready: whether the store is open yet (the worker waits for it).
    """
    clock = clock if clock is not None else reactor
    if not cfg.enabled or not IWebhookStore.providedBy(store):
        if cfg.enabled:
            Logger().warn("webhooks: the store backend keeps no outbox; nothing is delivered from this node")
        return WebhookService(None, None)
    metrics = WebhookMetrics(registry)
    sender = LazySender(cfg, reactor=reactor, clock=clock, node_id=node_id, resolve=resolve, tls=tls)
    worker = DeliveryWorker(
        store,
        sender,
        clock=clock,
        metrics=metrics,
        max_in_flight=cfg.max_in_flight,
        lease_seconds=cfg.lease_seconds,
        retry_window_seconds=cfg.retry_window_seconds,
        disable_after_failures=cfg.disable_after_failures,
        ready=store_ready,
    )
    top = WebhookService(worker, sender)
    poll = TimerService(cfg.poll_seconds, worker.poll)
    poll.clock = clock
    poll.setName("poll")
    poll.setServiceParent(top)
    queue = TimerService(cfg.queue_seconds, worker.read_queue)
    queue.clock = clock
    queue.setName("queue")
    queue.setServiceParent(top)
    return top
