# -*- test-case-name: tests.unit.spam.test_heuristic -*-
"""The built-in spam check: a documented score over a few signals.

Pure: no reactor, no store, no I/O; the runner hands it the comment, the
author's history and the request's facts. Each signal adds points (or, for
a trusted author, takes some away); the sum decides:

- ``score >= SPAM_SCORE``: spam;
- ``score >= PENDING_SCORE``: pending (a moderator decides);
- else ham.

A word of the tenant's ``blockedWords`` makes a comment spam whatever the
score. docs/spam.md explains every signal with its points; the constants
below are the numbers it quotes, and tests/unit/spam/test_corpus.py
measures them on a labelled set of comments.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from zope.interface import implementer

from ..store.model import AuthorHistory, RecentComment
from .interfaces import ISpamCheck
from .model import HAM, Candidate, Judgement, RequestFacts, Verdict
from .vocabulary import ABUSED_TLDS, HIDING_HOSTS, normalise, phrases_in, praises, promises_money

#: A comment scoring this much is spam.
SPAM_SCORE = 6
#: A comment scoring this much (and less than :data:`SPAM_SCORE`) waits
#: for a moderator.
PENDING_SCORE = 4

#: Points for the number of links: 1, 2, 3, then +2 for every further one.
LINK_POINTS = (0, 1, 2, 4)
#: Extra points for each link beyond the last of :data:`LINK_POINTS`.
LINK_POINTS_EACH_MORE = 2
#: A comment with links whose other words are fewer than this is "mostly
#: links" ...
FEW_WORDS = 6
#: ... as is one whose links make up more than this share of its characters.
LINK_SHARE = 0.7
#: Points for a comment that is mostly links.
MOSTLY_LINKS_POINTS = 1
#: Points for links to hosts spam leans on (abused top-level domains,
#: shorteners; :mod:`fastedge.spam.vocabulary`), once.
ABUSED_HOST_POINTS = 2
#: Points for links (or an email address) in the display name.
LINKED_NAME_POINTS = 3
#: Points for contact bait in the text: an email address, a long phone
#: number, or a WhatsApp/Telegram handle.
CONTACT_POINTS = 2
#: Points for each phrase of spam's vocabulary, up to :data:`PHRASES_MAX`.
PHRASE_POINTS = 1
PHRASES_MAX = 4
#: Points for money promised per unit of time ("$500 a day").
MONEY_POINTS = 2
#: Points for shouting: "!!!", or mostly capital letters.
SHOUTING_POINTS = 1
#: Points for generic praise ("great article, very informative") in a
#: comment with a link: the oldest trick of link spam.
PRAISE_POINTS = 1

#: Bodies shorter than this (normalised) are never "repeated": everyone
#: writes "Thanks!" and "+1".
REPEAT_MIN_CHARS = 24
#: Two bodies this similar (word-trigram Jaccard) count as the same.
NEAR_DUPLICATE = 0.8
#: Only the first this many characters, and of them the first this many
#: words, of bodies are compared (bounded work per post, whatever the
#: history holds).
COMPARED_CHARS = 2000
COMPARED_WORDS = 300
#: Points when the author already posted the same body recently ...
REPEAT_OWN_POINTS = 3
#: ... and when they did so twice or more.
REPEAT_OWN_MANY_POINTS = 5
#: Points when other authors posted the same body in the thread recently.
REPEAT_THREAD_POINTS = 4

#: Posting rate: comments of the author in the last minute and the last
#: ten minutes (this one included) past which points are added.
BURST_MINUTE = 4
BURST_TEN_MINUTES = 10
BURST_POINTS = 2

#: An author younger than this with no approved comment is "new".
NEW_AUTHOR_MS = 24 * 3600 * 1000
#: Points for a new author's comment with a link or contact bait in it
#: (or in their name): who has not posted before is not yet trusted.
NEW_AUTHOR_LINK_POINTS = 2
#: An author with at least this many approved comments, none spam, older
#: than :data:`NEW_AUTHOR_MS`, is trusted ...
TRUSTED_APPROVED = 3
#: ... and gets these points taken away.
TRUSTED_POINTS = -3
#: Points for earlier spam of the author: one spam comment, and three or more.
PREVIOUS_SPAM_POINTS = 2
PREVIOUS_SPAM_MANY_POINTS = 4

# Links: an explicit scheme, "www.", or a bare domain name with a path or a
# common top-level domain (spam often leaves out the scheme so that the
# link is not rendered, yet readers can copy it).
_TLDS = (
    "com|net|org|info|biz|io|co|me|ru|cn|xyz|top|site|online|shop|store|club|live|app|pro|vip|win|bet|"
    "casino|loan|click|link|today|icu|buzz|fun|space|website|tk|ml|ga|cf|gq|pw|cc|in|uk|de|fr|es|it|nl|pl|br|"
    "us|eu|ly|gl|to|tv|ws"
)
# Every repetition is bounded: the text is the commenter's, and a pattern
# that backtracks without bound would let one comment hold the reactor for
# seconds (tests/unit/spam/test_heuristic.py feeds the worst shapes).
_LABEL = r"[a-z0-9][a-z0-9-]{0,62}"
_LINK = re.compile(
    r"(?:(?:https?|ftp)://|www\.)[^\s<>()\[\]]{1,2048}"
    r"|\b" + _LABEL + r"(?:\." + _LABEL + r"){0,5}"
    r"\.(?:" + _TLDS + r")\b(?:/[^\s<>()\[\]]{0,2048})?",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,6}\b")
_PHONE = re.compile(r"(?:\+|\b)(?:\d[\s().-]?){9,15}\d\b")
_MESSENGER = re.compile(
    r"\b(?:whats\s?app|telegram|signal|wechat|viber|kik|snapchat)\b|微信|ライン|カカオ|카톡|카카오톡|واتساب|ватсап|телеграм",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")
_SHOUT = re.compile(r"[!?]{3,}")
_HOST = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?([^/?#:\s]+)", re.IGNORECASE)


def host_of(link: str) -> str:
    """The host name of a link as :func:`links` finds them (lower case)."""
    match = _HOST.match(link)
    return match.group(1).lower().rstrip(".") if match else ""


def _abused(host: str) -> bool:
    return host in HIDING_HOSTS or host.rsplit(".", 1)[-1] in ABUSED_TLDS


def _shouting(text: str) -> bool:
    letters = [ch for ch in text if ch.isalpha() and ch.lower() != ch.upper()]
    capitals = sum(1 for ch in letters if ch.isupper())
    return bool(_SHOUT.search(text)) or (len(letters) >= 20 and capitals / len(letters) > 0.6)


def links(text: str) -> list[str]:
    """The links of a comment (markdown ``[label](url)`` counts once: its URL)."""
    # The domain of an email address is contact bait, not a link.
    without_emails = _EMAIL.sub(" ", text) if "@" in text else text
    return [m.group(0).rstrip(".,;:!?'\"") for m in _LINK.finditer(without_emails)]


def _shingles(words: Sequence[str]) -> frozenset[tuple[str, ...]]:
    if len(words) < 3:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i : i + 3]) for i in range(len(words) - 2))


def similar(a: str, b: str) -> bool:
    """Whether two normalised bodies are the same or nearly (word trigrams
    of their first :data:`COMPARED_WORDS` words)."""
    return a == b or _near(_shingles(a.split()[:COMPARED_WORDS]), b)


def _near(mine: frozenset[tuple[str, ...]], other: str) -> bool:
    words = other.split()[:COMPARED_WORDS]
    # Jaccard of at least NEAR_DUPLICATE needs sizes at least that close.
    if not mine or not words or min(len(mine), len(words)) < NEAR_DUPLICATE * max(len(mine), len(words)) - 2:
        return False
    theirs = _shingles(words)
    return len(mine & theirs) / len(mine | theirs) >= NEAR_DUPLICATE


def blocked_word(text: str, words: Iterable[str]) -> str | None:
    """The first of ``words`` that ``text`` contains as whole words
    (normalised, so case, compatibility forms and punctuation between
    words do not matter, and letters spaced out are read together), or
    ``None``."""
    plain = normalise(text)
    bodies = (" " + plain + " ", " " + _join_letters(plain) + " ")
    for word in words:
        wanted = _normalised_word(word)
        if wanted and any(" " + wanted + " " in body for body in bodies):
            return word
    return None


@functools.lru_cache(maxsize=8192)
def _normalised_word(word: str) -> str:
    # A tenant's list is read for every post; its words change rarely.
    return normalise(word)


def _join_letters(normalised: str) -> str:
    """Runs of single letters joined into one word: ``c i a l i s``
    (written ``c-i-a-l-i-s`` or ``v.i.a.g.r.a``) becomes ``cialis``."""
    out: list[str] = []
    run: list[str] = []
    for word in normalised.split():
        if len(word) == 1:
            run.append(word)
            continue
        if run:
            out.append("".join(run))
            run = []
        out.append(word)
    if run:
        out.append("".join(run))
    return " ".join(out)


@dataclass
class Score:
    """A comment's points, signal by signal (the reason names the largest)."""

    points: dict[str, int] = field(default_factory=dict)

    def add(self, signal: str, points: int) -> None:
        """Add ``points`` for ``signal`` (nothing for 0)."""
        if points:
            self.points[signal] = self.points.get(signal, 0) + points

    @property
    def total(self) -> int:
        """The sum the verdict is decided on."""
        return sum(self.points.values())

    def reason(self) -> str:
        """``score N: signal +p, ...``, the largest first (for logs)."""
        shown = sorted(((p, s) for s, p in self.points.items() if p > 0), reverse=True)
        return "score {}: {}".format(self.total, ", ".join("{} +{}".format(s, p) for p, s in shown))


def _repeats(body: str, others: Iterable[RecentComment]) -> int:
    mine = _shingles(body.split()[:COMPARED_WORDS])
    count = 0
    for other in others:
        theirs = normalise(other.body_source[:COMPARED_CHARS])
        if theirs == body or _near(mine, theirs):
            count += 1
    return count


def score(comment: Candidate, history: AuthorHistory, request: RequestFacts) -> Score:
    """Every signal's points for ``comment`` (see the module docstring)."""
    out = Score()
    text = comment.text
    found = links(text)
    count = len(found)
    if count < len(LINK_POINTS):
        out.add("links", LINK_POINTS[count])
    else:
        out.add("links", LINK_POINTS[-1] + LINK_POINTS_EACH_MORE * (count - len(LINK_POINTS) + 1))
    rest = text
    for link in found:
        rest = rest.replace(link, " ")
    if count:
        words = len(_WORD.findall(rest))
        share = sum(len(link) for link in found) / max(1, len("".join(text.split())))
        if words < FEW_WORDS or share > LINK_SHARE:
            out.add("mostly links", MOSTLY_LINKS_POINTS)
    named = links(comment.display_name)
    if any(_abused(host_of(link)) for link in found + named):
        out.add("abused link host", ABUSED_HOST_POINTS)
    if named or _EMAIL.search(comment.display_name):
        out.add("link in name", LINKED_NAME_POINTS)
    contact = bool(_EMAIL.search(text) or _PHONE.search(text) or _MESSENGER.search(text))
    if contact:
        out.add("contact", CONTACT_POINTS)
    out.add("spam phrases", min(PHRASES_MAX, PHRASE_POINTS * len(phrases_in(rest + " " + comment.display_name))))
    if promises_money(text):
        out.add("money promised", MONEY_POINTS)
    if _shouting(text):
        out.add("shouting", SHOUTING_POINTS)
    if (found or named) and praises(rest):
        out.add("praise with link", PRAISE_POINTS)

    body = normalise(text[:COMPARED_CHARS])
    if len(body) >= REPEAT_MIN_CHARS:
        own = _repeats(body, history.recent)
        if own >= 2:
            out.add("repeated by author", REPEAT_OWN_MANY_POINTS)
        elif own == 1:
            out.add("repeated by author", REPEAT_OWN_POINTS)
        if _repeats(body, history.thread_recent):
            out.add("repeated in thread", REPEAT_THREAD_POINTS)

    now = comment.created_ms
    minute = 1 + sum(1 for c in history.recent if now - c.created_ms < 60_000)
    ten = 1 + sum(1 for c in history.recent if now - c.created_ms < 600_000)
    if minute >= BURST_MINUTE or ten >= BURST_TEN_MINUTES:
        out.add("posting rate", BURST_POINTS)

    age = now - history.created_ms
    if history.spam >= 3:
        out.add("earlier spam", PREVIOUS_SPAM_MANY_POINTS)
    elif history.spam:
        out.add("earlier spam", PREVIOUS_SPAM_POINTS)
    if history.approved == 0 and age < NEW_AUTHOR_MS and (count or contact or "link in name" in out.points):
        out.add("new author", NEW_AUTHOR_LINK_POINTS)
    if history.approved >= TRUSTED_APPROVED and history.spam == 0 and age >= NEW_AUTHOR_MS:
        out.add("trusted author", TRUSTED_POINTS)
    return out


@implementer(ISpamCheck)
class HeuristicCheck:
    """The default check: :func:`score` against :data:`SPAM_SCORE` and
    :data:`PENDING_SCORE`, and the tenant's blocked words."""

    name = "heuristic"

    def check(self, comment: Candidate, history: AuthorHistory, request: RequestFacts) -> Verdict:
        word = blocked_word(comment.text, request.settings.blocked_words)
        if word is None:
            word = blocked_word(comment.display_name, request.settings.blocked_words)
        if word is not None:
            # The word itself stays out of the reason: reasons go to logs
            # and a tenant's list is theirs.
            return Verdict(Judgement.SPAM, "blocked word")
        points = score(comment, history, request)
        if points.total >= SPAM_SCORE:
            return Verdict(Judgement.SPAM, points.reason())
        if points.total >= PENDING_SCORE:
            return Verdict(Judgement.PENDING, points.reason())
        return HAM
