"""The request counter behind the S3 fixture's exact origin counts
(tests/support/countingproxy.py): a count a test relies on must be right
however the byte stream is cut."""

from __future__ import annotations

import threading
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support.countingproxy import RequestCounter

_request = st.tuples(
    st.sampled_from(["GET", "HEAD", "PUT"]),
    st.sampled_from(["media", "other"]),
    st.binary(max_size=64),
)


def _wire(method: str, bucket: str, body: bytes) -> bytes:
    head = f"{method} /{bucket}/k/x.png?versionId=1 HTTP/1.1\r\nHost: s3\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


class RequestCounterTests(SynchronousTestCase):
    @given(st.lists(_request, max_size=8), st.lists(st.integers(min_value=1, max_value=50), max_size=20))
    def test_counts_every_request_however_cut(self, requests, cuts):
        """Requests with and without bodies (bodies that look like request
        lines included), fed in arbitrary pieces, are each counted once
        under their method and bucket."""
        count: Counter[tuple[str, str]] = Counter()
        counter = RequestCounter(count, threading.Lock())
        stream = b"".join(_wire(*r) for r in requests)
        at = 0
        for cut in cuts:
            counter.feed(stream[at : at + cut])
            at += cut
        counter.feed(stream[at:])
        self.assertEqual(count, Counter((m, b) for m, b, _ in requests))

    def test_chunked_is_refused(self):
        """A chunked request cannot be sized, so it is an error, never a
        silently wrong count."""
        counter = RequestCounter(Counter(), threading.Lock())
        self.assertRaises(ValueError, counter.feed, b"PUT /b/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
