# -*- test-case-name: tests.unit.mesh.test_resource -*-
"""``GET /api/v1/mesh``: the live node map as this node sees it (read-only).

Like ``/metrics``, it shows operational data (node addresses, load,
versions), none of any tenant; operators who do not want it public filter
``/api/v1/mesh`` at their load balancer as they do ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..http.router import Call, Reply, Route

__all__ = ["mesh_routes"]


def mesh_routes(status: Callable[[], dict[str, Any]]) -> list[Route]:
    """The mesh's API routes.

    :param status: the node map with link details (``MeshService.status``).
    """

    def get_mesh(call: Call) -> Reply:
        if call.query:
            from ..http.errors import bad_request

            raise bad_request("this route takes no query parameters", code="bad_query")
        return Reply(200, status())

    return [Route(b"GET", "/api/v1/mesh", get_mesh)]
