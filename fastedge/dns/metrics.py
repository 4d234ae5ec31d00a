"""The ``dns`` child's metrics (``fastedge_dns_*``).

Counted in plain dictionaries on the hot path and turned into Prometheus
families only when ``/metrics`` is scraped: a prometheus_client ``inc()``
with labels costs about as much as answering a query from the fast path.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from twisted.names import dns

_RCODES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    16: "BADVERS",
}
#: Query types named in labels; any other is "other" (bounded cardinality).
_TYPES = {
    t: dns.QUERY_TYPES.get(t) or dns.EXT_QUERIES.get(t, "")
    for t in (
        dns.A,
        dns.AAAA,
        dns.NS,
        dns.SOA,
        dns.MX,
        dns.TXT,
        dns.CNAME,
        dns.PTR,
        dns.SRV,
        dns.ALL_RECORDS,
        dns.AXFR,
        dns.IXFR,
        64,
        65,
        43,
        48,
    )
}
_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


def type_label(qtype: int) -> str:
    """A query type as a label value."""
    return _TYPES.get(qtype) or (f"TYPE{qtype}" if qtype in (64, 65, 43, 48) else "other")


def rcode_label(rcode: int) -> str:
    """An rcode as a label value."""
    return _RCODES.get(rcode, "other")


class DnsStats:
    """Counters of the DNS server, read when scraped."""

    def __init__(self) -> None:
        #: ``(qtype, rcode, path, transport)`` -> queries answered.
        self.queries: defaultdict[tuple[int, int, str, str], int] = defaultdict(int)
        self.answers_by_node: defaultdict[str, int] = defaultdict(int)
        self.ecs = 0
        self.truncated = 0
        #: reason -> queries answered with nothing.
        self.dropped: defaultdict[str, int] = defaultdict(int)
        self._bucket_counts = [0] * (len(_BUCKETS) + 1)
        self._latency_sum = 0.0

    def observe(self, seconds: float) -> None:
        """One query's processing time."""
        self._bucket_counts[bisect.bisect_left(_BUCKETS, seconds)] += 1
        self._latency_sum += seconds

    def latency(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative buckets and the sum, as Prometheus wants them."""
        out, total = [], 0
        for bound, count in zip([*map(str, _BUCKETS), "+Inf"], self._bucket_counts, strict=True):
            total += count
            out.append((bound, total))
        return out, self._latency_sum


class DnsCollector(Collector):
    """Exposes one :class:`DnsStats` (and the answer caches' sizes)."""

    def __init__(self, stats: DnsStats, gauges: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self._stats = stats
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        queries = CounterMetricFamily(
            "fastedge_dns_queries",
            "Queries answered, by type, rcode, path (fast or general) and transport.",
            labels=["type", "rcode", "path", "transport"],
        )
        merged: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        for (qtype, rcode, path, transport), n in list(s.queries.items()):
            merged[(type_label(qtype), rcode_label(rcode), path, transport)] += n
        for labels, n in merged.items():
            queries.add_metric(list(labels), n)
        yield queries
        answers = CounterMetricFamily("fastedge_dns_answers", "Times each node was in an answer.", labels=["node"])
        for node, n in list(s.answers_by_node.items()):
            answers.add_metric([node], n)
        yield answers
        yield CounterMetricFamily(
            "fastedge_dns_ecs_queries",
            "Queries carrying an EDNS Client Subnet.",
            value=s.ecs,
        )
        yield CounterMetricFamily(
            "fastedge_dns_truncated",
            "UDP answers truncated (TC) for being over the size limit.",
            value=s.truncated,
        )
        dropped = CounterMetricFamily(
            "fastedge_dns_dropped",
            "Datagrams answered with nothing, by reason.",
            labels=["reason"],
        )
        for reason, n in list(s.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        buckets, total = s.latency()
        yield HistogramMetricFamily(
            "fastedge_dns_query_duration_seconds",
            "Time from a query's arrival to its answer being sent.",
            buckets=buckets,
            sum_value=total,
        )
        for name, (kind, value) in self._gauges().items():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, name.replace("_", " "), value=value)


def register(
    registry: CollectorRegistry,
    stats: DnsStats,
    gauges: Callable[[], dict[str, tuple[str, float]]],
) -> None:
    """Put the DNS metrics on ``registry``."""
    registry.register(DnsCollector(stats, gauges))
