# -*- test-case-name: tests.unit.store.test_sqlite,tests.integration.test_postgresql_store -*-
"""The webhook outbox in the SQL store: endpoints, event rows written in the
transaction of the change, and leased claims (docs/webhooks.md).

Every statement here stands alone (it needs no result read before it), so
a write that emits events sends them with its other statements: the
PostgreSQL backend sends a whole write in one round trip. An event becomes
one row per subscribed, active endpoint of the tenant through
``INSERT ... SELECT`` from ``webhook_endpoints``: a tenant without
endpoints costs one index lookup and no row.

Claims are one ``UPDATE ... WHERE seq IN (SELECT ... FOR UPDATE SKIP
LOCKED)``: on PostgreSQL nodes sharing a primary skip each other's rows; on
SQLite the write transaction (``BEGIN IMMEDIATE``) already excludes every
other writer. A row is claimable when it is due, not leased (or its lease
expired), and no older row of its endpoint is due or leased: deliveries of
an endpoint go in the order of the changes, except that a row waiting to
be retried lets the later ones pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Executable,
    String,
    and_,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from twisted.internet.defer import Deferred

from . import schema as s
from .db import POSTGRESQL, SQLITE, Sql, join
from .errors import InvalidReference, NotFound
from .model import (
    AttemptOutcome,
    Comment,
    DeliveryDone,
    DeliveryState,
    Page,
    ReadPreference,
    Thread,
    WebhookClaim,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookQueue,
    Written,
)
from .shared import decode_cursor, encode_cursor, new_id, page_of

if TYPE_CHECKING:
    from .db import Conn

_PENDING = DeliveryState.PENDING.value
_FAILED = DeliveryState.FAILED.value
_ENDPOINT_FIELDS = ("url", "secret", "events", "active", "description")


def encode_events(events: Sequence[WebhookEvent]) -> str:
    """``|a|b|``: subscribed-to checks are one ``LIKE '%|a|%'``."""
    return "|" + "|".join(sorted({e.value for e in events})) + "|"


def _decode_events(text: str) -> tuple[WebhookEvent, ...]:
    return tuple(WebhookEvent(v) for v in text.strip("|").split("|") if v)


def comment_data(comment: Comment, thread: Thread | None = None, **extra: Any) -> dict[str, Any]:
    """The ``comment`` an event carries (docs/webhooks.md)."""
    data: dict[str, Any] = {
        "id": comment.id,
        "threadId": comment.thread_id,
        "parentId": comment.parent_id,
        "authorId": comment.author_id,
        "displayName": comment.display_name,
        "text": comment.body_source,
        "html": comment.body_html,
        "status": comment.status.value,
        "createdAt": comment.created_ms,
        "editedAt": comment.edited_ms,
        "flags": comment.flag_count,
    }
    if thread is not None:
        data["urlId"] = thread.url_id
    data.update(extra)
    return data


def thread_data(thread: Thread) -> dict[str, Any]:
    """The ``thread`` an event carries."""
    return {
        "id": thread.id,
        "urlId": thread.url_id,
        "title": thread.title,
        "closed": thread.closed,
        "createdAt": thread.created_ms,
    }


# Every value in the SELECT list is cast: PostgreSQL must know a parameter's
# type there (an INSERT ... SELECT does not lend it the column's).
_INSERT = (
    "INSERT INTO webhook_deliveries (event_id, event_type, tenant_id, endpoint_id, created_ms, data, state, attempts,"
    " next_attempt_ms, window_start_ms) SELECT"
)
_INSERT_TAIL = (
    ", CAST(:ob_event_type AS TEXT), CAST(:ob_tenant_id AS TEXT), webhook_endpoints.id, CAST(:ob_created_ms AS BIGINT),"
)
_INSERT_STATE = (
    ", CAST(:ob_state AS TEXT), CAST(0 AS INTEGER), CAST(:ob_created_ms AS BIGINT), CAST(:ob_created_ms AS BIGINT)"
)
# The tenant's active endpoints subscribed to the event (``events`` is
# ``|a|b|``: see :func:`encode_events`).
_SUBSCRIBED = (
    " WHERE webhook_endpoints.tenant_id = :ob_tenant_id AND webhook_endpoints.active"
    " AND webhook_endpoints.events LIKE :ob_events"
)
_ENDPOINTS = " FROM webhook_endpoints" + _SUBSCRIBED
_COMMENTS_ENDPOINTS = (
    " FROM comments JOIN webhook_endpoints ON webhook_endpoints.tenant_id = comments.tenant_id"
    + _SUBSCRIBED
    + " AND comments.tenant_id = :ob_tenant_id"
)


def _insert(
    tenant_id: str,
    event: WebhookEvent,
    event_id: Sql,
    created_ms: int,
    data: Sql,
    source: str,
    where: Sql | None,
) -> Sql:
    """``INSERT INTO webhook_deliveries ... SELECT``: one row per subscribed
    active endpoint of the tenant (and per row of ``source``, the FROM and
    WHERE of the rows joined to them, that matches ``where``)."""
    statement = (
        Sql(_INSERT)
        + event_id
        + Sql(_INSERT_TAIL, ob_event_type=event.value, ob_tenant_id=tenant_id, ob_created_ms=created_ms)
        + data
        + Sql(_INSERT_STATE + source, ob_state=_PENDING, ob_events="%|" + event.value + "|%")
    )
    if where is not None:
        statement = statement + Sql("AND (") + where + Sql(")")
    return statement


def emit(
    tenant_id: str,
    event: WebhookEvent,
    event_id: str,
    created_ms: int,
    data: dict[str, Any],
    *,
    when: Sql | None = None,
) -> Sql:
    """One event, to every subscribed active endpoint of the tenant: one
    ``INSERT ... SELECT`` run in the caller's write transaction.

    :param when: a condition, evaluated in SQL when the statement runs:
        no event unless it holds (e.g. "the thread was created by this
        write"), so a write's plan needs nothing read first. It stands
        alone (an ``EXISTS``): the statement reads only
        ``webhook_endpoints``.
    """
    return _insert(
        tenant_id,
        event,
        Sql("CAST(:ob_event_id AS TEXT)", ob_event_id=event_id),
        created_ms,
        Sql("CAST(:ob_data AS TEXT)", ob_data=json.dumps(data, separators=(",", ":"))),
        _ENDPOINTS,
        when,
    )


#: The function building a JSON object from ``key, value, ...`` in SQL:
#: ``json`` on PostgreSQL (so objects nest), JSON text with SQLite's JSON
#: subtype on SQLite (so they nest there too).
_JSON_OBJECT = {SQLITE: "json_object", POSTGRESQL: "json_build_object"}


def sql_object(backend: str, fields: Mapping[str, Any], *, prefix: str = "ob_json") -> Sql:
    """A JSON object built in SQL from ``fields`` (values: :class:`Sql`
    expressions, nested dicts, or strings, ints and ``None``), in
    ``backend``'s dialect: the one thing SQLite and PostgreSQL spell
    differently here. Wrap the outermost in :func:`json_text` to store it.

    Every Python value is a parameter named after its key's path (under
    ``prefix``), cast to its type, as PostgreSQL must know each argument's.
    """
    parts: list[Sql] = []
    for key, value in fields.items():
        # Keys are constants of this module and its callers: plain words,
        # so the key's literal needs no quoting and names a parameter.
        if not key.isalnum():
            raise ValueError("JSON key {!r} is not a plain word".format(key))
        name = prefix + "_" + key
        if isinstance(value, Sql):
            sql = value
        elif value is None:
            sql = Sql("NULL")
        elif isinstance(value, bool):
            raise TypeError("no booleans in SQL-built event data")
        elif isinstance(value, int):
            sql = Sql("CAST(:" + name + " AS BIGINT)", **{name: value})
        elif isinstance(value, Mapping):
            sql = sql_object(backend, value, prefix=name)
        else:
            sql = Sql("CAST(:" + name + " AS TEXT)", **{name: str(value)})
        parts.append(Sql("'" + key + "',") + sql)
    if not parts:
        return Sql(_JSON_OBJECT[backend] + "()")
    return Sql(_JSON_OBJECT[backend] + "(") + join(parts, ", ") + Sql(")")


def json_text(value: Sql) -> Sql:
    """The JSON text of a :func:`sql_object` (the ``data`` column)."""
    return Sql("CAST(") + value + Sql("AS TEXT)")


def comment_sql(**overrides: Any) -> dict[str, Any]:
    """The full ``comment`` of an event (:func:`comment_data`) built in SQL
    from the ``comments`` row of the statement, except the fields named in
    ``overrides`` (by their JSON key: values known before the write, or
    other SQL expressions such as ``urlId``)."""
    fields: dict[str, Any] = {
        "id": Sql("comments.id"),
        "threadId": Sql("comments.thread_id"),
        "parentId": Sql("comments.parent_id"),
        "authorId": Sql("comments.author_id"),
        "displayName": Sql("comments.display_name"),
        "text": Sql("comments.body_source"),
        "html": Sql("comments.body_html"),
        "status": Sql("comments.status"),
        "createdAt": Sql("comments.created_ms"),
        "editedAt": Sql("comments.edited_ms"),
        "flags": Sql("comments.flag_count"),
    }
    fields.update(overrides)
    return fields


def emit_for_comment(
    backend: str,
    tenant_id: str,
    event: WebhookEvent,
    event_id: str,
    which: Sql,
    created_ms: int,
    data: Mapping[str, Any],
) -> Sql:
    """One event per comment matching ``which`` (one, by its id, as used),
    its ``data`` built in SQL from the comment's row when the statement runs
    (:func:`comment_sql`): for a write that does not know the row before
    it (a flag, an edit, a post to a thread it may create), in the same
    flight as the change.

    :param backend: the dialect of the JSON built (:attr:`Conn.backend`).
    :param which: a condition on the row, its columns named
        ``comments.<column>`` (``webhook_endpoints`` is joined too).
    """
    return _insert(
        tenant_id,
        event,
        Sql("CAST(:ob_event_id AS TEXT)", ob_event_id=event_id),
        created_ms,
        json_text(sql_object(backend, data)),
        _COMMENTS_ENDPOINTS,
        which,
    )


# The ``data`` of :func:`emit_for_comments`, concatenated in SQL around
# the row's values (the parameters are text, so cast: PostgreSQL must know).
_COMMENTS_DATA = (
    "CAST(:ob_open AS TEXT) || comments.id || CAST(:ob_thread AS TEXT) || comments.thread_id"
    " || CAST(:ob_author AS TEXT) || comments.author_id || CAST(:ob_status AS TEXT) || comments.status"
    " || CAST(:ob_close AS TEXT)"
)


def emit_for_comments(
    tenant_id: str,
    event: WebhookEvent,
    event_prefix: str,
    which: Sql,
    created_ms: int,
    *,
    status: str,
    extra: dict[str, Any],
) -> Sql:
    """One event per comment matching ``which``, built in SQL from the
    comment's row, so a bulk change needs nothing read first. Run it before
    the statement that changes the comments: ``previousStatus`` is the
    status the row has then.

    The ``data`` JSON is concatenated in SQL: every value taken from the row
    is an id (URL-safe characters) or a status word, which need no escaping;
    ``extra`` is encoded here.

    :param event_prefix: the event id is ``<prefix>.<comment id>``.
    :param which: a condition on the rows, their columns named
        ``comments.<column>`` (``webhook_endpoints`` is joined too).
    """
    tail = json.dumps(extra, separators=(",", ":"))[1:]
    data = Sql(
        _COMMENTS_DATA,
        ob_open='{"comment":{"id":"',
        ob_thread='","threadId":"',
        ob_author='","authorId":"',
        ob_status='","status":"' + status + '","previousStatus":"',
        ob_close='"},' + tail if tail != "}" else '"}}',
    )
    return _insert(
        tenant_id,
        event,
        Sql("CAST(:ob_event_prefix AS TEXT) || comments.id", ob_event_prefix=event_prefix + "."),
        created_ms,
        data,
        _COMMENTS_ENDPOINTS,
        which,
    )


def _endpoint(row: Any) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row.id,
        tenant_id=row.tenant_id,
        url=row.url,
        events=_decode_events(row.events),
        active=bool(row.active),
        description=row.description,
        created_ms=row.created_ms,
        updated_ms=row.updated_ms,
        secret_set_ms=row.secret_set_ms,
        consecutive_failures=row.consecutive_failures,
        disabled_reason=row.disabled_reason,
        disabled_ms=row.disabled_ms,
    )


def _delivery(row: Any, *, with_target: bool = False) -> WebhookDelivery:
    return WebhookDelivery(
        seq=int(row.seq),
        event_id=row.event_id,
        event_type=WebhookEvent(row.event_type),
        tenant_id=row.tenant_id,
        endpoint_id=row.endpoint_id,
        created_ms=row.created_ms,
        data=row.data,
        state=DeliveryState(row.state),
        attempts=row.attempts,
        next_attempt_ms=row.next_attempt_ms,
        window_start_ms=row.window_start_ms,
        last_attempt_ms=row.last_attempt_ms,
        last_status=row.last_status,
        last_error=row.last_error,
        url=row.target_url if with_target else "",
        secret=row.target_secret if with_target else "",
    )


class WebhookStoreMixin:
    """:class:`~fastedge.store.interfaces.IWebhookStore` for
    :class:`~fastedge.store.sql.SqlStore` (which provides the plumbing
    used here: ``_call``, ``_reading``, ``_writing``, ``_batch``, ``_written``)."""

    if TYPE_CHECKING:
        _call: Callable[..., Any]
        _reading: Callable[..., Any]
        _writing: Callable[..., Any]
        _batch: Callable[..., Any]
        _written: Callable[..., Any]
        _require_tenant: Callable[..., Any]

    # Endpoints

    def create_webhook(
        self,
        tenant_id: str,
        *,
        url: str,
        secret: str,
        events: Sequence[WebhookEvent],
        active: bool,
        description: str,
        created_ms: int,
        read_preference: ReadPreference,
    ) -> Deferred[Written[WebhookEndpoint]]:
        endpoint = WebhookEndpoint(
            id=new_id(),
            tenant_id=tenant_id,
            url=url,
            events=_decode_events(encode_events(events)),
            active=active,
            description=description,
            created_ms=created_ms,
            updated_ms=created_ms,
            secret_set_ms=created_ms,
            consecutive_failures=0,
            disabled_reason=None,
            disabled_ms=None,
        )

        def go() -> Written[WebhookEndpoint]:
            with self._writing() as conn:
                self._require_tenant(conn, tenant_id)
                conn.execute(
                    insert(s.webhook_endpoints).values(
                        id=endpoint.id,
                        tenant_id=tenant_id,
                        url=url,
                        secret=secret,
                        events=encode_events(events),
                        active=active,
                        description=description,
                        created_ms=created_ms,
                        updated_ms=created_ms,
                        secret_set_ms=created_ms,
                        consecutive_failures=0,
                    )
                )
                return self._written(conn, endpoint)

        return self._call("create_webhook", read_preference, go, write=True)

    def _endpoint_row(self, conn: Conn, tenant_id: str, webhook_id: str) -> WebhookEndpoint:
        e = s.webhook_endpoints.c
        row = conn.execute(select(s.webhook_endpoints).where(e.tenant_id == tenant_id, e.id == webhook_id)).first()
        if row is None:
            raise NotFound("webhook")
        return _endpoint(row)

    def get_webhook(
        self, tenant_id: str, webhook_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[WebhookEndpoint]:
        def go() -> WebhookEndpoint:
            with self._reading(read_preference) as conn:
                return self._endpoint_row(conn, tenant_id, webhook_id)

        return self._call("get_webhook", read_preference, go, token=token)

    def list_webhooks(
        self, tenant_id: str, *, read_preference: ReadPreference, token: str | None = None
    ) -> Deferred[list[WebhookEndpoint]]:
        def go() -> list[WebhookEndpoint]:
            e = s.webhook_endpoints.c
            with self._reading(read_preference) as conn:
                rows = conn.execute(
                    select(s.webhook_endpoints).where(e.tenant_id == tenant_id).order_by(e.created_ms, e.id)
                ).all()
            return [_endpoint(r) for r in rows]

        return self._call("list_webhooks", read_preference, go, token=token)

    def update_webhook(
        self,
        tenant_id: str,
        webhook_id: str,
        *,
        updated_ms: int,
        read_preference: ReadPreference,
        url: str | None = None,
        secret: str | None = None,
        events: Sequence[WebhookEvent] | None = None,
        active: bool | None = None,
        description: str | None = None,
    ) -> Deferred[Written[WebhookEndpoint]]:
        values: dict[str, Any] = {"updated_ms": updated_ms}
        if url is not None:
            values["url"] = url
        if secret is not None:
            values.update(secret=secret, secret_set_ms=updated_ms)
        if events is not None:
            values["events"] = encode_events(events)
        if description is not None:
            values["description"] = description
        if active is not None:
            values["active"] = active
            if active:
                # Turned back on by the tenant: the count starts again.
                values.update(consecutive_failures=0, disabled_reason=None, disabled_ms=None)

        def go() -> Written[WebhookEndpoint]:
            e = s.webhook_endpoints.c
            with self._writing() as conn:
                where = and_(e.tenant_id == tenant_id, e.id == webhook_id)
                done = conn.execute(update(s.webhook_endpoints).where(where).values(**values))
                if done.rowcount == 0:
                    raise NotFound("webhook")
                if active is False:
                    self._fail_pending(conn, webhook_id, updated_ms, "endpoint turned off by the tenant")
                return self._written(conn, self._endpoint_row(conn, tenant_id, webhook_id))

        return self._call("update_webhook", read_preference, go, write=True)

    def delete_webhook(
        self, tenant_id: str, webhook_id: str, *, read_preference: ReadPreference
    ) -> Deferred[Written[None]]:
        def go() -> Written[None]:
            e = s.webhook_endpoints.c
            d = s.webhook_deliveries.c
            with self._writing() as conn:
                done = conn.execute(delete(s.webhook_endpoints).where(e.tenant_id == tenant_id, e.id == webhook_id))
                if done.rowcount == 0:
                    raise NotFound("webhook")
                conn.execute(delete(s.webhook_deliveries).where(d.tenant_id == tenant_id, d.endpoint_id == webhook_id))
                return self._written(conn, None)

        return self._call("delete_webhook", read_preference, go, write=True)

    def _fail_pending(self, conn: Conn, webhook_id: str, now_ms: int, reason: str) -> None:
        d = s.webhook_deliveries.c
        conn.execute(
            update(s.webhook_deliveries)
            .where(d.endpoint_id == webhook_id, d.state == _PENDING)
            .values(state=_FAILED, lease_owner=None, lease_until_ms=None, last_error=reason)
        )

    # Deliveries, as the tenant sees them

    def list_webhook_deliveries(
        self,
        tenant_id: str,
        webhook_id: str,
        *,
        state: DeliveryState,
        limit: int,
        cursor: str | None,
        read_preference: ReadPreference,
        token: str | None = None,
    ) -> Deferred[Page[WebhookDelivery]]:
        def go() -> Page[WebhookDelivery]:
            d = s.webhook_deliveries.c
            after = decode_cursor(cursor, "deliveries", (int,)) if cursor else None
            query = select(s.webhook_deliveries).where(
                d.tenant_id == tenant_id, d.endpoint_id == webhook_id, d.state == state.value
            )
            if after is not None:
                query = query.where(d.seq > after[0])
            query = query.order_by(d.seq).limit(limit + 1)
            with self._reading(read_preference) as conn:
                self._endpoint_row(conn, tenant_id, webhook_id)
                rows = conn.execute(query).all()
            return page_of(rows, limit, _delivery, lambda last: encode_cursor("deliveries", int(last.seq)))

        return self._call("list_webhook_deliveries", read_preference, go, token=token)

    def replay_webhook_delivery(
        self, tenant_id: str, webhook_id: str, event_id: str, *, now_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[WebhookDelivery]]:
        """Send a failed delivery again: pending, due now, with a fresh
        retry window. ``NotFound`` for no failed delivery of that event to
        that endpoint; ``InvalidReference`` when the endpoint is off."""

        def go() -> Written[WebhookDelivery]:
            d = s.webhook_deliveries.c
            with self._writing() as conn:
                endpoint = self._endpoint_row(conn, tenant_id, webhook_id)
                where = and_(
                    d.tenant_id == tenant_id, d.endpoint_id == webhook_id, d.event_id == event_id, d.state == _FAILED
                )
                if not endpoint.active:
                    raise InvalidReference("the webhook is turned off; turn it on before replaying")
                done = conn.execute(
                    update(s.webhook_deliveries)
                    .where(where)
                    .values(state=_PENDING, attempts=0, next_attempt_ms=now_ms, window_start_ms=now_ms)
                )
                if done.rowcount == 0:
                    raise NotFound("failed delivery")
                row = conn.execute(
                    select(s.webhook_deliveries).where(d.endpoint_id == webhook_id, d.event_id == event_id)
                ).one()
                return self._written(conn, _delivery(row))

        return self._call("replay_webhook_delivery", read_preference, go, write=True)

    # Deliveries, as the sender sees them

    def claim_webhook_deliveries(
        self,
        *,
        owner: str,
        now_ms: int,
        lease_ms: int,
        limit: int,
        read_preference: ReadPreference,
        finished: Sequence[DeliveryDone] = (),
    ) -> Deferred[WebhookClaim]:
        """Remove ``finished`` deliveries, then lease up to ``limit`` due
        deliveries to ``owner`` until ``now_ms + lease_ms`` (see the module
        docstring): one transaction, so a busy endpoint costs one write per
        delivery, however far the primary.

        :param owner: unique to this claim; finishing a delivery names it,
            so a claim whose lease expired (and was retaken) changes nothing.
        """
        d = s.webhook_deliveries
        dc = d.c
        other = d.alias("head")
        o = other.c
        e = s.webhook_endpoints.c
        until = now_ms + lease_ms
        # Each active endpoint's head: its oldest pending delivery that is
        # due or leased (one waiting for a retry is passed over). One index
        # probe per endpoint (webhook_deliveries_endpoint), however long
        # the queue; a head that is leased keeps the endpoint's later
        # deliveries back.
        head = (
            select(func.min(o.seq))
            .where(
                o.endpoint_id == e.id, o.state == _PENDING, or_(o.next_attempt_ms <= now_ms, o.lease_until_ms > now_ms)
            )
            .scalar_subquery()
        )
        heads = select(head.label("seq")).select_from(s.webhook_endpoints).where(e.active.is_(True)).subquery("heads")
        free = or_(dc.lease_until_ms.is_(None), dc.lease_until_ms <= now_ms)
        # From the heads to their rows by primary key: driven by the
        # endpoints, never by a scan of the whole queue.
        candidates = (
            select(dc.seq)
            .select_from(heads.join(d, dc.seq == heads.c.seq))
            .where(dc.state == _PENDING, dc.next_attempt_ms <= now_ms, free)
            .order_by(dc.seq)
            .limit(limit)
            .with_for_update(skip_locked=True, of=d)
        )
        statements: list[Executable] = []
        if finished:
            statements.append(
                delete(d)
                .where(or_(*[and_(dc.seq == f.seq, dc.lease_owner == f.owner) for f in finished]))
                .returning(dc.seq)
            )
            # The receiver accepted: the endpoint's run of failures ends.
            statements.append(
                update(s.webhook_endpoints)
                .where(e.id.in_(sorted({f.endpoint_id for f in finished})), e.consecutive_failures != 0)
                .values(consecutive_failures=0)
            )
        if limit > 0:
            statements.append(update(d).where(dc.seq.in_(candidates)).values(lease_owner=owner, lease_until_ms=until))
            statements.append(
                select(d, e.url.label("target_url"), e.secret.label("target_secret"))
                .join(s.webhook_endpoints, e.id == dc.endpoint_id)
                .where(dc.lease_owner == owner, dc.state == _PENDING)
                .order_by(dc.seq)
            )

        def go() -> WebhookClaim:
            if not statements:
                return WebhookClaim(deliveries=[], finished=[])
            with self._writing() as conn:
                results = self._batch(conn, statements, commit=True)
                self._written(conn, None)
            done = sorted(int(r.seq) for r in results[0] or ()) if finished else []
            claimed = results[-1] if limit > 0 else []
            return WebhookClaim(deliveries=[_delivery(r, with_target=True) for r in claimed or ()], finished=done)

        return self._call("claim_webhook_deliveries", read_preference, go, write=True)

    def release_webhook_deliveries(
        self, seqs: Sequence[int], *, owner: str, read_preference: ReadPreference
    ) -> Deferred[Written[int]]:
        """Give leases back unsent (a node stopping): retaken at once.

        :returns: how many were still ours.
        """
        dc = s.webhook_deliveries.c

        def go() -> Written[int]:
            with self._writing() as conn:
                done = conn.execute(
                    update(s.webhook_deliveries)
                    .where(dc.seq.in_(list(seqs)), dc.lease_owner == owner)
                    .values(lease_owner=None, lease_until_ms=None)
                )
                return self._written(conn, int(done.rowcount))

        return self._call("release_webhook_deliveries", read_preference, go, write=True)

    def record_webhook_failure(
        self, seq: int, endpoint_id: str, outcome: AttemptOutcome, *, owner: str, read_preference: ReadPreference
    ) -> Deferred[Written[WebhookEndpoint | None]]:
        """A failed attempt: retry later or fail for good, count the
        endpoint's failures, turn it off per ``outcome`` (its pending
        deliveries fail with it). One batch of stand-alone statements.

        :returns: the endpoint if this attempt turned it off, else ``None``.
        """
        dc = s.webhook_deliveries.c
        e = s.webhook_endpoints.c
        mine = and_(dc.seq == seq, dc.lease_owner == owner)
        values: dict[str, Any] = dict(
            attempts=dc.attempts + 1,
            lease_owner=None,
            lease_until_ms=None,
            last_attempt_ms=outcome.now_ms,
            last_status=outcome.status,
            last_error=outcome.error[:1000],
        )
        if outcome.retry_at_ms is None:
            values["state"] = _FAILED
        else:
            values["next_attempt_ms"] = outcome.retry_at_ms
        ours = exists().where(mine)
        counted = e.consecutive_failures + 1
        if outcome.disable_reason is not None:
            turn_off: ColumnElement[bool] = literal(True)
            reason: Any = literal(outcome.disable_reason, String)
        else:
            turn_off = counted >= outcome.disable_after
            reason = literal(
                "{} attempts in a row failed; the last: {}".format(outcome.disable_after, outcome.error[:500]), String
            )
        was_active = e.active.is_(True)
        statements: list[Executable] = [
            # The endpoint first: the condition reads the delivery's lease,
            # which the next statement clears.
            update(s.webhook_endpoints)
            .where(e.id == endpoint_id, ours)
            .values(
                consecutive_failures=counted,
                active=case((and_(was_active, turn_off), False), else_=e.active),
                disabled_reason=case((and_(was_active, turn_off), reason), else_=e.disabled_reason),
                disabled_ms=case(
                    (and_(was_active, turn_off), literal(outcome.now_ms, BigInteger)), else_=e.disabled_ms
                ),
            ),
            update(s.webhook_deliveries).where(mine).values(**values),
            update(s.webhook_deliveries)
            .where(
                dc.endpoint_id == endpoint_id,
                dc.state == _PENDING,
                exists().where(e.id == endpoint_id, e.active.is_(False), e.disabled_ms == outcome.now_ms),
            )
            .values(state=_FAILED, lease_owner=None, lease_until_ms=None, last_error="the endpoint was turned off"),
            select(s.webhook_endpoints).where(
                e.id == endpoint_id, e.active.is_(False), e.disabled_ms == outcome.now_ms
            ),
        ]

        def go() -> Written[WebhookEndpoint | None]:
            with self._writing() as conn:
                rows = self._batch(conn, statements, commit=True)[3]
                return self._written(conn, _endpoint(rows[0]) if rows else None)

        return self._call("record_webhook_failure", read_preference, go, write=True)

    def webhook_queue(self, *, read_preference: ReadPreference, token: str | None = None) -> Deferred[WebhookQueue]:
        """How many deliveries wait and fail, and the oldest waiting one's time."""
        dc = s.webhook_deliveries.c

        def go() -> WebhookQueue:
            with self._reading(read_preference) as conn:
                rows = conn.execute(select(dc.state, func.count(), func.min(dc.created_ms)).group_by(dc.state)).all()
            by_state = {r[0]: (int(r[1]), r[2]) for r in rows}
            pending, oldest = by_state.get(_PENDING, (0, None))
            return WebhookQueue(
                pending=pending,
                failed=by_state.get(_FAILED, (0, None))[0],
                oldest_pending_ms=None if oldest is None else int(oldest),
            )

        return self._call("webhook_queue", read_preference, go, token=token)
