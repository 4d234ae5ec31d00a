"""fastedge's side of the live fan-out benchmark (see live-fanout).

Runs the node's real HTTP stack on one port: ``build_site`` behind the
plain-HTTP listener's connection gate and counter, with the ``/live``
resource of a real ``LiveService`` (hub, WebSocket protocol, writers) over
the embedded SQLite store, with one tenant and one thread.
The only bench-only piece is ``POST /bench/publish``: it publishes one
event through ``Hub.publish`` (the entry point every writer uses) whose
message is ``--size`` bytes and carries the server's CLOCK_MONOTONIC
time of the publish, so the load client can time delivery exactly.

Prints one JSON line when ready: {"port", "tenant", "urlId"}.
"""

from __future__ import annotations

import sys

# A node's production install has no `click` (only the dev tools bring it,
# through black); with it, autobahn colours its debug log arguments on every
# connect, whether or not debug logging is on. Measure what production runs.
sys.modules.setdefault("click", None)  # type: ignore[arg-type]

import argparse
import gc
import json
import os
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource

from fastedge.api.resource import build_api, build_sessions
from fastedge.config import load_config
from fastedge.http.metrics import ConnectionMetrics
from fastedge.http.tls import CountingFactory
from fastedge.live import service as live_service
from fastedge.live.hub import Event
from fastedge.metrics.registry import new_registry
from fastedge.store import service as store_service
from fastedge.store.model import ReadPreference
from fastedge.web import build_site

PRIMARY = ReadPreference.PRIMARY


class Publish(Resource):
    isLeaf = True

    def __init__(self, hub, channel, size):
        super().__init__()
        self.hub = hub
        self.channel = channel
        self.size = size
        self.pad = None

    def render_POST(self, request):
        t = time.monotonic_ns()
        if self.pad is None:
            # Size the padding once so the whole message is `size` bytes.
            probe = Event(self.channel, "bench", {"t": t, "pad": ""})
            prepared = self.hub.publish(probe)
            self.pad = "x" * max(0, self.size - len(prepared.payload) - 2)
            t = time.monotonic_ns()
        self.hub.publish(Event(self.channel, "bench", {"t": t, "pad": self.pad}))
        request.setHeader(b"content-length", b"2")
        return b"ok"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--size", type=int, default=200)
    args = ap.parse_args()
    data = tempfile.mkdtemp(prefix="fe-bench-")
    cfg = load_config(None, {"node.data_dir": data, "node.id": "bench"})
    import dataclasses

    cfg = dataclasses.replace(
        cfg,
        live=dataclasses.replace(cfg.live, ping_seconds=0.0, max_subscriptions=4, max_connections=1_000_000),
        # Every client is 127.0.0.1: the per-address limits are checked as
        # on any node, with room for the whole herd.
        http=dataclasses.replace(cfg.http, max_connections_per_ip=0, max_connections_per_prefix=0),
    )
    registry = new_registry()
    store = store_service.make_service(cfg.store, reactor=reactor, registry=registry)
    sessions = build_sessions(cfg.api, store=store.store, clock=reactor, registry=registry)
    live = live_service.make_service(
        cfg.live,
        reactor=reactor,
        registry=registry,
        store=store.store,
        node_id="bench",
        viewer_tokens=sessions.viewer_tokens,
    )
    api = build_api(
        cfg.api,
        store=store.store,
        clock=reactor,
        registry=registry,
        live=live.publisher,
        sessions=sessions,
    )
    site = build_site(
        cfg.node,
        cfg.http,
        reactor=reactor,
        registry=registry,
        store=store.store,
        store_ready=lambda: store.ready,
        api=api.resource,
        children=lambda: [],
        live=live.resource,
    )

    async def setup():
        await store.when_ready()
        tenant = (await store.store.create_tenant("bench", "global", created_ms=0, read_preference=PRIMARY)).value
        thread = (
            await store.store.upsert_thread(tenant.id, "bench-thread", created_ms=0, read_preference=PRIMARY)
        ).value
        publish = Publish(live.hub, (tenant.id, thread.id), args.size)
        bench = Resource()
        bench.putChild(b"publish", publish)
        site.resource.putChild(b"bench", bench)
        # As the node does once its services started (fastedge.tap.Node):
        # what start-up made lives as long as the process, out of the
        # collector's reach.
        gc.collect()
        gc.freeze()
        # The node's plain-HTTP listener wraps the Site like this
        # (fastedge.http.service): each connection admitted by the gate and
        # counted, as the node does.
        listener = CountingFactory(
            site, listener="http", metrics=ConnectionMetrics(registry), gate=site.connections, reactor=reactor
        )
        endpoint = serverFromString(reactor, "tcp:%d:interface=127.0.0.1:backlog=4096" % args.port)
        port = await endpoint.listen(listener)
        site.connections.watch(port)
        print(
            json.dumps(
                {
                    "port": port.getHost().port,
                    "tenant": tenant.id,
                    "urlId": "bench-thread",
                    "pid": os.getpid(),
                }
            ),
            flush=True,
        )

    def report():
        # Server-side view of the fan-outs (bench/out/fastedge-server.log).
        count = registry.get_sample_value("fastedge_live_fanout_seconds_count") or 0
        total = registry.get_sample_value("fastedge_live_fanout_seconds_sum") or 0
        print(
            json.dumps(
                {
                    "fanouts": count,
                    "fanout_ms_mean": round(1000 * total / count, 2) if count else None,
                }
            ),
            file=sys.stderr,
            flush=True,
        )

    services = (store, live, api.service)

    async def stop():
        report()
        # In reverse, one after the other, so the store (and its threads) go last.
        for service in reversed(services):
            await service.stopService()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(stop()))
    for service in services:
        service.startService()
    Deferred.fromCoroutine(setup()).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
