"""The body of ``bench/thread-read``: see that script.

Runs against one node on the embedded SQLite store, then the same thread
read through Isso (the self-hosted comment server people pick in Python):

- anonymous readers (no cookie): the common case, served from the page cache;
- readers with a session cookie: the shared page plus that viewer's likes
  and blocks (kept per node between their writes, ``api.viewer_cache_seconds``);
- the same with that cache off: the viewer's state read from the store per
  request (how it was before the cache: the baseline of the line above);
- anonymous readers with the page cache off: the raw cost of a read
  (two store queries, tree building and JSON encoding per request);
- Isso 0.14 under gunicorn (two sync workers, both on the node's core, as
  its docs set it up), the same 200 comments, ``GET /?uri=...``: installed
  into ``bench/out/isso-venv`` on first run. ``--no-isso`` leaves it out.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from benchlib import REPO, start_node, stop, wrk

#: ``--access-log``: instead of the three cases, the cost of the access log
#: on the cheapest request (anonymous, page cache on): off, combined and
#: JSON, each on a fresh node, interleaved over ROUNDS rounds in one run.
ACCESS_LOG = "--access-log" in sys.argv
ISSO = "--no-isso" not in sys.argv and not ACCESS_LOG
_ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
SECONDS = int(_ARGS[0]) if len(_ARGS) > 0 else 10
#: --access-log: rounds of (off, combined, json), interleaved so that the
#: load of a shared machine falls on every case alike; medians are compared.
ROUNDS = 5
CONNECTIONS = int(_ARGS[1]) if len(_ARGS) > 1 else 64
COMMENTS = 200
URL_ID = "https://bench.test/article"


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (all its threads) so far."""
    with open("/proc/{}/stat".format(pid)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(
    port: int, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = json.dumps(body).encode() if body is not None else None
    all_headers = dict(headers or {})
    if data is not None:
        all_headers["content-type"] = "application/json"
    conn.request(method, path, body=data, headers=all_headers)
    response = conn.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def seed(workdir: str, data_dir: str, port: int) -> tuple[str, str]:
    out = subprocess.run(
        [os.path.join(REPO, ".venv/bin/fastedge-admin"), "--data-dir", data_dir, "tenant", "create", "Bench", "--json"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    created = json.loads(out)
    tenant, key = created["tenantId"], created["apiKey"]
    auth = {"authorization": "Bearer " + key}
    parents: list[str] = []
    for i in range(COMMENTS):
        body: dict[str, object] = {
            "urlId": URL_ID,
            "text": "Comment {} with **some** text, a [link](https://example.test/{}) and enough words to look real.".format(
                i, i
            ),
            "displayName": "Reader {}".format(i % 37),
        }
        # Half top-level, half replies: all 200 fit one page (limit=100).
        if i % 2 == 1 and parents:
            body["parentId"] = parents[-1]
        status, _, raw = call(port, "POST", "/api/v1/manage/comments", body, auth)
        assert status == 201, raw
        if "parentId" not in body:
            parents.append(json.loads(raw)["comment"]["id"])
    # One reader with a session, who liked a few comments.
    status, headers, raw = call(port, "POST", "/api/v1/{}/comments/{}/like".format(tenant, parents[0]))
    assert status == 200, raw
    cookie = headers["set-cookie"].split(";")[0]
    return tenant, cookie


ISSO_LABEL = "Isso 0.14, gunicorn -w2 (same thread)"
ISSO_VENV = os.path.join(REPO, "bench", "out", "isso-venv")


def isso_venv() -> str:
    """Isso 0.14 and gunicorn in their own venv (their pins are not ours)."""
    python = os.path.join(ISSO_VENV, "bin", "python")
    if not os.path.exists(os.path.join(ISSO_VENV, "bin", "gunicorn")):
        subprocess.run([sys.executable, "-m", "venv", ISSO_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "isso==0.14.0", "gunicorn"], check=True)
    return ISSO_VENV


def isso_case(workdir: str) -> tuple[str, dict[str, float], int, int]:
    """The same 200-comment thread read through Isso on the node's core."""
    venv = isso_venv()
    port = free_port()
    cfg = os.path.join(workdir, "isso.cfg")
    with open(cfg, "w") as f:
        f.write(
            "[general]\ndbpath = {}\nhost = http://127.0.0.1:{}/\n"
            "[guard]\nenabled = false\n[moderation]\nenabled = false\n".format(os.path.join(workdir, "isso.db"), port)
        )
    log = open(os.path.join(workdir, "isso.log"), "wb")
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            os.path.join(venv, "bin", "gunicorn"),
            "-w",
            "2",
            "-b",
            "127.0.0.1:{}".format(port),
            "isso.run",
        ],
        env=dict(os.environ, ISSO_SETTINGS=cfg),
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        uri = "/article"
        deadline = 60.0
        start = time.monotonic()
        while True:
            try:
                status, _, _ = call(port, "GET", "/?uri=" + uri)
                break
            except OSError:
                if time.monotonic() - start > deadline or server.poll() is not None:
                    raise SystemExit("Isso did not start; see {}".format(log.name)) from None
                time.sleep(0.2)
        parents: list[int] = []
        for i in range(COMMENTS):
            body: dict[str, object] = {
                "text": "Comment {} with **some** text, a [link](https://example.test/{}) and enough words.".format(
                    i, i
                ),
                "author": "Reader {}".format(i % 37),
                "title": "Article",
            }
            if i % 2 == 1 and parents:
                body["parent"] = parents[-1]
            status, _, raw = call(port, "POST", "/new?uri=" + uri, body)
            assert status == 201, raw
            if "parent" not in body:
                parents.append(json.loads(raw)["id"])
        status, _, raw = call(port, "GET", "/?uri=" + uri)
        page = json.loads(raw)
        shown = sum(1 + len(c.get("replies", [])) for c in page["replies"])
        url = "http://127.0.0.1:{}/?uri={}".format(port, uri)
        # Sync workers queue 64 connections: a request waits for those ahead
        # of it, far past wrk's default 2 s timeout. No wrk warm-up: its
        # queued requests would still be served during the measured run.
        call(port, "GET", "/?uri=" + uri)
        cpu_before = cpu_seconds_tree(server.pid)
        result = wrk(url, connections=CONNECTIONS, seconds=SECONDS, timeout_seconds=120)
        result["cpu_us"] = (cpu_seconds_tree(server.pid) - cpu_before) / max(1.0, result["rps"] * SECONDS) * 1e6
        return ISSO_LABEL, result, len(raw), shown
    finally:
        stop(server)


def cpu_seconds_tree(pid: int) -> float:
    """CPU time of a process and its children (gunicorn's workers)."""
    total = cpu_seconds(pid)
    try:
        children = open("/proc/{}/task/{}/children".format(pid, pid)).read().split()
    except OSError:
        children = []
    return total + sum(cpu_seconds(int(c)) for c in children)


def main() -> None:
    workdir = tempfile.mkdtemp(prefix="fastedge-bench-")
    data_dir = os.path.join(workdir, "data")
    rows = []
    cases = (
        tuple(
            ("access log {}, round {}".format(fmt, n + 1), 2.0, False, fmt)
            for n in range(ROUNDS)
            for fmt in ("off", "combined", "json")
        )
        if ACCESS_LOG
        else (
            ("anonymous, page cache on (default)", 2.0, False, "combined"),
            ("with a session cookie (default)", 2.0, True, "combined"),
            ("with a session cookie, viewer cache off", 2.0, "uncached", "combined"),
            ("anonymous, page cache off", 0.0, False, "combined"),
        )
    )
    for label, cache_seconds, with_cookie, access_log in cases:
        viewer_seconds = 0.0 if with_cookie == "uncached" else 60.0
        port = free_port()
        config = (
            '[node]\nid = "bench"\ndata_dir = {}\n'
            '[http]\nendpoint = "tcp:{}:interface=127.0.0.1:backlog=4096"\n'
            "[api]\npage_cache_seconds = {}\nviewer_cache_seconds = {}\nwrites_per_minute_per_ip = 100000\n"
            "writes_per_minute_per_session = 100000\n"
            '[log]\naccess = "{}"\n'
        ).format(json.dumps(data_dir), port, cache_seconds, viewer_seconds, access_log)
        node = start_node(workdir, config, port)
        try:
            if not rows:
                tenant, cookie = seed(workdir, data_dir, port)
            path = "/api/v1/{}/comments?urlId={}&limit=100".format(tenant, URL_ID)
            status, _, raw = call(port, "GET", path)
            page = json.loads(raw)
            shown = sum(1 + len(c["replies"]) for c in page["comments"])
            headers = {"cookie": cookie} if with_cookie else {}
            url = "http://127.0.0.1:{}{}".format(port, path)
            wrk(url, connections=CONNECTIONS, seconds=2, headers=headers)  # warm up
            cpu_before = cpu_seconds(node.pid)
            result = wrk(url, connections=CONNECTIONS, seconds=SECONDS, headers=headers)
            # CPU time the node (every thread of it) spent per request: on a
            # shared machine far steadier than requests/s, which move with
            # whatever else runs.
            result["cpu_us"] = (cpu_seconds(node.pid) - cpu_before) / max(1.0, result["rps"] * SECONDS) * 1e6
            rows.append((label, result, len(raw), shown))
        finally:
            stop(node)
    if ISSO:
        rows.append(isso_case(workdir))
    print()
    print(
        "thread read, NEAREST, SQLite; {} comments in the thread; wrk -c{} -d{}s; node on CPU 0, wrk on CPU 1".format(
            COMMENTS, CONNECTIONS, SECONDS
        )
    )
    print(
        "{:<38} {:>10} {:>9} {:>9} {:>8} {:>9} {:>10}".format(
            "case", "req/s", "p50 ms", "p99 ms", "errors", "body KB", "CPU us/req"
        )
    )
    for label, r, size, _shown in rows:
        print(
            "{:<38} {:>10} {:>9.2f} {:>9.2f} {:>8.0f} {:>9.1f} {:>10.1f}".format(
                label,
                "{:.1f}".format(r["rps"]) if r["rps"] < 100 else "{:.0f}".format(r["rps"]),
                r["p50"],
                r["p99"],
                r["errors"] + r["socket_errors"],
                size / 1024,
                r["cpu_us"],
            )
        )
    print("(each page: {} comments of the thread's {} with limit=100 top-level)".format(rows[0][3], COMMENTS))
    by_label = {label: r for label, r, _, _ in rows}
    anonymous = by_label["anonymous, page cache on (default)"]["rps"] if not ACCESS_LOG else 0
    if anonymous:
        for label in ("with a session cookie (default)", "with a session cookie, viewer cache off"):
            print("{}: {:.0f} % of the anonymous rate".format(label, by_label[label]["rps"] / anonymous * 100))
        isso = by_label[ISSO_LABEL]["rps"] if ISSO else 0
        if isso:
            print(
                "fastedge anonymous / Isso: {:.0f}x; with a session / Isso: {:.0f}x".format(
                    anonymous / isso, by_label["with a session cookie (default)"]["rps"] / isso
                )
            )
    if ACCESS_LOG:
        import statistics

        def median(fmt: str, key: str) -> float:
            return statistics.median(r[key] for label, r, _, _ in rows if label.startswith("access log " + fmt + ","))

        print()
        print("medians over {} interleaved rounds:".format(ROUNDS))
        off_rps, off_cpu = median("off", "rps"), median("off", "cpu_us")
        for fmt in ("off", "combined", "json"):
            rps, cpu = median(fmt, "rps"), median(fmt, "cpu_us")
            cost = (
                ""
                if fmt == "off"
                else "  (req/s {:+.1f} %, CPU per request {:+.1f} % vs off)".format(
                    (rps / off_rps - 1) * 100, (cpu / off_cpu - 1) * 100
                )
            )
            print("  access log {:<9} {:>8.0f} req/s {:>8.1f} CPU us/req{}".format(fmt, rps, cpu, cost))


if __name__ == "__main__":
    main()
