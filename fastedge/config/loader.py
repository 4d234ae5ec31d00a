# -*- test-case-name: tests.unit.config.test_config -*-
"""Reading the config: TOML parsed into the sections' dataclasses, every key
checked, overrides applied, derived values filled in.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .checks import _NAME_RE, ConfigError
from .sections import CdnConfig, EdgeConfig, ZoneConfig

_T = TypeVar("_T")


def _type_name(tp: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check one TOML value against the field's annotation."""
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(tp) is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        if isinstance(value, list):
            return tuple(_coerce("{}[{}]".format(key, i), item, v) for i, v in enumerate(value))
        raise ConfigError("{}: must be a list".format(key))
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        # An item of an array of tables ([[dns.zones]]).
        if isinstance(value, dict):
            return _build(tp, value, key + ".")
        raise ConfigError("{}: must be a table".format(key))
    else:  # pragma: no cover - a programming error in this module
        raise TypeError("unsupported config type {!r} for {}".format(tp, key))
    raise ConfigError("{}: must be {}, not {!r}".format(key, _type_name(tp), value))


def _build(cls: type[_T], table: Mapping[str, Any], prefix: str) -> _T:
    """Build dataclass ``cls`` from a TOML table, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        what = "section" if isinstance(table[unknown[0]], dict) else "key"
        raise ConfigError("{}{}: unknown {}".format(prefix, unknown[0], what))
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        key = prefix + name
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError("{}: must be a table ([{}])".format(key, key))
            kwargs[name] = _build(tp, value, key + ".")
            continue
        if typing.get_origin(tp) is dict:
            _, item = typing.get_args(tp)
            if not isinstance(value, dict):
                raise ConfigError("{}: must be a table ([{}.NAME])".format(key, key))
            entries = {}
            for sub, sub_value in value.items():
                if not isinstance(sub_value, dict):
                    raise ConfigError("{}.{}: must be a table ([{}.{}])".format(key, sub, key, sub))
                entries[sub] = _build(item, sub_value, "{}.{}.".format(key, sub))
            kwargs[name] = entries
            continue
        if isinstance(tp, types.UnionType):  # pragma: no cover - none today
            raise TypeError(key)
        coerced = _coerce(key, tp, value)
        check = fields[name].metadata.get("check")
        if check is not None:
            reason = check(coerced)
            if reason is not None:
                raise ConfigError("{}: {}".format(key, reason))
        kwargs[name] = coerced
    return cls(**kwargs)


def _set_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, key = dotted.split(".")
    table = raw
    for section in sections:
        table = table.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError("{}: must be a table".format(section))
    table[key] = value


def default_node_id() -> str:
    """A node id derived from the host name (lower-case, DNS-label safe)."""
    host = socket.gethostname().split(".")[0].lower()
    label = re.sub(r"[^a-z0-9-]+", "-", host).strip("-")[:63].strip("-")
    return label or "node"


def parse_config(
    text: str,
    *,
    source: str = "<config>",
    overrides: Mapping[str, Any] | None = None,
    base_dir: str | None = None,
) -> EdgeConfig:
    """Parse and validate TOML text.

    :param source: a name for the text, used in the error for a syntax error.
    :param overrides: dotted keys (``node.id``) set over the file's values.
    :param base_dir: where relative paths (``node.data_dir``, the mesh's
        files) start from; ``None``: the working directory, as for the node.
    :raises ConfigError: naming the first offending key.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("{}: not valid TOML ({})".format(source, e)) from None
    for dotted, value in (overrides or {}).items():
        _set_override(raw, dotted, value)
    cfg = _build(EdgeConfig, raw, "")
    return _derive(cfg, base_dir)


def _derive(cfg: EdgeConfig, base_dir: str | None = None) -> EdgeConfig:
    """Fill the values that default to something derived from other keys."""

    def absolute(path: str) -> str:
        return os.path.abspath(os.path.join(base_dir, path) if base_dir else path)

    node = cfg.node
    if not node.id:
        node = dataclasses.replace(node, id=default_node_id())
    data_dir = absolute(node.data_dir)
    node = dataclasses.replace(node, data_dir=data_dir)
    store = cfg.store
    if not store.sqlite_path:
        store = dataclasses.replace(store, sqlite_path=os.path.join(data_dir, "fastedge.sqlite3"))
    if store.backend == "postgresql" and not store.postgresql.primaries:
        raise ConfigError(
            "store.postgresql.primaries: must list at least one server when store.backend is 'postgresql'"
        )
    if store.backend == "mongodb" and not store.mongodb.uri:
        raise ConfigError("store.mongodb.uri: must name the replica set when store.backend is 'mongodb'")
    api = cfg.api
    if not api.secret_file:
        api = dataclasses.replace(api, secret_file=os.path.join(data_dir, "session.key"))
    if api.page_size > api.max_page_size:
        raise ConfigError("api.page_size: must not exceed api.max_page_size")
    geo = cfg.geo
    if not geo.request_file:
        geo = dataclasses.replace(geo, request_file=os.path.join(data_dir, "geo-rebuild.request"))
    dns = dataclasses.replace(cfg.dns, zones=tuple(derive_zone(z) for z in cfg.dns.zones))
    tls = cfg.tls
    if tls.endpoint.split(":", 1)[0].lower() in ("ssl", "tls", "txtls"):
        raise ConfigError("tls.endpoint: give a plain TCP endpoint (tcp:PORT:...); the node adds TLS itself")
    if not tls.cert_dir:
        tls = dataclasses.replace(tls, cert_dir=os.path.join(data_dir, "certs"))
    cdn = _derive_cdn(cfg.cdn, data_dir)
    mesh = cfg.mesh
    mesh_dir = os.path.join(data_dir, "mesh")
    mesh = dataclasses.replace(
        mesh,
        ca_file=absolute(mesh.ca_file) if mesh.ca_file else os.path.join(mesh_dir, "ca.pem"),
        cert_file=absolute(mesh.cert_file) if mesh.cert_file else os.path.join(mesh_dir, "node.pem"),
        key_file=absolute(mesh.key_file) if mesh.key_file else os.path.join(mesh_dir, "node.key"),
    )
    if not mesh.heartbeat_seconds < mesh.suspect_seconds:
        raise ConfigError("mesh.suspect_seconds: must be longer than mesh.heartbeat_seconds")
    if not mesh.suspect_seconds < mesh.dead_seconds:
        raise ConfigError("mesh.dead_seconds: must be longer than mesh.suspect_seconds")
    if mesh.reconnect_max_seconds < mesh.reconnect_initial_seconds:
        raise ConfigError("mesh.reconnect_max_seconds: must not be shorter than mesh.reconnect_initial_seconds")
    if cfg.webhooks.lease_seconds <= cfg.webhooks.timeout_seconds:
        raise ConfigError("webhooks.lease_seconds: must be longer than webhooks.timeout_seconds")
    log = cfg.log
    log = dataclasses.replace(
        log, access_file=absolute(log.access_file) if log.access_file else os.path.join(data_dir, "access.log")
    )
    return dataclasses.replace(
        cfg, node=node, store=store, api=api, geo=geo, dns=dns, tls=tls, cdn=cdn, mesh=mesh, log=log
    )


_TENANT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _derive_cdn(cdn: CdnConfig, data_dir: str) -> CdnConfig:
    """Check what crosses keys of ``[cdn]``, and fill the cache directory."""
    if not cdn.cache_dir:
        cdn = dataclasses.replace(cdn, cache_dir=os.path.join(data_dir, "media-cache"))
    if cdn.memory_max_object_bytes > cdn.memory_max_bytes:
        raise ConfigError("cdn.memory_max_object_bytes: must not exceed cdn.memory_max_bytes")
    if cdn.max_object_bytes > cdn.max_bytes:
        raise ConfigError("cdn.max_object_bytes: must not exceed cdn.max_bytes")
    for name, origin in cdn.origins.items():
        if not _NAME_RE.match(name):
            raise ConfigError("cdn.origins.{}: the name must be a DNS label (a-z, 0-9, '-')".format(name))
        if origin.secret_access_key and origin.secret_access_key_file:
            raise ConfigError("cdn.origins.{}.secret_access_key_file: give the secret or a file, not both".format(name))
        if (origin.secret_access_key or origin.secret_access_key_file) and not origin.access_key_id:
            raise ConfigError("cdn.origins.{}.access_key_id: required with a secret access key".format(name))
    for tenant_id, tenant in cdn.tenants.items():
        if not _TENANT_ID_RE.match(tenant_id):
            raise ConfigError("cdn.tenants.{}: not a tenant id (letters, digits, '_', '-')".format(tenant_id))
        if not tenant.bucket:
            raise ConfigError("cdn.tenants.{}.bucket: required".format(tenant_id))
        if tenant.origin not in cdn.origins:
            raise ConfigError("cdn.tenants.{}.origin: no origin {!r} in [cdn.origins]".format(tenant_id, tenant.origin))
    return cdn


def derive_zone(zone: ZoneConfig) -> ZoneConfig:
    """A zone's NS names and SOA mailbox default to names under its apex."""
    if not zone.nameservers:
        zone = dataclasses.replace(zone, nameservers=("ns1." + zone.name,))
    if not zone.hostmaster:
        zone = dataclasses.replace(zone, hostmaster="hostmaster." + zone.name)
    return zone


def load_config(
    path: str | None, overrides: Mapping[str, Any] | None = None, *, base_dir: str | None = None
) -> EdgeConfig:
    """Read, validate and complete the configuration.

    :param path: a TOML file, or ``None`` for the built-in defaults (the same
        values ``etc/fastedge.toml`` documents).
    :param base_dir: see :func:`parse_config`.
    :raises ConfigError: naming the offending key, or the unreadable file.
    """
    if path is None:
        return parse_config("", overrides=overrides, base_dir=base_dir)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise ConfigError("{}: cannot read ({})".format(path, e.strerror)) from None
    except UnicodeDecodeError:
        raise ConfigError("{}: not UTF-8".format(path)) from None
    return parse_config(text, source=path, overrides=overrides, base_dir=base_dir)
