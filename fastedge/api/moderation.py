# -*- test-case-name: tests.unit.api.test_moderation -*-
"""Moderation through the tenant API, ``/api/v1/manage/moderation/...``.

The queue, bulk actions, bans and the audit log (docs/moderation.md). Reads
here default to NEAREST: a moderator far from the primary reads the replica
beside their node, and sends back the ``X-Consistency-Token`` of their last
action so the page after it still shows it (docs/consistency.md). Every
action is one store transaction with its audit entry, and is then told to
live threads and page caches, like every other comment write.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..config import ApiConfig
from ..http.errors import ApiError, bad_request, not_found
from ..http.router import Call, ICors, Reply, Route
from ..inputs import InputError, parse_ascii_int
from ..store.interfaces import IStore
from ..store.model import (
    MAX_BULK_IDS,
    AuditEntry,
    Ban,
    BanKind,
    Moderated,
    ModerationAction,
    ModerationQueue,
    QueueFilter,
    QueueSort,
    ReadPreference,
    Tenant,
    Written,
)
from ..store.settings import from_stored
from . import common
from .cache import PageCache
from .metrics import ApiMetrics

if TYPE_CHECKING:
    from ..live.publish import LivePublisher
    from .manage import ManageApi

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST
#: Who the audit log names when the caller does not say.
DEFAULT_ACTOR = "tenant-api"
_MAX_REASON_CHARS = 500
_MAX_ACTOR_CHARS = 128
_MAX_SEARCH_CHARS = 200
_LATEST_MS = 2**53


def auto_hide_threshold(cfg: ApiConfig, tenant: Tenant) -> int | None:
    """Flags that hide a comment of ``tenant`` for review (``None``: never).

    The one place that decides it: the tenant's ``flagsToHide`` setting
    (docs/settings.md: ``0`` means never), or ``api.auto_hide_flags`` when
    the tenant leaves it ``null`` (the default).
    """
    flags = from_stored(tenant.settings).flags_to_hide
    if flags is None:
        return cfg.auto_hide_flags
    return flags or None


def _text(value: str, name: str, limit: int) -> str:
    if len(value) > limit:
        raise bad_request("{} is longer than {} characters".format(name, limit), code="bad_" + name, field=name)
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in value):
        raise bad_request("{} must not contain control characters".format(name), code="bad_" + name, field=name)
    return value


def _optional_ms(call: Call, name: str) -> int | None:
    raw = call.query.get(name)
    if raw is None:
        return None
    try:
        return parse_ascii_int(raw, 0, _LATEST_MS)
    except InputError:
        raise bad_request("{} must be a time in milliseconds since the epoch".format(name), code="bad_query") from None


def ban_view(ban: Ban, now_ms: int) -> dict[str, Any]:
    """A ban as the tenant API shows it (an address only by its hash)."""
    return {
        "id": ban.id,
        "authorId": ban.value if ban.kind is BanKind.AUTHOR else None,
        "addressHash": ban.value if ban.kind is BanKind.ADDRESS else None,
        "reason": ban.reason,
        "moderator": ban.actor,
        "createdAt": ban.created_ms,
        "expiresAt": ban.expires_ms,
        "liftedAt": ban.lifted_ms,
        "active": ban.lifted_ms is None and (ban.expires_ms is None or ban.expires_ms > now_ms),
    }


def audit_view(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "moderator": entry.actor,
        "action": entry.action,
        "commentIds": list(entry.comment_ids),
        "banIds": list(entry.ban_ids),
        "reason": entry.reason,
        "at": entry.created_ms,
    }


class ModerationApi:
    """Handlers of ``/api/v1/manage/moderation/...``; authentication,
    credits and tokens are the tenant API's (:class:`ManageApi`)."""

    _log = Logger()

    def __init__(
        self,
        cfg: ApiConfig,
        *,
        store: IStore,
        clock: IReactorTime,
        manage: ManageApi,
        cache: PageCache,
        metrics: ApiMetrics,
        live: LivePublisher | None = None,
        address_hash: common.AddressHasher,
    ) -> None:
        self._cfg = cfg
        self._address_hash = address_hash
        self._store = store
        self._clock = clock
        self._manage = manage
        self._cache = cache
        self._metrics = metrics
        self._live = live

    def routes(self) -> list[Route]:
        base = "/api/v1/manage/moderation"
        m = self._manage
        return [
            m.tenant_read_route(b"GET", base + "/queue", "moderation_queue", self.queue, default=NEAREST),
            m.tenant_route(b"POST", base + "/actions", "moderate", self.act),
            m.tenant_read_route(b"GET", base + "/bans", "list_bans", self.list_bans, default=NEAREST),
            m.tenant_route(b"POST", base + "/bans", "ban", self.ban),
            m.tenant_route(b"DELETE", base + "/bans/{ban_id}", "lift_ban", self.lift_ban),
            m.tenant_read_route(b"GET", base + "/log", "moderation_log", self.log, default=NEAREST),
        ]

    def public_routes(self, authenticate: Any, cors: ICors | None) -> list[Route]:
        """The queue and the bulk actions for SSO moderators, on the public
        side, ``/api/v1/{tenant}/moderation/...``: the same handlers, checks,
        credits and consistency tokens as the tenant API's routes.

        :param authenticate: ``authenticate(call)`` answering the tenant of
            an SSO moderator and setting ``call.actor``
            (:meth:`fastedge.api.public.PublicApi.moderator`).
        """
        base = "/api/v1/{tenant}/moderation"
        m = self._manage
        return [
            m.tenant_read_route(
                b"GET",
                base + "/queue",
                "moderation_queue",
                self.queue,
                default=NEAREST,
                authenticate=authenticate,
                cors=cors,
            ),
            m.tenant_route(b"POST", base + "/actions", "moderate", self.act, authenticate=authenticate, cors=cors),
        ]

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _who(self, call: Call, body: dict[str, Any]) -> tuple[str, str]:
        """The acting moderator and the reason: a signed-in moderator is
        who they signed in as (never what the body says); a tenant API
        caller names one, or is ``tenant-api``."""
        if call.actor is not None:
            if "moderator" in body:
                raise bad_request("moderator is the signed-in user; drop it", code="bad_field", field="moderator")
            actor = call.actor
        else:
            actor = _text(body.get("moderator") or DEFAULT_ACTOR, "moderator", _MAX_ACTOR_CHARS)
        reason = _text(body.get("reason") or "", "reason", _MAX_REASON_CHARS)
        return actor, reason

    def _expiry(self, body: dict[str, Any], now: int) -> int | None:
        expires = body.get("expiresAt")
        if expires is not None and not now < expires <= _LATEST_MS:
            raise ApiError(
                422, "bad_expiry", "expiresAt must be a time in the future (ms since the epoch)", field="expiresAt"
            )
        return expires

    def _announce(self, tenant_id: str, done: Moderated) -> None:
        """Tell page caches and live threads what a moderation write changed."""
        for thread_id in {after.thread_id for _, after in done.changed}:
            self._cache.invalidate((tenant_id, "thread", thread_id))
        if self._live is not None:
            for before, after in done.changed:
                self._live.changed(before, after)

    # The queue

    @inlineCallbacks
    def queue(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        try:
            queue = ModerationQueue(call.query.get("queue", "pending"))
        except ValueError:
            raise bad_request("queue must be pending, flagged, spam or removed", code="bad_queue") from None
        try:
            sort = QueueSort(call.query.get("sort", "oldest"))
        except ValueError:
            raise bad_request("sort must be oldest or flags", code="bad_sort") from None
        thread_id = call.query.get("threadId")
        author_id = call.query.get("authorId")
        text = call.query.get("q") or None
        if text is not None:
            text = _text(text, "q", _MAX_SEARCH_CHARS)
        filters = QueueFilter(
            # As everywhere on the tenant API: a malformed id is a 404, an
            # unknown (or another tenant's) one an empty page.
            thread_id=common.record_id(thread_id, "thread") if thread_id is not None else None,
            author_id=common.record_id(author_id, "author") if author_id is not None else None,
            since_ms=_optional_ms(call, "since"),
            until_ms=_optional_ms(call, "until"),
            text=text,
        )
        page = yield self._store.moderation_queue(
            tenant.id,
            queue=queue,
            sort=sort,
            limit=common.page_limit(call, self._cfg),
            cursor=call.query.get("cursor") or None,
            filters=filters,
            read_preference=rp,
            token=token,
        )
        return Reply(200, {"comments": [common.manage_comment(c) for c in page.items], "nextCursor": page.next_cursor})

    # Bulk actions

    @inlineCallbacks
    def act(self, call: Call, tenant: Tenant) -> Any:
        body = call.json(
            required={"action": str, "commentIds": list},
            optional={"reason": str, "moderator": str, "expiresAt": int, "removeAll": bool},
        )
        try:
            action = ModerationAction(body["action"])
        except ValueError:
            raise bad_request(
                "action must be approve, remove, restore, spam or ban", code="bad_action", field="action"
            ) from None
        ids = body["commentIds"]
        if not ids or len(ids) > MAX_BULK_IDS:
            raise ApiError(
                422,
                "bad_comment_ids",
                "commentIds must name 1 to {} comments".format(MAX_BULK_IDS),
                field="commentIds",
            )
        if not all(isinstance(i, str) for i in ids):
            raise bad_request("commentIds must be strings", code="wrong_type", field="commentIds")
        if len(set(ids)) != len(ids):
            raise ApiError(422, "bad_comment_ids", "commentIds must not repeat an id", field="commentIds")
        for comment_id in ids:
            # Malformed, unknown or another tenant's: the whole call is refused.
            common.record_id(comment_id, "comment")
        actor, reason = self._who(call, body)
        now = self._now_ms()
        if action is not ModerationAction.BAN and (body.get("expiresAt") is not None or body.get("removeAll")):
            raise bad_request("expiresAt and removeAll go with action ban", code="bad_field", field="action")
        expires = self._expiry(body, now)
        written: Written[Moderated] = yield self._store.moderate(
            tenant.id,
            action,
            ids,
            actor=actor,
            reason=reason,
            created_ms=now,
            ban_expires_ms=expires,
            remove_all=bool(body.get("removeAll")),
            read_preference=PRIMARY,
        )
        done = written.value
        self._metrics.moderation_actions.labels(action.value).inc()
        self._log.info(
            "moderation {action} of {count} comments by {actor} (tenant {tenant}): {changed} changed",
            action=action.value,
            count=len(ids),
            actor=actor,
            tenant=tenant.id,
            changed=len(done.changed),
        )
        self._announce(tenant.id, done)
        return (
            200,
            {
                "action": action.value,
                "changed": [common.manage_comment(after) for _, after in done.changed],
                "bans": [ban_view(b, now) for b in done.bans],
                "auditId": done.entry.id,
            },
            written,
        )

    # Bans

    @inlineCallbacks
    def ban(self, call: Call, tenant: Tenant) -> Any:
        body = call.json(
            optional={
                "authorId": str,
                "ip": str,
                "reason": str,
                "moderator": str,
                "expiresAt": int,
                "removeAll": bool,
            }
        )
        author_id, ip = body.get("authorId"), body.get("ip")
        if (author_id is None) == (ip is None):
            raise bad_request("name exactly one of authorId or ip", code="bad_ban_target")
        if ip is not None:
            try:
                # No scope id ("fe80::1%eth0"): no client address has one,
                # and the spec's ipv6 format refuses it.
                if "%" in ip:
                    raise ValueError(ip)
                address = str(ipaddress.ip_address(ip))
            except ValueError:
                raise bad_request("ip is not an IP address", code="bad_ip", field="ip") from None
            if body.get("removeAll"):
                raise bad_request("removeAll goes with authorId", code="bad_field", field="removeAll")
            kind, value = BanKind.ADDRESS, self._address_hash(tenant.id, address)
        else:
            assert author_id is not None
            kind, value = BanKind.AUTHOR, common.record_id(author_id, "author")
        actor, reason = self._who(call, body)
        now = self._now_ms()
        expires = self._expiry(body, now)
        written: Written[Moderated] = yield self._store.add_ban(
            tenant.id,
            kind,
            value,
            actor=actor,
            reason=reason,
            created_ms=now,
            expires_ms=expires,
            remove_all=bool(body.get("removeAll")),
            read_preference=PRIMARY,
        )
        done = written.value
        self._metrics.moderation_actions.labels("ban").inc()
        self._log.info(
            "moderation ban ({kind}) by {actor} (tenant {tenant}): {changed} comments removed",
            kind=kind.value,
            actor=actor,
            tenant=tenant.id,
            changed=len(done.changed),
        )
        self._announce(tenant.id, done)
        return 201, {"ban": ban_view(done.bans[0], now), "removed": len(done.changed)}, written

    @inlineCallbacks
    def lift_ban(self, call: Call, tenant: Tenant) -> Any:
        ban_id = call.params["ban_id"]
        try:
            common.record_id(ban_id, "ban")
        except ApiError:
            raise not_found("ban") from None
        actor = _text(call.query.get("moderator") or DEFAULT_ACTOR, "moderator", _MAX_ACTOR_CHARS)
        reason = _text(call.query.get("reason") or "", "reason", _MAX_REASON_CHARS)
        now = self._now_ms()
        written: Written[Ban] = yield self._store.lift_ban(
            tenant.id, ban_id, actor=actor, reason=reason, lifted_ms=now, read_preference=PRIMARY
        )
        self._metrics.moderation_actions.labels("lift_ban").inc()
        return 200, {"ban": ban_view(written.value, now)}, written

    @inlineCallbacks
    def list_bans(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        active = call.query.get("active", "true")
        if active not in ("true", "false"):
            raise bad_request("active must be true or false", code="bad_query")
        now = self._now_ms()
        page = yield self._store.list_bans(
            tenant.id,
            active_at_ms=now if active == "true" else None,
            limit=common.page_limit(call, self._cfg),
            cursor=call.query.get("cursor") or None,
            read_preference=rp,
            token=token,
        )
        return Reply(200, {"bans": [ban_view(b, now) for b in page.items], "nextCursor": page.next_cursor})

    # The audit log

    @inlineCallbacks
    def log(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        page = yield self._store.audit_log(
            tenant.id,
            limit=common.page_limit(call, self._cfg),
            cursor=call.query.get("cursor") or None,
            read_preference=rp,
            token=token,
        )
        return Reply(200, {"entries": [audit_view(e) for e in page.items], "nextCursor": page.next_cursor})
