# -*- test-case-name: tests.integration.test_cluster -*-
"""``fastedge-admin cluster up|status|down``: the command line of
:class:`~fastedge.cluster.runner.LocalCluster`.

``up`` refuses in one line, having started nothing, when an address or port
it needs is taken or the directory already holds a cluster; when a later
step fails it stops what it started and says why in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from ..columns import table as _table
from .plan import CLIENT_NETWORKS, DNS_PORT, HTTPS_PORT, PlanError, parse_deployment, plan_cluster
from .postgres import PostgresError
from .runner import ClusterError, LocalCluster

__all__ = ["add_parser", "run"]

#: ``--dir`` when not given (relative to the working directory).
DEFAULT_DIR = os.path.join("var", "cluster")


def add_parser(sub: Any) -> None:
    """Add ``cluster up|status|down`` to ``fastedge-admin``'s subcommands."""
    cluster = sub.add_parser(
        "cluster",
        help="a whole local cluster on this machine (up, status, down)",
        description="Starts real nodes (twistd), a PostgreSQL primary per deployment with a hot standby "
        "beside every node, an S3 origin and a GeoIP database, on 127.0.0.x addresses; all state under --dir.",
    )
    csub = cluster.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=DEFAULT_DIR, help="where all its state lives (default var/cluster)")
    common.add_argument("--json", action="store_true", help="print JSON (one document)")
    up = csub.add_parser("up", parents=[common], help="start a cluster and print how to reach it")
    up.add_argument(
        "--deployment",
        action="append",
        default=[],
        metavar="NAME=CITY,CITY,...",
        help="a deployment and its nodes' cities (repeatable; default global=new-york,singapore,sao-paulo "
        "and eu=frankfurt,paris,stockholm)",
    )
    up.add_argument("--prefix", default="127.0.0", help="the loopback /24 of the addresses (default 127.0.0)")
    up.add_argument("--no-origin", action="store_true", help="no S3 origin (no SeaweedFS, no media)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds each node may take to start")
    csub.add_parser("status", parents=[common], help="the map: node, deployment, state, load, lag")
    csub.add_parser("down", parents=[common], help="stop everything and remove --dir")


def _say(line: str) -> None:
    print("fastedge-admin cluster: {}".format(line), file=sys.stderr)


def run(args: argparse.Namespace) -> None:
    """Run ``cluster ACTION``; exits with status 1 and one line on failure."""
    try:
        if args.action == "up":
            _up(args)
        elif args.action == "status":
            _status(args)
        else:
            LocalCluster.load(args.dir, say=_say).down()
            print("cluster in {} stopped and removed".format(os.path.abspath(args.dir)))
    except (ClusterError, PlanError, PostgresError) as e:
        _say(str(e))
        raise SystemExit(1) from None


def _up(args: argparse.Namespace) -> None:
    deployments = [parse_deployment(d) for d in args.deployment] or None
    kw: dict[str, Any] = {"prefix": args.prefix}
    if deployments:
        kw["deployments"] = deployments
    plan = plan_cluster(args.dir, **kw)
    cluster = LocalCluster(plan, origin=not args.no_origin, say=_say)

    def stopped(signum: int, frame: Any) -> None:
        # Raised inside up(), which then stops what it started.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stopped)
    cluster.up(timeout=args.timeout)
    if args.json:
        print(json.dumps(describe(cluster)))
    else:
        print("\n".join(summary(cluster)))


def describe(cluster: LocalCluster) -> dict[str, Any]:
    """What ``up --json`` prints: every way in, by deployment."""
    plan = cluster.plan
    return {
        "directory": plan.directory,
        "caFile": plan.ca_file,
        "origin": (cluster.state.get("origin") or {}).get("endpoint"),
        "deployments": [
            {
                "name": d.name,
                "zone": d.zone,
                "geoName": d.geo_name,
                "primary": d.primary_dsn(),
                "tenantId": cluster.state["tenants"].get(d.name, {}).get("tenantId"),
                "apiKey": cluster.state["tenants"].get(d.name, {}).get("apiKey"),
                "nodes": [
                    {
                        "nodeId": n.node_id,
                        "city": n.city.name,
                        "address": n.address,
                        "http": n.http_url,
                        "https": n.https_url,
                        "dns": "{}:{}".format(n.address, DNS_PORT),
                        "mesh": n.mesh_address,
                        "log": os.path.join(plan.node_dir(n.node_id), "node.log"),
                    }
                    for n in d.nodes
                ],
            }
            for d in plan.deployments
        ],
    }


def summary(cluster: LocalCluster) -> list[str]:
    """What ``up`` prints for people."""
    plan = cluster.plan
    first = plan.nodes[0]
    lines = ["cluster up in {}".format(plan.directory), ""]
    rows = [
        (n.node_id, n.deployment, n.city.name, n.http_url, n.https_url, "{}:{}".format(n.address, DNS_PORT))
        for n in plan.nodes
    ]
    lines += _table(rows, ("NODE", "DEPLOYMENT", "CITY", "HTTP", "HTTPS", "DNS"))
    lines += ["", "DNS: every node answers every deployment's zone; client networks in the GeoIP database:"]
    lines.append("  " + ", ".join("{} {}".format(c, city) for c, city in CLIENT_NETWORKS.items()))
    for d in plan.deployments:
        for net in ("203.0.113.0/24", "100.64.3.0/24"):
            lines.append("  dig @{} -p {} {} A +subnet={}".format(first.address, DNS_PORT, d.geo_name, net))
    lines.append("")
    for d in plan.deployments:
        tenant = cluster.state["tenants"].get(d.name, {})
        n = d.nodes[0]
        lines.append("deployment {} (zone {}):".format(d.name, d.zone))
        lines.append("  tenant {}  API key {}".format(tenant.get("tenantId"), tenant.get("apiKey")))
        lines.append("  PostgreSQL primary {}  (standbys beside every node)".format(d.primary_dsn()))
        lines.append(
            "  curl http://{}/api/v1/{}/comments?urlId=https%3A%2F%2Fexample.com%2F".format(
                n.http_url.split("//", 1)[1], tenant.get("tenantId")
            )
        )
        lines.append(
            "  curl --cacert {} --resolve {}:{}:{} https://{}:{}/healthz".format(
                plan.ca_file, d.geo_name, HTTPS_PORT, n.address, d.geo_name, HTTPS_PORT
            )
        )
        if cluster.state.get("origin"):
            lines.append("  curl {}/media/{}/hello.txt".format(n.http_url, tenant.get("tenantId")))
    if cluster.state.get("origin"):
        lines.append(
            "S3 origin (SeaweedFS): {}  buckets media-<deployment>".format(cluster.state["origin"]["endpoint"])
        )
    lines.append(
        "cluster CA: {}  logs: {}/nodes/<node>/node.log, {}/postgres/*.log".format(
            plan.ca_file, plan.directory, plan.directory
        )
    )
    lines.append(
        "map: fastedge-admin cluster status --dir {0}   stop: fastedge-admin cluster down --dir {0}".format(
            plan.directory
        )
    )
    return lines


def _status(args: argparse.Namespace) -> None:
    cluster = LocalCluster.load(args.dir, say=_say)
    rows = cluster.status()
    databases = cluster.databases()
    if args.json:
        print(json.dumps({"nodes": rows, "databases": databases}))
        return
    table = [
        (
            r["node"],
            r["deployment"],
            r["address"],
            r["state"],
            r["load"],
            r["incarnation"],
            None if r["lag_seconds"] is None else "{:.3f} s".format(r["lag_seconds"]),
        )
        for r in rows
    ]
    lines = _table(table, ("NODE", "DEPLOYMENT", "ADDRESS", "STATE", "LOAD", "INCARNATION", "LAG"))
    lines.append("")
    lines += _table(
        [(r["server"], r["deployment"], r["address"], r["role"]) for r in databases],
        ("DATABASE", "DEPLOYMENT", "ADDRESS", "ROLE"),
    )
    print("\n".join(lines))
