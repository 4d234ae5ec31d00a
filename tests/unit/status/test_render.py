"""The status page's drawing: positions, colours, escaping."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.status.figures import Figures
from fastedge.status.render import COLOURS, HEIGHT, WIDTH, project, render_fragment, render_map, render_page

FIGURES = Figures(
    requests=120, slow_requests=3, latency_p50=0.005, latency_p99=0.25, cache_hit_ratio=0.875, replica_lag=0.042
)
MESH = {
    "nodeId": "lon-1",
    "nodes": [
        {
            "nodeId": "lon-1",
            "deployment": "global",
            "region": "eu-w",
            "latitude": 51.5,
            "longitude": -0.1,
            "state": "alive",
            "load": 12,
            "self": True,
            "version": "0.1.0",
        },
        {
            "nodeId": "nyc-1",
            "deployment": "global",
            "region": "us-e",
            "latitude": 40.7,
            "longitude": -74.0,
            "state": "suspect",
            "load": 40,
            "rttMs": 81.25,
            "version": "0.1.0",
        },
        {
            "nodeId": "<b>x</b>",
            "deployment": "eu",
            "region": '"r"',
            "latitude": -33.9,
            "longitude": 151.2,
            "state": "dead",
            "load": 0,
            "version": "0.1.0",
        },
    ],
}


class RenderTests(SynchronousTestCase):
    def test_projection(self) -> None:
        self.assertEqual(project(90, -180), (0.0, 0.0))
        self.assertEqual(project(-90, 180), (WIDTH, HEIGHT))
        self.assertEqual(project(0, 0), (WIDTH / 2, HEIGHT / 2))

    @given(st.floats(allow_nan=False, allow_infinity=False), st.floats(allow_nan=False, allow_infinity=False))
    def test_always_on_the_map(self, lat: float, lon: float) -> None:
        x, y = project(lat, lon)
        self.assertTrue(0 <= x <= WIDTH and 0 <= y <= HEIGHT)

    def test_nodes_placed_and_coloured(self) -> None:
        svg = render_map(MESH["nodes"])  # type: ignore[arg-type]
        x, y = project(51.5, -0.1)
        self.assertIn('<circle cx="{}" cy="{}" r="6" fill="{}" stroke="#1b1f24"'.format(x, y, COLOURS["alive"]), svg)
        x, y = project(40.7, -74.0)
        self.assertIn('<circle cx="{}" cy="{}" r="6" fill="{}"/>'.format(x, y, COLOURS["suspect"]), svg)
        self.assertEqual(svg.count("<circle"), 3)

    def test_peer_text_escaped(self) -> None:
        page = render_page(MESH, FIGURES, version="0.1.0").decode()
        self.assertNotIn("<b>x</b>", page)
        self.assertIn("&lt;b&gt;x&lt;/b&gt;", page)
        self.assertIn("&quot;r&quot;", page)

    def test_figures(self) -> None:
        fragment = render_fragment(MESH, FIGURES)
        for text in ("<dd>120</dd>", "<dd>3</dd>", "≤ 5 ms / ≤ 250 ms", "87.5 %", "0.042 s", "81.2 ms"):
            self.assertIn(text, fragment)
        empty = render_fragment({"nodeId": "n", "nodes": []}, Figures(0, 0, None, None, None, None))
        self.assertIn("<dd>– </dd>".replace(" ", ""), empty.replace(" ", ""))
