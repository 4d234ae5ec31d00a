"""The store contract of the writes made in one round trip: ``post_comment``
(session, user, thread and comment in one write), ``change_comment``, and
the ``Expect`` checks a write makes of what its caller read from a replica.

Mixed into every backend's contract tests beside
:class:`tests.unit.store.contract.StoreContractMixin`: whatever a backend does
to save round trips, a failed write applies nothing.
"""

from __future__ import annotations

from typing import Any

from fastedge.store.errors import InvalidReference, NotFound, Stale, ThreadClosed
from fastedge.store.model import (
    CommentStatus,
    Expect,
    NewPost,
    NewSession,
    ReadPreference,
    SessionPoster,
    UserPoster,
)

from .contract import StoreContractMixin

PRIMARY = ReadPreference.PRIMARY
URL = "https://example.com/posted"


class WriteContractMixin(StoreContractMixin):
    """One-write posts, changes and expectations."""

    def new_post(self, tenant_id: str, poster: Any, **kwargs: Any) -> NewPost:
        fields: dict[str, Any] = dict(
            tenant_id=tenant_id,
            url_id=URL,
            poster=poster,
            display_name="Ann",
            body_source="Hi",
            body_html="<p>Hi</p>",
            status=CommentStatus.APPROVED,
            created_ms=self.tick(),
        )
        fields.update(kwargs)
        return NewPost(**fields)

    def post_fails(self, new: NewPost, error: type[Exception]) -> None:
        """The post fails with ``error`` and leaves no thread behind."""
        self.failureResultOf(self.store.post_comment(new, read_preference=PRIMARY), error)
        self.read_fails(NotFound, self.store.get_thread, new.tenant_id, new.url_id)

    def test_post_as_a_new_session(self) -> None:
        """A post as a new session creates the session, the thread (with the
        title) and the comment, in one write."""
        tenant = self.make_tenant()
        posted = self.write(
            self.store.post_comment(self.new_post(tenant.id, NewSession(), title="Page"), read_preference=PRIMARY)
        )
        assert posted.session is not None
        self.assertTrue(posted.thread_created)
        self.assertEqual(posted.thread.title, "Page")
        self.assertEqual(posted.thread.comment_count, 1)
        self.assertEqual(posted.comment.author_id, posted.session.author_id)
        self.assertEqual(posted.comment.thread_id, posted.thread.id)
        self.assertEqual(posted.comment.root_id, posted.comment.id)
        session = self.read(self.store.get_anonymous_session, tenant.id, posted.session.id)
        self.assertEqual(session, posted.session)
        self.assertEqual(self.read(self.store.get_comment, tenant.id, posted.comment.id), posted.comment)

    def test_post_as_a_session_to_an_existing_thread(self) -> None:
        """A post as an existing session is its author's; an existing thread
        keeps its title and counts the comment."""
        tenant = self.make_tenant()
        session = self.make_session(tenant.id)
        thread = self.make_thread(tenant.id, URL, title="Kept")
        posted = self.write(
            self.store.post_comment(
                self.new_post(tenant.id, SessionPoster(session.id), title="Other"), read_preference=PRIMARY
            )
        )
        self.assertFalse(posted.thread_created)
        self.assertIsNone(posted.session)
        self.assertEqual(posted.thread.id, thread.id)
        self.assertEqual(posted.thread.title, "Kept")
        self.assertEqual(posted.comment.author_id, session.author_id)
        self.assertEqual(self.comment_count(tenant.id, thread.id), 1)

    def test_post_as_a_user(self) -> None:
        """A post as the tenant's user creates the user once and renames it;
        with ``retitle`` a given title replaces the thread's."""
        tenant = self.make_tenant()
        first = self.write(
            self.store.post_comment(self.new_post(tenant.id, UserPoster("u1", "Ann")), read_preference=PRIMARY)
        )
        second = self.write(
            self.store.post_comment(
                self.new_post(tenant.id, UserPoster("u1", "Annie"), title="New", retitle=True),
                read_preference=PRIMARY,
            )
        )
        self.assertEqual(first.comment.author_id, second.comment.author_id)
        user = self.read(self.store.get_user_by_author, tenant.id, first.comment.author_id)
        self.assertEqual((user.external_id, user.display_name), ("u1", "Annie"))
        self.assertEqual(second.thread.title, "New")
        self.assertEqual(second.thread.comment_count, 2)

    def test_pending_post_is_not_counted(self) -> None:
        """A pending comment does not count on its thread."""
        tenant = self.make_tenant()
        posted = self.write(
            self.store.post_comment(
                self.new_post(tenant.id, NewSession(), status=CommentStatus.PENDING), read_preference=PRIMARY
            )
        )
        self.assertEqual(posted.thread.comment_count, 0)

    def test_failed_posts_apply_nothing(self) -> None:
        """An unknown tenant, session or parent, a parent in another thread,
        or a closed thread (``open_only``) fail the post, and neither the
        session nor the thread is left behind."""
        tenant = self.make_tenant()
        self.failureResultOf(
            self.store.post_comment(self.new_post("UNKNOWNTENANT000", NewSession()), read_preference=PRIMARY),
            NotFound,
        )
        self.post_fails(self.new_post(tenant.id, SessionPoster("UNKNOWNSESSION00")), NotFound)
        self.post_fails(self.new_post(tenant.id, NewSession(), parent_id="UNKNOWNPARENT000"), NotFound)
        elsewhere = self.make_thread(tenant.id, "https://example.com/other")
        parent = self.post(tenant.id, elsewhere.id, self.make_author(tenant.id))
        self.post_fails(self.new_post(tenant.id, NewSession(), parent_id=parent.id), InvalidReference)
        self.make_thread(tenant.id, URL, closed=True)
        failure = self.failureResultOf(
            self.store.post_comment(self.new_post(tenant.id, NewSession(), open_only=True), read_preference=PRIMARY),
            ThreadClosed,
        )
        self.assertIsInstance(failure.value, ThreadClosed)
        thread = self.read(self.store.get_thread, tenant.id, URL)
        self.assertEqual(thread.comment_count, 0)
        # Only the sessions made above exist: none of the failed posts made one.
        posted = self.write(self.store.post_comment(self.new_post(tenant.id, NewSession()), read_preference=PRIMARY))
        self.assertEqual(posted.thread.comment_count, 1)

    def test_reply(self) -> None:
        """A reply hangs under its parent's root."""
        tenant = self.make_tenant()
        top = self.write(self.store.post_comment(self.new_post(tenant.id, NewSession()), read_preference=PRIMARY))
        reply = self.write(
            self.store.post_comment(
                self.new_post(tenant.id, NewSession(), parent_id=top.comment.id), read_preference=PRIMARY
            )
        )
        again = self.write(
            self.store.post_comment(
                self.new_post(tenant.id, NewSession(), parent_id=reply.comment.id), read_preference=PRIMARY
            )
        )
        self.assertEqual(reply.comment.parent_id, top.comment.id)
        self.assertEqual(again.comment.root_id, top.comment.id)

    def test_expected_access_rules(self) -> None:
        """A post that expected other access rules than the thread has now
        fails with Stale and applies nothing; the right expectation passes,
        and so does "no rules" for a thread without any."""
        tenant = self.make_tenant()
        session = self.make_session(tenant.id)
        self.make_thread(tenant.id, URL, locked_groups=["staff"])

        def post(expect: Expect) -> Any:
            return self.store.post_comment(
                self.new_post(tenant.id, SessionPoster(session.id), expect=expect), read_preference=PRIMARY
            )

        self.failureResultOf(post(Expect(thread_url=URL)), Stale)
        self.failureResultOf(post(Expect(thread_url=URL, locked_groups=("staff",), require_sign_in=True)), Stale)
        self.assertEqual(self.read(self.store.get_thread, tenant.id, URL).comment_count, 0)
        self.write(post(Expect(thread_url=URL, locked_groups=("staff",), session_id=session.id)))
        fresh = "https://example.com/fresh"
        self.write(
            self.store.post_comment(
                self.new_post(tenant.id, NewSession(), url_id=fresh, expect=Expect(thread_url=fresh)),
                read_preference=PRIMARY,
            )
        )

    def test_expected_session_and_comment(self) -> None:
        """A like that expected a session that is gone, or a comment that is
        no longer approved, fails and applies nothing."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comment = self.post(tenant.id, thread.id, author)
        voter = self.make_session(tenant.id)

        def like(expect: Expect) -> Any:
            return self.store.add_like(
                tenant.id, comment.id, voter.author_id, created_ms=self.tick(), read_preference=PRIMARY, expect=expect
            )

        failure = self.failureResultOf(like(Expect(session_id="UNKNOWNSESSION00")), NotFound)
        self.assertEqual(failure.value.what, "session")
        self.set_status(tenant.id, comment.id, CommentStatus.PENDING)
        failure = self.failureResultOf(like(Expect(approved_comment=comment.id)), NotFound)
        self.assertEqual(failure.value.what, "comment")
        self.assertEqual(self.read(self.store.get_comment, tenant.id, comment.id).like_count, 0)
        self.set_status(tenant.id, comment.id, CommentStatus.APPROVED)
        self.assertEqual(self.write(like(Expect(session_id=voter.id, approved_comment=comment.id))), 1)
        failure = self.failureResultOf(
            self.store.add_block(
                tenant.id,
                voter.author_id,
                author,
                created_ms=self.tick(),
                read_preference=PRIMARY,
                expect=Expect(session_id="UNKNOWNSESSION00"),
            ),
            NotFound,
        )
        self.assertEqual(failure.value.what, "session")

    def test_write_creating_its_session(self) -> None:
        """A like, flag or block given a new session creates it in the same
        write; a refused one creates nothing."""
        tenant = self.make_tenant()
        author = self.make_author(tenant.id)
        thread = self.make_thread(tenant.id)
        comment = self.post(tenant.id, thread.id, author)
        session = self.store.new_anonymous_session(tenant.id, created_ms=self.tick())
        self.read_fails(NotFound, self.store.get_anonymous_session, tenant.id, session.id)
        self.failureResultOf(
            self.store.add_like(
                tenant.id,
                "UNKNOWNCOMMENT00",
                session.author_id,
                created_ms=self.tick(),
                read_preference=PRIMARY,
                new_session=session,
            ),
            NotFound,
        )
        self.read_fails(NotFound, self.store.get_anonymous_session, tenant.id, session.id)
        likes = self.write(
            self.store.add_like(
                tenant.id,
                comment.id,
                session.author_id,
                created_ms=self.tick(),
                read_preference=PRIMARY,
                new_session=session,
            )
        )
        self.assertEqual(likes, 1)
        self.assertEqual(self.read(self.store.get_anonymous_session, tenant.id, session.id), session)
        for make in (
            lambda new: self.store.add_flag(
                tenant.id, comment.id, new.author_id, created_ms=self.tick(), read_preference=PRIMARY, new_session=new
            ),
            lambda new: self.store.add_block(
                tenant.id, new.author_id, author, created_ms=self.tick(), read_preference=PRIMARY, new_session=new
            ),
        ):
            new = self.store.new_anonymous_session(tenant.id, created_ms=self.tick())
            self.write(make(new))
            self.assertEqual(self.read(self.store.get_anonymous_session, tenant.id, new.id), new)

    def test_change_comment(self) -> None:
        """change_comment answers the comment before and after the write, and
        keeps the thread's approved count."""
        tenant = self.make_tenant()
        thread = self.make_thread(tenant.id)
        comment = self.post(tenant.id, thread.id, self.make_author(tenant.id))
        change = self.write(
            self.store.change_comment(
                tenant.id,
                comment.id,
                edited_ms=self.tick(),
                read_preference=PRIMARY,
                body=("New", "<p>New</p>"),
                status=CommentStatus.REMOVED,
            )
        )
        self.assertEqual(change.before, comment)
        self.assertEqual((change.after.body_source, change.after.status), ("New", CommentStatus.REMOVED))
        self.assertEqual(self.comment_count(tenant.id, thread.id), 0)
        change = self.write(
            self.store.change_comment(
                tenant.id, comment.id, edited_ms=self.tick(), read_preference=PRIMARY, status=CommentStatus.APPROVED
            )
        )
        self.assertEqual(change.before.status, CommentStatus.REMOVED)
        self.assertEqual(self.comment_count(tenant.id, thread.id), 1)
        self.failureResultOf(
            self.store.change_comment(tenant.id, "UNKNOWNCOMMENT00", edited_ms=self.tick(), read_preference=PRIMARY),
            NotFound,
        )
