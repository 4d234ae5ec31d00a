"""Checking queries on the wire: header, names, EDNS and Client Subnet."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.dns.wire import (
    BADVERS,
    FORMERR,
    NOTIMP,
    TC,
    ClientSubnet,
    Drop,
    Malformed,
    error_response,
    parse_query,
    truncated_response,
)
from fastedge.testing.dns import dns_query


def ecs_query(family: int, source: int, address: bytes, scope: int = 0) -> bytes:
    """A query for edge.fastedge.test A with a hand-made ECS option."""
    body = struct.pack(">HBB", family, source, scope) + address
    option = struct.pack(">HH", 8, len(body)) + body
    opt = b"\x00" + struct.pack(">HHIH", 41, 1232, 0, len(option)) + option
    question = b"\x04edge\x08fastedge\x04test\x00" + struct.pack(">HH", 1, 1)
    return struct.pack(">HHHHHH", 7, 0, 1, 0, 0, 1) + question + opt


class ParseTests(SynchronousTestCase):
    def test_common_query(self) -> None:
        """A plain query parses to its id, question (lower-cased) and no EDNS."""
        parsed = parse_query(dns_query("EDGE.FastEdge.test", "AAAA", qid=99))
        self.assertEqual(
            (parsed.id, parsed.questions, parsed.edns),
            (99, (("edge.fastedge.test", 28, 1),), None),
        )

    def test_ecs(self) -> None:
        """An ECS option is read with its family, prefix and address."""
        parsed = parse_query(dns_query("edge.fastedge.test", ecs="81.2.69.0/24"))
        assert parsed.edns is not None
        self.assertEqual(parsed.edns.ecs, ClientSubnet(1, 24, 0, bytes([81, 2, 69])))
        self.assertEqual(parsed.edns.ecs.ip(), "81.2.69.0")

    def test_ecs_ipv6_address(self) -> None:
        """An IPv6 ECS subnet gives its zero-padded address."""
        parsed = parse_query(dns_query("edge.fastedge.test", ecs="2001:db8:1::/48"))
        assert parsed.edns is not None and parsed.edns.ecs is not None
        self.assertEqual(parsed.edns.ecs.ip(), "2001:db8:1:0:0:0:0:0")

    def test_short_or_response_is_dropped(self) -> None:
        """Fewer than 12 bytes, or a message with QR set, gets no answer."""
        self.assertRaises(Drop, parse_query, b"\x00\x01\x02")
        response = bytearray(dns_query("edge.fastedge.test"))
        response[2] |= 0x80
        self.assertRaises(Drop, parse_query, bytes(response))

    def assertFormErr(self, data: bytes, reason: str) -> Malformed:
        with self.assertRaises(Malformed) as cm:
            parse_query(data)
        self.assertEqual(cm.exception.rcode, FORMERR)
        self.assertIn(reason, cm.exception.reason)
        return cm.exception

    def test_bad_ecs(self) -> None:
        """ECS with an unknown family, a prefix longer than the address, the
        wrong number of address octets or bits past the prefix is FORMERR
        (RFC 7871 §6)."""
        self.assertFormErr(ecs_query(3, 8, b"\x0a"), "family")
        self.assertFormErr(ecs_query(1, 33, b"\x0a\x00\x00\x00\x00"), "longer than the address")
        self.assertFormErr(ecs_query(2, 129, b"\x20" + b"\0" * 16), "longer than the address")
        self.assertFormErr(ecs_query(1, 24, b"\x0a\x00"), "length")
        self.assertFormErr(ecs_query(1, 8, b"\x0a\x00"), "length")
        self.assertFormErr(ecs_query(1, 20, b"\x0a\x00\x0f"), "bits set")

    def test_multiple_questions(self) -> None:
        """A query with two questions (or none) is FORMERR (RFC 9619)."""
        one = dns_query("edge.fastedge.test")
        question = one[12:]
        two = struct.pack(">HHHHHH", 1, 0, 2, 0, 0, 0) + question + question
        self.assertFormErr(two, "2 questions")
        self.assertFormErr(struct.pack(">HHHHHH", 1, 0, 0, 0, 0, 0), "0 questions")

    def test_names_over_limits(self) -> None:
        """A name over 255 octets, a label type other than plain/pointer, a
        forward or looping pointer, or a name past the end is FORMERR."""
        header = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0)
        long_name = (b"\x3f" + b"a" * 63) * 4 + b"\x00"
        self.assertFormErr(header + long_name + b"\x00\x01\x00\x01", "255")
        self.assertFormErr(header + b"\x40abc\x00\x00\x01\x00\x01", "label type")
        self.assertFormErr(header + b"\xc0\x0c\x00\x01\x00\x01", "pointer")
        self.assertFormErr(header + b"\x05ab", "past the end")

    def test_dotted_label(self) -> None:
        """A question label holding a "." is FORMERR, read to the end first
        so that the answer carries OPT; the same name as separate labels is
        fine."""
        plain = dns_query("zzz.edge.fastedge.test", edns=True)
        self.assertEqual(parse_query(plain).questions[0][0], "zzz.edge.fastedge.test")
        for label in (b".zzz", b"zzz.", b"." + b"z" * 62, b"zzz.edge"):
            data = plain[:12] + bytes([len(label)]) + label + plain[12 + 4 :]
            with self.assertRaises(Malformed) as cm:
                parse_query(data)
            self.assertEqual((cm.exception.rcode, cm.exception.edns is not None), (FORMERR, True))
            self.assertIn("'.'", cm.exception.reason)

    def test_other_opcodes_not_implemented(self) -> None:
        """A message with an opcode other than QUERY is NOTIMP whatever its
        question count; the answer is header (and OPT) only."""
        one = dns_query("edge.fastedge.test", edns=True)
        for opcode in (1, 2, 4, 5, 15):
            for qd in (0, 1, 200):
                data = bytearray(one[:12] + one[12:-11] * qd + one[-11:])
                struct.pack_into(">H", data, 4, qd)
                data[2] |= opcode << 3
                with self.assertRaises(Malformed) as cm:
                    parse_query(bytes(data))
                self.assertEqual(cm.exception.rcode, NOTIMP)
                answer = error_response(cm.exception, 1232)
                self.assertEqual(struct.unpack_from(">HHHH", answer, 4), (0, 0, 0, 1))
                self.assertEqual((answer[2] >> 3) & 0xF, opcode)

    def test_truncation_keeps_one_question(self) -> None:
        """A truncated answer keeps the header's first question and says it
        holds one, whatever the count it was given."""
        query = dns_query("edge.fastedge.test")
        response = bytearray(query + b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes(4))
        struct.pack_into(">HHHHHH", response, 0, 1, 0x8400, 3, 1, 0, 0)
        cut = truncated_response(bytes(response), b"")
        self.assertEqual(struct.unpack_from(">HHHHHH", cut), (1, 0x8400 | TC, 1, 0, 0, 0))
        self.assertEqual(cut[12:], query[12:])

    def test_truncated_and_trailing(self) -> None:
        """A question cut short, or bytes after the last record, is FORMERR."""
        data = dns_query("edge.fastedge.test")
        self.assertFormErr(data[:-2], "truncated question")
        self.assertFormErr(data + b"\x00", "after the last record")

    def test_opt_rules(self) -> None:
        """Two OPT records, or an OPT with a name, is FORMERR; EDNS version 1
        is BADVERS, answered with an OPT record carrying the upper rcode bits."""
        data = dns_query("edge.fastedge.test", edns=True)
        opt = data[-11:]
        twice = bytearray(data + opt)
        struct.pack_into(">H", twice, 10, 2)
        self.assertFormErr(bytes(twice), "OPT")
        named = bytearray(data[:-11] + b"\x01a\x00" + opt[1:])
        self.assertFormErr(bytes(named), "OPT")
        v1 = bytearray(data)
        v1[-11 + 6] = 1  # the version octet of the TTL field
        with self.assertRaises(Malformed) as cm:
            parse_query(bytes(v1))
        self.assertEqual(cm.exception.rcode, BADVERS)
        answer = error_response(cm.exception, 1232)
        self.assertEqual(struct.unpack_from(">HHHHHH", answer), (4242, 0x8000, 0, 0, 0, 1))
        self.assertEqual(answer[12 + 5], 1)  # extended rcode 1 << 4 = 16

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=600))
    def test_any_bytes(self, data: bytes) -> None:
        """Any bytes either parse or raise Drop/Malformed; never anything else."""
        try:
            parse_query(data)
        except (Drop, Malformed):
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_mutated_queries(self, data: st.DataObject) -> None:
        """Real queries with bytes flipped or cut: still only Drop/Malformed
        or a parse."""
        query = bytearray(dns_query("edge.fastedge.test", ecs="81.2.69.0/24"))
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(query) - 1))
            query[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(query)))
        try:
            parse_query(bytes(query[:cut]))
        except (Drop, Malformed):
            pass
