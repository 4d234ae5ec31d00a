"""A whole node's clean stop on real loopback sockets: the ordered drain
(docs/admin.md, "Draining a node")."""

from __future__ import annotations

import os
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from fastedge.store.errors import StoreClosed
from fastedge.store.model import ReadPreference
from tests.support.nodes import start_node

from .test_live import WaitingClient

CONFIG = "\n".join(["[http]", 'endpoint = "tcp:0:interface=127.0.0.1"', "[tls]", "enabled = false"])


class _KeepAlive(Protocol):
    """A browser's idle keep-alive connection: one request answered, then
    nothing, the connection left open."""

    def __init__(self) -> None:
        self.data = b""
        self.answered: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and not self.answered.called:
            self.answered.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class NodeDrainTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_stop_drains_in_order(self):  # type: ignore[no-untyped-def]
        """Stopping the node closes an idle keep-alive connection (the
        drain does not wait ``http.drain_seconds`` for it), closes live
        clients with 1001 (no other node to move them to), and closes the
        store last: a store call after the stop fails at once."""
        node = yield start_node(CONFIG, os.path.abspath(self.mktemp()))
        self.addCleanup(node.stop)
        port = node.top.getServiceNamed("http").getServiceNamed("http").port.getHost().port
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        idle = yield connectProtocol(endpoint, _KeepAlive())
        yield idle.answered
        self.assertIn(b"200", idle.data.split(b"\r\n", 1)[0])
        factory = WebSocketClientFactory("ws://127.0.0.1:{}/live".format(port))
        factory.protocol = WaitingClient
        ws = yield endpoint.connect(factory)
        yield ws.opened

        store = node.top.getServiceNamed("store").store
        yield node.stop()
        yield idle.lost
        yield ws.closed
        self.assertEqual(ws.close_code, 1001)
        self.failureResultOf(store.ping(read_preference=ReadPreference.PRIMARY), StoreClosed)
        closed = node.top.registry.get_sample_value("fastedge_http_drain_connections_total", {"how": "idle"})
        self.assertGreaterEqual(closed, 1.0)
        aborted = node.top.registry.get_sample_value("fastedge_http_drain_connections_total", {"how": "aborted"})
        self.assertFalse(aborted)
