"""Metrics of the comment API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class ApiMetrics:
    """Counters of what the API did (request latency is the transport's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.comments_posted = Counter(
            "fastedge_api_comments_posted_total",
            "Comments posted through this node, by resulting status.",
            ["status"],
            registry=registry,
        )
        self.sessions_created = Counter(
            "fastedge_api_sessions_created_total", "Anonymous sessions created.", registry=registry
        )
        self.session_headers = Counter(
            "fastedge_api_session_headers_total",
            "Sessions presented in the X-FastEdge-Session header (a browser that keeps no third-party cookie).",
            registry=registry,
        )
        self.bad_sessions = Counter(
            "fastedge_api_bad_session_cookies_total",
            "Session cookies refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "fastedge_api_rate_limited_total", "Writes refused by a rate limit.", registry=registry
        )
        self.flags = Counter("fastedge_api_flags_total", "Comments flagged by readers.", registry=registry)
        self.stale_checks = Counter(
            "fastedge_api_stale_checks_total",
            "Writes whose checks, read from the replica, no longer held on the primary (nothing was applied;"
            " checked again on the primary and written again).",
            registry=registry,
        )
        self.auto_hidden = Counter(
            "fastedge_api_auto_hidden_total", "Comments hidden for review by readers' flags.", registry=registry
        )
        self.moderation_actions = Counter(
            "fastedge_api_moderation_actions_total",
            "Moderator actions through the tenant API, by action.",
            ["action"],
            registry=registry,
        )
        self.refused = Counter(
            "fastedge_api_writes_refused_total",
            "Public writes refused by moderation, by reason (banned, like_limit).",
            ["reason"],
            registry=registry,
        )
        self.viewer_cache = Counter(
            "fastedge_api_viewer_cache_lookups_total",
            "Readers' own likes and blocks on a page: hit (kept), miss, stale (read again: "
            "older than their token, or new comments on the page).",
            ["result"],
            registry=registry,
        )
        self.page_cache = Counter(
            "fastedge_api_page_cache_lookups_total",
            "Public thread page cache lookups, by result (hit or miss).",
            ["result"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "fastedge_api_auth_failures_total",
            "Tenant API calls refused for a missing or bad API key.",
            ["reason"],
            registry=registry,
        )
        self.cors = Counter(
            "fastedge_api_cors_origins_total",
            "Cross-origin public API requests, by whether the tenant allows the origin.",
            ["result"],
            registry=registry,
        )
        self.sso = Counter(
            "fastedge_api_sso_checks_total",
            "SSO payloads checked, by result (ok or the error code).",
            ["result"],
            registry=registry,
        )
        self.access_refused = Counter(
            "fastedge_api_access_refused_total",
            "Public API calls refused by a thread's access rules, by reason.",
            ["reason"],
            registry=registry,
        )
        self.credits = Counter(
            "fastedge_api_credits_charged_total",
            "API credits charged, by read preference (or write).",
            ["kind"],
            registry=registry,
        )
