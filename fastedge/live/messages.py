# -*- test-case-name: tests.unit.live.test_messages -*-
"""The live protocol's messages, independent of the transport.

Client messages are parsed and checked here (:func:`parse_client_message`);
server messages are built here as compact UTF-8 JSON. WebSocket carries each
message as one text frame; SSE carries the same JSON in ``data:`` lines.
``docs/live-protocol.md`` is the reference; keep the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..http.jsonbody import encode
from ..inputs import InputError, loads_json, parse_ascii_int

#: Named in the ``hello`` message; bumped on an incompatible change.
PROTOCOL = "fastedge.live.1"

# Close codes (RFC 6455 section 7.4; 4000-4999 are ours).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003  # a binary frame
CLOSE_INVALID_PAYLOAD = 1007  # text that is not UTF-8 (autobahn checks)
CLOSE_TOO_BIG = 1009  # a message over live.max_message_bytes (autobahn checks)
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013  # the node is at live.max_connections
CLOSE_SLOW_CONSUMER = 4008
CLOSE_BAD_MESSAGE = 4400  # not a JSON object with a string "type" (or nested too deep)
CLOSE_IDLE = 4408  # no answer to two keep-alive pings
CLOSE_RATE_LIMITED = 4429
#: SSE only: the thread's access rules no longer let this viewer read it.
CLOSE_FORBIDDEN = 4403

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_EPOCH_RE = re.compile(r"^[a-z2-7]{1,32}$")
#: The largest sequence number (or ``since``) a client may send: 18 digits.
MAX_SEQ = 10**18 - 1
_MAX_URL_ID = 4096
_MAX_REF = 64
_MAX_TOKEN = 512


class Violation(Exception):
    """The client broke the protocol; the connection is closed with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class RequestError(Exception):
    """One request cannot be served; answered with an ``error`` message, the
    connection stays open.

    :param code: stable and machine-readable (``thread_not_found``).
    """

    def __init__(self, code: str, message: str, ref: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


#: Longest ``sso`` value (payload, timestamp and signature).
MAX_SSO_CHARS = 16_500


@dataclass(frozen=True)
class Subscribe:
    """``{"type": "subscribe", "tenant", "urlId", "since"?, "epoch"?, "viewer"?, "sso"?, "ref"?}``

    ``sso`` is ``payload.timestamp.signature`` (docs/sso.md): the viewer
    signs in with the tenant's SSO instead of presenting a viewer token.
    """

    tenant: str
    url_id: str
    since: int | None = None
    epoch: str | None = None
    viewer: str | None = None
    ref: Any = None
    sso: str | None = None


@dataclass(frozen=True)
class Unsubscribe:
    """``{"type": "unsubscribe", "channel", "ref"?}``"""

    channel: str
    ref: Any = None


@dataclass(frozen=True)
class Ping:
    """``{"type": "ping", "ref"?}``: an application-level keep-alive."""

    ref: Any = None


ClientMessage = Subscribe | Unsubscribe | Ping

_FIELDS: dict[str, frozenset[str]] = {
    "subscribe": frozenset({"type", "tenant", "urlId", "since", "epoch", "viewer", "sso", "ref"}),
    "unsubscribe": frozenset({"type", "channel", "ref"}),
    "ping": frozenset({"type", "ref"}),
}


def parse_client_message(payload: bytes) -> ClientMessage:
    """Parse one text message from a client.

    :raises Violation: the payload is not a JSON object with a string ``type``.
    :raises RequestError: an unknown type, an unknown field, a missing or
        malformed field (the answer echoes ``ref`` when it was readable).
    """
    try:
        # Nesting past MAX_JSON_DEPTH (ours nest one deep) is refused before
        # the parser, which recurses once per level.
        body = loads_json(payload)
    except InputError as e:
        raise Violation(CLOSE_BAD_MESSAGE, "message is not accepted JSON: {}".format(e)) from None
    if not isinstance(body, dict):
        raise Violation(CLOSE_BAD_MESSAGE, "message is not a JSON object")
    kind = body.get("type")
    if not isinstance(kind, str):
        raise Violation(CLOSE_BAD_MESSAGE, "message has no string 'type'")
    ref = body.get("ref")
    if ref is not None and not (
        (isinstance(ref, str) and len(ref) <= _MAX_REF) or (isinstance(ref, int) and not isinstance(ref, bool))
    ):
        raise RequestError(
            "bad_ref",
            "ref must be a string of at most {} characters or an integer".format(_MAX_REF),
        )
    allowed = _FIELDS.get(kind)
    if allowed is None:
        raise RequestError("unknown_type", "unknown message type {!r}".format(kind[:40]), ref)
    for name in body:
        if name not in allowed:
            raise RequestError("unknown_field", "unknown field {!r} in {}".format(name[:40], kind), ref)
    if kind == "ping":
        return Ping(ref)
    if kind == "unsubscribe":
        channel = body.get("channel")
        if not isinstance(channel, str) or parse_channel(channel) is None:
            raise RequestError(
                "bad_channel",
                "channel must be a channel name from a subscribed answer",
                ref,
            )
        return Unsubscribe(channel, ref)
    tenant = body.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise RequestError("missing_tenant", "tenant is required", ref)
    url_id = body.get("urlId")
    if not isinstance(url_id, str) or not url_id:
        raise RequestError("missing_url_id", "urlId is required", ref)
    if len(url_id) > _MAX_URL_ID:
        raise RequestError("bad_url_id", "urlId is longer than {} characters".format(_MAX_URL_ID), ref)
    since = body.get("since")
    if since is not None:
        if not isinstance(since, int) or isinstance(since, bool):
            raise RequestError("bad_since", "since must be an integer", ref)
        if since < 0:
            raise RequestError("bad_since", "since must not be negative", ref)
    epoch = body.get("epoch")
    if epoch is not None and (not isinstance(epoch, str) or not _EPOCH_RE.match(epoch)):
        raise RequestError(
            "bad_epoch",
            "epoch must be an epoch from a subscribed answer or event id",
            ref,
        )
    viewer = body.get("viewer")
    if viewer is not None and (not isinstance(viewer, str) or len(viewer) > _MAX_TOKEN):
        raise RequestError("bad_viewer_token", "viewer must be a viewer token string", ref)
    sso = body.get("sso")
    if sso is not None and (not isinstance(sso, str) or len(sso) > MAX_SSO_CHARS):
        raise RequestError("sso_malformed", "sso must be payload.timestamp.signature", ref)
    return Subscribe(tenant=tenant, url_id=url_id, since=since, epoch=epoch, viewer=viewer, ref=ref, sso=sso)


def channel_name(tenant_id: str, thread_id: str) -> str:
    """The public name of channel ``(tenant_id, thread_id)``: ``tenant/thread``."""
    return tenant_id + "/" + thread_id


def parse_channel(name: str) -> tuple[str, str] | None:
    """``(tenant_id, thread_id)`` from a channel name, or ``None``."""
    tenant, sep, thread = name.partition("/")
    if not sep or not _ID_RE.match(tenant) or not _ID_RE.match(thread):
        return None
    return tenant, thread


def is_record_id(value: str) -> bool:
    """Whether ``value`` could be an id we issued (tenant, thread, comment)."""
    return bool(_ID_RE.match(value))


def event_id(epoch: str, seq: int) -> str:
    """An event's id, ``<epoch>-<seq>``: unique, and all SSE needs to resume."""
    return "{}-{}".format(epoch, seq)


def parse_event_id(value: str) -> tuple[str, int] | None:
    """``(epoch, seq)`` from an event id (``Last-Event-ID``), or ``None``."""
    epoch, sep, seq = value.strip().rpartition("-")
    if not sep or not _EPOCH_RE.match(epoch):
        return None
    try:
        return epoch, parse_ascii_int(seq, 0, MAX_SEQ)
    except InputError:
        return None


def is_epoch(value: str) -> bool:
    """Whether ``value`` is shaped like an epoch."""
    return bool(_EPOCH_RE.match(value))


def _with_ref(body: dict[str, Any], ref: Any) -> bytes:
    if ref is not None:
        body["ref"] = ref
    return encode(body)


def hello(node_id: str, max_subscriptions: int) -> bytes:
    """The first message on every connection."""
    return encode(
        {
            "type": "hello",
            "protocol": PROTOCOL,
            "node": node_id,
            "maxSubscriptions": max_subscriptions,
        }
    )


def subscribed(channel: str, epoch: str, seq: int, reload: bool, replayed: int, ref: Any = None) -> bytes:
    """The answer to ``subscribe``; replayed events follow it."""
    return _with_ref(
        {
            "type": "subscribed",
            "channel": channel,
            "epoch": epoch,
            "seq": seq,
            "reload": reload,
            "replayed": replayed,
        },
        ref,
    )


def unsubscribed(channel: str, ref: Any = None) -> bytes:
    """The answer to ``unsubscribe``."""
    return _with_ref({"type": "unsubscribed", "channel": channel}, ref)


def pong(ref: Any = None) -> bytes:
    """The answer to ``ping``."""
    return _with_ref({"type": "pong"}, ref)


def error(code: str, message: str, ref: Any = None) -> bytes:
    """A request failed; the connection stays open."""
    return _with_ref({"type": "error", "code": code, "message": message}, ref)


def revoked(channel: str, code: str, message: str) -> bytes:
    """An open subscription ended (the thread's access rules changed and
    refuse the viewer): an ``error`` naming the ``channel``; the connection
    and its other subscriptions stay."""
    return encode({"type": "error", "code": code, "message": message, "channel": channel})


def event(channel: str, epoch: str, seq: int, kind: str, data: Any) -> bytes:
    """One channel event, as every subscriber receives it."""
    return encode(
        {
            "type": "event",
            "channel": channel,
            "seq": seq,
            "id": event_id(epoch, seq),
            "event": kind,
            "data": data,
        }
    )


def reset(channel: str, epoch: str, seq: int) -> bytes:
    """The channel's history broke (see docs): reload the thread, go on from ``seq``."""
    return encode(
        {
            "type": "reset",
            "channel": channel,
            "epoch": epoch,
            "seq": seq,
            "reload": True,
        }
    )


def move(node_id: str, addresses: Sequence[str]) -> bytes:
    """The node is going away (a drain): follow the thread on node
    ``node_id`` (at one of ``addresses``) from now on. The close (1001)
    follows; reconnect at once, with ``since``."""
    return encode({"type": "move", "node": node_id, "addresses": list(addresses), "reason": "drain"})


def closing(code: int, reason: str) -> bytes:
    """Sent on SSE before the server ends a stream (WebSocket uses its close frame)."""
    return encode({"type": "close", "code": code, "reason": reason})
