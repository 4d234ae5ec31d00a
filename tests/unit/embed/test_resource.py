"""The embed page over a real SQLite store: the viewer's state in the first
paint, paging, sort, plain-form posting, empty states and bad input."""

from __future__ import annotations

import gzip
import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from tests.support.nodes import NodeHarness, Response

FORM = {"content-type": "application/x-www-form-urlencoded"}


class _Page(HTMLParser):
    """The page's comments as a browser would see them (no script runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.comments: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.parents: dict[str, str | None] = {}
        self.scripts: list[dict[str, str | None]] = []
        self.inline_handlers: list[str] = []
        self.links: list[str] = []
        self._stack: list[str | None] = []
        self._in_template = 0
        self._body_of: str | None = None
        self._depth = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name, _ in attrs:
            if name.startswith("on") or name == "style":
                self.inline_handlers.append(name)
        if tag == "template":
            self._in_template += 1
        if self._in_template:
            return
        if tag == "script":
            self.scripts.append(a)
        if tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))
        if tag == "li" and "fe-comment" in (a.get("class") or ""):
            cid = str(a["id"])[2:]
            parent = next((p for p in reversed(self._stack) if p), None)
            self.comments[cid] = {"class": a["class"], "blocked": a.get("data-blocked"), "body": ""}
            self.order.append(cid)
            self.parents[cid] = parent
            self._stack.append(cid)
        elif tag == "li":
            self._stack.append(None)
        if tag == "button" and "fe-like" in (a.get("class") or "") and self._stack:
            self.comments[str(self._stack[-1])]["liked"] = a.get("aria-pressed")
        if tag == "div" and a.get("class") == "fe-body":
            self._body_of = self._stack[-1]

    def handle_endtag(self, tag: str) -> None:
        if tag == "template":
            self._in_template -= 1
        if self._in_template:
            return
        if tag == "li" and self._stack:
            self._stack.pop()
        if tag == "div":
            self._body_of = None

    def handle_data(self, data: str) -> None:
        if self._in_template:
            return
        self.text.append(data)
        if self._body_of is not None:
            self.comments[self._body_of]["body"] += data


def parse(response: Response) -> _Page:
    page = _Page()
    page.feed(response.body.decode("utf-8"))
    return page


class EmbedTestCase(SynchronousTestCase):
    url_id = "https://site.test/article"

    def setUp(self) -> None:
        self.node = NodeHarness(self, page_size=3)
        self.tenant, self.key = self.node.create_tenant("Site A")

    def api_post(self, client: Any, text: str, name: str = "Ann", **extra: str) -> dict[str, Any]:
        body = {"text": text, "displayName": name}
        body.update(extra)
        r = client.post("/api/v1/{}/comments?urlId={}".format(self.tenant, quote(self.url_id, safe="")), json_body=body)
        self.assertEqual(r.code, 201, r.body)
        return r.json["comment"]  # type: ignore[no-any-return]

    def embed_path(self, tenant: str | None = None, **query: str) -> str:
        q = {"urlId": self.url_id}
        q.update(query)
        return "/embed/{}/?{}".format(
            tenant or self.tenant, "&".join("{}={}".format(k, quote(v, safe="")) for k, v in q.items())
        )

    def page(self, client: Any, **query: str) -> Response:
        return client.get(self.embed_path(**query))  # type: ignore[no-any-return]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.node.registry.get_sample_value(name, labels or {}) or 0.0


class FirstPaintTests(EmbedTestCase):
    def test_viewer_state_in_first_paint(self) -> None:
        """The page a reader with a session gets already shows what they
        liked, which comments are theirs, and hides the comments of authors
        they blocked; a stranger gets the same thread with none of that."""
        ann, bob = self.node.client(), self.node.client()
        mine = self.api_post(ann, "mine")
        bobs = self.api_post(bob, "by bob", name="Bob")
        self.assertEqual(ann.post("/api/v1/{}/comments/{}/like".format(self.tenant, bobs["id"])).code, 200)
        other = self.node.client()
        pest = self.api_post(other, "pest text", name="Pest")
        self.assertEqual(ann.post("/api/v1/{}/blocks/{}".format(self.tenant, pest["authorId"])).code, 200)

        seen = parse(self.page(ann))
        self.assertIn("is-mine", seen.comments[mine["id"]]["class"])
        self.assertNotIn("is-mine", seen.comments[bobs["id"]]["class"])
        self.assertEqual(seen.comments[bobs["id"]]["liked"], "true")
        self.assertEqual(seen.comments[mine["id"]]["liked"], "false")
        self.assertEqual(seen.comments[pest["id"]]["blocked"], "true")
        self.assertNotIn("pest text", seen.comments[pest["id"]]["body"])
        self.assertIn("You blocked this author", seen.comments[pest["id"]]["body"])

        stranger = parse(self.page(self.node.client()))
        for c in stranger.comments.values():
            self.assertNotIn("is-mine", c["class"])
            self.assertEqual(c["liked"], "false")
        self.assertIn("pest text", stranger.comments[pest["id"]]["body"])

    def test_nested_replies_and_counts(self) -> None:
        """Replies are nested under their parents, and the thread's count is shown."""
        ann = self.node.client()
        top = self.api_post(ann, "top")
        reply = self.api_post(ann, "reply", parentId=top["id"])
        deeper = self.api_post(ann, "deeper", parentId=reply["id"])
        response = self.page(self.node.client())
        seen = parse(response)
        self.assertEqual(seen.parents[reply["id"]], top["id"])
        self.assertEqual(seen.parents[deeper["id"]], reply["id"])
        self.assertIn(b'<span id="fe-count">3</span> comments', response.body)

    def test_sort_and_paging(self) -> None:
        """``sort`` orders the page like the JSON API, and "Show more comments"
        links to the next page (a plain link: it works without script)."""
        ann = self.node.client()
        ids = []
        for i in range(5):
            ids.append(self.api_post(ann, "c{}".format(i))["id"])
            self.node.clock.advance(1)
        newest = parse(self.page(self.node.client()))
        self.assertEqual(newest.order, list(reversed(ids))[:3])
        oldest = parse(self.page(self.node.client(), sort="oldest"))
        self.assertEqual(oldest.order, ids[:3])
        (more,) = [link for link in oldest.links if "cursor=" in link]
        second = parse(self.node.client().get("/embed/{}/{}".format(self.tenant, more)))
        self.assertEqual(second.order, ids[3:])
        self.assertFalse([link for link in second.links if "cursor=" in link])

    def test_hostile_text_is_inert(self) -> None:
        """HTML, script, ``javascript:`` links and markdown link tricks in a
        comment or a display name render as inert text; the page has no
        inline script, handler or style attribute for them to join."""
        ann = self.node.client()
        self.api_post(
            ann,
            "<script>alert(1)</script> [x](javascript:alert(1)) <img src=x onerror=alert(1)> "
            "[y](  javascript:alert(2) ) " + "W" * 3000,
            name='"><script>alert(3)</script>',
        )
        response = self.page(self.node.client())
        body = response.body.decode()
        seen = parse(response)
        self.assertEqual([s.get("src") for s in seen.scripts], ["/embed/static/embed.js"])
        self.assertEqual(seen.inline_handlers, [])
        self.assertFalse([link for link in seen.links if "javascript" in link.lower()])
        self.assertNotIn("<script>alert", body)
        self.assertNotIn("<img", body)

    def test_strict_csp(self) -> None:
        """The page forbids inline script and eval, and may be framed by any
        site until the tenant lists its own."""
        response = self.page(self.node.client())
        csp = response.header("content-security-policy") or ""
        self.assertIn("script-src 'self';", csp)
        self.assertNotIn("unsafe", csp)
        self.assertIn("frame-ancestors *", csp)
        self.assertEqual(response.header("cache-control"), "no-store")
        self.assertEqual(response.header("x-content-type-options"), "nosniff")

    def test_forged_slot_marker_is_text(self) -> None:
        """Private-use characters in a comment (what the page's slots are made
        of) are just text: they cannot make a slot."""
        ann = self.node.client()
        self.api_post(ann, "\ue000liked:abc\ue001 \ue000body:\ue001")
        response = self.page(ann)
        self.assertEqual(response.code, 200)
        self.assertIn("\ue000liked:abc\ue001".encode(), response.body)


class EmptyStateTests(EmbedTestCase):
    def test_unknown_tenant(self) -> None:
        """An unknown (or malformed) tenant renders the friendly empty state with 404."""
        for tenant in ("AAAAAAAAAAAAAAAA", "not%20an%20id"):
            response = self.node.client().get(self.embed_path(tenant=tenant))
            self.assertEqual(response.code, 404)
            self.assertIn(b"There are no comments here.", response.body)
            self.assertIn(b"text/html", (response.header("content-type") or "").encode())

    def test_bad_url_id(self) -> None:
        """A missing, empty, overlong or control-character urlId is the empty
        state with 404, never an error page."""
        for path in (
            "/embed/{}/".format(self.tenant),
            "/embed/{}/?urlId=".format(self.tenant),
            "/embed/{}/?urlId={}".format(self.tenant, "x" * 5000),
            "/embed/{}/?urlId=a%07b".format(self.tenant),
        ):
            response = self.node.client().get(path)
            self.assertEqual(response.code, 404, path)
            self.assertIn(b"There are no comments here.", response.body)

    def test_missing_slash(self) -> None:
        """The page's address without its final slash redirects to it (the
        session cookie's path has the slash)."""
        response = self.node.client().get("/embed/{}?urlId=a%20b".format(self.tenant))
        self.assertEqual(response.code, 301)
        self.assertEqual(response.header("location"), "/embed/{}/?urlId=a%20b".format(self.tenant))

    def test_thread_without_comments(self) -> None:
        """A page nobody has commented on yet is a 200 inviting the first
        comment (with the form)."""
        response = self.page(self.node.client())
        self.assertEqual(response.code, 200)
        self.assertIn(b"No comments yet", response.body)
        self.assertIn(b'<form id="fe-form"', response.body)

    def test_bad_sort(self) -> None:
        """A bad sort, empty included (as in the JSON API and the spec's
        enum), is the JSON API's 400, as a page."""
        for sort in ("sideways", ""):
            response = self.page(self.node.client(), sort=sort)
            self.assertEqual(response.code, 400, sort)
            self.assertIn(b"sort must be newest, oldest or top", response.body)

    def test_repeated_query_parameter(self) -> None:
        """A query parameter given twice is the API's 400 ``bad_query`` as a
        page, for GET, HEAD and POST alike."""
        path = self.embed_path() + "&sort=top&sort=top"
        client = self.node.client()
        for method in ("GET", "HEAD", "POST"):
            response = client.request(method, path, data=b"text=hi&displayName=Ann", headers=FORM)
            self.assertEqual(response.code, 400, method)
            self.assertIn("text/html", response.header("content-type") or "")
            if method != "HEAD":
                self.assertIn(b"given more than once", response.body)

    def test_unlisted_method(self) -> None:
        """A method the page does not take is the transport's JSON 405 with
        ``Allow`` (docs/http-errors.md), not a page."""
        for method in ("PUT", "DELETE", "TRACE", "BREW"):
            response = self.node.client().request(method, self.embed_path())
            self.assertEqual((response.code, response.json["error"]["code"]), (405, "method_not_allowed"), method)
            self.assertEqual(response.header("allow"), "GET, HEAD, POST")


class FormPostTests(EmbedTestCase):
    def form_post(self, client: Any, body: bytes, headers: dict[str, str] | None = None, **query: str) -> Response:
        return client.request(  # type: ignore[no-any-return]
            "POST", self.embed_path(**query), data=body, headers=dict(FORM, **(headers or {}))
        )

    def test_post_redirect_get(self) -> None:
        """Posting with the plain form (no script) answers 303 to the page at
        the new comment, with the session cookie for both the page and the
        API; the page then shows the comment as the poster's own."""
        ann = self.node.client()
        response = self.form_post(
            ann, b"text=hello+from+a+form&displayName=Ann", headers={"origin": "http://node.test"}
        )
        self.assertEqual(response.code, 303)
        location = response.header("location") or ""
        self.assertTrue(location.startswith("/embed/{}/?urlId=".format(self.tenant)), location)
        self.assertIn("#c-", location)
        paths = sorted(c.split("Path=")[1].split(";")[0] for c in response.set_cookies())
        self.assertEqual(
            paths,
            ["/api/v1/{}/".format(self.tenant), "/embed/{}/".format(self.tenant), "/media/{}/".format(self.tenant)],
        )
        seen = parse(ann.get(location.split("#")[0]))
        (cid,) = seen.order
        self.assertEqual(cid, location.split("#c-")[1])
        self.assertIn("is-mine", seen.comments[cid]["class"])
        self.assertEqual(self.metric("fastedge_embed_form_posts_total", {"outcome": "posted"}), 1)

    def test_reply_without_script(self) -> None:
        """The Reply link opens the page with the form replying to that
        comment; posting it makes a nested reply."""
        ann = self.node.client()
        top = self.api_post(ann, "top")
        page = self.page(ann, replyTo=top["id"])
        self.assertIn('name="parentId" value="{}"'.format(top["id"]).encode(), page.body)
        body = "text=a+reply&displayName=Ann&parentId={}".format(top["id"]).encode()
        self.assertEqual(self.form_post(ann, body).code, 303)
        seen = parse(self.page(ann))
        (reply,) = [cid for cid, parent in seen.parents.items() if parent == top["id"]]
        self.assertIn("a reply", seen.comments[reply]["body"])

    def test_errors_shown_in_page(self) -> None:
        """A refused form gets the JSON API's status and error (code and
        message) in the page, with what the reader typed kept."""
        ann = self.node.client()
        cases = [
            (b"text=&displayName=Ann", 400, "empty_text"),
            (b"text=" + b"x" * 5001 + b"&displayName=Ann", 400, "text_too_long"),
            (b"text=hi&displayName=", 400, "bad_display_name"),
            (b"text=hi&displayName=Ann&evil=1", 400, "unknown_field"),
            (b"text=hi&text=again&displayName=Ann", 400, "malformed_form"),
            (b"text=%ff%fe&displayName=Ann", 400, "malformed_form"),
            (b"text=hi", 400, "missing_field"),
            (b"text=hi&displayName=Ann&parentId=AAAAAAAAAAAAAAAA", 404, "parent_comment_not_found"),
        ]
        for body, status, code in cases:
            response = self.form_post(ann, body)
            self.assertEqual(response.code, status, code)
            self.assertIn("({})".format(code).encode(), response.body, code)
            self.assertIn(b'role="alert"', response.body)
        kept = self.form_post(ann, b"text=keep+me&displayName=")
        self.assertIn(b">keep me</textarea>", kept.body)
        wrong_type = ann.request(
            "POST", self.embed_path(), data=b'{"text":"hi"}', headers={"content-type": "application/json"}
        )
        self.assertEqual(wrong_type.code, 415)
        self.assertIn(b"(unsupported_media_type)", wrong_type.body)

    def test_cross_site_form_refused(self) -> None:
        """A form posted from another site (its ``Origin`` is not this node's)
        is refused with 403: another site cannot post as the reader."""
        response = self.form_post(
            self.node.client(), b"text=hi&displayName=Ann", headers={"origin": "https://evil.test"}
        )
        self.assertEqual(response.code, 403)
        self.assertIn(b"(cross_site_post)", response.body)
        self.assertNotIn(b"is-mine", response.body)

    def test_bad_tenant_post(self) -> None:
        """A form posted to an unknown tenant gets the empty state with 404."""
        response = self.form_post(self.node.client(), b"text=hi&displayName=Ann", tenant=None)
        ok = self.node.client().request(
            "POST", self.embed_path(tenant="AAAAAAAAAAAAAAAA"), data=b"text=hi&displayName=Ann", headers=FORM
        )
        self.assertEqual(response.code, 303)
        self.assertEqual(ok.code, 404)


class CacheTests(EmbedTestCase):
    def test_rendered_once_per_cached_page(self) -> None:
        """Anonymous and personal pages of one cached page share one HTML
        render (personal state is spliced in); a write through this node
        drops it, so the next reader sees the new comment."""
        ann = self.node.client()
        self.api_post(ann, "first")
        for client in (self.node.client(), self.node.client(), ann):
            self.assertEqual(self.page(client).code, 200)
        self.assertEqual(self.metric("fastedge_embed_renders_total"), 1)
        self.assertEqual(self.metric("fastedge_embed_pages_total", {"kind": "anonymous"}), 2)
        self.assertEqual(self.metric("fastedge_embed_pages_total", {"kind": "personal"}), 1)
        self.api_post(ann, "second")
        seen = parse(self.page(self.node.client()))
        self.assertEqual(len(seen.order), 2)
        self.assertEqual(self.metric("fastedge_embed_renders_total"), 2)

    def raw_get(self, headers: dict[bytes, list[bytes]]) -> tuple[int, Any, bytes]:
        """A GET with exactly these headers (treq's client would add its own
        Accept-Encoding and decode the answer)."""
        from treq.testing import RequestTraversalAgent
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        agent = RequestTraversalAgent(self.node.site.resource)
        d = agent.request(b"GET", ("http://node.test" + self.embed_path()).encode(), Headers(headers))
        agent.flush()
        response = self.successResultOf(d)
        body = readBody(response)
        agent.flush()
        return response.code, response.headers, self.successResultOf(body)

    def test_strangers_get_gzip(self) -> None:
        """A stranger whose browser accepts gzip gets the shared page
        compressed (made once); a reader with a session, or a client that
        refuses gzip, gets it plain."""
        ann = self.node.client()
        self.api_post(ann, "first")
        _, headers, plain = self.raw_get({})
        self.assertIsNone(headers.getRawHeaders(b"content-encoding"))
        self.assertEqual(headers.getRawHeaders(b"vary"), [b"Accept-Encoding, Cookie, X-FastEdge-Session"])
        _, headers, zipped = self.raw_get({b"accept-encoding": [b"br, gzip;q=0.8"]})
        self.assertEqual(headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(gzip.decompress(zipped), plain)
        _, headers, _ = self.raw_get({b"accept-encoding": [b"gzip; q=0"]})
        self.assertIsNone(headers.getRawHeaders(b"content-encoding"))
        assert ann.cookie is not None
        _, headers, mine = self.raw_get({b"accept-encoding": [b"gzip"], b"cookie": [ann.cookie.encode()]})
        self.assertIsNone(headers.getRawHeaders(b"content-encoding"))
        self.assertIn(b"is-mine", mine)

    def test_personal_page_matches_a_fresh_render(self) -> None:
        """Splicing a reader's state into the shared render gives the same
        document as rendering that reader's page from scratch."""
        ann, bob = self.node.client(), self.node.client()
        a = self.api_post(ann, "a")
        self.api_post(bob, "b", name="Bob")
        ann.post("/api/v1/{}/comments/{}/like".format(self.tenant, a["id"]))
        self.page(self.node.client())  # fills the shared render
        spliced = self.page(ann).body
        self.node.api.cache.invalidate((self.tenant, "url", self.url_id))
        fresh = self.page(ann).body
        self.assertEqual(spliced, fresh)
        self.assertEqual(self.metric("fastedge_embed_renders_total"), 2)


class StaticTests(EmbedTestCase):
    def test_first_paint_script_size(self) -> None:
        """The script modules and style sheet of the first paint stay under
        20 KB gzipped (printed, for the closing note)."""
        total = 0
        for name in ("embed.js", "live.js", "embed.css"):
            response = self.node.client().get("/embed/static/" + name)
            self.assertEqual(response.code, 200)
            total += len(gzip.compress(response.body, 9))
        print("\nfirst-paint JS+CSS gzipped: {} bytes".format(total))
        self.assertLess(total, 20 * 1024)

    def test_static_files(self) -> None:
        """Scripts are served as JavaScript with an ETag; anything else under
        /embed/static is the empty 404."""
        response = self.node.client().get("/embed/static/embed.js")
        self.assertEqual(response.header("content-type"), "text/javascript; charset=utf-8")
        etag = response.header("etag") or ""
        again = self.node.client().get("/embed/static/embed.js", headers={"if-none-match": etag})
        self.assertEqual(again.code, 304)
        self.assertEqual(self.node.client().get("/embed/static/../api").code, 404)
        self.assertEqual(self.node.client().get("/embed/static/nope.js").code, 404)

    def test_static_unlisted_method(self) -> None:
        """Static files are GET and HEAD only: any other method (TRACE
        included) is the transport's JSON 405 with ``Allow``, never the file."""
        client = self.node.client()
        self.assertEqual(client.request("HEAD", "/embed/static/embed.js").code, 200)
        for method in ("POST", "PUT", "DELETE", "TRACE", "OPTIONS"):
            response = client.request(method, "/embed/static/embed.js")
            self.assertEqual((response.code, response.json["error"]["code"]), (405, "method_not_allowed"), method)
            self.assertEqual(response.header("allow"), "GET, HEAD")

    def test_widget_snippet(self) -> None:
        """``/widget.js`` is served for any site to include, and checks the
        origin of every message it acts on."""
        response = self.node.client().get("/widget.js")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("access-control-allow-origin"), "*")
        self.assertTrue(re.search(rb"ev\.origin !== origin \|\| ev\.source !== frame\.contentWindow", response.body))


class LivePositionTests(SynchronousTestCase):
    def test_page_carries_the_position_it_was_read_at(self) -> None:
        """The page names the live channel position taken before its read
        (so following from it misses nothing), and none when the node holds
        no state for the channel (it never makes one up)."""
        from treq.testing import StubTreq
        from twisted.internet.task import Clock

        from tests.unit.live.common import World

        world = World(Clock())
        url = "/embed/{}/?urlId={}".format(world.tenant_a.id, quote(world.url, safe=""))

        def page() -> bytes:
            stub = StubTreq(world.node.site.resource)
            d = stub.get("http://node.test" + url)
            stub.flush()
            return self.successResultOf(self.successResultOf(d).content())  # type: ignore[no-any-return]

        self.assertIn(b'data-epoch="" data-seq="0"', page())
        self.assertIsNone(world.node.hub.position((world.tenant_a.id, world.thread_a.id)))
        author = world.author(world.tenant_a)
        for _ in range(3):
            world.comment(world.tenant_a, world.thread_a, author)
        world.node.api.cache.invalidate((world.tenant_a.id, "thread", world.thread_a.id))
        stamp = world.node.hub.position((world.tenant_a.id, world.thread_a.id))
        self.assertIn('data-epoch="{}" data-seq="3"'.format(stamp.epoch).encode(), page())
