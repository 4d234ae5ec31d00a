# -*- test-case-name: tests.unit.spam.test_runner -*-
"""Asks the configured spam checks about a new comment, in order.

The first answer other than ham wins. A check that raises, answers
something other than a :class:`~fastedge.spam.model.Verdict`, or has not
answered after ``spam.timeout_seconds`` (on the reactor's clock) counts as
ham, is logged and counted: a broken plugin never stops comments.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins

from ..config import SpamConfig
from ..store.interfaces import IStore
from ..store.model import AuthorHistory, ReadPreference
from .heuristic import HeuristicCheck
from .interfaces import ISpamCheck
from .model import HAM, Candidate, Decision, Judgement, RequestFacts, Verdict

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class UnknownCheck(ValueError):
    """``spam.checks`` names no built-in check and no plugin."""


def load_checks(names: Sequence[str], package: ModuleType | None = None) -> list[ISpamCheck]:
    """The checks ``names`` list, in that order: built in or ``ISpamCheck`` plugins.

    :param package: the plugin package searched (default ``twisted.plugins``).
    :raises UnknownCheck: naming the checks that exist.
    """
    builtin: dict[str, ISpamCheck] = {HeuristicCheck.name: HeuristicCheck()}
    found: dict[str, ISpamCheck] = {}
    if any(name not in builtin for name in names):
        for plugin in getPlugins(ISpamCheck, package):
            if IPlugin.providedBy(plugin):
                found[str(plugin.name)] = plugin
    known = {**found, **builtin}
    missing = [name for name in names if name not in known]
    if missing:
        raise UnknownCheck("spam.checks: no spam check {!r} (known: {})".format(missing[0], ", ".join(sorted(known))))
    return [known[name] for name in names]


class SpamMetrics:
    """``fastedge_spam_*``: what each check answered and how long it took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.answers = Counter(
            "fastedge_spam_check_verdicts_total",
            "Answers of each spam check: ham, spam, pending, error (raised or answered nonsense) or timeout.",
            ["check", "verdict"],
            registry=registry,
        )
        self.seconds = Histogram(
            "fastedge_spam_check_seconds",
            "Time each spam check took to answer (timeouts included).",
            ["check"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.comments = Counter(
            "fastedge_spam_comments_total",
            "Comments judged, by the winning verdict.",
            ["verdict"],
            registry=registry,
        )
        self.history_failures = Counter(
            "fastedge_spam_history_failures_total",
            "Comments judged ham unchecked because the author's history could not be read.",
            registry=registry,
        )


class SpamJudge:
    """Judges new comments with the configured checks.

    :param checks: the checks, in order (see :func:`load_checks`).
    :param clock: times the checks (and their timeout).
    """

    _log = Logger()

    def __init__(
        self,
        cfg: SpamConfig,
        *,
        checks: Sequence[ISpamCheck],
        store: IStore,
        clock: IReactorTime,
        registry: CollectorRegistry,
    ) -> None:
        self._cfg = cfg
        self._checks = list(checks) if cfg.enabled else []
        self._store = store
        self._clock = clock
        self._metrics = SpamMetrics(registry)

    @property
    def checks(self) -> Sequence[ISpamCheck]:
        """The checks asked, in order (none when ``spam.enabled`` is off)."""
        return tuple(self._checks)

    def judge(self, comment: Candidate, request: RequestFacts, *, token: str | None) -> Deferred[Decision]:
        """The verdict on ``comment``: the first of the checks' answers
        other than ham, else ham. Never fails.

        The author's history is read from the nearest copy holding at
        least the poster's own latest write (``token``), so their own
        burst counts even right after they posted through another node.
        """
        if not self._checks:
            return succeed(Decision(HAM))
        return Deferred.fromCoroutine(self._judge(comment, request, token))

    async def _judge(self, comment: Candidate, request: RequestFacts, token: str | None) -> Decision:
        cfg = self._cfg
        try:
            history = await self._store.author_history(
                comment.tenant_id,
                comment.author_id,
                thread_id=comment.thread_id,
                since_ms=comment.created_ms - int(cfg.history_seconds * 1000),
                limit=cfg.history_comments,
                read_preference=ReadPreference.NEAREST,
                token=token,
                new_author_ms=comment.created_ms if comment.new_author else None,
            )
        except Exception:
            self._metrics.history_failures.inc()
            self._log.failure(
                "spam checks skipped: the history of author {author} (tenant {tenant}) could not be read",
                author=comment.author_id,
                tenant=comment.tenant_id,
            )
            self._metrics.comments.labels(Judgement.HAM.value).inc()
            return Decision(HAM)
        for check in self._checks:
            verdict = await self._ask(check, comment, history, request)
            if verdict.judgement is not Judgement.HAM:
                self._metrics.comments.labels(verdict.judgement.value).inc()
                self._log.info(
                    "comment of author {author} (tenant {tenant}, thread {thread}) judged {verdict} by {check}: {reason}",
                    author=comment.author_id,
                    tenant=comment.tenant_id,
                    thread=comment.thread_id,
                    verdict=verdict.judgement.value,
                    check=check.name,
                    reason=verdict.reason,
                )
                return Decision(verdict, str(check.name))
        self._metrics.comments.labels(Judgement.HAM.value).inc()
        return Decision(HAM)

    async def _ask(
        self, check: ISpamCheck, comment: Candidate, history: AuthorHistory, request: RequestFacts
    ) -> Verdict:
        """One check's answer; ham when it raises, answers nonsense or times out."""
        name = str(check.name)
        started = self._clock.seconds()
        answer: Any
        try:
            d = maybeDeferred(check.check, comment, history, request)
            d.addTimeout(self._cfg.timeout_seconds, self._clock)
            answer = await d
        except TimeoutError:
            outcome = "timeout"
            self._log.warn(
                "spam check {check} did not answer within {timeout} s; counted as ham",
                check=name,
                timeout=self._cfg.timeout_seconds,
            )
            answer = HAM
        except Exception:
            outcome = "error"
            self._log.failure("spam check {check} failed; counted as ham", check=name)
            answer = HAM
        else:
            if isinstance(answer, Verdict):
                outcome = answer.judgement.value
            else:
                outcome = "error"
                self._log.error(
                    "spam check {check} answered {kind}, not a Verdict; counted as ham",
                    check=name,
                    kind=type(answer).__name__,
                )
                answer = HAM
        self._metrics.answers.labels(name, outcome).inc()
        self._metrics.seconds.labels(name).observe(self._clock.seconds() - started)
        return answer
