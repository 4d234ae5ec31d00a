# -*- test-case-name: tests.unit.api.test_markup -*-
"""Comment bodies: a markdown subset rendered to sanitised HTML.

markdown-it-py renders (with raw HTML disabled, so ``<script>`` in a
comment is text, not markup); nh3 (the Rust ``ammonia`` sanitiser) then
keeps only the tags and attributes below, so even a renderer bug cannot
emit a script, an event-handler attribute or a ``javascript:`` link. Links
get ``rel="nofollow ugc noopener"`` and open in a new tab.
"""

from __future__ import annotations

from functools import cache
from typing import Any

_TAGS = {"p", "br", "em", "strong", "s", "del", "code", "pre", "a", "blockquote", "ul", "ol", "li"}
_ATTRIBUTES = {"a": {"href"}, "ol": {"start"}}
_SCHEMES = {"http", "https", "mailto"}


@cache
def _renderer() -> Any:
    """The markdown renderer for the subset: emphasis, strong, strikethrough,
    inline code, code blocks, links (and bare URLs), block quotes, lists,
    paragraphs and line breaks.

    markdown-it-py (62 modules) and nh3 (a 1.4 MB native library) are
    imported with the first comment a node renders, that is its first
    write, not when it starts: an idle node or one that only serves reads
    (the store holds the rendered HTML) never loads them.
    """
    from markdown_it import MarkdownIt

    return (
        MarkdownIt("zero", {"html": False, "linkify": False, "breaks": True, "typographer": False})
        .enable(["emphasis", "strikethrough", "backticks", "link", "autolink", "newline", "escape"])
        .enable(["blockquote", "list", "code", "fence", "paragraph"])
    )


def render(source: str) -> str:
    """Render a comment's markdown source to HTML that is safe to embed."""
    # Imported here, with the first write (see _renderer).
    import nh3

    html = _renderer().render(source)
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_SCHEMES,
        link_rel="nofollow ugc noopener",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
        # Relative links would point into the embedding site; only absolute
        # http(s)/mailto links survive.
        url_relative="deny",
    ).strip()
