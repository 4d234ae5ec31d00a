"""Three mesh nodes in one process on real loopback sockets, with real TLS
and real PB. I/O runs on the reactor; every timer (heartbeats, the failure
detector, reconnects) runs on a Clock the test advances, so the timing of
failure detection is checked exactly, whatever the machine's load."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from fastedge.config import parse_config
from fastedge.mesh.nodemap import NodeMapChange, NodeState
from fastedge.mesh.service import MeshService, make_service
from fastedge.metrics.registry import new_registry
from fastedge.testing.certs import test_ca, write_node_certs
from fastedge.testing.fakes import EPOCH

#: The detector runs every heartbeat / 5 (defaults: 0.5 s, 1.5 s, 2.5 s).
TICK = 0.1
STEP = 0.05


class Cluster:
    """Mesh nodes on loopback sharing one test Clock."""

    def __init__(self, testcase: TestCase) -> None:
        self.tc = testcase
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.nodes: dict[str, MeshService] = {}
        self.data_dirs: dict[str, str] = {}

    def start(
        self,
        node_id: str,
        seeds: list[str] | None = None,
        ca: tuple[bytes, bytes] | None = None,
        **kw: Any,
    ) -> MeshService:
        if node_id not in self.data_dirs:
            self.data_dirs[node_id] = os.path.abspath(self.tc.mktemp())
            write_node_certs(os.path.join(self.data_dirs[node_id], "mesh"), node_id, ca=ca)
        if seeds is None:
            seeds = [self.address(n) for n, s in self.nodes.items() if s.running]
        cfg = parse_config(
            "",
            overrides={
                "node.id": node_id,
                "node.data_dir": self.data_dirs[node_id],
                "mesh.endpoint": "tcp:0:interface=127.0.0.1",
                "mesh.seeds": seeds,
            },
        )
        clock = self.clock
        service = make_service(
            cfg.mesh,
            node=cfg.node,
            reactor=reactor,
            registry=new_registry(),
            clock=clock,
            monotonic=clock.seconds,
            **kw,
        )
        service.privilegedStartService()
        service.startService()
        self.nodes[node_id] = service
        return service

    def address(self, node_id: str) -> str:
        port = self.nodes[node_id].port
        assert port is not None
        return "127.0.0.1:{}".format(port.getHost().port)

    def states(self, observer: str) -> dict[str, str]:
        return {n: i.state.value for n, i in self.nodes[observer].node_map.nodes().items()}

    @inlineCallbacks
    def settle(self) -> Any:
        """Wait until no node has a call awaiting an answer or a connection
        being made (real I/O on loopback), and the reactor has turned."""
        for _ in range(1000):
            yield gatherResults([n.membership.when_idle() for n in self.nodes.values() if n.running])
            yield deferLater(reactor, 0, lambda: None)
            if all(n.membership._pending == 0 for n in self.nodes.values() if n.running):
                return
        raise AssertionError("the mesh never settled")

    @inlineCallbacks
    def advance(self, seconds: float, until: Any = None) -> Any:
        """Advance the Clock in small steps, letting the I/O of each step
        finish; stop early once ``until()`` is true."""
        yield self.settle()
        steps = int(round(seconds / STEP))
        for _ in range(steps):
            if until is not None and until():
                return
            self.clock.advance(STEP)
            yield self.settle()

    def kill(self, node_id: str) -> None:
        """A crash: every connection of the node is aborted (no goodbye) and
        it does nothing more."""
        service = self.nodes[node_id]
        assert service.membership is not None and service.server_factory is not None
        service._ticker.stop()  # type: ignore[union-attr]
        service.membership.started = False
        links = [p.link for p in service.membership.peers.values() if p.link is not None]
        for link in links + list(service.membership.seed_links):
            if link.broker is not None:
                link.broker.transport.abortConnection()
            link.stop()
        for broker in list(service.server_factory.brokers):
            broker.transport.abortConnection()
        service.port.stopListening()  # type: ignore[union-attr]
        service.running = 0

    @inlineCallbacks
    def stop(self, node_id: str) -> Any:
        """A clean stop, waited for: the goodbyes and closes go over real
        sockets (no timer is involved unless a peer does not answer, which
        none does here)."""
        yield self.nodes[node_id].stopService()

    @inlineCallbacks
    def stop_all(self) -> Any:
        for node_id, service in list(self.nodes.items()):
            if service.running:
                yield self.stop(node_id)


class ThreeNodeTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        self.cluster = Cluster(self)
        self.addCleanup(self.cluster.stop_all)
        self.cluster.start("a", seeds=[])
        self.cluster.start("b")
        self.cluster.start("c")
        yield self.cluster.advance(1.0)

    def assertConverged(self, *node_ids: str) -> None:
        for node_id in node_ids:
            self.assertEqual(self.cluster.states(node_id), {n: "alive" for n in node_ids}, node_id)

    def test_converge(self) -> None:
        """Three nodes (b and c seeded with the running ones) converge to one
        map, everyone ALIVE, with a link up from each to each; every mesh
        connection has Nagle's algorithm off under its TLS."""
        self.assertConverged("a", "b", "c")
        for node_id, service in self.cluster.nodes.items():
            assert service.membership is not None
            self.assertEqual(
                {n for n, p in service.membership.peers.items() if p.link is not None and p.link.up},
                {"a", "b", "c"} - {node_id},
            )
            assert service.server_factory is not None
            for broker in service.server_factory.brokers:
                self.assertTrue(broker.transport.transport.getTcpNoDelay())
            for peer in service.membership.peers.values():
                self.assertTrue(peer.link.broker.transport.transport.getTcpNoDelay())

    @inlineCallbacks
    def test_clean_stop_withdrawn_at_once(self) -> Any:
        """A node that stops cleanly is LEAVING on the others as soon as its
        stop completes, with no time passing on the Clock."""
        changed: list[tuple[str, NodeMapChange]] = []
        for observer in ("a", "c"):
            self.cluster.nodes[observer].node_map.subscribe(lambda ch, o=observer: changed.append((o, ch)))
        before = self.cluster.clock.seconds()
        yield self.cluster.stop("b")
        self.assertEqual(self.cluster.clock.seconds(), before)
        self.assertEqual(self.cluster.states("a")["b"], "leaving")
        self.assertEqual(self.cluster.states("c")["b"], "leaving")
        self.assertEqual(sorted(o for o, ch in changed if ch.after.node_id == "b"), ["a", "c"])

    @inlineCallbacks
    def test_kill_is_dead_in_time_then_restart(self) -> Any:
        """A killed node is DEAD on both others within the dead timeout (plus
        a detector tick); started again it rejoins as a higher incarnation
        and everyone is ALIVE again."""
        dead_at: dict[str, float] = {}

        def watch(observer: str) -> None:
            def seen(change: NodeMapChange) -> None:
                if change.after.node_id == "c" and change.after.state is NodeState.DEAD:
                    dead_at.setdefault(observer, self.cluster.clock.seconds())

            self.cluster.nodes[observer].node_map.subscribe(seen)

        watch("a")
        watch("b")
        killed = self.cluster.clock.seconds()
        self.cluster.kill("c")
        yield self.cluster.advance(4.0, until=lambda: len(dead_at) == 2)
        self.assertEqual(set(dead_at), {"a", "b"})
        for observer, at in dead_at.items():
            self.assertLessEqual(at - killed, 2.5 + TICK + STEP, observer)
            self.assertGreaterEqual(at - killed, 2.5 - 0.5, observer)

        self.cluster.start("c", seeds=[self.cluster.address("a")])
        yield self.cluster.advance(1.0)
        self.assertConverged("a", "b", "c")
        for observer in ("a", "b"):
            self.assertEqual(self.cluster.nodes[observer].node_map.nodes()["c"].incarnation, 2)

    @inlineCallbacks
    def test_wrong_ca_and_wrong_name_refused(self) -> Any:
        """A node with a certificate of another CA, and a node whose
        certificate names another node, are refused by the mesh (logged);
        nobody takes them into their map."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from fastedge.mesh.tls import MeshIdentity, create_node_certificate

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.cluster.start("evil", seeds=[self.cluster.address("a")], ca=test_ca("other"))
        ca, key = test_ca()
        cert, cert_key = create_node_certificate("b", ca, key)
        liar = MeshIdentity(
            "liar",
            x509.load_pem_x509_certificate(ca),
            x509.load_pem_x509_certificate(cert),
            serialization.load_pem_private_key(cert_key, None),  # type: ignore[arg-type]
        )
        self.cluster.start("liar", seeds=[self.cluster.address("a")], identity=liar)
        yield self.cluster.advance(1.0)
        for node_id in ("a", "b", "c"):
            self.assertEqual(set(self.cluster.states(node_id)), {"a", "b", "c"})
        self.assertEqual(self.cluster.states("evil"), {"evil": "alive"})
        self.assertEqual(self.cluster.states("liar"), {"liar": "alive"})
        tls = [e for e in events if "TLS handshake" in e.get("log_format", "") and e.get("direction") == "from"]
        self.assertTrue(tls)
        names = [e for e in events if "refused" in e.get("log_format", "") and e.get("peer") == "liar"]
        self.assertEqual(names[0]["reason"], "the certificate is for b, not liar")
