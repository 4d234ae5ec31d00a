"""The body of ``bench/moderation``: see that script for what it measures.

Steps, for each store: seed one tenant with COMMENTS comments (10 % pending,
2 % flagged, a few spam and removed; the schema made by the store itself,
the rows inserted in bulk over a plain DB-API connection), start a node
(``twistd fastedge``) pinned to CPU 0, and from CPU 1, one request at a
time over HTTP/1.1 keep-alive:

- the moderation queue, 50 items: the pending queue oldest first (pages
  1 to 5 in turn) and the flagged queue most-flagged first;
- a text search in the pending queue (``q=`` a word in about 1 % of comments);
- a bulk approve of 100 pending comments (each call different ids).

The PostgreSQL run puts the primary 80 ms away (round trip) behind
``bench/delay_proxy.py`` (user-space delay on loopback) with a hot standby
beside the node fed through the same delay, and measures the reads NEAREST
(sending the last action's consistency token, as a moderator's page does)
and PRIMARY.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import benchlib  # noqa: E402
import psycopg  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from fastedge.api.keys import hash_api_key, new_api_key  # noqa: E402
from fastedge.store.db import POSTGRESQL, SQLITE, Sql  # noqa: E402
from fastedge.store.model import ReadPreference  # noqa: E402
from fastedge.store.shared import new_id  # noqa: E402
from fastedge.testing.fakes import run_inline
from tests.support.ports import free_port
from tests.support.postgres import PostgresCluster

COMMENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
ONE_WAY_MS = 40
QUEUE_CALLS = 200
SEARCH_CALLS = 40
BULK_CALLS = 8
PRIMARY = ReadPreference.PRIMARY
WORDS = "the a moderation thread reply great point agree disagree article news today think people really".split()
RARE = "casino"
M = "/api/v1/manage/moderation"

# The seed's statements, run once per row (``executemany``): every column
# given, as the tables have no server defaults.
INSERT_AUTHOR = "INSERT INTO authors (id, tenant_id, kind, created_ms) VALUES (:id, :tenant_id, :kind, :created_ms)"
INSERT_THREAD = (
    "INSERT INTO threads (id, tenant_id, url_id, title, closed, created_ms, comment_count)"
    " VALUES (:id, :tenant_id, :url_id, :title, :closed, :created_ms, :comment_count)"
)
INSERT_COMMENT = (
    "INSERT INTO comments (id, tenant_id, thread_id, parent_id, root_id, author_id, display_name, body_source,"
    " body_html, status, created_ms, edited_ms, like_count, flag_count)"
    " VALUES (:id, :tenant_id, :thread_id, :parent_id, :root_id, :author_id, :display_name, :body_source,"
    " :body_html, :status, :created_ms, :edited_ms, :like_count, :flag_count)"
)
INSERT_FLAG = (
    "INSERT INTO flags (comment_id, flagger_id, tenant_id, created_ms)"
    " VALUES (:comment_id, :flagger_id, :tenant_id, :created_ms)"
)
COUNT_APPROVED = "UPDATE threads SET comment_count = :comment_count WHERE id = :id"


def make_tenant(store: Any) -> tuple[str, str]:
    """Open (migrate) the store, make a tenant and an API key."""
    benchlib.result_of(store.open())
    tenant = benchlib.result_of(store.create_tenant("Bench", "global", created_ms=1, read_preference=PRIMARY)).value
    key = new_api_key()
    benchlib.result_of(store.add_api_key(tenant.id, hash_api_key(key), created_ms=1, read_preference=PRIMARY))
    benchlib.result_of(store.close())
    return tenant.id, key


def insert_many(cursor: Any, backend: str, statement: str, rows: list[dict[str, Any]]) -> None:
    """Run ``statement`` for each of ``rows`` (dicts of the same keys), in
    ``backend``'s parameter style."""
    if rows:
        text, _ = Sql(statement, **rows[0]).render(backend)
        cursor.executemany(text, rows)


def fill(raw: Any, backend: str, tenant: str, n: int) -> None:
    """Insert ``n`` comments in bulk on the DB-API connection ``raw`` (one
    transaction, committed): 10 % pending, 2 % flagged (approved, 1 to 5
    flags each), 0.5 % spam, 0.5 % removed, the rest approved."""
    rng = random.Random(7)
    start = 1_700_000_000_000
    threads = [new_id() for _ in range(max(1, n // 100))]
    authors = [new_id() for _ in range(max(1, n // 20))]
    pending_n, flagged_n = n // 10, n // 50
    statuses = ["pending"] * pending_n + ["flagged"] * flagged_n + ["spam"] * (n // 200) + ["removed"] * (n // 200)
    statuses += ["approved"] * (n - len(statuses))
    rng.shuffle(statuses)
    approved: dict[str, int] = {}
    with closing(raw.cursor()) as cursor:
        insert_many(
            cursor,
            backend,
            INSERT_AUTHOR,
            [dict(id=a, tenant_id=tenant, kind="anonymous", created_ms=start) for a in authors],
        )
        insert_many(
            cursor,
            backend,
            INSERT_THREAD,
            [
                dict(
                    id=t,
                    tenant_id=tenant,
                    url_id="https://bench.test/{}".format(i),
                    title="",
                    closed=False,
                    created_ms=start,
                    comment_count=0,
                )
                for i, t in enumerate(threads)
            ],
        )
        rows, flags = [], []
        for i, status in enumerate(statuses):
            cid = new_id()
            thread = threads[i % len(threads)]
            words = [rng.choice(WORDS) for _ in range(12)]
            if rng.random() < 0.01:
                words[rng.randrange(12)] = RARE
            text = " ".join(words)
            flag_count = rng.randint(1, 5) if status == "flagged" else 0
            status = "approved" if status == "flagged" else status
            if status == "approved":
                approved[thread] = approved.get(thread, 0) + 1
            rows.append(
                dict(
                    id=cid,
                    tenant_id=tenant,
                    thread_id=thread,
                    parent_id=None,
                    root_id=cid,
                    author_id=authors[i % len(authors)],
                    display_name="Bench",
                    body_source=text,
                    body_html="<p>{}</p>".format(text),
                    status=status,
                    created_ms=start + i * 1000,
                    edited_ms=None,
                    like_count=0,
                    flag_count=flag_count,
                )
            )
            for f in range(flag_count):
                flags.append(
                    dict(comment_id=cid, flagger_id=authors[f], tenant_id=tenant, created_ms=start + i * 1000 + f)
                )
            if len(rows) == 5000:
                insert_many(cursor, backend, INSERT_COMMENT, rows)
                rows = []
        insert_many(cursor, backend, INSERT_COMMENT, rows)
        insert_many(cursor, backend, INSERT_FLAG, flags)
        insert_many(
            cursor,
            backend,
            COUNT_APPROVED,
            [dict(id=thread, comment_count=count) for thread, count in approved.items()],
        )
    raw.commit()


class Client:
    """One keep-alive HTTP/1.1 connection to the node, as a moderator's tool."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.auth = {"authorization": "Bearer " + key}
        self.token: str | None = None

    def call(self, method: str, path: str, body: Any = None, token: bool = False) -> tuple[Any, float]:
        headers = dict(self.auth)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        if token and self.token:
            headers["x-consistency-token"] = self.token
        started = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise SystemExit("{} {} -> {} {!r}".format(method, path, response.status, payload[:300]))
        written = response.getheader("x-consistency-token")
        if written:
            self.token = written
        return json.loads(payload), elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(client: Client, rp: str, bulk: bool) -> dict[str, list[float]]:
    """Queue pages, searches and (when ``bulk``) bulk approves."""
    times: dict[str, list[float]] = {"queue": [], "search": [], "bulk": []}
    token = rp == "nearest"
    # Pending pages 1-5 in turn and the flagged queue, most flagged first.
    cursors: list[str | None] = [None]
    first = True
    for i in range(QUEUE_CALLS):
        if i % 6 == 5:
            path = M + "/queue?queue=flagged&sort=flags&limit=50&readPreference=" + rp
        else:
            cursor = cursors[i % 6 % len(cursors)]
            path = M + "/queue?queue=pending&limit=50&readPreference=" + rp + ("&cursor=" + cursor if cursor else "")
        page, ms = client.call("GET", path, token=token)
        if first:
            first = False  # connection set-up and pool warm-up
            continue
        times["queue"].append(ms)
        if len(cursors) < 5 and page.get("nextCursor") and "queue=pending" in path:
            cursors.append(page["nextCursor"])
    for _ in range(SEARCH_CALLS):
        _, ms = client.call("GET", M + "/queue?queue=pending&limit=50&q=" + RARE + "&readPreference=" + rp, token=token)
        times["search"].append(ms)
    if bulk:
        for _ in range(BULK_CALLS):
            page, _ = client.call("GET", M + "/queue?queue=pending&limit=100&readPreference=primary")
            ids = [c["id"] for c in page["comments"]]
            _, ms = client.call("POST", M + "/actions", {"action": "approve", "commentIds": ids})
            times["bulk"].append(ms)
            # The moderator's next page, NEAREST with the action's token, must not show them.
            after, _ = client.call("GET", M + "/queue?queue=pending&limit=100&readPreference=nearest", token=True)
            assert not {c["id"] for c in after["comments"]} & set(ids), "approved comments still pending"
    return times


def row(label: str, values: list[float]) -> str:
    if not values:
        return "| {} | - | - | - | 0 |".format(label)
    return "| {} | {:.1f} | {:.1f} | {:.1f} | {} |".format(
        label, statistics.median(values), pct(values, 0.99), max(values), len(values)
    )


def node_config(workdir: str, port: int, store: str) -> str:
    """A node on free loopback ports (colleagues' nodes may hold the defaults)."""
    tls, mesh, dns = free_port(), free_port(), free_port()
    return (
        '[node]\nid = "bench"\ndata_dir = {}\n'
        '[http]\nendpoint = "tcp:{}:interface=127.0.0.1:backlog=1024"\n'
        '[tls]\nendpoint = "tcp:{}:interface=127.0.0.1"\n'
        '[mesh]\nendpoint = "tcp:{}:interface=127.0.0.1"\n'
        "[dns]\nport = {}\n{}".format(json.dumps(os.path.join(workdir, "data")), port, tls, mesh, dns, store)
    )


def run_sqlite(workdir: str) -> dict[str, list[float]]:
    from fastedge.store.sqlite import SQLiteStore

    path = os.path.join(workdir, "data", "fastedge.sqlite3")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tenant, key = make_tenant(SQLiteStore(path, run=run_inline, clock=Clock()))
    started = time.monotonic()
    raw = sqlite3.connect(path)
    try:
        fill(raw, SQLITE, tenant, COMMENTS)
    finally:
        raw.close()
    print("  seeded {} comments into SQLite in {:.1f} s".format(COMMENTS, time.monotonic() - started), flush=True)
    port = free_port()
    node = benchlib.start_node(workdir, node_config(workdir, port, '[store]\nbackend = "sqlite"\n'), port)
    try:
        os.sched_setaffinity(0, {1})
        return measure(Client(port, key), "primary", bulk=True)
    finally:
        benchlib.stop(node)
        os.sched_setaffinity(0, {0, 1})


def run_postgres(workdir: str) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    from fastedge.store.postgresql import PostgresStore

    cluster = PostgresCluster()
    relay = node = None
    try:
        primary = cluster.start_primary()
        relay_port = free_port()
        relay = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "bench", "delay_proxy.py"), str(relay_port), str(primary.port)]
            + [str(ONE_WAY_MS)],
            stdout=subprocess.PIPE,
        )
        assert relay.stdout is not None and relay.stdout.readline().strip() == b"ready"
        tenant, key = make_tenant(PostgresStore([primary.dsn()], None, run=run_inline, clock=Clock()))
        started = time.monotonic()
        with psycopg.connect(primary.dsn()) as raw:
            fill(raw, POSTGRESQL, tenant, COMMENTS)
            raw.execute("ANALYZE")
        print("  seeded {} comments into PostgreSQL in {:.1f} s".format(COMMENTS, time.monotonic() - started))
        standby = cluster.add_standby(
            "near",
            settings={"primary_conninfo": f"host=127.0.0.1 port={relay_port} user=postgres application_name=near"},
        )
        far = primary.dsn().replace(f"port={primary.port}", f"port={relay_port}")
        port = free_port()
        store = '[store]\nbackend = "postgresql"\nthreads = 8\n[store.postgresql]\nprimaries = [{}]\nreplica = {}\n'
        node = benchlib.start_node(
            workdir, node_config(workdir, port, store.format(json.dumps(far), json.dumps(standby.dsn()))), port
        )
        os.sched_setaffinity(0, {1})
        client = Client(port, key)
        nearest = measure(client, "nearest", bulk=True)
        primary_reads = measure(client, "primary", bulk=False)
        return nearest, primary_reads
    finally:
        os.sched_setaffinity(0, {0, 1})
        if node is not None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
        cluster.destroy()
        if relay is not None:
            relay.kill()


def main() -> None:
    which = os.environ.get("BENCH_STORES", "sqlite,postgresql").split(",")
    print(
        "fastedge bench/moderation: {} comments in one tenant ({} pending, {} flagged); "
        "node on CPU 0, one moderator client on CPU 1; load average {:.1f}".format(
            COMMENTS, COMMENTS // 10, COMMENTS // 50, os.getloadavg()[0]
        ),
        flush=True,
    )
    results: list[tuple[str, dict[str, list[float]]]] = []
    if "sqlite" in which:
        with tempfile.TemporaryDirectory(prefix="fastedge-bench-") as workdir:
            results.append(("SQLite (embedded)", run_sqlite(workdir)))
    if "postgresql" in which:
        with tempfile.TemporaryDirectory(prefix="fastedge-bench-") as workdir:
            nearest, primary_reads = run_postgres(workdir)
            results.append(("PostgreSQL NEAREST + token (reads), primary 80 ms away", nearest))
            results.append(("PostgreSQL PRIMARY, 80 ms away", primary_reads))
    print()
    print("| store | operation | p50 ms | p99 ms | max ms | calls |")
    print("|---|---|---:|---:|---:|---:|")
    for name, times in results:
        for label, key in (
            ("queue page, 50 items", "queue"),
            ("text search, 50 items", "search"),
            ("bulk approve of 100", "bulk"),
        ):
            if times[key]:
                print(row(name + " | " + label, times[key]))
    print()
    print("bulk approve on PostgreSQL is a write (on the primary, 80 ms away): one round trip is 80 ms")


if __name__ == "__main__":
    main()
