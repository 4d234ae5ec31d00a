# -*- test-case-name: tests.unit.residency.test_peers -*-
"""The tenant directory across deployments, over the mesh.

A tenant this node's store does not hold may belong to another deployment,
whose nodes have their own store. :class:`DirectoryPeers` is the mesh
handler that asks them: one live node of each other deployment is asked
``directory_where(tenant)`` and answers the name of its own deployment when
its store holds that tenant of that deployment, else ``None``. Nothing else
crosses: no tenant settings, threads, comments or ids beyond the one asked.

It is the one handler the mesh lets other deployments call
(``cross_deployment``); the mesh still checks that the caller is a current,
logged-in node of the cluster, and bounds the calls per peer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from ..mesh.handler import MeshHandler
from ..mesh.interfaces import IMesh, IPeerSession
from ..mesh.messages import BadMessage
from ..mesh.nodemap import NodeState
from ..store.errors import NotFound
from ..store.interfaces import IStore
from ..store.model import ReadPreference

#: Longest tenant id a peer may ask about (ids are 16 characters).
_MAX_ID = 64


class DirectoryPeers(MeshHandler):
    """Asks other deployments which of them holds a tenant, and answers them.

    :param timeout: seconds to wait for the other deployments' answers.
    """

    name = "directory"
    max_calls_per_second = 200.0
    cross_deployment = True
    _log = Logger()

    def __init__(self, store: IStore, *, deployment: str, timeout: float = 2.0) -> None:
        super().__init__()
        self._store = store
        self._deployment = deployment
        self._timeout = timeout
        self.mesh: IMesh | None = None
        self.remote_calls = {"directory_where": self._where}

    def attach(self, mesh: IMesh) -> None:
        self.mesh = mesh

    # Asking

    def deployment_of(self, tenant_id: str) -> Deferred[str | None]:
        """The other deployment that holds ``tenant_id``, or ``None``."""
        mesh = self.mesh
        if mesh is None:
            return succeed(None)
        asked: list[Deferred[Any]] = []
        for node_id in sorted(self._one_node_per_other_deployment(mesh).values()):
            link = mesh.link_to(node_id, any_deployment=True)
            if link is None:
                continue
            d = mesh.call(link, "directory_where", tenant_id)
            d.addTimeout(self._timeout, mesh.clock)
            asked.append(d)
        if not asked:
            return succeed(None)

        def first(results: list[tuple[bool, Any]]) -> str | None:
            for ok, answer in results:
                if ok and isinstance(answer, str) and answer != self._deployment:
                    return answer
            failed = [answer for ok, answer in results if not ok]
            for f in failed:
                self._log.warn("tenant directory: a deployment did not answer: {reason}", reason=f.getErrorMessage())
            return None

        return DeferredList(asked, consumeErrors=True).addCallback(first)

    def _one_node_per_other_deployment(self, mesh: IMesh) -> dict[str, str]:
        chosen: dict[str, str] = {}
        for node_id, info in sorted(mesh.node_map.nodes().items()):
            if info.deployment == self._deployment or node_id == mesh.node_id:
                continue
            if info.state is NodeState.ALIVE and info.deployment not in chosen:
                if mesh.link_to(node_id, any_deployment=True) is not None:
                    chosen[info.deployment] = node_id
        return chosen

    # Answering

    def _where(self, session: IPeerSession, tenant_id: Any) -> Deferred[str | None]:
        if not isinstance(tenant_id, str) or not 0 < len(tenant_id) <= _MAX_ID:
            raise BadMessage("a tenant id must be text of at most {} characters".format(_MAX_ID))
        d = self._store.get_tenant(tenant_id, read_preference=ReadPreference.NEAREST)

        def found(tenant: Any) -> str | None:
            # Only a tenant of this deployment is claimed: a shared store's
            # tenant of a third deployment is that deployment's to say.
            return self._deployment if tenant.deployment == self._deployment else None

        def missing(f: Any) -> None:
            f.trap(NotFound)
            return None

        return d.addCallbacks(found, missing)
