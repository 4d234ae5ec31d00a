# -*- test-case-name: tests.unit.embed.test_render -*-
"""The embed page's HTML: rendered once per cached page, personalized by splicing.

A thread page is rendered with Jinja2 (autoescaping on) once per entry of
the public API's page cache (:attr:`fastedge.api.pageview.PageView.derived`),
with *slots* where a reader's own state goes: whether they liked a comment,
whether it is theirs, whether they blocked its author, who they are, and the
post form (which carries per-request text). The rendered document is split
at the slots into static byte strings; a reader's page is a join of those
pieces with their own slot values, the same trick
:class:`~fastedge.api.pageview.PageView` plays for JSON. Nothing here takes
a reactor or a request.

Slot markers hold a random per-process nonce between private-use
characters, so no comment text can forge one.

Comment bodies are the store's sanitised HTML (``fastedge.api.markup``),
the only HTML that is not escaped; everything else goes through
autoescaping.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup

from ..api.pageview import PageView
from ..http.jsonbody import encode
from ..store.model import Comment, Sort, ViewerState

#: Where the embed's static files are served (``fastedge.embed.resource``).
STATIC_PREFIX = "/embed/static/"

_OPEN, _CLOSE = "\ue000", "\ue001"
_NONCE = secrets.token_hex(16)
_SLOT_RE = re.compile(re.escape(_OPEN + _NONCE) + r"([a-z]+):([A-Za-z0-9_-]*)" + re.escape(_CLOSE))
#: The key of this module's rendering in ``PageView.derived``.
_DERIVED_KEY = "embed.html"

_COLOUR_RE = re.compile(r"^(#[0-9a-fA-F]{3,8}|[a-zA-Z]{3,20})$")
_FONT_RE = re.compile(r"^[A-Za-z0-9 ,'\"-]{1,100}$")


def _slot(kind: str, cid: str = "") -> Markup:
    return Markup(_OPEN + _NONCE + kind + ":" + cid + _CLOSE)


@dataclass(frozen=True)
class Theme:
    """A tenant's theme variables (its settings; see docs/embedding.md).

    Values are checked here because they go into CSS: a value that is not a
    plain colour or font list is ignored (the default stays), never quoted
    into the style sheet.
    """

    accent: str | None = None
    font: str | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Theme:
        """The theme in a tenant's settings mapping (``theme.accent``,
        ``theme.font``); anything malformed is left at the default."""
        raw = settings.get("theme")
        if not isinstance(raw, Mapping):
            return cls()
        accent = raw.get("accent")
        font = raw.get("font")
        return cls(
            accent=accent if isinstance(accent, str) and _COLOUR_RE.match(accent) else None,
            font=font if isinstance(font, str) and _FONT_RE.match(font) else None,
        )

    def css(self) -> str:
        """The ``<style>`` text that sets the variables ("" for the default)."""
        rules = []
        if self.accent is not None:
            rules.append("--fe-accent:{};".format(self.accent))
        if self.font is not None:
            rules.append("--fe-font:{};".format(self.font))
        return ":root{" + "".join(rules) + "}" if rules else ""


def content_security_policy(frame_ancestors: Sequence[str] = (), style_hashes: Sequence[str] = ()) -> bytes:
    """The embed page's CSP: scripts only from this node (no inline script,
    no eval), styles from this node plus the theme block by hash, and the
    sites allowed to frame it.

    :param frame_ancestors: the tenant's allowed embedding origins; empty
        means any site may embed the page (``*``) until a tenant says otherwise.
    :param style_hashes: ``sha256-...`` of inline style blocks on the page.
    """
    ancestors = " ".join(frame_ancestors) if frame_ancestors else "*"
    styles = " ".join(["'self'"] + ["'{}'".format(h) for h in style_hashes])
    return (
        "default-src 'none'; script-src 'self'; style-src {}; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors {}".format(styles, ancestors)
    ).encode("ascii")


def style_hash(css: str) -> str:
    """The CSP source expression of an inline style block's text."""
    return "sha256-" + base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode("ascii")


@dataclass(frozen=True)
class FormState:
    """What the post form shows for one request."""

    reply_to: str | None = None
    name: str = ""
    text: str = ""
    title: str = ""
    #: ``(code, message)`` of a refused post (the JSON API's error).
    error: tuple[str, str] | None = None


@dataclass(frozen=True)
class PageContext:
    """What a thread page needs besides the comments."""

    tenant_id: str
    url_id: str
    sort: Sort
    limit: int
    cursor: str | None
    display_name_max: int
    comment_max: int


@dataclass
class RenderedPage:
    """A page split at its slots (shared by every reader of a cached page)."""

    static: list[bytes]
    slots: list[tuple[str, str]]
    comments: dict[str, Comment]
    bodies: dict[str, bytes] = field(default_factory=dict)
    closed: bool = False
    #: Whole pages for strangers, by ``(theme, form)``: most readers have
    #: no session, and their page is the same bytes.
    anonymous: dict[tuple[Theme, FormState], bytes] = field(default_factory=dict)
    #: The same, gzipped (for browsers, which all accept it).
    anonymous_gzip: dict[tuple[Theme, FormState], bytes] = field(default_factory=dict)


def _when(ms: int) -> tuple[str, str]:
    t = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return t.isoformat(timespec="seconds").replace("+00:00", "Z"), t.strftime("%Y-%m-%d %H:%M UTC")


class _Templates:
    """The compiled templates (Jinja2 is imported with the first page a
    node renders, not when it starts: a node nobody embeds never loads it)."""

    def __init__(self) -> None:
        from jinja2 import Environment, PackageLoader, select_autoescape

        env = Environment(
            loader=PackageLoader("fastedge.embed", "templates"),
            autoescape=select_autoescape(["html"], default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.globals["slot"] = _slot
        env.globals["static"] = STATIC_PREFIX
        env.globals["when"] = _when
        self.page = env.get_template("page.html")
        self.form = env.get_template("form.html")
        self.empty = env.get_template("empty.html")


class EmbedRenderer:
    """Renders embed pages (templates from ``fastedge/embed/templates``)."""

    def __init__(self) -> None:
        self._compiled: _Templates | None = None

    @property
    def _templates(self) -> _Templates:
        if self._compiled is None:
            self._compiled = _Templates()
        return self._compiled

    # The shared rendering

    def rendered(self, view: PageView, ctx: PageContext) -> tuple[RenderedPage, bool]:
        """The page split at its slots, made once per cached page; and
        whether this call made it."""
        found = view.derived.get(_DERIVED_KEY)
        if found is not None:
            return found, False
        made = view.derived[_DERIVED_KEY] = self._render_shared(view, ctx)
        return made, True

    def _render_shared(self, view: PageView, ctx: PageContext) -> RenderedPage:
        page = view.page
        comments: dict[str, Comment] = {}
        roots: list[dict[str, Any]] = []
        if page is not None:
            children: dict[str, list[Comment]] = {}
            for c in page.replies:
                children.setdefault(c.parent_id or "", []).append(c)

            def node(c: Comment) -> dict[str, Any]:
                comments[c.id] = c
                return {"c": c, "replies": [node(r) for r in children.get(c.id, ())]}

            roots = [node(c) for c in page.top_level]
        epoch, seq = view.position if view.position is not None else ("", 0)
        html = self._templates.page.render(
            ctx=ctx,
            thread=page.thread if page is not None else None,
            roots=roots,
            next_href=self.href(ctx, cursor=page.next_cursor) if page is not None and page.next_cursor else None,
            sort_links=[(s.value, s.value.capitalize(), self.href(ctx, sort=s)) for s in Sort],
            epoch=epoch,
            seq=seq,
            reply_href=lambda cid: self.href(ctx, reply_to=cid) + "#fe-form",
        )
        pieces = _SLOT_RE.split(html)
        static = [p.encode("utf-8") for p in pieces[0::3]]
        slots = list(zip(pieces[1::3], pieces[2::3], strict=True))
        return RenderedPage(
            static=static,
            slots=slots,
            comments=comments,
            bodies={cid: c.body_html.encode("utf-8") for cid, c in comments.items()},
            closed=page.thread.closed if page is not None else False,
        )

    @staticmethod
    def href(
        ctx: PageContext, *, sort: Sort | None = None, cursor: str | None = None, reply_to: str | None = None
    ) -> str:
        """A link to this thread's embed page (relative: same tenant)."""
        query = [("urlId", ctx.url_id)]
        sort = sort or ctx.sort
        if sort is not Sort.NEWEST:
            query.append(("sort", sort.value))
        if cursor:
            query.append(("cursor", cursor))
        if reply_to:
            query.append(("replyTo", reply_to))
        return "?" + urlencode(query)

    # A reader's page

    def personal(
        self,
        shared: RenderedPage,
        ctx: PageContext,
        *,
        author_id: str | None,
        state: ViewerState | None,
        viewer: Mapping[str, Any] | None,
        form: FormState,
        theme: Theme,
    ) -> bytes:
        """The page as one reader sees it: the shared pieces joined with the
        reader's own slot values."""
        stranger = author_id is None and viewer is None and form.error is None and not (form.name or form.text)
        if stranger:
            found = shared.anonymous.get((theme, form))
            if found is not None:
                return found
        body = self._join(shared, ctx, author_id=author_id, state=state, viewer=viewer, form=form, theme=theme)
        if stranger and len(shared.anonymous) < _ANONYMOUS_KEPT:
            shared.anonymous[(theme, form)] = body
        return body

    @staticmethod
    def stranger_gzip(shared: RenderedPage, theme: Theme, form: FormState) -> bytes | None:
        """The kept stranger's page (see :meth:`personal`) gzipped, made
        once; ``None`` when no such page is kept."""
        key = (theme, form)
        found = shared.anonymous_gzip.get(key)
        if found is None:
            body = shared.anonymous.get(key)
            if body is None:
                return None
            found = shared.anonymous_gzip[key] = gzip.compress(body, 6, mtime=0)
        return found

    def _join(
        self,
        shared: RenderedPage,
        ctx: PageContext,
        *,
        author_id: str | None,
        state: ViewerState | None,
        viewer: Mapping[str, Any] | None,
        form: FormState,
        theme: Theme,
    ) -> bytes:
        liked = state.liked if state is not None else frozenset()
        blocked = state.blocked_authors if state is not None else frozenset()
        doc = {
            "theme": self._theme_block(theme),
            "viewer": str(Markup.escape(encode(viewer or {}).decode("utf-8"))).encode("utf-8"),
            "form": self.form(ctx, form, closed=shared.closed).encode("utf-8"),
        }
        out: list[bytes] = [shared.static[0]]
        comments = shared.comments
        for (kind, cid), tail in zip(shared.slots, shared.static[1:], strict=True):
            if not cid:
                out.append(doc[kind])
            else:
                c = comments[cid]
                out.append(_comment_slot(kind, c, shared.bodies[cid], author_id, liked, blocked))
            out.append(tail)
        return b"".join(out)

    def _theme_block(self, theme: Theme) -> bytes:
        css = theme.css()
        return b"<style>" + css.encode("utf-8") + b"</style>" if css else b""

    def form(self, ctx: PageContext, form: FormState, *, closed: bool) -> str:
        """The post form (per request: it may hold a refused post's text)."""
        return self._templates.form.render(
            ctx=ctx, form=form, closed=closed, action=self.href(ctx), cancel_href=self.href(ctx) + "#fe-form"
        )

    def empty(self, *, status: int, message: str, theme: Theme = Theme()) -> bytes:
        """The friendly page for an unknown tenant or thread, or a bad link."""
        return self._templates.empty.render(
            status=status, message=message, theme=Markup(self._theme_block(theme).decode("utf-8"))
        ).encode("utf-8")


#: Stranger pages kept per shared rendering (a thread has one title and
#: one theme, usually; a page is its size again, so keep few).
_ANONYMOUS_KEPT = 2
_BLOCKED_BODY = b'<p class="fe-blocked-note">You blocked this author. Their comments are hidden.</p>'
_MINE_BADGE = b' <span class="fe-badge">you</span>'


def _comment_slot(
    kind: str, c: Comment, body: bytes, author_id: str | None, liked: frozenset[str], blocked: frozenset[str]
) -> bytes:
    is_blocked = c.author_id in blocked
    if kind == "liked":
        return b"true" if c.id in liked else b"false"
    if kind == "cls":
        mine = author_id is not None and c.author_id == author_id
        return (b" is-mine" if mine else b"") + (b" is-blocked" if is_blocked else b"")
    if kind == "badge":
        return _MINE_BADGE if author_id is not None and c.author_id == author_id else b""
    if kind == "body":
        return _BLOCKED_BODY if is_blocked else body
    if kind == "blocked":
        return b"true" if is_blocked else b"false"
    raise ValueError("unknown slot {!r}".format(kind))


def theme_hashes(theme: Theme) -> list[str]:
    """The CSP hashes a page with ``theme`` needs."""
    css = theme.css()
    return [style_hash(css)] if css else []
