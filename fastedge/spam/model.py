# -*- test-case-name: tests.unit.spam.test_runner -*-
"""Values a spam check receives and answers: plain and frozen."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..store.model import CommentStatus
from ..store.settings import DEFAULTS, TenantSettings


class Judgement(enum.Enum):
    """What a check says of a comment."""

    #: Not spam: the comment takes the status it would have had anyway
    #: (``approved``, or ``pending`` for a pre-moderated tenant).
    HAM = "ham"
    #: Spam: stored with status ``spam`` (the moderation queue ``spam``);
    #: never public, never live.
    SPAM = "spam"
    #: Unsure: stored with status ``pending`` for a moderator (the
    #: moderation queue ``pending``).
    PENDING = "pending"


@dataclass(frozen=True)
class Verdict:
    """A check's answer.

    :ivar reason: why, for moderators' logs and metrics (never shown to
        the poster); short, stable text.
    """

    judgement: Judgement
    reason: str = ""

    def status(self, otherwise: CommentStatus) -> CommentStatus:
        """The status a comment with this verdict is written with.

        :param otherwise: the status it gets when ham.
        """
        if self.judgement is Judgement.SPAM:
            return CommentStatus.SPAM
        if self.judgement is Judgement.PENDING:
            return CommentStatus.PENDING
        return otherwise


HAM = Verdict(Judgement.HAM)


@dataclass(frozen=True)
class Candidate:
    """A comment about to be written, as a check sees it.

    :ivar text: the markdown source the commenter sent (stripped).
    :ivar created_ms: the time it is written with.
    """

    tenant_id: str
    thread_id: str
    url_id: str
    author_id: str
    display_name: str
    text: str
    created_ms: int
    parent_id: str | None = None
    #: The author is new: the comment's own write creates them (a first
    #: post's session), so they have no history yet.
    new_author: bool = False


@dataclass(frozen=True)
class RequestFacts:
    """What the request that posts a comment tells.

    :ivar address_hash: the client address as the tenant's keyed hash
        (the same value address bans use; the address itself is never given).
    :ivar user_agent: the ``User-Agent`` header, ``""`` when absent.
    :ivar settings: the tenant's settings (``blockedWords``, ...).
    """

    tenant_id: str
    address_hash: str
    user_agent: str = ""
    settings: TenantSettings = DEFAULTS


@dataclass(frozen=True)
class Decision:
    """The checks' combined answer for one comment.

    :ivar check: the check whose answer won (``""`` when all said ham or
        spam checks are off).
    """

    verdict: Verdict
    check: str = ""
