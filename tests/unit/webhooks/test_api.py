"""Tests for :mod:`fastedge.webhooks.api`: ``/api/v1/manage/webhooks`` over a
real SQLite store, through the tenant API's authentication."""

from __future__ import annotations

import json
import os
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.api.keys import hash_api_key, new_api_key
from fastedge.api.resource import build_api
from fastedge.config import ApiConfig, WebhooksConfig
from fastedge.store.model import AttemptOutcome, ReadPreference, WebhookEvent
from fastedge.store.sqlite import SQLiteStore
from fastedge.testing.fakes import run_inline
from fastedge.webhooks.api import EVENT_ID_PATTERN, SECRET_PATTERN, WebhooksApi
from fastedge.webhooks.targets import URL_PATTERN

PRIMARY = ReadPreference.PRIMARY
W = "/api/v1/manage/webhooks"
SECRET = "x" * 40
SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "openapi.yaml")


class WebhooksApiTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.store = SQLiteStore(os.path.join(directory, "s.sqlite"), run=run_inline, clock=self.clock)
        self.successResultOf(self.store.open())
        self.addCleanup(lambda: self.successResultOf(self.store.close()))
        cfg = ApiConfig(secret_file=os.path.join(directory, "session.key"))
        hooks = WebhooksApi(WebhooksConfig(max_endpoints_per_tenant=3), cfg, store=self.store, clock=self.clock)
        api = build_api(
            cfg, store=self.store, clock=self.clock, registry=CollectorRegistry(), extra_manage_routes=hooks.routes
        )
        api.service.startService()
        self.addCleanup(lambda: self.successResultOf(api.service.stopService()))
        self.resource = api.resource
        self.tenant, self.key = self.make_tenant("A")
        self.other, self.other_key = self.make_tenant("B")

    def make_tenant(self, name: str) -> tuple[str, str]:
        tenant = self.successResultOf(self.store.create_tenant(name, "global", created_ms=1, read_preference=PRIMARY))
        key = new_api_key()
        self.successResultOf(
            self.store.add_api_key(tenant.value.id, hash_api_key(key), created_ms=1, read_preference=PRIMARY)
        )
        return tenant.value.id, key

    def call(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
        stub = StubTreq(self.resource)
        headers = {"authorization": ["Bearer " + (key or self.key)]}
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            headers["content-type"] = ["application/json"]
            kwargs["data"] = json.dumps(body).encode()
        d = stub.request(method, "http://node.test" + path, **kwargs)  # type: ignore[attr-defined]
        stub.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def create(self, **fields: Any) -> dict[str, Any]:
        body = {"url": "https://hooks.example/in", "secret": SECRET, "events": ["comment.created"]}
        body.update(fields)
        code, got = self.call("POST", W, body)
        self.assertEqual(code, 201, got)
        return got["webhook"]  # type: ignore[no-any-return]

    def test_crud(self) -> None:
        """An endpoint is created, listed, read, changed (secret rotated)
        and deleted; its secret is never in any answer."""
        hook = self.create(description="mirror")
        self.assertEqual(
            {k: hook[k] for k in ("url", "events", "active", "description", "disabledReason")},
            {
                "url": "https://hooks.example/in",
                "events": ["comment.created"],
                "active": True,
                "description": "mirror",
                "disabledReason": None,
            },
        )
        self.assertEqual(self.call("GET", W)[1], {"webhooks": [hook]})
        self.assertEqual(self.call("GET", W + "/" + hook["id"])[1], {"webhook": hook})
        self.clock.advance(60)
        code, changed = self.call("PATCH", W + "/" + hook["id"], {"secret": "y" * 32, "events": ["thread.closed"]})
        self.assertEqual(code, 200)
        self.assertEqual(changed["webhook"]["secretSetAt"], hook["createdAt"] + 60_000)
        self.assertEqual(changed["webhook"]["events"], ["thread.closed"])
        for answer in (hook, changed, self.call("GET", W)[1]):
            self.assertNotIn(SECRET, json.dumps(answer))
            self.assertNotIn("y" * 32, json.dumps(answer))
            self.assertNotIn('"secret"', json.dumps(answer))
        self.assertEqual(self.call("DELETE", W + "/" + hook["id"]), (200, {"deleted": 1}))
        self.assertEqual(self.call("GET", W + "/" + hook["id"])[0], 404)

    def test_other_tenant(self) -> None:
        """Another tenant's key neither sees, changes nor deletes the endpoint."""
        hook = self.create()
        path = W + "/" + hook["id"]
        self.assertEqual(self.call("GET", W, key=self.other_key)[1], {"webhooks": []})
        for method, body in (("GET", None), ("PATCH", {"active": False}), ("DELETE", None)):
            self.assertEqual(self.call(method, path, body, key=self.other_key)[0], 404)
        self.assertEqual(self.call("GET", path + "/deliveries", key=self.other_key)[0], 404)

    def test_bad_input(self) -> None:
        """A URL that is not http(s), has credentials, is too long or names
        an address; a short secret; an unknown event; no events: 422 with
        the field named, nothing created."""
        cases = [
            ({"url": "ftp://hooks.example/in"}, "url", "invalid_url"),
            ({"url": "https://u:p@hooks.example/in"}, "url", "invalid_url"),
            ({"url": "https://hooks.example/" + "a" * 2048}, "url", "invalid_url"),
            ({"url": "http://127.0.0.1/in"}, "url", "invalid_url"),
            ({"secret": "short"}, "secret", "invalid_secret"),
            ({"events": ["comment.liked"]}, "events", "invalid_events"),
            ({"events": []}, "events", "invalid_events"),
            ({"description": "d" * 201}, "description", "invalid_description"),
        ]
        for fields, field, code in cases:
            body = {"url": "https://hooks.example/in", "secret": SECRET, "events": ["comment.created"]}
            body.update(fields)
            status, got = self.call("POST", W, body)
            self.assertEqual((status, got["error"]["code"], got["error"]["field"]), (422, code, field), fields)
        self.assertEqual(self.call("GET", W)[1], {"webhooks": []})

    def test_limit(self) -> None:
        """A tenant has at most ``max_endpoints_per_tenant`` endpoints (409 past it)."""
        for _ in range(3):
            self.create()
        status, got = self.call(
            "POST", W, {"url": "https://h.example/", "secret": SECRET, "events": ["thread.created"]}
        )
        self.assertEqual((status, got["error"]["code"]), (409, "too_many_webhooks"))

    def test_failed_deliveries_listed_and_replayed(self) -> None:
        """A failed delivery is listed with its error; replaying an endpoint
        that is off is a 409; once on again it goes back to pending."""
        hook = self.create(events=["thread.created"])
        self.successResultOf(
            self.store.upsert_thread(self.tenant, "https://s/a", created_ms=5, read_preference=PRIMARY)
        )
        (claimed,) = self.successResultOf(
            self.store.claim_webhook_deliveries(owner="o", now_ms=10, lease_ms=1000, limit=5, read_preference=PRIMARY)
        ).deliveries
        outcome = AttemptOutcome(
            now_ms=11,
            status=410,
            error="the receiver answered 410 Gone",
            retry_at_ms=None,
            disable_reason="the receiver answered 410 Gone",
            disable_after=5,
        )
        self.successResultOf(
            self.store.record_webhook_failure(claimed.seq, hook["id"], outcome, owner="o", read_preference=PRIMARY)
        )
        got = self.call("GET", W + "/" + hook["id"])[1]["webhook"]
        self.assertEqual((got["active"], got["disabledReason"]), (False, "the receiver answered 410 Gone"))
        status, page = self.call("GET", W + "/" + hook["id"] + "/deliveries")
        self.assertEqual(status, 200)
        (failed,) = page["deliveries"]
        self.assertEqual(
            {k: failed[k] for k in ("eventId", "type", "state", "attempts", "lastStatus", "nextAttemptAt")},
            {
                "eventId": claimed.event_id,
                "type": "thread.created",
                "state": "failed",
                "attempts": 1,
                "lastStatus": 410,
                "nextAttemptAt": None,
            },
        )
        replay = W + "/" + hook["id"] + "/deliveries/" + claimed.event_id + "/replay"
        status, body = self.call("POST", replay)
        self.assertEqual((status, body["error"]["code"]), (409, "webhook_disabled"))
        self.assertEqual(self.call("PATCH", W + "/" + hook["id"], {"active": True})[0], 200)
        status, body = self.call("POST", replay)
        self.assertEqual((status, body["delivery"]["state"], body["delivery"]["attempts"]), (200, "pending", 0))
        self.assertEqual(self.call("POST", W + "/" + hook["id"] + "/deliveries/a%20b/replay")[0], 404)
        self.assertEqual(self.call("GET", W + "/" + hook["id"] + "/deliveries?state=lost")[0], 400)

    def test_spec_states_the_same_rules(self) -> None:
        """docs/openapi.yaml states the very patterns and event names the
        node checks with."""
        with open(SPEC, encoding="utf-8") as f:
            schemas = yaml.safe_load(f)["components"]["schemas"]
        self.assertEqual(schemas["WebhookUrl"]["pattern"], URL_PATTERN)
        self.assertEqual(schemas["WebhookSecret"]["pattern"], SECRET_PATTERN)
        self.assertEqual(schemas["WebhookEvent"]["enum"], [e.value for e in WebhookEvent])
        with open(SPEC, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
        replay = spec["paths"][W + "/{webhookId}/deliveries/{eventId}/replay"]["parameters"][1]
        self.assertEqual(replay["schema"]["pattern"], EVENT_ID_PATTERN)
