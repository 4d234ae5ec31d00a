"""Each public and tenant-API write costs one round trip to the PostgreSQL
primary (issue 15, target 2), counted at the wire.

Every connection the store takes from its primary's pool is traced with
libpq's protocol trace while a request runs; a round trip is the client
sending after the server said it was ready (``ReadyForQuery``): each time,
a far primary's whole round-trip time. NEAREST
reads go to a real synchronous standby (``remote_apply``, so a write is
visible there when it returns) and are not counted: they are local.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from psycopg import pq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.model import DeliveryState, ReadPreference, SsoSecretChange, WebhookEvent
from fastedge.store.postgresql import PostgresStore
from fastedge.testing.fakes import run_inline
from tests.support.nodes import NodeHarness
from tests.support.postgres import postgres_dsn, postgres_schema, shared_postgres

from ..unit.api.test_moderation import MOD, SECRET_A, sso

URL = quote("https://news.test/a", safe="")


def flights(trace: str) -> int:
    """Round trips in a libpq trace: the times the client sent after the
    server said it was ready for more (``ReadyForQuery``, which answers a
    Sync or a simple query), or first. A pipeline's results may come back
    while the client is still sending (a near server); that is not a wait."""
    count = 0
    answered = True
    for line in trace.splitlines():
        fields = line.split("\t")
        if fields[0] == "F" and answered:
            count += 1
            answered = False
        elif fields[0] == "B" and fields[2:3] == ["ReadyForQuery"]:
            answered = True
    return count


class PrimaryWire:
    """Traces every connection of the primary's pool (checkout to checkin)."""

    def __init__(self, testcase: SynchronousTestCase, store: PostgresStore) -> None:
        self.path = os.path.abspath(testcase.mktemp())
        open(self.path, "w").close()
        pool = store._primaries.current.pool
        taken = pool.connection

        @contextmanager
        def traced() -> Iterator[Any]:
            with taken() as raw, open(self.path, "a") as trace:
                raw.pgconn.trace(trace.fileno())
                raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
                try:
                    yield raw
                finally:
                    if not raw.closed:
                        raw.pgconn.untrace()

        pool.connection = traced  # type: ignore[method-assign]
        testcase.addCleanup(delattr, pool, "connection")

    def round_trips(self, action: Callable[[], Any]) -> tuple[int, Any]:
        """Run ``action``; its round trips to the primary and its result."""
        open(self.path, "w").close()
        result = action()
        with open(self.path) as f:
            text = f.read()
        if os.environ.get("FE_DUMP_TRACE"):
            with open(os.environ["FE_DUMP_TRACE"], "a") as out:
                out.write(text + "\n=====\n")
        return flights(text), result


class WriteRoundTripTests(SynchronousTestCase):
    """Writes through the API against a primary and a near standby."""

    def setUp(self) -> None:
        cluster = shared_postgres()
        schema = postgres_schema(self, cluster)
        primary = cluster.servers["primary"]
        stores: list[PostgresStore] = []

        def factory(clock: Clock) -> Any:
            store = PostgresStore(
                [postgres_dsn(primary, schema, synchronous_commit="remote_apply")],
                postgres_dsn(cluster.servers["sync"], schema),
                run=run_inline,
                clock=clock,
                token_wait_seconds=0,
            )
            stores.append(store)
            return store

        self.node = NodeHarness(self, store_factory=factory)
        self.store = stores[0]
        self.wire = PrimaryWire(self, self.store)
        self.tenant, self.key = self.node.create_tenant()
        self.page = f"/api/v1/{self.tenant}/comments?urlId={URL}"
        # Every event is subscribed to: each write's webhook outbox rows are
        # inserted in its one flight (counted with it).
        self.hook = self.successResultOf(
            self.store.create_webhook(
                self.tenant,
                url="https://hooks.example/in",
                secret="s" * 32,
                events=list(WebhookEvent),
                active=True,
                description="",
                created_ms=int(self.node.clock.seconds() * 1000),
                read_preference=ReadPreference.PRIMARY,
            )
        ).value

    def events(self) -> list[WebhookEvent]:
        """The types of the deliveries the writes left in the outbox, in order."""
        page = self.successResultOf(
            self.store.list_webhook_deliveries(
                self.tenant,
                self.hook.id,
                state=DeliveryState.PENDING,
                limit=100,
                cursor=None,
                read_preference=ReadPreference.PRIMARY,
            )
        )
        return [d.event_type for d in page.items]

    def trips(self, action: Callable[[], Any], code: int) -> int:
        count, response = self.wire.round_trips(action)
        self.assertEqual(response.code, code, response.body)
        report = os.environ.get("FE_ROUND_TRIPS_REPORT")
        if report:
            # For the record of a change (before/after): every count, in order.
            with open(report, "a") as f:
                f.write("{} {}\n".format(self.id().rsplit(".", 1)[-1], count))
        return count

    def test_public_writes(self) -> None:
        """A first post (new session and thread), a second post (session
        checked), a reply, a like, a block, a flag, an unlike and an unblock
        each make one round trip, and so do a first like, flag or block
        (which create the reader's session)."""
        ann = self.node.client()
        bob = self.node.client()
        first = {}

        def post() -> Any:
            r = ann.post(self.page, json_body={"text": "First", "displayName": "Ann"})
            first.update(r.json or {})
            return r

        self.assertEqual(self.trips(post, 201), 1, "first post, new session")
        comment = first["comment"]["id"]
        self.assertEqual(
            self.trips(lambda: ann.post(self.page, json_body={"text": "Again", "displayName": "Ann"}), 201),
            1,
            "post with a session",
        )
        self.assertEqual(bob.post(self.page, json_body={"text": "Hi", "displayName": "Bob"}).code, 201)
        reply = {"text": "Reply", "displayName": "Bob", "parentId": comment}
        self.assertEqual(self.trips(lambda: bob.post(self.page, json_body=reply), 201), 1, "reply")
        like = f"/api/v1/{self.tenant}/comments/{comment}/like"
        self.assertEqual(self.trips(lambda: bob.post(like), 200), 1, "like")
        author = first["viewer"]["authorId"]
        block = f"/api/v1/{self.tenant}/blocks/{author}"
        self.assertEqual(self.trips(lambda: bob.post(block), 200), 1, "block")
        flag = f"/api/v1/{self.tenant}/comments/{comment}/flag"
        self.assertEqual(self.trips(lambda: bob.post(flag), 200), 1, "flag")
        self.assertEqual(self.trips(lambda: bob.delete(like), 200), 1, "unlike")
        self.assertEqual(self.trips(lambda: bob.delete(block), 200), 1, "unblock")
        # A reader's first write creates their session in the same round trip.
        self.assertEqual(self.trips(lambda: self.node.client().post(like), 200), 1, "first like")
        self.assertEqual(self.trips(lambda: self.node.client().post(flag), 200), 1, "first flag")
        self.assertEqual(self.trips(lambda: self.node.client().post(block), 200), 1, "first block")
        created, flagged = WebhookEvent.COMMENT_CREATED, WebhookEvent.COMMENT_FLAGGED
        self.assertEqual(self.events(), [WebhookEvent.THREAD_CREATED] + [created] * 4 + [flagged] * 2)

    def test_tenant_api_create(self) -> None:
        """A comment created through the tenant API (user, thread, comment)
        makes one round trip, a reply too."""
        manager = self.node.manager(self.key)
        body = {"urlId": "https://news.test/a", "text": "Hello", "displayName": "Ann", "userId": "u1"}
        created = {}

        def create() -> Any:
            r = manager.post("/api/v1/manage/comments", json_body=body)
            created.update(r.json or {})
            return r

        self.assertEqual(self.trips(create, 201), 1)
        reply = dict(body, parentId=created["comment"]["id"])
        self.assertEqual(self.trips(lambda: manager.post("/api/v1/manage/comments", json_body=reply), 201), 1)
        path = "/api/v1/manage/comments/" + created["comment"]["id"]
        edit = {"text": "Hello again", "status": "pending"}
        self.assertEqual(self.trips(lambda: manager.patch(path, json_body=edit), 200), 1, "update")
        created = WebhookEvent.COMMENT_CREATED
        self.assertEqual(self.events(), [WebhookEvent.THREAD_CREATED, created, created, WebhookEvent.COMMENT_EDITED])

    def test_moderation_bulk_actions(self) -> None:
        """A bulk action through the tenant API and through the public
        moderation route (an SSO moderator's cookie) each make one round trip,
        and so does a signed-in user's post to a thread requiring sign-in."""
        manager = self.node.manager(self.key)
        ids = []
        for i in range(5):
            body = {"urlId": "https://news.test/a", "text": f"c{i}", "displayName": "Ann", "status": "pending"}
            r = manager.post("/api/v1/manage/comments", json_body=body)
            self.assertEqual(r.code, 201, r.body)
            ids.append(r.json["comment"]["id"])
        act = {"action": "approve", "commentIds": ids[:3]}
        self.assertEqual(
            self.trips(lambda: manager.post("/api/v1/manage/moderation/actions", json_body=act), 200), 1, "tenant API"
        )
        now = int(self.node.clock.seconds() * 1000)
        self.node.store.update_tenant_settings(
            self.tenant, {}, sso_secret=SsoSecretChange(SECRET_A, now, 0), read_preference=ReadPreference.PRIMARY
        )
        mod = self.node.client()
        r = mod.post(f"/api/v1/{self.tenant}/sso", json_body=sso(SECRET_A, MOD, now))
        self.assertEqual(r.code, 200, r.body)
        act = {"action": "approve", "commentIds": ids[3:]}
        path = f"/api/v1/{self.tenant}/moderation/actions"
        self.assertEqual(self.trips(lambda: mod.post(path, json_body=act), 200), 1, "SSO moderator")
        # A signed-in user's post where sign-in is required: their session
        # and profile are read from the replica for the check.
        r = manager.post("/api/v1/manage/threads", json_body={"urlId": "https://news.test/a", "requireSignIn": True})
        self.assertEqual(r.code, 200, r.body)
        post = {"text": "Signed", "displayName": "Mo"}
        self.assertEqual(self.trips(lambda: mod.post(self.page, json_body=post), 201), 1, "signed-in post")
