# -*- test-case-name: tests.unit.config.test_config -*-
"""The config's sections: one frozen dataclass per TOML table, each field's
default and check beside it (and documented in ``etc/fastedge.toml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .checks import (
    _anything,
    _at_least,
    _between,
    _bucket,
    _check_names,
    _checked,
    _cipher_string,
    _database_name,
    _domain,
    _domains,
    _dsn,
    _dsn_list,
    _host_port,
    _host_ports,
    _http_url,
    _ip_addresses,
    _key_prefix,
    _media_types,
    _mongo_uri,
    _networks,
    _non_negative,
    _one_of,
    _optional_domain,
    _port,
    _positive,
    _proxy_url,
    _relative_names,
    _server_endpoint,
    _write_concern,
    dns_label,
)


@dataclass(frozen=True)
class NodeConfig:
    """Who this node is."""

    #: Unique name of the node; empty means "derived from the host name".
    id: str = _checked("", dns_label)
    #: The deployment this node serves (``global``, ``eu``, ...).
    deployment: str = _checked("global", dns_label)
    #: A human name for the node's region, shown in status pages.
    region: str = "local"
    #: Where the node keeps its database, secrets and caches.
    data_dir: str = "./var/fastedge"
    #: Where the node is, for nearest-node answers (degrees, WGS 84).
    latitude: float = _checked(0.0, _between(-90.0, 90.0))
    longitude: float = _checked(0.0, _between(-180.0, 180.0))
    #: Public addresses announced to the mesh and answered by GeoDNS.
    addresses: tuple[str, ...] = _checked(("127.0.0.1", "::1"), _ip_addresses)


@dataclass(frozen=True)
class HttpConfig:
    """The public HTTP listener."""

    #: A Twisted server endpoint string.
    endpoint: str = _checked("tcp:8080:interface=127.0.0.1:backlog=1024", _server_endpoint)
    #: Largest request body accepted; larger ones get 413.
    max_body_bytes: int = _checked(64 * 1024, _positive)
    #: Requests slower than this are counted in ``fastedge_http_slow_requests_total``.
    slow_request_seconds: float = _checked(0.1, _positive)
    #: A request's line and headers must arrive within this many seconds of
    #: its first byte (of the connection, for its first request), or it is
    #: answered 408 and the connection closed (nginx ``client_header_timeout``).
    header_timeout_seconds: float = _checked(10.0, _positive)
    #: A request body that makes no progress for this long is answered 408.
    body_timeout_seconds: float = _checked(30.0, _positive)
    #: Once the node closes a connection, what it wrote must be read within
    #: this many seconds, or the connection is aborted.
    close_timeout_seconds: float = _checked(5.0, _positive)
    #: Client connections open at once, HTTP and HTTPS together; over it the
    #: listeners stop accepting. 0: the descriptor limit (``ulimit -n``)
    #: minus ``reserved_descriptors``.
    max_connections: int = _checked(0, _non_negative)
    #: Descriptors kept for DNS over TCP, the mesh, the store and files when
    #: ``max_connections`` is 0.
    reserved_descriptors: int = _checked(512, _at_least(64))
    #: Connections open at once from one client address (0: no limit);
    #: more are closed as soon as they are accepted.
    max_connections_per_ip: int = _checked(1000, _non_negative)
    #: The same for one network (0: no limit), of these prefix lengths.
    max_connections_per_prefix: int = _checked(4000, _non_negative)
    ipv4_prefix_length: int = _checked(24, _between(8, 32))
    ipv6_prefix_length: int = _checked(64, _between(16, 128))
    #: Clients allowed to see /metrics, /api/v1/mesh, /status and the detail
    #: of /healthz (docs/admin.md, "Operational endpoints"); others get a
    #: JSON 404, and /healthz's status alone. Empty: nobody.
    ops_networks: tuple[str, ...] = _checked(("127.0.0.0/8", "::1/128"), _networks)
    #: On stop (SIGTERM, ``fastedge-admin node drain``): once the listeners
    #: stop accepting, requests and streams in flight get this long to
    #: finish; the connections still open then are closed.
    drain_seconds: float = _checked(10.0, _non_negative)


@dataclass(frozen=True)
class MeshConfig:
    """The mesh: Perspective Broker between nodes over mutual TLS, and the
    membership protocol that keeps the live node map (docs/mesh.md)."""

    #: Server endpoint of the mesh listener (plain TCP: TLS is added by the
    #: mesh, with this node's certificate, and peers must present theirs).
    endpoint: str = _checked("tcp:7946:interface=127.0.0.1", _server_endpoint)
    #: ``host:port`` other nodes connect to; empty = the listening interface
    #: and port (right for loopback and for a node that listens on its
    #: private address; set it when the node listens on 0.0.0.0 or ::).
    advertise: str = _checked("", _host_port)
    #: Nodes to join through (``host:port``); any one that answers tells of
    #: every other node. Empty: this node starts a mesh of its own.
    seeds: tuple[str, ...] = _checked((), _host_ports)
    #: The cluster CA certificate (PEM); empty = ``<node.data_dir>/mesh/ca.pem``.
    ca_file: str = ""
    #: This node's certificate (PEM, named after the node id, signed by the
    #: cluster CA); empty = ``<node.data_dir>/mesh/node.pem``.
    cert_file: str = ""
    #: Its private key (PEM); empty = ``<node.data_dir>/mesh/node.key``.
    key_file: str = ""
    #: Seconds between heartbeats to every peer.
    heartbeat_seconds: float = _checked(0.5, _positive)
    #: A peer not heard from for this long is SUSPECT (not answered by DNS).
    suspect_seconds: float = _checked(1.5, _positive)
    #: A peer that neither this node nor any other has heard from for this
    #: long is DEAD.
    dead_seconds: float = _checked(2.5, _positive)
    #: A peer silent past suspect_seconds: how many other peers (chosen at
    #: random among the ALIVE ones with a working link, others first each
    #: round) are asked whether they still hear it, every heartbeat; 0 asks
    #: every peer.
    indirect_probes: int = _checked(3, _non_negative)
    #: Past this many live nodes, each node heartbeats a partial view (its
    #: ring neighbours and a few extras) instead of every peer, and learns
    #: of the others through rumours (docs/mesh.md).
    full_mesh_max_nodes: int = _checked(64, _at_least(2))
    #: Peers in that partial view (five ring neighbours, the rest extras).
    partial_view_size: int = _checked(8, _at_least(6))
    #: Seconds to connect (TCP and TLS) and log in to a peer.
    connect_timeout_seconds: float = _checked(2.0, _positive)
    #: Delay before the first reconnect to a peer, growing to the maximum.
    reconnect_initial_seconds: float = _checked(0.1, _positive)
    reconnect_max_seconds: float = _checked(5.0, _positive)
    #: How long a clean stop waits for peers to acknowledge that it leaves.
    leave_timeout_seconds: float = _checked(1.0, _positive)
    #: Stop reconnecting to a node that has been DEAD this long (it rejoins
    #: by itself when it comes back).
    forget_dead_seconds: float = _checked(3600.0, _positive)
    #: The load a node announces (its live connections) is sampled this often.
    load_report_seconds: float = _checked(5.0, _positive)
    #: A message from a peer larger than this (counted to within one network
    #: read, at most 32 KiB) closes its connection.
    max_message_bytes: int = _checked(1024 * 1024, _at_least(65536))
    #: Calls a peer may make per second (bursts of twice as many); a peer
    #: over the limit is disconnected.
    max_calls_per_second: int = _checked(5000, _positive)
    #: Calls to one peer awaiting an answer; a peer that lets more pile up
    #: is disconnected (it is not answering).
    max_pending_calls: int = _checked(10_000, _positive)
    #: How long the first subscriber of a channel on this node waits for the
    #: channel's sequencer (its position and history), at most.
    relay_prime_timeout_seconds: float = _checked(1.0, _positive)
    #: How long a write waits for its channel's sequencer to be reachable
    #: before this node sequences it itself (its local subscribers reload).
    relay_forward_timeout_seconds: float = _checked(5.0, _positive)
    #: Writes waiting for unreachable sequencers, at most.
    relay_queue_events: int = _checked(10_000, _positive)


@dataclass(frozen=True)
class PostgresConfig:
    """The replicated backend: a PostgreSQL primary and a hot standby beside
    this node. Connection strings are libpq's (``host=... port=...
    dbname=... user=...``) or ``postgresql://`` URIs; keep passwords in a
    ``passfile`` (libpq's pgpass), not here. They are never logged whole.
    """

    #: The servers that may be the primary, in order of preference; the
    #: first writable one is used, and the list is searched again when the
    #: primary fails (a standby promoted by the operator's tooling).
    primaries: tuple[str, ...] = _checked((), _dsn_list)
    #: This node's local hot standby, serving NEAREST reads; empty means
    #: NEAREST reads go to the primary.
    replica: str = _checked("", _dsn)
    #: How long a NEAREST read holding a consistency token waits for the
    #: replica to replay it before reading the primary instead (0: never wait).
    token_wait_seconds: float = _checked(0.5, _non_negative)
    #: How often the replica's position is checked during that wait.
    token_poll_seconds: float = _checked(0.002, _positive)
    #: How long an operation keeps looking for a writable primary (failover)
    #: before it fails.
    failover_seconds: float = _checked(10.0, _non_negative)
    #: libpq connect timeout (libpq's minimum is 2 seconds).
    connect_timeout_seconds: int = _checked(3, _at_least(2))
    #: Server-side statement timeout (0: none).
    statement_timeout_seconds: float = _checked(30.0, _non_negative)
    #: How often the replica's lag is measured (and the primary checked).
    lag_probe_seconds: float = _checked(5.0, _positive)


@dataclass(frozen=True)
class MongoConfig:
    """The MongoDB backend: a replica set, and the member beside this node
    for NEAREST reads (docs/consistency.md). URIs are ``mongodb://``; they
    are never logged with their credentials.
    """

    #: The replica set (every member, ``replicaSet=...``): writes and
    #: PRIMARY reads go to its primary.
    uri: str = _checked("", _mongo_uri, secret=True)
    #: This node's local member, serving NEAREST reads; empty means NEAREST
    #: reads go to the primary.
    nearest_uri: str = _checked("", _mongo_uri, secret=True)
    #: Database holding fastedge's collections (the URI's own path is ignored).
    database: str = _checked("fastedge", _database_name)
    #: Write concern of every write: ``majority`` or a number of members.
    write_concern: str = _checked("majority", _write_concern)
    #: How long a write waits for its write concern (``wtimeout``).
    write_concern_timeout_seconds: float = _checked(5.0, _positive)
    #: How long a NEAREST read holding a consistency token lets the local
    #: member wait for it (``maxTimeMS``) before reading the primary (0: never wait).
    token_wait_seconds: float = _checked(0.5, _non_negative)
    #: How long an operation keeps retrying through an election before it fails.
    failover_seconds: float = _checked(10.0, _non_negative)
    #: How long a read waits for the local member before the primary serves it.
    nearest_timeout_seconds: float = _checked(3.0, _positive)
    #: Server-side limit of every read (``maxTimeMS``; 0: none).
    operation_timeout_seconds: float = _checked(30.0, _non_negative)
    #: Connections in each of the two pools (primary, local member).
    pool_size: int = _checked(4, _positive)


@dataclass(frozen=True)
class StoreConfig:
    """The comment database."""

    #: ``sqlite``: the embedded, zero set-up backend; ``postgresql``: a
    #: replicated PostgreSQL (see ``[store.postgresql]``); ``mongodb``: a
    #: MongoDB replica set (see ``[store.mongodb]``).
    backend: str = _checked("sqlite", _one_of("sqlite", "postgresql", "mongodb"))
    #: SQLite file; empty means ``<node.data_dir>/fastedge.sqlite3``.
    sqlite_path: str = ""
    #: Threads that run blocking database calls off the reactor thread.
    threads: int = _checked(4, _positive)
    #: Seconds a writer waits for another process's lock (e.g. ``fastedge-admin``).
    busy_timeout_seconds: float = _checked(5.0, _positive)
    postgresql: PostgresConfig = field(default_factory=PostgresConfig)
    mongodb: MongoConfig = field(default_factory=MongoConfig)


@dataclass(frozen=True)
class CreditsConfig:
    """API credits charged to a tenant per tenant-API call."""

    primary_read: int = _checked(2, _non_negative)
    nearest_read: int = _checked(1, _non_negative)
    write: int = _checked(3, _non_negative)
    #: Charges are summed in memory and written to the ledger this often.
    flush_seconds: float = _checked(5.0, _positive)


@dataclass(frozen=True)
class ApiConfig:
    """The public comment API and the tenant API."""

    comment_max_chars: int = _checked(5000, _positive)
    display_name_max_chars: int = _checked(64, _positive)
    url_id_max_chars: int = _checked(2048, _positive)
    title_max_chars: int = _checked(300, _positive)
    page_size: int = _checked(30, _positive)
    max_page_size: int = _checked(100, _positive)
    #: Lifetime of an anonymous-session cookie.
    session_max_age_seconds: int = _checked(365 * 24 * 3600, _positive)
    #: Mark the session cookie ``Secure`` (turn on once TLS terminates here).
    cookie_secure: bool = False
    #: Comment writes (posts, likes, flags, blocks) allowed per minute.
    writes_per_minute_per_session: int = _checked(30, _positive)
    writes_per_minute_per_ip: int = _checked(120, _positive)
    #: Seconds a serialized public thread page may be served from memory.
    page_cache_seconds: float = _checked(2.0, _non_negative)
    page_cache_entries: int = _checked(10_000, _non_negative)
    #: A reader's own likes and blocks are kept this long between their
    #: writes (docs/consistency.md, "Readers' own state"); 0: read every time.
    viewer_cache_seconds: float = _checked(60.0, _non_negative)
    #: Readers whose state is kept at most (16 threads each).
    viewer_cache_entries: int = _checked(50_000, _non_negative)
    #: File holding the key that signs session cookies; empty means
    #: ``<node.data_dir>/session.key`` (created on first start).
    secret_file: str = ""
    #: Flags that hide a comment for review, for tenants whose settings do
    #: not say (``fastedge.api.moderation.auto_hide_threshold``).
    auto_hide_flags: int = _checked(3, _positive)
    #: Likes of one comment that count from one client address, whatever
    #: sessions it makes up (docs/moderation.md).
    likes_per_address: int = _checked(3, _positive)
    #: Oldest SSO payload accepted (by its signing timestamp), seconds.
    sso_max_age_seconds: int = _checked(2 * 24 * 3600, _positive)
    #: How far in the future an SSO timestamp may be (clock skew), seconds.
    sso_skew_seconds: int = _checked(300, _non_negative)
    credits: CreditsConfig = field(default_factory=CreditsConfig)


#: TLS 1.2 cipher suites: ECDHE key exchange with AEAD ciphers only (the
#: "intermediate" profile). TLS 1.3 suites are OpenSSL's defaults, all AEAD.
MODERN_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@dataclass(frozen=True)
class TlsConfig:
    """The public HTTPS listener: same Site as HTTP, certificates chosen by SNI."""

    #: Listen for HTTPS at all.
    enabled: bool = True
    #: A Twisted *TCP* server endpoint string; TLS is layered on by the node.
    endpoint: str = _checked("tcp:8443:interface=127.0.0.1:backlog=1024", _server_endpoint)
    #: Certificates, one per host name (``NAME.pem``, or ``NAME.crt`` and
    #: ``NAME.key``), plus ``default``; empty means ``<node.data_dir>/certs``.
    cert_dir: str = ""
    #: With no ``default`` certificate, generate a self-signed one into
    #: ``<node.data_dir>/selfsigned.pem`` (so the defaults run on a laptop).
    self_signed: bool = True
    #: Oldest protocol version accepted.
    min_version: str = _checked("1.2", _one_of("1.2", "1.3"))
    #: OpenSSL cipher list for TLS 1.2.
    ciphers: str = _checked(MODERN_CIPHERS, _cipher_string)
    #: Certificate files are checked for changes at most this often (seconds).
    reload_check_seconds: float = _checked(2.0, _non_negative)
    #: Answer plain HTTP with a redirect to HTTPS (except /healthz, /metrics
    #: and ACME challenges).
    redirect_http: bool = False
    #: Port in redirects; 0 means the port the HTTPS listener is bound to.
    redirect_port: int = _checked(0, _port)


@dataclass(frozen=True)
class S3OriginConfig:
    """An S3-compatible object store (endpoint and credentials)."""

    #: Endpoint URL, e.g. ``https://s3.eu-west-1.amazonaws.com``.
    endpoint: str = _checked("https://s3.amazonaws.com", _http_url)
    #: Region used in the SigV4 signature.
    region: str = "us-east-1"
    #: ``path`` (``endpoint/bucket/key``) or ``virtual`` (``bucket.endpoint/key``).
    addressing: str = _checked("path", _one_of("path", "virtual"))
    access_key_id: str = ""
    #: The secret itself; prefer ``secret_access_key_file``.
    secret_access_key: str = _checked("", _anything, secret=True)
    #: A file holding the secret access key (read at start).
    secret_access_key_file: str = ""


@dataclass(frozen=True)
class CdnTenantConfig:
    """Where one tenant's media lives and how it is cached."""

    #: Name of an entry of ``[cdn.origins]``.
    origin: str = "default"
    #: Bucket holding the tenant's media (required).
    bucket: str = _checked("", _bucket)
    #: Prepended to every key, e.g. ``"site-a/"``.
    prefix: str = _checked("", _key_prefix)
    #: Cache-Control sent to browsers and downstream caches.
    cache_control: str = "public, max-age=86400"
    #: A cached object is served without asking the origin for this long,
    #: then revalidated (conditional GET) before it is served again.
    fresh_seconds: float = _checked(3600.0, _non_negative)


_DEFAULT_UPLOAD_TYPES = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "audio/mpeg",
    "audio/ogg",
)


@dataclass(frozen=True)
class CdnConfig:
    """The media CDN: ``/media/<tenant>/<key>`` from a local cache of S3 origins."""

    #: On-disk cache; empty means ``<node.data_dir>/media-cache``.
    cache_dir: str = ""
    #: Bytes of object data the disk cache holds before evicting (LRU).
    max_bytes: int = _checked(1024**3, _positive)
    #: Larger objects are streamed from the origin without being cached.
    max_object_bytes: int = _checked(256 * 1024**2, _positive)
    #: The in-memory tier in front of the disk (hot objects).
    memory_max_bytes: int = _checked(64 * 1024**2, _non_negative)
    #: Objects larger than this are never held in memory.
    memory_max_object_bytes: int = _checked(1024**2, _non_negative)
    #: Longest key (tenant prefix included), in UTF-8 bytes.
    max_key_bytes: int = _checked(1024, _positive)
    #: An origin 404 is remembered (and answered locally) for this long.
    negative_seconds: float = _checked(30.0, _non_negative)
    negative_max_entries: int = _checked(100_000, _non_negative)
    #: On an origin error, a stale copy at most this old past its freshness
    #: is served instead of 502/504.
    stale_if_error_seconds: float = _checked(86400.0, _non_negative)
    #: Seconds to wait for the origin's response headers, and between body chunks.
    origin_timeout_seconds: float = _checked(10.0, _positive)
    #: Persistent connections kept per origin host.
    origin_connections_per_host: int = _checked(16, _positive)
    #: Largest upload accepted by the tenant API.
    upload_max_bytes: int = _checked(10 * 1024**2, _positive)
    #: Media types an upload may declare (and whose content must match).
    upload_content_types: tuple[str, ...] = _checked(_DEFAULT_UPLOAD_TYPES, _media_types)
    #: The cache index (LRU order) is written to disk this often.
    index_snapshot_seconds: float = _checked(60.0, _positive)
    #: Named S3-compatible origins (``[cdn.origins.NAME]``).
    origins: dict[str, S3OriginConfig] = field(default_factory=dict)
    #: Tenants with media, by tenant id (``[cdn.tenants.TENANT_ID]``).
    tenants: dict[str, CdnTenantConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class LiveConfig:
    """Live threads: the WebSocket (``/live``) and SSE (``/live/events``) streams."""

    #: Events kept per channel for recovery (``since`` / ``Last-Event-ID``).
    history_events: int = _checked(200, _positive)
    #: Events older than this are dropped from a channel's history.
    history_seconds: float = _checked(300.0, _positive)
    #: Channels one connection may subscribe to at once.
    max_subscriptions: int = _checked(20, _positive)
    #: Open live connections (WebSocket and SSE) this node accepts.
    max_connections: int = _checked(100_000, _positive)
    #: Largest message a client may send (bigger ones close with 1009).
    max_message_bytes: int = _checked(4096, _positive)
    #: Client messages allowed per minute on one connection (then 4429).
    client_messages_per_minute: int = _checked(120, _positive)
    #: WebSocket frames (data, ping, pong) a client may send per second, in
    #: bursts of at most this many (then 4429): fragments and pings are
    #: counted here, not as messages.
    client_frames_per_second: int = _checked(200, _positive)
    #: Frames one client message may be split into (then 1009).
    max_fragments_per_message: int = _checked(64, _positive)
    #: Bytes queued for a connection beyond what its socket accepts; a
    #: consumer that falls further behind is disconnected (close code 4008).
    max_buffered_bytes: int = _checked(256 * 1024, _positive)
    #: Seconds a closing connection may take to read its last bytes.
    close_timeout_seconds: float = _checked(5.0, _positive)
    #: Keep-alive: a ping (SSE: a comment line) this often; a WebSocket
    #: client silent for two intervals is dropped. 0 turns it off.
    ping_seconds: float = _checked(30.0, _non_negative)
    #: Seconds a resolved (tenant, urlId) -> thread answer is reused, so a
    #: burst of subscribers to one thread costs one database read.
    resolve_cache_seconds: float = _checked(10.0, _non_negative)
    resolve_cache_entries: int = _checked(100_000, _non_negative)
    #: Lifetime of a viewer token (it names the viewer whose blocks apply).
    viewer_token_max_age_seconds: int = _checked(24 * 3600, _positive)
    #: A published event reaches its local subscribers after the writer's
    #: answer, on later reactor turns, spending at most this long sending
    #: per turn so other requests keep flowing. 0 sends it all inside the
    #: write (the writer's answer waits for the whole fan-out).
    fanout_slice_ms: float = _checked(2.0, _non_negative)


@dataclass(frozen=True)
class GeoConfig:
    """The GeoIP index: client address -> location, from a MaxMind DB."""

    #: A MaxMind DB of the GeoIP2/GeoLite2 City shape. Empty: no GeoIP, every
    #: client's location is unknown (DNS answers the default region). When
    #: set, a missing or corrupt file stops the node at start.
    database: str = ""
    #: The index is rebuilt from the file this often (default weekly), and
    #: also on SIGHUP, on ``fastedge-admin geo rebuild`` and when the file
    #: changes.
    rebuild_seconds: float = _checked(7 * 24 * 3600.0, _positive)
    #: How often the file (and the admin command's request file) is checked
    #: for a change.
    watch_seconds: float = _checked(5.0, _positive)
    #: The file ``fastedge-admin geo rebuild`` creates to ask for a rebuild;
    #: empty means ``<node.data_dir>/geo-rebuild.request``.
    request_file: str = ""


@dataclass(frozen=True)
class ZoneConfig:
    """One zone this node is authoritative for (``[[dns.zones]]``)."""

    #: The zone's apex, e.g. ``eu.edge.example.test``.
    name: str = _checked("fastedge.test", _domain)
    #: The deployment whose live nodes the zone's geo-routed names answer.
    deployment: str = _checked("global", dns_label)
    #: Names (relative to the apex; ``@`` is the apex itself) answered with
    #: the nearest live nodes of the deployment.
    geo_names: tuple[str, ...] = _checked(("edge",), _relative_names)
    #: The zone's NS names; empty means ``ns1.<name>``. NS names inside the
    #: zone answer A/AAAA like geo-routed names: every node serves DNS.
    nameservers: tuple[str, ...] = _checked((), _domains)
    #: The SOA's mailbox; empty means ``hostmaster.<name>``.
    hostmaster: str = _checked("", _optional_domain)
    #: The SOA serial (answers are dynamic; bump it when this table changes).
    serial: int = _checked(1, _between(0, 2**32 - 1))


def _zones(values: tuple[ZoneConfig, ...]) -> str | None:
    seen = set()
    for i, zone in enumerate(values):
        if zone.name in seen:
            return "[{}] zone {!r} is listed twice".format(i, zone.name)
        seen.add(zone.name)
    return None


@dataclass(frozen=True)
class DnsConfig:
    """The authoritative GeoDNS server (UDP and TCP)."""

    interface: str = _checked("127.0.0.1", lambda v: _ip_addresses((v,)))
    port: int = _checked(5353, _between(0, 65535))
    #: TTL of every answer, and the SOA's negative-caching TTL.
    ttl: int = _checked(30, _between(0, 2**31 - 1))
    #: Negative-caching TTL of a geo-routed name that has no address to
    #: answer (NODATA): short, so a deployment's node coming back is seen soon.
    negative_ttl: int = _checked(5, _between(0, 2**31 - 1))
    #: TTL of the answer while a deployment has no live node: its most
    #: recently live nodes (docs/geodns.md, "A deployment with no live node").
    stale_ttl: int = _checked(5, _between(0, 2**31 - 1))
    #: How many nodes a geo-routed answer holds (the k nearest live ones).
    answers: int = _checked(2, _between(1, 16))
    #: Region (``node.region`` of the nodes) answered when a client's
    #: location is unknown; empty or none live there: any live nodes.
    default_region: str = ""
    #: The answer policy: ``nearest-live`` (built in) or the name of an
    #: ``IAnswerPolicy`` Twisted plugin.
    policy: str = "nearest-live"
    #: Size of the location cells answers are precomputed for (degrees).
    cell_degrees: float = _checked(1.0, _between(0.01, 10.0))
    #: Largest UDP response sent (the client's EDNS size is honoured below
    #: it; 1232 avoids IP fragmentation, DNS flag day 2020).
    max_udp_payload: int = _checked(1232, _between(512, 65535))
    #: An idle TCP client is disconnected after this long.
    tcp_idle_seconds: float = _checked(10.0, _positive)
    #: UDP responses per second allowed to one source network (/24, /56);
    #: past it responses are dropped, every second one replaced by an empty
    #: truncated answer so real clients retry over TCP. 0 turns it off.
    source_rate_limit: int = _checked(2000, _non_negative)
    #: Client locations (per address or ECS subnet) remembered, and as many
    #: fast-path answers (per query and source).
    location_cache_entries: int = _checked(100_000, _positive)
    zones: tuple[ZoneConfig, ...] = _checked((ZoneConfig(),), _zones)


@dataclass(frozen=True)
class LogConfig:
    """Logs the node writes besides twistd's own (``docs/access-log.md``)."""

    #: The access log: one line per HTTP request and per WebSocket/SSE
    #: session: ``combined`` (Apache/nginx combined format plus key=value
    #: fields), ``json`` (JSON lines) or ``off``.
    access: str = _checked("combined", _one_of("combined", "json", "off"))
    #: Its file; empty = ``<node.data_dir>/access.log``.
    access_file: str = ""
    #: Lines are written by a thread at least this often (seconds), and at
    #: once when ``access_flush_lines`` wait.
    access_flush_seconds: float = _checked(1.0, _between(0.01, 60.0))
    access_flush_lines: int = _checked(1024, _between(1, 1_000_000))
    #: Lines waiting to be written, at most; past it lines are dropped and
    #: counted (``fastedge_http_access_log_dropped_total``).
    access_max_pending_lines: int = _checked(100_000, _between(1, 10_000_000))


@dataclass(frozen=True)
class WebhooksConfig:
    """Outbound webhooks (docs/webhooks.md)."""

    #: Run the delivery worker on this node (every node may: a lease in the
    #: store keeps two from sending one delivery).
    enabled: bool = True
    #: Outbound HTTP proxy for every webhook request, ``http://host:port``
    #: (https endpoints through a CONNECT tunnel); empty: direct.
    proxy: str = _checked("", _proxy_url)
    #: Allow endpoints on loopback, private, link-local, multicast and
    #: unspecified addresses (tests; never on a public deployment).
    allow_private_targets: bool = False
    #: How often the outbox is checked for due deliveries (seconds).
    poll_seconds: float = _checked(1.0, _positive)
    #: Requests open to receivers at once, at most (per node).
    max_in_flight: int = _checked(16, _between(1, 1000))
    #: One attempt's deadline: connect, send, answer (seconds).
    timeout_seconds: float = _checked(10.0, _positive)
    connect_timeout_seconds: float = _checked(5.0, _positive)
    #: A claimed delivery's lease; longer than ``timeout_seconds``.
    lease_seconds: float = _checked(60.0, _positive)
    #: Retries (exponential backoff with jitter) stop this long after the
    #: change; the delivery is then failed (listed, replayable).
    retry_window_seconds: float = _checked(86400.0, _positive)
    #: An endpoint is turned off after this many failed attempts in a row
    #: (a 410 Gone turns it off at once).
    disable_after_failures: int = _checked(50, _between(1, 1_000_000))
    #: Bytes of a receiver's answer read at most (the rest is dropped).
    max_response_bytes: int = _checked(64 * 1024, _between(1, 16 * 1024 * 1024))
    #: Endpoints one tenant may register.
    max_endpoints_per_tenant: int = _checked(20, _between(1, 1000))
    #: How often the queue gauges are read from the store (seconds).
    queue_seconds: float = _checked(15.0, _positive)


@dataclass(frozen=True)
class SpamConfig:
    """Spam checks on comments posted through the public API and the embed
    page (docs/spam.md)."""

    #: Off: every comment is judged ham (the tenant's moderation setting
    #: still applies).
    enabled: bool = True
    #: The checks, in order; the first answer other than ham wins.
    #: ``heuristic`` is built in; any other name is an ``ISpamCheck``
    #: Twisted plugin's (an unknown name stops the node at start).
    checks: tuple[str, ...] = _checked(("heuristic",), _check_names)
    #: A check that has not answered after this long counts as ham (logged
    #: and counted as ``timeout``).
    timeout_seconds: float = _checked(2.0, _between(0.001, 60.0))
    #: How far back an author's and a thread's recent comments are read
    #: for repeated bodies and posting rate.
    history_seconds: float = _checked(24 * 3600.0, _between(60.0, 30 * 24 * 3600.0))
    #: At most this many recent comments of the author, and of the thread,
    #: are read per post.
    history_comments: int = _checked(50, _between(1, 1000))


@dataclass(frozen=True)
class EdgeConfig:
    """The whole configuration of one node."""

    node: NodeConfig = field(default_factory=NodeConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    geo: GeoConfig = field(default_factory=GeoConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    cdn: CdnConfig = field(default_factory=CdnConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    log: LogConfig = field(default_factory=LogConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    spam: SpamConfig = field(default_factory=SpamConfig)
