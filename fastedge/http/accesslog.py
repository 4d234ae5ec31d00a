# -*- test-case-name: tests.unit.http.test_accesslog -*-
"""The access log: one line per HTTP request, and one per WebSocket or SSE
session when it ends (``docs/access-log.md`` documents both formats).

Off the hot path: a finished request costs one tuple appended to a list on
the reactor thread. Every ``flush_seconds`` (or sooner, once
``flush_lines`` are waiting) the list is handed, whole, to one writer
thread that formats the lines, redacts secrets and appends them to the
file; the reactor never waits on the disk. If the disk falls so far behind
that ``max_pending_lines`` wait, further lines are dropped and counted in
``fastedge_http_access_log_dropped_total`` rather than growing memory.

What is never written: cookies, the ``Authorization`` header, and secrets
in the request target or the ``Referer``: the values of query parameters
that carry credentials (``viewer=`` live tokens, ``token``, ``api_key``,
``X-Amz-Signature`` ...) become ``REDACTED``, and anything shaped like a
fastedge API key (``fe_...``) anywhere in them becomes ``fe_REDACTED``.

The file is reopened when it was moved away (``logrotate`` without
``copytruncate``): each batch checks the path's inode.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

__all__ = ["AccessLog", "Record", "Session", "format_combined", "format_json", "redact_target"]

#: What one line is made of, captured on the reactor thread:
#: ``(started, client, method, target, http_version, protocol, status,
#: bytes, referer, user_agent, seconds, route, tenant, messages)``; the
#: client is an address object (``IPv4Address``, ...).
#: ``messages`` is ``None`` for plain requests.
Record = tuple[
    float, Any, bytes, bytes, bytes, str, int, int, bytes | None, bytes | None, float, str, str | None, int | None
]

#: Query parameters whose values are credentials (compared lower-case).
SECRET_PARAMS = frozenset(
    {
        b"viewer",
        b"token",
        b"access_token",
        b"id_token",
        b"refresh_token",
        b"apikey",
        b"api_key",
        b"api-key",
        b"secret",
        b"password",
        b"auth",
        b"authorization",
        b"session",
        b"sig",
        b"signature",
        b"x-amz-signature",
        b"x-amz-credential",
        b"x-amz-security-token",
        b"code",
    }
)
_API_KEY = re.compile(rb"fe_[A-Za-z0-9_-]{8,}")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UNSAFE = re.compile(rb'[\x00-\x1f\x7f-\xff"\\]')
_SAFE = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')


def redact_target(target: bytes) -> bytes:
    """A request target (or URL) with its credentials replaced.

    >>> redact_target(b"/live/events?tenant=t&viewer=abc.def")
    b'/live/events?tenant=t&viewer=REDACTED'
    """
    if b"fe_" in target:
        target = _API_KEY.sub(b"fe_REDACTED", target)
    path, sep, query = target.partition(b"?")
    if not sep:
        return target
    params = query.split(b"&")
    for param in params:
        # Most targets hold no credential: look before building anything.
        if _is_secret(param):
            break
    else:
        return target
    return (
        path
        + b"?"
        + b"&".join(param.partition(b"=")[0] + b"=REDACTED" if _is_secret(param) else param for param in params)
    )


def _is_secret(param: bytes) -> bool:
    name, eq, _ = param.partition(b"=")
    if not eq:
        return False
    if name.lower() in SECRET_PARAMS:
        return True
    return (b"%" in name or b"+" in name) and _param_name(name) in SECRET_PARAMS


def _param_name(raw: bytes) -> bytes:
    """A query parameter's name, percent-decoded and lower-cased (so
    ``%76iewer`` is still ``viewer``)."""
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(raw.replace(b"+", b" ")).lower()


def _escape(value: bytes) -> str:
    """Bytes for a quoted field of the combined format: quotes, backslashes,
    control and non-ASCII bytes as ``\\xHH`` (as nginx does)."""
    if not value.translate(None, _SAFE):
        # Nothing but safe bytes (the common case; bytes.translate is C).
        return value.decode("ascii")
    return _UNSAFE.sub(lambda m: b"\\x%02X" % m.group()[0], value).decode("ascii")


_last_second = -1
_last_clf = ""


def _clf_time(started: float) -> str:
    # One formatting per second: a busy node logs thousands of lines in it.
    # (Called in the writer thread only.)
    global _last_second, _last_clf
    second = int(started)
    if second != _last_second:
        t = time.gmtime(second)
        _last_clf = "{:02d}/{}/{:04d}:{:02d}:{:02d}:{:02d} +0000".format(
            t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec
        )
        _last_second = second
    return _last_clf


_last_iso_second = -1
_last_iso = ""


def _iso_time(started: float) -> str:
    global _last_iso_second, _last_iso
    second = int(started)
    if second != _last_iso_second:
        _last_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_iso_second = second
    return "%s.%03dZ" % (_last_iso, int((started - second) * 1000))


def format_combined(record: Record) -> str:
    """The combined log format, then ``key=value`` fields:
    ``rt`` (seconds), ``proto`` (h1, h2, ws, sse), ``route``, ``tenant``
    and, for live sessions, ``msgs`` (messages sent)."""
    started, client, method, target, version, proto, status, size, referer, agent, seconds, route, tenant, msgs = record
    line = '%s - - [%s] "%s %s %s" %d %s "%s" "%s" rt=%.6f proto=%s route="%s" tenant=%s' % (
        _host(client),
        _clf_time(started),
        _escape(method),
        _escape(redact_target(target)),
        _escape(version),
        status,
        size if size else "-",
        _escape(redact_target(referer)) if referer else "-",
        _escape(agent) if agent else "-",
        seconds,
        proto,
        route if route.isascii() and '"' not in route else _escape(route.encode("utf-8", "replace")),
        tenant or "-",
    )
    if msgs is not None:
        return line + " msgs=%d\n" % msgs
    return line + "\n"


def format_json(record: Record) -> str:
    """One JSON object per line (``docs/access-log.md`` lists the fields)."""
    started, client, method, target, version, proto, status, size, referer, agent, seconds, route, tenant, msgs = record
    doc: dict[str, Any] = {
        "time": _iso_time(started),
        "client": _host(client) if client is not None else None,
        "method": method.decode("latin-1"),
        "target": redact_target(target).decode("latin-1"),
        "httpVersion": version.decode("latin-1"),
        "protocol": proto,
        "status": status,
        "bytes": size,
        "referer": redact_target(referer).decode("latin-1") if referer else None,
        "userAgent": agent.decode("latin-1") if agent else None,
        "durationSeconds": round(seconds, 6),
        "route": route,
        "tenant": tenant,
    }
    if msgs is not None:
        doc["messages"] = msgs
    return json.dumps(doc, separators=(",", ":")) + "\n"


FORMATS: dict[str, Callable[[Record], str]] = {"combined": format_combined, "json": format_json}


class AccessLogMetrics:
    """Lines written and dropped, and failed writes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lines = Counter(
            "fastedge_http_access_log_lines_total",
            "Access log lines written.",
            registry=registry,
        )
        self.dropped = Counter(
            "fastedge_http_access_log_dropped_total",
            "Access log lines dropped: the writer was http.max_pending_lines behind, or the node was stopping.",
            registry=registry,
        )
        self.write_errors = Counter(
            "fastedge_http_access_log_write_errors_total",
            "Batches of access log lines that could not be written (the lines are lost).",
            registry=registry,
        )


class Session:
    """A WebSocket or SSE session's line, written when it ends.

    Made from the HTTP request that opened it (:meth:`AccessLog.session`);
    the transport counts what it sends (:meth:`sent`), names the tenants it
    served (:attr:`tenants`), and calls :meth:`end` once.
    """

    __slots__ = ("_log", "_head", "messages", "bytes", "tenants", "_ended")

    def __init__(self, log: AccessLog, head: tuple[Any, ...]) -> None:
        self._log = log
        self._head = head
        self.messages = 0
        self.bytes = 0
        self.tenants: set[str] = set()
        self._ended = False

    def sent(self, n: int) -> None:
        """One message of ``n`` bytes went to the client (0: none did)."""
        if n:
            self.messages += 1
            self.bytes += n

    def end(self, status: int) -> None:
        """The session is over: write its line (once)."""
        if self._ended:
            return
        self._ended = True
        started, client, method, target, version, proto, referer, agent, route = self._head
        tenant = ",".join(sorted(self.tenants)) or None
        seconds = max(0.0, self._log.now() - started)
        self._log.add(
            (
                started,
                client,
                method,
                target,
                version,
                proto,
                status,
                self.bytes,
                referer,
                agent,
                seconds,
                route,
                tenant,
                self.messages,
            )
        )


class AccessLog(Service):
    """The access log of one node (``[log]`` in the config).

    :param fmt: ``combined`` or ``json``.
    :param path: the file lines are appended to (created if missing).
    :param reactor: the clock for timestamps and the flush timer.
    :param flush_seconds: lines wait at most this long before they are
        handed to the writer thread (``flush_lines`` waiting: at once).
    :param max_pending_lines: lines waiting or being written, at most; more
        are dropped (and counted).
    :param drained: fires once the listeners' connections are closed, which
        the stop waits for (at most ``drain_seconds``) before the last write.
    :param run: runs the blocking writes (tests: ``fastedge.testing.fakes.run_inline``);
        default: a thread of the log's own, started with the first line.
    """

    _log = Logger()

    def __init__(
        self,
        fmt: str,
        path: str,
        *,
        reactor: Any,
        registry: CollectorRegistry,
        flush_seconds: float = 1.0,
        flush_lines: int = 1024,
        max_pending_lines: int = 100_000,
        drained: Callable[[], Deferred[Any]] | None = None,
        drain_seconds: float = 10.0,
        run: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
    ) -> None:
        self._format = FORMATS[fmt]
        self.path = path
        self._reactor = reactor
        self._flush_seconds = flush_seconds
        self._flush_lines = flush_lines
        self._max_pending = max_pending_lines
        self._pending: list[Record] = []
        self._drained = drained
        self._run = run
        self._drain_seconds = drain_seconds
        #: Set once the last lines are written at stop: later ones are dropped.
        self._stopped = False
        #: Lines handed to the writer thread and not yet written.
        self._in_flight = 0
        self._writes: Deferred[Any] = succeed(None)
        self._flush_soon: Any = None
        self._timer: LoopingCall | None = None
        self._pool: ThreadPool | None = None
        self._file: IO[str] | None = None
        self._inode: int | None = None
        self._file_lock = threading.Lock()
        self.metrics = AccessLogMetrics(registry)

    def now(self) -> float:
        """The reactor's time (seconds since the epoch)."""
        return float(self._reactor.seconds())

    # The hot path

    def add(self, record: Record) -> None:
        """Queue one line (the reactor thread only)."""
        if self._stopped or len(self._pending) + self._in_flight >= self._max_pending:
            self.metrics.dropped.inc()
            return
        pending = self._pending
        pending.append(record)
        if len(pending) >= self._flush_lines and self._flush_soon is None:
            self._flush_soon = self._reactor.callLater(0, self._flush_now)

    def request(self, request: Any, seconds: float, started: float) -> None:
        """Queue the line of a finished HTTP request.

        :param started: when it arrived (the reactor's time).
        """
        headers = request.requestHeaders
        referer = headers.getRawHeaders(b"referer")
        agent = headers.getRawHeaders(b"user-agent")
        version = request.clientproto
        self.add(
            (
                started,
                request.getClientAddress(),
                request.method,
                request.uri,
                version,
                "h2" if version == b"HTTP/2" else "h1",
                request.code,
                request.sentLength,
                referer[0] if referer else None,
                agent[0] if agent else None,
                seconds,
                request.route,
                getattr(request, "tenant_id", None),
                None,
            )
        )

    def session(self, request: Any, proto: str, started: float) -> Session:
        """A :class:`Session` for the live session ``request`` opens.

        :param proto: ``ws`` or ``sse``.
        """
        headers = request.requestHeaders
        referer = headers.getRawHeaders(b"referer")
        agent = headers.getRawHeaders(b"user-agent")
        head = (
            started,
            request.getClientAddress(),
            request.method,
            request.uri,
            request.clientproto,
            proto,
            referer[0] if referer else None,
            agent[0] if agent else None,
            getattr(request, "route", "unmatched"),
        )
        return Session(self, head)

    # Writing, in the writer thread

    def _flush_now(self) -> None:
        self._flush_soon = None
        self.flush()

    def flush(self) -> Deferred[Any]:
        """Hand what is waiting to the writer thread.

        :returns: a Deferred that fires once everything handed so far is
            written.
        """
        batch, self._pending = self._pending, []
        if batch and not self._stopped:
            self._in_flight += len(batch)
            d = self._run_blocking(partial(self._write, batch))
            d.addCallbacks(self._written, self._write_failed, callbackArgs=(len(batch),), errbackArgs=(len(batch),))
            self._writes = d
        return self._writes

    def _run_blocking(self, fn: Callable[[], Any]) -> Deferred[Any]:
        """Run ``fn`` in the writer thread (or the runner given)."""
        if self._run is not None:
            return self._run(fn)
        if self._pool is None:
            # Started with the first line: a node that serves nothing (or a
            # test on a memory reactor) needs no thread.
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="fastedge-access-log")
            self._pool.start()
        return deferToThreadPool(self._reactor, self._pool, fn)

    def _written(self, _: object, count: int) -> None:
        self._in_flight -= count
        self.metrics.lines.inc(count)

    def _write_failed(self, failure: Any, count: int) -> None:
        self._in_flight -= count
        self.metrics.write_errors.inc()
        self._log.failure("could not write {count} access log lines to {path}", failure, count=count, path=self.path)

    def _write(self, batch: list[Record]) -> int:
        text = "".join([self._format(record) for record in batch])
        with self._file_lock:
            f = self._open_file()
            f.write(text)
            f.flush()
        return len(batch)

    def _open_file(self) -> IO[str]:
        """The open file, reopened if the path now names another file (moved
        away by logrotate) or none."""
        f = self._file
        try:
            inode: int | None = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        if f is not None and inode == self._inode:
            return f
        if f is not None:
            f.close()
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        f = self._file = open(self.path, "a", encoding="ascii", errors="backslashreplace")
        self._inode = os.fstat(f.fileno()).st_ino
        return f

    def _close_file(self) -> None:
        with self._file_lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    # Service

    def startService(self) -> None:
        super().startService()
        self._timer = LoopingCall(self._tick)
        self._timer.clock = self._reactor
        self._timer.start(self._flush_seconds, now=False)

    def _tick(self) -> None:
        try:
            self.flush()
        except Exception:
            self._log.failure("access log flush failed")

    def stopService(self) -> Deferred[None]:
        """Wait (at most ``drain_seconds``) for the listeners' connections to
        close, so their last lines are in; then write what is waiting, close
        the file and stop the thread."""
        super().stopService()
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        drained: Deferred[None] = Deferred()
        if self._drained is None:
            drained.callback(None)
        else:
            # Our own Deferred, not the gate's: a timeout must not cancel a
            # Deferred that the connection gate fires later.
            timer = self._reactor.callLater(self._drain_seconds, self._drain_timed_out, drained)

            def idle(result: Any) -> Any:
                if timer.active():
                    timer.cancel()
                if not drained.called:
                    drained.callback(None)
                return result

            self._drained().addBoth(idle)
        drained.addCallback(lambda _: self._finish())
        return drained

    @inlineCallbacks
    def _finish(self) -> Any:
        if self._flush_soon is not None and self._flush_soon.active():
            self._flush_soon.cancel()
        self._flush_soon = None
        if self._pool is not None or self._pending or self._file is not None:
            # The last connection's close is reported from inside its
            # connectionLost, before its request's own notifications ran
            # (an SSE session's end): one more turn lets them add their lines.
            yield deferLater(self._reactor, 0, lambda: None)
            yield self.flush()
            yield self._run_blocking(self._close_file)
        # Lines of anything ending after this are dropped (and counted).
        self._stopped = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    def _drain_timed_out(self, drained: Deferred[None]) -> None:
        self._log.info(
            "access log: connections still open after {seconds} s; writing what is in", seconds=self._drain_seconds
        )
        if not drained.called:
            drained.callback(None)


def _host(address: Any) -> str:
    """The client's address without its port (formatted in the writer
    thread: the request path only keeps the address object)."""
    host = getattr(address, "host", None)
    return str(host) if host else "-"
