"""Schemathesis hooks for tests/integration/test_openapi_fuzz.py (loaded by
the schemathesis process it starts, never by trial).

They supply what docs/openapi.yaml documents in words but JSON Schema cannot
say, so that a request the fuzzer calls valid is one the node must accept:

* a listing ``cursor`` is valid only when the node issued it (a made-up one
  is a 400 ``bad_cursor``): valid requests carry none, invalid ones keep
  whatever was generated;
* ``since`` on ``/live/events`` without an epoch counts in the channel's
  current epoch, and one beyond the channel's sequence number is a 400
  ``since_in_future``: valid requests without an epoch resume from 0;
* a ban's ``expiresAt`` must be in the future (else 422 ``bad_expiry``),
  which depends on the clock, not on the request's form: valid requests
  with an expiry that has passed (or is about to) get one a day ahead;
* an upload's bytes must be what its Content-Type says (else 415
  ``content_mismatch``): upload bodies are small objects of their type
  (a file's first bytes, then random ones), registered as the strategy of
  each media type.

Everything else is generated from the spec as it stands. One more hook
keeps the run meaningful: the fuzzer learns key ids from ``GET /keys`` and
would revoke the keys it runs with (then every later request is a
documented 401); those ids (``FASTEDGE_FUZZ_KEEP_KEYS``) are replaced by
one that names no key.
"""

from __future__ import annotations

import os
import time
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis.core.parameters import ParameterLocation

#: The first bytes of an object of each default upload type (what puremagic
#: recognises).
SAMPLES = {
    "image/png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89",
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    "image/gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    "image/webp": b"RIFF\x1a\x00\x00\x00WEBPVP8L\r\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00",
    "image/avif": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf",
    "video/mp4": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isommp41",
    "video/webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08\x42\x82\x84webm",
    "audio/mpeg": b"ID3\x03\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00" + b"\x00" * 20,
    "audio/ogg": b"OggS\x00\x02" + b"\x00" * 8 + b"\x01" + b"\x00" * 10 + b"\x01\x1e\x01vorbis",
}
SSE = ("GET", "/live/events")
REVOKE = ("DELETE", "/api/v1/manage/keys/{keyId}")
BANNING = {("POST", "/api/v1/manage/moderation/bans"), ("POST", "/api/v1/manage/moderation/actions")}
#: A valid expiry is at least this far ahead when sent (ms), so the node's
#: clock cannot pass it on the way.
MIN_AHEAD_MS = 3_600_000
DAY_MS = 86_400_000
KEEP = set(filter(None, os.environ.get("FASTEDGE_FUZZ_KEEP_KEYS", "").split(",")))

for _media_type, _head in SAMPLES.items():
    schemathesis.openapi.media_type(_media_type, st.binary(max_size=64).map(_head.__add__))


def _valid(case: Any, location: ParameterLocation) -> bool:
    return case.meta is not None and not case.meta.is_negative_at(location)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Valid requests carry no made-up cursor, future ``since`` or past
    ``expiresAt``; the run's keys are never revoked."""
    if isinstance(case.query, dict) and "cursor" in case.query and _valid(case, ParameterLocation.QUERY):
        del case.query["cursor"]
    if (
        (case.method.upper(), case.path) == SSE
        and isinstance(case.query, dict)
        and "since" in case.query
        and not {"epoch", "lastEventId"} & set(case.query)
        and _valid(case, ParameterLocation.QUERY)
    ):
        case.query["since"] = 0
    if (
        (case.method.upper(), case.path) in BANNING
        and isinstance(case.body, dict)
        and isinstance(case.body.get("expiresAt"), int)
        and _valid(case, ParameterLocation.BODY)
    ):
        now_ms = int(time.time() * 1000)
        if case.body["expiresAt"] < now_ms + MIN_AHEAD_MS:
            case.body["expiresAt"] = now_ms + DAY_MS
    if (case.method.upper(), case.path) == REVOKE and case.path_parameters.get("keyId") in KEEP:
        case.path_parameters["keyId"] = "not-a-key-of-this-run"
