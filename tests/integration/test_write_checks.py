"""A write's checks read the local replica and the write verifies them on
the primary in its one round trip: with a replica that has stopped
replaying, every answer is still the primary's.

The replica receives WAL but replays none of it after ``setUp``, so what the
tenant changes below (a lock, a closed thread, a removed comment, a deleted
session) is on the primary only; the public API must act on it anyway, and
apply nothing it refuses.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.metrics import ReplicationMetrics
from fastedge.store.model import ReadPreference
from fastedge.store.postgresql import PostgresStore
from fastedge.testing.fakes import run_inline
from tests.support.nodes import NodeHarness
from tests.support.postgres import postgres_dsn, postgres_schema, shared_postgres

URL = "https://news.test/a"
PRIMARY = ReadPreference.PRIMARY


class ReplicaChecksTests(SynchronousTestCase):
    """Public writes against a node whose replica is frozen."""

    def setUp(self) -> None:
        cluster = shared_postgres()
        self.cluster = cluster
        self.schema = postgres_schema(self, cluster)
        primary = cluster.servers["primary"]
        setup = PostgresStore(
            [postgres_dsn(primary, self.schema, synchronous_commit="remote_apply")], None, run=run_inline, clock=Clock()
        )
        self.successResultOf(setup.open())
        self.successResultOf(setup.close())

        def factory(clock: Clock) -> Any:
            return PostgresStore(
                # remote_apply on the synchronous standby (not the frozen
                # one): what is written before the freeze is replayed there.
                [postgres_dsn(primary, self.schema, synchronous_commit="local")],
                postgres_dsn(cluster.servers["lagging"], self.schema),
                run=run_inline,
                clock=clock,
                token_wait_seconds=0,
                metrics=ReplicationMetrics(CollectorRegistry(), "postgresql"),
            )

        self.node = NodeHarness(self, store_factory=factory)
        self.tenant, self.key = self.node.create_tenant()
        self.manager = self.node.manager(self.key)
        self.page = f"/api/v1/{self.tenant}/comments?urlId=" + quote(URL, safe="")
        self.ann = self.node.client()
        first = self.ann.post(self.page, json_body={"text": "First", "displayName": "Ann"})
        self.assertEqual(first.code, 201, first.body)
        self.first = first.json["comment"]["id"]
        thread = self.successResultOf(self.node.store.get_thread(self.tenant, URL, read_preference=PRIMARY))
        self.thread_id = thread.id
        self.wait_replayed()
        cluster.pause_replay(self, "lagging")

    def wait_replayed(self) -> None:
        """Until the lagging standby has replayed everything written so far."""
        lsn = self.cluster.execute("primary", "SELECT pg_current_wal_lsn()::text")[0][0]
        for _ in range(500):
            done = self.cluster.execute(
                "lagging", f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"  # noqa: S608 (a server's own LSN)
            )[0][0]
            if done:
                return
            self.cluster.execute("lagging", "SELECT pg_sleep(0.01)")
        self.fail("the standby did not catch up")

    def stale_checks(self) -> float:
        return self.node.registry.get_sample_value("fastedge_api_stale_checks_total") or 0.0

    def primary_count(self, sql: str) -> int:
        return int(self.cluster.execute("primary", sql.format(schema=self.schema))[0][0])

    def test_thread_locked_on_the_primary_only(self) -> None:
        """A lock the replica has not seen: the post's check passes on the
        replica, the write finds other rules (nothing applied), the checks
        run again on the primary's copy and refuse it: 403 thread_locked."""
        r = self.manager.post("/api/v1/manage/threads", json_body={"urlId": URL, "lockedGroups": ["staff"]})
        self.assertEqual(r.code, 200, r.body)
        bob = self.node.client()
        r = bob.post(self.page, json_body={"text": "Sneaky", "displayName": "Bob"})
        self.assertEqual(r.code, 403, r.body)
        self.assertEqual(r.json["error"]["code"], "thread_locked")
        self.assertEqual(self.stale_checks(), 1)
        self.assertEqual(self.primary_count("SELECT count(*) FROM {schema}.comments"), 1)
        self.assertEqual(self.primary_count("SELECT count(*) FROM {schema}.anonymous_sessions"), 1)

    def test_thread_closed_on_the_primary_only(self) -> None:
        """A thread closed on the primary only refuses posts: 403 thread_closed."""
        r = self.manager.patch(f"/api/v1/manage/threads/{self.thread_id}", json_body={"closed": True})
        self.assertEqual(r.code, 200, r.body)
        r = self.ann.post(self.page, json_body={"text": "Late", "displayName": "Ann"})
        self.assertEqual(r.code, 403, r.body)
        self.assertEqual(r.json["error"]["code"], "thread_closed")
        self.assertEqual(self.primary_count("SELECT count(*) FROM {schema}.comments"), 1)

    def test_comment_removed_on_the_primary_only(self) -> None:
        """A comment removed on the primary only cannot be liked: 404, and
        its like count does not move."""
        r = self.manager.patch(f"/api/v1/manage/comments/{self.first}", json_body={"status": "removed"})
        self.assertEqual(r.code, 200, r.body)
        bob = self.node.client()
        r = bob.post(f"/api/v1/{self.tenant}/comments/{self.first}/like")
        self.assertEqual(r.code, 404, r.body)
        self.assertEqual(self.primary_count("SELECT sum(like_count) FROM {schema}.comments"), 0)

    def test_session_deleted_on_the_primary_only(self) -> None:
        """A session the primary no longer has (the replica still does):
        401 session_invalid with the cookie cleared, nothing written."""
        self.cluster.execute("primary", f"DELETE FROM {self.schema}.anonymous_sessions")  # noqa: S608
        cookie = self.ann.cookie
        r = self.ann.post(self.page, json_body={"text": "Again", "displayName": "Ann"})
        self.assertEqual(r.code, 401, r.body)
        self.assertEqual(r.json["error"]["code"], "session_invalid")
        self.assertIsNone(self.ann.cookie)
        self.ann.cookie = cookie
        r = self.ann.post(f"/api/v1/{self.tenant}/comments/{self.first}/like")
        self.assertEqual(r.code, 401, r.body)
        self.assertEqual(self.primary_count("SELECT count(*) FROM {schema}.comments"), 1)
        self.assertEqual(self.primary_count("SELECT sum(like_count) FROM {schema}.comments"), 0)
