# -*- test-case-name: tests.integration.test_postgresql_store -*-
"""Routing and consistency tokens: :class:`PostgresStore`.

Where each statement runs (writes and PRIMARY reads on the primary, NEAREST
reads on the local standby), what a write's token is, how a read holding a
token waits for the replica, and how an operation follows the primary
through a failover. The package docstring (:mod:`fastedge.store.postgresql`)
states the rules; DSN handling, the primary search and the one-flight
write transaction are the sibling modules.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import psycopg
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import schema as s
from ..db import POSTGRESQL, Conn, DatabaseError, Sql
from ..errors import BadToken, CommitUnknown, StoreUnavailable
from ..metrics import ReplicationMetrics
from ..model import ReadPreference
from ..plan import Step
from ..sql import Observer, Runner, SqlStore
from . import pipeline
from .dsn import Target, conninfo
from .primary import Primaries
from .tokens import parse_lsn

_T = TypeVar("_T")

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST

#: Pause between two attempts to reach a primary during a failover.
FAILOVER_RETRY_SECONDS = 0.25

#: Key of the advisory lock that serialises schema migrations across nodes.
_MIGRATION_LOCK = 0x66617374  # "fast"

#: SQLSTATEs meaning "this server cannot take our work now": read-only
#: transaction (a demoted primary), admin/crash shutdown, cannot connect now.
_UNUSABLE_STATES = frozenset({"25006", "57P01", "57P02", "57P03"})


@dataclass
class _WriteState:
    commit_sent: bool = False
    committed: bool = False
    #: The commit's WAL position, when a batch committed (``_batch``).
    token: str | None = None


class _Local(threading.local):
    """What the store call running on this thread needs to know."""

    want_lsn: int | None = None
    route_primary: bool = False
    target: Target | None = None
    write: _WriteState | None = None


class _NotReplayed(Exception):
    """The replica has not replayed the read's token yet."""


class _PrimaryLost(StoreUnavailable):
    """The primary broke the connection or no longer accepts writes; nothing
    of the operation was committed."""


class _ReplicaLost(StoreUnavailable):
    """The local replica failed to answer."""


@dataclass(frozen=True)
class ReplicaLag:
    """How far the local replica is behind the primary, as measured now."""

    primary_lsn: int
    replay_lsn: int
    lag_bytes: int
    #: 0 when caught up; NaN when the replica has replayed no transaction yet.
    lag_seconds: float


class PostgresStore(SqlStore):
    """:class:`~fastedge.store.interfaces.IStore` over a replicated PostgreSQL.

    :param primaries: connection strings of the servers that may be the
        primary, in order of preference (see the module docstring).
    :param replica: this node's hot standby, or ``None`` to read NEAREST
        from the primary.
    :param token_wait_seconds: how long a NEAREST read with a token waits for
        the replica before reading the primary (0: never wait).
    :param failover_seconds: how long an operation keeps looking for a
        writable primary before failing.
    """

    backend = "postgresql"
    _log = Logger()

    def __init__(
        self,
        primaries: Sequence[str],
        replica: str | None,
        *,
        run: Runner,
        clock: IReactorTime,
        token_wait_seconds: float = 0.5,
        token_poll_seconds: float = 0.002,
        failover_seconds: float = 10.0,
        connect_timeout_seconds: int = 3,
        statement_timeout_seconds: float = 30.0,
        application_name: str = "fastedge",
        pool_size: int = 4,
        observe: Observer | None = None,
        metrics: ReplicationMetrics | None = None,
    ) -> None:

        def complete(dsn: str) -> str:
            return conninfo(
                dsn,
                connect_timeout=connect_timeout_seconds,
                application_name=application_name,
                statement_timeout_ms=int(statement_timeout_seconds * 1000),
            )

        # Engines do no I/O until first used.
        self._primaries = Primaries(
            [Target.make(complete(dsn), pool_size) for dsn in primaries],
            run=run,
            metrics=metrics,
            backend=self.backend,
        )
        self._replica = Target.make(complete(replica), pool_size) if replica else None
        super().__init__(
            self._primaries.current.pool,
            self._replica.pool if self._replica else None,
            run=run,
            clock=clock,
            observe=observe,
        )
        self._token_wait = token_wait_seconds
        self._token_poll = token_poll_seconds
        self._failover_seconds = failover_seconds
        self._metrics = metrics
        self._local = _Local()
        #: After a token wait timed out: (the position the replica lacked,
        #: until when reads needing it or later do not wait again).
        self._stalled: tuple[int, float] | None = None

    # Where statements run

    @contextmanager
    def _reading(self, read_preference: ReadPreference) -> Iterator[Conn]:
        local = self._local
        replica = self._replica if read_preference is NEAREST and not local.route_primary else None
        target = replica or self._primaries.current
        local.target = target
        with target.pool.connection() as raw:
            # Reads need no transaction: each statement its own snapshot.
            raw.autocommit = True
            conn = Conn(raw, POSTGRESQL, psycopg)
            if replica is not None and local.want_lsn is not None:
                if self._replayed(conn) < local.want_lsn:
                    raise _NotReplayed()
            yield conn

    @staticmethod
    def _replayed(conn: Conn) -> int:
        """How far the server on ``conn`` has replayed (or written, if it has
        been promoted since)."""
        value = conn.run(
            Sql(
                "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
                " ELSE pg_current_wal_lsn() END)::text"
            )
        ).scalar()
        return parse_lsn(value) if value else 0

    @contextmanager
    def _writing(self) -> Iterator[Conn]:
        local = self._local
        state = _WriteState()
        target = self._primaries.current
        local.target = target
        local.write = state
        with target.pool.connection() as raw:
            # psycopg begins the transaction with the first statement; an
            # exception leaves it to the pool, which rolls it back.
            conn = Conn(raw, POSTGRESQL, psycopg)
            yield conn
            if not state.committed:
                self._commit(conn)

    def _commit(self, conn: Conn) -> str:
        """Commit the transaction on ``conn``; returns the commit's token."""
        state = self._local.write
        assert state is not None, "a commit outside _writing"
        raw = cast("psycopg.Connection[Any]", conn.raw)
        state.commit_sent = True
        with raw.cursor() as cur:
            # Without parameters psycopg sends this as one simple query: the
            # COMMIT and the position cost one round trip.
            cur.execute("COMMIT; SELECT pg_current_wal_lsn()::text")
            cur.nextset()
            row = cur.fetchone()
        state.committed = True
        assert row is not None
        return str(row[0])

    def _token(self, conn: Conn) -> str | None:
        """Commit now and return the commit's WAL position (see ``_commit``),
        or the position a batch already committed at (``_batch``)."""
        state = self._local.write
        if state is not None and state.committed and state.token is not None:
            return state.token
        return self._commit(conn)

    def _batch(self, conn: Conn, statements: Sequence[Step], *, commit: bool) -> list[list[Any] | None]:
        """With ``commit``: the statements and the COMMIT in one flight
        (:mod:`.pipeline`). Without: one by one, as the base class does.

        With the COMMIT in flight a broken connection is ``CommitUnknown``,
        as for any write (``commit_sent``); an error the server answered
        means the COMMIT was skipped, so the write was not applied.
        """
        if not commit:
            return super()._batch(conn, statements, commit=commit)
        state = self._local.write
        assert state is not None, "a batch outside _writing"
        raw = cast("psycopg.Connection[Any]", conn.raw)

        def commit_sent() -> None:
            state.commit_sent = True

        try:
            out, token = pipeline.send(raw, statements, commit_sent)
        except pipeline.NotApplied as e:
            state.commit_sent = False
            raise e.error from None
        state.committed = True
        state.token = token
        return out

    def token_covers(self, have: str | None, want: str | None) -> bool:
        """WAL positions: ``have`` covers ``want`` when it is at or after it."""
        if want is None:
            return True
        if have is None:
            parse_lsn(want)
            return False
        return parse_lsn(have) >= parse_lsn(want)

    # Running calls: token waits, fallbacks, failover

    def _guarded(self, fn: Callable[[], _T], want: int | None, route_primary: bool) -> Callable[[], _T]:
        """``fn`` as run on a store thread: with this call's routing, and
        with a broken server reported as which server broke and whether a
        COMMIT was in flight."""
        local = self._local

        def run() -> _T:
            local.want_lsn = want
            local.route_primary = route_primary
            local.target = None
            local.write = None
            try:
                return fn()
            except (DatabaseError, psycopg.Error) as e:
                mapped = self._classify(e)
                if mapped is None:
                    raise
                raise mapped from e
            finally:
                local.want_lsn = None
                local.route_primary = False
                local.target = None
                local.write = None

        return run

    def _classify(self, e: Exception) -> Exception | None:
        """Our exception for a driver failure that means "this server is
        unusable", or ``None`` for any other failure."""
        orig = e.orig if isinstance(e, DatabaseError) else e
        broken = (isinstance(e, DatabaseError) and e.connection_invalidated) or isinstance(
            orig, psycopg.OperationalError
        )
        sqlstate = getattr(orig, "sqlstate", None)
        if not broken and sqlstate not in _UNUSABLE_STATES:
            return None
        local = self._local
        reason = "{} ({})".format(type(orig).__name__, sqlstate or "no SQLSTATE")
        if local.target is not None and local.target is self._replica:
            return _ReplicaLost("the local replica failed: " + reason)
        if local.write is not None and local.write.commit_sent and not local.write.committed:
            return CommitUnknown(
                f"the primary failed during COMMIT ({reason}): the write may or may not have been applied"
            )
        return _PrimaryLost("the primary failed: " + reason)

    def _attempt(
        self,
        operation: str,
        read_preference: ReadPreference,
        fn: Callable[[], _T],
        *,
        want: int | None = None,
        route_primary: bool = False,
    ) -> Deferred[_T]:
        # Latency is labelled by where the call was served.
        label = PRIMARY if route_primary else read_preference
        return super()._call(operation, label, self._guarded(fn, want, route_primary))

    def _call(
        self,
        operation: str,
        read_preference: ReadPreference,
        fn: Callable[[], _T],
        *,
        write: bool = False,
        token: str | None = None,
    ) -> Deferred[_T]:
        if write and read_preference is not PRIMARY:
            # The base class answers with WrongReadPreference.
            return super()._call(operation, read_preference, fn, write=True)
        want = None
        if token is not None:
            try:
                want = parse_lsn(token)
            except BadToken as e:
                return fail(e)
        if read_preference is NEAREST and self._replica is not None:
            if want is not None:
                return self._read_at(operation, fn, want)
            return self._read_nearest(operation, fn)
        return self._on_primary(operation, read_preference, fn, write=write)

    def _read_nearest(self, operation: str, fn: Callable[[], _T]) -> Deferred[_T]:
        """A NEAREST read without a token: the replica, else the primary."""
        d = self._attempt(operation, NEAREST, fn)

        def failed(f: Failure) -> Any:
            if f.check(_ReplicaLost):
                return self._replica_failed(operation, fn, f)
            return f

        return d.addErrback(failed)

    def _replica_failed(self, operation: str, fn: Callable[[], _T], f: Failure) -> Deferred[_T]:
        self._log.warn(
            "local replica {replica} failed ({reason}); reading {operation} from the primary",
            replica=self._replica.name if self._replica else None,
            reason=f.getErrorMessage(),
            operation=operation,
        )
        if self._metrics is not None:
            self._metrics.fallback("replica_error")
        return self._on_primary(operation, NEAREST, fn, route_primary=True)

    def _read_at(self, operation: str, fn: Callable[[], _T], want: int) -> Deferred[_T]:
        """A NEAREST read that must see WAL position ``want``."""
        clock = self._clock
        started = clock.seconds()
        deadline = started + self._token_wait
        result: Deferred[_T] = Deferred()
        metrics = self._metrics

        def attempt(first: bool) -> None:
            d = self._attempt(operation, NEAREST, fn, want=want)
            d.addCallbacks(served, not_yet, callbackArgs=(first,))

        waiting = [False]

        def wait(on: bool) -> None:
            if metrics is not None and waiting[0] != on:
                metrics.token_waiting.labels(self.backend).inc(1 if on else -1)
            waiting[0] = on

        def served(value: _T, first: bool) -> None:
            wait(False)
            if metrics is not None:
                metrics.token_read("ready" if first else "waited", clock.seconds() - started)
            result.callback(value)

        def not_yet(f: Failure) -> None:
            if not f.check(_NotReplayed):
                wait(False)
                if f.check(_ReplicaLost):
                    self._replica_failed(operation, fn, f).chainDeferred(result)
                else:
                    result.errback(f)
                return
            now = clock.seconds()
            stalled = self._stalled
            known_behind = stalled is not None and now < stalled[1] and want >= stalled[0]
            if now < deadline and not known_behind:
                wait(True)
                clock.callLater(min(self._token_poll, deadline - now), attempt, False)
                return
            wait(False)
            if not known_behind:
                self._stalled = (want, now + self._token_wait)
            if metrics is not None:
                metrics.token_read("fallback", now - started)
                metrics.fallback("replica_behind" if known_behind else "token_timeout")
            self._on_primary(operation, NEAREST, fn, route_primary=True).chainDeferred(result)

        attempt(True)
        return result

    def _on_primary(
        self,
        operation: str,
        read_preference: ReadPreference,
        fn: Callable[[], _T],
        *,
        write: bool = False,
        route_primary: bool = False,
    ) -> Deferred[_T]:
        """Run ``fn`` on the primary, following it through a failover."""
        clock = self._clock
        deadline = clock.seconds() + self._failover_seconds
        result: Deferred[_T] = Deferred()
        tries = [0]

        def attempt(_: object = None) -> None:
            tries[0] += 1
            d = self._attempt(operation, read_preference, fn, route_primary=route_primary)
            d.addCallbacks(result.callback, failed)

        def failed(f: Failure) -> None:
            if f.check(CommitUnknown):
                if self._metrics is not None:
                    self._metrics.write_failed("commit_unknown")
                self._log.error(
                    "{operation}: the primary failed during COMMIT; reported to the caller as unknown",
                    operation=operation,
                )
                self._primaries.find()
                result.errback(f)
                return
            if not f.check(_PrimaryLost):
                result.errback(f)
                return
            if clock.seconds() >= deadline:
                if write and self._metrics is not None:
                    self._metrics.write_failed("not_applied")
                what = "the write was not applied" if write else "the read was not served"
                result.errback(
                    StoreUnavailable(
                        f"no usable primary among the {len(self._primaries.candidates)} candidates after {self._failover_seconds} s; {what}"
                    )
                )
                return

            def again(index: int | None) -> None:
                if tries[0] == 1 and index is not None:
                    attempt()
                else:
                    clock.callLater(FAILOVER_RETRY_SECONDS, attempt)

            self._primaries.find().addCallback(again)

        attempt()
        return result

    # Lifecycle

    def open(self) -> Deferred[None]:
        """Find the primary, then apply pending migrations there (one node at
        a time, under an advisory lock)."""
        applied_ms = int(self._clock.seconds() * 1000)

        def migrate(index: int | None) -> Deferred[list[int]]:
            if index is None:
                raise StoreUnavailable(
                    f"no writable primary among the {len(self._primaries.candidates)} configured candidates"
                )

            def go() -> list[int]:
                with self._writing() as conn:
                    conn.run(Sql("SELECT pg_advisory_xact_lock(:key)", key=_MIGRATION_LOCK))
                    applied = s.migrate(conn, applied_ms)
                    conn.run_text(pipeline.REQUIRE_FUNCTION)
                    return applied

            return self._on_primary("open", PRIMARY, go, write=True)

        def report(applied: list[int]) -> None:
            if applied:
                self._log.info("store schema migrated to {versions}", versions=applied)
            self._log.info(
                "postgresql store open: primary {primary}, local replica {replica}",
                primary=self._primaries.current.name,
                replica=(self._replica.name if self._replica else "none (NEAREST reads the primary)"),
            )

        d: Deferred[Any] = self._primaries.find()
        d.addCallback(migrate)
        d.addCallback(report)
        return d

    def close(self) -> Deferred[None]:
        def go() -> None:
            for target in self._primaries.candidates + ([self._replica] if self._replica else []):
                target.pool.dispose()

        return self._run(go)

    # Replica lag

    def measure_lag(self) -> Deferred[ReplicaLag | None]:
        """Measure the local replica's lag (``None`` without a replica) and
        update the lag metrics. A primary found unusable starts a search for
        the new one, so a failover is noticed even while no request comes."""
        replica = self._replica
        if replica is None:
            return succeed(None)

        def go() -> ReplicaLag:
            with self._reading(PRIMARY) as conn:
                demoted, written = conn.run(
                    Sql(
                        "SELECT pg_is_in_recovery(),"
                        " (CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END)::text"
                    )
                ).one()
            if demoted:
                raise _PrimaryLost("the primary is in recovery: it was demoted")
            primary_lsn = parse_lsn(written)
            local = self._local
            local.target = replica
            with replica.pool.connection() as raw:
                raw.autocommit = True
                row = (
                    Conn(raw, POSTGRESQL, psycopg)
                    .run(
                        Sql(
                            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,"
                            " EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())"
                        )
                    )
                    .one()
                )
            if not row[0]:
                # Promoted: it is a primary now, nothing to replay.
                return ReplicaLag(primary_lsn, primary_lsn, 0, 0.0)
            replay = parse_lsn(row[1]) if row[1] else 0
            behind = max(0, primary_lsn - replay)
            if behind == 0:
                seconds = 0.0
            elif row[2] is None:
                seconds = math.nan
            else:
                # Clocks of two hosts: a little skew must not show as negative lag.
                seconds = max(0.0, float(row[2]))
            return ReplicaLag(primary_lsn, replay, behind, seconds)

        d = self._run(self._guarded(go, None, False))

        def measured(lag: ReplicaLag) -> ReplicaLag:
            if self._metrics is not None:
                self._metrics.lag(lag.lag_bytes, lag.lag_seconds)
            return lag

        def failed(f: Failure) -> Any:
            if f.check(_PrimaryLost):
                self._primaries.find()
            return f

        d.addCallbacks(measured, failed)
        return d
