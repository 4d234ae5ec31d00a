# -*- test-case-name: tests.integration.test_postgresql_store -*-
"""Consistency tokens of the PostgreSQL backend: WAL positions.

A write's token is the WAL position of its commit in PostgreSQL's own
notation (``"16/B374D848"``); tokens are totally ordered, so "has the
replica replayed this write" is one comparison.
"""

from __future__ import annotations

import re

from ..errors import BadToken

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse_lsn(token: str) -> int:
    """The WAL position in a token (``"16/B374D848"``) as an integer.

    :raises BadToken: for anything else.
    """
    m = _LSN.match(token) if isinstance(token, str) else None
    if m is None:
        raise BadToken("the consistency token is not one this store issued")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(value: int) -> str:
    """The token for a WAL position (PostgreSQL's own ``pg_lsn`` notation)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
