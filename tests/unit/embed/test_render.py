"""The embed page's rendering: slots, splicing, theme and CSP (no reactor)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.api.pageview import PageView
from fastedge.embed import render
from fastedge.embed.render import EmbedRenderer, FormState, PageContext, Theme, content_security_policy
from fastedge.store.model import Comment, CommentStatus, Sort, Thread, ThreadPage, ViewerState


def comment(cid: str, author: str, name: str = "N", html: str = "<p>x</p>", parent: str | None = None) -> Comment:
    return Comment(
        id=cid,
        tenant_id="t",
        thread_id="th",
        parent_id=parent,
        root_id=parent or cid,
        author_id=author,
        display_name=name,
        body_source="",
        body_html=html,
        status=CommentStatus.APPROVED,
        created_ms=1_767_225_600_000,
        edited_ms=None,
        like_count=3,
        flag_count=0,
    )


CTX = PageContext(
    tenant_id="t", url_id="u", sort=Sort.NEWEST, limit=30, cursor=None, display_name_max=64, comment_max=5000
)


def view(comments: list[Comment], replies: list[Comment] = ()) -> PageView:  # type: ignore[assignment]
    thread = Thread(id="th", tenant_id="t", url_id="u", title="T", closed=False, created_ms=0, comment_count=2)
    return PageView(ThreadPage(thread, comments, list(replies), None), position=("epochepochepo", 7))


class SplicingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.renderer = EmbedRenderer()

    def personal(self, v: PageView, author: str | None, state: ViewerState | None, **kw: object) -> str:
        shared, _ = self.renderer.rendered(v, CTX)
        return self.renderer.personal(
            shared, CTX, author_id=author, state=state, viewer=None, form=FormState(), theme=kw.get("theme", Theme())  # type: ignore[arg-type]
        ).decode()

    def test_rendered_once(self) -> None:
        """The shared rendering is made once per page view and reused."""
        v = view([comment("a", "ann")])
        _, made = self.renderer.rendered(v, CTX)
        again, made_again = self.renderer.rendered(v, CTX)
        self.assertEqual((made, made_again), (True, False))
        self.assertIs(again, v.derived["embed.html"])

    def test_state_slots(self) -> None:
        """Liked, mine and blocked are the reader's, per comment; the live
        position the page was read at is in the page."""
        v = view([comment("a", "ann"), comment("b", "bob", html="<p>bob text</p>")])
        html = self.personal(v, "ann", ViewerState(liked=frozenset({"a"}), blocked_authors=frozenset({"bob"})))
        self.assertIn('class="fe-comment is-mine" id="c-a"', html)
        self.assertIn('class="fe-comment is-blocked" id="c-b"', html)
        self.assertNotIn("bob text", html)
        self.assertEqual(len(re.findall(r'aria-pressed="true"', html)), 1)
        self.assertIn('data-epoch="epochepochepo" data-seq="7"', html)

    def test_theme_block_and_hash(self) -> None:
        """A theme adds one style block whose hash the CSP allows."""
        theme = Theme(accent="#aa0000", font="Georgia, serif")
        html = self.personal(view([]), None, None, theme=theme)
        self.assertIn("<style>:root{--fe-accent:#aa0000;--fe-font:Georgia, serif;}</style>", html)
        csp = content_security_policy((), render.theme_hashes(theme)).decode()
        self.assertIn("style-src 'self' '{}'".format(render.style_hash(theme.css())), csp)

    def test_frame_ancestors(self) -> None:
        """The tenant's allowed sites become ``frame-ancestors``; none means any."""
        self.assertIn(b"frame-ancestors *", content_security_policy())
        self.assertIn(
            b"frame-ancestors https://a.test https://b.test",
            content_security_policy(("https://a.test", "https://b.test")),
        )

    @settings(max_examples=60, deadline=None)
    @given(
        names=st.lists(st.text(max_size=40), min_size=1, max_size=4),
        liked=st.sets(st.integers(0, 3)),
        blocked=st.booleans(),
    )
    def test_any_text_is_escaped_and_no_slot_leaks(self, names: list[str], liked: set[int], blocked: bool) -> None:
        """Whatever the display names hold, they come out escaped, no slot
        marker survives into a page, and the page has exactly its slots."""
        comments = [comment("c{}".format(i), "a{}".format(i), name=n) for i, n in enumerate(names)]
        state = ViewerState(
            liked=frozenset("c{}".format(i) for i in liked),
            blocked_authors=frozenset({"a0"}) if blocked else frozenset(),
        )
        v = view(comments)
        html = self.personal(v, "a1", state)
        self.assertNotIn(render._NONCE, html)
        shared, _ = self.renderer.rendered(v, CTX)
        self.assertEqual(len(shared.slots), 3 + 5 * len(comments))
        for n in names:
            if "<" in n:
                self.assertNotIn('<span class="fe-author" id="a-c0">' + n + "<", html)


class ThemeTests(SynchronousTestCase):
    @given(accent=st.text(max_size=30), font=st.text(max_size=120))
    def test_theme_values_cannot_escape_css(self, accent: str, font: str) -> None:
        """Theme settings either pass as a plain colour or font list or are
        dropped: nothing can close the rule or the style element."""
        css = Theme.from_settings({"theme": {"accent": accent, "font": font}}).css()
        inner = css[len(":root{") : -1] if css else ""
        self.assertNotIn("<", css)
        self.assertNotIn("}", inner)
        self.assertNotIn("{", inner)
        self.assertEqual(inner.count(";"), inner.count("--fe-"))

    def test_malformed_settings(self) -> None:
        """Settings that are not a mapping of strings give the default theme."""
        for settings_ in ({}, {"theme": "red"}, {"theme": {"accent": 5}}, {"theme": {"accent": "red;}body{"}}):
            self.assertEqual(Theme.from_settings(settings_).css(), "")
