"""Metrics of live threads (``fastedge_live_*``).

Counters on the fan-out path are plain integers kept by the hub and the
connections and read only when ``/metrics`` is scraped, so a broadcast to
ten thousand subscribers costs no per-message metric work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .hub import Hub

_FANOUT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
TRANSPORTS = ("websocket", "sse")


class _HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self._hub.stats
        published = CounterMetricFamily(
            "fastedge_live_events_published",
            "Events accepted into channels, by origin (local writes or relayed from elsewhere).",
            labels=["origin"],
        )
        published.add_metric(["local"], stats.published)
        published.add_metric(["relayed"], stats.relayed)
        yield published
        yield CounterMetricFamily(
            "fastedge_live_events_duplicate",
            "Relayed events dropped as repeats.",
            value=stats.duplicates,
        )
        yield CounterMetricFamily(
            "fastedge_live_channel_resets",
            "Channel histories broken by a relayed jump or new epoch.",
            value=stats.resets,
        )
        yield CounterMetricFamily(
            "fastedge_live_messages_delivered",
            "Event messages queued to subscribers (fan-out and replay).",
            value=stats.delivered,
        )
        yield CounterMetricFamily(
            "fastedge_live_fanout_slices",
            "Reactor turns the sliced fan-out spent sending (at most live.fanout_slice_ms each).",
            value=self._hub.fanout_slices,
        )
        yield CounterMetricFamily(
            "fastedge_live_sent_bytes",
            "Bytes of event messages queued to subscribers.",
            value=stats.bytes,
        )


class LiveMetrics:
    """The live subsystem's metric families on one node registry."""

    def __init__(self, registry: CollectorRegistry, hub: Hub, connections: Callable[[str], int]) -> None:
        self.connections = Gauge(
            "fastedge_live_connections",
            "Open live connections, by transport.",
            ["transport"],
            registry=registry,
        )
        for transport in TRANSPORTS:
            self.connections.labels(transport).set_function(partial(connections, transport))
        self.opened = Counter(
            "fastedge_live_connections_opened",
            "Live connections accepted, by transport.",
            ["transport"],
            registry=registry,
        )
        subscriptions = Gauge(
            "fastedge_live_subscriptions",
            "Current live subscriptions.",
            registry=registry,
        )
        subscriptions.set_function(hub.subscription_count)
        channels = Gauge(
            "fastedge_live_channels",
            "Channels held in memory (subscribed or with history).",
            registry=registry,
        )
        channels.set_function(hub.channel_count)
        self.subscribes = Counter(
            "fastedge_live_subscribe_requests",
            "Subscribe requests, by outcome (ok, or the error code).",
            ["outcome"],
            registry=registry,
        )
        self.recoveries = Counter(
            "fastedge_live_recoveries",
            "Subscribes with a since: replayed from history, or told to reload.",
            ["result"],
            registry=registry,
        )
        self.closed = Counter(
            "fastedge_live_closes",
            "Connections the server closed, by close code.",
            ["code"],
            registry=registry,
        )
        self.moves = Counter(
            "fastedge_live_moves",
            "Clients told to move to another node before the node closed them (a drain), by transport.",
            ["transport"],
            registry=registry,
        )
        self.slow_consumers = Counter(
            "fastedge_live_slow_consumer_disconnects",
            "Connections dropped for falling behind past live.max_buffered_bytes, by transport.",
            ["transport"],
            registry=registry,
        )
        self.compression_declined = Counter(
            "fastedge_live_compression_offers_declined",
            "WebSocket handshakes that offered compression (permessage-deflate), declined: one frame serves all.",
            registry=registry,
        )
        self.frame_floods = Counter(
            "fastedge_live_frame_floods",
            "WebSockets closed for sending too many frames (code 4429) or fragments of one message (1009).",
            ["code"],
            registry=registry,
        )
        self.fanout_seconds = Histogram(
            "fastedge_live_fanout_seconds",
            "Time to hand one event to every local subscriber of its channel.",
            buckets=_FANOUT_BUCKETS,
            registry=registry,
        )
        self.fanout_lag_seconds = Histogram(
            "fastedge_live_fanout_lag_seconds",
            "Time from publishing an event to handing it to its last local subscriber (the fan-out runs after "
            "the writer's answer, in slices of live.fanout_slice_ms).",
            buckets=_FANOUT_BUCKETS,
            registry=registry,
        )
        self.revoked = Counter(
            "fastedge_live_subscriptions_revoked",
            "Open subscriptions ended because the thread's access rules changed and no longer let the viewer read.",
            ["transport"],
            registry=registry,
        )
        self.rechecks = Counter(
            "fastedge_live_access_rechecks",
            "Re-checks of open subscriptions against their threads' access rules, by trigger (change or sweep).",
            ["trigger"],
            registry=registry,
        )
        self.resolve_lookups = Counter(
            "fastedge_live_resolve_lookups",
            "Thread lookups for subscribes: cache hit, database miss, or coalesced with one in flight.",
            ["result"],
            registry=registry,
        )
        registry.register(_HubCollector(hub))
        for transport in TRANSPORTS:
            self.opened.labels(transport)
            self.slow_consumers.labels(transport)
            self.revoked.labels(transport)
