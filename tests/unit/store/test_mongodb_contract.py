"""The store contract against the MongoDB backend, through the real txmongo
client over loopback sockets.

Both run the one-write suite too (:mod:`.contract_writes`: posts, changes,
expectations), which holds the contract's base suite.

- :class:`MongoFakeContractTests` runs it against :mod:`.mongo_fake`: two
  MockupDB servers (primary and local member) over one mongomock database.
  It checks the backend's commands and routing, not a server's semantics
  (see that module's docstring for what it does not prove).
- :class:`MongoReplicaSetContractTests` runs it against a real replica set
  when ``FASTEDGE_TEST_MONGODB_URI`` (and, for NEAREST reads on a real
  secondary, ``FASTEDGE_TEST_MONGODB_NEAREST_URI``) are set, and is skipped
  with that reason otherwise: the one skip this suite carries. README.md
  says how to start a local replica set for it.

The contract is synchronous (``successResultOf``); txmongo answers only
when the reactor runs, so these classes turn the global reactor until a
Deferred fires (bounded; never a sleep, and nothing is timed).
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.interfaces import IStore
from fastedge.store.mongodb.store import MongoStore

from .contract_writes import WriteContractMixin
from .mongo_fake import ReactorTurningMixin, fresh_database, shared_fake, test_pool


class MongoFakeContractTests(ReactorTurningMixin, WriteContractMixin, SynchronousTestCase):
    """The MongoDB store keeps the store contract, its commands evaluated by
    mongomock behind MockupDB, with NEAREST reads on the secondary."""

    def make_store(self) -> IStore:
        fake = shared_fake()
        fake.reset()
        self.fake = fake
        self.rolled_back_before = len(fake.rolled_back_writes)
        self.addCleanup(self.check_no_rollback)
        return MongoStore(
            fake.uri,
            fake.nearest_uri,
            database=fresh_database("contract"),
            clock=reactor,  # type: ignore[arg-type]
            pool_size=1,
            pool_factory=test_pool,
        )

    def check_no_rollback(self) -> None:
        """The fake cannot undo writes: no transaction that wrote was aborted."""
        self.assertEqual(self.fake.rolled_back_writes[self.rolled_back_before :], [])


class MongoReplicaSetContractTests(ReactorTurningMixin, WriteContractMixin, SynchronousTestCase):
    """The MongoDB store keeps the store contract on a real replica set."""

    uri = os.environ.get("FASTEDGE_TEST_MONGODB_URI", "")
    nearest_uri = os.environ.get("FASTEDGE_TEST_MONGODB_NEAREST_URI", "")
    if not uri:
        skip = (
            "FASTEDGE_TEST_MONGODB_URI is not set: no MongoDB replica set to run the contract against "
            "(README.md, 'MongoDB backend tests')"
        )

    def make_store(self) -> IStore:
        return MongoStore(
            self.uri,
            self.nearest_uri or None,
            database=fresh_database("fastedge_test_{}_".format(os.getpid())),
            clock=reactor,  # type: ignore[arg-type]
            # The contract passes its latest token on every NEAREST read:
            # the secondary waits for it, up to this long.
            token_wait_seconds=5.0,
        )
