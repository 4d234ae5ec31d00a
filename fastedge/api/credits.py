# -*- test-case-name: tests.unit.api.test_pieces -*-
"""API credits: charged per tenant-API call, summed in memory, flushed to
the store's ledger every ``api.credits.flush_seconds`` and at stop.

Charging writes nothing on the request path: a NEAREST read must not pay a
round trip to a far primary just to be billed. The cost of that choice is
that a node that dies loses at most one flush interval of charges (it never
double-charges).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..config import CreditsConfig
from ..store.errors import NotFound
from ..store.interfaces import IStore
from ..store.model import CreditUsage, ReadPreference


class CreditMeter:
    """Counts calls and credits per tenant and operation until flushed."""

    _log = Logger()

    def __init__(self, cfg: CreditsConfig, *, store: IStore, clock: IReactorTime) -> None:
        self._cfg = cfg
        self._store = store
        self._clock = clock
        self._pending: dict[str, dict[str, list[int]]] = {}

    def price(self, read_preference: ReadPreference | None) -> int:
        """Credits for one call: a read at ``read_preference``, or a write."""
        if read_preference is None:
            return self._cfg.write
        if read_preference is ReadPreference.NEAREST:
            return self._cfg.nearest_read
        return self._cfg.primary_read

    def charge(self, tenant_id: str, operation: str, read_preference: ReadPreference | None) -> int:
        """Charge one call; returns the credits charged."""
        credits = self.price(read_preference)
        entry = self._pending.setdefault(tenant_id, {}).setdefault(operation, [0, 0])
        entry[0] += 1
        entry[1] += credits
        return credits

    def pending(self, tenant_id: str) -> list[CreditUsage]:
        """Charges of ``tenant_id`` not yet in the ledger."""
        ops = self._pending.get(tenant_id, {})
        return [CreditUsage(op, calls, credits) for op, (calls, credits) in sorted(ops.items())]

    def flush(self) -> Deferred[Any]:
        """Write every pending charge to the ledger; failed ones are kept for
        the next flush."""
        pending, self._pending = self._pending, {}
        now_ms = int(self._clock.seconds() * 1000)
        ds = []
        for tenant_id, ops in pending.items():
            charges = {op: (calls, credits) for op, (calls, credits) in ops.items()}
            d = self._store.charge_credits(
                tenant_id, charges, created_ms=now_ms, read_preference=ReadPreference.PRIMARY
            )
            d.addErrback(self._keep, tenant_id, charges)
            ds.append(d)
        return DeferredList(ds)

    def _keep(self, failure: Failure, tenant_id: str, charges: dict[str, tuple[int, int]]) -> None:
        if failure.check(NotFound):
            # The tenant was deleted (fastedge-admin tenant delete) after
            # these calls: there is no ledger to charge, now or later.
            self._log.info(
                "dropped credit charges of deleted tenant {tenant}: {charges}", tenant=tenant_id, charges=charges
            )
            return
        self._log.failure("could not write credit charges; keeping them for the next flush", failure)
        ops = self._pending.setdefault(tenant_id, {})
        for op, (calls, credits) in charges.items():
            entry = ops.setdefault(op, [0, 0])
            entry[0] += calls
            entry[1] += credits


def merge_usage(*lists: list[CreditUsage]) -> list[CreditUsage]:
    """Sum usage lists per operation."""
    total: dict[str, list[int]] = {}
    for usage in lists:
        for u in usage:
            entry = total.setdefault(u.operation, [0, 0])
            entry[0] += u.calls
            entry[1] += u.credits
    return [CreditUsage(op, calls, credits) for op, (calls, credits) in sorted(total.items())]
