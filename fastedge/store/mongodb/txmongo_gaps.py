# -*- test-case-name: tests.unit.store.test_mongodb_wire -*-
"""THE ONE PLACE where the MongoDB backend works around txmongo.

Everything the store sends to MongoDB goes through this module, as a raw
command over :meth:`txmongo.connection.ConnectionPool.command` (txmongo
still adds the session id, the transaction fields and the ``$clusterTime``
gossip). The rest of :mod:`fastedge.store.mongodb` never touches txmongo.
What txmongo (26.x) lacks, and what is done here instead:

1. **Read preference per call.** txmongo takes ``readPreference`` from the
   connection URI only, and its ``find`` turns the legacy ``QUERY_SLAVE_OK``
   flag into ``$readPreference: secondaryPreferred``; ``aggregate``,
   ``count`` and ``distinct`` have no such flag at all. Every read here is a
   command carrying its own ``$readPreference`` (``primary`` or ``nearest``):
   in OP_MSG, the only wire protocol txmongo 26 speaks, that field *is* the
   slave-ok bit (a secondary refuses a command without a non-primary mode).
   The NEAREST pool's URI gets ``readPreference=nearest``, the only way to
   make txmongo keep a connection to a member that is not the primary
   (:func:`nearest_pool_uri`).
2. **Read concern and time limits.** No txmongo read takes ``readConcern``
   or ``maxTimeMS`` (``find`` has neither): a read holding a consistency
   token sends ``readConcern: {level: "local", afterClusterTime: T}`` and
   ``maxTimeMS``, and the NEAREST session is first given the primary
   pool's ``$clusterTime`` (:func:`gossip`), so the member's clock knows
   the token's time.
3. **Cursors in a session.** txmongo's ``aggregate`` sends its ``getMore``
   without the session that opened the cursor (a real server refuses it):
   :func:`read_all` drains every cursor with the same session.
4. **The commit's ``operationTime``.** ``ClientSession.commit_transaction``
   returns nothing, and the token is the commit's ``operationTime``:
   :func:`commit` sends ``commitTransaction`` itself and then marks the
   txmongo session committed (``ClientSession._txn_state``, a private
   attribute: hence txmongo's upper bound in ``setup.cfg``).
5. **Write results.** Raw write commands answer ``ok: 1`` with
   ``writeErrors`` and ``writeConcernError`` inside: :func:`write` raises
   them (a duplicate key as ``DuplicateKeyError``).
6. **Timeouts on our clock.** txmongo's own ``timeout=`` reads
   ``time.time()`` and the global reactor; :func:`bounded` cancels a call
   on the store's clock instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from bson.timestamp import Timestamp
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    WriteConcernError,
    WriteError,
    WTimeoutError,
)
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from txmongo.connection import ConnectionPool
from txmongo.errors import TimeExceeded
from txmongo.sessions import ClientSession, TxnState

from ..errors import StoreError
from .uri import with_options

_T = TypeVar("_T")

Document = dict[str, Any]

#: Server error codes meaning "this member cannot serve this now": not
#: primary, node is recovering or shutting down (the SDAM spec's lists).
NOT_PRIMARY_CODES = frozenset({10058, 10107, 13435, 11602, 13436, 189, 91, 11600})

#: ``MaxTimeMSExpired``: a read's ``maxTimeMS`` ran out (for a token read on
#: the local member: it had not reached the token's cluster time).
MAX_TIME_EXPIRED = 50

#: ``InvalidOptions``: among others, "afterClusterTime value must not be
#: greater than the current clusterTime" (the member has not heard of it).
INVALID_OPTIONS = 72


class CallTimedOut(ConnectionFailure):
    """A call was cancelled on the store's clock before it answered."""


def nearest_pool_uri(uri: str) -> str:
    """The local member's URI as the NEAREST pool needs it: with
    ``readPreference=nearest`` txmongo skips its "is this the primary"
    check and keeps the connection to a secondary."""
    return with_options(uri, readPreference="nearest")


def make_pool(uri: str, *, pool_size: int, retry_delay: float = 1.0, max_delay: float = 5.0) -> ConnectionPool:
    """A txmongo pool; it connects at once (call only when opening the store)."""
    return ConnectionPool(uri, pool_size=pool_size, retry_delay=retry_delay, max_delay=max_delay)


def read_preference(mode: str) -> Document:
    """The ``$readPreference`` field of a read: ``primary`` or ``nearest``."""
    return {"mode": mode}


def read_concern(after: Timestamp | None) -> Document | None:
    """The ``readConcern`` of a read holding a token (``None``: no token)."""
    if after is None:
        return None
    return {"level": "local", "afterClusterTime": after}


def gossip(session: ClientSession, source: ConnectionPool) -> None:
    """Give ``session`` the newest ``$clusterTime`` ``source`` has seen (a
    signed document the member accepts), so a member that has not yet heard
    of a token's time does not refuse ``afterClusterTime`` outright."""
    cluster_time = source.cluster_time
    if cluster_time is not None:
        session.advance_cluster_time(cluster_time)


async def command(
    pool: ConnectionPool, database: str, body: Document, *, session: ClientSession | None = None
) -> Document:
    """One command; ``OperationFailure`` (or ``NotPrimaryError``) for ``ok: 0``.

    :returns: the whole reply, ``operationTime`` and ``$clusterTime`` included.
    """
    reply: Document = await pool.command(database, dict(body), session=session)
    return reply


async def read_all(
    pool: ConnectionPool, database: str, body: Document, *, session: ClientSession, extra: Mapping[str, Any]
) -> list[Document]:
    """Run a cursor command (``find``/``aggregate``) with ``extra`` fields
    (read preference, read concern, time limit) and drain its cursor with
    ``getMore`` in the same session."""
    first = dict(body)
    first.update(extra)
    reply = await command(pool, database, first, session=session)
    cursor = reply["cursor"]
    docs: list[Document] = list(cursor.get("firstBatch", ()))
    collection = cursor["ns"].split(".", 1)[1] if "ns" in cursor else str(next(iter(body.values())))
    cursor_id = cursor.get("id", 0)
    while cursor_id:
        # Nothing else: a getMore goes to the member that holds the cursor,
        # takes no read concern, and maxTimeMS only for awaitData cursors.
        more: Document = {"getMore": cursor_id, "collection": collection}
        reply = await command(pool, database, more, session=session)
        cursor = reply["cursor"]
        docs.extend(cursor.get("nextBatch", ()))
        cursor_id = cursor.get("id", 0)
    return docs


def check_write(reply: Document) -> Document:
    """Raise what a write command's reply says went wrong.

    :raises DuplicateKeyError: a unique index refused the write.
    :raises WriteError: any other write error.
    :raises WriteConcernError: the write concern was not satisfied
        (``WTimeoutError`` when it timed out).
    """
    errors = reply.get("writeErrors")
    if errors:
        error = errors[-1]
        if error.get("code") in (11000, 11001, 12582):
            raise DuplicateKeyError(error.get("errmsg", "duplicate key"), 11000, error)
        raise WriteError(error.get("errmsg", "write error"), error.get("code"), error)
    concern = reply.get("writeConcernError")
    if concern:
        if concern.get("errInfo", {}).get("wtimeout"):
            raise WTimeoutError(concern.get("errmsg"), concern.get("code"), concern)
        raise WriteConcernError(concern.get("errmsg"), concern.get("code"), concern)
    return reply


async def write(pool: ConnectionPool, database: str, body: Document, *, session: ClientSession) -> Document:
    """A write command (``insert``, ``update``, ``delete``,
    ``findAndModify``) in ``session``'s transaction; write errors raised."""
    return check_write(await command(pool, database, body, session=session))


async def commit(pool: ConnectionPool, session: ClientSession, write_concern: Document) -> Document:
    """Commit ``session``'s transaction and return the reply (whose
    ``operationTime`` is the commit's cluster time).

    Sent by hand because ``ClientSession.commit_transaction`` returns no
    reply; afterwards the txmongo session is told it committed, so ending it
    does not send ``abortTransaction``. Retrying the same commit (same
    session and ``txnNumber``) is safe: the server applies it once.
    """
    reply = check_write(
        await command(pool, "admin", {"commitTransaction": 1, "writeConcern": dict(write_concern)}, session=session)
    )
    session._txn_state = TxnState.COMMITTED
    return reply


def start_transaction(session: ClientSession) -> None:
    """Start a transaction: its first command carries ``startTransaction``
    (txmongo adds ``txnNumber`` and ``autocommit: false`` to each)."""
    session.start_transaction()


def operation_time(reply: Document) -> Timestamp | None:
    """The ``operationTime`` of a reply, if the server sent one."""
    value = reply.get("operationTime")
    return value if isinstance(value, Timestamp) else None


def labels(error: BaseException) -> frozenset[str]:
    """The server's error labels on ``error`` (``RetryableWriteError``,
    ``TransientTransactionError``, ``UnknownTransactionCommitResult``)."""
    details = getattr(error, "details", None) or {}
    found = set(details.get("errorLabels", ()) if isinstance(details, Mapping) else ())
    has = getattr(error, "has_error_label", None)
    if has is not None:
        for label in ("RetryableWriteError", "TransientTransactionError", "UnknownTransactionCommitResult"):
            if has(label):
                found.add(label)
    return frozenset(found)


def describe(error: BaseException) -> str:
    """``error`` fit for a log line or a message that may reach a client:
    its type and the server's code and code name, never its text (txmongo
    quotes the whole command, documents and all, in its messages: a comment,
    an SSO secret, a key hash)."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    name = details.get("codeName") if isinstance(details, Mapping) else None
    if isinstance(error, StoreError):
        # Ours: written without any command in them.
        return "{}: {}".format(type(error).__name__, error)
    if code is None:
        return type(error).__name__
    return "{} (code {}{})".format(type(error).__name__, code, ", " + name if name else "")


def is_unreachable(error: BaseException) -> bool:
    """The member broke the connection, could not be reached in time, or
    said it is not primary / recovering / shutting down."""
    if isinstance(error, (ConnectionFailure, AutoReconnect, TimeExceeded, CancelledError)):
        return True
    return isinstance(error, OperationFailure) and error.code in NOT_PRIMARY_CODES


def is_not_yet(error: BaseException) -> bool:
    """A token read the member could not serve in time (it is behind)."""
    return isinstance(error, OperationFailure) and error.code in (MAX_TIME_EXPIRED, INVALID_OPTIONS)


def bounded(clock: IReactorTime, seconds: float, coroutine: Any) -> Deferred[Any]:
    """Run ``coroutine``, cancelled after ``seconds`` on ``clock``; a
    cancelled call fails with :class:`CallTimedOut`."""
    d: Deferred[Any] = ensureDeferred(coroutine)
    if d.called:
        return d
    timer = clock.callLater(max(0.0, seconds), d.cancel)

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        elif isinstance(getattr(result, "value", None), CancelledError):
            raise CallTimedOut("no answer within {:.3f} s".format(seconds))
        return result

    d.addBoth(done)
    return d


def sort_spec(keys: Sequence[tuple[str, int]]) -> Document:
    """A sort document in the given key order (dicts keep insertion order,
    and BSON keeps it on the wire)."""
    return dict(keys)
