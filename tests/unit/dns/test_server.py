"""The GeoDNS server answering in memory: geo answers from a real NodeMap
and a real GeoIP index, the zone's records, errors, EDNS, ECS, truncation."""

from __future__ import annotations

import os
import struct

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import ZoneConfig
from fastedge.mesh.nodemap import NodeState
from fastedge.testing.dns import PLACES, DnsHarness, dns_query, dns_response, write_geo_db
from fastedge.testing.mesh import node_info

GEO = {
    "81.2.69.0/24": PLACES["london"],
    "203.0.113.0/24": PLACES["tokyo"],
    "198.51.100.0/24": PLACES["new-york"],
    "2001:db8:1::/48": PLACES["sydney"],
    "192.0.2.128/26": PLACES["frankfurt"],
}

LON = node_info("lon", "london", addresses=("192.0.2.10", "2001:db8::10"))
FRA = node_info("fra", "frankfurt", addresses=("192.0.2.20", "2001:db8::20"))
NYC = node_info("nyc", "new-york", addresses=("192.0.2.30",))
TYO = node_info("tyo", "tokyo", addresses=("192.0.2.40", "2001:db8::40"))
EU_PAR = node_info(
    "eu-fra",
    "frankfurt",
    deployment="eu",
    addresses=("192.0.2.50", "2001:db8::50"),
    region="eu-central",
)
EU_LON = node_info(
    "eu-lon",
    "london",
    deployment="eu",
    addresses=("192.0.2.60", "2001:db8::60"),
    region="eu-west",
)

ZONES = (
    ZoneConfig(name="edge.example.test", deployment="global", geo_names=("@", "www")),
    ZoneConfig(name="eu.edge.example.test", deployment="eu", geo_names=("@",)),
)


class ServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = write_geo_db(os.path.abspath(self.mktemp()), GEO)

    def harness(self, nodes=(LON, FRA, NYC, TYO, EU_PAR, EU_LON), **kw) -> DnsHarness:  # type: ignore[no-untyped-def]
        kw.setdefault("zones", ZONES)
        return DnsHarness(self, nodes=nodes, geo_db=self.db, **kw)


class GeoAnswerTests(ServerTestCase):
    def test_nearest_by_ecs(self) -> None:
        """With ECS the k nearest live nodes of the deployment are answered,
        nearest first, and the option is echoed with the scope of the GeoIP
        network that decided."""
        h = self.harness()
        self.assertEqual(
            h.addresses("edge.example.test", ecs="81.2.69.0/24"),
            ["192.0.2.10", "192.0.2.20"],
        )
        self.assertEqual(
            h.addresses("edge.example.test", ecs="203.0.113.0/24"),
            ["192.0.2.40", "192.0.2.20"],
        )
        response = h.ask("edge.example.test", ecs="192.0.2.128/25")
        (option,) = response.options
        self.assertEqual((option.address, option.srclen, option.scopelen), ("192.0.2.128", 25, 26))
        self.assertEqual([rr.address for rr in response.answer[0]], ["192.0.2.20", "192.0.2.10"])

    def test_nearest_by_source_address(self) -> None:
        """Without ECS the source address locates the client, and no ECS
        option is sent back."""
        h = self.harness()
        response = h.ask("edge.example.test", source="198.51.100.9", edns=True)
        self.assertEqual([rr.address for rr in response.answer[0]], ["192.0.2.30", "192.0.2.10"])
        self.assertEqual(list(response.options), [])

    def test_aaaa(self) -> None:
        """AAAA answers the nearest nodes that have an IPv6 address."""
        h = self.harness()
        self.assertEqual(
            h.addresses("edge.example.test", "AAAA", ecs="198.51.100.0/24"),
            ["2001:db8::10", "2001:db8::20"],
        )
        self.assertEqual(
            h.addresses("www.edge.example.test", "AAAA", ecs="2001:db8:1::/48"),
            ["2001:db8::40", "2001:db8::20"],
        )

    def test_k_and_ttl(self) -> None:
        """dns.answers sets how many nodes are answered; dns.ttl their TTL."""
        h = self.harness(answers=3, ttl=7)
        response = h.ask("edge.example.test", ecs="81.2.69.0/24")
        self.assertEqual(
            [rr.address for rr in response.answer[0]],
            ["192.0.2.10", "192.0.2.20", "192.0.2.30"],
        )
        self.assertEqual(response.answer[0].ttl, 7)

    def test_unhealthy_nodes_never_answered(self) -> None:
        """SUSPECT, DEAD and LEAVING nodes are dropped from the very next
        answer, and come back when ALIVE again (the map is observed)."""
        h = self.harness()
        for state in (NodeState.SUSPECT, NodeState.DEAD, NodeState.LEAVING):
            h.node_map.set_state("lon", state)
            self.assertEqual(
                h.addresses("edge.example.test", ecs="81.2.69.0/24"),
                ["192.0.2.20", "192.0.2.30"],
            )
        h.node_map.set_state("lon", NodeState.ALIVE)
        self.assertEqual(
            h.addresses("edge.example.test", ecs="81.2.69.0/24"),
            ["192.0.2.10", "192.0.2.20"],
        )

    def test_new_node_answered_at_once(self) -> None:
        """A node that joins is answered by the next query."""
        h = self.harness(nodes=(NYC,))
        self.assertEqual(h.addresses("edge.example.test", ecs="81.2.69.0/24"), ["192.0.2.30"])
        h.node_map.upsert(LON)
        self.assertEqual(
            h.addresses("edge.example.test", ecs="81.2.69.0/24"),
            ["192.0.2.10", "192.0.2.30"],
        )

    def test_deployments_are_separate(self) -> None:
        """The eu zone answers only eu nodes, and the global zone none of them,
        whatever the client; with no eu node live, the eu zone answers the
        eu node live most recently (with ``dns.stale_ttl``), never a node of
        another deployment (tests.unit.dns.test_lone_deployment)."""
        h = self.harness()
        for ecs in ("81.2.69.0/24", "203.0.113.0/24", "2001:db8:1::/48"):
            self.assertEqual(
                sorted(h.addresses("eu.edge.example.test", ecs=ecs)),
                ["192.0.2.50", "192.0.2.60"],
            )
            self.assertFalse({"192.0.2.50", "192.0.2.60"} & set(h.addresses("edge.example.test", ecs=ecs)))
        h.node_map.set_state("eu-fra", NodeState.DEAD)
        h.node_map.set_state("eu-lon", NodeState.DEAD)
        response = h.ask("eu.edge.example.test", ecs="81.2.69.0/24")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual([rr.address for rr in response.answer[0]], ["192.0.2.60"])
        self.assertEqual(response.answer[0].ttl, h.config.stale_ttl)

    def test_unknown_location(self) -> None:
        """A client the GeoIP index does not know gets the default region's
        nodes, else any live nodes; its ECS scope is the empty network's."""
        h = self.harness(default_region="tokyo")
        self.assertEqual(h.addresses("edge.example.test", source="127.0.0.1"), ["192.0.2.40"])
        h.node_map.set_state("tyo", NodeState.DEAD)
        self.assertEqual(
            h.addresses("edge.example.test", source="127.0.0.1"),
            ["192.0.2.20", "192.0.2.10"],
        )

    def test_ecs_source_zero(self) -> None:
        """ECS with source prefix 0 (client opted out) is answered for the
        source address with scope 0."""
        h = self.harness()
        response = h.ask("edge.example.test", ecs="0.0.0.0/0", source="203.0.113.9")
        self.assertEqual(response.answer[0][0].address, "192.0.2.40")
        self.assertEqual(response.options[0].scopelen, 0)

    def test_without_geoip(self) -> None:
        """With no GeoIP database every client is unknown: any live nodes,
        ECS scope 0."""
        h = DnsHarness(self, nodes=(LON, NYC), zones=ZONES)
        response = h.ask("edge.example.test", ecs="81.2.69.0/24")
        self.assertEqual([rr.address for rr in response.answer[0]], ["192.0.2.10", "192.0.2.30"])
        self.assertEqual(response.options[0].scopelen, 0)

    def test_new_geoip_index(self) -> None:
        """Locations remembered from the old GeoIP index are forgotten when a
        new index is swapped in."""
        h = self.harness()
        self.assertEqual(h.addresses("edge.example.test", ecs="81.2.69.0/24")[0], "192.0.2.10")
        write_geo_db(self.db, {"81.2.69.0/24": PLACES["tokyo"]})
        assert h.geo is not None
        self.assertTrue(self.successResultOf(h.geo.rebuild("admin")))
        self.assertEqual(h.addresses("edge.example.test", ecs="81.2.69.0/24")[0], "192.0.2.40")

    def test_metrics(self) -> None:
        """Queries are counted by type, rcode and path; answers by node; ECS
        queries; and a latency histogram is kept."""
        h = self.harness()
        h.ask("edge.example.test", ecs="81.2.69.0/24")
        h.ask("nope.edge.example.test")
        self.assertEqual(h.stats.queries[(1, 0, "fast", "udp")], 1)
        self.assertEqual(h.stats.queries[(1, 3, "general", "udp")], 1)
        self.assertEqual(
            (
                h.stats.answers_by_node["lon"],
                h.stats.answers_by_node["fra"],
                h.stats.ecs,
            ),
            (1, 1, 1),
        )
        buckets, _ = h.stats.latency()
        self.assertEqual(buckets[-1], ("+Inf", 2))


class ZoneTests(ServerTestCase):
    def test_soa_and_ns_at_apex(self) -> None:
        """The apex has SOA and NS (with glue for in-zone NS names, located
        for the client); SOA's minimum is the TTL."""
        h = self.harness()
        soa = h.ask("edge.example.test", "SOA").answer[0][0]
        self.assertEqual(
            (str(soa.mname), str(soa.rname), soa.minimum),
            ("ns1.edge.example.test.", "hostmaster.edge.example.test.", 30),
        )
        response = h.ask("edge.example.test", "NS", ecs="203.0.113.0/24")
        self.assertEqual([str(r.target) for r in response.answer[0]], ["ns1.edge.example.test."])
        glue = {rr.address for rrset in response.additional for rr in rrset}
        self.assertEqual(glue, {"192.0.2.40", "192.0.2.20", "2001:db8::40", "2001:db8::20"})
        self.assertTrue(response.flags & dns.flags.AA)

    def test_nxdomain_and_nodata(self) -> None:
        """A name not in the zone is NXDOMAIN, an existing name without the
        type is NODATA; both carry the SOA for negative caching."""
        h = self.harness()
        for name, rdtype, rcode in (
            ("nope.edge.example.test", "A", dns.rcode.NXDOMAIN),
            ("x.www.edge.example.test", "A", dns.rcode.NXDOMAIN),
            ("www.edge.example.test", "MX", dns.rcode.NOERROR),
            ("www.edge.example.test", "TXT", dns.rcode.NOERROR),
        ):
            response = h.ask(name, rdtype)
            self.assertEqual((response.rcode(), response.answer), (rcode, []), name)
            self.assertEqual(str(response.authority[0].name), "edge.example.test.")
            self.assertTrue(response.flags & dns.flags.AA)

    def test_empty_non_terminal(self) -> None:
        """A name above a geo name (an empty non-terminal) exists: NODATA."""
        h = self.harness(zones=(ZoneConfig(name="example.test", geo_names=("a.b",)),))
        self.assertEqual(h.ask("b.example.test").rcode(), dns.rcode.NOERROR)
        self.assertEqual(
            h.addresses("a.b.example.test", ecs="81.2.69.0/24"),
            ["192.0.2.10", "192.0.2.20"],
        )

    def test_refused(self) -> None:
        """Names outside our zones, classes other than IN and zone transfers
        are REFUSED."""
        h = self.harness()
        self.assertEqual(h.ask("example.com").rcode(), dns.rcode.REFUSED)
        self.assertEqual(h.ask("test").rcode(), dns.rcode.REFUSED)
        chaos = bytearray(dns_query("edge.example.test"))
        struct.pack_into(">H", chaos, len(chaos) - 2, 3)
        self.assertEqual(dns_response(h.send(bytes(chaos))).rcode(), dns.rcode.REFUSED)
        self.assertEqual(h.ask("edge.example.test", "AXFR").rcode(), dns.rcode.REFUSED)

    def test_any_is_minimal(self) -> None:
        """ANY gets one RRset (RFC 8482): the A set at a geo name, the SOA at
        a plain apex."""
        h = self.harness(zones=(ZoneConfig(name="example.test", geo_names=("edge",)),))
        response = h.ask("edge.example.test", "ANY", ecs="81.2.69.0/24")
        self.assertEqual([rrset.rdtype for rrset in response.answer], [dns.rdatatype.A])
        response = h.ask("example.test", "ANY")
        self.assertEqual([rrset.rdtype for rrset in response.answer], [dns.rdatatype.SOA])

    def test_case_is_kept(self) -> None:
        """Names match whatever their case, and answers keep the question's
        case (0x20 randomisation)."""
        h = self.harness()
        response = h.ask("EdGe.ExAmPlE.TeSt", ecs="81.2.69.0/24")
        self.assertEqual(str(response.answer[0].name), "EdGe.ExAmPlE.TeSt.")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)

    def test_opcodes(self) -> None:
        """Opcodes other than QUERY get NOTIMP with the query's opcode,
        header only (an OPT record when the query had one)."""
        h = self.harness()
        for opcode in (1, 2, 4, 5):
            for edns in (False, True):
                data = bytearray(dns_query("edge.example.test", edns=edns))
                data[2] |= opcode << 3
                answer = h.send(bytes(data))
                assert answer is not None
                check_answer(self, bytes(data), answer)
                self.assertEqual(answer[3] & 0xF, 4, opcode)
                self.assertEqual((answer[2] >> 3) & 0xF, opcode)
                self.assertTrue(answer[2] & 0x80)
                self.assertEqual(struct.unpack_from(">HHHH", answer, 4), (0, 0, 0, 1 if edns else 0))

    def test_notimp_with_many_questions(self) -> None:
        """A non-QUERY message claiming 200 questions (and holding them) gets
        NOTIMP whose header counts match its body, over UDP and TCP."""
        h = self.harness()
        one = dns_query("edge.example.test")
        data = bytearray(one[:12] + one[12:] * 200)
        struct.pack_into(">H", data, 4, 200)
        data[2] |= 2 << 3  # STATUS
        answer = h.send(bytes(data))
        assert answer is not None
        check_answer(self, bytes(data), answer)
        self.assertEqual(dns_response(answer).rcode(), dns.rcode.NOTIMP)
        self.assertEqual(struct.unpack_from(">HHHH", answer, 4), (0, 0, 0, 0))


def _asked(query: bytes) -> list[tuple[tuple[bytes, ...], int, int]]:
    """The question section of ``query`` as dnspython reads it (exact
    labels, case kept)."""
    asked = dns.message.from_wire(query, question_only=True)
    return [(rrset.name.labels, rrset.rdtype, rrset.rdclass) for rrset in asked.question]


def check_answer(testcase: SynchronousTestCase, query: bytes, answer: bytes) -> None:
    """What every answer the server sends must be: a message dnspython
    parses whole (so its header counts match its body), with the query's
    id, QR set and the query's opcode, whose question section, when it has
    one, is exactly the question asked (labels byte for byte)."""
    response = dns_response(answer)
    testcase.assertEqual(response.id, struct.unpack_from(">H", query)[0])
    testcase.assertTrue(response.flags & dns.flags.QR)
    testcase.assertEqual(dns.opcode.from_flags(response.flags), (query[2] >> 3) & 0xF)
    if response.question:
        echoed = [(rrset.name.labels, rrset.rdtype, rrset.rdclass) for rrset in response.question]
        testcase.assertEqual(echoed, _asked(query))


#: Labels as resolvers and fuzzers send them: dots inside a label (which
#: twisted.names cannot carry), long labels (whose length octets look like
#: compression pointers from 0xC0 on), case, NUL, high octets.
_LABELS = st.one_of(
    st.binary(min_size=1, max_size=63),
    st.text(alphabet="aZ.-_*\\ \x00\xc0\xff", min_size=1, max_size=63).map(lambda s: s.encode("latin-1")),
    st.sampled_from([b".zzz", b"." + b"z" * 62, b"zzz.", b"edge.example.test", b"EDGE", b"www"]),
)
_SUFFIXES = st.sampled_from(
    [(), (b"edge", b"example", b"test"), (b"eu", b"edge", b"example", b"test"), (b"www", b"edge", b"example", b"test")]
)


@st.composite
def odd_queries(draw: st.DrawFn) -> bytes:
    """A query built field by field: odd names under our zones, any opcode,
    type and class, a question count that may disagree with the body, EDNS
    with or without ECS."""
    labels = tuple(draw(st.lists(_LABELS, max_size=4))) + draw(_SUFFIXES)
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    qtype = draw(st.sampled_from([1, 28, 2, 6, 255, 41, 251, 252, 0, 65535]))
    qclass = draw(st.sampled_from([1, 1, 1, 3, 254, 255, 0]))
    question = name + struct.pack(">HH", qtype, qclass)
    held = draw(st.sampled_from([1, 1, 1, 0, 2, 200]))
    claimed = draw(st.sampled_from([held, held, held, 1, 200]))
    opcode = draw(st.sampled_from([0, 0, 0, 1, 2, 4, 5, 15]))
    flags = opcode << 11 | draw(st.sampled_from([0, 0x0100, 0x0010, 0x0200]))
    additional = b""
    if draw(st.booleans()):
        option = b""
        if draw(st.booleans()):
            body = struct.pack(">HBB", 1, 24, 0) + bytes([81, 2, 69])
            option = struct.pack(">HH", 8, len(body)) + body
        size = draw(st.sampled_from([512, 1232, 4096, 0]))
        additional = b"\x00" + struct.pack(">HHIH", 41, size, 0, len(option)) + option
    header = struct.pack(">HHHHHH", draw(st.integers(0, 65535)), flags, claimed, 0, 0, 1 if additional else 0)
    return header + question * held + additional


class BadInputTests(ServerTestCase):
    def test_formerr(self) -> None:
        """A malformed query gets FORMERR with its id; a bad ECS too, with an
        OPT record but no ECS echo."""
        h = self.harness()
        data = dns_query("edge.example.test", qid=777)
        answer = h.send(data[:-1])
        assert answer is not None
        self.assertEqual(struct.unpack_from(">HH", answer), (777, 0x8001))
        body = struct.pack(">HBB", 1, 33, 0) + b"\x51\x02\x45\x00\x00"
        option = struct.pack(">HH", 8, len(body)) + body
        bad = data[:10] + b"\x00\x01" + data[12:] + b"\x00" + struct.pack(">HHIH", 41, 1232, 0, len(option)) + option
        response = dns_response(h.send(bad))
        self.assertEqual((response.rcode(), list(response.options)), (dns.rcode.FORMERR, []))
        self.assertEqual(response.edns, 0)

    def test_silence(self) -> None:
        """Datagrams too short for a header, and responses, get nothing."""
        h = self.harness()
        self.assertIsNone(h.send(b"\x01\x02\x03"))
        data = bytearray(dns_query("edge.example.test"))
        data[2] |= 0x80
        self.assertIsNone(h.send(bytes(data)))
        self.assertEqual(h.stats.dropped["not-a-query"], 2)

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes(self, data: bytes) -> None:
        """Whatever arrives, the server sends nothing or one well-formed
        response with the query's id and QR set; it never raises."""
        h = self.harness_for_properties()
        answer = h.send(data)
        if answer is not None:
            check_answer(self, data, answer)

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_mutated_queries(self, data: st.DataObject) -> None:
        """Real queries with bytes changed or cut are answered with a
        well-formed response or not at all."""
        h = self.harness_for_properties()
        query = bytearray(dns_query("edge.example.test", ecs="81.2.69.0/24"))
        for _ in range(data.draw(st.integers(1, 3))):
            query[data.draw(st.integers(0, len(query) - 1))] = data.draw(st.integers(0, 255))
        query = query[: data.draw(st.integers(0, len(query)))]
        answer = h.send(bytes(query))
        if answer is not None:
            check_answer(self, bytes(query), answer)

    @settings(max_examples=500, deadline=None)
    @given(odd_queries())
    def test_odd_queries(self, query: bytes) -> None:
        """Queries built from odd labels, opcodes, types, classes and
        question counts, over UDP and TCP: every answer passes
        :func:`check_answer` (dnspython parses it and it echoes the
        question asked)."""
        h = self.harness_for_properties()
        answer = h.send(query)
        assert answer is not None
        check_answer(self, query, answer)
        check_answer(self, query, self.over_tcp(h, query))

    def over_tcp(self, h: DnsHarness, query: bytes) -> bytes:
        """The answer to ``query`` sent over a (memory) TCP connection."""
        tcp = h.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "81.2.69.5", 40000))
        tcp.makeConnection(transport)
        tcp.dataReceived(struct.pack(">H", len(query)) + query)
        tcp.connectionLost(None)
        wire = transport.value()
        (length,) = struct.unpack_from(">H", wire)
        self.assertEqual(len(wire), 2 + length)
        return wire[2:]

    def test_dotted_labels(self) -> None:
        """A question whose label holds a "." (before a geo name, at its
        end, long enough that Twisted would write a length octet read as a
        compression pointer, or a whole geo name as one label) is FORMERR,
        header only, over UDP and TCP; the fast path declines it, so both
        paths answer it alike."""
        h = self.harness()
        geo = [b"edge", b"example", b"test"]
        for labels in (
            [b".zzz"] + geo,
            [b"zzz."] + geo,
            [b"." + b"z" * 62, b"a" * 63, b"b" * 63] + geo,
            [b"edge.example.test"],
            [b"www.edge"] + geo[1:],
        ):
            query = dns.message.make_query(dns.name.Name(labels + [b""]), "A", use_edns=0)
            wire = bytes(query.to_wire())
            self.assertIsNone(h.factory.fast.answer(wire, "81.2.69.7", True))
            for answer in (h.send(wire), self.over_tcp(h, wire)):
                assert answer is not None
                check_answer(self, wire, answer)
                response = dns_response(answer)
                self.assertEqual((response.rcode(), response.question), (dns.rcode.FORMERR, []))
                self.assertTrue(query.is_response(response))

    def harness_for_properties(self) -> DnsHarness:
        if not hasattr(self, "_shared"):
            self._shared = self.harness(source_rate_limit=0)
        return self._shared

    def test_flood_from_one_source(self) -> None:
        """A source network over its rate gets drops and, every other time,
        an empty truncated answer; another client is answered all along."""
        h = self.harness(source_rate_limit=10)
        query = dns_query("edge.example.test", ecs="81.2.69.0/24")
        answers = [h.send(query, source="203.0.113.7") for _ in range(40)]
        self.assertEqual(sum(1 for a in answers[:20] if a and not a[2] & 0x02), 20)
        late = answers[20:]
        self.assertEqual(sum(1 for a in late if a is None), 10)
        self.assertTrue(all(a[2] & 0x02 for a in late if a is not None))
        self.assertIsNotNone(h.send(query, source="198.51.100.9"))
        h.clock.advance(1)
        self.assertEqual(
            sum(1 for _ in range(10) if (a := h.send(query, source="203.0.113.7")) and not a[2] & 0x02),
            10,
        )


class SizeTests(ServerTestCase):
    def many(self) -> list:  # type: ignore[type-arg]
        return [
            node_info(
                f"n{i:02}",
                "london",
                addresses=tuple(f"2001:db8:{i}::{j}" for j in range(1, 9)),
            )
            for i in range(16)
        ]

    def test_udp_truncation_and_tcp(self) -> None:
        """An answer over the client's EDNS size (or 512 without EDNS) is sent
        truncated (TC, question only); over TCP it is whole."""
        h = self.harness(nodes=self.many(), answers=16)
        plain = dns_response(h.send(dns_query("edge.example.test", "AAAA")))
        self.assertTrue(plain.flags & dns.flags.TC)
        self.assertEqual(plain.answer, [])
        big = h.send(dns_query("edge.example.test", "AAAA", edns=4096))
        assert big is not None
        self.assertLessEqual(len(big), 1232)
        self.assertTrue(dns_response(big).flags & dns.flags.TC)
        self.assertEqual(h.stats.truncated, 2)
        tcp = h.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=None)
        from twisted.internet.address import IPv4Address

        transport.peerAddr = IPv4Address("TCP", "81.2.69.5", 40000)
        tcp.makeConnection(transport)
        query = dns_query("edge.example.test", "AAAA")
        tcp.dataReceived(struct.pack(">H", len(query)) + query)
        wire = transport.value()
        (length,) = struct.unpack_from(">H", wire)
        response = dns_response(wire[2 : 2 + length])
        self.assertEqual(len(response.answer[0]), 128)
        self.assertFalse(response.flags & dns.flags.TC)
        tcp.connectionLost(None)

    def test_edns_size_honoured(self) -> None:
        """A client EDNS size between 512 and ours lets a mid-sized answer
        through, which 512 truncates."""
        nodes = self.many()[:4]
        h = self.harness(nodes=nodes, answers=4)
        self.assertTrue(dns_response(h.send(dns_query("edge.example.test", "AAAA", edns=512))).flags & dns.flags.TC)
        fits = dns_response(h.send(dns_query("edge.example.test", "AAAA", edns=1200)))
        self.assertEqual((fits.flags & dns.flags.TC, len(fits.answer[0])), (0, 32))

    def test_tcp_idle_timeout(self) -> None:
        """An idle TCP client is disconnected after dns.tcp_idle_seconds."""
        h = self.harness(tcp_idle_seconds=3.0)
        tcp = h.factory.buildProtocol(None)
        transport = StringTransport()
        tcp.makeConnection(transport)
        h.clock.advance(2.9)
        self.assertFalse(transport.disconnecting)
        h.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        tcp.connectionLost(None)


class FastPathTests(ServerTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        name=st.sampled_from(
            [
                "edge.example.test",
                "EDGE.example.TEST",
                "www.edge.example.test",
                "eu.edge.example.test",
            ]
        ),
        rdtype=st.sampled_from(["A", "AAAA"]),
        ecs=st.sampled_from(
            [
                None,
                "81.2.69.0/24",
                "203.0.113.0/24",
                "2001:db8:1::/48",
                "0.0.0.0/0",
                "192.0.2.128/25",
            ]
        ),
        edns=st.sampled_from([False, True, 512, 4096]),
        qid=st.integers(0, 65535),
        source=st.sampled_from(["81.2.69.7", "203.0.113.7", "127.0.0.1"]),
    )
    def test_fast_equals_general(
        self,
        name: str,
        rdtype: str,
        ecs: str | None,
        edns: bool | int,
        qid: int,
        source: str,
    ) -> None:
        """The fast path's answer is byte for byte what the general path
        (twisted.names) gives for the same query."""
        h = self.fast_harness()
        query = dns_query(name, rdtype, ecs=ecs, edns=edns, qid=qid)
        fast = h.factory.fast.answer(query, source, True)
        self.assertIsNotNone(fast)
        before = len(h.transport.written)
        h.factory._general(query, source, True, h.udp, (source, 53000), 0.0)
        ((general, _),) = h.transport.written[before:]
        self.assertEqual(fast, general)

    def fast_harness(self) -> DnsHarness:
        if not hasattr(self, "_shared"):
            self._shared = self.harness()
        return self._shared

    def test_declines_other_shapes(self) -> None:
        """The fast path declines what it does not cover: other types, names
        outside the geo names, and a deployment with no live node."""
        h = self.harness(nodes=(LON,))
        for query in (
            dns_query("edge.example.test", "MX"),
            dns_query("nope.edge.example.test"),
            dns_query("eu.edge.example.test"),
        ):
            self.assertIsNone(h.factory.fast.answer(query, "81.2.69.1", True))


class ServiceTests(SynchronousTestCase):
    def test_metrics_on_the_registry(self) -> None:
        """The dns child puts its counters on the node's registry, named
        fastedge_dns_*, read when scraped."""
        from prometheus_client import generate_latest
        from twisted.internet.testing import MemoryReactorClock

        from fastedge.config import DnsConfig
        from fastedge.dns import service as dns_service
        from fastedge.mesh.nodemap import NodeMap
        from fastedge.metrics.registry import new_registry
        from fastedge.testing.fakes import CapturingDatagramTransport

        node_map = NodeMap()
        node_map.upsert(LON)
        registry = new_registry()
        service = dns_service.make_service(
            DnsConfig(), reactor=MemoryReactorClock(), registry=registry, node_map=node_map, geo=None
        )
        udp = service.getServiceNamed("udp").args[1]
        udp.transport = CapturingDatagramTransport()
        udp.datagramReceived(dns_query("edge.fastedge.test", ecs="81.2.69.0/24"), ("127.0.0.1", 9))
        udp.datagramReceived(dns_query("nope.fastedge.test"), ("127.0.0.1", 9))
        sample = registry.get_sample_value
        labels = {"type": "A", "rcode": "NOERROR", "path": "fast", "transport": "udp"}
        self.assertEqual(sample("fastedge_dns_queries_total", labels), 1.0)
        self.assertEqual(sample("fastedge_dns_queries_total", dict(labels, rcode="NXDOMAIN", path="general")), 1.0)
        self.assertEqual(sample("fastedge_dns_answers_total", {"node": "lon"}), 1.0)
        self.assertEqual(sample("fastedge_dns_ecs_queries_total"), 1.0)
        self.assertEqual(sample("fastedge_dns_query_duration_seconds_count"), 2.0)
        self.assertEqual(sample("fastedge_dns_node_map_version"), 1.0)
        self.assertIn(b"fastedge_dns_location_lookups_total", generate_latest(registry))
        node_map.set_state("lon", NodeState.DEAD)
        self.assertEqual(sample("fastedge_dns_node_map_version"), 2.0)
