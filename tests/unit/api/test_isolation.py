"""Tenant isolation: nothing of tenant B is reachable with tenant A's key or
cookie, not even its existence."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.support.nodes import NodeHarness

M = "/api/v1/manage"


class IsolationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = NodeHarness(self)
        self.a, self.key_a = self.node.create_tenant("A")
        self.b, self.key_b = self.node.create_tenant("B")
        self.alice = self.node.client()  # a reader of site A
        self.bob = self.node.client()  # a reader of site B
        r = self.bob.post(
            "/api/v1/{}/comments?urlId=shared-url".format(self.b),
            json_body={"text": "B's secret", "displayName": "Bob"},
        )
        self.b_comment = r.json["comment"]
        self.b_thread = self.node.manager(self.key_b).get(M + "/threads").json["threads"][0]
        self.b_key_id = self.node.manager(self.key_b).get(M + "/keys").json["keys"][0]["id"]
        self.alice.post(
            "/api/v1/{}/comments?urlId=shared-url".format(self.a), json_body={"text": "A's own", "displayName": "Al"}
        )
        self.manager_a = self.node.manager(self.key_a)

    def b_untouched(self) -> None:
        """B's comment, thread and key are exactly as before."""
        manager_b = self.node.manager(self.key_b)
        comment = manager_b.get(M + "/comments/" + self.b_comment["id"]).json["comment"]
        self.assertEqual(
            (comment["text"], comment["status"], comment["likes"], comment["flags"]), ("B's secret", "approved", 0, 0)
        )
        thread = manager_b.get(M + "/threads/" + self.b_thread["id"]).json["thread"]
        self.assertEqual(thread, self.b_thread)
        self.assertEqual(manager_b.get(M + "/keys").json["keys"][0]["revokedAt"], None)

    def test_same_url_id_is_two_threads(self) -> None:
        """The same urlId names a different thread per tenant."""
        page = self.alice.get("/api/v1/{}/comments?urlId=shared-url".format(self.a)).json
        self.assertEqual([c["html"] for c in page["comments"]], ["<p>A's own</p>"])

    def test_manage_cannot_read_b(self) -> None:
        """A's key gets 404 for B's comment, thread and key ids, and B's
        records never appear in A's listings or usage."""
        m = self.manager_a
        for path in ("/comments/" + self.b_comment["id"], "/threads/" + self.b_thread["id"]):
            for rp in ("", "?readPreference=nearest"):
                r = m.get(M + path + rp)
                self.assertEqual(r.code, 404, path)
                self.assertNotIn(b"secret", r.body)
        listed = m.get(M + "/comments?status=approved").json["comments"]
        self.assertNotIn(self.b_comment["id"], [c["id"] for c in listed])
        self.assertEqual(len(m.get(M + "/threads").json["threads"]), 1)
        self.assertNotIn(self.b_key_id, [k["id"] for k in m.get(M + "/keys").json["keys"]])
        filtered = m.get(M + "/comments?status=approved&threadId=" + self.b_thread["id"]).json["comments"]
        self.assertEqual(filtered, [])

    def test_manage_cannot_change_b(self) -> None:
        """A's key cannot edit, moderate, delete or revoke anything of B's."""
        m = self.manager_a
        self.assertEqual(m.patch(M + "/comments/" + self.b_comment["id"], json_body={"status": "removed"}).code, 404)
        self.assertEqual(m.patch(M + "/comments/" + self.b_comment["id"], json_body={"text": "pwned"}).code, 404)
        self.assertEqual(m.delete(M + "/comments/" + self.b_comment["id"]).code, 404)
        self.assertEqual(m.patch(M + "/threads/" + self.b_thread["id"], json_body={"closed": True}).code, 404)
        self.assertEqual(m.delete(M + "/threads/" + self.b_thread["id"]).code, 404)
        self.assertEqual(m.delete(M + "/keys/" + self.b_key_id).code, 404)
        reply = m.post(
            M + "/comments",
            json_body={"urlId": "shared-url", "text": "x", "displayName": "E", "parentId": self.b_comment["id"]},
        )
        self.assertEqual(reply.code, 404)
        self.b_untouched()

    def test_public_cannot_touch_b_through_a(self) -> None:
        """Through A's public API, B's comment and author ids are unknown: no
        like, flag, block or reply reaches them."""
        base = "/api/v1/{}".format(self.a)
        c = self.alice
        self.assertEqual(c.post(base + "/comments/{}/like".format(self.b_comment["id"])).code, 404)
        self.assertEqual(c.post(base + "/comments/{}/flag".format(self.b_comment["id"])).code, 404)
        self.assertEqual(c.post(base + "/blocks/{}".format(self.b_comment["authorId"])).code, 404)
        r = c.post(
            base + "/comments?urlId=shared-url",
            json_body={"text": "x", "displayName": "A", "parentId": self.b_comment["id"]},
        )
        self.assertEqual(r.code, 404)
        self.b_untouched()

    def test_cookie_of_a_at_b(self) -> None:
        """A session of site A cannot act at site B, even on B's own comment."""
        r = self.alice.post("/api/v1/{}/comments/{}/like".format(self.b, self.b_comment["id"]))
        self.assertEqual((r.code, r.json["error"]["code"]), (401, "session_invalid"))
        self.b_untouched()

    def test_credits_separate(self) -> None:
        """Each tenant's usage counts only its own calls."""
        for _ in range(3):
            self.manager_a.get(M + "/threads")
        usage_b = self.node.manager(self.key_b).get(M + "/credits").json
        ops_b = {u["operation"]: u["calls"] for u in usage_b["operations"]}
        self.assertEqual(ops_b.get("list_threads"), 1)  # B's own call in setUp
        self.node.clock.advance(60)
        ops_a = {u["operation"]: u["calls"] for u in self.manager_a.get(M + "/credits").json["operations"]}
        self.assertEqual(ops_a["list_threads"], 3)

    def test_page_cache_per_tenant(self) -> None:
        """A cached page of one tenant is never served for another tenant's
        thread with the same urlId."""
        self.bob.get("/api/v1/{}/comments?urlId=shared-url".format(self.b))
        page_a = self.alice.get("/api/v1/{}/comments?urlId=shared-url".format(self.a))
        self.assertNotIn(b"secret", page_a.body)
