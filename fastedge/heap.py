# -*- test-case-name: tests.unit.test_tap -*-
"""The garbage collector's settings for a running node (one decision, used
by :class:`fastedge.tap.Node` once every child has started, and by the
benches that run the node's parts as it does)."""

from __future__ import annotations

import gc

#: The garbage collector's generation-0 threshold once the node has started
#: (Python's default is 700). A node's long-lived objects are its
#: connections: each open WebSocket holds some 16 objects, so at 700 a burst
#: of 10,000 connects ran ~300 young collections, ~30 middle ones and
#: several full ones walking every connection made so far (~7 % of the
#: burst's CPU, in pauses of up to tens of milliseconds). At 10,000 the same
#: burst runs ~20 young collections of ~1.5 ms each and one middle one; a
#: young collection walks at most about this many new objects.
GC_GEN0_THRESHOLD = 10_000


def settle() -> int:
    """Collect, move every object made so far (modules, config, the service
    tree: some 90,000 at a node's start) out of the collector's reach with
    :func:`gc.freeze`, and raise the generation-0 threshold to
    :data:`GC_GEN0_THRESHOLD`.

    Frozen objects live as long as the process; a full collection walking
    them took tens of milliseconds, which showed up directly as p99 latency
    under load.

    :returns: how many objects are frozen.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, middle, old)
    return gc.get_freeze_count()
