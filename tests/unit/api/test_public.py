"""The public API the widget calls, over a real SQLite store."""

from __future__ import annotations

from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.model import ReadPreference
from tests.support.nodes import ApiClient, NodeHarness


def comments_path(tenant: str, url_id: str = "https://site.test/a", **query: str) -> str:
    extra = "".join("&{}={}".format(k, quote(v, safe="")) for k, v in query.items())
    return "/api/v1/{}/comments?urlId={}{}".format(tenant, quote(url_id, safe=""), extra)


class PublicApiTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = NodeHarness(self)
        self.tenant, self.key = self.node.create_tenant("Site A")

    def post(self, client, text="hello", name="Ann", url_id="https://site.test/a", **extra):  # type: ignore[no-untyped-def]
        body = {"text": text, "displayName": name}
        body.update(extra)
        return client.post(comments_path(self.tenant, url_id), json_body=body)

    def read(self, client, url_id="https://site.test/a", **query):  # type: ignore[no-untyped-def]
        return client.get(comments_path(self.tenant, url_id, **query))


class ReadWriteTests(PublicApiTestCase):
    def test_post_then_read(self) -> None:
        """A posted comment comes back rendered and sanitised, marked as the
        poster's own, and a session cookie is issued on that first write."""
        ann = self.node.client()
        posted = self.post(ann, text="Hi **there** <script>alert(1)</script>")
        self.assertEqual(posted.code, 201)
        self.assertIsNotNone(ann.cookie)
        comment = posted.json["comment"]
        self.assertEqual(comment["html"], "<p>Hi <strong>there</strong> &lt;script&gt;alert(1)&lt;/script&gt;</p>")
        page = self.read(ann).json
        self.assertEqual([c["id"] for c in page["comments"]], [comment["id"]])
        self.assertTrue(page["comments"][0]["isMine"])
        self.assertEqual(page["thread"]["commentCount"], 1)

    def test_cookie_attributes(self) -> None:
        """The session cookie is HttpOnly, SameSite, scoped to the tenant's
        API path, its embed page and its media (same value), and never
        readable by script."""
        response = self.post(self.node.client())
        api, embed, media = response.set_cookies()
        for cookie in (api, embed, media):
            self.assertIn("HttpOnly", cookie)
            self.assertIn("SameSite=", cookie)
        self.assertIn("Path=/api/v1/{}/".format(self.tenant), api)
        self.assertIn("Path=/embed/{}/".format(self.tenant), embed)
        self.assertIn("Path=/media/{}/".format(self.tenant), media)
        self.assertEqual(api.split(";")[0], embed.split(";")[0])
        self.assertEqual(api.split(";")[0], media.split(";")[0])

    def test_session_reused(self) -> None:
        """A second post with the cookie is by the same author; no new cookie."""
        ann = self.node.client()
        first = self.post(ann).json["comment"]
        second = self.post(ann, text="again")
        self.assertEqual(second.set_cookies(), [])
        self.assertEqual(second.json["comment"]["authorId"], first["authorId"])

    def test_unknown_thread_reads_empty(self) -> None:
        """A page nobody commented on yet reads as an empty thread (the widget
        loads on every article), not as an error."""
        page = self.read(self.node.client(), url_id="https://site.test/new")
        self.assertEqual(page.code, 200)
        self.assertEqual(page.json, {"thread": None, "comments": [], "nextCursor": None})

    def test_replies_nested(self) -> None:
        """Replies nest under their parents, oldest first, at any depth."""
        c = self.node.client()
        top = self.post(c, text="top").json["comment"]["id"]
        r1 = self.post(c, text="r1", parentId=top).json["comment"]["id"]
        self.node.clock.advance(1)
        r2 = self.post(c, text="r2", parentId=top).json["comment"]["id"]
        deep = self.post(c, text="deep", parentId=r1).json["comment"]["id"]
        (root,) = self.read(c).json["comments"]
        self.assertEqual([r["id"] for r in root["replies"]], [r1, r2])
        self.assertEqual([r["id"] for r in root["replies"][0]["replies"]], [deep])

    def test_sorts_and_paging(self) -> None:
        """Every sort pages through all top-level comments exactly once, with
        an opaque cursor, in the promised order."""
        c = self.node.client()
        ids = []
        for i in range(7):
            self.node.clock.advance(1)
            ids.append(self.post(c, text="c{}".format(i)).json["comment"]["id"])
        liked = ids[2]
        self.assertEqual(c.post("/api/v1/{}/comments/{}/like".format(self.tenant, liked)).code, 200)
        for sort, expected in (
            ("newest", ids[::-1]),
            ("oldest", ids),
            ("top", [liked] + [i for i in ids[::-1] if i != liked]),
        ):
            seen, cursor = [], None
            while True:
                query = {"sort": sort, "limit": "3"}
                if cursor:
                    query["cursor"] = cursor
                page = self.read(c, **query).json
                seen += [x["id"] for x in page["comments"]]
                cursor = page["nextCursor"]
                if cursor is None:
                    break
            self.assertEqual(seen, expected, sort)

    def test_page_cache_invalidated_by_write(self) -> None:
        """A cached page is dropped as soon as this node writes to the thread,
        so a stranger sees a new comment at once."""
        reader = self.node.client()
        self.assertEqual(self.read(reader).json["comments"], [])
        self.post(self.node.client())
        self.assertEqual(len(self.read(reader).json["comments"]), 1)
        self.post(self.node.client(), text="second")
        self.assertEqual(len(self.read(reader).json["comments"]), 2)

    def test_closed_thread_refuses_posts(self) -> None:
        """A thread closed by the tenant refuses new comments with 403."""
        self.post(self.node.client())
        manager = self.node.manager(self.key)
        thread_id = manager.get("/api/v1/manage/threads").json["threads"][0]["id"]
        manager.patch("/api/v1/manage/threads/" + thread_id, json_body={"closed": True})
        refused = self.post(self.node.client(), text="late")
        self.assertEqual(refused.code, 403)
        self.assertEqual(refused.json["error"]["code"], "thread_closed")

    def test_premoderation(self) -> None:
        """With moderation "pre", a new comment is pending: not public until
        the tenant approves it."""
        self.successResultOf(
            self.node.store.update_tenant_settings(
                self.tenant, {"moderation": "pre"}, read_preference=ReadPreference.PRIMARY
            )
        )
        posted = self.post(self.node.client()).json["comment"]
        self.assertEqual(posted["status"], "pending")
        self.assertEqual(self.read(self.node.client()).json["comments"], [])
        manager = self.node.manager(self.key)
        manager.patch("/api/v1/manage/comments/" + posted["id"], json_body={"status": "approved"})
        self.assertEqual(len(self.read(self.node.client()).json["comments"]), 1)


class VoteFlagBlockTests(PublicApiTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.author = self.node.client()
        self.comment = self.post(self.author).json["comment"]
        self.reader = self.node.client()

    def path(self, suffix: str) -> str:
        return "/api/v1/{}/comments/{}/{}".format(self.tenant, self.comment["id"], suffix)

    def test_like_and_unlike(self) -> None:
        """Liking counts once and shows as liked by me; unliking undoes it."""
        liked = self.reader.post(self.path("like"))
        self.assertEqual(liked.json, {"likes": 1, "likedByMe": True})
        (c,) = self.read(self.reader).json["comments"]
        self.assertEqual((c["likes"], c["likedByMe"]), (1, True))
        self.assertEqual(self.read(self.author).json["comments"][0]["likedByMe"], False)
        self.assertEqual(self.reader.delete(self.path("like")).json, {"likes": 0, "likedByMe": False})

    def test_repeated_like(self) -> None:
        """A second like by the same session is a 409 and the count stays."""
        self.reader.post(self.path("like"))
        again = self.reader.post(self.path("like"))
        self.assertEqual(again.code, 409)
        self.assertEqual(again.json["error"]["code"], "like_exists")
        self.assertEqual(self.read(self.reader).json["comments"][0]["likes"], 1)

    def test_unlike_without_like(self) -> None:
        """Removing a like that was never given is a 404."""
        self.reader.post(self.path("flag"))  # gives the reader a session
        self.assertEqual(self.reader.delete(self.path("like")).code, 404)

    def test_flag_once(self) -> None:
        """A flag counts once per session; a repeat is a 409; the tenant sees
        the count, readers do not."""
        self.assertEqual(self.reader.post(self.path("flag")).json, {"flagged": True})
        self.assertEqual(self.reader.post(self.path("flag")).code, 409)
        manager = self.node.manager(self.key)
        self.assertEqual(manager.get("/api/v1/manage/comments/" + self.comment["id"]).json["comment"]["flags"], 1)
        self.assertNotIn("flags", self.read(self.reader).json["comments"][0])

    def test_block_hides_body(self) -> None:
        """A blocked author's comments keep their place but lose their body for
        the viewer who blocked them, and only for that viewer."""
        self.reader.post(self.path("flag"))
        author_id = self.comment["authorId"]
        blocked = self.reader.post("/api/v1/{}/blocks/{}".format(self.tenant, author_id))
        self.assertEqual(blocked.json, {"authorId": author_id, "blocked": True})
        (c,) = self.read(self.reader).json["comments"]
        self.assertEqual((c["authorBlockedByMe"], c["html"]), (True, ""))
        self.assertNotEqual(self.read(self.node.client()).json["comments"][0]["html"], "")
        self.assertEqual(self.reader.post("/api/v1/{}/blocks/{}".format(self.tenant, author_id)).code, 409)
        self.reader.delete("/api/v1/{}/blocks/{}".format(self.tenant, author_id))
        self.assertFalse(self.read(self.reader).json["comments"][0]["authorBlockedByMe"])

    def test_block_self_or_unknown(self) -> None:
        """Blocking oneself is 422; blocking an unknown author is 404."""
        mine = self.author.post("/api/v1/{}/blocks/{}".format(self.tenant, self.comment["authorId"]))
        self.assertEqual(mine.code, 422)
        self.assertEqual(self.reader.post("/api/v1/{}/blocks/nosuchauthor".format(self.tenant)).code, 404)

    def test_like_pending_comment_is_not_found(self) -> None:
        """A comment that is not public cannot be liked, and answers exactly as
        a comment that does not exist."""
        manager = self.node.manager(self.key)
        manager.patch("/api/v1/manage/comments/" + self.comment["id"], json_body={"status": "spam"})
        refused = self.reader.post(self.path("like"))
        self.assertEqual((refused.code, refused.json["error"]["code"]), (404, "comment_not_found"))


class BadInputTests(PublicApiTestCase):
    def assertError(self, response, code: int, error: str) -> None:  # type: ignore[no-untyped-def]
        self.assertEqual((response.code, response.json["error"]["code"]), (code, error), response.body)
        self.assertEqual(response.header("content-type"), "application/json; charset=utf-8")

    def assertNothingWritten(self) -> None:
        page = self.node.manager(self.key).get("/api/v1/manage/threads").json
        self.assertEqual(page["threads"], [])

    def test_malformed_json(self) -> None:
        """A body that is not JSON is a 400 naming the problem; nothing is written."""
        r = self.node.client().post(
            comments_path(self.tenant), data=b"{nope", headers={"content-type": "application/json"}
        )
        self.assertError(r, 400, "malformed_json")
        self.assertNothingWritten()

    def test_lone_surrogate(self) -> None:
        """A comment whose text or name holds a lone surrogate (valid JSON
        syntax, but no text) is a 400 naming it; nothing is written (it was
        a 500: the store's driver could not encode it)."""
        for body in ({"text": "a\ud800b", "displayName": "x"}, {"text": "ok", "displayName": "\udfff"}):
            r = self.node.client().post(comments_path(self.tenant), json_body=body)
            self.assertError(r, 400, "malformed_json")
            self.assertIn("lone surrogate", r.json["error"]["message"])
        self.assertNothingWritten()

    def test_not_an_object(self) -> None:
        """A JSON array body is refused."""
        r = self.node.client().post(comments_path(self.tenant), json_body=[1, 2])
        self.assertError(r, 400, "malformed_json")

    def test_wrong_content_type(self) -> None:
        """A body not sent as application/json is a 415."""
        r = self.node.client().post(
            comments_path(self.tenant), data=b"text=hi", headers={"content-type": "application/x-www-form-urlencoded"}
        )
        self.assertError(r, 415, "unsupported_media_type")

    def test_wrong_types(self) -> None:
        """A field of the wrong type is a 400 naming the field."""
        r = self.node.client().post(comments_path(self.tenant), json_body={"text": 5, "displayName": "A"})
        self.assertError(r, 400, "wrong_type")
        self.assertEqual(r.json["error"]["field"], "text")

    def test_unknown_field(self) -> None:
        """Unknown fields are refused, not ignored."""
        r = self.post(self.node.client(), status="approved")
        self.assertError(r, 400, "unknown_field")
        self.assertNothingWritten()

    def test_missing_field(self) -> None:
        """A missing field is a 400 naming it."""
        r = self.node.client().post(comments_path(self.tenant), json_body={"text": "x"})
        self.assertError(r, 400, "missing_field")
        self.assertEqual(r.json["error"]["field"], "displayName")

    def test_empty_and_long_text(self) -> None:
        """Blank text and text over the limit are refused."""
        self.assertError(self.post(self.node.client(), text="   "), 400, "empty_text")
        self.assertError(self.post(self.node.client(), text="x" * 5001), 400, "text_too_long")
        self.assertNothingWritten()

    def test_bad_display_name(self) -> None:
        """Display names must be 1-64 printable characters."""
        self.assertError(self.post(self.node.client(), name=""), 400, "bad_display_name")
        self.assertError(self.post(self.node.client(), name="a" * 65), 400, "bad_display_name")
        self.assertError(self.post(self.node.client(), name="a\u202eb"), 400, "bad_display_name")
        self.assertError(self.post(self.node.client(), name="a\u200bb"), 400, "bad_display_name")
        self.assertError(self.post(self.node.client(), name="a\x07b"), 400, "bad_display_name")

    def test_display_name_with_a_flag(self) -> None:
        """A flag emoji spelled with tag characters (format characters beyond
        the BMP) is a fine display name, as docs/openapi.yaml's pattern says."""
        scotland = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
        r = self.post(self.node.client(), name="Ann " + scotland)
        self.assertEqual(r.code, 201, r.body)
        self.assertEqual(r.json["comment"]["displayName"], "Ann " + scotland)

    def test_missing_or_bad_url_id(self) -> None:
        """urlId is required, bounded and free of control characters."""
        self.assertError(self.node.client().get("/api/v1/{}/comments".format(self.tenant)), 400, "missing_url_id")
        self.assertError(self.read(self.node.client(), url_id="x" * 2049), 400, "bad_url_id")
        self.assertError(self.read(self.node.client(), url_id="a\nb"), 400, "bad_url_id")

    def test_bad_query(self) -> None:
        """Unknown sorts, out-of-range limits, foreign cursors and repeated
        parameters are 400s."""
        c = self.node.client()
        self.assertError(self.read(c, sort="best"), 400, "bad_sort")
        self.assertError(self.read(c, limit="0"), 400, "bad_query")
        self.assertError(self.read(c, limit="101"), 400, "bad_query")
        self.post(c)
        self.assertError(self.read(c, cursor="garbage!"), 400, "bad_cursor")
        self.assertError(c.get(comments_path(self.tenant) + "&sort=top&sort=newest"), 400, "bad_query")

    def test_unknown_tenant(self) -> None:
        """An unknown or malformed tenant is a 404 on reads and writes."""
        c = self.node.client()
        self.assertError(c.get("/api/v1/nosuchtenant/comments?urlId=a"), 404, "tenant_not_found")
        self.assertError(c.get("/api/v1/bad%20tenant!/comments?urlId=a"), 404, "tenant_not_found")
        r = c.post("/api/v1/nosuchtenant/comments?urlId=a", json_body={"text": "x", "displayName": "A"})
        self.assertError(r, 404, "tenant_not_found")
        self.assertIsNone(c.cookie)

    def test_reply_to_other_thread(self) -> None:
        """A reply whose parent is in another thread is refused; nothing is written."""
        c = self.node.client()
        parent = self.post(c, url_id="https://site.test/one").json["comment"]["id"]
        r = self.post(c, url_id="https://site.test/two", parentId=parent)
        self.assertError(r, 422, "invalid_reference")
        self.assertEqual(self.read(c, url_id="https://site.test/two").json["thread"], None)

    def test_reply_to_unknown_parent(self) -> None:
        """A reply to a comment that does not exist is a 404 and creates
        neither a session nor a thread."""
        c = self.node.client()
        self.assertError(self.post(c, parentId="nosuchcomment"), 404, "parent_comment_not_found")
        self.assertIsNone(c.cookie)
        self.assertNothingWritten()

    def test_forged_cookie(self) -> None:
        """A tampered session cookie is refused on writes (401, cookie cleared),
        and ignored on reads."""
        c = self.node.client()
        self.post(c)
        c.cookie = c.cookie[:-2] + ("AA" if not c.cookie.endswith("AA") else "BB")  # type: ignore[index]
        r = self.post(c, text="as someone else")
        self.assertError(r, 401, "session_invalid")
        self.assertTrue(any("Max-Age=0" in v for v in r.set_cookies()))
        self.assertIsNone(c.cookie)

    def test_expired_cookie(self) -> None:
        """A cookie older than the session lifetime is refused as expired."""
        c = self.node.client()
        self.post(c)
        self.node.clock.advance(self.node.api_config.session_max_age_seconds + 1)
        self.assertError(self.post(c), 401, "session_expired")

    def test_forged_cookie_on_read(self) -> None:
        """Reading with a bad cookie reads as a stranger and clears the cookie."""
        c = self.node.client()
        self.post(c)
        c.cookie = "fe_session=v1.x.y.1.zzzz"
        r = self.read(c)
        self.assertEqual(r.code, 200)
        self.assertFalse(r.json["comments"][0]["isMine"])
        self.assertIsNone(c.cookie)

    def test_cookie_of_another_tenant(self) -> None:
        """A valid cookie of tenant A is worthless at tenant B."""
        other, _ = self.node.create_tenant("Site B")
        c = self.node.client()
        self.post(c)
        r = c.post(comments_path(other), json_body={"text": "x", "displayName": "A"})
        self.assertError(r, 401, "session_invalid")

    def test_rate_limit(self) -> None:
        """Writes beyond the per-session rate are 429 with Retry-After, and
        allowed again once time passes."""
        node = NodeHarness(self, writes_per_minute_per_session=3)
        tenant, _ = node.create_tenant()
        c = node.client()
        body = {"text": "x", "displayName": "A"}
        codes = [c.post(comments_path(tenant), json_body=body).code for _ in range(3)]
        self.assertEqual(codes, [201, 201, 201])
        limited = c.post(comments_path(tenant), json_body=body)
        self.assertEqual((limited.code, limited.json["error"]["code"]), (429, "rate_limited"))
        self.assertEqual(limited.header("retry-after"), "21")
        node.clock.advance(60)
        self.assertEqual(c.post(comments_path(tenant), json_body=body).code, 201)

    def test_per_ip_rate_limit(self) -> None:
        """One address cannot dodge the limit by dropping its cookie."""
        node = NodeHarness(self, writes_per_minute_per_ip=2)
        tenant, _ = node.create_tenant()
        body = {"text": "x", "displayName": "A"}
        codes = [node.client().post(comments_path(tenant), json_body=body).code for _ in range(3)]
        self.assertEqual(codes, [201, 201, 429])

    def test_unknown_route_and_method(self) -> None:
        """Unknown paths are JSON 404s; a wrong method is a 405 with Allow."""
        c = self.node.client()
        self.assertError(c.get("/api/v1/{}/nothing".format(self.tenant)), 404, "no_such_route")
        self.assertError(c.get("/elsewhere"), 404, "not_found")
        r = c.request("PUT", comments_path(self.tenant))
        self.assertError(r, 405, "method_not_allowed")
        self.assertEqual(r.header("allow"), "GET, POST")

    def test_encoded_slash_and_nul_in_path(self) -> None:
        """Path segments with encoded slashes, NULs or dot-segments are 400s."""
        c = self.node.client()
        self.assertError(c.post("/api/v1/{}/comments/a%2Fb/like".format(self.tenant)), 400, "bad_path")
        self.assertError(c.post("/api/v1/{}/comments/a%00b/like".format(self.tenant)), 400, "bad_path")


class SessionHeaderTests(PublicApiTestCase):
    """A browser that keeps no third-party cookie: the page carries the
    session in ``X-FastEdge-Session`` (docs/embedding.md)."""

    def test_write_without_cookie_hands_session_back(self) -> None:
        """A write made without the cookie answers the session's signed
        value in ``X-FastEdge-Session`` (the cookie's value); a write made
        with the cookie does not expose it to the page."""
        c = self.node.client()
        first = self.post(c)
        value = first.header("x-fastedge-session")
        self.assertIsNotNone(value)
        self.assertEqual("fe_session=" + value, c.cookie)  # type: ignore[operator]
        again = self.post(c, text="with the cookie")
        self.assertEqual(again.code, 201)
        self.assertIsNone(again.header("x-fastedge-session"))

    def test_header_acts_as_the_cookie(self) -> None:
        """Without a cookie, the header's session writes and reads as its
        owner: the same author, and the reader's own state on the page."""
        c = self.node.client()
        first = self.post(c)
        author = first.json["comment"]["authorId"]
        value = first.header("x-fastedge-session")
        tab = ApiClient(self.node, headers={"x-fastedge-session": value or ""})
        second = self.post(tab, text="second, by the same tab")
        self.assertEqual(second.code, 201)
        self.assertEqual(second.json["comment"]["authorId"], author)
        page = self.read(tab).json
        self.assertTrue(all(comment["isMine"] for comment in page["comments"]))
        self.assertEqual(page["viewer"]["authorId"], author)

    def test_forged_header_refused(self) -> None:
        """A tampered header value is refused on writes exactly like a
        tampered cookie (401 ``session_invalid``), never a new identity."""
        c = self.node.client()
        value = self.post(c).header("x-fastedge-session") or ""
        forged = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
        tab = ApiClient(self.node, headers={"x-fastedge-session": forged})
        r = self.post(tab)
        self.assertEqual((r.code, r.json["error"]["code"]), (401, "session_invalid"))

    def test_header_of_another_tenant(self) -> None:
        """A valid session of tenant A carried in the header is refused at
        tenant B (401 on writes), and reads there as a stranger."""
        other, _ = self.node.create_tenant("Site B")
        c = self.node.client()
        value = self.post(c).header("x-fastedge-session") or ""
        tab = ApiClient(self.node, headers={"x-fastedge-session": value})
        r = tab.post(comments_path(other), json_body={"text": "x", "displayName": "A"})
        self.assertEqual((r.code, r.json["error"]["code"]), (401, "session_invalid"))
        read = tab.get(comments_path(other))
        self.assertEqual(read.code, 200)
        self.assertNotIn("authorId", read.json.get("viewer") or {})

    def test_cookie_wins_over_header(self) -> None:
        """With both, the cookie is the session (the header is only the
        fallback), so a stale header of another session changes nothing."""
        ann = self.node.client()
        ann_author = self.post(ann).json["comment"]["authorId"]
        bob = self.node.client()
        bob_value = self.post(bob, name="Bob").header("x-fastedge-session") or ""
        r = ann.post(
            comments_path(self.tenant),
            json_body={"text": "x", "displayName": "Ann"},
            headers={"x-fastedge-session": bob_value},
        )
        self.assertEqual(r.json["comment"]["authorId"], ann_author)
