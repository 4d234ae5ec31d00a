# -*- test-case-name: tests.integration.test_postgresql_store -*-
"""A write transaction sent to the primary in one flight.

A :class:`~fastedge.store.plan.Plan` is sent as ``BEGIN``, its statements,
``COMMIT`` and ``SELECT pg_current_wal_lsn()`` with one Sync (psycopg's
pipeline mode): one round trip however far the primary is. Its checks
(:class:`~fastedge.store.plan.Require`) become calls of
:data:`REQUIRE_FUNCTION`, which raises for a failed check; the server then
skips every later message up to the Sync, the COMMIT included, so a failed
check applies nothing, exactly as a Python ``raise`` in the transaction did.

What a failure means for the write:

- A server error answered on a live connection (a failed check, a
  constraint, a read-only server): the pipeline stopped there, so the
  COMMIT never ran: not applied (and safe to retry elsewhere).
- The connection broke with the flight sent: the COMMIT may have run:
  :class:`~fastedge.store.errors.CommitUnknown` (the caller marks
  ``commit_sent`` before the flight).
- A pooled connection the server closed while it sat idle (a restart, a
  failover) is noticed before anything is sent, without a round trip: the
  server's goodbye or the end of the stream is already readable. That write
  was not sent, so it is retried on the primary found.
"""

from __future__ import annotations

import select as select_module
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg import pq

from ..db import POSTGRESQL, IntegrityError, Sql, row_type
from ..plan import Require, Step

#: SQLSTATE our check function raises with (class "FE": ours, unused by
#: PostgreSQL); the message is the failed step's index.
REQUIRE_STATE = "FE001"

#: Installed (replaced) on the primary by every node's ``open()``, under the
#: migration lock: a function, not a table, so it carries no data and needs
#: no schema version; its text is the same in every release that uses it.
REQUIRE_FUNCTION = (
    "CREATE OR REPLACE FUNCTION fastedge_require(ok boolean, step integer) RETURNS boolean"
    " LANGUAGE plpgsql AS $$ BEGIN"
    " IF ok IS NOT TRUE THEN"
    f" RAISE EXCEPTION USING ERRCODE = '{REQUIRE_STATE}', MESSAGE = 'fastedge_require ' || step;"
    " END IF; RETURN true; END $$"
)


def check_idle_connection(raw: psycopg.Connection[Any]) -> None:
    """Raise ``OperationalError`` if the server closed ``raw`` (idle, from the
    pool) or said goodbye on it: readable bytes on an idle connection are a
    notice at best, a shutdown's FATAL or the end of the stream at worst.
    No round trip."""
    pgconn = raw.pgconn
    # A goodbye (FATAL) and the end of the stream may take two reads: the
    # second raises OperationalError. Anything else readable on an idle
    # connection is a notice or a notification, consumed here.
    for _ in range(3):
        readable, _, _ = select_module.select([raw.fileno()], [], [], 0)
        if not readable:
            return
        pgconn.consume_input()
        if pgconn.status != pq.ConnStatus.OK:
            break
    raise psycopg.OperationalError("the server spoke on an idle connection and did not stop: treated as closed")


def send(
    raw: psycopg.Connection[Any], steps: Sequence[Step], mark_commit_sent: Any
) -> tuple[list[list[Any] | None], str]:
    """Run ``steps`` and commit, in one flight on the idle connection ``raw``.

    :param mark_commit_sent: called just before the flight leaves, as the
        COMMIT is in it.
    :returns: per step its rows (``None`` for none, and for a check), and
        the commit's WAL position (the write's token).
    :raises: the failed check's error; a :class:`~fastedge.store.db.IntegrityError`
        for a constraint (as :class:`~fastedge.store.db.Conn` raises it); a psycopg error for
        anything else, with ``commit_sent`` left false by the caller's
        rule when the server answered (see the module docstring).
    """
    compiled: list[tuple[str, dict[str, Any]]] = []
    for index, step in enumerate(steps):
        if isinstance(step, Require):
            step = Sql("SELECT fastedge_require(") + step.condition + Sql(", :fastedge_step)", fastedge_step=index)
        compiled.append(step.render(POSTGRESQL))
    check_idle_connection(raw)
    cursors = []
    position = None
    # psycopg would send its own BEGIN and wait for it before the rest (a
    # round trip of its own): in autocommit mode our BEGIN goes in the same
    # flight. Nothing was sent in this transaction yet (idle).
    raw.autocommit = True
    # An error the server answered may surface while statements are still
    # being queued (psycopg reads what has come back as it sends): held
    # here, so the pipeline ends without it and it is raised once, below.
    answered: psycopg.Error | None = None
    try:
        try:
            with raw.pipeline():
                try:
                    raw.cursor().execute("BEGIN")
                    for query, params in compiled:
                        cur = raw.cursor()
                        cur.execute(query, params)
                        cursors.append(cur)
                    mark_commit_sent()
                    raw.cursor().execute("COMMIT")
                    position = raw.cursor()
                    position.execute("SELECT pg_current_wal_lsn()::text")
                except psycopg.Error as e:
                    if raw.broken:
                        raise
                    answered = e
        except psycopg.errors.PipelineAborted:
            # The rest of the flight after the error, skipped by the server.
            if answered is None:
                raise
        except psycopg.Error as e:
            if raw.broken or answered is not None:
                raise
            answered = e
        if answered is not None:
            if raw.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                raw.rollback()
            # The server stopped at this error and skipped the rest of the
            # flight, the COMMIT included.
            raise _answered(answered, steps)
    except BaseException:
        if not raw.broken and raw.pgconn.transaction_status not in (
            pq.TransactionStatus.IDLE,
            pq.TransactionStatus.UNKNOWN,
        ):
            raw.rollback()
        raise
    finally:
        if not raw.broken and raw.pgconn.transaction_status == pq.TransactionStatus.IDLE:
            raw.autocommit = False
    out: list[list[Any] | None] = []
    for cur in cursors:
        if cur.description is None:
            out.append(None)
        else:
            make = row_type(tuple(column.name for column in cur.description))._make
            out.append([make(row) for row in cur.fetchall()])
    assert position is not None
    row = position.fetchone()
    assert row is not None
    return out, str(row[0])


class NotApplied(Exception):
    """A server error answered in the flight: nothing was committed.

    ``error`` is what to raise to the caller."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _answered(e: psycopg.Error, steps: Sequence[Step]) -> NotApplied:
    if e.sqlstate == REQUIRE_STATE:
        diag = e.diag.message_primary or ""
        index = int(diag.rsplit(" ", 1)[-1])
        step = steps[index]
        assert isinstance(step, Require)
        return NotApplied(step.error)
    if isinstance(e, psycopg.IntegrityError):
        return NotApplied(IntegrityError(e))
    return NotApplied(e)
