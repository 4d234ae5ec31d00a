# -*- test-case-name: tests.unit.config.test_config -*-
"""The config's value checks: each returns ``None`` for an acceptable value,
else the reason, which :mod:`.loader` prefixes with the key's name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import field
from typing import Any

from ..inputs import InputError, parse_ascii_int


class ConfigError(ValueError):
    """The configuration is unusable; the message names the offending key."""


Check = Callable[[Any], "str | None"]


def _checked(default: Any, check: Check, doc: str = "", *, secret: bool = False) -> Any:
    """A dataclass field with a default and a validity check.

    :param check: returns ``None`` when the value is acceptable, else the reason.
    :param secret: keep the value out of ``repr()`` (and so out of logs).
    """
    return field(default=default, repr=not secret, metadata={"check": check, "doc": doc})


def _anything(value: Any) -> str | None:
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def _between(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        if low <= value <= high:
            return None
        return "must be from {} to {}".format(low, high)

    return check


def _ip_addresses(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return "{!r} is not an IPv4 or IPv6 address".format(value)
    if not values:
        return "must list at least one address"
    return None


def _networks(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return "{!r} is not an IPv4 or IPv6 network (address/prefix)".format(value)
    return None


_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def dns_label(value: str) -> str | None:
    if value == "" or _NAME_RE.match(value):
        return None
    return "must be a lower-case DNS label (a-z, 0-9, '-'; at most 63 characters)"


def _server_endpoint(value: str) -> str | None:
    """Parse an endpoint string the way ``serverFromString`` will at start."""
    from twisted.internet.endpoints import serverFromString

    try:
        # Constructing an endpoint does no I/O; a placeholder reactor is enough.
        serverFromString(object(), value)
    except (ValueError, KeyError, TypeError, OSError) as e:
        # OSError: an ssl: endpoint whose certificate file does not exist.
        return "not a server endpoint string ({})".format(e)
    return None


def _at_least(low: float) -> Check:
    def check(value: float) -> str | None:
        return None if value >= low else "must be at least {}".format(low)

    return check


def parse_host_port(value: str) -> tuple[str, int]:
    """Split ``"host:port"`` (an IPv6 host in brackets: ``"[::1]:7946"``).

    :raises ValueError: with the reason.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError("must be host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("an IPv6 host must be in brackets: [::1]:7946")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("{!r} is not an IPv6 address".format(host)) from None
    elif ":" in host:
        raise ValueError("an IPv6 host must be in brackets: [::1]:7946")
    elif not re.match(r"^[A-Za-z0-9.-]{1,253}$", host):
        raise ValueError("{!r} is not a host name or address".format(host))
    try:
        return host, parse_ascii_int(port_text, 1, 65535)
    except InputError:
        raise ValueError("the port must be from 1 to 65535") from None


def _host_port(value: str) -> str | None:
    if value == "":
        return None
    try:
        parse_host_port(value)
    except ValueError as e:
        return str(e)
    return None


def _host_ports(values: tuple[str, ...]) -> str | None:
    for i, value in enumerate(values):
        reason = _host_port(value) if value else "must not be empty"
        if reason is not None:
            return "[{}] {}".format(i, reason)
    return None


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number (0-65535)"


def _cipher_string(value: str) -> str | None:
    """An OpenSSL cipher string that selects at least one cipher."""
    from OpenSSL import SSL

    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(value.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        return "not an OpenSSL cipher list that selects any cipher"
    return None


def _http_url(value: str) -> str | None:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return "must be an http(s) URL with a host and no path, e.g. https://s3.eu-west-1.amazonaws.com"
    if parts.query or parts.fragment or parts.username:
        return "must not carry a query, a fragment or credentials"
    return None


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _bucket(value: str) -> str | None:
    if _BUCKET_RE.match(value) and ".." not in value:
        return None
    return "must be an S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')"


def _key_prefix(value: str) -> str | None:
    if value.startswith("/") or "//" in value or "\\" in value:
        return "must not start with '/' or contain '//' or a backslash"
    if any(part in (".", "..") for part in value.split("/")):
        return "must not contain '.' or '..' segments"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "must not contain control characters"
    return None


def _media_type(value: str) -> str | None:
    if re.match(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$", value):
        return None
    return "must be a lower-case media type such as image/png"


def _media_types(value: tuple[str, ...]) -> str | None:
    for item in value:
        reason = _media_type(item)
        if reason is not None:
            return "{!r} {}".format(item, reason)
    return None


def _one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        return "must be one of {}".format(", ".join(repr(c) for c in choices))

    return check


def _dsn(value: str) -> str | None:
    """A libpq connection string or URI; the reason never quotes it (it may
    hold a password)."""
    if value == "":
        return None
    # libpq's own parser, imported only when a DSN is set (a node on SQLite
    # never loads psycopg). The check lives here, not in the store, so the
    # config layer depends on no child package.
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(value)
    except psycopg.Error:
        return "not a libpq connection string or postgresql:// URI"
    return None


def _dsn_list(value: tuple[str, ...]) -> str | None:
    for i, dsn in enumerate(value):
        if not dsn:
            return "[{}] must not be empty".format(i)
        reason = _dsn(dsn)
        if reason is not None:
            return "[{}] {}".format(i, reason)
    return None


def _mongo_uri(value: str) -> str | None:
    """A ``mongodb://`` URI; the reason never quotes it (it may hold a password)."""
    if value == "":
        return None
    if value.startswith("mongodb+srv://"):
        return "mongodb+srv:// is not supported (txmongo resolves no SRV records): list the members"
    if not value.startswith("mongodb://"):
        return "not a valid mongodb:// URI"
    # pymongo's parser, imported only when a URI is set; it resolves nothing
    # for mongodb:// (checked above).
    from pymongo.errors import ConfigurationError, InvalidURI
    from pymongo.uri_parser import parse_uri

    try:
        parse_uri(value, validate=True, warn=False)
    except (ConfigurationError, InvalidURI, ValueError):
        return "not a valid mongodb:// URI"
    except OSError:
        # Validation opens the TLS files the options name.
        return "names a TLS file that cannot be read"
    return None


def _write_concern(value: str) -> str | None:
    if value == "majority" or (value.isdigit() and int(value) >= 1):
        return None
    return "must be 'majority' or a number of members (1 or more)"


def _database_name(value: str) -> str | None:
    if value and not any(c in value for c in './\\ "$\0'):
        return None
    return "must be a MongoDB database name (not empty; no '.', '/', '\\', space, '\"' or '$')"


def _domain(value: str) -> str | None:
    """A DNS name in presentation form, without the final dot."""
    if not value:
        return "must not be empty"
    if len(value) > 253:
        return "must be at most 253 characters"
    for label in value.split("."):
        if not _NAME_RE.match(label):
            return "{!r} is not a valid name (lower-case labels of a-z, 0-9, '-')".format(value)
    return None


def _relative_names(values: tuple[str, ...]) -> str | None:
    for value in values:
        if value == "@":
            continue
        reason = _domain(value)
        if reason is not None:
            return "{!r}: {}".format(value, reason)
    return None


def _domains(values: tuple[str, ...]) -> str | None:
    for value in values:
        reason = _domain(value)
        if reason is not None:
            return "{!r}: {}".format(value, reason)
    return None


def _optional_domain(value: str) -> str | None:
    return None if value == "" else _domain(value)


def _proxy_url(value: str) -> str | None:
    """``[webhooks] proxy``: empty, or ``http://HOST:PORT``."""
    if not value:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return "must be http://HOST:PORT"
    if parts.scheme != "http" or not parts.hostname or not port or parts.path not in ("", "/"):
        return "must be http://HOST:PORT (https endpoints are reached through it with CONNECT)"
    if parts.username or parts.query or parts.fragment:
        return "must not carry credentials, a query or a fragment"
    return None


_CHECK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def _check_names(values: tuple[str, ...]) -> str | None:
    for value in values:
        if not _CHECK_NAME_RE.match(value):
            return "{!r} is not a check name (lower-case letters, digits, '-', '_', '.')".format(value)
    if len(set(values)) != len(values):
        return "names a check twice"
    return None
