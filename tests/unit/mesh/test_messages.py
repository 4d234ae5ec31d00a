"""Mesh message types and the jelly whitelist."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.spread import jelly, pb
from twisted.trial.unittest import SynchronousTestCase

from fastedge.mesh.messages import MESH_SECURITY, Announcement, BadMessage


def announcement(**kw: Any) -> Announcement:
    values: dict[str, Any] = dict(
        node_id="edge-1",
        deployment="global",
        region="eu-west",
        latitude=48.85,
        longitude=2.35,
        addresses=("192.0.2.1", "2001:db8::1"),
        version="1.0",
        incarnation=3,
        load=10,
        mesh_host="10.0.0.1",
        mesh_port=7946,
    )
    values.update(kw)
    return Announcement(**values)


def roundtrip(value: Any) -> Any:
    """Jelly out and in, as between two brokers, with the mesh's taster."""
    return jelly.unjelly(jelly.jelly(value, MESH_SECURITY), MESH_SECURITY)


class ForeignCopy(pb.Copyable, pb.RemoteCopy):  # type: ignore[misc]
    """A copyable some other part of the process registered with jelly."""

    def __init__(self) -> None:
        self.x = 1


pb.setUnjellyableForClass(ForeignCopy, ForeignCopy)


class AnnouncementTests(SynchronousTestCase):
    def test_roundtrip(self) -> None:
        """An announcement crosses the wire unchanged."""
        a = announcement()
        self.assertEqual(
            roundtrip([a, ("x", 1, None, True, 2.5, {"k": "v"})]),
            [a, ("x", 1, None, True, 2.5, {"k": "v"})],
        )

    def test_invalid_states_refused(self) -> None:
        """A peer cannot make us hold a malformed announcement: bad ids,
        addresses, coordinates, ports, missing or extra fields."""
        for bad in (
            {"node_id": "Not Valid"},
            {"deployment": ""},
            {"addresses": ("not-an-ip",)},
            {"addresses": ("192.0.2.1",) * 17},
            {"latitude": 91.0},
            {"longitude": float("nan")},
            {"incarnation": -1},
            {"load": True},
            {"mesh_port": 0},
            {"mesh_host": ""},
            {"region": "x" * 101},
        ):
            with self.subTest(bad=bad):
                state = announcement().getStateToCopy()
                state.update(bad)
                with self.assertRaises(BadMessage):
                    Announcement().setCopyableState(state)
        state = announcement().getStateToCopy()
        del state["load"]
        with self.assertRaises(BadMessage):
            Announcement().setCopyableState(state)
        with self.assertRaises(BadMessage):
            Announcement().setCopyableState(dict(announcement().getStateToCopy(), extra=1))

    @settings(max_examples=200, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(Announcement._FIELDS + ("other",)),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(min_value=-(2**70), max_value=2**70),
                st.floats(),
                st.text(max_size=300),
                st.lists(st.text(max_size=50), max_size=20),
            ),
        )
    )
    def test_any_state_validates_or_is_refused(self, state: dict[str, Any]) -> None:
        """Whatever state a peer sends, rebuilding either succeeds with a
        valid announcement or raises BadMessage, never another error."""
        try:
            Announcement().setCopyableState(state)
        except BadMessage:
            pass


class WhitelistTests(SynchronousTestCase):
    def test_unregistered_type_refused(self) -> None:
        """A class that is registered with jelly elsewhere in the process,
        but not as a mesh message, is refused (Twisted's default taster would
        let any registered dotted name through)."""
        sexp = jelly.jelly(ForeignCopy(), jelly.DummySecurityOptions())
        self.assertIsInstance(jelly.unjelly(sexp, jelly.globalSecurity), ForeignCopy)
        with self.assertRaises(jelly.InsecureJelly):
            jelly.unjelly(sexp, MESH_SECURITY)

    def test_no_module_imports(self) -> None:
        """A dotted type naming any module is refused without importing it."""
        for name in (
            b"os.system",
            b"twisted.spread.pb.Broker",
            b"fastedge.mesh.messages.Announcement.__init__",
        ):
            with self.subTest(name=name):
                with self.assertRaises(jelly.InsecureJelly):
                    jelly.unjelly([name, []], MESH_SECURITY)

    def test_pb_internals_refused(self) -> None:
        """PB's cacheable and local-reference tags are not admitted."""
        for tag in (
            b"cached",
            b"lcache",
            b"local",
            b"instance",
            b"class",
            b"module",
            b"function",
            b"method",
        ):
            with self.subTest(tag=tag):
                with self.assertRaises(jelly.InsecureJelly):
                    jelly.unjelly([tag, 1], MESH_SECURITY)
