# -*- test-case-name: tests.integration.test_cdn,tests.unit.test_footprint -*-
"""AWS SigV4 signing of S3 requests, by botocore's signer.

A module of its own so that botocore (with urllib3 and dateutil, ~6 MB of
a node's memory) is imported only by a node that has an S3 origin
configured: :mod:`fastedge.cdn.origin` imports this on first use.
"""

from __future__ import annotations

from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


class _PrecomputedPayloadAuth(S3SigV4Auth):
    """botocore's S3 signer, told the payload hash instead of reading the
    body itself (the body is a file we hashed off the reactor thread)."""

    def __init__(self, credentials: Credentials, region: str, payload_hash: str) -> None:
        super().__init__(credentials, "s3", region)
        self._payload_hash = payload_hash

    def payload(self, request: Any) -> str:
        return self._payload_hash


def credentials(access_key_id: str, secret_access_key: str) -> Credentials:
    """botocore's credentials object for one key pair."""
    return Credentials(access_key_id, secret_access_key)


def sign(
    creds: Credentials, region: str, method: str, url: str, headers: dict[str, str], payload_hash: str
) -> dict[str, str]:
    """``headers`` plus the SigV4 ``Authorization`` (and the headers it signs).

    :param payload_hash: the body's SHA-256 in hex (or S3's constant for an
        empty body).
    """
    request = AWSRequest(method=method, url=url, headers=headers)
    _PrecomputedPayloadAuth(creds, region, payload_hash).add_auth(request)
    return dict(request.headers.items())
