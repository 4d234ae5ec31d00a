# -*- test-case-name: tests.integration.test_webhooks -*-
"""Sends one delivery with treq and says how it went.

Every attempt is bounded: one deadline covers connecting, the request and
reading the answer (a receiver that hangs costs one connection until
then); at most ``max_response_bytes`` of the answer are read, after which
the connection is dropped (a receiver that answers 10 GB costs that much,
not more); redirects are not followed (a 3xx is a failed attempt); cookies are neither kept nor sent.
"""

from __future__ import annotations

from http.cookiejar import DefaultCookiePolicy
from typing import Any

import treq
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgent, IResponse

from ..store.model import WebhookDelivery
from .agent import ProxyRefused, TargetRefused
from .events import render_body
from .result import Result
from .signing import signature_header

__all__ = ["Result", "Sender", "treq"]


_DONE = Failure(ResponseDone())


class _Bounded(Protocol):
    """Reads at most ``limit`` bytes of a response body, then drops the
    connection."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._parts.append(data[: self._limit - self._size])
        self._size += len(data)
        if self._size >= self._limit:
            self.done.callback(b"".join(self._parts))
            self._stop()

    def _stop(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def _cancel(self, _: Deferred[bytes]) -> None:
        self._stop()

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


class Sender:
    """Sends deliveries through ``agent`` (see the module docstring).

    :param clock: the deadline's and the latency's time.
    :param user_agent: the ``User-Agent`` of every request.
    """

    def __init__(
        self,
        agent: IAgent,
        *,
        clock: IReactorTime,
        timeout_seconds: float,
        max_response_bytes: int,
        user_agent: str,
    ) -> None:
        # No cookies: a receiver's Set-Cookie must never reach another
        # request (another tenant's receiver may share its domain).
        jar = IndexableCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        self._client = HTTPClient(agent, cookiejar=jar)
        self._clock = clock
        self._timeout = timeout_seconds
        self._max_response = max_response_bytes
        self._user_agent = user_agent

    def headers(self, delivery: WebhookDelivery, body: bytes, timestamp: int) -> dict[bytes | str, bytes | str]:
        """The request's headers (docs/webhooks.md, "Requests")."""
        return {
            b"Content-Type": b"application/json",
            b"User-Agent": self._user_agent.encode("ascii"),
            b"Fastedge-Event-Id": delivery.event_id.encode("ascii"),
            b"Fastedge-Event-Type": delivery.event_type.value.encode("ascii"),
            b"Fastedge-Webhook-Id": delivery.endpoint_id.encode("ascii"),
            b"Fastedge-Timestamp": str(timestamp).encode("ascii"),
            b"Fastedge-Signature": signature_header(delivery.secret, timestamp, body).encode("ascii"),
            b"Fastedge-Attempt": str(delivery.attempts + 1).encode("ascii"),
        }

    def send(self, delivery: WebhookDelivery) -> Deferred[Result]:
        """One attempt; never fails (every failure is a :class:`Result`).

        Cancelling the returned Deferred (the worker stopping) aborts the
        request and fires it with a ``CancelledError``.
        """
        started = self._clock.seconds()
        timed_out = []
        attempt = self._attempt(delivery, int(started))

        def expire() -> None:
            timed_out.append(True)
            attempt.cancel()

        deadline: IDelayedCall = self._clock.callLater(self._timeout, expire)

        def done(result: Any) -> Any:
            if deadline.active():
                deadline.cancel()
            elapsed = self._clock.seconds() - started
            if isinstance(result, Failure):
                if timed_out:
                    return Result("timeout", None, "no answer within {:g} seconds".format(self._timeout), elapsed)
                if result.check(CancelledError) and not timed_out:
                    return result
                return self._failed(result, elapsed)
            status, excerpt = result
            return self._answered(status, excerpt, elapsed)

        attempt.addBoth(done)
        return attempt

    @inlineCallbacks
    def _attempt(self, delivery: WebhookDelivery, timestamp: int) -> Any:
        body = render_body(delivery)
        response: IResponse = yield self._client.request(
            "POST",
            delivery.url,
            data=body,
            headers=self.headers(delivery, body, timestamp),
            allow_redirects=False,
        )
        reader = _Bounded(self._max_response)
        response.deliverBody(reader)
        try:
            excerpt = yield reader.done
        except (ResponseFailed, ConnectionError):
            # The status line and headers arrived; a body cut short (a
            # reset) does not change what the receiver answered.
            excerpt = b""
        return response.code, excerpt

    def _answered(self, status: int, excerpt: bytes, elapsed: float) -> Result:
        if 200 <= status < 300:
            return Result("delivered", status, "", elapsed)
        text = excerpt[:200].decode("utf-8", "replace")
        text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
        if status == 410:
            return Result("gone", status, "the receiver answered 410 Gone", elapsed)
        if 300 <= status < 400:
            return Result("redirect", status, "HTTP {} (redirects are not followed)".format(status), elapsed)
        message = "HTTP {}".format(status)
        if text:
            message += ": " + text
        return Result("http_error", status, message, elapsed)

    @staticmethod
    def _failed(failure: Failure, elapsed: float) -> Result:
        if failure.check(TargetRefused):
            return Result(
                "refused", None, "refused: " + str(failure.value.args[0] if failure.value.args else ""), elapsed
            )
        if failure.check(ProxyRefused):
            return Result("proxy_error", None, str(failure.value.args[0] if failure.value.args else ""), elapsed)
        if failure.check(DNSLookupError):
            return Result("connection_error", None, "the host name does not resolve", elapsed)
        if failure.check(TimeoutError, ConnectingCancelledError):
            return Result("timeout", None, "connecting timed out", elapsed)
        if failure.check(ConnectError):
            return Result(
                "connection_error", None, "could not connect: {}".format(type(failure.value).__name__), elapsed
            )
        return Result(
            "connection_error", None, "the connection failed: {}".format(type(failure.value).__name__), elapsed
        )
