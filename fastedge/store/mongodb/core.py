# -*- test-case-name: tests.unit.store.test_mongodb_wire -*-
"""Where each MongoDB command runs: routing, tokens, waits, failover.

:class:`MongoCore` holds two txmongo pools and decides, per store call,
which one serves it; :mod:`.store` writes the commands themselves against
the :class:`Reader` and :class:`Tx` handed to it.

- **Routing.** Writes and PRIMARY reads go to the PRIMARY pool (the replica
  set URI; txmongo follows the primary through elections). NEAREST reads go
  to the NEAREST pool, pointed at this node's local member, every read
  carrying ``$readPreference: {mode: "nearest"}`` (the OP_MSG form of
  slave-ok); without a local member they go to the primary.
- **Writes** are one multi-document transaction on a session, committed
  with the configured write concern (``w: "majority"`` and ``wtimeout``
  by default). The commit's ``operationTime`` is the write's consistency
  token (:mod:`.tokens`).
- **Read-your-writes.** A NEAREST read holding a token sends
  ``readConcern: {level: "local", afterClusterTime: T}`` with ``maxTimeMS``
  = ``token_wait_seconds``: the member itself waits until it has applied
  the token's cluster time. If it has not by then (``MaxTimeMSExpired``),
  the read goes to the primary, counted as in the PostgreSQL backend
  (``token_reads{outcome="fallback"}``,
  ``nearest_fallbacks{reason="token_timeout"}``); for the next
  ``token_wait_seconds`` reads needing that time or later ask the member
  once (``maxTimeMS: 1``) and go on to the primary without waiting again
  (``reason="replica_behind"``). A member that fails or does not answer
  within ``nearest_timeout_seconds`` sends the read to the primary
  (``reason="replica_error"``).
- **Failover.** "Not primary", "node is recovering", a broken connection
  or no answer are retried every ``retry_pause_seconds`` until
  ``failover_seconds`` have passed: every read, and every write whose
  commit was never sent (an uncommitted transaction is never applied), and
  transactions the server calls transient. A commit that fails that way is
  sent once more (same session and ``txnNumber``: the server applies it at
  most once); if that fails too the write is
  :class:`~fastedge.store.errors.CommitUnknown`, never a success.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure, PyMongoError, WriteConcernError
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txmongo.connection import ConnectionPool

from ..errors import BadToken, CommitUnknown, StoreClosed, StoreUnavailable, WrongReadPreference
from ..metrics import ReplicationMetrics
from ..model import ReadPreference, Written
from . import txmongo_gaps as gaps
from .tokens import covers, format_token, parse_token
from .uri import redact_uri

_T = TypeVar("_T")

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST

#: Statement-level observer: ``(operation, read_preference, seconds)``.
Observer = Callable[[str, ReadPreference, float], None]

#: Makes a pool for a URI (tests pass one with short reconnect delays).
PoolFactory = Callable[[str, int], ConnectionPool]

Document = dict[str, Any]


class _NotYet(Exception):
    """The local member had not reached the read's token in time."""


class _MemberLost(StoreUnavailable):
    """The local member failed or did not answer."""


class _PrimaryLost(StoreUnavailable):
    """The primary could not be used (not primary, recovering, broken
    connection, no answer); nothing of the operation was committed."""


class _Transient(StoreUnavailable):
    """The server aborted the transaction as transient (a write conflict,
    an election); nothing was committed and it may run again."""


class MigrationBusy(StoreUnavailable):
    """Another node holds the migration lock: waited for like a failover."""


def _default_pool(uri: str, size: int) -> ConnectionPool:
    return gaps.make_pool(uri, pool_size=size)


class Reader:
    """The read commands of one store call, all on one member."""

    def __init__(self, core: MongoCore, pool: ConnectionPool, extra: Mapping[str, Any], session: Any):
        self._core = core
        self._pool = pool
        self._extra = dict(extra)
        self._session = session

    async def find(
        self,
        collection: str,
        filter: Mapping[str, Any],
        *,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
        projection: Mapping[str, Any] | None = None,
    ) -> list[Document]:
        """``find`` with this call's read preference, read concern and time limit."""
        body: Document = {"find": collection, "filter": dict(filter)}
        if sort:
            body["sort"] = gaps.sort_spec(sort)
        if limit:
            body["limit"] = limit
        if projection is not None:
            body["projection"] = dict(projection)
        return await gaps.read_all(self._pool, self._core.database, body, session=self._session, extra=self._extra)

    async def find_one(
        self, collection: str, filter: Mapping[str, Any], *, projection: Mapping[str, Any] | None = None
    ) -> Document | None:
        found = await self.find(collection, filter, limit=1, projection=projection)
        return found[0] if found else None

    async def aggregate(self, collection: str, pipeline: Sequence[Mapping[str, Any]]) -> list[Document]:
        """``aggregate`` as a command, with the same fields as :meth:`find`
        (txmongo's ``aggregate`` takes no read preference)."""
        body: Document = {"aggregate": collection, "pipeline": [dict(stage) for stage in pipeline], "cursor": {}}
        return await gaps.read_all(self._pool, self._core.database, body, session=self._session, extra=self._extra)


class Tx(Reader):
    """The commands of one write: a transaction on the primary.

    Reads in it see the transaction's own writes; nothing is visible to
    anyone else, or applied at all, until :func:`~.txmongo_gaps.commit`.
    """

    def __init__(self, core: MongoCore, pool: ConnectionPool, session: Any):
        # In a transaction only its first command may carry a read concern,
        # and the read preference must be primary: none is sent.
        super().__init__(core, pool, {}, session)

    async def _write(self, body: Document) -> Document:
        return await gaps.write(self._pool, self._core.database, body, session=self._session)

    async def insert(self, collection: str, documents: Sequence[Mapping[str, Any]]) -> None:
        if documents:
            await self._write({"insert": collection, "documents": [dict(d) for d in documents], "ordered": True})

    async def update(
        self,
        collection: str,
        filter: Mapping[str, Any],
        update: Mapping[str, Any],
        *,
        multi: bool = False,
        upsert: bool = False,
    ) -> int:
        """:returns: how many documents matched."""
        reply = await self._write(
            {
                "update": collection,
                "updates": [{"q": dict(filter), "u": dict(update), "multi": multi, "upsert": upsert}],
                "ordered": True,
            }
        )
        return int(reply.get("n", 0))

    async def delete(self, collection: str, filter: Mapping[str, Any], *, multi: bool = True) -> int:
        """:returns: how many documents went."""
        reply = await self._write(
            {"delete": collection, "deletes": [{"q": dict(filter), "limit": 0 if multi else 1}], "ordered": True}
        )
        return int(reply.get("n", 0))

    async def find_and_modify(
        self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any], *, upsert: bool = False
    ) -> Document | None:
        """Update one document and return it as it is after the update."""
        reply = await self._write(
            {"findAndModify": collection, "query": dict(filter), "update": dict(update), "new": True, "upsert": upsert}
        )
        value: Document | None = reply.get("value")
        return value


@dataclass
class _WriteState:
    commit_sent: bool = False
    #: The reply of a commit that succeeded.
    committed: Document | None = None


class MongoCore:
    """Pools, routing, tokens and failover of the MongoDB backend.

    :param uri: the replica set (writes and PRIMARY reads).
    :param nearest_uri: this node's local member, or ``None`` to read
        NEAREST from the primary.
    :param clock: times waits, retries and timeouts (the reactor).
    :param pool_factory: makes a txmongo pool (tests shorten its delays).
    """

    backend = "mongodb"
    _log = Logger()

    def __init__(
        self,
        uri: str,
        nearest_uri: str | None,
        *,
        database: str,
        clock: IReactorTime,
        write_concern: str = "majority",
        write_concern_timeout_seconds: float = 5.0,
        token_wait_seconds: float = 0.5,
        failover_seconds: float = 10.0,
        nearest_timeout_seconds: float = 3.0,
        operation_timeout_seconds: float = 30.0,
        retry_pause_seconds: float = 0.25,
        pool_size: int = 4,
        observe: Observer | None = None,
        metrics: ReplicationMetrics | None = None,
        pool_factory: PoolFactory = _default_pool,
    ) -> None:
        self.database = database
        self._uri = uri
        self._nearest_uri = gaps.nearest_pool_uri(nearest_uri) if nearest_uri else None
        self._clock = clock
        w: int | str = int(write_concern) if write_concern.isdigit() else write_concern
        self._write_concern: Document = {"w": w, "wtimeout": int(write_concern_timeout_seconds * 1000)}
        self._wc_seconds = write_concern_timeout_seconds
        self._token_wait = token_wait_seconds
        self._failover_seconds = failover_seconds
        self._nearest_timeout = nearest_timeout_seconds
        self._op_timeout_ms = int(operation_timeout_seconds * 1000)
        self._retry_pause = retry_pause_seconds
        self._pool_size = pool_size
        self._observe = observe
        self._metrics = metrics
        self._pool_factory = pool_factory
        self.primary_name = redact_uri(uri)
        self.nearest_name = redact_uri(nearest_uri) if nearest_uri else None
        # Pools connect as they are made: made in open(), never here.
        self._primary: ConnectionPool | None = None
        self._nearest: ConnectionPool | None = None
        self._closed = False
        #: After a token wait timed out: (the cluster time the member
        #: lacked, until when reads needing it or later do not wait again).
        self._stalled: tuple[Timestamp, float] | None = None

    # Pools

    def _connect(self) -> None:
        if self._primary is None:
            self._primary = self._pool_factory(self._uri, self._pool_size)
        if self._nearest is None and self._nearest_uri is not None:
            self._nearest = self._pool_factory(self._nearest_uri, self._pool_size)

    def _disconnect(self) -> Deferred[None]:
        self._closed = True
        pools = [p for p in (self._primary, self._nearest) if p is not None]
        self._primary = self._nearest = None
        d: Deferred[Any] = Deferred()
        pending = [len(pools)]
        if not pools:
            d.callback(None)
            return d

        def one_done(_: object) -> None:
            pending[0] -= 1
            if pending[0] == 0:
                d.callback(None)

        for pool in pools:
            pool.disconnect().addBoth(one_done)
        return d

    def _pool(self, primary: bool) -> ConnectionPool:
        if self._closed:
            # As every backend after its stop: at once, never retried.
            raise StoreClosed("the store is closed: the node is stopping")
        self._connect()
        pool = self._primary if primary or self._nearest is None else self._nearest
        assert pool is not None
        return pool

    # Tokens

    def token_covers(self, have: str | None, want: str | None) -> bool:
        """Cluster times: ``have`` covers ``want`` when it is at or after it."""
        return covers(have, want)

    # Running a read

    def _timed(self, operation: str, label: ReadPreference, d: Deferred[_T]) -> Deferred[_T]:
        observe = self._observe
        if observe is None:
            return d
        started = self._clock.seconds()

        def done(result: Any) -> Any:
            observe(operation, label, self._clock.seconds() - started)
            return result

        return d.addBoth(done)

    def _read(
        self,
        operation: str,
        read_preference: ReadPreference,
        token: str | None,
        fn: Callable[[Reader], Awaitable[_T]],
    ) -> Deferred[_T]:
        """Run the read ``fn`` where ``read_preference`` and ``token`` say."""
        after = None
        if token is not None:
            try:
                after = parse_token(token)
            except BadToken:
                return fail()
        if read_preference is NEAREST and self._nearest_uri is not None and not self._closed:
            if after is not None:
                return self._read_at(operation, fn, after)
            return self._read_nearest(operation, fn)
        return self._on_primary(operation, read_preference, lambda: self._read_once(fn, primary=True, after=None))

    async def _read_once(
        self, fn: Callable[[Reader], Awaitable[_T]], *, primary: bool, after: Timestamp | None, max_time_ms: int = 0
    ) -> _T:
        pool = self._pool(primary)
        mode = "primary" if primary else "nearest"
        extra: Document = {"$readPreference": gaps.read_preference(mode)}
        concern = gaps.read_concern(after)
        if concern is not None:
            extra["readConcern"] = concern
        limit = max_time_ms or self._op_timeout_ms
        if limit:
            extra["maxTimeMS"] = limit
        session = pool.start_session()
        if after is not None and not primary and self._primary is not None:
            gaps.gossip(session, self._primary)
        try:
            return await fn(Reader(self, pool, extra, session))
        finally:
            await session.end_session()

    def _nearest_attempt(self, operation: str, fn: Callable[[Reader], Awaitable[_T]], **kw: Any) -> Deferred[_T]:
        bound = self._nearest_timeout + kw.get("max_time_ms", 0) / 1000.0
        d = gaps.bounded(self._clock, bound, self._read_once(fn, primary=False, **kw))

        def classify(f: Failure) -> Failure:
            if gaps.is_not_yet(f.value):
                return Failure(_NotYet())
            if gaps.is_unreachable(f.value) or isinstance(f.value, (StoreUnavailable, PyMongoError)):
                return Failure(_MemberLost("the local member failed: {}".format(gaps.describe(f.value))))
            return f

        return self._timed(operation, NEAREST, d.addErrback(classify))

    def _read_nearest(self, operation: str, fn: Callable[[Reader], Awaitable[_T]]) -> Deferred[_T]:
        """A NEAREST read without a token: the local member, else the primary."""
        d = self._nearest_attempt(operation, fn, after=None)

        def failed(f: Failure) -> Any:
            if f.check(_MemberLost):
                return self._member_failed(operation, fn, f)
            return f

        return d.addErrback(failed)

    def _member_failed(self, operation: str, fn: Callable[[Reader], Awaitable[_T]], f: Failure) -> Deferred[_T]:
        self._log.warn(
            "local member {member} failed ({reason}); reading {operation} from the primary",
            member=self.nearest_name,
            reason=gaps.describe(f.value),
            operation=operation,
        )
        if self._metrics is not None:
            self._metrics.fallback("replica_error")
        return self._on_primary(operation, PRIMARY, lambda: self._read_once(fn, primary=True, after=None))

    def _read_at(self, operation: str, fn: Callable[[Reader], Awaitable[_T]], after: Timestamp) -> Deferred[_T]:
        """A NEAREST read that must see cluster time ``after``: the member
        waits for it (``maxTimeMS``), else the primary serves it."""
        clock = self._clock
        started = clock.seconds()
        metrics = self._metrics
        stalled = self._stalled
        known_behind = stalled is not None and started < stalled[1] and after >= stalled[0]
        # maxTimeMS 0 would mean "no limit": 1 ms is "do not wait".
        wait_ms = 1 if known_behind else max(1, int(self._token_wait * 1000))
        if metrics is not None:
            metrics.token_waiting.labels(self.backend).inc()
        d = self._nearest_attempt(operation, fn, after=after, max_time_ms=wait_ms)

        def served(value: _T) -> _T:
            if metrics is not None:
                metrics.token_waiting.labels(self.backend).dec()
                metrics.token_read("ready", clock.seconds() - started)
            return value

        def not_served(f: Failure) -> Any:
            if metrics is not None:
                metrics.token_waiting.labels(self.backend).dec()
            if f.check(_MemberLost):
                return self._member_failed(operation, fn, f)
            if not f.check(_NotYet):
                return f
            now = clock.seconds()
            if not known_behind:
                self._stalled = (after, now + self._token_wait)
            if metrics is not None:
                metrics.token_read("fallback", now - started)
                metrics.fallback("replica_behind" if known_behind else "token_timeout")
            return self._on_primary(operation, PRIMARY, lambda: self._read_once(fn, primary=True, after=None))

        return d.addCallbacks(served, not_served)

    # Running a write

    def _write(
        self, operation: str, read_preference: ReadPreference, fn: Callable[[Tx], Awaitable[_T]]
    ) -> Deferred[Written[_T]]:
        """Run ``fn`` as one transaction on the primary; its token is the
        commit's cluster time."""
        if read_preference is not PRIMARY:
            return fail(WrongReadPreference("writes go to the primary; read_preference must be PRIMARY"))
        return self._on_primary(operation, PRIMARY, lambda: self._write_once(operation, fn), write=True)

    async def _write_once(self, operation: str, fn: Callable[[Tx], Awaitable[_T]]) -> Written[_T]:
        pool = self._pool(True)
        session = pool.start_session()
        state = _WriteState()
        try:
            gaps.start_transaction(session)
            try:
                value = await fn(Tx(self, pool, session))
            except OperationFailure as e:
                if "TransientTransactionError" in gaps.labels(e):
                    raise _Transient("the server aborted the transaction: {}".format(gaps.describe(e))) from e
                if gaps.is_unreachable(e):
                    raise _PrimaryLost("the primary failed: {}".format(gaps.describe(e))) from e
                raise
            except PyMongoError as e:
                if gaps.is_unreachable(e):
                    raise _PrimaryLost("the primary failed: {}".format(gaps.describe(e))) from e
                raise
            state.commit_sent = True
            reply = await self._commit(operation, pool, session)
            state.committed = reply
        finally:
            self._end(session, state)
        at = gaps.operation_time(reply)
        if at is None:
            raise StoreUnavailable("the commit's reply carries no operationTime (not a replica set?)")
        return Written(value, format_token(at))

    async def _commit(self, operation: str, pool: ConnectionPool, session: Any) -> Document:
        """Commit, and once more if the first answer leaves the outcome
        unknown; :class:`CommitUnknown` if the second does too."""
        first: BaseException
        try:
            return await gaps.commit(pool, session, self._write_concern)
        except CancelledError as e:
            # The call's time ran out with the commit in flight.
            raise CommitUnknown("no answer to the commit in time: the write may or may not have been applied") from e
        except OperationFailure as e:
            if "TransientTransactionError" in gaps.labels(e) and not isinstance(e, WriteConcernError):
                # The server says the transaction was aborted: not applied.
                raise _Transient("the commit was refused as transient: {}".format(gaps.describe(e))) from e
            if not (gaps.is_unreachable(e) or isinstance(e, WriteConcernError) or gaps.labels(e)):
                raise
            first = e
        except PyMongoError as e:
            first = e
        self._log.warn(
            "{operation}: the commit's outcome is unknown ({reason}); sending it again",
            operation=operation,
            reason=gaps.describe(first),
        )
        try:
            return await gaps.commit(pool, session, self._write_concern)
        except (Exception, CancelledError) as e:
            raise CommitUnknown(
                "the primary failed during the commit ({}): the write may or may not have been applied".format(
                    type(e).__name__
                )
            ) from e

    def _end(self, session: Any, state: _WriteState) -> None:
        """End ``session``; an open transaction is aborted without waiting
        (the primary may be gone; the server ends it in any case)."""
        log = self._log

        def abort_failed(f: Failure) -> None:
            # Expected when the primary is gone: the server ends the
            # transaction itself (transactionLifetimeLimitSeconds).
            log.info("aborting a transaction failed: {reason}", reason=gaps.describe(f.value))

        def end_failed(f: Failure) -> None:
            log.failure("ending a session failed", f)

        if state.committed is None and session.in_transaction():
            gaps.bounded(self._clock, self._wc_seconds, session.end_session()).addErrback(abort_failed)
            return
        ensureDeferred(session.end_session()).addErrback(end_failed)

    # Failover

    def _on_primary(
        self,
        operation: str,
        read_preference: ReadPreference,
        make: Callable[[], Awaitable[_T]],
        *,
        write: bool = False,
    ) -> Deferred[_T]:
        """Run ``make()`` on the primary, retrying through an election."""
        clock = self._clock
        deadline = clock.seconds() + self._failover_seconds
        result: Deferred[_T] = Deferred()

        def attempt() -> None:
            remaining = deadline - clock.seconds()
            bound = max(remaining, self._wc_seconds + self._nearest_timeout)
            try:
                coroutine = make()
            except Exception:
                result.errback()
                return
            d = gaps.bounded(clock, bound, coroutine)
            self._timed(operation, read_preference, d).addCallbacks(result.callback, failed)

        def failed(f: Failure) -> None:
            if f.check(CommitUnknown):
                if self._metrics is not None:
                    self._metrics.write_failed("commit_unknown")
                self._log.error(
                    "{operation}: the primary failed during the commit; reported to the caller as unknown",
                    operation=operation,
                )
                result.errback(f)
                return
            retry = f.check(_PrimaryLost, _Transient, MigrationBusy) or (
                not f.check(StoreUnavailable) and gaps.is_unreachable(f.value) and not write
            )
            if write and f.check(gaps.CallTimedOut):
                # Cancelled before the commit was sent (a sent commit is
                # reported as CommitUnknown by _commit): not applied.
                retry = True
            if not retry:
                if f.check(StoreUnavailable) and write and not f.check(CommitUnknown):
                    if self._metrics is not None:
                        self._metrics.write_failed("not_applied")
                result.errback(f)
                return
            if clock.seconds() >= deadline:
                if write and self._metrics is not None:
                    self._metrics.write_failed("not_applied")
                what = "the write was not applied" if write else "the read was not served"
                result.errback(
                    StoreUnavailable(
                        "no usable primary of {} after {} s ({}); {}".format(
                            self.primary_name, self._failover_seconds, gaps.describe(f.value), what
                        )
                    )
                )
                return
            self._log.info(
                "{operation}: the primary is not usable ({reason}); retrying",
                operation=operation,
                reason=gaps.describe(f.value),
            )
            clock.callLater(self._retry_pause, attempt)

        attempt()
        return result
