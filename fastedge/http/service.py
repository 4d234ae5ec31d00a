# -*- test-case-name: tests.integration.test_tls,tests.integration.test_connections -*-
"""The ``http`` child: the public HTTP and HTTPS listeners and the
API's background work.

Both listeners serve the same :class:`EdgeSite`. HTTPS is TLS layered on a
plain TCP endpoint by :class:`~twisted.protocols.tls.TLSMemoryBIOFactory`,
with certificates from :class:`~fastedge.http.certs.CertificateStore`.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from ..config import HttpConfig, TlsConfig
from ..lifecycle import stop_in_order
from ..metrics.registry import new_registry
from .certs import CertificateStore, ensure_self_signed
from .connections import ConnectionGate
from .drain import Drain
from .metrics import ConnectionMetrics, DrainMetrics, TlsMetrics
from .site import EdgeSite
from .tls import CountingFactory, CountingTLSFactory, SniServerCreator, context_builder


class Listener(StreamServerEndpointService):
    """A listener that remembers its port once bound (for redirects and tests)."""

    port: IListeningPort | None = None

    def __init__(self, endpoint: Any, factory: Any, gate: ConnectionGate | None = None) -> None:
        """
        :param gate: pauses accepting on this listener at its ceiling.
        """
        super().__init__(endpoint, factory)
        self._gate = gate

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        if self._gate is not None:
            self._gate.watch(port)
        return port

    def stopService(self) -> Any:
        if self._gate is not None and self.port is not None:
            self._gate.unwatch(self.port)
        self.port = None
        return super().stopService()

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the port once bound (e.g. to learn the port of ``tcp:0``)."""
        d: Deferred[IListeningPort] = Deferred()

        def bound(port: IListeningPort) -> IListeningPort:
            d.callback(port)
            return port

        waiting = self._waitingForPort
        if waiting is None:
            raise RuntimeError("the listener has not been started")
        waiting.addCallback(bound)
        return d


class CertificateLoader(Service):
    """Loads the certificate directory before the HTTPS listener binds, and
    generates the self-signed default on first start when allowed."""

    _log = Logger()

    def __init__(
        self, store: CertificateStore, cfg: TlsConfig, *, self_signed_path: str, common_name: str, reactor: Any
    ) -> None:
        #: The certificates (their names are listed in the start-up summary).
        self.store = store
        self._cfg = cfg
        self._self_signed_path = self_signed_path
        self._common_name = common_name
        self._reactor = reactor

    def privilegedStartService(self) -> None:
        os.makedirs(self._cfg.cert_dir, mode=0o700, exist_ok=True)
        has_default = any(os.path.exists(os.path.join(self._cfg.cert_dir, "default" + ext)) for ext in (".pem", ".crt"))
        if not has_default and self._cfg.self_signed:
            now = datetime.datetime.fromtimestamp(self._reactor.seconds(), datetime.UTC)
            if ensure_self_signed(self._self_signed_path, self._common_name, now):
                self._log.warn(
                    "no default certificate in {directory}: generated a self-signed one at {path}",
                    directory=self._cfg.cert_dir,
                    path=self._self_signed_path,
                )
        self.store.refresh(force=True)
        # Fails start (before anything listens) when no default is usable.
        self.store.default_context()
        super().privilegedStartService()


class HttpService(MultiService):
    """The ``http`` child. Its stop is the node's drain, in this order,
    each step waited for:

    1. the listeners stop accepting (HTTP and HTTPS);
    2. the connections drain (:class:`~fastedge.http.drain.Drain`): live
       clients are told to go (``going_away``), idle connections close,
       requests and streams in flight get ``http.drain_seconds`` to finish,
       then what is left is closed;
    3. the other children stop in reverse order: the access log writes its
       last lines, and the API's background work flushes credit charges.

    :param going_away: called at step 2 (the live child's goodbye to its
        clients: ``move``, then close 1001).
    """

    def __init__(self, drain: Drain, going_away: Callable[[], object] | None = None) -> None:
        super().__init__()
        self.drain = drain
        self._going_away = going_away

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        children = list(self)
        listeners = [c for c in children if isinstance(c, Listener)]
        others = [c for c in reversed(children) if not isinstance(c, Listener)]
        d: Deferred[Any] = DeferredList([maybeDeferred(listener.stopService) for listener in listeners])
        d.addCallback(lambda _: self.drain.run(self._going_away))
        d.addCallback(lambda _: stop_in_order(others))
        return d


def make_service(
    cfg: HttpConfig,
    *,
    reactor: Any,
    site: EdgeSite,
    background: IService,
    registry: CollectorRegistry | None = None,
    tls: TlsConfig | None = None,
    data_dir: str = ".",
    node_id: str = "localhost",
    access_log: IService | None = None,
    going_away: Callable[[], object] | None = None,
) -> HttpService:
    """Listen on ``cfg.endpoint`` (and ``tls.endpoint``) with ``site``; run
    ``background`` alongside.

    Listeners bind in ``privilegedStartService`` (so a port below 1024 works
    with ``--uid``), and a failure to bind stops the node at start.

    :param access_log: the Site's access log service; it starts before the
        listeners, and its stop writes the last lines once they drained.
    :param going_away: see :class:`HttpService`.
    """
    if registry is None:
        registry = new_registry()
    drain = Drain(site.connections, clock=reactor, seconds=cfg.drain_seconds, metrics=DrainMetrics(registry))
    top = HttpService(drain, going_away)
    background.setServiceParent(top)
    if access_log is not None:
        access_log.setName("access-log")
        access_log.setServiceParent(top)
    connections = ConnectionMetrics(registry)
    gate = site.connections
    http = Listener(
        serverFromString(reactor, cfg.endpoint),
        CountingFactory(
            site,
            listener="http",
            metrics=connections,
            gate=gate,
            reactor=reactor,
            close_timeout=cfg.close_timeout_seconds,
        ),
        gate,
    )
    http._raiseSynchronously = True  # a port in use fails `twistd` loudly
    http.setName("http")
    http.setServiceParent(top)
    if tls is None or not tls.enabled:
        return top

    tls_metrics = TlsMetrics(registry)
    creator = SniServerCreator()
    store = CertificateStore(
        tls.cert_dir,
        clock=reactor,
        build_context=context_builder(tls.min_version, tls.ciphers, on_server_name=creator.on_server_name),
        check_seconds=tls.reload_check_seconds,
        metrics=tls_metrics,
        fallback=(os.path.join(data_dir, "selfsigned.pem"),) if tls.self_signed else None,
    )
    loader = CertificateLoader(
        store, tls, self_signed_path=os.path.join(data_dir, "selfsigned.pem"), common_name=node_id, reactor=reactor
    )
    loader.setName("certificates")
    loader.setServiceParent(top)
    creator.store = store
    https = Listener(
        serverFromString(reactor, tls.endpoint),
        CountingTLSFactory(
            creator,
            site,
            metrics=connections,
            tls_metrics=tls_metrics,
            gate=gate,
            reactor=reactor,
            close_timeout=cfg.close_timeout_seconds,
        ),
        gate,
    )
    https._raiseSynchronously = True
    https.setName("https")
    https.setServiceParent(top)
    if tls.redirect_http:

        def redirect_port() -> int | None:
            if tls.redirect_port:
                return tls.redirect_port
            port = https.port
            return port.getHost().port if port is not None else None  # type: ignore[attr-defined]

        site.redirect_port = redirect_port
    return top
