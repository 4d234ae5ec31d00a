"""SigV4 for S3 (:mod:`fastedge.cdn.sigv4`): AWS's own worked example, and
byte-identical headers to botocore's ``S3SigV4Auth`` on drawn requests."""

from __future__ import annotations

import datetime
from urllib.parse import quote

import botocore.auth
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotocoreCredentials
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.cdn.sigv4 import credentials, sign

_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class _PayloadHashAuth(S3SigV4Auth):
    """botocore's S3 signer told the payload hash (as the node's signer is)."""

    def __init__(self, creds: BotocoreCredentials, region: str, payload_hash: str) -> None:
        super().__init__(creds, "s3", region)
        self._payload_hash = payload_hash

    def payload(self, request: object) -> str:
        return self._payload_hash


# Drawn requests: what the origin client sends, and then some.
_methods = st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "get"])
_key_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_endpoints = st.sampled_from(
    [
        "http://127.0.0.1:8333",
        "https://s3.example.com",
        "https://s3.example.com:443",
        "http://S3.Example.COM:80",
        "http://[::1]:9000",
        "https://minio.internal:9443",
    ]
)
_header_names = st.sampled_from(
    [
        "Content-Type",
        "Range",
        "If-None-Match",
        "If-Match",
        "Cache-Control",
        "x-amz-meta-sha256",
        "User-Agent",
        "Connection",
        "Host",
        "Content-MD5",
    ]
)
# Values with runs of spaces and tabs (signed with each run made one space).
_header_values = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    st.lists(st.sampled_from(["bytes=0-9", "a", " ", "  ", "\t", " \t "]), max_size=6).map("".join),
)
_queries = st.lists(
    st.tuples(
        st.sampled_from(["list-type", "prefix", "max-keys", "continuation-token", "uploads", "a"]),
        st.text(max_size=12),
    ),
    max_size=4,
)


class Sigv4Tests(SynchronousTestCase):
    def test_aws_worked_example(self) -> None:
        """AWS's S3 documentation example (GET /test.txt with a Range, the
        example keys, 2013-05-24) signs to the signature AWS publishes."""
        now = datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC).timestamp()
        headers = sign(
            credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            "us-east-1",
            "GET",
            "https://examplebucket.s3.amazonaws.com/test.txt",
            {"Range": "bytes=0-9"},
            _EMPTY_SHA256,
            now=now,
        )
        self.assertEqual(
            headers,
            {
                "Range": "bytes=0-9",
                "X-Amz-Date": "20130524T000000Z",
                "X-Amz-Content-SHA256": _EMPTY_SHA256,
                "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            },
        )

    @settings(max_examples=300, deadline=None)
    @given(
        method=_methods,
        endpoint=_endpoints,
        bucket=st.sampled_from(["media", "b-1.x"]),
        key=_key_text,
        query=_queries,
        headers=st.dictionaries(_header_names, _header_values, max_size=5),
        payload=st.one_of(st.just(_EMPTY_SHA256), st.binary(min_size=32, max_size=32).map(bytes.hex)),
        when=st.integers(min_value=0, max_value=4102444800),
        region=st.sampled_from(["us-east-1", "eu-west-3", "garage"]),
        access=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
        secret=st.text(min_size=1, max_size=40),
    )
    def test_same_headers_as_botocore(
        self,
        method: str,
        endpoint: str,
        bucket: str,
        key: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        payload: str,
        when: int,
        region: str,
        access: str,
        secret: str,
    ) -> None:
        """For any request the origin client could make (a key encoded as
        it encodes keys, a query encoded as it encodes listings, any of the
        headers it or a proxy might set, IPv6 and non-default ports), the
        headers match botocore's S3 signer's at the same instant, byte for
        byte."""
        url = f"{endpoint}/{bucket}/{quote(key, safe='/~')}"
        if query:
            url += "?" + "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query)
        instant = datetime.datetime.fromtimestamp(when, datetime.UTC).replace(tzinfo=None)
        # botocore reads the wall clock itself: it is told this instant.
        self.patch(botocore.auth, "get_current_datetime", lambda: instant)
        request = AWSRequest(method=method, url=url, headers=dict(headers))
        _PayloadHashAuth(BotocoreCredentials(access, secret), region, payload).add_auth(request)
        ours = sign(credentials(access, secret), region, method, url, headers, payload, now=when)
        self.assertEqual(ours, dict(request.headers.items()))

    def test_secret_not_in_repr(self) -> None:
        """The credentials' repr (what a log line or a traceback shows)
        names the access key id but never the secret."""
        text = repr(credentials("AKID", "very-secret-value"))
        self.assertIn("AKID", text)
        self.assertNotIn("very-secret-value", text)
