"""The spam check interface ops extend with Twisted plugins."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class ISpamCheck(Interface):
    """Judges one new comment: ham, spam or pending, with a reason.

    The built-in check is ``heuristic``
    (:class:`fastedge.spam.heuristic.HeuristicCheck`). Ops add checks with
    a Twisted plugin: a module in a ``twisted/plugins/`` directory on the
    path whose module-level object provides this interface and
    ``twisted.plugin.IPlugin``, named in ``spam.checks`` (in the order the
    checks are asked). See docs/spam.md for an example.

    Checks are asked in order and the first answer other than ham wins, so
    a check after it is not asked. A check that raises, answers something
    other than a :class:`~fastedge.spam.model.Verdict`, or has not answered
    after ``spam.timeout_seconds`` counts as ham: it is logged and counted,
    and the comment goes on. A check that waits on the network should
    return a Deferred (with a canceller, so a timeout can stop its work)
    and never block the reactor.
    """

    name = Attribute("The name ``spam.checks`` lists this check by (also its metric label).")

    def check(comment, history, request):  # type: ignore[no-untyped-def]
        """Judge ``comment``.

        :param comment: the comment about to be written
            (:class:`fastedge.spam.model.Candidate`).
        :param history: what its author did before
            (:class:`fastedge.store.model.AuthorHistory`: age, counts by
            status, recent comments of the author and of the thread).
        :param request: the request's facts
            (:class:`fastedge.spam.model.RequestFacts`: tenant, hashed
            client address, user agent, the tenant's settings).
        :returns: a :class:`fastedge.spam.model.Verdict`, or a Deferred
            firing with one.
        """
