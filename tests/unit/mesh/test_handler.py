"""Features registered with the mesh (``fastedge.mesh.handler``): their calls
are carried both ways, and the mesh's checks (deployment, rate, arguments,
message types) apply to every handler alike. Nodes in memory with real TLS
and PB, time on one Clock.

:class:`BanFanOut` is the worked example of ``docs/mesh-handlers.md``.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from twisted.spread import pb
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from fastedge.mesh.handler import MeshHandler, MeshView
from fastedge.mesh.interfaces import IMesh, IMeshHandler, IPeerSession
from fastedge.mesh.messages import BadMessage, Refused, check_channel_id, register
from fastedge.testing.mesh import MemoryMesh

from .common import metric


class BanFanOut(MeshHandler):
    """A moderation fan-out: an author banned through one node is banned on
    every node of the deployment (the worked example of the docs)."""

    name = "bans"
    max_calls_per_second = 100.0

    def __init__(self) -> None:
        super().__init__()
        self.remote_calls = {"bans_apply": self._apply}
        self.banned: set[tuple[str, str]] = set()
        self.mesh: IMesh | None = None
        self.links_up: list[str] = []
        self.gone: list[str] = []
        self.refusals: list[tuple[str, str]] = []

    def attach(self, mesh: IMesh) -> None:
        self.mesh = mesh

    def link_up(self, node_id: str, link: Any) -> None:
        self.links_up.append(node_id)

    def peer_gone(self, node_id: str) -> None:
        self.gone.append(node_id)

    def refused(self, call: str, reason: str) -> None:
        self.refusals.append((call, reason))

    def ban(self, tenant: str, author: str) -> None:
        """Ban here, and tell every reachable node of the deployment."""
        self.banned.add((tenant, author))
        mesh = self.mesh
        if mesh is None:
            return  # the mesh has not started: this node alone
        for node_id in mesh.peers():
            link = mesh.link_to(node_id)
            if link is not None:
                mesh.watch(mesh.call(link, "bans_apply", tenant, author), "bans_apply", node_id)

    def _apply(self, session: IPeerSession, tenant: Any, author: Any) -> None:
        # BadMessage: the mesh disconnects the peer and counts it.
        self.banned.add((check_channel_id(tenant, "tenant"), check_channel_id(author, "author")))


@register
class Note(pb.Copyable, pb.RemoteCopy):
    """A message type only some handlers admit."""

    def getStateToCopy(self) -> dict[str, Any]:
        return {"text": "hi"}

    def setCopyableState(self, state: Any) -> None:
        if state != {"text": "hi"}:
            raise BadMessage("a note says hi")


class Notes(MeshHandler):
    """Takes notes, and answers a ping by calling back over the caller's link."""

    name = "notes"

    def __init__(self, *, admit: bool) -> None:
        super().__init__()
        self.remote_calls = {"notes_take": self._take, "notes_ping": self._ping}
        self.callbacks = {"notes_pong": self._pong}
        self.message_types = (Note,) if admit else ()
        self.taken: list[Any] = []
        self.pongs: list[tuple[str, int]] = []

    def _take(self, session: IPeerSession, note: Any) -> str:
        self.taken.append(note)
        return "taken"

    def _ping(self, session: IPeerSession, n: Any) -> None:
        session.call_back("notes_pong", n + 1)

    def _pong(self, link: Any, n: Any) -> None:
        self.pongs.append((link.peer_id, n))


def start(mesh: MemoryMesh, node_id: str, *handlers: Any, deployment: str = "global") -> Any:
    service = mesh.add(node_id, deployment=deployment, start=False)
    for handler in handlers:
        service.register(handler)
    service.privilegedStartService()
    service.startService()
    mesh.network.flush()
    return service


def call(mesh: MemoryMesh, source: str, target: str, method: str, *args: Any) -> list[Any]:
    out: list[Any] = []
    mesh.nodes[source].membership.peers[target].link.call(method, *args).addBoth(out.append)
    mesh.network.flush()
    return out


class HandlerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mesh = MemoryMesh(self)
        self.bans = {node: BanFanOut() for node in "abx"}
        start(self.mesh, "a", self.bans["a"])
        start(self.mesh, "b", self.bans["b"])
        start(self.mesh, "x", self.bans["x"], deployment="other")
        self.mesh.advance(1.0)

    def test_interfaces(self) -> None:
        """The example handler, the mesh view and a session provide their
        interfaces."""
        verifyObject(IMeshHandler, self.bans["a"])
        verifyObject(IMesh, MeshView(self.mesh.nodes["a"]))
        (session,) = self.mesh.nodes["a"].membership.peers["b"].sessions
        verifyObject(IPeerSession, session)

    def test_fan_out_reaches_the_deployment_only(self) -> None:
        """A ban taken on a is applied on b, never on x (another
        deployment): the handler calls peers of its deployment only."""
        self.bans["a"].ban("t1", "author1")
        self.mesh.network.flush()
        self.assertIn(("t1", "author1"), self.bans["b"].banned)
        self.assertEqual(self.bans["x"].banned, set())
        self.assertEqual(sorted(self.bans["a"].links_up), ["b", "x"])

    def test_another_deployment_is_refused_by_the_mesh(self) -> None:
        """A call from a node of another deployment never reaches the
        handler: refused, counted per handler, and the handler told."""
        (result,) = call(self.mesh, "x", "a", "bans_apply", "t1", "author1")
        self.assertIsInstance(result, Failure)
        self.assertIn("deployment", result.getErrorMessage())
        self.assertEqual(self.bans["a"].banned, set())
        self.assertEqual(
            metric(self.mesh, "a", "fastedge_mesh_handler_refused_total", handler="bans", reason="deployment"), 1.0
        )
        self.assertEqual(self.bans["a"].refusals, [("bans_apply", "deployment")])
        self.flushLoggedErrors()

    def test_bad_arguments_disconnect(self) -> None:
        """A malformed call (a value the handler refuses, or the wrong number
        of arguments) disconnects the peer, as any bad mesh message."""
        for args in (("bad tenant id", "author1"), ("t1",)):
            (result,) = call(self.mesh, "b", "a", "bans_apply", *args)
            self.assertIsInstance(result, Failure)
            self.mesh.advance(1.0)
        self.assertEqual(self.bans["a"].banned, set())
        self.assertEqual(metric(self.mesh, "a", "fastedge_mesh_peer_disconnects_total", reason="bad_message"), 2.0)
        self.assertEqual(
            metric(self.mesh, "a", "fastedge_mesh_handler_refused_total", handler="bans", reason="bad_message"), 2.0
        )

    def test_rate_limit_per_handler(self) -> None:
        """Calls beyond the handler's own rate (bursts of twice as many) are
        refused, not carried; the connection stays up."""
        link = self.mesh.nodes["b"].membership.peers["a"].link
        results: list[Any] = []
        for i in range(250):
            link.call("bans_apply", "t1", "a{}".format(i)).addBoth(results.append)
        self.mesh.network.flush()
        refused = [r for r in results if isinstance(r, Failure)]
        self.assertEqual(len(refused), 50)
        self.assertIn("rate", refused[0].getErrorMessage())
        self.assertEqual(len(self.bans["a"].banned), 200)
        self.assertEqual(
            metric(self.mesh, "a", "fastedge_mesh_handler_refused_total", handler="bans", reason="rate"), 50.0
        )
        self.assertTrue(link.up)

    def test_unknown_call(self) -> None:
        """A call nobody registered is refused and counted as unknown."""
        (result,) = call(self.mesh, "b", "a", "nobody_here")
        self.assertIsInstance(result, Failure)
        self.assertEqual(metric(self.mesh, "a", "fastedge_mesh_calls_received_total", method="unknown"), 1.0)

    def test_peer_gone(self) -> None:
        """A peer that stops is gone for the handlers."""
        self.mesh.stop("b")
        self.assertIn("b", self.bans["a"].gone)


class RegistrationTests(SynchronousTestCase):
    def test_names_are_unique(self) -> None:
        """A handler may not take a membership call or another handler's."""
        mesh = MemoryMesh(self)
        service = mesh.add("a", start=False)
        service.register(BanFanOut())
        with self.assertRaises(ValueError):
            service.register(BanFanOut())
        ping = MeshHandler()
        ping.remote_calls = {"ping": lambda session: None}
        with self.assertRaises(ValueError):
            service.register(ping)

    def test_registered_before_start(self) -> None:
        """Handlers are registered before the mesh starts (they must see
        every link come up)."""
        mesh = MemoryMesh(self)
        service = mesh.add("a")
        with self.assertRaises(RuntimeError):
            service.register(BanFanOut())

    def test_none_is_skipped(self) -> None:
        """``make_service(handlers=[...])`` skips a feature that is off."""
        from fastedge.config import MeshConfig, NodeConfig
        from fastedge.mesh.service import make_service
        from fastedge.metrics.registry import new_registry
        from fastedge.testing.mesh import MemoryNetwork

        bans = BanFanOut()
        network = MemoryNetwork(MemoryMesh(self).clock)
        service = make_service(
            MeshConfig(),
            node=NodeConfig(id="a", data_dir=self.mktemp()),
            reactor=network.clock,
            registry=new_registry(),
            listen_endpoint=network.server_endpoint("127.0.0.1"),
            client_endpoint=network.client_endpoints("127.0.0.1"),
            handlers=[None, bans],
        )
        self.assertEqual(service.handlers.handlers, [bans])


class MessageTypeTests(SynchronousTestCase):
    def test_types_are_admitted_per_node(self) -> None:
        """A node admits a message type only when one of its handlers names
        it: a known jelly class sent to a node whose handlers do not admit
        it disconnects the sender (insecure_type); the node that admits it
        takes it. Callbacks come back over the caller's own link."""
        mesh = MemoryMesh(self)
        admits, refuses = Notes(admit=True), Notes(admit=False)
        start(mesh, "a", admits)
        start(mesh, "b", refuses)
        mesh.advance(1.0)
        (answer,) = call(mesh, "b", "a", "notes_take", Note())
        self.assertEqual(answer, "taken")
        self.assertEqual(len(admits.taken), 1)
        (result,) = call(mesh, "a", "b", "notes_take", Note())
        self.assertIsInstance(result, Failure)
        self.assertEqual(refuses.taken, [])
        self.assertEqual(metric(mesh, "b", "fastedge_mesh_peer_disconnects_total", reason="insecure_type"), 1.0)
        mesh.advance(1.0)
        call(mesh, "a", "b", "notes_ping", 1)
        mesh.network.flush()
        self.assertEqual(admits.pongs, [("b", 2)])
        self.assertEqual(metric(mesh, "a", "fastedge_mesh_calls_received_total", method="cb_notes_pong"), 1.0)
        self.flushLoggedErrors(Refused)
