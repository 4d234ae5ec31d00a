"""Tests for :mod:`fastedge.http.accesslog`: the line formats, the
redaction of credentials, and the buffer (when lines are written, how many
may wait, what a stop writes) on a Clock with an inline or held runner."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from fastedge.http.accesslog import (
    SECRET_PARAMS,
    AccessLog,
    Record,
    format_combined,
    format_json,
    redact_target,
)
from fastedge.testing.fakes import HeldRunner, run_inline

#: 2026-12-06T05:56:16.250Z
STARTED = 1796536576.25


def record(**changes: Any) -> Record:
    fields: dict[str, Any] = dict(
        started=STARTED,
        client=IPv4Address("TCP", "192.0.2.7", 40000),
        method=b"GET",
        target=b"/api/v1/t1/comments?urlId=https%3A%2F%2Fa.test%2F",
        version=b"HTTP/1.1",
        proto="h1",
        status=200,
        size=512,
        referer=None,
        agent=b"curl/8.5.0",
        seconds=0.0125,
        route="/api/v1/{tenant}/comments",
        tenant="t1",
        messages=None,
    )
    fields.update(changes)
    return tuple(fields.values())  # type: ignore[return-value]


class RedactTests(SynchronousTestCase):
    """:func:`redact_target`."""

    def test_examples(self) -> None:
        """Credential parameters lose their values, whatever their case or
        percent-encoding; other parameters and the path are kept; API keys
        are hidden anywhere."""
        self.assertEqual(
            redact_target(b"/live/events?tenant=t&urlId=u&viewer=abc.def&since=3"),
            b"/live/events?tenant=t&urlId=u&viewer=REDACTED&since=3",
        )
        self.assertEqual(
            redact_target(b"/x?Token=a&%76iewer=b&api_key=c"), b"/x?Token=REDACTED&%76iewer=REDACTED&api_key=REDACTED"
        )
        self.assertEqual(redact_target(b"/x?note=fe_abcdefghijKLMNOP_123"), b"/x?note=fe_REDACTED")
        self.assertEqual(redact_target(b"/media/t/fe_0123456789abcdef.png"), b"/media/t/fe_REDACTED.png")
        self.assertEqual(redact_target(b"/healthz"), b"/healthz")
        self.assertEqual(redact_target(b"/x?viewer"), b"/x?viewer")

    @given(
        name=st.sampled_from(sorted(SECRET_PARAMS)),
        upper=st.booleans(),
        secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-~%", min_size=1, max_size=40),
        before=st.lists(st.sampled_from([b"tenant=t", b"urlId=u", b"since=4", b"a", b""]), max_size=3),
        after=st.lists(st.sampled_from([b"epoch=e", b"limit=5", b""]), max_size=3),
    )
    def test_secret_values_never_kept(
        self, name: bytes, upper: bool, secret: str, before: list[bytes], after: list[bytes]
    ) -> None:
        """For any credential parameter anywhere in the query, its value is
        not in the result, and every other parameter is unchanged."""
        marked = b"S3CRET" + secret.encode()
        param = (name.upper() if upper else name) + b"=" + marked
        target = b"/p?" + b"&".join(before + [param] + after)
        redacted = redact_target(target)
        self.assertNotIn(marked, redacted)
        self.assertEqual(redacted, b"/p?" + b"&".join(before + [param.split(b"=")[0] + b"=REDACTED"] + after))


class FormatTests(SynchronousTestCase):
    """:func:`format_combined` and :func:`format_json`."""

    def test_combined(self) -> None:
        """The combined format (Apache/nginx field order), then the key=value
        fields; ``msgs`` only for live sessions."""
        self.assertEqual(
            format_combined(record()),
            '192.0.2.7 - - [06/Dec/2026:05:56:16 +0000] "GET /api/v1/t1/comments?urlId=https%3A%2F%2Fa.test%2F '
            'HTTP/1.1" 200 512 "-" "curl/8.5.0" rt=0.012500 proto=h1 route="/api/v1/{tenant}/comments" tenant=t1\n',
        )
        line = format_combined(record(proto="ws", status=101, target=b"/live", tenant=None, messages=7, size=0))
        self.assertTrue(
            line.endswith(
                '"GET /live HTTP/1.1" 101 - "-" "curl/8.5.0" rt=0.012500 proto=ws route="/api/v1/{tenant}/comments" tenant=- msgs=7\n'
            ),
            line,
        )

    def test_combined_escapes(self) -> None:
        """Quotes, backslashes, control and non-ASCII bytes in client-sent
        fields are escaped as \\xHH: one line per request, always ASCII."""
        line = format_combined(record(agent=b'evil"\n\\\xff', referer=b"https://r.test/?token=t0k&x=1"))
        self.assertIn('"https://r.test/?token=REDACTED&x=1" "evil\\x22\\x0A\\x5C\\xFF"', line)
        self.assertEqual(line.count("\n"), 1)
        line.encode("ascii")

    def test_json(self) -> None:
        """A JSON object per line with the documented fields."""
        doc = json.loads(format_json(record(proto="sse", messages=3, referer=b"https://r.test/?viewer=v")))
        self.assertEqual(
            doc,
            {
                "time": "2026-12-06T05:56:16.250Z",
                "client": "192.0.2.7",
                "method": "GET",
                "target": "/api/v1/t1/comments?urlId=https%3A%2F%2Fa.test%2F",
                "httpVersion": "HTTP/1.1",
                "protocol": "sse",
                "status": 200,
                "bytes": 512,
                "referer": "https://r.test/?viewer=REDACTED",
                "userAgent": "curl/8.5.0",
                "durationSeconds": 0.0125,
                "route": "/api/v1/{tenant}/comments",
                "tenant": "t1",
                "messages": 3,
            },
        )


class BufferTests(SynchronousTestCase):
    """:class:`AccessLog` as a service, on a Clock."""

    def make(self, run: Any = run_inline, **kwargs: Any) -> tuple[AccessLog, Clock, str]:
        clock = Clock()
        path = os.path.join(os.path.abspath(self.mktemp()), "logs", "access.log")
        log = AccessLog("combined", path, reactor=clock, registry=CollectorRegistry(), run=run, **kwargs)
        log.startService()
        return log, clock, path

    def stop(self, log: AccessLog, clock: Clock) -> None:
        d = log.stopService()
        clock.advance(0)
        self.successResultOf(d)

    def lines(self, path: str) -> list[str]:
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return f.read().splitlines()

    def test_written_on_the_timer(self) -> None:
        """A line waits in memory until the flush timer fires, then is
        appended (the directory is created)."""
        log, clock, path = self.make(flush_seconds=1.0)
        log.add(record())
        self.assertEqual(self.lines(path), [])
        clock.advance(1.0)
        self.assertEqual(len(self.lines(path)), 1)
        self.assertEqual(log.metrics.lines._value.get(), 1)
        self.stop(log, clock)

    def test_written_when_enough_wait(self) -> None:
        """``flush_lines`` waiting are handed over in the next reactor turn,
        before the timer."""
        log, clock, path = self.make(flush_seconds=60.0, flush_lines=3)
        for _ in range(3):
            log.add(record())
        clock.advance(0)
        self.assertEqual(len(self.lines(path)), 3)
        self.stop(log, clock)

    def test_bounded_when_the_disk_is_behind(self) -> None:
        """While the writer is stuck, at most ``max_pending_lines`` wait;
        the rest are dropped and counted, and the writer catches up."""
        held = HeldRunner()
        log, clock, path = self.make(run=held, flush_lines=2, max_pending_lines=5)
        held.holding = True
        for _ in range(8):
            log.add(record())
            clock.advance(0)
        self.assertEqual(log.metrics.dropped._value.get(), 3)
        held.holding = False
        held.release()
        clock.advance(1.0)
        self.assertEqual(len(self.lines(path)), 5)
        self.stop(log, clock)

    def test_stop_writes_the_rest(self) -> None:
        """Stopping waits for the drain, writes what waits, closes the file;
        a line after that is dropped and counted, never written."""
        log, clock, path = self.make(flush_seconds=60.0)
        log.add(record())
        d = log.stopService()
        clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(len(self.lines(path)), 1)
        log.add(record())
        clock.advance(120)
        self.assertEqual(len(self.lines(path)), 1)
        self.assertEqual(log.metrics.dropped._value.get(), 1)

    def test_reopened_after_rotation(self) -> None:
        """When logrotate moves the file away, the next batch goes to a new
        file at the configured path."""
        log, clock, path = self.make()
        log.add(record())
        clock.advance(1.0)
        os.rename(path, path + ".1")
        log.add(record(status=404))
        clock.advance(1.0)
        self.assertEqual(len(self.lines(path + ".1")), 1)
        (line,) = self.lines(path)
        self.assertIn('" 404 ', line)
        self.stop(log, clock)

    def test_session_line(self) -> None:
        """A live session's line is written when it ends, with its duration,
        messages, bytes and tenants; ending twice writes one line."""
        log, clock, path = self.make()

        class Upgrade:
            requestHeaders = Headers({b"user-agent": [b"ua"]})
            method = b"GET"
            uri = b"/live"
            clientproto = b"HTTP/1.1"
            route = "/live"

            def getClientAddress(self) -> Any:
                return IPv4Address("TCP", "198.51.100.9", 5555)

        session = log.session(Upgrade(), "ws", clock.seconds())
        clock.advance(30)
        session.messages, session.bytes = 4, 400
        session.tenants.update({"tb", "ta"})
        session.end(101)
        session.end(101)
        clock.advance(1)
        (line,) = self.lines(path)
        self.assertTrue(
            line.startswith(
                '198.51.100.9 - - [01/Jan/1970:00:00:00 +0000] "GET /live HTTP/1.1" 101 400 "-" "ua" rt=30.000000 proto=ws'
            ),
            line,
        )
        self.assertTrue(line.endswith('route="/live" tenant=ta,tb msgs=4'), line)
        self.stop(log, clock)

    def test_stop_waits_for_the_drain(self) -> None:
        """The stop writes the last lines once the connections have drained,
        or after ``drain_seconds`` if some stay open; the drain firing later
        changes nothing."""
        idle: Deferred[None] = Deferred()
        log, clock, path = self.make(flush_seconds=60.0, drained=lambda: idle, drain_seconds=10.0)
        log.add(record())
        d = log.stopService()
        clock.advance(5)
        log.add(record(status=204))  # a request that finished while draining
        self.assertNoResult(d)
        clock.advance(5)
        clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(len(self.lines(path)), 2)
        idle.callback(None)
