# -*- test-case-name: tests.unit.residency.test_directory -*-
"""Which deployment a tenant belongs to.

The answer comes from the tenant record in this deployment's own store
(``Tenant.deployment``: a shared store may hold tenants of several
deployments), else from the other deployments, asked through the mesh
(:class:`IRemoteDirectory`; each node answers only for tenants of its own
store). Nothing but the tenant's deployment is read or kept: never its
settings, threads or comments.

Answers are kept in memory (:class:`~fastedge.expiring.ExpiringMap`): a
known tenant for ``ttl`` seconds (a tenant never changes deployment), an
unknown one for ``unknown_ttl`` (it may be created any moment), and lookups
of one tenant are coalesced (:class:`~fastedge.singleflight.SingleFlight`),
so a flood of requests for made-up tenants costs one store read per id per
``unknown_ttl``, bounded by ``max_entries``.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..expiring import ExpiringMap
from ..singleflight import SingleFlight
from ..store.errors import NotFound, StoreError
from ..store.interfaces import IStore
from ..store.model import ReadPreference

#: Kept for a tenant no deployment claims.
_UNKNOWN = ""


class IRemoteDirectory(Protocol):
    """The other deployments, asked through the mesh."""

    def deployment_of(self, tenant_id: str) -> Deferred[str | None]:
        """The deployment that claims ``tenant_id``, or ``None``."""


class TenantDirectory:
    """Tenant id -> deployment, for one node.

    :param deployment: this node's deployment.
    :param count: called with ``hit``, ``local``, ``remote``, ``unknown`` or
        ``error`` per lookup (for metrics).
    """

    _log = Logger()

    def __init__(
        self,
        store: IStore,
        clock: IReactorTime,
        *,
        deployment: str,
        count: Any = None,
        ttl: float = 300.0,
        unknown_ttl: float = 5.0,
        max_entries: int = 100_000,
        remote: IRemoteDirectory | None = None,
    ) -> None:
        """:param remote: the other deployments (the mesh's
        :class:`~fastedge.residency.peers.DirectoryPeers`), asked for
        tenants this store lacks."""
        self._store = store
        self.deployment = deployment
        self._count = count or (lambda result: None)
        self._ttl = ttl
        self._unknown_ttl = unknown_ttl
        self._known: ExpiringMap[str, str] = ExpiringMap(clock, max_entries=max_entries)
        self._flights = SingleFlight()
        self._remote = remote

    def cached(self, tenant_id: str) -> tuple[bool, str | None]:
        """``(True, deployment or None)`` when known without I/O (the hot
        path), else ``(False, None)``: call :meth:`deployment_of`."""
        found = self._known.get(tenant_id)
        if found is None:
            return False, None
        self._count("hit")
        return True, found or None

    def deployment_of(self, tenant_id: str) -> Deferred[str | None]:
        """The tenant's deployment, ``None`` when no deployment claims it.

        A store that fails is not an answer: the lookup fails (the caller
        lets the request through to its handler, which meets the same
        store and answers 503) and nothing is kept."""
        known, deployment = self.cached(tenant_id)
        if known:
            return succeed(deployment)
        return self._flights.run(tenant_id, lambda: self._look_up(tenant_id))

    def own(self, tenant_id: str, deployment: str) -> None:
        """Remember a tenant record just read (the handlers read it anyway)."""
        self._known.put(tenant_id, deployment, self._ttl)

    def forget(self, tenant_id: str) -> None:
        """Drop what is known of a tenant (created or deleted through this node)."""
        self._known.pop(tenant_id)

    @inlineCallbacks
    def _look_up(self, tenant_id: str) -> Any:
        deployment = None
        for preference in (ReadPreference.NEAREST, ReadPreference.PRIMARY):
            try:
                tenant = yield self._store.get_tenant(tenant_id, read_preference=preference)
            except NotFound:
                continue
            except StoreError:
                self._count("error")
                raise
            deployment = tenant.deployment
            self._count("local")
            break
        if deployment is None and self._remote is not None:
            try:
                deployment = yield self._remote.deployment_of(tenant_id)
            except Exception:
                self._log.failure("asking other deployments for tenant {tenant}", Failure(), tenant=tenant_id)
                self._count("error")
                raise
            if deployment is not None:
                self._count("remote")
        if deployment is None:
            self._count("unknown")
            self._known.put(tenant_id, _UNKNOWN, self._unknown_ttl)
        else:
            self._known.put(tenant_id, deployment, self._ttl)
        return deployment
