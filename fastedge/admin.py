# -*- test-case-name: tests.integration.test_admin -*-
"""``fastedge-admin``: operator commands that work beside a running node.

Finding the node's data. The tool reads the node's configuration, so it
opens the store the node uses: ``--config FILE``, else ``$FASTEDGE_CONFIG``,
else ``etc/fastedge.toml`` found from the working directory upward (then
relative paths in it, such as ``node.data_dir = "./var/fastedge"``, start
from the directory holding ``etc/``, where ``scripts/run-node`` starts the
node). Without any of these it refuses (exit status 2). It says on stderr
which configuration and store it opened, and never creates a store: a store
that does not exist yet is waited for (``--wait``, the node creates it when
it starts), then refused, unless ``--init`` is given.

``fastedge-admin tenant create NAME`` creates a tenant and its first API
key; ``tenant list``, ``tenant show TENANT``, ``tenant add-key TENANT``,
``tenant revoke-key TENANT KEY_ID`` and ``tenant delete TENANT --yes`` (every
row of the tenant, and its cached media on every node of the deployment)
complete it. Every command takes ``--json``. Writes go to the primary.
SQLite's locking lets the tool write while the node runs.

``fastedge-admin webhooks list TENANT`` lists a tenant's webhook endpoints,
whether each is on, and why the node turned one off (docs/webhooks.md).

``fastedge-admin status`` prints what the node's ``/healthz`` and mesh map
(``/api/v1/mesh``) say, from ``http.endpoint`` (or ``--url``).

``fastedge-admin geo rebuild`` asks the running node to rebuild its GeoIP
index now: it creates ``geo.request_file``, which the node's ``geo`` child
picks up within ``geo.watch_seconds`` (``SIGHUP`` to the node does the same).

``fastedge-admin node drain`` asks the running node to drain and stop: it
creates ``<node.data_dir>/drain.request``, which the node takes within a
second (``SIGTERM`` to the node does the same; ``docs/admin.md``, "Draining
a node"). A drain already under way is reported, and nothing more is done.

``fastedge-admin certs ca`` creates the mesh's cluster CA, and
``fastedge-admin certs node NODE_ID`` a node certificate signed by it
(``docs/mesh.md``, "Certificates").

``fastedge-admin cluster up|status|down`` runs a whole cluster on this
machine (``fastedge.cluster``); it needs no node config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater, react
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from .api.keys import hash_api_key, new_api_key
from .columns import table as _table
from .config import ConfigError, EdgeConfig, load_config
from .store.model import ReadPreference, Tenant
from .store.sqlite import SQLiteStore

PRIMARY = ReadPreference.PRIMARY

#: The environment variable naming the config file when --config is not given.
CONFIG_ENV = "FASTEDGE_CONFIG"
#: Found from the working directory upward when neither is given.
CONFIG_RELATIVE = os.path.join("etc", "fastedge.toml")


class Refused(Exception):
    """A command that cannot go on; the message is its one line on stderr."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _version_line() -> str:
    from .startup import version_line

    return version_line()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastedge-admin",
        description="Operate a fastedge node's data. The config comes from --config, $FASTEDGE_CONFIG, "
        "or etc/fastedge.toml found from the working directory upward.",
    )
    p.add_argument("--version", action="version", version=_version_line())
    p.add_argument("--config", "-c", help="the node's TOML config file")
    p.add_argument("--data-dir", help="data directory (overrides node.data_dir)")
    p.add_argument("--init", action="store_true", help="create the store if it does not exist yet")
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for a node that is starting to create its store (default 10)",
    )
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON (one document)")
    sub = p.add_subparsers(dest="area", required=True)
    tenant = sub.add_parser("tenant", help="tenants and their API keys")
    tsub = tenant.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", parents=[json_flag], help="create a tenant and print its id and first API key")
    create.add_argument("name")
    create.add_argument("--deployment", help="deployment of the tenant (default: this node's)")
    tsub.add_parser("list", parents=[json_flag], help="list every tenant")
    show = tsub.add_parser("show", parents=[json_flag], help="a tenant, its settings and its API keys")
    show.add_argument("tenant_id")
    key = tsub.add_parser("add-key", parents=[json_flag], help="create another API key for a tenant")
    key.add_argument("tenant_id")
    revoke = tsub.add_parser("revoke-key", parents=[json_flag], help="revoke one API key of a tenant")
    revoke.add_argument("tenant_id")
    revoke.add_argument("key_id")
    delete = tsub.add_parser(
        "delete",
        parents=[json_flag],
        help="delete a tenant with all its data and media",
        description="Deletes the tenant's media objects from its S3 origin and from the media caches "
        "of the deployment's nodes (through the running node; when no node answers, from the origin "
        "directly with the config's credentials and from the local cache directory), then every row "
        "of the tenant (keys, threads, comments, votes, authors, credits). If the origin fails, "
        "nothing is deleted from the store: run the command again.",
    )
    delete.add_argument("tenant_id")
    delete.add_argument("--yes", action="store_true", help="really delete (required)")
    delete.add_argument("--url", help="the node's HTTP address (default: from http.endpoint)")
    _settings_parser(tsub)
    webhooks = sub.add_parser("webhooks", help="tenants' webhook endpoints")
    wsub = webhooks.add_subparsers(dest="action", required=True)
    wlist = wsub.add_parser("list", parents=[json_flag], help="a tenant's webhook endpoints (never their secrets)")
    wlist.add_argument("tenant_id")
    status = sub.add_parser(
        "status", parents=[json_flag], help="the node's health and its mesh map (from the running node)"
    )
    status.add_argument("--url", help="the node's HTTP address (default: from http.endpoint)")
    certs = sub.add_parser("certs", help="the mesh's cluster CA and node certificates")
    csub = certs.add_subparsers(dest="action", required=True)
    ca = csub.add_parser("ca", help="create the cluster CA (mesh.ca_file, and ca.key beside it)")
    ca.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    ca.add_argument("--force", action="store_true", help="replace an existing CA (every node needs new certificates)")
    node = csub.add_parser(
        "node",
        help="create a node certificate signed by the cluster CA",
        description="For this node's id the certificate goes to mesh.cert_file and mesh.key_file; "
        "for another node to NODE_ID.pem and NODE_ID.key in --out (copy them and the CA "
        "certificate, never ca.key, to that node).",
    )
    node.add_argument("node_id")
    node.add_argument("--out", help="directory for NODE_ID.pem and NODE_ID.key")
    node.add_argument("--ca-key", help="the CA's private key (default: ca.key beside mesh.ca_file)")
    node.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    node.add_argument("--force", action="store_true", help="replace existing files")
    node_cmd = sub.add_parser("node", help="the running node")
    nsub = node_cmd.add_subparsers(dest="action", required=True)
    nsub.add_parser(
        "drain",
        help="ask the running node to drain and stop (as SIGTERM does)",
        description="The node announces it is leaving (DNS withdraws it at once), tells its live clients "
        "to move to another node of its deployment and closes them (1001), stops accepting, lets requests "
        "in flight finish (http.drain_seconds), flushes credit charges, then stops. Returns at once; a "
        "drain already under way is reported and left alone.",
    )
    geo = sub.add_parser("geo", help="the GeoIP index")
    gsub = geo.add_subparsers(dest="action", required=True)
    gsub.add_parser(
        "rebuild",
        help="ask the running node to rebuild its GeoIP index from geo.database",
    )
    lookup = gsub.add_parser(
        "lookup",
        help="print geo.database's city record for an address, and where the node's index places it",
    )
    lookup.add_argument("address", help="an IPv4 or IPv6 address")
    from .cluster.command import add_parser as add_cluster_parser

    add_cluster_parser(sub)
    return p


def find_config(given: str | None, cwd: str, environ: Mapping[str, str]) -> tuple[str, str | None, str]:
    """Which config file the tool uses, and where its relative paths start.

    :returns: ``(path, base_dir, how)``: ``base_dir`` is ``None`` (the
        working directory, as for ``twistd``) for a file named by
        ``--config`` or ``$FASTEDGE_CONFIG``, and the directory holding
        ``etc/`` for one found upward; ``how`` says which it was.
    :raises Refused: (exit status 2) when there is none.
    """
    if given:
        return os.path.abspath(given), None, "--config"
    if environ.get(CONFIG_ENV):
        return os.path.abspath(environ[CONFIG_ENV]), None, "$" + CONFIG_ENV
    directory = os.path.abspath(cwd)
    while True:
        candidate = os.path.join(directory, CONFIG_RELATIVE)
        if os.path.isfile(candidate):
            return candidate, directory, "found from the working directory"
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    raise Refused(
        "no configuration: give --config FILE (the node's), set {}, or run from the node's "
        "directory (where etc/fastedge.toml is)".format(CONFIG_ENV),
        code=2,
    )


def _say(message: str) -> None:
    print("fastedge-admin: {}".format(message), file=sys.stderr)


def _settings_parser(tsub: Any) -> None:
    """``tenant settings TENANT [--set key=value ...] [--json]``."""
    settings = tsub.add_parser(
        "settings",
        help="show or change a tenant's settings (docs/openapi.yaml, TenantSettings)",
        description='VALUE is JSON when it parses as JSON (3, true, null, ["https://a.example"]), else a '
        "string; theme.accent=#1a73e8 sets one theme key. ssoSecret is write-only (never printed); "
        "ssoSecretOverlapSeconds says how long the replaced secret stays accepted (default 86400).",
    )
    settings.add_argument("tenant_id")
    settings.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change one setting")
    settings.add_argument("--json", action="store_true", help="print JSON")


def _parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set`` arguments as a settings patch (the tenant API's JSON)."""
    patch: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit("fastedge-admin: --set wants KEY=VALUE, not {!r}".format(pair))
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if key.startswith("theme."):
            theme = patch.setdefault("theme", {})
            if not isinstance(theme, dict):
                raise SystemExit("fastedge-admin: theme is set twice")
            theme[key[len("theme.") :]] = value
        else:
            patch[key] = value
    return patch


@inlineCallbacks
def _tenant_settings(store: Any, args: argparse.Namespace, now: int) -> Any:
    """Show, and with ``--set`` change, a tenant's settings: the same checks
    as ``PATCH /api/v1/manage/settings``. Nodes see a change within
    ``api.page_cache_seconds``."""
    from .api.manage import check_overlap
    from .identity.sso import check_secret, sso_status
    from .store.model import SsoSecretChange
    from .store.settings import SettingsError, apply_patch, from_stored, to_json

    primary = ReadPreference.PRIMARY
    tenant = yield store.get_tenant(args.tenant_id, read_preference=primary)
    patch = _parse_sets(args.set)
    settings = from_stored(tenant.settings)
    if patch:
        change = None
        try:
            if "ssoSecret" in patch or "ssoSecretOverlapSeconds" in patch:
                if "ssoSecret" not in patch:
                    raise SettingsError("ssoSecretOverlapSeconds", "only applies together with ssoSecret")
                secret = check_secret("ssoSecret", patch.pop("ssoSecret"))
                change = SsoSecretChange(secret, now, check_overlap(patch.pop("ssoSecretOverlapSeconds", None)) * 1000)
            settings = apply_patch(settings, patch)
        except SettingsError as e:
            print("fastedge-admin: invalid setting {}: {}".format(e.key, e.message), file=sys.stderr)
            raise SystemExit(2) from None
        yield store.update_tenant_settings(tenant.id, to_json(settings), sso_secret=change, read_preference=primary)
    secrets = yield store.get_sso_secrets(tenant.id, now_ms=now, read_preference=primary)
    out = {"tenantId": tenant.id, "settings": to_json(settings), "sso": sso_status(secrets)}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in list(out["settings"].items()) + [("sso", out["sso"])]:
            print("{}: {}".format(k, json.dumps(v)))


def _certs(args: argparse.Namespace, cfg: EdgeConfig) -> None:
    """``certs ca`` and ``certs node``: files only, no store, no reactor."""
    from .config.checks import dns_label
    from .mesh.tls import create_ca, create_node_certificate, write_file

    def refuse(message: str) -> None:
        print("fastedge-admin: {}".format(message), file=sys.stderr)
        raise SystemExit(1)

    if not 0 < args.days <= 36500:
        refuse("--days must be from 1 to 36500")
    ca_file = cfg.mesh.ca_file
    ca_key = os.path.join(os.path.dirname(ca_file), "ca.key")
    if args.action == "ca":
        for path in (ca_file, ca_key):
            if os.path.exists(path) and not args.force:
                refuse("{} exists (--force replaces it, and every node then needs a new certificate)".format(path))
        cert, key = create_ca(days=args.days)
        write_file(ca_key, key, private=True)
        write_file(ca_file, cert, private=False)
        print("cluster CA certificate: {}".format(ca_file))
        print("cluster CA key: {} (keep it off the nodes once they have certificates)".format(ca_key))
        return
    node_id = args.node_id
    reason = dns_label(node_id) if node_id else "must not be empty"
    if reason is not None:
        refuse("node id {!r}: {}".format(node_id, reason))
    key_path = args.ca_key or ca_key
    try:
        with open(ca_file, "rb") as f:
            ca_cert_pem = f.read()
        with open(key_path, "rb") as f:
            ca_key_pem = f.read()
    except OSError as e:
        refuse(
            "cannot read the cluster CA ({}: {}); create it with `fastedge-admin certs ca`".format(
                e.filename, e.strerror
            )
        )
    if args.out is None and node_id == cfg.node.id:
        cert_path, key_out = cfg.mesh.cert_file, cfg.mesh.key_file
    else:
        out = args.out or "."
        cert_path, key_out = os.path.join(out, node_id + ".pem"), os.path.join(out, node_id + ".key")
    for path in (cert_path, key_out):
        if os.path.exists(path) and not args.force:
            refuse("{} exists (--force replaces it)".format(path))
    try:
        cert, key = create_node_certificate(node_id, ca_cert_pem, ca_key_pem, days=args.days)
    except (ValueError, TypeError) as e:
        refuse("the cluster CA in {} and {} is not usable: {}".format(ca_file, key_path, e))
    write_file(key_out, key, private=True)
    write_file(cert_path, cert, private=False)
    print("node certificate for {}: {}".format(node_id, cert_path))
    print("node key: {}".format(key_out))


def _geo_lookup(cfg: EdgeConfig, address: str) -> None:
    """Print the city record ``geo.database`` holds for ``address`` (read by
    MaxMind's own ``geoip2`` reader, as a second opinion), then the location
    the node's index answers with. Exit 1 when there is no database, 2 for a
    bad address or an unreadable database."""
    import ipaddress

    import geoip2.database
    import geoip2.errors
    import maxminddb

    if not cfg.geo.database:
        _say("geo.database is not set: there is nothing to look up")
        raise SystemExit(1)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        _say("{!r} is not an IP address".format(address))
        raise SystemExit(2) from None
    try:
        reader = geoip2.database.Reader(cfg.geo.database)
    except (OSError, maxminddb.InvalidDatabaseError, ValueError) as e:
        _say("cannot read {}: {}".format(cfg.geo.database, e))
        raise SystemExit(2) from None
    with reader:
        try:
            city = reader.city(address)
        except geoip2.errors.AddressNotFoundError:
            print("{}: not in {}".format(address, cfg.geo.database))
            city = None
        if city is not None:
            loc = city.location
            print("network:     {}".format(city.traits.network))
            print("continent:   {}".format(city.continent.code or "-"))
            print("country:     {} {}".format(city.country.iso_code or "-", city.country.name or ""))
            print("city:        {}".format(city.city.name or "-"))
            print("coordinates: {}, {} (within {} km)".format(loc.latitude, loc.longitude, loc.accuracy_radius))
    from .geo.lookup import GeoIndexError, build_index

    try:
        index = build_index(cfg.geo.database)
    except GeoIndexError as e:
        _say("the node's index cannot be built: {}".format(e))
        raise SystemExit(2) from None
    try:
        location, _ = index.locate(address)
    finally:
        index.close()
    print("node index:  {}".format(location if location is not None else "no location (the default region answers)"))


def _request_geo_rebuild(cfg: EdgeConfig) -> None:
    """Leave the request the node's geo child watches for."""
    if not cfg.geo.database:
        print(
            "fastedge-admin: geo.database is not set: there is no GeoIP index to rebuild",
            file=sys.stderr,
        )
        raise SystemExit(1)
    os.makedirs(os.path.dirname(cfg.geo.request_file) or ".", exist_ok=True)
    with open(cfg.geo.request_file, "w") as f:
        f.write("rebuild\n")
    print("rebuild requested: the node picks it up within {:g} s".format(cfg.geo.watch_seconds))


def _request_drain(cfg: EdgeConfig) -> None:
    """Leave the request the node's ``drain`` child watches for, unless a
    drain is already under way (then say so: exit status 0, nothing done)."""
    from .lifecycle import DRAIN_REQUEST, DRAIN_STATE

    data_dir = cfg.node.data_dir
    state_path = os.path.join(data_dir, DRAIN_STATE)
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = None
    if isinstance(state, dict) and _process_alive(state.get("pid")):
        print("node {} is already draining (pid {}): nothing more to do".format(cfg.node.id, state["pid"]))
        return
    request = os.path.join(data_dir, DRAIN_REQUEST)
    if os.path.exists(request):
        print("a drain of node {} is already requested ({}): nothing more to do".format(cfg.node.id, request))
        return
    if not os.path.isdir(data_dir):
        _say("no node data directory at {}: is node.data_dir (or --data-dir) the node's?".format(data_dir))
        raise SystemExit(1)
    with open(request, "w") as f:
        f.write("drain\n")
    print(
        "drain requested: node {} takes it within 1 s, leaves the mesh (DNS withdraws it), moves its live "
        "clients, finishes what is in flight (up to {:g} s), then stops; a node that is not running ignores "
        "the request when it next starts".format(cfg.node.id, cfg.http.drain_seconds)
    )


def _process_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open_store(reactor: Any, cfg: EdgeConfig) -> tuple[Any, ThreadPool, str]:
    """The store the node's config names (its primary, for PostgreSQL), not
    opened yet, and a description of it without credentials."""
    pool = ThreadPool(minthreads=1, maxthreads=1, name="fastedge-admin")
    pool.start()
    if cfg.store.backend == "postgresql":
        from .store.postgresql import PostgresStore, redact_dsn

        pg = cfg.store.postgresql
        # Admin commands write, and read their writes: the primary only.
        store: Any = PostgresStore(
            pg.primaries,
            None,
            run=lambda f: deferToThreadPool(reactor, pool, f),
            clock=reactor,
            failover_seconds=pg.failover_seconds,
            connect_timeout_seconds=pg.connect_timeout_seconds,
            statement_timeout_seconds=pg.statement_timeout_seconds,
            application_name="fastedge-admin",
            pool_size=1,
        )
        where = "postgresql primary ({})".format(", ".join(redact_dsn(d) for d in pg.primaries))
        return store, pool, where
    if cfg.store.backend == "mongodb":
        from .store.mongodb.store import MongoStore
        from .store.mongodb.uri import redact_uri

        mongo = cfg.store.mongodb
        # Admin commands write, and read their writes: the primary only.
        store = MongoStore(
            mongo.uri,
            None,
            database=mongo.database,
            clock=reactor,
            write_concern=mongo.write_concern,
            write_concern_timeout_seconds=mongo.write_concern_timeout_seconds,
            failover_seconds=mongo.failover_seconds,
            operation_timeout_seconds=mongo.operation_timeout_seconds,
            pool_size=1,
        )
        return store, pool, "mongodb replica set {} database {}".format(redact_uri(mongo.uri), mongo.database)
    store = SQLiteStore(
        cfg.store.sqlite_path,
        run=lambda f: deferToThreadPool(reactor, pool, f),
        clock=reactor,
        busy_timeout_seconds=cfg.store.busy_timeout_seconds,
        pool_size=1,
    )
    return store, pool, "sqlite {}".format(cfg.store.sqlite_path)


@inlineCallbacks
def _store_exists(store: Any, cfg: EdgeConfig) -> Any:
    """Whether the store holds the node's tables (without creating it)."""
    if cfg.store.backend == "sqlite" and not os.path.exists(cfg.store.sqlite_path):
        # Connecting would create the file: look first.
        return False
    return (yield store.has_schema())


@inlineCallbacks
def _ready_store(reactor: Any, args: argparse.Namespace, cfg: EdgeConfig) -> Any:
    """Open the node's store: wait (``--wait``) for a node that is starting
    to create it, and refuse to create it ourselves unless ``--init``."""
    store, pool, where = _open_store(reactor, cfg)
    try:
        exists = yield _store_exists(store, cfg)
        if not exists and not args.init:
            waited, step = 0.0, 0.25
            if args.wait > 0:
                _say("no store yet at {}: waiting up to {:g} s for the node to create it".format(where, args.wait))
            while not exists and waited < args.wait:
                yield deferLater(reactor, step, lambda: None)
                waited += step
                exists = yield _store_exists(store, cfg)
            if not exists:
                raise Refused(
                    "no store at {}: start the node there first (it creates its store), check --config "
                    "or --data-dir, or give --init to create an empty one".format(where)
                )
        if not exists:
            os.makedirs(os.path.dirname(cfg.store.sqlite_path), exist_ok=True)
        yield store.open()
        _say("{} store {}".format("created" if not exists else "opened", where))
    except BaseException:
        yield store.close()
        pool.stop()
        raise
    return store, pool


def _tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {
        "tenantId": tenant.id,
        "name": tenant.name,
        "deployment": tenant.deployment,
        "createdMs": tenant.created_ms,
    }


def _print(args: argparse.Namespace, doc: Any, lines: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(doc))
    else:
        for line in lines:
            print(line)


@inlineCallbacks
def _tenant(reactor: Any, args: argparse.Namespace, cfg: EdgeConfig) -> Any:
    store, pool = yield _ready_store(reactor, args, cfg)
    now = int(reactor.seconds() * 1000)
    try:
        action = args.action
        if action == "settings":
            yield _tenant_settings(store, args, now)
        elif action == "create":
            name = args.name.strip()
            if not name or len(name) > 200:
                raise Refused("the name must be 1 to 200 characters")
            deployment = args.deployment or cfg.node.deployment
            tenant = (yield store.create_tenant(name, deployment, created_ms=now, read_preference=PRIMARY)).value
            yield _add_key(args, store, tenant, now, _tenant_json(tenant))
        elif action == "add-key":
            tenant = yield store.get_tenant(args.tenant_id, read_preference=PRIMARY)
            yield _add_key(args, store, tenant, now, {"tenantId": tenant.id})
        elif action == "list":
            tenants = yield store.list_tenants(read_preference=PRIMARY)
            rows = [(t.id, t.deployment, t.created_ms, t.name) for t in tenants]
            _print(
                args,
                {"tenants": [_tenant_json(t) for t in tenants]},
                _table(rows, ("TENANT", "DEPLOYMENT", "CREATED_MS", "NAME")) if rows else ["no tenants"],
            )
        elif action == "show":
            tenant = yield store.get_tenant(args.tenant_id, read_preference=PRIMARY)
            keys = yield store.list_api_keys(tenant.id, read_preference=PRIMARY)
            doc = dict(_tenant_json(tenant), settings=dict(tenant.settings))
            doc["apiKeys"] = [{"apiKeyId": k.id, "createdMs": k.created_ms, "revokedMs": k.revoked_ms} for k in keys]
            lines = ["{}: {}".format(k, v) for k, v in _tenant_json(tenant).items()]
            lines.append("settings: {}".format(json.dumps(dict(tenant.settings), sort_keys=True)))
            lines.append("api keys:")
            key_rows = [(k.id, k.created_ms, k.revoked_ms) for k in keys]
            lines += ["  " + line for line in _table(key_rows, ("API_KEY_ID", "CREATED_MS", "REVOKED_MS"))]
            _print(args, doc, lines)
        elif action == "revoke-key":
            key = (
                yield store.revoke_api_key(args.tenant_id, args.key_id, revoked_ms=now, read_preference=PRIMARY)
            ).value
            doc = {"tenantId": key.tenant_id, "apiKeyId": key.id, "revokedMs": key.revoked_ms}
            _print(args, doc, ["{}: {}".format(k, v) for k, v in doc.items()])
        elif action == "delete":
            yield _delete_tenant(reactor, args, cfg, store, now)
    finally:
        yield store.close()
        pool.stop()


@inlineCallbacks
def _webhooks(reactor: Any, args: argparse.Namespace, cfg: EdgeConfig) -> Any:
    from .webhooks.api import endpoint_view

    store, pool = yield _ready_store(reactor, args, cfg)
    try:
        tenant = yield store.get_tenant(args.tenant_id, read_preference=PRIMARY)
        endpoints = yield store.list_webhooks(tenant.id, read_preference=PRIMARY)
        rows = [
            (
                e.id,
                "on" if e.active else "off",
                e.consecutive_failures,
                ",".join(v.value for v in e.events),
                e.url,
                e.disabled_reason,
            )
            for e in endpoints
        ]
        header = ("WEBHOOK", "STATE", "FAILURES", "EVENTS", "URL", "DISABLED_REASON")
        _print(
            args,
            {"tenantId": tenant.id, "webhooks": [endpoint_view(e) for e in endpoints]},
            _table(rows, header) if rows else ["no webhooks"],
        )
    finally:
        yield store.close()
        pool.stop()


@inlineCallbacks
def _add_key(args: argparse.Namespace, store: Any, tenant: Tenant, now: int, out: dict[str, Any]) -> Any:
    key = new_api_key()
    written = yield store.add_api_key(tenant.id, hash_api_key(key), created_ms=now, read_preference=PRIMARY)
    out.update(apiKeyId=written.value.id, apiKey=key)
    _print(args, out, ["{}: {}".format(k, v) for k, v in out.items()])


@inlineCallbacks
def _delete_tenant(reactor: Any, args: argparse.Namespace, cfg: EdgeConfig, store: Any, now: int) -> Any:
    tenant = yield store.get_tenant(args.tenant_id, read_preference=PRIMARY)
    if not args.yes:
        raise Refused(
            "this deletes tenant {} ({!r}) with all its comments, keys and media; add --yes to do it".format(
                tenant.id, tenant.name
            )
        )
    media = yield _purge_media(reactor, args, cfg, store, tenant, now)
    deleted = (yield store.delete_tenant(tenant.id, read_preference=PRIMARY)).value
    doc = {"tenantId": tenant.id, "deleted": dict(deleted), "media": media}
    lines = ["deleted tenant {} ({!r})".format(tenant.id, tenant.name)]
    lines += ["  {}: {}".format(table, count) for table, count in sorted(deleted.items())]
    lines.append("media: {}".format(media["summary"]))
    _print(args, doc, lines)


@inlineCallbacks
def _purge_media(reactor: Any, args: argparse.Namespace, cfg: EdgeConfig, store: Any, tenant: Tenant, now: int) -> Any:
    """Delete the tenant's media objects from its origin and its caches:
    through the running node (which tells the deployment's other nodes),
    else from the origin directly and from the cache directory.

    Runs before the tenant's rows are deleted; any origin failure refuses
    (the rows stay, so running the command again finishes the job).
    """
    from .cdn.origin import OriginError

    media = cfg.cdn.tenants.get(tenant.id)
    if media is None:
        return {
            "deleted": 0,
            "purged": 0,
            "how": "none",
            "summary": "no media configured for this tenant ([cdn.tenants])",
        }
    where = "bucket {!r}, prefix {!r}".format(media.bucket, media.prefix)
    url = _node_url(args, cfg)
    # The delete is a tenant API call: a key of the tenant's own, deleted
    # with the tenant's other rows a moment later (so it must come first).
    key = new_api_key()
    written = yield store.add_api_key(tenant.id, hash_api_key(key), created_ms=now, read_preference=PRIMARY)
    try:
        answer = yield _http_json(
            reactor,
            "POST",
            url + "/api/v1/manage/media/delete",
            {"prefix": ""},
            {"authorization": "Bearer " + key},
        )
    except _Unreachable:
        answer = None
    if answer is not None:
        code, body = answer
        if code != 200:
            yield store.revoke_api_key(tenant.id, written.value.id, revoked_ms=now, read_preference=PRIMARY)
            raise Refused(
                "the node at {} did not delete the tenant's media ({}): {}; nothing was deleted from the "
                "store, run the command again".format(url, code, body)
            )
        deleted, purged = int(body["deleted"]), int(body["purged"])
        summary = "{} objects deleted from the origin ({}) and {} purged from the caches through the node at {}".format(
            deleted, where, purged, url
        )
        return {"deleted": deleted, "purged": purged, "how": "node", "summary": summary}
    yield store.revoke_api_key(tenant.id, written.value.id, revoked_ms=now, read_preference=PRIMARY)
    # The node is not running: the origin is reached with the config's
    # credentials, and the cache directory is ours to change.
    try:
        deleted = yield _delete_at_origin(reactor, cfg, media)
    except OriginError as e:
        raise Refused(
            "no node answers at {} and the origin did not delete the tenant's media ({}): {}; nothing was "
            "deleted from the store, run the command again".format(url, where, e.detail)
        ) from None
    from .cdn.cache import DiskCache

    cache = DiskCache(cfg.cdn.cache_dir, max_bytes=cfg.cdn.max_bytes)
    cache.open()
    try:
        purged = sum(1 for entry in cache.entries(tenant.id) if cache.remove(entry.id) is not None)
    finally:
        cache.close()
    summary = "{} objects deleted from the origin ({}) and {} removed from {} (the node at {} is not running)".format(
        deleted, where, purged, cfg.cdn.cache_dir, url
    )
    return {"deleted": deleted, "purged": purged, "how": "origin", "summary": summary}


@inlineCallbacks
def _delete_at_origin(reactor: Any, cfg: EdgeConfig, media: Any) -> Any:
    """Delete every object under the tenant's prefix with the node's own
    origin client; fires with how many.

    :raises OriginError: naming what failed.
    """
    import treq
    from prometheus_client import CollectorRegistry
    from twisted.web.client import Agent, HTTPConnectionPool

    from .cdn.metrics import CdnMetrics
    from .cdn.origin import S3Origin

    origin_cfg = cfg.cdn.origins[media.origin]
    secret = origin_cfg.secret_access_key
    if origin_cfg.secret_access_key_file:
        with open(origin_cfg.secret_access_key_file, encoding="utf-8") as f:
            secret = f.read().strip()
    pool = HTTPConnectionPool(reactor, persistent=False)
    timeout = cfg.cdn.origin_timeout_seconds
    origin = S3Origin(
        origin_cfg,
        secret_access_key=secret,
        client=treq.client.HTTPClient(Agent(reactor, pool=pool, connectTimeout=timeout)),
        clock=reactor,
        timeout=timeout,
        metrics=CdnMetrics(CollectorRegistry()),
    )
    try:
        return (yield origin.delete_prefix(media, ""))
    finally:
        yield pool.closeCachedConnections()


class _Unreachable(Exception):
    """Nothing answers at the node's HTTP address."""


def _node_url(args: argparse.Namespace, cfg: EdgeConfig) -> str:
    """``--url``, else the address of ``http.endpoint`` (a wildcard
    interface is reached on loopback)."""
    if getattr(args, "url", None):
        return str(args.url).rstrip("/")
    url = endpoint_url(cfg.http.endpoint)
    if url is None:
        raise Refused("cannot reach http.endpoint {!r} over TCP; give --url".format(cfg.http.endpoint), code=2)
    return url


def endpoint_url(endpoint: str) -> str | None:
    """The ``http://`` URL a client uses for a ``tcp:`` server endpoint
    string, or ``None`` for other kinds (UNIX sockets, ...)."""
    parts: list[str] = []
    current = ""
    escaped = False
    for ch in endpoint:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    kind, rest = parts[0].lower(), parts[1:]
    if kind not in ("tcp", "tcp6"):
        return None
    port = None
    interface = ""
    for part in rest:
        name, sep, value = part.partition("=")
        if not sep:
            port = port or name
        elif name == "port":
            port = value
        elif name == "interface":
            interface = value
    if port is None or not port.isdigit():
        return None
    if interface in ("", "0.0.0.0"):
        interface = "::1" if kind == "tcp6" and interface == "" else "127.0.0.1"
    elif interface == "::":
        interface = "::1"
    host = "[{}]".format(interface) if ":" in interface else interface
    return "http://{}:{}".format(host, port)


@inlineCallbacks
def _http_json(reactor: Any, method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
    """One request with treq; fires with ``(code, parsed JSON body)``.

    :raises _Unreachable: when nothing answers (connection refused, timeout).
    """
    import treq
    from twisted.internet.error import ConnectError, TimeoutError
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    client = treq.client.HTTPClient(Agent(reactor, pool=pool, connectTimeout=5))
    try:
        sent: dict[bytes | str, bytes | str] = {}
        for name, value in (headers or {}).items():
            sent[name] = value
        response = yield client.request(method, url, json=body, headers=sent, timeout=10)
        text = yield response.text()
    except (ConnectError, TimeoutError) as e:
        raise _Unreachable(str(e)) from None
    finally:
        yield pool.closeCachedConnections()
    try:
        return response.code, json.loads(text)
    except ValueError:
        return response.code, {"raw": text[:200]}


@inlineCallbacks
def _status(reactor: Any, args: argparse.Namespace, cfg: EdgeConfig) -> Any:
    url = _node_url(args, cfg)
    try:
        health_code, health = yield _http_json(reactor, "GET", url + "/healthz")
        mesh_code, mesh = yield _http_json(reactor, "GET", url + "/api/v1/mesh")
    except _Unreachable as e:
        raise Refused("no node answers at {} ({})".format(url, e)) from None
    doc = {"url": url, "healthz": health, "mesh": mesh if mesh_code == 200 else None}
    lines = [
        "node {} at {}: {} (HTTP {}), deployment {}, version {}".format(
            health.get("nodeId", "?"),
            url,
            health.get("status", "?"),
            health_code,
            health.get("deployment", "?"),
            health.get("version", "?"),
        )
    ]
    down = [name for name, child in sorted((health.get("children") or {}).items()) if not child.get("running")]
    if down:
        lines.append("children not running: {}".format(", ".join(down)))
    if mesh_code == 200:
        rows = [
            (
                n.get("nodeId", "") + (" *" if n.get("self") else ""),
                n.get("state"),
                n.get("deployment"),
                n.get("region"),
                n.get("load"),
                "-" if n.get("self") else ("-" if n.get("rttMs") is None else "{:.1f} ms".format(n["rttMs"])),
            )
            for n in mesh.get("nodes", [])
        ]
        lines.append("")
        lines += _table(rows, ("NODE", "STATE", "DEPLOYMENT", "REGION", "LOAD", "RTT"))
    else:
        lines.append("mesh map: HTTP {}".format(mesh_code))
    _print(args, doc, lines)
    if health_code != 200:
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``fastedge-admin`` console script."""
    args = _parser().parse_args(argv)
    if args.area == "cluster":
        # A cluster has a config per node, written by the command itself.
        from .cluster.command import run as run_cluster

        run_cluster(args)
        return
    overrides = {"node.data_dir": os.path.abspath(args.data_dir)} if args.data_dir else {}
    try:
        path, base_dir, how = find_config(args.config, os.getcwd(), os.environ)
        cfg = load_config(path, overrides, base_dir=base_dir)
    except Refused as e:
        _say(str(e))
        raise SystemExit(e.code) from None
    except ConfigError as e:
        _say("config error: {}".format(e))
        raise SystemExit(2) from None
    if args.area == "certs":
        _certs(args, cfg)
        return
    if args.area == "geo":
        if args.action == "lookup":
            _geo_lookup(cfg, args.address)
        else:
            _request_geo_rebuild(cfg)
        return
    if args.area == "node":
        _request_drain(cfg)
        return
    if args.area in ("tenant", "webhooks"):
        _say("config {} ({})".format(path, how))
    command = {"status": _status, "webhooks": _webhooks}.get(args.area, _tenant)

    def run(reactor: Any) -> Deferred[Any]:
        d = command(reactor, args, cfg)

        def failed(f: Any) -> None:
            from .store.errors import StoreError

            if f.check(Refused):
                _say(f.getErrorMessage())
                raise SystemExit(f.value.code)
            if f.check(StoreError):
                _say(f.getErrorMessage())
                raise SystemExit(1)
            return f

        d.addErrback(failed)
        return d

    react(run)


if __name__ == "__main__":  # pragma: no cover
    main()
