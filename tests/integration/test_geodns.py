"""GeoDNS over real loopback sockets: three in-process nodes, each with its
DNS server and its node map, and the defaults under ``twistd``."""

from __future__ import annotations

import os
import re
import struct
import sys
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from fastedge.config import DnsConfig, GeoConfig, ZoneConfig, derive_zone
from fastedge.dns import service as dns_service
from fastedge.geo.service import GeoService
from fastedge.mesh.nodemap import NodeMap, NodeState
from fastedge.metrics.registry import new_registry
from fastedge.testing.dns import PLACES, dns_query, dns_response, write_geo_db
from fastedge.testing.fakes import run_inline
from fastedge.testing.mesh import node_info

from .test_twistd import REPO, _env, _Watch, twistd_on_free_ports


class UdpClient(protocol.DatagramProtocol):
    """Sends one query at a time and fires with the answer."""

    def __init__(self) -> None:
        self.waiting: Deferred[bytes] | None = None

    def ask(self, data: bytes, port: int) -> Deferred[bytes]:
        self.waiting = Deferred()
        self.transport.write(data, ("127.0.0.1", port))
        return self.waiting

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.callback(data)


class TcpClient(protocol.Protocol):
    """Sends one length-prefixed query and fires with the answer."""

    def __init__(self, query: bytes) -> None:
        self.query = query
        self.buffer = b""
        self.answer: Deferred[bytes] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(struct.pack(">H", len(self.query)) + self.query)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= 2:
            (n,) = struct.unpack_from(">H", self.buffer)
            if len(self.buffer) >= 2 + n and not self.answer.called:
                self.answer.callback(self.buffer[2 : 2 + n])
                self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(None)


ZONES = tuple(
    derive_zone(z)
    for z in (
        ZoneConfig(name="edge.example.test", deployment="global", geo_names=("@",)),
        ZoneConfig(name="eu.edge.example.test", deployment="eu", geo_names=("@",)),
    )
)

A = node_info("a-lon", "london", addresses=("127.0.0.11",))
B = node_info("b-tyo", "tokyo", addresses=("127.0.0.12",))
C = node_info("c-fra", "frankfurt", deployment="eu", addresses=("127.0.0.13",))


class ThreeNodesTests(TestCase):
    """Three nodes as the mesh will run them: each holds the same node map
    (here changed by hand, as the mesh's membership protocol will)."""

    timeout = 30

    def setUp(self) -> None:
        db = write_geo_db(
            os.path.abspath(self.mktemp()),
            {
                "81.2.69.0/24": PLACES["london"],
                "203.0.113.0/24": PLACES["tokyo"],
                "192.0.2.0/24": PLACES["frankfurt"],
            },
        )
        self.maps: list[NodeMap] = []
        self.ports: list[int] = []
        for _node in (A, B, C):
            node_map = NodeMap()
            for info in (A, B, C):
                node_map.upsert(info)
            registry = new_registry()
            geo = GeoService(
                GeoConfig(database=db, request_file=db + ".req"),
                reactor=reactor,
                registry=registry,
                run=run_inline,
            )
            service = dns_service.make_service(
                DnsConfig(port=0, zones=ZONES),
                reactor=reactor,
                registry=registry,
                node_map=node_map,
                geo=geo,
            )
            geo.privilegedStartService()
            service.privilegedStartService()
            service.startService()
            self.addCleanup(service.stopService)
            self.maps.append(node_map)
            self.ports.append(service.getServiceNamed("udp")._port.getHost().port)
            self.tcp_port = service.getServiceNamed("tcp")._waitingForPort.result.getHost().port
        self.client = UdpClient()
        port = reactor.listenUDP(0, self.client, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

    @inlineCallbacks
    def ask(self, node: int, name: str, ecs: str) -> Any:
        answer = yield self.client.ask(dns_query(name, ecs=ecs), self.ports[node])
        return dns_response(answer)

    @inlineCallbacks
    def test_nearest_then_killed(self) -> None:
        """A query with an ECS subnet near B answers B first, at every node;
        once B is DEAD in the map the next query no longer answers B."""
        for node in range(3):
            response = yield self.ask(node, "edge.example.test", "203.0.113.0/24")
            self.assertEqual([rr.address for rr in response.answer[0]], ["127.0.0.12", "127.0.0.11"])
        for node_map in self.maps:
            node_map.set_state("b-tyo", NodeState.DEAD)
        for node in range(3):
            response = yield self.ask(node, "edge.example.test", "203.0.113.0/24")
            self.assertEqual([rr.address for rr in response.answer[0]], ["127.0.0.11"])

    @inlineCallbacks
    def test_eu_zone_never_answers_global(self) -> None:
        """The eu zone answers only the eu node, wherever the client is."""
        for ecs in ("81.2.69.0/24", "203.0.113.0/24", "192.0.2.0/24"):
            response = yield self.ask(0, "eu.edge.example.test", ecs)
            self.assertEqual([rr.address for rr in response.answer[0]], ["127.0.0.13"])

    @inlineCallbacks
    def test_tcp(self) -> None:
        """The same answers come over TCP."""
        client = TcpClient(dns_query("edge.example.test", ecs="81.2.69.0/24"))
        yield protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", self.tcp_port)
        response = dns_response((yield client.answer))
        yield client.closed
        self.assertEqual([rr.address for rr in response.answer[0]], ["127.0.0.11", "127.0.0.12"])


def dig_query(name: dns.name.Name | str, rdtype: str = "A") -> dns.message.Message:
    """A query shaped like dig's: RD and AD set, EDNS 0 with a 1232-byte
    buffer and a client COOKIE option."""
    query = dns.message.make_query(
        name, rdtype, use_edns=0, payload=1232, options=[dns.edns.GenericOption(10, b"\x01" * 8)]
    )
    query.flags |= dns.flags.AD
    return query


class OddQueryTests(TestCase):
    """Queries fuzzers sent, answered over real UDP and TCP sockets with
    messages dnspython reads as responses to them."""

    timeout = 30
    # The same three nodes (not a subclass: their tests would run again).
    setUp = ThreeNodesTests.setUp

    @inlineCallbacks
    def exchange(self, query: dns.message.Message) -> Any:
        """The answers over UDP and over TCP (dnspython messages), each
        checked to parse and to be a response to ``query``."""
        wire = query.to_wire(max_size=65535)
        udp = dns_response((yield self.client.ask(wire, self.ports[0])))
        client = TcpClient(wire)
        yield protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", self.tcp_port)
        tcp = dns_response((yield client.answer))
        yield client.closed
        for response in (udp, tcp):
            self.assertTrue(query.is_response(response))
        return udp, tcp

    @inlineCallbacks
    def test_dotted_labels(self) -> None:
        """A question whose first label holds a "." (short, or long enough
        that its length would read as a compression pointer) is answered
        FORMERR, a message dnspython parses."""
        for first in ([b".zzz"], [b"." + b"z" * 62, b"a" * 63, b"b" * 63]):
            name = dns.name.Name(first + [b"edge", b"example", b"test", b""])
            for response in (yield self.exchange(dig_query(name))):
                self.assertEqual(response.rcode(), dns.rcode.FORMERR)

    @inlineCallbacks
    def test_status_with_200_questions(self) -> None:
        """A STATUS message holding 200 questions gets NOTIMP whose header
        matches its body."""
        query = dig_query("edge.example.test")
        query.set_opcode(dns.opcode.STATUS)
        for i in range(199):
            name = dns.name.from_text("q{}.edge.example.test".format(i))
            query.question.append(dns.rrset.RRset(name, dns.rdataclass.IN, dns.rdatatype.A))
        self.assertEqual(len(query.question), 200)
        for response in (yield self.exchange(query)):
            self.assertEqual((response.rcode(), response.question), (dns.rcode.NOTIMP, []))

    @inlineCallbacks
    def test_common_query(self) -> None:
        """dig's ordinary query is answered over both transports with the
        question echoed."""
        for response in (yield self.exchange(dig_query("EdGe.example.test"))):
            self.assertEqual(str(response.question[0].name), "EdGe.example.test.")
            self.assertEqual([rr.address for rr in response.answer[0]], ["127.0.0.11", "127.0.0.12"])


class DefaultsTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_twistd_defaults_answer(self) -> None:
        """On the default config a node answers edge.fastedge.test A with
        127.0.0.1 and serves the SOA of fastedge.test (here on a free port)."""
        watch = _Watch()
        data_dir = os.path.abspath(self.mktemp())
        args = twistd_on_free_ports(data_dir)
        process = reactor.spawnProcess(watch, sys.executable, args, env=_env(), path=REPO)
        try:
            yield watch.started
            port = int(re.search(rb"EdgeDatagramProtocol starting on (\d+)", watch.output).group(1))  # type: ignore[union-attr]
            client = UdpClient()
            listening = reactor.listenUDP(0, client, interface="127.0.0.1")
            try:
                a = dns_response((yield client.ask(dns_query("edge.fastedge.test"), port)))
                soa = dns_response((yield client.ask(dns_query("fastedge.test", "SOA"), port)))
            finally:
                yield listening.stopListening()
        finally:
            process.signalProcess("TERM")
            yield watch.ended
        self.assertEqual([rr.address for rr in a.answer[0]], ["127.0.0.1"])
        self.assertEqual(
            (soa.rcode(), str(soa.answer[0][0].mname)),
            (dns.rcode.NOERROR, "ns1.fastedge.test."),
        )
