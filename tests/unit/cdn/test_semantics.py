"""Byte ranges, validators and conditional requests."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fastedge.cdn.semantics import (
    ByteRange,
    RangeNotSatisfiable,
    http_date,
    not_modified,
    parse_range,
    range_applies,
)


class RangeTests(SynchronousTestCase):
    def test_single_ranges(self):
        """Closed, open and suffix ranges, clamped to the object."""
        self.assertEqual(parse_range(b"bytes=0-9", 100), ByteRange(0, 9))
        self.assertEqual(parse_range(b"bytes=90-", 100), ByteRange(90, 99))
        self.assertEqual(parse_range(b"bytes=90-500", 100), ByteRange(90, 99))
        self.assertEqual(parse_range(b"bytes=-10", 100), ByteRange(90, 99))
        self.assertEqual(parse_range(b"bytes=-500", 100), ByteRange(0, 99))

    def test_whole_object(self):
        """No header, another unit, or several ranges: the whole object."""
        self.assertIsNone(parse_range(None, 100))
        self.assertIsNone(parse_range(b"items=0-1", 100))
        self.assertIsNone(parse_range(b"bytes=0-1,5-6", 100))

    def test_unsatisfiable(self):
        """Malformed or out-of-range byte ranges are 416."""
        for header in (
            b"bytes=abc",
            b"bytes=5-1",
            b"bytes=100-",
            b"bytes=-0",
            b"bytes=-",
            b"bytes=1-2,x",
            b"bytes=\xff",
            b"bytes=" + b"9" * 30 + b"-",
        ):
            with self.assertRaises(RangeNotSatisfiable, msg=header):
                parse_range(header, 100)


class ConditionalTests(SynchronousTestCase):
    def test_if_none_match(self):
        """Weak comparison, lists and '*'; If-None-Match wins over If-Modified-Since."""
        etag = b'"abc"'
        self.assertTrue(
            not_modified(
                etag=etag,
                last_modified=0,
                if_none_match=b'"x", W/"abc"',
                if_modified_since=None,
            )
        )
        self.assertTrue(not_modified(etag=etag, last_modified=0, if_none_match=b"*", if_modified_since=None))
        self.assertFalse(
            not_modified(
                etag=etag,
                last_modified=0,
                if_none_match=b'"x"',
                if_modified_since=http_date(10**9).encode(),
            )
        )

    def test_if_modified_since(self):
        """Not modified when Last-Modified is not after the date; bad dates are ignored."""
        lm = 1_000_000_000.0
        self.assertTrue(
            not_modified(
                etag=None,
                last_modified=lm,
                if_none_match=None,
                if_modified_since=http_date(lm).encode(),
            )
        )
        self.assertFalse(
            not_modified(
                etag=None,
                last_modified=lm,
                if_none_match=None,
                if_modified_since=http_date(lm - 1).encode(),
            )
        )
        self.assertFalse(
            not_modified(
                etag=None,
                last_modified=lm,
                if_none_match=None,
                if_modified_since=b"yesterday",
            )
        )

    def test_if_range(self):
        """If-Range honours the range only for a strongly matching validator."""
        self.assertTrue(range_applies(None, etag=b'"a"', last_modified=None))
        self.assertTrue(range_applies(b'"a"', etag=b'"a"', last_modified=None))
        self.assertFalse(range_applies(b'"b"', etag=b'"a"', last_modified=None))
        self.assertFalse(range_applies(b'W/"a"', etag=b'"a"', last_modified=None))
        self.assertTrue(range_applies(http_date(5.0).encode(), etag=None, last_modified=5.0))
