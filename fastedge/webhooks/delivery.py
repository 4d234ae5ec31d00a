# -*- test-case-name: tests.unit.webhooks.test_service,tests.integration.test_webhooks -*-
"""The delivery worker: claims due deliveries from the outbox with a
lease, sends them, and records how each went (docs/webhooks.md).

At most ``max_in_flight`` requests are open at once, and the store gives
at most one delivery per endpoint at a time (the order of the changes), so
a receiver that hangs holds one connection until the request's deadline,
and the comment API never waits on any of it: the outbox row is written
with the change; everything here happens afterwards.

Lease rule: a claim's lease outlives the request's deadline
(``lease_seconds > timeout_seconds``, checked by the config), so a lease
never expires while its request can still be answered; a node that dies
mid-request leaves its lease to expire, and another node sends the
delivery again with the same event id (receivers deduplicate on it).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..lifecycle import fired
from ..store.interfaces import IWebhookStore
from ..store.model import (
    AttemptOutcome,
    DeliveryDone,
    ReadPreference,
    WebhookClaim,
    WebhookDelivery,
    WebhookEndpoint,
    Written,
)
from ..store.shared import new_id
from .backoff import next_attempt_ms
from .metrics import WebhookMetrics
from .result import Result

if TYPE_CHECKING:
    from .sender import Sender
    from .service import LazySender

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST


class DeliveryWorker:
    """Claims, sends and settles deliveries; :meth:`poll` is called
    periodically and after every settled delivery.

    :param rng: draws the retry jitter.
    :param ready: whether the store is open (polls before are skipped).
    """

    _log = Logger()

    def __init__(
        self,
        store: IWebhookStore,
        sender: Sender | LazySender,
        *,
        clock: IReactorTime,
        metrics: WebhookMetrics,
        max_in_flight: int,
        lease_seconds: float,
        retry_window_seconds: float,
        disable_after_failures: int,
        rng: random.Random | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self._store = store
        self._ready = ready
        self._sender = sender
        self._clock = clock
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._lease_ms = int(lease_seconds * 1000)
        self._window_ms = int(retry_window_seconds * 1000)
        self._disable_after = disable_after_failures
        self._rng = rng or random.Random()
        #: seq -> (the send's Deferred, the claim's owner)
        self._in_flight: dict[int, tuple[Deferred[Any], str]] = {}
        #: Settling (store calls after the send), waited for at stop.
        self._settling: set[Deferred[Any]] = set()
        self._claiming = False
        self._again: IDelayedCall | None = None
        self._stopped = False
        self._idle_waiters: list[Deferred[None]] = []
        #: Accepted by their receivers, to be removed with the next claim.
        self._finished: list[DeliveryDone] = []

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    @property
    def in_flight(self) -> int:
        """Requests open now."""
        return len(self._in_flight)

    def poll(self) -> Deferred[None]:
        """Remove the deliveries accepted since the last claim and claim as
        many due ones as there is room for (one store transaction), then
        start sending them. Never fails (a store error is logged and
        counted; the accepted ones are removed with the next claim)."""
        if self._stopped or self._claiming or (self._ready is not None and not self._ready()):
            return succeed(None)
        room = self._max_in_flight - len(self._in_flight)
        if room <= 0 and not self._finished:
            return succeed(None)
        owner = new_id()
        finished, self._finished = self._finished, []
        self._claiming = True
        d = self._store.claim_webhook_deliveries(
            owner=owner,
            now_ms=self._now_ms(),
            lease_ms=self._lease_ms,
            limit=max(0, room),
            read_preference=PRIMARY,
            finished=finished,
        )

        def claimed(claim: WebhookClaim) -> None:
            self._count_finished(finished, claim.finished)
            for delivery in claim.deliveries:
                self._start(delivery, owner)
            if room > 0 and len(claim.deliveries) == room:
                # There may be more waiting: claim again as soon as there is room.
                self._poll_soon()

        def failed(failure: Failure) -> bool:
            # Kept for the next claim (the poll timer's); meanwhile their
            # leases hold.
            self._finished = finished + self._finished
            self._store_failed(failure, "claim")
            return False

        done = d.addCallbacks(claimed, failed)
        done.addCallback(self._claimed)
        return done.addCallback(fired)

    def _count_finished(self, finished: list[DeliveryDone], removed: list[int]) -> None:
        ours = set(removed)
        for done in finished:
            if done.seq in ours:
                self._metrics.deliveries.labels("delivered").inc()
            else:
                # The lease expired before the answer was recorded (a store
                # far slower than the request deadline): sent again elsewhere.
                self._metrics.deliveries.labels("lost_lease").inc()
                self._log.warn("webhook delivery {seq} was accepted after its lease expired", seq=done.seq)

    def _claimed(self, ok: bool | None) -> None:
        self._claiming = False
        if self._finished and ok is not False:
            self._flush()
        self._check_idle()

    def _flush(self) -> None:
        """Record accepted deliveries: at once when nothing else is open
        (a quiet endpoint is not kept waiting), else with the claim that
        the next turn of the reactor makes for all that finished together."""
        if not self._in_flight and not self._claiming:
            self.poll()
        else:
            self._poll_soon()

    def when_idle(self) -> Deferred[None]:
        """Fires once nothing is being claimed, sent, settled or waiting to
        be recorded (for tests and the benchmark, after a :meth:`poll`)."""
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        self._check_idle()
        return d

    def _check_idle(self) -> None:
        if self._claiming or self._in_flight or self._settling or self._finished or not self._idle_waiters:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)

    def _poll_soon(self) -> None:
        if self._stopped or (self._again is not None and self._again.active()):
            return
        self._again = self._clock.callLater(0, self._poll_later)

    def _poll_later(self) -> None:
        self._again = None
        self.poll()

    def _store_failed(self, failure: Failure, operation: str) -> None:
        self._metrics.store_errors.labels(operation).inc()
        self._log.failure("webhook worker: store call {operation} failed", failure, operation=operation)

    def _start(self, delivery: WebhookDelivery, owner: str) -> None:
        d = self._sender.send(delivery)
        self._in_flight[delivery.seq] = (d, owner)
        self._metrics.in_flight.set(len(self._in_flight))

        def sent(result: Result | Failure) -> Any:
            self._in_flight.pop(delivery.seq, None)
            self._metrics.in_flight.set(len(self._in_flight))
            aborted = self._stopped and not (isinstance(result, Result) and result.outcome == "delivered")
            if aborted or isinstance(result, Failure):
                if isinstance(result, Failure) and not result.check(CancelledError):
                    self._log.failure("webhook send of {event_id} failed", result, event_id=delivery.event_id)
                # Aborted by stop(), which gives the lease back: not an attempt.
                self._check_idle()
                return None
            settling = self._settle(delivery, owner, result)
            if not settling.called:
                self._settling.add(settling)
                settling.addBoth(self._settled, settling)
            elif self._finished:
                self._flush()
            else:
                self._poll_soon()
                self._check_idle()
            return None

        d.addBoth(sent)

    def _settled(self, _: object, settling: Deferred[Any]) -> None:
        self._settling.discard(settling)
        self._poll_soon()
        self._check_idle()

    def _settle(self, delivery: WebhookDelivery, owner: str, result: Result) -> Deferred[Any]:
        self._metrics.attempts.labels(result.outcome).inc()
        self._metrics.latency.observe(result.seconds)
        if result.outcome == "delivered":
            self._finished.append(DeliveryDone(delivery.seq, delivery.endpoint_id, owner))
            return succeed(None)
        now = self._now_ms()
        attempts = delivery.attempts + 1
        retry_at = next_attempt_ms(attempts, now, delivery.window_start_ms, self._window_ms, self._rng)
        outcome = AttemptOutcome(
            now_ms=now,
            status=result.status,
            error=result.error,
            retry_at_ms=retry_at,
            disable_reason="the receiver answered 410 Gone" if result.outcome == "gone" else None,
            disable_after=self._disable_after,
        )
        self._log.info(
            "webhook {event_id} to endpoint {endpoint_id}: attempt {attempts} failed ({outcome}); {next}",
            event_id=delivery.event_id,
            endpoint_id=delivery.endpoint_id,
            attempts=attempts,
            outcome=result.outcome,
            next="failed for good" if retry_at is None else "retry in {:.0f} s".format((retry_at - now) / 1000),
        )
        d = self._store.record_webhook_failure(
            delivery.seq, delivery.endpoint_id, outcome, owner=owner, read_preference=PRIMARY
        )
        d.addCallback(self._recorded, delivery, retry_at)
        d.addErrback(self._store_failed, "record_failure")
        return d

    def _recorded(
        self, written: Written[WebhookEndpoint | None], delivery: WebhookDelivery, retry_at: int | None
    ) -> None:
        if written.value is not None:
            self._metrics.disabled.inc()
            self._log.warn(
                "webhook endpoint {endpoint_id} of tenant {tenant_id} turned off: {reason}",
                endpoint_id=delivery.endpoint_id,
                tenant_id=delivery.tenant_id,
                reason=written.value.disabled_reason,
            )
        if retry_at is None or written.value is not None:
            self._metrics.deliveries.labels("failed").inc()
        else:
            self._metrics.retries.inc()

    def read_queue(self) -> Deferred[None]:
        """Refresh the queue gauges from the store. Never fails."""
        if self._ready is not None and not self._ready():
            return succeed(None)
        d = self._store.webhook_queue(read_preference=NEAREST)

        def got(queue: Any) -> None:
            self._metrics.queue_depth.labels("pending").set(queue.pending)
            self._metrics.queue_depth.labels("failed").set(queue.failed)
            oldest = queue.oldest_pending_ms
            self._metrics.oldest_age.set(0 if oldest is None else max(0.0, (self._now_ms() - oldest) / 1000))

        done = d.addCallback(got)
        done.addErrback(self._store_failed, "queue")
        return done

    def stop(self) -> Deferred[None]:
        """Stop claiming, abort open requests and give their leases back
        (another node takes them at once); fires when the store has them."""
        self._stopped = True
        if self._again is not None and self._again.active():
            self._again.cancel()
        by_owner: dict[str, list[int]] = {}
        for seq, (d, owner) in list(self._in_flight.items()):
            by_owner.setdefault(owner, []).append(seq)
            d.cancel()
        waits: list[Deferred[Any]] = list(self._settling)
        if self._finished:
            finished, self._finished = self._finished, []
            recorded = self._store.claim_webhook_deliveries(
                owner=new_id(), now_ms=self._now_ms(), lease_ms=0, limit=0, read_preference=PRIMARY, finished=finished
            )
            recorded.addCallback(lambda claim: self._count_finished(finished, claim.finished))
            recorded.addErrback(self._store_failed, "claim")
            waits.append(recorded)
        for owner, seqs in by_owner.items():
            released = self._store.release_webhook_deliveries(seqs, owner=owner, read_preference=PRIMARY)
            released.addErrback(self._store_failed, "release")
            waits.append(released)
        done = DeferredList(waits, consumeErrors=True)
        return done.addCallback(fired)
