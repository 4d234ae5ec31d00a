"""Real loopback peers for webhook tests: a forwarding HTTP proxy (absolute
form and CONNECT) that records what went through it, and a receiver that
verifies signatures and can misbehave on demand.

Both listen on ``127.0.0.1`` port 0 and are stopped by the test's cleanup.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from fastedge.webhooks.signing import BadSignature, verify


class _Pipe(Protocol):
    """The proxy's side towards the target: bytes go back to the client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client.transport.loseConnection()


class _ProxyProtocol(Protocol):
    """One client connection of :class:`ForwardingProxy`.

    ``CONNECT host:port``: a tunnel. Otherwise each request must be in
    absolute form with a ``Content-Length`` body (what an HTTP client sends
    to a proxy): its request line is rewritten to origin form and it is
    forwarded to its host, the answer relayed back byte for byte.
    """

    def __init__(self, proxy: ForwardingProxy) -> None:
        self.proxy = proxy
        self.buffer = b""
        self.target: Any = None
        self.target_key: tuple[str, int] | None = None
        self.tunnel = False
        self.body_left = 0
        self.waiting: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel:
            self._send(data)
            return
        self.buffer += data
        while self.buffer:
            if self.body_left:
                chunk, self.buffer = self.buffer[: self.body_left], self.buffer[self.body_left :]
                self.body_left -= len(chunk)
                self._send(chunk)
                continue
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.buffer = rest
            self._request(head)
            if self.tunnel:
                if self.buffer:
                    self._send(self.buffer)
                    self.buffer = b""
                return

    def _request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        method, target, version = lines[0].split(b" ", 2)
        if method == b"CONNECT":
            host, _, port = target.decode().rpartition(":")
            self.proxy.seen.append(("CONNECT", target.decode()))
            self.tunnel = True
            self._connect(host.strip("[]"), int(port), b"HTTP/1.1 200 Connection established\r\n\r\n")
            return
        parts = urlsplit(target.decode())
        self.proxy.seen.append((method.decode(), target.decode()))
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                self.body_left = int(value.strip())
        rewritten = b"\r\n".join([b" ".join([method, path.encode(), version])] + lines[1:]) + b"\r\n\r\n"
        key = (parts.hostname or "", parts.port or 80)
        if self.target_key != key:
            self._connect(key[0], key[1], b"")
            self.target_key = key
        self._send(rewritten)

    def _connect(self, host: str, port: int, answer: bytes) -> None:
        from twisted.internet import reactor

        self.target = None
        self.transport.pauseProducing()  # type: ignore[union-attr]
        d = TCP4ClientEndpoint(reactor, host, port).connect(Factory.forProtocol(lambda: _Pipe(self)))

        def connected(pipe: _Pipe) -> None:
            self.target = pipe
            self.proxy.open.append(pipe)
            if answer:
                self.transport.write(answer)  # type: ignore[union-attr]
            for chunk in self.waiting:
                pipe.transport.write(chunk)  # type: ignore[union-attr]
            self.waiting = []
            self.transport.resumeProducing()  # type: ignore[union-attr]

        def failed(f: Failure) -> None:
            self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

        d.addCallbacks(connected, failed)

    def _send(self, data: bytes) -> None:
        if self.target is None:
            self.waiting.append(data)
        else:
            self.target.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.target is not None:
            self.target.transport.loseConnection()


class ForwardingProxy:
    """A forwarding HTTP proxy on loopback; :ivar seen: ``(method, target)``
    of every request (``CONNECT`` with its ``host:port``)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.open: list[Any] = []
        self.port: Any = None

    def start(self, test: Any) -> Deferred[int]:
        from twisted.internet import reactor

        d = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: _ProxyProtocol(self))
        )

        def listening(port: Any) -> int:
            self.port = port
            test.addCleanup(port.stopListening)
            return int(port.getHost().port)

        return d.addCallback(listening)


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int | None = None

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver(Resource):
    """A webhook receiver: verifies every request's signature with
    ``secret`` and answers per ``behave(received, request)``: an int is
    that status; ``None`` leaves the request hanging (its ``Request`` in
    :attr:`hanging`)."""

    secret: str
    now: Callable[[], float]
    behave: Callable[[Received, Request], int | None] = lambda received, request: 200
    got: list[Received] = field(default_factory=list)
    hanging: list[Request] = field(default_factory=list)
    arrived: list[Deferred[Received]] = field(default_factory=list)
    isLeaf = True

    def __post_init__(self) -> None:
        Resource.__init__(self)

    def next_request(self) -> Deferred[Received]:
        """Fires with the next request to arrive."""
        d: Deferred[Received] = Deferred()
        self.arrived.append(d)
        return d

    def render_POST(self, request: Request) -> Any:
        body = request.content.read() if request.content is not None else b""
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        try:
            verify(self.secret, headers.get("fastedge-signature", ""), body, now=self.now())
            verified = True
        except BadSignature:
            verified = False
        received = Received(request.path.decode(), headers, body, verified)
        self.got.append(received)
        status = self.behave(received, request)
        if status is None:
            self.hanging.append(request)
        else:
            received.answered = status
            request.setResponseCode(status)
        waiting, self.arrived = self.arrived, []
        for d in waiting:
            d.callback(received)
        return NOT_DONE_YET if status is None else b"ok"

    def start(self, test: Any) -> Deferred[int]:
        from twisted.internet import reactor

        site = Site(self)
        site.noisy = False
        d = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)

        def listening(port: Any) -> int:
            test.addCleanup(port.stopListening)
            return int(port.getHost().port)

        return d.addCallback(listening)
