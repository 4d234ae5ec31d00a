"""PageView: one serialization of a page, personalized per reader."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
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


class PersonalRenderingProperties(SynchronousTestCase):
    """Whatever the tree and the reader, the spliced body is what encoding
    every comment for that reader would give (only subtrees that differ
    from a stranger's are re-rendered)."""

    @given(data=st.data())
    def test_matches_first_principles(self, data: st.DataObject) -> None:
        authors = ["ann", "bob", "cid", "dee"]
        n = data.draw(st.integers(1, 12))
        comments: list[Comment] = []
        for i in range(n):
            parent = data.draw(st.sampled_from([None] + [c.id for c in comments]))
            root = None if parent is None else next(c.root_id for c in comments if c.id == parent)
            comments.append(comment("c{}".format(i), data.draw(st.sampled_from(authors)), parent, root))
        thread = Thread(id="th", tenant_id="t", url_id="u", title="T", closed=False, created_ms=0, comment_count=n)
        top = [c for c in comments if c.parent_id is None]
        replies = [c for c in comments if c.parent_id is not None]
        view = PageView(ThreadPage(thread=thread, top_level=top, replies=replies, next_cursor=None))
        ids = [c.id for c in comments]
        viewer = data.draw(st.sampled_from([None] + authors))
        state = ViewerState(
            liked=frozenset(data.draw(st.sets(st.sampled_from(ids)))),
            blocked_authors=frozenset(data.draw(st.sets(st.sampled_from(authors)))),
        )
        doc = json.loads(view.render(viewer, state))
        by_id = {c.id: c for c in comments}

        def check(node: dict[str, object]) -> None:
            c = by_id[str(node["id"])]
            blocked = c.author_id in state.blocked_authors
            self.assertEqual(node["likedByMe"], c.id in state.liked)
            self.assertEqual(node["isMine"], viewer is not None and c.author_id == viewer)
            self.assertEqual(node["authorBlockedByMe"], blocked)
            self.assertEqual(node["html"], "" if blocked else c.body_html)
            children = [r.id for r in replies if r.parent_id == c.id]
            self.assertEqual([r["id"] for r in node["replies"]], children)  # type: ignore[union-attr]
            for r in node["replies"]:  # type: ignore[union-attr]
                check(r)

        self.assertEqual([c["id"] for c in doc["comments"]], [c.id for c in top])
        for node in doc["comments"]:
            check(node)
        self.assertEqual(view.render(None, None), view.anonymous)
