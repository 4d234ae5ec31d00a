"""The packages of ``fastedge/`` import downwards only.

Every import in the package (lazy and ``TYPE_CHECKING`` ones included: they
are dependencies all the same) is read from the source with :mod:`ast`. A
package or top-level module may import its own modules and those of lower
layers; an import of the same or a higher layer fails the test, naming the
file. So there are no cycles between packages, and the direction of each
dependency is written once, in :data:`LAYERS` (``docs/architecture.md``
draws the same table).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

import fastedge

#: Lowest first. A name is a subpackage (``store``) or a top-level module
#: (``tap``); ``__init__`` is the package itself (``__version__``).
LAYERS: list[set[str]] = [
    # Shared mechanisms that know nothing of the product.
    {"__init__", "inputs", "logs", "singleflight", "expiring", "metrics", "lifecycle", "columns", "heap"},
    {"tokenbucket"},
    # The validated configuration.
    {"config"},
    # Records and places.
    {"store", "geo"},
    # Who a reader is; the HTTP listeners and what every route shares
    # (router, JSON bodies and errors); spam checks (judged from records,
    # asked by the comment write paths).
    {"identity", "http", "spam"},
    # The mesh: a transport between the nodes of a deployment, knowing no
    # feature (features register handlers with it: docs/mesh-handlers.md).
    {"mesh"},
    # Which deployment serves a tenant (checked before any feature reads;
    # other deployments are asked over the mesh).
    {"residency"},
    # Features carried by the mesh (the live relay, the CDN's peer fill).
    {"live", "cdn"},
    # Features built on the mesh and on live threads.
    {"dns", "api"},
    # Features over the tenant API (webhooks: endpoints in it, the outbox
    # in the store) and the operators' pages.
    {"embed", "status", "webhooks"},
    # Wiring: the one Site, the startup report.
    {"web", "startup"},
    # A whole local cluster (fastedge-admin cluster): config files, keys and
    # certificates, processes.
    {"cluster"},
    # The operator's tool and the shipped test support.
    {"admin", "testing"},
    # The twistd plugin's entry point: constructs, names and parents.
    {"tap"},
]


def _rank() -> dict[str, int]:
    return {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(path: str, root: str) -> str:
    """The layer unit a source file belongs to."""
    rel = os.path.relpath(path, root)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".py") else first


def _imports(path: str, root: str) -> Iterator[tuple[str, int]]:
    """``(unit imported, line)`` for every import of another unit."""
    rel = os.path.relpath(path, root)
    package = ["fastedge"] + rel.split(os.sep)[:-1]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                if node.module:
                    targets = [".".join(base + [node.module])]
                else:
                    targets = [".".join(base + [alias.name]) for alias in node.names]
            elif node.module:
                targets = [node.module]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            parts = target.split(".")
            if parts[0] != "fastedge":
                continue
            yield (parts[1] if len(parts) > 1 else "__init__"), node.lineno


def _sources(root: str) -> Iterator[str]:
    for directory, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(directory, name)


class LayerTests(SynchronousTestCase):
    root = os.path.dirname(fastedge.__file__)

    def test_every_unit_has_a_layer(self) -> None:
        """A new package or top-level module is placed in the table."""
        rank = _rank()
        missing = sorted({_unit(p, self.root) for p in _sources(self.root)} - set(rank))
        self.assertEqual(missing, [], "add these to LAYERS in tests/unit/test_layers.py")

    def test_imports_point_down(self) -> None:
        rank = _rank()
        wrong = []
        for path in _sources(self.root):
            unit = _unit(path, self.root)
            for target, line in _imports(path, self.root):
                if target == unit or target not in rank or unit not in rank:
                    continue
                if rank[target] >= rank[unit]:
                    wrong.append("{}:{}: {} imports {}".format(os.path.relpath(path, self.root), line, unit, target))
        self.assertEqual(wrong, [])

    def test_docs_draw_the_same_table(self) -> None:
        """docs/architecture.md's ``layers`` block is this table, line for line."""
        doc = os.path.join(os.path.dirname(self.root), "docs", "architecture.md")
        with open(doc, encoding="utf-8") as f:
            text = f.read()
        block = text.split("```layers\n", 1)[1].split("```", 1)[0]
        drawn = [set(line.split()) for line in block.strip().splitlines()]
        self.assertEqual(drawn, LAYERS)

    def test_a_cycle_is_caught(self) -> None:
        """The check itself: an upward import in a scratch tree is reported."""
        scratch = self.mktemp()
        os.makedirs(os.path.join(scratch, "store"))
        with open(os.path.join(scratch, "store", "model.py"), "w") as f:
            f.write("from ..api import public\n")
        found = list(_imports(os.path.join(scratch, "store", "model.py"), scratch))
        self.assertEqual(found, [("api", 1)])
        rank = _rank()
        self.assertGreater(rank["api"], rank["store"])
