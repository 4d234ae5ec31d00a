"""The body of ``bench/pg-read-preference`` (runs inside its own network
namespace): see that script for what it measures and how to run it.

Steps: bring the namespace's loopback up; start a PostgreSQL primary and a
hot standby (the test suite's harness); seed a tenant with a thread of 200
comments; make the primary far (``tc netem`` on packets to and from its
port: 40 ms each way, so the node's round trip to it, and the standby's
replication stream, pay it); start a node (``twistd fastedge``) configured
for the PostgreSQL backend; measure with wrk, then with a small client.

Then the write table (issue 15): a public post (new session each), a reply
(with the session cookie), a like and a tenant-API create, each ``WRITES``
times in sequence, p50/p99 and the round trips each made to the primary,
counted by a relay in front of the primary that only this node uses
(``bench/delay_proxy.py``: client flights). The same table is measured on a
node running the baseline (``BASELINE``, a git ref, default ``main``; a
temporary git worktree of it) against the same primary, in the same run;
``BASELINE=none`` skips it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import quote

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import benchlib  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from fastedge.api.keys import hash_api_key, new_api_key  # noqa: E402
from fastedge.api.markup import render  # noqa: E402
from fastedge.store.model import CommentStatus, NewComment, ReadPreference  # noqa: E402
from fastedge.store.postgresql import PostgresStore  # noqa: E402
from fastedge.testing.fakes import run_inline
from tests.support.ports import free_port
from tests.support.postgres import PostgresCluster

ONE_WAY_MS = 40
SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
CONNECTIONS = int(sys.argv[2]) if len(sys.argv) > 2 else 16
PAIRS = 40
WRITES = int(os.environ.get("WRITES", "12"))
BASELINE = os.environ.get("BASELINE", "main")
PRIMARY = ReadPreference.PRIMARY


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def netem_available() -> bool:
    """Whether this kernel can delay packets with tc netem."""
    done = subprocess.run(
        ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
        capture_output=True,
    )
    if done.returncode != 0:
        return False
    sh("tc", "qdisc", "del", "dev", "lo", "root")
    return True


def make_far(port: int) -> None:
    """Delay every packet to or from ``port`` on this namespace's loopback."""
    sh(
        "tc",
        "qdisc",
        "add",
        "dev",
        "lo",
        "root",
        "handle",
        "1:",
        "prio",
        "bands",
        "3",
        "priomap",
        *["0"] * 16,
    )
    sh(
        "tc",
        "qdisc",
        "add",
        "dev",
        "lo",
        "parent",
        "1:3",
        "handle",
        "30:",
        "netem",
        "delay",
        f"{ONE_WAY_MS}ms",
    )
    for direction in ("dport", "sport"):
        sh(
            "tc",
            "filter",
            "add",
            "dev",
            "lo",
            "parent",
            "1:",
            "protocol",
            "ip",
            "prio",
            "1",
            "u32",
            "match",
            "ip",
            direction,
            str(port),
            "0xffff",
            "flowid",
            "1:3",
        )


def seed(primary_dsn: str) -> tuple[str, str, str]:
    """A tenant, its API key and a thread of 200 comments: (tenant, key, thread)."""
    store = PostgresStore([primary_dsn], None, run=run_inline, clock=Clock())
    store.open()
    now = 1_700_000_000_000

    def value(d):  # type: ignore[no-untyped-def]
        out = []
        d.addBoth(out.append)
        if hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]

    tenant = value(store.create_tenant("Bench", "global", created_ms=now, read_preference=PRIMARY)).value
    key = new_api_key()
    value(store.add_api_key(tenant.id, hash_api_key(key), created_ms=now, read_preference=PRIMARY))
    author = value(store.upsert_user(tenant.id, "bench", "Bench", created_ms=now, read_preference=PRIMARY)).value
    thread = value(
        store.upsert_thread(tenant.id, "https://bench.test/t", created_ms=now, read_preference=PRIMARY)
    ).value
    for i in range(200):
        text = f"Comment number {i} with a little *markdown* in it."
        value(
            store.create_comment(
                NewComment(
                    tenant_id=tenant.id,
                    thread_id=thread.id,
                    parent_id=None,
                    author_id=author.author_id,
                    display_name="Bench",
                    body_source=text,
                    body_html=render(text),
                    status=CommentStatus.APPROVED,
                    created_ms=now + i,
                ),
                read_preference=PRIMARY,
            )
        )
    store.close()
    return tenant.id, key, thread.id


def start_node(
    workdir: str, primary_dsn: str, replica_dsn: str, tree: str = REPO, name: str = "bench"
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = (
        '[node]\nid = "{}"\ndata_dir = {}\n'
        '[http]\nendpoint = "tcp:{}:interface=127.0.0.1:backlog=1024"\n'
        # The write table posts from one address faster than a person would.
        "[api]\nwrites_per_minute_per_ip = 100000\nwrites_per_minute_per_session = 100000\n"
        '[store]\nbackend = "postgresql"\nthreads = 16\n'
        "[store.postgresql]\nprimaries = [{}]\nreplica = {}\n".format(
            name,
            json.dumps(os.path.join(workdir, name)),
            port,
            json.dumps(primary_dsn),
            json.dumps(replica_dsn),
        )
    )
    return benchlib.start_node(workdir, config, port, tree=tree), port


class Relay:
    """A ``bench/delay_proxy.py`` in front of the primary, with its count of
    client flights (round trips)."""

    def __init__(self, target_port: int, one_way_ms: int) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "bench", "delay_proxy.py"), str(self.port), str(target_port)]
            + [str(one_way_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == b"ready"

    def flights(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"count\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline().split()[1])

    def kill(self) -> None:
        self.process.kill()


def writes(port: int, key: str, tenant: str, relay: Relay, label: str) -> dict[str, tuple[list[float], list[int]]]:
    """The write table's requests on one node: per kind, latencies (ms) and
    round trips to the primary (flights through ``relay``)."""
    os.sched_setaffinity(0, {1})
    kinds = ("post", "reply", "like", "create", "read")
    out: dict[str, tuple[list[float], list[int]]] = {k: ([], []) for k in kinds}
    url = quote(f"https://bench.test/writes-{label}", safe="")
    comments = f"/api/v1/{tenant}/comments?urlId={url}"

    def timed(kind: str, method: str, path: str, body: object, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
        before = relay.flights()
        status, got, payload, ms = request(port, method, path, key, body, headers)
        assert status in (200, 201), (kind, status, payload)
        out[kind][0].append(ms)
        out[kind][1].append(relay.flights() - before)
        return got, payload

    for i in range(WRITES):
        # A new reader each time: the post creates their session.
        got, payload = timed("post", "POST", comments, {"text": f"post {i}", "displayName": "P"}, {})
        cookie = got["set-cookie"].split(";", 1)[0]
        parent = json.loads(payload)["comment"]["id"]
        reply = {"text": f"reply {i}", "displayName": "P", "parentId": parent}
        timed("reply", "POST", comments, reply, {"cookie": cookie})
        timed("like", "POST", f"/api/v1/{tenant}/comments/{parent}/like", None, {"cookie": cookie})
        create = {"urlId": f"https://bench.test/created-{label}", "text": f"created {i}", "displayName": "B"}
        got, payload = timed("create", "POST", "/api/v1/manage/comments", create, {})
        # The floor at the same moment: a read that is one round trip.
        created = json.loads(payload)["comment"]["id"]
        timed("read", "GET", f"/api/v1/manage/comments/{created}?readPreference=primary", None, {})
    return out


def write_table(results: list[tuple[str, dict[str, tuple[list[float], list[int]]]]]) -> None:
    print()
    print(f"writes, {WRITES} of each in sequence, one client; round trips to the primary counted by the relay:")
    print("| write | code | p50 ms | p99 ms | round trips (median) |")
    print("|---|---|---:|---:|---:|")
    names = {
        "post": "public post (new session)",
        "reply": "reply (with the session)",
        "like": "like",
        "create": "tenant-API create",
        "read": "for scale: a PRIMARY read (one round trip)",
    }
    for kind, name in names.items():
        for label, out in results:
            times, trips = out[kind]
            print(
                f"| {name} | {label} | {statistics.median(times):.1f} | {pct(times, 0.99):.1f} | "
                f"{statistics.median(trips):.0f} |"
            )


def wrk(url: str, key: str) -> dict[str, float]:
    return benchlib.wrk(url, connections=CONNECTIONS, seconds=SECONDS, headers={"authorization": "Bearer " + key})


def request(
    port: int,
    method: str,
    path: str,
    key: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    all_headers = {"authorization": "Bearer " + key, **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["content-type"] = "application/json"
    started = time.perf_counter()
    conn.request(method, path, body=data, headers=all_headers)
    response = conn.getresponse()
    payload = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    conn.close()
    return (
        response.status,
        {k.lower(): v for k, v in response.getheaders()},
        payload,
        elapsed,
    )


def post_then_read(port: int, key: str) -> dict[str, object]:
    """Post through the tenant API, then read the comment back three ways."""
    os.sched_setaffinity(0, {1})
    times: dict[str, list[float]] = {"post": [], "token": [], "primary": []}
    nearest_missed = 0
    for i in range(PAIRS):
        status, headers, payload, ms = request(
            port,
            "POST",
            "/api/v1/manage/comments",
            key,
            {
                "urlId": "https://bench.test/pairs",
                "text": f"pair {i}",
                "displayName": "B",
            },
        )
        assert status == 201, payload
        times["post"].append(ms)
        comment_id = json.loads(payload)["comment"]["id"]
        token = headers["x-consistency-token"]
        path = "/api/v1/manage/comments/{}?readPreference={}"
        status, _, _, _ = request(port, "GET", path.format(comment_id, "nearest"), key)
        nearest_missed += status == 404
        status, _, payload, ms = request(
            port,
            "GET",
            path.format(comment_id, "nearest"),
            key,
            headers={"x-consistency-token": token},
        )
        assert status == 200, payload
        times["token"].append(ms)
        status, _, payload, ms = request(port, "GET", path.format(comment_id, "primary"), key)
        assert status == 200, payload
        times["primary"].append(ms)
    return {"times": times, "nearest_missed": nearest_missed}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def metric(port: int, name: str) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name) :]] = float(value)
    return found


def main() -> None:
    sh("ip", "link", "set", "lo", "up")
    workdir = tempfile.mkdtemp(prefix="fastedge-bench-")
    cluster = PostgresCluster()
    node = None
    children: list[subprocess.Popen[bytes]] = []
    try:
        primary = cluster.start_primary()
        if netem_available():
            how = "tc netem on the namespace's loopback"
            standby = cluster.add_standby("near")
            tenant, key, thread = seed(primary.dsn())
            make_far(primary.port)
            far_dsn = primary.dsn()
        else:
            # No sch_netem in this kernel: the same delay, added by a relay
            # in front of the primary (the standby streams through it too).
            how = "a delaying TCP relay (this kernel has no tc netem)"
            relay_port = free_port()
            relay = subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(REPO, "bench", "delay_proxy.py"),
                    str(relay_port),
                    str(primary.port),
                    str(ONE_WAY_MS),
                ],
                stdout=subprocess.PIPE,
            )
            children.append(relay)
            assert relay.stdout is not None and relay.stdout.readline().strip() == b"ready"
            tenant, key, thread = seed(primary.dsn())
            standby = cluster.add_standby(
                "near",
                settings={"primary_conninfo": f"host=127.0.0.1 port={relay_port} user=postgres application_name=near"},
            )
            far_dsn = primary.dsn().replace(f"port={primary.port}", f"port={relay_port}")
        node, port = start_node(workdir, far_dsn, standby.dsn())
        # The node's own relay to the primary for the write table: its
        # flights are this node's round trips (the standby streams elsewhere).
        write_relay = Relay(primary.port, 0 if how.startswith("tc") else ONE_WAY_MS)
        children.append(write_relay.process)
        base = f"http://127.0.0.1:{port}"
        url = base + f"/api/v1/manage/comments?status=approved&limit=100&threadId={thread}&readPreference="
        print(
            f"fastedge bench: thread reads, NEAREST vs PRIMARY, primary {2 * ONE_WAY_MS} ms away (round trip) by {how}, "
            f"wrk -c{CONNECTIONS} -d{SECONDS}s; node on CPU 0, wrk on CPU 1"
        )
        # Warm the pools of both paths.
        wrk_warm = subprocess.run(
            [
                "wrk",
                "-t1",
                "-c4",
                "-d2s",
                "-H",
                "authorization: Bearer " + key,
                url + "primary",
            ],
            capture_output=True,
        )
        del wrk_warm
        nearest = wrk(url + "nearest", key)
        primary_reads = wrk(url + "primary", key)
        pairs = post_then_read(port, key)
        outcomes = metric(port, "fastedge_store_token_reads_total")
        lag = metric(port, "fastedge_store_replica_lag_seconds")
        times = pairs["times"]  # type: ignore[index]
        print()
        print("| reads of a 100-comment page | requests/s | p50 ms | p99 ms | non-2xx |")
        print("|---|---:|---:|---:|---:|")
        for name, r in (
            ("NEAREST (local standby)", nearest),
            ("PRIMARY (80 ms away)", primary_reads),
        ):
            print("| {} | {:.0f} | {:.1f} | {:.1f} | {:.0f} |".format(name, r["rps"], r["p50"], r["p99"], r["errors"]))
        print()
        print(f"post-then-read, {PAIRS} pairs through the tenant API (sequential, one client):")
        print("| step | p50 ms | p99 ms |")
        print("|---|---:|---:|")
        for label, key_ in (
            ("POST comment (write on the primary)", "post"),
            ("GET nearest with X-Consistency-Token", "token"),
            ("GET primary", "primary"),
        ):
            values = times[key_]
            print(f"| {label} | {statistics.median(values):.1f} | {pct(values, 0.99):.1f} |")
        print()
        print(
            "NEAREST reads without the token that missed the new comment: {}/{}".format(pairs["nearest_missed"], PAIRS)
        )
        print(
            "token reads by outcome: {}".format(
                ", ".join("{}={:.0f}".format(k.split('"')[3], v) for k, v in sorted(outcomes.items()))
            )
        )
        print(f"replica lag (seconds) last measured: {list(lag.values())}")
        # The write table: this tree and the baseline, one after the other,
        # each a node whose only way to the primary is the counting relay.
        benchlib.stop(node)
        node = None
        relay_dsn = primary.dsn().replace(f"port={primary.port}", f"port={write_relay.port}")
        results = []
        tree = benchlib.baseline_tree(workdir, BASELINE)
        try:
            if tree is not None:
                base_node, base_port = start_node(workdir, relay_dsn, standby.dsn(), tree=tree, name="baseline")
                try:
                    results.append((f"{BASELINE} (before)", writes(base_port, key, tenant, write_relay, "base")))
                finally:
                    benchlib.stop(base_node)
        finally:
            if tree is not None:
                benchlib.drop_tree(tree)
        node, port = start_node(workdir, relay_dsn, standby.dsn(), name="after")
        results.append(("this tree (after)", writes(port, key, tenant, write_relay, "after")))
        write_table(results)
        print(
            "ratio PRIMARY/NEAREST p50: {:.1f}x; requests/s NEAREST/PRIMARY: {:.1f}x".format(
                primary_reads["p50"] / nearest["p50"],
                nearest["rps"] / primary_reads["rps"],
            )
        )
    finally:
        if node is not None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
        cluster.destroy()
        for child in children:
            child.kill()


if __name__ == "__main__":
    main()
