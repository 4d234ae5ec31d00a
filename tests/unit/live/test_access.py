"""Tests for :mod:`fastedge.live.access`: resolving subscriptions against
a real SQLite store, coalescing a thundering herd, the policy hook."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from fastedge.live.access import PublicThreads, Refused
from fastedge.live.frontend import LiveConnection
from fastedge.live.interfaces import IAccessPolicy
from fastedge.live.messages import RequestError, Subscribe
from fastedge.testing.fakes import HeldRunner

from .common import World, done


class Outlet:
    transport_name = "websocket"

    def push(self, prepared: Any) -> int:
        return 0

    def send(self, payload: bytes) -> None:
        pass

    def keepalive(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class ResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.runner = HeldRunner()
        self.world = World(self.clock, run=self.runner, resolve_cache_seconds=10.0)
        self.node = self.world.node
        self.resolver = self.node.service.resolver

    def lookups(self, result: str) -> float:
        return self.node.metric("fastedge_live_resolve_lookups_total", {"result": result})

    def test_thundering_herd_costs_one_read(self) -> None:
        """A thousand subscribers of one thread arriving while the first
        lookup is in flight share it: one tenant and one thread read in all;
        later ones are answered from the cache."""
        self.runner.holding = True
        waiting = [self.resolver.resolve(self.world.tenant_a.id, self.world.url) for _ in range(1000)]
        for d in waiting:
            self.assertNoResult(d)
        ran = 0
        while self.runner.calls:
            ran += self.runner.release()
        self.assertEqual(ran, 2)  # get_tenant, get_thread
        threads = {self.successResultOf(d).thread.id for d in waiting}
        self.assertEqual(threads, {self.world.thread_a.id})
        self.successResultOf(self.resolver.resolve(self.world.tenant_a.id, self.world.url))
        self.assertEqual(
            (self.lookups("miss"), self.lookups("coalesced"), self.lookups("hit")),
            (1, 999, 1),
        )

    def test_not_found_is_cached_briefly(self) -> None:
        """An unknown thread is refused without a database read while cached,
        and looked up again once the entry expires."""
        for _ in range(2):
            f = self.failureResultOf(self.resolver.resolve(self.world.tenant_a.id, "https://nope"))
            self.assertEqual(f.value.code, "thread_not_found")
        self.assertEqual(self.lookups("miss"), 1)
        self.clock.advance(11)
        self.failureResultOf(self.resolver.resolve(self.world.tenant_a.id, "https://nope"))
        self.assertEqual(self.lookups("miss"), 2)

    def test_known(self) -> None:
        """``known`` answers only what ``resolve`` would answer at once: a
        thread resolved recently (counted as a hit), not one never resolved,
        not a cached refusal, not an expired entry, never a read."""
        tenant, url = self.world.tenant_a.id, self.world.url
        self.assertIsNone(self.resolver.known(tenant, url))
        self.successResultOf(self.resolver.resolve(tenant, url))
        hits = self.lookups("hit")
        known = self.resolver.known(tenant, url)
        assert known is not None
        self.assertEqual(known.thread.id, self.world.thread_a.id)
        self.assertEqual(self.lookups("hit"), hits + 1)
        self.failureResultOf(self.resolver.resolve(tenant, "https://nope"))
        self.assertIsNone(self.resolver.known(tenant, "https://nope"))
        self.assertIsNone(self.resolver.known("not a tenant id!", url))
        self.clock.advance(11)
        self.assertIsNone(self.resolver.known(tenant, url))
        self.assertEqual(self.lookups("miss"), 2)

    def test_malformed_tenant_costs_nothing(self) -> None:
        """A tenant id we could never have issued is refused without a read."""
        f = self.failureResultOf(self.resolver.resolve("not a tenant id!", "u"))
        self.assertEqual(f.value.code, "tenant_not_found")
        self.assertEqual(self.lookups("miss"), 0)

    def test_store_down(self) -> None:
        """A store failure is answered as 'unavailable' and not cached."""
        self.runner.holding = True
        d = self.resolver.resolve(self.world.tenant_a.id, self.world.url)
        fn, held = self.runner.calls.pop()
        from fastedge.store.errors import StoreUnavailable

        fail(StoreUnavailable("disk on fire")).chainDeferred(held)
        self.assertEqual(self.failureResultOf(d).value.code, "unavailable")
        self.runner.holding = False
        self.successResultOf(self.resolver.resolve(self.world.tenant_a.id, self.world.url))

    def test_closed_while_resolving(self) -> None:
        """A connection that closes while its subscribe is being resolved is
        never subscribed."""
        self.runner.holding = True
        conn = LiveConnection(self.node.live, Outlet())
        d = conn.subscribe(Subscribe(self.world.tenant_a.id, self.world.url), lambda *a: None)
        conn.close()
        while self.runner.calls:
            self.runner.release()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.node.hub.subscription_count(), 0)


@implementer(IAccessPolicy)
class MembersOnly:
    """A policy as the SSO-groups issue will add: refuses strangers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    def check(self, tenant: Any, thread: Any, viewer_author_id: str | None) -> Deferred[None] | None:
        self.seen.append((tenant.id, thread.id, viewer_author_id))
        if viewer_author_id is None:
            raise Refused("sign in to follow this thread")
        return None


class PolicyTests(SynchronousTestCase):
    def test_default_policy(self) -> None:
        """The default policy provides IAccessPolicy and allows everything."""
        self.assertTrue(verifyObject(IAccessPolicy, PublicThreads()))

    def test_group_locks_policy(self) -> None:
        """The node's policy, GroupLocks, provides IAccessPolicy."""
        from fastedge.live.access import GroupLocks

        world = World(Clock())
        self.assertTrue(verifyObject(IAccessPolicy, GroupLocks(world.node.store, clock=Clock(), ttl_seconds=1.0)))

    def test_group_locks_public_at_once(self) -> None:
        """GroupLocks allows a thread without a lock at once (``None``, no
        Deferred to wait for)."""
        from fastedge.live.access import GroupLocks

        world = World(Clock())
        locks = GroupLocks(world.node.store, clock=Clock(), ttl_seconds=1.0)
        self.assertIsNone(locks.check(world.tenant_a, world.thread_a, None))

    def test_policy_on_a_known_thread(self) -> None:
        """A subscribe to a thread resolved moments ago (joined at once,
        without waiting on anything) is still checked by the policy, which
        may refuse at once or through a Deferred: the same ``forbidden``."""
        world = World(Clock())
        live = world.node.live
        self.successResultOf(live.resolver.resolve(world.tenant_a.id, world.url))

        @implementer(IAccessPolicy)
        class Later:
            def check(self, tenant: Any, thread: Any, viewer_author_id: str | None) -> Deferred[None] | None:
                return fail(Refused("members only"))

        for policy in (MembersOnly(), Later()):
            live.policy = policy
            conn = LiveConnection(live, Outlet())
            f = self.failureResultOf(conn.subscribe(Subscribe(world.tenant_a.id, world.url), lambda *a: None))
            self.assertEqual(f.value.code, "forbidden")
            self.assertEqual(conn.subs, {})
        live.policy = PublicThreads()
        conn = LiveConnection(live, Outlet())
        answered: list[Any] = []
        joined = self.successResultOf(
            conn.subscribe(Subscribe(world.tenant_a.id, world.url), lambda *a: answered.append(a))
        )
        self.assertIsNotNone(joined)
        self.assertEqual(len(answered), 1)
        self.assertEqual(list(conn.subs), [(world.tenant_a.id, world.thread_a.id)])

    def test_policy_hook(self) -> None:
        """A policy sees tenant, thread and viewer, and can refuse."""
        world = World(Clock())
        live = world.node.live
        policy = MembersOnly()
        self.assertTrue(verifyObject(IAccessPolicy, policy))
        live.policy = policy
        conn = LiveConnection(live, Outlet())
        f = self.failureResultOf(
            conn.subscribe(Subscribe(world.tenant_a.id, world.url), lambda *a: None),
            RequestError,
        )
        self.assertEqual(
            (f.value.code, f.value.message),
            ("forbidden", "sign in to follow this thread"),
        )
        author = world.author(world.tenant_a)
        token = world.viewer_token(world.tenant_a, author)
        joined = done(conn.subscribe(Subscribe(world.tenant_a.id, world.url, viewer=token), lambda *a: None))
        self.assertIsNotNone(joined)
        self.assertEqual(policy.seen[-1], (world.tenant_a.id, world.thread_a.id, author))
