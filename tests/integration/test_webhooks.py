"""Webhook delivery on real loopback sockets: a receiver that verifies every
signature, misbehaving receivers (500, 410, redirect, hang, an endless body,
a reset), a real forwarding proxy in the path, and the refusal of private
addresses.

Each test runs the webhooks child (:func:`fastedge.webhooks.service.make_service`)
over an SQLite store in a temp directory; the worker's time (polls, retry
times, deadlines) is a ``Clock`` advanced by the test, while its requests
go over real sockets on the trial reactor. ``worker.when_idle()`` says when
everything claimed has been sent and settled.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Generator
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.server import Request

from fastedge.config import WebhooksConfig
from fastedge.store.model import (
    CommentStatus,
    DeliveryState,
    ModerationAction,
    NewComment,
    ReadPreference,
    WebhookEvent,
)
from fastedge.store.sqlite import SQLiteStore
from fastedge.testing.fakes import run_inline
from fastedge.webhooks.service import make_service
from fastedge.webhooks.signing import signature
from tests.support.webhooks import ForwardingProxy, Received, Receiver

PRIMARY = ReadPreference.PRIMARY
SECRET = "whsec-" + "k" * 32
START = 1_800_000_000.0


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class _Harness:
    """A tenant, a thread, an author, and the webhooks child over SQLite."""

    def __init__(self, test: TestCase, cfg: WebhooksConfig, resolve: Any = None, tls: Any = None) -> None:
        self.test = test
        self.clock = Clock()
        self.clock.advance(START)
        directory = test.mktemp()
        os.makedirs(directory)
        self.store = SQLiteStore(os.path.join(directory, "s.sqlite"), run=run_inline, clock=self.clock)
        test.successResultOf(self.store.open())
        test.addCleanup(self.store.close)
        self.registry = CollectorRegistry()
        self.service = make_service(
            cfg,
            reactor=reactor,
            clock=self.clock,
            store=self.store,
            registry=self.registry,
            node_id="n1",
            resolve=resolve,
            tls=tls,
        )
        assert self.service.worker is not None
        self.worker = self.service.worker
        tenant = self.store.create_tenant("T", "global", created_ms=self.now_ms(), read_preference=PRIMARY)
        self.tenant = test.successResultOf(tenant).value
        session = self.store.create_anonymous_session(self.tenant.id, created_ms=self.now_ms(), read_preference=PRIMARY)
        self.author = test.successResultOf(session).value.author_id
        self.service.startService()
        test.addCleanup(self.service.stopService)

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def hook(self, url: str, events: Any = tuple(WebhookEvent)) -> Any:
        d = self.store.create_webhook(
            self.tenant.id,
            url=url,
            secret=SECRET,
            events=list(events),
            active=True,
            description="",
            created_ms=self.now_ms(),
            read_preference=PRIMARY,
        )
        return self.test.successResultOf(d).value

    def thread(self, url_id: str = "https://example.com/a") -> Any:
        d = self.store.upsert_thread(self.tenant.id, url_id, created_ms=self.now_ms(), read_preference=PRIMARY)
        return self.test.successResultOf(d).value

    def post(self, thread_id: str, text: str = "Hello", status: CommentStatus = CommentStatus.APPROVED) -> Any:
        new = NewComment(
            tenant_id=self.tenant.id,
            thread_id=thread_id,
            author_id=self.author,
            display_name="Ann",
            body_source=text,
            body_html="<p>{}</p>".format(text),
            status=status,
            created_ms=self.now_ms(),
        )
        return self.test.successResultOf(self.store.create_comment(new, read_preference=PRIMARY)).value

    @inlineCallbacks
    def run(self, rounds: int = 1) -> Generator[Deferred[Any], Any, None]:
        """Poll and wait until all that was claimed is settled, ``rounds`` times."""
        for _ in range(rounds):
            self.clock.advance(0)
            yield self.worker.poll()
            yield self.worker.when_idle()

    def deliveries(self, hook_id: str, state: DeliveryState) -> list[Any]:
        page = self.store.list_webhook_deliveries(
            self.tenant.id, hook_id, state=state, limit=100, cursor=None, read_preference=PRIMARY
        )
        return list(self.test.successResultOf(page).items)


def _cfg(**kwargs: Any) -> WebhooksConfig:
    values: dict[str, Any] = dict(allow_private_targets=True, timeout_seconds=5.0, lease_seconds=30.0)
    values.update(kwargs)
    return WebhooksConfig(**values)


class DeliveryTests(TestCase):
    """Deliveries reach a real receiver, signed, and every misbehaviour of
    the receiver is a counted, retried (or final) failure."""

    @inlineCallbacks
    def start(
        self, behave: Any = None, cfg: WebhooksConfig | None = None
    ) -> Generator[Deferred[Any], Any, tuple[_Harness, Receiver, str]]:
        node = _Harness(self, cfg or _cfg())
        receiver = Receiver(secret=SECRET, now=node.clock.seconds)
        if behave is not None:
            receiver.behave = behave
        port = yield receiver.start(self)
        return node, receiver, "http://127.0.0.1:{}/hook".format(port)

    @inlineCallbacks
    def test_signed_delivery(self) -> Generator[Deferred[Any], Any, None]:
        """A comment posted reaches the receiver once: a versioned JSON
        body, the event id and timestamp headers, and a signature the
        receiver verifies (here also recomputed by hand); the outbox is
        then empty and the delivery is counted."""
        node, receiver, url = yield self.start()
        hook = node.hook(url, [WebhookEvent.COMMENT_CREATED])
        thread = node.thread()
        comment = node.post(thread.id, "Fine article")
        yield node.run()
        (got,) = receiver.got
        self.assertTrue(got.verified)
        event = got.event
        self.assertEqual(
            {k: event[k] for k in ("version", "type", "tenantId", "webhookId")},
            {"version": 1, "type": "comment.created", "tenantId": node.tenant.id, "webhookId": hook.id},
        )
        self.assertEqual(event["data"]["comment"]["text"], "Fine article")
        self.assertEqual(event["data"]["comment"]["id"], comment.id)
        self.assertEqual(got.headers["fastedge-event-id"], event["id"])
        self.assertEqual(got.headers["fastedge-event-type"], "comment.created")
        timestamp = got.headers["fastedge-timestamp"]
        self.assertEqual(int(timestamp), int(START))
        self.assertEqual(
            got.headers["fastedge-signature"],
            "t={},v1={}".format(timestamp, signature(SECRET, int(timestamp), got.body)),
        )
        self.assertEqual(node.deliveries(hook.id, DeliveryState.PENDING), [])
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_deliveries_total", result="delivered"), 1)
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_attempts_total", outcome="delivered"), 1)
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_latency_seconds_count"), 1)

    @inlineCallbacks
    def test_order_and_spam(self) -> Generator[Deferred[Any], Any, None]:
        """Events of one endpoint arrive in the order of the changes; a
        comment marked spam reaches the endpoint only as ``comment.marked_spam``."""
        node, receiver, url = yield self.start()
        node.hook(url)
        thread = node.thread()
        first = node.post(thread.id, "one")
        node.post(thread.id, "Buy pills", status=CommentStatus.SPAM)
        node.test.successResultOf(
            node.store.moderate(
                node.tenant.id,
                ModerationAction.SPAM,
                [first.id],
                actor="mod",
                reason="ads",
                created_ms=node.now_ms(),
                read_preference=PRIMARY,
            )
        )
        yield node.run(rounds=6)
        self.assertEqual(
            [r.event["type"] for r in receiver.got],
            ["thread.created", "comment.created", "comment.marked_spam", "comment.marked_spam"],
        )
        self.assertTrue(all(r.verified for r in receiver.got))

    @inlineCallbacks
    def test_no_cookies(self) -> Generator[Deferred[Any], Any, None]:
        """A receiver's ``Set-Cookie`` is never sent back, to it or to any
        other endpoint on its host (another tenant's, perhaps)."""

        def behave(received: Received, request: Request) -> int:
            request.addCookie(b"session", b"tenant-a-secret", path=b"/")
            return 200

        node, receiver, url = yield self.start(behave)
        node.hook(url, [WebhookEvent.THREAD_CREATED])
        node.hook(url + "/other", [WebhookEvent.THREAD_CREATED])
        node.thread()
        node.thread("https://example.com/b")
        yield node.run(rounds=4)
        self.assertEqual(len(receiver.got), 4)
        self.assertEqual([r.headers.get("cookie") for r in receiver.got], [None] * 4)

    @inlineCallbacks
    def test_500_is_retried_with_backoff(self) -> Generator[Deferred[Any], Any, None]:
        """A 500 is a failed attempt retried later (not before its time),
        with the same event id and body; the second attempt delivers."""
        answers = [500, 200]
        node, receiver, url = yield self.start(lambda received, request: answers.pop(0))
        hook = node.hook(url, [WebhookEvent.THREAD_CREATED])
        node.thread()
        yield node.run()
        (pending,) = node.deliveries(hook.id, DeliveryState.PENDING)
        self.assertEqual((pending.attempts, pending.last_status), (1, 500))
        self.assertEqual(pending.last_error, "HTTP 500: ok")
        # Equal jitter: the first retry waits 5 to 10 seconds.
        self.assertGreaterEqual(pending.next_attempt_ms, node.now_ms() + 5000)
        self.assertLessEqual(pending.next_attempt_ms, node.now_ms() + 10000)
        yield node.run()
        self.assertEqual(len(receiver.got), 1)
        node.clock.advance(10)
        yield node.run()
        self.assertEqual(len(receiver.got), 2)
        self.assertEqual(receiver.got[0].headers["fastedge-event-id"], receiver.got[1].headers["fastedge-event-id"])
        self.assertEqual(receiver.got[0].body, receiver.got[1].body)
        self.assertEqual(receiver.got[1].headers["fastedge-attempt"], "2")
        self.assertEqual(node.deliveries(hook.id, DeliveryState.PENDING), [])
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_attempts_total", outcome="http_error"), 1)
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_retries_scheduled_total"), 1)

    @inlineCallbacks
    def test_retries_end_after_the_window(self) -> Generator[Deferred[Any], Any, None]:
        """Past the retry window the delivery fails for good and is listed
        as failed."""
        node, receiver, url = yield self.start(lambda r, q: 503, _cfg(retry_window_seconds=60.0))
        hook = node.hook(url, [WebhookEvent.THREAD_CREATED])
        node.thread()
        for _ in range(8):
            yield node.run()
            node.clock.advance(20)
        (failed,) = node.deliveries(hook.id, DeliveryState.FAILED)
        self.assertEqual(failed.last_status, 503)
        self.assertLessEqual(len(receiver.got), 5)
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_deliveries_total", result="failed"), 1)

    @inlineCallbacks
    def test_410_disables_at_once(self) -> Generator[Deferred[Any], Any, None]:
        """A 410 turns the endpoint off at once, with the reason the tenant
        sees; its other deliveries fail with it and nothing more is sent."""
        node, receiver, url = yield self.start(lambda r, q: 410)
        hook = node.hook(url, [WebhookEvent.THREAD_CREATED])
        node.thread()
        node.thread("https://example.com/b")
        yield node.run(rounds=2)
        self.assertEqual(len(receiver.got), 1)
        endpoint = node.test.successResultOf(node.store.get_webhook(node.tenant.id, hook.id, read_preference=PRIMARY))
        self.assertFalse(endpoint.active)
        self.assertEqual(endpoint.disabled_reason, "the receiver answered 410 Gone")
        self.assertEqual(len(node.deliveries(hook.id, DeliveryState.FAILED)), 2)
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_endpoints_disabled_total"), 1)

    @inlineCallbacks
    def test_consecutive_failures_disable(self) -> Generator[Deferred[Any], Any, None]:
        """``disable_after_failures`` failed attempts in a row turn the
        endpoint off, saying why."""
        node, receiver, url = yield self.start(lambda r, q: 500, _cfg(disable_after_failures=2))
        hook = node.hook(url, [WebhookEvent.THREAD_CREATED])
        node.thread()
        yield node.run()
        node.clock.advance(3600)
        yield node.run()
        endpoint = node.test.successResultOf(node.store.get_webhook(node.tenant.id, hook.id, read_preference=PRIMARY))
        self.assertFalse(endpoint.active)
        self.assertIn("2 attempts in a row failed; the last: HTTP 500", endpoint.disabled_reason)

    @inlineCallbacks
    def test_redirect_not_followed(self) -> Generator[Deferred[Any], Any, None]:
        """A redirect is a failed attempt: its target is never asked."""

        def behave(received: Received, request: Request) -> int:
            if received.path == "/hook":
                request.setHeader(b"location", b"/elsewhere")
                return 307
            return 200

        node, receiver, url = yield self.start(behave)
        hook = node.hook(url, [WebhookEvent.THREAD_CREATED])
        node.thread()
        yield node.run()
        self.assertEqual([r.path for r in receiver.got], ["/hook"])
        (pending,) = node.deliveries(hook.id, DeliveryState.PENDING)
        self.assertEqual(pending.last_error, "HTTP 307 (redirects are not followed)")
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_attempts_total", outcome="redirect"), 1)

    @inlineCallbacks
    def test_hanging_receivers_are_bounded(self) -> Generator[Deferred[Any], Any, None]:
        """Receivers that never answer hold at most ``max_in_flight``
        connections, one per endpoint, until the deadline: then each
        attempt is a counted timeout, its connection is closed, and the
        room goes to the next endpoints; a stop aborts what is open."""
        node, receiver, url = yield self.start(lambda r, q: None, _cfg(max_in_flight=2))
        hooks = [node.hook(url + str(n), [WebhookEvent.THREAD_CREATED]) for n in range(4)]
        node.thread()
        node.thread("https://example.com/b")

        @inlineCallbacks
        def hanging(n: int) -> Generator[Deferred[Any], Any, None]:
            while len(receiver.hanging) < n:
                yield receiver.next_request()

        node.clock.advance(0)
        yield node.worker.poll()
        yield hanging(2)
        yield node.worker.poll()
        self.assertEqual(node.worker.in_flight, 2)
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_in_flight"), 2)
        self.assertEqual(len({r.path for r in receiver.got}), 2)
        first = [r.notifyFinish() for r in receiver.hanging]
        node.clock.advance(5)
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_attempts_total", outcome="timeout"), 2)
        for d in first:
            yield self.assertFailure(d, Exception)
        # The room went to the two other endpoints, and no more.
        yield hanging(4)
        self.assertEqual(node.worker.in_flight, 2)
        self.assertEqual(len({r.path for r in receiver.got}), 4)
        waiting = [d for h in hooks for d in node.deliveries(h.id, DeliveryState.PENDING) if d.attempts]
        self.assertEqual([d.last_error for d in waiting], ["no answer within 5 seconds"] * 2)
        second = [r.notifyFinish() for r in receiver.hanging[2:]]
        yield node.worker.stop()
        for d in second:
            yield self.assertFailure(d, Exception)
        self.assertEqual(node.worker.in_flight, 0)
        # Released, not failed: due again at once for whichever node claims.
        released = [d for h in hooks for d in node.deliveries(h.id, DeliveryState.PENDING) if not d.attempts]
        self.assertEqual(len(released), 6)

    @inlineCallbacks
    def test_endless_body_is_cut(self) -> Generator[Deferred[Any], Any, None]:
        """A receiver that answers 200 with an endless body (as good as
        10 GB) is delivered to; the node reads ``max_response_bytes`` and
        drops the connection."""
        written = []

        def behave(received: Received, request: Request) -> None:
            request.setResponseCode(200)
            request.setHeader(b"content-length", str(10 * 1024**3).encode())
            chunk = b"x" * 65536

            def more() -> None:
                if request.channel is None or request.finished or request._disconnected:
                    return
                request.write(chunk)
                written.append(len(chunk))
                reactor.callLater(0, more)

            more()
            return None

        node, receiver, url = yield self.start(behave, _cfg(max_response_bytes=1024))
        hook = node.hook(url, [WebhookEvent.THREAD_CREATED])
        node.thread()
        closed = receiver.next_request().addCallback(lambda _: receiver.hanging[0].notifyFinish())
        yield node.run()
        yield closed.addErrback(lambda f: None)
        self.assertEqual(node.deliveries(hook.id, DeliveryState.PENDING), [])
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_deliveries_total", result="delivered"), 1)
        self.assertLess(sum(written), 64 * 1024 * 1024)
        receiver.hanging.clear()

    @inlineCallbacks
    def test_reset_is_retried(self) -> Generator[Deferred[Any], Any, None]:
        """A receiver that resets the connection instead of answering is a
        counted connection error, retried later."""

        def behave(received: Received, request: Request) -> None:
            request.transport.abortConnection()  # type: ignore[union-attr]
            return None

        node, receiver, url = yield self.start(behave)
        hook = node.hook(url, [WebhookEvent.THREAD_CREATED])
        node.thread()
        yield node.run()
        (pending,) = node.deliveries(hook.id, DeliveryState.PENDING)
        self.assertEqual(pending.attempts, 1)
        self.assertIn("the connection failed", pending.last_error)
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_attempts_total", outcome="connection_error"), 1)
        receiver.hanging.clear()


class ProxyTests(TestCase):
    """With ``[webhooks] proxy``, every request goes through the proxy."""

    @inlineCallbacks
    def test_every_delivery_through_the_proxy(self) -> Generator[Deferred[Any], Any, None]:
        """Several deliveries to two http endpoints all pass through a real
        forwarding proxy on loopback (absolute-form requests), arrive
        verified, and none went around it."""
        proxy = ForwardingProxy()
        proxy_port = yield proxy.start(self)
        node = _Harness(self, _cfg(proxy="http://127.0.0.1:{}".format(proxy_port)))
        receiver = Receiver(secret=SECRET, now=node.clock.seconds)
        port = yield receiver.start(self)
        urls = ["http://127.0.0.1:{}/a".format(port), "http://127.0.0.1:{}/b".format(port)]
        for url in urls:
            node.hook(url, [WebhookEvent.COMMENT_CREATED])
        thread = node.thread()
        for n in range(3):
            node.post(thread.id, "c{}".format(n))
        yield node.run(rounds=4)
        self.assertEqual(len(receiver.got), 6)
        self.assertTrue(all(r.verified for r in receiver.got))
        self.assertEqual(sorted(proxy.seen), sorted([("POST", url) for url in urls for _ in range(3)]))
        for p in proxy.open:
            p.transport.loseConnection()

    @inlineCallbacks
    def test_https_through_connect(self) -> Generator[Deferred[Any], Any, None]:
        """An https endpoint is reached through a CONNECT tunnel of the
        proxy, to the address the node resolved and checked (not the name),
        with TLS inside the tunnel verified for the endpoint's host name."""
        import datetime

        from twisted.internet import ssl
        from twisted.internet.endpoints import SSL4ServerEndpoint
        from twisted.web.client import BrowserLikePolicyForHTTPS
        from twisted.web.server import Site

        from fastedge.http.certs import self_signed_pem

        pem = self_signed_pem("hooks.test", datetime.datetime.now(datetime.UTC))
        proxy = ForwardingProxy()
        proxy_port = yield proxy.start(self)
        asked = []

        def resolve(host: str, port: int) -> Deferred[list[Any]]:
            asked.append(host)
            return succeed([ipaddress.ip_address("127.0.0.1")])

        tls = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(pem))
        node = _Harness(self, _cfg(proxy="http://127.0.0.1:{}".format(proxy_port)), resolve=resolve, tls=tls)
        receiver = Receiver(secret=SECRET, now=node.clock.seconds)
        options = ssl.PrivateCertificate.loadPEM(pem).options()
        listening = yield SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(Site(receiver))
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        node.hook("https://hooks.test:{}/in".format(port), [WebhookEvent.THREAD_CREATED])
        node.thread()
        node.thread("https://example.com/b")
        yield node.run(rounds=3)
        self.assertEqual(len(receiver.got), 2)
        self.assertTrue(all(r.verified for r in receiver.got))
        # One tunnel, kept for the second delivery (the pool's idle connection).
        self.assertEqual(asked, ["hooks.test"])
        self.assertEqual(proxy.seen, [("CONNECT", "127.0.0.1:{}".format(port))])
        for p in proxy.open:
            p.transport.loseConnection()


class ForgeryTests(TestCase):
    """Addresses inside are refused at send time unless allowed."""

    @inlineCallbacks
    def test_private_targets_refused_at_send_time(self) -> Generator[Deferred[Any], Any, None]:
        """With ``allow_private_targets`` off, a name that resolves (when
        sending) to loopback, an IPv4-mapped loopback, a private or a
        link-local address is refused before any connection: the receiver
        hears nothing, the attempt is counted as refused and retried."""
        answers = {
            "plain.test": ["127.0.0.1"],
            "mapped.test": ["::ffff:127.0.0.1"],
            "mixed.test": ["93.184.216.34", "10.1.2.3"],
            "link.test": ["fe80::1"],
        }

        def resolve(host: str, port: int) -> Deferred[list[Any]]:
            return succeed([ipaddress.ip_address(a) for a in answers[host]])

        node = _Harness(self, _cfg(allow_private_targets=False), resolve=resolve)
        receiver = Receiver(secret=SECRET, now=node.clock.seconds)
        port = yield receiver.start(self)
        hooks = [node.hook("http://{}:{}/hook".format(name, port), [WebhookEvent.THREAD_CREATED]) for name in answers]
        literal = node.hook("http://127.0.0.1:{}/hook".format(port), [WebhookEvent.THREAD_CREATED])
        node.thread()
        yield node.run()
        self.assertEqual(receiver.got, [])
        errors = {}
        for hook in hooks + [literal]:
            (pending,) = node.deliveries(hook.id, DeliveryState.PENDING)
            errors[hook.url.split("/")[2].split(":")[0]] = pending.last_error
        self.assertEqual(
            errors,
            {
                "plain.test": "refused: plain.test resolves to a loopback address (127.0.0.1)",
                "mapped.test": "refused: mapped.test resolves to a loopback address (::ffff:7f00:1)",
                "mixed.test": "refused: mixed.test resolves to a private address (10.1.2.3)",
                "link.test": "refused: link.test resolves to a link-local address (fe80::1)",
                "127.0.0.1": "refused: 127.0.0.1 resolves to a loopback address (127.0.0.1)",
            },
        )
        self.assertEqual(_metric(node.registry, "fastedge_webhooks_attempts_total", outcome="refused"), 5)
