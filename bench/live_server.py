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
        #: How long each ``Hub.publish`` took (us), for the server's log.
        self.publish_us = []

    def render_POST(self, request):
        t = time.monotonic_ns()
        if self.pad is None:
            # Size the padding once so the whole message is `size` bytes.
            probe = Event(self.channel, "bench", {"t": t, "pad": ""})
            prepared = self.hub.publish(probe)
            self.pad = "x" * max(0, self.size - len(prepared.payload) - 2)
            t = time.monotonic_ns()
        self.hub.publish(Event(self.channel, "bench", {"t": t, "pad": self.pad}))
        self.publish_us.append((time.monotonic_ns() - t) / 1e3)
        # The answer carries the publish time too, so the load client can
        # tell the wait before the POST was handled from the wait after.
        body = b"ok %d" % t
        request.setHeader(b"content-length", b"%d" % len(body))
        return body


class GcPauses:
    """The collector's pauses, by generation (the bench's server log says
    how much of the POST's answer time a collection could account for)."""

    def __init__(self):
        self.started = 0
        self.pauses = {0: [], 1: [], 2: []}
        #: (monotonic ns at the end, generation, ms) of pauses of 1 ms or more.
        self.long = []

    def __call__(self, phase, info):
        if phase == "start":
            self.started = time.perf_counter_ns()
        else:
            ms = (time.perf_counter_ns() - self.started) / 1e6
            self.pauses[info["generation"]].append(ms)
            if ms >= 1.0:
                self.long.append((time.monotonic_ns(), info["generation"], round(ms, 2)))

    def summary(self):
        return {
            "gen%d" % g: {"count": len(p), "max_ms": round(max(p), 2) if p else 0, "total_ms": round(sum(p), 1)}
            for g, p in self.pauses.items()
        }


class IoPhases:
    """Diagnostics (``--diagnose``): how long the reactor's I/O phases last
    and how many buffered writes (``doWrite``) each runs, i.e. the sends
    that happen outside the fan-out's slices."""

    def __init__(self):
        from twisted.internet import tcp

        self.writes = 0
        self.phases = []  # (ms, doWrite calls) of phases over 1 ms
        self.total_writes = 0
        real_write = tcp.Connection.doWrite
        real_poll = reactor.doIteration
        me = self

        def do_write(conn):
            me.writes += 1
            return real_write(conn)

        def do_poll(timeout):
            me.writes = 0
            started = time.perf_counter_ns()
            try:
                return real_poll(timeout)
            finally:
                # epoll_wait's own wait is in here too; a phase that did
                # writes or took long is what matters.
                ms = (time.perf_counter_ns() - started) / 1e6
                me.total_writes += me.writes
                if me.writes >= 50:
                    me.phases.append((round(ms, 2), me.writes))

        tcp.Connection.doWrite = do_write
        reactor.doIteration = do_poll

    def summary(self):
        return {"do_writes": self.total_writes, "phases_with_50_writes_or_more": self.phases[:50]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--slice-ms", type=float, default=None, help="live.fanout_slice_ms (default: the config's)")
    ap.add_argument("--diagnose", action="store_true", help="log the reactor's I/O phases' buffered writes")
    ap.add_argument(
        "--buffered-writes",
        action="store_true",
        help="live frames through Twisted's buffers, not written through (to measure what write-through is worth)",
    )
    args = ap.parse_args()
    if args.buffered_writes:
        from fastedge.live import wire

        # Writer finds no plain TCP transport under any connection: every
        # frame goes through transport.write.
        wire.plain_tcp = lambda transport: None
    io_phases = IoPhases() if args.diagnose else None
    gc_pauses = GcPauses()
    gc.callbacks.append(gc_pauses)
    data = tempfile.mkdtemp(prefix="fe-bench-")
    cfg = load_config(None, {"node.data_dir": data, "node.id": "bench"})
    import dataclasses

    live_cfg = dataclasses.replace(cfg.live, ping_seconds=0.0, max_subscriptions=4, max_connections=1_000_000)
    if args.slice_ms is not None:
        live_cfg = dataclasses.replace(live_cfg, fanout_slice_ms=args.slice_ms)
    cfg = dataclasses.replace(
        cfg,
        live=live_cfg,
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
        publishers.append(publish)
        quiet = (await store.store.upsert_thread(tenant.id, "bench-quiet", created_ms=0, read_preference=PRIMARY)).value
        bench = Resource()
        bench.putChild(b"publish", publish)
        # The same publishing POST on a thread nobody reads: made while the
        # first thread's fan-out runs, it shows what other writers wait.
        bench.putChild(b"publish-quiet", Publish(live.hub, (tenant.id, quiet.id), args.size))
        site.resource.putChild(b"bench", bench)
        # As the node does once its services started (fastedge.tap.Node):
        # what start-up made lives as long as the process, out of the
        # collector's reach, and the collector's generation-0 threshold
        # raised (fastedge.heap; a baseline from before it only freezes).
        # (Looked for beside the fastedge package run: the venv's editable
        # install would find this tree's module for a baseline's package.)
        if os.path.exists(os.path.join(os.path.dirname(live_service.__file__), "..", "heap.py")):
            from fastedge import heap

            heap.settle()
        else:
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
                    # Which fastedge runs (this tree, or a baseline's).
                    "fastedge": os.path.dirname(live_service.__file__),
                }
            ),
            flush=True,
        )

    publishers = []

    def report():
        # Server-side view of the fan-outs (bench/out/fastedge-server.log).
        count = registry.get_sample_value("fastedge_live_fanout_seconds_count") or 0
        total = registry.get_sample_value("fastedge_live_fanout_seconds_sum") or 0
        print(
            json.dumps(
                {
                    "fanouts": count,
                    "fanout_ms_mean": round(1000 * total / count, 2) if count else None,
                    "gc": gc_pauses.summary(),
                    "gc_long": gc_pauses.long,
                    "io": io_phases.summary() if io_phases is not None else None,
                    # Hub.publish's time per publishing POST, in order
                    # (no readers first, then with them).
                    "publish_us": [round(u, 1) for u in publishers[0].publish_us] if publishers else None,
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
