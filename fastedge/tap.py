# -*- test-case-name: tests.unit.test_tap -*-
"""``twistd fastedge``: command-line options and the node's service tree.

Wiring only: every child is built by its subpackage's ``make_service``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import succeed
from twisted.logger import Logger
from twisted.python import usage

from . import __version__, heap
from .api.resource import build_api, build_sessions
from .cdn import service as cdn_service
from .cdn.manage import UPLOAD_PATH, MediaApi
from .config import ConfigError, EdgeConfig, load_config
from .dns import service as dns_service
from .embed.policy import tenant_policy
from .embed.resource import EmbedResource, WidgetScript, form_body_limit
from .geo import service as geo_service
from .http import service as http_service
from .http.accesslog import AccessLog
from .http.site import EdgeSite
from .inputs import InputError, parse_ascii_int
from .lifecycle import DrainRequests, OrderedMultiService
from .live import service as live_service
from .live.access import GroupLocks
from .mesh import service as mesh_service
from .mesh.resource import mesh_routes
from .mesh.successor import successor_of
from .metrics.registry import new_registry, register_process_metrics
from .residency.gate import residency_gate
from .spam.runner import SpamJudge, load_checks
from .startup import EXIT_UNAVAILABLE, ListenerUnavailable, StartupReport, check_listeners, refuse, version_line
from .status.figures import read_figures
from .status.resource import StatusResource
from .store import service as store_service
from .web import build_site
from .webhooks import service as webhooks_service
from .webhooks.api import WebhooksApi


class Options(usage.Options):
    """Options of ``twistd fastedge``; the config file holds everything else.

    Errors under twistd: twistd's own handling of a ``UsageError`` prints
    its whole usage text (headed ``Usage: twistd [options]``) and the
    reason on stdout, and exits 1. An operator needs the reason alone, on
    stderr, so when these options run as twistd's subcommand
    (``self.parent`` is set) :meth:`parseOptions` reports the error itself
    as one line, ``fastedge: <key>: <reason>``, and exits 2, before twistd
    sees it. Parsed on their own (tests, tools), they raise ``UsageError``
    as usual. ``--help`` and ``--version`` print and exit 0.
    """

    optParameters = [
        ["config", "c", None, "TOML config file (default: the built-in defaults, as in etc/fastedge.toml)."],
        ["http", None, None, "HTTP listen endpoint, e.g. tcp:8080:interface=127.0.0.1 (overrides http.endpoint)."],
        [
            "https",
            None,
            None,
            "HTTPS listen endpoint (plain TCP; TLS is added), e.g. tcp:8443 (overrides tls.endpoint).",
        ],
        ["mesh", None, None, "Mesh listen endpoint, e.g. tcp:7946:interface=127.0.0.1 (overrides mesh.endpoint)."],
        ["node-id", None, None, "This node's id (overrides node.id)."],
        ["data-dir", None, None, "Data directory (overrides node.data_dir)."],
        ["dns-port", None, None, "DNS port, UDP and TCP (overrides dns.port)."],
    ]

    longdesc = "Runs one fastedge edge node. Bad configuration is refused before anything listens."

    config: EdgeConfig

    def opt_version(self) -> None:
        """Print fastedge's version (and Twisted's and Python's), then exit."""
        print(version_line())
        sys.exit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, load and check the config; see the class docstring for errors."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            refuse(str(e))
        if self.parent is not None:
            # Only when twistd is about to run the node: a bind now, before
            # anything is created on disk (tests parse options on their own
            # and must not bind the default ports).
            try:
                check_listeners(self.config)
            except ListenerUnavailable as e:
                refuse(str(e), EXIT_UNAVAILABLE)

    def overrides(self) -> dict[str, Any]:
        """The dotted config keys set on the command line."""
        found = {}
        for option, key in (
            ("http", "http.endpoint"),
            ("https", "tls.endpoint"),
            ("mesh", "mesh.endpoint"),
            ("node-id", "node.id"),
            ("data-dir", "node.data_dir"),
        ):
            if self[option] is not None:
                found[key] = self[option]
        if self["dns-port"] is not None:
            try:
                found["dns.port"] = parse_ascii_int(self["dns-port"], 0, 65535)
            except InputError:
                raise usage.UsageError("--dns-port: must be a port number from 0 to 65535") from None
        return found

    def postOptions(self) -> None:
        overrides = self.overrides()
        try:
            self.config = load_config(self["config"], overrides)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        from .dns.policy import UnknownPolicy, load_policy
        from .geo.lookup import GeoIndexError, check_database

        try:
            load_policy(self.config.dns.policy)
        except UnknownPolicy as e:
            raise usage.UsageError(str(e)) from None
        from .spam.runner import UnknownCheck

        try:
            load_checks(self.config.spam.checks)
        except UnknownCheck as e:
            raise usage.UsageError(str(e)) from None
        if self.config.geo.database:
            # A missing or foreign file fails here, in one line; a corrupt
            # one when the index is built, before anything listens.
            try:
                check_database(self.config.geo.database)
            except GeoIndexError as e:
                raise usage.UsageError(f"geo.database: {e}") from None
        from .mesh.tls import identity_files_problem

        mesh = self.config.mesh
        problem = identity_files_problem(
            self.config.node.id,
            seeds=bool(mesh.seeds),
            ca_file=mesh.ca_file,
            cert_file=mesh.cert_file,
            key_file=mesh.key_file,
        )
        if problem is not None:
            raise usage.UsageError(problem)


class Node(OrderedMultiService):
    """The node's top service. It stops in order
    (:class:`~fastedge.lifecycle.OrderedMultiService`): the mesh announces
    the node is leaving, then the children stop in reverse order, each
    waited for (http drains, ..., the store closes last).

    Once every child has started, the objects made so far are moved out of
    the garbage collector's reach and its generation-0 threshold is raised
    (:func:`fastedge.heap.settle`; logged once).

    The start-up block (:class:`fastedge.startup.StartupReport`) is logged
    once every child has started, and ``node ready`` once every child with
    a ``when_ready()`` is ready.

    :param registry: the node's metrics registry (for tests and tools that
        read it in process).
    :param clock: times ``node ready``.
    """

    _log = Logger()

    def __init__(self, *, registry: Any = None, clock: Any = None, report: StartupReport | None = None) -> None:
        super().__init__()
        self.registry = registry
        self.clock = clock
        self.report = report
        self._started_at: float | None = None

    def _note_start(self) -> None:
        if self._started_at is None and self.clock is not None:
            self._started_at = self.clock.seconds()
            if self.report is not None:
                self.report.before_start()

    def privilegedStartService(self) -> None:
        self._note_start()
        super().privilegedStartService()

    def startService(self) -> None:
        self._note_start()
        super().startService()
        self._log.info(
            "garbage collector: {frozen} start-up objects frozen, generation-0 threshold {threshold}",
            frozen=heap.settle(),
            threshold=heap.GC_GEN0_THRESHOLD,
        )
        if self.report is not None:
            self.report.log_started(self)
            waits = [child.when_ready() for child in self if callable(getattr(child, "when_ready", None))]
            self.report.when_ready(waits, self._started_at or 0.0, self.clock)


def makeService(options: Options, reactor: Any = None) -> IService:
    """The node: a ``MultiService`` of named children (store, geo, mesh,
    dns, live, cdn, http)."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    cfg = options.config
    registry = new_registry()
    register_process_metrics(registry)
    secrets = {
        "mesh.ca_file": cfg.mesh.ca_file,
        "api.secret_file": cfg.api.secret_file,
        "tls.self_signed": os.path.join(cfg.node.data_dir, "selfsigned.pem"),
    }
    top = Node(registry=registry, clock=reactor, report=StartupReport(cfg, secrets))

    # First, so stopped last: `fastedge-admin node drain` stops the node.
    drain = DrainRequests(cfg.node.data_dir, stop=reactor.stop, clock=reactor)
    drain.setName("drain")
    drain.setServiceParent(top)

    store = store_service.make_service(cfg.store, reactor=reactor, registry=registry)
    store.setName("store")
    store.setServiceParent(top)

    geo = geo_service.make_service(cfg.geo, reactor=reactor, registry=registry)
    geo.setName("geo")
    geo.setServiceParent(top)

    site: EdgeSite | None = None

    def load() -> int:
        # The node's load, announced to the mesh: its open client connections.
        return site.open_connections if site is not None else 0

    # Made in the order they need each other, parented in the order they
    # start: who a reader is (shared by the API and the live threads), the
    # live threads, the API, the CDN (its thread media ask the public API),
    # then the mesh that carries both features' calls to the other nodes.

    # Another deployment's tenants are refused (421) on every path, before
    # anything of theirs is read.
    residency = residency_gate(cfg.node.deployment, cfg.dns.zones, store=store.store, clock=reactor, registry=registry)
    node = cfg.node
    access = GroupLocks(store.store, clock=reactor, ttl_seconds=cfg.live.resolve_cache_seconds)
    sessions = build_sessions(
        cfg.api,
        store=store.store,
        clock=reactor,
        registry=registry,
        access=access,
        viewer_token_max_age_seconds=cfg.live.viewer_token_max_age_seconds,
    )
    live = live_service.make_service(
        cfg.live,
        reactor=reactor,
        registry=registry,
        store=store.store,
        node_id=cfg.node.id,
        residency=residency,
        mesh=cfg.mesh,
        access=access,
        viewer_tokens=sessions.viewer_tokens,
        sso=sessions.sso,
        # Where clients move when this node goes away: read from the mesh's
        # map at that moment (the mesh is made below: it carries live's relay).
        successor=lambda: successor_of(mesh.node_map, node.id, node.deployment, node.latitude, node.longitude)(),
    )
    spam = SpamJudge(cfg.spam, checks=load_checks(cfg.spam.checks), store=store.store, clock=reactor, registry=registry)
    api = build_api(
        cfg.api,
        store=store.store,
        clock=reactor,
        registry=registry,
        live=live.publisher,
        residency=residency,
        sessions=sessions,
        spam=spam,
    )
    # Media of a thread (threads/<id>/...) follow its group lock (docs/media.md).
    cdn = cdn_service.make_service(
        cfg.cdn,
        reactor=reactor,
        registry=registry,
        peer_timeout=cfg.mesh.relay_prime_timeout_seconds,
        guard=api.public.media_access,
    )
    # Features that talk to the deployment's other nodes register with the
    # mesh here (docs/mesh-handlers.md): live events relayed to their
    # channels' sequencers; CDN purges and peer fill.
    mesh = mesh_service.make_service(
        cfg.mesh,
        node=cfg.node,
        reactor=reactor,
        registry=registry,
        load=load,
        handlers=[
            live.relay,
            cdn.peers,
            residency.peers,
        ],
    )
    mesh.setName("mesh")
    mesh.setServiceParent(top)

    # DNS answers from the mesh's live node map (told of every change).
    dns = dns_service.make_service(cfg.dns, reactor=reactor, registry=registry, node_map=mesh.node_map, geo=geo)
    dns.setName("dns")
    dns.setServiceParent(top)

    live.setName("live")
    live.setServiceParent(top)

    cdn.setName("cdn")
    cdn.setServiceParent(top)

    media_api = MediaApi(cfg.cdn, cdn)
    webhooks_api = WebhooksApi(cfg.webhooks, cfg.api, store=store.store, clock=reactor)
    api_routes = api.router(
        extra_manage_routes=lambda manage: media_api.routes(manage) + webhooks_api.routes(manage),
        extra_routes=mesh_routes(mesh.status),
    )
    access_log = None
    if cfg.log.access != "off":
        access_log = AccessLog(
            cfg.log.access,
            cfg.log.access_file,
            reactor=reactor,
            registry=registry,
            flush_seconds=cfg.log.access_flush_seconds,
            flush_lines=cfg.log.access_flush_lines,
            max_pending_lines=cfg.log.access_max_pending_lines,
            # Its last lines are written once the listeners' connections closed.
            drained=lambda: site.when_idle() if site is not None else succeed(None),
        )
    embed = EmbedResource(cfg.api, public=api.public, registry=registry, policy=tenant_policy(api.tenants))
    site = build_site(
        cfg.node,
        cfg.http,
        reactor=reactor,
        registry=registry,
        store=store.store,
        store_ready=lambda: store.ready,
        api=api_routes,
        live=live.resource,
        media=cdn.resource,
        embed=embed,
        widget=WidgetScript(),
        body_limits=[
            (UPLOAD_PATH.encode("ascii"), cfg.cdn.upload_max_bytes),
            # Above the largest valid form, so a too-long comment is read
            # and refused in the page like any other bad field.
            (b"/embed/*", form_body_limit(cfg.api)),
        ],
        refusal_pages=[(b"/embed/", embed.too_large_page)],
        children=lambda: list(top),
        mesh_health=mesh.health,
        residency=residency,
        access_log=access_log,
        status=StatusResource(
            lambda: (mesh.status(), read_figures(registry.collect())), clock=reactor, version=__version__
        ),
    )
    webhooks = webhooks_service.make_service(
        cfg.webhooks,
        reactor=reactor,
        store=store.store,
        registry=registry,
        node_id=cfg.node.id,
        store_ready=lambda: store.ready,
    )
    webhooks.setName("webhooks")
    webhooks.setServiceParent(top)
    http = http_service.make_service(
        cfg.http,
        reactor=reactor,
        site=site,
        background=api.service,
        registry=registry,
        tls=cfg.tls,
        data_dir=cfg.node.data_dir,
        node_id=cfg.node.id,
        access_log=access_log,
        going_away=live.going_away,
    )
    http.setName("http")
    http.setServiceParent(top)
    return top
