"""Chaos benchmark: a real local cluster under steady posts and live
subscribers, broken over and over for ``--duration`` seconds (default 3 min).

The cluster is ``fastedge-admin cluster up``'s (``fastedge.cluster``): one
deployment of three ``twistd`` nodes (``--node-cpu``, default CPU 0), a
PostgreSQL primary with a synchronous hot standby beside every node, the S3
origin, DNS, and a relay in front of every node's mesh port. This process
(the clients, ``tests.support.chaos``) runs on ``--client-cpu`` (default 1).

Rounds, in turn until the time is up:

1. kill -9 a node (in turn); time until no other node's DNS answers it,
   and until each of its WebSocket clients is subscribed on another node
   (recovered by ``since``/``epoch``, or told to reload); restart it;
2. kill the PostgreSQL primary (kill -9) and promote the standby that
   received the most WAL (``pg_ctl promote``, the others follow it); time
   from the kill to the next acknowledged post; the lost primary is rebuilt
   as a standby;
3. cut one node's mesh links at the relays; time until no other node's DNS
   answers it, hold, heal, time until it is answered again, and count
   flaps (answered again while cut, or dropped again once healed).

At the end every acknowledged post is looked up in the database and every
subscriber's events are checked against the posts it was owed. Prints one
table and one JSON line; exits 1 when a must-be-zero count is not zero.

    .venv/bin/python bench/chaos.py [--duration 180]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fastedge.cluster.plan import plan_cluster  # noqa: E402
from fastedge.cluster.runner import LocalCluster  # noqa: E402
from tests.support.chaos import Chaos, MeshRelays, pct, wait_for  # noqa: E402

SETTINGS = {
    "dns": {"answers": 3, "ttl": 1},
    "api": {"writes_per_minute_per_session": 1000000, "writes_per_minute_per_ip": 1000000},
}


def fmt(value: float | None) -> str:
    return "-" if value is None else "{:.2f} s".format(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of chaos (default 180)")
    ap.add_argument("--rate", type=float, default=10.0, help="posts per second (default 10)")
    ap.add_argument("--subscribers", type=int, default=12, help="live subscribers (default 12)")
    ap.add_argument("--hold", type=float, default=4.0, help="seconds a cut node stays cut (default 4)")
    ap.add_argument("--node-cpu", default="0")
    ap.add_argument("--client-cpu", default="1")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    random.seed(args.seed)
    os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})
    directory = tempfile.mkdtemp(prefix="fastedge-chaos-")
    os.chmod(directory, 0o755)
    prefix = "127.{}.{}".format(random.randint(100, 250), random.randint(0, 255))
    plan = plan_cluster(directory, prefix=prefix, deployments=[("global", ("new-york", "singapore", "sao-paulo"))])
    say = lambda line: print("  " + line, file=sys.stderr)  # noqa: E731
    cluster = LocalCluster(
        plan, settings=SETTINGS, mesh_relayed=True, node_prefix=["taskset", "-c", args.node_cpu], say=say
    )
    relays = MeshRelays(plan.nodes)
    print("chaos: {:g} s on {} (state in {})".format(args.duration, prefix + ".0/24", directory), file=sys.stderr)
    cluster.up(timeout=120)
    chaos = Chaos(cluster, "global")
    try:
        result = run(chaos, cluster, relays, args)
    finally:
        chaos.stop()
        keep_logs(cluster)
        cluster.say = lambda line: None
        cluster.down()
        relays.stop()
    table(result)
    print(json.dumps(result))
    must_be_zero = ("acknowledged_lost", "live_events_lost", "duplicates", "flaps")
    if any(result[k] for k in must_be_zero):
        raise SystemExit(1)


def keep_logs(cluster: LocalCluster) -> None:
    """Copy the nodes' logs to bench/out/ before the cluster is removed."""
    import shutil

    kept = os.path.join(REPO, "bench", "out", "chaos-logs-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(kept, exist_ok=True)
    for node in cluster.plan.nodes:
        source = os.path.join(cluster.plan.node_dir(node.node_id), "node.log")
        if os.path.exists(source):
            shutil.copy(source, os.path.join(kept, node.node_id + ".log"))
    print("  node logs kept in {}".format(kept), file=sys.stderr)


def acked_after(chaos: Chaos, moment: float) -> bool:
    """Whether a post was acknowledged after ``moment``."""
    return any(t > moment for _, _, t in chaos.posts.acked.values())


def run(chaos: Chaos, cluster: LocalCluster, relays: MeshRelays, args: argparse.Namespace) -> dict[str, Any]:
    nodes = sorted(chaos.nodes)
    url_ids = []
    for i in range(3):
        url_id = "https://chaos.example/thread-{}".format(i)
        thread = chaos.create_thread(url_id)
        url_ids.append((url_id, thread))
    for i in range(args.subscribers):
        url_id, thread = url_ids[i % len(url_ids)]
        chaos.subscribe(url_id, thread, nodes[i % len(nodes)])
    wait_for(chaos.subscribed, "every subscriber to subscribe")
    chaos.start_posting([u for u, _ in url_ids], rate=args.rate)
    wait_for(lambda: len(chaos.posts.acked) >= 10, "steady posts")
    kill_withdraw: list[float] = []
    cut_withdraw: list[float] = []
    cut_return: list[float] = []
    promotions: list[float] = []
    flaps = 0
    rounds = 0
    start = time.monotonic()
    end = start + args.duration
    while time.monotonic() < end:
        step = rounds % 3
        # Cuts go round the nodes; a kill hits the node holding the most
        # live clients (they moved away at the last kill).
        victim = nodes[(rounds // 3) % len(nodes)]
        rounds += 1
        if step == 0:
            on = {n: sum(1 for s in chaos.subscribers if s.node == n) for n in nodes}
            victim = max(nodes, key=lambda n: (on[n], n == victim))
            before = len([r for s in chaos.subscribers for r in s.recoveries])
            killed = chaos.kill_node(victim)
            withdrawn, _dead = chaos.withdrawal(victim, killed)
            kill_withdraw.append(withdrawn)
            wait_for(chaos.recovered, "the dead node's clients to recover", timeout=60)
            after = len([r for s in chaos.subscribers for r in s.recoveries])
            print(
                "  kill -9 {}: out of DNS after {}, {} clients recovered".format(
                    victim, fmt(withdrawn), after - before
                ),
                file=sys.stderr,
            )
            chaos.restart_node(victim)
            wait_for(functools.partial(chaos.in_dns, victim), "the restarted node to be answered", timeout=60)
        elif step == 1:
            killed = time.monotonic()
            chaos.mark("kill the primary")
            old = cluster.kill_primary("global")
            chosen = cluster.promote("global")
            chaos.mark("promoted " + chosen)
            wait_for(
                functools.partial(acked_after, chaos, killed),
                "posts after the promotion",
                timeout=60,
            )
            first = min(t for _, _, t in chaos.posts.acked.values() if t > killed)
            promotions.append(first - killed)
            print(
                "  primary {} killed, {} promoted: writes back after {}".format(old, chosen, fmt(first - killed)),
                file=sys.stderr,
            )
            cluster.rejoin_as_standby(old, "global")
        else:
            address = chaos.nodes[victim].address
            observers = [n for n in nodes if n != victim]
            cut = time.monotonic()
            chaos.mark("cut " + victim)
            relays.cut(address)
            withdrawn, _dead = chaos.withdrawal(victim, cut)
            cut_withdraw.append(withdrawn)
            hold_end = time.monotonic() + args.hold
            while time.monotonic() < hold_end:
                if chaos.in_dns(victim, observers):
                    flaps += 1
                time.sleep(0.1)
            chaos.mark("heal " + victim)
            relays.heal(address)
            back = wait_for(functools.partial(chaos.in_dns, victim, observers), "the healed node", timeout=60)
            cut_return.append(back)
            settle_end = time.monotonic() + 3.0
            while time.monotonic() < settle_end:
                if not chaos.in_dns(victim, observers):
                    flaps += 1
                time.sleep(0.1)
            print(
                "  cut {}: out of DNS after {}, back {} after healing".format(victim, fmt(withdrawn), fmt(back)),
                file=sys.stderr,
            )
    chaos.stop_posting()
    try:
        wait_for(lambda: chaos.recovered() and chaos.delivered(), "every owed event", timeout=30)
    except AssertionError:
        pass  # counted below
    chaos.stop()
    report = chaos.report()
    recoveries = report.pop("recoveries")
    report.update(
        duration_s=round(time.monotonic() - start, 1),
        rounds=rounds,
        kills=len(kill_withdraw),
        cuts=len(cut_withdraw),
        promotions=len(promotions),
        flaps=flaps,
        kill_withdraw_p50=pct(kill_withdraw, 50),
        kill_withdraw_max=max(kill_withdraw, default=None),
        cut_withdraw_p50=pct(cut_withdraw, 50),
        cut_withdraw_max=max(cut_withdraw, default=None),
        cut_return_p50=pct(cut_return, 50),
        cut_return_max=max(cut_return, default=None),
        recovery_p50=pct(recoveries, 50),
        recovery_max=max(recoveries, default=None),
        clients_recovered=len(recoveries),
        write_unavailable_p50=pct(promotions, 50),
        write_unavailable_max=max(promotions, default=None),
    )
    return report


def table(r: dict[str, Any]) -> None:
    rows = [
        ("acknowledged writes lost (must be 0)", "{} of {}".format(r["acknowledged_lost"], r["acknowledged_posts"])),
        ("live events lost after recovery (must be 0)", str(r["live_events_lost"])),
        ("duplicate deliveries (must be 0)", str(r["duplicates"])),
        ("DNS flaps (must be 0)", str(r["flaps"])),
        (
            "time to withdraw from DNS, kill -9 (p50/max)",
            "{} / {} ({} kills)".format(fmt(r["kill_withdraw_p50"]), fmt(r["kill_withdraw_max"]), r["kills"]),
        ),
        (
            "time to withdraw from DNS, links cut (p50/max)",
            "{} / {} ({} cuts)".format(fmt(r["cut_withdraw_p50"]), fmt(r["cut_withdraw_max"]), r["cuts"]),
        ),
        ("back in DNS after healing (p50/max)", "{} / {}".format(fmt(r["cut_return_p50"]), fmt(r["cut_return_max"]))),
        (
            "client recovery (p50/max)",
            "{} / {} ({} reconnects)".format(fmt(r["recovery_p50"]), fmt(r["recovery_max"]), r["clients_recovered"]),
        ),
        (
            "write unavailability during promotion (p50/max)",
            "{} / {} ({} promotions)".format(
                fmt(r["write_unavailable_p50"]), fmt(r["write_unavailable_max"]), r["promotions"]
            ),
        ),
        (
            "posts answered commit_unknown / unavailable / refused",
            "{} / {} / {}".format(r["commit_unknown"], r["unavailable"], r["refused"]),
        ),
        ("reloads told / events replayed by since", "{} / {}".format(r["reloads"], r["events_replayed"])),
    ]
    width = max(len(k) for k, _ in rows)
    print("chaos: {} s, {} rounds".format(r["duration_s"], r["rounds"]))
    for k, v in rows:
        print("  {}  {}".format(k.ljust(width), v))
    for line in r.get("explained", []) if r["live_events_lost"] else []:
        print(line)


if __name__ == "__main__":
    main()
