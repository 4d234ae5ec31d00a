"""The tenant API (``/api/v1/manage``), authenticated by API key."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.support.nodes import NodeHarness

M = "/api/v1/manage"


class ManageTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = NodeHarness(self)
        self.tenant, self.key = self.node.create_tenant("Site A")
        self.manager = self.node.manager(self.key)

    def new_comment(self, url_id: str = "https://site.test/a", **extra: object) -> dict:  # type: ignore[type-arg]
        body = {"urlId": url_id, "text": "imported", "displayName": "Editor"}
        body.update(extra)
        r = self.manager.post(M + "/comments", json_body=body)
        self.assertEqual(r.code, 201, r.body)
        return r.json["comment"]  # type: ignore[no-any-return]


class CommentCrudTests(ManageTestCase):
    def test_create_read_update_delete(self) -> None:
        """A comment created through the tenant API can be read, edited,
        moderated and deleted, each answer showing the new state."""
        c = self.new_comment(userId="user-7")
        self.assertEqual((c["status"], c["text"]), ("approved", "imported"))
        got = self.manager.get(M + "/comments/" + c["id"]).json["comment"]
        self.assertEqual(got, c)
        self.node.clock.advance(5)
        edited = self.manager.patch(M + "/comments/" + c["id"], json_body={"text": "*edited*"}).json["comment"]
        self.assertEqual((edited["html"], edited["editedAt"]), ("<p><em>edited</em></p>", c["createdAt"] + 5000))
        removed = self.manager.patch(M + "/comments/" + c["id"], json_body={"status": "removed"}).json["comment"]
        self.assertEqual(removed["status"], "removed")
        self.assertEqual(self.manager.delete(M + "/comments/" + c["id"]).json, {"deleted": 1})
        self.assertEqual(self.manager.get(M + "/comments/" + c["id"]).code, 404)

    def test_delete_takes_replies(self) -> None:
        """Deleting a comment deletes the replies beneath it."""
        top = self.new_comment()
        self.new_comment(parentId=top["id"])
        self.assertEqual(self.manager.delete(M + "/comments/" + top["id"]).json, {"deleted": 2})

    def test_moderation_queue(self) -> None:
        """Listing by status gives the moderation queue, newest first, paged."""
        ids = []
        for _ in range(5):
            self.node.clock.advance(1)
            ids.append(self.new_comment(status="pending")["id"])
        self.new_comment()
        seen, cursor = [], None
        while True:
            page = self.manager.get(
                M + "/comments?status=pending&limit=2" + ("&cursor=" + cursor if cursor else "")
            ).json
            seen += [c["id"] for c in page["comments"]]
            cursor = page["nextCursor"]
            if not cursor:
                break
        self.assertEqual(seen, ids[::-1])

    def test_public_post_visible_to_tenant(self) -> None:
        """What readers post shows up in the tenant's listing."""
        reader = self.node.client()
        reader.post("/api/v1/{}/comments?urlId=x".format(self.tenant), json_body={"text": "hi", "displayName": "R"})
        page = self.manager.get(M + "/comments?status=approved").json
        self.assertEqual([c["text"] for c in page["comments"]], ["hi"])


class ThreadTests(ManageTestCase):
    def test_thread_lifecycle(self) -> None:
        """Threads are created by urlId, renamed, closed, listed and deleted
        with their comments."""
        t = self.manager.post(M + "/threads", json_body={"urlId": "https://s.test/p", "title": "Post"}).json["thread"]
        self.assertEqual((t["title"], t["closed"]), ("Post", False))
        again = self.manager.post(M + "/threads", json_body={"urlId": "https://s.test/p"}).json["thread"]
        self.assertEqual(again["id"], t["id"])
        closed = self.manager.patch(M + "/threads/" + t["id"], json_body={"closed": True}).json["thread"]
        self.assertTrue(closed["closed"])
        self.new_comment(url_id="https://s.test/p")
        listed = self.manager.get(M + "/threads").json["threads"]
        self.assertEqual([(x["id"], x["commentCount"]) for x in listed], [(t["id"], 1)])
        self.assertEqual(self.manager.delete(M + "/threads/" + t["id"]).code, 200)
        self.assertEqual(self.manager.get(M + "/threads/" + t["id"]).code, 404)
        self.assertEqual(self.manager.get(M + "/comments?status=approved").json["comments"], [])


class AuthTests(ManageTestCase):
    def test_missing_key(self) -> None:
        """No Authorization header: 401 with a Bearer challenge."""
        r = self.node.client().get(M + "/comments")
        self.assertEqual((r.code, r.json["error"]["code"]), (401, "missing_api_key"))
        self.assertEqual(r.header("www-authenticate"), 'Bearer realm="fastedge"')

    def test_bad_keys(self) -> None:
        """Malformed, unknown and non-Bearer credentials are all 401."""
        for header in ("Bearer nope", "Bearer fe_" + "x" * 40, "Basic Zm9vOmJhcg==", "Bearer"):
            r = self.node.client().get(M + "/comments", headers={"authorization": header})
            self.assertEqual((r.code, r.json["error"]["code"]), (401, "bad_api_key"), header)

    def test_revoked_key(self) -> None:
        """A revoked key stops working at once; other keys keep working."""
        created = self.manager.post(M + "/keys").json
        second = self.node.manager(created["key"])
        self.assertEqual(second.get(M + "/threads").code, 200)
        self.assertEqual(self.manager.delete(M + "/keys/" + created["id"]).code, 200)
        self.assertEqual(second.get(M + "/threads").code, 401)
        self.assertEqual(self.manager.get(M + "/threads").code, 200)
        keys = self.manager.get(M + "/keys").json["keys"]
        self.assertEqual(len(keys), 2)
        self.assertNotIn("key", keys[0])


class CreditTests(ManageTestCase):
    def test_charges(self) -> None:
        """Primary reads, nearest reads and writes are charged their configured
        prices; usage shows calls and credits per operation, flushed or not."""
        c = self.new_comment()
        r1 = self.manager.get(M + "/comments/" + c["id"])
        r2 = self.manager.get(M + "/comments/" + c["id"] + "?readPreference=nearest")
        self.assertEqual((r1.header("x-credits-charged"), r2.header("x-credits-charged")), ("2", "1"))
        usage = self.manager.get(M + "/credits").json
        ops = {u["operation"]: (u["calls"], u["credits"]) for u in usage["operations"]}
        self.assertEqual(ops, {"create_comment": (1, 3), "get_comment": (2, 3)})
        self.node.clock.advance(self.node.api_config.credits.flush_seconds)
        after = self.manager.get(M + "/credits").json
        ops = {u["operation"]: (u["calls"], u["credits"]) for u in after["operations"]}
        self.assertEqual(ops, {"create_comment": (1, 3), "get_comment": (2, 3), "credits": (1, 2)})
        self.assertEqual(after["totalCredits"], 3 + 3 + 2)

    def test_failed_calls_not_charged(self) -> None:
        """A call that fails (here: 404) costs nothing."""
        self.manager.get(M + "/comments/nosuchcomment")
        self.assertEqual(self.manager.get(M + "/credits").json["operations"], [])


class BadInputTests(ManageTestCase):
    def test_bad_read_preference(self) -> None:
        """readPreference must be primary or nearest; writes refuse it."""
        r = self.manager.get(M + "/threads?readPreference=fastest")
        self.assertEqual((r.code, r.json["error"]["code"]), (400, "bad_read_preference"))
        w = self.manager.post(M + "/threads?readPreference=nearest", json_body={"urlId": "x"})
        self.assertEqual(w.code, 400)

    def test_null_is_not_left_out(self) -> None:
        """``null`` for an optional field is a wrong type (400 naming the
        field), as docs/openapi.yaml says, not the field left out; nothing
        changes."""
        t = self.manager.post(M + "/threads", json_body={"urlId": "u", "title": "T"}).json["thread"]
        for body in ({"closed": None, "title": ""}, {"title": None}):
            r = self.manager.patch(M + "/threads/" + t["id"], json_body=body)
            self.assertEqual((r.code, r.json["error"]["code"]), (400, "wrong_type"), body)
            self.assertEqual(r.json["error"]["field"], next(k for k, v in body.items() if v is None))
        r = self.manager.post(M + "/threads", json_body={"urlId": "u", "closed": None})
        self.assertEqual((r.code, r.json["error"]["field"]), (400, "closed"))
        c = self.new_comment()
        r = self.manager.patch(M + "/comments/" + c["id"], json_body={"text": None})
        self.assertEqual((r.code, r.json["error"]["code"]), (400, "wrong_type"))
        self.assertEqual(self.manager.get(M + "/threads/" + t["id"]).json["thread"]["title"], "T")

    def test_bad_status(self) -> None:
        """Unknown statuses are 400 in filters and updates; nothing changes."""
        c = self.new_comment()
        self.assertEqual(self.manager.get(M + "/comments?status=hidden").code, 400)
        self.assertEqual(self.manager.patch(M + "/comments/" + c["id"], json_body={"status": "hidden"}).code, 400)
        self.assertEqual(self.manager.get(M + "/comments/" + c["id"]).json["comment"]["status"], "approved")

    def test_parent_of_another_thread(self) -> None:
        """Creating a reply in another thread than its parent is refused and
        writes nothing (no thread, no user)."""
        parent = self.new_comment(url_id="one")
        r = self.manager.post(
            M + "/comments", json_body={"urlId": "two", "text": "x", "displayName": "E", "parentId": parent["id"]}
        )
        self.assertEqual(r.code, 422)
        urls = [t["urlId"] for t in self.manager.get(M + "/threads").json["threads"]]
        self.assertEqual(urls, ["one"])

    def test_oversized_body(self) -> None:
        """A body over the request limit is refused (by the Site, before any
        parsing: see tests.unit.http); here, text over the comment limit."""
        r = self.manager.post(M + "/comments", json_body={"urlId": "u", "text": "x" * 6000, "displayName": "E"})
        self.assertEqual((r.code, r.json["error"]["code"]), (400, "text_too_long"))
