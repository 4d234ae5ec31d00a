"""The mesh child service: start-up checks, files, views, stop."""

from __future__ import annotations

import dataclasses
import os

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import MeshConfig, NodeConfig, parse_config
from fastedge.mesh.service import make_service
from fastedge.mesh.tls import MeshCertificateError
from fastedge.metrics.registry import new_registry
from fastedge.testing.fakes import EPOCH
from fastedge.testing.mesh import MemoryMesh, MemoryNetwork, mesh_pair

from .common import metric


class StartTests(SynchronousTestCase):
    def service(self, host: str = "127.0.0.1", data_dir: str | None = None, **mesh: object):  # type: ignore[no-untyped-def]
        from twisted.internet.task import Clock

        clock = Clock()
        clock.advance(EPOCH)
        data_dir = data_dir or os.path.abspath(self.mktemp())
        cfg = parse_config("", overrides={"node.data_dir": data_dir, "node.id": "solo"})
        network = MemoryNetwork(clock)
        self.registry = new_registry()
        service = make_service(
            dataclasses.replace(cfg.mesh, **mesh),
            node=cfg.node,
            reactor=clock,
            registry=self.registry,
            listen_endpoint=network.server_endpoint(host),
            client_endpoint=network.client_endpoints(host),
        )
        self.addCleanup(lambda: (self.successResultOf(service.stopService()) if service.running else None))
        return service, cfg

    def test_lone_node_makes_its_own_ca(self) -> None:
        """A node with no seeds and no certificate files creates a cluster CA
        and its certificate at first start (warning about it), and reuses
        them afterwards."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        service, cfg = self.service()
        service.privilegedStartService()
        service.startService()
        mesh_dir = os.path.dirname(cfg.mesh.ca_file)
        self.assertEqual(
            sorted(os.listdir(mesh_dir)),
            ["ca.key", "ca.pem", "incarnation", "node.key", "node.pem"],
        )
        self.assertEqual(os.stat(os.path.join(mesh_dir, "node.key")).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(os.path.join(mesh_dir, "ca.key")).st_mode & 0o777, 0o600)
        self.assertEqual(len([e for e in events if "created a new cluster CA" in e["log_format"]]), 1)
        with open(cfg.mesh.ca_file, "rb") as f:
            ca = f.read()
        self.successResultOf(service.stopService())
        again, _ = self.service(data_dir=cfg.node.data_dir)
        again.privilegedStartService()
        with open(cfg.mesh.ca_file, "rb") as f:
            self.assertEqual(f.read(), ca)
        self.assertEqual(again.incarnation, 2)

    def test_seeds_need_certificates(self) -> None:
        """A node configured to join others never makes a CA of its own: it
        refuses to start, naming the missing file."""
        service, cfg = self.service(seeds=("10.0.0.2:7946",))
        with self.assertRaises(MeshCertificateError) as cm:
            service.privilegedStartService()
        self.assertIn(cfg.mesh.ca_file, str(cm.exception))
        self.assertIsNone(service.port)

    def test_wildcard_listener_needs_advertise(self) -> None:
        """Listening on all interfaces, the address to announce must be
        configured; when it is, it is what the node announces."""
        service, _ = self.service(host="0.0.0.0")
        service.privilegedStartService()
        with self.assertRaises(MeshCertificateError) as cm:
            service.startService()
        self.assertIn("mesh.advertise", str(cm.exception))
        service, _ = self.service(host="0.0.0.0", advertise="[2001:db8::7]:7000")
        service.privilegedStartService()
        service.startService()
        self.assertEqual(
            (service.membership.me.mesh_host, service.membership.me.mesh_port),
            ("2001:db8::7", 7000),
        )

    def test_certificate_expiry_exported(self) -> None:
        """The node's certificate expiry is a metric (for rotation alerts)."""
        service, cfg = self.service()
        service.privilegedStartService()
        expiry = self.registry.get_sample_value("fastedge_mesh_certificate_expiry_timestamp_seconds")
        self.assertGreater(expiry, EPOCH)


class ViewTests(SynchronousTestCase):
    def test_status_and_health(self) -> None:
        """status() lists every node with its announcement, state and (for
        peers) link and round trip; health() counts peers by state."""
        mesh, a, b = mesh_pair(self)
        mesh.advance(1.0)
        status = a.status()
        self.assertEqual((status["nodeId"], status["incarnation"]), ("a", 1))
        by_id = {n["nodeId"]: n for n in status["nodes"]}
        self.assertEqual(set(by_id), {"a", "b"})
        self.assertTrue(by_id["a"]["self"])
        self.assertNotIn("link", by_id["a"])
        self.assertEqual((by_id["b"]["state"], by_id["b"]["link"]), ("alive", "up"))
        self.assertIsInstance(by_id["b"]["rttMs"], float)
        self.assertEqual(by_id["b"]["addresses"], [mesh.host("b")])
        self.assertEqual(
            a.health(),
            {
                "incarnation": 1,
                "peers": {"alive": 1, "suspect": 0, "dead": 0, "leaving": 0},
            },
        )
        self.assertEqual(metric(mesh, "a", "fastedge_mesh_links", state="up"), 1.0)

    def test_stop_closes_everything(self) -> None:
        """Stopping fires once the listener, every link and every incoming
        connection are closed."""
        mesh, a, b = mesh_pair(self)
        factory = a.server_factory
        self.assertEqual(len(factory.brokers), 1)
        mesh.stop("a")
        self.assertEqual(factory.brokers, set())
        self.assertNotIn(("127.0.0.1", 7001), mesh.network.listeners)
        self.assertEqual(metric(mesh, "a", "fastedge_mesh_links", state="up"), 0.0)
        self.assertEqual(metric(mesh, "a", "fastedge_mesh_links", state="connecting"), 0.0)

    def test_not_started(self) -> None:
        """Before it starts, the service answers views with an empty map."""
        from twisted.internet.task import Clock

        clock = Clock()
        network = MemoryNetwork(clock)
        service = make_service(
            MeshConfig(),
            node=NodeConfig(id="x", data_dir=self.mktemp()),
            reactor=clock,
            registry=new_registry(),
            listen_endpoint=network.server_endpoint("127.0.0.1"),
            client_endpoint=network.client_endpoints("127.0.0.1"),
        )
        self.assertEqual(service.status()["nodes"], [])
        self.assertEqual(service.health()["peers"]["alive"], 0)
        self.assertEqual(self.successResultOf(service.stopService()), None)


class LoadTests(SynchronousTestCase):
    def test_load_from_the_transport(self) -> None:
        """The announced load is the load callable's value, sampled every
        load_report_seconds."""
        load = [3]
        mesh = MemoryMesh(self, load_report_seconds=2.0)
        a = mesh.add("a", load=lambda: load[0])
        self.assertEqual(a.node_map.nodes()["a"].load, 3)
        load[0] = 4
        mesh.advance(1.0)
        self.assertEqual(a.node_map.nodes()["a"].load, 3)
        mesh.advance(1.1)
        self.assertEqual(a.node_map.nodes()["a"].load, 4)
