# -*- test-case-name: tests.integration.test_webhooks -*-
"""The body of a webhook request: one versioned JSON envelope per event
(docs/webhooks.md, "Events")."""

from __future__ import annotations

import json

from ..store.model import WebhookDelivery

#: The envelope's ``version``: bumped only for an incompatible change.
VERSION = 1


def render_body(delivery: WebhookDelivery) -> bytes:
    """The request body: the same bytes for every attempt of a delivery.

    ``data`` is the event's data as the store recorded it with the change.
    """
    envelope = {
        "version": VERSION,
        "id": delivery.event_id,
        "type": delivery.event_type.value,
        "createdAt": delivery.created_ms,
        "tenantId": delivery.tenant_id,
        "webhookId": delivery.endpoint_id,
        "data": json.loads(delivery.data),
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
