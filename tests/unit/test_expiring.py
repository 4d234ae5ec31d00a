"""The bounded expiring map every short-lived cache uses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.expiring import ExpiringMap


class ExpiringMapTests(SynchronousTestCase):
    def test_expires_on_the_clock(self) -> None:
        clock = Clock()
        m: ExpiringMap[str, int] = ExpiringMap(clock, max_entries=10)
        m.put("a", 1, 2.0)
        m.put("b", 2)
        clock.advance(1.9)
        self.assertEqual((m.get("a"), m.get("b")), (1, 2))
        clock.advance(0.1)
        self.assertEqual((m.get("a"), m.get("b")), (None, 2))
        clock.advance(1e9)
        self.assertEqual(m.get("b"), 2, "an entry without a TTL never expires")

    def test_oldest_put_is_evicted_unless_touched(self) -> None:
        m: ExpiringMap[str, int] = ExpiringMap(Clock(), max_entries=2)
        m.put("a", 1)
        m.put("b", 2)
        m.get("a")
        m.put("c", 3)
        self.assertEqual(list(m), ["b", "c"], "a plain get does not refresh")
        m.get("b", touch=True)
        m.put("d", 4)
        self.assertEqual(list(m), ["b", "d"], "a touched entry is the most recently used")

    def test_every_drop_is_reported(self) -> None:
        """Expired, evicted, replaced, popped and matched entries all reach
        ``on_drop`` exactly once, so an index beside the map stays exact."""
        clock = Clock()
        dropped: list[tuple[str, int]] = []
        m: ExpiringMap[str, int] = ExpiringMap(clock, max_entries=2, on_drop=lambda k, v: dropped.append((k, v)))
        m.put("a", 1, 1.0)
        m.put("a", 2, 1.0)
        m.put("b", 3)
        m.put("c", 4)
        clock.advance(5)
        m.pop("b")
        m.put("d", 5)
        m.drop_where(lambda k, v: v == 5)
        self.assertEqual(dropped, [("a", 1), ("a", 2), ("b", 3), ("d", 5)])
        self.assertEqual(list(m), ["c"])

    def test_zero_entries_keeps_nothing(self) -> None:
        m: ExpiringMap[str, int] = ExpiringMap(Clock(), max_entries=0)
        m.put("a", 1)
        self.assertEqual((len(m), m.get("a")), (0, None))

    @given(
        ops=st.lists(
            st.tuples(
                st.sampled_from(["put", "get", "touch", "pop", "advance"]),
                st.integers(0, 6),
                st.one_of(st.none(), st.floats(0.1, 5.0)),
            ),
            max_size=80,
        ),
        bound=st.integers(1, 5),
    )
    def test_matches_a_model(self, ops: list[tuple[str, int, float | None]], bound: int) -> None:
        """Against a plain list model: bounded, nothing expired is returned,
        the order of eviction is put order (or use order when touched)."""
        clock = Clock()
        m: ExpiringMap[int, int] = ExpiringMap(clock, max_entries=bound)
        model: list[tuple[int, int, float | None]] = []  # key, value, expires; oldest first
        for n, (op, key, ttl) in enumerate(ops):
            now = clock.seconds()
            model = [e for e in model if e[2] is None or e[2] > now or e[0] != key or op not in ("get", "touch")]
            if op == "put":
                model = [e for e in model if e[0] != key]
                model.append((key, n, None if ttl is None else now + ttl))
                model = model[-bound:]
                m.put(key, n, ttl)
            elif op in ("get", "touch"):
                want = [e for e in model if e[0] == key]
                self.assertEqual(m.get(key, touch=op == "touch"), want[0][1] if want else None)
                if want and op == "touch":
                    model = [e for e in model if e[0] != key] + want
            elif op == "pop":
                model = [e for e in model if e[0] != key]
                m.pop(key)
            else:
                clock.advance(ttl or 1.0)
            self.assertLessEqual(len(m), bound)
            self.assertEqual(list(m), [e[0] for e in model])
