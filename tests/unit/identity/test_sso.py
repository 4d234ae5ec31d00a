"""Secure SSO: :func:`fastedge.identity.sso.verify_sso` and the public API's
sign-in, checked against payloads signed with the ``hmac`` module directly
(an implementation independent of the node's own)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.identity.sso import SsoError, verify_sso
from fastedge.store.model import ReadPreference, SsoSecretChange
from tests.support.nodes import NodeHarness

SECRET = "5f" * 32
OTHER = "a7" * 32
NOW = 1_700_000_000_000
PRIMARY = ReadPreference.PRIMARY


def signed(secret: str, user: Any, timestamp: int, *, raw: bytes | None = None) -> dict[str, Any]:
    """What a site owner's server sends, made as docs/sso.md says."""
    payload = base64.b64encode(raw if raw is not None else json.dumps(user).encode()).decode()
    mac = hmac.new(secret.encode(), (str(timestamp) + payload).encode(), hashlib.sha256).hexdigest()
    return {"payload": payload, "timestamp": timestamp, "signature": mac}


ANN = {"id": "u-1", "displayName": "Ann", "email": "ann@site.test", "groupIds": ["staff"], "isModerator": True}


class VerifyTests(SynchronousTestCase):
    """:func:`verify_sso` on its own."""

    def check(self, values: dict[str, Any], secrets: tuple[str, ...] = (SECRET,), now: int = NOW) -> Any:
        return verify_sso(secrets, values["payload"], values["timestamp"], values["signature"], now_ms=now)

    def refused(self, values: dict[str, Any], code: str, **kw: Any) -> SsoError:
        with self.assertRaises(SsoError) as caught:
            self.check(values, **kw)
        self.assertEqual(caught.exception.code, code)
        return caught.exception

    def test_good_payload(self) -> None:
        """A payload signed under the secret names its user and profile; a
        numeric id is kept as text; the timestamp may be a string."""
        user = self.check(signed(SECRET, ANN, NOW - 1000))
        self.assertEqual((user.external_id, user.display_name), ("u-1", "Ann"))
        self.assertEqual(
            (user.profile.email, user.profile.group_ids, user.profile.is_moderator, user.profile.is_admin),
            ("ann@site.test", ("staff",), True, False),
        )
        values = signed(SECRET, {"id": 42, "displayName": "Bob"}, NOW)
        values["timestamp"] = str(values["timestamp"])
        self.assertEqual(self.check(values).external_id, "42")

    def test_rotation_overlap(self) -> None:
        """Any accepted secret verifies; a payload under a secret no longer
        accepted (replayed after a rotation) does not."""
        old = signed(OTHER, ANN, NOW)
        self.assertEqual(self.check(old, secrets=(SECRET, OTHER)).external_id, "u-1")
        self.refused(old, "sso_bad_signature", secrets=(SECRET,))

    def test_bad_payloads(self) -> None:
        """Forged, tampered, truncated, expired, future, non-JSON and
        over-limit payloads are each refused with their own code."""
        good = signed(SECRET, ANN, NOW)
        self.refused(dict(good, signature="0" * 64), "sso_bad_signature")
        self.refused(signed(OTHER, ANN, NOW), "sso_bad_signature")
        tampered = signed(SECRET, dict(ANN, isAdmin=True), NOW)
        self.refused(dict(good, payload=tampered["payload"]), "sso_bad_signature")
        self.refused(dict(good, payload=good["payload"][:-8]), "sso_bad_signature")
        self.refused(dict(good, signature=good["signature"][:40]), "sso_malformed")
        self.refused(dict(good, payload="not base64!"), "sso_malformed")
        self.refused(dict(good, timestamp="12e5"), "sso_malformed")
        self.refused(dict(good, timestamp=True), "sso_malformed")
        self.refused(signed(SECRET, ANN, NOW - 2 * 24 * 3600 * 1000 - 1), "sso_expired")
        self.refused(signed(SECRET, ANN, NOW + 5 * 60 * 1000 + 1), "sso_from_future")
        self.assertEqual(self.check(signed(SECRET, ANN, NOW + 5 * 60 * 1000)).external_id, "u-1")
        self.refused(signed(SECRET, None, NOW, raw=b"{not json"), "sso_malformed")
        self.refused(signed(SECRET, [1, 2], NOW), "sso_malformed")
        self.refused(signed(SECRET, {"displayName": "x"}, NOW), "sso_malformed")
        self.assertEqual(
            self.refused(signed(SECRET, dict(ANN, displayName="   "), NOW), "sso_malformed").field, "displayName"
        )
        e = self.refused(signed(SECRET, dict(ANN, groupIds=["g%d" % i for i in range(101)]), NOW), "sso_malformed")
        self.assertEqual(e.field, "groupIds")
        e = self.refused(signed(SECRET, dict(ANN, groupIds=["x" * 65]), NOW), "sso_malformed")
        self.assertEqual(e.field, "groupIds")
        self.refused(signed(SECRET, dict(ANN, avatar="javascript:alert(1)"), NOW), "sso_malformed")
        self.refused(signed(SECRET, dict(ANN, isModerator="yes"), NOW), "sso_malformed")
        self.refused(good, "sso_disabled", secrets=())


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)


class VerifyPropertyTests(SynchronousTestCase):
    """Whatever arrives, :func:`verify_sso` answers a user or an SsoError."""

    @given(st.one_of(st.text(max_size=80), st.integers(), st.none()), st.one_of(st.text(max_size=20), st.integers()))
    def test_garbage(self, payload: Any, timestamp: Any) -> None:
        """Unsigned garbage is always an SsoError, never another exception."""
        with self.assertRaises(SsoError):
            verify_sso((SECRET,), payload, timestamp, "ab" * 32, now_ms=NOW)

    @given(
        st.fixed_dictionaries(
            {"id": st.one_of(st.text(max_size=5), _json), "displayName": st.one_of(st.text(max_size=5), _json)},
            optional={
                "email": _json,
                "avatar": _json,
                "groupIds": _json,
                "isModerator": _json,
                "isAdmin": _json,
            },
        )
    )
    def test_signed_odd_users(self, user: dict[str, Any]) -> None:
        """A correctly signed payload of any shape is a user or an SsoError
        (``sso_malformed``), never another exception."""
        values = signed(SECRET, user, NOW)
        try:
            got = verify_sso((SECRET,), values["payload"], values["timestamp"], values["signature"], now_ms=NOW)
        except SsoError as e:
            self.assertEqual(e.code, "sso_malformed")
            return
        self.assertTrue(got.external_id)
        self.assertTrue(got.display_name.strip())
        self.assertLessEqual(len(got.profile.group_ids), 100)


class SignInTests(SynchronousTestCase):
    """``POST /api/v1/{tenant}/sso`` and ``X-FastEdge-SSO`` on a node."""

    def setUp(self) -> None:
        self.node = NodeHarness(self)
        self.tenant, self.key = self.node.create_tenant("Site A")
        self.set_secret(self.tenant, SECRET)
        self.base = "/api/v1/{}".format(self.tenant)

    def set_secret(self, tenant: str, secret: str | None, overlap_ms: int = 0) -> None:
        self.successResultOf(
            self.node.store.update_tenant_settings(
                tenant, {}, sso_secret=SsoSecretChange(secret, self.now(), overlap_ms), read_preference=PRIMARY
            )
        )

    def now(self) -> int:
        return int(self.node.clock.seconds() * 1000)

    def sessions(self) -> float:
        return self.node.registry.get_sample_value("fastedge_api_sessions_created_total") or 0.0

    def post(self, client: Any, text: str = "hi", **headers: str) -> Any:
        return client.post(
            self.base + "/comments?urlId=u", json_body={"text": text, "displayName": "Anon"}, headers=headers
        )

    def test_sign_in_then_comment(self) -> None:
        """Signing in answers the user and a cookie bound to them; their
        comments are theirs on the next read, with a live token."""
        ann = self.node.client()
        r = ann.post(self.base + "/sso", json_body=signed(SECRET, ANN, self.now()))
        self.assertEqual(r.code, 200, r.body)
        self.assertEqual(r.json["user"]["id"], "u-1")
        self.assertEqual((r.json["user"]["groupIds"], r.json["user"]["isModerator"]), (["staff"], True))
        self.assertIn("liveToken", r.json["viewer"])
        # One session cookie, for the API's path, the embed page's and the media's.
        self.assertEqual(len(r.set_cookies()), 3)
        author = r.json["user"]["authorId"]
        posted = self.post(ann)
        self.assertEqual(posted.json["comment"]["authorId"], author)
        page = ann.get(self.base + "/comments?urlId=u").json
        self.assertEqual((page["comments"][0]["isMine"], page["viewer"]["authorId"]), (True, author))
        # Signing in again (another device) is the same user and author.
        again = self.node.client().post(self.base + "/sso", json_body=signed(SECRET, ANN, self.now()))
        self.assertEqual(again.json["user"]["authorId"], author)

    def test_header(self) -> None:
        """X-FastEdge-SSO on a write signs in (setting the cookie once) and
        writes as the user; the same header on a read personalises it."""
        v = signed(SECRET, ANN, self.now())
        header = "{}.{}.{}".format(v["payload"], v["timestamp"], v["signature"])
        first = self.post(self.node.client(), **{"x-fastedge-sso": header})
        self.assertEqual(first.code, 201, first.body)
        self.assertEqual(len(first.set_cookies()), 3)
        second = self.post(self.node.client(), "again", **{"x-fastedge-sso": header})
        self.assertEqual(second.json["comment"]["authorId"], first.json["comment"]["authorId"])
        page = self.node.client().get(self.base + "/comments?urlId=u", headers={"x-fastedge-sso": header}).json
        self.assertEqual([c["isMine"] for c in page["comments"]], [True, True])
        bad = self.post(self.node.client(), **{"x-fastedge-sso": header[:-1] + ("1" if header.endswith("0") else "0")})
        self.assertEqual((bad.code, bad.json["error"]["code"]), (401, "sso_bad_signature"))

    def test_claim_anonymous_session(self) -> None:
        """With claim: true the anonymous session's comments, likes and blocks
        become the user's, the anonymous cookie stops working, and a second
        claim has nothing to take (one way)."""
        anon = self.node.client()
        mine = self.post(anon, "before sign-in").json["comment"]
        other = self.node.client()
        theirs = self.post(other, "someone else").json["comment"]
        anon.post("{}/comments/{}/like".format(self.base, theirs["id"]))
        anon.post("{}/blocks/{}".format(self.base, theirs["authorId"]))
        old_cookie = anon.cookie
        r = anon.post(self.base + "/sso", json_body=dict(signed(SECRET, ANN, self.now()), claim=True))
        self.assertEqual((r.code, r.json["claimed"]), (200, 1), r.body)
        self.node.clock.advance(5)  # past the page cache
        page = anon.get(self.base + "/comments?urlId=u").json
        by_id = {c["id"]: c for c in page["comments"]}
        self.assertTrue(by_id[mine["id"]]["isMine"])
        self.assertEqual(by_id[mine["id"]]["authorId"], r.json["user"]["authorId"])
        self.assertTrue(by_id[theirs["id"]]["likedByMe"])
        self.assertTrue(by_id[theirs["id"]]["authorBlockedByMe"])
        stale = self.node.client()
        stale.cookie = old_cookie
        refused = self.post(stale, "with the old cookie")
        self.assertEqual((refused.code, refused.json["error"]["code"]), (401, "session_invalid"))
        stale.cookie = old_cookie
        again = stale.post(self.base + "/sso", json_body=dict(signed(SECRET, ANN, self.now()), claim=True))
        self.assertEqual((again.code, again.json["error"]["code"]), (401, "session_invalid"))

    def test_without_claim_nothing_moves(self) -> None:
        """Signing in without claim leaves the anonymous comments alone."""
        anon = self.node.client()
        mine = self.post(anon).json["comment"]
        r = anon.post(self.base + "/sso", json_body=signed(SECRET, ANN, self.now()))
        self.assertEqual(r.json["claimed"], 0)
        self.node.clock.advance(5)
        page = anon.get(self.base + "/comments?urlId=u").json
        self.assertEqual((page["comments"][0]["authorId"], page["comments"][0]["isMine"]), (mine["authorId"], False))

    def test_id_colliding_with_anonymous_author(self) -> None:
        """An SSO id equal to an anonymous author's id is a user of its own:
        it gets a new author id and none of the anonymous author's comments."""
        anon = self.post(self.node.client()).json["comment"]
        r = self.node.client().post(
            self.base + "/sso", json_body=signed(SECRET, {"id": anon["authorId"], "displayName": "Mallory"}, self.now())
        )
        self.assertEqual(r.code, 200)
        self.assertNotEqual(r.json["user"]["authorId"], anon["authorId"])
        self.assertEqual(r.json["claimed"], 0)
        self.node.clock.advance(5)
        page = self.node.client().get(self.base + "/comments?urlId=u").json
        self.assertEqual(page["comments"][0]["authorId"], anon["authorId"])

    def test_bad_sign_ins_change_nothing(self) -> None:
        """Forged, expired, future, truncated, non-JSON, wrong-tenant,
        old-secret and over-limit payloads are each a 4xx JSON error with
        no cookie and no session created."""
        other, _ = self.node.create_tenant("Site B")
        self.set_secret(other, OTHER)
        now = self.now()
        good = signed(SECRET, ANN, now)
        cases = [
            (dict(good, signature="1" * 64), 401, "sso_bad_signature"),
            (signed(SECRET, ANN, now - 3 * 24 * 3600 * 1000), 401, "sso_expired"),
            (signed(SECRET, ANN, now + 3600 * 1000), 401, "sso_from_future"),
            (dict(good, payload=good["payload"][:12]), 401, "sso_bad_signature"),
            (signed(SECRET, None, now, raw=b"\xff\xfe not json"), 400, "sso_malformed"),
            (signed(OTHER, ANN, now), 401, "sso_bad_signature"),
            (signed(SECRET, dict(ANN, groupIds=["g%d" % i for i in range(101)]), now), 400, "sso_malformed"),
            (dict(good, timestamp=-5), 400, "sso_malformed"),
        ]
        before = self.sessions()
        for body, status, code in cases:
            r = self.node.client().post(self.base + "/sso", json_body=body)
            self.assertEqual((r.code, r.json["error"]["code"]), (status, code), body)
            self.assertEqual(r.set_cookies(), [])
        r = self.node.client().post(self.base + "/sso", json_body=dict(good, extra=1))
        self.assertEqual((r.code, r.json["error"]["code"]), (400, "unknown_field"))
        # Rotated away: the old secret's payloads stop once the overlap ends.
        self.set_secret(self.tenant, "c3" * 32, overlap_ms=1000)
        self.node.clock.advance(5)  # past the overlap and the settings cache
        r = self.node.client().post(self.base + "/sso", json_body=signed(SECRET, ANN, self.now()))
        self.assertEqual((r.code, r.json["error"]["code"]), (401, "sso_bad_signature"))
        self.set_secret(self.tenant, None)
        self.node.clock.advance(5)
        r = self.node.client().post(self.base + "/sso", json_body=signed(SECRET, ANN, self.now()))
        self.assertEqual((r.code, r.json["error"]["code"]), (403, "sso_disabled"))
        self.assertEqual(self.sessions(), before)


class DocumentedSignerTests(SynchronousTestCase):
    """The signers printed in docs/sso.md make payloads the node accepts."""

    def block(self, language: str) -> str:
        import os

        path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "sso.md")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        start = text.index("```" + language + "\n") + len(language) + 4
        return text[start : text.index("```", start)]

    def test_python_signer(self) -> None:
        """The Python signer's output verifies as the user it signed."""
        scope: dict[str, Any] = {}
        exec(self.block("python"), scope)  # noqa: S102 - our own documentation
        values = scope["fastedge_sso"](SECRET, ANN)
        user = verify_sso(
            (SECRET,), values["payload"], values["timestamp"], values["signature"], now_ms=values["timestamp"]
        )
        self.assertEqual((user.external_id, user.profile.group_ids), ("u-1", ("staff",)))

    def test_node_signer(self) -> None:
        """The JavaScript signer, run by Node, makes a payload that verifies."""
        import shutil
        import subprocess

        # Debian's nodejs is installed by scripts/run-tests
        # (scripts/debian-packages.txt); missing, the setup is broken.
        node = shutil.which("node")
        self.assertIsNotNone(node, "node is not installed (scripts/debian-packages installs nodejs)")
        assert node is not None
        script = self.block("javascript") + "\nprocess.stdout.write(JSON.stringify(fastedgeSso({}, {})));\n".format(
            json.dumps(SECRET), json.dumps(ANN)
        )
        out = subprocess.run([node, "-e", script], check=True, capture_output=True, timeout=60).stdout
        values = json.loads(out)
        user = verify_sso(
            (SECRET,), values["payload"], values["timestamp"], values["signature"], now_ms=values["timestamp"]
        )
        self.assertEqual((user.external_id, user.display_name), ("u-1", "Ann"))
