"""The store contract against the MongoDB backend, through the real txmongo
client over loopback sockets.

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

import itertools
import os
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.interfaces import IStore
from fastedge.store.mongodb import txmongo_gaps
from fastedge.store.mongodb.store import MongoStore

from .contract import StoreContractMixin
from .mongo_fake import FakeReplicaSet

_T = TypeVar("_T")

#: Reactor turns a Deferred may take to fire before the test gives up.
_MAX_TURNS = 200_000

_databases = itertools.count(1)
_shared_fake: FakeReplicaSet | None = None


def shared_fake() -> FakeReplicaSet:
    """One fake replica set for the whole run (each test uses its own
    database in it): MockupDB takes up to a second to stop."""
    global _shared_fake
    if _shared_fake is None:
        _shared_fake = FakeReplicaSet()
        _shared_fake.start()
    return _shared_fake


def test_pool(uri: str, size: int) -> Any:
    """A txmongo pool that reconnects at once (loopback servers)."""
    return txmongo_gaps.make_pool(uri, pool_size=size, retry_delay=0.01, max_delay=0.05)


class ReactorTurningMixin:
    """``successResultOf`` and friends that first let the reactor run until
    the Deferred has a result."""

    def turn_until_fired(self, d: Deferred[Any]) -> None:
        fired: list[object] = []

        def seen(result: object) -> object:
            fired.append(True)
            return result

        d.addBoth(seen)
        for _ in range(_MAX_TURNS):
            if fired:
                return
            reactor.iterate(0.001)  # type: ignore[attr-defined]
        raise AssertionError("the Deferred did not fire after {} reactor turns".format(_MAX_TURNS))

    def successResultOf(self, d: Deferred[_T]) -> _T:  # noqa: N802 (trial's name)
        self.turn_until_fired(d)
        return super().successResultOf(d)  # type: ignore[misc,no-any-return]

    def failureResultOf(self, d: Deferred[Any], *errors: type[BaseException]) -> Failure:  # noqa: N802
        self.turn_until_fired(d)
        return super().failureResultOf(d, *errors)  # type: ignore[misc,no-any-return]

    def settle(self, d: Deferred[_T]) -> _T | Failure:
        self.turn_until_fired(d)
        return super().settle(d)  # type: ignore[misc,no-any-return]


class MongoFakeContractTests(ReactorTurningMixin, StoreContractMixin, SynchronousTestCase):
    """The MongoDB store keeps the store contract, its commands evaluated by
    mongomock behind MockupDB, with NEAREST reads on the secondary."""

    def make_store(self) -> IStore:
        fake = shared_fake()
        self.fake = fake
        self.rolled_back_before = len(fake.rolled_back_writes)
        self.addCleanup(self.check_no_rollback)
        return MongoStore(
            fake.uri,
            fake.nearest_uri,
            database="contract{}".format(next(_databases)),
            clock=reactor,  # type: ignore[arg-type]
            pool_size=1,
            pool_factory=test_pool,
        )

    def check_no_rollback(self) -> None:
        """The fake cannot undo writes: no transaction that wrote was aborted."""
        self.assertEqual(self.fake.rolled_back_writes[self.rolled_back_before :], [])


class MongoReplicaSetContractTests(ReactorTurningMixin, StoreContractMixin, SynchronousTestCase):
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
            database="fastedge_test_{}_{}".format(os.getpid(), next(_databases)),
            clock=reactor,  # type: ignore[arg-type]
            # The contract passes its latest token on every NEAREST read:
            # the secondary waits for it, up to this long.
            token_wait_seconds=5.0,
        )
