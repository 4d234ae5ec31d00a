# -*- test-case-name: tests.unit.cdn.test_keys -*-
"""Media URLs and object keys: what a client may name, and nothing else.

A media URL is ``/media/<tenant>/<key>``. The key is percent-decoded one
segment at a time and refused (:class:`BadKey`) when it could escape the
tenant's prefix at the origin or confuse a file system or an S3 server:
``.`` or ``..`` segments, empty segments, an encoded ``/``, NUL or other
control characters, a backslash, invalid UTF-8, or more bytes than S3
allows. The cache never uses the key as a file name (see :func:`cache_id`).
"""

from __future__ import annotations

import hashlib
import unicodedata
from urllib.parse import unquote_to_bytes

__all__ = ["BadKey", "cache_id", "check_key", "split_media_path"]


class BadKey(ValueError):
    """A key or media path that is refused; ``code`` is the API error code."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _decode_segment(raw: bytes) -> str:
    decoded = unquote_to_bytes(raw)
    if b"/" in decoded:
        raise BadKey("bad_key", "an encoded '/' is not allowed in a key")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise BadKey("bad_key", "the key must be UTF-8") from None
    return text


def check_key(key: str, *, prefix: str = "", max_bytes: int = 1024) -> str:
    """Validate an object key (as decoded text); returns it unchanged.

    :param prefix: the tenant's origin prefix, counted in the length limit.
    :raises BadKey: naming the problem.
    """
    if not key:
        raise BadKey("bad_key", "the key is empty")
    for ch in key:
        if ch == "\\":
            raise BadKey("bad_key", "a backslash is not allowed in a key")
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u2028\u2029":
            raise BadKey("bad_key", "control characters are not allowed in a key")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise BadKey("bad_key", "empty, '.' and '..' path segments are not allowed in a key")
    if len((prefix + key).encode("utf-8")) > max_bytes:
        raise BadKey(
            "key_too_long",
            f"the key is longer than {max_bytes} bytes",
            status=414,
        )
    return key


def split_media_path(path: bytes, *, max_bytes: int = 1024, validate: bool = True) -> tuple[str, str]:
    """``/media/<tenant>/<key>`` (query already removed) -> (tenant, key).

    The length is checked on the raw path first, so an enormous URL is
    refused before it is decoded.

    :param validate: check the key with :func:`check_key`. The resource
        skips it on the hit path (only valid keys are ever cached, so an
        invalid one cannot hit) and checks before anything else.
    """
    if len(path) > 3 * max_bytes + 256:
        raise BadKey(
            "key_too_long",
            f"the key is longer than {max_bytes} bytes",
            status=414,
        )
    parts = path.split(b"/")
    # ["", "media", tenant, key...]
    if len(parts) < 4 or parts[0] != b"" or parts[1] != b"media":
        raise BadKey("bad_media_path", "media URLs look like /media/<tenant>/<key>", status=404)
    tenant = _decode_segment(parts[2])
    if not tenant:
        raise BadKey("bad_media_path", "media URLs look like /media/<tenant>/<key>", status=404)
    key = "/".join(_decode_segment(p) for p in parts[3:])
    return tenant, (check_key(key, max_bytes=max_bytes) if validate else key)


def cache_id(tenant: str, key: str) -> str:
    """The cache's name for an object: a hash, so no key ever becomes a path,
    and the tenant is part of it, so two tenants' keys never meet."""
    raw_tenant = tenant.encode("utf-8")
    # Length-prefixed, so no (tenant, key) pair can spell another.
    return hashlib.sha256(b"%d:" % len(raw_tenant) + raw_tenant + key.encode("utf-8")).hexdigest()
