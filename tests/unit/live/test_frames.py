"""A property test of ``/live``'s frame handling: random sequences of client
frames (messages in fragments with pings and pongs between them, bare
pings and pongs, time passing) against a model of the frame limits.

The server protocol runs on a ``StringTransport`` with a ``Clock``; its
output must be exactly what the model predicts: a pong (with the ping's
payload) for every ping within the frame rate, an answer for every whole
message, and a close with 4429 (frame rate) or 1009 (fragments) at the
first frame past a limit, after which nothing more is sent or kept.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from fastedge.tokenbucket import TokenBucket

from .common import World, masked_frame, read_frame

RATE = 20
MAX_FRAGMENTS = 5
HANDSHAKE = (
    b"GET /live HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@dataclass(frozen=True)
class Message:
    """``{"type":"ping","ref":ref}`` in ``fragments`` frames, with control
    frames (``(opcode, payload)``) sent after the fragment of their index."""

    ref: int
    fragments: int
    controls: tuple[tuple[int, int, bytes], ...]


@dataclass(frozen=True)
class Control:
    opcode: int  # 0x9 ping, 0xA pong
    payload: bytes


@dataclass(frozen=True)
class Tick:
    seconds: float


_payloads = st.binary(max_size=125)
_controls = st.tuples(st.integers(0, 7), st.sampled_from([0x9, 0xA]), _payloads)
_steps = st.one_of(
    st.builds(
        Message,
        ref=st.integers(0, 10**6),
        fragments=st.integers(1, MAX_FRAGMENTS + 3),
        controls=st.lists(_controls, max_size=4).map(tuple),
    ),
    st.builds(Control, opcode=st.sampled_from([0x9, 0xA]), payload=_payloads),
    st.builds(Tick, seconds=st.sampled_from([0.01, 0.05, 0.25, 1.0, 3.0])),
)


def _split(data: bytes, parts: int) -> list[bytes]:
    """``data`` in ``parts`` pieces (empty ones at the end when too short)."""
    size = -(-len(data) // parts)
    return [data[i * size : (i + 1) * size] for i in range(parts)]


class FramePropertyTests(SynchronousTestCase):
    def setUp(self) -> None:
        # One node for every example; each example is a new connection.
        self.clock = Clock()
        self.world = World(
            self.clock,
            client_frames_per_second=RATE,
            max_fragments_per_message=MAX_FRAGMENTS,
            client_messages_per_minute=10**6,
        )

    def connect(self) -> tuple[Any, StringTransport, Clock]:
        clock = self.clock
        proto = self.world.node.service.resource.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(HANDSHAKE)
        head, _, rest = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "))
        frame = read_frame(rest)
        assert frame is not None
        self.assertEqual(json.loads(frame[1])["type"], "hello")
        transport.clear()
        return proto, transport, clock

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_steps, max_size=25))
    def test_frames_against_the_model(self, steps: list[Message | Control | Tick]) -> None:
        """The server's output is exactly the model's, step by step."""
        proto, transport, clock = self.connect()
        bucket = TokenBucket(RATE, RATE, clock)
        closed: int | None = None
        expected: list[tuple[int, Any]] = []

        def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> None:
            """Send one frame and tell the model about it."""
            nonlocal closed
            proto.dataReceived(masked_frame(opcode, payload, fin=fin))
            if closed is not None:
                return
            if opcode in (0x9, 0xA):
                if not bucket.take():
                    closed = 4429
                elif opcode == 0x9:
                    expected.append((0xA, payload))
            if closed is not None:
                expected.append((0x8, closed))

        for step in steps:
            if closed is not None:
                break
            if isinstance(step, Tick):
                clock.advance(step.seconds)
            elif isinstance(step, Control):
                frame(step.opcode, step.payload)
            else:
                parts = _split(b'{"type":"ping","ref":%d}' % step.ref, step.fragments)
                for i, part in enumerate(parts):
                    last = i == len(parts) - 1
                    proto.dataReceived(masked_frame(0x1 if i == 0 else 0x0, part, fin=last))
                    if closed is None:
                        if i + 1 > MAX_FRAGMENTS:
                            closed = 1009
                        elif not bucket.take():
                            closed = 4429
                        if closed is not None:
                            expected.append((0x8, closed))
                        elif last:
                            expected.append((0x1, {"type": "pong", "ref": step.ref}))
                    # What the server holds of a message never exceeds the limit.
                    held = proto.__dict__.get("message_data") or []
                    self.assertLessEqual(len(held), MAX_FRAGMENTS)
                    for index, opcode, payload in step.controls:
                        if index == i and not last:
                            frame(opcode, payload)
                    if closed is not None:
                        break

        got: list[tuple[int, Any]] = []
        data = transport.value()
        while (parsed := read_frame(data)) is not None:
            opcode, payload, data = parsed
            if opcode == 0x1:
                got.append((opcode, json.loads(payload)))
            elif opcode == 0x8:
                got.append((opcode, struct.unpack("!H", payload[:2])[0]))
            else:
                got.append((opcode, payload))
        self.assertEqual(data, b"")
        self.assertEqual(got, expected)
        if closed is not None:
            # Closed for a flood: deaf from then on, and nothing is kept.
            transport.clear()
            proto.dataReceived(masked_frame(0x9, b"after"))
            self.assertEqual(transport.value(), b"")
            self.assertFalse(proto.__dict__.get("message_data"))
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.world.node.live.count("websocket"), 0)
        self.assertEqual(self.flushLoggedErrors(), [])
