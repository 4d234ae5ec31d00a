#!/usr/bin/env python3
"""Media CDN benchmark: this node vs nginx serving the same cached objects.

One command (from the repository root, after ``scripts/setup-venv``)::

    .venv/bin/python bench/cdn.py [--runs 3] [--seconds 5]

It installs its peers when missing (Debian's ``nginx-light`` and ``wrk``),
starts a real S3 origin (SeaweedFS, from the test extras) and one node with
the CDN configured, warms the node's cache with a 64 KB and a 2 KB object,
and writes the same two files for nginx (one worker, ``sendfile on``). The
servers are pinned to CPU 0 and wrk to CPU 1 (``taskset``); only the server
being measured has load, and each cell measures the node then nginx back to
back, so on a shared machine both see the same background. For both
servers, both objects, 64 and 256 connections, over plain HTTP and over TLS
(HTTP/1.1; wrk does not speak HTTP/2), it prints requests/s and p50/p99
latency (medians of ``--runs`` runs) and the node's share of nginx's
requests/s (median of the paired per-run ratios).

Then the cold-miss check: 100 clients ask at once for an object the node
has never seen; the origin's own request counter must grow by exactly one.

Loopback only, bounded in time (about runs x 16 x seconds, plus setup).

"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.nodes import create_tenants
from tests.support.ports import free_ports
from tests.support.seaweed import SeaweedS3

SERVER_CPU = "0"
LOAD_CPU = "1"
SIZES = {"64KB": 64 * 1024, "2KB": 2 * 1024}
CONNECTIONS = (64, 256)


def ensure_packages() -> None:
    missing = [
        p
        for p, exe in (("nginx-light", "nginx"), ("wrk", "wrk"))
        if shutil.which(exe) is None and not os.path.exists("/usr/sbin/" + exe)
    ]
    if missing:
        print("installing {}".format(" ".join(missing)), flush=True)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
            check=True,
            env=env,
        )


def wait_http(url: str, timeout: float = 30.0) -> None:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
                r.read()
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


_LAT = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(url: str, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "5s",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct, value, unit in _LAT.findall(out):
        lat[pct] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50": lat.get("50", float("nan")),
        "p99": lat.get("99", float("nan")),
        "bad": float(errors.group(1)) if errors else 0.0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",  # type: ignore[dict-item]
    }


def start_nginx(workdir: str, docroot: str, port: int, tls_port: int, pem: str) -> subprocess.Popen[bytes]:
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {workdir}/tmp;
    proxy_temp_path {workdir}/tmp;
    fastcgi_temp_path {workdir}/tmp;
    uwsgi_temp_path {workdir}/tmp;
    scgi_temp_path {workdir}/tmp;
    types {{ image/png png; }}
    server {{ listen 127.0.0.1:{port} backlog=1024; root {docroot}; }}
    server {{
        listen 127.0.0.1:{tls_port} ssl backlog=1024;
        ssl_certificate {pem};
        ssl_certificate_key {pem};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {docroot};
    }}
}}
""")
    os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.Popen(
        [
            "taskset",
            "-c",
            SERVER_CPU,
            nginx,
            "-c",
            conf,
            "-e",
            os.path.join(workdir, "nginx-error.log"),
        ]
    )


def cold_miss_check(node_http: str, tenant: str, s3: SeaweedS3, bucket: str) -> tuple[int, float, int]:
    """100 concurrent clients, one cold object: (200 answers, origin GETs, identical bodies)."""
    import http.client

    body = os.urandom(256 * 1024)
    key = f"cold/{os.urandom(6).hex()}.png"
    s3.put(bucket, "bench/" + key, body, "image/png")
    before = s3.get_requests(bucket)
    port = int(node_http.rsplit(":", 1)[1])
    barrier = threading.Barrier(100)
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        barrier.wait()
        conn.request("GET", f"/media/{tenant}/{key}")
        r = conn.getresponse()
        data = r.read()
        with lock:
            results.append((r.status, data == body))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = s3.get_requests(bucket)
    return (
        sum(1 for s, _ in results if s == 200),
        after - before,
        sum(1 for _, same in results if same),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    ensure_packages()
    work = tempfile.mkdtemp(prefix="fastedge-bench-cdn-")
    os.chmod(work, 0o755)  # nginx's workers run as an unprivileged user
    s3 = SeaweedS3()
    node = nginx = None
    try:
        print("starting the S3 origin (SeaweedFS)...", flush=True)
        s3.start()
        bucket = "bench-media"
        s3.create_bucket(bucket)
        data_dir = os.path.join(work, "node")
        ((tenant, _),) = create_tenants(os.path.join(data_dir, "fastedge.sqlite3"), ["bench"])
        docroot = os.path.join(work, "www")
        objects = {}
        for label, size in SIZES.items():
            payload = os.urandom(size)
            key = f"obj-{label}.png"
            s3.put(bucket, "bench/" + key, payload, "image/png")
            os.makedirs(docroot, exist_ok=True)
            with open(os.path.join(docroot, key), "wb") as f:
                f.write(payload)
            os.chmod(os.path.join(docroot, key), 0o644)
            objects[label] = key
        http_port, https_port, ng_port, ng_tls_port = free_ports(4)
        config = os.path.join(work, "node.toml")
        with open(config, "w") as f:
            f.write(f"""
[node]
data_dir = "{data_dir}"
[http]
endpoint = "tcp:{http_port}:interface=127.0.0.1:backlog=1024"
[tls]
endpoint = "tcp:{https_port}:interface=127.0.0.1:backlog=1024"
[cdn.origins.default]
endpoint = "{s3.endpoint}"
access_key_id = "{s3.access_key}"
secret_access_key = "{s3.secret_key}"
[cdn.tenants.{tenant}]
bucket = "{bucket}"
prefix = "bench/"
""")
        log = open(os.path.join(work, "node.log"), "wb")
        node = subprocess.Popen(
            [
                "taskset",
                "-c",
                SERVER_CPU,
                os.path.join(ROOT, ".venv/bin/twistd"),
                "-n",
                "--pidfile=",
                "fastedge",
                "--config",
                config,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        node_http = f"http://127.0.0.1:{http_port}"
        node_https = f"https://127.0.0.1:{https_port}"
        wait_http(node_http + "/healthz")
        for key in objects.values():
            wait_http(f"{node_http}/media/{tenant}/{key}")
        wait_http(node_https + "/healthz")
        pem = os.path.join(work, "nginx.pem")
        shutil.copy(os.path.join(data_dir, "selfsigned.pem"), pem)
        os.chmod(pem, 0o644)

        rows: dict[tuple[str, str, str, int], list[dict[str, float]]] = {}
        ratios: dict[tuple[str, str, int], list[float]] = {}
        # Both servers run (idle unless measured) on the same core; each cell
        # measures the node and nginx back to back, so both see the same
        # background load (the machine is shared) and their ratio is paired.
        nginx = start_nginx(work, docroot, ng_port, ng_tls_port, pem)
        wait_http("http://127.0.0.1:{}/{}".format(ng_port, objects["2KB"]))
        bases = {
            ("fastedge", "http"): node_http,
            ("fastedge", "https"): node_https,
            ("nginx", "http"): f"http://127.0.0.1:{ng_port}",
            ("nginx", "https"): f"https://127.0.0.1:{ng_tls_port}",
        }
        paths = {
            "fastedge": {label: f"/media/{tenant}/{key}" for label, key in objects.items()},
            "nginx": {label: "/" + key for label, key in objects.items()},
        }
        for run in range(args.runs):
            print(f"run {run + 1} of {args.runs}...", flush=True)
            for scheme in ("http", "https"):
                for label in SIZES:
                    for conns in CONNECTIONS:
                        got = {}
                        for server in ("fastedge", "nginx"):
                            url = bases[(server, scheme)] + paths[server][label]
                            got[server] = wrk(url, conns, args.seconds)
                            rows.setdefault((server, scheme, label, conns), []).append(got[server])
                        print(
                            "  {} {} {} conns: node {:.0f} req/s, nginx {:.0f} req/s {}".format(
                                scheme,
                                label,
                                conns,
                                got["fastedge"]["rps"],
                                got["nginx"]["rps"],
                                got["nginx"]["socket_errors"] or got["fastedge"]["socket_errors"],
                            ),
                            flush=True,
                        )
                        if got["nginx"]["rps"] > 0:
                            ratios.setdefault((scheme, label, conns), []).append(
                                got["fastedge"]["rps"] / got["nginx"]["rps"]
                            )

        def med(server: str, scheme: str, label: str, conns: int, field: str) -> float:
            return statistics.median(r[field] for r in rows[(server, scheme, label, conns)])

        print()
        print(
            f"Cached objects, servers on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}; medians of {args.runs} runs "
            f"of {args.seconds} s; node/ng is the median of the paired per-run ratios"
        )
        header = "{:<6} {:<5} {:>5} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} | {:>7}".format(
            "proto",
            "size",
            "conns",
            "node req/s",
            "p50 ms",
            "p99 ms",
            "nginx r/s",
            "p50 ms",
            "p99 ms",
            "node/ng",
        )
        print(header)
        print("-" * len(header))
        for scheme in ("http", "https"):
            for label in SIZES:
                for conns in CONNECTIONS:
                    n = [med("fastedge", scheme, label, conns, f) for f in ("rps", "p50", "p99")]
                    g = [med("nginx", scheme, label, conns, f) for f in ("rps", "p50", "p99")]
                    print(
                        f"{scheme:<6} {label:<5} {conns:>5} | {n[0]:>10.0f} {n[1]:>8.2f} {n[2]:>8.2f} | {g[0]:>10.0f} {g[1]:>8.2f} {g[2]:>8.2f} | {100 * n[0] / g[0]:>6.0f}%"
                    )
        bad = {k: sum(r["bad"] for r in v) for k, v in rows.items() if any(r["bad"] for r in v)}
        errs = {k: [r["socket_errors"] for r in v if r["socket_errors"]] for k, v in rows.items()}
        errs = {k: v for k, v in errs.items() if v}
        if bad:
            print("non-2xx answers:", bad)
        if errs:
            print("wrk socket errors:", errs)
        print()
        ok, origin_gets, same = cold_miss_check(node_http, tenant, s3, bucket)
        print(
            f"Cold miss, 100 concurrent clients: {ok} answered 200 with the right body ({same} identical), "
            f"origin GET requests counted at the origin: {origin_gets:.0f} (want 1)"
        )
    finally:
        if nginx is not None:
            nginx.terminate()  # the master stops its workers (SIGKILL would orphan them)
            nginx.wait(timeout=30)
        if node is not None:
            node.terminate()
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
