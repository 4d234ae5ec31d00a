"""Helpers of the mesh tests: watching a node map, and rogue peers."""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred
from twisted.spread import pb

from fastedge.mesh.broker import Limits, MeshClientFactory
from fastedge.mesh.messages import Announcement
from fastedge.mesh.metrics import MeshMetrics
from fastedge.mesh.nodemap import NodeMapChange
from fastedge.mesh.peer import PeerAvatar
from fastedge.mesh.service import TLSClientEndpoint
from fastedge.mesh.tls import MeshIdentity, MeshTLS, create_node_certificate
from fastedge.metrics.registry import new_registry
from fastedge.testing.certs import test_ca
from fastedge.testing.mesh import MemoryMesh


class Watch:
    """Every state change of ``node_id`` in ``observer``'s map, with the time."""

    def __init__(self, mesh: MemoryMesh, observer: str, node_id: str) -> None:
        self.mesh = mesh
        self.node_id = node_id
        self.changes: list[tuple[float, str, int]] = []
        mesh.nodes[observer].node_map.subscribe(self._seen)

    def _seen(self, change: NodeMapChange) -> None:
        after = change.after
        if after.node_id != self.node_id:
            return
        if (
            change.before is None
            or change.before.state is not after.state
            or change.before.incarnation != after.incarnation
        ):
            self.changes.append((self.mesh.clock.seconds(), after.state.value, after.incarnation))

    def states(self) -> list[str]:
        return [s for _, s, _ in self.changes]

    def when(self, state: str) -> float:
        """When the node first entered ``state``."""
        for at, s, _ in self.changes:
            if s == state:
                return at
        raise AssertionError("{} never became {}: {}".format(self.node_id, state, self.changes))


def metric(mesh: MemoryMesh, node_id: str, name: str, **labels: str) -> float:
    return mesh.registries[node_id].get_sample_value(name, labels) or 0.0


class SilentAvatar(PeerAvatar):
    """A session that takes heartbeats and never answers them."""

    def perspective_ping(self, nonce: Any, load: Any, digest: Any) -> Deferred[Any]:
        return Deferred()


class Rogue:
    """A scripted peer at the wire: real TLS and PB, but a certificate and
    claims of our choosing, and calls of our choosing.

    :param cert_name: the name in its certificate.
    :param claim: the node id it claims at login.
    :param ca: the CA that signs its certificate (default: the test CA).
    """

    def __init__(
        self,
        mesh: MemoryMesh,
        *,
        cert_name: str,
        claim: str,
        ca: tuple[bytes, bytes] | None = None,
        host: str = "127.0.0.99",
        **cert_kw: Any,
    ) -> None:
        ca_cert, ca_key = ca or test_ca()
        cert_pem, key_pem = create_node_certificate(cert_name, ca_cert, ca_key, **cert_kw)
        trust_pem = test_ca()[0]
        self.identity = MeshIdentity(
            node_id=claim,
            ca=x509.load_pem_x509_certificate(trust_pem),
            certificate=x509.load_pem_x509_certificate(cert_pem),
            key=serialization.load_pem_private_key(key_pem, None),  # type: ignore[arg-type]
        )
        self.mesh = mesh
        self.claim = claim
        self.host = host
        self.metrics = MeshMetrics(new_registry())
        self.broker: Any = None
        self.session: Any = None
        self.answer: list[Any] = []

    def login(self, target: str) -> None:
        """Connect to node ``target`` and log in; the outcome lands in
        ``self.answer`` (the answer, or a Failure)."""
        host, port = self.mesh.address(target).split(":")
        endpoint = TLSClientEndpoint(
            self.mesh.network.client_endpoints(self.host)(host, int(port)),
            MeshTLS(self.identity),
            self.mesh.clock,
        )
        factory = MeshClientFactory(
            limits=Limits(),
            clock=self.mesh.clock,
            metrics=self.metrics,
            on_ready=self._ready,
        )
        endpoint.connect(factory)
        self.mesh.network.flush()

    def _ready(self, broker: Any) -> None:
        self.broker = broker
        me = Announcement(
            node_id=self.claim,
            deployment="global",
            region="rogue",
            addresses=("192.0.2.66",),
            version="0",
            incarnation=1,
            mesh_host=self.host,
            mesh_port=1,
        )
        d = broker.remoteForName("root").callRemote("join", me, None)

        def joined(answer: Any) -> None:
            self.session = answer[0]
            self.answer.append(answer)

        d.addCallbacks(joined, self.answer.append)

    def call(self, method: str, *args: Any) -> list[Any]:
        out: list[Any] = []
        assert isinstance(self.session, pb.RemoteReference)
        self.session.callRemote(method, *args).addBoth(out.append)
        self.mesh.network.flush()
        return out


NOW = datetime.datetime.now(datetime.UTC)


class LiveWorld:
    """Nodes with live threads over the mesh (in memory), one tenant, and
    helpers to post and subscribe as the API and the transports do."""

    def __init__(
        self,
        testcase: Any,
        nodes: str = "abc",
        live_overrides: dict[str, Any] | None = None,
        seed: int | None = None,
        **mesh_overrides: Any,
    ) -> None:
        """:param seed: record ids (tenant, threads, comments) and epochs
        come from generators seeded with it, so that which node owns which
        channel, and every id, is the same in every run: a Hypothesis
        example replays (and shrinks) as it ran. Default: random ones."""
        import random

        from fastedge.store import outbox, sql
        from fastedge.store.model import ReadPreference
        from fastedge.testing.live import LiveMesh, seeded_epochs, seeded_ids

        from ..live.common import done

        self.P = ReadPreference.PRIMARY
        self.done = done
        new_epoch = None
        if seed is not None:
            new_epoch = seeded_epochs(random.Random("epochs {}".format(seed)))
            new_id = seeded_ids(random.Random("ids {}".format(seed)))
            testcase.patch(sql, "new_id", new_id)
            testcase.patch(outbox, "new_id", new_id)
        self.mesh = LiveMesh(testcase, live_overrides=live_overrides, new_epoch=new_epoch, **mesh_overrides)
        for node_id in nodes:
            self.mesh.add(node_id)
        self.mesh.advance(1.0)
        self.store = self.mesh.stores["global"]
        self.tenant = done(self.store.create_tenant("T", "global", created_ms=0, read_preference=self.P)).value
        self.author = done(
            self.store.create_anonymous_session(self.tenant.id, created_ms=0, read_preference=self.P)
        ).value.author_id
        self._urls = 0

    def thread_owned_by(self, owner: str, observer: str = "a") -> tuple[Any, str]:
        """A new thread whose channel ``owner`` sequences: ``(thread, url)``."""
        relay = self.mesh.live[observer].service.relay
        for _ in range(1000):
            self._urls += 1
            url = "https://site.example/p{}".format(self._urls)
            thread = self.done(
                self.store.upsert_thread(self.tenant.id, url, created_ms=0, read_preference=self.P)
            ).value
            if relay.owner_of((self.tenant.id, thread.id)) == owner:
                return thread, url
        raise AssertionError("no thread owned by " + owner)

    def channel(self, thread: Any) -> tuple[str, str]:
        return (self.tenant.id, thread.id)

    def post(self, node: str, thread: Any, text: str = "hi", author: str | None = None) -> Any:
        """Store an approved comment and publish it on ``node``, as the API does."""
        from fastedge.store.model import CommentStatus, NewComment

        comment = self.done(
            self.store.create_comment(
                NewComment(
                    tenant_id=self.tenant.id,
                    thread_id=thread.id,
                    author_id=author or self.author,
                    display_name="Ann",
                    body_source=text,
                    body_html="<p>{}</p>".format(text),
                    status=CommentStatus.APPROVED,
                    created_ms=0,
                ),
                read_preference=self.P,
            )
        ).value
        self.mesh.live[node].service.publisher.created(comment)
        self.mesh.network.flush()
        return comment

    def subscribe(self, node: str, url: str, **extra: Any) -> Any:
        """A subscriber on ``node``, subscribed (its answer is in its messages)."""
        subscriber = self.mesh.subscriber(node)
        d = subscriber.subscribe(self.tenant.id, url, **extra)
        self.mesh.network.flush()
        subscriber.result = []
        d.addBoth(subscriber.result.append)
        return subscriber

    def seqs(self, subscriber: Any) -> list[tuple[str, int]]:
        """``(type, seq)`` of every event and reset a subscriber got, in order."""
        return [(m["type"], m["seq"]) for m in subscriber.conn.messages if m["type"] in ("event", "reset")]

    def received(self, node: str) -> float:
        return metric(self.mesh, node, "fastedge_mesh_relay_events_total", direction="received")
