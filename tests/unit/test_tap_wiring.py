"""``fastedge/tap.py`` constructs, names and parents: it never patches.

The node's wiring is read with :mod:`ast` (nothing is run) and two rules are
checked, so a dependency is always given to the object that needs it when
that object is made (a constructor or ``make_service`` argument, or a mesh
handler passed to the mesh: ``docs/mesh-handlers.md``):

- no assignment to an attribute of another object, anywhere in the module
  (``mesh_media.cdn = cdn``, ``publisher.sink = relay.publish``; a class's
  own ``self.x = ...`` in its methods is its own state), and no ``setattr``;
- in ``makeService``, no call made for its effect on objects already made:
  a call whose result is thrown away is allowed only for parenting
  (``setName``, ``setServiceParent``) and the few calls listed in
  :data:`EFFECT_CALLS`; and no call, kept or not, of a method whose name
  says it rewires (``use_*``, ``set_*``, ``connect*``, ``attach*``,
  ``register*``, ``wire*``), parenting aside.
"""

from __future__ import annotations

import ast
import os
import re

from twisted.trial.unittest import SynchronousTestCase

import fastedge

TAP = os.path.join(os.path.dirname(fastedge.__file__), "tap.py")

#: Parenting: what tap.py is for.
PARENTING = frozenset({"setName", "setServiceParent"})

#: Calls ``makeService`` may make for their effect alone, each with why.
EFFECT_CALLS = {
    # Fills the registry it was handed a line before with the process
    # collectors (it changes no object another child holds yet).
    "register_process_metrics": "fills a new registry",
}

#: Method names that rewire an object after it was made.
REWIRING = re.compile(r"^(use_|set_|connect|attach|register|wire)")


def _name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def attribute_assignments(source: str) -> list[str]:
    """``line: target`` of every assignment to another object's attribute
    (or ``setattr`` call) in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and _name(node) == "setattr":
            found.append((node.lineno, "{}: setattr(...)".format(node.lineno)))
        while targets:
            target = targets.pop()
            if isinstance(target, (ast.Tuple, ast.List)):
                targets.extend(target.elts)
            elif isinstance(target, ast.Attribute):
                base = target.value
                if not (isinstance(base, ast.Name) and base.id == "self"):
                    found.append((target.lineno, "{}: {}".format(target.lineno, ast.unparse(target))))
    return [text for _, text in sorted(found)]


def wiring_calls(source: str, function: str = "makeService") -> list[str]:
    """``line: call`` of every call in ``function`` of ``source`` that
    rewires objects already made (see the module docstring)."""
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    for top in ast.walk(tree):
        if not isinstance(top, ast.FunctionDef) or top.name != function:
            continue
        unused = {id(n.value) for n in ast.walk(top) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)}
        for node in ast.walk(top):
            if not isinstance(node, ast.Call):
                continue
            name = _name(node)
            if name in PARENTING or name in EFFECT_CALLS:
                continue
            if id(node) in unused:
                found.append((node.lineno, "{}: {} (result unused)".format(node.lineno, ast.unparse(node))))
            elif REWIRING.match(name):
                found.append((node.lineno, "{}: {}".format(node.lineno, ast.unparse(node))))
    return [text for _, text in sorted(found)]


class TapWiringTests(SynchronousTestCase):
    def setUp(self) -> None:
        with open(TAP, encoding="utf-8") as f:
            self.source = f.read()

    def test_no_attribute_patching(self) -> None:
        """tap.py assigns to no other object's attribute (and calls no
        ``setattr``): dependencies go through constructors."""
        self.assertEqual(attribute_assignments(self.source), [])

    def test_no_wiring_after_construction(self) -> None:
        """makeService calls nothing for its effect on objects it made,
        except to name and parent them."""
        self.assertEqual(wiring_calls(self.source), [])

    def test_make_service_is_found(self) -> None:
        """The check reads the function that exists (a rename would make
        it vacuous)."""
        tree = ast.parse(self.source)
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        self.assertIn("makeService", names)

    def test_patching_is_caught(self) -> None:
        """The checks themselves: the wiring tap.py had before (attributes
        patched, sinks rewritten, tokens handed over after the fact) is
        reported line by line; naming and parenting is not."""
        old = (
            "def makeService(options):\n"
            "    mesh = make_mesh()\n"
            "    mesh.setName('mesh')\n"
            "    mesh.setServiceParent(top)\n"
            "    connect_relay(mesh, live)\n"
            "    mesh_media.cdn = cdn\n"
            "    live.publisher.sink, x.y = relay.publish, 1\n"
            "    live.use_viewer_tokens(api.viewer_tokens)\n"
            "    ok = mesh.register(handler)\n"
            "    setattr(cdn, 'guard', guard)\n"
        )
        self.assertEqual(
            attribute_assignments(old),
            ["6: mesh_media.cdn", "7: live.publisher.sink", "7: x.y", "10: setattr(...)"],
        )
        self.assertEqual(
            wiring_calls(old),
            [
                "5: connect_relay(mesh, live) (result unused)",
                "8: live.use_viewer_tokens(api.viewer_tokens) (result unused)",
                "9: mesh.register(handler)",
                "10: setattr(cdn, 'guard', guard) (result unused)",
            ],
        )

    def test_own_state_is_allowed(self) -> None:
        """A class's methods may set its own attributes (``self.x``)."""
        source = "class Node:\n    def __init__(self, clock):\n        self.clock = clock\n"
        self.assertEqual(attribute_assignments(source), [])


class MeshFeaturesTests(SynchronousTestCase):
    def test_features_are_registered_with_the_mesh(self) -> None:
        """The node's mesh carries the live relay and the CDN's peer calls
        as registered handlers (made by their own children), and the
        features use them: the comment API's writes go to the relay, the
        CDN fills from and purges through its handler."""
        from twisted.internet.testing import MemoryReactorClock
        from zope.interface.verify import verifyObject

        from fastedge.mesh.interfaces import IMeshHandler
        from fastedge.tap import Options, makeService

        options = Options()
        options.parseOptions(["--data-dir", os.path.abspath(self.mktemp())])
        top = makeService(options, reactor=MemoryReactorClock())
        mesh, live, cdn = (top.getServiceNamed(name) for name in ("mesh", "live", "cdn"))
        self.assertEqual(mesh.handlers.handlers, [live.relay, cdn.peers])
        for handler in mesh.handlers.handlers:
            verifyObject(IMeshHandler, handler)
        self.assertEqual(live.publisher.sink, live.relay.publish)
        self.assertEqual(live.publisher.block_sink, live.relay.block)
        self.assertEqual(live.live.prime, live.relay.prime)
        self.assertIsNotNone(live.live.tokens)
        self.assertIsNotNone(live.live.sso)
        self.assertIs(cdn.filler.peers, cdn.peers)
        self.assertIs(cdn._broadcast, cdn.peers)
        self.assertIsNotNone(cdn.resource._guard)
