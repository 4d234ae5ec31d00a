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

import threading
from collections.abc import Callable
from typing import Any

import mongomock
from bson import Binary, Timestamp
from mockupdb import MockupDB
from pymongo import ReturnDocument

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
        #: Every command each server received (``(server, document)``).
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.primary = MockupDB(auto_ismaster=False)
        self.member = MockupDB(auto_ismaster=False)
        self.primary.autoresponds(self._handler("primary"))
        self.member.autoresponds(self._handler("member"))

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

    def _hello(self, role: str) -> dict[str, Any]:
        return {
            "ismaster": role == "primary",
            "isWritablePrimary": role == "primary",
            "secondary": role == "member",
            "setName": self.set_name,
            "hosts": [self.address(self.primary), self.address(self.member)],
            "me": self.address(self.primary if role == "primary" else self.member),
            "minWireVersion": 0,
            "maxWireVersion": 17,
            "logicalSessionTimeoutMinutes": 30,
            "maxBsonObjectSize": 16 * 1024 * 1024,
        }

    def _handler(self, role: str) -> Callable[[Any], bool]:
        def handle(request: Any) -> bool:
            name = request.command_name
            doc = {k: v for k, v in request.doc.items()}
            self.log.append((role, doc))
            if name in ("ismaster", "isMaster", "hello"):
                request.replies(self._hello(role))
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
        if name in ("find", "aggregate", "getMore") and role == "member":
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
            return {"cursor": {"id": 0, "ns": "{}.{}".format(db.name, coll.name), "firstBatch": list(cursor)}}, False
        if name == "aggregate":
            docs = list(coll.aggregate([dict(stage) for stage in doc["pipeline"]]))
            return {"cursor": {"id": 0, "ns": "{}.{}".format(db.name, coll.name), "firstBatch": docs}}, False
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
