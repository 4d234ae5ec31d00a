"""Tests for :mod:`fastedge.live.messages`: parsing client messages and
the shape of server messages."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.live import messages
from fastedge.live.messages import (
    Ping,
    RequestError,
    Subscribe,
    Unsubscribe,
    Violation,
    parse_client_message,
)


class ParseTests(SynchronousTestCase):
    def test_subscribe(self) -> None:
        """A full subscribe message parses into its fields."""
        msg = parse_client_message(
            b'{"type":"subscribe","tenant":"t1","urlId":"https://x/y","since":3,"epoch":"abc2","viewer":"v","ref":"r"}'
        )
        self.assertEqual(msg, Subscribe("t1", "https://x/y", 3, "abc2", "v", "r"))

    def test_unsubscribe_and_ping(self) -> None:
        """unsubscribe takes a channel name; ping only a ref."""
        self.assertEqual(
            parse_client_message(b'{"type":"unsubscribe","channel":"a/b"}'),
            Unsubscribe("a/b"),
        )
        self.assertEqual(parse_client_message(b'{"type":"ping","ref":4}'), Ping(4))

    def test_violations(self) -> None:
        """What is not a JSON object with a string type is a protocol
        violation (close 4400)."""
        for raw in (
            b"",
            b"nope",
            b"[]",
            b"1",
            b'"s"',
            b"{}",
            b'{"type":null}',
            b"\xff",
        ):
            with self.assertRaises(Violation) as caught:
                parse_client_message(raw)
            self.assertEqual(caught.exception.code, 4400)

    def test_request_errors(self) -> None:
        """Well-formed messages with bad content are request errors, with the
        ref when it was readable."""
        cases = {
            b'{"type":"x","ref":"q"}': ("unknown_type", "q"),
            b'{"type":"ping","extra":1}': ("unknown_field", None),
            b'{"type":"subscribe","tenant":"t","urlId":"u","since":-2}': (
                "bad_since",
                None,
            ),
            b'{"type":"subscribe","tenant":"t","urlId":"u","since":"2"}': (
                "bad_since",
                None,
            ),
            b'{"type":"subscribe","tenant":"t","urlId":"u","epoch":"UPPER"}': (
                "bad_epoch",
                None,
            ),
            b'{"type":"subscribe","tenant":"t","urlId":"u","viewer":5}': (
                "bad_viewer_token",
                None,
            ),
            b'{"type":"subscribe","tenant":"","urlId":"u"}': ("missing_tenant", None),
            b'{"type":"subscribe","tenant":"t","urlId":""}': ("missing_url_id", None),
            b'{"type":"unsubscribe","channel":"../x"}': ("bad_channel", None),
            b'{"type":"ping","ref":true}': ("bad_ref", None),
        }
        for raw, (code, ref) in cases.items():
            with self.assertRaises(RequestError, msg=raw) as caught:
                parse_client_message(raw)
            self.assertEqual((caught.exception.code, caught.exception.ref), (code, ref), raw)
        long_url = json.dumps({"type": "subscribe", "tenant": "t", "urlId": "u" * 5000}).encode()
        self.assertRaises(RequestError, parse_client_message, long_url)

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=200))
    def test_any_bytes(self, raw: bytes) -> None:
        """Any bytes parse or fail with one of the two documented errors."""
        try:
            parse_client_message(raw)
        except (Violation, RequestError):
            pass

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "tenant",
                    "urlId",
                    "since",
                    "epoch",
                    "viewer",
                    "ref",
                    "channel",
                ]
            ),
            st.one_of(
                st.none(),
                st.integers(),
                st.text(max_size=20),
                st.booleans(),
                st.lists(st.integers(), max_size=2),
            ),
        )
    )
    def test_any_object(self, body: dict[str, object]) -> None:
        """Any JSON object parses or fails with one of the documented errors."""
        try:
            parse_client_message(json.dumps(body).encode())
        except (Violation, RequestError):
            pass


class DepthTests(SynchronousTestCase):
    """Client messages go through fastedge.inputs.loads_json (its depth
    check is proven exact in tests.unit.test_inputs)."""

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.text(alphabet='[]{}"\\,:1a', max_size=3000), st.integers(1, 3000))
    def test_any_bracket_soup(self, prefix: str, nesting: int) -> None:
        """Deep or broken bracket soup parses or fails with a documented
        error, never RecursionError."""
        for text in (prefix, "[" * nesting + prefix, '{"type":"ping","ref":' + "[" * nesting + prefix):
            try:
                parse_client_message(text.encode())
            except (Violation, RequestError):
                pass

    def test_limit(self) -> None:
        """32 levels are read; 33 are a protocol violation (4400)."""
        ok = b'{"type":"ping","ref":' + b"[" * 31 + b"]" * 31 + b"}"
        with self.assertRaises(RequestError) as caught:
            parse_client_message(ok)
        self.assertEqual(caught.exception.code, "bad_ref")
        with self.assertRaises(Violation) as violated:
            parse_client_message(b'{"type":"ping","ref":' + b"[" * 32 + b"]" * 32 + b"}")
        self.assertEqual(violated.exception.code, messages.CLOSE_BAD_MESSAGE)


class NamesTests(SynchronousTestCase):
    def test_channel_names(self) -> None:
        """Channel names round-trip and refuse what ids cannot contain."""
        self.assertEqual(
            messages.parse_channel(messages.channel_name("t-1", "th_2")),
            ("t-1", "th_2"),
        )
        for bad in ("t", "t/", "/t", "t/a/b", "t/a b", "t/" + "x" * 40):
            self.assertIsNone(messages.parse_channel(bad), bad)

    def test_event_ids(self) -> None:
        """Event ids are epoch-seq and parse back; others are refused."""
        self.assertEqual(messages.parse_event_id(messages.event_id("abc", 42)), ("abc", 42))
        for bad in ("", "abc", "abc-", "-3", "ABC-3", "abc-x", "abc-" + "9" * 30):
            self.assertIsNone(messages.parse_event_id(bad), bad)

    def test_server_messages(self) -> None:
        """Server messages are compact JSON with their documented fields."""
        self.assertEqual(
            json.loads(messages.subscribed("a/b", "ep", 3, False, 1, ref="r")),
            {
                "type": "subscribed",
                "channel": "a/b",
                "epoch": "ep",
                "seq": 3,
                "reload": False,
                "replayed": 1,
                "ref": "r",
            },
        )
        self.assertEqual(
            json.loads(messages.error("c", "m")),
            {"type": "error", "code": "c", "message": "m"},
        )
        self.assertEqual(
            json.loads(messages.closing(4008, "slow")),
            {"type": "close", "code": 4008, "reason": "slow"},
        )
        self.assertNotIn(b"\n", messages.event("a/b", "ep", 1, "k", {"text": "line\nbreak"}))
