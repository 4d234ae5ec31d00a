"""What a node's imports cost in memory, package by package.

    .venv/bin/python bench/import_rss.py [--top N] [--without PKG[,PKG...]] [fastedge options, e.g. --config node.toml]

In this fresh interpreter: twistd's plugin scan (as ``twistd fastedge``
does it), then ``fastedge.tap`` and the node's service tree built from the
options (not started: nothing listens). Every module's execution is timed
in RSS: the growth while its own body runs, minus the growth of the
imports it makes (counted to them), so the figures add up to the total.
Grouped by package (``fastedge.<sub>``, ``twisted.<sub>``,
``autobahn.<sub>``, else the top-level name), largest first; then what
each of our own modules brings: every other module it was the first to
import, with all that module imported in turn (what deferring that one
import of ours would save, if nothing else imports it).

``--without autobahn`` (packages, comma-separated) estimates a node that
does without them: the modules the node imported are imported again, in
the same order, in two fresh interpreters, one of which cannot import those
packages (nor, so, our modules that need them, which are listed); the
difference is what the packages cost with everything that uses them (a
replacement's own cost is not in it). It is how the store's move off
SQLAlchemy (12.7 MiB, issue 15) was weighed before it was made.

``.venv-node/bin/python bench/import_rss.py`` (the venv bench/footprint
makes) measures the node as installed; the development ``.venv``'s test
and lint tools add packages a node imports when present (click, ~0.9 MiB).

RSS moves in pages and allocator arenas, so a module's own figure is
approximate (a small module may be charged for an arena its neighbour
will fill); the package totals are stable to a few hundred KB. Run it on
.pyc files (``python -m compileall -q fastedge``), as bench/footprint
does, or compiling the sources is counted as well.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections import Counter
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


#: Module name -> bytes of RSS its own body added.
own: dict[str, int] = {}
#: Module name -> the module whose body first imported it (``None`` at top level).
importer: dict[str, str | None] = {}
#: The modules executing, innermost last: [name, RSS at start, RSS of nested imports].
_running: list[list[Any]] = []


class _Measured(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        # Everything else (resource readers, get_data, ...) is the loader's.
        return getattr(self.inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        # setdefault: a module some package executes twice (autobahn's nvx
        # runs its CFFI builder module again) keeps its first importer.
        importer.setdefault(module.__name__, _running[-1][0] if _running else None)
        _running.append([module.__name__, rss(), 0])
        try:
            self.inner.exec_module(module)
        finally:
            name, start, nested = _running.pop()
            grown = rss() - start
            own[name] = grown - nested
            if _running:
                _running[-1][2] += grown


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Measured(spec.loader)
                return spec
        return None


def family(name: str) -> str:
    parts = name.split(".")
    if parts[0] in ("fastedge", "twisted", "autobahn") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


class _Blocked(importlib.abc.MetaPathFinder):
    """Makes ``packages`` (and their submodules) unimportable, as if not installed."""

    def __init__(self, packages: list[str]) -> None:
        self.packages = packages

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if any(name == p or name.startswith(p + ".") for p in self.packages):
            raise ModuleNotFoundError("blocked by --without: " + name, name=name)
        return None


def replay(names_file: str, blocked: list[str]) -> None:
    """Import the modules listed in ``names_file`` in order; print the RSS
    and (as JSON) our modules that could not be imported."""
    import json

    if blocked:
        sys.meta_path.insert(0, _Blocked(blocked))
    with open(names_file) as f:
        names = json.load(f)
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            if name.startswith("fastedge"):
                failed.append(name)
    print(json.dumps({"rss": rss(), "failed": failed}))


def without(names: list[str], blocked: list[str]) -> None:
    """Print the estimate of ``--without`` (see the module docstring)."""
    # Imported here, after the measurement, so that "before the first
    # import" is the bare interpreter's RSS as it was.
    import json
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(names, f)
    try:
        runs = []
        for packages in ([], blocked):
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--replay", f.name, ",".join(packages)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        os.unlink(f.name)
    mib = 2**20
    full, less = runs
    print(
        f"the node's {len(names)} modules imported again in a fresh interpreter: {full['rss'] / mib:.1f} MiB;"
        f" without {', '.join(blocked)}: {less['rss'] / mib:.1f} MiB"
        f" ({(full['rss'] - less['rss']) / mib:.1f} MiB less)"
    )
    print(f"  our modules that need them ({len(less['failed'])}): {', '.join(less['failed'])}")


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--replay"]:
        replay(args[1], [p for p in args[2].split(",") if p])
        return
    top = 30
    blocked: list[str] = []
    while args[:1] in (["--top"], ["--without"]):
        if args[0] == "--top":
            top = int(args[1])
        else:
            blocked = [p for p in args[1].split(",") if p]
        args = args[2:]
    already = set(sys.modules)
    before = rss()
    sys.meta_path.insert(0, _Finder())
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    list(getPlugins(IServiceMaker))
    from twisted.internet import reactor

    from fastedge.tap import Options, makeService

    options = Options()
    options.parseOptions(args)
    makeService(options, reactor=reactor)
    after = rss()
    imported = [name for name in sys.modules if name not in already]

    families: Counter[str] = Counter()
    for name, size in own.items():
        families[family(name)] += size
    mib = 2**20
    print(f"RSS {before / mib:.1f} MiB before the first import, {after / mib:.1f} MiB with the node built")
    print(f"{len(own)} modules imported; by package (own RSS, nested imports counted to them):")
    for name, size in families.most_common(top):
        print(f"  {size / mib:6.2f} MiB  {name}")
    tops: Counter[str] = Counter()
    for name, size in own.items():
        tops[name.split(".")[0]] += size
    print("by top-level package:")
    for name, size in tops.most_common(top):
        print(f"  {size / mib:6.2f} MiB  {name}")
    print("what our own modules bring (other modules they first imported, with those modules' imports):")
    subtree: Counter[str] = Counter()
    for name, size in own.items():
        seen = set()
        at: str | None = name
        while at is not None and at not in seen:
            seen.add(at)
            subtree[at] += size
            at = importer.get(at)
    brought = Counter(
        {
            (name, by): subtree[name]
            for name, by in importer.items()
            if by is not None and by.startswith("fastedge") and not name.startswith("fastedge")
        }
    )
    for (name, by), size in brought.most_common(top):
        print(f"  {size / mib:6.2f} MiB  {name} <- {by}")
    print("largest modules:")
    for name, size in Counter(own).most_common(top):
        print(f"  {size / mib:6.2f} MiB  {name}")
    if blocked:
        without(imported, blocked)


if __name__ == "__main__":
    main()
