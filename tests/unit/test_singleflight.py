"""SingleFlight: concurrent identical work runs once."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from fastedge.singleflight import SingleFlight


class SingleFlightTests(SynchronousTestCase):
    def test_shared_result(self) -> None:
        """Callers of one key while the work runs share its one result; a
        later call runs the work again."""
        flight = SingleFlight()
        runs: list[Deferred[str]] = []

        def work() -> Deferred[str]:
            runs.append(Deferred())
            return runs[-1]

        first, second = flight.run("k", work), flight.run("k", work)
        other = flight.run("other", work)
        self.assertEqual(len(runs), 2)
        self.assertTrue(flight.in_flight("k"))
        runs[0].callback("page")
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), ("page", "page"))
        self.assertFalse(flight.in_flight("k"))
        self.assertNoResult(other)
        flight.run("k", work)
        self.assertEqual(len(runs), 3)

    def test_shared_failure(self) -> None:
        """A failure reaches every waiting caller."""
        flight = SingleFlight()
        d: Deferred[str] = Deferred()
        first, second = flight.run("k", lambda: d), flight.run("k", lambda: d)
        d.errback(ValueError("boom"))
        self.failureResultOf(first, ValueError)
        self.failureResultOf(second, ValueError)
