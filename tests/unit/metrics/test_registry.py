"""``/metrics`` of a node carries its build and the process's figures."""

from __future__ import annotations

import os
import platform

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

import twisted
from fastedge import __version__
from fastedge.metrics.registry import new_registry
from fastedge.tap import Options, makeService


class NodeMetricsTests(SynchronousTestCase):
    def scrape(self) -> str:
        from treq.testing import StubTreq

        options = Options()
        options.parseOptions(["--data-dir", os.path.abspath(self.mktemp())])
        top = makeService(options, reactor=MemoryReactorClock())
        root = top.getServiceNamed("http").getServiceNamed("http").factory.wrappedFactory.resource
        stub = StubTreq(root)
        response = self.successResultOf(stub.get("http://localhost/metrics"))
        self.assertEqual(response.code, 200)
        return str(self.successResultOf(response.text()))

    def test_build_info(self) -> None:
        """``fastedge_build_info`` names fastedge's, Python's and Twisted's versions."""
        body = self.scrape()
        line = 'fastedge_build_info{{python="{}",twisted="{}",version="{}"}} 1.0'.format(
            platform.python_version(), twisted.__version__, __version__
        )
        self.assertIn(line, body.splitlines())

    def test_process_metrics(self) -> None:
        """The standard process metrics are there: CPU time, resident memory,
        open and maximum descriptors, start time, and python_info."""
        lines = self.scrape().splitlines()
        names = {line.split("{")[0].split(" ")[0] for line in lines if line and not line.startswith("#")}
        for name in (
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "python_info",
        ):
            self.assertIn(name, names)
        (start,) = [float(line.split(" ")[1]) for line in lines if line.startswith("process_start_time_seconds ")]
        self.assertGreater(start, 1e9)

    def test_plain_registries_stay_empty(self) -> None:
        """A registry made for a child alone (tests, tools) has none of them:
        only the node's registry does."""
        self.assertEqual(list(new_registry().collect()), [])


class LabelCounterTests(SynchronousTestCase):
    def test_counts_by_label(self) -> None:
        from prometheus_client import CollectorRegistry, Counter

        from fastedge.metrics.registry import label_counter

        registry = CollectorRegistry()
        count = label_counter(Counter("things_total", "", ["result"], registry=registry))
        for label in ("hit", "hit", "miss"):
            count(label)
        self.assertEqual(registry.get_sample_value("things_total", {"result": "hit"}), 2.0)
        self.assertEqual(registry.get_sample_value("things_total", {"result": "miss"}), 1.0)
