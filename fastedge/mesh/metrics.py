"""Metrics of the mesh (``fastedge_mesh_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .memberlist import MemberListMetrics
from .partialview import ViewMetrics

_RTT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class MeshMetrics:
    """Metric families of one node's mesh.

    Peer ids are labels: a deployment has tens of nodes, and ids come only
    from certificates our CA signed, so the label set stays small.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        #: The partial view's (``fastedge.mesh.partialview``).
        self.view = ViewMetrics(registry)
        self.peers = Gauge(
            "fastedge_mesh_peers",
            "Other nodes in this node's map, by state (alive, suspect, dead, leaving).",
            ["state"],
            registry=registry,
        )
        self.rtt = Histogram(
            "fastedge_mesh_heartbeat_rtt_seconds",
            "Heartbeat round-trip time to each peer (this node's own clock only).",
            ["peer"],
            buckets=_RTT_BUCKETS,
            registry=registry,
        )
        self.links = Gauge(
            "fastedge_mesh_links",
            "This node's outgoing links to peers, by state (up, connecting).",
            ["state"],
            registry=registry,
        )
        self.state_changes = Counter(
            "fastedge_mesh_state_changes_total",
            "Changes of another node's state in this node's map, by new state.",
            ["state"],
            registry=registry,
        )
        self.refused = Counter(
            "fastedge_mesh_refused_total",
            "Mesh connections or logins refused, by reason (tls, name_mismatch, "
            "self, leaving, stale, duplicate, bad_login).",
            ["reason"],
            registry=registry,
        )
        self.connect_failures = Counter(
            "fastedge_mesh_connect_failures_total",
            "Connection attempts to peers that failed before connecting, by reason (refused, timeout, dns, other);"
            " the log has the first of a run and summaries.",
            ["reason"],
            registry=registry,
        )
        self.disconnects = Counter(
            "fastedge_mesh_peer_disconnects_total",
            "Peers disconnected for misbehaving, by reason (insecure_type, bad_message, "
            "oversized, call_rate, protocol, login_timeout, unanswered).",
            ["reason"],
            registry=registry,
        )
        self.calls = Counter(
            "fastedge_mesh_calls_received_total",
            "Calls peers made to this node, by method.",
            ["method"],
            registry=registry,
        )
        self.call_failures = Counter(
            "fastedge_mesh_call_failures_total",
            "Calls to peers whose answer nobody waits for that failed, by call.",
            ["call"],
            registry=registry,
        )
        self.probes = Counter(
            "fastedge_mesh_indirect_probes_total",
            "Indirect probes of a suspect node through other peers, by outcome "
            "(vouched: another peer hears it; silent: it does not; failed; contradicted: a peer that "
            "said silent while another vouched, one per such peer).",
            ["outcome"],
            registry=registry,
        )
        self.certificate_expiry = Gauge(
            "fastedge_mesh_certificate_expiry_timestamp_seconds",
            "When this node's mesh certificate expires (Unix time).",
            registry=registry,
        )
        self.handler_refused = Counter(
            "fastedge_mesh_handler_refused_total",
            "Calls to registered mesh handlers refused by the mesh, by handler and reason "
            "(deployment: a node of another deployment; rate: over the handler's rate; "
            "bad_message: malformed, the peer is disconnected).",
            ["handler", "reason"],
            registry=registry,
        )
        #: ``fastedge_mesh_memberlist_*`` (``fastedge.mesh.memberlist``).
        self.memberlist = MemberListMetrics(registry)
