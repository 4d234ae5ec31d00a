"""Tenant settings through the tenant API (``/api/v1/manage/settings``)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.model import ReadPreference
from tests.support.nodes import NodeHarness

S = "/api/v1/manage/settings"
SECRET = "0123456789abcdef" * 4


class SettingsApiTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = NodeHarness(self)
        self.tenant, self.key = self.node.create_tenant("Site A")
        self.manager = self.node.manager(self.key)

    def secrets(self) -> list[str]:
        now = int(self.node.clock.seconds() * 1000)
        got = self.successResultOf(
            self.node.store.get_sso_secrets(self.tenant, now_ms=now, read_preference=ReadPreference.PRIMARY)
        )
        return [s.secret for s in got]

    def stored(self) -> Any:
        return dict(
            self.successResultOf(
                self.node.store.get_tenant(self.tenant, read_preference=ReadPreference.PRIMARY)
            ).settings
        )

    def test_defaults(self) -> None:
        """A new tenant reads the documented defaults and no SSO secret."""
        r = self.manager.get(S)
        self.assertEqual(r.code, 200)
        self.assertEqual(
            r.json,
            {
                "settings": {
                    "moderation": "post",
                    "flagsToHide": None,
                    "requireSignIn": False,
                    "defaultGroups": [],
                    "allowedOrigins": [],
                    "theme": {},
                    "blockedWords": [],
                },
                "sso": {"secretSet": False, "secretSetAt": None, "previousSecretAcceptedUntil": None},
            },
        )

    def test_patch_and_read_back(self) -> None:
        """A PATCH changes only the keys it names, answers the whole new
        object, and the public API applies it (moderation "pre")."""
        r = self.manager.patch(S, json_body={"moderation": "pre", "allowedOrigins": ["https://Blog.Example"]})
        self.assertEqual(r.code, 200, r.body)
        self.assertEqual(r.json["settings"]["allowedOrigins"], ["https://blog.example"])
        self.assertIsNotNone(r.header("x-consistency-token") or "single-copy")
        r = self.manager.patch(S, json_body={"flagsToHide": 3, "theme": {"accent": "#123abc"}})
        settings = self.manager.get(S).json["settings"]
        self.assertEqual(
            (settings["moderation"], settings["flagsToHide"], settings["theme"], settings["allowedOrigins"]),
            ("pre", 3, {"accent": "#123abc"}, ["https://blog.example"]),
        )
        posted = self.node.client().post(
            "/api/v1/{}/comments?urlId=u".format(self.tenant), json_body={"text": "hi", "displayName": "Ann"}
        )
        self.assertEqual(posted.json["comment"]["status"], "pending")

    def test_bad_settings_change_nothing(self) -> None:
        """Unknown keys, wrong types and non-origins are 422 naming the key,
        and nothing is stored, not even the valid keys beside them."""
        self.manager.patch(S, json_body={"flagsToHide": 2})
        before = self.stored()
        cases = [
            ({"colour": "red"}, "colour"),
            ({"moderation": "pre", "flagsToHide": "3"}, "flagsToHide"),
            ({"requireSignIn": 1}, "requireSignIn"),
            ({"allowedOrigins": ["https://ok.example", "https://bad.example/path"]}, "allowedOrigins"),
            ({"allowedOrigins": ["not an origin"]}, "allowedOrigins"),
            ({"theme": {"accent": "red"}}, "theme.accent"),
            ({"theme": {"shadow": "1px"}}, "theme.shadow"),
            ({"defaultGroups": ["g"] * 0 + ["x" * 65]}, "defaultGroups"),
            ({"defaultGroups": ["g{}".format(i) for i in range(101)]}, "defaultGroups"),
            ({"ssoSecret": "short"}, "ssoSecret"),
            ({"ssoSecret": 12345}, "ssoSecret"),
            ({"ssoSecret": SECRET, "ssoSecretOverlapSeconds": -1}, "ssoSecretOverlapSeconds"),
            ({"ssoSecretOverlapSeconds": 10}, "ssoSecretOverlapSeconds"),
        ]
        for body, key in cases:
            r = self.manager.patch(S, json_body=body)
            self.assertEqual((r.code, r.json["error"]["code"], r.json["error"]["field"]), (422, "invalid_setting", key))
            self.assertIn(key, r.json["error"]["message"])
            self.assertNotIn("short", r.json["error"]["message"])
        for raw in (b"[]", b"{", b'"x"'):
            r = self.node.request(
                "PATCH",
                S,
                data=raw,
                headers={"authorization": "Bearer " + self.key, "content-type": "application/json"},
            )
            self.assertEqual((r.code, r.json["error"]["code"]), (400, "malformed_json"))
        self.assertEqual(self.stored(), before)
        self.assertEqual(self.secrets(), [])

    def test_sso_secret_write_only_and_rotated(self) -> None:
        """The SSO secret is accepted, never returned (only that one is set);
        rotating keeps the old one accepted for the overlap asked for."""
        r = self.manager.patch(S, json_body={"ssoSecret": SECRET})
        self.assertEqual(r.code, 200, r.body)
        self.assertNotIn(SECRET, r.body.decode())
        self.assertTrue(r.json["sso"]["secretSet"])
        self.assertNotIn(SECRET, self.manager.get(S).body.decode())
        self.assertEqual(self.secrets(), [SECRET])
        new = "f" * 64
        r = self.manager.patch(S, json_body={"ssoSecret": new, "ssoSecretOverlapSeconds": 600})
        now = int(self.node.clock.seconds() * 1000)
        self.assertEqual(r.json["sso"]["previousSecretAcceptedUntil"], now + 600_000)
        self.assertEqual(self.secrets(), [new, SECRET])
        self.node.clock.advance(600)
        self.assertEqual(self.secrets(), [new])
        r = self.manager.patch(S, json_body={"ssoSecret": None})
        self.assertEqual(r.json["sso"], {"secretSet": False, "secretSetAt": None, "previousSecretAcceptedUntil": None})
        self.assertEqual(self.secrets(), [])

    def test_other_tenant_untouched(self) -> None:
        """A tenant's key changes only its own settings."""
        other, other_key = self.node.create_tenant("Site B")
        self.manager.patch(S, json_body={"moderation": "pre", "ssoSecret": SECRET})
        self.assertEqual(self.node.manager(other_key).get(S).json["settings"]["moderation"], "post")
        self.assertFalse(self.node.manager(other_key).get(S).json["sso"]["secretSet"])

    def test_no_key(self) -> None:
        """Settings need the tenant's API key."""
        self.assertEqual(self.node.client().get(S).code, 401)
        self.assertEqual(self.node.client().patch(S, json_body={"moderation": "pre"}).code, 401)
        self.assertEqual(self.stored(), {})


class ThreadAccessApiTests(SynchronousTestCase):
    """A thread's lock and sign-in rule through the tenant API."""

    def setUp(self) -> None:
        self.node = NodeHarness(self)
        self.tenant, self.key = self.node.create_tenant("Site A")
        self.manager = self.node.manager(self.key)

    def test_lock_and_default(self) -> None:
        """A thread shows null (tenant default) until locked; a lock and the
        sign-in rule are set by PATCH; the tenant default locks unlocked
        threads for readers; bad groups are 422 and change nothing."""
        t = self.manager.post("/api/v1/manage/threads", json_body={"urlId": "u"}).json["thread"]
        self.assertEqual((t["lockedGroups"], t["requireSignIn"]), (None, None))
        page = "/api/v1/{}/comments?urlId=u".format(self.tenant)
        self.assertEqual(self.node.client().get(page).code, 200)
        locked = self.manager.patch(
            "/api/v1/manage/threads/" + t["id"], json_body={"lockedGroups": ["staff"], "requireSignIn": True}
        ).json["thread"]
        self.assertEqual((locked["lockedGroups"], locked["requireSignIn"]), (["staff"], True))
        r = self.node.client().get(page)
        self.assertEqual((r.code, r.json["error"]["code"]), (403, "thread_locked"))
        # Group ids follow docs/openapi.yaml's GroupId: no control, invisible
        # or lone surrogate characters.
        for bad in (["x" * 65], ["g{}".format(i) for i in range(101)], [3], [""], ["a\u200bb"], ["a\x85"]):
            r = self.manager.patch("/api/v1/manage/threads/" + t["id"], json_body={"lockedGroups": bad})
            self.assertEqual((r.code, r.json["error"]["field"]), (422, "lockedGroups"))
        # A lone surrogate is no text at all: refused with the body (inputs.loads_json).
        r = self.manager.patch("/api/v1/manage/threads/" + t["id"], json_body={"lockedGroups": ["\ud800"]})
        self.assertEqual((r.code, r.json["error"]["code"]), (400, "malformed_json"))
        r = self.manager.patch("/api/v1/manage/threads/" + t["id"], json_body={"lockedGroups": "staff"})
        self.assertEqual((r.code, r.json["error"]["code"]), (400, "wrong_type"))
        self.assertEqual(self.manager.get("/api/v1/manage/threads/" + t["id"]).json["thread"], locked)
        opened = self.manager.patch("/api/v1/manage/threads/" + t["id"], json_body={"lockedGroups": []})
        self.assertEqual(opened.json["thread"]["lockedGroups"], [])
        self.assertEqual(self.node.client().get(page).code, 200)
        # The tenant default applies to threads without a lock of their own.
        self.manager.patch(S, json_body={"defaultGroups": ["vip"]})
        r = self.node.client().get("/api/v1/{}/comments?urlId=other".format(self.tenant))
        self.assertEqual((r.code, r.json["error"]["code"]), (403, "thread_locked"))
        self.assertEqual(self.node.client().get(page).code, 200)


class PropagationTests(SynchronousTestCase):
    """Settings changed through another node reach this one within the
    page-cache TTL; through this node, at once."""

    def test_other_node_within_ttl(self) -> None:
        """A change written to the store by another node (simulated: straight
        to the store) shows here once ``api.page_cache_seconds`` has passed,
        not before; a change through this node's API shows at once."""
        node = NodeHarness(self)
        tenant, key = node.create_tenant("Site A")
        origin = "https://blog.example"
        preflight_headers = {"origin": origin, "access-control-request-method": "GET"}
        path = "/api/v1/{}/comments?urlId=u".format(tenant)

        def preflight() -> int:
            return node.request("OPTIONS", path, data=None, headers=preflight_headers).code

        self.assertEqual(preflight(), 403)
        self.successResultOf(
            node.store.update_tenant_settings(
                tenant, {"allowedOrigins": [origin]}, read_preference=ReadPreference.PRIMARY
            )
        )
        self.assertEqual(preflight(), 403)
        node.clock.advance(node.api_config.page_cache_seconds)
        self.assertEqual(preflight(), 204)
        node.manager(key).patch(S, json_body={"allowedOrigins": []})
        self.assertEqual(preflight(), 403)
