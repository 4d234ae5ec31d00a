"""One node's webhook delivery, in a process of its own, over a PostgreSQL
primary: the store child and the webhooks child of a node, nothing else.

``python -m tests.support.webhook_worker NODE_ID DSN [MAX_IN_FLIGHT]`` prints ``ready`` once
its store is open, then ``delivered N`` whenever the deliveries it has
recorded as delivered reach N; SIGTERM stops it in order (leases given back), SIGKILL
is a node dying mid-delivery. Used by tests/integration/test_webhooks_cluster.py
and bench/webhooks.
"""

from __future__ import annotations

import sys
from typing import Any


def main(argv: list[str]) -> None:
    from prometheus_client import CollectorRegistry
    from twisted.application.service import MultiService
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    from fastedge.config import PostgresConfig, StoreConfig, WebhooksConfig
    from fastedge.store import service as store_service
    from fastedge.webhooks import service as webhooks_service

    node_id, dsn = argv[:2]
    max_in_flight = int(argv[2]) if len(argv) > 2 else 16
    registry = CollectorRegistry()
    store = store_service.make_service(
        StoreConfig(backend="postgresql", threads=4, postgresql=PostgresConfig(primaries=(dsn,))),
        reactor=reactor,
        registry=registry,
    )
    webhooks = webhooks_service.make_service(
        WebhooksConfig(
            allow_private_targets=True,
            poll_seconds=0.05,
            timeout_seconds=2.0,
            lease_seconds=4.0,
            max_in_flight=max_in_flight,
        ),
        reactor=reactor,
        store=store.store,
        registry=registry,
        node_id=node_id,
        store_ready=lambda: store.ready,
    )
    top = MultiService()
    store.setServiceParent(top)
    webhooks.setServiceParent(top)
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)

    def ready(_: Any) -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()

    store.when_ready().addCallback(ready)
    seen = [0.0]

    def report() -> None:
        value = registry.get_sample_value("fastedge_webhooks_deliveries_total", {"result": "delivered"}) or 0.0
        if value != seen[0]:
            seen[0] = value
            sys.stdout.write("delivered {}\n".format(int(value)))
            sys.stdout.flush()

    LoopingCall(report).start(0.02)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
