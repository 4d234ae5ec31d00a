# -*- test-case-name: tests.unit.residency.test_gate -*-
"""Refusing requests for another deployment's tenant, before any handler.

A request whose path names a tenant (``/api/v1/<tenant>/...``,
``/embed/<tenant>/...``, ``/media/<tenant>/...``, and
``/live/events?tenant=...``) is checked against the
:class:`~fastedge.residency.directory.TenantDirectory`. A tenant of another
deployment is answered ``421 Misdirected Request``::

    {"error": {"code": "wrong_deployment",
               "message": "tenant t1 is served by deployment eu: use edge.eu.example.test",
               "deployment": "eu", "host": "edge.eu.example.test"}}

never proxied, and nothing of the tenant is read or cached here. Tenants of
this deployment, and tenants nobody claims (their handler answers 404), go
on to their handler. Paths that name a tenant otherwise (the tenant API's
key, a live subscription's message) are checked where the tenant is known
(:meth:`ResidencyGate.misdirected`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..config import ZoneConfig
from ..metrics.registry import label_counter
from ..store.interfaces import IStore
from .directory import TenantDirectory
from .metrics import ResidencyMetrics
from .peers import DirectoryPeers

_TENANT_PREFIXES = (b"/api/v1/", b"/embed/", b"/media/")
#: Segments under those prefixes that are not tenants.
_NOT_TENANTS = {b"manage", b"mesh", b"static"}


@dataclass(frozen=True)
class Misdirected:
    """A tenant of another deployment."""

    tenant_id: str
    deployment: str
    #: The host name that deployment's GeoDNS answers (``None``: not known here).
    host: str | None

    @property
    def message(self) -> str:
        where = "use " + self.host if self.host else "ask that deployment's nodes"
        return "tenant {} is served by deployment {}: {}".format(self.tenant_id, self.deployment, where)

    def error(self) -> dict[str, Any]:
        """The JSON error body's ``error`` object."""
        body: dict[str, Any] = {"code": "wrong_deployment", "message": self.message, "deployment": self.deployment}
        if self.host:
            body["host"] = self.host
        return body


def deployment_hosts(zones: Iterable[ZoneConfig]) -> dict[str, str]:
    """The host name each deployment's clients use: the first geo-routed
    name of the first zone of that deployment (``edge.eu.example.test``)."""
    hosts: dict[str, str] = {}
    for zone in zones:
        if zone.deployment in hosts or not zone.geo_names:
            continue
        name = zone.geo_names[0]
        hosts[zone.deployment] = zone.name if name == "@" else "{}.{}".format(name, zone.name)
    return hosts


def tenant_in_path(path: bytes, args: Mapping[bytes, list[bytes]]) -> str | None:
    """The tenant a request names in its target, if any."""
    if path == b"/live/events":
        values = args.get(b"tenant")
        return _decode(values[0]) if values else None
    for prefix in _TENANT_PREFIXES:
        if path.startswith(prefix):
            segment = path[len(prefix) :].split(b"/", 1)[0]
            if segment and segment not in _NOT_TENANTS:
                return _decode(segment)
    return None


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


class ResidencyGate:
    """The check, for this node's deployment.

    :param count: called with the kind of path (``api``, ``embed``,
        ``media``, ``live``, ``manage``) of every refused request.
    """

    _log = Logger()

    def __init__(
        self,
        directory: TenantDirectory,
        hosts: Mapping[str, str],
        *,
        count: Any = None,
        peers: Any = None,
    ) -> None:
        """:param peers: the mesh handler that asks other deployments
        (:class:`~fastedge.residency.peers.DirectoryPeers`), for ``tap`` to
        register with the mesh."""
        self.directory = directory
        self.peers = peers
        self.deployment = directory.deployment
        self._hosts = dict(hosts)
        self._count = count or (lambda kind: None)

    def misdirected(self, tenant_id: str, deployment: str | None, kind: str) -> Misdirected | None:
        """The refusal for a tenant of ``deployment`` (``None``: unknown),
        counted and logged; ``None`` when this node serves it."""
        if deployment is None or deployment == self.deployment:
            return None
        self._count(kind)
        self._log.info(
            "refused a {kind} request for tenant {tenant} of deployment {deployment}",
            kind=kind,
            tenant=tenant_id,
            deployment=deployment,
        )
        return Misdirected(tenant_id, deployment, self._hosts.get(deployment))

    def check(
        self, path: bytes, args: Mapping[bytes, list[bytes]]
    ) -> Misdirected | None | Deferred[Misdirected | None]:
        """For a request target: ``None`` (go on), a :class:`Misdirected`,
        or a Deferred of either when the directory must be asked first."""
        tenant_id = tenant_in_path(path, args)
        if tenant_id is None:
            return None
        kind = path.split(b"/", 2)[1].decode("ascii")
        known, deployment = self.directory.cached(tenant_id)
        if known:
            return self.misdirected(tenant_id, deployment, kind)
        d = self.directory.deployment_of(tenant_id)

        def failed(f: Any) -> None:
            # The store or the mesh failed: not an answer. The handler meets
            # the same store and answers for itself (503).
            self._log.warn(
                "residency check for tenant {tenant} failed: {reason}", tenant=tenant_id, reason=f.getErrorMessage()
            )
            return None

        return d.addCallbacks(lambda deployment: self.misdirected(tenant_id, deployment, kind), failed)


def residency_gate(
    deployment: str,
    zones: Iterable[ZoneConfig],
    *,
    store: IStore,
    clock: IReactorTime,
    registry: CollectorRegistry,
) -> ResidencyGate:
    """The node's gate: a directory over its store and the other
    deployments (asked over the mesh: register ``gate.peers`` with it), the
    deployments' host names from its DNS zones, and metrics."""
    metrics = ResidencyMetrics(registry)
    peers = DirectoryPeers(store, deployment=deployment)
    directory = TenantDirectory(
        store,
        clock,
        deployment=deployment,
        count=label_counter(metrics.lookups),
        remote=peers,
    )
    return ResidencyGate(directory, deployment_hosts(zones), count=label_counter(metrics.misdirected), peers=peers)
