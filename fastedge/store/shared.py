# -*- test-case-name: tests.unit.store.test_sqlite,tests.unit.store.test_schema,tests.unit.test_footprint -*-
"""What every backend makes the same way and needs no SQL layer for: ids,
page cursors and pages.

Kept apart from :mod:`fastedge.store.sql` so that the MongoDB backend and
the webhook worker use them without importing the SQL backends, and so
that a cursor means the same on every backend.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..inputs import loads_json
from .errors import BadCursor
from .model import Page

__all__ = ["decode_cursor", "encode_cursor", "new_id", "page_of"]

_T = TypeVar("_T")


def new_id() -> str:
    """A random, URL-safe identifier (96 bits), never starting with ``-``:
    operators pass ids as command-line arguments (``fastedge-admin tenant
    revoke-key TENANT KEY_ID``), where a leading ``-`` reads as an option."""
    while True:
        value = secrets.token_urlsafe(12)
        if value[0] != "-":
            return value


def encode_cursor(kind: str, *values: Any) -> str:
    """An opaque cursor for a listing of ``kind`` resuming after ``values``."""
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, types: Sequence[type]) -> list[Any]:
    """Decode a cursor made by :func:`encode_cursor`; ``BadCursor`` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = loads_json(raw)
    except (binascii.Error, ValueError):
        # InputError (not JSON, or nested deeper than any cursor we issue)
        # is a ValueError, as is a cursor that is not ASCII.
        raise BadCursor("cursor is not one this server issued") from None
    if not isinstance(values, list) or len(values) != len(types) + 1 or values[0] != kind:
        raise BadCursor("cursor is not one this server issued")
    for value, tp in zip(values[1:], types, strict=True):
        if type(value) is not tp or not _bindable(value):
            raise BadCursor("cursor is not one this server issued")
    return values[1:]


def _bindable(value: Any) -> bool:
    """Whether a decoded cursor value can be sent to the database: JSON
    allows integers of any size and lone surrogates, which the drivers reject."""
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def page_of(rows: Sequence[Any], limit: int, make: Callable[[Any], _T], cursor_of: Callable[[Any], str]) -> Page[_T]:
    """A page from the ``limit + 1`` rows a listing reads: the extra row only
    says a next page exists; its cursor is made from the last row kept
    (``cursor_of`` reads the row's sort columns)."""
    next_cursor = cursor_of(rows[limit - 1]) if len(rows) > limit else None
    return Page([make(r) for r in rows[:limit]], next_cursor)
