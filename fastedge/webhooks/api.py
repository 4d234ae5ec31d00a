# -*- test-case-name: tests.unit.webhooks.test_api -*-
"""Webhooks in the tenant API: ``/api/v1/manage/webhooks`` (docs/openapi.yaml,
docs/webhooks.md).

Endpoints are created, listed, read, changed and deleted with the tenant's
API key, like everything under ``/api/v1/manage``. The secret is
write-only: set on create, replaced (rotated) by a PATCH, never returned.
An endpoint the node turned off shows why (``disabledReason``); its failed
deliveries are listed and can be sent again once it is on.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime

from ..api import common
from ..config import ApiConfig, WebhooksConfig
from ..http.errors import ApiError, bad_request, not_found
from ..http.router import Call, Reply, Route
from ..store.errors import InvalidReference
from ..store.model import DeliveryState, ReadPreference, Tenant, WebhookDelivery, WebhookEndpoint, WebhookEvent
from .targets import BadTarget, check_url

PRIMARY = ReadPreference.PRIMARY
BASE = "/api/v1/manage/webhooks"
#: A secret: 32 to 256 printable ASCII characters without spaces (as SSO secrets).
SECRET_PATTERN = r"^[\x21-\x7E]{32,256}$"
SECRET_RE = re.compile(SECRET_PATTERN)
#: Event ids in a path (``<id>`` or ``<id>.<id>``); docs/openapi.yaml says the same.
EVENT_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
#: Event ids (``<id>`` or ``<id>.<id>``).
_EVENT_ID_RE = re.compile(EVENT_ID_PATTERN)
MAX_DESCRIPTION_CHARS = 200
_FIELDS = {"url": str, "secret": str, "events": list, "active": bool, "description": str}


def endpoint_view(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint as its tenant sees it (never the secret)."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": [e.value for e in endpoint.events],
        "active": endpoint.active,
        "description": endpoint.description,
        "createdAt": endpoint.created_ms,
        "updatedAt": endpoint.updated_ms,
        "secretSetAt": endpoint.secret_set_ms,
        "consecutiveFailures": endpoint.consecutive_failures,
        "disabledReason": endpoint.disabled_reason,
        "disabledAt": endpoint.disabled_ms,
    }


def delivery_view(delivery: WebhookDelivery) -> dict[str, Any]:
    """A pending or failed delivery as its tenant sees it."""
    return {
        "eventId": delivery.event_id,
        "type": delivery.event_type.value,
        "createdAt": delivery.created_ms,
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "nextAttemptAt": delivery.next_attempt_ms if delivery.state is DeliveryState.PENDING else None,
        "lastAttemptAt": delivery.last_attempt_ms,
        "lastStatus": delivery.last_status,
        "lastError": delivery.last_error,
    }


def _invalid(field: str, code: str, message: str) -> ApiError:
    return ApiError(422, code, "{}: {}".format(field, message), field=field)


class WebhooksApi:
    """Handlers of ``/api/v1/manage/webhooks``; :meth:`routes` is given to
    ``build_api``'s ``extra_manage_routes`` so they authenticate and are
    charged like the rest of the tenant API."""

    def __init__(self, cfg: WebhooksConfig, api: ApiConfig, *, store: Any, clock: IReactorTime) -> None:
        self._cfg = cfg
        self._api = api
        self._store = store
        self._clock = clock

    def routes(self, manage: Any) -> list[Route]:
        """The routes, wrapped by the tenant API (a ``ManageApi``)."""
        one = BASE + "/{webhook_id}"
        return [
            manage.tenant_read_route(b"GET", BASE, "list_webhooks", self.list, default=PRIMARY),
            manage.tenant_route(b"POST", BASE, "create_webhook", self.create),
            manage.tenant_read_route(b"GET", one, "get_webhook", self.get, default=PRIMARY),
            manage.tenant_route(b"PATCH", one, "update_webhook", self.update),
            manage.tenant_route(b"DELETE", one, "delete_webhook", self.delete),
            manage.tenant_read_route(
                b"GET", one + "/deliveries", "list_webhook_deliveries", self.deliveries, default=PRIMARY
            ),
            manage.tenant_route(b"POST", one + "/deliveries/{event_id}/replay", "replay_webhook_delivery", self.replay),
        ]

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _fields(self, body: dict[str, Any]) -> dict[str, Any]:
        """The endpoint fields of a create or update body, checked."""
        out: dict[str, Any] = {}
        if "url" in body:
            try:
                out["url"] = check_url(body["url"])
            except BadTarget as e:
                raise _invalid("url", "invalid_url", str(e)) from None
        if "secret" in body:
            if not SECRET_RE.fullmatch(body["secret"]):
                raise _invalid("secret", "invalid_secret", "must be 32 to 256 printable ASCII characters, no spaces")
            out["secret"] = body["secret"]
        if "events" in body:
            events = []
            for value in body["events"]:
                try:
                    events.append(WebhookEvent(value))
                except (ValueError, TypeError):
                    raise _invalid(
                        "events",
                        "invalid_events",
                        "{} is not one of: {}".format(repr(value)[:60], ", ".join(e.value for e in WebhookEvent)),
                    ) from None
            if not events:
                raise _invalid("events", "invalid_events", "name at least one event")
            out["events"] = events
        if "active" in body:
            out["active"] = body["active"]
        if "description" in body:
            if len(body["description"]) > MAX_DESCRIPTION_CHARS:
                raise _invalid(
                    "description", "invalid_description", "at most {} characters".format(MAX_DESCRIPTION_CHARS)
                )
            out["description"] = body["description"]
        return out

    @inlineCallbacks
    def list(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        endpoints = yield self._store.list_webhooks(tenant.id, read_preference=rp, token=token)
        return Reply(200, {"webhooks": [endpoint_view(e) for e in endpoints]})

    @inlineCallbacks
    def create(self, call: Call, tenant: Tenant) -> Any:
        body = call.json(
            required={"url": str, "secret": str, "events": list}, optional={"active": bool, "description": str}
        )
        fields = self._fields(body)
        have = yield self._store.list_webhooks(tenant.id, read_preference=PRIMARY)
        if len(have) >= self._cfg.max_endpoints_per_tenant:
            raise ApiError(
                409,
                "too_many_webhooks",
                "a tenant may have {} webhooks; delete one first".format(self._cfg.max_endpoints_per_tenant),
            )
        written = yield self._store.create_webhook(
            tenant.id,
            url=fields["url"],
            secret=fields["secret"],
            events=fields["events"],
            active=fields.get("active", True),
            description=fields.get("description", ""),
            created_ms=self._now_ms(),
            read_preference=PRIMARY,
        )
        return 201, {"webhook": endpoint_view(written.value)}, written

    @inlineCallbacks
    def get(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        webhook_id = common.record_id(call.params["webhook_id"], "webhook")
        endpoint = yield self._store.get_webhook(tenant.id, webhook_id, read_preference=rp, token=token)
        return Reply(200, {"webhook": endpoint_view(endpoint)})

    @inlineCallbacks
    def update(self, call: Call, tenant: Tenant) -> Any:
        webhook_id = common.record_id(call.params["webhook_id"], "webhook")
        fields = self._fields(call.json(optional=_FIELDS))
        written = yield self._store.update_webhook(
            tenant.id, webhook_id, updated_ms=self._now_ms(), read_preference=PRIMARY, **fields
        )
        return 200, {"webhook": endpoint_view(written.value)}, written

    @inlineCallbacks
    def delete(self, call: Call, tenant: Tenant) -> Any:
        webhook_id = common.record_id(call.params["webhook_id"], "webhook")
        written = yield self._store.delete_webhook(tenant.id, webhook_id, read_preference=PRIMARY)
        return 200, {"deleted": 1}, written

    @inlineCallbacks
    def deliveries(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        webhook_id = common.record_id(call.params["webhook_id"], "webhook")
        raw = call.query.get("state", "failed")
        try:
            state = DeliveryState(raw)
        except ValueError:
            raise bad_request("state must be failed or pending", code="bad_query") from None
        page = yield self._store.list_webhook_deliveries(
            tenant.id,
            webhook_id,
            state=state,
            limit=common.page_limit(call, self._api),
            cursor=call.query.get("cursor") or None,
            read_preference=rp,
            token=token,
        )
        return Reply(200, {"deliveries": [delivery_view(d) for d in page.items], "nextCursor": page.next_cursor})

    @inlineCallbacks
    def replay(self, call: Call, tenant: Tenant) -> Any:
        webhook_id = common.record_id(call.params["webhook_id"], "webhook")
        event_id = call.params["event_id"]
        if not _EVENT_ID_RE.fullmatch(event_id):
            raise not_found("failed delivery")
        try:
            written = yield self._store.replay_webhook_delivery(
                tenant.id, webhook_id, event_id, now_ms=self._now_ms(), read_preference=PRIMARY
            )
        except InvalidReference as e:
            raise ApiError(409, "webhook_disabled", str(e)) from None
        return 200, {"delivery": delivery_view(written.value)}, written
