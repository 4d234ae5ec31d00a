"""PageView: one serialization of a page, personalized per reader."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from fastedge.api.pageview import PageView
from fastedge.store.model import Comment, CommentStatus, Thread, ThreadPage, ViewerState


def comment(cid: str, author: str, parent: str | None = None, root: str | None = None) -> Comment:
    return Comment(
        id=cid,
        tenant_id="t",
        thread_id="th",
        parent_id=parent,
        root_id=root or cid,
        author_id=author,
        display_name=author.upper(),
        body_source=cid,
        body_html="<p>{}</p>".format(cid),
        status=CommentStatus.APPROVED,
        created_ms=1,
        edited_ms=None,
        like_count=2,
        flag_count=9,
    )


class PageViewTests(SynchronousTestCase):
    def setUp(self) -> None:
        thread = Thread(id="th", tenant_id="t", url_id="u", title="T", closed=False, created_ms=0, comment_count=4)
        top = [comment("a", "ann"), comment("b", "bob")]
        replies = [
            comment("a1", "bob", "a", "a"),
            comment("a1x", "cid", "a1", "a"),
            comment("orphan", "ann", "gone", "b"),
        ]
        self.view = PageView(ThreadPage(thread=thread, top_level=top, replies=replies, next_cursor="next"))

    def test_anonymous(self) -> None:
        """A stranger's body nests replies, drops orphans, shows no private
        fields (flags) and has every viewer flag false."""
        doc = json.loads(self.view.anonymous)
        self.assertEqual(doc["thread"]["urlId"], "u")
        self.assertEqual(doc["nextCursor"], "next")
        a, b = doc["comments"]
        self.assertEqual([r["id"] for r in a["replies"]], ["a1"])
        self.assertEqual([r["id"] for r in a["replies"][0]["replies"]], ["a1x"])
        self.assertEqual(b["replies"], [])
        self.assertNotIn("flags", a)
        self.assertEqual((a["likedByMe"], a["isMine"], a["authorBlockedByMe"]), (False, False, False))

    def test_personal(self) -> None:
        """A reader sees their likes, their own comments, and blocked authors'
        comments in place but without a body."""
        doc = json.loads(
            self.view.render("ann", ViewerState(liked=frozenset({"b"}), blocked_authors=frozenset({"bob"})))
        )
        a, b = doc["comments"]
        self.assertEqual((a["isMine"], a["likedByMe"], a["html"]), (True, False, "<p>a</p>"))
        self.assertEqual((b["isMine"], b["likedByMe"], b["authorBlockedByMe"], b["html"]), (False, True, True, ""))
        self.assertEqual(a["replies"][0]["html"], "")
        self.assertEqual(a["replies"][0]["replies"][0]["html"], "<p>a1x</p>")

    def test_empty(self) -> None:
        """A thread nobody commented on renders as an empty page."""
        self.assertEqual(json.loads(PageView(None).anonymous), {"thread": None, "comments": [], "nextCursor": None})
