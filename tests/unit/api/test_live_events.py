"""The comment API publishes live events after its writes succeed (public
and tenant APIs, through the node's real Site and a real SQLite store)."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.api.keys import hash_api_key, new_api_key
from fastedge.live.hub import Prepared
from fastedge.store.model import ReadPreference

from ..live.common import World, done

PRIMARY = ReadPreference.PRIMARY


class Inbox:
    """A hub subscriber that keeps the events' JSON.

    :param clock: the node's clock; the fan-out runs on its next turns, which
        :attr:`events` lets happen first.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._events: list[dict[str, Any]] = []

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events delivered once the fan-out has had its turns."""
        self._clock.advance(0)
        return self._events

    def push(self, prepared: Prepared) -> int:
        self._events.append(json.loads(prepared.payload))
        return 1


class LiveEventsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.world = World(self.clock)
        self.node = self.world.node
        self.stub = StubTreq(self.node.site.resource)
        self.tenant = self.world.tenant_a
        key = new_api_key()
        done(self.node.store.add_api_key(self.tenant.id, hash_api_key(key), created_ms=0, read_preference=PRIMARY))
        self.auth = {b"authorization": [b"Bearer " + key.encode()]}
        self.inbox = Inbox(self.clock)
        self.node.hub.subscribe((self.tenant.id, self.world.thread_a.id), self.inbox)
        # Each StubTreq keeps its own cookie jar: one per commenter.
        self.troll_stub = StubTreq(self.node.site.resource)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        manage: bool = False,
        stub: Any = None,
        **query: str,
    ) -> tuple[int, Any]:
        url = "http://node.test" + path
        if query:
            from urllib.parse import urlencode

            url += "?" + urlencode(query)
        headers = dict(self.auth) if manage else {}
        data = None
        if body is not None:
            headers[b"content-type"] = [b"application/json"]
            data = json.dumps(body).encode()
        response = self.successResultOf((stub or self.stub).request(method, url, data=data, headers=headers))
        raw = self.successResultOf(response.content())
        return response.code, json.loads(raw) if raw else None

    def post(self, text: str = "hi", url: str | None = None, stub: Any = None) -> dict[str, Any]:
        code, body = self.call(
            "POST",
            "/api/v1/{}/comments".format(self.tenant.id),
            {"text": text, "displayName": "Ann"},
            stub=stub,
            urlId=url or self.world.url,
        )
        self.assertEqual(code, 201, body)
        return body  # type: ignore[no-any-return]

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.inbox.events]

    def test_public_post_publishes_created(self) -> None:
        """A comment posted through the public API is published once, with the
        same public view the read API shows; the answer carries a viewer token
        that names the poster."""
        body = self.post("hello *live*")
        (event,) = self.inbox.events
        self.assertEqual(event["event"], "comment.created")
        self.assertEqual(event["data"]["comment"]["id"], body["comment"]["id"])
        self.assertEqual(event["data"]["comment"]["html"], body["comment"]["html"])
        self.assertNotIn("isMine", event["data"]["comment"])
        viewer = body["viewer"]
        author = self.node.api.viewer_tokens.check(viewer["liveToken"], self.tenant.id, int(self.clock.seconds()))
        self.assertEqual(author, viewer["authorId"])
        self.assertEqual(author, body["comment"]["authorId"])

    def test_read_with_session_gives_viewer_token(self) -> None:
        """Reading a thread with a session cookie returns the viewer token."""
        self.post()
        code, body = self.call("GET", "/api/v1/{}/comments".format(self.tenant.id), urlId=self.world.url)
        self.assertEqual(code, 200)
        self.assertIn("liveToken", body["viewer"])

    def test_pending_then_approved(self) -> None:
        """A pre-moderated comment is not published while pending, and is
        published as approved when a moderator approves it."""
        done(self.node.store.update_tenant_settings(self.tenant.id, {"moderation": "pre"}, read_preference=PRIMARY))
        body = self.post("wait for it")
        self.assertEqual(body["comment"]["status"], "pending")
        self.assertEqual(self.inbox.events, [])
        code, _ = self.call(
            "PATCH",
            "/api/v1/manage/comments/" + body["comment"]["id"],
            {"status": "approved"},
            manage=True,
        )
        self.assertEqual(code, 200)
        self.assertEqual(self.kinds(), ["comment.approved"])
        self.assertEqual(self.inbox.events[0]["data"]["comment"]["html"], "<p>wait for it</p>")

    def test_edit_and_moderation(self) -> None:
        """Editing publishes edited; moderating away (removed, spam) publishes
        removed with the reason; a change to a hidden comment publishes nothing."""
        cid = self.post("first")["comment"]["id"]
        path = "/api/v1/manage/comments/" + cid
        self.call("PATCH", path, {"text": "first, edited"}, manage=True)
        self.call("PATCH", path, {"status": "spam"}, manage=True)
        self.call("PATCH", path, {"text": "still hidden"}, manage=True)
        self.assertEqual(self.kinds(), ["comment.created", "comment.edited", "comment.removed"])
        self.assertEqual(self.inbox.events[1]["data"]["comment"]["html"], "<p>first, edited</p>")
        self.assertEqual(
            self.inbox.events[2]["data"],
            {"commentId": cid, "parentId": None, "reason": "spam"},
        )
        self.assertEqual([e["seq"] for e in self.inbox.events], [1, 2, 3])

    def test_delete(self) -> None:
        """Deleting a public comment publishes removed (reason deleted)."""
        cid = self.post()["comment"]["id"]
        code, _ = self.call("DELETE", "/api/v1/manage/comments/" + cid, manage=True)
        self.assertEqual(code, 200)
        self.assertEqual(
            self.inbox.events[-1]["data"],
            {"commentId": cid, "parentId": None, "reason": "deleted"},
        )

    def test_manage_create(self) -> None:
        """A comment created through the tenant API is published."""
        code, body = self.call(
            "POST",
            "/api/v1/manage/comments",
            {"urlId": self.world.url, "text": "from the CMS", "displayName": "Ed"},
            manage=True,
        )
        self.assertEqual(code, 201)
        self.assertEqual(self.kinds(), ["comment.created"])

    def test_likes(self) -> None:
        """Liking and unliking publish the new like count."""
        cid = self.post()["comment"]["id"]
        path = "/api/v1/{}/comments/{}/like".format(self.tenant.id, cid)
        self.assertEqual(self.call("POST", path)[0], 200)
        self.assertEqual(self.call("DELETE", path)[0], 200)
        self.assertEqual(
            [e["data"] for e in self.inbox.events[1:]],
            [{"commentId": cid, "likes": 1}, {"commentId": cid, "likes": 0}],
        )

    def test_failed_write_publishes_nothing(self) -> None:
        """A write the store refuses (a repeated like) publishes nothing."""
        cid = self.post()["comment"]["id"]
        path = "/api/v1/{}/comments/{}/like".format(self.tenant.id, cid)
        self.call("POST", path)
        self.assertEqual(self.call("POST", path)[0], 409)
        self.assertEqual(self.kinds(), ["comment.created", "comment.likes"])

    def test_block_applies_to_live_subscription(self) -> None:
        """Blocking an author through the public API stops that author's
        events on the viewer's open subscriptions; unblocking restarts them."""
        troll = self.post("troll post", stub=self.troll_stub)["comment"]["authorId"]
        me = self.post("my post")["viewer"]["authorId"]
        viewer_inbox = Inbox(self.clock)
        self.node.hub.subscribe(
            (self.tenant.id, self.world.thread_a.id),
            viewer_inbox,
            viewer=(self.tenant.id, me),
        )
        self.assertEqual(
            self.call("POST", "/api/v1/{}/blocks/{}".format(self.tenant.id, troll))[0],
            200,
        )
        self.post("blocked", stub=self.troll_stub)
        self.assertEqual(
            self.call("DELETE", "/api/v1/{}/blocks/{}".format(self.tenant.id, troll))[0],
            200,
        )
        self.post("visible again", stub=self.troll_stub)
        self.assertEqual(
            [e["data"]["comment"]["html"] for e in viewer_inbox.events],
            ["<p>visible again</p>"],
        )

    def test_new_thread_subscribable_at_once(self) -> None:
        """A thread created by a first comment can be subscribed to at once,
        even right after a subscribe attempt was refused (no stale cache)."""
        failure = self.node.service.resolver.resolve(self.tenant.id, "https://new.example/")
        self.failureResultOf(failure).trap(Exception)
        self.post(url="https://new.example/")
        resolved = self.successResultOf(self.node.service.resolver.resolve(self.tenant.id, "https://new.example/"))
        self.assertEqual(resolved.thread.url_id, "https://new.example/")

    def test_answer_does_not_wait_for_the_fanout(self) -> None:
        """A post is answered (201) before any live subscriber is sent its
        event: the fan-out runs on the reactor's next turns."""
        self.post("first")
        self.assertEqual(self.inbox._events, [])
        self.assertEqual(self.node.hub.pending_fanouts, 1)
        self.assertEqual([e["data"]["comment"]["html"] for e in self.inbox.events], ["<p>first</p>"])

    def test_publish_failure_does_not_fail_the_write(self) -> None:
        """If announcing a change fails (here, the fan-out itself breaks), the
        write still answers 201 (it is done; a retry would duplicate it) and
        the failure is logged once, from the fan-out's own turn."""

        def broken(prepared: Any, members: Any, skip: Any) -> tuple[int, int]:
            raise RuntimeError("broken fan-out")

        self.node.hub._sliced._deliver = broken  # type: ignore[union-attr]
        self.post("still saved")
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        code, body = self.call("GET", "/api/v1/{}/comments".format(self.tenant.id), urlId=self.world.url)
        self.assertEqual([c["html"] for c in body["comments"]], ["<p>still saved</p>"])
