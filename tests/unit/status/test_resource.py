"""``/status``, ``/status/events`` and ``/status/refresh.js`` on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from fastedge.status.figures import Figures
from fastedge.status.resource import StatusResource

FIGURES = Figures(
    requests=1, slow_requests=0, latency_p50=None, latency_p99=None, cache_hit_ratio=None, replica_lag=None
)


class StatusResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.load = 1
        self.broken = False
        self.resource = StatusResource(self.snapshot, clock=self.clock, version="9.9", interval=2.0, max_streams=2)

    def snapshot(self) -> tuple[dict[str, Any], Figures]:
        if self.broken:
            raise RuntimeError("no map")
        node = {"nodeId": "n1", "state": "alive", "load": self.load, "latitude": 0, "longitude": 0, "self": True}
        return {"nodeId": "n1", "nodes": [node]}, FIGURES

    def get(self, *path: bytes) -> tuple[DummyRequest, Any]:
        request = DummyRequest(list(path))
        resource = self.resource
        for segment in path:
            resource = resource.getChildWithDefault(segment, request)
        return request, resource.render(request)

    def test_page(self) -> None:
        request, body = self.get(b"")
        self.assertIn(b"<svg", body)
        self.assertIn(b"fastedge 9.9", body)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertIn(b"script-src 'self'", request.responseHeaders.getRawHeaders(b"content-security-policy")[0])

    def test_events_refresh_until_the_client_goes(self) -> None:
        request, _ = self.get(b"events")
        self.assertEqual(len(request.written), 1)
        self.assertTrue(request.written[0].startswith(b"data: <svg"))
        self.assertTrue(request.written[0].endswith(b"\n\n"))
        self.load = 77
        self.clock.advance(2.0)
        self.assertEqual(len(request.written), 2)
        self.assertIn(b"<td>77</td>", request.written[1])
        request.processingFailed(ConnectionError("gone"))  # the client went away
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_broken_snapshot_is_logged_and_retried(self) -> None:
        self.broken = True
        request, _ = self.get(b"events")
        self.assertEqual(request.written, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.broken = False
        self.clock.advance(2.0)
        self.assertEqual(len(request.written), 1)

    def test_bounded_streams(self) -> None:
        self.get(b"events")
        self.get(b"events")
        request, _ = self.get(b"events")
        self.assertEqual(request.responseCode, 503)

    def test_script_and_unknown(self) -> None:
        request, body = self.get(b"refresh.js")
        self.assertIn(b"EventSource", body)
        request, _ = self.get(b"nope")
        self.assertEqual(request.responseCode, 404)
