"""Locks that change under open subscriptions (docs/live-protocol.md,
"Channels"): a lock set through the tenant API ends, at once on this node,
the subscriptions it refuses; a lock set elsewhere (straight in the shared
store) is applied by the periodic re-check within
``live.resolve_cache_seconds`` plus one sweep."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.api.keys import hash_api_key, new_api_key
from fastedge.store.model import ReadPreference, User, UserProfile
from fastedge.testing.live import LiveSubscriber

from .common import World, done

PRIMARY = ReadPreference.PRIMARY


class LockChangeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.world = World(self.clock)
        self.node = self.world.node
        self.tenant = self.world.tenant_a
        self.thread = self.world.thread_a
        key = new_api_key()
        done(self.node.store.add_api_key(self.tenant.id, hash_api_key(key), created_ms=0, read_preference=PRIMARY))
        self.auth = {b"authorization": [b"Bearer " + key.encode()], b"content-type": [b"application/json"]}
        self.node.service.startService()
        self.addCleanup(self.node.service.stopService)

    def manage(self, method: str, path: str, body: Any) -> Any:
        stub = StubTreq(self.node.site.resource)
        url = "http://node.test/api/v1/manage" + path
        response = self.successResultOf(stub.request(method, url, data=json.dumps(body).encode(), headers=self.auth))
        got = json.loads(self.successResultOf(response.content()))
        self.assertEqual(response.code, 200, got)
        return got

    def user(self, external: str, groups: list[str], moderator: bool = False) -> str:
        """A signed-in user's author id (as an SSO sign-in stores it)."""
        user: User = done(
            self.node.store.upsert_user(
                self.tenant.id,
                external,
                external.title(),
                created_ms=0,
                profile=UserProfile(group_ids=tuple(groups), is_moderator=moderator),
                read_preference=PRIMARY,
            )
        ).value
        return user.author_id

    def subscriber(self, author: str | None) -> LiveSubscriber:
        sub = LiveSubscriber(self.node)
        extra = {}
        if author is not None:
            extra["viewer"] = self.node.api.viewer_tokens.issue(self.tenant.id, author, int(self.clock.seconds()))
        self.successResultOf(sub.subscribe(self.tenant.id, self.world.url, **extra))
        self.assertEqual(len(sub.conn.of_type("subscribed")), 1)
        return sub

    def refused(self, sub: LiveSubscriber) -> list[dict[str, Any]]:
        return [m for m in sub.conn.of_type("error") if m.get("channel")]

    def readers(self) -> tuple[LiveSubscriber, LiveSubscriber, LiveSubscriber, LiveSubscriber]:
        return (
            self.subscriber(None),
            self.subscriber(self.user("guest", ["guests"])),
            self.subscriber(self.user("member", ["staff"])),
            self.subscriber(self.user("mod", [], moderator=True)),
        )

    def check(self, stranger: Any, guest: Any, member: Any, moderator: Any) -> None:
        channel = "{}/{}".format(self.tenant.id, self.thread.id)
        for sub in (stranger, guest):
            self.assertEqual(
                [(m["code"], m["channel"]) for m in self.refused(sub)], [("forbidden", channel)], sub.conn.messages
            )
            self.assertEqual(sub.live.subs, {})
        for sub in (member, moderator):
            self.assertEqual(self.refused(sub), [])
        self.assertEqual(self.node.hub.subscribers((self.tenant.id, self.thread.id)), 2)
        self.assertEqual(self.node.metric("fastedge_live_subscriptions_revoked_total", {"transport": "websocket"}), 2)
        # Those left still get the thread's events; the refused do not.
        self.world.comment(self.tenant, self.thread, self.world.author(self.tenant))
        self.assertEqual([len(s.events()) for s in (stranger, guest, member, moderator)], [0, 0, 1, 1])

    def test_thread_lock_through_the_tenant_api(self) -> None:
        """PATCH lockedGroups: strangers and outsiders are refused at once
        (an ``error`` ``forbidden`` naming the channel); members and
        moderators stay."""
        readers = self.readers()
        self.manage("PATCH", "/threads/" + self.thread.id, {"lockedGroups": ["staff"]})
        self.check(*readers)

    def test_upsert_thread_lock(self) -> None:
        """POST /threads (upsert by urlId) with lockedGroups does the same."""
        readers = self.readers()
        self.manage("POST", "/threads", {"urlId": self.world.url, "lockedGroups": ["staff"]})
        self.check(*readers)

    def test_default_groups_through_the_tenant_api(self) -> None:
        """PATCH defaultGroups: a thread without its own lock follows it."""
        readers = self.readers()
        self.manage("PATCH", "/settings", {"defaultGroups": ["staff"]})
        self.check(*readers)

    def test_unrelated_changes_end_nothing(self) -> None:
        """A lock that still admits everyone subscribed, or a change of
        another setting, ends nothing."""
        readers = self.readers()
        self.manage("PATCH", "/settings", {"flagsToHide": 5})
        self.manage("PATCH", "/threads/" + self.thread.id, {"title": "T"})
        self.assertEqual([self.refused(s) for s in readers], [[], [], [], []])
        self.assertEqual(self.node.hub.subscribers((self.tenant.id, self.thread.id)), 4)

    def test_lock_set_at_another_node(self) -> None:
        """A lock written elsewhere (here: straight to the shared store, as
        another node's tenant API would) is applied by the periodic
        re-check once this node's cached lookup expires: within
        ``live.resolve_cache_seconds`` plus one sweep of the same period."""
        readers = self.readers()
        done(
            self.node.store.upsert_thread(
                self.tenant.id, self.world.url, created_ms=0, read_preference=PRIMARY, locked_groups=["staff"]
            )
        )
        ttl = self.node.cfg.live.resolve_cache_seconds
        self.clock.advance(ttl - 0.5)
        self.assertEqual([self.refused(s) for s in readers[:2]], [[], []])
        self.clock.advance(ttl + 1)
        self.check(*readers)
