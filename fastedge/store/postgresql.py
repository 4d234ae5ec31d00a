# -*- test-case-name: tests.integration.test_postgresql_store -*-
"""The replicated backend: a PostgreSQL primary and a hot standby per node.

The statements are :mod:`fastedge.store.sql`'s, unchanged; this module only
decides *where* each one runs and what a write's consistency token is.

- **Routing.** Writes and PRIMARY reads go to the primary; NEAREST reads go
  to the node's local hot standby (``replica``), or to the primary when the
  node has none. Reads run in autocommit mode, so a read costs one round
  trip per statement (no BEGIN/ROLLBACK), which matters when the primary is
  far away.
- **Tokens.** A write transaction ends with ``COMMIT; SELECT
  pg_current_wal_lsn()`` sent as one simple query: one round trip, and the
  token is the WAL position written when our COMMIT returned, so at least
  the end of our commit record. (Sessions never commit asynchronously here:
  with ``synchronous_commit=off`` the write position could lag our commit,
  so such a session is switched to ``local``.) Tokens are WAL positions
  (``"16/B374D848"``), totally ordered, compared with :meth:`token_covers`.
- **Read-your-writes.** A NEAREST read holding a token first checks, on the
  replica and in the same worker call as the read, whether the replica has
  replayed that position. If not, it checks again every
  ``token_poll_seconds`` on the reactor's clock (``callLater``, never a
  sleep), and once ``token_wait_seconds`` have passed it reads from the
  primary instead and counts that. Tests drive that clock by hand. After
  such a timeout the replica is known to be behind: for the next
  ``token_wait_seconds``, reads needing that position or a later one check
  the replica once and, if it is still behind, go to the primary without
  waiting again (a page load makes several reads; only the first waits).
- **Failover.** The primary is the first writable server of the candidate
  list (``pg_is_in_recovery()`` false; among several, the one on the highest
  timeline, and the split brain is logged). When the primary fails (the
  connection breaks, or it has become read-only), the node searches the
  list again and retries the operation for up to ``failover_seconds``:
  every read, and every write whose COMMIT was never sent (so it cannot
  have been applied). A write that fails *during* COMMIT is reported as
  :class:`~fastedge.store.errors.CommitUnknown`, never as a success.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import schema as s
from .errors import BadToken, CommitUnknown, StoreUnavailable
from .metrics import ReplicationMetrics
from .model import ReadPreference
from .sql import Observer, Runner, SqlStore

_T = TypeVar("_T")

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST

#: Pause between two attempts to reach a primary during a failover.
FAILOVER_RETRY_SECONDS = 0.25

#: Key of the advisory lock that serialises schema migrations across nodes.
_MIGRATION_LOCK = 0x66617374  # "fast"

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")

#: Connection parameters safe to show in logs (never a password).
_SHOWN_PARAMS = ("host", "hostaddr", "port", "dbname", "user", "application_name")

#: SQLSTATEs meaning "this server cannot take our work now": read-only
#: transaction (a demoted primary), admin/crash shutdown, cannot connect now.
_UNUSABLE_STATES = frozenset({"25006", "57P01", "57P02", "57P03"})


def parse_lsn(token: str) -> int:
    """The WAL position in a token (``"16/B374D848"``) as an integer.

    :raises BadToken: for anything else.
    """
    m = _LSN.match(token) if isinstance(token, str) else None
    if m is None:
        raise BadToken("the consistency token is not one this store issued")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(value: int) -> str:
    """The token for a WAL position (PostgreSQL's own ``pg_lsn`` notation)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def redact_dsn(dsn: str) -> str:
    """A connection string fit for a log line: host, port, database, user.

    Passwords (and every other parameter) are left out.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable connection string>"
    shown = [f"{k}={params[k]}" for k in _SHOWN_PARAMS if params.get(k)]
    return " ".join(shown) or "<libpq defaults>"


def check_dsn(dsn: str) -> str | None:
    """``None`` if libpq can parse ``dsn``, else a reason that quotes none of it
    (a fragment of the string could be a password)."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error:
        return "not a libpq connection string or postgresql:// URI"
    return None


def conninfo(dsn: str, *, connect_timeout: int, application_name: str, statement_timeout_ms: int) -> str:
    """``dsn`` completed with our defaults; what the DSN sets itself wins.

    TCP keepalives make a vanished primary show up as a broken connection
    within seconds instead of a hung worker thread.
    """
    params: dict[str, Any] = conninfo_to_dict(dsn)
    defaults = {
        "connect_timeout": str(connect_timeout),
        "application_name": application_name,
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
    }
    for key, value in defaults.items():
        params.setdefault(key, value)
    if statement_timeout_ms > 0:
        options = str(params.get("options", ""))
        if "statement_timeout" not in options:
            params["options"] = (options + f" -c statement_timeout={statement_timeout_ms}").strip()
    return make_conninfo(**params)


def postgres_engine(info: str, *, pool_size: int) -> Engine:
    """A pooled engine over psycopg 3 for the complete connection string ``info``."""
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(info),
        poolclass=QueuePool,
        pool_size=pool_size,
        max_overflow=2,
        # Statement parameters are comment bodies and key hashes: keep them
        # out of error messages, which end up in logs.
        hide_parameters=True,
    )

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # A token is the WAL *write* position after COMMIT; with an
        # asynchronous commit that position could still be before our commit
        # record. One round trip per new pooled connection.
        dbapi_connection.autocommit = True
        try:
            dbapi_connection.execute(
                "SELECT CASE WHEN current_setting('synchronous_commit') = 'off' "
                "THEN set_config('synchronous_commit', 'local', false) END"
            )
        finally:
            dbapi_connection.autocommit = False

    return engine


@dataclass
class _Target:
    """One server: its pooled engine, the same in autocommit mode for reads,
    and a redacted name for logs."""

    engine: Engine
    reads: Engine
    info: str
    name: str

    @classmethod
    def make(cls, info: str, pool_size: int) -> _Target:
        engine = postgres_engine(info, pool_size=pool_size)
        return cls(
            engine,
            engine.execution_options(isolation_level="AUTOCOMMIT"),
            info,
            redact_dsn(info),
        )


@dataclass
class _WriteState:
    commit_sent: bool = False
    committed: bool = False
    #: The commit's WAL position, when a batch committed (``_batch``).
    token: str | None = None


class _Row:
    """A row of a pipelined statement, with attribute access like SQLAlchemy's."""

    def __init__(self, names: Sequence[str], values: Sequence[Any]) -> None:
        self.__dict__.update(zip(names, values, strict=True))


class _Local(threading.local):
    """What the store call running on this thread needs to know."""

    want_lsn: int | None = None
    route_primary: bool = False
    target: _Target | None = None
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
        if not primaries:
            raise ValueError("at least one primary candidate is needed")

        def complete(dsn: str) -> str:
            return conninfo(
                dsn,
                connect_timeout=connect_timeout_seconds,
                application_name=application_name,
                statement_timeout_ms=int(statement_timeout_seconds * 1000),
            )

        # Engines do no I/O until first used.
        self._candidates = [_Target.make(complete(dsn), pool_size) for dsn in primaries]
        self._replica = _Target.make(complete(replica), pool_size) if replica else None
        self._current = 0
        self._primary_target = self._candidates[0]
        super().__init__(
            self._primary_target.engine,
            self._replica.engine if self._replica else None,
            run=run,
            clock=clock,
            observe=observe,
        )
        self._token_wait = token_wait_seconds
        self._token_poll = token_poll_seconds
        self._failover_seconds = failover_seconds
        self._metrics = metrics
        self._local = _Local()
        self._searching: list[Deferred[int | None]] | None = None
        #: After a token wait timed out: (the position the replica lacked,
        #: until when reads needing it or later do not wait again).
        self._stalled: tuple[int, float] | None = None
        if metrics is not None:
            metrics.primary_candidate.labels(self.backend).set(0)

    # Where statements run

    @contextmanager
    def _reading(self, read_preference: ReadPreference) -> Iterator[Connection]:
        local = self._local
        replica = self._replica if read_preference is NEAREST and not local.route_primary else None
        target = replica or self._primary_target
        local.target = target
        with target.reads.connect() as conn:
            if replica is not None and local.want_lsn is not None:
                if self._replayed(conn) < local.want_lsn:
                    raise _NotReplayed()
            yield conn

    @staticmethod
    def _replayed(conn: Connection) -> int:
        """How far the server on ``conn`` has replayed (or written, if it has
        been promoted since)."""
        value = conn.execute(
            text(
                "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
                " ELSE pg_current_wal_lsn() END)::text"
            )
        ).scalar()
        return parse_lsn(value) if value else 0

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        local = self._local
        state = _WriteState()
        target = self._primary_target
        local.target = target
        local.write = state
        with target.engine.connect() as conn:
            conn.begin()
            yield conn
            if not state.committed:
                self._commit(conn)
            # Our COMMIT already ended the server's transaction; this only
            # tells SQLAlchemy so (psycopg sends nothing on an idle connection).
            conn.commit()

    def _commit(self, conn: Connection) -> str:
        """Commit the transaction on ``conn``; returns the commit's token."""
        state = self._local.write
        assert state is not None, "a commit outside _writing"
        raw = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
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

    def _token(self, conn: Connection) -> str | None:
        """Commit now and return the commit's WAL position (see ``_commit``),
        or the position a batch already committed at (``_batch``)."""
        state = self._local.write
        if state is not None and state.committed and state.token is not None:
            return state.token
        return self._commit(conn)

    def _batch(self, conn: Connection, statements: Sequence[Any], *, commit: bool) -> list[list[Any] | None]:
        """With ``commit``: send BEGIN, the statements, COMMIT and the
        position query in one round trip (psycopg's pipeline mode; the
        statements are :mod:`fastedge.store.sql`'s, compiled here as
        SQLAlchemy would). Without: one by one, as the base class does.

        With the COMMIT in flight a broken connection is ``CommitUnknown``,
        as for any write (``commit_sent``).
        """
        if not commit:
            return super()._batch(conn, statements, commit=commit)
        state = self._local.write
        assert state is not None, "a batch outside _writing"
        raw = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
        compiled = [
            statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
            for statement in statements
        ]
        cursors = []
        position = None
        # psycopg would send its BEGIN and wait for it before the rest (a
        # round trip of its own): in autocommit mode our BEGIN goes in the
        # same flight. Nothing was sent in this transaction yet (idle).
        raw.autocommit = True
        try:
            with raw.pipeline():
                raw.cursor().execute("BEGIN")
                for query in compiled:
                    cur = raw.cursor()
                    cur.execute(str(query), query.params)
                    cursors.append(cur)
                state.commit_sent = True
                raw.cursor().execute("COMMIT")
                position = raw.cursor()
                position.execute("SELECT pg_current_wal_lsn()::text")
        except BaseException:
            if raw.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE and not raw.broken:
                raw.rollback()
            raise
        finally:
            if not raw.broken and raw.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                raw.autocommit = False
        out: list[list[Any] | None] = []
        for cur in cursors:
            if cur.description is None:
                out.append(None)
            else:
                names = [column.name for column in cur.description]
                out.append([_Row(names, row) for row in cur.fetchall()])
        if position is not None:
            row = position.fetchone()
            assert row is not None
            state.committed = True
            state.token = str(row[0])
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
            except (DBAPIError, psycopg.Error) as e:
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
        orig = e.orig if isinstance(e, DBAPIError) else e
        broken = (isinstance(e, DBAPIError) and e.connection_invalidated) or isinstance(orig, psycopg.OperationalError)
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
                self._find_primary()
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
                        f"no usable primary among the {len(self._candidates)} candidates after {self._failover_seconds} s; {what}"
                    )
                )
                return

            def again(index: int | None) -> None:
                if tries[0] == 1 and index is not None:
                    attempt()
                else:
                    clock.callLater(FAILOVER_RETRY_SECONDS, attempt)

            self._find_primary().addCallback(again)

        attempt()
        return result

    # Finding the primary

    def _find_primary(self) -> Deferred[int | None]:
        """Search the candidates for the writable primary and move there.

        One search at a time: concurrent callers share its result, the index
        of the primary (``None`` if none was found). Never fails.
        """
        waiter: Deferred[int | None] = Deferred()
        if self._searching is not None:
            self._searching.append(waiter)
            return waiter
        self._searching = [waiter]
        d = self._run(self._probe_candidates)
        d.addCallback(self._choose)

        def broken(f: Failure) -> None:
            self._log.failure("searching for the primary failed", f)
            return None

        def done(index: int | None) -> None:
            waiting, self._searching = self._searching or [], None
            for w in waiting:
                w.callback(index)

        d.addErrback(broken)
        d.addCallback(done)
        return waiter

    def _probe_candidates(self) -> list[tuple[int, bool, int, str]]:
        """Ask every candidate, on a fresh connection, whether it takes writes.

        :returns: ``(index, writable, timeline, error)`` for each.
        """
        found = []
        for index, target in enumerate(self._candidates):
            try:
                with psycopg.connect(target.info, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL"
                        " ELSE pg_walfile_name(pg_current_wal_lsn()) END"
                    ).fetchone()
            except psycopg.Error as e:
                found.append((index, False, 0, type(e).__name__))
                continue
            assert row is not None
            writable = not row[0]
            found.append((index, writable, int(row[1][:8], 16) if writable else 0, ""))
        return found

    def _choose(self, probed: list[tuple[int, bool, int, str]]) -> int | None:
        writable = [(timeline, -index) for index, ok, timeline, _ in probed if ok]
        if self._metrics is not None:
            self._metrics.searched(bool(writable))
        if not writable:
            self._log.warn(
                "no writable primary among {count} candidates: {states}",
                count=len(probed),
                states=[(self._candidates[i].name, error or "read-only") for i, _, _, error in probed],
            )
            return None
        timeline, negative = max(writable)
        index = -negative
        if len(writable) > 1:
            self._log.error(
                "{count} candidates accept writes (split brain?): {names}; using {name} on timeline {timeline}",
                count=len(writable),
                names=[self._candidates[-i].name for _, i in writable],
                name=self._candidates[index].name,
                timeline=timeline,
            )
        if index != self._current:
            old = self._primary_target
            new = self._candidates[index]
            self._current = index
            self._primary_target = new
            self._primary = new.engine
            if self._metrics is not None:
                self._metrics.switched(index)
            self._log.warn(
                "the primary moved from {old} to {new} (timeline {timeline})",
                old=old.name,
                new=new.name,
                timeline=timeline,
            )
            # Connections to the old primary are useless now.
            self._run(old.engine.dispose).addErrback(
                lambda f: self._log.failure("closing the old primary's connections failed", f)
            )
        return index

    # Lifecycle

    def open(self) -> Deferred[None]:
        """Find the primary, then apply pending migrations there (one node at
        a time, under an advisory lock)."""
        applied_ms = int(self._clock.seconds() * 1000)

        def migrate(index: int | None) -> Deferred[list[int]]:
            if index is None:
                raise StoreUnavailable(f"no writable primary among the {len(self._candidates)} configured candidates")

            def go() -> list[int]:
                with self._writing() as conn:
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": _MIGRATION_LOCK},
                    )
                    return s.migrate(conn, applied_ms)

            return self._on_primary("open", PRIMARY, go, write=True)

        def report(applied: list[int]) -> None:
            if applied:
                self._log.info("store schema migrated to {versions}", versions=applied)
            self._log.info(
                "postgresql store open: primary {primary}, local replica {replica}",
                primary=self._primary_target.name,
                replica=(self._replica.name if self._replica else "none (NEAREST reads the primary)"),
            )

        d: Deferred[Any] = self._find_primary()
        d.addCallback(migrate)
        d.addCallback(report)
        return d

    def close(self) -> Deferred[None]:
        def go() -> None:
            for target in self._candidates + ([self._replica] if self._replica else []):
                target.engine.dispose()

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
                demoted, written = conn.execute(
                    text(
                        "SELECT pg_is_in_recovery(),"
                        " (CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END)::text"
                    )
                ).one()
            if demoted:
                raise _PrimaryLost("the primary is in recovery: it was demoted")
            primary_lsn = parse_lsn(written)
            local = self._local
            local.target = replica
            with replica.reads.connect() as conn:
                row = conn.execute(
                    text(
                        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,"
                        " EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())"
                    )
                ).one()
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
                self._find_primary()
            return f

        d.addCallbacks(measured, failed)
        return d
