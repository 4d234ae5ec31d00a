"""Tests for :mod:`fastedge.spam.runner`: checks asked in order, the first
answer other than ham wins, and a check that raises, answers nonsense or
never answers counts as ham, logged and counted."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import tests.plugins
from fastedge.config import SpamConfig
from fastedge.spam.heuristic import HeuristicCheck
from fastedge.spam.interfaces import ISpamCheck
from fastedge.spam.model import HAM, Candidate, Decision, Judgement, RequestFacts, Verdict
from fastedge.spam.runner import SpamJudge, UnknownCheck, load_checks
from fastedge.store.errors import StoreUnavailable
from fastedge.store.model import AuthorHistory, CommentStatus, NewComment, ReadPreference
from fastedge.testing.stores import sqlite_store
from tests.plugins.fastedge_spam_checks import Explodes, NeverAnswers

PRIMARY = ReadPreference.PRIMARY
SPAM = Verdict(Judgement.SPAM, "spam it is")
PENDING = Verdict(Judgement.PENDING, "not sure")


@implementer(ISpamCheck)
class Answers:
    """A check that answers ``verdict`` and remembers what it was asked."""

    def __init__(self, name: str, verdict: Any) -> None:
        self.name = name
        self.verdict = verdict
        self.asked: list[tuple[Candidate, AuthorHistory, RequestFacts]] = []

    def check(self, comment: Candidate, history: AuthorHistory, request: RequestFacts) -> Any:
        self.asked.append((comment, history, request))
        return self.verdict


class RunnerTests(SynchronousTestCase):
    """The runner over a real (SQLite) store on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_767_225_600)
        path = self.mktemp()
        os.makedirs(path)
        self.store = sqlite_store(os.path.join(path, "store.sqlite3"), clock=self.clock)
        self.addCleanup(lambda: self.successResultOf(self.store.close()))
        now = self.now()
        self.tenant = self.successResultOf(
            self.store.create_tenant("T", "global", created_ms=now, read_preference=PRIMARY)
        ).value
        session = self.successResultOf(
            self.store.create_anonymous_session(self.tenant.id, created_ms=now, read_preference=PRIMARY)
        ).value
        self.author = session.author_id
        self.thread = self.successResultOf(
            self.store.upsert_thread(self.tenant.id, "https://example.com/a", created_ms=now, read_preference=PRIMARY)
        ).value
        self.registry = CollectorRegistry()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def now(self) -> int:
        return int(self.clock.seconds() * 1000)

    def judge(self, checks: list[Any], store: Any = None, **cfg: Any) -> SpamJudge:
        return SpamJudge(
            dataclasses.replace(SpamConfig(), **cfg),
            checks=checks,
            store=store or self.store,
            clock=self.clock,
            registry=self.registry,
        )

    def candidate(self, text: str = "hello there") -> Candidate:
        return Candidate(
            tenant_id=self.tenant.id,
            thread_id=self.thread.id,
            url_id=self.thread.url_id,
            author_id=self.author,
            display_name="Ann",
            text=text,
            created_ms=self.now(),
        )

    def facts(self) -> RequestFacts:
        return RequestFacts(self.tenant.id, "hash", "Mozilla/5.0")

    def answers(self, check: str, verdict: str) -> float:
        value = self.registry.get_sample_value(
            "fastedge_spam_check_verdicts_total", {"check": check, "verdict": verdict}
        )
        return value or 0.0

    def test_first_non_ham_wins(self) -> None:
        """Checks are asked in order; ham passes to the next; the first
        spam or pending answer is the decision and later checks are not
        asked."""
        first, second, third = Answers("a", HAM), Answers("b", PENDING), Answers("c", SPAM)
        decision = self.successResultOf(
            self.judge([first, second, third]).judge(self.candidate(), self.facts(), token=None)
        )
        self.assertEqual(decision, Decision(PENDING, "b"))
        self.assertEqual((len(first.asked), len(second.asked), len(third.asked)), (1, 1, 0))
        self.assertEqual((self.answers("a", "ham"), self.answers("b", "pending")), (1, 1))
        self.assertEqual(self.registry.get_sample_value("fastedge_spam_comments_total", {"verdict": "pending"}), 1)

    def test_order_is_the_configured_one(self) -> None:
        """The same checks in the other order give the other answer."""
        decision = self.successResultOf(
            self.judge([Answers("c", SPAM), Answers("b", PENDING)]).judge(self.candidate(), self.facts(), token=None)
        )
        self.assertEqual(decision, Decision(SPAM, "c"))

    def test_all_ham(self) -> None:
        """When every check says ham the decision is ham, naming no check."""
        decision = self.successResultOf(
            self.judge([Answers("a", HAM), Answers("b", HAM)]).judge(self.candidate(), self.facts(), token=None)
        )
        self.assertEqual(decision, Decision(HAM))
        self.assertEqual(decision.verdict.status(CommentStatus.APPROVED), CommentStatus.APPROVED)

    def test_check_sees_history_and_request(self) -> None:
        """A check gets the comment, the author's history (their earlier
        comments within ``spam.history_seconds``) and the request facts."""
        for text in ("one", "two"):
            self.clock.advance(10)
            self.successResultOf(
                self.store.create_comment(
                    NewComment(
                        tenant_id=self.tenant.id,
                        thread_id=self.thread.id,
                        author_id=self.author,
                        display_name="Ann",
                        body_source=text,
                        body_html=text,
                        status=CommentStatus.APPROVED,
                        created_ms=self.now(),
                    ),
                    read_preference=PRIMARY,
                )
            )
        self.clock.advance(100)
        check = Answers("a", HAM)
        self.successResultOf(
            self.judge([check], history_seconds=105.0).judge(self.candidate(), self.facts(), token=None)
        )
        comment, history, request = check.asked[0]
        self.assertEqual(comment, self.candidate())
        self.assertEqual((history.comments, history.approved), (2, 2))
        self.assertEqual([c.body_source for c in history.recent], ["two"])
        self.assertEqual(request, self.facts())

    def test_check_that_raises_counts_as_ham(self) -> None:
        """A check that raises (or fails its Deferred) counts as ham: the
        next check is asked, the failure is logged and counted as error."""
        raising = Explodes
        failing = Answers("failing", fail(ValueError("nope")))
        after = Answers("after", SPAM)
        decision = self.successResultOf(
            self.judge([raising, failing, after]).judge(self.candidate(), self.facts(), token=None)
        )
        self.assertEqual(decision, Decision(SPAM, "after"))
        self.assertEqual((self.answers("explodes", "error"), self.answers("failing", "error")), (1, 1))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(
            [e["check"] for e in self.events if e["log_level"] is LogLevel.critical and "check" in e],
            ["explodes", "failing"],
        )

    def test_check_that_never_answers_times_out(self) -> None:
        """A check that never answers is given up on after
        ``spam.timeout_seconds`` on the clock, counted as a timeout and as
        ham; the checks after it still decide."""
        silent = NeverAnswers
        after = Answers("after", PENDING)
        d = self.judge([silent, after], timeout_seconds=2.0).judge(self.candidate(), self.facts(), token=None)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.assertEqual(after.asked, [])
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), Decision(PENDING, "after"))
        self.assertEqual(self.answers("never-answers", "timeout"), 1)
        self.assertEqual(
            self.registry.get_sample_value("fastedge_spam_check_seconds_sum", {"check": "never-answers"}), 2.0
        )
        warned = [e for e in self.events if e.get("check") == "never-answers"]
        self.assertEqual([e["log_level"] for e in warned], [LogLevel.warn])

    def test_nonsense_answer_counts_as_ham(self) -> None:
        """A check answering something other than a Verdict is an error, ham."""
        decision = self.successResultOf(
            self.judge([Answers("odd", "spam")]).judge(self.candidate(), self.facts(), token=None)
        )
        self.assertEqual(decision, Decision(HAM))
        self.assertEqual(self.answers("odd", "error"), 1)

    def test_disabled(self) -> None:
        """``spam.enabled = false``: no check is asked and nothing is read."""
        check = Answers("a", SPAM)
        judge = self.judge([check], enabled=False)
        self.assertEqual(judge.checks, ())
        self.assertEqual(self.successResultOf(judge.judge(self.candidate(), self.facts(), token=None)), Decision(HAM))
        self.assertEqual(check.asked, [])

    def test_history_unreadable(self) -> None:
        """When the author's history cannot be read the comment is ham
        unchecked (spam checks never stop comments), logged and counted."""

        class Down:
            def author_history(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
                return fail(StoreUnavailable("the replica is down"))

        check = Answers("a", SPAM)
        decision = self.successResultOf(
            self.judge([check], store=Down()).judge(self.candidate(), self.facts(), token=None)
        )
        self.assertEqual((decision, check.asked), (Decision(HAM), []))
        self.assertEqual(self.registry.get_sample_value("fastedge_spam_history_failures_total"), 1)
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)


class LoadTests(SynchronousTestCase):
    """Finding checks by name: built in, or Twisted plugins."""

    def test_builtin(self) -> None:
        """``heuristic`` is built in and provides the interface."""
        (check,) = load_checks(["heuristic"])
        self.assertIsInstance(check, HeuristicCheck)
        verifyObject(ISpamCheck, check)

    def test_plugins_in_order(self) -> None:
        """Plugins are found by name in a plugin package and returned in
        the order named, around the built-in one."""
        checks = load_checks(["held-links", "heuristic", "never-answers"], tests.plugins)
        self.assertEqual([c.name for c in checks], ["held-links", "heuristic", "never-answers"])
        for check in checks:
            verifyObject(ISpamCheck, check)
        self.assertTrue(IPlugin.providedBy(checks[0]))

    def test_unknown(self) -> None:
        """An unknown name is refused naming the key and the known checks."""
        with self.assertRaises(UnknownCheck) as caught:
            load_checks(["heuristic", "akismet"], tests.plugins)
        message = str(caught.exception)
        self.assertTrue(message.startswith("spam.checks: no spam check 'akismet'"), message)
        self.assertIn("held-links", message)
