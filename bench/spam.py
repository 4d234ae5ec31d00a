"""The body of ``bench/spam``: see that script for what it measures."""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from urllib.parse import urlencode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import benchlib  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from fastedge.spam.heuristic import HeuristicCheck  # noqa: E402
from fastedge.store.model import ReadPreference  # noqa: E402
from fastedge.store.sqlite import SQLiteStore  # noqa: E402
from fastedge.testing.fakes import run_inline  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.unit.spam.test_corpus import load_corpus, replay  # noqa: E402

POSTS = int(sys.argv[1]) if len(sys.argv) > 1 else 1200
SESSIONS = 40
THREADS = 4
PRIMARY = ReadPreference.PRIMARY


def make_tenant(path: str) -> str:
    store = SQLiteStore(path, run=run_inline, clock=Clock())
    benchlib.result_of(store.open())
    tenant = benchlib.result_of(store.create_tenant("Bench", "global", created_ms=1, read_preference=PRIMARY)).value
    benchlib.result_of(store.close())
    return str(tenant.id)


def run(enabled: bool, texts: list[str]) -> dict[str, float]:
    """Post ``POSTS`` comments to a fresh node; latency figures in ms."""
    workdir = tempfile.mkdtemp(prefix="fe-bench-spam-")
    tenant = make_tenant(os.path.join(workdir, "fastedge.sqlite3"))
    port = free_port()
    config = "\n".join(
        [
            "[node]",
            'data_dir = "{}"'.format(workdir),
            "[http]",
            'endpoint = "tcp:{}:interface=127.0.0.1"'.format(port),
            "[tls]",
            'endpoint = "tcp:{}:interface=127.0.0.1"'.format(free_port()),
            "[mesh]",
            'endpoint = "tcp:{}:interface=127.0.0.1"'.format(free_port()),
            "[dns]",
            "port = {}".format(free_port()),
            "[log]",
            'access = "off"',
            "[api]",
            "writes_per_minute_per_session = 100000",
            "writes_per_minute_per_ip = 1000000",
            "[spam]",
            "enabled = {}".format("true" if enabled else "false"),
        ]
    )
    node = benchlib.start_node(workdir, config, port)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        cookies: dict[int, str] = {}
        latencies = []
        statuses: dict[str, int] = {}
        for i in range(POSTS):
            session = i % SESSIONS
            path = "/api/v1/{}/comments?{}".format(
                tenant, urlencode({"urlId": "https://bench.test/{}".format(i % THREADS)})
            )
            headers = {"content-type": "application/json"}
            if session in cookies:
                headers["cookie"] = cookies[session]
            body = json.dumps({"text": texts[i % len(texts)], "displayName": "Reader {}".format(session)})
            started = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status != 201:
                raise SystemExit("post {} answered {}: {!r}".format(i, response.status, answer[:200]))
            status = json.loads(answer)["comment"]["status"]
            statuses[status] = statuses.get(status, 0) + 1
            cookie = response.getheader("set-cookie")
            if cookie and cookie.startswith("fe_session="):
                cookies[session] = cookie.split(";", 1)[0]
        measured = latencies[POSTS // 4 :]
        cuts = statistics.quantiles(measured, n=100)
        return {"p50": cuts[49], "p99": cuts[98], "mean": statistics.fmean(measured), **statuses}
    finally:
        benchlib.stop(node)


def heuristic_cpu() -> tuple[float, int]:
    """Microseconds of CPU per comment for the heuristic alone."""
    items = load_corpus()
    replay(items)
    rounds = 20
    started = time.process_time()
    for _ in range(rounds):
        replay(items)
    per = (time.process_time() - started) / (rounds * len(items)) * 1e6
    return per, len(items)


def main() -> None:
    texts = [item["text"] for item in load_corpus()]
    check = HeuristicCheck()
    assert check.name == "heuristic"
    print("posts per run: {} ({} sessions, {} threads; the first quarter is warm-up)".format(POSTS, SESSIONS, THREADS))
    for enabled in (False, True):
        figures = run(enabled, texts)
        print(
            "spam {:<3}  p50 {:6.2f} ms  p99 {:6.2f} ms  mean {:6.2f} ms  answered {}".format(
                "on" if enabled else "off",
                figures.pop("p50"),
                figures.pop("p99"),
                figures.pop("mean"),
                figures,
            )
        )
    per, n = heuristic_cpu()
    print(
        "heuristic alone (with the corpus replay's history): {:.0f} us of CPU per comment ({} comments)".format(per, n)
    )


if __name__ == "__main__":
    main()
