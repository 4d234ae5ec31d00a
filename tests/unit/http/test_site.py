"""EdgeSite/EdgeRequest: body limits, JSON errors and per-route metrics,
exercised at the wire with a StringTransport."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from fastedge.http.metrics import HttpMetrics
from fastedge.http.site import EdgeSite
from fastedge.metrics.registry import new_registry


class _Echo(Resource):
    """Answers with the body length; advances the clock to simulate work."""

    isLeaf = True

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def render_POST(self, request: Request) -> bytes:
        request.route = "/echo"  # type: ignore[attr-defined]
        self.clock.advance(0.25)
        return b"%d" % len(request.content.read())

    def render_GET(self, request: Request) -> bytes:
        request.route = "/echo"  # type: ignore[attr-defined]
        raise RuntimeError("secret detail that must not leak")


class SiteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = new_registry()
        root = Resource()
        root.putChild(b"echo", _Echo(self.clock))
        self.site = EdgeSite(root, reactor=self.clock, max_body_bytes=100, metrics=HttpMetrics(self.registry, 0.1))

    def exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(raw)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        code = int(lines[0].split()[1])
        if headers.get("transfer-encoding") == "chunked":
            body = _dechunk(body)
        protocol.connectionLost(None)  # type: ignore[arg-type]
        return code, headers, body

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def test_body_within_limit(self) -> None:
        """A body up to the limit reaches the resource."""
        code, _, body = self.exchange(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 100)
        self.assertEqual((code, body), (200, b"100"))

    def test_content_length_over_limit(self) -> None:
        """A declared length over the limit is a JSON 413; the resource never runs."""
        code, headers, body = self.exchange(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + b"a" * 101
        )
        self.assertEqual(code, 413)
        self.assertEqual(headers["content-type"], "application/json; charset=utf-8")
        self.assertEqual(json.loads(body)["error"]["code"], "body_too_large")
        self.assertEqual(
            self.metric("fastedge_http_requests_total", route="body_too_large", method="POST", code="413"), 1.0
        )

    def test_chunked_over_limit(self) -> None:
        """A chunked body that grows past the limit is refused the same way."""
        chunks = b"".join(b"%x\r\n%s\r\n" % (40, b"b" * 40) for _ in range(3)) + b"0\r\n\r\n"
        code, _, body = self.exchange(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        self.assertEqual((code, json.loads(body)["error"]["code"]), (413, "body_too_large"))

    def test_unhandled_error_is_json_500(self) -> None:
        """An exception in a resource is logged and answered with a JSON 500
        that carries no traceback or detail."""
        code, _, body = self.exchange(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(code, 500)
        self.assertEqual(json.loads(body)["error"]["code"], "internal_error")
        self.assertNotIn(b"secret", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_metrics_by_route(self) -> None:
        """Each request is counted by route template, method and code, its
        duration observed, and a slow one counted as slow."""
        self.exchange(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na")
        self.assertEqual(self.metric("fastedge_http_requests_total", route="/echo", method="POST", code="200"), 1.0)
        self.assertEqual(self.metric("fastedge_http_request_duration_seconds_sum", route="/echo", method="POST"), 0.25)
        self.assertEqual(self.metric("fastedge_http_slow_requests_total", route="/echo"), 1.0)

    def test_odd_method_label(self) -> None:
        """Methods outside the known set share one label value, so clients
        cannot grow the metric's label set."""
        self.exchange(b"BREW /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(
            self.metric("fastedge_http_requests_total", route="unmatched", method="other", code="404"), 1.0
        )


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out
