"""Outgoing mesh links leave from the mesh listener's address
(``fastedge.mesh.service.link_source``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import MeshConfig, NodeConfig
from fastedge.mesh.service import link_source, make_service


class LinkSourceTests(SynchronousTestCase):
    def test_specific_interface(self) -> None:
        """A listener on one address makes links leave from that address
        (any port)."""
        endpoint = serverFromString(MemoryReactorClock(), "tcp:7946:interface=127.0.0.21")
        self.assertEqual(link_source(endpoint), ("127.0.0.21", 0))

    def test_wildcard(self) -> None:
        """A listener on every address leaves the source to the system."""
        for text in ("tcp:7946", "tcp:7946:interface=0.0.0.0", "tcp6:7946:interface=\\:\\:"):
            self.assertIsNone(link_source(serverFromString(MemoryReactorClock(), text)), text)

    def test_links_bind(self) -> None:
        """The node's links to peers are bound to the listener's address, and
        not for a peer of the other address family."""
        reactor = MemoryReactorClock()
        mesh = make_service(
            MeshConfig(endpoint="tcp:0:interface=127.0.0.21"),
            node=NodeConfig(id="a", addresses=("127.0.0.21",)),
            reactor=reactor,
            registry=CollectorRegistry(),
        )
        endpoint = mesh._client_endpoint("127.0.0.22", 7946)
        self.assertEqual(endpoint._bindAddress, ("127.0.0.21", 0))
        self.assertIsNone(mesh._client_endpoint("::1", 7946)._bindAddress)
