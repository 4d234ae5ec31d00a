"""The verifiers docs/webhooks.md gives receivers (Python and JavaScript)
accept what the node signs and refuse anything else."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from fastedge.webhooks.signing import signature_header

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "webhooks.md")
SECRET = "whsec-" + "z" * 30
BODY = '{"version":1,"id":"e1","type":"comment.created","data":{"comment":{"text":"caf\u00e9 \u2615"}}}'.encode()
#: The doc's verifiers refuse old timestamps; a wide tolerance takes the
#: clock out of the test (the tolerance itself is the reference's, tested
#: in test_signing).
WIDE = 10**12


def _block(language: str) -> str:
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    (found,) = re.findall(r"```" + language + r"\n(.*?)```", text, re.S)
    return found


class DocVerifierTests(SynchronousTestCase):
    def cases(self) -> list[tuple[str, bytes, bool]]:
        good = signature_header(SECRET, 1_700_000_000, BODY)
        return [
            (good, BODY, True),
            (good, BODY + b" ", False),
            (good.replace("t=1700000000", "t=1700000001"), BODY, False),
            (signature_header("other-" + "z" * 30, 1_700_000_000, BODY), BODY, False),
            ("t=1700000000", BODY, False),
        ]

    def test_python(self) -> None:
        """The Python verifier of the doc."""
        scope: dict[str, Any] = {}
        exec(compile(_block("python"), DOC, "exec"), scope)
        for header, body, ok in self.cases():
            self.assertEqual(scope["verify"](SECRET, header, body, tolerance=WIDE), ok, header)

    def test_javascript(self) -> None:
        """The JavaScript verifier of the doc, run by Node.js."""
        node = shutil.which("node")
        if node is None:
            raise SkipTest("Node.js is not installed (scripts/debian-packages.txt lists it)")
        cases = [[h, b.hex()] for h, b, _ in self.cases()]
        program = _block("javascript") + (
            "\nconst cases = {};\n"
            "process.stdout.write(JSON.stringify(cases.map(([h, b]) => verify({}, h, Buffer.from(b, 'hex'), {}))));\n"
        ).format(json.dumps(cases), json.dumps(SECRET), WIDE)
        done = subprocess.run([node, "-e", program], capture_output=True, timeout=60, check=True)
        self.assertEqual(json.loads(done.stdout), [ok for _, _, ok in self.cases()])
