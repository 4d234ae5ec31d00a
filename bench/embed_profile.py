"""CPU per request of the anonymous embed page beside the JSON page, in
process: raw HTTP/1.1 requests (as wrk sends them, keep-alive) fed into a
node's Site (:class:`tests.support.nodes.NodeHarness`, the unit tests' node on
SQLite, a 200-comment thread, ``api.page_size = 100``) over a
StringTransport. No sockets and no load tool, so the figures hold on a
shared machine better than req/s do: function calls per request (exact,
from cProfile) and CPU microseconds per request (unprofiled).

    .venv/bin/python bench/embed_profile.py [REQUESTS] [--top]

(about ten seconds at the default 3000 requests).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from urllib.parse import quote

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.trial.unittest import SynchronousTestCase  # noqa: E402

from tests.support.nodes import NodeHarness

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
REQUESTS = int(ARGS[0]) if ARGS else 3000
TOP = "--top" in sys.argv
URL = "https://bench.test/article"


class Profile(SynchronousTestCase):
    def test_profile(self) -> None:
        node = NodeHarness(self, page_size=100, writes_per_minute_per_ip=10**6, writes_per_minute_per_session=10**6)
        tenant, _ = node.create_tenant("Bench")
        q = quote(URL, safe="")
        for i in range(200):
            body = '{{"text":"comment number {} with a few words","displayName":"reader {}"}}'.format(i, i)
            r = node.request(
                "POST",
                "/api/v1/{}/comments?urlId={}".format(tenant, q),
                data=body.encode(),
                headers={"content-type": "application/json"},
            )
            assert r.code == 201, (r.code, r.body)
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        channel = node.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 80))
        channel.makeConnection(transport)
        paths = (
            ("JSON page", "/api/v1/{}/comments?urlId={}".format(tenant, q)),
            ("embed page", "/embed/{}/?urlId={}".format(tenant, q)),
        )
        print("anonymous readers, {} requests each, 200 comments on one page".format(REQUESTS))
        print("{:<20} {:>12} {:>12}".format("case", "calls/req", "CPU us/req"))
        for extra, suffix in ((b"", ""), (b"Accept-Encoding: gzip\r\n", ", gzip")):
            for label, path in paths:
                raw = "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\n".format(path).encode() + extra + b"\r\n"
                for _ in range(50):
                    channel.dataReceived(raw)
                assert transport.value().startswith(b"HTTP/1.1 200"), transport.value()[:200]
                transport.clear()
                profile = cProfile.Profile()
                profile.enable()
                for _ in range(REQUESTS):
                    channel.dataReceived(raw)
                    transport.clear()
                profile.disable()
                started = time.process_time()
                for _ in range(REQUESTS):
                    channel.dataReceived(raw)
                    transport.clear()
                cpu = (time.process_time() - started) / REQUESTS * 1e6
                stats = pstats.Stats(profile)
                print("{:<20} {:>12.0f} {:>12.0f}".format(label + suffix, stats.total_calls / REQUESTS, cpu))  # type: ignore[attr-defined]
                if TOP:
                    out = io.StringIO()
                    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
                    print(out.getvalue())
        channel.connectionLost(None)


if __name__ == "__main__":
    from twisted.trial.reporter import TextReporter

    result = TextReporter(stream=sys.stderr)
    # The harness's store goes under the working directory: a scratch one.
    os.chdir(tempfile.mkdtemp(prefix="fastedge-embed-profile-"))
    Profile("test_profile").run(result)
    if not result.wasSuccessful():
        raise SystemExit(1)
