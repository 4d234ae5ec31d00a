"""``twistd fastedge`` options and the service tree."""

from __future__ import annotations

import gc
import os

from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from fastedge import heap
from fastedge.tap import Node, Options, makeService
from fastedge.web import EdgeSite


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """With no arguments the node runs on the embedded defaults."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options.config.http.endpoint, "tcp:8080:interface=127.0.0.1:backlog=1024")
        self.assertEqual(options.config.store.backend, "sqlite")

    def test_overrides(self) -> None:
        """--http, --mesh, --node-id and --data-dir override the file."""
        options = Options()
        options.parseOptions(["--http", "tcp:0", "--mesh", "tcp:7000", "--node-id", "edge-1", "--data-dir", "/srv/fe"])
        cfg = options.config
        self.assertEqual(
            (cfg.http.endpoint, cfg.mesh.endpoint, cfg.node.id, cfg.node.data_dir),
            ("tcp:0", "tcp:7000", "edge-1", "/srv/fe"),
        )

    def test_bad_config_is_a_usage_error(self) -> None:
        """A bad config file fails option parsing (before twistd daemonizes or
        listens), with the key in the message."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[http]\nmax_body_bytes = -1\n")
        with self.assertRaises(UsageError) as cm:
            Options().parseOptions(["--config", path])
        self.assertEqual(str(cm.exception), "http.max_body_bytes: must be greater than 0")

    def test_bad_override(self) -> None:
        """A bad override is refused the same way."""
        with self.assertRaises(UsageError) as cm:
            Options().parseOptions(["--node-id", "Not Valid"])
        self.assertIn("node.id", str(cm.exception))


class MeshFilesTests(SynchronousTestCase):
    """A node with seeds joins an existing cluster and never makes its own
    CA: without its certificate files it is refused at option parsing, in
    one line naming the key and the command that makes the file."""

    def parse(self, *files: str) -> UsageError:
        data_dir = os.path.abspath(self.mktemp())
        mesh_dir = os.path.join(data_dir, "mesh")
        if files:
            from fastedge.testing.certs import write_node_certs

            written = write_node_certs(mesh_dir, "edge-1")
            for name in ("ca_file", "cert_file", "key_file"):
                if name not in files:
                    os.remove(written[name])
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[mesh]\nseeds = ["127.0.0.1:7999"]\n')
        with self.assertRaises(UsageError) as cm:
            Options().parseOptions(["--config", path, "--data-dir", data_dir, "--node-id", "edge-1"])
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        return cm.exception

    def test_no_files(self) -> None:
        """No CA certificate: the line names mesh.ca_file, its path and
        ``fastedge-admin certs ca``."""
        message = str(self.parse())
        self.assertTrue(message.startswith("mesh.ca_file: "), message)
        self.assertIn(os.path.join("mesh", "ca.pem"), message)
        self.assertIn("fastedge-admin certs ca", message)

    def test_no_certificate(self) -> None:
        """The CA but no node certificate: mesh.cert_file and
        ``fastedge-admin certs node NODE_ID``."""
        message = str(self.parse("ca_file", "key_file"))
        self.assertTrue(message.startswith("mesh.cert_file: "), message)
        self.assertIn("fastedge-admin certs node edge-1", message)

    def test_no_key(self) -> None:
        """No key: mesh.key_file and the same command."""
        message = str(self.parse("ca_file", "cert_file"))
        self.assertTrue(message.startswith("mesh.key_file: "), message)
        self.assertIn("fastedge-admin certs node edge-1", message)

    def test_unusable_files(self) -> None:
        """Files that exist but do not make an identity (here: a certificate
        of another CA) are refused at parsing too, naming the file."""
        from fastedge.testing.certs import test_ca, write_node_certs

        data_dir = os.path.abspath(self.mktemp())
        written = write_node_certs(os.path.join(data_dir, "mesh"), "edge-1", ca=test_ca("other"))
        with open(written["ca_file"], "wb") as f:
            f.write(test_ca()[0])
        with self.assertRaises(UsageError) as cm:
            Options().parseOptions(["--data-dir", data_dir, "--node-id", "edge-1"])
        self.assertIn("not signed by the CA", str(cm.exception))
        self.assertIn(written["cert_file"], str(cm.exception))

    def test_lone_node_may_start_without_files(self) -> None:
        """No seeds and no files: a lone node (it makes its own CA at start)."""
        options = Options()
        options.parseOptions(["--data-dir", os.path.abspath(self.mktemp())])
        self.assertEqual(options.config.mesh.seeds, ())


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        options = Options()
        options.parseOptions(["--data-dir", os.path.abspath(self.mktemp())])
        self.reactor = MemoryReactorClock()
        self.top = makeService(options, reactor=self.reactor)

    def test_named_children(self) -> None:
        """The node is a MultiService of named children, store first."""
        self.assertEqual(
            [c.name for c in self.top], ["drain", "store", "geo", "mesh", "dns", "live", "cdn", "webhooks", "http"]
        )

    def test_dns_answers_from_the_mesh_map(self) -> None:
        """DNS answers from the mesh's live node map (this node, once the
        mesh has started, with its configured addresses) and listens on UDP
        and TCP 5353."""
        options = Options()
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[mesh]\nadvertise = "127.0.0.1:7946"\n')
        options.parseOptions(["--config", path, "--data-dir", os.path.abspath(self.mktemp())])
        top = makeService(options, reactor=MemoryReactorClock())
        dns = top.getServiceNamed("dns")
        self.assertEqual(dns.getServiceNamed("udp").args[0], 5353)
        mesh = top.getServiceNamed("mesh")
        self.assertIs(dns.factory.authority.table._map, mesh.node_map)
        mesh.privilegedStartService()
        mesh.startService()
        self.addCleanup(mesh.stopService)
        choice = dns.factory.authority.table.choose("global", 4, None)
        self.assertEqual([a for a, _ in choice.addresses], ["127.0.0.1"])

    def test_unknown_policy_is_a_usage_error(self) -> None:
        """dns.policy naming no plugin is refused before anything starts."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[dns]\npolicy = "no-such-policy"\n')
        with self.assertRaises(UsageError) as cm:
            Options().parseOptions(["--config", path])
        self.assertIn("dns.policy: no answer policy 'no-such-policy'", str(cm.exception))

    def test_unknown_spam_check_is_a_usage_error(self) -> None:
        """spam.checks naming no built-in check and no plugin is refused
        before anything starts, naming the key and the known checks."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[spam]\nchecks = ["heuristic", "akismet"]\n')
        with self.assertRaises(UsageError) as cm:
            Options().parseOptions(["--config", path])
        self.assertIn("spam.checks: no spam check 'akismet' (known: heuristic", str(cm.exception))

    def test_transport_listens(self) -> None:
        """The transport binds the configured endpoint (with an explicit
        backlog) when started, serving the node's Site, and stops cleanly."""
        transport = self.top.getServiceNamed("http")
        transport.privilegedStartService()
        transport.startService()
        servers = {port: (factory, backlog, interface) for port, factory, backlog, interface in self.reactor.tcpServers}
        self.assertEqual(sorted(servers), [8080, 8443])
        factory, backlog, interface = servers[8080]
        self.assertEqual((backlog, interface), (1024, "127.0.0.1"))
        # The listener counts connections around the node's one Site.
        self.assertIsInstance(factory.wrappedFactory, EdgeSite)
        self.successResultOf(transport.stopService())

    def test_mesh_listens_apart_from_http(self) -> None:
        """The mesh binds its own endpoint (7946 on loopback by default), with
        TLS in front of Perspective Broker; the public HTTP port never
        serves PB."""
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from fastedge.mesh.broker import MeshServerFactory

        mesh = self.top.getServiceNamed("mesh")
        mesh.privilegedStartService()
        ((port, factory, backlog, interface),) = self.reactor.tcpServers
        self.assertEqual((port, interface), (7946, "127.0.0.1"))
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        self.assertIsInstance(factory.wrappedFactory, MeshServerFactory)
        self.successResultOf(mesh.stopService())


class GeoDatabaseOptionTests(SynchronousTestCase):
    def test_missing_geo_database(self) -> None:
        """A configured GeoIP database that is missing, or not a MaxMind DB,
        is refused in one line naming geo.database, before anything starts."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[geo]\ndatabase = "/nonexistent/City.mmdb"\n')
        with self.assertRaises(UsageError) as cm:
            Options().parseOptions(["--config", path])
        self.assertEqual(
            str(cm.exception),
            "geo.database: cannot read /nonexistent/City.mmdb (No such file or directory)",
        )
        foreign = os.path.abspath(self.mktemp())
        with open(foreign, "wb") as f:
            f.write(b"PK\x03\x04" + b"\0" * 1000)
        with open(path, "w") as f:
            f.write('[geo]\ndatabase = "{}"\n'.format(foreign))
        with self.assertRaises(UsageError) as cm:
            Options().parseOptions(["--config", path])
        self.assertIn("is not a MaxMind DB", str(cm.exception))


class HeapTests(SynchronousTestCase):
    def test_started_node_settles_the_heap(self) -> None:
        """Once its children have started, the node freezes what start-up
        made and raises the collector's generation-0 threshold to
        ``fastedge.heap.GC_GEN0_THRESHOLD`` (a node's connections are its
        long-lived objects; at Python's 700 a connect burst spent ~7 % of
        its CPU in collections), and logs both once."""
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        gc.set_threshold(700, *before[1:])
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        node = Node()
        node.startService()
        self.addCleanup(node.stopService)
        self.assertEqual(gc.get_threshold(), (heap.GC_GEN0_THRESHOLD, *before[1:]))
        self.assertGreater(gc.get_freeze_count(), 0)
        (settled,) = [e for e in events if e.get("threshold") is not None and "frozen" in e]
        self.assertEqual(settled["threshold"], heap.GC_GEN0_THRESHOLD)
        self.assertGreater(settled["frozen"], 0)
