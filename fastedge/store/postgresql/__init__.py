# -*- test-case-name: tests.integration.test_postgresql_store -*-
"""The replicated backend: a PostgreSQL primary and a hot standby per node.

Modules, one job each: :mod:`.routing` (where statements run, tokens,
read-your-writes, failover retries), :mod:`.dsn` (connection strings and
engines), :mod:`.primary` (finding the writable primary), :mod:`.tokens`
(WAL positions) and :mod:`.pipeline` (a write transaction sent in one
flight).

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

from .dsn import check_dsn, conninfo, postgres_pool, redact_dsn
from .routing import FAILOVER_RETRY_SECONDS, PostgresStore, ReplicaLag
from .tokens import format_lsn, parse_lsn

__all__ = [
    "FAILOVER_RETRY_SECONDS",
    "PostgresStore",
    "ReplicaLag",
    "check_dsn",
    "conninfo",
    "format_lsn",
    "parse_lsn",
    "postgres_pool",
    "redact_dsn",
]
