"""Tests for :mod:`fastedge.store.postgresql` against real PostgreSQL servers.

The servers come from :func:`fastedge.testing.shared_postgres` (a primary and
three standbys started once per test run). Store calls run inline and time
comes from a ``Clock``, so waits and fallbacks are driven by hand.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.interfaces import IStore
from fastedge.store.metrics import ReplicationMetrics
from fastedge.store.postgresql import PostgresStore
from fastedge.testing import postgres_dsn, postgres_schema, run_inline, shared_postgres

from .contract import StoreContractMixin


class PostgresPrimaryContractTests(StoreContractMixin, SynchronousTestCase):
    """The PostgreSQL store keeps the store contract with no local replica:
    NEAREST reads are served by the primary."""

    def make_store(self) -> IStore:
        cluster = shared_postgres()
        schema = postgres_schema(self, cluster)
        return PostgresStore([postgres_dsn(cluster.servers["primary"], schema)], None, run=run_inline, clock=Clock())


class PostgresStandbyContractTests(StoreContractMixin, SynchronousTestCase):
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
            [postgres_dsn(cluster.servers["primary"], schema, synchronous_commit="remote_apply")],
            postgres_dsn(cluster.servers["sync"], schema),
            run=run_inline,
            clock=Clock(),
            token_wait_seconds=0,
            metrics=self.metrics,
        )
