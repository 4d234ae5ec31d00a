"""``fastedge-admin tenant settings``, run as operators run it (a child process)."""

from __future__ import annotations

import json
import os
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "a1" * 32


def admin(*args: str):  # type: ignore[no-untyped-def]
    """Run fastedge-admin in a child process; fires with (out, err, code)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return getProcessOutputAndValue(sys.executable, ("-m", "fastedge.admin", *args), env=env, path=REPO)


class AdminSettingsTests(TestCase):
    @inlineCallbacks
    def test_show_set_and_refuse(self):  # type: ignore[no-untyped-def]
        """Settings show as JSON with the defaults; --set changes them with
        the tenant API's checks (theme keys dotted, values JSON or text);
        the SSO secret is taken but never printed; a bad key exits 2 naming
        it and changes nothing."""
        data = os.path.abspath(self.mktemp())
        out, err, code = yield admin("--data-dir", data, "--init", "tenant", "create", "Acme", "--json")
        self.assertEqual(code, 0, err)
        tenant = json.loads(out)["tenantId"]
        out, err, code = yield admin("--data-dir", data, "tenant", "settings", tenant, "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["settings"]["moderation"], "post")
        out, err, code = yield admin(
            "--data-dir",
            data,
            "tenant",
            "settings",
            tenant,
            "--set",
            "moderation=pre",
            "--set",
            "flagsToHide=3",
            "--set",
            'allowedOrigins=["https://Blog.Example"]',
            "--set",
            "theme.accent=#1a73e8",
            "--set",
            'blockedWords=["casino", "CASINO", "replica watches"]',
            "--set",
            "ssoSecret=" + SECRET,
            "--json",
        )
        self.assertEqual(code, 0, err)
        self.assertNotIn(SECRET, out.decode() + err.decode())
        shown = json.loads(out)
        self.assertEqual(
            shown["settings"],
            {
                "moderation": "pre",
                "flagsToHide": 3,
                "requireSignIn": False,
                "defaultGroups": [],
                "allowedOrigins": ["https://blog.example"],
                "theme": {"accent": "#1a73e8"},
                "blockedWords": ["casino", "replica watches"],
            },
        )
        self.assertTrue(shown["sso"]["secretSet"])
        for bad, key in (("colour=red", "colour"), ('allowedOrigins=["ftp://x"]', "allowedOrigins")):
            out, err, code = yield admin(
                "--data-dir", data, "tenant", "settings", tenant, "--set", "moderation=post", "--set", bad
            )
            self.assertEqual(code, 2)
            self.assertIn("invalid setting " + key, err.decode())
        out, err, code = yield admin("--data-dir", data, "tenant", "settings", tenant)
        self.assertEqual(code, 0, err)
        self.assertIn('moderation: "pre"', out.decode())
        self.assertNotIn(SECRET, out.decode())
