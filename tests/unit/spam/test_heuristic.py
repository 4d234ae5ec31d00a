"""Tests for :mod:`fastedge.spam.heuristic`: each signal of the default
check, and the blocked words of one tenant only."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from fastedge.spam import heuristic
from fastedge.spam.heuristic import HeuristicCheck, blocked_word, links, score
from fastedge.spam.interfaces import ISpamCheck
from fastedge.spam.model import Candidate, Judgement, RequestFacts
from fastedge.store.model import AuthorHistory, AuthorKind, CommentStatus, RecentComment
from fastedge.store.settings import TenantSettings

NOW = 1_767_225_600_000
DAY = 24 * 3600 * 1000


def history(*, age_ms: int = 0, approved: int = 0, spam: int = 0, recent: Any = (), thread: Any = ()) -> AuthorHistory:
    return AuthorHistory(
        author_id="a1",
        kind=AuthorKind.ANONYMOUS,
        created_ms=NOW - age_ms,
        comments=approved + spam + len(recent),
        approved=approved,
        pending=0,
        spam=spam,
        removed=0,
        recent=tuple(recent),
        thread_recent=tuple(thread),
    )


def comment(text: str, name: str = "Ann", tenant: str = "t1") -> Candidate:
    return Candidate(
        tenant_id=tenant,
        thread_id="th1",
        url_id="https://example.com/a",
        author_id="a1",
        display_name=name,
        text=text,
        created_ms=NOW,
    )


def earlier(text: str, ago_ms: int, author: str = "a1") -> RecentComment:
    return RecentComment(author, "th1", text, CommentStatus.APPROVED, NOW - ago_ms)


FACTS = RequestFacts("t1", "hash", "Mozilla/5.0")
REGULAR = {"age_ms": 400 * DAY, "approved": 40}
LONG = "I read the whole study and the methods section is solid, though the sample is small."


class SignalTests(SynchronousTestCase):
    """Each signal adds the points docs/spam.md gives it."""

    def test_provides(self) -> None:
        verifyObject(ISpamCheck, HeuristicCheck())

    def test_links_counted(self) -> None:
        """Links with a scheme, ``www.`` and bare domains count; an email
        address's domain does not; markdown links count once."""
        text = "see https://a.example/x, www.b.example and shop.example.com; [c](https://c.example) me@mail.example.org"
        self.assertEqual(links(text), ["https://a.example/x", "www.b.example", "shop.example.com", "https://c.example"])

    def test_plain_comment_is_ham(self) -> None:
        """A new author's plain comment scores nothing."""
        self.assertEqual(score(comment(LONG), history(), FACTS).total, 0)
        self.assertEqual(HeuristicCheck().check(comment(LONG), history(), FACTS).judgement, Judgement.HAM)

    def test_links_and_link_share(self) -> None:
        """Points grow with the number of links; a comment that is mostly
        links gets more; a new author's links more again."""
        one = score(comment(LONG + " https://example.org/study"), history(**REGULAR), FACTS)
        self.assertEqual(one.points, {"links": 1, "trusted author": heuristic.TRUSTED_POINTS})
        many = score(
            comment("https://a.example https://b.example https://c.example https://d.example"), history(), FACTS
        )
        self.assertEqual(
            (many.points["links"], many.points["mostly links"], many.points["new author"]),
            (heuristic.LINK_POINTS[-1] + heuristic.LINK_POINTS_EACH_MORE, 1, heuristic.NEW_AUTHOR_LINK_POINTS),
        )
        self.assertEqual(
            HeuristicCheck().check(comment("https://a.example " * 4), history(), FACTS).judgement, Judgement.SPAM
        )

    def test_repeated_by_author(self) -> None:
        """The same body (or nearly) from the same author recently scores;
        twice before scores more; short bodies never count."""
        once = score(comment(LONG), history(recent=[earlier(LONG.upper(), 60_000)]), FACTS)
        self.assertEqual(once.points, {"repeated by author": heuristic.REPEAT_OWN_POINTS})
        near = LONG.replace("small", "quite small")
        twice = score(comment(LONG), history(recent=[earlier(LONG, 600_000), earlier(near, 700_000)]), FACTS)
        self.assertEqual(twice.points, {"repeated by author": heuristic.REPEAT_OWN_MANY_POINTS})
        short = score(comment("Thanks, great!"), history(recent=[earlier("Thanks, great!", 60_000)]), FACTS)
        self.assertEqual(short.total, 0)

    def test_repeated_across_thread(self) -> None:
        """The same body from other authors of the thread scores (bots)."""
        got = score(comment(LONG), history(thread=[earlier(LONG, 30_000, author="a2")]), FACTS)
        self.assertEqual(got.points, {"repeated in thread": heuristic.REPEAT_THREAD_POINTS})

    def test_posting_rate(self) -> None:
        """Four comments in a minute (this one included) score."""
        recent = [earlier("comment {}".format(i), 10_000 * (i + 1)) for i in range(3)]
        self.assertEqual(score(comment("one more"), history(recent=recent), FACTS).points, {"posting rate": 2})
        self.assertEqual(score(comment("one more"), history(recent=recent[:2]), FACTS).points, {})

    def test_author_trust(self) -> None:
        """Earlier spam scores; a trusted regular gets points taken away;
        contact bait from a new author scores as new."""
        self.assertEqual(score(comment(LONG), history(spam=1), FACTS).points, {"earlier spam": 2})
        self.assertEqual(score(comment(LONG), history(spam=3), FACTS).points, {"earlier spam": 4})
        bait = score(comment("Write to me on WhatsApp +44 7700 900123"), history(), FACTS)
        self.assertEqual(bait.points, {"contact": 2, "new author": 2})

    def test_content_signals(self) -> None:
        """Spam phrases, money promised per day, abused hosts and a linked
        display name score."""
        got = score(
            comment("Work from home and earn $500 a day!!! https://jobs.example.xyz/apply", name="jobs.example.top"),
            history(),
            FACTS,
        )
        for signal in ("spam phrases", "money promised", "abused link host", "link in name", "shouting"):
            self.assertIn(signal, got.points)
        self.assertEqual(HeuristicCheck().check(comment("x"), history(), FACTS).reason, "")

    def test_pending_between(self) -> None:
        """A score from PENDING_SCORE up to SPAM_SCORE holds the comment."""
        verdict = HeuristicCheck().check(
            comment("Great article! More here: https://blog.example.com/post"), history(), FACTS
        )
        self.assertEqual(verdict.judgement, Judgement.PENDING)
        self.assertTrue(verdict.reason.startswith("score "), verdict.reason)


class BlockedWordTests(SynchronousTestCase):
    """The tenant's ``blockedWords``."""

    def test_whole_words_any_case(self) -> None:
        """Words and phrases match whole, ignoring case, punctuation,
        runs of spaces, compatibility forms and spaced-out letters."""
        words = ("casino", "replica watches")
        for text in ("Best CASINO!", "ｃａｓｉｎｏ bonus", "c-a-s-i-n-o", "Replica   watches here", "v.i.p casino."):
            self.assertIsNotNone(blocked_word(text, words), text)
        for text in ("casinos and more", "the replica of the watches", "occasino"):
            self.assertIsNone(blocked_word(text, words), text)

    def test_tenant_isolation(self) -> None:
        """One tenant's words make its comment spam and do nothing to
        another tenant's, which has its own list."""
        check = HeuristicCheck()
        a = RequestFacts("ta", "hash", "", TenantSettings(blocked_words=("casino",)))
        b = RequestFacts("tb", "hash", "", TenantSettings(blocked_words=("poker",)))
        text = "The casino vote is on Tuesday."
        self.assertEqual(check.check(comment(text, tenant="ta"), history(), a).judgement, Judgement.SPAM)
        self.assertEqual(check.check(comment(text, tenant="tb"), history(), b).judgement, Judgement.HAM)
        self.assertEqual(check.check(comment(text, tenant="ta"), history(), a).reason, "blocked word")

    def test_display_name(self) -> None:
        """A blocked word in the display name counts too."""
        facts = RequestFacts("t1", "hash", "", TenantSettings(blocked_words=("casino",)))
        self.assertEqual(
            HeuristicCheck().check(comment(LONG, name="Casino Queen"), history(), facts).judgement, Judgement.SPAM
        )

    @given(st.text(max_size=300), st.lists(st.text(min_size=1, max_size=64), max_size=5))
    def test_never_raises(self, text: str, words: list[str]) -> None:
        """Any text and any words: an answer, never an exception."""
        facts = RequestFacts("t1", "hash", "", TenantSettings(blocked_words=tuple(words)))
        self.assertIsInstance(
            HeuristicCheck().check(comment(text or "x", name=text[:20] or "x"), history(), facts).judgement, Judgement
        )

    @given(st.sampled_from(["casino", "free spins", "Replica Watches"]), st.sampled_from(["", "!", " ", ".", "\n"]))
    def test_blocked_word_found_in_any_surroundings(self, word: str, around: str) -> None:
        """A blocked word is found whatever case and punctuation surround it."""
        text = "Hi{0}{1}{0}there".format(around or " ", word.swapcase())
        self.assertEqual(blocked_word(text, [word]), word)


def _unbounded(parsed: Any) -> list[str]:
    """The unbounded repetitions (``*``, ``+``, ``{n,}``) in a parsed pattern."""
    from re import _constants, _parser  # type: ignore[attr-defined]

    found = []
    for op, av in parsed:
        if op in (_constants.MAX_REPEAT, _constants.MIN_REPEAT):
            low, high, item = av
            if high is _constants.MAXREPEAT:
                found.append(str(item))
            found.extend(_unbounded(item))
        elif op is _constants.SUBPATTERN:
            found.extend(_unbounded(av[-1]))
        elif op is _constants.BRANCH:
            for branch in av[1]:
                found.extend(_unbounded(branch))
        elif isinstance(av, _parser.SubPattern):
            found.extend(_unbounded(av))
    return found


class BoundedWorkTests(SynchronousTestCase):
    """A comment is the commenter's text: the check's patterns cannot be
    made to backtrack without bound (a first version spent 40 s on
    ``"a." * 5000``)."""

    def test_patterns_have_bounded_repetitions(self) -> None:
        """The patterns that scan the whole text and backtrack (links,
        emails, phone numbers, money) repeat nothing without a bound."""
        from re import _parser  # type: ignore[attr-defined]

        from fastedge.spam import vocabulary

        for pattern in (heuristic._LINK, heuristic._EMAIL, heuristic._PHONE, vocabulary.MONEY_RATE):
            self.assertEqual(_unbounded(_parser.parse(pattern.pattern, pattern.flags)), [], pattern.pattern)

    def test_worst_shapes_answer(self) -> None:
        """Long runs of the shapes that made the first patterns backtrack
        still get an answer (no timing asserted: the test above is the
        guarantee; this one shows the shapes are handled)."""
        for text in ("a." * 2500, "1." * 2500, "1," * 2500, "a@" * 2500, "aaaa.b" * 800, "$1" * 2500):
            self.assertIsInstance(HeuristicCheck().check(comment(text), history(), FACTS).judgement, Judgement)
