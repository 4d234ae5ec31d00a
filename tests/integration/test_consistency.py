"""Read-your-writes through the API with a real PostgreSQL replica that has
stopped replaying: the session cookie's token, the page cache, and the
tenant API's ``X-Consistency-Token``.

The store runs inline on the harness's ``Clock``: a read waiting for the
replica is pending until the test advances the clock past the wait bound,
then it is served by the primary.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.metrics import ReplicationMetrics
from fastedge.store.postgresql import PostgresStore, parse_lsn
from fastedge.testing.fakes import run_inline
from tests.support.nodes import NodeHarness
from tests.support.postgres import postgres_dsn, postgres_schema, shared_postgres

URL = quote("https://news.test/a", safe="")
WAIT = 0.5


def cookie_token(cookie: str) -> str | None:
    """The consistency token inside a session cookie (``fe_session=v2....``)."""
    parts = cookie.split("=", 1)[1].split(".")
    raw = parts[4]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode() if raw else None


class ConsistencyApiTests(SynchronousTestCase):
    """A node whose local replica lags: what a viewer who wrote sees."""

    def setUp(self) -> None:
        cluster = shared_postgres()
        self.cluster = cluster
        schema = postgres_schema(self, cluster)
        primary = cluster.servers["primary"]
        setup = PostgresStore(
            [postgres_dsn(primary, schema, synchronous_commit="remote_apply")],
            None,
            run=run_inline,
            clock=Clock(),
        )
        self.successResultOf(setup.open())
        self.successResultOf(setup.close())
        self.metrics = ReplicationMetrics(CollectorRegistry(), "postgresql")

        def factory(clock: Clock) -> Any:
            return PostgresStore(
                [postgres_dsn(primary, schema, synchronous_commit="local")],
                postgres_dsn(cluster.servers["lagging"], schema),
                run=run_inline,
                clock=clock,
                token_wait_seconds=WAIT,
                token_poll_seconds=0.01,
                metrics=self.metrics,
            )

        self.node = NodeHarness(self, store_factory=factory)
        self.tenant, self.key = self.node.create_tenant()
        # From here on the replica receives WAL but replays none of it.
        cluster.pause_replay(self, "lagging")
        self.page = f"/api/v1/{self.tenant}/comments?urlId={URL}"

    def comments(self, response: Any) -> list[tuple[str, bool]]:
        self.assertEqual(response.code, 200, response.body)
        return [(c["html"], c["isMine"]) for c in response.json["comments"]]

    def test_poster_sees_own_comment_from_lagging_replica(self) -> None:
        """A reader who just posted gets a session cookie holding the write's
        token; their next page load skips the page cached before the write,
        waits for the replica and, at the bound, reads the primary: they see
        their comment. A stranger keeps the (stale) cached page until then,
        and afterwards is served the poster's fresher page."""
        stranger = self.node.client()
        poster = self.node.client()
        self.assertEqual(self.comments(stranger.get(self.page)), [])
        posted = poster.post(self.page, json_body={"text": "Mine!", "displayName": "Ann"})
        self.assertEqual(posted.code, 201, posted.body)
        assert poster.cookie is not None
        token = cookie_token(poster.cookie)
        assert token is not None
        parse_lsn(token)
        # Not on the replica: a stranger's page comes from the replica.
        self.assertEqual(self.comments(stranger.get(self.page)), [])
        self.assertEqual(self.comments(poster.get(self.page, advance=WAIT)), [("<p>Mine!</p>", True)])
        self.assertEqual(self.comments(stranger.get(self.page)), [("<p>Mine!</p>", False)])
        fallbacks = self.metrics.nearest_fallbacks.labels("postgresql", "token_timeout")._value.get()
        self.assertGreaterEqual(fallbacks, 1)

    def test_every_write_moves_the_cookie_token(self) -> None:
        """Each write re-issues the cookie with a newer token (and the same
        session); the issue time, and so the expiry, do not move."""
        poster = self.node.client()
        first = poster.post(self.page, json_body={"text": "One", "displayName": "Ann"})
        cookie1 = poster.cookie
        assert cookie1 is not None
        comment_id = first.json["comment"]["id"]
        liked = poster.post(f"/api/v1/{self.tenant}/comments/{comment_id}/like")
        self.assertEqual(liked.code, 200, liked.body)
        cookie2 = poster.cookie
        assert cookie2 is not None
        self.assertNotEqual(cookie1, cookie2)
        parts1, parts2 = cookie1.split("."), cookie2.split(".")
        self.assertEqual(parts1[1:4], parts2[1:4])
        self.assertGreater(
            parse_lsn(cookie_token(cookie2) or ""),
            parse_lsn(cookie_token(cookie1) or ""),
        )

    def test_tenant_api_token_header(self) -> None:
        """A write through the tenant API returns X-Consistency-Token; a
        NEAREST read sending it back sees the write although the replica
        lacks it, while the same read without it does not."""
        manager = self.node.manager(self.key)
        created = manager.post(
            "/api/v1/manage/comments",
            json_body={
                "urlId": "https://news.test/b",
                "text": "Hi",
                "displayName": "Ed",
            },
        )
        self.assertEqual(created.code, 201, created.body)
        token = created.header("x-consistency-token")
        assert token is not None
        path = "/api/v1/manage/comments/{}?readPreference=nearest".format(created.json["comment"]["id"])
        self.assertEqual(manager.get(path).code, 404)
        seen = manager.get(path, headers={"x-consistency-token": token}, advance=WAIT)
        self.assertEqual(seen.code, 200, seen.body)
        self.assertEqual(seen.json["comment"]["text"], "Hi")

    def test_moderator_page_after_bulk_action(self) -> None:
        """The moderation queue reads NEAREST by default: after a bulk action
        the moderator sends back its X-Consistency-Token and the next queue
        page and audit log show the action although the replica lacks it;
        without the token the replica's older state is served."""
        manager = self.node.manager(self.key)
        ids = []
        for text in ("one", "two"):
            created = manager.post(
                "/api/v1/manage/comments",
                json_body={"urlId": "https://news.test/c", "text": text, "displayName": "Ed"},
            )
            self.assertEqual(created.code, 201, created.body)
            ids.append(created.json["comment"]["id"])
        acted = manager.post("/api/v1/manage/moderation/actions", json_body={"action": "remove", "commentIds": ids})
        self.assertEqual(acted.code, 200, acted.body)
        token = acted.header("x-consistency-token")
        assert token is not None
        queue = "/api/v1/manage/moderation/queue?queue=removed"
        self.assertEqual(manager.get(queue).json["comments"], [])
        seen = manager.get(queue, headers={"x-consistency-token": token}, advance=WAIT)
        self.assertEqual(sorted(c["id"] for c in seen.json["comments"]), sorted(ids))
        log = manager.get("/api/v1/manage/moderation/log", headers={"x-consistency-token": token})
        self.assertEqual(log.json["entries"][0]["commentIds"], ids)

    def test_bad_token_header(self) -> None:
        """A token the store never issued, or one no store could have, is a
        400 naming the problem, not a wait or a 500."""
        manager = self.node.manager(self.key)
        for bad in ("garbage", "1/2/3", "x" * 200):
            response = manager.get(
                "/api/v1/manage/threads?readPreference=nearest",
                headers={"x-consistency-token": bad},
            )
            self.assertEqual(response.code, 400, bad)
            self.assertEqual(response.json["error"]["code"], "bad_consistency_token")
