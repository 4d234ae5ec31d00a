# -*- test-case-name: tests.unit.webhooks.test_service -*-
"""``make_service`` for the webhooks child: the delivery worker on timers,
its agent and connection pool (the only module here that touches the
reactor)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS

from .. import __version__
from ..config import WebhooksConfig, parse_host_port
from ..store.interfaces import IWebhookStore
from .agent import Resolve, WebhookAgent
from .delivery import DeliveryWorker
from .metrics import WebhookMetrics
from .sender import Sender

#: Idle connections kept per receiver (the pool's bound; open requests are
#: bounded by ``webhooks.max_in_flight``).
IDLE_PER_HOST = 2
IDLE_SECONDS = 30


class WebhookService(MultiService):
    """The worker's timers; at stop, open requests are aborted and their
    leases given back before the timers stop, then idle connections close.

    :ivar worker: ``None`` when the store keeps no outbox or webhooks are off.
    """

    _log = Logger()

    def __init__(self, worker: DeliveryWorker | None, pool: HTTPConnectionPool | None) -> None:
        super().__init__()
        self.worker = worker
        self._pool = pool

    def stopService(self) -> Deferred[None]:
        d: Deferred[Any] = self.worker.stop() if self.worker is not None else Deferred()
        if self.worker is None:
            d.callback(None)
        d.addCallback(lambda _: super(WebhookService, self).stopService())
        pool = self._pool
        if pool is not None:
            d.addCallback(lambda _: pool.closeCachedConnections())
        return d.addCallback(lambda _: None)


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
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = IDLE_PER_HOST
    pool.cachedConnectionTimeout = IDLE_SECONDS
    pool.retryAutomatically = False
    agent = WebhookAgent(
        reactor,
        pool=pool,
        allow_private=cfg.allow_private_targets,
        connect_timeout=cfg.connect_timeout_seconds,
        proxy=parse_host_port(cfg.proxy.split("://", 1)[1].rstrip("/")) if cfg.proxy else None,
        resolve=resolve,
        tls=tls,
    )
    sender = Sender(
        agent,
        clock=clock,
        timeout_seconds=cfg.timeout_seconds,
        max_response_bytes=cfg.max_response_bytes,
        user_agent="fastedge-webhooks/{} (node {})".format(__version__, node_id),
    )
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
    top = WebhookService(worker, pool)
    poll = TimerService(cfg.poll_seconds, worker.poll)
    poll.clock = clock
    poll.setName("poll")
    poll.setServiceParent(top)
    queue = TimerService(cfg.queue_seconds, worker.read_queue)
    queue.clock = clock
    queue.setName("queue")
    queue.setServiceParent(top)
    return top
