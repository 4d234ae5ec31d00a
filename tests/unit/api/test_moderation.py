"""Moderation through the tenant API (``/api/v1/manage/moderation``) and
what it does to the public API: the queue, bulk actions, bans, the audit
log, flags that hide a comment, and likes that cannot be inflated."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import quote, urlencode

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.api.common import AddressHasher
from fastedge.api.keys import hash_api_key, new_api_key
from fastedge.store.model import ReadPreference, SsoSecretChange
from tests.support.nodes import ApiClient, NodeHarness

from ..live.common import World, done
from .test_live_events import Inbox

M = "/api/v1/manage"
Q = M + "/moderation/queue"
ACT = M + "/moderation/actions"
BANS = M + "/moderation/bans"
LOG = M + "/moderation/log"
URL = "https://site.test/a"
PRIMARY = ReadPreference.PRIMARY


class ModerationTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = NodeHarness(self)
        self.tenant, self.key = self.node.create_tenant("Site A")
        self.manager = self.node.manager(self.key)

    def public(self, path: str) -> str:
        return "/api/v1/{}{}".format(self.tenant, path)

    def post(self, client: ApiClient | None = None, text: str = "hello", url: str = URL) -> dict[str, Any]:
        """A comment posted by a reader (a new one unless given)."""
        r = (client or self.node.client()).post(
            self.public("/comments?urlId=" + quote(url, safe="")), json_body={"text": text, "displayName": "R"}
        )
        self.assertEqual(r.code, 201, r.body)
        return r.json["comment"]  # type: ignore[no-any-return]

    def imported(self, status: str = "pending", url: str = URL, text: str = "imported", **extra: Any) -> Any:
        self.node.clock.advance(1)
        body = {"urlId": url, "text": text, "displayName": "Editor", "status": status}
        body.update(extra)
        r = self.manager.post(M + "/comments", json_body=body)
        self.assertEqual(r.code, 201, r.body)
        return r.json["comment"]

    def queue_ids(self, limit: int = 2, **query: str) -> list[str]:
        """Every comment id of a queue, following cursors."""
        seen: list[str] = []
        cursor = None
        while True:
            params = dict(query, limit=str(limit))
            if cursor:
                params["cursor"] = cursor
            r = self.manager.get(Q + "?" + urlencode(params))
            self.assertEqual(r.code, 200, r.body)
            seen += [c["id"] for c in r.json["comments"]]
            cursor = r.json["nextCursor"]
            if not cursor:
                return seen

    def act(self, action: str, ids: list[str], **extra: Any) -> Any:
        r = self.manager.post(ACT, json_body=dict(action=action, commentIds=ids, **extra))
        return r

    def page(self, client: ApiClient | None = None) -> list[str]:
        r = (client or self.node.client()).get(self.public("/comments?urlId=" + quote(URL, safe="")))
        self.assertEqual(r.code, 200, r.body)
        return [c["id"] for c in r.json["comments"]]

    def error(self, r: Any) -> tuple[int, str]:
        return r.code, r.json["error"]["code"]


class QueueTests(ModerationTestCase):
    def test_queue_oldest_first_with_filters(self) -> None:
        """The pending queue lists oldest first across pages and narrows by
        thread, author, time range and text."""
        a = self.imported(text="Buy cheap pills", userId="spammer")
        b = self.imported(url="https://site.test/b", text="fine words")
        c = self.imported(text="CHEAP again", userId="spammer")
        self.imported(status="approved")
        self.assertEqual(self.queue_ids(), [a["id"], b["id"], c["id"]])
        self.assertEqual(self.queue_ids(threadId=a["threadId"]), [a["id"], c["id"]])
        self.assertEqual(self.queue_ids(authorId=a["authorId"]), [a["id"], c["id"]])
        self.assertEqual(self.queue_ids(q="cheap"), [a["id"], c["id"]])
        self.assertEqual(self.queue_ids(since=str(b["createdAt"]), until=str(c["createdAt"])), [b["id"]])
        self.assertEqual(self.queue_ids(threadId="no-such-thread"), [])

    def test_queue_reads_nearest_by_default(self) -> None:
        """Moderation reads default to NEAREST (charged as such); PRIMARY on request."""
        r = self.manager.get(Q)
        self.assertEqual((r.code, r.header("x-credits-charged")), (200, "1"))
        r = self.manager.get(Q + "?readPreference=primary")
        self.assertEqual((r.code, r.header("x-credits-charged")), (200, "2"))

    def test_most_flagged_first(self) -> None:
        """The flagged queue sorted by flags puts the most flagged first."""
        once = self.post()
        self.node.clock.advance(1)
        twice = self.post()
        for comment, n in ((once, 1), (twice, 2)):
            for _ in range(n):
                r = self.node.client().post(self.public("/comments/{}/flag".format(comment["id"])))
                self.assertEqual(r.code, 200, r.body)
        self.assertEqual(self.queue_ids(queue="flagged", sort="flags"), [twice["id"], once["id"]])
        self.assertEqual(self.queue_ids(queue="flagged"), [once["id"], twice["id"]])

    def test_bad_queries(self) -> None:
        """Unknown queues, sorts, times and cursors are 400s naming the problem."""
        for query, code in [
            ("queue=new", "bad_queue"),
            ("sort=newest", "bad_sort"),
            ("since=yesterday", "bad_query"),
            ("until=-1", "bad_query"),
            # Not ASCII digits: int() refuses the first (a 500 once), reads
            # the second as 1.
            ("since=%C2%B2", "bad_query"),
            ("until=%D9%A1", "bad_query"),
            ("since=9007199254740993", "bad_query"),
            ("cursor=garbage", "bad_cursor"),
            ("q=" + "x" * 201, "bad_q"),
        ]:
            self.assertEqual(self.error(self.manager.get(Q + "?" + query)), (400, code), query)


class ActionTests(ModerationTestCase):
    def test_approve_publishes_and_logs(self) -> None:
        """A bulk approve makes pending comments public, answers with what
        changed, and writes one audit entry naming the moderator and ids."""
        made = [self.imported()["id"] for _ in range(3)]
        r = self.act("approve", made, reason="looks fine", moderator="mod@site.test")
        self.assertEqual(r.code, 200, r.body)
        self.assertEqual([c["status"] for c in r.json["changed"]], ["approved"] * 3)
        self.assertEqual(sorted(self.page()), sorted(made))
        self.assertEqual(self.queue_ids(), [])
        entries = self.manager.get(LOG).json["entries"]
        self.assertEqual(
            [(e["moderator"], e["action"], e["commentIds"], e["reason"]) for e in entries],
            [("mod@site.test", "approve", made, "looks fine")],
        )
        self.assertEqual(entries[0]["id"], r.json["auditId"])

    def test_remove_spam_restore(self) -> None:
        """Removed and spam comments leave the public page for their queues;
        restore brings them back."""
        one, two = self.post(), self.post()
        self.assertEqual(self.act("remove", [one["id"]]).code, 200)
        self.node.clock.advance(1)
        self.assertEqual(self.act("spam", [two["id"]]).code, 200)
        self.assertEqual(self.page(), [])
        self.assertEqual(self.queue_ids(queue="removed"), [one["id"]])
        self.assertEqual(self.queue_ids(queue="spam"), [two["id"]])
        self.node.clock.advance(1)
        self.assertEqual(self.act("restore", [one["id"], two["id"]]).code, 200)
        self.node.clock.advance(1)
        self.assertEqual(sorted(self.page()), sorted([one["id"], two["id"]]))
        log = self.manager.get(LOG + "?limit=2").json
        self.assertEqual([e["action"] for e in log["entries"]], ["restore", "spam"])
        more = self.manager.get(LOG + "?limit=2&cursor=" + log["nextCursor"]).json
        self.assertEqual([e["action"] for e in more["entries"]], ["remove"])

    def test_another_tenants_ids_refuse_the_whole_call(self) -> None:
        """A bulk call naming one comment of another tenant is refused whole:
        404, nothing applied in either tenant, nothing logged."""
        mine = self.imported()
        other_tenant, other_key = self.node.create_tenant("Site B")
        other = self.node.manager(other_key)
        theirs = other.post(
            M + "/comments", json_body={"urlId": URL, "text": "x", "displayName": "E", "status": "pending"}
        ).json["comment"]
        for action in ("approve", "remove", "restore", "spam", "ban"):
            self.assertEqual(self.error(self.act(action, [mine["id"], theirs["id"]])), (404, "comment_not_found"))
        self.assertEqual(self.manager.get(M + "/comments/" + mine["id"]).json["comment"], mine)
        self.assertEqual(other.get(M + "/comments/" + theirs["id"]).json["comment"], theirs)
        self.assertEqual(self.manager.get(LOG).json["entries"], [])
        self.assertEqual(other.get(LOG).json["entries"], [])
        self.assertEqual(self.manager.get(BANS + "?active=false").json["bans"], [])

    def test_bad_bulk_calls(self) -> None:
        """501 ids, repeated ids, no ids, malformed ids, unknown actions and
        ban options on other actions are refused and change nothing."""
        mine = self.imported()
        ids = ["A%04d" % i for i in range(500)]
        for body, expected in [
            ({"action": "approve", "commentIds": [mine["id"]] + ids}, (422, "bad_comment_ids")),
            ({"action": "approve", "commentIds": [mine["id"], mine["id"]]}, (422, "bad_comment_ids")),
            ({"action": "approve", "commentIds": []}, (422, "bad_comment_ids")),
            ({"action": "approve", "commentIds": [mine["id"], "../x"]}, (404, "comment_not_found")),
            ({"action": "approve", "commentIds": [mine["id"], 7]}, (400, "wrong_type")),
            ({"action": "publish", "commentIds": [mine["id"]]}, (400, "bad_action")),
            ({"action": "approve", "commentIds": [mine["id"]], "removeAll": True}, (400, "bad_field")),
            ({"action": "approve", "commentIds": mine["id"]}, (400, "wrong_type")),
            ({"action": "ban", "commentIds": [mine["id"]], "expiresAt": 1}, (422, "bad_expiry")),
            ({"action": "approve", "commentIds": [mine["id"]], "reason": "x" * 501}, (400, "bad_reason")),
        ]:
            r = self.manager.post(ACT, json_body=body)
            self.assertEqual(self.error(r), expected, body)
        self.assertEqual(self.manager.get(M + "/comments/" + mine["id"]).json["comment"], mine)
        self.assertEqual(self.manager.get(LOG).json["entries"], [])


class BanTests(ModerationTestCase):
    def test_ban_author_blocks_posting_until_lifted(self) -> None:
        """Banning a comment's author removes the comment and refuses that
        session's next post with 403 banned; other readers still post; once
        lifted, the author posts again."""
        troll = self.node.client()
        first = self.post(troll)
        r = self.act("ban", [first["id"]], reason="trolling")
        self.assertEqual(r.code, 200, r.body)
        ban = r.json["bans"][0]
        self.assertEqual((ban["authorId"], ban["active"], ban["expiresAt"]), (first["authorId"], True, None))
        self.assertEqual(self.page(), [])
        refused = troll.post(self.public("/comments?urlId=x"), json_body={"text": "again", "displayName": "T"})
        self.assertEqual(self.error(refused), (403, "banned"))
        self.post()
        listed = self.manager.get(BANS).json["bans"]
        self.assertEqual([b["id"] for b in listed], [ban["id"]])
        lifted = self.manager.delete(BANS + "/" + ban["id"] + "?reason=appeal")
        self.assertEqual((lifted.code, lifted.json["ban"]["active"]), (200, False))
        self.assertEqual(self.manager.get(BANS).json["bans"], [])
        self.assertEqual(len(self.manager.get(BANS + "?active=false").json["bans"]), 1)
        self.post(troll)
        self.assertEqual(self.error(self.manager.delete(BANS + "/" + ban["id"])), (404, "ban_not_found"))
        actions = [e["action"] for e in self.manager.get(LOG).json["entries"]]
        self.assertEqual(actions, ["lift_ban", "ban"])

    def test_ban_with_expiry_and_remove_all(self) -> None:
        """A ban by author id can remove all of the author's comments and
        ends by itself at its expiry."""
        troll = self.node.client()
        made = [self.post(troll)["id"] for _ in range(3)]
        keep = self.post()
        expires = int(self.node.clock.seconds() * 1000) + 60_000
        r = self.manager.post(
            BANS, json_body={"authorId": self.post(troll)["authorId"], "removeAll": True, "expiresAt": expires}
        )
        self.assertEqual((r.code, r.json["removed"]), (201, 4), r.body)
        self.assertEqual(self.page(), [keep["id"]])
        self.assertTrue(set(made) <= set(self.queue_ids(queue="removed")))
        refused = troll.post(self.public("/comments?urlId=x"), json_body={"text": "again", "displayName": "T"})
        self.assertEqual(self.error(refused), (403, "banned"))
        self.node.clock.advance(60)
        self.post(troll)

    def test_address_ban(self) -> None:
        """A ban by IP address refuses posts from that address whatever the
        session; the address is shown only as its hash."""
        r = self.manager.post(BANS, json_body={"ip": "127.0.0.1", "reason": "flood"})
        self.assertEqual(r.code, 201, r.body)
        self.assertIsNone(r.json["ban"]["authorId"])
        self.assertNotIn("127.0.0.1", json.dumps(r.json))
        refused = self.node.client().post(self.public("/comments?urlId=x"), json_body={"text": "x", "displayName": "T"})
        self.assertEqual(self.error(refused), (403, "banned"))

    def test_address_hash_is_keyed(self) -> None:
        """An address is kept as HMAC-SHA256 under a sub-key of the
        deployment's session key (``HMAC(key, "address-hash")``), per tenant:
        not the bare SHA-256 anyone can reverse by hashing all of IPv4."""
        r = self.manager.post(BANS, json_body={"ip": "127.0.0.1"})
        self.assertEqual(r.code, 201, r.body)
        with open(self.node.api_config.secret_file, "rb") as f:
            key = f.read().strip()
        sub_key = hmac.new(key, b"address-hash", hashlib.sha256).digest()
        message = "{}\x00127.0.0.1".format(self.tenant).encode()
        self.assertEqual(r.json["ban"]["addressHash"], hmac.new(sub_key, message, hashlib.sha256).hexdigest())
        unkeyed = hashlib.sha256("fastedge-address\x00{}\x00127.0.0.1".format(self.tenant).encode()).hexdigest()
        self.assertNotEqual(r.json["ban"]["addressHash"], unkeyed)

    def test_address_hash_follows_the_deployment_key(self) -> None:
        """Nodes sharing the key file hash an address alike (a ban made at
        one holds at all); another deployment's key hashes it differently."""
        shared = NodeHarness(self, secret_file=self.node.api_config.secret_file)
        other = NodeHarness(self)
        hashes = []
        for node in (self.node, shared, other):
            hasher = AddressHasher(node.api.cookies)
            hashes.append(hasher(self.tenant, "192.0.2.1"))
        self.assertEqual(hashes[0], hashes[1])
        self.assertNotEqual(hashes[0], hashes[2])
        self.assertNotEqual(hashes[0], AddressHasher(self.node.api.cookies)("other-tenant", "192.0.2.1"))

    def test_bad_bans(self) -> None:
        """Bans with an expiry in the past, no or two targets, a bad address,
        an unknown author, or removeAll for an address are refused; none is made."""
        author = self.post()["authorId"]
        now = int(self.node.clock.seconds() * 1000)
        for body, expected in [
            ({"authorId": author, "expiresAt": now - 1}, (422, "bad_expiry")),
            ({"authorId": author, "expiresAt": now}, (422, "bad_expiry")),
            ({}, (400, "bad_ban_target")),
            ({"authorId": author, "ip": "10.0.0.1"}, (400, "bad_ban_target")),
            ({"ip": "10.0.0.300"}, (400, "bad_ip")),
            # A scope id: ipaddress takes it, the spec's ipv6 format does
            # not, and no client address carries one.
            ({"ip": "fe80::1%eth0"}, (400, "bad_ip")),
            ({"ip": "10.0.0.1", "removeAll": True}, (400, "bad_field")),
            ({"authorId": "AAAAAAAAAAAAAAAA"}, (404, "author_not_found")),
            ({"authorId": author, "expiresAt": "tomorrow"}, (400, "wrong_type")),
        ]:
            self.assertEqual(self.error(self.manager.post(BANS, json_body=body)), expected, body)
        self.assertEqual(self.manager.get(BANS + "?active=false").json["bans"], [])
        self.assertEqual(self.manager.get(LOG).json["entries"], [])


class FlagAndLikeTests(ModerationTestCase):
    def test_flags_auto_hide_at_threshold(self) -> None:
        """At ``api.auto_hide_flags`` flags a comment leaves the public page
        but stays in the moderators' flagged and pending queues."""
        comment = self.post()
        for _ in range(3):
            self.assertEqual(self.page(), [comment["id"]])
            r = self.node.client().post(self.public("/comments/{}/flag".format(comment["id"])))
            self.assertEqual(r.code, 200, r.body)
        self.assertEqual(self.page(), [])
        self.assertEqual(self.queue_ids(queue="flagged"), [comment["id"]])
        self.assertEqual(self.queue_ids(queue="pending"), [comment["id"]])
        self.assertEqual(self.manager.get(LOG).json["entries"][0]["action"], "auto_hide")
        self.assertEqual(self.act("approve", [comment["id"]]).code, 200)
        self.assertEqual(self.page(), [comment["id"]])

    def test_tenant_threshold(self) -> None:
        """A tenant's ``flagsToHide`` setting overrides the configured
        threshold; ``0`` never hides; ``null`` (what a tenant that changed
        other settings stores) follows ``api.auto_hide_flags`` (3)."""
        for setting, hidden_after in ((2, 2), (0, None), (None, 3)):
            self.successResultOf(
                self.node.store.update_tenant_settings(self.tenant, {"flagsToHide": setting}, read_preference=PRIMARY)
            )
            comment = self.post()
            for n in range(1, 5):
                r = self.node.client().post(self.public("/comments/{}/flag".format(comment["id"])))
                self.assertEqual(r.code, 200 if hidden_after is None or n <= hidden_after else 404, r.body)
            self.assertEqual(comment["id"] in self.page(), hidden_after is None, setting)

    def test_likes_without_cookie_do_not_inflate(self) -> None:
        """A client that drops its cookie before every like gets a new
        session each time, yet the comment counts at most
        ``api.likes_per_address`` likes from its address; the rest are 409."""
        comment = self.post()
        path = self.public("/comments/{}/like".format(comment["id"]))
        answers = [self.node.client().post(path) for _ in range(5)]
        self.assertEqual([r.code for r in answers], [200, 200, 200, 409, 409])
        self.assertEqual(answers[3].json["error"]["code"], "like_limit")
        r = self.node.client().get(self.public("/comments?urlId=" + quote(URL, safe="")))
        self.assertEqual(r.json["comments"][0]["likes"], 3)


class ModerationLiveTests(SynchronousTestCase):
    """Moderator actions and auto-hiding publish the matching live events."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.world = World(self.clock)
        self.node = self.world.node
        self.tenant = self.world.tenant_a
        key = new_api_key()
        done(self.node.store.add_api_key(self.tenant.id, hash_api_key(key), created_ms=0, read_preference=PRIMARY))
        self.auth = {b"authorization": [b"Bearer " + key.encode()]}
        self.inbox = Inbox(self.clock)
        self.node.hub.subscribe((self.tenant.id, self.world.thread_a.id), self.inbox)

    def call(self, method: str, path: str, body: Any = None, manage: bool = False, **query: str) -> tuple[int, Any]:
        url = "http://node.test" + path + ("?" + urlencode(query) if query else "")
        headers = dict(self.auth) if manage else {}
        data = None
        if body is not None:
            headers[b"content-type"] = [b"application/json"]
            data = json.dumps(body).encode()
        stub = StubTreq(self.node.site.resource)
        response = self.successResultOf(stub.request(method, url, data=data, headers=headers))
        raw = self.successResultOf(response.content())
        return response.code, json.loads(raw) if raw else None

    def post(self, status: str = "approved") -> dict[str, Any]:
        code, body = self.call(
            "POST",
            M + "/comments",
            {"urlId": self.world.url, "text": "hi", "displayName": "E", "status": status},
            manage=True,
        )
        self.assertEqual(code, 201, body)
        return body["comment"]  # type: ignore[no-any-return]

    def kinds(self) -> list[tuple[str, str]]:
        seen = [(e["event"], e["data"].get("commentId") or e["data"]["comment"]["id"]) for e in self.inbox.events]
        self.inbox.events.clear()
        return seen

    def test_bulk_actions_publish(self) -> None:
        """Approving pending comments publishes comment.approved for each;
        removing public ones publishes comment.removed; removing hidden ones
        publishes nothing."""
        pending = [self.post("pending")["id"] for _ in range(2)]
        public = self.post()["id"]
        self.kinds()
        code, body = self.call("POST", ACT, {"action": "approve", "commentIds": pending}, manage=True)
        self.assertEqual(code, 200, body)
        self.assertEqual(self.kinds(), [("comment.approved", i) for i in pending])
        code, body = self.call("POST", ACT, {"action": "spam", "commentIds": [public, pending[0]]}, manage=True)
        self.assertEqual(self.kinds(), [("comment.removed", public), ("comment.removed", pending[0])])
        self.call("POST", ACT, {"action": "remove", "commentIds": [public]}, manage=True)
        self.assertEqual(self.kinds(), [])

    def test_auto_hide_publishes_removal(self) -> None:
        """The flag that reaches the threshold publishes comment.removed."""
        comment = self.post()["id"]
        self.kinds()
        for _ in range(3):
            code, body = self.call("POST", "/api/v1/{}/comments/{}/flag".format(self.tenant.id, comment))
            self.assertEqual(code, 200, body)
        events = self.inbox.events
        self.assertEqual([(e["event"], e["data"]["reason"]) for e in events], [("comment.removed", "flagged")])


SECRET_A = "5f" * 32
SECRET_B = "a7" * 32


def sso(secret: str, user: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """A signed SSO payload, made as docs/sso.md says (not the project's helper)."""
    payload = base64.b64encode(json.dumps(user).encode()).decode()
    mac = hmac.new(secret.encode(), (str(now_ms) + payload).encode(), hashlib.sha256).hexdigest()
    return {"payload": payload, "timestamp": now_ms, "signature": mac}


MOD = {"id": "mod-1", "displayName": "Mo", "isModerator": True}
ADMIN = {"id": "adm-1", "displayName": "Ad", "isAdmin": True}
READER = {"id": "reader-1", "displayName": "Re", "isModerator": False}


class SsoModeratorTests(ModerationTestCase):
    """SSO moderators use the queue and the bulk actions of their own tenant
    on the public side, ``/api/v1/{tenant}/moderation/...``."""

    def setUp(self) -> None:
        super().setUp()
        self.other, self.other_key = self.node.create_tenant("Site B")
        for tenant, secret in ((self.tenant, SECRET_A), (self.other, SECRET_B)):
            self.successResultOf(
                self.node.store.update_tenant_settings(
                    tenant, {}, sso_secret=SsoSecretChange(secret, self.now(), 0), read_preference=PRIMARY
                )
            )

    def now(self) -> int:
        return int(self.node.clock.seconds() * 1000)

    def signed_in(self, user: dict[str, Any], tenant: str | None = None, secret: str = SECRET_A) -> ApiClient:
        client = self.node.client()
        r = client.post("/api/v1/{}/sso".format(tenant or self.tenant), json_body=sso(secret, user, self.now()))
        self.assertEqual(r.code, 200, r.body)
        return client

    def header(self, user: dict[str, Any], secret: str = SECRET_A) -> dict[str, str]:
        v = sso(secret, user, self.now())
        return {"x-fastedge-sso": "{}.{}.{}".format(v["payload"], v["timestamp"], v["signature"])}

    def path(self, what: str, tenant: str | None = None) -> str:
        return "/api/v1/{}/moderation/{}".format(tenant or self.tenant, what)

    def test_moderator_by_cookie_works_the_queue(self) -> None:
        """A signed-in moderator reads the pending queue and approves; the
        audit log names their SSO user id."""
        pending = self.imported()
        mod = self.signed_in(MOD)
        r = mod.get(self.path("queue"))
        self.assertEqual(r.code, 200, r.body)
        self.assertEqual([c["id"] for c in r.json["comments"]], [pending["id"]])
        r = mod.post(self.path("actions"), json_body={"action": "approve", "commentIds": [pending["id"]]})
        self.assertEqual(r.code, 200, r.body)
        self.assertEqual(self.page(), [pending["id"]])
        entry = self.manager.get(LOG).json["entries"][0]
        self.assertEqual((entry["moderator"], entry["action"]), ("mod-1", "approve"))
        self.assertEqual(mod.get(self.path("queue")).json["comments"], [])

    def test_moderator_cannot_name_another_actor(self) -> None:
        """An SSO moderator is who they signed in as: a ``moderator`` field
        is refused, and nothing is applied."""
        pending = self.imported()
        mod = self.signed_in(MOD)
        body = {"action": "remove", "commentIds": [pending["id"]], "moderator": "someone else"}
        self.assertEqual(self.error(mod.post(self.path("actions"), json_body=body)), (400, "bad_field"))
        self.assertEqual(self.manager.get(LOG).json["entries"], [])

    def test_header_and_admin(self) -> None:
        """X-FastEdge-SSO works as the cookie does; an admin is a moderator."""
        pending = self.imported()
        client = self.node.client()
        r = client.get(self.path("queue"), headers=self.header(ADMIN))
        self.assertEqual(r.code, 200, r.body)
        self.assertEqual([c["id"] for c in r.json["comments"]], [pending["id"]])
        body = {"action": "spam", "commentIds": [pending["id"]]}
        r = self.node.client().post(self.path("actions"), json_body=body, headers=self.header(ADMIN))
        self.assertEqual(r.code, 200, r.body)
        self.assertEqual(self.manager.get(LOG).json["entries"][0]["moderator"], "adm-1")

    def test_others_are_refused_with_json(self) -> None:
        """A signed-in reader gets 403 ``not_moderator``; a stranger, an
        anonymous session and a forged cookie 401 ``sign_in_required``;
        none changes anything."""
        pending = self.imported()
        anonymous = self.node.client()
        self.post(anonymous)
        forged = self.node.client()
        forged.cookie = "fe_session=v2.x.y.1.z.forged"
        body = {"action": "approve", "commentIds": [pending["id"]]}
        for client, expected in (
            (self.signed_in(READER), (403, "not_moderator")),
            (self.node.client(), (401, "sign_in_required")),
            (anonymous, (401, "sign_in_required")),
            (forged, (401, "sign_in_required")),
        ):
            self.assertEqual(self.error(client.get(self.path("queue"))), expected)
            self.assertEqual(self.error(client.post(self.path("actions"), json_body=body)), expected)
        r = self.node.client().get(self.path("queue"), headers=self.header(READER))
        self.assertEqual(self.error(r), (403, "not_moderator"))
        self.assertEqual(self.queue_ids(), [pending["id"]])
        self.assertEqual(self.manager.get(LOG).json["entries"], [])

    def test_tenant_isolation(self) -> None:
        """A moderator of A cannot use B's queue (A's cookie and A's
        signature mean nothing at B), nor act on B's comments through A's
        routes: the whole call is refused and nothing applied."""
        theirs = self.node.manager(self.other_key).post(
            M + "/comments", json_body={"urlId": URL, "text": "b", "displayName": "B", "status": "pending"}
        )
        self.assertEqual(theirs.code, 201, theirs.body)
        theirs_id = theirs.json["comment"]["id"]
        ours = self.imported()
        mod = self.signed_in(MOD)
        body = {"action": "approve", "commentIds": [theirs_id]}
        self.assertEqual(self.error(mod.get(self.path("queue", self.other))), (401, "sign_in_required"))
        self.assertEqual(
            self.error(mod.post(self.path("actions", self.other), json_body=body)), (401, "sign_in_required")
        )
        r = self.node.client().get(self.path("queue", self.other), headers=self.header(MOD))
        self.assertEqual(self.error(r), (401, "sso_bad_signature"))
        r = mod.post(self.path("actions"), json_body={"action": "approve", "commentIds": [ours["id"], theirs_id]})
        self.assertEqual(self.error(r), (404, "comment_not_found"))
        self.assertEqual(self.queue_ids(), [ours["id"]])
        other_queue = self.node.manager(self.other_key).get(Q).json["comments"]
        self.assertEqual([c["id"] for c in other_queue], [theirs_id])

    def test_cross_origin_moderation_tool(self) -> None:
        """A moderation tool on one of the site's allowedOrigins may call the
        routes cross-origin, sending and reading X-Consistency-Token."""
        origin = "https://mods.site.test"
        self.successResultOf(
            self.node.store.update_tenant_settings(self.tenant, {"allowedOrigins": [origin]}, read_preference=PRIMARY)
        )
        self.node.clock.advance(self.node.api_config.page_cache_seconds)
        preflight = self.node.request(
            "OPTIONS",
            self.path("queue"),
            data=None,
            headers={
                "origin": origin,
                "access-control-request-method": "GET",
                "access-control-request-headers": "x-consistency-token",
            },
        )
        self.assertEqual(preflight.code, 204, preflight.body)
        self.assertIn("x-consistency-token", preflight.header("access-control-allow-headers") or "")
        pending = self.imported()
        r = self.signed_in(MOD).post(
            self.path("actions"),
            json_body={"action": "approve", "commentIds": [pending["id"]]},
            headers={"origin": origin},
        )
        self.assertEqual(r.code, 200, r.body)
        self.assertEqual(r.header("access-control-allow-origin"), origin)
        self.assertIn("x-consistency-token", r.header("access-control-expose-headers") or "")
