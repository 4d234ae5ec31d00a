# -*- test-case-name: tests.unit.test_tap,tests.unit.test_openapi -*-
"""``build_site()``: the one Site every public listener serves.

Mounts ``/api/`` (the comment API), ``/live`` (live threads: WebSocket, and
SSE at ``/live/events``), ``/media/`` (the CDN), ``/embed/`` and
``/widget.js`` (the comment widget), ``/healthz`` and ``/metrics``, and a
small HTML landing page at ``/``; any other path is a JSON 404.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import IService
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from . import __version__
from .config import HttpConfig, NodeConfig
from .http.accesslog import AccessLog
from .http.connections import ConnectionGate, connection_ceiling, descriptor_limit
from .http.health import HealthResource
from .http.jsonbody import JsonNotFound, write_error
from .http.metrics import HttpMetrics, LimitMetrics
from .http.ops import OpsNetworks
from .http.site import EdgeSite, RefusalPage
from .metrics.resource import MetricsResource
from .residency.gate import ResidencyGate
from .store.interfaces import IStore

_LANDING = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fastedge {node_id}</title>
</head>
<body>
<h1>fastedge {version}</h1>
<p>Node <b>{node_id}</b> of deployment <b>{deployment}</b>, region {region}.</p>
<ul>
<li><a href="/healthz">/healthz</a>: the node's health (JSON)</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="/api/v1/mesh">/api/v1/mesh</a>: the mesh as this node sees it (JSON)</li>
<li><a href="/status">/status</a>: the status page (the mesh on a map, this node's figures)</li>
<li><code>/api/v1/</code>: the comment API; <code>/live</code> (WebSocket) and
<code>/live/events</code> (SSE): live threads; <code>/media/</code>: the CDN</li>
</ul>
<p>Documentation ships with the source, not with the node: <code>README.md</code>,
<code>docs/openapi.yaml</code> (every HTTP route), <code>docs/live-protocol.md</code>,
<code>docs/mesh.md</code>, <code>docs/consistency.md</code>.</p>
</body>
</html>
"""


class LandingPage(Resource):
    """``GET /``: a small HTML page (no script) naming the node and linking
    to what an operator opens first. Only ``/`` itself: other unknown
    paths stay JSON 404s.

    :param node: the node's identity, shown on the page.
    """

    isLeaf = True

    def __init__(self, node: NodeConfig) -> None:
        super().__init__()
        self._body = _LANDING.format(
            version=html.escape(__version__),
            node_id=html.escape(node.id),
            deployment=html.escape(node.deployment),
            region=html.escape(node.region),
        ).encode("utf-8")

    def render_GET(self, request: Request) -> bytes:
        request.route = "/"  # type: ignore[attr-defined]
        if request.postpath not in ([], [b""]):
            write_error(request, 404, "not_found", "no such resource")
            return NOT_DONE_YET  # type: ignore[return-value]
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"default-src 'none'")
        return self._body

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


class EdgeRoot(Resource):
    """The root: named children, a JSON 404 for everything else."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return JsonNotFound()

    def render(self, request: Request) -> int:
        return JsonNotFound().render(request)


def build_site(
    node: NodeConfig,
    http: HttpConfig,
    *,
    reactor: Any,
    registry: CollectorRegistry,
    store: IStore,
    store_ready: Callable[[], bool],
    api: IResource,
    children: Callable[[], Iterable[IService]],
    live: IResource | None = None,
    media: IResource | None = None,
    embed: IResource | None = None,
    widget: IResource | None = None,
    body_limits: Iterable[tuple[bytes, int]] = (),
    refusal_pages: Iterable[tuple[bytes, RefusalPage]] = (),
    mesh_health: Callable[[], dict[str, Any]] | None = None,
    descriptors: int | None = None,
    access_log: AccessLog | None = None,
    residency: ResidencyGate | None = None,
    status: IResource | None = None,
) -> EdgeSite:
    """The node's Site.

    :param children: the node's child services, for ``/healthz``.
    :param live: the live-threads resource (``fastedge.live``), at ``/live``.
    :param media: the CDN's ``/media`` resource.
    :param embed: the comment widget's pages (``fastedge.embed``), at ``/embed``.
    :param widget: the widget snippet, at ``/widget.js``.
    :param body_limits: request body limits of particular paths (uploads,
        the embed page's form).
    :param refusal_pages: pages answering an oversized body under a path
        prefix instead of the JSON 413 (the embed page's, in HTML).
    :param mesh_health: the mesh's summary, for ``/healthz``.
    :param descriptors: the descriptor limit the connection ceiling is
        derived from (default: the process's, ``ulimit -n``).
    :param access_log: the access log (``None``: off).
    :param residency: refuses requests for another deployment's tenants
        (:class:`fastedge.residency.gate.ResidencyGate`; ``None``: no check).
    :param status: the operators' status page (``fastedge.status``), at
        ``/status`` (answered only to ``http.ops_networks``).
    """
    root = EdgeRoot()
    root.putChild(b"", LandingPage(node))
    root.putChild(b"api", api)
    if live is not None:
        root.putChild(b"live", live)
    if media is not None:
        root.putChild(b"media", media)
    if embed is not None:
        root.putChild(b"embed", embed)
    if widget is not None:
        root.putChild(b"widget.js", widget)
    if status is not None:
        root.putChild(b"status", status)
    root.putChild(
        b"healthz",
        HealthResource(
            node_id=node.id,
            deployment=node.deployment,
            version=__version__,
            store=store,
            store_ready=store_ready,
            children=children,
            mesh=mesh_health,
            detail=lambda request: site.sees_ops(request),
        ),
    )
    root.putChild(b"metrics", MetricsResource(registry))
    if descriptors is None:
        descriptors = descriptor_limit()
    connections = ConnectionGate(
        max_connections=connection_ceiling(http.max_connections, http.reserved_descriptors, descriptors),
        per_ip=http.max_connections_per_ip,
        per_prefix=http.max_connections_per_prefix,
        ipv4_prefix=http.ipv4_prefix_length,
        ipv6_prefix=http.ipv6_prefix_length,
        metrics=LimitMetrics(registry),
    )
    site = EdgeSite(
        root,
        reactor=reactor,
        max_body_bytes=http.max_body_bytes,
        metrics=HttpMetrics(registry, http.slow_request_seconds),
        body_limits=body_limits,
        refusal_pages=refusal_pages,
        connections=connections,
        header_timeout=http.header_timeout_seconds,
        body_timeout=http.body_timeout_seconds,
        access_log=access_log,
        ops_networks=OpsNetworks(http.ops_networks),
        residency=residency,
    )
    return site
