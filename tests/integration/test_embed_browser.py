"""The comment widget in a real browser: Debian's Chromium driven by
Playwright, against a whole node on loopback, embedded cross-origin by a
host page served from another port.

Playwright's sync API is bound to the thread that started it, so every
browser call runs in one worker thread of this class
(:class:`tests.support.browser.BrowserThread`) while the node runs on the reactor; the test
waits on Deferreds for the browser's work. Browser waits have timeouts
(Playwright's own); nothing here sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.support.browser import browser as _browser
from tests.support.nodes import create_tenants, start_node

URL_ID = "https://host.test/articles/1"
#: Where a test may copy its screenshot for docs/embedding.md
#: (``FASTEDGE_DOCS_SCREENSHOT=docs/embedding.png``).
_DOCS_SCREENSHOT = os.environ.get("FASTEDGE_DOCS_SCREENSHOT")


class _HostPage(Resource):
    """The site owner's article page, on its own origin."""

    isLeaf = True

    def __init__(self, html: bytes) -> None:
        super().__init__()
        self._html = html

    def render_GET(self, request: Any) -> bytes:
        # One request per connection: nothing stays open after the test.
        request.setHeader(b"connection", b"close")
        if request.path != b"/article":
            request.setResponseCode(404)
            return b""
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self._html


def _frame(page: Any) -> Any:
    """The widget's frame, once its script is running."""
    handle = page.wait_for_selector("#fastedge-comments iframe")
    frame = handle.content_frame()
    frame.wait_for_selector("html:not(.fe-nojs) #fe-root")
    return frame


class EmbedBrowserTests(TestCase):
    """One browser (per test process); a fresh node and browser contexts per test."""

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.thread = _browser()
        self.browser = self.thread.browser
        self.tmp = os.path.abspath(self.mktemp())
        data_dir = os.path.join(self.tmp, "node")
        ((self.tenant, _),) = create_tenants(os.path.join(data_dir, "fastedge.sqlite3"), ["Host"])
        config = "\n".join(
            [
                "[http]",
                'endpoint = "tcp:0:interface=127.0.0.1"',
                "[tls]",
                'endpoint = "tcp:0:interface=127.0.0.1"',
                "[api]",
                "writes_per_minute_per_ip = 100000",
                "writes_per_minute_per_session = 100000",
                # Every reader here is 127.0.0.1, standing for a crowd at
                # many addresses; the per-address like rule has its own
                # tests (docs/moderation.md).
                "likes_per_address = 100000",
            ]
        )
        self.node = yield start_node(config, data_dir)
        self.addCleanup(self.node.stop)
        self.http = self._http_client()
        html = (
            "<!doctype html><html lang=en><head><title>An article</title></head><body>"
            "<h1>An article</h1><p>Some text worth discussing.</p>"
            '<div id="fastedge-comments" data-tenant="{}" data-url-id="{}"></div>'
            '<script src="{}/widget.js" async></script></body></html>'
        ).format(self.tenant, URL_ID, self.node.http)
        self.host_port = reactor.listenTCP(0, Site(_HostPage(html.encode())), interface="127.0.0.1")
        self.addCleanup(self.host_port.stopListening)
        self.host = "http://127.0.0.1:{}/article".format(self.host_port.getHost().port)
        self.embed = "{}/embed/{}/?urlId={}".format(self.node.http, self.tenant, quote(URL_ID, safe=""))
        # A thread with comments by others, so there is a channel to follow.
        self.bob, self.bob_cookie = yield self.api_post("Bob's first comment", "Bob")
        self.pest, _ = yield self.api_post("Unwanted <b>noise</b> [x](javascript:alert(1))", "Pest")
        self.contexts: list[Any] = []
        # Cleanups run last-in first-out: the browser lets go, the node sees
        # every connection close, then it stops.
        site = self.node.top.getServiceNamed("http").getServiceNamed("http").factory
        self.addCleanup(getattr(site, "wrappedFactory", site).when_idle)
        self.addCleanup(self._close_contexts)

    def _http_client(self) -> Any:
        """treq without a cookie jar: each call carries exactly the session
        cookie the test gives it (treq's default jar would share one)."""
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return HTTPClient(Agent(reactor, pool=pool), cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])))

    def _close_contexts(self) -> defer.Deferred[Any]:
        contexts, self.contexts = self.contexts, []

        def close() -> None:
            for ctx in contexts:
                ctx.close()

        return self.thread.call(close)

    def new_context(self, browser: Any = None, **kw: Any) -> Any:
        ctx = (browser or self.browser).new_context(**kw)
        self.contexts.append(ctx)
        return ctx

    @defer.inlineCallbacks
    def api_post(self, text: str, name: str, cookie: str | None = None) -> Any:
        headers = {"content-type": ["application/json"]}
        if cookie:
            headers["cookie"] = [cookie]
        response = yield self.http.post(
            "{}/api/v1/{}/comments?urlId={}".format(self.node.http, self.tenant, quote(URL_ID, safe="")),
            data=json.dumps({"text": text, "displayName": name}).encode(),
            headers=headers,
        )
        body = yield response.json()
        self.assertEqual(response.code, 201, body)
        set_cookie = (response.headers.getRawHeaders("set-cookie") or [None])[0]
        return body["comment"], (set_cookie.split(";")[0] if set_cookie else cookie)

    @defer.inlineCallbacks
    def api_like(self, comment_id: str, cookie: str | None) -> Any:
        response = yield self.http.post(
            "{}/api/v1/{}/comments/{}/like".format(self.node.http, self.tenant, comment_id),
            headers={"cookie": [cookie]} if cookie else {},
        )
        body = yield response.content()
        self.assertEqual(response.code, 200, body)
        set_cookie = (response.headers.getRawHeaders("set-cookie") or [None])[0]
        return set_cookie.split(";")[0] if set_cookie else cookie

    def artifact(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    # The tests

    @defer.inlineCallbacks
    def test_renders_without_javascript(self) -> None:
        """With JavaScript off, the embed page already holds the thread
        (names, sanitised bodies, counts): it is rendered by the node, and
        hostile text in it is inert."""

        def look() -> dict[str, Any]:
            page = self.new_context(java_script_enabled=False).new_page()
            page.goto(self.embed)
            return {
                "ids": page.eval_on_selector_all(".fe-comment", "els => els.map(e => e.id.slice(2))"),
                "count": page.text_content("#fe-count"),
                "pest": page.inner_html("#c-{} .fe-body".format(self.pest["id"])),
                "nojs": page.eval_on_selector("html", "e => e.className"),
                "links": page.eval_on_selector_all("a", "els => els.map(e => e.getAttribute('href'))"),
            }

        seen = yield self.thread.call(look)
        self.assertEqual(sorted(seen["ids"]), sorted([self.pest["id"], self.bob["id"]]))
        self.assertEqual(seen["count"], "2")
        self.assertEqual(seen["nojs"], "fe-nojs")
        self.assertIn("&lt;b&gt;noise&lt;/b&gt;", seen["pest"])
        self.assertFalse([h for h in seen["links"] if h and "javascript" in h.lower()])

    @defer.inlineCallbacks
    def test_post_reply_like_flag_block_survive_reload(self) -> None:
        """Through the embedded widget (cross-origin): post, reply, like,
        flag and block; after a reload the node's first paint shows the
        reader's own comments, likes and blocks. The iframe is sized by the
        widget's messages, and a message forged by another origin is ignored."""
        bob, pest = self.bob["id"], self.pest["id"]

        def flow() -> dict[str, Any]:
            from playwright.sync_api import expect

            page = self.new_context(viewport={"width": 800, "height": 900}).new_page()
            page.goto(self.host)
            f = _frame(page)
            f.fill("#fe-name", "Ann")
            f.fill("#fe-text", "Hello from **Ann**")
            f.click(".fe-submit")
            mine = f.locator("#fe-comments > .fe-comment.is-mine")
            expect(mine).to_have_count(1)
            mine.locator(".fe-reply").first.click()
            f.fill("#fe-text", "A reply to myself")
            f.click(".fe-submit")
            expect(mine.locator(".fe-replies > .fe-comment.is-mine")).to_have_count(1)
            like = f.locator("#c-{} > article > .fe-actions > .fe-like".format(bob))
            like.click()
            expect(like).to_have_attribute("aria-pressed", "true")
            flag = f.locator("#c-{} > article > .fe-actions > .fe-flag".format(bob))
            flag.click()
            expect(flag).to_have_text("Flagged")
            f.locator("#c-{} > article > .fe-actions > .fe-block".format(pest)).click()
            expect(f.locator("#c-{}".format(pest))).to_have_class("fe-comment is-blocked")

            # Sizing: the iframe follows its content; forged messages do nothing.
            iframe = page.locator("#fastedge-comments iframe")
            content = f.evaluate("() => document.body.getBoundingClientRect().height")
            page.wait_for_function(
                "h => Math.abs(document.querySelector('#fastedge-comments iframe').getBoundingClientRect().height"
                " - h) < 2",
                arg=content,
            )
            before = iframe.evaluate("e => e.style.height")
            page.evaluate("() => window.postMessage({type: 'fastedge:height', height: 7}, '*')")
            page.wait_for_timeout(200)
            after = iframe.evaluate("e => e.style.height")

            page.reload()
            f = _frame(page)
            state = {
                "mine": f.eval_on_selector_all(".fe-comment.is-mine", "els => els.length"),
                "reply_nested": f.eval_on_selector_all(
                    "#fe-comments > .fe-comment.is-mine .fe-replies > .fe-comment.is-mine", "els => els.length"
                ),
                "liked": f.get_attribute("#c-{} > article > .fe-actions > .fe-like".format(bob), "aria-pressed"),
                "likes": f.text_content("#c-{} > article .fe-likes".format(bob)),
                "blocked": f.get_attribute("#c-{}".format(pest), "data-blocked"),
                "pest_body": f.text_content("#c-{} .fe-body".format(pest)),
                "height_before": before,
                "height_after": after,
            }
            page.screenshot(path=self.artifact("embed-host-page.png"), full_page=True)
            f.locator("#fe-root").screenshot(path=self.artifact("embed-thread.png"))
            return state

        state = yield self.thread.call(flow)
        self.assertEqual(state["mine"], 2)
        self.assertEqual(state["reply_nested"], 1)
        self.assertEqual(state["liked"], "true")
        self.assertEqual(state["likes"], "1")
        self.assertEqual(state["blocked"], "true")
        self.assertNotIn("noise", state["pest_body"])
        self.assertEqual(state["height_before"], state["height_after"])
        self.assertTrue(os.path.exists(self.artifact("embed-thread.png")))
        if _DOCS_SCREENSHOT:
            shutil.copy(self.artifact("embed-thread.png"), _DOCS_SCREENSHOT)

    @defer.inlineCallbacks
    def test_live_comment_behind_new_comments_button(self) -> None:
        """Two readers on one thread: a comment posted by one appears for the
        other behind the "new comments" button (not above what they read),
        and shows once the button is pressed."""

        def flow() -> dict[str, Any]:
            from playwright.sync_api import expect

            reader = _frame(self.new_context().new_page().goto(self.host).frame.page)
            expect(reader.locator("#fe-live")).to_have_text("Live")
            writer = _frame(self.new_context().new_page().goto(self.host).frame.page)
            writer.fill("#fe-name", "Writer")
            writer.fill("#fe-text", "Fresh from the other tab")
            started = time.monotonic()
            writer.click(".fe-submit")
            button = reader.locator("#fe-new")
            expect(button).to_have_text("1 new comment", timeout=10_000)
            latency = time.monotonic() - started
            first = reader.eval_on_selector("#fe-comments > .fe-comment", "e => e.id.slice(2)")
            button.click()
            expect(reader.locator("#fe-comments > .fe-comment").first).to_contain_text("Fresh from the other tab")
            return {"latency": latency, "first_before_click": first}

        seen = yield self.thread.call(flow)
        print("\nlive comment behind the button after {:.3f} s".format(seen["latency"]))
        self.assertIn(seen["first_before_click"], (self.pest["id"], self.bob["id"]))
        # The issue asks for "within a second"; the machine is shared, so the
        # figure is printed and only a gross regression fails.
        self.assertLess(seen["latency"], 5.0)

    @defer.inlineCallbacks
    def test_layout_stable_while_live_comments_arrive(self) -> None:
        """While 20 live comments arrive and like counts change, the page's
        cumulative layout shift (layout-shift entries without recent input,
        from the browser's PerformanceObserver) stays under 0.1."""

        def open_reader() -> Any:
            from playwright.sync_api import expect

            page = self.new_context(viewport={"width": 800, "height": 700}).new_page()
            page.goto(self.host)
            f = _frame(page)
            expect(f.locator("#fe-live")).to_have_text("Live")
            observe = (
                "() => { window.__cls = 0; new PerformanceObserver(l => { for (const e of l.getEntries())"
                " if (!e.hadRecentInput) window.__cls += e.value; }).observe({type: 'layout-shift', buffered: true}); }"
            )
            f.evaluate(observe)
            page.evaluate(observe)
            return page, f

        page, f = yield self.thread.call(open_reader)
        cookie = None
        for i in range(20):
            _, cookie = yield self.api_post("live comment {}".format(i), "Crowd", cookie)
            if i % 5 == 0:
                yield self.api_like(self.bob["id"], None)

        def measure() -> dict[str, Any]:
            from playwright.sync_api import expect

            expect(f.locator("#fe-new")).to_have_text("20 new comments")
            expect(f.locator("#c-{} .fe-likes".format(self.bob["id"]))).to_have_text("4")
            measured = {"frame": f.evaluate("() => window.__cls"), "host": page.evaluate("() => window.__cls")}
            # A control: the observer does see a shift when content is
            # inserted above what the reader sees (what the widget avoids).
            f.evaluate(
                "() => { const p = document.createElement('p'); p.textContent = 'inserted';"
                " p.style.height = '200px'; document.getElementById('fe-comments').prepend(p); }"
            )
            f.wait_for_function("() => window.__cls > 0")
            return measured

        cls = yield self.thread.call(measure)
        print("\nCLS while 20 live comments arrived: widget {:.4f}, host page {:.4f}".format(cls["frame"], cls["host"]))
        self.assertLess(cls["frame"], 0.1)
        self.assertLess(cls["host"], 0.1)

    @defer.inlineCallbacks
    def test_killed_live_connection_recovers(self) -> None:
        """The node drops the widget's live connection; comments posted while
        it is down all arrive once it reconnects (from its last sequence
        number), each exactly once."""

        def open_reader() -> Any:
            from playwright.sync_api import expect

            f = _frame(self.new_context().new_page().goto(self.host).frame.page)
            expect(f.locator("#fe-live")).to_have_text("Live")
            return f

        f = yield self.thread.call(open_reader)
        live = self.node.top.getServiceNamed("live").live
        (conn,) = live.connections["websocket"]
        conn.transport.abortConnection()
        ids = []
        for i in range(3):
            comment, _ = yield self.api_post("while you were away {}".format(i), "Other")
            ids.append(comment["id"])

        def check() -> dict[str, int]:
            from playwright.sync_api import expect

            expect(f.locator("#fe-new")).to_have_text("3 new comments", timeout=15_000)
            f.click("#fe-new")
            return {cid: f.locator("#c-" + cid).count() for cid in ids}

        counts = yield self.thread.call(check)
        self.assertEqual(counts, {cid: 1 for cid in ids})

    @defer.inlineCallbacks
    def test_falls_back_to_sse(self) -> None:
        """Where WebSocket is unavailable the widget follows the thread over
        SSE (``/live/events``), from the position it was rendered at."""

        def open_reader() -> Any:
            from playwright.sync_api import expect

            ctx = self.new_context()
            # Every frame of this context, the widget's included, lacks WebSocket.
            ctx.add_init_script("delete window.WebSocket")
            f = _frame(ctx.new_page().goto(self.host).frame.page)
            expect(f.locator("#fe-live")).to_have_text("Live")
            return f

        f = yield self.thread.call(open_reader)
        live = self.node.top.getServiceNamed("live").live
        self.assertEqual((len(live.connections["sse"]), len(live.connections["websocket"])), (1, 0))
        comment, _ = yield self.api_post("over server-sent events", "Other")

        def check() -> int:
            from playwright.sync_api import expect

            expect(f.locator("#fe-new")).to_have_text("1 new comment")
            f.click("#fe-new")
            return f.locator("#c-" + comment["id"]).count()

        self.assertEqual((yield self.thread.call(check)), 1)

    @defer.inlineCallbacks
    def test_blocked_third_party_cookies_fall_back_to_tab_session(self) -> None:
        """In a browser that blocks third-party cookies, on a host page of
        another site (``localhost`` embedding ``127.0.0.1``), the session
        cookie is never stored and the frame gets no storage either; the
        host page's tab keeps the session for it (through widget.js) and the
        frame sends it in ``X-FastEdge-Session``: a second post is by the
        same author, and after a reload the reader's comments and likes
        still show."""
        bob = self.bob["id"]
        host = self.host.replace("127.0.0.1", "localhost")

        def flow() -> dict[str, Any]:
            from playwright.sync_api import expect

            ctx = self.new_context(self.thread.blocking())
            page = ctx.new_page()
            page.goto(host)
            f = _frame(page)
            for text in ("First, without cookies", "Second, same reader"):
                f.fill("#fe-name", "Tab")
                f.fill("#fe-text", text)
                f.click(".fe-submit")
                expect(f.locator("#fe-comments > .fe-comment", has_text=text)).to_have_count(1)
            like = f.locator("#c-{} > article > .fe-actions > .fe-like".format(bob))
            like.click()
            expect(like).to_have_attribute("aria-pressed", "true")
            page.reload()
            f = _frame(page)
            expect(f.locator(".fe-comment.is-mine")).to_have_count(2)
            return {
                "authors": f.eval_on_selector_all(".fe-comment.is-mine", "els => els.map(e => e.dataset.author)"),
                "liked": f.get_attribute("#c-{} > article > .fe-actions > .fe-like".format(bob), "aria-pressed"),
                "cookies": [c["name"] for c in ctx.cookies()],
                "frame_storage": f.evaluate("() => { try { return !!sessionStorage; } catch (e) { return false; } }"),
                "kept": page.evaluate("() => Object.keys(sessionStorage)"),
            }

        seen = yield self.thread.call(flow)
        self.assertEqual(seen["cookies"], [])
        # This browser blocks the frame's storage too: the host page's tab keeps it.
        self.assertFalse(seen["frame_storage"])
        self.assertEqual(len(set(seen["authors"])), 1)
        self.assertEqual(seen["liked"], "true")
        self.assertEqual(seen["kept"], ["fastedge:session:" + self.tenant])
