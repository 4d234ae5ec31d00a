# -*- test-case-name: tests.unit.http.test_health -*-
"""``GET /healthz``: is this node fit to serve? For load balancers and people."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..store.interfaces import IStore
from ..store.model import ReadPreference
from .jsonbody import encode, write_json


class HealthResource(Resource):
    """200 when the store answers, else 503. To the operators' networks
    (``http.ops_networks``) it also lists the node, its children, the
    store's state and the mesh's peers by state; anyone else (a load
    balancer on the public side) gets ``{"status": ...}`` alone.

    :param children: called per request, so it sees the node as it is now.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        *,
        node_id: str,
        deployment: str,
        version: str,
        store: IStore,
        store_ready: Callable[[], bool],
        children: Callable[[], Iterable[IService]],
        mesh: Callable[[], dict[str, Any]] | None = None,
        detail: Callable[[Request], bool] = lambda request: True,
    ) -> None:
        """:param detail: whether a request may see more than the status."""
        super().__init__()
        self._node = {"nodeId": node_id, "deployment": deployment, "version": version}
        self._store = store
        self._store_ready = store_ready
        self._children = children
        self._mesh = mesh
        self._detail = detail

    def render_GET(self, request: Request) -> int:
        request.route = "/healthz"  # type: ignore[attr-defined]
        children = {c.name: {"running": bool(c.running)} for c in self._children()}

        def answer(store_ok: bool, reason: str | None) -> None:
            request.setHeader(b"cache-control", b"no-store")
            status = 200 if store_ok else 503
            if not self._detail(request):
                write_json(request, status, encode({"status": "ok" if store_ok else "unavailable"}))
                return
            store: dict[str, object] = {"usable": store_ok}
            if not store_ok:
                store["reason"] = reason
            body: dict[str, object] = dict(self._node, status="ok" if store_ok else "unavailable")
            body.update(children=children, store=store)
            if self._mesh is not None:
                # The mesh does not decide the status: a node cut off from
                # its peers still serves its clients.
                body["mesh"] = self._mesh()
            write_json(request, status, encode(body))

        def failed(f: Failure) -> None:
            self._log.warn("health check: store unusable: {reason}", reason=f.getErrorMessage())
            answer(False, "the store does not answer")

        if not self._store_ready():
            answer(False, "the store is not open (starting, or failed to open: see the log)")
            return NOT_DONE_YET
        d = self._store.ping(read_preference=ReadPreference.NEAREST)
        d.addCallbacks(lambda _: answer(True, None), failed)
        return NOT_DONE_YET
