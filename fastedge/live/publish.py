# -*- test-case-name: tests.unit.api.test_live_events -*-
"""What the comment API tells live threads after a write succeeded.

The API calls these after the store confirmed the write, never before,
and never for what readers may not see (a pending comment is published
when it is approved). Events carry exactly the public view of a comment
that the read API shows.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from twisted.logger import Logger

from ..store.model import Comment, CommentStatus
from ..store.views import public_comment
from .access import ChannelResolver
from .hub import Event, Hub

_log = Logger()
_F = TypeVar("_F", bound=Callable[..., None])


def _guarded(fn: _F) -> _F:
    """The write already succeeded: a failure to announce it is logged, never
    turned into an error answer (the client would retry a done write)."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            _log.failure("live: publishing {what} failed", what=fn.__name__)

    return run  # type: ignore[return-value]


CREATED = "comment.created"
EDITED = "comment.edited"
REMOVED = "comment.removed"
APPROVED = "comment.approved"
LIKES = "comment.likes"


def _no_access_sink(tenant_id: str, url_id: str | None) -> None:
    """Nobody re-checks subscriptions (a publisher without live connections)."""
    return None


class LivePublisher:
    """Turns comment changes into channel events on the node's hub.

    :param node_id: recorded as each event's origin.
    :ivar sink: where events go: the hub's entry point, or the mesh relay,
        which sends a write to its channel's sequencer (``fastedge.live.relay``).
    :ivar block_sink: where block changes go (likewise: the hub, or the
        relay, which tells the deployment's other nodes too).
    """

    def __init__(
        self,
        hub: Hub,
        *,
        resolver: ChannelResolver | None,
        node_id: str,
        sink: Callable[[Event], object] | None = None,
        block_sink: Callable[[str, str, str, bool], object] | None = None,
        access_sink: Callable[[str, str | None], object] | None = None,
    ) -> None:
        self._hub = hub
        self._resolver = resolver
        self._node = node_id
        self.sink: Callable[[Event], object] = sink if sink is not None else hub.publish
        self.block_sink: Callable[[str, str, str, bool], object] = (
            block_sink if block_sink is not None else self._block_here
        )
        #: Told when a tenant's (``url_id`` ``None``) or a thread's access
        #: rules changed here: re-checks the open subscriptions
        #: (:meth:`fastedge.live.frontend.Live.recheck`; wired by the service).
        self.access_sink: Callable[[str, str | None], object] = (
            access_sink if access_sink is not None else _no_access_sink
        )

    def _block_here(self, tenant_id: str, viewer_author_id: str, author_id: str, blocked: bool) -> None:
        self._hub.set_blocked((tenant_id, viewer_author_id), author_id, blocked)

    def _publish(
        self,
        tenant_id: str,
        thread_id: str,
        kind: str,
        data: dict[str, object],
        author: str | None,
    ) -> None:
        self.sink(Event((tenant_id, thread_id), kind, data, author_id=author, origin=self._node))

    def position(self, tenant_id: str, thread_id: str) -> tuple[str, int] | None:
        """The thread's channel position ``(epoch, seq)`` on this node, for a
        page about to be read (the embed page follows the channel from it),
        or ``None`` when this hub holds no state for the channel.

        Never creates state: on a node that is not the channel's sequencer
        (``fastedge.live.relay``) a made-up local epoch would be replaced by
        the sequencer's at the first subscribe, and the page told to reload.
        A page without a position subscribes with ``since = 0`` and no epoch:
        the channel's events since it came to be here, which all follow the
        read (docs/embedding.md).
        """
        stamp = self._hub.position((tenant_id, thread_id))
        return None if stamp is None else (stamp.epoch, stamp.seq)

    @_guarded
    def created(self, comment: Comment) -> None:
        """A comment was posted (published only if it is approved)."""
        if comment.status is CommentStatus.APPROVED:
            self._publish(
                comment.tenant_id,
                comment.thread_id,
                CREATED,
                {"comment": public_comment(comment)},
                comment.author_id,
            )

    @_guarded
    def changed(self, before: Comment, after: Comment) -> None:
        """A comment's body or status changed (by its tenant or a moderator)."""
        was, now = (
            before.status is CommentStatus.APPROVED,
            after.status is CommentStatus.APPROVED,
        )
        if was and now:
            if before.body_html != after.body_html or before.edited_ms != after.edited_ms:
                self._publish(
                    after.tenant_id,
                    after.thread_id,
                    EDITED,
                    {"comment": public_comment(after)},
                    after.author_id,
                )
        elif now:
            self._publish(
                after.tenant_id,
                after.thread_id,
                APPROVED,
                {"comment": public_comment(after)},
                after.author_id,
            )
        elif was:
            self.removed(after, reason=after.status.value)

    @_guarded
    def removed(self, comment: Comment, *, reason: str = "deleted") -> None:
        """A public comment left the thread: deleted, or moderated away.
        Its replies go with it (the read API hides replies of hidden parents)."""
        self._publish(
            comment.tenant_id,
            comment.thread_id,
            REMOVED,
            {"commentId": comment.id, "parentId": comment.parent_id, "reason": reason},
            None,
        )

    @_guarded
    def likes(self, comment: Comment, likes: int) -> None:
        """A public comment's like count changed."""
        self._publish(
            comment.tenant_id,
            comment.thread_id,
            LIKES,
            {"commentId": comment.id, "likes": likes},
            None,
        )

    @_guarded
    def thread_changed(self, tenant_id: str, url_id: str) -> None:
        """A thread was created or deleted: forget cached subscribe lookups."""
        if self._resolver is not None:
            self._resolver.forget(tenant_id, url_id)

    @_guarded
    def access_changed(self, tenant_id: str, url_id: str | None = None) -> None:
        """A thread's lock (``url_id``) or the tenant's ``defaultGroups``
        (``None``) changed through the tenant API: forget cached lookups and
        close the open subscriptions the new rules refuse (on this node;
        other nodes find out in their periodic re-check, docs/live-protocol.md)."""
        if self._resolver is not None:
            if url_id is None:
                self._resolver.forget_tenant(tenant_id)
            else:
                self._resolver.forget(tenant_id, url_id)
        self.access_sink(tenant_id, url_id)

    @_guarded
    def block_changed(self, tenant_id: str, viewer_author_id: str, author_id: str, blocked: bool) -> None:
        """A viewer blocked or unblocked an author: their open subscriptions follow."""
        self.block_sink(tenant_id, viewer_author_id, author_id, blocked)
