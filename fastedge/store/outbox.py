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

from twisted.internet.defer import Deferred

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
_FROM_ENDPOINTS = " FROM webhook_endpoints" + _SUBSCRIBED
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
        _FROM_ENDPOINTS,
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


# The statements of the endpoints and deliveries: SQL text both SQLite and
# PostgreSQL run as it is (booleans as TRUE/FALSE, values as parameters).

_INSERT_ENDPOINT = (
    "INSERT INTO webhook_endpoints (id, tenant_id, url, secret, events, active, description,"
    " created_ms, updated_ms, secret_set_ms, consecutive_failures)"
    " VALUES (:id, :tenant_id, :url, :secret, :events, :active, :description,"
    " :created_ms, :created_ms, :created_ms, 0)"
)
_ENDPOINT = "SELECT * FROM webhook_endpoints WHERE tenant_id = :tenant_id AND id = :id"
_ENDPOINTS = "SELECT * FROM webhook_endpoints WHERE tenant_id = :tenant_id ORDER BY created_ms, id"
_DELETE_ENDPOINT = "DELETE FROM webhook_endpoints WHERE tenant_id = :tenant_id AND id = :id"
_DELETE_DELIVERIES = "DELETE FROM webhook_deliveries WHERE tenant_id = :tenant_id AND endpoint_id = :endpoint_id"
_FAIL_PENDING = (
    "UPDATE webhook_deliveries SET state = :failed, lease_owner = NULL, lease_until_ms = NULL, last_error = :reason"
    " WHERE endpoint_id = :endpoint_id AND state = :pending"
)
_DELIVERIES = (
    "SELECT * FROM webhook_deliveries WHERE tenant_id = :tenant_id AND endpoint_id = :endpoint_id AND state = :state"
)
_REPLAY = (
    "UPDATE webhook_deliveries SET state = :pending, attempts = 0, next_attempt_ms = :now_ms, window_start_ms = :now_ms"
    " WHERE tenant_id = :tenant_id AND endpoint_id = :endpoint_id AND event_id = :event_id AND state = :failed"
)
_DELIVERY = "SELECT * FROM webhook_deliveries WHERE endpoint_id = :endpoint_id AND event_id = :event_id"

# Each active endpoint's head: its oldest pending delivery that is due or
# leased (one waiting for a retry is passed over). One index probe per
# endpoint (webhook_deliveries_endpoint), however long the queue; a head
# that is leased keeps the endpoint's later deliveries back. From the heads
# to their rows by primary key: driven by the endpoints, never by a scan of
# the whole queue. ``{lock}``: PostgreSQL's row locks (see _claim_lock).
_CLAIM = (
    "UPDATE webhook_deliveries SET lease_owner = :owner, lease_until_ms = :until"
    " WHERE seq IN ("
    "SELECT d.seq FROM ("
    "SELECT (SELECT min(head.seq) FROM webhook_deliveries AS head"
    " WHERE head.endpoint_id = e.id AND head.state = :pending"
    " AND (head.next_attempt_ms <= :now_ms OR head.lease_until_ms > :now_ms)) AS seq"
    " FROM webhook_endpoints AS e WHERE e.active IS TRUE"
    ") AS heads JOIN webhook_deliveries AS d ON d.seq = heads.seq"
    " WHERE d.state = :pending AND d.next_attempt_ms <= :now_ms"
    " AND (d.lease_until_ms IS NULL OR d.lease_until_ms <= :now_ms)"
    " ORDER BY d.seq LIMIT :limit{lock})"
)
_CLAIMED = (
    "SELECT d.*, e.url AS target_url, e.secret AS target_secret"
    " FROM webhook_deliveries AS d JOIN webhook_endpoints AS e ON e.id = d.endpoint_id"
    " WHERE d.lease_owner = :owner AND d.state = :pending ORDER BY d.seq"
)
_SUCCEEDED = "UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE id IN :ids AND consecutive_failures <> 0"
_RELEASE = (
    "UPDATE webhook_deliveries SET lease_owner = NULL, lease_until_ms = NULL"
    " WHERE seq IN :seqs AND lease_owner = :owner"
)

# A failed attempt. The endpoint first: its condition reads the delivery's
# lease, which the next statement clears. SET expressions read the row as it
# was, so ``consecutive_failures + 1`` is the count with this failure.
# ``{turn_off}``: TRUE, or the count reaching the limit.
_COUNT_FAILURE = (
    "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1,"
    " active = CASE WHEN active IS TRUE AND {turn_off} THEN FALSE ELSE active END,"
    " disabled_reason = CASE WHEN active IS TRUE AND {turn_off} THEN CAST(:reason AS TEXT) ELSE disabled_reason END,"
    " disabled_ms = CASE WHEN active IS TRUE AND {turn_off} THEN CAST(:now_ms AS BIGINT) ELSE disabled_ms END"
    " WHERE id = :endpoint_id"
    " AND EXISTS (SELECT 1 FROM webhook_deliveries WHERE seq = :seq AND lease_owner = :owner)"
)
# Then the delivery's next state (failed, or when to try again) and _MINE.
_ATTEMPT_FAILED = (
    "UPDATE webhook_deliveries SET attempts = attempts + 1, lease_owner = NULL, lease_until_ms = NULL,"
    " last_attempt_ms = :now_ms, last_status = :status, last_error = :error,"
)
_MINE = "WHERE seq = :seq AND lease_owner = :owner"
# Only this attempt turned the endpoint off at ``now_ms`` (a tenant's own
# turning off fails the pending deliveries in update_webhook).
_TURNED_OFF = "id = :endpoint_id AND active IS FALSE AND disabled_ms = :now_ms"
_FAIL_ALL = _FAIL_PENDING + " AND EXISTS (SELECT 1 FROM webhook_endpoints WHERE " + _TURNED_OFF + ")"
_TURNED_OFF_ENDPOINT = "SELECT * FROM webhook_endpoints WHERE " + _TURNED_OFF

_QUEUE = "SELECT state, count(*) AS n, min(created_ms) AS oldest_ms FROM webhook_deliveries GROUP BY state"


def _claim_lock(backend: str) -> str:
    """On PostgreSQL, nodes sharing a primary skip each other's rows; SQLite
    has no row locks (its write transaction excludes every other writer)."""
    return " FOR UPDATE OF d SKIP LOCKED" if backend == POSTGRESQL else ""


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
                conn.run(
                    Sql(
                        _INSERT_ENDPOINT,
                        id=endpoint.id,
                        tenant_id=tenant_id,
                        url=url,
                        secret=secret,
                        events=encode_events(events),
                        active=active,
                        description=description,
                        created_ms=created_ms,
                    )
                )
                return self._written(conn, endpoint)

        return self._call("create_webhook", read_preference, go, write=True)

    def _endpoint_row(self, conn: Conn, tenant_id: str, webhook_id: str) -> WebhookEndpoint:
        row = conn.run(Sql(_ENDPOINT, tenant_id=tenant_id, id=webhook_id)).first()
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
            with self._reading(read_preference) as conn:
                rows = conn.run(Sql(_ENDPOINTS, tenant_id=tenant_id)).all()
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
        changes = [Sql("updated_ms = :updated_ms", updated_ms=updated_ms)]
        if url is not None:
            changes.append(Sql("url = :url", url=url))
        if secret is not None:
            changes.append(Sql("secret = :secret, secret_set_ms = :updated_ms", secret=secret, updated_ms=updated_ms))
        if events is not None:
            changes.append(Sql("events = :events", events=encode_events(events)))
        if description is not None:
            changes.append(Sql("description = :description", description=description))
        if active is not None:
            changes.append(Sql("active = :active", active=active))
            if active:
                # Turned back on by the tenant: the count starts again.
                changes.append(Sql("consecutive_failures = 0, disabled_reason = NULL, disabled_ms = NULL"))
        statement = (
            Sql("UPDATE webhook_endpoints SET")
            + join(changes, ", ")
            + Sql("WHERE tenant_id = :tenant_id AND id = :id", tenant_id=tenant_id, id=webhook_id)
        )

        def go() -> Written[WebhookEndpoint]:
            with self._writing() as conn:
                if conn.run(statement).rowcount == 0:
                    raise NotFound("webhook")
                if active is False:
                    self._fail_pending(conn, webhook_id, updated_ms, "endpoint turned off by the tenant")
                return self._written(conn, self._endpoint_row(conn, tenant_id, webhook_id))

        return self._call("update_webhook", read_preference, go, write=True)

    def delete_webhook(
        self, tenant_id: str, webhook_id: str, *, read_preference: ReadPreference
    ) -> Deferred[Written[None]]:
        def go() -> Written[None]:
            with self._writing() as conn:
                if conn.run(Sql(_DELETE_ENDPOINT, tenant_id=tenant_id, id=webhook_id)).rowcount == 0:
                    raise NotFound("webhook")
                conn.run(Sql(_DELETE_DELIVERIES, tenant_id=tenant_id, endpoint_id=webhook_id))
                return self._written(conn, None)

        return self._call("delete_webhook", read_preference, go, write=True)

    def _fail_pending(self, conn: Conn, webhook_id: str, now_ms: int, reason: str) -> None:
        conn.run(Sql(_FAIL_PENDING, failed=_FAILED, reason=reason, endpoint_id=webhook_id, pending=_PENDING))

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
            after = decode_cursor(cursor, "deliveries", (int,)) if cursor else None
            query = Sql(_DELIVERIES, tenant_id=tenant_id, endpoint_id=webhook_id, state=state.value)
            if after is not None:
                query += Sql("AND seq > :after", after=after[0])
            query += Sql("ORDER BY seq LIMIT :limit", limit=limit + 1)
            with self._reading(read_preference) as conn:
                self._endpoint_row(conn, tenant_id, webhook_id)
                rows = conn.run(query).all()
            return page_of(rows, limit, _delivery, lambda last: encode_cursor("deliveries", int(last.seq)))

        return self._call("list_webhook_deliveries", read_preference, go, token=token)

    def replay_webhook_delivery(
        self, tenant_id: str, webhook_id: str, event_id: str, *, now_ms: int, read_preference: ReadPreference
    ) -> Deferred[Written[WebhookDelivery]]:
        """Send a failed delivery again: pending, due now, with a fresh
        retry window. ``NotFound`` for no failed delivery of that event to
        that endpoint; ``InvalidReference`` when the endpoint is off."""

        def go() -> Written[WebhookDelivery]:
            with self._writing() as conn:
                endpoint = self._endpoint_row(conn, tenant_id, webhook_id)
                if not endpoint.active:
                    raise InvalidReference("the webhook is turned off; turn it on before replaying")
                done = conn.run(
                    Sql(
                        _REPLAY,
                        pending=_PENDING,
                        now_ms=now_ms,
                        tenant_id=tenant_id,
                        endpoint_id=webhook_id,
                        event_id=event_id,
                        failed=_FAILED,
                    )
                )
                if done.rowcount == 0:
                    raise NotFound("failed delivery")
                row = conn.run(Sql(_DELIVERY, endpoint_id=webhook_id, event_id=event_id)).one()
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

        def statements(backend: str) -> list[Sql]:
            out: list[Sql] = []
            if finished:
                # Each delivery only if still leased by the claim that sent it.
                mine = [
                    Sql(
                        "(seq = :seq_{0} AND lease_owner = :owner_{0})".format(i),
                        **{"seq_{}".format(i): f.seq, "owner_{}".format(i): f.owner},
                    )
                    for i, f in enumerate(finished)
                ]
                out.append(Sql("DELETE FROM webhook_deliveries WHERE") + join(mine, " OR ") + Sql("RETURNING seq"))
                # The receiver accepted: the endpoint's run of failures ends.
                out.append(Sql(_SUCCEEDED, ids=sorted({f.endpoint_id for f in finished})))
            if limit > 0:
                claim = _CLAIM.format(lock=_claim_lock(backend))
                out.append(
                    Sql(claim, owner=owner, until=now_ms + lease_ms, pending=_PENDING, now_ms=now_ms, limit=limit)
                )
                out.append(Sql(_CLAIMED, owner=owner, pending=_PENDING))
            return out

        def go() -> WebhookClaim:
            if not finished and limit <= 0:
                return WebhookClaim(deliveries=[], finished=[])
            with self._writing() as conn:
                results = self._batch(conn, statements(conn.backend), commit=True)
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

        def go() -> Written[int]:
            with self._writing() as conn:
                done = conn.run(Sql(_RELEASE, seqs=list(seqs), owner=owner))
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
        now_ms = outcome.now_ms
        if outcome.disable_reason is not None:
            turn_off = "TRUE"
            limit: dict[str, Any] = {}
            reason = outcome.disable_reason
        else:
            turn_off = "consecutive_failures + 1 >= :disable_after"
            limit = {"disable_after": outcome.disable_after}
            reason = "{} attempts in a row failed; the last: {}".format(outcome.disable_after, outcome.error[:500])
        if outcome.retry_at_ms is None:
            then = Sql("state = :failed", failed=_FAILED)
        else:
            then = Sql("next_attempt_ms = :retry_at_ms", retry_at_ms=outcome.retry_at_ms)
        statements = [
            Sql(
                _COUNT_FAILURE.format(turn_off=turn_off),
                reason=reason,
                now_ms=now_ms,
                endpoint_id=endpoint_id,
                seq=seq,
                owner=owner,
                **limit,
            ),
            Sql(_ATTEMPT_FAILED, now_ms=now_ms, status=outcome.status, error=outcome.error[:1000])
            + then
            + Sql(_MINE, seq=seq, owner=owner),
            Sql(
                _FAIL_ALL,
                failed=_FAILED,
                reason="the endpoint was turned off",
                endpoint_id=endpoint_id,
                pending=_PENDING,
                now_ms=now_ms,
            ),
            Sql(_TURNED_OFF_ENDPOINT, endpoint_id=endpoint_id, now_ms=now_ms),
        ]

        def go() -> Written[WebhookEndpoint | None]:
            with self._writing() as conn:
                rows = self._batch(conn, statements, commit=True)[3]
                return self._written(conn, _endpoint(rows[0]) if rows else None)

        return self._call("record_webhook_failure", read_preference, go, write=True)

    def webhook_queue(self, *, read_preference: ReadPreference, token: str | None = None) -> Deferred[WebhookQueue]:
        """How many deliveries wait and fail, and the oldest waiting one's time."""

        def go() -> WebhookQueue:
            with self._reading(read_preference) as conn:
                rows = conn.run(Sql(_QUEUE)).all()
            by_state = {r.state: (int(r.n), r.oldest_ms) for r in rows}
            pending, oldest = by_state.get(_PENDING, (0, None))
            return WebhookQueue(
                pending=pending,
                failed=by_state.get(_FAILED, (0, None))[0],
                oldest_pending_ms=None if oldest is None else int(oldest),
            )

        return self._call("webhook_queue", read_preference, go, token=token)
