"""Metadata that cannot drift: every ``test-case-name`` header in
``fastedge/`` names test modules that exist (``trial --testmodule`` and
editors run them)."""

from __future__ import annotations

import importlib.util
import os
import re

from twisted.trial.unittest import SynchronousTestCase

import fastedge

_HEADER = re.compile(r"^# -\*- test-case-name: (\S+) -\*-$", re.MULTILINE)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastedge.__file__)))


class TestCaseNameTests(SynchronousTestCase):
    def test_every_header_names_existing_test_modules(self) -> None:
        """Each module named in a header is importable from the tree."""
        missing = []
        headers = 0
        for folder, _, files in os.walk(os.path.dirname(fastedge.__file__)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    match = _HEADER.search(f.read(400))
                if match is None:
                    continue
                headers += 1
                for module in match.group(1).split(","):
                    if importlib.util.find_spec(module) is None:
                        missing.append("{}: {}".format(os.path.relpath(path, _ROOT), module))
        self.assertGreater(headers, 50)
        self.assertEqual(missing, [])


class ConflictMarkerTests(SynchronousTestCase):
    def test_no_merge_conflict_left_in_the_tree(self) -> None:
        """No tracked text file holds a merge's conflict markers (one was
        once committed in bench/, where no import catches it)."""
        import subprocess

        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
        found = []
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, encoding="utf-8") as f:
                    for number, line in enumerate(f, 1):
                        if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line.rstrip("\n") == "=======":
                            found.append("{}:{}".format(name, number))
            except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
                continue
        self.assertEqual(found, [])
