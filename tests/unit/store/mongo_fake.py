"""An in-process stand-in for a MongoDB replica set, for running the store
contract through the real txmongo client over loopback sockets.

Two MockupDB servers speak the wire protocol: one answers as the primary
(``hello`` with ``setName`` and ``hosts``), the other as a secondary, the
node's local member. Both serve one :mod:`mongomock` database, so the member
is never behind. What this proves and what it does not:

- It proves the backend's commands (filters, sorts, updates, aggregation
  pipelines, unique indexes) do what the contract says, *as mongomock
  evaluates them*, and that they travel through txmongo and the wire
  protocol to the member the routing rules name.
- The member refuses reads without a non-primary ``$readPreference`` and
  writes altogether, as a real secondary does.
- It does **not** prove transaction isolation or rollback: commands of a
  transaction apply at once. A transaction that wrote and is then aborted
  is recorded in :attr:`FakeReplicaSet.rolled_back_writes`, which the tests
  check stays empty (the backend checks before it writes, so it never
  relies on a rollback). Real waits for ``afterClusterTime``, elections and
  write concerns need a real replica set (``FASTEDGE_TEST_MONGODB_URI``).
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import mongomock
from bson import Binary, Int64, Timestamp
from mockupdb import MockupDB
from pymongo import ReturnDocument
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from fastedge.store.mongodb import txmongo_gaps

_T = TypeVar("_T")

#: Seconds part of every cluster time the fake issues.
EPOCH = 1_700_000_000


class FakeReplicaSet:
    """A primary and a secondary (MockupDB) over one mongomock database."""

    def __init__(self, set_name: str = "rs0") -> None:
        self.set_name = set_name
        self._client = mongomock.MongoClient()
        self._lock = threading.Lock()
        self._inc = 1
        #: lsid ids of transactions that wrote something, by txnNumber.
        self._wrote: set[tuple[Any, Any]] = set()
        self.rolled_back_writes: list[Any] = []
        #: Documents in a cursor's first batch and in each ``getMore``.
        self.batch_size = 101
        self._cursors: dict[int, list[Any]] = {}
        self._cursor_ids = itertools.count(1000)
        #: Every command each server received (``(server, document)``).
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.primary = MockupDB(auto_ismaster=False)
        self.member = MockupDB(auto_ismaster=False)
        self.primary.autoresponds(self._handler(self.primary))
        self.member.autoresponds(self._handler(self.member))
        #: The server that answers as primary now (``None``: neither).
        self.writable: MockupDB | None = self.primary
        #: Scripted answers: each is called with ``(role, command name,
        #: document, request)`` before the fake runs a command, and returns
        #: True when it answered (or hung up) itself.
        self.intercepts: list[Callable[[str, str, dict[str, Any], Any], bool]] = []

    def reset(self) -> None:
        """Back to the first server as primary, no scripts, an empty log."""
        self.batch_size = 101
        self.writable = self.primary
        self.intercepts.clear()
        self.log.clear()

    def elect(self, server: MockupDB | None) -> None:
        """Make ``server`` the primary (``None``: no primary at all); the
        other answers ``hello`` as a secondary and refuses writes."""
        self.writable = server

    def role(self, server: MockupDB) -> str:
        """``"primary"`` or ``"member"`` (a secondary), as ``server`` answers now."""
        return "primary" if server is self.writable else "member"

    def start(self) -> None:
        self.primary.run()
        self.member.run()

    def stop(self) -> None:
        self.primary.stop()
        self.member.stop()

    @staticmethod
    def address(server: MockupDB) -> str:
        """``127.0.0.1:PORT`` (MockupDB binds IPv4 loopback; an address, not
        ``localhost``, needs no resolver thread, which trial's reactor has
        not started)."""
        return "127.0.0.1:{}".format(server.port)

    @property
    def uri(self) -> str:
        """The replica set's URI (both members, ``replicaSet``)."""
        return "mongodb://{},{}/?replicaSet={}".format(
            self.address(self.primary), self.address(self.member), self.set_name
        )

    @property
    def nearest_uri(self) -> str:
        """The local member's URI."""
        return "mongodb://{}/".format(self.address(self.member))

    # Answers

    def _now(self, advance: bool) -> Timestamp:
        with self._lock:
            if advance:
                self._inc += 1
            return Timestamp(EPOCH, self._inc)

    def _hello(self, role: str, server: MockupDB) -> dict[str, Any]:
        return {
            "ismaster": role == "primary",
            "isWritablePrimary": role == "primary",
            "secondary": role == "member",
            "setName": self.set_name,
            "hosts": [self.address(self.primary), self.address(self.member)],
            "me": self.address(server),
            "minWireVersion": 0,
            "maxWireVersion": 17,
            "logicalSessionTimeoutMinutes": 30,
            "maxBsonObjectSize": 16 * 1024 * 1024,
        }

    def _handler(self, server: MockupDB) -> Callable[[Any], bool]:
        name_of = "primary" if server is self.primary else "member"

        def handle(request: Any) -> bool:
            role = self.role(server)
            name = request.command_name
            doc = {k: v for k, v in request.doc.items()}
            # A copy: mongomock changes what it is given (projections).
            self.log.append((name_of, copy.deepcopy(doc)))
            if name in ("ismaster", "isMaster", "hello"):
                request.replies(self._hello(role, server))
                return True
            for script in list(self.intercepts):
                if script(name_of, name, doc, request):
                    return True
            try:
                reply, wrote = self._execute(role, name, doc)
            except _Refused as e:
                request.replies({"ok": 0, "code": e.code, "errmsg": e.message})
                return True
            at = self._now(wrote)
            reply.setdefault("ok", 1)
            reply["operationTime"] = at
            reply["$clusterTime"] = {"clusterTime": at, "signature": {"hash": Binary(b"\0" * 20), "keyId": 0}}
            request.replies(reply)
            return True

        return handle

    def _execute(self, role: str, name: str, doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        db = self._client[doc.get("$db", "admin")]
        txn = None
        if "txnNumber" in doc and "lsid" in doc:
            txn = (
                bytes(doc["lsid"]["id"].bytes) if hasattr(doc["lsid"]["id"], "bytes") else repr(doc["lsid"]),
                doc["txnNumber"],
            )
        if name in ("ping", "endSessions"):
            return {}, False
        if name == "getMore":
            # On the member holding the cursor, whatever its role.
            return self._get_more(doc), False
        if name in ("find", "aggregate") and role == "member":
            mode = (doc.get("$readPreference") or {}).get("mode", "primary")
            if mode == "primary":
                raise _Refused(13435, "not primary and secondaryOk=false")
        elif role == "member":
            raise _Refused(10107, "not primary")
        if name == "commitTransaction":
            return {}, True
        if name == "abortTransaction":
            if txn in self._wrote:
                self.rolled_back_writes.append(txn)
            return {}, False
        with self._lock:
            return self._run(db, name, doc, txn)

    def _run(self, db: Any, name: str, doc: dict[str, Any], txn: Any) -> tuple[dict[str, Any], bool]:
        coll = db[str(doc[name])] if isinstance(doc.get(name), str) else None
        if name == "find":
            cursor = coll.find(dict(doc.get("filter", {})), doc.get("projection"))
            if doc.get("sort"):
                cursor = cursor.sort(list(doc["sort"].items()))
            if doc.get("limit"):
                cursor = cursor.limit(doc["limit"])
            return self._first_batch(db, coll, list(cursor)), False
        if name == "aggregate":
            return self._first_batch(db, coll, list(coll.aggregate([dict(stage) for stage in doc["pipeline"]]))), False
        if name == "create":
            if doc["create"] in db.list_collection_names():
                raise _Refused(48, "collection already exists")
            db.create_collection(doc["create"])
            return {}, True
        if name == "createIndexes":
            for spec in doc["indexes"]:
                coll.create_index(list(spec["key"].items()), unique=spec.get("unique", False), name=spec["name"])
            return {}, True
        reply = self._write(coll, name, doc)
        if txn is not None and (reply.get("n") or reply.get("value") is not None):
            self._wrote.add(txn)
        return reply, True

    def _first_batch(self, db: Any, coll: Any, docs: list[Any]) -> dict[str, Any]:
        """A cursor reply: at most :attr:`batch_size` documents, the rest
        kept for ``getMore`` (as a server does past its first batch)."""
        ns = "{}.{}".format(db.name, coll.name)
        cursor_id = 0
        if len(docs) > self.batch_size:
            cursor_id = next(self._cursor_ids)
            self._cursors[cursor_id] = docs[self.batch_size :]
            docs = docs[: self.batch_size]
        return {"cursor": {"id": Int64(cursor_id), "ns": ns, "firstBatch": docs}}

    def _get_more(self, doc: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            rest = self._cursors.pop(int(doc["getMore"]), None)
            if rest is None:
                raise _Refused(43, "cursor not found")
            batch, rest = rest[: self.batch_size], rest[self.batch_size :]
            cursor_id = 0
            if rest:
                cursor_id = int(doc["getMore"])
                self._cursors[cursor_id] = rest
        return {"cursor": {"id": Int64(cursor_id), "ns": doc["$db"] + "." + doc["collection"], "nextBatch": batch}}

    def _write(self, coll: Any, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        if name == "insert":
            for i, document in enumerate(doc["documents"]):
                try:
                    coll.insert_one(dict(document))
                except mongomock.DuplicateKeyError as e:
                    return {"n": i, "writeErrors": [{"index": i, "code": 11000, "errmsg": str(e)}]}
            return {"n": len(doc["documents"])}
        if name == "update":
            n = 0
            for u in doc["updates"]:
                if u.get("multi"):
                    result = coll.update_many(dict(u["q"]), dict(u["u"]), upsert=u.get("upsert", False))
                else:
                    result = coll.update_one(dict(u["q"]), dict(u["u"]), upsert=u.get("upsert", False))
                n += result.matched_count + (1 if result.upserted_id is not None else 0)
            return {"n": n, "nModified": n}
        if name == "delete":
            n = 0
            for d in doc["deletes"]:
                if d.get("limit") == 1:
                    n += coll.delete_one(dict(d["q"])).deleted_count
                else:
                    n += coll.delete_many(dict(d["q"])).deleted_count
            return {"n": n}
        if name == "findAndModify":
            value = coll.find_one_and_update(
                dict(doc["query"]),
                dict(doc["update"]),
                upsert=doc.get("upsert", False),
                return_document=ReturnDocument.AFTER if doc.get("new") else ReturnDocument.BEFORE,
            )
            return {"value": value}
        raise _Refused(59, "no such command: {}".format(name))


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: Reactor turns a Deferred may take to fire before the test gives up.
_MAX_TURNS = 200_000

_databases = itertools.count(1)
_shared_fake: FakeReplicaSet | None = None


def fresh_database(prefix: str) -> str:
    """A database name no other test of this run uses."""
    return "{}{}".format(prefix, next(_databases))


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
    the Deferred has a result.

    :ivar turning_clock: the store's ``Clock``, if it has one: moved on by
        ``clock_step`` every 50 turns, so retry pauses and time limits
        on it pass while the loopback I/O runs on the reactor.
    """

    turning_clock: Clock | None = None
    clock_step = 0.25

    def turn_until_fired(self, d: Deferred[Any]) -> None:
        fired: list[object] = []

        def seen(result: object) -> object:
            fired.append(True)
            return result

        d.addBoth(seen)
        for turn in range(_MAX_TURNS):
            if fired:
                return
            reactor.iterate(0.001)  # type: ignore[attr-defined]
            if self.turning_clock is not None and turn % 50 == 49:
                self.turning_clock.advance(self.clock_step)
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
