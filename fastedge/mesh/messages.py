# -*- test-case-name: tests.unit.mesh.test_messages -*-
"""What nodes send each other, and the jelly whitelist that admits nothing else.

PB's jelly can rebuild instances of any class registered anywhere in the
process (and by default accepts any dotted type name whose module the
security options allow). Each mesh service's taster (:func:`mesh_security`)
accepts exactly: plain values (strings, numbers, booleans, ``None``, lists,
tuples, dicts), remote references, PB's own error copies, the
:class:`Announcement`, and the message types of the handlers registered
with that node's mesh (:func:`register`, ``fastedge.mesh.handler``).
Anything else in a peer's message is refused and the peer is disconnected (:mod:`fastedge.mesh.broker`).

Every registered class validates the state it is rebuilt from
(:meth:`setCopyableState`): a peer cannot make us hold a malformed message.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

from twisted.python.reflect import qual
from twisted.spread import jelly, pb

__all__ = [
    "Announcement",
    "BadMessage",
    "MESH_SECURITY",
    "MeshSecurity",
    "Refused",
    "check_channel_id",
    "check_int",
    "check_node_id",
    "check_string",
    "mesh_security",
    "register",
    "wire_name",
]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_INT = 2**63 - 1


class BadMessage(ValueError):
    """A peer sent a registered type with a state that does not validate."""


class Refused(pb.Error):
    """A peer's request is refused (sent back to it as a PB error: the text
    is for the peer's log)."""


def check_node_id(value: Any, what: str = "node id") -> str:
    """A node id (or deployment): a lower-case DNS label.

    :raises BadMessage: otherwise.
    """
    if not isinstance(value, str) or not _LABEL.match(value):
        raise BadMessage("{} must be a lower-case DNS label".format(what))
    return value


def _string(value: Any, what: str, max_chars: int) -> str:
    if not isinstance(value, str) or len(value) > max_chars:
        raise BadMessage("{} must be a string of at most {} characters".format(what, max_chars))
    return value


def _int(value: Any, what: str, low: int = 0, high: int = _MAX_INT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadMessage("{} must be an integer from {} to {}".format(what, low, high))
    return value


def _degrees(value: Any, what: str, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadMessage("{} must be a number".format(what))
    value = float(value)
    if not math.isfinite(value) or not -limit <= value <= limit:
        raise BadMessage("{} must be from {} to {}".format(what, -limit, limit))
    return value


def _addresses(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > 16:
        raise BadMessage("addresses must be a list of at most 16 addresses")
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_address(_string(item, "address", 45))))
        except ValueError:
            raise BadMessage("addresses must be IPv4 or IPv6 addresses") from None
    return tuple(out)


class Announcement(pb.Copyable, pb.RemoteCopy):
    """What a node tells the mesh about itself.

    :ivar mesh_host, mesh_port: where other nodes connect to it.
    :ivar incarnation: grows every time the node starts (and when it must
        refute news of itself); a higher one supersedes everything known
        of a lower one.
    :ivar load: its live connections (sampled every ``load_report_seconds``).
    """

    _FIELDS = (
        "node_id",
        "deployment",
        "region",
        "latitude",
        "longitude",
        "addresses",
        "version",
        "incarnation",
        "load",
        "mesh_host",
        "mesh_port",
    )

    node_id: str
    deployment: str
    region: str
    latitude: float
    longitude: float
    addresses: tuple[str, ...]
    version: str
    incarnation: int
    load: int
    mesh_host: str
    mesh_port: int

    def __init__(
        self,
        node_id: str = "",
        deployment: str = "",
        region: str = "",
        latitude: float = 0.0,
        longitude: float = 0.0,
        addresses: tuple[str, ...] = (),
        version: str = "",
        incarnation: int = 0,
        load: int = 0,
        mesh_host: str = "",
        mesh_port: int = 0,
    ) -> None:
        self.node_id = node_id
        self.deployment = deployment
        self.region = region
        self.latitude = latitude
        self.longitude = longitude
        self.addresses = tuple(addresses)
        self.version = version
        self.incarnation = incarnation
        self.load = load
        self.mesh_host = mesh_host
        self.mesh_port = mesh_port

    def replace(self, **changes: Any) -> Announcement:
        """A copy with some fields changed."""
        values = {name: getattr(self, name) for name in self._FIELDS}
        values.update(changes)
        return Announcement(**values)

    def getStateToCopy(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in self._FIELDS}
        state["addresses"] = list(self.addresses)
        return state

    def setCopyableState(self, state: Any) -> None:
        if not isinstance(state, dict) or set(state) != set(self._FIELDS):
            raise BadMessage("an announcement must have exactly the fields {}".format(", ".join(self._FIELDS)))
        self.node_id = check_node_id(state["node_id"])
        self.deployment = check_node_id(state["deployment"], "deployment")
        self.region = _string(state["region"], "region", 100)
        self.latitude = _degrees(state["latitude"], "latitude", 90.0)
        self.longitude = _degrees(state["longitude"], "longitude", 180.0)
        self.addresses = _addresses(state["addresses"])
        self.version = _string(state["version"], "version", 64)
        self.incarnation = _int(state["incarnation"], "incarnation")
        self.load = _int(state["load"], "load")
        self.mesh_host = _string(state["mesh_host"], "mesh_host", 253)
        if not self.mesh_host:
            raise BadMessage("mesh_host must not be empty")
        self.mesh_port = _int(state["mesh_port"], "mesh_port", 1, 65535)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Announcement):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._FIELDS)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self._FIELDS))

    def __repr__(self) -> str:
        return "<Announcement {}#{} {} at {}:{}>".format(
            self.node_id,
            self.incarnation,
            self.deployment,
            self.mesh_host,
            self.mesh_port,
        )


class MeshSecurity(jelly.SecurityOptions):
    """A jelly taster that admits only the types named in it.

    Twisted's :class:`~twisted.spread.jelly.SecurityOptions` admits any
    type name that contains a dot and is in jelly's process-wide registry
    (any library can register classes there); this one does not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.allowBasicTypes()
        # Remote references (a peer's session and callback objects) and the
        # copies of errors PB sends back for failed calls.
        self.allowTypes("remote")
        self.allowTypes(qual(pb.CopyableFailure))
        # Jelly asks about the qualified names of the plain types it sends
        # ("builtins.tuple"); no incoming message is tagged with these.
        for plain in (str, bytes, int, float, bool, type(None), list, tuple, dict):
            self.allowTypes(qual(plain))
        # Types the mesh never sends: not admitted either.
        for unused in (
            b"datetime",
            b"time",
            b"date",
            b"timedelta",
            b"decimal",
            b"persistent",
            b"unpersistable",
        ):
            self.allowedTypes.pop(unused, None)

    def allow_class(self, cls: type) -> None:
        """Admit instances of a registered copyable class."""
        self.allowedTypes[wire_name(cls).encode("utf-8")] = 1
        self.allowedClasses[cls] = 1

    def isTypeAllowed(self, typeName: bytes | str) -> bool:
        if not isinstance(typeName, bytes):
            typeName = typeName.encode("utf-8")
        return typeName in self.allowedTypes

    def isModuleAllowed(self, moduleName: Any) -> bool:
        # Nothing is rebuilt by importing a module by name.
        return False


def wire_name(cls: type) -> str:
    """The type name a message class travels under: its ``wire_name``
    attribute if it has one (a class that moved keeps the name peers
    running the previous release know), else its qualified name."""
    name = cls.__dict__.get("wire_name")
    return name if isinstance(name, str) else qual(cls)


def register(cls: type) -> type:
    """Make ``cls`` (a ``pb.Copyable`` that is its own ``pb.RemoteCopy``) a
    mesh message type: registered with jelly. It is admitted on a node's
    connections only while a handler that names it in ``message_types`` is
    registered with the node's mesh (``fastedge.mesh.handler``); the mesh's
    own :class:`Announcement` always is. Usable as a class decorator."""
    pb.setUnjellyableForClass(wire_name(cls), cls)
    return cls


register(Announcement)


def mesh_security(types: tuple[type, ...] = ()) -> MeshSecurity:
    """A taster admitting the mesh's own messages and ``types``."""
    security = MeshSecurity()
    for cls in (Announcement,) + types:
        security.allow_class(cls)
    return security


#: The taster of the mesh's own messages (a mesh service adds its
#: handlers' types to a copy of its own).
MESH_SECURITY = mesh_security()

#: Public names of the value checks, for handlers' message classes.
check_int = _int
check_string = _string


_CHANNEL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_channel_id(value: Any, what: str) -> str:
    """A tenant or thread id as channels name them.

    :raises BadMessage: otherwise.
    """
    if not isinstance(value, str) or not _CHANNEL_ID.match(value):
        raise BadMessage("{} must be an id of letters, digits, '_' and '-'".format(what))
    return value
