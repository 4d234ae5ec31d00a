# -*- test-case-name: tests.unit.cluster.test_plan -*-
"""The layout of a local cluster, and each node's config file.

Pure: :func:`plan_cluster` decides names, places, addresses and paths;
:func:`node_config` turns one node of the plan into the TOML a real node
reads (every key is the documented one of ``etc/fastedge.toml``). Nothing
here starts a process or opens a socket.

Addresses. Every node has an address of its own in one ``/24`` of
``127.0.0.0/8`` (``--prefix``, default ``127.0.0``), so every node uses the
documented ports, as it would on a machine of its own:

- ``PREFIX.2``: the S3 origin (SeaweedFS);
- ``PREFIX.(10*k)``: the PostgreSQL primary of the k-th deployment
  (``.10``, ``.20``, ...);
- ``PREFIX.(10*k + j)``: the j-th node of the k-th deployment, with its
  hot standby beside it on the same address.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CITIES",
    "CLIENT_NETWORKS",
    "DEFAULT_DEPLOYMENTS",
    "City",
    "ClusterPlan",
    "DeploymentPlan",
    "NodePlan",
    "PlanError",
    "node_config",
    "parse_deployment",
    "plan_cluster",
    "to_toml",
]

#: The ports of every node (each on the node's own address).
HTTP_PORT = 8080
HTTPS_PORT = 8443
DNS_PORT = 5353
MESH_PORT = 7946
#: Where a relayed node's mesh listener is (its relay takes MESH_PORT).
MESH_RELAYED_PORT = 7947
POSTGRES_PORT = 5432
#: The database every deployment's nodes use on its PostgreSQL servers.
DATABASE = "fastedge"
#: The parent domain of the deployments' zones (``<deployment>.fastedge.test``).
DOMAIN = "fastedge.test"
#: The geo-routed name in each zone.
GEO_NAME = "edge"
#: The origin's credentials: a local demo origin, reachable on loopback only.
ORIGIN_ACCESS_KEY = "FASTEDGECLUSTER"
ORIGIN_REGION = "us-east-1"


class PlanError(ValueError):
    """A cluster that cannot be laid out; the message is one line for people."""


@dataclass(frozen=True)
class City:
    """A real place: where a node runs, or where a demo client network is."""

    name: str
    latitude: float
    longitude: float
    country: str
    continent: str


#: Where nodes may run (``--deployment eu=frankfurt,paris``).
CITIES: dict[str, City] = {
    c.name: c
    for c in (
        City("new-york", 40.7128, -74.0060, "US", "NA"),
        City("sao-paulo", -23.5505, -46.6333, "BR", "SA"),
        City("singapore", 1.3521, 103.8198, "SG", "AS"),
        City("tokyo", 35.6762, 139.6503, "JP", "AS"),
        City("sydney", -33.8688, 151.2093, "AU", "OC"),
        City("frankfurt", 50.1109, 8.6821, "DE", "EU"),
        City("paris", 48.8566, 2.3522, "FR", "EU"),
        City("stockholm", 59.3293, 18.0686, "SE", "EU"),
        City("london", 51.5072, -0.1276, "GB", "EU"),
        City("madrid", 40.4168, -3.7038, "ES", "EU"),
        City("chicago", 41.8781, -87.6298, "US", "NA"),
        City("buenos-aires", -34.6037, -58.3816, "AR", "SA"),
    )
}

#: The cluster's GeoIP database: client networks (documentation and
#: shared-address ranges, never real users) placed in cities, so
#: ``dig +subnet=NETWORK`` shows which nodes a client there is sent to.
CLIENT_NETWORKS: dict[str, str] = {
    "198.51.100.0/24": "chicago",
    "192.0.2.0/24": "buenos-aires",
    "203.0.113.0/24": "tokyo",
    "100.64.1.0/24": "london",
    "100.64.2.0/24": "madrid",
    "100.64.3.0/24": "stockholm",
    "100.64.4.0/24": "sydney",
}

#: ``cluster up`` without ``--deployment``: two deployments of three nodes.
DEFAULT_DEPLOYMENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("global", ("new-york", "singapore", "sao-paulo")),
    ("eu", ("frankfurt", "paris", "stockholm")),
)


@dataclass(frozen=True)
class NodePlan:
    """One node: its id, deployment, city and address."""

    node_id: str
    deployment: str
    city: City
    address: str

    @property
    def http_url(self) -> str:
        return "http://{}:{}".format(self.address, HTTP_PORT)

    @property
    def admin_url(self) -> str:
        """Where the node's operational endpoints (``/api/v1/mesh``,
        ``/metrics``) answer: today the public HTTP port; the one place to
        change when they move to an admin endpoint (issue 18, item 3)."""
        return self.http_url

    @property
    def https_url(self) -> str:
        return "https://{}:{}".format(self.address, HTTPS_PORT)

    @property
    def mesh_address(self) -> str:
        return "{}:{}".format(self.address, MESH_PORT)

    @property
    def standby_name(self) -> str:
        """The name of the hot standby beside this node."""
        return "standby-" + self.node_id

    def standby_dsn(self) -> str:
        return dsn(self.address)


@dataclass(frozen=True)
class DeploymentPlan:
    """One deployment: its nodes, its database primary and its DNS zone."""

    name: str
    db_address: str
    nodes: tuple[NodePlan, ...]

    @property
    def zone(self) -> str:
        return "{}.{}".format(self.name, DOMAIN)

    @property
    def geo_name(self) -> str:
        return "{}.{}".format(GEO_NAME, self.zone)

    @property
    def primary_name(self) -> str:
        return "primary-" + self.name

    def primary_dsn(self) -> str:
        return dsn(self.db_address)


@dataclass(frozen=True)
class ClusterPlan:
    """The whole cluster and where its files go (all under ``directory``)."""

    directory: str
    prefix: str
    deployments: tuple[DeploymentPlan, ...]

    @property
    def nodes(self) -> tuple[NodePlan, ...]:
        return tuple(n for d in self.deployments for n in d.nodes)

    @property
    def origin_address(self) -> str:
        return self.prefix + ".2"

    def node(self, node_id: str) -> NodePlan:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def deployment(self, name: str) -> DeploymentPlan:
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(name)

    def path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    def node_dir(self, node_id: str) -> str:
        return self.path("nodes", node_id)

    def config_path(self, node_id: str) -> str:
        return os.path.join(self.node_dir(node_id), "node.toml")

    def session_key_path(self, deployment: str) -> str:
        return self.path("deployments", deployment, "session.key")

    @property
    def ca_file(self) -> str:
        return self.path("ca", "ca.pem")

    @property
    def ca_key_file(self) -> str:
        return self.path("ca", "ca.key")

    @property
    def geo_database(self) -> str:
        return self.path("geoip.mmdb")

    def listeners(self, *, mesh_relayed: bool = False) -> list[tuple[str, int, str]]:
        """Every ``(address, port, what)`` the cluster listens on with a
        fixed port (checked free before anything starts)."""
        mesh_port = MESH_RELAYED_PORT if mesh_relayed else MESH_PORT
        out: list[tuple[str, int, str]] = []
        for d in self.deployments:
            out.append((d.db_address, POSTGRES_PORT, "PostgreSQL primary of " + d.name))
            for n in d.nodes:
                out.append((n.address, HTTP_PORT, "HTTP of " + n.node_id))
                out.append((n.address, HTTPS_PORT, "HTTPS of " + n.node_id))
                out.append((n.address, DNS_PORT, "DNS of " + n.node_id))
                out.append((n.address, mesh_port, "mesh of " + n.node_id))
                out.append((n.address, POSTGRES_PORT, "PostgreSQL standby beside " + n.node_id))
        return out


def dsn(address: str) -> str:
    """The libpq connection string of the cluster's server at ``address``."""
    return "host={} port={} user=postgres dbname={}".format(address, POSTGRES_PORT, DATABASE)


def parse_deployment(text: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=CITY,CITY,...`` (the ``--deployment`` option).

    :raises PlanError: naming what is wrong.
    """
    name, sep, cities = text.partition("=")
    name = name.strip()
    places = tuple(c.strip() for c in cities.split(",") if c.strip())
    if not sep or not name or not places:
        raise PlanError("--deployment wants NAME=CITY,CITY,... (e.g. eu=frankfurt,paris), not {!r}".format(text))
    return name, places


def plan_cluster(
    directory: str,
    *,
    prefix: str = "127.0.0",
    deployments: Sequence[tuple[str, Sequence[str]]] = DEFAULT_DEPLOYMENTS,
) -> ClusterPlan:
    """Lay out a cluster: node ids ``<deployment>-<city>``, addresses as the
    module says.

    :raises PlanError: for a prefix outside ``127.0.0.0/8``, an unknown
        city, a name that is not a DNS label, more than 9 nodes in a
        deployment or more than 24 deployments.
    """
    from ..config.checks import dns_label as _dns_label

    octets = prefix.split(".")
    if len(octets) != 3 or not all(o.isdigit() and int(o) <= 255 for o in octets) or octets[0] != "127":
        raise PlanError("--prefix must be three octets of a loopback /24, such as 127.0.0 (got {!r})".format(prefix))
    if not deployments:
        raise PlanError("a cluster needs at least one deployment")
    if len(deployments) > 24:
        raise PlanError("at most 24 deployments (each takes ten addresses of the /24)")
    planned = []
    seen: set[str] = set()
    for k, (name, cities) in enumerate(deployments, start=1):
        reason = _dns_label(name)
        if reason is not None:
            raise PlanError("deployment name {!r}: {}".format(name, reason))
        if name in seen:
            raise PlanError("deployment {!r} is given twice".format(name))
        seen.add(name)
        if not 1 <= len(cities) <= 9:
            raise PlanError("deployment {!r} needs 1 to 9 nodes, not {}".format(name, len(cities)))
        nodes: list[NodePlan] = []
        for j, city in enumerate(cities, start=1):
            if city not in CITIES:
                raise PlanError("unknown city {!r}; known: {}".format(city, ", ".join(sorted(CITIES))))
            node_id = "{}-{}".format(name, city)
            if node_id in {n.node_id for n in nodes}:
                raise PlanError("deployment {!r} names {} twice".format(name, city))
            reason = _dns_label(node_id)
            if reason is not None:
                raise PlanError("node id {!r}: {}".format(node_id, reason))
            nodes.append(NodePlan(node_id, name, CITIES[city], "{}.{}".format(prefix, 10 * k + j)))
        planned.append(DeploymentPlan(name, "{}.{}".format(prefix, 10 * k), tuple(nodes)))
    return ClusterPlan(os.path.abspath(directory), prefix, tuple(planned))


@dataclass(frozen=True)
class Origin:
    """Where the cluster's S3 origin answers, and its secret."""

    endpoint: str
    secret_file: str


def node_config(
    plan: ClusterPlan,
    node: NodePlan,
    *,
    media_tenants: Mapping[str, str] | None = None,
    origin: Origin | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    mesh_relayed: bool = False,
) -> dict[str, Any]:
    """The config of ``node`` as a TOML document (nested dicts).

    Every node of a deployment shares its session key file and lists every
    server of the deployment's database as a possible primary (the primary
    first), so a promoted standby is found; its own standby serves its
    nearest reads. Every node seeds from every other and serves every
    deployment's zone.

    :param media_tenants: tenant id -> deployment, for tenants whose media
        comes from the origin (bucket ``media-<deployment>``, prefix
        ``<tenant>/``); only the node's own deployment's are configured.
    :param settings: more keys per section (``{"mesh": {"dead_seconds":
        2.0}}``), for tests and benchmarks.
    :param mesh_relayed: the node listens for mesh links on
        :data:`MESH_RELAYED_PORT` and announces :data:`MESH_PORT`, where a
        relay in front of it forwards (``bench/chaos`` cuts links there).
    """
    deployment = plan.deployment(node.deployment)
    data_dir = plan.node_dir(node.node_id)
    doc: dict[str, Any] = {
        "node": {
            "id": node.node_id,
            "deployment": node.deployment,
            "region": node.city.name,
            "data_dir": data_dir,
            "latitude": node.city.latitude,
            "longitude": node.city.longitude,
            "addresses": [node.address],
        },
        "http": {"endpoint": "tcp:{}:interface={}:backlog=1024".format(HTTP_PORT, node.address)},
        "tls": {"endpoint": "tcp:{}:interface={}:backlog=1024".format(HTTPS_PORT, node.address)},
        "store": {
            "backend": "postgresql",
            "postgresql": {
                "primaries": [deployment.primary_dsn()] + [n.standby_dsn() for n in deployment.nodes],
                "replica": node.standby_dsn(),
            },
        },
        "api": {"secret_file": plan.session_key_path(node.deployment)},
        "geo": {"database": plan.geo_database},
        "dns": {
            "interface": node.address,
            "port": DNS_PORT,
            "zones": [
                {
                    "name": d.zone,
                    "deployment": d.name,
                    "geo_names": [GEO_NAME],
                    "nameservers": ["ns1." + d.zone],
                    "hostmaster": "hostmaster." + d.zone,
                }
                for d in plan.deployments
            ],
        },
        "mesh": {
            "endpoint": "tcp:{}:interface={}".format(MESH_RELAYED_PORT if mesh_relayed else MESH_PORT, node.address),
            "seeds": [n.mesh_address for n in plan.nodes if n is not node],
            "ca_file": plan.ca_file,
            "cert_file": os.path.join(data_dir, "mesh", "node.pem"),
            "key_file": os.path.join(data_dir, "mesh", "node.key"),
        },
    }
    if origin is not None:
        tenants = {t: d for t, d in (media_tenants or {}).items() if d == node.deployment}
        doc["cdn"] = {
            "origins": {
                "cluster": {
                    "endpoint": origin.endpoint,
                    "region": ORIGIN_REGION,
                    "addressing": "path",
                    "access_key_id": ORIGIN_ACCESS_KEY,
                    "secret_access_key_file": origin.secret_file,
                }
            },
            "tenants": {
                t: {"origin": "cluster", "bucket": "media-" + d, "prefix": t + "/"} for t, d in sorted(tenants.items())
            },
        }
    if mesh_relayed:
        doc["mesh"]["advertise"] = node.mesh_address
    for section, values in (settings or {}).items():
        _merge(doc.setdefault(section, {}), values)
    return doc


def _merge(into: dict[str, Any], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def to_toml(doc: Mapping[str, Any]) -> str:
    """A TOML text of ``doc``: tables of scalars, lists of scalars, nested
    tables and lists of tables (all a node config uses)."""
    lines: list[str] = []
    _table(lines, (), doc)
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(name: str) -> str:
    bare = name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    return name if bare else _basic_string(name)


def _basic_string(text: str) -> str:
    """A TOML basic string: quotes and backslashes escaped, and control
    characters (DEL included), which TOML forbids raw."""
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append("\\u{:04X}".format(ord(c)))
        elif 0xD800 <= ord(c) <= 0xDFFF:
            raise ValueError("a lone surrogate cannot be written as TOML")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _basic_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError("cannot write {!r} as TOML".format(value))


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping) and not _is_table_list(v)]
    if path and (scalars or not table):
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in path) + "]")
    for k, v in scalars:
        lines.append("{} = {}".format(_key(k), _value(v)))
    for k, v in table.items():
        if isinstance(v, Mapping):
            _table(lines, path + (k,), v)
        elif _is_table_list(v):
            for item in v:
                lines.append("")
                lines.append("[[" + ".".join(_key(p) for p in path + (k,)) + "]]")
                for ik, iv in item.items():
                    lines.append("{} = {}".format(_key(ik), _value(iv)))
