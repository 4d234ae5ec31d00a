# -*- test-case-name: tests.unit.cdn.test_semantics -*-
"""HTTP caching semantics for media responses (RFC 9110, RFC 9111): byte
ranges, validators and conditional requests. Pure functions, no I/O.

Decisions where the RFC leaves a choice:

- Only single ranges are served (206). A request for several ranges gets the
  whole object (200): RFC 9110 lets a server ignore Range, and
  ``multipart/byteranges`` is rarely worth its cost for media.
- A Range in another unit than ``bytes`` is ignored (RFC 9110 14.2 says so);
  a ``bytes=`` range that does not parse is answered 416, like nginx, so a
  broken client learns about it rather than silently downloading everything.
- ``If-Range`` with a validator that does not match turns the request into a
  plain 200 (RFC 9110 13.1.5); a weak ETag never matches in ``If-Range``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime

__all__ = [
    "ByteRange",
    "RangeNotSatisfiable",
    "http_date",
    "not_modified",
    "parse_http_date",
    "parse_range",
    "range_applies",
]

_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class RangeNotSatisfiable(ValueError):
    """The Range header cannot be served: answer 416 with ``bytes */size``."""


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive (as in Content-Range)."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> bytes:
        return b"bytes %d-%d/%d" % (self.start, self.end, size)


def parse_range(header: bytes | None, size: int) -> ByteRange | None:
    """The single byte range a Range header asks for, against ``size`` bytes.

    :returns: ``None`` when the whole object should be sent (no header, an
        unknown unit, several ranges).
    :raises RangeNotSatisfiable: malformed ``bytes=`` ranges, or a range
        that starts past the end.
    """
    if header is None:
        return None
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError:
        raise RangeNotSatisfiable("the Range header is not ASCII") from None
    unit, eq, specs = text.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    parts = specs.split(",")
    if len(parts) > 1:
        # Several ranges: valid HTTP, served as a plain 200 (see the module docstring).
        for part in parts:
            if not _RANGE_SPEC.match(part) or part.strip() == "-":
                raise RangeNotSatisfiable("malformed byte range")
        return None
    m = _RANGE_SPEC.match(parts[0])
    if m is None:
        raise RangeNotSatisfiable("malformed byte range")
    first, last = m.group(1), m.group(2)
    if len(first) > 18 or len(last) > 18:
        raise RangeNotSatisfiable("byte range out of bounds")
    if first == "" and last == "":
        raise RangeNotSatisfiable("malformed byte range")
    if first == "":
        # Suffix range: the last N bytes.
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    end = size - 1 if last == "" else int(last)
    if end < start:
        raise RangeNotSatisfiable("the range ends before it starts")
    if start >= size:
        raise RangeNotSatisfiable("the range starts past the end")
    return ByteRange(start, min(end, size - 1))


def _etags(header: bytes) -> list[bytes]:
    return [t.strip() for t in header.split(b",") if t.strip()]


def _weak_match(a: bytes, b: bytes) -> bool:
    return a.removeprefix(b"W/") == b.removeprefix(b"W/")


def parse_http_date(value: bytes | str | None) -> float | None:
    """An HTTP-date as a Unix time, or ``None`` if absent or malformed."""
    if value is None:
        return None
    try:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def http_date(when: float) -> str:
    """A Unix time as an IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``)."""
    return formatdate(when, usegmt=True)


def not_modified(
    *,
    etag: bytes | None,
    last_modified: float | None,
    if_none_match: bytes | None,
    if_modified_since: bytes | None,
) -> bool:
    """Whether a GET/HEAD may be answered 304 (RFC 9110 13.2.2: If-None-Match
    wins over If-Modified-Since; weak comparison)."""
    if if_none_match is not None:
        if if_none_match.strip() == b"*":
            return True
        if etag is None:
            return False
        return any(_weak_match(tag, etag) for tag in _etags(if_none_match))
    if if_modified_since is not None and last_modified is not None:
        since = parse_http_date(if_modified_since)
        return since is not None and int(last_modified) <= int(since)
    return False


def range_applies(if_range: bytes | None, *, etag: bytes | None, last_modified: float | None) -> bool:
    """Whether a Range header should be honoured given ``If-Range``."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(b'"') or value.startswith(b"W/"):
        # Strong comparison: a weak tag never matches.
        return etag is not None and not value.startswith(b"W/") and not etag.startswith(b"W/") and value == etag
    when = parse_http_date(value)
    return when is not None and last_modified is not None and int(when) == int(last_modified)
