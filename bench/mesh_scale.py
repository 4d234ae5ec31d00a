"""The body of ``bench/mesh-scale``: N simulated mesh nodes in one process.

Real membership, PB and TLS code over the in-memory network of
``fastedge.testing.mesh`` (``MemoryMesh``), every timer on one Clock. For
each N it measures:

- cold start: every node started at the same instant (seeds: the first
  three nodes), simulated time until every node sees every other ALIVE,
  process CPU and bytes per node until then;
- steady state: PB calls and bytes per node per simulated second, and
  process CPU per node per simulated second ("membership CPU": everything
  the process does -- membership, PB, TLS and the in-memory harness -- over
  simulated time, divided by N);
- a kill: the last node crashes; per observer the time until it is SUSPECT
  and DEAD there, and the probe calls each observer made.

``--harness plain`` uses ``MemoryNetwork.flush`` as the tests do (every
connection pumped every step, timers re-sorted at every ``callLater``); the
default ``fast`` harness pumps only the connections that have data and
inserts timers in order (the same protocol: compare the call, byte and
probe counts with ``--harness plain``).

Prints one table (and one JSON line per N with ``--json``).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import sys
import tempfile
import time
from io import BytesIO
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from twisted.internet.base import DelayedCall  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.spread import banana  # noqa: E402
from twisted.test import iosim  # noqa: E402

from fastedge.mesh.nodemap import NodeState  # noqa: E402
from fastedge.testing.mesh import MemoryMesh, MemoryNetwork  # noqa: E402

#: Bytes written on every in-memory connection (TLS records included).
WIRE = {"bytes": 0}
#: ``--latency``: one-way delay (seconds) of every write and close, on the
#: clock of the run (``None``: delivered at the next pump, as in the tests).
LATENCY: dict[str, Any] = {"seconds": 0.0, "clock": None}
_FAST: list[FastNetwork] = []

_write = iosim.FakeTransport.write
_lose = iosim.FakeTransport.loseConnection
_abort = iosim.FakeTransport.abortConnection


def _mark(transport: Any) -> None:
    pump = getattr(transport, "_bench_pump", None)
    if pump is not None and _FAST:
        _FAST[0].dirty[pump] = None


def _deliver(self: Any, data: bytes) -> None:
    _write(self, data)
    _mark(self)


def _counting_write(self: Any, data: bytes) -> None:
    if not self.disconnecting:
        WIRE["bytes"] += len(data)
    clock = LATENCY["clock"]
    if clock is not None and not self.disconnecting:
        # Arrives one way-delay later (timers due at the same time run in
        # the order they were set: bytes stay in order).
        clock.callLater(LATENCY["seconds"], _deliver, self, data)
        return
    _deliver(self, data)


def _lose_now(self: Any) -> None:
    _lose(self)
    _mark(self)


def _marking_lose(self: Any) -> None:
    clock = LATENCY["clock"]
    if clock is not None and not self.disconnecting:
        # A close travels behind the bytes written before it.
        clock.callLater(LATENCY["seconds"], _lose_now, self)
        return
    _lose_now(self)


def _marking_abort(self: Any) -> None:
    _abort(self)
    _mark(self)


iosim.FakeTransport.write = _counting_write  # type: ignore[method-assign]
iosim.FakeTransport.loseConnection = _marking_lose  # type: ignore[method-assign]
iosim.FakeTransport.abortConnection = _marking_abort  # type: ignore[method-assign]

#: The largest PB message (one banana expression, before TLS) sent.
LARGEST = {"bytes": 0}


def _measuring_send(self: Any, obj: Any) -> None:
    # Banana.sendEncoded, measuring what it sends (the size the receiver's
    # mesh.max_message_bytes applies to).
    stream = BytesIO()
    self._encode(obj, stream.write)
    value = stream.getvalue()
    if len(value) > LARGEST["bytes"]:
        LARGEST["bytes"] = len(value)
    self.transport.write(value)


banana.Banana.sendEncoded = _measuring_send  # type: ignore[method-assign]


class FastClock(Clock):
    """A Clock that inserts each timer in order (after those due at the same
    time, as ``Clock``'s stable sort does) instead of re-sorting every timer
    at every ``callLater`` and every call it runs; it sorts only after a
    timer was reset or delayed. A cancelled timer stays in the list and is
    skipped when its time comes, instead of being searched for among every
    timer (tens of thousands at 200 nodes: every login cancels its
    timeout). The same calls run in the same order."""

    def __init__(self) -> None:
        super().__init__()
        self._unsorted = False

    def _moved(self, call: DelayedCall) -> None:
        self._unsorted = True

    def callLater(self, delay: float, callable: Any, *args: object, **kw: object) -> Any:
        dc = DelayedCall(self.seconds() + delay, callable, args, kw, self._cancel, self._moved, self.seconds)
        if self._unsorted:
            self._sortCalls()
        bisect.insort_right(self.calls, dc, key=lambda c: c.getTime())
        return dc

    def _cancel(self, call: DelayedCall) -> None:
        # Left in place, skipped when its time comes (DelayedCall.cancel
        # marks it cancelled once this returns).
        pass

    def _sortCalls(self) -> None:
        self._unsorted = False
        super()._sortCalls()

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        if self._unsorted:
            self._sortCalls()
        while self.calls and self.calls[0].getTime() <= self.rightNow:
            call = self.calls.pop(0)
            if call.cancelled:
                continue
            call.called = 1
            call.func(*call.args, **call.kw)
            if self._unsorted:
                self._sortCalls()


class FastNetwork(MemoryNetwork):
    """A :class:`MemoryNetwork` that pumps only connections with something
    to move (written bytes or a pending close), instead of every connection
    after every step."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.dirty: dict[Any, None] = {}
        _FAST[:] = [self]

    def _connect(self, source: str, target: tuple[str, int], factory: Any) -> Deferred[Any]:
        before = len(self.pumps)
        d = super()._connect(source, target, factory)
        if len(self.pumps) > before:
            pump = self.pumps[-1]
            pump.clientIO._bench_pump = pump
            pump.serverIO._bench_pump = pump
            self.dirty[pump] = None
        return d

    def flush(self) -> None:
        for _ in range(100_000):
            self.clock.advance(0)
            if not self.dirty:
                break
            batch = list(self.dirty)
            self.dirty.clear()
            for pump in batch:
                if pump.pump(advanceClock=False):
                    self.dirty[pump] = None
        else:
            raise AssertionError("the memory network never settled")
        if len(self.pumps) > 64 and self.clock.seconds() % 1.0 < 0.011:
            self.pumps = [p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]


class StandIn:
    """What ``MemoryMesh`` needs of a ``SynchronousTestCase``."""

    def __init__(self) -> None:
        self.base = tempfile.mkdtemp(prefix="mesh-scale-")
        self.cleanups: list[Any] = []
        self._n = 0

    def mktemp(self) -> str:
        self._n += 1
        return os.path.join(self.base, "n{}".format(self._n))

    def addCleanup(self, f: Any, *args: Any) -> None:
        self.cleanups.append((f, args))

    def successResultOf(self, d: Deferred[Any]) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        if not results:
            raise AssertionError("no result")
        return results[0]

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def calls(mesh: MemoryMesh, method: str | None = None) -> float:
    """PB calls received by every node (of one method, or all)."""
    total = 0.0
    for registry in mesh.registries.values():
        for metric in registry.collect():
            if metric.name != "fastedge_mesh_calls_received":
                continue
            for sample in metric.samples:
                if sample.name.endswith("_total") and (method is None or sample.labels.get("method") == method):
                    total += sample.value
    return total


def converged(mesh: MemoryMesh, ids: list[str]) -> bool:
    n = len(ids)
    for node_id in ids:
        nodes = mesh.nodes[node_id].node_map.nodes()
        if len(nodes) != n or any(i.state is not NodeState.ALIVE for i in nodes.values()):
            return False
    return True


def _warm_joined(original: Any) -> Any:
    def joined(self: Any, announcement: Any, session: Any) -> Any:
        me, members = original(self, announcement, session)
        return me, members[:1]

    return joined


def run(
    n: int,
    *,
    harness: str,
    steady: float,
    step: float,
    overrides: dict[str, Any],
    latency: float = 0.0,
    warm: bool = False,
    cold_only: bool = False,
) -> dict[str, Any]:
    tc = StandIn()
    from fastedge.mesh.membership import Membership

    joined = Membership.joined
    if warm:
        # Every node starts knowing every other (below), and login answers
        # carry only the answering node: the member lists a cold start
        # moves (O(N) per login, O(N^2) in all) are not measured.
        Membership.joined = _warm_joined(joined)  # type: ignore[method-assign]
    try:
        mesh = MemoryMesh(tc, **overrides)  # type: ignore[arg-type]
        if harness == "fast":
            clock = FastClock()
            clock.advance(mesh.clock.seconds())
            mesh.clock = clock
            mesh.network = FastNetwork(clock)
        LATENCY["seconds"], LATENCY["clock"] = latency, (mesh.clock if latency > 0 else None)
        ids = ["n{:03d}".format(i) for i in range(n)]

        def host(node_id: str) -> str:
            # 127.0.0.1-250, then 127.0.1.x ...: valid addresses past 254 nodes.
            if node_id not in mesh.hosts:
                i = len(mesh.hosts)
                mesh.hosts[node_id] = "127.0.{}.{}".format(i // 250, i % 250 + 1)
            return mesh.hosts[node_id]

        mesh.host = host  # type: ignore[method-assign]
        # Every node is made first (certificates are not the protocol's
        # cost); they listen in order, so the seeds (the first three nodes)
        # are known before any starts.
        seeds = ["{}:{}".format(mesh.host(i), mesh.network._next_port + 1 + k) for k, i in enumerate(ids[:3])]
        for node_id in ids:
            mesh.add(node_id, start=False, seeds=[] if warm else seeds)
        for node_id in ids:
            mesh.nodes[node_id].privilegedStartService()
        assert [mesh.address(i) for i in ids[:3]] == seeds, "the seeds are not where the nodes listen"
        LARGEST["bytes"] = 0
        wire0, cpu0, t0 = WIRE["bytes"], time.process_time(), mesh.clock.seconds()
        calls0 = calls(mesh)
        for node_id in ids:
            service = mesh.nodes[node_id]
            service.privilegedStartService()
            service.startService()
        if warm:
            everyone = [(mesh.nodes[i].membership.me, "alive") for i in ids]
            for node_id in ids:
                membership = mesh.nodes[node_id].membership
                if n > membership.timing.full_mesh_max_nodes:
                    # Past the threshold from the start: no full mesh first.
                    membership.view.active = True
                membership.merge(everyone)
        mesh.network.flush()
        limit = 60.0
        while not converged(mesh, ids):
            if mesh.clock.seconds() - t0 > limit:
                raise SystemExit("N={}: no convergence within {} simulated s".format(n, limit))
            mesh.advance(0.1, step)
        converge_s = mesh.clock.seconds() - t0
        if warm:
            # The views' links log in (a tick), then login answers are the
            # protocol's again (rotations and reconnects carry lists).
            mesh.advance(0.5, step)
            Membership.joined = joined  # type: ignore[method-assign]
        cold_cpu = time.process_time() - cpu0
        cold_bytes = WIRE["bytes"] - wire0
        cold_calls = calls(mesh) - calls0
        cold = {
            "n": n,
            "harness": harness,
            "converge_s": converge_s,
            "cold_cpu_s_per_node": cold_cpu / n,
            "cold_bytes_per_node": cold_bytes / n,
            "cold_calls_per_node": cold_calls / n,
            "largest_message_bytes": LARGEST["bytes"],
        }
        if cold_only:
            return cold
        # Settle one second, then measure the steady state.
        mesh.advance(1.0, step)
        calls0, wire0, cpu0 = calls(mesh), WIRE["bytes"], time.process_time()
        mesh.advance(steady, step)
        steady_cpu = time.process_time() - cpu0
        steady_calls = calls(mesh) - calls0
        steady_bytes = WIRE["bytes"] - wire0
        links = sum(1 for i in ids for p in mesh.nodes[i].membership.peers.values() if p.link is not None and p.link.up)
        # A kill.
        victim = ids[-1]
        observers = ids[:-1]
        probes0 = calls(mesh, "probe")
        mesh.crash(victim)
        killed = mesh.clock.seconds()
        suspect: dict[str, float] = {}
        dead: dict[str, float] = {}
        while len(dead) < len(observers) and mesh.clock.seconds() - killed < 10.0:
            mesh.advance(step, step)
            now = mesh.clock.seconds() - killed
            for o in observers:
                if o in dead:
                    continue
                state = mesh.nodes[o].node_map.nodes()[victim].state
                if state is NodeState.SUSPECT and o not in suspect:
                    suspect[o] = now
                elif state is NodeState.DEAD:
                    suspect.setdefault(o, now)
                    dead[o] = now
        probes = calls(mesh, "probe") - probes0
        return {
            "n": n,
            "harness": harness,
            "converge_s": converge_s,
            "steady_calls_per_node_s": steady_calls / steady / n,
            "steady_bytes_per_node_s": steady_bytes / steady / n,
            "steady_cpu_pct_per_node": 100.0 * steady_cpu / steady / n,
            "links_per_node": links / n,
            "suspect_s": [min(suspect.values()), max(suspect.values())] if suspect else None,
            "dead_s": [min(dead.values()), max(dead.values())] if dead else None,
            "dead_everywhere": len(dead) == len(observers),
            "probe_calls_per_observer": probes / len(observers),
            "probe_calls_per_death": probes,
            "cold_cpu_s_per_node": cold_cpu / n,
            "cold_bytes_per_node": cold_bytes / n,
            "cold_calls_per_node": cold_calls / n,
            "largest_message_bytes": LARGEST["bytes"],
            "warm": warm,
        }
    finally:
        Membership.joined = joined  # type: ignore[method-assign]
        tc.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="10,50,100", help="comma-separated node counts")
    p.add_argument("--large", action="store_true", help="also 200 and 500 nodes (long)")
    p.add_argument("--harness", choices=("fast", "plain"), default="fast")
    p.add_argument("--steady", type=float, default=5.0, help="simulated seconds of steady state")
    p.add_argument("--step", type=float, default=0.01, help="simulated seconds per clock step")
    p.add_argument(
        "--warm",
        action="store_true",
        help="start every node knowing every other, login answers without member lists until then"
        " (no cold start measured)",
    )
    p.add_argument("--latency", type=float, default=0.0, metavar="MS", help="one-way delay of every link (ms)")
    p.add_argument("--json", action="store_true", help="one JSON line per N too")
    p.add_argument("--cold-only", action="store_true", help="the cold start only (no steady state, no kill)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a [mesh] override (JSON value)")
    args = p.parse_args()
    sizes = [int(x) for x in args.nodes.split(",") if x]
    if args.large:
        sizes += [200, 500]
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    head = "%5s %9s %10s %11s %9s %7s %15s %15s %10s %10s %12s %12s %11s" % (
        "N",
        "ALIVE s",
        "calls/n/s",
        "bytes/n/s",
        "cpu %/n",
        "links/n",
        "SUSPECT s",
        "DEAD s",
        "probes/obs",
        "probes/kill",
        "cold cpu s/n",
        "cold MB/n",
        "max msg KB",
    )
    print(
        "mesh-scale (%s harness, %.0f s steady state, %s, one-way latency %g ms%s)"
        % (args.harness, args.steady, overrides or "defaults", args.latency, ", warm start" if args.warm else "")
    )
    print(head)
    for n in sizes:
        r = run(
            n,
            harness=args.harness,
            steady=args.steady,
            step=args.step,
            overrides=overrides,
            latency=args.latency / 1e3,
            warm=args.warm,
            cold_only=args.cold_only,
        )
        span = "%.2f-%.2f"
        if args.cold_only:
            print(
                "%5d %9.2f %10s %11s %9s %7s %15s %15s %10s %10s %12.3f %12.2f %11.1f"
                % (
                    n,
                    r["converge_s"],
                    *["-"] * 8,
                    r["cold_cpu_s_per_node"],
                    r["cold_bytes_per_node"] / 1e6,
                    r["largest_message_bytes"] / 1024,
                ),
                flush=True,
            )
            if args.json:
                print(json.dumps(r), flush=True)
            continue
        print(
            "%5d %9.2f %10.1f %11.0f %9.2f %7.1f %15s %15s %10.1f %10.0f %12.3f %12.2f %11.1f%s"
            % (
                n,
                r["converge_s"],
                r["steady_calls_per_node_s"],
                r["steady_bytes_per_node_s"],
                r["steady_cpu_pct_per_node"],
                r["links_per_node"],
                span % tuple(r["suspect_s"]) if r["suspect_s"] else "-",
                span % tuple(r["dead_s"]) if r["dead_s"] else "-",
                r["probe_calls_per_observer"],
                r["probe_calls_per_death"],
                r["cold_cpu_s_per_node"],
                r["cold_bytes_per_node"] / 1e6,
                r["largest_message_bytes"] / 1024,
                "" if r["dead_everywhere"] else "  (not DEAD everywhere!)",
            ),
            flush=True,
        )
        if args.json:
            print(json.dumps(r), flush=True)
    print(
        "(simulated time; cpu = process CPU (membership, PB, TLS, harness) per simulated second / N;"
        " SUSPECT/DEAD = min-max over observers after a crash; max msg = largest PB message sent, whole run)"
    )


if __name__ == "__main__":
    main()
