# -*- test-case-name: tests.unit.api.test_manage -*-
"""The tenant API, ``/api/v1/manage/...``, authenticated by API key.

The key alone decides the tenant: no tenant id appears in these URLs, so a
caller cannot even name another tenant's records. Reads are PRIMARY by
default (a tenant reads its own writes); ``readPreference=nearest`` is
cheaper in credits. Writes return ``X-Consistency-Token``; a read that
sends it back sees that write even when reading NEAREST.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..config import ApiConfig
from ..http.errors import ApiError, bad_request
from ..http.router import Call, ICors, Reply, Route
from ..identity.sso import check_secret, sso_status
from ..residency.gate import ResidencyGate
from ..store.errors import NotFound
from ..store.interfaces import IStore
from ..store.model import (
    CommentStatus,
    NewPost,
    ReadPreference,
    SsoSecretChange,
    Tenant,
    Thread,
    UserPoster,
    Written,
)
from ..store.settings import SettingsError, apply_patch, check_group_ids, from_stored, to_json
from . import common
from .cache import PageCache
from .credits import CreditMeter, merge_usage
from .keys import hash_api_key, looks_like_api_key, new_api_key
from .markup import render
from .metrics import ApiMetrics
from .tenants import TenantSettingsCache

if TYPE_CHECKING:
    from ..live.publish import LivePublisher

PRIMARY = ReadPreference.PRIMARY
NEAREST = ReadPreference.NEAREST
#: How long a replaced SSO secret stays accepted unless the PATCH says.
DEFAULT_SSO_OVERLAP_SECONDS = 24 * 3600
#: Longest overlap a PATCH may ask for.
MAX_SSO_OVERLAP_SECONDS = 30 * 24 * 3600
TOKEN_HEADER = b"x-consistency-token"
_API_AUTHOR = "tenant-api"
#: Finds the tenant a call acts for (default: by its API key).
Authenticate = Callable[[Call], Any]


#: Fields of a thread the tenant may set.
_THREAD_FIELDS = {"title": str, "closed": bool, "lockedGroups": list, "requireSignIn": bool}


def thread_view(thread: Thread) -> dict[str, Any]:
    """A thread as its tenant sees it: with its access rules (``null``: the
    tenant's ``defaultGroups`` / ``requireSignIn`` apply)."""
    view = common.thread_view(thread)
    view.update(
        lockedGroups=None if thread.locked_groups is None else list(thread.locked_groups),
        requireSignIn=thread.require_sign_in,
    )
    return view


def _invalid(key: str, message: str) -> ApiError:
    return ApiError(422, "invalid_setting", "{}: {}".format(key, message), field=key)


def check_overlap(value: Any) -> int:
    """``ssoSecretOverlapSeconds``: absent means the default.

    :raises SettingsError: naming the key.
    """
    if value is None:
        return DEFAULT_SSO_OVERLAP_SECONDS
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SSO_OVERLAP_SECONDS:
        raise SettingsError(
            "ssoSecretOverlapSeconds", "must be an integer from 0 to {}".format(MAX_SSO_OVERLAP_SECONDS)
        )
    return value


class ManageApi:
    """Handlers of ``/api/v1/manage/...``."""

    _log = Logger()

    def __init__(
        self,
        cfg: ApiConfig,
        *,
        store: IStore,
        clock: IReactorTime,
        credits: CreditMeter,
        cache: PageCache,
        metrics: ApiMetrics,
        live: LivePublisher | None = None,
        tenants: TenantSettingsCache | None = None,
        residency: ResidencyGate | None = None,
    ) -> None:
        """:param residency: refuses keys of another deployment's tenants
        (:class:`fastedge.residency.gate.ResidencyGate`; ``None``: no check)."""
        self._cfg = cfg
        self._tenants = tenants
        self._residency = residency
        self._live = live
        self._store = store
        self._clock = clock
        self._credits = credits
        self._cache = cache
        self._metrics = metrics

    def routes(self) -> list[Route]:
        base = "/api/v1/manage"
        return [
            Route(b"GET", base + "/threads", self._read("list_threads", self.list_threads)),
            Route(b"POST", base + "/threads", self._write("upsert_thread", self.upsert_thread)),
            Route(b"GET", base + "/threads/{thread_id}", self._read("get_thread", self.get_thread)),
            Route(b"PATCH", base + "/threads/{thread_id}", self._write("update_thread", self.update_thread)),
            Route(b"DELETE", base + "/threads/{thread_id}", self._write("delete_thread", self.delete_thread)),
            Route(b"GET", base + "/comments", self._read("list_comments", self.list_comments)),
            Route(b"POST", base + "/comments", self._write("create_comment", self.create_comment)),
            Route(b"GET", base + "/comments/{comment_id}", self._read("get_comment", self.get_comment)),
            Route(b"PATCH", base + "/comments/{comment_id}", self._write("update_comment", self.update_comment)),
            Route(b"DELETE", base + "/comments/{comment_id}", self._write("delete_comment", self.delete_comment)),
            Route(b"GET", base + "/keys", self._read("list_keys", self.list_keys)),
            Route(b"POST", base + "/keys", self._write("create_key", self.create_key)),
            Route(b"DELETE", base + "/keys/{key_id}", self._write("revoke_key", self.revoke_key)),
            Route(b"GET", base + "/credits", self._read("credits", self.credits)),
            Route(b"GET", base + "/settings", self._read("get_settings", self.get_settings)),
            Route(b"PATCH", base + "/settings", self._write("update_settings", self.update_settings)),
        ]

    def tenant_route(
        self,
        method: bytes,
        template: str,
        operation: str,
        handler: Any,
        *,
        authenticate: Authenticate | None = None,
        cors: ICors | None = None,
    ) -> Route:
        """A route of another subpackage (the CDN's uploads and purges) under
        the tenant API: authenticated by API key and charged like a write.

        :param handler: ``handler(call, tenant)`` returning (a Deferred of)
            ``(status, body, written_or_None)``.
        :param authenticate: ``authenticate(call)`` answering (a Deferred
            of) the tenant, instead of the API key (the public side's SSO
            moderators); ``cors``: that route's cross-origin rules.
        """
        return Route(method, template, self._write(operation, handler, authenticate), cors)

    def tenant_read_route(
        self,
        method: bytes,
        template: str,
        operation: str,
        handler: Any,
        *,
        default: ReadPreference,
        authenticate: Authenticate | None = None,
        cors: ICors | None = None,
    ) -> Route:
        """A read route of another module (moderation) under the tenant API:
        authenticated, charged by read preference, honouring
        ``X-Consistency-Token``.

        :param default: the read preference when the caller names none.
        :param handler: ``handler(call, tenant, read_preference, token)``
            returning (a Deferred of) a ``Reply``.
        :param authenticate: as for :meth:`tenant_route`.
        """
        return Route(method, template, self._read(operation, handler, default, authenticate), cors)

    # Authentication, credits, tokens

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    @inlineCallbacks
    def _authenticate(self, call: Call) -> Any:
        header = call.header(b"authorization")
        challenge = {b"www-authenticate": b'Bearer realm="fastedge"'}
        if header is None:
            self._metrics.auth_failures.labels("missing").inc()
            raise ApiError(401, "missing_api_key", "send Authorization: Bearer <api key>", headers=challenge)
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not looks_like_api_key(key):
            self._metrics.auth_failures.labels("malformed").inc()
            raise ApiError(401, "bad_api_key", "the API key is not valid", headers=challenge)
        key_hash = hash_api_key(key)
        try:
            # The nearest copy answers almost every call; a key created
            # moments ago may only be on the primary yet.
            tenant = yield self._store.tenant_for_api_key(key_hash, read_preference=NEAREST)
        except NotFound:
            try:
                tenant = yield self._store.tenant_for_api_key(key_hash, read_preference=PRIMARY)
            except NotFound:
                self._metrics.auth_failures.labels("unknown").inc()
                raise ApiError(
                    401, "bad_api_key", "the API key is not valid or was revoked", headers=challenge
                ) from None
        # For the access log: the tenant the key belongs to.
        call.request.tenant_id = tenant.id  # type: ignore[attr-defined]
        if self._residency is not None:
            refusal = self._residency.misdirected(tenant.id, tenant.deployment, "manage")
            if refusal is not None:
                error = refusal.error()
                raise ApiError(421, error.pop("code"), error.pop("message"), **error)
        return tenant

    def _read(
        self, operation: str, handler: Any, default: ReadPreference = PRIMARY, authenticate: Authenticate | None = None
    ) -> Any:
        """Wrap a read handler: authenticate, pick the read preference, charge."""
        auth = authenticate or self._authenticate

        @inlineCallbacks
        def run(call: Call) -> Any:
            tenant = yield auth(call)
            read_preference = common.read_preference(call, default)
            token = call.header(TOKEN_HEADER)
            if token is not None and not (0 < len(token) <= 128 and token.isascii() and token.isprintable()):
                raise bad_request(
                    "X-Consistency-Token is not a token this service issued", code="bad_consistency_token"
                )
            reply: Reply = yield handler(call, tenant, read_preference, token)
            charged = self._credits.charge(tenant.id, operation, read_preference)
            self._metrics.credits.labels(read_preference.value).inc(charged)
            reply.headers[b"x-credits-charged"] = str(charged).encode()
            return reply

        return run

    def _write(self, operation: str, handler: Any, authenticate: Authenticate | None = None) -> Any:
        """Wrap a write handler: authenticate, charge, return the token."""
        auth = authenticate or self._authenticate

        @inlineCallbacks
        def run(call: Call) -> Any:
            tenant = yield auth(call)
            if "readPreference" in call.query:
                raise bad_request("writes always go to the primary; drop readPreference", code="bad_read_preference")
            status, body, written = yield handler(call, tenant)
            charged = self._credits.charge(tenant.id, operation, None)
            self._metrics.credits.labels("write").inc(charged)
            reply = Reply(status, body)
            reply.headers[b"x-credits-charged"] = str(charged).encode()
            if written is not None and written.token is not None:
                reply.headers[TOKEN_HEADER] = written.token.encode("ascii")
            return reply

        return run

    def _forget_thread(self, tenant_id: str, thread_id: str) -> None:
        self._cache.invalidate((tenant_id, "thread", thread_id))

    # Threads

    @inlineCallbacks
    def list_threads(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        page = yield self._store.list_threads(
            tenant.id,
            limit=common.page_limit(call, self._cfg),
            cursor=call.query.get("cursor") or None,
            read_preference=rp,
            token=token,
        )
        return Reply(200, {"threads": [thread_view(t) for t in page.items], "nextCursor": page.next_cursor})

    @inlineCallbacks
    def get_thread(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        thread_id = common.record_id(call.params["thread_id"], "thread")
        thread = yield self._store.get_thread_by_id(tenant.id, thread_id, read_preference=rp, token=token)
        return Reply(200, {"thread": thread_view(thread)})

    def _thread_fields(self, body: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if body.get("title") is not None:
            if len(body["title"]) > self._cfg.title_max_chars:
                raise bad_request(
                    "title is longer than {} characters".format(self._cfg.title_max_chars), code="bad_title"
                )
            out["title"] = body["title"]
        if body.get("closed") is not None:
            out["closed"] = body["closed"]
        if body.get("lockedGroups") is not None:
            try:
                out["locked_groups"] = check_group_ids("lockedGroups", body["lockedGroups"])
            except SettingsError as e:
                raise ApiError(422, "invalid_groups", str(e), field="lockedGroups") from None
        if body.get("requireSignIn") is not None:
            out["require_sign_in"] = body["requireSignIn"]
        return out

    @inlineCallbacks
    def upsert_thread(self, call: Call, tenant: Tenant) -> Any:
        body = call.json(required={"urlId": str}, optional=_THREAD_FIELDS)
        url_id = common.url_id(call, self._cfg, body["urlId"])
        fields = self._thread_fields(body)
        written: Written[Any] = yield self._store.upsert_thread(
            tenant.id, url_id, created_ms=self._now_ms(), read_preference=PRIMARY, **fields
        )
        self._forget_thread(tenant.id, written.value.id)
        self._cache.invalidate((tenant.id, "url", url_id))
        if self._live is not None and ("locked_groups" in fields or "require_sign_in" in fields):
            self._live.thread_changed(tenant.id, url_id)
            # Open subscriptions the new lock refuses end (docs/live-protocol.md).
            self._live.access_changed(tenant.id, url_id)
        return 200, {"thread": thread_view(written.value)}, written

    @inlineCallbacks
    def update_thread(self, call: Call, tenant: Tenant) -> Any:
        thread_id = common.record_id(call.params["thread_id"], "thread")
        body = call.json(optional=_THREAD_FIELDS)
        thread = yield self._store.get_thread_by_id(tenant.id, thread_id, read_preference=PRIMARY)
        written = yield self._store.upsert_thread(
            tenant.id, thread.url_id, created_ms=self._now_ms(), read_preference=PRIMARY, **self._thread_fields(body)
        )
        self._forget_thread(tenant.id, thread_id)
        if self._live is not None:
            # Live subscribers are checked against the new rules from now
            # on, and those already subscribed are re-checked at once.
            self._live.thread_changed(tenant.id, thread.url_id)
            self._live.access_changed(tenant.id, thread.url_id)
        return 200, {"thread": thread_view(written.value)}, written

    @inlineCallbacks
    def delete_thread(self, call: Call, tenant: Tenant) -> Any:
        thread_id = common.record_id(call.params["thread_id"], "thread")
        thread = yield self._store.get_thread_by_id(tenant.id, thread_id, read_preference=PRIMARY)
        written = yield self._store.delete_thread(tenant.id, thread_id, read_preference=PRIMARY)
        self._forget_thread(tenant.id, thread_id)
        self._cache.invalidate((tenant.id, "url", thread.url_id))
        if self._live is not None:
            self._live.thread_changed(tenant.id, thread.url_id)
        return 200, {"deleted": True}, written

    # Comments

    @inlineCallbacks
    def list_comments(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        try:
            status = CommentStatus(call.query.get("status", "pending"))
        except ValueError:
            raise bad_request("status must be approved, pending, spam or removed", code="bad_status") from None
        thread_id = call.query.get("threadId")
        if thread_id is not None:
            thread_id = common.record_id(thread_id, "thread")
        page = yield self._store.list_comments(
            tenant.id,
            status=status,
            limit=common.page_limit(call, self._cfg),
            cursor=call.query.get("cursor") or None,
            thread_id=thread_id,
            read_preference=rp,
            token=token,
        )
        return Reply(200, {"comments": [common.manage_comment(c) for c in page.items], "nextCursor": page.next_cursor})

    @inlineCallbacks
    def get_comment(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        comment_id = common.record_id(call.params["comment_id"], "comment")
        comment = yield self._store.get_comment(tenant.id, comment_id, read_preference=rp, token=token)
        return Reply(200, {"comment": common.manage_comment(comment)})

    def _status(self, raw: str | None, default: CommentStatus) -> CommentStatus:
        if raw is None:
            return default
        try:
            return CommentStatus(raw)
        except ValueError:
            raise bad_request("status must be approved, pending, spam or removed", code="bad_status") from None

    @inlineCallbacks
    def create_comment(self, call: Call, tenant: Tenant) -> Any:
        """Add a comment as the tenant (imports, or posts on a user's behalf)."""
        body = call.json(
            required={"urlId": str, "text": str, "displayName": str},
            optional={"parentId": str, "status": str, "userId": str, "pageTitle": str},
        )
        cfg = self._cfg
        url_id = common.url_id(call, cfg, body["urlId"])
        text = common.comment_text(cfg, body["text"])
        name = common.display_name(cfg, body["displayName"])
        status = self._status(body.get("status"), CommentStatus.APPROVED)
        parent_id = body.get("parentId")
        if parent_id is not None:
            parent_id = common.record_id(parent_id, "parent comment")
        external = body.get("userId") or _API_AUTHOR
        if len(external) > 256:
            raise bad_request("userId is longer than 256 characters", code="bad_user_id")
        # One write (one round trip to a far primary): the user (created or
        # renamed), the thread (created, or retitled when a title is given),
        # the comment; a reply to a missing parent or one in another thread
        # applies nothing.
        written = yield self._store.post_comment(
            NewPost(
                tenant_id=tenant.id,
                url_id=url_id,
                poster=UserPoster(external, name),
                parent_id=parent_id,
                display_name=name,
                body_source=text,
                body_html=render(text),
                status=status,
                created_ms=self._now_ms(),
                title=body.get("pageTitle") or None,
                retitle=True,
            ),
            read_preference=PRIMARY,
        )
        posted = written.value
        self._forget_thread(tenant.id, posted.thread.id)
        self._cache.invalidate((tenant.id, "url", url_id))
        if self._live is not None:
            self._live.thread_changed(tenant.id, url_id)
            self._live.created(posted.comment)
        return 201, {"comment": common.manage_comment(posted.comment)}, written

    @inlineCallbacks
    def update_comment(self, call: Call, tenant: Tenant) -> Any:
        comment_id = common.record_id(call.params["comment_id"], "comment")
        body = call.json(optional={"text": str, "status": str})
        text = body.get("text")
        new_body = None
        if text is not None:
            text = common.comment_text(self._cfg, text)
            new_body = (text, render(text))
        status = self._status(body.get("status"), CommentStatus.APPROVED) if body.get("status") is not None else None
        # With the state before, from the same write, to tell live threads
        # what changed (edited, approved, or moderated away).
        written = yield self._store.change_comment(
            tenant.id, comment_id, edited_ms=self._now_ms(), body=new_body, status=status, read_preference=PRIMARY
        )
        change = written.value
        self._forget_thread(tenant.id, change.after.thread_id)
        if self._live is not None:
            self._live.changed(change.before, change.after)
        return 200, {"comment": common.manage_comment(change.after)}, written

    @inlineCallbacks
    def delete_comment(self, call: Call, tenant: Tenant) -> Any:
        comment_id = common.record_id(call.params["comment_id"], "comment")
        comment = yield self._store.get_comment(tenant.id, comment_id, read_preference=PRIMARY)
        written = yield self._store.delete_comment(
            tenant.id, comment_id, read_preference=PRIMARY, deleted_ms=self._now_ms()
        )
        self._forget_thread(tenant.id, comment.thread_id)
        if self._live is not None and comment.status is CommentStatus.APPROVED:
            self._live.removed(comment)
        return 200, {"deleted": written.value}, written

    # Settings

    @inlineCallbacks
    def get_settings(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        """The tenant's settings; of the SSO secret only whether one is set."""
        if rp is not PRIMARY or token is not None:
            # The tenant from authentication was read NEAREST: read it as asked.
            tenant = yield self._store.get_tenant(tenant.id, read_preference=rp, token=token)
        secrets = yield self._store.get_sso_secrets(tenant.id, now_ms=self._now_ms(), read_preference=rp, token=token)
        return Reply(200, {"settings": to_json(from_stored(tenant.settings)), "sso": sso_status(secrets)})

    @inlineCallbacks
    def update_settings(self, call: Call, tenant: Tenant) -> Any:
        """Change some settings and/or rotate the SSO secret, all or nothing.

        Unknown keys and bad values are 422 ``invalid_setting`` naming the
        key; nothing is written then.
        """
        body = dict(call.json_object())
        change = None
        if "ssoSecret" in body or "ssoSecretOverlapSeconds" in body:
            secret = body.pop("ssoSecret", ...)
            overlap = body.pop("ssoSecretOverlapSeconds", None)
            if secret is ...:
                raise _invalid("ssoSecretOverlapSeconds", "only applies together with ssoSecret")
            try:
                change = SsoSecretChange(
                    check_secret("ssoSecret", secret), self._now_ms(), check_overlap(overlap) * 1000
                )
            except SettingsError as e:
                raise _invalid(e.key, e.message) from None
        # The current settings from the primary: a change applies to the newest.
        current = yield self._store.get_tenant(tenant.id, read_preference=PRIMARY)
        try:
            updated = apply_patch(from_stored(current.settings), body)
        except SettingsError as e:
            raise _invalid(e.key, e.message) from None
        written = yield self._store.update_tenant_settings(
            tenant.id, to_json(updated), sso_secret=change, read_preference=PRIMARY
        )
        if self._tenants is not None:
            self._tenants.forget(tenant.id)
        if self._live is not None and "defaultGroups" in body:
            # Threads without a lock of their own follow defaultGroups:
            # their open subscriptions are re-checked at once.
            self._live.access_changed(tenant.id)
        secrets = yield self._store.get_sso_secrets(tenant.id, now_ms=self._now_ms(), read_preference=PRIMARY)
        self._log.info(
            "tenant {tenant} settings changed: {keys}",
            tenant=tenant.id,
            keys=sorted(body) + (["ssoSecret"] if change is not None else []),
        )
        return 200, {"settings": to_json(updated), "sso": sso_status(secrets)}, written

    # Keys and credits

    @inlineCallbacks
    def list_keys(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        keys = yield self._store.list_api_keys(tenant.id, read_preference=rp, token=token)
        return Reply(
            200,
            {"keys": [{"id": k.id, "createdAt": k.created_ms, "revokedAt": k.revoked_ms} for k in keys]},
        )

    @inlineCallbacks
    def create_key(self, call: Call, tenant: Tenant) -> Any:
        key = new_api_key()
        written = yield self._store.add_api_key(
            tenant.id, hash_api_key(key), created_ms=self._now_ms(), read_preference=PRIMARY
        )
        return 201, {"id": written.value.id, "key": key}, written

    @inlineCallbacks
    def revoke_key(self, call: Call, tenant: Tenant) -> Any:
        key_id = common.record_id(call.params["key_id"], "API key")
        written = yield self._store.revoke_api_key(
            tenant.id, key_id, revoked_ms=self._now_ms(), read_preference=PRIMARY
        )
        return 200, {"id": key_id, "revokedAt": written.value.revoked_ms}, written

    @inlineCallbacks
    def credits(self, call: Call, tenant: Tenant, rp: ReadPreference, token: str | None) -> Any:
        since = common.query_int(call, "since", 0, 0, 2**53)
        flushed = yield self._store.credit_usage(tenant.id, since_ms=since, read_preference=rp, token=token)
        usage = merge_usage(flushed, self._credits.pending(tenant.id))
        return Reply(
            200,
            {
                "since": since,
                "operations": common.usage_view(usage),
                "totalCredits": sum(u.credits for u in usage),
                "prices": {
                    "primaryRead": self._credits.price(PRIMARY),
                    "nearestRead": self._credits.price(NEAREST),
                    "write": self._credits.price(None),
                },
            },
        )
