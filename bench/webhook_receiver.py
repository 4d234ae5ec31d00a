"""A webhook receiver for ``bench/webhooks``: answers every POST 200 at once,
verifies nothing (the bench measures the sender), and tells ``GET /count``
how many requests it took and when the first and last came (monotonic s).

    python bench/webhook_receiver.py PORT
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


class Receiver(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def render_POST(self, request: Any) -> bytes:
        now = time.monotonic()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now
        return b"ok"

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"count": self.count, "first": self.first, "last": self.last}).encode()


if __name__ == "__main__":
    site = Site(Receiver())
    site.noisy = False
    reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
