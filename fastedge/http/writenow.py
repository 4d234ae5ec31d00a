# -*- test-case-name: tests.unit.http.test_writenow -*-
"""Write-through: send to the socket now when nothing waits before it.

Twisted's socket transports only buffer in ``write``: the bytes are sent
in the reactor's next I/O phase (``doWrite``), after an ``epoll_ctl`` to
watch the socket for writing and before another to stop. For a live
fan-out that is two system calls and a reactor turn per subscriber, and
the first subscriber waits for the last to be queued. libuv tries the
send first (``uv_try_write``); :func:`write_now` does the same for a
plain TCP transport whose buffers are empty, and hands only what the
socket did not take to ``transport.write``.

Under TLS, :class:`~fastedge.http.tls.CountingTLSProtocol` writes its
ciphertext through once a live stream asks (:func:`write_through`).

Everything else is Twisted's own path, so nothing changes in what a
connection sees:

- bytes stay in order: the socket is written directly only when Twisted
  holds nothing for it (a later write never overtakes a buffered one);
- a send error (``EPIPE``, ``ECONNRESET``, ``ENOBUFS``...) is not
  handled here: the bytes go to ``transport.write``, whose ``doWrite``
  meets the same error and reports the loss once, as it would have;
- a full socket (``EAGAIN``) or a partial send leaves the rest to
  ``transport.write``, which pauses a registered producer past its
  buffer size as usual;
- a transport that is closing, half-closed, not connected, TLS started
  on it (``startTLS``), or not a Twisted socket transport at all is
  written with ``transport.write``.

It reads private parts of ``twisted.internet.abstract.FileDescriptor``
(``dataBuffer``, ``offset``, ``_tempDataLen``,
``_writeDisconnecting``) and ``tcp.Connection.socket``; setup.cfg lists
them beside the Twisted cap, and :func:`plain_tcp` refuses the shortcut
when a release no longer has them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.protocols.policies import ProtocolWrapper

#: FileDescriptor's buffer state, read to tell that nothing waits.
_BUFFER_FIELDS = ("dataBuffer", "_tempDataLen", "offset", "_writeDisconnecting")


def unwrapped(transport: Any) -> Any:
    """Below any :class:`ProtocolWrapper` whose ``write`` passes data on
    unchanged (our connection counters): writing to what is returned is
    writing to ``transport``. A wrapper that changes ``write`` stops here."""
    while isinstance(transport, ProtocolWrapper) and type(transport).write is ProtocolWrapper.write:
        below = transport.transport
        if below is None:
            break
        transport = below
    return transport


#: Transport class -> whether its instances have the buffer fields: asked
#: twice per WebSocket connect, answered once per class (Twisted sets them
#: in FileDescriptor's class body and ``__init__``, so every instance of a
#: class has them or none has).
_has_fields: dict[type, bool] = {}


def has_buffer_fields(fd: Any) -> bool:
    """Whether ``fd`` has the FileDescriptor buffer fields this module reads."""
    cls = type(fd)
    known = _has_fields.get(cls)
    if known is None:
        known = _has_fields[cls] = all(hasattr(fd, name) for name in _BUFFER_FIELDS)
    return known


def plain_tcp(transport: Any) -> tcp.Connection | None:
    """The socket transport under ``transport`` if the connection is plain
    TCP (not TLS started on the socket transport itself), else ``None``.

    Only then are the bytes written the bytes on the wire. (A
    :class:`~twisted.protocols.tls.TLSMemoryBIOProtocol` is not a socket
    transport: its ciphertext goes to the TCP transport below it, which
    may itself be written through, see :func:`write_now`.)
    """
    transport = unwrapped(transport)
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        # Refuse the shortcut rather than guess if a Twisted release renames
        # the buffer fields.
        if has_buffer_fields(transport) and hasattr(transport, "socket"):
            return transport
    return None


def send_now(t: tcp.Connection, data: bytes) -> bool:
    """Write ``data`` to the plain TCP transport ``t`` (from
    :func:`plain_tcp`): straight to its socket when Twisted holds nothing
    for it, the unsent rest (or all of it) through ``t.write``.

    :returns: whether all of ``data`` is on the socket (nothing was queued).
    """
    # (A half-closed transport, _writeDisconnected, was first
    # _writeDisconnecting: Twisted sets the one only after the other.)
    if not t.dataBuffer and not t._tempDataLen and t.connected and not t.disconnecting and not t._writeDisconnecting:
        try:
            n = t.socket.send(data)
        except OSError:
            # EAGAIN: the socket is full. Anything else: Twisted's doWrite
            # meets the same error and reports the loss once.
            n = 0
        if n == len(data):
            return True
        if n:
            data = data[n:]
    t.write(data)
    return False


def write_through(transport: Any) -> bool:
    """Ask a TLS connection under ``transport`` to write its ciphertext
    through from now on (a live stream: one record per frame, each worth
    sending at once); returns whether it will.

    Only for connections that stream: an HTTP answer is two writes
    (headers, body), which Twisted's buffering sends together, as two TLS
    records in one send; written through, they would be two sends and two
    segments.
    """
    transport = unwrapped(transport)
    # Looked up on the class: a ProtocolWrapper's __getattr__ would look in
    # the protocol it wraps.
    ask = getattr(type(transport), "write_through", None)
    return bool(ask(transport)) if callable(ask) else False


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``, sending it at once when the
    connection is plain TCP and nothing waits before it.

    Callers writing many times to one connection should find its
    :func:`plain_tcp` once and call :func:`send_now`.
    """
    t = plain_tcp(transport)
    if t is None:
        transport.write(data)
    else:
        send_now(t, data)
