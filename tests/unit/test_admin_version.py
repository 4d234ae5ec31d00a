"""``fastedge-admin --version``."""

from __future__ import annotations

import contextlib
import io
import platform

from twisted.trial.unittest import SynchronousTestCase

import twisted
from fastedge import __version__
from fastedge.admin import main


class VersionTests(SynchronousTestCase):
    def test_version(self) -> None:
        """``--version`` prints fastedge's version (with Twisted's and
        Python's, as ``twistd fastedge --version`` does) and exits 0,
        whatever else is on the command line."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as cm:
            main(["--version"])
        self.assertEqual(cm.exception.code, 0)
        self.assertEqual(
            out.getvalue(),
            "fastedge {} (Twisted {}, Python {})\n".format(__version__, twisted.__version__, platform.python_version()),
        )
