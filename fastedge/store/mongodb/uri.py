# -*- test-case-name: tests.unit.store.test_mongodb_uri -*-
"""MongoDB connection strings: shown without credentials, and completed for
the two pools the store keeps (``fastedge.config`` checks them)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from pymongo.errors import ConfigurationError, InvalidURI
from pymongo.uri_parser import parse_uri

#: URI options safe to show in logs (never credentials or TLS key paths).
_SHOWN_OPTIONS = ("replicaSet", "readPreference", "authSource")


def _parse(uri: str) -> dict[str, Any]:
    # mongodb+srv:// would make pymongo resolve DNS records here (and txmongo
    # reads no SRV records): refused before parsing.
    if not uri.startswith("mongodb://"):
        raise InvalidURI("not a mongodb:// URI")
    # No validation: it opens the TLS files an option names (the config
    # check does that, once).
    parsed: dict[str, Any] = parse_uri(uri, validate=False, warn=False)
    return parsed


def redact_uri(uri: str) -> str:
    """``uri`` fit for a log line: hosts, database and a few options; never
    the user name, the password or any other option."""
    try:
        parsed = _parse(uri)
    except (ConfigurationError, InvalidURI, ValueError):
        return "<unparsable MongoDB URI>"
    hosts = ",".join("{}:{}".format(host, port) for host, port in parsed["nodelist"])
    options = parsed["options"]
    shown = {k: options[k] for k in _SHOWN_OPTIONS if k in options}
    query = "?" + urlencode(shown) if shown else ""
    return "mongodb://{}/{}{}".format(hosts, parsed["database"] or "", query)


def database_of(uri: str) -> str | None:
    """The database named in the URI's path, if any."""
    return _parse(uri)["database"] or None


def with_options(uri: str, **options: str) -> str:
    """``uri`` with ``options`` set in its query string (replacing any the
    URI already sets under the same names)."""
    base, _, query = uri.partition("?")
    if "/" not in base[len("mongodb://") :]:
        base += "/"
    kept = [part for part in query.split("&") if part and part.split("=", 1)[0] not in options]
    kept += ["{}={}".format(k, quote(v, safe="")) for k, v in options.items()]
    return base + "?" + "&".join(kept)
