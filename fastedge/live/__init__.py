"""Live threads: a front-end-independent hub (:mod:`.hub`) and its
WebSocket (``/live``) and SSE (``/live/events``) front ends.

The event model and the wire protocol are described in
``docs/live-protocol.md``.
"""
