# -*- test-case-name: tests.unit.live.test_relay -*-
"""What the live relay (:mod:`fastedge.live.relay`) sends between nodes: the
relayed event, and the checks of a channel position.

:class:`RelayedEvent` is a mesh message type (``fastedge.mesh.messages.register``):
a node's mesh admits it because the relay names it in its handler's
``message_types``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.spread import pb

from ..mesh.messages import BadMessage, check_channel_id, check_int, check_node_id, check_string, register

__all__ = ["MAX_EVENT_DATA", "RelayedEvent", "check_position"]

_EPOCH = re.compile(r"^[a-z2-7]{1,32}$")
_KIND = re.compile(r"^[a-z][a-z.]{0,39}$")
#: Largest event body (JSON) relayed: far above a comment's size.
MAX_EVENT_DATA = 256 * 1024


def check_position(epoch: Any, seq: Any) -> tuple[str | None, int | None]:
    """A channel position: both ``None``, or an epoch and a sequence number.

    :raises BadMessage: otherwise.
    """
    if epoch is None and seq is None:
        return None, None
    if not isinstance(epoch, str) or not _EPOCH.match(epoch):
        raise BadMessage("an epoch must be base32 text")
    return epoch, check_int(seq, "seq")


#: The kind of the relay's own marker event: a channel's numbering starts
#: over (a new epoch, at seq 0); followers' subscribers reload.
RESET_KIND = "relay.reset"


@register
class RelayedEvent(pb.Copyable, pb.RemoteCopy):
    """One live event between nodes: a write on its way to its channel's
    sequencer (unstamped), or a stamped event on its way to a follower.

    It carries what subscribers receive and no more: the channel, the kind,
    the public data (as JSON text, serialized once), the author (for
    viewers' blocks), the stamp and the node it was written on.
    """

    #: The type name it has always travelled under (it lived in
    #: ``fastedge.mesh.messages``): nodes of the previous release admit it.
    wire_name = "fastedge.mesh.messages.RelayedEvent"

    _FIELDS = ("tenant", "thread", "kind", "data", "author", "epoch", "seq", "origin")

    tenant: str
    thread: str
    kind: str
    data: str
    author: str | None
    epoch: str | None
    seq: int | None
    origin: str

    def __init__(
        self,
        tenant: str = "",
        thread: str = "",
        kind: str = "",
        data: str = "{}",
        author: str | None = None,
        epoch: str | None = None,
        seq: int | None = None,
        origin: str = "",
    ) -> None:
        self.tenant = tenant
        self.thread = thread
        self.kind = kind
        self.data = data
        self.author = author
        self.epoch = epoch
        self.seq = seq
        self.origin = origin

    def getTypeToCopy(self) -> bytes:
        return self.wire_name.encode("ascii")

    def getStateToCopy(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._FIELDS}

    def setCopyableState(self, state: Any) -> None:
        if not isinstance(state, dict) or set(state) != set(self._FIELDS):
            raise BadMessage("a relayed event must have exactly the fields {}".format(", ".join(self._FIELDS)))
        self.tenant = check_channel_id(state["tenant"], "tenant")
        self.thread = check_channel_id(state["thread"], "thread")
        kind = state["kind"]
        if not isinstance(kind, str) or not _KIND.match(kind):
            raise BadMessage("an event kind must be lower-case words and dots")
        self.kind = kind
        data = check_string(state["data"], "data", MAX_EVENT_DATA)
        try:
            parsed = json.loads(data)
        except ValueError:
            raise BadMessage("event data must be JSON") from None
        if not isinstance(parsed, dict):
            raise BadMessage("event data must be a JSON object")
        self.data = data
        author = state["author"]
        self.author = None if author is None else check_channel_id(author, "author")
        self.epoch, self.seq = check_position(state["epoch"], state["seq"])
        # A reset names the position a new numbering starts from: seq 0
        # (the next event is 1); every other stamped event is 1 or more.
        if self.seq is not None and self.seq < (0 if kind == RESET_KIND else 1):
            raise BadMessage("a stamped event's seq starts at 1")
        self.origin = check_node_id(state["origin"], "origin")

    def __repr__(self) -> str:
        return "<RelayedEvent {}/{} {} {}:{}>".format(self.tenant, self.thread, self.kind, self.epoch, self.seq)
