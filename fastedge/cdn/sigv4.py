# -*- test-case-name: tests.unit.cdn.test_sigv4,tests.integration.test_cdn,tests.unit.test_footprint -*-
"""AWS Signature Version 4 for S3 requests, with :mod:`hmac` and :mod:`hashlib`.

Why not botocore's signer (as before): importing botocore (with urllib3 and
dateutil) cost a node with an S3 origin ~8.6 MB of memory and ~0.3 s at
start, for the few HMACs below; and its signer reads the wall clock itself,
where ours is told the time (the origin passes its reactor's
``seconds()``). The steps are AWS's ("Create a signed AWS API request"),
as botocore's ``S3SigV4Auth`` applies them to S3: the path is signed as it
is sent (S3 paths are neither normalised nor encoded twice), the query as
it is in the URL (sorted), the body's SHA-256 is sent and signed as
``X-Amz-Content-SHA256``, and ``Host`` is signed as the HTTP client will
send it (no default port). ``tests/unit/cdn/test_sigv4.py`` checks the
headers are byte-identical to botocore's for Hypothesis-drawn requests, and
the SeaweedFS integration tests check a real S3 server accepts them.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["Credentials", "credentials", "sign"]

#: Headers never signed: hop-by-hop ones, and those proxies or tracing may
#: change on the way (the same list as botocore's).
_UNSIGNED = frozenset(
    {
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Credentials:
    """One access key pair. The secret never appears in ``repr`` (so not
    in a log line or a traceback's locals either)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)


def credentials(access_key_id: str, secret_access_key: str) -> Credentials:
    """The credentials for one key pair."""
    return Credentials(access_key_id, secret_access_key)


def _host(url: str) -> str:
    """The ``Host`` header an HTTP client sends for ``url``: lower case,
    the port only when not the scheme's default, IPv6 in brackets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def _canonical_query(query: str) -> str:
    """The URL's query, its ``key=value`` pairs sorted (by key, then value);
    they are signed as encoded in the URL."""
    if not query:
        return ""
    pairs = [pair.partition("=") for pair in query.split("&")]
    return "&".join(f"{key}={value}" for key, value in sorted((key, value) for key, _, value in pairs))


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def sign(
    creds: Credentials,
    region: str,
    method: str,
    url: str,
    headers: dict[str, str],
    payload_hash: str,
    *,
    now: float,
) -> dict[str, str]:
    """``headers`` plus ``X-Amz-Date``, ``X-Amz-Content-SHA256`` and the
    SigV4 ``Authorization`` for a request to S3.

    :param url: the request's URL, path and query encoded as they are sent.
    :param headers: the request's own headers (``Host`` is signed as the
        client derives it from ``url`` unless given here).
    :param payload_hash: the body's SHA-256 in hex (or that of no bytes).
    :param now: the signing time, in seconds since the epoch.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    day = stamp[:8]
    sent = dict(headers)
    sent["X-Amz-Date"] = stamp
    sent["X-Amz-Content-SHA256"] = payload_hash

    signed: dict[str, str] = {}
    for name, value in sent.items():
        lname = name.lower()
        if lname not in _UNSIGNED:
            # Values trimmed, inner runs of white space made one space.
            signed[lname] = " ".join(value.split())
    if "host" not in signed:
        signed["host"] = _host(url)
    names = sorted(signed)
    signed_headers = ";".join(names)

    parts = urlsplit(url)
    canonical_request = "\n".join(
        (
            method.upper(),
            parts.path,
            _canonical_query(parts.query),
            "".join(f"{name}:{signed[name]}\n" for name in names),
            signed_headers,
            payload_hash,
        )
    )
    scope = f"{day}/{region}/s3/aws4_request"
    string_to_sign = "\n".join(
        ("AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest())
    )
    key = _hmac(("AWS4" + creds.secret_access_key).encode("utf-8"), day)
    for part in (region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    sent["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return sent
