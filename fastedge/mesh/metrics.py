"""Metrics of the mesh (``fastedge_mesh_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
_RELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class MeshMetrics:
    """Metric families of one node's mesh.

    Peer ids are labels: a deployment has tens of nodes, and ids come only
    from certificates our CA signed, so the label set stays small.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
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
        self.relay_events = Counter(
            "fastedge_mesh_relay_events_total",
            "Live events over the mesh, by direction (sent: pushed to a follower; "
            "received: from an owner; forwarded: a local write sent to its owner; "
            "sequenced: a write from another node stamped here; dropped: a write the full "
            "forward queue gave up on).",
            ["direction"],
            registry=registry,
        )
        self.relay_resyncs = Counter(
            "fastedge_mesh_relay_resyncs_total",
            "Channels re-synchronised with their owner after a (re)connect, by " "result (replayed, current, reset).",
            ["result"],
            registry=registry,
        )
        self.relay_refused = Counter(
            "fastedge_mesh_relay_refused_total",
            "Relay messages refused, by reason (deployment, not_upstream, bad_event).",
            ["reason"],
            registry=registry,
        )
        self.relay_channels = Gauge(
            "fastedge_mesh_relay_channels",
            "Channels by role: followed (this node follows another's numbering), "
            "owned_followers (channels owned here with followers elsewhere).",
            ["role"],
            registry=registry,
        )
        self.relay_takeovers = Counter(
            "fastedge_mesh_relay_takeovers_total",
            "Channels this node moved to a new epoch of its own at once (taken over "
            "from another sequencer, or told their numberings diverged): their "
            "subscribers and followers reload.",
            registry=registry,
        )
        self.relay_handovers = Counter(
            "fastedge_mesh_relay_handovers_total",
            "Channels sequenced here that moved to an owner which had not followed "
            "them here (told to start a new epoch: its subscribers reload).",
            registry=registry,
        )
        self.relay_queue = Gauge(
            "fastedge_mesh_relay_forward_queue",
            "Local writes waiting for their channel's owner to be reachable.",
            registry=registry,
        )
        self.relay_seconds = Histogram(
            "fastedge_mesh_relay_prime_seconds",
            "Time to learn a channel's position from its owner before the first " "local subscriber is answered.",
            buckets=_RELAY_BUCKETS,
            registry=registry,
        )
        self.media_purges = Counter(
            "fastedge_mesh_media_purges_total",
            "CDN purges between nodes, by outcome (sent, received, queued, dropped, failed).",
            ["outcome"],
            registry=registry,
        )
        self.media_purge_queue = Gauge(
            "fastedge_mesh_media_purge_queue",
            "Purges waiting for a peer's link to come up.",
            registry=registry,
        )
        self.media_locates = Counter(
            "fastedge_mesh_media_locates_total",
            "Peer lookups of a CDN miss, by result (found, none, no_peers).",
            ["result"],
            registry=registry,
        )
        self.media_served = Counter(
            "fastedge_mesh_media_served_bytes_total",
            "Object bytes this node sent to peers (media_read answers).",
            registry=registry,
        )
        self.media_refused = Counter(
            "fastedge_mesh_media_refused_total",
            "Media calls from peers refused, by reason (deployment, bad_message, no_cdn).",
            ["reason"],
            registry=registry,
        )
