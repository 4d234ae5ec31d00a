"""A loopback TCP proxy in front of an HTTP/1.1 server that counts the
requests passing through it, by method and first path segment.

Tests that say "the origin never saw this request" need a count that is
exact at the moment they read it. A server's own metrics are not: SeaweedFS
counts a request after it has written the answer, so a client can hold the
answer before the count moves. The proxy counts a request when its header
has arrived, before forwarding a byte of it, so every request whose answer
a client has received is already counted.

It runs on plain threads (not the reactor) so that blocking callers such as
``bench/cdn.py`` can use it as well as trial tests.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter


class RequestCounter:
    """Parses the client-to-server byte stream of HTTP/1.1 requests (bodies
    sized by Content-Length; nothing we proxy sends chunked requests) and
    counts each request as its header completes."""

    def __init__(self, count: Counter[tuple[str, str]], lock: threading.Lock) -> None:
        self._count = count
        self._lock = lock
        self._buffer = b""
        self._body_left = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            if self._body_left:
                taken = min(self._body_left, len(self._buffer))
                self._body_left -= taken
                self._buffer = self._buffer[taken:]
                continue
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            lines = head.decode("latin-1").split("\r\n")
            method, target = (lines[0].split(" ") + ["", ""])[:2]
            bucket = target.split("?", 1)[0].lstrip("/").split("/", 1)[0]
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    self._body_left = int(value.strip())
                elif name.strip().lower() == "transfer-encoding":
                    raise ValueError("chunked requests are not counted: " + lines[0])
            with self._lock:
                self._count[(method, bucket)] += 1


class CountingProxy:
    """Listens on a free 127.0.0.1 port and relays every connection to
    ``upstream`` (host, port), counting requests as they pass."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._count: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self.errors: list[str] = []
        threading.Thread(target=self._accept, name="counting-proxy", daemon=True).start()

    def requests(self, method: str, bucket: str | None = None) -> int:
        """Requests of ``method`` seen so far (to ``bucket``, or all).
        Raises if a request could not be parsed: a count that may be short
        must not pass for an exact one."""
        with self._lock:
            if self.errors:
                raise AssertionError("counting proxy could not parse: " + "; ".join(self.errors))
            return sum(n for (m, b), n in self._count.items() if m == method and (bucket is None or b == bucket))

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        """One client connection: requests upstream (counted), answers back;
        both sockets closed once both directions have ended."""
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        counter = RequestCounter(self._count, self._lock)
        answers = threading.Thread(target=self._pump, args=(server, client, None), daemon=True)
        answers.start()
        self._pump(client, server, counter.feed)
        answers.join()
        client.close()
        server.close()

    def _pump(self, source: socket.socket, sink: socket.socket, observe) -> None:  # type: ignore[no-untyped-def]
        """Copy ``source`` to ``sink`` until EOF, passing each chunk to
        ``observe`` before it is forwarded; then half-close ``sink``. A
        reset ends the copy (either side may drop a connection); a request
        the counter cannot parse is kept in ``errors``."""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if observe is not None:
                    observe(data)
                sink.sendall(data)
        except OSError:
            pass
        except ValueError as e:
            with self._lock:
                self.errors.append(str(e))
        finally:
            _half_close(source, sink)


def _half_close(source: socket.socket, sink: socket.socket) -> None:
    """End one direction of a relayed connection (the peer may be gone)."""
    for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
        try:
            sock.shutdown(how)
        except OSError:
            pass
