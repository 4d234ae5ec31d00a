"""Spam check plugins for tests, found with ``getPlugins(ISpamCheck, tests.plugins)``.

``held-links`` is what an operator might write (docs/spam.md shows it);
``explodes`` and ``never-answers`` are the broken plugins a node must
survive: one raises, one returns a Deferred that never fires.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from zope.interface import provider

from fastedge.spam.interfaces import ISpamCheck
from fastedge.spam.model import HAM, Judgement, Verdict


@provider(IPlugin, ISpamCheck)
class HeldLinks:
    """Holds for a moderator every comment with a link from an author who
    has no approved comment yet."""

    name = "held-links"

    @staticmethod
    def check(comment: Any, history: Any, request: Any) -> Verdict:
        if history.approved == 0 and "http" in comment.text.lower():
            return Verdict(Judgement.PENDING, "link from a new author")
        return HAM


@provider(IPlugin, ISpamCheck)
class Explodes:
    """Raises on every comment."""

    name = "explodes"

    @staticmethod
    def check(comment: Any, history: Any, request: Any) -> Verdict:
        raise RuntimeError("the spam service is down")


@provider(IPlugin, ISpamCheck)
class NeverAnswers:
    """Answers with a Deferred that never fires (and has no canceller)."""

    name = "never-answers"

    @staticmethod
    def check(comment: Any, history: Any, request: Any) -> Deferred[Verdict]:
        return Deferred()


held_links = HeldLinks
explodes = Explodes
never_answers = NeverAnswers
