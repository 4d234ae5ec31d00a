"""The WebSocket handshakes real clients send for ``new WebSocket(url)`` from
a page of another origin, byte for byte and in their header order:
Chromium 131, Firefox 133, Safari 18, and curl as in a bug report. (No
browser runs on the test machines, so they are written out here rather
than captured per run.) Only ``Host`` and the random ``Sec-WebSocket-Key``
change from run to run: :func:`handshake` fills them in.

One copy for every test that speaks to ``/live`` the way a browser does:
the node's handshake tests and the one-pass upgrade parser's.
"""

from __future__ import annotations

#: The key RFC 6455's example uses (and curl's bug report sent).
SAMPLE_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

#: Chromium 131 (Chrome, Edge) on Linux.
CHROMIUM = (
    b"GET /live HTTP/1.1\r\n"
    b"Host: {host}\r\n"
    b"Connection: Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/131.0.0.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: https://blog.example\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Sec-WebSocket-Key: {key}\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"\r\n"
)

#: Firefox 133 on Linux (note ``Connection: keep-alive, Upgrade``).
FIREFOX = (
    b"GET /live HTTP/1.1\r\n"
    b"Host: {host}\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n"
    b"Accept: */*\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Origin: https://blog.example\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
    b"Sec-WebSocket-Key: {key}\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Sec-Fetch-Dest: empty\r\n"
    b"Sec-Fetch-Mode: websocket\r\n"
    b"Sec-Fetch-Site: cross-site\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Upgrade: websocket\r\n"
    b"\r\n"
)

#: Safari 18 on macOS.
SAFARI = (
    b"GET /live HTTP/1.1\r\n"
    b"Host: {host}\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Upgrade: websocket\r\n"
    b"Sec-WebSocket-Key: {key}\r\n"
    b"User-Agent: Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    b"Version/18.1 Safari/605.1.15\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\n"
    b"Origin: https://blog.example\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: Upgrade\r\n"
    b"\r\n"
)

#: ``curl --http1.1 -H 'Connection: Upgrade' -H 'Upgrade: websocket' ...``
#: as in the bug report (curl 8 puts its own headers first).
CURL = (
    b"GET /live HTTP/1.1\r\n"
    b"Host: {host}\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n"
    b"Connection: Upgrade\r\n"
    b"Upgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: {key}\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"\r\n"
)


def handshake(template: bytes, host: bytes, key: bytes = SAMPLE_KEY) -> bytes:
    """``template`` with its ``Host`` and ``Sec-WebSocket-Key`` filled in."""
    return template.replace(b"{host}", host).replace(b"{key}", key)
