# -*- test-case-name: tests.unit.api.test_pageview -*-
"""A public thread page, serialized once and personalized cheaply.

Every comment's public fields are encoded to JSON once, when the page is
read from the store. The body for a stranger is built once from those
pieces; the body for a reader with a session splices that reader's own
fields (``likedByMe``, ``isMine``, ``authorBlockedByMe``) between the same
pre-encoded pieces, so personalizing a 200-comment page is a join of byte
strings, not a JSON encoding of 200 dictionaries.

Most of a page looks the same to every reader: each top-level comment's
whole subtree is also kept encoded as a stranger sees it, and a reader's
page re-renders only the subtrees holding a comment of theirs, one they
liked, or one by an author they block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..http.jsonbody import encode
from ..store.model import Comment, ThreadPage, ViewerState
from ..store.views import public_comment
from . import common

_TRUE_FALSE = (b"false", b"true")
#: A comment's own fields for a reader who neither wrote, liked nor blocked it.
_PLAIN_FIELDS = b',"likedByMe":false,"isMine":false,"authorBlockedByMe":false,"replies":['


@dataclass(frozen=True)
class _Node:
    comment: Comment
    #: ``{"id":...,"likes":N`` (no closing brace), and the same with an
    #: empty ``html`` for viewers who blocked the author.
    head: bytes
    head_blocked: bytes
    replies: tuple[_Node, ...]
    #: The whole subtree as a stranger sees it.
    plain: bytes
    #: Ids of the comments in the subtree.
    ids: frozenset[str]


def _heads(c: Comment) -> tuple[bytes, bytes]:
    view = public_comment(c)
    head = encode(view)[:-1]
    view["html"] = ""
    return head, encode(view)[:-1]


def _tree(top_level: Sequence[Comment], replies: Sequence[Comment]) -> list[_Node]:
    """Nest replies under parents; a reply whose parent is not on the page
    (pending, removed) is not shown either."""
    children: dict[str, list[Comment]] = {}
    for c in replies:
        children.setdefault(c.parent_id or "", []).append(c)

    def build(c: Comment) -> _Node:
        head, head_blocked = _heads(c)
        replies = tuple(build(r) for r in children.get(c.id, ()))
        plain = head + _PLAIN_FIELDS + b",".join(r.plain for r in replies) + b"]}"
        ids = frozenset([c.id]).union(*(r.ids for r in replies))
        return _Node(c, head, head_blocked, replies, plain, ids)

    return [build(c) for c in top_level]


class PageView:
    """One page of a thread, ready to be sent to any reader."""

    def __init__(self, page: ThreadPage | None, *, position: tuple[str, int] | None = None) -> None:
        self.page = page
        #: The thread's live channel ``(epoch, seq)`` taken before the page
        #: was read: a client following the channel from there misses nothing.
        self.position = position
        #: Other renderings of this page, made once per cached page by the
        #: front ends that need them (the embed page's HTML), keyed by their
        #: owner; they live and die with this entry of the page cache.
        self.derived: dict[str, Any] = {}
        if page is None:
            self._prefix = b'{"thread":null,"comments":['
            self._suffix = b'],"nextCursor":null'
            self._roots: list[_Node] = []
            self.comment_ids: list[str] = []
        else:
            self._prefix = b'{"thread":' + encode(common.thread_view(page.thread)) + b',"comments":['
            self._suffix = b'],"nextCursor":' + encode(page.next_cursor)
            self._roots = _tree(page.top_level, page.replies)
            self.comment_ids = [c.id for c in page.top_level] + [c.id for c in page.replies]
        #: Comment ids on the page by author.
        self._by_author: dict[str, set[str]] = {}
        if page is not None:
            for c in list(page.top_level) + list(page.replies):
                self._by_author.setdefault(c.author_id, set()).add(c.id)
        #: The body for a reader with no session (or none we can see yet).
        self.anonymous = self.render(None, None)

    def render(
        self, viewer_author: str | None, state: ViewerState | None, viewer: Mapping[str, Any] | None = None
    ) -> bytes:
        """The page as ``viewer_author`` (with ``state``) sees it.

        :param viewer: sent as the page's ``viewer`` member (who the reader
            is, and their live-thread token).
        """
        liked = state.liked if state is not None else frozenset()
        blocked = state.blocked_authors if state is not None else frozenset()
        # The comments this reader sees differently from a stranger.
        special: set[str] = set(liked)
        for author in blocked:
            special.update(self._by_author.get(author, ()))
        if viewer_author is not None:
            special.update(self._by_author.get(viewer_author, ()))
        out: list[bytes] = [self._prefix]

        def emit(node: _Node) -> None:
            if node.ids.isdisjoint(special):
                out.append(node.plain)
                return
            c = node.comment
            is_blocked = c.author_id in blocked
            out.append(node.head_blocked if is_blocked else node.head)
            out.append(b',"likedByMe":')
            out.append(_TRUE_FALSE[c.id in liked])
            out.append(b',"isMine":')
            out.append(_TRUE_FALSE[viewer_author is not None and c.author_id == viewer_author])
            out.append(b',"authorBlockedByMe":')
            out.append(_TRUE_FALSE[is_blocked])
            out.append(b',"replies":[')
            for i, reply in enumerate(node.replies):
                if i:
                    out.append(b",")
                emit(reply)
            out.append(b"]}")

        for i, node in enumerate(self._roots):
            if i:
                out.append(b",")
            emit(node)
        out.append(self._suffix)
        if viewer is not None:
            out.append(b',"viewer":')
            out.append(encode(viewer))
        out.append(b"}")
        return b"".join(out)
