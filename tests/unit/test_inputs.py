"""The shared readers of network input: ASCII integers and JSON of bounded
depth (``fastedge.inputs``)."""

from __future__ import annotations

import json
import re
from decimal import Decimal

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.inputs import MAX_JSON_DEPTH, InputError, json_depth_ok, loads_json, parse_ascii_int

_DIGITS = re.compile(r"[0-9]+", re.ASCII)

#: Text that looks like a number to some part of Python: ASCII and other
#: scripts' digits, superscripts, signs, spaces, underscores.
_NUMBERISH = st.text(
    alphabet=st.sampled_from("0123456789" + "\u00b2\u00b3\u00b9\u0661\u0669\u06f1\u0966\uff11\U0001d7ce+-_ .\n\t"),
    max_size=25,
)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


class ParseAsciiIntTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(
        text=st.one_of(_NUMBERISH, st.text(max_size=25), st.integers(0, 10**20).map(str)),
        low=st.integers(0, 1000),
        span=st.integers(0, 10**19),
    )
    @example(text="\u00b2", low=0, span=100)
    @example(text="\u0661", low=0, span=100)
    @example(text="0" * 5000 + "7", low=0, span=10)
    @example(text="9" * 5000, low=0, span=10)
    def test_accepts_exactly_ascii_digits_in_range(self, text: str, low: int, span: int) -> None:
        """A string is accepted exactly when it matches ``^[0-9]+$`` (ASCII)
        and its value is within the bounds, and then its value is returned;
        everything else raises InputError (never another exception)."""
        high = low + span
        # Decimal: int() itself refuses strings of over 4300 digits.
        if _DIGITS.fullmatch(text) and low <= Decimal(text) <= high:
            self.assertEqual(parse_ascii_int(text, low, high), Decimal(text))
        else:
            self.assertRaises(InputError, parse_ascii_int, text, low, high)

    def test_examples(self) -> None:
        """Unicode digits (superscript two, Arabic-Indic one), signs, spaces
        and underscores are refused; leading zeros are not."""
        for bad in ("\u00b2", "\u0661", "1\u0661", "+1", "-1", " 1", "1 ", "1\n", "1_0", "", "0x1"):
            self.assertRaises(InputError, parse_ascii_int, bad, 0, 100)
        self.assertEqual(parse_ascii_int("007", 0, 100), 7)
        self.assertRaises(InputError, parse_ascii_int, "101", 0, 100)
        self.assertRaises(InputError, parse_ascii_int, "0", 1, 100)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=3), children, max_size=3),
    max_leaves=40,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


class LoadsJsonTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(value=_JSON_VALUES, max_depth=st.integers(0, 6))
    def test_depth_is_exact(self, value: object, max_depth: int) -> None:
        """Valid JSON (brackets and quotes inside strings included) is
        parsed when it nests at most ``max_depth`` deep and refused with
        InputError when deeper."""
        text = json.dumps(value)
        if _depth(value) <= max_depth:
            self.assertEqual(loads_json(text, max_depth), value)
            self.assertEqual(loads_json(text.encode("utf-8"), max_depth), value)
        else:
            self.assertRaises(InputError, loads_json, text, max_depth)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200) | st.text(alphabet='[]{}"\\ ,:1a', max_size=200))
    def test_any_input(self, data: bytes | str) -> None:
        """Whatever arrives, the result is a value or InputError."""
        try:
            loads_json(data, 4)
        except InputError:
            pass

    @given(st.lists(st.text(max_size=4), max_size=4), st.booleans())
    def test_lone_surrogates_refused(self, strings: list[str], as_key: bool) -> None:
        """A string (or a key) holding a lone surrogate is InputError; any
        other text, pairs written as escapes included, parses."""
        value: object = {s: 1 for s in strings} if as_key else strings
        text = json.dumps(value)  # ensure_ascii: every surrogate is an escape
        lone = any(0xD800 <= ord(c) <= 0xDFFF for s in strings for c in s)
        if lone:
            with self.assertRaises(InputError) as caught:
                loads_json(text)
            self.assertIn("lone surrogate", str(caught.exception))
        else:
            self.assertEqual(loads_json(text), value)
        self.assertEqual(loads_json('["\\ud83d\\ude00"]'), ["\U0001f600"])

    def test_deep_nesting_refused(self) -> None:
        """The reported attack (20,000 nested arrays) and one level past the
        limit are InputError, not RecursionError; the limit itself parses."""
        for text in (_nested(20000), _nested(MAX_JSON_DEPTH + 1), '{"a":' * 5000 + "1" + "}" * 5000):
            with self.assertRaises(InputError) as caught:
                loads_json(text)
            self.assertIn("deeper than {}".format(MAX_JSON_DEPTH), str(caught.exception))
        self.assertEqual(_depth(loads_json(_nested(MAX_JSON_DEPTH))), MAX_JSON_DEPTH)

    def test_brackets_in_strings_do_not_count(self) -> None:
        """Brackets inside strings (escaped quotes included) are not nesting."""
        text = json.dumps(["[" * 100, '\\"[[[[' * 50, {"k": "{" * 100}])
        self.assertTrue(json_depth_ok(text, 2))
        self.assertEqual(loads_json(text, 2)[0], "[" * 100)

    def test_not_json(self) -> None:
        """Invalid UTF-8, invalid JSON and a number too long for int() are
        InputError."""
        for data in (b"\xff{}", b"{", b"", b"[" + b"9" * 5000 + b"]"):
            self.assertRaises(InputError, loads_json, data)
