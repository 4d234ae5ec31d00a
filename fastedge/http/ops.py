# -*- test-case-name: tests.unit.http.test_ops -*-
"""Who may see the node's operational endpoints.

``/metrics``, ``/api/v1/mesh`` and ``/status`` show the node's insides
(peer addresses, load, replica lag, every counter), and ``/healthz``'s
detail shows its children and peers. They are answered only to clients in
``http.ops_networks`` (default: loopback, so a Prometheus or an operator on
the node's host, or an SSH tunnel, reaches them); anyone else gets the same
JSON 404 as for a path that does not exist, and ``/healthz`` answers them
with its status alone (what a load balancer needs).

The decision is made on the connection's peer address: the node terminates
client connections itself, so no forwarded-for header is trusted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

#: Paths answered only to the operators' networks (a path or a prefix of it).
OPS_PATHS = (b"/metrics", b"/api/v1/mesh", b"/status")


def is_ops_path(path: bytes) -> bool:
    """Whether ``path`` (without the query) is operational."""
    return any(path == p or path.startswith(p + b"/") for p in OPS_PATHS)


class OpsNetworks:
    """The networks operational endpoints are answered to."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def allows(self, host: str | None) -> bool:
        """Whether a client at ``host`` (the peer address; ``None`` for a
        connection that has none, such as a UNIX socket) may see them."""
        if host is None:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)
