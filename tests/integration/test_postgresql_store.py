"""Tests for :mod:`fastedge.store.postgresql` against real PostgreSQL servers.

The servers come from :func:`tests.support.postgres.shared_postgres` (a primary and
three standbys started once per test run). Store calls run inline and time
comes from a ``Clock``, so waits and fallbacks are driven by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry
from psycopg import pq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.errors import BadToken, NotFound
from fastedge.store.interfaces import IStore
from fastedge.store.metrics import ReplicationMetrics
from fastedge.store.model import CommentStatus, ModerationAction, NewComment, ReadPreference, Tenant, Written
from fastedge.store.postgresql import PostgresStore, format_lsn, parse_lsn, redact_dsn
from fastedge.testing.fakes import run_inline
from tests.support.postgres import postgres_dsn, postgres_schema, shared_postgres

from ..unit.store.contract import WebhookContractMixin
from ..unit.store.contract_writes import WriteContractMixin

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST


class PostgresPrimaryContractTests(WriteContractMixin, WebhookContractMixin, SynchronousTestCase):
    """The PostgreSQL store keeps the store contract with no local replica:
    NEAREST reads are served by the primary."""

    def make_store(self) -> IStore:
        cluster = shared_postgres()
        schema = postgres_schema(self, cluster)
        return PostgresStore(
            [postgres_dsn(cluster.servers["primary"], schema)],
            None,
            run=run_inline,
            clock=Clock(),
        )


class PostgresStandbyContractTests(WriteContractMixin, WebhookContractMixin, SynchronousTestCase):
    """The PostgreSQL store keeps the store contract with NEAREST reads routed
    to a real hot standby.

    The writer's sessions commit with ``synchronous_commit=remote_apply`` on
    the synchronous standby, so a write is visible there when it returns,
    and ``token_wait_seconds=0`` makes the (rare) read whose token is past
    the replica go to the primary at once instead of waiting on a clock
    nobody advances: the results are deterministic either way.
    """

    def make_store(self) -> IStore:
        cluster = shared_postgres()
        schema = postgres_schema(self, cluster)
        self.metrics = ReplicationMetrics(CollectorRegistry(), "postgresql")
        return PostgresStore(
            [
                postgres_dsn(
                    cluster.servers["primary"],
                    schema,
                    synchronous_commit="remote_apply",
                )
            ],
            postgres_dsn(cluster.servers["sync"], schema),
            run=run_inline,
            clock=Clock(),
            token_wait_seconds=0,
            metrics=self.metrics,
        )


def _count(metrics: ReplicationMetrics, name: str, **labels: str) -> float:
    """The value of one sample of the store's replication metrics."""
    metric = getattr(metrics, name)
    return metric.labels(backend="postgresql", **labels)._value.get()  # type: ignore[no-any-return]


class _LaggingReplicaMixin:
    """A store whose local replica is the ``lagging`` standby. The test's
    schema is set up on both standbys first (``remote_apply``); after
    :meth:`freeze` the replica receives WAL but replays none of it, so what
    the test writes then is on the primary only."""

    token_wait = 0.5

    def setUp(self: Any) -> None:
        super().setUp()
        cluster = shared_postgres()
        self.cluster = cluster
        self.schema = postgres_schema(self, cluster)
        # Tables reach both standbys before the test store exists.
        setup = PostgresStore(
            [
                postgres_dsn(
                    cluster.servers["primary"],
                    self.schema,
                    synchronous_commit="remote_apply",
                )
            ],
            None,
            run=run_inline,
            clock=Clock(),
        )
        self.successResultOf(setup.open())
        self.successResultOf(setup.close())
        self.clock = Clock()
        self.metrics = ReplicationMetrics(CollectorRegistry(), "postgresql")
        self.store = self.make_pg_store(self.clock)
        self.successResultOf(self.store.open())
        self.addCleanup(lambda: self.successResultOf(self.store.close()))

    def make_pg_store(self: Any, clock: Any, **kwargs: Any) -> PostgresStore:
        """A store on the test's schema whose commits never wait for a
        standby (``synchronous_commit=local``)."""
        kwargs.setdefault("token_wait_seconds", self.token_wait)
        kwargs.setdefault("token_poll_seconds", 0.01)
        kwargs.setdefault("metrics", self.metrics)
        return PostgresStore(
            [
                postgres_dsn(
                    self.cluster.servers["primary"],
                    self.schema,
                    synchronous_commit="local",
                )
            ],
            postgres_dsn(self.cluster.servers["lagging"], self.schema),
            run=run_inline,
            clock=clock,
            **kwargs,
        )

    def freeze(self: Any) -> None:
        """From now on the replica replays nothing (until the test ends)."""
        self.cluster.pause_replay(self, "lagging")

    def new_tenant(self: Any) -> Written[Tenant]:
        return self.successResultOf(  # type: ignore[no-any-return]
            self.store.create_tenant("Acme", "global", created_ms=1, read_preference=PRIMARY)
        )


class TokenTests(_LaggingReplicaMixin, SynchronousTestCase):
    """Read-your-writes at the local replica: tokens, the bounded wait and
    the fallback to the primary, with a replica that has stopped replaying."""

    def test_token_is_a_wal_position(self) -> None:
        """A write's token is a WAL position at or after its commit: the
        primary has written at least that far when the write returns."""
        written = self.new_tenant()
        self.assertIsNotNone(written.token)
        token = written.token or ""
        self.assertEqual(format_lsn(parse_lsn(token)), token.upper())
        (now,) = self.cluster.execute("primary", "SELECT pg_current_wal_lsn()::text")[0]
        self.assertGreaterEqual(parse_lsn(now), parse_lsn(token))
        later = self.new_tenant()
        self.assertTrue(self.store.token_covers(later.token, written.token))
        self.assertFalse(self.store.token_covers(written.token, later.token))

    def test_nearest_reads_the_replica(self) -> None:
        """Without a token a NEAREST read is served by the local replica, which
        does not have what was written after it froze; PRIMARY has it."""
        self.freeze()
        tenant = self.new_tenant().value
        self.failureResultOf(self.store.get_tenant(tenant.id, read_preference=NEAREST), NotFound)
        self.assertEqual(
            self.successResultOf(self.store.get_tenant(tenant.id, read_preference=PRIMARY)),
            tenant,
        )

    def test_token_read_falls_back_after_the_bound(self) -> None:
        """A NEAREST read with the token of a write the replica lacks waits
        (polling on the clock) until the bound, then reads the primary: it
        never misses the write, and the fallback is counted."""
        self.freeze()
        written = self.new_tenant()
        d = self.store.get_tenant(written.value.id, read_preference=NEAREST, token=written.token)
        self.assertNoResult(d)
        self.clock.advance(0.25)
        self.assertNoResult(d)
        self.clock.advance(0.25)
        self.assertEqual(self.successResultOf(d), written.value)
        self.assertEqual(_count(self.metrics, "token_reads", outcome="fallback"), 1)
        self.assertEqual(_count(self.metrics, "nearest_fallbacks", reason="token_timeout"), 1)
        self.assertEqual(_count(self.metrics, "token_reads", outcome="ready"), 0)

    def test_no_second_wait_while_the_replica_is_behind(self) -> None:
        """Once a wait timed out, the next reads needing that position check
        the replica once and go straight to the primary (a page load makes
        several reads: only the first waits); after the bound has passed
        again, a read waits again."""
        self.freeze()
        written = self.new_tenant()
        tenant_id = written.value.id
        d = self.store.get_tenant(tenant_id, read_preference=NEAREST, token=written.token)
        self.clock.advance(0.5)
        self.successResultOf(d)
        self.assertEqual(
            self.successResultOf(self.store.get_tenant(tenant_id, read_preference=NEAREST, token=written.token)),
            written.value,
        )
        self.assertEqual(_count(self.metrics, "nearest_fallbacks", reason="replica_behind"), 1)
        self.clock.advance(0.5)
        d = self.store.get_tenant(tenant_id, read_preference=NEAREST, token=written.token)
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.successResultOf(d)
        self.assertEqual(_count(self.metrics, "nearest_fallbacks", reason="token_timeout"), 2)

    def test_token_the_replica_has_is_served_at_once(self) -> None:
        """A token the replica has already replayed costs no wait: the read is
        served by the replica on the first check."""
        written = self.new_tenant()
        # Written with synchronous_commit=local; remote_apply on a later
        # write makes sure the replica has replayed past this one.
        self.cluster.execute("primary", "SET synchronous_commit = remote_apply; CREATE TEMP TABLE x ()")
        self.freeze()
        self.assertEqual(
            self.successResultOf(self.store.get_tenant(written.value.id, read_preference=NEAREST, token=written.token)),
            written.value,
        )
        self.assertEqual(_count(self.metrics, "token_reads", outcome="ready"), 1)

    def test_primary_reads_ignore_the_replica(self) -> None:
        """A PRIMARY read with a token is served by the primary at once."""
        self.freeze()
        written = self.new_tenant()
        self.assertEqual(
            self.successResultOf(self.store.get_tenant(written.value.id, read_preference=PRIMARY, token=written.token)),
            written.value,
        )

    def test_bad_token(self) -> None:
        """A token this store did not issue is refused, whatever the read
        preference, and so by token_covers."""
        tenant = self.new_tenant().value
        for rp in (PRIMARY, NEAREST):
            for bad in ("", "garbage", "1/2/3", "G/0", "123456789/0"):
                self.failureResultOf(
                    self.store.get_tenant(tenant.id, read_preference=rp, token=bad),
                    BadToken,
                )
        self.assertRaises(BadToken, self.store.token_covers, None, "x")
        self.assertRaises(BadToken, self.store.token_covers, "x", "0/1")


class ZeroWaitTests(_LaggingReplicaMixin, SynchronousTestCase):
    """``token_wait_seconds = 0``: never wait, read the primary at once."""

    token_wait = 0.0

    def test_fallback_without_waiting(self) -> None:
        """With no wait allowed a token the replica lacks sends the read to
        the primary right away (no clock advance needed)."""
        self.freeze()
        written = self.new_tenant()
        d = self.store.get_tenant(written.value.id, read_preference=NEAREST, token=written.token)
        self.assertEqual(self.successResultOf(d), written.value)
        self.assertEqual(_count(self.metrics, "nearest_fallbacks", reason="token_timeout"), 1)


class LagTests(_LaggingReplicaMixin, SynchronousTestCase):
    """The replica's lag as this node measures it."""

    def test_lag_of_a_frozen_replica(self) -> None:
        """After writes the frozen replica has not replayed, the lag in bytes
        is positive and reported in the gauge."""
        self.freeze()
        self.new_tenant()
        lag = self.successResultOf(self.store.measure_lag())
        self.assertIsNotNone(lag)
        assert lag is not None
        self.assertGreater(lag.lag_bytes, 0)
        self.assertEqual(lag.lag_bytes, lag.primary_lsn - lag.replay_lsn)
        self.assertEqual(_count(self.metrics, "lag_bytes"), lag.lag_bytes)

    def test_no_replica_no_lag(self) -> None:
        """A node without a local replica has no lag to measure."""
        store = PostgresStore(
            [postgres_dsn(self.cluster.servers["primary"], self.schema)],
            None,
            run=run_inline,
            clock=self.clock,
        )
        self.assertIsNone(self.successResultOf(store.measure_lag()))


class DsnTests(SynchronousTestCase):
    """Connection strings in logs."""

    def test_redact(self) -> None:
        """Only host, port, database, user and application name are shown;
        passwords never, in key/value or URI form."""
        self.assertEqual(
            redact_dsn("host=db1 port=5433 dbname=fe user=app password=s3cret sslmode=require"),
            "host=db1 port=5433 dbname=fe user=app",
        )
        self.assertNotIn("s3cret", redact_dsn("postgresql://app:s3cret@db1:5433/fe"))
        self.assertEqual(redact_dsn("host='unterminated"), "<unparsable connection string>")


class _TracedStore(PostgresStore):
    """Records the protocol messages of every write transaction (libpq's
    trace of the primary connection, from checkout to after the commit)."""

    trace_path: str

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        with open(self.trace_path, "a") as trace:
            raw = None
            with super()._writing() as conn:
                raw = conn.raw
                raw.pgconn.trace(trace.fileno())
                raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
                yield conn
            raw.pgconn.untrace()


class BulkRoundTripTests(SynchronousTestCase):
    """A bulk moderation call costs one round trip to the primary."""

    def test_bulk_approve_is_one_round_trip(self) -> None:
        """Approving 100 comments sends BEGIN, every statement, COMMIT and
        the token query with one Sync: one round trip however far the
        primary is, for any number of comments; a foreign id changes nothing
        in that same one round trip."""
        cluster = shared_postgres()
        schema = postgres_schema(self, cluster)
        store = _TracedStore([postgres_dsn(cluster.servers["primary"], schema)], None, run=run_inline, clock=Clock())
        store.trace_path = self.mktemp()
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))

        def done(d: Any) -> Any:
            return self.successResultOf(d).value

        tenant = done(store.create_tenant("T", "global", created_ms=1, read_preference=PRIMARY))
        author = done(store.create_anonymous_session(tenant.id, created_ms=1, read_preference=PRIMARY)).author_id
        thread = done(store.upsert_thread(tenant.id, "u", created_ms=1, read_preference=PRIMARY))
        ids = [
            done(
                store.create_comment(
                    NewComment(tenant.id, thread.id, author, "A", "x", "<p>x</p>", CommentStatus.PENDING, i),
                    read_preference=PRIMARY,
                )
            ).id
            for i in range(100)
        ]
        other = done(store.create_tenant("O", "global", created_ms=1, read_preference=PRIMARY))
        with open(store.trace_path, "w"):
            pass
        moderated = self.successResultOf(
            store.moderate(
                tenant.id, ModerationAction.APPROVE, ids, actor="m", reason="", created_ms=2, read_preference=PRIMARY
            )
        )
        self.assertEqual(len(moderated.value.changed), 100)
        self.assertIsNotNone(moderated.token)
        self.assertEqual(self._syncs(store.trace_path), 1)
        self.failureResultOf(
            store.moderate(
                other.id, ModerationAction.REMOVE, ids, actor="m", reason="", created_ms=3, read_preference=PRIMARY
            ),
            NotFound,
        )
        self.assertEqual(self._syncs(store.trace_path), 1)
        thread_now = self.successResultOf(store.get_thread_by_id(tenant.id, thread.id, read_preference=PRIMARY))
        self.assertEqual(thread_now.comment_count, 100)

    def _syncs(self, path: str) -> int:
        """Sync messages the client sent since the trace was last read."""
        with open(path) as f:
            lines = f.read().splitlines()
        with open(path, "w"):
            pass
        return sum(1 for line in lines if line.split("\t")[:1] == ["F"] and line.split("\t")[2:3] == ["Sync"])


class IdleConnectionTests(SynchronousTestCase):
    """A write sent in one flight must still tell "never sent" from "sent"."""

    def test_connection_closed_while_idle_is_retried(self) -> None:
        """The server closes a pooled connection while it sits idle (here:
        pg_terminate_backend, as a restart or a demotion does). The next
        write notices before sending anything, so it is retried on a new
        connection and succeeds: not CommitUnknown."""
        cluster = shared_postgres()
        schema = postgres_schema(self, cluster)
        name = "idle-" + schema
        store = PostgresStore(
            [postgres_dsn(cluster.servers["primary"], schema)],
            None,
            run=run_inline,
            clock=Clock(),
            application_name=name,
            pool_size=1,
        )
        self.successResultOf(store.open())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        tenant = self.successResultOf(store.create_tenant("T", "global", created_ms=1, read_preference=PRIMARY)).value
        session = self.successResultOf(
            store.create_anonymous_session(tenant.id, created_ms=1, read_preference=PRIMARY)
        ).value
        thread = self.successResultOf(store.upsert_thread(tenant.id, "u", created_ms=1, read_preference=PRIMARY)).value
        killed = cluster.execute(
            "primary",
            # With a timeout: returns once the backend has exited (its
            # goodbye sent, the connection closed), so the write below meets
            # a connection closed while idle, not one dying mid-flight.
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = '{}'".format(name),
        )
        self.assertTrue(killed)
        new = NewComment(tenant.id, thread.id, session.author_id, "A", "x", "<p>x</p>", CommentStatus.APPROVED, 2)
        written = self.successResultOf(store.create_comment(new, read_preference=PRIMARY))
        self.assertIsNotNone(written.token)
        self.assertEqual(
            self.successResultOf(store.get_thread_by_id(tenant.id, thread.id, read_preference=PRIMARY)).comment_count,
            1,
        )
