"""bench/geodns: fastedge GeoDNS vs PowerDNS (geoip) vs gdnsd, with dnsperf.

Run through ``bench/geodns`` (which installs the peers). For each round and
each server: start it pinned to CPU 0, then on CPU 1 run dnsperf
- flat out (``-q 500``) without and with ECS: queries/s, server CPU;
- at 80 % of that rate, and at 32,000 queries/s (80 % of the issue's 40k
  target), with ``-v``: p50/p99 latency from the per-query lines.
Prints one table per round and the medians over rounds.

The zone: ``edge.fastedge.test`` A, four PoPs (London, Frankfurt, New York,
Tokyo). fastedge answers the 2 nearest live PoPs by great-circle distance;
gdnsd (city-auto) the nearest up datacenter by coordinates; PowerDNS a
country map (``%cc``). The MaxMind DB (the same file for all) is generated:
2,000 networks over the world plus the ECS subnet 81.2.69.0/24 (London);
dnsperf's own address, 127.0.0.1, is in no network (unknown location).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fastedge.testing.dns import PLACES, write_geo_db

POPS = [
    {"id": "lon", "place": "london", "address": "192.0.2.10", "cc": "gb"},
    {"id": "fra", "place": "frankfurt", "address": "192.0.2.20", "cc": "de"},
    {"id": "nyc", "place": "new-york", "address": "192.0.2.30", "cc": "us"},
    {"id": "tyo", "place": "tokyo", "address": "192.0.2.40", "cc": "jp"},
]
for _pop in POPS:
    _pop["lat"], _pop["lon"] = PLACES[_pop["place"]][:2]

# ECS option for dnsperf -E: family 1, source /24, scope 0, 81.2.69.
ECS_HEX = "00011800510245"
SERVER_CPU, LOAD_CPU = "0", "1"
TARGET_QPS = 32_000


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the servers bind both)."""
    for _ in range(100):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u,
            socket.socket() as t,
        ):
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no port free for both UDP and TCP")


def make_db(path: str) -> None:
    rng = random.Random(7)
    places = list(PLACES.values())
    networks: dict[str, tuple[float, float, str, str]] = {}
    while len(networks) < 2000:
        a, b = rng.randrange(1, 224), rng.randrange(0, 256)
        if a in (10, 127, 192, 198, 203, 81):
            continue
        networks[f"{a}.{b}.{rng.randrange(0, 16) * 16}.0/20"] = rng.choice(places)
    networks["81.2.69.0/24"] = PLACES["london"]
    write_geo_db(path, networks)


def wait_udp(port: int, seconds: float = 20.0) -> None:
    """Until the server answers a query on ``port``."""
    query = bytes.fromhex("abcd00000001000000000000") + b"\x04edge\x08fastedge\x04test\x00\x00\x01\x00\x01"
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(query, ("127.0.0.1", port))
            try:
                if s.recv(4096)[:2] == b"\xab\xcd":
                    return
            except OSError:
                pass
    raise RuntimeError(f"server on port {port} never answered")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_fastedge(work: str, db: str, port: int) -> subprocess.Popen[bytes]:
    args = [
        "taskset",
        "-c",
        SERVER_CPU,
        sys.executable,
        os.path.join(REPO, "bench", "geodns_server.py"),
        str(port),
        db,
        json.dumps(POPS),
    ]
    return subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, "fastedge.log"), "wb"),
        cwd=REPO,
    )


def start_pdns(work: str, db: str, port: int) -> subprocess.Popen[bytes]:
    d = os.path.join(work, "pdns")
    os.makedirs(d, exist_ok=True)
    records = {
        "fastedge.test": [
            {"soa": "ns1.fastedge.test hostmaster.fastedge.test 1 3600 600 604800 30"},
            {"ns": "ns1.fastedge.test"},
        ],
        "ns1.fastedge.test": [{"a": "192.0.2.1"}],
        # Unknown clients: PowerDNS's %cc is "unknown".
        "unknown.edge.fastedge.test": [
            {"a": POPS[0]["address"]},
            {"a": POPS[1]["address"]},
        ],
    }
    for pop in POPS:
        records["{}.edge.fastedge.test".format(pop["cc"])] = [{"a": pop["address"]}]
    zones = {
        "domains": [
            {
                "domain": "fastedge.test",
                "ttl": 30,
                "records": records,
                "services": {"edge.fastedge.test": "%cc.edge.fastedge.test"},
            }
        ]
    }
    with open(os.path.join(d, "zones.yaml"), "w") as f:
        json.dump(zones, f)  # JSON is YAML
    with open(os.path.join(d, "pdns.conf"), "w") as f:
        f.write(
            "\n".join(
                [
                    "launch=geoip",
                    "geoip-database-files=mmdb:" + db,
                    "geoip-zones-file=" + os.path.join(d, "zones.yaml"),
                    "local-address=127.0.0.1",
                    f"local-port={port}",
                    "socket-dir=" + d,
                    # Sends no query off the machine.
                    "security-poll-suffix=",
                    "daemon=no",
                    "guardian=no",
                    "disable-syslog=yes",
                    "loglevel=3",
                    "edns-subnet-processing=yes",
                    "",
                ]
            )
        )
    args = ["taskset", "-c", SERVER_CPU, "pdns_server", "--config-dir=" + d]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "wb"))


def start_gdnsd(work: str, db: str, port: int) -> subprocess.Popen[bytes]:
    d = os.path.join(work, "gdnsd")
    for sub in ("zones", "run", "state"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    coords = " ".join("{} => [ {}, {} ]".format(p["id"], p["lat"], p["lon"]) for p in POPS)
    dcmap = " ".join("{} => {}".format(p["id"], p["address"]) for p in POPS)
    with open(os.path.join(d, "config"), "w") as f:
        f.write(
            "options => {{\n listen => [ 127.0.0.1 ]\n dns_port => {port}\n run_dir => {d}/run\n state_dir => {d}/state\n"
            " udp_threads => 1\n tcp_threads => 1\n}}\n"
            "plugins => {{ geoip => {{\n maps => {{ world => {{ geoip2_db => {db}\n datacenters => [ {dcs} ]\n"
            " auto_dc_coords => {{ {coords} }}\n }} }}\n"
            # gdnsd rejects service_types => none; "up" needs no monitor.
            " resources => {{ edge => {{ map => world, service_types => up, dcmap => {{ {dcmap} }} }} }}\n}} }}\n".format(
                port=port,
                d=d,
                db=db,
                dcs=" ".join(p["id"] for p in POPS),
                coords=coords,
                dcmap=dcmap,
            )
        )
    with open(os.path.join(d, "zones", "fastedge.test"), "w") as f:
        f.write(
            "$TTL 30\n@ SOA ns1 hostmaster 1 3600 600 604800 30\n@ NS ns1\nns1 A 192.0.2.1\nedge 30 DYNA geoip!edge\n"
        )
    args = ["taskset", "-c", SERVER_CPU, "gdnsd", "-c", d, "start"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "wb"))


def dnsperf(port: int, queries: str, seconds: float, ecs: bool, rate: float | None) -> dict[str, Any]:
    args = [
        "taskset",
        "-c",
        LOAD_CPU,
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        str(port),
        "-d",
        queries,
        "-l",
        str(seconds),
        "-T",
        "1",
        "-c",
        "8",
    ]
    if ecs:
        args += ["-E", "8:" + ECS_HEX]
    if rate is None:
        args += ["-q", "500"]
    else:
        args += ["-q", "2000", "-Q", str(int(rate)), "-v"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    result: dict[str, Any] = {"qps": qps, "lost": int(lost.group(1)) if lost else 0}
    if rate is not None:
        latencies = sorted(float(line.rsplit(None, 1)[1]) for line in out.splitlines() if line.startswith("> NOERROR"))
        if latencies:
            result["p50"] = latencies[len(latencies) // 2] * 1000
            result["p99"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
            result["answered"] = len(latencies)
    return result


def run_server(name: str, start: Any, work: str, db: str, queries: str, seconds: float) -> dict[str, Any]:
    port = free_port()
    process = start(work, db, port)
    try:
        wait_udp(port)
        results: dict[str, Any] = {}
        for ecs in (False, True):
            before, t0 = cpu_seconds(process.pid), time.monotonic()
            flat = dnsperf(port, queries, seconds, ecs, None)
            flat["cpu"] = 100 * (cpu_seconds(process.pid) - before) / (time.monotonic() - t0)
            paced = dnsperf(port, queries, seconds, ecs, 0.8 * flat["qps"])
            # The target point: p99 at 80 % of 40,000 queries/s.
            target = dnsperf(port, queries, seconds, ecs, TARGET_QPS)
            results["ecs" if ecs else "plain"] = {
                "flat": flat,
                "paced": paced,
                "target": target,
            }
        return results
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


SERVERS = [
    ("fastedge", start_fastedge),
    ("pdns-geoip", start_pdns),
    ("gdnsd", start_gdnsd),
]


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "{:<11} {:<5} {:>9} {:>6} {:>9} {:>8} {:>8} {:>9} {:>8}".format(
            "server",
            "ECS",
            "max qps",
            "CPU%",
            "@80% qps",
            "p50 ms",
            "p99 ms",
            "@32k p50",
            "p99 ms",
        )
    ]
    for name, r in results.items():
        for mode in ("plain", "ecs"):
            flat, paced, target = r[mode]["flat"], r[mode]["paced"], r[mode]["target"]
            lines.append(
                "{:<11} {:<5} {:>9.0f} {:>6.0f} {:>9.0f} {:>8.3f} {:>8.3f} {:>9.3f} {:>8.3f}".format(
                    name,
                    "yes" if mode == "ecs" else "no",
                    flat["qps"],
                    flat["cpu"],
                    paced["qps"],
                    paced.get("p50", float("nan")),
                    paced.get("p99", float("nan")),
                    target.get("p50", float("nan")),
                    target.get("p99", float("nan")),
                )
            )
    return "\n".join(lines)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    work = tempfile.mkdtemp(prefix="fastedge-geodns-")
    try:
        db = os.path.join(work, "city.mmdb")
        make_db(db)
        queries = os.path.join(work, "queries.txt")
        with open(queries, "w") as f:
            f.write("edge.fastedge.test A\n")
        all_rounds = []
        for i in range(rounds):
            results = {name: run_server(name, start, work, db, queries, seconds) for name, start in SERVERS}
            all_rounds.append(results)
            print(f"round {i + 1} ({seconds} s per run; server on CPU {SERVER_CPU}, dnsperf on CPU {LOAD_CPU}):")
            print(table(results), flush=True)
        medians: dict[str, dict[str, Any]] = {}
        for name, _ in SERVERS:
            medians[name] = {}
            for mode in ("plain", "ecs"):
                medians[name][mode] = {
                    part: {
                        key: statistics.median(r[name][mode][part].get(key, float("nan")) for r in all_rounds)
                        for key in all_rounds[0][name][mode][part]
                    }
                    for part in ("flat", "paced", "target")
                }
        print(f"\nmedians over {rounds} rounds:")
        print(table(medians))
        ours = medians["fastedge"]
        for peer in ("pdns-geoip", "gdnsd"):
            print(
                "fastedge / {}: {:.2f}x without ECS, {:.2f}x with ECS".format(
                    peer,
                    ours["plain"]["flat"]["qps"] / medians[peer]["plain"]["flat"]["qps"],
                    ours["ecs"]["flat"]["qps"] / medians[peer]["ecs"]["flat"]["qps"],
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
