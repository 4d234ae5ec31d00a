# -*- test-case-name: tests.integration.test_twistd -*-
"""What an operator sees when ``twistd fastedge`` starts, or cannot.

- :func:`check_listeners` binds every configured listener for a moment,
  before anything is created on disk, so a port in use stops the node in
  one line naming the key (not a traceback after a cluster CA was made).
- :class:`StartupReport` logs one block at start (version, node,
  deployment, data directory, store, every listener with its real
  address, which secrets were created and which loaded), then one
  ``node ready`` line once every child that has a readiness point is ready.
"""

from __future__ import annotations

import errno
import os
import platform
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

import twisted

from . import __version__
from .config import EdgeConfig

__all__ = [
    "ListenerUnavailable",
    "StartupReport",
    "check_listeners",
    "refuse",
    "version_line",
]

#: Exit status of a command line or configuration that is wrong (as getopt tools and BSD sysexits' EX_USAGE spirit).
EXIT_USAGE = 2
#: Exit status when the configuration is fine but the host refuses it (a port in use, a privileged port).
EXIT_UNAVAILABLE = 1


def refuse(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``fastedge: <message>`` on stderr, alone, and exit with ``code``."""
    sys.stderr.write("fastedge: {}\n".format(message))
    sys.stderr.flush()
    raise SystemExit(code)


def version_line() -> str:
    """``fastedge 0.1.0 (Twisted 24.x, Python 3.11.7)``."""
    return "fastedge {} (Twisted {}, Python {})".format(__version__, twisted.__version__, platform.python_version())


class ListenerUnavailable(Exception):
    """A listener cannot bind. ``str()`` is the operator's line:
    ``mesh.endpoint tcp:7946:interface=127.0.0.1: address already in use``."""

    def __init__(self, key: str, where: str, reason: str) -> None:
        super().__init__("{} {}: {}".format(key, where, reason))
        self.key = key
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class _Probe:
    key: str
    where: str
    family: int
    kind: int
    host: str
    port: int


def _probes(cfg: EdgeConfig) -> Iterator[_Probe]:
    endpoints = [("http.endpoint", cfg.http.endpoint)]
    if cfg.tls.enabled:
        endpoints.append(("tls.endpoint", cfg.tls.endpoint))
    endpoints.append(("mesh.endpoint", cfg.mesh.endpoint))
    for key, description in endpoints:
        # Parsing does no I/O (config.py validated the strings the same way).
        endpoint = serverFromString(object(), description)
        if isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint, SSL4ServerEndpoint)):
            # Twisted keeps the port and interface of these endpoints in
            # private attributes only; they have been stable for a decade.
            host: str = endpoint._interface
            family = socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) or ":" in host else socket.AF_INET
            yield _Probe(key, description, family, socket.SOCK_STREAM, host, endpoint._port)
        # Other endpoint types (unix sockets, systemd-passed descriptors)
        # report their own errors at bind time.
    dns = cfg.dns
    family = socket.AF_INET6 if ":" in dns.interface else socket.AF_INET
    where = "{}:{}:interface={}".format("{}", dns.port, dns.interface)
    yield _Probe("dns.port", where.format("udp"), family, socket.SOCK_DGRAM, dns.interface, dns.port)
    yield _Probe("dns.port", where.format("tcp"), family, socket.SOCK_STREAM, dns.interface, dns.port)


def check_listeners(cfg: EdgeConfig) -> None:
    """Bind (and for TCP, listen on) every configured listener, then close
    them all: what fails now would fail at start, after files were made.

    The sockets are held until every one is checked, so two keys naming
    the same port are caught too. TCP probes set ``SO_REUSEADDR`` as
    Twisted's ports do, so a port in TIME_WAIT is not mistaken for a port
    in use. A port taken between this check and the real bind still fails
    the start (with Twisted's error); the check closes the common case.

    :raises ListenerUnavailable: naming the first listener that cannot bind.
    """
    held: list[socket.socket] = []
    try:
        for probe in _probes(cfg):
            if probe.port == 0:
                continue  # any free port: nothing to check
            s = socket.socket(probe.family, probe.kind)
            held.append(s)
            try:
                if probe.kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((probe.host, probe.port))
                if probe.kind == socket.SOCK_STREAM:
                    s.listen(1)
            except OSError as e:
                reason = os.strerror(e.errno) if e.errno else str(e)
                if e.errno == errno.EADDRINUSE:
                    reason = "address already in use"
                elif isinstance(e, socket.gaierror):
                    reason = "cannot resolve the interface ({})".format(e.strerror)
                raise ListenerUnavailable(probe.key, probe.where, reason[:1].lower() + reason[1:]) from None
    finally:
        for s in held:
            s.close()


def _address(port: Any) -> str:
    host = port.getHost()
    if ":" in host.host:
        return "[{}]:{}".format(host.host, host.port)
    return "{}:{}".format(host.host, host.port)


def _bound_port(service: IService) -> Any:
    """The listening port of a started listener service, or ``None``.

    ``StreamServerEndpointService`` exposes its port only through the
    Deferred it waits on, and ``UDPServer`` through ``_port``; fastedge's
    own listeners (``transport.service.Listener``) have ``port``.
    """
    port = getattr(service, "port", None)
    if port is None:
        port = getattr(service, "_port", None)
    if port is None:
        waiting = getattr(service, "_waitingForPort", None)
        if waiting is not None and waiting.called and not isinstance(waiting.result, Failure):
            port = waiting.result
    return port if port is not None and hasattr(port, "getHost") else None


def _child(top: Any, *path: str) -> Any:
    node = top
    for name in path:
        try:
            node = node.getServiceNamed(name)
        except KeyError:
            return None
    return node


class StartupReport:
    """The start-up block of one node.

    :param cfg: the node's configuration.
    :param secrets: config key -> path of the files a first start creates
        (the cluster CA, the session key, the self-signed certificate).
    """

    _log = Logger()

    def __init__(self, cfg: EdgeConfig, secrets: dict[str, str]) -> None:
        self._cfg = cfg
        self._secrets = secrets
        self._existed: dict[str, bool] = {}

    def before_start(self) -> None:
        """Note which secret files exist before any child starts, so the
        report can say "created" or "loaded" truthfully."""
        self._existed = {key: os.path.exists(path) for key, path in self._secrets.items()}

    def lines(self, top: Any) -> Iterable[tuple[str, dict[str, Any]]]:
        """The block as ``(format, fields)`` pairs, one per line.

        :param top: the node's top service, started (its named children are read).
        """
        cfg = self._cfg
        yield (
            "fastedge {version} (Twisted {twisted}, Python {python}): node {node_id}, deployment {deployment},"
            " region {region}",
            {
                "version": __version__,
                "twisted": twisted.__version__,
                "python": platform.python_version(),
                "node_id": cfg.node.id,
                "deployment": cfg.node.deployment,
                "region": cfg.node.region,
            },
        )
        yield "data directory {data_dir}", {"data_dir": os.path.abspath(cfg.node.data_dir)}
        store = cfg.store
        if store.backend == "postgresql":
            from .store.postgresql import redact_dsn

            yield (
                "store postgresql: primaries {primaries}, replica {replica}",
                {
                    "backend": "postgresql",
                    "primaries": ", ".join(redact_dsn(d) for d in store.postgresql.primaries) or "none",
                    "replica": redact_dsn(store.postgresql.replica) if store.postgresql.replica else "none",
                },
            )
        elif store.backend == "mongodb":
            from .store.mongodb.uri import redact_uri

            yield (
                "store mongodb: replica set {uri}, local member {nearest}, database {database}",
                {
                    "backend": "mongodb",
                    "uri": redact_uri(store.mongodb.uri),
                    "nearest": redact_uri(store.mongodb.nearest_uri) if store.mongodb.nearest_uri else "none",
                    "database": store.mongodb.database,
                },
            )
        else:
            yield "store sqlite: {path}", {"backend": "sqlite", "path": os.path.abspath(store.sqlite_path)}
        for name, key, service in (
            ("http", "http.endpoint", _child(top, "http", "http")),
            ("https", "tls.endpoint", _child(top, "http", "https")),
            ("dns udp", "dns.port", _child(top, "dns", "udp")),
            ("dns tcp", "dns.port", _child(top, "dns", "tcp")),
            ("mesh", "mesh.endpoint", _child(top, "mesh")),
        ):
            port = _bound_port(service) if service is not None else None
            if port is None:
                continue
            extra = ""
            if name == "https":
                extra = _certificates(top)
            elif name == "mesh":
                extra = " (mutual TLS)"
            yield (
                "listening {listener} on {address}{extra}",
                {"listener": name, "key": key, "address": _address(port), "extra": extra},
            )
        for key, path in self._secrets.items():
            if not os.path.exists(path):
                continue
            yield (
                "{what} {action} {path}",
                {
                    "what": _SECRET_NAMES.get(key, key),
                    "key": key,
                    "action": "loaded from" if self._existed.get(key, True) else "created at",
                    "path": os.path.abspath(path),
                },
            )

    def log_started(self, top: Any) -> None:
        """Log the block (call once every child of ``top`` has started)."""
        for fmt, fields in self.lines(top):
            self._log.info(fmt, **fields)

    def when_ready(self, waits: list[Deferred[Any]], started: float, clock: Any) -> Deferred[None]:
        """Log ``node ready`` once every Deferred in ``waits`` has fired."""
        d: Deferred[Any] = DeferredList(waits, consumeErrors=True)

        def ready(results: list[tuple[bool, Any]]) -> None:
            failed = [r.getErrorMessage() for ok, r in results if not ok]
            if failed:
                # Each child logged its own failure in full; this is the summary.
                self._log.error(
                    "node started, but {count} part(s) are not ready: {reasons}", count=len(failed), reasons=failed
                )
                return
            self._log.info(
                "node ready in {seconds:.2f} s", seconds=max(0.0, clock.seconds() - started), node_id=self._cfg.node.id
            )

        d.addCallback(ready)
        return d


def _certificates(top: Any) -> str:
    loader = _child(top, "http", "certificates")
    store = getattr(loader, "store", None)
    if store is None:
        return ""
    return " (certificates: {})".format(", ".join(store.names()) or "none")


_SECRET_NAMES = {
    "mesh.ca_file": "cluster CA",
    "api.secret_file": "session key",
    "tls.self_signed": "self-signed certificate",
}
