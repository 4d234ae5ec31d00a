# -*- test-case-name: tests.integration.test_admin -*-
"""``fastedge-admin``: operator commands that work beside a running node.

``fastedge-admin tenant create NAME [--json]`` creates a tenant and its
first API key, talking to the same store the node uses (with the same
``--config`` and ``--data-dir``); SQLite's locking lets it write while the
node runs.

``fastedge-admin geo rebuild`` asks the running node to rebuild its GeoIP
index now: it creates ``geo.request_file``, which the node's ``geo`` child
picks up within ``geo.watch_seconds`` (``SIGHUP`` to the node does the same).

``fastedge-admin certs ca`` creates the mesh's cluster CA, and
``fastedge-admin certs node NODE_ID`` a node certificate signed by it
(``docs/mesh.md``, "Certificates").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import react
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from .api.keys import hash_api_key, new_api_key
from .config import ConfigError, EdgeConfig, load_config
from .store.model import ReadPreference
from .store.sqlite import SQLiteStore


def _version_line() -> str:
    from .startup import version_line

    return version_line()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastedge-admin", description="Operate a fastedge node's data.")
    p.add_argument("--version", action="version", version=_version_line())
    p.add_argument("--config", "-c", help="TOML config file (default: built-in defaults)")
    p.add_argument("--data-dir", help="data directory (overrides node.data_dir)")
    sub = p.add_subparsers(dest="area", required=True)
    tenant = sub.add_parser("tenant", help="tenants and their API keys")
    tsub = tenant.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="create a tenant and print its id and first API key")
    create.add_argument("name")
    create.add_argument("--deployment", help="deployment of the tenant (default: this node's)")
    create.add_argument("--json", action="store_true", help="print JSON")
    key = tsub.add_parser("add-key", help="create another API key for a tenant")
    key.add_argument("tenant_id")
    key.add_argument("--json", action="store_true", help="print JSON")
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
    geo = sub.add_parser("geo", help="the GeoIP index")
    gsub = geo.add_subparsers(dest="action", required=True)
    gsub.add_parser(
        "rebuild",
        help="ask the running node to rebuild its GeoIP index from geo.database",
    )
    return p


def _certs(args: argparse.Namespace, cfg: EdgeConfig) -> None:
    """``certs ca`` and ``certs node``: files only, no store, no reactor."""
    from .config import _dns_label
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
    reason = _dns_label(node_id) if node_id else "must not be empty"
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


def _open_store(reactor: Any, cfg: EdgeConfig) -> tuple[Any, ThreadPool]:
    """The store the node's config names (its primary, for PostgreSQL)."""
    pool = ThreadPool(minthreads=1, maxthreads=1, name="fastedge-admin")
    pool.start()
    if cfg.store.backend == "postgresql":
        from .store.postgresql import PostgresStore

        pg = cfg.store.postgresql
        # Admin commands write, and read their writes: the primary only.
        return (
            PostgresStore(
                pg.primaries,
                None,
                run=lambda f: deferToThreadPool(reactor, pool, f),
                clock=reactor,
                failover_seconds=pg.failover_seconds,
                connect_timeout_seconds=pg.connect_timeout_seconds,
                statement_timeout_seconds=pg.statement_timeout_seconds,
                application_name="fastedge-admin",
                pool_size=1,
            ),
            pool,
        )
    os.makedirs(os.path.dirname(cfg.store.sqlite_path), exist_ok=True)
    store = SQLiteStore(
        cfg.store.sqlite_path,
        run=lambda f: deferToThreadPool(reactor, pool, f),
        clock=reactor,
        busy_timeout_seconds=cfg.store.busy_timeout_seconds,
        pool_size=1,
    )
    return store, pool


@inlineCallbacks
def _run(reactor: Any, args: argparse.Namespace, cfg: EdgeConfig) -> Any:
    store, pool = _open_store(reactor, cfg)
    now = int(reactor.seconds() * 1000)
    try:
        yield store.open()
        if args.action == "create":
            name = args.name.strip()
            if not name or len(name) > 200:
                raise SystemExit("fastedge-admin: the name must be 1 to 200 characters")
            deployment = args.deployment or cfg.node.deployment
            tenant = (
                yield store.create_tenant(
                    name,
                    deployment,
                    created_ms=now,
                    read_preference=ReadPreference.PRIMARY,
                )
            ).value
            tenant_id = tenant.id
            out: dict[str, Any] = {
                "tenantId": tenant.id,
                "name": tenant.name,
                "deployment": deployment,
            }
        else:
            tenant_id = args.tenant_id
            yield store.get_tenant(tenant_id, read_preference=ReadPreference.PRIMARY)
            out = {"tenantId": tenant_id}
        key = new_api_key()
        written = yield store.add_api_key(
            tenant_id,
            hash_api_key(key),
            created_ms=now,
            read_preference=ReadPreference.PRIMARY,
        )
        out.update(apiKeyId=written.value.id, apiKey=key)
        if args.json:
            print(json.dumps(out))
        else:
            for k, v in out.items():
                print("{}: {}".format(k, v))
    finally:
        yield store.close()
        pool.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``fastedge-admin`` console script."""
    args = _parser().parse_args(argv)
    overrides = {"node.data_dir": args.data_dir} if args.data_dir else {}
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print("fastedge-admin: config error: {}".format(e), file=sys.stderr)
        raise SystemExit(2) from None
    if args.area == "certs":
        _certs(args, cfg)
        return
    if args.area == "geo":
        _request_geo_rebuild(cfg)
        return

    def run(reactor: Any) -> Deferred[Any]:
        d = _run(reactor, args, cfg)

        def failed(f: Any) -> None:
            from .store.errors import StoreError

            if f.check(StoreError):
                print("fastedge-admin: {}".format(f.getErrorMessage()), file=sys.stderr)
                raise SystemExit(1)
            return f

        d.addErrback(failed)
        return d

    react(run)


if __name__ == "__main__":  # pragma: no cover
    main()
