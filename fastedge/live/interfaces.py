"""Interfaces of the live subsystem (plugins implement them)."""

from __future__ import annotations

from zope.interface import Interface


class IAccessPolicy(Interface):
    """Decides whether a viewer may subscribe to a thread.

    The default (:class:`fastedge.live.access.PublicThreads`) lets anyone
    subscribe to any thread the public API would show them, which today is
    every thread of the tenant. Threads locked to SSO user groups (a later
    issue) plug in here: the policy sees the tenant (with its settings), the
    thread and the viewer's author id, if the client sent a viewer token.
    """

    def check(tenant, thread, viewer_author_id):  # type: ignore[no-untyped-def]
        """Allow or refuse.

        :returns: ``None`` or a ``Deferred`` firing with ``None`` to allow;
            raise (or fail with) :class:`fastedge.live.access.Refused` to refuse.
        """
