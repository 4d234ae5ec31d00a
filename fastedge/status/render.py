# -*- test-case-name: tests.unit.status.test_render -*-
"""The status page, drawn on the node: HTML with the mesh map as SVG.

Pure functions of a snapshot (``GET /api/v1/mesh``'s map and this node's
:class:`~fastedge.status.figures.Figures`): no reactor, no I/O. Nodes are
placed by their coordinates on an equirectangular world map and coloured
by their state as this node sees it. Everything from the snapshot is
escaped (node ids, regions and versions come from peers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from .figures import Figures

WIDTH, HEIGHT = 720, 360

#: Fill of a node by state.
COLOURS = {"alive": "#2e9e44", "suspect": "#e69a00", "dead": "#d0312d", "leaving": "#8a8f98"}

#: Very coarse continents (longitude, latitude), enough to see where nodes are.
_LAND: Sequence[Sequence[tuple[float, float]]] = (
    # North America
    (
        (-168, 66),
        (-140, 70),
        (-95, 72),
        (-62, 60),
        (-55, 48),
        (-80, 25),
        (-97, 17),
        (-83, 8),
        (-105, 22),
        (-125, 40),
        (-150, 58),
    ),
    # South America
    ((-80, 10), (-60, 10), (-35, -7), (-40, -22), (-58, -38), (-70, -55), (-75, -45), (-72, -18), (-81, -4)),
    # Europe
    ((-10, 36), (0, 43), (-5, 48), (5, 54), (10, 58), (25, 71), (40, 66), (45, 45), (28, 41), (20, 38), (10, 44)),
    # Africa
    (
        (-17, 15),
        (-10, 35),
        (10, 37),
        (32, 31),
        (43, 12),
        (51, 11),
        (40, -15),
        (32, -28),
        (20, -35),
        (12, -18),
        (9, 4),
        (-8, 4),
    ),
    # Asia
    (
        (28, 41),
        (45, 45),
        (40, 66),
        (70, 73),
        (110, 77),
        (180, 68),
        (160, 58),
        (140, 40),
        (121, 30),
        (108, 20),
        (100, 3),
        (80, 8),
        (72, 20),
        (58, 25),
        (48, 30),
        (35, 36),
    ),
    # Australia
    ((114, -22), (130, -12), (142, -11), (153, -25), (150, -38), (140, -38), (131, -31), (115, -34)),
)


def project(latitude: float, longitude: float) -> tuple[float, float]:
    """Equirectangular: (x, y) in the SVG's coordinates."""
    x = (min(180.0, max(-180.0, longitude)) + 180.0) / 360.0 * WIDTH
    y = (90.0 - min(90.0, max(-90.0, latitude))) / 180.0 * HEIGHT
    return round(x, 1), round(y, 1)


def _number(value: float | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def render_map(nodes: Sequence[Mapping[str, Any]]) -> str:
    """The SVG world map with one dot per node."""
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="The mesh on a world map" class="map">'.format(w=WIDTH, h=HEIGHT),
        '<rect width="{}" height="{}" fill="#eef3f8"/>'.format(WIDTH, HEIGHT),
    ]
    for lon in range(-150, 180, 30):
        x, _ = project(0, lon)
        parts.append('<line x1="{x}" y1="0" x2="{x}" y2="{h}" class="grid"/>'.format(x=x, h=HEIGHT))
    for lat in range(-60, 90, 30):
        _, y = project(lat, 0)
        parts.append('<line x1="0" y1="{y}" x2="{w}" y2="{y}" class="grid"/>'.format(y=y, w=WIDTH))
    for outline in _LAND:
        points = " ".join("{},{}".format(*project(lat, lon)) for lon, lat in outline)
        parts.append('<polygon points="{}" class="land"/>'.format(points))
    for node in nodes:
        x, y = project(float(node.get("latitude", 0.0)), float(node.get("longitude", 0.0)))
        state = str(node.get("state", "dead"))
        colour = COLOURS.get(state, COLOURS["dead"])
        name = escape(str(node.get("nodeId", "?")))
        ring = ' stroke="#1b1f24" stroke-width="2"' if node.get("self") else ""
        parts.append(
            '<g class="node {state}"><title>{name}: {state}, load {load}</title>'
            '<circle cx="{x}" cy="{y}" r="6" fill="{colour}"{ring}/>'
            '<text x="{tx}" y="{ty}">{name}</text></g>'.format(
                state=escape(state),
                name=name,
                load=escape(str(node.get("load", 0))),
                x=x,
                y=y,
                colour=colour,
                ring=ring,
                tx=x + 9,
                ty=y + 4,
            )
        )
    parts.append("</svg>")
    return "".join(parts)


def render_fragment(mesh: Mapping[str, Any], figures: Figures) -> str:
    """What changes between refreshes: the map, the node table, the figures."""
    nodes = list(mesh.get("nodes", ()))
    rows = []
    for node in nodes:
        rtt = node.get("rttMs")
        rows.append(
            '<tr><td>{me}{id}</td><td>{dep}</td><td>{region}</td><td><span class="dot" style="background:{c}">'
            "</span>{state}</td><td>{load}</td><td>{rtt}</td><td>{version}</td></tr>".format(
                me="★ " if node.get("self") else "",
                id=escape(str(node.get("nodeId", "?"))),
                dep=escape(str(node.get("deployment", ""))),
                region=escape(str(node.get("region", ""))),
                c=COLOURS.get(str(node.get("state")), COLOURS["dead"]),
                state=escape(str(node.get("state", ""))),
                load=escape(str(node.get("load", 0))),
                rtt="–" if rtt is None else "{:.1f} ms".format(rtt),
                version=escape(str(node.get("version", ""))),
            )
        )
    f = figures
    return (
        render_map(nodes)
        + '<table class="nodes"><thead><tr><th>Node</th><th>Deployment</th><th>Region</th><th>State</th>'
        "<th>Load</th><th>RTT</th><th>Version</th></tr></thead><tbody>{}</tbody></table>".format("".join(rows))
        + '<h2>This node ({id})</h2><dl class="figures">'
        "<dt>Requests</dt><dd>{req}</dd>"
        "<dt>Slow requests</dt><dd>{slow}</dd>"
        "<dt>Latency p50 / p99</dt><dd>≤ {p50} / ≤ {p99}</dd>"
        "<dt>Cache hit ratio</dt><dd>{hit}</dd>"
        "<dt>Replica lag</dt><dd>{lag}</dd></dl>".format(
            id=escape(str(mesh.get("nodeId", "?"))),
            req=f.requests,
            slow=f.slow_requests,
            p50=_number(None if f.latency_p50 is None else f.latency_p50 * 1000, "{:g} ms"),
            p99=_number(None if f.latency_p99 is None else f.latency_p99 * 1000, "{:g} ms"),
            hit=_number(None if f.cache_hit_ratio is None else f.cache_hit_ratio * 100, "{:.1f} %"),
            lag=_number(f.replica_lag, "{:.3f} s"),
        )
    )


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1f24;max-width:60em}
.map{width:100%;height:auto;border:1px solid #c9d3dd;border-radius:4px}
.grid{stroke:#d5dee8;stroke-width:.5}
.land{fill:#d9e2d0;stroke:#b7c4ad;stroke-width:.5}
.node text{font-size:11px;fill:#1b1f24}
table{border-collapse:collapse;margin:1em 0;width:100%}
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #e3e8ee}
.dot{display:inline-block;width:.7em;height:.7em;border-radius:50%;margin-right:.4em}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}
dd{margin:0}
"""


def render_page(mesh: Mapping[str, Any], figures: Figures, *, version: str) -> bytes:
    """The whole page; ``/status/refresh.js`` replaces the fragment on each
    ``/status/events`` message (the page works without it, reloaded)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>fastedge status: {id}</title><style>{style}</style></head><body>"
        "<h1>fastedge {version}: the mesh from {id}</h1>"
        '<main id="status">{fragment}</main>'
        "<p>Refreshed live (<code>/status/events</code>); the same data as <code>/api/v1/mesh</code> "
        "and <code>/metrics</code>.</p>"
        '<script src="/status/refresh.js"></script></body></html>'.format(
            id=escape(str(mesh.get("nodeId", "?"))),
            style=_STYLE,
            version=escape(version),
            fragment=render_fragment(mesh, figures),
        )
    ).encode("utf-8")


REFRESH_JS = b"""// Replaces the status fragment with each server-sent event.
(function () {
  var target = document.getElementById("status");
  var events = new EventSource("/status/events");
  events.onmessage = function (e) { target.innerHTML = e.data; };
})();
"""
