"""The PostgreSQL backend with the real reactor: a token read that waits for
the replica, a failover in the middle of a stream of writes, and two whole
nodes (each with its own standby of one primary) over real loopback HTTP.

Servers are real (:func:`tests.support.postgres.shared_postgres`, or a cluster of
the test's own when it kills and promotes servers).
"""

from __future__ import annotations

import json
import os
from functools import partial
from typing import Any
from urllib.parse import quote

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from fastedge.api.keys import hash_api_key, new_api_key
from fastedge.store.errors import CommitUnknown, StoreUnavailable
from fastedge.store.metrics import ReplicationMetrics
from fastedge.store.model import CommentStatus, NewComment, ReadPreference
from fastedge.store.postgresql import PostgresStore
from fastedge.tap import Options, makeService
from fastedge.testing.fakes import run_inline
from tests.support.nodes import loopback_http_client
from tests.support.postgres import PostgresCluster, postgres_dsn, postgres_schema, shared_postgres

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST


def _value(metric: Any, *labels: str) -> float:
    return metric.labels(*labels)._value.get()  # type: ignore[no-any-return]


def _set_up_schema(testcase: Any, cluster: PostgresCluster) -> str:
    """A schema with the store's tables, already replayed on both standbys."""
    schema = postgres_schema(testcase, cluster)
    setup = PostgresStore(
        [postgres_dsn(cluster.servers["primary"], schema, synchronous_commit="remote_apply")],
        None,
        run=run_inline,
        clock=Clock(),
    )
    testcase.successResultOf(setup.open())
    testcase.successResultOf(setup.close())
    return schema


class TokenWaitTests(TestCase):
    """The wait itself, on the reactor's real clock."""

    @inlineCallbacks
    def test_read_waits_until_the_replica_replays(self):  # type: ignore[no-untyped-def]
        """A NEAREST read with a token the replica lacks stays pending while
        replay is paused and is served by the replica once replay resumes,
        counted as a wait, not a fallback."""
        cluster = shared_postgres()
        schema = _set_up_schema(self, cluster)
        metrics = ReplicationMetrics(CollectorRegistry(), "postgresql")
        store = PostgresStore(
            [postgres_dsn(cluster.servers["primary"], schema, synchronous_commit="local")],
            postgres_dsn(cluster.servers["lagging"], schema),
            run=run_inline,
            clock=reactor,
            token_wait_seconds=60,
            metrics=metrics,
        )
        yield store.open()
        self.addCleanup(store.close)
        cluster.pause_replay(self, "lagging")
        written = yield store.create_tenant("Acme", "global", created_ms=1, read_preference=PRIMARY)
        d = store.get_tenant(written.value.id, read_preference=NEAREST, token=written.token)
        self.assertNoResult(d)
        cluster.resume_replay("lagging")
        tenant = yield d
        self.assertEqual(tenant, written.value)
        self.assertEqual(_value(metrics.token_reads, "postgresql", "waited"), 1)
        self.assertEqual(_value(metrics.token_reads, "postgresql", "fallback"), 0)


class FailoverTests(TestCase):
    """The primary crashes mid-run and the operator promotes the standby."""

    @inlineCallbacks
    def test_promote_standby_mid_run(self):  # type: ignore[no-untyped-def]
        """Four writers post comments while the primary is killed and the
        standby promoted. Writes resume on the new primary; every write
        reported successful is there, no write reported "not applied" is,
        and only a write cut off during COMMIT is reported as unknown."""
        cluster = PostgresCluster()
        self.addCleanup(cluster.destroy)
        # Synchronous replication: an acknowledged commit is on the standby.
        cluster.start_primary("a", settings={"synchronous_standby_names": "b"})
        cluster.add_standby("b")
        pool = ThreadPool(minthreads=4, maxthreads=4, name="failover-test")
        pool.start()
        self.addCleanup(pool.stop)
        metrics = ReplicationMetrics(CollectorRegistry(), "postgresql")
        a, b = cluster.servers["a"], cluster.servers["b"]
        store = PostgresStore(
            [a.dsn(), b.dsn()],
            b.dsn(),
            run=partial(deferToThreadPool, reactor, pool),
            clock=reactor,
            failover_seconds=60,
            connect_timeout_seconds=2,
            pool_size=4,
            metrics=metrics,
        )
        yield store.open()
        self.addCleanup(store.close)
        tenant = (yield store.create_tenant("Acme", "global", created_ms=1, read_preference=PRIMARY)).value
        author = (yield store.create_anonymous_session(tenant.id, created_ms=1, read_preference=PRIMARY)).value
        thread = (yield store.upsert_thread(tenant.id, "u", created_ms=1, read_preference=PRIMARY)).value

        outcomes: dict[str, str] = {}
        state = {"crashed": False, "acked_after": 0}
        switch = []

        def fail_over() -> Any:
            # Off the reactor thread: promotion takes a moment and the
            # writers' retries must keep running meanwhile.
            cluster.crash("a")
            cluster.promote("b")

        @inlineCallbacks
        def writer(n: int):  # type: ignore[no-untyped-def]
            for i in range(40):
                body = f"w{n}-{i}"
                new = NewComment(
                    tenant_id=tenant.id,
                    thread_id=thread.id,
                    parent_id=None,
                    author_id=author.author_id,
                    display_name="W",
                    body_source=body,
                    body_html=body,
                    status=CommentStatus.APPROVED,
                    created_ms=2,
                )
                try:
                    yield store.create_comment(new, read_preference=PRIMARY)
                except CommitUnknown:
                    outcomes[body] = "unknown"
                except StoreUnavailable:
                    outcomes[body] = "failed"
                else:
                    outcomes[body] = "ok"
                    if state["crashed"]:
                        state["acked_after"] += 1
                acked = sum(1 for v in outcomes.values() if v == "ok")
                if acked >= 20 and not switch:
                    switch.append(deferToThread(fail_over))
                    state["crashed"] = True

        yield DeferredList([writer(n) for n in range(4)], fireOnOneErrback=True, consumeErrors=True)
        yield switch[0]
        rows = cluster.execute("b", "SELECT body_source FROM comments")
        present = {r[0] for r in rows}
        acked = {body for body, v in outcomes.items() if v == "ok"}
        not_applied = {body for body, v in outcomes.items() if v == "failed"}
        self.assertEqual(len(outcomes), 160)
        self.assertEqual(acked - present, set(), "acknowledged writes lost")
        self.assertEqual(not_applied & present, set(), "writes reported failed were applied")
        self.assertGreater(state["acked_after"], 0)
        self.assertEqual(_value(metrics.primary_switches, "postgresql"), 1)
        self.assertEqual(_value(metrics.primary_candidate, "postgresql"), 1)
        self.flushLoggedErrors()


class WriteErrorTests(TestCase):
    """What a write reports when the primary fails under it: never a success
    that was not committed, and "unknown" only when COMMIT was cut off."""

    def setUp(self) -> None:
        self.cluster = PostgresCluster()
        self.addCleanup(self.cluster.destroy)
        # COMMIT waits for a synchronous standby that never comes: the
        # transaction is committed locally and its COMMIT never returns.
        self.server = self.cluster.start_primary("p", settings={"synchronous_standby_names": "ghost"})
        self.metrics = ReplicationMetrics(CollectorRegistry(), "postgresql")

    @inlineCallbacks
    def test_cut_off_during_commit_is_unknown(self):  # type: ignore[no-untyped-def]
        """A session killed while its COMMIT waits is reported as
        CommitUnknown (503 commit_unknown at the API), not as "not applied":
        here the write was in fact applied."""
        pool = ThreadPool(minthreads=1, maxthreads=2, name="commit-test")
        pool.start()
        self.addCleanup(pool.stop)
        store = PostgresStore(
            [self.server.dsn(options="-c synchronous_commit=local")],
            None,
            run=partial(deferToThreadPool, reactor, pool),
            clock=reactor,
            metrics=self.metrics,
        )
        yield store.open()
        self.addCleanup(store.close)
        store2 = PostgresStore(
            [self.server.dsn(application_name="doomed")],
            None,
            run=partial(deferToThreadPool, reactor, pool),
            clock=reactor,
            failover_seconds=0,
            metrics=self.metrics,
        )
        self.addCleanup(store2.close)
        d = store2.create_tenant("Acme", "global", created_ms=1, read_preference=PRIMARY)
        waiting = "SELECT pid FROM pg_stat_activity WHERE application_name = 'doomed' AND wait_event = 'SyncRep'"
        yield _until(lambda: bool(self.cluster.execute("p", waiting)))
        self.cluster.execute("p", f"SELECT pg_terminate_backend(pid) FROM ({waiting}) w")
        yield self.assertFailure(d, CommitUnknown)
        self.assertEqual(self.cluster.execute("p", "SELECT name FROM tenants"), [("Acme",)])
        self.assertEqual(_value(self.metrics.write_failures, "postgresql", "commit_unknown"), 1)
        self.flushLoggedErrors()

    def test_no_primary_write_not_applied(self) -> None:
        """With the only primary down and no other candidate taking writes, a
        write retries for failover_seconds (on the clock) and then fails as
        "not applied"; nothing is reported successful."""
        clock = Clock()
        store = PostgresStore(
            [self.server.dsn(options="-c synchronous_commit=local")],
            None,
            run=run_inline,
            clock=clock,
            failover_seconds=2.0,
            connect_timeout_seconds=2,
            metrics=self.metrics,
        )
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        self.cluster.stop("p")
        d = store.create_tenant("Acme", "global", created_ms=1, read_preference=PRIMARY)
        self.assertNoResult(d)
        clock.advance(1.0)
        self.assertNoResult(d)
        for _ in range(8):
            clock.advance(0.25)
        failure = self.failureResultOf(d, StoreUnavailable)
        self.assertFalse(failure.check(CommitUnknown))
        self.assertIn("the write was not applied", failure.getErrorMessage())
        self.assertEqual(_value(self.metrics.write_failures, "postgresql", "not_applied"), 1)
        self.assertGreater(_value(self.metrics.primary_searches, "postgresql", "none"), 1)


def make_node(testcase: Any, name: str, replica: str, schema: str, secret: str) -> Any:
    """A whole node reading NEAREST from standby ``replica``, started; stopped at cleanup."""
    cluster = shared_postgres()
    primary = postgres_dsn(cluster.servers["primary"], schema, synchronous_commit="local")
    # A password in the connection strings: the server (trust auth)
    # ignores it; the logs must never show it.
    primary += " password=s3cret-pw"
    config = {
        "node": {"id": name, "data_dir": os.path.abspath(testcase.mktemp())},
        "http": {"endpoint": "tcp:0:interface=127.0.0.1"},
        "mesh": {"endpoint": "tcp:0:interface=127.0.0.1"},
        "store": {
            "backend": "postgresql",
            "postgresql": {
                "primaries": [primary],
                "replica": postgres_dsn(cluster.servers[replica], schema) + " password=s3cret-pw",
                "token_wait_seconds": 60.0,
                "lag_probe_seconds": 0.2,
            },
        },
        "api": {"secret_file": secret, "page_cache_seconds": 60.0},
        "dns": {"port": 0},
        "tls": {"endpoint": "tcp:0:interface=127.0.0.1"},
    }
    path = os.path.abspath(testcase.mktemp())
    with open(path, "w") as f:
        f.write(_toml(config))
    options = Options()
    options.parseOptions(["--config", path])
    node = makeService(options)
    node.privilegedStartService()
    node.startService()
    testcase.addCleanup(node.stopService)
    return node


@inlineCallbacks
def serve(testcase: Any, node: Any):  # type: ignore[no-untyped-def]
    """The node's HTTP base URL and a client, once its store is ready."""
    yield node.getServiceNamed("store").when_ready()
    listener = node.getServiceNamed("http").getServiceNamed("http")
    port = yield listener.when_listening()
    return f"http://127.0.0.1:{port.getHost().port}", loopback_http_client(testcase, listener.factory)


class TwoNodesTests(TestCase):
    """Two whole nodes (``twistd fastedge``'s service tree), each reading
    NEAREST from its own standby of one primary."""

    def make_node(self, name: str, replica: str, schema: str, secret: str) -> Any:
        return make_node(self, name, replica, schema, secret)

    def serve(self, node: Any):  # type: ignore[no-untyped-def]
        return serve(self, node)

    @inlineCallbacks
    def test_comment_through_a_read_through_b(self):  # type: ignore[no-untyped-def]
        """A comment posted through node A: a stranger reading NEAREST
        through node B does not see it while B's standby lags; the poster's
        cookie (its token) makes B wait for its standby and show it, after
        which strangers see it too; a tenant-API write through A is readable
        through B's API at once with A's token. No log line shows a password."""
        logged: list[str] = []

        def observe(event: Any) -> None:
            logged.append(formatEvent(event) or "")
            logged.append(repr(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        cluster = shared_postgres()
        schema = _set_up_schema(self, cluster)
        secret = os.path.abspath(self.mktemp())
        node_a = self.make_node("node-a", "sync", schema, secret)
        base_a, http_a = yield self.serve(node_a)
        node_b = self.make_node("node-b", "lagging", schema, secret)
        base_b, http_b = yield self.serve(node_b)
        store = node_a.getServiceNamed("store").store
        tenant = (yield store.create_tenant("Acme", "global", created_ms=1, read_preference=PRIMARY)).value
        key = new_api_key()
        yield store.add_api_key(tenant.id, hash_api_key(key), created_ms=1, read_preference=PRIMARY)
        page = "/api/v1/{}/comments?urlId={}".format(tenant.id, quote("https://news.test/a", safe=""))

        @inlineCallbacks
        def comments(http: Any, base: str, cookie: str | None = None):  # type: ignore[no-untyped-def]
            response = yield http.get(base + page, headers={"cookie": cookie} if cookie else {})
            self.assertEqual(response.code, 200)
            return [c["html"] for c in (yield response.json())["comments"]]

        cluster.pause_replay(self, "lagging")
        self.assertEqual((yield comments(http_b, base_b)), [])
        posted = yield http_a.post(base_a + page, json={"text": "From A", "displayName": "Ann"})
        self.assertEqual(posted.code, 201)
        cookie = posted.headers.getRawHeaders("set-cookie")[0].split(";")[0]
        self.assertEqual((yield comments(http_b, base_b)), [])
        pending = comments(http_b, base_b, cookie)
        # Once B's read waits for its standby, the standby replays again.
        waiting = node_b.getServiceNamed("store").store._metrics.token_waiting.labels("postgresql")
        yield _until(lambda: waiting._value.get() == 1)
        cluster.resume_replay("lagging")
        self.assertEqual((yield pending), ["<p>From A</p>"])
        self.assertEqual((yield comments(http_b, base_b)), ["<p>From A</p>"])

        created = yield http_a.post(
            base_a + "/api/v1/manage/comments",
            json={
                "urlId": "https://news.test/b",
                "text": "Via API",
                "displayName": "Ed",
            },
            headers={"authorization": "Bearer " + key},
        )
        self.assertEqual(created.code, 201)
        token = created.headers.getRawHeaders("x-consistency-token")[0]
        comment_id = (yield created.json())["comment"]["id"]
        read = yield http_b.get(
            base_b + f"/api/v1/manage/comments/{comment_id}?readPreference=nearest",
            headers={"authorization": "Bearer " + key, "x-consistency-token": token},
        )
        self.assertEqual(read.code, 200)
        self.assertEqual((yield read.json())["comment"]["text"], "Via API")

        metrics = yield http_b.get(base_b + "/metrics")
        text = yield metrics.text()
        self.assertIn(
            'fastedge_store_token_reads_total{backend="postgresql",outcome="waited"}',
            text,
        )
        self.assertIn("fastedge_store_replica_lag_bytes", text)
        self.assertFalse([line for line in logged if "s3cret-pw" in line])


@inlineCallbacks
def _until(condition: Any, turns: int = 100_000):  # type: ignore[no-untyped-def]
    """Let the reactor run (zero-delay turns, no sleeping) until ``condition()``."""
    for _ in range(turns):
        if condition():
            return
        yield deferLater(reactor, 0, lambda: None)
    raise AssertionError(f"condition not met after {turns} reactor turns")


class AdminTests(TestCase):
    """``fastedge-admin`` with the PostgreSQL backend."""

    @inlineCallbacks
    def test_tenant_create(self):  # type: ignore[no-untyped-def]
        """fastedge-admin creates the tenant and its key on the primary the
        config names; the key's hash is stored, never the key."""
        from tests.integration.test_node import admin

        cluster = shared_postgres()
        schema = _set_up_schema(self, cluster)
        primary = postgres_dsn(cluster.servers["primary"], schema, synchronous_commit="local")
        config = {
            "node": {"id": "admin-test", "data_dir": os.path.abspath(self.mktemp())},
            "store": {"backend": "postgresql", "postgresql": {"primaries": [primary]}},
        }
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(_toml(config))
        out, err, code = yield admin("--config", path, "tenant", "create", "Acme", "--json")
        self.assertEqual(code, 0, err)
        created = json.loads(out)
        rows = cluster.execute(
            "primary",
            "SELECT name FROM {}.tenants WHERE id = '{}'".format(schema, created["tenantId"]),
        )
        self.assertEqual(rows, [("Acme",)])
        hashes = cluster.execute("primary", f"SELECT key_hash FROM {schema}.api_keys")
        self.assertEqual(hashes, [(hash_api_key(created["apiKey"]),)])

    @inlineCallbacks
    def test_no_tables_no_store(self):  # type: ignore[no-untyped-def]
        """A primary without the store's tables is not a store: refused
        (exit 1, naming the server without its password), nothing created;
        --init creates the tables."""
        from tests.integration.test_node import admin

        cluster = shared_postgres()
        schema = postgres_schema(self, cluster)
        primary = postgres_dsn(cluster.servers["primary"], schema) + " password=s3cret-pw"
        config = {
            "node": {"id": "admin-test", "data_dir": os.path.abspath(self.mktemp())},
            "store": {"backend": "postgresql", "postgresql": {"primaries": [primary]}},
        }
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(_toml(config))
        out, err, code = yield admin("--config", path, "--wait", "0", "tenant", "list")
        self.assertEqual(code, 1, err)
        self.assertIn(b"no store at postgresql primary (", err)
        self.assertNotIn(b"s3cret-pw", err)
        self.assertEqual(
            cluster.execute("primary", f"SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}'"), [(0,)]
        )
        out, err, code = yield admin("--config", path, "--init", "tenant", "list", "--json")
        self.assertEqual((code, json.loads(out)), (0, {"tenants": []}), err)
        self.assertIn(b"created store postgresql primary", err)

    @inlineCallbacks
    def test_new_key_works_at_once_while_the_standby_lags(self):  # type: ignore[no-untyped-def]
        """A tenant and key made by fastedge-admin on the primary work on a
        node whose standby has not replayed them (replay paused): the key
        lookup misses NEAREST and finds the key on the PRIMARY, so the
        tenant API answers 200, not 401 bad_api_key."""
        from tests.integration.test_node import admin

        cluster = shared_postgres()
        schema = _set_up_schema(self, cluster)
        node = make_node(self, "lagging-node", "lagging", schema, os.path.abspath(self.mktemp()))
        base, http = yield serve(self, node)
        config = {
            "node": {"id": "admin-test", "data_dir": os.path.abspath(self.mktemp())},
            "store": {
                "backend": "postgresql",
                "postgresql": {"primaries": [postgres_dsn(cluster.servers["primary"], schema)]},
            },
        }
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(_toml(config))
        cluster.pause_replay(self, "lagging")
        out, err, code = yield admin("--config", path, "tenant", "create", "Lagging", "--json")
        self.assertEqual(code, 0, err)
        key = json.loads(out)["apiKey"]
        # The standby has not replayed the tenant: the lookup must go on to the primary.
        replica = node.getServiceNamed("store").store
        missed = yield replica.tenant_for_api_key(hash_api_key(key), read_preference=NEAREST).addErrback(
            lambda f: f.type.__name__
        )
        self.assertEqual(missed, "NotFound")
        response = yield http.get(base + "/api/v1/manage/threads", headers={"authorization": "Bearer " + key})
        self.assertEqual(response.code, 200, (yield response.text()))


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the test's config (strings, numbers, lists)."""
    lines, subtables = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            subtables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    out = ""
    if prefix:
        out += f"[{prefix}]\n"
    out += "\n".join(lines) + "\n"
    for key, value in subtables:
        out += _toml(value, prefix + "." + key if prefix else key)
    return out
