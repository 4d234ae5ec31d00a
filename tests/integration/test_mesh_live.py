"""Three whole nodes (``twistd fastedge``'s service tree) on real loopback
sockets, with real TLS between them: a comment posted through node A's
public API reaches a WebSocket subscriber on node C, and node B, which has
no subscriber (and does not sequence the thread), receives no relay of it.

The nodes share one SQLite file, as a deployment's nodes share their
replicated database, and one session key, as the config requires."""

from __future__ import annotations

import os
from typing import Any

import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from fastedge.mesh.nodemap import NodeState
from fastedge.store.model import ReadPreference
from fastedge.testing.certs import write_node_certs
from tests.support.nodes import RunningNode, start_node

from .test_live import WaitingClient


def converged(nodes: dict[str, IService]) -> Deferred[None]:
    """Fires once every node's map shows every node ALIVE (told by the maps'
    observers; no polling)."""
    d: Deferred[None] = Deferred()
    ids = set(nodes)

    def check(_: object = None) -> None:
        if d.called:
            return
        for top in nodes.values():
            infos = top.getServiceNamed("mesh").node_map.nodes()
            if set(infos) != ids or any(i.state is not NodeState.ALIVE for i in infos.values()):
                return
        d.callback(None)

    for top in nodes.values():
        top.getServiceNamed("mesh").node_map.subscribe(check)
    check()
    return d


class MeshLiveTests(TestCase):
    timeout = 60

    async def start_node(self, node_id: str, seeds: list[str]) -> IService:
        data_dir = os.path.abspath(self.mktemp())
        write_node_certs(os.path.join(data_dir, "mesh"), node_id)
        node = await start_node(
            '[node]\nid = "{}"\ndata_dir = "{}"\n'
            '[http]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
            '[store]\nsqlite_path = "{}"\n'
            '[api]\nsecret_file = "{}"\n'
            '[mesh]\nendpoint = "tcp:0:interface=127.0.0.1"\nseeds = [{}]\n'
            '[dns]\nport = 0\n[tls]\nendpoint = "tcp:0:interface=127.0.0.1"\n'.format(
                node_id,
                data_dir,
                self.database,
                self.secret,
                ", ".join('"{}"'.format(s) for s in seeds),
            ),
            data_dir,
            node_id=None,
        )
        self.addCleanup(node.stop)
        return node.top

    def http_base(self, top: IService) -> str:
        return RunningNode(top, "").http

    def mesh_address(self, top: IService) -> str:
        return RunningNode(top, "").mesh_address

    async def test_comment_on_a_reaches_websocket_on_c_not_b(self) -> None:
        """Post through A's API; the WebSocket subscriber on C gets the
        comment.created event; B has no state for the channel and counts no
        relayed event."""
        shared = os.path.abspath(self.mktemp())
        os.makedirs(shared)
        self.database = os.path.join(shared, "deployment.sqlite3")
        self.secret = os.path.join(shared, "session.key")
        a = await self.start_node("a", [])
        b = await self.start_node("b", [self.mesh_address(a)])
        c = await self.start_node("c", [self.mesh_address(a)])
        nodes = {"a": a, "b": b, "c": c}
        await converged(nodes)

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        store = a.getServiceNamed("store").store
        tenant = (
            await store.create_tenant("Mesh", "global", created_ms=0, read_preference=ReadPreference.PRIMARY)
        ).value
        base_a = self.http_base(a)
        relay_a = a.getServiceNamed("live").relay

        async def post(url_id: str, text: str) -> dict[str, Any]:
            response = await treq.post(
                "{}/api/v1/{}/comments".format(base_a, tenant.id),
                params={"urlId": url_id},
                json={"text": text, "displayName": "Ann"},
                pool=pool,
            )
            self.assertEqual(response.code, 201)
            return await response.json()  # type: ignore[no-any-return]

        # A thread that B does not sequence (the first comment creates it).
        for i in range(50):
            url_id = "https://mesh.example/article-{}".format(i)
            await post(url_id, "first")
            thread = await store.get_thread(tenant.id, url_id, read_preference=ReadPreference.PRIMARY)
            channel = (tenant.id, thread.id)
            if relay_a.owner_of(channel) != "b":
                break
        self.assertNotEqual(relay_a.owner_of(channel), "b")
        self.assertEqual(c.getServiceNamed("live").relay.owner_of(channel), relay_a.owner_of(channel))

        async def relay_counts(node: IService) -> list[str]:
            text = await (await treq.get(self.http_base(node) + "/metrics", pool=pool)).text()
            return [line for line in text.splitlines() if line.startswith("fastedge_mesh_relay_events_total{")]

        # (Threads B sequences were made on the way: their first comments
        # went to B. What counts is that nothing more reaches it.)
        b_before = await relay_counts(b)
        port_c = int(self.http_base(c).rsplit(":", 1)[1])
        factory = WebSocketClientFactory("ws://127.0.0.1:{}/live".format(port_c))
        factory.protocol = WaitingClient
        ws: WaitingClient = await TCP4ClientEndpoint(reactor, "127.0.0.1", port_c).connect(factory)
        self.addCleanup(lambda: ws.closed if ws.transport.connected else None)
        self.addCleanup(ws.sendClose)
        await ws.opened
        subscribed = ws.wait_for("subscribed")
        ws.send_json(type="subscribe", tenant=tenant.id, urlId=url_id)
        answer = await subscribed
        self.assertEqual((answer["seq"], answer["reload"]), (1, False))

        event = ws.wait_for("event")
        posted = await post(url_id, "across the mesh")
        got = await event
        self.assertEqual((got["event"], got["seq"]), ("comment.created", 2))
        self.assertEqual(got["data"]["comment"]["id"], posted["comment"]["id"])

        self.assertIsNone(b.getServiceNamed("live").hub.position(channel))
        self.assertEqual(await relay_counts(b), b_before)
        metrics_c = await (await treq.get(self.http_base(c) + "/metrics", pool=pool)).text()
        # C sequenced the write (if it owns the thread) or received it from A.
        self.assertRegex(
            metrics_c,
            r'fastedge_mesh_relay_events_total\{direction="(received|sequenced)"\} [1-9]',
        )
