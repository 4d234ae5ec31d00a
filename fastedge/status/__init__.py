"""``/status``: the node's status page for operators (docs/status.md).

:mod:`.figures` reads this node's figures from its metrics registry,
:mod:`.render` draws the page (the mesh map as server-rendered SVG), and
:mod:`.resource` serves it, refreshed over SSE at ``/status/events``.
Answered only to ``http.ops_networks`` (:mod:`fastedge.http.ops`).
"""
