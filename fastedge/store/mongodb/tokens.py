# -*- test-case-name: tests.unit.store.test_mongodb_wire -*-
"""MongoDB consistency tokens: a write's ``operationTime`` (cluster time).

A token is ``"ct<seconds>.<increment>"``, the two halves of the BSON
timestamp in decimal. It cannot be mistaken for a PostgreSQL token (a WAL
position, ``"16/B374D848"``), and each backend refuses the other's with
:class:`~fastedge.store.errors.BadToken`: a session cookie written before
a node changed backend is then simply ignored by the API.
"""

from __future__ import annotations

import re

from bson.timestamp import Timestamp

from ..errors import BadToken

_TOKEN = re.compile(r"^ct([0-9]{1,10})\.([0-9]{1,10})$")


def format_token(at: Timestamp) -> str:
    """The token for cluster time ``at``."""
    return "ct{}.{}".format(at.time, at.inc)


def parse_token(token: str) -> Timestamp:
    """The cluster time in ``token``.

    :raises BadToken: for anything this backend did not issue.
    """
    m = _TOKEN.match(token) if isinstance(token, str) else None
    if m is None:
        raise BadToken("the consistency token is not one this store issued")
    seconds, inc = int(m.group(1)), int(m.group(2))
    if seconds >= 2**32 or inc >= 2**32:
        raise BadToken("the consistency token is not one this store issued")
    return Timestamp(seconds, inc)


def covers(have: str | None, want: str | None) -> bool:
    """Whether a read at ``have`` is at least as new as ``want``."""
    if want is None:
        return True
    wanted = parse_token(want)
    if have is None:
        return False
    return parse_token(have) >= wanted
