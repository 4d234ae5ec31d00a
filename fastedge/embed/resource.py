# -*- test-case-name: tests.unit.embed.test_resource -*-
"""The embed page's HTTP side: a thin resource over the public API's read
and write paths and :mod:`fastedge.embed.render`.

``GET /embed/<tenant>/?urlId=...[&sort=...][&cursor=...][&replyTo=...]``
  the thread's page, with the reader's own state (their session cookie is
  set for ``/embed/<tenant>/`` as well as for the API).
``POST /embed/<tenant>/?urlId=...`` (``application/x-www-form-urlencoded``)
  posting without JavaScript: the JSON API's write path, then a redirect to
  the page (POST-redirect-GET); a refused post shows the API's error in the
  page, with the API's status.
``GET /embed/static/<file>``
  the page's style sheet and script modules.
``GET /widget.js``
  the snippet a site owner includes (:class:`WidgetScript`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from prometheus_client import CollectorRegistry, Counter
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..api import common
from ..api.public import PageRead, PublicApi
from ..config import ApiConfig
from ..http.errors import ApiError, bad_request, from_store_error
from ..http.jsonbody import write_error
from ..http.router import Call, Reply
from ..store.errors import StoreError
from ..store.model import Sort
from .render import (
    STATIC_PREFIX,
    EmbedRenderer,
    FormState,
    PageContext,
    Theme,
    content_security_policy,
    theme_hashes,
)

#: The form's fields (as the JSON API's body, which it mirrors).
_FORM_FIELDS = frozenset({"text", "displayName", "parentId", "pageTitle"})
_STATIC_TYPES = {
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}
_STATIC_FILES = ("embed.js", "live.js", "embed.css")


@dataclass(frozen=True)
class EmbedPolicy:
    """A tenant's settings as far as the embed page goes.

    :ivar frame_ancestors: origins allowed to frame the page (CSP
        ``frame-ancestors``); empty: any site.
    :ivar theme: the tenant's theme variables.
    """

    frame_ancestors: tuple[str, ...] = ()
    theme: Theme = Theme()

    @cached_property
    def csp(self) -> bytes:
        """The page's ``Content-Security-Policy`` under this policy: made
        once per policy (a policy lives as long as the tenant's cached
        settings), not per page."""
        return content_security_policy(self.frame_ancestors, theme_hashes(self.theme))


_DEFAULT_POLICY = EmbedPolicy()


def default_policy(tenant_id: str) -> EmbedPolicy:
    """Until tenant settings say otherwise: any site may embed, default theme."""
    return _DEFAULT_POLICY


class EmbedMetrics:
    """What the embed pages did."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pages = Counter(
            "fastedge_embed_pages_total",
            "Embed pages answered, by kind (anonymous, personal, empty, error).",
            ["kind"],
            registry=registry,
        )
        self.renders = Counter(
            "fastedge_embed_renders_total",
            "Thread pages rendered to HTML (once per cached page; the rest are splices).",
            registry=registry,
        )
        self.form_posts = Counter(
            "fastedge_embed_form_posts_total",
            "Plain-form posts from embed pages, by outcome (posted or the error code).",
            ["outcome"],
            registry=registry,
        )


#: Room past the largest valid form, so that a comment somewhat too long
#: (a paste that overshot) is read and refused in the page with the API's
#: ``text_too_long`` rather than unread with a 413.
_FORM_SLACK_BYTES = 64 * 1024


def form_body_limit(cfg: ApiConfig) -> int:
    """The body limit of the page's plain-form post: the largest valid form
    (every field at its longest, each character four UTF-8 bytes sent
    percent-encoded, three characters a byte), room for the field names
    and a reply's comment id, and :data:`_FORM_SLACK_BYTES`. Longer
    comments up to it are refused in the page like any other bad field; a
    body over it is not read (:meth:`EmbedResource.too_large_page`)."""
    chars = cfg.comment_max_chars + cfg.display_name_max_chars + cfg.title_max_chars
    return 12 * chars + 1024 + _FORM_SLACK_BYTES


def _static(name: str) -> bytes:
    return resources.files("fastedge.embed").joinpath("static", name).read_bytes()


class _Query:
    """The URL's own query (never the form body), like ``Call.query``."""

    def __init__(self, request: Request) -> None:
        self.values: dict[str, str] = {}
        raw = urlsplit(request.uri.decode("latin-1")).query
        try:
            pairs = parse_qsl(raw, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            raise bad_request("query parameters must be UTF-8", code="bad_query") from None
        for key, value in pairs:
            if key in self.values:
                raise bad_request("query parameter {!r} given more than once".format(key), code="bad_query")
            self.values[key] = value

    def get(self, name: str) -> str | None:
        return self.values.get(name)


class EmbedResource(Resource):
    """``/embed``: thread pages and their static files.

    :param public: the public API whose read and write paths pages use.
    :param policy: the tenant's :class:`EmbedPolicy` (or a Deferred of it),
        by tenant id; tenant settings plug in here.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        cfg: ApiConfig,
        *,
        public: PublicApi,
        registry: CollectorRegistry,
        policy: Callable[[str], EmbedPolicy | Deferred[EmbedPolicy]] = default_policy,
    ) -> None:
        super().__init__()
        self._cfg = cfg
        self._public = public
        self._policy = policy
        self._renderer = EmbedRenderer()
        self._metrics = EmbedMetrics(registry)
        self._static: dict[str, tuple[bytes, bytes]] = {}

    # Routing

    def render(self, request: Request) -> int | bytes:
        segments = request.path.split(b"?", 1)[0].split(b"/")[2:]
        if len(segments) == 2 and segments[0] == b"static":
            request.route = "/embed/static/{file}"  # type: ignore[attr-defined]
            if request.method not in (b"GET", b"HEAD"):
                return self._method_not_allowed(request, b"GET, HEAD")
            return self._serve_static(request, segments[1].decode("latin-1"))
        if len(segments) == 2 and segments[1] == b"" and segments[0]:
            request.route = "/embed/{tenant}/"  # type: ignore[attr-defined]
            tenant = segments[0].decode("latin-1")
            if request.method in (b"GET", b"HEAD"):
                d = self._page(request, tenant)
            elif request.method == b"POST":
                d = self._form_post(request, tenant)
            else:
                return self._method_not_allowed(request, b"GET, HEAD, POST")
            d.addErrback(self._unexpected, request)
            return NOT_DONE_YET
        if len(segments) == 1 and segments[0] and segments[0] != b"static":
            # The page's address ends with "/" (its cookie's path does).
            request.route = "/embed/{tenant}"  # type: ignore[attr-defined]
            query = urlsplit(request.uri).query
            request.setResponseCode(301)
            request.setHeader(b"location", request.path + b"/" + (b"?" + query if query else b""))
            request.setHeader(b"content-length", b"0")
            return b""
        request.route = "/embed/not_found"  # type: ignore[attr-defined]
        return self._finish_empty(request, 404, "There is nothing here.")

    def _method_not_allowed(self, request: Request, allow: bytes) -> int:
        """The transport's answer to a method a resource does not take
        (docs/http-errors.md): a JSON 405 with ``Allow``, for the page and
        its static files as for every other resource."""
        request.route = "method_not_allowed"  # type: ignore[attr-defined]
        request.setHeader(b"allow", allow)
        write_error(request, 405, "method_not_allowed", "method not allowed here")
        return NOT_DONE_YET

    # Static files

    def _serve_static(self, request: Request, name: str) -> bytes:
        if name not in _STATIC_FILES:
            return self._finish_empty(request, 404, "There is nothing here.")
        found = self._static.get(name)
        if found is None:
            body = _static(name)
            found = self._static[name] = (body, b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"')
        body, etag = found
        request.setHeader(b"content-type", _STATIC_TYPES[name[name.rindex(".") :]])
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"public, max-age=300")
        request.setHeader(b"etag", etag)
        if request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body

    # Pages

    def _context(self, tenant_id: str, query: _Query, url_id: str) -> PageContext:
        # As the JSON API: absent is newest, anything else (even empty) must
        # be one of the three (the page's own links leave out sort=newest).
        try:
            sort = Sort(query.values.get("sort", "newest"))
        except ValueError:
            raise bad_request("sort must be newest, oldest or top", code="bad_sort") from None
        return PageContext(
            tenant_id=tenant_id,
            url_id=url_id,
            sort=sort,
            limit=self._cfg.page_size,
            cursor=query.get("cursor") or None,
            display_name_max=self._cfg.display_name_max_chars,
            comment_max=self._cfg.comment_max_chars,
        )

    @inlineCallbacks
    def _page(self, request: Request, tenant: str, form: FormState | None = None, status: int = 200) -> Any:
        call = Call(request, {"tenant": tenant}, "/embed/{tenant}/")
        try:
            query = _Query(request)
            tenant_id = common.record_id(tenant, "tenant")
            url_id = common.url_id(call, self._cfg, query.get("urlId") or "")
            ctx = self._context(tenant_id, query, url_id)
            if form is None:
                reply_to = query.get("replyTo")
                form = FormState(
                    reply_to=common.record_id(reply_to, "comment") if reply_to else None,
                    title=(query.get("title") or "")[: self._cfg.title_max_chars],
                )
            read: PageRead = yield self._public.read_page(
                call, url_id=url_id, sort=ctx.sort, limit=ctx.limit, cursor=ctx.cursor
            )
            # Usually known at once (the tenant's cached settings): no Deferred.
            policy = self._policy(tenant_id)
            if isinstance(policy, Deferred):
                policy = yield policy
        except ApiError as e:
            return self._refused(request, e)
        except StoreError as e:
            return self._refused(request, from_store_error(e))
        shared, made = self._renderer.rendered(read.view, ctx)
        if made:
            self._metrics.renders.inc()
        body = self._renderer.personal(
            shared,
            ctx,
            author_id=read.author_id,
            state=read.state,
            viewer=read.viewer,
            form=form,
            theme=policy.theme,
        )
        self._metrics.pages.labels("personal" if read.author_id is not None else "anonymous").inc()
        for cookie in read.cookies:
            request.responseHeaders.addRawHeader(b"set-cookie", cookie)
        request.setHeader(b"vary", b"Accept-Encoding, Cookie, X-FastEdge-Session")
        if read.author_id is None and _accepts_gzip(request):
            # A stranger's page is the same bytes for all: compressed once.
            compressed = self._renderer.stranger_gzip(shared, policy.theme, form)
            if compressed is not None:
                request.setHeader(b"content-encoding", b"gzip")
                body = compressed
        self._write_html(request, status, body, policy)
        return None

    def _refused(self, request: Request, e: ApiError) -> None:
        """A bad tenant, thread link or parameter: the friendly empty state,
        with the status the JSON API would answer (a bad urlId is a 404 here:
        for a reader, the thread simply does not exist)."""
        status = e.status
        if e.code in ("tenant_not_found", "missing_url_id", "bad_url_id", "comment_not_found"):
            status = 404
            message = "There are no comments here."
        elif status >= 500:
            message = "Comments are unavailable right now. Try again in a moment."
        else:
            message = "This comment link is not valid ({}).".format(e.message)
        self._metrics.pages.labels("empty" if status == 404 else "error").inc()
        for name, value in e.headers.items():
            request.setHeader(name, value)
        self._finish_empty(request, status, message)

    def _finish_empty(self, request: Request, status: int, message: str) -> bytes:
        body = self._renderer.empty(status=status, message=message)
        self._write_html(request, status, body, _DEFAULT_POLICY)
        return NOT_DONE_YET  # type: ignore[return-value]

    def _write_html(self, request: Request, status: int, body: bytes, policy: EmbedPolicy) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", policy.csp)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"strict-origin-when-cross-origin")
        # The page holds the reader's own state: never shared by a cache.
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def too_large_page(self, limit: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The transport's answer to a form whose declared body is over
        :func:`form_body_limit` (refused before it is read, docs/embedding.md):
        the page's own HTML, saying what the JSON API's 413 says, instead of
        a JSON error shown raw in the reader's frame."""
        self._metrics.form_posts.labels("body_too_large").inc()
        body = self._renderer.empty(
            status=413,
            message="This comment is far too long to send (the form takes at most {} bytes). "
            "Go back, shorten it and post again. (body_too_large)".format(limit),
        )
        return (
            [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-security-policy", content_security_policy()),
                (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"strict-origin-when-cross-origin"),
                (b"cache-control", b"no-store"),
            ],
            body,
        )

    # Posting without JavaScript

    @inlineCallbacks
    def _form_post(self, request: Request, tenant: str) -> Any:
        call = Call(request, {"tenant": tenant}, "/embed/{tenant}/")
        form = FormState()
        try:
            query = _Query(request)
            tenant_id = common.record_id(tenant, "tenant")
            url_id = common.url_id(call, self._cfg, query.get("urlId") or "")
            ctx = self._context(tenant_id, query, url_id)
            fields = self._form_fields(request)
            form = FormState(
                reply_to=fields.get("parentId") or None,
                name=fields.get("displayName", ""),
                text=fields.get("text", ""),
                title=fields.get("pageTitle", ""),
            )
            self._same_origin(request)
            for name in ("text", "displayName"):
                if name not in fields:
                    raise bad_request("missing field {!r}".format(name), code="missing_field", field=name)
            reply: Reply = yield self._public.post(
                call,
                url_id=url_id,
                text=fields["text"],
                name=fields["displayName"],
                parent_id=fields.get("parentId") or None,
                title=fields.get("pageTitle") or None,
            )
        except (ApiError, StoreError) as e:
            error = e if isinstance(e, ApiError) else from_store_error(e)
            self._metrics.form_posts.labels(error.code).inc()
            if error.code in ("tenant_not_found", "missing_url_id", "bad_url_id"):
                return self._refused(request, error)
            for cookie in error.cookies:
                request.responseHeaders.addRawHeader(b"set-cookie", cookie)
            for hname, value in error.headers.items():
                request.setHeader(hname, value)
            form = FormState(
                reply_to=_valid_id(form.reply_to),
                name=form.name,
                text=form.text,
                title=form.title,
                error=(error.code, error.message),
            )
            yield self._page(request, tenant, form=form, status=error.status)
            return None
        self._metrics.form_posts.labels("posted").inc()
        for cookie in reply.cookies:
            request.responseHeaders.addRawHeader(b"set-cookie", cookie)
        comment_id = reply.body["comment"]["id"]
        location = "/embed/{}/{}#c-{}".format(quote(tenant_id, safe=""), self._renderer.href(ctx), comment_id)
        request.setResponseCode(303)
        request.setHeader(b"location", location.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"0")
        request.finish()
        return None

    def _form_fields(self, request: Request) -> dict[str, str]:
        """The form body, refused as the JSON API refuses a bad body."""
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"application/x-www-form-urlencoded":
            raise ApiError(415, "unsupported_media_type", "send the form as application/x-www-form-urlencoded")
        content = request.content
        if content is None:
            raw = b""
        else:
            content.seek(0)
            raw = content.read()
        try:
            pairs = parse_qsl(
                raw.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=10
            )
        except (UnicodeDecodeError, ValueError):
            raise bad_request("the form is not valid UTF-8 form data", code="malformed_form") from None
        fields: dict[str, str] = {}
        for name, value in pairs:
            if name not in _FORM_FIELDS:
                raise bad_request("unknown field {!r}".format(name), code="unknown_field", field=name)
            if name in fields:
                raise bad_request("field {!r} given more than once".format(name), code="malformed_form", field=name)
            fields[name] = value
        return fields

    def _same_origin(self, request: Request) -> None:
        """Refuse a form posted from another site (cross-site request
        forgery): browsers send ``Origin`` with every form POST."""
        origin = request.getHeader(b"origin")
        if origin is None:
            return
        scheme = b"https" if request.isSecure() else b"http"
        own = scheme + b"://" + (request.getHeader(b"host") or b"")
        if isinstance(origin, str):
            origin = origin.encode("latin-1")
        if origin != own:
            raise ApiError(403, "cross_site_post", "comments can only be posted from the comment page itself")

    def _unexpected(self, failure: Failure, request: Request) -> None:
        self._log.failure("unhandled error answering {route}", failure, route="/embed/{tenant}/")
        self._metrics.pages.labels("error").inc()
        if not request.finished and not getattr(request, "_disconnected", False):
            self._finish_empty(request, 500, "Comments are unavailable right now. Try again in a moment.")


def _accepts_gzip(request: Request) -> bool:
    """Whether ``Accept-Encoding`` takes gzip (and does not refuse it with q=0)."""
    for item in (request.getHeader(b"accept-encoding") or b"").split(b","):
        name, _, params = item.strip().partition(b";")
        if name.strip().lower() == b"gzip":
            return params.strip().lower().replace(b" ", b"") not in (b"q=0", b"q=0.0", b"q=0.00", b"q=0.000")
    return False


def _valid_id(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return common.record_id(value, "comment")
    except ApiError:
        return None


class WidgetScript(Resource):
    """``/widget.js``: the snippet site owners include next to their
    ``<div id="fastedge-comments">`` (docs/embedding.md)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._body: bytes | None = None

    def render_GET(self, request: Request) -> bytes:
        request.route = "/widget.js"  # type: ignore[attr-defined]
        if self._body is None:
            self._body = _static("widget.js")
        request.setHeader(b"content-type", _STATIC_TYPES[".js"])
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"public, max-age=300")
        # Loaded by the host page from another origin.
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"content-length", b"%d" % len(self._body))
        return b"" if request.method == b"HEAD" else self._body

    render_HEAD = render_GET


__all__ = ["EmbedPolicy", "EmbedResource", "WidgetScript", "default_policy", "form_body_limit", "STATIC_PREFIX"]
