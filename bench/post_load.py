"""Open-loop comment posts for ``bench/webhooks``: RATE posts a second for
SECONDS seconds, each sent on schedule whether or not earlier ones were
answered (so a slower server shows as latency, not as fewer requests), over
a pool of keep-alive connections. Prints one JSON line: sent, ok, rps,
p50/p99/max in ms.

    python bench/post_load.py URL API_KEY RATE SECONDS
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import LoopingCall
from twisted.web.client import HTTPConnectionPool

BODY = json.dumps(
    {"urlId": "https://bench/p", "text": "A comment of a usual length, a sentence or two.", "displayName": "Bench"}
)


def main(url: str, key: str, rate: int, seconds: int) -> None:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 64
    headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
    latencies: list[float] = []
    codes: list[int] = []
    pending: list[Any] = []
    total = rate * seconds

    def one() -> None:
        if len(pending) >= total:
            loop.stop()
            return
        started = time.perf_counter()
        d = treq.post(url, data=BODY.encode(), headers=headers, pool=pool)

        def done(response: Any) -> Any:
            codes.append(response.code)
            return treq.content(response).addCallback(lambda _: latencies.append(time.perf_counter() - started))

        d.addCallback(done)
        d.addErrback(lambda f: codes.append(0))
        pending.append(d)

    loop = LoopingCall(one)
    began = time.perf_counter()

    def finished(_: Any) -> Any:
        elapsed = time.perf_counter() - began
        return DeferredList(pending).addCallback(lambda _: report(elapsed))

    def report(elapsed: float) -> None:
        ordered = sorted(latencies)
        pick = lambda q: 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        print(
            json.dumps(
                {
                    "sent": len(pending),
                    "ok": sum(1 for c in codes if 200 <= c < 300),
                    "rps": len(pending) / elapsed,
                    "p50": pick(0.50),
                    "p99": pick(0.99),
                    "max": 1000 * ordered[-1],
                }
            )
        )
        pool.closeCachedConnections().addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    loop.start(1.0 / rate).addCallback(finished)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
