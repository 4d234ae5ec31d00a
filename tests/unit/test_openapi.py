"""docs/openapi.yaml stays true to the code, in both directions."""

from __future__ import annotations

import os
import re

import yaml
from openapi_spec_validator import validate
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.settings import BLOCKED_WORD_PATTERN, GROUP_ID_PATTERN, ORIGIN_PATTERN
from fastedge.tap import Options, makeService

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PARAM = re.compile(r"\{[^}]+\}")
#: Leaf resources that parse the rest of the path themselves.
_LEAF_TEMPLATES = {b"media": "/media/{tenant}/{key}"}
#: Leaf resources with several routes of their own: (method, template).
_LEAF_ROUTES = {
    b"embed": [
        ("get", "/embed/{tenant}/"),
        ("head", "/embed/{tenant}/"),
        ("post", "/embed/{tenant}/"),
        ("get", "/embed/static/{file}"),
        ("head", "/embed/static/{file}"),
    ]
}


def _normal(path: str) -> str:
    return _PARAM.sub("{}", path)


class OpenApiTests(SynchronousTestCase):
    def setUp(self) -> None:
        with open(os.path.join(REPO, "docs", "openapi.yaml"), encoding="utf-8") as f:
            self.spec = yaml.safe_load(f)

    def test_valid_document(self) -> None:
        """The document is valid OpenAPI 3."""
        validate(self.spec)

    def test_group_id_rule(self) -> None:
        """The spec's GroupId is the very pattern the node checks group ids
        with (a rule like ``str.isprintable()`` cannot be written down)."""
        self.assertEqual(self.spec["components"]["schemas"]["GroupId"]["pattern"], GROUP_ID_PATTERN)

    def test_blocked_word_rule(self) -> None:
        """The spec's BlockedWord is the very pattern blockedWords are checked with."""
        self.assertEqual(self.spec["components"]["schemas"]["BlockedWord"]["pattern"], BLOCKED_WORD_PATTERN)

    def test_origin_rule(self) -> None:
        """The spec's Origin is the very pattern allowedOrigins are checked
        with (``urlsplit``'s leniency cannot be written down)."""
        self.assertEqual(self.spec["components"]["schemas"]["Origin"]["pattern"], ORIGIN_PATTERN)

    def test_routes_match(self) -> None:
        """Every route the node serves is documented, and every documented
        operation is served."""
        options = Options()
        options.parseOptions(["--data-dir", os.path.abspath(self.mktemp())])
        top = makeService(options, reactor=MemoryReactorClock())
        site = top.getServiceNamed("http").getServiceNamed("http").factory.wrappedFactory
        root = site.resource
        served = {(m.lower(), _normal(t)) for m, t in root.children[b"api"].templates()}
        for name, child in root.children.items():
            if name == b"api":
                continue
            if name in _LEAF_TEMPLATES:
                # A leaf resource that takes the rest of the path itself.
                served.update((m, _normal(_LEAF_TEMPLATES[name])) for m in ("get", "head"))
                continue
            if name in _LEAF_ROUTES:
                served.update((m, _normal(t)) for m, t in _LEAF_ROUTES[name])
                continue
            served.add(("get", "/" + name.decode()))
            for sub in getattr(child, "children", {}):
                served.add(("get", "/{}/{}".format(name.decode(), sub.decode())))
        documented = {
            (method, _normal(path))
            for path, item in self.spec["paths"].items()
            for method in item
            if method in ("get", "head", "post", "put", "patch", "delete")
        }
        self.assertEqual(sorted(served - documented), [], "served but not documented")
        self.assertEqual(sorted(documented - served), [], "documented but not served")
