"""Two nodes on one PostgreSQL primary deliver each event exactly once,
even when one of them is killed mid-delivery.

Each node is a real process (:mod:`tests.support.webhook_worker`: a node's
store and webhooks children) on the test run's PostgreSQL primary; the
receiver is a real HTTP server in this process that verifies every
signature. The first request node A sends is left unanswered, and node A is
killed (SIGKILL) while it waits: its lease expires and node B sends that
delivery again. Every delivery is then answered 2xx exactly once, none by
both nodes, and each endpoint's deliveries in the order of the changes.

Node A sends one request at a time here, so when it dies the only delivery
it holds is the unanswered one. With several requests in flight, one the
receiver answered in the instant before the node died (not yet recorded)
is sent again by the other node with the same event id: delivery is at
least once, and receivers deduplicate on the id (docs/webhooks.md).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.server import Request

from fastedge.store.model import CommentStatus, NewComment, ReadPreference, WebhookEvent
from fastedge.store.postgresql import PostgresStore
from fastedge.testing.fakes import run_inline
from tests.support.postgres import postgres_dsn, postgres_schema, shared_postgres
from tests.support.webhooks import Received, Receiver

PRIMARY = ReadPreference.PRIMARY
SECRET = "cluster-" + "q" * 32
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENDPOINTS = 3
COMMENTS = 12


class _Worker(ProcessProtocol):
    """A worker process; :attr:`ready` fires when its store is open."""

    def __init__(self, on_delivered: Any) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = b""
        self.delivered = 0
        self._on_delivered = on_delivered

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"ready" in self.output and not self.ready.called:
            self.ready.callback(None)
        for line in self.output.splitlines():
            if line.startswith(b"delivered "):
                self.delivered = int(line.split()[1])
        self._on_delivered()

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.output.decode(errors="replace")[-2000:]))
        self.ended.callback(None)


class ClusterTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.workers: list[_Worker] = []
        self.all_recorded: Deferred[None] = Deferred()
        self.expected = ENDPOINTS * COMMENTS

    def count_recorded(self) -> None:
        """Fire :attr:`all_recorded` once the nodes have recorded every delivery."""
        if sum(w.delivered for w in self.workers) >= self.expected and not self.all_recorded.called:
            self.all_recorded.callback(None)

    def spawn(self, node_id: str, dsn: str, max_in_flight: int = 16) -> _Worker:
        worker = _Worker(self.count_recorded)
        env = dict(os.environ, PYTHONPATH=REPO)
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            worker,
            sys.executable,
            [sys.executable, "-m", "tests.support.webhook_worker", node_id, dsn, str(max_in_flight)],
            env=env,
        )
        worker.transport = transport
        self.workers.append(worker)

        def stop() -> Deferred[None]:
            if not worker.ended.called:
                transport.signalProcess("KILL")
            return worker.ended

        self.addCleanup(stop)
        return worker

    @inlineCallbacks
    def test_exactly_once_with_a_node_killed(self) -> Generator[Deferred[Any], Any, None]:
        """Each delivery is answered exactly once across two nodes, though
        node A is killed while a request of its own is unanswered; B sends
        that one again after A's lease expires, in its endpoint's order."""
        cluster = shared_postgres()
        schema = postgres_schema(self, cluster)
        dsn = postgres_dsn(cluster.servers["primary"], schema)
        clock = Clock()
        clock.advance(reactor.seconds())  # type: ignore[attr-defined]
        store = PostgresStore([dsn], None, run=run_inline, clock=clock)
        self.successResultOf(store.open())
        self.addCleanup(store.close)

        killed: list[str] = []
        expected = ENDPOINTS * COMMENTS
        all_answered: Deferred[None] = Deferred()

        def behave(received: Received, request: Request) -> int | None:
            node = received.headers["user-agent"].rsplit(" ", 1)[-1].rstrip(")")
            if node == "A" and not killed:
                killed.append(received.headers["fastedge-event-id"])
                worker_a.transport.signalProcess("KILL")
                return None
            return 200

        receiver = Receiver(secret=SECRET, now=lambda: reactor.seconds(), behave=behave)  # type: ignore[attr-defined]
        port = yield receiver.start(self)

        def check(received: Received) -> None:
            answered = [r for r in receiver.got if r.answered]
            if len(answered) >= expected and not all_answered.called:
                all_answered.callback(None)
            else:
                receiver.next_request().addCallback(check)

        receiver.next_request().addCallback(check)

        now = int(clock.seconds() * 1000)
        tenant = self.successResultOf(store.create_tenant("T", "global", created_ms=now, read_preference=PRIMARY)).value
        hooks = [
            self.successResultOf(
                store.create_webhook(
                    tenant.id,
                    url="http://127.0.0.1:{}/hook/{}".format(port, n),
                    secret=SECRET,
                    events=[WebhookEvent.COMMENT_CREATED],
                    active=True,
                    description="",
                    created_ms=now,
                    read_preference=PRIMARY,
                )
            ).value
            for n in range(ENDPOINTS)
        ]
        author = self.successResultOf(
            store.create_anonymous_session(tenant.id, created_ms=now, read_preference=PRIMARY)
        ).value.author_id
        thread = self.successResultOf(
            store.upsert_thread(tenant.id, "https://example.com/a", created_ms=now, read_preference=PRIMARY)
        ).value
        order = []
        for n in range(COMMENTS):
            new = NewComment(
                tenant_id=tenant.id,
                thread_id=thread.id,
                author_id=author,
                display_name="Ann",
                body_source="c{}".format(n),
                body_html="<p>c{}</p>".format(n),
                status=CommentStatus.APPROVED,
                created_ms=now + n,
            )
            order.append(self.successResultOf(store.create_comment(new, read_preference=PRIMARY)).value.id)

        worker_a = self.spawn("A", dsn, max_in_flight=1)
        yield worker_a.ready
        worker_b = self.spawn("B", dsn)
        yield worker_b.ready
        yield all_answered
        yield worker_a.ended
        # Node B records its last answers; only then is it stopped.
        yield self.all_recorded
        worker_b.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        yield worker_b.ended

        self.assertTrue(all(r.verified for r in receiver.got))
        answered = Counter((r.path, r.headers["fastedge-event-id"]) for r in receiver.got if r.answered)
        self.assertEqual(len(answered), expected)
        self.assertEqual(set(answered.values()), {1})
        # The one node A never saw answered was sent again (by B), once.
        (lost,) = [r for r in receiver.got if not r.answered]
        self.assertEqual(lost.headers["fastedge-event-id"], killed[0])
        again = [
            r for r in receiver.got if r.answered and (r.headers["fastedge-event-id"], r.path) == (killed[0], lost.path)
        ]
        self.assertEqual(len(again), 1)
        self.assertTrue(again[0].headers["user-agent"].endswith("(node B)"))
        # Both nodes delivered, and each endpoint got its events in order.
        self.assertTrue(lost.headers["user-agent"].endswith("(node A)"))
        for hook in hooks:
            path = "/hook/{}".format(hooks.index(hook))
            seen = [r.event["data"]["comment"]["id"] for r in receiver.got if r.answered and r.path == path]
            self.assertEqual(seen, order)
        queue = self.successResultOf(store.webhook_queue(read_preference=PRIMARY))
        self.assertEqual((queue.pending, queue.failed), (0, 0))
        receiver.hanging.clear()
