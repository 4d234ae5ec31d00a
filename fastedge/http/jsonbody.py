# -*- test-case-name: tests.unit.http.test_channel,tests.unit.api.test_manage -*-
"""JSON bodies for HTTP responses, errors included.

Every error a client sees has the same shape::

    {"error": {"code": "thread_closed", "message": "this thread is closed"}}

``code`` is stable and meant for programs; ``message`` is for people.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return _encoder.encode(value).encode("utf-8")


def write_json(request: IRequest, status: int, body: bytes) -> None:
    """Finish ``request`` with an already-encoded JSON body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-length", b"%d" % (len(body),))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def error_body(code: str, message: str, **extra: Any) -> bytes:
    """The JSON error document."""
    err: dict[str, Any] = {"code": code, "message": message}
    err.update(extra)
    return encode({"error": err})


def write_error(request: IRequest, status: int, code: str, message: str, **extra: Any) -> None:
    """Finish ``request`` with a JSON error."""
    write_json(request, status, error_body(code, message, **extra))


def raw_error_response(
    status: int, reason: bytes, code: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, as bytes,
    for the places that answer below any request object (a connection
    refused at accept, a request whose headers never completed).

    :param reason: the status line's reason phrase.
    """
    body = error_body(code, message)
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"content-type: application/json; charset=utf-8",
        b"x-content-type-options: nosniff",
        b"content-length: %d" % (len(body),),
        b"connection: close",
    ]
    lines.extend(name + b": " + value for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class JsonNotFound(Resource):
    """A JSON 404 for any path below it (``{"error": {"code": "not_found"}}``),
    the answer every tree of the node gives for a path it does not have."""

    isLeaf = True

    def render(self, request: Any) -> int:
        request.route = "not_found"
        write_error(request, 404, "not_found", "no such resource")
        return NOT_DONE_YET
