"""``fastedge-admin webhooks list TENANT`` in a child process, as operators run it."""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from fastedge.store.model import ReadPreference, WebhookEvent
from fastedge.store.sqlite import SQLiteStore
from fastedge.testing.fakes import run_inline

from .test_admin import make_project, run_admin


class WebhooksListTests(TestCase):
    @inlineCallbacks
    def test_list(self) -> Generator[Deferred[Any], Any, None]:
        """The tenant's endpoints are listed (table and JSON) with their
        state and why one was turned off, never a secret; an unknown tenant
        is one line on stderr and exit status 1."""
        root = make_project(self)
        out, err, code = yield run_admin("--init", "tenant", "create", "Acme", "--json", cwd=root)
        self.assertEqual(code, 0, err)
        tenant = json.loads(out)["tenantId"]
        out, err, code = yield run_admin("webhooks", "list", tenant, cwd=root)
        self.assertEqual((code, out.decode()), (0, "no webhooks\n"), err)
        store = SQLiteStore(os.path.join(root, "var", "fastedge", "fastedge.sqlite3"), run=run_inline, clock=Clock())
        self.successResultOf(store.open())
        hook = self.successResultOf(
            store.create_webhook(
                tenant,
                url="https://hooks.example/in",
                secret="sekrit-" + "x" * 30,
                events=[WebhookEvent.COMMENT_CREATED, WebhookEvent.AUTHOR_BANNED],
                active=True,
                description="",
                created_ms=5,
                read_preference=ReadPreference.PRIMARY,
            )
        ).value
        self.successResultOf(store.close())
        out, err, code = yield run_admin("webhooks", "list", tenant, cwd=root)
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual(lines[0].split(), ["WEBHOOK", "STATE", "FAILURES", "EVENTS", "URL", "DISABLED_REASON"])
        self.assertEqual(
            lines[1].split(), [hook.id, "on", "0", "author.banned,comment.created", "https://hooks.example/in", "-"]
        )
        self.assertNotIn(b"sekrit", out + err)
        out, err, code = yield run_admin("webhooks", "list", tenant, "--json", cwd=root)
        doc = json.loads(out)
        self.assertEqual(doc["tenantId"], tenant)
        self.assertEqual([w["id"] for w in doc["webhooks"]], [hook.id])
        out, err, code = yield run_admin("webhooks", "list", "AAAAAAAAAAAAAAAA", cwd=root)
        self.assertEqual(code, 1)
        self.assertIn(b"tenant", err)
