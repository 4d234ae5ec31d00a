"""The PostgreSQL store's migrations (frozen SQL text) against a real
server: the schema they build is the one SQLAlchemy's ``create_all`` built
(tests/data/store_schema.json), read back from PostgreSQL's catalog."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store import schema
from fastedge.store.postgresql import PostgresStore
from fastedge.testing.fakes import run_inline
from tests.support.postgres import postgres_dsn, postgres_schema, shared_postgres
from tests.support.sqlschema import describe_postgresql, expected


class PostgresSchemaTests(SynchronousTestCase):
    """Migrations on an empty schema of the test cluster's primary."""

    def setUp(self) -> None:
        cluster = shared_postgres()
        self.cluster = cluster
        self.schema = postgres_schema(self, cluster)
        self.dsn = postgres_dsn(cluster.servers["primary"], self.schema)

    def store(self) -> PostgresStore:
        store = PostgresStore([self.dsn], None, run=run_inline, clock=Clock())
        self.addCleanup(lambda: self.successResultOf(store.close()))
        return store

    def versions(self) -> list[tuple[int, int]]:
        return [
            (version, applied_ms)
            for version, applied_ms in self.cluster.execute(
                "primary",
                "SELECT version, applied_ms FROM {}.schema_version ORDER BY version".format(self.schema),
            )
        ]

    def test_fresh_schema(self) -> None:
        """Opening the store on an empty schema records every version and
        builds the schema SQLAlchemy built: the same columns (types, nulls,
        defaults), constraints, indexes and sequences (``SERIAL`` and
        ``BIGSERIAL`` keys)."""
        store = self.store()
        self.assertIs(self.successResultOf(store.has_schema()), False)
        self.successResultOf(store.open())
        self.assertIs(self.successResultOf(store.has_schema()), True)
        self.assertEqual(self.versions(), [(v, 0) for v in range(1, len(schema.MIGRATIONS) + 1)])
        self.assertEqual(describe_postgresql(self.dsn), expected()["postgresql"])

    def test_has_schema_looks_in_the_search_path(self) -> None:
        """A store whose schema is empty has no schema, even when another
        schema on the same server holds the store's tables."""
        self.successResultOf(self.store().open())
        other = postgres_dsn(self.cluster.servers["primary"], postgres_schema(self, self.cluster))
        elsewhere = PostgresStore([other], None, run=run_inline, clock=Clock())
        self.addCleanup(lambda: self.successResultOf(elsewhere.close()))
        self.assertIs(self.successResultOf(elsewhere.has_schema()), False)

    def test_open_again(self) -> None:
        """A second open (another node, a restart) applies nothing and
        leaves the schema as it was."""
        self.successResultOf(self.store().open())
        self.successResultOf(self.store().open())
        self.assertEqual(self.versions(), [(v, 0) for v in range(1, len(schema.MIGRATIONS) + 1)])
        self.assertEqual(describe_postgresql(self.dsn), expected()["postgresql"])
