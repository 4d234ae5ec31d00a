"""Comment bodies: markdown subset to sanitised HTML."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.api.markup import render

_NASTY = [
    "<script>",
    "</script>",
    "<img src=x onerror=alert(1)>",
    "javascript:alert(1)",
    "[x](javascript:alert(1))",
    "<a href='javascript:x'>",
    "onclick=",
    '"',
    "'",
    "<",
    ">",
    "**",
    "_",
    "`",
    "[",
    "](",
    ")",
    "\n",
    "<svg/onload=1>",
    "&#106;avascript:",
    "<iframe>",
    "data:text/html,<script>",
    "[a](data:text/html;base64,PHNjcmlwdD4=)",
]


class RenderTests(SynchronousTestCase):
    def test_subset(self) -> None:
        """Emphasis, strong, code, quotes, lists and links render."""
        self.assertEqual(render("*a* **b** `c`"), "<p><em>a</em> <strong>b</strong> <code>c</code></p>")
        self.assertEqual(render("- x\n- y"), "<ul>\n<li>x</li>\n<li>y</li>\n</ul>")

    def test_links_are_nofollow_ugc(self) -> None:
        """Links get rel=nofollow ugc and open in a new tab."""
        self.assertEqual(
            render("[site](https://example.test/)"),
            '<p><a href="https://example.test/" target="_blank" rel="nofollow ugc noopener">site</a></p>',
        )

    def test_raw_html_is_text(self) -> None:
        """Raw HTML in a comment is shown as text, never interpreted."""
        self.assertEqual(render("<b onclick=x>hi</b>"), "<p>&lt;b onclick=x&gt;hi&lt;/b&gt;</p>")

    def test_dangerous_links_dropped(self) -> None:
        """javascript: and data: links never become links."""
        for source in ("[x](javascript:alert(1))", "[x](data:text/html,hi)", "<javascript:alert(1)>"):
            self.assertNotIn("href", render(source), source)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(st.sampled_from(_NASTY), st.text(max_size=8)), max_size=20).map("".join))
    def test_never_unsafe(self, source: str) -> None:
        """Whatever the input, the output has no script, iframe, event
        handler or non-http(s)/mailto link."""
        html = render(source).lower()
        self.assertNotIn("<script", html)
        self.assertNotIn("<iframe", html)
        self.assertNotIn("<svg", html)
        self.assertIsNone(re.search(r"<[^>]*\son\w+\s*=", html))
        for href in re.findall(r'href="([^"]*)"', html):
            self.assertTrue(href.startswith(("http://", "https://", "mailto:")), href)
