"""The status page in a real browser (Debian's Chromium through
Playwright): the map is drawn, and ``/status/events`` refreshes it without
a reload. With ``FASTEDGE_DOCS_SCREENSHOT_STATUS=$PWD/docs/status.png`` it
also refreshes the screenshot in ``docs/status.md`` (a six-node cluster's
map, drawn by the same renderer)."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from fastedge.status.figures import Figures
from fastedge.status.resource import StatusResource
from tests.support.browser import browser
from tests.support.nodes import start_node

_DOCS_SCREENSHOT = os.environ.get("FASTEDGE_DOCS_SCREENSHOT_STATUS")

#: A cluster of two deployments, as `fastedge-admin cluster up` makes one.
SAMPLE = {
    "nodeId": "lon-1",
    "nodes": [
        {
            "nodeId": n,
            "deployment": d,
            "region": r,
            "latitude": la,
            "longitude": lo,
            "state": s,
            "load": load,
            "rttMs": rtt,
            "version": "0.1.0",
            "self": n == "lon-1",
        }
        for n, d, r, la, lo, s, load, rtt in [
            ("lon-1", "eu", "eu-w", 51.51, -0.13, "alive", 412, None),
            ("fra-1", "eu", "eu-c", 50.11, 8.68, "alive", 388, 9.8),
            ("par-1", "eu", "eu-w", 48.86, 2.35, "leaving", 17, 6.1),
            ("nyc-1", "global", "us-e", 40.71, -74.01, "alive", 951, 71.4),
            ("sfo-1", "global", "us-w", 37.77, -122.42, "suspect", 640, 139.0),
            ("sin-1", "global", "ap-se", 1.35, 103.82, "dead", 0, None),
        ]
    ],
}
SAMPLE_FIGURES = Figures(
    requests=1_284_113,
    slow_requests=412,
    latency_p50=0.0025,
    latency_p99=0.05,
    cache_hit_ratio=0.962,
    replica_lag=0.018,
)


class _ClosingSite(Site):
    """A Site that can close what it still serves when a test ends: the
    page's ``/status/events`` stream may still be open on the server's side
    after the browser closed the page (the FIN not yet read), and a
    stopped listener leaves its connections open."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        #: channel -> (its transport, fired when it is closed)
        self.open: dict[Any, tuple[Any, defer.Deferred[None]]] = {}

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        lost: defer.Deferred[None] = defer.Deferred()
        make_connection, connection_lost = channel.makeConnection, channel.connectionLost

        def made(transport: Any) -> None:
            self.open[channel] = (transport, lost)
            make_connection(transport)

        def closed(reason: Any) -> None:
            connection_lost(reason)
            self.open.pop(channel, None)
            lost.callback(None)

        channel.makeConnection, channel.connectionLost = made, closed
        return channel

    def close_all(self) -> defer.Deferred[Any]:
        """Abort every connection still open; fires once all are closed."""
        waiting = [lost for _, lost in self.open.values()]
        for transport, _ in list(self.open.values()):
            transport.abortConnection()
        return defer.gatherResults(waiting)


class StatusBrowserTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.thread = browser()
        config = '[http]\nendpoint = "tcp:0:interface=127.0.0.1"\n[tls]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
        self.node = yield start_node(config, os.path.abspath(self.mktemp()))
        self.addCleanup(self.node.stop)

    @defer.inlineCallbacks
    def test_map_and_live_refresh(self) -> Any:
        url = self.node.http + "/status"

        def visit() -> dict[str, Any]:
            page = self.thread.browser.new_page()
            try:
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(url)
                page.wait_for_selector("#status svg circle")
                # Mark what the server drew; a refresh replaces it.
                page.evaluate("document.querySelector('#status svg').setAttribute('data-old', '1')")
                page.wait_for_selector("#status svg:not([data-old])", timeout=15_000)
                return {
                    "circles": page.locator("#status svg circle").count(),
                    "rows": page.locator("#status table.nodes tbody tr").count(),
                    "title": page.title(),
                    "errors": errors,
                }
            finally:
                page.close()

        seen = yield self.thread.call(visit)
        self.assertEqual(seen["circles"], 1)
        self.assertEqual(seen["rows"], 1)
        self.assertIn("fastedge status", seen["title"])
        self.assertEqual(seen["errors"], [], "no CSP or script errors")

    @defer.inlineCallbacks
    def test_docs_screenshot(self) -> Any:
        """The sample cluster's page renders in the browser (and is the docs' screenshot when asked)."""
        root = Resource()
        root.putChild(b"status", StatusResource(lambda: (SAMPLE, SAMPLE_FIGURES), clock=reactor, version="0.1.0"))
        site = _ClosingSite(root)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(site.close_all)
        self.addCleanup(port.stopListening)
        url = "http://127.0.0.1:{}/status".format(port.getHost().port)

        def shoot() -> int:
            page = self.thread.browser.new_page(viewport={"width": 960, "height": 900})
            try:
                page.goto(url)
                page.wait_for_selector("#status svg circle")
                if _DOCS_SCREENSHOT:
                    page.screenshot(path=_DOCS_SCREENSHOT, full_page=True)
                return int(page.locator("#status svg circle").count())
            finally:
                page.close()

        self.assertEqual((yield self.thread.call(shoot)), 6)
